//! Identify data structures a controller returns: NVMe Base Specification 2.0, section
//! 5.17.2 ("Identify Data Structures"): Identify Controller (CNS 01h, Figure 275, with the
//! fabrics fields at bytes 1792-2047 from NVMe over Fabrics 1.1 Figure 28), Active Namespace
//! ID list (CNS 02h), Namespace Identification Descriptor list (CNS 03h, Figures 277-278);
//! and the NVM Command Set Specification 1.0 section 4.1.5.1 Identify Namespace (CNS 00h,
//! Figures 97-98) and 4.1.5.3 I/O Command Set Specific Identify Controller (CNS 06h, CSI
//! 00h, Figure 101). Layouts as Linux `struct nvme_id_ctrl`, `nvme_id_ns`,
//! `nvme_ns_id_desc`, `nvme_id_ctrl_nvm`.
//!
//! Each is 4096 bytes. The controller zeroes a buffer, wraps it with `new_unchecked` or
//! `new_checked`, and sets the fields it supports; reserved bytes stay zero.

use super::{NQN_FIELD_LEN, nul_terminated, put_nul_terminated, put_space_padded, space_padded};
use crate::{Error, Result};

/// Length of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;
const _: () = assert!(IdentifyController::<&[u8]>::LEN == IDENTIFY_LEN);
const _: () = assert!(IdentifyControllerNvm::<&[u8]>::LEN == IDENTIFY_LEN);
const _: () = assert!(IdentifyNamespace::<&[u8]>::LEN == IDENTIFY_LEN);
const _: () = assert!(NsIdList::<&[u8]>::LEN == IDENTIFY_LEN);

const SN: core::ops::Range<usize> = 4..24;
const MN: core::ops::Range<usize> = 24..64;
const FR: core::ops::Range<usize> = 64..72;
const IEEE: core::ops::Range<usize> = 73..76;
const FGUID: core::ops::Range<usize> = 112..128;
const SUBNQN: core::ops::Range<usize> = 768..1024;
/// Offset of the first power state descriptor.
const PSD0: usize = 2048;
const _: () = assert!(SN.end - SN.start == 20 && MN.end - MN.start == 40);
const _: () = assert!(FR.end - FR.start == 8 && SUBNQN.end - SUBNQN.start == NQN_FIELD_LEN);

wire_view! {
    /// Identify Controller data structure (CNS 01h).
    pub struct IdentifyController, len = IDENTIFY_LEN;
    /// PCI Vendor ID.
    vid, set_vid: u16 = 0;
    /// PCI Subsystem Vendor ID.
    ssvid, set_ssvid: u16 = 2;
    /// Recommended Arbitration Burst.
    rab, set_rab: u8 = 72;
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities, see [`cmic`].
    cmic, set_cmic: u8 = 76;
    /// Maximum Data Transfer Size: 2 ^ MDTS units of CAP.MPSMIN; 0 = no limit.
    mdts, set_mdts: u8 = 77;
    /// Controller ID.
    cntlid, set_cntlid: u16 = 78;
    /// Version, as the VS property.
    ver, set_ver: u32 = 80;
    /// RTD3 Resume Latency (microseconds).
    rtd3r, set_rtd3r: u32 = 84;
    /// RTD3 Entry Latency (microseconds).
    rtd3e, set_rtd3e: u32 = 88;
    /// Optional Asynchronous Events Supported, see [`oaes`].
    oaes, set_oaes: u32 = 92;
    /// Controller Attributes, see [`ctratt`].
    ctratt, set_ctratt: u32 = 96;
    /// Read Recovery Levels Supported.
    rrls, set_rrls: u16 = 100;
    /// Controller Type, see [`cntrltype`].
    cntrltype, set_cntrltype: u8 = 111;
    /// Command Retry Delay Times 1-3 (100 ms units).
    crdt1, set_crdt1: u16 = 128;
    crdt2, set_crdt2: u16 = 130;
    crdt3, set_crdt3: u16 = 132;
    /// Optional Admin Command Support, see [`oacs`].
    oacs, set_oacs: u16 = 256;
    /// Abort Command Limit, 0-based.
    acl, set_acl: u8 = 258;
    /// Asynchronous Event Request Limit, 0-based.
    aerl, set_aerl: u8 = 259;
    /// Firmware Updates: bit 0 slot 1 read only, bits 3:1 number of slots.
    frmw, set_frmw: u8 = 260;
    /// Log Page Attributes, see [`lpa`].
    lpa, set_lpa: u8 = 261;
    /// Error Log Page Entries, 0-based.
    elpe, set_elpe: u8 = 262;
    /// Number of Power States Support, 0-based.
    npss, set_npss: u8 = 263;
    /// Admin Vendor Specific Command Configuration.
    avscc, set_avscc: u8 = 264;
    /// Autonomous Power State Transition Attributes.
    apsta, set_apsta: u8 = 265;
    /// Warning Composite Temperature Threshold (Kelvin).
    wctemp, set_wctemp: u16 = 266;
    /// Critical Composite Temperature Threshold (Kelvin).
    cctemp, set_cctemp: u16 = 268;
    /// Total NVM Capacity (bytes).
    tnvmcap, set_tnvmcap: u128 = 280;
    /// Unallocated NVM Capacity (bytes).
    unvmcap, set_unvmcap: u128 = 296;
    /// Keep Alive Support: granularity of the keep alive timer in 100 ms units; 0 means
    /// Keep Alive is not supported.
    kas, set_kas: u16 = 320;
    /// ANA Transition Time (seconds).
    anatt, set_anatt: u8 = 342;
    /// ANA Capabilities.
    anacap, set_anacap: u8 = 343;
    /// ANA Group Identifier Maximum.
    anagrpmax, set_anagrpmax: u32 = 344;
    /// Number of ANA Group Identifiers.
    nanagrpid, set_nanagrpid: u32 = 348;
    /// Submission Queue Entry Size: bits 3:0 required, 7:4 maximum (log2); 66h for 64.
    sqes, set_sqes: u8 = 512;
    /// Completion Queue Entry Size: 44h for 16 bytes.
    cqes, set_cqes: u8 = 513;
    /// Maximum Outstanding Commands (fabrics: per queue).
    maxcmd, set_maxcmd: u16 = 514;
    /// Number of Namespaces: the largest NSID.
    nn, set_nn: u32 = 516;
    /// Optional NVM Command Support, see [`oncs`].
    oncs, set_oncs: u16 = 520;
    /// Fused Operation Support: bit 0 Compare and Write.
    fuses, set_fuses: u16 = 522;
    /// Format NVM Attributes.
    fna, set_fna: u8 = 524;
    /// Volatile Write Cache, see [`vwc`].
    vwc, set_vwc: u8 = 525;
    /// Atomic Write Unit Normal, 0-based logical blocks.
    awun, set_awun: u16 = 526;
    /// Atomic Write Unit Power Fail, 0-based logical blocks.
    awupf, set_awupf: u16 = 528;
    /// I/O Command Set Vendor Specific Command Configuration.
    icsvscc, set_icsvscc: u8 = 530;
    /// Namespace Write Protection Capabilities.
    nwpc, set_nwpc: u8 = 531;
    /// Atomic Compare & Write Unit, 0-based.
    acwu, set_acwu: u16 = 532;
    /// Optional Copy Formats Supported.
    ocfs, set_ocfs: u16 = 534;
    /// SGL Support, see [`sgls`].
    sgls, set_sgls: u32 = 536;
    /// Maximum Number of Allowed Namespaces.
    mnan, set_mnan: u32 = 540;
    /// I/O Queue Command Capsule Supported Size, in 16-byte units (SQE + in-capsule data).
    ioccsz, set_ioccsz: u32 = 1792;
    /// I/O Queue Response Capsule Supported Size, in 16-byte units.
    iorcsz, set_iorcsz: u32 = 1796;
    /// In Capsule Data Offset, in 16-byte units.
    icdoff, set_icdoff: u16 = 1800;
    /// Fabrics Controller Attributes: bit 0 static controller model.
    fcatt, set_fcatt: u8 = 1802;
    /// Maximum SGL Data Block Descriptors, 0 = no limit.
    msdbd, set_msdbd: u8 = 1803;
    /// Optional Fabric Commands Support: bit 0 Disconnect.
    ofcs, set_ofcs: u16 = 1804;
    /// Discovery Controller Type (discovery controllers only).
    dctype, set_dctype: u8 = 1806;
    /// Power State 0 Maximum Power (centiwatts when MXPS is 0).
    psd0_mp, set_psd0_mp: u16 = PSD0;
    /// Power State 0 Entry Latency (microseconds).
    psd0_enlat, set_psd0_enlat: u32 = PSD0 + 4;
    /// Power State 0 Exit Latency (microseconds).
    psd0_exlat, set_psd0_exlat: u32 = PSD0 + 8;
}

impl<T: AsRef<[u8]>> IdentifyController<T> {
    /// Serial Number (20 ASCII bytes, space padded), without the padding.
    pub fn sn(&self) -> Result<&str> {
        space_padded(&self.buffer.as_ref()[SN])
    }
    /// Model Number (40 ASCII bytes, space padded).
    pub fn mn(&self) -> Result<&str> {
        space_padded(&self.buffer.as_ref()[MN])
    }
    /// Firmware Revision (8 ASCII bytes, space padded).
    pub fn fr(&self) -> Result<&str> {
        space_padded(&self.buffer.as_ref()[FR])
    }
    /// IEEE OUI Identifier, as on the wire (least significant byte first).
    pub fn ieee(&self) -> [u8; 3] {
        let b = self.buffer.as_ref();
        [b[IEEE.start], b[IEEE.start + 1], b[IEEE.start + 2]]
    }
    /// FRU Globally Unique Identifier.
    pub fn fguid(&self) -> [u8; 16] {
        let mut g = [0u8; 16];
        g.copy_from_slice(&self.buffer.as_ref()[FGUID]);
        g
    }
    /// NVM Subsystem NVMe Qualified Name (NUL terminated UTF-8).
    pub fn subnqn(&self) -> Result<&str> {
        nul_terminated(&self.buffer.as_ref()[SUBNQN])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IdentifyController<T> {
    /// `Malformed` if longer than 20 bytes or not printable ASCII.
    pub fn set_sn(&mut self, s: &str) -> Result<()> {
        put_space_padded(&mut self.buffer.as_mut()[SN], s)
    }
    /// `Malformed` if longer than 40 bytes or not printable ASCII.
    pub fn set_mn(&mut self, s: &str) -> Result<()> {
        put_space_padded(&mut self.buffer.as_mut()[MN], s)
    }
    /// `Malformed` if longer than 8 bytes or not printable ASCII.
    pub fn set_fr(&mut self, s: &str) -> Result<()> {
        put_space_padded(&mut self.buffer.as_mut()[FR], s)
    }
    pub fn set_ieee(&mut self, oui: [u8; 3]) {
        self.buffer.as_mut()[IEEE].copy_from_slice(&oui);
    }
    pub fn set_fguid(&mut self, g: [u8; 16]) {
        self.buffer.as_mut()[FGUID].copy_from_slice(&g);
    }
    /// `Malformed` if the NQN has a NUL or does not fit with its terminator.
    pub fn set_subnqn(&mut self, nqn: &str) -> Result<()> {
        put_nul_terminated(&mut self.buffer.as_mut()[SUBNQN], nqn)
    }
}

/// CNTRLTYPE values.
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
    pub const ADMINISTRATIVE: u8 = 3;
}

/// CMIC bits.
pub mod cmic {
    pub const MULTI_PORT: u8 = 1 << 0;
    pub const MULTI_CONTROLLER: u8 = 1 << 1;
    pub const SR_IOV: u8 = 1 << 2;
    pub const ANA: u8 = 1 << 3;
}

/// OAES bits.
pub mod oaes {
    pub const NAMESPACE_ATTRIBUTE_NOTICES: u32 = 1 << 8;
    pub const FIRMWARE_ACTIVATION_NOTICES: u32 = 1 << 9;
    pub const ANA_CHANGE_NOTICES: u32 = 1 << 11;
    pub const DISCOVERY_LOG_CHANGE_NOTICES: u32 = 1 << 31;
}

/// CTRATT bits.
pub mod ctratt {
    /// 128-bit Host Identifier (required over fabrics).
    pub const HOST_ID_128: u32 = 1 << 0;
    pub const NON_OPERATIONAL_POWER_STATE_PERMISSIVE: u32 = 1 << 1;
    pub const NVM_SETS: u32 = 1 << 2;
    pub const READ_RECOVERY_LEVELS: u32 = 1 << 3;
    pub const ENDURANCE_GROUPS: u32 = 1 << 4;
    pub const PREDICTABLE_LATENCY_MODE: u32 = 1 << 5;
    pub const TBKAS: u32 = 1 << 6;
    pub const NAMESPACE_GRANULARITY: u32 = 1 << 7;
    pub const UUID_LIST: u32 = 1 << 9;
}

/// OACS bits.
pub mod oacs {
    pub const SECURITY: u16 = 1 << 0;
    pub const FORMAT_NVM: u16 = 1 << 1;
    pub const FIRMWARE: u16 = 1 << 2;
    pub const NAMESPACE_MANAGEMENT: u16 = 1 << 3;
    pub const DEVICE_SELF_TEST: u16 = 1 << 4;
    pub const DIRECTIVES: u16 = 1 << 5;
    pub const NVME_MI: u16 = 1 << 6;
    pub const VIRTUALIZATION: u16 = 1 << 7;
    pub const DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;
    pub const GET_LBA_STATUS: u16 = 1 << 9;
}

/// LPA bits.
pub mod lpa {
    /// SMART / Health log page per namespace.
    pub const SMART_PER_NAMESPACE: u8 = 1 << 0;
    /// Commands Supported and Effects log page.
    pub const COMMANDS_EFFECTS: u8 = 1 << 1;
    /// Extended data for Get Log Page (NUMDU, LPO).
    pub const EXTENDED_DATA: u8 = 1 << 2;
    pub const TELEMETRY: u8 = 1 << 3;
    pub const PERSISTENT_EVENT: u8 = 1 << 4;
}

/// ONCS bits.
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    pub const DATASET_MANAGEMENT: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    pub const SAVE_SELECT: u16 = 1 << 4;
    pub const RESERVATIONS: u16 = 1 << 5;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const VERIFY: u16 = 1 << 7;
    pub const COPY: u16 = 1 << 8;
}

/// VWC bits.
pub mod vwc {
    /// A volatile write cache is present.
    pub const PRESENT: u8 = 1 << 0;
    /// Bits 2:1 = 11b: Flush with NSID FFFFFFFFh is supported.
    pub const FLUSH_ALL_SUPPORTED: u8 = 0b11 << 1;
    /// Bits 2:1 = 10b: Flush with NSID FFFFFFFFh is not supported.
    pub const FLUSH_ALL_NOT_SUPPORTED: u8 = 0b10 << 1;
}

/// SGLS bits.
pub mod sgls {
    /// Bits 1:0 = 01b: SGLs supported, no alignment requirement.
    pub const SUPPORTED: u32 = 0b01;
    /// Bits 1:0 = 10b: SGLs supported with dword alignment.
    pub const SUPPORTED_DWORD_ALIGNED: u32 = 0b10;
    /// Keyed SGL Data Block descriptor (RDMA).
    pub const KEYED: u32 = 1 << 2;
    pub const BIT_BUCKET: u32 = 1 << 16;
    pub const BYTE_ALIGNED_METADATA: u32 = 1 << 17;
    pub const LENGTH_LARGER_THAN_DATA: u32 = 1 << 18;
    pub const MPTR_SGL: u32 = 1 << 19;
    /// The address field of a Data Block descriptor may be an offset (in-capsule data).
    pub const OFFSET: u32 = 1 << 20;
    pub const TRANSPORT_DATA_BLOCK: u32 = 1 << 21;
}

/// FCATT bits.
pub mod fcatt {
    /// The subsystem uses the static controller model (clear: dynamic).
    pub const STATIC_CONTROLLER_MODEL: u8 = 1 << 0;
}

/// The number of LBA formats an Identify Namespace can describe.
pub const MAX_LBA_FORMATS: usize = 64;
const LBAF: usize = 128;
const NGUID: core::ops::Range<usize> = 104..120;
const EUI64: core::ops::Range<usize> = 120..128;
const _: () = assert!(LBAF + 4 * MAX_LBA_FORMATS == 384);

wire_view! {
    /// Identify Namespace data structure, NVM command set (CNS 00h).
    pub struct IdentifyNamespace, len = IDENTIFY_LEN;
    /// Namespace Size, logical blocks.
    nsze, set_nsze: u64 = 0;
    /// Namespace Capacity, logical blocks.
    ncap, set_ncap: u64 = 8;
    /// Namespace Utilization, logical blocks.
    nuse, set_nuse: u64 = 16;
    /// Namespace Features, see [`nsfeat`].
    nsfeat, set_nsfeat: u8 = 24;
    /// Number of LBA Formats, 0-based.
    nlbaf, set_nlbaf: u8 = 25;
    /// Formatted LBA Size: bits 3:0 and 6:5 the format index, bit 4 metadata at the end
    /// of the data LBA.
    flbas, set_flbas: u8 = 26;
    /// Metadata Capabilities.
    mc, set_mc: u8 = 27;
    /// End-to-end Data Protection Capabilities.
    dpc, set_dpc: u8 = 28;
    /// End-to-end Data Protection Type Settings.
    dps, set_dps: u8 = 29;
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities: bit 0 shared.
    nmic, set_nmic: u8 = 30;
    /// Reservation Capabilities.
    rescap, set_rescap: u8 = 31;
    /// Format Progress Indicator.
    fpi, set_fpi: u8 = 32;
    /// Deallocate Logical Block Features: bits 2:0 = 001b, deallocated blocks read zero.
    dlfeat, set_dlfeat: u8 = 33;
    /// Namespace Atomic Write Unit Normal, 0-based.
    nawun, set_nawun: u16 = 34;
    /// Namespace Atomic Write Unit Power Fail, 0-based.
    nawupf, set_nawupf: u16 = 36;
    /// Namespace Atomic Compare & Write Unit, 0-based.
    nacwu, set_nacwu: u16 = 38;
    /// Namespace Atomic Boundary Size Normal.
    nabsn, set_nabsn: u16 = 40;
    /// Namespace Atomic Boundary Offset.
    nabo, set_nabo: u16 = 42;
    /// Namespace Atomic Boundary Size Power Fail.
    nabspf, set_nabspf: u16 = 44;
    /// Namespace Optimal I/O Boundary, logical blocks.
    noiob, set_noiob: u16 = 46;
    /// NVM Capacity, bytes.
    nvmcap, set_nvmcap: u128 = 48;
    /// Namespace Preferred Write Granularity, 0-based logical blocks.
    npwg, set_npwg: u16 = 64;
    /// Namespace Preferred Write Alignment, 0-based.
    npwa, set_npwa: u16 = 66;
    /// Namespace Preferred Deallocate Granularity, 0-based.
    npdg, set_npdg: u16 = 68;
    /// Namespace Preferred Deallocate Alignment, 0-based.
    npda, set_npda: u16 = 70;
    /// Namespace Optimal Write Size, 0-based.
    nows, set_nows: u16 = 72;
    /// Maximum Single Source Range Length (Copy).
    mssrl, set_mssrl: u16 = 74;
    /// Maximum Copy Length.
    mcl, set_mcl: u32 = 76;
    /// Maximum Source Range Count, 0-based.
    msrc, set_msrc: u8 = 80;
    /// Number of Unique Capability LBA Formats.
    nulbaf, set_nulbaf: u8 = 82;
    /// ANA Group Identifier.
    anagrpid, set_anagrpid: u32 = 92;
    /// Namespace Attributes: bit 0 write protected.
    nsattr, set_nsattr: u8 = 99;
    /// NVM Set Identifier.
    nvmsetid, set_nvmsetid: u16 = 100;
    /// Endurance Group Identifier.
    endgid, set_endgid: u16 = 102;
}

wire_view! {
    /// I/O Command Set Specific Identify Controller data structure for the NVM command set
    /// (CNS 06h, CSI 00h): the command size limits. Every field 0 means "no limit".
    pub struct IdentifyControllerNvm, len = IDENTIFY_LEN;
    /// Verify Size Limit: 2 ^ VSL units of CAP.MPSMIN.
    vsl, set_vsl: u8 = 0;
    /// Write Zeroes Size Limit: 2 ^ WZSL units of CAP.MPSMIN.
    wzsl, set_wzsl: u8 = 1;
    /// Write Uncorrectable Size Limit: 2 ^ WUSL units of CAP.MPSMIN.
    wusl, set_wusl: u8 = 2;
    /// Dataset Management Ranges Limit: ranges per command (not 0-based).
    dmrl, set_dmrl: u8 = 3;
    /// Dataset Management Range Size Limit: logical blocks per range.
    dmrsl, set_dmrsl: u32 = 4;
    /// Dataset Management Size Limit: logical blocks of all ranges of one command.
    dmsl, set_dmsl: u64 = 8;
}

/// NSFEAT bits.
pub mod nsfeat {
    /// Thin provisioning (NCAP may be less than NSZE).
    pub const THIN_PROVISIONING: u8 = 1 << 0;
    /// NAWUN, NAWUPF, NACWU are defined for this namespace.
    pub const NS_ATOMICS: u8 = 1 << 1;
    /// Deallocated or unwritten logical block error support.
    pub const DEALLOCATED_ERROR: u8 = 1 << 2;
    /// NGUID/EUI64 are never reused.
    pub const IDS_NOT_REUSED: u8 = 1 << 3;
    /// NPWG, NPWA, NPDG, NPDA, NOWS are defined.
    pub const OPTIMAL_PERFORMANCE: u8 = 1 << 4;
}

/// One LBA Format (4 bytes): metadata size, LBA data size (log2), relative performance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LbaFormat {
    /// Metadata Size in bytes (bits 15:0).
    pub ms: u16,
    /// LBA Data Size, log2 bytes (bits 23:16); 9 for 512, 12 for 4096.
    pub lbads: u8,
    /// Relative Performance (bits 25:24): 0 best .. 3 degraded.
    pub rp: u8,
}

impl From<u32> for LbaFormat {
    fn from(v: u32) -> Self {
        Self {
            ms: v as u16,
            lbads: (v >> 16) as u8,
            rp: ((v >> 24) & 0b11) as u8,
        }
    }
}

impl From<LbaFormat> for u32 {
    fn from(f: LbaFormat) -> Self {
        u32::from(f.ms) | u32::from(f.lbads) << 16 | u32::from(f.rp & 0b11) << 24
    }
}

impl<T: AsRef<[u8]>> IdentifyNamespace<T> {
    /// Namespace Globally Unique Identifier.
    pub fn nguid(&self) -> [u8; 16] {
        let mut g = [0u8; 16];
        g.copy_from_slice(&self.buffer.as_ref()[NGUID]);
        g
    }
    /// IEEE Extended Unique Identifier.
    pub fn eui64(&self) -> [u8; 8] {
        let mut g = [0u8; 8];
        g.copy_from_slice(&self.buffer.as_ref()[EUI64]);
        g
    }
    /// LBA format `i` (0-63), or `None` past the table.
    pub fn lbaf(&self, i: usize) -> Option<LbaFormat> {
        (i < MAX_LBA_FORMATS)
            .then(|| <u32 as super::Field>::read(self.buffer.as_ref(), LBAF + 4 * i).into())
    }
    /// The index of the format in use, from FLBAS bits 3:0 and 6:5.
    pub fn lba_format_index(&self) -> usize {
        let f = self.flbas();
        usize::from(f & 0x0f) | usize::from((f >> 5) & 0b11) << 4
    }
    /// The LBA format in use.
    pub fn current_lbaf(&self) -> LbaFormat {
        // The index is at most 63: it cannot miss the table.
        self.lbaf(self.lba_format_index()).unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IdentifyNamespace<T> {
    pub fn set_nguid(&mut self, g: [u8; 16]) {
        self.buffer.as_mut()[NGUID].copy_from_slice(&g);
    }
    pub fn set_eui64(&mut self, g: [u8; 8]) {
        self.buffer.as_mut()[EUI64].copy_from_slice(&g);
    }
    /// Sets LBA format `i`; `Malformed` past the 64-entry table.
    pub fn set_lbaf(&mut self, i: usize, f: LbaFormat) -> Result<()> {
        if i >= MAX_LBA_FORMATS {
            return Err(Error::Malformed);
        }
        <u32 as super::Field>::write(self.buffer.as_mut(), LBAF + 4 * i, f.into());
        Ok(())
    }
    /// Sets FLBAS to format `index` (bits 3:0 and 6:5), keeping bit 4; `Malformed` past
    /// the table.
    pub fn set_lba_format_index(&mut self, index: usize) -> Result<()> {
        if index >= MAX_LBA_FORMATS {
            return Err(Error::Malformed);
        }
        let i = index as u8;
        let v = (self.flbas() & 0x10) | (i & 0x0f) | ((i >> 4) << 5);
        self.set_flbas(v);
        Ok(())
    }
}

/// The most NSIDs one list (Active Namespace ID list, Changed Namespace List) holds.
pub const NSID_LIST_MAX: usize = 1024;

wire_view! {
    /// A list of up to 1024 NSIDs, ascending, ended by the first zero: the Active Namespace
    /// ID list (CNS 02h) and the Changed Namespace List log page.
    pub struct NsIdList, len = IDENTIFY_LEN;
}

impl<T: AsRef<[u8]>> NsIdList<T> {
    /// Entry `i`, or `None` past the list's 1024 entries.
    pub fn get(&self, i: usize) -> Option<u32> {
        (i < NSID_LIST_MAX).then(|| <u32 as super::Field>::read(self.buffer.as_ref(), 4 * i))
    }
    /// The NSIDs before the first zero entry.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..NSID_LIST_MAX)
            .map(|i| <u32 as super::Field>::read(self.buffer.as_ref(), 4 * i))
            .take_while(|&n| n != 0)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NsIdList<T> {
    /// Sets entry `i`; `Malformed` past 1024 entries.
    pub fn set(&mut self, i: usize, nsid: u32) -> Result<()> {
        if i >= NSID_LIST_MAX {
            return Err(Error::Malformed);
        }
        <u32 as super::Field>::write(self.buffer.as_mut(), 4 * i, nsid);
        Ok(())
    }

    /// Fills the Active Namespace ID list for Identify CNS 02h: the NSIDs greater than
    /// `after` (the command's NSID), at most 1024, from `nsids`, which must be strictly
    /// ascending (`Malformed` otherwise). Returns how many were written; the rest of the
    /// buffer is left as the caller zeroed it.
    pub fn fill_active(
        &mut self,
        after: u32,
        nsids: impl IntoIterator<Item = u32>,
    ) -> Result<usize> {
        let mut n = 0;
        let mut last = 0u32;
        for id in nsids {
            if n > 0 && id <= last {
                return Err(Error::Malformed);
            }
            last = id;
            if id <= after || id == 0 {
                continue;
            }
            if n == NSID_LIST_MAX {
                break;
            }
            self.set(n, id)?;
            n += 1;
        }
        Ok(n)
    }
}

code_enum! {
    /// Namespace Identifier Type (NIDT) of a Namespace Identification Descriptor.
    pub enum NidType: u8 {
        Eui64 = 0x1,
        Nguid = 0x2,
        Uuid = 0x3,
        Csi = 0x4,
    }
}

impl NidType {
    /// The NIDL a known type requires.
    pub fn nid_len(self) -> Option<usize> {
        match self {
            Self::Eui64 => Some(8),
            Self::Nguid | Self::Uuid => Some(16),
            Self::Csi => Some(1),
            Self::Unknown(_) => None,
        }
    }
}

/// Length of a Namespace Identification Descriptor header (NIDT, NIDL, 2 reserved).
pub const NS_DESC_HEADER_LEN: usize = 4;

/// One Namespace Identification Descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NsIdDescriptor<'a> {
    Eui64([u8; 8]),
    Nguid([u8; 16]),
    Uuid([u8; 16]),
    Csi(u8),
    /// A type this crate does not know, with its NID bytes.
    Other {
        nidt: u8,
        nid: &'a [u8],
    },
}

impl NsIdDescriptor<'_> {
    fn nidt(&self) -> u8 {
        match self {
            Self::Eui64(_) => 1,
            Self::Nguid(_) => 2,
            Self::Uuid(_) => 3,
            Self::Csi(_) => 4,
            Self::Other { nidt, .. } => *nidt,
        }
    }

    fn nid(&self) -> &[u8] {
        match self {
            Self::Eui64(b) => b,
            Self::Nguid(b) | Self::Uuid(b) => b,
            Self::Csi(b) => core::slice::from_ref(b),
            Self::Other { nid, .. } => nid,
        }
    }

    /// Header plus identifier.
    pub fn buffer_len(&self) -> usize {
        NS_DESC_HEADER_LEN + self.nid().len()
    }

    /// Writes the descriptor at the start of `buf`, returning its length. `Truncated` if it
    /// does not fit; `Malformed` for an `Other` with type 0 or a NID over 255 bytes.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let nid = self.nid();
        let nidl = u8::try_from(nid.len()).map_err(|_| Error::Malformed)?;
        if self.nidt() == 0 {
            return Err(Error::Malformed);
        }
        let n = self.buffer_len();
        let out = buf.get_mut(..n).ok_or(Error::Truncated)?;
        out[0] = self.nidt();
        out[1] = nidl;
        out[2] = 0;
        out[3] = 0;
        out[NS_DESC_HEADER_LEN..].copy_from_slice(nid);
        Ok(n)
    }
}

/// Writes a Namespace Identification Descriptor list (CNS 03h) into `buf` (4096 bytes,
/// zeroed by the caller: a zero NIDT ends the list). Returns the bytes written.
pub fn emit_ns_descriptors(buf: &mut [u8], descs: &[NsIdDescriptor<'_>]) -> Result<usize> {
    let mut pos = 0;
    for d in descs {
        let rest = buf.get_mut(pos..).ok_or(Error::Truncated)?;
        pos += d.emit(rest)?;
    }
    Ok(pos)
}

/// Reads a Namespace Identification Descriptor list: yields descriptors until a zero NIDT
/// or the end of the buffer. A known type with the wrong NIDL yields `Malformed`, a
/// descriptor running past the buffer `Truncated`; either ends the iteration.
#[derive(Debug, Clone)]
pub struct NsDescriptors<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> NsDescriptors<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
}

impl<'a> Iterator for NsDescriptors<'a> {
    type Item = Result<NsIdDescriptor<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..)?;
        let [nidt, nidl, _, _, ..] = *rest else {
            self.pos = self.buf.len();
            return None;
        };
        if nidt == 0 {
            self.pos = self.buf.len();
            return None;
        }
        let end = NS_DESC_HEADER_LEN + usize::from(nidl);
        let Some(nid) = rest.get(NS_DESC_HEADER_LEN..end) else {
            self.pos = self.buf.len();
            return Some(Err(Error::Truncated));
        };
        let t = NidType::from(nidt);
        if t.nid_len().is_some_and(|l| l != nid.len()) {
            self.pos = self.buf.len();
            return Some(Err(Error::Malformed));
        }
        self.pos += end;
        let d = match t {
            NidType::Eui64 => NsIdDescriptor::Eui64(nid.try_into().ok()?),
            NidType::Nguid => NsIdDescriptor::Nguid(nid.try_into().ok()?),
            NidType::Uuid => NsIdDescriptor::Uuid(nid.try_into().ok()?),
            NidType::Csi => NsIdDescriptor::Csi(nid[0]),
            NidType::Unknown(nidt) => NsIdDescriptor::Other { nidt, nid },
        };
        Some(Ok(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_offsets() {
        let mut b = [0u8; 4096];
        let mut c = IdentifyController::new_checked(&mut b[..]).unwrap();
        c.set_vid(0x1b36);
        c.set_ssvid(0x1af4);
        c.set_sn("0123456789abcdef").unwrap();
        c.set_mn("xdp-target").unwrap();
        c.set_fr("0.1.0").unwrap();
        c.set_rab(6);
        c.set_ieee([0x00, 0x14, 0xee]);
        c.set_cmic(cmic::MULTI_CONTROLLER);
        c.set_mdts(5);
        c.set_cntlid(0x0102);
        c.set_ver(0x0002_0000);
        c.set_oaes(oaes::NAMESPACE_ATTRIBUTE_NOTICES);
        c.set_ctratt(ctratt::HOST_ID_128);
        c.set_cntrltype(cntrltype::IO);
        c.set_oacs(0);
        c.set_acl(3);
        c.set_aerl(3);
        c.set_frmw(0x3);
        c.set_lpa(lpa::SMART_PER_NAMESPACE | lpa::COMMANDS_EFFECTS | lpa::EXTENDED_DATA);
        c.set_elpe(127);
        c.set_npss(0);
        c.set_kas(50);
        c.set_sqes(0x66);
        c.set_cqes(0x44);
        c.set_maxcmd(128);
        c.set_nn(1024);
        c.set_oncs(oncs::DATASET_MANAGEMENT | oncs::WRITE_ZEROES);
        c.set_vwc(vwc::PRESENT);
        c.set_sgls(sgls::SUPPORTED | sgls::OFFSET | sgls::TRANSPORT_DATA_BLOCK);
        c.set_subnqn("nqn.2014-08.org.example:sub").unwrap();
        c.set_ioccsz(4 + 512);
        c.set_iorcsz(1);
        c.set_icdoff(0);
        c.set_msdbd(1);
        c.set_ofcs(1);
        c.set_psd0_mp(2500);
        c.set_tnvmcap(1 << 70);

        assert_eq!(&b[0..4], &[0x36, 0x1b, 0xf4, 0x1a]);
        assert_eq!(&b[4..24], b"0123456789abcdef    ");
        assert_eq!(&b[24..34], b"xdp-target");
        assert!(b[34..64].iter().all(|&c| c == b' '));
        assert_eq!(&b[64..72], b"0.1.0   ");
        assert_eq!(&b[72..78], &[6, 0x00, 0x14, 0xee, 2, 5]);
        assert_eq!(&b[78..84], &[0x02, 0x01, 0x00, 0x00, 0x02, 0x00]);
        assert_eq!(&b[92..94], &[0x00, 0x01]);
        assert_eq!(b[96], 1);
        assert_eq!(b[111], 1);
        assert_eq!(&b[258..264], &[3, 3, 3, 7, 127, 0]);
        assert_eq!(&b[320..322], &[50, 0]);
        assert_eq!(&b[512..520], &[0x66, 0x44, 128, 0, 0x00, 0x04, 0, 0]);
        assert_eq!(&b[520..522], &[0x0c, 0]);
        assert_eq!(b[525], 1);
        assert_eq!(&b[536..540], &[0x01, 0x00, 0x30, 0x00]);
        assert_eq!(&b[768..795], b"nqn.2014-08.org.example:sub");
        assert_eq!(b[795], 0);
        assert_eq!(&b[1792..1800], &[0x04, 0x02, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[1800..1806], &[0, 0, 0, 1, 1, 0]);
        assert_eq!(&b[2048..2050], &[0xc4, 0x09]);
        assert_eq!(b[280 + 8], 0x40);

        let c = IdentifyController::new_checked(&b[..]).unwrap();
        assert_eq!(c.vid(), 0x1b36);
        assert_eq!(c.sn(), Ok("0123456789abcdef"));
        assert_eq!(c.mn(), Ok("xdp-target"));
        assert_eq!(c.fr(), Ok("0.1.0"));
        assert_eq!(c.ieee(), [0x00, 0x14, 0xee]);
        assert_eq!(c.subnqn(), Ok("nqn.2014-08.org.example:sub"));
        assert_eq!(c.kas(), 50);
        assert_eq!(c.ioccsz(), 516);
        assert_eq!(c.cntrltype(), cntrltype::IO);
        assert_eq!(c.tnvmcap(), 1 << 70);
        assert_eq!(c.fguid(), [0; 16]);
    }

    #[test]
    fn controller_strings_rejected() {
        let mut b = [0u8; 4096];
        let mut c = IdentifyController::new_unchecked(&mut b[..]);
        assert_eq!(c.set_sn("012345678901234567890"), Err(Error::Malformed));
        assert_eq!(c.set_fr("\u{e9}"), Err(Error::Malformed));
        assert_eq!(c.set_mn("a\nb"), Err(Error::Malformed));
        let long = [b'n'; 256];
        let long = core::str::from_utf8(&long).unwrap();
        assert_eq!(c.set_subnqn(long), Err(Error::Malformed));
        assert_eq!(c.set_subnqn(&long[..255]), Ok(()));
    }

    #[test]
    fn truncated() {
        let b = [0u8; 4095];
        assert_eq!(
            IdentifyController::new_checked(&b[..]).err(),
            Some(Error::Truncated)
        );
        assert_eq!(
            IdentifyNamespace::new_checked(&b[..]).err(),
            Some(Error::Truncated)
        );
        assert_eq!(NsIdList::new_checked(&b[..]).err(), Some(Error::Truncated));
    }

    #[test]
    fn nvm_controller_limits_offsets() {
        let mut b = [0u8; 4096];
        let mut c = IdentifyControllerNvm::new_checked(&mut b[..]).unwrap();
        c.set_vsl(1);
        c.set_wzsl(12);
        c.set_wusl(3);
        c.set_dmrl(255);
        c.set_dmrsl(0x0010_0000);
        c.set_dmsl(0x0102_0304_0506_0708);
        assert_eq!(&b[..8], &[1, 12, 3, 255, 0x00, 0x00, 0x10, 0x00]);
        assert_eq!(&b[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert!(b[16..].iter().all(|&x| x == 0));
        let c = IdentifyControllerNvm::new_checked(&b[..]).unwrap();
        assert_eq!(
            (c.wzsl(), c.dmrsl(), c.dmsl()),
            (12, 1 << 20, 0x0102_0304_0506_0708)
        );
        assert!(IdentifyControllerNvm::new_checked(&b[..4095]).is_err());
    }

    #[test]
    fn namespace_offsets() {
        let mut b = [0u8; 4096];
        let mut n = IdentifyNamespace::new_checked(&mut b[..]).unwrap();
        n.set_nsze(0x0102_0304_0506_0708);
        n.set_ncap(0x10);
        n.set_nuse(0x20);
        n.set_nsfeat(nsfeat::THIN_PROVISIONING | nsfeat::OPTIMAL_PERFORMANCE);
        n.set_nlbaf(1);
        n.set_lba_format_index(1).unwrap();
        n.set_dlfeat(1);
        n.set_nmic(1);
        n.set_npwg(7);
        n.set_anagrpid(1);
        n.set_nguid([0xab; 16]);
        n.set_eui64([0xcd; 8]);
        n.set_lbaf(
            0,
            LbaFormat {
                ms: 0,
                lbads: 9,
                rp: 0,
            },
        )
        .unwrap();
        n.set_lbaf(
            1,
            LbaFormat {
                ms: 8,
                lbads: 12,
                rp: 2,
            },
        )
        .unwrap();
        assert_eq!(n.set_lbaf(64, LbaFormat::default()), Err(Error::Malformed));
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(b[8], 0x10);
        assert_eq!(b[16], 0x20);
        assert_eq!(&b[24..34], &[0x11, 1, 1, 0, 0, 0, 1, 0, 0, 1]);
        assert_eq!(b[64], 7);
        assert_eq!(b[92], 1);
        assert_eq!(&b[104..120], &[0xab; 16]);
        assert_eq!(&b[120..128], &[0xcd; 8]);
        assert_eq!(&b[128..136], &[0, 0, 9, 0, 8, 0, 12, 2]);

        let n = IdentifyNamespace::new_checked(&b[..]).unwrap();
        assert_eq!(n.nsze(), 0x0102_0304_0506_0708);
        assert_eq!(n.lba_format_index(), 1);
        assert_eq!(
            n.current_lbaf(),
            LbaFormat {
                ms: 8,
                lbads: 12,
                rp: 2
            }
        );
        assert_eq!(n.lbaf(63), Some(LbaFormat::default()));
        assert_eq!(n.lbaf(64), None);
        assert_eq!(n.nguid(), [0xab; 16]);
        assert_eq!(n.eui64(), [0xcd; 8]);
    }

    #[test]
    fn flbas_high_bits() {
        let mut b = [0u8; 4096];
        let mut n = IdentifyNamespace::new_unchecked(&mut b[..]);
        n.set_flbas(0x10);
        n.set_lba_format_index(0x2f).unwrap();
        assert_eq!(n.flbas(), 0x10 | 0x0f | 0x40);
        assert_eq!(n.lba_format_index(), 0x2f);
        assert_eq!(n.set_lba_format_index(64), Err(Error::Malformed));
        assert_eq!(u32::from(LbaFormat::from(0xfd09_0010)), 0x0109_0010);
    }

    #[test]
    fn active_ns_list() {
        let mut b = [0u8; 4096];
        let mut l = NsIdList::new_checked(&mut b[..]).unwrap();
        assert_eq!(l.fill_active(2, [1, 2, 3, 7, 0x1_0000]), Ok(3));
        assert_eq!(&b[..16], &[3, 0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        let l = NsIdList::new_checked(&b[..]).unwrap();
        assert!(l.iter().eq([3, 7, 0x1_0000]));
        assert_eq!(l.get(0), Some(3));
        assert_eq!(l.get(1024), None);

        let mut b = [0u8; 4096];
        let mut l = NsIdList::new_checked(&mut b[..]).unwrap();
        assert_eq!(l.fill_active(0, [2, 1]), Err(Error::Malformed));
        assert_eq!(l.fill_active(0, 1..=2000), Ok(1024));
        assert_eq!(l.set(1024, 1), Err(Error::Malformed));
        let l = NsIdList::new_checked(&b[..]).unwrap();
        assert_eq!(l.get(1023), Some(1024));
        assert_eq!(l.iter().count(), 1024);
    }

    #[test]
    fn ns_descriptors() {
        let mut b = [0u8; 4096];
        let descs = [
            NsIdDescriptor::Eui64([1; 8]),
            NsIdDescriptor::Nguid([2; 16]),
            NsIdDescriptor::Uuid([3; 16]),
            NsIdDescriptor::Csi(0),
        ];
        let n = emit_ns_descriptors(&mut b, &descs).unwrap();
        assert_eq!(n, 12 + 20 + 20 + 5);
        assert_eq!(&b[..4], &[1, 8, 0, 0]);
        assert_eq!(&b[12..16], &[2, 16, 0, 0]);
        assert_eq!(&b[32..36], &[3, 16, 0, 0]);
        assert_eq!(&b[52..57], &[4, 1, 0, 0, 0]);
        assert!(NsDescriptors::new(&b).map(Result::unwrap).eq(descs));

        // Unknown type: kept with its bytes.
        let raw = [9u8, 2, 0, 0, 0xaa, 0xbb, 0, 0];
        let mut it = NsDescriptors::new(&raw);
        assert_eq!(
            it.next(),
            Some(Ok(NsIdDescriptor::Other {
                nidt: 9,
                nid: &[0xaa, 0xbb]
            }))
        );
        assert_eq!(it.next(), None);
        // A known type with the wrong length; a descriptor past the end.
        assert_eq!(
            NsDescriptors::new(&[1, 4, 0, 0, 1, 2, 3, 4]).next(),
            Some(Err(Error::Malformed))
        );
        let mut it = NsDescriptors::new(&[3, 16, 0, 0, 1, 2]);
        assert_eq!(it.next(), Some(Err(Error::Truncated)));
        assert_eq!(it.next(), None);
        // Not enough room to emit.
        let mut small = [0u8; 10];
        assert_eq!(
            emit_ns_descriptors(&mut small, &descs),
            Err(Error::Truncated)
        );
        assert_eq!(
            NsIdDescriptor::Other { nidt: 0, nid: &[] }.emit(&mut small),
            Err(Error::Malformed)
        );
        assert_eq!(NidType::from(5), NidType::Unknown(5));
        assert_eq!(u8::from(NidType::Unknown(5)), 5);
    }
}
