//! Building the PDUs a controller sends, as gather lists: the header (with header digest
//! and any padding up to the aligned data offset) is built here, the data is only referred
//! to, and its digest, if any, is computed over the data the caller will send.
//!
//! So a transport writes `header()`, then the data straight from the command's buffer,
//! then `data_digest` (one `writev`, or AF_XDP frames), and no data is copied to frame it.

use target_wire::nvme_tcp::{
    self as wire, CAPSULE_RESP_LEN, DATA_HDR_LEN, DIGEST_LEN, DataRepr, Fes, IC_LEN, IcRepr,
    PduType, TERM_LEN, TERM_MAX_DATA, TermReqRepr, flags, put_header_digest,
};

use super::icreq::Negotiated;

/// Room for the largest header a controller sends: a TermReq with 128 bytes of offending
/// header (152), or an ICResp (128), or a data header with digest and up to 128 bytes of
/// padding for CPDA alignment (24 + 4 + 128 - 28).
const MAX_OUT_HEADER: usize = TERM_LEN + TERM_MAX_DATA;

/// One PDU to send: `header()`, then the data the caller refers to, then `data_digest`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OutPdu {
    header: [u8; MAX_OUT_HEADER],
    header_len: usize,
    /// Length of the data that follows the header (0 for none).
    pub data_len: usize,
    /// Present when data digests were negotiated and the PDU carries data.
    pub data_digest: Option<[u8; DIGEST_LEN]>,
}

impl OutPdu {
    /// Everything before the data: CH, PDU header, header digest, padding.
    pub fn header(&self) -> &[u8] {
        &self.header[..self.header_len]
    }

    /// The whole PDU length (PLEN).
    pub fn total_len(&self) -> usize {
        self.header_len + self.data_len + self.data_digest.map_or(0, |d| d.len())
    }

    fn new() -> Self {
        Self {
            header: [0; MAX_OUT_HEADER],
            header_len: 0,
            data_len: 0,
            data_digest: None,
        }
    }
}

impl core::fmt::Debug for OutPdu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OutPdu")
            .field("header", &self.header())
            .field("data_len", &self.data_len)
            .field("data_digest", &self.data_digest)
            .finish()
    }
}

/// The ICResp answering an accepted ICReq.
pub fn ic_resp(resp: &IcRepr) -> OutPdu {
    let mut p = OutPdu::new();
    p.header_len = resp
        .emit(PduType::IcResp, &mut p.header)
        .expect("128 bytes fit");
    debug_assert_eq!(p.header_len, IC_LEN);
    p
}

/// A CapsuleResp carrying `cqe`.
pub fn capsule_resp(cqe: &[u8; 16], n: &Negotiated) -> OutPdu {
    let mut p = OutPdu::new();
    wire::emit_capsule_resp(cqe, n.header_digest, &mut p.header).expect("28 bytes fit");
    p.header_len = finish_header(&mut p.header, CAPSULE_RESP_LEN, n.header_digest);
    p
}

/// An R2T asking the host for `length` bytes at `offset` of command `cccid`.
pub fn r2t(cccid: u16, ttag: u16, offset: u32, length: u32, n: &Negotiated) -> OutPdu {
    let mut p = OutPdu::new();
    let repr = DataRepr {
        pdu_type: PduType::R2t,
        cccid,
        ttag,
        offset,
        length,
    };
    repr.emit(0, n.header_digest, false, &mut p.header)
        .expect("28 bytes fit");
    p.header_len = finish_header(&mut p.header, DATA_HDR_LEN, n.header_digest);
    p
}

/// A C2HData carrying `data` (the bytes at `offset` of command `cccid`'s data). With
/// `last`, it ends the transfer; with `success` too, it also stands for the CapsuleResp
/// (only when the host did not disable that, and never on a failed command).
pub fn c2h_data(
    cccid: u16,
    offset: u32,
    data: &[u8],
    last: bool,
    success: bool,
    n: &Negotiated,
) -> OutPdu {
    let mut p = OutPdu::new();
    let header_end = DATA_HDR_LEN + if n.header_digest { DIGEST_LEN } else { 0 };
    // Data starts at the first multiple of CPDA at or after the header.
    let pdo = header_end.next_multiple_of(n.controller_pda_bytes.max(4));
    let pdo = u8::try_from(pdo).expect("CPDA is at most 128 bytes");
    let mut extra = 0;
    if last {
        extra |= flags::LAST_PDU;
        if success {
            extra |= flags::SUCCESS;
        }
    }
    let length = u32::try_from(data.len()).expect("C2HData is bounded by MDTS");
    let repr = DataRepr {
        pdu_type: PduType::C2hData,
        cccid,
        ttag: 0,
        offset,
        length,
    };
    repr.emit(extra, n.header_digest, n.data_digest, &mut p.header)
        .expect("24 bytes fit");
    wire::emit_common_header(
        &mut p.header,
        PduType::C2hData,
        extra,
        n.header_digest,
        n.data_digest,
        pdo,
        data.len(),
    )
    .expect("header fits");
    finish_header(&mut p.header, DATA_HDR_LEN, n.header_digest);
    p.header_len = usize::from(pdo);
    p.data_len = data.len();
    p.data_digest = (n.data_digest && !data.is_empty()).then(|| wire::data_digest(data));
    p
}

/// A C2HTermReq; `offending` is the header of the PDU in error (up to 128 bytes are sent).
pub fn c2h_term_req(fes: Fes, fei: u32, offending: &[u8]) -> OutPdu {
    let mut p = OutPdu::new();
    p.header_len = TermReqRepr { fes, fei }
        .emit(PduType::C2hTermReq, offending, &mut p.header)
        .expect("152 bytes fit");
    p
}

/// Writes the header digest after a `hlen`-byte header when negotiated; returns the length
/// including it.
fn finish_header(buf: &mut [u8], hlen: usize, header_digest: bool) -> usize {
    if header_digest {
        put_header_digest(buf, hlen).expect("room for the digest");
        hlen + DIGEST_LEN
    } else {
        hlen
    }
}

#[cfg(test)]
mod tests {
    use target_wire::nvme_tcp::{DataRepr, TermReqRepr};

    use super::super::reader::{Event, PduReader, ReaderConfig, Role};
    use super::*;

    fn negotiated(digests: bool, cpda_bytes: usize) -> Negotiated {
        Negotiated {
            header_digest: digests,
            data_digest: digests,
            host_pda_bytes: 4,
            controller_pda_bytes: cpda_bytes,
            max_h2c_data: 65536,
            host_max_r2t: 1,
        }
    }

    /// Sends `pdus` (with `data` for each) through a host-side reader and returns what it
    /// read: (header bytes, data, digest ok) per PDU.
    fn read_back(pdus: &[(OutPdu, &[u8])], n: &Negotiated) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
        let mut stream = Vec::new();
        for (p, data) in pdus {
            stream.extend_from_slice(p.header());
            stream.extend_from_slice(data);
            if let Some(d) = p.data_digest {
                stream.extend_from_slice(&d);
            }
        }
        let config = ReaderConfig {
            role: Role::Host,
            header_digest: n.header_digest,
            data_digest: n.data_digest,
            pda_bytes: n.controller_pda_bytes,
            max_in_capsule: 0,
            max_data_pdu: 1 << 20,
        };
        let mut r = PduReader::new(config);
        r.initialized(config);
        let mut out = Vec::new();
        let mut input = stream.as_slice();
        let mut cur = (Vec::new(), Vec::new());
        while let Some(ev) = r.next(&mut input).expect("the writer's PDUs are valid") {
            match ev {
                Event::Header(h) => cur = (h.bytes().to_vec(), Vec::new()),
                Event::Data(d) => cur.1.extend_from_slice(d),
                Event::End { data_digest_ok } => {
                    out.push((
                        std::mem::take(&mut cur.0),
                        std::mem::take(&mut cur.1),
                        data_digest_ok,
                    ));
                }
            }
        }
        assert!(input.is_empty());
        out
    }

    #[test]
    fn controller_pdus_read_back_with_and_without_digests() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        for digests in [false, true] {
            for cpda in [4, 8, 64, 128] {
                let n = negotiated(digests, cpda);
                let mut cqe = [0u8; 16];
                cqe[12] = 5;
                let pdus = [
                    (r2t(5, 3, 0, 8192, &n), &[][..]),
                    (
                        c2h_data(6, 0, &data[..4096], false, false, &n),
                        &data[..4096],
                    ),
                    (
                        c2h_data(6, 4096, &data[4096..], true, true, &n),
                        &data[4096..],
                    ),
                    (capsule_resp(&cqe, &n), &[][..]),
                ];
                let got = read_back(&pdus, &n);
                assert_eq!(got.len(), 4);
                let r = DataRepr::parse(&got[0].0).unwrap();
                assert_eq!((r.cccid, r.ttag, r.offset, r.length), (5, 3, 0, 8192));
                assert_eq!(got[1].1, &data[..4096]);
                assert_eq!(got[2].1, &data[4096..]);
                assert!(got.iter().all(|g| g.2), "digests verify");
                assert_eq!(
                    got[2].0[1] & (flags::LAST_PDU | flags::SUCCESS),
                    flags::LAST_PDU | flags::SUCCESS
                );
                assert_eq!(got[3].0[8 + 12], 5);
                assert_eq!(
                    pdus[1].0.header().len() % cpda,
                    0,
                    "data starts CPDA-aligned"
                );
            }
        }
    }

    #[test]
    fn term_req_and_ic_resp() {
        let t = c2h_term_req(Fes::HeaderDigestError, 0, &[0xaa; 72]);
        assert_eq!(t.header().len(), 24 + 72);
        assert_eq!(
            TermReqRepr::parse(t.header()).unwrap().fes,
            Fes::HeaderDigestError
        );
        let r = ic_resp(&IcRepr {
            pfv: 0,
            pda: 0,
            header_digest: true,
            data_digest: false,
            max: 65536,
        });
        assert_eq!((r.header().len(), r.total_len()), (128, 128));
        assert_eq!(IcRepr::parse(r.header()).unwrap().max, 65536);
    }
}
