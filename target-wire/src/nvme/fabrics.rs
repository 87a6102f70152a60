//! Fabrics commands: NVMe Base Specification 2.0, section 6 ("Fabrics Command Set"):
//! 6.3 Connect (Figures 544-548), 6.5 Property Get (Figures 551-552), 6.6 Property Set
//! (Figures 553-554), 6.4 Disconnect, 6.1/6.2 Authentication Send/Receive; NVMe over
//! Fabrics 1.1 sections 3.3.x. Layouts as Linux `struct nvmf_connect_command`,
//! `nvmf_connect_data`, `nvmf_property_get_command`, `nvmf_property_set_command`.
//!
//! Every Fabrics command has opcode 7Fh and FCTYPE at byte 4; bytes 5-23 are reserved
//! and the command-specific fields start at byte 40. The Connect data (1024 bytes) is the
//! command's data, in the capsule for NVMe/TCP.

use super::opcode::{FABRICS_OPCODE, FabricsType};
use super::sqe::Sqe;
use super::{NQN_FIELD_LEN, nul_terminated, put_nul_terminated};
use crate::{Error, Result};

/// Length of the Connect command's data.
pub const CONNECT_DATA_LEN: usize = 1024;
const _: () = assert!(ConnectData::<&[u8]>::LEN == CONNECT_DATA_LEN);
const HOSTID: usize = 0;
const SUBNQN: usize = 256;
const HOSTNQN: usize = 512;
const _: () = assert!(HOSTNQN + NQN_FIELD_LEN + 256 == CONNECT_DATA_LEN);

/// Byte offsets of Connect fields, for the IPO of a Connect Invalid Parameters response.
pub mod connect_offset {
    /// In the SQE.
    pub const RECFMT: u16 = 40;
    pub const QID: u16 = 42;
    pub const SQSIZE: u16 = 44;
    pub const CATTR: u16 = 46;
    pub const KATO: u16 = 48;
    /// In the Connect data.
    pub const HOSTID: u16 = 0;
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

/// Connect Attributes (CATTR) bits.
pub mod cattr {
    /// Bits 1:0: the queue's priority class (only with weighted round robin).
    pub const PRIORITY_MASK: u8 = 0b11;
    /// Disable SQ flow control: the controller need not report SQHD.
    pub const DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;
    /// The I/O queue is to be used for I/O queue deletion (Base 2.0).
    pub const IO_QUEUE_DELETION: u8 = 1 << 3;
}

/// The Connect response's DW0 on success: CNTLID in bits 15:0, AUTHREQ in bits 31:16.
pub fn connect_success_dw0(cntlid: u16, authreq: u16) -> u32 {
    u32::from(authreq) << 16 | u32::from(cntlid)
}

/// The Connect response's DW0 with Connect Invalid Parameters: IPO (bits 15:0) is the byte
/// offset of the bad field, IATTR bit 0 (DW0 bit 16) says it is in the Connect data (1) or
/// the SQE (0). Use [`connect_offset`] for `offset`.
pub fn connect_invalid_param_dw0(in_data: bool, offset: u16) -> u32 {
    u32::from(in_data) << 16 | u32::from(offset)
}

fn check_fabrics<T: AsRef<[u8]> + ?Sized>(s: &Sqe<&T>, t: FabricsType) -> Result<()> {
    if s.opcode() != FABRICS_OPCODE || s.fctype() != t {
        return Err(Error::Malformed);
    }
    Ok(())
}

fn emit_fabrics<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(s: &mut Sqe<&mut T>, t: FabricsType) {
    s.set_opcode(FABRICS_OPCODE);
    s.set_fctype(t);
}

/// The Connect command's fields (SQE bytes 40-51). CID and DPTR are the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConnectRepr {
    /// Record format, 0 is the only one defined.
    pub recfmt: u16,
    /// Queue to create: 0 for the admin queue.
    pub qid: u16,
    /// Submission queue size, 0-based.
    pub sqsize: u16,
    /// Connect attributes, see [`cattr`].
    pub cattr: u8,
    /// Keep Alive Timeout in milliseconds (admin queue only; 0 disables).
    pub kato: u32,
}

impl ConnectRepr {
    /// `Malformed` unless the SQE is a Fabrics Connect.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(s: &Sqe<&T>) -> Result<Self> {
        check_fabrics(s, FabricsType::Connect)?;
        Ok(Self {
            recfmt: s.cdw10() as u16,
            qid: (s.cdw10() >> 16) as u16,
            sqsize: s.cdw11() as u16,
            cattr: (s.cdw11() >> 16) as u8,
            kato: s.cdw12(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        super::sqe::SQE_LEN
    }

    /// Writes opcode, FCTYPE and the Connect fields; leaves CID and DPTR alone.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, s: &mut Sqe<&mut T>) {
        emit_fabrics(s, FabricsType::Connect);
        s.set_cdw10(u32::from(self.qid) << 16 | u32::from(self.recfmt));
        s.set_cdw11(u32::from(self.cattr) << 16 | u32::from(self.sqsize));
        s.set_cdw12(self.kato);
    }

    /// Queue entries, 1-based (`sqsize + 1`).
    pub fn queue_entries(&self) -> u32 {
        u32::from(self.sqsize) + 1
    }
}

code_enum! {
    /// Property size (ATTRIB bits 2:0 of Property Get/Set).
    pub enum PropertySize: u8 {
        /// 4 bytes.
        Four = 0,
        /// 8 bytes.
        Eight = 1,
    }
}

impl PropertySize {
    /// Bytes, or `None` for an undefined size.
    pub fn bytes(self) -> Option<usize> {
        match self {
            Self::Four => Some(4),
            Self::Eight => Some(8),
            Self::Unknown(_) => None,
        }
    }
}

fn parse_attrib(b: u32) -> Result<PropertySize> {
    match PropertySize::from((b & 0b111) as u8) {
        PropertySize::Unknown(_) => Err(Error::Malformed),
        s => Ok(s),
    }
}

/// Property Get: SQE byte 40 ATTRIB, bytes 44-47 OFST. The value returns in CQE DW0
/// (and DW1 for 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PropertyGetRepr {
    pub size: PropertySize,
    /// Property offset (see [`properties`](super::properties)).
    pub offset: u32,
}

impl PropertyGetRepr {
    /// `Malformed` unless the SQE is a Fabrics Property Get with a defined size.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(s: &Sqe<&T>) -> Result<Self> {
        check_fabrics(s, FabricsType::PropertyGet)?;
        Ok(Self {
            size: parse_attrib(s.cdw10())?,
            offset: s.cdw11(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        super::sqe::SQE_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, s: &mut Sqe<&mut T>) {
        emit_fabrics(s, FabricsType::PropertyGet);
        s.set_cdw10(u32::from(u8::from(self.size) & 0b111));
        s.set_cdw11(self.offset);
    }
}

/// Property Set: SQE byte 40 ATTRIB, bytes 44-47 OFST, bytes 48-55 VALUE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PropertySetRepr {
    pub size: PropertySize,
    pub offset: u32,
    /// The value; for a 4-byte property only the low 32 bits count.
    pub value: u64,
}

impl PropertySetRepr {
    /// `Malformed` unless the SQE is a Fabrics Property Set with a defined size.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(s: &Sqe<&T>) -> Result<Self> {
        check_fabrics(s, FabricsType::PropertySet)?;
        Ok(Self {
            size: parse_attrib(s.cdw10())?,
            offset: s.cdw11(),
            value: u64::from(s.cdw12()) | u64::from(s.cdw13()) << 32,
        })
    }

    pub const fn buffer_len(&self) -> usize {
        super::sqe::SQE_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, s: &mut Sqe<&mut T>) {
        emit_fabrics(s, FabricsType::PropertySet);
        s.set_cdw10(u32::from(u8::from(self.size) & 0b111));
        s.set_cdw11(self.offset);
        s.set_cdw12(self.value as u32);
        s.set_cdw13((self.value >> 32) as u32);
    }
}

/// Fields of Disconnect and Authentication Send/Receive.
impl<T: AsRef<[u8]>> Sqe<T> {
    /// Disconnect: record format (bytes 40-41).
    pub fn disconnect_recfmt(&self) -> u16 {
        self.cdw10() as u16
    }
    /// Authentication Send/Receive: Security Protocol (byte 41).
    pub fn auth_secp(&self) -> u8 {
        (self.cdw10() >> 8) as u8
    }
    /// Authentication Send/Receive: SP Specific 0 and 1 (bytes 42, 43).
    pub fn auth_spsp(&self) -> (u8, u8) {
        ((self.cdw10() >> 16) as u8, (self.cdw10() >> 24) as u8)
    }
    /// Authentication Send: Transfer Length; Receive: Allocation Length (bytes 44-47).
    pub fn auth_len(&self) -> u32 {
        self.cdw11()
    }
}

wire_view! {
    /// The Connect command's data (Base 2.0 Figure 547): HOSTID, CNTLID, SUBNQN, HOSTNQN.
    pub struct ConnectData, len = CONNECT_DATA_LEN;
    /// Controller ID: FFFFh for the dynamic controller model (or FFFEh, any static one)
    /// on an admin queue; the controller's ID on an I/O queue.
    cntlid, set_cntlid: u16 = 16;
}

/// CNTLID for "allocate any controller" under the dynamic controller model.
pub const CNTLID_DYNAMIC: u16 = 0xffff;
/// CNTLID for "any controller" under the static controller model.
pub const CNTLID_STATIC_ANY: u16 = 0xfffe;

impl<T: AsRef<[u8]>> ConnectData<T> {
    /// Host Identifier (bytes 0-15), a 128-bit UUID.
    pub fn hostid(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.buffer.as_ref()[HOSTID..HOSTID + 16]);
        id
    }
    /// Subsystem NQN (bytes 256-511), up to the first NUL. `Malformed` if not UTF-8 or
    /// not NUL-terminated within the field.
    pub fn subnqn(&self) -> Result<&str> {
        nul_terminated(&self.buffer.as_ref()[SUBNQN..SUBNQN + NQN_FIELD_LEN])
    }
    /// Host NQN (bytes 512-767), as [`Self::subnqn`].
    pub fn hostnqn(&self) -> Result<&str> {
        nul_terminated(&self.buffer.as_ref()[HOSTNQN..HOSTNQN + NQN_FIELD_LEN])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ConnectData<T> {
    pub fn set_hostid(&mut self, id: [u8; 16]) {
        self.buffer.as_mut()[HOSTID..HOSTID + 16].copy_from_slice(&id);
    }
    /// `Malformed` if `nqn` has a NUL or is 256 bytes or longer.
    pub fn set_subnqn(&mut self, nqn: &str) -> Result<()> {
        put_nul_terminated(
            &mut self.buffer.as_mut()[SUBNQN..SUBNQN + NQN_FIELD_LEN],
            nqn,
        )
    }
    /// `Malformed` if `nqn` has a NUL or is 256 bytes or longer.
    pub fn set_hostnqn(&mut self, nqn: &str) -> Result<()> {
        put_nul_terminated(
            &mut self.buffer.as_mut()[HOSTNQN..HOSTNQN + NQN_FIELD_LEN],
            nqn,
        )
    }
}

/// The parsed Connect data, borrowing the NQNs from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectDataRepr<'a> {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: &'a str,
    pub hostnqn: &'a str,
}

impl<'a> ConnectDataRepr<'a> {
    /// `Malformed` if an NQN is not NUL-terminated UTF-8. The NQN's own syntax and
    /// 223-byte limit are the subsystem's to check.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(d: &ConnectData<&'a T>) -> Result<Self> {
        let b: &'a [u8] = d.buffer.as_ref();
        Ok(Self {
            hostid: d.hostid(),
            cntlid: d.cntlid(),
            subnqn: nul_terminated(&b[SUBNQN..SUBNQN + NQN_FIELD_LEN])?,
            hostnqn: nul_terminated(&b[HOSTNQN..HOSTNQN + NQN_FIELD_LEN])?,
        })
    }

    pub const fn buffer_len(&self) -> usize {
        CONNECT_DATA_LEN
    }

    /// Writes all 1024 bytes (reserved ones zero). `Malformed` if an NQN does not fit.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(
        &self,
        d: &mut ConnectData<&mut T>,
    ) -> Result<()> {
        d.as_bytes_mut().fill(0);
        d.set_hostid(self.hostid);
        d.set_cntlid(self.cntlid);
        d.set_subnqn(self.subnqn)?;
        d.set_hostnqn(self.hostnqn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Linux host's admin-queue Connect: CID 0, QID 0, SQSIZE 31, KATO 5000 ms, 1024
    /// bytes of in-capsule data.
    fn connect_sqe() -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = 0x7f;
        b[1] = 0x40;
        b[4] = 0x01;
        b[32] = 0x00;
        b[33] = 0x04;
        b[39] = 0x01;
        b[44] = 31;
        b[48..52].copy_from_slice(&5000u32.to_le_bytes());
        b
    }

    #[test]
    fn connect_parse_emit() {
        let b = connect_sqe();
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert!(s.is_fabrics());
        assert_eq!(s.fctype(), FabricsType::Connect);
        let r = ConnectRepr::parse(&s).unwrap();
        assert_eq!(
            r,
            ConnectRepr {
                recfmt: 0,
                qid: 0,
                sqsize: 31,
                cattr: 0,
                kato: 5000
            }
        );
        assert_eq!(r.queue_entries(), 32);
        let mut out = [0u8; 64];
        let mut o = Sqe::new_unchecked(&mut out[..]);
        r.emit(&mut o);
        o.set_sgl(&s.sgl().unwrap()).unwrap();
        assert_eq!(out, b);

        let io = ConnectRepr {
            recfmt: 0x0102,
            qid: 0x0304,
            sqsize: 0x0506,
            cattr: cattr::DISABLE_SQ_FLOW_CONTROL,
            kato: 0x0a09_0807,
        };
        let mut out = [0u8; 64];
        io.emit(&mut Sqe::new_unchecked(&mut out[..]));
        assert_eq!(
            &out[40..52],
            &[
                0x02, 0x01, 0x04, 0x03, 0x06, 0x05, 0x04, 0x00, 0x07, 0x08, 0x09, 0x0a
            ]
        );
        assert_eq!(
            ConnectRepr::parse(&Sqe::new_checked(&out[..]).unwrap()),
            Ok(io)
        );
    }

    #[test]
    fn connect_wrong_command() {
        let mut b = connect_sqe();
        b[4] = 0x04;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(ConnectRepr::parse(&s), Err(Error::Malformed));
        b[4] = 0x01;
        b[0] = 0x06;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(ConnectRepr::parse(&s), Err(Error::Malformed));
        b[0] = 0x7f;
        b[4] = 0x42;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(s.fctype(), FabricsType::Unknown(0x42));
    }

    #[test]
    fn connect_response_dw0() {
        assert_eq!(connect_success_dw0(1, 0), 1);
        assert_eq!(connect_success_dw0(0x1234, 3), 0x0003_1234);
        // Linux nvmet: IPO_IATTR_CONNECT_DATA(subsysnqn) = 1 << 16 | 256.
        assert_eq!(
            connect_invalid_param_dw0(true, connect_offset::SUBNQN),
            0x0001_0100
        );
        // IPO_IATTR_CONNECT_SQE(sqsize) = 44.
        assert_eq!(connect_invalid_param_dw0(false, connect_offset::SQSIZE), 44);
    }

    fn connect_data() -> [u8; 1024] {
        let mut b = [0u8; 1024];
        for (i, v) in b[..16].iter_mut().enumerate() {
            *v = i as u8 + 1;
        }
        b[16] = 0xff;
        b[17] = 0xff;
        let sub = b"nqn.2014-08.org.nvmexpress:uuid:sub";
        b[256..256 + sub.len()].copy_from_slice(sub);
        let host = b"nqn.2014-08.org.nvmexpress:uuid:host";
        b[512..512 + host.len()].copy_from_slice(host);
        b
    }

    #[test]
    fn connect_data_parse_emit() {
        let b = connect_data();
        let d = ConnectData::new_checked(&b[..]).unwrap();
        let r = ConnectDataRepr::parse(&d).unwrap();
        assert_eq!(r.hostid[0], 1);
        assert_eq!(r.hostid[15], 16);
        assert_eq!(r.cntlid, CNTLID_DYNAMIC);
        assert_eq!(r.subnqn, "nqn.2014-08.org.nvmexpress:uuid:sub");
        assert_eq!(r.hostnqn, "nqn.2014-08.org.nvmexpress:uuid:host");
        assert_eq!(d.subnqn(), Ok(r.subnqn));
        assert_eq!(d.hostnqn(), Ok(r.hostnqn));
        let mut out = [0xeeu8; 1024];
        r.emit(&mut ConnectData::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(out, b);
        assert_eq!(r.buffer_len(), 1024);
    }

    #[test]
    fn connect_data_bad_nqn() {
        let mut b = connect_data();
        b[256..512].fill(b'a');
        let d = ConnectData::new_checked(&b[..]).unwrap();
        assert_eq!(d.subnqn(), Err(Error::Malformed));
        assert_eq!(ConnectDataRepr::parse(&d), Err(Error::Malformed));
        let mut b = connect_data();
        b[512] = 0xff;
        let d = ConnectData::new_checked(&b[..]).unwrap();
        assert_eq!(d.hostnqn(), Err(Error::Malformed));
        // 255 bytes and a NUL is the longest that fits.
        let mut b = connect_data();
        b[512..767].fill(b'h');
        b[767] = 0;
        let d = ConnectData::new_checked(&b[..]).unwrap();
        assert_eq!(d.hostnqn().map(str::len), Ok(255));
        let mut out = [0u8; 1024];
        let mut w = ConnectData::new_unchecked(&mut out[..]);
        let long = core::str::from_utf8(&b[512..768]).unwrap();
        assert!(long.len() == 256);
        assert_eq!(w.set_hostnqn(long), Err(Error::Malformed));
    }

    #[test]
    fn connect_data_truncated() {
        let b = connect_data();
        assert_eq!(
            ConnectData::new_checked(&b[..1023]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn property_get_set() {
        // Property Get CAP, 8 bytes.
        let mut b = [0u8; 64];
        b[0] = 0x7f;
        b[4] = 0x04;
        b[40] = 0x01;
        let s = Sqe::new_checked(&b[..]).unwrap();
        let r = PropertyGetRepr::parse(&s).unwrap();
        assert_eq!(
            r,
            PropertyGetRepr {
                size: PropertySize::Eight,
                offset: 0
            }
        );
        assert_eq!(r.size.bytes(), Some(8));
        let mut out = [0u8; 64];
        r.emit(&mut Sqe::new_unchecked(&mut out[..]));
        assert_eq!(out, b);

        // Property Set CC = 0x00460001, 4 bytes.
        let mut b = [0u8; 64];
        b[0] = 0x7f;
        b[4] = 0x00;
        b[44] = 0x14;
        b[48..52].copy_from_slice(&0x0046_0001u32.to_le_bytes());
        let s = Sqe::new_checked(&b[..]).unwrap();
        let r = PropertySetRepr::parse(&s).unwrap();
        assert_eq!(r.size, PropertySize::Four);
        assert_eq!(r.offset, 0x14);
        assert_eq!(r.value, 0x0046_0001);
        let mut out = [0u8; 64];
        r.emit(&mut Sqe::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
        // A Set is not a Get.
        assert_eq!(PropertyGetRepr::parse(&s), Err(Error::Malformed));

        // An undefined size.
        b[40] = 0x02;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(PropertySetRepr::parse(&s), Err(Error::Malformed));
        assert_eq!(PropertySize::from(2), PropertySize::Unknown(2));
        assert_eq!(PropertySize::Unknown(2).bytes(), None);
        // Reserved ATTRIB bits are ignored.
        b[40] = 0x09;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(
            PropertySetRepr::parse(&s).unwrap().size,
            PropertySize::Eight
        );
    }

    #[test]
    fn auth_and_disconnect_fields() {
        let mut b = [0u8; 64];
        b[0] = 0x7f;
        b[4] = 0x05;
        b[41] = 0xe9;
        b[42] = 0x01;
        b[43] = 0x02;
        b[44] = 0x80;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(s.fctype(), FabricsType::AuthenticationSend);
        assert_eq!(s.auth_secp(), 0xe9);
        assert_eq!(s.auth_spsp(), (1, 2));
        assert_eq!(s.auth_len(), 0x80);
        assert_eq!(s.disconnect_recfmt(), 0xe900);
    }
}
