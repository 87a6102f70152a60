//! Hand-built Ethernet frames, well-formed and malformed, sent through an AF_PACKET socket
//! so a test knows exactly which frames (and how many) reached the XDP program.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::netns::Netns;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;

/// A raw AF_PACKET socket bound to an interface, for sending frames as they are.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSender {
    /// Opens the socket inside `ns` on interface `iface`.
    pub fn open(ns: &Netns, iface: &str) -> io::Result<Self> {
        let name = CString::new(iface).map_err(io::Error::other)?;
        ns.run(move || -> io::Result<Self> {
            // SAFETY: plain socket(2) call; the result is checked before use.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: NUL-terminated name that outlives the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self {
                fd,
                ifindex: i32::try_from(ifindex).map_err(io::Error::other)?,
            })
        })?
    }

    /// Sends one frame exactly as given (Ethernet header included).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the stated lengths during the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                u32::try_from(size_of::<libc::sockaddr_ll>()).expect("small"),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The MAC address of `iface` in `ns`, from `ip -o link`.
pub fn mac_of(ns: &Netns, iface: &str) -> io::Result<[u8; 6]> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-o", "link", "show", "dev", iface])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| io::Error::other(format!("no MAC in {text:?}")))?;
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(mac.split(':')) {
        *o = u8::from_str_radix(part, 16).map_err(io::Error::other)?;
    }
    Ok(out)
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet with one 802.1Q tag (VLAN `vid`) in front of `ethertype`.
pub fn ethernet_vlan(
    dst: [u8; 6],
    src: [u8; 6],
    vid: u16,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut inner = Vec::with_capacity(4 + payload.len());
    inner.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    inner.extend_from_slice(&ethertype.to_be_bytes());
    inner.extend_from_slice(payload);
    ethernet(dst, src, ETH_P_8021Q, &inner)
}

/// Ethernet with two tags (QinQ): an 802.1ad service tag (VLAN `outer`), then an 802.1Q
/// customer tag (VLAN `inner`) in front of `ethertype`.
pub fn ethernet_qinq(
    dst: [u8; 6],
    src: [u8; 6],
    outer: u16,
    inner: u16,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut tags = Vec::with_capacity(8 + payload.len());
    tags.extend_from_slice(&(outer & 0x0fff).to_be_bytes());
    tags.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    tags.extend_from_slice(&(inner & 0x0fff).to_be_bytes());
    tags.extend_from_slice(&ethertype.to_be_bytes());
    tags.extend_from_slice(payload);
    ethernet(dst, src, ETH_P_8021AD, &tags)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (with `options`, checksum filled in) and `payload`.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    frag: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert!(
        options.len().is_multiple_of(4) && options.len() <= 40,
        "IPv4 options are 4-byte words"
    );
    let hdr_len = 20 + options.len();
    let total = u16::try_from(hdr_len + payload.len()).expect("fits an IPv4 packet");
    let mut p = Vec::with_capacity(hdr_len + payload.len());
    p.push(0x40 | u8::try_from(hdr_len / 4).expect("small"));
    p.push(0);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(options);
    let c = checksum(&p[..hdr_len]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 header with `next` as its next-header value, then `payload` (which may start
/// with extension headers).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&u16::try_from(payload.len()).expect("fits").to_be_bytes());
    p.push(next);
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// An 8-byte IPv6 extension header (hop-by-hop, routing or destination options layout)
/// whose next header is `next`.
pub fn ipv6_ext(next: u8) -> [u8; 8] {
    [next, 0, 1, 4, 0, 0, 0, 0] // PadN option filling the 6 bytes
}

/// A 20-byte TCP SYN header (checksum left zero: the XDP program does not check it).
pub fn tcp_syn(src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src_port.to_be_bytes());
    t[2..4].copy_from_slice(&dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t
}

/// An IPv4 packet holding a TCP SYN with a valid checksum (for receivers that verify it,
/// like the target's user-space stack), initial sequence number `seq`.
pub fn ipv4_tcp_syn(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    seq: u32,
) -> Vec<u8> {
    let mut t = tcp_syn(src_port, dst_port);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12 + t.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
    pseudo.extend_from_slice(&u16::try_from(t.len()).expect("small").to_be_bytes());
    pseudo.extend_from_slice(&t);
    let c = checksum(&pseudo);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, IPPROTO_TCP, 0, &[], &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ipv4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            6,
            0,
            &[],
            &[],
        );
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(p[0], 0x45);
    }

    #[test]
    fn checksummed_syn_verifies() {
        let (src, dst) = (Ipv4Addr::new(10, 98, 0, 7), Ipv4Addr::new(10, 99, 0, 1));
        let p = ipv4_tcp_syn(src, dst, 40000, 4420, 77);
        let tcp = &p[20..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, 20]);
        pseudo.extend_from_slice(tcp);
        assert_eq!(checksum(&pseudo), 0);
        assert_eq!(checksum(&p[..20]), 0);
    }

    #[test]
    fn syn_carries_its_ports_and_flag() {
        let t = tcp_syn(1234, 4420);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 4420);
        assert_eq!(t[13], 0x02);
        assert_eq!(t[12] >> 4, 5);
    }
}
