//! The 16-byte completion queue entry: NVMe Base Specification 2.0, section 4.6
//! ("Completion Queue Entry"), Figures 89-91, as Linux `struct nvme_completion`.
//!
//! DW0 (bytes 0-3) and DW1 (4-7) are command specific; SQHD (8-9), SQID (10-11), CID
//! (12-13), and the phase tag and status (14-15, see [`status`](super::status)). Over
//! fabrics the phase tag is reserved (0), and SQHD reports the queue's head unless SQ flow
//! control was disabled at Connect.

use super::status::Status;
use crate::Result;

/// Length of a completion queue entry.
pub const CQE_LEN: usize = 16;
const _: () = assert!(Cqe::<&[u8]>::LEN == CQE_LEN);

wire_view! {
    /// A view of a completion queue entry.
    pub struct Cqe, len = CQE_LEN;
    /// Command specific DW0.
    dw0, set_dw0: u32 = 0;
    /// Command specific DW1.
    dw1, set_dw1: u32 = 4;
    /// DW0 and DW1 as one 64-bit result (Property Get of an 8-byte property).
    result, set_result: u64 = 0;
    /// Submission queue head pointer.
    sqhd, set_sqhd: u16 = 8;
    /// Submission queue identifier.
    sqid, set_sqid: u16 = 10;
    /// Command identifier.
    cid, set_cid: u16 = 12;
    /// Phase tag (bit 0) and status (bits 15:1).
    status_field, set_status_field: u16 = 14;
}

impl<T: AsRef<[u8]>> Cqe<T> {
    pub fn phase(&self) -> bool {
        self.status_field() & 1 != 0
    }
    pub fn status(&self) -> Status {
        Status::from_field(self.status_field()).0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Cqe<T> {
    pub fn set_status(&mut self, status: Status, phase: bool) {
        self.set_status_field(status.to_field(phase));
    }
}

/// A parsed completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CqeRepr {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
    pub phase: bool,
}

impl CqeRepr {
    /// A completion for `cid` with `status` and zero results.
    pub fn new(cid: u16, sqid: u16, sqhd: u16, status: Status) -> Self {
        Self {
            cid,
            sqid,
            sqhd,
            status,
            ..Self::default()
        }
    }

    pub fn parse<T: AsRef<[u8]> + ?Sized>(c: &Cqe<&T>) -> Result<Self> {
        Ok(Self {
            dw0: c.dw0(),
            dw1: c.dw1(),
            sqhd: c.sqhd(),
            sqid: c.sqid(),
            cid: c.cid(),
            status: c.status(),
            phase: c.phase(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        CQE_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, c: &mut Cqe<&mut T>) {
        c.set_dw0(self.dw0);
        c.set_dw1(self.dw1);
        c.set_sqhd(self.sqhd);
        c.set_sqid(self.sqid);
        c.set_cid(self.cid);
        c.set_status(self.status, self.phase);
    }

    /// The 16 bytes of the entry.
    pub fn to_bytes(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        self.emit(&mut Cqe::new_unchecked(&mut b[..]));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::nvme::status::{GenericStatus, Sct};

    const BYTES: [u8; 16] = [
        0x01, 0x00, 0x00, 0x00, // DW0: CNTLID 1 after a Connect
        0x00, 0x00, 0x00, 0x00, // DW1
        0x05, 0x00, // SQHD 5
        0x00, 0x00, // SQID 0
        0x34, 0x12, // CID 0x1234
        0x04, 0x80, // status: Invalid Field (SC 2 << 1), DNR (bit 15)
    ];

    #[test]
    fn parse() {
        let c = Cqe::new_checked(&BYTES[..]).unwrap();
        let r = CqeRepr::parse(&c).unwrap();
        assert_eq!(r.dw0, 1);
        assert_eq!(r.sqhd, 5);
        assert_eq!(r.sqid, 0);
        assert_eq!(r.cid, 0x1234);
        assert!(!r.phase);
        assert_eq!(r.status.sct, Sct::Generic);
        assert_eq!(r.status.sc, 2);
        assert!(r.status.dnr);
        assert_eq!(c.result(), 1);
    }

    #[test]
    fn emit() {
        let mut r = CqeRepr::new(0x1234, 0, 5, Status::invalid_field());
        r.dw0 = 1;
        assert_eq!(r.to_bytes(), BYTES);
        assert_eq!(r.buffer_len(), 16);
        let mut b = [0u8; 16];
        let mut c = Cqe::new_unchecked(&mut b[..]);
        c.set_result(0x1122_3344_5566_7788);
        c.set_status(Status::from(GenericStatus::Success), true);
        assert_eq!(&b[..8], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[14..], &[1, 0]);
        let c = Cqe::new_checked(&b[..]).unwrap();
        assert_eq!(c.dw0(), 0x5566_7788);
        assert_eq!(c.dw1(), 0x1122_3344);
    }

    #[test]
    fn truncated() {
        assert_eq!(Cqe::new_checked(&BYTES[..15]).err(), Some(Error::Truncated));
    }
}
