//! Sans-I/O protocol engines: bytes and completions in, actions out. The same engines run
//! over kernel sockets, the user-space TCP stack and RDMA, so this crate depends on
//! `target-wire` only and never reads a clock or a socket.
//!
//! `block` holds what every engine asks of a backend; `nvme` the NVMe-oF controller,
//! `nvme_tcp` and `nvme_rdma` its TCP framing and RDMA binding; `scsi` and `iscsi` the SCSI
//! logical units and iSCSI; `output` the gather list NVMe/TCP and iSCSI send from.
#![forbid(unsafe_code)]

pub mod block;
pub mod iscsi;
pub mod nvme;
pub mod nvme_rdma;
pub mod nvme_tcp;
pub mod output;
pub mod scsi;

/// Bytes of output a connection's engine may hold before it stops taking input (see
/// `NvmeTcpQueue::receive` and `IscsiConn::receive`): a peer that stops reading while it
/// keeps sending requests is held to this plus the answers of its commands in flight.
pub const OUTPUT_HIGH_WATER: usize = 1 << 20;
