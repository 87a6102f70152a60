//! Checked zero-copy views and `Repr`s of the wire formats: NVMe SQE/CQE/SGL/status and the
//! data structures the target returns (`nvme`), NVMe/TCP PDUs (`nvme_tcp`), the RDMA CM
//! private data of NVMe/RDMA (`nvme_rdma`), CRC32C digests (`crc32c`), iSCSI PDUs and text
//! keys (`iscsi`); and the generic netlink messages that ask a device's AF_XDP abilities
//! (`netlink`).
//!
//! No I/O and no `unsafe`. A view (`Xxx<&[u8]>`) is made with `new_checked`, which validates
//! lengths once; after that no accessor can panic. `new_unchecked` is only for emitting into
//! a buffer the caller sized with `buffer_len`. A `Repr` is the parsed, validated form with
//! `parse`, `buffer_len` and `emit`.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

pub mod crc32c;
pub mod iscsi;
// `nvme` defines the `code_enum!` and `wire_view!` macros the modules after it use too.
#[macro_use]
pub mod nvme;
pub mod netlink;
pub mod nvme_rdma;
pub mod nvme_tcp;

/// Why bytes are not a valid instance of a wire type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the fixed part, or than a length field says.
    Truncated,
    /// A field holds a value the format does not allow.
    Malformed,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
        })
    }
}

pub type Result<T> = core::result::Result<T, Error>;
