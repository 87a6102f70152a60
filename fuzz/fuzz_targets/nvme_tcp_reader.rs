//! The NVMe/TCP PDU reader on an arbitrary byte stream, cut at arbitrary points: it never
//! panics, never hands out more data than the PDU header announced or the limits allow,
//! and produces events in a valid order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_proto::nvme_tcp::reader::{Event, PduReader, ReaderConfig, Role};

const MAX_IN_CAPSULE: usize = 8192;
const MAX_DATA_PDU: usize = 16384;

fuzz_target!(|input: &[u8]| {
    // First byte: options; second: chunk size; the rest: the stream.
    let [opts, chunk, stream @ ..] = input else {
        return;
    };
    let digests = opts & 1 != 0;
    let role = if opts & 2 != 0 {
        Role::Host
    } else {
        Role::Controller
    };
    let config = ReaderConfig {
        role,
        header_digest: digests,
        data_digest: digests,
        pda_bytes: 4 << (opts >> 2 & 3),
        max_in_capsule: MAX_IN_CAPSULE,
        max_data_pdu: MAX_DATA_PDU,
    };
    let mut r = PduReader::new(config);
    if opts & 16 != 0 {
        r.initialized(config);
    }
    let mut in_pdu: Option<usize> = None; // data still expected in the current PDU
    for piece in stream.chunks(usize::from(*chunk).max(1)) {
        let mut rest = piece;
        loop {
            match r.next(&mut rest) {
                Ok(Some(Event::Header(h))) => {
                    assert!(in_pdu.is_none(), "header inside a PDU");
                    assert!(
                        h.layout.data_len <= MAX_IN_CAPSULE.max(MAX_DATA_PDU)
                            || !h.layout.pdu_type.has_pdo()
                    );
                    assert_eq!(h.bytes().len(), h.layout.header_len);
                    in_pdu = Some(h.layout.data_len);
                }
                Ok(Some(Event::Data(d))) => {
                    let left = in_pdu.expect("data outside a PDU");
                    assert!(!d.is_empty() && d.len() <= left);
                    in_pdu = Some(left - d.len());
                }
                Ok(Some(Event::End { .. })) => {
                    assert_eq!(in_pdu, Some(0), "end before all data");
                    in_pdu = None;
                }
                Ok(None) => {
                    assert!(rest.is_empty());
                    break;
                }
                Err(_) => {
                    assert!(r.offending_header().len() <= 132);
                    return;
                }
            }
        }
    }
});
