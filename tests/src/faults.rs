//! Faults on the path between initiator and target: a routed topology of three network
//! namespaces, and the `xdp_fault` program (target-ebpf) on the router's interfaces to
//! drop, cut or reorder frames.
//!
//! XDP only sees the frames an interface *receives*, so a program on the initiator's or the
//! target's own veth end could hit only one direction (and on the target's end it would
//! compete with the steering program). Hence a router in between:
//!
//! ```text
//! client ns                 router ns (ip_forward)                  target ns
//! CLIENT_IF 10.98.0.2 --- ROUTER_CLIENT_IF 10.98.0.1
//!                          ROUTER_TARGET_IF 10.99.0.2 --- TARGET_IF 10.99.0.1
//! ```
//!
//! `xdp_fault` on the router's client-facing end hits client -> target frames, on its
//! target-facing end target -> client frames. Each [`FaultInjector`] loads its own copy of
//! the object, so the two directions have separate settings and counters.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::{Array, CpuMap, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use target_common::fault::{self, FaultCounters, FaultSettings};

use crate::netns::{Netns, checksums_in_software, ip};

#[path = "../../xtask/src/ebpf_build.rs"]
#[expect(
    dead_code,
    reason = "shared with xtask and build.rs; only object_path is used"
)]
mod ebpf_build;

/// The XDP object: `$XDP_TARGET_EBPF_OBJ` (a prebuilt one, as target-user's build script
/// takes it), else the one `cargo xtask build-ebpf` (or that build script) builds.
pub fn object_path() -> PathBuf {
    if let Some(p) = std::env::var_os("XDP_TARGET_EBPF_OBJ") {
        return p.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives one level below the repository root");
    ebpf_build::object_path(root)
}

/// Three namespaces, client -- router -- target, deleted on drop (see the module doc).
#[derive(Debug)]
pub struct RoutedPath {
    // Field order is drop order.
    pub client: Netns,
    pub router: Netns,
    pub target: Netns,
    pub client_if: String,
    /// The router's end of the client link: receives what the client sends.
    pub router_client_if: String,
    /// The router's end of the target link: receives what the target sends.
    pub router_target_if: String,
    pub target_if: String,
    pub client_addr: Ipv4Addr,
    pub router_client_addr: Ipv4Addr,
    pub router_target_addr: Ipv4Addr,
    pub target_addr: Ipv4Addr,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

impl RoutedPath {
    /// A path with names unique to this process and call, so tests can run in parallel.
    pub fn create() -> io::Result<Self> {
        let prefix = format!(
            "xf{:x}{}",
            std::process::id() & 0xfffff,
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_named(&prefix)
    }

    /// Namespaces `PREFIX-cli`, `PREFIX-rtr`, `PREFIX-tgt`; interfaces `PREFIX-c`,
    /// `PREFIX-rc`, `PREFIX-rt`, `PREFIX-t` (PREFIX at most 11 bytes).
    pub fn create_named(prefix: &str) -> io::Result<Self> {
        if prefix.len() > 11 {
            return Err(io::Error::other(format!(
                "netns prefix {prefix:?} is too long"
            )));
        }
        let target = Netns::create(&format!("{prefix}-tgt"))?;
        let router = Netns::create(&format!("{prefix}-rtr"))?;
        let client = Netns::create(&format!("{prefix}-cli"))?;
        let path = Self {
            client_if: format!("{prefix}-c"),
            router_client_if: format!("{prefix}-rc"),
            router_target_if: format!("{prefix}-rt"),
            target_if: format!("{prefix}-t"),
            client_addr: Ipv4Addr::new(10, 98, 0, 2),
            router_client_addr: Ipv4Addr::new(10, 98, 0, 1),
            router_target_addr: Ipv4Addr::new(10, 99, 0, 2),
            target_addr: Ipv4Addr::new(10, 99, 0, 1),
            client,
            router,
            target,
        };
        for (a, a_if, b, b_if) in [
            (
                &path.client,
                &path.client_if,
                &path.router,
                &path.router_client_if,
            ),
            (
                &path.target,
                &path.target_if,
                &path.router,
                &path.router_target_if,
            ),
        ] {
            ip(&[
                "link",
                "add",
                a_if,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                b_if,
                "netns",
                b.name(),
            ])?;
        }
        for (ns, dev, addr) in [
            (&path.client, &path.client_if, path.client_addr),
            (
                &path.router,
                &path.router_client_if,
                path.router_client_addr,
            ),
            (
                &path.router,
                &path.router_target_if,
                path.router_target_addr,
            ),
            (&path.target, &path.target_if, path.target_addr),
        ] {
            let n = ns.name();
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", n, "link", "set", dev, "up"])?;
        }
        for (ns, gw) in [
            (&path.client, path.router_client_addr),
            (&path.target, path.router_target_addr),
        ] {
            let gw = gw.to_string();
            ip(&["-n", ns.name(), "route", "add", "default", "via", &gw])?;
        }
        let out = path
            .router
            .command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "sysctl net.ipv4.ip_forward=1: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        checksums_in_software(&path.client, &path.client_if)?;
        checksums_in_software(&path.router, &path.router_client_if)?;
        checksums_in_software(&path.router, &path.router_target_if)?;
        Ok(path)
    }

    /// A fault injector on the router's interface that receives the client's frames.
    pub fn faults_client_to_target(&self) -> io::Result<FaultInjector> {
        FaultInjector::attach(&self.router, &self.router_client_if)
    }

    /// A fault injector on the router's interface that receives the target's frames.
    pub fn faults_target_to_client(&self) -> io::Result<FaultInjector> {
        FaultInjector::attach(&self.router, &self.router_target_if)
    }
}

/// `xdp_fault` attached to one interface, with its own settings and counters; detached on
/// drop.
pub struct FaultInjector {
    ebpf: Ebpf,
    iface: String,
    mode: &'static str,
    settings: FaultSettings,
}

fn other(what: &str) -> impl FnOnce(String) -> io::Error + '_ {
    move |e| io::Error::other(format!("{what}: {e}"))
}

impl FaultInjector {
    /// Loads the object, attaches `xdp_fault` to `iface` in `ns` (native mode, else skb
    /// mode) and fills the cpumap with every CPU; the settings start all zero (pass all).
    pub fn attach(ns: &Netns, iface: &str) -> io::Result<Self> {
        let object = object_path();
        if !object.is_file() {
            return Err(io::Error::other(format!(
                "{} is missing: build it with `cargo xtask build-ebpf` (or build target-user)",
                object.display()
            )));
        }
        let cpus = u32::try_from(
            aya::util::nr_cpus().map_err(|(p, e)| io::Error::other(format!("{p}: {e}")))?,
        )
        .map_err(io::Error::other)?;
        let iface2 = iface.to_string();
        // Attached from inside the namespace: the interface name is resolved there, and the
        // bpf_link then holds the interface itself, whichever thread drops it.
        let (ebpf, mode) = ns.run(move || -> io::Result<(Ebpf, &'static str)> {
            let mut ebpf = EbpfLoader::new()
                .map_max_entries(fault::CPUS, cpus)
                .load_file(&object)
                .map_err(|e| other("loading the XDP object")(e.to_string()))?;
            let program: &mut Xdp = ebpf
                .program_mut(fault::PROGRAM_NAME)
                .ok_or_else(|| io::Error::other("no xdp_fault in the object"))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| io::Error::other(e.to_string()))?;
            program
                .load()
                .map_err(|e| other("loading xdp_fault")(format!("{e:?}")))?;
            let mode = match program.attach(&iface2, XdpMode::Default) {
                Ok(_) => "native",
                Err(native) => match program.attach(&iface2, XdpMode::Skb) {
                    Ok(_) => "skb",
                    Err(skb) => {
                        return Err(io::Error::other(format!(
                            "attaching xdp_fault to {iface2}: {native}; in skb mode: {skb}"
                        )));
                    }
                },
            };
            Ok((ebpf, mode))
        })??;
        let mut f = Self {
            ebpf,
            iface: iface.to_string(),
            mode,
            settings: FaultSettings {
                cpus,
                ..FaultSettings::default()
            },
        };
        {
            let map = f
                .ebpf
                .map_mut(fault::CPUS)
                .ok_or_else(|| io::Error::other("no FAULT_CPUS map"))?;
            let mut cpumap =
                CpuMap::try_from(map).map_err(|e| other("FAULT_CPUS")(e.to_string()))?;
            for cpu in 0..cpus {
                cpumap
                    .set(cpu, 512, None, 0)
                    .map_err(|e| other("filling FAULT_CPUS")(e.to_string()))?;
            }
        }
        f.apply()?;
        Ok(f)
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// "native" or "skb".
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    fn apply(&mut self) -> io::Result<()> {
        let map = self
            .ebpf
            .map_mut(fault::SETTINGS)
            .ok_or_else(|| io::Error::other("no FAULT_SETTINGS map"))?;
        let mut a: Array<_, FaultSettings> =
            Array::try_from(map).map_err(|e| other("FAULT_SETTINGS")(e.to_string()))?;
        a.set(0, self.settings, 0)
            .map_err(|e| other("setting FAULT_SETTINGS")(e.to_string()))
    }

    /// Only TCP frames from or to these ports are hit (at most [`fault::MAX_PORTS`]); none
    /// means every frame.
    pub fn ports(&mut self, ports: &[u16]) -> io::Result<()> {
        if ports.len() > fault::MAX_PORTS {
            return Err(io::Error::other("too many ports for the fault filter"));
        }
        self.settings.ports = [0; fault::MAX_PORTS];
        self.settings.ports[..ports.len()].copy_from_slice(ports);
        self.apply()
    }

    /// Drops `share` (0..=1) of the matching frames at random.
    pub fn drop_share(&mut self, share: f64) -> io::Result<()> {
        self.settings.drop_ppm = ppm(share);
        self.apply()
    }

    /// Delays `share` (0..=1) of the matching frames behind later ones (see `xdp_fault`).
    pub fn reorder_share(&mut self, share: f64) -> io::Result<()> {
        self.settings.reorder_ppm = ppm(share);
        self.apply()
    }

    /// Cuts the link (every matching frame dropped) or restores it.
    pub fn cut(&mut self, cut: bool) -> io::Result<()> {
        if cut {
            self.settings.flags |= fault::FLAG_CUT;
        } else {
            self.settings.flags &= !fault::FLAG_CUT;
        }
        self.apply()
    }

    /// No faults any more (the program stays attached and keeps counting).
    pub fn clear(&mut self) -> io::Result<()> {
        self.settings.drop_ppm = 0;
        self.settings.reorder_ppm = 0;
        self.settings.flags = 0;
        self.apply()
    }

    /// The counters, summed over the CPUs.
    pub fn counters(&self) -> io::Result<FaultCounters> {
        let map = self
            .ebpf
            .map(fault::COUNTERS)
            .ok_or_else(|| io::Error::other("no FAULT_COUNTERS map"))?;
        let a: PerCpuArray<_, FaultCounters> =
            PerCpuArray::try_from(map).map_err(|e| other("FAULT_COUNTERS")(e.to_string()))?;
        let per_cpu = a
            .get(&0, 0)
            .map_err(|e| other("reading FAULT_COUNTERS")(e.to_string()))?;
        let mut sum = FaultCounters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }
}

fn ppm(share: f64) -> u32 {
    (share.clamp(0.0, 1.0) * f64::from(fault::PPM)).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_become_parts_per_million() {
        assert_eq!(ppm(0.01), 10_000);
        assert_eq!(ppm(0.05), 50_000);
        assert_eq!(ppm(1.5), fault::PPM);
        assert_eq!(ppm(-1.0), 0);
    }

    #[test]
    fn the_object_path_is_the_one_xtask_builds() {
        if std::env::var_os("XDP_TARGET_EBPF_OBJ").is_none() {
            assert!(
                object_path()
                    .ends_with("target-ebpf/target/bpfel-unknown-none/release/target-ebpf")
            );
        }
    }
}
