//! What the AF_XDP path makes of a frame the program steered to it, and which connection a
//! frame it sends belongs to: the pure half of `target-user`'s next-hop table, here so that
//! it is unit-tested and fuzzed with the parser it builds on.
//!
//! A connection's next hop (the MAC to answer it through) is learned from the SYN that
//! opened it, and only from a SYN to one of the stack's own addresses; every other frame
//! teaches nothing. Frames that are not untagged IPv4/IPv6 TCP to one of those addresses
//! are foreign: the user-space stack could not answer them (its frames are untagged).

use core::net::IpAddr;

use crate::parse::{parse, Source, ETH_HDR_LEN, ETH_P_IPV4, ETH_P_IPV6};

/// A TCP connection as its frames name it: the peer's address and port, and our port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub peer: IpAddr,
    pub peer_port: u16,
    pub port: u16,
}

/// What a received frame is, for the next-hop table and the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A SYN (without ACK) opening the flow, from this MAC.
    Syn(Flow, [u8; 6]),
    /// Another TCP segment to one of our addresses.
    Segment,
    /// Not an untagged IPv4/IPv6 TCP segment to one of our addresses: to be dropped.
    Foreign,
}

/// Classifies a received Ethernet frame; `locals` are the stack's addresses.
pub fn heard(f: &[u8], locals: &[IpAddr]) -> Heard {
    let Some(t) = f.get(12..14) else {
        return Heard::Foreign;
    };
    let dst = match u16::from_be_bytes([t[0], t[1]]) {
        ETH_P_IPV4 => f
            .get(ETH_HDR_LEN + 16..ETH_HDR_LEN + 20)
            .and_then(|a| <[u8; 4]>::try_from(a).ok())
            .map(IpAddr::from),
        ETH_P_IPV6 => f
            .get(ETH_HDR_LEN + 24..ETH_HDR_LEN + 40)
            .and_then(|a| <[u8; 16]>::try_from(a).ok())
            .map(IpAddr::from),
        // 802.1Q/802.1ad and the rest.
        _ => None,
    };
    let (Some(dst), Some(p)) = (dst, parse(f)) else {
        return Heard::Foreign;
    };
    if !locals.contains(&dst) {
        return Heard::Foreign;
    }
    let Some(tcp) = f.get(p.l4_offset..p.l4_offset + 14) else {
        return Heard::Foreign;
    };
    let (syn, ack) = (tcp[13] & 0x02 != 0, tcp[13] & 0x10 != 0);
    if !syn || ack {
        return Heard::Segment;
    }
    let peer = match p.source {
        Source::V4(a) => IpAddr::from(a),
        Source::V6(a) => IpAddr::from(a),
    };
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&f[6..12]);
    Heard::Syn(
        Flow {
            peer,
            peer_port: u16::from_be_bytes([tcp[0], tcp[1]]),
            port: p.dst_port,
        },
        mac,
    )
}

/// The connection an IP packet the stack wrote belongs to (its destination), or `None`.
pub fn flow_of(ip: &[u8]) -> Option<Flow> {
    let (peer, tcp) = match ip.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let a: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (IpAddr::from(a), ip.get(ihl..ihl.checked_add(4)?)?)
        }
        Some(6) => {
            let a: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::from(a), ip.get(40..44)?)
        }
        _ => return None,
    };
    Some(Flow {
        peer,
        peer_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        port: u16::from_be_bytes([tcp[0], tcp[1]]),
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use core::net::Ipv4Addr;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    fn flow(i: u32) -> Flow {
        Flow {
            peer: ip(i),
            peer_port: 40_000,
            port: 4420,
        }
    }

    /// An Ethernet/IPv4/TCP frame from `src` (MAC `mac`, port 40000) to `dst`:4420.
    fn frame(mac: [u8; 6], src: IpAddr, dst: IpAddr, flags: u8, tag: bool) -> Vec<u8> {
        let mut f = Vec::from([0u8; 6]);
        f.extend_from_slice(&mac);
        if tag {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        }
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
            unreachable!("IPv4 in these tests")
        };
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&s.octets());
        f.extend_from_slice(&d.octets());
        f.extend_from_slice(&40_000u16.to_be_bytes());
        f.extend_from_slice(&4420u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn only_a_syn_to_one_of_our_addresses_names_a_flow_and_its_mac() {
        let us = ip(100);
        let syn = frame([1; 6], ip(1), us, 0x02, false);
        assert_eq!(heard(&syn, &[us]), Heard::Syn(flow(1), [1; 6]));
        // Not for us, tagged, truncated, or not a SYN.
        assert_eq!(
            heard(&frame([1; 6], ip(1), ip(101), 0x02, false), &[us]),
            Heard::Foreign
        );
        assert_eq!(
            heard(&frame([1; 6], ip(1), us, 0x02, true), &[us]),
            Heard::Foreign
        );
        assert_eq!(heard(&syn[..30], &[us]), Heard::Foreign);
        assert_eq!(
            heard(&frame([1; 6], ip(1), us, 0x12, false), &[us]),
            Heard::Segment
        );
        assert_eq!(
            heard(&frame([1; 6], ip(1), us, 0x10, false), &[us]),
            Heard::Segment
        );
    }

    #[test]
    fn an_answer_belongs_to_the_flow_its_syn_opened() {
        let mut answer = frame([0; 6], ip(100), ip(1), 0x12, false);
        answer[34..36].copy_from_slice(&4420u16.to_be_bytes());
        answer[36..38].copy_from_slice(&40_000u16.to_be_bytes());
        assert_eq!(flow_of(&answer[ETH_HDR_LEN..]), Some(flow(1)));
        assert_eq!(flow_of(&answer[ETH_HDR_LEN..ETH_HDR_LEN + 21]), None);
        assert_eq!(flow_of(&[]), None);
    }
}
