//! NVMe/TCP and iSCSI over kernel sockets: the socket transport of ARCHITECTURE.md.
//!
//! One reactor thread per core, each with its own epoll instance (mio), its own listening
//! socket per address (SO_REUSEPORT, so the kernel spreads new connections across
//! reactors) and the connections it accepted. A reactor never blocks: sockets are
//! non-blocking and the memory backend completes in place. Nothing is shared on the I/O
//! path; the NVMe controller registry and the iSCSI session registry (mutexes) are touched
//! only at Connect/login, CC.EN and teardown.
//!
//! With `xdp.allow_sources` set, a connection from outside the list is closed as soon as it
//! is accepted, on every listener and whatever interface it came in on: the XDP program
//! applies the list only on the interface it is attached to.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tracing::{debug, error, warn};

use crate::config::{AllowList, Config};
use crate::metrics::Transport;
use crate::reactor::engine::{Proto, Shared};
use crate::reactor::{Conn, Conns, Core, Link, TICK, reactor_thread};
use crate::serve::ServeError;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 256 * 1024;
/// Token of the reactor's io_uring in its epoll set.
const RING_TOKEN: Token = Token(usize::MAX);

/// The socket reactors' threads, and the addresses they listen on.
pub struct Started {
    pub threads: Vec<JoinHandle<()>>,
    /// The first reactor's listeners (with the ports the kernel chose for port 0).
    pub listening: Vec<(Proto, SocketAddr)>,
}

/// Starts `n` socket reactors listening on `addrs`.
pub fn start(
    config: &Config,
    shared: &Arc<Shared>,
    allow: &Arc<AllowList>,
    stop: &Arc<AtomicBool>,
    addrs: &[(SocketAddr, Proto)],
    n: usize,
) -> Result<Started, ServeError> {
    let mut threads = Vec::with_capacity(n);
    let mut listening = Vec::new();
    for r in 0..n {
        let mut listeners = Vec::with_capacity(addrs.len());
        for &(a, proto) in addrs {
            let l = listener(a)?;
            if r == 0 {
                listening.push((proto, l.local_addr().unwrap_or(a)));
            }
            listeners.push((l, proto));
        }
        let name = format!("reactor-{r}");
        let reactor = Reactor {
            core: Core {
                name: name.clone(),
                via: "",
                blocks: shared.block_runner().map_err(ServeError::Uring)?,
                conns: Conns::new(),
                shared: Arc::clone(shared),
                metrics: shared.metrics.transport(Transport::Socket),
            },
            io: Sockets {
                poll: Poll::new().map_err(ServeError::Reactor)?,
                listeners,
            },
            started: Instant::now(),
            buf: vec![0u8; READ_CHUNK],
            max_connections: config.max_connections_per_reactor,
            refused: 0,
            allow: Arc::clone(allow),
            denied: 0,
        };
        let stop = Arc::clone(stop);
        let t = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || reactor_thread(&name, || reactor.run(&stop)))
            .map_err(ServeError::Reactor)?;
        threads.push(t);
    }
    Ok(Started { threads, listening })
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

/// The kernel-socket half of a reactor: its epoll set and listeners.
struct Sockets {
    poll: Poll,
    listeners: Vec<(TcpListener, Proto)>,
}

impl Link for Sockets {
    type Handle = TcpStream;

    /// Writes what the engine has to send until done or the socket is full.
    fn send(&mut self, c: &mut Conn<TcpStream>) -> bool {
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

    /// The socket closes when the connection's index is freed; it leaves the epoll set now.
    fn release(&mut self, c: &mut Conn<TcpStream>, _graceful: bool) {
        let _ = self.poll.registry().deregister(&mut c.link);
    }
}

struct Reactor {
    /// Connections by token (token = listeners + index).
    core: Core<TcpStream>,
    io: Sockets,
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
        let name = self.core.name.clone();
        for (i, (l, _)) in self.io.listeners.iter_mut().enumerate() {
            if let Err(e) = self
                .io
                .poll
                .registry()
                .register(l, Token(i), Interest::READABLE)
            {
                warn!(reactor = name, "cannot watch a listener: {e}");
            }
        }
        if let Some(fd) = self.core.blocks.ring_fd()
            && let Err(e) =
                self.io
                    .poll
                    .registry()
                    .register(&mut SourceFd(&fd), RING_TOKEN, Interest::READABLE)
        {
            warn!(reactor = name, "cannot watch the io_uring: {e}");
        }
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        let mut last_event = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let timeout = if last_event.elapsed() < self.core.shared.busy_poll {
                Duration::ZERO
            } else {
                TICK
            };
            if let Err(e) = self.io.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(reactor = name, "poll failed: {e}");
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
                if t.0 < self.io.listeners.len() {
                    self.accept(t.0);
                } else {
                    self.service(t.0 - self.io.listeners.len());
                }
            }
            for i in self.core.reap(&mut self.io) {
                self.pump(i);
            }
            self.core.blocks.submit();
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let now = self.now_ms();
                for i in self.core.tick(&mut self.io, now) {
                    self.pump(i);
                }
            }
        }
        for i in 0..self.core.conns.len() {
            self.core
                .close(&mut self.io, i, "the target is stopping", false);
        }
        if self.refused > 0 {
            warn!(
                reactor = name,
                refused = self.refused,
                "connections refused at max_connections_per_reactor ({})",
                self.max_connections
            );
        }
        if self.denied > 0 {
            warn!(
                reactor = name,
                refused = self.denied,
                "connections refused from sources outside xdp.allow_sources"
            );
        }
    }

    fn accept(&mut self, l: usize) {
        let name = &self.core.name;
        let counted = self.core.metrics.of(self.io.listeners[l].1).clone();
        loop {
            match self.io.listeners[l].0.accept() {
                Ok((mut stream, peer)) => {
                    if !self.allow.allows(peer.ip()) {
                        // Closed at once (the stream drops), whatever interface it came
                        // in on: the XDP program guards only its own.
                        if self.denied == 0 {
                            warn!(reactor = name, %peer, "connection refused: source not in xdp.allow_sources (more refusals are counted at stop)");
                        }
                        self.denied += 1;
                        counted.refused_allow_list.inc();
                        continue;
                    }
                    if self.core.conns.held() >= self.max_connections {
                        // Closed at once: a storm of idle connections cannot take every
                        // descriptor and buffer, and the ones already served go on.
                        if self.refused == 0 {
                            warn!(reactor = name, %peer, "connection refused: max_connections_per_reactor ({}) reached (more refusals are counted at stop)", self.max_connections);
                        }
                        self.refused += 1;
                        counted.refused_limit.inc();
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().ok().map(|a| a.ip());
                    let token = Token(self.io.listeners.len() + self.core.conns.vacant());
                    if let Err(e) = self.io.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!(%peer, "cannot watch a connection: {e}");
                        continue;
                    }
                    debug!(reactor = name, %peer, "connection accepted");
                    let q = match self.core.shared.engine(self.io.listeners[l].1, local) {
                        Ok(q) => q,
                        Err(e) => {
                            error!(%peer, "connection refused: no random bytes for its CHAP challenge: {e}");
                            let _ = self.io.poll.registry().deregister(&mut stream);
                            continue;
                        }
                    };
                    counted.accepted();
                    self.core.conns.insert(stream, peer, q);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors and the like: the connection waits in the backlog.
                    warn!(reactor = name, "accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// What a timer or a block completion queued on connection `i` goes out; input the
    /// engine left unread is offered again first.
    fn pump(&mut self, i: usize) {
        if self
            .core
            .conns
            .live(i)
            .is_some_and(|c| !c.unread.is_empty())
        {
            self.service(i);
        } else {
            self.core.send(&mut self.io, i);
        }
    }

    /// [`Self::moves`] under a guard: a panic (a bug) ends connection `i` only.
    fn service(&mut self, i: usize) {
        if let Err(why) = crate::reactor::catch(|| self.moves(i)) {
            self.core.failed(&mut self.io, i, &why);
        }
    }

    /// Moves bytes between connection `i`'s socket and its engine until the socket has
    /// nothing more to read, or the engine's output is full and the socket takes no more
    /// (its writable edge calls this again). A connection whose engine holds unread
    /// input is never left waiting for an edge that will not come.
    fn moves(&mut self, i: usize) {
        let now = self.now_ms();
        let core = &mut self.core;
        loop {
            let Some(c) = core.conns.live(i) else {
                return;
            };
            // Send first: output that leaves makes room for the engine to take more.
            if !self.io.send(c) {
                return core.close(&mut self.io, i, "send failed", false);
            }
            if c.q.closing() {
                return core.send(&mut self.io, i);
            }
            if !c.unread.is_empty() {
                let n = c.q.receive(&c.unread, &core.shared.registry, now);
                c.unread.drain(..n);
                c.q.log_events(c.peer);
                core.conns.run_io(i, &mut core.blocks);
                let Some(c) = core.conns.live(i) else {
                    return;
                };
                if !c.unread.is_empty() && !self.io.send(c) {
                    return core.close(&mut self.io, i, "send failed", false);
                }
                if !c.unread.is_empty() && !c.q.output().is_empty() {
                    // The socket is full too: its writable edge resumes this.
                    return;
                }
                continue;
            }
            match c.link.read(&mut self.buf) {
                Ok(0) => {
                    return core.close(&mut self.io, i, "the host closed the connection", false);
                }
                Ok(n) => {
                    let taken = c.q.receive(&self.buf[..n], &core.shared.registry, now);
                    if taken < n {
                        c.unread.extend_from_slice(&self.buf[taken..n]);
                    }
                    c.q.log_events(c.peer);
                    core.conns.run_io(i, &mut core.blocks);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    return core.close(&mut self.io, i, "the host closed the connection", false);
                }
            }
        }
    }
}
