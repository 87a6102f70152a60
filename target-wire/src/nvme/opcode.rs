//! Command opcodes and the identifiers commands carry: NVMe Base Specification 2.0, section
//! 5 (Figure 138 "Opcodes for Admin Commands"), NVM Command Set Specification 1.0 section 3
//! (Figure 15 "Opcodes for NVM Commands"), NVMe Base 2.0 section 6 (Figure 542 "Fabrics
//! Command Types"), Figure 273 "CNS Values", Figure 202 "Log Page Identifiers" and Figure
//! 322 "Feature Identifiers".

/// The opcode of every Fabrics command, on the admin and I/O queues alike.
pub const FABRICS_OPCODE: u8 = 0x7f;

code_enum! {
    /// Admin command opcode (SQE byte 0 on the admin queue).
    pub enum AdminOpcode: u8 {
        DeleteIoSq = 0x00,
        CreateIoSq = 0x01,
        GetLogPage = 0x02,
        DeleteIoCq = 0x04,
        CreateIoCq = 0x05,
        Identify = 0x06,
        Abort = 0x08,
        SetFeatures = 0x09,
        GetFeatures = 0x0a,
        AsyncEventRequest = 0x0c,
        NamespaceManagement = 0x0d,
        FirmwareCommit = 0x10,
        FirmwareImageDownload = 0x11,
        DeviceSelfTest = 0x14,
        NamespaceAttachment = 0x15,
        KeepAlive = 0x18,
        DirectiveSend = 0x19,
        DirectiveReceive = 0x1a,
        VirtualizationManagement = 0x1c,
        NvmeMiSend = 0x1d,
        NvmeMiReceive = 0x1e,
        DoorbellBufferConfig = 0x7c,
        Fabrics = 0x7f,
        FormatNvm = 0x80,
        SecuritySend = 0x81,
        SecurityReceive = 0x82,
        Sanitize = 0x84,
        GetLbaStatus = 0x86,
    }
}

code_enum! {
    /// NVM command set I/O command opcode (SQE byte 0 on an I/O queue).
    pub enum IoOpcode: u8 {
        Flush = 0x00,
        Write = 0x01,
        Read = 0x02,
        WriteUncorrectable = 0x04,
        Compare = 0x05,
        WriteZeroes = 0x08,
        DatasetManagement = 0x09,
        Verify = 0x0c,
        ReservationRegister = 0x0d,
        ReservationReport = 0x0e,
        ReservationAcquire = 0x11,
        ReservationRelease = 0x15,
        Copy = 0x19,
        Fabrics = 0x7f,
    }
}

impl AdminOpcode {
    /// Data transfer direction from the opcode's low two bits (Figure 138): 01b host to
    /// controller, 10b controller to host, 11b both, 00b none.
    pub fn data_transfer(self) -> DataTransfer {
        DataTransfer::from_opcode(u8::from(self))
    }
}

impl IoOpcode {
    /// Data transfer direction from the opcode's low two bits (Figure 15).
    pub fn data_transfer(self) -> DataTransfer {
        DataTransfer::from_opcode(u8::from(self))
    }
}

/// Direction of a command's data, bits 1:0 of a (non-Fabrics) opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataTransfer {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

impl DataTransfer {
    /// From bits 1:0 of an opcode. (For Fabrics commands the direction comes from the
    /// FCTYPE's low two bits the same way.)
    pub fn from_opcode(op: u8) -> Self {
        match op & 0b11 {
            0b00 => Self::None,
            0b01 => Self::HostToController,
            0b10 => Self::ControllerToHost,
            _ => Self::Bidirectional,
        }
    }
}

code_enum! {
    /// Fabrics command type (FCTYPE, SQE byte 4 when the opcode is 7Fh).
    pub enum FabricsType: u8 {
        PropertySet = 0x00,
        Connect = 0x01,
        PropertyGet = 0x04,
        AuthenticationSend = 0x05,
        AuthenticationReceive = 0x06,
        Disconnect = 0x08,
    }
}

code_enum! {
    /// Identify Controller or Namespace Structure (CNS, CDW10 bits 7:0).
    pub enum Cns: u8 {
        /// Identify Namespace data structure for the NSID (NVM command set).
        Namespace = 0x00,
        /// Identify Controller data structure.
        Controller = 0x01,
        /// Active Namespace ID list above the NSID.
        ActiveNamespaceList = 0x02,
        /// Namespace Identification Descriptor list for the NSID.
        NamespaceDescriptorList = 0x03,
        /// NVM Set list.
        NvmSetList = 0x04,
        /// I/O command set specific Identify Namespace.
        CsNamespace = 0x05,
        /// I/O command set specific Identify Controller.
        CsController = 0x06,
        /// I/O command set specific Active Namespace ID list.
        CsActiveNamespaceList = 0x07,
        /// I/O command set independent Identify Namespace.
        IndependentNamespace = 0x08,
        /// Allocated Namespace ID list.
        AllocatedNamespaceList = 0x10,
        /// Identify Namespace for an allocated NSID.
        AllocatedNamespace = 0x11,
        /// Controller list attached to the NSID.
        NamespaceControllerList = 0x12,
        /// Controller list in the subsystem.
        ControllerList = 0x13,
        /// I/O Command Set data structure.
        IoCommandSet = 0x1c,
    }
}

code_enum! {
    /// Log page identifier (LID, Get Log Page CDW10 bits 7:0).
    pub enum LogPageId: u8 {
        SupportedLogPages = 0x00,
        ErrorInformation = 0x01,
        SmartHealth = 0x02,
        FirmwareSlot = 0x03,
        ChangedNamespaceList = 0x04,
        CommandsEffects = 0x05,
        DeviceSelfTest = 0x06,
        TelemetryHost = 0x07,
        TelemetryController = 0x08,
        EnduranceGroup = 0x09,
        PredictableLatencyPerSet = 0x0a,
        PredictableLatencyAggregate = 0x0b,
        AsymmetricNamespaceAccess = 0x0c,
        PersistentEvent = 0x0d,
        EnduranceGroupEventAggregate = 0x0f,
        MediaUnitStatus = 0x10,
        SupportedCapacityConfiguration = 0x11,
        FeatureIdentifiersEffects = 0x12,
        NvmeMiCommandsEffects = 0x13,
        CommandFeatureLockdown = 0x14,
        BootPartition = 0x15,
        RotationalMediaInformation = 0x16,
        Discovery = 0x70,
        ReservationNotification = 0x80,
        SanitizeStatus = 0x81,
    }
}

code_enum! {
    /// Feature identifier (FID, Get/Set Features CDW10 bits 7:0).
    pub enum FeatureId: u8 {
        Arbitration = 0x01,
        PowerManagement = 0x02,
        LbaRangeType = 0x03,
        TemperatureThreshold = 0x04,
        ErrorRecovery = 0x05,
        VolatileWriteCache = 0x06,
        NumberOfQueues = 0x07,
        InterruptCoalescing = 0x08,
        InterruptVectorConfiguration = 0x09,
        WriteAtomicityNormal = 0x0a,
        AsyncEventConfiguration = 0x0b,
        AutonomousPowerStateTransition = 0x0c,
        HostMemoryBuffer = 0x0d,
        Timestamp = 0x0e,
        KeepAliveTimer = 0x0f,
        HostControlledThermalManagement = 0x10,
        NonOperationalPowerStateConfig = 0x11,
        ReadRecoveryLevelConfig = 0x12,
        PredictableLatencyModeConfig = 0x13,
        PredictableLatencyModeWindow = 0x14,
        HostBehaviorSupport = 0x16,
        SanitizeConfig = 0x17,
        EnduranceGroupEventConfiguration = 0x18,
        IoCommandSetProfile = 0x19,
        SoftwareProgressMarker = 0x80,
        HostIdentifier = 0x81,
        ReservationNotificationMask = 0x82,
        ReservationPersistence = 0x83,
        NamespaceWriteProtectionConfig = 0x84,
    }
}

code_enum! {
    /// Command Set Identifier (CSI).
    pub enum Csi: u8 {
        Nvm = 0x00,
        KeyValue = 0x01,
        ZonedNamespace = 0x02,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_opcodes() {
        assert_eq!(AdminOpcode::from(0x06), AdminOpcode::Identify);
        assert_eq!(AdminOpcode::from(0x02), AdminOpcode::GetLogPage);
        assert_eq!(AdminOpcode::from(0x18), AdminOpcode::KeepAlive);
        assert_eq!(AdminOpcode::from(0x7f), AdminOpcode::Fabrics);
        assert_eq!(u8::from(AdminOpcode::AsyncEventRequest), 0x0c);
        assert_eq!(u8::from(AdminOpcode::GetFeatures), 0x0a);
        assert_eq!(AdminOpcode::from(0x03), AdminOpcode::Unknown(0x03));
        assert_eq!(u8::from(AdminOpcode::Unknown(0xc0)), 0xc0);
        for v in 0..=255u8 {
            assert_eq!(u8::from(AdminOpcode::from(v)), v);
            assert_eq!(u8::from(IoOpcode::from(v)), v);
            assert_eq!(u8::from(FabricsType::from(v)), v);
            assert_eq!(u8::from(Cns::from(v)), v);
            assert_eq!(u8::from(LogPageId::from(v)), v);
            assert_eq!(u8::from(FeatureId::from(v)), v);
            assert_eq!(u8::from(Csi::from(v)), v);
        }
    }

    #[test]
    fn io_opcodes() {
        assert_eq!(IoOpcode::from(0x00), IoOpcode::Flush);
        assert_eq!(IoOpcode::from(0x01), IoOpcode::Write);
        assert_eq!(IoOpcode::from(0x02), IoOpcode::Read);
        assert_eq!(IoOpcode::from(0x04), IoOpcode::WriteUncorrectable);
        assert_eq!(IoOpcode::from(0x05), IoOpcode::Compare);
        assert_eq!(IoOpcode::from(0x08), IoOpcode::WriteZeroes);
        assert_eq!(IoOpcode::from(0x09), IoOpcode::DatasetManagement);
        assert_eq!(IoOpcode::from(0x03), IoOpcode::Unknown(0x03));
        assert_eq!(
            IoOpcode::Write.data_transfer(),
            DataTransfer::HostToController
        );
        assert_eq!(
            IoOpcode::Read.data_transfer(),
            DataTransfer::ControllerToHost
        );
        assert_eq!(IoOpcode::Flush.data_transfer(), DataTransfer::None);
        assert_eq!(
            AdminOpcode::Identify.data_transfer(),
            DataTransfer::ControllerToHost
        );
        assert_eq!(
            AdminOpcode::Fabrics.data_transfer(),
            DataTransfer::Bidirectional
        );
    }

    #[test]
    fn fabrics_types() {
        assert_eq!(FabricsType::from(0x00), FabricsType::PropertySet);
        assert_eq!(FabricsType::from(0x01), FabricsType::Connect);
        assert_eq!(FabricsType::from(0x04), FabricsType::PropertyGet);
        assert_eq!(FabricsType::from(0x05), FabricsType::AuthenticationSend);
        assert_eq!(FabricsType::from(0x06), FabricsType::AuthenticationReceive);
        assert_eq!(FabricsType::from(0x08), FabricsType::Disconnect);
        assert_eq!(FabricsType::from(0x02), FabricsType::Unknown(0x02));
    }

    #[test]
    fn identifiers() {
        assert_eq!(Cns::from(0x03), Cns::NamespaceDescriptorList);
        assert_eq!(LogPageId::from(0x70), LogPageId::Discovery);
        assert_eq!(LogPageId::from(0x05), LogPageId::CommandsEffects);
        assert_eq!(FeatureId::from(0x0f), FeatureId::KeepAliveTimer);
        assert_eq!(FeatureId::from(0x07), FeatureId::NumberOfQueues);
        assert_eq!(FeatureId::from(0xff), FeatureId::Unknown(0xff));
    }
}
