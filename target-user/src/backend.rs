//! Block backends: where a namespace's blocks live.
//!
//! Today: memory. It is split into 1 MiB chunks, each behind its own mutex, so concurrent
//! reactors rarely contend and a block (512 B or 4 KiB, never straddling a chunk) is
//! always written whole: a reader never sees half of a concurrent write. The chunks are
//! zeroed allocations, which the allocator takes from fresh anonymous pages, so a 1 GiB
//! namespace costs memory only for what was written.
//!
//! Memory has no write cache to flush: a completed write is as durable as this backend
//! ever makes data (it is gone when the process ends), so no volatile write cache is
//! advertised. File and block-device backends through io_uring are not written yet.

use std::sync::{Mutex, MutexGuard, PoisonError};

use target_proto::nvme::controller::{BlockOp, IoOutcome};

const CHUNK: usize = 1 << 20;

pub struct MemoryBackend {
    chunks: Vec<Mutex<Box<[u8]>>>,
    size: u64,
}

impl MemoryBackend {
    /// A zeroed backend of `size` bytes (rounded up to whole chunks internally).
    pub fn new(size: u64) -> Self {
        let n = usize::try_from(size.div_ceil(CHUNK as u64)).expect("size fits the address space");
        let chunks = (0..n)
            .map(|_| Mutex::new(vec![0u8; CHUNK].into_boxed_slice()))
            .collect();
        Self { chunks, size }
    }

    fn chunk(&self, i: usize) -> MutexGuard<'_, Box<[u8]>> {
        // A panic in a copy leaves bytes, not broken invariants: keep serving.
        self.chunks[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `f(chunk bytes, range in the caller's buffer)` for each piece of
    /// `[offset, offset + len)`.
    fn for_each(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut [u8], std::ops::Range<usize>),
    ) -> bool {
        let Some(end) = offset.checked_add(len).filter(|&e| e <= self.size) else {
            return false;
        };
        let mut at = offset;
        while at < end {
            let i = (at / CHUNK as u64) as usize;
            let within = (at % CHUNK as u64) as usize;
            let n = (CHUNK - within).min((end - at) as usize);
            let done = (at - offset) as usize;
            let mut c = self.chunk(i);
            f(&mut c[within..within + n], done..done + n);
            at += n as u64;
        }
        true
    }

    /// Runs one block operation; `buf` is the command's buffer (sized by the engine).
    pub fn execute(&self, op: &BlockOp, buf: &mut [u8]) -> IoOutcome {
        match op {
            BlockOp::Read { offset, len } => {
                let ok = self.for_each(*offset, *len, |chunk, r| buf[r].copy_from_slice(chunk));
                if ok {
                    IoOutcome::Ok
                } else {
                    IoOutcome::ReadError
                }
            }
            BlockOp::Write { offset, len, .. } => {
                let ok = self.for_each(*offset, *len, |chunk, r| chunk.copy_from_slice(&buf[r]));
                if ok {
                    IoOutcome::Ok
                } else {
                    IoOutcome::WriteError
                }
            }
            BlockOp::WriteZeroes { offset, len, .. } => {
                let ok = self.for_each(*offset, *len, |chunk, _| chunk.fill(0));
                if ok {
                    IoOutcome::Ok
                } else {
                    IoOutcome::WriteError
                }
            }
            BlockOp::Deallocate { ranges } => {
                // Deallocated blocks read as zeroes (Identify Namespace DLFEAT says so).
                let ok = ranges
                    .iter()
                    .all(|&(o, l)| self.for_each(o, l, |chunk, _| chunk.fill(0)));
                if ok {
                    IoOutcome::Ok
                } else {
                    IoOutcome::WriteError
                }
            }
            BlockOp::Compare { offset, len } => {
                let mut same = true;
                let ok = self.for_each(*offset, *len, |chunk, r| same &= *chunk == buf[r]);
                match (ok, same) {
                    (false, _) => IoOutcome::ReadError,
                    (true, true) => IoOutcome::Ok,
                    (true, false) => IoOutcome::Miscompare,
                }
            }
            BlockOp::Flush | BlockOp::FlushAll { .. } => IoOutcome::Ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_read_back_across_chunk_boundaries() {
        let m = MemoryBackend::new(3 * CHUNK as u64);
        let data: Vec<u8> = (0..(CHUNK + 8192)).map(|i| (i % 251) as u8).collect();
        let offset = CHUNK as u64 - 4096;
        let mut w = data.clone();
        let len = data.len() as u64;
        assert_eq!(
            m.execute(
                &BlockOp::Write {
                    offset,
                    len,
                    fua: false
                },
                &mut w
            ),
            IoOutcome::Ok
        );
        let mut r = vec![0u8; data.len()];
        assert_eq!(
            m.execute(&BlockOp::Read { offset, len }, &mut r),
            IoOutcome::Ok
        );
        assert_eq!(r, data);
        assert_eq!(
            m.execute(&BlockOp::Compare { offset, len }, &mut r),
            IoOutcome::Ok
        );
        r[CHUNK] ^= 1;
        assert_eq!(
            m.execute(&BlockOp::Compare { offset, len }, &mut r),
            IoOutcome::Miscompare
        );
        let zero = BlockOp::WriteZeroes {
            offset: offset + 4096,
            len: 4096,
            deallocate: false,
            fua: false,
        };
        assert_eq!(m.execute(&zero, &mut []), IoOutcome::Ok);
        let mut z = vec![1u8; 4096];
        assert_eq!(
            m.execute(
                &BlockOp::Read {
                    offset: offset + 4096,
                    len: 4096
                },
                &mut z
            ),
            IoOutcome::Ok
        );
        assert!(z.iter().all(|&b| b == 0));
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let m = MemoryBackend::new(CHUNK as u64);
        let mut b = vec![0u8; 4096];
        let past = BlockOp::Read {
            offset: CHUNK as u64 - 512,
            len: 4096,
        };
        assert_eq!(m.execute(&past, &mut b), IoOutcome::ReadError);
        let wrap = BlockOp::Write {
            offset: u64::MAX - 10,
            len: 4096,
            fua: false,
        };
        assert_eq!(m.execute(&wrap, &mut b), IoOutcome::WriteError);
    }
}

/// A regular file or a block device. The reactors reach it through io_uring (see
/// `server`), never with a blocking call. It is opened with O_DIRECT when the file
/// system takes direct I/O at the namespace's block size (command buffers are
/// page-aligned), else buffered through the page cache. Either way there is a volatile
/// write cache (the page cache, or the device's own), advertised as such: Flush is
/// fdatasync, a FUA write is RWF_DSYNC, Write Zeroes and deallocation are fallocate (zero
/// range, punch hole).
pub struct FileBackend {
    pub file: std::fs::File,
    pub size: u64,
    /// Opened with O_DIRECT.
    pub direct: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FileBackendError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Size { path: String, message: String },
}

impl FileBackend {
    /// Opens (creating a regular file when missing) `path`. A new file gets `size` bytes;
    /// an existing one keeps its size (it must hold at least `size` when given); a block
    /// device is used whole.
    pub fn open(path: &str, size: Option<u64>, block_size: u32) -> Result<Self, FileBackendError> {
        use std::os::unix::fs::FileTypeExt;
        let err = |source| FileBackendError::Open {
            path: path.to_string(),
            source,
        };
        let bad = |message: String| FileBackendError::Size {
            path: path.to_string(),
            message,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(size.is_some())
            .truncate(false)
            .open(path)
            .map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        let size = if meta.file_type().is_block_device() {
            use std::io::Seek;
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0)).map_err(err)?
        } else {
            match (meta.len(), size) {
                (0, Some(want)) => {
                    file.set_len(want).map_err(err)?;
                    want
                }
                (have, Some(want)) if have < want => {
                    return Err(bad(format!(
                        "holds {have} bytes, less than the configured {want}"
                    )));
                }
                (_, Some(want)) => want,
                (0, None) => return Err(bad("is empty: give the namespace a size".into())),
                (have, None) => have,
            }
        };
        match probe_direct(path, block_size) {
            Some(direct) => Ok(Self {
                file: direct,
                size,
                direct: true,
            }),
            None => Ok(Self {
                file,
                size,
                direct: false,
            }),
        }
    }
}

/// Opens `path` with O_DIRECT and reads one block at offset 0 into a page-aligned
/// buffer: if that works, direct I/O works at this block size. tmpfs, and devices whose
/// sectors are larger than the block size, refuse it.
fn probe_direct(path: &str, block_size: u32) -> Option<std::fs::File> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    let block = block_size as usize;
    let mut buf = vec![0u8; block + 4096];
    let start = buf.as_ptr().align_offset(4096).min(4096);
    f.read_at(&mut buf[start..start + block], 0).ok()?;
    Some(f)
}

/// A namespace's backend.
pub enum Backend {
    Memory(MemoryBackend),
    File(FileBackend),
}

impl Backend {
    pub fn size(&self) -> u64 {
        match self {
            Self::Memory(m) => m.size,
            Self::File(f) => f.size,
        }
    }

    /// Whether writes are cached until a Flush (advertised as a volatile write cache).
    pub fn volatile_cache(&self) -> bool {
        matches!(self, Self::File(_))
    }
}
