//! The host end of one NVMe/RDMA queue pair, sans-I/O: the initiator `xdp-target perf`
//! drives a controller with over `nvme-rdma://`, the RDMA counterpart of
//! [`nvme_tcp::host`](crate::nvme_tcp::host) (whose [`commands`] build the SQEs). NVM
//! Express RDMA Transport Specification 1.0, section 3, as Linux's host does it
//! (`drivers/nvme/host/rdma.c`): a command capsule is the 64-byte SQE, followed by
//! in-capsule data (Data Block SGL, subtype Offset) when the data is a write that fits the
//! controller's IOCCSZ, sent with RDMA SEND; otherwise the SQE names one of the host's
//! buffers with a Keyed SGL Data Block, which the controller RDMA READs (host to
//! controller) or RDMA WRITEs (controller to host). The response capsule is the bare
//! 16-byte CQE, received into one of the receives the host keeps posted.
//!
//! The queue owns the memory the transport registers ([`HostQueue::memory_mut`]): a
//! capsule buffer and a data buffer per command slot, and one response buffer per receive.
//! The transport posts the SENDs of [`HostQueue::next_send`], keeps a receive posted on
//! every response buffer (all of them before it connects), and reports completions to
//! [`HostQueue::response`] and [`HostQueue::send_done`]; finished commands come out of
//! [`HostQueue::completion`].
//!
//! Invariants:
//! - At most `depth` (HSQSIZE + 1) commands are outstanding, and `depth` receives (HRQSIZE)
//!   are posted: every response finds a receive.
//! - A slot (its capsule buffer, data buffer and CID) is reused only after both its SEND
//!   completed and its response arrived; either may come first (Linux waits for both the
//!   same way). Only then is the command's [`Completion`] given out.
//! - A CID is the slot index with a 4-bit generation above it, as Linux's `nvme_cid`
//!   carries one: a response naming a command that is not outstanding, or an earlier use
//!   of its slot, is the controller's error.
//! - The memory is allocated once and never moves or changes length, so registrations of
//!   it stay valid for the life of the queue.
//! - Keyed SGLs have subtype Address, never Invalidate Key: the data buffers are one
//!   long-lived memory region, not a key per command, so there is nothing to invalidate.

use std::collections::VecDeque;

use target_wire::nvme::cqe::{CQE_LEN, Cqe, CqeRepr};
use target_wire::nvme::sgl::{KEYED_MAX_LEN, SglRepr};
use target_wire::nvme::sqe::{SQE_LEN, Sqe};
use target_wire::nvme_rdma::{CM_REQ_LEN, CmReplyRepr, CmRequestRepr, RECFMT_1_0};

pub use crate::nvme_tcp::host::{Completion, commands};

/// Bytes of a response buffer: the response capsule is the bare CQE.
pub const RESPONSE_LEN: usize = CQE_LEN;
/// Bits of a CID that name the slot; the generation is above them.
const SLOT_BITS: u32 = 12;
/// The most slots a queue may have.
pub const MAX_DEPTH: u16 = 1 << SLOT_BITS;

/// What a queue is set up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Entries of the queue (HSQSIZE + 1, at least 2, at most [`MAX_DEPTH`]): the commands
    /// it may have outstanding, and the receives the transport keeps posted (HRQSIZE).
    pub depth: u16,
    /// Bytes of write data that go in the capsule: the controller's IOCCSZ * 16 - 64, or 0
    /// (an admin queue, where Linux sends none). Larger writes go by Keyed SGL.
    pub in_capsule: usize,
    /// Bytes of each slot's data buffer: the largest transfer a command may have.
    pub data_len: usize,
}

/// The memory regions of a queue, each registered on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// Capsule buffers, one per slot: what the SENDs read (local access only).
    Capsules,
    /// Response buffers of [`RESPONSE_LEN`] bytes, one per receive (local write).
    Responses,
    /// Data buffers, one per slot, that the controller reads and writes (remote read and
    /// write): name the registration with [`HostQueue::set_data_key`].
    Data,
}

/// A SEND to post: `len` bytes at `offset` in [`Region::Capsules`]. Report its completion
/// with [`HostQueue::send_done`]`(slot)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendCapsule {
    pub slot: usize,
    pub offset: usize,
    pub len: usize,
}

/// Why a command was not queued (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// `depth` commands are outstanding.
    Full,
    /// The data does not fit a slot's buffer.
    TooLong { len: usize, max: usize },
    /// The command needs the data buffers, and [`HostQueue::set_data_key`] was not called.
    Unregistered,
}

/// Why the queue is unusable: the controller sent what no command asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    Unexpected(&'static str),
}

/// Where a command is, one state per slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// The capsule waits for the transport ([`HostQueue::next_send`]).
    Queued,
    /// The SEND is posted; neither it nor the response has completed.
    Posted,
    /// The SEND completed; the response is awaited.
    Sent,
    /// The response arrived before the SEND's completion.
    Answered(CqeRepr),
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: SlotState,
    cid: u16,
    /// Bytes the controller returns into the data buffer.
    read_len: usize,
}

pub struct HostQueue {
    config: HostConfig,
    /// Bytes of a capsule buffer: the SQE and the in-capsule data.
    capsule_len: usize,
    capsules: Box<[u8]>,
    responses: Box<[u8]>,
    data: Box<[u8]>,
    /// The data region as the controller addresses it, and its rkey.
    data_key: Option<(u64, u32)>,
    slots: Vec<Slot>,
    /// Free slots, the most recently freed last (its buffers are warm).
    free: Vec<usize>,
    sends: VecDeque<usize>,
    completions: VecDeque<Completion>,
}

impl HostQueue {
    /// A queue with its memory allocated (zeroed).
    ///
    /// # Panics
    /// When the depth is outside `2..=MAX_DEPTH` or a slot's data buffer is larger than a
    /// Keyed SGL can describe: the caller's configuration, not the controller's.
    pub fn new(config: HostConfig) -> Self {
        assert!(
            (2..=MAX_DEPTH).contains(&config.depth),
            "a queue of 2 to {MAX_DEPTH} entries"
        );
        assert!(
            config.data_len <= KEYED_MAX_LEN as usize,
            "data buffers a Keyed SGL can describe"
        );
        let depth = usize::from(config.depth);
        let capsule_len = SQE_LEN + config.in_capsule;
        Self {
            config,
            capsule_len,
            capsules: vec![0; depth * capsule_len].into_boxed_slice(),
            responses: vec![0; depth * RESPONSE_LEN].into_boxed_slice(),
            data: vec![0; depth * config.data_len].into_boxed_slice(),
            data_key: None,
            slots: vec![
                Slot {
                    state: SlotState::Free,
                    cid: 0,
                    read_len: 0,
                };
                depth
            ],
            free: (0..depth).rev().collect(),
            sends: VecDeque::with_capacity(depth),
            completions: VecDeque::with_capacity(depth),
        }
    }

    pub fn config(&self) -> HostConfig {
        self.config
    }

    /// The connect request's private data for queue `qid` (0: admin) of controller
    /// `cntlid` (0 on the admin queue, as Linux sends it): HSQSIZE is the depth 0's based,
    /// HRQSIZE the depth (the receives posted).
    pub fn cm_request(&self, qid: u16, cntlid: u16) -> [u8; CM_REQ_LEN] {
        let mut b = [0u8; CM_REQ_LEN];
        CmRequestRepr {
            recfmt: RECFMT_1_0,
            qid,
            hrqsize: self.config.depth,
            hsqsize: self.config.depth - 1,
            cntlid,
        }
        .emit(&mut b)
        .expect("32 bytes");
        b
    }

    /// Checks the accept's private data: the controller must take as many commands as
    /// the queue sends. A CRQSIZE of 0 counts as not given (the CM pads absent private
    /// data with zeroes).
    pub fn accepted(&self, private_data: &[u8]) -> Result<(), HostError> {
        match CmReplyRepr::parse(private_data) {
            Ok(r) if r.crqsize != 0 && r.crqsize < self.config.depth => Err(HostError::Unexpected(
                "the controller's receive queue is smaller than HSQSIZE + 1",
            )),
            _ => Ok(()),
        }
    }

    /// A region of the queue's memory, for the transport to register. It never moves.
    pub fn memory_mut(&mut self, region: Region) -> &mut [u8] {
        match region {
            Region::Capsules => &mut self.capsules,
            Region::Responses => &mut self.responses,
            Region::Data => &mut self.data,
        }
    }

    pub fn memory(&self, region: Region) -> &[u8] {
        match region {
            Region::Capsules => &self.capsules,
            Region::Responses => &self.responses,
            Region::Data => &self.data,
        }
    }

    /// Names [`Region::Data`] as the controller reaches it: its address (the first byte's)
    /// and rkey.
    pub fn set_data_key(&mut self, address: u64, rkey: u32) {
        self.data_key = Some((address, rkey));
    }

    /// Receives the transport keeps posted, one per response buffer: receive `i` takes
    /// [`RESPONSE_LEN`] bytes at [`Self::response_offset`]`(i)` of [`Region::Responses`].
    pub fn receives(&self) -> usize {
        usize::from(self.config.depth)
    }

    pub fn response_offset(&self, i: usize) -> usize {
        i * RESPONSE_LEN
    }

    /// Commands outstanding (from [`Self::submit`] until their [`Completion`]).
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether a command may be submitted now.
    pub fn can_submit(&self) -> bool {
        !self.free.is_empty()
    }

    /// Queues a command: `write` goes to the controller (in the capsule when it fits
    /// [`HostConfig::in_capsule`], else by Keyed SGL from the slot's data buffer);
    /// without it, `read_len` bytes of the slot's data buffer take what the controller
    /// returns (a command moves data one way). Returns the CID given to the command.
    pub fn submit(
        &mut self,
        mut sqe: [u8; 64],
        write: &[u8],
        read_len: usize,
    ) -> Result<u16, SubmitError> {
        let len = if write.is_empty() {
            read_len
        } else {
            write.len()
        };
        let in_capsule = !write.is_empty() && write.len() <= self.config.in_capsule;
        if !in_capsule && len > self.config.data_len {
            let max = if write.is_empty() {
                self.config.data_len
            } else {
                self.config.data_len.max(self.config.in_capsule)
            };
            return Err(SubmitError::TooLong { len, max });
        }
        if !in_capsule && len > 0 && self.data_key.is_none() {
            return Err(SubmitError::Unregistered);
        }
        let Some(slot) = self.free.pop() else {
            return Err(SubmitError::Full);
        };
        let generation = (self.slots[slot].cid >> SLOT_BITS).wrapping_add(1) & 0xf;
        let cid = (generation << SLOT_BITS) | slot as u16;
        let length = u32::try_from(len).expect("bounded by a buffer");
        let sgl = match self.data_key {
            _ if in_capsule => SglRepr::InCapsule { offset: 0, length },
            Some((base, rkey)) if len > 0 => SglRepr::Keyed {
                address: base + (slot * self.config.data_len) as u64,
                length,
                key: rkey,
                invalidate: false,
            },
            // No data: a Keyed SGL of length 0 (Linux's nvme_rdma_set_sg_null).
            _ => SglRepr::Keyed {
                address: 0,
                length: 0,
                key: 0,
                invalidate: false,
            },
        };
        {
            let mut s = Sqe::new_unchecked(&mut sqe[..]);
            s.set_cid(cid);
            s.set_sgl(&sgl).expect("lengths bounded by KEYED_MAX_LEN");
        }
        let at = slot * self.capsule_len;
        self.capsules[at..at + SQE_LEN].copy_from_slice(&sqe);
        if in_capsule {
            self.capsules[at + SQE_LEN..at + SQE_LEN + len].copy_from_slice(write);
        } else if !write.is_empty() {
            let d = slot * self.config.data_len;
            self.data[d..d + len].copy_from_slice(write);
        }
        self.slots[slot] = Slot {
            state: SlotState::Queued,
            cid,
            read_len: if write.is_empty() { read_len } else { 0 },
        };
        self.sends.push_back(slot);
        Ok(cid)
    }

    /// The next capsule to SEND.
    pub fn next_send(&mut self) -> Option<SendCapsule> {
        let slot = self.sends.pop_front()?;
        self.slots[slot].state = SlotState::Posted;
        let sqe = Sqe::new_unchecked(&self.capsules[slot * self.capsule_len..][..SQE_LEN]);
        let in_capsule = match sqe.sgl() {
            Ok(SglRepr::InCapsule { length, .. }) => length as usize,
            _ => 0,
        };
        Some(SendCapsule {
            slot,
            offset: slot * self.capsule_len,
            len: SQE_LEN + in_capsule,
        })
    }

    /// The SEND of `slot` completed (successfully: a failed one ends the queue pair, which
    /// is the transport's to report).
    pub fn send_done(&mut self, slot: usize) -> Result<(), HostError> {
        match self.slots.get(slot).map(|s| s.state) {
            Some(SlotState::Posted) => {
                self.slots[slot].state = SlotState::Sent;
                Ok(())
            }
            Some(SlotState::Answered(cqe)) => {
                self.complete(slot, cqe);
                Ok(())
            }
            _ => Err(HostError::Unexpected(
                "a SEND completion for no capsule posted",
            )),
        }
    }

    /// Receive `index` completed with `len` bytes (a response capsule). The transport
    /// posts the receive again afterwards, whatever this returns.
    pub fn response(&mut self, index: usize, len: usize) -> Result<(), HostError> {
        if index >= self.receives() {
            return Err(HostError::Unexpected("a receive the queue did not post"));
        }
        if len < RESPONSE_LEN {
            return Err(HostError::Unexpected(
                "a response shorter than a completion queue entry",
            ));
        }
        let at = self.response_offset(index);
        let bytes = &self.responses[at..at + RESPONSE_LEN];
        let cqe = Cqe::new_checked(bytes)
            .and_then(|c| CqeRepr::parse(&c))
            .map_err(|_| HostError::Unexpected("a malformed completion queue entry"))?;
        let slot = usize::from(cqe.cid & (MAX_DEPTH - 1));
        let state = self
            .slots
            .get(slot)
            .filter(|s| s.cid == cqe.cid)
            .map(|s| s.state);
        match state {
            Some(SlotState::Posted) => {
                self.slots[slot].state = SlotState::Answered(cqe);
                Ok(())
            }
            Some(SlotState::Sent) => {
                self.complete(slot, cqe);
                Ok(())
            }
            _ => Err(HostError::Unexpected(
                "a response for no command outstanding",
            )),
        }
    }

    /// A finished command, in the order they finished.
    pub fn completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    fn complete(&mut self, slot: usize, cqe: CqeRepr) {
        let s = &mut self.slots[slot];
        let d = slot * self.config.data_len;
        let data = self.data[d..d + s.read_len].to_vec();
        s.state = SlotState::Free;
        s.read_len = 0;
        self.free.push(slot);
        self.completions.push_back(Completion {
            cid: cqe.cid,
            cqe,
            data,
        });
    }
}
