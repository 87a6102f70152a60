//! Log pages a controller returns: NVMe Base Specification 2.0, section 5.16.1 ("Log Page
//! Identifiers"): Error Information (5.16.1.2, Figure 205, 64-byte entries), SMART / Health
//! Information (5.16.1.3, Figure 207, 512 bytes), Firmware Slot Information (5.16.1.4,
//! Figure 209, 512 bytes), Changed Namespace List (5.16.1.5, 4096 bytes, see
//! [`NsIdList`](super::identify::NsIdList)), Commands Supported and Effects (5.16.1.6,
//! Figures 210-211, 4096 bytes), and the Discovery Log Page (5.16.1.23, Figures 262-264;
//! NVMe over Fabrics 1.1 section 5.3). Layouts as Linux `struct nvme_error_slot`,
//! `nvme_smart_log`, `nvme_fw_slot_info_log`, `nvme_effects_log`,
//! `nvmf_disc_rsp_page_hdr` and `nvmf_disc_rsp_page_entry`.

use super::{NQN_FIELD_LEN, nul_terminated, put_nul_terminated, put_space_padded, space_padded};
use crate::{Error, Result};

/// Length of an Error Information log entry.
pub const ERROR_LOG_ENTRY_LEN: usize = 64;
const _: () = assert!(ErrorLogEntry::<&[u8]>::LEN == ERROR_LOG_ENTRY_LEN);

wire_view! {
    /// One Error Information log entry.
    pub struct ErrorLogEntry, len = ERROR_LOG_ENTRY_LEN;
    /// Error count: unique, incrementing from 1; 0 marks an invalid entry.
    error_count, set_error_count: u64 = 0;
    /// Submission Queue ID of the failed command.
    sqid, set_sqid: u16 = 8;
    /// Command ID of the failed command.
    cid, set_cid: u16 = 10;
    /// Status field as in the CQE (phase tag in bit 0, see [`Status::to_field`](super::status::Status::to_field)).
    status_field, set_status_field: u16 = 12;
    /// Parameter error location: byte (bits 7:0) and bit (bits 10:8) in the command.
    parameter_error_location, set_parameter_error_location: u16 = 14;
    /// First LBA that hit the error.
    lba, set_lba: u64 = 16;
    /// Namespace of the error.
    nsid, set_nsid: u32 = 24;
    /// Vendor specific information available (log page ID).
    vendor_info, set_vendor_info: u8 = 28;
    /// Transport type (for transport-related errors).
    trtype, set_trtype: u8 = 29;
    /// Command specific information.
    command_specific, set_command_specific: u64 = 32;
    /// Transport type specific information.
    trtype_specific, set_trtype_specific: u16 = 40;
    /// Log page version.
    version, set_version: u8 = 63;
}

/// The parameter error location value for byte `byte` (0-63) and bit `bit` (0-7) of the
/// command; FFFFh means "not specific to a parameter".
pub fn parameter_error_location(byte: u8, bit: u8) -> u16 {
    u16::from(byte) | u16::from(bit & 0b111) << 8
}

/// Length of the SMART / Health Information log page.
pub const SMART_LOG_LEN: usize = 512;
const _: () = assert!(SmartLog::<&[u8]>::LEN == SMART_LOG_LEN);

wire_view! {
    /// SMART / Health Information log page (LID 02h).
    pub struct SmartLog, len = SMART_LOG_LEN;
    /// Critical warning bits, see [`critical_warning`].
    critical_warning, set_critical_warning: u8 = 0;
    /// Composite temperature in Kelvin.
    composite_temperature, set_composite_temperature: u16 = 1;
    /// Available spare, percent.
    available_spare, set_available_spare: u8 = 3;
    /// Available spare threshold, percent.
    available_spare_threshold, set_available_spare_threshold: u8 = 4;
    /// Percentage used (may exceed 100).
    percentage_used, set_percentage_used: u8 = 5;
    /// Endurance group critical warning summary.
    endurance_group_warning, set_endurance_group_warning: u8 = 6;
    /// Data units read, in thousands of 512-byte units, rounded up (see [`data_units`]).
    data_units_read, set_data_units_read: u128 = 32;
    /// Data units written, as `data_units_read`.
    data_units_written, set_data_units_written: u128 = 48;
    /// Host read commands completed.
    host_read_commands, set_host_read_commands: u128 = 64;
    /// Host write commands completed.
    host_write_commands, set_host_write_commands: u128 = 80;
    /// Controller busy time, minutes.
    controller_busy_time, set_controller_busy_time: u128 = 96;
    /// Power cycles.
    power_cycles, set_power_cycles: u128 = 112;
    /// Power on hours.
    power_on_hours, set_power_on_hours: u128 = 128;
    /// Unsafe shutdowns.
    unsafe_shutdowns, set_unsafe_shutdowns: u128 = 144;
    /// Media and data integrity errors.
    media_errors, set_media_errors: u128 = 160;
    /// Number of error information log entries over the controller's life.
    error_log_entries, set_error_log_entries: u128 = 176;
    /// Warning composite temperature time, minutes.
    warning_temperature_time, set_warning_temperature_time: u32 = 192;
    /// Critical composite temperature time, minutes.
    critical_temperature_time, set_critical_temperature_time: u32 = 196;
}

/// SMART critical warning bits.
pub mod critical_warning {
    pub const SPARE_BELOW_THRESHOLD: u8 = 1 << 0;
    pub const TEMPERATURE: u8 = 1 << 1;
    pub const RELIABILITY_DEGRADED: u8 = 1 << 2;
    pub const READ_ONLY: u8 = 1 << 3;
    pub const VOLATILE_BACKUP_FAILED: u8 = 1 << 4;
    pub const PMR_READ_ONLY: u8 = 1 << 5;
}

/// Bytes transferred as SMART data units: thousands of 512-byte units, rounded up.
pub fn data_units(bytes: u128) -> u128 {
    bytes.div_ceil(512 * 1000)
}

/// Degrees Celsius to the Kelvin the temperature fields use (saturating at 0 K).
pub fn celsius_to_kelvin(c: i16) -> u16 {
    u16::try_from(i32::from(c) + 273).unwrap_or(0)
}

impl<T: AsRef<[u8]>> SmartLog<T> {
    /// Temperature sensor `n` (1-8) in Kelvin, 0 if not implemented; `None` for another n.
    pub fn temperature_sensor(&self, n: usize) -> Option<u16> {
        (1..=8)
            .contains(&n)
            .then(|| <u16 as super::Field>::read(self.buffer.as_ref(), 200 + 2 * (n - 1)))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SmartLog<T> {
    /// Sets temperature sensor `n` (1-8); `Malformed` for another n.
    pub fn set_temperature_sensor(&mut self, n: usize, kelvin: u16) -> Result<()> {
        if !(1..=8).contains(&n) {
            return Err(Error::Malformed);
        }
        <u16 as super::Field>::write(self.buffer.as_mut(), 200 + 2 * (n - 1), kelvin);
        Ok(())
    }
}

/// Length of the Firmware Slot Information log page.
pub const FIRMWARE_SLOT_LOG_LEN: usize = 512;
const _: () = assert!(FirmwareSlotLog::<&[u8]>::LEN == FIRMWARE_SLOT_LOG_LEN);
/// Number of firmware slots the page describes.
pub const FIRMWARE_SLOTS: usize = 7;
const FRS: usize = 8;
const _: () = assert!(FRS + 8 * FIRMWARE_SLOTS == 64);

wire_view! {
    /// Firmware Slot Information log page (LID 03h).
    pub struct FirmwareSlotLog, len = FIRMWARE_SLOT_LOG_LEN;
    /// Active Firmware Info: bits 2:0 active slot, bits 6:4 slot activated at next reset.
    afi, set_afi: u8 = 0;
}

impl<T: AsRef<[u8]>> FirmwareSlotLog<T> {
    /// Firmware revision in slot `slot` (1-7), space padding removed. `Malformed` for
    /// another slot or non-ASCII bytes.
    pub fn frs(&self, slot: usize) -> Result<&str> {
        if !(1..=FIRMWARE_SLOTS).contains(&slot) {
            return Err(Error::Malformed);
        }
        let at = FRS + 8 * (slot - 1);
        space_padded(&self.buffer.as_ref()[at..at + 8])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FirmwareSlotLog<T> {
    /// Sets slot `slot`'s (1-7) firmware revision, space padded to 8 bytes.
    pub fn set_frs(&mut self, slot: usize, rev: &str) -> Result<()> {
        if !(1..=FIRMWARE_SLOTS).contains(&slot) {
            return Err(Error::Malformed);
        }
        let at = FRS + 8 * (slot - 1);
        put_space_padded(&mut self.buffer.as_mut()[at..at + 8], rev)
    }
}

/// The Changed Namespace List's first entry when more than 1024 namespaces changed.
pub const CHANGED_NS_LIST_OVERFLOW: u32 = 0xffff_ffff;

/// Length of the Commands Supported and Effects log page.
pub const COMMANDS_EFFECTS_LOG_LEN: usize = 4096;
const _: () = assert!(CommandsEffectsLog::<&[u8]>::LEN == COMMANDS_EFFECTS_LOG_LEN);
const IOCS: usize = 1024;

wire_view! {
    /// Commands Supported and Effects log page (LID 05h): 256 admin entries, then 256 I/O
    /// entries, one little-endian u32 per opcode.
    pub struct CommandsEffectsLog, len = COMMANDS_EFFECTS_LOG_LEN;
}

impl<T: AsRef<[u8]>> CommandsEffectsLog<T> {
    /// The effects of admin opcode `op`.
    pub fn admin(&self, op: u8) -> u32 {
        <u32 as super::Field>::read(self.buffer.as_ref(), 4 * usize::from(op))
    }
    /// The effects of I/O opcode `op`.
    pub fn io(&self, op: u8) -> u32 {
        <u32 as super::Field>::read(self.buffer.as_ref(), IOCS + 4 * usize::from(op))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CommandsEffectsLog<T> {
    pub fn set_admin(&mut self, op: u8, effects: u32) {
        <u32 as super::Field>::write(self.buffer.as_mut(), 4 * usize::from(op), effects);
    }
    pub fn set_io(&mut self, op: u8, effects: u32) {
        <u32 as super::Field>::write(self.buffer.as_mut(), IOCS + 4 * usize::from(op), effects);
    }
}

/// Commands Supported and Effects entry bits.
pub mod effects {
    /// Command Supported.
    pub const CSUPP: u32 = 1 << 0;
    /// Logical Block Content Change.
    pub const LBCC: u32 = 1 << 1;
    /// Namespace Capability Change.
    pub const NCC: u32 = 1 << 2;
    /// Namespace Inventory Change.
    pub const NIC: u32 = 1 << 3;
    /// Controller Capability Change.
    pub const CCC: u32 = 1 << 4;
    /// Command Submission and Execution (bits 18:16): 001b no other command to the same
    /// namespace at the same time.
    pub const CSE_SINGLE_NAMESPACE: u32 = 1 << 16;
    /// CSE 010b: no other command to any namespace at the same time.
    pub const CSE_SINGLE: u32 = 2 << 16;
    /// UUID Selection Supported.
    pub const UUID_SELECTION: u32 = 1 << 19;
}

/// Length of the Discovery Log Page header.
pub const DISCOVERY_LOG_HEADER_LEN: usize = 1024;
/// Length of one Discovery Log Page entry.
pub const DISCOVERY_LOG_ENTRY_LEN: usize = 1024;
const _: () = assert!(DiscoveryLogHeader::<&[u8]>::LEN == DISCOVERY_LOG_HEADER_LEN);
const _: () = assert!(DiscoveryLogEntry::<&[u8]>::LEN == DISCOVERY_LOG_ENTRY_LEN);

wire_view! {
    /// Discovery Log Page header (LID 70h).
    pub struct DiscoveryLogHeader, len = DISCOVERY_LOG_HEADER_LEN;
    /// Generation counter: changes whenever the log's content changes.
    genctr, set_genctr: u64 = 0;
    /// Number of records.
    numrec, set_numrec: u64 = 8;
    /// Record format, 0.
    recfmt, set_recfmt: u16 = 16;
}

/// The length of a Discovery Log Page with `numrec` entries.
pub fn discovery_log_len(numrec: usize) -> usize {
    DISCOVERY_LOG_HEADER_LEN.saturating_add(numrec.saturating_mul(DISCOVERY_LOG_ENTRY_LEN))
}

/// Entry `i` of a Discovery Log Page held in `page` (header first).
pub fn discovery_entry(page: &[u8], i: usize) -> Result<DiscoveryLogEntry<&[u8]>> {
    let at = discovery_log_len(i);
    DiscoveryLogEntry::new_checked(page.get(at..).ok_or(Error::Truncated)?)
}

/// Entry `i` of a Discovery Log Page being written into `page`.
pub fn discovery_entry_mut(page: &mut [u8], i: usize) -> Result<DiscoveryLogEntry<&mut [u8]>> {
    let at = discovery_log_len(i);
    DiscoveryLogEntry::new_checked(page.get_mut(at..).ok_or(Error::Truncated)?)
}

const TRSVCID: core::ops::Range<usize> = 32..64;
const SUBNQN: core::ops::Range<usize> = 256..512;
const TRADDR: core::ops::Range<usize> = 512..768;
const TSAS: usize = 768;
const _: () = assert!(SUBNQN.end - SUBNQN.start == NQN_FIELD_LEN && TSAS + 256 == 1024);

wire_view! {
    /// One Discovery Log Page entry.
    pub struct DiscoveryLogEntry, len = DISCOVERY_LOG_ENTRY_LEN;
    /// Transport type, see [`TrType`].
    trtype_raw, set_trtype_raw: u8 = 0;
    /// Address family, see [`AdrFam`].
    adrfam_raw, set_adrfam_raw: u8 = 1;
    /// Subsystem type, see [`SubType`].
    subtype_raw, set_subtype_raw: u8 = 2;
    /// Transport requirements, see [`treq`].
    treq, set_treq: u8 = 3;
    /// Port ID.
    portid, set_portid: u16 = 4;
    /// Controller ID: FFFFh dynamic model, FFFEh static model any controller.
    cntlid, set_cntlid: u16 = 6;
    /// Admin max SQ size (Connect's SQSIZE for the admin queue must not exceed it).
    asqsz, set_asqsz: u16 = 8;
    /// Entry flags, see [`eflags`].
    eflags, set_eflags: u16 = 10;
    /// TCP transport specific address subtype: security type, see [`SecType`].
    tcp_sectype_raw, set_tcp_sectype_raw: u8 = TSAS;
}

code_enum! {
    /// Transport type (TRTYPE).
    pub enum TrType: u8 {
        Rdma = 1,
        FibreChannel = 2,
        Tcp = 3,
        IntraHost = 254,
    }
}

code_enum! {
    /// Address family (ADRFAM).
    pub enum AdrFam: u8 {
        Ipv4 = 1,
        Ipv6 = 2,
        InfiniBand = 3,
        FibreChannel = 4,
        IntraHost = 254,
    }
}

code_enum! {
    /// Subsystem type (SUBTYPE).
    pub enum SubType: u8 {
        /// A referral to another discovery subsystem.
        Referral = 1,
        /// An NVM subsystem.
        Nvm = 2,
        /// The discovery subsystem answering (current discovery subsystem).
        CurrentDiscovery = 3,
    }
}

code_enum! {
    /// TCP security type (TSAS byte 0 for TRTYPE TCP).
    pub enum SecType: u8 {
        None = 0,
        Tls12 = 1,
        Tls13 = 2,
    }
}

/// TREQ bits.
pub mod treq {
    /// Bits 1:0: secure channel requirement not specified.
    pub const SECURE_CHANNEL_NOT_SPECIFIED: u8 = 0b00;
    /// Bits 1:0: secure channel required.
    pub const SECURE_CHANNEL_REQUIRED: u8 = 0b01;
    /// Bits 1:0: secure channel not required.
    pub const SECURE_CHANNEL_NOT_REQUIRED: u8 = 0b10;
    /// SQ flow control may be disabled (Connect CATTR bit 2).
    pub const SQ_FLOW_CONTROL_DISABLE: u8 = 1 << 2;
}

/// TSAS bytes 0, 1 and 2 of an RDMA entry: RDMA QP service type, provider type, connection
/// management service.
pub mod rdma_tsas {
    pub const QPTYPE_CONNECTED: u8 = 1;
    pub const PRTYPE_NOT_SPECIFIED: u8 = 1;
    pub const CMS_RDMA_CM: u8 = 1;
}

/// EFLAGS bits.
pub mod eflags {
    /// Duplicate Returned Information.
    pub const DUPRETINFO: u16 = 1 << 0;
    /// Explicit Persistent Connection Support for Discovery.
    pub const EPCSD: u16 = 1 << 1;
    /// NVMe/TCP Security handshake not supported (NCC).
    pub const NCC: u16 = 1 << 2;
}

impl<T: AsRef<[u8]>> DiscoveryLogEntry<T> {
    pub fn trtype(&self) -> TrType {
        self.trtype_raw().into()
    }
    pub fn adrfam(&self) -> AdrFam {
        self.adrfam_raw().into()
    }
    pub fn subtype(&self) -> SubType {
        self.subtype_raw().into()
    }
    pub fn tcp_sectype(&self) -> SecType {
        self.tcp_sectype_raw().into()
    }
    /// Transport service ID (the TCP port, as ASCII), padding removed.
    pub fn trsvcid(&self) -> Result<&str> {
        space_padded(&self.buffer.as_ref()[TRSVCID])
    }
    /// Subsystem NQN (NUL terminated).
    pub fn subnqn(&self) -> Result<&str> {
        nul_terminated(&self.buffer.as_ref()[SUBNQN])
    }
    /// Transport address (the IP address, as ASCII), padding removed.
    pub fn traddr(&self) -> Result<&str> {
        space_padded(&self.buffer.as_ref()[TRADDR])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DiscoveryLogEntry<T> {
    pub fn set_trtype(&mut self, t: TrType) {
        self.set_trtype_raw(t.into());
    }
    pub fn set_adrfam(&mut self, a: AdrFam) {
        self.set_adrfam_raw(a.into());
    }
    pub fn set_subtype(&mut self, s: SubType) {
        self.set_subtype_raw(s.into());
    }
    pub fn set_tcp_sectype(&mut self, s: SecType) {
        self.set_tcp_sectype_raw(s.into());
    }
    /// The RDMA transport specific address subtype (TSAS for TRTYPE RDMA, NVMe over
    /// Fabrics 1.1, Figure 38): a reliable connected queue pair, no particular RDMA
    /// provider, connections managed by the RDMA CM, the values Linux's nvmet reports.
    pub fn set_rdma_tsas(&mut self) {
        let t = &mut self.buffer.as_mut()[TSAS..TSAS + 3];
        t.copy_from_slice(&[
            rdma_tsas::QPTYPE_CONNECTED,
            rdma_tsas::PRTYPE_NOT_SPECIFIED,
            rdma_tsas::CMS_RDMA_CM,
        ]);
    }
    /// Space padded to 32 bytes; `Malformed` if longer or not printable ASCII.
    pub fn set_trsvcid(&mut self, s: &str) -> Result<()> {
        put_space_padded(&mut self.buffer.as_mut()[TRSVCID], s)
    }
    /// NUL terminated in 256 bytes.
    pub fn set_subnqn(&mut self, nqn: &str) -> Result<()> {
        put_nul_terminated(&mut self.buffer.as_mut()[SUBNQN], nqn)
    }
    /// Space padded to 256 bytes.
    pub fn set_traddr(&mut self, s: &str) -> Result<()> {
        put_space_padded(&mut self.buffer.as_mut()[TRADDR], s)
    }
}

/// A parsed Discovery Log Page entry, borrowing its strings from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiscoveryEntryRepr<'a> {
    pub trtype: TrType,
    pub adrfam: AdrFam,
    pub subtype: SubType,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub eflags: u16,
    pub trsvcid: &'a str,
    pub subnqn: &'a str,
    pub traddr: &'a str,
    /// TSAS byte 0: the security type when `trtype` is TCP (other transports' TSAS is
    /// not represented).
    pub tcp_sectype: SecType,
}

impl<'a> DiscoveryEntryRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(e: &DiscoveryLogEntry<&'a T>) -> Result<Self> {
        let b: &'a [u8] = e.buffer.as_ref();
        Ok(Self {
            trtype: e.trtype(),
            adrfam: e.adrfam(),
            subtype: e.subtype(),
            treq: e.treq(),
            portid: e.portid(),
            cntlid: e.cntlid(),
            asqsz: e.asqsz(),
            eflags: e.eflags(),
            trsvcid: space_padded(&b[TRSVCID])?,
            subnqn: nul_terminated(&b[SUBNQN])?,
            traddr: space_padded(&b[TRADDR])?,
            tcp_sectype: e.tcp_sectype(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        DISCOVERY_LOG_ENTRY_LEN
    }

    /// Writes all 1024 bytes (reserved ones zero).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(
        &self,
        e: &mut DiscoveryLogEntry<&mut T>,
    ) -> Result<()> {
        e.as_bytes_mut().fill(0);
        e.set_trtype(self.trtype);
        e.set_adrfam(self.adrfam);
        e.set_subtype(self.subtype);
        e.set_treq(self.treq);
        e.set_portid(self.portid);
        e.set_cntlid(self.cntlid);
        e.set_asqsz(self.asqsz);
        e.set_eflags(self.eflags);
        e.set_trsvcid(self.trsvcid)?;
        e.set_subnqn(self.subnqn)?;
        e.set_traddr(self.traddr)?;
        e.set_tcp_sectype(self.tcp_sectype);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::status::Status;

    #[test]
    fn error_entry() {
        let mut b = [0u8; 64];
        let mut e = ErrorLogEntry::new_checked(&mut b[..]).unwrap();
        e.set_error_count(1);
        e.set_sqid(2);
        e.set_cid(0x1234);
        e.set_status_field(Status::invalid_field().to_field(false));
        e.set_parameter_error_location(parameter_error_location(44, 0));
        e.set_lba(0x10);
        e.set_nsid(1);
        e.set_trtype(TrType::Tcp.into());
        assert_eq!(&b[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[8..16], &[2, 0, 0x34, 0x12, 0x04, 0x80, 44, 0]);
        assert_eq!(b[16], 0x10);
        assert_eq!(b[24], 1);
        assert_eq!(b[29], 3);
        let e = ErrorLogEntry::new_checked(&b[..]).unwrap();
        assert_eq!(e.cid(), 0x1234);
        assert_eq!(
            Status::from_field(e.status_field()).0,
            Status::invalid_field()
        );
        assert_eq!(parameter_error_location(1, 9), 0x0101);
        assert_eq!(
            ErrorLogEntry::new_checked(&b[..63]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn smart() {
        let mut b = [0u8; 512];
        let mut s = SmartLog::new_checked(&mut b[..]).unwrap();
        s.set_critical_warning(critical_warning::READ_ONLY);
        s.set_composite_temperature(celsius_to_kelvin(40));
        s.set_available_spare(100);
        s.set_available_spare_threshold(10);
        s.set_percentage_used(3);
        s.set_data_units_read(data_units(512 * 1000 + 1));
        s.set_data_units_written(u128::MAX);
        s.set_host_read_commands(7);
        s.set_host_write_commands(8);
        s.set_controller_busy_time(9);
        s.set_power_cycles(10);
        s.set_power_on_hours(11);
        s.set_unsafe_shutdowns(12);
        s.set_media_errors(13);
        s.set_error_log_entries(14);
        s.set_temperature_sensor(1, 300).unwrap();
        assert_eq!(s.set_temperature_sensor(9, 300), Err(Error::Malformed));
        assert_eq!(&b[..6], &[0x08, 0x39, 0x01, 100, 10, 3]);
        assert_eq!(&b[32..48], &{
            let mut x = [0u8; 16];
            x[0] = 2;
            x
        });
        assert_eq!(&b[48..64], &[0xff; 16]);
        for (i, v) in (64..=176).step_by(16).zip(7u8..) {
            assert_eq!(b[i], v, "offset {i}");
        }
        assert_eq!(&b[200..202], &[0x2c, 0x01]);
        let s = SmartLog::new_checked(&b[..]).unwrap();
        assert_eq!(s.composite_temperature(), 313);
        assert_eq!(s.data_units_read(), 2);
        assert_eq!(s.error_log_entries(), 14);
        assert_eq!(s.temperature_sensor(1), Some(300));
        assert_eq!(s.temperature_sensor(0), None);
        assert_eq!(data_units(0), 0);
        assert_eq!(data_units(1), 1);
        assert_eq!(data_units(512_000), 1);
        assert_eq!(celsius_to_kelvin(-300), 0);
        assert_eq!(
            SmartLog::new_checked(&b[..511]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn firmware_slots() {
        let mut b = [0u8; 512];
        let mut f = FirmwareSlotLog::new_checked(&mut b[..]).unwrap();
        f.set_afi(1);
        f.set_frs(1, "0.1.0").unwrap();
        f.set_frs(7, "abcdefgh").unwrap();
        assert_eq!(f.set_frs(0, "x"), Err(Error::Malformed));
        assert_eq!(f.set_frs(8, "x"), Err(Error::Malformed));
        assert_eq!(f.set_frs(2, "123456789"), Err(Error::Malformed));
        assert_eq!(b[0], 1);
        assert_eq!(&b[8..16], b"0.1.0   ");
        assert_eq!(&b[56..64], b"abcdefgh");
        let f = FirmwareSlotLog::new_checked(&b[..]).unwrap();
        assert_eq!(f.frs(1), Ok("0.1.0"));
        assert_eq!(f.frs(2), Ok(""));
        assert_eq!(f.frs(8), Err(Error::Malformed));
        assert_eq!(
            FirmwareSlotLog::new_checked(&b[..100]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn commands_effects() {
        let mut b = [0u8; 4096];
        let mut c = CommandsEffectsLog::new_checked(&mut b[..]).unwrap();
        c.set_admin(0x06, effects::CSUPP);
        c.set_io(0x01, effects::CSUPP | effects::LBCC);
        c.set_io(0xff, effects::CSE_SINGLE);
        assert_eq!(&b[24..28], &[1, 0, 0, 0]);
        assert_eq!(&b[1028..1032], &[3, 0, 0, 0]);
        assert_eq!(&b[2044..2048], &[0, 0, 2, 0]);
        let c = CommandsEffectsLog::new_checked(&b[..]).unwrap();
        assert_eq!(c.admin(6), 1);
        assert_eq!(c.io(1), 3);
        assert_eq!(c.admin(1), 0);
        assert_eq!(
            CommandsEffectsLog::new_checked(&b[..2048]).err(),
            Some(Error::Truncated)
        );
    }

    fn entry() -> DiscoveryEntryRepr<'static> {
        DiscoveryEntryRepr {
            trtype: TrType::Tcp,
            adrfam: AdrFam::Ipv4,
            subtype: SubType::Nvm,
            treq: treq::SECURE_CHANNEL_NOT_REQUIRED,
            portid: 1,
            cntlid: 0xffff,
            asqsz: 32,
            eflags: 0,
            trsvcid: "4420",
            subnqn: "nqn.2014-08.org.example:disk",
            traddr: "192.168.1.10",
            tcp_sectype: SecType::None,
        }
    }

    #[test]
    fn discovery_page() {
        let mut page = [0u8; 3 * 1024];
        let mut h = DiscoveryLogHeader::new_checked(&mut page[..]).unwrap();
        h.set_genctr(5);
        h.set_numrec(2);
        h.set_recfmt(0);
        entry()
            .emit(&mut discovery_entry_mut(&mut page, 0).unwrap())
            .unwrap();
        let second = DiscoveryEntryRepr {
            adrfam: AdrFam::Ipv6,
            subtype: SubType::CurrentDiscovery,
            traddr: "fe80::1",
            trsvcid: "8009",
            subnqn: crate::nvme::DISCOVERY_NQN,
            tcp_sectype: SecType::Tls13,
            ..entry()
        };
        second
            .emit(&mut discovery_entry_mut(&mut page, 1).unwrap())
            .unwrap();
        assert!(discovery_entry_mut(&mut page, 2).is_err());

        assert_eq!(
            &page[..18],
            &[5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let e = &page[1024..2048];
        assert_eq!(&e[..12], &[3, 1, 2, 2, 1, 0, 0xff, 0xff, 32, 0, 0, 0]);
        assert_eq!(&e[32..36], b"4420");
        assert!(e[36..64].iter().all(|&c| c == b' '));
        assert_eq!(&e[256..284], b"nqn.2014-08.org.example:disk");
        assert_eq!(e[284], 0);
        assert_eq!(&e[512..524], b"192.168.1.10");
        assert!(e[524..768].iter().all(|&c| c == b' '));
        assert_eq!(e[768], 0);
        assert_eq!(page[2048 + 768], 2);

        let h = DiscoveryLogHeader::new_checked(&page[..]).unwrap();
        assert_eq!((h.genctr(), h.numrec(), h.recfmt()), (5, 2, 0));
        let e0 = discovery_entry(&page, 0).unwrap();
        assert_eq!(DiscoveryEntryRepr::parse(&e0), Ok(entry()));
        let e1 = discovery_entry(&page, 1).unwrap();
        assert_eq!(DiscoveryEntryRepr::parse(&e1), Ok(second));
        assert_eq!(e1.trtype(), TrType::Tcp);
        assert_eq!(e1.traddr(), Ok("fe80::1"));
        assert_eq!(discovery_entry(&page, 2).err(), Some(Error::Truncated));
        assert_eq!(
            discovery_entry(&page[..2047], 0).err(),
            Some(Error::Truncated)
        );
        assert_eq!(discovery_log_len(2), 3072);
        assert_eq!(
            discovery_entry(&page, usize::MAX).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn discovery_codes() {
        assert_eq!(TrType::from(3), TrType::Tcp);
        assert_eq!(TrType::from(9), TrType::Unknown(9));
        assert_eq!(u8::from(TrType::Unknown(9)), 9);
        assert_eq!(AdrFam::from(2), AdrFam::Ipv6);
        assert_eq!(SubType::from(1), SubType::Referral);
        assert_eq!(SubType::from(0), SubType::Unknown(0));
        assert_eq!(SecType::from(7), SecType::Unknown(7));
        let mut b = [0u8; 1024];
        b[512..515].copy_from_slice(b"\xff  ");
        b[256] = 0;
        let e = DiscoveryLogEntry::new_checked(&b[..]).unwrap();
        assert_eq!(DiscoveryEntryRepr::parse(&e), Err(Error::Malformed));
    }
}
