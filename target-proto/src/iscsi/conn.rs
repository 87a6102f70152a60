//! One iSCSI connection: RFC 7143 at ErrorRecoveryLevel 0, one connection per session.
//!
//! Bytes in ([`IscsiConn::receive`]), bytes out as a gather list
//! ([`IscsiConn::output_chunks`]: staged PDUs, and Data-In data referred to in its task's
//! buffer, sent from there without a copy into the output), block operations out
//! ([`IscsiConn::next_io`]) and their outcomes in ([`IscsiConn::io_done`]), time in
//! ([`IscsiConn::tick`]). The engine never reads a clock or a socket.
//!
//! - Login (section 6): the security stage (AuthMethod None or CHAP), the operational stage
//!   (section 13 keys), then the full feature phase. Status classes per section 11.13.5.
//! - Ordering (section 4.2.2): a non-immediate command is accepted when its CmdSN is in
//!   [ExpCmdSN, MaxCmdSN]; a command beyond ExpCmdSN waits for the gap to close; one
//!   outside the window is silently ignored (section 4.2.2.1). MaxCmdSN grows as task slots
//!   free up, so the initiator never has more commands queued than there are slots.
//! - Data-Out (sections 4.2.5, 11.7): immediate data, unsolicited Data-Out up to
//!   FirstBurstLength when InitialR2T=No, then R2Ts of at most MaxBurstLength, at most
//!   MaxOutstandingR2T at once; DataSN is checked per sequence, and a wrong one fails
//!   its command (CHECK CONDITION, ABORTED COMMAND / DATA PHASE ERROR: ERL 0 cannot
//!   recover the sequence, but the connection stays up), while data outside what was
//!   asked for (past the expected length, FirstBurstLength or its R2T, at the wrong
//!   offset) is a protocol error: Reject, and the connection ends. A Data-Out's data goes
//!   from the input straight into its task's buffer, placed from the header's checks and
//!   its digest checked at the end; immediate data is gathered with its command PDU, whose
//!   task exists only once CmdSN order lets the command run (it may be held until then).
//! - Data-In (section 11.7): PDUs of at most the initiator's MaxRecvDataSegmentLength,
//!   sequences of at most MaxBurstLength, status in the last PDU (phase collapse) unless
//!   there is sense data; residual over/underflow against the Expected Data Transfer Length.
//! - Task management (section 11.5), NOP-In pings with a timeout (section 11.19), Text with
//!   SendTargets (appendix C), Logout (section 11.14).
//! - Another session's PREEMPT AND ABORT (SPC-4 5.12.11.2.5) ends this session's tasks
//!   without a response (TAS 0) at their next Data-Out, step or I/O completion; a PREEMPT
//!   AND ABORT issued here waits, stepped again on every tick and whenever the connection
//!   runs, until the block operations of the tasks it aborted are back.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use target_wire::crc32c::crc32c_append;
use target_wire::iscsi::{
    BHS_LEN, Bhs, DIGEST_LEN, LoginRequestRepr, LoginResponseRepr, Opcode, PduLayout, TextError,
    field, flags, login_status, padded, reject, sn_le, sn_lt, stage, text_pairs, tmf,
};

use super::chap::{CHALLENGE_LEN, Chap};
use super::params::{self, Negotiated, Negotiation, TargetLimits, answer};
use super::{PORTAL_GROUP, Registry, SessionRefused, TargetNode};
use crate::OUTPUT_HIGH_WATER;
use crate::block::{AlignedBuf, BlockIo, IoOutcome};
use crate::output::{self, GatherOutput};
use crate::scsi::{self, Asc, Nexus, ScsiTarget, Sense, Step, TaskManagement, key};

/// Commands a session may have queued (the CmdSN window).
pub const QUEUE_DEPTH: usize = 128;
/// Extra slots for immediate commands, which the window does not count.
const IMMEDIATE_SLOTS: usize = 8;
/// The longest data segment accepted during login and in text requests.
const LOGIN_MRDSL: usize = 8192;
/// Text accumulated across continued (C bit) login or text requests.
const MAX_TEXT: usize = 64 * 1024;
/// Out-of-order commands held until their CmdSN comes up (bounded by the window).
const MAX_HELD: usize = QUEUE_DEPTH;
/// Reserved Target Transfer Tag / Initiator Task Tag value.
const RESERVED_TAG: u32 = 0xffff_ffff;
/// Extended CDB AHS type (section 11.3.2).
const AHS_EXTENDED_CDB: u8 = 1;
const COMPARE_AND_WRITE: u8 = 0x89;

/// SPC-4 additional sense codes the transport itself reports.
const DATA_PHASE_ERROR: Asc = Asc(0x4b, 0x00);
const INVALID_FIELD_IN_INFORMATION_UNIT: Asc = Asc(0x0e, 0x03);

/// The largest CDB accepted (16 bytes in the BHS plus an extended CDB AHS).
const MAX_CDB: usize = 260;

/// Timers, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// Send a NOP-In ping after this long without hearing from the initiator (0: never).
    pub nop_interval_ms: u64,
    /// End the connection when a ping is not answered within this long.
    pub nop_timeout_ms: u64,
    /// End a connection that has not completed its login within this long.
    pub login_timeout_ms: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            nop_interval_ms: 5_000,
            nop_timeout_ms: 15_000,
            login_timeout_ms: 15_000,
        }
    }
}

/// Connection-wide settings from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnParams {
    pub limits: TargetLimits,
    pub timers: Timers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Login,
    FullFeature,
    /// A final response is queued; the connection ends once it is sent.
    Closing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionType {
    Normal,
    Discovery,
}

/// Login progress (section 6.3).
struct Login {
    /// The stage the initiator is in (CSG of the last request).
    csg: u8,
    started_ms: Option<u64>,
    isid: [u8; 6],
    /// The TSIH of the first request; every request of the login carries the same.
    tsih: u16,
    itt: u32,
    /// Set by [`IscsiConn::identify`] from the first complete text (whatever number of
    /// continued PDUs carried it); `None` until then.
    initiator: Option<String>,
    session_type: SessionType,
    target: Option<Arc<TargetNode>>,
    chap: Option<Chap>,
    authenticated: bool,
    /// The CHAP name the initiator proved (CHAP_N with a right CHAP_R).
    chap_name: Option<String>,
    /// Text of continued requests, joined.
    text: Vec<u8>,
    /// The first response was sent (TargetPortalGroupTag goes in it).
    responded: bool,
    /// Operational keys answered in this login.
    operational: Vec<u8>,
}

/// A logged-in session.
struct Session {
    tsih: u16,
    kind: SessionType,
    initiator: String,
    /// The CHAP name the initiator authenticated as; `None` without CHAP.
    chap_name: Option<String>,
    target: Option<Arc<TargetNode>>,
    scsi: Option<Arc<ScsiTarget>>,
    nexus: Nexus,
    killed: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for Data-Out.
    Collecting,
    /// Data complete; waiting to be stepped.
    Ready,
    /// A block operation is with user space.
    InIo,
    /// Waiting on other sessions (PREEMPT AND ABORT, for the tasks it aborted there):
    /// stepped again on every tick and whenever the connection runs.
    Waiting,
    /// The task is over (answered, out of the CmdSN window), but its Data-In data is still
    /// in the output, lent from the buffer (see [`GatherOutput`]): the slot is not reused
    /// and the buffer not touched until the transport took the last byte.
    Sending,
}

/// An R2T in flight.
#[derive(Clone, Copy, Debug)]
struct R2t {
    offset: usize,
    len: usize,
    received: usize,
    next_data_sn: u32,
}

struct TaskSlot {
    state: SlotState,
    immediate: bool,
    itt: u32,
    lun: [u8; 8],
    cmd_sn: u32,
    /// Expected Data Transfer Length and the R/W bits.
    edtl: usize,
    read: bool,
    write: bool,
    task: Option<scsi::Task>,
    buf: AlignedBuf,
    /// Data-out bytes the CDB calls for, and those the command keeps (the initiator
    /// sends at most EDTL).
    want_out: usize,
    need: usize,
    /// Data-out bytes placed in [0, need).
    filled: usize,
    /// Unsolicited Data-Out still to come (the command's F bit was 0).
    unsolicited_open: bool,
    unsolicited_sn: u32,
    unsolicited_limit: usize,
    /// The BufferOffset the next unsolicited Data-Out must have (after the immediate data).
    unsolicited_offset: usize,
    /// Next offset to solicit, R2TSN, and the R2Ts in flight.
    next_r2t_offset: usize,
    r2t_sn: u32,
    r2ts: Vec<R2t>,
    /// The initiator's EDTL cannot be honoured (a partial block): answered with sense.
    bad_length: bool,
    aborted: bool,
}

impl TaskSlot {
    fn new() -> Self {
        Self {
            state: SlotState::Free,
            immediate: false,
            itt: 0,
            lun: [0; 8],
            cmd_sn: 0,
            edtl: 0,
            read: false,
            write: false,
            task: None,
            buf: AlignedBuf::default(),
            want_out: 0,
            need: 0,
            filled: 0,
            unsolicited_open: false,
            unsolicited_sn: 0,
            unsolicited_limit: 0,
            unsolicited_offset: 0,
            next_r2t_offset: 0,
            r2t_sn: 0,
            r2ts: Vec::new(),
            bad_length: false,
            aborted: false,
        }
    }

    /// Takes one Data-Out PDU's data, checking it against the command's limits, its
    /// sequence (DataSN), its R2T and its place in the sequence.
    ///
    /// Every byte is counted once: this target negotiates DataPDUInOrder=Yes, under which
    /// "the data PDUs within sequences MUST be at continuously increasing addresses and
    /// overlays are forbidden" (RFC 7143 section 13.19), so each PDU must start where the
    /// previous one of its sequence ended (unsolicited data where the immediate data ended,
    /// an R2T's data at its offset), and the sequences' ranges do not overlap. Otherwise a
    /// PDU repeating an earlier range would count twice toward `need`, and the task would
    /// complete with a hole of stale buffer bytes written to the disk. ERL 0 cannot recover
    /// this: as Linux LIO, which fails the connection when a Data-Out's offset is not the one
    /// it expects, the connection ends, after a Reject (PROTOCOL_ERROR) as for the other
    /// Data-Out errors here.
    fn accept_data(
        &mut self,
        unsolicited: bool,
        offset: usize,
        data: Incoming<'_>,
        data_sn: u32,
        final_bit: bool,
    ) -> Result<(), DataError> {
        let r2t = self.check_data(unsolicited, offset, data.len(), data_sn)?;
        let end = offset + data.len();
        match r2t {
            None => {
                self.unsolicited_sn += 1;
                self.unsolicited_offset = end;
                if final_bit {
                    self.unsolicited_open = false;
                }
            }
            Some(r) => {
                let r2t = &mut self.r2ts[r];
                r2t.next_data_sn += 1;
                r2t.received += data.len();
                if r2t.received >= r2t.len || final_bit {
                    self.r2ts.remove(r);
                }
            }
        }
        // Place what falls inside the kept range.
        if let Some((at, take)) = self.placement(offset, data.len()) {
            match data {
                Incoming::Bytes(d) => {
                    self.buf.as_mut_slice()[at..at + take].copy_from_slice(&d[..take]);
                }
                Incoming::Placed(_) => {}
                Incoming::Dropped(_) => {
                    // `check_data` said no when the header came, and nothing that changes
                    // its answer runs before the end of the PDU.
                    debug_assert!(false, "accepted Data-Out whose data was dropped");
                    return Err(DataError::Fatal("Data-Out data was not kept".into()));
                }
            }
            self.filled += take;
        }
        Ok(())
    }

    /// Whether [`Self::accept_data`] takes a Data-Out of `len` bytes at `offset` (and in
    /// which R2T's range; `None` for unsolicited data), without changing anything: the
    /// same answer for its header as for the whole PDU. Errors in the order that
    /// `accept_data` reports them.
    fn check_data(
        &self,
        unsolicited: bool,
        offset: usize,
        len: usize,
        data_sn: u32,
    ) -> Result<Option<usize>, DataError> {
        let end = offset.saturating_add(len);
        if end > self.edtl {
            return Err(DataError::Fatal(
                "Data-Out beyond the expected length".into(),
            ));
        }
        if unsolicited {
            if !self.unsolicited_open || end > self.unsolicited_limit {
                return Err(DataError::Fatal(
                    "unsolicited data beyond FirstBurstLength".into(),
                ));
            }
            if data_sn != self.unsolicited_sn {
                return Err(DataError::Sequence(format!(
                    "DataSN {data_sn}, expected {}",
                    self.unsolicited_sn
                )));
            }
            if offset != self.unsolicited_offset {
                return Err(DataError::Fatal(format!(
                    "unsolicited Data-Out at offset {offset}, expected {}",
                    self.unsolicited_offset
                )));
            }
            return Ok(None);
        }
        let r = self
            .r2ts
            .iter()
            .position(|r| offset >= r.offset && end <= r.offset + r.len)
            .ok_or_else(|| DataError::Fatal("Data-Out outside its R2T".into()))?;
        let r2t = &self.r2ts[r];
        if data_sn != r2t.next_data_sn {
            return Err(DataError::Sequence(format!(
                "DataSN {data_sn}, expected {}",
                r2t.next_data_sn
            )));
        }
        if offset != r2t.offset + r2t.received {
            return Err(DataError::Fatal(format!(
                "Data-Out at offset {offset}, expected {}",
                r2t.offset + r2t.received
            )));
        }
        Ok(Some(r))
    }

    /// Where in the buffer accepted data of `len` bytes at `offset` goes: the part inside
    /// the kept range [0, need), as (offset, bytes); `None` when none of it is kept.
    fn placement(&self, offset: usize, len: usize) -> Option<(usize, usize)> {
        (offset < self.need).then(|| (offset, (self.need - offset).min(len)))
    }

    /// Whether the slot holds a live task (one that task management, ITT checks and
    /// Data-Out can find); a slot still sending the data of a finished task does not.
    fn holds_task(&self) -> bool {
        !matches!(self.state, SlotState::Free | SlotState::Sending)
    }

    fn data_complete(&self) -> bool {
        !self.unsolicited_open && self.r2ts.is_empty() && self.filled >= self.need
    }
}

/// A Data-Out PDU's data as [`TaskSlot::accept_data`] gets it.
#[derive(Clone, Copy)]
enum Incoming<'a> {
    /// In the PDU, to be placed.
    Bytes(&'a [u8]),
    /// `len` bytes streamed into the task's buffer already, where they belong.
    Placed(usize),
    /// `len` bytes read and dropped: the header showed they would not be accepted.
    Dropped(usize),
}

impl Incoming<'_> {
    fn len(&self) -> usize {
        match *self {
            Self::Bytes(d) => d.len(),
            Self::Placed(n) | Self::Dropped(n) => n,
        }
    }
}

/// Why a Data-Out was not accepted.
enum DataError {
    /// Out of sequence (DataSN): the command fails.
    Sequence(String),
    /// Outside what was asked for: a protocol error that ends the connection.
    Fatal(String),
}

/// A Data-Out PDU being received whose data segment goes straight to its task's buffer.
struct Inbound {
    /// Slot, buffer offset and bytes kept there; `None`: the data is read and dropped.
    place: Option<(usize, usize, usize)>,
    /// Data bytes read so far, and their CRC32C.
    received: usize,
    crc: u32,
}

/// A task management response waiting for aborted tasks' I/O to finish.
struct DeferredTmf {
    itt: u32,
    response: u8,
    /// Connection ends after it (TARGET COLD RESET).
    then_close: bool,
}

/// Text response larger than one PDU, sent in pieces as the initiator asks (section 6.1).
struct PendingText {
    itt: u32,
    ttt: u32,
    data: Vec<u8>,
    sent: usize,
}

/// Why the engine ended or refused something, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    LoggedIn {
        initiator: String,
        target: Option<String>,
        tsih: u16,
        reinstated: bool,
    },
    LoginFailed {
        status: u16,
        why: String,
    },
    ProtocolError(String),
    LoggedOut,
    NopTimeout,
    Reinstated,
}

/// Who a logged-in session is, as the login established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedInIdentity {
    pub tsih: u16,
    pub isid: [u8; 6],
    pub initiator: String,
    /// `None` for a discovery session.
    pub target: Option<String>,
    pub discovery: bool,
    /// The CHAP name the initiator proved; `None` when it did not use CHAP.
    pub chap_name: Option<String>,
}

/// One iSCSI connection's engine.
pub struct IscsiConn {
    params: ConnParams,
    registry: Arc<Mutex<Registry>>,
    local: Option<IpAddr>,
    random: [u8; CHALLENGE_LEN + 1],
    phase: Phase,
    login: Login,
    neg: Negotiated,
    session: Option<Session>,
    stat_sn: u32,
    exp_cmd_sn: u32,
    /// Non-immediate tasks holding slots (they shrink the window).
    queued: usize,
    held: BTreeMap<u32, Vec<u8>>,
    slots: Vec<TaskSlot>,
    ready: VecDeque<usize>,
    /// Slots in [`SlotState::Waiting`].
    waiting: Vec<usize>,
    io: VecDeque<(usize, BlockIo)>,
    rx: Vec<u8>,
    /// The Data-Out whose data is streaming into its task's buffer (its header in `rx`).
    inbound: Option<Inbound>,
    /// What waits to be sent: staged PDUs, and Data-In data in its task's buffer.
    out: GatherOutput,
    last_heard_ms: u64,
    ping: Option<(u32, u64)>,
    ping_ttt: u32,
    text: Option<PendingText>,
    deferred_tmf: Vec<DeferredTmf>,
    events: Vec<ConnEvent>,
}

impl IscsiConn {
    /// `random`: unpredictable bytes (CHAP challenge and identifier).
    pub fn new(
        params: ConnParams,
        registry: Arc<Mutex<Registry>>,
        local: Option<IpAddr>,
        random: [u8; CHALLENGE_LEN + 1],
    ) -> Self {
        let stat_sn = u32::from_be_bytes([random[1], random[2], random[3], random[4]]) & 0xffff;
        Self {
            params,
            registry,
            local,
            random,
            phase: Phase::Login,
            login: Login {
                csg: stage::SECURITY,
                started_ms: None,
                isid: [0; 6],
                tsih: 0,
                itt: 0,
                initiator: None,
                session_type: SessionType::Normal,
                target: None,
                chap: None,
                authenticated: false,
                chap_name: None,
                text: Vec::new(),
                responded: false,
                operational: Vec::new(),
            },
            neg: Negotiated::default(),
            session: None,
            stat_sn,
            exp_cmd_sn: 0,
            queued: 0,
            held: BTreeMap::new(),
            slots: (0..QUEUE_DEPTH + IMMEDIATE_SLOTS)
                .map(|_| TaskSlot::new())
                .collect(),
            ready: VecDeque::new(),
            waiting: Vec::new(),
            io: VecDeque::new(),
            rx: Vec::new(),
            inbound: None,
            out: GatherOutput::default(),
            last_heard_ms: 0,
            ping: None,
            ping_ttt: 1,
            text: None,
            deferred_tmf: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Bytes waiting to be sent (all of [`Self::output_chunks`]).
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// What waits to be sent, in order: staged PDUs, and Data-In data in its task's
    /// buffer.
    pub fn output_chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.out.chunks(|i| self.slots[i].buf.as_slice())
    }

    /// The first piece of the output (empty when there is none).
    pub fn output(&self) -> &[u8] {
        self.output_chunks().next().unwrap_or(&[])
    }

    /// `n` bytes of the output were sent: a slot whose Data-In data went out in full is
    /// free.
    pub fn consume_output(&mut self, n: usize) {
        let slots = &mut self.slots;
        self.out.consume(n, |i| release_sent(&mut slots[i]));
    }

    /// All of the output, copied, as sent (for tests, fuzzing and callers that want one
    /// buffer).
    pub fn take_output(&mut self) -> Vec<u8> {
        let all = output::concat(self.output_chunks(), self.output_len());
        self.consume_output(all.len());
        all
    }

    /// The connection is ending: close it once [`Self::output`] is sent.
    pub fn closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    /// What happened since the last call, for the log.
    pub fn take_events(&mut self) -> Vec<ConnEvent> {
        std::mem::take(&mut self.events)
    }

    /// The next block operation to run on a task's buffer.
    pub fn next_io(&mut self) -> Option<(usize, BlockIo)> {
        self.io.pop_front()
    }

    pub fn buffer_mut(&mut self, slot: usize) -> &mut [u8] {
        self.slots[slot].buf.as_mut_slice()
    }

    /// A block operation of `slot` finished.
    pub fn io_done(&mut self, slot: usize, outcome: IoOutcome) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.state != SlotState::InIo {
            return;
        }
        if s.aborted {
            self.free_slot(slot);
            self.flush_deferred_tmf();
            return;
        }
        self.advance(slot, Some(outcome));
        self.run_ready();
    }

    /// Timers: NOP-In pings, login timeout, session reinstatement. False when the
    /// connection should end now.
    pub fn tick(&mut self, now_ms: u64) -> bool {
        if self.phase == Phase::Closing {
            return true;
        }
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.killed.load(Ordering::Relaxed))
        {
            self.events.push(ConnEvent::Reinstated);
            return false;
        }
        self.run_waiting();
        let t = self.params.timers;
        if self.phase == Phase::Login {
            let started = *self.login.started_ms.get_or_insert(now_ms);
            return t.login_timeout_ms == 0 || now_ms.saturating_sub(started) < t.login_timeout_ms;
        }
        if self.last_heard_ms == 0 {
            self.last_heard_ms = now_ms;
        }
        if let Some((_, sent)) = self.ping {
            if now_ms.saturating_sub(sent) >= t.nop_timeout_ms {
                self.events.push(ConnEvent::NopTimeout);
                return false;
            }
        } else if t.nop_interval_ms > 0
            && now_ms.saturating_sub(self.last_heard_ms) >= t.nop_interval_ms
        {
            let ttt = self.ping_ttt;
            self.ping_ttt = self.ping_ttt.wrapping_add(1).max(1);
            if self.ping_ttt == RESERVED_TAG {
                self.ping_ttt = 1;
            }
            self.ping = Some((ttt, now_ms));
            self.send_nop_in(RESERVED_TAG, ttt, [0; 8], &[], false);
        }
        true
    }

    /// The connection is gone: ends the session and releases what it held.
    pub fn teardown(&mut self) {
        if let Some(s) = self.session.take() {
            if let Some(scsi) = &s.scsi {
                scsi.nexus_lost(&s.nexus);
            }
            if !s.killed.load(Ordering::Relaxed) {
                lock(&self.registry).close_session(s.tsih);
            }
        }
        self.ready.clear();
        self.waiting.clear();
        self.io.clear();
        // Unsent output goes nowhere now; the slots it lent from are free again.
        let slots = &mut self.slots;
        self.out.clear(|i| release_sent(&mut slots[i]));
    }

    /// Feeds received bytes and returns how many were taken.
    ///
    /// Back-pressure: a new PDU is started only while the output (all of
    /// [`Self::output_chunks`], lent Data-In data included) holds less than
    /// [`OUTPUT_HIGH_WATER`] bytes, so an initiator that stops reading while it sends
    /// READs (immediate ones bypass the CmdSN window) cannot grow the output without
    /// bound. The caller keeps the rest and offers it again once the output has drained.
    /// Only the PDU being assembled is buffered here.
    pub fn receive(&mut self, input: &[u8], now_ms: u64) -> usize {
        if self.phase == Phase::Closing {
            return input.len();
        }
        self.last_heard_ms = now_ms;
        if self.login.started_ms.is_none() {
            self.login.started_ms = Some(now_ms);
        }
        let mut taken = 0;
        while self.phase != Phase::Closing {
            if self.rx.is_empty() && self.out.len() >= OUTPUT_HIGH_WATER {
                break;
            }
            if !self.gather(input, &mut taken, BHS_LEN) {
                break;
            }
            let bhs = Bhs::new_unchecked(&self.rx[..BHS_LEN]);
            let op = bhs.opcode();
            // Digests start with the full feature phase (section 13.1): an operational
            // round that negotiated them does not put them on the login PDUs that follow
            // (push_pdu sends login responses without them for the same reason).
            let ffp = self.phase != Phase::Login;
            let layout = bhs.layout(ffp && self.neg.header_digest, ffp && self.neg.data_digest);
            let limit = if self.phase == Phase::Login {
                LOGIN_MRDSL
            } else {
                self.neg.target_mrdsl as usize
            };
            if layout.data > limit {
                let why = format!(
                    "data segment of {} bytes exceeds MaxRecvDataSegmentLength {limit}",
                    layout.data
                );
                let hdr: [u8; BHS_LEN] = self.rx[..BHS_LEN].try_into().unwrap_or([0; BHS_LEN]);
                self.protocol_error(&hdr, reject::PROTOCOL_ERROR, why);
                break;
            }
            if ffp && op == Opcode::DataOut && layout.data > 0 {
                if !self.stream_data_out(input, &mut taken, &layout) {
                    break;
                }
                continue;
            }
            if !self.gather(input, &mut taken, layout.total) {
                break;
            }
            // The whole PDU is in `rx`: take it out (keeping its allocation for the next).
            let pdu = std::mem::take(&mut self.rx);
            self.received_pdu(&pdu, &layout);
            self.rx = pdu;
            self.rx.clear();
        }
        self.run_ready();
        if self.phase == Phase::Closing {
            // Nothing more is read from a closing connection.
            return input.len();
        }
        taken
    }

    /// A Data-Out PDU of the full feature phase, its data segment streamed straight into
    /// its task's buffer rather than gathered into `rx` first: the header is gathered and
    /// its digest checked, then where the data goes is worked out from it (nowhere when the
    /// PDU will not be accepted), the data is placed as it arrives with its digest
    /// computed on the way, and once the padding and the digest are in, the PDU is checked
    /// and handled as a whole one is in [`Self::received_pdu`], with the same errors in
    /// the same order. True once the PDU is done; false when the input ran out first.
    ///
    /// Writing into the buffer before the data digest is checked is safe: a bad digest
    /// ends the connection (ERL 0) before the task can be stepped, and only the task's own
    /// PDUs change what is placed where, none of which can arrive in between.
    fn stream_data_out(&mut self, input: &[u8], taken: &mut usize, layout: &PduLayout) -> bool {
        if !self.gather(input, taken, layout.header) {
            return false;
        }
        if self.inbound.is_none() {
            if !layout.header_digest_ok(&self.rx) {
                // ERL 0: a header digest error ends the connection (section 7.8).
                self.events
                    .push(ConnEvent::ProtocolError("header digest error".into()));
                self.phase = Phase::Closing;
                return true;
            }
            let place = self.data_out_placement(&self.rx[..BHS_LEN], layout.data);
            self.inbound = Some(Inbound {
                place,
                received: 0,
                crc: 0,
            });
        }
        let Some(s) = self.inbound.as_mut() else {
            return false;
        };
        let n = (layout.data - s.received).min(input.len() - *taken);
        let chunk = &input[*taken..*taken + n];
        s.crc = crc32c_append(s.crc, chunk);
        if let Some((slot, at, take)) = s.place
            && s.received < take
        {
            let k = (take - s.received).min(n);
            let dst = at + s.received;
            self.slots[slot].buf.as_mut_slice()[dst..dst + k].copy_from_slice(&chunk[..k]);
        }
        s.received += n;
        *taken += n;
        if s.received < layout.data {
            return false;
        }
        // The padding and the data digest follow the header in `rx`.
        if !self.gather(input, taken, layout.total - layout.data) {
            return false;
        }
        let Some(s) = self.inbound.take() else {
            return false;
        };
        let pad = padded(layout.data) - layout.data;
        let tail = &self.rx[layout.header..];
        let digest_ok = !layout.data_digest
            || crc32c_append(s.crc, &tail[..pad]).to_le_bytes()[..] == tail[pad..pad + DIGEST_LEN];
        let mut hdr = [0u8; BHS_LEN];
        hdr.copy_from_slice(&self.rx[..BHS_LEN]);
        self.rx.clear();
        if !digest_ok {
            self.protocol_error(&hdr, reject::DATA_DIGEST_ERROR, "data digest error".into());
            return true;
        }
        let data = match s.place {
            Some(_) => Incoming::Placed(layout.data),
            None => Incoming::Dropped(layout.data),
        };
        self.data_out(&hdr, data);
        true
    }

    /// Moves bytes from `input[*taken..]` into `rx` until it holds `want`; false when the
    /// input ran out first.
    fn gather(&mut self, input: &[u8], taken: &mut usize, want: usize) -> bool {
        if self.rx.len() < want {
            let n = (want - self.rx.len()).min(input.len() - *taken);
            self.rx.extend_from_slice(&input[*taken..*taken + n]);
            *taken += n;
        }
        self.rx.len() >= want
    }

    /// One whole received PDU: digests checked, then dispatched.
    fn received_pdu(&mut self, pdu: &[u8], layout: &PduLayout) {
        if !layout.header_digest_ok(pdu) {
            // ERL 0: a header digest error ends the connection (section 7.8).
            self.events
                .push(ConnEvent::ProtocolError("header digest error".into()));
            self.phase = Phase::Closing;
            return;
        }
        let data = &pdu[layout.header..layout.header + layout.data];
        if !layout.data_digest_ok(pdu) {
            let hdr: [u8; BHS_LEN] = pdu[..BHS_LEN].try_into().unwrap_or([0; BHS_LEN]);
            self.protocol_error(&hdr, reject::DATA_DIGEST_ERROR, "data digest error".into());
            return;
        }
        let ahs = &pdu[BHS_LEN..BHS_LEN + layout.ahs];
        self.pdu(&pdu[..BHS_LEN], ahs, data);
    }

    fn pdu(&mut self, bhs: &[u8], ahs: &[u8], data: &[u8]) {
        let h = Bhs::new_unchecked(bhs);
        let op = h.opcode();
        if self.phase == Phase::Login {
            if op == Opcode::LoginRequest {
                self.login_request(bhs, data);
            } else {
                // Section 6.3: only Login Requests before the full feature phase.
                self.fail_login(
                    login_status::INITIATOR_ERROR,
                    "a non-login PDU during login",
                );
            }
            return;
        }
        // Responses acknowledge ExpStatSN; nothing is kept for retransmission at ERL 0.
        match op {
            Opcode::DataOut => self.data_out(bhs, Incoming::Bytes(data)),
            Opcode::LoginRequest => {
                let mut hdr = [0; BHS_LEN];
                hdr.copy_from_slice(bhs);
                self.protocol_error(
                    &hdr,
                    reject::PROTOCOL_ERROR,
                    "login in full feature phase".into(),
                );
            }
            Opcode::NopOut
            | Opcode::ScsiCommand
            | Opcode::TaskMgmtRequest
            | Opcode::TextRequest
            | Opcode::LogoutRequest => self.ordered(bhs, ahs, data),
            Opcode::Snack => self.send_reject(bhs, reject::COMMAND_NOT_SUPPORTED),
            _ => {
                let mut hdr = [0; BHS_LEN];
                hdr.copy_from_slice(bhs);
                self.protocol_error(
                    &hdr,
                    reject::PROTOCOL_ERROR,
                    format!("unexpected opcode {op:?}"),
                );
            }
        }
    }

    // ---- Ordering ----------------------------------------------------------------------

    fn max_cmd_sn(&self) -> u32 {
        let room = QUEUE_DEPTH.saturating_sub(self.queued) as u32;
        self.exp_cmd_sn.wrapping_add(room).wrapping_sub(1)
    }

    /// Commands subject to CmdSN ordering.
    fn ordered(&mut self, bhs: &[u8], ahs: &[u8], data: &[u8]) {
        let h = Bhs::new_unchecked(bhs);
        let sn = h.cmd_sn();
        if h.immediate() {
            self.execute(bhs, ahs, data);
            return;
        }
        // When every slot is taken MaxCmdSN is ExpCmdSN - 1: the window is empty, and even
        // a command at ExpCmdSN lies outside it (section 4.2.2.1) and is ignored.
        if sn == self.exp_cmd_sn && self.queued < QUEUE_DEPTH {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            if self.held.get(&sn).is_some_and(Vec::is_empty) {
                // Aborted (ABORT TASK) before it arrived.
                self.held.remove(&sn);
            } else {
                self.execute(bhs, ahs, data);
            }
            // Commands that were waiting for this one.
            while let Some(pdu) = self.held.remove(&self.exp_cmd_sn) {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                if pdu.len() < BHS_LEN {
                    // Aborted before it arrived.
                    continue;
                }
                let (b, rest) = pdu.split_at(BHS_LEN);
                let ahs_len = Bhs::new_unchecked(b).ahs_len().min(rest.len());
                let (a, d) = rest.split_at(ahs_len);
                self.execute(b, a, d);
            }
            return;
        }
        let in_window = sn_lt(self.exp_cmd_sn, sn) && sn_le(sn, self.max_cmd_sn());
        if in_window && self.held.len() < MAX_HELD {
            let mut pdu = Vec::with_capacity(BHS_LEN + ahs.len() + data.len());
            pdu.extend_from_slice(bhs);
            pdu.extend_from_slice(ahs);
            pdu.extend_from_slice(data);
            self.held.insert(sn, pdu);
        }
        // Outside the window: silently ignored (section 4.2.2.1).
    }

    fn execute(&mut self, bhs: &[u8], ahs: &[u8], data: &[u8]) {
        match Bhs::new_unchecked(bhs).opcode() {
            Opcode::ScsiCommand => self.scsi_command(bhs, ahs, data),
            Opcode::NopOut => self.nop_out(bhs, data),
            Opcode::TaskMgmtRequest => self.task_management(bhs),
            Opcode::TextRequest => self.text_request(bhs, data),
            Opcode::LogoutRequest => self.logout(bhs),
            _ => {}
        }
    }

    // ---- Login -------------------------------------------------------------------------

    fn login_request(&mut self, bhs: &[u8], data: &[u8]) {
        let h = Bhs::new_unchecked(bhs);
        let Ok(req) = LoginRequestRepr::parse(&h) else {
            return;
        };
        let first = !self.login.responded && self.login.text.is_empty();
        if first {
            if req.version_min > 0 {
                self.login.isid = req.isid;
                self.login.itt = req.itt;
                self.fail_login(login_status::UNSUPPORTED_VERSION, "iSCSI version above 0");
                return;
            }
            self.login.isid = req.isid;
            self.login.tsih = req.tsih;
            self.exp_cmd_sn = req.cmd_sn;
        } else if req.isid != self.login.isid {
            self.fail_login(login_status::INITIATOR_ERROR, "ISID changed during login");
            return;
        } else if req.tsih != self.login.tsih {
            self.fail_login(login_status::INITIATOR_ERROR, "TSIH changed during login");
            return;
        }
        self.login.itt = req.itt;
        if self.login.text.len() + data.len() > MAX_TEXT {
            self.fail_login(login_status::OUT_OF_RESOURCES, "login text too long");
            return;
        }
        self.login.text.extend_from_slice(data);
        if req.cont {
            if req.transit {
                // Section 11.12.2: a request with C set must have T clear.
                self.fail_login(login_status::INITIATOR_ERROR, "C and T bits both set");
                return;
            }
            // More text follows: answer with an empty response (section 6.1).
            let resp = self.login_response(&req, false, req.csg, login_status::SUCCESS, 0);
            self.push_login_response(resp, &[]);
            return;
        }
        let text = std::mem::take(&mut self.login.text);
        let mut pairs = Vec::new();
        for p in text_pairs(&text) {
            match p {
                Ok((k, v)) => pairs.push((k.to_string(), v.to_string())),
                Err(e) => {
                    let why = match e {
                        TextError::NoEquals => "a key without a value",
                        TextError::BadKey => "a malformed key",
                        TextError::BadValue => "a malformed value",
                    };
                    self.fail_login(login_status::INITIATOR_ERROR, why);
                    return;
                }
            }
        }
        if req.csg == 2
            || req.csg == stage::FULL_FEATURE
            || (req.transit && (req.nsg == 2 || req.nsg <= req.csg))
        {
            self.fail_login(
                login_status::INITIATOR_ERROR,
                "invalid login stage transition",
            );
            return;
        }
        if !first && req.csg < self.login.csg {
            self.fail_login(login_status::INITIATOR_ERROR, "login stage went backwards");
            return;
        }
        self.login.csg = req.csg;
        // The identity keys come with the first complete text, which may have been spread
        // over several continued (C bit) requests: `first` only means the first PDU.
        if self.login.initiator.is_none() && !self.identify(&pairs, &req) {
            return;
        }
        let mut out = Vec::new();
        if !self.login.responded && self.login.session_type == SessionType::Normal {
            answer(&mut out, "TargetPortalGroupTag", &PORTAL_GROUP.to_string());
            if let Some(alias) = self.login.target.as_ref().and_then(|t| t.alias.clone()) {
                answer(&mut out, "TargetAlias", &alias);
            }
        }
        let mut transit = req.transit;
        match req.csg {
            stage::SECURITY => {
                if !self.security(&pairs, &mut out, &mut transit) {
                    return;
                }
            }
            _ => {
                if self.auth_required() && !self.login.authenticated {
                    self.fail_login(
                        login_status::AUTHENTICATION_FAILURE,
                        "CHAP is required but the initiator skipped the security stage",
                    );
                    return;
                }
                if pairs.iter().any(|(k, _)| params::is_security(k)) {
                    self.fail_login(
                        login_status::INITIATOR_ERROR,
                        "security keys in the operational stage",
                    );
                    return;
                }
                let mut n = Negotiation::new(&self.params.limits, &mut self.neg, true);
                for (k, v) in &pairs {
                    n.offer(k, v, &mut out);
                }
                if !self.login.operational.is_empty() || !out.is_empty() || transit {
                    n.declare_mrdsl(&mut out);
                }
                if n.finish().is_err() {
                    self.fail_login(
                        login_status::INITIATOR_ERROR,
                        "FirstBurstLength above MaxBurstLength",
                    );
                    return;
                }
                self.login.operational.extend_from_slice(&out);
            }
        }
        let nsg = if transit { req.nsg } else { req.csg };
        if transit && nsg == stage::FULL_FEATURE {
            if !self.start_session(&req, out) {
                return;
            }
            return;
        }
        let resp = self.login_response(&req, transit, req.csg, login_status::SUCCESS, out.len());
        let mut resp = resp;
        resp.nsg = nsg;
        self.push_login_response(resp, &out);
    }

    /// Reads the identity keys of the first login request; false if the login failed.
    fn identify(&mut self, pairs: &[(String, String)], req: &LoginRequestRepr) -> bool {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let Some(initiator) = get("InitiatorName").filter(|n| !n.is_empty()) else {
            self.fail_login(login_status::MISSING_PARAMETER, "no InitiatorName");
            return false;
        };
        self.login.initiator = Some(initiator.clone());
        self.login.session_type = match get("SessionType").as_deref() {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => {
                self.fail_login(
                    login_status::SESSION_TYPE_NOT_SUPPORTED,
                    "unknown SessionType",
                );
                return false;
            }
        };
        if req.tsih != 0 {
            // Adding a connection to a session: sessions have one connection here.
            let exists = lock(&self.registry).session_exists(req.tsih);
            let (status, why) = if exists {
                (login_status::TOO_MANY_CONNECTIONS, "MaxConnections is 1")
            } else {
                (
                    login_status::SESSION_DOES_NOT_EXIST,
                    "no session with that TSIH",
                )
            };
            self.fail_login(status, why);
            return false;
        }
        if self.login.session_type == SessionType::Normal {
            let Some(name) = get("TargetName") else {
                self.fail_login(login_status::MISSING_PARAMETER, "no TargetName");
                return false;
            };
            let target = lock(&self.registry).target(&name);
            let Some(target) = target else {
                self.fail_login(login_status::NOT_FOUND, "no such target");
                return false;
            };
            if !target.allows(&initiator) {
                self.fail_login(login_status::AUTHORIZATION_FAILURE, "initiator not allowed");
                return false;
            }
            self.login.target = Some(target);
        }
        true
    }

    fn auth_required(&self) -> bool {
        match self.login.session_type {
            SessionType::Normal => self.login.target.as_ref().is_some_and(|t| t.chap.is_some()),
            SessionType::Discovery => lock(&self.registry).discovery_chap.is_some(),
        }
    }

    fn chap_config(&self) -> Option<super::chap::ChapConfig> {
        match self.login.session_type {
            SessionType::Normal => self.login.target.as_ref().and_then(|t| t.chap.clone()),
            SessionType::Discovery => lock(&self.registry).discovery_chap.clone(),
        }
    }

    /// The security stage; false if the login failed.
    fn security(
        &mut self,
        pairs: &[(String, String)],
        out: &mut Vec<u8>,
        transit: &mut bool,
    ) -> bool {
        let required = self.auth_required();
        let config = self.chap_config();
        let auth = pairs
            .iter()
            .find(|(k, _)| k == "AuthMethod")
            .map(|(_, v)| v.as_str());
        if let Some(methods) = auth {
            let offered: Vec<&str> = methods.split(',').collect();
            if required {
                if !offered.contains(&"CHAP") {
                    self.fail_login(
                        login_status::AUTHENTICATION_FAILURE,
                        "CHAP required, not offered",
                    );
                    return false;
                }
                answer(out, "AuthMethod", "CHAP");
                self.login.chap = Some(Chap::new(self.random));
                // The CHAP exchange must run before the stage can change.
                *transit = false;
            } else if offered.contains(&"None") {
                answer(out, "AuthMethod", "None");
                self.login.authenticated = true;
            } else {
                answer(out, "AuthMethod", "Reject");
                self.fail_login(login_status::AUTHENTICATION_FAILURE, "no common AuthMethod");
                return false;
            }
        }
        let chap_keys: Vec<(&str, &str)> = pairs
            .iter()
            .filter(|(k, _)| k.starts_with("CHAP_"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if !chap_keys.is_empty() {
            let (Some(chap), Some(cfg)) = (self.login.chap.as_mut(), config.as_ref()) else {
                self.fail_login(
                    login_status::INITIATOR_ERROR,
                    "CHAP keys without AuthMethod=CHAP",
                );
                return false;
            };
            if let Err(e) = chap.step(cfg, &chap_keys, out) {
                self.fail_login(
                    login_status::AUTHENTICATION_FAILURE,
                    &format!("CHAP: {e:?}"),
                );
                return false;
            }
            if chap.done() {
                self.login.authenticated = true;
                self.login.chap_name = Some(cfg.initiator.name.clone());
            } else {
                *transit = false;
            }
        }
        if required && !self.login.authenticated {
            *transit = false;
        } else if !required && auth.is_none() && chap_keys.is_empty() {
            // No AuthMethod offered at all: nothing to authenticate (section 6.3.1).
            self.login.authenticated = true;
        }
        // Operational keys may come in the security stage too (section 6.3).
        let mut n = Negotiation::new(&self.params.limits, &mut self.neg, true);
        for (k, v) in pairs {
            if k != "AuthMethod" && !k.starts_with("CHAP_") {
                n.offer(k, v, out);
            }
        }
        true
    }

    /// What the full feature phase needs (sections 6.3 and 12): a named initiator, for a
    /// Normal session a resolved target that allows it, and the authentication required
    /// completed. `identify` and the stage checks see to each on the way; the one place a
    /// session starts checks them again, so no path through the login can skip one.
    fn login_complete(&self) -> Result<(), (u16, &'static str)> {
        let Some(initiator) = &self.login.initiator else {
            return Err((login_status::MISSING_PARAMETER, "no InitiatorName"));
        };
        if self.login.session_type == SessionType::Normal {
            let Some(target) = &self.login.target else {
                return Err((login_status::MISSING_PARAMETER, "no TargetName"));
            };
            if !target.allows(initiator) {
                return Err((login_status::AUTHORIZATION_FAILURE, "initiator not allowed"));
            }
        }
        if self.auth_required() && !(self.login.authenticated && self.login.chap_name.is_some()) {
            return Err((
                login_status::AUTHENTICATION_FAILURE,
                "CHAP is required but was not completed",
            ));
        }
        Ok(())
    }

    /// Who the session logged in as; `None` before the full feature phase.
    pub fn logged_in_identity(&self) -> Option<LoggedInIdentity> {
        let s = self.session.as_ref()?;
        Some(LoggedInIdentity {
            tsih: s.tsih,
            isid: self.login.isid,
            initiator: s.initiator.clone(),
            target: s.target.as_ref().map(|t| t.iqn.clone()),
            discovery: s.kind == SessionType::Discovery,
            chap_name: s.chap_name.clone(),
        })
    }

    /// The login's invariants, for tests and fuzzing: a session exists exactly from the
    /// full feature phase on; a Normal session has its target, the target allows the
    /// initiator, and when the target requires CHAP the initiator proved the target's CHAP
    /// name. (A discovery session's CHAP is checked at login against a setting that may
    /// change later, so it is not re-checked here.)
    pub fn check_login_invariants(&self) -> Result<(), String> {
        let Some(s) = &self.session else {
            return match self.phase {
                Phase::FullFeature => Err("full feature phase without a session".into()),
                _ => Ok(()),
            };
        };
        if self.phase == Phase::Login {
            return Err("a session during login".into());
        }
        if s.kind == SessionType::Discovery {
            return match s.target {
                Some(_) => Err("a discovery session with a target".into()),
                None => Ok(()),
            };
        }
        let Some(t) = &s.target else {
            return Err("a normal session without a target".into());
        };
        if !t.allows(&s.initiator) {
            return Err(format!("{} is not allowed on {}", s.initiator, t.iqn));
        }
        if let Some(chap) = &t.chap
            && s.chap_name.as_ref() != Some(&chap.initiator.name)
        {
            return Err(format!(
                "{} requires CHAP as {:?}, the session authenticated as {:?}",
                t.iqn, chap.initiator.name, s.chap_name
            ));
        }
        Ok(())
    }

    /// The final login response: the session exists from here.
    fn start_session(&mut self, req: &LoginRequestRepr, mut out: Vec<u8>) -> bool {
        if let Err((status, why)) = self.login_complete() {
            self.fail_login(status, why);
            return false;
        }
        if self.login.operational.is_empty() {
            // The target's MaxRecvDataSegmentLength must reach the initiator once.
            let mut n = Negotiation::new(&self.params.limits, &mut self.neg, true);
            n.declare_mrdsl(&mut out);
        }
        let initiator = self.login.initiator.clone().unwrap_or_default();
        let target_name = self.login.target.as_ref().map(|t| t.iqn.clone());
        let isid_hex: String = self.login.isid.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        let grant = lock(&self.registry).open_session(
            &initiator,
            self.login.isid,
            target_name.as_deref().unwrap_or(""),
            self.login.chap_name.as_deref(),
        );
        let grant = match grant {
            Ok(g) => g,
            Err(SessionRefused::OtherIdentity { chap_name }) => {
                // Section 6.3.5 reinstates on the names and ISID alone; a session is only
                // ended by a login that authenticated as it did.
                let why = format!(
                    "session reinstatement refused: the live session of {initiator} with \
                     ISID 0x{isid_hex} authenticated with CHAP name {chap_name:?}, this \
                     login with {:?}",
                    self.login.chap_name
                );
                self.fail_login(login_status::AUTHENTICATION_FAILURE, &why);
                return false;
            }
            Err(SessionRefused::NoTsih) => {
                self.fail_login(
                    login_status::OUT_OF_RESOURCES,
                    "every TSIH belongs to a live session",
                );
                return false;
            }
        };
        let nexus = Nexus {
            id: grant.nexus_id,
            initiator_port: format!("{initiator},i,0x{isid_hex}"),
            target_port: format!(
                "{},t,0x{PORTAL_GROUP:04x}",
                target_name.as_deref().unwrap_or("")
            ),
            relative_port: PORTAL_GROUP,
        };
        let target = self.login.target.clone();
        self.session = Some(Session {
            tsih: grant.tsih,
            kind: self.login.session_type,
            initiator: initiator.clone(),
            chap_name: self.login.chap_name.clone(),
            scsi: target.as_ref().map(|t| Arc::clone(&t.scsi)),
            target,
            nexus,
            killed: grant.killed,
        });
        let mut resp = self.login_response(req, true, req.csg, login_status::SUCCESS, out.len());
        resp.nsg = stage::FULL_FEATURE;
        resp.tsih = grant.tsih;
        self.push_login_response(resp, &out);
        self.phase = Phase::FullFeature;
        debug_assert_eq!(self.check_login_invariants(), Ok(()));
        self.events.push(ConnEvent::LoggedIn {
            initiator,
            target: target_name,
            tsih: grant.tsih,
            reinstated: grant.reinstated,
        });
        true
    }

    fn login_response(
        &mut self,
        req: &LoginRequestRepr,
        transit: bool,
        csg: u8,
        status: u16,
        data_len: usize,
    ) -> LoginResponseRepr {
        LoginResponseRepr {
            transit,
            cont: false,
            csg,
            nsg: if transit { req.nsg } else { csg },
            version_max: 0,
            version_active: 0,
            isid: self.login.isid,
            tsih: 0,
            itt: req.itt,
            stat_sn: 0,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn,
            status,
            data_len,
        }
    }

    fn push_login_response(&mut self, mut resp: LoginResponseRepr, data: &[u8]) {
        resp.stat_sn = self.next_stat_sn();
        resp.exp_cmd_sn = self.exp_cmd_sn;
        resp.max_cmd_sn = if resp.status == login_status::SUCCESS {
            self.max_cmd_sn()
        } else {
            self.exp_cmd_sn
        };
        let mut hdr = [0u8; BHS_LEN];
        if resp.emit(&mut hdr).is_ok() {
            self.push_pdu(&hdr, data);
        }
        self.login.responded = true;
    }

    fn fail_login(&mut self, status: u16, why: &str) {
        let req = LoginRequestRepr {
            transit: false,
            cont: false,
            csg: self.login.csg,
            nsg: self.login.csg,
            version_max: 0,
            version_min: 0,
            isid: self.login.isid,
            tsih: 0,
            itt: self.login.itt,
            cid: 0,
            cmd_sn: self.exp_cmd_sn,
            exp_stat_sn: 0,
        };
        let resp = self.login_response(&req, false, self.login.csg, status, 0);
        self.push_login_response(resp, &[]);
        self.events.push(ConnEvent::LoginFailed {
            status,
            why: why.to_string(),
        });
        self.phase = Phase::Closing;
    }

    // ---- Output helpers ----------------------------------------------------------------

    fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    /// Appends a PDU; digests once the full feature phase starts (section 13.1).
    fn push_pdu(&mut self, bhs: &[u8; BHS_LEN], data: &[u8]) {
        let (hd, dd) = self.digests();
        self.out
            .stage_with(|v| super::append_pdu(v, bhs, data, hd, dd));
    }

    /// Appends a PDU whose data segment is `len` bytes of slot `slot`'s buffer from
    /// `start`, sent from there (header, digests and padding are staged around it);
    /// `last`: the slot's last such PDU, after which it is released.
    fn lend_pdu(&mut self, bhs: &[u8; BHS_LEN], slot: usize, start: usize, len: usize, last: bool) {
        let (hd, dd) = self.digests();
        self.out
            .stage_with(|v| super::append_pdu_header(v, bhs, len, hd));
        self.out.lend(slot, start, len, last);
        let data = &self.slots[slot].buf.as_slice()[start..start + len];
        self.out
            .stage_with(|v| super::append_pdu_trailer(v, data, dd));
    }

    /// The digests the next PDU carries: none before the full feature phase (section 13.1).
    fn digests(&self) -> (bool, bool) {
        let ffp = self.phase != Phase::Login;
        (ffp && self.neg.header_digest, ffp && self.neg.data_digest)
    }

    /// A target PDU header with the sequence numbers every response carries.
    fn header(&mut self, op: Opcode, flags_byte: u8, itt: u32, stat: bool) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        let stat_sn = if stat {
            self.next_stat_sn()
        } else {
            self.stat_sn
        };
        let max = self.max_cmd_sn();
        let mut h = Bhs::new_unchecked(&mut b[..]);
        h.init(op);
        h.set_flags(flags_byte);
        h.set_itt(itt);
        h.set_u32(field::STAT_SN, stat_sn);
        h.set_u32(field::EXP_CMD_SN, self.exp_cmd_sn);
        h.set_u32(field::MAX_CMD_SN, max);
        b
    }

    fn send_reject(&mut self, offending: &[u8], reason: u8) {
        let mut h = self.header(Opcode::Reject, flags::F, RESERVED_TAG, true);
        h[2] = reason;
        let mut data = [0u8; BHS_LEN];
        data.copy_from_slice(&offending[..BHS_LEN]);
        self.push_pdu(&h, &data);
    }

    /// A fatal protocol error at ERL 0: Reject, then the connection ends.
    fn protocol_error(&mut self, offending: &[u8; BHS_LEN], reason: u8, why: String) {
        if self.phase == Phase::FullFeature {
            self.send_reject(offending, reason);
        }
        self.events.push(ConnEvent::ProtocolError(why));
        self.phase = Phase::Closing;
    }

    fn send_nop_in(&mut self, itt: u32, ttt: u32, lun: [u8; 8], data: &[u8], stat: bool) {
        let mut h = self.header(Opcode::NopIn, flags::F, itt, stat);
        let mut v = Bhs::new_unchecked(&mut h[..]);
        v.set_lun(lun);
        v.set_u32(field::TTT, ttt);
        self.push_pdu(&h, data);
    }

    // ---- NOP, Text, Logout, task management ----------------------------------------------

    fn nop_out(&mut self, bhs: &[u8], data: &[u8]) {
        let h = Bhs::new_unchecked(bhs);
        let ttt = h.u32_at(field::TTT);
        if ttt != RESERVED_TAG {
            // The answer to our ping.
            if self.ping.is_some_and(|(t, _)| t == ttt) {
                self.ping = None;
            }
            return;
        }
        self.ping = None;
        let itt = h.itt();
        if itt == RESERVED_TAG {
            // A ping that wants no answer.
            return;
        }
        let lun = h.lun();
        let echo = data.to_vec();
        let n = echo.len().min(self.neg.initiator_mrdsl as usize);
        self.send_nop_in(itt, RESERVED_TAG, lun, &echo[..n], true);
    }

    fn text_request(&mut self, bhs: &[u8], data: &[u8]) {
        let h = Bhs::new_unchecked(bhs);
        let itt = h.itt();
        let ttt = h.u32_at(field::TTT);
        // An empty request with our TTT asks for the next piece; anything else ends the
        // old exchange (section 11.10.4).
        if let Some(p) = self.text.take()
            && ttt == p.ttt
            && itt == p.itt
            && data.is_empty()
        {
            self.text = Some(p);
            self.send_text_piece();
            return;
        }
        let mut out = Vec::new();
        let mut neg = self.neg;
        {
            let mut n = Negotiation::new(&self.params.limits, &mut neg, false);
            for p in text_pairs(data) {
                let Ok((k, v)) = p else {
                    self.send_reject(bhs, reject::PROTOCOL_ERROR);
                    return;
                };
                if k == "SendTargets" {
                    self.send_targets(v, &mut out);
                } else {
                    n.offer(k, v, &mut out);
                }
            }
        }
        self.neg = neg;
        let ttt = self.ping_ttt.wrapping_add(0x8000_0000) | 0x8000_0000;
        self.text = Some(PendingText {
            itt,
            ttt,
            data: out,
            sent: 0,
        });
        self.send_text_piece();
    }

    /// Sends the next piece of a text response, with C set while more remains.
    fn send_text_piece(&mut self) {
        let Some(mut p) = self.text.take() else {
            return;
        };
        let max = self.neg.initiator_mrdsl as usize;
        let end = (p.sent + max).min(p.data.len());
        let more = end < p.data.len();
        let fl = if more { flags::C } else { flags::F };
        let mut h = self.header(Opcode::TextResponse, fl, p.itt, true);
        let ttt = if more { p.ttt } else { RESERVED_TAG };
        Bhs::new_unchecked(&mut h[..]).set_u32(field::TTT, ttt);
        let piece = p.data[p.sent..end].to_vec();
        self.push_pdu(&h, &piece);
        p.sent = end;
        if more {
            self.text = Some(p);
        }
    }

    /// SendTargets (appendix C): `All` in discovery sessions; the session's own target
    /// (empty value or its name) in normal sessions.
    fn send_targets(&self, value: &str, out: &mut Vec<u8>) {
        let Some(s) = &self.session else { return };
        let initiator = self.login.initiator.clone().unwrap_or_default();
        let reg = lock(&self.registry);
        let portals = reg.portals().to_vec();
        let targets: Vec<Arc<TargetNode>> = match (s.kind, value) {
            (SessionType::Discovery, "All") => reg.targets().to_vec(),
            (SessionType::Normal, "") => s.target.iter().cloned().collect(),
            (_, name) => reg.target(name).into_iter().collect(),
        };
        drop(reg);
        for t in targets.iter().filter(|t| t.allows(&initiator)) {
            if s.kind == SessionType::Normal
                && s.target.as_ref().is_some_and(|own| own.iqn != t.iqn)
            {
                continue;
            }
            answer(out, "TargetName", &t.iqn);
            for p in &portals {
                let Some(ip) = p.addr.or(self.local) else {
                    continue;
                };
                let addr = match ip {
                    IpAddr::V4(a) => format!("{a}:{},{PORTAL_GROUP}", p.port),
                    IpAddr::V6(a) => format!("[{a}]:{},{PORTAL_GROUP}", p.port),
                };
                answer(out, "TargetAddress", &addr);
            }
        }
    }

    fn logout(&mut self, bhs: &[u8]) {
        let h = Bhs::new_unchecked(bhs);
        let reason = h.flags() & 0x7f;
        // 0: close the session, 1: close the connection (the same here), 2: remove the
        // connection for recovery, which needs ERL 2.
        let response = match reason {
            0 | 1 => 0,
            _ => 2,
        };
        let mut hdr = self.header(Opcode::LogoutResponse, flags::F, h.itt(), true);
        hdr[2] = response;
        self.push_pdu(&hdr, &[]);
        if response == 0 {
            self.events.push(ConnEvent::LoggedOut);
            self.phase = Phase::Closing;
        }
    }

    fn task_management(&mut self, bhs: &[u8]) {
        let h = Bhs::new_unchecked(bhs);
        let function = h.flags() & 0x7f;
        let itt = h.itt();
        let lun = h.lun();
        let Some(s) = &self.session else { return };
        let (Some(scsi), nexus) = (s.scsi.clone(), s.nexus.clone()) else {
            self.send_tmf_response(itt, tmf::FUNCTION_REJECTED);
            return;
        };
        let lun_n = decode_lun(lun);
        let lun_exists = lun_n.is_some_and(|n| scsi.lu(n).is_some());
        let mut then_close = false;
        let response = match function {
            tmf::ABORT_TASK => {
                let rt = h.u32_at(field::REF_TASK_TAG);
                match self
                    .slots
                    .iter()
                    .position(|s| s.holds_task() && s.itt == rt && !s.aborted)
                {
                    Some(i) => {
                        self.abort_slot(i);
                        tmf::FUNCTION_COMPLETE
                    }
                    // Section 11.6.1: a task never received (its CmdSN still in the
                    // window, before the TMF's) is considered received and aborted; a
                    // task that already completed does not exist.
                    None => {
                        let ref_sn = h.u32_at(field::REF_CMD_SN);
                        let in_window =
                            sn_le(self.exp_cmd_sn, ref_sn) && sn_le(ref_sn, self.max_cmd_sn());
                        if in_window && sn_lt(ref_sn, h.cmd_sn()) {
                            // Held or still to come: it is done without running.
                            self.held.insert(ref_sn, Vec::new());
                            tmf::FUNCTION_COMPLETE
                        } else {
                            tmf::TASK_DOES_NOT_EXIST
                        }
                    }
                }
            }
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET => {
                if !lun_exists {
                    tmf::LUN_DOES_NOT_EXIST
                } else {
                    self.abort_where(|s| s.lun == lun);
                    let f = match function {
                        tmf::ABORT_TASK_SET => TaskManagement::AbortTaskSet,
                        tmf::CLEAR_TASK_SET => TaskManagement::ClearTaskSet,
                        _ => TaskManagement::LunReset,
                    };
                    scsi.task_management(&nexus, f, lun_n);
                    tmf::FUNCTION_COMPLETE
                }
            }
            tmf::CLEAR_ACA => {
                scsi.task_management(&nexus, TaskManagement::ClearAca, lun_n);
                tmf::FUNCTION_COMPLETE
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                self.abort_where(|_| true);
                let f = if function == tmf::TARGET_WARM_RESET {
                    TaskManagement::TargetWarmReset
                } else {
                    then_close = true;
                    TaskManagement::TargetColdReset
                };
                scsi.task_management(&nexus, f, None);
                tmf::FUNCTION_COMPLETE
            }
            tmf::TASK_REASSIGN => tmf::REASSIGNMENT_NOT_SUPPORTED,
            _ => tmf::FUNCTION_NOT_SUPPORTED,
        };
        self.deferred_tmf.push(DeferredTmf {
            itt,
            response,
            then_close,
        });
        self.flush_deferred_tmf();
    }

    /// Sends task management responses once no aborted task has I/O in flight (the
    /// response must follow the end of the tasks it affected, section 4.2.3.1... SAM-5).
    fn flush_deferred_tmf(&mut self) {
        if self
            .slots
            .iter()
            .any(|s| s.aborted && s.state == SlotState::InIo)
        {
            return;
        }
        for d in std::mem::take(&mut self.deferred_tmf) {
            self.send_tmf_response(d.itt, d.response);
            if d.then_close {
                self.phase = Phase::Closing;
            }
        }
    }

    fn send_tmf_response(&mut self, itt: u32, response: u8) {
        let mut h = self.header(Opcode::TaskMgmtResponse, flags::F, itt, true);
        h[2] = response;
        self.push_pdu(&h, &[]);
    }

    fn abort_where(&mut self, pred: impl Fn(&TaskSlot) -> bool) {
        let hits: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.holds_task() && !s.aborted && pred(s))
            .map(|(i, _)| i)
            .collect();
        for i in hits {
            self.abort_slot(i);
        }
    }

    /// Ends a task without a response; one with I/O in flight is freed when it returns.
    fn abort_slot(&mut self, i: usize) {
        self.ready.retain(|&r| r != i);
        // An I/O still queued (not yet taken by next_io) is withdrawn with its task: no
        // io_done will come for it, so the slot is freed now; waiting for one would hold
        // the slot and the task management response for ever.
        let withdrawn = self.io.iter().any(|(r, _)| *r == i);
        self.io.retain(|(r, _)| *r != i);
        if self.slots[i].state == SlotState::InIo && !withdrawn {
            self.slots[i].aborted = true;
        } else {
            self.free_slot(i);
        }
    }

    // ---- SCSI commands -----------------------------------------------------------------

    fn free_slot(&mut self, i: usize) {
        let s = &mut self.slots[i];
        debug_assert_ne!(
            s.state,
            SlotState::Sending,
            "its buffer is lent to the output"
        );
        if !s.immediate && s.holds_task() {
            self.queued = self.queued.saturating_sub(1);
        }
        s.state = SlotState::Free;
        s.task = None;
        s.aborted = false;
        s.r2ts.clear();
    }

    fn scsi_command(&mut self, bhs: &[u8], ahs: &[u8], data: &[u8]) {
        let h = Bhs::new_unchecked(bhs);
        let Some(session) = &self.session else { return };
        let Some(scsi) = session.scsi.clone() else {
            // Discovery sessions carry no SCSI commands (section 4.3).
            self.send_reject(bhs, reject::PROTOCOL_ERROR);
            return;
        };
        let nexus = session.nexus.clone();
        let immediate = h.immediate();
        let itt = h.itt();
        let fl = h.flags();
        let edtl = h.u32_at(field::EDTL) as usize;
        let (read, write) = (fl & flags::R != 0, fl & flags::W != 0);
        if data.len() > edtl || (!write && !data.is_empty()) {
            self.send_reject(bhs, reject::PROTOCOL_ERROR);
            return;
        }
        if data.len() > self.neg.first_burst_length as usize
            || (!self.neg.immediate_data && !data.is_empty())
        {
            self.send_reject(bhs, reject::PROTOCOL_ERROR);
            return;
        }
        let Some(slot) = self.slots.iter().position(|s| s.state == SlotState::Free) else {
            // Only immediate commands can overrun the slots: BUSY (SAM-5).
            self.respond_status(itt, scsi::status::BUSY, &[], 0, 0, 0);
            return;
        };
        if self.slots.iter().any(|s| s.holds_task() && s.itt == itt) {
            self.send_reject(bhs, reject::TASK_IN_PROGRESS);
            return;
        }
        let mut cdb = [0u8; MAX_CDB];
        cdb[..16].copy_from_slice(h.cdb());
        let mut cdb_len = 16;
        if ahs.len() >= 4 && ahs[2] == AHS_EXTENDED_CDB {
            let ahs_len = usize::from(u16::from_be_bytes([ahs[0], ahs[1]]));
            let ext = ahs_len
                .saturating_sub(1)
                .min(ahs.len() - 4)
                .min(MAX_CDB - 16);
            cdb[16..16 + ext].copy_from_slice(&ahs[4..4 + ext]);
            cdb_len += ext;
        }
        let lun_raw = h.lun();
        let lun = decode_lun(lun_raw).unwrap_or(u64::MAX);
        let mut task = scsi.command(&nexus, lun, &cdb[..cdb_len]);
        let mut want = task.data_out_len();
        if cdb[0] == COMPARE_AND_WRITE && cdb[13] == 0 && write && edtl > 0 {
            // SBC-4 lets NUMBER OF LOGICAL BLOCKS 0 be a no-op, but this initiator sends
            // data for it: the field cannot mean what the initiator meant (libiscsi's
            // CompareAndWrite tests send 256 blocks this way and expect the refusal).
            task = scsi::Task::failed(Sense::invalid_cdb(13, None));
            want = 0;
        }
        let edtl_out = if write { edtl } else { 0 };
        let mut need = want.min(edtl_out);
        let mut bad_length = false;
        if need < want {
            // The initiator sends less than the CDB asks for: write only what arrives when
            // it is whole blocks (libiscsi's residual tests, and Linux LIO, expect that).
            match shrink_write(&cdb[..cdb_len], need, &scsi, lun) {
                Some(shrunk) => {
                    task = scsi.command(&nexus, lun, &shrunk[..cdb_len]);
                    need = task.data_out_len().min(need);
                }
                None => bad_length = true,
            }
        }
        let s = &mut self.slots[slot];
        s.state = SlotState::Collecting;
        s.immediate = immediate;
        s.itt = itt;
        s.lun = lun_raw;
        s.cmd_sn = h.cmd_sn();
        s.edtl = edtl;
        s.read = read;
        s.write = write;
        s.task = Some(task);
        s.want_out = want;
        s.need = need;
        s.filled = 0;
        s.bad_length = bad_length;
        s.aborted = false;
        s.buf.set_len(need);
        let n = data.len().min(need);
        s.buf.as_mut_slice()[..n].copy_from_slice(&data[..n]);
        s.filled = n;
        let final_bit = fl & flags::F != 0;
        s.unsolicited_open = write && !final_bit;
        s.unsolicited_sn = 0;
        s.unsolicited_offset = data.len();
        s.unsolicited_limit = if self.neg.initial_r2t {
            data.len()
        } else {
            edtl.min(self.neg.first_burst_length as usize)
        };
        s.next_r2t_offset = if s.unsolicited_open {
            s.unsolicited_limit
        } else {
            data.len()
        };
        s.r2t_sn = 0;
        s.r2ts.clear();
        if !immediate {
            self.queued += 1;
        }
        self.solicit(slot);
        self.check_complete(slot);
    }

    /// Sends R2Ts for the data still needed, up to MaxOutstandingR2T at once.
    fn solicit(&mut self, slot: usize) {
        let max_burst = self.neg.max_burst_length as usize;
        let max_out = self.neg.max_outstanding_r2t as usize;
        loop {
            let s = &self.slots[slot];
            if s.state != SlotState::Collecting
                || s.next_r2t_offset >= s.need
                || s.r2ts.len() >= max_out
            {
                return;
            }
            let offset = s.next_r2t_offset;
            let len = (s.need - offset).min(max_burst);
            let (itt, lun, r2t_sn) = (s.itt, s.lun, s.r2t_sn);
            let mut h = self.header(Opcode::R2t, flags::F, itt, false);
            let mut v = Bhs::new_unchecked(&mut h[..]);
            v.set_lun(lun);
            v.set_u32(field::TTT, slot as u32);
            v.set_u32(field::DATA_SN, r2t_sn);
            v.set_u32(field::BUFFER_OFFSET, offset as u32);
            v.set_u32(field::DESIRED_LEN, len as u32);
            self.push_pdu(&h, &[]);
            let s = &mut self.slots[slot];
            s.r2t_sn += 1;
            s.next_r2t_offset += len;
            s.r2ts.push(R2t {
                offset,
                len,
                received: 0,
                next_data_sn: 0,
            });
        }
    }

    /// The slot collecting the data of a Data-Out with this ITT and TTT.
    fn data_out_slot(&self, itt: u32, ttt: u32) -> Option<usize> {
        if ttt == RESERVED_TAG {
            self.slots
                .iter()
                .position(|s| s.state == SlotState::Collecting && s.itt == itt)
        } else {
            usize::try_from(ttt)
                .ok()
                .filter(|&i| i < self.slots.len())
                .filter(|&i| {
                    self.slots[i].state == SlotState::Collecting && self.slots[i].itt == itt
                })
        }
    }

    /// Where the `len` data bytes of the Data-Out with header `bhs` go when
    /// [`Self::data_out`] will take them (slot, buffer offset, bytes kept), from the header
    /// alone and changing nothing; `None` when they will be dropped or refused.
    fn data_out_placement(&self, bhs: &[u8], len: usize) -> Option<(usize, usize, usize)> {
        let h = Bhs::new_unchecked(bhs);
        let ttt = h.u32_at(field::TTT);
        let slot = self.data_out_slot(h.itt(), ttt)?;
        let s = &self.slots[slot];
        if s.task.as_ref().is_some_and(scsi::Task::aborted) {
            return None;
        }
        let offset = h.u32_at(field::BUFFER_OFFSET) as usize;
        s.check_data(ttt == RESERVED_TAG, offset, len, h.u32_at(field::DATA_SN))
            .ok()?;
        let (at, take) = s.placement(offset, len)?;
        Some((slot, at, take))
    }

    fn data_out(&mut self, bhs: &[u8], data: Incoming<'_>) {
        let h = Bhs::new_unchecked(bhs);
        let itt = h.itt();
        let ttt = h.u32_at(field::TTT);
        let data_sn = h.u32_at(field::DATA_SN);
        let offset = h.u32_at(field::BUFFER_OFFSET) as usize;
        let final_bit = h.final_bit();
        let mut hdr = [0u8; BHS_LEN];
        hdr.copy_from_slice(bhs);
        let Some(slot) = self.data_out_slot(itt, ttt) else {
            if ttt == RESERVED_TAG {
                // Unsolicited data of a command that was ignored (outside the CmdSN
                // window) or aborted: dropped with it.
                return;
            }
            if usize::try_from(ttt)
                .ok()
                .and_then(|i| self.slots.get(i))
                .is_some_and(|s| !s.holds_task())
            {
                // Data for a command that already failed or was aborted.
                return;
            }
            self.send_reject(bhs, reject::INVALID_PDU_FIELD);
            return;
        };
        let unsolicited = ttt == RESERVED_TAG;
        if self.slots[slot]
            .task
            .as_ref()
            .is_some_and(scsi::Task::aborted)
        {
            // Another session's PREEMPT AND ABORT ended the task: no more R2Ts, no status
            // (TAS 0); the rest of its data is dropped like that of any aborted task.
            self.free_slot(slot);
            return;
        }
        match self.slots[slot].accept_data(unsolicited, offset, data, data_sn, final_bit) {
            Ok(()) => {}
            Err(DataError::Fatal(why)) => {
                self.protocol_error(&hdr, reject::PROTOCOL_ERROR, why);
                return;
            }
            Err(DataError::Sequence(why)) => {
                // ERL 0 cannot recover the sequence, but the connection can go on: the
                // command fails (ABORTED COMMAND, DATA PHASE ERROR) and the rest of its
                // data is dropped. Dropping the connection instead would make the
                // initiator log in again with other parameters (libiscsi's
                // iSCSIDataSnInvalid test counts on the session surviving).
                self.events.push(ConnEvent::ProtocolError(format!(
                    "{why}: the command fails, the connection stays"
                )));
                self.slots[slot].r2ts.clear();
                let sense = Sense::new(key::ABORTED_COMMAND, DATA_PHASE_ERROR).to_bytes(false);
                self.complete(slot, scsi::status::CHECK_CONDITION, &sense, 0);
                return;
            }
        }
        self.solicit(slot);
        self.check_complete(slot);
    }

    fn check_complete(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if s.state == SlotState::Collecting && s.data_complete() {
            s.state = SlotState::Ready;
            self.ready.push_back(slot);
        }
    }

    /// Steps every ready task until it needs I/O or is done.
    fn run_ready(&mut self) {
        while let Some(slot) = self.ready.pop_front() {
            if self.slots[slot].state != SlotState::Ready {
                continue;
            }
            if self.slots[slot].bad_length {
                // SPC-4: the iSCSI EDTL cuts a block: INVALID FIELD IN INFORMATION UNIT.
                let sense = Sense::illegal(INVALID_FIELD_IN_INFORMATION_UNIT).to_bytes(false);
                self.complete(slot, scsi::status::CHECK_CONDITION, &sense, 0);
                continue;
            }
            self.advance(slot, None);
        }
        self.run_waiting();
    }

    /// Steps the tasks waiting on other sessions.
    fn run_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        for slot in std::mem::take(&mut self.waiting) {
            if self.slots[slot].state == SlotState::Waiting {
                self.advance(slot, None);
            }
        }
    }

    fn advance(&mut self, slot: usize, outcome: Option<IoOutcome>) {
        let s = &mut self.slots[slot];
        let Some(task) = s.task.as_mut() else {
            self.free_slot(slot);
            return;
        };
        match task.step(&mut s.buf, outcome) {
            Step::Io(io) => {
                s.state = SlotState::InIo;
                self.io.push_back((slot, io));
            }
            Step::Done(c) => self.complete(slot, c.status, &c.sense, c.data_in),
            Step::Aborted => self.free_slot(slot),
            Step::Wait => {
                s.state = SlotState::Waiting;
                if !self.waiting.contains(&slot) {
                    self.waiting.push(slot);
                }
            }
        }
    }

    /// Sends a task's data and status, and frees its slot.
    fn complete(&mut self, slot: usize, status: u8, sense: &[u8], data_in: usize) {
        let s = &self.slots[slot];
        let (itt, lun, edtl) = (s.itt, s.lun, s.edtl);
        // Residuals (section 11.4.5): against the data the command moves.
        let (residual_flag, residual) = if s.want_out > 0 || s.write {
            let edtl_out = if s.write { edtl } else { 0 };
            if s.want_out > edtl_out {
                (flags::O, s.want_out - edtl_out)
            } else {
                (
                    if edtl_out > s.want_out { flags::U } else { 0 },
                    edtl_out - s.want_out,
                )
            }
        } else {
            let edtl_in = if s.read { edtl } else { 0 };
            if data_in > edtl_in {
                (flags::O, data_in - edtl_in)
            } else {
                (
                    if edtl_in > data_in { flags::U } else { 0 },
                    edtl_in - data_in,
                )
            }
        };
        let send = if s.read { data_in.min(edtl) } else { 0 };
        let collapse = status == scsi::status::GOOD && sense.is_empty() && send > 0;
        // The task is over: its slot leaves the CmdSN window before the headers are built,
        // so the status carries the MaxCmdSN the freed slot allows (otherwise it lags a PDU
        // behind, and stays closed for an initiator that filled the window). The data is
        // sent from the slot's buffer, which stays taken (Sending) until it went out.
        //
        // Only this task's own Data-In headers can show the initiator that window before
        // its data was consumed (whatever was built earlier went out before them, whatever
        // later comes after), so at most one Sending slot lies beyond the window the
        // initiator knows: the IMMEDIATE_SLOTS past the window leave room for it.
        self.free_slot(slot);
        let mut data_sn = 0u32;
        if send > 0 {
            let mrdsl = self.neg.initiator_mrdsl as usize;
            let burst = self.neg.max_burst_length as usize;
            let mut off = 0;
            while off < send {
                let burst_end = (off / burst + 1) * burst;
                let n = (send - off).min(mrdsl).min(burst_end - off);
                let last = off + n == send;
                let mut fl = 0;
                if last || off + n == burst_end {
                    fl |= flags::F;
                }
                let with_status = last && collapse;
                if with_status {
                    fl |= flags::S | residual_flag;
                }
                let mut h = self.header(Opcode::DataIn, fl, itt, with_status);
                let mut v = Bhs::new_unchecked(&mut h[..]);
                if with_status {
                    v.set_byte(3, status);
                    v.set_u32(field::RESIDUAL, residual as u32);
                } else {
                    // StatSN is reserved without the S bit.
                    v.set_u32(field::STAT_SN, 0);
                }
                v.set_lun(lun);
                v.set_u32(field::TTT, RESERVED_TAG);
                v.set_u32(field::DATA_SN, data_sn);
                v.set_u32(field::BUFFER_OFFSET, off as u32);
                self.lend_pdu(&h, slot, off, n, last);
                data_sn += 1;
                off += n;
            }
            self.slots[slot].state = SlotState::Sending;
        }
        if !collapse {
            self.respond_status(itt, status, sense, residual_flag, residual, data_sn);
        }
    }

    /// A SCSI Response; `exp_data_sn` counts the Data-In PDUs sent before it.
    fn respond_status(
        &mut self,
        itt: u32,
        status: u8,
        sense: &[u8],
        residual_flag: u8,
        residual: usize,
        exp_data_sn: u32,
    ) {
        let mut h = self.header(Opcode::ScsiResponse, flags::F | residual_flag, itt, true);
        h[2] = 0; // Command completed at target.
        h[3] = status;
        let mut v = Bhs::new_unchecked(&mut h[..]);
        v.set_u32(field::RESIDUAL, residual as u32);
        v.set_u32(field::DATA_SN, exp_data_sn);
        let mut data = Vec::new();
        if !sense.is_empty() {
            data.extend_from_slice(&(sense.len() as u16).to_be_bytes());
            data.extend_from_slice(sense);
        }
        self.push_pdu(&h, &data);
    }
}

pub use crate::scsi::{decode_lun, encode_lun};

/// The output sent the last of a slot's Data-In data: the slot is free for the next task.
fn release_sent(s: &mut TaskSlot) {
    if s.state == SlotState::Sending {
        s.state = SlotState::Free;
    }
}

/// A WRITE (6/10/12/16) or WRITE AND VERIFY (10/12/16) CDB cut to `bytes`, when that is a
/// whole number of the LUN's blocks; `None` when it is not, or for any other command.
fn shrink_write(cdb: &[u8], bytes: usize, scsi: &ScsiTarget, lun: u64) -> Option<Vec<u8>> {
    let lu = scsi.lu(lun)?;
    let bs = lu.config().block_size as usize;
    if bs == 0 || !bytes.is_multiple_of(bs) {
        return None;
    }
    let blocks = bytes / bs;
    let mut c = cdb.to_vec();
    match c.first()? {
        // WRITE(6): a length of 0 means 256 blocks, so it cannot express 0.
        0x0a if blocks > 0 && blocks < 256 => c[4] = blocks as u8,
        0x2a | 0x2e => c
            .get_mut(7..9)?
            .copy_from_slice(&u16::try_from(blocks).ok()?.to_be_bytes()),
        0xaa | 0xae => c
            .get_mut(6..10)?
            .copy_from_slice(&u32::try_from(blocks).ok()?.to_be_bytes()),
        0x8a | 0x8e => c
            .get_mut(10..14)?
            .copy_from_slice(&u32::try_from(blocks).ok()?.to_be_bytes()),
        _ => return None,
    }
    Some(c)
}

fn lock(r: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
