//! One NVMe/TCP connection, which carries one NVMe queue (NVMe/TCP 1.0, sections 3.3-3.5):
//! connection initialization, capsules with in-capsule data, R2T/H2CData for writes,
//! C2HData for reads, response capsules, and termination.
//!
//! Sans-I/O: [`NvmeTcpQueue::receive`] takes bytes from the socket; what to send is a
//! gather list ([`NvmeTcpQueue::output_chunks`]): PDU headers, digests and small answers
//! staged in one buffer, and read data referred to in its command's slot buffer, so a
//! transport sends it from there (`writev`, or straight into the user-space stack's send
//! ring) without copying it into the queue first. Block operations come out of
//! [`NvmeTcpQueue::next_io`] and go back in through [`NvmeTcpQueue::io_done`], their data
//! in the command's slot buffer. Time is passed in.
//!
//! Command slots are allocated up front (one per SQ entry the controller supports); a
//! slot's index is the transfer tag (TTAG) of its R2Ts. No length from the wire sizes a
//! buffer before it was checked against MDTS or the negotiated limits.

use std::collections::VecDeque;
use std::sync::Mutex;

use target_wire::nvme::cqe::CqeRepr;
use target_wire::nvme::opcode::{DataTransfer, FABRICS_OPCODE};
use target_wire::nvme::sgl::SglRepr;
use target_wire::nvme::sqe::Sqe;
use target_wire::nvme::status::{GenericStatus, Status};
use target_wire::nvme_tcp::{DataRepr, Fes, IcRepr, PduType, TERM_MAX_DATA, capsule_sqe};

use super::Fatal;
use super::icreq::{self, ControllerParams, Negotiated};
use super::reader::{Event, PduReader, ReaderConfig, Role};
use super::writer;
pub use crate::OUTPUT_HIGH_WATER;
use crate::nvme::admin::TransportLimits;
use crate::nvme::controller::{
    BlockIo, BlockOp, IoOutcome, MAX_QUEUE_ENTRIES, MAX_TRANSFER, Plan, QueueController, Response,
    ResponseData,
};
use crate::nvme::subsystem::Registry;
use crate::output::{self, GatherOutput};

/// In-capsule data the controller accepts: IOCCSZ is reported as (64 + this) / 16. Linux's
/// host sends writes up to this size in the capsule, saving the R2T round trip.
pub const IN_CAPSULE_DATA: usize = 8192;

/// Offsets of H2CData fields, for TermReq FEIs.
const TTAG_OFFSET: u32 = DataRepr::TTAG_FIELD;
const DATAO_OFFSET: u32 = DataRepr::OFFSET_FIELD;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// In-capsule data is arriving with the capsule.
    CapsuleData,
    /// An R2T went out; H2CData is arriving.
    AwaitingData,
    /// Waiting for the block operation.
    InIo,
    /// An Asynchronous Event Request, answered only by an event.
    Held,
    /// Answered, its read data still in the output (lent to it, see [`GatherOutput`]):
    /// the buffer stays untouched until the transport took it.
    Sending,
}

pub use crate::block::{AlignedBuf, BUFFER_ALIGN};

#[derive(Debug)]
struct Slot {
    state: SlotState,
    sqe: [u8; 64],
    /// Host data (writes) or controller data (reads), reused between commands.
    buf: AlignedBuf,
    /// Bytes of host data expected (SGL length) and received so far.
    expected: usize,
    received: usize,
    /// A data digest failed: the command ends with a transient transport error.
    digest_failed: bool,
    io: Option<BlockIo>,
    /// When the R2T went out (AwaitingData).
    r2t_ms: u64,
}

impl Slot {
    fn new() -> Self {
        Self {
            state: SlotState::Free,
            sqe: [0; 64],
            buf: AlignedBuf::default(),
            expected: 0,
            received: 0,
            digest_failed: false,
            io: None,
            r2t_ms: 0,
        }
    }

    fn cid(&self) -> u16 {
        u16::from_le_bytes([self.sqe[2], self.sqe[3]])
    }
}

/// Where the data of the PDU being received goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Nowhere,
    Slot(usize),
}

pub struct NvmeTcpQueue {
    params: ControllerParams,
    reader: PduReader,
    negotiated: Option<Negotiated>,
    controller: QueueController,
    slots: Vec<Slot>,
    sink: Sink,
    ios: VecDeque<usize>,
    /// What waits to be sent: staged bytes and read data in slot buffers.
    out: GatherOutput,
    /// The queue ends once `out` is sent.
    closing: bool,
    /// The host sent an H2CTermReq.
    peer_terminated: bool,
    /// The first tick: a host has [`CONNECT_TIMEOUT_MS`] from then to connect.
    started_ms: Option<u64>,
    /// Why `tick` ended the queue.
    ended: Option<&'static str>,
}

/// How long a new connection may take to send ICReq and a successful Connect: a peer that
/// opens connections and stays silent holds a socket and a queue's slots.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long the data an R2T asked for may take to arrive in full. Linux sends it at once;
/// a host that never does would hold the slot (and its buffer) for ever.
pub const DATA_TIMEOUT_MS: u64 = 30_000;

impl NvmeTcpQueue {
    /// A queue on a new connection; `local` is the address the host connected to.
    pub fn new(params: ControllerParams, local: Option<std::net::IpAddr>) -> Self {
        let config = ReaderConfig {
            role: Role::Controller,
            header_digest: false,
            data_digest: false,
            pda_bytes: 4,
            max_in_capsule: IN_CAPSULE_DATA,
            max_data_pdu: params.max_h2c_data as usize,
        };
        Self {
            params,
            reader: PduReader::new(config),
            negotiated: None,
            controller: QueueController::new(
                TransportLimits {
                    in_capsule_data: IN_CAPSULE_DATA,
                    keyed_sgls: false,
                },
                local,
            ),
            slots: (0..MAX_QUEUE_ENTRIES).map(|_| Slot::new()).collect(),
            sink: Sink::Nowhere,
            ios: VecDeque::new(),
            out: GatherOutput::default(),
            closing: false,
            peer_terminated: false,
            started_ms: None,
            ended: None,
        }
    }

    /// Bytes waiting to be sent (all of [`Self::output_chunks`]).
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// What waits to be sent, in order: staged headers and answers, and read data in
    /// its command's buffer.
    pub fn output_chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.out.chunks(|i| self.slots[i].buf.as_slice())
    }

    /// The first piece of the output (empty when there is none).
    pub fn output(&self) -> &[u8] {
        self.output_chunks().next().unwrap_or(&[])
    }

    /// `n` bytes of the output were sent: a slot whose data went out in full is free.
    pub fn consume_output(&mut self, n: usize) {
        let slots = &mut self.slots;
        self.out.consume(n, |i| {
            let s = &mut slots[i];
            s.state = SlotState::Free;
            s.io = None;
        });
    }

    /// All of the output, copied, as sent (for tests, fuzzing and callers that want one
    /// buffer).
    pub fn take_output(&mut self) -> Vec<u8> {
        let all = output::concat(self.output_chunks(), self.output_len());
        self.consume_output(all.len());
        all
    }

    /// Whether the connection should be closed once the output is sent (after a
    /// TermReq, a Disconnect, or the peer's TermReq).
    pub fn closing(&self) -> bool {
        self.closing
    }

    pub fn controller(&self) -> &QueueController {
        &self.controller
    }

    /// The next block operation to run: its slot and what to do. The data moves through
    /// [`Self::buffer_mut`] of that slot.
    pub fn next_io(&mut self) -> Option<(usize, BlockIo)> {
        let slot = self.ios.pop_front()?;
        let io = self.slots[slot].io.clone()?;
        Some((slot, io))
    }

    /// The data buffer of a slot whose block operation is running (sized for it).
    pub fn buffer_mut(&mut self, slot: usize) -> &mut [u8] {
        self.slots[slot].buf.as_mut_slice()
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

    /// Periodic work: keep-alive expiry, I/O queues whose controller is gone, hosts that
    /// never finish Connect, and R2Ts whose data never comes. Returns false when the queue
    /// must close now; [`Self::end_reason`] says why.
    pub fn tick(&mut self, now_ms: u64, registry: &Mutex<Registry>) -> bool {
        let started = *self.started_ms.get_or_insert(now_ms);
        let waited = |since: u64| now_ms.saturating_sub(since);
        self.ended = if self.controller.qid().is_none() && waited(started) >= CONNECT_TIMEOUT_MS {
            // Hosts send ICReq and Connect right after the TCP handshake.
            Some("no ICReq and Connect within 10 s")
        } else if self.controller.keep_alive_expired(now_ms) {
            Some("keep-alive timeout expired")
        } else if !self.controller.controller_alive(registry) {
            Some("its controller is gone")
        } else if self
            .slots
            .iter()
            .any(|s| s.state == SlotState::AwaitingData && waited(s.r2t_ms) >= DATA_TIMEOUT_MS)
        {
            Some("the data an R2T asked for did not come within 30 s")
        } else {
            None
        };
        if self.ended.is_some() {
            self.closing = true;
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

    /// The connection is gone: release the controller or the queue's place in it.
    pub fn teardown(&mut self, registry: &Mutex<Registry>) {
        self.controller.teardown(registry);
    }

    /// Takes bytes from the socket and returns how many it took. Protocol errors queue a
    /// TermReq and set `closing`.
    ///
    /// Back-pressure: once [`Self::output`] holds [`OUTPUT_HIGH_WATER`] bytes the queue
    /// stops taking PDUs, so a host that reads nothing while it sends READs cannot grow the
    /// output without bound. The caller keeps the rest and offers it again when the
    /// output has drained (the kernel's or the user-space stack's receive window then
    /// closes on the host). At most one command's answer lands past the mark here; answers
    /// of block operations in flight add at most a slot each.
    pub fn receive(&mut self, input: &[u8], registry: &Mutex<Registry>, now_ms: u64) -> usize {
        let mut rest = input;
        while !self.closing && self.out.len() < OUTPUT_HIGH_WATER {
            match self.reader.next(&mut rest) {
                Ok(None) => break,
                Ok(Some(event)) => {
                    if let Err(fatal) = self.event(event, registry, now_ms) {
                        self.fail(fatal);
                    }
                }
                Err(fatal) => self.fail(fatal),
            }
        }
        if self.closing {
            // Nothing more is read from a closing connection: drop the rest.
            return input.len();
        }
        input.len() - rest.len()
    }

    fn fail(&mut self, fatal: Fatal) {
        if let Fatal::Terminate { fes, fei } = fatal {
            let header = self.reader.offending_header();
            let len = header.len().min(TERM_MAX_DATA);
            let pdu = writer::c2h_term_req(fes, fei, &header[..len]);
            self.out.stage(pdu.header());
        }
        self.closing = true;
    }

    fn event(
        &mut self,
        event: Event<'_>,
        registry: &Mutex<Registry>,
        now_ms: u64,
    ) -> Result<(), Fatal> {
        match event {
            Event::Header(h) => {
                let bytes = h.bytes();
                match h.layout.pdu_type {
                    PduType::IcReq => self.icreq(bytes),
                    PduType::CapsuleCmd => self.capsule(bytes, h.layout.data_len, registry, now_ms),
                    PduType::H2cData => self.h2c_data(bytes, &h.layout),
                    // The host ends the connection; its TermReq is read to the end first.
                    PduType::H2cTermReq => {
                        self.sink = Sink::Nowhere;
                        self.peer_terminated = true;
                        Ok(())
                    }
                    _ => Err(Fatal::invalid_field(0)),
                }
            }
            Event::Data(d) => {
                if let Sink::Slot(i) = self.sink {
                    let s = &mut self.slots[i];
                    let end = s.received + d.len();
                    // The reader bounded the PDU's data; the slot's window was checked
                    // against it when the header arrived.
                    s.buf.as_mut_slice()[s.received..end].copy_from_slice(d);
                    s.received = end;
                }
                Ok(())
            }
            Event::End { data_digest_ok } => {
                if let Sink::Slot(i) = std::mem::replace(&mut self.sink, Sink::Nowhere) {
                    let s = &mut self.slots[i];
                    s.digest_failed |= !data_digest_ok;
                    if s.received == s.expected {
                        self.execute(i, registry, now_ms);
                    }
                } else if self.peer_terminated {
                    self.closing = true;
                }
                Ok(())
            }
        }
    }

    fn icreq(&mut self, header: &[u8]) -> Result<(), Fatal> {
        let req = IcRepr::parse(header).map_err(|_| Fatal::invalid_field(0))?;
        let (resp, n) = icreq::accept(&req, &self.params)?;
        self.out.stage(writer::ic_resp(&resp).header());
        self.reader.initialized(ReaderConfig {
            role: Role::Controller,
            header_digest: n.header_digest,
            data_digest: n.data_digest,
            pda_bytes: n.host_pda_bytes,
            max_in_capsule: IN_CAPSULE_DATA,
            max_data_pdu: n.max_h2c_data as usize,
        });
        self.negotiated = Some(n);
        Ok(())
    }

    fn capsule(
        &mut self,
        header: &[u8],
        data_len: usize,
        registry: &Mutex<Registry>,
        now_ms: u64,
    ) -> Result<(), Fatal> {
        let sqe_bytes = *capsule_sqe(header).map_err(|_| Fatal::invalid_field(2))?;
        let sqe = Sqe::new_unchecked(&sqe_bytes[..]);
        let cid = sqe.cid();
        // A slot still sending its read data is answered: its CID is the host's again
        // once the answer arrives (after the data), so it conflicts with nothing.
        if self
            .slots
            .iter()
            .any(|s| !matches!(s.state, SlotState::Free | SlotState::Sending) && s.cid() == cid)
        {
            return self.reject(cid, GenericStatus::CommandIdConflict);
        }
        let Some(i) = self.slots.iter().position(|s| s.state == SlotState::Free) else {
            // More commands than SQ entries: the host broke SQ flow control.
            return self.reject(cid, GenericStatus::CommandInterrupted);
        };
        let direction = if sqe.opcode() == FABRICS_OPCODE {
            DataTransfer::from_opcode(sqe.fctype_raw())
        } else {
            DataTransfer::from_opcode(sqe.opcode())
        };
        let (in_capsule, length) = match sqe.sgl() {
            Ok(SglRepr::InCapsule { offset: 0, length }) => (true, length as usize),
            Ok(SglRepr::InCapsule { .. }) => {
                return self.reject(cid, GenericStatus::SglOffsetInvalid);
            }
            Ok(SglRepr::Transport { length }) => (false, length as usize),
            _ => return self.reject(cid, GenericStatus::SglDescriptorTypeInvalid),
        };
        if length > MAX_TRANSFER {
            return self.reject(cid, GenericStatus::InvalidField);
        }
        if in_capsule != (data_len > 0) || (in_capsule && length != data_len) {
            return self.reject(cid, GenericStatus::DataSglLengthInvalid);
        }
        let s = &mut self.slots[i];
        s.sqe = sqe_bytes;
        s.received = 0;
        s.digest_failed = false;
        s.io = None;
        let host_data = matches!(
            direction,
            DataTransfer::HostToController | DataTransfer::Bidirectional
        );
        s.expected = if host_data { length } else { 0 };
        // Controller-to-host data is sized when the response is known.
        s.buf.set_len(s.expected);
        if in_capsule {
            if !host_data {
                return self.reject(cid, GenericStatus::DataSglLengthInvalid);
            }
            s.state = SlotState::CapsuleData;
            self.sink = Sink::Slot(i);
        } else if s.expected > 0 {
            s.state = SlotState::AwaitingData;
            s.r2t_ms = now_ms;
            let n = self.negotiated.expect("capsules come after ICReq");
            let ttag = u16::try_from(i).expect("slots fit a TTAG");
            let len = u32::try_from(s.expected).expect("bounded by MDTS");
            self.out.stage(writer::r2t(cid, ttag, 0, len, &n).header());
        } else {
            s.state = SlotState::InIo;
            self.execute(i, registry, now_ms);
        }
        Ok(())
    }

    /// Answers a command that never got a slot.
    fn respond_without_slot(&mut self, cid: u16, status: Status) {
        let qid = self.controller.qid().unwrap_or(0);
        let sqhd = self.controller.next_sqhd();
        let cqe = CqeRepr::new(cid, qid, sqhd, status).to_bytes();
        let n = self.negotiated.expect("capsules come after ICReq");
        self.out.stage(writer::capsule_resp(&cqe, &n).header());
    }

    /// Answers a command with an error before it takes a slot; its in-capsule data (if
    /// any) is read and dropped.
    fn reject(&mut self, cid: u16, status: GenericStatus) -> Result<(), Fatal> {
        // Only an overfull queue may succeed on retry; the rest would fail the same way.
        let status = Status::generic(status);
        let status = if status == Status::generic(GenericStatus::CommandInterrupted) {
            status
        } else {
            status.with_dnr()
        };
        self.respond_without_slot(cid, status);
        self.sink = Sink::Nowhere;
        Ok(())
    }

    fn h2c_data(
        &mut self,
        header: &[u8],
        layout: &target_wire::nvme_tcp::PduLayout,
    ) -> Result<(), Fatal> {
        let d = DataRepr::parse(header).map_err(|_| Fatal::invalid_field(0))?;
        d.check_length(layout)
            .map_err(|b| Fatal::invalid_field(b.offset))?;
        let i = usize::from(d.ttag);
        let Some(s) = self
            .slots
            .get(i)
            .filter(|s| s.state == SlotState::AwaitingData && s.cid() == d.cccid)
        else {
            return Err(Fatal::invalid_field(TTAG_OFFSET));
        };
        // Data arrives in order, inside what the R2T asked for.
        if d.offset as usize != s.received {
            return Err(Fatal::invalid_field(DATAO_OFFSET));
        }
        if s.received + d.length as usize > s.expected {
            return Err(Fatal::Terminate {
                fes: Fes::DataTransferOutOfRange,
                fei: 0,
            });
        }
        self.sink = Sink::Slot(i);
        Ok(())
    }

    fn execute(&mut self, i: usize, registry: &Mutex<Registry>, now_ms: u64) {
        let s = &mut self.slots[i];
        if s.digest_failed {
            // NVMe/TCP 1.0, 3.6.2.x: a data digest error ends the command, not the link.
            let r = Response::status(Status::generic(GenericStatus::TransientTransportError));
            return self.respond(i, r);
        }
        let sqe_bytes = s.sqe;
        let sqe = Sqe::new_unchecked(&sqe_bytes[..]);
        let plan = self
            .controller
            .execute(&sqe, &s.buf.as_slice()[..s.received], registry, now_ms);
        match plan {
            Plan::Respond(r) => self.respond(i, r),
            Plan::RespondAndClose(r) => {
                self.respond(i, r);
                self.closing = true;
            }
            Plan::Hold => self.slots[i].state = SlotState::Held,
            Plan::Io(io) => {
                let s = &mut self.slots[i];
                // A read lands in the buffer; Compare keeps the host's data there.
                if let BlockOp::Read { len, .. } = io.op {
                    s.buf.set_len(len as usize);
                }
                s.io = Some(io);
                s.state = SlotState::InIo;
                self.ios.push_back(i);
            }
        }
    }

    /// Queues the data (if any) and the response of slot `i`. Read data stays in the
    /// slot's buffer, referred to by the output; the slot is free once it was sent.
    fn respond(&mut self, i: usize, r: Response) {
        let n = self.negotiated.expect("commands come after ICReq");
        let qid = self.controller.qid().unwrap_or(0);
        let sqhd = self.controller.next_sqhd();
        let s = &self.slots[i];
        let cid = s.cid();
        let sqe = Sqe::new_unchecked(&s.sqe[..]);
        // The host's buffer: the SGL length bounds what goes back.
        let host_len = match sqe.sgl() {
            Ok(SglRepr::Transport { length }) => length as usize,
            _ => 0,
        };
        let (data, in_slot): (&[u8], bool) = match &r.data {
            ResponseData::None => (&[], false),
            ResponseData::Owned(v) => (&v[..v.len().min(host_len)], false),
            ResponseData::InBuffer(len) => {
                let b = s.buf.as_slice();
                (&b[..(*len).min(host_len).min(b.len())], true)
            }
        };
        let success = r.status.is_success();
        let success_flag =
            success && self.controller.sq_flow_control_disabled() && !data.is_empty();
        let mut sending = false;
        if !data.is_empty() {
            let pdu = writer::c2h_data(cid, 0, data, true, success_flag, &n);
            let len = data.len();
            self.out.stage(pdu.header());
            if in_slot {
                self.out.lend(i, 0, len, true);
                sending = true;
            } else {
                // Identify and log pages: built for this answer, small.
                self.out.stage(data);
            }
            if let Some(d) = pdu.data_digest {
                self.out.stage(&d);
            }
        }
        if !success_flag {
            let mut cqe = CqeRepr::new(cid, qid, sqhd, r.status);
            cqe.dw0 = r.dw0;
            cqe.dw1 = r.dw1;
            self.out
                .stage(writer::capsule_resp(&cqe.to_bytes(), &n).header());
        }
        let s = &mut self.slots[i];
        if sending {
            s.state = SlotState::Sending;
        } else {
            s.state = SlotState::Free;
            s.io = None;
        }
    }
}
