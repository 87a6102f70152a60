//! Completion status: NVMe Base Specification 2.0, section 4.6.1 ("Status Field
//! Definition"), Figures 92-101, and the Fabrics command status values of section 6
//! (Figure 548 "Connect ... Status Values" in Base 2.0; NVMe-oF 1.1 Figure 22).
//!
//! The CQE's last 16 bits (bytes 14-15) hold the phase tag in bit 0 and the status in bits
//! 15:1: SC bits 8:1, SCT bits 11:9, CRD bits 13:12, More bit 14, DNR bit 15. (Linux reads
//! `le16_to_cpu(cqe->status) >> 1`, so its `NVME_SC_*` constants are `SCT << 8 | SC`, with
//! More at 0x2000 and DNR at 0x4000.)
//!
//! Command specific codes (SCT 1) mean different things for different commands; the
//! [`CommandSpecificStatus`] names are those of the admin and Fabrics Connect commands a
//! target returns. 80h-84h are the Connect codes; NVM I/O commands reuse 80h-82h for
//! Conflicting Attributes, Invalid Protection Information and Write to Read Only Range.

code_enum! {
    /// Status Code Type (SCT).
    pub enum Sct: u8 {
        Generic = 0x0,
        CommandSpecific = 0x1,
        MediaError = 0x2,
        Path = 0x3,
        VendorSpecific = 0x7,
    }
}

code_enum! {
    /// Generic command status (SCT 0), Figure 94/95.
    pub enum GenericStatus: u8 {
        Success = 0x00,
        InvalidOpcode = 0x01,
        InvalidField = 0x02,
        CommandIdConflict = 0x03,
        DataTransferError = 0x04,
        AbortedPowerLoss = 0x05,
        InternalError = 0x06,
        AbortRequested = 0x07,
        AbortedSqDeletion = 0x08,
        AbortedFailedFused = 0x09,
        AbortedMissingFused = 0x0a,
        InvalidNamespaceOrFormat = 0x0b,
        CommandSequenceError = 0x0c,
        InvalidSglSegmentDescriptor = 0x0d,
        InvalidNumberOfSglDescriptors = 0x0e,
        DataSglLengthInvalid = 0x0f,
        MetadataSglLengthInvalid = 0x10,
        SglDescriptorTypeInvalid = 0x11,
        InvalidUseOfCmb = 0x12,
        PrpOffsetInvalid = 0x13,
        AtomicWriteUnitExceeded = 0x14,
        OperationDenied = 0x15,
        SglOffsetInvalid = 0x16,
        HostIdentifierInconsistentFormat = 0x18,
        KeepAliveTimerExpired = 0x19,
        KeepAliveTimeoutInvalid = 0x1a,
        AbortedPreemptAbort = 0x1b,
        SanitizeFailed = 0x1c,
        SanitizeInProgress = 0x1d,
        SglDataBlockGranularityInvalid = 0x1e,
        CommandNotSupportedForCmbQueue = 0x1f,
        NamespaceWriteProtected = 0x20,
        CommandInterrupted = 0x21,
        TransientTransportError = 0x22,
        CommandProhibitedByLockdown = 0x23,
        AdminCommandMediaNotReady = 0x24,
        InvalidIoCommandSet = 0x2c,
        LbaOutOfRange = 0x80,
        CapacityExceeded = 0x81,
        NamespaceNotReady = 0x82,
        ReservationConflict = 0x83,
        FormatInProgress = 0x84,
    }
}

code_enum! {
    /// Command specific status (SCT 1) of admin and Fabrics commands, Figure 96/97 and
    /// the Connect values (80h-84h). See the module doc for the I/O meanings of 80h-82h.
    pub enum CommandSpecificStatus: u8 {
        CompletionQueueInvalid = 0x00,
        InvalidQueueIdentifier = 0x01,
        InvalidQueueSize = 0x02,
        AbortCommandLimitExceeded = 0x03,
        AsyncEventRequestLimitExceeded = 0x05,
        InvalidFirmwareSlot = 0x06,
        InvalidFirmwareImage = 0x07,
        InvalidInterruptVector = 0x08,
        InvalidLogPage = 0x09,
        InvalidFormat = 0x0a,
        FirmwareActivationRequiresConventionalReset = 0x0b,
        InvalidQueueDeletion = 0x0c,
        FeatureIdentifierNotSaveable = 0x0d,
        FeatureNotChangeable = 0x0e,
        FeatureNotNamespaceSpecific = 0x0f,
        NamespaceInsufficientCapacity = 0x15,
        NamespaceIdentifierUnavailable = 0x16,
        NamespaceAlreadyAttached = 0x18,
        NamespaceIsPrivate = 0x19,
        NamespaceNotAttached = 0x1a,
        ControllerListInvalid = 0x1c,
        AnaGroupIdentifierInvalid = 0x24,
        /// Connect: Incompatible Format (RECFMT not supported).
        ConnectIncompatibleFormat = 0x80,
        /// Connect: Controller Busy (the controller cannot accept the queue now).
        ConnectControllerBusy = 0x81,
        /// Connect: Invalid Parameters (IATTR/IPO in DW0 point at the field).
        ConnectInvalidParameters = 0x82,
        /// Connect: Restart Discovery.
        ConnectRestartDiscovery = 0x83,
        /// Connect: Invalid Host (host not allowed to access the subsystem).
        ConnectInvalidHost = 0x84,
        /// Discovery: Restart Discovery.
        DiscoveryRestart = 0x90,
        /// Authentication Required.
        AuthenticationRequired = 0x91,
    }
}

code_enum! {
    /// Media and data integrity errors (SCT 2), Figure 99.
    pub enum MediaStatus: u8 {
        WriteFault = 0x80,
        UnrecoveredReadError = 0x81,
        EndToEndGuardCheckError = 0x82,
        EndToEndApplicationTagCheckError = 0x83,
        EndToEndReferenceTagCheckError = 0x84,
        CompareFailure = 0x85,
        AccessDenied = 0x86,
        DeallocatedOrUnwrittenLogicalBlock = 0x87,
    }
}

code_enum! {
    /// Path related status (SCT 3), Figure 100.
    pub enum PathStatus: u8 {
        InternalPathError = 0x00,
        AsymmetricAccessPersistentLoss = 0x01,
        AsymmetricAccessInaccessible = 0x02,
        AsymmetricAccessTransition = 0x03,
        ControllerPathingError = 0x60,
        HostPathingError = 0x70,
        CommandAbortedByHost = 0x71,
    }
}

/// The status of a completion: code type, code, Command Retry Delay index, More, DNR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status {
    pub sct: Sct,
    pub sc: u8,
    /// Command Retry Delay: 0, or an index 1-3 into Identify Controller CRDT1-3.
    pub crd: u8,
    /// More status information is in the Error Information log page.
    pub more: bool,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Status {
    pub const SUCCESS: Self = Self::new(Sct::Generic, 0);

    /// A status with CRD 0, More and DNR clear.
    pub const fn new(sct: Sct, sc: u8) -> Self {
        Self {
            sct,
            sc,
            crd: 0,
            more: false,
            dnr: false,
        }
    }

    pub fn generic(sc: GenericStatus) -> Self {
        Self::new(Sct::Generic, sc.into())
    }
    pub fn command_specific(sc: CommandSpecificStatus) -> Self {
        Self::new(Sct::CommandSpecific, sc.into())
    }
    pub fn media(sc: MediaStatus) -> Self {
        Self::new(Sct::MediaError, sc.into())
    }
    pub fn path(sc: PathStatus) -> Self {
        Self::new(Sct::Path, sc.into())
    }

    /// Invalid Opcode, DNR.
    pub fn invalid_opcode() -> Self {
        Self::generic(GenericStatus::InvalidOpcode).with_dnr()
    }
    /// Invalid Field in Command, DNR.
    pub fn invalid_field() -> Self {
        Self::generic(GenericStatus::InvalidField).with_dnr()
    }
    /// Internal Error (retryable).
    pub fn internal_error() -> Self {
        Self::generic(GenericStatus::InternalError)
    }
    /// Invalid Namespace or Format, DNR.
    pub fn invalid_namespace() -> Self {
        Self::generic(GenericStatus::InvalidNamespaceOrFormat).with_dnr()
    }
    /// Command Sequence Error, DNR.
    pub fn command_sequence_error() -> Self {
        Self::generic(GenericStatus::CommandSequenceError).with_dnr()
    }
    /// LBA Out of Range, DNR.
    pub fn lba_out_of_range() -> Self {
        Self::generic(GenericStatus::LbaOutOfRange).with_dnr()
    }
    /// Data Transfer Error (retryable).
    pub fn data_transfer_error() -> Self {
        Self::generic(GenericStatus::DataTransferError)
    }
    /// Connect Invalid Parameters, DNR (put IATTR/IPO in DW0, see
    /// [`fabrics::connect_invalid_param_dw0`](super::fabrics::connect_invalid_param_dw0)).
    pub fn connect_invalid_parameters() -> Self {
        Self::command_specific(CommandSpecificStatus::ConnectInvalidParameters).with_dnr()
    }
    /// Connect Invalid Host, DNR.
    pub fn connect_invalid_host() -> Self {
        Self::command_specific(CommandSpecificStatus::ConnectInvalidHost).with_dnr()
    }

    pub const fn with_dnr(mut self) -> Self {
        self.dnr = true;
        self
    }
    pub const fn with_more(mut self) -> Self {
        self.more = true;
        self
    }
    /// Sets the Command Retry Delay index (bits above 1:0 are dropped).
    pub const fn with_crd(mut self, crd: u8) -> Self {
        self.crd = crd & 0b11;
        self
    }

    pub fn is_success(&self) -> bool {
        self.sct == Sct::Generic && self.sc == 0
    }

    /// The status as the CQE's bytes 14-15 hold it, with the phase tag in bit 0. An
    /// `Unknown` SCT keeps its low 3 bits.
    pub fn to_field(&self, phase: bool) -> u16 {
        u16::from(phase)
            | u16::from(self.sc) << 1
            | u16::from(u8::from(self.sct) & 0b111) << 9
            | u16::from(self.crd & 0b11) << 12
            | u16::from(self.more) << 14
            | u16::from(self.dnr) << 15
    }

    /// Splits the CQE's bytes 14-15 into status and phase tag.
    pub fn from_field(field: u16) -> (Self, bool) {
        let s = Self {
            sc: (field >> 1) as u8,
            sct: (((field >> 9) & 0b111) as u8).into(),
            crd: ((field >> 12) & 0b11) as u8,
            more: field & (1 << 14) != 0,
            dnr: field & (1 << 15) != 0,
        };
        (s, field & 1 != 0)
    }

    /// The status code interpreted by its type.
    pub fn kind(&self) -> StatusKind {
        match self.sct {
            Sct::Generic => StatusKind::Generic(self.sc.into()),
            Sct::CommandSpecific => StatusKind::CommandSpecific(self.sc.into()),
            Sct::MediaError => StatusKind::Media(self.sc.into()),
            Sct::Path => StatusKind::Path(self.sc.into()),
            sct => StatusKind::Other { sct, sc: self.sc },
        }
    }
}

impl Default for Status {
    fn default() -> Self {
        Self::SUCCESS
    }
}

impl From<GenericStatus> for Status {
    fn from(sc: GenericStatus) -> Self {
        Self::generic(sc)
    }
}

impl From<CommandSpecificStatus> for Status {
    fn from(sc: CommandSpecificStatus) -> Self {
        Self::command_specific(sc)
    }
}

impl From<MediaStatus> for Status {
    fn from(sc: MediaStatus) -> Self {
        Self::media(sc)
    }
}

impl From<PathStatus> for Status {
    fn from(sc: PathStatus) -> Self {
        Self::path(sc)
    }
}

/// A status code read according to its status code type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusKind {
    Generic(GenericStatus),
    CommandSpecific(CommandSpecificStatus),
    Media(MediaStatus),
    Path(PathStatus),
    Other { sct: Sct, sc: u8 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_layout() {
        // Linux: NVME_SC_INVALID_FIELD | NVME_STATUS_DNR = 0x4002, shifted left by one.
        let s = Status::invalid_field();
        assert_eq!(s.to_field(false), 0x4002 << 1);
        assert_eq!(s.to_field(true), (0x4002 << 1) | 1);
        // NVME_SC_CONNECT_INVALID_PARAM = 0x182.
        assert_eq!(
            Status::command_specific(CommandSpecificStatus::ConnectInvalidParameters)
                .to_field(false),
            0x182 << 1
        );
        // NVME_SC_COMPARE_FAILED = 0x285.
        assert_eq!(
            Status::media(MediaStatus::CompareFailure).to_field(false),
            0x285 << 1
        );
        // NVME_SC_ANA_TRANSITION = 0x303; More 0x2000; CRD 0x1800.
        let p = Status::path(PathStatus::AsymmetricAccessTransition)
            .with_more()
            .with_crd(3);
        assert_eq!(p.to_field(false), (0x303 | 0x2000 | 0x1800) << 1);
        assert_eq!(Status::SUCCESS.to_field(true), 1);
    }

    #[test]
    fn from_field() {
        let (s, phase) = Status::from_field(((0x4000 | 0x180) << 1) | 1);
        assert!(phase);
        assert_eq!(s.sct, Sct::CommandSpecific);
        assert_eq!(s.sc, 0x80);
        assert!(s.dnr);
        assert!(!s.more);
        assert_eq!(
            s.kind(),
            StatusKind::CommandSpecific(CommandSpecificStatus::ConnectIncompatibleFormat)
        );
        let (s, phase) = Status::from_field(0);
        assert!(!phase);
        assert!(s.is_success());
        for f in [0u16, 1, 0xffff, 0x1234, 0x8001, 0x0ffe] {
            let (s, p) = Status::from_field(f);
            assert_eq!(s.to_field(p), f);
        }
    }

    #[test]
    fn unknown_codes() {
        let (s, _) = Status::from_field(0x7 << 9 | 0xc1 << 1);
        assert_eq!(s.sct, Sct::VendorSpecific);
        assert_eq!(
            s.kind(),
            StatusKind::Other {
                sct: Sct::VendorSpecific,
                sc: 0xc1
            }
        );
        let (s, _) = Status::from_field(0x5 << 9);
        assert_eq!(s.sct, Sct::Unknown(5));
        assert_eq!(GenericStatus::from(0x17), GenericStatus::Unknown(0x17));
        assert_eq!(u8::from(GenericStatus::Unknown(0x17)), 0x17);
        assert_eq!(
            CommandSpecificStatus::from(0x7f),
            CommandSpecificStatus::Unknown(0x7f)
        );
        assert_eq!(MediaStatus::from(0x00), MediaStatus::Unknown(0));
        assert_eq!(PathStatus::from(0x04), PathStatus::Unknown(4));
        for v in 0..=255u8 {
            assert_eq!(u8::from(GenericStatus::from(v)), v);
            assert_eq!(u8::from(CommandSpecificStatus::from(v)), v);
            assert_eq!(u8::from(MediaStatus::from(v)), v);
            assert_eq!(u8::from(PathStatus::from(v)), v);
            assert_eq!(u8::from(Sct::from(v)), v);
        }
    }

    #[test]
    fn named_codes() {
        use GenericStatus as G;
        let expect = [
            (G::Success, 0x00),
            (G::InvalidOpcode, 0x01),
            (G::InvalidField, 0x02),
            (G::CommandIdConflict, 0x03),
            (G::DataTransferError, 0x04),
            (G::InternalError, 0x06),
            (G::AbortRequested, 0x07),
            (G::InvalidNamespaceOrFormat, 0x0b),
            (G::CommandSequenceError, 0x0c),
            (G::InvalidSglSegmentDescriptor, 0x0d),
            (G::InvalidNumberOfSglDescriptors, 0x0e),
            (G::DataSglLengthInvalid, 0x0f),
            (G::SglDescriptorTypeInvalid, 0x11),
            (G::InvalidUseOfCmb, 0x12),
            (G::SglOffsetInvalid, 0x16),
            (G::LbaOutOfRange, 0x80),
            (G::CapacityExceeded, 0x81),
            (G::NamespaceNotReady, 0x82),
        ];
        for (g, v) in expect {
            assert_eq!(u8::from(g), v);
        }
        use CommandSpecificStatus as C;
        let expect = [
            (C::InvalidQueueIdentifier, 0x01),
            (C::InvalidQueueSize, 0x02),
            (C::AbortCommandLimitExceeded, 0x03),
            (C::AsyncEventRequestLimitExceeded, 0x05),
            (C::InvalidLogPage, 0x09),
            (C::FeatureIdentifierNotSaveable, 0x0d),
            (C::FeatureNotChangeable, 0x0e),
            (C::ConnectIncompatibleFormat, 0x80),
            (C::ConnectControllerBusy, 0x81),
            (C::ConnectInvalidParameters, 0x82),
            (C::ConnectRestartDiscovery, 0x83),
            (C::ConnectInvalidHost, 0x84),
        ];
        for (c, v) in expect {
            assert_eq!(u8::from(c), v);
        }
        assert_eq!(
            Status::from(MediaStatus::CompareFailure).sct,
            Sct::MediaError
        );
        assert_eq!(Status::from(G::InvalidField), Status::new(Sct::Generic, 2));
        assert!(Status::connect_invalid_host().dnr);
    }
}
