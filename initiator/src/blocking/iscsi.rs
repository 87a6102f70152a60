//! A blocking iSCSI client: the sans-I/O initiator engine of `target-proto` over a real
//! TCP connection (the end-to-end tests drive the target with it).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use target_proto::iscsi::conn::encode_lun;
use target_proto::iscsi::host::{IscsiHost, LoginOptions, ScsiCompletion};

pub const INITIATOR: &str = "iqn.2026-11.dev.xdp-target:e2e-initiator";

pub struct Client {
    pub stream: TcpStream,
    pub h: IscsiHost,
    buf: Vec<u8>,
}

fn other(e: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("{e:?}"))
}

impl Client {
    /// Connects (from the current thread's network namespace) and logs in.
    pub fn login(addr: SocketAddr, opts: LoginOptions) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut c = Self {
            stream,
            h: IscsiHost::new(opts),
            buf: vec![0; 1 << 20],
        };
        while !c.h.logged_in() {
            c.exchange()?;
        }
        Ok(c)
    }

    /// Sends what is queued, then reads once (blocking) and feeds the engine.
    pub fn exchange(&mut self) -> io::Result<()> {
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

    /// Runs one SCSI command on `lun` to completion.
    pub fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        write: Vec<u8>,
        read_len: usize,
    ) -> io::Result<ScsiCompletion> {
        let itt = self.h.command(encode_lun(lun), cdb, write, read_len);
        loop {
            if let Some(c) = self.h.completion() {
                assert_eq!(c.itt, itt, "one command at a time");
                return Ok(c);
            }
            self.exchange()?;
        }
    }

    /// READ(16) or WRITE(16) of `blocks` at `lba`.
    pub fn rw(
        &mut self,
        lun: u64,
        write: Option<Vec<u8>>,
        lba: u64,
        blocks: u32,
        block: usize,
    ) -> io::Result<ScsiCompletion> {
        let mut cdb = [0u8; 16];
        cdb[0] = if write.is_some() { 0x8a } else { 0x88 };
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        match write {
            Some(d) => self.command(lun, &cdb, d, 0),
            None => self.command(lun, &cdb, Vec::new(), blocks as usize * block),
        }
    }

    /// SendTargets=All in a discovery session: the (key, value) pairs.
    pub fn send_targets(&mut self) -> io::Result<Vec<(String, String)>> {
        self.h.send_targets("All");
        loop {
            if let Some(r) = self.h.text_result() {
                return Ok(r.to_vec());
            }
            self.exchange()?;
        }
    }

    /// Writes raw bytes to the socket, bypassing the engine.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads until the target closes the connection (or 10 s pass); the bytes read.
    pub fn read_until_closed(&mut self) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Ok(all),
                Ok(n) => all.extend_from_slice(&self.buf[..n]),
                Err(e) => return Err(e),
            }
        }
    }
}
