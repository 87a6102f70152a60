//! The XDP data path: storage-port frames that the XDP program redirects arrive in one
//! AF_XDP socket per rx queue; a reactor per queue runs them through the user-space TCP/IP
//! stack (target-tcp) into the same protocol engines and block I/O as the socket path.
//!
//! The kernel keeps the interface: its address, ARP, and every frame that is not for a
//! storage port. The kernel's listening sockets stay open too, so storage traffic arriving
//! on other interfaces (or on queues without a socket) is still served by the socket path.

pub mod bpffs;
pub mod netdev;
pub mod stats;
pub mod steering;
pub mod xsk;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use target_tcp::{ConnId, ConnState, Stack, StackConfig};
use tracing::{debug, error, info, warn};

use crate::config::{Config, ZeroCopy};
use crate::metrics::{QueueCounters, Transport};
use crate::reactor::engine::{Proto, Shared};
use crate::reactor::{Conn, Conns, Core, Link, TICK, reactor_thread};
use crate::serve::listen_addrs;
use crate::transport::listeners::{Inbox, Listeners, PortChange};
use steering::Steering;
use xsk::{BindMode, Xsk, XskError, XskSizes};

#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    #[error(
        "the XDP program only counts (xdp.steer = false or --count-only): nothing is redirected"
    )]
    CountOnly,
    #[error("{what} of {iface}: {source}")]
    Ioctl {
        iface: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{iface} has no IPv4 or IPv6 address for the user-space stack to answer on")]
    NoAddress { iface: String },
    #[error(
        "none of the listening ports ({listening:?}) is steered by the XDP program (xdp.ports = {steered:?})"
    )]
    NoPorts {
        listening: Vec<u16>,
        steered: Vec<u16>,
    },
    #[error(
        "AF_XDP socket on {iface} queue {queue} ({mode}): {source}{hint}",
        hint = hint(.source.errno(), .mode)
    )]
    Socket {
        iface: String,
        queue: u32,
        mode: &'static str,
        source: XskError,
    },
    #[error("registering the AF_XDP socket of queue {queue} in the XSKS map: {source}")]
    Register {
        queue: u32,
        source: aya::maps::MapError,
    },
    #[error("cannot start a reactor thread: {0}")]
    Thread(std::io::Error),
    #[error("telling the XDP program the stack's addresses: {0}")]
    Local(String),
    #[error("getrandom for the TCP sequence-number secret: {0}")]
    Random(std::io::Error),
}

/// What the driver of `iface` says it can do for AF_XDP (netlink), logged; `None` when the
/// kernel cannot say (before 6.3) or the question failed.
fn device_features(iface: &str) -> Option<netdev::NetdevFeatures> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    match netdev::query(ifindex) {
        Ok(Some(f)) => {
            info!(
                iface,
                zero_copy = f.zero_copy(),
                zero_copy_tx_checksum = f.zero_copy_tx_checksum(),
                zero_copy_max_segs = ?f.zc_max_segs,
                "the driver's AF_XDP abilities (netlink xdp-features, xsk-features)"
            );
            Some(f)
        }
        Ok(None) => {
            debug!(
                iface,
                "the kernel has no netdev netlink family (before 6.3)"
            );
            None
        }
        Err(e) => {
            debug!(iface, "asking the driver's AF_XDP abilities failed: {e}");
            None
        }
    }
}

/// Three words from the kernel's random pool: the stacks' seed and their ISN secret.
fn random_words() -> std::io::Result<[u64; 3]> {
    let mut b = [0u8; 24];
    crate::reactor::fill_random(&mut b)?;
    let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok([w(0), w(1), w(2)])
}

fn hint(errno: Option<i32>, mode: &str) -> &'static str {
    match errno {
        Some(libc::EOPNOTSUPP) if mode == "zero-copy" => {
            " (the driver has no zero-copy AF_XDP; set xdp.zero_copy = \"auto\" to use copy mode)"
        }
        Some(libc::EBUSY) => " (another AF_XDP socket is bound to this queue)",
        Some(libc::EPERM) => " (needs root: CAP_NET_RAW and CAP_BPF)",
        _ => "",
    }
}

/// An `ifreq` ioctl on `iface` through a throwaway socket of the current network namespace
/// (sysfs may show another namespace's interfaces).
fn ifreq(
    iface: &str,
    request: libc::c_ulong,
    what: &'static str,
    data: Option<*mut libc::c_void>,
) -> Result<libc::ifreq, AfXdpError> {
    let err = |source| AfXdpError::Ioctl {
        iface: iface.to_string(),
        what,
        source,
    };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG)));
    }
    for (d, &b) in req.ifr_name.iter_mut().zip(name) {
        *d = b as libc::c_char;
    }
    if let Some(p) = data {
        req.ifr_ifru.ifru_data = p.cast();
    }
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `req` is a valid ifreq for this request (and `data`, when given, points to
    // the structure the request expects, alive for the call).
    let r = unsafe { libc::ioctl(fd, request as _, &mut req) };
    let e = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(err(e));
    }
    Ok(req)
}

fn mac_of(iface: &str) -> Result<[u8; 6], AfXdpError> {
    let r = ifreq(iface, libc::SIOCGIFHWADDR, "reading the MAC address", None)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let sa = unsafe { r.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, &b) in mac.iter_mut().zip(&sa.sa_data[..6]) {
        *m = b as u8;
    }
    Ok(mac)
}

fn mtu_of(iface: &str) -> Result<usize, AfXdpError> {
    let r = ifreq(iface, libc::SIOCGIFMTU, "reading the MTU", None)?;
    // SAFETY: SIOCGIFMTU filled the mtu member of the union.
    Ok(usize::try_from(unsafe { r.ifr_ifru.ifru_mtu }).unwrap_or(1500))
}

/// Rx queues of `iface` (ethtool's channel counts; 1 where the driver does not say).
fn rx_queues(iface: &str) -> u32 {
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    // struct ethtool_channels: cmd, then max_rx, max_tx, max_other, max_combined, rx_count,
    // tx_count, other_count, combined_count.
    let mut ch = [0u32; 9];
    ch[0] = ETHTOOL_GCHANNELS;
    match ifreq(
        iface,
        libc::SIOCETHTOOL,
        "reading the channel counts",
        Some(ch.as_mut_ptr().cast()),
    ) {
        Ok(_) => ch[5].max(ch[8]).max(1),
        Err(_) => 1,
    }
}

/// The addresses (with prefix length) the kernel gave `iface`.
fn interface_addrs(iface: &str) -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that freeifaddrs releases below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` walks the list getifaddrs returned, which stays valid until freed.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names;
        // the netmask (when present) has the same family.
        unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    let len = if ifa.ifa_netmask.is_null() {
                        32
                    } else {
                        let m = &*ifa.ifa_netmask.cast::<libc::sockaddr_in>();
                        u32::from_be(m.sin_addr.s_addr).count_ones() as u8
                    };
                    out.push((IpAddr::from(a.sin_addr.s_addr.to_ne_bytes()), len));
                }
                libc::AF_INET6 => {
                    let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    let len = if ifa.ifa_netmask.is_null() {
                        128
                    } else {
                        let m = &*ifa.ifa_netmask.cast::<libc::sockaddr_in6>();
                        m.sin6_addr
                            .s6_addr
                            .iter()
                            .map(|b| b.count_ones())
                            .sum::<u32>() as u8
                    };
                    out.push((IpAddr::from(a.sin6_addr.s6_addr), len));
                }
                _ => {}
            }
        }
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Binds an AF_XDP socket on every rx queue of the steering's interface, registers each
/// in the XSKS map and starts a reactor per queue.
pub fn start(
    config: &Config,
    steering: &mut Steering,
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
    changes: &Listeners,
) -> Result<Vec<JoinHandle<()>>, AfXdpError> {
    if !config.xdp.steer {
        return Err(AfXdpError::CountOnly);
    }
    let iface = steering.iface().to_string();
    let mac = mac_of(&iface)?;
    let mtu = mtu_of(&iface)?;
    let addrs = interface_addrs(&iface);
    if addrs.is_empty() {
        return Err(AfXdpError::NoAddress { iface });
    }
    let mut ports = HashMap::new();
    for (a, proto) in listen_addrs(config) {
        if config.xdp.ports.contains(&a.port()) {
            ports.insert(a.port(), proto);
        }
    }
    if ports.is_empty() {
        return Err(AfXdpError::NoPorts {
            listening: listen_addrs(config).iter().map(|a| a.0.port()).collect(),
            steered: config.xdp.ports.clone(),
        });
    }
    let features = device_features(&iface);
    let sizes = XskSizes {
        frames: config.xdp.umem_frames,
        frame_size: 4096,
        ring: config.xdp.ring_size,
        tx_checksum: config.xdp.tx_checksum,
        zero_copy_tx_checksum: features.is_some_and(|f| f.zero_copy_tx_checksum()),
    };
    let queues = rx_queues(&iface);
    let mut sockets = Vec::new();
    for q in 0..queues {
        let modes: &[BindMode] = match config.xdp.zero_copy {
            ZeroCopy::Auto => &[BindMode::ZeroCopy, BindMode::Copy],
            ZeroCopy::Require => &[BindMode::ZeroCopy],
            ZeroCopy::Off => &[BindMode::Copy],
        };
        let mut last = None;
        for &mode in modes {
            match Xsk::open(&iface, q, sizes, mode, mac, mtu) {
                Ok(x) => {
                    last = None;
                    sockets.push((q, x));
                    break;
                }
                Err(source) => {
                    debug!(
                        iface,
                        queue = q,
                        mode = mode.name(),
                        "AF_XDP bind failed: {source}"
                    );
                    last = Some(AfXdpError::Socket {
                        iface: iface.clone(),
                        queue: q,
                        mode: mode.name(),
                        source,
                    });
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
    }
    let local: Vec<IpAddr> = addrs.iter().map(|&(a, _)| a).collect();
    steering
        .set_local_addrs(&local)
        .map_err(|e| AfXdpError::Local(e.to_string()))?;
    for (q, x) in &sockets {
        steering
            .register_socket(*q, x.fd())
            .map_err(|source| AfXdpError::Register { queue: *q, source })?;
    }
    let mut threads = Vec::new();
    let mut inboxes = Vec::new();
    let [seed, isn0, isn1] = random_words().map_err(AfXdpError::Random)?;
    for (q, mut xsk) in sockets {
        let stack = Stack::new(
            StackConfig {
                addrs: addrs.clone(),
                ports: ports.keys().copied().collect(),
                seed: seed ^ u64::from(q).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                isn_secret: [isn0, isn1],
                max_connections: config.max_connections_per_reactor,
                ..StackConfig::default()
            },
            &mut xsk,
            0,
        );
        xsk.set_local_addrs(stack.addrs());
        info!(
            iface,
            queue = q,
            mode = xsk.mode().name(),
            mtu = xsk.mtu(),
            multi_buffer = xsk.multi_buffer(),
            checksum_offload = xsk.checksum_offload(),
            addrs = ?stack.addrs(),
            ports = ?ports,
            "AF_XDP socket bound: the user-space TCP/IP stack serves the storage ports on this queue"
        );
        let name = format!("xdp-q{q}");
        let reactor = XdpReactor {
            queue: q,
            core: Core {
                name: name.clone(),
                via: " (AF_XDP)",
                blocks: shared.block_runner().map_err(AfXdpError::Thread)?,
                conns: Conns::new(),
                shared: Arc::clone(shared),
                metrics: shared.metrics.transport(Transport::Xdp),
            },
            refused_seen: vec![0; stack.refused().len()],
            active: Active::default(),
            io: UserStack { xsk, stack },
            ports: ports.clone(),
            inbox: Arc::new(Inbox::new(None)),
            started: Instant::now(),
            published: shared.metrics.afxdp_queue(q),
        };
        inboxes.push(Arc::clone(&reactor.inbox));
        let stop = Arc::clone(stop);
        threads.push(
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || reactor_thread(&name, || reactor.run(&stop)))
                .map_err(AfXdpError::Thread)?,
        );
    }
    // Only once every reactor runs: a failed start leaves no inbox nobody reads.
    for i in inboxes {
        changes.xdp_reactor(i);
    }
    match steering.storage_ports() {
        Ok(map) => changes.steering(map),
        Err(e) => warn!("ports cannot be steered at run time (ctl add-listener --steer): {e}"),
    }
    Ok(threads)
}

/// The user-space half of an AF_XDP reactor: the socket and the TCP/IP stack over it.
struct UserStack {
    xsk: Xsk,
    stack: Stack,
}

impl Link for UserStack {
    type Handle = ConnId;

    /// Queues what the engine has to send into the connection's TCP send buffer (the
    /// segments leave on the next poll); what does not fit waits in the engine.
    fn send(&mut self, c: &mut Conn<ConnId>) -> bool {
        while !c.q.output().is_empty() {
            let n = self.stack.send(c.link, c.q.output());
            if n == 0 {
                break;
            }
            c.q.consume_output(n);
        }
        self.stack.state(c.link) != ConnState::Closed
    }

    fn release(&mut self, c: &mut Conn<ConnId>, graceful: bool) {
        self.stack.release(c.link, graceful);
    }
}

struct XdpReactor {
    queue: u32,
    /// Connections; `link` is the stack's id for the connection.
    core: Core<ConnId>,
    io: UserStack,
    ports: HashMap<u16, Proto>,
    /// Ports added and removed from the control socket (`transport::listeners`).
    inbox: Arc<Inbox<PortChange>>,
    started: Instant,
    /// Where the socket's counters are published for the metrics.
    published: Arc<QueueCounters>,
    /// The stack's refusals per port already added to the metrics (`Stack::refused` order).
    refused_seen: Vec<u64>,
    active: Active,
}

/// Which connections a loop looks at: those the stack says something happened to, those
/// just accepted and those that left input unread, never every connection (a thousand
/// idle connections would otherwise cost every loop a thousand visits).
#[derive(Default)]
struct Active {
    /// The reactor's index of each stack connection id.
    by_link: HashMap<ConnId, usize>,
    /// From [`target_tcp::Stack::take_ready`].
    ready: Vec<ConnId>,
    /// This loop's visits.
    visit: Vec<usize>,
    /// Visited on the next loop too: just accepted, or input left in the stack because the
    /// engine's output was full (it takes more once its output drains, which no segment
    /// may announce).
    again: Vec<usize>,
}

impl XdpReactor {
    /// Publishes the socket's and the stack's counters and adds the stack's new refusals to
    /// the metrics.
    fn publish(&mut self) {
        self.published.publish(
            &self.io.xsk.stats(),
            self.io.xsk.kernel_stats(),
            self.io.stack.retransmits(),
        );
        for (&(port, n), seen) in self.io.stack.refused().iter().zip(&mut self.refused_seen) {
            if n > *seen {
                if let Some(&p) = self.ports.get(&port) {
                    self.core.metrics.of(p).refused_limit.inc_by(n - *seen);
                }
                *seen = n;
            }
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut last_tick = Instant::now();
        let mut last_work = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = self.now_us();
            self.port_changes();
            let mut work = self.io.xsk.pull() > 0;
            self.settle_contested();
            // Ingress only: the ACKs of what arrived wait for the answers below.
            work |= self.io.stack.poll_ingress(now, &mut self.io.xsk);
            while let Some(a) = self.io.stack.accept() {
                self.accept(a);
                work = true;
            }
            work |= self.service_active();
            let progressed = self.core.reap(&mut self.io);
            work |= !progressed.is_empty();
            for i in progressed {
                self.core.send(&mut self.io, i);
            }
            self.core.blocks.submit();
            self.io.stack.poll(now, &mut self.io.xsk);
            self.io.xsk.flush();
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let now_ms = self.now_us() / 1000;
                for i in self.core.tick(&mut self.io, now_ms) {
                    self.core.send(&mut self.io, i);
                }
                self.publish();
            }
            if work || self.io.xsk.busy() {
                last_work = Instant::now();
            } else if last_work.elapsed() >= self.core.shared.busy_poll {
                self.sleep();
            }
        }
        for i in 0..self.core.conns.len() {
            self.core
                .close(&mut self.io, i, "the target is stopping", false);
        }
        self.io.stack.poll(self.now_us(), &mut self.io.xsk);
        self.io.xsk.flush();
        self.publish();
        let s = self.io.xsk.stats();
        info!(
            queue = self.queue,
            rx = s.rx_packets,
            tx = s.tx_packets,
            tx_no_frame = s.tx_no_frame,
            tx_no_neighbour = s.tx_no_neighbour,
            rx_multi = s.rx_multi,
            tx_multi = s.tx_multi,
            rx_too_long = s.rx_too_long,
            rx_foreign = s.rx_foreign,
            wakeups = s.wakeups,
            kernel = ?self.io.xsk.kernel_stats(),
            "AF_XDP reactor stopped"
        );
    }

    /// Starts or stops accepting on the ports the control socket asked for (connections
    /// already up on a removed port go on); dropping each change's sender acknowledges it.
    fn port_changes(&mut self) {
        for (change, _done) in self.inbox.take() {
            match change {
                PortChange::Add(port, proto) => {
                    self.ports.insert(port, proto);
                    self.io.stack.add_port(port);
                    self.refused_seen.resize(self.io.stack.refused().len(), 0);
                    info!(
                        queue = self.queue,
                        port,
                        ?proto,
                        "AF_XDP: accepting on port {port}"
                    );
                }
                PortChange::Remove(port) => {
                    self.ports.remove(&port);
                    self.io.stack.remove_port(port);
                    info!(
                        queue = self.queue,
                        port, "AF_XDP: no longer accepting on port {port}"
                    );
                }
            }
        }
    }

    /// SYNs that named a known connection with another MAC: they re-teach it only when the
    /// stack holds no live connection on that four-tuple (a peer whose next hop changed
    /// between two connections); a forged SYN for a live connection changes nothing.
    fn settle_contested(&mut self) {
        for (flow, mac) in self.io.xsk.take_contested() {
            let peer = std::net::SocketAddr::new(flow.peer, flow.peer_port);
            if self.io.stack.holds(peer, flow.port) {
                debug!(queue = self.queue, %peer, "a SYN for a live connection from another MAC: ignored");
            } else {
                self.io.xsk.relearn(flow, mac);
            }
        }
    }

    /// Sleeps until a frame arrives, an I/O completes, a TCP timer is due or the tick.
    fn sleep(&mut self) {
        let delay = self
            .io
            .stack
            .poll_delay(self.now_us())
            .map_or(TICK, Duration::from_micros)
            .min(TICK);
        let mut fds = vec![crate::reactor::readable(self.io.xsk.fd())];
        if let Some(fd) = self.core.blocks.ring_fd() {
            fds.push(crate::reactor::readable(fd));
        }
        let ms = i32::try_from(delay.as_millis()).unwrap_or(100);
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }

    fn accept(&mut self, a: target_tcp::Accepted) {
        let Some(&proto) = self.ports.get(&a.local.port()) else {
            self.io.stack.release(a.id, false);
            return;
        };
        let q = match self.core.shared.engine(proto, Some(a.local.ip())) {
            Ok(q) => q,
            Err(e) => {
                error!(peer = %a.remote, "connection refused: no random bytes for its CHAP challenge: {e}");
                self.io.stack.release(a.id, false);
                return;
            }
        };
        self.core.metrics.of(proto).accepted();
        let i = self.core.conns.insert(a.id, a.remote, q);
        self.active.by_link.insert(a.id, i);
        // Data may have come with the handshake's last ACK.
        self.active.again.push(i);
        debug!(queue = self.queue, peer = %a.remote, ?proto, "connection accepted (AF_XDP)");
    }

    /// Services the connections something happened to (see [`Active`]); true if anything
    /// moved.
    fn service_active(&mut self) -> bool {
        let a = &mut self.active;
        self.io.stack.take_ready(&mut a.ready);
        a.visit.append(&mut a.again);
        for id in a.ready.drain(..) {
            if let Some(&i) = a.by_link.get(&id) {
                a.visit.push(i);
            }
        }
        a.visit.sort_unstable();
        a.visit.dedup();
        let visit = std::mem::take(&mut self.active.visit);
        let mut work = false;
        for &i in &visit {
            work |= self.service(i);
            if let Some(c) = self.core.conns.live(i)
                && self.io.stack.recv_queue(c.link) > 0
            {
                self.active.again.push(i);
            }
        }
        self.active.visit = visit;
        self.active.visit.clear();
        work
    }

    /// [`Self::moves`] under a guard: a panic (a bug) ends connection `i` only.
    fn service(&mut self, i: usize) -> bool {
        match crate::reactor::catch(|| self.moves(i)) {
            Ok(moved) => moved,
            Err(why) => {
                self.core.failed(&mut self.io, i, &why);
                true
            }
        }
    }

    /// Moves bytes between connection `i`'s stream and its engine; true if anything moved.
    fn moves(&mut self, i: usize) -> bool {
        let now_ms = self.now_us() / 1000;
        let core = &mut self.core;
        let Some(c) = core.conns.live(i) else {
            return false;
        };
        let registry = &core.shared.registry;
        // What the engine leaves (its output is full) stays in the stack's receive
        // buffer, so the host's window closes until the output drains.
        let got = self
            .io
            .stack
            .recv(c.link, |b| c.q.receive(b, registry, now_ms));
        if got > 0 {
            c.q.log_events(c.peer);
            core.conns.run_io(i, &mut core.blocks);
        }
        let Some(c) = core.conns.live(i) else {
            return got > 0;
        };
        let before = c.q.output_len();
        self.io.send(c);
        let sent = before - c.q.output_len();
        match self.io.stack.state(c.link) {
            ConnState::Closed => core.close(
                &mut self.io,
                i,
                "the connection was reset or timed out",
                false,
            ),
            ConnState::PeerClosed if c.q.output_len() == 0 => {
                core.close(&mut self.io, i, "the host closed the connection", true);
            }
            _ if c.q.closing() && c.q.output_len() == 0 => core.close(
                &mut self.io,
                i,
                "the protocol ended it (disconnect, logout, keep-alive expiry or protocol error)",
                true,
            ),
            _ => {}
        }
        got > 0 || sent > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_mtu_and_mac_are_read() {
        assert_eq!(mac_of("lo").unwrap(), [0; 6]);
        assert!(mtu_of("lo").unwrap() >= 1500);
        assert_eq!(rx_queues("lo"), 1);
        assert!(matches!(
            mtu_of("no-such-if0"),
            Err(AfXdpError::Ioctl { .. })
        ));
    }

    #[test]
    fn loopback_has_addresses() {
        let a = interface_addrs("lo");
        assert!(a.contains(&(IpAddr::from([127, 0, 0, 1]), 8)), "{a:?}");
    }
}
