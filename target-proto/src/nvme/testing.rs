//! What the engine tests of every NVMe transport share: a registry with one subsystem of
//! memory namespaces, and the memory "disk" that runs their block operations.

use std::sync::{Arc, Mutex};

use super::controller::{BlockOp, IoOutcome};
use super::subsystem::{Namespace, Port, PortTransport, Registry, Subsystem};
use crate::scsi::LunReservations;

pub(crate) const NQN: &str = "nqn.2026-11.io.xdp-target:test";
pub(crate) const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:test-host";
pub(crate) const HOST_ID: [u8; 16] = [0x5a; 16];
/// Blocks of 512 bytes per namespace.
pub(crate) const BLOCKS: u64 = 4096;

pub(crate) fn registry() -> Mutex<Registry> {
    registry_of(vec![subsystem(NQN, &[0], None)])
}

/// The registry; NSID 1 is also the iSCSI LUN with these reservations, when given.
pub(crate) fn registry_with(scsi_reservations: Option<Arc<LunReservations>>) -> Mutex<Registry> {
    let mut s = subsystem(NQN, &[0], None);
    s.namespaces[0].scsi_reservations = scsi_reservations;
    registry_of(vec![s])
}

/// A subsystem of `BLOCKS`-block namespaces 1, 2, ... on `backends`, open to `hosts`.
pub(crate) fn subsystem(nqn: &str, backends: &[u32], hosts: Option<&[&str]>) -> Subsystem {
    Subsystem {
        nqn: nqn.into(),
        serial: "XDPT0001".into(),
        model: "xdp-target memory".into(),
        firmware: "0.1.0".into(),
        namespaces: (1..)
            .zip(backends)
            .map(|(nsid, &backend)| Namespace {
                nsid,
                block_size: 512,
                blocks: BLOCKS,
                nguid: [0x11; 16],
                eui64: [0x22; 8],
                uuid: [0x33; 16],
                volatile_write_cache: false,
                deallocate: true,
                backend,
                scsi_reservations: None,
            })
            .collect(),
        allowed_hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
    }
}

pub(crate) fn registry_of(subsystems: Vec<Subsystem>) -> Mutex<Registry> {
    let mut r = Registry::new(subsystems);
    r.set_ports(vec![Port {
        id: 1,
        addr: None,
        port: 4420,
        io: true,
        transport: PortTransport::Tcp,
    }]);
    Mutex::new(r)
}

/// A disk of `BLOCKS` zeroed 512-byte blocks.
pub(crate) fn disk() -> Mutex<Vec<u8>> {
    Mutex::new(vec![0u8; (BLOCKS * 512) as usize])
}

/// Runs one block operation against the memory disk, its data in `buf` (the slot buffer).
pub(crate) fn run_block_op(disk: &mut [u8], op: &BlockOp, buf: &mut [u8]) -> IoOutcome {
    let range = |o: u64, l: u64| o as usize..(o + l) as usize;
    match *op {
        BlockOp::Read { offset, len } => buf.copy_from_slice(&disk[range(offset, len)]),
        BlockOp::Write { offset, len, .. } => disk[range(offset, len)].copy_from_slice(buf),
        BlockOp::WriteZeroes { offset, len, .. } => disk[range(offset, len)].fill(0),
        BlockOp::Compare { offset, len } => {
            if disk[range(offset, len)] != *buf {
                return IoOutcome::Miscompare;
            }
        }
        BlockOp::Flush | BlockOp::FlushAll { .. } => {}
        BlockOp::Deallocate { ref ranges } => {
            for &(o, l) in ranges {
                disk[range(o, l)].fill(0);
            }
        }
    }
    IoOutcome::Ok
}
