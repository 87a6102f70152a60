//! SCSI logical units for the iSCSI target: a subset of SPC-4 (primary commands,
//! reservations, mode pages, unit attentions) and SBC-3 (block commands) that Linux's
//! `sd` and libiscsi's compliance suite use.
//!
//! [`ScsiTarget::command`] parses a CDB (SAM-5 5.2 and the command's SPC-4/SBC-3 section)
//! into a [`Task`]; the transport collects the data-out the task asks for, then drives
//! [`Task::step`], which either answers at once ([`Step::Done`]) or asks for block I/O on
//! the command's buffer ([`Step::Io`]) and continues with its outcome. Nothing here reads
//! a socket or a file, and no input panics: bad CDBs, parameter lists and outcomes all
//! become CHECK CONDITION with sense data (`sense`). A task whose I_T nexus another one
//! preempted with PREEMPT AND ABORT ends with [`Step::Aborted`] (no status, TAS 0) instead
//! of starting another block operation, and that PERSISTENT RESERVE OUT answers
//! [`Step::Wait`] until the aborted tasks' block operations in flight are back.
//!
//! State shared by all I_T nexuses of a logical unit (`lu`): mode parameters (one set per
//! logical unit, SPC-4 7.5.1), unit attention queues per I_T nexus (SAM-5 5.14), the
//! SPC-2 RESERVE(6) reservation and persistent reservations (SPC-4 5.12, `pr`).
//! Invariants: every [`BlockIo`] a task returns lies inside its logical unit; a data-in
//! length never exceeds the CDB's ALLOCATION LENGTH or the transfer length.
//!
//! For the transport: a task that fails before its data-out (a unit attention, a
//! reservation conflict, a bad CDB) reports `data_out_len() == 0`, so no R2T need be sent
//! for it; unsolicited data the initiator already sent is discarded. A write whose data-out
//! is shorter than the CDB's transfer length fails with INVALID FIELD IN CDB, as Linux's
//! target does. libiscsi's reservation helpers always move 512 bytes per block, so its
//! suite wants a 512-byte logical unit.

mod cdb;
mod inquiry;
mod lu;
mod mode;
mod opcodes;
mod pr;
pub mod sense;
mod task;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub use crate::block::{AlignedBuf, BlockIo, BlockOp, IoOutcome};
pub use sense::{Asc, FieldPointer, Sense, key, status};
pub use task::{Completion, Step, Task};

use lu::LuState;
pub use lu::LunReservations;

/// Largest data transfer of one READ/WRITE in bytes at 512-byte blocks (LIO's fileio default,
/// 8192 sectors; libiscsi's suite writes 2048 blocks at once whatever the limits say): the block limits
/// VPD page's MAXIMUM TRANSFER LENGTH is this over the block size, but never under
/// [`MIN_MAX_TRANSFER_BLOCKS`] (see [`LunConfig::max_transfer_blocks`]).
pub const MAX_TRANSFER_BYTES: usize = 4 * 1024 * 1024;
/// libiscsi's suite reads and writes 1..=256 blocks per command whatever the block limits
/// say, so 4096-byte logical units accept 256 blocks (1 MiB) per command.
pub const MIN_MAX_TRANSFER_BLOCKS: u32 = 256;
/// WRITE SAME writes its pattern in chunks of this many bytes.
pub const WRITE_SAME_CHUNK_BYTES: usize = 128 * 1024;
/// UNMAP limits reported in the block limits VPD page.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest WRITE SAME range in blocks (block limits MAXIMUM WRITE SAME LENGTH): 16 MiB of
/// 512-byte blocks per command. Below 65536 on purpose: with a larger limit libiscsi's
/// WriteSame16.Unmap test first WRITEs 65536 blocks in one command, beyond the maximum
/// transfer length.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 1 << 15;
/// Persistent reservation registrations one logical unit holds at most.
pub const MAX_REGISTRATIONS: usize = 64;
/// Unit attentions queued per I_T nexus at most (older ones are dropped first).
pub const MAX_PENDING_UAS: usize = 8;

/// What a logical unit is; built by user space from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    /// LUN number (0..=255 is enough; REPORT LUNS uses peripheral device addressing).
    pub lun: u64,
    /// 512 or 4096.
    pub block_size: u32,
    pub blocks: u64,
    /// Copied into every [`BlockIo::backend`]; [`BlockIo::nsid`] is the LUN.
    pub backend: u32,
    /// Advertise WCE=1 in the caching mode page; SYNCHRONIZE CACHE becomes a Flush.
    pub volatile_write_cache: bool,
    /// UNMAP and WRITE SAME with UNMAP deallocate; unmapped blocks read zero.
    pub thin: bool,
    /// Writes fail with DATA PROTECT, WRITE PROTECTED; MODE SENSE reports WP.
    pub read_only: bool,
    /// Stable per LUN: the NAA designator in VPD 83h and the serial number in VPD 80h.
    pub identity: [u8; 16],
    /// Up to 8 ASCII characters (padded with spaces).
    pub vendor: String,
    /// Up to 16 ASCII characters.
    pub product: String,
    /// Up to 4 ASCII characters.
    pub revision: String,
}

impl LunConfig {
    /// Bytes of the logical unit.
    pub fn capacity_bytes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.block_size))
    }

    /// MAXIMUM TRANSFER LENGTH in blocks.
    pub fn max_transfer_blocks(&self) -> u32 {
        (MAX_TRANSFER_BYTES as u32 / self.block_size.max(1)).max(MIN_MAX_TRANSFER_BLOCKS)
    }

    /// The largest data-in or data-out of one command in bytes (a transport sizes its
    /// buffers with it; COMPARE AND WRITE fits both halves in it).
    pub fn max_transfer_bytes(&self) -> usize {
        self.max_transfer_blocks() as usize * self.block_size as usize
    }

    /// MAXIMUM COMPARE AND WRITE LENGTH: both halves fit in one maximum transfer.
    pub fn max_compare_and_write_blocks(&self) -> u8 {
        (self.max_transfer_blocks() / 2).clamp(1, 255) as u8
    }
}

/// One logical unit, shared by every session of its target.
#[derive(Debug)]
pub struct LogicalUnit {
    cfg: LunConfig,
    /// Shared with the resized copies of this logical unit (see [`ScsiTarget::resize_lun`]).
    state: Arc<Mutex<LuState>>,
    reservations: Arc<LunReservations>,
}

impl LogicalUnit {
    pub fn new(cfg: LunConfig) -> Self {
        let state = LuState::default();
        let reservations = Arc::clone(&state.published);
        Self {
            cfg,
            state: Arc::new(Mutex::new(state)),
            reservations,
        }
    }

    /// The same logical unit (its reservations, unit attentions, mode parameters) with a
    /// capacity of `blocks`.
    fn resized(&self, blocks: u64) -> Self {
        Self {
            cfg: LunConfig {
                blocks,
                ..self.cfg.clone()
            },
            state: Arc::clone(&self.state),
            reservations: Arc::clone(&self.reservations),
        }
    }

    pub fn config(&self) -> &LunConfig {
        &self.cfg
    }

    /// The logical unit's reservations as another protocol on the same medium (NVMe)
    /// must honour them; reading them takes no lock.
    pub fn reservations(&self) -> &Arc<LunReservations> {
        &self.reservations
    }

    fn lock(&self) -> MutexGuard<'_, LuState> {
        // A panic while holding the lock cannot leave the state half-changed in a way that
        // matters more than stopping every session; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An I_T nexus: one iSCSI session. `id` is unique per session while it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nexus {
    pub id: u64,
    /// The initiator port name, e.g. "iqn.x,i,0x23d000000001" (the TransportID for PR).
    pub initiator_port: String,
    /// The target port name, e.g. "iqn.target,t,0x0001".
    pub target_port: String,
    pub relative_port: u16,
}

/// Task management functions (SAM-5 7) as far as they change logical unit state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskManagement {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LunReset,
    TargetWarmReset,
    TargetColdReset,
}

/// All logical units of one iSCSI target, shared by its sessions.
#[derive(Debug)]
pub struct ScsiTarget {
    /// Sorted by LUN. Commands take the logical unit they address under the read lock
    /// (one Arc clone); `xdp-target ctl` adds, removes and resizes under the write lock.
    luns: RwLock<Vec<Arc<LogicalUnit>>>,
}

impl ScsiTarget {
    /// Builds the logical units; a repeated LUN number keeps the first.
    pub fn new(mut luns: Vec<LunConfig>) -> Self {
        luns.sort_by_key(|c| c.lun);
        luns.dedup_by_key(|c| c.lun);
        Self {
            luns: RwLock::new(
                luns.into_iter()
                    .map(|c| Arc::new(LogicalUnit::new(c)))
                    .collect(),
            ),
        }
    }

    /// The logical units now, sorted by LUN.
    pub fn luns(&self) -> Vec<Arc<LogicalUnit>> {
        self.read().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<LogicalUnit>>> {
        self.luns
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<LogicalUnit>>> {
        self.luns
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Logical unit `lun`, if there is one.
    pub fn lu(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        let luns = self.read();
        luns.binary_search_by_key(&lun, |l| l.cfg.lun)
            .ok()
            .map(|i| Arc::clone(&luns[i]))
    }

    /// Adds a logical unit (`Err` with its configuration when the LUN is taken). Every I_T
    /// nexus of the other logical units gets REPORTED LUNS DATA HAS CHANGED (SPC-4 6.37,
    /// SAM-5 5.14), as Linux's target raises it; Linux's initiator logs it and rescans
    /// when asked to (`iscsiadm -m session -R`).
    pub fn add_lun(&self, cfg: LunConfig) -> Result<Arc<LogicalUnit>, LunConfig> {
        let mut luns = self.write();
        let i = match luns.binary_search_by_key(&cfg.lun, |l| l.cfg.lun) {
            Ok(_) => return Err(cfg),
            Err(i) => i,
        };
        let lu = Arc::new(LogicalUnit::new(cfg));
        for other in luns.iter() {
            other
                .lock()
                .queue_ua_all(Asc::REPORTED_LUNS_DATA_HAS_CHANGED, None);
        }
        luns.insert(i, Arc::clone(&lu));
        Ok(lu)
    }

    /// Removes logical unit `lun`; the remaining ones report REPORTED LUNS DATA HAS
    /// CHANGED to every I_T nexus. Commands already started on it finish.
    pub fn remove_lun(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        let mut luns = self.write();
        let i = luns.binary_search_by_key(&lun, |l| l.cfg.lun).ok()?;
        let lu = luns.remove(i);
        for other in luns.iter() {
            other
                .lock()
                .queue_ua_all(Asc::REPORTED_LUNS_DATA_HAS_CHANGED, None);
        }
        Some(lu)
    }

    /// Gives logical unit `lun` a capacity of `blocks`; each of its I_T nexuses gets
    /// CAPACITY DATA HAS CHANGED (SBC-4 4.6), after which Linux's initiator reads the
    /// capacity again on a rescan. False when there is no such logical unit.
    pub fn resize_lun(&self, lun: u64, blocks: u64) -> bool {
        let mut luns = self.write();
        let Ok(i) = luns.binary_search_by_key(&lun, |l| l.cfg.lun) else {
            return false;
        };
        let resized = Arc::new(luns[i].resized(blocks));
        resized
            .lock()
            .queue_ua_all(Asc::CAPACITY_DATA_HAS_CHANGED, None);
        luns[i] = resized;
        true
    }

    /// Starts a command addressed to `lun`. Never panics: a bad CDB gives a task whose
    /// first step is CHECK CONDITION. A LUN that does not exist answers INQUIRY with
    /// peripheral qualifier 011b, REPORT LUNS and REQUEST SENSE normally, and anything
    /// else with LOGICAL UNIT NOT SUPPORTED.
    pub fn command(&self, nexus: &Nexus, lun: u64, cdb: &[u8]) -> Task {
        Task::new(self, self.lu(lun), nexus, cdb)
    }

    /// Applies a task management function's effects on logical unit state; the transport
    /// aborts its own tasks. The task set type is one per I_T nexus (control mode page
    /// TST 001b), so ABORT TASK SET and CLEAR TASK SET touch the issuing nexus only.
    pub fn task_management(&self, nexus: &Nexus, function: TaskManagement, lun: Option<u64>) {
        match function {
            TaskManagement::AbortTask
            | TaskManagement::AbortTaskSet
            | TaskManagement::ClearAca
            | TaskManagement::ClearTaskSet => {}
            TaskManagement::LunReset => {
                if let Some(lu) = lun.and_then(|l| self.lu(l)) {
                    lu.lock()
                        .reset(Asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED, Some(nexus.id));
                }
            }
            // SAM-5 6.6/6.7: a target reset is a logical unit reset of every logical unit;
            // a cold reset also reports power on.
            TaskManagement::TargetWarmReset => {
                for lu in self.luns() {
                    lu.lock()
                        .reset(Asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED, Some(nexus.id));
                }
            }
            TaskManagement::TargetColdReset => {
                for lu in self.luns() {
                    lu.lock().reset(Asc::POWER_ON_OCCURRED, None);
                }
            }
        }
    }

    /// The I_T nexus ended: its RESERVE(6) reservation, PREVENT state and pending unit
    /// attentions go; persistent reservation registrations stay (SPC-4 5.12.6).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        for lu in self.luns() {
            lu.lock().nexus_lost(nexus.id);
        }
    }
}

/// The LUN number of a SAM-5 LUN field (section 4.7): peripheral (00b) or flat (01b)
/// addressing.
pub fn decode_lun(l: [u8; 8]) -> Option<u64> {
    if l[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match l[0] >> 6 {
        0 if l[0] == 0 => Some(u64::from(l[1])),
        1 => Some((u64::from(l[0] & 0x3f) << 8) | u64::from(l[1])),
        _ => None,
    }
}

/// The LUN field for a LUN number: peripheral addressing below 256, flat above.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        l[0] = 0x40 | ((lun >> 8) & 0x3f) as u8;
        l[1] = lun as u8;
    }
    l
}
