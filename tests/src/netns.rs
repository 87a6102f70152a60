//! Network namespaces and veth pairs for tests, deleted on drop (also when a test panics).
//!
//! Addresses are 10.x and fd00::/8 and exist only inside the namespaces made here; the
//! root namespace gets no interface or address.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `ip ARGS`, turning a failure into an error that carries its stderr.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    check(&out, &format!("ip {}", args.join(" ")))
}

fn check(out: &Output, what: &str) -> io::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace, replacing a stale one of the same name, with `lo` up.
    pub fn create(name: &str) -> io::Result<Self> {
        if std::path::Path::new("/run/netns").join(name).exists() {
            ip(&["netns", "del", name])?;
        }
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that runs inside this namespace. Only the network namespace changes (unlike
    /// `ip netns exec`, which also remounts /sys), so the child sees the host's bpffs and its
    /// pinned maps stay visible to other processes.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let path = self.path();
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (open via File::open is a plain open(2), setns(2)).
        unsafe {
            cmd.pre_exec(move || {
                let f = File::open(&path)?;
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `f` on a new thread that has entered this namespace and waits for it; sockets
    /// it creates stay in the namespace after the thread ends.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        self.handle().run(f)
    }

    /// Starts `f` on a new thread that has entered this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<io::Result<T>> {
        self.handle().spawn(f)
    }

    /// A handle that can enter the namespace but does not own it (closures can keep one).
    pub fn handle(&self) -> NetnsHandle {
        NetnsHandle { path: self.path() }
    }
}

/// Enters a namespace owned by a [`Netns`] elsewhere.
#[derive(Clone, Debug)]
pub struct NetnsHandle {
    path: String,
}

impl NetnsHandle {
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        self.spawn(f)
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))?
    }

    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<io::Result<T>> {
        let path = self.path.clone();
        std::thread::spawn(move || -> io::Result<T> {
            let file = File::open(&path)?;
            // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("netns: could not delete {}: {e}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair: `target` holds `target_if`, `client` holds
/// `client_if`. Both ends are up with IPv4 (10.99.0.1/2) and IPv6 (fd99::1/2) addresses.
#[derive(Debug)]
pub struct VethPair {
    // Field order is drop order: the client namespace goes first, then the target's.
    pub client: Netns,
    pub target: Netns,
    pub target_if: String,
    pub client_if: String,
    pub target_addr: Ipv4Addr,
    pub client_addr: Ipv4Addr,
    pub target_addr6: Ipv6Addr,
    pub client_addr6: Ipv6Addr,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

impl VethPair {
    /// A pair with names unique to this process and call, so tests can run in parallel.
    pub fn create() -> io::Result<Self> {
        Self::create_multiqueue(1)
    }

    /// As [`VethPair::create`], with `queues` rx and tx queues on each end.
    pub fn create_multiqueue(queues: u32) -> io::Result<Self> {
        let id = format!(
            "xt{:x}{}",
            std::process::id() & 0xfffff,
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_with_queues(&id, queues)
    }

    /// A pair named after `prefix` (at most 12 bytes, the interface name limit less a suffix):
    /// namespaces `PREFIX-tgt` and `PREFIX-cli`, interfaces `PREFIX-t` and `PREFIX-c`.
    pub fn create_named(prefix: &str) -> io::Result<Self> {
        Self::create_with_queues(prefix, 1)
    }

    /// As [`VethPair::create_named`], with `queues` rx and tx queues on each end.
    pub fn create_with_queues(prefix: &str, queues: u32) -> io::Result<Self> {
        if prefix.len() > 12 {
            return Err(io::Error::other(format!(
                "netns prefix {prefix:?} is too long"
            )));
        }
        let target = Netns::create(&format!("{prefix}-tgt"))?;
        let client = Netns::create(&format!("{prefix}-cli"))?;
        let target_if = format!("{prefix}-t");
        let client_if = format!("{prefix}-c");
        let q = queues.to_string();
        ip(&[
            "link",
            "add",
            &target_if,
            "netns",
            target.name(),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            client.name(),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        let pair = Self {
            client,
            target,
            target_if,
            client_if,
            target_addr: Ipv4Addr::new(10, 99, 0, 1),
            client_addr: Ipv4Addr::new(10, 99, 0, 2),
            target_addr6: "fd99::1".parse().expect("literal"),
            client_addr6: "fd99::2".parse().expect("literal"),
        };
        for (ns, dev, v4, v6) in [
            (
                &pair.target,
                &pair.target_if,
                pair.target_addr,
                pair.target_addr6,
            ),
            (
                &pair.client,
                &pair.client_if,
                pair.client_addr,
                pair.client_addr6,
            ),
        ] {
            let n = ns.name();
            ip(&["-n", n, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ip(&["-n", n, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }
}

/// Runs `ethtool -K IFACE tx off` in `ns`: what `ns` sends through `iface` carries complete
/// TCP/IP checksums.
///
/// veth leaves a local sender's checksums partial (a NIC would fill them in on the wire),
/// and forwarding keeps that state. The XDP path's user-space stack verifies every
/// checksum and would drop such frames, so every interface that sends or forwards towards
/// it computes them in software.
pub fn checksums_in_software(ns: &Netns, iface: &str) -> io::Result<()> {
    let out = ns
        .command("ethtool")
        .args(["-K", iface, "tx", "off"])
        .output()
        .map_err(|e| io::Error::other(format!("ethtool (apt-get install ethtool): {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ethtool -K {iface} tx off: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl VethPair {
    /// The client's end computes its checksums in software (see [`checksums_in_software`]).
    pub fn client_checksums_in_software(&self) -> io::Result<()> {
        checksums_in_software(&self.client, &self.client_if)
    }
}

/// Why namespace tests cannot run here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CAP_NET_ADMIN and CAP_BPF)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("needs iproute2's `ip`".into()),
    }
}

/// Skips the calling test with a printed reason when namespaces are unavailable; in CI
/// (`CI` set) it fails instead, because there the tests must run.
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(why) = $crate::netns::unavailable() {
            if std::env::var_os("CI").is_some() {
                panic!("netns test cannot run in CI: {why}");
            }
            eprintln!("SKIPPED {}: {why}", module_path!());
            return;
        }
    };
}
