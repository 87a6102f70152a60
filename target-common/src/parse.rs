//! The frame parser of the XDP program, shared so that the same code is unit-tested with byte
//! vectors and fuzzed on the host.
//!
//! Ethernet with at most one 802.1Q/802.1ad tag; IPv4 (options skipped, fragments
//! rejected); IPv6 with up to [`MAX_IPV6_EXT_HEADERS`] hop-by-hop, routing,
//! destination-options or AH headers (a fragment header is rejected); TCP with a data offset
//! of at least 5. Anything else is `None`: the program then passes the frame to the kernel.
//!
//! Every header is copied out with one bounds check ([`Frame::read`]) and then indexed:
//! reading fields one at a time lets LLVM derive several packet pointers from one variable
//! offset, and the verifier rejects the ones whose check it cannot see.

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_HDR_LEN: usize = 4;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPV4_MIN_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;
pub const TCP_MIN_HDR_LEN: usize = 20;
pub const IPPROTO_TCP: u8 = 6;
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AH: u8 = 51;
pub const IPV6_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up on a packet.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// No header chain that is steered reaches past this offset; it also bounds the offsets
/// the verifier has to track.
pub const MAX_L4_OFFSET: usize = 512;

/// Bounds-checked access to a frame's bytes.
pub trait Frame {
    /// The `N` bytes at `offset`, or `None` if they are not all inside the frame.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// The source address of a parsed packet, in network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// What the program needs to know of a TCP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub source: Source,
    pub dst_port: u16,
    /// Offset of the TCP header from the start of the frame.
    pub l4_offset: usize,
}

#[inline(always)]
pub const fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// Parses Ethernet / [VLAN] / IPv4 or IPv6 / TCP, or says `None`.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(f: &F) -> Option<Parsed> {
    // 18 bytes: an untagged frame this short cannot hold an IP header either.
    let eth = f.read::<{ ETH_HDR_LEN + VLAN_HDR_LEN }>(0)?;
    let outer = u16::from_be_bytes([eth[12], eth[13]]);
    let (ethertype, l3) = if is_vlan(outer) {
        (
            u16::from_be_bytes([eth[16], eth[17]]),
            ETH_HDR_LEN + VLAN_HDR_LEN,
        )
    } else {
        (outer, ETH_HDR_LEN)
    };
    let (l4, source) = match ethertype {
        ETH_P_IPV4 => parse_ipv4(f, l3)?,
        ETH_P_IPV6 => parse_ipv6(f, l3)?,
        _ => return None,
    };
    if l4 > MAX_L4_OFFSET {
        return None;
    }
    let tcp = f.read::<TCP_MIN_HDR_LEN>(l4)?;
    // A data offset below the fixed header is left to the kernel to reject.
    if usize::from(tcp[12] >> 4) * 4 < TCP_MIN_HDR_LEN {
        return None;
    }
    Some(Parsed {
        source,
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        l4_offset: l4,
    })
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(f: &F, off: usize) -> Option<(usize, Source)> {
    let h = f.read::<IPV4_MIN_HDR_LEN>(off)?;
    let hdr_len = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || hdr_len < IPV4_MIN_HDR_LEN {
        return None;
    }
    // More-fragments flag or a non-zero offset: the kernel reassembles.
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 || h[9] != IPPROTO_TCP {
        return None;
    }
    Some((off + hdr_len, Source::V4([h[12], h[13], h[14], h[15]])))
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(f: &F, off: usize) -> Option<(usize, Source)> {
    let h = f.read::<IPV6_HDR_LEN>(off)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let mut next = h[6];
    let mut l4 = off + IPV6_HDR_LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_TCP {
            return Some((l4, Source::V6(src)));
        }
        // Every extension header starts with (next header, length).
        let ext = f.read::<2>(l4)?;
        let len = match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => (usize::from(ext[1]) + 1) * 8,
            IPV6_AH => (usize::from(ext[1]) + 2) * 4,
            // A fragment's TCP header may be in another fragment: the kernel reassembles.
            IPV6_FRAGMENT => return None,
            _ => return None,
        };
        next = ext[0];
        l4 += len;
        if l4 > MAX_L4_OFFSET {
            return None;
        }
    }
    (next == IPPROTO_TCP).then_some((l4, Source::V6(src)))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const MACS: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = MACS.to_vec();
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn tcp(dst_port: u16) -> Vec<u8> {
        let mut t = std::vec![0u8; 20];
        t[0..2].copy_from_slice(&5555u16.to_be_bytes());
        t[2..4].copy_from_slice(&dst_port.to_be_bytes());
        t[12] = 0x50;
        t[13] = 0x02;
        t
    }

    fn ipv4(ihl: u8, frag: u16, proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = std::vec![0u8; usize::from(ihl) * 4];
        h[0] = 0x40 | ihl;
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&[10, 0, 0, 2]);
        h[16..20].copy_from_slice(&[10, 0, 0, 1]);
        h.extend_from_slice(payload);
        h
    }

    fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = std::vec![0u8; 40];
        h[0] = 0x60;
        h[6] = next;
        h[8] = 0xfd;
        h[23] = 2;
        h[24] = 0xfd;
        h[39] = 1;
        h.extend_from_slice(payload);
        h
    }

    fn ext(next: u8, len_units: u8, total: usize) -> Vec<u8> {
        let mut e = std::vec![0u8; total];
        e[0] = next;
        e[1] = len_units;
        e
    }

    #[test]
    fn ipv4_tcp() {
        let f = eth(ETH_P_IPV4, &ipv4(5, 0, IPPROTO_TCP, &tcp(4420)));
        let p = parse(f.as_slice()).unwrap();
        assert_eq!(
            p,
            Parsed {
                source: Source::V4([10, 0, 0, 2]),
                dst_port: 4420,
                l4_offset: 34
            }
        );
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let f = eth(ETH_P_IPV4, &ipv4(7, 0, IPPROTO_TCP, &tcp(3260)));
        assert_eq!(parse(f.as_slice()).unwrap().l4_offset, 14 + 28);
    }

    #[test]
    fn vlan_tag_is_skipped() {
        for tpid in [ETH_P_8021Q, ETH_P_8021AD] {
            let mut inner = std::vec![0, 7];
            inner.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
            inner.extend_from_slice(&ipv4(5, 0, IPPROTO_TCP, &tcp(8009)));
            let p = parse(eth(tpid, &inner).as_slice()).unwrap();
            assert_eq!((p.dst_port, p.l4_offset), (8009, 38));
        }
    }

    #[test]
    fn ipv6_with_extension_headers() {
        let mut chain = ext(IPV6_ROUTING, 0, 8); // hop-by-hop, 8 bytes
        chain.extend(ext(IPV6_AH, 1, 16)); // routing, 16 bytes
        chain.extend(ext(IPPROTO_TCP, 2, 16)); // AH: (2 + 2) * 4 = 16 bytes
        chain.extend(tcp(4420));
        let p = parse(eth(ETH_P_IPV6, &ipv6(IPV6_HOPOPTS, &chain)).as_slice()).unwrap();
        let mut want_src = [0u8; 16];
        want_src[0] = 0xfd;
        want_src[15] = 2;
        assert_eq!(
            p,
            Parsed {
                source: Source::V6(want_src),
                dst_port: 4420,
                l4_offset: 14 + 40 + 40
            }
        );
    }

    #[test]
    fn ipv6_walk_is_bounded() {
        let build = |n: usize| {
            let mut chain = Vec::new();
            for i in 0..n {
                chain.extend(ext(
                    if i + 1 == n {
                        IPPROTO_TCP
                    } else {
                        IPV6_DSTOPTS
                    },
                    0,
                    8,
                ));
            }
            chain.extend(tcp(4420));
            eth(ETH_P_IPV6, &ipv6(IPV6_DSTOPTS, &chain))
        };
        assert!(parse(build(MAX_IPV6_EXT_HEADERS).as_slice()).is_some());
        assert!(parse(build(MAX_IPV6_EXT_HEADERS + 1).as_slice()).is_none());
    }

    #[test]
    fn rejected_shapes() {
        let t = tcp(4420);
        let mut short_doff = ipv4(5, 0, IPPROTO_TCP, &t);
        short_doff[20 + 12] = 0x40;
        let mut v4_in_v6 = ipv6(IPPROTO_TCP, &t);
        v4_in_v6[0] = 0x40;
        let mut far_ext = ext(IPPROTO_TCP, 255, 8);
        far_ext.extend_from_slice(&t);
        let cases: [(&str, Vec<u8>); 12] = [
            ("empty", Vec::new()),
            ("header only", eth(ETH_P_IPV4, &[])),
            ("ARP", eth(0x0806, &[0; 28])),
            ("IHL 4", ipv4_raw(0x44, &t)),
            (
                "IHL past end",
                eth(ETH_P_IPV4, &ipv4(15, 0, IPPROTO_TCP, &[])[..30]),
            ),
            (
                "more fragments",
                eth(ETH_P_IPV4, &ipv4(5, 0x2000, IPPROTO_TCP, &t)),
            ),
            (
                "fragment offset",
                eth(ETH_P_IPV4, &ipv4(5, 0x0001, IPPROTO_TCP, &t)),
            ),
            ("UDP", eth(ETH_P_IPV4, &ipv4(5, 0, 17, &t))),
            (
                "truncated TCP",
                eth(ETH_P_IPV4, &ipv4(5, 0, IPPROTO_TCP, &t[..19])),
            ),
            ("data offset 4", eth(ETH_P_IPV4, &short_doff)),
            ("IPv6 version 4", eth(ETH_P_IPV6, &v4_in_v6)),
            (
                "IPv6 ext past limit",
                eth(ETH_P_IPV6, &ipv6(IPV6_HOPOPTS, &far_ext)),
            ),
        ];
        for (what, f) in cases {
            assert_eq!(parse(f.as_slice()), None, "{what}");
        }
        let frag = eth(
            ETH_P_IPV6,
            &ipv6(IPV6_FRAGMENT, &[IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 1]),
        );
        assert_eq!(parse(frag.as_slice()), None, "IPv6 fragment header");
    }

    fn ipv4_raw(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = ipv4(5, 0, IPPROTO_TCP, payload);
        h[0] = first_byte;
        eth(ETH_P_IPV4, &h)
    }

    #[test]
    fn truncating_a_valid_frame_never_parses_past_its_end() {
        let f = eth(ETH_P_IPV4, &ipv4(5, 0, IPPROTO_TCP, &tcp(4420)));
        for len in 0..f.len() {
            assert_eq!(parse(&f[..len]), None, "length {len}");
        }
    }
}
