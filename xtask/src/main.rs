//! Project tasks: `cargo xtask <build-ebpf|lint|test|demo|lab|fuzz|bench|fio-engine>`.

mod bench;
#[expect(
    dead_code,
    reason = "`inputs` is for build.rs, which shares this module"
)]
mod ebpf_build;
mod fio_engine;
mod lab;
mod lint;
mod vendored;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xdp-target project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain if missing (as root) and build the XDP program.
    BuildEbpf,
    /// Check the layer dependency rules of ARCHITECTURE.md, that the vendored crates are
    /// their release plus their patch files, rustfmt and clippy -D warnings.
    Lint,
    /// Check that each crate in third_party/ is its crates.io release plus
    /// third_party/patches/NAME-VERSION.patch (or, with --update, rewrite the patches;
    /// with --tests, run the crates' own unit tests on our changes).
    Vendored {
        #[arg(long)]
        update: bool,
        #[arg(long, conflicts_with = "update")]
        tests: bool,
    },
    /// What CI runs: lint, build, unit tests (the vendored crates' own too) and the netns
    /// end-to-end tests (as root).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test-name filter.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Start the target in a network namespace joined by a veth pair to a client namespace.
    Demo,
    /// Real Linux NVMe/TCP, iSCSI and NVMe/RDMA initiators (Debian kernel, nvme-cli,
    /// open-iscsi, soft-RoCE) in a QEMU guest against the target, in a network namespace
    /// (as root).
    Lab {
        /// QEMU accelerator.
        #[arg(long, value_enum, default_value_t = lab::Accel::Tcg)]
        accel: lab::Accel,
        /// Which sessions to run: kernel sockets, the XDP path, NVMe/RDMA (the target in the
        /// guest), both (sockets and XDP) or all three.
        #[arg(long, value_enum, default_value_t = lab::LabPath::All)]
        path: lab::LabPath,
    },
    /// The XDP path against kernel sockets: NVMe/TCP and iSCSI, 4K randread QD1/QD32, 4K
    /// randwrite QD32, 128K seqread QD8, one and two connections, MTU 1500 and 9000, with the
    /// target's CPU time per I/O (target on CPU 0, client on CPU 1, a veth pair).
    Bench {
        /// Seconds per run.
        #[arg(long, default_value_t = 2)]
        seconds: u64,
        /// Repetitions of every run (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Run the client's veth receive work on a NAPI thread on the client's core (GRO,
        /// threaded NAPI, TSO off on the target's end for XDP) instead of veth's default.
        #[arg(long)]
        napi_thread: bool,
        /// Also profile the target during 4K randread QD32 on both paths and MTUs with
        /// `perf record` and draw flame graphs (target/flame-PATH-MTU.svg).
        #[arg(long)]
        flamegraphs: bool,
        /// Only the perf jobs whose name contains one of these (comma-separated, e.g.
        /// "randread QD32,idle"); no fio rows.
        #[arg(long)]
        only: Option<String>,
        /// The MTUs to run at (repeat the option for several).
        #[arg(long = "mtu", default_values_t = [1500u32, 9000])]
        mtus: Vec<u32>,
        /// Only draw the chart of an earlier run's JSON (e.g. target/bench.json) into
        /// target/bench.png.
        #[arg(long, value_name = "JSON")]
        chart_from: Option<PathBuf>,
    },
    /// Build the `xdpt` external fio ioengine for NVMe/TCP (target/release/libfio-xdpt.so)
    /// against the fio that scripts/build-fio-libiscsi.sh builds, and print its path.
    FioEngine,
    /// Run every fuzz target (fuzz/fuzz_targets) for a while with cargo-fuzz on nightly.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        target: Option<String>,
    },
}

fn main() -> Result<()> {
    let root = repo_root();
    match Cli::parse().task {
        Task::BuildEbpf => build_ebpf(&root),
        Task::Lint => lint::run(&root),
        Task::Vendored { tests: true, .. } => {
            let (passed, failed) = vendored::unit_tests(&root)?;
            println!("vendored crates' own tests: {passed} passed, {failed} failed");
            if failed > 0 {
                bail!("{failed} tests failed");
            }
            Ok(())
        }
        Task::Vendored { update, .. } => vendored::run(&root, update),
        Task::Test { cargo_args } => test(&root, &cargo_args),
        Task::Demo => demo(&root),
        Task::Lab { accel, path } => lab::run(&root, accel, path),
        Task::Bench {
            chart_from: Some(json),
            ..
        } => bench::redraw(&json, &root.join("target/bench.png")),
        Task::Bench {
            seconds,
            reps,
            napi_thread,
            flamegraphs,
            only,
            mtus,
            chart_from: None,
        } => bench::run(
            &root,
            seconds,
            reps,
            napi_thread,
            flamegraphs,
            only.as_deref(),
            &mtus,
        ),
        Task::Fuzz { seconds, target } => fuzz(&root, seconds, target.as_deref()),
        Task::FioEngine => {
            let so = fio_engine::build(&root)?;
            println!("{}", so.display());
            Ok(())
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

/// Runs a command, failing with its command line when it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(())
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn build_ebpf(root: &Path) -> Result<()> {
    if let Err(why) = ebpf_build::check_toolchain() {
        eprintln!("xtask: {why}");
        eprintln!("xtask: installing the eBPF toolchain with scripts/setup.sh");
        run(Command::new("bash").arg(root.join("scripts/setup.sh")))?;
    }
    let obj = ebpf_build::build(root).map_err(anyhow::Error::msg)?;
    eprintln!("xtask: built {}", obj.display());
    Ok(())
}

/// The iSCSI end-to-end tests use libiscsi's tools and a fio with the libiscsi engine, the
/// metrics test promtool; scripts/setup.sh installs them (as root) when one is missing.
fn ensure_test_tools(root: &Path) -> Result<()> {
    let have = Path::new("/usr/bin/iscsi-test-cu").is_file()
        && Path::new("/usr/bin/promtool").is_file()
        && root.join("target/fio-libiscsi/fio").is_file();
    // SAFETY: geteuid has no preconditions.
    if !have && unsafe { libc::geteuid() } == 0 {
        eprintln!(
            "xtask: installing libiscsi's tools, fio with libiscsi and promtool (scripts/setup.sh)"
        );
        run(Command::new("bash").arg(root.join("scripts/setup.sh")))?;
    }
    Ok(())
}

fn test(root: &Path, cargo_args: &[String]) -> Result<()> {
    lint::run(root)?;
    build_ebpf(root)?;
    ensure_test_tools(root)?;
    // The NVMe/TCP end-to-end suite runs fio through the engine.
    if root.join("target/fio-libiscsi/fio").is_file() {
        fio_engine::build(root)?;
    }
    // The end-to-end tests run the xdp-target binary, so build it before they start.
    run(cargo(root).args(["build", "--package", "target-user", "--bin", "xdp-target"]))?;
    let mut cmd = cargo(root);
    cmd.args(["test", "--workspace", "--all-targets", "--no-fail-fast"]);
    if !cargo_args.is_empty() {
        cmd.arg("--").args(cargo_args);
    }
    let (mut passed, mut failed) = run_counting_tests(&mut cmd)?;
    if cargo_args.is_empty() {
        let (p, f) = vendored::unit_tests(root)?;
        passed += p;
        failed += f;
        // The end-to-end suites again, served through AF_XDP and the user-space TCP/IP
        // stack, at MTU 1500 and with jumbo frames (multi-buffer AF_XDP, the frags program).
        for mtu in ["1500", "9000"] {
            println!(
                "xtask: the NVMe/TCP and iSCSI end-to-end suites again, over the XDP path, MTU {mtu}"
            );
            let mut cmd = cargo(root);
            // The kernel completes the offloaded TCP checksums as a device would, so the
            // client's TCP checks what user space seeded (on veth nobody computes them).
            cmd.env("XDPT_TEST_PATH", "xdp")
                .env("XDPT_TEST_MTU", mtu)
                .env("XDPT_TEST_TX_CHECKSUM", "kernel")
                .args([
                    "test",
                    "--package",
                    "xdp-target-tests",
                    "--test",
                    "nvme_tcp",
                    "--test",
                    "iscsi",
                    "--no-fail-fast",
                ]);
            let (p, f) = run_counting_tests(&mut cmd)?;
            passed += p;
            failed += f;
        }
    }
    // One closing line for the whole run, instead of the last test binary's.
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and sums its `test result:` lines.
pub(crate) fn run_counting_tests(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("cargo test failed ({status})");
    }
    Ok((passed, failed))
}

/// The number just before `label` in a line like `ok. 5 passed; 0 failed; ...`.
fn count_before(text: &str, label: &str) -> u64 {
    text.find(label)
        .and_then(|end| text[..end].rsplit([' ', '.']).next()?.parse().ok())
        .unwrap_or(0)
}

fn fuzz(root: &Path, seconds: u64, only: Option<&str>) -> Result<()> {
    // `cargo +nightly` needs rustup's proxy, not the toolchain's cargo that runs xtask.
    let rustup_cargo = || {
        let mut cmd = Command::new("cargo");
        cmd.env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .current_dir(root.join("fuzz"));
        cmd
    };
    if !rustup_cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("xtask: installing cargo-fuzz with scripts/setup.sh");
        run(Command::new("bash").arg(root.join("scripts/setup.sh")))?;
    }
    let mut targets = Vec::new();
    for entry in
        std::fs::read_dir(root.join("fuzz/fuzz_targets")).context("listing fuzz targets")?
    {
        let path = entry?.path();
        // Targets are the `.rs` files; folders hold code they share (`common/`).
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            targets.push(stem.to_string());
        }
    }
    targets.sort();
    if let Some(t) = only {
        if !targets.iter().any(|x| x == t) {
            bail!("no fuzz target {t:?}; there are: {}", targets.join(", "));
        }
        targets.retain(|x| x == t);
    }
    // Nightly gives AddressSanitizer; without it, stable runs libFuzzer uninstrumented by
    // ASan (cargo-fuzz needs unstable flags, hence RUSTC_BOOTSTRAP).
    let nightly = rustup_cargo()
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        eprintln!("xtask: no nightly toolchain: fuzzing on stable without AddressSanitizer");
    }
    for t in &targets {
        eprintln!("xtask: fuzzing {t} for {seconds} s");
        let mut cmd = rustup_cargo();
        if nightly {
            cmd.args(["+nightly", "fuzz", "run", t]);
        } else {
            cmd.env("RUSTC_BOOTSTRAP", "1").args([
                "+stable",
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                t,
            ]);
        }
        run(cmd.arg("--").arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

/// Kernel clock ticks per second (the unit of /proc/stat).
pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Builds the XDP object and the release `xdp-target`, and returns the binary's path.
pub(crate) fn release_binary(root: &Path) -> Result<PathBuf> {
    build_ebpf(root)?;
    run(cargo(root).args([
        "build",
        "--release",
        "--package",
        "target-user",
        "--bin",
        "xdp-target",
    ]))?;
    Ok(root.join("target/release/xdp-target"))
}

/// Builds the release `xdp-target-perf` (the initiator alone), and returns its path.
pub(crate) fn release_perf_binary(root: &Path) -> Result<PathBuf> {
    run(cargo(root).args([
        "build",
        "--release",
        "--package",
        "target-initiator",
        "--bin",
        "xdp-target-perf",
    ]))?;
    Ok(root.join("target/release/xdp-target-perf"))
}

fn demo(root: &Path) -> Result<()> {
    use xdp_target_tests::netns::VethPair;
    let bin = release_binary(root)?;
    let pair = VethPair::create_named("xdpt-demo").context("creating the demo namespaces")?;
    // The demo serves over the XDP path, whose stack verifies the client's checksums.
    pair.client_checksums_in_software()?;
    println!(
        "demo: target namespace {} ({} {}), client namespace {} ({} {})",
        pair.target.name(),
        pair.target_if,
        pair.target_addr,
        pair.client.name(),
        pair.client_if,
        pair.client_addr
    );
    println!(
        "demo: counters:  {} stats --iface {} --watch 1",
        bin.display(),
        pair.target_if
    );
    println!(
        "demo: a client:  ip netns exec {} {} perf nvme-tcp://{} --verify --time 5",
        pair.client.name(),
        bin.display(),
        pair.target_addr
    );
    println!(
        "demo: over iSCSI: ip netns exec {} {} perf iscsi://{}/iqn.2026-11.dev.xdp-target:default/0 --verify --time 5",
        pair.client.name(),
        bin.display(),
        pair.target_addr
    );
    println!(
        "demo:            ip netns exec {} iscsi-inq iscsi://{}/iqn.2026-11.dev.xdp-target:default/0",
        pair.client.name(),
        pair.target_addr
    );
    println!("demo: Ctrl-C stops the target and removes both namespaces");
    // Ctrl-C reaches the whole foreground group: the target detaches on it, and xtask must
    // outlive it to delete the namespaces. (The target installs its own SIGINT handler,
    // which replaces the ignored disposition it inherits.)
    // SAFETY: setting a signal to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = pair
        .target
        .command(&bin)
        .args(["serve", "--xdp", &pair.target_if])
        .status()
        .context("starting xdp-target")?;
    drop(pair);
    if !status.success() && status.code() != Some(130) {
        bail!("xdp-target exited with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn counts_come_from_cargo_test_result_lines() {
        let line =
            "FAILED. 4 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.45s";
        assert_eq!(count_before(line, " passed"), 4);
        assert_eq!(count_before(line, " failed"), 2);
        assert_eq!(count_before("ok. 0 passed; 0 failed;", " passed"), 0);
    }
}
