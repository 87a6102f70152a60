//! One NVMe/TCP I/O queue for a client that drives the I/O itself (fio, through the
//! engine in `fio-engine/`): the controller is set up as `perf` sets it up (discovery when
//! the URL names no subsystem, Connect, CC.EN, Identify), then commands are submitted and
//! their completions reaped without the caller ever blocking unless it asks to.
//!
//! The queue holds the controller's admin queue open beside the I/O queue and sends Keep
//! Alive on it every third of KATO from [`NvmeTcpQueue::poll`], so a long run keeps its
//! controller.

use std::time::Instant;

use target_proto::nvme_tcp::host::{HostQueue, commands};
use target_wire::nvme::opcode::IoOpcode;

use super::{Conn, Controller, Done, IoQueue, KEEP_ALIVE_EVERY, PerfError, Proto, Tcp, parse_url};

/// An NVMe/TCP controller with one I/O queue.
pub struct NvmeTcpQueue {
    ctrl: Controller<Conn<HostQueue>>,
    io: Conn<HostQueue>,
    last_keep_alive: Instant,
}

impl NvmeTcpQueue {
    /// Connects to `target` (`nvme-tcp://ADDR[:PORT][/NQN]`, as `perf` takes it) as
    /// `host_nqn` (perf's own by default) with one I/O queue of `qd` commands of up to
    /// `max_io` bytes, on namespace `nsid`.
    pub fn open(
        target: &str,
        host_nqn: Option<&str>,
        nsid: u32,
        qd: usize,
        max_io: usize,
        digests: bool,
    ) -> Result<Self, PerfError> {
        let url = parse_url(target)?;
        if url.proto != Proto::NvmeTcp {
            return Err(PerfError::Url(target.to_string()));
        }
        let t = Tcp { digests };
        let ctrl = super::nvme_controller(&t, &url, host_nqn, nsid, 1)?;
        let io = ctrl.open_io_queue(&t, 1, qd, max_io)?;
        Ok(Self {
            ctrl,
            io,
            last_keep_alive: Instant::now(),
        })
    }

    /// The subsystem's NQN.
    pub fn nqn(&self) -> &str {
        &self.ctrl.nqn
    }

    /// The namespace's logical block size in bytes.
    pub fn block_size(&self) -> usize {
        self.ctrl.block
    }

    /// The namespace's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.ctrl.capacity
    }

    /// Commands submitted and not yet reaped by the engine.
    pub fn outstanding(&self) -> usize {
        self.io.h.outstanding()
    }

    /// Queues a read (`data` empty, `read_len` bytes) or a write of `blocks` blocks at
    /// `lba`; sent by the next [`Self::poll`]. Its tag.
    pub fn submit(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        data: Vec<u8>,
        read_len: usize,
    ) -> Result<u32, PerfError> {
        self.io.submit_io(write, lba, blocks, data, read_len)
    }

    /// Queues a Flush of the namespace; its tag.
    pub fn flush(&mut self) -> u32 {
        let sqe = commands::io(IoOpcode::Flush, self.ctrl.nsid, 0, 0);
        u32::from(self.io.h.submit(sqe, Vec::new(), false, 0))
    }

    /// Queues a Dataset Management Deallocate of `blocks` blocks at `lba`; its tag.
    pub fn deallocate(&mut self, lba: u64, blocks: u32) -> u32 {
        let (sqe, range) = commands::deallocate(self.ctrl.nsid, lba, blocks);
        u32::from(self.io.h.submit(sqe, range, true, 0))
    }

    /// Sends what is queued and takes what arrived. With `wait`, and commands
    /// outstanding, it returns only once something arrived (or the connection failed);
    /// without, it never blocks. Sends Keep Alive when it is due.
    pub fn poll(&mut self, wait: bool) -> Result<(), PerfError> {
        if self.last_keep_alive.elapsed() >= KEEP_ALIVE_EVERY {
            self.ctrl.keep_alive()?;
            self.last_keep_alive = Instant::now();
        }
        if wait && self.io.h.outstanding() > 0 {
            self.io.exchange()
        } else {
            self.io.try_exchange()
        }
    }

    /// The next finished command, if any.
    pub fn finished(&mut self) -> Option<Done> {
        self.io.done()
    }
}
