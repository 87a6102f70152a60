//! Subsystems, namespaces and the controllers created on them (NVMe Base 2.x, section 3.1
//! "Memory-based transport controller architecture" and NVMe-oF's dynamic controller model:
//! each admin-queue Connect with CNTLID FFFFh creates a new controller).
//!
//! The [`Registry`] is the only state shared between queues: it hands out controller IDs,
//! applies a subsystem's host allow-list, and says whether an I/O queue may attach to a
//! controller (its host and subsystem must match, and it must be enabled). Queues call it
//! at Connect, on CC.EN changes and at teardown; the I/O path never touches it.
//!
//! Subsystems and namespaces change at run time (`xdp-target ctl`): the registry swaps in a
//! new [`Subsystem`] and bumps its epoch, which every queue compares with one atomic load
//! per command before taking the new subsystem; each controller of the subsystem notes the
//! NSID in its Changed Namespace List and owes its host a Namespace Attribute Changed
//! event (NVMe Base 2.x, 5.2 "Asynchronous Event Request", 5.16.1.5 "Changed Namespace
//! List"). Removing a subsystem ends its controllers, as Linux's nvmet does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Shared by the controller's queues: I/O queues count, the admin queue reports. Also
    /// the controller's identity: a controller ID can be reused once its controller is
    /// gone, its stats cannot.
    pub stats: Arc<ControllerStats>,
    /// The registry's epoch (see [`Registry::epoch`]) and the value it had when
    /// `subsystem` was taken.
    pub epoch: Arc<AtomicU64>,
    pub seen_epoch: u64,
}

impl Attached {
    /// Whether the subsystem changed since this queue took it (one atomic load).
    pub fn stale(&self) -> bool {
        self.epoch.load(Ordering::Acquire) != self.seen_epoch
    }
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
    changed: ChangedNamespaces,
}

/// Entries in the Changed Namespace List log page (LID 04h): 4 KiB of NSIDs.
pub const CHANGED_NS_LIST_ENTRIES: usize = 1024;

/// A controller's Changed Namespace List and its Namespace Attribute Changed event.
#[derive(Debug, Default)]
struct ChangedNamespaces {
    /// NSIDs changed since the host last read the log page, sorted, at most
    /// [`CHANGED_NS_LIST_ENTRIES`]; `overflow` once more changed.
    nsids: Vec<u32>,
    overflow: bool,
    /// An event happened that no Asynchronous Event Request has reported yet.
    pending: bool,
    /// An event was reported: further ones are masked until the host reads the log page
    /// with RAE cleared (NVMe Base 2.x, 5.2.1).
    masked: bool,
}

impl ChangedNamespaces {
    fn note(&mut self, nsid: u32) {
        if let Err(i) = self.nsids.binary_search(&nsid) {
            if self.nsids.len() < CHANGED_NS_LIST_ENTRIES {
                self.nsids.insert(i, nsid);
            } else {
                self.overflow = true;
            }
        }
        if !self.masked {
            self.pending = true;
        }
    }

    /// The log page; `clear` (RAE cleared) empties the list and unmasks the event.
    fn page(&mut self, clear: bool) -> Vec<u8> {
        let mut b = vec![0u8; CHANGED_NS_LIST_ENTRIES * 4];
        if self.overflow {
            // More than 1024 changed: the first entry is FFFFFFFFh, the rest zero.
            b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        } else {
            for (i, n) in self.nsids.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
            }
        }
        if clear {
            *self = Self::default();
        }
        b
    }
}

/// Why a change of subsystems or namespaces is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeError {
    NoSubsystem(String),
    SubsystemExists(String),
    NoNamespace(String, u32),
    NamespaceExists(String, u32),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSubsystem(n) => write!(f, "no subsystem {n:?}"),
            Self::SubsystemExists(n) => write!(f, "subsystem {n:?} exists already"),
            Self::NoNamespace(n, id) => write!(f, "subsystem {n:?} has no namespace {id}"),
            Self::NamespaceExists(n, id) => {
                write!(f, "subsystem {n:?} has a namespace {id} already")
            }
        }
    }
}

impl std::error::Error for ChangeError {}

/// Subsystems and live controllers. Single-threaded: user space shares it behind a lock.
#[derive(Debug)]
pub struct Registry {
    subsystems: Vec<Arc<Subsystem>>,
    discovery: Arc<Subsystem>,
    controllers: BTreeMap<u16, ControllerEntry>,
    next_cntlid: u16,
    ports: Vec<Port>,
    /// Bumped on every change of a subsystem's namespaces (shared with every queue).
    epoch: Arc<AtomicU64>,
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
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The controller `a` attached to, if it is still there (the same controller: its ID
    /// may have been handed out again since).
    fn entry(&mut self, a: &Attached) -> Option<&mut ControllerEntry> {
        self.controllers
            .get_mut(&a.cntlid)
            .filter(|c| Arc::ptr_eq(&c.stats, &a.stats))
    }

    fn attached(&self, cntlid: u16, c: &ControllerEntry, discovery: bool) -> Attached {
        Attached {
            cntlid,
            subsystem: Arc::clone(&c.subsystem),
            discovery,
            stats: Arc::clone(&c.stats),
            epoch: Arc::clone(&self.epoch),
            seen_epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    /// Adds a subsystem (no controller can be on it yet).
    pub fn add_subsystem(&mut self, s: Subsystem) -> Result<(), ChangeError> {
        if s.nqn == DISCOVERY_NQN || self.subsystems.iter().any(|x| x.nqn == s.nqn) {
            return Err(ChangeError::SubsystemExists(s.nqn));
        }
        self.subsystems.push(Arc::new(s));
        Ok(())
    }

    /// Removes subsystem `nqn` and every controller on it: their queues end at their next
    /// tick ("its controller is gone"), as nvmet ends them when a subsystem is deleted.
    /// Returns how many controllers went.
    pub fn remove_subsystem(&mut self, nqn: &str) -> Result<usize, ChangeError> {
        let i = self
            .subsystems
            .iter()
            .position(|s| s.nqn == nqn)
            .ok_or_else(|| ChangeError::NoSubsystem(nqn.to_string()))?;
        self.subsystems.remove(i);
        let before = self.controllers.len();
        self.controllers.retain(|_, c| c.subsystem.nqn != nqn);
        Ok(before - self.controllers.len())
    }

    /// Adds namespace `ns` to subsystem `nqn`.
    pub fn add_namespace(&mut self, nqn: &str, ns: Namespace) -> Result<(), ChangeError> {
        let nsid = ns.nsid;
        self.change_namespaces(nqn, nsid, |list| {
            match list.binary_search_by_key(&nsid, |n| n.nsid) {
                Ok(_) => Err(ChangeError::NamespaceExists(nqn.to_string(), nsid)),
                Err(i) => {
                    list.insert(i, ns);
                    Ok(())
                }
            }
        })
    }

    /// Removes namespace `nsid` of subsystem `nqn` and returns it.
    pub fn remove_namespace(&mut self, nqn: &str, nsid: u32) -> Result<Namespace, ChangeError> {
        self.change_namespaces(nqn, nsid, |list| {
            match list.binary_search_by_key(&nsid, |n| n.nsid) {
                Ok(i) => Ok(list.remove(i)),
                Err(_) => Err(ChangeError::NoNamespace(nqn.to_string(), nsid)),
            }
        })
    }

    /// Gives namespace `nsid` of subsystem `nqn` a new size in blocks.
    pub fn resize_namespace(
        &mut self,
        nqn: &str,
        nsid: u32,
        blocks: u64,
    ) -> Result<(), ChangeError> {
        self.change_namespaces(nqn, nsid, |list| {
            match list.binary_search_by_key(&nsid, |n| n.nsid) {
                Ok(i) => {
                    list[i].blocks = blocks;
                    Ok(())
                }
                Err(_) => Err(ChangeError::NoNamespace(nqn.to_string(), nsid)),
            }
        })
    }

    /// Changes subsystem `nqn`'s namespaces with `f`; when it succeeds, the new subsystem
    /// replaces the old one everywhere, every controller on it notes `nsid` as changed,
    /// and the epoch moves so that the queues take the new subsystem.
    fn change_namespaces<T>(
        &mut self,
        nqn: &str,
        nsid: u32,
        f: impl FnOnce(&mut Vec<Namespace>) -> Result<T, ChangeError>,
    ) -> Result<T, ChangeError> {
        let s = self
            .subsystems
            .iter_mut()
            .find(|s| s.nqn == nqn)
            .ok_or_else(|| ChangeError::NoSubsystem(nqn.to_string()))?;
        let mut changed = Subsystem::clone(s);
        let out = f(&mut changed.namespaces)?;
        let changed = Arc::new(changed);
        *s = Arc::clone(&changed);
        for c in self.controllers.values_mut() {
            if c.subsystem.nqn == nqn {
                c.subsystem = Arc::clone(&changed);
                c.changed.note(nsid);
            }
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(out)
    }

    /// The subsystem as it is now for the controller `a` is on (`None`: the controller is
    /// gone), and the epoch it belongs to.
    pub fn refresh(&self, a: &Attached) -> Option<(Arc<Subsystem>, u64)> {
        let epoch = self.epoch.load(Ordering::Acquire);
        self.controllers
            .get(&a.cntlid)
            .filter(|c| Arc::ptr_eq(&c.stats, &a.stats))
            .map(|c| (Arc::clone(&c.subsystem), epoch))
    }

    /// Whether controller `a` owes its host a Namespace Attribute Changed event; taking it
    /// masks further ones until the host reads the Changed Namespace List.
    pub fn take_namespace_notice(&mut self, a: &Attached) -> bool {
        match self.entry(a) {
            Some(c) if c.changed.pending => {
                c.changed.pending = false;
                c.changed.masked = true;
                true
            }
            _ => false,
        }
    }

    /// The Changed Namespace List log page of controller `a`; `clear` (RAE cleared) empties
    /// it and unmasks the event.
    pub fn changed_namespace_list(&mut self, a: &Attached, clear: bool) -> Vec<u8> {
        match self.entry(a) {
            Some(c) => c.changed.page(clear),
            None => vec![0u8; CHANGED_NS_LIST_ENTRIES * 4],
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
        let entry = ControllerEntry {
            subsystem,
            stats: Arc::new(ControllerStats::default()),
            host_nqn: host_nqn.to_string(),
            host_id,
            ready: false,
            io_queues: 0,
            connected: Vec::new(),
            changed: ChangedNamespaces::default(),
        };
        let attached = self.attached(cntlid, &entry, discovery);
        self.controllers.insert(cntlid, entry);
        Ok(attached)
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
        let c = &self.controllers[&cntlid];
        Ok(self.attached(cntlid, c, false))
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
    pub fn detach_io_queue(&mut self, a: &Attached, qid: u16) {
        if let Some(c) = self.entry(a) {
            c.connected.retain(|&q| q != qid);
        }
    }

    /// The admin queue went away (disconnect, keep-alive expiry, shutdown): the controller
    /// is gone and its I/O queues may no longer attach.
    pub fn remove_controller(&mut self, a: &Attached) {
        if self.entry(a).is_some() {
            self.controllers.remove(&a.cntlid);
        }
    }

    /// Whether the controller `a` attached to still exists (its queues end when it does
    /// not: its admin queue went, or its subsystem was removed).
    pub fn controller_alive(&self, a: &Attached) -> bool {
        self.controllers
            .get(&a.cntlid)
            .is_some_and(|c| Arc::ptr_eq(&c.stats, &a.stats))
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
        let io = r.attach_io_queue(1, "nqn.a", "nqn.host1", ID, 2).unwrap();
        r.detach_io_queue(&io, 1);
        assert!(r.attach_io_queue(1, "nqn.a", "nqn.host1", ID, 1).is_ok());
        r.remove_controller(&a);
        assert!(!r.controller_alive(&a));
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
        assert!(r.controller_alive(&before), "connected hosts stay");
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
