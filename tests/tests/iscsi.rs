//! End-to-end iSCSI over kernel sockets: `xdp-target serve` in one namespace, initiators in
//! the other across a veth pair: libiscsi's compliance suite and tools, fio's libiscsi
//! engine, `xdp-target perf`, and the initiator engine of target-proto for what the tools
//! cannot do (malformed PDUs, CHAP failures). Needs root; skips with a reason without it
//! (and fails in CI, where it must run).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;

use target_proto::iscsi::host::LoginOptions;
use target_wire::iscsi::{BHS_LEN, Bhs, Opcode, login_status};
use xdp_target_tests::iscsi::{Client, INITIATOR};
use xdp_target_tests::netns::VethPair;
use xdp_target_tests::nvme::pattern;
use xdp_target_tests::target::Target;
use xdp_target_tests::{require_netns, require_tool};

const IQN: &str = "iqn.2026-11.dev.xdp-target:e2e";
const NQN: &str = "nqn.2026-11.dev.xdp-target:e2e";
const MIB: u64 = 1 << 20;

/// Tests libiscsi's suite may skip, by the reason it gives; anything else skipped, or
/// any failure, fails the test. The README lists them with the same reasons.
const ALLOWED_SKIPS: &[(&str, &[&str])] = &[
    // SANITIZE is not implemented; the suite runs it only with --allow-sanitize.
    (
        "--allow-sanitize flag is not set",
        &[
            "Sanitize.BlockErase",
            "Sanitize.BlockEraseReserved",
            "Sanitize.CryptoErase",
            "Sanitize.CryptoEraseReserved",
            "Sanitize.ExitFailureMode",
            "Sanitize.InvalidServiceAction",
            "Sanitize.Overwrite",
            "Sanitize.OverwriteReserved",
            "Sanitize.Readonly",
            "Sanitize.Reservations",
            "Sanitize.Reset",
        ],
    ),
    // A disk is not removable medium (INQUIRY RMB=0).
    (
        "not removable",
        &[
            "PreventAllow.2ITNexuses",
            "PreventAllow.ColdReset",
            "PreventAllow.Eject",
            "PreventAllow.ITNexusLoss",
            "PreventAllow.LUNReset",
            "PreventAllow.Logout",
            "PreventAllow.Simple",
            "PreventAllow.WarmReset",
            "StartStopUnit.Simple",
        ],
    ),
    // Commands not implemented (answered INVALID COMMAND OPERATION CODE).
    (
        "is not implemented",
        &[
            "WriteAtomic16.BeyondEol",
            "WriteAtomic16.DpoFua",
            "WriteAtomic16.Simple",
            "WriteAtomic16.VPD",
            "WriteAtomic16.WriteProtect",
            "WriteAtomic16.ZeroBlocks",
            "OrWrite.BeyondEol",
            "OrWrite.DpoFua",
            "OrWrite.Protect",
            "OrWrite.Simple",
            "OrWrite.Verify",
            "OrWrite.ZeroBlocks",
            "ExtendedCopy.DescrLimits",
            "ExtendedCopy.DescrType",
            "ExtendedCopy.ParamHdr",
            "ExtendedCopy.Simple",
            "ExtendedCopy.ValidSegDescr",
            "ExtendedCopy.ValidTgtDescr",
            "ReceiveCopyResults.CopyStatus",
            "ReceiveCopyResults.OpParams",
        ],
    ),
    // One logical block per physical block: the unaligned and odd-size cases need more.
    (
        "LBPPB < 2",
        &[
            "CompareAndWrite.InvalidDataOutSize",
            "WriteSame10.InvalidDataOutSize",
            "WriteSame16.InvalidDataOutSize",
            "WriteSame10.UnmapUnaligned",
            "WriteSame16.UnmapUnaligned",
        ],
    ),
    // The suite gets one portal URL: multipath needs a second.
    (
        "Multipath unavailable",
        &[
            "MultipathIO.CompareAndWrite",
            "MultipathIO.CompareAndWriteAsync",
            "MultipathIO.Reset",
            "MultipathIO.Simple",
        ],
    ),
    // WSNZ=1 in the block limits page: WRITE SAME of 0 blocks is refused, as SBC allows.
    (
        "does not support 0-blocks",
        &["WriteSame10.ZeroBlocks", "WriteSame16.ZeroBlocks"],
    ),
    // LUN 0 is writable; LUN 1 (read-only) runs the ReadOnly suite separately.
    ("is not write-protected", &["ReadOnly.ReadOnlySBC"]),
];

/// A target with LUN 0 (`size` bytes of memory, also NVMe namespace 1) and a read-only
/// LUN 1; `extra` goes into the subsystem (CHAP, allow-lists).
fn config(name: &str, size: u64, extra: &str) -> PathBuf {
    config_with(name, size, extra, "backend = \"memory\"")
}

/// [`config`] with LUN 0 on `backend` (a TOML line or two: `backend = "file"`, `path`).
fn config_with(name: &str, size: u64, extra: &str, backend: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "xdp-target-iscsi-{}-{name}.toml",
        std::process::id()
    ));
    let text = format!(
        "reactors = 2\n[iscsi]\nlisten = [\"0.0.0.0:3260\", \"[::]:3260\"]\nnop_interval = 2\n[[subsystem]]\nnqn = \"{NQN}\"\niqn = \"{IQN}\"\n{extra}\n\
         [[subsystem.namespace]]\nnsid = 1\n{backend}\nsize = {size}\n\
         [[subsystem.namespace]]\nnsid = 2\nbackend = \"memory\"\nsize = {}\nnvme = false\nread_only = true\n",
        16 * MIB
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `serve --config` in the target namespace, ready once 3260 accepts connections.
fn serve(pair: &VethPair, config: &Path) -> Target {
    Target::serve_config(pair, config, 3260)
}

fn url(pair: &VethPair, lun: u8) -> String {
    format!("iscsi://{}/{IQN}/{lun}", pair.target_addr)
}

fn run(pair: &VethPair, program: &Path, args: &[&str]) -> Output {
    pair.client
        .command(program)
        .args(args)
        .output()
        .expect("run tool")
}

/// The suite's summary line for tests: (total, ran, passed, failed).
fn summary(text: &str) -> (u32, u32, u32, u32) {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("tests "))
        .unwrap_or_else(|| panic!("no summary in:\n{text}"));
    let n: Vec<u32> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1], n[2], n[3])
}

/// Skipped tests as `Suite.Test` with the reason the suite printed.
fn skipped(text: &str) -> BTreeSet<(String, String)> {
    let mut suite = "";
    let mut test = "";
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            suite = s.trim();
        }
        if let Some((_, t)) = line.split_once("Test: ") {
            test = t.split_whitespace().next().unwrap_or("");
        }
        if let Some((_, why)) = line.split_once("[SKIPPED] ") {
            out.insert((format!("{suite}.{test}"), why.trim().to_string()));
        }
    }
    out
}

/// Runs iscsi-test-cu (every test, or `only`) against LUN 0 and checks it passes with
/// only the skips accounted for.
fn compliance_suite(pair: &VethPair, cu: &Path, only: Option<&str>) {
    let lun0 = url(pair, 0);
    let mut args = vec!["--dataloss"];
    if let Some(t) = only {
        args.extend(["-t", t]);
    }
    args.push(&lun0);
    let out = run(pair, cu, &args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let (total, ran, passed, failed) = summary(&text);
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("[FAILED]")).collect();
    assert_eq!(
        failed,
        0,
        "iscsi-test-cu failures:\n{}",
        failures.join("\n")
    );
    assert_eq!((ran, passed), (total, total));
    let skips = skipped(&text);
    let mut unexpected = Vec::new();
    for (test, why) in &skips {
        let ok = ALLOWED_SKIPS
            .iter()
            .any(|(reason, tests)| why.contains(reason) && tests.contains(&test.as_str()));
        if !ok {
            unexpected.push(format!("{test}: {why}"));
        }
    }
    assert!(
        unexpected.is_empty(),
        "skips not accounted for:\n{}",
        unexpected.join("\n")
    );
    let names: BTreeSet<&String> = skips.iter().map(|(t, _)| t).collect();
    eprintln!(
        "iscsi-test-cu: {total} tests, {passed} passed, {failed} failed, {} of them skipped in part or whole",
        names.len()
    );
}

#[test]
fn libiscsi_compliance_suite_passes_without_failures() {
    require_netns!();
    let cu = require_tool!("iscsi-test-cu");
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("cu", 128 * MIB, "");
    let t = serve(&pair, &cfg);
    compliance_suite(&pair, &cu, None);
    // The read-only LUN passes the ReadOnly suite instead of skipping it.
    let out = run(
        &pair,
        &cu,
        &["--dataloss", "-t", "ALL.ReadOnly", &url(&pair, 1)],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (total, _, passed, failed) = summary(&text);
    assert_eq!((failed, passed), (0, total), "{text}");
    // Only the commands that are not implemented skip there (ORWRITE).
    assert!(
        skipped(&text)
            .iter()
            .all(|(_, why)| why.contains("ORWRITE is not implemented")),
        "{text}"
    );
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// The same suite on a file-backed LUN, where block I/O goes through io_uring: COMPARE AND
/// WRITE compares the medium read into a scratch buffer with the verify half of the slot
/// (it once indexed past the scratch buffer and took the reactor down).
#[test]
fn libiscsi_compliance_suite_passes_on_a_file_backed_lun() {
    require_netns!();
    let cu = require_tool!("iscsi-test-cu");
    let pair = VethPair::create().expect("veth pair");
    let img = std::env::temp_dir().join(format!("xdp-target-iscsi-{}-cu.img", std::process::id()));
    let _ = std::fs::remove_file(&img);
    let backend = format!("backend = \"file\"\npath = \"{}\"", img.display());
    let cfg = config_with("cu-file", 128 * MIB, "", &backend);
    let t = serve(&pair, &cfg);
    compliance_suite(&pair, &cu, None);
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
    let _ = std::fs::remove_file(img);
}

#[test]
fn libiscsi_tools_discover_inquire_and_size_the_lun() {
    require_netns!();
    let ls = require_tool!("iscsi-ls");
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("tools", 64 * MIB, "");
    let t = serve(&pair, &cfg);
    let portal = format!("iscsi://{}", pair.target_addr);
    let out = run(&pair, &ls, &["-s", &portal]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("Target:{IQN} Portal:{}:3260,1", pair.target_addr)),
        "{text}"
    );
    assert!(text.contains("Lun:0") && text.contains("Lun:1"), "{text}");
    let inq = require_tool!("iscsi-inq");
    let out = run(&pair, &inq, &[&url(&pair, 0)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Vendor:XDPT") && text.contains("DIRECT_ACCESS"),
        "{text}"
    );
    let out = run(&pair, &inq, &["-e", "1", "-c", "0x83", &url(&pair, 0)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rc = require_tool!("iscsi-readcapacity16");
    let out = run(&pair, &rc, &[&url(&pair, 0)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Total size:{}", 64 * MIB)), "{text}");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// `xdp-target ctl call set_chap -` on a running target: CHAP is required from the next
/// login on (params from stdin, so the secret is not on a command line), and dropped again.
#[test]
fn ctl_sets_and_drops_chap_at_run_time() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let socket = std::env::temp_dir().join(format!("xdpt-ctl-chap-{}.sock", std::process::id()));
    let cfg = config(
        "ctl-chap",
        16 * MIB,
        &format!("[control]\nsocket = \"{}\"\n", socket.display()),
    );
    let t = serve(&pair, &cfg);
    let set_chap = |params: &str| {
        let mut child = Command::new(xdp_target_tests::target::bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&socket)
            .args(["call", "set_chap", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run xdp-target ctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(params.as_bytes())
            .expect("write params");
        let out = child.wait_with_output().expect("ctl output");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), 3260);
    let client = pair.client.handle();
    let login = move |chap: Option<&'static [u8]>| {
        client
            .run(move || {
                let mut o = LoginOptions::new(INITIATOR, Some(IQN));
                o.chap = chap.map(|s| ("alice".to_string(), s.to_vec()));
                Client::login(addr, o)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .expect("namespace thread")
    };
    login(None).expect("no CHAP yet");
    set_chap(&format!(
        r#"{{"iqn":"{IQN}","chap":{{"user":"alice","secret":"alice-secret-1"}}}}"#
    ));
    let refused = format!("LoginRefused({})", login_status::AUTHENTICATION_FAILURE);
    let e = login(None).expect_err("CHAP is required now");
    assert!(e.contains(&refused), "{e}");
    login(Some(b"alice-secret-1")).expect("CHAP login");
    set_chap(&format!(r#"{{"iqn":"{IQN}","chap":null}}"#));
    login(None).expect("CHAP dropped again");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
    let _ = std::fs::remove_file(socket);
}

#[test]
fn chap_and_mutual_chap_log_in_and_wrong_secrets_do_not() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config(
        "chap",
        16 * MIB,
        "chap = { user = \"alice\", secret = \"alice-secret-1\" }\n\
         mutual_chap = { user = \"target\", secret = \"target-secret-2\" }\n",
    );
    let t = serve(&pair, &cfg);
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), 3260);
    let login = move |secret: &[u8], mutual: Option<&[u8]>| {
        let mut o = LoginOptions::new(INITIATOR, Some(IQN));
        o.chap = Some(("alice".into(), secret.to_vec()));
        o.mutual = mutual.map(|m| ("target".to_string(), m.to_vec()));
        Client::login(addr, o).map(|_| ())
    };
    let results = pair
        .client
        .run(move || {
            (
                login(b"alice-secret-1", None),
                login(b"alice-secret-1", Some(b"target-secret-2")),
                login(b"wrong-secret-1", None),
                login(b"alice-secret-1", Some(b"not-the-target")),
                Client::login(addr, LoginOptions::new(INITIATOR, Some(IQN))).map(|_| ()),
            )
        })
        .expect("namespace thread");
    results.0.expect("CHAP login");
    results.1.expect("mutual CHAP login");
    let refused = format!("LoginRefused({})", login_status::AUTHENTICATION_FAILURE);
    let e = results
        .2
        .expect_err("a wrong secret is refused")
        .to_string();
    assert!(e.contains(&refused), "{e}");
    let e = results
        .3
        .expect_err("a target with the wrong secret is refused")
        .to_string();
    assert!(e.contains("mutual CHAP"), "{e}");
    let e = results.4.expect_err("CHAP is required").to_string();
    assert!(e.contains(&refused), "{e}");
    // libiscsi's own CHAP: the URL carries user%secret.
    if let Some(inq) = xdp_target_tests::iscsi::tool("iscsi-inq") {
        let good = format!("iscsi://alice%alice-secret-1@{}/{IQN}/0", pair.target_addr);
        let bad = format!("iscsi://alice%wrong@{}/{IQN}/0", pair.target_addr);
        assert!(run(&pair, &inq, &[&good]).status.success());
        assert!(!run(&pair, &inq, &[&bad]).status.success());
    }
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn perf_verify_over_iscsi_with_queues_digests_and_ipv6() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("perf", 16 * MIB, "");
    let t = serve(&pair, &cfg);
    let v4 = format!("iscsi://{}", pair.target_addr);
    let v6 = format!("iscsi://[{}]:3260/{IQN}/0", pair.target_addr6);
    for (target, workload, bs, digests) in [
        (&v4, "mixed", "4096", false),
        (&v4, "randwrite", "262144", true),
        (&v6, "mixed", "512", true),
    ] {
        let mut args = vec![
            "perf",
            target,
            "--workload",
            workload,
            "--bs",
            bs,
            "--qd",
            "8",
            "--queues",
            "3",
            "--time",
            "1",
            "--verify",
            "--json",
        ];
        if digests {
            args.push("--digests");
        }
        let out = run(&pair, &xdp_target_tests::target::bin(), &args);
        assert!(
            out.status.success(),
            "perf {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["mismatches"], 0, "{v}");
        assert!(v["ios"].as_u64().unwrap_or(0) > 50, "{v}");
        assert_eq!(v["nqn"], IQN, "found through SendTargets or named");
    }
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn fio_libiscsi_verify_job_runs_clean() {
    require_netns!();
    let fio = require_tool!("fio-libiscsi");
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("fio", 64 * MIB, "");
    let t = serve(&pair, &cfg);
    let filename = format!(
        "--filename=iscsi\\://{}\\:3260/{}/0",
        pair.target_addr,
        IQN.replace(':', "\\:")
    );
    let out = run(
        &pair,
        &fio,
        &[
            "--name=verify",
            "--ioengine=libiscsi",
            &filename,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=32m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            // No verify state file in the working directory.
            "--verify_state_save=0",
            "--output-format=json",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap_or(0)..])
        .unwrap_or_else(|e| panic!("fio JSON: {e}\n{text}"));
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert!(
        job["write"]["io_bytes"].as_u64().unwrap_or(0) >= 32 * MIB,
        "{job}"
    );
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap_or(0) >= 32 * MIB,
        "verify reads: {job}"
    );
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn malformed_pdus_end_only_their_own_connection() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("bad", 16 * MIB, "");
    let t = serve(&pair, &cfg);
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), 3260);
    pair.client
        .run(move || {
            let mut good =
                Client::login(addr, LoginOptions::new(INITIATOR, Some(IQN))).expect("login");
            let data: Vec<u8> = pattern(7, 1, 512);
            let w = good.rw(0, Some(data.clone()), 7, 1, 512).expect("write");
            assert_eq!(w.status, 0);
            // 1. A first PDU that is not a Login Request: login reject, then close.
            let mut c = TcpStream::connect(addr).expect("connect");
            let mut nop = [0u8; BHS_LEN];
            Bhs::new_unchecked(&mut nop[..]).init(Opcode::NopOut);
            std::io::Write::write_all(&mut c, &nop).expect("send");
            let mut resp = Vec::new();
            std::io::Read::read_to_end(&mut c, &mut resp).expect("closed");
            let h = Bhs::new_checked(&resp[..]).expect("a login response");
            assert_eq!(h.opcode(), Opcode::LoginResponse);
            assert_eq!(h.u16_at(36), login_status::INITIATOR_ERROR);
            // 2. A logged-in session sends a data segment over its MaxRecvDataSegmentLength:
            //    Reject, then close.
            let mut bad =
                Client::login(addr, LoginOptions::new(INITIATOR, Some(IQN))).expect("login");
            let mut cmd = [0u8; BHS_LEN];
            let mut v = Bhs::new_unchecked(&mut cmd[..]);
            v.init(Opcode::ScsiCommand);
            v.set_data_segment_len((1 << 24) - 1).expect("24 bits");
            bad.send_raw(&cmd).expect("send");
            let resp = bad.read_until_closed().expect("closed");
            assert_eq!(
                Bhs::new_checked(&resp[..]).expect("reject").opcode(),
                Opcode::Reject
            );
            // 3. An unknown opcode, then garbage.
            let mut junk =
                Client::login(addr, LoginOptions::new(INITIATOR, Some(IQN))).expect("login");
            let mut odd = [0xa5u8; BHS_LEN];
            odd[0] = 0x1f;
            odd[4] = 0;
            odd[5..8].copy_from_slice(&[0, 0, 0]);
            junk.send_raw(&odd).expect("send");
            junk.send_raw(&[0xff; 300]).expect("send");
            let _ = junk.read_until_closed();
            // The first session still reads its block back.
            let r = good.rw(0, None, 7, 1, 512).expect("read");
            assert_eq!((r.status, r.data), (0, data));
            // And new sessions still log in.
            Client::login(addr, LoginOptions::new(INITIATOR, Some(IQN))).expect("login after");
        })
        .expect("namespace thread");
    let log = t.log_text();
    assert!(log.contains("iSCSI login refused"), "{log}");
    assert!(log.contains("iSCSI protocol error"), "{log}");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn nvme_and_iscsi_serve_the_same_blocks() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = config("both", 16 * MIB, "");
    let t = serve(&pair, &cfg);
    let (nvme_addr, iscsi_addr) = (
        SocketAddr::new(IpAddr::V4(pair.target_addr), 4420),
        SocketAddr::new(IpAddr::V4(pair.target_addr), 3260),
    );
    pair.client
        .run(move || {
            use target_wire::nvme::opcode::{AdminOpcode, FeatureId, IoOpcode};
            use xdp_target_tests::nvme::{Client as Nvme, HOST_NQN};
            let mut a = Nvme::connect(nvme_addr, false).expect("connect");
            let c = a
                .fabrics_connect(0, 0xffff, NQN, HOST_NQN)
                .expect("connect");
            a.enable().expect("enable");
            let nq = u32::from(u8::from(FeatureId::NumberOfQueues));
            let f = a
                .admin(AdminOpcode::SetFeatures, 0, nq, 0, 0)
                .expect("set features");
            assert!(f.cqe.status.is_success(), "{:?}", f.cqe);
            let mut q = Nvme::connect(nvme_addr, false).expect("connect");
            let r = q
                .fabrics_connect(1, c.cqe.dw0 as u16, NQN, HOST_NQN)
                .expect("io queue");
            assert!(r.cqe.status.is_success(), "{:?}", r.cqe);
            let mut s =
                Client::login(iscsi_addr, LoginOptions::new(INITIATOR, Some(IQN))).expect("login");
            // NVMe writes, iSCSI reads; then iSCSI writes, NVMe reads.
            let one: Vec<u8> = (100..108).flat_map(|l| pattern(l, 1, 512)).collect();
            let w = q
                .io(IoOpcode::Write, 100, 8, 512, one.clone())
                .expect("nvme write");
            assert!(w.cqe.status.is_success(), "{:?}", w.cqe);
            let r = s.rw(0, None, 100, 8, 512).expect("iscsi read");
            assert_eq!((r.status, &r.data), (0, &one));
            let two: Vec<u8> = (200..208).flat_map(|l| pattern(l, 2, 512)).collect();
            assert_eq!(
                s.rw(0, Some(two.clone()), 200, 8, 512)
                    .expect("iscsi write")
                    .status,
                0
            );
            let r = q
                .io(IoOpcode::Read, 200, 8, 512, Vec::new())
                .expect("nvme read");
            assert_eq!(r.data, two);
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// `xdp-target ctl` adds, grows and removes a LUN under a logged-in session: the session's
/// next command on another LUN gets REPORTED LUNS DATA HAS CHANGED, the resized LUN
/// CAPACITY DATA HAS CHANGED, and REPORT LUNS, READ CAPACITY and I/O follow. Removing the
/// subsystem ends the session.
#[test]
fn ctl_changes_luns_with_unit_attentions() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let socket = std::env::temp_dir().join(format!("xdpt-ctl-lun-{}.sock", std::process::id()));
    let cfg = config(
        "ctl-lun",
        16 * MIB,
        &format!("[control]\nsocket = \"{}\"\n", socket.display()),
    );
    let t = serve(&pair, &cfg);
    let ctl = |args: &[&str]| {
        let (ok, out) = xdp_target_tests::target::ctl(&socket, args);
        assert!(ok, "ctl {args:?}: {out}");
        out
    };
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), 3260);
    let client = pair.client.handle();
    /// Sense key, ASC and ASCQ of a CHECK CONDITION, or `None` for GOOD.
    fn check(c: &target_proto::iscsi::host::ScsiCompletion) -> Option<(u8, u8, u8)> {
        (c.status != 0).then(|| (c.sense[2] & 0xf, c.sense[12], c.sense[13]))
    }
    const TUR: [u8; 6] = [0; 6];
    const REPORT_LUNS: [u8; 12] = [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    const READ_CAPACITY: [u8; 10] = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let luns = |c: &mut Client| {
        let r = c
            .command(0, &REPORT_LUNS, Vec::new(), 256)
            .expect("REPORT LUNS");
        assert_eq!(r.status, 0);
        u32::from_be_bytes(r.data[..4].try_into().expect("4 bytes")) / 8
    };
    let session = client
        .run(move || {
            let mut c =
                Client::login(addr, LoginOptions::new(INITIATOR, Some(IQN))).expect("login");
            assert_eq!(
                check(&c.command(0, &TUR, Vec::new(), 0).expect("TUR")),
                None
            );
            c
        })
        .expect("namespace thread");

    ctl(&["add-namespace", NQN, "3", "--size", "1MiB", "--no-nvme"]);
    let session = client
        .run(move || {
            let mut c = session;
            let r = c.command(0, &TUR, Vec::new(), 0).expect("TUR");
            assert_eq!(
                check(&r),
                Some((6, 0x3f, 0x0e)),
                "REPORTED LUNS DATA HAS CHANGED"
            );
            assert_eq!(
                check(&c.command(0, &TUR, Vec::new(), 0).expect("TUR")),
                None,
                "once"
            );
            assert_eq!(luns(&mut c), 3, "LUNs 0, 1 and the new 2");
            let data = pattern(5, 3, 512);
            let w = c.rw(2, Some(data.clone()), 5, 1, 512).expect("write");
            assert_eq!(w.status, 0);
            assert_eq!(c.rw(2, None, 5, 1, 512).expect("read").data, data);
            c
        })
        .expect("namespace thread");

    ctl(&["resize-namespace", NQN, "3", "4MiB"]);
    let session = client
        .run(move || {
            let mut c = session;
            let r = c
                .command(2, &READ_CAPACITY, Vec::new(), 8)
                .expect("READ CAPACITY");
            assert_eq!(
                check(&r),
                Some((6, 0x2a, 0x09)),
                "CAPACITY DATA HAS CHANGED"
            );
            let r = c
                .command(2, &READ_CAPACITY, Vec::new(), 8)
                .expect("READ CAPACITY");
            assert_eq!(check(&r), None);
            let last = u32::from_be_bytes(r.data[..4].try_into().expect("4 bytes"));
            assert_eq!(u64::from(last), 4 * MIB / 512 - 1);
            assert_eq!(
                c.rw(2, Some(pattern(8000, 1, 512)), 8000, 1, 512)
                    .expect("write")
                    .status,
                0
            );
            assert_eq!(
                c.rw(2, None, 5, 1, 512).expect("read").data,
                pattern(5, 3, 512)
            );
            assert_eq!(
                check(&c.command(0, &TUR, Vec::new(), 0).expect("TUR")),
                None,
                "LUN 0 unaffected"
            );
            c
        })
        .expect("namespace thread");

    ctl(&["remove-namespace", NQN, "3"]);
    let session = client
        .run(move || {
            let mut c = session;
            let r = c.command(0, &TUR, Vec::new(), 0).expect("TUR");
            assert_eq!(check(&r), Some((6, 0x3f, 0x0e)));
            assert_eq!(luns(&mut c), 2);
            let r = c.command(2, &TUR, Vec::new(), 0).expect("TUR");
            assert_eq!(check(&r), Some((5, 0x25, 0)), "LOGICAL UNIT NOT SUPPORTED");
            c
        })
        .expect("namespace thread");

    let out = ctl(&["remove-subsystem", NQN]);
    assert!(out.contains("\"sessions_ended\": 1"), "{out}");
    client
        .run(move || {
            let mut c = session;
            let mut ended = false;
            for _ in 0..50 {
                if c.command(0, &TUR, Vec::new(), 0).is_err() {
                    ended = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert!(ended, "the session of a removed target ends");
            assert!(
                Client::login(addr, LoginOptions::new(INITIATOR, Some(IQN))).is_err(),
                "and the target is gone"
            );
        })
        .expect("namespace thread");
    assert!(t.stop().expect("stop").success());
    for f in [cfg, socket] {
        let _ = std::fs::remove_file(f);
    }
}
