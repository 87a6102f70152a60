//! Prometheus metrics: what the target counts, and the text exposition an HTTP endpoint
//! ([`http`]) serves on `GET /metrics` (`[metrics] listen` or `serve --metrics ADDR`).
//!
//! Counting happens on the reactors' hot paths, so it is atomics only: every handle a
//! reactor updates (a namespace's counters and latency histogram, a transport's connection
//! counters) is looked up once when the reactor is built, and an update is a relaxed
//! `fetch_add`, with no lock and no allocation. The registry's own locks (its label
//! families) are taken only at start and at scrape time. The XDP program's counters are
//! read from its pinned maps at scrape time; the AF_XDP sockets' counters are published by
//! their reactors every [`crate::reactor::TICK`] into atomics.
//!
//! Names carry the `xdpt_` prefix; counters end in `_total` (the encoder adds it). The
//! format is Prometheus text 0.0.4.

pub mod http;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use target_common::Action;
use tracing::warn;

use crate::reactor::engine::Proto;
use crate::transport::xdp::xsk::XskStats;

/// The `Content-Type` of what [`Metrics::encode`] returns.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency buckets, in nanoseconds: 10 µs doubling to 163.84 ms (15
/// buckets, then +Inf), which spans a memory namespace's microseconds and a slow disk's
/// tens of milliseconds.
const LATENCY_BOUNDS_NS: [u64; 15] = {
    let mut b = [0u64; 15];
    let mut i = 0;
    while i < b.len() {
        b[i] = 10_000 << i;
        i += 1;
    }
    b
};

/// A latency histogram that block I/O can update without a lock.
///
/// prometheus-client's `Histogram` takes a mutex on every observation; this one is an
/// atomic per bucket and an atomic sum, and encodes through the same encoder. Its count is
/// the sum of its buckets, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Latency(Arc<LatencyInner>);

#[derive(Debug, Default)]
struct LatencyInner {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let mut buckets = [(0.0, 0); LATENCY_BOUNDS_NS.len()];
        for (out, (bound, n)) in buckets
            .iter_mut()
            .zip(LATENCY_BOUNDS_NS.iter().zip(&self.0.buckets))
        {
            *out = (*bound as f64 / 1e9, n.load(Ordering::Relaxed));
        }
        let above = self.0.buckets[LATENCY_BOUNDS_NS.len()].load(Ordering::Relaxed);
        let count = buckets.iter().map(|b| b.1).sum::<u64>() + above;
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A namespace as the metrics name it: its subsystem and NSID (an iSCSI LUN is NSID - 1
/// of the same namespace). One per backend, in backend order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceName {
    pub subsystem: String,
    pub nsid: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IoLabels {
    subsystem: String,
    nsid: u32,
    direction: &'static str,
}

/// One namespace's counters for one direction.
#[derive(Clone, Debug)]
pub struct DirectionIo {
    ops: Counter,
    bytes: Counter,
    errors: Counter,
    latency: Latency,
}

impl DirectionIo {
    /// A block operation of `bytes` finished after `took`; `ok` unless the backend failed.
    pub fn done(&self, bytes: u64, ok: bool, took: Duration) {
        self.ops.inc();
        if ok {
            self.bytes.inc_by(bytes);
        } else {
            self.errors.inc();
        }
        self.latency.observe(took);
    }
}

/// One namespace's I/O counters (a backend's), as a reactor's block runner holds them.
#[derive(Clone, Debug)]
pub struct NamespaceIo {
    pub read: DirectionIo,
    pub write: DirectionIo,
}

/// The per-namespace I/O metric families.
#[derive(Debug)]
struct IoFamilies {
    ops: Family<IoLabels, Counter>,
    bytes: Family<IoLabels, Counter>,
    errors: Family<IoLabels, Counter>,
    latency: Family<IoLabels, Latency>,
}

impl IoFamilies {
    /// Namespace `n`'s counters, both directions.
    fn namespace(&self, n: &NamespaceName) -> NamespaceIo {
        let dir = |direction| {
            let l = IoLabels {
                subsystem: n.subsystem.clone(),
                nsid: n.nsid,
                direction,
            };
            DirectionIo {
                ops: self.ops.get_or_create_owned(&l),
                bytes: self.bytes.get_or_create_owned(&l),
                errors: self.errors.get_or_create_owned(&l),
                latency: self.latency.get_or_create_owned(&l),
            }
        };
        NamespaceIo {
            read: dir("read"),
            write: dir("write"),
        }
    }
}

/// Which transport served a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Socket,
    Xdp,
    Rdma,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Xdp => "xdp",
            Self::Rdma => "rdma",
        }
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Nvme => "nvme",
        Proto::Iscsi => "iscsi",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    transport: &'static str,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    transport: &'static str,
    protocol: &'static str,
    reason: &'static str,
}

/// One protocol's connection counters on one transport.
#[derive(Clone, Debug)]
pub struct ProtoConns {
    open: Gauge,
    accepted: Counter,
    closed: Counter,
    /// Refused at `max_connections_per_reactor`.
    pub refused_limit: Counter,
    /// Refused because the source is outside `xdp.allow_sources` (kernel-socket listeners;
    /// on its interface the XDP program drops such packets, see `xdpt_xdp_packets_total`).
    pub refused_allow_list: Counter,
}

impl ProtoConns {
    pub fn accepted(&self) {
        self.accepted.inc();
        self.open.inc();
    }

    pub fn closed(&self) {
        self.closed.inc();
        self.open.dec();
    }
}

/// A transport's connection counters, as its reactors hold them.
#[derive(Clone, Debug)]
pub struct TransportConns {
    nvme: ProtoConns,
    iscsi: ProtoConns,
}

impl TransportConns {
    pub fn of(&self, p: Proto) -> &ProtoConns {
        match p {
            Proto::Nvme => &self.nvme,
            Proto::Iscsi => &self.iscsi,
        }
    }
}

/// Every counter the target keeps, and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    namespaces: Vec<NamespaceIo>,
    io: IoFamilies,
    open: Family<ConnLabels, Gauge>,
    accepted: Family<ConnLabels, Counter>,
    closed: Family<ConnLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    afxdp: Arc<AfXdpQueues>,
}

impl Metrics {
    /// Counters for `namespaces` (one per backend, in backend order) and, with `xdp_iface`,
    /// the counters of the XDP program attached there.
    pub fn new(namespaces: &[NamespaceName], xdp_iface: Option<&str>) -> Self {
        let mut registry = Registry::with_prefix("xdpt");
        let ops = Family::<IoLabels, Counter>::default();
        let bytes = Family::<IoLabels, Counter>::default();
        let errors = Family::<IoLabels, Counter>::default();
        let latency = Family::<IoLabels, Latency>::default();
        registry.register(
            "io_ops",
            "Block operations completed per namespace and direction, failed ones included \
             (an NVMe Read or Write, a SCSI READ or WRITE; flushes, unmaps and compares are \
             not counted)",
            ops.clone(),
        );
        registry.register(
            "io_bytes",
            "Bytes read from or written to a namespace by block operations that succeeded",
            bytes.clone(),
        );
        registry.register(
            "io_errors",
            "Block operations the backend failed (the host got a media error)",
            errors.clone(),
        );
        registry.register(
            "io_duration_seconds",
            "Time from the start of a block operation to its completion, measured by the \
             reactor (io_uring: submission to reaped completion; memory: the copy)",
            latency.clone(),
        );
        let open = Family::<ConnLabels, Gauge>::default();
        let accepted = Family::<ConnLabels, Counter>::default();
        let closed = Family::<ConnLabels, Counter>::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_open",
            "Connections being served, per transport and protocol",
            open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections accepted and handed to a protocol engine",
            accepted.clone(),
        );
        registry.register(
            "connections_closed",
            "Accepted connections that ended, for any reason",
            closed.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed or reset before they were served: reason connection_limit \
             (max_connections_per_reactor) or allow_list (source outside xdp.allow_sources, \
             kernel-socket listeners)",
            refused.clone(),
        );
        if let Some(iface) = xdp_iface {
            registry.register_collector(Box::new(XdpProgram {
                iface: iface.to_string(),
                warned: AtomicBool::new(false),
            }));
        }
        let afxdp = Arc::new(AfXdpQueues::default());
        registry.register_collector(Box::new(Arc::clone(&afxdp)));
        let io = IoFamilies {
            ops,
            bytes,
            errors,
            latency,
        };
        let namespaces = namespaces.iter().map(|n| io.namespace(n)).collect();
        Self {
            registry,
            namespaces,
            io,
            open,
            accepted,
            closed,
            refused,
            afxdp,
        }
    }

    /// The namespaces' counters by backend index, for a reactor's block runner.
    pub fn namespace_io(&self) -> Vec<NamespaceIo> {
        self.namespaces.clone()
    }

    /// The counters of a namespace added at run time.
    pub fn add_namespace(&self, n: &NamespaceName) -> NamespaceIo {
        self.io.namespace(n)
    }

    /// A namespace was removed: its series leave the exposition (a namespace added again
    /// under the same name starts from zero, as Prometheus expects of a new series).
    pub fn remove_namespace(&self, n: &NamespaceName) {
        for direction in ["read", "write"] {
            let l = IoLabels {
                subsystem: n.subsystem.clone(),
                nsid: n.nsid,
                direction,
            };
            self.io.ops.remove(&l);
            self.io.bytes.remove(&l);
            self.io.errors.remove(&l);
            self.io.latency.remove(&l);
        }
    }

    /// A transport's connection counters, for its reactors.
    pub fn transport(&self, t: Transport) -> TransportConns {
        let proto = |p| {
            let l = ConnLabels {
                transport: t.name(),
                protocol: proto_name(p),
            };
            let refused = |reason| {
                self.refused.get_or_create_owned(&RefusedLabels {
                    transport: l.transport,
                    protocol: l.protocol,
                    reason,
                })
            };
            ProtoConns {
                open: self.open.get_or_create_owned(&l),
                accepted: self.accepted.get_or_create_owned(&l),
                closed: self.closed.get_or_create_owned(&l),
                refused_limit: refused("connection_limit"),
                // The XDP path has no allow-list refusals: the program drops the packets.
                refused_allow_list: if t == Transport::Socket {
                    refused("allow_list")
                } else {
                    Counter::default()
                },
            }
        };
        TransportConns {
            nvme: proto(Proto::Nvme),
            iscsi: proto(Proto::Iscsi),
        }
    }

    /// Where the AF_XDP reactor of `queue` publishes its socket's counters.
    pub fn afxdp_queue(&self, queue: u32) -> Arc<QueueCounters> {
        let q = Arc::new(QueueCounters {
            queue,
            values: Default::default(),
        });
        self.afxdp
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::clone(&q));
        q
    }

    /// The exposition text (Prometheus text format 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String fails only if an encoder does; ours do not.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            warn!("encoding the metrics failed: {e}");
        }
        out
    }
}

/// The counters of one AF_XDP socket, in [`AFXDP_FIELDS`] order, as its reactor last
/// published them.
#[derive(Debug)]
pub struct QueueCounters {
    queue: u32,
    values: [AtomicU64; AFXDP_FIELDS.len()],
}

/// Which metric each of a queue's counters is (packets, dropped, kernel) and its label.
const AFXDP_FIELDS: [(AfXdpMetric, &str); 14] = [
    (AfXdpMetric::Packets, "rx"),
    (AfXdpMetric::Packets, "tx"),
    (AfXdpMetric::Dropped, "tx_no_frame"),
    (AfXdpMetric::Dropped, "tx_no_neighbour"),
    (AfXdpMetric::Dropped, "rx_too_long"),
    (AfXdpMetric::Dropped, "rx_foreign"),
    (AfXdpMetric::Kernel, "rx_dropped"),
    (AfXdpMetric::Kernel, "rx_invalid_descs"),
    (AfXdpMetric::Kernel, "tx_invalid_descs"),
    (AfXdpMetric::Kernel, "rx_ring_full"),
    (AfXdpMetric::Kernel, "rx_fill_ring_empty_descs"),
    (AfXdpMetric::Kernel, "tx_ring_empty_descs"),
    (AfXdpMetric::Retransmits, "timeout"),
    (AfXdpMetric::Retransmits, "fast"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfXdpMetric {
    Packets,
    Dropped,
    Kernel,
    Retransmits,
}

impl AfXdpMetric {
    /// Name, help, and the name of the label that tells the counters apart.
    fn describe(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Packets => (
                "afxdp_packets",
                "Packets the AF_XDP socket of a queue received (rx) and sent (tx), as its \
                 reactor last published them (every 100 ms).",
                "direction",
            ),
            Self::Dropped => (
                "afxdp_dropped",
                "Packets the XDP path dropped in user space: tx_no_frame (sent while no \
                 UMEM frame was free; TCP retransmits them), tx_no_neighbour (the peer's MAC \
                 was never seen), rx_too_long (a multi-buffer packet longer than an IP \
                 packet), rx_foreign (not TCP to one of the stack's addresses).",
                "reason",
            ),
            Self::Kernel => (
                "afxdp_kernel_events",
                "The kernel's XDP_STATISTICS of the AF_XDP socket of a queue: drops \
                 (rx_dropped, rx_ring_full), invalid descriptors, and how often the fill \
                 ring (rx) or the tx ring was found empty.",
                "event",
            ),
            Self::Retransmits => (
                "afxdp_tcp_retransmits",
                "Segments the user-space TCP/IP stack of a queue retransmitted: after a \
                 retransmission timeout (timeout) or on three duplicate ACKs (fast).",
                "kind",
            ),
        }
    }
}

impl QueueCounters {
    /// Publishes the socket's counters (`kernel`: the kernel's, when it gave them) and the
    /// stack's retransmissions (after a timeout, fast).
    pub fn publish(
        &self,
        s: &XskStats,
        kernel: Option<xdpilone::xdp::XdpStatisticsV2>,
        retransmits: (u64, u64),
    ) {
        let user = [
            s.rx_packets,
            s.tx_packets,
            s.tx_no_frame,
            s.tx_no_neighbour,
            s.rx_too_long,
            s.rx_foreign,
        ];
        for (v, n) in self.values.iter().zip(user) {
            v.store(n, Ordering::Relaxed);
        }
        if let Some(k) = kernel {
            let kernel = [
                k.rx_dropped,
                k.rx_invalid_descs,
                k.tx_invalid_descs,
                k.rx_ring_full,
                k.rx_fill_ring_empty_descs,
                k.tx_ring_empty_descs,
            ];
            for (v, n) in self.values[user.len()..].iter().zip(kernel) {
                v.store(n, Ordering::Relaxed);
            }
        }
        let tcp = [retransmits.0, retransmits.1];
        for (v, n) in self.values[AFXDP_FIELDS.len() - tcp.len()..]
            .iter()
            .zip(tcp)
        {
            v.store(n, Ordering::Relaxed);
        }
    }
}

/// The AF_XDP sockets' published counters, encoded at scrape time.
#[derive(Debug, Default)]
struct AfXdpQueues {
    queues: Mutex<Vec<Arc<QueueCounters>>>,
}

impl Collector for AfXdpQueues {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queues.is_empty() {
            return Ok(());
        }
        for metric in [
            AfXdpMetric::Packets,
            AfXdpMetric::Dropped,
            AfXdpMetric::Kernel,
            AfXdpMetric::Retransmits,
        ] {
            let (name, help, label) = metric.describe();
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for q in queues.iter() {
                for ((which, value), v) in AFXDP_FIELDS.iter().zip(&q.values) {
                    if *which != metric {
                        continue;
                    }
                    let labels = [
                        ("queue", q.queue.to_string()),
                        (label, (*value).to_string()),
                    ];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&v.load(Ordering::Relaxed), None)?;
                }
            }
        }
        Ok(())
    }
}

/// The XDP program's per-port counters, read from its pinned per-CPU map at scrape time
/// (the code `xdp-target stats` uses) and summed over CPUs.
#[derive(Debug)]
struct XdpProgram {
    iface: String,
    /// A failed read is logged once; the scrape then leaves these metrics out.
    warned: AtomicBool,
}

impl Collector for XdpProgram {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let rows = match crate::transport::xdp::stats::read(&self.iface) {
            Ok(rows) => rows,
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    warn!("metrics: the XDP program's counters cannot be read (left out): {e}");
                }
                return Ok(());
            }
        };
        encode_xdp(&mut encoder, &rows)
    }
}

/// The XDP program's counters, one series per port and action.
fn encode_xdp(
    encoder: &mut DescriptorEncoder<'_>,
    rows: &[crate::transport::xdp::stats::Row],
) -> fmt::Result {
    let bytes_help = "Bytes (the frames' linear part from the Ethernet header on) the XDP \
                      program handled, per storage port (other: everything else) and action.";
    for (name, help, bytes) in [
        (
            "xdp_packets",
            "Packets the XDP program handled, per storage port (other: everything else) \
             and action (redirected to AF_XDP, passed to the kernel, redirect_failed: no \
             AF_XDP socket on the queue, dropped_acl: source outside xdp.allow_sources).",
            false,
        ),
        ("xdp_bytes", bytes_help, true),
    ] {
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for r in rows {
            let port = r
                .port
                .map_or_else(|| "other".to_string(), |p| p.to_string());
            for a in Action::ALL {
                let v = if bytes {
                    r.counters.bytes[a as usize]
                } else {
                    r.counters.packets[a as usize]
                };
                let labels = [("port", port.clone()), ("action", a.name().to_string())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name and labels exactly as exposed).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().expect("a number"))
    }

    fn metrics() -> Metrics {
        Metrics::new(
            &[
                NamespaceName {
                    subsystem: "nqn.a".into(),
                    nsid: 1,
                },
                NamespaceName {
                    subsystem: "nqn.b".into(),
                    nsid: 7,
                },
            ],
            None,
        )
    }

    #[test]
    fn namespace_io_is_exposed_per_subsystem_nsid_and_direction() {
        let m = metrics();
        let io = m.namespace_io();
        io[1].write.done(4096, true, Duration::from_micros(30));
        io[1].write.done(8192, true, Duration::from_micros(30));
        io[1].write.done(512, false, Duration::from_micros(30));
        io[0].read.done(512, true, Duration::from_micros(5));
        let t = m.encode();
        let w = r#"{subsystem="nqn.b",nsid="7",direction="write"}"#;
        let r = r#"{subsystem="nqn.a",nsid="1",direction="read"}"#;
        assert_eq!(
            value(&t, &format!("xdpt_io_ops_total{w}")),
            Some(3.0),
            "{t}"
        );
        assert_eq!(value(&t, &format!("xdpt_io_bytes_total{w}")), Some(12288.0));
        assert_eq!(value(&t, &format!("xdpt_io_errors_total{w}")), Some(1.0));
        assert_eq!(value(&t, &format!("xdpt_io_ops_total{r}")), Some(1.0));
        assert_eq!(value(&t, &format!("xdpt_io_bytes_total{r}")), Some(512.0));
        // Every namespace and direction is there from the start, at zero.
        let idle = r#"{subsystem="nqn.b",nsid="7",direction="read"}"#;
        assert_eq!(value(&t, &format!("xdpt_io_ops_total{idle}")), Some(0.0));
        for name in [
            "xdpt_io_ops_total",
            "xdpt_io_bytes_total",
            "xdpt_io_errors_total",
            "xdpt_io_duration_seconds",
        ] {
            assert!(t.contains(&format!("# HELP {name} ")), "{name} has help");
        }
        assert!(t.contains("# TYPE xdpt_io_duration_seconds histogram\n"));
        assert!(t.contains("# TYPE xdpt_io_ops_total counter\n"));
    }

    #[test]
    fn a_latency_lands_in_its_bucket() {
        let m = metrics();
        let io = m.namespace_io();
        // 15 µs: above the 10 µs bound, within 20 µs.
        io[0].write.done(512, true, Duration::from_micros(15));
        // 10 µs exactly: the first bucket (bounds are inclusive).
        io[0].write.done(512, true, Duration::from_micros(10));
        // 1 s: above every bound, in +Inf only.
        io[0].write.done(512, true, Duration::from_secs(1));
        let t = m.encode();
        let b = |le: &str| {
            value(
                &t,
                &format!(
                    r#"xdpt_io_duration_seconds_bucket{{subsystem="nqn.a",nsid="1",direction="write",le="{le}"}}"#
                ),
            )
        };
        assert_eq!(b("1e-05"), Some(1.0), "{t}");
        assert_eq!(b("2e-05"), Some(2.0));
        assert_eq!(b("0.16384"), Some(2.0));
        assert_eq!(b("+Inf"), Some(3.0));
        let l = r#"{subsystem="nqn.a",nsid="1",direction="write"}"#;
        assert_eq!(
            value(&t, &format!("xdpt_io_duration_seconds_count{l}")),
            Some(3.0)
        );
        let sum = value(&t, &format!("xdpt_io_duration_seconds_sum{l}")).unwrap();
        assert!((sum - 1.000_025).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn connections_are_counted_per_transport_and_protocol() {
        let m = metrics();
        let socket = m.transport(Transport::Socket);
        let xdp = m.transport(Transport::Xdp);
        socket.of(Proto::Nvme).accepted();
        socket.of(Proto::Nvme).accepted();
        socket.of(Proto::Nvme).closed();
        socket.of(Proto::Iscsi).refused_allow_list.inc();
        xdp.of(Proto::Iscsi).accepted();
        xdp.of(Proto::Nvme).refused_limit.inc_by(3);
        let t = m.encode();
        let sn = r#"{transport="socket",protocol="nvme"}"#;
        assert_eq!(
            value(&t, &format!("xdpt_connections_open{sn}")),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            value(&t, &format!("xdpt_connections_accepted_total{sn}")),
            Some(2.0)
        );
        assert_eq!(
            value(&t, &format!("xdpt_connections_closed_total{sn}")),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                r#"xdpt_connections_open{transport="xdp",protocol="iscsi"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                r#"xdpt_connections_refused_total{transport="socket",protocol="iscsi",reason="allow_list"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                r#"xdpt_connections_refused_total{transport="xdp",protocol="nvme",reason="connection_limit"}"#
            ),
            Some(3.0)
        );
        // The XDP path refuses no connection by allow-list (its program drops the packets).
        assert!(!t.contains(r#"transport="xdp",protocol="nvme",reason="allow_list""#));
    }

    #[test]
    fn afxdp_queues_publish_their_counters() {
        let m = metrics();
        assert!(!m.encode().contains("afxdp"), "no queue, no AF_XDP metrics");
        let q = m.afxdp_queue(3);
        // Non-exhaustive: filled field by field.
        let mut kernel = xdpilone::xdp::XdpStatisticsV2::default();
        kernel.rx_dropped = 4;
        kernel.rx_ring_full = 5;
        kernel.rx_fill_ring_empty_descs = 6;
        kernel.tx_ring_empty_descs = 7;
        q.publish(
            &XskStats {
                rx_packets: 10,
                tx_packets: 12,
                tx_no_frame: 1,
                rx_foreign: 2,
                ..XskStats::default()
            },
            Some(kernel),
            (8, 9),
        );
        let t = m.encode();
        for (series, want) in [
            (
                r#"xdpt_afxdp_packets_total{queue="3",direction="rx"}"#,
                10.0,
            ),
            (
                r#"xdpt_afxdp_packets_total{queue="3",direction="tx"}"#,
                12.0,
            ),
            (
                r#"xdpt_afxdp_dropped_total{queue="3",reason="tx_no_frame"}"#,
                1.0,
            ),
            (
                r#"xdpt_afxdp_dropped_total{queue="3",reason="rx_foreign"}"#,
                2.0,
            ),
            (
                r#"xdpt_afxdp_dropped_total{queue="3",reason="rx_too_long"}"#,
                0.0,
            ),
            (
                r#"xdpt_afxdp_kernel_events_total{queue="3",event="rx_dropped"}"#,
                4.0,
            ),
            (
                r#"xdpt_afxdp_kernel_events_total{queue="3",event="rx_ring_full"}"#,
                5.0,
            ),
            (
                r#"xdpt_afxdp_kernel_events_total{queue="3",event="tx_ring_empty_descs"}"#,
                7.0,
            ),
            (
                r#"xdpt_afxdp_tcp_retransmits_total{queue="3",kind="timeout"}"#,
                8.0,
            ),
            (
                r#"xdpt_afxdp_tcp_retransmits_total{queue="3",kind="fast"}"#,
                9.0,
            ),
        ] {
            assert_eq!(value(&t, series), Some(want), "{series} in\n{t}");
        }
        assert!(t.contains("# TYPE xdpt_afxdp_packets_total counter\n"));
    }

    #[test]
    fn an_unreadable_xdp_program_leaves_its_metrics_out() {
        let m = Metrics::new(&[], Some("no-such-if0"));
        let t = m.encode();
        assert!(!t.contains("xdpt_xdp_"), "{t}");
    }

    /// Fixed rows of the XDP program's counters, encoded as the scrape-time reader does.
    #[derive(Debug)]
    struct FixedRows(Vec<crate::transport::xdp::stats::Row>);

    impl Collector for FixedRows {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
            encode_xdp(&mut encoder, &self.0)
        }
    }

    #[test]
    fn xdp_program_counters_are_exposed_per_port_and_action() {
        let mut registry = Registry::with_prefix("xdpt");
        registry.register_collector(Box::new(FixedRows(
            crate::transport::xdp::stats::sample_rows(),
        )));
        let mut t = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut t, &registry).unwrap();
        for (series, want) in [
            (
                r#"xdpt_xdp_packets_total{port="4420",action="redirected"}"#,
                5.0,
            ),
            (
                r#"xdpt_xdp_packets_total{port="4420",action="redirect_failed"}"#,
                2.0,
            ),
            (
                r#"xdpt_xdp_packets_total{port="4420",action="dropped_acl"}"#,
                1.0,
            ),
            (
                r#"xdpt_xdp_bytes_total{port="4420",action="redirected"}"#,
                500.0,
            ),
            (
                r#"xdpt_xdp_packets_total{port="other",action="passed"}"#,
                9.0,
            ),
            (
                r#"xdpt_xdp_bytes_total{port="other",action="passed"}"#,
                900.0,
            ),
        ] {
            assert_eq!(value(&t, series), Some(want), "{series} in\n{t}");
        }
        assert!(t.contains("# TYPE xdpt_xdp_packets_total counter\n"), "{t}");
    }
}
