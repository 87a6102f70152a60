//! A fresh iSCSI connection in its login phase fed arbitrary initiator bytes, from the
//! first byte or after a valid first Login Request (security stage with CHAP offered, or
//! the operational stage; whole, or with the C bit so the fuzzed bytes continue its text),
//! against targets with and without CHAP, discovery CHAP and an allow-list. Whatever the
//! initiator sends: no panic, the output is always whole PDUs
//! (login responses without digests, digests as answered once the login is over), a
//! connection that is closing says nothing more, and the full feature phase is granted only
//! with a resolved target that admits the initiator and with CHAP completed where the
//! target (or discovery) requires it: the engine's own `check_login_invariants`, and the
//! same checked here from outside against what this registry was configured with.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use target_proto::block::IoOutcome;
use target_proto::iscsi::chap::{ChapConfig, ChapSecret};
use target_proto::iscsi::conn::{ConnParams, IscsiConn, Timers};
use target_proto::iscsi::params::{TargetLimits, answer};
use target_proto::iscsi::{Portal, Registry, TargetNode};
use target_proto::scsi::{LunConfig, ScsiTarget};
use target_wire::iscsi::{BHS_LEN, Bhs, Opcode, field, flags, stage};

fn node(iqn: &str, chap: bool, allowed: Option<&str>) -> TargetNode {
    TargetNode {
        iqn: iqn.into(),
        alias: Some("fuzz".into()),
        scsi: Arc::new(ScsiTarget::new(vec![LunConfig {
            lun: 0,
            block_size: 512,
            blocks: 64,
            backend: 0,
            volatile_write_cache: false,
            thin: false,
            read_only: false,
            identity: [1; 16],
            vendor: "XDPT".into(),
            product: "fuzz".into(),
            revision: "1".into(),
        }])),
        allowed_initiators: allowed.map(|a| vec![a.to_string()]),
        chap: chap.then(chap_config),
    }
}

fn chap_config() -> ChapConfig {
    ChapConfig {
        initiator: ChapSecret {
            name: "alice".into(),
            secret: b"initiator-secret".to_vec(),
        },
        target: Some(ChapSecret {
            name: "bob".into(),
            secret: b"target-secret-12".to_vec(),
        }),
    }
}

#[path = "common/iscsi_checker.rs"]
mod iscsi_checker;
use iscsi_checker::Checker;

fn first_login(operational: bool, continued: bool, keys: &[(&str, &str)]) -> Vec<u8> {
    let mut text = Vec::new();
    for (k, v) in keys {
        answer(&mut text, k, v);
    }
    let mut b = [0u8; BHS_LEN];
    let mut h = Bhs::new_unchecked(&mut b[..]);
    h.init(Opcode::LoginRequest);
    h.set_immediate(true);
    let f = if operational {
        flags::T | (stage::OPERATIONAL << 2)
    } else {
        stage::OPERATIONAL
    };
    // A request with C set has T clear (RFC 7143 section 11.12.2).
    h.set_flags(if continued {
        (f & !flags::T) | flags::C
    } else {
        f
    });
    h.set_data_segment_len(text.len()).unwrap();
    h.set_u32(field::CMD_SN, 1);
    b[field::ISID..field::ISID + 6].copy_from_slice(&[0x80, 0, 0, 0, 0, 1]);
    let mut p = b.to_vec();
    p.extend_from_slice(&text);
    p.resize(BHS_LEN + target_wire::iscsi::padded(text.len()), 0);
    p
}

/// The full feature phase only for whom this registry lets in, as it requires.
fn check_login(conn: &IscsiConn, checker: &Checker, target_chap: bool, discovery_chap: bool) {
    if let Err(e) = conn.check_login_invariants() {
        panic!("login invariant: {e}");
    }
    let id = conn.logged_in_identity();
    assert_eq!(
        checker.granted,
        id.is_some(),
        "a session iff it was granted"
    );
    let Some(id) = id else { return };
    let chap_required = match id.target.as_deref() {
        None => {
            assert!(id.discovery, "a normal session without a target");
            discovery_chap
        }
        Some("iqn.t") => target_chap,
        Some("iqn.private") => {
            assert_eq!(id.initiator, "iqn.i2", "the allow-list of iqn.private");
            false
        }
        Some(t) => panic!("a session to {t:?}, which does not exist"),
    };
    if chap_required {
        assert_eq!(id.chap_name.as_deref(), Some("alice"), "CHAP not completed");
    }
}

fuzz_target!(|input: &[u8]| {
    let [opts, rest @ ..] = input else { return };
    let (target_chap, discovery_chap) = (opts & 4 != 0, opts & 8 != 0);
    let mut reg = Registry::new(
        vec![
            node("iqn.t", target_chap, None),
            node("iqn.private", false, Some("iqn.i2")),
        ],
        vec![Portal {
            addr: None,
            port: 3260,
        }],
    );
    if discovery_chap {
        reg.discovery_chap = Some(chap_config());
    }
    let params = ConnParams {
        limits: TargetLimits::default(),
        timers: Timers::default(),
    };
    let mut conn = IscsiConn::new(
        params,
        Arc::new(Mutex::new(reg)),
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        [7; 17],
    );
    let mut checker = Checker::default();
    let mut now = 1;
    if opts & 1 != 0 {
        let keys = [
            ("InitiatorName", "iqn.i"),
            ("SessionType", "Normal"),
            ("TargetName", "iqn.t"),
            ("AuthMethod", "CHAP,None"),
        ];
        conn.receive(&first_login(opts & 2 != 0, opts & 16 != 0, &keys), now);
        let out = conn.take_output();
        checker.check(&out);
    }
    let chunk = usize::from(opts >> 5) + 1;
    for piece in rest.chunks(chunk) {
        let was_closing = conn.closing();
        now += 10;
        conn.receive(piece, now);
        while let Some((slot, _io)) = conn.next_io() {
            conn.io_done(slot, IoOutcome::Ok);
        }
        let _ = conn.tick(now);
        let out = conn.take_output();
        if was_closing {
            assert!(out.is_empty(), "nothing after closing");
        }
        checker.check(&out);
        let _ = conn.take_events();
        check_login(&conn, &checker, target_chap, discovery_chap);
    }
    conn.teardown();
});
