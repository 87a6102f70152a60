//! One SCSI command from CDB to status: [`Task::new`] checks what can be checked before
//! data-out arrives (unit attentions, reservations, CDB fields, LBA ranges), and
//! [`Task::step`] runs the rest as a small state machine of block operations.
//!
//! Order of checks (SAM-5 5.14, SPC-4 5.12, SBC-3 4.17): a pending unit attention first
//! (except for INQUIRY, REPORT LUNS and REQUEST SENSE), then reservation conflicts, then
//! the CDB's fields, the LBA range (LOGICAL BLOCK ADDRESS OUT OF RANGE), the transfer
//! length against the block limits, and write protection. Reservations are checked again
//! before each block operation when they changed since (a write waiting for its data-out,
//! the write half of COMPARE AND WRITE, a WRITE SAME chunk).

use std::sync::Arc;

use super::cdb::{Cdb, be_at, cdb_len, op};
use super::inquiry;
use super::lu::{Access, LuState, NexusGate};
use super::mode;
use super::opcodes;
use super::pr::{self, PROUT_PARAM_LEN};
use super::sense::{Asc, Reject, Sense, key, status};
use super::{
    AlignedBuf, BlockIo, BlockOp, IoOutcome, LogicalUnit, LunConfig, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS, Nexus, ScsiTarget, WRITE_SAME_CHUNK_BYTES,
};

/// What the transport does next with a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run this block operation on the command's buffer, then call `step` with its outcome.
    Io(BlockIo),
    /// The command is over.
    Done(Completion),
    /// Another I_T nexus aborted the command (PREEMPT AND ABORT, SPC-4 5.12.11.2.5). TAS is
    /// 0 in the control mode page, so it ends without status: the transport sends nothing
    /// for it and frees it.
    Aborted,
    /// The command waits for other I_T nexuses (PREEMPT AND ABORT, for the block operations
    /// of the tasks it aborted to come back): call `step` again, without an outcome, later
    /// (on a timer tick, or whenever the transport runs).
    Wait,
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// SAM status ([`status`]).
    pub status: u8,
    /// Sense data; empty unless the status is CHECK CONDITION.
    pub sense: Vec<u8>,
    /// The first `data_in` bytes of the buffer go to the initiator (already cut to the
    /// ALLOCATION LENGTH).
    pub data_in: usize,
}

impl Completion {
    pub fn good(data_in: usize) -> Self {
        Self {
            status: status::GOOD,
            sense: Vec::new(),
            data_in,
        }
    }
}

/// Largest parameter list (data-out) of a non-block command accepted.
const MAX_PARAM_LIST: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    /// Answer GOOD with this data-in (already truncated).
    Reply(Vec<u8>),
    Fail(Reject),
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        len: usize,
        fua: bool,
        verify: bool,
    },
    /// VERIFY with BYTCHK=01b: compare data-out with the medium.
    Verify {
        offset: u64,
        len: usize,
    },
    CompareAndWrite {
        offset: u64,
        len: usize,
        fua: bool,
    },
    WriteSame {
        offset: u64,
        len: u64,
        unmap: bool,
    },
    Unmap,
    Flush,
    ModeSelect {
        ten: bool,
        nexus: u64,
    },
    PrOut {
        sa: u8,
        scope_type: u8,
        nexus: Box<Nexus>,
    },
    AwaitRead {
        len: usize,
    },
    AwaitWrite {
        offset: u64,
        len: usize,
        verify: bool,
    },
    /// A Compare ran; on a match either GOOD or (COMPARE AND WRITE) the write half.
    AwaitCompare {
        offset: u64,
        len: usize,
        write_fua: Option<bool>,
    },
    /// After a miscompare: the medium was read to find the first differing byte.
    AwaitLocate {
        expected: Vec<u8>,
    },
    AwaitWriteSame {
        next: u64,
        end: u64,
        chunk: u64,
    },
    /// A single operation whose success is GOOD.
    AwaitDone,
    /// PREEMPT AND ABORT succeeded; GOOD once these nexuses' aborted tasks have no block
    /// operation in flight.
    AwaitAborts {
        gates: Vec<Arc<NexusGate>>,
    },
    Finished,
}

/// Where a task on a logical unit came from, for the checks it repeats before each block
/// operation.
#[derive(Debug)]
struct Origin {
    gate: Arc<NexusGate>,
    /// The nexus's abort generation when the task began ([`NexusGate`]).
    generation: u32,
    /// A block operation [`NexusGate::begin`] allowed has not come back.
    in_io: bool,
    opcode: u8,
    /// [`LunReservations::changes`](super::LunReservations) when reservations were last
    /// checked for this task.
    checked: u64,
}

/// A command in progress.
#[derive(Debug)]
pub struct Task {
    lu: Option<Arc<LogicalUnit>>,
    origin: Option<Origin>,
    data_out_len: usize,
    data_in: bool,
    descriptor_sense: bool,
    state: State,
}

struct Prepared {
    state: State,
    data_out: usize,
    data_in: bool,
}

impl Prepared {
    fn fail(r: impl Into<Reject>) -> Self {
        Self {
            state: State::Fail(r.into()),
            data_out: 0,
            data_in: false,
        }
    }

    /// Data-in built now, cut to the allocation length.
    fn reply(mut data: Vec<u8>, alloc: usize) -> Self {
        data.truncate(alloc);
        Self {
            state: State::Reply(data),
            data_out: 0,
            data_in: true,
        }
    }

    fn good() -> Self {
        Self::reply(Vec::new(), 0)
    }

    fn with_data_out(state: State, data_out: usize) -> Self {
        Self {
            state,
            data_out,
            data_in: false,
        }
    }
}

type Prep = Result<Prepared, Reject>;

impl Task {
    pub(crate) fn new(
        target: &ScsiTarget,
        lu: Option<Arc<LogicalUnit>>,
        nexus: &Nexus,
        cdb: &[u8],
    ) -> Self {
        let (p, descriptor_sense, origin) = match &lu {
            None => (no_lu(target, nexus, cdb), false, None),
            Some(lu) => {
                let mut st = lu.lock();
                let gate = st.seen(nexus);
                let p =
                    prepare(target, &lu.cfg, &mut st, nexus, cdb).unwrap_or_else(Prepared::fail);
                let origin = Origin {
                    generation: gate.generation(),
                    gate,
                    in_io: false,
                    opcode: cdb.first().copied().unwrap_or(0),
                    checked: lu.reservations.changes(),
                };
                // The format of this command's sense follows D_SENSE as it was when the
                // command arrived.
                (p, st.mode.d_sense, Some(origin))
            }
        };
        Self {
            lu,
            origin,
            data_out_len: p.data_out,
            data_in: p.data_in,
            descriptor_sense,
            state: p.state,
        }
    }

    /// A task that only answers CHECK CONDITION with `sense`: for errors the transport
    /// finds in what the initiator sent around the CDB.
    pub fn failed(sense: Sense) -> Self {
        Self {
            lu: None,
            origin: None,
            data_out_len: 0,
            data_in: false,
            descriptor_sense: false,
            state: State::Fail(Reject::Check(sense)),
        }
    }

    /// Bytes of data-out the CDB calls for; 0 for commands without data-out and for
    /// commands that already failed (their first step answers without data).
    pub fn data_out_len(&self) -> usize {
        self.data_out_len
    }

    /// Whether the command transfers data-in.
    pub fn data_in(&self) -> bool {
        self.data_in
    }

    /// Whether another I_T nexus aborted the command (its next step is [`Step::Aborted`]):
    /// a transport may stop collecting its data-out. One atomic load.
    pub fn aborted(&self) -> bool {
        self.origin
            .as_ref()
            .is_some_and(|o| o.gate.generation() != o.generation)
    }

    fn check(&self, sense: Sense) -> Completion {
        Completion {
            status: status::CHECK_CONDITION,
            sense: sense.to_bytes(self.descriptor_sense),
            data_in: 0,
        }
    }

    fn reject(&self, r: Reject) -> Completion {
        match r {
            Reject::Check(s) => self.check(s),
            Reject::Conflict => Completion {
                status: status::RESERVATION_CONFLICT,
                sense: Vec::new(),
                data_in: 0,
            },
        }
    }

    fn finish(&mut self, c: Completion) -> Step {
        self.state = State::Finished;
        Step::Done(c)
    }

    fn io(&mut self, op: BlockOp) -> Step {
        if self.reservation_conflict() {
            return self.finish(self.reject(Reject::Conflict));
        }
        if let Some(o) = &mut self.origin {
            if !o.gate.begin(o.generation) {
                self.state = State::Finished;
                return Step::Aborted;
            }
            o.in_io = true;
        }
        let (nsid, backend) = self
            .lu
            .as_ref()
            .map_or((0, 0), |lu| (lu.cfg.lun as u32, lu.cfg.backend));
        Step::Io(BlockIo { nsid, backend, op })
    }

    /// Reservations are checked when a command arrives (SPC-4 5.12.1), but a write may wait
    /// long for its data-out and a multi-step command runs several block operations: a
    /// reservation another I_T nexus took (or a registration it removed) meanwhile
    /// conflicts before the next one. One atomic load while reservations stay as they were.
    fn reservation_conflict(&mut self) -> bool {
        let (Some(lu), Some(o)) = (&self.lu, &mut self.origin) else {
            return false;
        };
        if lu.reservations.changes() == o.checked {
            return false;
        }
        let st = lu.lock();
        o.checked = lu.reservations.changes();
        st.conflicts(&o.gate.nexus, o.opcode, access(o.opcode))
    }

    fn cfg(&self) -> Option<&LunConfig> {
        self.lu.as_ref().map(|lu| &lu.cfg)
    }

    /// Advances the command. First call: `outcome` None and the buffer holds the data-out
    /// (possibly shorter than [`Self::data_out_len`]). After [`Step::Io`], call again with
    /// the operation's outcome.
    pub fn step(&mut self, buf: &mut AlignedBuf, outcome: Option<IoOutcome>) -> Step {
        if outcome.is_some() {
            self.io_back();
        }
        if self.aborted() {
            self.state = State::Finished;
            return Step::Aborted;
        }
        let state = std::mem::replace(&mut self.state, State::Finished);
        // A waiting state needs an outcome; a starting state ignores one.
        let waiting = matches!(
            state,
            State::AwaitRead { .. }
                | State::AwaitWrite { .. }
                | State::AwaitCompare { .. }
                | State::AwaitLocate { .. }
                | State::AwaitWriteSame { .. }
                | State::AwaitDone
                | State::Finished
        );
        if waiting {
            let Some(outcome) = outcome else {
                return self.finish(self.check(Sense::new(
                    key::HARDWARE_ERROR,
                    Asc::INTERNAL_TARGET_FAILURE,
                )));
            };
            return self.resume(state, buf, outcome);
        }
        self.start(state, buf)
    }

    /// The block operation in flight came back (or never will).
    fn io_back(&mut self) {
        if let Some(o) = &mut self.origin
            && std::mem::take(&mut o.in_io)
        {
            o.gate.end(o.generation);
        }
    }

    fn start(&mut self, state: State, buf: &mut AlignedBuf) -> Step {
        match state {
            State::Reply(data) => {
                buf.set_len(data.len());
                buf.as_mut_slice().copy_from_slice(&data);
                self.finish(Completion::good(data.len()))
            }
            State::Fail(r) => self.finish(self.reject(r)),
            State::Read { offset, len } => {
                buf.set_len(len);
                self.state = State::AwaitRead { len };
                self.io(BlockOp::Read {
                    offset,
                    len: len as u64,
                })
            }
            State::Write {
                offset,
                len,
                fua,
                verify,
            } => {
                if buf.as_slice().len() < len {
                    return self.finish(self.check(Sense::invalid_cdb(0, None)));
                }
                self.state = State::AwaitWrite {
                    offset,
                    len,
                    verify,
                };
                self.io(BlockOp::Write {
                    offset,
                    len: len as u64,
                    fua,
                })
            }
            State::Verify { offset, len } => {
                if buf.as_slice().len() < len {
                    return self.finish(self.check(Sense::invalid_cdb(0, None)));
                }
                self.state = State::AwaitCompare {
                    offset,
                    len,
                    write_fua: None,
                };
                self.io(BlockOp::Compare {
                    offset,
                    len: len as u64,
                })
            }
            State::CompareAndWrite { offset, len, fua } => {
                if buf.as_slice().len() < 2 * len {
                    return self.finish(self.check(Sense::invalid_cdb(0, None)));
                }
                self.state = State::AwaitCompare {
                    offset,
                    len,
                    write_fua: Some(fua),
                };
                self.io(BlockOp::Compare {
                    offset,
                    len: len as u64,
                })
            }
            State::WriteSame { offset, len, unmap } => self.write_same(buf, offset, len, unmap),
            State::Unmap => match self.cfg().map(|c| unmap_ranges(c, buf.as_slice())) {
                Some(Ok(ranges)) if !ranges.is_empty() => {
                    self.state = State::AwaitDone;
                    self.io(BlockOp::Deallocate { ranges })
                }
                Some(Err(r)) => self.finish(self.reject(r)),
                _ => self.finish(Completion::good(0)),
            },
            State::Flush => {
                self.state = State::AwaitDone;
                self.io(BlockOp::Flush)
            }
            State::ModeSelect { ten, nexus } => {
                let Some(lu) = self.lu.clone() else {
                    return self.finish(Completion::good(0));
                };
                if self.reservation_conflict() {
                    return self.finish(self.reject(Reject::Conflict));
                }
                let mut st = lu.lock();
                let mut params = st.mode;
                match mode::select(ten, buf.as_slice(), &lu.cfg, &mut params) {
                    Ok(changed) => {
                        st.mode = params;
                        if changed {
                            // SPC-4 7.5.1: other I_T nexuses learn of shared changes.
                            st.queue_ua_all(Asc::MODE_PARAMETERS_CHANGED, Some(nexus));
                        }
                        drop(st);
                        self.finish(Completion::good(0))
                    }
                    Err(r) => {
                        drop(st);
                        self.finish(self.reject(r))
                    }
                }
            }
            State::PrOut {
                sa,
                scope_type,
                nexus,
            } => {
                let Some(lu) = self.lu.clone() else {
                    return self.finish(Completion::good(0));
                };
                let r = pr::reserve_out(&mut lu.lock(), &nexus, sa, scope_type, buf.as_slice());
                match r {
                    Ok(gates) => self.start(State::AwaitAborts { gates }, buf),
                    Err(r) => self.finish(self.reject(r)),
                }
            }
            State::AwaitAborts { gates } => {
                if gates.iter().all(|g| g.drained()) {
                    self.finish(Completion::good(0))
                } else {
                    self.state = State::AwaitAborts { gates };
                    Step::Wait
                }
            }
            State::AwaitRead { .. }
            | State::AwaitWrite { .. }
            | State::AwaitCompare { .. }
            | State::AwaitLocate { .. }
            | State::AwaitWriteSame { .. }
            | State::AwaitDone
            | State::Finished => self.finish(self.check(Sense::new(
                key::HARDWARE_ERROR,
                Asc::INTERNAL_TARGET_FAILURE,
            ))),
        }
    }

    fn io_error(&mut self, outcome: IoOutcome) -> Step {
        let sense = match outcome {
            IoOutcome::ReadError => Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR),
            IoOutcome::WriteError => Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR),
            IoOutcome::Miscompare => Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY),
            IoOutcome::Ok => Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE),
        };
        self.finish(self.check(sense))
    }

    fn resume(&mut self, state: State, buf: &mut AlignedBuf, outcome: IoOutcome) -> Step {
        match (state, outcome) {
            (State::AwaitRead { len }, IoOutcome::Ok) => {
                self.finish(Completion::good(len.min(buf.as_slice().len())))
            }
            (
                State::AwaitWrite {
                    offset,
                    len,
                    verify: true,
                },
                IoOutcome::Ok,
            ) => {
                self.state = State::AwaitCompare {
                    offset,
                    len,
                    write_fua: None,
                };
                self.io(BlockOp::Compare {
                    offset,
                    len: len as u64,
                })
            }
            (State::AwaitWrite { .. } | State::AwaitDone, IoOutcome::Ok) => {
                self.finish(Completion::good(0))
            }
            (
                State::AwaitCompare {
                    offset,
                    len,
                    write_fua,
                },
                IoOutcome::Ok,
            ) => match write_fua {
                None => self.finish(Completion::good(0)),
                Some(fua) => {
                    // The write half follows the compare half in the data-out.
                    let data = buf.as_mut_slice();
                    if data.len() < 2 * len {
                        return self.io_error(IoOutcome::Ok);
                    }
                    data.copy_within(len..2 * len, 0);
                    self.state = State::AwaitWrite {
                        offset,
                        len,
                        verify: false,
                    };
                    self.io(BlockOp::Write {
                        offset,
                        len: len as u64,
                        fua,
                    })
                }
            },
            (State::AwaitCompare { offset, len, .. }, IoOutcome::Miscompare) => {
                // Find the first differing byte: keep what was expected, read the medium.
                let Some(expected) = buf.as_slice().get(..len).map(<[u8]>::to_vec) else {
                    return self.io_error(IoOutcome::Miscompare);
                };
                buf.set_len(len);
                self.state = State::AwaitLocate { expected };
                self.io(BlockOp::Read {
                    offset,
                    len: len as u64,
                })
            }
            (State::AwaitLocate { expected }, IoOutcome::Ok) => {
                let media = buf.as_slice();
                let at = expected.iter().zip(media).position(|(a, b)| a != b);
                let mut sense = Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY);
                if let Some(at) = at {
                    sense = sense.with_info(at as u64);
                }
                self.finish(self.check(sense))
            }
            (State::AwaitWriteSame { next, end, chunk }, IoOutcome::Ok) => {
                self.write_same_chunk(buf, next, end, chunk)
            }
            (_, outcome) => self.io_error(outcome),
        }
    }

    fn write_same(&mut self, buf: &mut AlignedBuf, offset: u64, len: u64, unmap: bool) -> Step {
        let Some(cfg) = self.cfg() else {
            return self.finish(Completion::good(0));
        };
        let bs = cfg.block_size as usize;
        let thin = cfg.thin;
        let Some(block) = buf.as_slice().get(..bs) else {
            return self.finish(self.check(Sense::invalid_cdb(0, None)));
        };
        // With UNMAP on a thin unit the range is deallocated and reads back as zeroes
        // (LBPRZ=1) whatever the data block holds, as Linux's target and libiscsi's
        // WriteSame*.UnmapUntilEnd expect. Zeroes need no buffer either way.
        let deallocate = unmap && thin;
        if deallocate || block.iter().all(|b| *b == 0) {
            self.state = State::AwaitDone;
            return self.io(BlockOp::WriteZeroes {
                offset,
                len,
                deallocate,
                fua: false,
            });
        }
        // A pattern: one chunk of copies of the block, written again and again.
        let block = block.to_vec();
        let chunk = (WRITE_SAME_CHUNK_BYTES / bs).max(1) * bs;
        let chunk = chunk.min(usize::try_from(len).unwrap_or(usize::MAX));
        buf.set_len(chunk);
        for c in buf.as_mut_slice().chunks_mut(bs) {
            c.copy_from_slice(&block[..c.len()]);
        }
        self.write_same_chunk(buf, offset, offset + len, chunk as u64)
    }

    fn write_same_chunk(&mut self, buf: &AlignedBuf, next: u64, end: u64, chunk: u64) -> Step {
        if next >= end {
            return self.finish(Completion::good(0));
        }
        let len = chunk.min(end - next).min(buf.as_slice().len() as u64);
        if len == 0 {
            return self.io_error(IoOutcome::Ok);
        }
        self.state = State::AwaitWriteSame {
            next: next + len,
            end,
            chunk,
        };
        self.io(BlockOp::Write {
            offset: next,
            len,
            fua: false,
        })
    }
}

impl Drop for Task {
    /// A task dropped with a block operation in flight (its connection went away; the
    /// transport keeps it until the operation is back) no longer holds up PREEMPT AND ABORT.
    fn drop(&mut self) {
        self.io_back();
    }
}

/// Commands to a LUN that does not exist (SPC-4 6.6.2, 6.33, 6.37; SAM-5 5.9.5).
fn no_lu(target: &ScsiTarget, nexus: &Nexus, bytes: &[u8]) -> Prepared {
    let cdb = Cdb(bytes);
    let len_ok = cdb_len(cdb.opcode()).is_some_and(|l| bytes.len() >= l);
    if !len_ok {
        return Prepared::fail(Sense::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED));
    }
    let r = match cdb.opcode() {
        op::INQUIRY => {
            inquiry::inquiry(cdb, None, nexus).map(|d| Prepared::reply(d, usize::from(cdb.be16(3))))
        }
        op::REPORT_LUNS => report_luns(target, cdb),
        op::REQUEST_SENSE => {
            let s = Sense::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED);
            Ok(Prepared::reply(
                s.to_bytes(cdb.bit(1, 0x01)),
                usize::from(cdb.u8(4)),
            ))
        }
        _ => Err(Sense::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED).into()),
    };
    r.unwrap_or_else(Prepared::fail)
}

fn report_luns(target: &ScsiTarget, cdb: Cdb<'_>) -> Prep {
    let alloc = cdb.be32(6) as usize;
    if alloc < 16 {
        return Err(Sense::invalid_cdb(6, None).into());
    }
    let data = match cdb.u8(2) {
        0 | 2 => inquiry::report_luns(target.luns().iter().map(|l| l.cfg.lun)),
        // Well-known logical units only: there are none.
        1 => inquiry::report_luns(std::iter::empty()),
        _ => return Err(Sense::invalid_cdb(2, None).into()),
    };
    Ok(Prepared::reply(data, alloc))
}

/// How an opcode stands against reservations (SPC-4 table 61, SBC-3 table 10).
fn access(opcode: u8) -> Access {
    match opcode {
        op::INQUIRY
        | op::REPORT_LUNS
        | op::REQUEST_SENSE
        | op::TEST_UNIT_READY
        | op::READ_CAPACITY_10
        | op::MAINTENANCE_IN
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::RESERVE_6
        | op::RELEASE_6 => Access::Always,
        op::SERVICE_ACTION_IN_16 => Access::Always,
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::MODE_SENSE_6
        | op::MODE_SENSE_10
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12 => Access::Read,
        _ => Access::Write,
    }
}

/// The byte range of `blocks` blocks at `lba`, or LOGICAL BLOCK ADDRESS OUT OF RANGE (an
/// LBA past the end is out of range even for zero blocks).
fn range(cfg: &LunConfig, lba: u64, blocks: u64) -> Result<(u64, u64), Reject> {
    if lba > cfg.blocks || blocks > cfg.blocks - lba {
        return Err(Sense::illegal(Asc::LBA_OUT_OF_RANGE).into());
    }
    let bs = u64::from(cfg.block_size);
    Ok((lba * bs, blocks * bs))
}

/// Write protection: the configuration's (WRITE PROTECTED) or the control mode page's
/// SWP (SOFTWARE WRITE PROTECTED, SPC-4 7.5.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protect {
    None,
    ReadOnly,
    Software,
}

fn write_protect(p: Protect) -> Result<(), Reject> {
    let asc = match p {
        Protect::None => return Ok(()),
        Protect::ReadOnly => Asc::WRITE_PROTECTED,
        Protect::Software => Asc::SOFTWARE_WRITE_PROTECTED,
    };
    Err(Sense::new(key::DATA_PROTECT, asc).into())
}

/// LBA, block count and where the count is in the CDB, for the READ/WRITE/VERIFY families.
fn lba_and_count(cdb: Cdb<'_>) -> (u64, u64, u16) {
    match cdb_len(cdb.opcode()) {
        Some(6) => {
            let n = match cdb.u8(4) {
                0 => 256,
                n => u64::from(n),
            };
            (u64::from(cdb.be24(1) & 0x1f_ffff), n, 4)
        }
        Some(10) => (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)), 7),
        Some(12) => (u64::from(cdb.be32(2)), u64::from(cdb.be32(6)), 6),
        _ => (cdb.be64(2), u64::from(cdb.be32(10)), 10),
    }
}

fn prepare(
    target: &ScsiTarget,
    cfg: &LunConfig,
    st: &mut LuState,
    n: &Nexus,
    bytes: &[u8],
) -> Prep {
    let cdb = Cdb(bytes);
    let opcode = cdb.opcode();
    let Some(len) = cdb_len(opcode).filter(|_| !bytes.is_empty()) else {
        return Err(Sense::illegal(Asc::INVALID_COMMAND_OPERATION_CODE).into());
    };
    if bytes.len() < len {
        return Err(Sense::invalid_cdb(0, None).into());
    }
    // SAM-5 5.14: a unit attention is reported to the next command but these.
    if !matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)
        && let Some(asc) = st.take_ua(n.id)
    {
        return Err(Sense::new(key::UNIT_ATTENTION, asc).into());
    }
    if !opcodes::COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && opcodes::supported(cfg, c))
    {
        return Err(Sense::illegal(Asc::INVALID_COMMAND_OPERATION_CODE).into());
    }
    if cdb.bit(len - 1, 0x04) {
        // NACA: ACA is not supported (SAM-5 5.9.1.1).
        return Err(Sense::invalid_cdb((len - 1) as u16, Some(2)).into());
    }
    let protect = if cfg.read_only {
        Protect::ReadOnly
    } else if st.mode.swp {
        Protect::Software
    } else {
        Protect::None
    };
    if st.conflicts(n, opcode, access(opcode)) {
        if opcode == op::RELEASE_6 && st.pr.regs.is_empty() {
            // Another nexus's RESERVE(6): RELEASE(6) does nothing (SPC-2 7.19).
            return Ok(Prepared::good());
        }
        return Err(Reject::Conflict);
    }
    match opcode {
        op::TEST_UNIT_READY => Ok(Prepared::good()),
        op::REQUEST_SENSE => {
            let desc = cdb.bit(1, 0x01);
            let sense = match st.take_ua(n.id) {
                Some(asc) => Sense::new(key::UNIT_ATTENTION, asc),
                None => Sense::new(key::NO_SENSE, Asc::NO_ADDITIONAL_SENSE),
            };
            Ok(Prepared::reply(
                sense.to_bytes(desc),
                usize::from(cdb.u8(4)),
            ))
        }
        op::INQUIRY => inquiry::inquiry(cdb, Some(cfg), n)
            .map(|d| Prepared::reply(d, usize::from(cdb.be16(3)))),
        op::REPORT_LUNS => report_luns(target, cdb),
        op::READ_CAPACITY_10 => {
            if !cdb.bit(8, 0x01) && cdb.be32(2) != 0 {
                return Err(Sense::invalid_cdb(2, None).into());
            }
            Ok(Prepared::reply(inquiry::read_capacity10(cfg), 8))
        }
        op::SERVICE_ACTION_IN_16 => match cdb.service_action() {
            op::SA_READ_CAPACITY_16 => Ok(Prepared::reply(
                inquiry::read_capacity16(cfg),
                cdb.be32(10) as usize,
            )),
            op::SA_GET_LBA_STATUS => get_lba_status(cfg, cdb),
            _ => Err(Sense::invalid_cdb(1, Some(4)).into()),
        },
        op::MAINTENANCE_IN => match cdb.service_action() {
            op::SA_REPORT_SUPPORTED_OPERATION_CODES => {
                opcodes::report(cdb, cfg).map(|d| Prepared::reply(d, cdb.be32(6) as usize))
            }
            op::SA_REPORT_SUPPORTED_TMFS => Ok(Prepared::reply(
                opcodes::report_tmfs(cdb),
                cdb.be32(6) as usize,
            )),
            _ => Err(Sense::invalid_cdb(1, Some(4)).into()),
        },
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => read(cfg, cdb),
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => write(cfg, cdb, false, protect),
        op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16 => {
            write(cfg, cdb, true, protect)
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => verify(cfg, cdb),
        op::COMPARE_AND_WRITE => compare_and_write(cfg, cdb, protect),
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => write_same(cfg, cdb, protect),
        op::UNMAP => {
            if cdb.bit(1, 0x01) {
                return Err(Sense::invalid_cdb(1, Some(0)).into()); // ANCHOR
            }
            write_protect(protect)?;
            let len = usize::from(cdb.be16(7));
            if len > MAX_PARAM_LIST {
                return Err(Sense::invalid_cdb(7, None).into());
            }
            Ok(Prepared::with_data_out(State::Unmap, len))
        }
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
            let (lba, blocks, _) = lba_and_count(cdb);
            // Zero blocks means through the last block.
            let blocks = if blocks == 0 {
                cfg.blocks.saturating_sub(lba)
            } else {
                blocks
            };
            range(cfg, lba, blocks)?;
            if cfg.volatile_write_cache {
                Ok(Prepared::with_data_out(State::Flush, 0))
            } else {
                Ok(Prepared::good())
            }
        }
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
            let (lba, blocks, _) = lba_and_count(cdb);
            range(cfg, lba, blocks)?;
            // No cache to load: GOOD (SBC-3 5.11: CONDITION MET only if all would fit).
            Ok(Prepared::good())
        }
        op::MODE_SENSE_6 => mode::sense(cdb, false, cfg, st.mode)
            .map(|d| Prepared::reply(d, usize::from(cdb.u8(4)))),
        op::MODE_SENSE_10 => mode::sense(cdb, true, cfg, st.mode)
            .map(|d| Prepared::reply(d, usize::from(cdb.be16(7)))),
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            let ten = opcode == op::MODE_SELECT_10;
            if cdb.bit(1, 0x01) {
                return Err(Sense::invalid_cdb(1, Some(0)).into()); // SP: nothing is saved
            }
            let len = if ten {
                usize::from(cdb.be16(7))
            } else {
                usize::from(cdb.u8(4))
            };
            Ok(Prepared::with_data_out(
                State::ModeSelect { ten, nexus: n.id },
                len,
            ))
        }
        op::RESERVE_6 => {
            // SPC-2 7.21: extents and third-party reservations are obsolete.
            if cdb.u8(1) & 0x03 != 0 {
                return Err(Sense::invalid_cdb(1, None).into());
            }
            st.reserve6 = Some(n.id);
            st.reservations_changed();
            Ok(Prepared::good())
        }
        op::RELEASE_6 => {
            if st.reserve6 == Some(n.id) {
                st.reserve6 = None;
                st.reservations_changed();
            }
            Ok(Prepared::good())
        }
        op::PERSISTENT_RESERVE_IN => {
            let alloc = usize::from(cdb.be16(7));
            st.pr
                .read(cdb.service_action())
                .map(|d| Prepared::reply(d, alloc))
                .ok_or_else(|| Sense::invalid_cdb(1, Some(4)).into())
        }
        op::PERSISTENT_RESERVE_OUT => {
            let sa = cdb.service_action();
            if sa > pr::sa_out::REGISTER_AND_IGNORE_EXISTING_KEY {
                return Err(Sense::invalid_cdb(1, Some(4)).into());
            }
            let len = cdb.be32(5) as usize;
            if len != PROUT_PARAM_LEN {
                return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
            }
            Ok(Prepared::with_data_out(
                State::PrOut {
                    sa,
                    scope_type: cdb.u8(2),
                    nexus: Box::new(n.clone()),
                },
                len,
            ))
        }
        op::START_STOP_UNIT => {
            // SBC-3 5.25: the medium is not removable (RMB=0), so LOEJ cannot be honoured;
            // START and power conditions have nothing to change and are accepted.
            if cdb.bit(4, 0x02) {
                return Err(Sense::invalid_cdb(4, Some(1)).into());
            }
            Ok(Prepared::good())
        }
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
            if cdb.u8(4) & 0x03 != 0 {
                st.prevent.insert(n.id);
            } else {
                st.prevent.remove(&n.id);
            }
            Ok(Prepared::good())
        }
        op::READ_DEFECT_DATA_10 => {
            // No defects: an empty list in the format asked for.
            let flags = cdb.u8(2) & 0x1f;
            Ok(Prepared::reply(
                vec![0, flags, 0, 0],
                usize::from(cdb.be16(7)),
            ))
        }
        op::READ_DEFECT_DATA_12 => {
            let flags = cdb.u8(1) & 0x1f;
            Ok(Prepared::reply(
                vec![0, flags, 0, 0, 0, 0, 0, 0],
                cdb.be32(6) as usize,
            ))
        }
        _ => Err(Sense::illegal(Asc::INVALID_COMMAND_OPERATION_CODE).into()),
    }
}

/// RDPROTECT/WRPROTECT/VRPROTECT (byte 1 bits 7..5): no protection information.
fn no_protection(cdb: Cdb<'_>) -> Result<(), Reject> {
    if cdb_len(cdb.opcode()) != Some(6) && cdb.u8(1) & 0xe0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)).into());
    }
    Ok(())
}

fn transfer_limit(cfg: &LunConfig, blocks: u64, at: u16) -> Result<(), Reject> {
    if blocks > u64::from(cfg.max_transfer_blocks()) {
        return Err(Sense::invalid_cdb(at, None).into());
    }
    Ok(())
}

fn read(cfg: &LunConfig, cdb: Cdb<'_>) -> Prep {
    no_protection(cdb)?;
    let (lba, blocks, at) = lba_and_count(cdb);
    let (offset, len) = range(cfg, lba, blocks)?;
    transfer_limit(cfg, blocks, at)?;
    if len == 0 {
        return Ok(Prepared::good());
    }
    Ok(Prepared {
        state: State::Read {
            offset,
            len: len as usize,
        },
        data_out: 0,
        data_in: true,
    })
}

fn write(cfg: &LunConfig, cdb: Cdb<'_>, and_verify: bool, protect: Protect) -> Prep {
    no_protection(cdb)?;
    let (lba, blocks, at) = lba_and_count(cdb);
    let verify = if and_verify {
        // BYTCHK (SBC-3 5.41): 00b write only, 01b write then compare.
        match (cdb.u8(1) >> 1) & 0x03 {
            0 => false,
            1 => true,
            _ => return Err(Sense::invalid_cdb(1, Some(2)).into()),
        }
    } else {
        false
    };
    let (offset, len) = range(cfg, lba, blocks)?;
    transfer_limit(cfg, blocks, at)?;
    write_protect(protect)?;
    if len == 0 {
        return Ok(Prepared::good());
    }
    // FUA (byte 1 bit 3; WRITE(6) has none). WRITE AND VERIFY makes the data durable
    // before the verify anyway.
    let fua = cdb_len(cdb.opcode()) != Some(6) && cdb.bit(1, 0x08);
    Ok(Prepared::with_data_out(
        State::Write {
            offset,
            len: len as usize,
            fua: fua || and_verify,
            verify,
        },
        len as usize,
    ))
}

fn verify(cfg: &LunConfig, cdb: Cdb<'_>) -> Prep {
    no_protection(cdb)?;
    let (lba, blocks, at) = lba_and_count(cdb);
    let bytchk = (cdb.u8(1) >> 1) & 0x03;
    if bytchk > 1 {
        return Err(Sense::invalid_cdb(1, Some(2)).into());
    }
    let (offset, len) = range(cfg, lba, blocks)?;
    if bytchk == 0 || len == 0 {
        // Medium verification only: nothing can fail to read here.
        return Ok(Prepared::good());
    }
    transfer_limit(cfg, blocks, at)?;
    Ok(Prepared::with_data_out(
        State::Verify {
            offset,
            len: len as usize,
        },
        len as usize,
    ))
}

fn compare_and_write(cfg: &LunConfig, cdb: Cdb<'_>, protect: Protect) -> Prep {
    no_protection(cdb)?;
    let lba = cdb.be64(2);
    let blocks = u64::from(cdb.u8(13));
    if blocks > u64::from(cfg.max_compare_and_write_blocks()) {
        return Err(Sense::invalid_cdb(13, None).into());
    }
    let (offset, len) = range(cfg, lba, blocks)?;
    write_protect(protect)?;
    if len == 0 {
        return Ok(Prepared::good());
    }
    Ok(Prepared::with_data_out(
        State::CompareAndWrite {
            offset,
            len: len as usize,
            fua: cdb.bit(1, 0x08),
        },
        2 * len as usize,
    ))
}

fn write_same(cfg: &LunConfig, cdb: Cdb<'_>, protect: Protect) -> Prep {
    no_protection(cdb)?;
    let ten = cdb.opcode() == op::WRITE_SAME_10;
    let (lba, blocks, at) = if ten {
        (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)), 7)
    } else {
        (cdb.be64(2), u64::from(cdb.be32(10)), 10)
    };
    if cdb.bit(1, 0x10) {
        return Err(Sense::invalid_cdb(1, Some(4)).into()); // ANCHOR: ANC_SUP=0
    }
    if !ten && cdb.bit(1, 0x01) {
        return Err(Sense::invalid_cdb(1, Some(0)).into()); // NDOB
    }
    if cdb.bit(1, 0x02) {
        return Err(Sense::invalid_cdb(1, Some(1)).into()); // LBDATA/PBDATA (obsolete)
    }
    if cdb.bit(1, 0x04) {
        return Err(Sense::invalid_cdb(1, Some(2)).into());
    }
    let unmap = cdb.bit(1, 0x08);
    if unmap && !cfg.thin {
        return Err(Sense::invalid_cdb(1, Some(3)).into());
    }
    let (offset, len) = range(cfg, lba, blocks)?;
    // WSNZ=1: zero blocks is refused rather than meaning "to the end".
    if blocks == 0 || blocks > MAX_WRITE_SAME_BLOCKS {
        return Err(Sense::invalid_cdb(at, None).into());
    }
    write_protect(protect)?;
    Ok(Prepared::with_data_out(
        State::WriteSame { offset, len, unmap },
        cfg.block_size as usize,
    ))
}

/// GET LBA STATUS (SBC-3 5.8): the logical unit does not track deallocation, so one
/// descriptor reports every block from the starting LBA on as mapped.
fn get_lba_status(cfg: &LunConfig, cdb: Cdb<'_>) -> Prep {
    let lba = cdb.be64(2);
    let alloc = cdb.be32(10) as usize;
    if lba >= cfg.blocks {
        return Err(Sense::illegal(Asc::LBA_OUT_OF_RANGE).into());
    }
    let count = u32::try_from(cfg.blocks - lba).unwrap_or(u32::MAX);
    let mut d = vec![0u8; 8];
    d[0..4].copy_from_slice(&20u32.to_be_bytes());
    d.extend_from_slice(&lba.to_be_bytes());
    d.extend_from_slice(&count.to_be_bytes());
    d.extend_from_slice(&[0, 0, 0, 0]); // provisioning status 0: mapped
    Ok(Prepared::reply(d, alloc))
}

/// The UNMAP parameter list (SBC-3 5.28.2) as byte ranges.
fn unmap_ranges(cfg: &LunConfig, data: &[u8]) -> Result<Vec<(u64, u64)>, Reject> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if data.len() < 8 {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
    }
    let bd_len = (be_at(data, 2, 2) as usize).min(data.len() - 8);
    let count = bd_len / 16;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param(2, None).into());
    }
    let mut ranges = Vec::with_capacity(count);
    let mut total = 0u64;
    for i in 0..count {
        let at = 8 + 16 * i;
        let lba = be_at(data, at, 8);
        let blocks = be_at(data, at + 8, 4);
        let (offset, len) = range(cfg, lba, blocks)?;
        total += blocks;
        if blocks > u64::from(MAX_UNMAP_BLOCKS) || total > u64::from(MAX_UNMAP_BLOCKS) {
            return Err(Sense::invalid_param((at + 8) as u16, None).into());
        }
        if len > 0 {
            ranges.push((offset, len));
        }
    }
    Ok(ranges)
}
