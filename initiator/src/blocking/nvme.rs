//! A blocking NVMe/TCP client for end-to-end tests: the sans-I/O host engine of
//! `target-proto` over a real TCP connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use target_proto::nvme_tcp::host::{Completion, HostQueue, commands};
use target_wire::nvme::fabrics::PropertySize;
use target_wire::nvme::opcode::{AdminOpcode, Cns, IoOpcode};
use target_wire::nvme::properties::CSTS;

pub const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000e2e0";

pub struct Client {
    stream: TcpStream,
    h: HostQueue,
    buf: Vec<u8>,
}

fn other(e: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("{e:?}"))
}

impl Client {
    /// Connects the TCP stream (from the current thread's network namespace) and does the
    /// ICReq/ICResp exchange.
    pub fn connect(addr: SocketAddr, digests: bool) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut c = Self {
            stream,
            h: HostQueue::new(digests, digests),
            buf: vec![0; 1 << 20],
        };
        while !c.h.established() {
            c.exchange()?;
        }
        Ok(c)
    }

    /// The client's end of the TCP connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// How long a read may wait for the target (10 s unless changed): longer to ride out
    /// an outage on the path.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))
    }

    /// Sends what is queued, then reads once (blocking) and feeds the engine.
    fn exchange(&mut self) -> io::Result<()> {
        let out = self.h.output().to_vec();
        self.stream.write_all(&out)?;
        self.h.consume_output(out.len());
        let n = self.stream.read(&mut self.buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the target closed the connection",
            ));
        }
        self.h.receive(&self.buf[..n]).map_err(other)
    }

    /// Sends a command and waits for its completion.
    pub fn command(
        &mut self,
        sqe: [u8; 64],
        write: Vec<u8>,
        in_capsule: bool,
        read_len: usize,
    ) -> io::Result<Completion> {
        let cid = self.h.submit(sqe, write, in_capsule, read_len);
        loop {
            if let Some(c) = self.h.completion() {
                assert_eq!(c.cid, cid, "one command at a time");
                return Ok(c);
            }
            self.exchange()?;
        }
    }

    /// Queues a command without waiting for it (an Asynchronous Event Request, which the
    /// controller answers only when an event occurs); [`Self::wait`] collects it.
    pub fn submit(&mut self, sqe: [u8; 64], read_len: usize) -> u16 {
        self.h.submit(sqe, Vec::new(), false, read_len)
    }

    /// Waits for the next completion of any command (within the read timeout).
    pub fn wait(&mut self) -> io::Result<Completion> {
        loop {
            if let Some(c) = self.h.completion() {
                return Ok(c);
            }
            self.exchange()?;
        }
    }

    /// Fabrics Connect; returns the completion (DW0 holds the controller ID).
    pub fn fabrics_connect(
        &mut self,
        qid: u16,
        cntlid: u16,
        nqn: &str,
        host: &str,
    ) -> io::Result<Completion> {
        let kato = if qid == 0 { 30_000 } else { 0 };
        self.fabrics_connect_kato(qid, cntlid, nqn, host, kato)
    }

    /// Fabrics Connect with a keep-alive timeout (admin queue), in milliseconds.
    pub fn fabrics_connect_kato(
        &mut self,
        qid: u16,
        cntlid: u16,
        nqn: &str,
        host: &str,
        kato: u32,
    ) -> io::Result<Completion> {
        let (sqe, data) = commands::connect(qid, cntlid, 31, kato, nqn, host)
            .ok_or_else(|| other("NQN too long"))?;
        self.command(sqe, data, true, 0)
    }

    pub fn property_get(&mut self, offset: u32, size: PropertySize) -> io::Result<u64> {
        let c = self.command(commands::property_get(offset, size), Vec::new(), false, 0)?;
        Ok(u64::from(c.cqe.dw0) | (u64::from(c.cqe.dw1) << 32))
    }

    /// CC.EN = 1 with the queue entry sizes Linux uses; waits for CSTS.RDY.
    pub fn enable(&mut self) -> io::Result<()> {
        self.command(commands::enable(), Vec::new(), false, 0)?;
        if self.property_get(CSTS, PropertySize::Four)? & 1 == 1 {
            Ok(())
        } else {
            Err(io::Error::other("CSTS.RDY did not come up"))
        }
    }

    /// An admin command with CDW10/CDW11 and `read_len` bytes of data back.
    pub fn admin(
        &mut self,
        op: AdminOpcode,
        nsid: u32,
        cdw10: u32,
        cdw11: u32,
        read_len: usize,
    ) -> io::Result<Completion> {
        self.command(
            commands::admin(op, nsid, cdw10, cdw11),
            Vec::new(),
            false,
            read_len,
        )
    }

    /// Identify (CNS `cns`, namespace `nsid`) with its 4 KiB of data back.
    pub fn identify(&mut self, cns: Cns, nsid: u32) -> io::Result<Completion> {
        self.admin(
            AdminOpcode::Identify,
            nsid,
            u32::from(u8::from(cns)),
            0,
            4096,
        )
    }

    /// Read or Write of `blocks` blocks at `slba` on namespace 1 with `block` bytes per block.
    pub fn io(
        &mut self,
        op: IoOpcode,
        slba: u64,
        blocks: u32,
        block: usize,
        data: Vec<u8>,
    ) -> io::Result<Completion> {
        let read_len = if data.is_empty() && op == IoOpcode::Read {
            blocks as usize * block
        } else {
            0
        };
        // Small writes go in the capsule (up to the 8 KiB the target offers), larger ones on R2T.
        let in_capsule = data.len() <= 8192;
        self.command(
            commands::io(op, 1, slba, blocks),
            data,
            in_capsule,
            read_len,
        )
    }

    /// A host that stops reading: sends `count` READ capsules of `bytes` each on this (I/O)
    /// queue and reads none of the answers. Returns how many capsules went out before a
    /// write waited `patience` (the target stopped reading too) or all of them did.
    pub fn send_reads_without_reading(
        &mut self,
        count: usize,
        bytes: u32,
        block: u32,
        patience: Duration,
    ) -> io::Result<usize> {
        use target_wire::nvme::sgl::SglRepr;
        use target_wire::nvme::sqe::Sqe;
        self.stream.set_write_timeout(Some(patience))?;
        let mut sent = 0;
        let mut batch = Vec::new();
        while sent < count {
            batch.clear();
            let n = (count - sent).min(256);
            for k in 0..n {
                let mut sqe = commands::io(IoOpcode::Read, 1, 0, bytes / block);
                let mut s = Sqe::new_unchecked(&mut sqe[..]);
                s.set_cid(u16::try_from((sent + k) % 65536).unwrap_or(0));
                s.set_sgl(&SglRepr::Transport { length: bytes })
                    .map_err(other)?;
                // CapsuleCmd common header: type 4, HLEN 72, PLEN 72.
                batch.extend_from_slice(&[0x04, 0, 72, 0, 72, 0, 0, 0]);
                batch.extend_from_slice(&sqe);
            }
            match self.stream.write_all(&batch) {
                Ok(()) => sent += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(sent);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Sends raw bytes (for malformed-input tests) and returns what comes back before the
    /// target closes the connection.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        self.stream.write_all(bytes)?;
        let mut got = Vec::new();
        loop {
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&self.buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset) => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A per-block pattern that names the block and the pass, so misplaced or stale data shows.
pub fn pattern(lba: u64, pass: u8, block: usize) -> Vec<u8> {
    let mut b = vec![0u8; block];
    for (i, chunk) in b.chunks_mut(16).enumerate() {
        chunk[..8].copy_from_slice(&lba.to_le_bytes());
        chunk[8] = pass;
        chunk[9..16].copy_from_slice(&(i as u64).to_le_bytes()[..7]);
    }
    b
}
