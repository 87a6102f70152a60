//! The XDP steering program: storage-port TCP packets go to the AF_XDP socket of their rx
//! queue, everything else goes to the kernel.
//!
//! It fails open: anything it cannot parse is `XDP_PASS`, so the kernel keeps ARP, SSH,
//! ICMP, fragments and malformed frames. The only drop is the optional source allow-list,
//! and it only ever applies to packets for a storage port.
//!
//! Parsing: Ethernet with at most one 802.1Q/802.1ad tag; IPv4 (options skipped,
//! fragments passed); IPv6 with up to [`MAX_IPV6_EXT_HEADERS`] hop-by-hop, routing,
//! destination-options or AH headers (a fragment header passes); TCP.
//! Map layouts and names live in `target-common`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, XskMap},
    programs::XdpContext,
};
use target_common::{
    Action, AclV4Addr, AclV6Addr, Counters, PortEntry, Settings, ACL_MAX_ENTRIES, COUNTER_SLOTS,
    MAX_QUEUES, MAX_STORAGE_PORTS, PORT_FLAG_STEER, SETTINGS_FLAG_ACL, SLOT_OTHER,
};

#[map]
static STORAGE_PORTS: HashMap<u16, PortEntry> = HashMap::with_max_entries(MAX_STORAGE_PORTS, 0);
#[map]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
#[map]
static ACL_V4: LpmTrie<AclV4Addr, u8> = LpmTrie::with_max_entries(ACL_MAX_ENTRIES, 0);
#[map]
static ACL_V6: LpmTrie<AclV6Addr, u8> = LpmTrie::with_max_entries(ACL_MAX_ENTRIES, 0);
#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const TCP_MIN_HDR_LEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers skipped before giving up (and passing the packet).
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// No header chain we steer reaches past this offset; it also gives the verifier a bound.
const MAX_L4_OFFSET: usize = 512;

enum Source {
    V4(AclV4Addr),
    V6(AclV6Addr),
}

struct Parsed {
    dst_port: u16,
    source: Source,
}

#[xdp]
pub fn xdp_steer(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(pkt) = parse(&ctx) else {
        count(SLOT_OTHER, Action::Passed, len);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: the value is copied out at once; user space may replace it concurrently,
    // which at worst applies the old or the new entry to this one packet.
    let Some(entry) = (unsafe { STORAGE_PORTS.get(&pkt.dst_port) }).copied() else {
        count(SLOT_OTHER, Action::Passed, len);
        return xdp_action::XDP_PASS;
    };
    let slot = if entry.slot < MAX_STORAGE_PORTS { entry.slot } else { SLOT_OTHER };
    if acl_enabled() && !source_allowed(&pkt.source) {
        count(slot, Action::DroppedAcl, len);
        return xdp_action::XDP_DROP;
    }
    if entry.flags & PORT_FLAG_STEER == 0 {
        count(slot, Action::Passed, len);
        return xdp_action::XDP_PASS;
    }
    // The low bits of the flags are the action when the queue has no socket: the kernel
    // then serves the packet, so a target without AF_XDP sockets still works over sockets.
    match XSKS.redirect(ctx.rx_queue_index(), u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            count(slot, Action::Redirected, len);
            action
        }
        Err(action) => {
            count(slot, Action::RedirectFailed, len);
            action
        }
    }
}

#[inline(always)]
fn count(slot: u32, action: Action, len: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        let i = action as usize;
        // SAFETY: the pointer is this CPU's copy of the slot, valid for the program's run;
        // XDP runs with preemption disabled, so nothing else on this CPU writes it meanwhile.
        unsafe {
            (*c).packets[i] += 1;
            (*c).bytes[i] += len;
        }
    }
}

#[inline(always)]
fn acl_enabled() -> bool {
    SETTINGS.get(0).is_some_and(|s| s.flags & SETTINGS_FLAG_ACL != 0)
}

#[inline(always)]
fn source_allowed(source: &Source) -> bool {
    match source {
        Source::V4(a) => ACL_V4.get(Key::new(32, *a)).is_some(),
        Source::V6(a) => ACL_V6.get(Key::new(128, *a)).is_some(),
    }
}

/// Reads a `T` at `offset` from the start of the frame, or `None` past its end.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the bounds check above keeps [offset, offset + size_of::<T>()) inside the
    // frame; read_unaligned because packet fields have no alignment guarantee.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

// Each header is copied out with one bounds check and then indexed: reading fields one by
// one lets LLVM derive several packet pointers from the same variable offset, and the
// verifier then rejects the ones whose check it cannot see.

#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<Parsed> {
    let eth = read::<[u8; ETH_HDR_LEN + VLAN_HDR_LEN]>(ctx, 0);
    let (ethertype, l3) = match eth {
        Some(h) if is_vlan(u16::from_be_bytes([h[12], h[13]])) => {
            (u16::from_be_bytes([h[16], h[17]]), ETH_HDR_LEN + VLAN_HDR_LEN)
        }
        Some(h) => (u16::from_be_bytes([h[12], h[13]]), ETH_HDR_LEN),
        // Shorter than 18 bytes: untagged at best, and too short for any IP header.
        None => return None,
    };
    let (l4, source) = match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, l3)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3)?,
        _ => return None,
    };
    if l4 > MAX_L4_OFFSET {
        return None;
    }
    let tcp = read::<[u8; TCP_MIN_HDR_LEN]>(ctx, l4)?;
    // A data offset below the fixed header is left to the kernel to reject.
    if usize::from(tcp[12] >> 4) * 4 < TCP_MIN_HDR_LEN {
        return None;
    }
    Some(Parsed { dst_port: u16::from_be_bytes([tcp[2], tcp[3]]), source })
}

#[inline(always)]
const fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Option<(usize, Source)> {
    let h = read::<[u8; IPV4_MIN_HDR_LEN]>(ctx, off)?;
    let hdr_len = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || hdr_len < IPV4_MIN_HDR_LEN {
        return None;
    }
    // More-fragments flag or a non-zero offset: the kernel reassembles.
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 || h[9] != IPPROTO_TCP {
        return None;
    }
    Some((off + hdr_len, Source::V4([h[12], h[13], h[14], h[15]])))
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Option<(usize, Source)> {
    let h = read::<[u8; IPV6_HDR_LEN]>(ctx, off)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let mut next = h[6];
    let mut l4 = off + IPV6_HDR_LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_TCP {
            return Some((l4, Source::V6(src)));
        }
        // Every extension header starts with (next header, length).
        let ext = read::<[u8; 2]>(ctx, l4)?;
        let len = match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => (usize::from(ext[1]) + 1) * 8,
            IPV6_AH => (usize::from(ext[1]) + 2) * 4,
            // A fragment's TCP header may be elsewhere: the kernel reassembles.
            IPV6_FRAGMENT => return None,
            _ => return None,
        };
        next = ext[0];
        l4 += len;
        if l4 > MAX_L4_OFFSET {
            return None;
        }
    }
    (next == IPPROTO_TCP).then_some((l4, Source::V6(src)))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The helpers used (map lookups, redirect_map) are not GPL-only; the dual license keeps
/// the object loadable with GPL-only helpers should a later version need them.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
