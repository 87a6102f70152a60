//! `xdp-target perf`: an NVMe/TCP, NVMe/RDMA and iSCSI initiator for measuring a target,
//! like spdk_nvme_perf.
//!
//! One thread per I/O queue, each keeping `--qd` commands in flight on its own
//! connection (the host engines of target-proto over a kernel socket: an NVMe I/O queue,
//! or an iSCSI session per queue; for NVMe/RDMA, a queue pair of its own, busy-polled, see
//! [`rdma`]). Every transport runs the same workload loop, so their figures compare like
//! for like. With `--verify`,
//! every block written carries a pattern naming its LBA and a generation, each queue owns
//! a disjoint LBA region and never has two commands in flight on the same blocks, so every
//! read has exactly one right answer: misplaced, stale or torn data is counted.

pub mod queue;
mod rdma;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;
use target_proto::iscsi::conn::encode_lun;
use target_proto::iscsi::host::{IscsiHost, LoginOptions};
use target_proto::nvme_tcp::host::{Completion, HostQueue, commands};
use target_wire::nvme::fabrics::PropertySize;
use target_wire::nvme::identify::{IdentifyController, IdentifyNamespace};
use target_wire::nvme::log::{DiscoveryLogHeader, SubType, discovery_entry};
use target_wire::nvme::opcode::{AdminOpcode, Cns, FeatureId, IoOpcode, LogPageId};
use target_wire::nvme::properties::CSTS;
use target_wire::nvme::sqe::SQE_LEN;

/// How long a queue thread polls its socket before sleeping in poll(2).
const SPIN: Duration = Duration::from_micros(100);
/// The admin queue's keep-alive timeout: the controller ends a controller whose host sends
/// no admin command for this long, so `run` sends Keep Alive every third of it.
const ADMIN_KATO_MS: u32 = 30_000;
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(ADMIN_KATO_MS as u64 / 3);
const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
const DEFAULT_INITIATOR: &str = "iqn.2026-11.dev.xdp-target:perf";
const DEFAULT_HOST_NQN: &str =
    "nqn.2014-08.org.nvmexpress:uuid:7e7e7e7e-0000-4000-8000-00000000perf";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Read,
    Write,
    Randread,
    Randwrite,
    /// Random reads and writes, `--read-pct` percent reads.
    Mixed,
}

#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    /// nvme-tcp://ADDR[:PORT][/NQN] or nvme-rdma://ADDR[:PORT][/NQN] (port 4420 by
    /// default): without an NQN, the first NVM subsystem of the discovery log at ADDR:PORT
    /// (over the same transport). Or iscsi://ADDR[:PORT][/IQN/LUN]: without an IQN, the
    /// first target SendTargets lists, LUN 0.
    pub target: String,
    #[arg(long, value_enum, default_value = "randread")]
    pub workload: Workload,
    /// Read share of the mixed workload, in percent.
    #[arg(long, default_value_t = 70)]
    pub read_pct: u8,
    /// Bytes per I/O (a multiple of the namespace's block size).
    #[arg(long, default_value_t = 4096)]
    pub bs: usize,
    /// Commands in flight per queue.
    #[arg(long, default_value_t = 32)]
    pub qd: usize,
    /// I/O queues (one connection and one thread each).
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub time: f64,
    /// Bytes of the namespace to use (from LBA 0); all of it by default.
    #[arg(long)]
    pub size: Option<u64>,
    #[arg(long, default_value_t = 1)]
    pub nsid: u32,
    /// Check every read against what was written (see the module documentation).
    #[arg(long)]
    pub verify: bool,
    /// Ask for header and data digests (NVMe/TCP and iSCSI; RDMA has none).
    #[arg(long)]
    pub digests: bool,
    #[arg(long)]
    pub host_nqn: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// NVMe only: besides the measured queues, hold this many idle connections to the
    /// target for the run (each the admin queue of its own controller, Keep Alive off), to
    /// see what connections that do nothing cost the ones that work.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: u32,
    /// Sequential workloads (read, write): stop once every queue has gone through its
    /// region once, or at --time, whichever comes first (e.g. to write a whole namespace
    /// before measuring reads of it).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error(
        "{0:?} is not a target URL: expected nvme-tcp://ADDR[:PORT][/NQN], nvme-rdma://ADDR[:PORT][/NQN] or iscsi://ADDR[:PORT][/IQN/LUN]"
    )]
    Url(String),
    #[error(
        "--digests is for nvme-tcp:// and iscsi://: NVMe/RDMA has no digests (RoCE and InfiniBand check every packet's CRC themselves)"
    )]
    RdmaDigests,
    #[error("--idle-connections is for nvme-tcp:// and nvme-rdma:// (NVMe admin queues)")]
    IdleIscsi,
    #[error("--once is for the sequential workloads (read, write): random ones have no pass")]
    OnceRandom,
    /// NVMe/RDMA cannot run on this machine (no rdma-core, no device).
    #[error("{0}")]
    RdmaUnavailable(String),
    #[error("cannot connect to {addr} over RDMA: {reason}")]
    RdmaConnect { addr: SocketAddr, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connection to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Target(String),
    #[error("--bs {bs} is not a non-zero multiple of the namespace's {block}-byte blocks")]
    BlockSize { bs: usize, block: usize },
    #[error("{0} mismatches found by --verify")]
    Verify(u64),
}

#[derive(Debug, PartialEq, Eq)]
enum Proto {
    NvmeTcp,
    NvmeRdma,
    Iscsi,
}

#[derive(Debug)]
struct Url {
    proto: Proto,
    addr: SocketAddr,
    /// The NQN (NVMe) or IQN (iSCSI).
    name: Option<String>,
    lun: u64,
}

fn parse_url(s: &str) -> Result<Url, PerfError> {
    let bad = || PerfError::Url(s.to_string());
    let (proto, rest, default_port) = if let Some(r) = s.strip_prefix("nvme-tcp://") {
        (Proto::NvmeTcp, r, 4420)
    } else if let Some(r) = s.strip_prefix("nvme-rdma://") {
        (Proto::NvmeRdma, r, 4420)
    } else if let Some(r) = s.strip_prefix("iscsi://") {
        (Proto::Iscsi, r, 3260)
    } else {
        return Err(bad());
    };
    let (hostport, path) = match rest.split_once('/') {
        Some((h, p)) => (h, p),
        None => (rest, ""),
    };
    let (name, lun) = match proto {
        Proto::NvmeTcp | Proto::NvmeRdma => ((!path.is_empty()).then(|| path.to_string()), 0),
        // IQN/LUN, as libiscsi writes it; IQNs hold ':' but no '/'.
        Proto::Iscsi => match path.rsplit_once('/') {
            Some((iqn, lun)) if !iqn.is_empty() => {
                (Some(iqn.to_string()), lun.parse().map_err(|_| bad())?)
            }
            _ if path.is_empty() => (None, 0),
            _ => (Some(path.to_string()), 0),
        },
    };
    // ADDR is IPv4, a name, [IPv6] or a bare IPv6 address.
    let with_port = if hostport.starts_with('[') {
        if hostport.ends_with(']') {
            format!("{hostport}:{default_port}")
        } else {
            hostport.to_string()
        }
    } else if hostport.matches(':').count() > 1 {
        format!("[{hostport}]:{default_port}")
    } else if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)?;
    Ok(Url {
        proto,
        addr,
        name,
        lun,
    })
}

/// A host engine behind a socket: bytes out, bytes in.
trait Engine {
    fn output(&self) -> &[u8];
    fn consume_output(&mut self, n: usize);
    fn receive(&mut self, input: &[u8]) -> Result<(), String>;
}

impl Engine for HostQueue {
    fn output(&self) -> &[u8] {
        HostQueue::output(self)
    }
    fn consume_output(&mut self, n: usize) {
        HostQueue::consume_output(self, n);
    }
    fn receive(&mut self, input: &[u8]) -> Result<(), String> {
        HostQueue::receive(self, input).map_err(|e| format!("{e:?}"))
    }
}

impl Engine for IscsiHost {
    fn output(&self) -> &[u8] {
        IscsiHost::output(self)
    }
    fn consume_output(&mut self, n: usize) {
        IscsiHost::consume_output(self, n);
    }
    fn receive(&mut self, input: &[u8]) -> Result<(), String> {
        IscsiHost::receive(self, input).map_err(|e| format!("{e:?}"))
    }
}

/// A finished I/O of either protocol.
pub struct Done {
    pub tag: u32,
    /// `None` when it succeeded, else what the target said.
    pub error: Option<String>,
    /// The data read (empty for writes).
    pub data: Vec<u8>,
}

/// What the workload loop needs of a queue.
trait IoQueue {
    /// Queues a read (`data` empty) or a write of `blocks` at `lba`; its tag.
    fn submit_io(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        data: Vec<u8>,
        read_len: usize,
    ) -> Result<u32, PerfError>;
    /// Room for another command (the iSCSI CmdSN window).
    fn can_submit(&self) -> bool;
    fn exchange(&mut self) -> Result<(), PerfError>;
    fn done(&mut self) -> Option<Done>;
}

/// The SQE of a Read or Write of `blocks` blocks at `lba` of namespace `nsid`.
pub(crate) fn rw_sqe(write: bool, nsid: u32, lba: u64, blocks: u32) -> [u8; 64] {
    let op = if write {
        IoOpcode::Write
    } else {
        IoOpcode::Read
    };
    commands::io(op, nsid, lba, blocks)
}

impl IoQueue for Conn<HostQueue> {
    fn submit_io(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        data: Vec<u8>,
        read_len: usize,
    ) -> Result<u32, PerfError> {
        let in_capsule = write && data.len() <= 8192;
        let sqe = rw_sqe(write, self.nsid, lba, blocks);
        Ok(u32::from(self.h.submit(sqe, data, in_capsule, read_len)))
    }
    fn can_submit(&self) -> bool {
        true
    }
    fn exchange(&mut self) -> Result<(), PerfError> {
        Conn::exchange(self)
    }
    fn done(&mut self) -> Option<Done> {
        self.h.completion().map(|c| Done {
            tag: u32::from(c.cid),
            error: (!c.cqe.status.is_success()).then(|| format!("{:?}", c.cqe.status)),
            data: c.data,
        })
    }
}

impl IoQueue for Conn<IscsiHost> {
    fn submit_io(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        data: Vec<u8>,
        read_len: usize,
    ) -> Result<u32, PerfError> {
        let mut cdb = [0u8; 16];
        cdb[0] = if write { 0x8a } else { 0x88 }; // WRITE(16) / READ(16)
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        Ok(self.h.command(encode_lun(self.lun), &cdb, data, read_len))
    }
    fn can_submit(&self) -> bool {
        self.h.can_submit()
    }
    fn exchange(&mut self) -> Result<(), PerfError> {
        Conn::exchange(self)
    }
    fn done(&mut self) -> Option<Done> {
        self.h.completion().map(|c| Done {
            tag: c.itt,
            error: (c.status != 0)
                .then(|| format!("SCSI status {:#x}, sense {:02x?}", c.status, c.sense)),
            data: c.data,
        })
    }
}

/// One connection with blocking I/O around a host engine.
struct Conn<E> {
    addr: SocketAddr,
    stream: TcpStream,
    h: E,
    buf: Vec<u8>,
    /// The namespace (NVMe) or LUN (iSCSI) the I/O goes to.
    nsid: u32,
    lun: u64,
}

impl<E: Engine> Conn<E> {
    fn with(addr: SocketAddr, h: E) -> Result<Self, PerfError> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|source| PerfError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        stream
            .set_nonblocking(true)
            .map_err(|source| PerfError::Connect { addr, source })?;
        Ok(Self {
            addr,
            stream,
            h,
            buf: vec![0; 1 << 20],
            nsid: 1,
            lun: 0,
        })
    }

    fn io_err(&self, source: io::Error) -> PerfError {
        PerfError::Io {
            addr: self.addr,
            source,
        }
    }

    /// Sends what is queued, then reads until something arrives and feeds the engine. The
    /// socket is non-blocking and polled for a short while, as spdk_nvme_perf polls:
    /// sleeping at once would add a wake-up of the client's CPU to every I/O's latency.
    /// After [`SPIN`] it sleeps in poll(2), so spinning threads never outnumber the cores
    /// and starve the target on the same machine.
    fn exchange(&mut self) -> Result<(), PerfError> {
        let mut sent = 0;
        let out_len = self.h.output().len();
        let started = Instant::now();
        let give_up = started + Duration::from_secs(30);
        loop {
            if sent < out_len {
                match self.stream.write(&self.h.output()[sent..out_len]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(self.io_err(e)),
                }
            }
            match self.stream.read(&mut self.buf) {
                Ok(n) => {
                    self.h.consume_output(sent);
                    return self.take_read(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now > give_up {
                        return Err(self
                            .io_err(io::Error::new(io::ErrorKind::TimedOut, "no answer in 30 s")));
                    }
                    if now.duration_since(started) < SPIN {
                        std::hint::spin_loop();
                    } else {
                        self.wait(sent < out_len);
                    }
                }
                Err(e) => return Err(self.io_err(e)),
            }
        }
    }

    /// Sends what it can of what is queued and feeds the engine what has arrived, without
    /// waiting for either.
    fn try_exchange(&mut self) -> Result<(), PerfError> {
        let out_len = self.h.output().len();
        if out_len > 0 {
            match self.stream.write(&self.h.output()[..out_len]) {
                Ok(n) => self.h.consume_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
        match self.stream.read(&mut self.buf) {
            Ok(n) => self.take_read(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Feeds the engine the `n` bytes a read put in `buf`; none means the target closed.
    fn take_read(&mut self, n: usize) -> Result<(), PerfError> {
        if n == 0 {
            let e = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the target closed the connection",
            );
            return Err(self.io_err(e));
        }
        self.h
            .receive(&self.buf[..n])
            .map_err(|e| PerfError::Target(format!("protocol error from the target: {e}")))
    }

    /// Sleeps until the socket is readable (or writable, when output waits), at most 10 ms.
    fn wait(&self, writing: bool) {
        let events = libc::POLLIN | if writing { libc::POLLOUT } else { 0 };
        let mut pfd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call, bounded timeout.
        unsafe { libc::poll(&raw mut pfd, 1, 10) };
    }
}

impl Conn<HostQueue> {
    fn open(addr: SocketAddr, digests: bool) -> Result<Self, PerfError> {
        let mut c = Self::with(addr, HostQueue::new(digests, digests))?;
        while !c.h.established() {
            c.exchange()?;
        }
        Ok(c)
    }
}

/// An NVMe queue of either transport, one command at a time: what setup and discovery
/// need of it.
trait NvmeConn {
    /// Queues one command; its CID. `write` goes to the controller; without it,
    /// `read_len` bytes come back.
    fn submit_command(
        &mut self,
        sqe: [u8; 64],
        write: Vec<u8>,
        read_len: usize,
    ) -> Result<u16, PerfError>;

    /// A completion that arrived, if any.
    fn take_completion(&mut self) -> Option<Completion>;

    /// Moves what the transport has to move (sends, receives), waiting a little.
    fn pump(&mut self) -> Result<(), PerfError>;

    /// Runs one command to its completion, whatever its status.
    fn execute(
        &mut self,
        sqe: [u8; 64],
        write: Vec<u8>,
        read_len: usize,
    ) -> Result<Completion, PerfError> {
        let cid = self.submit_command(sqe, write, read_len)?;
        loop {
            if let Some(c) = self.take_completion() {
                debug_assert_eq!(c.cid, cid);
                return Ok(c);
            }
            self.pump()?;
        }
    }

    /// The namespace the I/O goes to.
    fn set_nsid(&mut self, nsid: u32);

    /// Runs one command; a status other than success is an error.
    fn command(
        &mut self,
        sqe: [u8; 64],
        write: Vec<u8>,
        read_len: usize,
    ) -> Result<Completion, PerfError> {
        let c = self.execute(sqe, write, read_len)?;
        if !c.cqe.status.is_success() {
            return Err(PerfError::Target(format!(
                "command failed: {:?}",
                c.cqe.status
            )));
        }
        Ok(c)
    }

    fn connect(
        &mut self,
        qid: u16,
        cntlid: u16,
        nqn: &str,
        host: &str,
        sqsize: u16,
    ) -> Result<u16, PerfError> {
        let kato = if qid == 0 { ADMIN_KATO_MS } else { 0 };
        self.connect_kato(qid, cntlid, nqn, host, sqsize, kato)
    }

    /// Fabrics Connect with a keep-alive timeout in milliseconds (admin queue; 0: none).
    fn connect_kato(
        &mut self,
        qid: u16,
        cntlid: u16,
        nqn: &str,
        host: &str,
        sqsize: u16,
        kato: u32,
    ) -> Result<u16, PerfError> {
        let (sqe, data) = commands::connect(qid, cntlid, sqsize, kato, nqn, host)
            .ok_or_else(|| PerfError::Target(format!("NQN {nqn:?} or {host:?} is too long")))?;
        let c = self
            .command(sqe, data, 0)
            .map_err(|e| PerfError::Target(format!("Connect to {nqn}: {e}")))?;
        Ok(c.cqe.dw0 as u16)
    }

    fn enable(&mut self) -> Result<(), PerfError> {
        self.command(commands::enable(), Vec::new(), 0)?;
        for _ in 0..100 {
            let csts = commands::property_get(CSTS, PropertySize::Four);
            if self.command(csts, Vec::new(), 0)?.cqe.dw0 & 1 == 1 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(PerfError::Target(
            "the controller did not become ready (CSTS.RDY)".into(),
        ))
    }

    fn admin(
        &mut self,
        op: AdminOpcode,
        nsid: u32,
        cdw10: u32,
        cdw11: u32,
        read_len: usize,
    ) -> Result<Completion, PerfError> {
        self.command(
            commands::admin(op, nsid, cdw10, cdw11),
            Vec::new(),
            read_len,
        )
    }
}

impl NvmeConn for Conn<HostQueue> {
    fn submit_command(
        &mut self,
        sqe: [u8; 64],
        write: Vec<u8>,
        read_len: usize,
    ) -> Result<u16, PerfError> {
        // Only Connect carries data here: in the capsule, as Linux sends it.
        let in_capsule = !write.is_empty();
        Ok(self.h.submit(sqe, write, in_capsule, read_len))
    }

    fn take_completion(&mut self) -> Option<Completion> {
        self.h.completion()
    }

    fn pump(&mut self) -> Result<(), PerfError> {
        self.exchange()
    }

    fn set_nsid(&mut self, nsid: u32) {
        self.nsid = nsid;
    }
}

/// What opening an NVMe queue takes.
#[derive(Clone, Copy, Debug)]
struct QueueSpec {
    qid: u16,
    /// The controller of an I/O queue (0 for the admin queue).
    cntlid: u16,
    /// Entries (the Connect's SQSIZE + 1).
    depth: u16,
    /// Bytes of write data the controller takes in the capsule (IOCCSZ), 0 before it is
    /// known.
    in_capsule: usize,
    /// The largest transfer of a command.
    data_len: usize,
}

impl QueueSpec {
    /// The admin queue as Linux opens it: 32 entries, 4 KiB transfers (Identify, a
    /// discovery log page).
    const ADMIN: Self = Self {
        qid: 0,
        cntlid: 0,
        depth: 32,
        in_capsule: 0,
        data_len: 4096,
    };
}

/// How the NVMe queues of a run reach the target.
trait NvmeTransport: Send + 'static {
    type Queue: NvmeConn + IoQueue + Send + 'static;

    /// A new connection for one queue, not yet Connected.
    fn open(&self, addr: SocketAddr, spec: QueueSpec) -> Result<Self::Queue, PerfError>;
}

/// NVMe/TCP: a TCP connection per queue.
struct Tcp {
    digests: bool,
}

impl NvmeTransport for Tcp {
    type Queue = Conn<HostQueue>;

    fn open(&self, addr: SocketAddr, _: QueueSpec) -> Result<Self::Queue, PerfError> {
        Conn::open(addr, self.digests)
    }
}

impl Conn<IscsiHost> {
    /// Logs in (`target` None: a discovery session); queue `q` gets its own ISID, so
    /// each queue is a session of its own.
    fn login(
        addr: SocketAddr,
        initiator: &str,
        target: Option<&str>,
        q: u16,
        digests: bool,
    ) -> Result<Self, PerfError> {
        let mut o = LoginOptions::new(initiator, target);
        o.isid[4..6].copy_from_slice(&q.to_be_bytes());
        o.header_digest = digests;
        o.data_digest = digests;
        let mut c = Self::with(addr, IscsiHost::new(o))?;
        while !c.h.logged_in() {
            c.exchange()
                .map_err(|e| PerfError::Target(format!("iSCSI login: {e}")))?;
        }
        Ok(c)
    }

    /// Runs one SCSI command to completion; a unit attention is retried (it reports an
    /// event, such as a reset, not a failure of this command).
    fn scsi(&mut self, cdb: &[u8], read_len: usize) -> Result<Vec<u8>, PerfError> {
        for _ in 0..4 {
            self.h
                .command(encode_lun(self.lun), cdb, Vec::new(), read_len);
            let c = loop {
                if let Some(c) = self.h.completion() {
                    break c;
                }
                self.exchange()?;
            };
            match (c.status, c.sense.get(2).map(|k| k & 0x0f)) {
                (0, _) => return Ok(c.data),
                (2, Some(6)) => continue,
                (st, _) => {
                    return Err(PerfError::Target(format!(
                        "SCSI command {:#04x} failed: status {st:#x}, sense {:02x?}",
                        cdb[0], c.sense
                    )));
                }
            }
        }
        Err(PerfError::Target("unit attentions without end".into()))
    }
}

/// The first target SendTargets lists at `addr`.
fn iscsi_discover(addr: SocketAddr, initiator: &str, digests: bool) -> Result<String, PerfError> {
    let mut d = Conn::<IscsiHost>::login(addr, initiator, None, 0, digests)?;
    d.h.send_targets("All");
    loop {
        if let Some(r) = d.h.text_result() {
            return r
                .iter()
                .find(|(k, _)| k == "TargetName")
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    PerfError::Target(format!("SendTargets at {addr} lists no target"))
                });
        }
        d.exchange()?;
    }
}

/// The first NVM subsystem in the discovery log at `addr`.
fn discover<T: NvmeTransport>(t: &T, addr: SocketAddr, host: &str) -> Result<String, PerfError> {
    let mut d = t.open(addr, QueueSpec::ADMIN)?;
    d.connect(0, 0xffff, DISCOVERY_NQN, host, QueueSpec::ADMIN.depth - 1)?;
    d.enable()?;
    let numd = 4096 / 4 - 1;
    let log = d.admin(
        AdminOpcode::GetLogPage,
        0,
        u32::from(u8::from(LogPageId::Discovery)) | (numd << 16),
        0,
        4096,
    )?;
    let n = DiscoveryLogHeader::new_checked(&log.data[..])
        .map(|h| h.numrec())
        .unwrap_or(0);
    // A 4 KiB read holds the header and the first three entries.
    for i in 0..usize::try_from(n).unwrap_or(0).min(3) {
        if let Ok(e) = discovery_entry(&log.data, i)
            && e.subtype() == SubType::Nvm
        {
            return e
                .subnqn()
                .map(str::to_string)
                .map_err(|_| PerfError::Target("bad NQN in the discovery log".into()));
        }
    }
    Err(PerfError::Target(format!(
        "the discovery log at {addr} lists no NVM subsystem"
    )))
}

/// A per-block pattern naming the LBA and the generation written.
fn fill_pattern(buf: &mut [u8], lba: u64, generation: u32) {
    for (i, chunk) in buf.chunks_mut(16).enumerate() {
        chunk[..8].copy_from_slice(&lba.to_le_bytes());
        chunk[8..12].copy_from_slice(&generation.to_le_bytes());
        chunk[12..16].copy_from_slice(&(i as u32).to_le_bytes());
    }
}

/// xorshift64*: enough randomness for offsets, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Job {
    workload: Workload,
    read_pct: u8,
    qd: usize,
    blocks_per_io: u64,
    block: usize,
    first_lba: u64,
    region_blocks: u64,
    verify: bool,
    deadline: Instant,
    /// I/Os to issue at most (one pass over the region for `--once`).
    limit: u64,
}

#[derive(Default)]
struct Stats {
    ios: u64,
    bytes: u64,
    latencies_ns: Vec<u64>,
    mismatches: u64,
    reads: u64,
    writes: u64,
}

struct InFlight {
    start: Instant,
    lba: u64,
    write: bool,
    generation: u32,
}

fn run_queue(c: &mut dyn IoQueue, job: &Job, seed: u64) -> Result<Stats, PerfError> {
    let mut rng = Rng(seed | 1);
    let mut stats = Stats::default();
    let slots = job.region_blocks / job.blocks_per_io;
    let mut generations = if job.verify {
        vec![0u32; usize::try_from(slots).unwrap_or(0)]
    } else {
        Vec::new()
    };
    let mut inflight: HashMap<u32, InFlight> = HashMap::with_capacity(job.qd * 2);
    let mut busy: HashSet<u64> = HashSet::with_capacity(job.qd * 2);
    let mut seq = 0u64;
    let mut issued = 0u64;
    let bytes = job.blocks_per_io as usize * job.block;
    loop {
        let now = Instant::now();
        while inflight.len() < job.qd && now < job.deadline && issued < job.limit && c.can_submit()
        {
            let write = match job.workload {
                Workload::Read | Workload::Randread => false,
                Workload::Write | Workload::Randwrite => true,
                Workload::Mixed => rng.next() % 100 >= u64::from(job.read_pct),
            };
            let slot = match job.workload {
                Workload::Read | Workload::Write => {
                    seq = (seq + 1) % slots;
                    seq
                }
                _ => rng.next() % slots,
            };
            if job.verify && busy.contains(&slot) {
                // Never two commands on the same blocks at once: each read must have one
                // right answer. Try again after the next completion.
                break;
            }
            let lba = job.first_lba + slot * job.blocks_per_io;
            let mut generation = 0;
            let data = if write {
                let mut d = vec![0u8; bytes];
                if job.verify {
                    generation = generations[slot as usize].wrapping_add(1).max(1);
                    for (i, b) in d.chunks_mut(job.block).enumerate() {
                        fill_pattern(b, lba + i as u64, generation);
                    }
                }
                d
            } else {
                Vec::new()
            };
            let cid = c.submit_io(
                write,
                lba,
                u32::try_from(job.blocks_per_io).unwrap_or(1),
                data,
                if write { 0 } else { bytes },
            )?;
            issued += 1;
            busy.insert(slot);
            inflight.insert(
                cid,
                InFlight {
                    start: now,
                    lba,
                    write,
                    generation,
                },
            );
        }
        if inflight.is_empty() {
            return Ok(stats);
        }
        c.exchange()?;
        while let Some(done) = c.done() {
            let Some(f) = inflight.remove(&done.tag) else {
                continue;
            };
            let slot = (f.lba - job.first_lba) / job.blocks_per_io;
            busy.remove(&slot);
            if let Some(e) = done.error {
                return Err(PerfError::Target(format!(
                    "I/O at LBA {} failed: {e}",
                    f.lba
                )));
            }
            stats
                .latencies_ns
                .push(u64::try_from(f.start.elapsed().as_nanos()).unwrap_or(u64::MAX));
            stats.ios += 1;
            stats.bytes += bytes as u64;
            if f.write {
                stats.writes += 1;
                if job.verify {
                    generations[slot as usize] = f.generation;
                }
            } else {
                stats.reads += 1;
                if job.verify {
                    let g = generations[slot as usize];
                    if g != 0 {
                        let mut want = vec![0u8; job.block];
                        for (i, got) in done.data.chunks(job.block).enumerate() {
                            fill_pattern(&mut want, f.lba + i as u64, g);
                            if got != want.as_slice() {
                                stats.mismatches += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Opens queue `q` of a run.
type OpenQueue = dyn Fn(u16) -> Result<Box<dyn IoQueue + Send>, PerfError>;

/// The queues of a run, connected, and what they address.
struct Setup {
    /// The NQN or IQN.
    name: String,
    block: usize,
    capacity: u64,
    /// Opens queue `q` (its own connection).
    open: Box<OpenQueue>,
    /// Sends Keep Alive on the NVMe admin queue, which is kept open while the queues run
    /// (it owns the controller).
    keep_alive: Option<Box<dyn FnMut() -> Result<(), PerfError>>>,
}

/// A controller of an NVM subsystem, created on its admin queue (Connect, CC.EN, Identify,
/// Number of Queues), and what its I/O queues need.
struct Controller<Q> {
    admin: Q,
    addr: SocketAddr,
    nqn: String,
    host: String,
    cntlid: u16,
    /// Bytes of write data an I/O queue may put in its capsules (IOCCSZ).
    in_capsule: usize,
    nsid: u32,
    block: usize,
    capacity: u64,
}

/// Creates a controller for `io_queues` I/O queues on the subsystem of `url` (the first
/// NVM subsystem of the discovery log when the URL names none).
fn nvme_controller<T: NvmeTransport>(
    t: &T,
    url: &Url,
    host: Option<&str>,
    nsid: u32,
    io_queues: u16,
) -> Result<Controller<T::Queue>, PerfError> {
    let host = host.unwrap_or(DEFAULT_HOST_NQN).to_string();
    let nqn = match &url.name {
        Some(n) => n.clone(),
        None => discover(t, url.addr, &host)?,
    };
    let mut admin = t.open(url.addr, QueueSpec::ADMIN)?;
    let cntlid = admin.connect(0, 0xffff, &nqn, &host, QueueSpec::ADMIN.depth - 1)?;
    admin.enable()?;
    // IOCCSZ: how much write data the I/O queues may put in their capsules (NVMe/RDMA;
    // NVMe/TCP sends up to 8 KiB, what this target takes, as before).
    let idc = admin.admin(
        AdminOpcode::Identify,
        0,
        u32::from(u8::from(Cns::Controller)),
        0,
        4096,
    )?;
    let in_capsule = IdentifyController::new_checked(&idc.data[..])
        .map(|c| (c.ioccsz() as usize * 16).saturating_sub(SQE_LEN))
        .map_err(|_| PerfError::Target("short Identify Controller".into()))?;
    let want = u32::from(io_queues.max(1) - 1);
    admin.admin(
        AdminOpcode::SetFeatures,
        0,
        u32::from(u8::from(FeatureId::NumberOfQueues)),
        want | (want << 16),
        0,
    )?;
    let id = admin.admin(
        AdminOpcode::Identify,
        nsid,
        u32::from(u8::from(Cns::Namespace)),
        0,
        4096,
    )?;
    let ns = IdentifyNamespace::new_checked(&id.data[..])
        .map_err(|_| PerfError::Target("short Identify Namespace".into()))?;
    let block = 1usize << ns.current_lbaf().lbads;
    Ok(Controller {
        admin,
        addr: url.addr,
        nqn,
        host,
        cntlid,
        in_capsule,
        nsid,
        block,
        capacity: ns.nsze() * block as u64,
    })
}

impl<Q: NvmeConn> Controller<Q> {
    /// Opens and Connects I/O queue `qid` (1-based) of `qd` commands in flight, for
    /// transfers up to `data_len` bytes.
    fn open_io_queue<T: NvmeTransport<Queue = Q>>(
        &self,
        t: &T,
        qid: u16,
        qd: usize,
        data_len: usize,
    ) -> Result<Q, PerfError> {
        let sqsize = u16::try_from(qd.clamp(1, 126) + 1).unwrap_or(127);
        let spec = QueueSpec {
            qid,
            cntlid: self.cntlid,
            depth: sqsize + 1,
            in_capsule: self.in_capsule,
            data_len,
        };
        let mut c = t.open(self.addr, spec)?;
        c.connect(qid, self.cntlid, &self.nqn, &self.host, sqsize)?;
        c.set_nsid(self.nsid);
        Ok(c)
    }

    /// Sends Keep Alive on the admin queue: the controller counts only admin commands as
    /// the host being alive, and ends a controller that sends none for KATO.
    fn keep_alive(&mut self) -> Result<(), PerfError> {
        let keep_alive = commands::admin(AdminOpcode::KeepAlive, 0, 0, 0);
        self.admin
            .command(keep_alive, Vec::new(), 0)
            .map(drop)
            .map_err(|e| PerfError::Target(format!("Keep Alive: {e}")))
    }
}

fn nvme_setup<T: NvmeTransport>(args: &PerfArgs, url: &Url, t: T) -> Result<Setup, PerfError> {
    let ctrl = nvme_controller(
        &t,
        url,
        args.host_nqn.as_deref(),
        args.nsid,
        args.queues.max(1),
    )?;
    let (name, block, capacity) = (ctrl.nqn.clone(), ctrl.block, ctrl.capacity);
    let (qd, bs) = (args.qd, args.bs);
    let idle = (0..args.idle_connections)
        .map(|_| {
            let mut q = t.open(url.addr, QueueSpec::ADMIN)?;
            let depth = QueueSpec::ADMIN.depth - 1;
            q.connect_kato(0, 0xffff, &ctrl.nqn, &ctrl.host, depth, 0)?;
            Ok(q)
        })
        .collect::<Result<Vec<_>, PerfError>>()?;
    // Both closures run on the thread that calls `run`: the queues open before their
    // threads start, Keep Alive goes out while they run.
    let ctrl = Rc::new(RefCell::new(ctrl));
    let for_queues = Rc::clone(&ctrl);
    Ok(Setup {
        name,
        block,
        capacity,
        open: Box::new(move |q| {
            let c = for_queues.borrow().open_io_queue(&t, q + 1, qd, bs)?;
            Ok(Box::new(c) as Box<dyn IoQueue + Send>)
        }),
        // The idle connections live as long as the closure, which lives for the run.
        keep_alive: Some(Box::new(move || {
            let _ = &idle;
            ctrl.borrow_mut().keep_alive()
        })),
    })
}

fn iscsi_setup(args: &PerfArgs, url: &Url) -> Result<Setup, PerfError> {
    let initiator = args
        .host_nqn
        .clone()
        .unwrap_or_else(|| DEFAULT_INITIATOR.to_string());
    let iqn = match &url.name {
        Some(n) => n.clone(),
        None => iscsi_discover(url.addr, &initiator, args.digests)?,
    };
    let mut probe =
        Conn::<IscsiHost>::login(url.addr, &initiator, Some(&iqn), 0xffff, args.digests)?;
    probe.lun = url.lun;
    // READ CAPACITY (16): the last LBA and the block length.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let rc = probe.scsi(&cdb, 32)?;
    let last = u64::from_be_bytes(rc[0..8].try_into().unwrap_or_default());
    let block = u32::from_be_bytes(rc[8..12].try_into().unwrap_or_default()) as usize;
    probe.h.logout();
    let _ = probe.exchange();
    let (addr, digests, lun, name) = (url.addr, args.digests, url.lun, iqn.clone());
    Ok(Setup {
        name: iqn,
        block: block.max(1),
        capacity: (last + 1) * block as u64,
        open: Box::new(move |q| {
            let mut c = Conn::<IscsiHost>::login(addr, &initiator, Some(&name), q, digests)?;
            c.lun = lun;
            Ok(Box::new(c) as Box<dyn IoQueue + Send>)
        }),
        keep_alive: None,
    })
}

pub fn run(args: &PerfArgs) -> Result<(), PerfError> {
    let url = parse_url(&args.target)?;
    if args.once && !matches!(args.workload, Workload::Read | Workload::Write) {
        return Err(PerfError::OnceRandom);
    }
    let mut setup = match url.proto {
        Proto::NvmeTcp => nvme_setup(
            args,
            &url,
            Tcp {
                digests: args.digests,
            },
        )?,
        Proto::NvmeRdma if args.digests => return Err(PerfError::RdmaDigests),
        Proto::NvmeRdma => nvme_setup(args, &url, rdma::Rdma::new()?)?,
        Proto::Iscsi if args.idle_connections > 0 => return Err(PerfError::IdleIscsi),
        Proto::Iscsi => iscsi_setup(args, &url)?,
    };
    let qd = match url.proto {
        Proto::NvmeTcp | Proto::NvmeRdma => args.qd.clamp(1, 126),
        Proto::Iscsi => args.qd.clamp(1, 128),
    };
    let (block, ns_bytes, nqn) = (setup.block, setup.capacity, setup.name.clone());
    let max_io = match url.proto {
        Proto::NvmeTcp | Proto::NvmeRdma => 128 * 1024,
        Proto::Iscsi => 1024 * 1024,
    };
    if args.bs == 0 || !args.bs.is_multiple_of(block) || args.bs > max_io {
        return Err(PerfError::BlockSize { bs: args.bs, block });
    }
    let blocks_per_io = (args.bs / block) as u64;
    let usable = args.size.unwrap_or(ns_bytes).min(ns_bytes) / block as u64;
    let queues = u64::from(args.queues.max(1));
    // Each queue owns a region of whole I/Os (needed for --verify; harmless otherwise).
    let region = (usable / queues) / blocks_per_io * blocks_per_io;
    if region < blocks_per_io {
        return Err(PerfError::Target(
            "the namespace is too small for these queues and --bs".into(),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.time.max(0.1));
    let started = Instant::now();
    let mut handles = Vec::new();
    for q in 0..args.queues.max(1) {
        let mut c = (setup.open)(q)?;
        let job = Job {
            workload: args.workload,
            read_pct: args.read_pct,
            qd,
            blocks_per_io,
            block,
            first_lba: u64::from(q) * region,
            region_blocks: region,
            verify: args.verify,
            deadline,
            // `run` refused --once for random workloads.
            limit: if args.once {
                region / blocks_per_io
            } else {
                u64::MAX
            },
        };
        handles.push(std::thread::spawn(move || {
            run_queue(c.as_mut(), &job, 0x9e37_79b9_7f4a_7c15 ^ u64::from(q))
        }));
    }
    // The controller counts only admin commands as the host being alive: without Keep
    // Alive, a run longer than KATO loses its controller and with it every queue.
    // Queues that are done early (--once, an error) end the wait.
    if let Some(keep_alive) = setup.keep_alive.as_mut() {
        let mut next = Instant::now() + KEEP_ALIVE_EVERY;
        loop {
            let now = Instant::now();
            if now >= deadline || handles.iter().all(std::thread::JoinHandle::is_finished) {
                break;
            }
            if now >= next {
                keep_alive()?;
                next += KEEP_ALIVE_EVERY;
            }
            let until = next.min(deadline).saturating_duration_since(now);
            std::thread::sleep(until.min(Duration::from_millis(20)));
        }
    }
    let mut total = Stats::default();
    for h in handles {
        let s = h
            .join()
            .map_err(|_| PerfError::Target("a queue thread panicked".into()))??;
        total.ios += s.ios;
        total.bytes += s.bytes;
        total.reads += s.reads;
        total.writes += s.writes;
        total.mismatches += s.mismatches;
        total.latencies_ns.extend(s.latencies_ns);
    }
    let secs = started.elapsed().as_secs_f64();
    total.latencies_ns.sort_unstable();
    let mean = if total.latencies_ns.is_empty() {
        0.0
    } else {
        total.latencies_ns.iter().map(|&x| x as f64).sum::<f64>()
            / total.latencies_ns.len() as f64
            / 1000.0
    };
    let iops = total.ios as f64 / secs;
    let mibs = total.bytes as f64 / secs / (1024.0 * 1024.0);
    let (p50, p99, p999) = (
        percentile(&total.latencies_ns, 0.5),
        percentile(&total.latencies_ns, 0.99),
        percentile(&total.latencies_ns, 0.999),
    );
    if args.json {
        let v = json!({
            "target": args.target, "nqn": nqn, "workload": format!("{:?}", args.workload).to_lowercase(),
            "bs": args.bs, "qd": qd, "queues": args.queues, "seconds": secs, "digests": args.digests,
            "ios": total.ios, "reads": total.reads, "writes": total.writes,
            "iops": iops, "mib_s": mibs,
            "lat_us": { "mean": mean, "p50": p50, "p99": p99, "p999": p999 },
            "verify": args.verify, "mismatches": total.mismatches,
        });
        println!("{v}");
    } else {
        println!(
            "{nqn} {:?} bs={} qd={qd} queues={} digests={}: {:.0} IOPS, {:.1} MiB/s, latency mean {mean:.1} us, p50 {p50:.1}, p99 {p99:.1}, p99.9 {p999:.1}{}",
            args.workload,
            args.bs,
            args.queues,
            args.digests,
            iops,
            mibs,
            if args.verify {
                format!(", verify: {} mismatches", total.mismatches)
            } else {
                String::new()
            }
        );
    }
    if total.mismatches > 0 {
        return Err(PerfError::Verify(total.mismatches));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("nvme-tcp://10.0.0.1:4421/nqn.x").unwrap();
        assert_eq!(
            (u.addr.to_string(), u.name.as_deref()),
            ("10.0.0.1:4421".into(), Some("nqn.x"))
        );
        assert_eq!(parse_url("nvme-tcp://10.0.0.1").unwrap().addr.port(), 4420);
        assert_eq!(
            parse_url("nvme-tcp://[fd00::1]:4430/")
                .unwrap()
                .addr
                .to_string(),
            "[fd00::1]:4430"
        );
        assert_eq!(
            parse_url("nvme-tcp://fd00::1").unwrap().addr.to_string(),
            "[fd00::1]:4420"
        );
        assert!(parse_url("nvme-tcp://").is_err());
        let u = parse_url("nvme-rdma://10.77.0.2").unwrap();
        assert_eq!(
            (u.proto, u.addr.to_string(), u.name),
            (Proto::NvmeRdma, "10.77.0.2:4420".into(), None)
        );
        let u = parse_url("nvme-rdma://[fd00::2]:4421/nqn.y").unwrap();
        assert_eq!(
            (u.addr.to_string(), u.name.as_deref()),
            ("[fd00::2]:4421".into(), Some("nqn.y"))
        );
        assert!(parse_url("nvme-rdma://").is_err());
        assert!(parse_url("http://10.0.0.1").is_err());
        let u = parse_url("iscsi://10.0.0.1/iqn.2026-11.dev.xdp-target:default/3").unwrap();
        assert_eq!(u.proto, Proto::Iscsi);
        assert_eq!(u.addr.port(), 3260);
        assert_eq!(
            u.name.as_deref(),
            Some("iqn.2026-11.dev.xdp-target:default")
        );
        assert_eq!(u.lun, 3);
        let u = parse_url("iscsi://[fd00::1]:3261").unwrap();
        assert_eq!(
            (u.addr.to_string(), u.name, u.lun),
            ("[fd00::1]:3261".into(), None, 0)
        );
        assert!(parse_url("iscsi://10.0.0.1/iqn.x/notalun").is_err());
    }

    #[test]
    fn patterns_name_lba_and_generation() {
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        fill_pattern(&mut a, 7, 1);
        fill_pattern(&mut b, 7, 2);
        assert_ne!(a, b);
        fill_pattern(&mut b, 8, 1);
        assert_ne!(a, b);
        fill_pattern(&mut b, 7, 1);
        assert_eq!(a, b);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=1000).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 501.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
