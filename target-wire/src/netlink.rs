//! Generic netlink, as far as asking the kernel's `netdev` family what a device can do for
//! AF_XDP (Linux 6.3; `xsk-features` 6.8): the two requests, and their replies read. The
//! socket is the caller's (target-user's `transport::xdp::netdev`).
//!
//! Numbers from include/uapi/linux/netlink.h, genetlink.h and netdev.h; integers are in
//! the host's byte order, as netlink's are.

/// `NLMSG_ERROR`, `NLMSG_DONE`.
pub const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
#[cfg(feature = "std")]
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
/// The generic netlink controller, and what is asked of it.
pub const GENL_ID_CTRL: u16 = 0x10;
#[cfg(feature = "std")]
const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
#[cfg(feature = "std")]
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// include/uapi/linux/netdev.h.
pub const NETDEV_CMD_DEV_GET: u8 = 1;
pub const NETDEV_A_DEV_IFINDEX: u16 = 1;
pub const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
pub const NETDEV_A_DEV_XDP_ZC_MAX_SEGS: u16 = 4;
pub const NETDEV_A_DEV_XSK_FEATURES: u16 = 6;
/// `NETDEV_XDP_ACT_XSK_ZEROCOPY`.
const XDP_ACT_XSK_ZEROCOPY: u64 = 8;
/// `NETDEV_XSK_FLAGS_TX_CHECKSUM`.
const XSK_FLAGS_TX_CHECKSUM: u64 = 2;
/// Attribute types carry two flag bits (nested, byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A device's AF_XDP abilities, as the kernel reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetdevFeatures {
    /// `xdp-features` (NETDEV_XDP_ACT_*).
    pub xdp: u64,
    /// `xsk-features` (NETDEV_XSK_FLAGS_*); `None` from kernels before 6.8.
    pub xsk: Option<u64>,
    /// Buffers per frame in zero-copy mode, when it has zero-copy.
    pub zc_max_segs: Option<u32>,
}

impl NetdevFeatures {
    /// The driver binds AF_XDP sockets in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.xdp & XDP_ACT_XSK_ZEROCOPY != 0
    }

    /// The driver's zero-copy TX computes the L4 checksum a TX metadata request asks for.
    pub fn zero_copy_tx_checksum(&self) -> bool {
        self.xsk.is_some_and(|f| f & XSK_FLAGS_TX_CHECKSUM != 0)
    }
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetlinkError {
    /// The kernel answered with this error (a positive errno).
    Errno(i32),
    /// Not a reply the kernel would send: what is wrong.
    Malformed(&'static str),
}

impl core::fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Errno(e) => write!(f, "the kernel answered with error {e}"),
            Self::Malformed(why) => write!(f, "a malformed netlink reply: {why}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for NetlinkError {}

#[cfg(feature = "std")]
fn push_attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&u16::try_from(len).expect("small attributes").to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

#[cfg(feature = "std")]
fn message(family: u16, cmd: u8, version: u8, seq: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN];
    m.extend_from_slice(&[cmd, version, 0, 0]);
    for (ty, p) in attrs {
        push_attr(&mut m, *ty, p);
    }
    let len = u32::try_from(m.len()).expect("small messages");
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&family.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// CTRL_CMD_GETFAMILY for "netdev".
#[cfg(feature = "std")]
pub fn family_request(seq: u32) -> Vec<u8> {
    message(
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        1,
        seq,
        &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0")],
    )
}

/// NETDEV_CMD_DEV_GET for the device `ifindex`.
#[cfg(feature = "std")]
pub fn dev_get_request(family: u16, seq: u32, ifindex: u32) -> Vec<u8> {
    message(
        family,
        NETDEV_CMD_DEV_GET,
        1,
        seq,
        &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())],
    )
}

/// The attributes of the first generic netlink message in `reply`, each as (type,
/// payload), handed to `each`.
fn attrs<'a>(
    reply: &'a [u8],
    mut each: impl FnMut(u16, &'a [u8]) -> Result<(), NetlinkError>,
) -> Result<(), NetlinkError> {
    let malformed = NetlinkError::Malformed;
    let header = reply
        .get(..NLMSG_HDRLEN)
        .ok_or(malformed("shorter than a header"))?;
    let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let ty = u16::from_ne_bytes([header[4], header[5]]);
    let body = reply
        .get(NLMSG_HDRLEN..len.max(NLMSG_HDRLEN))
        .ok_or(malformed("length past the reply"))?;
    if ty == NLMSG_ERROR {
        let e = body.get(..4).ok_or(malformed("a short error"))?;
        let errno = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
        return Err(NetlinkError::Errno(errno.saturating_neg()));
    }
    if ty == NLMSG_DONE {
        return Err(malformed("no answer before DONE"));
    }
    let mut rest = body
        .get(GENL_HDRLEN..)
        .ok_or(malformed("shorter than a generic netlink header"))?;
    while rest.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let aty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if alen < 4 || alen > rest.len() {
            return Err(malformed("an attribute's length"));
        }
        each(aty, &rest[4..alen])?;
        rest = rest.get(alen.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(())
}

fn u64_of(p: &[u8]) -> Result<u64, NetlinkError> {
    match p.len() {
        8 => Ok(u64::from_ne_bytes(p.try_into().expect("8 bytes"))),
        4 => Ok(u64::from(u32::from_ne_bytes(
            p.try_into().expect("4 bytes"),
        ))),
        _ => Err(NetlinkError::Malformed("a number of another size")),
    }
}

/// The family ID in a CTRL_CMD_GETFAMILY reply.
pub fn parse_family_id(reply: &[u8]) -> Result<u16, NetlinkError> {
    let mut id = None;
    attrs(reply, |ty, p| {
        if ty == CTRL_ATTR_FAMILY_ID && id.is_none() {
            let [a, b, ..] = *p else {
                return Err(NetlinkError::Malformed("a short family ID"));
            };
            id = Some(u16::from_ne_bytes([a, b]));
        }
        Ok(())
    })?;
    id.ok_or(NetlinkError::Malformed("no family ID"))
}

/// The features in a NETDEV_CMD_DEV_GET reply.
pub fn parse_dev(reply: &[u8]) -> Result<NetdevFeatures, NetlinkError> {
    let mut f = NetdevFeatures::default();
    attrs(reply, |ty, p| {
        match ty {
            NETDEV_A_DEV_XDP_FEATURES => f.xdp = u64_of(p)?,
            NETDEV_A_DEV_XSK_FEATURES => f.xsk = Some(u64_of(p)?),
            NETDEV_A_DEV_XDP_ZC_MAX_SEGS => {
                f.zc_max_segs = Some(u32::try_from(u64_of(p)?).unwrap_or(u32::MAX));
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(f)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    /// A reply as the kernel builds it: header, genl header, attributes.
    fn reply(ty: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        message(ty, 1, 1, 7, attrs)
    }

    #[test]
    fn requests_are_well_formed() {
        let r = family_request(5);
        assert_eq!(
            r.len(),
            16 + 4 + 4 + 8,
            "header, genl, name attribute padded"
        );
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), GENL_ID_CTRL);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 5);
        assert_eq!(&r[24..31], b"netdev\0");
        let d = dev_get_request(30, 6, 4);
        assert_eq!(u16::from_ne_bytes([d[4], d[5]]), 30);
        assert_eq!(d[16], NETDEV_CMD_DEV_GET);
        let mut attr = 8u16.to_ne_bytes().to_vec();
        attr.extend_from_slice(&NETDEV_A_DEV_IFINDEX.to_ne_bytes());
        attr.extend_from_slice(&4u32.to_ne_bytes());
        assert_eq!(&d[20..28], &attr[..]);
    }

    #[test]
    fn replies_are_read() {
        let f = parse_dev(&reply(
            30,
            &[
                (NETDEV_A_DEV_IFINDEX, &4u32.to_ne_bytes()),
                (NETDEV_A_DEV_XDP_FEATURES, &(8u64 | 1).to_ne_bytes()),
                (5, &0u64.to_ne_bytes()),
                (NETDEV_A_DEV_XSK_FEATURES, &2u64.to_ne_bytes()),
                (NETDEV_A_DEV_XDP_ZC_MAX_SEGS, &1u32.to_ne_bytes()),
            ],
        ))
        .unwrap();
        assert!(f.zero_copy() && f.zero_copy_tx_checksum());
        assert_eq!(f.zc_max_segs, Some(1));
        // A 6.3-6.7 kernel: no xsk-features; a driver without zero-copy.
        let old = parse_dev(&reply(
            30,
            &[(NETDEV_A_DEV_XDP_FEATURES, &3u64.to_ne_bytes())],
        ))
        .unwrap();
        assert!(!old.zero_copy() && !old.zero_copy_tx_checksum());
        assert_eq!(old.xsk, None);
        assert_eq!(
            parse_family_id(&reply(
                GENL_ID_CTRL,
                &[(CTRL_ATTR_FAMILY_ID, &30u16.to_ne_bytes())]
            )),
            Ok(30)
        );
    }

    #[test]
    fn errors_and_garbage_are_errors() {
        let mut e = message(NLMSG_ERROR, 0, 0, 1, &[]);
        e[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(parse_family_id(&e), Err(NetlinkError::Errno(2)));
        assert!(parse_dev(&[1, 2, 3]).is_err());
        let mut bad = reply(30, &[(NETDEV_A_DEV_XDP_FEATURES, &[1, 2, 3])]);
        assert!(parse_dev(&bad).is_err(), "a 3-byte number");
        bad[20] = 200;
        assert!(parse_dev(&bad).is_err(), "an attribute past the end");
        let mut cut = reply(30, &[]);
        cut[0] = 200;
        assert!(parse_dev(&cut).is_err(), "a length past the reply");
    }
}
