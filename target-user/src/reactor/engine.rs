//! A connection's protocol engine ([`Engine`]: NVMe/TCP or iSCSI, sans-I/O, from
//! target-proto) and what every reactor of every transport shares ([`Shared`]).

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use target_proto::iscsi::Registry as IscsiRegistry;
use target_proto::iscsi::conn::{ConnEvent, ConnParams, IscsiConn};
use target_proto::nvme::controller::{BlockIo, IoOutcome};
use target_proto::nvme::subsystem::Registry;
use target_proto::nvme_rdma::queue::NvmeRdmaQueue;
use target_proto::nvme_tcp::icreq::ControllerParams;
use target_proto::nvme_tcp::queue::NvmeTcpQueue;
use tracing::{debug, info, warn};

use super::block::{Backends, BlockRunner};
use super::fill_random;

/// Which protocol a listening port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Nvme,
    Iscsi,
}

/// What every reactor of every transport shares: the registries (touched only at
/// connect/login and teardown), the engines' parameters and the backends.
pub struct Shared {
    pub registry: Arc<Mutex<Registry>>,
    pub iscsi_registry: Arc<Mutex<IscsiRegistry>>,
    pub iscsi_params: ConnParams,
    pub params: ControllerParams,
    pub backends: Arc<Backends>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How long a reactor keeps polling after its last event before it sleeps.
    pub busy_poll: std::time::Duration,
}

impl Shared {
    /// A fresh engine for a connection accepted on a `proto` port at local address `local`.
    /// Fails only when the kernel gives no random bytes for the iSCSI CHAP challenge: a
    /// predictable challenge would let a recorded answer log in again, so the connection
    /// is refused instead.
    pub fn engine(&self, proto: Proto, local: Option<IpAddr>) -> std::io::Result<Engine> {
        Ok(match proto {
            Proto::Nvme => Engine::Nvme(Box::new(NvmeTcpQueue::new(self.params, local))),
            Proto::Iscsi => {
                let mut random = [0u8; 17];
                fill_random(&mut random)?;
                Engine::Iscsi(Box::new(IscsiConn::new(
                    self.iscsi_params,
                    Arc::clone(&self.iscsi_registry),
                    local,
                    random,
                )))
            }
        })
    }

    /// A block runner for one reactor; it owns an io_uring when any backend is a file.
    pub fn block_runner(&self) -> std::io::Result<BlockRunner> {
        BlockRunner::new(Arc::clone(&self.backends))
    }
}

/// A connection's protocol engine. NVMe/TCP and iSCSI take and give bytes
/// ([`Engine::receive`], [`Engine::output`]); an NVMe/RDMA queue pair takes capsules and
/// gives actions, which its transport drives directly (`transport::rdma`), so the byte
/// methods see no input and no output for it.
pub enum Engine {
    Nvme(Box<NvmeTcpQueue>),
    Iscsi(Box<IscsiConn>),
    NvmeRdma(Box<NvmeRdmaQueue>),
}

impl Engine {
    pub fn proto(&self) -> Proto {
        match self {
            Self::Nvme(_) | Self::NvmeRdma(_) => Proto::Nvme,
            Self::Iscsi(_) => Proto::Iscsi,
        }
    }

    /// Feeds received bytes; returns how many the engine took. It takes fewer once its
    /// output reaches [`target_proto::OUTPUT_HIGH_WATER`]: the caller offers the rest
    /// again after sending, so a peer that stops reading stops being read.
    pub fn receive(&mut self, input: &[u8], registry: &Mutex<Registry>, now: u64) -> usize {
        #[cfg(debug_assertions)]
        test_panic(input);
        match self {
            Self::Nvme(q) => q.receive(input, registry, now),
            Self::Iscsi(c) => c.receive(input, now),
            Self::NvmeRdma(_) => 0,
        }
    }

    /// The first piece of what waits to be sent (empty when nothing does).
    pub fn output(&self) -> &[u8] {
        match self {
            Self::Nvme(q) => q.output(),
            Self::Iscsi(c) => c.output(),
            Self::NvmeRdma(_) => &[],
        }
    }

    /// How many bytes wait to be sent, in all pieces.
    pub fn output_len(&self) -> usize {
        match self {
            Self::Nvme(q) => q.output_len(),
            Self::Iscsi(c) => c.output_len(),
            Self::NvmeRdma(_) => 0,
        }
    }

    /// Fills `into` with the pieces waiting to be sent, in order (NVMe/TCP C2HData and
    /// iSCSI Data-In data are pieces of their command's buffer, sent from there); returns
    /// how many it filled. Pieces that do not fit wait for the next call.
    pub fn output_slices<'a>(&'a self, into: &mut [IoSlice<'a>]) -> usize {
        match self {
            Self::Nvme(q) => fill_slices(q.output_chunks(), into),
            Self::Iscsi(c) => fill_slices(c.output_chunks(), into),
            Self::NvmeRdma(_) => 0,
        }
    }

    /// `n` bytes of the output were sent (from the first piece on).
    pub fn consume_output(&mut self, n: usize) {
        match self {
            Self::Nvme(q) => q.consume_output(n),
            Self::Iscsi(c) => c.consume_output(n),
            Self::NvmeRdma(_) => {}
        }
    }

    pub fn closing(&self) -> bool {
        match self {
            Self::Nvme(q) => q.closing(),
            Self::Iscsi(c) => c.closing(),
            Self::NvmeRdma(q) => q.closing(),
        }
    }

    pub fn next_io(&mut self) -> Option<(usize, BlockIo)> {
        match self {
            Self::Nvme(q) => q.next_io(),
            Self::Iscsi(c) => c.next_io(),
            Self::NvmeRdma(q) => q.next_io(),
        }
    }

    pub fn buffer_mut(&mut self, slot: usize) -> &mut [u8] {
        match self {
            Self::Nvme(q) => q.buffer_mut(slot),
            Self::Iscsi(c) => c.buffer_mut(slot),
            Self::NvmeRdma(q) => q.buffer_mut(slot),
        }
    }

    pub fn io_done(&mut self, slot: usize, outcome: IoOutcome) {
        match self {
            Self::Nvme(q) => q.io_done(slot, outcome),
            Self::Iscsi(c) => c.io_done(slot, outcome),
            Self::NvmeRdma(q) => q.io_done(slot, outcome),
        }
    }

    /// False when the connection must end; `why` says why.
    pub fn tick(&mut self, now: u64, registry: &Mutex<Registry>) -> Result<(), &'static str> {
        match self {
            Self::Nvme(q) => {
                if q.tick(now, registry) {
                    Ok(())
                } else {
                    Err(q.end_reason().unwrap_or("the queue ended"))
                }
            }
            Self::NvmeRdma(q) => {
                if q.tick(now, registry) {
                    Ok(())
                } else {
                    Err(q.end_reason().unwrap_or("the queue ended"))
                }
            }
            Self::Iscsi(c) => {
                if c.tick(now) {
                    Ok(())
                } else {
                    Err("NOP-In ping unanswered, login timeout or session reinstated")
                }
            }
        }
    }

    pub fn teardown(&mut self, registry: &Mutex<Registry>) {
        match self {
            Self::Nvme(q) => q.teardown(registry),
            Self::Iscsi(c) => c.teardown(),
            Self::NvmeRdma(q) => q.teardown(registry),
        }
    }

    /// Logs what the iSCSI engine reported.
    pub fn log_events(&mut self, peer: SocketAddr) {
        let Self::Iscsi(c) = self else { return };
        for e in c.take_events() {
            match e {
                ConnEvent::LoggedIn {
                    initiator,
                    target,
                    tsih,
                    reinstated,
                } => info!(%peer, initiator, ?target, tsih, reinstated, "iSCSI login"),
                ConnEvent::LoginFailed { status, why } => {
                    warn!(%peer, status = format!("{status:04x}"), "iSCSI login refused: {why}");
                }
                ConnEvent::ProtocolError(why) => warn!(%peer, "iSCSI protocol error: {why}"),
                ConnEvent::LoggedOut => debug!(%peer, "iSCSI logout"),
                ConnEvent::NopTimeout => {
                    warn!(%peer, "iSCSI initiator stopped answering NOP-In pings");
                }
                ConnEvent::Reinstated => info!(
                    %peer,
                    "iSCSI session ended: reinstated by a new login, or its target was removed"
                ),
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Nvme(q) => format!("NVMe qid {:?}", q.controller().qid()),
            Self::Iscsi(_) => "iSCSI".into(),
            Self::NvmeRdma(q) => format!("NVMe/RDMA qid {}", q.negotiated().qid),
        }
    }
}

/// Puts the non-empty `chunks` into `into` while there is room; how many it put.
fn fill_slices<'a>(chunks: impl Iterator<Item = &'a [u8]>, into: &mut [IoSlice<'a>]) -> usize {
    let mut k = 0;
    for b in chunks.filter(|b| !b.is_empty()).take(into.len()) {
        into[k] = IoSlice::new(b);
        k += 1;
    }
    k
}

/// Debug builds only (the end-to-end tests run them): panics when received bytes contain
/// `XDPT_TEST_PANIC_ON`, so a test can show that a bug in one connection's engine ends that
/// connection alone. Release builds have no such hook.
#[cfg(debug_assertions)]
fn test_panic(input: &[u8]) {
    static MARKER: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let marker = MARKER.get_or_init(|| {
        std::env::var_os("XDPT_TEST_PANIC_ON")
            .map(|m| m.into_encoded_bytes())
            .filter(|m| !m.is_empty())
    });
    if let Some(m) = marker
        && input.windows(m.len()).any(|w| w == m.as_slice())
    {
        panic!("XDPT_TEST_PANIC_ON: a test asked this engine to fail");
    }
}
