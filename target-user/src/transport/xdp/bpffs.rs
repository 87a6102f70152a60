//! The BPF filesystem where the maps are pinned: `/sys/fs/bpf/xdp-target/<iface>/<MAP>`.
//!
//! `serve` mounts bpffs at /sys/fs/bpf when nothing is mounted there; `stats` only reads.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use tracing::info;

pub const BPFFS: &str = "/sys/fs/bpf";
/// `statfs.f_type` of bpffs (64-bit Linux; `f_type` is a `c_long`).
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(
        "{BPFFS} is not a BPF filesystem and mounting one failed ({0}); mount it with `mount -t bpf bpf {BPFFS}`"
    )]
    Mount(io::Error),
    #[error("cannot prepare {path} for pinning: {source}")]
    Dir { path: PathBuf, source: io::Error },
}

/// The directory holding the pins of the target attached to `iface`.
pub fn dir_for(iface: &str) -> PathBuf {
    Path::new(BPFFS).join("xdp-target").join(iface)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &raw mut s) == 0 && s.f_type == BPF_FS_MAGIC
    }
}

/// Mounts bpffs at /sys/fs/bpf if needed, then creates (empty) the pin directory for `iface`.
pub fn pin_dir(iface: &str) -> Result<PathBuf, BpffsError> {
    let root = Path::new(BPFFS);
    if !is_bpffs(root) {
        info!("mounting bpffs at {BPFFS}");
        std::fs::create_dir_all(root).map_err(BpffsError::Mount)?;
        let target = CString::new(BPFFS).expect("no NUL");
        let fstype = CString::new("bpf").expect("no NUL");
        // SAFETY: mount(2) with valid NUL-terminated strings and no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(BpffsError::Mount(io::Error::last_os_error()));
        }
    }
    let dir = dir_for(iface);
    std::fs::create_dir_all(&dir).map_err(|source| BpffsError::Dir {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Removes pins left in `dir` by an earlier run that was killed.
pub fn clear_dir(dir: &Path) -> Result<(), BpffsError> {
    let err = |source| BpffsError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        info!(pin = %path.display(), "removing a stale pin");
        std::fs::remove_file(&path).map_err(err)?;
    }
    Ok(())
}

/// Removes the pins in `dir` and the directory itself.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::remove_dir(dir)
}
