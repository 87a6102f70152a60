//! Turning a TCP byte stream into validated NVMe/TCP PDUs, for either end of a connection.
//!
//! [`PduReader::next`] takes whatever bytes arrived and returns at most one [`Event`] at a
//! time: a PDU's [`Header`] (checked, with its header digest verified), its data as slices
//! of the input (never copied here), and an `End` that says whether the data digest
//! matched. Any violation is a [`Fatal`] with the FES and FEI the TermReq must carry.
//!
//! Checks, in order: the CH's own rules (`target_wire::nvme_tcp::CommonHeader::layout`),
//! then the receiver's: the PDU direction and sequence (ICReq/ICResp first and only
//! first), header and data digests present exactly when negotiated, PDO alignment, and
//! the data length against the negotiated limit, all before any data is accepted, so no
//! length from the wire sizes anything. A malformed TermReq closes the connection without
//! an answer (section 7.4.7), and so does a well-formed one after it has been read.
//!
//! A data digest mismatch is not fatal here: the transport spec has the command completed
//! with a transient transport error, which is the engine's decision.

use target_wire::crc32c::crc32c_append;
use target_wire::nvme_tcp::{
    CH_LEN, CommonHeader, DIGEST_LEN, Fes, PduLayout, PduType, ch_offset, flags,
};

use super::Fatal;

/// The longest header with its digest: an ICReq (128, no digest) or a CapsuleCmd (72 + 4).
const MAX_HEADER: usize = 132;

/// Which end of the connection this reader serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads what a host sends: ICReq, CapsuleCmd, H2CData, H2CTermReq.
    Controller,
    /// Reads what a controller sends: ICResp, CapsuleResp, C2HData, R2T, C2HTermReq.
    Host,
}

/// Limits and negotiated options; before connection initialization only an ICReq (ICResp)
/// is accepted and no digests apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderConfig {
    pub role: Role,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The alignment of PDO the sender promised (HPDA for a controller, CPDA for a host),
    /// in bytes.
    pub pda_bytes: usize,
    /// The most data one CapsuleCmd may carry in its capsule (IOCCSZ less the SQE).
    pub max_in_capsule: usize,
    /// The most data one H2CData (MAXH2CDATA) or C2HData PDU may carry.
    pub max_data_pdu: usize,
}

/// A complete, checked PDU header (the CH included, the header digest not).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub layout: PduLayout,
    bytes: [u8; MAX_HEADER],
}

impl Header {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.layout.header_len]
    }
}

impl core::fmt::Debug for Header {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Header")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Header(Header),
    /// The next part of the current PDU's data.
    Data(&'a [u8]),
    /// The current PDU is complete.
    End {
        data_digest_ok: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ch,
    Header,
    Pad {
        left: usize,
    },
    Data {
        left: usize,
    },
    DataDigest,
    End,
    /// A fatal error was returned; nothing more is read.
    Dead,
}

pub struct PduReader {
    config: ReaderConfig,
    initialized: bool,
    state: State,
    layout: Option<PduLayout>,
    /// The current PDU's header as far as it arrived; kept until the next PDU starts, so a
    /// TermReq can quote it.
    buf: [u8; MAX_HEADER],
    have: usize,
    digest: [u8; DIGEST_LEN],
    digest_have: usize,
    crc: u32,
}

impl PduReader {
    pub fn new(config: ReaderConfig) -> Self {
        Self {
            config,
            initialized: false,
            state: State::Ch,
            layout: None,
            buf: [0; MAX_HEADER],
            have: 0,
            digest: [0; DIGEST_LEN],
            digest_have: 0,
            crc: 0,
        }
    }

    /// Called once the ICReq/ICResp exchange is done, with what was negotiated.
    pub fn initialized(&mut self, config: ReaderConfig) {
        self.config = config;
        self.initialized = true;
    }

    pub fn config(&self) -> &ReaderConfig {
        &self.config
    }

    /// After a [`Fatal::Terminate`]: the header of the offending PDU as far as it was read
    /// (its CH at least; the whole header for a digest error), for the TermReq.
    pub fn offending_header(&self) -> &[u8] {
        let len = self.layout.map_or(CH_LEN, |l| l.header_len);
        &self.buf[..len.min(self.have)]
    }

    /// Whether the reader sits between PDUs (no partial PDU buffered).
    pub fn at_pdu_boundary(&self) -> bool {
        self.state == State::Ch && (self.have == 0 || self.layout.is_some())
    }

    /// Consumes bytes from the front of `input` and returns the next event, or `None` when
    /// `input` is used up before one is complete.
    pub fn next<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<Event<'a>>, Fatal> {
        loop {
            match self.state {
                State::Dead => return Err(Fatal::Close),
                State::Ch => {
                    if self.layout.is_some() {
                        // A new PDU starts: forget the previous header.
                        self.layout = None;
                        self.have = 0;
                    }
                    if !self.fill(input, CH_LEN) {
                        return Ok(None);
                    }
                    let layout = self
                        .check_common_header()
                        .inspect_err(|_| self.state = State::Dead)?;
                    self.layout = Some(layout);
                    self.state = State::Header;
                }
                State::Header => {
                    let layout = self.layout.expect("set with State::Header");
                    if !self.fill(input, layout.header_end()) {
                        return Ok(None);
                    }
                    if !layout.header_digest_ok(&self.buf) {
                        self.state = State::Dead;
                        return Err(Fatal::Terminate {
                            fes: Fes::HeaderDigestError,
                            fei: 0,
                        });
                    }
                    self.crc = 0;
                    self.digest_have = 0;
                    let pad = layout.data_offset - layout.header_end();
                    self.state = if layout.data_len == 0 {
                        State::End
                    } else if pad > 0 {
                        State::Pad { left: pad }
                    } else {
                        State::Data {
                            left: layout.data_len,
                        }
                    };
                    return Ok(Some(Event::Header(Header {
                        layout,
                        bytes: self.buf,
                    })));
                }
                State::Pad { left } => {
                    let n = left.min(input.len());
                    *input = &input[n..];
                    if n < left {
                        self.state = State::Pad { left: left - n };
                        return Ok(None);
                    }
                    let layout = self.layout.expect("set with State::Pad");
                    self.state = State::Data {
                        left: layout.data_len,
                    };
                }
                State::Data { left } => {
                    let n = left.min(input.len());
                    if n == 0 {
                        return Ok(None);
                    }
                    let (data, rest) = input.split_at(n);
                    *input = rest;
                    let layout = self.layout.expect("set with State::Data");
                    if layout.data_digest {
                        self.crc = crc32c_append(self.crc, data);
                    }
                    self.state = if n < left {
                        State::Data { left: left - n }
                    } else if layout.data_digest {
                        State::DataDigest
                    } else {
                        State::End
                    };
                    return Ok(Some(Event::Data(data)));
                }
                State::DataDigest => {
                    let n = (DIGEST_LEN - self.digest_have).min(input.len());
                    self.digest[self.digest_have..self.digest_have + n]
                        .copy_from_slice(&input[..n]);
                    self.digest_have += n;
                    *input = &input[n..];
                    if self.digest_have < DIGEST_LEN {
                        return Ok(None);
                    }
                    self.state = State::Ch;
                    let ok = u32::from_le_bytes(self.digest) == self.crc;
                    return Ok(Some(Event::End { data_digest_ok: ok }));
                }
                State::End => {
                    self.state = State::Ch;
                    return Ok(Some(Event::End {
                        data_digest_ok: true,
                    }));
                }
            }
        }
    }

    /// Copies bytes from `input` until `self.buf` holds `want`; says whether it does.
    fn fill(&mut self, input: &mut &[u8], want: usize) -> bool {
        let n = want.saturating_sub(self.have).min(input.len());
        self.buf[self.have..self.have + n].copy_from_slice(&input[..n]);
        self.have += n;
        *input = &input[n..];
        self.have >= want
    }

    fn check_common_header(&self) -> Result<PduLayout, Fatal> {
        let ch = CommonHeader::new_unchecked(&self.buf[..CH_LEN]);
        let t = ch.pdu_type();
        let term = matches!(t, PduType::H2cTermReq | PduType::C2hTermReq);
        let expected_ic = match self.config.role {
            Role::Controller => PduType::IcReq,
            Role::Host => PduType::IcResp,
        };
        let from_peer = match self.config.role {
            Role::Controller => t.from_host(),
            Role::Host => !t.from_host(),
        };
        // Direction and sequence: only the peer's types, the IC exchange first and once.
        if !from_peer || (t == expected_ic) == self.initialized {
            if !from_peer && term {
                return Err(Fatal::Close);
            }
            let fes = if from_peer {
                Fes::PduSequenceError
            } else {
                Fes::InvalidHeaderField
            };
            return Err(Fatal::Terminate {
                fes,
                fei: ch_offset::PDU_TYPE,
            });
        }
        let layout = match ch.layout() {
            Ok(l) => l,
            Err(_) if term => return Err(Fatal::Close),
            Err(bad) => return Err(Fatal::invalid_field(bad.offset)),
        };
        if term {
            // The peer ends the connection; its reason is read, then we close.
            return Ok(layout);
        }
        // Digests present exactly when negotiated (a data digest only with data, as Linux
        // sends it).
        let valid = t.valid_flags();
        let want_hdgst = self.config.header_digest && valid & flags::HDGSTF != 0;
        let want_ddgst =
            self.config.data_digest && valid & flags::DDGSTF != 0 && layout.data_len > 0;
        if layout.header_digest != want_hdgst || layout.data_digest != want_ddgst {
            return Err(Fatal::invalid_field(ch_offset::FLAGS));
        }
        if layout.data_len > 0 && layout.data_offset % self.config.pda_bytes.max(1) != 0 {
            return Err(Fatal::invalid_field(ch_offset::PDO));
        }
        let limit = match t {
            PduType::CapsuleCmd => self.config.max_in_capsule,
            _ => self.config.max_data_pdu,
        };
        if layout.data_len > limit {
            return Err(Fatal::Terminate {
                fes: Fes::DataTransferLimitExceeded,
                fei: ch_offset::PLEN,
            });
        }
        Ok(layout)
    }
}

#[cfg(test)]
mod tests {
    use target_wire::nvme_tcp::{
        DataRepr, IcRepr, TermReqRepr, data_digest, emit_common_header, put_header_digest,
    };

    use super::*;

    fn config(role: Role, digests: bool) -> ReaderConfig {
        ReaderConfig {
            role,
            header_digest: digests,
            data_digest: digests,
            pda_bytes: 4,
            max_in_capsule: 8192,
            max_data_pdu: 65536,
        }
    }

    fn controller(digests: bool) -> PduReader {
        let mut r = PduReader::new(config(Role::Controller, false));
        r.initialized(config(Role::Controller, digests));
        r
    }

    fn icreq() -> Vec<u8> {
        let mut b = vec![0u8; 128];
        IcRepr {
            pfv: 0,
            pda: 0,
            header_digest: true,
            data_digest: true,
            max: 0,
        }
        .emit(PduType::IcReq, &mut b)
        .unwrap();
        b
    }

    /// A CapsuleCmd with `data` in the capsule, digests as asked.
    fn capsule(cid: u8, data: &[u8], digests: bool) -> Vec<u8> {
        let header_end = 72 + if digests { 4 } else { 0 };
        let total = if data.is_empty() {
            header_end
        } else {
            header_end + data.len() + if digests { 4 } else { 0 }
        };
        let mut p = vec![0u8; total];
        let pdo = if data.is_empty() { 0 } else { header_end as u8 };
        emit_common_header(
            &mut p,
            PduType::CapsuleCmd,
            0,
            digests,
            digests,
            pdo,
            data.len(),
        )
        .unwrap();
        p[8] = 0x01;
        p[10] = cid;
        if digests {
            put_header_digest(&mut p, 72).unwrap();
        }
        if !data.is_empty() {
            p[header_end..header_end + data.len()].copy_from_slice(data);
            if digests {
                let d = data_digest(data);
                p[header_end + data.len()..].copy_from_slice(&d);
            }
        }
        p
    }

    /// Everything the reader makes of `stream`, fed in pieces of `chunk` bytes.
    fn run(
        reader: &mut PduReader,
        stream: &[u8],
        chunk: usize,
    ) -> (Vec<String>, Vec<u8>, Option<Fatal>) {
        let mut events = Vec::new();
        let mut data = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            let mut input = piece;
            loop {
                match reader.next(&mut input) {
                    Ok(Some(Event::Header(h))) => {
                        events.push(format!(
                            "header {:?} {}",
                            h.layout.pdu_type, h.layout.data_len
                        ));
                    }
                    Ok(Some(Event::Data(d))) => data.extend_from_slice(d),
                    Ok(Some(Event::End { data_digest_ok })) => {
                        events.push(format!("end {data_digest_ok}"));
                    }
                    Ok(None) => break,
                    Err(f) => return (events, data, Some(f)),
                }
            }
        }
        (events, data, None)
    }

    #[test]
    fn icreq_then_capsules_at_every_chunk_size() {
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        for digests in [false, true] {
            let mut stream = capsule(1, &[], digests);
            stream.extend(capsule(2, &payload, digests));
            for chunk in [1, 2, 3, 7, 8, 71, 72, 73, 100, 4096] {
                let mut r = controller(digests);
                let (events, data, fatal) = run(&mut r, &stream, chunk);
                assert_eq!(fatal, None, "chunk {chunk}");
                assert_eq!(
                    events,
                    [
                        "header CapsuleCmd 0",
                        "end true",
                        "header CapsuleCmd 1000",
                        "end true"
                    ],
                    "chunk {chunk} digests {digests}"
                );
                assert_eq!(data, payload, "chunk {chunk}");
                assert!(r.at_pdu_boundary());
            }
        }
        let mut r = PduReader::new(config(Role::Controller, false));
        let (events, _, fatal) = run(&mut r, &icreq(), 5);
        assert_eq!(
            (events.as_slice(), fatal),
            (&["header IcReq 0".to_string(), "end true".into()][..], None)
        );
    }

    #[test]
    fn sequence_and_direction_errors() {
        let fes_fei = |f: Option<Fatal>| match f {
            Some(Fatal::Terminate { fes, fei, .. }) => (fes, fei),
            other => panic!("{other:?}"),
        };
        // A capsule before the ICReq.
        let mut r = PduReader::new(config(Role::Controller, false));
        assert_eq!(
            fes_fei(run(&mut r, &capsule(1, &[], false), 100).2),
            (Fes::PduSequenceError, 0)
        );
        // A second ICReq.
        let mut r = controller(false);
        assert_eq!(
            fes_fei(run(&mut r, &icreq(), 100).2),
            (Fes::PduSequenceError, 0)
        );
        // A controller-to-host PDU sent to the controller.
        let mut r2t = vec![0u8; 24];
        DataRepr {
            pdu_type: PduType::R2t,
            cccid: 1,
            ttag: 0,
            offset: 0,
            length: 10,
        }
        .emit(0, false, false, &mut r2t)
        .unwrap();
        let mut r = controller(false);
        assert_eq!(
            fes_fei(run(&mut r, &r2t, 100).2),
            (Fes::InvalidHeaderField, 0)
        );
        // After a fatal error the reader says close.
        let mut input: &[u8] = &[0u8; 8];
        assert_eq!(r.next(&mut input), Err(Fatal::Close));
    }

    #[test]
    fn digests_must_match_the_negotiation() {
        let fei = |f: Option<Fatal>| match f {
            Some(Fatal::Terminate {
                fes: Fes::InvalidHeaderField,
                fei,
                ..
            }) => fei,
            other => panic!("{other:?}"),
        };
        let mut r = controller(true);
        assert_eq!(
            fei(run(&mut r, &capsule(1, &[], false), 100).2),
            1,
            "header digest missing"
        );
        let mut r = controller(false);
        assert_eq!(
            fei(run(&mut r, &capsule(1, &[], true), 100).2),
            1,
            "header digest not negotiated"
        );
    }

    #[test]
    fn bad_header_digest_is_fatal_and_bad_data_digest_is_reported() {
        let mut p = capsule(1, &[7; 64], true);
        p[20] ^= 0xff;
        let mut r = controller(true);
        match run(&mut r, &p, 9).2 {
            Some(Fatal::Terminate {
                fes: Fes::HeaderDigestError,
                fei: 0,
            }) => {
                assert_eq!(r.offending_header(), &p[..72]);
            }
            other => panic!("{other:?}"),
        }
        let mut p = capsule(1, &[7; 64], true);
        p[80] ^= 0xff;
        let mut r = controller(true);
        let (events, _, fatal) = run(&mut r, &p, 9);
        assert_eq!(fatal, None);
        assert_eq!(events.last().map(String::as_str), Some("end false"));
    }

    #[test]
    fn lengths_are_bounded_before_any_data_is_read() {
        let mut r = PduReader::new(config(Role::Controller, false));
        r.initialized(ReaderConfig {
            max_in_capsule: 512,
            ..config(Role::Controller, false)
        });
        // Only the 8-byte CH of a capsule that claims 4 KiB of data.
        let mut ch = [0u8; 8];
        emit_common_header(&mut ch, PduType::CapsuleCmd, 0, false, false, 72, 4096).unwrap();
        match run(&mut r, &ch, 8).2 {
            Some(Fatal::Terminate {
                fes: Fes::DataTransferLimitExceeded,
                fei: 4,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // An H2CData claiming ~4 GiB.
        let mut h2c = [0u8; 8];
        h2c.copy_from_slice(&[0x06, 0x04, 24, 24, 0xff, 0xff, 0xff, 0xff]);
        let mut r = controller(false);
        assert!(matches!(
            run(&mut r, &h2c, 8).2,
            Some(Fatal::Terminate {
                fes: Fes::DataTransferLimitExceeded,
                ..
            })
        ));
    }

    #[test]
    fn pdo_alignment_is_enforced() {
        let mut r = PduReader::new(config(Role::Controller, false));
        r.initialized(ReaderConfig {
            pda_bytes: 16,
            ..config(Role::Controller, false)
        });
        let p = capsule(1, &[1; 16], false); // PDO 72: not a multiple of 16
        assert!(matches!(
            run(&mut r, &p, 100).2,
            Some(Fatal::Terminate {
                fes: Fes::InvalidHeaderField,
                fei: 3,
                ..
            })
        ));
    }

    #[test]
    fn padding_before_aligned_data_is_skipped() {
        let data = [0x5au8; 32];
        let mut p = vec![0u8; 96 + 32];
        emit_common_header(&mut p, PduType::CapsuleCmd, 0, false, false, 96, 32).unwrap();
        p[72..96].fill(0xee);
        p[96..].copy_from_slice(&data);
        let mut r = PduReader::new(config(Role::Controller, false));
        r.initialized(ReaderConfig {
            pda_bytes: 32,
            ..config(Role::Controller, false)
        });
        for chunk in [1, 50, 200] {
            let mut r2 = PduReader::new(*r.config());
            r2.initialized(*r.config());
            let (_, got, fatal) = run(&mut r2, &p, chunk);
            assert_eq!((got.as_slice(), fatal), (&data[..], None));
        }
    }

    #[test]
    fn term_req_is_read_and_a_malformed_one_closes_silently() {
        let mut t = vec![0u8; 24 + 72];
        TermReqRepr {
            fes: Fes::HeaderDigestError,
            fei: 0,
        }
        .emit(PduType::H2cTermReq, &[9; 72], &mut t)
        .unwrap();
        let mut r = controller(true);
        let (events, data, fatal) = run(&mut r, &t, 10);
        assert_eq!((events.len(), data.len(), fatal), (2, 72, None));
        let mut bad = t.clone();
        bad[2] = 30; // HLEN
        let mut r = controller(true);
        assert_eq!(run(&mut r, &bad, 10).2, Some(Fatal::Close));
    }

    #[test]
    fn the_host_side_reads_r2t_and_c2h_data() {
        let mut r = PduReader::new(config(Role::Host, false));
        let mut resp = vec![0u8; 128];
        IcRepr {
            pfv: 0,
            pda: 0,
            header_digest: false,
            data_digest: false,
            max: 65536,
        }
        .emit(PduType::IcResp, &mut resp)
        .unwrap();
        let mut stream = resp;
        let mut r2t = vec![0u8; 24];
        DataRepr {
            pdu_type: PduType::R2t,
            cccid: 3,
            ttag: 1,
            offset: 0,
            length: 8192,
        }
        .emit(0, false, false, &mut r2t)
        .unwrap();
        stream.extend(&r2t);
        let (events, _, fatal) = run(&mut r, &stream[..128], 3);
        assert_eq!((events.len(), fatal), (2, None));
        r.initialized(config(Role::Host, false));
        let (events, _, fatal) = run(&mut r, &stream[128..], 3);
        assert_eq!(
            (events, fatal),
            (vec!["header R2t 0".to_string(), "end true".into()], None)
        );
    }
}
