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

/// The receive half: the rx ring and frames to give back to the kernel.
struct RxSide {
    rx: RingRx,
    /// Received packets not yet handed to the stack.
    pending: VecDeque<XdpDesc>,
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
    /// Multi-buffer packets (larger than a frame), dropped.
    pub rx_too_long: u64,
    pub wakeups: u64,
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
        let bind_flags = SocketConfig::XDP_BIND_NEED_WAKEUP
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

        let headroom = if mode == BindMode::Copy {
            RX_HEADROOM as usize
        } else {
            0
        };
        let mtu = iface_mtu.min(sizes.frame_size as usize - headroom - ETH_HEADER);
        Ok(Self {
            rx: RxSide {
                rx,
                pending: VecDeque::with_capacity(BATCH as usize),
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
        })
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    pub fn mode(&self) -> BindMode {
        self.mode
    }

    /// The IP MTU the stack may use: the interface's, or less if a frame holds less.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    pub fn stats(&self) -> XskStats {
        self.tx.stats
    }

    /// Moves received packets from the rx ring to the pending queue, learning each
    /// sender's MAC; returns how many arrived.
    pub fn pull(&mut self) -> usize {
        let before = self.rx.pending.len();
        let mut n = 0;
        {
            let mut r = self.rx.rx.receive(BATCH);
            let mut dropping = false;
            while let Some(d) = r.read() {
                n += 1;
                // A packet spread over several frames: this socket is not bound for that
                // (the MTU fits a frame), so drop all its parts.
                if dropping || d.options & XDP_PKT_CONTD != 0 {
                    dropping = d.options & XDP_PKT_CONTD != 0;
                    self.rx.recycle.push(d.addr);
                    self.tx.stats.rx_too_long += 1;
                    continue;
                }
                self.rx.pending.push_back(d);
            }
            r.release();
        }
        for k in before..self.rx.pending.len() {
            let d = self.rx.pending[k];
            self.learn(d);
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

    fn learn(&mut self, d: XdpDesc) {
        let f = self.frame(d);
        if f.len() < ETH_HEADER + 40 {
            return;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&f[6..12]);
        let ip = &f[ETH_HEADER..];
        let src = match u16::from_be_bytes([f[12], f[13]]) {
            0x0800 => IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).expect("4 bytes")),
            0x86dd => IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes")),
            _ => return,
        };
        if self.tx.neighbours.get(&src) != Some(&mac) {
            self.tx.neighbours.insert(src, mac);
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
    addr: u64,
    recycle: &'a mut Vec<u64>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.data.get(ETH_HEADER..).unwrap_or_default());
        self.recycle.push(self.addr);
        r
    }
}

pub struct TxToken<'a> {
    tx: &'a mut TxSide,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let tx = self.tx;
        let Some(addr) = tx
            .free
            .pop()
            .filter(|_| ETH_HEADER + len <= tx.frame_size as usize)
        else {
            tx.stats.tx_no_frame += 1;
            if tx.scratch.len() < len {
                tx.scratch.resize(len, 0);
            }
            return f(&mut tx.scratch[..len]);
        };
        // SAFETY: `addr` came from the free list: the kernel does not use the frame and
        // nothing else in user space refers to it until it is queued below; the frame is
        // `frame_size` bytes inside the UMEM and ETH_HEADER + len fits in it.
        let frame = unsafe {
            std::slice::from_raw_parts_mut(tx.base.as_ptr().add(addr as usize), ETH_HEADER + len)
        };
        let r = f(&mut frame[ETH_HEADER..]);
        let (ethertype, dst) = match frame.get(ETH_HEADER).map(|b| b >> 4) {
            Some(4) if len >= 20 => (
                0x0800u16,
                IpAddr::from(
                    <[u8; 4]>::try_from(&frame[ETH_HEADER + 16..ETH_HEADER + 20]).expect("4"),
                ),
            ),
            Some(6) if len >= 40 => (
                0x86dd,
                IpAddr::from(
                    <[u8; 16]>::try_from(&frame[ETH_HEADER + 24..ETH_HEADER + 40]).expect("16"),
                ),
            ),
            _ => {
                tx.free.push(addr);
                return r;
            }
        };
        let Some(mac) = tx.neighbours.get(&dst).copied() else {
            tx.stats.tx_no_neighbour += 1;
            tx.free.push(addr);
            return r;
        };
        frame[0..6].copy_from_slice(&mac);
        frame[6..12].copy_from_slice(&tx.mac);
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        tx.queued.push(XdpDesc {
            addr,
            len: u32::try_from(ETH_HEADER + len).unwrap_or(0),
            options: 0,
        });
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
        let d = self.rx.pending.pop_front()?;
        // SAFETY: as in `frame`: the kernel handed this frame over and it is recycled only
        // when the token is consumed; the tx half never touches frames outside its free list.
        let data = unsafe {
            std::slice::from_raw_parts(self.tx.base.as_ptr().add(d.addr as usize), d.len as usize)
        };
        Some((
            RxToken {
                data,
                addr: d.addr,
                recycle: &mut self.rx.recycle,
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
