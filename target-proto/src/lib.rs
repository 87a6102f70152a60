//! Sans-I/O protocol engines (NVMe-oF controller and discovery, NVMe/TCP framing, iSCSI
//! login/session, SCSI emulation): bytes and completions in, actions out. The same engines
//! run over kernel sockets, the user-space TCP stack and RDMA, so this crate may depend on
//! `target-wire` only. Filled by the NVMe/TCP and iSCSI issues; empty until then.
#![no_std]
#![forbid(unsafe_code)]
