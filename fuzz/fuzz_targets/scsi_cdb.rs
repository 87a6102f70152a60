//! SCSI logical units fed arbitrary CDBs, data-out and block I/O outcomes, several
//! commands per input from up to four I_T nexuses (with task management and nexus loss
//! in between, so reservation, mode and unit attention state is reached). Whatever
//! arrives: no panic, every BlockIo stays inside its logical unit, data-in never exceeds
//! the buffer, sense data only comes with CHECK CONDITION, and every task finishes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_proto::block::{AlignedBuf, BlockIo, BlockOp, IoOutcome};
use target_proto::scsi::{LunConfig, Nexus, ScsiTarget, Step, TaskManagement, status};

const BLOCKS: u64 = 64;

fn lun(n: u64, opts: u8) -> LunConfig {
    LunConfig {
        lun: n,
        block_size: if opts & 8 != 0 { 4096 } else { 512 },
        blocks: BLOCKS,
        backend: n as u32 + 10,
        volatile_write_cache: opts & 1 != 0,
        thin: opts & 2 != 0,
        read_only: opts & 4 != 0,
        identity: [n as u8; 16],
        vendor: "XDPT".into(),
        product: "fuzz".into(),
        revision: "1".into(),
    }
}

fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_port: format!("iqn.fuzz:i{id},i,0x00000000000{id}"),
        target_port: "iqn.fuzz:t,t,0x0001".into(),
        relative_port: 1,
    }
}

/// Runs one block operation on the disk of its LUN, asserting it fits.
fn execute(target: &ScsiTarget, disks: &mut [Vec<u8>], io: &BlockIo, buf: &mut AlignedBuf) {
    let i = target
        .luns()
        .iter()
        .position(|l| l.config().lun == u64::from(io.nsid))
        .expect("I/O names an existing LUN");
    assert_eq!(io.backend, target.luns()[i].config().backend);
    let disk = &mut disks[i];
    let size = disk.len() as u64;
    let span = |o: u64, l: u64| {
        assert!(
            o.checked_add(l).is_some_and(|e| e <= size),
            "I/O {o}+{l} past {size}"
        );
        (o as usize, (o + l) as usize)
    };
    match &io.op {
        BlockOp::Read { offset, len } => {
            let (a, b) = span(*offset, *len);
            assert!(buf.as_slice().len() >= b - a, "read larger than the buffer");
            buf.as_mut_slice()[..b - a].copy_from_slice(&disk[a..b]);
        }
        BlockOp::Write { offset, len, .. } => {
            let (a, b) = span(*offset, *len);
            assert!(
                buf.as_slice().len() >= b - a,
                "write larger than the buffer"
            );
            disk[a..b].copy_from_slice(&buf.as_slice()[..b - a]);
        }
        BlockOp::Compare { offset, len } => {
            let (a, b) = span(*offset, *len);
            assert!(
                buf.as_slice().len() >= b - a,
                "compare larger than the buffer"
            );
        }
        BlockOp::WriteZeroes { offset, len, .. } => {
            let (a, b) = span(*offset, *len);
            disk[a..b].fill(0);
        }
        BlockOp::Deallocate { ranges } => {
            for (o, l) in ranges {
                let (a, b) = span(*o, *l);
                disk[a..b].fill(0);
            }
        }
        BlockOp::Flush | BlockOp::FlushAll { .. } => {}
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((opts, first)) = input.split_first() else {
        return;
    };
    let mut rest: &[u8] = first;
    let target = ScsiTarget::new(vec![lun(0, *opts), lun(1, opts >> 4)]);
    let mut disks: Vec<Vec<u8>> = target
        .luns()
        .iter()
        .map(|l| vec![0u8; l.config().capacity_bytes() as usize])
        .collect();
    let nexuses: Vec<Nexus> = (1..=4).map(nexus).collect();
    let mut buf = AlignedBuf::default();
    // Each command: [who, lun, cdb length, data-out length (2 bytes), outcome seed],
    // the CDB, then the data-out.
    while let &[who, l, cdb_len, out_hi, out_lo, seed, ref tail @ ..] = rest {
        let n = &nexuses[usize::from(who & 3)];
        if who & 0x80 != 0 {
            let f = match l % 8 {
                0 => TaskManagement::AbortTask,
                1 => TaskManagement::AbortTaskSet,
                2 => TaskManagement::ClearAca,
                3 => TaskManagement::ClearTaskSet,
                4 => TaskManagement::LunReset,
                5 => TaskManagement::TargetWarmReset,
                6 => TaskManagement::TargetColdReset,
                _ => {
                    target.nexus_lost(n);
                    rest = tail;
                    continue;
                }
            };
            target.task_management(n, f, Some(u64::from(l >> 4)));
            rest = tail;
            continue;
        }
        let cdb_len = usize::from(cdb_len % 33).min(tail.len());
        let (cdb, tail) = tail.split_at(cdb_len);
        let mut task = target.command(n, u64::from(l % 3), cdb);
        let want = task.data_out_len();
        let offered = usize::from(u16::from_be_bytes([out_hi, out_lo]));
        let given = want.min(offered).min(tail.len());
        let (out, tail) = tail.split_at(given);
        buf.set_len(given);
        buf.as_mut_slice().copy_from_slice(out);
        let mut seed = seed;
        let mut outcome = None;
        let mut finished = false;
        for _ in 0..100_000 {
            match task.step(&mut buf, outcome) {
                Step::Done(c) => {
                    assert!(c.data_in <= buf.as_slice().len());
                    if c.status == status::CHECK_CONDITION {
                        assert!(!c.sense.is_empty());
                    } else {
                        assert!(c.sense.is_empty());
                    }
                    finished = true;
                    break;
                }
                Step::Io(io) => {
                    execute(&target, &mut disks, &io, &mut buf);
                    outcome = Some(match seed % 8 {
                        5 => IoOutcome::ReadError,
                        6 => IoOutcome::WriteError,
                        7 => IoOutcome::Miscompare,
                        _ => IoOutcome::Ok,
                    });
                    seed = seed.rotate_left(3) ^ 0x5a;
                }
                // Each task runs to its end before the next starts, so no PREEMPT AND
                // ABORT ever finds another task in flight; both are handled anyway.
                Step::Aborted => {
                    finished = true;
                    break;
                }
                Step::Wait => outcome = None,
            }
        }
        assert!(finished, "a task never finished");
        rest = tail;
    }
});
