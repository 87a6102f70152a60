//! Sans-I/O user-space TCP/IP for the AF_XDP path: an adapter over smoltcp.
//!
//! [`Stack`] owns a smoltcp interface and its sockets and turns them into what a storage
//! target needs: listening ports that accept any number of connections (smoltcp's sockets
//! listen once, so a few spare listeners per port are kept ready and replenished after every
//! poll), byte streams per connection, and connections that clean up after themselves. It is
//! driven by [`Stack::poll`] with the current time and a [`phy::Device`] that moves IP
//! packets; it never reads a clock or a socket, so the tests drive two stacks against each
//! other through an in-memory link.
//!
//! Why smoltcp: it is well kept, sans-I/O, and has window scaling, Reno/CUBIC, RTO per
//! RFC 6298, fast retransmit, out-of-order reassembly, zero-window probes, keep-alive and
//! TIME_WAIT. What it lacks (no SACK; a linear scan of the sockets on every poll; random
//! rather than RFC 6528 ISNs, which are at least as hard to predict) does not matter at the
//! connection counts a storage target serves per queue.
//!
//! The device works at the IP layer ([`phy::Medium::Ip`]): Ethernet framing, and learning
//! the next hop's MAC from received frames, belong to the AF_XDP device in target-user,
//! because ARP stays with the kernel that owns the interface address.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpCidr, IpEndpoint};

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
    /// Connections (including half-open ones) beyond which new SYNs are refused.
    pub max_connections: usize,
    /// Listening sockets kept ready per port: SYNs that arrive in one poll beyond this many
    /// are answered with RST (the initiator retries).
    pub backlog: usize,
    /// A connection that has not completed its handshake after this long is dropped (SYN
    /// floods).
    pub handshake_timeout_us: u64,
    /// Keep-alive probes after this much silence, so dead peers are noticed.
    pub keep_alive_us: u64,
    /// A connection whose peer does not answer (data or keep-alive) for this long is reset.
    pub timeout_us: u64,
    /// Delayed ACK; `None` acknowledges every segment at once.
    pub ack_delay_us: Option<u64>,
    /// Seeds the interface's random numbers (initial sequence numbers, ports).
    pub seed: u64,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            ports: Vec::new(),
            rx_buffer: 512 * 1024,
            tx_buffer: 512 * 1024,
            max_connections: 1024,
            backlog: 8,
            handshake_timeout_us: 5_000_000,
            keep_alive_us: 15_000_000,
            timeout_us: 45_000_000,
            // Responses carry the ACK of their request; bulk data is acknowledged every
            // second segment by smoltcp whatever the timer says.
            ack_delay_us: Some(2_000),
            seed: 0,
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
    born_us: u64,
    /// The user let go of it: it is closing and is removed once smoltcp is done with it.
    released: bool,
}

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
    now_us: u64,
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
            now_us,
        };
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

    /// Keeps `backlog` listeners per port while there is room for more connections.
    fn replenish(&mut self) {
        for port in self.config.ports.clone() {
            let have = self.listeners.iter().filter(|l| l.0 == port).count();
            for _ in have..self.config.backlog {
                if self.live() >= self.config.max_connections + self.config.backlog {
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

    /// Moves listeners that received a SYN to the connections, and frees what is finished.
    fn housekeeping(&mut self) {
        let mut i = 0;
        while i < self.listeners.len() {
            let h = self.listeners[i].1;
            let s = self.sockets.get::<tcp::Socket<'_>>(h);
            if s.is_listening() {
                i += 1;
                continue;
            }
            self.listeners.swap_remove(i);
            let open = self.conns.iter().filter(|c| c.is_some()).count();
            if open >= self.config.max_connections {
                self.sockets.get_mut::<tcp::Socket<'_>>(h).abort();
                self.conns.push(Some(Slot {
                    handle: h,
                    born_us: self.now_us,
                    released: true,
                }));
                continue;
            }
            let slot = Slot {
                handle: h,
                born_us: self.now_us,
                released: false,
            };
            match self.free.pop() {
                Some(k) => self.conns[k] = Some(slot),
                None => self.conns.push(Some(slot)),
            }
        }
        for k in 0..self.conns.len() {
            let Some(slot) = &self.conns[k] else { continue };
            let s = self.sockets.get_mut::<tcp::Socket<'_>>(slot.handle);
            match s.state() {
                tcp::State::SynReceived
                    if self.now_us.saturating_sub(slot.born_us)
                        > self.config.handshake_timeout_us =>
                {
                    s.abort();
                }
                tcp::State::Closed if slot.released => {
                    self.sockets.remove(slot.handle);
                    self.conns[k] = None;
                    self.free.push(k);
                }
                _ => {}
            }
        }
    }

    /// Connections that completed their handshake since the last call go to `accepted`.
    fn collect_established(&mut self) {
        for k in 0..self.conns.len() {
            let Some(slot) = &mut self.conns[k] else {
                continue;
            };
            if slot.released || slot.born_us == u64::MAX {
                continue;
            }
            let s = self.sockets.get::<tcp::Socket<'_>>(slot.handle);
            if matches!(s.state(), tcp::State::Listen | tcp::State::SynReceived) {
                continue;
            }
            // Handed out once: `born_us` doubles as the "already accepted" mark.
            slot.born_us = u64::MAX;
            if let (Some(local), Some(remote)) = (s.local_endpoint(), s.remote_endpoint()) {
                self.accepted.push_back(Accepted {
                    id: ConnId(k),
                    local: socket_addr(local),
                    remote: socket_addr(remote),
                });
            } else {
                // Reset before anyone saw it.
                slot.released = true;
            }
        }
    }

    /// Processes every packet the device has, sends what the connections have queued, and
    /// runs the timers. Returns whether any socket changed state (data, ACKs, connections).
    pub fn poll<D: phy::Device + ?Sized>(&mut self, now_us: u64, device: &mut D) -> bool {
        self.now_us = now_us;
        let changed = self.iface.poll(instant(now_us), device, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged;
        self.housekeeping();
        self.collect_established();
        self.replenish();
        changed
    }

    /// Microseconds until the stack's next timer (retransmission, delayed ACK, keep-alive),
    /// `None` when none is pending.
    pub fn poll_delay(&mut self, now_us: u64) -> Option<u64> {
        self.iface
            .poll_delay(instant(now_us), &self.sockets)
            .map(|d| d.total_micros())
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

    /// Hands every byte received on `id` to `f`, in order, in one or two slices (the
    /// receive buffer is a ring). Returns how many bytes were handed over.
    pub fn recv(&mut self, id: ConnId, mut f: impl FnMut(&[u8])) -> usize {
        let Some(s) = self.socket_mut(id) else {
            return 0;
        };
        let mut total = 0;
        while s.can_recv() {
            let n = s
                .recv(|buf| {
                    f(buf);
                    (buf.len(), buf.len())
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            total += n;
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
        match self.socket_mut(id) {
            Some(s) if s.may_send() => s.send_slice(data).unwrap_or(0),
            _ => 0,
        }
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
        slot.released = true;
        let h = slot.handle;
        let s = self.sockets.get_mut::<tcp::Socket<'static>>(h);
        if graceful {
            s.close();
        } else {
            s.abort();
        }
    }

    /// Connections the user holds (accepted and not released).
    pub fn connections(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|s| !s.released && s.born_us == u64::MAX)
            .count()
    }

    /// Sockets alive in smoltcp: listeners, connections, and released ones still closing.
    pub fn sockets(&self) -> usize {
        self.live()
    }
}

#[cfg(test)]
mod tests;
