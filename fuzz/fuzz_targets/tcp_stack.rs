//! The user-space TCP/IP stack (target-tcp) fed arbitrary packets on an advancing clock,
//! with an application that accepts, echoes and releases whatever connections appear.
//! Whatever arrives: no panic, and once everything is released and the peers fall silent
//! long enough, every socket but the listeners is gone (no leak).
//!
//! The input is a list of records, by the top two bits of their first byte:
//! - `00`: a raw packet, length in the next byte;
//! - `01`: a TCP segment wrapped in a valid IPv4 or IPv6 header, with correct checksums,
//!   to the stack's address, and optionally with the sequence and acknowledgement numbers
//!   of the conversation so far, so that the fuzzer gets past parsing and handshakes fast;
//! - `10`: the clock jumps forward;
//! - `11`: the application releases one of its connections.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use target_tcp::memory::MemoryLink;
use target_tcp::{ConnId, ConnState, Stack, StackConfig};

const V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const PEER_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// Two listening ports, and one nobody listens on.
const PORTS: [u16; 4] = [3260, 4420, 3260, 9999];
const BACKLOG: usize = 2;
const MS: u64 = 1000;

/// One initiator's side of a conversation: what it sends next, what it expects next.
#[derive(Clone, Copy, Default)]
struct Peer {
    seq: u32,
    their_next: u32,
}

/// Peers by (IPv6, source port 40 000 or 40 001, destination port index).
fn peer_index(v6: bool, src: usize, port: usize) -> usize {
    usize::from(v6) * 8 + src * 4 + port
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 or IPv6 packet carrying `tcp` (whose checksum field is zero) from the peer to
/// `dst`, with both checksums right.
fn wrap(v6: bool, dst: IpAddr, mut tcp: Vec<u8>) -> Vec<u8> {
    let (src, dst_bytes): (IpAddr, Vec<u8>) = match dst {
        IpAddr::V4(a) => (PEER_V4.into(), a.octets().to_vec()),
        IpAddr::V6(a) => (PEER_V6.into(), a.octets().to_vec()),
    };
    let src_bytes = match src {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let len = tcp.len() as u32;
    let pseudo = sum16(&src_bytes) + sum16(&dst_bytes) + 6 + len;
    let c = fold(pseudo + sum16(&tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut p = Vec::with_capacity(40 + tcp.len());
    if v6 {
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        p.extend_from_slice(&[6, 64]);
    } else {
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    }
    p.extend_from_slice(&src_bytes);
    p.extend_from_slice(&dst_bytes);
    if !v6 {
        let c = fold(sum16(&p));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&tcp);
    p
}

/// Learns the stack's sequence numbers from what it sent to the peers.
fn observe(packet: &[u8], peers: &mut [Peer; 16]) {
    let Some(&first) = packet.first() else { return };
    let (v6, dst, tcp) = match first >> 4 {
        4 if packet.len() >= 20 => {
            let hl = usize::from(first & 0xf) * 4;
            (false, packet[16..20] == PEER_V4.octets(), packet.get(hl..))
        }
        6 if packet.len() >= 40 => (true, packet[24..40] == PEER_V6.octets(), packet.get(40..)),
        _ => return,
    };
    let Some(tcp) = tcp.filter(|t| t.len() >= 20) else {
        return;
    };
    let hl = usize::from(tcp[12] >> 4) * 4;
    let (sport, dport) = (
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
    );
    let Some(port) = PORTS.iter().position(|&p| p == sport) else {
        return;
    };
    if !dst || !(40_000..40_002).contains(&dport) {
        return;
    }
    let peer = &mut peers[peer_index(v6, usize::from(dport - 40_000), port)];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let flags = tcp[13];
    let len = tcp.len().saturating_sub(hl) as u32;
    let end = seq
        .wrapping_add(len)
        .wrapping_add(u32::from(flags & 0x03 != 0));
    if flags & 0x02 != 0 || end.wrapping_sub(peer.their_next) as i32 > 0 {
        peer.their_next = end;
    }
}

/// A TCP segment from the peer; `None` when the input ran out.
fn segment(h: u8, input: &mut &[u8], peers: &mut [Peer; 16]) -> Option<(bool, Vec<u8>)> {
    let v6 = h & 1 != 0;
    let port = usize::from(h >> 1) & 3;
    let src = usize::from(h >> 3) & 1;
    let (auto_seq, auto_ack) = (h & 0x10 != 0, h & 0x20 != 0);
    let &[flags, delta, window, len, ref rest @ ..] = *input else {
        return None;
    };
    let len = usize::from(len).min(rest.len());
    let payload = &rest[..len];
    *input = &rest[len..];
    let peer = &mut peers[peer_index(v6, src, port)];
    let delta = delta as i8 as i32 as u32;
    let syn = flags & 0x02 != 0;
    let seq = match (auto_seq, syn) {
        (true, true) => {
            peer.seq = 0x1000_0000u32
                .wrapping_mul(port as u32 + 1)
                .wrapping_add(delta);
            peer.seq
        }
        (true, false) => peer.seq.wrapping_add(delta),
        (false, _) => delta.wrapping_mul(0x0101_0101),
    };
    let ack = if auto_ack {
        peer.their_next
    } else {
        delta.wrapping_mul(0x0301_0501)
    };
    // The peer's next sequence number, if the segment is taken.
    peer.seq = seq
        .wrapping_add(len as u32)
        .wrapping_add(u32::from(flags & 0x03 != 0));
    let mut tcp = Vec::with_capacity(32 + len);
    tcp.extend_from_slice(&(40_000 + src as u16).to_be_bytes());
    tcp.extend_from_slice(&PORTS[port].to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    // Options: MSS and window scale (with the top flag bit), or none.
    let options = flags & 0x80 != 0;
    tcp.push(if options { 8 << 4 } else { 5 << 4 });
    tcp.push(flags & 0x3f);
    tcp.extend_from_slice(&(u16::from(window) << 8 | 0xff).to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    if options {
        tcp.extend_from_slice(&[2, 4, (window >> 2) & 0x3f, 0xb4, 3, 3, window & 15]);
        tcp.extend_from_slice(&[1; 5]);
    }
    tcp.extend_from_slice(payload);
    Some((v6, tcp))
}

/// The application on top of the stack, and the link.
struct App {
    stack: Stack,
    dev: MemoryLink,
    now: u64,
    peers: [Peer; 16],
    conns: Vec<ConnId>,
    echo: Vec<u8>,
}

impl App {
    /// Takes in what arrived, accepts, echoes, releases what the peers closed, then sends,
    /// the way the XDP reactor does.
    fn poll(&mut self) {
        self.stack.poll_ingress(self.now, &mut self.dev);
        self.serve();
        self.stack.poll(self.now, &mut self.dev);
        for p in self.dev.tx.drain(..) {
            observe(&p, &mut self.peers);
        }
    }

    fn serve(&mut self) {
        for p in self.dev.tx.drain(..) {
            observe(&p, &mut self.peers);
        }
        while let Some(a) = self.stack.accept() {
            assert!(!self.conns.contains(&a.id), "{a:?} handed out twice");
            self.conns.push(a.id);
        }
        let (stack, echo) = (&mut self.stack, &mut self.echo);
        self.conns.retain(|&id| {
            echo.clear();
            stack.recv(id, |b| {
                echo.extend_from_slice(b);
                b.len()
            });
            stack.send(id, echo);
            let _ = (stack.recv_queue(id), stack.send_queue(id));
            match stack.state(id) {
                ConnState::Open => true,
                ConnState::PeerClosed => {
                    stack.release(id, true);
                    false
                }
                ConnState::Closed => {
                    stack.release(id, false);
                    false
                }
            }
        });
        let _ = (stack.connections(), stack.poll_delay(self.now));
        // Every connection named ready is one the stack holds for the user.
        let mut ready = Vec::new();
        stack.take_ready(&mut ready);
        for id in ready {
            let _ = stack.state(id);
        }
        let _ = stack.visited();
    }
}

fuzz_target!(|data: &[u8]| {
    let [opts, input @ ..] = data else { return };
    let mut input = input;
    let config = StackConfig {
        addrs: vec![(V4.into(), 24), (V6.into(), 64)],
        ports: vec![PORTS[0], PORTS[1]],
        rx_buffer: if opts & 1 != 0 { 2048 } else { 100_000 },
        tx_buffer: 4096,
        max_connections: 4,
        // Small caps, so that the fuzzer reaches the eviction paths.
        max_half_open: 3,
        max_time_wait: 2,
        backlog: BACKLOG,
        handshake_timeout_us: 500 * MS,
        keep_alive_us: 300 * MS,
        timeout_us: 2000 * MS,
        ack_delay_us: (opts & 2 != 0).then_some(2 * MS),
        seed: u64::from(*opts),
        isn_secret: [u64::from(*opts), 0],
    };
    let listeners = config.ports.len() * BACKLOG;
    let mut dev = MemoryLink::new(if opts & 4 != 0 { 9000 } else { 1500 });
    let stack = Stack::new(config, &mut dev, 0);
    let mut app = App {
        stack,
        dev,
        now: 0,
        peers: [Peer::default(); 16],
        conns: Vec::new(),
        echo: Vec::new(),
    };

    while let [h, rest @ ..] = input {
        input = rest;
        match h >> 6 {
            0 => {
                let [len, rest @ ..] = input else { break };
                let len = usize::from(*len).min(rest.len());
                app.dev.rx.push_back(rest[..len].to_vec());
                input = &rest[len..];
            }
            1 => {
                let Some((v6, tcp)) = segment(*h, &mut input, &mut app.peers) else {
                    break;
                };
                let dst = if v6 { IpAddr::V6(V6) } else { IpAddr::V4(V4) };
                app.dev.rx.push_back(wrap(v6, dst, tcp));
            }
            2 => app.now += u64::from(h & 0x3f) * 50 * MS,
            _ => {
                if let Some(&id) = app.conns.get(usize::from(h & 7)) {
                    app.conns.retain(|&c| c != id);
                    app.stack.release(id, h & 8 != 0);
                }
            }
        }
        app.now += MS;
        app.poll();
    }

    // Everything released, the peers silent: after the timeouts and TIME-WAIT, only the
    // listeners are left.
    for _ in 0..80 {
        for id in app.conns.drain(..) {
            app.stack.release(id, true);
        }
        app.now += 250 * MS;
        app.poll();
    }
    for id in app.conns.drain(..) {
        app.stack.release(id, false);
    }
    app.now += 20_000 * MS;
    app.poll();
    app.poll();
    assert_eq!(app.stack.connections(), 0);
    assert_eq!(app.stack.sockets(), listeners, "sockets left behind");
});
