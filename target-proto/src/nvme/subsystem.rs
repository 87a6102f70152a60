//! Subsystems, namespaces and the controllers created on them (NVMe Base 2.x, section 3.1
//! "Memory-based transport controller architecture" and NVMe-oF's dynamic controller model:
//! each admin-queue Connect with CNTLID FFFFh creates a new controller).
//!
//! The [`Registry`] is the only state shared between queues: it hands out controller IDs,
//! applies a subsystem's host allow-list, and says whether an I/O queue may attach to a
//! controller (its host and subsystem must match, and it must be enabled). Queues call it
//! at Connect, on CC.EN changes and at teardown; the I/O path never touches it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::scsi::LunReservations;

/// The NQN of the discovery subsystem (NVMe Base 2.x, section 4.7).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// A namespace as the controller describes it; the blocks themselves are the backend's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub nsid: u32,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    pub blocks: u64,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub uuid: [u8; 16],
    /// The backend caches writes until flushed (advertised as a volatile write cache).
    pub volatile_write_cache: bool,
    /// The backend can deallocate (DSM deallocate, Write Zeroes with DEAC).
    pub deallocate: bool,
    /// Opaque to the controller: user space's index of the namespace's backend, carried
    /// in every [`BlockIo`](super::controller::BlockIo).
    pub backend: u32,
    /// The reservations of the iSCSI LUN on the same medium, when the namespace is one:
    /// its I/O honours them as an initiator that is neither holder nor registrant.
    pub scsi_reservations: Option<Arc<LunReservations>>,
}

impl Namespace {
    /// log2 of the block size, as Identify Namespace's LBADS wants it.
    pub fn lba_shift(&self) -> u8 {
        self.block_size.trailing_zeros() as u8
    }
}

/// An NVM subsystem and its namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Namespaces sorted by NSID, NSIDs unique and non-zero.
    pub namespaces: Vec<Namespace>,
    /// Host NQNs allowed to connect; `None` allows any host.
    pub allowed_hosts: Option<Vec<String>>,
}

impl Subsystem {
    pub fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespaces
            .binary_search_by_key(&nsid, |n| n.nsid)
            .ok()
            .map(|i| &self.namespaces[i])
    }

    pub fn allows(&self, host_nqn: &str) -> bool {
        self.allowed_hosts
            .as_ref()
            .is_none_or(|hosts| hosts.iter().any(|h| h == host_nqn))
    }
}

/// A listening port, as the Discovery Log Page reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    /// PORTID in the discovery log.
    pub id: u16,
    /// `None`: every local address (the log then reports the one the host reached).
    pub addr: Option<std::net::IpAddr>,
    pub port: u16,
    /// Serves NVM subsystems (I/O), not only discovery.
    pub io: bool,
    /// The transport listening there.
    pub transport: PortTransport,
}

/// Which transport a [`Port`] is, for its discovery log entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PortTransport {
    #[default]
    Tcp,
    Rdma,
}

/// Why a Connect is refused, each mapping to a Connect status (NVMe-oF, Connect response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// No such subsystem (Connect Invalid Parameters, in the SUBNQN field).
    UnknownSubsystem,
    /// The host is not on the subsystem's list (Connect Invalid Host).
    HostNotAllowed,
    /// No such controller for an I/O queue, or it belongs to another host or subsystem
    /// (Connect Invalid Parameters, in CNTLID).
    UnknownController,
    /// An I/O queue's Host Identifier differs from the one its controller's admin queue
    /// gave (Connect Invalid Parameters, in HOSTID).
    HostIdMismatch,
    /// The controller is not enabled (CC.EN, CSTS.RDY) yet (Command Sequence Error).
    NotReady,
    /// The controller ID space is used up (Connect Controller Busy).
    Busy,
    /// The queue ID is beyond what Set Features Number of Queues granted, or already
    /// connected (Connect Invalid Parameters, in QID).
    InvalidQueue,
}

/// What a queue learns from a successful Connect.
#[derive(Clone, Debug)]
pub struct Attached {
    pub cntlid: u16,
    pub subsystem: Arc<Subsystem>,
    /// The discovery controller rather than an NVM controller.
    pub discovery: bool,
    /// Shared by the controller's queues: I/O queues count, the admin queue reports.
    pub stats: Arc<ControllerStats>,
}

/// What the SMART / Health log reports of a controller's I/O, counted by its I/O queues
/// (relaxed atomics: no lock on the I/O path).
#[derive(Debug, Default)]
pub struct ControllerStats {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub read_commands: AtomicU64,
    pub write_commands: AtomicU64,
}

#[derive(Debug)]
struct ControllerEntry {
    subsystem: Arc<Subsystem>,
    stats: Arc<ControllerStats>,
    host_nqn: String,
    /// The Host Identifier (HOSTID) of the admin queue's Connect.
    host_id: [u8; 16],
    ready: bool,
    /// I/O queues the host may create (from Set Features Number of Queues).
    io_queues: u16,
    connected: Vec<u16>,
}

/// Subsystems and live controllers. Single-threaded: user space shares it behind a lock.
#[derive(Debug)]
pub struct Registry {
    subsystems: Vec<Arc<Subsystem>>,
    discovery: Arc<Subsystem>,
    controllers: BTreeMap<u16, ControllerEntry>,
    next_cntlid: u16,
    ports: Vec<Port>,
}

/// Controller IDs 1..=FFEFh are valid (FFF0h and up are reserved, FFFFh means "any").
const MAX_CNTLID: u16 = 0xffef;

impl Registry {
    pub fn new(subsystems: Vec<Subsystem>) -> Self {
        let discovery = Subsystem {
            nqn: DISCOVERY_NQN.to_string(),
            serial: String::new(),
            model: String::new(),
            firmware: String::new(),
            namespaces: Vec::new(),
            allowed_hosts: None,
        };
        Self {
            subsystems: subsystems.into_iter().map(Arc::new).collect(),
            discovery: Arc::new(discovery),
            controllers: BTreeMap::new(),
            next_cntlid: 1,
            ports: Vec::new(),
        }
    }

    /// The ports the target listens on, for the Discovery Log Page.
    pub fn set_ports(&mut self, ports: Vec<Port>) {
        self.ports = ports;
    }

    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    pub fn subsystems(&self) -> &[Arc<Subsystem>] {
        &self.subsystems
    }

    /// Replaces the host allow list of subsystem `nqn` (`None`: any host). Connects from
    /// now on are checked against it; controllers already connected stay, as with Linux's
    /// nvmet. False when there is no such subsystem.
    pub fn set_allowed_hosts(&mut self, nqn: &str, hosts: Option<Vec<String>>) -> bool {
        let Some(s) = self.subsystems.iter_mut().find(|s| s.nqn == nqn) else {
            return false;
        };
        let mut changed = Subsystem::clone(s);
        changed.allowed_hosts = hosts;
        *s = Arc::new(changed);
        true
    }

    /// An admin-queue Connect (dynamic model): a new controller on `sub_nqn` for the host
    /// `host_nqn` with Host Identifier `host_id`.
    pub fn create_controller(
        &mut self,
        sub_nqn: &str,
        host_nqn: &str,
        host_id: [u8; 16],
    ) -> Result<Attached, ConnectError> {
        let (subsystem, discovery) = if sub_nqn == DISCOVERY_NQN {
            (Arc::clone(&self.discovery), true)
        } else {
            let s = self
                .subsystems
                .iter()
                .find(|s| s.nqn == sub_nqn)
                .ok_or(ConnectError::UnknownSubsystem)?;
            if !s.allows(host_nqn) {
                return Err(ConnectError::HostNotAllowed);
            }
            (Arc::clone(s), false)
        };
        let cntlid = self.allocate_cntlid().ok_or(ConnectError::Busy)?;
        let stats = Arc::new(ControllerStats::default());
        self.controllers.insert(
            cntlid,
            ControllerEntry {
                subsystem: Arc::clone(&subsystem),
                stats: Arc::clone(&stats),
                host_nqn: host_nqn.to_string(),
                host_id,
                ready: false,
                io_queues: 0,
                connected: Vec::new(),
            },
        );
        Ok(Attached {
            cntlid,
            subsystem,
            discovery,
            stats,
        })
    }

    fn allocate_cntlid(&mut self) -> Option<u16> {
        for _ in 0..MAX_CNTLID {
            let id = self.next_cntlid;
            self.next_cntlid = if id >= MAX_CNTLID { 1 } else { id + 1 };
            if !self.controllers.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// An I/O-queue Connect to controller `cntlid`: only the host that created it, with the
    /// same Host NQN and Host Identifier, may add queues to it.
    pub fn attach_io_queue(
        &mut self,
        cntlid: u16,
        sub_nqn: &str,
        host_nqn: &str,
        host_id: [u8; 16],
        qid: u16,
    ) -> Result<Attached, ConnectError> {
        let c = self
            .controllers
            .get_mut(&cntlid)
            .ok_or(ConnectError::UnknownController)?;
        // Another host's controller is answered as if it did not exist, as Linux's nvmet
        // does (nvmet_ctrl_find_get skips a controller whose host NQN differs).
        if c.subsystem.nqn != sub_nqn || c.host_nqn != host_nqn || c.subsystem.nqn == DISCOVERY_NQN
        {
            return Err(ConnectError::UnknownController);
        }
        // nvmet does not compare HOSTID; FreeBSD's nvmft does, pointing at the field.
        if c.host_id != host_id {
            return Err(ConnectError::HostIdMismatch);
        }
        if !c.ready {
            return Err(ConnectError::NotReady);
        }
        if qid == 0 || qid > c.io_queues || c.connected.contains(&qid) {
            return Err(ConnectError::InvalidQueue);
        }
        c.connected.push(qid);
        Ok(Attached {
            cntlid,
            subsystem: Arc::clone(&c.subsystem),
            discovery: false,
            stats: Arc::clone(&c.stats),
        })
    }

    /// The admin queue granted `count` I/O queues (Set Features Number of Queues).
    pub fn set_io_queues(&mut self, cntlid: u16, count: u16) {
        if let Some(c) = self.controllers.get_mut(&cntlid) {
            c.io_queues = count;
        }
    }

    /// CC.EN changed: I/O queues may connect only while the controller is ready.
    pub fn set_ready(&mut self, cntlid: u16, ready: bool) {
        if let Some(c) = self.controllers.get_mut(&cntlid) {
            c.ready = ready;
        }
    }

    /// An I/O queue went away.
    pub fn detach_io_queue(&mut self, cntlid: u16, qid: u16) {
        if let Some(c) = self.controllers.get_mut(&cntlid) {
            c.connected.retain(|&q| q != qid);
        }
    }

    /// The admin queue went away (disconnect, keep-alive expiry, shutdown): the controller
    /// is gone and its I/O queues may no longer attach.
    pub fn remove_controller(&mut self, cntlid: u16) {
        self.controllers.remove(&cntlid);
    }

    /// Whether the controller still exists (I/O queues end when it does not).
    pub fn controller_alive(&self, cntlid: u16) -> bool {
        self.controllers.contains_key(&cntlid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [7; 16];

    fn subsystem(nqn: &str, hosts: Option<&[&str]>) -> Subsystem {
        Subsystem {
            nqn: nqn.into(),
            serial: "SN1".into(),
            model: "xdp-target".into(),
            firmware: "0.1".into(),
            namespaces: vec![Namespace {
                nsid: 1,
                block_size: 512,
                blocks: 2048,
                nguid: [1; 16],
                eui64: [2; 8],
                uuid: [3; 16],
                volatile_write_cache: false,
                deallocate: true,
                backend: 0,
                scsi_reservations: None,
            }],
            allowed_hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn admin_then_io_connect() {
        let mut r = Registry::new(vec![subsystem("nqn.a", None)]);
        let a = r.create_controller("nqn.a", "nqn.host1", ID).unwrap();
        assert_eq!((a.cntlid, a.discovery), (1, false));
        assert_eq!(
            r.attach_io_queue(1, "nqn.a", "nqn.host1", ID, 1)
                .unwrap_err(),
            ConnectError::NotReady
        );
        r.set_ready(1, true);
        assert_eq!(
            r.attach_io_queue(1, "nqn.a", "nqn.host1", ID, 1)
                .unwrap_err(),
            ConnectError::InvalidQueue
        );
        r.set_io_queues(1, 2);
        assert!(r.attach_io_queue(1, "nqn.a", "nqn.host1", ID, 1).is_ok());
        assert_eq!(
            r.attach_io_queue(1, "nqn.a", "nqn.host1", ID, 1)
                .unwrap_err(),
            ConnectError::InvalidQueue,
            "twice"
        );
        assert_eq!(
            r.attach_io_queue(1, "nqn.a", "nqn.host1", ID, 3)
                .unwrap_err(),
            ConnectError::InvalidQueue
        );
        assert_eq!(
            r.attach_io_queue(1, "nqn.a", "nqn.other", ID, 2)
                .unwrap_err(),
            ConnectError::UnknownController
        );
        assert_eq!(
            r.attach_io_queue(1, "nqn.a", "nqn.host1", [8; 16], 2)
                .unwrap_err(),
            ConnectError::HostIdMismatch
        );
        r.detach_io_queue(1, 1);
        assert!(r.attach_io_queue(1, "nqn.a", "nqn.host1", ID, 1).is_ok());
        r.remove_controller(1);
        assert!(!r.controller_alive(1));
        assert_eq!(
            r.attach_io_queue(1, "nqn.a", "nqn.host1", ID, 2)
                .unwrap_err(),
            ConnectError::UnknownController
        );
    }

    #[test]
    fn allow_lists_change_for_new_connects_only() {
        let mut r = Registry::new(vec![subsystem("nqn.a", None)]);
        let before = r.create_controller("nqn.a", "nqn.h1", ID).unwrap();
        assert!(r.set_allowed_hosts("nqn.a", Some(vec!["nqn.h2".into()])));
        assert!(!r.set_allowed_hosts("nqn.none", None));
        assert_eq!(
            r.create_controller("nqn.a", "nqn.h1", ID).unwrap_err(),
            ConnectError::HostNotAllowed
        );
        assert!(r.create_controller("nqn.a", "nqn.h2", ID).is_ok());
        assert!(r.controller_alive(before.cntlid), "connected hosts stay");
        assert!(r.set_allowed_hosts("nqn.a", None));
        assert!(r.create_controller("nqn.a", "nqn.h1", ID).is_ok());
    }

    #[test]
    fn allow_list_discovery_and_unknown_subsystems() {
        let mut r = Registry::new(vec![subsystem("nqn.a", Some(&["nqn.good"]))]);
        assert_eq!(
            r.create_controller("nqn.a", "nqn.bad", ID).unwrap_err(),
            ConnectError::HostNotAllowed
        );
        assert!(r.create_controller("nqn.a", "nqn.good", ID).is_ok());
        assert_eq!(
            r.create_controller("nqn.b", "nqn.good", ID).unwrap_err(),
            ConnectError::UnknownSubsystem
        );
        let d = r
            .create_controller(DISCOVERY_NQN, "nqn.anyone", ID)
            .unwrap();
        assert!(d.discovery);
        r.set_ready(d.cntlid, true);
        r.set_io_queues(d.cntlid, 4);
        assert_eq!(
            r.attach_io_queue(d.cntlid, DISCOVERY_NQN, "nqn.anyone", ID, 1)
                .unwrap_err(),
            ConnectError::UnknownController,
            "discovery controllers have no I/O queues"
        );
    }

    #[test]
    fn controller_ids_are_reused_only_when_free_and_never_reserved() {
        let mut r = Registry::new(vec![subsystem("nqn.a", None)]);
        r.next_cntlid = MAX_CNTLID;
        assert_eq!(
            r.create_controller("nqn.a", "h", ID).unwrap().cntlid,
            MAX_CNTLID
        );
        assert_eq!(
            r.create_controller("nqn.a", "h", ID).unwrap().cntlid,
            1,
            "wraps past the reserved range"
        );
        assert_eq!(r.create_controller("nqn.a", "h", ID).unwrap().cntlid, 2);
        r.next_cntlid = 1;
        assert_eq!(
            r.create_controller("nqn.a", "h", ID).unwrap().cntlid,
            3,
            "skips live IDs"
        );
    }

    #[test]
    fn namespaces_by_nsid() {
        let s = subsystem("nqn.a", None);
        assert_eq!(s.namespace(1).map(|n| n.lba_shift()), Some(9));
        assert!(s.namespace(2).is_none());
        assert!(s.namespace(0).is_none());
    }
}
