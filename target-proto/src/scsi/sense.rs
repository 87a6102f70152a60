//! Sense data (SPC-4 4.5): what a CHECK CONDITION tells the initiator. Both formats are
//! built from one [`Sense`]: fixed format (70h, SPC-4 4.5.3) by default, descriptor format
//! (72h, SPC-4 4.5.2) when the control mode page's D_SENSE bit is set.

/// SAM-5 status codes (SAM-5 5.3.1, table 39).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys (SPC-4 4.5.6, table 52).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// An additional sense code and its qualifier (SPC-4 4.5.6, table 53).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    pub const NO_ADDITIONAL_SENSE: Self = Self(0x00, 0x00);
    pub const WRITE_ERROR: Self = Self(0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: Self = Self(0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Self = Self(0x1a, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Self = Self(0x1d, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Self = Self(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Self = Self(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Self = Self(0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Self = Self(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Self = Self(0x26, 0x00);
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: Self = Self(0x26, 0x04);
    pub const WRITE_PROTECTED: Self = Self(0x27, 0x00);
    pub const SOFTWARE_WRITE_PROTECTED: Self = Self(0x27, 0x02);
    pub const POWER_ON_OCCURRED: Self = Self(0x29, 0x01);
    pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: Self = Self(0x29, 0x03);
    pub const MODE_PARAMETERS_CHANGED: Self = Self(0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: Self = Self(0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: Self = Self(0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Self = Self(0x2a, 0x05);
    pub const CAPACITY_DATA_HAS_CHANGED: Self = Self(0x2a, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Self = Self(0x2f, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Self = Self(0x39, 0x00);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Self = Self(0x3f, 0x0e);
    pub const INTERNAL_TARGET_FAILURE: Self = Self(0x44, 0x00);
    pub const MEDIUM_REMOVAL_PREVENTED: Self = Self(0x53, 0x02);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Self = Self(0x55, 0x04);
}

/// The sense-key specific field pointer (SPC-4 4.5.2.4.2): which byte (and bit) of the
/// CDB or of the parameter list was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// C/D: the CDB (true) or the parameter list (false).
    pub in_cdb: bool,
    pub byte: u16,
    /// BPV + BIT POINTER.
    pub bit: Option<u8>,
}

/// Sense data before it is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: Asc,
    /// The INFORMATION field (e.g. the offset of the first miscompared byte).
    pub info: Option<u64>,
    pub field: Option<FieldPointer>,
}

/// Length of fixed-format sense data as built here.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    pub const fn new(key: u8, asc: Asc) -> Self {
        Self {
            key,
            asc,
            info: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB pointing at `byte` (and `bit`) of the CDB.
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Self {
        Self::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB).with_field(true, byte, bit)
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST pointing into the data-out.
    pub const fn invalid_param(byte: u16, bit: Option<u8>) -> Self {
        Self::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_PARAMETER_LIST)
            .with_field(false, byte, bit)
    }

    pub const fn illegal(asc: Asc) -> Self {
        Self::new(key::ILLEGAL_REQUEST, asc)
    }

    pub const fn with_field(mut self, in_cdb: bool, byte: u16, bit: Option<u8>) -> Self {
        self.field = Some(FieldPointer { in_cdb, byte, bit });
        self
    }

    pub const fn with_info(mut self, info: u64) -> Self {
        self.info = Some(info);
        self
    }

    /// The three sense-key specific bytes (SKSV set) when there is a field pointer.
    fn sense_key_specific(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut b0 = 0x80;
        if f.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = f.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = f.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    /// Encodes the sense data; `descriptor` selects format 72h over 70h.
    pub fn to_bytes(&self, descriptor: bool) -> Vec<u8> {
        let sks = self.sense_key_specific();
        if descriptor {
            let mut s = vec![0x72, self.key & 0x0f, self.asc.0, self.asc.1, 0, 0, 0, 0];
            if let Some(info) = self.info {
                // Information descriptor (SPC-4 4.5.2.2): type 00h, VALID set.
                s.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
                s.extend_from_slice(&info.to_be_bytes());
            }
            if let Some(sks) = sks {
                // Sense key specific descriptor (SPC-4 4.5.2.4): type 02h.
                s.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sks[0], sks[1], sks[2], 0x00]);
            }
            s[7] = (s.len() - 8) as u8;
            s
        } else {
            let mut s = vec![0u8; FIXED_SENSE_LEN];
            s[0] = 0x70;
            s[2] = self.key & 0x0f;
            if let Some(info) = self.info {
                // The fixed format holds 4 bytes; VALID only when the value fits.
                if let Ok(v) = u32::try_from(info) {
                    s[0] |= 0x80;
                    s[3..7].copy_from_slice(&v.to_be_bytes());
                }
            }
            s[7] = (FIXED_SENSE_LEN - 8) as u8;
            s[12] = self.asc.0;
            s[13] = self.asc.1;
            if let Some(sks) = sks {
                s[15..18].copy_from_slice(&sks);
            }
            s
        }
    }
}

/// Why a command did not complete with GOOD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    Check(Sense),
    Conflict,
}

impl From<Sense> for Reject {
    fn from(s: Sense) -> Self {
        Self::Check(s)
    }
}
