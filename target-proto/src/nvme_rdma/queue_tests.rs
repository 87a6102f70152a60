//! Engine tests of an NVMe/RDMA queue: a scripted host and transport that follow what
//! Linux's nvme-rdma host sends (Connect data by RDMA READ on the admin queue, in the
//! capsule on I/O queues; reads and writes through Keyed SGLs), host memory regions named
//! by their rkeys, and a memory "disk" executing the block operations.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use target_wire::nvme::cqe::{Cqe, CqeRepr};
use target_wire::nvme::fabrics::{ConnectData, PropertySize};
use target_wire::nvme::identify::IdentifyController;
use target_wire::nvme::opcode::{AdminOpcode, Cns, FeatureId, IoOpcode};
use target_wire::nvme::sgl::SglRepr;
use target_wire::nvme::sqe::Sqe;
use target_wire::nvme::status::{CommandSpecificStatus, GenericStatus, MediaStatus, Status};
use target_wire::nvme_rdma::{CmRequestRepr, CmStatus};

use super::cm::{self, CmLimits};
use super::queue::{
    Action, CONNECT_TIMEOUT_MS, IN_CAPSULE_DATA, MAX_IN_CAPSULE_DATA, NvmeRdmaQueue,
    RECV_BUFFER_LEN, SLOTS_PER_ENTRY,
};
use crate::nvme::controller::{BlockIo, BlockOp, IoOutcome, MAX_TRANSFER};
use crate::nvme::subsystem::Registry;
use crate::nvme::testing::{BLOCKS, HOST, HOST_ID, NQN, disk, registry, run_block_op};
use crate::nvme_tcp::host::commands;

/// Where a command's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    /// In the capsule, after the SQE.
    InCapsule,
    /// In a host memory region the controller reaches by RDMA (Keyed SGL), with subtype
    /// Invalidate Key when `invalidate`.
    Keyed { invalidate: bool },
}

const KEYED: Data = Data::Keyed { invalidate: false };

/// What the host got back for one command.
#[derive(Debug)]
struct Reply {
    cqe: CqeRepr,
    /// Its memory region after the command (the data of a read).
    data: Vec<u8>,
    /// The rkey the response invalidated.
    invalidated: Option<u32>,
}

/// A host and the transport of one queue pair, wired to the queue, with a memory disk.
struct Host<'r> {
    q: NvmeRdmaQueue,
    registry: &'r Mutex<Registry>,
    disk: &'r Mutex<Vec<u8>>,
    next_cid: u16,
    /// Host memory regions by rkey: their address and bytes.
    memory: HashMap<u32, (u64, Vec<u8>)>,
    /// Responses by CID: the CQE and the rkey invalidated.
    responses: HashMap<u16, (CqeRepr, Option<u32>)>,
    /// Every action the queue asked for, in order.
    actions: Vec<Action>,
    /// Every block operation the queue asked for, in order.
    ios: Vec<BlockIo>,
    disconnected: bool,
}

/// The connect request private data Linux's host sends for a queue of `depth` entries.
fn cm_req(qid: u16, depth: u16) -> [u8; 32] {
    let mut b = [0u8; 32];
    CmRequestRepr {
        recfmt: 0,
        qid,
        hrqsize: depth,
        hsqsize: depth - 1,
        cntlid: 0,
    }
    .emit(&mut b)
    .unwrap();
    b
}

impl<'r> Host<'r> {
    /// A queue pair for queue `qid` of `depth` entries, accepted as the CM would.
    fn new(registry: &'r Mutex<Registry>, disk: &'r Mutex<Vec<u8>>, qid: u16, depth: u16) -> Self {
        let (rep, n) = cm::accept(&cm_req(qid, depth), &CmLimits::default()).expect("accepted");
        assert_eq!(rep.crqsize, depth);
        let q = NvmeRdmaQueue::new(n, None);
        assert_eq!(q.slots(), usize::from(depth) * SLOTS_PER_ENTRY);
        Self {
            q,
            registry,
            disk,
            next_cid: 0,
            memory: HashMap::new(),
            responses: HashMap::new(),
            actions: Vec::new(),
            ios: Vec::new(),
            disconnected: false,
        }
    }

    /// The region of `rkey` at `addr..addr + len`, as the host's RNIC checks it.
    fn region(&mut self, rkey: u32, addr: u64, len: u32) -> &mut [u8] {
        let (base, bytes) = self.memory.get_mut(&rkey).expect("a registered rkey");
        let at = addr.checked_sub(*base).expect("inside the region") as usize;
        bytes
            .get_mut(at..at + len as usize)
            .expect("inside the region")
    }

    /// Executes the queue's actions and block operations until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(a) = self.q.next_action() {
                moved = true;
                self.actions.push(a);
                self.transport(a);
            }
            moved |= self.run_io();
            if !moved {
                return;
            }
        }
    }

    /// What the transport does with one action, successfully.
    fn transport(&mut self, a: Action) {
        match a {
            Action::RdmaRead {
                slot,
                remote_addr,
                rkey,
                len,
            } => {
                let data = self.region(rkey, remote_addr, len).to_vec();
                let buf = self.q.buffer_mut(slot);
                assert_eq!(buf.len(), len as usize, "the buffer is sized for the READ");
                buf.copy_from_slice(&data);
                self.q.rdma_read_done(slot, true, self.registry, 0);
            }
            Action::RdmaWrite {
                slot,
                remote_addr,
                rkey,
                len,
            } => {
                let data = self.q.buffer(slot)[..len as usize].to_vec();
                self.region(rkey, remote_addr, len).copy_from_slice(&data);
            }
            Action::Send {
                slot,
                cqe,
                invalidate,
            } => {
                let c = CqeRepr::parse(&Cqe::new_checked(&cqe[..]).unwrap()).unwrap();
                assert!(
                    self.responses.insert(c.cid, (c, invalidate)).is_none(),
                    "one response per command"
                );
                self.q.send_done(slot, true);
            }
            Action::Disconnect => self.disconnected = true,
        }
    }

    /// Runs queued block operations against the disk; whether there were any.
    fn run_io(&mut self) -> bool {
        let mut ran = false;
        while let Some((slot, io)) = self.q.next_io() {
            ran = true;
            self.ios.push(io.clone());
            let outcome = run_block_op(
                &mut self.disk.lock().unwrap(),
                &io.op,
                self.q.buffer_mut(slot),
            );
            self.q.io_done(slot, outcome);
        }
        ran
    }

    /// Builds the capsule of a command: gives it a CID and, for keyed data, a region of
    /// `data` (or `host_len` zeroes) at rkey 0x100 + CID.
    fn capsule(
        &mut self,
        mut sqe: [u8; 64],
        data: &[u8],
        place: Data,
        host_len: u32,
    ) -> (u16, Vec<u8>) {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        let mut s = Sqe::new_unchecked(&mut sqe[..]);
        s.set_cid(cid);
        let mut capsule = Vec::new();
        let sgl = match place {
            Data::InCapsule => SglRepr::InCapsule {
                offset: 0,
                length: data.len() as u32,
            },
            Data::Keyed { invalidate } => {
                let rkey = 0x100 + u32::from(cid);
                let address = 0x7f00_0000_0000 + (u64::from(cid) << 24);
                let bytes = if data.is_empty() {
                    vec![0u8; host_len as usize]
                } else {
                    data.to_vec()
                };
                let length = bytes.len() as u32;
                self.memory.insert(rkey, (address, bytes));
                SglRepr::Keyed {
                    address,
                    length,
                    key: rkey,
                    invalidate,
                }
            }
        };
        s.set_sgl(&sgl).unwrap();
        capsule.extend_from_slice(&sqe);
        if place == Data::InCapsule {
            capsule.extend_from_slice(data);
        }
        (cid, capsule)
    }

    /// Sends a command and collects its reply.
    fn command(&mut self, sqe: [u8; 64], data: &[u8], place: Data, host_len: u32) -> Reply {
        let (cid, capsule) = self.capsule(sqe, data, place, host_len);
        assert!(self.q.capsule(&capsule, self.registry, 0), "taken");
        self.pump();
        self.reply(cid)
    }

    fn reply(&mut self, cid: u16) -> Reply {
        let (cqe, invalidated) = self.responses.remove(&cid).expect("a response");
        let data = self
            .memory
            .remove(&(0x100 + u32::from(cid)))
            .map(|(_, b)| b)
            .unwrap_or_default();
        Reply {
            cqe,
            data,
            invalidated,
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
            KEYED,
            host_len,
        )
    }

    /// Connect as Linux does: data by RDMA READ on the admin queue, in the capsule on an
    /// I/O queue.
    fn connect(&mut self, qid: u16, cntlid: u16, sqsize: u16) -> CqeRepr {
        let kato = if qid == 0 { 5000 } else { 0 };
        let (sqe, mut data) =
            commands::connect(qid, cntlid, sqsize, kato, NQN, HOST).expect("NQNs fit");
        ConnectData::new_checked(&mut data[..])
            .unwrap()
            .set_hostid(HOST_ID);
        let place = if qid == 0 { KEYED } else { Data::InCapsule };
        self.command(sqe, &data, place, 0).cqe
    }

    fn property_get(&mut self, offset: u32, size: PropertySize) -> u64 {
        let cqe = self
            .command(commands::property_get(offset, size), &[], KEYED, 0)
            .cqe;
        assert!(cqe.status.is_success(), "{cqe:?}");
        u64::from(cqe.dw0) | (u64::from(cqe.dw1) << 32)
    }

    fn io(&mut self, op: IoOpcode, slba: u64, blocks: u32, data: &[u8], place: Data) -> Reply {
        self.command(commands::io(op, 1, slba, blocks), data, place, blocks * 512)
    }

    /// The last `n` actions.
    fn last_actions(&self, n: usize) -> &[Action] {
        &self.actions[self.actions.len() - n..]
    }
}

fn ok(r: &Reply) -> bool {
    r.cqe.status.is_success()
}

/// Connects an admin queue (32 entries), enables the controller and asks for 4 I/O queues.
fn admin_session<'r>(registry: &'r Mutex<Registry>, disk: &'r Mutex<Vec<u8>>) -> (Host<'r>, u16) {
    let mut admin = Host::new(registry, disk, 0, 32);
    let cqe = admin.connect(0, 0xffff, 31);
    assert!(cqe.status.is_success(), "{cqe:?}");
    assert!(
        matches!(admin.actions[0], Action::RdmaRead { len: 1024, .. }),
        "the admin Connect's data came by RDMA READ"
    );
    let cntlid = cqe.dw0 as u16;
    assert_eq!(
        admin.property_get(0x00, PropertySize::Eight) & 0xffff,
        127,
        "MQES"
    );
    let r = admin.command(commands::enable(), &[], KEYED, 0);
    assert!(ok(&r));
    assert_eq!(
        admin.property_get(0x1c, PropertySize::Four) & 1,
        1,
        "CSTS.RDY"
    );
    let r = admin.admin(
        AdminOpcode::SetFeatures,
        u32::from(u8::from(FeatureId::NumberOfQueues)),
        3 | (3 << 16),
        0,
        0,
    );
    assert!(ok(&r));
    (admin, cntlid)
}

/// An I/O queue of `depth` entries on controller `cntlid`.
fn io_queue<'r>(
    registry: &'r Mutex<Registry>,
    disk: &'r Mutex<Vec<u8>>,
    cntlid: u16,
    depth: u16,
) -> Host<'r> {
    let mut io = Host::new(registry, disk, 1, depth);
    let cqe = io.connect(1, cntlid, depth - 1);
    assert!(cqe.status.is_success(), "{cqe:?}");
    io
}

#[test]
fn linux_connect_sequence_identify_and_io() {
    let registry = registry();
    let disk = disk();
    let (mut admin, cntlid) = admin_session(&registry, &disk);

    let id = admin.admin(
        AdminOpcode::Identify,
        u32::from(u8::from(Cns::Controller)),
        0,
        0,
        4096,
    );
    assert!(ok(&id));
    // The data goes first, by RDMA WRITE into the host's region, then the response.
    let [write, send] = admin.last_actions(2) else {
        unreachable!()
    };
    assert!(
        matches!(write, Action::RdmaWrite { len: 4096, rkey, .. } if *rkey == 0x100 + u32::from(id.cqe.cid))
    );
    assert!(matches!(
        send,
        Action::Send {
            invalidate: None,
            ..
        }
    ));
    let idc = IdentifyController::new_checked(&id.data[..]).unwrap();
    assert_eq!(idc.cntlid(), cntlid);
    assert_eq!(idc.subnqn().unwrap(), NQN);
    assert_eq!(idc.mdts(), 5);
    assert_eq!(idc.ioccsz() as usize, (64 + IN_CAPSULE_DATA) / 16);
    // Linux's nvme-rdma host refuses a controller without keyed SGL Data Blocks.
    assert_ne!(idc.sgls() & target_wire::nvme::identify::sgls::KEYED, 0);

    // The I/O queue's Connect data came in the capsule: no RDMA READ.
    let mut io = io_queue(&registry, &disk, cntlid, 128);
    assert!(matches!(io.actions[..], [Action::Send { .. }]));

    // A 64 KiB write by RDMA READ, a 4 KiB write in the capsule, reads of both.
    let big: Vec<u8> = (0..65536u32).map(|i| (i * 31 + 7) as u8).collect();
    assert!(ok(&io.io(IoOpcode::Write, 8, 128, &big, KEYED)));
    let small = vec![0xa5u8; 4096];
    assert!(ok(&io.io(IoOpcode::Write, 300, 8, &small, Data::InCapsule)));
    let r = io.io(IoOpcode::Read, 8, 128, &[], KEYED);
    assert!(ok(&r));
    assert_eq!(r.data, big);
    assert_eq!(io.io(IoOpcode::Read, 300, 8, &[], KEYED).data, small);
    assert_eq!(&disk.lock().unwrap()[8 * 512..8 * 512 + 65536], &big[..]);

    // Compare: equal, then different.
    assert!(ok(&io.io(
        IoOpcode::Compare,
        300,
        8,
        &small,
        Data::InCapsule
    )));
    let c = io.io(IoOpcode::Compare, 300, 8, &[0u8; 4096], KEYED);
    assert_eq!(c.cqe.status, Status::media(MediaStatus::CompareFailure));

    // Write Zeroes and Flush carry no data: no RDMA at all.
    let before = io.actions.len();
    assert!(ok(&io.io(IoOpcode::WriteZeroes, 300, 8, &[], KEYED)));
    assert!(ok(&io.command(
        commands::io(IoOpcode::Flush, 1, 0, 0),
        &[],
        KEYED,
        0
    )));
    assert!(
        io.actions[before..]
            .iter()
            .all(|a| matches!(a, Action::Send { .. }))
    );
    assert_eq!(io.ios.last().unwrap().op, BlockOp::Flush);
    assert_eq!(
        io.io(IoOpcode::Read, 300, 8, &[], KEYED).data,
        vec![0u8; 4096]
    );
    assert!(!io.disconnected && !admin.disconnected);
}

#[test]
fn a_keyed_write_step_by_step() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 128);
    let data: Vec<u8> = (0..65536u32).map(|i| (i >> 8) as u8 ^ i as u8).collect();
    let (cid, capsule) = io.capsule(commands::io(IoOpcode::Write, 1, 64, 128), &data, KEYED, 0);
    let rkey = 0x100 + u32::from(cid);
    let address = io.memory[&rkey].0;
    assert!(io.q.capsule(&capsule, &registry, 0));
    let Some(Action::RdmaRead {
        slot,
        remote_addr,
        rkey: k,
        len,
    }) = io.q.next_action()
    else {
        panic!("an RDMA READ first")
    };
    assert_eq!((remote_addr, k, len), (address, rkey, 65536));
    assert_eq!(io.q.next_action(), None, "nothing before the data is in");
    assert_eq!(io.q.next_io(), None);
    io.q.buffer_mut(slot).copy_from_slice(&data);
    io.q.rdma_read_done(slot, true, &registry, 0);
    let (s, op) = io.q.next_io().expect("the write runs");
    assert_eq!(s, slot);
    assert_eq!(
        op.op,
        BlockOp::Write {
            offset: 64 * 512,
            len: 65536,
            fua: false
        }
    );
    assert_eq!(io.q.buffer(slot), &data[..]);
    io.q.io_done(slot, IoOutcome::Ok);
    let Some(Action::Send {
        slot: s,
        cqe,
        invalidate: None,
    }) = io.q.next_action()
    else {
        panic!("the response")
    };
    assert_eq!(s, slot);
    let c = CqeRepr::parse(&Cqe::new_checked(&cqe[..]).unwrap()).unwrap();
    assert_eq!((c.cid, c.sqid, c.status), (cid, 1, Status::SUCCESS));
    assert_eq!(io.q.next_action(), None);
    io.q.send_done(slot, true);
    // The slot is free again: the next command takes it.
    let (_, capsule) = io.capsule(commands::io(IoOpcode::Read, 1, 64, 8), &[], KEYED, 4096);
    assert!(io.q.capsule(&capsule, &registry, 0));
    assert_eq!(io.q.next_io().map(|(s, _)| s), Some(slot));
}

#[test]
fn a_read_with_invalidate_is_answered_with_send_with_invalidate() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 128);
    disk.lock().unwrap()[..4096].fill(0x3c);
    let r = io.io(IoOpcode::Read, 0, 8, &[], Data::Keyed { invalidate: true });
    assert!(ok(&r));
    assert_eq!(r.data, vec![0x3c; 4096]);
    let rkey = 0x100 + u32::from(r.cqe.cid);
    assert_eq!(r.invalidated, Some(rkey));
    assert!(matches!(
        io.last_actions(2),
        [Action::RdmaWrite { len: 4096, .. }, Action::Send { invalidate: Some(k), .. }] if *k == rkey
    ));
    // A write asking for invalidation gets it too (after its RDMA READ); a command that
    // errs after its SGL was taken still invalidates (the host would otherwise do it).
    let w = io.io(
        IoOpcode::Write,
        0,
        1,
        &[1u8; 512],
        Data::Keyed { invalidate: true },
    );
    assert_eq!(w.invalidated, Some(0x100 + u32::from(w.cqe.cid)));
    let e = io.io(
        IoOpcode::Read,
        BLOCKS,
        1,
        &[],
        Data::Keyed { invalidate: true },
    );
    assert_eq!(e.cqe.status, Status::lba_out_of_range());
    assert_eq!(e.invalidated, Some(0x100 + u32::from(e.cqe.cid)));
    // Without the subtype, or without data, nothing is invalidated.
    assert_eq!(io.io(IoOpcode::Read, 0, 8, &[], KEYED).invalidated, None);
    let f = io.command(
        commands::io(IoOpcode::Flush, 1, 0, 0),
        &[],
        Data::Keyed { invalidate: true },
        0,
    );
    assert!(ok(&f));
    assert_eq!(f.invalidated, None, "a zero-length SGL names no memory");
}

#[test]
fn malformed_data_descriptors_get_their_status() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 128);
    let dnr = |g| Status::generic(g).with_dnr();
    let send = |io: &mut Host<'_>, capsule: &[u8]| {
        assert!(io.q.capsule(capsule, &registry, 0));
        io.pump();
        let cid = u16::from_le_bytes([capsule[2], capsule[3]]);
        io.reply(cid).cqe.status
    };
    let write = commands::io(IoOpcode::Write, 1, 0, 8);
    let (_, mut c) = io.capsule(write, &[7u8; 4096], Data::InCapsule, 0);
    // In-capsule data the capsule does not hold.
    let mut d = Sqe::new_unchecked(&mut c[..64]);
    d.set_sgl(&SglRepr::InCapsule {
        offset: 0,
        length: 4097,
    })
    .unwrap();
    assert_eq!(send(&mut io, &c), dnr(GenericStatus::DataSglLengthInvalid));
    let mut d = Sqe::new_unchecked(&mut c[..64]);
    d.set_sgl(&SglRepr::InCapsule {
        offset: 4097,
        length: 0,
    })
    .unwrap();
    assert_eq!(send(&mut io, &c), dnr(GenericStatus::SglOffsetInvalid));
    let mut d = Sqe::new_unchecked(&mut c[..64]);
    d.set_sgl(&SglRepr::InCapsule {
        offset: u64::MAX,
        length: 8,
    })
    .unwrap();
    assert_eq!(send(&mut io, &c), dnr(GenericStatus::SglOffsetInvalid));
    // Data at an offset inside the capsule is what the command gets.
    let mut d = Sqe::new_unchecked(&mut c[..64]);
    d.set_cdw12(0); // one block
    d.set_sgl(&SglRepr::InCapsule {
        offset: 512,
        length: 512,
    })
    .unwrap();
    c[64 + 512..64 + 1024].fill(0x99);
    assert_eq!(send(&mut io, &c), Status::SUCCESS);
    assert_eq!(disk.lock().unwrap()[..512], [0x99; 512]);

    // In-capsule data on a read, NVMe/TCP's transport SGL, a segment descriptor.
    let (_, c) = io.capsule(
        commands::io(IoOpcode::Read, 1, 0, 1),
        &[0u8; 512],
        Data::InCapsule,
        0,
    );
    assert_eq!(send(&mut io, &c), dnr(GenericStatus::DataSglLengthInvalid));
    let (_, mut c) = io.capsule(commands::io(IoOpcode::Read, 1, 0, 1), &[], KEYED, 512);
    Sqe::new_unchecked(&mut c[..64])
        .set_sgl(&SglRepr::Transport { length: 512 })
        .unwrap();
    assert_eq!(
        send(&mut io, &c),
        dnr(GenericStatus::SglDescriptorTypeInvalid)
    );
    c[39] = 0x20;
    assert_eq!(
        send(&mut io, &c),
        dnr(GenericStatus::SglDescriptorTypeInvalid)
    );

    // A keyed length beyond MDTS, and a keyed buffer smaller than the read.
    let (_, mut c) = io.capsule(commands::io(IoOpcode::Read, 1, 0, 8), &[], KEYED, 4096);
    let mut d = Sqe::new_unchecked(&mut c[..64]);
    d.set_sgl(&SglRepr::Keyed {
        address: 0,
        length: MAX_TRANSFER as u32 + 1,
        key: 1,
        invalidate: true,
    })
    .unwrap();
    assert_eq!(send(&mut io, &c), Status::invalid_field());
    let (_, c) = io.capsule(commands::io(IoOpcode::Read, 1, 0, 8), &[], KEYED, 4095);
    assert_eq!(send(&mut io, &c), dnr(GenericStatus::DataSglLengthInvalid));
    // A write whose keyed length is not the command's.
    let r = io.io(IoOpcode::Write, 0, 2, &[1u8; 512], KEYED);
    assert_eq!(
        r.cqe.status,
        Status::generic(GenericStatus::DataSglLengthInvalid)
    );
    assert!(!io.disconnected, "none of these ends the queue");
}

#[test]
fn a_command_id_in_use_is_a_conflict() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 128);
    let (cid, first) = io.capsule(commands::io(IoOpcode::Read, 1, 0, 1), &[], KEYED, 512);
    assert!(io.q.capsule(&first, &registry, 0));
    // Same CID while the first waits for its block operation.
    assert!(io.q.capsule(&first, &registry, 0));
    let Some(Action::Send { cqe, slot, .. }) = io.q.next_action() else {
        panic!("the conflict is answered at once")
    };
    let c = CqeRepr::parse(&Cqe::new_checked(&cqe[..]).unwrap()).unwrap();
    assert_eq!(c.cid, cid);
    assert_eq!(
        c.status,
        Status::generic(GenericStatus::CommandIdConflict).with_dnr()
    );
    io.q.send_done(slot, true);
    io.pump();
    assert!(
        io.responses[&cid].0.status.is_success(),
        "the first completes"
    );
    // Once answered, the CID is free again, even before the SEND completes.
    let (slot, _) = {
        assert!(io.q.capsule(&first, &registry, 0));
        io.q.next_io().unwrap()
    };
    io.q.io_done(slot, IoOutcome::Ok);
    let Some(Action::RdmaWrite { .. }) = io.q.next_action() else {
        panic!()
    };
    let Some(Action::Send { slot: s, .. }) = io.q.next_action() else {
        panic!()
    };
    assert!(
        io.q.capsule(&first, &registry, 0),
        "Responding does not conflict"
    );
    assert!(io.q.next_io().is_some());
    io.q.send_done(s, true);
}

#[test]
fn a_failed_rdma_read_ends_the_command_not_the_queue() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 128);
    let (cid, c) = io.capsule(
        commands::io(IoOpcode::Write, 1, 0, 8),
        &[5u8; 4096],
        KEYED,
        0,
    );
    assert!(io.q.capsule(&c, &registry, 0));
    let Some(Action::RdmaRead { slot, .. }) = io.q.next_action() else {
        panic!()
    };
    io.q.rdma_read_done(slot, false, &registry, 0);
    assert_eq!(io.q.next_io(), None, "nothing is written");
    let Some(Action::Send { slot: s, cqe, .. }) = io.q.next_action() else {
        panic!()
    };
    assert_eq!(s, slot);
    let c = CqeRepr::parse(&Cqe::new_checked(&cqe[..]).unwrap()).unwrap();
    assert_eq!(
        (c.cid, c.status),
        (cid, Status::generic(GenericStatus::TransientTransportError))
    );
    // A second completion for the same READ is ignored.
    io.q.rdma_read_done(slot, true, &registry, 0);
    assert_eq!((io.q.next_action(), io.q.next_io()), (None, None));
    io.q.send_done(slot, true);
    assert!(!io.q.closing());
    assert!(ok(&io.io(IoOpcode::Write, 0, 8, &[5u8; 4096], KEYED)));
    assert_eq!(disk.lock().unwrap()[..4096], [5u8; 4096]);
}

#[test]
fn completions_for_the_wrong_slot_or_state_are_ignored() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 128);
    let (_, c) = io.capsule(
        commands::io(IoOpcode::Write, 1, 0, 1),
        &[9u8; 512],
        KEYED,
        0,
    );
    assert!(io.q.capsule(&c, &registry, 0));
    // The READ was queued but not taken: its completion cannot have come.
    let slot = 0;
    io.q.rdma_read_done(slot, true, &registry, 0);
    assert_eq!(io.q.next_io(), None);
    let Some(Action::RdmaRead { slot, .. }) = io.q.next_action() else {
        panic!()
    };
    // Wrong slots and the wrong kind of completion.
    for bad in [slot + 1, 9999] {
        io.q.rdma_read_done(bad, true, &registry, 0);
        io.q.io_done(bad, IoOutcome::Ok);
        io.q.send_done(bad, true);
    }
    io.q.io_done(slot, IoOutcome::Ok);
    io.q.send_done(slot, true);
    assert_eq!((io.q.next_action(), io.q.next_io()), (None, None));
    io.q.buffer_mut(slot).fill(9);
    io.q.rdma_read_done(slot, true, &registry, 0);
    let (s, _) = io.q.next_io().unwrap();
    io.q.rdma_read_done(slot, true, &registry, 0);
    io.q.io_done(s, IoOutcome::Ok);
    io.q.io_done(s, IoOutcome::Ok);
    // The Send is queued, not taken: its completion is ignored, and one Send only.
    io.q.send_done(s, true);
    assert!(matches!(io.q.next_action(), Some(Action::Send { .. })));
    assert_eq!(io.q.next_action(), None, "one response");
    io.q.send_done(s, true);
    io.q.send_done(s, true);
    io.q.io_done(s, IoOutcome::Ok);
    assert_eq!(io.q.next_action(), None);
    assert_eq!(io.q.buffer(9999), &[] as &[u8]);
    assert!(io.q.buffer_mut(9999).is_empty());
}

#[test]
fn a_host_beyond_its_queue_depth_is_disconnected() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 4);
    let read = |io: &mut Host<'_>| {
        let (_, c) = io.capsule(commands::io(IoOpcode::Read, 1, 0, 1), &[], KEYED, 512);
        c
    };
    // Four reads wait for the disk: the queue is full.
    for _ in 0..4 {
        let c = read(&mut io);
        assert!(io.q.capsule(&c, &registry, 0));
    }
    assert_eq!(io.q.pending_actions(), 0);
    let c = read(&mut io);
    assert!(io.q.capsule(&c, &registry, 0));
    assert_eq!(io.q.next_action(), Some(Action::Disconnect));
    assert!(io.q.closing());
    // Nothing more goes out, whatever completes.
    io.run_io();
    assert!(io.q.capsule(&c, &registry, 0));
    assert_eq!(io.q.next_action(), None);
}

#[test]
fn answered_entries_are_reused_before_their_sends_complete() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 4);
    let mut sends = VecDeque::new();
    // The host reuses each entry as soon as its response arrives; the transport has not
    // seen one SEND complete. Two rounds fill the 8 slots.
    for _ in 0..2 {
        for _ in 0..4 {
            let (_, c) = io.capsule(commands::io(IoOpcode::Flush, 1, 0, 0), &[], KEYED, 0);
            assert!(io.q.capsule(&c, &registry, 0));
        }
        io.run_io();
        while let Some(a) = io.q.next_action() {
            let Action::Send { slot, .. } = a else {
                panic!("{a:?}")
            };
            sends.push_back(slot);
        }
    }
    assert_eq!(sends.len(), 8);
    // A ninth: not a flow-control violation, but no slot either: offer it again later.
    let (_, c) = io.capsule(commands::io(IoOpcode::Flush, 1, 0, 0), &[], KEYED, 0);
    assert!(!io.q.capsule(&c, &registry, 0));
    assert!(!io.q.closing());
    io.q.send_done(sends.pop_front().unwrap(), true);
    assert!(io.q.capsule(&c, &registry, 0));
    assert_eq!(io.q.next_io().map(|(_, o)| o.op), Some(BlockOp::Flush));
}

#[test]
fn malformed_capsules_and_failed_sends_end_the_queue() {
    let registry = registry();
    let disk = disk();
    let mut h = Host::new(&registry, &disk, 0, 32);
    assert!(h.q.capsule(&[0u8; 63], &registry, 0));
    assert_eq!(h.q.next_action(), Some(Action::Disconnect));
    let mut h = Host::new(&registry, &disk, 0, 32);
    assert!(h.q.capsule(&vec![0u8; RECV_BUFFER_LEN + 1], &registry, 0));
    assert_eq!(h.q.next_action(), Some(Action::Disconnect));
    // A response the transport could not send.
    let mut h = Host::new(&registry, &disk, 0, 32);
    let (_, c) = h.capsule(commands::enable(), &[], KEYED, 0);
    assert!(h.q.capsule(&c, &registry, 0));
    let Some(Action::Send { slot, cqe, .. }) = h.q.next_action() else {
        panic!()
    };
    assert_eq!(
        Cqe::new_checked(&cqe[..]).unwrap().status(),
        Status::generic(GenericStatus::CommandSequenceError),
        "nothing before Connect"
    );
    h.q.send_done(slot, false);
    assert_eq!(h.q.next_action(), Some(Action::Disconnect));
    assert_eq!(h.q.next_action(), None, "one Disconnect");
}

#[test]
fn the_in_capsule_size_is_the_queues_own() {
    let registry = registry();
    let disk = disk();
    let (_, n) = cm::accept(&cm_req(0, 32), &CmLimits::default()).expect("accepted");
    // Rounded to IOCCSZ's 16-byte units and bounded.
    let q = NvmeRdmaQueue::with_in_capsule_data(n, None, 4100);
    assert_eq!(q.recv_buffer_len(), 64 + 4096);
    let big = NvmeRdmaQueue::with_in_capsule_data(n, None, 1 << 20);
    assert_eq!(big.recv_buffer_len(), 64 + MAX_IN_CAPSULE_DATA);
    // A capsule longer than the queue's receive buffers cannot have come through them.
    let mut h = Host::new(&registry, &disk, 0, 32);
    h.q = NvmeRdmaQueue::with_in_capsule_data(n, None, 4096);
    assert!(h.q.capsule(&vec![0u8; 64 + 4096 + 16], &registry, 0));
    assert_eq!(h.q.next_action(), Some(Action::Disconnect));
    // Identify reports the queue's size in IOCCSZ.
    let mut h = Host::new(&registry, &disk, 0, 32);
    h.q = NvmeRdmaQueue::with_in_capsule_data(n, None, 4096);
    assert!(h.connect(0, 0xffff, 31).status.is_success());
    assert!(ok(&h.command(commands::enable(), &[], KEYED, 0)));
    let id = h.admin(
        AdminOpcode::Identify,
        u32::from(u8::from(Cns::Controller)),
        0,
        0,
        4096,
    );
    assert!(ok(&id));
    let idc = IdentifyController::new_checked(&id.data[..]).unwrap();
    assert_eq!(idc.ioccsz(), (64 + 4096) / 16);
}

#[test]
fn connect_must_match_the_connect_request() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let invalid = Status::command_specific(CommandSpecificStatus::ConnectInvalidParameters);
    // The queue pair was set up for queue 1 of 16 entries.
    let mut io = Host::new(&registry, &disk, 1, 16);
    let c = io.connect(2, cntlid, 15);
    assert_eq!((c.status, c.dw0), (invalid, 42), "IPO QID");
    let c = io.connect(1, cntlid, 16);
    assert_eq!((c.status, c.dw0), (invalid, 44), "IPO SQSIZE");
    assert!(io.connect(1, cntlid, 15).status.is_success());
    // And an admin queue is an admin queue.
    let mut a = Host::new(&registry, &disk, 0, 32);
    assert_eq!(a.connect(1, cntlid, 31).dw0, 42);
    // The CM refuses what the queue could not hold before any capsule.
    let rej = cm::accept(&cm_req(0, 64), &CmLimits::default()).unwrap_err();
    assert_eq!(rej.status, CmStatus::InvalidHsqsize);
}

#[test]
fn the_fabrics_disconnect_command_is_answered_then_the_queue_ends() {
    let registry = registry();
    let disk = disk();
    let (_admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 16);
    let mut sqe = [0u8; 64];
    sqe[0] = 0x7f;
    sqe[4] = 0x08;
    let r = io.command(sqe, &[], KEYED, 0);
    assert!(ok(&r));
    assert!(matches!(
        io.last_actions(2),
        [Action::Send { .. }, Action::Disconnect]
    ));
    assert!(io.disconnected);
}

#[test]
fn keep_alive_expiry_and_a_gone_controller_end_the_queues() {
    let registry = registry();
    let disk = disk();
    let (mut admin, cntlid) = admin_session(&registry, &disk);
    let mut io = io_queue(&registry, &disk, cntlid, 16);
    assert!(admin.q.tick(5000, &registry), "within KATO + grace");
    assert!(
        !admin.q.tick(6001, &registry),
        "KATO 5 s + 1 s grace passed"
    );
    assert_eq!(admin.q.end_reason(), Some("keep-alive timeout expired"));
    assert_eq!(admin.q.next_action(), Some(Action::Disconnect));
    admin.q.teardown(&registry);
    assert!(
        !io.q.tick(6001, &registry),
        "the I/O queue follows its controller"
    );
    assert_eq!(io.q.end_reason(), Some("its controller is gone"));
    assert_eq!(io.q.next_action(), Some(Action::Disconnect));
}

#[test]
fn a_queue_pair_that_never_connects_times_out() {
    let registry = registry();
    let disk = disk();
    let mut h = Host::new(&registry, &disk, 0, 32);
    assert!(h.q.tick(1_000, &registry));
    assert!(h.q.tick(1_000 + CONNECT_TIMEOUT_MS - 1, &registry));
    assert!(!h.q.tick(1_000 + CONNECT_TIMEOUT_MS, &registry));
    assert_eq!(h.q.end_reason(), Some("no Connect within 10 s"));
    assert_eq!(h.q.next_action(), Some(Action::Disconnect));
}
