//! The blocking NVMe/TCP client the end-to-end tests use (from `target-initiator`).

pub use target_initiator::blocking::nvme::*;
