//! `cargo xtask bench`: the NVMe/TCP figures of issue 3 in one run.
//!
//! The release target runs pinned to CPU 0 in one namespace (so it has one reactor), the
//! `xdp-target perf` client pinned to CPU 1 in the other, joined by a veth pair. For each
//! job the target's CPU time (user and system, from /proc/PID/stat) is divided by the I/Os
//! done. SPDK nvmf_tgt's figures on this machine kind (from the issue) are printed beside
//! ours for comparison; they were not measured by this command.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xdp_target_tests::netns::VethPair;

struct BenchJob {
    name: &'static str,
    args: &'static [&'static str],
    /// SPDK nvmf_tgt (v26.05, io_uring sockets, one target core) on this machine kind.
    spdk: &'static str,
}

const JOBS: &[BenchJob] = &[
    BenchJob {
        name: "4K randread QD1",
        args: &["--workload", "randread", "--bs", "4096", "--qd", "1"],
        spdk: "13 us mean",
    },
    BenchJob {
        name: "4K randread QD32",
        args: &["--workload", "randread", "--bs", "4096", "--qd", "32"],
        spdk: "575k IOPS",
    },
    BenchJob {
        name: "4K randwrite QD32",
        args: &["--workload", "randwrite", "--bs", "4096", "--qd", "32"],
        spdk: "589k IOPS",
    },
    BenchJob {
        name: "128K seqread QD8",
        args: &["--workload", "read", "--bs", "131072", "--qd", "8"],
        spdk: "2.4 GiB/s",
    },
];

/// User and system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context("reading the target's /proc stat")?;
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    Ok((utime / tick, stime / tick))
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub(crate) fn run(root: &Path, seconds: u64) -> Result<()> {
    let bin = super::release_binary(root)?;
    let pair = VethPair::create_named("xdpt-bench").context("creating the bench namespaces")?;
    let child = pair
        .target
        .command("taskset")
        .args(["-c", "0"])
        .arg(&bin)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting the target")?;
    let pid = child.id();
    let served = Served(child);
    let url = format!(
        "nvme-tcp://{}:4420/nqn.2026-11.dev.xdp-target:default",
        pair.target_addr
    );
    // Wait for the listener.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = pair
            .client
            .command(&bin)
            .args(["perf", &url, "--time", "0.1", "--json"])
            .output()?;
        if probe.status.success() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the target did not start: {}",
                String::from_utf8_lossy(&probe.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "xdp-target NVMe/TCP over kernel sockets, memory namespace, one target core (CPU 0), perf on CPU 1, veth pair"
    );
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}   SPDK nvmf_tgt (issue)",
        "job", "IOPS", "MiB/s", "mean us", "p99 us", "tgt user us/IO", "tgt sys us/IO",
    );
    let mut results = Vec::new();
    for job in JOBS {
        let (u0, s0) = cpu_seconds(pid)?;
        let out = pair
            .client
            .command("taskset")
            .args(["-c", "1"])
            .arg(&bin)
            .args(["perf", &url, "--time", &seconds.to_string(), "--json"])
            .args(job.args)
            .output()
            .context("running perf")?;
        let (u1, s1) = cpu_seconds(pid)?;
        if !out.status.success() {
            bail!(
                "perf {}: {}",
                job.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("perf JSON")?;
        let ios = v["ios"].as_f64().unwrap_or(0.0).max(1.0);
        let user_us = (u1 - u0) * 1e6 / ios;
        let sys_us = (s1 - s0) * 1e6 / ios;
        println!(
            "{:<18} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>14.2} {:>14.2}   {}",
            job.name,
            v["iops"].as_f64().unwrap_or(0.0),
            v["mib_s"].as_f64().unwrap_or(0.0),
            v["lat_us"]["mean"].as_f64().unwrap_or(0.0),
            v["lat_us"]["p99"].as_f64().unwrap_or(0.0),
            user_us,
            sys_us,
            job.spdk
        );
        results.push(serde_json::json!({"job": job.name, "perf": v, "target_user_us_per_io": user_us, "target_sys_us_per_io": sys_us}));
    }
    let path = root.join("target/bench-nvme-tcp.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!("bench: JSON in {}", path.display());
    drop(served);
    drop(pair);
    Ok(())
}
