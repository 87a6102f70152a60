//! A reactor's block I/O ([`BlockRunner`]): memory backends complete in place, file and
//! block-device backends go through the reactor's io_uring and complete later. Reads and
//! writes are counted and timed per namespace here (`crate::metrics`), from the start of
//! the operation to its completion.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use io_uring::{IoUring, opcode, squeue, types};
use target_proto::nvme::controller::{ALL_BACKENDS, BlockIo, BlockOp, IoOutcome};
use tracing::warn;

use super::engine::Engine;
use crate::backend::Backend;
use crate::metrics::NamespaceIo;

/// Submission queue entries per reactor ring; a full ring is submitted and reused.
const RING_ENTRIES: u32 = 1024;

/// A backend and its namespace's counters, at its index in [`Backends`].
#[derive(Clone)]
pub struct BackendEntry {
    pub backend: Arc<Backend>,
    pub io: NamespaceIo,
}

/// Every backend by index (the index namespaces and LUNs carry in their block operations),
/// shared by the reactors and changed at run time by `xdp-target ctl`. Indices are never
/// reused: a removed backend leaves a hole, so an operation that names it fails instead
/// of reaching another namespace's medium.
pub struct Backends {
    /// Bumped on every change; each runner compares it once per pass.
    version: AtomicU64,
    entries: Mutex<Vec<Option<BackendEntry>>>,
}

impl Backends {
    pub fn new(entries: Vec<BackendEntry>) -> Self {
        Self {
            version: AtomicU64::new(0),
            entries: Mutex::new(entries.into_iter().map(Some).collect()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<BackendEntry>>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a backend; its index.
    pub fn add(&self, e: BackendEntry) -> u32 {
        let mut entries = self.lock();
        let i = u32::try_from(entries.len()).expect("fewer than 2^32 backends");
        entries.push(Some(e));
        self.version.fetch_add(1, Ordering::AcqRel);
        i
    }

    /// Removes backend `i`: runners drop it at their next pass; operations already in a
    /// ring keep it (and its file) until they complete.
    pub fn remove(&self, i: u32) -> Option<BackendEntry> {
        let e = self.lock().get_mut(i as usize)?.take();
        self.version.fetch_add(1, Ordering::AcqRel);
        e
    }

    pub fn get(&self, i: u32) -> Option<Arc<Backend>> {
        self.lock()
            .get(i as usize)?
            .as_ref()
            .map(|e| Arc::clone(&e.backend))
    }

    fn snapshot(&self) -> (u64, Vec<Option<BackendEntry>>) {
        let entries = self.lock();
        (self.version.load(Ordering::Acquire), entries.clone())
    }

    fn changed_since(&self, version: u64) -> bool {
        self.version.load(Ordering::Acquire) != version
    }
}

/// A reactor's block I/O: memory backends complete in place, file backends through the
/// reactor's io_uring, completed later by [`BlockRunner::reap`].
pub struct BlockRunner {
    table: Arc<Backends>,
    /// The table as of `version`, this runner's copy: no lock on the I/O path.
    version: u64,
    backends: Vec<Option<Arc<Backend>>>,
    /// Each backend's counters (by backend index).
    metrics: Vec<Option<NamespaceIo>>,
    ring: Option<IoUring>,
    /// Operations in flight by user data (connection index << 16 | slot).
    pending: HashMap<u64, SlotIo>,
}

/// A read or write being timed for its namespace's metrics.
#[derive(Clone, Copy, Debug)]
struct Measure {
    backend: u32,
    write: bool,
    len: u64,
    started: Instant,
}

impl Measure {
    /// Starts timing `io` if it is a read or a write (the operations the metrics count).
    fn start(io: &BlockIo) -> Option<Self> {
        let (write, len) = match io.op {
            BlockOp::Read { len, .. } => (false, len),
            BlockOp::Write { len, .. } => (true, len),
            _ => return None,
        };
        Some(Self {
            backend: io.backend,
            write,
            len,
            started: Instant::now(),
        })
    }

    /// Counts the finished operation: relaxed atomic adds, nothing else.
    fn done(self, metrics: &[Option<NamespaceIo>], ok: bool) {
        if let Some(Some(ns)) = metrics.get(self.backend as usize) {
            let dir = if self.write { &ns.write } else { &ns.read };
            dir.done(self.len, ok, self.started.elapsed());
        }
    }
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
    /// A runner for the backends of `table`. It owns an io_uring, which file backends need,
    /// also when none is a file yet: `xdp-target ctl` may add one (the reactors watch the
    /// ring's fd from their start). Only a kernel without io_uring and no file backend
    /// does without.
    pub fn new(table: Arc<Backends>) -> std::io::Result<Self> {
        let (version, entries) = table.snapshot();
        let needs_ring = entries
            .iter()
            .flatten()
            .any(|e| matches!(*e.backend, Backend::File(_)));
        let ring = match IoUring::new(RING_ENTRIES) {
            Ok(r) => Some(r),
            Err(e) if needs_ring => return Err(e),
            Err(e) => {
                warn!("no io_uring ({e}): file namespaces added at run time will fail their I/O");
                None
            }
        };
        let mut runner = Self {
            table,
            version,
            backends: Vec::new(),
            metrics: Vec::new(),
            ring,
            pending: HashMap::new(),
        };
        runner.take(entries);
        Ok(runner)
    }

    fn take(&mut self, entries: Vec<Option<BackendEntry>>) {
        self.backends = entries
            .iter()
            .map(|e| e.as_ref().map(|e| Arc::clone(&e.backend)))
            .collect();
        self.metrics = entries.into_iter().map(|e| e.map(|e| e.io)).collect();
    }

    /// Takes the table's backends when they changed (one atomic load when not).
    fn refresh(&mut self) {
        if self.table.changed_since(self.version) {
            let (version, entries) = self.table.snapshot();
            self.version = version;
            self.take(entries);
        }
    }

    /// The ring's fd, for the reactor's sleep.
    pub fn ring_fd(&self) -> Option<i32> {
        self.ring.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Runs the block operations engine `q` (connection `conn`) has queued. Returns how many
    /// went to the ring: the connection must outlive them.
    pub fn run(&mut self, conn: usize, q: &mut Engine) -> usize {
        let mut started = 0;
        self.refresh();
        while let Some((slot, io)) = q.next_io() {
            let k = key(conn, slot);
            let outcome = match backend(&self.backends, io.backend).map(|b| &**b) {
                Some(Backend::Memory(m)) => {
                    // Completes in place: timed around the copy.
                    let measure = Measure::start(&io);
                    let o = m.execute(&io.op, q.buffer_mut(slot));
                    if let Some(t) = measure {
                        t.done(&self.metrics, o == IoOutcome::Ok);
                    }
                    Some(o)
                }
                Some(Backend::File(f)) => {
                    let measure = Measure::start(&io);
                    let mut p = submit_file_io(
                        &mut self.ring,
                        f.file.as_raw_fd(),
                        &io,
                        q.buffer_mut(slot),
                        k,
                    );
                    // The file stays open while the ring uses its descriptor, even if its
                    // namespace is removed meanwhile.
                    p.hold = backend(&self.backends, io.backend)
                        .cloned()
                        .into_iter()
                        .collect();
                    if p.remaining == 0 {
                        if let Some(t) = measure {
                            t.done(&self.metrics, false);
                        }
                        // Nothing reached the ring: fail it now, or the slot waits forever.
                        Some(if p.read {
                            IoOutcome::ReadError
                        } else {
                            IoOutcome::WriteError
                        })
                    } else {
                        p.measure = measure;
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
                    let files: Vec<Arc<Backend>> = named
                        .iter()
                        .filter_map(|&b| backend(&self.backends, b))
                        .filter(|b| matches!(***b, Backend::File(_)))
                        .cloned()
                        .collect();
                    let fds: Vec<i32> = files
                        .iter()
                        .filter_map(|b| match &**b {
                            Backend::File(f) => Some(f.file.as_raw_fd()),
                            Backend::Memory(_) => None,
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
                                measure: None,
                                hold: files,
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
                if let Some(t) = io.measure {
                    t.done(&self.metrics, !io.failed);
                }
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
    /// A read or write being timed, counted when the last entry completes.
    measure: Option<Measure>,
    /// The backends whose descriptors the entries use, kept open until they complete.
    hold: Vec<Arc<Backend>>,
}

/// Backend `i` of a runner's copy of the table (a hole or past the end: none).
fn backend(list: &[Option<Arc<Backend>>], i: u32) -> Option<&Arc<Backend>> {
    list.get(i as usize)?.as_ref()
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
        measure: None,
        hold: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation none of whose entries reached the ring (the ring is gone, or the kernel
    /// refused to take a full one) fails at once: it used to count one entry in flight
    /// whatever happened, so its command waited for ever.
    #[test]
    fn an_operation_that_cannot_reach_the_ring_fails_at_once() {
        let mut no_ring = None;
        let mut buf = vec![0u8; 4096];
        for op in [
            BlockOp::Read {
                offset: 0,
                len: 4096,
            },
            BlockOp::Write {
                offset: 0,
                len: 4096,
                fua: true,
            },
            BlockOp::Flush,
            BlockOp::Deallocate { ranges: Vec::new() },
        ] {
            let io = BlockIo {
                nsid: 1,
                backend: 0,
                op,
            };
            let p = submit_file_io(&mut no_ring, 0, &io, &mut buf, key(3, 1));
            assert_eq!(p.remaining, 0, "{:?}", io.op);
            assert!(p.failed, "{:?}", io.op);
        }
    }
}
