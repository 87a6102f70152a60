//! Block operations shared by every protocol engine: what a command asks of a backend
//! ([`BlockIo`]), how it ended ([`IoOutcome`]), and the page-aligned buffer its data lives
//! in ([`AlignedBuf`]). User space runs them (memory in place, files through io_uring).

/// A block operation for the backend of namespace (or LUN) `nsid`; offsets and lengths in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOp {
    /// Read `len` bytes at `offset` into the command's buffer.
    Read { offset: u64, len: u64 },
    /// Write the command's buffer; with `fua`, durable before completion.
    Write { offset: u64, len: u64, fua: bool },
    /// Make every completed write durable.
    Flush,
    /// Flush with NSID FFFFFFFFh: make every completed write to each of these backends
    /// durable. They are the namespaces of the issuing controller's subsystem, never
    /// another subsystem's; [`BlockIo::backend`] is [`ALL_BACKENDS`].
    FlushAll { backends: Vec<u32> },
    /// Zero the range; with `deallocate` the backend may unmap it.
    WriteZeroes {
        offset: u64,
        len: u64,
        deallocate: bool,
        fua: bool,
    },
    /// Deallocate these ranges (reads of them return zeroes afterwards).
    Deallocate { ranges: Vec<(u64, u64)> },
    /// Compare the media with the command's buffer.
    Compare { offset: u64, len: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockIo {
    pub nsid: u32,
    /// The namespace's [`Namespace::backend`]; [`ALL_BACKENDS`] for a
    /// [`BlockOp::FlushAll`], which names its backends itself.
    pub backend: u32,
    pub op: BlockOp,
}

/// [`BlockIo::backend`] of a [`BlockOp::FlushAll`]: no backend has this index.
pub const ALL_BACKENDS: u32 = u32::MAX;

/// How a block operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOutcome {
    Ok,
    /// Compare found a difference.
    Miscompare,
    /// The backend failed reading.
    ReadError,
    /// The backend failed writing (or flushing).
    WriteError,
}

/// Alignment of command buffers: a page, which O_DIRECT I/O needs.
pub const BUFFER_ALIGN: usize = 4096;

/// A command's data buffer, page-aligned for O_DIRECT. Its backing store is allocated once
/// (the largest transfer plus a page) and reused; the aligned window is found with
/// `align_offset`, so no unsafe code is needed here.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    backing: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Makes the buffer `len` bytes long; the contents are whatever the last command left,
    /// to be overwritten by this one (host data, or the backend's read).
    pub fn set_len(&mut self, len: usize) {
        if self.backing.len() < self.start + len {
            // Grow to the largest transfer seen (in powers of two), not to MDTS at once:
            // a queue of 4 KiB I/O keeps 8 KiB per slot.
            self.backing = vec![0u8; len.next_power_of_two().max(BUFFER_ALIGN) + BUFFER_ALIGN];
            self.start = self
                .backing
                .as_ptr()
                .align_offset(BUFFER_ALIGN)
                .min(BUFFER_ALIGN);
        }
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.backing[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.backing[self.start..self.start + self.len]
    }
}
