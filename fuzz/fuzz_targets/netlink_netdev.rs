//! The netlink replies the XDP path reads to learn a device's AF_XDP abilities, on
//! arbitrary bytes: never a panic; a reply that parses is one the kernel could have sent
//! (its header's length within the bytes), and parsing it twice gives the same answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_wire::netlink::{NetlinkError, parse_dev, parse_family_id};

fuzz_target!(|data: &[u8]| {
    let dev = parse_dev(data);
    let family = parse_family_id(data);
    if dev.is_ok() || family.is_ok() {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("a header was read")) as usize;
        assert!(len <= data.len(), "a reply longer than its bytes was read");
    }
    if let Err(NetlinkError::Errno(e)) = &dev {
        assert_eq!(family, Err(NetlinkError::Errno(*e)), "an error reply is one for both");
    }
    assert_eq!(parse_dev(data), dev);
});
