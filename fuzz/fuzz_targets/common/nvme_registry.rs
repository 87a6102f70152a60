//! Shared by the single-queue NVMe fuzz targets (included with `#[path]`): a registry of one
//! subsystem, [`NQN`], open to any host, with namespace 1 of [`BLOCKS`] 512-byte blocks on
//! backend 0.

use std::sync::Mutex;

use target_proto::nvme::subsystem::{Namespace, Registry, Subsystem};

pub const NQN: &str = "nqn.fuzz";
pub const BLOCKS: u64 = 64;
/// Bytes of namespace 1.
pub const DISK: u64 = BLOCKS * 512;

pub fn registry(volatile_write_cache: bool) -> Mutex<Registry> {
    Mutex::new(Registry::new(vec![Subsystem {
        nqn: NQN.into(),
        serial: "S".into(),
        model: "M".into(),
        firmware: "F".into(),
        namespaces: vec![Namespace {
            nsid: 1,
            block_size: 512,
            blocks: BLOCKS,
            nguid: [1; 16],
            eui64: [2; 8],
            uuid: [3; 16],
            volatile_write_cache,
            deallocate: true,
            backend: 0,
            scsi_reservations: None,
        }],
        allowed_hosts: None,
    }]))
}
