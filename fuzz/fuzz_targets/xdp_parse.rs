//! The XDP program's frame parser on arbitrary bytes: it must never panic or read past the
//! frame, and whatever it reports (a TCP header, or only a source) must really be there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_common::parse::{
    Class, ETH_P_IPV4, ETH_P_IPV6, Frame, IPPROTO_TCP, MAX_L4_OFFSET, Source, TCP_MIN_HDR_LEN,
    classify, is_vlan, parse,
};

fuzz_target!(|data: &[u8]| {
    let class = classify(data);
    let tcp_only = match class {
        Class::Tcp(p) => Some(p),
        Class::Opaque(_) | Class::Other => None,
    };
    assert_eq!(parse(data), tcp_only);
    let source = match class {
        Class::Other => return,
        Class::Tcp(p) => {
            assert!(p.l4_offset <= MAX_L4_OFFSET);
            let tcp: [u8; TCP_MIN_HDR_LEN] = data
                .read(p.l4_offset)
                .expect("accepted TCP header is inside the frame");
            assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), p.dst_port);
            assert!(usize::from(tcp[12] >> 4) * 4 >= TCP_MIN_HDR_LEN);
            p.source
        }
        Class::Opaque(s) => s,
    };
    // At most two tags, read here independently of the parser.
    let mut ethertype = u16::from_be_bytes([data[12], data[13]]);
    let mut l3 = 14;
    for _ in 0..2 {
        if is_vlan(ethertype) {
            ethertype = u16::from_be_bytes([data[l3 + 2], data[l3 + 3]]);
            l3 += 4;
        }
    }
    match source {
        Source::V4(src) => {
            assert_eq!(ethertype, ETH_P_IPV4);
            assert_eq!(data[l3] >> 4, 4);
            assert!(data[l3] & 0x0f >= 5);
            assert_eq!(
                data[l3 + 9],
                IPPROTO_TCP,
                "only TCP is ever opaque or parsed"
            );
            assert_eq!(&data[l3 + 12..l3 + 16], &src);
            if let Class::Tcp(p) = class {
                assert_eq!(p.l4_offset, l3 + usize::from(data[l3] & 0x0f) * 4);
                let frag = u16::from_be_bytes([data[l3 + 6], data[l3 + 7]]);
                assert_eq!(frag & 0x3fff, 0, "a fragment is never parsed as TCP");
            }
        }
        Source::V6(src) => {
            assert_eq!(ethertype, ETH_P_IPV6);
            assert_eq!(data[l3] >> 4, 6);
            assert_eq!(&data[l3 + 8..l3 + 24], &src);
            if let Class::Tcp(p) = class {
                assert!(p.l4_offset >= l3 + 40);
            }
        }
    }
});
