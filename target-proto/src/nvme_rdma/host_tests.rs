//! Engine tests of the NVMe/RDMA host queue against the controller's queue engine, in
//! process: a simulated pair of RNICs carries the host's capsules to the controller's
//! queue, executes its RDMA READs and WRITEs against the host's data region (by the
//! address and rkey of the Keyed SGL, as an RNIC checks them), and delivers its responses
//! into the receives the host posted, in the order posted. Both sides are the crate's own,
//! so a wrong capsule, SGL, CID or buffer on either side fails here.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use target_wire::nvme::cqe::CqeRepr;
use target_wire::nvme::fabrics::PropertySize;
use target_wire::nvme::identify::{IdentifyController, IdentifyNamespace};
use target_wire::nvme::opcode::{AdminOpcode, Cns, FeatureId, IoOpcode};
use target_wire::nvme::properties::CSTS;
use target_wire::nvme::status::Status;
use target_wire::nvme_rdma::{CmReplyRepr, CmRequestRepr};

use super::cm::{self, CmLimits};
use super::host::{
    Completion, HostConfig, HostError, HostQueue, RESPONSE_LEN, Region, SubmitError, commands,
};
use super::queue::{Action, NvmeRdmaQueue};
use crate::nvme::subsystem::Registry;
use crate::nvme::testing::{BLOCKS, HOST, NQN, disk, registry, run_block_op};

/// Where the host's data region is, as the controller addresses it, and its rkey.
const DATA_BASE: u64 = 0x7f5a_0000_1000;
const RKEY: u32 = 0x00c0_ffee;

/// One queue pair: the host queue, the controller's queue, and the RNICs between them.
struct Pair<'r> {
    host: HostQueue,
    target: NvmeRdmaQueue,
    registry: &'r Mutex<Registry>,
    disk: &'r Mutex<Vec<u8>>,
    /// The receives the host posted, in order: a queue pair fills them first in, first out.
    receives: VecDeque<usize>,
    /// Capsules the controller had no slot for, offered again later (their slot, bytes).
    waiting: VecDeque<(usize, Vec<u8>)>,
    /// Hold the host's SEND completions back (in `held`) until told.
    hold_sends: bool,
    held: Vec<usize>,
    /// Every action the controller asked for, in order.
    actions: Vec<Action>,
    disconnected: bool,
}

impl<'r> Pair<'r> {
    /// Connects queue pair `qid` as the CM would: the host's connect request goes through
    /// the controller's accept, and the accept back to the host.
    fn new(
        registry: &'r Mutex<Registry>,
        disk: &'r Mutex<Vec<u8>>,
        qid: u16,
        cntlid: u16,
        config: HostConfig,
    ) -> Self {
        let mut host = HostQueue::new(config);
        host.set_data_key(DATA_BASE, RKEY);
        let request = host.cm_request(qid, cntlid);
        let (reply, negotiated) =
            cm::accept(&request, &CmLimits::default()).expect("the controller accepts");
        assert_eq!(negotiated.depth, config.depth);
        host.accepted(&reply.to_bytes()).expect("the host accepts");
        let receives = (0..host.receives()).collect();
        Self {
            host,
            target: NvmeRdmaQueue::new(negotiated, None),
            registry,
            disk,
            receives,
            waiting: VecDeque::new(),
            hold_sends: false,
            held: Vec::new(),
            actions: Vec::new(),
            disconnected: false,
        }
    }

    /// The host's data region at `addr..addr + len`, checked as the host's RNIC checks an
    /// RDMA access: the right rkey, inside the region.
    fn host_data(&mut self, rkey: u32, addr: u64, len: u32) -> &mut [u8] {
        assert_eq!(rkey, RKEY, "the controller used the data region's rkey");
        let data = self.host.memory_mut(Region::Data);
        let at = addr
            .checked_sub(DATA_BASE)
            .expect("an access inside the host's data region") as usize;
        data.get_mut(at..at + len as usize)
            .expect("an access inside the host's data region")
    }

    /// Moves capsules, RDMA operations, block I/O and responses until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(s) = self.host.next_send() {
                moved = true;
                let bytes = self.host.memory(Region::Capsules)[s.offset..s.offset + s.len].to_vec();
                self.waiting.push_back((s.slot, bytes));
            }
            while let Some((slot, bytes)) = self.waiting.pop_front() {
                if !self.target.capsule(&bytes, self.registry, 0) {
                    self.waiting.push_front((slot, bytes));
                    break;
                }
                moved = true;
                if self.hold_sends {
                    self.held.push(slot);
                } else {
                    self.host.send_done(slot).expect("a SEND the host posted");
                }
            }
            while let Some(a) = self.target.next_action() {
                moved = true;
                self.actions.push(a);
                self.rnic(a);
            }
            while let Some((slot, io)) = self.target.next_io() {
                moved = true;
                let outcome = run_block_op(
                    &mut self.disk.lock().unwrap(),
                    &io.op,
                    self.target.buffer_mut(slot),
                );
                self.target.io_done(slot, outcome);
            }
            if !moved {
                return;
            }
        }
    }

    /// What the RNICs do with one of the controller's actions, successfully.
    fn rnic(&mut self, a: Action) {
        match a {
            Action::RdmaRead {
                slot,
                remote_addr,
                rkey,
                len,
            } => {
                let data = self.host_data(rkey, remote_addr, len).to_vec();
                self.target.buffer_mut(slot).copy_from_slice(&data);
                self.target.rdma_read_done(slot, true, self.registry, 0);
            }
            Action::RdmaWrite {
                slot,
                remote_addr,
                rkey,
                len,
            } => {
                let data = self.target.buffer(slot)[..len as usize].to_vec();
                self.host_data(rkey, remote_addr, len)
                    .copy_from_slice(&data);
            }
            Action::Send {
                slot,
                cqe,
                invalidate,
            } => {
                assert_eq!(invalidate, None, "the host never asks for invalidation");
                let i = self
                    .receives
                    .pop_front()
                    .expect("a receive posted for every response");
                let at = self.host.response_offset(i);
                self.host.memory_mut(Region::Responses)[at..at + RESPONSE_LEN]
                    .copy_from_slice(&cqe);
                self.host
                    .response(i, RESPONSE_LEN)
                    .expect("a response the host expects");
                self.receives.push_back(i);
                self.target.send_done(slot, true);
            }
            Action::Disconnect => self.disconnected = true,
        }
    }

    /// The host's SEND completions held back arrive.
    fn release_sends(&mut self) {
        for slot in std::mem::take(&mut self.held) {
            self.host.send_done(slot).expect("a SEND the host posted");
        }
    }

    fn completions(&mut self) -> HashMap<u16, Completion> {
        std::iter::from_fn(|| self.host.completion())
            .map(|c| (c.cid, c))
            .collect()
    }

    /// One command, to its completion.
    fn command(&mut self, sqe: [u8; 64], write: &[u8], read_len: usize) -> Completion {
        let cid = self.host.submit(sqe, write, read_len).expect("submitted");
        self.pump();
        let c = self.host.completion().expect("a completion");
        assert_eq!(c.cid, cid);
        assert_eq!(self.host.completion(), None);
        c
    }

    fn ok(&mut self, sqe: [u8; 64], write: &[u8], read_len: usize) -> Completion {
        let c = self.command(sqe, write, read_len);
        assert!(c.cqe.status.is_success(), "{:?}", c.cqe);
        c
    }

    fn io(&mut self, op: IoOpcode, slba: u64, blocks: u32, write: &[u8]) -> Completion {
        let read_len = if write.is_empty() {
            blocks as usize * 512
        } else {
            0
        };
        self.command(commands::io(op, 1, slba, blocks), write, read_len)
    }

    fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.actions.iter().filter(|a| f(a)).count()
    }
}

fn config(depth: u16, in_capsule: usize, data_len: usize) -> HostConfig {
    HostConfig {
        depth,
        in_capsule,
        data_len,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 9) as u8)
        .collect()
}

/// The admin queue as `perf` sets it up (Linux's: 32 entries, no in-capsule data, so the
/// Connect data goes by Keyed SGL): Connect, CC.EN, CSTS.RDY, Identify Controller, two queues. Returns
/// the queue, the controller's ID and its in-capsule data size from IOCCSZ.
fn admin<'r>(registry: &'r Mutex<Registry>, disk: &'r Mutex<Vec<u8>>) -> (Pair<'r>, u16, usize) {
    let mut a = Pair::new(registry, disk, 0, 0, config(32, 0, 4096));
    let (sqe, data) = commands::connect(0, 0xffff, 31, 30_000, NQN, HOST).unwrap();
    let c = a.ok(sqe, &data, 0);
    assert!(
        matches!(a.actions[0], Action::RdmaRead { len: 1024, .. }),
        "the admin Connect's data was read from the host's buffer: {:?}",
        a.actions
    );
    let cntlid = c.cqe.dw0 as u16;
    a.ok(commands::enable(), &[], 0);
    let csts = a.ok(commands::property_get(CSTS, PropertySize::Four), &[], 0);
    assert_eq!(csts.cqe.dw0 & 1, 1, "CSTS.RDY");
    let id = a.ok(
        commands::admin(
            AdminOpcode::Identify,
            0,
            u32::from(u8::from(Cns::Controller)),
            0,
        ),
        &[],
        4096,
    );
    let idc = IdentifyController::new_checked(&id.data[..]).unwrap();
    assert_eq!(idc.cntlid(), cntlid);
    assert_eq!(idc.subnqn().unwrap(), NQN);
    let in_capsule = (idc.ioccsz() as usize * 16).saturating_sub(64);
    let want = 1u32;
    a.ok(
        commands::admin(
            AdminOpcode::SetFeatures,
            0,
            u32::from(u8::from(FeatureId::NumberOfQueues)),
            want | (want << 16),
        ),
        &[],
        0,
    );
    (a, cntlid, in_capsule)
}

#[test]
fn a_host_session_writes_and_reads_back_through_the_controller() {
    let registry = registry();
    let disk = disk();
    let (mut a, cntlid, in_capsule) = admin(&registry, &disk);
    assert_eq!(in_capsule, 8192);
    let ns = a.ok(
        commands::admin(
            AdminOpcode::Identify,
            1,
            u32::from(u8::from(Cns::Namespace)),
            0,
        ),
        &[],
        4096,
    );
    let ns = IdentifyNamespace::new_checked(&ns.data[..]).unwrap();
    assert_eq!(
        (ns.nsze(), 1usize << ns.current_lbaf().lbads),
        (BLOCKS, 512)
    );

    // An I/O queue of 16 entries with 64 KiB buffers: its Connect data goes in the capsule.
    let mut io = Pair::new(&registry, &disk, 1, cntlid, config(16, in_capsule, 65536));
    let (sqe, data) = commands::connect(1, cntlid, 15, 0, NQN, HOST).unwrap();
    io.ok(sqe, &data, 0);
    assert_eq!(io.actions.len(), 1, "only the response: {:?}", io.actions);

    // Eight writes in flight at once: 4 KiB ones in the capsule, 64 KiB ones by RDMA READ.
    let mut written = HashMap::new();
    for i in 0..8u8 {
        let (lba, len) = if i % 2 == 0 {
            (u64::from(i) * 16, 4096)
        } else {
            (1024 + u64::from(i) * 128, 65536)
        };
        let data = pattern(i, len);
        let blocks = (len / 512) as u32;
        let cid = io
            .host
            .submit(commands::io(IoOpcode::Write, 1, lba, blocks), &data, 0)
            .unwrap();
        written.insert(cid, (lba, data));
    }
    assert_eq!(io.host.outstanding(), 8);
    io.pump();
    let done = io.completions();
    assert_eq!(done.len(), 8);
    for (cid, (lba, data)) in &written {
        assert!(done[cid].cqe.status.is_success(), "{:?}", done[cid]);
        let at = *lba as usize * 512;
        assert_eq!(
            &disk.lock().unwrap()[at..at + data.len()],
            &data[..],
            "the controller wrote what the host sent at LBA {lba}"
        );
    }
    assert_eq!(
        io.count(|a| matches!(a, Action::RdmaRead { len: 65536, .. })),
        4,
        "the large writes were read from the host's buffers, the small ones not"
    );
    assert_eq!(io.host.outstanding(), 0);

    // The disk changes behind the host's back: eight reads in flight must return the new
    // contents, not what the host's buffers held from the writes.
    for (lba, data) in written.values() {
        let at = *lba as usize * 512;
        for (d, s) in disk.lock().unwrap()[at..at + data.len()]
            .iter_mut()
            .zip(data)
        {
            *d = !s;
        }
    }
    let mut reads = HashMap::new();
    for (lba, data) in written.values() {
        let blocks = (data.len() / 512) as u32;
        let cid = io
            .host
            .submit(
                commands::io(IoOpcode::Read, 1, *lba, blocks),
                &[],
                data.len(),
            )
            .unwrap();
        reads.insert(cid, (*lba, data.len()));
    }
    io.pump();
    let done = io.completions();
    assert_eq!(done.len(), 8);
    for (cid, (lba, len)) in &reads {
        let c = &done[cid];
        assert!(c.cqe.status.is_success(), "{c:?}");
        let at = *lba as usize * 512;
        assert_eq!(c.data.len(), *len);
        assert!(
            c.data == disk.lock().unwrap()[at..at + len],
            "the read of LBA {lba} returned the disk's blocks"
        );
    }

    // Errors come back as the controller's status, and the queue goes on.
    let r = io.io(IoOpcode::Read, BLOCKS, 1, &[]);
    assert_eq!(r.cqe.status, Status::lba_out_of_range());
    let r = io.io(IoOpcode::Read, BLOCKS - 1, 2, &[]);
    assert_eq!(r.cqe.status, Status::lba_out_of_range());
    let w = io.io(IoOpcode::Write, BLOCKS - 4, 8, &pattern(9, 4096));
    assert_eq!(w.cqe.status, Status::lba_out_of_range());
    let r = io.io(IoOpcode::Read, BLOCKS - 1, 1, &[]);
    assert!(r.cqe.status.is_success());
    assert!(!io.disconnected && !a.disconnected);
}

#[test]
fn the_queue_stays_full_until_sends_and_responses_both_complete() {
    let registry = registry();
    let disk = disk();
    let (_a, cntlid, in_capsule) = admin(&registry, &disk);
    let mut io = Pair::new(&registry, &disk, 1, cntlid, config(4, in_capsule, 4096));
    let (sqe, data) = commands::connect(1, cntlid, 3, 0, NQN, HOST).unwrap();
    io.ok(sqe, &data, 0);
    disk.lock().unwrap()[..4096].copy_from_slice(&pattern(7, 4096));

    // The responses arrive before the host sees its SENDs complete.
    io.hold_sends = true;
    let cids: Vec<u16> = (0..4)
        .map(|i| {
            io.host
                .submit(commands::io(IoOpcode::Read, 1, i * 2, 2), &[], 1024)
                .unwrap()
        })
        .collect();
    assert_eq!(
        io.host
            .submit(commands::io(IoOpcode::Read, 1, 0, 1), &[], 512),
        Err(SubmitError::Full)
    );
    io.pump();
    assert_eq!(io.held.len(), 4);
    assert_eq!(
        io.host.completion(),
        None,
        "answered, but the SENDs are not done"
    );
    assert!(!io.host.can_submit());
    io.release_sends();
    let done = io.completions();
    for (i, cid) in cids.iter().enumerate() {
        assert_eq!(done[cid].data, pattern(7, 4096)[i * 1024..(i + 1) * 1024]);
    }

    // One command at a time takes the same (warm) slot, with a new generation in its CID
    // each time: a late response for an earlier use would not match.
    io.hold_sends = false;
    let cids: std::collections::HashSet<u16> = (0..16u64)
        .map(|i| {
            let c = io.io(IoOpcode::Read, i, 1, &[]);
            assert!(c.cqe.status.is_success());
            c.cid
        })
        .collect();
    assert_eq!(cids.len(), 16);
    let slots: std::collections::HashSet<u16> = cids.iter().map(|c| c & 0xfff).collect();
    assert_eq!(slots.len(), 1, "one slot: {cids:x?}");
    assert!(!io.disconnected);
}

#[test]
fn the_host_refuses_what_it_cannot_send() {
    let mut h = HostQueue::new(config(4, 8192, 4096));
    // Nothing needs the data region yet.
    assert!(h.submit(commands::enable(), &[], 0).is_ok());
    assert!(h.submit(commands::enable(), &[1; 512], 0).is_ok());
    assert_eq!(
        h.submit(commands::io(IoOpcode::Read, 1, 0, 1), &[], 512),
        Err(SubmitError::Unregistered)
    );
    h.set_data_key(DATA_BASE, RKEY);
    assert_eq!(
        h.submit(commands::io(IoOpcode::Read, 1, 0, 16), &[], 8192),
        Err(SubmitError::TooLong {
            len: 8192,
            max: 4096
        })
    );
    assert_eq!(
        h.submit(commands::io(IoOpcode::Write, 1, 0, 32), &[0; 16384], 0),
        Err(SubmitError::TooLong {
            len: 16384,
            max: 8192
        })
    );
    // An 8 KiB write fits the capsule, not the data buffer.
    assert!(
        h.submit(commands::io(IoOpcode::Write, 1, 0, 16), &[0; 8192], 0)
            .is_ok()
    );
    assert!(
        h.submit(commands::io(IoOpcode::Read, 1, 0, 8), &[], 4096)
            .is_ok()
    );
    assert_eq!(h.outstanding(), 4);
    assert_eq!(h.submit(commands::enable(), &[], 0), Err(SubmitError::Full));
    // The capsules: SQE alone, or SQE and data.
    let lens: Vec<usize> = std::iter::from_fn(|| h.next_send())
        .map(|s| s.len)
        .collect();
    assert_eq!(lens, [64, 64 + 512, 64 + 8192, 64]);
}

#[test]
fn responses_that_match_no_command_end_the_queue() {
    let mut h = HostQueue::new(config(4, 0, 4096));
    h.set_data_key(DATA_BASE, RKEY);
    let respond = |h: &mut HostQueue, i: usize, cid: u16| {
        let at = h.response_offset(i);
        h.memory_mut(Region::Responses)[at..at + 16]
            .copy_from_slice(&CqeRepr::new(cid, 1, 0, Status::SUCCESS).to_bytes());
        h.response(i, 16)
    };
    let unexpected = Err(HostError::Unexpected(
        "a response for no command outstanding",
    ));
    let cid = h.submit(commands::enable(), &[], 0).unwrap();
    // Before the SEND was posted, for another slot, for another use of the slot.
    assert_eq!(respond(&mut h, 0, cid), unexpected);
    let s = h.next_send().unwrap();
    assert_eq!(respond(&mut h, 0, cid + 1), unexpected);
    assert_eq!(respond(&mut h, 0, cid ^ 0x1000), unexpected);
    assert_eq!(
        h.send_done(s.slot + 1),
        Err(HostError::Unexpected(
            "a SEND completion for no capsule posted"
        ))
    );
    // Short, or in a receive that was never posted.
    assert!(h.response(0, 15).is_err());
    assert!(h.response(4, 16).is_err());
    // The right one, once.
    assert_eq!(respond(&mut h, 1, cid), Ok(()));
    assert_eq!(respond(&mut h, 2, cid), unexpected, "a second response");
    h.send_done(s.slot).unwrap();
    assert_eq!(h.completion().map(|c| c.cid), Some(cid));
    assert_eq!(respond(&mut h, 0, cid), unexpected, "after it completed");
    assert!(h.send_done(s.slot).is_err());
}

#[test]
fn connect_requests_size_both_receive_queues() {
    let h = HostQueue::new(config(32, 0, 4096));
    let r = CmRequestRepr::parse(&h.cm_request(0, 0)).unwrap();
    assert_eq!(
        (r.recfmt, r.qid, r.hsqsize, r.hrqsize, r.cntlid),
        (0, 0, 31, 32, 0),
        "Linux's admin queue request"
    );
    let h = HostQueue::new(config(128, 8192, 4096));
    let r = CmRequestRepr::parse(&h.cm_request(3, 7)).unwrap();
    assert_eq!((r.qid, r.hsqsize, r.hrqsize, r.cntlid), (3, 127, 128, 7));
    let (reply, n) = cm::accept(&h.cm_request(3, 7), &CmLimits::default()).unwrap();
    assert_eq!(n.depth, 128);
    assert_eq!(h.accepted(&reply.to_bytes()), Ok(()));
    // A controller that takes fewer commands than the host sends, and one that says nothing.
    let small = CmReplyRepr {
        recfmt: 0,
        crqsize: 64,
    };
    assert!(h.accepted(&small.to_bytes()).is_err());
    assert_eq!(h.accepted(&[0; 196]), Ok(()));
    assert_eq!(h.accepted(&[]), Ok(()));
}
