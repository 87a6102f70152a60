//! Anonymous memory mappings owned by one value: the AF_XDP UMEM and the memory backend's
//! chunks.

use std::io;
use std::ptr::NonNull;

/// `len` zeroed bytes of a private anonymous mapping, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` owns its memory alone, like a `Box<[u8]>`; shared access to the
// bytes goes through its owners' `&`/`&mut` borrows.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `&Mapping` gives out only its address and length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Page-aligned; `populate` faults every page in now (MAP_POPULATE).
    pub fn new(len: usize, populate: bool) -> io::Result<Self> {
        let populate = if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | populate,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Self { ptr, len })
    }

    /// Aligned to `align` (a power of two, a multiple of the page size), e.g. so that the
    /// kernel can back it with huge pages: maps `len + align` and unmaps what lies outside.
    pub fn aligned(len: usize, align: usize) -> io::Result<Self> {
        let wide = Self::new(len + align, false)?;
        let base = wide.ptr.as_ptr() as usize;
        let start = base.next_multiple_of(align);
        let (head, tail) = (start - base, base + len + align - (start + len));
        std::mem::forget(wide);
        // SAFETY: both ranges lie inside the mapping just made and outside [start, start +
        // len), which is kept; the `forget` above leaves unmapping to this code.
        unsafe {
            if head > 0 {
                libc::munmap(base as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        let ptr = NonNull::new(start as *mut u8).expect("inside a mapping, so not null");
        Ok(Self { ptr, len })
    }

    /// Asks for transparent huge pages (MADV_HUGEPAGE): a hint; without THP the kernel
    /// keeps small pages, which work alike.
    pub fn want_huge_pages(&self) {
        // SAFETY: advice on this mapping's own range; it changes no contents.
        unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_HUGEPAGE) };
    }

    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new` or `aligned`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
