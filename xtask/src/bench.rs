//! `cargo xtask bench`: the XDP path against kernel sockets, NVMe/TCP and iSCSI, in one run.
//!
//! The release target runs pinned to CPU 0 in one namespace, the client pinned to CPU 1 in
//! the other, joined by a veth pair. At MTU 1500 and 9000, for several repetitions, the
//! target is started over sockets, then over the XDP path (alternating, so drift in the
//! machine hits both alike), its namespace is written whole once (reads then copy data,
//! not zeroes of blocks never written), and every job runs with one and two connections
//! over both protocols with the same client, `xdp-target perf` (the same namespace is NVMe namespace
//! 1 and iSCSI LUN 0), then fio: its libiscsi engine and the project's NVMe/TCP engine
//! (`cargo xtask fio-engine`). For each run the target's user and
//! system CPU time (from /proc/PID/stat) and the two cores' softirq time (from /proc/stat:
//! veth does receive work in the sender's softirq) are divided by the I/Os done. By default
//! veth is left as a user gets it: the client's receive work runs in the softirq of the
//! target's core when the target sends. `--napi-thread` moves it to a NAPI thread pinned to
//! the client's core instead (GRO and threaded NAPI on the client's end, TSO off on the
//! target's end for the XDP runs). Medians
//! of the repetitions are printed with the XDP/sockets ratios, written to
//! target/bench.json and drawn in target/bench.png; Debian's tgt is measured beside them
//! when installed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xdp_target_tests::netns::VethPair;

struct BenchJob {
    name: &'static str,
    args: &'static [&'static str],
    /// SPDK nvmf_tgt (v26.05, io_uring sockets, one target core) on this machine kind.
    spdk: &'static str,
    /// Idle NVMe connections held beside the measured one (`perf --idle-connections`);
    /// such a job runs over NVMe with one connection only.
    idle: u32,
}

const JOBS: &[BenchJob] = &[
    BenchJob {
        name: "4K randread QD1",
        args: &["--workload", "randread", "--bs", "4096", "--qd", "1"],
        spdk: "13 us mean",
        idle: 0,
    },
    BenchJob {
        name: "4K randread QD32",
        args: &["--workload", "randread", "--bs", "4096", "--qd", "32"],
        spdk: "575k IOPS",
        idle: 0,
    },
    BenchJob {
        name: "4K randwrite QD32",
        args: &["--workload", "randwrite", "--bs", "4096", "--qd", "32"],
        spdk: "589k IOPS",
        idle: 0,
    },
    BenchJob {
        name: "128K seqread QD8",
        args: &["--workload", "read", "--bs", "131072", "--qd", "8"],
        spdk: "2.4 GiB/s",
        idle: 0,
    },
    BenchJob {
        name: "4K rr QD32 +1000 idle",
        args: &["--workload", "randread", "--bs", "4096", "--qd", "32"],
        spdk: "",
        idle: 1000,
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
    let tick = super::clock_ticks();
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

/// fio with `engine` (libiscsi, or `external:` the xdpt engine for NVMe/TCP): 4K randread
/// QD32 for `seconds` against `url`.
fn fio_cmd(fio: &Path, engine: &str, url: &str, seconds: u64) -> Vec<String> {
    let escaped = url.replace(':', "\\:");
    vec![
        fio.display().to_string(),
        "--name=bench".into(),
        format!("--ioengine={engine}"),
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

/// Which transport the target serves the client's link with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path_ {
    Sockets,
    Xdp,
}

impl Path_ {
    fn name(self) -> &'static str {
        match self {
            Self::Sockets => "sockets",
            Self::Xdp => "xdp",
        }
    }
}

/// Starts the target on CPU 0 (with busy polling as given, else the default), serving the
/// pair's target end over `path`, ready once perf gets through.
fn serve(
    pair: &VethPair,
    bin: &Path,
    url: &str,
    busy_poll_us: Option<&str>,
    path: Path_,
    napi_thread: bool,
) -> Result<Served> {
    // veth hands a frame to the receiver's NAPI thread only when the sending device has
    // TSO off; otherwise the client's receive work lands on the target's core. The kernel's
    // TCP (socket path) wants TSO (64 KiB segments); AF_XDP frames never use it, so with
    // --napi-thread the XDP runs turn it off on the target's end.
    let tso = if path == Path_::Xdp && napi_thread {
        "off"
    } else {
        "on"
    };
    let out = pair
        .target
        .command("ethtool")
        .args(["-K", &pair.target_if, "tso", tso])
        .output()?;
    if !out.status.success() {
        bail!(
            "ethtool -K tso {tso}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cmd = pair.target.command("taskset");
    cmd.args(["-c", "0"]).arg(bin).arg("serve");
    if path == Path_::Xdp {
        cmd.args(["--xdp", &pair.target_if, "--require-afxdp"]);
    }
    let child = cmd
        .env("RUST_LOG", "warn")
        .envs(busy_poll_us.map(|v| ("XDPT_BUSY_POLL_US", v)))
        .stdin(Stdio::null())
        .spawn()
        .context("starting the target")?;
    let mut served = Served(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = pair
            .client
            .command(bin)
            .args(["perf", url, "--time", "0.1", "--json"])
            .output()?;
        if probe.status.success() {
            fill(pair, bin, url)?;
            return Ok(served);
        }
        if let Some(status) = served.0.try_wait()? {
            bail!("the target exited ({status}) over {}", path.name());
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

/// Writes the whole namespace once. The memory backend keeps blocks never written as
/// nothing and reads them as zeroes without touching memory, so reads of a fresh namespace
/// would measure a `memset` where a user's reads copy from memory (a full namespace: 4K
/// randread QD32 went from about 850k to 500k IOPS on the socket path once the write jobs
/// had filled it).
fn fill(pair: &VethPair, bin: &Path, url: &str) -> Result<()> {
    let out = pair
        .client
        .command(bin)
        .args([
            "perf",
            url,
            "--workload",
            "write",
            "--bs",
            "131072",
            "--qd",
            "16",
        ])
        .args(["--once", "--time", "120", "--json"])
        .output()?;
    if !out.status.success() {
        bail!(
            "filling the namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Busy and softirq jiffies of CPUs 0 and 1 (from /proc/stat).
fn cpu_jiffies() -> Result<[(f64, f64); 2]> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let mut out = [(0.0, 0.0); 2];
    for (i, cpu) in ["cpu0 ", "cpu1 "].iter().enumerate() {
        let line = stat
            .lines()
            .find(|l| l.starts_with(cpu))
            .with_context(|| format!("{cpu}in /proc/stat"))?;
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        // user nice system idle iowait irq softirq steal
        let busy = v.iter().take(8).sum::<f64>()
            - v.get(3).copied().unwrap_or(0.0)
            - v.get(4).copied().unwrap_or(0.0);
        out[i] = (busy, v.get(6).copied().unwrap_or(0.0));
    }
    Ok(out)
}

/// One measured run of the matrix.
struct Sample {
    mtu: u32,
    job: &'static str,
    conns: u32,
    proto: &'static str,
    path: Path_,
    row: Row,
    /// Softirq microseconds per I/O on both cores (veth's receive work runs there).
    softirq_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU share of a core the idle target uses over `secs` seconds.
fn idle_cpu(pid: u32, secs: f64) -> Result<f64> {
    let (u0, s0) = cpu_seconds(pid)?;
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (u1, s1) = cpu_seconds(pid)?;
    Ok((u1 - u0 + s1 - s0) / secs * 100.0)
}

/// veth does a receiver's work in the sender's softirq, so every frame the target sends
/// would be received (the client's TCP) on the target's core. GRO and threaded NAPI on the
/// client's end move that work to a kernel thread, pinned here to the client's core: the
/// target's core then carries the target's work alone, on both paths alike.
fn client_rx_on_client_core(pair: &VethPair) -> Result<()> {
    let dev = &pair.client_if;
    let gro = pair
        .client
        .command("ethtool")
        .args(["-K", dev, "gro", "on"])
        .output()?;
    if !gro.status.success() {
        bail!(
            "ethtool -K {dev} gro on: {}",
            String::from_utf8_lossy(&gro.stderr)
        );
    }
    // `ip netns exec` mounts the namespace's own sysfs, where the device is.
    let threaded = Command::new("ip")
        .args(["netns", "exec", pair.client.name(), "sh", "-c"])
        .arg(format!("echo 1 > /sys/class/net/{dev}/threaded"))
        .output()?;
    if !threaded.status.success() {
        bail!(
            "threaded NAPI on {dev}: {}",
            String::from_utf8_lossy(&threaded.stderr)
        );
    }
    let prefix = format!("napi/{dev}-");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with(&prefix) {
            let pid = entry.file_name().to_string_lossy().into_owned();
            Command::new("taskset").args(["-pc", "1", &pid]).output()?;
        }
    }
    Ok(())
}

/// Profiles the target (`pid`) with `perf record` (DWARF call graphs, kernel and user
/// space) while the client runs 4K randread QD32 over NVMe/TCP, and draws the flame graph
/// into `svg` with inferno.
fn flamegraph(
    pair: &VethPair,
    bin: &Path,
    url: &str,
    pid: u32,
    seconds: u64,
    svg: &Path,
) -> Result<()> {
    use inferno::collapse::Collapse;
    let data = svg.with_extension("perf.data");
    let mut client = pair
        .client
        .command("taskset")
        .args(["-c", "1"])
        .arg(bin)
        .args(["perf", url, "--time", &(seconds + 1).to_string()])
        .args(["--workload", "randread", "--bs", "4096", "--qd", "32"])
        .stdout(Stdio::null())
        .spawn()
        .context("running the client")?;
    std::thread::sleep(Duration::from_millis(500));
    let rec = Command::new("perf")
        .args(["record", "-q", "-F", "997", "--call-graph", "dwarf,16384"])
        .arg("-p")
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .output()
        .context("perf record (apt install linux-perf)")?;
    let done = client.wait()?;
    if !rec.status.success() || !done.success() {
        bail!(
            "perf record: {}; client: {done}",
            String::from_utf8_lossy(&rec.stderr)
        );
    }
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .output()
        .context("perf script")?;
    if !script.status.success() {
        bail!("perf script: {}", String::from_utf8_lossy(&script.stderr));
    }
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::default().collapse(&script.stdout[..], &mut folded)?;
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!(
        "xdp-target {}: 4K randread QD32, NVMe/TCP",
        svg.file_stem().unwrap_or_default().to_string_lossy()
    );
    let out = std::fs::File::create(svg)?;
    inferno::flamegraph::from_reader(&mut opts, &folded[..], out)?;
    let _ = std::fs::remove_file(&data);
    Ok(())
}

fn set_mtu(pair: &VethPair, mtu: u32) -> Result<()> {
    let m = mtu.to_string();
    for (ns, dev) in [
        (&pair.target, &pair.target_if),
        (&pair.client, &pair.client_if),
    ] {
        let st = xdp_target_tests::netns::ip(&["-n", ns.name(), "link", "set", dev, "mtu", &m]);
        st.with_context(|| format!("setting MTU {mtu} on {dev}"))?;
    }
    Ok(())
}

pub(crate) fn run(
    root: &Path,
    seconds: u64,
    reps: u32,
    napi_thread: bool,
    flamegraphs: bool,
    only: Option<&str>,
    mtus: &[u32],
) -> Result<()> {
    let bin = super::release_binary(root)?;
    let pair = VethPair::create_named("xdpt-bench").context("creating the bench namespaces")?;
    // The user-space stack verifies checksums, and veth leaves the client's partial: the
    // client's end computes them in software (for both paths, so they compare fairly).
    pair.client_checksums_in_software()?;
    if napi_thread {
        client_rx_on_client_core(&pair)?;
    }
    let url = format!(
        "nvme-tcp://{}:4420/nqn.2026-11.dev.xdp-target:default",
        pair.target_addr
    );
    let iscsi_url = format!(
        "iscsi://{}:3260/iqn.2026-11.dev.xdp-target:default/0",
        pair.target_addr
    );
    let busy_poll = std::env::var("XDPT_BUSY_POLL_US").ok();
    let fio = root.join("target/fio-libiscsi/fio");
    // fio over NVMe/TCP too, through the xdpt engine built against that fio.
    let fio_xdpt = if fio.is_file() {
        Some(format!(
            "external:{}",
            super::fio_engine::build(root)?.display()
        ))
    } else {
        None
    };
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "xdp-target, sockets vs XDP path: 1 GiB memory namespace (NVMe namespace 1 = iSCSI LUN 0), \
         target on CPU 0, client on CPU 1, veth pair (copy-mode AF_XDP{}), {seconds} s per run, \
         median of {reps}, paths alternating; {cpus}",
        if napi_thread {
            "; client's receive work on a NAPI thread on CPU 1"
        } else {
            ""
        }
    );
    let mut samples: Vec<Sample> = Vec::new();
    let mut idle = Vec::new();
    for &mtu in mtus {
        set_mtu(&pair, mtu)?;
        for rep in 0..reps {
            for path in [Path_::Sockets, Path_::Xdp] {
                let served = serve(&pair, &bin, &url, busy_poll.as_deref(), path, napi_thread)?;
                let pid = served.0.id();
                if rep == 0 {
                    idle.push((mtu, path, idle_cpu(pid, 2.0)?));
                }
                for job in JOBS
                    .iter()
                    .filter(|j| only.is_none_or(|o| o.split(',').any(|o| j.name.contains(o))))
                {
                    for conns in [1u32, 2] {
                        for (proto, target) in [("nvme", &url), ("iscsi", &iscsi_url)] {
                            if job.idle > 0 && (conns > 1 || proto != "nvme") {
                                continue;
                            }
                            let mut cmd: Vec<String> =
                                vec![bin.display().to_string(), "perf".into(), target.clone()];
                            cmd.extend(["--time".into(), seconds.to_string(), "--json".into()]);
                            cmd.extend(["--queues".into(), conns.to_string()]);
                            cmd.extend(job.args.iter().map(|a| (*a).to_string()));
                            if job.idle > 0 {
                                cmd.extend(["--idle-connections".into(), job.idle.to_string()]);
                            }
                            let j0 = cpu_jiffies()?;
                            let row = measured(&pair, pid, &cmd, perf_row).with_context(|| {
                                format!(
                                    "{} x{conns} over {proto}, {} MTU {mtu}",
                                    job.name,
                                    path.name()
                                )
                            })?;
                            let j1 = cpu_jiffies()?;
                            let soft = (j1[0].1 - j0[0].1 + j1[1].1 - j0[1].1) * 1e6
                                / super::clock_ticks()
                                / (row.iops * seconds as f64).max(1.0);
                            samples.push(Sample {
                                mtu,
                                job: job.name,
                                conns,
                                proto,
                                path,
                                row,
                                softirq_us: soft,
                            });
                        }
                    }
                }
                if fio.is_file() && only.is_none() {
                    let cmd = fio_cmd(&fio, "libiscsi", &iscsi_url, seconds);
                    let row = measured(&pair, pid, &cmd, fio_row)?;
                    samples.push(Sample {
                        mtu,
                        job: "fio libiscsi 4K QD32",
                        conns: 1,
                        proto: "iscsi",
                        path,
                        row,
                        softirq_us: 0.0,
                    });
                }
                if let Some(engine) = fio_xdpt.as_ref().filter(|_| only.is_none()) {
                    let cmd = fio_cmd(&fio, engine, &url, seconds);
                    let row = measured(&pair, pid, &cmd, fio_row)?;
                    samples.push(Sample {
                        mtu,
                        job: "fio xdpt 4K QD32",
                        conns: 1,
                        proto: "nvme",
                        path,
                        row,
                        softirq_us: 0.0,
                    });
                }
                drop(served);
            }
        }
    }
    if flamegraphs {
        for &mtu in mtus {
            set_mtu(&pair, mtu)?;
            for path in [Path_::Sockets, Path_::Xdp] {
                let served = serve(&pair, &bin, &url, busy_poll.as_deref(), path, napi_thread)?;
                let svg = root.join(format!("target/flame-{}-{mtu}.svg", path.name()));
                flamegraph(&pair, &bin, &url, served.0.id(), seconds, &svg)?;
                println!("flame graph: {}", svg.display());
                drop(served);
            }
        }
    }
    // Medians, printed with the XDP/sockets ratios.
    println!(
        "{:<5} {:<20} {:>2} {:<5} {:<7} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>9}  {:>6} {:>6}",
        "MTU",
        "job",
        "c",
        "proto",
        "path",
        "IOPS",
        "MiB/s",
        "mean us",
        "p99 us",
        "usr/IO",
        "sys/IO",
        "sirq/IO",
        "IOPS/core",
        "IOPS x",
        "lat x"
    );
    let mut json = Vec::new();
    let mut chart = Vec::new();
    let mut keys: Vec<(u32, &str, u32, &str)> = Vec::new();
    for s in &samples {
        let k = (s.mtu, s.job, s.conns, s.proto);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for k in keys {
        let mut med = Vec::new();
        for path in [Path_::Sockets, Path_::Xdp] {
            let rows: Vec<&Sample> = samples
                .iter()
                .filter(|s| (s.mtu, s.job, s.conns, s.proto) == k && s.path == path)
                .collect();
            let m = |f: &dyn Fn(&Sample) -> f64| median(rows.iter().map(|s| f(s)).collect());
            let row = Row {
                iops: m(&|s| s.row.iops),
                mib_s: m(&|s| s.row.mib_s),
                mean_us: m(&|s| s.row.mean_us),
                p99_us: m(&|s| s.row.p99_us),
                user_us: m(&|s| s.row.user_us),
                sys_us: m(&|s| s.row.sys_us),
            };
            med.push((path, row, m(&|s| s.softirq_us)));
        }
        let iops_x = med[1].1.iops / med[0].1.iops.max(1.0);
        let lat_x = med[1].1.mean_us / med[0].1.mean_us.max(1e-9);
        for (i, (path, r, soft)) in med.iter().enumerate() {
            let (a, b) = if i == 1 {
                (format!("{iops_x:.2}"), format!("{lat_x:.2}"))
            } else {
                (String::new(), String::new())
            };
            println!(
                "{:<5} {:<20} {:>2} {:<5} {:<7} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>7.2} {:>7.2} {:>7.2} {:>9.0}  {:>6} {:>6}",
                k.0,
                k.1,
                k.2,
                k.3,
                path.name(),
                r.iops,
                r.mib_s,
                r.mean_us,
                r.p99_us,
                r.user_us,
                r.sys_us,
                soft,
                r.per_core(),
                a,
                b
            );
        }
        chart.push((
            format!("{} {} x{} {}", k.0, k.1, k.2, k.3),
            med[0].1.iops,
            med[1].1.iops,
        ));
        json.push(serde_json::json!({
            "mtu": k.0, "job": k.1, "connections": k.2, "protocol": k.3,
            "sockets": med[0].1.json(), "xdp": med[1].1.json(),
            "sockets_softirq_us_per_io": med[0].2, "xdp_softirq_us_per_io": med[1].2,
            "xdp_over_sockets_iops": iops_x, "xdp_over_sockets_mean_latency": lat_x,
        }));
    }
    let spdk: Vec<String> = JOBS
        .iter()
        .filter(|j| !j.spdk.is_empty())
        .map(|j| format!("{} {}", j.name, j.spdk))
        .collect();
    println!(
        "SPDK nvmf_tgt on this machine kind (one core, from the issue; not measured here): {}",
        spdk.join(", ")
    );
    for j in JOBS.iter().filter(|j| j.idle > 0) {
        if samples.iter().any(|s| s.job == j.name) {
            println!(
                "{}: CPU per I/O counts the target's whole time during the client's run, so it \
                 includes accepting and closing the {} idle connections",
                j.name, j.idle
            );
        }
    }
    for (mtu, path, pct) in &idle {
        println!(
            "idle target, MTU {mtu}, {}: {pct:.2}% of a core",
            path.name()
        );
    }
    let idle_json: Vec<Value> = idle
        .iter()
        .map(|(m, p, c)| serde_json::json!({"mtu": m, "path": p.name(), "cpu_percent": c}))
        .collect();
    // Debian's tgt beside ours, over sockets (fio's libiscsi engine, MTU 1500).
    set_mtu(&pair, 1500)?;
    let mut tgt_json = Value::Null;
    if fio.is_file() {
        match tgt::start(&pair)? {
            Some(t) => {
                let turl = format!("iscsi://{}:3261/{}/1", pair.target_addr, tgt::IQN);
                let cmd = fio_cmd(&fio, "libiscsi", &turl, seconds);
                let r = measured(&pair, t.pid(), &cmd, fio_row)?;
                println!(
                    "Debian tgt, fio libiscsi 4K randread QD32, MTU 1500: {:.0} IOPS, {:.1} us mean, {:.1} us target CPU per I/O ({:.0} IOPS per core)",
                    r.iops,
                    r.mean_us,
                    r.user_us + r.sys_us,
                    r.per_core()
                );
                tgt_json = r.json();
            }
            None => println!("tgt: not installed (apt-get install tgt) - not compared"),
        }
    }
    let jpath = root.join("target/bench.json");
    std::fs::write(
        &jpath,
        serde_json::to_string_pretty(&serde_json::json!({
            "machine": cpus, "seconds": seconds, "repetitions": reps, "napi_thread": napi_thread,
            "results": json, "idle": idle_json, "tgt_fio_libiscsi": tgt_json,
        }))?,
    )?;
    println!("bench: JSON in {}", jpath.display());
    let png = root.join("target/bench.png");
    match chart::draw(&png, &chart) {
        Ok(()) => println!("bench: chart in {}", png.display()),
        Err(e) => println!("bench: no chart: {e:#}"),
    }
    drop(pair);
    Ok(())
}

/// Draws the chart of an earlier run's JSON (`target/bench.json`) again, into `png`.
pub(crate) fn redraw(json: &Path, png: &Path) -> Result<()> {
    let v: Value = serde_json::from_slice(
        &std::fs::read(json).with_context(|| format!("reading {}", json.display()))?,
    )
    .context("bench JSON")?;
    let rows: Vec<(String, f64, f64)> = v["results"]
        .as_array()
        .context("no results in the JSON")?
        .iter()
        .map(|r| {
            (
                format!(
                    "{} {} x{} {}",
                    r["mtu"],
                    r["job"].as_str().unwrap_or(""),
                    r["connections"],
                    r["protocol"].as_str().unwrap_or("")
                ),
                r["sockets"]["iops"].as_f64().unwrap_or(0.0),
                r["xdp"]["iops"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    chart::draw(png, &rows)?;
    println!("bench: chart in {}", png.display());
    Ok(())
}

/// A PNG of the medians: the XDP path's IOPS over the socket path's, per row.
mod chart {
    use std::path::Path;

    use anyhow::{Context, Result};
    use plotters::prelude::*;
    use plotters::style::{FontStyle, register_font};

    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

    pub(super) fn draw(path: &Path, rows: &[(String, f64, f64)]) -> Result<()> {
        let font = std::fs::read(FONT)
            .with_context(|| format!("{FONT} (apt-get install fonts-dejavu-core)"))?;
        let font: &'static [u8] = Box::leak(font.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, font)
            .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
        let n = rows.len();
        let ratios: Vec<f64> = rows.iter().map(|r| r.2 / r.1.max(1.0)).collect();
        let max = ratios.iter().copied().fold(1.2, f64::max) * 1.1;
        let height = 100 + 20 * u32::try_from(n).unwrap_or(0);
        let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(&root)
            .caption(
                "xdp-target on veth: XDP path IOPS / kernel-socket IOPS (median; MTU, job, connections, protocol)",
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(260)
            .build_cartesian_2d(0.0..max, (0..n).into_segmented())?;
        c.configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| match y {
                // The axis has a segment past the last row; it stays unlabelled.
                SegmentValue::CenterOf(i) if *i < n => rows[n - i - 1].0.clone(),
                _ => String::new(),
            })
            .x_desc("XDP / sockets (1.0 = equal; right of the line, the XDP path is faster)")
            .label_style(("sans-serif", 12))
            .draw()?;
        for (i, r) in ratios.iter().enumerate() {
            let y = n - i - 1;
            let color = if *r >= 1.0 {
                RGBColor(40, 90, 200)
            } else {
                RGBColor(160, 160, 160)
            };
            c.draw_series([Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(y)),
                    (*r, SegmentValue::Exact(y + 1)),
                ],
                color.filled(),
            )])?;
        }
        c.draw_series(LineSeries::new(
            [(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
            BLACK.stroke_width(2),
        ))?;
        root.present()?;
        Ok(())
    }
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
