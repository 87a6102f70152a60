//! NVMe over RDMA: the verbs transport (NVM Express RDMA Transport Specification 1.0) for
//! InfiniBand, RoCE and iWARP NICs, and soft-RoCE (rdma_rxe).
//!
//! One reactor thread per core, as on the other transports, each owning its queue pairs,
//! one completion queue per device and a completion channel. The RDMA CM has one listener
//! per address (no SO_REUSEPORT), on the first reactor's event channel: a connect request
//! is taken apart there and handed round-robin to a reactor, whose channel the id's events
//! then move to (`rdma_migrate_id`). The queue pair's NVMe work is the sans-I/O
//! [`NvmeRdmaQueue`] of target-proto; this file only moves its capsules, actions and
//! completions:
//!
//! - a connect request's private data goes to `cm::accept`; a reject carries its status;
//! - each queue pair keeps `depth` receive buffers (SQE + in-capsule data) posted; a capsule
//!   the queue cannot take yet (every slot waits for a send completion) keeps its buffer
//!   until a send completes;
//! - actions become work requests, posted in one chain per pass: RDMA READ (signaled) into
//!   the slot's buffer, RDMA WRITE (unsignaled: the Send after it completes it) from it,
//!   and the 16-byte response by SEND or SEND with Invalidate, inline when the device can;
//! - slot buffers are registered once and again only when they grow; receive buffers are
//!   registered once per queue pair;
//! - a reactor busy-polls its completion queues, then arms them and sleeps in poll(2) on
//!   the completion and CM channels and the io_uring (an idle target uses no CPU).
//!
//! Listeners added and removed at run time (`xdp-target ctl add-listener nvme_rdma`) are
//! made on the first reactor's channel by [`RdmaListeners`] and handed to that reactor,
//! which destroys them when asked; queue pairs already up stay.
//!
//! A queue pair ends on a DISCONNECTED or DEVICE_REMOVAL event, a failed work request, or
//! its queue's own end (keep-alive expiry, protocol error): its controller or queue is torn
//! down by [`Core::close`], and the queue pair and its id are destroyed when the
//! connection's last block operation has completed (no DMA reaches freed buffers).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use target_proto::nvme_rdma::cm::{self, CmLimits};
use target_proto::nvme_rdma::queue::{Action, MAX_IN_CAPSULE_DATA, NvmeRdmaQueue, SLOTS_PER_ENTRY};
use target_rdma::{
    CmEvent, CmId, CompChannel, ConnParam, Cq, DeviceLimits, EventChannel, Mr, Pd, Srq,
    ibv_recv_wr, ibv_send_wr, ibv_sge, ibv_wc, sys,
};
use target_wire::nvme_rdma::{CmRejectRepr, CmStatus};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::metrics::Transport;
use crate::reactor::engine::{Engine, Shared};
use crate::reactor::{Conn, Conns, Core, Link, TICK, reactor_thread};
use crate::transport::listeners::{Inbox, ListenerError, Listeners};

/// Completion queue entries per device and reactor (less if the device has fewer).
const CQ_ENTRIES: u32 = 16_384;
/// Completions taken per poll.
const POLL_BATCH: usize = 64;
/// Connect requests a listener queues.
const BACKLOG: i32 = 128;
/// Receive buffers of a device's shared receive queue, per reactor (fewer if the device
/// allows fewer). Hosts share them; one that finds none posted is told to retry (RNR), which
/// the target's accept sets to retry without end, as for a host that outruns its credits.
const SRQ_ENTRIES: u32 = 1024;
/// The connection field of a shared receive's work request ID: its queue pair is named by
/// the completion's QP number instead.
const SHARED: usize = 0xff_ffff;
/// How long a queue pair that is ending waits for its last responses to be sent.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Why RDMA could not start, when `rdma.require` makes that an error.
#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    #[error("{0}")]
    Library(#[from] target_rdma::LoadError),
    #[error(
        "no RDMA device (ibv_devices lists none; for soft-RoCE: modprobe rdma_rxe && rdma link add rxe0 type rxe netdev IFACE)"
    )]
    NoDevice,
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Setup(io::Error),
}

/// A connect request handed from the listening reactor to the one that serves it.
struct Handoff {
    id: CmId,
    event: CmEvent,
}

/// What the reactors share: their CM event channels, and each one's inbox of connect
/// requests with the eventfd that wakes it.
struct Mailboxes {
    channels: Vec<Arc<EventChannel>>,
    inboxes: Vec<Mutex<Vec<Handoff>>>,
    wakers: Vec<RawFd>,
    next: AtomicUsize,
}

impl Mailboxes {
    fn post(&self, r: usize, h: Handoff) {
        self.inboxes[r]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(h);
        self.wake(r);
    }

    /// Wakes reactor `r` from its poll(2).
    fn wake(&self, r: usize) {
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes from a live u64 to our own eventfd.
        unsafe { libc::write(self.wakers[r], std::ptr::from_ref(&one).cast(), 8) };
    }
}

impl Drop for Mailboxes {
    fn drop(&mut self) {
        for &fd in &self.wakers {
            // SAFETY: our own eventfds, closed once.
            unsafe { libc::close(fd) };
        }
    }
}

/// A listener change for the first reactor, which owns the listeners.
pub enum RdmaChange {
    /// A listening id (on the first reactor's channel) to keep.
    Add(CmId, SocketAddr),
    /// Destroy the listener on this address.
    Remove(SocketAddr),
}

/// The running RDMA reactors' listeners, for the control socket.
pub struct RdmaListeners {
    mail: Arc<Mailboxes>,
    inbox: Arc<Inbox<RdmaChange>>,
}

impl RdmaListeners {
    /// Listens on `addr` (on the first reactor's channel) and hands the listener to that
    /// reactor; the receiver ends when it has it.
    pub fn add(&self, addr: SocketAddr) -> Result<std::sync::mpsc::Receiver<()>, ListenerError> {
        let id = cm_listen(&self.mail.channels[0], addr)
            .map_err(|source| ListenerError::Rdma { addr, source })?;
        let done = self.inbox.post(RdmaChange::Add(id, addr));
        self.mail.wake(0);
        Ok(done)
    }

    /// Asks the first reactor to destroy the listener on `addr`.
    pub fn remove(&self, addr: SocketAddr) -> std::sync::mpsc::Receiver<()> {
        let done = self.inbox.post(RdmaChange::Remove(addr));
        self.mail.wake(0);
        done
    }
}

/// An RDMA CM id listening on `addr`, its events on `channel`.
fn cm_listen(channel: &EventChannel, addr: SocketAddr) -> io::Result<CmId> {
    let id = CmId::new(channel)?;
    if let Err(e) = id.bind(addr).and_then(|()| id.listen(BACKLOG)) {
        // SAFETY: our own new id, without events.
        unsafe { id.destroy() };
        return Err(e);
    }
    Ok(id)
}

/// Starts `n` RDMA reactors listening on `rdma.listen`. No listeners configured: nothing.
/// RDMA unusable: an error with `rdma.require`, else one warning and no reactors (TCP
/// goes on serving).
pub fn start(
    config: &Config,
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
    n: usize,
    changes: &Listeners,
) -> Result<Vec<JoinHandle<()>>, RdmaError> {
    let addrs: Vec<SocketAddr> = config
        .rdma
        .listen
        .iter()
        .map(|l| l.parse().expect("validated by Config::validate"))
        .collect();
    if addrs.is_empty() {
        return Ok(Vec::new());
    }
    match start_reactors(config, shared, stop, n, &addrs, changes) {
        Ok(t) => Ok(t),
        Err(e) if config.rdma.require => Err(e),
        Err(e) => {
            warn!("NVMe/RDMA not served (set rdma.require to fail instead): {e}");
            Ok(Vec::new())
        }
    }
}

fn start_reactors(
    config: &Config,
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
    n: usize,
    addrs: &[SocketAddr],
    changes: &Listeners,
) -> Result<Vec<JoinHandle<()>>, RdmaError> {
    let devices = target_rdma::devices()?;
    if devices.is_empty() {
        return Err(RdmaError::NoDevice);
    }
    let mut channels = Vec::with_capacity(n);
    let mut wakers = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(Arc::new(EventChannel::new().map_err(RdmaError::Setup)?));
        // SAFETY: eventfd(2) with no preconditions; the descriptor is closed by Mailboxes.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(RdmaError::Setup(io::Error::last_os_error()));
        }
        wakers.push(fd);
    }
    let mail = Arc::new(Mailboxes {
        channels,
        inboxes: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
        wakers,
        next: AtomicUsize::new(0),
    });
    // The listeners, on the first reactor's channel.
    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        match cm_listen(&mail.channels[0], addr) {
            Ok(id) => listeners.push((id, addr)),
            Err(source) => {
                for (id, _) in listeners {
                    // SAFETY: our listeners, whose events (none yet read) go with them.
                    unsafe { CmId::destroy(id) };
                }
                return Err(RdmaError::Listen { addr, source });
            }
        }
    }
    for (_, addr) in &listeners {
        info!(%addr, devices = ?devices, "NVMe/RDMA listening on {addr}");
    }
    let limits = CmLimits {
        max_depth: config.rdma.max_queue_depth,
        ..CmLimits::default()
    };
    let mut threads = Vec::with_capacity(n);
    let mut listeners = Some(listeners);
    let inbox = Arc::new(Inbox::new(None));
    for r in 0..n {
        let name = format!("rdma-{r}");
        let reactor = Reactor {
            core: Core {
                name: name.clone(),
                via: " (RDMA)",
                blocks: shared.block_runner().map_err(RdmaError::Setup)?,
                conns: Conns::new(),
                shared: Arc::clone(shared),
                metrics: shared.metrics.transport(Transport::Rdma),
            },
            verbs: Verbs {
                devs: Vec::new(),
                generation: 0,
                recv_len: target_wire::nvme::sqe::SQE_LEN
                    + config.rdma.inline_data.min(MAX_IN_CAPSULE_DATA) / 16 * 16,
                qpns: std::collections::HashMap::new(),
                scratch: Scratch::default(),
            },
            index: r,
            listeners: if r == 0 {
                listeners.take().unwrap_or_default()
            } else {
                Vec::new()
            },
            mail: Arc::clone(&mail),
            changes: (r == 0).then(|| Arc::clone(&inbox)),
            limits,
            in_capsule: config.rdma.inline_data,
            touched: Vec::with_capacity(POLL_BATCH),
            started: Instant::now(),
            max_connections: config.max_connections_per_reactor,
        };
        let stop = Arc::clone(stop);
        let t = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || reactor_thread(&name, || reactor.run(&stop)))
            .map_err(RdmaError::Setup)?;
        threads.push(t);
    }
    changes.rdma_running(RdmaListeners { mail, inbox });
    Ok(threads)
}

/// Receive buffers of `len` bytes each (an SQE and the in-capsule data), in one registered
/// allocation.
struct RecvPool {
    // The region before the memory it covers.
    mr: Mr,
    buf: Vec<u8>,
    len: usize,
}

impl RecvPool {
    fn new(pd: &Pd, count: usize, len: usize) -> io::Result<Self> {
        let mut buf = vec![0u8; count * len];
        // SAFETY: the region is dropped before the buffer (field order); Vec storage does
        // not move.
        let mr = unsafe { pd.register(buf.as_mut_ptr(), buf.len(), false) }?;
        Ok(Self { mr, buf, len })
    }

    /// The scatter/gather entry of buffer `n`.
    fn sge(&self, n: usize) -> ibv_sge {
        ibv_sge {
            addr: self.buf.as_ptr() as u64 + (n * self.len) as u64,
            length: u32::try_from(self.len).expect("bounded by MAX_IN_CAPSULE_DATA"),
            lkey: self.mr.lkey(),
        }
    }

    /// The first `got` bytes received into buffer `n`.
    fn bytes(&self, n: usize, got: usize) -> &[u8] {
        let at = n * self.len;
        &self.buf[at..at + got.min(self.len)]
    }
}

/// A device's shared receive queue and its buffers.
struct SharedRecv {
    // The queue before its buffers.
    srq: Srq,
    pool: RecvPool,
}

impl SharedRecv {
    fn new(pd: &Pd, entries: u32, len: usize) -> io::Result<Self> {
        let srq = Srq::new(pd, entries)?;
        let pool = RecvPool::new(pd, entries as usize, len)?;
        let me = Self { srq, pool };
        for n in 0..entries as usize {
            me.post(n)?;
        }
        Ok(me)
    }

    /// Posts buffer `n` (again).
    fn post(&self, n: usize) -> io::Result<()> {
        let mut sge = self.pool.sge(n);
        let mut wr = ibv_recv_wr {
            wr_id: wr_id(SHARED, 0, Work::Recv, n),
            next: std::ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        // SAFETY: the pool is registered and lives as long as the queue (field order).
        unsafe { self.srq.post(&mut wr) }
    }
}

/// One device's verbs objects in one reactor.
struct Device {
    ctx: NonNull<sys::ibv_context>,
    limits: DeviceLimits,
    /// Completion entries promised to the queue pairs on `cq`.
    cq_used: u32,
    cq_size: u32,
    // Dropped in this order: the SRQ, the CQ before its channel, all before the PD.
    /// The shared receive queue, when the device has them.
    shared: Option<SharedRecv>,
    cq: Cq,
    comp: CompChannel,
    pd: Pd,
}

// SAFETY: a device's verbs objects belong to one reactor; libibverbs allows using them from
// whichever thread that reactor runs on.
unsafe impl Send for Device {}

impl Device {
    /// The device of `ctx`, with a shared receive queue of `recv_len`-byte buffers when it
    /// has them.
    fn new(ctx: NonNull<sys::ibv_context>, recv_len: usize) -> io::Result<Self> {
        let limits = target_rdma::query_device(ctx)?;
        let pd = Pd::new(ctx)?;
        let comp = CompChannel::new(ctx)?;
        let cq_size = CQ_ENTRIES.min(limits.max_cqe.max(1));
        let cq = Cq::new(ctx, cq_size, Some(&comp))?;
        let entries = SRQ_ENTRIES.min(limits.max_srq_wr);
        let shared = if entries == 0 {
            None
        } else {
            match SharedRecv::new(&pd, entries, recv_len) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!("no shared receive queue, each queue pair posts its own: {e}");
                    None
                }
            }
        };
        Ok(Self {
            ctx,
            limits,
            // The shared receives complete on this CQ too.
            cq_used: shared.as_ref().map_or(0, |_| entries),
            cq_size,
            shared,
            cq,
            comp,
            pd,
        })
    }
}

/// What a work request was, packed into its 64-bit ID with the connection it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Recv = 0,
    Read = 1,
    Send = 2,
}

/// `conn` (24 bits) | `generation` (16 bits) | kind (4 bits) | `n` (20 bits): a completion of a
/// connection that is gone (its index reused) is recognised by its generation.
fn wr_id(conn: usize, generation: u16, w: Work, n: usize) -> u64 {
    ((conn as u64 & 0xff_ffff) << 40)
        | (u64::from(generation) << 24)
        | ((w as u64) << 20)
        | n as u64
}

fn parse_wr_id(id: u64) -> (usize, u16, Option<Work>, usize) {
    let w = match (id >> 20) & 0xf {
        0 => Some(Work::Recv),
        1 => Some(Work::Read),
        2 => Some(Work::Send),
        _ => None,
    };
    (
        (id >> 40) as usize,
        (id >> 24) as u16,
        w,
        (id & 0xf_ffff) as usize,
    )
}

/// What a queue pair is sized by.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Queue entries: receives posted.
    depth: u16,
    /// Bytes per receive buffer.
    recv_len: usize,
    /// Send work requests at most.
    send_wr: u32,
    /// Completion entries it may use.
    cq_share: u32,
}

/// A queue pair as a reactor holds it (the transport handle of a [`Conn`]).
pub struct QueuePair {
    id: CmId,
    /// The connection's index in the reactor's table (in work request IDs).
    index: usize,
    qp: NonNull<sys::ibv_qp>,
    dev: usize,
    generation: u16,
    /// Completion entries this queue pair may use on its device's CQ.
    cq_share: u32,
    /// Inline data the queue pair takes (0: none): the 16-byte response goes inline.
    inline: bool,
    /// The queue pair's own `depth` receive buffers, when its device has no shared receive
    /// queue.
    own: Option<RecvPool>,
    /// Its number, as receive completions of the shared queue name it.
    qp_num: u32,
    /// One 16-byte response per slot, registered (for devices without inline data).
    cqes: Vec<u8>,
    cqes_mr: Mr,
    /// Each slot buffer's registration, redone when the buffer moves or grows.
    slot_mrs: Vec<Option<Mr>>,
    /// Receive buffers holding a capsule the queue could not take yet, with its length.
    waiting: VecDeque<(usize, usize)>,
    /// rdma_disconnect was called.
    disconnected: bool,
    /// SENDs posted and not completed.
    sends: usize,
    /// The queue asked to disconnect: its last responses (a refused Connect's status) may
    /// still be on their way, and the queue pair waits for them, [`LINGER`] at most.
    linger: Option<Instant>,
}

// SAFETY: as Device: one reactor's, used from its thread.
unsafe impl Send for QueuePair {}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // The QP first (no more DMA into the buffers), then the regions (fields, after this).
        // SAFETY: our own id; its events are acknowledged as they are read.
        unsafe { self.id.destroy() };
    }
}

impl QueuePair {
    fn disconnect(&mut self) {
        if !self.disconnected {
            self.disconnected = true;
            if let Err(e) = self.id.disconnect() {
                debug!("rdma_disconnect: {e}");
            }
        }
    }

    /// Posts receive buffer `n` again: its own, or the shared queue's (`shared`).
    fn repost(&self, shared: Option<&SharedRecv>, n: usize) -> io::Result<()> {
        repost(
            self.own.as_ref(),
            self.qp,
            self.index,
            self.generation,
            shared,
            n,
        )
    }
}

/// Posts receive buffer `n` again: of `own` on queue pair `qp` (connection `index`,
/// `generation`), or of the shared queue when the queue pair has no receives of its own.
fn repost(
    own: Option<&RecvPool>,
    qp: NonNull<sys::ibv_qp>,
    index: usize,
    generation: u16,
    shared: Option<&SharedRecv>,
    n: usize,
) -> io::Result<()> {
    let Some(own) = own else {
        return shared.map_or(Ok(()), |s| s.post(n));
    };
    let mut sge = own.sge(n);
    let mut wr = ibv_recv_wr {
        wr_id: wr_id(index, generation, Work::Recv, n),
        next: std::ptr::null_mut(),
        sg_list: &mut sge,
        num_sge: 1,
    };
    // SAFETY: a live QP; the buffer is registered and lives as long as the QP.
    unsafe { target_rdma::post_recv(qp, &mut wr) }
}

/// The verbs half of a reactor: its devices.
struct Verbs {
    devs: Vec<Device>,
    /// Generation of the next queue pair.
    generation: u16,
    /// Receive buffer bytes: an SQE and `rdma.inline_data`.
    recv_len: usize,
    /// Live queue pairs by QP number (for shared receive completions).
    qpns: std::collections::HashMap<u32, usize>,
    /// The work requests of one pass, kept so that a pass allocates nothing.
    scratch: Scratch,
}

/// A pass's chain of send work requests and their scatter/gather entries.
#[derive(Default)]
struct Scratch {
    wrs: Vec<ibv_send_wr>,
    sges: Vec<ibv_sge>,
}

// SAFETY: the pointers in the work requests are set and used within one pass on the
// reactor's thread, and never read after it.
unsafe impl Send for Scratch {}

impl Verbs {
    fn device(&mut self, ctx: NonNull<sys::ibv_context>) -> io::Result<usize> {
        if let Some(i) = self.devs.iter().position(|d| d.ctx == ctx) {
            return Ok(i);
        }
        let d = Device::new(ctx, self.recv_len)?;
        match &d.shared {
            Some(_) => info!(
                cq = d.cq_size,
                "NVMe/RDMA on a device: a shared receive queue of {} buffers of {} bytes",
                SRQ_ENTRIES.min(d.limits.max_srq_wr),
                self.recv_len
            ),
            None => info!(
                cq = d.cq_size,
                "NVMe/RDMA on a device without shared receive queues: each queue pair posts its own"
            ),
        }
        d.cq.arm()?;
        self.devs.push(d);
        Ok(self.devs.len() - 1)
    }

    /// The region covering `len` bytes at `ptr` for slot `slot`: the cached one, or a new
    /// registration of exactly that memory.
    fn slot_mr<'a>(
        pd: &Pd,
        mrs: &'a mut [Option<Mr>],
        slot: usize,
        ptr: *mut u8,
        len: usize,
    ) -> io::Result<&'a Mr> {
        let m = &mut mrs[slot];
        if !m.as_ref().is_some_and(|m| m.covers(ptr as u64, len)) {
            *m = None;
            // SAFETY: the slot's buffer neither moves nor shrinks while an action names it
            // (NvmeRdmaQueue's invariant), and the region is dropped before the queue.
            *m = Some(unsafe { pd.register(ptr, len, false) }?);
        }
        Ok(m.as_ref().expect("set above"))
    }
}

impl Link for Verbs {
    type Handle = QueuePair;

    /// Posts the queue's actions as one chain of work requests.
    fn send(&mut self, c: &mut Conn<QueuePair>) -> bool {
        let Engine::NvmeRdma(q) = &mut c.q else {
            return false;
        };
        let qp = &mut c.link;
        let Verbs { devs, scratch, .. } = self;
        let Scratch { wrs, sges } = scratch;
        wrs.clear();
        sges.clear();
        let pd = &devs[qp.dev].pd;
        let me = qp.index;
        while let Some(a) = q.next_action() {
            let mut wr = ibv_send_wr::default();
            let sge = match a {
                Action::RdmaRead {
                    slot,
                    remote_addr,
                    rkey,
                    len,
                }
                | Action::RdmaWrite {
                    slot,
                    remote_addr,
                    rkey,
                    len,
                } => {
                    let Some(buf) = q.buffer_mut(slot).get_mut(..len as usize) else {
                        error!(peer = %c.peer, slot, len, "an action names more than its slot's buffer (a bug)");
                        return false;
                    };
                    let (addr, n) = (buf.as_mut_ptr(), buf.len());
                    let mr = match Verbs::slot_mr(pd, &mut qp.slot_mrs, slot, addr, n) {
                        Ok(m) => m,
                        Err(e) => {
                            warn!("registering a slot buffer failed: {e}");
                            return false;
                        }
                    };
                    if matches!(a, Action::RdmaRead { .. }) {
                        wr.wr_id = wr_id(me, qp.generation, Work::Read, slot);
                        wr.opcode = sys::IBV_WR_RDMA_READ;
                        wr.send_flags = sys::IBV_SEND_SIGNALED;
                    } else {
                        // Unsignaled: the slot's Send, posted after it, completes it (the
                        // ID, seen only if it fails, names no work).
                        wr.wr_id = wr_id(me, qp.generation, Work::Read, slot) | (0xf << 20);
                        wr.opcode = sys::IBV_WR_RDMA_WRITE;
                    }
                    wr.remote_addr = remote_addr;
                    wr.rkey = rkey;
                    ibv_sge {
                        addr: addr as u64,
                        length: len,
                        lkey: mr.lkey(),
                    }
                }
                Action::Send {
                    slot,
                    cqe,
                    invalidate,
                } => {
                    let at = slot * 16;
                    qp.cqes[at..at + 16].copy_from_slice(&cqe);
                    wr.wr_id = wr_id(me, qp.generation, Work::Send, slot);
                    wr.send_flags = sys::IBV_SEND_SIGNALED;
                    if qp.inline {
                        wr.send_flags |= sys::IBV_SEND_INLINE;
                    }
                    qp.sends += 1;
                    if let Some(rkey) = invalidate {
                        wr.opcode = sys::IBV_WR_SEND_WITH_INV;
                        wr.invalidate_rkey = rkey;
                    } else {
                        wr.opcode = sys::IBV_WR_SEND;
                    }
                    ibv_sge {
                        addr: qp.cqes.as_ptr() as u64 + at as u64,
                        length: 16,
                        lkey: qp.cqes_mr.lkey(),
                    }
                }
                Action::Disconnect => {
                    // Disconnected on release, once the responses before it are sent.
                    qp.linger.get_or_insert_with(Instant::now);
                    break;
                }
            };
            wr.num_sge = 1;
            wrs.push(wr);
            sges.push(sge);
        }
        if wrs.is_empty() {
            return true;
        }
        // Link the chain now that the vectors no longer move.
        let n = wrs.len();
        for i in 0..n {
            wrs[i].sg_list = &mut sges[i];
            if i + 1 < n {
                let next: *mut ibv_send_wr = &mut wrs[i + 1];
                wrs[i].next = next;
            }
        }
        // SAFETY: a live QP; every SGE names registered memory that stays until the work
        // request completes (slot buffers do not move while named; CQE buffers are the
        // queue pair's).
        match unsafe { target_rdma::post_send(qp.qp, &mut wrs[0]) } {
            Ok(()) => true,
            Err(e) => {
                warn!(peer = %c.peer, "posting work requests failed: {e}");
                false
            }
        }
    }

    fn flushed(&self, c: &Conn<QueuePair>) -> bool {
        c.link.sends == 0 || c.link.linger.is_some_and(|t| t.elapsed() >= LINGER)
    }

    fn release(&mut self, c: &mut Conn<QueuePair>, _graceful: bool) {
        c.link.disconnect();
        self.qpns.remove(&c.link.qp_num);
        let d = &mut self.devs[c.link.dev];
        // Shared buffers that held capsules the queue never took go back to the queue.
        if c.link.own.is_none() {
            for (n, _) in c.link.waiting.drain(..) {
                if let Some(s) = &d.shared
                    && let Err(e) = s.post(n)
                {
                    warn!("reposting a shared receive failed: {e}");
                }
            }
        }
        d.cq_used = d.cq_used.saturating_sub(c.link.cq_share);
        c.link.cq_share = 0;
    }
}

struct Reactor {
    core: Core<QueuePair>,
    verbs: Verbs,
    index: usize,
    listeners: Vec<(CmId, SocketAddr)>,
    mail: Arc<Mailboxes>,
    /// The first reactor's: listeners added and removed at run time.
    changes: Option<Arc<Inbox<RdmaChange>>>,
    limits: CmLimits,
    /// In-capsule data each queue accepts (`rdma.inline_data`).
    in_capsule: usize,
    /// The connections a batch of completions moved (kept: no allocation per batch).
    touched: Vec<usize>,
    started: Instant,
    max_connections: usize,
}

impl Reactor {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut wcs = [ibv_wc::default(); POLL_BATCH];
        let mut last_tick = Instant::now();
        let mut last_event = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut busy = self.cm_events();
            busy |= self.inbox();
            busy |= self.listener_changes();
            busy |= self.completions(&mut wcs);
            for i in self.core.reap(&mut self.verbs) {
                busy = true;
                self.after(i);
            }
            self.core.blocks.submit();
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let now = self.now_ms();
                // Ticks also end the queue pairs whose last responses did not go in time.
                for i in self.core.tick(&mut self.verbs, now) {
                    self.core.send(&mut self.verbs, i);
                }
            }
            if busy {
                last_event = Instant::now();
            } else if last_event.elapsed() >= self.core.shared.busy_poll {
                self.sleep(&mut wcs);
                last_event = Instant::now();
            }
        }
        for i in 0..self.core.conns.len() {
            self.core
                .close(&mut self.verbs, i, "the target is stopping", false);
        }
        // Wait for block I/O (the runner's drop does), then the queue pairs go.
        for (id, _) in self.listeners.drain(..) {
            // SAFETY: our listeners; their events are acknowledged as read.
            unsafe { id.destroy() };
        }
    }

    /// Keeps the listeners added at run time and destroys the removed ones; dropping each
    /// change's sender acknowledges it. True when there were any.
    fn listener_changes(&mut self) -> bool {
        let Some(inbox) = self.changes.clone() else {
            return false;
        };
        let changes = inbox.take();
        let any = !changes.is_empty();
        for (change, _done) in changes {
            match change {
                RdmaChange::Add(id, addr) => {
                    info!(%addr, "NVMe/RDMA listening on {addr}");
                    self.listeners.push((id, addr));
                }
                RdmaChange::Remove(addr) => {
                    // rdma_destroy_id waits for the id's events to be acknowledged: take
                    // (and so acknowledge) every event that arrived first.
                    self.cm_events();
                    let (gone, kept) = self.listeners.drain(..).partition(|l| l.1 == addr);
                    self.listeners = kept;
                    let gone: Vec<(CmId, SocketAddr)> = gone;
                    for (id, _) in gone {
                        // SAFETY: our listener, on this reactor's channel, whose events
                        // were all read; connect requests it took are ids of their own.
                        unsafe { id.destroy() };
                        info!(%addr, "NVMe/RDMA listener on {addr} closed");
                    }
                }
            }
        }
        any
    }

    /// Sleeps until a completion, a CM event, a handed-over connect request or block I/O
    /// wakes it, or a tick passes.
    fn sleep(&mut self, wcs: &mut [ibv_wc]) {
        for d in &self.verbs.devs {
            if let Err(e) = d.cq.arm() {
                warn!(reactor = self.core.name, "arming a completion queue: {e}");
            }
        }
        // A completion that came before the arm would not signal: look once more.
        if self.completions(wcs) {
            return;
        }
        let mut fds = vec![
            crate::reactor::readable(self.mail.channels[self.index].fd()),
            crate::reactor::readable(self.mail.wakers[self.index]),
        ];
        if let Some(fd) = self.core.blocks.ring_fd() {
            fds.push(crate::reactor::readable(fd));
        }
        for d in &self.verbs.devs {
            fds.push(crate::reactor::readable(d.comp.fd()));
        }
        let timeout = i32::try_from(TICK.as_millis()).unwrap_or(100);
        // SAFETY: poll(2) over a live array of pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        for d in &self.verbs.devs {
            d.comp.drain();
        }
        let mut v: u64 = 0;
        // SAFETY: read(2) of 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe {
            libc::read(
                self.mail.wakers[self.index],
                std::ptr::from_mut(&mut v).cast(),
                8,
            )
        };
    }

    /// Takes the CM events of this reactor's channel; true when there were any.
    fn cm_events(&mut self) -> bool {
        let mut any = false;
        loop {
            let ev = match self.mail.channels[self.index].next() {
                Ok(Some(ev)) => ev,
                Ok(None) => return any,
                Err(e) => {
                    warn!(reactor = self.core.name, "reading CM events: {e}");
                    return any;
                }
            };
            any = true;
            self.cm_event(ev);
        }
    }

    fn cm_event(&mut self, ev: CmEvent) {
        let Some(id) = ev.id else { return };
        match ev.kind {
            sys::RDMA_CM_EVENT_CONNECT_REQUEST => {
                let n = self.mail.channels.len();
                let r = self.mail.next.fetch_add(1, Ordering::Relaxed) % n;
                if r == self.index {
                    self.connect_request(id, &ev);
                } else if let Err(e) = id.migrate(&self.mail.channels[r]) {
                    warn!(
                        reactor = self.core.name,
                        "handing a connect request to rdma-{r} failed, serving it here: {e}"
                    );
                    self.connect_request(id, &ev);
                } else {
                    self.mail.post(r, Handoff { id, event: ev });
                }
            }
            sys::RDMA_CM_EVENT_ESTABLISHED => {
                if let Some(i) = self.conn_of(id) {
                    let peer = self.peer(i);
                    debug!(reactor = self.core.name, %peer, "NVMe/RDMA queue pair established");
                }
            }
            sys::RDMA_CM_EVENT_DISCONNECTED
            | sys::RDMA_CM_EVENT_DEVICE_REMOVAL
            | sys::RDMA_CM_EVENT_CONNECT_ERROR
            | sys::RDMA_CM_EVENT_UNREACHABLE
            | sys::RDMA_CM_EVENT_REJECTED
            | sys::RDMA_CM_EVENT_ADDR_CHANGE => {
                if let Some(i) = self.conn_of(id) {
                    let why = match ev.kind {
                        sys::RDMA_CM_EVENT_DISCONNECTED => "the host disconnected",
                        sys::RDMA_CM_EVENT_DEVICE_REMOVAL => "the RDMA device is going away",
                        sys::RDMA_CM_EVENT_ADDR_CHANGE => "the address moved to another device",
                        _ => "the connection failed",
                    };
                    self.core.close(&mut self.verbs, i, why, false);
                } else if self.listeners.iter().any(|(l, _)| *l == id) {
                    error!(
                        reactor = self.core.name,
                        event = ev.name(),
                        "an NVMe/RDMA listener lost its device; its address no longer serves"
                    );
                }
            }
            _ => debug!(
                reactor = self.core.name,
                event = ev.name(),
                "RDMA CM event ignored"
            ),
        }
    }

    fn peer(&mut self, i: usize) -> String {
        self.core
            .conns
            .live(i)
            .map_or_else(String::new, |c| c.peer.to_string())
    }

    /// The live connection an id belongs to (its context holds the index + 1 and the
    /// generation).
    fn conn_of(&mut self, id: CmId) -> Option<usize> {
        let tag = id.context();
        if tag == 0 {
            return None;
        }
        let i = (tag >> 16) as usize - 1;
        let generation = tag as u16;
        self.core
            .conns
            .live(i)
            .filter(|c| c.link.generation == generation && c.link.id == id)
            .map(|_| i)
    }

    fn inbox(&mut self) -> bool {
        let handed: Vec<Handoff> = std::mem::take(
            &mut *self.mail.inboxes[self.index]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let any = !handed.is_empty();
        for h in handed {
            self.connect_request(h.id, &h.event);
        }
        any
    }

    fn reject(&self, id: CmId, status: CmStatus, why: &str) {
        warn!(reactor = self.core.name, peer = ?id.peer_addr(), status = ?status, "NVMe/RDMA connect request rejected: {why}");
        if let Err(e) = id.reject(&CmRejectRepr::new(status).to_bytes()) {
            debug!("rdma_reject: {e}");
        }
        // SAFETY: the request's id, ours since the event; not used after.
        unsafe { id.destroy() };
    }

    /// A host asks for a queue pair: accept it with a queue, or reject it.
    fn connect_request(&mut self, id: CmId, ev: &CmEvent) {
        let counted = self.core.metrics.of(crate::serve::Proto::Nvme).clone();
        if self.core.conns.held() >= self.max_connections {
            counted.refused_limit.inc();
            return self.reject(
                id,
                CmStatus::NoResources,
                "max_connections_per_reactor reached",
            );
        }
        let Some(ctx) = id.verbs() else {
            return self.reject(id, CmStatus::NoResources, "the id has no device");
        };
        let dev = match self.verbs.device(ctx) {
            Ok(d) => d,
            Err(e) => {
                return self.reject(
                    id,
                    CmStatus::NoResources,
                    &format!("setting up the device: {e}"),
                );
            }
        };
        let d = &self.verbs.devs[dev];
        // Send work requests: per slot an RDMA WRITE and a SEND, or an RDMA READ.
        let per_entry = (2 * SLOTS_PER_ENTRY) as u32;
        let by_device = ((d.limits.max_qp_wr.saturating_sub(1)) / per_entry)
            .min(d.limits.max_srq_wr.max(d.limits.max_qp_wr));
        let limits = CmLimits {
            max_depth: self
                .limits
                .max_depth
                .min(u16::try_from(by_device).unwrap_or(u16::MAX)),
            ..self.limits
        };
        let (reply, negotiated) = match cm::accept(&ev.private_data, &limits) {
            Ok(a) => a,
            Err(rej) => {
                let why = format!("{:?}", rej.status);
                if let Err(e) = id.reject(&rej.to_bytes()) {
                    debug!("rdma_reject: {e}");
                }
                warn!(reactor = self.core.name, peer = ?id.peer_addr(), "NVMe/RDMA connect request rejected: {why}");
                // SAFETY: the request's id; not used after.
                unsafe { id.destroy() };
                return;
            }
        };
        let depth = usize::from(negotiated.depth);
        let slots = depth * SLOTS_PER_ENTRY;
        let send_wr = u32::try_from(2 * slots + 1).expect("bounded by the queue depth");
        // Completions: every signaled send (a READ or a SEND per slot) and every receive of
        // its own (shared receives have theirs already).
        let d = &mut self.verbs.devs[dev];
        let own_recvs = if d.shared.is_some() { 0 } else { depth };
        let cq_share = u32::try_from(slots + own_recvs).expect("bounded") + send_wr;
        if d.cq_used + cq_share > d.cq_size {
            return self.reject(
                id,
                CmStatus::NoResources,
                "this reactor's completion queue is full",
            );
        }
        let initiator_depth = ev
            .initiator_depth
            .min(u8::try_from(d.limits.max_qp_init_rd_atom).unwrap_or(u8::MAX));
        let local = id.local_addr().map(|a| a.ip());
        let q = NvmeRdmaQueue::with_in_capsule_data(negotiated, local, self.in_capsule);
        let recv_len = q.recv_buffer_len();
        debug_assert_eq!(recv_len, self.verbs.recv_len);
        let i = self.core.conns.vacant();
        let sizes = Sizes {
            depth: negotiated.depth,
            recv_len,
            send_wr,
            cq_share,
        };
        let qp = match self.queue_pair(id, i, dev, sizes) {
            Ok(qp) => qp,
            Err(e) => {
                return self.reject(
                    id,
                    CmStatus::NoResources,
                    &format!("creating the queue pair: {e}"),
                );
            }
        };
        let peer = id
            .peer_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let q = Engine::NvmeRdma(Box::new(q));
        let generation = qp.generation;
        let inserted = self.core.conns.insert(qp, peer, q);
        debug_assert_eq!(inserted, i);
        id.set_context(((i as u64 + 1) << 16) | u64::from(generation));
        self.verbs.devs[dev].cq_used += cq_share;
        let c = self.core.conns.live(i).expect("just inserted");
        self.verbs.qpns.insert(c.link.qp_num, i);
        if c.link.own.is_some() {
            for n in 0..depth {
                if let Err(e) = c.link.repost(None, n) {
                    warn!(reactor = self.core.name, %peer, "posting receives failed: {e}");
                    return self
                        .core
                        .close(&mut self.verbs, i, "posting receives failed", false);
                }
            }
        }
        let param = ConnParam {
            responder_resources: 0,
            initiator_depth,
            retry_count: 7,
            rnr_retry_count: 7,
        };
        if let Err(e) = id.accept(param, &reply.to_bytes()) {
            warn!(reactor = self.core.name, %peer, "rdma_accept failed: {e}");
            return self
                .core
                .close(&mut self.verbs, i, "rdma_accept failed", false);
        }
        counted.accepted();
        debug!(reactor = self.core.name, %peer, qid = negotiated.qid, depth, "NVMe/RDMA queue pair accepted");
    }

    fn queue_pair(
        &mut self,
        id: CmId,
        index: usize,
        dev: usize,
        sizes: Sizes,
    ) -> io::Result<QueuePair> {
        let Sizes {
            depth,
            recv_len,
            send_wr,
            cq_share,
        } = sizes;
        let d = &self.verbs.devs[dev];
        let depth = usize::from(depth);
        let slots = depth * SLOTS_PER_ENTRY;
        let srq = d.shared.as_ref().map(|s| &s.srq);
        let cap = |inline| sys::ibv_qp_cap {
            max_send_wr: send_wr,
            max_recv_wr: if srq.is_some() {
                0
            } else {
                u32::try_from(depth).expect("bounded")
            },
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: inline,
        };
        // Inline responses save the device a DMA read; a device without inline data gets
        // them from the registered CQE buffers.
        let inline = match id.create_qp(&d.pd, &d.cq, &d.cq, srq, cap(16)) {
            Ok(()) => true,
            Err(_) => {
                id.create_qp(&d.pd, &d.cq, &d.cq, srq, cap(0))?;
                false
            }
        };
        let qp = id
            .qp()
            .ok_or_else(|| io::Error::other("rdma_create_qp made no QP"))?;
        let own = if srq.is_some() {
            None
        } else {
            Some(RecvPool::new(&d.pd, depth, recv_len)?)
        };
        let mut cqes = vec![0u8; slots * 16];
        // SAFETY: the buffer is moved into the QueuePair with its region, which is dropped
        // before it (after the QP is destroyed); Vec storage does not move.
        let cqes_mr = unsafe { d.pd.register(cqes.as_mut_ptr(), cqes.len(), false) }?;
        self.verbs.generation = self.verbs.generation.wrapping_add(1);
        Ok(QueuePair {
            id,
            index,
            qp,
            dev,
            generation: self.verbs.generation,
            cq_share,
            inline,
            own,
            qp_num: target_rdma::qp_num(qp),
            cqes,
            cqes_mr,
            slot_mrs: (0..slots).map(|_| None).collect(),
            waiting: VecDeque::new(),
            disconnected: false,
            sends: 0,
            linger: None,
        })
    }

    /// Takes the completions of every device; true when there were any.
    fn completions(&mut self, wcs: &mut [ibv_wc]) -> bool {
        let mut any = false;
        for d in 0..self.verbs.devs.len() {
            loop {
                let n = match self.verbs.devs[d].cq.poll(wcs) {
                    Ok(n) => n,
                    Err(e) => {
                        error!(reactor = self.core.name, "polling a completion queue: {e}");
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                any = true;
                let mut touched = std::mem::take(&mut self.touched);
                for wc in &wcs[..n] {
                    if let Some(i) = self.completion(d, wc)
                        && !touched.contains(&i)
                    {
                        touched.push(i);
                    }
                }
                for &i in &touched {
                    self.after(i);
                }
                touched.clear();
                self.touched = touched;
            }
        }
        any
    }

    /// Hands one completion (of device `d`'s CQ) to its queue; returns its connection if
    /// it is still live.
    fn completion(&mut self, d: usize, wc: &ibv_wc) -> Option<usize> {
        let (conn, generation, work, n) = parse_wr_id(wc.wr_id);
        let now = self.now_ms();
        // A shared receive names its queue pair by number, not in its ID.
        let shared_recv = work == Some(Work::Recv) && conn == SHARED;
        let i = if shared_recv {
            self.verbs.qpns.get(&wc.qp_num).copied()
        } else {
            Some(conn)
        };
        let core = &mut self.core;
        let verbs = &mut self.verbs;
        let repost_shared = |verbs: &Verbs| {
            if let Some(s) = &verbs.devs[d].shared
                && let Err(e) = s.post(n)
            {
                warn!("reposting a shared receive failed: {e}");
            }
        };
        let Some(c) = i.and_then(|i| {
            core.conns
                .live(i)
                .filter(|c| shared_recv || c.link.generation == generation)
        }) else {
            if shared_recv {
                // Its queue pair is gone: the buffer serves the others.
                repost_shared(verbs);
            }
            return None;
        };
        let i = i.expect("found above");
        if wc.status != sys::IBV_WC_SUCCESS {
            if shared_recv {
                repost_shared(verbs);
            }
            let why = if wc.status == sys::IBV_WC_WR_FLUSH_ERR {
                "its queue pair was flushed".to_string()
            } else {
                format!(
                    "a work request failed: {}",
                    target_rdma::wc_status_str(wc.status)
                )
            };
            core.close(verbs, i, &why, false);
            return None;
        }
        let Conn {
            link, q: engine, ..
        } = c;
        let Engine::NvmeRdma(q) = engine else {
            return None;
        };
        let shared = verbs.devs[link.dev].shared.as_ref();
        let QueuePair {
            own,
            waiting,
            sends,
            qp,
            index,
            generation,
            ..
        } = link;
        let (own, qp, index, generation) = (own.as_ref(), *qp, *index, *generation);
        let repost = |n| repost(own, qp, index, generation, shared, n);
        let registry = &core.shared.registry;
        let pool = own
            .or(shared.map(|s| &s.pool))
            .expect("a queue pair has its own receives or the shared ones");
        let step = crate::reactor::catch(|| match work {
            Some(Work::Recv) => {
                let capsule = pool.bytes(n, wc.byte_len as usize);
                if !waiting.is_empty() || !q.capsule(capsule, registry, now) {
                    waiting.push_back((n, wc.byte_len as usize));
                    Ok(())
                } else {
                    repost(n)
                }
            }
            Some(Work::Read) => {
                q.rdma_read_done(n, true, registry, now);
                Ok(())
            }
            Some(Work::Send) => {
                *sends = sends.saturating_sub(1);
                q.send_done(n, true);
                // A slot is free: capsules that waited for one go in now, in order.
                while let Some(&(b, len)) = waiting.front() {
                    if !q.capsule(pool.bytes(b, len), registry, now) {
                        break;
                    }
                    waiting.pop_front();
                    repost(b)?;
                }
                Ok(())
            }
            None => Ok(()),
        });
        match step {
            Ok(Ok(())) => Some(i),
            Ok(Err(e)) => {
                warn!(reactor = core.name, "reposting a receive failed: {e}");
                core.close(verbs, i, "posting receives failed", false);
                None
            }
            Err(panic) => {
                core.failed(verbs, i, &panic);
                None
            }
        }
    }

    /// After connection `i`'s queue moved: its block I/O starts and its actions are posted.
    fn after(&mut self, i: usize) {
        self.core.conns.run_io(i, &mut self.core.blocks);
        self.core.send(&mut self.verbs, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_request_ids_round_trip() {
        for (conn, generation, w, n) in [
            (0, 0, Work::Recv, 0),
            (5, 65535, Work::Read, 2047),
            (0xff_ffff, 7, Work::Send, 0xf_ffff),
        ] {
            assert_eq!(
                parse_wr_id(wr_id(conn, generation, w, n)),
                (conn, generation, Some(w), n)
            );
        }
        // The RDMA WRITE's ID (unsignaled, so never seen unless it fails) names no work.
        let write = wr_id(3, 1, Work::Read, 9) | (0xf << 20);
        assert_eq!(parse_wr_id(write).2, None);
    }
}
