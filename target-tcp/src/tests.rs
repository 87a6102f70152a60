//! The stack against smoltcp clients over an in-memory IP link, on a simulated clock.
//!
//! The target side is a [`Stack`]; the initiators are plain smoltcp sockets on an interface
//! of their own (a `Stack` only listens). Packets move between the two devices once per
//! [`Net::step`], through a [`Pipe`] per direction that can drop, reorder, duplicate and
//! corrupt them from a seeded xorshift generator, so every run is the same run. Time is a
//! microsecond counter: a step lasts one link delay when packets moved, otherwise it jumps
//! to the next timer either side has.

extern crate std;

use std::boxed::Box;
use std::collections::VecDeque;
use std::vec;
use std::vec::Vec;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpProtocol, IpRepr, Ipv4Packet, Ipv6Packet, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::{Accepted, ConnId, ConnState, Stack, StackConfig};

const PORT: u16 = 3260;
/// One-way delay of the link: the length of a step in which packets moved.
const LINK_DELAY_US: u64 = 50;
/// The longest a step lasts when neither side has a timer.
const IDLE_STEP_US: u64 = 100_000;
const SECOND: u64 = 1_000_000;

// ------------------------------------------------------------------------------------------
// The link.

use crate::memory::MemoryLink as Link;

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// `len` pseudo-random bytes, different for every seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&xorshift(&mut s).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What the fault model does to a direction, each in parts per 10 000 packets.
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    drop: u32,
    /// Chance that a packet swaps places with the next one of the same step.
    reorder: u32,
    duplicate: u32,
    /// Chance that one byte of the TCP segment is changed (the checksum must catch it).
    corrupt: u32,
}

#[derive(Debug, Default)]
struct Stats {
    sent: u64,
    dropped: u64,
    reordered: u64,
    duplicated: u64,
    corrupted: u64,
}

/// Drops chosen packets (by their parsed TCP segment).
type DropIf = Box<dyn FnMut(&Seg) -> bool>;

/// One direction of the link.
struct Pipe {
    faults: Faults,
    rng: u64,
    stats: Stats,
    /// Nothing gets through: the peer on the sending side has vanished, or the link is cut.
    blocked: bool,
    drop_if: Option<DropIf>,
    /// Every packet sent (before the faults), with the time it was sent.
    log: Option<Vec<(u64, Vec<u8>)>>,
}

impl Pipe {
    fn new(seed: u64) -> Self {
        Self {
            faults: Faults::default(),
            rng: seed | 1,
            stats: Stats::default(),
            blocked: false,
            drop_if: None,
            log: None,
        }
    }

    fn chance(&mut self, per_10k: u32) -> bool {
        per_10k > 0 && xorshift(&mut self.rng) % 10_000 < u64::from(per_10k)
    }

    /// Moves what `from` transmitted to what `to` receives. Returns how many packets arrive.
    fn carry(
        &mut self,
        now: u64,
        from: &mut VecDeque<Vec<u8>>,
        to: &mut VecDeque<Vec<u8>>,
    ) -> usize {
        let mut batch = Vec::new();
        while let Some(mut p) = from.pop_front() {
            self.stats.sent += 1;
            if let Some(log) = &mut self.log {
                log.push((now, p.clone()));
            }
            let chosen = match (&mut self.drop_if, parse(&p)) {
                (Some(f), Some(seg)) => f(&seg),
                _ => false,
            };
            if self.blocked || chosen || self.chance(self.faults.drop) {
                self.stats.dropped += 1;
                continue;
            }
            if self.chance(self.faults.corrupt) {
                let at = ip_header_len(&p);
                let r = xorshift(&mut self.rng);
                let i = at + (r % (p.len() - at) as u64) as usize;
                // Never zero: the byte really changes.
                p[i] ^= 1 + (r >> 32) as u8 % 255;
                self.stats.corrupted += 1;
            }
            if self.chance(self.faults.duplicate) {
                self.stats.duplicated += 1;
                batch.push(p.clone());
            }
            batch.push(p);
        }
        for i in 1..batch.len() {
            if self.chance(self.faults.reorder) {
                batch.swap(i - 1, i);
                self.stats.reordered += 1;
            }
        }
        let n = batch.len();
        to.extend(batch);
        n
    }

    fn segs(&self) -> Vec<(u64, Seg)> {
        let log = self.log.as_ref().expect("capture() was not called");
        log.iter()
            .filter_map(|(t, p)| Some((*t, parse(p)?)))
            .collect()
    }
}

fn ip_header_len(p: &[u8]) -> usize {
    if p[0] >> 4 == 4 {
        usize::from(p[0] & 0xf) * 4
    } else {
        40
    }
}

/// A TCP segment as seen on the wire.
#[derive(Clone, Copy, Debug)]
struct Seg {
    src: SocketAddr,
    dst: SocketAddr,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    seq: u32,
    ack_no: u32,
    window: u16,
    mss: Option<u16>,
    ws: Option<u8>,
    len: usize,
}

fn parse(p: &[u8]) -> Option<Seg> {
    let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match p.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(p).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let hl = usize::from(ip.header_len());
            let end = usize::from(ip.total_len());
            (ip.src_addr().into(), ip.dst_addr().into(), &p[hl..end])
        }
        6 => {
            let ip = Ipv6Packet::new_checked(p).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let end = 40 + usize::from(ip.payload_len());
            (ip.src_addr().into(), ip.dst_addr().into(), &p[40..end])
        }
        _ => return None,
    };
    let t = TcpPacket::new_checked(tcp).ok()?;
    let opts = t.options_summary().ok()?;
    Some(Seg {
        src: SocketAddr::new(src, t.src_port()),
        dst: SocketAddr::new(dst, t.dst_port()),
        syn: t.syn(),
        ack: t.ack(),
        fin: t.fin(),
        rst: t.rst(),
        seq: t.seq_number().0 as u32,
        ack_no: t.ack_number().0 as u32,
        window: t.window_len(),
        mss: opts.max_segment_size,
        ws: opts.window_scale,
        len: t.payload().len(),
    })
}

/// A TCP segment with a correct IPv4 or IPv6 header and checksums.
fn raw_segment(
    src: SocketAddr,
    dst: SocketAddr,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    window_scale: Option<u8>,
    payload: &[u8],
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64_000,
        window_scale,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = IpRepr::new(
        src.ip().into(),
        dst.ip().into(),
        IpProtocol::Tcp,
        tcp.buffer_len(),
        64,
    );
    let caps = ChecksumCapabilities::default();
    let mut buf = vec![0u8; ip.buffer_len()];
    ip.emit(&mut buf[..], &caps);
    let hl = ip.header_len();
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut buf[hl..]),
        &ip.src_addr(),
        &ip.dst_addr(),
        &caps,
    );
    buf
}

// ------------------------------------------------------------------------------------------
// The two ends.

/// The target (a `Stack`) and the initiators (smoltcp sockets) on either end of the link.
struct Net {
    now: u64,
    stack: Stack,
    sdev: Link,
    iface: Interface,
    sockets: SocketSet<'static>,
    cdev: Link,
    /// Initiators to target.
    c2s: Pipe,
    /// Target to initiators.
    s2c: Pipe,
    server: IpAddr,
    client: IpAddr,
    /// Listening sockets the stack keeps: its socket count when no connection exists.
    baseline: usize,
}

fn addresses(v6: bool) -> (IpAddr, IpAddr, u8) {
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
            64,
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            24,
        )
    }
}

fn instant(us: u64) -> Instant {
    Instant::from_micros(us as i64)
}

impl Net {
    fn new(v6: bool, mtu: usize, tune: impl FnOnce(&mut StackConfig)) -> Self {
        let (server, client, prefix) = addresses(v6);
        let mut config = StackConfig {
            addrs: vec![(server, prefix)],
            ports: vec![PORT],
            seed: 7,
            ..StackConfig::default()
        };
        tune(&mut config);
        let baseline = config.ports.len() * config.backlog;
        let mut sdev = Link::new(mtu);
        let stack = Stack::new(config, &mut sdev, 0);
        let mut cdev = Link::new(mtu);
        let mut c = Config::new(HardwareAddress::Ip);
        c.random_seed = 99;
        let mut iface = Interface::new(c, &mut cdev, instant(0));
        iface.update_ip_addrs(|a| a.push(IpCidr::new(client.into(), prefix)).unwrap());
        let net = Self {
            now: 0,
            stack,
            sdev,
            iface,
            sockets: SocketSet::new(Vec::new()),
            cdev,
            c2s: Pipe::new(0x1234_5678),
            s2c: Pipe::new(0x8765_4321),
            server,
            client,
            baseline,
        };
        assert_eq!(net.stack.sockets(), baseline, "listeners at start");
        net
    }

    fn faults(&mut self, c2s: Faults, s2c: Faults) {
        self.c2s.faults = c2s;
        self.s2c.faults = s2c;
    }

    /// Records every packet from now on, both ways.
    fn capture(&mut self) {
        self.c2s.log = Some(Vec::new());
        self.s2c.log = Some(Vec::new());
    }

    fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server, PORT)
    }

    /// A new initiator socket connecting from `local_port`.
    fn connect(&mut self, local_port: u16, buffer: usize) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        let h = self.sockets.add(s);
        self.reconnect(h, local_port);
        h
    }

    fn reconnect(&mut self, h: SocketHandle, local_port: u16) {
        let remote = (IpAddress::from(self.server), PORT);
        let s = self.sockets.get_mut::<tcp::Socket<'static>>(h);
        s.connect(self.iface.context(), remote, local_port).unwrap();
    }

    fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(h)
    }

    /// Both sides process what they received and send; the link carries it.
    fn step(&mut self) {
        self.stack.poll(self.now, &mut self.sdev);
        self.iface
            .poll(instant(self.now), &mut self.cdev, &mut self.sockets);
        let moved = self
            .s2c
            .carry(self.now, &mut self.sdev.tx, &mut self.cdev.rx)
            + self
                .c2s
                .carry(self.now, &mut self.cdev.tx, &mut self.sdev.rx);
        let dt = if moved > 0 {
            LINK_DELAY_US
        } else {
            let server = self.stack.poll_delay(self.now);
            let client = self
                .iface
                .poll_delay(instant(self.now), &self.sockets)
                .map(|d| d.total_micros());
            [server, client]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(IDLE_STEP_US)
                .clamp(LINK_DELAY_US, IDLE_STEP_US)
        };
        self.now += dt;
    }

    /// Steps, running `app` after each step, until it returns true; fails after `limit_us`
    /// of simulated time.
    fn run(&mut self, limit_us: u64, mut app: impl FnMut(&mut Net) -> bool) {
        let deadline = self.now + limit_us;
        loop {
            self.step();
            if app(self) {
                return;
            }
            assert!(
                self.now <= deadline,
                "not done after {limit_us} µs of simulated time (now {} µs)",
                self.now
            );
        }
    }

    /// Steps for `us` of simulated time, running `app` after each step.
    fn run_for(&mut self, us: u64, mut app: impl FnMut(&mut Net)) {
        let end = self.now + us;
        while self.now < end {
            self.step();
            app(self);
        }
    }
}

/// The target's application: echoes every byte back on the connection it came from.
#[derive(Default)]
struct Echo {
    conns: Vec<EchoConn>,
}

struct EchoConn {
    acc: Accepted,
    pending: Vec<u8>,
    received: usize,
    released: bool,
}

impl EchoConn {
    /// Reads what arrived and sends back what fits.
    fn echo(&mut self, stack: &mut Stack) {
        let pending = &mut self.pending;
        self.received += stack.recv(self.acc.id, |b| {
            pending.extend_from_slice(b);
            b.len()
        });
        if !self.pending.is_empty() {
            let n = stack.send(self.acc.id, &self.pending);
            self.pending.drain(..n);
        }
    }
}

impl Echo {
    fn serve(&mut self, stack: &mut Stack) {
        self.serve_accepts(stack);
        for c in self.conns.iter_mut().filter(|c| !c.released) {
            c.echo(stack);
        }
    }

    /// Like [`Self::serve`], but looks only at the connections just accepted and those
    /// [`Stack::take_ready`] names, as the XDP reactor does.
    fn serve_ready(&mut self, stack: &mut Stack) {
        let first_new = self.conns.len();
        self.serve_accepts(stack);
        let mut ready = Vec::new();
        stack.take_ready(&mut ready);
        for (i, c) in self.conns.iter_mut().enumerate() {
            if !c.released && (i >= first_new || ready.contains(&c.acc.id)) {
                c.echo(stack);
            }
        }
    }

    fn serve_accepts(&mut self, stack: &mut Stack) {
        while let Some(acc) = stack.accept() {
            assert!(
                self.conns.iter().all(|c| c.released || c.acc.id != acc.id),
                "{acc:?} handed out while still in use"
            );
            self.conns.push(EchoConn {
                acc,
                pending: Vec::new(),
                received: 0,
                released: false,
            });
        }
    }

    fn release(&mut self, stack: &mut Stack, i: usize, graceful: bool) {
        stack.release(self.conns[i].acc.id, graceful);
        self.conns[i].released = true;
    }

    fn by_port(&self, port: u16) -> &EchoConn {
        let mut it = self.conns.iter().filter(|c| c.acc.remote.port() == port);
        let c = it
            .next()
            .unwrap_or_else(|| panic!("port {port} never accepted"));
        assert!(it.next().is_none(), "port {port} accepted twice");
        c
    }
}

/// An initiator: sends its data and checks that what comes back is the same, byte for byte.
struct Peer {
    h: SocketHandle,
    port: u16,
    out: Vec<u8>,
    sent: usize,
    got: usize,
    /// The connection was established at least once.
    established: bool,
}

impl Peer {
    fn new(net: &mut Net, port: u16, len: usize, buffer: usize) -> Self {
        let h = net.connect(port, buffer);
        Self {
            h,
            port,
            out: pattern(u64::from(port), len),
            sent: 0,
            got: 0,
            established: false,
        }
    }

    /// Sends what fits and checks what arrived. Fails if an established connection is lost.
    fn pump(&mut self, net: &mut Net) {
        let s = net.sock(self.h);
        if s.state() == tcp::State::Established {
            self.established = true;
        }
        assert!(
            !self.established || s.is_open(),
            "port {}: connection lost in state {} after {} bytes sent, {} received",
            self.port,
            s.state(),
            self.sent,
            self.got
        );
        if s.can_send() && self.sent < self.out.len() {
            self.sent += s.send_slice(&self.out[self.sent..]).unwrap();
        }
        while s.can_recv() {
            let (out, got, port) = (&self.out, &mut self.got, self.port);
            s.recv(|b| {
                let end = *got + b.len();
                assert!(
                    end <= out.len() && b == &out[*got..end],
                    "port {port}: echoed bytes {}..{end} differ from those sent",
                    *got
                );
                *got = end;
                (b.len(), ())
            })
            .unwrap();
        }
    }

    fn done(&self) -> bool {
        self.got == self.out.len()
    }
}

/// The smallest shift that brings `buffer` under 64 KiB (RFC 7323).
fn shift_for(buffer: usize) -> u8 {
    let mut s = 0;
    while buffer >> s > 65_535 {
        s += 1;
    }
    s
}

// ------------------------------------------------------------------------------------------
// Handshake.

fn handshake(v6: bool, mtu: usize, rx_buffer: usize) {
    let mut net = Net::new(v6, mtu, |c| c.rx_buffer = rx_buffer);
    net.capture();
    let mut echo = Echo::default();
    let mut peer = Peer::new(&mut net, 40_000, 300_000, 256 * 1024);
    net.run(10 * SECOND, |n| {
        echo.serve(&mut n.stack);
        peer.pump(n);
        peer.done()
    });

    let acc = echo.by_port(40_000).acc;
    assert_eq!(acc.local, net.server_addr());
    assert_eq!(acc.remote, SocketAddr::new(net.client, 40_000));
    assert_eq!(net.stack.connections(), 1);

    let ip_tcp = if v6 { 60 } else { 40 };
    let mss = u16::try_from(mtu - ip_tcp).unwrap();
    let c2s = net.c2s.segs();
    let s2c = net.s2c.segs();
    let syn = c2s.iter().map(|s| s.1).find(|s| s.syn).unwrap();
    assert!(!syn.ack);
    assert_eq!(syn.mss, Some(mss), "initiator's MSS");
    let client_shift = syn.ws.expect("smoltcp offers window scaling");
    let synack = s2c.iter().map(|s| s.1).find(|s| s.syn).unwrap();
    assert!(synack.ack);
    assert_eq!(synack.ack_no, syn.seq.wrapping_add(1));
    assert_eq!(synack.mss, Some(mss), "MSS = MTU - {ip_tcp}");
    assert_eq!(
        synack.ws,
        Some(shift_for(rx_buffer)),
        "window scale for a {rx_buffer}-byte receive buffer"
    );
    if rx_buffer > 65_535 {
        assert!(synack.ws.unwrap() > 0);
    }
    // Both sides use what was negotiated: full-sized segments, scaled windows.
    let biggest = |segs: &[(u64, Seg)]| segs.iter().map(|s| s.1.len).max().unwrap();
    assert_eq!(biggest(&s2c), usize::from(mss), "target's largest segment");
    assert_eq!(
        biggest(&c2s),
        usize::from(mss),
        "initiator's largest segment"
    );
    let widest = |segs: &[(u64, Seg)], shift: u8| {
        segs.iter()
            .filter(|s| !s.1.syn && s.1.ack)
            .map(|s| usize::from(s.1.window) << shift)
            .max()
            .unwrap()
    };
    let advertised = widest(&s2c, synack.ws.unwrap());
    assert!(
        advertised > rx_buffer * 3 / 4 && advertised <= rx_buffer,
        "widest window the target advertised: {advertised} of {rx_buffer}"
    );
    assert!(
        widest(&c2s, client_shift) > 65_535,
        "the initiator's window is scaled too"
    );
}

#[test]
fn handshake_v4_1500() {
    handshake(false, 1500, 512 * 1024);
}

#[test]
fn handshake_v6_1500() {
    handshake(true, 1500, 512 * 1024);
}

#[test]
fn handshake_v4_9000() {
    handshake(false, 9000, 512 * 1024);
}

#[test]
fn handshake_v6_9000() {
    handshake(true, 9000, 512 * 1024);
}

#[test]
fn handshake_small_buffer_scales_by_zero() {
    handshake(false, 1500, 32 * 1024);
}

#[test]
fn no_window_scaling_when_the_initiator_offers_none() {
    let mut net = Net::new(false, 1500, |_| {});
    net.capture();
    let from = SocketAddr::new(net.client, 41_000);
    let syn = raw_segment(
        from,
        net.server_addr(),
        TcpControl::Syn,
        1000,
        None,
        None,
        &[],
    );
    net.sdev.rx.push_back(syn);
    net.step();
    let synack = net.s2c.segs().iter().map(|s| s.1).find(|s| s.syn).unwrap();
    assert_eq!(
        synack.ws, None,
        "RFC 7323: no option in reply to a SYN without one"
    );
    assert_eq!(synack.ack_no, 1001);
    assert_eq!(synack.window, u16::MAX, "unscaled window, clamped");
}

// ------------------------------------------------------------------------------------------
// Bulk echo.

/// Echoes `len` bytes from one initiator; returns the net for further checks.
fn echo(v6: bool, mtu: usize, faults: Faults, len: usize, limit_us: u64) -> Net {
    echo_faults(v6, mtu, (faults, faults), len, limit_us)
}

/// As [`echo`], with different faults initiator to target and back.
fn echo_faults(
    v6: bool,
    mtu: usize,
    (c2s, s2c): (Faults, Faults),
    len: usize,
    limit_us: u64,
) -> Net {
    let mut net = Net::new(v6, mtu, |_| {});
    net.faults(c2s, s2c);
    let mut echo = Echo::default();
    let mut peer = Peer::new(&mut net, 40_000, len, 256 * 1024);
    net.run(limit_us, |n| {
        echo.serve(&mut n.stack);
        peer.pump(n);
        peer.done()
    });
    assert_eq!(
        echo.conns.len(),
        1,
        "one connection, never lost and reopened"
    );
    let (id, received) = (echo.conns[0].acc.id, echo.conns[0].received);
    assert_eq!(received, len);
    // The initiator's last (delayed) ACK empties the target's send queue.
    net.run(limit_us, |n| n.stack.send_queue(id) == 0);
    assert_eq!(net.stack.state(id), ConnState::Open);
    assert_eq!(net.sock(peer.h).state(), tcp::State::Established);
    net
}

const MIB: usize = 1024 * 1024;

#[test]
fn echo_4mib_v4_1500() {
    echo(false, 1500, Faults::default(), 4 * MIB, 60 * SECOND);
}

#[test]
fn echo_4mib_v4_9000() {
    echo(false, 9000, Faults::default(), 4 * MIB, 60 * SECOND);
}

#[test]
fn echo_4mib_v6_1500() {
    echo(true, 1500, Faults::default(), 4 * MIB, 60 * SECOND);
}

#[test]
fn echo_4mib_v6_9000() {
    echo(true, 9000, Faults::default(), 4 * MIB, 60 * SECOND);
}

#[test]
fn echo_with_1_percent_loss_reordering_and_duplicates() {
    let faults = Faults {
        drop: 100,
        reorder: 300,
        duplicate: 200,
        corrupt: 0,
    };
    let net = echo(false, 1500, faults, 2 * MIB, 600 * SECOND);
    for pipe in [&net.c2s, &net.s2c] {
        let s = &pipe.stats;
        assert!(
            s.dropped > 10 && s.reordered > 10 && s.duplicated > 10,
            "{s:?}"
        );
    }
    // The stack lost segments toward the peer: it retransmitted, and counted it.
    let (rto, fast) = net.stack.retransmits();
    assert!(rto + fast > 0, "no retransmission counted");
}

#[test]
fn a_clean_link_needs_no_retransmission() {
    let net = echo(false, 1500, Faults::default(), MIB, 60 * SECOND);
    assert_eq!(net.stack.retransmits(), (0, 0));
}

/// 5% loss one way at a time. Both ways at once can deadlock this harness, and only because
/// its initiator is smoltcp too: after both ends time out, each rewinds SND.NXT and sends its
/// pure ACKs with that old sequence number, which the other end (rightly, RFC 9293 3.10.7.4)
/// drops as out of window, ACK field and all. Linux does not rewind SND.NXT, so its ACKs stay
/// acceptable; the end-to-end fault tests run Linux initiators against the target.
#[test]
fn echo_with_5_percent_loss_reordering_and_duplicates() {
    let faults = Faults {
        drop: 500,
        reorder: 300,
        duplicate: 200,
        corrupt: 0,
    };
    for (c2s, s2c) in [(faults, Faults::default()), (Faults::default(), faults)] {
        let net = echo_faults(true, 1500, (c2s, s2c), MIB, 1200 * SECOND);
        for (pipe, f) in [(&net.c2s, c2s), (&net.s2c, s2c)] {
            let s = &pipe.stats;
            if f.drop > 0 {
                assert!(
                    // The faults happened (the counts vary with how many packets the
                    // transfer took).
                    s.dropped > 20 && s.reordered > 5 && s.duplicated > 5,
                    "{s:?}"
                );
            }
        }
    }
}

#[test]
fn corrupted_packets_are_rejected_and_retransmitted() {
    let faults = Faults {
        corrupt: 300,
        ..Faults::default()
    };
    // Every corrupted segment that was accepted would show as a difference in the echo.
    let net = echo(false, 1500, faults, MIB, 600 * SECOND);
    assert!(net.c2s.stats.corrupted > 5, "{:?}", net.c2s.stats);
    assert!(net.s2c.stats.corrupted > 5, "{:?}", net.s2c.stats);

    // Jumbo frames: fewer, bigger segments.
    let faults = Faults {
        corrupt: 800,
        ..Faults::default()
    };
    let net = echo(true, 9000, faults, 2 * MIB, 600 * SECOND);
    assert!(net.c2s.stats.corrupted > 5, "{:?}", net.c2s.stats);
    assert!(net.s2c.stats.corrupted > 5, "{:?}", net.s2c.stats);
}

#[test]
fn a_corrupted_syn_creates_nothing() {
    let mut net = Net::new(false, 1500, |_| {});
    net.capture();
    let from = SocketAddr::new(net.client, 41_000);
    let mut syn = raw_segment(
        from,
        net.server_addr(),
        TcpControl::Syn,
        1000,
        None,
        None,
        &[],
    );
    // The last byte of the MSS option: the TCP checksum no longer matches.
    syn[20 + 23] ^= 0x10;
    net.sdev.rx.push_back(syn);
    net.run_for(SECOND, |_| {});
    assert!(net.s2c.segs().is_empty(), "no answer to a corrupted SYN");
    assert_eq!(net.stack.sockets(), net.baseline);
}

/// Sends a SYN from `from` straight into the target and returns when the SYN-ACK left (µs)
/// and its sequence number; then resets the half-open connection.
fn syn_ack(net: &mut Net, from: SocketAddr) -> (u64, u32) {
    net.capture();
    let syn = raw_segment(from, net.server_addr(), TcpControl::Syn, 9, None, None, &[]);
    net.sdev.rx.push_back(syn);
    net.run_for(3 * LINK_DELAY_US, |_| {});
    let (at, seg) = net
        .s2c
        .segs()
        .into_iter()
        .find(|(_, s)| s.syn && s.ack && s.dst == from)
        .expect("a SYN-ACK");
    let rst = raw_segment(
        from,
        net.server_addr(),
        TcpControl::Rst,
        10,
        None,
        None,
        &[],
    );
    net.sdev.rx.push_back(rst);
    net.run_for(3 * LINK_DELAY_US, |_| {});
    assert_eq!(net.stack.sockets(), net.baseline, "the RST ended it");
    (at, seg.seq)
}

/// RFC 6528: ISN = a 4 µs clock + a keyed hash of the four-tuple. A new incarnation of a
/// four-tuple starts exactly as far above the old one as the clock moved (so a peer still in
/// TIME-WAIT accepts its SYN); another four-tuple, or another secret, lands anywhere.
#[test]
fn initial_sequence_numbers_follow_rfc_6528() {
    let secret = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
    let ghost = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)), port);
    let mut net = Net::new(false, 1500, |c| c.isn_secret = secret);
    let (t1, isn1) = syn_ack(&mut net, ghost(30_000));
    net.run_for(SECOND, |_| {});
    let (t2, isn2) = syn_ack(&mut net, ghost(30_000));
    assert!(t2 - t1 >= SECOND);
    assert_eq!(
        isn2.wrapping_sub(isn1),
        (t2 / 4 - t1 / 4) as u32,
        "same four-tuple: the ISN moved with the 4 µs clock"
    );
    let (t3, isn3) = syn_ack(&mut net, ghost(30_001));
    let clock = (t3 / 4 - t2 / 4) as u32;
    let apart = isn3.wrapping_sub(isn2).wrapping_sub(clock);
    assert!(
        (1 << 20..u32::MAX - (1 << 20)).contains(&apart),
        "another port: {isn3:#x} is not near {isn2:#x} + {clock}"
    );

    // The same SYN at the same moment under another secret.
    let mut other = Net::new(false, 1500, |c| c.isn_secret = [secret[1], secret[0]]);
    let (t4, isn4) = syn_ack(&mut other, ghost(30_000));
    assert_eq!(t4, t1, "both nets run the same clock");
    let apart = isn4.wrapping_sub(isn1);
    assert!(
        (1 << 20..u32::MAX - (1 << 20)).contains(&apart),
        "another secret: {isn4:#x} is not near {isn1:#x}"
    );
}

/// A request/response exchange the way the reactors run it: ingress, the application
/// answers, then the full poll. Every answer carries the ACK of its request, so the target
/// sends exactly one segment per request and no bare ACK; with a plain `poll` first it would
/// send two.
#[test]
fn answers_carry_the_ack_of_their_request() {
    let mut net = Net::new(false, 9000, |_| {});
    let mut echo = Echo::default();
    let h = net.connect(40_000, 64 * 1024);
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        n.sock(h).state() == tcp::State::Established && n.stack.connections() == 1
    });
    net.run_for(10 * LINK_DELAY_US, |n| echo.serve(&mut n.stack));
    net.capture();
    let request = pattern(3, 72);
    for round in 1..=20 {
        net.sock(h).send_slice(&request).unwrap();
        let mut got = 0;
        while got < request.len() {
            net.stack.poll_ingress(net.now, &mut net.sdev);
            echo.serve(&mut net.stack);
            net.stack.poll(net.now, &mut net.sdev);
            net.iface
                .poll(instant(net.now), &mut net.cdev, &mut net.sockets);
            net.s2c.carry(net.now, &mut net.sdev.tx, &mut net.cdev.rx);
            net.c2s.carry(net.now, &mut net.cdev.tx, &mut net.sdev.rx);
            net.now += LINK_DELAY_US;
            let s = net.sock(h);
            while s.can_recv() {
                got += s.recv(|b| (b.len(), b.len())).unwrap();
            }
            assert!(net.now < 10 * SECOND, "round {round} never answered");
        }
    }
    let from_target: Vec<Seg> = net.s2c.segs().into_iter().map(|(_, s)| s).collect();
    let bare_acks = from_target
        .iter()
        .filter(|s| s.len == 0 && !s.syn && !s.fin)
        .count();
    let answers = from_target.iter().filter(|s| s.len > 0).count();
    assert_eq!(answers, 20, "one segment per answer");
    assert_eq!(bare_acks, 0, "{from_target:#?}");
}

// ------------------------------------------------------------------------------------------
// Flow control.

#[test]
fn zero_window_then_everything_arrives() {
    let rx = 64 * 1024;
    let mut net = Net::new(false, 1500, |c| c.rx_buffer = rx);
    net.capture();
    let data = pattern(5, MIB);
    let h = net.connect(40_000, 256 * 1024);
    let mut sent = 0;
    let mut acc = None;
    let client_send = |n: &mut Net, sent: &mut usize| {
        let s = n.sock(h);
        if s.can_send() {
            *sent += s.send_slice(&data[*sent..]).unwrap();
        }
    };
    // The target accepts but does not read for 10 s.
    net.run_for(10 * SECOND, |n| {
        acc = acc.or_else(|| n.stack.accept());
        client_send(n, &mut sent);
    });
    let id = acc.expect("accepted").id;
    assert_eq!(net.stack.recv_queue(id), rx, "receive buffer full");
    assert_eq!(net.stack.state(id), ConnState::Open);
    assert_eq!(net.sock(h).state(), tcp::State::Established);
    assert!(net.sock(h).send_queue() > 0, "the initiator is held back");
    let s2c = net.s2c.segs();
    let zero_at = s2c
        .iter()
        .find(|(_, s)| s.ack && !s.syn && s.window == 0)
        .map(|(t, _)| *t)
        .expect("the target advertised a zero window");
    let probes = net
        .c2s
        .segs()
        .iter()
        .filter(|(t, s)| *t > zero_at + SECOND && s.len <= 1)
        .count();
    assert!(probes >= 2, "zero-window probes: {probes}");

    // Now it reads, a little at a time (an engine whose output is full takes part of what
    // is offered): what it leaves stays buffered, the window opens and the rest follows.
    let mut got = Vec::new();
    net.run(60 * SECOND, |n| {
        client_send(n, &mut sent);
        let mut budget = 3000;
        let took = n.stack.recv(id, |b| {
            let k = b.len().min(budget);
            budget -= k;
            got.extend_from_slice(&b[..k]);
            k
        });
        assert!(took <= 3000, "recv kept offering after a partial take");
        got.len() == data.len()
    });
    assert!(got == data, "the data arrived changed");
    assert_eq!(net.stack.state(id), ConnState::Open);
}

// ------------------------------------------------------------------------------------------
// Closing.

/// One connection from port 40 000, accepted; `len` bytes echoed.
fn connected(net: &mut Net, echo: &mut Echo, len: usize) -> Peer {
    let mut peer = Peer::new(net, 40_000, len, 64 * 1024);
    net.run(10 * SECOND, |n| {
        echo.serve(&mut n.stack);
        peer.pump(n);
        peer.done()
    });
    peer
}

#[test]
fn fin_from_the_initiator_then_graceful_release() {
    let mut net = Net::new(false, 1500, |_| {});
    net.capture();
    let data = pattern(1, 10_000);
    let h = net.connect(40_000, 64 * 1024);
    net.run(SECOND, |n| n.sock(h).state() == tcp::State::Established);
    net.sock(h).send_slice(&data).unwrap();
    net.sock(h).close();
    // The target's socket has the data and the FIN, and has acknowledged both.
    net.run(SECOND, |n| n.sock(h).state() == tcp::State::FinWait2);
    let acc = net.stack.accept().unwrap();
    assert_eq!(
        net.stack.state(acc.id),
        ConnState::Open,
        "unread data comes before the end of the stream"
    );
    let mut got = Vec::new();
    net.stack.recv(acc.id, |b| {
        got.extend_from_slice(b);
        b.len()
    });
    assert!(got == data);
    assert_eq!(net.stack.state(acc.id), ConnState::PeerClosed);
    // The target can still answer, then closes.
    assert_eq!(net.stack.send(acc.id, b"bye"), 3);
    net.stack.release(acc.id, true);
    assert_eq!(net.stack.connections(), 0);
    let mut reply = Vec::new();
    net.run(5 * SECOND, |n| {
        let s = n.sock(h);
        while s.can_recv() {
            s.recv(|b| {
                reply.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        s.state() == tcp::State::TimeWait && n.stack.sockets() == n.baseline
    });
    assert_eq!(reply, b"bye");
    let fin = net
        .s2c
        .segs()
        .into_iter()
        .find(|(_, s)| s.fin)
        .expect("the target sent FIN");
    assert!(!fin.1.rst);
    assert!(
        net.s2c.segs().iter().all(|(_, s)| !s.rst),
        "no RST on a clean close"
    );
    assert_eq!(net.stack.state(acc.id), ConnState::Closed);
}

#[test]
fn target_closes_first_and_waits_in_time_wait() {
    let mut net = Net::new(true, 1500, |_| {});
    let mut echo = Echo::default();
    let peer = connected(&mut net, &mut echo, 5000);
    echo.release(&mut net.stack, 0, true);
    net.run(SECOND, |n| n.sock(peer.h).state() == tcp::State::CloseWait);
    net.sock(peer.h).close();
    let closed_at = net.now;
    // The target's socket sits in TIME-WAIT (smoltcp: 10 s), then goes.
    net.run_for(5 * SECOND, |_| {});
    assert_eq!(net.stack.sockets(), net.baseline + 1, "in TIME-WAIT");
    net.run(10 * SECOND, |n| n.stack.sockets() == n.baseline);
    assert!(net.now - closed_at >= 10 * SECOND);
    assert_eq!(net.sock(peer.h).state(), tcp::State::Closed);
}

/// TIME-WAIT sockets keep their buffers: beyond `max_time_wait`, the oldest go at once.
#[test]
fn time_wait_is_capped() {
    let cap = 3;
    let mut net = Net::new(false, 1500, |c| c.max_time_wait = cap);
    let mut echo = Echo::default();
    let mut peers = Vec::new();
    for i in 0..8u16 {
        let mut p = Peer::new(&mut net, 25_000 + i, 1000, 16 * 1024);
        net.run(SECOND, |n| {
            echo.serve(&mut n.stack);
            p.pump(n);
            p.done()
        });
        peers.push(p);
    }
    // The target closes each first, so each of its sockets ends in TIME-WAIT.
    for i in 0..peers.len() {
        echo.release(&mut net.stack, i, true);
    }
    net.run(SECOND, |n| {
        peers
            .iter()
            .all(|p| n.sock(p.h).state() == tcp::State::CloseWait)
    });
    for p in &peers {
        net.sock(p.h).close();
    }
    net.run(SECOND, |n| {
        peers
            .iter()
            .all(|p| n.sock(p.h).state() == tcp::State::Closed)
    });
    net.run_for(SECOND, |_| {});
    assert_eq!(
        net.stack.sockets(),
        net.baseline + cap,
        "only the newest {cap} stay in TIME-WAIT"
    );
    net.run(15 * SECOND, |n| n.stack.sockets() == n.baseline);
}

/// A SYN flood below the connection limit: half-open connections stay within
/// `max_half_open` (the oldest give way), and a real initiator still gets in.
#[test]
fn half_open_connections_are_capped() {
    let cap = 16;
    let mut net = Net::new(false, 1500, |c| c.max_half_open = cap);
    let mut echo = Echo::default();
    let mut most = 0;
    for i in 0..200u16 {
        let ghost = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)), 31_000 + i);
        let syn = raw_segment(
            ghost,
            net.server_addr(),
            TcpControl::Syn,
            9,
            None,
            None,
            &[],
        );
        net.sdev.rx.push_back(syn);
        if i % 4 == 3 {
            net.run_for(LINK_DELAY_US, |n| {
                echo.serve(&mut n.stack);
                most = most.max(n.stack.sockets());
            });
        }
    }
    net.run_for(10 * LINK_DELAY_US, |n| echo.serve(&mut n.stack));
    // Listeners, the capped half-open ones, and the few aborted in the last poll whose RST
    // is not out yet.
    assert!(
        most <= net.baseline + cap + 8,
        "{most} sockets at most, {} listeners",
        net.baseline
    );
    assert!(
        net.stack.sockets() <= net.baseline + cap,
        "{}",
        net.stack.sockets()
    );
    let mut late = Peer::new(&mut net, 26_000, 5000, 16 * 1024);
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        late.pump(n);
        late.done()
    });
    assert_eq!(net.stack.connections(), 1);
}

#[test]
fn rst_from_the_initiator_closes_the_connection() {
    let mut net = Net::new(false, 1500, |_| {});
    let mut echo = Echo::default();
    let peer = connected(&mut net, &mut echo, 5000);
    let id = echo.conns[0].acc.id;
    assert_eq!(net.stack.state(id), ConnState::Open);
    net.sock(peer.h).abort();
    net.run(SECOND, |n| n.stack.state(id) == ConnState::Closed);
    assert_eq!(net.stack.send(id, b"x"), 0, "nothing can be sent any more");
    net.stack.release(id, true);
    net.run(SECOND, |n| n.stack.sockets() == n.baseline);
}

/// The initiator's next sequence number (the target's RCV.NXT once all of it has arrived):
/// where its last segment ended.
fn initiator_next_seq(net: &Net, port: u16) -> u32 {
    let (_, last) = *net
        .c2s
        .segs()
        .iter()
        .rfind(|(_, s)| s.src.port() == port)
        .expect("the initiator sent something");
    last.seq
        .wrapping_add(last.len as u32)
        .wrapping_add(u32::from(last.syn || last.fin))
}

/// RFC 5961 3.2 (fourth smoltcp patch): an RST inside the window but not at exactly RCV.NXT,
/// what a blind attacker's guess would be, only gets a challenge ACK; the connection stays
/// and carries data. An RST at exactly RCV.NXT (what a peer that reset sends) closes it.
#[test]
fn in_window_rst_gets_a_challenge_ack_and_only_an_exact_one_resets() {
    let mut net = Net::new(false, 1500, |_| {});
    net.capture();
    let mut echo = Echo::default();
    let peer = connected(&mut net, &mut echo, 5000);
    net.run_for(SECOND / 10, |n| echo.serve(&mut n.stack));
    let id = echo.conns[0].acc.id;
    let from = SocketAddr::new(net.client, peer.port);
    let rcv_nxt = initiator_next_seq(&net, peer.port);
    let (_, last_ack) = *net.s2c.segs().last().unwrap();
    assert_eq!(
        last_ack.ack_no, rcv_nxt,
        "the target acknowledged everything"
    );

    // (a) One past RCV.NXT, well inside the window.
    net.capture();
    let near = raw_segment(
        from,
        net.server_addr(),
        TcpControl::Rst,
        rcv_nxt.wrapping_add(1),
        None,
        None,
        &[],
    );
    net.sdev.rx.push_back(near);
    net.run_for(3 * LINK_DELAY_US, |n| echo.serve(&mut n.stack));
    assert_eq!(
        net.stack.state(id),
        ConnState::Open,
        "a near miss resets nothing"
    );
    let answers: Vec<Seg> = net.s2c.segs().into_iter().map(|(_, s)| s).collect();
    assert!(
        matches!(answers[..], [s] if s.ack && !s.rst && !s.syn && !s.fin && s.len == 0
            && s.ack_no == rcv_nxt && s.dst == from),
        "one challenge ACK of RCV.NXT: {answers:#?}"
    );
    assert_eq!(net.sock(peer.h).state(), tcp::State::Established);

    // Data still flows both ways.
    let more = pattern(9, 3000);
    net.sock(peer.h).send_slice(&more).unwrap();
    let mut back = Vec::new();
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        let s = n.sock(peer.h);
        while s.can_recv() {
            s.recv(|b| {
                back.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        back.len() == more.len()
    });
    assert!(back == more, "the echo after the near miss differs");
    net.run_for(SECOND / 10, |n| echo.serve(&mut n.stack));
    assert_eq!(net.stack.state(id), ConnState::Open);

    // (b) Exactly RCV.NXT: the connection is reset.
    let rcv_nxt = initiator_next_seq(&net, peer.port);
    let exact = raw_segment(
        from,
        net.server_addr(),
        TcpControl::Rst,
        rcv_nxt,
        None,
        None,
        &[],
    );
    net.sdev.rx.push_back(exact);
    net.run(SECOND, |n| n.stack.state(id) == ConnState::Closed);
    net.stack.release(id, false);
    net.run(SECOND, |n| n.stack.sockets() == n.baseline);
}

/// The same rule in SYN-RECEIVED: a near-miss RST does not send a half-open connection's
/// socket back to listening; the exact one does.
#[test]
fn half_open_connection_is_reset_only_at_its_exact_sequence_number() {
    let mut net = Net::new(false, 1500, |_| {});
    let ghost = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)), 30_000);
    net.capture();
    let syn = raw_segment(
        ghost,
        net.server_addr(),
        TcpControl::Syn,
        9,
        None,
        None,
        &[],
    );
    net.sdev.rx.push_back(syn);
    net.run_for(3 * LINK_DELAY_US, |_| {});
    assert_eq!(net.stack.sockets(), net.baseline + 1, "half-open");

    net.capture();
    let server = net.server_addr();
    let rst = |seq| raw_segment(ghost, server, TcpControl::Rst, seq, None, None, &[]);
    net.sdev.rx.push_back(rst(11));
    net.run_for(3 * LINK_DELAY_US, |_| {});
    assert_eq!(net.stack.sockets(), net.baseline + 1, "still half-open");
    let answers: Vec<Seg> = net.s2c.segs().into_iter().map(|(_, s)| s).collect();
    assert!(
        matches!(answers[..], [s] if s.ack && !s.rst && !s.syn && s.ack_no == 10 && s.dst == ghost),
        "one challenge ACK of RCV.NXT: {answers:#?}"
    );

    net.sdev.rx.push_back(rst(10));
    net.run_for(3 * LINK_DELAY_US, |_| {});
    assert_eq!(net.stack.sockets(), net.baseline, "the exact RST ended it");
}

#[test]
fn abortive_release_sends_rst() {
    let mut net = Net::new(false, 1500, |_| {});
    let mut echo = Echo::default();
    let peer = connected(&mut net, &mut echo, 5000);
    net.capture();
    echo.release(&mut net.stack, 0, false);
    net.run(SECOND, |n| n.sock(peer.h).state() == tcp::State::Closed);
    let segs = net.s2c.segs();
    assert!(segs.iter().all(|(_, s)| !s.fin), "{segs:?}");
    // The first thing the target sends is the RST (then one more answers the initiator's
    // delayed ACK, which crossed it, on a connection that no longer exists).
    let rst = segs[0].1;
    assert!(rst.rst && rst.ack, "{segs:?}");
    assert_eq!(rst.src, net.server_addr());
    assert_eq!(rst.dst.port(), 40_000);
    assert_eq!(net.stack.sockets(), net.baseline);
}

#[test]
fn release_with_unread_data_still_closes() {
    // The target stops reading and releases while the initiator is still sending more than
    // its receive buffer holds, then closes: the connection must still finish closing.
    let mut net = Net::new(false, 1500, |c| c.rx_buffer = 16 * 1024);
    let h = net.connect(40_000, 64 * 1024);
    let data = pattern(3, 200_000);
    let mut sent = 0;
    let mut acc = None;
    net.run(5 * SECOND, |n| {
        acc = acc.or_else(|| n.stack.accept());
        let s = n.sock(h);
        if s.can_send() {
            sent += s.send_slice(&data[sent..]).unwrap();
        }
        acc.is_some() && n.stack.recv_queue(acc.unwrap().id) > 0
    });
    net.stack.release(acc.unwrap().id, true);
    net.run(60 * SECOND, |n| {
        let s = n.sock(h);
        while s.can_recv() {
            s.recv(|b| (b.len(), ())).unwrap();
        }
        if s.can_send() && sent < data.len() {
            sent += s.send_slice(&data[sent..]).unwrap();
        }
        if sent == data.len() && s.state() == tcp::State::CloseWait {
            s.close();
        }
        n.stack.sockets() == n.baseline
    });
    assert!(
        !net.sock(h).is_active(),
        "initiator: {}",
        net.sock(h).state()
    );
}

#[test]
fn released_connection_whose_peer_never_closes_is_reset_after_timeout() {
    let timeout = 6 * SECOND;
    let mut net = Net::new(false, 1500, |c| {
        c.keep_alive_us = 2 * SECOND;
        c.timeout_us = timeout;
    });
    let mut echo = Echo::default();
    let peer = connected(&mut net, &mut echo, 1000);
    echo.release(&mut net.stack, 0, true);
    // The initiator acknowledges the FIN but never closes its side (a live peer that
    // stays quiet): the target's socket waits in FIN-WAIT-2.
    net.run(SECOND, |n| n.sock(peer.h).state() == tcp::State::CloseWait);
    net.run(timeout * 3, |n| n.stack.sockets() == n.baseline);
}

// ------------------------------------------------------------------------------------------
// Many connections.

/// A poll visits the connections something happened to, not all of them: served only
/// through `take_ready`, 100 echo connections still finish, and once they are idle, data on
/// one of them makes a poll visit that one alone.
#[test]
fn a_poll_visits_only_the_connections_something_happened_to() {
    let mut net = Net::new(false, 1500, |c| {
        c.backlog = 128;
        c.rx_buffer = 16 * 1024;
        c.tx_buffer = 16 * 1024;
    });
    let mut echo = Echo::default();
    let mut peers: Vec<Peer> = (0..100)
        .map(|i| Peer::new(&mut net, 20_000 + i, 40_000, 16 * 1024))
        .collect();
    net.run(30 * SECOND, |n| {
        echo.serve_ready(&mut n.stack);
        for p in &mut peers {
            p.pump(n);
        }
        peers.iter().all(Peer::done)
    });
    assert_eq!(net.stack.connections(), 100);
    // Let every ACK and timer settle.
    net.run_for(SECOND, |n| echo.serve_ready(&mut n.stack));
    let mut last = Peer::new(&mut net, 30_000, 0, 16 * 1024);
    net.run(SECOND, |n| {
        echo.serve_ready(&mut n.stack);
        last.pump(n);
        n.stack.connections() == 101
    });
    net.run_for(SECOND, |n| echo.serve_ready(&mut n.stack));
    last.out = pattern(7, 1000);
    let mut most = 0;
    net.run(SECOND, |n| {
        echo.serve_ready(&mut n.stack);
        last.pump(n);
        most = most.max(n.stack.visited());
        last.done()
    });
    assert!(most >= 1, "the busy connection was visited");
    assert!(most <= 2, "a poll visited {most} of 101 connections");
}

#[test]
fn two_hundred_concurrent_connections() {
    let mut net = Net::new(false, 1500, |c| {
        c.backlog = 256;
        c.rx_buffer = 32 * 1024;
        c.tx_buffer = 32 * 1024;
    });
    net.capture();
    let mut echo = Echo::default();
    let mut peers: Vec<Peer> = (0..200)
        .map(|i| {
            Peer::new(
                &mut net,
                20_000 + i,
                16 * 1024 + usize::from(i) * 7,
                32 * 1024,
            )
        })
        .collect();
    net.run(30 * SECOND, |n| {
        echo.serve(&mut n.stack);
        for p in &mut peers {
            p.pump(n);
        }
        peers.iter().all(Peer::done)
    });
    assert_eq!(echo.conns.len(), 200);
    assert_eq!(net.stack.connections(), 200);
    for p in &peers {
        let c = echo.by_port(p.port);
        assert_eq!(c.received, p.out.len());
        assert_eq!(c.acc.remote, SocketAddr::new(net.client, p.port));
        assert_eq!(net.stack.state(c.acc.id), ConnState::Open);
    }
    let mut ids: Vec<ConnId> = echo.conns.iter().map(|c| c.acc.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "distinct ids");
    assert!(net.s2c.segs().iter().all(|(_, s)| !s.rst), "no RST");
    // All closed by the initiators: the stack returns to its listeners.
    for p in &peers {
        net.sock(p.h).close();
    }
    net.run(5 * SECOND, |n| {
        for c in echo.conns.iter_mut().filter(|c| !c.released) {
            if n.stack.state(c.acc.id) == ConnState::PeerClosed {
                n.stack.release(c.acc.id, true);
                c.released = true;
            }
        }
        n.stack.sockets() == n.baseline
    });
}

#[test]
fn syns_beyond_the_backlog_get_rst_and_retries_succeed() {
    let backlog = 4;
    let mut net = Net::new(false, 1500, |c| c.backlog = backlog);
    net.capture();
    let mut echo = Echo::default();
    let mut peers: Vec<Peer> = (0..20)
        .map(|i| Peer::new(&mut net, 21_000 + i, 4096, 16 * 1024))
        .collect();
    let mut retries = 0;
    net.run(30 * SECOND, |n| {
        echo.serve(&mut n.stack);
        for p in &mut peers {
            if !p.established && n.sock(p.h).state() == tcp::State::Closed {
                n.reconnect(p.h, p.port);
                retries += 1;
            }
            p.pump(n);
        }
        peers.iter().all(Peer::done)
    });
    // All 20 SYNs reached the stack in one poll: `backlog` listeners took theirs, the rest
    // were refused at once.
    let segs = net.s2c.segs();
    let first = segs[0].0;
    let at_first = |f: fn(&Seg) -> bool| segs.iter().filter(|(t, s)| *t == first && f(s)).count();
    assert_eq!(at_first(|s| s.syn && s.ack), backlog);
    assert_eq!(at_first(|s| s.rst), 20 - backlog);
    assert!(retries >= 20 - backlog);
    assert_eq!(echo.conns.len(), 20);
    for p in &peers {
        assert_eq!(echo.by_port(p.port).received, p.out.len());
    }
}

#[test]
fn max_connections_refuses_more_and_keeps_the_others() {
    let max = 4;
    let mut net = Net::new(false, 1500, |c| {
        c.max_connections = max;
        c.backlog = 2;
    });
    net.capture();
    let mut echo = Echo::default();
    let mut peers = Vec::new();
    for i in 0..max {
        let mut p = Peer::new(&mut net, 22_000 + i as u16, 2000, 16 * 1024);
        net.run(SECOND, |n| {
            echo.serve(&mut n.stack);
            p.pump(n);
            p.done()
        });
        peers.push(p);
    }
    assert_eq!(net.stack.connections(), max);

    // One more: refused. Its handshake ACK is lost, so only the stack's own RST tells it.
    let refused_port = 22_100;
    net.c2s.drop_if = Some(Box::new(move |s| {
        s.src.port() == refused_port && s.ack && !s.rst
    }));
    let refused = net.connect(refused_port, 16 * 1024);
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        n.sock(refused).state() == tcp::State::Closed
    });
    let segs = net.s2c.segs();
    assert!(
        segs.iter()
            .any(|(_, s)| s.rst && s.dst.port() == refused_port),
        "the stack resets the connection it refuses"
    );
    assert_eq!(echo.conns.len(), max, "the refused one is never accepted");
    assert_eq!(
        net.stack.refused(),
        [(PORT, 1)],
        "and it is counted on its port"
    );

    // The others still work.
    for p in &mut peers {
        p.out = pattern(u64::from(p.port) + 1, 50_000);
        p.sent = 0;
        p.got = 0;
        for c in echo.conns.iter_mut() {
            c.received = 0;
        }
    }
    net.run(10 * SECOND, |n| {
        echo.serve(&mut n.stack);
        for p in &mut peers {
            p.pump(n);
        }
        peers.iter().all(Peer::done)
    });

    // One closes (the target first, so its socket lingers in TIME-WAIT): a new connection
    // fits again at once; TIME-WAIT sockets are not connections.
    net.c2s.drop_if = None;
    echo.release(&mut net.stack, 0, true);
    let h0 = peers[0].h;
    net.run(SECOND, |n| n.sock(h0).state() == tcp::State::CloseWait);
    net.sock(h0).close();
    net.run(SECOND, |n| n.sock(h0).state() == tcp::State::Closed);
    let mut late = Peer::new(&mut net, 22_200, 3000, 16 * 1024);
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        late.pump(n);
        late.done()
    });
    assert_eq!(net.stack.connections(), max);
}

// ------------------------------------------------------------------------------------------
// Half-open connections.

#[test]
fn handshake_timeout_drops_half_open_connections() {
    let timeout = 2 * SECOND;
    let mut net = Net::new(false, 1500, |c| c.handshake_timeout_us = timeout);
    net.capture();
    // From an address nobody answers for: the SYN-ACKs go nowhere, no ACK ever comes.
    let ghost = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)), 5555);
    let syn = raw_segment(
        ghost,
        net.server_addr(),
        TcpControl::Syn,
        77,
        None,
        Some(2),
        &[],
    );
    net.sdev.rx.push_back(syn);
    let mut accepted = Vec::new();
    let mut half_open_seen = false;
    net.run_for(timeout + 2 * SECOND, |n| {
        accepted.extend(n.stack.accept());
        half_open_seen |= n.stack.sockets() == n.baseline + 1;
    });
    assert!(half_open_seen, "the SYN made a half-open connection");
    assert!(
        accepted.is_empty(),
        "accepted a half-open connection: {accepted:?}"
    );
    assert_eq!(
        net.stack.sockets(),
        net.baseline,
        "half-open connection not freed"
    );
    assert_eq!(net.stack.connections(), 0);
    let to_ghost: Vec<_> = net
        .s2c
        .segs()
        .into_iter()
        .filter(|(_, s)| s.dst == ghost)
        .collect();
    let synacks = to_ghost.iter().filter(|(_, s)| s.syn && s.ack).count();
    assert!(synacks >= 2, "the SYN-ACK is retransmitted: {to_ghost:?}");
    let last = to_ghost.last().unwrap();
    assert!(last.1.rst, "the stack gives up with RST");
    assert!(last.0 >= timeout);
    // Later connections are unaffected.
    let mut echo = Echo::default();
    connected(&mut net, &mut echo, 1000);
}

/// A SYN flood fills the connection limit with handshakes nobody completes: the oldest
/// half-open one gives way to each new SYN, so a real initiator still gets in at once,
/// and established connections are never evicted.
#[test]
fn a_syn_flood_at_the_connection_limit_evicts_half_open_ones_not_real_ones() {
    let max = 8;
    let mut net = Net::new(false, 1500, |c| {
        c.max_connections = max;
        c.backlog = 4;
    });
    let mut echo = Echo::default();
    // Two real connections first.
    let mut real = Vec::new();
    for i in 0..2u16 {
        let mut p = Peer::new(&mut net, 23_000 + i, 2000, 16 * 1024);
        net.run(SECOND, |n| {
            echo.serve(&mut n.stack);
            p.pump(n);
            p.done()
        });
        real.push(p);
    }
    // 40 SYNs from addresses nobody answers for, a few per poll: far past the limit.
    for i in 0..40u16 {
        let ghost = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)), 30_000 + i);
        let syn = raw_segment(
            ghost,
            net.server_addr(),
            TcpControl::Syn,
            7,
            None,
            None,
            &[],
        );
        net.sdev.rx.push_back(syn);
        if i % 3 == 2 {
            net.run_for(LINK_DELAY_US, |n| echo.serve(&mut n.stack));
        }
    }
    net.run_for(10 * LINK_DELAY_US, |n| echo.serve(&mut n.stack));
    assert!(
        net.stack.sockets() <= net.baseline + max + 40,
        "sockets stay bounded: {}",
        net.stack.sockets()
    );
    // A real initiator connects while the limit is full of half-open connections, well
    // before the handshake timeout could have freed any.
    let started = net.now;
    let mut late = Peer::new(&mut net, 24_000, 5000, 16 * 1024);
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        late.pump(n);
        late.done()
    });
    assert!(
        net.now - started < 100_000,
        "the late initiator waited {} us",
        net.now - started
    );
    // The first two were never touched.
    for p in &mut real {
        p.out = pattern(u64::from(p.port) + 1, 3000);
        p.sent = 0;
        p.got = 0;
    }
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        real.iter_mut().for_each(|p| p.pump(n));
        real.iter().all(Peer::done)
    });
    assert_eq!(net.stack.connections(), 3);
}

#[test]
fn half_open_connection_reset_by_its_peer_is_forgotten() {
    let mut net = Net::new(false, 1500, |_| {});
    net.capture();
    let from = SocketAddr::new(net.client, 5555);
    // SYN from a port the initiator's interface has no socket for: it answers the SYN-ACK
    // with RST, as a host whose connect() was abandoned would.
    let syn = raw_segment(
        from,
        net.server_addr(),
        TcpControl::Syn,
        77,
        None,
        Some(2),
        &[],
    );
    net.sdev.rx.push_back(syn);
    net.run_for(SECOND, |n| assert_eq!(n.stack.accept(), None));
    assert!(net.c2s.segs().iter().any(|(_, s)| s.rst && s.src == from));
    assert_eq!(net.stack.sockets(), net.baseline);
    // And the stack still serves, with exactly `backlog` listeners.
    let mut echo = Echo::default();
    connected(&mut net, &mut echo, 1000);
    net.run_for(10 * SECOND, |n| echo.serve(&mut n.stack));
    assert_eq!(echo.conns.len(), 1);
    assert_eq!(net.stack.sockets(), net.baseline + 1);
}

#[test]
fn retransmitted_syn_reaches_its_half_open_connection() {
    // smoltcp gives a packet to the first socket (by slot) that takes it, and a listener
    // takes any SYN: a listener in a slot freed after a connection's first SYN would take
    // its retransmitted SYN too, and answer with a second SYN-ACK of another sequence.
    let mut net = Net::new(false, 1500, |c| c.backlog = 2);
    let mut echo = Echo::default();
    // A takes the first socket slot.
    let mut a = Peer::new(&mut net, 40_001, 1000, 16 * 1024);
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        a.pump(n);
        a.done()
    });
    // B's first two SYN-ACKs are lost.
    let mut lost = 0;
    net.s2c.drop_if = Some(Box::new(move |s| {
        let drop = s.syn && s.dst.port() == 40_002 && lost < 2;
        lost += usize::from(drop);
        drop
    }));
    let mut b = Peer::new(&mut net, 40_002, 20_000, 16 * 1024);
    net.step();
    net.step();
    // A goes, freeing its slot; C's connection makes the stack put a listener there.
    echo.release(&mut net.stack, 0, false);
    net.step();
    net.step();
    let mut c = Peer::new(&mut net, 40_003, 1000, 16 * 1024);
    net.run(SECOND / 2, |n| {
        echo.serve(&mut n.stack);
        c.pump(n);
        c.done()
    });
    // B retransmits its SYN and gets through.
    net.run(30 * SECOND, |n| {
        echo.serve(&mut n.stack);
        b.pump(n);
        b.done()
    });
    net.run_for(10 * SECOND, |n| {
        echo.serve(&mut n.stack);
        b.pump(n);
    });
    assert_eq!(echo.conns.len(), 3, "A, B and C, once each");
    assert_eq!(echo.by_port(40_002).received, 20_000);
    assert_eq!(
        net.stack.sockets(),
        net.baseline + 2,
        "B and C, nothing half-open"
    );
}

// ------------------------------------------------------------------------------------------
// Dead peers.

#[test]
fn vanished_peer_times_out() {
    let timeout = 6 * SECOND;
    let mut net = Net::new(false, 1500, |c| {
        c.keep_alive_us = 2 * SECOND;
        c.timeout_us = timeout;
    });
    let mut echo = Echo::default();
    net.capture();
    connected(&mut net, &mut echo, 1000);
    let id = echo.conns[0].acc.id;
    // Idle, then the initiator vanishes: nothing it sends arrives any more.
    net.run_for(SECOND, |_| {});
    net.c2s.blocked = true;
    let gone = net.now;
    let mut closed_at = None;
    net.run(2 * timeout, |n| {
        assert_eq!(n.stack.recv(id, |b| b.len()), 0);
        if n.stack.state(id) == ConnState::Closed {
            closed_at = Some(n.now);
        }
        closed_at.is_some()
    });
    let last_heard = net
        .c2s
        .segs()
        .iter()
        .map(|s| s.0)
        .filter(|t| *t < gone)
        .max()
        .unwrap();
    let after = closed_at.unwrap() - last_heard;
    assert!(
        (timeout..=timeout + SECOND / 2).contains(&after),
        "closed {after} µs after the peer was last heard"
    );
    let segs = net.s2c.segs();
    let probes = segs
        .iter()
        .filter(|(t, s)| *t >= gone && !s.rst && s.ack && s.len <= 1)
        .count();
    assert!(probes >= 2, "keep-alive probes before giving up: {probes}");
    assert!(
        segs.iter().any(|(t, s)| *t >= gone && s.rst),
        "the target resets the connection when it gives up"
    );
    echo.release(&mut net.stack, 0, true);
    net.run(SECOND, |n| n.stack.sockets() == n.baseline);
}

#[test]
fn reconnecting_from_the_same_port_waits_out_time_wait() {
    // smoltcp has no TIME-WAIT reuse (RFC 6191): a SYN on the 4-tuple of a socket in
    // TIME-WAIT is ignored until TIME-WAIT ends (10 s); the initiator's retransmitted SYN
    // gets through then.
    let mut net = Net::new(false, 1500, |_| {});
    let mut echo = Echo::default();
    let peer = connected(&mut net, &mut echo, 1000);
    echo.release(&mut net.stack, 0, true);
    net.run(SECOND, |n| n.sock(peer.h).state() == tcp::State::CloseWait);
    net.sock(peer.h).close();
    net.run(SECOND, |n| n.sock(peer.h).state() == tcp::State::Closed);
    let closed = net.now;
    net.reconnect(peer.h, peer.port);
    let mut again = Peer {
        out: pattern(77, 2000),
        ..peer
    };
    let mut accepted_at = None;
    net.run(30 * SECOND, |n| {
        echo.serve(&mut n.stack);
        if echo.conns.len() == 2 {
            accepted_at = accepted_at.or(Some(n.now));
        }
        again.pump(n);
        again.done()
    });
    let waited = accepted_at.unwrap() - closed;
    assert!(
        (9 * SECOND..16 * SECOND).contains(&waited),
        "accepted {waited} µs after the first connection closed"
    );
    assert_eq!(echo.conns[1].acc.remote, echo.conns[0].acc.remote);
}

#[test]
fn idle_connection_with_a_live_peer_stays_open() {
    let timeout = 6 * SECOND;
    let mut net = Net::new(true, 1500, |c| {
        c.keep_alive_us = 2 * SECOND;
        c.timeout_us = timeout;
    });
    let mut echo = Echo::default();
    let mut peer = connected(&mut net, &mut echo, 1000);
    let id = echo.conns[0].acc.id;
    net.run_for(5 * timeout, |n| {
        assert_eq!(n.stack.state(id), ConnState::Open);
    });
    peer.out = pattern(9, 3000);
    peer.sent = 0;
    peer.got = 0;
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        peer.pump(n);
        peer.done()
    });
}

#[test]
fn congestion_window_collapses_after_a_timeout() {
    // The target sends 1 MiB; the link goes dark for 3 s. When the retransmission timer
    // fires, a sender with congestion control resends one segment, not the whole window.
    let mut net = Net::new(false, 1500, |_| {});
    let mut echo = Echo::default();
    let mut peer = Peer::new(&mut net, 40_000, MIB, 256 * 1024);
    net.run(10 * SECOND, |n| {
        echo.serve(&mut n.stack);
        peer.pump(n);
        peer.got > MIB / 4
    });
    net.capture();
    net.s2c.blocked = true;
    let dark = net.now;
    net.run_for(3 * SECOND, |n| {
        echo.serve(&mut n.stack);
        peer.pump(n);
    });
    let data: Vec<(u64, usize)> = net
        .s2c
        .segs()
        .iter()
        .filter(|(_, s)| s.len > 1)
        .map(|(t, s)| (*t, s.len))
        .collect();
    let rto = data
        .iter()
        .map(|d| d.0)
        .find(|t| *t >= dark + SECOND / 2)
        .expect("a retransmission");
    let burst = data.iter().filter(|d| d.0 == rto).count();
    assert!(
        burst <= 2,
        "{burst} segments sent at once after the timeout"
    );
    net.s2c.blocked = false;
    net.run(60 * SECOND, |n| {
        echo.serve(&mut n.stack);
        peer.pump(n);
        peer.done()
    });
}

// ------------------------------------------------------------------------------------------
// Packets that are not for the stack.

#[test]
fn packets_for_other_addresses_create_nothing() {
    for v6 in [false, true] {
        let mut net = Net::new(v6, 1500, |_| {});
        net.capture();
        let from = SocketAddr::new(net.client, 41_000);
        let others: &[IpAddr] = if v6 {
            &[IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 77))]
        } else {
            &[
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 77)),
                // The subnet's broadcast address: smoltcp takes it in, but must not
                // answer from it.
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 255)),
                IpAddr::V4(Ipv4Addr::BROADCAST),
            ]
        };
        for &to in others {
            let syn = raw_segment(
                from,
                SocketAddr::new(to, PORT),
                TcpControl::Syn,
                1,
                None,
                None,
                &[],
            );
            net.sdev.rx.push_back(syn);
        }
        net.run_for(SECOND, |n| assert_eq!(n.stack.accept(), None));
        assert!(net.s2c.segs().is_empty(), "v6 {v6}: {:?}", net.s2c.segs());
        assert_eq!(net.stack.sockets(), net.baseline);
    }
}

#[test]
fn packets_for_other_ports_get_rst() {
    let mut net = Net::new(false, 1500, |_| {});
    net.capture();
    let from = SocketAddr::new(net.client, 41_000);
    let to = SocketAddr::new(net.server, 9999);
    let syn = raw_segment(from, to, TcpControl::Syn, 500, None, None, &[]);
    net.sdev.rx.push_back(syn);
    // Data on a connection that does not exist.
    let data = raw_segment(
        from,
        net.server_addr(),
        TcpControl::None,
        9,
        Some(1),
        None,
        b"hi",
    );
    net.sdev.rx.push_back(data);
    net.run_for(SECOND, |n| assert_eq!(n.stack.accept(), None));
    let segs: Vec<Seg> = net.s2c.segs().into_iter().map(|s| s.1).collect();
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert!(segs[0].rst && segs[0].ack && segs[0].ack_no == 501 && segs[0].src == to);
    assert!(
        segs[1].rst && segs[1].seq == 1,
        "RST for stray data: {:?}",
        segs[1]
    );
    assert_eq!(net.stack.sockets(), net.baseline);
    assert_eq!(net.stack.connections(), 0);
}

#[test]
fn garbage_is_ignored() {
    let mut net = Net::new(false, 1500, |_| {});
    let mut echo = Echo::default();
    let peer = connected(&mut net, &mut echo, 1000);
    let mut rng = 5u64;
    for len in [0usize, 1, 19, 20, 39, 40, 60, 1500] {
        let mut p = pattern(xorshift(&mut rng), len);
        if let Some(b) = p.first_mut() {
            *b = 0x45;
        }
        net.sdev.rx.push_back(p);
    }
    net.run_for(SECOND, |n| echo.serve(&mut n.stack));
    assert_eq!(net.sock(peer.h).state(), tcp::State::Established);
    assert_eq!(net.stack.connections(), 1);
}

#[test]
fn ports_come_and_go_and_connections_stay() {
    let mut net = Net::new(false, 1500, |_| {});
    let mut echo = Echo::default();
    let first = connected(&mut net, &mut echo, 5000);
    net.stack.remove_port(PORT);
    assert_eq!(net.stack.ports(), &[] as &[u16]);
    assert_eq!(
        net.stack.sockets(),
        1,
        "the listeners went, the connection stays"
    );
    // A new initiator gets RST.
    let h = net.connect(40_001, 64 * 1024);
    net.run_for(SECOND, |n| echo.serve(&mut n.stack));
    assert_eq!(net.sock(h).state(), tcp::State::Closed);
    assert_eq!(net.stack.connections(), 1);
    // The first one is still echoed.
    net.sock(first.h).send_slice(b"still here").unwrap();
    let mut reply = Vec::new();
    net.run(SECOND, |n| {
        echo.serve(&mut n.stack);
        let s = n.sock(first.h);
        while s.can_recv() {
            s.recv(|b| {
                reply.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        reply.ends_with(b"still here")
    });
    // Back again: new initiators get in.
    net.stack.add_port(PORT);
    net.stack.add_port(PORT);
    assert_eq!(net.stack.ports(), &[PORT]);
    let mut second = Peer::new(&mut net, 40_002, 3000, 64 * 1024);
    net.run(10 * SECOND, |n| {
        echo.serve(&mut n.stack);
        second.pump(n);
        second.done()
    });
    assert_eq!(net.stack.connections(), 2);
}
