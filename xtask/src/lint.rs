//! `cargo xtask lint`: the layer rules of `../shared/ARCHITECTURE.md`, checked from
//! `cargo metadata`, then rustfmt and clippy with `-D warnings`.
//!
//! Rules: the sans-I/O crates (target-wire, target-tcp, target-proto) must not reach, through
//! normal (non-dev, non-build) dependencies, any crate that does I/O or loads eBPF; and the
//! workspace crates may depend on each other only along the arrows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Crates whose presence means I/O or kernel access.
const IO_CRATES: &[&str] = &[
    "tokio", "mio", "aya", "aya-obj", "libc", "io-uring", "nix", "rustix", "socket2", "xdpilone",
];

/// For each sans-I/O crate: the workspace crates it may depend on.
const SANS_IO: &[(&str, &[&str])] = &[
    ("target-wire", &[]),
    ("target-tcp", &["target-wire"]),
    ("target-proto", &["target-wire"]),
];

/// Crates that must build without the eBPF toolchain (the initiator and the fio engine run
/// on machines that only measure): what they may not reach, directly or not.
/// target-rdma is the verbs/RDMA CM layer under both the target and the initiator: it knows
/// nothing of NVMe or of the rest of the workspace.
const NO_EBPF: &[(&str, &[&str])] = &[
    (
        "target-initiator",
        &[
            "aya",
            "aya-obj",
            "target-common",
            "target-user",
            "io-uring",
            "xdpilone",
        ],
    ),
    (
        "target-fio",
        &[
            "aya",
            "aya-obj",
            "target-common",
            "target-user",
            "io-uring",
            "xdpilone",
        ],
    ),
    (
        "target-rdma",
        &[
            "aya",
            "aya-obj",
            "target-common",
            "target-user",
            "target-wire",
            "target-proto",
            "target-tcp",
            "io-uring",
            "xdpilone",
        ],
    ),
];

/// Workspace crates that no other workspace crate may depend on.
const LEAVES: &[&str] = &["target-user", "xtask", "xdp-target-tests"];

pub(crate) fn run(root: &Path) -> Result<()> {
    check_layers(root)?;
    eprintln!("lint: layer rules hold");
    super::vendored::run(root, false)?;
    super::run(super::cargo(root).args(["fmt", "--all", "--check"]))?;
    super::run(super::cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The fuzz targets live in their own workspace (cargo-fuzz builds them with nightly):
    // check that they still compile against the crates they drive.
    super::run(super::cargo(root).args(["check", "--manifest-path", "fuzz/Cargo.toml", "--bins"]))?;
    Ok(())
}

struct Graph {
    /// package id -> name
    names: BTreeMap<String, String>,
    /// package id -> ids of its normal dependencies
    normal: BTreeMap<String, Vec<String>>,
    members: BTreeSet<String>,
}

fn load(root: &Path) -> Result<Graph> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let mut names = BTreeMap::new();
    for p in meta["packages"]
        .as_array()
        .context("metadata without packages")?
    {
        names.insert(str_of(&p["id"])?, str_of(&p["name"])?);
    }
    let members = meta["workspace_members"]
        .as_array()
        .context("metadata without workspace_members")?
        .iter()
        .map(str_of)
        .collect::<Result<_>>()?;
    let mut normal = BTreeMap::new();
    for node in meta["resolve"]["nodes"]
        .as_array()
        .context("metadata without resolve")?
    {
        let mut deps = Vec::new();
        for d in node["deps"].as_array().into_iter().flatten() {
            let is_normal = d["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if is_normal {
                deps.push(str_of(&d["pkg"])?);
            }
        }
        normal.insert(str_of(&node["id"])?, deps);
    }
    Ok(Graph {
        names,
        normal,
        members,
    })
}

fn str_of(v: &Value) -> Result<String> {
    v.as_str()
        .map(str::to_owned)
        .context("expected a string in cargo metadata")
}

/// Every normal dependency of `id`, direct or not, with the path that reaches it.
fn reachable(g: &Graph, id: &str, name: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![(id.to_string(), name.to_string())];
    while let Some((cur, path)) = stack.pop() {
        for dep in &g.normal[&cur] {
            if !seen.insert(dep.clone()) {
                continue;
            }
            let dep_name = g.names[dep].clone();
            let via = format!("{path} -> {dep_name}");
            out.push((dep_name, via.clone()));
            stack.push((dep.clone(), via));
        }
    }
    out
}

fn check_layers(root: &Path) -> Result<()> {
    let g = load(root)?;
    let member_names: BTreeSet<&str> = g.members.iter().map(|id| g.names[id].as_str()).collect();
    let mut errors = Vec::new();
    for id in &g.members {
        let name = g.names[id].as_str();
        for dep in &g.normal[id] {
            let dep_name = g.names[dep].as_str();
            if member_names.contains(dep_name) && LEAVES.contains(&dep_name) && name != "xtask" {
                errors.push(format!(
                    "{name} depends on {dep_name}, which nothing may depend on"
                ));
            }
        }
        if let Some((_, banned)) = NO_EBPF.iter().find(|(n, _)| *n == name) {
            for (dep_name, via) in reachable(&g, id, name) {
                if banned.contains(&dep_name.as_str()) {
                    errors.push(format!("{name} must build without eBPF but reaches {via}"));
                }
            }
        }
        let Some((_, allowed)) = SANS_IO.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        // Every normal dependency, direct or not, and through which path.
        for (dep_name, via) in reachable(&g, id, name) {
            let dep_name = dep_name.as_str();
            if IO_CRATES.contains(&dep_name) {
                errors.push(format!("{name} must stay sans-I/O but reaches {via}"));
            }
            if member_names.contains(dep_name) && !allowed.contains(&dep_name) {
                errors.push(format!("{name} may not depend on {dep_name} ({via})"));
            }
        }
    }
    if !errors.is_empty() {
        bail!(
            "layer rules of ARCHITECTURE.md broken:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(())
}
