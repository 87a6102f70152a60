//! Logical unit state shared by every I_T nexus: the I_T nexuses seen, their unit
//! attention queues (SAM-5 5.14), mode parameters, the SPC-2 RESERVE(6) reservation
//! (SPC-2 7.21), PREVENT ALLOW MEDIUM REMOVAL state (SBC-3 5.13) and persistent
//! reservations (`pr`).
//!
//! Access control: which commands an I_T nexus that does not hold a reservation may run
//! follows SPC-2 5.5.1 for RESERVE(6) (only INQUIRY, REPORT LUNS, REQUEST SENSE, REPORT
//! SUPPORTED OPERATION CODES and RELEASE(6) pass) and SPC-4 5.12.1 table 61 with SBC-3
//! 4.17 table 10 for persistent reservations.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use super::cdb::op;
use super::mode::ModeParams;
use super::pr::{PrState, ResType};
use super::sense::Asc;
use super::{MAX_PENDING_UAS, Nexus};

/// An I_T nexus as persistent reservations know it: the ports, not the session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Ports {
    pub initiator: String,
    pub target: String,
    pub relative_port: u16,
}

impl Ports {
    pub fn of(n: &Nexus) -> Self {
        Self {
            initiator: n.initiator_port.clone(),
            target: n.target_port.clone(),
            relative_port: n.relative_port,
        }
    }

    pub fn is(&self, n: &Nexus) -> bool {
        self.initiator == n.initiator_port && self.target == n.target_port
    }
}

/// How a command stands against reservations it does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Allowed whatever the reservation (INQUIRY, REPORT LUNS, PR IN, ...).
    Always,
    /// Reads the medium (allowed under Write Exclusive types).
    Read,
    /// Changes the medium or logical unit state.
    Write,
}

/// What a logical unit publishes of its reservations for readers that do not take its
/// lock: tasks re-checking before a block operation (one load while nothing changed) and
/// the NVMe namespace exported on the same medium (one load while nothing is reserved).
/// Updated under the logical unit's lock whenever they change.
#[derive(Debug, Default)]
pub struct LunReservations {
    /// What an initiator that is neither holder nor registrant may do: [`OPEN`],
    /// [`NO_WRITES`] or [`NO_ACCESS`].
    outsiders: AtomicU8,
    /// Bumped on every change of the reservations or registrations.
    changes: AtomicU64,
}

/// Two handles are equal when they are the same logical unit's.
impl PartialEq for LunReservations {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for LunReservations {}

const OPEN: u8 = 0;
const NO_WRITES: u8 = 1;
const NO_ACCESS: u8 = 2;

impl LunReservations {
    /// Whether a command from an initiator that neither holds the reservation nor is
    /// registered (an NVMe host: never a SCSI I_T nexus) conflicts with it: Write
    /// Exclusive types refuse its writes, Exclusive Access types and RESERVE(6) its reads
    /// too (SPC-4 5.12.1 table 61, SBC-3 4.17 table 10; SPC-2 5.5.1).
    pub fn outsider_conflicts(&self, write: bool) -> bool {
        match self.outsiders.load(Ordering::Acquire) {
            OPEN => false,
            NO_WRITES => write,
            _ => true,
        }
    }

    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}

/// One I_T nexus as a logical unit knows it, shared with the nexus's tasks: the nexus, for
/// re-checking reservations without copying it, and the abort word of PREEMPT AND ABORT
/// (SPC-4 5.12.11.2.5), which another nexus's command sets while this nexus's tasks run on
/// another connection.
///
/// The word packs the abort generation (bits 63..32), the block operations in flight of
/// tasks of this generation (31..16) and those of tasks of earlier generations (15..0).
/// A task starts each block operation only while the generation is the one it began in;
/// an abort bumps the generation and moves the in-flight count to the earlier ones, and
/// the aborting command completes once that count is zero: from then on no block
/// operation of an aborted task is in flight or can start. One compare-and-swap per block
/// operation, no lock. A nexus has far fewer than 2^16 tasks (an iSCSI session has one
/// per task slot, 136).
#[derive(Debug)]
pub(crate) struct NexusGate {
    pub nexus: Nexus,
    pub ports: Ports,
    word: AtomicU64,
}

const CURRENT_ONE: u64 = 1 << 16;
const EARLIER_MASK: u64 = 0xffff;

impl NexusGate {
    fn new(n: &Nexus) -> Self {
        Self {
            nexus: n.clone(),
            ports: Ports::of(n),
            word: AtomicU64::new(0),
        }
    }

    pub fn generation(&self) -> u32 {
        (self.word.load(Ordering::SeqCst) >> 32) as u32
    }

    /// A task of generation `generation` starts a block operation; false if the task was
    /// aborted (it must not start it).
    pub fn begin(&self, generation: u32) -> bool {
        let mut w = self.word.load(Ordering::SeqCst);
        loop {
            if (w >> 32) as u32 != generation {
                return false;
            }
            debug_assert!(w & (0xffff * CURRENT_ONE) != 0xffff * CURRENT_ONE);
            match self.word.compare_exchange_weak(
                w,
                w + CURRENT_ONE,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
    }

    /// A block operation that [`Self::begin`] allowed is over (or will never run).
    pub fn end(&self, generation: u32) {
        let mut w = self.word.load(Ordering::SeqCst);
        loop {
            let one = if (w >> 32) as u32 == generation {
                CURRENT_ONE
            } else {
                1
            };
            debug_assert!(w & (one * 0xffff) != 0, "more ends than begins");
            match self.word.compare_exchange_weak(
                w,
                w.wrapping_sub(one),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return,
                Err(now) => w = now,
            }
        }
    }

    /// Aborts every task of the nexus started so far.
    pub fn abort(&self) {
        let mut w = self.word.load(Ordering::SeqCst);
        loop {
            let generation = u64::from(((w >> 32) as u32).wrapping_add(1));
            let in_flight = ((w >> 16) & 0xffff) + (w & EARLIER_MASK);
            let next = (generation << 32) | in_flight.min(EARLIER_MASK);
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(now) => w = now,
            }
        }
    }

    /// No block operation of an aborted task is in flight.
    pub fn drained(&self) -> bool {
        self.word.load(Ordering::SeqCst) & EARLIER_MASK == 0
    }
}

#[derive(Debug, Default)]
pub(crate) struct LuState {
    pub mode: ModeParams,
    nexuses: HashMap<u64, Arc<NexusGate>>,
    uas: HashMap<u64, VecDeque<Asc>>,
    /// The I_T nexus (session id) holding the RESERVE(6) reservation.
    pub reserve6: Option<u64>,
    /// I_T nexuses with PREVENT set.
    pub prevent: HashSet<u64>,
    pub pr: PrState,
    /// Published copy for readers outside the lock.
    pub published: Arc<LunReservations>,
}

impl LuState {
    /// Notes an I_T nexus on its first command; unit attentions reach only nexuses seen.
    /// No power-on unit attention is queued for a new nexus.
    pub fn seen(&mut self, n: &Nexus) -> Arc<NexusGate> {
        let gate = self
            .nexuses
            .entry(n.id)
            .or_insert_with(|| Arc::new(NexusGate::new(n)));
        Arc::clone(gate)
    }

    /// Aborts the tasks of every live nexus with one of these ports but `except`
    /// (PREEMPT AND ABORT); the nexuses to wait for.
    pub fn abort_tasks_of(&self, ports: &[Ports], except: u64) -> Vec<Arc<NexusGate>> {
        let gates: Vec<Arc<NexusGate>> = self
            .nexuses
            .iter()
            .filter(|(id, g)| {
                **id != except
                    && ports
                        .iter()
                        .any(|p| p.initiator == g.ports.initiator && p.target == g.ports.target)
            })
            .map(|(_, g)| Arc::clone(g))
            .collect();
        for g in &gates {
            g.abort();
        }
        gates
    }

    /// To be called after any change of the RESERVE(6) reservation or the persistent
    /// reservations and registrations: publishes them (see [`LunReservations`]).
    pub fn reservations_changed(&mut self) {
        let outsiders = if self.reserve6.is_some() {
            NO_ACCESS
        } else {
            match self.pr.reservation.as_ref().map(|r| r.kind) {
                None => OPEN,
                Some(
                    ResType::WriteExclusive
                    | ResType::WriteExclusiveRegistrantsOnly
                    | ResType::WriteExclusiveAllRegistrants,
                ) => NO_WRITES,
                Some(_) => NO_ACCESS,
            }
        };
        self.published.outsiders.store(outsiders, Ordering::Release);
        self.published.changes.fetch_add(1, Ordering::AcqRel);
    }

    pub fn take_ua(&mut self, nexus: u64) -> Option<Asc> {
        let q = self.uas.get_mut(&nexus)?;
        let ua = q.pop_front();
        if q.is_empty() {
            self.uas.remove(&nexus);
        }
        ua
    }

    pub fn queue_ua(&mut self, nexus: u64, asc: Asc) {
        let q = self.uas.entry(nexus).or_default();
        if q.contains(&asc) {
            return;
        }
        if q.len() >= MAX_PENDING_UAS {
            q.pop_front();
        }
        q.push_back(asc);
    }

    /// Queues `asc` for every nexus seen except `except`.
    pub fn queue_ua_all(&mut self, asc: Asc, except: Option<u64>) {
        let ids: Vec<u64> = self
            .nexuses
            .keys()
            .copied()
            .filter(|id| Some(*id) != except)
            .collect();
        for id in ids {
            self.queue_ua(id, asc);
        }
    }

    /// Queues `asc` for every live nexus with these ports, except `except`.
    pub fn queue_ua_ports(&mut self, ports: &Ports, asc: Asc, except: u64) {
        let ids: Vec<u64> = self
            .nexuses
            .iter()
            .filter(|(id, g)| {
                let p = &g.ports;
                **id != except && p.initiator == ports.initiator && p.target == ports.target
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.queue_ua(id, asc);
        }
    }

    /// Logical unit reset (SAM-5 6.6; SPC-2 5.5.1; SPC-4 7.5.1): reservations made with
    /// RESERVE(6) and PREVENT state go, mode parameters return to their defaults (nothing
    /// is saved), and every other I_T nexus gets a unit attention: the one that asked for
    /// the reset learns of it from the task management response (tgt does the same, and
    /// libiscsi's Reserve6.LUNReset counts on the issuer's next command succeeding).
    /// Persistent reservations stay.
    pub fn reset(&mut self, asc: Asc, issuer: Option<u64>) {
        if self.reserve6.take().is_some() {
            self.reservations_changed();
        }
        self.prevent.clear();
        self.mode = ModeParams::default();
        self.queue_ua_all(asc, issuer);
    }

    pub fn nexus_lost(&mut self, id: u64) {
        self.nexuses.remove(&id);
        self.uas.remove(&id);
        self.prevent.remove(&id);
        if self.reserve6 == Some(id) {
            self.reserve6 = None;
            self.reservations_changed();
        }
    }

    /// Whether `n` may run a command with this opcode and access class now.
    pub fn conflicts(&self, n: &Nexus, opcode: u8, access: Access) -> bool {
        if let Some(holder) = self.reserve6
            && holder != n.id
        {
            return !matches!(
                opcode,
                op::INQUIRY
                    | op::REPORT_LUNS
                    | op::REQUEST_SENSE
                    | op::RELEASE_6
                    | op::MAINTENANCE_IN
            );
        }
        if matches!(opcode, op::RESERVE_6 | op::RELEASE_6) {
            // SPC-4 5.12.3 (via SPC-3 5.6.3): with any registration, both conflict.
            return !self.pr.regs.is_empty();
        }
        let Some(res) = &self.pr.reservation else {
            return false;
        };
        if self.pr.is_holder(n) {
            return false;
        }
        let registered = self.pr.registration(n).is_some();
        match access {
            Access::Always => false,
            Access::Read => match res.kind {
                ResType::WriteExclusive
                | ResType::WriteExclusiveRegistrantsOnly
                | ResType::WriteExclusiveAllRegistrants => false,
                ResType::ExclusiveAccess => true,
                ResType::ExclusiveAccessRegistrantsOnly
                | ResType::ExclusiveAccessAllRegistrants => !registered,
            },
            Access::Write => match res.kind {
                ResType::WriteExclusive | ResType::ExclusiveAccess => true,
                _ => !registered,
            },
        }
    }
}
