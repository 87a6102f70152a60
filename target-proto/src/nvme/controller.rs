//! The NVMe-oF controller at capsule level, independent of the transport: one
//! [`QueueController`] per submission queue takes an SQE (and the data the host sent with
//! it) and returns a [`Plan`]: respond now, submit block I/O and respond when it
//! completes, or hold the command (Asynchronous Event Request).
//!
//! Specs: NVMe Base 2.x sections 3.1.4 (properties), 5 (admin commands), 6 (Fabrics
//! commands: Connect, Property Get/Set, Disconnect); NVM Command Set 1.x section 3 (I/O
//! commands). Where Linux's nvme host relies on a behaviour, the code says so.

use std::sync::Mutex;

use target_wire::nvme::fabrics::{
    self, ConnectData, ConnectRepr, PropertyGetRepr, PropertySetRepr, PropertySize, cattr,
};
use target_wire::nvme::identify::oaes;
use target_wire::nvme::opcode::{
    AdminOpcode, FABRICS_OPCODE, FabricsType, FeatureId, IoOpcode, LogPageId,
};
use target_wire::nvme::properties::{self as prop, Cap, Cc, Csts, Shn, Shst};
use target_wire::nvme::sqe::{Sqe, dsm_range};
use target_wire::nvme::status::{CommandSpecificStatus, GenericStatus, MediaStatus, Status};

use std::net::IpAddr;

pub use crate::block::{ALL_BACKENDS, BlockIo, BlockOp, IoOutcome};

use super::admin::{self, TransportLimits};
use super::subsystem::{Attached, ConnectError, Namespace, Registry, Subsystem};

/// Largest data transfer per command: MDTS 5 with a 4 KiB minimum page size.
pub const MDTS_SHIFT: u8 = 5;
pub const MAX_TRANSFER: usize = 4096 << MDTS_SHIFT;
/// Entries per submission queue the controller supports (CAP.MQES + 1).
pub const MAX_QUEUE_ENTRIES: u16 = 128;
/// I/O queues one controller grants at most.
pub const MAX_IO_QUEUES: u16 = 64;
/// Asynchronous Event Requests held at once (Identify AERL + 1).
pub const MAX_AERS: usize = 4;
/// Dataset Management limits (NVM Command Set Identify Controller, CNS 06h): logical blocks
/// per range (DMRSL) and per command (DMSL). As iSCSI's UNMAP (`scsi::MAX_UNMAP_BLOCKS`):
/// 2^20 blocks, 512 MiB of 512-byte or 4 GiB of 4 KiB blocks. Linux caps each discard
/// request at DMRSL, so it never meets DMSL. DMRL is not limited below the 256 ranges
/// a command can carry (it reads 0, "no limit": the field has 8 bits).
pub const DSM_RANGE_BLOCKS_LIMIT: u32 = 1 << 20;
pub const DSM_BLOCKS_LIMIT: u64 = 1 << 20;
/// Write Zeroes Size Limit (WZSL): 2^12 units of CAP.MPSMIN (4 KiB), 16 MiB, as iSCSI's
/// WRITE SAME limit for 512-byte blocks (`scsi::MAX_WRITE_SAME_BLOCKS`).
pub const WZSL: u8 = 12;
pub const WRITE_ZEROES_MAX_BYTES: u64 = 4096 << WZSL;
/// Extra time on top of KATO before the controller gives up on a silent host (the keep
/// alive granularity the controller reports is 100 ms; Linux sends Keep Alive every KATO/2).
const KATO_GRACE_MS: u64 = 1000;

/// Offsets in the Connect SQE and data, for the Invalid Parameters result (IATTR/IPO).
const CONNECT_QID_OFFSET: u16 = 42;
const CONNECT_SQSIZE_OFFSET: u16 = 44;
const CONNECT_DATA_HOSTID_OFFSET: u16 = 0;
const CONNECT_DATA_CNTLID_OFFSET: u16 = 16;
const CONNECT_DATA_SUBNQN_OFFSET: u16 = 256;
const CONNECT_DATA_HOSTNQN_OFFSET: u16 = 512;

/// Asynchronous Event Request completion DW0 of a Namespace Attribute Changed notice
/// without its log page: event type Notice (2h), information 00h.
const AEN_NOTICE: u32 = 0x2;

/// NVMe 2.0.
pub(crate) const VERSION: u32 = 0x0002_0000;

/// Data that goes to the host with the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseData {
    None,
    /// Built by the controller (Identify, log pages).
    Owned(Vec<u8>),
    /// The first `n` bytes of the command's buffer (reads).
    InBuffer(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
    pub data: ResponseData,
}

impl Response {
    pub fn status(status: Status) -> Self {
        Self {
            status,
            dw0: 0,
            dw1: 0,
            data: ResponseData::None,
        }
    }

    pub fn ok() -> Self {
        Self::status(Status::generic(GenericStatus::Success))
    }

    pub(crate) fn with_dw0(mut self, dw0: u32) -> Self {
        self.dw0 = dw0;
        self
    }

    pub(crate) fn with_data(mut self, data: Vec<u8>) -> Self {
        self.data = ResponseData::Owned(data);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Respond(Response),
    Io(BlockIo),
    /// An Asynchronous Event Request: answered when an event occurs, or never.
    Hold,
    /// Disconnect: answer, then the transport closes the queue.
    RespondAndClose(Response),
}

/// Admin-queue state of a controller: properties and features.
#[derive(Clone, Debug, Default)]
struct AdminState {
    cc: Cc,
    csts: Csts,
    io_queues: u16,
    async_event_config: u32,
    volatile_write_cache: bool,
    aers: usize,
}

/// One submission queue of a controller (the admin queue or an I/O queue).
#[derive(Debug)]
pub struct QueueController {
    attached: Option<Attached>,
    qid: u16,
    host_nqn: String,
    sq_entries: u16,
    sqhd: u16,
    /// Connect CATTR "disable SQ flow control": SQHD is not reported, so C2HData may carry
    /// the SUCCESS flag instead of a response capsule.
    sq_flow_control_disabled: bool,
    kato_ms: u32,
    last_keep_alive_ms: u64,
    admin: AdminState,
    limits: TransportLimits,
    /// The local address the host reached, for discovery log entries of wildcard ports.
    local: Option<IpAddr>,
}

impl QueueController {
    pub fn new(limits: TransportLimits, local: Option<IpAddr>) -> Self {
        Self {
            limits,
            local,
            attached: None,
            qid: 0,
            host_nqn: String::new(),
            sq_entries: MAX_QUEUE_ENTRIES,
            sqhd: 0,
            sq_flow_control_disabled: false,
            kato_ms: 0,
            last_keep_alive_ms: 0,
            admin: AdminState::default(),
        }
    }

    /// The queue ID, once connected.
    pub fn qid(&self) -> Option<u16> {
        self.attached.as_ref().map(|_| self.qid)
    }

    pub fn cntlid(&self) -> Option<u16> {
        self.attached.as_ref().map(|a| a.cntlid)
    }

    /// Entries in this submission queue (from Connect SQSIZE), which bounds the commands
    /// outstanding at once.
    pub fn sq_entries(&self) -> u16 {
        self.sq_entries
    }

    pub fn sq_flow_control_disabled(&self) -> bool {
        self.sq_flow_control_disabled
    }

    /// The SQ head to report in the next completion (each command consumed one entry).
    pub fn next_sqhd(&mut self) -> u16 {
        self.sqhd = (self.sqhd + 1) % self.sq_entries.max(1);
        self.sqhd
    }

    /// Executes a command. `data` is what the host sent with it (in-capsule or via R2T),
    /// exactly the SGL's length.
    pub fn execute(
        &mut self,
        sqe: &Sqe<&[u8]>,
        data: &[u8],
        registry: &Mutex<Registry>,
        now_ms: u64,
    ) -> Plan {
        if sqe.opcode() == FABRICS_OPCODE {
            return self.fabrics(sqe, data, registry, now_ms);
        }
        self.refresh(registry);
        let Some(attached) = self.attached.clone() else {
            // Nothing but Connect before Connect.
            return respond(Status::generic(GenericStatus::CommandSequenceError));
        };
        if self.qid == 0 {
            self.last_keep_alive_ms = now_ms;
            self.admin_command(sqe, data, &attached, registry)
        } else {
            io_command(sqe, data, &attached.subsystem)
        }
    }

    /// Takes the subsystem as it is now when it changed (namespaces added, removed or
    /// resized) since this queue last looked: one atomic load while nothing changed.
    fn refresh(&mut self, registry: &Mutex<Registry>) {
        let Some(a) = self.attached.as_mut().filter(|a| a.stale()) else {
            return;
        };
        if let Some((subsystem, epoch)) = lock(registry).refresh(a) {
            a.subsystem = subsystem;
            a.seen_epoch = epoch;
        }
    }

    /// An event for one of the admin queue's held Asynchronous Event Requests, if one is
    /// due: a Namespace Attribute Changed notice when the subsystem's namespaces changed
    /// and the host enabled the notice (Set Features Asynchronous Event Configuration bit
    /// 8, as Linux does when OAES reports it). The caller answers a held command with it.
    pub fn take_event(&mut self, registry: &Mutex<Registry>) -> Option<Response> {
        let a = self.attached.as_ref()?;
        if self.qid != 0
            || self.admin.aers == 0
            || a.discovery
            || self.admin.async_event_config & oaes::NAMESPACE_ATTRIBUTE_NOTICES == 0
            || !lock(registry).take_namespace_notice(a)
        {
            return None;
        }
        self.admin.aers -= 1;
        // Completion DW0: event type Notice (2h), information Namespace Attribute Changed
        // (00h), log page Changed Namespace List (04h).
        Some(
            Response::ok().with_dw0(
                AEN_NOTICE | (u32::from(u8::from(LogPageId::ChangedNamespaceList)) << 16),
            ),
        )
    }

    /// Turns a finished block operation into the response.
    pub fn io_done(&self, io: &BlockIo, outcome: IoOutcome) -> Response {
        let status = match outcome {
            IoOutcome::Ok => Status::generic(GenericStatus::Success),
            IoOutcome::Miscompare => Status::media(MediaStatus::CompareFailure),
            IoOutcome::ReadError => Status::media(MediaStatus::UnrecoveredReadError),
            IoOutcome::WriteError => Status::media(MediaStatus::WriteFault),
        };
        if let (Some(a), IoOutcome::Ok) = (&self.attached, outcome) {
            let add = |c: &std::sync::atomic::AtomicU64, n: u64| {
                c.fetch_add(n, std::sync::atomic::Ordering::Relaxed)
            };
            match io.op {
                BlockOp::Read { len, .. } | BlockOp::Compare { len, .. } => {
                    add(&a.stats.read_commands, 1);
                    add(&a.stats.bytes_read, len);
                }
                BlockOp::Write { len, .. } => {
                    add(&a.stats.write_commands, 1);
                    add(&a.stats.bytes_written, len);
                }
                _ => {}
            }
        }
        let mut r = Response::status(status);
        if let (BlockOp::Read { len, .. }, IoOutcome::Ok) = (&io.op, outcome) {
            r.data = ResponseData::InBuffer(*len as usize);
        }
        r
    }

    /// Whether the host's keep-alive is overdue (admin queue with a KATO only).
    pub fn keep_alive_expired(&self, now_ms: u64) -> bool {
        self.qid == 0
            && self.attached.is_some()
            && self.kato_ms > 0
            && now_ms.saturating_sub(self.last_keep_alive_ms)
                > u64::from(self.kato_ms) + KATO_GRACE_MS
    }

    /// Whether the queue's controller still exists: an I/O queue's ends with its admin
    /// queue, every queue's when its subsystem is removed.
    pub fn controller_alive(&self, registry: &Mutex<Registry>) -> bool {
        match &self.attached {
            Some(a) if !a.discovery => lock(registry).controller_alive(a),
            _ => true,
        }
    }

    /// The queue is gone: an admin queue takes its controller with it.
    pub fn teardown(&mut self, registry: &Mutex<Registry>) {
        if let Some(a) = self.attached.take() {
            let mut r = lock(registry);
            if self.qid == 0 {
                r.remove_controller(&a);
            } else {
                r.detach_io_queue(&a, self.qid);
            }
        }
    }

    fn fabrics(
        &mut self,
        sqe: &Sqe<&[u8]>,
        data: &[u8],
        registry: &Mutex<Registry>,
        now_ms: u64,
    ) -> Plan {
        match sqe.fctype() {
            FabricsType::Connect => self.connect(sqe, data, registry, now_ms),
            _ if self.attached.is_none() => {
                respond(Status::generic(GenericStatus::CommandSequenceError))
            }
            FabricsType::PropertyGet if self.qid == 0 => self.property_get(sqe),
            FabricsType::PropertySet if self.qid == 0 => self.property_set(sqe, registry),
            FabricsType::Disconnect => Plan::RespondAndClose(Response::ok()),
            _ => respond(Status::generic(GenericStatus::InvalidOpcode)),
        }
    }

    fn connect(
        &mut self,
        sqe: &Sqe<&[u8]>,
        data: &[u8],
        registry: &Mutex<Registry>,
        now_ms: u64,
    ) -> Plan {
        if self.attached.is_some() {
            return respond(Status::generic(GenericStatus::CommandSequenceError));
        }
        let invalid = |in_data: bool, offset: u16| {
            Plan::Respond(
                Response::status(Status::command_specific(
                    CommandSpecificStatus::ConnectInvalidParameters,
                ))
                .with_dw0(fabrics::connect_invalid_param_dw0(in_data, offset)),
            )
        };
        let Ok(c) = ConnectRepr::parse(sqe) else {
            return respond(Status::invalid_field());
        };
        if c.recfmt != 0 {
            return respond(Status::command_specific(
                CommandSpecificStatus::ConnectIncompatibleFormat,
            ));
        }
        let Ok(d) = ConnectData::new_checked(data) else {
            return respond(Status::generic(GenericStatus::DataSglLengthInvalid));
        };
        if c.sqsize == 0 || c.sqsize >= MAX_QUEUE_ENTRIES {
            return invalid(false, CONNECT_SQSIZE_OFFSET);
        }
        let qid = c.qid;
        let cntlid = d.cntlid();
        let Some(sub_nqn) = d.subnqn().ok().filter(|n| !n.is_empty()) else {
            return invalid(true, CONNECT_DATA_SUBNQN_OFFSET);
        };
        let Some(host_nqn) = d.hostnqn().ok().filter(|n| !n.is_empty()) else {
            return invalid(true, CONNECT_DATA_HOSTNQN_OFFSET);
        };
        let host_id = d.hostid();
        let result = {
            let mut r = lock(registry);
            if qid == 0 {
                r.create_controller(sub_nqn, host_nqn, host_id)
            } else {
                r.attach_io_queue(cntlid, sub_nqn, host_nqn, host_id, qid)
            }
        };
        let attached = match result {
            Ok(a) => a,
            Err(ConnectError::UnknownSubsystem) => {
                return invalid(true, CONNECT_DATA_SUBNQN_OFFSET);
            }
            Err(ConnectError::UnknownController) => {
                return invalid(true, CONNECT_DATA_CNTLID_OFFSET);
            }
            Err(ConnectError::HostIdMismatch) => {
                return invalid(true, CONNECT_DATA_HOSTID_OFFSET);
            }
            Err(ConnectError::InvalidQueue) => return invalid(false, CONNECT_QID_OFFSET),
            Err(ConnectError::HostNotAllowed) => {
                return respond(Status::command_specific(
                    CommandSpecificStatus::ConnectInvalidHost,
                ));
            }
            Err(ConnectError::Busy) => {
                return respond(Status::command_specific(
                    CommandSpecificStatus::ConnectControllerBusy,
                ));
            }
            Err(ConnectError::NotReady) => {
                return respond(Status::generic(GenericStatus::CommandSequenceError));
            }
        };
        let cntlid = attached.cntlid;
        self.qid = qid;
        self.host_nqn = host_nqn.to_string();
        self.sq_entries = c.sqsize + 1;
        self.sq_flow_control_disabled = c.cattr & cattr::DISABLE_SQ_FLOW_CONTROL != 0;
        if qid == 0 {
            self.kato_ms = c.kato;
            self.last_keep_alive_ms = now_ms;
            self.admin = AdminState {
                volatile_write_cache: true,
                ..AdminState::default()
            };
        }
        self.attached = Some(attached);
        Plan::Respond(Response::ok().with_dw0(fabrics::connect_success_dw0(cntlid, 0)))
    }

    fn property_get(&self, sqe: &Sqe<&[u8]>) -> Plan {
        let Ok(p) = PropertyGetRepr::parse(sqe) else {
            return respond(Status::invalid_field());
        };
        let value: u64 = match p.offset {
            prop::CAP => cap().0,
            prop::VS => u64::from(VERSION),
            prop::CC => u64::from(self.admin.cc.0),
            prop::CSTS => u64::from(self.admin.csts.0),
            _ => return respond(Status::invalid_field()),
        };
        if prop::property_size(p.offset) != Some(p.size) {
            return respond(Status::invalid_field());
        }
        let mut r = Response::ok();
        r.dw0 = value as u32;
        r.dw1 = (value >> 32) as u32;
        Plan::Respond(r)
    }

    fn property_set(&mut self, sqe: &Sqe<&[u8]>, registry: &Mutex<Registry>) -> Plan {
        let Ok(p) = PropertySetRepr::parse(sqe) else {
            return respond(Status::invalid_field());
        };
        if p.offset != prop::CC || p.size != PropertySize::Four {
            return respond(Status::invalid_field());
        }
        let cc = Cc(p.value as u32);
        let was_enabled = self.admin.cc.en();
        self.admin.cc = cc;
        let cntlid = self.cntlid().expect("property set needs Connect");
        if cc.en() && !was_enabled {
            // IOSQES 6 (64-byte SQEs) and IOCQES 4 (16-byte CQEs) are the only sizes.
            if cc.iosqes() != 6 || cc.iocqes() != 4 {
                self.admin.csts = self.admin.csts.with_cfs(true);
                return respond(Status::invalid_field());
            }
            self.admin.csts = self.admin.csts.with_cfs(false).with_rdy(true);
            lock(registry).set_ready(cntlid, true);
        } else if !cc.en() && was_enabled {
            self.admin.csts = self.admin.csts.with_rdy(false);
            lock(registry).set_ready(cntlid, false);
        }
        // Nothing to flush in the controller itself: a shutdown completes at once.
        let shst = if cc.shn() == Shn::None {
            Shst::Normal
        } else {
            Shst::Complete
        };
        self.admin.csts = self.admin.csts.with_shst(shst);
        Plan::Respond(Response::ok())
    }

    fn admin_command(
        &mut self,
        sqe: &Sqe<&[u8]>,
        data: &[u8],
        attached: &Attached,
        registry: &Mutex<Registry>,
    ) -> Plan {
        let op = sqe.admin_opcode();
        if attached.discovery
            && !matches!(
                op,
                AdminOpcode::Identify
                    | AdminOpcode::GetLogPage
                    | AdminOpcode::KeepAlive
                    | AdminOpcode::SetFeatures
                    | AdminOpcode::GetFeatures
                    | AdminOpcode::AsyncEventRequest
            )
        {
            return respond(Status::invalid_opcode());
        }
        if !self.admin.csts.rdy() && !matches!(op, AdminOpcode::KeepAlive) {
            // Admin commands other than Fabrics need an enabled controller.
            return respond(Status::generic(GenericStatus::CommandSequenceError));
        }
        match op {
            AdminOpcode::Identify => Plan::Respond(admin::identify(
                sqe,
                attached,
                self.admin.volatile_write_cache,
                self.limits,
            )),
            AdminOpcode::GetLogPage => Plan::Respond(admin::get_log_page(
                sqe,
                attached,
                &mut lock(registry),
                &self.host_nqn,
                self.local,
            )),
            AdminOpcode::KeepAlive => Plan::Respond(Response::ok()),
            AdminOpcode::Abort => {
                // Commands are not aborted; bit 0 of DW0 says so.
                Plan::Respond(Response::ok().with_dw0(1))
            }
            AdminOpcode::AsyncEventRequest => {
                if self.admin.aers >= MAX_AERS {
                    return respond(Status::command_specific(
                        CommandSpecificStatus::AsyncEventRequestLimitExceeded,
                    ));
                }
                self.admin.aers += 1;
                Plan::Hold
            }
            AdminOpcode::SetFeatures => self.set_features(sqe, data, attached, registry),
            AdminOpcode::GetFeatures => self.get_features(sqe, attached),
            _ => respond(Status::invalid_opcode()),
        }
    }

    fn set_features(
        &mut self,
        sqe: &Sqe<&[u8]>,
        _data: &[u8],
        attached: &Attached,
        registry: &Mutex<Registry>,
    ) -> Plan {
        if sqe.feature_save() {
            return respond(Status::command_specific(
                CommandSpecificStatus::FeatureIdentifierNotSaveable,
            ));
        }
        let dw11 = sqe.cdw11();
        match sqe.feature_id() {
            FeatureId::NumberOfQueues if !attached.discovery => {
                let nsqr = dw11 as u16;
                let ncqr = (dw11 >> 16) as u16;
                if nsqr == 0xffff || ncqr == 0xffff {
                    return respond(Status::invalid_field());
                }
                // 0's based both ways; grant what was asked up to the limit.
                let granted = (nsqr.max(ncqr) + 1).min(MAX_IO_QUEUES);
                self.admin.io_queues = granted;
                lock(registry).set_io_queues(attached.cntlid, granted);
                let g = u32::from(granted - 1);
                Plan::Respond(Response::ok().with_dw0(g | (g << 16)))
            }
            FeatureId::KeepAliveTimer => {
                self.kato_ms = dw11;
                Plan::Respond(Response::ok())
            }
            FeatureId::AsyncEventConfiguration => {
                self.admin.async_event_config = dw11;
                Plan::Respond(Response::ok())
            }
            // The cache (a backend's page cache) cannot be switched off: I/O queues would
            // not learn of it. Hosts get durability from Flush and FUA, as Linux does with
            // any write-back device.
            FeatureId::VolatileWriteCache if !attached.discovery => respond(
                Status::command_specific(CommandSpecificStatus::FeatureNotChangeable),
            ),
            _ => respond(Status::invalid_field()),
        }
    }

    fn get_features(&self, sqe: &Sqe<&[u8]>, attached: &Attached) -> Plan {
        let value = match sqe.feature_id() {
            FeatureId::NumberOfQueues if !attached.discovery => {
                let g = u32::from(self.admin.io_queues.max(1) - 1);
                g | (g << 16)
            }
            FeatureId::KeepAliveTimer => self.kato_ms,
            FeatureId::AsyncEventConfiguration => self.admin.async_event_config,
            FeatureId::VolatileWriteCache if !attached.discovery => u32::from(
                attached
                    .subsystem
                    .namespaces
                    .iter()
                    .any(|n| n.volatile_write_cache),
            ),
            FeatureId::Arbitration | FeatureId::PowerManagement | FeatureId::ErrorRecovery => 0,
            _ => return respond(Status::invalid_field()),
        };
        Plan::Respond(Response::ok().with_dw0(value))
    }
}

fn respond(status: Status) -> Plan {
    Plan::Respond(Response::status(status))
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    // A panic while holding the lock cannot leave the registry half-changed in a way that
    // matters more than refusing every later connect, so the poison is cleared.
    registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CAP: MQES, CQR, TO 7.5 s, the NVM command set, MPSMIN = MPSMAX = 4 KiB.
fn cap() -> Cap {
    Cap(0)
        .with_mqes(MAX_QUEUE_ENTRIES - 1)
        .with_cqr(true)
        .with_to(15)
        .with_css(prop::CSS_NVM)
}

/// Validates an I/O command and turns it into a block operation.
fn io_command(sqe: &Sqe<&[u8]>, data: &[u8], subsystem: &Subsystem) -> Plan {
    let op = sqe.io_opcode();
    let nsid = sqe.nsid();
    if op == IoOpcode::Flush {
        // Flush of all namespaces (FFFFFFFFh, VWC "flush all supported") means all of this
        // controller's subsystem, so it names their backends: one host must not make the
        // target sync every other subsystem's files.
        let (backend, op) = match subsystem.namespace(nsid) {
            Some(ns) => (ns.backend, BlockOp::Flush),
            None if nsid == u32::MAX => {
                let mut backends: Vec<u32> =
                    subsystem.namespaces.iter().map(|n| n.backend).collect();
                backends.sort_unstable();
                backends.dedup();
                (ALL_BACKENDS, BlockOp::FlushAll { backends })
            }
            None => return respond(Status::invalid_namespace()),
        };
        return Plan::Io(BlockIo { nsid, backend, op });
    }
    let Some(ns) = subsystem.namespace(nsid) else {
        return match op {
            IoOpcode::Unknown(_) => respond(Status::invalid_opcode()),
            _ => respond(Status::invalid_namespace()),
        };
    };
    if reservation_conflict(ns, op) {
        // DNR: the command fails the same way until the reservation changes (as Linux's
        // target answers).
        return respond(Status::generic(GenericStatus::ReservationConflict).with_dnr());
    }
    match op {
        IoOpcode::Read | IoOpcode::Write | IoOpcode::Compare | IoOpcode::WriteZeroes => {
            let (offset, len) = match lba_range(ns, sqe.slba(), u64::from(sqe.block_count())) {
                Ok(r) => r,
                Err(plan) => return plan,
            };
            let needs_data = op != IoOpcode::WriteZeroes;
            if needs_data && len > MAX_TRANSFER as u64 {
                return respond(Status::invalid_field());
            }
            // Beyond WZSL: Invalid Field in Command, DNR (as for MDTS above).
            if !needs_data && len > WRITE_ZEROES_MAX_BYTES {
                return respond(Status::invalid_field());
            }
            let io = match op {
                IoOpcode::Read => BlockOp::Read { offset, len },
                IoOpcode::Write => BlockOp::Write {
                    offset,
                    len,
                    fua: sqe.fua(),
                },
                IoOpcode::Compare => BlockOp::Compare { offset, len },
                _ => BlockOp::WriteZeroes {
                    offset,
                    len,
                    deallocate: sqe.deac() && ns.deallocate,
                    fua: sqe.fua(),
                },
            };
            if matches!(op, IoOpcode::Write | IoOpcode::Compare) && data.len() as u64 != len {
                return respond(Status::generic(GenericStatus::DataSglLengthInvalid));
            }
            Plan::Io(BlockIo {
                nsid,
                backend: ns.backend,
                op: io,
            })
        }
        IoOpcode::DatasetManagement => {
            let count = usize::from(sqe.dsm_range_count());
            if data.len() < count * 16 {
                return respond(Status::generic(GenericStatus::DataSglLengthInvalid));
            }
            if !sqe.dsm_attributes().ad || !ns.deallocate {
                // Hints only (or nothing to deallocate with): advisory, so success.
                return respond(Status::generic(GenericStatus::Success));
            }
            let mut ranges = Vec::with_capacity(count);
            let mut total = 0u64;
            for i in 0..count {
                let Ok(r) = dsm_range(data, i) else {
                    return respond(Status::generic(GenericStatus::DataSglLengthInvalid));
                };
                // A range beyond DMRSL or a command beyond DMSL: Invalid Field in Command,
                // DNR, as iSCSI's UNMAP refuses beyond its limits (QEMU skips such ranges
                // instead; the command is advisory, but a host that read the limits never
                // sends one, and skipping would hide the mistake).
                total += u64::from(r.nlb());
                if r.nlb() > DSM_RANGE_BLOCKS_LIMIT || total > DSM_BLOCKS_LIMIT {
                    return respond(Status::invalid_field());
                }
                match lba_range(ns, r.slba(), u64::from(r.nlb())) {
                    Ok((_, 0)) => {}
                    Ok(range) => ranges.push(range),
                    Err(plan) => return plan,
                }
            }
            Plan::Io(BlockIo {
                nsid,
                backend: ns.backend,
                op: BlockOp::Deallocate { ranges },
            })
        }
        _ => respond(Status::invalid_opcode()),
    }
}

/// Whether the SCSI reservations of a namespace that is also an iSCSI LUN refuse this
/// command. The NVMe host is neither holder nor registrant of them; reads are Read and
/// Compare, writes Write, Write Zeroes and Dataset Management (NVMe Base 2.0, Reservations:
/// "Command Behavior in the Presence of a Reservation"). Flush moves no data and passes.
/// One atomic load, and no lock, on the I/O path.
fn reservation_conflict(ns: &Namespace, op: IoOpcode) -> bool {
    let Some(r) = &ns.scsi_reservations else {
        return false;
    };
    let write = match op {
        IoOpcode::Read | IoOpcode::Compare => false,
        IoOpcode::Write | IoOpcode::WriteZeroes | IoOpcode::DatasetManagement => true,
        _ => return false,
    };
    r.outsider_conflicts(write)
}

/// Byte range of `count` blocks at `slba`, or the LBA Out of Range response.
fn lba_range(ns: &Namespace, slba: u64, count: u64) -> Result<(u64, u64), Plan> {
    match slba.checked_add(count) {
        Some(end) if end <= ns.blocks => {
            let shift = u32::from(ns.lba_shift());
            Ok((slba << shift, count << shift))
        }
        _ => Err(respond(Status::lba_out_of_range())),
    }
}

#[cfg(test)]
mod tests {
    use target_wire::nvme::sqe::DsmRange;

    use super::*;

    /// One namespace of 2^32 blocks of `block_size` bytes on backend 7, deallocation on.
    fn subsystem(block_size: u32) -> Subsystem {
        Subsystem {
            nqn: "nqn.test".into(),
            serial: "S".into(),
            model: "M".into(),
            firmware: "F".into(),
            namespaces: vec![Namespace {
                nsid: 1,
                block_size,
                blocks: 1 << 32,
                nguid: [1; 16],
                eui64: [2; 8],
                uuid: [3; 16],
                volatile_write_cache: false,
                deallocate: true,
                backend: 7,
                scsi_reservations: None,
            }],
            allowed_hosts: None,
        }
    }

    /// Dataset Management, attribute Deallocate, of `(slba, nlb)` ranges.
    fn deallocate(s: &Subsystem, ranges: &[(u64, u32)]) -> Plan {
        let mut sqe = [0u8; 64];
        let mut q = Sqe::new_unchecked(&mut sqe[..]);
        q.set_opcode(IoOpcode::DatasetManagement.into());
        q.set_nsid(1);
        q.set_dsm_range_count(ranges.len() as u16);
        q.set_cdw11(1 << 2);
        let mut data = vec![0u8; ranges.len() * 16];
        for (i, &(slba, nlb)) in ranges.iter().enumerate() {
            let mut r = DsmRange::new_unchecked(&mut data[i * 16..]);
            r.set_slba(slba);
            r.set_nlb(nlb);
        }
        io_command(&Sqe::new_unchecked(&sqe[..]), &data, s)
    }

    fn write_zeroes(s: &Subsystem, slba: u64, blocks: u32) -> Plan {
        let mut sqe = [0u8; 64];
        let mut q = Sqe::new_unchecked(&mut sqe[..]);
        q.set_opcode(IoOpcode::WriteZeroes.into());
        q.set_nsid(1);
        q.set_slba(slba);
        q.set_nlb((blocks - 1) as u16);
        io_command(&Sqe::new_unchecked(&sqe[..]), &[], s)
    }

    fn is_io(p: &Plan) -> bool {
        matches!(p, Plan::Io(_))
    }

    #[test]
    fn dataset_management_is_bounded_per_range_and_per_command() {
        let s = subsystem(4096);
        let range = DSM_RANGE_BLOCKS_LIMIT;
        assert!(is_io(&deallocate(&s, &[(0, range)])), "at the range limit");
        assert_eq!(
            deallocate(&s, &[(0, range + 1)]),
            respond(Status::invalid_field()),
            "one range beyond DMRSL"
        );
        assert_eq!(
            deallocate(&s, &[(0, u32::MAX)]),
            respond(Status::invalid_field()),
            "16 TiB in one range"
        );
        // 256 ranges each within DMRSL, together beyond DMSL.
        let ranges: Vec<(u64, u32)> = (0..256u64).map(|i| (i << 24, range)).collect();
        assert_eq!(
            deallocate(&s, &ranges),
            respond(Status::invalid_field()),
            "the command beyond DMSL"
        );
        let per = u32::try_from(DSM_BLOCKS_LIMIT / 256).unwrap();
        let ranges: Vec<(u64, u32)> = (0..256u64).map(|i| (i << 24, per)).collect();
        assert!(is_io(&deallocate(&s, &ranges)), "at the command limit");
    }

    #[test]
    fn write_zeroes_is_bounded_by_wzsl() {
        for block_size in [512u32, 4096] {
            let s = subsystem(block_size);
            let most = u32::try_from(WRITE_ZEROES_MAX_BYTES / u64::from(block_size)).unwrap();
            assert!(is_io(&write_zeroes(&s, 0, most.min(65536))));
            if most < 65536 {
                assert_eq!(
                    write_zeroes(&s, 0, most + 1),
                    respond(Status::invalid_field()),
                    "{block_size}-byte blocks"
                );
            }
        }
    }
}
