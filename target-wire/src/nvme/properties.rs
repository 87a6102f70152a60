//! Controller properties, read and written over fabrics with Property Get/Set: NVMe Base
//! Specification 2.0, section 3.1.4 ("Controller Properties"), Figures 35-43 (CAP, VS, CC,
//! CSTS, NSSR); NVMe over Fabrics 1.1 section 3.4 lists which ones a fabrics controller has.
//!
//! Each register is a `Copy` newtype over its integer with typed getters and `with_*`
//! builders, so a controller keeps them as plain values.

use super::fabrics::PropertySize;

/// Controller Capabilities (8 bytes).
pub const CAP: u32 = 0x00;
/// Version (4 bytes).
pub const VS: u32 = 0x08;
/// Controller Configuration (4 bytes).
pub const CC: u32 = 0x14;
/// Controller Status (4 bytes).
pub const CSTS: u32 = 0x1c;
/// NVM Subsystem Reset (4 bytes).
pub const NSSR: u32 = 0x20;
/// Controller Ready Timeouts (4 bytes, Base 2.0).
pub const CRTO: u32 = 0x68;

/// The size of the fabrics property at `offset`, or `None` if there is none there.
pub fn property_size(offset: u32) -> Option<PropertySize> {
    match offset {
        CAP => Some(PropertySize::Eight),
        VS | CC | CSTS | NSSR | CRTO => Some(PropertySize::Four),
        _ => None,
    }
}

/// NSSR's reset value ("NVMe" in ASCII): writing it resets the subsystem.
pub const NSSR_RESET: u32 = 0x4e56_4d65;

const fn get(v: u64, shift: u32, width: u32) -> u64 {
    (v >> shift) & ((1 << width) - 1)
}

const fn put(v: u64, shift: u32, width: u32, field: u64) -> u64 {
    let mask = ((1u64 << width) - 1) << shift;
    (v & !mask) | ((field << shift) & mask)
}

/// CAP: Controller Capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, 0-based (bits 15:0).
    pub const fn mqes(self) -> u16 {
        get(self.0, 0, 16) as u16
    }
    /// Contiguous Queues Required (bit 16).
    pub const fn cqr(self) -> bool {
        get(self.0, 16, 1) != 0
    }
    /// Arbitration Mechanism Supported (bits 18:17).
    pub const fn ams(self) -> u8 {
        get(self.0, 17, 2) as u8
    }
    /// Timeout in 500 ms units (bits 31:24): worst-case time to CSTS.RDY after CC.EN.
    pub const fn to(self) -> u8 {
        get(self.0, 24, 8) as u8
    }
    /// Doorbell Stride (bits 35:32).
    pub const fn dstrd(self) -> u8 {
        get(self.0, 32, 4) as u8
    }
    /// NVM Subsystem Reset Supported (bit 36).
    pub const fn nssrs(self) -> bool {
        get(self.0, 36, 1) != 0
    }
    /// Command Sets Supported (bits 44:37): bit 0 NVM, bit 6 I/O command sets, bit 7 no
    /// I/O command set (admin only).
    pub const fn css(self) -> u8 {
        get(self.0, 37, 8) as u8
    }
    /// CSS bit 37: the NVM command set.
    pub const fn css_nvm(self) -> bool {
        self.css() & CSS_NVM != 0
    }
    /// Memory Page Size Minimum: 2 ^ (12 + MPSMIN) bytes (bits 51:48).
    pub const fn mpsmin(self) -> u8 {
        get(self.0, 48, 4) as u8
    }
    /// Memory Page Size Maximum (bits 55:52).
    pub const fn mpsmax(self) -> u8 {
        get(self.0, 52, 4) as u8
    }
    /// Controller Ready Modes Supported (bits 60:59).
    pub const fn crms(self) -> u8 {
        get(self.0, 59, 2) as u8
    }

    pub const fn with_mqes(self, v: u16) -> Self {
        Self(put(self.0, 0, 16, v as u64))
    }
    pub const fn with_cqr(self, v: bool) -> Self {
        Self(put(self.0, 16, 1, v as u64))
    }
    pub const fn with_ams(self, v: u8) -> Self {
        Self(put(self.0, 17, 2, v as u64))
    }
    pub const fn with_to(self, v: u8) -> Self {
        Self(put(self.0, 24, 8, v as u64))
    }
    pub const fn with_dstrd(self, v: u8) -> Self {
        Self(put(self.0, 32, 4, v as u64))
    }
    pub const fn with_nssrs(self, v: bool) -> Self {
        Self(put(self.0, 36, 1, v as u64))
    }
    pub const fn with_css(self, v: u8) -> Self {
        Self(put(self.0, 37, 8, v as u64))
    }
    pub const fn with_mpsmin(self, v: u8) -> Self {
        Self(put(self.0, 48, 4, v as u64))
    }
    pub const fn with_mpsmax(self, v: u8) -> Self {
        Self(put(self.0, 52, 4, v as u64))
    }
}

/// CAP.CSS bit for the NVM command set.
pub const CSS_NVM: u8 = 1 << 0;
/// CAP.CSS bit for "one or more I/O command sets" (with CC.CSS = 110b).
pub const CSS_IO_COMMAND_SETS: u8 = 1 << 6;
/// CAP.CSS bit for "no I/O command set" (admin only, e.g. discovery).
pub const CSS_ADMIN_ONLY: u8 = 1 << 7;

/// VS: Version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Vs(pub u32);

impl Vs {
    /// NVMe 1.3.
    pub const V1_3: Self = Self::new(1, 3, 0);
    /// NVMe 1.4.
    pub const V1_4: Self = Self::new(1, 4, 0);
    /// NVMe 2.0.
    pub const V2_0: Self = Self::new(2, 0, 0);

    pub const fn new(major: u16, minor: u8, tertiary: u8) -> Self {
        Self((major as u32) << 16 | (minor as u32) << 8 | tertiary as u32)
    }
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub const fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub const fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

code_enum! {
    /// Shutdown Notification (CC.SHN).
    pub enum Shn: u8 {
        None = 0b00,
        Normal = 0b01,
        Abrupt = 0b10,
    }
}

code_enum! {
    /// Shutdown Status (CSTS.SHST).
    pub enum Shst: u8 {
        /// Normal operation, no shutdown requested.
        Normal = 0b00,
        /// Shutdown processing occurring.
        Occurring = 0b01,
        /// Shutdown processing complete.
        Complete = 0b10,
    }
}

/// CC: Controller Configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable (bit 0).
    pub const fn en(self) -> bool {
        self.0 & 1 != 0
    }
    /// I/O Command Set Selected (bits 6:4): 000b NVM, 110b all supported, 111b admin only.
    pub const fn css(self) -> u8 {
        get(self.0 as u64, 4, 3) as u8
    }
    /// Memory Page Size: 2 ^ (12 + MPS) (bits 10:7).
    pub const fn mps(self) -> u8 {
        get(self.0 as u64, 7, 4) as u8
    }
    /// Arbitration Mechanism Selected (bits 13:11).
    pub const fn ams(self) -> u8 {
        get(self.0 as u64, 11, 3) as u8
    }
    /// Shutdown Notification (bits 15:14).
    pub fn shn(self) -> Shn {
        (get(u64::from(self.0), 14, 2) as u8).into()
    }
    /// I/O Submission Queue Entry Size, log2 bytes (bits 19:16); 6 for 64 bytes.
    pub const fn iosqes(self) -> u8 {
        get(self.0 as u64, 16, 4) as u8
    }
    /// I/O Completion Queue Entry Size, log2 bytes (bits 23:20); 4 for 16 bytes.
    pub const fn iocqes(self) -> u8 {
        get(self.0 as u64, 20, 4) as u8
    }
    /// Controller Ready Independent of Media Enable (bit 24).
    pub const fn crime(self) -> bool {
        get(self.0 as u64, 24, 1) != 0
    }

    const fn with(self, shift: u32, width: u32, v: u32) -> Self {
        Self(put(self.0 as u64, shift, width, v as u64) as u32)
    }
    pub const fn with_en(self, v: bool) -> Self {
        self.with(0, 1, v as u32)
    }
    pub const fn with_css(self, v: u8) -> Self {
        self.with(4, 3, v as u32)
    }
    pub const fn with_mps(self, v: u8) -> Self {
        self.with(7, 4, v as u32)
    }
    pub fn with_shn(self, v: Shn) -> Self {
        self.with(14, 2, u8::from(v).into())
    }
    pub const fn with_iosqes(self, v: u8) -> Self {
        self.with(16, 4, v as u32)
    }
    pub const fn with_iocqes(self, v: u8) -> Self {
        self.with(20, 4, v as u32)
    }
}

/// CSTS: Controller Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Csts(pub u32);

impl Csts {
    /// Ready (bit 0).
    pub const fn rdy(self) -> bool {
        self.0 & 1 != 0
    }
    /// Controller Fatal Status (bit 1).
    pub const fn cfs(self) -> bool {
        self.0 & 2 != 0
    }
    /// Shutdown Status (bits 3:2).
    pub fn shst(self) -> Shst {
        (((self.0 >> 2) & 0b11) as u8).into()
    }
    /// NVM Subsystem Reset Occurred (bit 4).
    pub const fn nssro(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Processing Paused (bit 5).
    pub const fn pp(self) -> bool {
        self.0 & (1 << 5) != 0
    }

    pub const fn with_rdy(self, v: bool) -> Self {
        Self((self.0 & !1) | v as u32)
    }
    pub const fn with_cfs(self, v: bool) -> Self {
        Self((self.0 & !2) | (v as u32) << 1)
    }
    pub fn with_shst(self, v: Shst) -> Self {
        Self((self.0 & !0b1100) | (u32::from(u8::from(v)) & 0b11) << 2)
    }
    pub const fn with_nssro(self, v: bool) -> Self {
        Self((self.0 & !(1 << 4)) | (v as u32) << 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!((CAP, VS, CC, CSTS, NSSR), (0x00, 0x08, 0x14, 0x1c, 0x20));
        assert_eq!(property_size(CAP), Some(PropertySize::Eight));
        assert_eq!(property_size(CC), Some(PropertySize::Four));
        assert_eq!(property_size(0x24), None);
    }

    #[test]
    fn cap() {
        // Linux nvmet: MQES 1023, CQR, TO 15 (7.5 s), CSS NVM, MPSMIN/MAX 0.
        let c = Cap::default()
            .with_mqes(1023)
            .with_cqr(true)
            .with_to(15)
            .with_css(CSS_NVM)
            .with_mpsmax(4);
        assert_eq!(c.0, 0x0040_0020_0f01_03ff);
        assert_eq!(c.mqes(), 1023);
        assert!(c.cqr());
        assert_eq!(c.to(), 15);
        assert!(c.css_nvm());
        assert_eq!(c.mpsmin(), 0);
        assert_eq!(c.mpsmax(), 4);
        assert_eq!(c.ams(), 0);
        assert_eq!(c.dstrd(), 0);
        assert!(!c.nssrs());
        let c = Cap(u64::MAX);
        assert_eq!(c.css(), 0xff);
        assert_eq!(c.crms(), 3);
        assert_eq!(c.with_css(0).css(), 0);
        assert_eq!(c.with_mpsmin(1).mpsmin(), 1);
        assert!(!c.with_nssrs(false).nssrs());
        assert_eq!(c.with_dstrd(0).dstrd(), 0);
        assert_eq!(c.with_ams(0).ams(), 0);
    }

    #[test]
    fn vs() {
        assert_eq!(Vs::V1_3.0, 0x0001_0300);
        assert_eq!(Vs::V2_0.0, 0x0002_0000);
        let v = Vs(0x0001_0401);
        assert_eq!((v.major(), v.minor(), v.tertiary()), (1, 4, 1));
        assert_eq!(Vs::V1_4, Vs::new(1, 4, 0));
    }

    #[test]
    fn cc() {
        // Linux host enabling: IOSQES 6, IOCQES 4, EN.
        let c = Cc(0x0046_0001);
        assert!(c.en());
        assert_eq!(c.iosqes(), 6);
        assert_eq!(c.iocqes(), 4);
        assert_eq!(c.shn(), Shn::None);
        assert_eq!(c.css(), 0);
        assert_eq!(c.mps(), 0);
        assert_eq!(c.ams(), 0);
        assert!(!c.crime());
        let built = Cc::default().with_iosqes(6).with_iocqes(4).with_en(true);
        assert_eq!(built, c);
        let s = c.with_shn(Shn::Normal);
        assert_eq!(s.0, 0x0046_4001);
        assert_eq!(s.shn(), Shn::Normal);
        assert_eq!(Cc(0x0000_c000).shn(), Shn::Unknown(3));
        assert_eq!(Cc::default().with_css(7).with_mps(1).0, 0x0000_00f0);
    }

    #[test]
    fn csts() {
        let s = Csts::default().with_rdy(true).with_shst(Shst::Complete);
        assert_eq!(s.0, 0x9);
        assert!(s.rdy());
        assert!(!s.cfs());
        assert_eq!(s.shst(), Shst::Complete);
        assert_eq!(Csts(0xc).shst(), Shst::Unknown(3));
        let f = s.with_cfs(true).with_nssro(true).with_rdy(false);
        assert_eq!(f.0, 0x1a);
        assert!(f.cfs());
        assert!(f.nssro());
        assert!(!f.pp());
    }
}
