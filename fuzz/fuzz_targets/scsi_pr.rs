//! Reservations of one logical unit driven from four I_T nexuses in arbitrary order:
//! PERSISTENT RESERVE OUT (every service action and type, a few keys so that they
//! collide), PERSISTENT RESERVE IN, RESERVE(6)/RELEASE(6), and reads and writes that stay
//! in progress (waiting for their data-out or with a block operation in flight) while
//! reservations change; nexus loss and resets in between. After every action, read back
//! by an observer nexus: no panic; at most one holder unless the type is all-registrants,
//! where every registrant holds it; the holder is registered; every key is non-zero and
//! registered once per initiator port; what an NVMe host on the same medium may do
//! matches the reservation. For the tasks: a block operation starts only when its nexus
//! may do it at that moment, a task PREEMPT AND ABORT aborted never starts one, and that
//! command completes only when none of the tasks it aborted has one in flight.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_proto::block::{AlignedBuf, BlockIo, BlockOp, IoOutcome};
use target_proto::scsi::{LunConfig, Nexus, ScsiTarget, Step, Task, TaskManagement, status};

const BS: usize = 512;
const BLOCKS: u64 = 16;
const ACTORS: usize = 4;
/// Tasks in progress at most.
const MAX_PENDING: usize = 16;
/// The observer's nexus ID (actors' are 1..=4 plus 16 times their session number).
const OBSERVER: u64 = 9;

fn initiator_port(actor: usize) -> String {
    format!("iqn.fuzz:i{actor},i,0x00000000000{actor}")
}

fn nexus(actor: usize, session: u64) -> Nexus {
    Nexus {
        id: session * 16 + actor as u64 + 1,
        initiator_port: initiator_port(actor),
        target_port: "iqn.fuzz:t,t,0x0001".into(),
        relative_port: 1,
    }
}

#[derive(Debug)]
enum Phase {
    /// Created; the data-out is in the buffer, the first step not taken.
    Fresh,
    InIo(BlockIo),
    Waiting,
}

struct Pending {
    id: u64,
    actor: usize,
    task: Task,
    buf: AlignedBuf,
    phase: Phase,
    /// The command changes the medium (SBC-3 table 10's write class).
    write: bool,
    /// Tasks this PREEMPT AND ABORT aborted (their IDs).
    aborted_by_me: Vec<u64>,
}

/// What PERSISTENT RESERVE IN shows the observer.
#[derive(Debug)]
struct View {
    /// The reservation type, if any.
    kind: Option<u8>,
    /// (initiator port, key, holds the reservation) per registration.
    regs: Vec<(String, u64, bool)>,
}

impl View {
    /// Whether `actor` may read (or write) now: SPC-4 table 61 with SBC-3 table 10.
    fn may(&self, actor: usize, write: bool) -> bool {
        let port = initiator_port(actor);
        let reg = self.regs.iter().find(|r| r.0 == port);
        let Some(kind) = self.kind else {
            return true;
        };
        if reg.is_some_and(|r| r.2) {
            return true;
        }
        match kind {
            1 => !write,
            3 => false,
            5 | 7 => !write || reg.is_some(),
            _ => reg.is_some(),
        }
    }
}

fn be(d: &[u8], at: usize, n: usize) -> u64 {
    d[at..at + n]
        .iter()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b))
}

/// Runs a command that needs no block I/O to its end (retrying past unit attentions); None
/// on RESERVATION CONFLICT.
fn run_simple(t: &ScsiTarget, n: &Nexus, cdb: &[u8]) -> Option<Vec<u8>> {
    for _ in 0..16 {
        let mut task = t.command(n, 0, cdb);
        let mut buf = AlignedBuf::default();
        let Step::Done(c) = task.step(&mut buf, None) else {
            panic!("PERSISTENT RESERVE IN needs no I/O and nobody aborts the observer");
        };
        match c.status {
            status::GOOD => return Some(buf.as_slice()[..c.data_in].to_vec()),
            status::RESERVATION_CONFLICT => return None,
            // A unit attention for the observer: reported once, then the command runs.
            _ => assert_eq!(c.status, status::CHECK_CONDITION),
        }
    }
    panic!("unit attentions never ran out");
}

fn pr_in(sa: u8) -> [u8; 10] {
    [0x5e, sa, 0, 0, 0, 0, 0, 0xff, 0xff, 0]
}

/// Reads the reservation state and checks its invariants; None while another nexus holds
/// RESERVE(6) (PERSISTENT RESERVE IN conflicts then).
fn observe(t: &ScsiTarget, observer: &Nexus) -> Option<View> {
    let lu = &t.luns()[0];
    let outsiders = (
        lu.reservations().outsider_conflicts(false),
        lu.reservations().outsider_conflicts(true),
    );
    let Some(res) = run_simple(t, observer, &pr_in(1)) else {
        assert_eq!(outsiders, (true, true), "RESERVE(6) keeps NVMe hosts out");
        return None;
    };
    let full = run_simple(t, observer, &pr_in(3)).expect("no RESERVE(6) a moment ago");
    let keys = run_simple(t, observer, &pr_in(0)).expect("no RESERVE(6) a moment ago");
    let kind = match be(&res, 4, 4) {
        0 => None,
        16 => Some(res[21] & 0x0f),
        other => panic!("READ RESERVATION additional length {other}"),
    };
    let mut regs: Vec<(String, u64, bool)> = Vec::new();
    let end = 8 + be(&full, 4, 4) as usize;
    assert_eq!(end, full.len());
    let mut at = 8;
    while at < end {
        let key = be(&full, at, 8);
        let holder = full[at + 12] & 1 != 0;
        let tid_len = be(&full, at + 20, 4) as usize;
        let tid = &full[at + 24..at + 24 + tid_len];
        let name = &tid[4..];
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        let port = String::from_utf8(name.to_vec()).expect("initiator ports are ASCII");
        if holder {
            assert_eq!(Some(full[at + 13] & 0x0f), kind, "holder's type");
        }
        assert_ne!(key, 0, "key 0 unregisters");
        assert!(regs.iter().all(|r| r.0 != port), "{port} registered twice");
        regs.push((port, key, holder));
        at += 24 + tid_len;
    }
    assert_eq!(be(&keys, 4, 4) as usize, regs.len() * 8, "READ KEYS agrees");
    let holders = regs.iter().filter(|r| r.2).count();
    match kind {
        None => assert_eq!(holders, 0),
        Some(7 | 8) => {
            assert!(
                !regs.is_empty(),
                "an all-registrants reservation has registrants"
            );
            assert_eq!(holders, regs.len(), "every registrant holds it");
            assert_eq!(
                be(&res, 8, 8),
                0,
                "all-registrants reservations report key 0"
            );
        }
        Some(k) => {
            assert!(matches!(k, 1 | 3 | 5 | 6), "type {k}");
            assert_eq!(holders, 1, "one holder, and it is registered");
            let holder = regs.iter().find(|r| r.2).map(|r| r.1);
            assert_eq!(
                Some(be(&res, 8, 8)),
                holder,
                "READ RESERVATION names the holder"
            );
        }
    }
    let expected = match kind {
        None => (false, false),
        Some(1 | 5 | 7) => (false, true),
        Some(_) => (true, true),
    };
    assert_eq!(
        outsiders, expected,
        "what an NVMe host may do under {kind:?}"
    );
    Some(View { kind, regs })
}

fn execute(disk: &mut [u8], io: &BlockIo, buf: &mut AlignedBuf) -> IoOutcome {
    let size = disk.len() as u64;
    let span = |o: u64, l: u64| {
        assert!(o + l <= size, "I/O {o}+{l} outside the disk");
        o as usize..(o + l) as usize
    };
    match &io.op {
        BlockOp::Read { offset, len } => {
            let r = span(*offset, *len);
            buf.as_mut_slice()[..r.len()].copy_from_slice(&disk[r]);
        }
        BlockOp::Write { offset, len, .. } => {
            let r = span(*offset, *len);
            let n = r.len();
            disk[r].copy_from_slice(&buf.as_slice()[..n]);
        }
        BlockOp::Compare { offset, len } => {
            let r = span(*offset, *len);
            if disk[r.clone()] != buf.as_slice()[..r.len()] {
                return IoOutcome::Miscompare;
            }
        }
        BlockOp::WriteZeroes { offset, len, .. } => disk[span(*offset, *len)].fill(0),
        BlockOp::Deallocate { ranges } => {
            for (o, l) in ranges {
                disk[span(*o, *l)].fill(0);
            }
        }
        BlockOp::Flush | BlockOp::FlushAll { .. } => {}
    }
    IoOutcome::Ok
}

/// A CDB, its data-out and whether it writes, from four input bytes.
fn command(kind: u8, a: u8, b: u8, c: u8) -> (Vec<u8>, Vec<u8>, bool) {
    let lba = u32::from(a) % BLOCKS as u32;
    let rw10 = |op: u8| {
        let mut cdb = vec![op, 0];
        cdb.extend_from_slice(&lba.to_be_bytes());
        cdb.extend_from_slice(&[0, 0, 1, 0]);
        cdb
    };
    match kind % 9 {
        0 => (rw10(0x2a), vec![b; BS], true),
        1 => (rw10(0x28), Vec::new(), false),
        2 => {
            // COMPARE AND WRITE of one block: expects zeroes, writes `b`.
            let mut cdb = vec![0x89, 0];
            cdb.extend_from_slice(&u64::from(lba).to_be_bytes());
            cdb.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
            let mut data = vec![0; BS];
            data.extend_from_slice(&[b; BS]);
            (cdb, data, true)
        }
        3 => {
            let mut cdb = rw10(0x41); // WRITE SAME(10), two blocks
            cdb[8] = 2;
            (cdb, vec![b | 1; BS], true)
        }
        4 => {
            // PERSISTENT RESERVE OUT: service action, type, key and SARK from few values.
            const TYPES: [u8; 8] = [1, 3, 5, 6, 7, 8, 0, 2];
            let cdb = vec![0x5f, a % 8, TYPES[usize::from(b % 8)], 0, 0, 0, 0, 0, 24, 0];
            let mut p = u64::from((b >> 4) % 5).to_be_bytes().to_vec();
            p.extend_from_slice(&u64::from(c % 5).to_be_bytes());
            p.resize(24, 0);
            if c & 0x80 != 0 {
                p[20] = c & 0x0d; // SPEC_I_PT, ALL_TG_PT, APTPL: refused
            }
            (cdb, p, false)
        }
        5 => (pr_in(a % 5).to_vec(), Vec::new(), false),
        6 => (vec![0x16, 0, 0, 0, 0, 0], Vec::new(), false),
        7 => (vec![0x17, 0, 0, 0, 0, 0], Vec::new(), false),
        _ => (vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], Vec::new(), true), // SYNCHRONIZE CACHE
    }
}

struct Rig {
    target: ScsiTarget,
    observer: Nexus,
    sessions: [u64; ACTORS],
    disk: Vec<u8>,
    pending: Vec<Pending>,
    next_id: u64,
}

impl Rig {
    fn nexus(&self, actor: usize) -> Nexus {
        nexus(actor, self.sessions[actor])
    }

    /// Takes one step of pending task `i`, checking what it may do.
    fn step(&mut self, i: usize, outcome_seed: u8) {
        let was_aborted = self.pending[i].task.aborted();
        let before: Vec<(u64, bool)> = self
            .pending
            .iter()
            .map(|p| (p.id, p.task.aborted()))
            .collect();
        let p = &mut self.pending[i];
        let outcome = match std::mem::replace(&mut p.phase, Phase::Fresh) {
            Phase::InIo(io) => {
                let mut o = execute(&mut self.disk, &io, &mut p.buf);
                if o == IoOutcome::Ok && outcome_seed % 16 == 15 {
                    o = IoOutcome::WriteError;
                }
                Some(o)
            }
            Phase::Fresh | Phase::Waiting => None,
        };
        let step = p.task.step(&mut p.buf, outcome);
        if was_aborted {
            assert_eq!(step, Step::Aborted, "an aborted task went on");
        }
        // The tasks this step aborted (a PREEMPT AND ABORT runs in its first step).
        let newly: Vec<u64> = self
            .pending
            .iter()
            .zip(&before)
            .filter(|(q, (_, was))| !was && q.task.aborted())
            .map(|(q, _)| q.id)
            .collect();
        let (actor, write) = (self.pending[i].actor, self.pending[i].write);
        self.pending[i].aborted_by_me.extend(newly);
        match step {
            Step::Io(io) => {
                // The block operation starts now: the nexus must be allowed to now.
                if let Some(v) = observe(&self.target, &self.observer) {
                    let write = write && !matches!(io.op, BlockOp::Read { .. });
                    assert!(v.may(actor, write), "{io:?} of actor {actor} under {v:?}");
                }
                self.pending[i].phase = Phase::InIo(io);
            }
            Step::Wait => self.pending[i].phase = Phase::Waiting,
            Step::Done(c) => {
                if c.status == status::GOOD {
                    let mine = &self.pending[i].aborted_by_me;
                    assert!(
                        self.pending
                            .iter()
                            .all(|q| !mine.contains(&q.id) || !matches!(q.phase, Phase::InIo(_))),
                        "PREEMPT AND ABORT completed with an aborted task's I/O in flight"
                    );
                }
                self.pending.remove(i);
            }
            Step::Aborted => {
                self.pending.remove(i);
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let cfg = LunConfig {
        lun: 0,
        block_size: BS as u32,
        blocks: BLOCKS,
        backend: 0,
        volatile_write_cache: true,
        thin: true,
        read_only: false,
        identity: [7; 16],
        vendor: "XDPT".into(),
        product: "fuzz".into(),
        revision: "1".into(),
    };
    let mut rig = Rig {
        target: ScsiTarget::new(vec![cfg]),
        observer: Nexus {
            id: OBSERVER,
            initiator_port: "iqn.fuzz:observer,i,0x000000000009".into(),
            target_port: "iqn.fuzz:t,t,0x0001".into(),
            relative_port: 1,
        },
        sessions: [0; ACTORS],
        disk: vec![0; BS * BLOCKS as usize],
        pending: Vec::new(),
        next_id: 0,
    };
    // Each action: [what, who, a, b, c].
    for chunk in input.chunks_exact(5) {
        let &[what, who, a, b, c] = chunk else {
            continue;
        };
        let actor = usize::from(who) % ACTORS;
        match what % 8 {
            // Start a command (most often).
            0..=2 => {
                if rig.pending.len() >= MAX_PENDING {
                    continue;
                }
                let (cdb, data, write) = command(what / 8, a, b, c);
                let task = rig.target.command(&rig.nexus(actor), 0, &cdb);
                let mut buf = AlignedBuf::default();
                let n = task.data_out_len().min(data.len());
                buf.set_len(n);
                buf.as_mut_slice().copy_from_slice(&data[..n]);
                rig.pending.push(Pending {
                    id: rig.next_id,
                    actor,
                    task,
                    buf,
                    phase: Phase::Fresh,
                    write,
                    aborted_by_me: Vec::new(),
                });
                rig.next_id += 1;
            }
            // Step one.
            3..=5 => {
                if !rig.pending.is_empty() {
                    let i = usize::from(a) % rig.pending.len();
                    rig.step(i, b);
                }
            }
            // The transport drops one (its connection went away).
            6 => {
                if !rig.pending.is_empty() {
                    let i = usize::from(a) % rig.pending.len();
                    rig.pending.remove(i);
                }
            }
            // The nexus ends (its tasks go with it; the initiator logs in again with the
            // same ports), or a reset.
            _ => match a % 4 {
                0 => {
                    rig.target.nexus_lost(&rig.nexus(actor));
                    rig.pending.retain(|p| p.actor != actor);
                    rig.sessions[actor] += 1;
                }
                1 => {
                    rig.target
                        .task_management(&rig.nexus(actor), TaskManagement::LunReset, Some(0))
                }
                2 => rig.target.task_management(
                    &rig.nexus(actor),
                    TaskManagement::TargetColdReset,
                    None,
                ),
                _ => {}
            },
        }
        observe(&rig.target, &rig.observer);
    }
    // Whatever is left: once every block operation is back, nothing waits any more.
    for _ in 0..1000 {
        let Some(i) = rig
            .pending
            .iter()
            .position(|p| matches!(p.phase, Phase::InIo(_)))
        else {
            break;
        };
        rig.step(i, 0);
    }
    rig.pending.retain(|p| matches!(p.phase, Phase::Waiting));
    while let Some(id) = rig.pending.first().map(|p| p.id) {
        rig.step(0, 0);
        assert!(
            rig.pending.first().is_none_or(|p| p.id != id),
            "PREEMPT AND ABORT still waits with no I/O in flight"
        );
    }
});
