//! The XDP program's frame parser on arbitrary bytes: it must never panic or read past the
//! frame, and whatever it accepts must really be there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_common::parse::{
    ETH_P_IPV4, ETH_P_IPV6, Frame, MAX_L4_OFFSET, Source, TCP_MIN_HDR_LEN, is_vlan, parse,
};

fuzz_target!(|data: &[u8]| {
    let Some(p) = parse(data) else { return };
    assert!(p.l4_offset <= MAX_L4_OFFSET);
    let tcp: [u8; TCP_MIN_HDR_LEN] = data
        .read(p.l4_offset)
        .expect("accepted TCP header is inside the frame");
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), p.dst_port);
    assert!(usize::from(tcp[12] >> 4) * 4 >= TCP_MIN_HDR_LEN);
    let outer = u16::from_be_bytes([data[12], data[13]]);
    let (ethertype, l3) = if is_vlan(outer) {
        (u16::from_be_bytes([data[16], data[17]]), 18)
    } else {
        (outer, 14)
    };
    match p.source {
        Source::V4(src) => {
            assert_eq!(ethertype, ETH_P_IPV4);
            assert_eq!(data[l3] >> 4, 4);
            assert_eq!(&data[l3 + 12..l3 + 16], &src);
            assert_eq!(p.l4_offset, l3 + usize::from(data[l3] & 0x0f) * 4);
        }
        Source::V6(src) => {
            assert_eq!(ethertype, ETH_P_IPV6);
            assert_eq!(data[l3] >> 4, 6);
            assert_eq!(&data[l3 + 8..l3 + 24], &src);
            assert!(p.l4_offset >= l3 + 40);
        }
    }
});
