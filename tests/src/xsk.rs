//! An AF_XDP receiver for tests: binds a copy-mode socket to one rx queue, registers it in
//! the target's pinned `XSKS` map and collects every frame it receives.
//!
//! xdpilone's handles are not `Send`, so the socket lives its whole life on one thread
//! inside the namespace that holds the interface.

use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use aya::maps::{Map, MapData, XskMap};
use xdpilone::{IfInfo, Socket, SocketConfig, Umem, UmemConfig};

use crate::netns::Netns;

const FRAMES: u32 = 256;
const FRAME_SIZE: u32 = 4096;

/// Frames captured on one queue until [`Capture::finish`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<io::Result<io::Result<Vec<Vec<u8>>>>>,
}

impl Capture {
    /// Binds to `iface` queue `queue` in `ns` and registers the socket in the `XSKS` map
    /// pinned at `xsks_pin`; returns once frames can arrive.
    pub fn start(ns: &Netns, iface: &str, queue: u32, xsks_pin: PathBuf) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let iface = iface.to_string();
        let stop2 = Arc::clone(&stop);
        let handle = ns.spawn(move || capture(&iface, queue, &xsks_pin, &stop2, &ready_tx));
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Self { stop, handle }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                match handle.join() {
                    Ok(Ok(Err(e)) | Err(e)) => Err(e),
                    _ => Err(io::Error::other("AF_XDP capture did not start")),
                }
            }
        }
    }

    /// Stops receiving (after draining what has arrived) and returns the frames.
    pub fn finish(self) -> io::Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| io::Error::other("capture thread panicked"))??
    }
}

fn errno(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw().abs())
}

/// An anonymous page-aligned mapping, unmapped on drop.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Self { ptr, len })
    }

    fn bytes(&self, offset: u64, len: u32) -> Vec<u8> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len);
        let end = start.saturating_add(len as usize).min(self.len);
        // SAFETY: [start, end) lies inside the mapping, which lives as long as self; the
        // kernel does not write a frame while it sits in the RX ring, which is when we read.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), end - start) }.to_vec()
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing uses the area any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn capture(
    iface: &str,
    queue: u32,
    xsks_pin: &PathBuf,
    stop: &AtomicBool,
    ready: &mpsc::Sender<io::Result<()>>,
) -> io::Result<Vec<Vec<u8>>> {
    let result = setup_and_receive(iface, queue, xsks_pin, stop, ready);
    if let Err(e) = &result {
        // If setup failed, the starter is still waiting; it ignores a second message.
        let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
    }
    result
}

fn setup_and_receive(
    iface: &str,
    queue: u32,
    xsks_pin: &PathBuf,
    stop: &AtomicBool,
    ready: &mpsc::Sender<io::Result<()>>,
) -> io::Result<Vec<Vec<u8>>> {
    // Declared first so that it is dropped last, after every ring that points into it.
    let area = Area::new((FRAMES * FRAME_SIZE) as usize)?;
    let config = UmemConfig {
        fill_size: FRAMES,
        complete_size: FRAMES,
        frame_size: FRAME_SIZE,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    // SAFETY: the area is page aligned, FRAMES * FRAME_SIZE long, and outlives the Umem.
    let umem = unsafe {
        Umem::new(config, NonNull::slice_from_raw_parts(area.ptr, area.len)).map_err(errno)?
    };
    let mut info = IfInfo::invalid();
    let name = CString::new(iface).map_err(io::Error::other)?;
    info.from_name(&name).map_err(errno)?;
    info.set_queue(queue);
    let sock = Socket::with_shared(&info, &umem).map_err(errno)?;
    let mut device = umem.fq_cq(&sock).map_err(errno)?;
    let user = umem
        .rx_tx(
            &sock,
            &SocketConfig {
                rx_size: NonZeroU32::new(FRAMES),
                tx_size: None,
                bind_flags: SocketConfig::XDP_BIND_COPY,
            },
        )
        .map_err(errno)?;
    umem.bind(&user).map_err(errno)?;
    let mut rx = user.map_rx().map_err(errno)?;
    {
        let mut fill = device.fill(FRAMES);
        fill.insert((0..FRAMES).map(|i| u64::from(i * FRAME_SIZE)));
        fill.commit();
    }
    let map = Map::from_map_data(MapData::from_pin(xsks_pin).map_err(io::Error::other)?)
        .map_err(io::Error::other)?;
    let mut xsks = XskMap::try_from(map).map_err(io::Error::other)?;
    let fd = user.as_raw_fd();
    // SAFETY: fd is the bound AF_XDP socket owned by `user`, alive for this call.
    xsks.set(queue, unsafe { BorrowedFd::borrow_raw(fd) }, 0)
        .map_err(io::Error::other)?;
    let _ = ready.send(Ok(()));

    let mut frames = Vec::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, bounded timeout.
        unsafe { libc::poll(&mut pfd, 1, 20) };
        let mut got = Vec::new();
        {
            let mut reader = rx.receive(FRAMES);
            while let Some(desc) = reader.read() {
                frames.push(area.bytes(desc.addr, desc.len));
                got.push(desc.addr - desc.addr % u64::from(FRAME_SIZE));
            }
            reader.release();
        }
        if !got.is_empty() {
            let mut fill = device.fill(u32::try_from(got.len()).unwrap_or(FRAMES));
            fill.insert(got.into_iter());
            fill.commit();
        } else if stopping {
            break;
        }
    }
    Ok(frames)
}

/// Destination TCP port of an Ethernet/IPv4-or-IPv6/TCP frame, if it is one.
pub fn tcp_dst_port(frame: &[u8]) -> Option<u16> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let l4 = match ethertype {
        0x0800 if *frame.get(23)? == 6 => 14 + usize::from(frame.get(14)? & 0x0f) * 4,
        0x86dd if *frame.get(20)? == 6 => 14 + 40,
        _ => return None,
    };
    Some(u16::from_be_bytes([
        *frame.get(l4 + 2)?,
        *frame.get(l4 + 3)?,
    ]))
}
