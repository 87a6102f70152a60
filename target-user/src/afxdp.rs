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
//! program passes it): the MAC to answer a peer with is learned from the frames the peer
//! sends (its source MAC is the next hop towards it), so no ARP is ever needed for the
//! connections a target serves.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::ptr::NonNull;

use target_tcp::phy::{self, DeviceCapabilities, Medium};
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig};

/// Bind flag: the socket carries multi-buffer packets (frames larger than a UMEM chunk).
const XDP_USE_SG: u16 = 1 << 4;
/// The most a gathered multi-buffer frame may hold: the largest IP packet and its
/// Ethernet header. The kernel bounds the chain anyway; this bounds what we copy.
const MAX_GATHERED: usize = ETH_HEADER + 65_535;
/// Descriptor option: the packet continues in the next descriptor.
const XDP_PKT_CONTD: u32 = 1;
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

/// An anonymous, page-aligned mapping for the UMEM.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> Result<Self, XskError> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(XskError::Mmap(len, std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| {
            XskError::Mmap(len, std::io::Error::other("mmap returned a null pointer"))
        })?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the UMEM that the kernel shares
        // it through is dropped before (field order in `Xsk`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
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
    /// Packets written into frames, not yet on the tx ring.
    queued: Vec<XdpDesc>,
    mac: [u8; 6],
    neighbours: HashMap<IpAddr, [u8; 6]>,
    scratch: Vec<u8>,
    stats: XskStats,
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
    pub wakeups: u64,
}

/// The source IP address and MAC of an Ethernet frame carrying IPv4 or IPv6.
fn sender(f: &[u8]) -> Option<(IpAddr, [u8; 6])> {
    let mac: [u8; 6] = f.get(6..12)?.try_into().ok()?;
    let ip = f.get(ETH_HEADER..)?;
    let src = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => IpAddr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?),
        0x86dd => IpAddr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?),
        _ => return None,
    };
    Some((src, mac))
}

/// An AF_XDP socket on one queue. Field order is drop order: rings, then the UMEM, then
/// the memory under it.
pub struct Xsk {
    rx: RxSide,
    tx: TxSide,
    fq: DeviceQueue,
    _umem: Umem,
    _area: Area,
    fd: i32,
    mtu: usize,
    mode: BindMode,
    multi_buffer: bool,
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
        let area = Area::new(len)?;
        let config = UmemConfig {
            fill_size: sizes.ring,
            complete_size: sizes.ring,
            frame_size: sizes.frame_size,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, len);
        // SAFETY: `area` is a page-aligned mapping of `len` bytes that outlives the UMEM
        // (both live in the returned `Xsk`, the UMEM dropped first).
        let umem = unsafe { Umem::new(config, slice) }.map_err(sys("registering the UMEM"))?;
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
        let multi_buffer = iface_mtu + ETH_HEADER + headroom > sizes.frame_size as usize;
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
        let mut w = fq.fill(u32::try_from(fill.len()).unwrap_or(u32::MAX));
        w.insert(fill.iter().copied());
        w.commit();
        drop(w);

        let mtu = if multi_buffer {
            iface_mtu
        } else {
            iface_mtu.min(sizes.frame_size as usize - headroom - ETH_HEADER)
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
                base: area.ptr,
                frame_size: sizes.frame_size,
                free: free.to_vec(),
                queued: Vec::with_capacity(BATCH as usize),
                mac,
                neighbours: HashMap::new(),
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
        })
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
                } else {
                    self.learn(sender(&buf));
                    self.tx.stats.rx_multi += 1;
                    self.rx.pending.push_back(Received::Gathered(buf));
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
                self.learn(sender(self.frame(d)));
                self.rx.pending.push_back(Received::Frame(d));
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

    /// Remembers a sender's MAC for its IP address: the next hop to answer it through.
    fn learn(&mut self, sender: Option<(IpAddr, [u8; 6])>) {
        if let Some((ip, mac)) = sender
            && self.tx.neighbours.get(&ip) != Some(&mac)
        {
            self.tx.neighbours.insert(ip, mac);
        }
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
            tx.free.push(a);
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
    /// destination; false when the destination's MAC was never seen.
    fn ethernet(&mut self, frame: &mut [u8]) -> bool {
        let ip = &frame[ETH_HEADER..];
        let (ethertype, dst) = match ip.first().map(|b| b >> 4) {
            Some(4) if ip.len() >= 20 => (
                0x0800u16,
                IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).expect("4 bytes")),
            ),
            Some(6) if ip.len() >= 40 => (
                0x86dd,
                IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes")),
            ),
            _ => return false,
        };
        let Some(mac) = self.neighbours.get(&dst).copied() else {
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
        let total = ETH_HEADER + len;
        let chunk = tx.frame_size as usize;
        if total <= chunk {
            // The common case: written in place, in one frame.
            let Some(addr) = tx.free.pop() else {
                tx.stats.tx_no_frame += 1;
                tx.scratch.resize(total.max(tx.scratch.len()), 0);
                return f(&mut tx.scratch[ETH_HEADER..total]);
            };
            let buf = frame_at(tx.base, tx.frame_size, addr, total);
            let r = f(&mut buf[ETH_HEADER..]);
            if tx.ethernet(buf) {
                tx.queued.push(XdpDesc {
                    addr,
                    len: u32::try_from(total).unwrap_or(0),
                    options: 0,
                });
            } else {
                tx.free.push(addr);
            }
            return r;
        }
        // A jumbo packet: written once into scratch, then spread over chained frames.
        let mut buf = std::mem::take(&mut tx.scratch);
        buf.resize(total.max(buf.len()), 0);
        let r = f(&mut buf[ETH_HEADER..total]);
        let need = total.div_ceil(chunk);
        if tx.free.len() < need {
            tx.stats.tx_no_frame += 1;
        } else if tx.ethernet(&mut buf[..total]) {
            for (i, part) in buf[..total].chunks(chunk).enumerate() {
                let addr = tx.free.pop().expect("counted above");
                tx.frame_mut(addr, part.len()).copy_from_slice(part);
                tx.queued.push(XdpDesc {
                    addr,
                    len: u32::try_from(part.len()).unwrap_or(0),
                    options: if i + 1 < need { XDP_PKT_CONTD } else { 0 },
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
                self.tx.free.push(a);
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
        c
    }
}
