//! End-to-end NVMe/TCP over kernel sockets: `xdp-target serve` in one namespace, a client
//! (the host engine of target-proto over a TCP socket) in the other, across a veth pair.
//! Needs root; skips with a reason without it (and fails in CI, where it must run).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use target_proto::nvme_tcp::host::commands;
use target_wire::nvme::identify::{IdentifyController, IdentifyNamespace};
use target_wire::nvme::log::{DiscoveryLogHeader, SubType, TrType, discovery_entry};
use target_wire::nvme::opcode::{AdminOpcode, Cns, FeatureId, IoOpcode, LogPageId};
use target_wire::nvme::status::{CommandSpecificStatus, Status};
use target_wire::nvme_tcp::{Fes, TermReqRepr};
use xdp_target_tests::netns::VethPair;
use xdp_target_tests::nvme::{Client, HOST_NQN, pattern};
use xdp_target_tests::require_netns;
use xdp_target_tests::target::{Target, xdp_path};

const NQN: &str = "nqn.2026-11.dev.xdp-target:e2e";
const MIB: u64 = 1 << 20;

/// Writes a config file for one subsystem with a `size`-byte memory namespace.
fn config(name: &str, size: u64, block: u32, extra_subsystem: &str) -> PathBuf {
    config_top(name, "reactors = 2", size, block, extra_subsystem)
}

/// [`config`] with `top` (top-level keys and tables) in place of `reactors = 2`.
fn config_top(name: &str, top: &str, size: u64, block: u32, extra_subsystem: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("xdp-target-{}-{name}.toml", std::process::id()));
    let text = format!(
        "{top}\n[[subsystem]]\nnqn = \"{NQN}\"\n{extra_subsystem}\n\
         [[subsystem.namespace]]\nnsid = 1\nbackend = \"memory\"\nsize = {size}\nblock_size = {block}\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `serve --config` in the target namespace, ready once 4420 accepts connections.
fn serve(pair: &VethPair, config: &Path) -> Target {
    Target::serve_config(pair, config, 4420)
}

/// The discovery log page (4 KiB) of the discovery controller on `addr`:8009.
fn discovery_log(addr: IpAddr) -> Vec<u8> {
    discovery_log_of(addr, 4096)
}

/// The first `len` bytes (a multiple of 4) of the discovery log page on `addr`:8009.
fn discovery_log_of(addr: IpAddr, len: u32) -> Vec<u8> {
    let mut d = Client::connect(SocketAddr::new(addr, 8009), false).expect("connect 8009");
    let r = d
        .fabrics_connect(0, 0xffff, "nqn.2014-08.org.nvmexpress.discovery", HOST_NQN)
        .expect("connect");
    assert!(r.cqe.status.is_success());
    d.enable().expect("enable");
    let numd = len / 4 - 1;
    d.admin(
        AdminOpcode::GetLogPage,
        0,
        u32::from(u8::from(LogPageId::Discovery)) | (numd << 16),
        0,
        len as usize,
    )
    .expect("discovery log")
    .data
}

/// Admin connect, enable, two I/O queues granted; returns the admin client and CNTLID.
fn admin(addr: IpAddr, digests: bool) -> (Client, u16) {
    let mut a = Client::connect(SocketAddr::new(addr, 4420), digests).expect("connect");
    let c = a
        .fabrics_connect(0, 0xffff, NQN, HOST_NQN)
        .expect("admin connect");
    assert!(c.cqe.status.is_success(), "{:?}", c.cqe);
    a.enable().expect("enable");
    let q = a.admin(
        AdminOpcode::SetFeatures,
        0,
        u32::from(u8::from(FeatureId::NumberOfQueues)),
        1 | (1 << 16),
        0,
    );
    assert!(q.expect("set features").cqe.status.is_success());
    (a, c.cqe.dw0 as u16)
}

fn io_queue(addr: IpAddr, cntlid: u16, qid: u16, digests: bool) -> Client {
    let mut c = Client::connect(SocketAddr::new(addr, 4420), digests).expect("connect");
    let r = c
        .fabrics_connect(qid, cntlid, NQN, HOST_NQN)
        .expect("io connect");
    assert!(r.cqe.status.is_success(), "{:?}", r.cqe);
    c
}

/// Writes every block of the namespace through two I/O queues (large writes on R2T, 4 KiB
/// ones in the capsule), reads it all back and checks each block's pattern.
fn verify_whole_namespace(addr: IpAddr, digests: bool, size: u64, block: usize, pass: u8) {
    let (mut a, cntlid) = admin(addr, digests);
    let ns = a.identify(Cns::Namespace, 1).expect("id-ns");
    let id = IdentifyNamespace::new_checked(&ns.data[..]).expect("4096 bytes");
    assert_eq!(id.nsze(), size / block as u64);
    let mut qs = [
        io_queue(addr, cntlid, 1, digests),
        io_queue(addr, cntlid, 2, digests),
    ];
    let blocks = size / block as u64;
    let per_cmd = (128 * 1024 / block) as u64;
    let mut lba = 0;
    let mut n = 0usize;
    while lba < blocks {
        // Every eighth command is a single 4 KiB write that travels in the capsule.
        let count = if n % 8 == 7 {
            (4096 / block) as u64
        } else {
            per_cmd
        }
        .min(blocks - lba);
        let data: Vec<u8> = (lba..lba + count)
            .flat_map(|l| pattern(l, pass, block))
            .collect();
        let r = qs[n % 2]
            .io(IoOpcode::Write, lba, count as u32, block, data)
            .expect("write");
        assert!(r.cqe.status.is_success(), "write at {lba}: {:?}", r.cqe);
        lba += count;
        n += 1;
    }
    lba = 0;
    n = 0;
    while lba < blocks {
        let count = per_cmd.min(blocks - lba);
        let r = qs[n % 2]
            .io(IoOpcode::Read, lba, count as u32, block, Vec::new())
            .expect("read");
        assert!(r.cqe.status.is_success(), "read at {lba}: {:?}", r.cqe);
        for (i, got) in r.data.chunks(block).enumerate() {
            let l = lba + i as u64;
            assert!(
                got == pattern(l, pass, block).as_slice(),
                "block {l} holds the wrong data"
            );
        }
        lba += count;
        n += 1;
    }
}

#[test]
fn whole_namespace_write_and_verify_with_and_without_digests() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("verify", 32 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let addr = IpAddr::V4(pair.target_addr);
    pair.client
        .run(move || verify_whole_namespace(addr, false, 32 * MIB, 512, 1))
        .expect("namespace thread");
    pair.client
        .run(move || verify_whole_namespace(addr, true, 32 * MIB, 512, 2))
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn four_kib_blocks_over_ipv6() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let path = std::env::temp_dir().join(format!("xdp-target-{}-v6.toml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "[nvme]\nlisten = [\"[::]:4420\", \"0.0.0.0:4420\"]\n[[subsystem]]\nnqn = \"{NQN}\"\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"memory\"\nsize = {}\nblock_size = 4096\n",
            8 * MIB
        ),
    )
    .expect("config");
    let t = serve(&pair, &path);
    let addr = IpAddr::V6(pair.target_addr6);
    pair.client
        .run(move || verify_whole_namespace(addr, false, 8 * MIB, 4096, 3))
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(path);
}

#[test]
fn identify_and_discovery_describe_what_is_configured() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("discovery", 4 * MIB, 512, "serial = \"E2E-SERIAL\"");
    let t = serve(&pair, &cfg);
    let addr = IpAddr::V4(pair.target_addr);
    let target = pair.target_addr.to_string();
    pair.client
        .run(move || {
            let (mut a, cntlid) = admin(addr, false);
            let id = a.identify(Cns::Controller, 0).expect("id-ctrl");
            let c = IdentifyController::new_checked(&id.data[..]).expect("4096 bytes");
            assert_eq!(
                (c.cntlid(), c.subnqn().expect("nqn"), c.sn().expect("sn")),
                (cntlid, NQN, "E2E-SERIAL")
            );

            // Discovery on 8009 (and the discovery NQN), with a wildcard listener: the log
            // must name the address the host reached, not 0.0.0.0.
            let log = discovery_log(addr);
            let h = DiscoveryLogHeader::new_checked(&log[..]).expect("header");
            assert!(h.numrec() >= 1);
            let e = discovery_entry(&log, 0).expect("entry");
            assert_eq!(e.subtype(), SubType::Nvm);
            assert_eq!(
                (e.subnqn().expect("nqn"), e.trsvcid().expect("port")),
                (NQN, "4420")
            );
            assert_eq!(e.traddr().expect("traddr"), target);
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// NVMe/RDMA configured on a machine without an RDMA device (this one): one warning, TCP
/// serves on and discovery lists no RDMA port; with `rdma.require` the target refuses to
/// start and says why.
#[test]
fn without_an_rdma_device_tcp_serves_on_and_require_refuses_to_start() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let rdma = format!(
        "reactors = 1\n[rdma]\nlisten = [\"{}:4420\", \"{}:8009\"]",
        pair.target_addr, pair.target_addr
    );
    let cfg = config_top("rdma-absent", &rdma, 4 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let addr = IpAddr::V4(pair.target_addr);
    pair.client
        .run(move || {
            let _ = admin(addr, false);
            let log = discovery_log(addr);
            let n = DiscoveryLogHeader::new_checked(&log[..])
                .expect("header")
                .numrec();
            assert!(n >= 2, "{n} entries");
            for i in 0..n as usize {
                let e = discovery_entry(&log, i).expect("entry");
                assert_eq!(e.trtype(), TrType::Tcp, "entry {i} sends hosts to RDMA");
            }
        })
        .expect("namespace thread");
    let log = t.log_text();
    assert!(
        log.contains("NVMe/RDMA not served") && log.contains("no RDMA device"),
        "{log}"
    );
    assert!(t.stop().expect("stop").success());

    let required = config_top(
        "rdma-required",
        &format!("{rdma}\nrequire = true"),
        4 * MIB,
        512,
        "",
    );
    let path = required.to_str().expect("utf-8 path").to_string();
    let err = match Target::start(&pair.target, &["serve", "--config", &path], || false) {
        Ok(_) => panic!("the target started without the RDMA it requires"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("exited early")
            && err.contains("rdma.require")
            && err.contains("no RDMA device"),
        "{err}"
    );
    let _ = std::fs::remove_file(cfg);
    let _ = std::fs::remove_file(required);
}

#[test]
fn hosts_off_the_allow_list_and_unknown_subsystems_are_refused() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config(
        "acl",
        4 * MIB,
        512,
        "allow_hosts = [\"nqn.2014-08.org.nvmexpress:uuid:allowed\"]",
    );
    let t = serve(&pair, &cfg);
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), 4420);
    pair.client
        .run(move || {
            let mut c = Client::connect(addr, false).expect("connect");
            let r = c.fabrics_connect(0, 0xffff, NQN, HOST_NQN).expect("answer");
            assert_eq!(
                r.cqe.status,
                Status::command_specific(CommandSpecificStatus::ConnectInvalidHost)
            );
            let mut c = Client::connect(addr, false).expect("connect");
            let r = c.fabrics_connect(
                0,
                0xffff,
                "nqn.2026-11.dev.nope:x",
                "nqn.2014-08.org.nvmexpress:uuid:allowed",
            );
            assert_eq!(
                r.expect("answer").cqe.status,
                Status::command_specific(CommandSpecificStatus::ConnectInvalidParameters)
            );
            let mut c = Client::connect(addr, false).expect("connect");
            let r = c
                .fabrics_connect(0, 0xffff, NQN, "nqn.2014-08.org.nvmexpress:uuid:allowed")
                .expect("answer");
            assert!(r.cqe.status.is_success());
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// `xdp-target ctl` on a running target: a host off the list is let in by `add-host` and
/// shut out again by `remove-host`, the last entry is
/// never removed, and `save` writes a configuration the target loads back.
#[test]
fn ctl_changes_who_may_connect_and_saves_the_configuration() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let socket = std::env::temp_dir().join(format!("xdpt-ctl-{}.sock", std::process::id()));
    let allowed = "nqn.2014-08.org.nvmexpress:uuid:allowed";
    let cfg = config_top(
        "ctl",
        &format!("reactors = 1\n[control]\nsocket = \"{}\"", socket.display()),
        4 * MIB,
        512,
        &format!("allow_hosts = [\"{allowed}\"]"),
    );
    let t = serve(&pair, &cfg);
    let ctl = |args: &[&str]| xdp_target_tests::target::ctl(&socket, args);
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), 4420);
    let refused = Status::command_specific(CommandSpecificStatus::ConnectInvalidHost);
    let client = pair.client.handle();
    let status = |host: &'static str| {
        client
            .run(move || {
                let mut c = Client::connect(addr, false).expect("connect");
                c.fabrics_connect(0, 0xffff, NQN, host)
                    .expect("answer")
                    .cqe
                    .status
            })
            .expect("namespace thread")
    };
    assert_eq!(status(HOST_NQN), refused);
    let (ok, out) = ctl(&["add-host", NQN, HOST_NQN]);
    assert!(ok && out.contains(HOST_NQN), "{out}");
    assert!(status(HOST_NQN).is_success(), "added: let in");
    let (ok, out) = ctl(&["remove-host", NQN, HOST_NQN]);
    assert!(ok, "{out}");
    assert_eq!(status(HOST_NQN), refused, "removed: shut out again");
    let (ok, out) = ctl(&["remove-host", NQN, allowed]);
    assert!(
        !ok && out.contains("any host"),
        "the last entry stays: {out}"
    );
    let (ok, out) = ctl(&["list"]);
    assert!(
        ok && out.contains(allowed) && !out.contains(HOST_NQN),
        "{out}"
    );
    let saved = std::env::temp_dir().join(format!("xdpt-ctl-saved-{}.toml", std::process::id()));
    let (ok, out) = ctl(&["save", saved.to_str().expect("utf-8")]);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&saved).expect("saved file");
    assert!(text.contains(allowed) && text.contains(NQN), "{text}");
    assert!(t.stop().expect("stop").success());
    // The saved file is a configuration the target starts from.
    let t = serve(&pair, &saved);
    assert_eq!(status(HOST_NQN), refused);
    assert!(status(allowed).is_success());
    assert!(t.stop().expect("stop").success());
    for f in [cfg, saved, socket] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn sources_off_the_allow_list_cannot_connect() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    // The client's IPv4 address is on the list, its IPv6 address (fd99::2) is not. One
    // reactor, so the one warning (the first refusal of each reactor) is exact.
    let path = std::env::temp_dir().join(format!("xdp-target-{}-sources.toml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "reactors = 1\n[nvme]\nlisten = [\"0.0.0.0:4420\", \"[::]:4420\"]\n\
             [xdp]\nallow_sources = [\"10.99.0.2/32\", \"fd98::/16\"]\n\
             [[subsystem]]\nnqn = \"{NQN}\"\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"memory\"\nsize = {}\nblock_size = 512\n",
            4 * MIB
        ),
    )
    .expect("config");
    let t = serve(&pair, &path);
    let denied = SocketAddr::new(IpAddr::V6(pair.target_addr6), 4420);
    let allowed = IpAddr::V4(pair.target_addr);
    let xdp = xdp_path();
    pair.client
        .run(move || {
            assert!(
                Client::connect(denied, false).is_err(),
                "a source off the list must not get an ICResp"
            );
            if !xdp {
                // Kernel sockets: the kernel completes the handshake, the target closes
                // the connection before reading anything. (On the XDP path the program
                // drops the SYN.)
                let mut s = TcpStream::connect(denied).expect("the kernel accepts");
                s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .expect("timeout");
                match std::io::Read::read(&mut s, &mut [0u8; 8]) {
                    Ok(0) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    other => panic!("expected the target to close the connection: {other:?}"),
                }
            }
            // A source on the list is served.
            let (mut a, _) = admin(allowed, false);
            let id = a.identify(Cns::Controller, 0).expect("id-ctrl");
            assert!(id.cqe.status.is_success());
        })
        .expect("namespace thread");
    if !xdp {
        let log = t.log_text();
        assert_eq!(
            log.matches("not in xdp.allow_sources").count(),
            1,
            "one warning for the refusals, the rest counted:\n{log}"
        );
    }
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(path);
}

#[test]
fn malformed_input_ends_only_that_connection() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("malformed", 4 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let addr = IpAddr::V4(pair.target_addr);
    pair.client
        .run(move || {
            let (_a, cntlid) = admin(addr, false);
            let mut good = io_queue(addr, cntlid, 1, false);
            let data = pattern(5, 9, 512);
            assert!(
                good.io(IoOpcode::Write, 5, 1, 512, data.clone())
                    .expect("write")
                    .cqe
                    .status
                    .is_success()
            );

            // A PDU of an unknown type after a valid ICReq: a C2HTermReq naming the type.
            let mut bad = Client::connect(SocketAddr::new(addr, 4420), false).expect("connect");
            let got = bad.raw(&[
                0x08, 0, 24, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            let t = TermReqRepr::parse(&got.expect("answer")).expect("a C2HTermReq");
            assert_eq!((t.fes, t.fei), (Fes::InvalidHeaderField, 0));
            // A capsule claiming 1 GiB of in-capsule data.
            let mut bad = Client::connect(SocketAddr::new(addr, 4420), false).expect("connect");
            let got = bad.raw(&[0x04, 0, 72, 72, 0, 0, 0, 0x40]).expect("answer");
            let t = TermReqRepr::parse(&got).expect("a C2HTermReq");
            assert_eq!(t.fes, Fes::DataTransferLimitExceeded);
            // Garbage before any ICReq.
            let mut raw = TcpStream::connect(SocketAddr::new(addr, 4420)).expect("connect");
            std::io::Write::write_all(&mut raw, &[0xffu8; 300]).expect("send");
            drop(raw);

            // The first connection is unharmed.
            let r = good
                .io(IoOpcode::Read, 5, 1, 512, Vec::new())
                .expect("read");
            assert_eq!(r.data, data);
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn perf_verify_finds_no_mismatch_with_several_queues_and_digests() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("perf", 16 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let url = format!("nvme-tcp://{}:4420", pair.target_addr);
    for (workload, bs, digests) in [
        ("mixed", "4096", false),
        ("randwrite", "65536", true),
        ("mixed", "512", true),
    ] {
        let mut args = vec![
            "perf",
            &url,
            "--workload",
            workload,
            "--bs",
            bs,
            "--qd",
            "8",
            "--queues",
            "3",
        ];
        args.extend(["--time", "1", "--verify", "--json"]);
        if digests {
            args.push("--digests");
        }
        let out = pair
            .client
            .command(xdp_target_tests::target::bin())
            .args(&args)
            .output()
            .expect("run perf");
        assert!(
            out.status.success(),
            "perf {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["mismatches"], 0, "{v}");
        assert!(v["ios"].as_u64().unwrap_or(0) > 100, "{v}");
        assert_eq!(v["nqn"], NQN, "found through discovery");
    }
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn perf_once_goes_through_each_queues_region_once_and_returns() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("perf-once", 16 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let url = format!("nvme-tcp://{}:4420", pair.target_addr);
    let perf = |workload: &str| {
        pair.client
            .command(xdp_target_tests::target::bin())
            .args([
                "perf",
                &url,
                "--workload",
                workload,
                "--bs",
                "65536",
                "--qd",
                "8",
            ])
            .args(["--queues", "3", "--once", "--time", "600", "--json"])
            .output()
            .expect("run perf")
    };
    let out = perf("write");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // 32768 blocks in three regions of whole 128-block I/Os: 85 I/Os each.
    assert_eq!(v["writes"], 3 * 85, "{v}");
    // Done after its pass, not at --time (600 s).
    assert!(v["seconds"].as_f64().unwrap_or(600.0) < 300.0, "{v}");
    let out = perf("randread");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--once is for the sequential workloads"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn a_file_namespace_keeps_its_data_across_restarts() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let dir = std::env::temp_dir().join(format!("xdp-target-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let image = dir.join("disk.img");
    let _ = std::fs::remove_file(&image);
    let cfg = dir.join("file.toml");
    std::fs::write(
        &cfg,
        format!(
            "reactors = 2\n[[subsystem]]\nnqn = \"{NQN}\"\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"file\"\n\
             path = \"{}\"\nsize = {}\n",
            image.display(),
            8 * MIB
        ),
    )
    .expect("config");
    let addr = IpAddr::V4(pair.target_addr);
    let t = serve(&pair, &cfg);
    pair.client
        .run(move || {
            let (_a, cntlid) = admin(addr, false);
            let mut q = io_queue(addr, cntlid, 1, false);
            // In-capsule and R2T writes, a FUA write, a Flush, Write Zeroes, Compare.
            let small = pattern(10, 1, 512);
            assert!(
                q.io(IoOpcode::Write, 10, 1, 512, small.clone())
                    .expect("write")
                    .cqe
                    .status
                    .is_success()
            );
            let big: Vec<u8> = (100..356).flat_map(|l| pattern(l, 1, 512)).collect();
            assert!(
                q.io(IoOpcode::Write, 100, 256, 512, big.clone())
                    .expect("write")
                    .cqe
                    .status
                    .is_success()
            );
            assert!(
                q.io(IoOpcode::Flush, 0, 0, 512, Vec::new())
                    .expect("flush")
                    .cqe
                    .status
                    .is_success()
            );
            assert!(
                q.io(IoOpcode::WriteZeroes, 200, 8, 512, Vec::new())
                    .expect("zeroes")
                    .cqe
                    .status
                    .is_success()
            );
            let r = q
                .io(IoOpcode::Read, 100, 256, 512, Vec::new())
                .expect("read");
            let mut want = big.clone();
            want[100 * 512..108 * 512].fill(0);
            assert!(r.data == want, "read back after Write Zeroes");
            let c = q
                .io(IoOpcode::Compare, 10, 1, 512, small.clone())
                .expect("compare");
            assert!(c.cqe.status.is_success(), "{:?}", c.cqe);
            let c = q
                .io(IoOpcode::Compare, 10, 1, 512, vec![0u8; 512])
                .expect("compare");
            assert!(!c.cqe.status.is_success(), "a miscompare must fail");
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());

    // On disk, exactly what was written.
    let disk = std::fs::read(&image).expect("backing file");
    assert_eq!(disk.len() as u64, 8 * MIB);
    assert!(disk[10 * 512..11 * 512] == pattern(10, 1, 512)[..]);
    assert!(disk[100 * 512..101 * 512] == pattern(100, 1, 512)[..]);
    assert!(disk[200 * 512..208 * 512].iter().all(|&b| b == 0));

    // A restarted target serves the same data, and perf --verify passes on the file.
    let t = serve(&pair, &cfg);
    pair.client
        .run(move || {
            let (_a, cntlid) = admin(addr, true);
            let mut q = io_queue(addr, cntlid, 1, true);
            let r = q.io(IoOpcode::Read, 10, 1, 512, Vec::new()).expect("read");
            assert!(r.data == pattern(10, 1, 512), "data survived the restart");
        })
        .expect("namespace thread");
    let url = format!("nvme-tcp://{}:4420", pair.target_addr);
    let args = [
        "perf",
        &url,
        "--workload",
        "mixed",
        "--qd",
        "16",
        "--queues",
        "2",
        "--time",
        "1",
        "--verify",
        "--json",
    ];
    let out = pair
        .client
        .command(xdp_target_tests::target::bin())
        .args(args)
        .output()
        .expect("perf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["mismatches"], 0, "{v}");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn connection_storms_leave_the_target_serving() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("storm", 4 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let addr = IpAddr::V4(pair.target_addr);
    pair.client
        .run(move || {
            let sock = SocketAddr::new(addr, 4420);
            for i in 0..300u32 {
                match i % 3 {
                    // Connect and vanish at once.
                    0 => drop(TcpStream::connect(sock).expect("connect")),
                    // Half a PDU header, then vanish.
                    1 => {
                        let mut s = TcpStream::connect(sock).expect("connect");
                        let _ = std::io::Write::write_all(&mut s, &[0u8, 0, 128, 0, 128]);
                    }
                    // A whole admin Connect, then vanish without Disconnect.
                    _ => {
                        let mut c = Client::connect(sock, false).expect("connect");
                        let r = c
                            .fabrics_connect(0, 0xffff, NQN, HOST_NQN)
                            .expect("admin connect");
                        assert!(r.cqe.status.is_success());
                    }
                }
            }
            // Still serving, and data still right.
            let (_a, cntlid) = admin(addr, false);
            let mut q = io_queue(addr, cntlid, 1, false);
            let data = pattern(3, 7, 512);
            assert!(
                q.io(IoOpcode::Write, 3, 1, 512, data.clone())
                    .expect("write")
                    .cqe
                    .status
                    .is_success()
            );
            assert_eq!(
                q.io(IoOpcode::Read, 3, 1, 512, Vec::new())
                    .expect("read")
                    .data,
                data
            );
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn a_silent_host_loses_its_controller_at_keep_alive_expiry() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("kato", 4 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let addr = IpAddr::V4(pair.target_addr);
    pair.client
        .run(move || {
            let sock = SocketAddr::new(addr, 4420);
            // KATO 1 s, then silence: no Keep Alive, no admin command.
            let mut a = Client::connect(sock, false).expect("connect");
            let c = a
                .fabrics_connect_kato(0, 0xffff, NQN, HOST_NQN, 1000)
                .expect("admin connect");
            assert!(c.cqe.status.is_success());
            let cntlid = c.cqe.dw0 as u16;
            a.enable().expect("enable");
            let q = a.admin(
                AdminOpcode::SetFeatures,
                0,
                u32::from(u8::from(FeatureId::NumberOfQueues)),
                0,
                0,
            );
            assert!(q.expect("set features").cqe.status.is_success());
            let mut io = io_queue(addr, cntlid, 1, false);
            // KATO + the 1 s grace + the 100 ms tick: both connections must be gone by 4 s.
            std::thread::sleep(std::time::Duration::from_secs(4));
            assert!(
                a.property_get(0x1c, target_wire::nvme::fabrics::PropertySize::Four)
                    .is_err(),
                "admin queue closed"
            );
            assert!(
                io.io(IoOpcode::Read, 0, 1, 512, Vec::new()).is_err(),
                "I/O queue closed with its controller"
            );
            // Its controller ID is gone: a new I/O queue cannot attach to it.
            let mut late = Client::connect(sock, false).expect("connect");
            let r = late
                .fabrics_connect(1, cntlid, NQN, HOST_NQN)
                .expect("answer");
            assert!(!r.cqe.status.is_success());
            // The target still serves everyone else.
            let (_a2, cntlid2) = admin(addr, false);
            let mut q2 = io_queue(addr, cntlid2, 1, false);
            assert!(
                q2.io(IoOpcode::Read, 0, 1, 512, Vec::new())
                    .expect("read")
                    .cqe
                    .status
                    .is_success()
            );
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// A host that keeps sending READs and never reads the answers (holding its TCP window at
/// zero) must not grow the target's memory: the target stops reading from it once its
/// output is full, while other hosts go on being served.
#[test]
fn a_host_that_stops_reading_cannot_exhaust_memory() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("noread", 64 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let addr = IpAddr::V4(pair.target_addr);
    let rss_before = t.rss_kib().expect("rss");
    let (growth, sent) = pair
        .client
        .run(move || {
            let (_a, cntlid) = admin(addr, false);
            let mut good = io_queue(addr, cntlid, 1, false);
            let mut greedy = io_queue(addr, cntlid, 2, false);
            // 400,000 reads of 128 KiB (29 MB of capsules, more than the socket buffers on
            // both ends hold): 50 GiB of answers if the target kept taking them.
            let sent = greedy
                .send_reads_without_reading(
                    400_000,
                    128 * 1024,
                    512,
                    std::time::Duration::from_secs(2),
                )
                .expect("send");
            // The other queue still reads and writes.
            for lba in 0..64u64 {
                let data = pattern(lba, 3, 512);
                let w = good
                    .io(IoOpcode::Write, lba, 1, 512, data.clone())
                    .expect("write");
                assert!(w.cqe.status.is_success());
                let r = good
                    .io(IoOpcode::Read, lba, 1, 512, Vec::new())
                    .expect("read");
                assert_eq!(r.data, data);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
            (greedy, sent)
        })
        .map(|(greedy, sent)| {
            let growth = t.rss_kib().expect("rss").saturating_sub(rss_before);
            drop(greedy);
            (growth, sent)
        })
        .expect("namespace thread");
    // The output mark (1 MiB) plus the answers of the commands in flight (128 slots of
    // 128 KiB) and their buffers: tens of MiB, not the 50 GiB asked for.
    assert!(
        growth < 256 * 1024,
        "the target grew by {growth} KiB for a host that does not read ({sent} reads sent)"
    );
    assert!(
        sent < 400_000,
        "the target kept reading from a host that does not read"
    );
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// Frames forged with a connected host's address and another MAC (on the XDP path the
/// target learns next hops from frames, not ARP) must not redirect that host's answers:
/// only a SYN teaches a MAC, for its own connection, and a SYN naming a live connection
/// teaches nothing.
#[test]
fn forged_frames_cannot_redirect_a_hosts_answers() {
    use xdp_target_tests::frames::{ETH_P_IPV4, RawSender, ethernet, ipv4_tcp_syn, mac_of};
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("forged", 4 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let addr = IpAddr::V4(pair.target_addr);
    let (client_ip, target_ip) = (pair.client_addr, pair.target_addr);
    let target_mac = mac_of(&pair.target, &pair.target_if).expect("target MAC");
    let raw = RawSender::open(&pair.client, &pair.client_if).expect("raw socket");
    let (mut a, cntlid) = pair.client.run(move || admin(addr, false)).expect("admin");
    let mut io = pair
        .client
        .run(move || io_queue(addr, cntlid, 1, false))
        .expect("io queue");
    let port = io.local_addr().expect("local addr").port();
    let forger = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];
    // A SYN for the live connection's four-tuple, and a plain ACK segment (bad checksum:
    // only a learner that looks at every frame would take it), both from another MAC.
    let syn = ipv4_tcp_syn(client_ip, target_ip, port, 4420, 0x1234_5678);
    let mut ack = syn.clone();
    ack[20 + 13] = 0x10;
    // Forged frames keep coming while the host works (a learner that took them would send
    // every answer and every retransmission to the forger; the host would wait in vain).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forging = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let frames = [
                ethernet(target_mac, forger, ETH_P_IPV4, &syn),
                ethernet(target_mac, forger, ETH_P_IPV4, &ack),
            ];
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 2_000_000 {
                raw.send(&frames[(sent % 2) as usize]).expect("send");
                sent += 1;
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    // The host's queues still get their answers.
    let (io, a) = pair
        .client
        .run(move || {
            io.set_timeout(std::time::Duration::from_secs(5))
                .expect("timeout");
            let data = pattern(7, 1, 512);
            let w = io
                .io(IoOpcode::Write, 7, 1, 512, data.clone())
                .expect("write answered");
            assert!(w.cqe.status.is_success());
            let r = io
                .io(IoOpcode::Read, 7, 1, 512, Vec::new())
                .expect("read answered");
            assert_eq!(r.data, data);
            let k = a
                .admin(AdminOpcode::KeepAlive, 0, 0, 0, 0)
                .expect("keep-alive answered");
            assert!(k.cqe.status.is_success());
            (io, a)
        })
        .expect("namespace thread");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    forging.join().expect("forger");
    drop((io, a));
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// Connections beyond `max_connections_per_reactor` are turned away at once, and the ones
/// being served go on.
#[test]
fn connections_beyond_the_limit_are_refused_and_the_others_go_on() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config_top(
        "limit",
        "reactors = 1\nmax_connections_per_reactor = 2",
        4 * MIB,
        512,
        "",
    );
    // The readiness probe's connection counts until it is gone: give it a moment.
    let t = serve(&pair, &cfg);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), 4420);
    pair.client
        .run(move || {
            let mut first = Client::connect(addr, false).expect("first connection");
            let _second = Client::connect(addr, false).expect("second connection");
            assert!(
                Client::connect(addr, false).is_err(),
                "a third connection was served"
            );
            let c = first
                .fabrics_connect(0, 0xffff, NQN, HOST_NQN)
                .expect("the first connection still answers");
            assert!(c.cqe.status.is_success(), "{:?}", c.cqe);
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// A host on a VLAN of the target's link: its tagged frames are served by the kernel's VLAN
/// device and listeners (on the XDP path the program passes them: the AF_XDP path's frames
/// are untagged), while untagged hosts go on being served by the path under test.
#[test]
fn a_host_on_a_vlan_is_served() {
    use xdp_target_tests::netns::ip;
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let (t_vlan, c_vlan) = (
        format!("{}.7", pair.target_if),
        format!("{}.7", pair.client_if),
    );
    for (ns, dev, vlan, addr) in [
        (&pair.target, &pair.target_if, &t_vlan, "192.168.77.1/24"),
        (&pair.client, &pair.client_if, &c_vlan, "192.168.77.2/24"),
    ] {
        let n = ns.name();
        if let Err(e) = ip(&[
            "-n", n, "link", "add", "link", dev, "name", vlan, "type", "vlan", "id", "7",
        ]) {
            // Not even CI's kernel can help it: skip, saying why.
            assert!(
                e.to_string().contains("Unknown device type"),
                "VLAN device: {e}"
            );
            eprintln!(
                "SKIPPED a_host_on_a_vlan_is_served: this kernel has no 802.1Q VLAN devices \
                 (CONFIG_VLAN_8021Q); the steering suite checks that tagged frames pass"
            );
            return;
        }
        ip(&["-n", n, "addr", "add", addr, "dev", vlan]).expect("VLAN address");
        ip(&["-n", n, "link", "set", vlan, "up"]).expect("VLAN up");
    }
    let cfg = config("vlan", 4 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let untagged = IpAddr::V4(pair.target_addr);
    let tagged = IpAddr::from([192, 168, 77, 1]);
    pair.client
        .run(move || {
            for addr in [tagged, untagged] {
                let (_a, cntlid) = admin(addr, false);
                let mut q = io_queue(addr, cntlid, 1, false);
                let data = pattern(3, 9, 512);
                let w = q
                    .io(IoOpcode::Write, 3, 1, 512, data.clone())
                    .expect("write");
                assert!(w.cqe.status.is_success(), "{addr}");
                let r = q.io(IoOpcode::Read, 3, 1, 512, Vec::new()).expect("read");
                assert_eq!(r.data, data, "{addr}");
            }
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// A bug in one connection's engine (a debug-build hook makes it panic on a marker) ends
/// that connection alone: the reactor logs it, tears the connection down and goes on
/// serving the others and new ones, instead of dying with all of them.
#[test]
fn a_panicking_engine_ends_only_its_own_connection() {
    use std::io::Write as _;
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let path = config_top("panic", "reactors = 1", 4 * MIB, 512, "");
    let t = Target::serve_config_env(
        &pair,
        &path,
        4420,
        &[("XDPT_TEST_PANIC_ON", "xdpt-test-panic")],
    );
    let addr = IpAddr::V4(pair.target_addr);
    pair.client
        .run(move || {
            let (mut a, cntlid) = admin(addr, false);
            let mut q = io_queue(addr, cntlid, 1, false);
            let data = pattern(9, 4, 512);
            assert!(
                q.io(IoOpcode::Write, 9, 1, 512, data.clone())
                    .expect("write")
                    .cqe
                    .status
                    .is_success()
            );
            // Another connection on the same (only) reactor makes its engine panic.
            let mut bad = TcpStream::connect(SocketAddr::new(addr, 4420)).expect("connect");
            bad.write_all(b"xdpt-test-panic").expect("send");
            bad.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            let closed = matches!(std::io::Read::read(&mut bad, &mut buf), Ok(0) | Err(_));
            assert!(closed, "the failed connection is closed");
            // The others go on, and new ones are served.
            let r = q
                .io(IoOpcode::Read, 9, 1, 512, Vec::new())
                .expect("read after the panic");
            assert_eq!(r.data, data);
            let k = a
                .admin(AdminOpcode::KeepAlive, 0, 0, 0, 0)
                .expect("keep-alive");
            assert!(k.cqe.status.is_success());
            let (_a2, _) = admin(addr, false);
        })
        .expect("namespace thread");
    let log = t.log_text();
    assert!(
        log.contains("internal error on a connection (a bug), closing it"),
        "{log}"
    );
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(path);
}

/// `[metrics] listen` on the target namespace's loopback: after a few writes and reads, the
/// namespace's counters and bytes are exactly what the host did, the connection gauge
/// follows the host's connections, and the text passes `promtool check metrics`.
#[test]
fn metrics_count_what_the_host_did() {
    use std::time::{Duration, Instant};
    use xdp_target_tests::metrics::{promtool, promtool_check, scrape, value};
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let path = config_top(
        "metrics",
        "reactors = 2\n[metrics]\nlisten = \"127.0.0.1:9464\"",
        4 * MIB,
        512,
        "",
    );
    let t = serve(&pair, &path);
    let endpoint: SocketAddr = "127.0.0.1:9464".parse().expect("address");
    let target = pair.target.handle();
    // Scrapes from inside the target's namespace until `done` holds (at most 10 s).
    let scrape_until = move |done: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (head, body) = target
                .run(move || scrape(endpoint))
                .expect("namespace thread")
                .expect("scrape");
            assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
            assert!(
                head.contains("Content-Type: text/plain; version=0.0.4"),
                "{head}"
            );
            if done(&body) || Instant::now() > deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let transport = if xdp_path() { "xdp" } else { "socket" };
    let conns = format!("{{transport=\"{transport}\",protocol=\"nvme\"}}");
    let open = format!("xdpt_connections_open{conns}");
    let ns = |dir: &str| format!("{{subsystem=\"{NQN}\",nsid=\"1\",direction=\"{dir}\"}}");

    // Writes of 8, 1 and 64 blocks, reads of 8 and 64.
    let writes: [(u64, u32); 3] = [(0, 8), (8, 1), (100, 64)];
    let reads: [(u64, u32); 2] = [(0, 8), (100, 64)];
    let addr = IpAddr::V4(pair.target_addr);
    let (open_during, text_during) = {
        let scrape_until = scrape_until.clone();
        let open = open.clone();
        pair.client
            .run(move || {
                let (_a, cntlid) = admin(addr, false);
                let mut q = io_queue(addr, cntlid, 1, false);
                for (lba, n) in writes {
                    let data: Vec<u8> = (lba..lba + u64::from(n))
                        .flat_map(|l| pattern(l, 4, 512))
                        .collect();
                    let w = q.io(IoOpcode::Write, lba, n, 512, data).expect("write");
                    assert!(w.cqe.status.is_success(), "{:?}", w.cqe);
                }
                for (lba, n) in reads {
                    let r = q.io(IoOpcode::Read, lba, n, 512, Vec::new()).expect("read");
                    assert!(r.cqe.status.is_success(), "{:?}", r.cqe);
                }
                // Admin and I/O queue open (the readiness probe's connection closes on
                // its own); on the XDP path, the AF_XDP counters published (every 100 ms).
                let text = scrape_until(&|t| {
                    value(t, &open) == Some(2.0)
                        && (!xdp_path()
                            || value(t, r#"xdpt_afxdp_packets_total{queue="0",direction="rx"}"#)
                                .is_some_and(|v| v > 0.0))
                });
                (value(&text, &open), text)
            })
            .expect("namespace thread")
    };
    let t_ = &text_during;
    assert_eq!(open_during, Some(2.0), "{t_}");
    let get = |series: String| value(t_, &series).unwrap_or_else(|| panic!("{series} in\n{t_}"));
    assert_eq!(get(format!("xdpt_io_ops_total{}", ns("write"))), 3.0);
    assert_eq!(get(format!("xdpt_io_ops_total{}", ns("read"))), 2.0);
    assert_eq!(
        get(format!("xdpt_io_bytes_total{}", ns("write"))),
        f64::from((8 + 1 + 64) * 512)
    );
    assert_eq!(
        get(format!("xdpt_io_bytes_total{}", ns("read"))),
        f64::from((8 + 64) * 512)
    );
    assert_eq!(get(format!("xdpt_io_errors_total{}", ns("write"))), 0.0);
    assert_eq!(
        get(format!("xdpt_io_duration_seconds_count{}", ns("write"))),
        3.0
    );
    let inf = format!(
        "xdpt_io_duration_seconds_bucket{{subsystem=\"{NQN}\",nsid=\"1\",direction=\"read\",le=\"+Inf\"}}"
    );
    assert_eq!(get(inf), 2.0);
    assert!(get(format!("xdpt_connections_accepted_total{conns}")) >= 2.0);
    if xdp_path() {
        assert!(get(r#"xdpt_xdp_packets_total{port="4420",action="redirected"}"#.into()) > 0.0);
        assert!(get(r#"xdpt_afxdp_packets_total{queue="0",direction="rx"}"#.into()) > 0.0);
        // A clean veth: the stack's retransmission counters are there, and (almost
        // surely) zero; their counting is tested over a lossy link in target-tcp.
        for kind in ["timeout", "fast"] {
            let series = format!(r#"xdpt_afxdp_tcp_retransmits_total{{queue="0",kind="{kind}"}}"#);
            assert!(get(series) >= 0.0);
        }
    } else {
        assert!(!t_.contains("xdpt_xdp_"), "no XDP program, no XDP metrics");
    }
    match promtool() {
        Some(p) => {
            if let Err(why) = promtool_check(&p, t_).expect("run promtool") {
                panic!("promtool check metrics failed:\n{why}\non:\n{t_}");
            }
        }
        None if std::env::var_os("CI").is_some() => {
            panic!("promtool is missing in CI: scripts/setup.sh installs it (package prometheus)")
        }
        None => eprintln!(
            "SKIPPED the promtool check of metrics_count_what_the_host_did: promtool is not \
             installed (apt-get install prometheus)"
        ),
    }

    // The host went away: no connection is left open, and every accepted one was closed.
    let after = scrape_until(&|t| value(t, &open) == Some(0.0));
    assert_eq!(value(&after, &open), Some(0.0), "{after}");
    assert_eq!(
        value(&after, &format!("xdpt_connections_closed_total{conns}")),
        value(&after, &format!("xdpt_connections_accepted_total{conns}")),
        "{after}"
    );
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(path);
}

/// The `xdpt` external fio ioengine (`cargo xtask fio-engine`; `FIO_XDPT_ENGINE` names
/// another build) and the fio it was built against, when both are there.
fn fio_xdpt() -> Option<(PathBuf, PathBuf)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let fio = xdp_target_tests::iscsi::tool("fio-libiscsi")?;
    let engine = std::env::var_os("FIO_XDPT_ENGINE")
        .map_or_else(|| root.join("target/release/libfio-xdpt.so"), PathBuf::from);
    engine.is_file().then_some((fio, engine))
}

/// Runs fio in the client namespace; its JSON.
fn run_fio(pair: &VethPair, fio: &Path, args: &[&str]) -> serde_json::Value {
    let out = pair
        .client
        .command(fio)
        .args(args)
        // No verify state files left in the working directory.
        .args(["--output-format=json", "--verify_state_save=0"])
        .output()
        .expect("run fio");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio {args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text[text.find('{').unwrap_or(0)..])
        .unwrap_or_else(|e| panic!("fio JSON: {e}\n{text}"))
}

/// Standard fio jobs through the engine: two jobs of 4 KiB random writes at QD8, each on
/// its own 16 MiB, verified with crc32c; then 64 KiB sequential writes (R2T, not in the
/// capsule) with digests, the subsystem found through discovery, and trims (Dataset
/// Management, Deallocate). fio's verify alone would
/// pass an engine that put every block at a consistently wrong place, so the blocks are
/// then read with the project's own client: each must hold fio's verify header naming its
/// own byte offset.
#[test]
fn fio_through_the_xdpt_engine_verifies_clean() {
    require_netns!();
    let Some((fio, engine)) = fio_xdpt() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the fio engine is missing in CI: `cargo xtask test` builds it"
        );
        eprintln!("SKIPPED: no fio engine (cargo xtask fio-engine) or fio (scripts/setup.sh)");
        return;
    };
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("fio", 64 * MIB, 512, "");
    let t = serve(&pair, &cfg);
    let ioengine = format!("--ioengine=external:{}", engine.display());
    let with_nqn = format!(
        "--filename=nvme-tcp\\://{}\\:4420/{}",
        pair.target_addr,
        NQN.replace(':', "\\:")
    );
    let v = run_fio(
        &pair,
        &fio,
        &[
            "--name=randwrite",
            &ioengine,
            &with_nqn,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--numjobs=2",
            "--size=16m",
            "--offset_increment=16m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ],
    );
    let jobs = v["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 2, "{v}");
    for job in jobs {
        assert_eq!(job["error"], 0, "{job}");
        assert_eq!(job["write"]["io_bytes"], 16 * MIB, "{job}");
        assert_eq!(job["read"]["io_bytes"], 16 * MIB, "verify reads: {job}");
        assert!(job["write"]["iops"].as_f64().unwrap_or(0.0) > 0.0, "{job}");
    }
    let discovered = format!("--filename=nvme-tcp\\://{}", pair.target_addr);
    let v = run_fio(
        &pair,
        &fio,
        &[
            "--name=seqwrite",
            &ioengine,
            &discovered,
            "--xdpt_digests=1",
            "--rw=write",
            "--bs=64k",
            "--iodepth=4",
            "--offset=32m",
            "--size=8m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--end_fsync=1",
        ],
    );
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["write"]["io_bytes"], 8 * MIB, "{job}");
    assert_eq!(job["read"]["io_bytes"], 8 * MIB, "verify reads: {job}");
    // Trims go as Dataset Management Deallocate; the target must take every one.
    let v = run_fio(
        &pair,
        &fio,
        &[
            "--name=trim",
            &ioengine,
            &with_nqn,
            "--rw=randtrim",
            "--bs=64k",
            "--iodepth=4",
            "--offset=48m",
            "--size=8m",
        ],
    );
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["trim"]["io_bytes"], 8 * MIB, "{job}");
    // fio's verify header: magic ACCAh at 0, the block's byte offset at 16.
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), 4420);
    pair.client
        .run(move || {
            let (mut a, cntlid) = admin(addr.ip(), false);
            let mut q = io_queue(addr.ip(), cntlid, 1, false);
            for (start, len, bs) in [(0, 32 * MIB, 4096), (32 * MIB, 8 * MIB, 65536)] {
                for offset in (start..start + len).step_by(bs) {
                    let r = q
                        .io(IoOpcode::Read, offset / 512, 8, 512, Vec::new())
                        .expect("read");
                    assert!(r.cqe.status.is_success());
                    let magic = u16::from_le_bytes([r.data[0], r.data[1]]);
                    let at = u64::from_le_bytes(r.data[16..24].try_into().expect("8 bytes"));
                    assert_eq!((magic, at), (0xacca, offset), "block at byte {offset}");
                }
            }
            drop(a.admin(AdminOpcode::KeepAlive, 0, 0, 0, 0));
        })
        .expect("client namespace");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// `xdp-target ctl` adds, grows and removes a namespace on a running target: the host's
/// held Asynchronous Event Request is answered with a Namespace Attribute Changed notice
/// each time, the Changed Namespace List names it, Identify and I/O see the change on
/// queues that were connected before it, and `save` keeps it. A subsystem added at run
/// time takes connects; removing it ends the controllers on it.
#[test]
fn ctl_changes_namespaces_and_tells_connected_hosts() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let socket = std::env::temp_dir().join(format!("xdpt-ctl-ns-{}.sock", std::process::id()));
    let cfg = config_top(
        "ctl-ns",
        &format!("reactors = 2\n[control]\nsocket = \"{}\"", socket.display()),
        4 * MIB,
        512,
        "",
    );
    let t = serve(&pair, &cfg);
    let ctl = |args: &[&str]| {
        let (ok, out) = xdp_target_tests::target::ctl(&socket, args);
        assert!(ok, "ctl {args:?}: {out}");
        out
    };
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), 4420);
    let client = pair.client.handle();
    const NOTICE: u32 = 0x0004_0002;
    let aer = || commands::admin(AdminOpcode::AsyncEventRequest, 0, 0, 0);
    let (admin, io) = client
        .run(move || {
            let mut admin = Client::connect(addr, false).expect("connect");
            let c = admin
                .fabrics_connect(0, 0xffff, NQN, HOST_NQN)
                .expect("Connect");
            assert!(c.cqe.status.is_success());
            let cntlid = c.cqe.dw0 as u16;
            admin.enable().expect("enable");
            let id = admin.identify(Cns::Controller, 0).expect("Identify");
            let idc = IdentifyController::new_checked(&id.data[..]).expect("4 KiB");
            assert_eq!(
                idc.oaes() & (1 << 8),
                1 << 8,
                "OAES: namespace attribute notices"
            );
            let fid = |f: FeatureId| u32::from(u8::from(f));
            for (f, v) in [
                (FeatureId::NumberOfQueues, 0),
                (FeatureId::AsyncEventConfiguration, 1 << 8),
            ] {
                let r = admin
                    .admin(AdminOpcode::SetFeatures, 0, fid(f), v, 0)
                    .expect("Set Features");
                assert!(r.cqe.status.is_success(), "{f:?}");
            }
            admin.submit(aer(), 0);
            let mut io = Client::connect(addr, false).expect("connect");
            assert!(
                io.fabrics_connect(1, cntlid, NQN, HOST_NQN)
                    .expect("Connect")
                    .cqe
                    .status
                    .is_success()
            );
            (admin, io)
        })
        .expect("namespace thread");

    let out = ctl(&["add-namespace", NQN, "2", "--size", "2MiB"]);
    assert!(out.contains("\"nsid\": 2"), "{out}");
    let (admin, io) = client
        .run(move || {
            let (mut admin, mut io) = (admin, io);
            let c = admin.wait().expect("the held AER is answered");
            assert!(c.cqe.status.is_success());
            assert_eq!(
                c.cqe.dw0, NOTICE,
                "Notice: Namespace Attribute Changed, LID 04h"
            );
            let log = admin
                .admin(
                    AdminOpcode::GetLogPage,
                    0xffff_ffff,
                    4 | (1023 << 16),
                    0,
                    4096,
                )
                .expect("Changed Namespace List");
            assert_eq!(&log.data[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
            let list = admin
                .identify(Cns::ActiveNamespaceList, 0)
                .expect("active namespaces");
            assert_eq!(&list.data[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
            // The I/O queue connected before the namespace existed writes and reads it.
            let data = pattern(3, 1, 512);
            let w = io
                .command(
                    commands::io(IoOpcode::Write, 2, 3, 1),
                    data.clone(),
                    true,
                    0,
                )
                .expect("write");
            assert!(w.cqe.status.is_success(), "{:?}", w.cqe);
            let r = io
                .command(
                    commands::io(IoOpcode::Read, 2, 3, 1),
                    Vec::new(),
                    false,
                    512,
                )
                .expect("read");
            assert!(r.cqe.status.is_success());
            assert_eq!(r.data, data);
            admin.submit(aer(), 0);
            (admin, io)
        })
        .expect("namespace thread");

    let (ok, out) = xdp_target_tests::target::ctl(&socket, &["resize-namespace", NQN, "2", "1MiB"]);
    assert!(!ok && out.contains("only growing"), "no shrinking: {out}");
    ctl(&["resize-namespace", NQN, "2", "8MiB"]);
    let (admin, io) = client
        .run(move || {
            let (mut admin, mut io) = (admin, io);
            assert_eq!(admin.wait().expect("resize notice").cqe.dw0, NOTICE);
            let id = admin
                .identify(Cns::Namespace, 2)
                .expect("Identify Namespace");
            let ns = IdentifyNamespace::new_checked(&id.data[..]).expect("4 KiB");
            assert_eq!(ns.nsze(), 8 * MIB / 512);
            let last = 8 * MIB / 512 - 1;
            let w = io
                .command(
                    commands::io(IoOpcode::Write, 2, last, 1),
                    pattern(last, 2, 512),
                    true,
                    0,
                )
                .expect("write");
            assert!(
                w.cqe.status.is_success(),
                "the grown end is writable: {:?}",
                w.cqe
            );
            let r = io
                .command(
                    commands::io(IoOpcode::Read, 2, 3, 1),
                    Vec::new(),
                    false,
                    512,
                )
                .expect("read");
            assert_eq!(r.data, pattern(3, 1, 512), "data before the resize stays");
            // Read with RAE cleared: unmasks the next notice.
            admin
                .admin(
                    AdminOpcode::GetLogPage,
                    0xffff_ffff,
                    4 | (1023 << 16),
                    0,
                    4096,
                )
                .expect("log");
            admin.submit(aer(), 0);
            (admin, io)
        })
        .expect("namespace thread");

    let saved = std::env::temp_dir().join(format!("xdpt-ctl-ns-saved-{}.toml", std::process::id()));
    ctl(&["save", saved.to_str().expect("utf-8")]);
    let text = std::fs::read_to_string(&saved).expect("saved");
    assert!(
        text.contains("nsid = 2") && text.contains("size = 8388608"),
        "{text}"
    );

    ctl(&["remove-namespace", NQN, "2"]);
    client
        .run(move || {
            let (mut admin, mut io) = (admin, io);
            assert_eq!(admin.wait().expect("removal notice").cqe.dw0, NOTICE);
            let r = io
                .command(
                    commands::io(IoOpcode::Read, 2, 3, 1),
                    Vec::new(),
                    false,
                    512,
                )
                .expect("read");
            assert_eq!(r.cqe.status, Status::invalid_namespace());
            let r = io
                .io(IoOpcode::Read, 0, 1, 512, Vec::new())
                .expect("read nsid 1");
            assert!(r.cqe.status.is_success(), "namespace 1 is untouched");
        })
        .expect("namespace thread");

    // A subsystem added at run time takes connects; removing it ends them.
    let other = "nqn.2026-11.dev.xdp-target:added";
    ctl(&["add-subsystem", other]);
    ctl(&["add-namespace", other, "1", "--size", "1MiB"]);
    let admin = client
        .run(move || {
            let mut admin = Client::connect(addr, false).expect("connect");
            assert!(
                admin
                    .fabrics_connect(0, 0xffff, other, HOST_NQN)
                    .expect("Connect")
                    .cqe
                    .status
                    .is_success()
            );
            admin.enable().expect("enable");
            admin
        })
        .expect("namespace thread");
    let out = ctl(&["remove-subsystem", other]);
    assert!(out.contains("\"controllers_ended\": 1"), "{out}");
    client
        .run(move || {
            let mut admin = admin;
            let mut ended = false;
            for _ in 0..50 {
                if admin.admin(AdminOpcode::KeepAlive, 0, 0, 0, 0).is_err() {
                    ended = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert!(ended, "the controller of a removed subsystem ends");
            let mut again = Client::connect(addr, false).expect("connect");
            let c = again
                .fabrics_connect(0, 0xffff, other, HOST_NQN)
                .expect("answer");
            assert!(!c.cqe.status.is_success(), "gone");
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    for f in [cfg, saved, socket] {
        let _ = std::fs::remove_file(f);
    }
}

/// The TCP ports the discovery log on `addr`:8009 names.
fn discovery_ports(addr: IpAddr) -> Vec<String> {
    // The header and up to 15 entries of 1 KiB.
    let log = discovery_log_of(addr, 16 * 1024);
    let n = DiscoveryLogHeader::new_checked(&log[..])
        .expect("header")
        .numrec();
    assert!(n <= 15, "{n} entries");
    (0..n as usize)
        .map(|i| {
            let e = discovery_entry(&log, i).expect("entry");
            e.trsvcid().expect("port").to_string()
        })
        .collect()
}

/// `ctl add-listener` and `remove-listener` on a running target: an NVMe/TCP listener on
/// a new port is discovered and connected through, an iSCSI one is logged in through and
/// reported by SendTargets; `save` writes them. Removed, new connections are refused,
/// discovery forgets the port, and the connections already up keep working. On the XDP
/// path the new ports are steered (`xdp.ports`), so the AF_XDP reactors serve them.
#[test]
fn ctl_adds_and_removes_listeners_without_a_restart() {
    use target_proto::iscsi::host::LoginOptions;
    use xdp_target_tests::iscsi::{Client as IscsiClient, INITIATOR};
    const IQN: &str = "iqn.2026-11.dev.xdp-target:e2e";
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let socket = std::env::temp_dir().join(format!("xdpt-ctl-listen-{}.sock", std::process::id()));
    let top = format!(
        "reactors = 2\n[control]\nsocket = \"{}\"\n[xdp]\nports = [4420, 8009, 3260, 4421, 3261]",
        socket.display()
    );
    let cfg = config_top(
        "ctl-listen",
        &top,
        4 * MIB,
        512,
        &format!("iqn = \"{IQN}\""),
    );
    let t = serve(&pair, &cfg);
    let ctl = |args: &[&str]| xdp_target_tests::target::ctl(&socket, args);
    let json = |out: &str| -> serde_json::Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let target = IpAddr::V4(pair.target_addr);
    let nvme = SocketAddr::new(target, 4421);
    let iscsi = SocketAddr::new(target, 3261);
    let client = pair.client.handle();
    let nvme_admin = {
        let client = client.clone();
        move || {
            client
                .run(move || -> std::io::Result<Client> {
                    let mut a = Client::connect(nvme, false)?;
                    let r = a.fabrics_connect(0, 0xffff, NQN, HOST_NQN)?;
                    assert!(r.cqe.status.is_success(), "{:?}", r.cqe);
                    a.enable()?;
                    Ok(a)
                })
                .expect("namespace thread")
        }
    };
    let iscsi_login = {
        let client = client.clone();
        move || {
            client
                .run(move || IscsiClient::login(iscsi, LoginOptions::new(INITIATOR, Some(IQN))))
                .expect("namespace thread")
        }
    };
    let portals = {
        let client = client.clone();
        move || {
            client
                .run(move || {
                    let mut d = IscsiClient::login(
                        SocketAddr::new(target, 3260),
                        LoginOptions::new(INITIATOR, None),
                    )
                    .expect("discovery login");
                    d.send_targets()
                        .expect("SendTargets")
                        .into_iter()
                        .filter(|(k, _)| k == "TargetAddress")
                        .map(|(_, v)| v)
                        .collect::<Vec<_>>()
                })
                .expect("namespace thread")
        }
    };
    let ports = {
        let client = client.clone();
        move || {
            client
                .run(move || discovery_ports(target))
                .expect("namespace thread")
        }
    };
    let identify = |a: &mut Client| {
        let id = a.identify(Cns::Controller, 0).expect("id-ctrl");
        assert!(id.cqe.status.is_success());
        let c = IdentifyController::new_checked(&id.data[..]).expect("4096 bytes");
        assert_eq!(c.subnqn().expect("nqn"), NQN);
    };

    // Nothing on the new ports yet.
    assert!(nvme_admin().is_err(), "nothing listens on 4421 yet");
    assert!(iscsi_login().is_err(), "nothing listens on 3261 yet");
    assert!(!ports().contains(&"4421".to_string()));

    // NVMe/TCP on 4421: discovered, and connected through.
    let (ok, out) = ctl(&["add-listener", "nvme_tcp", &nvme.to_string()]);
    assert!(ok, "{out}");
    let r = json(&out);
    assert_eq!(r["listening"], true, "{out}");
    assert_eq!(r["xdp_served"], xdp_path(), "{out}");
    assert!(ports().contains(&"4421".to_string()), "{:?}", ports());
    let mut held = nvme_admin().expect("connect through the new listener");
    identify(&mut held);

    // iSCSI on 3261: SendTargets reports it, and a login through it works.
    let (ok, out) = ctl(&["add-listener", "iscsi", &iscsi.to_string()]);
    assert!(ok, "{out}");
    assert!(
        portals()
            .iter()
            .any(|p| p.starts_with(&format!("{iscsi},"))),
        "{:?}",
        portals()
    );
    let mut session = iscsi_login().expect("log in through the new listener");
    assert_eq!(session.rw(0, None, 0, 1, 512).expect("read").status, 0);

    // Mistakes: each a clear error, nothing changed.
    let (ok, out) = ctl(&["add-listener", "nvme_tcp", &nvme.to_string()]);
    assert!(!ok && out.contains("already listening"), "{out}");
    let (ok, out) = ctl(&["add-listener", "nvme_tcp", "10.0.0.1"]);
    assert!(!ok && out.contains("not an address:port"), "{out}");
    let (ok, out) = ctl(&["add-listener", "iscsi", &format!("{target}:4420")]);
    assert!(!ok && out.contains("overlaps"), "{out}");
    let (ok, out) = ctl(&["add-listener", "nvme_rdma", &format!("{target}:4420")]);
    assert!(!ok && out.contains("NVMe/RDMA is not running"), "{out}");
    let taken = SocketAddr::new(target, 4422);
    let holder = pair
        .target
        .run(move || std::net::TcpListener::bind(taken).expect("bind 4422"))
        .expect("namespace thread");
    let (ok, out) = ctl(&["add-listener", "nvme_tcp", &taken.to_string()]);
    assert!(!ok && out.contains("Address already in use"), "{out}");
    drop(holder);

    // `list` and `save` show the running listeners.
    let (ok, out) = ctl(&["list"]);
    assert!(ok, "{out}");
    let l = json(&out);
    assert!(
        l["listeners"]["nvme_tcp"]
            .as_array()
            .expect("list")
            .contains(&serde_json::json!(nvme.to_string())),
        "{out}"
    );
    assert!(!out.contains("4422"), "a failed add leaves no trace: {out}");
    let saved = std::env::temp_dir().join(format!("xdpt-ctl-listen-{}.toml", std::process::id()));
    let (ok, out) = ctl(&["save", saved.to_str().expect("utf-8")]);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&saved).expect("saved file");
    assert!(
        text.contains(&nvme.to_string()) && text.contains(&iscsi.to_string()),
        "{text}"
    );

    // A port the XDP program does not steer: `--steer` adds it to the program's map and
    // the AF_XDP reactors serve it; without AF_XDP there is nothing to steer to.
    let steered = SocketAddr::new(target, 4423);
    let (ok, out) = ctl(&["add-listener", "nvme_tcp", &steered.to_string(), "--steer"]);
    if xdp_path() {
        assert!(ok && json(&out)["xdp_served"] == true, "{out}");
        let mut a = client
            .run(move || {
                let mut a = Client::connect(steered, false).expect("connect 4423");
                let r = a
                    .fabrics_connect(0, 0xffff, NQN, HOST_NQN)
                    .expect("connect");
                assert!(r.cqe.status.is_success());
                a.enable().expect("enable");
                a
            })
            .expect("namespace thread");
        identify(&mut a);
        let stats = xdp_target_tests::target::stats_json(&pair.target_if).expect("stats");
        let port = stats["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["port"] == 4423)
            .unwrap_or_else(|| panic!("4423 is not steered: {stats}"));
        assert!(port["packets"]["redirected"].as_u64() > Some(0), "{stats}");
        let (ok, out) = ctl(&["list"]);
        assert!(ok && out.contains("4423"), "{out}");
    } else {
        assert!(!ok && out.contains("no AF_XDP reactors run"), "{out}");
    }

    // Removed: new connections are refused, discovery forgets the port, and what is up
    // stays up.
    let (ok, out) = ctl(&["remove-listener", "nvme_tcp", &nvme.to_string()]);
    assert!(ok, "{out}");
    let nvme_left = if xdp_path() { 3 } else { 2 };
    assert_eq!(json(&out)["remaining"], nvme_left, "{out}");
    assert!(nvme_admin().is_err(), "4421 no longer accepts");
    assert!(!ports().contains(&"4421".to_string()), "{:?}", ports());
    identify(&mut held);
    let (ok, out) = ctl(&["remove-listener", "iscsi", &iscsi.to_string()]);
    assert!(ok, "{out}");
    assert_eq!(json(&out)["remaining"], 1, "{out}");
    assert!(iscsi_login().is_err(), "3261 no longer accepts");
    assert!(
        portals().iter().all(|p| !p.contains(":3261")),
        "{:?}",
        portals()
    );
    assert_eq!(session.rw(0, None, 0, 1, 512).expect("read").status, 0);
    let (ok, out) = ctl(&["remove-listener", "iscsi", &iscsi.to_string()]);
    assert!(!ok && out.contains("not listening"), "{out}");
    // The last iSCSI listener may go too; the answer says none remain.
    let (ok, out) = ctl(&["remove-listener", "iscsi", "0.0.0.0:3260"]);
    assert!(ok && out.contains("no iSCSI listener remains"), "{out}");

    if xdp_path() {
        // The AF_XDP reactors' stacks took the steered port, and let it go.
        let log = t.log_text();
        assert!(
            log.contains("AF_XDP: accepting on port 4421")
                && log.contains("AF_XDP: no longer accepting on port 4421"),
            "{log}"
        );
    }

    // The saved configuration starts a target that serves the added listeners.
    drop((held, session));
    assert!(t.stop().expect("stop").success());
    let t = serve(&pair, &saved);
    identify(&mut nvme_admin().expect("the saved listener serves"));
    assert!(t.stop().expect("stop").success());
    for f in [cfg, saved, socket] {
        let _ = std::fs::remove_file(f);
    }
}
