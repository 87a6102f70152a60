//! Sans-I/O user-space TCP/IP for the AF_XDP path: an adapter over smoltcp.
//!
//! [`Stack`] owns a smoltcp interface and its sockets and turns them into what a storage
//! target needs: listening ports that accept any number of connections (smoltcp's sockets
//! listen once, so a few spare listeners per port are kept ready and replenished after every
//! poll), byte streams per connection, and connections that clean up after themselves. It is
//! driven by [`Stack::poll`] with the current time and a [`phy::Device`] that moves IP
//! packets; it never reads a clock or a socket, so the tests drive it against smoltcp
//! initiators through an in-memory link with loss, reordering and corruption, on a simulated
//! clock.
//!
//! Why smoltcp: it is well kept, sans-I/O, and has window scaling, Reno (the
//! `socket-tcp-reno` feature: without it smoltcp has no congestion control at all), RTO per
//! RFC 6298, fast retransmit, out-of-order reassembly, zero-window probes, keep-alive and
//! TIME_WAIT. What it lacked for a target that holds many idle connections, a visit to every
//! socket on every poll, is patched (third_party/README.md): a poll here visits the
//! connections a segment arrived for, that the user wrote to, read from or let go, and whose
//! timer is due ([`Stack::take_ready`] tells the user which), and looks at every connection
//! only every 100 ms for the stack's own timeouts. No SACK.
//!
//! The device works at the IP layer ([`phy::Medium::Ip`]): Ethernet framing, and learning
//! the next hop's MAC from received frames, belong to the AF_XDP device in target-user,
//! because ARP stays with the kernel that owns the interface address.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    HardwareAddress, IPV6_HEADER_LEN, IpAddress, IpCidr, IpEndpoint, IpProtocol, Ipv4Packet,
    Ipv6Packet, TcpPacket,
};

/// The device interface the stack is driven through (smoltcp's).
pub use smoltcp::phy;
/// smoltcp's clock type, which [`phy::Device`] methods take.
pub use smoltcp::time;

/// How the stack is set up.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Addresses (with prefix length) the stack answers for: those of the interface.
    pub addrs: Vec<(IpAddr, u8)>,
    /// TCP ports it accepts connections on.
    pub ports: Vec<u16>,
    /// Receive buffer per connection; above 64 KiB the window is scaled.
    pub rx_buffer: usize,
    /// Send buffer per connection.
    pub tx_buffer: usize,
    /// Connections (including half-open ones) beyond which new SYNs are refused, unless a
    /// half-open one can give way.
    pub max_connections: usize,
    /// Half-open connections (SYN received, handshake not completed) kept at most: beyond,
    /// the oldest gives way to the newest. Every socket holds its buffers, so this bounds
    /// what a SYN flood can take.
    pub max_half_open: usize,
    /// Released connections kept in TIME-WAIT at most: beyond, the oldest is dropped (a late
    /// segment for it then gets RST), so connection storms cannot pile up buffers for the
    /// ten seconds TIME-WAIT lasts.
    pub max_time_wait: usize,
    /// Listening sockets kept ready per port: SYNs that arrive in one poll beyond this many
    /// are answered with RST (the initiator retries).
    pub backlog: usize,
    /// A connection that has not completed its handshake after this long is dropped (SYN
    /// floods).
    pub handshake_timeout_us: u64,
    /// Keep-alive probes after this much silence, so dead peers are noticed.
    pub keep_alive_us: u64,
    /// A connection whose peer does not answer (data or keep-alive) for this long is reset;
    /// so is a released one that has not finished closing this long after its release.
    pub timeout_us: u64,
    /// Delayed ACK; `None` acknowledges every segment at once.
    pub ack_delay_us: Option<u64>,
    /// Seeds the interface's random numbers (IP identifiers, ports). Not secret.
    pub seed: u64,
    /// The secret key of initial sequence numbers (RFC 6528: a 4 µs clock plus SipHash-2-4 of
    /// the four-tuple under this key). Give it 128 random bits from the operating system.
    pub isn_secret: [u64; 2],
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            ports: Vec::new(),
            rx_buffer: 512 * 1024,
            tx_buffer: 512 * 1024,
            max_connections: 1024,
            max_half_open: 256,
            max_time_wait: 64,
            backlog: 8,
            handshake_timeout_us: 5_000_000,
            keep_alive_us: 15_000_000,
            timeout_us: 45_000_000,
            // No delayed ACK: an initiator that writes a PDU in two pieces with Nagle on
            // (libiscsi does) would wait for this ACK on every command. ACKs still coalesce:
            // one per connection per poll, after every segment that poll received.
            ack_delay_us: None,
            seed: 0,
            isn_secret: [0; 2],
        }
    }
}

/// A connection's index, valid from [`Stack::accept`] until [`Stack::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// A newly accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: ConnId,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Where a connection stands, as its user sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Data flows both ways.
    Open,
    /// The peer sent FIN and everything before it has been read: nothing more will come.
    PeerClosed,
    /// Reset, timed out or fully closed: nothing can be sent any more.
    Closed,
}

struct Slot {
    handle: SocketHandle,
    /// When its SYN arrived; once released, when it was released.
    since_us: u64,
    /// Handed out by [`Stack::accept`].
    accepted: bool,
    /// The user let go of it (or it was refused or reset before being accepted): it is
    /// closing and is removed once smoltcp is done with it.
    released: bool,
    /// Its (local, remote) endpoints, once known: its key in `Stack::by_tuple`.
    tuple: Option<Tuple>,
    /// When its next timer is due (its key in `Stack::timers`), if it has one.
    deadline: Option<u64>,
    /// In `Stack::touched`: it is visited on the next poll.
    touched: bool,
    /// In `Stack::ready`: the user is told it may have something to do.
    ready: bool,
}

/// A connection's (local, remote) endpoints.
type Tuple = (IpEndpoint, IpEndpoint);

/// How often every connection is looked at for the timeouts the stack keeps itself
/// (handshake, closing): between two sweeps a poll visits only the connections something
/// happened to.
const SWEEP_US: u64 = 100_000;

/// The user-space TCP/IP stack of one queue.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    config: StackConfig,
    /// Listening sockets by port.
    listeners: Vec<(u16, SocketHandle)>,
    conns: Vec<Option<Slot>>,
    free: Vec<usize>,
    accepted: VecDeque<Accepted>,
    /// Connections by (local, remote): what [`Guard`] finds a received segment's connection
    /// with.
    by_tuple: BTreeMap<Tuple, usize>,
    /// Connections something happened to (a segment arrived, the user sent, read or let go,
    /// a timer is due) since the last egress: only these are visited, so a poll costs what
    /// the active connections need however many are idle.
    touched: Vec<usize>,
    /// What [`Guard`] saw arrive for which connection, as received (may repeat).
    arrived: Vec<usize>,
    /// Connections whose timer is due at the time, by time.
    timers: BTreeSet<(u64, usize)>,
    /// Connections the user should look at (see [`Stack::take_ready`]).
    ready: Vec<ConnId>,
    /// Scratch: the sockets of one egress.
    handles: Vec<SocketHandle>,
    last_sweep_us: u64,
    /// Sockets the last egress visited.
    visited: usize,
    now_us: u64,
    /// Connections refused at `max_connections`, per port (one entry per configured port,
    /// so counting never allocates).
    refused: Vec<(u16, u64)>,
    /// Retransmissions (after a timeout, fast) of the sockets already removed.
    retired_retransmits: (u64, u64),
}

fn instant(us: u64) -> Instant {
    Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
}

fn duration(us: u64) -> Duration {
    Duration::from_micros(us)
}

fn socket_addr(e: IpEndpoint) -> SocketAddr {
    SocketAddr::new(e.addr.into(), e.port)
}

impl Stack {
    /// A stack answering for `config.addrs` and listening on `config.ports`.
    pub fn new<D: phy::Device + ?Sized>(config: StackConfig, device: &mut D, now_us: u64) -> Self {
        let mut c = Config::new(HardwareAddress::Ip);
        c.random_seed = config.seed;
        c.isn_secret = config.isn_secret;
        let mut iface = Interface::new(c, device, instant(now_us));
        iface.update_ip_addrs(|addrs| {
            for &(a, len) in &config.addrs {
                // More addresses than the interface holds: the rest are not served.
                let _ = addrs.push(IpCidr::new(a.into(), len));
            }
        });
        let mut stack = Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            config,
            listeners: Vec::new(),
            conns: Vec::new(),
            free: Vec::new(),
            accepted: VecDeque::new(),
            by_tuple: BTreeMap::new(),
            touched: Vec::new(),
            arrived: Vec::new(),
            timers: BTreeSet::new(),
            ready: Vec::new(),
            handles: Vec::new(),
            last_sweep_us: now_us,
            visited: 0,
            now_us,
            refused: Vec::new(),
            retired_retransmits: (0, 0),
        };
        stack.refused = stack.config.ports.iter().map(|&p| (p, 0)).collect();
        stack.replenish();
        stack
    }

    /// Addresses the stack answers for (those the interface could hold).
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.iface
            .ip_addrs()
            .iter()
            .map(|c| c.address().into())
            .collect()
    }

    fn live(&self) -> usize {
        self.sockets.iter().count()
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; self.config.rx_buffer]),
            tcp::SocketBuffer::new(vec![0u8; self.config.tx_buffer]),
        );
        // Storage PDUs are complete messages: send them now, never wait for an ACK.
        s.set_nagle_enabled(false);
        s.set_ack_delay(self.config.ack_delay_us.map(duration));
        s.set_keep_alive(Some(duration(self.config.keep_alive_us)));
        s.set_timeout(Some(duration(self.config.timeout_us)));
        s
    }

    /// Ports it accepts connections on.
    pub fn ports(&self) -> &[u16] {
        &self.config.ports
    }

    /// Starts accepting connections on `port` too (nothing changes if it already does).
    pub fn add_port(&mut self, port: u16) {
        if self.config.ports.contains(&port) {
            return;
        }
        self.config.ports.push(port);
        if !self.refused.iter().any(|r| r.0 == port) {
            self.refused.push((port, 0));
        }
        self.replenish();
    }

    /// Stops accepting connections on `port`: its listening sockets go, so a SYN for it is
    /// answered with RST from now on. Connections already accepted, and handshakes already
    /// begun (the user refuses them at accept if it wants), stay. Its refusal count stays.
    pub fn remove_port(&mut self, port: u16) {
        self.config.ports.retain(|&p| p != port);
        // Listeners that received a SYN since the last poll become connections first.
        self.housekeeping();
        let mut i = 0;
        while i < self.listeners.len() {
            if self.listeners[i].0 == port {
                let (_, h) = self.listeners.swap_remove(i);
                self.remove_socket(h);
            } else {
                i += 1;
            }
        }
    }

    /// Keeps `backlog` listeners per port while there is room for more connections.
    fn replenish(&mut self) {
        for port in self.config.ports.clone() {
            let have = self.listeners.iter().filter(|l| l.0 == port).count();
            for _ in have..self.config.backlog {
                // Sockets that are closing are bounded apart (TIME-WAIT, RSTs not yet sent):
                // the limit is on the listeners and the connections that count.
                let held = self.conns.iter().flatten().filter(|c| !c.released).count();
                if held + self.listeners.len()
                    >= self.config.max_connections + self.config.backlog * self.config.ports.len()
                {
                    return;
                }
                let mut s = self.new_socket();
                if s.listen(port).is_err() {
                    return;
                }
                let h = self.sockets.add(s);
                self.listeners.push((port, h));
            }
        }
    }

    /// Puts a new connection in a free slot; its index.
    fn insert(&mut self, slot: Slot) -> usize {
        match self.free.pop() {
            Some(k) => {
                self.conns[k] = Some(slot);
                k
            }
            None => {
                self.conns.push(Some(slot));
                self.conns.len() - 1
            }
        }
    }

    /// Frees connection `k`: its socket, its index entry and its timer.
    fn remove_conn(&mut self, k: usize) {
        let Some(slot) = self.conns.get_mut(k).and_then(Option::take) else {
            return;
        };
        if let Some(t) = slot.tuple
            && self.by_tuple.get(&t) == Some(&k)
        {
            self.by_tuple.remove(&t);
        }
        if let Some(d) = slot.deadline {
            self.timers.remove(&(d, k));
        }
        self.remove_socket(slot.handle);
        self.free.push(k);
    }

    /// Connection `k` is visited on the next poll (and egress).
    fn touch(&mut self, k: usize) {
        if let Some(Some(slot)) = self.conns.get_mut(k)
            && !slot.touched
        {
            slot.touched = true;
            self.touched.push(k);
        }
    }

    /// The user is told to look at connection `k` (if it holds it).
    fn make_ready(&mut self, k: usize) {
        if let Some(Some(slot)) = self.conns.get_mut(k)
            && slot.accepted
            && !slot.released
            && !slot.ready
        {
            slot.ready = true;
            self.ready.push(ConnId(k));
        }
    }

    /// Sockets the last [`Stack::poll`] visited to send (the connections something happened
    /// to): what a poll costs grows with these, not with the connections held.
    pub fn visited(&self) -> usize {
        self.visited
    }

    /// Connections that may have something for their user since the last call: data or
    /// room to send arrived, the peer closed or reset, a timer ended it. Only these need
    /// [`Stack::recv`], [`Stack::send`] and [`Stack::state`] (and the ones just accepted).
    pub fn take_ready(&mut self, into: &mut Vec<ConnId>) {
        for id in self.ready.drain(..) {
            if let Some(Some(slot)) = self.conns.get_mut(id.0) {
                slot.ready = false;
            }
            into.push(id);
        }
    }

    /// Half-open connections: SYN received, handshake not completed, not given up.
    fn half_open(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|c| !c.released && !c.accepted)
            .filter(|c| {
                self.sockets.get::<tcp::Socket<'_>>(c.handle).state() == tcp::State::SynReceived
            })
            .count()
    }

    /// Drops the oldest released connections in TIME-WAIT beyond `max_time_wait`.
    fn trim_time_wait(&mut self) {
        let mut waiting: Vec<(u64, usize)> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(k, c)| {
                let c = c.as_ref()?;
                let s = self.sockets.get::<tcp::Socket<'_>>(c.handle);
                (c.released && s.state() == tcp::State::TimeWait).then_some((c.since_us, k))
            })
            .collect();
        if waiting.len() <= self.config.max_time_wait {
            return;
        }
        waiting.sort_unstable();
        let excess = waiting.len() - self.config.max_time_wait;
        for &(_, k) in &waiting[..excess] {
            self.remove_conn(k);
        }
    }

    /// Removes a socket, keeping its retransmission counts.
    fn remove_socket(&mut self, handle: SocketHandle) {
        let (rto, fast) = self.sockets.get::<tcp::Socket<'_>>(handle).retransmits();
        self.retired_retransmits.0 += rto;
        self.retired_retransmits.1 += fast;
        self.sockets.remove(handle);
    }

    /// Segments retransmitted so far, by every socket this stack has had: after a
    /// retransmission timeout, and fast retransmits (three duplicate ACKs).
    pub fn retransmits(&self) -> (u64, u64) {
        let mut total = self.retired_retransmits;
        for (_, socket) in self.sockets.iter() {
            // Every socket of the stack is a TCP one (smoltcp is built with TCP alone).
            let smoltcp::socket::Socket::Tcp(s) = socket;
            let (rto, fast) = s.retransmits();
            total.0 += rto;
            total.1 += fast;
        }
        total
    }

    /// Aborts the half-open connection (SYN received, handshake not completed) that has
    /// waited longest; false if there is none.
    fn evict_oldest_half_open(&mut self) -> bool {
        let oldest = self
            .conns
            .iter_mut()
            .flatten()
            .filter(|c| !c.released && !c.accepted)
            .filter(|c| {
                self.sockets.get::<tcp::Socket<'_>>(c.handle).state() == tcp::State::SynReceived
            })
            .min_by_key(|c| c.since_us);
        let Some(slot) = oldest else {
            return false;
        };
        slot.released = true;
        let h = slot.handle;
        self.sockets.get_mut::<tcp::Socket<'_>>(h).abort();
        if let Some(k) = self
            .conns
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.handle == h))
        {
            self.touch(k);
        }
        true
    }

    /// Moves listeners that received a SYN to the connections, and looks at every
    /// connection (timeouts, what is finished).
    fn housekeeping(&mut self) {
        self.listeners_to_conns();
        for k in 0..self.conns.len() {
            self.tend(k);
        }
    }

    /// Listeners that received a SYN become connections (or are refused at the limit).
    fn listeners_to_conns(&mut self) {
        let mut i = 0;
        while i < self.listeners.len() {
            let h = self.listeners[i].1;
            if self.sockets.get::<tcp::Socket<'_>>(h).is_listening() {
                i += 1;
                continue;
            }
            let (port, _) = self.listeners.swap_remove(i);
            // Connections the user holds or may yet be given; not those closing (TIME-WAIT
            // and the like), which `replenish` bounds with the other sockets.
            let open = self.conns.iter().flatten().filter(|c| !c.released).count();
            if self.half_open() >= self.config.max_half_open {
                self.evict_oldest_half_open();
            }
            let mut refuse = open >= self.config.max_connections;
            if refuse && self.evict_oldest_half_open() {
                // Full of handshakes nobody finishes (a SYN flood): the oldest gives way, so
                // a real initiator, which completes its handshake within a round trip, still
                // gets in, and established connections are never touched.
                refuse = false;
            }
            let s = self.sockets.get_mut::<tcp::Socket<'_>>(h);
            if refuse {
                // Its SYN-ACK may be out already (or, refused during `poll_ingress`, never
                // is): RST follows on the next poll either way.
                s.abort();
                if let Some(r) = self.refused.iter_mut().find(|r| r.0 == port) {
                    r.1 += 1;
                }
            }
            let tuple = s.local_endpoint().zip(s.remote_endpoint());
            let k = self.insert(Slot {
                handle: h,
                since_us: self.now_us,
                accepted: false,
                released: refuse,
                tuple,
                deadline: None,
                touched: false,
                ready: false,
            });
            if let Some(t) = tuple {
                self.by_tuple.insert(t, k);
            }
            self.touch(k);
        }
    }

    /// Frees connection `k` when it is finished, ends it when it timed out.
    fn tend(&mut self, k: usize) {
        let Some(Some(slot)) = self.conns.get_mut(k) else {
            return;
        };
        let s = self.sockets.get_mut::<tcp::Socket<'_>>(slot.handle);
        let age = self.now_us.saturating_sub(slot.since_us);
        match s.state() {
            // Reset by its peer during the handshake, smoltcp made it a listener again,
            // one more than the backlog: `replenish` already replaced it.
            tcp::State::Listen if !slot.accepted => self.remove_conn(k),
            tcp::State::SynReceived if age > self.config.handshake_timeout_us => {
                s.abort();
                slot.released = true;
                self.touch(k);
            }
            // smoltcp forgets the endpoints once the RST of an abort is out (at once when
            // there is none to send): only then may the socket go.
            tcp::State::Closed if slot.released && s.remote_endpoint().is_none() => {
                self.remove_conn(k);
            }
            // Still the user's, or its RST not out yet.
            tcp::State::Closed => {}
            // TIME-WAIT ends by itself.
            tcp::State::TimeWait => {}
            _ if slot.released => {
                // Nobody reads it any more: what arrives is dropped, so that a full
                // receive window does not keep the peer from sending the rest and its
                // FIN.
                while s.recv(|b| (b.len(), b.len())).is_ok_and(|n| n > 0) {}
                // A peer that acknowledged the FIN but never closes its side would keep
                // the socket in FIN-WAIT-2 for ever.
                if age > self.config.timeout_us {
                    s.abort();
                    self.touch(k);
                }
            }
            _ => {}
        }
    }

    /// Connections that completed their handshake since the last call go to `accepted`.
    fn collect_established(&mut self) {
        for k in 0..self.conns.len() {
            self.establish(k);
        }
    }

    /// Connection `k` goes to `accepted` if it completed its handshake.
    fn establish(&mut self, k: usize) {
        {
            let Some(Some(slot)) = self.conns.get_mut(k) else {
                return;
            };
            if slot.released || slot.accepted {
                return;
            }
            let s = self.sockets.get::<tcp::Socket<'_>>(slot.handle);
            match (s.state(), s.local_endpoint(), s.remote_endpoint()) {
                (tcp::State::Listen | tcp::State::SynReceived, ..) => {}
                // Synchronized (the peer may have sent data and FIN with its ACK already).
                (tcp::State::Established | tcp::State::CloseWait, Some(local), Some(remote)) => {
                    slot.accepted = true;
                    self.accepted.push_back(Accepted {
                        id: ConnId(k),
                        local: socket_addr(local),
                        remote: socket_addr(remote),
                    });
                }
                // Reset or timed out before anyone saw it.
                _ => slot.released = true,
            }
        }
    }

    /// Processes every packet the device has, sends what the connections have queued, and
    /// runs the timers. Returns whether any socket changed state (data, ACKs, connections).
    pub fn poll<D: phy::Device + ?Sized>(&mut self, now_us: u64, device: &mut D) -> bool {
        self.poll_with(now_us, device, true)
    }

    /// Like [`Stack::poll`] but sends nothing the connections have queued, ACKs included:
    /// only what ingress answers by itself (RST to a stray segment). A reactor calls it first,
    /// lets the protocol engines answer what arrived, then calls [`Stack::poll`], so that the
    /// ACK of a request rides on its response instead of going out alone a moment earlier
    /// (a 4 KiB read at MTU 9000 is then one frame instead of two).
    pub fn poll_ingress<D: phy::Device + ?Sized>(&mut self, now_us: u64, device: &mut D) -> bool {
        self.poll_with(now_us, device, false)
    }

    fn poll_with<D: phy::Device + ?Sized>(
        &mut self,
        now_us: u64,
        device: &mut D,
        egress: bool,
    ) -> bool {
        self.now_us = now_us;
        let now = instant(now_us);
        let mut changed = false;
        {
            let mut device = Guard {
                inner: &mut *device,
                by_tuple: &self.by_tuple,
                arrived: &mut self.arrived,
            };
            loop {
                match self
                    .iface
                    .poll_ingress_single(now, &mut device, &mut self.sockets)
                {
                    PollIngressSingleResult::None => break,
                    PollIngressSingleResult::PacketProcessed => {}
                    PollIngressSingleResult::SocketStateChanged => changed = true,
                }
            }
        }
        let mut arrived = core::mem::take(&mut self.arrived);
        for &k in &arrived {
            self.touch(k);
            self.make_ready(k);
        }
        arrived.clear();
        self.arrived = arrived;
        self.listeners_to_conns();
        if egress {
            // Timers that are due: their sockets are visited like the touched ones.
            while let Some(&(d, k)) = self.timers.first() {
                if d > now_us {
                    break;
                }
                self.timers.pop_first();
                if let Some(Some(slot)) = self.conns.get_mut(k) {
                    slot.deadline = None;
                }
                self.touch(k);
                self.make_ready(k);
            }
            changed |= self.egress(now, device);
        }
        let mut touched = core::mem::take(&mut self.touched);
        let mut time_wait = false;
        for &k in &touched {
            self.tend(k);
            self.establish(k);
            if let Some(Some(slot)) = self.conns.get(k) {
                time_wait |= slot.released
                    && self.sockets.get::<tcp::Socket<'_>>(slot.handle).state()
                        == tcp::State::TimeWait;
            }
        }
        if egress {
            // Visited: their next timers.
            for &k in &touched {
                let Some(Some(slot)) = self.conns.get_mut(k) else {
                    continue;
                };
                slot.touched = false;
                let next = self
                    .iface
                    .socket_poll_at(now, &self.sockets, slot.handle)
                    .map(|t| u64::try_from(t.total_micros()).unwrap_or(0));
                if next != slot.deadline {
                    if let Some(d) = slot.deadline {
                        self.timers.remove(&(d, k));
                    }
                    if let Some(d) = next {
                        self.timers.insert((d, k));
                    }
                    slot.deadline = next;
                }
            }
            touched.clear();
        }
        // Entries of `touched` that another part of this poll added stay for the next.
        touched.append(&mut self.touched);
        self.touched = touched;
        if time_wait {
            self.trim_time_wait();
        }
        if now_us.saturating_sub(self.last_sweep_us) >= SWEEP_US {
            self.last_sweep_us = now_us;
            self.housekeeping();
            self.trim_time_wait();
            self.collect_established();
        }
        self.replenish();
        changed
    }

    /// Sends what the touched connections have to send (one segment per socket per round,
    /// as smoltcp dispatches, until none has more or the device is full).
    fn egress<D: phy::Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> bool {
        self.handles.clear();
        for &k in &self.touched {
            if let Some(Some(slot)) = self.conns.get(k) {
                self.handles.push(slot.handle);
            }
        }
        self.visited = self.handles.len();
        let mut changed = false;
        while self
            .iface
            .poll_egress_sockets(now, device, &mut self.sockets, &self.handles)
            == PollResult::SocketStateChanged
        {
            changed = true;
        }
        changed
    }

    /// Microseconds until the stack's next timer (retransmission, delayed ACK, keep-alive),
    /// `None` when none is pending.
    pub fn poll_delay(&mut self, now_us: u64) -> Option<u64> {
        if !self.touched.is_empty() {
            return Some(0);
        }
        self.timers.first().map(|&(d, _)| d.saturating_sub(now_us))
    }

    /// The next connection that completed its handshake.
    pub fn accept(&mut self) -> Option<Accepted> {
        self.accepted.pop_front()
    }

    fn socket(&self, id: ConnId) -> Option<&tcp::Socket<'static>> {
        let slot = self.conns.get(id.0)?.as_ref()?;
        Some(self.sockets.get::<tcp::Socket<'static>>(slot.handle))
    }

    fn socket_mut(&mut self, id: ConnId) -> Option<&mut tcp::Socket<'static>> {
        let slot = self.conns.get(id.0)?.as_ref()?;
        Some(self.sockets.get_mut::<tcp::Socket<'static>>(slot.handle))
    }

    /// Hands the bytes received on `id` to `f`, in order, in one or two slices (the
    /// receive buffer is a ring); `f` returns how many it took, and what it leaves stays
    /// in the buffer (so the window the peer sees closes: back-pressure). Returns how many
    /// bytes were taken.
    pub fn recv(&mut self, id: ConnId, f: impl FnMut(&[u8]) -> usize) -> usize {
        let n = self.recv_inner(id, f);
        if n > 0 {
            // The window it opened may need announcing.
            self.touch(id.0);
        }
        n
    }

    fn recv_inner(&mut self, id: ConnId, mut f: impl FnMut(&[u8]) -> usize) -> usize {
        let Some(s) = self.socket_mut(id) else {
            return 0;
        };
        let mut total = 0;
        while s.can_recv() {
            let mut all = false;
            let n = s
                .recv(|buf| {
                    let n = f(buf).min(buf.len());
                    all = n == buf.len();
                    (n, n)
                })
                .unwrap_or(0);
            total += n;
            if n == 0 || !all {
                break;
            }
        }
        total
    }

    /// Bytes waiting to be read on `id`.
    pub fn recv_queue(&self, id: ConnId) -> usize {
        self.socket(id).map_or(0, tcp::Socket::recv_queue)
    }

    /// Queues as much of `data` as the send buffer takes; returns how much. The segments go
    /// out on the next [`Self::poll`].
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> usize {
        let n = match self.socket_mut(id) {
            Some(s) if s.may_send() => s.send_slice(data).unwrap_or(0),
            _ => 0,
        };
        if n > 0 {
            self.touch(id.0);
        }
        n
    }

    /// Bytes queued for sending and not yet acknowledged.
    pub fn send_queue(&self, id: ConnId) -> usize {
        self.socket(id).map_or(0, tcp::Socket::send_queue)
    }

    /// Where connection `id` stands.
    pub fn state(&self, id: ConnId) -> ConnState {
        let Some(s) = self.socket(id) else {
            return ConnState::Closed;
        };
        if !s.is_open() || (!s.may_send() && !s.may_recv()) {
            ConnState::Closed
        } else if !s.may_recv() && !s.can_recv() {
            ConnState::PeerClosed
        } else {
            ConnState::Open
        }
    }

    /// The user is done with `id`: what is queued is still sent, then FIN (`graceful`) or at
    /// once RST. The id must not be used again; the socket is freed when smoltcp is done.
    pub fn release(&mut self, id: ConnId, graceful: bool) {
        let Some(Some(slot)) = self.conns.get_mut(id.0) else {
            return;
        };
        if slot.released {
            return;
        }
        slot.released = true;
        slot.since_us = self.now_us;
        let h = slot.handle;
        let s = self.sockets.get_mut::<tcp::Socket<'static>>(h);
        if graceful {
            s.close();
        } else {
            s.abort();
        }
        self.touch(id.0);
    }

    /// Whether a connection from `peer` to our `port` is handshaking or established (not
    /// closed, not in TIME-WAIT). The AF_XDP device asks before letting a SYN re-teach the
    /// next hop of that four-tuple: a live connection keeps its own.
    pub fn holds(&self, peer: SocketAddr, port: u16) -> bool {
        self.conns.iter().flatten().any(|slot| {
            let s = self.sockets.get::<tcp::Socket<'static>>(slot.handle);
            let live = !matches!(
                s.state(),
                tcp::State::Closed | tcp::State::Listen | tcp::State::TimeWait
            );
            live && s.local_endpoint().is_some_and(|l| l.port == port)
                && s.remote_endpoint().is_some_and(|r| socket_addr(r) == peer)
        })
    }

    /// Connections the user holds (accepted and not released).
    pub fn connections(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|s| s.accepted && !s.released)
            .count()
    }

    /// Connections refused at `max_connections` since the stack started, per listening port
    /// (for the metrics; the user cannot see them otherwise: they are never accepted).
    pub fn refused(&self) -> &[(u16, u64)] {
        &self.refused
    }

    /// Sockets alive in smoltcp: listeners, connections, and released ones still closing.
    pub fn sockets(&self) -> usize {
        self.live()
    }
}

/// The device as smoltcp sees it: segments without ACK (SYNs) of connections that already
/// have a socket are hidden.
///
/// smoltcp hands a segment to the first socket, in slot order, that accepts it, and a
/// listener accepts any SYN. A listener put in a slot freed after a connection's first SYN
/// would take its retransmitted SYN (its SYN-ACK was lost) and answer with a SYN-ACK of
/// another sequence number; when the initiator completes the handshake of the first, the
/// other socket, earlier in slot order, takes its ACK and resets it. The connection's own
/// socket ignores such segments (everything after a SYN must carry an ACK) and retransmits
/// its SYN-ACK, so hiding them changes nothing else.
struct Guard<'a, D: ?Sized> {
    inner: &'a mut D,
    by_tuple: &'a BTreeMap<Tuple, usize>,
    /// The connections segments arrived for, in order (may repeat).
    arrived: &'a mut Vec<usize>,
}

impl<D: phy::Device + ?Sized> phy::Device for Guard<'_, D> {
    type RxToken<'b>
        = GuardRx<'b, D::RxToken<'b>>
    where
        Self: 'b;
    type TxToken<'b>
        = D::TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (rx, tx) = self.inner.receive(timestamp)?;
        let rx = GuardRx {
            inner: rx,
            by_tuple: self.by_tuple,
            arrived: &mut *self.arrived,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.inner.transmit(timestamp)
    }

    fn capabilities(&self) -> phy::DeviceCapabilities {
        self.inner.capabilities()
    }
}

struct GuardRx<'a, R> {
    inner: R,
    by_tuple: &'a BTreeMap<Tuple, usize>,
    arrived: &'a mut Vec<usize>,
}

impl<R: phy::RxToken> phy::RxToken for GuardRx<'_, R> {
    fn consume<T, F>(self, f: F) -> T
    where
        F: FnOnce(&[u8]) -> T,
    {
        let (by_tuple, arrived) = (self.by_tuple, self.arrived);
        self.inner.consume(|packet| {
            let Some((tuple, syn)) = segment_of(packet) else {
                return f(packet);
            };
            match by_tuple.get(&tuple) {
                // smoltcp skips empty frames.
                Some(_) if syn => f(&[]),
                Some(&k) => {
                    arrived.push(k);
                    f(packet)
                }
                None => f(packet),
            }
        })
    }

    fn meta(&self) -> phy::PacketMeta {
        self.inner.meta()
    }
}

/// The (local, remote) endpoints of a TCP segment in `packet`, and whether it is one
/// without ACK or RST (a SYN).
fn segment_of(packet: &[u8]) -> Option<(Tuple, bool)> {
    let (src, dst, segment): (IpAddress, IpAddress, Option<&[u8]>) =
        match packet.first().map(|b| b >> 4) {
            Some(4) => {
                let ip = Ipv4Packet::new_checked(packet).ok()?;
                if ip.next_header() != IpProtocol::Tcp {
                    return None;
                }
                let range = usize::from(ip.header_len())..usize::from(ip.total_len());
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    packet.get(range),
                )
            }
            Some(6) => {
                let ip = Ipv6Packet::new_checked(packet).ok()?;
                if ip.next_header() != IpProtocol::Tcp {
                    return None;
                }
                let range = IPV6_HEADER_LEN..IPV6_HEADER_LEN + usize::from(ip.payload_len());
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    packet.get(range),
                )
            }
            _ => return None,
        };
    let tcp = TcpPacket::new_checked(segment?).ok()?;
    let local = IpEndpoint::new(dst, tcp.dst_port());
    let remote = IpEndpoint::new(src, tcp.src_port());
    Some(((local, remote), !tcp.ack() && !tcp.rst()))
}

pub mod checksum;
pub mod memory;

#[cfg(test)]
mod tests;
