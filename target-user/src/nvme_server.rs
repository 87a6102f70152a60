//! NVMe/TCP over kernel sockets: the socket transport of ARCHITECTURE.md.
//!
//! One reactor thread per core, each with its own epoll instance (mio), its own listening
//! socket per address (SO_REUSEPORT, so the kernel spreads new connections across
//! reactors) and the connections it accepted. A reactor never blocks: sockets are
//! non-blocking and the memory backend completes in place. Nothing is shared on the I/O
//! path; the controller registry (a mutex) is touched only at Connect, CC.EN and teardown.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use target_proto::nvme::controller::{ALL_BACKENDS, IoOutcome};
use target_proto::nvme::subsystem::{Namespace, Port, Registry, Subsystem};
use target_proto::nvme_tcp::icreq::ControllerParams;
use target_proto::nvme_tcp::queue::NvmeTcpQueue;
use tracing::{debug, info, warn};

use crate::backend::MemoryBackend;
use crate::config::{BackendKind, Config};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 256 * 1024;
/// How often keep-alive timers and dead controllers are checked.
const TICK: Duration = Duration::from_millis(100);
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
}

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

/// Subsystems as the controller sees them, and the backends their namespaces point at.
fn build(config: &Config) -> (Vec<Subsystem>, Vec<Arc<MemoryBackend>>) {
    let mut backends = Vec::new();
    let mut subsystems = Vec::new();
    for s in &config.subsystems {
        let mut namespaces = Vec::new();
        for n in &s.namespaces {
            let backend = match n.backend {
                BackendKind::Memory => MemoryBackend::new(n.size.0),
            };
            let id = u32::try_from(backends.len()).expect("fewer than 2^32 namespaces");
            backends.push(Arc::new(backend));
            let ident = identity(&s.nqn, n.nsid);
            namespaces.push(Namespace {
                nsid: n.nsid,
                block_size: n.block_size,
                blocks: n.size.0 / u64::from(n.block_size),
                nguid: ident,
                eui64: ident[..8].try_into().expect("8 bytes"),
                uuid: uuid_v8(ident),
                volatile_write_cache: false,
                deallocate: true,
                backend: id,
            });
        }
        namespaces.sort_by_key(|n| n.nsid);
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
    (subsystems, backends)
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

/// Binds every listener for every reactor, then starts the reactors.
pub fn start(config: &Config) -> Result<Server, ServeError> {
    let (subsystems, backends) = build(config);
    let mut registry = Registry::new(subsystems);
    let addrs: Vec<SocketAddr> = config
        .nvme
        .listen
        .iter()
        .map(|l| l.parse().expect("validated by Config::validate"))
        .collect();
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
    let params = ControllerParams {
        allow_header_digest: config.nvme.header_digest,
        allow_data_digest: config.nvme.data_digest,
        cpda: 0,
        max_h2c_data: MAX_H2C_DATA,
    };
    let n = reactor_count(config);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(n);
    let mut listening = Vec::new();
    for r in 0..n {
        let mut listeners = Vec::with_capacity(addrs.len());
        for &a in &addrs {
            let l = listener(a)?;
            if r == 0 {
                listening.push(l.local_addr().unwrap_or(a));
            }
            listeners.push(l);
        }
        let poll = Poll::new().map_err(ServeError::Reactor)?;
        let reactor = Reactor {
            id: r,
            poll,
            listeners,
            conns: Vec::new(),
            free: Vec::new(),
            registry: Arc::clone(&registry),
            backends: backends.clone(),
            params,
            started: Instant::now(),
            buf: vec![0u8; READ_CHUNK],
            busy_poll: std::env::var("XDPT_BUSY_POLL_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(BUSY_POLL, Duration::from_micros),
        };
        let stop = Arc::clone(&stop);
        let t = std::thread::Builder::new()
            .name(format!("reactor-{r}"))
            .spawn(move || reactor.run(&stop))
            .map_err(ServeError::Reactor)?;
        threads.push(t);
    }
    info!(reactors = n, listen = ?listening, "NVMe/TCP serving over kernel sockets");
    Ok(Server { stop, threads })
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    q: NvmeTcpQueue,
}

struct Reactor {
    id: usize,
    poll: Poll,
    listeners: Vec<TcpListener>,
    /// Connections by token (token = listeners + index); `None` where one closed.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    registry: Arc<Mutex<Registry>>,
    backends: Vec<Arc<MemoryBackend>>,
    params: ControllerParams,
    started: Instant,
    buf: Vec<u8>,
    busy_poll: Duration,
}

impl Reactor {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(mut self, stop: &AtomicBool) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Err(e) = self
                .poll
                .registry()
                .register(l, Token(i), Interest::READABLE)
            {
                warn!(reactor = self.id, "cannot watch a listener: {e}");
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        let mut last_event = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let timeout = if last_event.elapsed() < self.busy_poll {
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
                let t = ev.token().0;
                if t < self.listeners.len() {
                    self.accept(t);
                } else {
                    self.service(t - self.listeners.len());
                }
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick();
            }
        }
        for i in 0..self.conns.len() {
            self.close(i, "the target is stopping");
        }
    }

    fn accept(&mut self, l: usize) {
        loop {
            match self.listeners[l].accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().ok().map(|a| a.ip());
                    let i = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    let token = Token(self.listeners.len() + i);
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!(%peer, "cannot watch a connection: {e}");
                        self.free.push(i);
                        continue;
                    }
                    debug!(reactor = self.id, %peer, "connection accepted");
                    self.conns[i] = Some(Conn {
                        stream,
                        peer,
                        q: NvmeTcpQueue::new(self.params, local),
                    });
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

    fn service(&mut self, i: usize) {
        let now = self.now_ms();
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let mut eof = false;
        loop {
            match c.stream.read(&mut self.buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    c.q.receive(&self.buf[..n], &self.registry, now);
                    run_io(&mut c.q, &self.backends);
                    if c.q.closing() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let flushed = flush(c);
        if eof {
            self.close(i, "the host closed the connection");
        } else if !flushed {
            self.close(i, "send failed");
        } else if c.q.closing() && c.q.output().is_empty() {
            self.close(
                i,
                "the queue ended (disconnect, keep-alive expiry or protocol error)",
            );
        }
    }

    fn tick(&mut self) {
        let now = self.now_ms();
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            if !c.q.tick(now, &self.registry) {
                let why = if c.q.controller().qid() == Some(0) {
                    "keep-alive timeout expired"
                } else {
                    "its controller is gone"
                };
                self.close(i, why);
            }
        }
    }

    fn close(&mut self, i: usize, why: &str) {
        let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) else {
            return;
        };
        c.q.teardown(&self.registry);
        let _ = self.poll.registry().deregister(&mut c.stream);
        info!(reactor = self.id, peer = %c.peer, qid = ?c.q.controller().qid(), "connection closed: {why}");
        self.free.push(i);
    }
}

/// Runs queued block operations; the memory backend completes them in place.
fn run_io(q: &mut NvmeTcpQueue, backends: &[Arc<MemoryBackend>]) {
    while let Some((slot, io)) = q.next_io() {
        let outcome = if io.backend == ALL_BACKENDS {
            // Flush of every namespace: memory has nothing to flush.
            IoOutcome::Ok
        } else {
            match backends.get(io.backend as usize) {
                Some(b) => b.execute(&io.op, q.buffer_mut(slot)),
                None => IoOutcome::WriteError,
            }
        };
        q.io_done(slot, outcome);
    }
}

/// Writes what the queue has to send until done or the socket is full; false on error.
fn flush(c: &mut Conn) -> bool {
    while !c.q.output().is_empty() {
        match c.stream.write(c.q.output()) {
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
        let (subs, backends) = build(&Config::default());
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].namespaces[0].blocks, 2 * 1024 * 1024);
        assert_eq!(backends.len(), 1);
        assert_eq!(subs[0].serial.len(), 20);
    }
}
