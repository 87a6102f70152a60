//! TCP checksum offload: the seed a device completes, and the completion itself.
//!
//! With offload the stack leaves the TCP checksum out (`Checksum::Rx`); the device sums
//! from the TCP header to the end of the packet and stores the complement, so the field
//! must first hold the pseudo-header's sum (what Linux leaves for CHECKSUM_PARTIAL).

use smoltcp::wire::{IpProtocol, Ipv4Address, Ipv6Address, checksum};

/// Where the checksum sits in a TCP header.
pub const TCP_CHECKSUM_AT: usize = 16;

/// Seeds the TCP checksum of `ip` (an IPv4 or IPv6 packet carrying TCP, as the stack
/// emitted it) with the folded, uncomplemented pseudo-header sum. Returns where the TCP
/// header starts; `None` if the packet is not TCP or too short.
pub fn seed_tcp(ip: &mut [u8]) -> Option<usize> {
    let (at, seed) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0xf) * 4;
            if ip.len() < 20 || ihl < 20 || IpProtocol::from(ip[9]) != IpProtocol::Tcp {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let tcp_len = u32::try_from(total.checked_sub(ihl)?).ok()?;
            let src = Ipv4Address::from(<[u8; 4]>::try_from(&ip[12..16]).ok()?);
            let dst = Ipv4Address::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?);
            (
                ihl,
                checksum::pseudo_header_v4(&src, &dst, IpProtocol::Tcp, tcp_len),
            )
        }
        6 => {
            if ip.len() < 40 || IpProtocol::from(ip[6]) != IpProtocol::Tcp {
                return None;
            }
            let tcp_len = u32::from(u16::from_be_bytes([ip[4], ip[5]]));
            let src = Ipv6Address::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
            let dst = Ipv6Address::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
            (
                40,
                checksum::pseudo_header_v6(&src, &dst, IpProtocol::Tcp, tcp_len),
            )
        }
        _ => return None,
    };
    ip.get_mut(at + TCP_CHECKSUM_AT..at + TCP_CHECKSUM_AT + 2)?
        .copy_from_slice(&seed.to_be_bytes());
    Some(at)
}

/// Completes a seeded TCP checksum the way a device does: sums `segment` (the TCP header
/// onwards, the seed in its checksum field) and stores the complement.
pub fn complete_tcp(segment: &mut [u8]) {
    if segment.len() < TCP_CHECKSUM_AT + 2 {
        return;
    }
    let sum = !checksum::data(segment);
    segment[TCP_CHECKSUM_AT..TCP_CHECKSUM_AT + 2].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// The ones'-complement sum of `b` as 16-bit big-endian words, folded.
    fn ones(b: &[u8]) -> u16 {
        let mut sum: u32 = b
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// A TCP segment (20-byte header, odd-length payload) behind an IPv4 or IPv6 header,
    /// with its checksum computed the textbook way; the checksum field zeroed.
    fn tcp_packet(v6: bool) -> (Vec<u8>, usize, u16) {
        let payload: Vec<u8> = (0..4097u32).map(|i| (i * 7 + 3) as u8).collect();
        let tcp_len = 20 + payload.len();
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&4420u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&51_000u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        tcp.extend_from_slice(&payload);
        let (mut ip, pseudo) = if v6 {
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&[0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            ip[24..40].copy_from_slice(&[0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            let mut pseudo = ip[8..40].to_vec();
            pseudo.extend_from_slice(&(tcp_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
            (ip, pseudo)
        } else {
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&[10, 99, 0, 1]);
            ip[16..20].copy_from_slice(&[10, 99, 0, 2]);
            let mut pseudo = ip[12..20].to_vec();
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            (ip, pseudo)
        };
        let mut all = pseudo;
        all.extend_from_slice(&tcp);
        let checksum = !ones(&all);
        let at = ip.len();
        ip.extend_from_slice(&tcp);
        (ip, at, checksum)
    }

    /// What a device (or Linux's skb_checksum_help) does with the seeded packet: sums from
    /// the TCP header to the end and stores the complement; that must be the textbook
    /// checksum.
    #[test]
    fn seeded_tcp_checksums_complete_to_the_real_ones() {
        for v6 in [false, true] {
            let (mut ip, at, expected) = tcp_packet(v6);
            assert_eq!(seed_tcp(&mut ip), Some(at));
            let completed = !ones(&ip[at..]);
            assert_eq!(completed, expected, "v6 = {v6}");
        }
        let mut udp = tcp_packet(false).0;
        udp[9] = 17;
        assert_eq!(seed_tcp(&mut udp), None, "not TCP");
        assert_eq!(seed_tcp(&mut [0x45, 0, 0]), None, "too short");
    }

    /// `complete_tcp` is that device: what it stores is the textbook checksum.
    #[test]
    fn completing_a_seed_gives_the_real_checksum() {
        for v6 in [false, true] {
            let (mut ip, at, expected) = tcp_packet(v6);
            seed_tcp(&mut ip).unwrap();
            complete_tcp(&mut ip[at..]);
            assert_eq!(
                u16::from_be_bytes([ip[at + 16], ip[at + 17]]),
                expected,
                "v6 = {v6}"
            );
        }
    }
}
