//! `cargo xtask vendored [--update]`: the crates carried in `third_party/` are exactly their
//! crates.io release plus the patch files in `third_party/patches/`.
//!
//! The check fetches the pristine release through cargo (a throw-away manifest under
//! `target/vendored/` asks for the exact version), copies its `src/` (and `build.rs`) aside,
//! applies `third_party/patches/NAME-VERSION.patch` with patch(1), and compares the result
//! with the vendored tree file by file. A change made to a vendored crate without its patch
//! file (or the other way round) fails the check, which `lint` runs. `--update` rewrites the
//! patch files from the vendored trees (diff -ruN), to be reviewed and committed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The vendored crates: name, version, directory under `third_party/`.
const VENDORED: &[(&str, &str, &str)] = &[
    ("smoltcp", "0.14.0", "smoltcp"),
    ("xdpilone", "1.3.0", "xdpilone"),
];

/// What of a crate is compared and patched: its sources and build script. (The manifests
/// differ on purpose: the vendored ones drop examples, benches and dev-dependencies.)
const PARTS: &[&str] = &["src", "build.rs"];

pub(crate) fn run(root: &Path, update: bool) -> Result<()> {
    let work = root.join("target/vendored");
    let pristine = fetch(&work)?;
    for &(name, version, dir) in VENDORED {
        let src = pristine
            .get(name)
            .with_context(|| format!("cargo did not fetch {name} {version}"))?;
        let patch = root.join(format!("third_party/patches/{name}-{version}.patch"));
        let vendored = root.join("third_party").join(dir);
        if update {
            write_patch(src, &vendored, &patch)?;
            eprintln!("vendored: wrote {}", patch.display());
            continue;
        }
        let copy = work.join(format!("{name}-{version}"));
        let patches = if patch.exists() {
            std::slice::from_ref(&patch)
        } else {
            &[]
        };
        patched_copy(src, &copy, patches).with_context(|| {
            format!("{} no longer applies to {name} {version}", patch.display())
        })?;
        let differ = compare(&copy, &vendored, false)?;
        if !differ.is_empty() {
            bail!(
                "third_party/{dir} is not {name} {version} plus {}: {} differ ({}); \
                 record the change with `cargo xtask vendored --update`",
                patch.display(),
                differ.len(),
                differ.join(", ")
            );
        }
        eprintln!("vendored: third_party/{dir} = {name} {version} + its patch");
        // The series written for upstream (one commit per change, without our marker
        // comments) must say the same in code, or what we would offer is not what we run.
        let series = upstream_series(root, dir)?;
        if !series.is_empty() {
            let copy = work.join(format!("{name}-{version}-upstream"));
            patched_copy(src, &copy, &series).with_context(|| {
                format!("third_party/upstream/{dir} no longer applies to {name} {version}")
            })?;
            let differ = compare(&copy, &vendored, true)?;
            if !differ.is_empty() {
                bail!(
                    "third_party/upstream/{dir} applied to {name} {version} is not third_party/{dir} \
                     but for comments: {} differ ({}); make the series again (third_party/upstream/README.md)",
                    differ.len(),
                    differ.join(", ")
                );
            }
            eprintln!(
                "vendored: third_party/upstream/{dir} ({} patches) = third_party/{dir} but for comments",
                series.len()
            );
        }
    }
    Ok(())
}

/// The patch files of the series offered upstream for the crate in `third_party/DIR`, in
/// order (none when there is no series).
fn upstream_series(root: &Path, dir: &str) -> Result<Vec<PathBuf>> {
    let at = root.join("third_party/upstream").join(dir);
    if !at.is_dir() {
        return Ok(Vec::new());
    }
    let mut series: Vec<PathBuf> = fs::read_dir(&at)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    series.retain(|p| p.extension().is_some_and(|e| e == "patch"));
    series.sort();
    Ok(series)
}

/// Copies the compared parts of the release in `src` to `copy` and applies `patches` to
/// them in order with patch(1).
fn patched_copy(src: &Path, copy: &Path, patches: &[PathBuf]) -> Result<()> {
    let _ = fs::remove_dir_all(copy);
    for part in PARTS {
        let from = src.join(part);
        if from.exists() {
            copy_tree(&from, &copy.join(part))?;
        }
    }
    for patch in patches {
        super::run(
            Command::new("patch")
                .args(["-p1", "--batch", "--silent", "--forward", "-d"])
                .arg(copy)
                .arg("-i")
                .arg(patch),
        )
        .with_context(|| format!("applying {}", patch.display()))?;
    }
    Ok(())
}

/// Runs each vendored crate's own unit tests on our changes: the release's whole package
/// (manifest with its dev-dependencies, which the vendored manifests drop) with `src/` and
/// `build.rs` from `third_party/`. A change must keep upstream's tests passing, or change the
/// tests that assert what it deliberately changes (smoltcp's found one that sent a fast
/// retransmit into a zero window). Returns (passed, failed).
pub(crate) fn unit_tests(root: &Path) -> Result<(u64, u64)> {
    let work = root.join("target/vendored");
    let pristine = fetch(&work)?;
    let (mut passed, mut failed) = (0, 0);
    for &(name, version, dir) in VENDORED {
        let src = pristine
            .get(name)
            .with_context(|| format!("cargo did not fetch {name} {version}"))?;
        let copy = work.join("tests").join(format!("{name}-{version}"));
        let _ = fs::remove_dir_all(&copy);
        copy_tree(src, &copy)?;
        let vendored = root.join("third_party").join(dir);
        for part in PARTS {
            let at = copy.join(part);
            if at.is_dir() {
                fs::remove_dir_all(&at)?;
            } else if at.exists() {
                fs::remove_file(&at)?;
            }
            if vendored.join(part).exists() {
                copy_tree(&vendored.join(part), &at)?;
            }
        }
        // The copy lies inside this repository's workspace; an empty table makes it its own.
        let manifest = copy.join("Cargo.toml");
        let mut text = fs::read_to_string(&manifest)?;
        text.push_str("\n[workspace]\n");
        fs::write(&manifest, text)?;
        eprintln!("vendored: {name} {version}'s own unit tests, with third_party/{dir}");
        let (p, f) = super::run_counting_tests(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&copy)
                .env("CARGO_TARGET_DIR", work.join("tests-target"))
                .args(["test", "--lib", "--no-fail-fast"]),
        )?;
        passed += p;
        failed += f;
    }
    Ok((passed, failed))
}

/// The pristine sources of every vendored crate, fetched by cargo: name -> directory.
fn fetch(work: &Path) -> Result<BTreeMap<String, PathBuf>> {
    fs::create_dir_all(work)?;
    let deps: String = VENDORED
        .iter()
        .map(|(n, v, _)| format!("{n} = \"={v}\"\n"))
        .collect();
    fs::write(
        work.join("Cargo.toml"),
        format!(
            "[package]\nname = \"vendored-pristine\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [lib]\npath = \"lib.rs\"\n[dependencies]\n{deps}\n[workspace]\n"
        ),
    )?;
    fs::write(work.join("lib.rs"), "")?;
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(work)
        .args(["metadata", "--format-version", "1"])
        .output()
        .context("running cargo metadata for the pristine crates")?;
    if !out.status.success() {
        bail!(
            "cargo metadata (fetching the pristine crates) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut found = BTreeMap::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let (Some(name), Some(version), Some(manifest)) = (
            p["name"].as_str(),
            p["version"].as_str(),
            p["manifest_path"].as_str(),
        ) else {
            continue;
        };
        if VENDORED.iter().any(|(n, v, _)| *n == name && *v == version)
            && let Some(dir) = Path::new(manifest).parent()
        {
            found.insert(name.to_string(), dir.to_path_buf());
        }
    }
    Ok(found)
}

/// Rewrites `patch` as the difference between the pristine and the vendored parts.
fn write_patch(pristine: &Path, vendored: &Path, patch: &Path) -> Result<()> {
    let stage = patch.with_extension("stage");
    let _ = fs::remove_dir_all(&stage);
    for (side, from) in [("a", pristine), ("b", vendored)] {
        for part in PARTS {
            if from.join(part).exists() {
                copy_tree(&from.join(part), &stage.join(side).join(part))?;
            }
        }
    }
    let out = Command::new("diff")
        .current_dir(&stage)
        .args(["-ruN", "a", "b"])
        .output()
        .context("running diff")?;
    let _ = fs::remove_dir_all(&stage);
    // diff exits 1 when the trees differ, which is the point; 2 is trouble.
    if out.status.code() == Some(2) {
        bail!("diff failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Timestamps would make every regeneration a change.
    let text: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            if l.starts_with("--- ") || l.starts_with("+++ ") {
                l.split('\t').next().unwrap_or(l).to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    fs::create_dir_all(patch.parent().context("patch path has a folder")?)?;
    fs::write(patch, text)?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_file() {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        return Ok(());
    }
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        copy_tree(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}

/// The compared parts' files that differ (or exist on one side only), relative paths; with
/// `code_only`, lines that are only a `//` comment are left out of the comparison.
fn compare(expected: &Path, vendored: &Path, code_only: bool) -> Result<Vec<String>> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for part in PARTS {
        files(expected, &expected.join(part), &mut a)?;
        files(vendored, &vendored.join(part), &mut b)?;
    }
    if code_only {
        for text in a.values_mut().chain(b.values_mut()) {
            *text = without_comment_lines(text);
        }
    }
    let mut differ: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    differ.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    Ok(differ)
}

fn files(base: &Path, at: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
    if at.is_file() {
        let rel = at.strip_prefix(base).unwrap_or(at).display().to_string();
        out.insert(rel, fs::read(at)?);
    } else if at.is_dir() {
        for entry in fs::read_dir(at)? {
            files(base, &entry?.path(), out)?;
        }
    }
    Ok(())
}

/// `text` without the lines that hold only a `//` comment.
fn without_comment_lines(text: &[u8]) -> Vec<u8> {
    text.split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.trim_ascii_start().starts_with(b"//"))
        .flatten()
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::without_comment_lines;

    #[test]
    fn only_whole_comment_lines_are_left_out() {
        let text = b"fn f() {\n    // a comment\n    let x = 1; // kept: code before it\n/// doc\n    x\n}";
        assert_eq!(
            without_comment_lines(text),
            b"fn f() {\n    let x = 1; // kept: code before it\n    x\n}".to_vec()
        );
    }
}
