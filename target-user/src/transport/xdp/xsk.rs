//! One AF_XDP socket bound to one rx queue of an interface, seen by the user-space TCP/IP
//! stack as an IP-level device (smoltcp's `phy::Device`, `Medium::Ip`).
//!
//! Frames live in a UMEM the socket owns: half of them wait in the fill ring for the kernel
//! to receive into, the rest are free for sending. A received frame is handed to the stack
//! in place (no copy) and goes back to the fill ring once read; a sent packet is written by
//! the stack straight into a free frame behind the Ethernet header, and the frame is free
//! again when the completion ring returns it.
//!
//! Ethernet is handled here, not in the stack, because ARP stays with the kernel (the XDP
//! program passes it): the MAC to answer a connection with is learned from the SYN that
//! opened it (its source MAC is the next hop towards the peer), so no ARP is ever needed
//! for the connections a target serves. Only a SYN to one of the stack's addresses teaches
//! a MAC, for its own connection (peer address, peer port, our port): a forged frame can
//! at most misdirect the answers of a connection it opened itself, never another peer's,
//! and a SYN that names a live connection's four-tuple with another MAC changes nothing
//! (see [`Xsk::take_contested`]).

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::ptr::NonNull;

pub use target_common::rx::Flow;
use target_common::rx::{Heard, flow_of, heard};
use target_tcp::checksum;
use target_tcp::phy::{self, DeviceCapabilities, Medium};
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig};

use crate::mapping::Mapping;

/// Bind flag: the socket carries multi-buffer packets (frames larger than a UMEM chunk).
const XDP_USE_SG: u16 = 1 << 4;
/// The most a gathered multi-buffer frame may hold: the largest IP packet and its
/// Ethernet header. The kernel bounds the chain anyway; this bounds what we copy.
const MAX_GATHERED: usize = ETH_HEADER + 65_535;
/// Descriptor option: the packet continues in the next descriptor.
const XDP_PKT_CONTD: u32 = 1;
/// Descriptor option: the packet has TX metadata (`struct xsk_tx_metadata`) before it.
const XDP_TX_METADATA: u32 = 1 << 1;
/// UMEM flag: reserve `tx_metadata_len` bytes before every transmitted descriptor
/// (required for it since Linux 6.11).
const XDP_UMEM_TX_METADATA_LEN: u32 = 1 << 2;
/// UMEM flag: the kernel computes requested checksums itself (copy mode only).
const XDP_UMEM_TX_SW_CSUM: u32 = 1 << 1;
/// `struct xsk_tx_metadata`: flags (u64), csum_start (u16), csum_offset (u16), padding,
/// launch_time (u64).
const TX_METADATA_LEN: usize = 24;
/// Metadata flag: checksum the packet from csum_start and store it at csum_offset.
const XDP_TXMD_FLAGS_CHECKSUM: u64 = 1 << 1;
/// Where the kernel puts received data in a frame in copy mode (XDP_PACKET_HEADROOM).
const RX_HEADROOM: u32 = 256;
const ETH_HEADER: usize = 14;
/// Descriptors moved per ring operation.
const BATCH: u32 = 64;

/// How the socket is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    ZeroCopy,
    Copy,
}

impl BindMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::ZeroCopy => "zero-copy",
            Self::Copy => "copy",
        }
    }
}

/// Sizes of one socket's UMEM and rings.
#[derive(Clone, Copy, Debug)]
pub struct XskSizes {
    /// Frames in the UMEM (each `frame_size` bytes).
    pub frames: u32,
    pub frame_size: u32,
    /// Entries in each ring (power of two).
    pub ring: u32,
    /// Who computes the TCP checksums of sent packets.
    pub tx_checksum: TxChecksum,
    /// The driver says its zero-copy TX honours a checksum request (netlink `xsk-features`,
    /// see `netdev`): only then is it asked for one in zero-copy mode.
    pub zero_copy_tx_checksum: bool,
}

/// Who computes the TCP checksums of sent packets.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TxChecksum {
    /// The device, asked through AF_XDP TX metadata (Linux 6.11); user space only seeds
    /// the field with the pseudo-header sum. Falls back to `software` where the kernel
    /// cannot register TX metadata.
    #[default]
    Offload,
    /// User space computes them.
    Software,
    /// Asked as with `offload`, but the kernel computes them in software before the
    /// packet leaves (copy mode only): the receiver then checks what `offload` would
    /// have the device compute. For tests.
    Kernel,
}

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("cannot map {0} bytes for the UMEM: {1}")]
    Mmap(usize, std::io::Error),
    #[error("{what} failed: {errno}")]
    Sys { what: &'static str, errno: i32 },
}

impl XskError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Sys { errno, .. } => Some(*errno),
            Self::Mmap(..) => None,
        }
    }
}

fn sys(what: &'static str) -> impl FnOnce(xdpilone::Errno) -> XskError {
    move |e| XskError::Sys {
        what,
        errno: e.get_raw(),
    }
}

/// A received packet waiting for the stack.
enum Received {
    /// In one UMEM frame, read in place.
    Frame(XdpDesc),
    /// Spread over several frames (jumbo MTU), gathered here; the frames are recycled.
    Gathered(Vec<u8>),
}

/// The receive half: the rx ring and frames to give back to the kernel.
struct RxSide {
    rx: RingRx,
    /// Received packets not yet handed to the stack.
    pending: VecDeque<Received>,
    /// A multi-buffer packet being gathered.
    partial: Option<Vec<u8>>,
    /// The packet being gathered outgrew `MAX_GATHERED`: it is dropped at its end.
    too_long: bool,
    /// Buffers of gathered packets, for reuse.
    spare: Vec<Vec<u8>>,
    /// Frames read by the stack, to go back to the fill ring.
    recycle: Vec<u64>,
}

/// The send half: free frames, the tx ring, and where to send.
struct TxSide {
    tx: RingTx,
    base: NonNull<u8>,
    frame_size: u32,
    free: Vec<u64>,
    /// Runs of adjacent frames for packets larger than a frame.
    runs: Runs,
    /// Bytes of TX metadata before every descriptor: 0, or `TX_METADATA_LEN` when the
    /// device computes TCP checksums.
    meta: usize,
    /// `TxChecksum::Kernel`: the kernel, not the device, completes them.
    kernel_checksum: bool,
    /// Packets written into frames, not yet on the tx ring.
    queued: Vec<XdpDesc>,
    mac: [u8; 6],
    neighbours: Neighbours,
    scratch: Vec<u8>,
    stats: XskStats,
}

/// The next hop (MAC) of each connection, learned from the SYN that opened it.
///
/// Bounded, because SYNs are cheap to forge: beyond `NEIGHBOURS_MAX` connections an
/// arbitrary one gives way (a live one then stops being answered until the peer opens a
/// new connection, which only a flood of this size can cause). The last connection used is
/// kept aside: a burst of frames to one connection costs no lookup.
#[derive(Default)]
struct Neighbours {
    map: HashMap<Flow, [u8; 6]>,
    last: Option<(Flow, [u8; 6])>,
    /// SYNs that named a known connection with another MAC, for the reactor to settle.
    contested: Vec<(Flow, [u8; 6])>,
}

const NEIGHBOURS_MAX: usize = 4096;
/// Contested SYNs kept between two reactor loops; more are ignored (their peers retry).
const CONTESTED_MAX: usize = 64;

impl Neighbours {
    /// A SYN opening `flow` came from `mac`.
    fn heard_syn(&mut self, flow: Flow, mac: [u8; 6]) {
        match self.map.get(&flow) {
            Some(&known) if known == mac => {}
            Some(_) => {
                if self.contested.len() < CONTESTED_MAX {
                    self.contested.push((flow, mac));
                }
            }
            None => self.set(flow, mac),
        }
    }

    fn set(&mut self, flow: Flow, mac: [u8; 6]) {
        if self.last.is_some_and(|(f, _)| f == flow) {
            self.last = None;
        }
        if self.map.len() >= NEIGHBOURS_MAX
            && !self.map.contains_key(&flow)
            && let Some(old) = self.map.keys().next().copied()
        {
            self.map.remove(&old);
            if self.last.is_some_and(|(f, _)| f == old) {
                self.last = None;
            }
        }
        self.map.insert(flow, mac);
    }

    fn get(&mut self, flow: Flow) -> Option<[u8; 6]> {
        match self.last {
            Some((last, mac)) if last == flow => Some(mac),
            _ => {
                let mac = *self.map.get(&flow)?;
                self.last = Some((flow, mac));
                Some(mac)
            }
        }
    }
}

/// What the socket did, for the logs and the benchmark.
#[derive(Clone, Copy, Debug, Default)]
pub struct XskStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Packets the stack sent while no frame was free.
    pub tx_no_frame: u64,
    /// Packets to a peer whose MAC was never seen.
    pub tx_no_neighbour: u64,
    /// Packets that came in several frames (jumbo MTU), gathered.
    pub rx_multi: u64,
    /// Packets sent in several frames.
    pub tx_multi: u64,
    /// Multi-buffer packets longer than an IP packet can be, dropped.
    pub rx_too_long: u64,
    /// Frames that were not TCP to one of the stack's addresses (tagged, other
    /// destinations), dropped.
    pub rx_foreign: u64,
    pub wakeups: u64,
}

/// An AF_XDP socket on one queue. Field order is drop order: rings, then the UMEM, then
/// the memory under it.
pub struct Xsk {
    rx: RxSide,
    tx: TxSide,
    fq: DeviceQueue,
    _umem: Umem,
    _area: Mapping,
    fd: i32,
    mtu: usize,
    mode: BindMode,
    multi_buffer: bool,
    /// The stack's addresses: frames to others are dropped, and teach nothing.
    locals: Vec<IpAddr>,
}

// SAFETY: the raw pointers (UMEM base, rings) point into mappings owned by this value and
// used only by the thread that owns it; it is moved to its reactor thread once, before use.
unsafe impl Send for Xsk {}

impl Xsk {
    /// Creates a socket on `iface` queue `queue` and binds it, zero-copy or copy mode.
    pub fn open(
        iface: &str,
        queue: u32,
        sizes: XskSizes,
        mode: BindMode,
        mac: [u8; 6],
        iface_mtu: usize,
    ) -> Result<Self, XskError> {
        let len = sizes.frames as usize * sizes.frame_size as usize;
        let area = Mapping::new(len, true).map_err(|e| XskError::Mmap(len, e))?;
        let plain = UmemConfig {
            fill_size: sizes.ring,
            complete_size: sizes.ring,
            frame_size: sizes.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        let with_metadata = UmemConfig {
            flags: XDP_UMEM_TX_METADATA_LEN
                | if sizes.tx_checksum == TxChecksum::Kernel {
                    XDP_UMEM_TX_SW_CSUM
                } else {
                    0
                },
            tx_metadata_len: TX_METADATA_LEN as u32,
            ..plain.clone()
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr(), len);
        // SAFETY: `area` is a page-aligned mapping of `len` bytes that outlives the UMEM
        // (both live in the returned `Xsk`, the UMEM dropped first).
        let register = |config| unsafe { Umem::new(config, slice) };
        let (umem, offload) = match sizes.tx_checksum {
            // Zero-copy drivers skip a checksum request they cannot honour, silently (i40e,
            // ixgbe have no TX metadata at all): in zero-copy mode user space computes them
            // unless the driver says it honours one. In copy mode the kernel's skb path
            // always completes them.
            TxChecksum::Software => (register(plain), false),
            _ if mode == BindMode::ZeroCopy && !sizes.zero_copy_tx_checksum => {
                (register(plain), false)
            }
            // Kernels before 6.11 refuse the flag: checksums are then computed here.
            _ => match register(with_metadata) {
                Ok(u) => (Ok(u), true),
                Err(_) => (register(plain), false),
            },
        };
        let umem = umem.map_err(sys("registering the UMEM"))?;
        let meta = if offload { TX_METADATA_LEN } else { 0 };
        let mut info = IfInfo::invalid();
        let name = CString::new(iface).map_err(|_| XskError::Sys {
            what: "interface name",
            errno: libc::EINVAL,
        })?;
        info.from_name(&name)
            .map_err(sys("looking up the interface"))?;
        info.set_queue(queue);
        let sock = Socket::with_shared(&info, &umem).map_err(sys("creating the socket"))?;
        let mut fq = umem
            .fq_cq(&sock)
            .map_err(sys("setting up fill/completion rings"))?;
        let ring = NonZeroU32::new(sizes.ring);
        let headroom = if mode == BindMode::Copy {
            RX_HEADROOM as usize
        } else {
            0
        };
        // Frames larger than a chunk need multi-buffer sockets (Linux 6.6).
        // Received frames start after the headroom, sent ones after the TX metadata.
        let reserved = headroom.max(meta);
        let multi_buffer = iface_mtu + ETH_HEADER + reserved > sizes.frame_size as usize;
        let bind_flags = SocketConfig::XDP_BIND_NEED_WAKEUP
            | if multi_buffer { XDP_USE_SG } else { 0 }
            | match mode {
                BindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
                BindMode::Copy => SocketConfig::XDP_BIND_COPY,
            };
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: ring,
                    tx_size: ring,
                    bind_flags,
                },
            )
            .map_err(sys("setting up rx/tx rings"))?;
        let rx = user.map_rx().map_err(sys("mapping the rx ring"))?;
        let tx = user.map_tx().map_err(sys("mapping the tx ring"))?;
        umem.bind(&user).map_err(sys("binding the socket"))?;
        let fd = rx.as_raw_fd();

        // Half the frames wait for received packets, half are free for sending.
        let all: Vec<u64> = (0..u64::from(sizes.frames))
            .map(|i| i * u64::from(sizes.frame_size))
            .collect();
        let (fill, free) = all.split_at(all.len() / 2);
        // With multi-buffer, half the sending frames form runs of adjacent frames, each
        // large enough for the biggest packet.
        let (free, runs) = if multi_buffer {
            let per_run = (iface_mtu + ETH_HEADER).div_ceil(sizes.frame_size as usize - meta);
            let n = free.len() / 2 / per_run;
            let (single, run) = free.split_at(free.len() - n * per_run);
            (single, Runs::new(run, per_run, sizes.frame_size))
        } else {
            (free, Runs::new(&[], 1, sizes.frame_size))
        };
        let mut w = fq.fill(u32::try_from(fill.len()).unwrap_or(u32::MAX));
        w.insert(fill.iter().copied());
        w.commit();
        drop(w);

        let mtu = if multi_buffer {
            iface_mtu
        } else {
            iface_mtu.min(sizes.frame_size as usize - reserved - ETH_HEADER)
        };
        Ok(Self {
            rx: RxSide {
                rx,
                pending: VecDeque::with_capacity(BATCH as usize),
                partial: None,
                too_long: false,
                spare: Vec::new(),
                recycle: Vec::with_capacity(sizes.frames as usize),
            },
            tx: TxSide {
                tx,
                base: area.ptr(),
                frame_size: sizes.frame_size,
                free: free.to_vec(),
                runs,
                meta,
                kernel_checksum: sizes.tx_checksum == TxChecksum::Kernel,
                queued: Vec::with_capacity(BATCH as usize),
                mac,
                neighbours: Neighbours::default(),
                scratch: vec![0u8; 65536],
                stats: XskStats::default(),
            },
            fq,
            _umem: umem,
            _area: area,
            fd,
            mtu,
            mode,
            multi_buffer,
            locals: Vec::new(),
        })
    }

    /// The addresses the stack answers for; until set, every frame is foreign.
    pub fn set_local_addrs(&mut self, addrs: Vec<IpAddr>) {
        self.locals = addrs;
    }

    /// SYNs that named a known connection with another MAC since the last call. The
    /// reactor lets one re-teach its connection's MAC only when the stack holds no live
    /// connection on that four-tuple ([`Self::relearn`]); else the live peer keeps its
    /// MAC and the stack answers the SYN with a challenge ACK to it.
    pub fn take_contested(&mut self) -> Vec<(Flow, [u8; 6])> {
        std::mem::take(&mut self.tx.neighbours.contested)
    }

    /// Sets `flow`'s MAC (a contested SYN the reactor found no live connection for).
    pub fn relearn(&mut self, flow: Flow, mac: [u8; 6]) {
        self.tx.neighbours.set(flow, mac);
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    pub fn mode(&self) -> BindMode {
        self.mode
    }

    /// Bound for multi-buffer packets (the MTU exceeds a frame).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// Whether sent TCP checksums are left to the device (TX metadata registered).
    pub fn checksum_offload(&self) -> bool {
        self.tx.meta > 0
    }

    /// The IP MTU the stack may use: the interface's, or less if a frame holds less.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    pub fn stats(&self) -> XskStats {
        self.tx.stats
    }

    /// The kernel's counters for this socket (drops, invalid descriptors, empty rings).
    pub fn kernel_stats(&self) -> Option<xdpilone::xdp::XdpStatisticsV2> {
        self.fq.statistics_v2().ok()
    }

    /// Moves received packets from the rx ring to the pending queue, learning each
    /// sender's MAC; returns how many descriptors arrived.
    pub fn pull(&mut self) -> usize {
        let mut descs = [XdpDesc::default(); BATCH as usize];
        let mut n = 0;
        {
            let mut r = self.rx.rx.receive(BATCH);
            while let Some(d) = r.read() {
                descs[n] = d;
                n += 1;
            }
            r.release();
        }
        for &d in &descs[..n] {
            let more = d.options & XDP_PKT_CONTD != 0;
            if let Some(mut buf) = self.rx.partial.take() {
                let part = self.frame(d);
                if buf.len() + part.len() <= MAX_GATHERED {
                    buf.extend_from_slice(part);
                } else {
                    self.rx.too_long = true;
                }
                self.rx.recycle.push(d.addr);
                if more {
                    self.rx.partial = Some(buf);
                } else if std::mem::take(&mut self.rx.too_long) {
                    // Longer than any IP packet: not gathered further, dropped whole.
                    self.tx.stats.rx_too_long += 1;
                    self.rx.spare.push(buf);
                } else if self.learn(&buf) {
                    self.tx.stats.rx_multi += 1;
                    self.rx.pending.push_back(Received::Gathered(buf));
                } else {
                    self.rx.spare.push(buf);
                }
            } else if more {
                // The first part of a multi-buffer packet: gather it (the stack reads one
                // contiguous packet).
                let mut buf = self.rx.spare.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(self.frame(d));
                self.rx.recycle.push(d.addr);
                self.rx.partial = Some(buf);
            } else {
                let h = heard(self.frame(d), &self.locals);
                if self.heard(h) {
                    self.rx.pending.push_back(Received::Frame(d));
                } else {
                    self.rx.recycle.push(d.addr);
                }
            }
        }
        self.tx.stats.rx_packets += n as u64;
        n
    }

    fn frame(&self, d: XdpDesc) -> &[u8] {
        // SAFETY: the kernel handed this descriptor to user space and it is not given back
        // (recycled) until the stack has read it, so nothing writes the frame meanwhile;
        // the kernel validated addr + len against the UMEM size.
        unsafe {
            std::slice::from_raw_parts(self.tx.base.as_ptr().add(d.addr as usize), d.len as usize)
        }
    }

    /// Classifies a gathered frame (see [`Self::heard`]).
    fn learn(&mut self, frame: &[u8]) -> bool {
        let h = heard(frame, &self.locals);
        self.heard(h)
    }

    /// Learns a SYN's MAC for its connection; false for a frame to drop.
    fn heard(&mut self, h: Heard) -> bool {
        match h {
            Heard::Syn(flow, mac) => self.tx.neighbours.heard_syn(flow, mac),
            Heard::Segment => {}
            Heard::Foreign => {
                self.tx.stats.rx_foreign += 1;
                return false;
            }
        }
        true
    }

    /// Puts sent packets on the tx ring, takes back completed frames and gives read frames
    /// back to the fill ring, waking the kernel where it asks for it.
    pub fn flush(&mut self) {
        let tx = &mut self.tx;
        if !tx.queued.is_empty() {
            let mut w = tx
                .tx
                .transmit(u32::try_from(tx.queued.len()).unwrap_or(u32::MAX));
            // As many as fit, even part of a multi-buffer packet: the kernel keeps a partial
            // packet until its last descriptor arrives. (Holding a packet back until all its
            // descriptors fit would stall: xdpilone refreshes its view of the ring only
            // when it believes the ring is full.)
            let put = w.insert(tx.queued.iter().copied()) as usize;
            w.commit();
            drop(w);
            tx.queued.drain(..put);
            tx.stats.tx_packets += put as u64;
        }
        // Copy mode always needs the kick: the kernel sends from sendto().
        if tx.tx.pending() > 0 && (tx.tx.needs_wakeup() || self.mode == BindMode::Copy) {
            tx.tx.wake();
            tx.stats.wakeups += 1;
        }
        let mut c = self.fq.complete(BATCH * 4);
        while let Some(a) = c.read() {
            tx.completed(a);
        }
        c.release();
        drop(c);
        if !self.rx.recycle.is_empty() {
            let mut w = self
                .fq
                .fill(u32::try_from(self.rx.recycle.len()).unwrap_or(u32::MAX));
            let put = w.insert(self.rx.recycle.iter().copied()) as usize;
            w.commit();
            drop(w);
            self.rx.recycle.drain(..put);
        }
        if self.fq.needs_wakeup() {
            self.fq.wake();
        }
    }

    /// Frames waiting for the stack or for the tx ring.
    pub fn busy(&self) -> bool {
        !self.rx.pending.is_empty() || !self.tx.queued.is_empty()
    }
}

pub struct RxToken<'a> {
    data: &'a [u8],
    /// The frame to recycle, or the gathered buffer to keep for reuse.
    addr: Option<u64>,
    owned: Option<Vec<u8>>,
    recycle: &'a mut Vec<u64>,
    spare: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = match &self.owned {
            Some(buf) => f(buf.get(ETH_HEADER..).unwrap_or_default()),
            None => f(self.data.get(ETH_HEADER..).unwrap_or_default()),
        };
        if let Some(a) = self.addr {
            self.recycle.push(a);
        }
        if let Some(buf) = self.owned
            && self.spare.len() < 64
        {
            self.spare.push(buf);
        }
        r
    }
}

pub struct TxToken<'a> {
    tx: &'a mut TxSide,
}

impl TxSide {
    /// Fills in the Ethernet header of `frame` (an IP packet behind 14 bytes) for its
    /// connection; false when no SYN taught that connection's MAC.
    fn ethernet(&mut self, frame: &mut [u8]) -> bool {
        let ip = &frame[ETH_HEADER..];
        let Some(flow) = flow_of(ip) else {
            return false;
        };
        let ethertype = if flow.peer.is_ipv4() {
            0x0800u16
        } else {
            0x86dd
        };
        let Some(mac) = self.neighbours.get(flow) else {
            self.stats.tx_no_neighbour += 1;
            return false;
        };
        frame[0..6].copy_from_slice(&mac);
        frame[6..12].copy_from_slice(&self.mac);
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        true
    }

    /// A free frame's bytes, `len` long.
    fn frame_mut(&mut self, addr: u64, len: usize) -> &mut [u8] {
        frame_at(self.base, self.frame_size, addr, len)
    }

    /// The kernel is done with the descriptor at `addr` (in its frame, after the metadata).
    fn completed(&mut self, addr: u64) {
        let addr = addr - addr % u64::from(self.frame_size);
        if !self.runs.completed(addr) {
            self.free.push(addr);
        }
    }

    /// Sends the packet written in place in the run at `start` (`meta` bytes in, `total`
    /// long) as a chain of descriptors, one per frame of the run. The kernel wants `meta`
    /// bytes free before every descriptor, so each frame's part moves up by that much
    /// per frame before it (the last part first; only the bytes beyond the first frame
    /// move).
    fn chain(&mut self, start: u64, total: usize, options: u32) {
        let chunk = self.frame_size as usize;
        let (m, piece) = (self.meta, chunk - self.meta);
        let need = total.div_ceil(piece);
        if m > 0 && need > 1 {
            // SAFETY: as in `consume`: the run is `need` frames of UMEM owned by us.
            let run = unsafe {
                std::slice::from_raw_parts_mut(self.base.as_ptr().add(start as usize), need * chunk)
            };
            for i in (1..need).rev() {
                let from = m + i * piece;
                let len = piece.min(total - i * piece);
                run.copy_within(from..from + len, i * chunk + m);
            }
            // The continuation frames' metadata now holds packet bytes: no request there.
            for i in 1..need {
                run[i * chunk..i * chunk + m].fill(0);
            }
        }
        for i in 0..need {
            let len = piece.min(total - i * piece);
            let first = if i == 0 { options } else { 0 };
            self.queued.push(XdpDesc {
                addr: start + (i * chunk + m) as u64,
                len: u32::try_from(len).unwrap_or(0),
                options: first | if i + 1 < need { XDP_PKT_CONTD } else { 0 },
            });
        }
        self.runs.sent(start, need);
        self.stats.tx_multi += 1;
    }

    /// With checksum offload, turns `buf` (`meta` bytes, then an Ethernet frame whose TCP
    /// checksum smoltcp left out) into a request to the device: the checksum field gets
    /// the pseudo-header sum and the metadata says where to sum from and where to store.
    /// Returns the descriptor options for it.
    fn request_checksum(&self, buf: &mut [u8]) -> u32 {
        if self.meta == 0 {
            return 0;
        }
        let chained = buf.len() > self.frame_size as usize;
        let (meta, frame) = buf.split_at_mut(self.meta);
        // No request unless one is made below (drivers may read the metadata of every
        // descriptor, whatever its options say).
        meta.fill(0);
        let ip = &mut frame[ETH_HEADER..];
        let Some(tcp_at) = checksum::seed_tcp(ip) else {
            // Not TCP: smoltcp computed the checksums itself.
            return 0;
        };
        if chained && self.kernel_checksum {
            // The kernel's software checksum covers only the first descriptor of a chain
            // (it runs before the rest is attached): complete it here, as the device would.
            checksum::complete_tcp(&mut ip[tcp_at..]);
            return 0;
        }
        meta[..8].copy_from_slice(&XDP_TXMD_FLAGS_CHECKSUM.to_ne_bytes());
        // Within a frame (at most a 4 KiB chunk), so it fits.
        let start = (ETH_HEADER + tcp_at) as u16;
        meta[8..10].copy_from_slice(&start.to_ne_bytes());
        meta[10..12].copy_from_slice(&(checksum::TCP_CHECKSUM_AT as u16).to_ne_bytes());
        XDP_TX_METADATA
    }
}

/// Runs of adjacent UMEM frames, each a contiguous buffer for one packet larger than a
/// frame: the stack writes the packet in place and it goes out as a chain of descriptors,
/// one per frame (multi-buffer AF_XDP), with no copy. A run is free again when the kernel
/// has completed every descriptor of its packet.
struct Runs {
    /// The address of the first run; runs follow each other.
    start: u64,
    /// Bytes per run.
    run_bytes: u64,
    free: Vec<u64>,
    /// Descriptors the kernel has not completed yet, per run.
    outstanding: Vec<u8>,
}

impl Runs {
    /// Runs made of `frames` (adjacent, ascending), `per_run` frames each.
    fn new(frames: &[u64], per_run: usize, frame_size: u32) -> Self {
        let run_bytes = per_run as u64 * u64::from(frame_size);
        let count = frames.len() / per_run.max(1);
        let start = frames.first().copied().unwrap_or(0);
        debug_assert!(
            frames
                .windows(2)
                .all(|w| w[1] == w[0] + u64::from(frame_size))
        );
        Self {
            start,
            run_bytes,
            free: (0..count as u64)
                .rev()
                .map(|i| start + i * run_bytes)
                .collect(),
            outstanding: vec![0; count],
        }
    }

    fn index(&self, addr: u64) -> Option<usize> {
        let i = addr.checked_sub(self.start)? / self.run_bytes.max(1);
        (usize::try_from(i).ok()? < self.outstanding.len()).then_some(i as usize)
    }

    /// A free run able to hold `len` bytes.
    fn take(&mut self, len: usize) -> Option<u64> {
        if len as u64 > self.run_bytes {
            return None;
        }
        self.free.pop()
    }

    fn sent(&mut self, start: u64, descriptors: usize) {
        if let Some(i) = self.index(start) {
            self.outstanding[i] = u8::try_from(descriptors).unwrap_or(u8::MAX);
        }
    }

    /// Counts a completed frame; true if it belongs to a run (then it is not a single
    /// frame to free).
    fn completed(&mut self, addr: u64) -> bool {
        let Some(i) = self.index(addr) else {
            return false;
        };
        let left = &mut self.outstanding[i];
        if *left == 0 {
            // Not ours to free twice (a completion for a run not in flight).
            return true;
        }
        *left -= 1;
        if *left == 0 {
            self.free.push(self.start + i as u64 * self.run_bytes);
        }
        true
    }

    /// A run taken but not sent (no neighbour): free again.
    fn put_back(&mut self, start: u64) {
        self.free.push(start);
    }
}

/// The first `len` bytes of the free UMEM frame at `addr`.
fn frame_at<'a>(base: NonNull<u8>, frame_size: u32, addr: u64, len: usize) -> &'a mut [u8] {
    assert!(
        len <= frame_size as usize,
        "a frame holds {frame_size} bytes"
    );
    // SAFETY: callers pass frames taken from the free list: the kernel does not use them and
    // nothing else in user space refers to them until they are queued for sending (then
    // the slice is no longer used); the frame is `frame_size` bytes inside the UMEM, which
    // outlives the socket's use of it.
    unsafe { std::slice::from_raw_parts_mut(base.as_ptr().add(addr as usize), len) }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let tx = self.tx;
        let m = tx.meta;
        let total = ETH_HEADER + len;
        let chunk = tx.frame_size as usize;
        if m + total <= chunk {
            // The common case: written in place, in one frame, behind the metadata.
            let Some(addr) = tx.free.pop() else {
                tx.stats.tx_no_frame += 1;
                tx.scratch.resize(total.max(tx.scratch.len()), 0);
                return f(&mut tx.scratch[ETH_HEADER..total]);
            };
            let buf = frame_at(tx.base, tx.frame_size, addr, m + total);
            let r = f(&mut buf[m + ETH_HEADER..]);
            if tx.ethernet(&mut buf[m..]) {
                let options = tx.request_checksum(buf);
                tx.queued.push(XdpDesc {
                    addr: addr + m as u64,
                    len: u32::try_from(total).unwrap_or(0),
                    options,
                });
            } else {
                tx.free.push(addr);
            }
            return r;
        }
        // A jumbo packet: written in place into a run of adjacent frames.
        if let Some(start) = tx.runs.take(total.div_ceil(chunk - m) * chunk) {
            // SAFETY: as in `frame_at`: a free run is `run_bytes` of UMEM nobody else uses.
            let buf = unsafe {
                std::slice::from_raw_parts_mut(tx.base.as_ptr().add(start as usize), m + total)
            };
            let r = f(&mut buf[m + ETH_HEADER..]);
            if tx.ethernet(&mut buf[m..]) {
                let options = tx.request_checksum(buf);
                tx.chain(start, total, options);
            } else {
                tx.runs.put_back(start);
            }
            return r;
        }
        // No run free: written once into scratch, then spread over chained single frames.
        let mut buf = std::mem::take(&mut tx.scratch);
        buf.resize((m + total).max(buf.len()), 0);
        let r = f(&mut buf[m + ETH_HEADER..m + total]);
        let piece = chunk - m;
        let need = total.div_ceil(piece);
        if tx.free.len() < need {
            tx.stats.tx_no_frame += 1;
        } else if tx.ethernet(&mut buf[m..m + total]) {
            let options = tx.request_checksum(&mut buf[..m + total]);
            for (i, part) in buf[m..m + total].chunks(piece).enumerate() {
                let addr = tx.free.pop().expect("counted above");
                let frame = tx.frame_mut(addr, m + part.len());
                if i == 0 {
                    frame[..m].copy_from_slice(&buf[..m]);
                } else {
                    frame[..m].fill(0);
                }
                frame[m..].copy_from_slice(part);
                tx.queued.push(XdpDesc {
                    addr: addr + m as u64,
                    len: u32::try_from(part.len()).unwrap_or(0),
                    options: if i == 0 { options } else { 0 }
                        | if i + 1 < need { XDP_PKT_CONTD } else { 0 },
                });
            }
            tx.stats.tx_multi += 1;
        }
        tx.scratch = buf;
        r
    }
}

impl phy::Device for Xsk {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _timestamp: target_tcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (data, addr, owned): (&[u8], _, _) = match self.rx.pending.pop_front()? {
            Received::Frame(d) => {
                // SAFETY: as in `frame`: the kernel handed this frame over and it is
                // recycled only when the token is consumed; the tx half never touches
                // frames outside its free list.
                let data = unsafe {
                    std::slice::from_raw_parts(
                        self.tx.base.as_ptr().add(d.addr as usize),
                        d.len as usize,
                    )
                };
                (data, Some(d.addr), None)
            }
            Received::Gathered(buf) => (&[], None, Some(buf)),
        };
        Some((
            RxToken {
                data,
                addr,
                owned,
                recycle: &mut self.rx.recycle,
                spare: &mut self.rx.spare,
            },
            TxToken { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _timestamp: target_tcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.free.is_empty() {
            // Take back what the kernel finished sending before giving up.
            let mut c = self.fq.complete(BATCH * 4);
            while let Some(a) = c.read() {
                self.tx.completed(a);
            }
            c.release();
        }
        if self.tx.free.is_empty() {
            return None;
        }
        Some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        if self.tx.meta > 0 {
            // The device computes TCP checksums on the way out (`request_checksum`).
            c.checksum.tcp = phy::Checksum::Rx;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    fn flow(i: u32) -> Flow {
        Flow {
            peer: ip(i),
            peer_port: 40_000,
            port: 4420,
        }
    }

    #[test]
    fn a_forged_syn_cannot_take_over_a_known_connection() {
        let mut n = Neighbours::default();
        n.heard_syn(flow(1), [1; 6]);
        n.heard_syn(flow(2), [2; 6]);
        // The same four-tuple from another MAC: held for the reactor, not learned.
        n.heard_syn(flow(1), [9; 6]);
        assert_eq!(n.get(flow(1)), Some([1; 6]));
        assert_eq!(n.contested, vec![(flow(1), [9; 6])]);
        // Once the stack holds no connection on it, the reactor lets it re-teach.
        n.set(flow(1), [9; 6]);
        assert_eq!(n.get(flow(1)), Some([9; 6]));
        assert_eq!(n.get(flow(2)), Some([2; 6]));
        assert_eq!(n.get(flow(3)), None);
    }

    #[test]
    fn a_run_is_free_again_once_every_descriptor_of_its_packet_completed() {
        let frames: Vec<u64> = (2..8).map(|i| i * 4096).collect();
        let mut runs = Runs::new(&frames, 3, 4096);
        assert_eq!(runs.take(3 * 4096 + 1), None, "larger than a run");
        let a = runs.take(9014).unwrap();
        let b = runs.take(4200).unwrap();
        assert_eq!([a, b], [2 * 4096, 5 * 4096]);
        assert_eq!(runs.take(100), None, "both runs taken");
        runs.sent(a, 3);
        runs.sent(b, 2);
        assert!(!runs.completed(4096), "a single frame, not a run's");
        assert!(!runs.completed(8 * 4096), "a single frame, not a run's");
        assert!(runs.completed(b));
        assert!(runs.completed(a) && runs.completed(a + 4096));
        assert_eq!(runs.take(100), None, "a packet still in flight in each");
        assert!(runs.completed(b + 4096));
        assert_eq!(runs.take(100), Some(b));
        assert!(runs.completed(a + 8192));
        assert_eq!(runs.take(100), Some(a));
    }

    #[test]
    fn a_flood_of_syns_cannot_grow_the_neighbours_without_bound() {
        let mut n = Neighbours::default();
        n.heard_syn(flow(0), [7; 6]);
        for i in 1..100_000 {
            n.heard_syn(flow(i), [1; 6]);
        }
        assert_eq!(n.map.len(), NEIGHBOURS_MAX);
        assert_eq!(n.get(flow(99_999)), Some([1; 6]));
        for i in 0..1000 {
            n.heard_syn(flow(1), [i as u8; 6]);
        }
        assert!(n.contested.len() <= CONTESTED_MAX);
    }
}
