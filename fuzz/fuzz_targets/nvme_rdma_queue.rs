//! NVMe/RDMA: arbitrary RDMA CM private data into `cm::accept`, then one queue pair's
//! engine fed arbitrary capsules (raw bytes, or commands with fuzzed opcode, CID, range and
//! data descriptor) and completions in any order: RDMA READs and SENDs completed (ok or
//! failed) when taken, never, or for slots that wait for nothing; block operations completed
//! at once, later, or on wrong slots; ticks. The queue is an admin queue, or an I/O queue of
//! a controller connected on a separate admin queue; optionally connected (and the
//! controller enabled) first, so the deeper paths are reachable.
//!
//! Whatever happens: no panic; an accepted request has a depth the controller holds and a
//! host receive queue for every response; every action names a valid slot; an RDMA READ
//! fills exactly the slot's buffer and stays within MDTS; an RDMA WRITE comes from the
//! slot's buffer and is followed by that slot's Send; no slot is answered while its READ or
//! its previous Send is in flight; every CQE names the queue; nothing follows a Disconnect;
//! the actions waiting never exceed two per slot plus the Disconnect; block operations stay
//! inside the namespace and their slot's buffer.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use target_proto::nvme::controller::{
    BlockIo, BlockOp, IoOutcome, MAX_QUEUE_ENTRIES, MAX_TRANSFER,
};
use target_proto::nvme::subsystem::Registry;
use target_proto::nvme_rdma::cm::{self, ADMIN_QUEUE_DEPTH, CmLimits};
use target_proto::nvme_rdma::queue::{Action, IN_CAPSULE_DATA, NvmeRdmaQueue, RECV_BUFFER_LEN};
use target_proto::nvme_tcp::host::commands;
use target_wire::nvme::cqe::{Cqe, CqeRepr};
use target_wire::nvme::opcode::{AdminOpcode, FeatureId, IoOpcode};
use target_wire::nvme::sgl::SglRepr;
use target_wire::nvme::sqe::Sqe;
use target_wire::nvme_rdma::{CmReplyRepr, CmRequestRepr, CmStatus};

#[path = "common/nvme_registry.rs"]
mod nvme_registry;
use nvme_registry::{DISK, NQN, registry};

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:fuzz-host";

/// The input, taken from the front; zeroes once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (b, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        b
    }
}

/// The transport's side: what it took and has not completed, checked against every
/// action it takes.
struct Transport {
    qid: u16,
    slots: usize,
    /// Slots whose RDMA READ was taken and not completed.
    reads: Vec<usize>,
    /// Slots whose Send was taken and not completed.
    sends: Vec<usize>,
    /// The last action was an RDMA WRITE from this slot.
    write: Option<usize>,
    /// Block operations taken and not completed.
    ios: Vec<(usize, BlockIo)>,
    disconnected: bool,
}

impl Transport {
    fn new(q: &NvmeRdmaQueue) -> Self {
        Self {
            qid: q.negotiated().qid,
            slots: q.slots(),
            reads: Vec::new(),
            sends: Vec::new(),
            write: None,
            ios: Vec::new(),
            disconnected: false,
        }
    }

    fn take(&mut self, q: &mut NvmeRdmaQueue) -> bool {
        let Some(a) = q.next_action() else {
            return false;
        };
        assert!(!self.disconnected, "{a:?} after Disconnect");
        if let Some(w) = self.write.take() {
            assert!(
                matches!(a, Action::Send { slot, .. } if slot == w),
                "the RDMA WRITE of slot {w} is followed by its Send, not {a:?}"
            );
        }
        let busy = |s: &Self, slot: usize| s.reads.contains(&slot) || s.sends.contains(&slot);
        match a {
            Action::RdmaRead { slot, len, .. } => {
                assert!(slot < self.slots && !busy(self, slot));
                assert!(len > 0 && len as usize <= MAX_TRANSFER);
                assert_eq!(q.buffer(slot).len(), len as usize);
                self.reads.push(slot);
            }
            Action::RdmaWrite { slot, len, .. } => {
                assert!(slot < self.slots && !busy(self, slot));
                assert!(len > 0 && len as usize <= q.buffer(slot).len());
                self.write = Some(slot);
            }
            Action::Send { slot, cqe, .. } => {
                assert!(slot < self.slots);
                assert!(!busy(self, slot), "slot {slot} answered while busy");
                let c = CqeRepr::parse(&Cqe::new_checked(&cqe[..]).unwrap()).unwrap();
                assert_eq!(c.sqid, self.qid);
                self.sends.push(slot);
            }
            Action::Disconnect => self.disconnected = true,
        }
        true
    }

    fn read_done(&mut self, q: &mut NvmeRdmaQueue, r: &Mutex<Registry>, slot: usize, ok: bool) {
        if ok {
            q.buffer_mut(slot).fill(slot as u8);
        }
        q.rdma_read_done(slot, ok, r, 0);
        self.reads.retain(|&s| s != slot);
    }

    fn send_done(&mut self, q: &mut NvmeRdmaQueue, slot: usize, ok: bool) {
        q.send_done(slot, ok);
        self.sends.retain(|&s| s != slot);
    }

    fn io_done(&mut self, q: &mut NvmeRdmaQueue, slot: usize, outcome: IoOutcome) {
        q.io_done(slot, outcome);
        self.ios.retain(|&(s, _)| s != slot);
    }

    /// Takes the queue's block operations, checking their bounds.
    fn take_ios(&mut self, q: &mut NvmeRdmaQueue) {
        while let Some((slot, io)) = q.next_io() {
            assert!(slot < self.slots);
            let buf = q.buffer(slot).len() as u64;
            match io.op {
                BlockOp::Read { offset, len }
                | BlockOp::Compare { offset, len }
                | BlockOp::Write { offset, len, .. } => {
                    assert!(offset + len <= DISK && buf == len);
                }
                BlockOp::WriteZeroes { offset, len, .. } => assert!(offset + len <= DISK),
                BlockOp::Deallocate { ref ranges } => {
                    assert!(ranges.iter().all(|&(o, l)| o + l <= DISK));
                }
                BlockOp::Flush | BlockOp::FlushAll { .. } => {}
            }
            self.ios.push((slot, io));
        }
    }

    fn check(&self, q: &NvmeRdmaQueue) {
        assert!(
            q.pending_actions() <= 2 * self.slots + 1,
            "{} actions waiting",
            q.pending_actions()
        );
    }

    /// Runs everything to completion, successfully.
    fn settle(&mut self, q: &mut NvmeRdmaQueue, r: &Mutex<Registry>) {
        loop {
            while self.take(q) {}
            self.take_ios(q);
            let (reads, sends, ios) = (
                std::mem::take(&mut self.reads),
                std::mem::take(&mut self.sends),
                std::mem::take(&mut self.ios),
            );
            if reads.is_empty() && sends.is_empty() && ios.is_empty() {
                return;
            }
            for s in reads {
                self.read_done(q, r, s, true);
            }
            for s in sends {
                self.send_done(q, s, true);
            }
            for (s, _) in ios {
                self.io_done(q, s, IoOutcome::Ok);
            }
        }
    }
}

/// An accepted queue pair for `qid` with `depth` entries, as Linux's host asks for it.
fn queue_pair(qid: u16, depth: u16) -> NvmeRdmaQueue {
    let mut pd = [0u8; 32];
    CmRequestRepr {
        recfmt: 0,
        qid,
        hrqsize: depth,
        hsqsize: depth - 1,
        cntlid: 0,
    }
    .emit(&mut pd)
    .unwrap();
    let (_, n) = cm::accept(&pd, &CmLimits::default()).expect("a valid request");
    NvmeRdmaQueue::new(n, None)
}

/// A capsule of `sqe` with its data in the capsule (without data: a null Keyed SGL, as
/// Linux sends it).
fn in_capsule(mut sqe: [u8; 64], cid: u16, data: &[u8]) -> Vec<u8> {
    let mut s = Sqe::new_unchecked(&mut sqe[..]);
    s.set_cid(cid);
    let sgl = if data.is_empty() {
        SglRepr::Keyed {
            address: 0,
            length: 0,
            key: 0,
            invalidate: false,
        }
    } else {
        SglRepr::InCapsule {
            offset: 0,
            length: data.len() as u32,
        }
    };
    s.set_sgl(&sgl).unwrap();
    let mut c = sqe.to_vec();
    c.extend_from_slice(data);
    c
}

/// Runs one command to its end; whether it succeeded.
fn run(q: &mut NvmeRdmaQueue, r: &Mutex<Registry>, t: &mut Transport, capsule: &[u8]) -> bool {
    assert!(q.capsule(capsule, r, 0));
    let mut status = None;
    while let Some(a) = {
        t.take_ios(q);
        for (s, _) in std::mem::take(&mut t.ios) {
            q.io_done(s, IoOutcome::Ok);
        }
        q.next_action()
    } {
        match a {
            Action::RdmaRead { slot, .. } => q.rdma_read_done(slot, true, r, 0),
            Action::Send { slot, cqe, .. } => {
                status = Some(Cqe::new_checked(&cqe[..]).unwrap().status());
                q.send_done(slot, true);
            }
            _ => {}
        }
    }
    status.is_some_and(|s| s.is_success())
}

/// Connect (data in the capsule), and on the admin queue CC.EN and Number of Queues.
fn connect(q: &mut NvmeRdmaQueue, r: &Mutex<Registry>, cntlid: u16) -> Option<u16> {
    let n = q.negotiated();
    let mut t = Transport::new(q);
    let (sqe, data) = commands::connect(n.qid, cntlid, n.depth - 1, 0, NQN, HOST)?;
    assert!(q.capsule(&in_capsule(sqe, 0, &data), r, 0));
    let mut cntlid = None;
    while let Some(a) = q.next_action() {
        if let Action::Send { slot, cqe, .. } = a {
            let c = Cqe::new_checked(&cqe[..]).unwrap();
            cntlid = c.status().is_success().then(|| c.dw0() as u16);
            q.send_done(slot, true);
        }
    }
    if n.qid == 0 && cntlid.is_some() {
        assert!(run(q, r, &mut t, &in_capsule(commands::enable(), 1, &[])));
        let queues = u32::from(u8::from(FeatureId::NumberOfQueues));
        let set = commands::admin(AdminOpcode::SetFeatures, 0, queues, 3 | (3 << 16));
        assert!(run(q, r, &mut t, &in_capsule(set, 2, &[])));
    }
    cntlid
}

/// A command with fuzzed fields and data descriptor.
fn crafted(input: &mut Input<'_>) -> Vec<u8> {
    let sel = input.byte();
    let cid = input.u16();
    let slba = u64::from(input.byte());
    let blocks = u32::from(input.byte() % 16) + 1;
    let form = input.byte();
    let mut sqe = match sel % 9 {
        0 => commands::io(IoOpcode::Read, 1, slba, blocks),
        1 => commands::io(IoOpcode::Write, 1, slba, blocks),
        2 => commands::io(IoOpcode::Compare, 1, slba, blocks),
        3 => commands::io(IoOpcode::Flush, 1, 0, 0),
        4 => commands::io(IoOpcode::WriteZeroes, 1, slba, blocks),
        5 => commands::admin(
            AdminOpcode::Identify,
            u32::from(sel >> 4),
            u32::from(sel >> 4),
            0,
        ),
        6 => commands::admin(
            AdminOpcode::GetLogPage,
            0,
            u32::from(sel >> 4) | 1023 << 16,
            0,
        ),
        7 => commands::admin(AdminOpcode::AsyncEventRequest, 0, 0, 0),
        _ => commands::io(IoOpcode::DatasetManagement, 1, 0, 1),
    };
    let len = if form & 0x80 != 0 {
        u32::from(input.u16()) * 4 % (MAX_TRANSFER as u32 + 8)
    } else {
        blocks * 512
    };
    let sgl = match form & 3 {
        0 => SglRepr::Keyed {
            address: u64::from(input.u16()) << 12,
            length: len,
            key: u32::from(input.u16()),
            invalidate: form & 4 != 0,
        },
        1 => SglRepr::InCapsule {
            offset: u64::from(form >> 3 & 3) * 256,
            length: len,
        },
        2 => SglRepr::Transport { length: len },
        _ => SglRepr::InCapsule {
            offset: u64::from(input.u16()) << 48,
            length: len,
        },
    };
    let mut s = Sqe::new_unchecked(&mut sqe[..]);
    s.set_cid(cid);
    s.set_sgl(&sgl).unwrap();
    let mut c = sqe.to_vec();
    if form & 3 == 1 {
        // The data, or a little more or less of it.
        let n = (len as usize + usize::from(form >> 5 & 3) * 256).min(IN_CAPSULE_DATA);
        c.resize(64 + n, form);
    }
    c
}

fuzz_target!(|data: &[u8]| {
    let [opts, pd_len, rest @ ..] = data else {
        return;
    };
    let mut input = Input(rest);

    let pd = input.bytes(usize::from(*pd_len) % 64);
    match cm::accept(pd, &CmLimits::default()) {
        Ok((rep, n)) => {
            let most = if n.qid == 0 {
                ADMIN_QUEUE_DEPTH
            } else {
                MAX_QUEUE_ENTRIES
            };
            assert!(n.depth >= 2 && n.depth <= most && n.host_recv_depth >= n.depth);
            assert_eq!(rep.crqsize, n.depth);
            assert_eq!(CmReplyRepr::parse(&rep.to_bytes()), Ok(rep));
        }
        Err(rej) => assert!(!matches!(rej.status, CmStatus::Unknown(_))),
    }

    let registry = registry(opts & 0x40 != 0);
    let depth = 2 + u16::from(opts >> 1 & 7);
    let connected = opts & 0x10 != 0;
    // The controller of an I/O queue lives on its own admin queue.
    let mut admin = queue_pair(0, ADMIN_QUEUE_DEPTH);
    let mut q = if opts & 1 == 0 {
        let mut q = queue_pair(0, depth);
        if connected {
            connect(&mut q, &registry, 0xffff);
        }
        q
    } else {
        let cntlid = connect(&mut admin, &registry, 0xffff).expect("the admin queue connects");
        let mut q = queue_pair(1, depth);
        if connected {
            assert!(connect(&mut q, &registry, cntlid).is_some());
        }
        q
    };

    let mut t = Transport::new(&q);
    let mut now = 0u64;
    for _ in 0..256 {
        if input.0.is_empty() {
            break;
        }
        match input.byte() % 10 {
            0 => {
                let len = usize::from(input.u16()) % (RECV_BUFFER_LEN + 2);
                let capsule = input.bytes(len).to_vec();
                // Not taken only when every slot waits for a send completion.
                if !q.capsule(&capsule, &registry, now) {
                    assert!(t.sends.len() + q.pending_actions() > 0);
                }
            }
            1 => {
                let capsule = crafted(&mut input);
                let _ = q.capsule(&capsule, &registry, now);
            }
            2 => {
                for _ in 0..input.byte() % 8 {
                    t.take(&mut q);
                }
            }
            3 if !t.reads.is_empty() => {
                let b = input.byte();
                let slot = t.reads[usize::from(b >> 1) % t.reads.len()];
                t.read_done(&mut q, &registry, slot, b & 1 == 0);
            }
            4 if !t.sends.is_empty() => {
                let b = input.byte();
                let slot = t.sends[usize::from(b >> 1) % t.sends.len()];
                t.send_done(&mut q, slot, b & 1 == 0);
            }
            5 => {
                // Completions the queue waits for, or not.
                let b = input.byte();
                let slot = usize::from(input.byte()) % (t.slots + 3);
                match b % 3 {
                    0 => t.read_done(&mut q, &registry, slot, b & 4 == 0),
                    1 => t.send_done(&mut q, slot, b & 4 == 0),
                    _ => t.io_done(&mut q, slot, IoOutcome::Ok),
                }
            }
            6 => t.take_ios(&mut q),
            7 if !t.ios.is_empty() => {
                let b = input.byte();
                let (slot, _) = t.ios[usize::from(b >> 2) % t.ios.len()];
                let outcome = [
                    IoOutcome::Ok,
                    IoOutcome::Miscompare,
                    IoOutcome::ReadError,
                    IoOutcome::WriteError,
                ][usize::from(b & 3)];
                t.io_done(&mut q, slot, outcome);
            }
            8 => {
                now += u64::from(input.byte()) * 100;
                q.tick(now, &registry);
            }
            _ => t.settle(&mut q, &registry),
        }
        t.check(&q);
    }
    t.settle(&mut q, &registry);
    q.teardown(&registry);
    admin.teardown(&registry);
});
