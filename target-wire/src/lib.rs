//! Checked zero-copy views and `Repr`s of the wire formats: Ethernet/ARP/IPv4/IPv6/TCP,
//! NVMe SQE/CQE/SGL/status, NVMe/TCP PDUs, iSCSI BHS/AHS/text keys, CRC32C digests.
//!
//! No I/O and no `unsafe`: every type here is a view over bytes that are validated once in
//! `new_checked`. The NVMe/TCP and iSCSI issues fill this crate; until then it is empty, and
//! nothing in the project claims otherwise.
#![no_std]
#![forbid(unsafe_code)]
