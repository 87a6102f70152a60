//! Project tasks: `cargo xtask <build-ebpf|lint|test|demo>`.

#[expect(
    dead_code,
    reason = "`inputs` is for build.rs, which shares this module"
)]
mod ebpf_build;
mod lint;

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
    /// Check the layer dependency rules of ARCHITECTURE.md, rustfmt and clippy -D warnings.
    Lint,
    /// What CI runs: lint, build, unit tests and the netns end-to-end tests (as root).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test-name filter.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Start the target in a network namespace joined by a veth pair to a client namespace.
    Demo,
}

fn main() -> Result<()> {
    let root = repo_root();
    match Cli::parse().task {
        Task::BuildEbpf => build_ebpf(&root),
        Task::Lint => lint::run(&root),
        Task::Test { cargo_args } => test(&root, &cargo_args),
        Task::Demo => demo(&root),
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

fn test(root: &Path, cargo_args: &[String]) -> Result<()> {
    lint::run(root)?;
    build_ebpf(root)?;
    // The end-to-end tests run the xdp-target binary, so build it before they start.
    run(cargo(root).args(["build", "--package", "target-user", "--bin", "xdp-target"]))?;
    let mut cmd = cargo(root);
    cmd.args(["test", "--workspace"]);
    if !cargo_args.is_empty() {
        cmd.arg("--").args(cargo_args);
    }
    run(&mut cmd)
}

fn demo(root: &Path) -> Result<()> {
    use xdp_target_tests::netns::VethPair;
    build_ebpf(root)?;
    run(cargo(root).args([
        "build",
        "--release",
        "--package",
        "target-user",
        "--bin",
        "xdp-target",
    ]))?;
    let bin = root.join("target/release/xdp-target");
    let pair = VethPair::create_named("xdpt-demo").context("creating the demo namespaces")?;
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
    println!("demo: a client:  ip netns exec {} bash", pair.client.name());
    println!("demo: Ctrl-C stops the target and removes both namespaces");
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
