//! `cargo xtask fio-engine`: builds the `xdpt` external fio ioengine,
//! `target/release/libfio-xdpt.so`, from the release `target-fio` static library and
//! `fio-engine/fio_xdpt.c` compiled against the configured source tree of the fio that
//! `scripts/build-fio-libiscsi.sh` builds (Debian's fio source), so the engine's
//! `ioengine_ops` and `thread_data` layouts are that fio's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The fio that `scripts/build-fio-libiscsi.sh` installs, and its configured source tree.
fn fio(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = root.join("target/fio-libiscsi");
    let fio = dir.join("fio");
    if !fio.is_file() {
        eprintln!("xtask: building fio from Debian's source (scripts/build-fio-libiscsi.sh)");
        super::run(Command::new("bash").arg(root.join("scripts/build-fio-libiscsi.sh")))?;
    }
    let src = std::fs::read_dir(dir.join("src"))
        .with_context(|| format!("{} has no src/: rerun scripts/build-fio-libiscsi.sh after removing {}", dir.display(), fio.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("config-host.h").is_file() && p.join("ioengines.h").is_file())
        .with_context(|| {
            format!(
                "no configured fio source tree (config-host.h) under {}: remove {} and rerun scripts/build-fio-libiscsi.sh",
                dir.join("src").display(),
                fio.display()
            )
        })?;
    Ok((fio, src))
}

/// Builds the engine; its path.
pub(crate) fn build(root: &Path) -> Result<PathBuf> {
    let (_, src) = fio(root)?;
    super::run(super::cargo(root).args(["build", "--release", "--package", "target-fio"]))?;
    let lib = root.join("target/release/libtarget_fio.a");
    let out = root.join("target/release/libfio-xdpt.so");
    let script = root.join("target/release/fio-xdpt.map");
    // Export the engine's ops only: fio looks up `ioengine`, and nothing of the Rust
    // library's may interpose on fio's own symbols.
    std::fs::write(&script, "{ global: ioengine; local: *; };\n")
        .with_context(|| format!("cannot write {}", script.display()))?;
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        // fio's own flags (its Makefile and config-host.mak) for the same struct layouts.
        .args(["-std=gnu99", "-O2", "-Wall", "-Werror", "-fPIC", "-shared"])
        .args(["-D_GNU_SOURCE", "-include", "config-host.h"])
        .arg("-I")
        .arg(&src)
        .arg(root.join("fio-engine/fio_xdpt.c"))
        .arg(&lib)
        .arg(format!("-Wl,--version-script={}", script.display()))
        .args(["-lpthread", "-ldl", "-lm", "-lgcc_s"])
        .arg("-o")
        .arg(&out)
        .current_dir(&src)
        .status()
        .context("cannot run cc (build-essential)")?;
    if !status.success() {
        bail!(
            "compiling fio-engine/fio_xdpt.c against {} failed",
            src.display()
        );
    }
    Ok(out)
}
