//! What every transport shares: a connection's protocol engine ([`Engine`]) and the block
//! I/O that engines queue ([`BlockRunner`]: memory in place, files through io_uring).
//!
//! The socket reactors (`server.rs`) and the AF_XDP reactors (`xdp_path.rs`) differ only in
//! how bytes reach an engine and leave it; both run block I/O through here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use io_uring::{IoUring, opcode, squeue, types};
use target_proto::iscsi::Registry as IscsiRegistry;
use target_proto::iscsi::conn::{ConnEvent, ConnParams, IscsiConn};
use target_proto::nvme::controller::{ALL_BACKENDS, BlockIo, BlockOp, IoOutcome};
use target_proto::nvme::subsystem::Registry;
use target_proto::nvme_tcp::icreq::ControllerParams;
use target_proto::nvme_tcp::queue::NvmeTcpQueue;
use tracing::{debug, info, warn};

use crate::backend::Backend;

/// Which protocol a listening port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Nvme,
    Iscsi,
}

/// What every reactor of every transport shares: the registries (touched only at
/// connect/login and teardown), the engines' parameters and the backends.
pub struct Shared {
    pub registry: Arc<Mutex<Registry>>,
    pub iscsi_registry: Arc<Mutex<IscsiRegistry>>,
    pub iscsi_params: ConnParams,
    pub params: ControllerParams,
    pub backends: Vec<Arc<Backend>>,
    /// How long a reactor keeps polling after its last event before it sleeps.
    pub busy_poll: std::time::Duration,
}

impl Shared {
    /// A fresh engine for a connection accepted on a `proto` port at local address `local`.
    /// Fails only when the kernel gives no random bytes for the iSCSI CHAP challenge: a
    /// predictable challenge would let a recorded answer log in again, so the connection
    /// is refused instead.
    pub fn engine(&self, proto: Proto, local: Option<IpAddr>) -> std::io::Result<Engine> {
        Ok(match proto {
            Proto::Nvme => Engine::Nvme(Box::new(NvmeTcpQueue::new(self.params, local))),
            Proto::Iscsi => {
                let mut random = [0u8; 17];
                fill_random(&mut random)?;
                Engine::Iscsi(Box::new(IscsiConn::new(
                    self.iscsi_params,
                    Arc::clone(&self.iscsi_registry),
                    local,
                    random,
                )))
            }
        })
    }

    /// A block runner for one reactor; it owns an io_uring when any backend is a file.
    pub fn block_runner(&self) -> std::io::Result<BlockRunner> {
        let needs_ring = self
            .backends
            .iter()
            .any(|b| matches!(**b, Backend::File(_)));
        Ok(BlockRunner {
            backends: self.backends.clone(),
            ring: if needs_ring {
                Some(IoUring::new(RING_ENTRIES)?)
            } else {
                None
            },
            pending: HashMap::new(),
        })
    }
}

/// A connection as a reactor holds it: its transport's handle `T` (a kernel socket, a
/// user-space stack's connection id), its peer, its engine and its block I/O in flight.
pub struct Conn<T> {
    pub link: T,
    pub peer: SocketAddr,
    pub q: Engine,
    /// io_uring operations still using this connection's buffers.
    pub inflight: usize,
    /// Closed, but kept until `inflight` is zero (the kernel still holds its buffers).
    pub dead: bool,
    /// Received bytes the engine has not taken yet (its output is full); for transports
    /// that cannot leave them in the stack (kernel sockets).
    pub unread: Vec<u8>,
}

/// A reactor's connections by index. An index stays taken until its connection is dead
/// and its last block operation has completed, because io_uring may still write into the
/// engine's buffers.
pub struct Conns<T> {
    slots: Vec<Option<Conn<T>>>,
    free: Vec<usize>,
}

impl<T> Conns<T> {
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// The index the next [`Self::insert`] will use.
    pub fn vacant(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    /// A new live connection; returns its index.
    pub fn insert(&mut self, link: T, peer: SocketAddr, q: Engine) -> usize {
        let c = Conn {
            link,
            peer,
            q,
            inflight: 0,
            dead: false,
            unread: Vec::new(),
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(c);
                i
            }
            None => {
                self.slots.push(Some(c));
                self.slots.len() - 1
            }
        }
    }

    /// Connections held: live ones and closed ones whose block I/O is still in flight.
    pub fn held(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// One past the highest index in use, for walking every connection.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Connection `i` if it is live (not closed).
    pub fn live(&mut self, i: usize) -> Option<&mut Conn<T>> {
        self.slots
            .get_mut(i)
            .and_then(Option::as_mut)
            .filter(|c| !c.dead)
    }

    /// Frees connection `i` once it is dead and no block operation uses its buffers.
    pub fn release(&mut self, i: usize) {
        if self
            .slots
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.dead && c.inflight == 0)
        {
            self.slots[i] = None;
            self.free.push(i);
        }
    }

    /// Runs the block operations connection `i`'s engine queued.
    pub fn run_io(&mut self, i: usize, blocks: &mut BlockRunner) {
        if let Some(c) = self.live(i) {
            c.inflight += blocks.run(i, &mut c.q);
        }
    }

    /// Hands finished block operations to their engines (which may queue more) and frees
    /// dead connections whose last one finished. Returns the live connections that made
    /// progress: their output wants sending.
    ///
    /// A panic in an engine (a bug) is caught per completion: that connection is listed in
    /// `failed` with the panic's message for the reactor to close, the others go on.
    pub fn complete_io(
        &mut self,
        blocks: &mut BlockRunner,
        failed: &mut Vec<(usize, String)>,
    ) -> Vec<usize> {
        let mut progressed = Vec::new();
        for r in blocks.reap() {
            let i = r.conn;
            let Some(c) = self.slots.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            c.inflight -= 1;
            if !c.dead {
                let step = catch(|| {
                    r.complete(&mut c.q);
                    // A multi-step command (iSCSI COMPARE AND WRITE, WRITE SAME) may go on.
                    blocks.run(i, &mut c.q)
                });
                match step {
                    Ok(started) => {
                        c.inflight += started;
                        progressed.push(i);
                    }
                    Err(why) => failed.push((i, why)),
                }
            }
            self.release(i);
        }
        progressed
    }
}

/// Submission queue entries per reactor ring; a full ring is submitted and reused.
const RING_ENTRIES: u32 = 1024;

/// A reactor's block I/O: memory backends complete in place, file backends through the
/// reactor's io_uring, completed later by [`BlockRunner::reap`].
pub struct BlockRunner {
    backends: Vec<Arc<Backend>>,
    ring: Option<IoUring>,
    /// Operations in flight by user data (connection index << 16 | slot).
    pending: HashMap<u64, SlotIo>,
}

/// A block operation that finished in the ring, for connection `conn`'s `slot`.
pub struct Reaped {
    pub conn: usize,
    slot: usize,
    io: SlotIo,
}

impl Reaped {
    /// Hands the outcome to the engine (comparing first, for a Compare).
    pub fn complete(self, q: &mut Engine) {
        let outcome = match (self.io.failed, self.io.scratch) {
            (true, _) if self.io.read => IoOutcome::ReadError,
            (true, _) => IoOutcome::WriteError,
            (false, Some((media, start))) => {
                // Only the first `len` bytes of the slot are compared: a COMPARE AND WRITE
                // slot holds the verify data and then the write data (twice `len`).
                let len = self.io.len;
                let host = q.buffer_mut(self.slot);
                match (media.get(start..start + len), host.get(..len)) {
                    (Some(m), Some(h)) if m == h => IoOutcome::Ok,
                    (Some(_), Some(_)) => IoOutcome::Miscompare,
                    // The engine sized the slot below what it asked to compare.
                    _ => IoOutcome::ReadError,
                }
            }
            (false, None) => IoOutcome::Ok,
        };
        q.io_done(self.slot, outcome);
    }
}

impl BlockRunner {
    /// The ring's fd, for the reactor's sleep.
    pub fn ring_fd(&self) -> Option<i32> {
        self.ring.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Runs the block operations engine `q` (connection `conn`) has queued. Returns how many
    /// went to the ring: the connection must outlive them.
    pub fn run(&mut self, conn: usize, q: &mut Engine) -> usize {
        let mut started = 0;
        while let Some((slot, io)) = q.next_io() {
            let k = key(conn, slot);
            let outcome = match self.backends.get(io.backend as usize).map(|b| &**b) {
                Some(Backend::Memory(m)) => Some(m.execute(&io.op, q.buffer_mut(slot))),
                Some(Backend::File(f)) => {
                    let p = submit_file_io(
                        &mut self.ring,
                        f.file.as_raw_fd(),
                        &io,
                        q.buffer_mut(slot),
                        k,
                    );
                    if p.remaining == 0 {
                        // Nothing reached the ring: fail it now, or the slot waits forever.
                        Some(if p.read {
                            IoOutcome::ReadError
                        } else {
                            IoOutcome::WriteError
                        })
                    } else {
                        self.pending.insert(k, p);
                        None
                    }
                }
                None if io.backend == ALL_BACKENDS => {
                    // Flush of every namespace of the controller's subsystem: sync the files
                    // among the backends it names (memory has no cache), no one else's.
                    let named: &[u32] = match &io.op {
                        BlockOp::FlushAll { backends } => backends,
                        _ => &[],
                    };
                    let fds: Vec<i32> = named
                        .iter()
                        .filter_map(|&b| match self.backends.get(b as usize).map(|b| &**b) {
                            Some(Backend::File(f)) => Some(f.file.as_raw_fd()),
                            _ => None,
                        })
                        .collect();
                    let mut ring = Queued {
                        ring: &mut self.ring,
                        n: 0,
                        lost: false,
                    };
                    for fd in &fds {
                        ring.push(fdatasync(types::Fd(*fd), k));
                    }
                    let (remaining, lost) = (ring.n, ring.lost);
                    if remaining == 0 {
                        Some(if lost {
                            IoOutcome::WriteError
                        } else {
                            IoOutcome::Ok
                        })
                    } else {
                        self.pending.insert(
                            k,
                            SlotIo {
                                remaining,
                                failed: lost,
                                read: false,
                                len: 0,
                                scratch: None,
                            },
                        );
                        None
                    }
                }
                None => Some(IoOutcome::WriteError),
            };
            match outcome {
                Some(o) => q.io_done(slot, o),
                None => started += 1,
            }
        }
        started
    }

    /// Submits what was queued in the ring.
    pub fn submit(&mut self) {
        if let Some(ring) = &mut self.ring
            && !ring.submission().is_empty()
            && let Err(e) = ring.submit()
        {
            warn!("io_uring submit failed: {e}");
        }
    }

    /// The operations that finished since the last call.
    pub fn reap(&mut self) -> Vec<Reaped> {
        let Some(ring) = &mut self.ring else {
            return Vec::new();
        };
        let mut finished = Vec::new();
        for cqe in ring.completion() {
            let k = cqe.user_data();
            let Some(p) = self.pending.get_mut(&k) else {
                continue;
            };
            let res = cqe.result();
            if res < 0 || (p.len > 0 && usize::try_from(res).ok() != Some(p.len)) {
                p.failed = true;
            }
            p.remaining -= 1;
            if p.remaining == 0 {
                finished.push(k);
            }
        }
        finished
            .into_iter()
            .filter_map(|k| {
                let io = self.pending.remove(&k)?;
                Some(Reaped {
                    conn: (k >> 16) as usize,
                    slot: (k & 0xffff) as usize,
                    io,
                })
            })
            .collect()
    }
}

impl Drop for BlockRunner {
    /// The kernel may still be writing into the buffers of operations in flight (the
    /// connections' slots, a Compare's scratch buffer) when a reactor ends, normally or by
    /// a panic: wait for them before anything is freed. The reactors declare their
    /// `BlockRunner` before their connections, so this runs first.
    fn drop(&mut self) {
        while !self.pending.is_empty() {
            let Some(ring) = &mut self.ring else { return };
            if let Err(e) = ring.submit_and_wait(1) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Nothing more can be waited for: the scratch buffers it owns are leaked
                // rather than freed under the kernel (the process is ending anyway).
                tracing::error!(
                    operations = self.pending.len(),
                    "io_uring wait failed at reactor exit with operations in flight: {e}"
                );
                std::mem::forget(std::mem::take(&mut self.pending));
                return;
            }
            drop(self.reap());
        }
    }
}

/// A connection's protocol engine.
pub enum Engine {
    Nvme(Box<NvmeTcpQueue>),
    Iscsi(Box<IscsiConn>),
}

impl Engine {
    /// Feeds received bytes; returns how many the engine took. It takes fewer once its
    /// output reaches [`target_proto::OUTPUT_HIGH_WATER`]: the caller offers the rest
    /// again after sending, so a peer that stops reading stops being read.
    pub fn receive(&mut self, input: &[u8], registry: &Mutex<Registry>, now: u64) -> usize {
        match self {
            Self::Nvme(q) => q.receive(input, registry, now),
            Self::Iscsi(c) => c.receive(input, now),
        }
    }

    pub fn output(&self) -> &[u8] {
        match self {
            Self::Nvme(q) => q.output(),
            Self::Iscsi(c) => c.output(),
        }
    }

    pub fn consume_output(&mut self, n: usize) {
        match self {
            Self::Nvme(q) => q.consume_output(n),
            Self::Iscsi(c) => c.consume_output(n),
        }
    }

    pub fn closing(&self) -> bool {
        match self {
            Self::Nvme(q) => q.closing(),
            Self::Iscsi(c) => c.closing(),
        }
    }

    pub fn next_io(&mut self) -> Option<(usize, BlockIo)> {
        match self {
            Self::Nvme(q) => q.next_io(),
            Self::Iscsi(c) => c.next_io(),
        }
    }

    pub fn buffer_mut(&mut self, slot: usize) -> &mut [u8] {
        match self {
            Self::Nvme(q) => q.buffer_mut(slot),
            Self::Iscsi(c) => c.buffer_mut(slot),
        }
    }

    pub fn io_done(&mut self, slot: usize, outcome: IoOutcome) {
        match self {
            Self::Nvme(q) => q.io_done(slot, outcome),
            Self::Iscsi(c) => c.io_done(slot, outcome),
        }
    }

    /// False when the connection must end; `why` says why.
    pub fn tick(&mut self, now: u64, registry: &Mutex<Registry>) -> Result<(), &'static str> {
        match self {
            Self::Nvme(q) => {
                if q.tick(now, registry) {
                    Ok(())
                } else {
                    Err(q.end_reason().unwrap_or("the queue ended"))
                }
            }
            Self::Iscsi(c) => {
                if c.tick(now) {
                    Ok(())
                } else {
                    Err("NOP-In ping unanswered, login timeout or session reinstated")
                }
            }
        }
    }

    pub fn teardown(&mut self, registry: &Mutex<Registry>) {
        match self {
            Self::Nvme(q) => q.teardown(registry),
            Self::Iscsi(c) => c.teardown(),
        }
    }

    /// Logs what the iSCSI engine reported.
    pub fn log_events(&mut self, peer: SocketAddr) {
        let Self::Iscsi(c) = self else { return };
        for e in c.take_events() {
            match e {
                ConnEvent::LoggedIn {
                    initiator,
                    target,
                    tsih,
                    reinstated,
                } => info!(%peer, initiator, ?target, tsih, reinstated, "iSCSI login"),
                ConnEvent::LoginFailed { status, why } => {
                    warn!(%peer, status = format!("{status:04x}"), "iSCSI login refused: {why}");
                }
                ConnEvent::ProtocolError(why) => warn!(%peer, "iSCSI protocol error: {why}"),
                ConnEvent::LoggedOut => debug!(%peer, "iSCSI logout"),
                ConnEvent::NopTimeout => {
                    warn!(%peer, "iSCSI initiator stopped answering NOP-In pings");
                }
                ConnEvent::Reinstated => info!(%peer, "iSCSI session reinstated by a new login"),
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Nvme(q) => format!("NVMe qid {:?}", q.controller().qid()),
            Self::Iscsi(_) => "iSCSI".into(),
        }
    }
}

/// What a slot's io_uring operations are doing, until the last one completes.
pub(crate) struct SlotIo {
    remaining: u32,
    failed: bool,
    read: bool,
    /// Bytes the data operation must move.
    len: usize,
    /// Compare reads the media here (from the page-aligned offset) and compares with the
    /// host's data.
    scratch: Option<(Vec<u8>, usize)>,
}

fn key(conn: usize, slot: usize) -> u64 {
    ((conn as u64) << 16) | (slot as u64 & 0xffff)
}

/// Queues an SQE, submitting the ring first when it is full.
fn push(ring: &mut Option<IoUring>, e: squeue::Entry) -> bool {
    let Some(ring) = ring else { return false };
    loop {
        // SAFETY: every buffer an entry points to outlives the operation: it is a slot
        // buffer of a connection that is not freed while it has operations in flight
        // (`Conn::inflight`, `Reactor::release`), and the engine leaves a slot's buffer
        // alone while its block operation runs; a Compare's scratch buffer lives in
        // `Reactor::pending` until the operation completes.
        if unsafe { ring.submission().push(&e) }.is_ok() {
            return true;
        }
        // The ring is full: hand it to the kernel to make room.
        if let Err(e) = ring.submit() {
            warn!("io_uring submit failed, the block operation fails: {e}");
            return false;
        }
    }
}

/// Counts the entries of one block operation that reached the ring.
struct Queued<'r> {
    ring: &'r mut Option<IoUring>,
    n: u32,
    lost: bool,
}

impl Queued<'_> {
    fn push(&mut self, e: squeue::Entry) {
        if push(self.ring, e) {
            self.n += 1;
        } else {
            self.lost = true;
        }
    }
}

/// An fdatasync of `fd` tagged `k`: Flush, SYNCHRONIZE CACHE and FUA zeroing.
fn fdatasync(fd: types::Fd, k: u64) -> squeue::Entry {
    opcode::Fsync::new(fd)
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(k)
}

/// Turns one block operation on a file into io_uring entries.
fn submit_file_io(
    ring: &mut Option<IoUring>,
    fd: i32,
    io: &BlockIo,
    buf: &mut [u8],
    k: u64,
) -> SlotIo {
    let fd = types::Fd(fd);
    let mut ring = Queued {
        ring,
        n: 0,
        lost: false,
    };
    let mut p = SlotIo {
        remaining: 0,
        failed: false,
        read: false,
        len: 0,
        scratch: None,
    };
    let len32 = |l: u64| u32::try_from(l).unwrap_or(u32::MAX);
    match &io.op {
        BlockOp::Read { offset, len } => {
            p.read = true;
            p.len = *len as usize;
            ring.push(
                opcode::Read::new(fd, buf.as_mut_ptr(), len32(*len))
                    .offset(*offset)
                    .build()
                    .user_data(k),
            );
        }
        BlockOp::Write { offset, len, fua } => {
            p.len = *len as usize;
            let flags = if *fua { libc::RWF_DSYNC } else { 0 };
            let e = opcode::Write::new(fd, buf.as_ptr(), len32(*len))
                .offset(*offset)
                .rw_flags(flags)
                .build();
            ring.push(e.user_data(k));
        }
        BlockOp::Compare { offset, len } => {
            p.read = true;
            p.len = *len as usize;
            // Page-aligned, for O_DIRECT.
            let mut scratch = vec![0u8; *len as usize + 4096];
            let start = scratch.as_ptr().align_offset(4096).min(4096);
            let ptr = scratch[start..].as_mut_ptr();
            ring.push(
                opcode::Read::new(fd, ptr, len32(*len))
                    .offset(*offset)
                    .build()
                    .user_data(k),
            );
            p.scratch = Some((scratch, start));
        }
        BlockOp::Flush | BlockOp::FlushAll { .. } => {
            ring.push(fdatasync(fd, k));
        }
        BlockOp::WriteZeroes {
            offset,
            len,
            deallocate,
            fua,
        } => {
            let mode = libc::FALLOC_FL_KEEP_SIZE
                | if *deallocate {
                    libc::FALLOC_FL_PUNCH_HOLE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE
                };
            let e = opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(mode)
                .build();
            if *fua {
                // The sync must follow the zeroing: link them.
                ring.push(e.flags(squeue::Flags::IO_LINK).user_data(k));
                ring.push(fdatasync(fd, k));
                p.remaining = 2;
            } else {
                ring.push(e.user_data(k));
            }
        }
        BlockOp::Deallocate { ranges } => {
            for (offset, len) in ranges {
                let mode = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE;
                ring.push(
                    opcode::Fallocate::new(fd, *len)
                        .offset(*offset)
                        .mode(mode)
                        .build()
                        .user_data(k),
                );
            }
            if ranges.is_empty() {
                // Nothing to deallocate: complete through the ring all the same.
                ring.push(opcode::Nop::new().build().user_data(k));
            }
        }
    }
    // What did not reach the ring never completes: the operation fails, once what did
    // reach it has completed (its buffers are in use until then).
    p.remaining = ring.n;
    p.failed = ring.lost;
    p
}

/// Fills `buf` from the kernel's random pool (getrandom(2)).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            got += n.unsigned_abs();
        }
    }
    Ok(())
}

/// Runs `f`, turning a panic into its message. Engines must never panic on any input; if a
/// bug makes one do so anyway, the reactor ends that one connection (tearing its
/// controller or session down) and keeps serving the rest, instead of dying with every
/// connection it held and leaving their registrations stale.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Set when a reactor thread died: the process then stops and exits non-zero.
pub static REACTOR_FAILED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The body of a reactor thread: `run` under a guard. A panic outside any one connection's
/// work (the reactor's own loop) is logged, and the whole target stops loudly (SIGTERM to
/// itself, exit status 1) rather than serving on with a reactor missing: its listeners
/// would keep accepting connections nobody serves.
pub fn reactor_thread(name: &str, run: impl FnOnce()) {
    if let Err(why) = catch(run) {
        tracing::error!(reactor = name, "reactor failed, the target stops: {why}");
        REACTOR_FAILED.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: kill(2) on our own pid; the signal handler installed by main wakes it.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(
            catch(|| -> u8 { panic!("slot {} out of range", 3) }),
            Err("slot 3 out of range".into())
        );
        let v: Vec<u8> = Vec::new();
        let e = catch(|| v[1]).unwrap_err();
        assert!(e.contains("index out of bounds"), "{e}");
    }

    #[test]
    fn random_bytes_are_not_all_zero() {
        let mut b = [0u8; 32];
        fill_random(&mut b).unwrap();
        assert_ne!(b, [0u8; 32]);
    }
}
