//! End-to-end tests of the XDP steering program and `xdp-target serve --xdp` / `stats`,
//! across two network namespaces joined by a veth pair. They need root; without it they
//! skip with a printed reason (and fail in CI, where they must run).
//!
//! Counts are checked exactly wherever the test knows exactly what it sent: frames it built
//! itself over AF_PACKET, and SYNs that the AF_XDP socket received. Kernel TCP connections
//! show behaviour (served, refused, dropped), where retransmissions make counts inexact.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use xdp_target_tests::frames::{self, IPPROTO_TCP, RawSender};
use xdp_target_tests::netns::{Netns, VethPair};
use xdp_target_tests::require_netns;
use xdp_target_tests::target::{self, Target, pin_dir, stats_json};
use xdp_target_tests::xsk::{Capture, tcp_dst_port};

const NVME: u16 = 4420;
const ISCSI: u16 = 3260;
const ECHO: u16 = 7000;

fn port_stat(stats: &Value, port: u16, kind: &str, action: &str) -> u64 {
    let ports = stats["ports"].as_array().expect("ports array");
    let entry = ports
        .iter()
        .find(|p| p["port"] == port)
        .unwrap_or_else(|| panic!("port {port} missing from stats: {stats}"));
    entry[kind][action].as_u64().expect("counter")
}

fn other_stat(stats: &Value, action: &str) -> u64 {
    stats["other"]["packets"][action].as_u64().expect("counter")
}

fn listen(ns: &Netns, addr: IpAddr, port: u16) -> TcpListener {
    ns.run(move || TcpListener::bind(SocketAddr::new(addr, port)))
        .expect("namespace thread")
        .expect("bind listener")
}

/// Accepts one connection and echoes what it reads until EOF.
fn echo_once(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("write");
        }
    })
}

fn connect(ns: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    ns.run(move || TcpStream::connect_timeout(&SocketAddr::new(addr, port), timeout))
        .expect("namespace thread")
}

/// An echo server on the target side and a full round trip to it through a kernel TCP
/// connection from the client side.
fn echo_round_trip(pair: &VethPair, addr: IpAddr, port: u16) {
    let echo = echo_once(listen(&pair.target, addr, port));
    let mut s = connect(&pair.client, addr, port, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let msg = b"xdp-target round trip";
    s.write_all(msg).expect("send");
    let mut back = [0u8; 21];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, msg);
    drop(s);
    echo.join().expect("echo server");
}

/// Asserts that a connect is answered at once with a refusal (the kernel saw the SYN).
fn assert_refused(ns: &Netns, addr: IpAddr, port: u16) {
    let err = connect(ns, addr, port, Duration::from_secs(5)).expect_err("nothing listens");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

/// `ip link show` of the target's interface.
fn link_show(pair: &VethPair) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            pair.target.name(),
            "link",
            "show",
            "dev",
            &pair.target_if,
        ])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stop_and_check_cleanup(t: Target, pair: &VethPair) {
    let status = t.stop().expect("stop");
    assert!(status.success(), "xdp-target exited with {status}");
    assert!(!pin_dir(&pair.target_if).exists(), "pins left behind");
    let text = link_show(pair);
    assert!(
        !text.contains("prog/xdp"),
        "XDP program still attached: {text}"
    );
}

/// `serve --xdp` on the target end, with an AF_XDP socket on rx queue 0 in its XSKS map.
fn serve_with_socket_on_queue_0(pair: &VethPair) -> (Target, Capture) {
    let t = Target::serve_xdp(&pair.target, &pair.target_if, &[]).expect("serve");
    let xsks = pin_dir(&pair.target_if).join("XSKS");
    let capture = Capture::start(&pair.target, &pair.target_if, 0, xsks).expect("AF_XDP socket");
    (t, capture)
}

#[test]
fn storage_ports_are_steered_to_the_af_xdp_socket_and_counted() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let (t, capture) = serve_with_socket_on_queue_0(&pair);

    // Kernel clients: their SYNs are steered away from the target's kernel, so they time out.
    let v4 = IpAddr::V4(pair.target_addr);
    let v6 = IpAddr::V6(pair.target_addr6);
    for (addr, port) in [(v4, NVME), (v4, ISCSI), (v6, NVME)] {
        let r = connect(&pair.client, addr, port, Duration::from_millis(300));
        assert!(
            r.is_err(),
            "a steered SYN must not reach the kernel's socket layer"
        );
    }
    // Traffic on another port completes untouched while the program is attached.
    echo_round_trip(&pair, v4, ECHO);

    let frames = capture.finish().expect("capture");
    let count = |port| {
        frames
            .iter()
            .filter(|f| tcp_dst_port(f) == Some(port))
            .count() as u64
    };
    let (nvme, iscsi) = (count(NVME), count(ISCSI));
    assert!(
        nvme >= 2,
        "expected IPv4 and IPv6 SYNs to {NVME}, got {nvme}"
    );
    assert!(iscsi >= 1, "expected SYNs to {ISCSI}, got {iscsi}");
    assert_eq!(
        nvme + iscsi,
        frames.len() as u64,
        "only storage-port frames reach AF_XDP"
    );

    let stats = stats_json(&pair.target_if).expect("stats");
    assert_eq!(
        port_stat(&stats, NVME, "packets", "redirected"),
        nvme,
        "{stats}"
    );
    assert_eq!(
        port_stat(&stats, ISCSI, "packets", "redirected"),
        iscsi,
        "{stats}"
    );
    let nvme_bytes: u64 = frames
        .iter()
        .filter(|f| tcp_dst_port(f) == Some(NVME))
        .map(|f| f.len() as u64)
        .sum();
    assert_eq!(port_stat(&stats, NVME, "bytes", "redirected"), nvme_bytes);
    for port in [NVME, ISCSI, 8009] {
        assert_eq!(port_stat(&stats, port, "packets", "redirect_failed"), 0);
        assert_eq!(port_stat(&stats, port, "packets", "dropped_acl"), 0);
    }
    assert!(
        other_stat(&stats, "passed") >= 6,
        "the echo connection passes: {stats}"
    );
    stop_and_check_cleanup(t, &pair);
}

#[test]
fn only_the_rx_queue_with_a_socket_redirects() {
    require_netns!();
    // Two queues, a socket on queue 0 only: each SYN lands on the queue of the client's
    // flow hash, and XSKS is looked up by that queue.
    let pair = VethPair::create_multiqueue(2).expect("veth pair");
    let (t, capture) = serve_with_socket_on_queue_0(&pair);
    let v4 = IpAddr::V4(pair.target_addr);
    let (mut refused, mut unanswered) = (0u64, 0u64);
    for _ in 0..24 {
        match connect(&pair.client, v4, NVME, Duration::from_millis(300)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(_) => unanswered += 1,
            Ok(_) => panic!("nothing listens on {NVME}"),
        }
    }
    let frames = capture.finish().expect("capture");
    let stats = stats_json(&pair.target_if).expect("stats");
    let redirected = port_stat(&stats, NVME, "packets", "redirected");
    assert_eq!(redirected, frames.len() as u64, "{stats}");
    // A refused connect is one SYN that found no socket on queue 1 and reached the kernel.
    assert_eq!(
        port_stat(&stats, NVME, "packets", "redirect_failed"),
        refused,
        "{stats}"
    );
    assert!(
        refused > 0 && unanswered > 0,
        "24 flows should use both queues: {refused} refused, {unanswered} unanswered"
    );
    stop_and_check_cleanup(t, &pair);
}

#[test]
fn without_a_socket_storage_traffic_falls_back_to_the_kernel() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let t = Target::serve_xdp(&pair.target, &pair.target_if, &[]).expect("serve");
    let v4 = IpAddr::V4(pair.target_addr);

    // Exactly one SYN each, answered by the kernel's RST: redirect fails, packet passes.
    for _ in 0..5 {
        assert_refused(&pair.client, v4, NVME);
    }
    let stats = stats_json(&pair.target_if).expect("stats");
    assert_eq!(
        port_stat(&stats, NVME, "packets", "redirect_failed"),
        5,
        "{stats}"
    );
    assert_eq!(port_stat(&stats, NVME, "packets", "redirected"), 0);

    // A kernel listener on a storage port serves through the fallback.
    echo_round_trip(&pair, v4, ISCSI);
    let stats = stats_json(&pair.target_if).expect("stats");
    assert!(
        port_stat(&stats, ISCSI, "packets", "redirect_failed") >= 4,
        "{stats}"
    );
    stop_and_check_cleanup(t, &pair);
}

#[test]
fn generic_skb_mode_attaches_and_counts() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let t =
        Target::serve_xdp(&pair.target, &pair.target_if, &["--xdp-mode", "skb"]).expect("serve");
    let text = link_show(&pair);
    assert!(
        text.contains("xdpgeneric"),
        "expected a generic-mode attach: {text}"
    );
    for _ in 0..3 {
        assert_refused(&pair.client, IpAddr::V4(pair.target_addr), ISCSI);
    }
    let stats = stats_json(&pair.target_if).expect("stats");
    assert_eq!(
        port_stat(&stats, ISCSI, "packets", "redirect_failed"),
        3,
        "{stats}"
    );
    stop_and_check_cleanup(t, &pair);
}

#[test]
fn count_only_mode_passes_storage_packets_and_counts_them() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let t = Target::serve_xdp(&pair.target, &pair.target_if, &["--count-only"]).expect("serve");
    for _ in 0..3 {
        assert_refused(&pair.client, IpAddr::V6(pair.target_addr6), NVME);
    }
    let stats = stats_json(&pair.target_if).expect("stats");
    assert_eq!(port_stat(&stats, NVME, "packets", "passed"), 3, "{stats}");
    assert_eq!(port_stat(&stats, NVME, "packets", "redirect_failed"), 0);
    assert_eq!(stats["ports"][0]["mode"], "count");
    stop_and_check_cleanup(t, &pair);
}

#[test]
fn the_allow_list_drops_other_sources_on_storage_ports_only() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let v4 = IpAddr::V4(pair.target_addr);
    let v6 = IpAddr::V6(pair.target_addr6);
    let args = [
        "--allow-source",
        "10.98.0.0/16",
        "--allow-source",
        "fd98::/16",
    ];
    let t = Target::serve_xdp(&pair.target, &pair.target_if, &args).expect("serve");
    let _nvme = listen(&pair.target, v4, NVME);

    // Exact counts from frames built here: 4 IPv4 and 2 IPv6 SYNs from outside the list.
    let raw = RawSender::open(&pair.client, &pair.client_if).expect("AF_PACKET");
    let dst = frames::mac_of(&pair.target, &pair.target_if).expect("mac");
    let src = frames::mac_of(&pair.client, &pair.client_if).expect("mac");
    let syn4 = frames::ethernet(
        dst,
        src,
        frames::ETH_P_IPV4,
        &frames::ipv4(
            pair.client_addr,
            pair.target_addr,
            IPPROTO_TCP,
            0,
            &[],
            &frames::tcp_syn(40000, NVME),
        ),
    );
    let syn6 = frames::ethernet(
        dst,
        src,
        frames::ETH_P_IPV6,
        &frames::ipv6(
            pair.client_addr6,
            pair.target_addr6,
            IPPROTO_TCP,
            &frames::tcp_syn(40001, NVME),
        ),
    );
    for _ in 0..4 {
        raw.send(&syn4).expect("send");
    }
    for _ in 0..2 {
        raw.send(&syn6).expect("send");
    }
    // Kernel clients: the listener exists, but the SYN never gets there.
    assert!(connect(&pair.client, v4, NVME, Duration::from_millis(300)).is_err());
    // Other ports are not subject to the list.
    echo_round_trip(&pair, v4, ECHO);

    let stats = stats_json(&pair.target_if).expect("stats");
    let dropped = port_stat(&stats, NVME, "packets", "dropped_acl");
    assert!(
        (7..=8).contains(&dropped),
        "6 crafted SYNs + the kernel's 1 (2 if retransmitted): {stats}"
    );
    let crafted_bytes = 4 * syn4.len() as u64 + 2 * syn6.len() as u64;
    assert!(
        port_stat(&stats, NVME, "bytes", "dropped_acl") > crafted_bytes,
        "{stats}"
    );
    assert_eq!(port_stat(&stats, NVME, "packets", "redirect_failed"), 0);
    stop_and_check_cleanup(t, &pair);

    // With the client's own addresses on the list, the same traffic is served.
    let args = [
        "--allow-source",
        "10.99.0.2",
        "--allow-source",
        "fd99::2/128",
    ];
    let t = Target::serve_xdp(&pair.target, &pair.target_if, &args).expect("serve");
    echo_round_trip(&pair, v6, ISCSI);
    let stats = stats_json(&pair.target_if).expect("stats");
    assert_eq!(
        port_stat(&stats, ISCSI, "packets", "dropped_acl"),
        0,
        "{stats}"
    );
    assert!(
        port_stat(&stats, ISCSI, "packets", "redirect_failed") >= 4,
        "{stats}"
    );
    stop_and_check_cleanup(t, &pair);
}

/// Frames whose TCP header the program cannot reach, from the pair's client addresses to
/// the target's NVMe/TCP port: IPv4 fragments (the first, with the whole SYN, and a later
/// one), an IPv6 fragment, an IPv6 chain one extension header longer than the program
/// walks, a QinQ IPv4 fragment. Each would reach the kernel's listener after reassembly or
/// through the kernel's own parsing.
fn unreachable_tcp_frames(pair: &VethPair, dst: [u8; 6], src: [u8; 6]) -> Vec<Vec<u8>> {
    let (s4, d4, s6, d6) = (
        pair.client_addr,
        pair.target_addr,
        pair.client_addr6,
        pair.target_addr6,
    );
    let syn = frames::tcp_syn(40000, NVME);
    let eth4 = |p: &[u8]| frames::ethernet(dst, src, frames::ETH_P_IPV4, p);
    let eth6 = |p: &[u8]| frames::ethernet(dst, src, frames::ETH_P_IPV6, p);
    let mut frag6 = vec![IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 1]; // offset 0, more fragments
    frag6.extend_from_slice(&syn);
    let mut deep_ext = Vec::new();
    for i in 0..7 {
        let next = if i == 6 { IPPROTO_TCP } else { 60 };
        deep_ext.extend_from_slice(&frames::ipv6_ext(next));
    }
    deep_ext.extend_from_slice(&syn);
    let first_fragment = frames::ipv4(s4, d4, IPPROTO_TCP, 0x2000, &[], &syn);
    vec![
        eth4(&first_fragment),
        eth4(&frames::ipv4(s4, d4, IPPROTO_TCP, 0x0003, &[], &syn[8..])),
        eth6(&frames::ipv6(s6, d6, 44, &frag6)),
        eth6(&frames::ipv6(s6, d6, 60, &deep_ext)),
        frames::ethernet_qinq(dst, src, 5, 7, frames::ETH_P_IPV4, &first_fragment),
    ]
}

#[test]
fn with_the_allow_list_on_fragments_and_qinq_from_other_sources_are_dropped() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let raw = RawSender::open(&pair.client, &pair.client_if).expect("AF_PACKET");
    let dst = frames::mac_of(&pair.target, &pair.target_if).expect("mac");
    let src = frames::mac_of(&pair.client, &pair.client_if).expect("mac");
    let opaque = unreachable_tcp_frames(&pair, dst, src);
    // A QinQ SYN: the program reads through both tags and finds the storage port.
    let qinq_syn = frames::ethernet_qinq(
        dst,
        src,
        5,
        7,
        frames::ETH_P_IPV4,
        &frames::ipv4(
            pair.client_addr,
            pair.target_addr,
            IPPROTO_TCP,
            0,
            &[],
            &frames::tcp_syn(40001, NVME),
        ),
    );
    // Not TCP, so not subject to the list even though the program cannot see a port: a UDP
    // fragment to the same address.
    let udp_fragment = frames::ethernet(
        dst,
        src,
        frames::ETH_P_IPV4,
        &frames::ipv4(
            pair.client_addr,
            pair.target_addr,
            17,
            0x2000,
            &[],
            &[0u8; 16],
        ),
    );
    let send_all = || {
        for f in opaque.iter().chain([&qinq_syn, &udp_fragment]) {
            raw.send(f).expect("send");
        }
    };

    // The client's addresses are outside the list: everything TCP is dropped.
    let args = [
        "--allow-source",
        "10.98.0.0/16",
        "--allow-source",
        "fd98::/16",
    ];
    let t = Target::serve_xdp(&pair.target, &pair.target_if, &args).expect("serve");
    let before = stats_json(&pair.target_if).expect("stats");
    send_all();
    let stats = stats_json(&pair.target_if).expect("stats");
    assert_eq!(
        other_stat(&stats, "dropped_acl"),
        opaque.len() as u64,
        "frames without a reachable TCP header, from outside the list: {stats}"
    );
    assert_eq!(
        port_stat(&stats, NVME, "packets", "dropped_acl"),
        1,
        "the QinQ SYN, by its port: {stats}"
    );
    assert!(
        other_stat(&stats, "passed") > other_stat(&before, "passed"),
        "the UDP fragment passes: {stats}"
    );
    stop_and_check_cleanup(t, &pair);

    // With the client's addresses on the list, the same frames go to the kernel as before.
    let args = [
        "--allow-source",
        "10.99.0.2",
        "--allow-source",
        "fd99::2/128",
    ];
    let t = Target::serve_xdp(&pair.target, &pair.target_if, &args).expect("serve");
    let before = stats_json(&pair.target_if).expect("stats");
    send_all();
    let stats = stats_json(&pair.target_if).expect("stats");
    assert_eq!(other_stat(&stats, "dropped_acl"), 0, "{stats}");
    assert!(
        other_stat(&stats, "passed") - other_stat(&before, "passed") > opaque.len() as u64,
        "the frames without a TCP header and the UDP fragment: {stats}"
    );
    assert_eq!(port_stat(&stats, NVME, "packets", "dropped_acl"), 0);
    assert_eq!(
        port_stat(&stats, NVME, "packets", "passed"),
        1,
        "the QinQ SYN is allowed and, tagged, passes to the kernel: {stats}"
    );
    stop_and_check_cleanup(t, &pair);
}

#[test]
fn malformed_and_unusual_frames_pass_without_harm() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let t = Target::serve_xdp(&pair.target, &pair.target_if, &[]).expect("serve");
    let raw = RawSender::open(&pair.client, &pair.client_if).expect("AF_PACKET");
    let dst = frames::mac_of(&pair.target, &pair.target_if).expect("mac");
    let src = frames::mac_of(&pair.client, &pair.client_if).expect("mac");
    let (s4, d4, s6, d6) = (
        pair.client_addr,
        pair.target_addr,
        pair.client_addr6,
        pair.target_addr6,
    );
    let eth4 = |p: &[u8]| frames::ethernet(dst, src, frames::ETH_P_IPV4, p);
    let eth6 = |p: &[u8]| frames::ethernet(dst, src, frames::ETH_P_IPV6, p);
    let syn = frames::tcp_syn(40000, NVME);
    let good4 = frames::ipv4(s4, d4, IPPROTO_TCP, 0, &[], &syn);

    let mut bad_ihl = good4.clone();
    bad_ihl[0] = 0x44; // IHL 4: shorter than the fixed header
    let mut long_ihl = good4.clone();
    long_ihl[0] = 0x4f; // IHL 15: options run past the frame
    long_ihl.truncate(30);
    let mut bad_doff = good4.clone();
    bad_doff[20 + 12] = 2 << 4; // TCP data offset 2
    let mut not_v6 = frames::ipv6(s6, d6, IPPROTO_TCP, &syn);
    not_v6[0] = 0x40; // IPv6 ethertype, version 4
    let mut deep_ext = Vec::new();
    for i in 0..7 {
        // Seven destination-options headers, one more than the program walks.
        let next = if i == 6 { IPPROTO_TCP } else { 60 };
        deep_ext.extend_from_slice(&frames::ipv6_ext(next));
    }
    deep_ext.extend_from_slice(&syn);
    let mut ext_past_end = frames::ipv6_ext(IPPROTO_TCP).to_vec();
    ext_past_end[1] = 200; // length far beyond the frame
    ext_past_end.extend_from_slice(&syn);

    let malformed: Vec<Vec<u8>> = vec![
        frames::ethernet(dst, src, frames::ETH_P_IPV4, &[]), // header only
        frames::ethernet(dst, src, frames::ETH_P_IPV4, &[0x45, 0, 0]), // truncated IP
        eth4(&bad_ihl),
        eth4(&long_ihl),
        eth4(&frames::ipv4(s4, d4, IPPROTO_TCP, 0, &[], &syn[..10])), // truncated TCP
        eth4(&frames::ipv4(s4, d4, IPPROTO_TCP, 0x2000, &[], &syn)),  // first fragment (MF)
        eth4(&frames::ipv4(s4, d4, IPPROTO_TCP, 0x0010, &[], &syn)),  // later fragment
        eth4(&bad_doff),
        eth4(&frames::ipv4(s4, d4, 17, 0, &[], &syn)), // UDP to 4420
        eth6(&not_v6),
        eth6(&frames::ipv6(s6, d6, 60, &deep_ext)),
        eth6(&frames::ipv6(s6, d6, 0, &ext_past_end)),
        eth6(&frames::ipv6(
            s6,
            d6,
            44,
            &[IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 1],
        )), // fragment header
        frames::ethernet_vlan(dst, src, 5, frames::ETH_P_8021Q, &[0; 8]), // double tag
        frames::ethernet(dst, src, 0x88b5, &[0xff; 64]), // local experimental ethertype
    ];
    // Positive controls: well-formed storage packets in the shapes the parser must follow.
    let mut opts_and_ext = frames::ipv6_ext(IPPROTO_TCP).to_vec();
    opts_and_ext.extend_from_slice(&syn);
    let steerable: Vec<Vec<u8>> = vec![
        eth4(&frames::ipv4(s4, d4, IPPROTO_TCP, 0, &[1, 1, 1, 0], &syn)), // IPv4 options (NOPs)
        eth6(&frames::ipv6(s6, d6, 60, &opts_and_ext)),                   // one extension header
    ];
    // Tagged storage packets go to the kernel: the AF_XDP path's frames are untagged.
    let tagged = [frames::ethernet_vlan(
        dst,
        src,
        7,
        frames::ETH_P_IPV4,
        &good4,
    )];
    let before = stats_json(&pair.target_if).expect("stats");
    for f in malformed.iter().chain(&steerable).chain(&tagged) {
        raw.send(f).expect("send");
    }
    let stats = stats_json(&pair.target_if).expect("stats");
    let passed = other_stat(&stats, "passed") - other_stat(&before, "passed");
    assert!(
        passed >= malformed.len() as u64,
        "every malformed frame passes: {passed} < {}",
        malformed.len()
    );
    assert_eq!(
        port_stat(&stats, NVME, "packets", "redirect_failed"),
        steerable.len() as u64,
        "only the well-formed storage packets are steered: {stats}"
    );
    assert_eq!(
        port_stat(&stats, NVME, "packets", "passed"),
        tagged.len() as u64,
        "tagged storage packets pass to the kernel: {stats}"
    );
    for action in ["redirected", "dropped_acl"] {
        assert_eq!(
            port_stat(&stats, NVME, "packets", action),
            0,
            "{action}: {stats}"
        );
    }
    // Still attached and serving.
    assert_refused(&pair.client, IpAddr::V4(pair.target_addr), NVME);
    stop_and_check_cleanup(t, &pair);
}

#[test]
fn attach_errors_are_one_clear_line() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let run = |args: &[&str]| {
        let out = pair
            .target
            .command(target::bin())
            .args(args)
            .output()
            .expect("run xdp-target");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["serve", "--xdp", "nosuch0"]);
    assert!(!ok);
    assert!(
        err.contains("no network interface named \"nosuch0\""),
        "{err}"
    );

    let t = Target::serve_xdp(&pair.target, &pair.target_if, &[]).expect("serve");
    let (ok, err) = run(&["serve", "--xdp", &pair.target_if]);
    assert!(!ok);
    assert!(err.contains("already attached"), "{err}");
    // The failed second attach left the first one's pins alone.
    assert!(stats_json(&pair.target_if).is_ok());
    stop_and_check_cleanup(t, &pair);

    let out = std::process::Command::new(target::bin())
        .args(["stats", "--iface", &pair.target_if])
        .output()
        .expect("stats");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no xdp-target is serving"));
}

/// With the target serving through AF_XDP, only storage-port packets to an address its
/// user-space stack answers for are redirected; the same SYN to another address goes to
/// the kernel (the stack could not answer it, and must learn nothing from it).
#[test]
fn only_packets_to_the_stacks_addresses_are_redirected() {
    require_netns!();
    let pair = VethPair::create().expect("veth pair");
    let cfg = std::env::temp_dir().join(format!("xdp-target-local-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[nvme]\nlisten = [\"0.0.0.0:4420\"]\n[iscsi]\nlisten = []\n[[subsystem]]\n\
         nqn = \"nqn.2026-11.dev.xdp-target:local\"\n[[subsystem.namespace]]\nnsid = 1\n\
         backend = \"memory\"\nsize = \"4MiB\"\n",
    )
    .expect("config");
    pair.client_checksums_in_software()
        .expect("client checksums in software");
    let addr = SocketAddr::new(IpAddr::V4(pair.target_addr), NVME);
    let client = pair.client.handle();
    let t = Target::serve_afxdp(&pair.target, &pair.target_if, &cfg, move || {
        client.run(move || connect_once(addr)).unwrap_or(false)
    })
    .expect("serve");
    let raw = RawSender::open(&pair.client, &pair.client_if).expect("AF_PACKET");
    let dst = frames::mac_of(&pair.target, &pair.target_if).expect("mac");
    let src = frames::mac_of(&pair.client, &pair.client_if).expect("mac");
    let mut other = pair.target_addr.octets();
    other[3] = other[3].wrapping_add(100);
    let syn = |to: std::net::Ipv4Addr, port| {
        frames::ethernet(
            dst,
            src,
            frames::ETH_P_IPV4,
            &frames::ipv4_tcp_syn(pair.client_addr, to, port, NVME, 7),
        )
    };
    let before = stats_json(&pair.target_if).expect("stats");
    raw.send(&syn(pair.target_addr, 41_000)).expect("send");
    raw.send(&syn(other.into(), 41_001)).expect("send");
    std::thread::sleep(Duration::from_millis(100));
    let stats = stats_json(&pair.target_if).expect("stats");
    let delta = |action| {
        port_stat(&stats, NVME, "packets", action) - port_stat(&before, NVME, "packets", action)
    };
    // The SYN to the stack's address, and the client kernel's RST to the stack's SYN-ACK.
    assert!(
        delta("redirected") >= 1,
        "the SYN to the stack's address: {stats}"
    );
    assert_eq!(delta("passed"), 1, "the SYN to another address: {stats}");
    assert!(t.stop().expect("stop").success());
    let _ = std::fs::remove_file(cfg);
}

/// Whether a TCP connection to `addr` opens (from the calling thread's namespace).
fn connect_once(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
