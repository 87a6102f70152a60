//! Block backends: where a namespace's blocks live.
//!
//! Today: memory. It is split into 2 MiB chunks, each behind its own mutex, so concurrent
//! reactors rarely contend and a block (512 B or 4 KiB, never straddling a chunk) is
//! always written whole: a reader never sees half of a concurrent write. A chunk holds no
//! memory until it is first written, and lets it go again when it is zeroed or deallocated
//! whole, so a 1 GiB namespace costs memory only for what holds data, and zeroing or
//! deallocating a large range costs a drop per chunk, not a memset on the reactor: only
//! the partial chunks at a range's ends are zeroed byte by byte. Each chunk is one 2 MiB
//! page-aligned mapping the kernel is asked to back with a transparent huge page
//! (`MADV_HUGEPAGE`): random 4K reads over a full namespace otherwise miss the TLB on
//! every read, and a miss costs two page walks in a virtual machine (measured on this
//! project's VM: the copy out of a chunk was 31% to 45% of the target core during 4K
//! randread QD32 with 4 KiB pages).
//!
//! Memory has no write cache to flush: a completed write is as durable as this backend
//! ever makes data (it is gone when the process ends), so no volatile write cache is
//! advertised. File and block-device backends through io_uring are not written yet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use target_proto::nvme::controller::{BlockOp, IoOutcome};

use crate::mapping::Mapping;

const CHUNK: usize = 2 << 20;

/// A chunk's bytes; `None` reads as zeroes (never written, or zeroed whole since).
type Chunk = Option<Pages>;

/// `CHUNK` zeroed bytes of a mapping aligned to `CHUNK`, with huge pages asked for.
struct Pages(Mapping);

impl Pages {
    fn new() -> Self {
        match Mapping::aligned(CHUNK, CHUNK) {
            Ok(m) => {
                m.want_huge_pages();
                Self(m)
            }
            // As `vec![0; CHUNK]` would on an allocation failure.
            Err(_) => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(CHUNK, CHUNK).expect("a valid layout"),
            ),
        }
    }
}

impl std::ops::Deref for Pages {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping's bytes, owned by self (zeroed by the kernel).
        unsafe { std::slice::from_raw_parts(self.0.ptr().as_ptr(), self.0.len()) }
    }
}

impl std::ops::DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.0.ptr().as_ptr(), self.0.len()) }
    }
}

pub struct MemoryBackend {
    /// The chunk table grows (`xdp-target ctl resize`) under the write lock; operations
    /// take the read lock, uncontended but for a resize.
    chunks: RwLock<Vec<Mutex<Chunk>>>,
    size: AtomicU64,
}

fn chunk_count(size: u64) -> usize {
    usize::try_from(size.div_ceil(CHUNK as u64)).expect("size fits the address space")
}

impl MemoryBackend {
    /// A zeroed backend of `size` bytes (rounded up to whole chunks internally).
    pub fn new(size: u64) -> Self {
        let chunks = (0..chunk_count(size)).map(|_| Mutex::new(None)).collect();
        Self {
            chunks: RwLock::new(chunks),
            size: AtomicU64::new(size),
        }
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Grows the backend to `size` bytes; the new bytes read as zeroes. Never shrinks.
    pub fn grow(&self, size: u64) {
        let mut chunks = self.chunks.write().unwrap_or_else(PoisonError::into_inner);
        let n = chunk_count(size);
        if n > chunks.len() {
            chunks.resize_with(n, || Mutex::new(None));
        }
        self.size.fetch_max(size, Ordering::AcqRel);
    }

    /// Calls `f(chunk, range in the chunk, range in the caller's buffer)` for each piece of
    /// `[offset, offset + len)`.
    fn for_each(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut Chunk, std::ops::Range<usize>, std::ops::Range<usize>),
    ) -> bool {
        let chunks = self.chunks.read().unwrap_or_else(PoisonError::into_inner);
        let Some(end) = offset.checked_add(len).filter(|&e| e <= self.size()) else {
            return false;
        };
        let mut at = offset;
        while at < end {
            let i = (at / CHUNK as u64) as usize;
            let within = (at % CHUNK as u64) as usize;
            let n = (CHUNK - within).min((end - at) as usize);
            let done = (at - offset) as usize;
            // A panic in a copy leaves bytes, not broken invariants: keep serving.
            let mut c = chunks[i].lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut c, within..within + n, done..done + n);
            at += n as u64;
        }
        true
    }

    /// Zeroes `[offset, offset + len)`: whole chunks are dropped, the rest zeroed in place.
    fn zero(&self, offset: u64, len: u64) -> bool {
        self.for_each(offset, len, |chunk, w, _| {
            if w.len() == CHUNK {
                *chunk = None;
            } else if let Some(c) = chunk {
                c[w].fill(0);
            }
        })
    }

    /// Runs one block operation; `buf` is the command's buffer (sized by the engine).
    pub fn execute(&self, op: &BlockOp, buf: &mut [u8]) -> IoOutcome {
        match op {
            BlockOp::Read { offset, len } => {
                let ok = self.for_each(*offset, *len, |chunk, w, r| match chunk {
                    Some(c) => buf[r].copy_from_slice(&c[w]),
                    None => buf[r].fill(0),
                });
                if ok {
                    IoOutcome::Ok
                } else {
                    IoOutcome::ReadError
                }
            }
            BlockOp::Write { offset, len, .. } => {
                let ok = self.for_each(*offset, *len, |chunk, w, r| {
                    let c = chunk.get_or_insert_with(Pages::new);
                    c[w].copy_from_slice(&buf[r]);
                });
                if ok {
                    IoOutcome::Ok
                } else {
                    IoOutcome::WriteError
                }
            }
            BlockOp::WriteZeroes { offset, len, .. } => {
                if self.zero(*offset, *len) {
                    IoOutcome::Ok
                } else {
                    IoOutcome::WriteError
                }
            }
            BlockOp::Deallocate { ranges } => {
                // Deallocated blocks read as zeroes (Identify Namespace DLFEAT says so).
                let ok = ranges.iter().all(|&(o, l)| self.zero(o, l));
                if ok {
                    IoOutcome::Ok
                } else {
                    IoOutcome::WriteError
                }
            }
            BlockOp::Compare { offset, len } => {
                let mut same = true;
                let ok = self.for_each(*offset, *len, |chunk, w, r| {
                    same &= match chunk {
                        Some(c) => c[w] == buf[r],
                        None => buf[r].iter().all(|&b| b == 0),
                    };
                });
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

    /// Whether chunk `i` holds memory.
    fn allocated(m: &MemoryBackend, i: usize) -> bool {
        m.chunks.read().unwrap()[i].lock().unwrap().is_some()
    }

    #[test]
    fn memory_grows_keeping_its_data_and_never_shrinks() {
        let m = MemoryBackend::new(CHUNK as u64 + 4096);
        let mut data = vec![0x5au8; 4096];
        let write = |m: &MemoryBackend, offset: u64, data: &mut [u8]| {
            m.execute(
                &BlockOp::Write {
                    offset,
                    len: 4096,
                    fua: false,
                },
                data,
            )
        };
        assert_eq!(write(&m, CHUNK as u64, &mut data), IoOutcome::Ok);
        let end = 3 * CHUNK as u64;
        assert_ne!(
            write(&m, end - 4096, &mut data),
            IoOutcome::Ok,
            "beyond the end"
        );
        m.grow(end);
        assert_eq!(m.size(), end);
        assert_eq!(write(&m, end - 4096, &mut data), IoOutcome::Ok, "grown");
        m.grow(4096);
        assert_eq!(m.size(), end, "never shrinks");
        let mut back = vec![0u8; 4096];
        let read = BlockOp::Read {
            offset: CHUNK as u64,
            len: 4096,
        };
        assert_eq!(m.execute(&read, &mut back), IoOutcome::Ok);
        assert_eq!(back, data, "data before the growth stays");
        let read = BlockOp::Read {
            offset: 2 * CHUNK as u64,
            len: 4096,
        };
        assert_eq!(m.execute(&read, &mut back), IoOutcome::Ok);
        assert!(back.iter().all(|&b| b == 0), "new blocks read as zeroes");
    }

    #[test]
    fn whole_chunks_are_released_and_only_partial_ones_zeroed() {
        let m = MemoryBackend::new(3 * CHUNK as u64);
        let all = 3 * CHUNK as u64;
        let mut data = vec![0xabu8; 3 * CHUNK];
        let write = BlockOp::Write {
            offset: 0,
            len: all,
            fua: false,
        };
        assert_eq!(m.execute(&write, &mut data), IoOutcome::Ok);
        assert!((0..3).all(|i| allocated(&m, i)));
        // From the middle of chunk 0 to the middle of chunk 2: chunk 1 is dropped, not
        // zeroed byte by byte; the halves of chunks 0 and 2 are zeroed in place.
        let half = CHUNK as u64 / 2;
        let dealloc = BlockOp::Deallocate {
            ranges: vec![(half, 2 * CHUNK as u64)],
        };
        assert_eq!(m.execute(&dealloc, &mut []), IoOutcome::Ok);
        assert_eq!(
            (0..3).map(|i| allocated(&m, i)).collect::<Vec<_>>(),
            [true, false, true]
        );
        let mut r = vec![1u8; 3 * CHUNK];
        let read = BlockOp::Read {
            offset: 0,
            len: all,
        };
        assert_eq!(m.execute(&read, &mut r), IoOutcome::Ok);
        let (a, b) = (half as usize, half as usize + 2 * CHUNK);
        assert!(r[..a].iter().all(|&x| x == 0xab));
        assert!(r[a..b].iter().all(|&x| x == 0));
        assert!(r[b..].iter().all(|&x| x == 0xab));
        // A released chunk compares equal to zeroes only, and a write brings it back.
        let chunk1 = |len| BlockOp::Compare {
            offset: CHUNK as u64,
            len,
        };
        assert_eq!(m.execute(&chunk1(4096), &mut [0u8; 4096]), IoOutcome::Ok);
        assert_eq!(
            m.execute(&chunk1(4096), &mut [7u8; 4096]),
            IoOutcome::Miscompare
        );
        let w = BlockOp::Write {
            offset: CHUNK as u64 + 512,
            len: 512,
            fua: false,
        };
        assert_eq!(m.execute(&w, &mut [9u8; 512]), IoOutcome::Ok);
        assert!(allocated(&m, 1));
        let mut r = vec![1u8; 1024];
        let read = BlockOp::Read {
            offset: CHUNK as u64,
            len: 1024,
        };
        assert_eq!(m.execute(&read, &mut r), IoOutcome::Ok);
        assert!(r[..512].iter().all(|&x| x == 0) && r[512..].iter().all(|&x| x == 9));
        // Write Zeroes of whole chunks releases them as well.
        let zero = BlockOp::WriteZeroes {
            offset: 0,
            len: all,
            deallocate: false,
            fua: false,
        };
        assert_eq!(m.execute(&zero, &mut []), IoOutcome::Ok);
        assert!((0..3).all(|i| !allocated(&m, i)));
    }

    #[test]
    fn a_chunk_is_zeroed_writable_and_aligned_for_a_huge_page() {
        let mut chunks: Vec<Pages> = (0..3).map(|_| Pages::new()).collect();
        for c in &mut chunks {
            assert_eq!(c.as_ptr() as usize % CHUNK, 0, "aligned to its size");
            assert_eq!(c.len(), CHUNK);
            assert!(c.iter().all(|&b| b == 0));
            c[0] = 1;
            c[CHUNK - 1] = 2;
        }
        // Each is a mapping of its own.
        assert!(chunks.iter().all(|c| c[0] == 1 && c[CHUNK - 1] == 2));
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
/// `reactor::block`), never with a blocking call. It is opened with O_DIRECT when the file
/// system takes direct I/O at the namespace's block size (command buffers are
/// page-aligned), else buffered through the page cache. Either way there is a volatile
/// write cache (the page cache, or the device's own), advertised as such: Flush is
/// fdatasync, a FUA write is RWF_DSYNC, Write Zeroes and deallocation are fallocate (zero
/// range, punch hole).
pub struct FileBackend {
    pub file: std::fs::File,
    size: AtomicU64,
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
        let size = AtomicU64::new(size);
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

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Grows the namespace to `size` bytes: a regular file is extended (the new blocks
    /// read as zeroes), a block device must already hold them (grow it first, e.g.
    /// `lvextend`). Never shrinks.
    pub fn grow(&self, size: u64) -> std::io::Result<()> {
        use std::io::Seek;
        use std::os::unix::fs::FileTypeExt;
        let meta = self.file.metadata()?;
        if meta.file_type().is_block_device() {
            let mut f = &self.file;
            let have = f.seek(std::io::SeekFrom::End(0))?;
            if have < size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("the block device holds {have} bytes, less than {size}"),
                ));
            }
        } else if meta.len() < size {
            self.file.set_len(size)?;
            // The new length is metadata a crash must not lose before hosts write there.
            self.file.sync_all()?;
        }
        self.size.fetch_max(size, Ordering::AcqRel);
        Ok(())
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
            Self::Memory(m) => m.size(),
            Self::File(f) => f.size(),
        }
    }

    /// Grows the backend to `size` bytes (see [`MemoryBackend::grow`], [`FileBackend::grow`]).
    pub fn grow(&self, size: u64) -> std::io::Result<()> {
        match self {
            Self::Memory(m) => {
                m.grow(size);
                Ok(())
            }
            Self::File(f) => f.grow(size),
        }
    }

    /// Whether writes are cached until a Flush (advertised as a volatile write cache).
    pub fn volatile_cache(&self) -> bool {
        matches!(self, Self::File(_))
    }
}
