//! RDMA CM private data of the NVMe over Fabrics RDMA transport binding: NVM Express RDMA
//! Transport Specification 1.0, section 3 ("RDMA Transport Binding": the RDMA_CM_REQUEST,
//! RDMA_CM_ACCEPT and RDMA_CM_REJECT private data formats; NVMe-oF 1.1 section 7.3.2 before
//! it), as in Linux `include/linux/nvme-rdma.h`.
//!
//! A host opens each NVMe queue as one RDMA queue pair; the connect request's private data
//! names the queue and sizes both receive queues, the controller's accept or reject answers.
//! Everything is little-endian; reserved bytes are ignored when read and zeroed when written.
//!
//! - [`CmRequest`] (`nvme_rdma_cm_req`, 32 bytes): RECFMT (0-1), QID (2-3), HRQSIZE (4-5),
//!   HSQSIZE (6-7), CNTLID (8-9), 22 reserved. HSQSIZE is 0's based (Linux sends the
//!   Connect SQSIZE); HRQSIZE is the host's receive queue in entries (Linux: HSQSIZE + 1).
//! - [`CmReply`] (`nvme_rdma_cm_rep`, 32 bytes): RECFMT, CRQSIZE (the controller's receive
//!   queue in entries), 28 reserved.
//! - [`CmReject`] (`nvme_rdma_cm_rej`, 4 bytes): RECFMT, STS ([`CmStatus`]).
//!
//! The data itself travels in command capsules (SQE + in-capsule data) and response
//! capsules (the bare 16-byte CQE) sent with RDMA SEND, and by RDMA READ/WRITE against the
//! host's Keyed SGL Data Blocks ([`SglRepr::Keyed`](crate::nvme::sgl::SglRepr)).

use crate::{Error, Result};

/// Length of the connect request's private data.
pub const CM_REQ_LEN: usize = 32;
/// Length of the accept's private data.
pub const CM_REP_LEN: usize = 32;
/// Length of the reject's private data.
pub const CM_REJ_LEN: usize = 4;
/// Record format 1.0, the only one defined.
pub const RECFMT_1_0: u16 = 0;

const _: () = assert!(CmRequest::<&[u8]>::LEN == CM_REQ_LEN);
const _: () = assert!(CmReply::<&[u8]>::LEN == CM_REP_LEN);
const _: () = assert!(CmReject::<&[u8]>::LEN == CM_REJ_LEN);

code_enum! {
    /// Why a controller rejects a connect request (RDMA_CM_REJECT STS), Linux
    /// `enum nvme_rdma_cm_status`.
    pub enum CmStatus: u16 {
        /// The private data is missing or too short.
        InvalidLen = 0x01,
        InvalidRecfmt = 0x02,
        InvalidQid = 0x03,
        InvalidHsqsize = 0x04,
        InvalidHrqsize = 0x05,
        /// No resources for the queue.
        NoResources = 0x06,
        /// Inbound RDMA READ depth (the CM's responder resources) not acceptable.
        InvalidIrd = 0x07,
        /// Outbound RDMA READ depth (the CM's initiator depth) not acceptable.
        InvalidOrd = 0x08,
        InvalidCntlid = 0x09,
    }
}

wire_view! {
    /// A view of the connect request's private data (`nvme_rdma_cm_req`).
    pub struct CmRequest, len = CM_REQ_LEN;
    recfmt, set_recfmt: u16 = 0;
    /// Queue ID: 0 for the admin queue.
    qid, set_qid: u16 = 2;
    /// Host receive queue size, in entries.
    hrqsize, set_hrqsize: u16 = 4;
    /// Host send queue size, 0's based.
    hsqsize, set_hsqsize: u16 = 6;
    /// For an I/O queue, the controller the admin Connect returned (Linux leaves it 0 on
    /// the admin queue).
    cntlid, set_cntlid: u16 = 8;
}

wire_view! {
    /// A view of the accept's private data (`nvme_rdma_cm_rep`).
    pub struct CmReply, len = CM_REP_LEN;
    recfmt, set_recfmt: u16 = 0;
    /// Controller receive queue size, in entries.
    crqsize, set_crqsize: u16 = 2;
}

wire_view! {
    /// A view of the reject's private data (`nvme_rdma_cm_rej`).
    pub struct CmReject, len = CM_REJ_LEN;
    recfmt, set_recfmt: u16 = 0;
    sts, set_sts: u16 = 2;
}

/// The connect request's fields. Whether they are acceptable is the controller's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CmRequestRepr {
    pub recfmt: u16,
    pub qid: u16,
    pub hrqsize: u16,
    pub hsqsize: u16,
    pub cntlid: u16,
}

impl CmRequestRepr {
    /// `Truncated` when shorter than 32 bytes; bytes past them (the CM pads its private
    /// data) are ignored.
    pub fn parse(private_data: &[u8]) -> Result<Self> {
        let r = CmRequest::new_checked(private_data)?;
        Ok(Self {
            recfmt: r.recfmt(),
            qid: r.qid(),
            hrqsize: r.hrqsize(),
            hsqsize: r.hsqsize(),
            cntlid: r.cntlid(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        CM_REQ_LEN
    }

    /// Writes all 32 bytes, reserved ones zero.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut r = CmRequest::new_checked(buf)?;
        r.as_bytes_mut().fill(0);
        r.set_recfmt(self.recfmt);
        r.set_qid(self.qid);
        r.set_hrqsize(self.hrqsize);
        r.set_hsqsize(self.hsqsize);
        r.set_cntlid(self.cntlid);
        Ok(CM_REQ_LEN)
    }

    /// The host's submission queue in entries (HSQSIZE + 1), without overflow.
    pub fn sq_entries(&self) -> u32 {
        u32::from(self.hsqsize) + 1
    }
}

/// The accept's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CmReplyRepr {
    pub recfmt: u16,
    pub crqsize: u16,
}

impl CmReplyRepr {
    pub fn parse(private_data: &[u8]) -> Result<Self> {
        let r = CmReply::new_checked(private_data)?;
        Ok(Self {
            recfmt: r.recfmt(),
            crqsize: r.crqsize(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        CM_REP_LEN
    }

    /// Writes all 32 bytes, reserved ones zero.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut r = CmReply::new_checked(buf)?;
        r.as_bytes_mut().fill(0);
        r.set_recfmt(self.recfmt);
        r.set_crqsize(self.crqsize);
        Ok(CM_REP_LEN)
    }

    /// The 32 bytes, for `rdma_accept`'s private data.
    pub fn to_bytes(&self) -> [u8; CM_REP_LEN] {
        let mut b = [0u8; CM_REP_LEN];
        let mut r = CmReply::new_unchecked(&mut b[..]);
        r.set_recfmt(self.recfmt);
        r.set_crqsize(self.crqsize);
        b
    }
}

/// The reject's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmRejectRepr {
    pub recfmt: u16,
    pub status: CmStatus,
}

impl CmRejectRepr {
    /// A reject in record format 1.0.
    pub const fn new(status: CmStatus) -> Self {
        Self {
            recfmt: RECFMT_1_0,
            status,
        }
    }

    pub fn parse(private_data: &[u8]) -> Result<Self> {
        let r = CmReject::new_checked(private_data)?;
        Ok(Self {
            recfmt: r.recfmt(),
            status: r.sts().into(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        CM_REJ_LEN
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if buf.len() < CM_REJ_LEN {
            return Err(Error::Truncated);
        }
        buf[..CM_REJ_LEN].copy_from_slice(&self.to_bytes());
        Ok(CM_REJ_LEN)
    }

    /// The 4 bytes, for `rdma_reject`'s private data.
    pub fn to_bytes(&self) -> [u8; CM_REJ_LEN] {
        let mut b = [0u8; CM_REJ_LEN];
        let mut r = CmReject::new_unchecked(&mut b[..]);
        r.set_recfmt(self.recfmt);
        r.set_sts(self.status.into());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Linux's nvme-rdma host sends for I/O queue 3 of a 128-entry queue on
    /// controller 1: HRQSIZE = queue size, HSQSIZE = SQSIZE (queue size - 1).
    const IO_REQ: [u8; 10] = [0, 0, 3, 0, 128, 0, 127, 0, 1, 0];

    #[test]
    fn request_parses_and_reemits_identically() {
        let mut b = [0u8; CM_REQ_LEN];
        b[..10].copy_from_slice(&IO_REQ);
        let r = CmRequestRepr::parse(&b).unwrap();
        assert_eq!(
            r,
            CmRequestRepr {
                recfmt: 0,
                qid: 3,
                hrqsize: 128,
                hsqsize: 127,
                cntlid: 1
            }
        );
        assert_eq!(r.sq_entries(), 128);
        let mut out = [0xffu8; CM_REQ_LEN];
        assert_eq!(r.emit(&mut out), Ok(32));
        assert_eq!(out, b, "reserved bytes zeroed");
        // The CM pads private data (56 bytes on an IB REQ): the rest is ignored.
        let mut padded = [0xeeu8; 56];
        padded[..32].copy_from_slice(&b);
        assert_eq!(CmRequestRepr::parse(&padded), Ok(r));
        let max = CmRequestRepr {
            hsqsize: u16::MAX,
            ..r
        };
        assert_eq!(max.sq_entries(), 65536);
    }

    #[test]
    fn request_fields_at_spec_offsets() {
        let r = CmRequestRepr {
            recfmt: 0x0102,
            qid: 0x0304,
            hrqsize: 0x0506,
            hsqsize: 0x0708,
            cntlid: 0x090a,
        };
        let mut out = [0u8; 32];
        r.emit(&mut out).unwrap();
        assert_eq!(&out[..10], &[2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 9]);
        let v = CmRequest::new_checked(&out[..]).unwrap();
        assert_eq!(
            (v.qid(), v.hrqsize(), v.hsqsize()),
            (0x0304, 0x0506, 0x0708)
        );
    }

    #[test]
    fn reply_bytes() {
        let r = CmReplyRepr {
            recfmt: RECFMT_1_0,
            crqsize: 32,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[0, 0, 32, 0]);
        assert!(b[4..].iter().all(|&x| x == 0));
        assert_eq!(CmReplyRepr::parse(&b), Ok(r));
        let mut out = [0xaau8; 40];
        assert_eq!(r.emit(&mut out), Ok(32));
        assert_eq!(&out[..32], &b);
        assert_eq!(out[32], 0xaa, "nothing past the 32 bytes");
    }

    #[test]
    fn reject_bytes_and_status_codes() {
        let r = CmRejectRepr::new(CmStatus::InvalidHsqsize);
        assert_eq!(r.to_bytes(), [0, 0, 4, 0]);
        assert_eq!(CmRejectRepr::parse(&[0, 0, 4, 0]), Ok(r));
        let mut out = [0u8; 4];
        assert_eq!(r.emit(&mut out), Ok(4));
        assert_eq!(out, [0, 0, 4, 0]);
        for (s, v) in [
            (CmStatus::InvalidLen, 1),
            (CmStatus::InvalidRecfmt, 2),
            (CmStatus::InvalidQid, 3),
            (CmStatus::InvalidHsqsize, 4),
            (CmStatus::InvalidHrqsize, 5),
            (CmStatus::NoResources, 6),
            (CmStatus::InvalidIrd, 7),
            (CmStatus::InvalidOrd, 8),
            (CmStatus::InvalidCntlid, 9),
        ] {
            assert_eq!(u16::from(s), v);
            assert_eq!(CmStatus::from(v), s);
        }
        assert_eq!(CmStatus::from(0x42), CmStatus::Unknown(0x42));
        assert_eq!(u16::from(CmStatus::Unknown(0x42)), 0x42);
        assert_eq!(
            CmRejectRepr::parse(&[0, 0, 0x42, 0]).unwrap().status,
            CmStatus::Unknown(0x42)
        );
    }

    #[test]
    fn truncated() {
        assert_eq!(CmRequestRepr::parse(&[0u8; 31]), Err(Error::Truncated));
        assert_eq!(CmRequestRepr::parse(&[]), Err(Error::Truncated));
        assert_eq!(CmReplyRepr::parse(&[0u8; 31]), Err(Error::Truncated));
        assert_eq!(CmRejectRepr::parse(&[0u8; 3]), Err(Error::Truncated));
        let mut short = [0u8; 31];
        assert_eq!(
            CmRequestRepr::default().emit(&mut short),
            Err(Error::Truncated)
        );
        assert_eq!(
            CmReplyRepr::default().emit(&mut short),
            Err(Error::Truncated)
        );
        assert_eq!(
            CmRejectRepr::new(CmStatus::NoResources).emit(&mut short[..3]),
            Err(Error::Truncated)
        );
    }
}
