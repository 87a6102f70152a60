//! A logged-in iSCSI connection (the login done by IscsiHost, with or without digests,
//! against default or R2T-only limits) fed arbitrary initiator bytes in arbitrary chunks,
//! with arbitrary outcomes for its block operations on a small memory disk, some of them
//! held back and completed later, out of order, with ticks in between. Whatever arrives:
//! no panic, every BlockIo stays inside the disk and the task's buffer, and the output is
//! always whole PDUs with valid digests. The output is taken in pieces of fuzz-chosen size,
//! and some rounds only part of it (a full socket), so Data-In data stays lent from its
//! task's buffer while more commands, aborts and ticks arrive.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use target_proto::block::{BlockOp, IoOutcome};
use target_proto::iscsi::conn::{ConnParams, IscsiConn, Timers};
use target_proto::iscsi::host::{IscsiHost, LoginOptions};
use target_proto::iscsi::params::TargetLimits;
use target_proto::iscsi::{Portal, Registry, TargetNode};
use target_proto::scsi::{LunConfig, ScsiTarget};
use target_wire::iscsi::Bhs;

const BLOCKS: u64 = 64;
const DISK: u64 = BLOCKS * 512;

fn registry() -> Registry {
    Registry::new(
        vec![TargetNode {
            iqn: "iqn.t".into(),
            alias: None,
            scsi: Arc::new(ScsiTarget::new(vec![LunConfig {
                lun: 0,
                block_size: 512,
                blocks: BLOCKS,
                backend: 0,
                volatile_write_cache: true,
                thin: true,
                read_only: false,
                identity: [1; 16],
                vendor: "XDPT".into(),
                product: "fuzz".into(),
                revision: "1".into(),
            }])),
            allowed_initiators: None,
            chap: None,
        }],
        vec![Portal {
            addr: None,
            port: 3260,
        }],
    )
}

/// Takes the whole PDUs off the front of `sent` (the target's bytes so far), checking their
/// opcodes and digests; a PDU not yet sent in full stays for the next call.
fn check(sent: &mut Vec<u8>, (hd, dd): (bool, bool)) {
    let mut at = 0;
    while let Ok(h) = Bhs::new_checked(&sent[at..]) {
        let l = h.layout(hd, dd);
        if sent.len() - at < l.total {
            break;
        }
        assert!(!h.opcode().from_initiator(), "target opcodes only");
        let p = &sent[at..at + l.total];
        assert!(l.header_digest_ok(p) && l.data_digest_ok(p));
        at += l.total;
    }
    sent.drain(..at);
}

/// Sends up to `budget` bytes of the target's output into `sent`, `piece` bytes at a time.
fn send(conn: &mut IscsiConn, sent: &mut Vec<u8>, piece: usize, budget: usize) {
    let mut left = budget;
    while conn.output_len() > 0 && left > 0 {
        let first = conn.output();
        let k = first.len().min(piece).min(left);
        sent.extend_from_slice(&first[..k]);
        conn.consume_output(k);
        left -= k;
    }
}

/// Runs one block operation on the disk, asserting it fits the disk and the buffer.
fn execute(disk: &mut [u8], op: &BlockOp, buf: &mut [u8]) {
    let span = |o: u64, l: u64| {
        assert!(
            o.checked_add(l).is_some_and(|e| e <= DISK),
            "I/O {o}+{l} past the disk"
        );
        assert!(l as usize <= buf.len() || matches!(op, BlockOp::WriteZeroes { .. }));
        (o as usize, (o + l) as usize)
    };
    match op {
        BlockOp::Read { offset, len } => {
            let (a, b) = span(*offset, *len);
            buf[..b - a].copy_from_slice(&disk[a..b]);
        }
        BlockOp::Write { offset, len, .. } => {
            let (a, b) = span(*offset, *len);
            disk[a..b].copy_from_slice(&buf[..b - a]);
        }
        BlockOp::Compare { offset, len } => {
            span(*offset, *len);
        }
        BlockOp::WriteZeroes { offset, len, .. } => {
            assert!(offset.checked_add(*len).is_some_and(|e| e <= DISK));
            disk[*offset as usize..(offset + len) as usize].fill(0);
        }
        BlockOp::Deallocate { ranges } => {
            for (o, l) in ranges {
                assert!(o.checked_add(*l).is_some_and(|e| e <= DISK));
                disk[*o as usize..(o + l) as usize].fill(0);
            }
        }
        BlockOp::Flush | BlockOp::FlushAll { .. } => {}
    }
}

fuzz_target!(|input: &[u8]| {
    let [opts, seed, rest @ ..] = input else {
        return;
    };
    let (opts, mut seed, mut rest) = (*opts, *seed, rest);
    let limits = if opts & 4 != 0 {
        TargetLimits {
            initial_r2t: true,
            immediate_data: false,
            max_burst_length: 1024,
            first_burst_length: 512,
            max_outstanding_r2t: 2,
            max_recv_data_segment_length: 512,
            ..TargetLimits::default()
        }
    } else {
        TargetLimits::default()
    };
    let params = ConnParams {
        limits,
        timers: Timers {
            nop_interval_ms: 1_000,
            nop_timeout_ms: 5_000,
            login_timeout_ms: 15_000,
        },
    };
    let mut conn = IscsiConn::new(
        params,
        Arc::new(Mutex::new(registry())),
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        [3; 17],
    );
    let mut opts_login = LoginOptions::new("iqn.i", Some("iqn.t"));
    opts_login.header_digest = opts & 1 != 0;
    opts_login.data_digest = opts & 2 != 0;
    let mut host = IscsiHost::new(opts_login);
    let mut now = 1;
    for _ in 0..10 {
        let b = host.output().to_vec();
        host.consume_output(b.len());
        conn.receive(&b, now);
        let out = conn.take_output();
        host.receive(&out).expect("the login succeeds");
    }
    assert!(host.logged_in());
    let digests = host.digests();
    let mut disk = vec![0u8; DISK as usize];
    let mut held = Vec::new();
    let mut sent = Vec::new();
    // Each piece: a length byte, then that many bytes for the target.
    while let [n, tail @ ..] = rest {
        let n = usize::from(*n).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        rest = tail;
        now += u64::from(seed & 0x3f) * 50;
        // The engine takes everything unless its output is full (back-pressure).
        let took = conn.receive(piece, now);
        assert!(took == piece.len() || conn.output_len() >= target_proto::OUTPUT_HIGH_WATER);
        while let Some((slot, io)) = conn.next_io() {
            execute(&mut disk, &io.op, conn.buffer_mut(slot));
            seed = seed.rotate_left(3) ^ 0x5b;
            let outcome = match seed % 8 {
                5 => IoOutcome::ReadError,
                6 => IoOutcome::WriteError,
                7 => IoOutcome::Miscompare,
                _ => IoOutcome::Ok,
            };
            if seed & 0x10 != 0 {
                held.push((slot, outcome));
            } else {
                conn.io_done(slot, outcome);
            }
        }
        // Held I/O comes back later, newest first.
        if seed & 0x20 != 0 {
            while let Some((slot, outcome)) = held.pop() {
                conn.io_done(slot, outcome);
            }
        }
        let alive = conn.tick(now);
        // In pieces of the length byte's size; while seed bit 6 is set, four of them at
        // most.
        let budget = if seed & 0x40 != 0 { 4 * n } else { usize::MAX };
        send(&mut conn, &mut sent, n.max(1), budget);
        check(&mut sent, digests);
        let _ = conn.take_events();
        if !alive || conn.closing() {
            break;
        }
    }
    // Held I/O comes back, the rest goes out; then the connection ends.
    while let Some((slot, outcome)) = held.pop() {
        conn.io_done(slot, outcome);
    }
    send(&mut conn, &mut sent, 1 << 16, usize::MAX);
    check(&mut sent, digests);
    assert!(sent.is_empty(), "whole PDUs only");
    conn.teardown();
    assert_eq!(conn.output_len(), 0);
});
