//! Sans-I/O protocol engines: bytes and completions in, actions out. The same engines run
//! over kernel sockets, the user-space TCP stack and RDMA, so this crate depends on
//! `target-wire` only and never reads a clock or a socket.
//!
//! Today: the NVMe/TCP PDU reader and connection negotiation (`nvme_tcp`). The NVMe-oF
//! controller and iSCSI follow with their issues.
#![forbid(unsafe_code)]

pub mod nvme_tcp;
