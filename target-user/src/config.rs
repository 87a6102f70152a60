//! The TOML configuration file (`xdp-target serve --config FILE`).
//!
//! ```toml
//! reactors = 2                      # default: the CPUs this process may run on
//!
//! [nvme]
//! listen = ["0.0.0.0:4420", "0.0.0.0:8009"]   # [] serves nothing (XDP steering only)
//! discovery_port = 8009             # listed as discovery-only in the discovery log
//! header_digest = true              # granted when the host asks
//! data_digest = true
//!
//! [iscsi]
//! listen = ["0.0.0.0:3260"]         # [] serves no iSCSI
//! header_digest = true              # CRC32C granted when the initiator asks
//! data_digest = true
//! nop_interval = 5                  # seconds of silence before a NOP-In ping (0: never)
//! nop_timeout = 15                  # seconds a ping may go unanswered
//! # discovery_chap = { user = "disc", secret = "0123456789ab" }
//!
//! [[subsystem]]
//! nqn = "nqn.2026-11.dev.xdp-target:default"
//! allow_hosts = []                  # host NQNs; empty = any host
//! iqn = "iqn.2026-11.dev.xdp-target:default"  # also an iSCSI target: namespace N is LUN N-1
//! allow_initiators = []             # initiator IQNs; empty = any initiator
//! # chap = { user = "alice", secret = "12-to-16-chars" }      # CHAP required at login
//! # mutual_chap = { user = "target", secret = "another-secret" }
//! [[subsystem.namespace]]
//! nsid = 1
//! backend = "memory"               # or "file" with path = "/var/lib/disk.img" or "/dev/sdX"
//! size = "1GiB"                     # a file: its size when created (default: the file's)
//! block_size = 512                  # or 4096
//! nvme = true                       # export over NVMe/TCP (default true)
//! iscsi = true                      # export as an iSCSI LUN when the subsystem has an iqn
//! read_only = false                 # iSCSI only (needs nvme = false): writes are refused
//!
//! [xdp]
//! ports = [4420, 8009, 3260]        # TCP ports the XDP program steers (default shown)
//! mode = "auto"                     # auto (native, else skb) | native | skb
//! steer = true                      # false: only count storage-port packets, pass them on
//! allow_sources = ["10.0.0.0/8", "fd00::/8"]   # when set, other sources are refused: by
//!                                   # the XDP program and by the kernel-socket listeners
//!
//! [rdma]
//! listen = ["192.168.1.10:4420", "192.168.1.10:8009"]   # NVMe/RDMA (RDMA CM); default []
//! require = false                   # true: no RDMA library or device is an error, not a warning
//! max_queue_depth = 128             # deepest I/O queue accepted (2-128; the device may lower it)
//! inline_data = 8192                # in-capsule data per command (0-16384, multiple of 16)
//!
//! [control]
//! socket = "/run/xdp-target.sock"   # `xdp-target ctl` (JSON-RPC); absent: none
//!
//! [metrics]
//! listen = "127.0.0.1:9464"         # Prometheus text on GET /metrics; absent or "": none
//! ```
//!
//! Unknown keys are errors, so a typo cannot silently leave a setting at its default.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use target_common::{DEFAULT_STORAGE_PORTS, MAX_STORAGE_PORTS};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("xdp.ports: {0}")]
    Ports(String),
    #[error("xdp.allow_sources: {0:?} is not an address or prefix (like 10.0.0.0/8 or fd00::/8)")]
    Prefix(String),
    #[error("nvme.listen: {0:?} is not an address:port (like 0.0.0.0:4420 or [::]:4420)")]
    Listen(String),
    #[error("iscsi.listen: {0:?} is not an address:port (like 0.0.0.0:3260 or [::]:3260)")]
    IscsiListen(String),
    #[error("subsystem {nqn:?}: {message}")]
    Subsystem { nqn: String, message: String },
    #[error("rdma.listen: {0:?} is not an address:port (like 192.168.1.10:4420 or [fd00::1]:4420)")]
    RdmaListen(String),
    #[error("rdma.max_queue_depth: must be between 2 and 128")]
    RdmaQueueDepth,
    #[error("rdma.inline_data: must be a multiple of 16 between 0 and 16384")]
    RdmaInlineData,
    #[error("reactors: must be between 1 and 256")]
    Reactors,
    #[error("max_connections_per_reactor: must be between 1 and 65536")]
    MaxConnections,
    #[error(
        "metrics.listen: {0:?} is not an address:port (like 127.0.0.1:9464 or [::1]:9464; \"\" for no metrics endpoint)"
    )]
    MetricsListen(String),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub xdp: XdpConfig,
    #[serde(default)]
    pub nvme: NvmeConfig,
    #[serde(default)]
    pub iscsi: IscsiConfig,
    #[serde(default)]
    pub rdma: RdmaConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default = "default_subsystems", rename = "subsystem")]
    pub subsystems: Vec<SubsystemConfig>,
    /// Reactor threads; by default one per CPU in the process's affinity mask.
    pub reactors: Option<usize>,
    /// Connections one reactor (socket path) or one AF_XDP queue (XDP path) serves at
    /// most; more are closed at once (sockets) or refused with RST (XDP path).
    #[serde(default = "default_max_connections")]
    pub max_connections_per_reactor: usize,
}

fn default_max_connections() -> usize {
    1024
}

impl Default for Config {
    fn default() -> Self {
        Self {
            xdp: XdpConfig::default(),
            nvme: NvmeConfig::default(),
            iscsi: IscsiConfig::default(),
            rdma: RdmaConfig::default(),
            metrics: MetricsConfig::default(),
            control: ControlConfig::default(),
            subsystems: default_subsystems(),
            reactors: None,
            max_connections_per_reactor: default_max_connections(),
        }
    }
}

/// The NQN of the subsystem served without a configuration file.
pub const DEFAULT_NQN: &str = "nqn.2026-11.dev.xdp-target:default";
/// The iSCSI name of the default target.
pub const DEFAULT_IQN: &str = "iqn.2026-11.dev.xdp-target:default";
/// NQNs are at most 223 bytes (NVMe Base 2.x, 4.5).
const NQN_MAX: usize = 223;

fn default_subsystems() -> Vec<SubsystemConfig> {
    vec![SubsystemConfig {
        nqn: DEFAULT_NQN.into(),
        serial: None,
        model: default_model(),
        allow_hosts: Vec::new(),
        iqn: Some(DEFAULT_IQN.into()),
        allow_initiators: Vec::new(),
        chap: None,
        mutual_chap: None,
        namespaces: vec![NamespaceConfig {
            nsid: 1,
            backend: BackendKind::Memory,
            size: Some(Size(1 << 30)),
            path: None,
            block_size: 512,
            nvme: true,
            iscsi: true,
            read_only: false,
        }],
    }]
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NvmeConfig {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default = "default_discovery_port")]
    pub discovery_port: u16,
    #[serde(default = "yes")]
    pub header_digest: bool,
    #[serde(default = "yes")]
    pub data_digest: bool,
}

impl Default for NvmeConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            discovery_port: default_discovery_port(),
            header_digest: true,
            data_digest: true,
        }
    }
}

/// The control socket of `xdp-target ctl`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// A Unix socket path; none by default.
    pub socket: Option<String>,
}

/// NVMe over RDMA (InfiniBand, RoCE, iWARP, soft-RoCE): where the RDMA CM listens.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RdmaConfig {
    /// Addresses (of RDMA-capable interfaces) to listen on; a port equal to
    /// `nvme.discovery_port` is listed as discovery-only, as for TCP.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Fail to start when RDMA is unusable (no libraries, no device, a listener that
    /// cannot bind) instead of logging it and serving TCP alone.
    #[serde(default)]
    pub require: bool,
    /// The deepest I/O queue a host may ask for (HSQSIZE + 1); lowered to what the
    /// device's queue pairs hold.
    #[serde(default = "default_rdma_depth")]
    pub max_queue_depth: u16,
    /// Data a command capsule may carry (IOCCSZ): writes up to this size come with their
    /// command instead of by RDMA READ. Each queue entry keeps a receive buffer this much
    /// larger than the 64-byte command.
    #[serde(default = "default_inline_data")]
    pub inline_data: usize,
}

fn default_inline_data() -> usize {
    target_proto::nvme_rdma::queue::IN_CAPSULE_DATA
}

fn default_rdma_depth() -> u16 {
    128
}

impl Default for RdmaConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            require: false,
            max_queue_depth: default_rdma_depth(),
            inline_data: default_inline_data(),
        }
    }
}

/// iSCSI serving: portals, digests, pings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IscsiConfig {
    #[serde(default = "default_iscsi_listen")]
    pub listen: Vec<String>,
    #[serde(default = "yes")]
    pub header_digest: bool,
    #[serde(default = "yes")]
    pub data_digest: bool,
    /// Seconds of silence before the target pings with a NOP-In (0: never).
    #[serde(default = "default_nop_interval")]
    pub nop_interval: u64,
    /// Seconds a ping may stay unanswered before the connection is dropped.
    #[serde(default = "default_nop_timeout")]
    pub nop_timeout: u64,
    /// CHAP required of discovery sessions.
    pub discovery_chap: Option<ChapCredentials>,
}

impl Default for IscsiConfig {
    fn default() -> Self {
        Self {
            listen: default_iscsi_listen(),
            header_digest: true,
            data_digest: true,
            nop_interval: default_nop_interval(),
            nop_timeout: default_nop_timeout(),
            discovery_chap: None,
        }
    }
}

fn default_iscsi_listen() -> Vec<String> {
    vec!["0.0.0.0:3260".into()]
}

const fn default_nop_interval() -> u64 {
    5
}

const fn default_nop_timeout() -> u64 {
    15
}

/// The Prometheus endpoint (`crate::metrics`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address the HTTP endpoint listens on; absent or empty: no endpoint.
    #[serde(default)]
    pub listen: Option<String>,
}

impl MetricsConfig {
    /// The endpoint's address, if one is configured.
    pub fn addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        match self.listen.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(l) => l
                .parse()
                .map(Some)
                .map_err(|_| ConfigError::MetricsListen(l.to_string())),
        }
    }
}

/// A CHAP user name and secret.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: String,
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:4420".into(), "0.0.0.0:8009".into()]
}

const fn default_discovery_port() -> u16 {
    8009
}

fn default_model() -> String {
    "xdp-target".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    pub nqn: String,
    /// Up to 20 ASCII characters; derived from the NQN when absent.
    pub serial: Option<String>,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Also an iSCSI target of this name; its namespaces are LUNs (NSID - 1).
    pub iqn: Option<String>,
    #[serde(default)]
    pub allow_initiators: Vec<String>,
    /// CHAP required of initiators (RFC 7143 section 12.1.3).
    pub chap: Option<ChapCredentials>,
    /// The target's credentials when an initiator asks for mutual CHAP.
    pub mutual_chap: Option<ChapCredentials>,
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<NamespaceConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Memory,
    /// A regular file (created with `size` when missing) or a block device (`path`).
    File,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub nsid: u32,
    pub backend: BackendKind,
    /// Required for memory; for a file, its size when it is created (default: the file's).
    pub size: Option<Size>,
    /// The file or block device of a `file` backend.
    pub path: Option<String>,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Exported over NVMe/TCP.
    #[serde(default = "yes")]
    pub nvme: bool,
    /// Exported as an iSCSI LUN (when the subsystem has an `iqn`).
    #[serde(default = "yes")]
    pub iscsi: bool,
    /// Refuse writes (iSCSI only: WRITE PROTECTED sense, and the WP bit in MODE SENSE).
    #[serde(default)]
    pub read_only: bool,
}

const fn default_block_size() -> u32 {
    512
}

/// A size in bytes: an integer, or a string with a binary suffix ("512MiB", "1GiB").
/// Saved as the integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(n)),
            Raw::Text(t) => parse_size(&t).map(Self).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a size (like 1048576, \"512MiB\" or \"1GiB\")"
                ))
            }),
        }
    }
}

fn parse_size(t: &str) -> Option<u64> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "K" => 10,
        "MiB" | "M" => 20,
        "GiB" | "G" => 30,
        "TiB" | "T" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub mode: XdpMode,
    #[serde(default = "yes")]
    pub steer: bool,
    /// Empty: every source is allowed and the allow-list is off.
    #[serde(default)]
    pub allow_sources: Vec<String>,
    /// Zero-copy AF_XDP: tried first (`auto`), required, or never tried (`off`).
    #[serde(default)]
    pub zero_copy: ZeroCopy,
    /// Fail to start when no AF_XDP socket can be bound, instead of falling back to
    /// kernel sockets.
    #[serde(default)]
    pub require_afxdp: bool,
    /// UMEM frames (4 KiB each) per AF_XDP socket: half receive, half send.
    #[serde(default = "default_umem_frames")]
    pub umem_frames: u32,
    /// Entries in each AF_XDP ring (fill, completion, rx, tx); a power of two.
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    /// Who computes the TCP checksums of what the XDP path sends: `offload` (the device,
    /// through AF_XDP TX metadata, falling back to `software` on kernels before 6.11),
    /// `software`, or `kernel` (copy mode: the kernel computes what the device would; for
    /// tests).
    #[serde(default)]
    pub tx_checksum: crate::transport::xdp::xsk::TxChecksum,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    #[default]
    Auto,
    Require,
    Off,
}

const fn default_umem_frames() -> u32 {
    8192
}

const fn default_ring_size() -> u32 {
    2048
}

fn default_ports() -> Vec<u16> {
    DEFAULT_STORAGE_PORTS.to_vec()
}

const fn yes() -> bool {
    true
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            ports: default_ports(),
            mode: XdpMode::Auto,
            steer: true,
            allow_sources: Vec::new(),
            zero_copy: ZeroCopy::Auto,
            require_afxdp: false,
            umem_frames: default_umem_frames(),
            ring_size: default_ring_size(),
            tx_checksum: crate::transport::xdp::xsk::TxChecksum::Offload,
        }
    }
}

/// An address prefix of the source allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Prefix(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if len > max {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}

impl Prefix {
    /// Whether `ip` is inside this prefix. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// what a dual-stack socket reports for an IPv4 peer) is the IPv4 address it maps, as
    /// it was on the wire, where the XDP program matched it against the IPv4 prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The source allow-list (`xdp.allow_sources`) as the kernel-socket listeners apply it; the
/// XDP program applies the same prefixes from its LPM tries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Prefix>);

impl AllowList {
    /// Whether the list is on (at least one prefix): off, every source is allowed.
    pub fn is_on(&self) -> bool {
        !self.0.is_empty()
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p.contains(ip))
    }

    pub fn prefixes(&self) -> &[Prefix] {
        &self.0
    }
}

impl Config {
    /// The configuration as TOML that [`Config::load`] reads back to the same value (every
    /// setting spelled out, sizes in bytes): what `xdp-target ctl save` writes.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| e.to_string())
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: p,
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.xdp.validate()?;
        if self.reactors.is_some_and(|r| r == 0 || r > 256) {
            return Err(ConfigError::Reactors);
        }
        if !(1..=65_536).contains(&self.max_connections_per_reactor) {
            return Err(ConfigError::MaxConnections);
        }
        for l in &self.nvme.listen {
            l.parse::<std::net::SocketAddr>()
                .map_err(|_| ConfigError::Listen(l.clone()))?;
        }
        for l in &self.iscsi.listen {
            l.parse::<std::net::SocketAddr>()
                .map_err(|_| ConfigError::IscsiListen(l.clone()))?;
        }
        for l in &self.rdma.listen {
            l.parse::<std::net::SocketAddr>()
                .map_err(|_| ConfigError::RdmaListen(l.clone()))?;
        }
        if !(2..=128).contains(&self.rdma.max_queue_depth) {
            return Err(ConfigError::RdmaQueueDepth);
        }
        let inline = self.rdma.inline_data;
        if inline > target_proto::nvme_rdma::queue::MAX_IN_CAPSULE_DATA
            || !inline.is_multiple_of(16)
        {
            return Err(ConfigError::RdmaInlineData);
        }
        self.metrics.addr()?;
        for (i, s) in self.subsystems.iter().enumerate() {
            let bad = |message: String| ConfigError::Subsystem {
                nqn: s.nqn.clone(),
                message,
            };
            if let Some(iqn) = &s.iqn {
                if !(iqn.starts_with("iqn.") || iqn.starts_with("eui.") || iqn.starts_with("naa."))
                    || iqn.len() > 223
                    || !iqn.is_ascii()
                {
                    return Err(bad(format!(
                        "iqn {iqn:?}: an iSCSI name starts with \"iqn.\", \"eui.\" or \"naa.\" and has at most 223 ASCII bytes"
                    )));
                }
                if self.subsystems[..i]
                    .iter()
                    .any(|o| o.iqn.as_ref() == Some(iqn))
                {
                    return Err(bad(format!("iqn {iqn:?} is used twice")));
                }
            }
            for c in s
                .chap
                .iter()
                .chain(&s.mutual_chap)
                .chain(&self.iscsi.discovery_chap)
            {
                // RFC 7143 section 12.1.3: CHAP secrets of at least 12 bytes (96 bits); Linux's
                // iscsid and libiscsi accept at most 256.
                if c.secret.len() < 12 || c.secret.len() > 256 || c.user.is_empty() {
                    return Err(bad(
                        "chap: a user name and a secret of 12 to 256 bytes are needed".into(),
                    ));
                }
            }
            if s.mutual_chap.is_some() && s.chap.is_none() {
                return Err(bad("mutual_chap needs chap".into()));
            }
            // RFC 7143 section 12.1.3: a secret that authenticates initiators must not
            // authenticate a target, so the secrets of the two directions differ.
            if let Some(m) = &s.mutual_chap {
                let same_as = if s.chap.as_ref().is_some_and(|c| c.secret == m.secret) {
                    Some("chap.secret".to_string())
                } else if self
                    .iscsi
                    .discovery_chap
                    .as_ref()
                    .is_some_and(|c| c.secret == m.secret)
                {
                    Some("iscsi.discovery_chap.secret".to_string())
                } else {
                    self.subsystems
                        .iter()
                        .find(|o| o.chap.as_ref().is_some_and(|c| c.secret == m.secret))
                        .map(|o| format!("the chap.secret of subsystem {:?}", o.nqn))
                };
                if let Some(other) = same_as {
                    return Err(bad(format!(
                        "mutual_chap.secret is the same as {other}; the secrets of the two \
                         CHAP directions must differ (RFC 7143 12.1.3): choose another \
                         mutual_chap secret"
                    )));
                }
            }
            if s.chap.is_some() && s.iqn.is_none() {
                return Err(bad("chap applies to iSCSI: set iqn too".into()));
            }
            if !s.nqn.starts_with("nqn.") || s.nqn.len() > NQN_MAX || !s.nqn.is_ascii() {
                return Err(bad(format!(
                    "the NQN must start with \"nqn.\" and be at most {NQN_MAX} ASCII bytes"
                )));
            }
            if self.subsystems[..i].iter().any(|o| o.nqn == s.nqn) {
                return Err(bad("listed twice".into()));
            }
            if s.serial
                .as_ref()
                .is_some_and(|x| x.len() > 20 || !x.is_ascii())
            {
                return Err(bad("serial: at most 20 ASCII characters".into()));
            }
            if s.model.len() > 40 || !s.model.is_ascii() {
                return Err(bad("model: at most 40 ASCII characters".into()));
            }
            for (j, n) in s.namespaces.iter().enumerate() {
                if n.nsid == 0 || n.nsid >= 0xffff_fffe {
                    return Err(bad(format!(
                        "namespace {}: NSIDs run from 1 to FFFFFFFDh",
                        n.nsid
                    )));
                }
                if s.namespaces[..j].iter().any(|o| o.nsid == n.nsid) {
                    return Err(bad(format!("namespace {} is listed twice", n.nsid)));
                }
                if n.read_only && n.nvme {
                    return Err(bad(format!(
                        "namespace {}: read_only is enforced for iSCSI LUNs only; set nvme = false",
                        n.nsid
                    )));
                }
                if s.iqn.is_some() && n.iscsi && n.nsid > 16384 {
                    return Err(bad(format!(
                        "namespace {}: iSCSI LUNs (NSID - 1) stop at 16383",
                        n.nsid
                    )));
                }
                if n.block_size != 512 && n.block_size != 4096 {
                    return Err(bad(format!(
                        "namespace {}: block_size must be 512 or 4096",
                        n.nsid
                    )));
                }
                match (n.backend, &n.size, &n.path) {
                    (BackendKind::Memory, None, _) => {
                        return Err(bad(format!(
                            "namespace {}: a memory backend needs a size",
                            n.nsid
                        )));
                    }
                    (BackendKind::Memory, _, Some(_)) => {
                        return Err(bad(format!(
                            "namespace {}: path is for file backends",
                            n.nsid
                        )));
                    }
                    (BackendKind::File, _, None) => {
                        return Err(bad(format!(
                            "namespace {}: a file backend needs a path",
                            n.nsid
                        )));
                    }
                    _ => {}
                }
                if n.size
                    .is_some_and(|s| s.0 == 0 || s.0 % u64::from(n.block_size) != 0)
                {
                    return Err(bad(format!(
                        "namespace {}: size must be a non-zero multiple of the block size ({})",
                        n.nsid, n.block_size
                    )));
                }
            }
        }
        Ok(())
    }
}

impl XdpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ports = &self.ports;
        if ports.is_empty() {
            return Err(ConfigError::Ports("at least one port is needed".into()));
        }
        if ports.len() > MAX_STORAGE_PORTS as usize {
            return Err(ConfigError::Ports(format!(
                "{} ports given, the XDP program matches at most {MAX_STORAGE_PORTS}",
                ports.len()
            )));
        }
        if ports.contains(&0) {
            return Err(ConfigError::Ports("port 0 is not a valid TCP port".into()));
        }
        for (i, p) in ports.iter().enumerate() {
            if ports[..i].contains(p) {
                return Err(ConfigError::Ports(format!("port {p} is listed twice")));
            }
        }
        self.prefixes().map(drop)
    }

    pub fn prefixes(&self) -> Result<Vec<Prefix>, ConfigError> {
        self.allow_sources
            .iter()
            .map(|s| Prefix::parse(s))
            .collect()
    }

    pub fn allow_list(&self) -> Result<AllowList, ConfigError> {
        self.prefixes().map(AllowList)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn subsystems_namespaces_and_listeners() {
        let c = parse(
            "reactors = 2\n[nvme]\nlisten = [\"[::]:4420\"]\ndata_digest = false\n\
             [[subsystem]]\nnqn = \"nqn.2026-11.dev.test:a\"\nallow_hosts = [\"nqn.h\"]\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"memory\"\nsize = \"64MiB\"\nblock_size = 4096\n\
             [[subsystem.namespace]]\nnsid = 7\nbackend = \"memory\"\nsize = 1048576\n",
        )
        .unwrap();
        assert_eq!(c.reactors, Some(2));
        assert_eq!(c.nvme.listen, vec!["[::]:4420"]);
        assert!(!c.nvme.data_digest && c.nvme.header_digest);
        let s = &c.subsystems[0];
        assert_eq!(s.allow_hosts, vec!["nqn.h"]);
        assert_eq!(s.namespaces[0].size, Some(Size(64 << 20)));
        assert_eq!(
            (
                s.namespaces[1].nsid,
                s.namespaces[1].block_size,
                s.namespaces[1].size
            ),
            (7, 512, Some(Size(1 << 20)))
        );
    }

    #[test]
    fn a_saved_configuration_reads_back_the_same() {
        let c = parse(
            "reactors = 2\nmax_connections_per_reactor = 9\n[nvme]\nlisten = [\"[::]:4420\"]\n\
             [iscsi]\nlisten = []\ndiscovery_chap = { user = \"d\", secret = \"0123456789ab\" }\n\
             [xdp]\nallow_sources = [\"10.0.0.0/8\"]\nzero_copy = \"off\"\n\
             [rdma]\nlisten = [\"10.0.0.1:4420\"]\ninline_data = 4096\n\
             [metrics]\nlisten = \"127.0.0.1:9464\"\n\
             [[subsystem]]\nnqn = \"nqn.2026-11.dev.test:a\"\nallow_hosts = [\"nqn.h\"]\n\
             iqn = \"iqn.2026-11.dev.test:a\"\nchap = { user = \"u\", secret = \"0123456789ab\" }\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"memory\"\nsize = \"64MiB\"\n\
             [[subsystem.namespace]]\nnsid = 2\nbackend = \"file\"\npath = \"/tmp/x.img\"\nread_only = true\nnvme = false\n",
        )
        .unwrap();
        let saved = c.to_toml().unwrap();
        assert_eq!(parse(&saved).unwrap(), c, "{saved}");
        assert!(saved.contains("size = 67108864"), "{saved}");
        assert_eq!(
            parse(&Config::default().to_toml().unwrap()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn subsystem_mistakes_name_the_subsystem_and_field() {
        let ns = |extra: &str| {
            format!(
                "[[subsystem]]\nnqn = \"nqn.x\"\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"memory\"\n{extra}"
            )
        };
        let cases = [
            (ns("size = \"1GB\"\n"), "is not a size"),
            (ns("size = 1000\n"), "multiple of the block size"),
            (ns("size = 4096\nblock_size = 1024\n"), "512 or 4096"),
            (ns("size = 4096\nbackend2 = 1\n"), "unknown field"),
            (
                "[[subsystem]]\nnqn = \"iqn.x\"\n".to_string(),
                "must start with",
            ),
            ("[nvme]\nlisten = [\"4420\"]\n".to_string(), "nvme.listen"),
            ("reactors = 0\n".to_string(), "reactors"),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn mutual_chap_secret_differs_from_initiator_secrets() {
        let sub = |nqn: &str, iqn: &str, chap: &str, mutual: &str| {
            format!(
                "[[subsystem]]\nnqn = \"{nqn}\"\niqn = \"{iqn}\"\n\
                 chap = {{ user = \"alice\", secret = \"{chap}\" }}\n\
                 mutual_chap = {{ user = \"target\", secret = \"{mutual}\" }}\n"
            )
        };
        let a = "initiator-secret";
        let b = "target-secret-12";
        assert!(parse(&sub("nqn.a", "iqn.a", a, b)).is_ok());
        let err = parse(&sub("nqn.a", "iqn.a", a, a)).unwrap_err();
        assert!(
            err.contains("nqn.a")
                && err.contains("mutual_chap.secret is the same as chap.secret")
                && err.contains("choose another mutual_chap secret")
                && !err.contains('\n'),
            "{err}"
        );
        let discovery =
            format!("[iscsi]\ndiscovery_chap = {{ user = \"disc\", secret = \"{b}\" }}\n");
        let err = parse(&format!("{discovery}{}", sub("nqn.a", "iqn.a", a, b))).unwrap_err();
        assert!(
            err.contains("the same as iscsi.discovery_chap.secret"),
            "{err}"
        );
        let two = format!(
            "{}{}",
            sub("nqn.a", "iqn.a", a, b),
            sub("nqn.b", "iqn.b", b, "third-secret-1234")
        );
        let err = parse(&two).unwrap_err();
        assert!(
            err.contains("the same as the chap.secret of subsystem \"nqn.b\""),
            "{err}"
        );
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.subsystems[0].nqn, DEFAULT_NQN);
        assert_eq!(c.subsystems[0].namespaces[0].size, Some(Size(1 << 30)));
        assert_eq!(c.nvme.listen, vec!["0.0.0.0:4420", "0.0.0.0:8009"]);
        assert_eq!(c.xdp.ports, vec![4420, 8009, 3260]);
        assert!(c.xdp.steer);
        assert_eq!(c.xdp.mode, XdpMode::Auto);
    }

    #[test]
    fn full_xdp_section_parses() {
        let c = parse(
            "[xdp]\nports = [4420]\nmode = \"skb\"\nsteer = false\nallow_sources = [\"10.1.0.0/16\", \"fd00::1\"]\n",
        )
        .unwrap();
        assert_eq!(c.xdp.ports, vec![4420]);
        assert_eq!(c.xdp.mode, XdpMode::Skb);
        assert!(!c.xdp.steer);
        let p = c.xdp.prefixes().unwrap();
        assert_eq!(
            p[0],
            Prefix {
                addr: "10.1.0.0".parse().unwrap(),
                len: 16
            }
        );
        assert_eq!(
            p[1],
            Prefix {
                addr: "fd00::1".parse().unwrap(),
                len: 128
            }
        );
    }

    #[test]
    fn the_allow_list_matches_prefixes_and_mapped_ipv4_peers() {
        let c = parse(
            "[xdp]\nallow_sources = [\"10.1.0.0/16\", \"192.0.2.7\", \"fd00::/8\", \"0.0.0.0/0\"]\n",
        )
        .unwrap();
        let all = c.xdp.allow_list().unwrap();
        assert!(
            all.is_on() && all.allows("198.51.100.1".parse().unwrap()),
            "/0"
        );
        let c = parse("[xdp]\nallow_sources = [\"10.1.2.3/16\", \"192.0.2.7\", \"fd00::/8\"]\n")
            .unwrap();
        let list = c.xdp.allow_list().unwrap();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        for yes in [
            "10.1.0.0",
            "10.1.255.255",
            "192.0.2.7",
            "fd12::1",
            "::ffff:10.1.9.9",
            "::ffff:192.0.2.7",
        ] {
            assert!(list.allows(ip(yes)), "{yes}");
        }
        for no in [
            "10.2.0.1",
            "192.0.2.8",
            "fe80::1",
            "::ffff:10.2.0.1",
            // An IPv4-compatible or NAT64 address is an IPv6 address, not an IPv4 one.
            "::10.1.0.1",
            "64:ff9b::10.1.0.1",
        ] {
            assert!(!list.allows(ip(no)), "{no}");
        }
        let off = parse("").unwrap().xdp.allow_list().unwrap();
        assert!(!off.is_on() && off.allows(ip("203.0.113.1")));
    }

    #[test]
    fn the_metrics_endpoint_is_off_unless_an_address_is_given() {
        assert_eq!(parse("").unwrap().metrics.addr().unwrap(), None);
        let empty = parse("[metrics]\nlisten = \"\"\n").unwrap();
        assert_eq!(empty.metrics.addr().unwrap(), None);
        let on = parse("[metrics]\nlisten = \"[::1]:9464\"\n").unwrap();
        assert_eq!(
            on.metrics.addr().unwrap(),
            Some("[::1]:9464".parse().unwrap())
        );
        for bad in ["9464", "localhost:9464", "127.0.0.1"] {
            let err = parse(&format!("[metrics]\nlisten = \"{bad}\"\n")).unwrap_err();
            assert!(
                err.starts_with("metrics.listen: ") && err.contains(bad) && !err.contains('\n'),
                "{err}"
            );
        }
        let err = parse("[metrics]\nport = 9464\n").unwrap_err();
        assert!(err.contains("unknown field `port`"), "{err}");
    }

    #[test]
    fn the_rdma_section_parses_and_is_off_by_default() {
        let off = parse("").unwrap().rdma;
        assert_eq!(off, RdmaConfig::default());
        assert!(off.listen.is_empty() && !off.require && off.max_queue_depth == 128);
        assert_eq!(off.inline_data, 8192);
        let on = parse(
            "[rdma]\nlisten = [\"10.0.0.1:4420\", \"[fd00::1]:8009\"]\nrequire = true\nmax_queue_depth = 64\ninline_data = 4096\n",
        )
        .unwrap()
        .rdma;
        assert_eq!(on.listen, ["10.0.0.1:4420", "[fd00::1]:8009"]);
        assert!(on.require);
        assert_eq!(on.max_queue_depth, 64);
        assert_eq!(on.inline_data, 4096);
        for (text, want) in [
            (
                "[rdma]\nlisten = [\"rxe0:4420\"]\n",
                "rdma.listen: \"rxe0:4420\"",
            ),
            ("[rdma]\nmax_queue_depth = 1\n", "rdma.max_queue_depth"),
            ("[rdma]\nmax_queue_depth = 129\n", "rdma.max_queue_depth"),
            ("[rdma]\ninline = 4096\n", "unknown field `inline`"),
            ("[rdma]\ninline_data = 100\n", "rdma.inline_data"),
            ("[rdma]\ninline_data = 32768\n", "rdma.inline_data"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn mistakes_are_reported_with_the_key() {
        let cases = [
            ("[xdp]\nport = [1]\n", "unknown field `port`"),
            ("[xdp]\nports = []\n", "xdp.ports: at least one port"),
            ("[xdp]\nports = [0]\n", "port 0"),
            ("[xdp]\nports = [1, 1]\n", "listed twice"),
            ("[xdp]\nports = [70000]\n", "invalid value"),
            ("[xdp]\nmode = \"fast\"\n", "unknown variant"),
            (
                "[xdp]\nallow_sources = [\"10.0.0.0/33\"]\n",
                "xdp.allow_sources",
            ),
            ("[xdp]\nallow_sources = [\"host\"]\n", "xdp.allow_sources"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
        let many = format!("[xdp]\nports = {:?}\n", (1..=17).collect::<Vec<u16>>());
        assert!(parse(&many).unwrap_err().contains("at most 16"));
    }
}
