//! One NVMe queue over one RDMA queue pair (NVM Express RDMA Transport Specification 1.0,
//! section 3): command capsules arrive as RDMA SENDs (the 64-byte SQE, then in-capsule data
//! described by a Data Block SGL with subtype Offset); command data moves by RDMA READ
//! (host to controller) and RDMA WRITE (controller to host) against the host's Keyed SGL
//! Data Block (NVMe Base 2.0, section 4.3.2); the response capsule is the bare 16-byte CQE,
//! sent with RDMA SEND, or SEND with Invalidate when the SGL's subtype was Invalidate Key
//! (Fh), as Linux's target does (`NVME_SGL_FMT_INVALIDATE` in `drivers/nvme/target/rdma.c`).
//!
//! Sans-I/O, like [`NvmeTcpQueue`](crate::nvme_tcp::queue::NvmeTcpQueue): the transport feeds
//! received capsules to [`NvmeRdmaQueue::capsule`] and work completions to
//! [`NvmeRdmaQueue::rdma_read_done`] and [`NvmeRdmaQueue::send_done`], executes the
//! [`Action`]s of [`NvmeRdmaQueue::next_action`] in order, and runs block operations from
//! [`NvmeRdmaQueue::next_io`] through [`NvmeRdmaQueue::io_done`]. Time is passed in.
//!
//! Invariants:
//! - Command slots are allocated up front, [`SLOTS_PER_ENTRY`] per negotiated queue entry;
//!   a slot's index is the tag the transport puts in its work requests' IDs. Every action
//!   but [`Action::Disconnect`] names one slot.
//! - A command gets exactly one [`Action::Send`], after its [`Action::RdmaWrite`] if it has
//!   data for the host; its slot is not reused before [`NvmeRdmaQueue::send_done`].
//! - At most [`Negotiated::depth`] commands are outstanding (from their capsule to their
//!   Send); a host that sends more broke flow control and is disconnected.
//! - Actions waiting for the transport are at most two per slot plus one Disconnect: the
//!   output is bounded without a high-water mark.
//! - No length from the wire sizes a buffer before it was checked against MDTS or the
//!   received capsule.
//! - A completion for a slot that is not waiting for it (wrong slot, wrong state, or an
//!   action the transport has not taken yet) is ignored.
//! - A slot's buffer neither moves nor changes length between the action that names it
//!   and that action's completion, so the transport may register it for RDMA.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;

use target_wire::nvme::cqe::CqeRepr;
use target_wire::nvme::fabrics::{ConnectRepr, connect_invalid_param_dw0, connect_offset};
use target_wire::nvme::opcode::{DataTransfer, FABRICS_OPCODE};
use target_wire::nvme::sgl::SglRepr;
use target_wire::nvme::sqe::{SQE_LEN, Sqe};
use target_wire::nvme::status::{CommandSpecificStatus, GenericStatus, Status};

use super::cm::Negotiated;
use crate::block::AlignedBuf;
use crate::nvme::admin::TransportLimits;
use crate::nvme::controller::{
    BlockIo, BlockOp, IoOutcome, MAX_TRANSFER, Plan, QueueController, Response, ResponseData,
};
use crate::nvme::subsystem::Registry;

/// In-capsule data the controller accepts by default: IOCCSZ is reported as (64 + this) /
/// 16, and a host sends writes (and, Linux, the I/O queues' Connect data) up to this size
/// in the capsule, saving the RDMA READ. The same on the admin queue, where Linux sends
/// none. [`NvmeRdmaQueue::with_in_capsule_data`] sets another size.
pub const IN_CAPSULE_DATA: usize = 8192;
/// The most in-capsule data a queue may be given: receive buffers are posted per queue
/// entry, so this bounds a queue's receive memory (128 entries: about 2 MiB).
pub const MAX_IN_CAPSULE_DATA: usize = 16384;
/// Bytes of each receive buffer the transport posts by default: an SQE and the in-capsule
/// data ([`NvmeRdmaQueue::recv_buffer_len`] for a queue's own).
pub const RECV_BUFFER_LEN: usize = SQE_LEN + IN_CAPSULE_DATA;
/// Slots per queue entry. A host reuses an entry as soon as the response arrives, which
/// can be before the transport sees the SEND complete (and the slot free): twice the
/// entries, as Linux's target allocates its responses, leaves room for that.
pub const SLOTS_PER_ENTRY: usize = 2;
/// How long a new queue pair may take to send a successful Connect: a host that connects
/// and stays silent holds a queue pair and its receive buffers.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// What the transport does next, in the order given. One queue pair is one reliable
/// connection, so the work requests complete in the order posted (nvmet relies on it too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// RDMA READ `len` bytes at `remote_addr`/`rkey` into the slot's buffer
    /// ([`NvmeRdmaQueue::buffer_mut`], exactly `len` bytes), then report
    /// [`NvmeRdmaQueue::rdma_read_done`].
    RdmaRead {
        slot: usize,
        remote_addr: u64,
        rkey: u32,
        len: u32,
    },
    /// RDMA WRITE the first `len` bytes of the slot's buffer ([`NvmeRdmaQueue::buffer`]) to
    /// `remote_addr`/`rkey`. Always followed by the slot's Send, whose completion covers
    /// it, so it may be posted unsignaled.
    RdmaWrite {
        slot: usize,
        remote_addr: u64,
        rkey: u32,
        len: u32,
    },
    /// SEND the response capsule (SEND with Invalidate of `invalidate`, when set), then
    /// report [`NvmeRdmaQueue::send_done`].
    Send {
        slot: usize,
        cqe: [u8; 16],
        invalidate: Option<u32>,
    },
    /// Disconnect the queue pair once the work requests posted before it completed, then
    /// call [`NvmeRdmaQueue::teardown`]. Nothing follows it.
    Disconnect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// The capsule is being taken apart.
    New,
    /// The RDMA READ of the host's data is queued or posted.
    Reading,
    /// Waiting for the block operation.
    InIo,
    /// An Asynchronous Event Request, answered only by an event.
    Held,
    /// The response (and the data before it) is queued or posted.
    Responding,
}

impl SlotState {
    /// Whether the slot holds a command the host counts as outstanding.
    fn outstanding(self) -> bool {
        matches!(self, Self::New | Self::Reading | Self::InIo | Self::Held)
    }
}

/// The host memory of a command's Keyed SGL Data Block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Keyed {
    address: u64,
    key: u32,
    length: u32,
    /// Answer with SEND with Invalidate of `key`.
    invalidate: bool,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    /// The transport took the action the slot waits on (RdmaRead, Send) from
    /// [`NvmeRdmaQueue::next_action`], so its completion may come.
    posted: bool,
    sqe: [u8; 64],
    /// Host data (writes) or controller data (reads), reused between commands.
    buf: AlignedBuf,
    /// Bytes of host data in `buf`.
    host_data: usize,
    keyed: Option<Keyed>,
    io: Option<BlockIo>,
}

impl Slot {
    fn new() -> Self {
        Self {
            state: SlotState::Free,
            posted: false,
            sqe: [0; 64],
            buf: AlignedBuf::default(),
            host_data: 0,
            keyed: None,
            io: None,
        }
    }

    fn cid(&self) -> u16 {
        u16::from_le_bytes([self.sqe[2], self.sqe[3]])
    }
}

pub struct NvmeRdmaQueue {
    negotiated: Negotiated,
    /// Bytes of each receive buffer: the SQE and the in-capsule data.
    recv_len: usize,
    controller: QueueController,
    slots: Vec<Slot>,
    /// Free slots, the most recently freed last (its buffer is warm).
    free: Vec<usize>,
    /// Slots in an outstanding state.
    outstanding: usize,
    ios: VecDeque<usize>,
    actions: VecDeque<Action>,
    /// A Disconnect is queued: nothing more is taken or sent.
    closing: bool,
    /// The first tick: a host has [`CONNECT_TIMEOUT_MS`] from then to connect.
    started_ms: Option<u64>,
    /// Why `tick` ended the queue.
    ended: Option<&'static str>,
}

impl NvmeRdmaQueue {
    /// The queue of a connect request [`cm::accept`](super::cm::accept) accepted; `local`
    /// is the address the host connected to.
    pub fn new(negotiated: Negotiated, local: Option<IpAddr>) -> Self {
        Self::with_in_capsule_data(negotiated, local, IN_CAPSULE_DATA)
    }

    /// [`Self::new`] accepting `in_capsule` bytes of data in a capsule (rounded down to 16
    /// bytes, as IOCCSZ counts, and at most [`MAX_IN_CAPSULE_DATA`]).
    pub fn with_in_capsule_data(
        negotiated: Negotiated,
        local: Option<IpAddr>,
        in_capsule: usize,
    ) -> Self {
        let n = usize::from(negotiated.depth) * SLOTS_PER_ENTRY;
        let in_capsule = in_capsule.min(MAX_IN_CAPSULE_DATA) / 16 * 16;
        Self {
            negotiated,
            recv_len: SQE_LEN + in_capsule,
            controller: QueueController::new(
                TransportLimits {
                    in_capsule_data: in_capsule,
                    keyed_sgls: true,
                },
                local,
            ),
            slots: (0..n).map(|_| Slot::new()).collect(),
            free: (0..n).rev().collect(),
            outstanding: 0,
            ios: VecDeque::with_capacity(n),
            actions: VecDeque::with_capacity(2 * n + 1),
            closing: false,
            started_ms: None,
            ended: None,
        }
    }

    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Bytes of each receive buffer the transport posts for this queue: the 64-byte SQE
    /// and the in-capsule data IOCCSZ promises.
    pub fn recv_buffer_len(&self) -> usize {
        self.recv_len
    }

    /// Slots (work request tags `0..slots()`).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    pub fn controller(&self) -> &QueueController {
        &self.controller
    }

    /// Whether a Disconnect was queued (or is due): the queue takes nothing more.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Actions waiting for the transport.
    pub fn pending_actions(&self) -> usize {
        self.actions.len()
    }

    /// The next thing to do. The transport takes actions in order; a completion counts
    /// only for an action it took.
    pub fn next_action(&mut self) -> Option<Action> {
        let a = self.actions.pop_front()?;
        if let Action::RdmaRead { slot, .. } | Action::Send { slot, .. } = a {
            self.slots[slot].posted = true;
        }
        Some(a)
    }

    /// The next block operation to run: its slot and what to do. The data moves through
    /// [`Self::buffer_mut`] of that slot.
    pub fn next_io(&mut self) -> Option<(usize, BlockIo)> {
        while let Some(slot) = self.ios.pop_front() {
            if let Some(io) = &self.slots[slot].io {
                return Some((slot, io.clone()));
            }
        }
        None
    }

    /// A slot's data buffer (empty for a slot that does not exist): the source of its
    /// RDMA WRITE. It may move between commands (it grows to the largest transfer the slot
    /// has seen), never while an action names it: a transport registers it per action, or
    /// caches registrations by address and length.
    pub fn buffer(&self, slot: usize) -> &[u8] {
        self.slots.get(slot).map_or(&[], |s| s.buf.as_slice())
    }

    /// A slot's data buffer, for an RDMA READ or a block operation to fill (see
    /// [`Self::buffer`]).
    pub fn buffer_mut(&mut self, slot: usize) -> &mut [u8] {
        match self.slots.get_mut(slot) {
            Some(s) => s.buf.as_mut_slice(),
            None => &mut [],
        }
    }

    /// Takes one received capsule (the bytes of a SEND: SQE and in-capsule data). Returns
    /// false, having taken nothing, when every slot waits for a send completion: the
    /// transport keeps the receive buffer and offers it again after [`Self::send_done`]s
    /// (meanwhile the host's further SENDs meet no posted receive and wait).
    #[must_use = "a capsule not taken must be offered again"]
    pub fn capsule(&mut self, capsule: &[u8], registry: &Mutex<Registry>, now_ms: u64) -> bool {
        if self.closing {
            return true;
        }
        if capsule.len() < SQE_LEN || capsule.len() > self.recv_len {
            // No SQE means no CID to answer; more than a receive buffer holds cannot have
            // come through one. Either way the transport or the host is broken.
            self.fail();
            return true;
        }
        if self.outstanding >= usize::from(self.negotiated.depth) {
            // The host has more commands outstanding than the SQSIZE it negotiated. NVMe/TCP
            // answers Command Interrupted, but here an answer would need a slot and a host
            // receive buffer the host never promised (HRQSIZE covers `depth` responses):
            // the host broke flow control, so the queue pair ends.
            self.fail();
            return true;
        }
        let Some(i) = self.free.pop() else {
            return false;
        };
        self.set_state(i, SlotState::New);
        match self.admit(i, capsule) {
            Err(status) => self.respond(i, Response::status(status)),
            Ok(Some(read)) => {
                self.set_state(i, SlotState::Reading);
                self.actions.push_back(read);
            }
            Ok(None) => self.execute(i, registry, now_ms),
        }
        true
    }

    /// An RDMA READ the transport took from [`Self::next_action`] completed; `ok` is
    /// false when it failed (or was flushed).
    pub fn rdma_read_done(
        &mut self,
        slot: usize,
        ok: bool,
        registry: &Mutex<Registry>,
        now_ms: u64,
    ) {
        if !self
            .slots
            .get(slot)
            .is_some_and(|s| s.state == SlotState::Reading && s.posted)
        {
            return;
        }
        if self.closing {
            // Nothing more runs on a queue pair that is going.
            self.set_state(slot, SlotState::Free);
        } else if ok {
            self.execute(slot, registry, now_ms);
        } else {
            // The command ends, not the queue (as a data digest error on NVMe/TCP). A failed
            // work request usually takes the queue pair into the error state too, which
            // the transport sees on its own.
            let status = Status::generic(GenericStatus::TransientTransportError);
            self.respond(slot, Response::status(status));
        }
    }

    /// A Send the transport took from [`Self::next_action`] completed (and with it the
    /// RDMA WRITE before it): the slot is free. A failed Send ends the queue.
    pub fn send_done(&mut self, slot: usize, ok: bool) {
        if !self
            .slots
            .get(slot)
            .is_some_and(|s| s.state == SlotState::Responding && s.posted)
        {
            return;
        }
        self.set_state(slot, SlotState::Free);
        if !ok {
            self.fail();
        }
    }

    /// A block operation finished.
    pub fn io_done(&mut self, slot: usize, outcome: IoOutcome) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.state != SlotState::InIo {
            return;
        }
        let io = s.io.take().expect("InIo slots hold their operation");
        let response = self.controller.io_done(&io, outcome);
        self.respond(slot, response);
    }

    /// Periodic work: keep-alive expiry, I/O queues whose controller is gone, and hosts
    /// that never finish Connect. Returns false (and queues a Disconnect) when the queue
    /// must end; [`Self::end_reason`] says why.
    pub fn tick(&mut self, now_ms: u64, registry: &Mutex<Registry>) -> bool {
        let started = *self.started_ms.get_or_insert(now_ms);
        self.ended = if self.controller.qid().is_none()
            && now_ms.saturating_sub(started) >= CONNECT_TIMEOUT_MS
        {
            Some("no Connect within 10 s")
        } else if self.controller.keep_alive_expired(now_ms) {
            Some("keep-alive timeout expired")
        } else if !self.controller.controller_alive(registry) {
            Some("its controller is gone")
        } else {
            None
        };
        if self.ended.is_some() {
            self.fail();
            return false;
        }
        self.answer_held_event(registry);
        true
    }

    /// Answers a held Asynchronous Event Request when the controller has an event for it.
    fn answer_held_event(&mut self, registry: &Mutex<Registry>) {
        if let Some(i) = self.slots.iter().position(|s| s.state == SlotState::Held)
            && let Some(r) = self.controller.take_event(registry)
        {
            self.respond(i, r);
        }
    }

    /// Why [`Self::tick`] ended the queue.
    pub fn end_reason(&self) -> Option<&'static str> {
        self.ended
    }

    /// The queue pair is gone: release the controller or the queue's place in it. The
    /// slot buffers stay the queue's: drop it only after the queue pair's work requests
    /// completed or were flushed.
    pub fn teardown(&mut self, registry: &Mutex<Registry>) {
        self.controller.teardown(registry);
    }

    fn fail(&mut self) {
        if !self.closing {
            self.closing = true;
            self.actions.push_back(Action::Disconnect);
        }
    }

    /// Moves slot `i` to `to`, keeping the outstanding count and the free list.
    fn set_state(&mut self, i: usize, to: SlotState) {
        let s = &mut self.slots[i];
        let from = s.state;
        s.state = to;
        s.posted = false;
        self.outstanding += usize::from(to.outstanding());
        self.outstanding -= usize::from(from.outstanding());
        if to == SlotState::Free && from != SlotState::Free {
            s.io = None;
            s.keyed = None;
            self.free.push(i);
        }
    }

    /// Takes a capsule apart into slot `i`: the status to answer with, or the RDMA READ
    /// to fetch its data with, or nothing (the command can run).
    fn admit(&mut self, i: usize, capsule: &[u8]) -> Result<Option<Action>, Status> {
        let (sqe_bytes, in_capsule) = capsule.split_at(SQE_LEN);
        let s = &mut self.slots[i];
        s.sqe.copy_from_slice(sqe_bytes);
        s.host_data = 0;
        s.keyed = None;
        s.io = None;
        s.buf.set_len(0);
        let sqe = Sqe::new_unchecked(sqe_bytes);
        let cid = sqe.cid();
        if self
            .slots
            .iter()
            .enumerate()
            .any(|(j, o)| j != i && o.state.outstanding() && o.cid() == cid)
        {
            return Err(Status::generic(GenericStatus::CommandIdConflict).with_dnr());
        }
        let direction = if sqe.opcode() == FABRICS_OPCODE {
            DataTransfer::from_opcode(sqe.fctype_raw())
        } else {
            DataTransfer::from_opcode(sqe.opcode())
        };
        let host_data = matches!(
            direction,
            DataTransfer::HostToController | DataTransfer::Bidirectional
        );
        let invalid = |g| Err(Status::generic(g).with_dnr());
        let s = &mut self.slots[i];
        match sqe.sgl() {
            Ok(SglRepr::InCapsule { offset, length }) => {
                if !host_data {
                    return invalid(GenericStatus::DataSglLengthInvalid);
                }
                // ICDOFF is 0: the offset counts from the end of the SQE.
                let Some(start) = usize::try_from(offset)
                    .ok()
                    .filter(|&o| o <= in_capsule.len())
                else {
                    return invalid(GenericStatus::SglOffsetInvalid);
                };
                let Some(data) = in_capsule[start..].get(..length as usize) else {
                    return invalid(GenericStatus::DataSglLengthInvalid);
                };
                s.buf.set_len(data.len());
                s.buf.as_mut_slice().copy_from_slice(data);
                s.host_data = data.len();
                Ok(None)
            }
            Ok(SglRepr::Keyed {
                address,
                length,
                key,
                invalidate,
            }) => {
                if length as usize > MAX_TRANSFER {
                    return Err(Status::invalid_field());
                }
                // A command without data names no memory to invalidate (nvmet likewise).
                s.keyed = Some(Keyed {
                    address,
                    key,
                    length,
                    invalidate: invalidate && length > 0,
                });
                if !host_data || length == 0 {
                    return Ok(None);
                }
                s.buf.set_len(length as usize);
                s.host_data = length as usize;
                Ok(Some(Action::RdmaRead {
                    slot: i,
                    remote_addr: address,
                    rkey: key,
                    len: length,
                }))
            }
            // The Transport Data Block is NVMe/TCP's; anything else no transport's.
            Ok(SglRepr::Transport { .. }) | Err(_) => {
                invalid(GenericStatus::SglDescriptorTypeInvalid)
            }
        }
    }

    /// A Connect whose queue is not the one the connect request negotiated: the QID must
    /// be the same, and the SQ no deeper than the receives posted for it. (The controller
    /// checks the rest, and answers a second Connect itself.)
    fn connect_mismatch(&self, sqe: &Sqe<&[u8]>) -> Option<Response> {
        if self.controller.qid().is_some() {
            return None;
        }
        let c = ConnectRepr::parse(sqe).ok()?;
        let offset = if c.qid != self.negotiated.qid {
            connect_offset::QID
        } else if c.queue_entries() > u32::from(self.negotiated.depth) {
            connect_offset::SQSIZE
        } else {
            return None;
        };
        let status = Status::command_specific(CommandSpecificStatus::ConnectInvalidParameters);
        Some(Response::status(status).with_dw0(connect_invalid_param_dw0(false, offset)))
    }

    fn execute(&mut self, i: usize, registry: &Mutex<Registry>, now_ms: u64) {
        let sqe_bytes = self.slots[i].sqe;
        let sqe = Sqe::new_unchecked(&sqe_bytes[..]);
        if let Some(r) = self.connect_mismatch(&sqe) {
            return self.respond(i, r);
        }
        let s = &self.slots[i];
        let data = &s.buf.as_slice()[..s.host_data];
        match self.controller.execute(&sqe, data, registry, now_ms) {
            Plan::Respond(r) => self.respond(i, r),
            Plan::RespondAndClose(r) => {
                self.respond(i, r);
                self.fail();
            }
            Plan::Hold => self.set_state(i, SlotState::Held),
            Plan::Io(io) => {
                let s = &mut self.slots[i];
                if let BlockOp::Read { len, .. } = io.op {
                    // The host's memory must hold the read: nvmet checks the transfer
                    // length the same way, rather than sending part of it.
                    let host_len = s.keyed.map_or(0, |k| u64::from(k.length));
                    if len > host_len {
                        let status =
                            Status::generic(GenericStatus::DataSglLengthInvalid).with_dnr();
                        return self.respond(i, Response::status(status));
                    }
                    // A read lands in the buffer; Compare keeps the host's data there.
                    s.buf.set_len(len as usize);
                }
                s.io = Some(io);
                self.set_state(i, SlotState::InIo);
                self.ios.push_back(i);
            }
        }
    }

    /// Queues the data (if any) and the response of slot `i`.
    fn respond(&mut self, i: usize, r: Response) {
        let sqhd = self.controller.next_sqhd();
        if self.closing {
            // The queue pair is going: nothing more goes out, and the slot is done.
            return self.set_state(i, SlotState::Free);
        }
        let s = &mut self.slots[i];
        // The host's memory bounds what goes back (Identify and log pages are cut to it).
        let host_len = s.keyed.map_or(0, |k| k.length as usize);
        let len = match &r.data {
            ResponseData::None => 0,
            ResponseData::Owned(v) => {
                let n = v.len().min(host_len);
                s.buf.set_len(n);
                s.buf.as_mut_slice().copy_from_slice(&v[..n]);
                n
            }
            ResponseData::InBuffer(n) => (*n).min(host_len).min(s.buf.as_slice().len()),
        };
        if let (Some(k), true) = (s.keyed, len > 0) {
            self.actions.push_back(Action::RdmaWrite {
                slot: i,
                remote_addr: k.address,
                rkey: k.key,
                len: u32::try_from(len).expect("bounded by the keyed length"),
            });
        }
        let mut cqe = CqeRepr::new(s.cid(), self.negotiated.qid, sqhd, r.status);
        cqe.dw0 = r.dw0;
        cqe.dw1 = r.dw1;
        let invalidate = s.keyed.filter(|k| k.invalidate).map(|k| k.key);
        self.actions.push_back(Action::Send {
            slot: i,
            cqe: cqe.to_bytes(),
            invalidate,
        });
        self.set_state(i, SlotState::Responding);
    }
}
