//! Two iSCSI connections on one Registry, fed interleaved initiator actions: scripted logins
//! (IscsiHost, to the target or to discovery, with two initiator names, two ISIDs, and CHAP
//! as alice, as alice with a wrong secret, as carol, or none), raw bytes, ticks, teardowns,
//! and changes of the discovery CHAP setting (as a reloaded configuration would make). This
//! exercises session reinstatement (RFC 7143 section 6.3.5) across connections.
//!
//! Whatever happens: no panic; the output is whole PDUs; both connections keep the login
//! invariants; a new session has completed the CHAP its target or discovery required at
//! that moment; a session is ended by reinstatement only by the other connection's login
//! with the same initiator name, ISID, target and CHAP name; two live sessions never share
//! a TSIH or that triple; and the registry counts exactly the live sessions.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use target_proto::block::IoOutcome;
use target_proto::iscsi::chap::{ChapConfig, ChapSecret};
use target_proto::iscsi::conn::{ConnEvent, ConnParams, IscsiConn, LoggedInIdentity, Timers};
use target_proto::iscsi::host::{IscsiHost, LoginOptions};
use target_proto::iscsi::params::TargetLimits;
use target_proto::iscsi::{Portal, Registry, TargetNode};
use target_proto::scsi::{LunConfig, ScsiTarget};

fn chap(name: &str, secret: &[u8]) -> ChapConfig {
    ChapConfig {
        initiator: ChapSecret {
            name: name.into(),
            secret: secret.to_vec(),
        },
        target: None,
    }
}

const ALICE: &[u8] = b"initiator-secret";
const CAROL: &[u8] = b"carol-secret-123";

fn registry(target_chap: bool) -> Registry {
    Registry::new(
        vec![TargetNode {
            iqn: "iqn.t".into(),
            alias: None,
            scsi: Arc::new(ScsiTarget::new(vec![LunConfig {
                lun: 0,
                block_size: 512,
                blocks: 16,
                backend: 0,
                volatile_write_cache: false,
                thin: false,
                read_only: false,
                identity: [1; 16],
                vendor: "XDPT".into(),
                product: "fuzz".into(),
                revision: "1".into(),
            }])),
            allowed_initiators: None,
            chap: target_chap.then(|| chap("alice", ALICE)),
        }],
        vec![Portal {
            addr: None,
            port: 3260,
        }],
    )
}

#[path = "common/iscsi_checker.rs"]
mod iscsi_checker;
use iscsi_checker::Checker;

struct Side {
    conn: IscsiConn,
    checker: Checker,
}

impl Side {
    fn new(reg: &Arc<Mutex<Registry>>, random: u8) -> Self {
        let params = ConnParams {
            limits: TargetLimits::default(),
            timers: Timers {
                nop_interval_ms: 1_000,
                nop_timeout_ms: 5_000,
                login_timeout_ms: 15_000,
            },
        };
        Self {
            conn: IscsiConn::new(
                params,
                Arc::clone(reg),
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                [random; 17],
            ),
            checker: Checker::default(),
        }
    }

    fn drain(&mut self) -> Vec<u8> {
        while let Some((slot, _io)) = self.conn.next_io() {
            self.conn.io_done(slot, IoOutcome::Ok);
        }
        let out = self.conn.take_output();
        self.checker.check(&out);
        out
    }
}

/// The triple session reinstatement matches on, and the CHAP name it must share.
fn same_session(a: &LoggedInIdentity, b: &LoggedInIdentity) -> bool {
    a.initiator == b.initiator && a.isid == b.isid && a.target == b.target
}

fuzz_target!(|input: &[u8]| {
    let [opts, rest @ ..] = input else { return };
    let mut rest: &[u8] = rest;
    let target_chap = opts & 1 != 0;
    let reg = Arc::new(Mutex::new(registry(target_chap)));
    let mut sides = [Side::new(&reg, 3), Side::new(&reg, 5)];
    let mut now = 1u64;
    let mut fresh = 7u8;
    while let [op, tail @ ..] = rest {
        rest = tail;
        let k = usize::from(op >> 7);
        let mut before: Vec<Option<LoggedInIdentity>> =
            sides.iter().map(|s| s.conn.logged_in_identity()).collect();
        let discovery_chap = reg
            .lock()
            .unwrap()
            .discovery_chap
            .as_ref()
            .map(|c| c.initiator.name.clone());
        match op & 7 {
            // A scripted login on a new connection in place of side k.
            0 | 1 => {
                let [b, tail @ ..] = rest else { break };
                rest = tail;
                let initiator = if b & 1 == 0 { "iqn.i" } else { "iqn.i2" };
                let target = (b & 2 == 0).then_some("iqn.t");
                let mut o = LoginOptions::new(initiator, target);
                o.isid[5] = (b >> 2) & 1;
                o.chap = match (b >> 3) & 3 {
                    0 => None,
                    1 => Some(("alice".into(), ALICE.to_vec())),
                    2 => Some(("alice".into(), b"wrong-secret-000".to_vec())),
                    _ => Some(("carol".into(), CAROL.to_vec())),
                };
                o.header_digest = b & 0x20 != 0;
                sides[k].conn.teardown();
                before[k] = None;
                fresh = fresh.wrapping_add(1);
                sides[k] = Side::new(&reg, fresh);
                let mut host = IscsiHost::new(o);
                for _ in 0..10 {
                    let b = host.output().to_vec();
                    host.consume_output(b.len());
                    now += 1;
                    sides[k].conn.receive(&b, now);
                    let out = sides[k].drain();
                    if host.receive(&out).is_err() {
                        break;
                    }
                }
            }
            // Raw bytes for side k.
            2 | 3 => {
                let [n, tail @ ..] = rest else { break };
                let n = usize::from(*n).min(tail.len());
                let (piece, tail) = tail.split_at(n);
                rest = tail;
                now += 1;
                sides[k].conn.receive(piece, now);
                sides[k].drain();
            }
            // Time passes.
            4 => now += u64::from(op >> 3) * 250,
            // Side k's connection ends.
            5 => {
                sides[k].conn.teardown();
                before[k] = None;
                fresh = fresh.wrapping_add(1);
                sides[k] = Side::new(&reg, fresh);
            }
            // The discovery CHAP setting changes.
            _ => {
                reg.lock().unwrap().discovery_chap = match (op >> 3) % 3 {
                    0 => None,
                    1 => Some(chap("alice", ALICE)),
                    _ => Some(chap("carol", CAROL)),
                };
            }
        }
        let after: Vec<Option<LoggedInIdentity>> =
            sides.iter().map(|s| s.conn.logged_in_identity()).collect();
        for (i, side) in sides.iter().enumerate() {
            if let Err(e) = side.conn.check_login_invariants() {
                panic!("side {i}: login invariant: {e}");
            }
            // A new session completed the CHAP required when it logged in.
            if let (None, Some(id)) = (&before[i], &after[i]) {
                let required = match &id.target {
                    None => discovery_chap.clone(),
                    Some(_) => target_chap.then(|| "alice".to_string()),
                };
                if required.is_some() {
                    assert_eq!(id.chap_name, required, "side {i}: CHAP not completed");
                }
            }
        }
        // Ticks: a side whose session was reinstated away ends, and only the other side's
        // login of the same session with the same CHAP name may have done that.
        for i in 0..2 {
            let alive = sides[i].conn.tick(now);
            sides[i].drain();
            let events = sides[i].conn.take_events();
            if events.contains(&ConnEvent::Reinstated) {
                let old = after[i].as_ref().expect("a reinstated side had a session");
                let new = after[1 - i].as_ref().expect("the other side logged in");
                assert!(
                    same_session(old, new) && old.chap_name == new.chap_name,
                    "{new:?} reinstated {old:?}"
                );
                assert!(!alive);
            }
            if !alive || sides[i].conn.closing() {
                sides[i].conn.teardown();
                fresh = fresh.wrapping_add(1);
                sides[i] = Side::new(&reg, fresh);
            }
        }
        let live: Vec<LoggedInIdentity> = sides
            .iter()
            .filter_map(|s| s.conn.logged_in_identity())
            .collect();
        if let [a, b] = live.as_slice() {
            assert_ne!(a.tsih, b.tsih, "two live sessions with one TSIH");
            assert!(!same_session(a, b), "two live sessions {a:?} and {b:?}");
        }
        assert_eq!(
            reg.lock().unwrap().session_count(),
            live.len(),
            "the registry counts the live sessions"
        );
    }
    for s in &mut sides {
        s.conn.teardown();
    }
    assert_eq!(reg.lock().unwrap().session_count(), 0);
});
