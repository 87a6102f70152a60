//! The XDP path under a faulty network: the target serves NVMe/TCP and iSCSI through AF_XDP
//! and the user-space TCP/IP stack (`--xdp IFACE --require-afxdp`), the initiator sits
//! behind a router namespace, and `xdp_fault` on the router's interfaces drops, cuts or
//! reorders frames in one direction or both (tests/src/faults.rs). Needs root; skips with a
//! reason without it (and fails in CI, where it must run).
//!
//! What these tests show besides correctness, in the figures they print: losses from
//! target to client cost more throughput than losses the other way (1% loss: roughly 1,500
//! to 2,300 IOPS instead of 6,000; 5%: about 250 instead of 3,000 to 5,000). The target's
//! stack (smoltcp) has no SACK and no tail-loss probe, so a lost last segment of a response
//! waits for the retransmission timeout (200 ms at least), and several losses in one window
//! are repaired one per round trip. Before the two patches in third_party/README.md, every
//! loss cost a full second (50 to 250 IOPS at 1%).
//!
//! The tests run one at a time (a lock): each drives a busy-polling target and a perf
//! client, and on a small machine running them together would measure the scheduler, not
//! the faults.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use target_common::fault::FaultCounters;
use target_wire::nvme::opcode::{AdminOpcode, FeatureId, IoOpcode};
use xdp_target_tests::faults::{FaultInjector, RoutedPath};
use xdp_target_tests::frames::{self, RawSender};
use xdp_target_tests::netns::Netns;
use xdp_target_tests::nvme::{Client, HOST_NQN, pattern};
use xdp_target_tests::require_netns;
use xdp_target_tests::target::{Target, bin};

const NQN: &str = "nqn.2026-11.dev.xdp-target:faults";
const IQN: &str = "iqn.2026-11.dev.xdp-target:faults";
const MIB: u64 = 1 << 20;
const NVME: u16 = 4420;
const DISCOVERY: u16 = 8009;
const ISCSI: u16 = 3260;
/// The fault program only touches storage traffic: ARP and ICMP keep the path usable.
const STORAGE_PORTS: [u16; 3] = [NVME, DISCOVERY, ISCSI];

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one may still run.
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A config with one subsystem, NVMe/TCP on 4420 and 8009, iSCSI on 3260: NVMe namespace
/// 1 (iSCSI LUN 0) on `namespace` (TOML of the namespace's backend lines), and namespace 2
/// (LUN 1) in memory, for a second perf run that must not write the blocks of the first.
fn config(dir: &Path, namespace: &str) -> PathBuf {
    let path = dir.join("target.toml");
    let text = format!(
        "[iscsi]\nlisten = [\"0.0.0.0:{ISCSI}\"]\n\
         [[subsystem]]\nnqn = \"{NQN}\"\niqn = \"{IQN}\"\n\
         [[subsystem.namespace]]\nnsid = 1\n{namespace}\n\
         [[subsystem.namespace]]\nnsid = 2\nbackend = \"memory\"\nsize = {}\n",
        8 * MIB
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xdp-target-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Serves `config` over the XDP path on the target's interface, ready once the client
/// reaches 4420 and 3260 through the router.
fn serve(path: &RoutedPath, config: &Path) -> Target {
    let client = path.client.handle();
    let addr = IpAddr::V4(path.target_addr);
    Target::serve_afxdp(&path.target, &path.target_if, config, move || {
        client
            .run(move || {
                [NVME, ISCSI].iter().all(|&p| {
                    TcpStream::connect_timeout(&SocketAddr::new(addr, p), Duration::from_secs(1))
                        .is_ok()
                })
            })
            .unwrap_or(false)
    })
    .expect("serve over AF_XDP")
}

fn nvme_url(path: &RoutedPath) -> String {
    format!("nvme-tcp://{}:{NVME}", path.target_addr)
}

fn iscsi_url(path: &RoutedPath) -> String {
    format!("iscsi://{}:{ISCSI}/{IQN}/0", path.target_addr)
}

/// iSCSI LUN 1: NVMe namespace 2, which no NVMe perf run writes.
fn iscsi_url_lun1(path: &RoutedPath) -> String {
    format!("iscsi://{}:{ISCSI}/{IQN}/1", path.target_addr)
}

/// `xdp-target perf URL --verify --json` with a mixed workload at queue depth 8.
fn perf_command(ns: &Netns, url: &str, seconds: &str, extra: &[&str]) -> Command {
    let mut cmd = ns.command(bin());
    cmd.args([
        "perf",
        url,
        "--workload",
        "mixed",
        "--read-pct",
        "50",
        "--qd",
        "8",
        "--queues",
        "2",
        "--time",
        seconds,
        "--verify",
        "--json",
    ])
    .args(extra);
    cmd
}

/// Checks a perf run: success (no connection lost, no I/O failed), zero mismatches, and
/// some I/O done; returns its JSON.
fn perf_result(what: &str, out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "perf {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("perf JSON");
    assert_eq!(v["mismatches"], 0, "perf {what}: {v}");
    assert!(v["ios"].as_u64().unwrap_or(0) > 0, "perf {what}: {v}");
    assert!(v["writes"].as_u64().unwrap_or(0) > 0, "perf {what}: {v}");
    v
}

fn perf(ns: &Netns, url: &str, seconds: &str, what: &str) -> serde_json::Value {
    let out = perf_command(ns, url, seconds, &[])
        .output()
        .expect("run perf");
    perf_result(what, &out)
}

/// TCP counters of the kernel in `ns` (`/proc/net/snmp` and `/proc/net/netstat`, "Tcp" and
/// "TcpExt" rows), for the record: the client's retransmissions and out-of-order segments.
fn kernel_tcp_counters(ns: &Netns) -> HashMap<String, u64> {
    ns.run(|| {
        let mut m = HashMap::new();
        for file in ["snmp", "netstat"] {
            let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let [names, values] = pair else { continue };
                let mut n = names.split_whitespace();
                let mut v = values.split_whitespace();
                let (Some(prefix), Some(_)) = (n.next(), v.next()) else {
                    continue;
                };
                if prefix != "Tcp:" && prefix != "TcpExt:" {
                    continue;
                }
                for (name, value) in n.zip(v) {
                    if let Ok(value) = value.parse() {
                        m.insert(name.to_string(), value);
                    }
                }
            }
        }
        m
    })
    .expect("namespace thread")
}

fn delta(after: &HashMap<String, u64>, before: &HashMap<String, u64>, key: &str) -> u64 {
    after
        .get(key)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(key).copied().unwrap_or(0))
}

fn counters(f: &FaultInjector) -> FaultCounters {
    f.counters().expect("fault counters")
}

fn diff(after: FaultCounters, before: FaultCounters) -> FaultCounters {
    FaultCounters {
        seen: after.seen - before.seen,
        matched: after.matched - before.matched,
        dropped: after.dropped - before.dropped,
        cut: after.cut - before.cut,
        reordered: after.reordered - before.reordered,
        reorder_failed: after.reorder_failed - before.reorder_failed,
    }
}

/// The router with a fault injector on each of its interfaces, storage ports only.
fn injectors(path: &RoutedPath) -> (FaultInjector, FaultInjector) {
    let mut c2t = path
        .faults_client_to_target()
        .expect("xdp_fault client side");
    let mut t2c = path
        .faults_target_to_client()
        .expect("xdp_fault target side");
    c2t.ports(&STORAGE_PORTS).expect("ports");
    t2c.ports(&STORAGE_PORTS).expect("ports");
    eprintln!(
        "xdp_fault on {} ({}) and {} ({})",
        c2t.iface(),
        c2t.mode(),
        t2c.iface(),
        t2c.mode()
    );
    (c2t, t2c)
}

/// perf --verify at 1% and 5% loss, client -> target only, then target -> client only.
fn perf_under_loss(url: impl Fn(&RoutedPath) -> String, proto: &str) {
    let _serial = one_at_a_time();
    let path = RoutedPath::create().expect("routed path");
    let dir = temp_dir(proto);
    let cfg = config(&dir, &format!("backend = \"memory\"\nsize = {}", 16 * MIB));
    let t = serve(&path, &cfg);
    let (mut c2t, mut t2c) = injectors(&path);
    let url = url(&path);
    for (direction, share) in [("c2t", 0.01), ("c2t", 0.05), ("t2c", 0.01), ("t2c", 0.05)] {
        let (hit, spared) = if direction == "c2t" {
            (&mut c2t, &mut t2c)
        } else {
            (&mut t2c, &mut c2t)
        };
        hit.drop_share(share).expect("drop share");
        spared.clear().expect("clear");
        let (hit_before, spared_before) = (counters(hit), counters(spared));
        let tcp_before = kernel_tcp_counters(&path.client);
        let started = Instant::now();
        let what = format!("{proto} {direction} {}% loss", share * 100.0);
        let v = perf(&path.client, &url, "2", &what);
        let (h, s) = (
            diff(counters(hit), hit_before),
            diff(counters(spared), spared_before),
        );
        let tcp = kernel_tcp_counters(&path.client);
        eprintln!(
            "{what}: {} I/Os ({} writes) in {:.1} s, {:.0} IOPS; dropped {} of {} frames \
             (other direction {} frames, {} dropped); client retransmitted {} segments, \
             {} out of order received",
            v["ios"],
            v["writes"],
            started.elapsed().as_secs_f64(),
            v["iops"].as_f64().unwrap_or(0.0),
            h.dropped,
            h.matched,
            s.matched,
            s.dropped,
            delta(&tcp, &tcp_before, "RetransSegs"),
            delta(&tcp, &tcp_before, "TCPOFOQueue"),
        );
        assert!(h.dropped > 0, "{what}: no frame was dropped: {h:?}");
        assert_eq!(s.dropped + s.cut, 0, "{what}: the other direction was hit");
        // The drops are random: binomial, within four standard deviations of the share.
        let n = h.matched as f64;
        let spread = 4.0 * (n * share * (1.0 - share)).sqrt() + 2.0;
        assert!(
            (h.dropped as f64 - n * share).abs() <= spread,
            "{what}: dropped {} of {} frames: {h:?}",
            h.dropped,
            h.matched
        );
    }
    drop((c2t, t2c));
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nvme_tcp_perf_verify_survives_loss_in_either_direction() {
    require_netns!();
    perf_under_loss(nvme_url, "nvme");
}

#[test]
fn iscsi_perf_verify_survives_loss_in_either_direction() {
    require_netns!();
    perf_under_loss(iscsi_url, "iscsi");
}

#[test]
fn reordered_frames_in_both_directions_lose_nothing() {
    require_netns!();
    let _serial = one_at_a_time();
    let path = RoutedPath::create().expect("routed path");
    let dir = temp_dir("reorder");
    let cfg = config(&dir, &format!("backend = \"memory\"\nsize = {}", 16 * MIB));
    let t = serve(&path, &cfg);
    let (mut c2t, mut t2c) = injectors(&path);
    c2t.reorder_share(0.05).expect("reorder");
    t2c.reorder_share(0.05).expect("reorder");
    for (url, proto) in [(nvme_url(&path), "nvme"), (iscsi_url(&path), "iscsi")] {
        let before = (counters(&c2t), counters(&t2c));
        let tcp_before = kernel_tcp_counters(&path.client);
        let what = format!("{proto} 5% reordered both ways");
        let v = perf(&path.client, &url, "2", &what);
        let (a, b) = (
            diff(counters(&c2t), before.0),
            diff(counters(&t2c), before.1),
        );
        let tcp = kernel_tcp_counters(&path.client);
        eprintln!(
            "{what}: {} I/Os; reordered {} of {} frames client -> target, {} of {} back \
             ({} + {} not accepted by the cpumap); the client received {} segments out of order",
            v["ios"],
            a.reordered,
            a.matched,
            b.reordered,
            b.matched,
            a.reorder_failed,
            b.reorder_failed,
            delta(&tcp, &tcp_before, "TCPOFOQueue"),
        );
        assert!(a.reordered > 0 && b.reordered > 0, "{a:?} {b:?}");
        assert_eq!(a.reorder_failed + b.reorder_failed, 0, "{a:?} {b:?}");
    }
    drop((c2t, t2c));
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Admin queue (KATO 60 s, so a 10 s outage does not expire it) and one I/O queue.
fn nvme_session(addr: IpAddr) -> (Client, Client) {
    let sock = SocketAddr::new(addr, NVME);
    let mut a = Client::connect(sock, false).expect("connect");
    let c = a
        .fabrics_connect_kato(0, 0xffff, NQN, HOST_NQN, 60_000)
        .expect("admin connect");
    assert!(c.cqe.status.is_success(), "{:?}", c.cqe);
    a.enable().expect("enable");
    let q = a
        .admin(
            AdminOpcode::SetFeatures,
            0,
            u32::from(u8::from(FeatureId::NumberOfQueues)),
            0,
            0,
        )
        .expect("set features");
    assert!(q.cqe.status.is_success());
    let mut io = Client::connect(sock, false).expect("connect");
    let r = io
        .fabrics_connect(1, c.cqe.dw0 as u16, NQN, HOST_NQN)
        .expect("io connect");
    assert!(r.cqe.status.is_success(), "{:?}", r.cqe);
    (a, io)
}

/// Blocks of the host client's region (perf uses the first 8 MiB of the namespace).
const HOST_LBA: u64 = 8 * MIB / 512;
const HOST_BLOCKS: u32 = 64;

#[test]
fn a_link_cut_for_ten_seconds_loses_no_acknowledged_write() {
    require_netns!();
    let _serial = one_at_a_time();
    let path = RoutedPath::create().expect("routed path");
    let dir = temp_dir("cut");
    let image = dir.join("disk.img");
    let cfg = config(
        &dir,
        &format!(
            "backend = \"file\"\npath = \"{}\"\nsize = {}",
            image.display(),
            16 * MIB
        ),
    );
    let t = serve(&path, &cfg);
    let (mut c2t, mut t2c) = injectors(&path);
    let addr = IpAddr::V4(path.target_addr);

    // Writes acknowledged before the cut, by the host engine on its own region.
    let (admin, mut io) = path
        .client
        .run(move || {
            let (a, mut io) = nvme_session(addr);
            let before: Vec<u8> = (HOST_LBA..HOST_LBA + u64::from(HOST_BLOCKS))
                .flat_map(|l| pattern(l, 1, 512))
                .collect();
            let r = io
                .io(IoOpcode::Write, HOST_LBA, HOST_BLOCKS, 512, before)
                .expect("write before the cut");
            assert!(r.cqe.status.is_success(), "{:?}", r.cqe);
            // Commands in flight across the cut must wait it out.
            io.set_timeout(Duration::from_secs(40)).expect("timeout");
            (a, io)
        })
        .expect("namespace thread");

    // perf --verify across the cut: it checks every read against the last acknowledged
    // write of those blocks, including reads after the cut of blocks written before it.
    let running = perf_command(
        &path.client,
        &nvme_url(&path),
        "16",
        &["--size", &(8 * MIB).to_string()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start perf");
    let running = KillOnDrop(Some(running));
    std::thread::sleep(Duration::from_secs(3));

    let tcp_before = kernel_tcp_counters(&path.client);
    let (c2t_before, t2c_before) = (counters(&c2t), counters(&t2c));
    c2t.cut(true).expect("cut");
    t2c.cut(true).expect("cut");
    let cut_at = Instant::now();
    // A write issued during the cut: acknowledged only after it, and then it must hold too.
    let during = path.client.spawn(move || {
        let data: Vec<u8> = (HOST_LBA..HOST_LBA + 8)
            .flat_map(|l| pattern(l, 2, 512))
            .collect();
        let started = Instant::now();
        let r = io
            .io(IoOpcode::Write, HOST_LBA, 8, 512, data)
            .expect("write across the cut");
        assert!(r.cqe.status.is_success(), "{:?}", r.cqe);
        (io, started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(10));
    c2t.cut(false).expect("restore");
    t2c.cut(false).expect("restore");
    let (c2t_cut, t2c_cut) = (
        diff(counters(&c2t), c2t_before),
        diff(counters(&t2c), t2c_before),
    );
    eprintln!(
        "cut for {:.1} s: dropped {} frames client -> target, {} target -> client",
        cut_at.elapsed().as_secs_f64(),
        c2t_cut.cut,
        t2c_cut.cut
    );
    assert!(
        c2t_cut.cut > 0 && t2c_cut.cut > 0,
        "{c2t_cut:?} {t2c_cut:?}"
    );

    let (mut io, took) = during
        .join()
        .expect("namespace thread")
        .expect("write across the cut");
    eprintln!(
        "the write issued during the cut completed after {:.1} s",
        took.as_secs_f64()
    );
    let out = running.wait();
    let v = perf_result("nvme across a 10 s cut", &out);
    let tcp = kernel_tcp_counters(&path.client);
    eprintln!(
        "perf across the cut: {} I/Os ({} reads, each checked against the last write), \
         latency p99.9 {} us; \
         the client retransmitted {} segments ({} timeouts)",
        v["ios"],
        v["reads"],
        v["lat_us"]["p999"],
        delta(&tcp, &tcp_before, "RetransSegs"),
        delta(&tcp, &tcp_before, "TCPTimeouts"),
    );

    // The connections survived: read back on the same queue, then on a new connection.
    let expect: Vec<u8> = (HOST_LBA..HOST_LBA + u64::from(HOST_BLOCKS))
        .flat_map(|l| pattern(l, if l < HOST_LBA + 8 { 2 } else { 1 }, 512))
        .collect();
    let expect2 = expect.clone();
    path.client
        .run(move || {
            let r = io
                .io(IoOpcode::Read, HOST_LBA, HOST_BLOCKS, 512, Vec::new())
                .expect("read after the cut, same connection");
            assert!(
                r.data == expect2,
                "the data written around the cut reads back"
            );
            drop((admin, io));
            let (_a, mut fresh) = nvme_session(addr);
            let r = fresh
                .io(IoOpcode::Read, HOST_LBA, HOST_BLOCKS, 512, Vec::new())
                .expect("read on a new connection");
            assert!(r.data == expect2, "a new connection reads the same");
        })
        .expect("namespace thread");
    drop((c2t, t2c));
    assert!(t.stop().expect("stop").success());
    // And it is on disk.
    let disk = std::fs::read(&image).expect("backing file");
    let start = (HOST_LBA * 512) as usize;
    assert!(disk[start..start + expect.len()] == expect[..], "on disk");
    let _ = std::fs::remove_dir_all(dir);
}

/// A child process killed if the test fails before waiting for it.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn wait(mut self) -> Output {
        self.0
            .take()
            .expect("child")
            .wait_with_output()
            .expect("wait for perf")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Connects from the client namespace, retrying every 100 ms for up to `within`; how long
/// it took and how many attempts failed.
fn connect_within(ns: &Netns, addr: SocketAddr, within: Duration) -> (Duration, u32) {
    ns.run(move || {
        let started = Instant::now();
        let mut failed = 0;
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(_) => return (started.elapsed(), failed),
                Err(e) if started.elapsed() < within => {
                    failed += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("no connection to {addr} within {within:?}: {e}"),
            }
        }
    })
    .expect("namespace thread")
}

#[test]
fn a_syn_flood_leaves_established_sessions_serving() {
    require_netns!();
    let _serial = one_at_a_time();
    let path = RoutedPath::create().expect("routed path");
    let dir = temp_dir("synflood");
    let cfg = config(&dir, &format!("backend = \"memory\"\nsize = {}", 16 * MIB));
    let t = serve(&path, &cfg);
    let nvme = perf_command(&path.client, &nvme_url(&path), "4", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perf");
    let nvme = KillOnDrop(Some(nvme));
    // On LUN 1: two perf runs on the same blocks would overwrite each other's patterns.
    let iscsi = perf_command(&path.client, &iscsi_url_lun1(&path), "4", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perf");
    let iscsi = KillOnDrop(Some(iscsi));
    // Let both sessions log in before the flood starts.
    std::thread::sleep(Duration::from_millis(700));

    let sender = RawSender::open(&path.client, &path.client_if).expect("AF_PACKET socket");
    let src_mac = frames::mac_of(&path.client, &path.client_if).expect("mac");
    let router_mac = frames::mac_of(&path.router, &path.router_client_if).expect("mac");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = Instant::now();
    let mut sent = 0u32;
    for burst in 0..20 {
        for _ in 0..200 {
            let r = next();
            // Sources across the client's subnet, none of them a real host.
            let src = Ipv4Addr::new(10, 98, 0, 10 + (r % 240) as u8);
            let sport = 1024 + ((r >> 8) % 60000) as u16;
            let dport = if r >> 40 & 1 == 0 { NVME } else { ISCSI };
            let ip = frames::ipv4_tcp_syn(src, path.target_addr, sport, dport, (r >> 16) as u32);
            let frame = frames::ethernet(router_mac, src_mac, frames::ETH_P_IPV4, &ip);
            sender.send(&frame).expect("send SYN");
            sent += 1;
        }
        if burst % 4 == 3 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let flood_end = Instant::now();
    eprintln!(
        "sent {sent} SYNs in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let v = perf_result("nvme during a SYN flood", &nvme.wait());
    let w = perf_result("iscsi during a SYN flood", &iscsi.wait());
    eprintln!(
        "during the flood: NVMe/TCP {} I/Os, iSCSI {} I/Os, zero mismatches",
        v["ios"], w["ios"]
    );
    // New connections: the flood's half-open connections fill the stack's connection table
    // (StackConfig::max_connections), and each new SYN evicts the oldest of them, so a real
    // initiator gets in at once, long before the flood's handshakes time out (5 s).
    for port in [NVME, ISCSI] {
        let (took, refused) = connect_within(
            &path.client,
            SocketAddr::new(IpAddr::V4(path.target_addr), port),
            Duration::from_secs(1),
        );
        eprintln!(
            "a new connection to {port} after the flood: {refused} attempts refused, \
             connected after {:.2} s ({:.2} s after the last SYN)",
            took.as_secs_f64(),
            flood_end.elapsed().as_secs_f64(),
        );
    }
    let v = perf(
        &path.client,
        &nvme_url(&path),
        "1",
        "nvme after a SYN flood",
    );
    eprintln!("after the flood: {} I/Os", v["ios"]);
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_connection_storm_leaves_established_sessions_serving() {
    require_netns!();
    let _serial = one_at_a_time();
    let path = RoutedPath::create().expect("routed path");
    let dir = temp_dir("storm");
    let cfg = config(&dir, &format!("backend = \"memory\"\nsize = {}", 16 * MIB));
    let t = serve(&path, &cfg);
    let running = perf_command(&path.client, &nvme_url(&path), "4", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perf");
    let running = KillOnDrop(Some(running));
    std::thread::sleep(Duration::from_millis(500));
    let addr = IpAddr::V4(path.target_addr);
    let storm = path
        .client
        .run(move || {
            let started = Instant::now();
            let mut n = 0;
            for i in 0..400u32 {
                let port = if i % 4 == 3 { ISCSI } else { NVME };
                let sock = SocketAddr::new(addr, port);
                match i % 4 {
                    // ICReq, ICResp, then gone.
                    0 => drop(Client::connect(sock, false).expect("ICReq")),
                    // Half an ICReq, then gone.
                    1 => {
                        let mut s = TcpStream::connect(sock).expect("connect");
                        let _ = s.write_all(&[0u8, 0, 128, 0, 128]);
                    }
                    // Connect and close at once (4420 and 3260).
                    _ => drop(TcpStream::connect(sock).expect("connect")),
                }
                n += 1;
            }
            (n, started.elapsed())
        })
        .expect("namespace thread");
    eprintln!(
        "{} connects and disconnects in {:.2} s",
        storm.0,
        storm.1.as_secs_f64()
    );
    let v = perf_result("nvme during a connection storm", &running.wait());
    eprintln!("during the storm: {} I/Os, zero mismatches", v["ios"]);
    // Still serving new sessions.
    perf(
        &path.client,
        &iscsi_url(&path),
        "1",
        "iscsi after the storm",
    );
    let text = t.log_text();
    let closed = text.matches("connection closed (AF_XDP)").count();
    assert!(closed >= 400, "{closed} connections closed in the log");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_dir_all(dir);
}
