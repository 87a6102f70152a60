//! NVMe submission queue entries from arbitrary bytes, as they arrive in an NVMe/TCP
//! CapsuleCmd: the SQE view, its SGL descriptor and, when the bytes after the 64-byte SQE
//! are long enough, the Connect data. No accessor may panic once `new_checked` accepted
//! the buffer, and every parsed `Repr` re-emits to bytes that parse to the same `Repr`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_wire::nvme::fabrics::{CONNECT_DATA_LEN, PropertySize};
use target_wire::nvme::sqe::SQE_LEN;
use target_wire::nvme::status::Status;
use target_wire::nvme::{
    AdminOpcode, ConnectData, ConnectDataRepr, ConnectRepr, Cqe, CqeRepr, FabricsType, IoOpcode,
    PropertyGetRepr, PropertySetRepr, SglDescriptor, SglRepr, Sqe,
};

fuzz_target!(|data: &[u8]| {
    let Ok(sqe) = Sqe::new_checked(data) else {
        assert!(data.len() < SQE_LEN);
        return;
    };

    // Every accessor, whatever the opcode.
    let op = sqe.opcode();
    assert_eq!(u8::from(AdminOpcode::from(op)), op);
    assert_eq!(u8::from(IoOpcode::from(op)), op);
    assert_eq!(u8::from(sqe.fctype()), sqe.fctype_raw());
    let _ = (sqe.fuse(), sqe.psdt(), sqe.cid(), sqe.nsid(), sqe.mptr());
    let _ = (sqe.prp1(), sqe.prp2(), sqe.cdw2(), sqe.cdw3());
    let _ = (sqe.slba(), sqe.nlb(), sqe.fua(), sqe.deac(), sqe.prinfo());
    let _ = (
        sqe.limited_retry(),
        sqe.dtype(),
        sqe.dsm_hints(),
        sqe.dsm_attributes(),
    );
    let _ = (
        sqe.cns(),
        sqe.identify_cntid(),
        sqe.identify_csi(),
        sqe.log_id(),
    );
    let _ = (
        sqe.log_lsp(),
        sqe.log_rae(),
        sqe.log_lsi(),
        sqe.log_csi(),
        sqe.lpo(),
    );
    let _ = (sqe.feature_id(), sqe.feature_sel(), sqe.feature_save());
    let _ = (sqe.abort_sqid(), sqe.abort_cid(), sqe.disconnect_recfmt());
    let _ = (sqe.auth_secp(), sqe.auth_spsp(), sqe.auth_len());
    assert_eq!(sqe.block_count(), u32::from(sqe.nlb()) + 1);
    assert!((1..=256).contains(&sqe.dsm_range_count()));
    assert_eq!(sqe.log_len() % 4, 0);
    for n in 0..16 {
        assert_eq!(sqe.cdw(n).to_le_bytes()[..], data[4 * n..4 * n + 4]);
    }

    // The SGL descriptor in DPTR.
    let d = sqe.dptr();
    assert_eq!(u8::from(d.sgl_type()), d.identifier() >> 4);
    assert_eq!(u8::from(d.subtype()), d.identifier() & 0x0f);
    let _ = (d.address(), d.length(), d.keyed_length(), d.key());
    if let Ok(r) = sqe.sgl() {
        let mut out = [0u8; 16];
        r.emit(&mut SglDescriptor::new_unchecked(&mut out[..]))
            .expect("a parsed descriptor re-emits");
        assert_eq!(
            SglRepr::parse(&SglDescriptor::new_unchecked(&out[..])),
            Ok(r)
        );
        assert_eq!(out[15], data[39]);
    }

    // Fabrics commands.
    if sqe.is_fabrics() {
        let mut out = [0u8; SQE_LEN];
        match sqe.fctype() {
            FabricsType::Connect => {
                let r = ConnectRepr::parse(&sqe).expect("any Connect SQE parses");
                r.emit(&mut Sqe::new_unchecked(&mut out[..]));
                let again = ConnectRepr::parse(&Sqe::new_checked(&out[..]).unwrap());
                assert_eq!(again, Ok(r));
                // RECFMT, QID, SQSIZE, CATTR, KATO; byte 47 is reserved.
                assert_eq!(out[40..47], data[40..47]);
                assert_eq!(out[48..52], data[48..52]);
            }
            FabricsType::PropertyGet => {
                if let Ok(r) = PropertyGetRepr::parse(&sqe) {
                    assert!(r.size.bytes().is_some());
                    r.emit(&mut Sqe::new_unchecked(&mut out[..]));
                    let again = PropertyGetRepr::parse(&Sqe::new_checked(&out[..]).unwrap());
                    assert_eq!(again, Ok(r));
                } else {
                    assert!(PropertySize::from(data[40] & 0b111).bytes().is_none());
                }
            }
            FabricsType::PropertySet => {
                if let Ok(r) = PropertySetRepr::parse(&sqe) {
                    r.emit(&mut Sqe::new_unchecked(&mut out[..]));
                    let again = PropertySetRepr::parse(&Sqe::new_checked(&out[..]).unwrap());
                    assert_eq!(again, Ok(r));
                    assert_eq!(out[44..56], data[44..56]);
                }
            }
            _ => {}
        }
    } else {
        assert!(ConnectRepr::parse(&sqe).is_err());
        assert!(PropertyGetRepr::parse(&sqe).is_err());
        assert!(PropertySetRepr::parse(&sqe).is_err());
    }

    // The Connect data, as the in-capsule data after the SQE.
    let rest = &data[SQE_LEN..];
    match ConnectData::new_checked(rest) {
        Ok(cd) => {
            let _ = (cd.hostid(), cd.cntlid(), cd.subnqn(), cd.hostnqn());
            if let Ok(r) = ConnectDataRepr::parse(&cd) {
                assert!(r.subnqn.len() < 256 && r.hostnqn.len() < 256);
                let mut out = [0u8; CONNECT_DATA_LEN];
                r.emit(&mut ConnectData::new_unchecked(&mut out[..]))
                    .expect("a parsed Connect data re-emits");
                let again = ConnectDataRepr::parse(&ConnectData::new_checked(&out[..]).unwrap());
                assert_eq!(again, Ok(r));
            }
        }
        Err(_) => assert!(rest.len() < CONNECT_DATA_LEN),
    }

    // The first 16 bytes as a CQE: the status field round-trips bit for bit.
    let cqe = Cqe::new_checked(data).expect("64 bytes hold a CQE");
    let (status, phase) = Status::from_field(cqe.status_field());
    assert_eq!(status.to_field(phase), cqe.status_field());
    let _ = status.kind();
    let r = CqeRepr::parse(&cqe).unwrap();
    assert_eq!(r.to_bytes()[..], data[..16]);
});
