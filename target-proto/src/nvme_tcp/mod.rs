//! NVMe/TCP transport framing (NVMe/TCP Transport Specification 1.0): connection
//! initialization (`icreq`), turning a TCP byte stream into validated PDUs (`reader`) and
//! building the PDUs a controller sends (`writer`).

pub mod host;
pub mod icreq;
pub mod queue;
pub mod reader;
pub mod writer;

use target_wire::nvme_tcp::Fes;

/// A fatal transport error: the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fatal {
    /// Answer with a TermReq carrying these and the offending header (the reader's
    /// `offending_header`), then close.
    Terminate { fes: Fes, fei: u32 },
    /// Close without a word: the peer's own TermReq was malformed (spec 7.4.7), or it
    /// terminated the connection itself.
    Close,
}

impl Fatal {
    pub(crate) const fn invalid_field(fei: u32) -> Self {
        Self::Terminate {
            fes: Fes::InvalidHeaderField,
            fei,
        }
    }
}

#[cfg(test)]
mod queue_tests;
