//! The initiator end of an iSCSI connection, sans-I/O: what the engine tests,
//! the end-to-end tests and `xdp-target perf` use to drive a target (ours or another).
//!
//! [`IscsiHost::new`] queues the login (CHAP when credentials are given, then the
//! operational stage); [`IscsiHost::command`] queues a SCSI command with immediate and
//! unsolicited data as negotiated; [`IscsiHost::receive`] answers R2Ts with Data-Out,
//! collects Data-In, answers NOP-In pings and yields [`ScsiCompletion`]s.

use std::collections::{HashMap, VecDeque};

use target_wire::iscsi::{
    self, BHS_LEN, Bhs, LoginRequestRepr, LoginResponseRepr, Opcode, field, flags, login_status,
    parse_number, sn_le, stage, text_pairs,
};

use super::chap;
use super::params::answer;

/// The longest data segment this initiator accepts (declared as its
/// MaxRecvDataSegmentLength).
pub const HOST_MRDSL: u32 = 256 * 1024;
const RESERVED_TAG: u32 = 0xffff_ffff;

/// How to log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginOptions {
    pub initiator: String,
    /// `None`: a discovery session.
    pub target: Option<String>,
    pub isid: [u8; 6],
    pub header_digest: bool,
    pub data_digest: bool,
    /// CHAP name and secret to answer the target's challenge with.
    pub chap: Option<(String, Vec<u8>)>,
    /// Mutual CHAP: the target's expected name and secret, and our challenge.
    pub mutual: Option<(String, Vec<u8>)>,
}

impl LoginOptions {
    pub fn new(initiator: &str, target: Option<&str>) -> Self {
        Self {
            initiator: initiator.to_string(),
            target: target.map(str::to_string),
            isid: [0x80, 0x12, 0x34, 0x56, 0x00, 0x01],
            header_digest: false,
            data_digest: false,
            chap: None,
            mutual: None,
        }
    }
}

/// A finished SCSI command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCompletion {
    pub itt: u32,
    pub status: u8,
    pub sense: Vec<u8>,
    /// Data-In received (as long as the read length asked for).
    pub data: Vec<u8>,
    /// Bytes of Data-In received.
    pub received: usize,
    /// Residual flags (O/U) and count.
    pub residual_flags: u8,
    pub residual: u32,
}

/// Why the connection is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The login was refused: status class and detail.
    LoginRefused(u16),
    /// The target sent something this initiator cannot accept.
    Protocol(String),
    /// The target rejected a PDU (reason code).
    Rejected(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the answer to AuthMethod.
    Security,
    /// Sent CHAP_A; waiting for the challenge.
    ChapChallenge,
    /// Sent the CHAP response; waiting for the target's verdict (and mutual answer).
    ChapVerdict,
    /// Sent the operational keys.
    Operational,
    FullFeature,
    LoggedOut,
}

#[derive(Debug)]
struct Pending {
    write: Vec<u8>,
    read: Vec<u8>,
    received: usize,
    lun: [u8; 8],
}

pub struct IscsiHost {
    opts: LoginOptions,
    state: State,
    /// Values the target answered.
    header_digest: bool,
    data_digest: bool,
    target_mrdsl: usize,
    first_burst: usize,
    max_burst: usize,
    initial_r2t: bool,
    immediate_data: bool,
    tsih: u16,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    mutual_challenge: [u8; 16],
    pending: HashMap<u32, Pending>,
    rx: Vec<u8>,
    out: Vec<u8>,
    completions: VecDeque<ScsiCompletion>,
    text: Vec<(String, String)>,
    /// Text of a continued (C bit) response, joined.
    text_buf: Vec<u8>,
    text_done: bool,
    nop_replies: usize,
}

impl IscsiHost {
    /// A new connection; the first login request is queued at once.
    pub fn new(opts: LoginOptions) -> Self {
        let mut h = Self {
            opts,
            state: State::Security,
            header_digest: false,
            data_digest: false,
            target_mrdsl: 8192,
            first_burst: 65536,
            max_burst: 262_144,
            initial_r2t: true,
            immediate_data: true,
            tsih: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            next_itt: 1,
            mutual_challenge: [0x5a; 16],
            pending: HashMap::new(),
            rx: Vec::new(),
            out: Vec::new(),
            completions: VecDeque::new(),
            text: Vec::new(),
            text_buf: Vec::new(),
            text_done: false,
            nop_replies: 0,
        };
        let mut keys = Vec::new();
        answer(&mut keys, "InitiatorName", &h.opts.initiator.clone());
        match h.opts.target.clone() {
            Some(t) => {
                answer(&mut keys, "SessionType", "Normal");
                answer(&mut keys, "TargetName", &t);
            }
            None => answer(&mut keys, "SessionType", "Discovery"),
        }
        if h.opts.chap.is_some() {
            answer(&mut keys, "AuthMethod", "CHAP,None");
            h.login(stage::SECURITY, stage::OPERATIONAL, false, &keys);
        } else {
            h.operational_keys(&mut keys);
            h.state = State::Operational;
            h.login(stage::OPERATIONAL, stage::FULL_FEATURE, true, &keys);
        }
        h
    }

    fn operational_keys(&self, keys: &mut Vec<u8>) {
        let d = |on: bool| if on { "CRC32C,None" } else { "None" };
        answer(keys, "HeaderDigest", d(self.opts.header_digest));
        answer(keys, "DataDigest", d(self.opts.data_digest));
        answer(keys, "MaxRecvDataSegmentLength", &HOST_MRDSL.to_string());
        answer(keys, "ErrorRecoveryLevel", "0");
        if self.opts.target.is_some() {
            answer(keys, "InitialR2T", "No");
            answer(keys, "ImmediateData", "Yes");
            answer(keys, "MaxBurstLength", "1048576");
            answer(keys, "FirstBurstLength", "262144");
            answer(keys, "MaxOutstandingR2T", "8");
            answer(keys, "MaxConnections", "1");
            answer(keys, "DataPDUInOrder", "Yes");
            answer(keys, "DataSequenceInOrder", "Yes");
        }
    }

    fn login(&mut self, csg: u8, nsg: u8, transit: bool, keys: &[u8]) {
        let mut b = [0u8; BHS_LEN];
        b[field::ISID..field::ISID + 6].copy_from_slice(&self.opts.isid);
        let mut h = Bhs::new_unchecked(&mut b[..]);
        h.set_byte(0, u8::from(Opcode::LoginRequest));
        h.set_immediate(true);
        let mut f = (csg << 2) | nsg;
        if transit {
            f |= flags::T;
        }
        h.set_flags(f);
        h.set_u16(field::TSIH, self.tsih);
        h.set_itt(0);
        h.set_u32(field::CMD_SN, self.cmd_sn);
        h.set_u32(field::EXP_STAT_SN, self.exp_stat_sn);
        self.push(&b, keys, false);
    }

    /// Appends a PDU; digests only once the login negotiated them.
    fn push(&mut self, bhs: &[u8; BHS_LEN], data: &[u8], digests: bool) {
        let (hd, dd) = (digests && self.header_digest, digests && self.data_digest);
        super::append_pdu(&mut self.out, bhs, data, hd, dd);
    }

    pub fn logged_in(&self) -> bool {
        self.state == State::FullFeature
    }

    pub fn logged_out(&self) -> bool {
        self.state == State::LoggedOut
    }

    /// Negotiated (header, data) digests.
    pub fn digests(&self) -> (bool, bool) {
        (self.header_digest, self.data_digest)
    }

    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// The CmdSN window has room for another command.
    pub fn can_submit(&self) -> bool {
        self.logged_in() && sn_le(self.cmd_sn, self.max_cmd_sn)
    }

    pub fn completion(&mut self) -> Option<ScsiCompletion> {
        self.completions.pop_front()
    }

    /// NOP-In pings answered so far.
    pub fn nop_replies(&self) -> usize {
        self.nop_replies
    }

    /// Queues a SCSI command: `write` is its data-out, `read_len` the data-in it expects.
    /// Returns the Initiator Task Tag.
    pub fn command(&mut self, lun: [u8; 8], cdb: &[u8], write: Vec<u8>, read_len: usize) -> u32 {
        self.command_with(lun, cdb, write, read_len, None)
    }

    /// Like [`Self::command`], with an Expected Data Transfer Length that differs from the
    /// data (residual tests).
    pub fn command_with(
        &mut self,
        lun: [u8; 8],
        cdb: &[u8],
        write: Vec<u8>,
        read_len: usize,
        edtl: Option<usize>,
    ) -> u32 {
        let itt = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1).max(1);
        if self.next_itt == RESERVED_TAG {
            self.next_itt = 1;
        }
        let edtl = edtl.unwrap_or(write.len().max(read_len));
        let send_len = write.len().min(edtl);
        let immediate = if self.immediate_data {
            send_len.min(self.first_burst).min(self.target_mrdsl)
        } else {
            0
        };
        let unsolicited_end = if self.initial_r2t {
            immediate
        } else {
            send_len.min(self.first_burst)
        };
        let mut b = [0u8; BHS_LEN];
        let mut h = Bhs::new_unchecked(&mut b[..]);
        h.init(Opcode::ScsiCommand);
        let mut f = iscsi::attr::SIMPLE;
        if unsolicited_end <= immediate {
            f |= flags::F;
        }
        if !write.is_empty() {
            f |= flags::W;
        }
        if read_len > 0 {
            f |= flags::R;
        }
        h.set_flags(f);
        h.set_lun(lun);
        h.set_itt(itt);
        h.set_u32(field::EDTL, edtl as u32);
        h.set_u32(field::CMD_SN, self.cmd_sn);
        h.set_u32(field::EXP_STAT_SN, self.exp_stat_sn);
        let n = cdb.len().min(16);
        b[field::CDB..field::CDB + n].copy_from_slice(&cdb[..n]);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let imm = write[..immediate].to_vec();
        self.push(&b, &imm, true);
        // Unsolicited Data-Out up to FirstBurstLength.
        if unsolicited_end > immediate {
            self.data_out(itt, RESERVED_TAG, lun, &write, immediate, unsolicited_end);
        }
        self.pending.insert(
            itt,
            Pending {
                write,
                read: vec![0; read_len],
                received: 0,
                lun,
            },
        );
        itt
    }

    /// Data-Out PDUs for `[from, to)` of `data`, split at the target's
    /// MaxRecvDataSegmentLength, DataSN from 0.
    fn data_out(&mut self, itt: u32, ttt: u32, lun: [u8; 8], data: &[u8], from: usize, to: usize) {
        let mut off = from;
        let mut sn = 0u32;
        while off < to {
            let n = (to - off).min(self.target_mrdsl);
            let mut b = [0u8; BHS_LEN];
            let mut h = Bhs::new_unchecked(&mut b[..]);
            h.init(Opcode::DataOut);
            h.set_flags(if off + n == to { flags::F } else { 0 });
            h.set_lun(lun);
            h.set_itt(itt);
            h.set_u32(field::TTT, ttt);
            h.set_u32(field::EXP_STAT_SN, self.exp_stat_sn);
            h.set_u32(field::DATA_SN, sn);
            h.set_u32(field::BUFFER_OFFSET, off as u32);
            let chunk = data[off..off + n].to_vec();
            self.push(&b, &chunk, true);
            sn += 1;
            off += n;
        }
    }

    /// Queues a Text request with `SendTargets=<value>`; the answer is in
    /// [`Self::text_result`].
    pub fn send_targets(&mut self, value: &str) {
        let mut keys = Vec::new();
        answer(&mut keys, "SendTargets", value);
        self.text.clear();
        self.text_buf.clear();
        self.text_done = false;
        let itt = self.next_itt;
        self.next_itt += 1;
        self.text_request(itt, RESERVED_TAG, &keys);
    }

    fn text_request(&mut self, itt: u32, ttt: u32, data: &[u8]) {
        let mut b = [0u8; BHS_LEN];
        let mut h = Bhs::new_unchecked(&mut b[..]);
        h.init(Opcode::TextRequest);
        h.set_immediate(true);
        h.set_flags(flags::F);
        h.set_itt(itt);
        h.set_u32(field::TTT, ttt);
        h.set_u32(field::CMD_SN, self.cmd_sn);
        h.set_u32(field::EXP_STAT_SN, self.exp_stat_sn);
        self.push(&b, data, true);
    }

    /// The key=value pairs of the last complete text response.
    pub fn text_result(&self) -> Option<&[(String, String)]> {
        self.text_done.then_some(&self.text[..])
    }

    /// Queues a Logout (close the session).
    pub fn logout(&mut self) {
        let mut b = [0u8; BHS_LEN];
        let mut h = Bhs::new_unchecked(&mut b[..]);
        h.init(Opcode::LogoutRequest);
        h.set_immediate(true);
        h.set_flags(flags::F);
        h.set_itt(0x7fff_fff0);
        h.set_u32(field::CMD_SN, self.cmd_sn);
        h.set_u32(field::EXP_STAT_SN, self.exp_stat_sn);
        self.push(&b, &[], true);
    }

    /// Queues a task management request; the response shows as a completion with
    /// `status` = the TMF response code.
    pub fn task_management(&mut self, function: u8, lun: [u8; 8], ref_itt: u32) -> u32 {
        let itt = self.next_itt;
        self.next_itt += 1;
        let mut b = [0u8; BHS_LEN];
        let mut h = Bhs::new_unchecked(&mut b[..]);
        h.init(Opcode::TaskMgmtRequest);
        h.set_immediate(true);
        h.set_flags(flags::F | function);
        h.set_lun(lun);
        h.set_itt(itt);
        h.set_u32(field::REF_TASK_TAG, ref_itt);
        h.set_u32(field::CMD_SN, self.cmd_sn);
        h.set_u32(field::EXP_STAT_SN, self.exp_stat_sn);
        h.set_u32(field::REF_CMD_SN, self.cmd_sn);
        self.push(&b, &[], true);
        itt
    }

    /// Takes the target's bytes.
    pub fn receive(&mut self, input: &[u8]) -> Result<(), HostError> {
        self.rx.extend_from_slice(input);
        let mut start = 0;
        let result = loop {
            let avail = &self.rx[start..];
            if avail.len() < BHS_LEN {
                break Ok(());
            }
            let ffp = self.state == State::FullFeature || self.state == State::LoggedOut;
            let l = Bhs::new_unchecked(&avail[..BHS_LEN])
                .layout(ffp && self.header_digest, ffp && self.data_digest);
            if l.data > HOST_MRDSL as usize {
                break Err(HostError::Protocol(format!(
                    "data segment of {} bytes",
                    l.data
                )));
            }
            if avail.len() < l.total {
                break Ok(());
            }
            let pdu = avail[..l.total].to_vec();
            start += l.total;
            if !l.header_digest_ok(&pdu) || !l.data_digest_ok(&pdu) {
                break Err(HostError::Protocol("digest error".into()));
            }
            let data = &pdu[l.header..l.header + l.data];
            if let Err(e) = self.pdu(&pdu[..BHS_LEN], data) {
                break Err(e);
            }
        };
        self.rx.drain(..start);
        result
    }

    fn track(&mut self, h: &Bhs<&[u8]>, status: bool) {
        if status {
            self.exp_stat_sn = h.u32_at(field::STAT_SN).wrapping_add(1);
        }
        let max = h.u32_at(field::MAX_CMD_SN);
        if sn_le(self.max_cmd_sn, max) {
            self.max_cmd_sn = max;
        }
    }

    fn pdu(&mut self, bhs: &[u8], data: &[u8]) -> Result<(), HostError> {
        let h = Bhs::new_unchecked(bhs);
        match h.opcode() {
            Opcode::LoginResponse => self.login_response(&h, data),
            Opcode::ScsiResponse => {
                self.track(&h, true);
                let itt = h.itt();
                let p = self.pending.remove(&itt).ok_or_else(|| {
                    HostError::Protocol(format!("response for unknown ITT {itt}"))
                })?;
                let sense = if data.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
                    data[2..(2 + n).min(data.len())].to_vec()
                } else {
                    Vec::new()
                };
                self.completions.push_back(ScsiCompletion {
                    itt,
                    status: bhs[3],
                    sense,
                    data: p.read,
                    received: p.received,
                    residual_flags: h.flags() & (flags::O | flags::U),
                    residual: h.u32_at(field::RESIDUAL),
                });
                Ok(())
            }
            Opcode::DataIn => {
                let status = h.flags() & flags::S != 0;
                self.track(&h, status);
                let itt = h.itt();
                let off = h.u32_at(field::BUFFER_OFFSET) as usize;
                let p = self
                    .pending
                    .get_mut(&itt)
                    .ok_or_else(|| HostError::Protocol(format!("Data-In for unknown ITT {itt}")))?;
                let end = off + data.len();
                if end > p.read.len() {
                    return Err(HostError::Protocol("Data-In beyond the read buffer".into()));
                }
                p.read[off..end].copy_from_slice(data);
                p.received += data.len();
                if status {
                    let p = self.pending.remove(&itt).expect("present");
                    self.completions.push_back(ScsiCompletion {
                        itt,
                        status: bhs[3],
                        sense: Vec::new(),
                        data: p.read,
                        received: p.received,
                        residual_flags: h.flags() & (flags::O | flags::U),
                        residual: h.u32_at(field::RESIDUAL),
                    });
                }
                Ok(())
            }
            Opcode::R2t => {
                self.track(&h, false);
                let itt = h.itt();
                let ttt = h.u32_at(field::TTT);
                let off = h.u32_at(field::BUFFER_OFFSET) as usize;
                let len = h.u32_at(field::DESIRED_LEN) as usize;
                let p = self
                    .pending
                    .get(&itt)
                    .ok_or_else(|| HostError::Protocol(format!("R2T for unknown ITT {itt}")))?;
                if off + len > p.write.len() || len > self.max_burst {
                    return Err(HostError::Protocol("R2T beyond the data".into()));
                }
                let (write, lun) = (p.write.clone(), p.lun);
                self.data_out(itt, ttt, lun, &write, off, off + len);
                Ok(())
            }
            Opcode::NopIn => {
                let itt = h.itt();
                self.track(&h, itt != RESERVED_TAG);
                let ttt = h.u32_at(field::TTT);
                if ttt != RESERVED_TAG {
                    // A ping: answer with the same TTT (section 11.18).
                    let mut b = [0u8; BHS_LEN];
                    let mut o = Bhs::new_unchecked(&mut b[..]);
                    o.init(Opcode::NopOut);
                    o.set_immediate(true);
                    o.set_flags(flags::F);
                    o.set_lun(h.lun());
                    o.set_itt(RESERVED_TAG);
                    o.set_u32(field::TTT, ttt);
                    o.set_u32(field::CMD_SN, self.cmd_sn);
                    o.set_u32(field::EXP_STAT_SN, self.exp_stat_sn);
                    self.push(&b, &[], true);
                    self.nop_replies += 1;
                }
                Ok(())
            }
            Opcode::TextResponse => {
                self.track(&h, true);
                // A continued response splits its text anywhere, even inside a pair
                // (section 6.1): join the pieces before parsing.
                self.text_buf.extend_from_slice(data);
                if h.flags() & flags::C != 0 {
                    let (itt, ttt) = (h.itt(), h.u32_at(field::TTT));
                    self.text_request(itt, ttt, &[]);
                } else {
                    let text = std::mem::take(&mut self.text_buf);
                    for (k, v) in text_pairs(&text).flatten() {
                        self.text.push((k.to_string(), v.to_string()));
                    }
                    self.text_done = true;
                }
                Ok(())
            }
            Opcode::LogoutResponse => {
                self.track(&h, true);
                self.state = State::LoggedOut;
                Ok(())
            }
            Opcode::TaskMgmtResponse => {
                self.track(&h, true);
                self.completions.push_back(ScsiCompletion {
                    itt: h.itt(),
                    status: bhs[2],
                    sense: Vec::new(),
                    data: Vec::new(),
                    received: 0,
                    residual_flags: 0,
                    residual: 0,
                });
                Ok(())
            }
            Opcode::Reject => Err(HostError::Rejected(bhs[2])),
            Opcode::AsyncMessage => {
                self.track(&h, true);
                Ok(())
            }
            other => Err(HostError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    fn login_response(&mut self, h: &Bhs<&[u8]>, data: &[u8]) -> Result<(), HostError> {
        let r = LoginResponseRepr::parse(h).map_err(|_| HostError::Protocol("login".into()))?;
        if r.status != login_status::SUCCESS {
            return Err(HostError::LoginRefused(r.status));
        }
        self.exp_stat_sn = r.stat_sn.wrapping_add(1);
        self.max_cmd_sn = r.max_cmd_sn;
        let pairs: Vec<(String, String)> = text_pairs(data)
            .flatten()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        for (k, v) in &pairs {
            let n = || parse_number(v).map(|n| n as usize);
            match k.as_str() {
                "HeaderDigest" => self.header_digest = v == "CRC32C",
                "DataDigest" => self.data_digest = v == "CRC32C",
                "MaxRecvDataSegmentLength" => self.target_mrdsl = n().unwrap_or(8192),
                "FirstBurstLength" => self.first_burst = n().unwrap_or(65536),
                "MaxBurstLength" => self.max_burst = n().unwrap_or(262_144),
                "InitialR2T" => self.initial_r2t = v == "Yes",
                "ImmediateData" => self.immediate_data = v == "Yes",
                _ => {}
            }
        }
        match self.state {
            State::Security => {
                if get("AuthMethod") == Some("CHAP") {
                    let mut keys = Vec::new();
                    answer(&mut keys, "CHAP_A", "5");
                    self.state = State::ChapChallenge;
                    self.login(stage::SECURITY, stage::OPERATIONAL, false, &keys);
                } else {
                    self.start_operational(r.transit);
                }
            }
            State::ChapChallenge => {
                let id = get("CHAP_I").and_then(parse_number).unwrap_or(0) as u8;
                let mut c = vec![0u8; 1024];
                let n = get("CHAP_C")
                    .and_then(|v| iscsi::decode_binary(v, &mut c))
                    .ok_or_else(|| HostError::Protocol("no CHAP_C".into()))?;
                let (name, secret) = self.opts.chap.clone().unwrap_or_default();
                let resp = chap::response(id, &secret, &c[..n]);
                let mut keys = Vec::new();
                answer(&mut keys, "CHAP_N", &name);
                answer(&mut keys, "CHAP_R", &hex(&resp));
                if self.opts.mutual.is_some() {
                    answer(&mut keys, "CHAP_I", "77");
                    answer(&mut keys, "CHAP_C", &hex(&self.mutual_challenge));
                }
                self.state = State::ChapVerdict;
                self.login(stage::SECURITY, stage::OPERATIONAL, true, &keys);
            }
            State::ChapVerdict => {
                if let Some((name, secret)) = self.opts.mutual.clone() {
                    let expected = hex(&chap::response(77, &secret, &self.mutual_challenge));
                    if get("CHAP_N") != Some(name.as_str())
                        || get("CHAP_R") != Some(expected.as_str())
                    {
                        return Err(HostError::Protocol("the target failed mutual CHAP".into()));
                    }
                }
                self.start_operational(r.transit);
            }
            State::Operational => {
                if r.transit && r.nsg == stage::FULL_FEATURE {
                    self.tsih = r.tsih;
                    self.state = State::FullFeature;
                } else {
                    // The target wants another round: offer nothing new, ask to go on.
                    self.login(stage::OPERATIONAL, stage::FULL_FEATURE, true, &[]);
                }
            }
            State::FullFeature | State::LoggedOut => {
                return Err(HostError::Protocol("login response after login".into()));
            }
        }
        Ok(())
    }

    fn start_operational(&mut self, transited: bool) {
        if !transited {
            self.login(stage::SECURITY, stage::OPERATIONAL, true, &[]);
            return;
        }
        let mut keys = Vec::new();
        self.operational_keys(&mut keys);
        self.state = State::Operational;
        self.login(stage::OPERATIONAL, stage::FULL_FEATURE, true, &keys);
    }

    /// Parses a login request PDU this host sent (for tests).
    pub fn parse_login(bhs: &[u8]) -> Option<LoginRequestRepr> {
        LoginRequestRepr::parse(&Bhs::new_checked(bhs).ok()?).ok()
    }
}

fn hex(b: &[u8]) -> String {
    let mut out = vec![0u8; 2 + 2 * b.len()];
    let n = iscsi::encode_hex(b, &mut out).unwrap_or(0);
    String::from_utf8_lossy(&out[..n]).into_owned()
}
