//! iSCSI PDU parsing on arbitrary bytes: the BHS view, the layout and digest checks, the
//! login request and response reprs, text pairs, numbers and binary values. Whatever the
//! bytes: no panic, the layout is consistent, a parsed Login Response emits and parses
//! back equal, and a hex binary value decodes to the bytes it encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_wire::iscsi::{
    BHS_LEN, Bhs, DIGEST_LEN, LoginRequestRepr, LoginResponseRepr, MAX_KEY_LEN, MAX_LONG_VALUE_LEN,
    decode_binary, encode_hex, padded, parse_number, text_pairs,
};

fuzz_target!(|input: &[u8]| {
    let [opts, rest @ ..] = input else { return };
    let (hd, dd) = (opts & 1 != 0, opts & 2 != 0);
    if let Ok(bhs) = Bhs::new_checked(rest) {
        let l = bhs.layout(hd, dd);
        assert_eq!(l.header, BHS_LEN + l.ahs + if hd { DIGEST_LEN } else { 0 });
        assert_eq!(l.data, bhs.data_segment_len());
        let ddgst = if l.data_digest { DIGEST_LEN } else { 0 };
        assert_eq!(l.total, l.header + padded(l.data) + ddgst);
        assert_eq!(l.data_digest, dd && l.data > 0);
        let _ = l.header_digest_ok(rest);
        let _ = l.data_digest_ok(rest);
        if rest.len() >= l.total {
            for p in text_pairs(&rest[l.header..l.header + l.data]).flatten() {
                assert!(!p.0.is_empty() && p.0.len() <= MAX_KEY_LEN);
            }
        }
        let _ = (
            bhs.opcode(),
            bhs.immediate(),
            bhs.lun(),
            bhs.itt(),
            bhs.cdb(),
        );
        if let Ok(req) = LoginRequestRepr::parse(&bhs) {
            assert!(req.csg < 4 && req.nsg < 4);
        }
        if let Ok(resp) = LoginResponseRepr::parse(&bhs) {
            let mut b = [0u8; BHS_LEN];
            resp.emit(&mut b).expect("a parsed response fits a BHS");
            let again = LoginResponseRepr::parse(&Bhs::new_checked(&b[..]).unwrap()).unwrap();
            assert_eq!(again, resp);
        }
    }
    for (k, v) in text_pairs(rest).flatten() {
        assert!(!k.is_empty() && k.len() <= MAX_KEY_LEN && v.len() <= MAX_LONG_VALUE_LEN);
        let _ = parse_number(v);
        let mut out = [0u8; 64];
        if let Some(n) = decode_binary(v, &mut out) {
            assert!(n > 0 && n <= out.len());
        }
    }
    if let Ok(s) = core::str::from_utf8(rest) {
        if let Some(n) = parse_number(s) {
            // Decimal values read back as what they say.
            if !s.starts_with("0x") && !s.starts_with("0X") {
                assert_eq!(s.trim_start_matches('0').parse::<u64>().unwrap_or(0), n);
            }
        }
        let mut out = [0u8; 256];
        if let Some(n) = decode_binary(s, &mut out) {
            assert!(n > 0 && n <= out.len());
        }
    }
    // Hex binary values round-trip.
    let bytes = &rest[..rest.len().min(100)];
    if !bytes.is_empty() {
        let mut hex = [0u8; 2 + 200];
        let n = encode_hex(bytes, &mut hex).expect("room for the hex");
        let s = core::str::from_utf8(&hex[..n]).unwrap();
        let mut back = [0u8; 100];
        assert_eq!(decode_binary(s, &mut back), Some(bytes.len()));
        assert_eq!(&back[..bytes.len()], bytes);
    }
});
