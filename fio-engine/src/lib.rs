//! The Rust half of the `xdpt` fio ioengine: one NVMe/TCP controller and I/O queue per
//! fio file ([`target_initiator::perf::queue::NvmeTcpQueue`], the host engine `perf`
//! uses, over a kernel socket), behind a C ABI that `fio_xdpt.c` calls from fio's
//! `ioengine_ops`. The C side owns everything of fio's (`thread_data`, `io_u`); this side
//! sees only byte offsets, buffers and the caller's 64-bit tags.
//!
//! Contract: a buffer given to [`xdpt_submit`] stays valid and untouched by the caller
//! until [`xdpt_reap`] has returned its tag (fio keeps an `io_u`'s buffer until the engine
//! hands the `io_u` back from `event`). Nothing here blocks except [`xdpt_open`] and
//! [`xdpt_reap`] with `wait`.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};

use target_initiator::perf::PerfError;
use target_initiator::perf::queue::NvmeTcpQueue;

/// The largest transfer of one command: what perf allows for NVMe (the target's MDTS).
pub const MAX_IO: usize = 128 * 1024;

/// [`xdpt_submit`]'s kinds of command.
pub const XDPT_READ: c_int = 0;
pub const XDPT_WRITE: c_int = 1;
pub const XDPT_FLUSH: c_int = 2;
/// Dataset Management, Deallocate (fio's trim).
pub const XDPT_TRIM: c_int = 3;

/// What [`xdpt_open`] reports of the namespace.
#[repr(C)]
pub struct XdptInfo {
    /// Bytes.
    pub size: u64,
    /// Bytes per logical block.
    pub block: u32,
}

/// A command in flight: the caller's tag, and where its read data goes.
struct Pending {
    tag: u64,
    read_to: *mut u8,
    len: usize,
}

/// One fio file: a controller with one I/O queue.
pub struct Xdpt {
    q: NvmeTcpQueue,
    pending: HashMap<u32, Pending>,
}

/// Why a submission was refused (before anything went to the target).
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Offset or length not a multiple of the block size, zero or over [`MAX_IO`].
    Misaligned,
    /// Beyond the namespace.
    OutOfRange,
    UnknownKind,
    /// The queue would not take it.
    Refused,
}

impl SubmitError {
    fn errno(&self) -> c_int {
        match self {
            Self::Misaligned | Self::OutOfRange => libc_errno::EINVAL,
            Self::UnknownKind => libc_errno::EOPNOTSUPP,
            Self::Refused => libc_errno::EIO,
        }
    }
}

/// The errno values this ABI returns (Linux's), without a libc dependency.
mod libc_errno {
    use std::ffi::c_int;
    pub const EIO: c_int = 5;
    pub const EINVAL: c_int = 22;
    pub const EOPNOTSUPP: c_int = 95;
}

/// The blocks of a transfer of `len` bytes at byte `offset`: (LBA, blocks).
pub fn blocks_of(
    offset: u64,
    len: u64,
    block: u64,
    capacity: u64,
) -> Result<(u64, u32), SubmitError> {
    if block == 0
        || len == 0
        || len > MAX_IO as u64
        || !offset.is_multiple_of(block)
        || !len.is_multiple_of(block)
    {
        return Err(SubmitError::Misaligned);
    }
    if offset.checked_add(len).is_none_or(|end| end > capacity) {
        return Err(SubmitError::OutOfRange);
    }
    let blocks = u32::try_from(len / block).map_err(|_| SubmitError::Misaligned)?;
    Ok((offset / block, blocks))
}

impl Xdpt {
    pub fn open(
        url: &str,
        host_nqn: Option<&str>,
        nsid: u32,
        qd: usize,
        digests: bool,
    ) -> Result<Self, PerfError> {
        Ok(Self {
            q: NvmeTcpQueue::open(url, host_nqn, nsid, qd, MAX_IO, digests)?,
            pending: HashMap::with_capacity(qd * 2),
        })
    }

    pub fn info(&self) -> XdptInfo {
        XdptInfo {
            size: self.q.capacity(),
            block: u32::try_from(self.q.block_size()).unwrap_or(0),
        }
    }

    /// Queues a command; `buf` is written from (a write) or read into (a read) and must
    /// stay valid until `tag` is reaped.
    ///
    /// # Safety
    /// For reads and writes, `buf` points to `len` bytes the caller does not touch
    /// until [`Self::reap`] returns `tag`.
    pub unsafe fn submit(
        &mut self,
        kind: c_int,
        offset: u64,
        len: u64,
        buf: *mut u8,
        tag: u64,
    ) -> Result<(), SubmitError> {
        let (cid, read_to, n) = match kind {
            XDPT_FLUSH => (self.q.flush(), std::ptr::null_mut(), 0),
            XDPT_TRIM => {
                let block = self.q.block_size() as u64;
                let (lba, blocks) = blocks_of(offset, len, block, self.q.capacity())?;
                (self.q.deallocate(lba, blocks), std::ptr::null_mut(), 0)
            }
            XDPT_READ | XDPT_WRITE => {
                let block = self.q.block_size() as u64;
                let (lba, blocks) = blocks_of(offset, len, block, self.q.capacity())?;
                let n = len as usize;
                let write = kind == XDPT_WRITE;
                let data = if write {
                    // SAFETY: the caller guarantees `buf` holds `len` readable bytes.
                    unsafe { std::slice::from_raw_parts(buf, n) }.to_vec()
                } else {
                    Vec::new()
                };
                let cid = self
                    .q
                    .submit(write, lba, blocks, data, if write { 0 } else { n })
                    .map_err(|_| SubmitError::Refused)?;
                (cid, if write { std::ptr::null_mut() } else { buf }, n)
            }
            _ => return Err(SubmitError::UnknownKind),
        };
        self.pending.insert(
            cid,
            Pending {
                tag,
                read_to,
                len: n,
            },
        );
        Ok(())
    }

    /// Sends what is queued, without waiting.
    pub fn commit(&mut self) -> Result<(), PerfError> {
        self.q.poll(false)
    }

    /// Up to `max` finished commands as (tag, errno or 0), read data copied to its
    /// buffer. With `wait`, waits until at least one finished, unless none is in flight.
    pub fn reap(&mut self, max: usize, wait: bool) -> Result<Vec<(u64, c_int)>, PerfError> {
        let mut out = Vec::new();
        self.collect(max, &mut out);
        if out.is_empty() {
            self.q.poll(false)?;
            self.collect(max, &mut out);
        }
        while wait && out.is_empty() && self.q.outstanding() > 0 {
            self.q.poll(true)?;
            self.collect(max, &mut out);
        }
        Ok(out)
    }

    fn collect(&mut self, max: usize, out: &mut Vec<(u64, c_int)>) {
        while out.len() < max {
            let Some(done) = self.q.finished() else {
                return;
            };
            let Some(p) = self.pending.remove(&done.tag) else {
                continue;
            };
            let errno = match done.error {
                Some(e) => {
                    eprintln!("xdpt: command failed: {e}");
                    libc_errno::EIO
                }
                None => {
                    if !p.read_to.is_null() {
                        let n = p.len.min(done.data.len());
                        // SAFETY: `read_to` holds `p.len` writable bytes the caller left
                        // alone since submit (the contract of `submit`); `n` is at most that.
                        unsafe { std::ptr::copy_nonoverlapping(done.data.as_ptr(), p.read_to, n) };
                    }
                    0
                }
            };
            out.push((p.tag, errno));
        }
    }
}

/// Copies `msg` into the caller's `err` buffer of `len` bytes, NUL-terminated.
///
/// # Safety
/// `err` is null or points to `len` writable bytes.
unsafe fn put_error(err: *mut c_char, len: usize, msg: &str) {
    if err.is_null() || len == 0 {
        return;
    }
    let n = msg.len().min(len - 1);
    // SAFETY: `err` has `len` bytes (the caller's promise); `n + 1 <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// Connects to `url` (`nvme-tcp://ADDR[:PORT][/NQN]`) as `host_nqn` (NULL: perf's) with
/// one I/O queue of `qd` commands on namespace `nsid`; fills `info`. NULL on failure, with
/// the reason in `err`.
///
/// # Safety
/// `url` (and `host_nqn` when not NULL) are NUL-terminated strings; `info` is valid for a
/// write; `err` is NULL or `err_len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xdpt_open(
    url: *const c_char,
    host_nqn: *const c_char,
    nsid: u32,
    qd: u32,
    digests: c_int,
    info: *mut XdptInfo,
    err: *mut c_char,
    err_len: usize,
) -> *mut Xdpt {
    // SAFETY: the caller passes a NUL-terminated string.
    let url = unsafe { CStr::from_ptr(url) }.to_string_lossy();
    let host = if host_nqn.is_null() {
        None
    } else {
        // SAFETY: a non-NULL `host_nqn` is a NUL-terminated string (the caller's promise).
        let h = unsafe { CStr::from_ptr(host_nqn) }.to_string_lossy();
        (!h.is_empty()).then(|| h.into_owned())
    };
    match Xdpt::open(&url, host.as_deref(), nsid, qd as usize, digests != 0) {
        Ok(x) => {
            // SAFETY: `info` is valid for a write (the caller's promise).
            unsafe { info.write(x.info()) };
            Box::into_raw(Box::new(x))
        }
        Err(e) => {
            // SAFETY: `err` is NULL or `err_len` bytes (the caller's promise).
            unsafe { put_error(err, err_len, &e.to_string()) };
            std::ptr::null_mut()
        }
    }
}

/// Queues a read, write, trim (`kind` XDPT_READ, XDPT_WRITE, XDPT_TRIM; `len` bytes at
/// byte `offset`, block-aligned; a trim's `buf` is ignored) or flush (XDPT_FLUSH; offset,
/// len and buf ignored). 0, or a negative
/// errno when refused (nothing was queued).
///
/// # Safety
/// `h` comes from [`xdpt_open`]; for reads and writes `buf` holds `len` bytes that stay
/// valid and untouched until [`xdpt_reap`] returns `tag`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xdpt_submit(
    h: *mut Xdpt,
    kind: c_int,
    offset: u64,
    len: u64,
    buf: *mut u8,
    tag: u64,
) -> c_int {
    // SAFETY: `h` is a live handle from xdpt_open, used by one thread at a time.
    let x = unsafe { &mut *h };
    // SAFETY: the buffer contract is the caller's, passed on unchanged.
    match unsafe { x.submit(kind, offset, len, buf, tag) } {
        Ok(()) => 0,
        Err(e) => -e.errno(),
    }
}

/// Sends what is queued without waiting. 0, or -EIO when the connection failed.
///
/// # Safety
/// `h` comes from [`xdpt_open`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xdpt_commit(h: *mut Xdpt) -> c_int {
    // SAFETY: `h` is a live handle from xdpt_open, used by one thread at a time.
    let x = unsafe { &mut *h };
    match x.commit() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("xdpt: {e}");
            -libc_errno::EIO
        }
    }
}

/// Up to `max` finished commands: their tags in `tags`, 0 or an errno in `errors`. With
/// `wait` non-zero, returns only once at least one finished (unless none is in flight).
/// The count, or -EIO when the connection failed (its reason on stderr).
///
/// # Safety
/// `h` comes from [`xdpt_open`]; `tags` and `errors` have room for `max` entries.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xdpt_reap(
    h: *mut Xdpt,
    max: u32,
    wait: c_int,
    tags: *mut u64,
    errors: *mut c_int,
) -> c_int {
    // SAFETY: `h` is a live handle from xdpt_open, used by one thread at a time.
    let x = unsafe { &mut *h };
    match x.reap(max as usize, wait != 0) {
        Ok(done) => {
            for (i, (tag, errno)) in done.iter().enumerate() {
                // SAFETY: `i < done.len() <= max`, and both arrays have `max` entries.
                unsafe {
                    tags.add(i).write(*tag);
                    errors.add(i).write(*errno);
                }
            }
            c_int::try_from(done.len()).unwrap_or(c_int::MAX)
        }
        Err(e) => {
            eprintln!("xdpt: {e}");
            -libc_errno::EIO
        }
    }
}

/// Closes the connections (the controller goes with its admin queue).
///
/// # Safety
/// `h` comes from [`xdpt_open`] and is not used afterwards; NULL is ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xdpt_close(h: *mut Xdpt) {
    if !h.is_null() {
        // SAFETY: `h` came from Box::into_raw in xdpt_open and is given back once.
        drop(unsafe { Box::from_raw(h) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_blocks() {
        assert_eq!(blocks_of(8192, 4096, 512, 1 << 20), Ok((16, 8)));
        assert_eq!(blocks_of(0, 4096, 4096, 4096), Ok((0, 1)));
        assert_eq!(
            blocks_of(100, 512, 512, 1 << 20),
            Err(SubmitError::Misaligned)
        );
        assert_eq!(
            blocks_of(0, 1000, 512, 1 << 20),
            Err(SubmitError::Misaligned)
        );
        assert_eq!(blocks_of(0, 0, 512, 1 << 20), Err(SubmitError::Misaligned));
        assert_eq!(
            blocks_of(0, 256 * 1024, 512, 1 << 20),
            Err(SubmitError::Misaligned)
        );
        assert_eq!(
            blocks_of(4096, 4096, 4096, 4096),
            Err(SubmitError::OutOfRange)
        );
        assert_eq!(
            blocks_of(u64::MAX - 511, 512, 512, u64::MAX),
            Err(SubmitError::OutOfRange)
        );
    }

    #[test]
    fn open_fails_with_a_reason() {
        let url = c"nvme-tcp://127.0.0.1:1/nqn.none";
        let mut info = XdptInfo { size: 0, block: 0 };
        let mut err = [0 as c_char; 256];
        // SAFETY: valid strings, an info to write, an error buffer of its length.
        let h = unsafe {
            xdpt_open(
                url.as_ptr(),
                std::ptr::null(),
                1,
                8,
                0,
                &raw mut info,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        assert!(h.is_null());
        // SAFETY: put_error NUL-terminated it.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        assert!(msg.contains("cannot connect"), "{msg}");
        // SAFETY: not a URL: refused before any I/O.
        let h = unsafe {
            xdpt_open(
                c"http://x".as_ptr(),
                std::ptr::null(),
                1,
                8,
                0,
                &raw mut info,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        assert!(h.is_null());
    }
}
