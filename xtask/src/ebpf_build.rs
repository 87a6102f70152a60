//! Building `target-ebpf` with Debian's toolchain.
//!
//! Shared by `cargo xtask build-ebpf` and `target-user/build.rs` (which includes this file
//! with `#[path]`), so the recipe exists once. Debian's `rustc-web` (1.96, LLVM 22) ships a
//! prebuilt `core` for `bpfel-unknown-none`; bpf-linker must be built against the same
//! LLVM major version (scripts/setup.sh does that).

use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_RUSTDOC: &str = "/usr/bin/rustdoc";
pub const REQUIRED_LLVM_MAJOR: u32 = 22;
pub const SETUP_HINT: &str = "run `sudo scripts/setup.sh` (or `cargo xtask build-ebpf`, which runs it) to install Debian's rustc-web, llvm-22-dev and bpf-linker";

/// Where the object lands, relative to the repository root.
pub fn object_path(root: &Path) -> PathBuf {
    root.join("target-ebpf/target/bpfel-unknown-none/release/target-ebpf")
}

/// Files whose change means the object must be rebuilt.
pub fn inputs(root: &Path) -> Vec<PathBuf> {
    [
        "target-ebpf/src",
        "target-ebpf/Cargo.toml",
        "target-ebpf/Cargo.lock",
        "target-ebpf/.cargo/config.toml",
        "target-common/src",
        "target-common/Cargo.toml",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect()
}

/// Checks that Debian's rustc, with the right LLVM, and bpf-linker are installed.
pub fn check_toolchain() -> Result<(), String> {
    let out = Command::new(DEBIAN_RUSTC)
        .args(["--version", "--verbose"])
        .output()
        .map_err(|e| format!("cannot run {DEBIAN_RUSTC} ({e}); {SETUP_HINT}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let llvm = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| format!("{DEBIAN_RUSTC} does not report its LLVM version; {SETUP_HINT}"))?;
    let major: u32 = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major != REQUIRED_LLVM_MAJOR {
        return Err(format!(
            "{DEBIAN_RUSTC} uses LLVM {llvm}, but bpf-linker here is built for LLVM {REQUIRED_LLVM_MAJOR}: \
             change BPF_LINKER's --features llvm-{REQUIRED_LLVM_MAJOR} and llvm-{REQUIRED_LLVM_MAJOR}-dev in \
             scripts/setup.sh and REQUIRED_LLVM_MAJOR in xtask/src/ebpf_build.rs to LLVM {major}"
        ));
    }
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(format!("bpf-linker is not in PATH; {SETUP_HINT}"));
    }
    Ok(())
}

/// Builds the XDP object with Debian's cargo and returns its path.
pub fn build(root: &Path) -> Result<PathBuf, String> {
    check_toolchain()?;
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(root.join("target-ebpf"))
        .args(["build", "--release", "--locked"]);
    // An outer cargo (rustup's) exports RUSTC, RUSTUP_TOOLCHAIN, CARGO_* and flags that
    // would make Debian's cargo use the wrong compiler or target directory.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("CARGO") || k.starts_with("RUST")) && k != "CARGO_HOME" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTDOC", DEBIAN_RUSTDOC);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {DEBIAN_CARGO} ({e}); {SETUP_HINT}"))?;
    if !status.success() {
        return Err(format!("building target-ebpf failed ({status})"));
    }
    let obj = object_path(root);
    if !obj.is_file() {
        return Err(format!(
            "the build succeeded but {} is missing",
            obj.display()
        ));
    }
    Ok(obj)
}
