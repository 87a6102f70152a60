//! Listeners added and removed while the target runs (`xdp-target ctl add-listener`,
//! `remove-listener`): the transports' side. The control socket decides what may change
//! (`control::listeners`); this hands the change to every reactor that must make it and
//! waits until each has.
//!
//! - Socket path: every socket reactor has its own listening socket per address
//!   (SO_REUSEPORT, as at start). An added address is bound here, once per reactor, so
//!   that a port in use fails the request before any reactor changes; each reactor then
//!   puts its socket in its epoll set. A removed address's sockets are closed by their
//!   reactors (connections they accepted stay).
//! - XDP path: the AF_XDP reactors' stacks listen on ports, not addresses (as at start).
//!   A port the XDP program steers (`xdp.ports`) is added to every stack; a removed one
//!   is taken off when no listener uses it any more, so its SYNs get RST while the
//!   connections already up go on (the port stays steered for them). With `steer`, a
//!   port the program does not steer yet is added to its map of storage ports
//!   (`STORAGE_PORTS`), after the stacks listen on it, so no SYN meets a stack that
//!   would refuse it.
//! - RDMA: the RDMA CM listeners are on the first reactor's event channel
//!   (`transport::rdma::RdmaListeners`).
//!
//! A reactor takes its changes between two polls: the socket reactors are woken at once
//! (a mio waker), the AF_XDP ones within a tick (they look at a flag every loop).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData};
use mio::net::TcpListener;
use target_common::{MAX_STORAGE_PORTS, PORT_FLAG_STEER, PortEntry};
use tracing::{info, warn};

use crate::reactor::engine::Proto;
use crate::serve::ServeError;

/// How long a request waits for every reactor to apply a change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a listener could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Bind(#[from] ServeError),
    #[error(
        "a reactor did not apply the change within {APPLY_TIMEOUT:?} (is the target stopping?)"
    )]
    Timeout,
    #[error(
        "NVMe/RDMA is not running (no RDMA device or libraries, or rdma.listen was empty at start): an RDMA listener needs a restart with rdma.listen set"
    )]
    NoRdma,
    #[error(
        "no AF_XDP reactors run: there is nothing to steer the port to (the kernel socket serves it without --steer)"
    )]
    NothingToSteerTo,
    #[error("the XDP program steers {MAX_STORAGE_PORTS} ports at most")]
    TooManyPorts,
    #[error("steering port {port}: {message}")]
    Steer { port: u16, message: String },
    #[error("RDMA CM listener on {addr}: {source}")]
    Rdma {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// One reactor's inbox of changes, with what wakes it. Each change carries a sender the
/// reactor drops once the change is made: that is the acknowledgement.
pub struct Inbox<T> {
    pending: AtomicBool,
    changes: Mutex<Vec<(T, Sender<()>)>>,
    waker: Option<mio::Waker>,
}

impl<T> Inbox<T> {
    /// An inbox; `waker` wakes its reactor (`None`: it looks at `pending` every loop).
    pub fn new(waker: Option<mio::Waker>) -> Self {
        Self {
            pending: AtomicBool::new(false),
            changes: Mutex::new(Vec::new()),
            waker,
        }
    }

    /// Posts a change and wakes the reactor; the receiver ends when it is made.
    pub fn post(&self, change: T) -> Receiver<()> {
        let (tx, rx) = channel();
        lock(&self.changes).push((change, tx));
        self.pending.store(true, Ordering::Release);
        if let Some(w) = &self.waker
            && let Err(e) = w.wake()
        {
            warn!("waking a reactor for a listener change: {e}");
        }
        rx
    }

    /// The changes posted since the last call (cheap when there are none: one atomic
    /// load, so a busy-polling reactor can ask every loop).
    pub fn take(&self) -> Vec<(T, Sender<()>)> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.changes))
    }
}

/// Waits for every reactor to drop its acknowledgement.
pub fn wait_all(acks: Vec<Receiver<()>>) -> Result<(), ListenerError> {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    for rx in acks {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => return Err(ListenerError::Timeout),
        }
    }
    Ok(())
}

/// A socket reactor's listener change.
pub enum SocketChange {
    /// Start accepting on this socket, bound to the address, for the protocol.
    Add(TcpListener, Proto, SocketAddr),
    /// Close the listening sockets bound to the address.
    Remove(SocketAddr),
}

/// An AF_XDP reactor's change: the ports its stack listens on.
pub enum PortChange {
    Add(u16, Proto),
    Remove(u16),
}

/// What became of an added or removed TCP listener on the XDP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpPath {
    /// No AF_XDP reactors run (no `--xdp`, or AF_XDP fell back to kernel sockets).
    Off,
    /// The port is steered: the AF_XDP reactors now serve it (or, removed, no longer
    /// accept on it).
    Served,
    /// The port was not steered and is now (`steer`): the XDP program redirects it and
    /// the AF_XDP reactors serve it.
    Steered,
    /// The port is not in `xdp.ports`: the XDP program passes it and the kernel socket
    /// serves it on every interface.
    NotSteered,
    /// Removed, but another listener still uses the port: the AF_XDP reactors keep it.
    Kept,
}

impl XdpPath {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Off => "no AF_XDP reactors run: the kernel sockets serve it",
            Self::Served => "the port is steered (xdp.ports): the AF_XDP reactors serve it too",
            Self::Steered => {
                "the port is steered from now on (added to xdp.ports): the AF_XDP reactors serve it too"
            }
            Self::NotSteered => {
                "the port is not steered (not in xdp.ports): the XDP program passes it and the kernel socket serves it (add it with steer: true, --steer, to have the AF_XDP reactors serve it)"
            }
            Self::Kept => "another listener still uses the port: the AF_XDP reactors keep it",
        }
    }
}

/// The running transports' reactors, for listener changes.
pub struct Listeners {
    sockets: Mutex<Vec<Arc<Inbox<SocketChange>>>>,
    xdp: Mutex<Vec<Arc<Inbox<PortChange>>>>,
    /// The ports the XDP program steers (`xdp.ports`).
    steered: Mutex<Vec<u16>>,
    /// The XDP program's map of storage ports (when AF_XDP reactors run).
    port_map: Mutex<Option<BpfHashMap<MapData, u16, PortEntry>>>,
    rdma: Mutex<Option<crate::transport::rdma::RdmaListeners>>,
}

impl Listeners {
    pub fn new(steered: Vec<u16>) -> Self {
        Self {
            sockets: Mutex::new(Vec::new()),
            xdp: Mutex::new(Vec::new()),
            steered: Mutex::new(steered),
            port_map: Mutex::new(None),
            rdma: Mutex::new(None),
        }
    }

    /// A socket reactor's inbox (at its start).
    pub fn socket_reactor(&self, inbox: Arc<Inbox<SocketChange>>) {
        lock(&self.sockets).push(inbox);
    }

    /// An AF_XDP reactor's inbox (at its start).
    pub fn xdp_reactor(&self, inbox: Arc<Inbox<PortChange>>) {
        lock(&self.xdp).push(inbox);
    }

    /// The XDP program's map of storage ports (when the AF_XDP reactors run).
    pub fn steering(&self, map: BpfHashMap<MapData, u16, PortEntry>) {
        *lock(&self.port_map) = Some(map);
    }

    /// The RDMA reactors' listener handle (when RDMA runs).
    pub fn rdma_running(&self, rdma: crate::transport::rdma::RdmaListeners) {
        *lock(&self.rdma) = Some(rdma);
    }

    /// Whether the AF_XDP reactors would serve `port`.
    fn xdp_path(&self, port: u16) -> XdpPath {
        if lock(&self.xdp).is_empty() {
            XdpPath::Off
        } else if lock(&self.steered).contains(&port) {
            XdpPath::Served
        } else {
            XdpPath::NotSteered
        }
    }

    /// Starts accepting `proto` on `addr` on every socket reactor and, when the port is
    /// steered (or `steer` asks to steer it), on every AF_XDP reactor (`port_in_use`:
    /// another listener has the port, so the AF_XDP stacks already listen on it). Nothing
    /// changes when a bind fails; what a later step did is undone when it fails.
    pub fn add_tcp(
        &self,
        proto: Proto,
        addr: SocketAddr,
        steer: bool,
        port_in_use: bool,
    ) -> Result<XdpPath, ListenerError> {
        let mut xdp = self.xdp_path(addr.port());
        if steer && xdp == XdpPath::Off {
            return Err(ListenerError::NothingToSteerTo);
        }
        if steer && xdp == XdpPath::NotSteered {
            if lock(&self.port_map).is_none() {
                return Err(ListenerError::Steer {
                    port: addr.port(),
                    message:
                        "the XDP program's port map could not be opened (see the log at start)"
                            .into(),
                });
            }
            if lock(&self.steered).len() >= MAX_STORAGE_PORTS as usize {
                return Err(ListenerError::TooManyPorts);
            }
            xdp = XdpPath::Steered;
        }
        let inboxes = lock(&self.sockets).clone();
        // Bound here, all of them before any reactor is told: a port in use fails now.
        let mut bound = Vec::with_capacity(inboxes.len());
        for _ in &inboxes {
            bound.push(crate::transport::socket::listener(addr)?);
        }
        let acks = inboxes
            .iter()
            .zip(bound)
            .map(|(inbox, l)| inbox.post(SocketChange::Add(l, proto, addr)))
            .collect();
        let added = wait_all(acks).and_then(|()| {
            if matches!(xdp, XdpPath::Served | XdpPath::Steered) {
                let acks = lock(&self.xdp)
                    .iter()
                    .map(|inbox| inbox.post(PortChange::Add(addr.port(), proto)))
                    .collect();
                wait_all(acks)?;
            }
            if xdp == XdpPath::Steered {
                // Only now that every stack listens on it: a SYN redirected earlier would
                // get RST.
                self.steer(addr.port())?;
            }
            Ok(())
        });
        if let Err(e) = added {
            // A reactor that did not answer, or a map that refused the port: nothing of
            // the request may stay.
            warn!(%addr, "adding the listener failed, undoing it: {e}");
            if let Err(undo) = self.remove_tcp(addr, port_in_use) {
                warn!(%addr, "undoing the listener failed too: {undo}");
            }
            return Err(e);
        }
        info!(%addr, ?proto, reactors = inboxes.len(), xdp = xdp.describe(), "listener added");
        Ok(xdp)
    }

    /// Adds `port` to the XDP program's storage ports, in the next counter slot (the
    /// slots follow `xdp.ports`, as at start).
    fn steer(&self, port: u16) -> Result<(), ListenerError> {
        let mut steered = lock(&self.steered);
        let mut map = lock(&self.port_map);
        let map = map.as_mut().ok_or(ListenerError::Steer {
            port,
            message: "no port map".into(),
        })?;
        let slot = u32::try_from(steered.len()).unwrap_or(u32::MAX);
        map.insert(
            port,
            PortEntry {
                slot,
                flags: PORT_FLAG_STEER,
            },
            0,
        )
        .map_err(|e| ListenerError::Steer {
            port,
            message: e.to_string(),
        })?;
        steered.push(port);
        info!(port, slot, "the XDP program steers port {port} from now on");
        Ok(())
    }

    /// Stops accepting on `addr`: its sockets close on every socket reactor; the AF_XDP
    /// reactors stop accepting on the port unless `port_still_used` (another listener).
    /// Connections already up stay.
    pub fn remove_tcp(
        &self,
        addr: SocketAddr,
        port_still_used: bool,
    ) -> Result<XdpPath, ListenerError> {
        let acks = lock(&self.sockets)
            .iter()
            .map(|inbox| inbox.post(SocketChange::Remove(addr)))
            .collect();
        wait_all(acks)?;
        let mut xdp = self.xdp_path(addr.port());
        if xdp == XdpPath::Served {
            if port_still_used {
                xdp = XdpPath::Kept;
            } else {
                let acks = lock(&self.xdp)
                    .iter()
                    .map(|inbox| inbox.post(PortChange::Remove(addr.port())))
                    .collect();
                wait_all(acks)?;
            }
        }
        info!(%addr, xdp = xdp.describe(), "listener removed (connections already up stay)");
        Ok(xdp)
    }

    /// An RDMA CM listener on `addr`, on the first RDMA reactor.
    pub fn add_rdma(&self, addr: SocketAddr) -> Result<(), ListenerError> {
        let rdma = lock(&self.rdma);
        let r = rdma.as_ref().ok_or(ListenerError::NoRdma)?;
        let ack = r.add(addr)?;
        wait_all(vec![ack])?;
        info!(%addr, "NVMe/RDMA listener added");
        Ok(())
    }

    /// Destroys the RDMA CM listener on `addr` (queue pairs already up stay).
    pub fn remove_rdma(&self, addr: SocketAddr) -> Result<(), ListenerError> {
        let rdma = lock(&self.rdma);
        let r = rdma.as_ref().ok_or(ListenerError::NoRdma)?;
        wait_all(vec![r.remove(addr)])?;
        info!(%addr, "NVMe/RDMA listener removed (queue pairs already up stay)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbox_hands_changes_over_once_and_acknowledges_by_drop() {
        let inbox = Inbox::new(None);
        assert!(inbox.take().is_empty());
        let rx = inbox.post(PortChange::Add(4421, Proto::Nvme));
        let taken = inbox.take();
        assert_eq!(taken.len(), 1);
        assert!(inbox.take().is_empty(), "taken once");
        assert!(matches!(taken[0].0, PortChange::Add(4421, Proto::Nvme)));
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
        drop(taken);
        wait_all(vec![rx]).unwrap();
    }

    #[test]
    fn sockets_bind_once_per_reactor_and_a_taken_port_changes_nothing() {
        let l = Listeners::new(vec![4420]);
        let inboxes: Vec<Arc<Inbox<SocketChange>>> =
            (0..2).map(|_| Arc::new(Inbox::new(None))).collect();
        for i in &inboxes {
            l.socket_reactor(Arc::clone(i));
        }
        // Reactors that apply what they are given.
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = inboxes
            .iter()
            .map(|i| {
                let (i, stop) = (Arc::clone(i), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        for (c, _ack) in i.take() {
                            match c {
                                SocketChange::Add(s, _, a) => held.push((s, a)),
                                SocketChange::Remove(a) => held.retain(|h| h.1 != a),
                            }
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        // A port another program holds without SO_REUSEPORT: refused, nothing posted.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = l
            .add_tcp(Proto::Nvme, taken.local_addr().unwrap(), false, false)
            .unwrap_err();
        assert!(e.to_string().contains("cannot listen"), "{e}");
        // A free one: every reactor listens; no AF_XDP reactors, so the kernel serves it.
        let free = taken.local_addr().unwrap();
        drop(taken);
        assert!(matches!(
            l.add_tcp(Proto::Iscsi, free, true, false),
            Err(ListenerError::NothingToSteerTo)
        ));
        assert_eq!(
            l.add_tcp(Proto::Iscsi, free, false, false).unwrap(),
            XdpPath::Off
        );
        std::net::TcpStream::connect(free).unwrap();
        assert_eq!(l.remove_tcp(free, false).unwrap(), XdpPath::Off);
        assert!(std::net::TcpStream::connect(free).is_err());
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        assert!(matches!(l.add_rdma(free), Err(ListenerError::NoRdma)));
    }
}
