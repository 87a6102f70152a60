//! Accepting or rejecting an RDMA CM connect request for one NVMe queue: NVM Express RDMA
//! Transport Specification 1.0, section 3 (RDMA_CM_REQUEST, RDMA_CM_ACCEPT and
//! RDMA_CM_REJECT private data), checked as Linux's target does
//! (`nvmet_rdma_parse_cm_connect_req`, `nvmet_rdma_cm_accept`/`_reject` in
//! `drivers/nvme/target/rdma.c`), with the queue-depth limits of this controller.
//!
//! Sizes: HSQSIZE is 0's based, so the host may have HSQSIZE + 1 commands outstanding; that
//! is the controller's receive queue (the receives the transport keeps posted) and the
//! accept's CRQSIZE. HRQSIZE is the host's receive queue, where responses land: it must hold
//! a response for every command outstanding, so at least HSQSIZE + 1 (Linux sends exactly
//! that: "a 1's based representation of sqsize").
//!
//! Invariant: a [`Negotiated`] always has `2 <= depth <= MAX_QUEUE_ENTRIES` (at most
//! [`ADMIN_QUEUE_DEPTH`] on the admin queue) and `host_recv_depth >= depth`.

use target_wire::nvme_rdma::{CmRejectRepr, CmReplyRepr, CmRequestRepr, CmStatus, RECFMT_1_0};

use crate::nvme::controller::{MAX_IO_QUEUES, MAX_QUEUE_ENTRIES};

/// Entries of the admin queue at most: Linux's `NVME_AQ_DEPTH`, the depth its host always
/// asks for (HSQSIZE 31, HRQSIZE 32), and the most `nvmet-rdma` accepts.
pub const ADMIN_QUEUE_DEPTH: u16 = 32;

/// What the transport can give a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmLimits {
    /// The deepest queue (entries) accepted: the transport lowers it to what its device's
    /// queue pairs hold. Never more than the controller's `MAX_QUEUE_ENTRIES`.
    pub max_depth: u16,
    /// The highest I/O queue ID accepted.
    pub max_qid: u16,
}

impl Default for CmLimits {
    fn default() -> Self {
        Self {
            max_depth: MAX_QUEUE_ENTRIES,
            max_qid: MAX_IO_QUEUES,
        }
    }
}

/// What an accepted connect request set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The NVMe queue this queue pair carries (0: admin).
    pub qid: u16,
    /// Commands the host may have outstanding (HSQSIZE + 1): the receives, of
    /// [`RECV_BUFFER_LEN`](super::queue::RECV_BUFFER_LEN) bytes each, the transport keeps
    /// posted, and the CRQSIZE of the accept.
    pub depth: u16,
    /// HRQSIZE: responses the host can receive at once.
    pub host_recv_depth: u16,
    /// For an I/O queue, the controller the host names (Linux: 0 on the admin queue). The
    /// Connect command's own CNTLID is what the controller acts on.
    pub cntlid: u16,
}

impl Negotiated {
    /// The accept's private data.
    pub fn reply(&self) -> CmReplyRepr {
        CmReplyRepr {
            recfmt: RECFMT_1_0,
            crqsize: self.depth,
        }
    }
}

/// Checks a connect request's private data. `Ok` holds the accept's private data (its
/// [`to_bytes`](CmReplyRepr::to_bytes) go to `rdma_accept`) and what the queue needs;
/// `Err` the reject (its bytes go to `rdma_reject`).
pub fn accept(
    private_data: &[u8],
    limits: &CmLimits,
) -> Result<(CmReplyRepr, Negotiated), CmRejectRepr> {
    let reject = |s| Err(CmRejectRepr::new(s));
    // Linux checks only that there is some; the format is 32 bytes.
    let Ok(req) = CmRequestRepr::parse(private_data) else {
        return reject(CmStatus::InvalidLen);
    };
    if req.recfmt != RECFMT_1_0 {
        return reject(CmStatus::InvalidRecfmt);
    }
    // The Connect command would refuse it too; refusing it here costs the host no queue pair.
    if req.qid > limits.max_qid {
        return reject(CmStatus::InvalidQid);
    }
    let max_depth = if req.qid == 0 {
        ADMIN_QUEUE_DEPTH
    } else {
        MAX_QUEUE_ENTRIES
    }
    .min(limits.max_depth);
    let depth = req.sq_entries();
    // A queue of one entry is always full (SQSIZE 0 is invalid in a Connect, too).
    if depth < 2 || depth > u32::from(max_depth) {
        return reject(CmStatus::InvalidHsqsize);
    }
    if u32::from(req.hrqsize) < depth {
        return reject(CmStatus::InvalidHrqsize);
    }
    let n = Negotiated {
        qid: req.qid,
        depth: u16::try_from(depth).expect("bounded by max_depth"),
        host_recv_depth: req.hrqsize,
        cntlid: req.cntlid,
    };
    Ok((n.reply(), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use target_wire::nvme_rdma::CM_REQ_LEN;

    fn req(qid: u16, hrqsize: u16, hsqsize: u16) -> [u8; CM_REQ_LEN] {
        let mut b = [0u8; CM_REQ_LEN];
        CmRequestRepr {
            recfmt: 0,
            qid,
            hrqsize,
            hsqsize,
            cntlid: if qid == 0 { 0 } else { 1 },
        }
        .emit(&mut b)
        .unwrap();
        b
    }

    fn status(r: Result<(CmReplyRepr, Negotiated), CmRejectRepr>) -> CmStatus {
        r.expect_err("rejected").status
    }

    #[test]
    fn linux_admin_and_io_queue_requests_are_accepted() {
        let l = CmLimits::default();
        let (rep, n) = accept(&req(0, 32, 31), &l).unwrap();
        assert_eq!(
            n,
            Negotiated {
                qid: 0,
                depth: 32,
                host_recv_depth: 32,
                cntlid: 0
            }
        );
        assert_eq!(rep.to_bytes()[..4], [0, 0, 32, 0], "CRQSIZE 32");
        let (rep, n) = accept(&req(4, 128, 127), &l).unwrap();
        assert_eq!((n.qid, n.depth, n.cntlid), (4, 128, 1));
        assert_eq!(rep.crqsize, 128);
        // Padding after the 32 bytes, as the CM delivers it.
        let mut padded = [0u8; 56];
        padded[..32].copy_from_slice(&req(1, 64, 63));
        assert_eq!(accept(&padded, &l).unwrap().1.depth, 64);
    }

    #[test]
    fn refusals_carry_the_status_nvmet_rdma_sends() {
        let l = CmLimits::default();
        assert_eq!(status(accept(&[], &l)), CmStatus::InvalidLen);
        assert_eq!(
            status(accept(&req(0, 32, 31)[..31], &l)),
            CmStatus::InvalidLen
        );
        let mut b = req(0, 32, 31);
        b[0] = 1;
        assert_eq!(status(accept(&b, &l)), CmStatus::InvalidRecfmt);
        assert_eq!(status(accept(&req(65, 32, 31), &l)), CmStatus::InvalidQid);
        // An admin queue deeper than NVME_AQ_DEPTH; an I/O queue deeper than MQES + 1.
        assert_eq!(
            status(accept(&req(0, 33, 32), &l)),
            CmStatus::InvalidHsqsize
        );
        assert_eq!(
            status(accept(&req(1, 129, 128), &l)),
            CmStatus::InvalidHsqsize
        );
        assert_eq!(
            status(accept(&req(1, u16::MAX, u16::MAX), &l)),
            CmStatus::InvalidHsqsize,
            "HSQSIZE + 1 does not wrap"
        );
        assert_eq!(status(accept(&req(1, 8, 0), &l)), CmStatus::InvalidHsqsize);
        // Fewer host receives than commands it may send: responses would find no buffer.
        assert_eq!(
            status(accept(&req(1, 127, 127), &l)),
            CmStatus::InvalidHrqsize
        );
        assert_eq!(
            CmRejectRepr::new(CmStatus::InvalidHrqsize).to_bytes(),
            [0, 0, 5, 0]
        );
    }

    #[test]
    fn the_transport_can_lower_the_depth() {
        let l = CmLimits {
            max_depth: 16,
            max_qid: 2,
        };
        assert_eq!(
            status(accept(&req(0, 32, 31), &l)),
            CmStatus::InvalidHsqsize
        );
        assert_eq!(accept(&req(2, 16, 15), &l).unwrap().1.depth, 16);
        assert_eq!(status(accept(&req(3, 16, 15), &l)), CmStatus::InvalidQid);
        let over = CmLimits {
            max_depth: u16::MAX,
            max_qid: 2,
        };
        assert_eq!(
            status(accept(&req(1, 1024, 1023), &over)),
            CmStatus::InvalidHsqsize,
            "never beyond the controller's MQES"
        );
    }
}
