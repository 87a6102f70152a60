//! NVMe/TCP PDUs: NVMe/TCP Transport Specification 1.0, section 3.6 ("PDU Formats"), as in
//! Linux `include/linux/nvme-tcp.h`.
//!
//! Every PDU starts with the 8-byte common header (CH): type, flags, HLEN, PDO, PLEN. After
//! the PDU-specific header comes an optional 4-byte header digest (HDGSTF), then, at PDO, the
//! data, then an optional 4-byte data digest (DDGSTF). [`CommonHeader::layout`] checks those
//! lengths against each other and the type's fixed header length, and on failure names the
//! byte offset of the offending field, which is what a C2HTermReq's FEI carries.
//!
//! Fixed header lengths (HLEN): ICReq/ICResp 128, H2C/C2HTermReq 24, CapsuleCmd 72
//! (CH + 64-byte SQE), CapsuleResp 24 (CH + 16-byte CQE), H2CData/C2HData/R2T 24.

use crate::crc32c::crc32c;
use crate::{Error, Result};

/// Length of the common header.
pub const CH_LEN: usize = 8;
/// Length of a header or data digest (CRC32C, little-endian).
pub const DIGEST_LEN: usize = 4;
/// ICReq/ICResp header length.
pub const IC_LEN: usize = 128;
/// H2CTermReq/C2HTermReq header length.
pub const TERM_LEN: usize = 24;
/// The most of the offending PDU header a TermReq carries after its own header.
pub const TERM_MAX_DATA: usize = 128;
/// CapsuleCmd header length: CH + SQE.
pub const CAPSULE_CMD_LEN: usize = CH_LEN + 64;
/// CapsuleResp header length: CH + CQE.
pub const CAPSULE_RESP_LEN: usize = CH_LEN + 16;
/// H2CData, C2HData and R2T header length.
pub const DATA_HDR_LEN: usize = 24;
/// PDU format version 1.0, the only one defined.
pub const PFV_1_0: u16 = 0;
/// The smallest MAXH2CDATA a controller may announce.
pub const MIN_MAXH2CDATA: u32 = 4096;

/// Common header flags.
pub mod flags {
    /// A header digest follows the PDU header.
    pub const HDGSTF: u8 = 1 << 0;
    /// A data digest follows the PDU data.
    pub const DDGSTF: u8 = 1 << 1;
    /// H2CData/C2HData: the last PDU of a transfer.
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command succeeded and no CapsuleResp follows (only with LAST_PDU).
    pub const SUCCESS: u8 = 1 << 3;
}

/// ICReq/ICResp DGST field bits.
pub mod dgst {
    pub const HDGST_ENABLE: u8 = 1 << 0;
    pub const DDGST_ENABLE: u8 = 1 << 1;
}

/// PDU type (CH byte 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PduType {
    IcReq,
    IcResp,
    H2cTermReq,
    C2hTermReq,
    CapsuleCmd,
    CapsuleResp,
    H2cData,
    C2hData,
    R2t,
    Unknown(u8),
}

impl From<u8> for PduType {
    fn from(v: u8) -> Self {
        match v {
            0x00 => Self::IcReq,
            0x01 => Self::IcResp,
            0x02 => Self::H2cTermReq,
            0x03 => Self::C2hTermReq,
            0x04 => Self::CapsuleCmd,
            0x05 => Self::CapsuleResp,
            0x06 => Self::H2cData,
            0x07 => Self::C2hData,
            0x09 => Self::R2t,
            other => Self::Unknown(other),
        }
    }
}

impl From<PduType> for u8 {
    fn from(t: PduType) -> Self {
        match t {
            PduType::IcReq => 0x00,
            PduType::IcResp => 0x01,
            PduType::H2cTermReq => 0x02,
            PduType::C2hTermReq => 0x03,
            PduType::CapsuleCmd => 0x04,
            PduType::CapsuleResp => 0x05,
            PduType::H2cData => 0x06,
            PduType::C2hData => 0x07,
            PduType::R2t => 0x09,
            PduType::Unknown(v) => v,
        }
    }
}

impl PduType {
    /// The fixed HLEN of this type, or `None` for an unknown type.
    pub const fn header_len(self) -> Option<usize> {
        match self {
            Self::IcReq | Self::IcResp => Some(IC_LEN),
            Self::H2cTermReq | Self::C2hTermReq => Some(TERM_LEN),
            Self::CapsuleCmd => Some(CAPSULE_CMD_LEN),
            Self::CapsuleResp => Some(CAPSULE_RESP_LEN),
            Self::H2cData | Self::C2hData | Self::R2t => Some(DATA_HDR_LEN),
            Self::Unknown(_) => None,
        }
    }

    /// The CH flags a PDU of this type may carry.
    pub const fn valid_flags(self) -> u8 {
        use flags::{DDGSTF, HDGSTF, LAST_PDU, SUCCESS};
        match self {
            Self::CapsuleCmd => HDGSTF | DDGSTF,
            Self::CapsuleResp | Self::R2t => HDGSTF,
            Self::H2cData => HDGSTF | DDGSTF | LAST_PDU,
            Self::C2hData => HDGSTF | DDGSTF | LAST_PDU | SUCCESS,
            // No digests on ICReq/ICResp, nor on TermReqs, which must be readable whatever
            // went wrong.
            Self::IcReq | Self::IcResp | Self::H2cTermReq | Self::C2hTermReq | Self::Unknown(_) => {
                0
            }
        }
    }

    /// Whether the PDO field is used (the types whose data may be aligned).
    pub const fn has_pdo(self) -> bool {
        matches!(self, Self::CapsuleCmd | Self::H2cData | Self::C2hData)
    }

    /// Whether the host sends this type (direction bit 0 clear); the controller sends
    /// the others.
    pub fn from_host(self) -> bool {
        u8::from(self) & 1 == 0
    }
}

/// Fatal error status of a H2CTermReq/C2HTermReq (section 3.6.2.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fes {
    InvalidHeaderField,
    PduSequenceError,
    HeaderDigestError,
    DataTransferOutOfRange,
    /// R2T limit exceeded (H2CTermReq) or data transfer limit exceeded (C2HTermReq): 05h.
    DataTransferLimitExceeded,
    UnsupportedParameter,
    Unknown(u16),
}

impl From<u16> for Fes {
    fn from(v: u16) -> Self {
        match v {
            0x01 => Self::InvalidHeaderField,
            0x02 => Self::PduSequenceError,
            0x03 => Self::HeaderDigestError,
            0x04 => Self::DataTransferOutOfRange,
            0x05 => Self::DataTransferLimitExceeded,
            0x06 => Self::UnsupportedParameter,
            other => Self::Unknown(other),
        }
    }
}

impl From<Fes> for u16 {
    fn from(f: Fes) -> Self {
        match f {
            Fes::InvalidHeaderField => 0x01,
            Fes::PduSequenceError => 0x02,
            Fes::HeaderDigestError => 0x03,
            Fes::DataTransferOutOfRange => 0x04,
            Fes::DataTransferLimitExceeded => 0x05,
            Fes::UnsupportedParameter => 0x06,
            Fes::Unknown(v) => v,
        }
    }
}

/// A header field with a value the PDU's own rules forbid: its byte offset in the PDU,
/// for the FEI of a TermReq with [`Fes::InvalidHeaderField`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadField {
    pub offset: u32,
}

/// Byte offsets of the common header's fields (for [`BadField`]).
pub mod ch_offset {
    pub const PDU_TYPE: u32 = 0;
    pub const FLAGS: u32 = 1;
    pub const HLEN: u32 = 2;
    pub const PDO: u32 = 3;
    pub const PLEN: u32 = 4;
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A view of the 8-byte common header at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct CommonHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CommonHeader<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < CH_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    pub fn pdu_type(&self) -> PduType {
        self.buffer.as_ref()[0].into()
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    pub fn hlen(&self) -> u8 {
        self.buffer.as_ref()[2]
    }
    pub fn pdo(&self) -> u8 {
        self.buffer.as_ref()[3]
    }
    pub fn plen(&self) -> u32 {
        le32(self.buffer.as_ref(), 4)
    }

    /// Checks the common header against the rules every PDU of its type follows and says
    /// where the header digest, data and data digest are. Fields are checked in order
    /// (type, flags, HLEN, PDO, PLEN) and the first bad one is named, as the spec asks of
    /// a TermReq's FEI. Whether digests were negotiated, the PDU direction, PDO alignment
    /// (CPDA/HPDA) and size limits are the receiver's checks.
    pub fn layout(&self) -> core::result::Result<PduLayout, BadField> {
        let t = self.pdu_type();
        let bad = |offset| Err(BadField { offset });
        let Some(fixed) = t.header_len() else {
            return bad(ch_offset::PDU_TYPE);
        };
        let flags = self.flags();
        if flags & !t.valid_flags() != 0
            || (t == PduType::C2hData
                && flags & (flags::LAST_PDU | flags::SUCCESS) == flags::SUCCESS)
        {
            return bad(ch_offset::FLAGS);
        }
        let hlen = usize::from(self.hlen());
        if hlen != fixed {
            return bad(ch_offset::HLEN);
        }
        let header_digest = flags & flags::HDGSTF != 0;
        let data_digest = flags & flags::DDGSTF != 0;
        let header_end = hlen + if header_digest { DIGEST_LEN } else { 0 };
        let plen = self.plen() as usize;
        let pdo = usize::from(self.pdo());
        if !t.has_pdo() {
            if pdo != 0 {
                return bad(ch_offset::PDO);
            }
        } else if pdo == 0 {
            // PDO 0 means "no data"; data without a PDO is the PDO's fault. (A PLEN
            // shorter than the header is PLEN's, below.)
            if plen > header_end {
                return bad(ch_offset::PDO);
            }
        } else if pdo < header_end || pdo > plen {
            return bad(ch_offset::PDO);
        }
        if plen < header_end {
            return bad(ch_offset::PLEN);
        }
        let (data_offset, data_len) = match t {
            PduType::IcReq | PduType::IcResp if plen != IC_LEN => return bad(ch_offset::PLEN),
            PduType::CapsuleResp | PduType::R2t if plen != header_end => {
                return bad(ch_offset::PLEN);
            }
            PduType::H2cTermReq | PduType::C2hTermReq if plen > TERM_LEN + TERM_MAX_DATA => {
                return bad(ch_offset::PLEN);
            }
            // TermReqs carry the offending header right after their own.
            PduType::H2cTermReq | PduType::C2hTermReq => (header_end, plen - header_end),
            PduType::CapsuleCmd | PduType::H2cData | PduType::C2hData => {
                let data_offset = if pdo == 0 { header_end } else { pdo };
                let with_digest = plen - data_offset;
                if data_digest && with_digest <= DIGEST_LEN {
                    // A data digest needs data to cover (Linux sets DDGSTF only then).
                    return bad(ch_offset::PLEN);
                }
                let data_len = with_digest - if data_digest { DIGEST_LEN } else { 0 };
                if data_len == 0 && plen != header_end {
                    // Padding up to a PDO with nothing after it.
                    return bad(ch_offset::PLEN);
                }
                (data_offset, data_len)
            }
            _ => (header_end, 0),
        };
        Ok(PduLayout {
            pdu_type: t,
            header_len: hlen,
            header_digest,
            data_offset,
            data_len,
            data_digest: data_digest && data_len > 0,
            total_len: plen,
        })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CommonHeader<T> {
    pub fn set_pdu_type(&mut self, t: PduType) {
        self.buffer.as_mut()[0] = t.into();
    }
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[1] = v;
    }
    pub fn set_hlen(&mut self, v: u8) {
        self.buffer.as_mut()[2] = v;
    }
    pub fn set_pdo(&mut self, v: u8) {
        self.buffer.as_mut()[3] = v;
    }
    pub fn set_plen(&mut self, v: u32) {
        put32(self.buffer.as_mut(), 4, v);
    }
}

/// Where the parts of a PDU are, from [`CommonHeader::layout`]. Offsets are from the start
/// of the PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PduLayout {
    pub pdu_type: PduType,
    /// HLEN: the PDU header including the CH, without the header digest.
    pub header_len: usize,
    pub header_digest: bool,
    pub data_offset: usize,
    pub data_len: usize,
    pub data_digest: bool,
    /// PLEN: the whole PDU.
    pub total_len: usize,
}

impl PduLayout {
    /// Bytes from the start of the PDU to the end of its header digest (if any).
    pub const fn header_end(&self) -> usize {
        self.header_len + if self.header_digest { DIGEST_LEN } else { 0 }
    }

    /// Checks the header digest of a PDU whose first `header_end()` bytes are in `pdu`.
    pub fn header_digest_ok(&self, pdu: &[u8]) -> bool {
        !self.header_digest
            || pdu
                .get(..self.header_end())
                .is_some_and(|h| crc32c(&h[..self.header_len]) == le32(h, self.header_len))
    }

    /// Checks the data digest of a complete PDU in `pdu`.
    pub fn data_digest_ok(&self, pdu: &[u8]) -> bool {
        if !self.data_digest {
            return true;
        }
        let end = self.data_offset + self.data_len;
        pdu.get(self.data_offset..end + DIGEST_LEN)
            .is_some_and(|d| crc32c(&d[..self.data_len]) == le32(d, self.data_len))
    }
}

/// Writes the CH of a PDU with `header_len` bytes of header, optional header digest and
/// `data_len` bytes of data at `pdo` (0 = right after the header), with an optional data
/// digest, and returns PLEN. `pdo` must be 0 or at least the header end.
pub fn emit_common_header(
    buf: &mut [u8],
    pdu_type: PduType,
    extra_flags: u8,
    header_digest: bool,
    data_digest: bool,
    pdo: u8,
    data_len: usize,
) -> Result<u32> {
    let hlen = pdu_type.header_len().ok_or(Error::Malformed)?;
    let header_end = hlen + if header_digest { DIGEST_LEN } else { 0 };
    let data_offset = if pdo == 0 {
        header_end
    } else {
        usize::from(pdo)
    };
    if data_offset < header_end || buf.len() < CH_LEN {
        return Err(Error::Malformed);
    }
    let total = if data_len == 0 {
        header_end
    } else {
        data_offset + data_len + if data_digest { DIGEST_LEN } else { 0 }
    };
    let plen = u32::try_from(total).map_err(|_| Error::Malformed)?;
    let mut fl = extra_flags & !(flags::HDGSTF | flags::DDGSTF);
    if header_digest {
        fl |= flags::HDGSTF;
    }
    if data_digest && data_len > 0 {
        fl |= flags::DDGSTF;
    }
    let mut ch = CommonHeader::new_unchecked(buf);
    ch.set_pdu_type(pdu_type);
    ch.set_flags(fl);
    ch.set_hlen(u8::try_from(hlen).map_err(|_| Error::Malformed)?);
    // TermReqs carry their data right after the header and leave PDO zero.
    ch.set_pdo(if data_len == 0 || !pdu_type.has_pdo() {
        0
    } else {
        u8::try_from(data_offset).map_err(|_| Error::Malformed)?
    });
    ch.set_plen(plen);
    Ok(plen)
}

/// Computes the header digest over `pdu[..hlen]` and writes it at `pdu[hlen..hlen + 4]`.
pub fn put_header_digest(pdu: &mut [u8], hlen: usize) -> Result<()> {
    if pdu.len() < hlen + DIGEST_LEN {
        return Err(Error::Truncated);
    }
    let d = crc32c(&pdu[..hlen]);
    put32(pdu, hlen, d);
    Ok(())
}

/// The data digest of `data`, as written after it.
pub fn data_digest(data: &[u8]) -> [u8; DIGEST_LEN] {
    crc32c(data).to_le_bytes()
}

/// ICReq (host to controller) or ICResp (controller to host): the connection parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcRepr {
    pub pfv: u16,
    /// ICReq: HPDA, the host's PDU data alignment; ICResp: CPDA. In dwords, 0's based.
    pub pda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// ICReq: MAXR2T (0's based); ICResp: MAXH2CDATA in bytes.
    pub max: u32,
}

impl IcRepr {
    /// Parses an ICReq or ICResp whose whole 128-byte header is in `pdu`.
    pub fn parse(pdu: &[u8]) -> Result<Self> {
        let h = pdu.get(..IC_LEN).ok_or(Error::Truncated)?;
        if !matches!(PduType::from(h[0]), PduType::IcReq | PduType::IcResp) {
            return Err(Error::Malformed);
        }
        Ok(Self {
            pfv: le16(h, 8),
            pda: h[10],
            header_digest: h[11] & dgst::HDGST_ENABLE != 0,
            data_digest: h[11] & dgst::DDGST_ENABLE != 0,
            max: le32(h, 12),
        })
    }

    /// Writes a whole ICReq or ICResp (128 bytes, reserved bytes zeroed) into `buf`.
    pub fn emit(&self, pdu_type: PduType, buf: &mut [u8]) -> Result<usize> {
        if !matches!(pdu_type, PduType::IcReq | PduType::IcResp) {
            return Err(Error::Malformed);
        }
        let h = buf.get_mut(..IC_LEN).ok_or(Error::Truncated)?;
        h.fill(0);
        emit_common_header(h, pdu_type, 0, false, false, 0, 0)?;
        put16(h, 8, self.pfv);
        h[10] = self.pda;
        h[11] = (if self.header_digest {
            dgst::HDGST_ENABLE
        } else {
            0
        }) | (if self.data_digest {
            dgst::DDGST_ENABLE
        } else {
            0
        });
        put32(h, 12, self.max);
        Ok(IC_LEN)
    }
}

/// H2CTermReq or C2HTermReq: a fatal error that ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermReqRepr {
    pub fes: Fes,
    /// Fatal error information: for [`Fes::InvalidHeaderField`] the offset of the field;
    /// for digest errors and the rest, 0.
    pub fei: u32,
}

impl TermReqRepr {
    pub fn parse(pdu: &[u8]) -> Result<Self> {
        let h = pdu.get(..TERM_LEN).ok_or(Error::Truncated)?;
        if !matches!(
            PduType::from(h[0]),
            PduType::H2cTermReq | PduType::C2hTermReq
        ) {
            return Err(Error::Malformed);
        }
        Ok(Self {
            fes: le16(h, 8).into(),
            fei: le32(h, 10),
        })
    }

    /// Writes a TermReq carrying up to [`TERM_MAX_DATA`] bytes of `offending` (the header
    /// of the PDU in error) and returns its length.
    pub fn emit(&self, pdu_type: PduType, offending: &[u8], buf: &mut [u8]) -> Result<usize> {
        if !matches!(pdu_type, PduType::H2cTermReq | PduType::C2hTermReq) {
            return Err(Error::Malformed);
        }
        let data = &offending[..offending.len().min(TERM_MAX_DATA)];
        let total = TERM_LEN + data.len();
        let out = buf.get_mut(..total).ok_or(Error::Truncated)?;
        out[..TERM_LEN].fill(0);
        emit_common_header(out, pdu_type, 0, false, false, 0, data.len())?;
        put16(out, 8, self.fes.into());
        put32(out, 10, self.fei);
        out[TERM_LEN..].copy_from_slice(data);
        Ok(total)
    }
}

/// H2CData, C2HData or R2T: the 16 bytes after the CH name a command, a transfer tag and a
/// range of its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRepr {
    pub pdu_type: PduType,
    /// CCCID: the command identifier of the capsule the data belongs to.
    pub cccid: u16,
    /// TTAG (H2CData, R2T); reserved (0) in C2HData.
    pub ttag: u16,
    /// DATAO / R2TO.
    pub offset: u32,
    /// DATAL / R2TL.
    pub length: u32,
}

impl DataRepr {
    pub fn parse(pdu: &[u8]) -> Result<Self> {
        let h = pdu.get(..DATA_HDR_LEN).ok_or(Error::Truncated)?;
        let pdu_type = PduType::from(h[0]);
        if !matches!(pdu_type, PduType::H2cData | PduType::C2hData | PduType::R2t) {
            return Err(Error::Malformed);
        }
        Ok(Self {
            pdu_type,
            cccid: le16(h, 8),
            ttag: le16(h, 10),
            offset: le32(h, 12),
            length: le32(h, 16),
        })
    }

    /// Writes the 24-byte header (CH included) of a PDU whose data (if any) follows its
    /// header and header digest directly; returns PLEN.
    pub fn emit(
        &self,
        extra_flags: u8,
        header_digest: bool,
        data_digest: bool,
        buf: &mut [u8],
    ) -> Result<u32> {
        if !matches!(
            self.pdu_type,
            PduType::H2cData | PduType::C2hData | PduType::R2t
        ) {
            return Err(Error::Malformed);
        }
        let h = buf.get_mut(..DATA_HDR_LEN).ok_or(Error::Truncated)?;
        h.fill(0);
        let data_len = if self.pdu_type == PduType::R2t {
            0
        } else {
            self.length as usize
        };
        let plen = emit_common_header(
            h,
            self.pdu_type,
            extra_flags,
            header_digest,
            data_digest,
            0,
            data_len,
        )?;
        put16(h, 8, self.cccid);
        put16(h, 10, self.ttag);
        put32(h, 12, self.offset);
        put32(h, 16, self.length);
        Ok(plen)
    }

    /// Checks DATAL against the data the PDU really carries (H2CData, C2HData) or, for an
    /// R2T, that it carries none. The CH's own checks cannot see this field.
    pub fn check_length(&self, layout: &PduLayout) -> core::result::Result<(), BadField> {
        let want = if self.pdu_type == PduType::R2t {
            0
        } else {
            self.length as usize
        };
        if layout.data_len == want && (self.pdu_type == PduType::R2t || want > 0) {
            Ok(())
        } else {
            Err(BadField {
                offset: Self::LENGTH_FIELD,
            })
        }
    }

    /// Byte offsets of the fields, for [`BadField`].
    pub const OFFSET_FIELD: u32 = 12;
    pub const LENGTH_FIELD: u32 = 16;
    pub const TTAG_FIELD: u32 = 10;
    pub const CCCID_FIELD: u32 = 8;
}

/// The SQE of a CapsuleCmd (bytes 8..72 of a PDU whose header is in `pdu`).
pub fn capsule_sqe(pdu: &[u8]) -> Result<&[u8; 64]> {
    pdu.get(CH_LEN..CAPSULE_CMD_LEN)
        .ok_or(Error::Truncated)?
        .try_into()
        .map_err(|_| Error::Truncated)
}

/// Writes a CapsuleResp header (CH + the 16-byte CQE) and returns PLEN.
pub fn emit_capsule_resp(cqe: &[u8; 16], header_digest: bool, buf: &mut [u8]) -> Result<u32> {
    let h = buf.get_mut(..CAPSULE_RESP_LEN).ok_or(Error::Truncated)?;
    let plen = emit_common_header(h, PduType::CapsuleResp, 0, header_digest, false, 0, 0)?;
    h[CH_LEN..].copy_from_slice(cqe);
    Ok(plen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICReq as Linux's nvme-tcp host sends it: PFV 0, HPDA 0, both digests, MAXR2T 0.
    const ICREQ: [u8; 16] = [0x00, 0x00, 128, 0, 128, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0];

    fn icreq() -> [u8; 128] {
        let mut b = [0u8; 128];
        b[..16].copy_from_slice(&ICREQ);
        b
    }

    #[test]
    fn icreq_parses_and_reemits_identically() {
        let b = icreq();
        let ch = CommonHeader::new_checked(&b[..]).unwrap();
        assert_eq!(
            (ch.pdu_type(), ch.hlen(), ch.plen()),
            (PduType::IcReq, 128, 128)
        );
        let layout = ch.layout().unwrap();
        assert_eq!((layout.data_len, layout.header_digest), (0, false));
        let r = IcRepr::parse(&b).unwrap();
        assert_eq!(
            r,
            IcRepr {
                pfv: 0,
                pda: 0,
                header_digest: true,
                data_digest: true,
                max: 0
            }
        );
        let mut out = [0xffu8; 128];
        r.emit(PduType::IcReq, &mut out).unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn icresp_fields_at_spec_offsets() {
        let r = IcRepr {
            pfv: 0,
            pda: 3,
            header_digest: true,
            data_digest: false,
            max: 0x0002_0000,
        };
        let mut out = [0u8; 128];
        assert_eq!(r.emit(PduType::IcResp, &mut out), Ok(128));
        assert_eq!(
            &out[..16],
            &[0x01, 0, 128, 0, 128, 0, 0, 0, 0, 0, 3, 0x01, 0, 0, 2, 0]
        );
        assert!(out[16..].iter().all(|&b| b == 0));
        assert_eq!(IcRepr::parse(&out[..100]), Err(Error::Truncated));
    }

    #[test]
    fn capsule_cmd_with_in_capsule_data_and_digests() {
        // CapsuleCmd, HDGSTF|DDGSTF, HLEN 72, PDO 76 (after the header digest), 512 data bytes.
        let mut pdu = [0u8; 72 + 4 + 512 + 4];
        let plen =
            emit_common_header(&mut pdu, PduType::CapsuleCmd, 0, true, true, 76, 512).unwrap();
        assert_eq!(plen as usize, pdu.len());
        assert_eq!(&pdu[..8], &[0x04, 0x03, 72, 76, 0x50, 0x02, 0, 0]);
        pdu[8] = 0x01; // an SQE opcode: Write
        put_header_digest(&mut pdu, 72).unwrap();
        for (i, b) in pdu[76..588].iter_mut().enumerate() {
            *b = i as u8;
        }
        let dd = data_digest(&pdu[76..588]);
        pdu[588..].copy_from_slice(&dd);
        let layout = CommonHeader::new_checked(&pdu[..])
            .unwrap()
            .layout()
            .unwrap();
        assert_eq!(
            layout,
            PduLayout {
                pdu_type: PduType::CapsuleCmd,
                header_len: 72,
                header_digest: true,
                data_offset: 76,
                data_len: 512,
                data_digest: true,
                total_len: 592
            }
        );
        assert!(layout.header_digest_ok(&pdu) && layout.data_digest_ok(&pdu));
        assert_eq!(capsule_sqe(&pdu).unwrap()[0], 0x01);
        pdu[9] ^= 1;
        assert!(
            !layout.header_digest_ok(&pdu),
            "a flipped header bit fails the digest"
        );
        pdu[100] ^= 1;
        assert!(
            !layout.data_digest_ok(&pdu),
            "a flipped data bit fails the digest"
        );
    }

    #[test]
    fn layout_names_the_offending_field() {
        let ch = |b: [u8; 8]| CommonHeader::new_checked(b).unwrap().layout();
        let bad = |offset| Err(BadField { offset });
        // Unknown type.
        assert_eq!(ch([0x08, 0, 24, 0, 24, 0, 0, 0]), bad(0));
        // CapsuleResp with HLEN 72.
        assert_eq!(ch([0x05, 0, 72, 0, 72, 0, 0, 0]), bad(2));
        // PLEN shorter than the header.
        assert_eq!(ch([0x04, 0, 72, 0, 71, 0, 0, 0]), bad(4));
        // PLEN shorter than header + header digest.
        assert_eq!(ch([0x04, 0x01, 72, 0, 74, 0, 0, 0]), bad(4));
        // Data but PDO inside the header.
        assert_eq!(ch([0x04, 0, 72, 8, 80, 0, 0, 0]), bad(3));
        // PDO beyond PLEN.
        assert_eq!(ch([0x06, 0, 24, 200, 100, 0, 0, 0]), bad(3));
        // SUCCESS without LAST_PDU, and LAST_PDU on a CapsuleCmd.
        assert_eq!(ch([0x07, 0x08, 24, 24, 100, 0, 0, 0]), bad(1));
        assert_eq!(ch([0x04, 0x04, 72, 0, 72, 0, 0, 0]), bad(1));
        // The lowest bad field is named: flags before HLEN.
        assert_eq!(ch([0x05, 0x02, 99, 0, 24, 0, 0, 0]), bad(1));
        // A TermReq longer than 24 + 128 bytes.
        assert_eq!(ch([0x02, 0, 24, 0, 153, 0, 0, 0]), bad(4));
        // An ICReq that is not 128 bytes.
        assert_eq!(ch([0x00, 0, 128, 0, 200, 0, 0, 0]), bad(4));
        // Digest flags on an ICReq.
        assert_eq!(ch([0x00, 0x01, 128, 0, 128, 0, 0, 0]), bad(1));
        // Data digest flag without data.
        assert_eq!(ch([0x05, 0x02, 24, 0, 24, 0, 0, 0]), bad(1));
        // Data on a CapsuleResp (PDO set) or without PDO.
        assert_eq!(ch([0x05, 0, 24, 24, 40, 0, 0, 0]), bad(3));
        assert_eq!(ch([0x05, 0, 24, 0, 40, 0, 0, 0]), bad(4));
        // PDO at PLEN: padding and no data.
        assert_eq!(ch([0x04, 0, 72, 80, 80, 0, 0, 0]), bad(4));
        // Data digest flag leaving no room for data.
        assert_eq!(ch([0x06, 0x02, 24, 24, 28, 0, 0, 0]), bad(4));
        assert_eq!(
            CommonHeader::new_checked(&[0u8; 7][..]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn h2c_data_and_r2t_round_trip() {
        let r2t = DataRepr {
            pdu_type: PduType::R2t,
            cccid: 0x1234,
            ttag: 7,
            offset: 8192,
            length: 65536,
        };
        let mut out = [0u8; 28];
        assert_eq!(
            r2t.emit(0, true, true, &mut out),
            Ok(28),
            "R2T has no data, so no DDGSTF"
        );
        assert_eq!(&out[..8], &[0x09, 0x01, 24, 0, 28, 0, 0, 0]);
        assert_eq!(&out[8..20], &[0x34, 0x12, 7, 0, 0, 0x20, 0, 0, 0, 0, 1, 0]);
        assert_eq!(DataRepr::parse(&out), Ok(r2t));

        let h2c = DataRepr {
            pdu_type: PduType::H2cData,
            cccid: 1,
            ttag: 7,
            offset: 0,
            length: 4096,
        };
        let mut hdr = [0u8; 24];
        let plen = h2c.emit(flags::LAST_PDU, false, false, &mut hdr).unwrap();
        assert_eq!(plen, 24 + 4096);
        assert_eq!(&hdr[..4], &[0x06, flags::LAST_PDU, 24, 24]);
        assert_eq!(DataRepr::parse(&hdr), Ok(h2c));
        let mut whole = [0u8; 24 + 4096];
        whole[..24].copy_from_slice(&hdr);
        let l = CommonHeader::new_checked(&whole[..])
            .unwrap()
            .layout()
            .unwrap();
        assert_eq!((l.data_offset, l.data_len), (24, 4096));
        assert_eq!(h2c.check_length(&l), Ok(()));
        let lying = DataRepr {
            length: 4095,
            ..h2c
        };
        assert_eq!(lying.check_length(&l), Err(BadField { offset: 16 }));
        assert_eq!(DataRepr::parse(&icreq()), Err(Error::Malformed));
    }

    #[test]
    fn c2h_data_with_success_flag() {
        let c2h = DataRepr {
            pdu_type: PduType::C2hData,
            cccid: 9,
            ttag: 0,
            offset: 4096,
            length: 512,
        };
        let mut hdr = [0u8; 24];
        let plen = c2h
            .emit(flags::LAST_PDU | flags::SUCCESS, false, true, &mut hdr)
            .unwrap();
        assert_eq!(plen, 24 + 512 + 4);
        assert_eq!(hdr[1], flags::LAST_PDU | flags::SUCCESS | flags::DDGSTF);
    }

    #[test]
    fn term_req_carries_the_offending_header() {
        let t = TermReqRepr {
            fes: Fes::InvalidHeaderField,
            fei: 2,
        };
        let offending = [0xabu8; 200];
        let mut out = [0u8; 24 + 128];
        let n = t.emit(PduType::C2hTermReq, &offending, &mut out).unwrap();
        assert_eq!(n, 152, "at most 128 bytes of the offending header");
        assert_eq!(
            &out[..14],
            &[0x03, 0, 24, 0, 152, 0, 0, 0, 1, 0, 2, 0, 0, 0]
        );
        assert!(out[24..].iter().all(|&b| b == 0xab));
        assert_eq!(TermReqRepr::parse(&out), Ok(t));
        let l = CommonHeader::new_checked(&out[..])
            .unwrap()
            .layout()
            .unwrap();
        assert_eq!((l.data_offset, l.data_len), (24, 128));
        assert_eq!(Fes::from(0x42), Fes::Unknown(0x42));
        assert_eq!(u16::from(Fes::Unknown(0x42)), 0x42);
    }

    #[test]
    fn capsule_resp_header() {
        let mut cqe = [0u8; 16];
        cqe[12] = 0x77;
        let mut out = [0u8; 28];
        assert_eq!(emit_capsule_resp(&cqe, true, &mut out), Ok(28));
        assert_eq!(&out[..8], &[0x05, 0x01, 24, 0, 28, 0, 0, 0]);
        put_header_digest(&mut out, 24).unwrap();
        let l = CommonHeader::new_checked(&out[..])
            .unwrap()
            .layout()
            .unwrap();
        assert!(l.header_digest_ok(&out));
        assert_eq!(out[20], 0x77);
    }

    #[test]
    fn pdu_types_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(PduType::from(v)), v);
        }
        assert_eq!(PduType::from(0x08), PduType::Unknown(0x08));
    }
}
