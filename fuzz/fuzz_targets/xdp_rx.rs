//! The AF_XDP path's frame classification on arbitrary frames: it never panics, a SYN it
//! accepts is really a SYN without ACK to one of the given addresses, with the flow and MAC
//! the frame carries, and the flow of the answer the stack would write comes back equal.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use target_common::parse::parse;
use target_common::rx::{Heard, flow_of, heard};

fuzz_target!(|data: &[u8]| {
    // The first 16 bytes name one local address (IPv4 when the first byte is even).
    let Some((local, frame)) = data.split_first_chunk::<16>() else {
        return;
    };
    let local = if local[0] % 2 == 0 {
        IpAddr::from([local[1], local[2], local[3], local[4]])
    } else {
        IpAddr::from(*local)
    };
    match heard(frame, &[local]) {
        Heard::Foreign => {}
        Heard::Segment => assert!(parse(frame).is_some()),
        Heard::Syn(flow, mac) => {
            let p = parse(frame).expect("a SYN was parsed");
            assert_eq!(mac, frame[6..12]);
            assert_eq!(flow.port, p.dst_port);
            let flags = frame[p.l4_offset + 13];
            assert!(flags & 0x02 != 0 && flags & 0x10 == 0);
            // The answer: our address and port to the peer's, as the stack writes it.
            let mut ip = Vec::new();
            match (local, flow.peer) {
                (IpAddr::V4(us), IpAddr::V4(peer)) => {
                    ip.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
                    ip.extend_from_slice(&us.octets());
                    ip.extend_from_slice(&peer.octets());
                }
                (IpAddr::V6(us), IpAddr::V6(peer)) => {
                    ip.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
                    ip.extend_from_slice(&us.octets());
                    ip.extend_from_slice(&peer.octets());
                }
                _ => panic!(
                    "a SYN to {local} from {} crossed address families",
                    flow.peer
                ),
            }
            ip.extend_from_slice(&flow.port.to_be_bytes());
            ip.extend_from_slice(&flow.peer_port.to_be_bytes());
            ip.extend_from_slice(&[0; 16]);
            assert_eq!(flow_of(&ip), Some(flow));
        }
    }
    let _ = flow_of(frame);
});
