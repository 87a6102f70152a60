//! What a network device says it can do for AF_XDP, asked over generic netlink (the
//! `netdev` family, Linux 6.3; `xsk-features`, 6.8): whether it has zero-copy AF_XDP, and
//! whether its zero-copy TX honours a checksum request in the TX metadata. Without that
//! answer the XDP path would have to turn checksum offload off for every zero-copy driver
//! (some, like i40e and ixgbe, skip such a request silently); with it, only for those that
//! do not say they honour it.
//!
//! The messages are built and parsed by target-wire's `netlink` (tested and fuzzed without
//! a socket); [`query`] does the I/O.

use std::io;

pub use target_wire::netlink::NetdevFeatures;
use target_wire::netlink::{
    NetlinkError, dev_get_request, family_request, parse_dev, parse_family_id,
};

/// A generic netlink socket: one request, one reply at a time.
struct Socket(std::os::fd::OwnedFd);

impl Socket {
    fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor socket(2) just returned, owned from here on.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn ask(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        // SAFETY: sockaddr_nl is plain data; zero is the kernel's address.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sendto(2) of a live buffer to a sockaddr_nl of its size.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                std::ptr::from_ref(&to).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: recv(2) into a live buffer of its length.
        let got = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(got.unsigned_abs());
        Ok(buf)
    }
}

/// Asks the kernel what device `ifindex` can do. `Ok(None)` on kernels without the
/// `netdev` family (before 6.3): nothing is known.
pub fn query(ifindex: u32) -> io::Result<Option<NetdevFeatures>> {
    let s = Socket::new()?;
    let family = match parse_family_id(&s.ask(&family_request(1))?) {
        Ok(f) => f,
        Err(NetlinkError::Errno(libc::ENOENT)) => return Ok(None),
        Err(e) => return Err(io::Error::other(e)),
    };
    let reply = s.ask(&dev_get_request(family, 2, ifindex))?;
    parse_dev(&reply).map(Some).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_answers_for_loopback() {
        // This kernel (6.18) has the netdev family; lo has no zero-copy.
        let f = super::query(1)
            .expect("netlink")
            .expect("a kernel with the netdev family");
        assert!(!f.zero_copy());
        assert!(f.xsk.is_some(), "6.8 and later report xsk-features");
    }
}
