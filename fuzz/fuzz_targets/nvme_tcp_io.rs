//! The NVMe/TCP block completion path across queues: an admin queue and an I/O queue on one
//! Registry, connected as Linux connects them (Connect, CC.EN, Number of Queues, then the
//! I/O queue's Connect naming the admin queue's CNTLID), then driven by the input. Steps:
//! arbitrary host bytes to either queue; block operations run against a model of each
//! backend and completed at once or held and completed later in any order, with any
//! outcome; io_done on wrong slot indices; Connects of new queues with fuzzed QID, CNTLID,
//! SQSIZE, HOSTID and Host NQN (which may then be fed bytes too); ticks and the admin
//! queue's teardown.
//!
//! Whatever happens: no panic; every block operation names a backend of the connected
//! subsystem (backend 2 belongs to another one), stays inside it and its slot's buffer, and
//! keeps to the Dataset Management and Write Zeroes limits; the output is whole controller
//! PDUs, and each step's output is bounded by the PDUs the host sent and the operations
//! completed in it.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use target_proto::nvme::controller::{
    ALL_BACKENDS, BlockIo, BlockOp, DSM_BLOCKS_LIMIT, DSM_RANGE_BLOCKS_LIMIT, IoOutcome,
    MAX_TRANSFER, WRITE_ZEROES_MAX_BYTES,
};
use target_proto::nvme::subsystem::{DISCOVERY_NQN, Namespace, Port, PortTransport, Registry, Subsystem};
use target_proto::nvme_tcp::host::{HostQueue, commands};
use target_proto::nvme_tcp::icreq::ControllerParams;
use target_proto::nvme_tcp::queue::NvmeTcpQueue;
use target_proto::nvme_tcp::reader::{PduReader, ReaderConfig, Role};
use target_wire::nvme::cqe::CqeRepr;
use target_wire::nvme::fabrics::ConnectData;
use target_wire::nvme::opcode::{AdminOpcode, FeatureId, IoOpcode};
use target_wire::nvme::sqe::{DSM_RANGE_LEN, DsmRange, Sqe};

const NQN: &str = "nqn.fuzz";
const OTHER_NQN: &str = "nqn.fuzz.other";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:fuzz-host";
const INTRUDER: &str = "nqn.2014-08.org.nvmexpress:uuid:fuzz-intruder";
const HOST_ID: [u8; 16] = [0x42; 16];
/// (block size, blocks) of backends 0 and 1 (NQN's namespaces 1 and 2) and 2 (OTHER_NQN's).
const BACKENDS: [(u32, u64); 3] = [(512, 64), (4096, 16), (512, 64)];
/// Queues connected beyond the first admin and I/O queue, at most.
const MAX_EXTRA: usize = 4;
/// The most one PDU or completion can make the controller send: data and a response.
const MAX_ANSWER: usize = MAX_TRANSFER + 256;

fn namespace(nsid: u32, backend: u32) -> Namespace {
    let (block_size, blocks) = BACKENDS[backend as usize];
    Namespace {
        nsid,
        block_size,
        blocks,
        nguid: [nsid as u8; 16],
        eui64: [backend as u8; 8],
        uuid: [3; 16],
        volatile_write_cache: true,
        deallocate: true,
        backend,
        scsi_reservations: None,
    }
}

fn registry() -> Mutex<Registry> {
    let subsystem = |nqn: &str, namespaces, hosts: Option<Vec<String>>| Subsystem {
        nqn: nqn.into(),
        serial: "S".into(),
        model: "M".into(),
        firmware: "F".into(),
        namespaces,
        allowed_hosts: hosts,
    };
    let mut r = Registry::new(vec![
        subsystem(
            NQN,
            vec![namespace(1, 0), namespace(2, 1)],
            Some(vec![HOST.into()]),
        ),
        subsystem(OTHER_NQN, vec![namespace(1, 2)], None),
    ]);
    r.set_ports(vec![Port {
        id: 1,
        addr: None,
        port: 4420,
        io: true,
        transport: PortTransport::Tcp,
    }]);
    Mutex::new(r)
}

/// A controller queue, the host-role reader that checks everything it sends, whether it is
/// still fed, and the digests it negotiated (for commands the fuzz target encodes).
struct Link {
    q: NvmeTcpQueue,
    check: PduReader,
    live: bool,
    digests: (bool, bool),
}

impl Link {
    /// A queue set up by a scripted host: ICReq, then `setup` commands (SQE, in-capsule
    /// data). Returns the link and each command's completion.
    fn new(
        registry: &Mutex<Registry>,
        digests: bool,
        setup: &[([u8; 64], Vec<u8>)],
    ) -> (Self, Vec<Option<CqeRepr>>) {
        let mut q = NvmeTcpQueue::new(ControllerParams::default(), None);
        let mut h = HostQueue::new(digests, digests);
        pump(&mut q, &mut h, registry);
        assert!(h.established());
        let mut cqes = Vec::new();
        for (sqe, data) in setup {
            h.submit(*sqe, data.clone(), !data.is_empty(), 0);
            pump(&mut q, &mut h, registry);
            cqes.push(h.completion().map(|c| c.cqe));
            if q.closing() {
                break;
            }
        }
        let (hd, dd) = h.digests();
        let config = ReaderConfig {
            role: Role::Host,
            header_digest: hd,
            data_digest: dd,
            pda_bytes: 4,
            max_in_capsule: 0,
            max_data_pdu: 1 << 24,
        };
        // Past the ICResp, which the scripted host read.
        let mut check = PduReader::new(config);
        check.initialized(config);
        let live = !q.closing();
        let digests = (hd, dd);
        (
            Self {
                q,
                check,
                live,
                digests,
            },
            cqes,
        )
    }

    /// Takes the controller's output: whole valid PDUs, at most `bound` bytes.
    fn drain(&mut self, bound: usize) {
        let out = self.q.take_output();
        assert!(
            out.len() <= bound,
            "{} bytes out, more than {bound}",
            out.len()
        );
        let mut o = out.as_slice();
        while let Some(_ev) = self
            .check
            .next(&mut o)
            .expect("the controller only sends valid PDUs")
        {}
        if self.q.closing() {
            self.live = false;
        }
    }
}

/// Moves bytes both ways until nothing moves (setup commands need no block I/O).
fn pump(q: &mut NvmeTcpQueue, h: &mut HostQueue, registry: &Mutex<Registry>) {
    loop {
        let to_q = h.output().to_vec();
        h.consume_output(to_q.len());
        q.receive(&to_q, registry, 0);
        let to_h = q.take_output();
        if h.receive(&to_h).is_err() || (to_q.is_empty() && to_h.is_empty()) {
            return;
        }
    }
}

fn connect(
    qid: u16,
    cntlid: u16,
    sqsize: u16,
    subnqn: &str,
    hostnqn: &str,
    hostid: [u8; 16],
) -> ([u8; 64], Vec<u8>) {
    let (sqe, mut data) =
        commands::connect(qid, cntlid, sqsize, 0, subnqn, hostnqn).expect("NQNs fit");
    ConnectData::new_checked(&mut data[..])
        .expect("1024 bytes")
        .set_hostid(hostid);
    (sqe, data)
}

/// Checks a block operation of a queue of NQN's controllers and runs it on the model.
fn execute(disks: &mut [Vec<u8>], io: &BlockIo, buf: &mut [u8]) -> IoOutcome {
    if let BlockOp::FlushAll { backends } = &io.op {
        assert_eq!(io.backend, ALL_BACKENDS);
        assert_eq!(backends, &[0, 1], "exactly NQN's backends");
        return IoOutcome::Ok;
    }
    assert!(io.backend < 2, "backend {} is not NQN's", io.backend);
    assert_eq!(io.backend, io.nsid - 1, "NSID {}'s own backend", io.nsid);
    let (block_size, _) = BACKENDS[io.backend as usize];
    let disk = &mut disks[io.backend as usize];
    let size = disk.len() as u64;
    let span = |o: u64, l: u64| {
        assert!(
            o.checked_add(l).is_some_and(|e| e <= size),
            "{o}+{l} past the backend"
        );
        assert!(o % u64::from(block_size) == 0 && l % u64::from(block_size) == 0);
        o as usize..(o + l) as usize
    };
    match &io.op {
        BlockOp::Read { offset, len } => {
            let r = span(*offset, *len);
            assert_eq!(buf.len() as u64, *len, "the slot's buffer fits the read");
            buf.copy_from_slice(&disk[r]);
        }
        BlockOp::Write { offset, len, .. } => {
            let r = span(*offset, *len);
            assert_eq!(buf.len() as u64, *len, "the slot's buffer holds the write");
            disk[r].copy_from_slice(buf);
        }
        BlockOp::Compare { offset, len } => {
            let r = span(*offset, *len);
            assert_eq!(buf.len() as u64, *len);
            if disk[r] != *buf {
                return IoOutcome::Miscompare;
            }
        }
        BlockOp::WriteZeroes { offset, len, .. } => {
            assert!(*len <= WRITE_ZEROES_MAX_BYTES, "within WZSL");
            let r = span(*offset, *len);
            disk[r].fill(0);
        }
        BlockOp::Deallocate { ranges } => {
            assert!(ranges.len() <= 256);
            let blocks: u64 = ranges.iter().map(|&(_, l)| l / u64::from(block_size)).sum();
            assert!(blocks <= DSM_BLOCKS_LIMIT, "within DMSL");
            for &(o, l) in ranges {
                let r = span(o, l);
                disk[r].fill(0);
            }
        }
        BlockOp::Flush => {}
        BlockOp::FlushAll { .. } => unreachable!("checked above"),
    }
    IoOutcome::Ok
}

/// A well-formed I/O command capsule (data in the capsule) built from fuzz bytes, so the
/// block path is reached without the fuzzer having to find the PDU framing: any opcode of
/// the NVM set, NSID 1, 2, FFFFFFFFh or a missing one, LBAs in and past the namespaces,
/// Dataset Management ranges up to and past the limits.
fn io_capsule(b: &[u8], digests: (bool, bool)) -> Vec<u8> {
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let op = [
        IoOpcode::Read,
        IoOpcode::Write,
        IoOpcode::Compare,
        IoOpcode::WriteZeroes,
        IoOpcode::DatasetManagement,
        IoOpcode::Flush,
    ][usize::from(at(0)) % 6];
    let nsid = [1, 2, u32::MAX, 3][usize::from(at(1)) % 4];
    let block_size = if nsid == 2 { 4096 } else { 512 };
    let blocks = match op {
        // Write Zeroes may name up to 65536 blocks, beyond WZSL for 512-byte blocks.
        IoOpcode::WriteZeroes => u32::from(u16::from_le_bytes([at(3), at(4)])) + 1,
        _ => u32::from(at(3) % 16) + 1,
    };
    let mut sqe = commands::io(op, nsid, u64::from(at(2) % 80), blocks);
    let mut s = Sqe::new_unchecked(&mut sqe[..]);
    s.set_deac(at(5) & 1 != 0);
    s.set_fua(at(5) & 2 != 0);
    let mut data = Vec::new();
    let mut read_len = 0;
    match op {
        IoOpcode::Write | IoOpcode::Compare => {
            let len = (blocks * block_size).min(8192) as usize;
            data = b.iter().copied().cycle().take(len).collect();
            if data.len() < len {
                data.resize(len, 0);
            }
        }
        IoOpcode::Read => read_len = (blocks * block_size) as usize,
        IoOpcode::DatasetManagement => {
            let n = usize::from(at(6) % 8) + 1;
            s.set_dsm_range_count(n as u16);
            s.set_cdw11(u32::from(at(5) & 4));
            data = vec![0u8; n * DSM_RANGE_LEN];
            for i in 0..n {
                let x = at(7 + i);
                let nlb = match x >> 6 {
                    0 => u32::from(x & 0x3f),
                    1 => DSM_RANGE_BLOCKS_LIMIT,
                    2 => DSM_RANGE_BLOCKS_LIMIT + 1,
                    _ => u32::MAX,
                };
                let mut r = DsmRange::new_unchecked(&mut data[i * DSM_RANGE_LEN..]);
                r.set_slba(u64::from(x & 0x1f));
                r.set_nlb(nlb);
            }
        }
        _ => {}
    }
    let mut h = HostQueue::new(digests.0, digests.1);
    let icreq = h.output().len();
    h.consume_output(icreq);
    h.submit(sqe, data, true, read_len);
    h.output().to_vec()
}

fn outcome(bits: u8, model: IoOutcome) -> IoOutcome {
    match bits % 8 {
        5 => IoOutcome::ReadError,
        6 => IoOutcome::WriteError,
        7 => IoOutcome::Miscompare,
        _ => model,
    }
}

fuzz_target!(|input: &[u8]| {
    let [opts, rest @ ..] = input else {
        return;
    };
    let (opts, mut rest) = (*opts, rest);
    let registry = registry();
    let digests = opts & 1 != 0;
    let sqsize = 1 + u16::from(opts >> 1 & 0x3f);

    // Admin queue: Connect, CC.EN = 1, 3 I/O queues (0's based 2).
    let number_of_queues = commands::admin(
        AdminOpcode::SetFeatures,
        0,
        u32::from(u8::from(FeatureId::NumberOfQueues)),
        2 | (2 << 16),
    );
    let (admin, cqes) = Link::new(
        &registry,
        false,
        &[
            connect(0, 0xffff, 31, NQN, HOST, HOST_ID),
            (commands::enable(), Vec::new()),
            (number_of_queues, Vec::new()),
        ],
    );
    let cqe = cqes[0].expect("admin Connect answered");
    assert!(cqe.status.is_success(), "{cqe:?}");
    let cntlid = cqe.dw0 as u16;
    assert!(
        cqes.iter()
            .all(|c| c.is_some_and(|c| c.status.is_success()))
    );
    // I/O queue 1.
    let (io, cqes) = Link::new(
        &registry,
        digests,
        &[connect(1, cntlid, sqsize, NQN, HOST, HOST_ID)],
    );
    assert!(cqes[0].is_some_and(|c| c.status.is_success()), "{cqes:?}");

    // links[0] is the admin queue, links[1] the I/O queue, then the extra queues.
    let mut links = vec![admin, io];
    let mut disks: Vec<Vec<u8>> = BACKENDS
        .iter()
        .map(|&(bs, n)| vec![0u8; bs as usize * n as usize])
        .collect();
    // Operations held back: (link, slot, outcome).
    let mut held: Vec<(usize, usize, IoOutcome)> = Vec::new();
    let mut now = 0u64;

    // Each step: a control byte, a length byte, that many bytes.
    while let [ctl, n, tail @ ..] = rest {
        let n = usize::from(*n).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        rest = tail;
        let ctl = *ctl;
        // What the host sent and what was completed this step bound what may come out.
        let mut sent = vec![0usize; links.len()];
        let mut completed = vec![0usize; links.len()];
        match ctl & 7 {
            2 => {
                // A well-formed I/O command to the I/O queue.
                if links[1].live {
                    let capsule = io_capsule(piece, links[1].digests);
                    links[1].q.receive(&capsule, &registry, now);
                    sent[1] += capsule.len();
                }
            }
            0 | 1 | 3 => {
                // Host bytes to the I/O queue (mostly), the admin queue, or an extra one.
                let i = match ctl & 7 {
                    3 => 0,
                    _ if ctl & 0x40 != 0 && links.len() > 2 => {
                        2 + usize::from(ctl >> 3 & 3) % (links.len() - 2)
                    }
                    _ => 1,
                };
                if links[i].live {
                    // Everything is taken unless the output is full (back-pressure).
                    let took = links[i].q.receive(piece, &registry, now);
                    assert!(
                        took == piece.len()
                            || links[i].q.output_len() >= target_proto::OUTPUT_HIGH_WATER
                    );
                    sent[i] += took;
                }
            }
            4 => {
                // Held operations complete, in the order the bytes pick.
                for &b in piece {
                    if held.is_empty() {
                        break;
                    }
                    let (i, slot, o) = held.remove(usize::from(b) % held.len());
                    links[i].q.io_done(slot, outcome(b >> 5, o));
                    completed[i] += 1;
                }
            }
            5 => {
                // io_done on any slot index: wrong, stale, free or past the end.
                for pair in piece.chunks(2) {
                    let b = pair[0];
                    let i = usize::from(pair.get(1).copied().unwrap_or(0)) % links.len();
                    let slot = match b >> 6 {
                        0 => usize::from(b & 0x3f),
                        1 => 128 + usize::from(b),
                        2 => usize::MAX - usize::from(b),
                        _ => usize::from(b),
                    };
                    links[i].q.io_done(slot, outcome(b, IoOutcome::Ok));
                    completed[i] += 1;
                }
            }
            6 => {
                // A Connect on a new queue with fuzzed fields.
                if links.len() < 2 + MAX_EXTRA {
                    let at = |i: usize| piece.get(i).copied().unwrap_or(0);
                    let qid = u16::from(at(0) % 6);
                    let c = match at(1) % 4 {
                        0 => cntlid,
                        1 => cntlid.wrapping_add(1),
                        2 => 0xffff,
                        _ => u16::from_le_bytes([at(2), at(3)]),
                    };
                    let hostid = if at(4) & 1 == 0 { HOST_ID } else { [at(4); 16] };
                    let hostnqn = if at(4) & 2 == 0 { HOST } else { INTRUDER };
                    // Never OTHER_NQN: every operation must then be NQN's.
                    let subnqn = match at(4) >> 2 & 3 {
                        0 | 1 => NQN,
                        2 => DISCOVERY_NQN,
                        _ => "nqn.nowhere",
                    };
                    let (link, _) = Link::new(
                        &registry,
                        at(5) & 1 != 0,
                        &[connect(qid, c, u16::from(at(6)), subnqn, hostnqn, hostid)],
                    );
                    links.push(link);
                    sent.push(0);
                    completed.push(0);
                }
            }
            _ => {
                // Time passes; the admin queue may go, taking its controller with it.
                now += u64::from(ctl >> 3) * 500;
                if piece.first().is_some_and(|b| b & 1 != 0) && links[0].live {
                    links[0].q.teardown(&registry);
                    links[0].live = false;
                }
                for l in links.iter_mut().filter(|l| l.live) {
                    if !l.q.tick(now, &registry) {
                        l.live = false;
                    }
                }
            }
        }
        // Block operations run; held back when ctl bit 7 says so, else completed now.
        for i in 0..links.len() {
            while let Some((slot, io)) = links[i].q.next_io() {
                let model = execute(&mut disks, &io, links[i].q.buffer_mut(slot));
                if ctl & 0x80 != 0 {
                    held.push((i, slot, model));
                } else {
                    links[i].q.io_done(slot, outcome(ctl >> 4, model));
                    completed[i] += 1;
                }
            }
        }
        for (i, l) in links.iter_mut().enumerate() {
            // An answer per 8 bytes the host sent (a PDU is longer) or per completion,
            // and a TermReq.
            let bound = (sent[i] / 8 + completed[i] + 1) * MAX_ANSWER;
            let was_live = l.live;
            l.drain(bound);
            if was_live && !l.live {
                l.q.teardown(&registry);
            }
        }
    }
    for l in links.iter_mut() {
        l.q.teardown(&registry);
    }
});
