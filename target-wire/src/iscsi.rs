//! iSCSI PDUs: RFC 7143 section 11 ("iSCSI PDU Formats") and the text key=value format of
//! section 6 ("Text Mode Negotiation").
//!
//! Every PDU is a 48-byte Basic Header Segment (BHS), then TotalAHSLength 4-byte words of
//! Additional Header Segments, then an optional 4-byte header digest (CRC32C over BHS and
//! AHS), then DataSegmentLength bytes of data padded to a 4-byte boundary, then an optional
//! data digest over the padded data (present only when there is data). [`Bhs::layout`] works
//! those lengths out once the digests are negotiated.
//!
//! Digests are CRC32C like NVMe/TCP's, but RFC 7143 section 13.1 sends them little-endian
//! in the byte order of iSCSI's wire: the CRC value's least significant byte first.

use crate::crc32c::crc32c;
use crate::{Error, Result};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Length of a header or data digest.
pub const DIGEST_LEN: usize = 4;
/// Longest key name (RFC 7143 section 6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value of most keys (section 6.1: 255 bytes unless the key says otherwise).
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value of any key: binary values such as CHAP_C may be longer (section 6.1 allows
/// large-binary-values); this bound keeps a text segment's parse cheap.
pub const MAX_LONG_VALUE_LEN: usize = 8192;

/// Opcode (BHS byte 0, low 6 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    Snack,
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    R2t,
    AsyncMessage,
    Reject,
    Unknown(u8),
}

impl From<u8> for Opcode {
    fn from(v: u8) -> Self {
        match v & 0x3f {
            0x00 => Self::NopOut,
            0x01 => Self::ScsiCommand,
            0x02 => Self::TaskMgmtRequest,
            0x03 => Self::LoginRequest,
            0x04 => Self::TextRequest,
            0x05 => Self::DataOut,
            0x06 => Self::LogoutRequest,
            0x10 => Self::Snack,
            0x20 => Self::NopIn,
            0x21 => Self::ScsiResponse,
            0x22 => Self::TaskMgmtResponse,
            0x23 => Self::LoginResponse,
            0x24 => Self::TextResponse,
            0x25 => Self::DataIn,
            0x26 => Self::LogoutResponse,
            0x31 => Self::R2t,
            0x32 => Self::AsyncMessage,
            0x3f => Self::Reject,
            other => Self::Unknown(other),
        }
    }
}

impl From<Opcode> for u8 {
    fn from(v: Opcode) -> Self {
        match v {
            Opcode::NopOut => 0x00,
            Opcode::ScsiCommand => 0x01,
            Opcode::TaskMgmtRequest => 0x02,
            Opcode::LoginRequest => 0x03,
            Opcode::TextRequest => 0x04,
            Opcode::DataOut => 0x05,
            Opcode::LogoutRequest => 0x06,
            Opcode::Snack => 0x10,
            Opcode::NopIn => 0x20,
            Opcode::ScsiResponse => 0x21,
            Opcode::TaskMgmtResponse => 0x22,
            Opcode::LoginResponse => 0x23,
            Opcode::TextResponse => 0x24,
            Opcode::DataIn => 0x25,
            Opcode::LogoutResponse => 0x26,
            Opcode::R2t => 0x31,
            Opcode::AsyncMessage => 0x32,
            Opcode::Reject => 0x3f,
            Opcode::Unknown(v) => v & 0x3f,
        }
    }
}

impl Opcode {
    /// Sent by initiators (section 11.1.1: 0x00-0x1f).
    pub fn from_initiator(self) -> bool {
        u8::from(self) < 0x20
    }
}

/// BHS byte 1 flags. Their meaning depends on the opcode; these are the ones RFC 7143 names.
pub mod flags {
    /// Final: the last PDU of a sequence (SCSI Command, Data, Text, Login's T bit).
    pub const F: u8 = 0x80;
    /// SCSI Command: data-in expected.
    pub const R: u8 = 0x40;
    /// SCSI Command: data-out expected.
    pub const W: u8 = 0x20;
    /// Login: transit to the next stage.
    pub const T: u8 = 0x80;
    /// Login and Text: continue, more text follows in the next PDU.
    pub const C: u8 = 0x40;
    /// Data-In: acknowledge requested (ERL > 0 only).
    pub const A: u8 = 0x40;
    /// Data-In: the residual counts are valid because the status is in this PDU.
    pub const S: u8 = 0x01;
    /// SCSI Response / Data-In with S: residual overflow.
    pub const O: u8 = 0x04;
    /// SCSI Response / Data-In with S: residual underflow.
    pub const U: u8 = 0x02;
}

/// BHS byte 0 bit 6: deliver immediately (initiator PDUs).
pub const IMMEDIATE: u8 = 0x40;

/// Task attributes (SCSI Command byte 1, low 3 bits).
pub mod attr {
    pub const UNTAGGED: u8 = 0;
    pub const SIMPLE: u8 = 1;
    pub const ORDERED: u8 = 2;
    pub const HEAD_OF_QUEUE: u8 = 3;
    pub const ACA: u8 = 4;
}

/// Reject reasons (section 11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OP_REJECT: u8 = 0x0a;
    pub const NEGOTIATION_RESET: u8 = 0x0b;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Task management function codes (section 11.5.1) and responses (11.6.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;

    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const FUNCTION_NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const FUNCTION_REJECTED: u8 = 255;
}

/// Login status class and detail (section 11.13.5), as `(class << 8) | detail`.
pub mod login_status {
    pub const SUCCESS: u16 = 0x0000;
    pub const TARGET_MOVED_TEMPORARILY: u16 = 0x0101;
    pub const INITIATOR_ERROR: u16 = 0x0200;
    pub const AUTHENTICATION_FAILURE: u16 = 0x0201;
    pub const AUTHORIZATION_FAILURE: u16 = 0x0202;
    pub const NOT_FOUND: u16 = 0x0203;
    pub const TARGET_REMOVED: u16 = 0x0204;
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
    pub const TOO_MANY_CONNECTIONS: u16 = 0x0206;
    pub const MISSING_PARAMETER: u16 = 0x0207;
    pub const CANT_INCLUDE_IN_SESSION: u16 = 0x0208;
    pub const SESSION_TYPE_NOT_SUPPORTED: u16 = 0x0209;
    pub const SESSION_DOES_NOT_EXIST: u16 = 0x020a;
    pub const INVALID_DURING_LOGIN: u16 = 0x020b;
    pub const TARGET_ERROR: u16 = 0x0300;
    pub const SERVICE_UNAVAILABLE: u16 = 0x0301;
    pub const OUT_OF_RESOURCES: u16 = 0x0302;
}

/// Login stages (CSG/NSG, section 11.12.3).
pub mod stage {
    pub const SECURITY: u8 = 0;
    pub const OPERATIONAL: u8 = 1;
    pub const FULL_FEATURE: u8 = 3;
}

/// Field offsets in the BHS shared by several opcodes.
pub mod field {
    /// TotalAHSLength, in 4-byte words.
    pub const TOTAL_AHS_LEN: usize = 4;
    /// DataSegmentLength, 3 bytes big-endian.
    pub const DATA_SEGMENT_LEN: usize = 5;
    pub const LUN: usize = 8;
    /// Initiator Task Tag.
    pub const ITT: usize = 16;
    /// Target Transfer Tag; SCSI Command: Expected Data Transfer Length.
    pub const TTT: usize = 20;
    pub const EDTL: usize = 20;
    /// CmdSN (initiator PDUs) or StatSN (target PDUs).
    pub const CMD_SN: usize = 24;
    pub const STAT_SN: usize = 24;
    /// ExpStatSN (initiator) or ExpCmdSN (target).
    pub const EXP_STAT_SN: usize = 28;
    pub const EXP_CMD_SN: usize = 28;
    /// MaxCmdSN (target PDUs).
    pub const MAX_CMD_SN: usize = 32;
    /// The CDB of a SCSI Command.
    pub const CDB: usize = 32;
    /// DataSN / R2TSN / ExpDataSN.
    pub const DATA_SN: usize = 36;
    /// Buffer Offset (Data-In/Out, R2T).
    pub const BUFFER_OFFSET: usize = 40;
    /// Desired Data Transfer Length (R2T); Residual Count (Data-In, SCSI Response).
    pub const DESIRED_LEN: usize = 44;
    pub const RESIDUAL: usize = 44;
    /// Bidirectional read residual (SCSI Response).
    pub const BIDI_RESIDUAL: usize = 40;
    /// Login: ISID (6 bytes) and TSIH.
    pub const ISID: usize = 8;
    pub const TSIH: usize = 14;
    /// Login/Logout/Text connection ID.
    pub const CID: usize = 20;
    /// Task Management Request: Referenced Task Tag, RefCmdSN.
    pub const REF_TASK_TAG: usize = 20;
    pub const REF_CMD_SN: usize = 32;
}

/// Rounds a data segment length up to the 4-byte boundary it is padded to.
pub fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// A view of a Basic Header Segment.
#[derive(Debug, Clone, Copy)]
pub struct Bhs<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Bhs<T> {
    /// Wraps at least [`BHS_LEN`] bytes.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < BHS_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        let b = self.b();
        u32::from_be_bytes([b[offset], b[offset + 1], b[offset + 2], b[offset + 3]])
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        let b = self.b();
        u16::from_be_bytes([b[offset], b[offset + 1]])
    }

    pub fn opcode(&self) -> Opcode {
        Opcode::from(self.b()[0])
    }

    /// The I bit: an immediate (non-queued) command.
    pub fn immediate(&self) -> bool {
        self.b()[0] & IMMEDIATE != 0
    }

    /// Byte 1: the F bit and the opcode's own flags.
    pub fn flags(&self) -> u8 {
        self.b()[1]
    }

    pub fn final_bit(&self) -> bool {
        self.flags() & flags::F != 0
    }

    /// Bytes of Additional Header Segments.
    pub fn ahs_len(&self) -> usize {
        usize::from(self.b()[field::TOTAL_AHS_LEN]) * 4
    }

    /// Bytes of data, without padding.
    pub fn data_segment_len(&self) -> usize {
        let b = self.b();
        (usize::from(b[5]) << 16) | (usize::from(b[6]) << 8) | usize::from(b[7])
    }

    pub fn lun(&self) -> [u8; 8] {
        let mut l = [0; 8];
        l.copy_from_slice(&self.b()[field::LUN..field::LUN + 8]);
        l
    }

    pub fn itt(&self) -> u32 {
        self.u32_at(field::ITT)
    }

    /// CmdSN of an initiator PDU.
    pub fn cmd_sn(&self) -> u32 {
        self.u32_at(field::CMD_SN)
    }

    /// ExpStatSN of an initiator PDU.
    pub fn exp_stat_sn(&self) -> u32 {
        self.u32_at(field::EXP_STAT_SN)
    }

    /// The 16-byte CDB field of a SCSI Command.
    pub fn cdb(&self) -> &[u8] {
        &self.b()[field::CDB..field::CDB + 16]
    }

    /// Where the parts of this PDU lie, given the negotiated digests.
    pub fn layout(&self, header_digest: bool, data_digest: bool) -> PduLayout {
        let ahs = self.ahs_len();
        let data = self.data_segment_len();
        let header = BHS_LEN + ahs + if header_digest { DIGEST_LEN } else { 0 };
        let ddgst = if data_digest && data > 0 {
            DIGEST_LEN
        } else {
            0
        };
        PduLayout {
            ahs,
            header,
            data,
            total: header + padded(data) + ddgst,
            header_digest,
            data_digest: ddgst != 0,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bhs<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.bm()[offset..offset + 4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.bm()[offset..offset + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// Clears the BHS and sets its opcode.
    pub fn init(&mut self, opcode: Opcode) {
        let b = self.bm();
        b[..BHS_LEN].fill(0);
        b[0] = opcode.into();
    }

    pub fn set_immediate(&mut self, on: bool) {
        let b = self.bm();
        b[0] = (b[0] & !IMMEDIATE) | if on { IMMEDIATE } else { 0 };
    }

    pub fn set_flags(&mut self, v: u8) {
        self.bm()[1] = v;
    }

    pub fn set_byte(&mut self, offset: usize, v: u8) {
        self.bm()[offset] = v;
    }

    pub fn set_ahs_len(&mut self, bytes: usize) -> Result<()> {
        if !bytes.is_multiple_of(4) || bytes / 4 > 255 {
            return Err(Error::Malformed);
        }
        self.bm()[field::TOTAL_AHS_LEN] = (bytes / 4) as u8;
        Ok(())
    }

    pub fn set_data_segment_len(&mut self, len: usize) -> Result<()> {
        if len >= 1 << 24 {
            return Err(Error::Malformed);
        }
        let b = self.bm();
        b[5] = (len >> 16) as u8;
        b[6] = (len >> 8) as u8;
        b[7] = len as u8;
        Ok(())
    }

    pub fn set_lun(&mut self, lun: [u8; 8]) {
        self.bm()[field::LUN..field::LUN + 8].copy_from_slice(&lun);
    }

    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(field::ITT, v);
    }
}

/// Where a PDU's parts lie (offsets from its first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PduLayout {
    /// Bytes of AHS after the BHS.
    pub ahs: usize,
    /// Bytes up to the data: BHS, AHS and the header digest.
    pub header: usize,
    /// Bytes of data, without padding.
    pub data: usize,
    /// The whole PDU, padding and digests included.
    pub total: usize,
    pub header_digest: bool,
    pub data_digest: bool,
}

impl PduLayout {
    /// Checks the header digest of a PDU whose first `header` bytes are in `pdu`.
    pub fn header_digest_ok(&self, pdu: &[u8]) -> bool {
        !self.header_digest
            || pdu.len() >= self.header
                && digest(&pdu[..self.header - DIGEST_LEN])
                    == pdu[self.header - DIGEST_LEN..self.header]
    }

    /// Checks the data digest of a whole PDU.
    pub fn data_digest_ok(&self, pdu: &[u8]) -> bool {
        if !self.data_digest {
            return true;
        }
        let end = self.header + padded(self.data);
        pdu.len() >= end + DIGEST_LEN
            && digest(&pdu[self.header..end]) == pdu[end..end + DIGEST_LEN]
    }
}

/// The digest of `bytes` as it goes on the wire (RFC 7143 section 13.1: CRC32C, least
/// significant byte first, as Linux's iscsi_tcp and libiscsi send it).
pub fn digest(bytes: &[u8]) -> [u8; DIGEST_LEN] {
    crc32c(bytes).to_le_bytes()
}

/// Login Request fields (section 11.12) beyond the common ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRequestRepr {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LoginRequestRepr {
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self> {
        if bhs.opcode() != Opcode::LoginRequest {
            return Err(Error::Malformed);
        }
        let f = bhs.flags();
        let b = bhs.b();
        let mut isid = [0; 6];
        isid.copy_from_slice(&b[field::ISID..field::ISID + 6]);
        Ok(Self {
            transit: f & flags::T != 0,
            cont: f & flags::C != 0,
            csg: (f >> 2) & 3,
            nsg: f & 3,
            version_max: b[2],
            version_min: b[3],
            isid,
            tsih: bhs.u16_at(field::TSIH),
            itt: bhs.itt(),
            cid: bhs.u16_at(field::CID),
            cmd_sn: bhs.cmd_sn(),
            exp_stat_sn: bhs.exp_stat_sn(),
        })
    }
}

/// A Login Response (section 11.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginResponseRepr {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// Status class << 8 | detail.
    pub status: u16,
    pub data_len: usize,
}

impl LoginResponseRepr {
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() < BHS_LEN {
            return Err(Error::Truncated);
        }
        let mut h = Bhs::new_unchecked(buf);
        h.init(Opcode::LoginResponse);
        let mut f = (self.csg & 3) << 2 | (self.nsg & 3);
        if self.transit {
            f |= flags::T;
        }
        if self.cont {
            f |= flags::C;
        }
        h.set_flags(f);
        h.set_byte(2, self.version_max);
        h.set_byte(3, self.version_active);
        h.set_data_segment_len(self.data_len)?;
        h.bm()[field::ISID..field::ISID + 6].copy_from_slice(&self.isid);
        h.set_u16(field::TSIH, self.tsih);
        h.set_itt(self.itt);
        h.set_u32(field::STAT_SN, self.stat_sn);
        h.set_u32(field::EXP_CMD_SN, self.exp_cmd_sn);
        h.set_u32(field::MAX_CMD_SN, self.max_cmd_sn);
        h.set_u16(36, self.status);
        Ok(())
    }

    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self> {
        if bhs.opcode() != Opcode::LoginResponse {
            return Err(Error::Malformed);
        }
        let f = bhs.flags();
        let b = bhs.b();
        let mut isid = [0; 6];
        isid.copy_from_slice(&b[field::ISID..field::ISID + 6]);
        Ok(Self {
            transit: f & flags::T != 0,
            cont: f & flags::C != 0,
            csg: (f >> 2) & 3,
            nsg: f & 3,
            version_max: b[2],
            version_active: b[3],
            isid,
            tsih: bhs.u16_at(field::TSIH),
            itt: bhs.itt(),
            stat_sn: bhs.u32_at(field::STAT_SN),
            exp_cmd_sn: bhs.u32_at(field::EXP_CMD_SN),
            max_cmd_sn: bhs.u32_at(field::MAX_CMD_SN),
            status: bhs.u16_at(36),
            data_len: bhs.data_segment_len(),
        })
    }
}

/// Why a text segment is not valid (RFC 7143 section 6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextError {
    /// A pair has no `=`.
    NoEquals,
    /// Empty key, key longer than 63 bytes, or characters outside the key grammar.
    BadKey,
    /// Longer than [`MAX_LONG_VALUE_LEN`], or not UTF-8.
    BadValue,
}

/// The key=value pairs of a text data segment: NUL-terminated pairs (the last NUL may be
/// missing where a segment was split across PDUs; callers join continued segments first).
pub fn text_pairs(
    data: &[u8],
) -> impl Iterator<Item = core::result::Result<(&str, &str), TextError>> {
    data.split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let eq = pair
                .iter()
                .position(|&b| b == b'=')
                .ok_or(TextError::NoEquals)?;
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k.is_empty() || k.len() > MAX_KEY_LEN || !k.iter().all(|&c| key_char(c)) {
                return Err(TextError::BadKey);
            }
            if v.len() > MAX_LONG_VALUE_LEN {
                return Err(TextError::BadValue);
            }
            let k = core::str::from_utf8(k).map_err(|_| TextError::BadKey)?;
            let v = core::str::from_utf8(v).map_err(|_| TextError::BadValue)?;
            Ok((k, v))
        })
}

/// Key names: letters, digits, `.`, `-`, `+`, `@`, `_` (section 6.1's key-name grammar,
/// extended with `_` for the CHAP keys).
fn key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_')
}

/// A numerical value: decimal, `0x` hex or `0b` base64 (section 6.1, numerical-value); at
/// most 64 bits.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // Leading zeros are allowed by the grammar only for the value 0.
    v.parse().ok()
}

/// A binary value (`0x` hex or `0b` base64) decoded into `out`; the decoded length.
pub fn decode_binary(v: &str, out: &mut [u8]) -> Option<usize> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        let hex = hex.as_bytes();
        // An odd number of digits has an implicit leading zero.
        let n = hex.len().div_ceil(2);
        if hex.is_empty() || n > out.len() {
            return None;
        }
        let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let odd = hex.len() % 2;
        for (i, o) in out[..n].iter_mut().enumerate() {
            let hi = if i == 0 && odd == 1 {
                0
            } else {
                nibble(hex[2 * i - odd])?
            };
            let lo = nibble(hex[2 * i + 1 - odd])?;
            *o = hi << 4 | lo;
        }
        return Some(n);
    }
    let b64 = v
        .strip_prefix("0b")
        .or_else(|| v.strip_prefix("0B"))?
        .as_bytes();
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let trimmed = b64
        .strip_suffix(b"==")
        .or_else(|| b64.strip_suffix(b"="))
        .unwrap_or(b64);
    let mut n = 0;
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in trimmed {
        acc = acc << 6 | u32::from(sextet(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    (n > 0).then_some(n)
}

/// Writes `bytes` as a `0x` hex binary value into `out`; the length written.
pub fn encode_hex(bytes: &[u8], out: &mut [u8]) -> Option<usize> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = 2 + 2 * bytes.len();
    if out.len() < n {
        return None;
    }
    out[0] = b'0';
    out[1] = b'x';
    for (i, b) in bytes.iter().enumerate() {
        out[2 + 2 * i] = HEX[usize::from(b >> 4)];
        out[3 + 2 * i] = HEX[usize::from(b & 15)];
    }
    Some(n)
}

/// The serial number arithmetic of RFC 1982 with SERIAL_BITS 32 (RFC 7143 section 4.2.2.1):
/// `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

/// `a <= b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    #[cfg(not(feature = "std"))]
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn opcodes_round_trip() {
        for v in 0..0x40u8 {
            assert_eq!(u8::from(Opcode::from(v)), v);
        }
        assert_eq!(
            Opcode::from(0x41),
            Opcode::ScsiCommand,
            "the I bit is not the opcode"
        );
        assert!(Opcode::ScsiCommand.from_initiator());
        assert!(!Opcode::ScsiResponse.from_initiator());
    }

    #[test]
    fn bhs_fields_and_layout() {
        let mut b = [0u8; 48];
        let mut h = Bhs::new_unchecked(&mut b[..]);
        h.init(Opcode::ScsiCommand);
        h.set_immediate(true);
        h.set_flags(flags::F | flags::W | attr::SIMPLE);
        h.set_ahs_len(8).unwrap();
        h.set_data_segment_len(0x01_0203).unwrap();
        h.set_lun([0, 1, 0, 0, 0, 0, 0, 0]);
        h.set_itt(0xdead_beef);
        h.set_u32(field::EDTL, 4096);
        assert!(h.set_data_segment_len(1 << 24).is_err());
        assert!(h.set_ahs_len(3).is_err());
        let h = Bhs::new_checked(&b[..]).unwrap();
        assert_eq!(h.opcode(), Opcode::ScsiCommand);
        assert!(h.immediate() && h.final_bit());
        assert_eq!(h.ahs_len(), 8);
        assert_eq!(h.data_segment_len(), 0x01_0203);
        assert_eq!(h.lun(), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h.itt(), 0xdead_beef);
        assert_eq!(h.u32_at(field::EDTL), 4096);
        let l = h.layout(true, true);
        assert_eq!(l.header, 48 + 8 + 4);
        assert_eq!(l.total, 60 + padded(0x01_0203) + 4);
        let l = h.layout(false, false);
        assert_eq!(l.total, 56 + 0x01_0204);
        assert_eq!(Bhs::new_checked(&b[..47]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn data_digest_only_with_data() {
        let mut b = [0u8; 48];
        Bhs::new_unchecked(&mut b[..]).init(Opcode::NopOut);
        let l = Bhs::new_checked(&b[..]).unwrap().layout(true, true);
        assert_eq!((l.header, l.total, l.data_digest), (52, 52, false));
    }

    #[test]
    fn digests_check_out() {
        let mut pdu = vec![0u8; 48];
        Bhs::new_unchecked(&mut pdu[..]).init(Opcode::NopOut);
        Bhs::new_unchecked(&mut pdu[..])
            .set_data_segment_len(5)
            .unwrap();
        let hd = digest(&pdu);
        pdu.extend_from_slice(&hd);
        pdu.extend_from_slice(b"hello\0\0\0");
        let dd = digest(b"hello\0\0\0");
        pdu.extend_from_slice(&dd);
        let l = Bhs::new_checked(&pdu[..]).unwrap().layout(true, true);
        assert_eq!(l.total, pdu.len());
        assert!(l.header_digest_ok(&pdu) && l.data_digest_ok(&pdu));
        pdu[60] ^= 1;
        assert!(!l.data_digest_ok(&pdu));
        pdu[3] ^= 1;
        assert!(!l.header_digest_ok(&pdu));
        // RFC 7143 appendix B.4 (iSCSI's CRC32C examples): 32 bytes of zeroes give
        // 0x8a9136aa, sent least significant byte first.
        assert_eq!(digest(&[0u8; 32]), [0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn login_round_trip() {
        let r = LoginResponseRepr {
            transit: true,
            cont: false,
            csg: stage::OPERATIONAL,
            nsg: stage::FULL_FEATURE,
            version_max: 0,
            version_active: 0,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 7,
            itt: 9,
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 33,
            status: login_status::SUCCESS,
            data_len: 100,
        };
        let mut b = [0u8; 48];
        r.emit(&mut b).unwrap();
        assert_eq!(b[1], 0x87);
        let p = LoginResponseRepr::parse(&Bhs::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(p, r);
        b[0] = 0x43;
        let q = LoginRequestRepr::parse(&Bhs::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(
            (q.csg, q.nsg, q.transit, q.isid, q.tsih),
            (1, 3, true, r.isid, 7)
        );
    }

    #[test]
    fn text_pairs_parse_and_reject() {
        let seg = b"InitiatorName=iqn.x\0SessionType=Normal\0\0";
        let pairs: Vec<_> = text_pairs(seg).collect();
        assert_eq!(
            pairs,
            vec![
                Ok(("InitiatorName", "iqn.x")),
                Ok(("SessionType", "Normal"))
            ]
        );
        assert_eq!(text_pairs(b"a=b=c").next(), Some(Ok(("a", "b=c"))));
        assert_eq!(
            text_pairs(b"novalue\0").next(),
            Some(Err(TextError::NoEquals))
        );
        assert_eq!(text_pairs(b"=x\0").next(), Some(Err(TextError::BadKey)));
        assert_eq!(text_pairs(b"k y=x\0").next(), Some(Err(TextError::BadKey)));
        let long = [b'k'; 64];
        let mut seg = long.to_vec();
        seg.extend_from_slice(b"=1");
        assert_eq!(text_pairs(&seg).next(), Some(Err(TextError::BadKey)));
        assert_eq!(
            text_pairs(b"k=\xff\0").next(),
            Some(Err(TextError::BadValue))
        );
        assert_eq!(text_pairs(b"k=\0").next(), Some(Ok(("k", ""))));
    }

    #[test]
    fn numbers_and_binaries() {
        assert_eq!(parse_number("262144"), Some(262_144));
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
        let mut out = [0u8; 8];
        assert_eq!(decode_binary("0x0102ff", &mut out), Some(3));
        assert_eq!(&out[..3], &[1, 2, 0xff]);
        assert_eq!(decode_binary("0x102", &mut out), Some(2));
        assert_eq!(&out[..2], &[1, 2]);
        assert_eq!(decode_binary("0bAQL/", &mut out), Some(3));
        assert_eq!(&out[..3], &[1, 2, 0xff]);
        assert_eq!(decode_binary("0bAQ==", &mut out), Some(1));
        assert_eq!(decode_binary("0x", &mut out), None);
        assert_eq!(decode_binary("0xzz", &mut out), None);
        assert_eq!(decode_binary("0x010203040506070809", &mut out), None);
        assert_eq!(decode_binary("123", &mut out), None);
        let mut hex = [0u8; 8];
        assert_eq!(encode_hex(&[0xab, 1], &mut hex), Some(6));
        assert_eq!(&hex[..6], b"0xab01");
        assert_eq!(encode_hex(&[0; 4], &mut hex), None);
    }

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(u32::MAX, 0));
        assert!(!sn_lt(0, u32::MAX));
        assert!(sn_le(5, 5));
        assert!(!sn_lt(5, 5));
    }
}
