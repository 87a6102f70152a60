//! Loading, configuring, attaching and pinning the XDP steering program.
//!
//! The order matters: maps are filled before the program is attached (so no packet meets a
//! half-configured program), stale pins are removed only after the attach succeeded (a
//! failed attach means another program owns the interface, and its pins are not ours), and
//! on drop the pins go first, then the link, which detaches the program. aya attaches
//! through a bpf_link, so even a killed process leaves no program behind.

use std::io;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap};
use aya::programs::{ProgramError, Xdp, XdpMode as AyaMode};
use aya::{Ebpf, EbpfError};
use target_common::{
    AclV4Addr, AclV6Addr, PORT_FLAG_STEER, PROGRAM_NAME, PortEntry, SETTINGS_FLAG_ACL,
    SETTINGS_FLAG_LOCAL, Settings, map_names,
};
use tracing::{info, warn};

use super::bpffs;
use crate::config::{Prefix, XdpConfig, XdpMode};

/// The object built from target-ebpf (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/target-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("no network interface named {0:?} in this network namespace (`ip link` lists them)")]
    NoSuchInterface(String),
    #[error(
        "permission denied while {0}: loading XDP programs needs root (CAP_BPF and CAP_NET_ADMIN); run it with sudo"
    )]
    Permission(&'static str),
    #[error("the kernel's verifier rejected the XDP program: {0}")]
    Verifier(String),
    #[error(
        "an XDP program is already attached to {0}: stop the other xdp-target, or detach it with `ip link set dev {0} xdp off`"
    )]
    AlreadyAttached(String),
    #[error("cannot attach the XDP program to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error("cannot pin {what} at {path}: {source}")]
    Pin {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the embedded XDP object is unusable (rebuild with `cargo xtask build-ebpf`): {0}")]
    Object(String),
    #[error("configuring map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

fn missing(m: &str) -> XdpError {
    XdpError::Object(format!("map {m} missing from the object"))
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
    move |source| XdpError::Map { map, source }
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

/// The loaded, attached program; detached and unpinned on drop.
pub struct Steering {
    iface: String,
    pin_dir: PathBuf,
    mode: &'static str,
    ebpf: Ebpf,
}

impl Steering {
    /// Loads the program, configures its maps from `config`, attaches it to `iface` and pins
    /// its maps under `/sys/fs/bpf/xdp-target/IFACE/`.
    pub fn attach(iface: &str, config: &XdpConfig) -> Result<Self, XdpError> {
        config.validate()?;
        if !interface_exists(iface) {
            return Err(XdpError::NoSuchInterface(iface.to_string()));
        }
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| match &e {
            EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if is_permission(io_error) =>
            {
                XdpError::Permission("creating BPF maps")
            }
            _ => XdpError::Object(e.to_string()),
        })?;
        configure_maps(&mut ebpf, config)?;
        let mode = attach_program(&mut ebpf, iface, config.mode)?;
        let pin_dir = bpffs::pin_dir(iface)?;
        let steering = Self {
            iface: iface.to_string(),
            pin_dir,
            mode,
            ebpf,
        };
        steering.pin_maps()?;
        Ok(steering)
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Puts an AF_XDP socket in the XSKS map for rx queue `queue`: the program then
    /// redirects that queue's storage-port frames to it.
    pub fn register_socket(&mut self, queue: u32, fd: i32) -> Result<(), aya::maps::MapError> {
        let map = self
            .ebpf
            .map_mut(map_names::XSKS)
            .ok_or(aya::maps::MapError::InvalidName {
                name: map_names::XSKS.into(),
            })?;
        let mut xsks = aya::maps::XskMap::try_from(map)?;
        // SAFETY: the caller's socket is open for the duration of the call; the kernel
        // takes its own reference and drops the entry when the socket closes.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        xsks.set(queue, fd, 0)
    }

    /// Tells the program the addresses the user-space stack answers for: from then on it
    /// redirects only storage-port packets to one of them (others go to the kernel).
    pub fn set_local_addrs(&mut self, addrs: &[std::net::IpAddr]) -> Result<(), XdpError> {
        use std::net::IpAddr;
        let ebpf = &mut self.ebpf;
        {
            let mut v4: HashMap<_, [u8; 4], u8> = HashMap::try_from(
                ebpf.map_mut(map_names::LOCAL_V4)
                    .ok_or_else(|| missing(map_names::LOCAL_V4))?,
            )
            .map_err(map_err(map_names::LOCAL_V4))?;
            for a in addrs {
                if let IpAddr::V4(a) = a {
                    v4.insert(a.octets(), 1, 0)
                        .map_err(map_err(map_names::LOCAL_V4))?;
                }
            }
        }
        {
            let mut v6: HashMap<_, [u8; 16], u8> = HashMap::try_from(
                ebpf.map_mut(map_names::LOCAL_V6)
                    .ok_or_else(|| missing(map_names::LOCAL_V6))?,
            )
            .map_err(map_err(map_names::LOCAL_V6))?;
            for a in addrs {
                if let IpAddr::V6(a) = a {
                    v6.insert(a.octets(), 1, 0)
                        .map_err(map_err(map_names::LOCAL_V6))?;
                }
            }
        }
        let mut settings: Array<_, Settings> = Array::try_from(
            ebpf.map_mut(map_names::SETTINGS)
                .ok_or_else(|| missing(map_names::SETTINGS))?,
        )
        .map_err(map_err(map_names::SETTINGS))?;
        let flags = settings
            .get(&0, 0)
            .map_err(map_err(map_names::SETTINGS))?
            .flags;
        settings
            .set(
                0,
                Settings {
                    flags: flags | SETTINGS_FLAG_LOCAL,
                },
                0,
            )
            .map_err(map_err(map_names::SETTINGS))
    }

    /// The program's map of storage ports, opened again from its pin: listeners added at
    /// run time steer new ports through it while `self` stays with its owner.
    pub fn storage_ports(&self) -> Result<HashMap<aya::maps::MapData, u16, PortEntry>, XdpError> {
        let path = self.pin_dir.join(map_names::STORAGE_PORTS);
        let data = aya::maps::MapData::from_pin(&path).map_err(|e| XdpError::Pin {
            what: format!("map {} (opening it again)", map_names::STORAGE_PORTS),
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let map = aya::maps::Map::from_map_data(data).map_err(map_err(map_names::STORAGE_PORTS))?;
        HashMap::try_from(map).map_err(map_err(map_names::STORAGE_PORTS))
    }

    pub fn mode(&self) -> &'static str {
        self.mode
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn pin_maps(&self) -> Result<(), XdpError> {
        bpffs::clear_dir(&self.pin_dir)?;
        for name in map_names::ALL {
            let map = self
                .ebpf
                .map(name)
                .ok_or_else(|| XdpError::Object(format!("map {name} missing from the object")))?;
            let path = self.pin_dir.join(name);
            map.pin(&path).map_err(|e| XdpError::Pin {
                what: format!("map {name}"),
                path: path.clone(),
                source: io::Error::other(e),
            })?;
        }
        Ok(())
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Err(e) = bpffs::remove_dir(&self.pin_dir) {
            warn!(dir = %self.pin_dir.display(), "could not remove pinned maps: {e}");
        }
        info!(iface = %self.iface, "detaching the XDP program");
        // Dropping `ebpf` drops the program's links, which detaches it.
    }
}

fn interface_exists(iface: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

fn configure_maps(ebpf: &mut Ebpf, config: &XdpConfig) -> Result<(), XdpError> {
    let mut ports: HashMap<_, u16, PortEntry> = HashMap::try_from(
        ebpf.map_mut(map_names::STORAGE_PORTS)
            .ok_or_else(|| missing(map_names::STORAGE_PORTS))?,
    )
    .map_err(map_err(map_names::STORAGE_PORTS))?;
    let flags = if config.steer { PORT_FLAG_STEER } else { 0 };
    for (slot, port) in (0u32..).zip(&config.ports) {
        ports
            .insert(port, PortEntry { slot, flags }, 0)
            .map_err(map_err(map_names::STORAGE_PORTS))?;
    }

    let prefixes = config.prefixes()?;
    {
        let mut v4: LpmTrie<_, AclV4Addr, u8> = LpmTrie::try_from(
            ebpf.map_mut(map_names::ACL_V4)
                .ok_or_else(|| missing(map_names::ACL_V4))?,
        )
        .map_err(map_err(map_names::ACL_V4))?;
        for p in &prefixes {
            if let (std::net::IpAddr::V4(a), len) = (p.addr, p.len) {
                v4.insert(&Key::new(u32::from(len), a.octets()), 1, 0)
                    .map_err(map_err(map_names::ACL_V4))?;
            }
        }
    }
    {
        let mut v6: LpmTrie<_, AclV6Addr, u8> = LpmTrie::try_from(
            ebpf.map_mut(map_names::ACL_V6)
                .ok_or_else(|| missing(map_names::ACL_V6))?,
        )
        .map_err(map_err(map_names::ACL_V6))?;
        for p in &prefixes {
            if let (std::net::IpAddr::V6(a), len) = (p.addr, p.len) {
                v6.insert(&Key::new(u32::from(len), a.octets()), 1, 0)
                    .map_err(map_err(map_names::ACL_V6))?;
            }
        }
    }
    let mut settings: Array<_, Settings> = Array::try_from(
        ebpf.map_mut(map_names::SETTINGS)
            .ok_or_else(|| missing(map_names::SETTINGS))?,
    )
    .map_err(map_err(map_names::SETTINGS))?;
    let flags = if prefixes.is_empty() {
        0
    } else {
        SETTINGS_FLAG_ACL
    };
    settings
        .set(0, Settings { flags }, 0)
        .map_err(map_err(map_names::SETTINGS))?;
    describe_acl(&prefixes);
    Ok(())
}

fn describe_acl(prefixes: &[Prefix]) {
    if prefixes.is_empty() {
        info!("source allow-list off: storage ports accept every source");
    } else {
        let list: Vec<String> = prefixes
            .iter()
            .map(|p| format!("{}/{}", p.addr, p.len))
            .collect();
        info!(
            "source allow-list on: storage-port packets from outside {list:?} are dropped, as are IP packets from there whose TCP header the program cannot read (fragments, long IPv6 header chains), whatever their port"
        );
    }
}

fn attach_program(ebpf: &mut Ebpf, iface: &str, mode: XdpMode) -> Result<&'static str, XdpError> {
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| XdpError::Object(format!("program {PROGRAM_NAME} missing")))?
        .try_into()
        .map_err(|e: ProgramError| XdpError::Object(e.to_string()))?;
    program.load().map_err(|e| match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if is_permission(&io_error) && verifier_log.to_string().trim().is_empty() {
                XdpError::Permission("loading the XDP program")
            } else {
                XdpError::Verifier(format!("{io_error}\n{verifier_log}"))
            }
        }
        ProgramError::SyscallError(s) if is_permission(&s.io_error) => {
            XdpError::Permission("loading the XDP program")
        }
        other => XdpError::Object(other.to_string()),
    })?;
    let attempts: &[(AyaMode, &'static str)] = match mode {
        XdpMode::Auto => &[(AyaMode::Driver, "native"), (AyaMode::Skb, "skb")],
        XdpMode::Native => &[(AyaMode::Driver, "native")],
        XdpMode::Skb => &[(AyaMode::Skb, "skb")],
    };
    let mut last = None;
    for &(aya_mode, name) in attempts {
        match program.attach(iface, aya_mode) {
            Ok(_link) => {
                // The link stays owned by the program; dropping the Ebpf detaches it.
                return Ok(name);
            }
            Err(e) => {
                let errno = attach_errno(&e);
                if matches!(errno, Some(libc::EBUSY | libc::EEXIST)) {
                    return Err(XdpError::AlreadyAttached(iface.to_string()));
                }
                if matches!(errno, Some(libc::EPERM | libc::EACCES)) {
                    return Err(XdpError::Permission("attaching the XDP program"));
                }
                if let ProgramError::UnknownInterface { .. } = e {
                    return Err(XdpError::NoSuchInterface(iface.to_string()));
                }
                warn!(iface, mode = name, "attach failed: {e}");
                last = Some(XdpError::Attach {
                    iface: iface.to_string(),
                    mode: name,
                    source: e,
                });
            }
        }
    }
    Err(last.expect("at least one attach mode was tried"))
}

fn attach_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::xdp::XdpError::NetlinkError(n)) => n.raw_os_error(),
        _ => None,
    }
}
