//! The target assembled from its configuration: the backends, the NVMe subsystems and iSCSI
//! targets over them (an iSCSI LUN and an NVMe namespace can be the same backend), the
//! registries and parameters every reactor shares, and the transports started on them
//! (`transport::socket` always, `transport::xdp` with `--xdp`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use target_proto::iscsi::chap::{ChapConfig, ChapSecret};
use target_proto::iscsi::conn::{ConnParams, Timers};
use target_proto::iscsi::params::TargetLimits;
use target_proto::iscsi::{Portal, Registry as IscsiRegistry, TargetNode};
use target_proto::nvme::subsystem::{Namespace, Port, PortTransport, Registry, Subsystem};
use target_proto::nvme_tcp::icreq::ControllerParams;
use target_proto::scsi::{LunConfig, ScsiTarget};
use tracing::{info, warn};

use crate::backend::{Backend, FileBackend, FileBackendError, MemoryBackend};
use crate::config::{BackendKind, ChapCredentials, Config, NamespaceConfig, SubsystemConfig};
use crate::metrics::{Metrics, NamespaceName};
use crate::reactor::block::{BackendEntry, Backends};
pub use crate::reactor::engine::Proto;
use crate::reactor::engine::Shared;

/// After the last event, keep polling without sleeping this long: waking a sleeping CPU
/// (worse, a virtual one) costs tens of microseconds per request at low queue depth,
/// while an idle target still sleeps and costs nothing.
const BUSY_POLL: Duration = Duration::from_micros(200);
/// MAXH2CDATA offered to hosts.
const MAX_H2C_DATA: u32 = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source} (is another target using the port?)")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot start a reactor: {0}")]
    Reactor(io::Error),
    #[error("namespace backend: {0}")]
    Backend(#[from] FileBackendError),
    #[error("cannot set up io_uring for the file backends: {0} (kernel 5.6 or later is needed)")]
    Uring(io::Error),
    #[error("AF_XDP is required (xdp.require_afxdp) but unusable: {0}")]
    AfXdp(crate::transport::xdp::AfXdpError),
    #[error("NVMe/RDMA is required (rdma.require) but unusable: {0}")]
    Rdma(crate::transport::rdma::RdmaError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot serve metrics on {addr}: {source} (metrics.listen or --metrics)")]
    MetricsListen { addr: SocketAddr, source: io::Error },
}

/// The running transports; [`Server::stop`] ends them.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The registries the transports serve from, for the control socket to change.
    pub registry: Arc<Mutex<Registry>>,
    pub iscsi_registry: Arc<Mutex<IscsiRegistry>>,
    /// The backends and metrics, for the control socket to add namespaces to.
    pub backends: Arc<Backends>,
    pub metrics: Arc<Metrics>,
    /// The reactors, for the control socket to add and remove listeners.
    pub listeners: Arc<crate::transport::listeners::Listeners>,
}

impl Server {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// What the configuration builds: NVMe subsystems, iSCSI targets and the backends both
/// point at.
struct Built {
    subsystems: Vec<Subsystem>,
    targets: Vec<TargetNode>,
    backends: Vec<Arc<Backend>>,
    /// Each backend's subsystem and NSID, for the metrics.
    names: Vec<NamespaceName>,
}

/// The CHAP an iSCSI target of subsystem `s` requires (and answers, for mutual CHAP).
pub(crate) fn chap_config(s: &SubsystemConfig) -> Option<ChapConfig> {
    s.chap.as_ref().map(|c| ChapConfig {
        initiator: chap(c),
        target: s.mutual_chap.as_ref().map(chap),
    })
}

fn chap(c: &ChapCredentials) -> ChapSecret {
    ChapSecret {
        name: c.user.clone(),
        secret: c.secret.as_bytes().to_vec(),
    }
}

/// Opens (or creates) namespace `n`'s medium.
pub(crate) fn open_backend(n: &NamespaceConfig) -> Result<Backend, FileBackendError> {
    Ok(match n.backend {
        BackendKind::Memory => Backend::Memory(MemoryBackend::new(n.size.map_or(0, |s| s.0))),
        BackendKind::File => {
            let path = n.path.as_deref().unwrap_or_default();
            let f = FileBackend::open(path, n.size.map(|s| s.0), n.block_size)?;
            let mode = if f.direct {
                "O_DIRECT"
            } else {
                "buffered: no O_DIRECT at this block size"
            };
            info!(path, bytes = f.size(), "file namespace ({mode})");
            Backend::File(f)
        }
    })
}

/// The LUN namespace `n` of subsystem `s` is on iSCSI (its number is NSID - 1), when it
/// is one; `id` is its backend's index.
pub(crate) fn lun_config(
    s: &SubsystemConfig,
    n: &NamespaceConfig,
    backend: &Backend,
    id: u32,
) -> Option<LunConfig> {
    (s.iqn.is_some() && n.iscsi).then(|| LunConfig {
        lun: u64::from(n.nsid - 1),
        block_size: n.block_size,
        blocks: backend.size() / u64::from(n.block_size),
        backend: id,
        volatile_write_cache: backend.volatile_cache(),
        thin: true,
        read_only: n.read_only,
        identity: identity(&s.nqn, n.nsid),
        vendor: "XDPT".into(),
        product: s.model.chars().take(16).collect(),
        revision: env!("CARGO_PKG_VERSION").chars().take(4).collect(),
    })
}

/// The NVMe namespace `n` of subsystem `s` is, when it is one; `scsi` is the iSCSI target
/// of the same subsystem, whose LUN on the same medium it honours the reservations of.
pub(crate) fn nvme_namespace(
    s: &SubsystemConfig,
    n: &NamespaceConfig,
    backend: &Backend,
    id: u32,
    scsi: Option<&ScsiTarget>,
) -> Option<Namespace> {
    let ident = identity(&s.nqn, n.nsid);
    n.nvme.then(|| Namespace {
        nsid: n.nsid,
        block_size: n.block_size,
        blocks: backend.size() / u64::from(n.block_size),
        nguid: ident,
        eui64: ident[..8].try_into().expect("8 bytes"),
        uuid: uuid_v8(ident),
        volatile_write_cache: backend.volatile_cache(),
        deallocate: true,
        backend: id,
        scsi_reservations: scsi
            .and_then(|t| t.lu(u64::from(n.nsid - 1)))
            .map(|l| Arc::clone(l.reservations())),
    })
}

/// The NVM subsystem of `s`, with `namespaces`.
pub(crate) fn nvme_subsystem(s: &SubsystemConfig, namespaces: Vec<Namespace>) -> Subsystem {
    let serial = s.serial.clone().unwrap_or_else(|| {
        let h = identity(&s.nqn, 0);
        h[..10].iter().map(|b| format!("{b:02x}")).collect()
    });
    Subsystem {
        nqn: s.nqn.clone(),
        serial,
        model: s.model.clone(),
        firmware: env!("CARGO_PKG_VERSION").chars().take(8).collect(),
        namespaces,
        allowed_hosts: (!s.allow_hosts.is_empty()).then(|| s.allow_hosts.clone()),
    }
}

/// The iSCSI target of `s` (which has an IQN), over `scsi`.
pub(crate) fn target_node(s: &SubsystemConfig, iqn: &str, scsi: Arc<ScsiTarget>) -> TargetNode {
    TargetNode {
        iqn: iqn.to_string(),
        alias: None,
        scsi,
        allowed_initiators: (!s.allow_initiators.is_empty()).then(|| s.allow_initiators.clone()),
        chap: chap_config(s),
    }
}

/// Subsystems as the controller sees them, iSCSI targets, and the backends their
/// namespaces point at.
fn build(config: &Config) -> Result<Built, ServeError> {
    let mut backends = Vec::new();
    let mut names = Vec::new();
    let mut subsystems = Vec::new();
    let mut targets = Vec::new();
    for s in &config.subsystems {
        let first = backends.len();
        let mut luns = Vec::new();
        for n in &s.namespaces {
            let backend = open_backend(n)?;
            let id = u32::try_from(backends.len()).expect("fewer than 2^32 namespaces");
            names.push(NamespaceName {
                subsystem: s.nqn.clone(),
                nsid: n.nsid,
            });
            luns.extend(lun_config(s, n, &backend, id));
            backends.push(Arc::new(backend));
        }
        let scsi = s.iqn.as_ref().map(|_| Arc::new(ScsiTarget::new(luns)));
        let mut namespaces: Vec<Namespace> = s
            .namespaces
            .iter()
            .zip(first..)
            .filter_map(|(n, id)| {
                let id = u32::try_from(id).expect("fewer than 2^32 namespaces");
                nvme_namespace(s, n, &backends[id as usize], id, scsi.as_deref())
            })
            .collect();
        namespaces.sort_by_key(|n| n.nsid);
        if let (Some(iqn), Some(scsi)) = (&s.iqn, scsi) {
            targets.push(target_node(s, iqn, scsi));
        }
        subsystems.push(nvme_subsystem(s, namespaces));
    }
    Ok(Built {
        subsystems,
        targets,
        backends,
        names,
    })
}

/// 16 stable bytes for a namespace (NGUID, EUI-64, UUID), from its subsystem and NSID, so
/// hosts see the same identity after a restart (multipath and udev rely on it).
fn identity(nqn: &str, nsid: u32) -> [u8; 16] {
    // FNV-1a, twice with different offsets: stable across builds, unlike std's hasher.
    let fnv = |seed: u64| {
        let mut h = seed;
        for b in nqn.bytes().chain(nsid.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    out[8..].copy_from_slice(&fnv(0x8422_2325_cbf2_9ce4).to_be_bytes());
    out
}

/// RFC 9562 version 8 (custom) UUID from 16 bytes.
fn uuid_v8(mut b: [u8; 16]) -> [u8; 16] {
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// Reactors to run: the configured number, else the CPUs this process may use.
fn reactor_count(config: &Config) -> usize {
    config
        .reactors
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

fn parse_addrs(list: &[String]) -> Vec<SocketAddr> {
    list.iter()
        .map(|l| l.parse().expect("validated by Config::validate"))
        .collect()
}

/// The registries, engine parameters, backends and metrics every reactor shares
/// (`xdp_iface`: where the XDP program is attached, whose counters the metrics read).
pub(crate) fn shared(config: &Config, xdp_iface: Option<&str>) -> Result<Shared, ServeError> {
    let Built {
        subsystems,
        targets,
        backends,
        names,
    } = build(config)?;
    let metrics = Arc::new(Metrics::new(&names, xdp_iface));
    let backends = Arc::new(Backends::new(
        backends
            .into_iter()
            .zip(metrics.namespace_io())
            .map(|(backend, io)| BackendEntry { backend, io })
            .collect(),
    ));
    let mut registry = Registry::new(subsystems);
    let iscsi_addrs = parse_addrs(&config.iscsi.listen);
    // Every NVMe listener, TCP and RDMA, is a port of the discovery log: a host that
    // discovers over one transport learns the other's addresses too.
    let tcp = parse_addrs(&config.nvme.listen)
        .into_iter()
        .map(|a| (a, PortTransport::Tcp));
    let rdma = parse_addrs(&config.rdma.listen)
        .into_iter()
        .map(|a| (a, PortTransport::Rdma));
    registry.set_ports(
        tcp.chain(rdma)
            .enumerate()
            .map(|(i, (a, transport))| Port {
                id: u16::try_from(i + 1).unwrap_or(u16::MAX),
                addr: (!a.ip().is_unspecified()).then_some(a.ip()),
                port: a.port(),
                io: a.port() != config.nvme.discovery_port,
                transport,
            })
            .collect(),
    );
    let registry = Arc::new(Mutex::new(registry));
    let mut iscsi_registry = IscsiRegistry::new(
        targets,
        iscsi_addrs
            .iter()
            .map(|a| Portal {
                addr: (!a.ip().is_unspecified()).then_some(a.ip()),
                port: a.port(),
            })
            .collect(),
    );
    iscsi_registry.discovery_chap = config.iscsi.discovery_chap.as_ref().map(|c| ChapConfig {
        initiator: chap(c),
        target: None,
    });
    let iscsi_registry = Arc::new(Mutex::new(iscsi_registry));
    let iscsi_params = ConnParams {
        limits: TargetLimits {
            allow_header_digest: config.iscsi.header_digest,
            allow_data_digest: config.iscsi.data_digest,
            ..TargetLimits::default()
        },
        timers: Timers {
            nop_interval_ms: config.iscsi.nop_interval * 1000,
            nop_timeout_ms: config.iscsi.nop_timeout * 1000,
            ..Timers::default()
        },
    };
    let params = ControllerParams {
        allow_header_digest: config.nvme.header_digest,
        allow_data_digest: config.nvme.data_digest,
        cpda: 0,
        max_h2c_data: MAX_H2C_DATA,
    };
    Ok(Shared {
        registry,
        iscsi_registry,
        iscsi_params,
        params,
        backends,
        metrics,
        busy_poll: std::env::var("XDPT_BUSY_POLL_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(BUSY_POLL, Duration::from_micros),
    })
}

/// Every listening address with the protocol it serves.
pub fn listen_addrs(config: &Config) -> Vec<(SocketAddr, Proto)> {
    parse_addrs(&config.nvme.listen)
        .into_iter()
        .map(|a| (a, Proto::Nvme))
        .chain(
            parse_addrs(&config.iscsi.listen)
                .into_iter()
                .map(|a| (a, Proto::Iscsi)),
        )
        .collect()
}

/// Starts the socket reactors and, with `xdp`, the AF_XDP reactors of that interface
/// (falling back to sockets alone when AF_XDP is unusable, unless the configuration
/// requires it).
pub fn start(
    config: &Config,
    xdp: Option<&mut crate::transport::xdp::steering::Steering>,
) -> Result<Server, ServeError> {
    let shared = Arc::new(shared(config, xdp.as_ref().map(|s| s.iface()))?);
    // Bound before any reactor starts, so a taken port fails the start.
    if let Some(addr) = config.metrics.addr()? {
        crate::metrics::http::spawn(addr, Arc::clone(&shared.metrics))
            .map_err(|source| ServeError::MetricsListen { addr, source })?;
    }
    // The XDP program drops other sources on the interface it is attached to; the
    // listeners serve every interface, so they apply the same list themselves.
    let allow = Arc::new(config.xdp.allow_list()?);
    if allow.is_on() {
        let list: Vec<String> = allow
            .prefixes()
            .iter()
            .map(|p| format!("{}/{}", p.addr, p.len))
            .collect();
        info!("source allow-list on: kernel-socket connections from outside {list:?} are closed");
    }
    let all = listen_addrs(config);
    let n = reactor_count(config);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(n);
    let listeners = Arc::new(crate::transport::listeners::Listeners::new(
        config.xdp.ports.clone(),
    ));
    // The AF_XDP sockets first: once the kernel's listeners accept, the storage ports'
    // traffic on that interface already goes to the user-space stack.
    if let Some(steering) = xdp {
        match crate::transport::xdp::start(config, steering, &shared, &stop, &listeners) {
            Ok(t) => threads.extend(t),
            Err(e) if config.xdp.require_afxdp => return Err(ServeError::AfXdp(e)),
            Err(e) => warn!(
                "AF_XDP unusable, storage ports fall back to kernel sockets (set xdp.require_afxdp to fail instead): {e}"
            ),
        }
    }
    // The running transports as a Server (also to stop them when a later one fails).
    let server = |threads| Server {
        stop: Arc::clone(&stop),
        threads,
        registry: Arc::clone(&shared.registry),
        iscsi_registry: Arc::clone(&shared.iscsi_registry),
        backends: Arc::clone(&shared.backends),
        metrics: Arc::clone(&shared.metrics),
        listeners: Arc::clone(&listeners),
    };
    // Before the kernel's listeners: a host must not read a discovery log that lists RDMA
    // ports before it is known whether RDMA serves.
    let rdma = crate::transport::rdma::start(config, &shared, &stop, n, &listeners)
        .map_err(ServeError::Rdma);
    match rdma {
        Ok(t) if t.is_empty() && !config.rdma.listen.is_empty() => {
            // RDMA is unusable here: the discovery log must not send hosts to it.
            let mut r = shared
                .registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let tcp_only = r
                .ports()
                .iter()
                .filter(|p| p.transport == PortTransport::Tcp)
                .copied()
                .collect();
            r.set_ports(tcp_only);
        }
        Ok(t) => threads.extend(t),
        Err(e) => {
            // The AF_XDP reactors may be running: stop them before failing.
            server(threads).stop();
            return Err(e);
        }
    }
    let sockets = match crate::transport::socket::start(
        config, &shared, &allow, &stop, &all, n, &listeners,
    ) {
        Ok(s) => s,
        Err(e) => {
            server(threads).stop();
            return Err(e);
        }
    };
    threads.extend(sockets.threads);
    let listening = sockets.listening;
    let nvme: Vec<_> = listening
        .iter()
        .filter(|l| l.0 == Proto::Nvme)
        .map(|l| l.1)
        .collect();
    let iscsi: Vec<_> = listening
        .iter()
        .filter(|l| l.0 == Proto::Iscsi)
        .map(|l| l.1)
        .collect();
    info!(reactors = n, nvme = ?nvme, iscsi = ?iscsi, "serving over kernel sockets");
    Ok(server(threads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_identity_is_stable_and_distinct() {
        assert_eq!(identity("nqn.a", 1), identity("nqn.a", 1));
        assert_ne!(identity("nqn.a", 1), identity("nqn.a", 2));
        assert_ne!(identity("nqn.a", 1), identity("nqn.b", 1));
        let u = uuid_v8(identity("nqn.a", 1));
        assert_eq!((u[6] >> 4, u[8] >> 6), (8, 0b10));
    }

    #[test]
    fn default_config_builds_one_gib_namespace() {
        let Built {
            subsystems: subs,
            targets,
            backends,
            names,
        } = build(&Config::default()).unwrap();
        assert_eq!(
            names,
            [NamespaceName {
                subsystem: crate::config::DEFAULT_NQN.into(),
                nsid: 1
            }]
        );
        assert_eq!(subs.len(), 1);
        assert_eq!(targets.len(), 1);
        assert_eq!(
            targets[0].scsi.luns().len(),
            1,
            "the namespace is also LUN 0"
        );
        assert_eq!(subs[0].namespaces[0].blocks, 2 * 1024 * 1024);
        assert_eq!(backends.len(), 1);
        assert_eq!(subs[0].serial.len(), 20);
    }
}
