//! Sans-I/O protocol engines: bytes and completions in, actions out. The same engines run
//! over kernel sockets, the user-space TCP stack and RDMA, so this crate depends on
//! `target-wire` only and never reads a clock or a socket.
//!
//! Today: NVMe/TCP framing (`nvme_tcp`: connection negotiation, the PDU reader and writer)
//! and the subsystem/controller registry of the NVMe-oF controller (`nvme`). Command
//! handling and iSCSI follow.
#![forbid(unsafe_code)]

pub mod nvme;
pub mod nvme_tcp;
