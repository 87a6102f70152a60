//! Running the `xdp-target` binary under test.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// The `xdp-target` binary: `$XDP_TARGET_BIN`, else the one cargo built beside this test.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XDP_TARGET_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/xdp-target
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("xdp-target"))
        .expect("test executable below target/<profile>/deps");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p target-user` (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Whether the end-to-end tests run over the XDP path (`XDPT_TEST_PATH=xdp`; `cargo xtask
/// test` runs the NVMe/TCP and iSCSI suites once per path) instead of kernel sockets.
pub fn xdp_path() -> bool {
    std::env::var("XDPT_TEST_PATH").is_ok_and(|v| v == "xdp")
}

/// The MTU the end-to-end suites set on both ends of their veth pair on the XDP path
/// (`XDPT_TEST_MTU`, e.g. 9000 for jumbo frames through multi-buffer AF_XDP), if any.
pub fn test_mtu() -> Option<u32> {
    std::env::var("XDPT_TEST_MTU").ok()?.parse().ok()
}

/// `XDPT_TEST_TX_CHECKSUM`: who computes the TCP checksums the XDP path sends
/// (`--tx-checksum`), if set.
pub fn test_tx_checksum() -> Option<&'static str> {
    match std::env::var("XDPT_TEST_TX_CHECKSUM").ok()?.as_str() {
        "offload" => Some("offload"),
        "software" => Some("software"),
        "kernel" => Some("kernel"),
        other => panic!("XDPT_TEST_TX_CHECKSUM={other}: offload, software or kernel"),
    }
}

/// Where `xdp-target serve --xdp IFACE` pins its maps.
pub fn pin_dir(iface: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/xdp-target").join(iface)
}

/// A running `xdp-target`, killed on drop if it was not stopped. Its log goes to a file
/// that is printed when the test fails.
pub struct Target {
    child: Option<Child>,
    log: PathBuf,
    /// Pins to remove if the target has to be killed (it unpins itself only on SIGTERM).
    pins: Option<PathBuf>,
    /// Started on the XDP path: its connections must have gone through AF_XDP.
    xdp: bool,
}

static NEXT_LOG: AtomicU32 = AtomicU32::new(0);

impl Target {
    /// Starts `xdp-target ARGS` in `ns` and waits until `ready` holds (at most 20 s).
    pub fn start(ns: &Netns, args: &[&str], ready: impl Fn() -> bool) -> io::Result<Self> {
        Self::start_env(ns, args, &[], ready)
    }

    /// [`Target::start`] with extra environment variables for the target.
    pub fn start_env(
        ns: &Netns,
        args: &[&str],
        env: &[(&str, &str)],
        ready: impl Fn() -> bool,
    ) -> io::Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "xdp-target-test-{}-{}.log",
            std::process::id(),
            NEXT_LOG.fetch_add(1, Ordering::Relaxed)
        ));
        let child = ns
            .command(bin())
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut t = Self {
            child: Some(child),
            log,
            pins: None,
            xdp: false,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Some(status) = t.child_mut().try_wait()? {
                let text = std::fs::read_to_string(&t.log).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "xdp-target exited early ({status}):\n{text}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("xdp-target did not become ready in 20 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t)
    }

    /// `serve --config CONFIG` in the pair's target namespace, ready once `port` accepts
    /// connections from the client namespace. With [`xdp_path`], the target serves the
    /// pair's target end through AF_XDP (`--xdp IFACE --require-afxdp`).
    pub fn serve_config(pair: &crate::netns::VethPair, config: &Path, port: u16) -> Self {
        Self::serve_config_env(pair, config, port, &[])
    }

    /// [`Target::serve_config`] with extra environment variables for the target.
    pub fn serve_config_env(
        pair: &crate::netns::VethPair,
        config: &Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> Self {
        let addr = std::net::SocketAddr::new(std::net::IpAddr::V4(pair.target_addr), port);
        let client = pair.client.handle();
        let mut args = vec!["serve", "--config", config.to_str().expect("utf-8 path")];
        let xdp = xdp_path();
        if xdp {
            pair.client_checksums_in_software()
                .expect("client checksums in software");
            if let Some(mtu) = test_mtu() {
                let m = mtu.to_string();
                for (ns, dev) in [
                    (&pair.target, &pair.target_if),
                    (&pair.client, &pair.client_if),
                ] {
                    crate::netns::ip(&["-n", ns.name(), "link", "set", dev, "mtu", &m])
                        .expect("set the test MTU");
                }
            }
            args.extend(["--xdp", &pair.target_if, "--require-afxdp"]);
            // `XDPT_TEST_TX_CHECKSUM=kernel`: the kernel completes the checksums the way a
            // device would and the client's TCP checks them (on veth nobody does).
            if let Some(c) = test_tx_checksum() {
                args.extend(["--tx-checksum", c]);
            }
        }
        let mut t = Self::start_env(&pair.target, &args, env, move || {
            client
                .run(move || std::net::TcpStream::connect(addr).is_ok())
                .unwrap_or(false)
        })
        .expect("serve");
        if xdp {
            t.pins = Some(pin_dir(&pair.target_if));
            t.xdp = true;
        }
        t
    }

    /// `serve --config CONFIG --xdp IFACE --require-afxdp` in `ns`, ready once `ready`
    /// holds. Its connections must go through AF_XDP: [`Target::stop`] checks the log.
    pub fn serve_afxdp(
        ns: &Netns,
        iface: &str,
        config: &Path,
        ready: impl Fn() -> bool,
    ) -> io::Result<Self> {
        let config = config
            .to_str()
            .ok_or_else(|| io::Error::other("non-UTF-8 config path"))?;
        let args = [
            "serve",
            "--config",
            config,
            "--xdp",
            iface,
            "--require-afxdp",
        ];
        let mut t = Self::start(ns, &args, ready)?;
        t.pins = Some(pin_dir(iface));
        t.xdp = true;
        Ok(t)
    }

    /// `serve --xdp IFACE EXTRA…` with no NVMe/TCP listeners (steering and counters
    /// only, so the tests own every port), ready once its counters are pinned.
    pub fn serve_xdp(ns: &Netns, iface: &str, extra: &[&str]) -> io::Result<Self> {
        let config =
            std::env::temp_dir().join(format!("xdp-target-steer-only-{}.toml", std::process::id()));
        std::fs::write(&config, "[nvme]\nlisten = []\n[iscsi]\nlisten = []\n")?;
        let config = config
            .to_str()
            .ok_or_else(|| io::Error::other("non-UTF-8 temp dir"))?
            .to_string();
        let mut args = vec!["serve", "--config", &config, "--xdp", iface];
        args.extend_from_slice(extra);
        let counters = pin_dir(iface).join("COUNTERS");
        let mut t = Self::start(ns, &args, || counters.exists())?;
        t.pins = Some(pin_dir(iface));
        Ok(t)
    }

    /// What the target has logged so far, without terminal colour codes.
    /// The target's resident memory in KiB (VmRSS), while it runs.
    pub fn rss_kib(&self) -> io::Result<u64> {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| io::Error::other("stopped"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
    }

    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until stop")
    }

    /// Sends SIGTERM and waits for the exit (at most 20 s); on failure the child is left to
    /// `Drop`, which kills and reaps it.
    pub fn stop(mut self) -> io::Result<ExitStatus> {
        let child = self.child_mut();
        let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child_mut().try_wait()? {
                self.child = None;
                if self.xdp && !self.log_text().contains("(AF_XDP)") {
                    return Err(io::Error::other(format!(
                        "the test ran on the XDP path but no connection went through AF_XDP:\n{}",
                        self.log_text()
                    )));
                }
                // Jumbo frames are larger than a UMEM frame: the sockets must have been bound
                // for multi-buffer packets.
                if self.xdp
                    && test_mtu().is_some_and(|m| m > 3000)
                    && !self.log_text().contains("multi_buffer=true")
                {
                    return Err(io::Error::other(format!(
                        "MTU {:?} but the AF_XDP sockets were not bound for multi-buffer packets:\n{}",
                        test_mtu(),
                        self.log_text()
                    )));
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("xdp-target ignored SIGTERM for 20 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if let Some(pins) = &self.pins {
                let _ = std::fs::remove_dir_all(pins);
            }
        }
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "--- xdp-target log ({}) ---\n{text}--- end of log ---",
                self.log.display()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), which tracing's log lines
/// carry around field names.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `xdp-target stats --iface IFACE --json`, parsed.
pub fn stats_json(iface: &str) -> io::Result<serde_json::Value> {
    let out = Command::new(bin())
        .args(["stats", "--iface", iface, "--json"])
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "xdp-target stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(io::Error::other)
}

/// Runs `xdp-target ctl --socket SOCKET ARGS...`: whether it succeeded, and what it printed
/// (stdout, then stderr).
pub fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run xdp-target ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
