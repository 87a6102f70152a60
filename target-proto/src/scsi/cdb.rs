//! CDB layout (SAM-5 5.2, SPC-4 4.2): operation codes, the length each group implies, and
//! a reader whose accessors cannot panic (bytes past the end read as zero; the length is
//! checked once against the operation code before any field is read).

/// Operation codes (SPC-4 table D.2, SBC-3 table 13) this logical unit knows.
pub(crate) mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_AND_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;

    /// SERVICE ACTION IN (16) service actions.
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service actions.
    pub const SA_REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0c;
    pub const SA_REPORT_SUPPORTED_TMFS: u8 = 0x0d;
}

/// The CDB length the operation code's group implies (SPC-4 4.2.5.1); None for the
/// variable-length and vendor-specific groups, which this logical unit does not support.
pub(crate) fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// A CDB whose length was checked against its operation code.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cdb<'a>(pub &'a [u8]);

impl Cdb<'_> {
    pub fn u8(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    pub fn bit(&self, i: usize, mask: u8) -> bool {
        self.u8(i) & mask != 0
    }

    pub fn be16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.u8(i), self.u8(i + 1)])
    }

    pub fn be24(&self, i: usize) -> u32 {
        u32::from_be_bytes([0, self.u8(i), self.u8(i + 1), self.u8(i + 2)])
    }

    pub fn be32(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.u8(i), self.u8(i + 1), self.u8(i + 2), self.u8(i + 3)])
    }

    pub fn be64(&self, i: usize) -> u64 {
        (u64::from(self.be32(i)) << 32) | u64::from(self.be32(i + 4))
    }

    pub fn opcode(&self) -> u8 {
        self.u8(0)
    }

    /// The service action of 9Eh/A3h/5Eh/5Fh-style CDBs (byte 1, bits 4..0).
    pub fn service_action(&self) -> u8 {
        self.u8(1) & 0x1f
    }
}

/// Big-endian reads from a parameter list (data-out) that may be short: missing bytes
/// read as zero. Callers check lengths where the standard says a short list is an error.
pub(crate) fn be_at(data: &[u8], i: usize, n: usize) -> u64 {
    (0..n).fold(0u64, |acc, k| {
        (acc << 8) | u64::from(data.get(i + k).copied().unwrap_or(0))
    })
}
