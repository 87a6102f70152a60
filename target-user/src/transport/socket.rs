//! NVMe/TCP and iSCSI over kernel sockets: the socket transport of ARCHITECTURE.md.
//!
//! One reactor thread per core, each with its own epoll instance (mio), its own listening
//! socket per address (SO_REUSEPORT, so the kernel spreads new connections across
//! reactors) and the connections it accepted. A reactor never blocks: sockets are
//! non-blocking and the memory backend completes in place. Nothing is shared on the I/O
//! path; the NVMe controller registry and the iSCSI session registry (mutexes) are touched
//! only at Connect/login, CC.EN and teardown.
//!
//! Listeners come and go while the target runs (`xdp-target ctl add-listener`): each
//! reactor takes its changes from an inbox (`transport::listeners`) when its waker fires.
//! A listener's token is `LISTENER_BASE + slot` and a connection's its index, so neither
//! moves when a listener is added or removed.
//!
//! With `xdp.allow_sources` set, a connection from outside the list is closed as soon as it
//! is accepted, on every listener and whatever interface it came in on: the XDP program
//! applies the list only on the interface it is attached to.

use std::io::{self, IoSlice, Read, Write};
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
use crate::transport::listeners::{Inbox, Listeners, SocketChange};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 256 * 1024;
/// Token of the reactor's io_uring in its epoll set.
const RING_TOKEN: Token = Token(usize::MAX);
/// Token of the waker that says listener changes wait in the reactor's inbox.
const WAKER_TOKEN: Token = Token(usize::MAX - 1);
/// Listener `slot` has token `LISTENER_BASE + slot`; connections have their index, below.
const LISTENER_BASE: usize = usize::MAX / 2;

/// The socket reactors' threads, and the addresses they listen on.
pub struct Started {
    pub threads: Vec<JoinHandle<()>>,
    /// The first reactor's listeners (with the ports the kernel chose for port 0).
    pub listening: Vec<(Proto, SocketAddr)>,
}

/// Starts `n` socket reactors listening on `addrs`, each with an inbox in `changes` for
/// the listeners added and removed later.
pub fn start(
    config: &Config,
    shared: &Arc<Shared>,
    allow: &Arc<AllowList>,
    stop: &Arc<AtomicBool>,
    addrs: &[(SocketAddr, Proto)],
    n: usize,
    changes: &Listeners,
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
            listeners.push(Some(Listening {
                socket: l,
                proto,
                addr: a,
            }));
        }
        let name = format!("reactor-{r}");
        let poll = Poll::new().map_err(ServeError::Reactor)?;
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN).map_err(ServeError::Reactor)?;
        let inbox = Arc::new(Inbox::new(Some(waker)));
        changes.socket_reactor(Arc::clone(&inbox));
        let reactor = Reactor {
            core: Core {
                name: name.clone(),
                via: "",
                blocks: shared.block_runner().map_err(ServeError::Uring)?,
                conns: Conns::new(),
                shared: Arc::clone(shared),
                metrics: shared.metrics.transport(Transport::Socket),
            },
            io: Sockets { poll, listeners },
            inbox,
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

/// A non-blocking listening socket on `addr` that shares the port with the other
/// reactors' (SO_REUSEPORT).
pub(crate) fn listener(addr: SocketAddr) -> Result<TcpListener, ServeError> {
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

/// A listening socket of a reactor.
struct Listening {
    socket: TcpListener,
    proto: Proto,
    /// The address it was asked for (what a removal names).
    addr: SocketAddr,
}

/// The most pieces one `writev` sends: each NVMe/TCP read answer adds two (its data in
/// the command's buffer, then its response capsule staged with the next C2HData header),
/// so 64 carry a queue depth of 32 answers in one call, as one `write` of a flat buffer
/// did (16, four calls for that, cost the kernel 0.3 us more per 4K read in the bench).
const GATHER: usize = 64;

/// The kernel-socket half of a reactor: its epoll set and listeners (by slot; a removed
/// one leaves its slot empty for the next).
struct Sockets {
    poll: Poll,
    listeners: Vec<Option<Listening>>,
}

impl Link for Sockets {
    type Handle = TcpStream;

    /// Writes what the engine has to send until done or the socket is full: one
    /// `writev` per up to [`GATHER`] pieces, read data straight from its command's buffer.
    fn send(&mut self, c: &mut Conn<TcpStream>) -> bool {
        while c.q.output_len() > 0 {
            let mut pieces = [IoSlice::new(&[]); GATHER];
            let k = c.q.output_slices(&mut pieces);
            match c.link.write_vectored(&pieces[..k]) {
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
    /// Connections by token (token = index).
    core: Core<TcpStream>,
    io: Sockets,
    /// Listener changes from the control socket.
    inbox: Arc<Inbox<SocketChange>>,
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
        for (i, l) in self.io.listeners.iter_mut().enumerate() {
            let Some(l) = l else { continue };
            if let Err(e) = self.io.poll.registry().register(
                &mut l.socket,
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            ) {
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
                if t == WAKER_TOKEN {
                    self.listener_changes();
                } else if t.0 >= LISTENER_BASE {
                    self.accept(t.0 - LISTENER_BASE);
                } else {
                    self.service(t.0);
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

    /// Adds and removes the listeners the control socket asked for; dropping each
    /// change's sender tells it the change is made.
    fn listener_changes(&mut self) {
        let name = &self.core.name;
        for (change, _done) in self.inbox.take() {
            match change {
                SocketChange::Add(mut socket, proto, addr) => {
                    let slot = self
                        .io
                        .listeners
                        .iter()
                        .position(Option::is_none)
                        .unwrap_or(self.io.listeners.len());
                    if let Err(e) = self.io.poll.registry().register(
                        &mut socket,
                        Token(LISTENER_BASE + slot),
                        Interest::READABLE,
                    ) {
                        // The other reactors' sockets on the port take its connections.
                        warn!(reactor = name, %addr, "cannot watch an added listener: {e}");
                        continue;
                    }
                    let l = Listening {
                        socket,
                        proto,
                        addr,
                    };
                    if slot == self.io.listeners.len() {
                        self.io.listeners.push(Some(l));
                    } else {
                        self.io.listeners[slot] = Some(l);
                    }
                    debug!(reactor = name, %addr, ?proto, "listening");
                }
                SocketChange::Remove(addr) => {
                    for slot in &mut self.io.listeners {
                        if slot.as_ref().is_some_and(|l| l.addr == addr)
                            && let Some(mut l) = slot.take()
                        {
                            let _ = self.io.poll.registry().deregister(&mut l.socket);
                            debug!(reactor = name, %addr, "listener closed");
                        }
                    }
                }
            }
        }
    }

    fn accept(&mut self, l: usize) {
        let name = &self.core.name;
        let Some(proto) = self
            .io
            .listeners
            .get(l)
            .and_then(|x| x.as_ref().map(|x| x.proto))
        else {
            // Removed in this batch of events.
            return;
        };
        let counted = self.core.metrics.of(proto).clone();
        loop {
            let Some(Some(listening)) = self.io.listeners.get(l) else {
                return;
            };
            match listening.socket.accept() {
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
                    let token = Token(self.core.conns.vacant());
                    if let Err(e) = self.io.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!(%peer, "cannot watch a connection: {e}");
                        continue;
                    }
                    debug!(reactor = name, %peer, "connection accepted");
                    let q = match self.core.shared.engine(proto, local) {
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
                if !c.unread.is_empty() && c.q.output_len() > 0 {
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
