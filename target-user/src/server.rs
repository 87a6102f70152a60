//! NVMe/TCP and iSCSI over kernel sockets: the socket transport of ARCHITECTURE.md.
//!
//! One reactor thread per core, each with its own epoll instance (mio), its own listening
//! socket per address (SO_REUSEPORT, so the kernel spreads new connections across
//! reactors) and the connections it accepted. A reactor never blocks: sockets are
//! non-blocking and the memory backend completes in place. Nothing is shared on the I/O
//! path; the NVMe controller registry and the iSCSI session registry (mutexes) are touched
//! only at Connect/login, CC.EN and teardown. Both protocols share the namespaces: an iSCSI
//! LUN and an NVMe namespace can be the same backend.
//!
//! With `xdp.allow_sources` set, a connection from outside the list is closed as soon as it
//! is accepted, on every listener and whatever interface it came in on: the XDP program
//! applies the list only on the interface it is attached to.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use target_proto::iscsi::chap::{ChapConfig, ChapSecret};
use target_proto::iscsi::conn::{ConnParams, Timers};
use target_proto::iscsi::params::TargetLimits;
use target_proto::iscsi::{Portal, Registry as IscsiRegistry, TargetNode};
use target_proto::nvme::subsystem::{Namespace, Port, Registry, Subsystem};
use target_proto::nvme_tcp::icreq::ControllerParams;
use target_proto::scsi::{LunConfig, ScsiTarget};
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, FileBackend, FileBackendError, MemoryBackend};
use crate::config::{AllowList, BackendKind, ChapCredentials, Config};
pub use crate::engine::Proto;
use crate::engine::{BlockRunner, Conns, Shared};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 256 * 1024;
/// How often keep-alive timers and dead controllers are checked.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// After the last event, keep polling without sleeping this long: waking a sleeping CPU
/// (worse, a virtual one) costs tens of microseconds per request at low queue depth,
/// while an idle target still sleeps and costs nothing.
const BUSY_POLL: Duration = Duration::from_micros(200);
/// MAXH2CDATA offered to hosts.
const MAX_H2C_DATA: u32 = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source} (is another target using the port?)")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot start a reactor: {0}")]
    Reactor(io::Error),
    #[error("namespace backend: {0}")]
    Backend(#[from] FileBackendError),
    #[error("cannot set up io_uring for the file backends: {0} (kernel 5.6 or later is needed)")]
    Uring(io::Error),
    #[error("AF_XDP is required (xdp.require_afxdp) but unusable: {0}")]
    AfXdp(crate::xdp_path::AfXdpError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Token of the reactor's io_uring in its epoll set.
const RING_TOKEN: Token = Token(usize::MAX);

/// The running socket transport; [`Server::stop`] ends it.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// What the configuration builds: NVMe subsystems, iSCSI targets and the backends both
/// point at.
struct Built {
    subsystems: Vec<Subsystem>,
    targets: Vec<TargetNode>,
    backends: Vec<Arc<Backend>>,
}

fn chap(c: &ChapCredentials) -> ChapSecret {
    ChapSecret {
        name: c.user.clone(),
        secret: c.secret.as_bytes().to_vec(),
    }
}

/// Subsystems as the controller sees them, iSCSI targets, and the backends their
/// namespaces point at.
fn build(config: &Config) -> Result<Built, ServeError> {
    let mut backends = Vec::new();
    let mut subsystems = Vec::new();
    let mut targets = Vec::new();
    for s in &config.subsystems {
        let mut namespaces = Vec::new();
        let mut luns = Vec::new();
        for n in &s.namespaces {
            let backend = match n.backend {
                BackendKind::Memory => {
                    Backend::Memory(MemoryBackend::new(n.size.map_or(0, |s| s.0)))
                }
                BackendKind::File => {
                    let path = n.path.as_deref().unwrap_or_default();
                    let f = FileBackend::open(path, n.size.map(|s| s.0), n.block_size)?;
                    let mode = if f.direct {
                        "O_DIRECT"
                    } else {
                        "buffered: no O_DIRECT at this block size"
                    };
                    info!(path, bytes = f.size, "file namespace ({mode})");
                    Backend::File(f)
                }
            };
            let id = u32::try_from(backends.len()).expect("fewer than 2^32 namespaces");
            let ident = identity(&s.nqn, n.nsid);
            if s.iqn.is_some() && n.iscsi {
                luns.push(LunConfig {
                    lun: u64::from(n.nsid - 1),
                    block_size: n.block_size,
                    blocks: backend.size() / u64::from(n.block_size),
                    backend: id,
                    volatile_write_cache: backend.volatile_cache(),
                    thin: true,
                    read_only: n.read_only,
                    identity: ident,
                    vendor: "XDPT".into(),
                    product: s.model.chars().take(16).collect(),
                    revision: env!("CARGO_PKG_VERSION").chars().take(4).collect(),
                });
            }
            if !n.nvme {
                backends.push(Arc::new(backend));
                continue;
            }
            namespaces.push(Namespace {
                nsid: n.nsid,
                block_size: n.block_size,
                blocks: backend.size() / u64::from(n.block_size),
                nguid: ident,
                eui64: ident[..8].try_into().expect("8 bytes"),
                uuid: uuid_v8(ident),
                volatile_write_cache: backend.volatile_cache(),
                deallocate: true,
                backend: id,
                scsi_reservations: None,
            });
            backends.push(Arc::new(backend));
        }
        namespaces.sort_by_key(|n| n.nsid);
        if let Some(iqn) = &s.iqn {
            let scsi = Arc::new(ScsiTarget::new(luns));
            // A namespace that is also a LUN honours the LUN's reservations on NVMe I/O.
            for ns in &mut namespaces {
                let lun = u64::from(ns.nsid - 1);
                ns.scsi_reservations = scsi
                    .luns()
                    .iter()
                    .find(|l| l.config().lun == lun)
                    .map(|l| Arc::clone(l.reservations()));
            }
            targets.push(TargetNode {
                iqn: iqn.clone(),
                alias: None,
                scsi,
                allowed_initiators: (!s.allow_initiators.is_empty())
                    .then(|| s.allow_initiators.clone()),
                chap: s.chap.as_ref().map(|c| ChapConfig {
                    initiator: chap(c),
                    target: s.mutual_chap.as_ref().map(chap),
                }),
            });
        }
        let serial = s.serial.clone().unwrap_or_else(|| {
            let h = identity(&s.nqn, 0);
            h[..10].iter().map(|b| format!("{b:02x}")).collect()
        });
        subsystems.push(Subsystem {
            nqn: s.nqn.clone(),
            serial,
            model: s.model.clone(),
            firmware: env!("CARGO_PKG_VERSION").chars().take(8).collect(),
            namespaces,
            allowed_hosts: (!s.allow_hosts.is_empty()).then(|| s.allow_hosts.clone()),
        });
    }
    Ok(Built {
        subsystems,
        targets,
        backends,
    })
}

/// 16 stable bytes for a namespace (NGUID, EUI-64, UUID), from its subsystem and NSID, so
/// hosts see the same identity after a restart (multipath and udev rely on it).
fn identity(nqn: &str, nsid: u32) -> [u8; 16] {
    // FNV-1a, twice with different offsets: stable across builds, unlike std's hasher.
    let fnv = |seed: u64| {
        let mut h = seed;
        for b in nqn.bytes().chain(nsid.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    out[8..].copy_from_slice(&fnv(0x8422_2325_cbf2_9ce4).to_be_bytes());
    out
}

/// RFC 9562 version 8 (custom) UUID from 16 bytes.
fn uuid_v8(mut b: [u8; 16]) -> [u8; 16] {
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// Reactors to run: the configured number, else the CPUs this process may use.
fn reactor_count(config: &Config) -> usize {
    config
        .reactors
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

fn listener(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let err = |source| ServeError::Listen { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(err)?;
    }
    s.bind(&addr.into()).map_err(err)?;
    s.listen(1024).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    Ok(TcpListener::from_std(s.into()))
}

fn parse_addrs(list: &[String]) -> Vec<SocketAddr> {
    list.iter()
        .map(|l| l.parse().expect("validated by Config::validate"))
        .collect()
}

/// The registries, engine parameters and backends every reactor shares.
fn shared(config: &Config) -> Result<Shared, ServeError> {
    let Built {
        subsystems,
        targets,
        backends,
    } = build(config)?;
    let mut registry = Registry::new(subsystems);
    let addrs = parse_addrs(&config.nvme.listen);
    let iscsi_addrs = parse_addrs(&config.iscsi.listen);
    registry.set_ports(
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Port {
                id: u16::try_from(i + 1).unwrap_or(u16::MAX),
                addr: (!a.ip().is_unspecified()).then_some(a.ip()),
                port: a.port(),
                io: a.port() != config.nvme.discovery_port,
            })
            .collect(),
    );
    let registry = Arc::new(Mutex::new(registry));
    let mut iscsi_registry = IscsiRegistry::new(
        targets,
        iscsi_addrs
            .iter()
            .map(|a| Portal {
                addr: (!a.ip().is_unspecified()).then_some(a.ip()),
                port: a.port(),
            })
            .collect(),
    );
    iscsi_registry.discovery_chap = config.iscsi.discovery_chap.as_ref().map(|c| ChapConfig {
        initiator: chap(c),
        target: None,
    });
    let iscsi_registry = Arc::new(Mutex::new(iscsi_registry));
    let iscsi_params = ConnParams {
        limits: TargetLimits {
            allow_header_digest: config.iscsi.header_digest,
            allow_data_digest: config.iscsi.data_digest,
            ..TargetLimits::default()
        },
        timers: Timers {
            nop_interval_ms: config.iscsi.nop_interval * 1000,
            nop_timeout_ms: config.iscsi.nop_timeout * 1000,
            ..Timers::default()
        },
    };
    let params = ControllerParams {
        allow_header_digest: config.nvme.header_digest,
        allow_data_digest: config.nvme.data_digest,
        cpda: 0,
        max_h2c_data: MAX_H2C_DATA,
    };
    Ok(Shared {
        registry,
        iscsi_registry,
        iscsi_params,
        params,
        backends,
        busy_poll: std::env::var("XDPT_BUSY_POLL_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(BUSY_POLL, Duration::from_micros),
    })
}

/// Every listening address with the protocol it serves.
pub fn listen_addrs(config: &Config) -> Vec<(SocketAddr, Proto)> {
    parse_addrs(&config.nvme.listen)
        .into_iter()
        .map(|a| (a, Proto::Nvme))
        .chain(
            parse_addrs(&config.iscsi.listen)
                .into_iter()
                .map(|a| (a, Proto::Iscsi)),
        )
        .collect()
}

/// Starts the socket reactors and, with `xdp`, the AF_XDP reactors of that interface
/// (falling back to sockets alone when AF_XDP is unusable, unless the configuration
/// requires it).
pub fn start(
    config: &Config,
    xdp: Option<&mut crate::xdp::Steering>,
) -> Result<Server, ServeError> {
    let shared = Arc::new(shared(config)?);
    // The XDP program drops other sources on the interface it is attached to; the
    // listeners serve every interface, so they apply the same list themselves.
    let allow = Arc::new(config.xdp.allow_list()?);
    if allow.is_on() {
        let list: Vec<String> = allow
            .prefixes()
            .iter()
            .map(|p| format!("{}/{}", p.addr, p.len))
            .collect();
        info!("source allow-list on: kernel-socket connections from outside {list:?} are closed");
    }
    let all = listen_addrs(config);
    let n = reactor_count(config);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(n);
    // The AF_XDP sockets first: once the kernel's listeners accept, the storage ports'
    // traffic on that interface already goes to the user-space stack.
    if let Some(steering) = xdp {
        match crate::xdp_path::start(config, steering, &shared, &stop) {
            Ok(t) => threads.extend(t),
            Err(e) if config.xdp.require_afxdp => return Err(ServeError::AfXdp(e)),
            Err(e) => warn!(
                "AF_XDP unusable, storage ports fall back to kernel sockets (set xdp.require_afxdp to fail instead): {e}"
            ),
        }
    }
    let mut listening = Vec::new();
    for r in 0..n {
        let mut listeners = Vec::with_capacity(all.len());
        for &(a, proto) in &all {
            let l = listener(a)?;
            if r == 0 {
                listening.push((proto, l.local_addr().unwrap_or(a)));
            }
            listeners.push((l, proto));
        }
        let poll = Poll::new().map_err(ServeError::Reactor)?;
        let reactor = Reactor {
            id: r,
            poll,
            listeners,
            conns: Conns::new(),
            blocks: shared.block_runner().map_err(ServeError::Uring)?,
            shared: Arc::clone(&shared),
            started: Instant::now(),
            buf: vec![0u8; READ_CHUNK],
            max_connections: config.max_connections_per_reactor,
            refused: 0,
            allow: Arc::clone(&allow),
            denied: 0,
        };
        let stop = Arc::clone(&stop);
        let t = std::thread::Builder::new()
            .name(format!("reactor-{r}"))
            .spawn(move || {
                crate::engine::reactor_thread(&format!("reactor-{r}"), || reactor.run(&stop));
            })
            .map_err(ServeError::Reactor)?;
        threads.push(t);
    }
    let nvme: Vec<_> = listening
        .iter()
        .filter(|l| l.0 == Proto::Nvme)
        .map(|l| l.1)
        .collect();
    let iscsi: Vec<_> = listening
        .iter()
        .filter(|l| l.0 == Proto::Iscsi)
        .map(|l| l.1)
        .collect();
    info!(reactors = n, nvme = ?nvme, iscsi = ?iscsi, "serving over kernel sockets");
    Ok(Server { stop, threads })
}

type Conn = crate::engine::Conn<TcpStream>;

struct Reactor {
    id: usize,
    poll: Poll,
    listeners: Vec<(TcpListener, Proto)>,
    /// Block I/O. Declared before `conns`: dropped first, it waits for the operations
    /// still writing into the connections' buffers (see `BlockRunner`'s `Drop`).
    blocks: BlockRunner,
    /// Connections by token (token = listeners + index).
    conns: Conns<TcpStream>,
    shared: Arc<Shared>,
    started: Instant,
    buf: Vec<u8>,
    /// Connections held at most (`max_connections_per_reactor`).
    max_connections: usize,
    /// Connections refused at that limit.
    refused: u64,
    /// `xdp.allow_sources`, checked at accept.
    allow: Arc<AllowList>,
    /// Connections refused because their source is outside `allow`.
    denied: u64,
}

impl Reactor {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(mut self, stop: &AtomicBool) {
        for (i, (l, _)) in self.listeners.iter_mut().enumerate() {
            if let Err(e) = self
                .poll
                .registry()
                .register(l, Token(i), Interest::READABLE)
            {
                warn!(reactor = self.id, "cannot watch a listener: {e}");
            }
        }
        if let Some(fd) = self.blocks.ring_fd()
            && let Err(e) =
                self.poll
                    .registry()
                    .register(&mut SourceFd(&fd), RING_TOKEN, Interest::READABLE)
        {
            warn!(reactor = self.id, "cannot watch the io_uring: {e}");
        }
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        let mut last_event = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let timeout = if last_event.elapsed() < self.shared.busy_poll {
                Duration::ZERO
            } else {
                TICK
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(reactor = self.id, "poll failed: {e}");
                }
                continue;
            }
            if !events.is_empty() {
                last_event = Instant::now();
            }
            for ev in &events {
                let t = ev.token();
                if t == RING_TOKEN {
                    continue;
                }
                if t.0 < self.listeners.len() {
                    self.accept(t.0);
                } else {
                    let i = t.0 - self.listeners.len();
                    self.guarded(i, |r| r.service(i));
                }
            }
            self.reap();
            self.blocks.submit();
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick();
            }
        }
        for i in 0..self.conns.len() {
            self.close(i, "the target is stopping");
        }
        if self.refused > 0 {
            warn!(
                reactor = self.id,
                refused = self.refused,
                "connections refused at max_connections_per_reactor ({})",
                self.max_connections
            );
        }
        if self.denied > 0 {
            warn!(
                reactor = self.id,
                refused = self.denied,
                "connections refused from sources outside xdp.allow_sources"
            );
        }
    }

    fn accept(&mut self, l: usize) {
        loop {
            match self.listeners[l].0.accept() {
                Ok((mut stream, peer)) => {
                    if !self.allow.allows(peer.ip()) {
                        // Closed at once (the stream drops), whatever interface it came
                        // in on: the XDP program guards only its own.
                        if self.denied == 0 {
                            warn!(reactor = self.id, %peer, "connection refused: source not in xdp.allow_sources (more refusals are counted at close)");
                        }
                        self.denied += 1;
                        continue;
                    }
                    if self.conns.held() >= self.max_connections {
                        // Closed at once: a storm of idle connections cannot take every
                        // descriptor and buffer, and the ones already served go on.
                        if self.refused == 0 {
                            warn!(reactor = self.id, %peer, "connection refused: max_connections_per_reactor ({}) reached (more refusals are counted at stop)", self.max_connections);
                        }
                        self.refused += 1;
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().ok().map(|a| a.ip());
                    let token = Token(self.listeners.len() + self.conns.vacant());
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!(%peer, "cannot watch a connection: {e}");
                        continue;
                    }
                    debug!(reactor = self.id, %peer, "connection accepted");
                    let q = match self.shared.engine(self.listeners[l].1, local) {
                        Ok(q) => q,
                        Err(e) => {
                            error!(%peer, "connection refused: no random bytes for its CHAP challenge: {e}");
                            let _ = self.poll.registry().deregister(&mut stream);
                            continue;
                        }
                    };
                    self.conns.insert(stream, peer, q);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors and the like: the connection waits in the backlog.
                    warn!(reactor = self.id, "accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Moves bytes between connection `i`'s socket and its engine until the socket has
    /// nothing more to read, or the engine's output is full and the socket takes no more
    /// (its writable edge calls this again). A connection whose engine holds unread
    /// input is never left waiting for an edge that will not come.
    fn service(&mut self, i: usize) {
        let now = self.now_ms();
        loop {
            let Some(c) = self.conns.live(i) else {
                return;
            };
            // Send first: output that leaves makes room for the engine to take more.
            if !flush(c) {
                return self.close(i, "send failed");
            }
            if c.q.closing() {
                if c.q.output().is_empty() {
                    self.close(
                        i,
                        "the protocol ended it (disconnect, logout, keep-alive expiry or protocol error)",
                    );
                }
                return;
            }
            if !c.unread.is_empty() {
                let n = c.q.receive(&c.unread, &self.shared.registry, now);
                c.unread.drain(..n);
                c.q.log_events(c.peer);
                self.conns.run_io(i, &mut self.blocks);
                let Some(c) = self.conns.live(i) else {
                    return;
                };
                if !c.unread.is_empty() && !flush(c) {
                    return self.close(i, "send failed");
                }
                if !c.unread.is_empty() && !c.q.output().is_empty() {
                    // The socket is full too: its writable edge resumes this.
                    return;
                }
                continue;
            }
            match c.link.read(&mut self.buf) {
                Ok(0) => return self.close(i, "the host closed the connection"),
                Ok(n) => {
                    let taken = c.q.receive(&self.buf[..n], &self.shared.registry, now);
                    if taken < n {
                        c.unread.extend_from_slice(&self.buf[taken..n]);
                    }
                    c.q.log_events(c.peer);
                    self.conns.run_io(i, &mut self.blocks);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(i, "the host closed the connection"),
            }
        }
    }

    /// Runs `f` for connection `i`; a panic (a bug) ends that connection only.
    fn guarded(&mut self, i: usize, f: impl FnOnce(&mut Self)) {
        if let Err(why) = crate::engine::catch(|| f(self)) {
            self.failed(i, &why);
        }
    }

    fn failed(&mut self, i: usize, why: &str) {
        error!(
            reactor = self.id,
            "internal error on a connection (a bug), closing it: {why}"
        );
        self.close(i, "internal error");
    }

    fn tick(&mut self) {
        let now = self.now_ms();
        for i in 0..self.conns.len() {
            self.guarded(i, |r| r.tick_one(i, now));
        }
    }

    fn tick_one(&mut self, i: usize, now: u64) {
        let Some(c) = self.conns.live(i) else {
            return;
        };
        let r = c.q.tick(now, &self.shared.registry);
        c.q.log_events(c.peer);
        if let Err(why) = r {
            self.close(i, why);
        } else if !c.unread.is_empty() {
            self.service(i);
        } else if !flush(c) {
            self.close(i, "send failed");
        }
    }

    fn close(&mut self, i: usize, why: &str) {
        let Some(c) = self.conns.live(i) else {
            return;
        };
        let registry = &self.shared.registry;
        if let Err(why) = crate::engine::catch(|| c.q.teardown(registry)) {
            error!(
                reactor = self.id,
                "tearing a connection down failed (a bug): {why}"
            );
        }
        let _ = self.poll.registry().deregister(&mut c.link);
        info!(reactor = self.id, peer = %c.peer, engine = c.q.describe(), "connection closed: {why}");
        c.dead = true;
        self.conns.release(i);
    }

    /// Completes the io_uring operations that finished and sends what they produced.
    fn reap(&mut self) {
        let mut failed = Vec::new();
        let progressed = self.conns.complete_io(&mut self.blocks, &mut failed);
        for (i, why) in failed {
            self.failed(i, &why);
        }
        for i in progressed {
            if let Some(c) = self.conns.live(i) {
                if !c.unread.is_empty() {
                    self.guarded(i, |r| r.service(i));
                } else if !flush(c) {
                    self.close(i, "send failed");
                } else if c.q.closing() && c.q.output().is_empty() {
                    self.close(i, "the protocol ended it");
                }
            }
        }
    }
}

/// Writes what the queue has to send until done or the socket is full; false on error.
fn flush(c: &mut Conn) -> bool {
    while !c.q.output().is_empty() {
        match c.link.write(c.q.output()) {
            Ok(0) => return false,
            Ok(n) => c.q.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_identity_is_stable_and_distinct() {
        assert_eq!(identity("nqn.a", 1), identity("nqn.a", 1));
        assert_ne!(identity("nqn.a", 1), identity("nqn.a", 2));
        assert_ne!(identity("nqn.a", 1), identity("nqn.b", 1));
        let u = uuid_v8(identity("nqn.a", 1));
        assert_eq!((u[6] >> 4, u[8] >> 6), (8, 0b10));
    }

    #[test]
    fn default_config_builds_one_gib_namespace() {
        let Built {
            subsystems: subs,
            targets,
            backends,
        } = build(&Config::default()).unwrap();
        assert_eq!(subs.len(), 1);
        assert_eq!(targets.len(), 1);
        assert_eq!(
            targets[0].scsi.luns().len(),
            1,
            "the namespace is also LUN 0"
        );
        assert_eq!(subs[0].namespaces[0].blocks, 2 * 1024 * 1024);
        assert_eq!(backends.len(), 1);
        assert_eq!(subs[0].serial.len(), 20);
    }
}
