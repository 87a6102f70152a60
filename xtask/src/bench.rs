//! `cargo xtask bench`: NVMe/TCP and iSCSI figures over kernel sockets in one run.
//!
//! The release target runs pinned to CPU 0 in one namespace (so it has one reactor), the
//! client pinned to CPU 1 in the other, joined by a veth pair. Each job runs twice with
//! the same client, `xdp-target perf`, once per protocol (the same namespace is NVMe
//! namespace 1 and iSCSI LUN 0), then fio's libiscsi engine runs 4K randread QD32 against
//! our target and, when Debian's tgt is installed, against tgtd on the same namespace
//! pair. For each job the target's CPU time (user and system, from /proc/PID/stat) is
//! divided by the I/Os done, and IOPS per target core is I/Os over CPU seconds. SPDK
//! nvmf_tgt's figures on this machine kind (from the issue) are printed beside ours; they
//! were not measured by this command.

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

/// One measured job: perf's or fio's figures and the target's CPU per I/O.
struct Row {
    iops: f64,
    mib_s: f64,
    mean_us: f64,
    p99_us: f64,
    user_us: f64,
    sys_us: f64,
}

impl Row {
    fn per_core(&self) -> f64 {
        let cpu = self.user_us + self.sys_us;
        if cpu > 0.0 { 1e6 / cpu } else { 0.0 }
    }

    fn print(&self, job: &str, proto: &str, note: &str) {
        println!(
            "{job:<18} {proto:<6} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>9.2} {:>9.2} {:>11.0}   {note}",
            self.iops,
            self.mib_s,
            self.mean_us,
            self.p99_us,
            self.user_us,
            self.sys_us,
            self.per_core()
        );
    }

    fn json(&self) -> Value {
        serde_json::json!({"iops": self.iops, "mib_s": self.mib_s, "mean_us": self.mean_us,
            "p99_us": self.p99_us, "target_user_us_per_io": self.user_us,
            "target_sys_us_per_io": self.sys_us, "iops_per_target_core": self.per_core()})
    }
}

/// Runs `cmd` (a client command line) while measuring the CPU of `pid`.
fn measured(
    pair: &VethPair,
    pid: u32,
    cmd: &[String],
    parse: impl Fn(&[u8]) -> Result<(f64, Row)>,
) -> Result<Row> {
    let (u0, s0) = cpu_seconds(pid)?;
    let out = pair
        .client
        .command("taskset")
        .args(["-c", "1"])
        .args(cmd)
        .output()
        .context("running the client")?;
    let (u1, s1) = cpu_seconds(pid)?;
    if !out.status.success() {
        bail!(
            "{}: {}{}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let (ios, mut row) = parse(&out.stdout)?;
    row.user_us = (u1 - u0) * 1e6 / ios.max(1.0);
    row.sys_us = (s1 - s0) * 1e6 / ios.max(1.0);
    Ok(row)
}

fn perf_row(stdout: &[u8]) -> Result<(f64, Row)> {
    let v: Value = serde_json::from_slice(stdout).context("perf JSON")?;
    let f = |x: &Value| x.as_f64().unwrap_or(0.0);
    Ok((
        f(&v["ios"]),
        Row {
            iops: f(&v["iops"]),
            mib_s: f(&v["mib_s"]),
            mean_us: f(&v["lat_us"]["mean"]),
            p99_us: f(&v["lat_us"]["p99"]),
            user_us: 0.0,
            sys_us: 0.0,
        },
    ))
}

fn fio_row(stdout: &[u8]) -> Result<(f64, Row)> {
    let text = String::from_utf8_lossy(stdout);
    let v: Value =
        serde_json::from_str(&text[text.find('{').unwrap_or(0)..]).context("fio JSON")?;
    let r = &v["jobs"][0]["read"];
    let f = |x: &Value| x.as_f64().unwrap_or(0.0);
    Ok((
        f(&r["total_ios"]),
        Row {
            iops: f(&r["iops"]),
            mib_s: f(&r["bw"]) / 1024.0,
            mean_us: f(&r["clat_ns"]["mean"]) / 1000.0,
            p99_us: f(&r["clat_ns"]["percentile"]["99.000000"]) / 1000.0,
            user_us: 0.0,
            sys_us: 0.0,
        },
    ))
}

/// fio with the libiscsi engine: 4K randread QD32 for `seconds` against `url`.
fn fio_cmd(fio: &Path, url: &str, seconds: u64) -> Vec<String> {
    let escaped = url.replace(':', "\\:");
    vec![
        fio.display().to_string(),
        "--name=bench".into(),
        "--ioengine=libiscsi".into(),
        format!("--filename={escaped}"),
        "--rw=randread".into(),
        "--bs=4k".into(),
        "--iodepth=32".into(),
        "--size=256m".into(),
        "--time_based".into(),
        format!("--runtime={seconds}"),
        "--output-format=json".into(),
    ]
}

/// Starts the target on CPU 0 (with busy polling as given, else the default), ready once
/// perf gets through.
fn serve(pair: &VethPair, bin: &Path, url: &str, busy_poll_us: Option<&str>) -> Result<Served> {
    let child = pair
        .target
        .command("taskset")
        .args(["-c", "0"])
        .arg(bin)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .envs(busy_poll_us.map(|v| ("XDPT_BUSY_POLL_US", v)))
        .stdin(Stdio::null())
        .spawn()
        .context("starting the target")?;
    let served = Served(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = pair
            .client
            .command(bin)
            .args(["perf", url, "--time", "0.1", "--json"])
            .output()?;
        if probe.status.success() {
            return Ok(served);
        }
        if Instant::now() > deadline {
            bail!(
                "the target did not start: {}",
                String::from_utf8_lossy(&probe.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn run(root: &Path, seconds: u64) -> Result<()> {
    let bin = super::release_binary(root)?;
    let pair = VethPair::create_named("xdpt-bench").context("creating the bench namespaces")?;
    let url = format!(
        "nvme-tcp://{}:4420/nqn.2026-11.dev.xdp-target:default",
        pair.target_addr
    );
    let busy_poll = std::env::var("XDPT_BUSY_POLL_US").ok();
    let served = serve(&pair, &bin, &url, busy_poll.as_deref())?;
    let pid = served.0.id();
    println!(
        "xdp-target over kernel sockets, 1 GiB memory namespace (NVMe namespace 1 = iSCSI LUN 0), one target core (CPU 0), client on CPU 1, veth pair, {seconds} s per job"
    );
    println!(
        "{:<18} {:<6} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>11}   note",
        "job",
        "proto",
        "IOPS",
        "MiB/s",
        "mean us",
        "p99 us",
        "user us/IO",
        "sys us/IO",
        "IOPS/core"
    );
    let iscsi_url = format!(
        "iscsi://{}:3260/iqn.2026-11.dev.xdp-target:default/0",
        pair.target_addr
    );
    let mut results = Vec::new();
    for job in JOBS {
        let mut rows = Vec::new();
        for (proto, target) in [("nvme", &url), ("iscsi", &iscsi_url)] {
            let mut cmd: Vec<String> =
                vec![bin.display().to_string(), "perf".into(), target.clone()];
            cmd.extend(["--time".into(), seconds.to_string(), "--json".into()]);
            cmd.extend(job.args.iter().map(|a| (*a).to_string()));
            let row = measured(&pair, pid, &cmd, perf_row)
                .with_context(|| format!("{} over {proto}", job.name))?;
            rows.push((proto, row));
        }
        let ratio = rows[1].1.iops / rows[0].1.iops.max(1.0);
        rows[0]
            .1
            .print(job.name, "nvme", &format!("SPDK nvmf_tgt: {}", job.spdk));
        rows[1]
            .1
            .print("", "iscsi", &format!("iSCSI/NVMe IOPS {ratio:.2}"));
        results.push(
            serde_json::json!({"job": job.name, "nvme": rows[0].1.json(),
            "iscsi": rows[1].1.json(), "iscsi_over_nvme_iops": ratio}),
        );
    }
    let fio = root.join("target/fio-libiscsi/fio");
    if fio.is_file() {
        // fio (one client core) cannot saturate the target, whose reactor then spends the
        // rest of its core busy-polling: the same job again with busy polling off shows
        // the CPU the I/O itself costs.
        let row = measured(&pair, pid, &fio_cmd(&fio, &iscsi_url, seconds), fio_row)?;
        row.print(
            "fio libiscsi QD32",
            "iscsi",
            "4K randread, fio's libiscsi engine, busy-poll 200 us",
        );
        drop(served);
        let served_np = serve(&pair, &bin, &url, Some("0"))?;
        let np = measured(
            &pair,
            served_np.0.id(),
            &fio_cmd(&fio, &iscsi_url, seconds),
            fio_row,
        )?;
        np.print("", "iscsi", "the same, busy-poll off");
        drop(served_np);
        let mut tgt_row = None;
        match tgt::start(&pair)? {
            Some(t) => {
                let url = format!("iscsi://{}:3261/{}/1", pair.target_addr, tgt::IQN);
                let r = measured(&pair, t.pid(), &fio_cmd(&fio, &url, seconds), fio_row)?;
                r.print(
                    "",
                    "tgt",
                    &format!(
                        "Debian tgt, same client: ours {:.1}x its IOPS, {:.1}x (busy-poll) / {:.1}x (off) its IOPS per core",
                        row.iops / r.iops.max(1.0),
                        row.per_core() / r.per_core().max(1.0),
                        np.per_core() / r.per_core().max(1.0)
                    ),
                );
                tgt_row = Some(r.json());
            }
            None => println!(
                "{:<18} {:<6} (tgtd not installed: apt-get install tgt)",
                "", "tgt"
            ),
        }
        results.push(serde_json::json!({"job": "fio libiscsi 4K randread QD32",
            "iscsi": row.json(), "iscsi_busy_poll_off": np.json(), "tgt": tgt_row}));
    } else {
        drop(served);
        println!("bench: no fio with libiscsi (scripts/build-fio-libiscsi.sh builds it)");
    }
    let path = root.join("target/bench-sockets.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!("bench: JSON in {}", path.display());
    drop(pair);
    Ok(())
}

/// Debian's tgt (tgtd) as the iSCSI peer: the same namespace pair, CPU 0, a 1 GiB file in
/// /dev/shm (memory, like our namespace) as LUN 1, portal port 3261.
mod tgt {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use anyhow::{Context, Result, bail};
    use xdp_target_tests::netns::VethPair;

    pub(super) const IQN: &str = "iqn.2026-11.dev.xdp-target:tgt";
    const TGTD: &str = "/usr/sbin/tgtd";

    pub(super) struct Tgt {
        child: Child,
        backing: PathBuf,
    }

    impl Tgt {
        pub(super) fn pid(&self) -> u32 {
            self.child.id()
        }
    }

    impl Drop for Tgt {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_file(&self.backing);
        }
    }

    fn tgtadm(args: &[&str]) -> Result<()> {
        let out = Command::new("tgtadm")
            .args(["--lld", "iscsi"])
            .args(args)
            .output()
            .context("running tgtadm")?;
        if !out.status.success() {
            bail!("tgtadm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Starts tgtd with one target, or `None` when tgt is not installed.
    pub(super) fn start(pair: &VethPair) -> Result<Option<Tgt>> {
        if !Path::new(TGTD).is_file() {
            return Ok(None);
        }
        let backing = PathBuf::from("/dev/shm/xdpt-bench-tgt.img");
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(1 << 30))
            .context("creating tgt's backing file")?;
        let child = pair
            .target
            .command("taskset")
            .args(["-c", "0", TGTD, "-f", "--iscsi"])
            .arg(format!("portal={}:3261", pair.target_addr))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tgtd")?;
        let t = Tgt { child, backing };
        // tgtd's control socket appears once it is up.
        let mut ready = false;
        for _ in 0..50 {
            if tgtadm(&["--op", "show", "--mode", "target"]).is_ok() {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !ready {
            bail!("tgtd did not start");
        }
        tgtadm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", IQN])?;
        let path = t.backing.display().to_string();
        tgtadm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &path,
        ])?;
        tgtadm(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ])?;
        Ok(Some(t))
    }
}
