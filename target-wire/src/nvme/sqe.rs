//! The 64-byte submission queue entry: NVMe Base Specification 2.0, section 4.2
//! ("Submission Queue Entry"), Figures 87-88, as Linux `struct nvme_common_command`; the
//! command-specific dwords of the admin commands a fabrics target serves (section 5) and of
//! the NVM command set's I/O commands (NVM Command Set Specification 1.0, section 3).
//!
//! Layout: opcode (0), FUSE bits 1:0 and PSDT bits 7:6 of byte 1, CID (2-3), NSID (4-7),
//! CDW2-3 (8-15), MPTR (16-23), DPTR (24-39), CDW10-15 (40-63). Over fabrics PSDT must be
//! 01b or 10b (SGLs) and DPTR holds one [`SglDescriptor`]; Fabrics commands (opcode 7Fh)
//! have FCTYPE at byte 4 instead of an NSID (see [`fabrics`](super::fabrics)).

use super::opcode::{AdminOpcode, Cns, Csi, FabricsType, FeatureId, IoOpcode, LogPageId};
use super::sgl::{SGL_DESC_LEN, SglDescriptor, SglRepr};
use crate::Result;

/// Length of a submission queue entry.
pub const SQE_LEN: usize = 64;
const _: () = assert!(Sqe::<&[u8]>::LEN == SQE_LEN);
/// Offset of DPTR, where a fabrics command's SGL descriptor sits.
pub const DPTR_OFFSET: usize = 24;
const _: () = assert!(DPTR_OFFSET + SGL_DESC_LEN == 40);

wire_view! {
    /// A view of a submission queue entry.
    pub struct Sqe, len = SQE_LEN;
    /// Command opcode (CDW0 bits 7:0).
    opcode, set_opcode: u8 = 0;
    /// CDW0 bits 15:8: FUSE (1:0) and PSDT (7:6).
    flags, set_flags: u8 = 1;
    /// Command identifier.
    cid, set_cid: u16 = 2;
    /// Namespace identifier (not for Fabrics commands).
    nsid, set_nsid: u32 = 4;
    cdw2, set_cdw2: u32 = 8;
    cdw3, set_cdw3: u32 = 12;
    /// Metadata pointer.
    mptr, set_mptr: u64 = 16;
    /// PRP entry 1 (PCIe only; over fabrics these bytes are the SGL descriptor).
    prp1, set_prp1: u64 = 24;
    /// PRP entry 2 (PCIe only).
    prp2, set_prp2: u64 = 32;
    cdw10, set_cdw10: u32 = 40;
    cdw11, set_cdw11: u32 = 44;
    cdw12, set_cdw12: u32 = 48;
    cdw13, set_cdw13: u32 = 52;
    cdw14, set_cdw14: u32 = 56;
    cdw15, set_cdw15: u32 = 60;
    /// Fabrics command type (byte 4, when the opcode is 7Fh).
    fctype_raw, set_fctype_raw: u8 = 4;
    /// NVM I/O: starting LBA (CDW10-11).
    slba, set_slba: u64 = 40;
    /// Get Log Page: log page offset in bytes (CDW12-13).
    lpo, set_lpo: u64 = 48;
}

code_enum! {
    /// PRP or SGL for Data Transfer (PSDT, CDW0 bits 15:14).
    pub enum Psdt: u8 {
        /// PRPs (PCIe only).
        Prp = 0b00,
        /// SGLs; MPTR holds the address of a contiguous metadata buffer.
        SglMetadataContiguous = 0b01,
        /// SGLs; MPTR holds the address of an SGL segment for metadata.
        SglMetadataSgl = 0b10,
    }
}

code_enum! {
    /// Fused operation (FUSE, CDW0 bits 9:8).
    pub enum Fuse: u8 {
        Normal = 0b00,
        /// First command of a fused operation (Compare of Compare and Write).
        First = 0b01,
        /// Second command of a fused operation.
        Second = 0b10,
    }
}

impl Psdt {
    /// Whether the data pointer is an SGL (01b or 10b).
    pub fn is_sgl(self) -> bool {
        matches!(self, Self::SglMetadataContiguous | Self::SglMetadataSgl)
    }
}

/// Dataset Management attributes (CDW11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DsmAttributes {
    /// Integral Dataset for Read (bit 0).
    pub idr: bool,
    /// Integral Dataset for Write (bit 1).
    pub idw: bool,
    /// Deallocate (bit 2).
    pub ad: bool,
}

impl From<u32> for DsmAttributes {
    fn from(v: u32) -> Self {
        Self {
            idr: v & 1 != 0,
            idw: v & 2 != 0,
            ad: v & 4 != 0,
        }
    }
}

impl From<DsmAttributes> for u32 {
    fn from(a: DsmAttributes) -> Self {
        u32::from(a.idr) | u32::from(a.idw) << 1 | u32::from(a.ad) << 2
    }
}

const fn bits(v: u32, shift: u32, width: u32) -> u32 {
    (v >> shift) & ((1 << width) - 1)
}

const fn with_bits(v: u32, shift: u32, width: u32, field: u32) -> u32 {
    let mask = ((1u32 << width) - 1) << shift;
    (v & !mask) | ((field << shift) & mask)
}

impl<T: AsRef<[u8]>> Sqe<T> {
    pub fn fuse(&self) -> Fuse {
        (self.flags() & 0b11).into()
    }
    pub fn psdt(&self) -> Psdt {
        (self.flags() >> 6).into()
    }
    pub fn admin_opcode(&self) -> AdminOpcode {
        self.opcode().into()
    }
    pub fn io_opcode(&self) -> IoOpcode {
        self.opcode().into()
    }
    /// Whether this is a Fabrics command (opcode 7Fh).
    pub fn is_fabrics(&self) -> bool {
        self.opcode() == super::opcode::FABRICS_OPCODE
    }
    /// FCTYPE; meaningful only when [`Self::is_fabrics`].
    pub fn fctype(&self) -> FabricsType {
        self.fctype_raw().into()
    }
    /// The data pointer as an SGL descriptor view (bytes 24-39).
    pub fn dptr(&self) -> SglDescriptor<&[u8]> {
        SglDescriptor::new_unchecked(&self.buffer.as_ref()[DPTR_OFFSET..DPTR_OFFSET + 16])
    }
    /// The data pointer parsed as one of the SGL forms fabrics use.
    pub fn sgl(&self) -> Result<SglRepr> {
        SglRepr::parse(&self.dptr())
    }
    /// The dword `n` (0-15) of the command; `n` is taken modulo 16.
    pub fn cdw(&self, n: usize) -> u32 {
        <u32 as super::Field>::read(self.buffer.as_ref(), (n % 16) * 4)
    }

    // NVM Read, Write, Compare, Write Uncorrectable, Write Zeroes, Verify (NVM Command Set
    // 1.0, Figures 16, 43, 62, 64): SLBA in CDW10-11, CDW12 as below.

    /// Number of logical blocks, 0-based (CDW12 bits 15:0).
    pub fn nlb(&self) -> u16 {
        bits(self.cdw12(), 0, 16) as u16
    }
    /// Number of logical blocks, 1-based: `nlb() + 1`.
    pub fn block_count(&self) -> u32 {
        u32::from(self.nlb()) + 1
    }
    /// Deallocate (Write Zeroes CDW12 bit 25).
    pub fn deac(&self) -> bool {
        bits(self.cdw12(), 25, 1) != 0
    }
    /// Protection information field (CDW12 bits 29:26).
    pub fn prinfo(&self) -> u8 {
        bits(self.cdw12(), 26, 4) as u8
    }
    /// Force Unit Access (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        bits(self.cdw12(), 30, 1) != 0
    }
    /// Limited Retry (CDW12 bit 31).
    pub fn limited_retry(&self) -> bool {
        bits(self.cdw12(), 31, 1) != 0
    }
    /// Directive type (CDW12 bits 23:20).
    pub fn dtype(&self) -> u8 {
        bits(self.cdw12(), 20, 4) as u8
    }
    /// Dataset management hints of Read/Write (CDW13 bits 7:0).
    pub fn dsm_hints(&self) -> u8 {
        bits(self.cdw13(), 0, 8) as u8
    }

    // Dataset Management (NVM Command Set 1.0, Figure 38).

    /// Number of ranges, 1-based (CDW10 bits 7:0 hold it 0-based).
    pub fn dsm_range_count(&self) -> u16 {
        bits(self.cdw10(), 0, 8) as u16 + 1
    }
    /// Attributes (CDW11).
    pub fn dsm_attributes(&self) -> DsmAttributes {
        self.cdw11().into()
    }

    // Identify (Base 2.0, Figure 272).

    /// Controller or Namespace Structure (CDW10 bits 7:0).
    pub fn cns(&self) -> Cns {
        (bits(self.cdw10(), 0, 8) as u8).into()
    }
    /// Controller identifier (CDW10 bits 31:16).
    pub fn identify_cntid(&self) -> u16 {
        bits(self.cdw10(), 16, 16) as u16
    }
    /// Command Set Identifier (CDW11 bits 31:24).
    pub fn identify_csi(&self) -> Csi {
        (bits(self.cdw11(), 24, 8) as u8).into()
    }

    // Get Log Page (Base 2.0, Figures 197-201).

    /// Log page identifier (CDW10 bits 7:0).
    pub fn log_id(&self) -> LogPageId {
        (bits(self.cdw10(), 0, 8) as u8).into()
    }
    /// Log specific field (CDW10 bits 14:8).
    pub fn log_lsp(&self) -> u8 {
        bits(self.cdw10(), 8, 7) as u8
    }
    /// Retain Asynchronous Event (CDW10 bit 15).
    pub fn log_rae(&self) -> bool {
        bits(self.cdw10(), 15, 1) != 0
    }
    /// Number of dwords, 0-based: NUMDU (CDW11 bits 15:0) << 16 | NUMDL (CDW10 bits 31:16).
    pub fn log_numd(&self) -> u32 {
        bits(self.cdw11(), 0, 16) << 16 | bits(self.cdw10(), 16, 16)
    }
    /// Bytes to transfer: `(numd + 1) * 4` (at most 16 GiB, so it fits a u64).
    pub fn log_len(&self) -> u64 {
        (u64::from(self.log_numd()) + 1) * 4
    }
    /// Log specific identifier (CDW11 bits 31:16).
    pub fn log_lsi(&self) -> u16 {
        bits(self.cdw11(), 16, 16) as u16
    }
    /// Command Set Identifier (CDW14 bits 31:24).
    pub fn log_csi(&self) -> Csi {
        (bits(self.cdw14(), 24, 8) as u8).into()
    }

    // Get/Set Features (Base 2.0, Figures 315, 318).

    /// Feature identifier (CDW10 bits 7:0).
    pub fn feature_id(&self) -> FeatureId {
        (bits(self.cdw10(), 0, 8) as u8).into()
    }
    /// Get Features: select (CDW10 bits 10:8): 0 current, 1 default, 2 saved,
    /// 3 supported capabilities.
    pub fn feature_sel(&self) -> u8 {
        bits(self.cdw10(), 8, 3) as u8
    }
    /// Set Features: save (CDW10 bit 31).
    pub fn feature_save(&self) -> bool {
        bits(self.cdw10(), 31, 1) != 0
    }

    // Abort (Base 2.0, Figure 145).

    /// Submission queue of the command to abort (CDW10 bits 15:0).
    pub fn abort_sqid(&self) -> u16 {
        bits(self.cdw10(), 0, 16) as u16
    }
    /// Command identifier to abort (CDW10 bits 31:16).
    pub fn abort_cid(&self) -> u16 {
        bits(self.cdw10(), 16, 16) as u16
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Sqe<T> {
    pub fn set_fuse(&mut self, f: Fuse) {
        let v = (self.flags() & !0b11) | (u8::from(f) & 0b11);
        self.set_flags(v);
    }
    pub fn set_psdt(&mut self, p: Psdt) {
        let v = (self.flags() & 0x3f) | ((u8::from(p) & 0b11) << 6);
        self.set_flags(v);
    }
    pub fn set_fctype(&mut self, t: FabricsType) {
        self.set_fctype_raw(t.into());
    }
    pub fn dptr_mut(&mut self) -> SglDescriptor<&mut [u8]> {
        SglDescriptor::new_unchecked(&mut self.buffer.as_mut()[DPTR_OFFSET..DPTR_OFFSET + 16])
    }
    /// Writes an SGL descriptor into DPTR and sets PSDT to 01b (SGL).
    pub fn set_sgl(&mut self, sgl: &SglRepr) -> Result<()> {
        sgl.emit(&mut self.dptr_mut())?;
        self.set_psdt(Psdt::SglMetadataContiguous);
        Ok(())
    }
    /// Sets dword `n` (0-15; taken modulo 16).
    pub fn set_cdw(&mut self, n: usize, v: u32) {
        <u32 as super::Field>::write(self.buffer.as_mut(), (n % 16) * 4, v);
    }
    /// Sets NLB (0-based) in CDW12 bits 15:0.
    pub fn set_nlb(&mut self, nlb: u16) {
        let v = with_bits(self.cdw12(), 0, 16, nlb.into());
        self.set_cdw12(v);
    }
    pub fn set_deac(&mut self, on: bool) {
        let v = with_bits(self.cdw12(), 25, 1, on.into());
        self.set_cdw12(v);
    }
    pub fn set_fua(&mut self, on: bool) {
        let v = with_bits(self.cdw12(), 30, 1, on.into());
        self.set_cdw12(v);
    }
    /// Sets the 1-based number of DSM ranges (1-256) as CDW10 bits 7:0.
    pub fn set_dsm_range_count(&mut self, n: u16) {
        let v = with_bits(self.cdw10(), 0, 8, u32::from(n.wrapping_sub(1)));
        self.set_cdw10(v);
    }
    pub fn set_cns(&mut self, cns: Cns) {
        let v = with_bits(self.cdw10(), 0, 8, u8::from(cns).into());
        self.set_cdw10(v);
    }
    /// Sets LID (CDW10 7:0) and the 0-based dword count NUMDL/NUMDU.
    pub fn set_log(&mut self, lid: LogPageId, numd: u32) {
        let v = with_bits(self.cdw10(), 0, 8, u8::from(lid).into());
        let v = with_bits(v, 16, 16, numd & 0xffff);
        self.set_cdw10(v);
        let v = with_bits(self.cdw11(), 0, 16, numd >> 16);
        self.set_cdw11(v);
    }
    pub fn set_feature_id(&mut self, fid: FeatureId) {
        let v = with_bits(self.cdw10(), 0, 8, u8::from(fid).into());
        self.set_cdw10(v);
    }
}

/// Length of a Dataset Management range.
pub const DSM_RANGE_LEN: usize = 16;
/// The most ranges one Dataset Management command carries.
pub const DSM_MAX_RANGES: usize = 256;
const _: () = assert!(DsmRange::<&[u8]>::LEN == DSM_RANGE_LEN);

wire_view! {
    /// One Dataset Management range (NVM Command Set 1.0, Figure 40), as
    /// Linux `struct nvme_dsm_range`.
    pub struct DsmRange, len = DSM_RANGE_LEN;
    /// Context attributes.
    context_attributes, set_context_attributes: u32 = 0;
    /// Length in logical blocks (1-based; 0 means none).
    nlb, set_nlb: u32 = 4;
    /// Starting LBA.
    slba, set_slba: u64 = 8;
}

/// The `i`-th range of a Dataset Management data buffer, if the buffer holds it.
pub fn dsm_range(data: &[u8], i: usize) -> Result<DsmRange<&[u8]>> {
    let start = i
        .checked_mul(DSM_RANGE_LEN)
        .ok_or(crate::Error::Truncated)?;
    DsmRange::new_checked(data.get(start..).ok_or(crate::Error::Truncated)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::nvme::sgl::SglType;

    /// A Linux host's 4 KiB Write at LBA 0x1_0000_0002 of NSID 1, CID 7, FUA, data in the
    /// capsule.
    fn write_sqe() -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = 0x01;
        b[1] = 0x40; // PSDT 01b
        b[2] = 0x07;
        b[4] = 0x01;
        b[32] = 0x00; // SGL length 0x1000 at 24+8
        b[33] = 0x10;
        b[39] = 0x01; // Data Block, Offset
        b[40] = 0x02; // SLBA
        b[44] = 0x01;
        b[48] = 0x07; // NLB 7 (8 blocks)
        b[51] = 0x40; // FUA
        b
    }

    #[test]
    fn parse_write() {
        let b = write_sqe();
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(s.io_opcode(), IoOpcode::Write);
        assert_eq!(s.fuse(), Fuse::Normal);
        assert_eq!(s.psdt(), Psdt::SglMetadataContiguous);
        assert!(s.psdt().is_sgl());
        assert_eq!(s.cid(), 7);
        assert_eq!(s.nsid(), 1);
        assert_eq!(s.slba(), 0x1_0000_0002);
        assert_eq!(s.nlb(), 7);
        assert_eq!(s.block_count(), 8);
        assert!(s.fua());
        assert!(!s.limited_retry());
        assert!(!s.deac());
        assert_eq!(
            s.sgl(),
            Ok(SglRepr::InCapsule {
                offset: 0,
                length: 4096
            })
        );
        assert_eq!(s.dptr().sgl_type(), SglType::DataBlock);
        assert!(!s.is_fabrics());
        assert_eq!(s.cdw(12), 0x4000_0007);
        assert_eq!(s.cdw(0), 0x0007_4001);
    }

    #[test]
    fn emit_write() {
        let mut b = [0u8; 64];
        let mut s = Sqe::new_unchecked(&mut b[..]);
        s.set_opcode(IoOpcode::Write.into());
        s.set_cid(7);
        s.set_nsid(1);
        s.set_slba(0x1_0000_0002);
        s.set_nlb(7);
        s.set_fua(true);
        s.set_sgl(&SglRepr::InCapsule {
            offset: 0,
            length: 4096,
        })
        .unwrap();
        assert_eq!(b, write_sqe());
    }

    #[test]
    fn flags_and_unknowns() {
        let mut b = [0u8; 64];
        b[1] = 0xc1;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(s.fuse(), Fuse::First);
        assert_eq!(s.psdt(), Psdt::Unknown(3));
        b[1] = 0x03;
        b[0] = 0x03;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(s.fuse(), Fuse::Unknown(3));
        assert_eq!(s.psdt(), Psdt::Prp);
        assert_eq!(s.io_opcode(), IoOpcode::Unknown(3));
        assert_eq!(u8::from(s.io_opcode()), 3);
        let mut s = Sqe::new_unchecked(&mut b[..]);
        s.set_fuse(Fuse::Second);
        s.set_psdt(Psdt::SglMetadataSgl);
        assert_eq!(s.flags(), 0x82);
    }

    #[test]
    fn write_zeroes_and_dsm() {
        let mut b = [0u8; 64];
        let mut s = Sqe::new_unchecked(&mut b[..]);
        s.set_opcode(IoOpcode::WriteZeroes.into());
        s.set_deac(true);
        s.set_nlb(0xffff);
        assert_eq!(&b[48..52], &[0xff, 0xff, 0x00, 0x02]);
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert!(s.deac());
        assert_eq!(s.block_count(), 0x10000);

        let mut b = [0u8; 64];
        b[0] = 0x09;
        b[40] = 0xff; // 256 ranges
        b[44] = 0x04; // AD
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(s.dsm_range_count(), 256);
        assert_eq!(
            s.dsm_attributes(),
            DsmAttributes {
                ad: true,
                ..Default::default()
            }
        );
        assert_eq!(u32::from(s.dsm_attributes()), 4);
        let mut s = Sqe::new_unchecked(&mut b[..]);
        s.set_dsm_range_count(1);
        assert_eq!(b[40], 0);
    }

    #[test]
    fn dsm_ranges() {
        let mut data = [0u8; 32];
        data[16..32].copy_from_slice(&[
            0xaa, 0, 0, 0, // context attributes
            0x00, 0x01, 0, 0, // 256 blocks
            0x10, 0, 0, 0, 0, 0, 0, 0x01, // SLBA
        ]);
        let r = dsm_range(&data, 1).unwrap();
        assert_eq!(r.context_attributes(), 0xaa);
        assert_eq!(r.nlb(), 256);
        assert_eq!(r.slba(), 0x0100_0000_0000_0010);
        assert_eq!(dsm_range(&data, 2).err(), Some(Error::Truncated));
        assert_eq!(dsm_range(&data[..31], 1).err(), Some(Error::Truncated));
        assert_eq!(dsm_range(&data, usize::MAX).err(), Some(Error::Truncated));
        let mut out = [0u8; 16];
        let mut w = DsmRange::new_unchecked(&mut out[..]);
        w.set_context_attributes(0xaa);
        w.set_nlb(256);
        w.set_slba(0x0100_0000_0000_0010);
        assert_eq!(out, data[16..32]);
    }

    #[test]
    fn admin_fields() {
        let mut b = [0u8; 64];
        let mut s = Sqe::new_unchecked(&mut b[..]);
        s.set_opcode(AdminOpcode::GetLogPage.into());
        s.set_log(LogPageId::Discovery, 0x0001_03ff);
        s.set_cdw10(s.cdw10() | 1 << 15);
        s.set_lpo(0x1000);
        assert_eq!(
            &b[40..48],
            &[0x70, 0x80, 0xff, 0x03, 0x01, 0x00, 0x00, 0x00]
        );
        assert_eq!(&b[48..56], &[0x00, 0x10, 0, 0, 0, 0, 0, 0]);
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(s.admin_opcode(), AdminOpcode::GetLogPage);
        assert_eq!(s.log_id(), LogPageId::Discovery);
        assert!(s.log_rae());
        assert_eq!(s.log_lsp(), 0);
        assert_eq!(s.log_numd(), 0x0001_03ff);
        assert_eq!(s.log_len(), 0x0001_0400 * 4);
        assert_eq!(s.lpo(), 0x1000);
        assert_eq!(s.log_lsi(), 0);
        assert_eq!(s.log_csi(), Csi::Nvm);

        let mut b = [0u8; 64];
        b[0] = 0x06;
        b[40] = 0x01;
        b[42] = 0x05;
        b[47] = 0x02;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(s.cns(), Cns::Controller);
        assert_eq!(s.identify_cntid(), 5);
        assert_eq!(s.identify_csi(), Csi::ZonedNamespace);

        let mut b = [0u8; 64];
        b[40] = 0x07;
        b[41] = 0x03;
        b[43] = 0x80;
        let s = Sqe::new_checked(&b[..]).unwrap();
        assert_eq!(s.feature_id(), FeatureId::NumberOfQueues);
        assert_eq!(s.feature_sel(), 3);
        assert!(s.feature_save());
        assert_eq!(s.abort_sqid(), 0x0307);
        assert_eq!(s.abort_cid(), 0x8000);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Sqe::new_checked(&[0u8; 63][..]).err(),
            Some(Error::Truncated)
        );
        assert!(Sqe::new_checked(&[0u8; 64][..]).is_ok());
        assert!(Sqe::new_checked(&[0u8; 72][..]).is_ok());
    }
}
