//! `cargo xtask lab`: the real Linux NVMe/TCP and iSCSI initiators (Debian 12's kernel,
//! nvme-cli and open-iscsi, in a QEMU guest) against `xdp-target serve`, once over kernel
//! sockets and once over the XDP path (the XDP program on the host's tap, AF_XDP and the
//! user-space TCP/IP stack), then Linux's NVMe/RDMA initiator over soft-RoCE against the
//! target running inside the guest; `--path` picks some.
//!
//! - **Guest image**, built once into `target/lab-cache/<key>/` (`vmlinuz`, `initrd.img`,
//!   `root.img`), where the key hashes everything the image is made of: the debootstrap
//!   suite, mirror and package list, the kernel package and its version, the initrd's init
//!   and the guest's `/sbin/lab-init`. Root is a debootstrap minbase with Debian's kernel
//!   modules; the initrd is busybox-static plus the modules that mount `/dev/vda`
//!   (virtio_pci, virtio_blk, crc32c_generic, ext4, and what modules.dep says they need).
//!   The root disk is opened with `snapshot=on`, so the cached image is never written.
//! - **Test steps** are not in the image: each run writes them (`lib.sh`, `main.sh`) into a
//!   tar that the guest reads from a second disk, `/dev/vdb`. Editing them does not rebuild
//!   the image.
//! - **Network**: namespace `xdpt-lab` holds tap `tap0` (10.77.0.1/24), the target and QEMU;
//!   the guest's eth0 is 10.77.0.2/24. Nothing else is touched; the namespace (and the tap
//!   with it) is deleted afterwards, also on failure.
//! - **NVMe/RDMA session**: the host's kernel has no RDMA modules, so the target runs in
//!   the guest. The steps tar then also carries the release `xdp-target`, `xdp-target-perf`
//!   and the target's config; the guest brings up soft-RoCE (`rxe0` on eth0), starts the
//!   target itself, and Linux's nvme-rdma connects to the guest's own address (rxe loops
//!   it back). The target's log comes back on the console as `LAB: TARGET-LOG` lines.
//! - **Protocol on the serial console**: the guest prints `LAB: PASS name | detail`,
//!   `LAB: FAIL name | detail` followed by `LAB: OUT ...` lines, `LAB: DMESG ...`,
//!   `LAB: RESTART-TARGET` (the host restarts the target; the guest waits for the kernel to
//!   reconnect), `LAB: TARGET-LOG ...` and `LAB: DONE`. Everything the guest printed is kept
//!   in `target/lab-cache/run/<session>/console.log`, the target's log in `target.log`
//!   beside it.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xdp_target_tests::netns::{Netns, ip};

const NETNS: &str = "xdpt-lab";
/// The target's control socket in the run directory (sessions with the target on the
/// host): the guest's `LAB: CTL` lines run `xdp-target ctl` on it.
const CONTROL_SOCKET: &str = "ctl.sock";
const TAP: &str = "tap0";
const HOST_ADDR: &str = "10.77.0.1";
const GUEST_ADDR: &str = "10.77.0.2";
const NQN: &str = "nqn.2026-11.dev.xdp-target:default";
const IQN: &str = "iqn.2026-11.dev.xdp-target:default";
const INITIATOR: &str = "iqn.2026-11.dev.xdp-target:lab-guest";
const ISCSI_PORT: u16 = 3260;
/// CHAP the guest's iscsiadm logs in with, and the target's answer for mutual CHAP.
const CHAP_USER: &str = "lab-guest";
const CHAP_SECRET: &str = "lab-guest-secret";
const MUTUAL_USER: &str = "lab-target";
const MUTUAL_SECRET: &str = "lab-target-secret";
const IO_PORT: u16 = 4420;
const DISCOVERY_PORT: u16 = 8009;
/// The namespace is small so that whole-device passes stay short under TCG.
const NS_BYTES: u64 = 256 << 20;
const NS_BLOCK: u64 = 512;
/// The NVMe/RDMA session's namespace is a file on the guest's tmpfs, and smaller still:
/// the guest then runs the target too.
const RDMA_NS_BYTES: u64 = 128 << 20;
const RDMA_NS_PATH: &str = "/tmp/lab-ns1.img";
/// Where the guest unpacks the steps tar (and so the binaries of the NVMe/RDMA session).
const GUEST_LAB_DIR: &str = "/run/lab";

const SUITE: &str = "bookworm";
/// Where the zero-copy session's kernel comes from (only the kernel: the rest of the
/// image is SUITE's).
const ZEROCOPY_KERNEL_SUITE: &str = "trixie-backports";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// open-iscsi is there for the iSCSI steps; rdma-core, the verbs and RDMA CM libraries
/// (which xdp-target and xdp-target-perf dlopen; no package depends on them for that),
/// the rxe provider and the verbs and RDMA CM tools for NVMe/RDMA over soft-RoCE.
const GUEST_PACKAGES: &str = "kmod,iproute2,nvme-cli,e2fsprogs,procps,util-linux,fio,open-iscsi,rdma-core,libibverbs1,librdmacm1,ibverbs-providers,ibverbs-utils,rdmacm-utils";
/// The initrd loads these (and their dependencies, from modules.dep) to mount /dev/vda.
const INITRD_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];
/// Sparse size of the root disk; debootstrap minbase plus all kernel modules is ~800 MB.
const ROOT_IMG_SIZE: &str = "2G";
/// Bump when the way the image is assembled changes in a way the other inputs do not show.
const IMAGE_LAYOUT: &str = "2";

/// The whole guest run, boot to power-off; a healthy run takes well under half of it.
const GUEST_DEADLINE: Duration = Duration::from_secs(480);
/// The guest's first `LAB:` line comes about 5 s after QEMU starts under TCG.
const BOOT_DEADLINE: Duration = Duration::from_secs(90);
const TARGET_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Which QEMU accelerator to use. TCG is the default: it works everywhere, and on this
/// project's (nested) machines KVM is present but a guest under it never reaches its console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Accel {
    Tcg,
    Kvm,
}

/// Which transport the target serves the guest's link with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LabPath {
    /// Kernel sockets.
    Sockets,
    /// The XDP program on the tap, AF_XDP and the user-space TCP/IP stack.
    Xdp,
    /// NVMe/RDMA over soft-RoCE, the target in the guest.
    Rdma,
    /// The target in a guest with trixie-backports' kernel, AF_XDP zero-copy on its
    /// virtio-net; initiators on the host.
    Zerocopy,
    /// Sockets, then XDP.
    Both,
    /// Sockets, XDP, RDMA, then zero-copy.
    All,
}

impl LabPath {
    /// The guest sessions to run, in order.
    fn sessions(self) -> &'static [Session] {
        match self {
            Self::Sockets => &[Session::Sockets],
            Self::Xdp => &[Session::Xdp],
            Self::Rdma => &[Session::Rdma],
            Self::Zerocopy => &[Session::Zerocopy],
            Self::Both => &[Session::Sockets, Session::Xdp],
            Self::All => &[
                Session::Sockets,
                Session::Xdp,
                Session::Rdma,
                Session::Zerocopy,
            ],
        }
    }
}

/// One boot of the guest against one way of serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Session {
    /// The target on the host, kernel sockets, MTU 1500.
    Sockets,
    /// The target on the host, the XDP path, MTU 9000.
    Xdp,
    /// The target in the guest, NVMe/RDMA over soft-RoCE: rxe0 on the guest's eth0, and the
    /// guest's nvme-rdma connecting to the guest's own address, which rxe loops back. The
    /// host's kernel has no RDMA modules, so the target cannot stay on the host; and it is
    /// one guest, not a target guest and an initiator guest, because two TCG guests on two
    /// cores are too slow. The tap still gives eth0 its carrier, without which rxe0's port
    /// is not ACTIVE.
    Rdma,
    /// The target in the guest on the XDP path with `xdp.zero_copy = "require"`: a guest
    /// with trixie-backports' kernel (7.x; virtio-net has zero-copy receive code since
    /// 6.11 but advertises zero-copy only from 6.13: bookworm-backports' 6.12 refused the
    /// bind with EOPNOTSUPP, see the README), on a virtio-net device with VIRTIO_F_ACCESS_PLATFORM
    /// (the driver needs the DMA API for zero-copy) and VIRTIO_F_RING_RESET (it resets the
    /// queue it binds). The initiators are on the host's end of the tap: the project's
    /// perf client over NVMe/TCP and iSCSI, and libiscsi's iscsi-ls. Should the driver
    /// refuse zero-copy, the guest reports why and serves in copy mode instead, so the
    /// initiators still run (and the session fails).
    Zerocopy,
}

impl Session {
    /// Its folder in target/lab-cache/run and the prefix of its steps.
    fn name(self) -> &'static str {
        match self {
            Self::Sockets => "sockets",
            Self::Xdp => "xdp",
            Self::Rdma => "rdma",
            Self::Zerocopy => "zerocopy",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Sockets => "kernel sockets",
            Self::Xdp => "the XDP path (XDP program on tap0, AF_XDP, user-space TCP/IP), MTU 9000",
            Self::Rdma => "NVMe/RDMA (soft-RoCE in the guest, the target in the guest too)",
            Self::Zerocopy => {
                "zero-copy AF_XDP on the guest's virtio-net (trixie-backports' kernel, the \
                 target in the guest, initiators on the host)"
            }
        }
    }

    /// The MTU of the tap and the guest's eth0. The XDP session runs with jumbo frames:
    /// multi-buffer AF_XDP sockets and the frags program (the network namespace suites
    /// cover the XDP path at MTU 1500 too).
    fn mtu(self) -> u32 {
        match self {
            Self::Xdp => 9000,
            Self::Sockets | Self::Rdma | Self::Zerocopy => 1500,
        }
    }

    /// The target runs in the guest, not on the host.
    fn target_in_guest(self) -> bool {
        matches!(self, Self::Rdma | Self::Zerocopy)
    }

    /// The guest's kernel: zero-copy AF_XDP on virtio-net needs 6.11 or later.
    fn kernel(self) -> GuestKernel {
        if self == Self::Zerocopy {
            GuestKernel::Backports
        } else {
            GuestKernel::Stable
        }
    }

    /// What `nvme discover` and `nvme connect` take as `-t`, and the controller's
    /// `transport` in sysfs.
    fn transport(self) -> &'static str {
        match self {
            Self::Sockets | Self::Xdp | Self::Zerocopy => "tcp",
            Self::Rdma => "rdma",
        }
    }

    /// The address the guest's initiators reach the target at.
    fn target_addr(self) -> &'static str {
        if self.target_in_guest() {
            GUEST_ADDR
        } else {
            HOST_ADDR
        }
    }

    fn ns_bytes(self) -> u64 {
        match self {
            Self::Sockets | Self::Xdp => NS_BYTES,
            Self::Rdma | Self::Zerocopy => RDMA_NS_BYTES,
        }
    }
}

pub(crate) fn run(root: &Path, accel: Accel, path: LabPath) -> Result<()> {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask lab needs root (network namespaces, tap, debootstrap); try sudo");
    }
    ensure_tools(root)?;
    let cache = root.join("target/lab-cache");
    let sessions = path.sessions();
    let mut images = Vec::new();
    for &session in sessions {
        images.push(ensure_image(&cache, session.kernel())?);
    }
    let bin = super::release_binary(root)?;
    let perf = if sessions.iter().any(|s| s.target_in_guest()) {
        Some(super::release_perf_binary(root)?)
    } else {
        None
    };

    let runs = cache.join("run");
    if runs.exists() {
        fs::remove_dir_all(&runs).context("clearing target/lab-cache/run")?;
    }
    let accel = resolve_accel(accel);
    println!("lab: accelerator {accel}");

    // From here on there are processes and a namespace to clean up: Ctrl-C reaches the
    // whole foreground group, so QEMU and the target stop on it, and xtask ignores it to
    // report and delete the namespace. (Both install their own SIGINT handlers.)
    // SAFETY: setting a signal to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let mut tally = Tally::default();
    for (&session, image) in sessions.iter().zip(&images) {
        let name = session.name();
        let run_dir = runs.join(name);
        fs::create_dir_all(&run_dir)?;
        let config = run_dir.join("target.toml");
        fs::write(&config, target_config(session, &run_dir))
            .context("writing the target config")?;
        // A target that runs in the guest comes in the steps tar, with its config and the
        // perf client.
        let mut payload = Vec::new();
        // The zero-copy session's fallback: the same target in copy mode, should the
        // driver refuse zero-copy.
        let copy_config = run_dir.join("target-copy.toml");
        if session.target_in_guest() {
            let perf = perf.as_deref().context("no perf binary")?;
            payload = vec![
                (bin.as_path(), "bin/xdp-target"),
                (perf, "bin/xdp-target-perf"),
                (config.as_path(), "target.toml"),
            ];
        }
        if session == Session::Zerocopy {
            fs::write(&copy_config, zerocopy_target_config("auto"))
                .context("writing the copy-mode target config")?;
            payload.push((copy_config.as_path(), "target-copy.toml"));
        }
        let steps_tar = write_guest_steps(&run_dir, session, &payload)?;
        println!("lab: session over {}", session.describe());
        tally.prefix = format!("[{name}] ");
        let mut lab = Lab::create(&run_dir, &bin, &config, session)?;
        lab.perf.clone_from(&perf);
        let result = lab.session(image, &steps_tar, accel, &mut tally);
        drop(lab);
        if let Err(e) = result {
            tally.fail("lab", &format!("{e:#}"));
        }
        if session == Session::Xdp {
            // Every connection the guest made must have gone through AF_XDP, none through
            // the kernel's sockets.
            let log = fs::read_to_string(run_dir.join("target.log")).unwrap_or_default();
            let via_xdp = log.matches("connection closed (AF_XDP)").count();
            let via_kernel = log
                .lines()
                .filter(|l| l.contains("connection closed") && !l.contains("(AF_XDP)"))
                .count();
            let step = "the guest's connections went through AF_XDP (multi-buffer, MTU 9000)";
            if via_xdp > 0 && via_kernel == 0 && log.contains("multi_buffer=true") {
                tally.pass(&format!(
                    "{step} | {via_xdp} over AF_XDP, none over kernel sockets"
                ));
            } else {
                tally.fail(
                    step,
                    &format!("{via_xdp} over AF_XDP, {via_kernel} over kernel sockets"),
                );
            }
        }
        println!(
            "lab: logs in {} (console.log, target.log, qemu.log)",
            run_dir.display()
        );
    }
    tally.prefix.clear();
    println!("lab: {} s in all", started.elapsed().as_secs());
    println!("lab: {} passed, {} failed", tally.passed, tally.failed);
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 || tally.passed == 0 {
        // Not an Err: the count must stay the last line, and everything is cleaned up.
        std::process::exit(1);
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
    /// Which session the steps belong to.
    prefix: String,
}

impl Tally {
    fn pass(&mut self, step: &str) {
        self.passed += 1;
        println!("lab: PASS {}{step}", self.prefix);
    }

    fn fail(&mut self, step: &str, why: &str) {
        self.failed += 1;
        println!("lab: FAIL {}{step} | {why}", self.prefix);
    }
}

/// Installs the lab's Debian packages with `scripts/setup.sh --lab` when a tool is missing.
fn ensure_tools(root: &Path) -> Result<()> {
    let tools = [
        "qemu-system-x86_64",
        "debootstrap",
        "cpio",
        "mkfs.ext4",
        "depmod",
        "xz",
        "zstd",
        "ss",
    ];
    let mut missing: Vec<&str> = tools.into_iter().filter(|t| !on_path(t)).collect();
    if !is_static_busybox() {
        missing.push("busybox-static");
    }
    if !missing.is_empty() {
        eprintln!(
            "xtask: missing {}: running scripts/setup.sh --lab",
            missing.join(", ")
        );
        super::run(
            Command::new("bash")
                .arg(root.join("scripts/setup.sh"))
                .arg("--lab"),
        )?;
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

fn is_static_busybox() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "busybox-static"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn resolve_accel(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

// ---------------------------------------------------------------------------------------
// The guest image

struct Image {
    vmlinuz: PathBuf,
    initrd: PathBuf,
    root: PathBuf,
}

impl Image {
    fn in_dir(dir: &Path) -> Self {
        Self {
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            root: dir.join("root.img"),
        }
    }
}

/// Where the guest's kernel comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GuestKernel {
    /// Debian 12's own (6.1), from the apt sources of the machine.
    Stable,
    /// ZEROCOPY_KERNEL_SUITE's (trixie-backports: 7.x), for virtio-net's AF_XDP zero-copy.
    Backports,
}

/// apt's options for a kernel's sources: none for the machine's own, a private sources
/// list and package lists under target/lab-cache for trixie-backports (refreshed with
/// `apt-get update` on each run; the machine's apt configuration is left alone).
fn apt_options(cache: &Path, kernel: GuestKernel, mirror: &str) -> Result<Vec<String>> {
    if kernel == GuestKernel::Stable {
        return Ok(Vec::new());
    }
    let dir = cache.join(format!("apt-{ZEROCOPY_KERNEL_SUITE}"));
    fs::create_dir_all(dir.join("lists/partial"))?;
    fs::create_dir_all(dir.join("cache/archives/partial"))?;
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} \
             {ZEROCOPY_KERNEL_SUITE} main\n"
        ),
    )?;
    let opts = vec![
        format!("-oDir::Etc::SourceList={}", sources.display()),
        format!("-oDir::Etc::SourceParts={}", dir.join("none").display()),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
    ];
    super::run(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
    Ok(opts)
}

/// Returns the cached image for the current inputs, building it first when it is missing.
fn ensure_image(cache: &Path, kernel: GuestKernel) -> Result<Image> {
    let mirror = apt_mirror();
    fs::create_dir_all(cache)?;
    let apt = apt_options(cache, kernel, &mirror)?;
    let kernel_pkg = kernel_package(&apt)?;
    let kernel_version = package_version(&apt, &kernel_pkg)?;
    let inputs = format!(
        "layout={IMAGE_LAYOUT}\nsuite={SUITE}\nmirror={mirror}\npackages={GUEST_PACKAGES}\n\
         kernel={kernel_pkg} {kernel_version}\ninitrd-modules={}\nroot-size={ROOT_IMG_SIZE}\n\
         --- initrd init\n{INITRD_INIT}\n--- lab-init\n{LAB_INIT}\n",
        INITRD_MODULES.join(",")
    );
    let key = sha256_hex(inputs.as_bytes())?[..16].to_string();
    let dir = cache.join(&key);
    let image = Image::in_dir(&dir);
    if dir.join("complete").exists() {
        println!(
            "lab: guest image {key} (cached: {kernel_pkg} {kernel_version}, {SUITE} + nvme-cli)"
        );
        return Ok(image);
    }
    println!(
        "lab: building guest image {key} ({kernel_pkg} {kernel_version}, {SUITE} from {mirror})"
    );
    let t = Instant::now();
    let work = cache.join(format!("{key}.building"));
    remove_tree(&work)?;
    fs::create_dir_all(&work)?;
    let built = build_image(&work, &mirror, &apt, &kernel_pkg);
    if let Err(e) = built {
        let _ = remove_tree(&work);
        return Err(e.context("building the guest image"));
    }
    fs::write(work.join("inputs.txt"), &inputs)?;
    fs::write(work.join("complete"), "")?;
    remove_tree(&dir)?;
    fs::rename(&work, &dir).context("moving the built image into the cache")?;
    println!(
        "lab: guest image built in {} s into {}",
        t.elapsed().as_secs(),
        dir.display()
    );
    Ok(image)
}

fn build_image(work: &Path, mirror: &str, apt: &[String], kernel_pkg: &str) -> Result<()> {
    let rootfs = work.join("rootfs");
    println!("lab:   debootstrap --variant=minbase {SUITE} (30-60 s)");
    let log = File::create(work.join("debootstrap.log"))?;
    let status = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={GUEST_PACKAGES}"),
            SUITE,
        ])
        .arg(&rootfs)
        .arg(mirror)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("starting debootstrap")?;
    if !status.success() {
        bail!(
            "debootstrap failed ({status}); see {}",
            work.join("debootstrap.log").display()
        );
    }

    println!("lab:   kernel {kernel_pkg}");
    // Since trixie the image package is split: the kernel in linux-binary-*, the modules
    // in linux-modules-*, modules.builtin and the rest in linux-base-<version>, all among
    // its dependencies.
    let mut pkgs = vec![kernel_pkg.to_string()];
    pkgs.extend(split_kernel_packages(apt, kernel_pkg)?);
    super::run(
        Command::new("apt-get")
            .args(apt)
            .args(["download", "-q"])
            .args(&pkgs)
            .current_dir(work),
    )?;
    let kx = work.join("kernel");
    let mut debs = Vec::new();
    for pkg in &pkgs {
        let deb = fs::read_dir(work)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no .deb of {pkg}"))?;
        super::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kx))?;
        debs.push(deb);
    }
    // Packages built for a usrmerged suite ship their modules in usr/lib/modules.
    let modules = ["lib/modules", "usr/lib/modules"]
        .into_iter()
        .map(|d| kx.join(d))
        .find(|d| d.is_dir())
        .context("the kernel packages hold no lib/modules")?;
    let kver = only_entry(&modules)?;
    // The rootfs is usrmerged (/lib -> usr/lib): copy into usr/lib, never over the symlink.
    super::run(
        Command::new("cp")
            .arg("-a")
            .arg(&modules)
            .arg(rootfs.join("usr/lib/")),
    )?;
    if kx.join("boot").is_dir() {
        super::run(
            Command::new("cp")
                .arg("-a")
                .arg(kx.join("boot/."))
                .arg(rootfs.join("boot/")),
        )?;
    }
    super::run(
        Command::new("chroot")
            .arg(&rootfs)
            .args(["depmod", "-a", &kver]),
    )?;
    // boot/vmlinuz-KVER, or (linux-binary-*, since trixie) beside the modules.
    let vmlinuz = [
        kx.join(format!("boot/vmlinuz-{kver}")),
        modules.join(&kver).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .context("no vmlinuz in the kernel packages")?;
    fs::copy(&vmlinuz, work.join("vmlinuz")).context("copying vmlinuz")?;

    // The guest side: its init, a hostname, no apt caches.
    let lab_init = rootfs.join("sbin/lab-init");
    fs::write(&lab_init, LAB_INIT)?;
    fs::set_permissions(&lab_init, fs::Permissions::from_mode(0o755))?;
    fs::write(rootfs.join("etc/hostname"), "xdpt-lab-guest\n")?;
    remove_tree(&rootfs.join("var/cache/apt/archives"))?;
    fs::create_dir_all(rootfs.join("var/cache/apt/archives/partial"))?;

    println!("lab:   initrd");
    build_initrd(work, &rootfs.join("usr/lib/modules").join(&kver))?;

    println!("lab:   root.img (mkfs.ext4 -d)");
    super::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "xdpt-lab", "-d"])
            .arg(&rootfs)
            .arg(work.join("root.img"))
            .arg(ROOT_IMG_SIZE),
    )?;
    remove_tree(&rootfs)?;
    remove_tree(&kx)?;
    for deb in debs {
        fs::remove_file(deb)?;
    }
    Ok(())
}

/// The initrd: busybox-static, the modules that mount /dev/vda (uncompressed, since
/// busybox insmod may not read .ko.xz), their load order, and INITRD_INIT.
fn build_initrd(work: &Path, modules: &Path) -> Result<()> {
    let dir = work.join("initrd");
    for sub in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "lib/modules",
        "dev",
        "proc",
        "sys",
        "newroot",
    ] {
        fs::create_dir_all(dir.join(sub))?;
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).context("copying /bin/busybox")?;
    let dep = fs::read_to_string(modules.join("modules.dep")).context("reading modules.dep")?;
    // A kernel may have some of them built in (newer ones have virtio_pci built in).
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let builtin: Vec<String> = builtin.lines().map(module_name).collect();
    // crc32c_generic (ext4's checksums) is gone as a module since 6.x's CRC library
    // rework: the CRC code is built in there.
    let optional = ["crc32c_generic"];
    let listed = |m: &str| {
        dep.lines()
            .filter_map(|l| l.split_once(':'))
            .any(|(path, _)| module_name(path) == m.replace('-', "_"))
    };
    let wanted: Vec<&str> = INITRD_MODULES
        .into_iter()
        .filter(|m| !builtin.contains(&m.replace('-', "_")))
        .filter(|m| !optional.contains(m) || listed(m))
        .collect();
    let order = module_load_order(&dep, &wanted)?;
    let mut names = Vec::new();
    for rel in &order {
        let name = module_name(rel);
        let file = format!("{name}.ko");
        let src = modules.join(rel);
        let out = File::create(dir.join("lib/modules").join(&file))?;
        let tool = match rel.rsplit('.').next() {
            Some("xz") => Some("xz"),
            Some("zst") => Some("zstd"),
            Some("gz") => Some("gzip"),
            _ => None,
        };
        match tool {
            Some(t) => super::run(Command::new(t).arg("-dc").arg(&src).stdout(out))?,
            None => {
                drop(out);
                fs::copy(&src, dir.join("lib/modules").join(&file))?;
            }
        }
        names.push(file);
    }
    fs::write(dir.join("load-order"), names.join("\n") + "\n")?;
    let init = dir.join("init");
    fs::write(&init, INITRD_INIT)?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    // newc cpio, gzip-compressed: what the kernel unpacks into its initramfs.
    let out = File::create(work.join("initrd.img"))?;
    super::run(
        Command::new("sh")
            .args([
                "-c",
                "find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1",
            ])
            .current_dir(&dir)
            .stdout(out),
    )?;
    remove_tree(&dir)?;
    Ok(())
}

/// `kernel/fs/ext4/ext4.ko.xz` -> `ext4`.
fn module_name(rel: &str) -> String {
    let base = rel.rsplit('/').next().unwrap_or(rel);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// The modules.dep paths to insmod, dependencies first, for `wanted` (names with `_` or `-`).
fn module_load_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let mut deps = std::collections::HashMap::new();
    for line in modules_dep.lines() {
        if let Some((module, rest)) = line.split_once(':') {
            let list: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(module_name(module), (module.to_string(), list));
        }
    }
    fn visit(
        name: &str,
        deps: &std::collections::HashMap<String, (String, Vec<String>)>,
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        let Some((path, list)) = deps.get(name) else {
            bail!("module {name} is not in modules.dep (built in, or missing from this kernel?)");
        };
        if depth > 64 {
            bail!("module dependency loop at {name}");
        }
        if out.contains(path) {
            return Ok(());
        }
        // modules.dep lists every (transitive) dependency; resolving each one's own first
        // gives a valid order whatever order depmod printed them in.
        for d in list {
            visit(&module_name(d), deps, out, depth + 1)?;
        }
        out.push(path.clone());
        Ok(())
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(&w.replace('-', "_"), &deps, &mut out, 0)?;
    }
    Ok(out)
}

fn only_entry(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    if names.len() != 1 {
        bail!("expected one kernel in {}, found {names:?}", dir.display());
    }
    Ok(names.remove(0))
}

/// The Debian mirror the machine's apt uses (deb822 or one-line format).
fn apt_mirror() -> String {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let from_deb822 = deb822
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|u| !u.contains("security"));
    if let Some(u) = from_deb822 {
        return u.trim_end_matches('/').to_string();
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    list.lines()
        .map(str::split_whitespace)
        .filter_map(|mut w| match (w.next(), w.next()) {
            (Some("deb"), Some(u)) if !u.contains("security") && u.starts_with("http") => {
                Some(u.trim_end_matches('/').to_string())
            }
            _ => None,
        })
        .next()
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// The versioned image package that `linux-image-amd64` depends on.
fn kernel_package(apt: &[String]) -> Result<String> {
    let query = || {
        Command::new("apt-cache")
            .args(apt)
            .args(["depends", "linux-image-amd64"])
            .output()
    };
    let mut out = query().context("running apt-cache")?;
    if !out.status.success() {
        super::run(Command::new("apt-get").args(["update", "-qq"]))?;
        out = query()?;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .context("apt-cache depends linux-image-amd64 names no linux-image-* package")
}

/// The linux-binary-*, linux-modules-* and linux-base-<version> packages an image package
/// depends on (none before trixie, whose image packages hold all of it).
fn split_kernel_packages(apt: &[String], kernel_pkg: &str) -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args(apt)
        .args(["depends", kernel_pkg])
        .output()
        .context("running apt-cache depends")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .filter(|p| {
            p.starts_with("linux-binary-")
                || p.starts_with("linux-modules-")
                || p.strip_prefix("linux-base-")
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(str::to_string)
        .collect())
}

fn package_version(apt: &[String], pkg: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(apt)
        .args(["show", "--no-all-versions", pkg])
        .output()
        .context("running apt-cache show")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("apt-cache show {pkg} gives no version"))
}

fn sha256_hex(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting sha256sum")?;
    child
        .stdin
        .take()
        .context("sha256sum stdin")?
        .write_all(data)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or("");
    if !out.status.success() || hex.len() != 64 {
        bail!("sha256sum failed");
    }
    Ok(hex.to_string())
}

/// Removes a directory tree, first unmounting anything a failed debootstrap left inside it
/// (proc, sys), so that removal never walks into a live filesystem.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let abs = fs::canonicalize(dir)?;
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut inside: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(&abs))
        .collect();
    inside.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in inside {
        super::run(Command::new("umount").args(["-l", m]))?;
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

// ---------------------------------------------------------------------------------------
// One run: namespace, target, guest

/// The namespace, the tap and the processes in it; all stopped and deleted on drop.
struct Lab {
    target: Option<Child>,
    qemu: Option<Child>,
    /// The perf client, for the initiator steps the host runs (zero-copy session).
    perf: Option<PathBuf>,
    run_dir: PathBuf,
    bin: PathBuf,
    config: PathBuf,
    session: Session,
    // Dropped last, after Drop::drop has stopped the processes.
    ns: Netns,
}

impl Lab {
    fn create(run_dir: &Path, bin: &Path, config: &Path, session: Session) -> Result<Self> {
        let ns = Netns::create(NETNS).context("creating the lab namespace")?;
        let lab = Self {
            target: None,
            qemu: None,
            perf: None,
            run_dir: run_dir.to_path_buf(),
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
            session,
            ns,
        };
        ip(&["-n", NETNS, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ip(&[
            "-n",
            NETNS,
            "addr",
            "add",
            &format!("{HOST_ADDR}/24"),
            "dev",
            TAP,
        ])?;
        let mtu = session.mtu().to_string();
        ip(&["-n", NETNS, "link", "set", TAP, "mtu", &mtu])?;
        ip(&["-n", NETNS, "link", "set", TAP, "up"])?;
        Ok(lab)
    }

    fn session(
        &mut self,
        image: &Image,
        steps_tar: &Path,
        accel: &str,
        tally: &mut Tally,
    ) -> Result<()> {
        if self.session.target_in_guest() {
            // The guest starts it (and reports that as a step).
            return self.run_guest(image, steps_tar, accel, tally);
        }
        let step = format!(
            "target serves {NQN} on {HOST_ADDR}:{IO_PORT} and :{DISCOVERY_PORT}, {IQN} on :{ISCSI_PORT}"
        );
        match self.start_target() {
            Ok(()) => tally.pass(&step),
            Err(e) => {
                tally.fail(&step, &format!("{e:#}"));
                return Ok(());
            }
        }
        self.run_guest(image, steps_tar, accel, tally)
    }

    fn start_target(&mut self) -> Result<()> {
        let log = target_log(&self.run_dir)?;
        let mut cmd = self.ns.command(&self.bin);
        cmd.arg("serve").arg("--config").arg(&self.config);
        if self.session == Session::Xdp {
            cmd.args(["--xdp", TAP, "--require-afxdp"]);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting xdp-target")?;
        let target = self.target.insert(child);
        let deadline = Instant::now() + TARGET_START_TIMEOUT;
        loop {
            if let Some(status) = target.try_wait()? {
                bail!(
                    "xdp-target exited ({status}): {}",
                    tail(&self.run_dir.join("target.log"), 5)
                );
            }
            let out = self.ns.command("ss").args(["-Hltn"]).output()?;
            let listening = String::from_utf8_lossy(&out.stdout).into_owned();
            let has = |port: u16| {
                listening.contains(&format!("{HOST_ADDR}:{port} "))
                    || listening.contains(&format!("0.0.0.0:{port} "))
            };
            // On the XDP path the AF_XDP socket binds before the kernel's listeners.
            if has(IO_PORT) && has(DISCOVERY_PORT) && has(ISCSI_PORT) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not listening after {} s", TARGET_START_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `xdp-target ctl ARGS` on the target's control socket for the guest (a step of
    /// its own); the answer for the guest's serial line: `ctl ok ...` or `ctl failed ...`.
    fn host_ctl(&self, args: &str, tally: &mut Tally) -> String {
        let step = format!("host: xdp-target ctl {args}");
        let out = Command::new(&self.bin)
            .arg("ctl")
            .arg("--socket")
            .arg(self.run_dir.join(CONTROL_SOCKET))
            .args(args.split_whitespace())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let summary: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                tally.pass(&format!("{step} | {summary}"));
                "ctl ok".into()
            }
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
                tally.fail(&step, &why);
                format!("ctl failed: {}", why.lines().next().unwrap_or(""))
            }
            Err(e) => {
                tally.fail(&step, &e.to_string());
                format!("ctl failed: {e}")
            }
        }
    }

    /// Stops the target with SIGTERM (SIGKILL after 10 s); returns how it exited.
    fn stop_target(&mut self) -> Result<String> {
        let Some(mut child) = self.target.take() else {
            return Ok("not running".into());
        };
        let pid = libc::pid_t::try_from(child.id()).context("pid")?;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.to_string());
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                return Ok("did not stop on SIGTERM within 10 s; killed".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run_guest(
        &mut self,
        image: &Image,
        steps_tar: &Path,
        accel: &str,
        tally: &mut Tally,
    ) -> Result<()> {
        let qemu_log = File::create(self.run_dir.join("qemu.log"))?;
        // Zero-copy AF_XDP on virtio-net needs the DMA API (VIRTIO_F_ACCESS_PLATFORM, which
        // a modern-only device offers with iommu_platform=on; no vIOMMU is needed) and
        // per-queue reset (VIRTIO_F_RING_RESET, QEMU's queue_reset, on since QEMU 7.2):
        // drivers/net/virtio_net.c, virtnet_xsk_pool_enable() and virtnet_rq_bind_xsk_pool().
        let nic = match self.session {
            // On the XDP path the guest computes its checksums itself: with offload, its
            // frames reach the tap with partial checksums (as from any local peer), which
            // the user-space stack, verifying every checksum, would drop. A NIC on a wire
            // always delivers complete ones.
            Session::Xdp => "virtio-net-pci,netdev=n0,csum=off,host_mtu=9000",
            Session::Zerocopy => {
                "virtio-net-pci,netdev=n0,disable-legacy=on,iommu_platform=on,queue_reset=on"
            }
            Session::Sockets | Session::Rdma => "virtio-net-pci,netdev=n0",
        };
        let mut console = File::create(self.run_dir.join("console.log"))?;
        let mut child = self
            .ns
            .command("qemu-system-x86_64")
            .args(["-accel", accel, "-m", "2048", "-smp", "2"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&image.vmlinuz)
            .arg("-initrd")
            .arg(&image.initrd)
            .args([
                "-append",
                "console=ttyS0 root=/dev/vda rw panic=-1 quiet net.ifnames=0",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,snapshot=on",
                image.root.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                steps_tar.display()
            ))
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
                "-device",
                nic,
                "-serial",
                "stdio",
            ])
            // The zero-copy session's guest waits on its serial line for the host's
            // initiator steps to end.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(qemu_log)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let mut serial_in = child.stdin.take();
        self.qemu = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(text).is_err() {
                    break;
                }
            }
        });

        let t0 = Instant::now();
        let deadline = t0 + GUEST_DEADLINE;
        let mut done = false;
        let mut dmesg = Vec::new();
        let mut failed_here = false;
        let mut booted = false;
        loop {
            let now = Instant::now();
            let by = if booted { deadline } else { t0 + BOOT_DEADLINE };
            let line = match rx.recv_timeout(by.saturating_duration_since(now)) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Timeout) if !booted => {
                    tally.fail(
                        "guest boots",
                        &format!(
                            "no LAB: line on the console {} s after QEMU started \
                             ({accel}; see qemu.log, console.log); killed",
                            BOOT_DEADLINE.as_secs()
                        ),
                    );
                    failed_here = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    tally.fail(
                        "guest finishes",
                        &format!("still running after {} s; killed", GUEST_DEADLINE.as_secs()),
                    );
                    failed_here = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            writeln!(console, "{line}")?;
            let Some(msg) = line.find("LAB: ").map(|i| &line[i + 5..]) else {
                continue;
            };
            booted = true;
            if let Some(rest) = msg.strip_prefix("PASS ") {
                tally.pass(rest);
            } else if let Some(rest) = msg.strip_prefix("FAIL ") {
                tally.fail_guest(rest);
            } else if let Some(rest) = msg.strip_prefix("OUT ") {
                println!("lab:     {rest}");
            } else if let Some(rest) = msg.strip_prefix("DMESG ") {
                dmesg.push(rest.to_string());
            } else if let Some(rest) = msg.strip_prefix("INFO ") {
                println!("lab: {rest}");
            } else if let Some(rest) = msg.strip_prefix("TARGET-LOG ") {
                writeln!(target_log(&self.run_dir)?, "{rest}")?;
            } else if msg == "RESTART-TARGET" && self.session.target_in_guest() {
                tally.fail(
                    "host restarts the target",
                    "the guest asked, but this session's target runs in the guest",
                );
            } else if msg == "RESTART-TARGET" {
                let step = "host restarts the target (SIGTERM, start again)";
                let restarted = self
                    .stop_target()
                    .and_then(|how| self.start_target().map(|()| how));
                match restarted {
                    Ok(how) => tally.pass(&format!("{step} | old one exited: {how}")),
                    Err(e) => tally.fail(step, &format!("{e:#}")),
                }
            } else if let Some(args) = msg.strip_prefix("CTL ") {
                let answer = self.host_ctl(args, tally);
                let told = serial_in.as_mut().map(|s| {
                    s.write_all(format!("{answer}\n").as_bytes())
                        .and_then(|()| s.flush())
                });
                if !matches!(told, Some(Ok(()))) {
                    tally.fail("host answers the guest's ctl", "qemu's stdin is closed");
                }
            } else if msg == "HOST-STEPS" {
                self.host_steps(tally);
                // The guest reads this line from its ttyS0 and goes on.
                let told = serial_in
                    .as_mut()
                    .map(|s| s.write_all(b"host-steps-done\n").and_then(|()| s.flush()));
                if !matches!(told, Some(Ok(()))) {
                    tally.fail(
                        "host tells the guest its steps ended",
                        "qemu's stdin is closed",
                    );
                }
            } else if msg == "DONE" {
                done = true;
            }
        }
        if let Some(mut q) = self.qemu.take() {
            // After DONE the guest powers off by itself; give it a moment, then make sure.
            let grace = if done { 10 } else { 0 };
            let stop_by = Instant::now() + Duration::from_secs(grace);
            while q.try_wait()?.is_none() && Instant::now() < stop_by {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = q.kill();
            let _ = q.wait();
        }
        if !done && !failed_here {
            tally.fail(
                "guest finishes",
                &format!(
                    "the guest stopped without LAB: DONE; last console lines:\n{}",
                    tail(&self.run_dir.join("console.log"), 15)
                ),
            );
        }
        println!("lab: guest ran {} s", t0.elapsed().as_secs());
        if tally.failed > 0 && !dmesg.is_empty() {
            println!("lab: guest dmesg (nvme, iscsi, scsi, tcp, rdma):");
            for l in &dmesg {
                println!("lab:     {l}");
            }
        }
        Ok(())
    }
}

impl Lab {
    /// The initiators on the host's end of the tap, against the target in the guest (the
    /// zero-copy session): libiscsi's iscsi-ls, then the perf client's verified mixed
    /// workload over NVMe/TCP (with and without digests) and over iSCSI.
    fn host_steps(&self, tally: &mut Tally) {
        let Some(perf) = self.perf.as_deref() else {
            tally.fail("host initiators", "no perf binary");
            return;
        };
        let run = |program: &Path, args: &[&str], secs: u64| -> (bool, String) {
            let out = self
                .ns
                .command("timeout")
                .args(["-k", "5", &secs.to_string()])
                .arg(program)
                .args(args)
                .output();
            match out {
                Ok(o) => (
                    o.status.success(),
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ),
                ),
                Err(e) => (false, format!("cannot run {}: {e}", program.display())),
            }
        };
        let portal = format!("iscsi://{GUEST_ADDR}");
        let step = format!("host: iscsi-ls -s {portal} lists {IQN}");
        let (ok, out) = run(Path::new("iscsi-ls"), &["-s", &portal], 60);
        if ok && out.contains(IQN) {
            let lun = out
                .lines()
                .find(|l| l.contains("Lun:0"))
                .unwrap_or("")
                .trim();
            tally.pass(&format!("{step} | {lun}"));
        } else {
            tally.fail(&step, &out);
        }
        let nvme = format!("nvme-tcp://{GUEST_ADDR}:{IO_PORT}/{NQN}");
        let iscsi = format!("iscsi://{GUEST_ADDR}/{IQN}/0");
        for (url, digests) in [(&nvme, false), (&nvme, true), (&iscsi, false)] {
            let mut args = vec![
                url.as_str(),
                "--workload",
                "mixed",
                "--verify",
                "--time",
                "5",
            ];
            args.push("--json");
            if digests {
                args.push("--digests");
            }
            let step = format!(
                "host: xdp-target-perf {url} --workload mixed --verify --time 5{}",
                if digests { " --digests" } else { "" }
            );
            let (ok, out) = run(perf, &args, 90);
            let field = |k: &str| {
                out.split(&format!("\"{k}\":"))
                    .nth(1)
                    .map(|r| {
                        r.chars()
                            .take_while(char::is_ascii_digit)
                            .collect::<String>()
                    })
                    .unwrap_or_default()
            };
            let (reads, writes, mismatches) =
                (field("reads"), field("writes"), field("mismatches"));
            let busy = |n: &str| n.parse::<u64>().is_ok_and(|n| n > 0);
            if ok && mismatches == "0" && busy(&reads) && busy(&writes) {
                tally.pass(&format!(
                    "{step} | {} IOPS, {reads} reads verified, {writes} writes, 0 mismatches",
                    field("iops")
                ));
            } else {
                tally.fail(&step, &out);
            }
        }
    }
}

impl Tally {
    fn fail_guest(&mut self, rest: &str) {
        self.failed += 1;
        println!("lab: FAIL {}{rest}", self.prefix);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            let _ = q.wait();
        }
        if let Err(e) = self.stop_target() {
            eprintln!("lab: stopping the target: {e:#}");
        }
        // The tap goes with the namespace; deleting it first keeps that explicit.
        if let Err(e) = ip(&["-n", NETNS, "link", "del", TAP]) {
            eprintln!("lab: deleting {TAP}: {e}");
        }
    }
}

/// The run's target.log, opened for appending: the target writes it on the host, the
/// guest's `LAB: TARGET-LOG` lines when the target runs in the guest.
fn target_log(run_dir: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("target.log"))
        .context("opening target.log")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The namespace lives in a file (in the run folder, or on the guest's tmpfs when the
/// target runs there), so the restart step can check that data written (and flushed)
/// before it is still there after it.
fn target_config(session: Session, run_dir: &Path) -> String {
    if session == Session::Rdma {
        return rdma_target_config();
    }
    if session == Session::Zerocopy {
        return zerocopy_target_config("require");
    }
    let image = run_dir.join("ns1.img");
    let image = image.display();
    let control = run_dir.join(CONTROL_SOCKET);
    let control = control.display();
    format!(
        r#"# Written by cargo xtask lab.
[control]
socket = "{control}"

[nvme]
listen = ["{HOST_ADDR}:{IO_PORT}", "{HOST_ADDR}:{DISCOVERY_PORT}"]
discovery_port = {DISCOVERY_PORT}
header_digest = true
data_digest = true

[iscsi]
listen = ["{HOST_ADDR}:{ISCSI_PORT}"]

# The same file namespace is NVMe namespace 1 and iSCSI LUN 0 (used one at a time).
[[subsystem]]
nqn = "{NQN}"
iqn = "{IQN}"
chap = {{ user = "{CHAP_USER}", secret = "{CHAP_SECRET}" }}
mutual_chap = {{ user = "{MUTUAL_USER}", secret = "{MUTUAL_SECRET}" }}
[[subsystem.namespace]]
nsid = 1
backend = "file"
path = "{image}"
size = {NS_BYTES}
block_size = {NS_BLOCK}
"#
    )
}

/// The config of the target in the guest: NVMe/RDMA only (no NVMe/TCP or iSCSI
/// listeners, so every connection the guest makes is an RDMA one), on the guest's address.
fn rdma_target_config() -> String {
    format!(
        r#"# Written by cargo xtask lab; the target reads it in the guest.
[nvme]
listen = []
discovery_port = {DISCOVERY_PORT}

[iscsi]
listen = []

[rdma]
listen = ["{GUEST_ADDR}:{IO_PORT}", "{GUEST_ADDR}:{DISCOVERY_PORT}"]
require = true

# On the guest's tmpfs: buffered (tmpfs takes no O_DIRECT on 6.1), and it outlives a
# restart of the target, not the guest.
[[subsystem]]
nqn = "{NQN}"
[[subsystem.namespace]]
nsid = 1
backend = "file"
path = "{RDMA_NS_PATH}"
size = {RDMA_NS_BYTES}
block_size = {NS_BLOCK}
"#
    )
}

/// The config of the target in the zero-copy session's guest: NVMe/TCP and iSCSI on the
/// guest's address, served over the XDP path on eth0 (`--xdp eth0 --require-afxdp`), with
/// `zero_copy` ("require", or "auto" for the copy-mode fallback). The user-space stack
/// computes its own TCP checksums: zero-copy AF_XDP on virtio-net has no TX checksum
/// offload to ask for. No CHAP: the initiators here are the perf client and iscsi-ls.
fn zerocopy_target_config(zero_copy: &str) -> String {
    format!(
        r#"# Written by cargo xtask lab; the target reads it in the guest.
[nvme]
listen = ["{GUEST_ADDR}:{IO_PORT}", "{GUEST_ADDR}:{DISCOVERY_PORT}"]
discovery_port = {DISCOVERY_PORT}
header_digest = true
data_digest = true

[iscsi]
listen = ["{GUEST_ADDR}:{ISCSI_PORT}"]

[xdp]
zero_copy = "{zero_copy}"
require_afxdp = true
tx_checksum = "software"

[[subsystem]]
nqn = "{NQN}"
iqn = "{IQN}"
[[subsystem.namespace]]
nsid = 1
backend = "file"
path = "{RDMA_NS_PATH}"
size = {RDMA_NS_BYTES}
block_size = {NS_BLOCK}
"#
    )
}

/// Writes lib.sh, main.sh and `payload` (files, and their paths in the tar) into a tar
/// for the guest's /dev/vdb, which the guest unpacks into GUEST_LAB_DIR.
fn write_guest_steps(
    run_dir: &Path,
    session: Session,
    payload: &[(&Path, &str)],
) -> Result<PathBuf> {
    let dir = run_dir.join("guest");
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("lib.sh"),
        format!("{}{GUEST_LIB}", guest_vars(session)),
    )?;
    let steps = match session {
        Session::Sockets | Session::Xdp => GUEST_STEPS_TCP,
        Session::Rdma => GUEST_STEPS_RDMA,
        Session::Zerocopy => GUEST_STEPS_ZEROCOPY,
    };
    fs::write(dir.join("main.sh"), format!("{GUEST_MAIN}{steps}"))?;
    let mut names = vec!["lib.sh", "main.sh"];
    for &(src, name) in payload {
        let dst = dir.join(name);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
        names.push(name);
    }
    let tar = run_dir.join("steps.tar");
    super::run(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&dir)
            .args(&names),
    )?;
    Ok(tar)
}

/// The variables lib.sh starts with (see GUEST_LIB).
fn guest_vars(session: Session) -> String {
    let ns_bytes = session.ns_bytes();
    format!(
        "SESSION={}\nTRANSPORT={}\nTARGET={}\nTARGET_IN_GUEST={}\nGUEST={GUEST_ADDR}\n\
         NQN={NQN}\nIO_PORT={IO_PORT}\nDISC_PORT={DISCOVERY_PORT}\n\
         NS_BYTES={ns_bytes}\nNS_BLOCKS={}\n\
         IQN={IQN}\nINITIATOR={INITIATOR}\nISCSI_PORT={ISCSI_PORT}\n\
         CHAP_USER={CHAP_USER}\nCHAP_SECRET={CHAP_SECRET}\n\
         MUTUAL_USER={MUTUAL_USER}\nMUTUAL_SECRET={MUTUAL_SECRET}\nMTU={}\n\
         LAB_DIR={GUEST_LAB_DIR}\nLAB_BIN={GUEST_LAB_DIR}/bin\n\
         TARGET_CONFIG={GUEST_LAB_DIR}/target.toml\n\
         TARGET_LOG=/tmp/lab-target.log\n",
        session.name(),
        session.transport(),
        session.target_addr(),
        u8::from(session.target_in_guest()),
        ns_bytes / NS_BLOCK,
        session.mtu(),
    )
}

// ---------------------------------------------------------------------------------------
// Guest-side scripts

/// The initrd's /init (busybox sh): load the disk modules, mount /dev/vda, switch_root.
const INITRD_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /load-order); do
    insmod /lib/modules/$m || echo "initrd: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
    echo "LAB: FAIL initrd | cannot mount /dev/vda"
    echo o > /proc/sysrq-trigger
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/lab-init
echo "LAB: FAIL initrd | switch_root failed"
"#;

/// The guest's PID 1 after switch_root: mounts, then the run's steps from /dev/vdb.
const LAB_INIT: &str = r#"#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lab
if tar -xf /dev/vdb -C /run/lab && [ -f /run/lab/main.sh ]; then
    bash /run/lab/main.sh
else
    echo "LAB: FAIL guest setup | no lab steps on /dev/vdb"
fi
echo "LAB: DONE"
sync
echo o > /proc/sysrq-trigger
sleep 60
"#;

/// Step functions (sourced by main.sh and by each step's subshell); xtask prepends the
/// variables (`guest_vars`): SESSION, TRANSPORT (tcp or rdma), TARGET (the address the
/// target serves on), TARGET_IN_GUEST (1 when the guest runs the target), GUEST, NQN,
/// IO_PORT, DISC_PORT, NS_BYTES, NS_BLOCKS, MTU; for iSCSI IQN, INITIATOR, ISCSI_PORT and
/// the CHAP credentials; for a target in the guest LAB_BIN, TARGET_CONFIG and TARGET_LOG.
const GUEST_LIB: &str = r#"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
MNT=/mnt/lab

# A one-line detail for the step's PASS/FAIL line.
note() { echo "$*" | tr -s '\t\n' '  ' > /tmp/lab-note; }

# The controller device (/dev/nvmeN) of our subsystem over $TRANSPORT.
ctrl_dev() {
    local c
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c/subsysnqn" ] || continue
        if [ "$(cat "$c/subsysnqn")" = "$NQN" ] && [ "$(cat "$c/transport")" = "$TRANSPORT" ]; then
            echo "/dev/${c##*/}"
            return 0
        fi
    done
    echo "no NVMe/$TRANSPORT controller for $NQN" >&2
    return 1
}

# The namespace's block device, waiting up to 10 s for it to appear; the iSCSI steps
# set LAB_DEV to the LUN's disk instead.
ns_dev() {
    local i d
    if [ -n "${LAB_DEV:-}" ]; then
        [ -b "$LAB_DEV" ] && { echo "$LAB_DEV"; return 0; }
        echo "$LAB_DEV is not a block device" >&2
        return 1
    fi
    for i in $(seq 1 100); do
        for d in /dev/nvme[0-9]*n1; do
            [ -b "$d" ] && { echo "$d"; return 0; }
        done
        sleep 0.1
    done
    echo "no /dev/nvme*n1 block device appeared" >&2
    return 1
}

wait_gone() {
    local i
    for i in $(seq 1 100); do
        ls /dev/nvme[0-9]*n1 >/dev/null 2>&1 || return 0
        sleep 0.1
    done
    echo "namespace device still present after disconnect" >&2
    return 1
}

# Asks the host to run `xdp-target ctl ARGS` on the target it runs (a `LAB: CTL` line);
# the host answers on ttyS0 with `ctl ok` or `ctl failed: why`.
host_ctl() {
    local line
    echo "LAB: CTL $*" > /dev/console
    read -r -t 60 line < /dev/ttyS0 || { echo "no answer from the host in 60 s"; return 1; }
    case "$line" in
        "ctl ok"*) return 0 ;;
        *) echo "host: $line"; return 1 ;;
    esac
}

# The block device of NVMe namespace NSID (any controller: the lab connects one).
nsid_dev() {
    local b
    for b in /sys/block/nvme*n*; do
        # Not the paths (nvmeXcYnZ) under a multipath head.
        case "${b##*/}" in nvme*c*) continue ;; esac
        [ "$(cat "$b/nsid" 2>/dev/null)" = "$1" ] && { echo "/dev/${b##*/}"; return 0; }
    done
    return 1
}

# Waits up to $2 s for `$1` (a command) to succeed.
wait_for() {
    local i
    for i in $(seq 1 $(($2 * 10))); do
        eval "$1" && return 0
        sleep 0.1
    done
    return 1
}

# NVMe: namespace 2 added on the running target appears on the connected controller
# (Namespace Attribute Changed AEN, Changed Namespace List, rescan), with its size.
s_ns_appears() {
    local dev t0=$SECONDS
    host_ctl add-namespace "$NQN" 2 --size 64MiB || return 1
    wait_for 'nsid_dev 2 >/dev/null' 30 || { dmesg | tail -n 5; echo "no namespace 2 after 30 s"; return 1; }
    dev=$(nsid_dev 2)
    sized_and_written "$dev" 67108864 /tmp/ns2 || return 1
    note "$dev appeared after $((SECONDS - t0)) s, 67108864 bytes, 1 MiB written"
}

# NVMe: growing namespace 2 reaches the kernel without a reconnect; the data stays.
s_ns_grows() {
    local dev bytes t0=$SECONDS
    dev=$(nsid_dev 2) || { echo "no namespace 2"; return 1; }
    host_ctl resize-namespace "$NQN" 2 96MiB || return 1
    wait_for '[ "$(blockdev --getsize64 '"$dev"')" -eq 100663296 ]' 30 \
        || { echo "$dev still has $(blockdev --getsize64 "$dev") bytes"; return 1; }
    same_mib "$dev" /tmp/ns2 || return 1
    dd if=/dev/zero of="$dev" bs=1M seek=95 count=1 oflag=direct status=none || { echo "the new end is not writable"; return 1; }
    note "$dev: 100663296 bytes after $((SECONDS - t0)) s (dmesg: $(dmesg | grep -i 'capacity change' | tail -n 1 | cut -c1-80)), data intact"
}

# NVMe: removing namespace 2 removes the device; namespace 1 stays.
s_ns_goes() {
    local t0=$SECONDS
    host_ctl remove-namespace "$NQN" 2 || return 1
    wait_for '! nsid_dev 2 >/dev/null' 30 || { echo "namespace 2 still there after 30 s"; return 1; }
    nsid_dev 1 >/dev/null || { echo "namespace 1 went too"; return 1; }
    note "gone after $((SECONDS - t0)) s; namespace 1 stays"
}

# The disk of LUN $1 of the iSCSI session (the lab logs in to one target).
lun_dev() {
    local d
    for d in /sys/class/scsi_disk/*:"$1"; do
        [ -d "$d/device/block" ] || continue
        echo "/dev/$(ls "$d/device/block" | head -n 1)"
        return 0
    done
    return 1
}

# Device $1 has $2 bytes; its first MiB is written with random bytes, kept in file $3.
sized_and_written() {
    local bytes
    bytes=$(blockdev --getsize64 "$1")
    [ "$bytes" -eq "$2" ] || { echo "$1 has $bytes bytes"; return 1; }
    head -c 1048576 /dev/urandom > "$3" || return 1
    dd if="$3" of="$1" bs=1M oflag=direct conv=fsync status=none
}

# The first MiB of device $1 is file $2 (the guest has no /dev/fd for <(...)).
same_mib() {
    dd if="$1" of=/tmp/mib bs=1M count=1 iflag=direct status=none || return 1
    cmp -s /tmp/mib "$2" || { echo "the first MiB of $1 changed"; return 1; }
}

# How often the kernel logged $1.
dmesg_count() { dmesg | grep -c "$1"; }

LUNS_CHANGED="LUN assignments on this target have changed"

# iSCSI: LUN 1 added on the running target: the next command gets REPORTED LUNS DATA HAS
# CHANGED (the kernel logs it), and a rescan attaches the new disk.
s_iscsi_lun_appears() {
    local before dev
    before=$(dmesg_count "$LUNS_CHANGED")
    host_ctl add-namespace "$NQN" 2 --size 32MiB --no-nvme || return 1
    dd if="$LAB_DEV" of=/dev/null bs=4096 count=1 iflag=direct status=none || return 1
    wait_for '[ "$(dmesg_count "$LUNS_CHANGED")" -gt '"$before"' ]' 10 \
        || { echo "the kernel logged no REPORTED LUNS DATA HAS CHANGED"; return 1; }
    iscsiadm -m session -R >/dev/null || return 1
    wait_for 'lun_dev 1 >/dev/null' 30 || { echo "no disk for LUN 1 after the rescan"; return 1; }
    dev=$(lun_dev 1)
    sized_and_written "$dev" 33554432 /tmp/lun1 || return 1
    note "unit attention logged; rescan attached $dev, 33554432 bytes, 1 MiB written"
}

# iSCSI: growing LUN 1 gives CAPACITY DATA HAS CHANGED; a rescan reads the new size.
s_iscsi_lun_grows() {
    local dev before
    dev=$(lun_dev 1) || { echo "no disk for LUN 1"; return 1; }
    before=$(dmesg_count "Capacity data has changed")
    host_ctl resize-namespace "$NQN" 2 48MiB || return 1
    dd if="$dev" of=/dev/null bs=4096 count=1 iflag=direct status=none || return 1
    wait_for '[ "$(dmesg_count "Capacity data has changed")" -gt '"$before"' ]' 10 \
        || { echo "the kernel logged no CAPACITY DATA HAS CHANGED"; return 1; }
    iscsiadm -m session -R >/dev/null || return 1
    wait_for '[ "$(blockdev --getsize64 '"$dev"')" -eq 50331648 ]' 30 \
        || { echo "$dev has $(blockdev --getsize64 "$dev") bytes after the rescan"; return 1; }
    same_mib "$dev" /tmp/lun1 || return 1
    note "unit attention logged; $dev: 50331648 bytes after the rescan, data intact"
}

# iSCSI: removing LUN 1: REPORTED LUNS DATA HAS CHANGED again, its disk fails I/O (the
# kernel keeps the device until it is deleted), LUN 0 serves on.
s_iscsi_lun_goes() {
    local dev before
    dev=$(lun_dev 1) || { echo "no disk for LUN 1"; return 1; }
    before=$(dmesg_count "$LUNS_CHANGED")
    host_ctl remove-namespace "$NQN" 2 || return 1
    dd if="$LAB_DEV" of=/dev/null bs=4096 count=1 iflag=direct status=none || return 1
    wait_for '[ "$(dmesg_count "$LUNS_CHANGED")" -gt '"$before"' ]' 10 \
        || { echo "the kernel logged no REPORTED LUNS DATA HAS CHANGED"; return 1; }
    if dd if="$dev" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null; then
        echo "$dev still reads"
        return 1
    fi
    echo 1 > "/sys/block/${dev#/dev/}/device/delete"
    note "unit attention logged, $dev fails I/O and was deleted; LUN 0 serves on"
}

ctrl_state() {
    local c
    c=$(ctrl_dev 2>/dev/null) || { echo none; return; }
    cat "/sys/class/nvme/${c#/dev/}/state" 2>/dev/null || echo none
}

s_network() {
    modprobe virtio_net
    ip link set lo up
    ip addr add "$GUEST/24" dev eth0
    ip link set eth0 mtu "$MTU" || return 1
    ip link set eth0 up
    local i
    for i in $(seq 1 50); do
        [ "$(cat /sys/class/net/eth0/operstate)" = up ] && break
        sleep 0.1
    done
    ip -br addr show eth0
    [ "$(cat /sys/class/net/eth0/operstate)" = up ] || { echo "eth0 is not up"; return 1; }
    note "eth0 $GUEST/24, MTU $(cat /sys/class/net/eth0/mtu)"
}

s_modules() {
    modprobe configfs && mount -t configfs none /sys/kernel/config
    modprobe "nvme-$TRANSPORT" || return 1
    [ -c /dev/nvme-fabrics ] || { echo "/dev/nvme-fabrics missing"; return 1; }
    mkdir -p /etc/nvme
    [ -s /etc/nvme/hostnqn ] || nvme gen-hostnqn > /etc/nvme/hostnqn
    note "nvme-$TRANSPORT loaded on $(uname -r); nvme-cli $(nvme version | head -n 1 | awk '{print $3}'); host $(cat /etc/nvme/hostnqn)"
}

# ---- soft-RoCE, and the target in the guest (NVMe/RDMA session) ----------------------

# rxe0 on eth0, its port ACTIVE, and user-space verbs and RDMA CM reaching it.
s_rxe_up() {
    modprobe rdma_rxe || return 1
    # User-space RDMA CM (/dev/infiniband/rdma_cm), for the target and rping; nothing
    # loads it on demand here (no udev).
    modprobe rdma_ucm || return 1
    rdma link add rxe0 type rxe netdev eth0 || return 1
    local i state=""
    for i in $(seq 1 100); do
        state=$(rdma link show rxe0/1 2>/dev/null | sed -n 's/.* state \([A-Z_]*\).*/\1/p')
        [ "$state" = ACTIVE ] && break
        sleep 0.1
    done
    rdma link show
    [ "$state" = ACTIVE ] || { echo "rxe0/1 is '$state', not ACTIVE"; return 1; }
    ibv_devices | grep -qw rxe0 || { ibv_devices; echo "ibv_devices does not list rxe0"; return 1; }
    [ -c /dev/infiniband/rdma_cm ] || { echo "/dev/infiniband/rdma_cm missing"; return 1; }
    note "$(rdma link show rxe0/1 | tr -s ' ')"
}

# RDMA CM and verbs work on their own over rxe's loopback: rping to the guest's own
# address (a failure here is the environment's, not the target's).
s_rping() {
    local out srv i=0 start=$SECONDS
    rping -s -a "$GUEST" -C 3 > /tmp/lab-rping-server 2>&1 &
    srv=$!
    # The server may not listen yet: try again for 30 s.
    while [ $((SECONDS - start)) -lt 30 ]; do
        i=$((i + 1))
        out=$(timeout 10 rping -c -a "$GUEST" -C 3 -v 2>&1)
        [ "$(echo "$out" | grep -c 'ping data: rdma-ping-')" -eq 3 ] && break
        sleep 0.5
    done
    kill "$srv" 2>/dev/null
    wait "$srv" 2>/dev/null
    echo "$out"
    [ "$(echo "$out" | grep -c 'ping data: rdma-ping-')" -eq 3 ] || { echo "rping did not get 3 pings back"; cat /tmp/lab-rping-server; return 1; }
    note "3 pings over RDMA CM to $GUEST, client tries: $i"
}

# The binaries, the config and the libraries the binaries dlopen are there, and the
# host-built binaries run here.
s_target_files() {
    local f
    for f in "$LAB_BIN/xdp-target" "$LAB_BIN/xdp-target-perf"; do
        [ -x "$f" ] || { echo "$f missing or not executable"; return 1; }
        "$f" --help > /dev/null || { echo "$f --help fails"; return 1; }
    done
    [ -s "$TARGET_CONFIG" ] || { echo "$TARGET_CONFIG missing"; return 1; }
    ls -l /usr/lib/x86_64-linux-gnu/libibverbs.so.1 /usr/lib/x86_64-linux-gnu/librdmacm.so.1 \
        /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so || return 1
    note "xdp-target $(stat -c %s "$LAB_BIN/xdp-target") bytes, xdp-target-perf" \
        "$(stat -c %s "$LAB_BIN/xdp-target-perf") bytes; libibverbs.so.1, librdmacm.so.1, librxe"
}

# Running and not a zombie.
alive() {
    [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"
}

# Starts the target in the background, in its own session (no step's timeout takes it
# down), its output appended to $TARGET_LOG; it is up once it has logged "NVMe/RDMA
# listening on" for both addresses. (Deadlines here count seconds, not polls: under TCG
# a poll costs more than its sleep.)
target_start() {
    local pid from up start=$SECONDS
    touch "$TARGET_LOG"
    from=$(($(wc -l < "$TARGET_LOG") + 1))
    RUST_LOG=info NO_COLOR=1 setsid "$LAB_BIN/xdp-target" serve --config "$TARGET_CONFIG" \
        >> "$TARGET_LOG" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > /tmp/lab-target.pid
    while [ $((SECONDS - start)) -lt 30 ]; do
        if ! alive "$pid"; then
            echo "xdp-target exited; its log:"
            tail -n +"$from" "$TARGET_LOG" | tail -n 25
            return 1
        fi
        up=$(tail -n +"$from" "$TARGET_LOG" | grep 'NVMe/RDMA listening on')
        if echo "$up" | grep -qF "$TARGET:$IO_PORT" && echo "$up" | grep -qF "$TARGET:$DISC_PORT"; then
            echo "pid $pid, up after $((SECONDS - start)) s"
            return 0
        fi
        sleep 0.2
    done
    kill -KILL "$pid"
    echo "xdp-target has not logged 'NVMe/RDMA listening on' $TARGET:$IO_PORT and :$DISC_PORT in 30 s (killed); its log:"
    tail -n +"$from" "$TARGET_LOG" | tail -n 25
    return 1
}

# SIGTERM, and 10 s to exit (then SIGKILL, and a failure).
target_stop() {
    local pid start=$SECONDS
    pid=$(cat /tmp/lab-target.pid 2>/dev/null) || { echo "no target was started"; return 1; }
    alive "$pid" || { echo "xdp-target (pid $pid) is not running"; tail -n 25 "$TARGET_LOG"; return 1; }
    kill -TERM "$pid"
    while [ $((SECONDS - start)) -lt 10 ]; do
        if ! alive "$pid"; then
            rm -f /tmp/lab-target.pid
            echo "exited $((SECONDS - start)) s after SIGTERM"
            return 0
        fi
        sleep 0.1
    done
    kill -KILL "$pid"
    rm -f /tmp/lab-target.pid
    echo "did not exit within 10 s of SIGTERM; killed"
    tail -n 25 "$TARGET_LOG"
    return 1
}

s_target_start() {
    local out
    out=$(target_start) || { echo "$out"; return 1; }
    note "$out; $(rdma resource show cm_id 2>/dev/null | grep -c LISTEN) RDMA CM ids listening"
}

s_target_stop() {
    local out
    out=$(target_stop) || { echo "$out"; return 1; }
    note "$out"
}

# Every queue pair the target served ended over RDMA, and it served no other kind.
s_target_log_rdma() {
    local rdma other
    rdma=$(grep -c 'connection closed (RDMA)' "$TARGET_LOG")
    other=$(grep 'connection closed' "$TARGET_LOG" | grep -vc '(RDMA)')
    if [ "$rdma" -eq 0 ] || [ "$other" -ne 0 ]; then
        grep 'connection closed' "$TARGET_LOG" | tail -n 10
        echo "$rdma connections closed over RDMA, $other over other transports"
        return 1
    fi
    # rxe has shared receive queues: the target must have used one, not per-QP receives.
    if ! grep -q 'shared receive queue of' "$TARGET_LOG"; then
        grep 'NVMe/RDMA' "$TARGET_LOG" | tail -n 5
        echo "the target did not use a shared receive queue"
        return 1
    fi
    note "$rdma queue pairs closed over RDMA, none over other transports; shared receive queue used"
}

# The perf client over NVMe/RDMA: mixed random reads and writes, every read checked
# against what was written (with reads only, --verify has nothing to check).
s_perf() {
    local out rc
    out=$("$LAB_BIN/xdp-target-perf" "nvme-rdma://$TARGET:$IO_PORT/$NQN" --workload mixed \
        --verify --time 5 --json 2>&1)
    rc=$?
    echo "$out"
    [ $rc -eq 0 ] || return 1
    echo "$out" | grep -q '"mismatches":0' || { echo "mismatches reported"; return 1; }
    echo "$out" | grep -q '"reads":[1-9]' || { echo "no reads done"; return 1; }
    echo "$out" | grep -q '"writes":[1-9]' || { echo "no writes done"; return 1; }
    note "$(echo "$out" | grep -o '"ios":[0-9]*\|"iops":[0-9]*\|"mismatches":[0-9]*' | paste -sd' ')"
}

# ---- zero-copy AF_XDP in the guest (zero-copy session) ---------------------------------

# The kernel, and the virtio features zero-copy needs negotiated on eth0: bit 33
# VIRTIO_F_ACCESS_PLATFORM (the DMA API) and bit 40 VIRTIO_F_RING_RESET (per-queue reset).
s_zc_env() {
    local f
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || return 1
    f=$(cat /sys/class/net/eth0/device/features) || return 1
    echo "kernel $(uname -r); eth0 driver $(basename "$(readlink /sys/class/net/eth0/device/driver)"), features $f"
    [ "${f:33:1}" = 1 ] || { echo "VIRTIO_F_ACCESS_PLATFORM (bit 33) not negotiated"; return 1; }
    [ "${f:40:1}" = 1 ] || { echo "VIRTIO_F_RING_RESET (bit 40) not negotiated"; return 1; }
    note "$(uname -r); virtio-net with ACCESS_PLATFORM and RING_RESET; $(ls /sys/class/net/eth0/queues | grep -c rx) rx queue(s)"
}

# Starts the target on the XDP path on eth0 with config $1, in the background; it is up
# once it has logged "stop with Ctrl-C" (after its AF_XDP sockets are bound). Prints the
# sockets' bind lines, or on failure the target's error and the kernel's messages.
xdp_target_start() {
    local pid from kfrom start=$SECONDS
    touch "$TARGET_LOG"
    from=$(($(wc -l < "$TARGET_LOG") + 1))
    kfrom=$(($(dmesg | wc -l) + 1))
    RUST_LOG=info NO_COLOR=1 setsid "$LAB_BIN/xdp-target" serve --config "$1" \
        --xdp eth0 --require-afxdp >> "$TARGET_LOG" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > /tmp/lab-target.pid
    while [ $((SECONDS - start)) -lt 40 ]; do
        if ! alive "$pid"; then
            echo "xdp-target exited; its log:"
            tail -n +"$from" "$TARGET_LOG" | tail -n 25
            echo "kernel messages since:"
            dmesg | tail -n +"$kfrom"
            return 1
        fi
        if tail -n +"$from" "$TARGET_LOG" | grep -q 'stop with Ctrl-C'; then
            tail -n +"$from" "$TARGET_LOG" | grep 'AF_XDP socket bound\|XDP program attached'
            echo "pid $pid, up after $((SECONDS - start)) s"
            return 0
        fi
        sleep 0.2
    done
    kill -KILL "$pid"
    echo "xdp-target did not come up in 40 s (killed); its log:"
    tail -n +"$from" "$TARGET_LOG" | tail -n 25
    return 1
}

# With xdp.zero_copy = "require": the target starts only when every AF_XDP socket
# bound in zero-copy mode.
s_target_zerocopy() {
    local out bound
    out=$(xdp_target_start "$TARGET_CONFIG") || { echo "$out"; return 1; }
    bound=$(echo "$out" | grep 'AF_XDP socket bound')
    if [ -z "$bound" ] || echo "$bound" | grep -qv 'zero-copy'; then
        echo "$out"
        echo "not every AF_XDP socket is bound in zero-copy mode"
        return 1
    fi
    note "$(echo "$bound" | wc -l) AF_XDP socket(s) bound zero-copy; $(echo "$out" | grep -o 'XDP program attached.*' | head -c 120)"
}

# The fallback when the driver refused: xdp.zero_copy = "auto" (copy mode).
s_target_copy() {
    local out
    out=$(xdp_target_start "$LAB_DIR/target-copy.toml") || { echo "$out"; return 1; }
    note "$(echo "$out" | grep 'AF_XDP socket bound' | grep -o 'mode=[^ ]*' | paste -sd' ')"
}

# The host runs its initiators now, and writes a line on the serial console when done.
s_wait_host() {
    local line
    read -r -t 240 line < /dev/ttyS0 || { echo "no word from the host in 240 s"; return 1; }
    note "host: $line"
}

# Every connection the host made went through AF_XDP (none through kernel sockets), and
# the sockets were bound in zero-copy mode.
s_target_log_zerocopy() {
    local xdp other
    xdp=$(grep -c 'connection closed (AF_XDP)' "$TARGET_LOG")
    other=$(grep 'connection closed' "$TARGET_LOG" | grep -vc '(AF_XDP)')
    if [ "$xdp" -eq 0 ] || [ "$other" -ne 0 ]; then
        grep 'connection closed' "$TARGET_LOG" | tail -n 10
        echo "$xdp connections closed over AF_XDP, $other over other transports"
        return 1
    fi
    if grep 'AF_XDP socket bound' "$TARGET_LOG" | grep -qv 'zero-copy'; then
        grep 'AF_XDP socket bound' "$TARGET_LOG"
        echo "an AF_XDP socket was bound in copy mode"
        return 1
    fi
    note "$xdp connections closed over AF_XDP, none over kernel sockets; every socket zero-copy"
}

# ---- NVMe steps (over $TRANSPORT to $TARGET) ------------------------------------------

s_discover() {
    local out
    out=$(nvme discover -t "$TRANSPORT" -a "$TARGET" -s "$DISC_PORT" 2>&1)
    local rc=$?
    echo "$out"
    [ $rc -eq 0 ] || return 1
    # One entry must name our subsystem with the transport, address and port we use.
    echo "$out" | awk -v nqn="$NQN" -v t="$TRANSPORT" -v a="$TARGET" -v p="$IO_PORT" '
        function check() { if (n == nqn && tt == t && ta == a && tp == p) found = 1 }
        /^=====Discovery Log Entry/ { check(); n = tt = ta = tp = "" }
        $1 == "subnqn:" { n = $2 }
        $1 == "trtype:" { tt = $2 }
        $1 == "traddr:" { ta = $2 }
        $1 == "trsvcid:" { tp = $2 }
        END { check(); exit !found }' || {
        echo "no entry for $NQN with trtype $TRANSPORT, traddr $TARGET, trsvcid $IO_PORT"
        return 1
    }
    note "$(echo "$out" | grep -c '^=====Discovery Log Entry') entries, $NQN at $TRANSPORT $TARGET:$IO_PORT listed"
}

# connect [extra nvme connect options...]
s_connect() {
    nvme connect -t "$TRANSPORT" -a "$TARGET" -s "$IO_PORT" -n "$NQN" "$@" || return 1
    local dev ctrl
    dev=$(ns_dev) || return 1
    ctrl=$(ctrl_dev) || return 1
    note "$ctrl, $dev ($(cat /sys/class/nvme/${ctrl#/dev/}/state))${*:+ with $*}"
}

s_list() {
    local out dev
    dev=$(ns_dev) || return 1
    out=$(nvme list 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    echo "$out" | grep -q "^$dev " || { echo "$dev not in nvme list"; return 1; }
    note "$(echo "$out" | grep "^$dev " | tr -s ' ')"
}

s_id_ctrl() {
    local out ctrl
    ctrl=$(ctrl_dev) || return 1
    out=$(nvme id-ctrl "$ctrl" 2>&1) || { echo "$out"; return 1; }
    echo "$out" | grep -q "^subnqn *: $NQN" || { echo "$out"; echo "subnqn is not $NQN"; return 1; }
    note "mn '$(echo "$out" | sed -n 's/^mn *: *//p' | tr -s ' ')'," \
        "fr $(echo "$out" | sed -n 's/^fr *: *//p' | tr -d ' ')," \
        "mdts $(echo "$out" | sed -n 's/^mdts *: *//p'), ioccsz $(echo "$out" | sed -n 's/^ioccsz *: *//p')"
}

s_id_ns() {
    local out dev nsze
    dev=$(ns_dev) || return 1
    out=$(nvme id-ns "$dev" 2>&1) || { echo "$out"; return 1; }
    nsze=$(echo "$out" | sed -n 's/^nsze *: *//p')
    [ "$((nsze))" -eq "$NS_BLOCKS" ] || { echo "$out"; echo "nsze $nsze, expected $NS_BLOCKS"; return 1; }
    note "nsze $nsze ($NS_BLOCKS blocks), $(echo "$out" | grep 'in use' | tr -s ' ')"
}

s_smart_log() {
    local out ctrl
    ctrl=$(ctrl_dev) || return 1
    out=$(nvme smart-log "$ctrl" 2>&1) || { echo "$out"; return 1; }
    note "$(echo "$out" | grep -iE '^(critical_warning|data.units.read|data.units.written)' | tr -s ' \t' ' ' | paste -sd, -)"
}

s_error_log() {
    local out ctrl
    ctrl=$(ctrl_dev) || return 1
    out=$(nvme error-log "$ctrl" 2>&1) || { echo "$out"; return 1; }
    note "$(echo "$out" | grep -c 'error_count') entries read"
}

# direct_read [bytes]: a direct-I/O read of the namespace (whole by default).
s_direct_read() {
    local dev out bytes count
    dev=$(ns_dev) || return 1
    bytes=${1:-$NS_BYTES}
    count=$((bytes / 1048576))
    out=$(dd if="$dev" of=/dev/null bs=1M count="$count" iflag=direct 2>&1) || { echo "$out"; return 1; }
    echo "$out" | grep -q "^$bytes bytes" || { echo "$out"; echo "expected $bytes bytes"; return 1; }
    note "$(echo "$out" | tail -n 1)"
}

s_mkfs() {
    local dev
    dev=$(ns_dev) || return 1
    mkfs.ext4 -q -F "$dev" || return 1
    note "ext4 on $dev"
}

s_fs_write() {
    local dev i
    dev=$(ns_dev) || return 1
    mkdir -p "$MNT"
    mount "$dev" "$MNT" || return 1
    head -c 24M /dev/urandom > "$MNT/big" || return 1
    mkdir -p "$MNT/small"
    for i in $(seq 1 200); do head -c $((i * 97)) /dev/urandom > "$MNT/small/$i"; done
    (cd "$MNT" && find . -type f | sort | xargs sha256sum) > /tmp/lab-sums || return 1
    sync || return 1
    note "$(wc -l < /tmp/lab-sums) files ($(du -sh "$MNT" | cut -f1)) written and synced"
}

s_fs_verify() {
    local dev out
    dev=$(ns_dev) || return 1
    umount "$MNT" || return 1
    echo 3 > /proc/sys/vm/drop_caches
    mount "$dev" "$MNT" || return 1
    out=$(cd "$MNT" && sha256sum --quiet -c /tmp/lab-sums 2>&1) || { echo "$out"; return 1; }
    note "$(wc -l < /tmp/lab-sums) checksums match after drop_caches, umount, mount"
}

s_umount() {
    umount "$MNT" || return 1
    note "$MNT"
}

s_fstrim() {
    local out
    out=$(fstrim -v "$MNT" 2>&1) || { echo "$out"; return 1; }
    note "$out"
}

s_blkdiscard() {
    local dev out
    dev=$(ns_dev) || return 1
    umount "$MNT" || return 1
    echo "discard_max_bytes $(cat /sys/block/${dev#/dev/}/queue/discard_max_bytes)"
    # -f: util-linux 2.38 refuses a device with a filesystem signature without it.
    out=$(blkdiscard -f -v "$dev" 2>&1) || { echo "$out"; return 1; }
    note "$(echo "$out" | grep -i discarded)"
}

# fio_verify SIZE: random 4k writes over SIZE, then read back and check crc32c.
s_fio_verify() {
    local dev out size=${1:-64M}
    dev=$(ns_dev) || return 1
    out=$(fio --name=lab-verify --filename="$dev" --rw=randwrite --bs=4k --direct=1 \
        --ioengine=libaio --iodepth=16 --size="$size" --verify=crc32c --verify_fatal=1 \
        --do_verify=1 2>&1)
    local rc=$?
    if [ $rc -ne 0 ] || echo "$out" | grep -qE 'err= *[1-9]|verify: bad'; then
        echo "$out" | tail -n 25
        return 1
    fi
    note "$size: $(echo "$out" | grep -E '^ *write: IOPS' | tr -s ' ' | sed 's/^ //'); $(echo "$out" | grep -E '^ *read: IOPS' | tr -s ' ' | sed 's/^ //' | cut -d, -f1) verify"
}

s_disconnect() {
    local out
    out=$(nvme disconnect -n "$NQN" 2>&1) || { echo "$out"; return 1; }
    echo "$out" | grep -q "disconnected 1 controller" || { echo "$out"; return 1; }
    wait_gone || return 1
    note "$out"
}

# 4 MiB of random data at offset 0, written direct and fsynced (the kernel sends Flush,
# since the namespace advertises a volatile write cache); its checksum is kept.
s_write_marker() {
    local dev
    dev=$(ns_dev) || return 1
    head -c 4194304 /dev/urandom > /tmp/marker || return 1
    dd if=/tmp/marker of="$dev" bs=1M oflag=direct conv=fsync status=none || return 1
    sha256sum < /tmp/marker | cut -d' ' -f1 > /tmp/marker.sha
    note "sha256 $(cut -c1-16 /tmp/marker.sha)"
}

# The marker reads back the same: the data survived the target's restart.
s_check_marker() {
    local dev got
    dev=$(ns_dev) || return 1
    got=$(dd if="$dev" bs=1M count=4 iflag=direct status=none | sha256sum | cut -d' ' -f1)
    [ "$got" = "$(cat /tmp/marker.sha)" ] || { echo "sha256 $got, wrote $(cat /tmp/marker.sha)"; return 1; }
    note "sha256 $(echo "$got" | cut -c1-16) matches"
}

# Stops the target and starts it again (for s_reconnect_after_restart, in the background).
target_restart() {
    target_stop && target_start
}

# The target restarts while the controller stays connected (the host restarts it, or the
# guest when the target runs here): the kernel must see the connection drop and reconnect
# on its own (reconnect-delay 1 s).
s_reconnect_after_restart() {
    local i state seen_down="" restarter="" how=""
    ctrl_dev >/dev/null || return 1
    if [ "$TARGET_IN_GUEST" = 1 ]; then
        # In the background, so that the controller's states are watched meanwhile.
        (target_restart; echo "rc $?") > /tmp/lab-restart 2>&1 &
        restarter=$!
    else
        echo "LAB: RESTART-TARGET" > /dev/console
    fi
    for i in $(seq 1 300); do
        state=$(ctrl_state)
        [ "$state" != live ] && seen_down=$state && break
        sleep 0.1
    done
    [ -n "$seen_down" ] || { echo "controller stayed live for 30 s: the restart was not noticed"; return 1; }
    echo "controller went $state"
    if [ -n "$restarter" ]; then
        wait "$restarter"
        cat /tmp/lab-restart
        grep -q '^rc 0$' /tmp/lab-restart || { echo "restarting the target failed"; return 1; }
        how="; target $(head -n 1 /tmp/lab-restart), up again"
    fi
    for i in $(seq 1 900); do
        state=$(ctrl_state)
        if [ "$state" = live ]; then
            note "controller went $seen_down, live again $((i / 10)) s later$how"
            return 0
        fi
        sleep 0.1
    done
    echo "controller is $state 90 s after the target restart"
    return 1
}

# ---- iSCSI (open-iscsi) -------------------------------------------------------------

# The disk of our LUN: the sdX that iscsiadm reports for the session, waiting up to 10 s.
iscsi_dev() {
    local i d
    for i in $(seq 1 100); do
        d=$(iscsiadm -m session -P 3 2>/dev/null | sed -n 's/.*Attached scsi disk \(sd[a-z]*\).*/\1/p' | head -n 1)
        [ -n "$d" ] && [ -b "/dev/$d" ] && { echo "/dev/$d"; return 0; }
        sleep 0.1
    done
    echo "no disk attached to an iSCSI session" >&2
    return 1
}

iscsi_state() {
    iscsiadm -m session -P 1 2>/dev/null | sed -n 's/.*iSCSI Session State: *//p' | head -n 1
}

s_iscsi_modules() {
    modprobe iscsi_tcp || return 1
    modprobe sd_mod || return 1
    mkdir -p /run/lock /etc/iscsi /var/lib/iscsi
    echo "InitiatorName=$INITIATOR" > /etc/iscsi/initiatorname.iscsi
    # Quick failure detection for the restart step: NOP-Outs every 2 s, 5 s timeout.
    sed -i -e 's/^node.conn\[0\].timeo.noop_out_interval.*/node.conn[0].timeo.noop_out_interval = 2/' \
        -e 's/^node.conn\[0\].timeo.noop_out_timeout.*/node.conn[0].timeo.noop_out_timeout = 5/' \
        /etc/iscsi/iscsid.conf
    iscsid || return 1
    note "iscsi_tcp loaded; iscsid $(iscsid --version 2>&1 | awk '{print $NF}'); $INITIATOR"
}

s_iscsi_discover() {
    local out
    out=$(iscsiadm -m discovery -t sendtargets -p "$TARGET:$ISCSI_PORT" 2>&1)
    local rc=$?
    echo "$out"
    [ $rc -eq 0 ] || return 1
    echo "$out" | grep -q "^$TARGET:$ISCSI_PORT,1 $IQN\$" || { echo "$IQN at $TARGET:$ISCSI_PORT not listed"; return 1; }
    note "$out"
}

# iscsi_auth SECRET [MUTUAL_SECRET]: CHAP settings of the node record.
iscsi_auth() {
    local n="iscsiadm -m node -T $IQN -p $TARGET:$ISCSI_PORT -o update -n"
    $n node.session.auth.authmethod -v CHAP || return 1
    $n node.session.auth.username -v "$CHAP_USER" || return 1
    $n node.session.auth.password -v "$1" || return 1
    if [ -n "${2:-}" ]; then
        $n node.session.auth.username_in -v "$MUTUAL_USER" || return 1
        $n node.session.auth.password_in -v "$2" || return 1
    fi
}

s_iscsi_bad_chap() {
    iscsi_auth "not-the-secret" || return 1
    local out
    if out=$(iscsiadm -m node -T "$IQN" -p "$TARGET:$ISCSI_PORT" --login 2>&1); then
        echo "$out"
        iscsiadm -m node -T "$IQN" -p "$TARGET:$ISCSI_PORT" --logout
        echo "login with a wrong CHAP secret succeeded"
        return 1
    fi
    note "refused: $(echo "$out" | grep -iE 'auth|error' | tail -n 1)"
}

s_iscsi_login() {
    iscsi_auth "$CHAP_SECRET" "$MUTUAL_SECRET" || return 1
    iscsiadm -m node -T "$IQN" -p "$TARGET:$ISCSI_PORT" --login || return 1
    local dev
    dev=$(iscsi_dev) || return 1
    note "$dev, $(iscsi_state), CHAP + mutual CHAP, $(cat /sys/block/${dev#/dev/}/device/vendor | tr -d ' ') $(cat /sys/block/${dev#/dev/}/device/model | tr -s ' ')"
}

s_iscsi_size() {
    local dev bytes
    dev=$(iscsi_dev) || return 1
    bytes=$(blockdev --getsize64 "$dev")
    [ "$bytes" -eq "$NS_BYTES" ] || { echo "$dev has $bytes bytes, expected $NS_BYTES"; return 1; }
    note "$dev: $bytes bytes, $(blockdev --getss "$dev")-byte sectors, write cache $(cat /sys/block/${dev#/dev/}/queue/write_cache)"
}

# The NVMe steps' marker (written before the restart) reads back through iSCSI: the same
# blocks, another protocol.
s_iscsi_sees_nvme_data() {
    local dev got
    dev=$(iscsi_dev) || return 1
    got=$(dd if="$dev" bs=1M count=4 iflag=direct status=none | sha256sum | cut -d' ' -f1)
    [ "$got" = "$(cat /tmp/marker.sha)" ] || { echo "sha256 $got, NVMe wrote $(cat /tmp/marker.sha)"; return 1; }
    note "sha256 $(echo "$got" | cut -c1-16) as written over NVMe"
}

s_iscsi_logout() {
    local out
    out=$(iscsiadm -m node -T "$IQN" -p "$TARGET:$ISCSI_PORT" --logout 2>&1) || { echo "$out"; return 1; }
    local i
    for i in $(seq 1 50); do
        iscsiadm -m session >/dev/null 2>&1 || { note "$(echo "$out" | tail -n 1)"; return 0; }
        sleep 0.1
    done
    echo "session still listed after logout"
    return 1
}

# The host restarts the target; open-iscsi notices (NOP-Out timeout or reset) and logs
# in again by itself.
s_iscsi_reconnect_after_restart() {
    local i state seen_down=""
    iscsi_dev >/dev/null || return 1
    echo "LAB: RESTART-TARGET" > /dev/console
    for i in $(seq 1 300); do
        state=$(iscsi_state)
        [ "$state" != LOGGED_IN ] && seen_down=$state && break
        sleep 0.1
    done
    [ -n "$seen_down" ] || { echo "session stayed LOGGED_IN for 30 s: the restart was not noticed"; return 1; }
    for i in $(seq 1 900); do
        state=$(iscsi_state)
        if [ "$state" = LOGGED_IN ]; then
            note "session went $seen_down, LOGGED_IN again $((i / 10)) s later"
            return 0
        fi
        sleep 0.1
    done
    echo "session is $state 90 s after the target restart"
    return 1
}
"#;

/// The head of main.sh: `step` runs each step in its own bash with a timeout, shows its
/// output only when it fails, and returns its status. A session's steps follow.
const GUEST_MAIN: &str = r#"#!/bin/bash
source /run/lab/lib.sh

step() {
    local name=$1 t=$2 out rc note=""
    shift 2
    rm -f /tmp/lab-note
    out=$(timeout -k 10 "$t" bash -c 'source /run/lab/lib.sh; "$@"' step "$@" 2>&1)
    rc=$?
    [ -s /tmp/lab-note ] && note=" | $(cat /tmp/lab-note)"
    if [ $rc -eq 0 ]; then
        echo "LAB: PASS $name$note"
    else
        [ $rc -eq 124 ] && note=" | timed out after $t s"
        echo "LAB: FAIL $name (exit $rc)$note"
        printf '%s\n' "$out" | tail -n 30 | sed 's/^/LAB: OUT /'
    fi
    return $rc
}

echo "LAB: INFO guest up for the $SESSION session: $(uname -r), $(nproc) CPUs"
"#;

/// The NVMe/TCP and iSCSI session's steps, against the target on the host.
const GUEST_STEPS_TCP: &str = r#"
step "guest network: eth0 $GUEST/24" 30 s_network
step "modprobe nvme-tcp, hostnqn" 30 s_modules
step "nvme discover -t tcp -a $TARGET -s $DISC_PORT lists $NQN" 60 s_discover
step "nvme connect (no digests)" 60 s_connect
step "nvme list shows the namespace" 30 s_list
step "nvme id-ctrl" 30 s_id_ctrl
step "nvme id-ns" 30 s_id_ns
step "nvme smart-log" 30 s_smart_log
step "nvme error-log" 30 s_error_log
step "dd direct read of the whole namespace" 120 s_direct_read
step "mkfs.ext4" 60 s_mkfs
step "mount, write files, sync" 120 s_fs_write
step "drop_caches, umount, mount, checksums match" 120 s_fs_verify
step "fstrim on the mount" 60 s_fstrim
step "umount, blkdiscard" 60 s_blkdiscard
step "fio randwrite 4k direct, verify crc32c" 180 s_fio_verify 64M
step "nvme disconnect" 30 s_disconnect
step "nvme connect --hdr-digest --data-digest" 60 s_connect --hdr-digest --data-digest
step "dd direct read of the whole namespace (digests)" 120 s_direct_read
step "fio verify crc32c (digests)" 120 s_fio_verify 16M
step "nvme disconnect (digests)" 30 s_disconnect
step "nvme connect --reconnect-delay 1 --ctrl-loss-tmo 120" 60 s_connect --reconnect-delay=1 --ctrl-loss-tmo=120
step "write 4 MiB marker, fsync (Flush)" 60 s_write_marker
step "kernel reconnects after the target restarts" 150 s_reconnect_after_restart
step "marker still there after the restart (file namespace)" 60 s_check_marker
step "dd direct read after reconnect" 60 s_direct_read 33554432
step "fio verify crc32c after reconnect" 120 s_fio_verify 16M
step "nvme disconnect (after restart)" 30 s_disconnect
step "fresh nvme connect to the restarted target" 60 s_connect
step "ctl add-namespace: namespace 2 appears on the connected host (AEN)" 90 s_ns_appears
step "ctl resize-namespace: the host sees namespace 2 grow" 90 s_ns_grows
step "ctl remove-namespace: namespace 2 goes from the host" 90 s_ns_goes
step "write 4 MiB marker over NVMe (for the iSCSI steps)" 60 s_write_marker
step "nvme disconnect (fresh)" 30 s_disconnect

step "modprobe iscsi_tcp, start iscsid" 30 s_iscsi_modules
step "iscsiadm discovery (SendTargets) lists $IQN" 60 s_iscsi_discover
step "iscsiadm login with a wrong CHAP secret is refused" 60 s_iscsi_bad_chap
step "iscsiadm login (CHAP, mutual CHAP)" 60 s_iscsi_login
step "the LUN's size and sectors" 30 s_iscsi_size
step "the NVMe marker reads back over iSCSI (same blocks)" 60 s_iscsi_sees_nvme_data
LAB_DEV=$(bash -c 'source /run/lab/lib.sh; iscsi_dev' 2>/dev/null)
export LAB_DEV
step "ctl add-namespace: LUN 1 appears (REPORTED LUNS DATA HAS CHANGED, rescan)" 90 s_iscsi_lun_appears
step "ctl resize-namespace: LUN 1 grows (CAPACITY DATA HAS CHANGED, rescan)" 90 s_iscsi_lun_grows
step "ctl remove-namespace: LUN 1 goes (REPORTED LUNS DATA HAS CHANGED)" 90 s_iscsi_lun_goes
step "dd direct read of the whole LUN" 120 s_direct_read
step "mkfs.ext4 (iSCSI)" 60 s_mkfs
step "mount, write files, sync (iSCSI)" 120 s_fs_write
step "drop_caches, umount, mount, checksums match (iSCSI)" 120 s_fs_verify
step "fstrim on the mount (iSCSI: UNMAP)" 60 s_fstrim
step "umount, blkdiscard (iSCSI)" 60 s_blkdiscard
step "fio randwrite 4k direct, verify crc32c (iSCSI)" 180 s_fio_verify 64M
step "write 4 MiB marker, fsync (SYNCHRONIZE CACHE)" 60 s_write_marker
step "open-iscsi logs in again after the target restarts" 150 s_iscsi_reconnect_after_restart
step "marker still there after the restart (iSCSI)" 60 s_check_marker
step "fio verify crc32c after the iSCSI reconnect" 120 s_fio_verify 16M
step "iscsiadm logout" 30 s_iscsi_logout

dmesg | grep -iE 'nvme|tcp|iscsi|scsi|sd[a-z]' | sed 's/^/LAB: DMESG /'
"#;

/// The NVMe/RDMA session's steps: soft-RoCE, the target started in the guest, then Linux's
/// nvme-rdma against it (no digests in NVMe/RDMA, no iSCSI). Without the target there is
/// nothing to test, so a target that does not start ends the session.
const GUEST_STEPS_RDMA: &str = r#"
step "guest network: eth0 $GUEST/24" 30 s_network
step "soft-RoCE: rxe0 on eth0 ACTIVE, listed by ibv_devices, rdma_cm there" 30 s_rxe_up
step "RDMA CM loopback works without the target (rping $GUEST)" 60 s_rping
step "modprobe nvme-rdma, hostnqn" 30 s_modules
step "xdp-target, xdp-target-perf, their config and libraries are in the guest" 30 s_target_files
if step "target serves $NQN over NVMe/RDMA on $TARGET:$IO_PORT and :$DISC_PORT (in the guest)" 45 s_target_start; then
    step "nvme discover -t rdma -a $TARGET -s $DISC_PORT lists $NQN" 60 s_discover
    step "nvme connect -t rdma" 60 s_connect
    step "nvme list shows the namespace" 30 s_list
    step "nvme id-ctrl" 30 s_id_ctrl
    step "nvme id-ns" 30 s_id_ns
    step "dd direct read of the whole namespace" 120 s_direct_read
    step "mkfs.ext4" 60 s_mkfs
    step "mount, write files, sync" 120 s_fs_write
    step "drop_caches, umount, mount, checksums match" 120 s_fs_verify
    step "umount" 30 s_umount
    step "fio randwrite 4k direct, verify crc32c" 120 s_fio_verify 16M
    step "nvme disconnect" 30 s_disconnect
    step "nvme connect again" 60 s_connect
    step "nvme disconnect (again)" 30 s_disconnect
    step "nvme connect --reconnect-delay 1 --ctrl-loss-tmo 120" 60 s_connect --reconnect-delay=1 --ctrl-loss-tmo=120
    step "write 4 MiB marker, fsync (Flush)" 60 s_write_marker
    step "kernel reconnects after the target restarts (SIGTERM, start again, in the guest)" 150 s_reconnect_after_restart
    step "marker still there after the restart" 60 s_check_marker
    step "nvme disconnect (after restart)" 30 s_disconnect
    step "xdp-target-perf nvme-rdma://$TARGET:$IO_PORT --workload mixed --verify --time 5" 90 s_perf
    step "target exits on SIGTERM" 30 s_target_stop
    step "target log: every queue pair closed over RDMA, through a shared receive queue" 30 s_target_log_rdma
fi

dmesg | grep -iE 'nvme|rdma|rxe|infiniband' | sed 's/^/LAB: DMESG /'
[ -f "$TARGET_LOG" ] && sed 's/^/LAB: TARGET-LOG /' "$TARGET_LOG"
"#;

/// The zero-copy session's steps: the target in the guest on eth0 with
/// `xdp.zero_copy = "require"` (falling back to copy mode, as a failed step, so that the
/// host's initiators still run), then `LAB: HOST-STEPS`: the host runs its initiators and
/// answers on the serial line; then the target's log must show every connection over
/// AF_XDP on zero-copy sockets.
const GUEST_STEPS_ZEROCOPY: &str = r#"
step "guest network: eth0 $GUEST/24" 30 s_network
step "virtio-net with ACCESS_PLATFORM and RING_RESET, bpffs" 30 s_zc_env
step "xdp-target, xdp-target-perf, their config and libraries are in the guest" 30 s_target_files
if step "target serves $NQN and $IQN on $TARGET over AF_XDP zero-copy on eth0 (xdp.zero_copy = require)" 60 s_target_zerocopy \
    || step "target serves in copy mode instead (xdp.zero_copy = auto)" 60 s_target_copy; then
    echo "LAB: HOST-STEPS"
    step "the host's initiators ran" 250 s_wait_host
    step "target exits on SIGTERM" 30 s_target_stop
    step "target log: every connection over AF_XDP, every socket zero-copy" 30 s_target_log_zerocopy
fi

dmesg | grep -iE 'virtio|xdp|xsk|bpf' | sed 's/^/LAB: DMESG /'
[ -f "$TARGET_LOG" ] && sed 's/^/LAB: TARGET-LOG /' "$TARGET_LOG"
"#;

#[cfg(test)]
mod tests {
    use super::{
        GUEST_ADDR, GUEST_LIB, GUEST_MAIN, GUEST_STEPS_RDMA, GUEST_STEPS_TCP, GUEST_STEPS_ZEROCOPY,
        HOST_ADDR, LabPath, Session, guest_vars, module_load_order, module_name, target_config,
    };
    use std::path::Path;

    #[test]
    fn lab_paths_run_their_sessions_in_order() {
        use Session::{Rdma, Sockets, Xdp};
        assert_eq!(LabPath::Sockets.sessions(), [Sockets]);
        assert_eq!(LabPath::Xdp.sessions(), [Xdp]);
        assert_eq!(LabPath::Rdma.sessions(), [Rdma]);
        assert_eq!(LabPath::Zerocopy.sessions(), [Session::Zerocopy]);
        assert_eq!(LabPath::Both.sessions(), [Sockets, Xdp]);
        assert_eq!(
            LabPath::All.sessions(),
            [Sockets, Xdp, Rdma, Session::Zerocopy]
        );
    }

    #[test]
    fn the_rdma_target_serves_only_nvme_rdma_on_the_guest_address() {
        let config = target_config(Session::Rdma, Path::new("/unused"));
        assert!(config.contains(&format!(
            "[rdma]\nlisten = [\"{GUEST_ADDR}:4420\", \"{GUEST_ADDR}:8009\"]\nrequire = true\n"
        )));
        assert!(config.contains("[nvme]\nlisten = []\ndiscovery_port = 8009\n"));
        assert!(config.contains("[iscsi]\nlisten = []\n"));
        assert!(config.contains("path = \"/tmp/lab-ns1.img\""));
        // The host's sessions keep their file in the run folder and serve TCP.
        let config = target_config(Session::Sockets, Path::new("/run-dir"));
        assert!(config.contains("path = \"/run-dir/ns1.img\""));
        assert!(config.contains(&format!("listen = [\"{HOST_ADDR}:4420\"")));
        assert!(!config.contains("[rdma]"));
    }

    #[test]
    fn the_zerocopy_target_requires_zero_copy_on_the_guest_address() {
        let config = target_config(Session::Zerocopy, Path::new("/unused"));
        assert!(config.contains("[xdp]\nzero_copy = \"require\"\nrequire_afxdp = true\n"));
        assert!(config.contains(&format!("listen = [\"{GUEST_ADDR}:3260\"]")));
        assert!(config.contains("path = \"/tmp/lab-ns1.img\""));
        assert_eq!(Session::Zerocopy.kernel(), super::GuestKernel::Backports);
        assert_eq!(Session::Xdp.kernel(), super::GuestKernel::Stable);
        // The fallback differs only in the mode.
        let copy = super::zerocopy_target_config("auto");
        assert_eq!(copy.replace("\"auto\"", "\"require\""), config);
    }

    #[test]
    fn guest_steps_reach_the_target_where_it_runs() {
        let rdma = guest_vars(Session::Rdma);
        for want in [
            "TRANSPORT=rdma\n",
            &format!("TARGET={GUEST_ADDR}\n"),
            "TARGET_IN_GUEST=1\n",
            "NS_BYTES=134217728\nNS_BLOCKS=262144\n",
            "LAB_BIN=/run/lab/bin\n",
        ] {
            assert!(rdma.contains(want), "{want:?} not in\n{rdma}");
        }
        let xdp = guest_vars(Session::Xdp);
        for want in [
            "TRANSPORT=tcp\n",
            &format!("TARGET={HOST_ADDR}\n"),
            "TARGET_IN_GUEST=0\n",
            "NS_BYTES=268435456\n",
            "MTU=9000\n",
        ] {
            assert!(xdp.contains(want), "{want:?} not in\n{xdp}");
        }
    }

    /// Every `step NAME TIMEOUT s_fn` names a function lib.sh defines.
    #[test]
    fn every_step_function_is_defined() {
        for steps in [GUEST_STEPS_TCP, GUEST_STEPS_RDMA, GUEST_STEPS_ZEROCOPY] {
            let used: Vec<&str> = steps
                .lines()
                .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("s_")))
                .map(|w| w.trim_end_matches(';'))
                .collect();
            assert!(used.len() >= 8);
            for f in used {
                assert!(
                    GUEST_LIB.contains(&format!("\n{f}() {{")),
                    "{f} is not defined in GUEST_LIB"
                );
            }
        }
    }

    /// The scripts the guest runs parse (`bash -n`), for every session.
    #[test]
    fn guest_scripts_parse() {
        for session in [
            Session::Sockets,
            Session::Xdp,
            Session::Rdma,
            Session::Zerocopy,
        ] {
            let steps = match session {
                Session::Rdma => GUEST_STEPS_RDMA,
                Session::Zerocopy => GUEST_STEPS_ZEROCOPY,
                Session::Sockets | Session::Xdp => GUEST_STEPS_TCP,
            };
            for script in [
                format!("{}{GUEST_LIB}", guest_vars(session)),
                format!("{GUEST_MAIN}{steps}"),
            ] {
                let out = std::process::Command::new("bash")
                    .args(["-n", "-c", &script])
                    .output()
                    .expect("bash runs");
                assert!(
                    out.status.success(),
                    "{session:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    #[test]
    fn module_names_drop_path_suffix_and_dashes() {
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
    }

    #[test]
    fn load_order_puts_dependencies_first_without_duplicates() {
        let dep = "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
                   kernel/fs/jbd2/jbd2.ko.xz: kernel/fs/mbcache.ko.xz\n\
                   kernel/fs/mbcache.ko.xz:\n\
                   kernel/lib/crc16.ko.xz:\n\
                   kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n";
        let order = module_load_order(dep, &["virtio_blk", "ext4"]).expect("resolves");
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "crc16",
                "mbcache",
                "jbd2",
                "ext4"
            ]
        );
        assert!(module_load_order(dep, &["nvme_tcp"]).is_err());
    }
}
