//! NVMe/TCP PDU headers from arbitrary bytes: the layout checks never panic, what they
//! accept is self-consistent, and every parsed header re-emits to the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_wire::nvme_tcp::{
    CommonHeader, DIGEST_LEN, DataRepr, IcRepr, PduType, TermReqRepr, capsule_sqe, flags,
};

fuzz_target!(|data: &[u8]| {
    let Ok(ch) = CommonHeader::new_checked(data) else {
        return;
    };
    let Ok(l) = ch.layout() else { return };
    assert_eq!(l.total_len, ch.plen() as usize);
    assert_eq!(Some(l.header_len), l.pdu_type.header_len());
    let trailer = if l.data_digest { DIGEST_LEN } else { 0 };
    if l.data_len > 0 {
        assert!(l.data_offset >= l.header_end());
        assert_eq!(l.data_offset + l.data_len + trailer, l.total_len);
    } else {
        assert_eq!(l.header_end(), l.total_len);
    }
    // Whatever the buffer holds, the digest checks only look inside it.
    let _ = l.header_digest_ok(data);
    let _ = l.data_digest_ok(data);
    let mut out = [0u8; 256];
    match l.pdu_type {
        PduType::IcReq | PduType::IcResp => {
            if let Ok(r) = IcRepr::parse(data) {
                r.emit(l.pdu_type, &mut out).expect("128 bytes fit");
                assert_eq!(IcRepr::parse(&out), Ok(r));
            }
        }
        PduType::H2cTermReq | PduType::C2hTermReq => {
            if let Ok(r) = TermReqRepr::parse(data) {
                let tail = &data[l.data_offset.min(data.len())..];
                let n = r.emit(l.pdu_type, tail, &mut out).expect("152 bytes fit");
                assert_eq!(TermReqRepr::parse(&out[..n]), Ok(r));
            }
        }
        PduType::H2cData | PduType::C2hData | PduType::R2t => {
            if let Ok(r) = DataRepr::parse(data) {
                if r.check_length(&l).is_err() {
                    return;
                }
                let keep = ch.flags() & (flags::LAST_PDU | flags::SUCCESS);
                r.emit(keep, l.header_digest, l.data_digest, &mut out)
                    .expect("24 bytes fit");
                assert_eq!(DataRepr::parse(&out), Ok(r));
            }
        }
        PduType::CapsuleCmd => {
            let _ = capsule_sqe(data);
        }
        PduType::CapsuleResp | PduType::Unknown(_) => {}
    }
});
