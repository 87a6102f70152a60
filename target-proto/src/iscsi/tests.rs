//! Engine tests of an iSCSI connection (RFC 7143 at ErrorRecoveryLevel 0): the sans-I/O
//! initiator [`IscsiHost`] or hand-built PDUs on one side, [`IscsiConn`] on the other, bytes
//! shuttled between `take_output()` (or `output()`/`consume_output()` piece by piece) and
//! `receive()`, and a memory disk executing the block operations. Each test asserts the
//! PDUs and fields the target sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use target_wire::iscsi::{
    BHS_LEN, Bhs, LoginResponseRepr, Opcode, digest, field, flags, login_status, padded, reject,
    stage, text_pairs, tmf,
};

use super::chap::{self, ChapConfig, ChapSecret};
use super::conn::{ConnEvent, ConnParams, IscsiConn, QUEUE_DEPTH, Timers};
use super::host::{HostError, IscsiHost, LoginOptions, ScsiCompletion};
use super::params::{TargetLimits, answer};
use super::{Portal, Registry, SessionRefused, TargetNode};
use crate::block::{BlockOp, IoOutcome};
use crate::scsi::{LunConfig, ScsiTarget, key, status};

const TARGET: &str = "iqn.2026-01.io.xdp-target:disk";
/// A target only [`OTHER_INITIATOR`] may log in to.
const PRIVATE: &str = "iqn.2026-01.io.xdp-target:private";
const INITIATOR: &str = "iqn.2026-01.org.example:host";
const OTHER_INITIATOR: &str = "iqn.2026-01.org.example:other-host";
/// The ISID [`LoginOptions::new`] uses.
const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];
const BS: usize = 512;
const BLOCKS: u64 = 4096;
const LUN0: [u8; 8] = [0; 8];
const TAG: u32 = 0xffff_ffff;
/// The CHAP identifier, then the challenge; StatSN starts at bytes 1..5 & 0xffff.
const RANDOM: [u8; 17] = [
    0x2a, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10,
];
const FIRST_STAT_SN: u32 = 0x0304;
const TUR: [u8; 6] = [0; 6];

// ---- Set-up -------------------------------------------------------------------------------

fn lun() -> LunConfig {
    LunConfig {
        lun: 0,
        block_size: BS as u32,
        blocks: BLOCKS,
        backend: 0,
        volatile_write_cache: false,
        thin: false,
        read_only: false,
        identity: [0x42; 16],
        vendor: "XDPT".into(),
        product: "iscsi-test".into(),
        revision: "0001".into(),
    }
}

fn node(iqn: &str, allowed: Option<&str>, chap: Option<ChapConfig>) -> TargetNode {
    TargetNode {
        iqn: iqn.into(),
        alias: Some("disk0".into()),
        scsi: Arc::new(ScsiTarget::new(vec![lun()])),
        allowed_initiators: allowed.map(|a| vec![a.to_string()]),
        chap,
    }
}

/// A wildcard portal (reported as the local address) and an explicit one.
fn registry_with(targets: Vec<TargetNode>) -> Arc<Mutex<Registry>> {
    Arc::new(Mutex::new(Registry::new(
        targets,
        vec![
            Portal {
                addr: None,
                port: 3260,
            },
            Portal {
                addr: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
                port: 3261,
            },
        ],
    )))
}

fn registry() -> Arc<Mutex<Registry>> {
    registry_with(vec![
        node(TARGET, None, None),
        node(PRIVATE, Some(OTHER_INITIATOR), None),
    ])
}

fn chap_config(mutual: bool) -> ChapConfig {
    ChapConfig {
        initiator: ChapSecret {
            name: "alice".into(),
            secret: b"initiator-secret".to_vec(),
        },
        target: mutual.then(|| ChapSecret {
            name: "target-bob".into(),
            secret: b"target-secret-12".to_vec(),
        }),
    }
}

fn opts() -> LoginOptions {
    LoginOptions::new(INITIATOR, Some(TARGET))
}

fn params(limits: TargetLimits) -> ConnParams {
    ConnParams {
        limits,
        timers: Timers::default(),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

// ---- PDUs ---------------------------------------------------------------------------------

/// One PDU as it went over the wire (header and data; digests checked and stripped).
#[derive(Clone, Debug)]
struct Pdu {
    bhs: [u8; BHS_LEN],
    data: Vec<u8>,
}

impl Pdu {
    fn view(&self) -> Bhs<&[u8]> {
        Bhs::new_unchecked(&self.bhs[..])
    }

    fn op(&self) -> Opcode {
        self.view().opcode()
    }

    fn flags(&self) -> u8 {
        self.bhs[1]
    }

    fn u32_at(&self, at: usize) -> u32 {
        self.view().u32_at(at)
    }

    fn itt(&self) -> u32 {
        self.view().itt()
    }

    fn ttt(&self) -> u32 {
        self.u32_at(field::TTT)
    }

    fn stat_sn(&self) -> u32 {
        self.u32_at(field::STAT_SN)
    }

    fn exp_cmd_sn(&self) -> u32 {
        self.u32_at(field::EXP_CMD_SN)
    }

    fn max_cmd_sn(&self) -> u32 {
        self.u32_at(field::MAX_CMD_SN)
    }

    fn login(&self) -> LoginResponseRepr {
        LoginResponseRepr::parse(&self.view()).expect("a login response")
    }

    fn keys(&self) -> Vec<(String, String)> {
        pairs(&self.data)
    }

    fn key(&self, k: &str) -> Option<String> {
        self.keys()
            .into_iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v)
    }

    /// The status of a SCSI Response or of a Data-In with S; the reason of a Reject; the
    /// response of a task management or logout response.
    fn code(&self) -> u8 {
        match self.op() {
            Opcode::ScsiResponse | Opcode::DataIn => self.bhs[3],
            _ => self.bhs[2],
        }
    }

    /// (sense key, ASC, ASCQ) of a SCSI Response's sense data.
    fn sense(&self) -> (u8, u8, u8) {
        assert!(self.data.len() > 2, "no sense data in {self:?}");
        let s = &self.data[2..];
        match s[0] & 0x7f {
            0x70 | 0x71 => (s[2] & 0x0f, s[12], s[13]),
            0x72 | 0x73 => (s[1] & 0x0f, s[2], s[3]),
            other => panic!("sense format {other:#x}"),
        }
    }
}

fn pairs(data: &[u8]) -> Vec<(String, String)> {
    text_pairs(data)
        .map(|p| {
            let (k, v) = p.expect("the target sends valid text");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn kv(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ops(pdus: &[Pdu]) -> Vec<Opcode> {
    pdus.iter().map(Pdu::op).collect()
}

/// A BHS with the opcode, the I bit, byte 1 and the ITT set.
fn bhs(op: Opcode, immediate: bool, flags_byte: u8, itt: u32) -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    let mut h = Bhs::new_unchecked(&mut b[..]);
    h.init(op);
    h.set_immediate(immediate);
    h.set_flags(flags_byte);
    h.set_itt(itt);
    b
}

fn set_u32(b: &mut [u8; BHS_LEN], at: usize, v: u32) {
    Bhs::new_unchecked(&mut b[..]).set_u32(at, v);
}

/// Frames a PDU: data segment length, padding and the digests that apply.
fn frame(mut b: [u8; BHS_LEN], data: &[u8], (hd, dd): (bool, bool)) -> Vec<u8> {
    Bhs::new_unchecked(&mut b[..])
        .set_data_segment_len(data.len())
        .unwrap();
    let mut p = b.to_vec();
    if hd {
        p.extend_from_slice(&digest(&b));
    }
    if !data.is_empty() {
        let start = p.len();
        p.extend_from_slice(data);
        p.resize(start + padded(data.len()), 0);
        if dd {
            let d = digest(&p[start..]);
            p.extend_from_slice(&d);
        }
    }
    p
}

/// A Login Request with raw text (CmdSN 1, ITT 0x100, CID 0).
fn login_raw(csg: u8, nsg: u8, transit: bool, tsih: u16, text: &[u8]) -> Vec<u8> {
    let f = (csg << 2) | nsg | if transit { flags::T } else { 0 };
    let mut b = bhs(Opcode::LoginRequest, true, f, 0x100);
    b[field::ISID..field::ISID + 6].copy_from_slice(&ISID);
    Bhs::new_unchecked(&mut b[..]).set_u16(field::TSIH, tsih);
    set_u32(&mut b, field::CMD_SN, 1);
    frame(b, text, (false, false))
}

fn login_request(csg: u8, nsg: u8, transit: bool, tsih: u16, keys: &[(&str, &str)]) -> Vec<u8> {
    let mut text = Vec::new();
    for (k, v) in keys {
        answer(&mut text, k, v);
    }
    login_raw(csg, nsg, transit, tsih, &text)
}

fn identity() -> Vec<(&'static str, &'static str)> {
    vec![
        ("InitiatorName", INITIATOR),
        ("SessionType", "Normal"),
        ("TargetName", TARGET),
    ]
}

/// Splits a byte stream into PDUs, checking the digests where they apply (never on login
/// PDUs, which precede the full feature phase). Output must be whole PDUs.
fn parse_pdus(mut bytes: &[u8], digests: (bool, bool)) -> Vec<Pdu> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let h = Bhs::new_checked(bytes).expect("output is whole PDUs");
        let login = matches!(h.opcode(), Opcode::LoginRequest | Opcode::LoginResponse);
        let (hd, dd) = if login { (false, false) } else { digests };
        let l = h.layout(hd, dd);
        assert!(bytes.len() >= l.total, "output is whole PDUs");
        let p = &bytes[..l.total];
        assert!(l.header_digest_ok(p), "header digest of {:?}", h.opcode());
        assert!(l.data_digest_ok(p), "data digest of {:?}", h.opcode());
        out.push(Pdu {
            bhs: p[..BHS_LEN].try_into().unwrap(),
            data: p[l.header..l.header + l.data].to_vec(),
        });
        bytes = &bytes[l.total..];
    }
    out
}

// ---- The rig: one target connection, a memory disk, and a clock ---------------------------

fn execute(disk: &Mutex<Vec<u8>>, op: &BlockOp, buf: &mut [u8]) -> IoOutcome {
    let mut d = disk.lock().unwrap();
    let size = d.len();
    let span = |o: u64, l: u64| {
        let (o, l) = (o as usize, l as usize);
        assert!(o + l <= size, "I/O {o}+{l} beyond the disk");
        o..o + l
    };
    match op {
        BlockOp::Read { offset, len } => {
            let r = span(*offset, *len);
            buf[..r.len()].copy_from_slice(&d[r]);
        }
        BlockOp::Write { offset, len, .. } => {
            let r = span(*offset, *len);
            let n = r.len();
            d[r].copy_from_slice(&buf[..n]);
        }
        BlockOp::WriteZeroes { offset, len, .. } => d[span(*offset, *len)].fill(0),
        BlockOp::Deallocate { ranges } => {
            for (o, l) in ranges {
                d[span(*o, *l)].fill(0);
            }
        }
        BlockOp::Compare { offset, len } => {
            let r = span(*offset, *len);
            if d[r.clone()] != buf[..r.len()] {
                return IoOutcome::Miscompare;
            }
        }
        BlockOp::Flush | BlockOp::FlushAll { .. } => {}
    }
    IoOutcome::Ok
}

struct Rig {
    conn: IscsiConn,
    disk: Arc<Mutex<Vec<u8>>>,
    now: u64,
    /// Digests of the full feature phase (from the login responses' answers).
    digests: (bool, bool),
    answered_digests: (bool, bool),
    /// Run block operations as soon as they are queued (false: the test takes them).
    auto_io: bool,
    io_outcome: IoOutcome,
    /// The next CmdSN of hand-built commands.
    cmd_sn: u32,
    /// The initiator's PDUs of the last [`Rig::step`].
    sent: Vec<Pdu>,
    /// Target output taken out while the engine was held back by it.
    stash: Vec<u8>,
}

fn new_disk() -> Arc<Mutex<Vec<u8>>> {
    Arc::new(Mutex::new(vec![0u8; BLOCKS as usize * BS]))
}

impl Rig {
    fn new(registry: &Arc<Mutex<Registry>>) -> Self {
        Self::with(registry, params(TargetLimits::default()), new_disk())
    }

    fn limits(registry: &Arc<Mutex<Registry>>, limits: TargetLimits) -> Self {
        Self::with(registry, params(limits), new_disk())
    }

    fn with(registry: &Arc<Mutex<Registry>>, p: ConnParams, disk: Arc<Mutex<Vec<u8>>>) -> Self {
        Self::local(registry, p, disk, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
    }

    fn local(
        registry: &Arc<Mutex<Registry>>,
        p: ConnParams,
        disk: Arc<Mutex<Vec<u8>>>,
        local: Option<IpAddr>,
    ) -> Self {
        Self {
            conn: IscsiConn::new(p, Arc::clone(registry), local, RANDOM),
            disk,
            now: 1_000,
            digests: (false, false),
            answered_digests: (false, false),
            auto_io: true,
            io_outcome: IoOutcome::Ok,
            cmd_sn: 1,
            sent: Vec::new(),
            stash: Vec::new(),
        }
    }

    fn run_io(&mut self) {
        if !self.auto_io {
            return;
        }
        while let Some((slot, io)) = self.conn.next_io() {
            let mut outcome = execute(&self.disk, &io.op, self.conn.buffer_mut(slot));
            if outcome == IoOutcome::Ok {
                outcome = self.io_outcome;
            }
            self.conn.io_done(slot, outcome);
        }
    }

    /// Takes the target's output as PDUs; a successful final login response switches the
    /// digests it answered on.
    fn output(&mut self) -> Vec<Pdu> {
        let mut bytes = std::mem::take(&mut self.stash);
        bytes.extend_from_slice(&self.conn.take_output());
        let pdus = parse_pdus(&bytes, self.digests);
        for p in &pdus {
            if p.op() != Opcode::LoginResponse {
                continue;
            }
            for (k, v) in p.keys() {
                match k.as_str() {
                    "HeaderDigest" => self.answered_digests.0 = v == "CRC32C",
                    "DataDigest" => self.answered_digests.1 = v == "CRC32C",
                    _ => {}
                }
            }
            let r = p.login();
            if r.status == login_status::SUCCESS && r.transit && r.nsg == stage::FULL_FEATURE {
                self.digests = self.answered_digests;
                self.cmd_sn = r.exp_cmd_sn;
            }
        }
        pdus
    }

    /// Feeds bytes (small ones byte by byte, to exercise reassembly) and runs the I/O.
    /// The target's output moves to `stash` whenever the engine stops taking bytes
    /// because its output is full.
    fn receive(&mut self, bytes: &[u8]) {
        if bytes.len() < 256 {
            for b in bytes {
                assert_eq!(self.conn.receive(std::slice::from_ref(b), self.now), 1);
            }
        } else {
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = self.conn.receive(rest, self.now);
                rest = &rest[n..];
                self.run_io();
                let out = self.conn.take_output();
                self.stash.extend_from_slice(&out);
            }
        }
        self.run_io();
    }

    fn send(&mut self, bytes: &[u8]) -> Vec<Pdu> {
        self.receive(bytes);
        self.output()
    }

    fn send_pdu(&mut self, b: [u8; BHS_LEN], data: &[u8]) -> Vec<Pdu> {
        let p = frame(b, data, self.digests);
        self.send(&p)
    }

    /// A non-immediate SCSI Command on LUN 0 with the next CmdSN.
    fn command(&mut self, itt: u32, fl: u8, edtl: u32, cdb: &[u8], data: &[u8]) -> Vec<Pdu> {
        let b = self.command_bhs(itt, fl, edtl, cdb);
        self.send_pdu(b, data)
    }

    fn command_bhs(&mut self, itt: u32, fl: u8, edtl: u32, cdb: &[u8]) -> [u8; BHS_LEN] {
        let mut b = bhs(Opcode::ScsiCommand, false, fl | 1, itt);
        set_u32(&mut b, field::EDTL, edtl);
        set_u32(&mut b, field::CMD_SN, self.cmd_sn);
        b[field::CDB..field::CDB + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        b
    }

    fn data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        (data_sn, offset): (u32, u32),
        fin: bool,
        data: &[u8],
    ) -> Vec<Pdu> {
        let mut b = bhs(Opcode::DataOut, false, if fin { flags::F } else { 0 }, itt);
        set_u32(&mut b, field::TTT, ttt);
        set_u32(&mut b, field::DATA_SN, data_sn);
        set_u32(&mut b, field::BUFFER_OFFSET, offset);
        self.send_pdu(b, data)
    }

    /// An immediate task management request on LUN 0.
    fn tmf(&mut self, itt: u32, function: u8, ref_itt: u32, ref_cmd_sn: u32) -> Vec<Pdu> {
        let mut b = bhs(Opcode::TaskMgmtRequest, true, flags::F | function, itt);
        set_u32(&mut b, field::REF_TASK_TAG, ref_itt);
        set_u32(&mut b, field::CMD_SN, self.cmd_sn);
        set_u32(&mut b, field::REF_CMD_SN, ref_cmd_sn);
        self.send_pdu(b, &[])
    }

    /// One round: the host's bytes to the target, the target's bytes to the host.
    fn step(&mut self, host: &mut IscsiHost) -> (Vec<Pdu>, Result<(), HostError>) {
        let to_target = host.output().to_vec();
        host.consume_output(to_target.len());
        self.sent = parse_pdus(&to_target, self.digests);
        self.receive(&to_target);
        let out = self.conn.take_output();
        self.stash.extend_from_slice(&out);
        let bytes = self.stash.clone();
        let pdus = self.output();
        (pdus, host.receive(&bytes))
    }

    /// Rounds until neither side has anything to say; every PDU the target sent.
    fn pump(&mut self, host: &mut IscsiHost) -> (Vec<Pdu>, Result<(), HostError>) {
        let mut all = Vec::new();
        loop {
            let quiet = host.output().is_empty();
            let (pdus, r) = self.step(host);
            let done = quiet && pdus.is_empty();
            all.extend(pdus);
            if r.is_err() || done {
                return (all, r);
            }
        }
    }

    fn pump_ok(&mut self, host: &mut IscsiHost) -> Vec<Pdu> {
        let (pdus, r) = self.pump(host);
        r.unwrap_or_else(|e| panic!("{e:?} after {pdus:?}"));
        pdus
    }

    fn disk_at(&self, lba: usize, len: usize) -> Vec<u8> {
        self.disk.lock().unwrap()[lba * BS..lba * BS + len].to_vec()
    }
}

/// Logs in with the host; the target's login responses.
fn login(rig: &mut Rig, o: LoginOptions) -> (IscsiHost, Vec<Pdu>) {
    let mut host = IscsiHost::new(o);
    let pdus = rig.pump_ok(&mut host);
    assert!(host.logged_in(), "{pdus:?}");
    (host, pdus)
}

/// Runs one host command to its completion.
fn run(rig: &mut Rig, host: &mut IscsiHost) -> (ScsiCompletion, Vec<Pdu>) {
    let pdus = rig.pump_ok(host);
    let c = host.completion().expect("a completion");
    (c, pdus)
}

/// Logs in a session with the host, then hands it over to hand-built PDUs.
fn session(registry: &Arc<Mutex<Registry>>, limits: TargetLimits) -> Rig {
    let mut rig = Rig::limits(registry, limits);
    login(&mut rig, opts());
    rig
}

// ---- Login --------------------------------------------------------------------------------

#[test]
fn login_without_auth_answers_every_operational_key() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let (host, pdus) = login(&mut rig, opts());
    // The host offers no AuthMethod: it starts in the operational stage, one round.
    assert_eq!(pdus.len(), 1);
    let r = pdus[0].login();
    assert!(r.transit && !r.cont);
    assert_eq!((r.csg, r.nsg), (stage::OPERATIONAL, stage::FULL_FEATURE));
    assert_eq!(r.status, login_status::SUCCESS);
    assert_ne!(r.tsih, 0);
    assert_eq!(r.isid, ISID);
    assert_eq!((r.stat_sn, r.exp_cmd_sn), (FIRST_STAT_SN, 1));
    assert_eq!(r.max_cmd_sn, QUEUE_DEPTH as u32);
    assert_eq!(
        pdus[0].keys(),
        kv(&[
            ("TargetPortalGroupTag", "1"),
            ("TargetAlias", "disk0"),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "262144"),
            ("MaxOutstandingR2T", "8"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
        ])
    );
    assert_eq!(host.digests(), (false, false));
    assert!(matches!(
        rig.conn.take_events().as_slice(),
        [ConnEvent::LoggedIn { tsih, reinstated: false, .. }] if *tsih == r.tsih
    ));
    assert_eq!(reg.lock().unwrap().session_count(), 1);
    rig.conn.teardown();
    assert_eq!(reg.lock().unwrap().session_count(), 0);
}

#[test]
fn login_through_the_security_stage_with_auth_method_none() {
    let reg = registry();
    let limits = TargetLimits {
        max_recv_data_segment_length: 65536,
        ..TargetLimits::default()
    };
    let mut rig = Rig::limits(&reg, limits);
    let mut keys = identity();
    keys.push(("AuthMethod", "None"));
    // Stay in the security stage once, then move on, then finish: StatSN counts up.
    let a = rig.send(&login_request(
        stage::SECURITY,
        stage::OPERATIONAL,
        false,
        0,
        &keys,
    ));
    let b = rig.send(&login_request(
        stage::SECURITY,
        stage::OPERATIONAL,
        true,
        0,
        &[],
    ));
    let c = rig.send(&login_request(
        stage::OPERATIONAL,
        stage::FULL_FEATURE,
        true,
        0,
        &[("MaxRecvDataSegmentLength", "8192")],
    ));
    assert_eq!((a.len(), b.len(), c.len()), (1, 1, 1));
    let (ra, rb, rc) = (a[0].login(), b[0].login(), c[0].login());
    assert_eq!((ra.transit, ra.csg, ra.nsg, ra.tsih), (false, 0, 0, 0));
    assert_eq!((rb.transit, rb.csg, rb.nsg, rb.tsih), (true, 0, 1, 0));
    assert_eq!((rc.transit, rc.csg, rc.nsg), (true, 1, 3));
    assert_ne!(rc.tsih, 0, "the final response carries the new TSIH");
    assert_eq!(
        (ra.stat_sn, rb.stat_sn, rc.stat_sn),
        (FIRST_STAT_SN, FIRST_STAT_SN + 1, FIRST_STAT_SN + 2)
    );
    // TargetPortalGroupTag goes in the first response only.
    assert_eq!(
        a[0].keys(),
        kv(&[
            ("TargetPortalGroupTag", "1"),
            ("TargetAlias", "disk0"),
            ("AuthMethod", "None"),
        ])
    );
    assert_eq!(b[0].key("TargetPortalGroupTag"), None);
    assert_eq!(
        c[0].keys(),
        kv(&[("MaxRecvDataSegmentLength", "65536")]),
        "the target declares its own MaxRecvDataSegmentLength"
    );
    // StatSN goes on in the full feature phase.
    let r = rig.command(1, flags::F, 0, &TUR, &[]);
    assert_eq!(ops(&r), [Opcode::ScsiResponse]);
    assert_eq!(r[0].stat_sn(), FIRST_STAT_SN + 3);
    assert_eq!((r[0].code(), r[0].exp_cmd_sn()), (status::GOOD, 2));
}

// ---- Registry ----------------------------------------------------------------------------

#[test]
fn registry_reinstatement_kills_the_old_session() {
    let mut r = Registry::new(Vec::new(), Vec::new());
    let a = r.open_session("iqn.i", [1; 6], "iqn.t", None).unwrap();
    let b = r.open_session("iqn.i", [2; 6], "iqn.t", None).unwrap();
    assert_ne!(a.tsih, b.tsih);
    assert!(!a.reinstated && !b.reinstated);
    let c = r.open_session("iqn.i", [1; 6], "iqn.t", None).unwrap();
    assert!(c.reinstated);
    assert!(a.killed.load(Ordering::Relaxed));
    assert!(!b.killed.load(Ordering::Relaxed));
    assert!(!r.session_exists(a.tsih) || a.tsih == c.tsih);
    assert_eq!(r.session_count(), 2);
    r.close_session(b.tsih);
    assert!(!r.session_exists(b.tsih));
}

#[test]
fn registry_reinstates_only_the_same_chap_identity() {
    let mut r = Registry::new(Vec::new(), Vec::new());
    let a = r
        .open_session("iqn.i", [1; 6], "iqn.t", Some("alice"))
        .unwrap();
    let other = |name: Option<&str>| SessionRefused::OtherIdentity {
        chap_name: name.map(str::to_string),
    };
    for name in [Some("mallory"), None] {
        assert_eq!(
            r.open_session("iqn.i", [1; 6], "iqn.t", name).unwrap_err(),
            other(Some("alice"))
        );
    }
    assert!(!a.killed.load(Ordering::Relaxed) && r.session_exists(a.tsih));
    let b = r
        .open_session("iqn.i", [1; 6], "iqn.t", Some("alice"))
        .unwrap();
    assert!(b.reinstated && a.killed.load(Ordering::Relaxed));
    // A session without CHAP is not ended by a login with CHAP either.
    let c = r.open_session("iqn.i", [2; 6], "iqn.t", None).unwrap();
    assert_eq!(
        r.open_session("iqn.i", [2; 6], "iqn.t", Some("alice"))
            .unwrap_err(),
        other(None)
    );
    assert!(!c.killed.load(Ordering::Relaxed));
    assert_eq!(r.session_count(), 2);
}

// ---- Login failures -------------------------------------------------------------------------

/// Sends the requests to a fresh connection; the one login response that ends the login.
fn refused(reg: &Arc<Mutex<Registry>>, requests: &[Vec<u8>]) -> (LoginResponseRepr, Rig) {
    let mut rig = Rig::new(reg);
    let mut out = Vec::new();
    for r in requests {
        out.extend(rig.send(r));
    }
    let last = out.last().expect("a login response");
    let r = last.login();
    assert!(!r.transit, "{r:?}");
    assert_eq!(r.tsih, 0);
    assert!(rig.conn.closing(), "a failed login closes the connection");
    assert!(matches!(
        rig.conn.take_events().last(),
        Some(ConnEvent::LoginFailed { status, .. }) if *status == r.status
    ));
    // Nothing more is read.
    let again = login_request(
        stage::OPERATIONAL,
        stage::FULL_FEATURE,
        true,
        0,
        &identity(),
    );
    assert!(rig.send(&again).is_empty());
    (r, rig)
}

fn refusal(reg: &Arc<Mutex<Registry>>, requests: &[Vec<u8>]) -> u16 {
    refused(reg, requests).0.status
}

fn op_login(keys: &[(&str, &str)]) -> Vec<u8> {
    login_request(stage::OPERATIONAL, stage::FULL_FEATURE, true, 0, keys)
}

#[test]
fn login_failures_have_their_status_class_and_detail() {
    let reg = registry();
    let no_name = op_login(&[("SessionType", "Normal"), ("TargetName", TARGET)]);
    assert_eq!(refusal(&reg, &[no_name]), login_status::MISSING_PARAMETER);
    assert_eq!(
        refusal(&reg, &[op_login(&[("InitiatorName", INITIATOR)])]),
        0x0207
    );

    let unknown = op_login(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2026-01.io.xdp-target:nope"),
    ]);
    assert_eq!(refusal(&reg, &[unknown]), login_status::NOT_FOUND);

    let private = op_login(&[("InitiatorName", INITIATOR), ("TargetName", PRIVATE)]);
    assert_eq!(
        refusal(&reg, &[private]),
        login_status::AUTHORIZATION_FAILURE
    );

    let mut version = op_login(&identity());
    version[2] = 2; // VersionMax
    version[3] = 1; // VersionMin: above RFC 7143's 0
    let (r, _) = refused(&reg, &[version]);
    assert_eq!(r.status, login_status::UNSUPPORTED_VERSION);
    assert_eq!((r.version_max, r.version_active), (0, 0));

    let mut nop = bhs(Opcode::NopOut, true, flags::F, 1);
    set_u32(&mut nop, field::TTT, TAG);
    let nop = frame(nop, &[], (false, false));
    assert_eq!(refusal(&reg, &[nop]), login_status::INITIATOR_ERROR);

    // Transit to the same stage, to the reserved stage 2, or from stage 2.
    let same = login_request(stage::OPERATIONAL, stage::OPERATIONAL, true, 0, &identity());
    assert_eq!(refusal(&reg, &[same]), login_status::INITIATOR_ERROR);
    let two = login_request(stage::SECURITY, 2, true, 0, &identity());
    assert_eq!(refusal(&reg, &[two]), login_status::INITIATOR_ERROR);
    let from_two = login_request(2, stage::FULL_FEATURE, true, 0, &identity());
    assert_eq!(refusal(&reg, &[from_two]), login_status::INITIATOR_ERROR);

    let mut text = Vec::new();
    answer(&mut text, "InitiatorName", INITIATOR);
    text.extend_from_slice(b"HeaderDigest\0");
    let no_equals = login_raw(stage::OPERATIONAL, stage::FULL_FEATURE, true, 0, &text);
    assert_eq!(refusal(&reg, &[no_equals]), login_status::INITIATOR_ERROR);

    let mut keys = identity();
    keys.extend([("MaxBurstLength", "4096"), ("FirstBurstLength", "8192")]);
    assert_eq!(
        refusal(&reg, &[op_login(&keys)]),
        login_status::INITIATOR_ERROR
    );

    // Security keys in the operational stage.
    let mut keys = identity();
    keys.push(("CHAP_A", "5"));
    assert_eq!(
        refusal(&reg, &[op_login(&keys)]),
        login_status::INITIATOR_ERROR
    );

    assert_eq!(reg.lock().unwrap().session_count(), 0);
}

#[test]
fn login_naming_a_tsih_adds_no_connection() {
    let reg = registry();
    let mut first = Rig::new(&reg);
    let (_, pdus) = login(&mut first, opts());
    let tsih = pdus[0].login().tsih;
    // The session lives, but has its one connection (MaxConnections=1).
    let join = login_request(
        stage::OPERATIONAL,
        stage::FULL_FEATURE,
        true,
        tsih,
        &identity(),
    );
    assert_eq!(refusal(&reg, &[join]), login_status::TOO_MANY_CONNECTIONS);
    let none = login_request(
        stage::OPERATIONAL,
        stage::FULL_FEATURE,
        true,
        tsih.wrapping_add(100),
        &identity(),
    );
    assert_eq!(refusal(&reg, &[none]), login_status::SESSION_DOES_NOT_EXIST);
    assert!(first.conn.tick(2_000), "the live session is untouched");
}

/// The text of `keys`, as a login or text request carries it.
fn text_of(keys: &[(&str, &str)]) -> Vec<u8> {
    let mut text = Vec::new();
    for (k, v) in keys {
        answer(&mut text, k, v);
    }
    text
}

/// A Login Request with the C bit: its text goes on in the next request.
fn login_continued(csg: u8, nsg: u8, text: &[u8]) -> Vec<u8> {
    let mut p = login_raw(csg, nsg, false, 0, text);
    p[1] |= flags::C;
    p
}

#[test]
fn identity_spread_over_continued_requests_is_checked() {
    // The identity keys split inside a value over two requests (section 6.1): the first
    // PDU has the C bit, and the login is judged on the joined text.
    let text = text_of(&identity());
    let (head, tail) = text.split_at(20);
    let first = login_continued(stage::OPERATIONAL, stage::FULL_FEATURE, head);
    let last = login_raw(stage::OPERATIONAL, stage::FULL_FEATURE, true, 0, tail);
    // A target with CHAP: skipping the security stage is refused, as in one piece.
    let reg = chap_registry(false);
    assert_eq!(
        refusal(&reg, &[first.clone(), last.clone()]),
        login_status::AUTHENTICATION_FAILURE
    );
    assert_eq!(reg.lock().unwrap().session_count(), 0);
    // The allow-list.
    let text = text_of(&[("InitiatorName", INITIATOR), ("TargetName", PRIVATE)]);
    let (head, tail) = text.split_at(30);
    let reg = registry();
    let private = [
        login_continued(stage::OPERATIONAL, stage::FULL_FEATURE, head),
        login_raw(stage::OPERATIONAL, stage::FULL_FEATURE, true, 0, tail),
    ];
    assert_eq!(refusal(&reg, &private), login_status::AUTHORIZATION_FAILURE);
    // The whole text in the first PDU, the last one empty; and no TargetName at all.
    let whole = login_continued(stage::OPERATIONAL, stage::FULL_FEATURE, &text);
    let empty = login_raw(stage::OPERATIONAL, stage::FULL_FEATURE, true, 0, &[]);
    assert_eq!(
        refusal(&reg, &[whole, empty.clone()]),
        login_status::AUTHORIZATION_FAILURE
    );
    let nameless = text_of(&[("InitiatorName", INITIATOR)]);
    let nameless = login_continued(stage::OPERATIONAL, stage::FULL_FEATURE, &nameless);
    assert_eq!(
        refusal(&reg, &[nameless, empty]),
        login_status::MISSING_PARAMETER
    );
    // C and T together (section 11.12.2).
    let mut both = login_continued(stage::OPERATIONAL, stage::FULL_FEATURE, head);
    both[1] |= flags::T;
    assert_eq!(refusal(&reg, &[both]), login_status::INITIATOR_ERROR);
    assert_eq!(reg.lock().unwrap().session_count(), 0);

    // A target open to the initiator: the continued login reaches it.
    let mut rig = Rig::new(&reg);
    let r = rig.send(&first);
    assert_eq!(r.len(), 1);
    let r0 = r[0].login();
    assert!(!r0.transit && r0.status == login_status::SUCCESS && r[0].data.is_empty());
    let r = rig.send(&last);
    let r1 = r[0].login();
    assert!(r1.transit && r1.nsg == stage::FULL_FEATURE && r1.tsih != 0);
    assert_eq!(
        r[0].key("TargetPortalGroupTag"),
        None,
        "it went in the first response"
    );
    assert!(matches!(
        rig.conn.take_events().as_slice(),
        [ConnEvent::LoggedIn { initiator, target: Some(t), .. }]
            if initiator == INITIATOR && t == TARGET
    ));
    assert_eq!(rig.conn.check_login_invariants(), Ok(()));
    let out = rig.command(1, flags::F, 0, &TUR, &[]);
    assert_eq!(out[0].code(), status::GOOD);
}

#[test]
fn full_feature_phase_implies_a_resolved_target_and_completed_chap() {
    // Every sequence of up to three of these requests, against a target without CHAP, one
    // with CHAP, and one with CHAP and an allow-list that excludes INITIATOR. Whenever the
    // target grants the full feature phase, the session has its target, the allow-list
    // admits the initiator, and CHAP was completed when the target requires it.
    let chap_r = hex(&chap::response(
        RANDOM[0],
        b"initiator-secret",
        &RANDOM[1..],
    ));
    let ident = text_of(&identity());
    let mut ident_chap = ident.clone();
    answer(&mut ident_chap, "AuthMethod", "CHAP,None");
    let mut ident_none = ident.clone();
    answer(&mut ident_none, "AuthMethod", "None");
    let (s, o, ffp) = (stage::SECURITY, stage::OPERATIONAL, stage::FULL_FEATURE);
    let blocks: Vec<Vec<u8>> = vec![
        login_continued(o, ffp, &ident[..25]),
        login_raw(o, ffp, true, 0, &ident[25..]),
        login_raw(o, ffp, true, 0, &ident),
        login_raw(o, ffp, true, 0, &[]),
        login_continued(s, o, &ident_chap),
        login_raw(s, o, false, 0, &ident_chap),
        login_raw(s, ffp, true, 0, &ident_none),
        login_raw(s, o, false, 0, &text_of(&[("CHAP_A", "5")])),
        login_raw(
            s,
            ffp,
            true,
            0,
            &text_of(&[("CHAP_N", "alice"), ("CHAP_R", &chap_r)]),
        ),
        login_raw(s, o, true, 0, &[]),
        login_raw(3, ffp, false, 0, &ident),
    ];
    let n = blocks.len();
    let mut sequences: Vec<Vec<usize>> = (0..n).map(|a| vec![a]).collect();
    for a in 0..n {
        for b in 0..n {
            sequences.push(vec![a, b]);
            for c in 0..n {
                sequences.push(vec![a, b, c]);
            }
        }
    }
    let registries = [
        (registry(), None),
        (chap_registry(false), Some("alice")),
        (
            registry_with(vec![node(
                TARGET,
                Some(OTHER_INITIATOR),
                Some(chap_config(false)),
            )]),
            Some("alice"),
        ),
    ];
    for (k, (reg, chap_name)) in registries.iter().enumerate() {
        let mut logged_in = 0;
        for seq in &sequences {
            let mut conn = IscsiConn::new(
                params(TargetLimits::default()),
                Arc::clone(reg),
                None,
                RANDOM,
            );
            for &i in seq {
                conn.receive(&blocks[i], 1_000);
                assert_eq!(conn.check_login_invariants(), Ok(()), "{seq:?}");
            }
            let bytes = conn.take_output();
            let granted = parse_pdus(&bytes, (false, false)).iter().any(|p| {
                let r = p.login();
                r.status == login_status::SUCCESS && r.transit && r.nsg == ffp
            });
            let id = conn.logged_in_identity();
            assert_eq!(granted, id.is_some(), "{seq:?}");
            if let Some(id) = id {
                logged_in += 1;
                assert_ne!(k, 2, "{seq:?}: the allow-list excludes {INITIATOR}");
                assert_eq!(id.target.as_deref(), Some(TARGET), "{seq:?}");
                assert_eq!(id.chap_name.as_deref(), *chap_name, "{seq:?}");
            }
            conn.teardown();
        }
        assert!(
            k == 2 || logged_in > 0,
            "some sequence logs in to registry {k}"
        );
        assert_eq!(reg.lock().unwrap().session_count(), 0);
    }
}

/// Takes every TSIH there is (1 to 65535) with sessions of other initiators, without
/// 65535 logins.
fn take_every_tsih(reg: &Arc<Mutex<Registry>>) {
    let mut r = reg.lock().unwrap();
    let taken: std::collections::HashSet<u16> = r.sessions.iter().map(|s| s.tsih).collect();
    for tsih in 1..=u16::MAX {
        if taken.contains(&tsih) {
            continue;
        }
        r.sessions.push(super::SessionEntry {
            initiator: format!("iqn.2026-01.org.example:filler-{tsih}"),
            isid: ISID,
            target: TARGET.into(),
            chap_name: None,
            tsih,
            killed: Arc::default(),
        });
    }
}

#[test]
fn a_login_when_every_tsih_is_taken_is_out_of_resources() {
    let reg = registry();
    let mut first = Rig::new(&reg);
    let (_, pdus) = login(&mut first, opts());
    let tsih = pdus[0].login().tsih;
    take_every_tsih(&reg);
    // Another session: no TSIH is left (section 11.13.5, 0x0302).
    let mut keys = identity();
    keys[0].1 = OTHER_INITIATOR;
    assert_eq!(
        refusal(&reg, &[op_login(&keys)]),
        login_status::OUT_OF_RESOURCES
    );
    // Reinstating a session frees its TSIH for the new one.
    let mut again = Rig::new(&reg);
    let (_, pdus) = login(&mut again, opts());
    assert_eq!(pdus[0].login().tsih, tsih);
    assert!(!first.conn.tick(2_000));
    // A session that ends frees its TSIH.
    reg.lock().unwrap().close_session(777);
    let mut other = Rig::new(&reg);
    let mut o = opts();
    o.initiator = OTHER_INITIATOR.into();
    let (_, pdus) = login(&mut other, o);
    assert_eq!(pdus[0].login().tsih, 777);
    assert_eq!(reg.lock().unwrap().session_count(), usize::from(u16::MAX));
}

// ---- Digests --------------------------------------------------------------------------------

fn nop_out(itt: u32, ttt: u32, cmd_sn: u32) -> [u8; BHS_LEN] {
    let mut b = bhs(Opcode::NopOut, true, flags::F, itt);
    set_u32(&mut b, field::TTT, ttt);
    set_u32(&mut b, field::CMD_SN, cmd_sn);
    b
}

#[test]
fn crc32c_digests_are_negotiated_used_and_enforced() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let mut o = opts();
    o.header_digest = true;
    o.data_digest = true;
    let (mut host, pdus) = login(&mut rig, o.clone());
    let fin = pdus.last().unwrap();
    assert_eq!(fin.key("HeaderDigest").as_deref(), Some("CRC32C"));
    assert_eq!(fin.key("DataDigest").as_deref(), Some("CRC32C"));
    assert_eq!((host.digests(), rig.digests), ((true, true), (true, true)));
    // Both sides check every digest of the traffic (the rig's parser and the host).
    let data = pattern(8192, 3);
    host.command(LUN0, &write10(4, 16), data.clone(), 0);
    let (c, _) = run(&mut rig, &mut host);
    assert_eq!(c.status, status::GOOD);
    host.command(LUN0, &read10(4, 16), Vec::new(), 8192);
    let (c, pdus) = run(&mut rig, &mut host);
    assert_eq!(c.data, data);
    assert_eq!(ops(&pdus), [Opcode::DataIn]);

    // A corrupted header digest ends the connection at once (ERL 0, section 7.8).
    let mut nop = frame(nop_out(0x20, TAG, 3), &[], rig.digests);
    nop[BHS_LEN] ^= 1;
    assert!(rig.send(&nop).is_empty());
    assert!(rig.conn.closing());
    assert!(
        rig.conn
            .take_events()
            .contains(&ConnEvent::ProtocolError("header digest error".into()))
    );

    // A corrupted data digest: Reject (data digest error) carrying the header.
    let mut rig = Rig::new(&reg);
    o.isid[5] = 2;
    login(&mut rig, o);
    let b = nop_out(0x21, TAG, 1);
    let mut nop = frame(b, b"ping", rig.digests);
    let n = nop.len();
    nop[n - 1] ^= 1;
    let out = rig.send(&nop);
    assert_eq!(ops(&out), [Opcode::Reject]);
    assert_eq!(out[0].code(), reject::DATA_DIGEST_ERROR);
    assert_eq!(out[0].itt(), TAG);
    assert_eq!(out[0].data[..BHS_LEN], nop[..BHS_LEN]);
}

#[test]
fn digests_stay_off_when_refused_or_not_asked() {
    let reg = registry();
    let limits = TargetLimits {
        allow_header_digest: false,
        allow_data_digest: false,
        ..TargetLimits::default()
    };
    let mut rig = Rig::limits(&reg, limits);
    let mut o = opts();
    o.header_digest = true;
    o.data_digest = true;
    let (mut host, pdus) = login(&mut rig, o);
    assert_eq!(pdus[0].key("HeaderDigest").as_deref(), Some("None"));
    assert_eq!(pdus[0].key("DataDigest").as_deref(), Some("None"));
    assert_eq!(host.digests(), (false, false));
    host.command(LUN0, &read10(0, 1), Vec::new(), BS);
    // The rig parses the output without digests: a digest would break the framing.
    let (c, pdus) = run(&mut rig, &mut host);
    assert_eq!((c.status, c.received), (status::GOOD, BS));
    assert_eq!(ops(&pdus), [Opcode::DataIn]);
}

/// Digests start with the full feature phase (RFC 7143 section 13.1), even when an
/// operational round before the last one negotiated them.
#[test]
fn login_pdus_never_carry_digests() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let mut keys = identity();
    keys.extend([("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")]);
    let a = rig.send(&login_request(
        stage::OPERATIONAL,
        stage::FULL_FEATURE,
        false,
        0,
        &keys,
    ));
    assert_eq!(a[0].key("HeaderDigest").as_deref(), Some("CRC32C"));
    assert!(!a[0].login().transit);
    // The next login request has no digest, as every login PDU.
    let b = rig.send(&login_request(
        stage::OPERATIONAL,
        stage::FULL_FEATURE,
        true,
        0,
        &[("ErrorRecoveryLevel", "0")],
    ));
    assert_eq!(b.len(), 1, "the second login request was read");
    assert_eq!(b[0].login().status, login_status::SUCCESS);
    assert_eq!(rig.digests, (true, true));
    let mut ping = nop_out(7, TAG, 1);
    ping[field::LUN + 1] = 0;
    let out = rig.send_pdu(ping, b"abcd");
    assert_eq!(ops(&out), [Opcode::NopIn]);
    assert_eq!(out[0].data, b"abcd");
}

// ---- CHAP -----------------------------------------------------------------------------------

fn chap_registry(mutual: bool) -> Arc<Mutex<Registry>> {
    registry_with(vec![node(TARGET, None, Some(chap_config(mutual)))])
}

fn chap_opts(name: &str, secret: &[u8]) -> LoginOptions {
    let mut o = opts();
    o.chap = Some((name.into(), secret.to_vec()));
    o
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::from("0x"), |mut s, x| {
        s.push_str(&format!("{x:02x}"));
        s
    })
}

#[test]
fn chap_login_succeeds() {
    let reg = chap_registry(false);
    let mut rig = Rig::new(&reg);
    let (_, pdus) = login(&mut rig, chap_opts("alice", b"initiator-secret"));
    assert_eq!(pdus.len(), 4);
    let r: Vec<LoginResponseRepr> = pdus.iter().map(Pdu::login).collect();
    assert_eq!(
        pdus[0].keys(),
        kv(&[
            ("TargetPortalGroupTag", "1"),
            ("TargetAlias", "disk0"),
            ("AuthMethod", "CHAP"),
        ])
    );
    assert!(!r[0].transit, "no transit before the CHAP exchange");
    let challenge = hex(&RANDOM[1..]);
    assert_eq!(
        pdus[1].keys(),
        kv(&[
            ("CHAP_A", "5"),
            ("CHAP_I", "42"),
            ("CHAP_C", challenge.as_str())
        ])
    );
    assert!(!r[1].transit);
    assert!(r[2].transit && r[2].csg == stage::SECURITY && r[2].nsg == stage::OPERATIONAL);
    assert!(r[3].transit && r[3].nsg == stage::FULL_FEATURE && r[3].tsih != 0);
    for (i, x) in r.iter().enumerate() {
        assert_eq!(x.stat_sn, FIRST_STAT_SN + i as u32);
        assert_eq!(x.status, login_status::SUCCESS);
        assert_eq!(x.tsih == 0, i < 3);
    }
}

#[test]
fn chap_failures_end_the_login() {
    let reg = chap_registry(false);
    for (name, secret) in [
        ("alice", &b"wrong-secret"[..]),
        ("mallory", b"initiator-secret"),
    ] {
        let mut rig = Rig::new(&reg);
        let mut host = IscsiHost::new(chap_opts(name, secret));
        let (pdus, r) = rig.pump(&mut host);
        assert_eq!(
            r,
            Err(HostError::LoginRefused(
                login_status::AUTHENTICATION_FAILURE
            ))
        );
        assert_eq!(pdus.len(), 3, "AuthMethod, challenge, refusal");
        assert!(rig.conn.closing());
    }
    // Skipping the security stage when CHAP is required.
    let mut rig = Rig::new(&reg);
    let mut host = IscsiHost::new(opts());
    let (pdus, r) = rig.pump(&mut host);
    assert_eq!(
        r,
        Err(HostError::LoginRefused(
            login_status::AUTHENTICATION_FAILURE
        ))
    );
    assert_eq!(pdus.len(), 1);
    assert!(rig.conn.closing());
    // Offering only AuthMethod=None when CHAP is required.
    let mut keys = identity();
    keys.push(("AuthMethod", "None"));
    let req = login_request(stage::SECURITY, stage::OPERATIONAL, true, 0, &keys);
    assert_eq!(refusal(&reg, &[req]), login_status::AUTHENTICATION_FAILURE);
    // An algorithm other than MD5.
    let mut keys = identity();
    keys.push(("AuthMethod", "CHAP"));
    let a = login_request(stage::SECURITY, stage::OPERATIONAL, false, 0, &keys);
    let b = login_request(
        stage::SECURITY,
        stage::OPERATIONAL,
        false,
        0,
        &[("CHAP_A", "7")],
    );
    assert_eq!(refusal(&reg, &[a, b]), login_status::AUTHENTICATION_FAILURE);
    assert_eq!(reg.lock().unwrap().session_count(), 0);
}

#[test]
fn mutual_chap() {
    let reg = chap_registry(true);
    let mut rig = Rig::new(&reg);
    let mut o = chap_opts("alice", b"initiator-secret");
    o.mutual = Some(("target-bob".into(), b"target-secret-12".to_vec()));
    // The host checks the target's CHAP_N and CHAP_R; a wrong answer fails its login.
    let (_, pdus) = login(&mut rig, o.clone());
    let proof = hex(&chap::response(77, b"target-secret-12", &[0x5a; 16]));
    assert_eq!(pdus[2].key("CHAP_N").as_deref(), Some("target-bob"));
    assert_eq!(pdus[2].key("CHAP_R"), Some(proof));

    // The target has no credentials of its own: mutual CHAP cannot succeed.
    let reg = chap_registry(false);
    let mut rig = Rig::new(&reg);
    let mut host = IscsiHost::new(o);
    let (_, r) = rig.pump(&mut host);
    assert_eq!(
        r,
        Err(HostError::LoginRefused(
            login_status::AUTHENTICATION_FAILURE
        ))
    );
    assert!(rig.conn.closing());
}

#[test]
fn discovery_chap() {
    let reg = registry();
    reg.lock().unwrap().discovery_chap = Some(chap_config(false));
    let mut rig = Rig::new(&reg);
    let mut host = IscsiHost::new(LoginOptions::new(INITIATOR, None));
    let (_, r) = rig.pump(&mut host);
    assert_eq!(
        r,
        Err(HostError::LoginRefused(
            login_status::AUTHENTICATION_FAILURE
        ))
    );

    let mut rig = Rig::new(&reg);
    let mut o = LoginOptions::new(INITIATOR, None);
    o.chap = Some(("alice".into(), b"initiator-secret".to_vec()));
    let (mut host, pdus) = login(&mut rig, o);
    assert_eq!(pdus[0].key("AuthMethod").as_deref(), Some("CHAP"));
    host.send_targets("All");
    rig.pump_ok(&mut host);
    assert_eq!(host.text_result().unwrap()[0].1, TARGET);
    // Normal sessions to a target without CHAP still need none.
    let mut rig = Rig::new(&reg);
    login(&mut rig, opts());
}

// ---- Discovery --------------------------------------------------------------------------------

fn discover(local: IpAddr, initiator: &str) -> Vec<(String, String)> {
    let reg = registry();
    let mut rig = Rig::local(
        &reg,
        params(TargetLimits::default()),
        new_disk(),
        Some(local),
    );
    let (mut host, pdus) = login(&mut rig, LoginOptions::new(initiator, None));
    assert_eq!(
        pdus[0].key("TargetPortalGroupTag"),
        None,
        "normal sessions only"
    );
    host.send_targets("All");
    let pdus = rig.pump_ok(&mut host);
    assert_eq!(ops(&pdus), [Opcode::TextResponse]);
    assert_eq!(pdus[0].flags() & (flags::F | flags::C), flags::F);
    assert_eq!(pdus[0].ttt(), TAG);
    host.text_result().expect("a whole answer").to_vec()
}

#[test]
fn send_targets_lists_allowed_targets_at_every_portal() {
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(
        discover(v4, INITIATOR),
        kv(&[
            ("TargetName", TARGET),
            ("TargetAddress", "127.0.0.1:3260,1"),
            ("TargetAddress", "192.0.2.10:3261,1"),
        ])
    );
    let v6 = discover(IpAddr::V6(Ipv6Addr::LOCALHOST), INITIATOR);
    assert_eq!(v6[1], ("TargetAddress".into(), "[::1]:3260,1".into()));
    let names: Vec<String> = discover(v4, OTHER_INITIATOR)
        .into_iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(names, [TARGET, PRIVATE]);
}

#[test]
fn discovery_sessions_carry_no_scsi_commands() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let (mut host, _) = login(&mut rig, LoginOptions::new(INITIATOR, None));
    host.command(LUN0, &TUR, Vec::new(), 0);
    let (pdus, r) = rig.pump(&mut host);
    assert_eq!(r, Err(HostError::Rejected(reject::PROTOCOL_ERROR)));
    assert_eq!(ops(&pdus), [Opcode::Reject]);
    assert_eq!(
        Bhs::new_unchecked(&pdus[0].data[..]).opcode(),
        Opcode::ScsiCommand
    );
    assert!(!rig.conn.closing());
}

#[test]
fn long_text_responses_continue_on_empty_text_requests() {
    let targets = (0..30)
        .map(|i| node(&format!("{TARGET}-number-{i:02}"), None, None))
        .collect();
    let reg = registry_with(targets);
    let mut rig = Rig::new(&reg);
    let out = rig.send(&op_login(&[
        ("InitiatorName", INITIATOR),
        ("SessionType", "Discovery"),
        ("MaxRecvDataSegmentLength", "512"),
    ]));
    assert_eq!(out[0].login().status, login_status::SUCCESS);
    let text_req = |ttt: u32, sn: u32| {
        let mut b = bhs(Opcode::TextRequest, true, flags::F, 0x55);
        set_u32(&mut b, field::TTT, ttt);
        set_u32(&mut b, field::CMD_SN, sn);
        b
    };
    let mut text = Vec::new();
    answer(&mut text, "SendTargets", "All");
    let sn = rig.cmd_sn;
    let mut pdus = rig.send_pdu(text_req(TAG, sn), &text);
    let mut joined = Vec::new();
    let mut pieces = 0;
    loop {
        assert_eq!(ops(&pdus), [Opcode::TextResponse]);
        let p = &pdus[0];
        assert_eq!(p.itt(), 0x55);
        assert_eq!(p.stat_sn(), FIRST_STAT_SN + 1 + pieces);
        joined.extend_from_slice(&p.data);
        pieces += 1;
        if p.flags() & flags::F != 0 {
            assert_eq!(p.flags() & flags::C, 0);
            assert_eq!(p.ttt(), TAG);
            assert!(p.data.len() <= 512);
            break;
        }
        assert_eq!(p.flags() & flags::C, flags::C);
        assert_ne!(p.ttt(), TAG);
        assert_eq!(p.data.len(), 512, "pieces as long as the initiator takes");
        pdus = rig.send_pdu(text_req(p.ttt(), sn), &[]);
    }
    assert!(pieces >= 5, "{pieces} pieces");
    let all = pairs(&joined);
    assert_eq!(all.len(), 90);
    assert_eq!(all.iter().filter(|(k, _)| k == "TargetName").count(), 30);
    assert!(all.contains(&("TargetName".into(), format!("{TARGET}-number-29"))));
}

#[test]
fn host_joins_continued_text_responses() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let (mut host, _) = login(&mut rig, LoginOptions::new(INITIATOR, None));
    host.send_targets("All");
    let req = parse_pdus(host.output(), (false, false));
    host.consume_output(host.output().len());
    let itt = req[0].itt();
    // A pair split across two Text Responses.
    let mut a = bhs(Opcode::TextResponse, false, flags::C, itt);
    set_u32(&mut a, field::TTT, 0x8000_0001);
    host.receive(&frame(a, b"TargetName=iqn.x\0TargetAdd", (false, false)))
        .unwrap();
    let more = parse_pdus(host.output(), (false, false));
    assert_eq!(ops(&more), [Opcode::TextRequest]);
    assert_eq!((more[0].itt(), more[0].ttt()), (itt, 0x8000_0001));
    assert!(more[0].data.is_empty());
    assert!(host.text_result().is_none());
    let mut b = bhs(Opcode::TextResponse, false, flags::F, itt);
    set_u32(&mut b, field::TTT, TAG);
    host.receive(&frame(b, b"ress=192.0.2.1:3260,1\0", (false, false)))
        .unwrap();
    assert_eq!(
        host.text_result().unwrap(),
        kv(&[
            ("TargetName", "iqn.x"),
            ("TargetAddress", "192.0.2.1:3260,1")
        ])
    );
}

// ---- Full feature phase: reads --------------------------------------------------------------

#[test]
fn read_data_in_splits_at_the_initiators_mrdsl_and_bursts_with_status_last() {
    let len = 1200 * BS;
    let data = pattern(len, 9);
    for (max_burst, lens) in [
        (1 << 20, vec![262_144, 262_144, 90_112]),
        (131_072, vec![131_072, 131_072, 131_072, 131_072, 90_112]),
    ] {
        let reg = registry();
        let limits = TargetLimits {
            max_burst_length: max_burst,
            first_burst_length: 65536,
            ..TargetLimits::default()
        };
        let mut rig = Rig::limits(&reg, limits);
        rig.disk.lock().unwrap()[..len].copy_from_slice(&data);
        let (mut host, _) = login(&mut rig, opts());
        let itt = host.command(LUN0, &read10(0, 1200), Vec::new(), len);
        let (c, pdus) = run(&mut rig, &mut host);
        assert_eq!(
            (c.status, c.residual_flags, c.residual),
            (status::GOOD, 0, 0)
        );
        assert!(c.data == data);
        assert!(
            pdus.iter().all(|p| p.op() == Opcode::DataIn),
            "no SCSI Response"
        );
        let got: Vec<usize> = pdus.iter().map(|p| p.data.len()).collect();
        assert_eq!(got, lens);
        let mut offset = 0;
        for (i, p) in pdus.iter().enumerate() {
            let last = i + 1 == pdus.len();
            assert_eq!(p.itt(), itt);
            assert_eq!(p.ttt(), TAG);
            assert_eq!(p.u32_at(field::DATA_SN), i as u32);
            assert_eq!(p.u32_at(field::BUFFER_OFFSET), offset);
            offset += p.data.len() as u32;
            // F ends each burst; S and the status only in the last PDU.
            let burst_end = (offset as usize).is_multiple_of(max_burst as usize);
            assert_eq!(p.flags() & flags::F != 0, last || burst_end, "PDU {i}");
            assert_eq!(p.flags() & flags::S != 0, last);
            if last {
                assert_eq!(p.code(), status::GOOD);
                assert_ne!(p.stat_sn(), 0);
            } else {
                assert_eq!(p.stat_sn(), 0, "StatSN is reserved without S");
            }
        }
    }
}

/// Feeds the host's pending PDUs to the target.
fn to_target(rig: &mut Rig, host: &mut IscsiHost) {
    let b = host.output().to_vec();
    host.consume_output(b.len());
    assert_eq!(rig.conn.receive(&b, rig.now), b.len());
}

/// Sends the target's output byte by byte into `sent` until `keep` bytes are left.
fn send_bytewise(rig: &mut Rig, sent: &mut Vec<u8>, keep: usize) {
    while rig.conn.output_len() > keep {
        sent.push(rig.conn.output()[0]);
        rig.conn.consume_output(1);
    }
}

/// Feeds the host's pending PDUs to the target and takes the block operation they start,
/// run on the disk: its slot and where its buffer lies.
fn start_read(rig: &mut Rig, host: &mut IscsiHost) -> (usize, *const u8) {
    to_target(rig, host);
    let (slot, io) = rig.conn.next_io().expect("the read's block operation");
    let buffer = rig.conn.buffer_mut(slot).as_ptr();
    let outcome = execute(&rig.disk, &io.op, rig.conn.buffer_mut(slot));
    rig.conn.io_done(slot, outcome);
    (slot, buffer)
}

#[test]
fn read_data_in_is_sent_from_the_task_buffer() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    // 600 blocks: two Data-In PDUs at the host's MaxRecvDataSegmentLength of 256 KiB.
    let len = 600 * BS;
    let data = pattern(len, 5);
    rig.disk.lock().unwrap()[..len].copy_from_slice(&data);
    let mut o = opts();
    o.header_digest = true;
    o.data_digest = true;
    let (mut host, _) = login(&mut rig, o);

    host.command(LUN0, &read10(0, 600), Vec::new(), len);
    let (slot, buffer) = start_read(&mut rig, &mut host);
    let pieces: Vec<&[u8]> = rig.conn.output_chunks().collect();
    assert_eq!(
        pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [BHS_LEN + 4, 262_144, 4 + BHS_LEN + 4, len - 262_144, 4],
        "header, data, digest and the next header, data, digest"
    );
    assert_eq!(pieces[1].as_ptr(), buffer, "the data is the task's buffer");
    assert_eq!(pieces[3].as_ptr(), buffer.wrapping_add(262_144));
    let total = rig.conn.output_len();
    assert_eq!(total, pieces.iter().map(|p| p.len()).sum::<usize>());

    // Sent byte by byte: until the last byte of its data is taken (before the data
    // digest's 4), the slot is not reused (another read gets another slot); after it, it is.
    let mut sent = Vec::new();
    send_bytewise(&mut rig, &mut sent, 1 + 4);
    host.command(LUN0, &read10(8, 1), Vec::new(), BS);
    let (other, _) = start_read(&mut rig, &mut host);
    assert_ne!(other, slot, "the slot is still sending");
    send_bytewise(&mut rig, &mut sent, 0);
    host.command(LUN0, &read10(16, 1), Vec::new(), BS);
    let (again, again_buffer) = start_read(&mut rig, &mut host);
    assert_eq!(
        (again, again_buffer),
        (slot, buffer),
        "free once its data went out"
    );
    sent.extend(rig.conn.take_output());

    let pdus = parse_pdus(&sent, rig.digests);
    assert_eq!(ops(&pdus), [Opcode::DataIn; 4]);
    host.receive(&sent).expect("whole PDUs, digests right");
    let c = host.completion().expect("the first read completes");
    assert_eq!((c.status, c.data == data), (status::GOOD, true));
    let c = host.completion().expect("the second read completes");
    assert_eq!(c.data, data[8 * BS..9 * BS]);
    let c = host.completion().expect("the third read completes");
    assert_eq!(c.data, data[16 * BS..17 * BS]);
}

#[test]
fn data_in_not_a_multiple_of_4_is_padded_after_the_lent_data_and_its_digest_covers_the_pad() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let mut o = opts();
    o.data_digest = true;
    let (mut host, _) = login(&mut rig, o);
    // INQUIRY, 37 bytes: three of padding, then the digest over data and padding.
    host.command(LUN0, &[0x12, 0, 0, 0, 37, 0], Vec::new(), 37);
    to_target(&mut rig, &mut host);
    let pieces: Vec<Vec<u8>> = rig.conn.output_chunks().map(<[u8]>::to_vec).collect();
    assert_eq!(pieces.len(), 3, "header, data, padding and digest");
    assert_eq!(pieces[1].len(), 37);
    let mut padded_data = pieces[1].clone();
    padded_data.extend([0; 3]);
    assert_eq!(pieces[2][..3], [0; 3]);
    assert_eq!(pieces[2][3..], digest(&padded_data));
    let mut sent = Vec::new();
    send_bytewise(&mut rig, &mut sent, 0);
    assert_eq!(ops(&parse_pdus(&sent, rig.digests)), [Opcode::DataIn]);
    host.receive(&sent).expect("whole PDUs, digests right");
    let c = host.completion().expect("INQUIRY completes");
    assert_eq!((c.status, c.data), (status::GOOD, pieces[1].clone()));
}

#[test]
fn failed_reads_answer_with_sense_and_no_data() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let (mut host, _) = login(&mut rig, opts());
    host.command(LUN0, &read10(BLOCKS as u32, 1), Vec::new(), BS);
    let (c, pdus) = run(&mut rig, &mut host);
    assert_eq!(ops(&pdus), [Opcode::ScsiResponse]);
    assert_eq!((c.status, c.received), (status::CHECK_CONDITION, 0));
    assert_eq!(pdus[0].sense(), (key::ILLEGAL_REQUEST, 0x21, 0x00));
    assert_eq!(pdus[0].u32_at(field::DATA_SN), 0, "ExpDataSN: no Data-In");

    rig.io_outcome = IoOutcome::ReadError;
    host.command(LUN0, &read10(0, 8), Vec::new(), 8 * BS);
    let (c, pdus) = run(&mut rig, &mut host);
    assert_eq!(ops(&pdus), [Opcode::ScsiResponse]);
    assert_eq!(c.status, status::CHECK_CONDITION);
    assert_eq!(pdus[0].sense(), (key::MEDIUM_ERROR, 0x11, 0x00));
    assert!(!rig.conn.closing());
}

// ---- Full feature phase: writes -------------------------------------------------------------

#[test]
fn write_with_immediate_data() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let (mut host, _) = login(&mut rig, opts());
    let data = pattern(4096, 4);
    host.command(LUN0, &write10(100, 8), data.clone(), 0);
    let (pdus, r) = rig.step(&mut host);
    r.unwrap();
    assert_eq!(ops(&rig.sent), [Opcode::ScsiCommand]);
    assert_eq!(rig.sent[0].data, data);
    assert_ne!(rig.sent[0].flags() & flags::F, 0);
    assert_eq!(ops(&pdus), [Opcode::ScsiResponse]);
    assert_eq!(pdus[0].code(), status::GOOD);
    assert_eq!(rig.disk_at(100, 4096), data);
}

#[test]
fn write_with_unsolicited_data_out() {
    let reg = registry();
    let limits = TargetLimits {
        max_recv_data_segment_length: 8192,
        ..TargetLimits::default()
    };
    let mut rig = Rig::limits(&reg, limits);
    let (mut host, _) = login(&mut rig, opts());
    let data = pattern(65536, 5);
    let itt = host.command(LUN0, &write10(200, 128), data.clone(), 0);
    let (pdus, r) = rig.step(&mut host);
    r.unwrap();
    // Immediate data up to the target's MaxRecvDataSegmentLength, then Data-Out with the
    // reserved TTT up to FirstBurstLength; the target asks for nothing.
    assert_eq!(rig.sent.len(), 8);
    assert_eq!(rig.sent[0].op(), Opcode::ScsiCommand);
    assert_eq!(rig.sent[0].data.len(), 8192);
    assert_eq!(rig.sent[0].flags() & flags::F, 0);
    for (i, p) in rig.sent[1..].iter().enumerate() {
        assert_eq!(p.op(), Opcode::DataOut);
        assert_eq!((p.itt(), p.ttt()), (itt, TAG));
        assert_eq!(p.u32_at(field::DATA_SN), i as u32);
        assert_eq!(p.u32_at(field::BUFFER_OFFSET), 8192 * (i as u32 + 1));
    }
    assert_eq!(ops(&pdus), [Opcode::ScsiResponse]);
    assert_eq!(pdus[0].code(), status::GOOD);
    assert_eq!(rig.disk_at(200, 65536), data);
}

#[test]
fn write_solicited_by_several_r2ts_at_once() {
    let reg = registry();
    let limits = TargetLimits {
        initial_r2t: true,
        immediate_data: false,
        max_burst_length: 8192,
        first_burst_length: 8192,
        max_outstanding_r2t: 4,
        ..TargetLimits::default()
    };
    let mut rig = Rig::limits(&reg, limits);
    let (mut host, pdus) = login(&mut rig, opts());
    for (k, v) in [
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxBurstLength", "8192"),
        ("MaxOutstandingR2T", "4"),
    ] {
        assert_eq!(pdus[0].key(k).as_deref(), Some(v));
    }
    let data = pattern(65536, 6);
    let itt = host.command(LUN0, &write10(300, 128), data.clone(), 0);
    let (first, r) = rig.step(&mut host);
    r.unwrap();
    assert_eq!(ops(&rig.sent), [Opcode::ScsiCommand]);
    assert!(rig.sent[0].data.is_empty(), "no immediate data");
    // MaxOutstandingR2T of them at once, each at most MaxBurstLength.
    assert_eq!(first.len(), 4);
    let (second, r) = rig.step(&mut host);
    r.unwrap();
    assert_eq!(ops(&rig.sent), [Opcode::DataOut; 4]);
    assert_eq!(second.len(), 4, "one more R2T as each finishes");
    let (third, r) = rig.step(&mut host);
    r.unwrap();
    assert_eq!(ops(&third), [Opcode::ScsiResponse]);
    assert_eq!(third[0].code(), status::GOOD);
    let ttt = first[0].ttt();
    for (i, p) in first.iter().chain(&second).enumerate() {
        assert_eq!(p.op(), Opcode::R2t);
        assert_eq!((p.itt(), p.ttt()), (itt, ttt));
        assert_eq!(p.u32_at(field::DATA_SN), i as u32, "R2TSN");
        assert_eq!(p.u32_at(field::BUFFER_OFFSET), 8192 * i as u32);
        assert_eq!(p.u32_at(field::DESIRED_LEN), 8192);
    }
    assert_eq!(rig.disk_at(300, 65536), data);
}

#[test]
fn residuals_against_the_expected_data_transfer_length() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let disk = pattern(2 * BS, 8);
    rig.disk.lock().unwrap()[..2 * BS].copy_from_slice(&disk);
    let (mut host, _) = login(&mut rig, opts());
    let mut go = |cdb: &[u8], write: Vec<u8>, read: usize, edtl: usize| {
        host.command_with(LUN0, cdb, write, read, Some(edtl));
        run(&mut rig, &mut host)
    };
    // READ of one block, EDTL two: underflow.
    let (c, pdus) = go(&read10(0, 1), Vec::new(), 2 * BS, 2 * BS);
    assert_eq!(ops(&pdus), [Opcode::DataIn]);
    assert_eq!(pdus[0].flags(), flags::F | flags::S | flags::U);
    assert_eq!(
        (c.status, c.received, c.residual),
        (status::GOOD, BS, BS as u32)
    );
    assert_eq!(c.data[..BS], disk[..BS]);
    // READ of two blocks, EDTL one: overflow, EDTL's bytes sent.
    let (c, pdus) = go(&read10(0, 2), Vec::new(), BS, BS);
    assert_eq!(pdus[0].flags(), flags::F | flags::S | flags::O);
    assert_eq!(
        (c.received, c.residual, c.data),
        (BS, BS as u32, disk[..BS].to_vec())
    );
    // WRITE of one block, EDTL two: underflow, one block written.
    let w = pattern(2 * BS, 1);
    let (c, pdus) = go(&write10(10, 1), w.clone(), 0, 2 * BS);
    assert_eq!(ops(&pdus), [Opcode::ScsiResponse]);
    assert_eq!(
        (c.status, c.residual_flags, c.residual),
        (status::GOOD, flags::U, BS as u32)
    );
    // WRITE of two blocks, EDTL one: overflow, EDTL's whole block written.
    let (c, _) = go(&write10(20, 2), w.clone(), 0, BS);
    assert_eq!(
        (c.status, c.residual_flags, c.residual),
        (status::GOOD, flags::O, BS as u32)
    );
    // WRITE of two blocks, EDTL cutting a block: nothing written.
    let (c, pdus) = go(&write10(30, 2), w.clone(), 0, 700);
    assert_eq!(
        (c.status, c.residual_flags),
        (status::CHECK_CONDITION, flags::O)
    );
    assert_eq!(pdus[0].sense(), (key::ILLEGAL_REQUEST, 0x0e, 0x03));
    assert_eq!(rig.disk_at(10, BS), w[..BS]);
    assert_eq!(rig.disk_at(11, BS), [0; BS]);
    assert_eq!(rig.disk_at(20, BS), w[..BS]);
    assert_eq!(rig.disk_at(21, BS), [0; BS]);
    assert_eq!(rig.disk_at(30, 2 * BS), [0; 2 * BS]);
}

#[test]
fn a_data_sn_error_fails_the_command_and_keeps_the_connection() {
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    // Unsolicited data follows (F clear).
    assert!(
        rig.command(5, flags::W, 1024, &write10(40, 2), &[])
            .is_empty()
    );
    let out = rig.data_out(5, TAG, (1, 0), false, &pattern(BS, 1));
    assert_eq!(ops(&out), [Opcode::ScsiResponse]);
    assert_eq!((out[0].itt(), out[0].code()), (5, status::CHECK_CONDITION));
    assert_eq!(out[0].sense(), (key::ABORTED_COMMAND, 0x4b, 0x00));
    // The rest of its data is dropped; the connection goes on.
    assert!(
        rig.data_out(5, TAG, (2, 512), true, &pattern(BS, 2))
            .is_empty()
    );
    assert!(!rig.conn.closing());
    let out = rig.command(6, flags::F, 0, &TUR, &[]);
    assert_eq!(out[0].code(), status::GOOD);
    assert_eq!(rig.disk_at(40, 2 * BS), [0; 2 * BS]);
}

#[test]
fn data_out_streams_into_the_task_buffer_and_its_digest_is_checked_at_the_end() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let mut o = opts();
    o.header_digest = true;
    o.data_digest = true;
    login(&mut rig, o);
    let dg = rig.digests;
    // Byte by byte: the data segment arrives in pieces and is placed as it comes.
    let bytewise = |rig: &mut Rig, p: &[u8]| {
        for b in p {
            assert_eq!(rig.conn.receive(std::slice::from_ref(b), rig.now), 1);
        }
        rig.run_io();
        rig.output()
    };
    let data = pattern(2 * BS, 4);
    let b = rig.command_bhs(5, flags::W, 2 * BS as u32, &write10(40, 2));
    assert!(bytewise(&mut rig, &frame(b, &[], dg)).is_empty());
    // Lengths that need padding: 510 bytes, then 514.
    for (sn, range, fin) in [(0, 0..510, false), (1, 510..1024, true)] {
        let mut b = bhs(Opcode::DataOut, false, if fin { flags::F } else { 0 }, 5);
        set_u32(&mut b, field::TTT, TAG);
        set_u32(&mut b, field::DATA_SN, sn);
        set_u32(&mut b, field::BUFFER_OFFSET, range.start as u32);
        let out = bytewise(&mut rig, &frame(b, &data[range], dg));
        if fin {
            assert_eq!(ops(&out), [Opcode::ScsiResponse]);
            assert_eq!(out[0].code(), status::GOOD);
        } else {
            assert!(out.is_empty());
        }
    }
    assert_eq!(rig.disk_at(40, 2 * BS), data);

    // A byte of data changed on the way: Reject (data digest error) once the digest is in,
    // the connection ends, and nothing reaches the disk.
    let b = rig.command_bhs(6, flags::W, BS as u32, &write10(80, 1));
    assert!(bytewise(&mut rig, &frame(b, &[], dg)).is_empty());
    let mut b = bhs(Opcode::DataOut, false, flags::F, 6);
    set_u32(&mut b, field::TTT, TAG);
    let mut pdu = frame(b, &pattern(BS, 6), dg);
    pdu[BHS_LEN + 4 + 100] ^= 1;
    let (head, digest) = pdu.split_at(pdu.len() - 1);
    assert!(
        bytewise(&mut rig, head).is_empty(),
        "nothing before the digest"
    );
    let out = bytewise(&mut rig, digest);
    assert_eq!(ops(&out), [Opcode::Reject]);
    assert_eq!(out[0].code(), reject::DATA_DIGEST_ERROR);
    assert_eq!(out[0].data[..BHS_LEN], pdu[..BHS_LEN]);
    assert!(rig.conn.closing());
    assert_eq!(rig.disk_at(80, BS), [0; BS]);
}

#[test]
fn data_out_beyond_the_expected_length_ends_the_connection() {
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    assert!(
        rig.command(5, flags::W, 512, &write10(40, 1), &[])
            .is_empty()
    );
    let out = rig.data_out(5, TAG, (0, 512), true, &pattern(BS, 1));
    assert_eq!(ops(&out), [Opcode::Reject]);
    assert_eq!(out[0].code(), reject::PROTOCOL_ERROR);
    assert_eq!(
        Bhs::new_unchecked(&out[0].data[..]).opcode(),
        Opcode::DataOut
    );
    assert!(rig.conn.closing());
}

#[test]
fn data_out_repeating_received_data_ends_the_connection() {
    // DataPDUInOrder=Yes (section 13.19): no overlays. A PDU over bytes already received
    // must not count toward the task's length, or the task completes with a hole.
    let check = |rig: &mut Rig, out: Vec<Pdu>| {
        assert_eq!(ops(&out), [Opcode::Reject], "{out:?}");
        assert_eq!(out[0].code(), reject::PROTOCOL_ERROR);
        assert!(rig.conn.closing());
        assert!(rig.conn.next_io().is_none(), "nothing is written");
    };
    let r2t_only = TargetLimits {
        initial_r2t: true,
        immediate_data: false,
        ..TargetLimits::default()
    };
    // The first half of an R2T twice, with the next DataSN.
    let reg = registry();
    let mut rig = session(&reg, r2t_only);
    let r2t = rig.command(5, flags::F | flags::W, 1024, &write10(40, 2), &[]);
    assert_eq!(ops(&r2t), [Opcode::R2t]);
    let ttt = r2t[0].ttt();
    assert!(
        rig.data_out(5, ttt, (0, 0), false, &pattern(BS, 1))
            .is_empty()
    );
    let out = rig.data_out(5, ttt, (1, 0), true, &pattern(BS, 2));
    check(&mut rig, out);
    assert_eq!(rig.disk_at(40, 2 * BS), [0; 2 * BS]);
    // An R2T's data skipping ahead, then filling in (out of order).
    let reg = registry();
    let mut rig = session(&reg, r2t_only);
    let r2t = rig.command(5, flags::F | flags::W, 1024, &write10(40, 2), &[]);
    let ttt = r2t[0].ttt();
    let out = rig.data_out(5, ttt, (0, 512), false, &pattern(BS, 1));
    check(&mut rig, out);
    // Unsolicited data over the immediate data.
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    let out = rig.command(6, flags::W, 1024, &write10(50, 2), &pattern(BS, 3));
    assert!(out.is_empty());
    let out = rig.data_out(6, TAG, (0, 0), true, &pattern(BS, 4));
    check(&mut rig, out);
    assert_eq!(rig.disk_at(50, 2 * BS), [0; 2 * BS]);
    // Unsolicited data repeating itself.
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    assert!(
        rig.command(7, flags::W, 1536, &write10(60, 3), &[])
            .is_empty()
    );
    assert!(
        rig.data_out(7, TAG, (0, 0), false, &pattern(BS, 5))
            .is_empty()
    );
    let out = rig.data_out(7, TAG, (1, 0), false, &pattern(2 * BS, 6));
    check(&mut rig, out);
}

// ---- Full feature phase: command numbering --------------------------------------------------

fn tur(itt: u32, cmd_sn: u32, immediate: bool) -> [u8; BHS_LEN] {
    let mut b = bhs(Opcode::ScsiCommand, immediate, flags::F | 1, itt);
    set_u32(&mut b, field::CMD_SN, cmd_sn);
    b
}

#[test]
fn cmd_sn_orders_commands_and_ignores_those_outside_the_window() {
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    let exp = rig.cmd_sn;
    let depth = QUEUE_DEPTH as u32;
    // Beyond MaxCmdSN, and already seen: ignored.
    assert!(rig.send_pdu(tur(1, exp + depth, false), &[]).is_empty());
    assert!(rig.send_pdu(tur(2, exp - 1, false), &[]).is_empty());
    // A gap: held until filled, then both run in CmdSN order.
    assert!(rig.send_pdu(tur(3, exp + 1, false), &[]).is_empty());
    let out = rig.send_pdu(tur(4, exp, false), &[]);
    assert_eq!(ops(&out), [Opcode::ScsiResponse; 2]);
    assert_eq!((out[0].itt(), out[1].itt()), (4, 3));
    assert_eq!(out[1].stat_sn(), out[0].stat_sn() + 1);
    assert_eq!(out[1].exp_cmd_sn(), exp + 2);
    assert_eq!(out[1].max_cmd_sn(), exp + 2 + depth - 1);
    // Immediate commands do not advance ExpCmdSN.
    let out = rig.send_pdu(tur(5, exp + 2, true), &[]);
    assert_eq!((out[0].itt(), out[0].exp_cmd_sn()), (5, exp + 2));
    let out = rig.send_pdu(tur(6, exp + 2, false), &[]);
    assert_eq!((out[0].itt(), out[0].exp_cmd_sn()), (6, exp + 3));
    // The ignored ones never ran.
    assert!(rig.output().is_empty());
}

#[test]
fn max_cmd_sn_counts_free_task_slots() {
    let reg = registry();
    let limits = TargetLimits {
        initial_r2t: true,
        immediate_data: false,
        ..TargetLimits::default()
    };
    let mut rig = session(&reg, limits);
    let exp0 = rig.cmd_sn;
    let depth = QUEUE_DEPTH as u32;
    // Writes that wait for their data hold their slots.
    let mut r2ts = Vec::new();
    for i in 0..depth {
        let out = rig.command(100 + i, flags::W | flags::F, 512, &write10(i, 1), &[]);
        assert_eq!(ops(&out), [Opcode::R2t]);
        assert_eq!(out[0].exp_cmd_sn(), exp0 + i + 1);
        assert_eq!(
            out[0].max_cmd_sn(),
            exp0 + depth - 1,
            "the window never passes the slots"
        );
        r2ts.push(out[0].ttt());
    }
    // The window is closed (MaxCmdSN = ExpCmdSN - 1): a command at ExpCmdSN is outside it.
    let extra = rig.cmd_sn;
    assert!(rig.command(999, flags::F, 0, &TUR, &[]).is_empty());
    // A task finishes: its response opens the window by one.
    let out = rig.data_out(100, r2ts[0], (0, 0), true, &pattern(BS, 1));
    assert_eq!(ops(&out), [Opcode::ScsiResponse]);
    assert_eq!(out[0].code(), status::GOOD);
    assert_eq!(out[0].exp_cmd_sn(), exp0 + depth);
    assert_eq!(out[0].max_cmd_sn(), exp0 + depth);
    // The ignored command, sent again, now runs.
    rig.cmd_sn = extra;
    let out = rig.command(999, flags::F, 0, &TUR, &[]);
    assert_eq!(ops(&out), [Opcode::ScsiResponse]);
    assert_eq!(out[0].exp_cmd_sn(), exp0 + depth + 1);
    assert_eq!(out[0].max_cmd_sn(), exp0 + depth + 1, "one slot free");
    // The rest finish and the window is whole again.
    for (i, ttt) in r2ts.iter().enumerate().skip(1) {
        let out = rig.data_out(100 + i as u32, *ttt, (0, 0), true, &pattern(BS, 2));
        assert_eq!(out[0].code(), status::GOOD);
    }
    let out = rig.command(1000, flags::F, 0, &TUR, &[]);
    assert_eq!(out[0].max_cmd_sn(), out[0].exp_cmd_sn() + depth - 1);
}

// ---- Full feature phase: NOP ----------------------------------------------------------------

#[test]
fn nop_out_ping_is_answered_with_its_data() {
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    let mut b = nop_out(0x33, TAG, rig.cmd_sn);
    b[field::LUN + 1] = 2;
    let out = rig.send_pdu(b, b"are you there?");
    assert_eq!(ops(&out), [Opcode::NopIn]);
    let p = &out[0];
    assert_eq!((p.itt(), p.ttt(), p.flags()), (0x33, TAG, flags::F));
    assert_eq!(p.data, b"are you there?");
    assert_eq!(p.bhs[field::LUN + 1], 2);
    assert_eq!(p.stat_sn(), FIRST_STAT_SN + 1);
    // ITT ffffffff: no answer wanted.
    assert!(rig.send_pdu(nop_out(TAG, TAG, rig.cmd_sn), &[]).is_empty());
}

#[test]
fn target_pings_an_idle_initiator_and_ends_a_silent_connection() {
    let reg = registry();
    let p = ConnParams {
        limits: TargetLimits::default(),
        timers: Timers {
            nop_interval_ms: 1_000,
            nop_timeout_ms: 3_000,
            login_timeout_ms: 15_000,
        },
    };
    // Unanswered.
    let mut rig = Rig::with(&reg, p, new_disk());
    login(&mut rig, opts());
    assert!(rig.conn.tick(1_500));
    assert!(rig.output().is_empty());
    assert!(rig.conn.tick(2_000));
    let ping = rig.output();
    assert_eq!(ops(&ping), [Opcode::NopIn]);
    assert_eq!(ping[0].itt(), TAG);
    assert_ne!(ping[0].ttt(), TAG, "a ping asks for an answer");
    assert!(rig.conn.tick(4_999));
    assert!(rig.output().is_empty(), "one ping at a time");
    assert!(!rig.conn.tick(5_000));
    assert_eq!(rig.conn.take_events().last(), Some(&ConnEvent::NopTimeout));

    // Answered: the connection lives on, and pings again after the next quiet interval.
    let mut rig = Rig::with(&reg, p, new_disk());
    let mut o = opts();
    o.isid[5] = 3;
    let (mut host, _) = login(&mut rig, o);
    assert!(rig.conn.tick(2_000));
    rig.now = 2_500;
    let pdus = rig.pump_ok(&mut host);
    assert_eq!(ops(&pdus), [Opcode::NopIn]);
    assert_eq!(host.nop_replies(), 1);
    assert!(rig.conn.tick(3_000));
    assert!(rig.output().is_empty());
    assert!(rig.conn.tick(5_000));
    let again = rig.output();
    assert_eq!(ops(&again), [Opcode::NopIn]);
    assert_ne!(again[0].ttt(), pdus[0].ttt());
    assert!(rig.conn.tick(7_999));
}

// ---- Full feature phase: task management ----------------------------------------------------

#[test]
fn abort_task_waiting_for_data() {
    let reg = registry();
    let limits = TargetLimits {
        initial_r2t: true,
        immediate_data: false,
        ..TargetLimits::default()
    };
    let mut rig = session(&reg, limits);
    let sn = rig.cmd_sn;
    let out = rig.command(7, flags::W | flags::F, 1024, &write10(50, 2), &[]);
    assert_eq!(ops(&out), [Opcode::R2t]);
    let ttt = out[0].ttt();
    let out = rig.tmf(8, tmf::ABORT_TASK, 7, sn);
    assert_eq!(ops(&out), [Opcode::TaskMgmtResponse]);
    assert_eq!((out[0].itt(), out[0].code()), (8, tmf::FUNCTION_COMPLETE));
    // No response for the aborted task; its data is dropped.
    assert!(
        rig.data_out(7, ttt, (0, 0), true, &pattern(1024, 1))
            .is_empty()
    );
    assert_eq!(rig.disk_at(50, 1024), [0; 1024]);
    assert!(!rig.conn.closing());
    let out = rig.command(9, flags::F, 0, &TUR, &[]);
    assert_eq!(out[0].code(), status::GOOD);
    assert_eq!(
        out[0].max_cmd_sn(),
        out[0].exp_cmd_sn() + QUEUE_DEPTH as u32 - 1
    );
}

#[test]
fn abort_task_of_an_unknown_or_finished_task() {
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    let sn = rig.cmd_sn;
    assert_eq!(
        rig.command(3, flags::F, 0, &TUR, &[])[0].code(),
        status::GOOD
    );
    let out = rig.tmf(4, tmf::ABORT_TASK, 3, sn);
    assert_eq!(out[0].code(), tmf::TASK_DOES_NOT_EXIST);
    let next = rig.cmd_sn;
    let out = rig.tmf(5, tmf::ABORT_TASK, 0x999, next);
    assert_eq!(out[0].code(), tmf::TASK_DOES_NOT_EXIST);
    let out = rig.tmf(6, tmf::TASK_REASSIGN, 3, sn);
    assert_eq!(out[0].code(), tmf::REASSIGNMENT_NOT_SUPPORTED);
}

#[test]
fn task_management_and_teardown_leave_data_in_the_output_alone() {
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    let data = pattern(8 * BS, 7);
    rig.disk.lock().unwrap()[..8 * BS].copy_from_slice(&data);
    // Two reads answered, their data in the output (lent from their slots), not yet sent.
    for itt in [3, 4] {
        let b = rig.command_bhs(itt, flags::F | flags::R, 8 * BS as u32, &read10(0, 8));
        rig.receive(&frame(b, &[], rig.digests));
    }
    assert!(rig.conn.output_len() > 2 * 8 * BS);
    // They are over: ABORT TASK does not find them, a LUN reset does not touch them.
    let out = rig.tmf(5, tmf::ABORT_TASK, 3, 0);
    assert_eq!(
        ops(&out),
        [Opcode::DataIn, Opcode::DataIn, Opcode::TaskMgmtResponse]
    );
    assert_eq!((out[0].data == data, out[1].data == data), (true, true));
    assert_eq!(out[2].code(), tmf::TASK_DOES_NOT_EXIST);
    let b = rig.command_bhs(6, flags::F | flags::R, 8 * BS as u32, &read10(0, 8));
    rig.receive(&frame(b, &[], rig.digests));
    let out = rig.tmf(7, tmf::LOGICAL_UNIT_RESET, 0, 0);
    assert_eq!(ops(&out), [Opcode::DataIn, Opcode::TaskMgmtResponse]);
    assert!(out[0].data == data);
    assert_eq!(out[1].code(), tmf::FUNCTION_COMPLETE);
    // The connection goes with data unsent: the output is dropped with it.
    let b = rig.command_bhs(8, flags::F | flags::R, 8 * BS as u32, &read10(0, 8));
    rig.receive(&frame(b, &[], rig.digests));
    assert!(rig.conn.output_len() > 8 * BS);
    rig.conn.teardown();
    assert_eq!(rig.conn.output_len(), 0);
    assert!(rig.conn.output_chunks().next().is_none());
}

#[test]
fn lun_reset_gives_the_other_sessions_a_unit_attention() {
    let reg = registry();
    let disk = new_disk();
    let mut a = Rig::with(&reg, params(TargetLimits::default()), Arc::clone(&disk));
    let (mut ha, _) = login(&mut a, opts());
    let mut b = Rig::with(&reg, params(TargetLimits::default()), disk);
    let mut o = opts();
    o.isid[5] = 9;
    let (mut hb, _) = login(&mut b, o);
    let tur_on = |rig: &mut Rig, host: &mut IscsiHost| {
        host.command(LUN0, &TUR, Vec::new(), 0);
        run(rig, host)
    };
    assert_eq!(tur_on(&mut b, &mut hb).0.status, status::GOOD);
    ha.task_management(tmf::LOGICAL_UNIT_RESET, LUN0, 0);
    let (c, pdus) = run(&mut a, &mut ha);
    assert_eq!(ops(&pdus), [Opcode::TaskMgmtResponse]);
    assert_eq!(c.status, tmf::FUNCTION_COMPLETE);
    let (c, pdus) = tur_on(&mut b, &mut hb);
    assert_eq!(c.status, status::CHECK_CONDITION);
    assert_eq!(pdus[0].sense(), (key::UNIT_ATTENTION, 0x29, 0x03));
    assert_eq!(tur_on(&mut b, &mut hb).0.status, status::GOOD);
    assert_eq!(
        tur_on(&mut a, &mut ha).0.status,
        status::GOOD,
        "not the issuer"
    );
    ha.task_management(tmf::LOGICAL_UNIT_RESET, super::conn::encode_lun(7), 0);
    assert_eq!(run(&mut a, &mut ha).0.status, tmf::LUN_DOES_NOT_EXIST);
}

#[test]
fn abort_task_with_io_in_flight_answers_once_the_io_is_back() {
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    rig.auto_io = false;
    let sn = rig.cmd_sn;
    assert!(
        rig.command(7, flags::R | flags::F, 4096, &read10(0, 8), &[])
            .is_empty()
    );
    let (slot, io) = rig.conn.next_io().expect("the read");
    assert!(matches!(io.op, BlockOp::Read { .. }));
    assert!(
        rig.tmf(8, tmf::ABORT_TASK, 7, sn).is_empty(),
        "waits for the I/O"
    );
    rig.conn.io_done(slot, IoOutcome::Ok);
    let out = rig.output();
    assert_eq!(ops(&out), [Opcode::TaskMgmtResponse], "and no Data-In");
    assert_eq!((out[0].itt(), out[0].code()), (8, tmf::FUNCTION_COMPLETE));

    // An I/O queued but not yet taken is withdrawn: the answer comes at once.
    let sn = rig.cmd_sn;
    assert!(
        rig.command(9, flags::R | flags::F, 4096, &read10(0, 8), &[])
            .is_empty()
    );
    let out = rig.tmf(10, tmf::ABORT_TASK, 9, sn);
    assert_eq!(ops(&out), [Opcode::TaskMgmtResponse]);
    assert_eq!(out[0].code(), tmf::FUNCTION_COMPLETE);
    assert!(rig.conn.next_io().is_none());
    rig.auto_io = true;
    let out = rig.command(11, flags::F, 0, &TUR, &[]);
    assert_eq!(out[0].code(), status::GOOD);
    assert_eq!(
        out[0].max_cmd_sn(),
        out[0].exp_cmd_sn() + QUEUE_DEPTH as u32 - 1,
        "every slot is free again"
    );
}

// ---- Full feature phase: persistent reservations across sessions ----------------------------

/// Two sessions on [`TARGET`] sharing one disk: A with the default limits, B soliciting
/// all its write data by R2T (no immediate or unsolicited data).
fn two_sessions() -> (Rig, Rig) {
    let reg = registry();
    let disk = new_disk();
    let mut a = Rig::with(&reg, params(TargetLimits::default()), Arc::clone(&disk));
    login(&mut a, opts());
    let limits = TargetLimits {
        initial_r2t: true,
        immediate_data: false,
        ..TargetLimits::default()
    };
    let mut b = Rig::with(&reg, params(limits), disk);
    let mut o = opts();
    o.isid[5] = 9;
    login(&mut b, o);
    (a, b)
}

/// PERSISTENT RESERVE OUT with its 24-byte parameter list solicited by R2T; what the
/// target answered the data with.
fn prout_pdus(rig: &mut Rig, itt: u32, sa: u8, kind: u8, key: u64, sark: u64) -> Vec<Pdu> {
    let cdb = [0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sark.to_be_bytes());
    p.resize(24, 0);
    let out = rig.command(itt, flags::W | flags::F, 24, &cdb, &[]);
    assert_eq!(ops(&out), [Opcode::R2t], "{out:?}");
    rig.data_out(itt, out[0].ttt(), (0, 0), true, &p)
}

/// [`prout_pdus`] answered at once: the status.
fn prout(rig: &mut Rig, itt: u32, sa: u8, kind: u8, key: u64, sark: u64) -> u8 {
    let out = prout_pdus(rig, itt, sa, kind, key, sark);
    assert_eq!(ops(&out), [Opcode::ScsiResponse], "{out:?}");
    out[0].code()
}

#[test]
fn a_reservation_taken_while_a_write_waits_for_its_r2t_data_conflicts() {
    let (mut a, mut b) = two_sessions();
    let out = b.command(7, flags::W | flags::F, 1024, &write10(50, 2), &[]);
    assert_eq!(ops(&out), [Opcode::R2t]);
    let ttt = out[0].ttt();
    assert_eq!(prout(&mut a, 1, 0, 0, 0, 0xa), status::GOOD);
    assert_eq!(prout(&mut a, 2, 1, 1, 0xa, 0), status::GOOD);
    let out = b.data_out(7, ttt, (0, 0), true, &pattern(1024, 1));
    assert_eq!(ops(&out), [Opcode::ScsiResponse]);
    assert_eq!(
        (out[0].itt(), out[0].code()),
        (7, status::RESERVATION_CONFLICT)
    );
    assert_eq!(b.disk_at(50, 1024), [0; 1024], "nothing reached the disk");
}

/// PREEMPT AND ABORT (SPC-4 5.12.11.2.5) aborts the tasks of the preempted session: a
/// write still waiting for its data never reaches the disk, the one whose block write is
/// in flight ends without status (TAS 0), and the PERSISTENT RESERVE OUT completes only
/// once that write is back.
#[test]
fn preempt_and_abort_aborts_the_preempted_sessions_tasks() {
    let (mut a, mut b) = two_sessions();
    assert_eq!(prout(&mut a, 1, 0, 0, 0, 0xa), status::GOOD);
    assert_eq!(prout(&mut b, 1, 0, 0, 0, 0xb), status::GOOD);
    assert_eq!(prout(&mut b, 2, 1, 1, 0xb, 0), status::GOOD);
    // B, the holder: a write waiting for its data, and one whose block write is in flight.
    let out = b.command(10, flags::W | flags::F, 1024, &write10(50, 2), &[]);
    let waiting_ttt = out[0].ttt();
    let out = b.command(11, flags::W | flags::F, 1024, &write10(60, 2), &[]);
    b.auto_io = false;
    assert!(
        b.data_out(11, out[0].ttt(), (0, 0), true, &pattern(1024, 2))
            .is_empty()
    );
    let (slot, io) = b.conn.next_io().expect("B's write");
    assert!(matches!(io.op, BlockOp::Write { .. }));

    // A preempts B's registration and reservation, and aborts B's tasks.
    let out = prout_pdus(&mut a, 2, 5, 1, 0xa, 0xb);
    assert!(out.is_empty(), "answered before B's write is back: {out:?}");
    a.now += 100;
    assert!(a.conn.tick(a.now));
    assert!(a.output().is_empty(), "still waiting for B's write");
    // B's write comes back: no status for it; then A's command completes.
    let outcome = execute(&b.disk, &io.op, b.conn.buffer_mut(slot));
    b.conn.io_done(slot, outcome);
    assert!(
        b.output().is_empty(),
        "no status for an aborted task (TAS 0)"
    );
    a.now += 100;
    assert!(a.conn.tick(a.now));
    let out = a.output();
    assert_eq!(ops(&out), [Opcode::ScsiResponse]);
    assert_eq!((out[0].itt(), out[0].code()), (2, status::GOOD));

    // The waiting write's data arrives: nothing reaches the disk, nothing is answered.
    b.auto_io = true;
    assert!(
        b.data_out(10, waiting_ttt, (0, 0), true, &pattern(1024, 1))
            .is_empty()
    );
    assert_eq!(b.disk_at(50, 1024), [0; 1024]);
    // B learns of the preemption; its slots are free again.
    let out = b.command(12, flags::F, 0, &TUR, &[]);
    assert_eq!(out[0].code(), status::CHECK_CONDITION);
    assert_eq!(out[0].sense(), (key::UNIT_ATTENTION, 0x2a, 0x05));
    let out = b.command(13, flags::F, 0, &TUR, &[]);
    assert_eq!(out[0].code(), status::GOOD);
    assert_eq!(
        out[0].max_cmd_sn(),
        out[0].exp_cmd_sn() + QUEUE_DEPTH as u32 - 1
    );
    // A's own tasks were not touched: it writes under its new reservation.
    let out = a.command(
        3,
        flags::W | flags::F,
        512,
        &write10(70, 1),
        &pattern(512, 3),
    );
    assert_eq!(out[0].code(), status::GOOD);
}

// ---- Full feature phase: logout, errors, reinstatement --------------------------------------

#[test]
fn logout_responds_then_closes() {
    let reg = registry();
    let mut rig = Rig::new(&reg);
    let (mut host, _) = login(&mut rig, opts());
    host.logout();
    let pdus = rig.pump_ok(&mut host);
    assert_eq!(ops(&pdus), [Opcode::LogoutResponse]);
    assert_eq!((pdus[0].code(), pdus[0].itt()), (0, 0x7fff_fff0));
    assert!(host.logged_out());
    assert!(rig.conn.closing());
    assert!(rig.conn.take_events().contains(&ConnEvent::LoggedOut));
    rig.conn.teardown();
    assert_eq!(reg.lock().unwrap().session_count(), 0);
}

#[test]
fn snack_is_rejected_at_error_recovery_level_0() {
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    let out = rig.send_pdu(bhs(Opcode::Snack, false, flags::F, TAG), &[]);
    assert_eq!(ops(&out), [Opcode::Reject]);
    assert_eq!(out[0].code(), reject::COMMAND_NOT_SUPPORTED);
    assert_eq!(Bhs::new_unchecked(&out[0].data[..]).opcode(), Opcode::Snack);
    assert!(!rig.conn.closing());
}

#[test]
fn login_or_target_pdus_in_full_feature_phase_end_the_connection() {
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    let out = rig.send(&op_login(&identity()));
    assert_eq!(ops(&out), [Opcode::Reject]);
    assert_eq!(out[0].code(), reject::PROTOCOL_ERROR);
    assert!(rig.conn.closing());
    assert!(rig.send_pdu(tur(1, 1, false), &[]).is_empty());

    let mut rig = session(&reg, TargetLimits::default());
    let out = rig.send_pdu(bhs(Opcode::NopIn, false, flags::F, 1), &[]);
    assert_eq!(ops(&out), [Opcode::Reject]);
    assert!(rig.conn.closing());
}

#[test]
fn a_new_login_with_the_same_isid_reinstates_the_session() {
    let reg = registry();
    let mut a = Rig::new(&reg);
    login(&mut a, opts());
    a.conn.take_events();
    assert!(a.conn.tick(2_000));
    let mut b = Rig::new(&reg);
    login(&mut b, opts());
    assert!(matches!(
        b.conn.take_events().as_slice(),
        [ConnEvent::LoggedIn {
            reinstated: true,
            ..
        }]
    ));
    assert!(!a.conn.tick(2_001), "the old connection ends");
    assert_eq!(a.conn.take_events(), [ConnEvent::Reinstated]);
    // Another ISID is another session.
    let mut c = Rig::new(&reg);
    let mut o = opts();
    o.isid[5] = 7;
    login(&mut c, o);
    assert!(b.conn.tick(2_002));
    a.conn.teardown();
    assert_eq!(reg.lock().unwrap().session_count(), 2, "b and c live on");
}

#[test]
fn reinstatement_needs_the_chap_identity_that_logged_in() {
    // Discovery sessions, whose CHAP setting can change while sessions live (as a
    // reloaded configuration would change it).
    let reg = registry();
    let carol = ChapConfig {
        initiator: ChapSecret {
            name: "carol".into(),
            secret: b"carol-secret-123".to_vec(),
        },
        target: None,
    };
    let discovery = |isid: u8, chap: Option<(&str, &[u8])>| {
        let mut o = LoginOptions::new(INITIATOR, None);
        o.isid[5] = isid;
        o.chap = chap.map(|(n, s)| (n.to_string(), s.to_vec()));
        o
    };
    let refused_login = |o: LoginOptions| {
        let mut rig = Rig::new(&reg);
        let mut host = IscsiHost::new(o);
        let (_, r) = rig.pump(&mut host);
        assert_eq!(
            r,
            Err(HostError::LoginRefused(
                login_status::AUTHENTICATION_FAILURE
            ))
        );
        assert!(rig.conn.closing());
        assert!(matches!(
            rig.conn.take_events().last(),
            Some(ConnEvent::LoginFailed { why, .. }) if why.contains("reinstatement refused")
        ));
    };
    let alice = ("alice", &b"initiator-secret"[..]);
    // A session without CHAP; then CHAP is required, and alice logs in with its ISID.
    let mut a = Rig::new(&reg);
    login(&mut a, discovery(1, None));
    reg.lock().unwrap().discovery_chap = Some(chap_config(false));
    refused_login(discovery(1, Some(alice)));
    assert!(a.conn.tick(2_000), "the session without CHAP lives");
    // alice's session; then carol is the discovery CHAP name, and logs in with its ISID.
    let mut c = Rig::new(&reg);
    login(&mut c, discovery(2, Some(alice)));
    reg.lock().unwrap().discovery_chap = Some(carol);
    refused_login(discovery(2, Some(("carol", b"carol-secret-123"))));
    assert!(c.conn.tick(2_000), "alice's session lives");
    assert_eq!(reg.lock().unwrap().session_count(), 2);
    // The same identities reinstate their sessions.
    reg.lock().unwrap().discovery_chap = Some(chap_config(false));
    let mut e = Rig::new(&reg);
    login(&mut e, discovery(2, Some(alice)));
    assert!(!c.conn.tick(2_001), "alice's old session ends");
    reg.lock().unwrap().discovery_chap = None;
    let mut f = Rig::new(&reg);
    login(&mut f, discovery(1, None));
    assert!(!a.conn.tick(2_001));
    assert!(e.conn.tick(2_002) && f.conn.tick(2_002));
    assert_eq!(reg.lock().unwrap().session_count(), 2);
}

// ---- Resource bounds ----------------------------------------------------------------------

#[test]
fn an_initiator_that_stops_reading_stops_being_read() {
    use crate::OUTPUT_HIGH_WATER;
    let reg = registry();
    let mut rig = session(&reg, TargetLimits::default());
    // 400 immediate READs of 64 KiB (immediate commands bypass the CmdSN window): 25 MiB
    // of Data-In, and the initiator reads none of it.
    let mut burst = Vec::new();
    for itt in 0..400u32 {
        let mut b = bhs(
            Opcode::ScsiCommand,
            true,
            flags::F | flags::R | 1,
            itt + 100,
        );
        set_u32(&mut b, field::EDTL, 65536);
        set_u32(&mut b, field::CMD_SN, rig.cmd_sn);
        b[field::CDB..field::CDB + 10].copy_from_slice(&read10(0, 128));
        burst.extend(frame(b, &[], rig.digests));
    }
    // The bound: the mark plus the answers of the tasks in flight when it was reached.
    let bound = OUTPUT_HIGH_WATER + (QUEUE_DEPTH + 8) * (65536 + 1024);
    let mut taken = 0;
    for _ in 0..(burst.len() / 1000 + 10) {
        let end = (taken + 1000).min(burst.len());
        taken += rig.conn.receive(&burst[taken..end], rig.now);
        rig.run_io();
        assert!(
            rig.conn.output_len() <= bound,
            "output grew to {} bytes",
            rig.conn.output_len()
        );
    }
    assert!(
        taken < 40 * 48,
        "took {taken} bytes while the answers were not read"
    );
    assert!(!rig.conn.closing());
    // Once it reads, every READ is answered.
    let mut responses = 0;
    while taken < burst.len() || rig.conn.output_len() > 0 {
        let out = rig.conn.take_output();
        responses += parse_pdus(&out, rig.digests)
            .iter()
            .filter(|p| {
                p.op() == Opcode::ScsiResponse || (p.op() == Opcode::DataIn && p.bhs[1] & 1 != 0)
            })
            .count();
        let end = (taken + 1000).min(burst.len());
        taken += rig.conn.receive(&burst[taken..end], rig.now);
        rig.run_io();
    }
    assert_eq!(responses, 400);
}

#[test]
fn initiator_allow_lists_change() {
    let r = registry_with(vec![node("iqn.t", None, None)]);
    let mut g = r.lock().unwrap();
    assert!(g.target("iqn.t").unwrap().allows("iqn.i1"));
    assert!(g.set_allowed_initiators("iqn.t", Some(vec!["iqn.i2".into()])));
    assert!(!g.set_allowed_initiators("iqn.none", None));
    let t = g.target("iqn.t").unwrap();
    assert!(!t.allows("iqn.i1") && t.allows("iqn.i2"));
    assert_eq!(t.alias.as_deref(), Some("disk0"), "the rest stays");
}
