//! Engine tests of an NVMe/TCP queue: a scripted host that follows the sequence Linux's
//! nvme-tcp host sends, and a memory "disk" executing the block operations.

use std::sync::{Arc, Mutex};

use target_wire::nvme::cqe::CqeRepr;
use target_wire::nvme::fabrics::{ConnectData, PropertySize};
use target_wire::nvme::identify::{IdentifyController, IdentifyControllerNvm};
use target_wire::nvme::log::{AdrFam, DiscoveryLogHeader, SmartLog, TrType, discovery_entry};
use target_wire::nvme::opcode::{AdminOpcode, Cns, FeatureId, IoOpcode, LogPageId};
use target_wire::nvme::sqe::Sqe;
use target_wire::nvme::status::{CommandSpecificStatus, GenericStatus, MediaStatus, Status};
use target_wire::nvme_tcp::{DataRepr, Fes, PduType, TermReqRepr};

use super::host::{HostError, HostQueue, commands};
use super::icreq::ControllerParams;
use super::queue::NvmeTcpQueue;
use crate::nvme::controller::{
    ALL_BACKENDS, BlockIo, BlockOp, DSM_BLOCKS_LIMIT, DSM_RANGE_BLOCKS_LIMIT,
    WRITE_ZEROES_MAX_BYTES,
};
use crate::nvme::subsystem::{DISCOVERY_NQN, Port, PortTransport, Registry};
use crate::nvme::testing::{
    BLOCKS, HOST, HOST_ID, NQN, disk, registry, registry_of, registry_with, run_block_op, subsystem,
};
use crate::scsi::{self, LunConfig, Nexus, ScsiTarget};

/// What the host got back for one command.
#[derive(Debug)]
struct Reply {
    data: Vec<u8>,
    cqe: Option<CqeRepr>,
}

/// The host engine and one controller queue, wired back to back, with a memory disk.
struct Host<'r> {
    q: NvmeTcpQueue,
    h: HostQueue,
    registry: &'r Mutex<Registry>,
    disk: &'r Mutex<Vec<u8>>,
    /// Every block operation the queue asked for, in order.
    ios: Vec<BlockIo>,
}

impl<'r> Host<'r> {
    fn new(registry: &'r Mutex<Registry>, disk: &'r Mutex<Vec<u8>>, digests: bool) -> Self {
        let mut host = Self {
            q: NvmeTcpQueue::new(ControllerParams::default(), None),
            h: HostQueue::new(digests, digests),
            registry,
            disk,
            ios: Vec::new(),
        };
        host.pump().expect("ICReq/ICResp");
        assert!(host.h.established());
        assert_eq!(host.h.digests(), (digests, digests));
        host
    }

    /// Moves bytes both ways (host bytes byte by byte when small, to exercise
    /// reassembly) and runs block I/O until nothing moves.
    fn pump(&mut self) -> Result<(), HostError> {
        loop {
            let to_controller = self.h.output().to_vec();
            self.h.consume_output(to_controller.len());
            let mut to_host = Vec::new();
            if to_controller.len() < 200 {
                for b in &to_controller {
                    assert_eq!(self.q.receive(std::slice::from_ref(b), self.registry, 0), 1);
                }
            } else {
                // The queue takes less once its output is full: drain it and offer the rest.
                let mut rest = &to_controller[..];
                while !rest.is_empty() {
                    let n = self.q.receive(rest, self.registry, 0);
                    rest = &rest[n..];
                    self.run_io();
                    to_host.extend(self.q.take_output());
                }
            }
            self.run_io();
            to_host.extend(self.q.take_output());
            self.h.receive(&to_host)?;
            if to_controller.is_empty() && to_host.is_empty() {
                return Ok(());
            }
        }
    }

    /// Runs queued block operations against the disk.
    fn run_io(&mut self) {
        while let Some((slot, io)) = self.q.next_io() {
            self.ios.push(io.clone());
            let outcome = run_block_op(
                &mut self.disk.lock().unwrap(),
                &io.op,
                self.q.buffer_mut(slot),
            );
            self.q.io_done(slot, outcome);
        }
    }

    /// Sends a command and collects its reply; `host_len` is the buffer for data from
    /// the controller.
    fn command(&mut self, sqe: [u8; 64], data: &[u8], in_capsule: bool, host_len: u32) -> Reply {
        let read_len = if data.is_empty() {
            host_len as usize
        } else {
            0
        };
        let cid = self.h.submit(sqe, data.to_vec(), in_capsule, read_len);
        self.pump()
            .expect("the controller answers within the protocol");
        match self.h.completion() {
            Some(c) => {
                assert_eq!(c.cid, cid);
                Reply {
                    data: c.data,
                    cqe: Some(c.cqe),
                }
            }
            None => Reply {
                data: Vec::new(),
                cqe: None,
            },
        }
    }

    fn admin(
        &mut self,
        op: AdminOpcode,
        cdw10: u32,
        cdw11: u32,
        nsid: u32,
        host_len: u32,
    ) -> Reply {
        self.command(
            commands::admin(op, nsid, cdw10, cdw11),
            &[],
            false,
            host_len,
        )
    }

    fn connect(&mut self, qid: u16, cntlid: u16, subnqn: &str) -> CqeRepr {
        self.connect_as(qid, cntlid, subnqn, HOST, HOST_ID)
    }

    /// Connect as host `hostnqn` with Host Identifier `hostid`.
    fn connect_as(
        &mut self,
        qid: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
    ) -> CqeRepr {
        let kato = if qid == 0 { 5000 } else { 0 };
        let (sqe, mut data) =
            commands::connect(qid, cntlid, 31, kato, subnqn, hostnqn).expect("NQNs fit");
        ConnectData::new_checked(&mut data[..])
            .unwrap()
            .set_hostid(hostid);
        self.command(sqe, &data, true, 0)
            .cqe
            .expect("Connect response")
    }

    fn property_get(&mut self, offset: u32, size: PropertySize) -> u64 {
        let cqe = self
            .command(commands::property_get(offset, size), &[], false, 0)
            .cqe
            .unwrap();
        assert!(cqe.status.is_success(), "{cqe:?}");
        u64::from(cqe.dw0) | (u64::from(cqe.dw1) << 32)
    }

    fn enable(&mut self) {
        assert!(
            self.command(commands::enable(), &[], false, 0)
                .cqe
                .unwrap()
                .status
                .is_success()
        );
        assert_eq!(
            self.property_get(0x1c, PropertySize::Four) & 1,
            1,
            "CSTS.RDY"
        );
    }

    fn io(&mut self, op: IoOpcode, slba: u64, blocks: u32, data: &[u8], in_capsule: bool) -> Reply {
        self.command(
            commands::io(op, 1, slba, blocks),
            data,
            in_capsule,
            blocks * 512,
        )
    }
}

fn h2c_pdu(cid: u16, ttag: u16, offset: u32, data: &[u8], digests: bool) -> Vec<u8> {
    let header_end = 24 + if digests { 4 } else { 0 };
    let mut p = vec![0u8; header_end + data.len() + if digests { 4 } else { 0 }];
    DataRepr {
        pdu_type: PduType::H2cData,
        cccid: cid,
        ttag,
        offset,
        length: data.len() as u32,
    }
    .emit(
        target_wire::nvme_tcp::flags::LAST_PDU,
        digests,
        digests,
        &mut p,
    )
    .unwrap();
    finish(&mut p, 24, header_end, data, digests);
    p
}

fn finish(p: &mut [u8], hlen: usize, header_end: usize, data: &[u8], digests: bool) {
    if digests {
        target_wire::nvme_tcp::put_header_digest(p, hlen).unwrap();
    }
    p[header_end..header_end + data.len()].copy_from_slice(data);
    if digests && !data.is_empty() {
        let d = target_wire::nvme_tcp::data_digest(data);
        p[header_end + data.len()..].copy_from_slice(&d);
    }
}

fn status(r: &Reply) -> Status {
    r.cqe.expect("a response capsule").status
}

/// Connects an admin queue, enables the controller and asks for 4 I/O queues.
fn admin_session<'r>(
    registry: &'r Mutex<Registry>,
    disk: &'r Mutex<Vec<u8>>,
    digests: bool,
) -> (Host<'r>, u16) {
    let mut admin = Host::new(registry, disk, digests);
    let cqe = admin.connect(0, 0xffff, NQN);
    assert!(cqe.status.is_success(), "{cqe:?}");
    let cntlid = cqe.dw0 as u16;
    let cap = admin.property_get(0x00, PropertySize::Eight);
    assert_eq!(cap & 0xffff, 127, "MQES");
    assert_ne!(cap & (1 << 37), 0, "NVM command set");
    admin.enable();
    let r = admin.admin(
        AdminOpcode::SetFeatures,
        u32::from(u8::from(FeatureId::NumberOfQueues)),
        3 | (3 << 16),
        0,
        0,
    );
    assert!(status(&r).is_success());
    assert_eq!(r.cqe.unwrap().dw0, 3 | (3 << 16));
    (admin, cntlid)
}

#[test]
fn linux_connect_sequence_identify_and_io_with_and_without_digests() {
    for digests in [false, true] {
        let registry = registry();
        let disk = disk();
        let (mut admin, cntlid) = admin_session(&registry, &disk, digests);

        let id = admin.admin(
            AdminOpcode::Identify,
            u32::from(u8::from(Cns::Controller)),
            0,
            0,
            4096,
        );
        assert!(status(&id).is_success());
        assert_eq!(id.data.len(), 4096);
        let idc = IdentifyController::new_checked(&id.data[..]).unwrap();
        assert_eq!(idc.cntlid(), cntlid);
        assert_eq!(idc.subnqn().unwrap(), NQN);
        assert_eq!(idc.mdts(), 5);
        assert_eq!(idc.ioccsz(), (64 + 8192) / 16);
        assert_eq!(idc.nn(), 1024, "namespaces may be added at run time");
        assert_eq!(idc.oaes(), 1 << 8, "Namespace Attribute Notices");

        let ns = admin.admin(
            AdminOpcode::Identify,
            u32::from(u8::from(Cns::Namespace)),
            0,
            1,
            4096,
        );
        assert_eq!(u64::from_le_bytes(ns.data[..8].try_into().unwrap()), BLOCKS);
        let bad = admin.admin(
            AdminOpcode::Identify,
            u32::from(u8::from(Cns::Namespace)),
            0,
            9,
            4096,
        );
        assert_eq!(status(&bad), Status::invalid_namespace());

        let mut io = Host::new(&registry, &disk, digests);
        assert!(io.connect(1, cntlid, NQN).status.is_success());

        // A 64 KiB write through R2T/H2CData, a 4 KiB write in the capsule, reads of both.
        let big: Vec<u8> = (0..65536u32).map(|i| (i * 31 + 7) as u8).collect();
        assert!(status(&io.io(IoOpcode::Write, 8, 128, &big, false)).is_success());
        let small = vec![0xa5u8; 4096];
        assert!(status(&io.io(IoOpcode::Write, 300, 8, &small, true)).is_success());
        let r = io.io(IoOpcode::Read, 8, 128, &[], false);
        assert!(status(&r).is_success());
        assert_eq!(r.data, big);
        assert_eq!(io.io(IoOpcode::Read, 300, 8, &[], false).data, small);
        assert_eq!(&disk.lock().unwrap()[8 * 512..8 * 512 + 65536], &big[..]);

        // Compare: equal, then different.
        assert!(status(&io.io(IoOpcode::Compare, 300, 8, &small, true)).is_success());
        let c = io.io(IoOpcode::Compare, 300, 8, &[0u8; 4096], true);
        assert_eq!(status(&c), Status::media(MediaStatus::CompareFailure));

        // SMART counts this controller's successful reads and writes (so far: writes of
        // 64 KiB and 4 KiB, 2 reads, and 1 of the 2 compares, the other miscompared).
        let log = admin.admin(
            AdminOpcode::GetLogPage,
            u32::from(u8::from(LogPageId::SmartHealth)) | (127 << 16),
            0,
            0,
            512,
        );
        let smart = SmartLog::new_checked(&log.data[..]).unwrap();
        assert_eq!(
            (smart.host_write_commands(), smart.host_read_commands()),
            (2, 3)
        );
        assert_eq!(
            smart.data_units_written(),
            1,
            "69632 bytes is 136 units of 512: one thousand, rounded up"
        );

        // Supported Log Pages says which of them exist.
        let log = admin.admin(
            AdminOpcode::GetLogPage,
            u32::from(u8::from(LogPageId::SupportedLogPages)) | (255 << 16),
            0,
            0,
            1024,
        );
        assert!(status(&log).is_success());
        let lsupp = |lid: usize| log.data[lid * 4] & 1 == 1;
        assert!(lsupp(0x00) && lsupp(0x02) && lsupp(0x05) && !lsupp(0x70) && !lsupp(0x06));

        // Write Zeroes and Flush.
        assert!(status(&io.io(IoOpcode::WriteZeroes, 300, 8, &[], false)).is_success());
        assert_eq!(
            io.io(IoOpcode::Read, 300, 8, &[], false).data,
            vec![0u8; 4096]
        );
        assert!(status(&io.io(IoOpcode::Flush, 0, 0, &[], false)).is_success());
    }
}

/// Runs a CDB without data-in on the SCSI side of the medium; its status.
fn scsi_command(t: &ScsiTarget, n: &Nexus, cdb: &[u8], data: &[u8]) -> u8 {
    let mut task = t.command(n, 0, cdb);
    let mut buf = crate::block::AlignedBuf::default();
    buf.set_len(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    match task.step(&mut buf, None) {
        scsi::Step::Done(c) => c.status,
        other => panic!("{other:?}"),
    }
}

fn prout(t: &ScsiTarget, n: &Nexus, sa: u8, kind: u8, key: u64, sark: u64) {
    let cdb = [0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sark.to_be_bytes());
    p.resize(24, 0);
    assert_eq!(scsi_command(t, n, &cdb, &p), scsi::status::GOOD);
}

/// A namespace that is also an iSCSI LUN (the default configuration) honours the LUN's
/// reservations: an NVMe host is neither holder nor registrant, so Write Exclusive types
/// refuse its writes and Exclusive Access types (and RESERVE(6)) its reads too.
#[test]
fn io_honours_the_scsi_reservations_of_the_same_medium() {
    let scsi = ScsiTarget::new(vec![LunConfig {
        lun: 0,
        block_size: 512,
        blocks: BLOCKS,
        backend: 0,
        volatile_write_cache: false,
        thin: true,
        read_only: false,
        identity: [0x11; 16],
        vendor: "XDPT".into(),
        product: "test".into(),
        revision: "1".into(),
    }]);
    let registry = registry_with(Some(Arc::clone(scsi.luns()[0].reservations())));
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk, false);
    let mut io = Host::new(&registry, &disk, false);
    assert!(io.connect(1, cntlid, NQN).status.is_success());
    let holder = Nexus {
        id: 1,
        initiator_port: "iqn.2026-01.org.example:host,i,0x801234560001".into(),
        target_port: "iqn.2026-01.io.xdp-target:disk,t,0x0001".into(),
        relative_port: 1,
    };
    let conflict = Status::generic(GenericStatus::ReservationConflict).with_dnr();
    let block = [0u8; 512];
    let mut dsm = [0u8; 64];
    {
        let mut s = Sqe::new_unchecked(&mut dsm[..]);
        s.set_opcode(IoOpcode::DatasetManagement.into());
        s.set_nsid(1);
        s.set_dsm_range_count(1);
        s.set_cdw11(1 << 2); // AD
    }
    let mut range = [0u8; 16];
    range[4..8].copy_from_slice(&1u32.to_le_bytes());
    // (read, compare, write, write zeroes, DSM deallocate) succeeded.
    let try_all = |io: &mut Host<'_>| {
        [
            status(&io.io(IoOpcode::Read, 0, 1, &[], false)),
            status(&io.io(IoOpcode::Compare, 0, 1, &block, true)),
            status(&io.io(IoOpcode::Write, 0, 1, &block, true)),
            status(&io.io(IoOpcode::WriteZeroes, 0, 1, &[], false)),
            status(&io.command(dsm, &range, true, 0)),
        ]
        .map(|s| {
            assert!(s.is_success() || s == conflict, "{s:?}");
            s.is_success()
        })
    };
    assert_eq!(try_all(&mut io), [true; 5], "nothing reserved");
    prout(&scsi, &holder, 0, 0, 0, 0xa);
    prout(&scsi, &holder, 1, 1, 0xa, 0);
    assert_eq!(
        try_all(&mut io),
        [true, true, false, false, false],
        "Write Exclusive"
    );
    prout(&scsi, &holder, 2, 1, 0xa, 0);
    prout(&scsi, &holder, 1, 6, 0xa, 0);
    assert_eq!(
        try_all(&mut io),
        [false; 5],
        "Exclusive Access, Registrants Only"
    );
    prout(&scsi, &holder, 2, 6, 0xa, 0);
    assert_eq!(try_all(&mut io), [true; 5], "released");
    prout(&scsi, &holder, 0, 0, 0xa, 0);
    assert_eq!(scsi_command(&scsi, &holder, &[0x16, 0, 0, 0, 0, 0], &[]), 0);
    assert_eq!(try_all(&mut io), [false; 5], "RESERVE(6)");
    assert_eq!(scsi_command(&scsi, &holder, &[0x17, 0, 0, 0, 0, 0], &[]), 0);
    assert_eq!(try_all(&mut io), [true; 5], "RELEASE(6)");
    // Flush is not refused (it moves no data).
    assert_eq!(scsi_command(&scsi, &holder, &[0x16, 0, 0, 0, 0, 0], &[]), 0);
    assert!(status(&io.io(IoOpcode::Flush, 0, 0, &[], false)).is_success());
}

#[test]
fn identify_reports_the_nvm_command_set_limits_it_enforces() {
    let registry = registry();
    let disk = disk();
    let (mut admin, _) = admin_session(&registry, &disk, false);
    // CNS 06h, CSI 00h (CDW11 bits 31:24), which Linux reads for DMRSL and WZSL.
    let cs = u32::from(u8::from(Cns::CsController));
    let id = admin.admin(AdminOpcode::Identify, cs, 0, 0, 4096);
    assert!(status(&id).is_success(), "{:?}", id.cqe);
    let l = IdentifyControllerNvm::new_checked(&id.data[..]).unwrap();
    assert_eq!(l.dmrsl(), DSM_RANGE_BLOCKS_LIMIT);
    assert_eq!(l.dmsl(), DSM_BLOCKS_LIMIT);
    assert_eq!(l.dmrl(), 0, "the command's own 256 ranges");
    assert_eq!(4096u64 << l.wzsl(), WRITE_ZEROES_MAX_BYTES);
    // Another command set's structure is not there.
    let zns = admin.admin(AdminOpcode::Identify, cs, 2 << 24, 0, 4096);
    assert_eq!(status(&zns), Status::invalid_field());
    // (controller::tests check that commands beyond the limits are refused.)
}

#[test]
fn io_errors_get_their_status() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk, false);
    let mut io = Host::new(&registry, &disk, false);
    assert!(io.connect(1, cntlid, NQN).status.is_success());
    assert_eq!(
        status(&io.io(IoOpcode::Read, BLOCKS - 1, 2, &[], false)),
        Status::lba_out_of_range()
    );
    assert_eq!(
        status(&io.io(IoOpcode::Read, u64::MAX, 1, &[], false)),
        Status::lba_out_of_range()
    );
    assert_eq!(
        status(&io.io(IoOpcode::Unknown(0x7e), 0, 1, &[], false)),
        Status::invalid_opcode()
    );
    // MDTS is 128 KiB: 512 blocks of 512 bytes is twice that.
    assert_eq!(
        status(&io.io(IoOpcode::Read, 0, 512, &[], false)),
        Status::invalid_field()
    );
    let mut sqe = [0u8; 64];
    let mut s = Sqe::new_unchecked(&mut sqe[..]);
    s.set_opcode(IoOpcode::Read.into());
    s.set_nsid(2);
    assert_eq!(
        status(&io.command(sqe, &[], false, 512)),
        Status::invalid_namespace()
    );
}

#[test]
fn connect_refusals() {
    let registry = registry();
    let disk = Mutex::new(Vec::new());
    let mut h = Host::new(&registry, &disk, false);
    let c = h.connect(0, 0xffff, "nqn.nope");
    assert_eq!(
        c.status,
        Status::command_specific(CommandSpecificStatus::ConnectInvalidParameters)
    );
    assert_eq!(c.dw0, (1 << 16) | 256, "IATTR data, IPO SUBNQN");

    // An I/O queue before the controller is enabled, and to a controller that does not exist.
    let mut a = Host::new(&registry, &disk, false);
    let cntlid = a.connect(0, 0xffff, NQN).dw0 as u16;
    let mut io = Host::new(&registry, &disk, false);
    assert_eq!(
        io.connect(1, cntlid, NQN).status,
        Status::generic(GenericStatus::CommandSequenceError)
    );
    let mut io = Host::new(&registry, &disk, false);
    assert_eq!(
        io.connect(1, cntlid + 100, NQN).status,
        Status::command_specific(CommandSpecificStatus::ConnectInvalidParameters)
    );
    // Admin commands before CC.EN.
    let r = a.admin(AdminOpcode::Identify, 1, 0, 0, 4096);
    assert_eq!(
        status(&r),
        Status::generic(GenericStatus::CommandSequenceError)
    );
}

#[test]
fn io_queue_connect_needs_the_admin_queue_host_nqn_and_host_id() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk, false);
    let invalid = Status::command_specific(CommandSpecificStatus::ConnectInvalidParameters);
    // Another host naming this controller: as if it did not exist (Linux nvmet's
    // nvmet_ctrl_find_get: Invalid Parameters, IATTR data, IPO CNTLID).
    let mut io = Host::new(&registry, &disk, false);
    let c = io.connect_as(
        1,
        cntlid,
        NQN,
        "nqn.2014-08.org.nvmexpress:uuid:intruder",
        HOST_ID,
    );
    assert_eq!((c.status, c.dw0), (invalid, (1 << 16) | 16));
    // The same Host NQN with another Host Identifier: Invalid Parameters, IPO HOSTID.
    let mut io = Host::new(&registry, &disk, false);
    let c = io.connect_as(1, cntlid, NQN, HOST, [0xa5; 16]);
    assert_eq!((c.status, c.dw0), (invalid, 1 << 16));
    // Both as the admin queue gave them: the queue connects.
    let mut io = Host::new(&registry, &disk, false);
    assert!(io.connect(1, cntlid, NQN).status.is_success());
}

#[test]
fn flush_of_all_namespaces_names_only_the_subsystems_backends() {
    // Subsystem NQN has namespaces on backends 0 and 1; another subsystem owns backend 2.
    let registry = registry_of(vec![
        subsystem(NQN, &[0, 1], None),
        subsystem("nqn.other", &[2], None),
    ]);
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk, false);
    let mut io = Host::new(&registry, &disk, false);
    assert!(io.connect(1, cntlid, NQN).status.is_success());
    let r = io.command(commands::io(IoOpcode::Flush, u32::MAX, 0, 0), &[], false, 0);
    assert!(status(&r).is_success());
    let flush = io.ios.last().expect("the flush reached the backends");
    assert_eq!(flush.backend, ALL_BACKENDS, "no single backend");
    assert_eq!(
        flush.op,
        BlockOp::FlushAll {
            backends: vec![0, 1]
        },
        "backend 2 belongs to another subsystem"
    );
    // A Flush of one namespace is that namespace's backend alone.
    io.command(commands::io(IoOpcode::Flush, 2, 0, 0), &[], false, 0);
    let flush = io.ios.last().unwrap();
    assert_eq!((flush.backend, &flush.op), (1, &BlockOp::Flush));
}

#[test]
fn discovery_controller_lists_subsystems() {
    let registry = registry();
    let disk = Mutex::new(Vec::new());
    let mut d = Host::new(&registry, &disk, false);
    assert!(d.connect(0, 0xffff, DISCOVERY_NQN).status.is_success());
    d.enable();
    let id = d.admin(AdminOpcode::Identify, 1, 0, 0, 4096);
    assert_eq!(
        IdentifyController::new_checked(&id.data[..])
            .unwrap()
            .cntrltype(),
        2
    );
    let numd = (4096 / 4) - 1;
    let log = d.admin(
        AdminOpcode::GetLogPage,
        u32::from(u8::from(LogPageId::Discovery)) | (numd << 16),
        0,
        0,
        4096,
    );
    assert!(status(&log).is_success());
    let h = DiscoveryLogHeader::new_checked(&log.data[..]).unwrap();
    assert_eq!(h.numrec(), 2, "the subsystem and the discovery subsystem");
    let e = discovery_entry(&log.data, 0).unwrap();
    assert_eq!((e.subnqn().unwrap(), e.trsvcid().unwrap()), (NQN, "4420"));
    // No I/O queues on a discovery controller.
    let r = d.admin(
        AdminOpcode::SetFeatures,
        u32::from(u8::from(FeatureId::NumberOfQueues)),
        0,
        0,
        0,
    );
    assert_eq!(status(&r), Status::invalid_field());
}

/// The SUBNQNs of the Discovery Log Page a discovery controller returns.
fn discovery_nqns(d: &mut Host<'_>) -> Vec<String> {
    let len = 8192;
    let log = d.admin(
        AdminOpcode::GetLogPage,
        u32::from(u8::from(LogPageId::Discovery)) | ((len / 4 - 1) << 16),
        0,
        0,
        len,
    );
    assert!(status(&log).is_success());
    let h = DiscoveryLogHeader::new_checked(&log.data[..]).unwrap();
    (0..h.numrec() as usize)
        .map(|i| {
            let e = discovery_entry(&log.data, i).unwrap();
            e.subnqn().unwrap().to_string()
        })
        .collect()
}

#[test]
fn discovery_log_lists_only_subsystems_that_allow_the_host() {
    // Linux nvmet (nvmet_execute_disc_get_log_page) skips subsystems whose allow list
    // does not name the host: a host must not learn of subsystems it may not use.
    let registry = registry_of(vec![
        subsystem("nqn.open", &[0], None),
        subsystem("nqn.mine", &[1], Some(&[HOST])),
        subsystem(
            "nqn.theirs",
            &[2],
            Some(&["nqn.2014-08.org.nvmexpress:uuid:other"]),
        ),
    ]);
    let disk = Mutex::new(Vec::new());
    let mut d = Host::new(&registry, &disk, false);
    assert!(d.connect(0, 0xffff, DISCOVERY_NQN).status.is_success());
    d.enable();
    assert_eq!(
        discovery_nqns(&mut d),
        ["nqn.open", "nqn.mine", DISCOVERY_NQN]
    );
}

#[test]
fn discovery_lists_rdma_ports_with_their_transport() {
    // One NVMe listener per transport: the log lists the subsystem and the discovery
    // subsystem on each, TCP entries with a TCP TSAS, RDMA entries with the RDMA one
    // (connected QP, RDMA CM), as nvmet does.
    let registry = registry();
    registry.lock().unwrap().set_ports(vec![
        Port {
            id: 1,
            addr: Some("10.0.0.1".parse().unwrap()),
            port: 4420,
            io: true,
            transport: PortTransport::Tcp,
        },
        Port {
            id: 2,
            addr: Some("fd00::1".parse().unwrap()),
            port: 4420,
            io: true,
            transport: PortTransport::Rdma,
        },
    ]);
    let disk = Mutex::new(Vec::new());
    let mut d = Host::new(&registry, &disk, false);
    assert!(d.connect(0, 0xffff, DISCOVERY_NQN).status.is_success());
    d.enable();
    let len = 8192;
    let log = d.admin(
        AdminOpcode::GetLogPage,
        u32::from(u8::from(LogPageId::Discovery)) | ((len / 4 - 1) << 16),
        0,
        0,
        len,
    );
    assert!(status(&log).is_success());
    let entries: Vec<_> = (0..4)
        .map(|i| {
            let e = discovery_entry(&log.data, i).unwrap();
            let raw = &log.data[1024 + i * 1024..2048 + i * 1024];
            (
                e.trtype(),
                e.adrfam(),
                e.traddr().unwrap().to_string(),
                e.subnqn().unwrap().to_string(),
                raw[768..771].to_vec(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (
                TrType::Tcp,
                AdrFam::Ipv4,
                "10.0.0.1".into(),
                NQN.into(),
                vec![0, 0, 0]
            ),
            (
                TrType::Tcp,
                AdrFam::Ipv4,
                "10.0.0.1".into(),
                DISCOVERY_NQN.into(),
                vec![0, 0, 0]
            ),
            (
                TrType::Rdma,
                AdrFam::Ipv6,
                "fd00::1".into(),
                NQN.into(),
                vec![1, 1, 1]
            ),
            (
                TrType::Rdma,
                AdrFam::Ipv6,
                "fd00::1".into(),
                DISCOVERY_NQN.into(),
                vec![1, 1, 1]
            ),
        ]
    );
}

#[test]
fn protocol_violations_end_the_connection_with_a_term_req() {
    let registry = registry();
    let disk = Mutex::new(Vec::new());
    let mut h = Host::new(&registry, &disk, false);
    // An H2CData for a transfer tag nobody issued.
    let p = h2c_pdu(1, 77, 0, &[0u8; 512], false);
    h.q.receive(&p, &registry, 0);
    assert!(h.q.closing());
    let out = h.q.take_output();
    let t = TermReqRepr::parse(&out).unwrap();
    assert_eq!((t.fes, t.fei), (Fes::InvalidHeaderField, 10));
    assert_eq!(&out[24..48], &p[..24], "the offending header comes back");
}

#[test]
fn keep_alive_expiry_closes_the_admin_queue_and_its_controller() {
    let registry = registry();
    let disk = disk();
    let (mut admin, cntlid) = admin_session(&registry, &disk, false);
    let mut io = Host::new(&registry, &disk, false);
    assert!(io.connect(1, cntlid, NQN).status.is_success());
    assert!(admin.q.tick(5000, &registry), "within KATO + grace");
    assert!(
        !admin.q.tick(6001, &registry),
        "KATO 5 s + 1 s grace passed"
    );
    admin.q.teardown(&registry);
    assert!(
        !io.q.tick(6001, &registry),
        "the I/O queue follows its controller"
    );
}

#[test]
fn a_host_that_stops_reading_stops_being_read() {
    use crate::OUTPUT_HIGH_WATER;
    use crate::nvme::controller::{MAX_QUEUE_ENTRIES, MAX_TRANSFER};
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk, false);
    let mut io = Host::new(&registry, &disk, false);
    assert!(io.connect(1, cntlid, NQN).status.is_success());
    // 200 reads of 128 KiB in one burst (25 MiB of answers), and the host reads nothing.
    const READS: usize = 200;
    for _ in 0..READS {
        io.h.submit(
            commands::io(IoOpcode::Read, 1, 0, 256),
            Vec::new(),
            false,
            MAX_TRANSFER,
        );
    }
    let burst = io.h.output().to_vec();
    let mut taken = 0;
    // The bound: the mark, plus the answers of the commands that were in flight when it
    // was reached (a slot each, as much as the slots' buffers already hold).
    let bound = OUTPUT_HIGH_WATER + usize::from(MAX_QUEUE_ENTRIES) * (MAX_TRANSFER + 64);
    // Offered as a socket delivers it, the block operations run after every piece.
    for _ in 0..(burst.len() / 1000 + 10) {
        let end = (taken + 1000).min(burst.len());
        taken += io.q.receive(&burst[taken..end], &registry, 0);
        io.run_io();
        assert!(
            io.q.output_len() <= bound,
            "output grew to {} bytes",
            io.q.output_len()
        );
    }
    assert!(
        taken < 20 * 72,
        "took {taken} bytes while its answers were not read"
    );
    assert!(io.q.output_len() >= OUTPUT_HIGH_WATER);
    // Once the host reads, the rest is taken and answered.
    let mut answered = 0;
    while taken < burst.len() {
        answered += io.q.take_output().len();
        let end = (taken + 1000).min(burst.len());
        taken += io.q.receive(&burst[taken..end], &registry, 0);
        io.run_io();
    }
    answered += io.q.output_len();
    assert!(
        answered >= READS * MAX_TRANSFER,
        "{answered} bytes answered"
    );
}

#[test]
fn silent_connections_and_missing_r2t_data_time_out() {
    use super::queue::{CONNECT_TIMEOUT_MS, DATA_TIMEOUT_MS};
    let registry = registry();
    let disk = disk();
    // A connection that never sends ICReq.
    let mut q = NvmeTcpQueue::new(ControllerParams::default(), None);
    assert!(q.tick(1_000, &registry));
    assert!(q.tick(1_000 + CONNECT_TIMEOUT_MS - 1, &registry));
    assert!(!q.tick(1_000 + CONNECT_TIMEOUT_MS, &registry));
    assert_eq!(q.end_reason(), Some("no ICReq and Connect within 10 s"));
    // ICReq but no Connect.
    let mut h = Host::new(&registry, &disk, false);
    assert!(h.q.tick(0, &registry));
    assert!(!h.q.tick(CONNECT_TIMEOUT_MS, &registry));
    // A write whose R2T is never answered: the slot is given up with the connection.
    let (_admin, cntlid) = admin_session(&registry, &disk, false);
    let mut io = Host::new(&registry, &disk, false);
    assert!(io.connect(1, cntlid, NQN).status.is_success());
    assert!(io.q.tick(0, &registry));
    let sqe = commands::io(IoOpcode::Write, 1, 0, 128);
    let mut capsule = Vec::new();
    io.h.submit(sqe, vec![0u8; 65536], false, 0);
    // The capsule goes out, the R2T comes back, the host sends nothing more.
    let bytes = io.h.output().to_vec();
    capsule.extend_from_slice(&bytes[..72]);
    io.h.consume_output(bytes.len());
    assert_eq!(io.q.receive(&capsule, &registry, 500), capsule.len());
    assert_eq!(io.q.output()[0], 0x09, "an R2T");
    assert!(io.q.tick(500 + DATA_TIMEOUT_MS - 1, &registry));
    assert!(!io.q.tick(500 + DATA_TIMEOUT_MS, &registry));
    assert_eq!(
        io.q.end_reason(),
        Some("the data an R2T asked for did not come within 30 s")
    );
}

/// Namespaces added, resized and removed at run time: the I/O queue sees them at its next
/// command, the admin queue answers its held Asynchronous Event Request with a Namespace
/// Attribute Changed notice (once, until the Changed Namespace List is read), and removing
/// the subsystem ends both queues.
#[test]
fn namespace_changes_reach_the_queues_and_raise_one_notice_per_log_read() {
    let registry = registry();
    let disk = disk();
    let (mut admin, cntlid) = admin_session(&registry, &disk, false);
    let aec = admin.admin(
        AdminOpcode::SetFeatures,
        u32::from(u8::from(FeatureId::AsyncEventConfiguration)),
        1 << 8,
        0,
        0,
    );
    assert!(status(&aec).is_success());
    let aer = |admin: &mut Host<'_>| {
        let cid = admin.h.submit(
            commands::admin(AdminOpcode::AsyncEventRequest, 0, 0, 0),
            Vec::new(),
            false,
            0,
        );
        admin.pump().unwrap();
        assert!(admin.h.completion().is_none(), "held");
        cid
    };
    let held = aer(&mut admin);
    let mut io = Host::new(&registry, &disk, false);
    assert!(io.connect(1, cntlid, NQN).status.is_success());
    let read2 = |io: &mut Host<'_>| {
        let r = io.command(commands::io(IoOpcode::Read, 2, 0, 1), &[], false, 512);
        status(&r)
    };
    assert_eq!(read2(&mut io), Status::invalid_namespace());

    // Nothing changed: a tick answers nothing.
    assert!(admin.q.tick(0, &registry));
    admin.pump().unwrap();
    assert!(admin.h.completion().is_none());

    let mut ns = subsystem(NQN, &[0, 0], None).namespaces[1].clone();
    ns.blocks = 16;
    registry.lock().unwrap().add_namespace(NQN, ns).unwrap();
    assert!(
        read2(&mut io).is_success(),
        "the I/O queue took the new subsystem"
    );
    assert!(admin.q.tick(0, &registry));
    admin.pump().unwrap();
    let c = admin.h.completion().expect("the held AER is answered");
    assert_eq!(c.cid, held);
    assert!(c.cqe.status.is_success());
    assert_eq!(
        c.cqe.dw0, 0x0004_0002,
        "Notice, Namespace Attribute Changed, LID 04h"
    );

    // A second change before the log is read raises no second notice.
    let _held2 = aer(&mut admin);
    registry
        .lock()
        .unwrap()
        .resize_namespace(NQN, 2, BLOCKS)
        .unwrap();
    assert!(admin.q.tick(0, &registry));
    admin.pump().unwrap();
    assert!(
        admin.h.completion().is_none(),
        "masked until the log is read"
    );
    let id = admin.admin(
        AdminOpcode::Identify,
        u32::from(u8::from(Cns::Namespace)),
        0,
        2,
        4096,
    );
    assert_eq!(
        u64::from_le_bytes(id.data[..8].try_into().unwrap()),
        BLOCKS,
        "NSZE after the resize"
    );
    let changed_list = |admin: &mut Host<'_>, rae: bool| {
        let cdw10 = u32::from(u8::from(LogPageId::ChangedNamespaceList))
            | if rae { 1 << 15 } else { 0 }
            | (1023 << 16);
        admin
            .admin(AdminOpcode::GetLogPage, cdw10, 0, 0xffff_ffff, 4096)
            .data
    };
    let log = changed_list(&mut admin, true);
    assert_eq!(&log[..8], &[2, 0, 0, 0, 0, 0, 0, 0], "NSID 2, then the end");
    let log = changed_list(&mut admin, false);
    assert_eq!(&log[..4], &[2, 0, 0, 0], "RAE kept the list");
    let log = changed_list(&mut admin, false);
    assert!(log.iter().all(|&b| b == 0), "read with RAE cleared: empty");

    // Unmasked again: the removal answers the second held AER.
    let removed = registry.lock().unwrap().remove_namespace(NQN, 2).unwrap();
    assert_eq!(removed.nsid, 2);
    assert_eq!(read2(&mut io), Status::invalid_namespace());
    assert!(admin.q.tick(0, &registry));
    admin.pump().unwrap();
    assert_eq!(
        admin.h.completion().expect("second notice").cqe.dw0,
        0x0004_0002
    );

    registry.lock().unwrap().remove_subsystem(NQN).unwrap();
    assert!(
        !io.q.tick(0, &registry),
        "the I/O queue ends with its subsystem"
    );
    assert!(!admin.q.tick(0, &registry), "and the admin queue");
    assert_eq!(admin.q.end_reason(), Some("its controller is gone"));
}

/// A read's data goes out from its command's own buffer (a piece of the gather list, not
/// a copy), and taken a byte at a time it still makes whole PDUs the host reads.
#[test]
fn read_data_is_sent_from_the_command_buffer() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk, false);
    let mut io = Host::new(&registry, &disk, false);
    assert!(io.connect(1, cntlid, NQN).status.is_success());
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    assert!(status(&io.io(IoOpcode::Write, 8, 8, &data, false)).is_success());

    let cid = io.h.submit(
        commands::io(IoOpcode::Read, 1, 8, 8),
        Vec::new(),
        false,
        4096,
    );
    let capsule = io.h.output().to_vec();
    io.h.consume_output(capsule.len());
    assert_eq!(io.q.receive(&capsule, &registry, 0), capsule.len());
    let (slot, op) = io.q.next_io().expect("the read's block operation");
    let buffer = io.q.buffer_mut(slot).as_ptr();
    let outcome = run_block_op(&mut disk.lock().unwrap(), &op.op, io.q.buffer_mut(slot));
    io.q.io_done(slot, outcome);

    let pieces: Vec<&[u8]> = io.q.output_chunks().collect();
    assert_eq!(pieces.len(), 3, "C2HData header, data, response");
    assert_eq!(
        pieces[1].as_ptr(),
        buffer,
        "the data is the command's buffer"
    );
    assert_eq!(pieces[1], &data[..]);
    let total = io.q.output_len();
    assert_eq!(total, pieces.iter().map(|p| p.len()).sum::<usize>());
    let mut sent = Vec::new();
    while io.q.output_len() > 0 {
        sent.push(io.q.output()[0]);
        io.q.consume_output(1);
    }
    assert_eq!(sent.len(), total);
    io.h.receive(&sent).expect("whole PDUs");
    let c = io.h.completion().expect("the read completes");
    assert_eq!(c.cid, cid);
    assert!(c.cqe.status.is_success());
    assert_eq!(c.data, data);
}
