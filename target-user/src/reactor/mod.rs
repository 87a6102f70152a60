//! What both transports' reactors share. A reactor is one thread that owns its
//! connections, their engines and an io_uring (shared nothing); the transports differ only
//! in how bytes reach an engine and leave it ([`Link`]). Here: the connection table
//! ([`Conns`]), the per-connection work every reactor does the same way ([`Core`]: close,
//! timers, block completions, a guard that turns a panic into one closed connection), the
//! engines ([`engine`]) and the block I/O ([`block`]).

pub mod block;
pub mod engine;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use block::BlockRunner;
use engine::{Engine, Shared};

use crate::metrics::TransportConns;

/// How often keep-alive timers, login timeouts and dead controllers are checked.
pub const TICK: Duration = Duration::from_millis(100);

/// How a transport moves a connection's bytes: the part of a reactor that differs between
/// kernel sockets and the user-space TCP/IP stack.
pub trait Link {
    /// The transport's handle of one connection (a socket, the stack's connection id).
    type Handle;
    /// Sends what connection `c`'s engine has to send, as far as the transport takes it;
    /// false when the connection is broken. Input the engine could not take yet is offered
    /// again where the transport keeps it.
    fn send(&mut self, c: &mut Conn<Self::Handle>) -> bool;
    /// Lets go of a closed connection's handle: `graceful` after what was queued is sent.
    fn release(&mut self, c: &mut Conn<Self::Handle>, graceful: bool);
    /// Whether everything connection `c` said has left, so an engine that is done may be
    /// closed: its output is empty (a transport that holds more, like posted RDMA sends,
    /// says so).
    fn flushed(&self, c: &Conn<Self::Handle>) -> bool {
        c.q.output_len() == 0
    }
}

/// A reactor's connections and block I/O, and what it does with them whatever the
/// transport. `blocks` is declared before `conns`: dropped first, it waits for the
/// operations still writing into the connections' buffers (see `BlockRunner`'s `Drop`).
pub struct Core<H> {
    /// For the logs: `reactor-N` or `xdp-qN`.
    pub name: String,
    /// Said after "connection closed" in the log: "" for kernel sockets, " (AF_XDP)" (the
    /// tests and the lab count these lines per path).
    pub via: &'static str,
    pub blocks: BlockRunner,
    pub conns: Conns<H>,
    pub shared: Arc<Shared>,
    /// This transport's connection counters: the transport counts what it accepts and
    /// refuses, [`Core::close`] what ends.
    pub metrics: TransportConns,
}

impl<H> Core<H> {
    /// Ends connection `i`: its engine's controller or session is torn down, the transport
    /// lets go of it, and its index is freed once no block operation uses its buffers.
    pub fn close<L: Link<Handle = H>>(
        &mut self,
        link: &mut L,
        i: usize,
        why: &str,
        graceful: bool,
    ) {
        let Some(c) = self.conns.live(i) else {
            return;
        };
        let registry = &self.shared.registry;
        if let Err(panic) = catch(|| c.q.teardown(registry)) {
            error!(
                reactor = self.name,
                "tearing a connection down failed (a bug): {panic}"
            );
        }
        link.release(c, graceful);
        info!(reactor = self.name, peer = %c.peer, engine = c.q.describe(), "connection closed{}: {why}", self.via);
        c.dead = true;
        self.metrics.of(c.q.proto()).closed();
        self.conns.release(i);
    }

    /// A bug showed on connection `i` (`why`, a panic's message): it alone ends.
    pub fn failed<L: Link<Handle = H>>(&mut self, link: &mut L, i: usize, why: &str) {
        error!(
            reactor = self.name,
            "internal error on a connection (a bug), closing it: {why}"
        );
        self.close(link, i, "internal error", false);
    }

    /// Timers of every connection; closes those whose engine ended them. Returns the live
    /// ones: what their timers queued (NOP-In pings) wants sending.
    pub fn tick<L: Link<Handle = H>>(&mut self, link: &mut L, now_ms: u64) -> Vec<usize> {
        let mut live = Vec::new();
        for i in 0..self.conns.len() {
            let Some(c) = self.conns.live(i) else {
                continue;
            };
            let registry = &self.shared.registry;
            match catch(|| {
                let r = c.q.tick(now_ms, registry);
                c.q.log_events(c.peer);
                r
            }) {
                Ok(Ok(())) => live.push(i),
                Ok(Err(why)) => self.close(link, i, why, true),
                Err(panic) => self.failed(link, i, &panic),
            }
        }
        live
    }

    /// Hands finished block operations to their engines (which may queue more). Returns the
    /// live connections that made progress: their output wants sending.
    pub fn reap<L: Link<Handle = H>>(&mut self, link: &mut L) -> Vec<usize> {
        let mut failed = Vec::new();
        let progressed = self.conns.complete_io(&mut self.blocks, &mut failed);
        for (i, why) in failed {
            self.failed(link, i, &why);
        }
        progressed
    }

    /// Sends connection `i`'s output; closes it when the transport says it is broken, or
    /// when its engine is done and everything it said has left.
    pub fn send<L: Link<Handle = H>>(&mut self, link: &mut L, i: usize) {
        let Some(c) = self.conns.live(i) else {
            return;
        };
        if !link.send(c) {
            self.close(link, i, "send failed", false);
        } else if c.q.closing() && link.flushed(c) {
            self.close(
                link,
                i,
                "the protocol ended it (disconnect, logout, keep-alive expiry or protocol error)",
                true,
            );
        }
    }
}

/// A connection as a reactor holds it: its transport's handle `T` (a kernel socket, a
/// user-space stack's connection id), its peer, its engine and its block I/O in flight.
pub struct Conn<T> {
    pub link: T,
    pub peer: SocketAddr,
    pub q: Engine,
    /// io_uring operations still using this connection's buffers.
    pub inflight: usize,
    /// Closed, but kept until `inflight` is zero (the kernel still holds its buffers).
    pub dead: bool,
    /// Received bytes the engine has not taken yet (its output is full); for transports
    /// that cannot leave them in the stack (kernel sockets).
    pub unread: Vec<u8>,
}

/// A reactor's connections by index. An index stays taken until its connection is dead
/// and its last block operation has completed, because io_uring may still write into the
/// engine's buffers.
pub struct Conns<T> {
    slots: Vec<Option<Conn<T>>>,
    free: Vec<usize>,
}

impl<T> Conns<T> {
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// The index the next [`Self::insert`] will use.
    pub fn vacant(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    /// A new live connection; returns its index.
    pub fn insert(&mut self, link: T, peer: SocketAddr, q: Engine) -> usize {
        let c = Conn {
            link,
            peer,
            q,
            inflight: 0,
            dead: false,
            unread: Vec::new(),
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(c);
                i
            }
            None => {
                self.slots.push(Some(c));
                self.slots.len() - 1
            }
        }
    }

    /// Connections held: live ones and closed ones whose block I/O is still in flight.
    pub fn held(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// One past the highest index in use, for walking every connection.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Connection `i` if it is live (not closed).
    pub fn live(&mut self, i: usize) -> Option<&mut Conn<T>> {
        self.slots
            .get_mut(i)
            .and_then(Option::as_mut)
            .filter(|c| !c.dead)
    }

    /// Frees connection `i` once it is dead and no block operation uses its buffers.
    pub fn release(&mut self, i: usize) {
        if self
            .slots
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.dead && c.inflight == 0)
        {
            self.slots[i] = None;
            self.free.push(i);
        }
    }

    /// Runs the block operations connection `i`'s engine queued.
    pub fn run_io(&mut self, i: usize, blocks: &mut BlockRunner) {
        if let Some(c) = self.live(i) {
            c.inflight += blocks.run(i, &mut c.q);
        }
    }

    /// Hands finished block operations to their engines (which may queue more) and frees
    /// dead connections whose last one finished. Returns the live connections that made
    /// progress: their output wants sending.
    ///
    /// A panic in an engine (a bug) is caught per completion: that connection is listed in
    /// `failed` with the panic's message for the reactor to close, the others go on.
    pub fn complete_io(
        &mut self,
        blocks: &mut BlockRunner,
        failed: &mut Vec<(usize, String)>,
    ) -> Vec<usize> {
        let mut progressed = Vec::new();
        for r in blocks.reap() {
            let i = r.conn;
            let Some(c) = self.slots.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            c.inflight -= 1;
            if !c.dead {
                let step = catch(|| {
                    r.complete(&mut c.q);
                    // A multi-step command (iSCSI COMPARE AND WRITE, WRITE SAME) may go on.
                    blocks.run(i, &mut c.q)
                });
                match step {
                    Ok(started) => {
                        c.inflight += started;
                        progressed.push(i);
                    }
                    Err(why) => failed.push((i, why)),
                }
            }
            self.release(i);
        }
        progressed
    }
}

/// A poll(2) entry waiting for `fd` to be readable.
pub fn readable(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Fills `buf` from the kernel's random pool (getrandom(2)).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            got += n.unsigned_abs();
        }
    }
    Ok(())
}

/// Runs `f`, turning a panic into its message. Engines must never panic on any input; if a
/// bug makes one do so anyway, the reactor ends that one connection (tearing its
/// controller or session down) and keeps serving the rest, instead of dying with every
/// connection it held and leaving their registrations stale.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Set when a reactor thread died: the process then stops and exits non-zero.
pub static REACTOR_FAILED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The body of a reactor thread: `run` under a guard. A panic outside any one connection's
/// work (the reactor's own loop) is logged, and the whole target stops loudly (SIGTERM to
/// itself, exit status 1) rather than serving on with a reactor missing: its listeners
/// would keep accepting connections nobody serves.
pub fn reactor_thread(name: &str, run: impl FnOnce()) {
    if let Err(why) = catch(run) {
        tracing::error!(reactor = name, "reactor failed, the target stops: {why}");
        REACTOR_FAILED.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: kill(2) on our own pid; the signal handler installed by main wakes it.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(
            catch(|| -> u8 { panic!("slot {} out of range", 3) }),
            Err("slot 3 out of range".into())
        );
        let v: Vec<u8> = Vec::new();
        let e = catch(|| v[1]).unwrap_err();
        assert!(e.contains("index out of bounds"), "{e}");
    }

    #[test]
    fn random_bytes_are_not_all_zero() {
        let mut b = [0u8; 32];
        fill_random(&mut b).unwrap();
        assert_ne!(b, [0u8; 32]);
    }
}
