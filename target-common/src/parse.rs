//! The frame parser of the XDP program, shared so that the same code is unit-tested with byte
//! vectors and fuzzed on the host.
//!
//! Ethernet with at most two 802.1Q/802.1ad tags (QinQ); IPv4 (options skipped); IPv6 with
//! up to [`MAX_IPV6_EXT_HEADERS`] hop-by-hop, routing, destination-options or AH headers; TCP
//! with a data offset of at least 5. [`classify`] sorts every frame into one of three
//! [`Class`]es: a TCP packet whose header was reached ([`Parsed`]); an IP packet that is,
//! or may be, TCP but whose TCP header the program cannot reach ([`Class::Opaque`]: an IPv4
//! TCP fragment, any IPv6 fragment, an extension-header chain too long to walk, a truncated
//! TCP header), of which only the source address is known; and everything else (not IP, a
//! malformed IP header, UDP, ICMP, ...). The program passes the last to the kernel, and the
//! second too unless the source allow-list says otherwise: the kernel reassembles fragments
//! and walks any header chain, so such a packet can still reach a storage-port socket.
//!
//! Every header is copied out with one bounds check ([`Frame::read`]) and then indexed:
//! reading fields one at a time lets LLVM derive several packet pointers from one variable
//! offset, and the verifier rejects the ones whose check it cannot see.

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_HDR_LEN: usize = 4;
/// VLAN tags read before giving up on a frame (an 802.1ad tag and an 802.1Q tag: QinQ).
pub const MAX_VLAN_TAGS: usize = 2;
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

/// What [`classify`] can tell of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A TCP packet whose fixed header is inside the frame.
    Tcp(Parsed),
    /// An IP packet that is, or may be, TCP, whose TCP header cannot be reached: an IPv4
    /// TCP fragment (first or later), an IPv6 packet with a fragment header, an IPv6
    /// extension-header chain longer than [`MAX_IPV6_EXT_HEADERS`] or reaching past
    /// [`MAX_L4_OFFSET`] or the frame, a TCP header cut short or with a data offset below
    /// 5. Its destination port is unknown; its source is read from a well-formed IP header.
    Opaque(Source),
    /// Not IPv4 or IPv6 behind at most [`MAX_VLAN_TAGS`] tags, an IP header the kernel
    /// drops too (wrong version, IHL below 5, cut short), or an IP packet that is not TCP
    /// (UDP, ICMP, ICMPv6, ESP, ... also when fragmented: every IPv4 fragment carries the
    /// protocol).
    Other,
}

/// Where the IP layer leaves a packet.
enum L3 {
    /// TCP at this offset (not yet bounds-checked).
    Tcp(usize, Source),
    Opaque(Source),
    Other,
}

#[inline(always)]
pub const fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// The ethertype behind at most [`MAX_VLAN_TAGS`] tags and the offset of the header it
/// names, or `None` for a frame too short for an IP header or with more tags.
#[inline(always)]
pub fn link_layer<F: Frame + ?Sized>(f: &F) -> Option<(u16, usize)> {
    // 18 bytes: an untagged frame this short cannot hold an IP header either.
    let eth = f.read::<{ ETH_HDR_LEN + VLAN_HDR_LEN }>(0)?;
    let outer = u16::from_be_bytes([eth[12], eth[13]]);
    if !is_vlan(outer) {
        return Some((outer, ETH_HDR_LEN));
    }
    let inner = u16::from_be_bytes([eth[16], eth[17]]);
    if !is_vlan(inner) {
        return Some((inner, ETH_HDR_LEN + VLAN_HDR_LEN));
    }
    let t = f.read::<2>(ETH_HDR_LEN + 2 * VLAN_HDR_LEN - 2)?;
    let third = u16::from_be_bytes([t[0], t[1]]);
    // A third tag: nothing this program serves is stacked so deep.
    (!is_vlan(third)).then_some((third, ETH_HDR_LEN + 2 * VLAN_HDR_LEN))
}

/// Parses Ethernet / up to two VLAN tags / IPv4 or IPv6 / TCP, or says `None`: [`classify`]
/// for callers that need a reachable TCP header and nothing else.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(f: &F) -> Option<Parsed> {
    match classify(f) {
        Class::Tcp(p) => Some(p),
        Class::Opaque(_) | Class::Other => None,
    }
}

/// Sorts a frame into a [`Class`].
#[inline(always)]
pub fn classify<F: Frame + ?Sized>(f: &F) -> Class {
    let Some((ethertype, l3)) = link_layer(f) else {
        return Class::Other;
    };
    let ip = match ethertype {
        ETH_P_IPV4 => parse_ipv4(f, l3),
        ETH_P_IPV6 => parse_ipv6(f, l3),
        _ => return Class::Other,
    };
    let (l4, source) = match ip {
        L3::Tcp(l4, source) => (l4, source),
        L3::Opaque(source) => return Class::Opaque(source),
        L3::Other => return Class::Other,
    };
    if l4 > MAX_L4_OFFSET {
        return Class::Opaque(source);
    }
    let Some(tcp) = f.read::<TCP_MIN_HDR_LEN>(l4) else {
        return Class::Opaque(source);
    };
    // A data offset below the fixed header: the kernel rejects it, the program need not
    // look at it.
    if usize::from(tcp[12] >> 4) * 4 < TCP_MIN_HDR_LEN {
        return Class::Opaque(source);
    }
    Class::Tcp(Parsed {
        source,
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        l4_offset: l4,
    })
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(f: &F, off: usize) -> L3 {
    let Some(h) = f.read::<IPV4_MIN_HDR_LEN>(off) else {
        return L3::Other;
    };
    let hdr_len = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || hdr_len < IPV4_MIN_HDR_LEN {
        return L3::Other;
    }
    if h[9] != IPPROTO_TCP {
        return L3::Other;
    }
    let source = Source::V4([h[12], h[13], h[14], h[15]]);
    // More-fragments flag or a non-zero offset: the kernel reassembles, and a later
    // fragment may rewrite what this one says (RFC 1858), so not even the first
    // fragment's port is trusted.
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return L3::Opaque(source);
    }
    L3::Tcp(off + hdr_len, source)
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(f: &F, off: usize) -> L3 {
    let Some(h) = f.read::<IPV6_HDR_LEN>(off) else {
        return L3::Other;
    };
    if h[0] >> 4 != 6 {
        return L3::Other;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let source = Source::V6(src);
    let mut next = h[6];
    let mut l4 = off + IPV6_HDR_LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_TCP {
            return L3::Tcp(l4, source);
        }
        let ah = match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => false,
            IPV6_AH => true,
            // A fragment's TCP header may be in another fragment, and the first
            // fragment's next header is the only one reassembly uses: the kernel decides.
            IPV6_FRAGMENT => return L3::Opaque(source),
            // UDP, ICMPv6 (neighbour discovery included), ESP, no next header, ...
            _ => return L3::Other,
        };
        // Every extension header starts with (next header, length).
        let Some(ext) = f.read::<2>(l4) else {
            return L3::Opaque(source);
        };
        let len = if ah {
            (usize::from(ext[1]) + 2) * 4
        } else {
            (usize::from(ext[1]) + 1) * 8
        };
        next = ext[0];
        l4 += len;
        if l4 > MAX_L4_OFFSET {
            return L3::Opaque(source);
        }
    }
    match next {
        IPPROTO_TCP => L3::Tcp(l4, source),
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT => L3::Opaque(source),
        _ => L3::Other,
    }
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

    /// `payload` behind an 802.1ad tag and an 802.1Q tag, as `outer`/`inner` TPIDs.
    fn qinq(outer: u16, inner: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut tags = std::vec![0, 5];
        tags.extend_from_slice(&inner.to_be_bytes());
        tags.extend_from_slice(&[0, 7]);
        tags.extend_from_slice(&ethertype.to_be_bytes());
        tags.extend_from_slice(payload);
        eth(outer, &tags)
    }

    const SRC4: Source = Source::V4([10, 0, 0, 2]);

    fn src6() -> Source {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = 2;
        Source::V6(a)
    }

    #[test]
    fn ipv4_fragments_are_opaque_with_their_source() {
        let t = tcp(4420);
        // The first fragment holds the whole TCP header and still is not trusted.
        let first = eth(ETH_P_IPV4, &ipv4(5, 0x2000, IPPROTO_TCP, &t));
        let later = eth(ETH_P_IPV4, &ipv4(5, 0x0003, IPPROTO_TCP, &t[..8]));
        let last = eth(ETH_P_IPV4, &ipv4(5, 0x0001, IPPROTO_TCP, &[]));
        for (what, f) in [("first", first), ("later", later), ("last", last)] {
            assert_eq!(classify(f.as_slice()), Class::Opaque(SRC4), "{what}");
        }
    }

    #[test]
    fn non_tcp_fragments_and_protocols_are_other() {
        let udp_fragment = eth(ETH_P_IPV4, &ipv4(5, 0x2000, 17, &[0; 16]));
        let icmp = eth(ETH_P_IPV4, &ipv4(5, 0, 1, &[8, 0, 0, 0]));
        // MLD: hop-by-hop (router alert), then ICMPv6.
        let mut mld = ext(58, 0, 8);
        mld.extend_from_slice(&[143, 0, 0, 0]);
        let mld = eth(ETH_P_IPV6, &ipv6(IPV6_HOPOPTS, &mld));
        let esp = eth(ETH_P_IPV6, &ipv6(50, &[0; 16]));
        for (what, f) in [
            ("UDP fragment", udp_fragment),
            ("ICMP", icmp),
            ("MLD", mld),
            ("ESP", esp),
        ] {
            assert_eq!(classify(f.as_slice()), Class::Other, "{what}");
        }
    }

    #[test]
    fn ipv6_fragment_header_is_opaque() {
        let mut frag = std::vec![IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 1];
        frag.extend(tcp(4420));
        let f = eth(ETH_P_IPV6, &ipv6(IPV6_FRAGMENT, &frag));
        assert_eq!(classify(f.as_slice()), Class::Opaque(src6()));
        // Behind a destination-options header, and with a truncated fragment header.
        let mut behind = ext(IPV6_FRAGMENT, 0, 8);
        behind.extend(frag);
        let f = eth(ETH_P_IPV6, &ipv6(IPV6_DSTOPTS, &behind));
        assert_eq!(classify(f.as_slice()), Class::Opaque(src6()));
        let f = eth(ETH_P_IPV6, &ipv6(IPV6_FRAGMENT, &[IPPROTO_TCP]));
        assert_eq!(classify(f.as_slice()), Class::Opaque(src6()));
    }

    #[test]
    fn ipv6_chains_the_program_cannot_walk_are_opaque() {
        let chain = |n: usize| {
            let mut c = Vec::new();
            for i in 0..n {
                let next = if i + 1 == n {
                    IPPROTO_TCP
                } else {
                    IPV6_DSTOPTS
                };
                c.extend(ext(next, 0, 8));
            }
            c.extend(tcp(4420));
            eth(ETH_P_IPV6, &ipv6(IPV6_DSTOPTS, &c))
        };
        assert_eq!(
            classify(chain(MAX_IPV6_EXT_HEADERS + 1).as_slice()),
            Class::Opaque(src6()),
            "7 extension headers"
        );
        let mut far = ext(IPPROTO_TCP, 255, 8);
        far.extend(tcp(4420));
        let far = eth(ETH_P_IPV6, &ipv6(IPV6_HOPOPTS, &far));
        assert_eq!(classify(far.as_slice()), Class::Opaque(src6()), "past 512");
        let cut = eth(ETH_P_IPV6, &ipv6(IPV6_HOPOPTS, &[]));
        assert_eq!(classify(cut.as_slice()), Class::Opaque(src6()), "cut short");
    }

    #[test]
    fn tcp_headers_cut_short_or_malformed_are_opaque() {
        let t = tcp(4420);
        let cut = eth(ETH_P_IPV4, &ipv4(5, 0, IPPROTO_TCP, &t[..19]));
        let mut doff = ipv4(5, 0, IPPROTO_TCP, &t);
        doff[20 + 12] = 0x40;
        let doff = eth(ETH_P_IPV4, &doff);
        for f in [cut, doff] {
            assert_eq!(classify(f.as_slice()), Class::Opaque(SRC4));
        }
    }

    #[test]
    fn qinq_tcp_is_parsed_through_both_tags() {
        for (outer, inner) in [
            (ETH_P_8021AD, ETH_P_8021Q),
            (ETH_P_8021Q, ETH_P_8021Q),
            (ETH_P_8021AD, ETH_P_8021AD),
        ] {
            let f = qinq(
                outer,
                inner,
                ETH_P_IPV4,
                &ipv4(5, 0, IPPROTO_TCP, &tcp(3260)),
            );
            assert_eq!(
                classify(f.as_slice()),
                Class::Tcp(Parsed {
                    source: SRC4,
                    dst_port: 3260,
                    l4_offset: 14 + 8 + 20,
                }),
                "{outer:#x}/{inner:#x}"
            );
            let f = qinq(outer, inner, ETH_P_IPV6, &ipv6(IPPROTO_TCP, &tcp(4420)));
            let p = parse(f.as_slice()).unwrap();
            assert_eq!((p.source, p.l4_offset), (src6(), 14 + 8 + 40));
        }
    }

    #[test]
    fn qinq_fragment_is_opaque_and_a_third_tag_is_other() {
        let frag = ipv4(5, 0x2000, IPPROTO_TCP, &tcp(4420));
        let f = qinq(ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, &frag);
        assert_eq!(classify(f.as_slice()), Class::Opaque(SRC4));
        // Three tags: outer, inner, and a third in place of the ethertype.
        let mut third = std::vec![0, 9];
        third.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        third.extend(ipv4(5, 0, IPPROTO_TCP, &tcp(4420)));
        let f = qinq(ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q, &third);
        assert_eq!(classify(f.as_slice()), Class::Other);
    }

    #[test]
    fn arp_and_malformed_ip_headers_are_other() {
        let t = tcp(4420);
        let mut v4_in_v6 = ipv6(IPPROTO_TCP, &t);
        v4_in_v6[0] = 0x40;
        let cases: [(&str, Vec<u8>); 7] = [
            ("ARP", eth(0x0806, &[0; 28])),
            (
                "ARP in QinQ",
                qinq(ETH_P_8021AD, ETH_P_8021Q, 0x0806, &[0; 28]),
            ),
            ("IHL 4", ipv4_raw(0x44, &t)),
            ("IPv6 version 4", eth(ETH_P_IPV6, &v4_in_v6)),
            ("IPv4 cut short", eth(ETH_P_IPV4, &[0x45, 0, 0])),
            (
                "IPv6 cut short",
                eth(ETH_P_IPV6, &ipv6(IPPROTO_TCP, &[])[..39]),
            ),
            ("empty", Vec::new()),
        ];
        for (what, f) in cases {
            assert_eq!(classify(f.as_slice()), Class::Other, "{what}");
        }
    }

    #[test]
    fn truncating_a_qinq_frame_never_parses_past_its_end() {
        let f = qinq(
            ETH_P_8021AD,
            ETH_P_8021Q,
            ETH_P_IPV4,
            &ipv4(5, 0, IPPROTO_TCP, &tcp(4420)),
        );
        assert!(parse(f.as_slice()).is_some());
        for len in 0..f.len() {
            assert_eq!(parse(&f[..len]), None, "length {len}");
        }
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
