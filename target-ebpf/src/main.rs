//! The XDP steering program: storage-port TCP packets go to the AF_XDP socket of their rx
//! queue, everything else goes to the kernel.
//!
//! It fails open: anything it cannot parse is `XDP_PASS`, so the kernel keeps ARP, SSH,
//! ICMP, UDP and malformed frames. The only drop is the optional source allow-list. It
//! applies to packets for a storage port, and, a deliberate fail-closed exception, to IP
//! packets that are or may be TCP but whose TCP header the program cannot reach (IPv4 TCP
//! fragments, IPv6 fragments, extension-header chains too long to walk, truncated TCP
//! headers; see `target_common::parse::Class::Opaque`): their port is unknown, and the
//! kernel would reassemble or parse them and could hand them to a storage-port socket. So
//! with the allow-list on, such traffic from outside the list is dropped on this interface
//! whatever its port (counted as `dropped_acl` in the "other" slot); from inside the list,
//! and with the list off, it passes as before.
//!
//! The object holds a second program, `xdp_fault`, a test tool that the end-to-end tests
//! attach to the hops of a routed path to drop, cut or reorder frames (see its doc).
//!
//! The parser (`target_common::parse`) is shared with the host, where it is unit-tested
//! and fuzzed; here it reads through [`Packet`]. Map layouts and names live in
//! `target-common` too.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_get_smp_processor_id},
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, CpuMap, HashMap, LpmTrie, PerCpuArray, XskMap},
    programs::XdpContext,
};
use target_common::fault::{self, FaultCounters, FaultSettings};
use target_common::parse::{classify, is_vlan, link_layer, parse, Class, Frame, Source};
use target_common::{
    Action, AclV4Addr, AclV6Addr, Counters, PortEntry, Settings, ACL_MAX_ENTRIES, COUNTER_SLOTS,
    LOCAL_MAX_ENTRIES, MAX_QUEUES, MAX_STORAGE_PORTS, PORT_FLAG_STEER, SETTINGS_FLAG_ACL,
    SETTINGS_FLAG_LOCAL, SLOT_OTHER,
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
#[map]
static LOCAL_V4: HashMap<[u8; 4], u8> = HashMap::with_max_entries(LOCAL_MAX_ENTRIES, 0);
#[map]
static LOCAL_V6: HashMap<[u8; 16], u8> = HashMap::with_max_entries(LOCAL_MAX_ENTRIES, 0);

/// The frame behind an [`XdpContext`], for the shared parser.
struct Packet<'a>(&'a XdpContext);

impl Frame for Packet<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        if start + offset + N > self.0.data_end() {
            return None;
        }
        // SAFETY: the check above keeps [offset, offset + N) inside the frame;
        // read_unaligned because packet fields have no alignment guarantee.
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
    }
}

/// `frags`: the program accepts multi-buffer frames, so the interface (and a veth peer) may
/// run jumbo MTUs; it only ever reads headers, which are in the first buffer.
#[xdp(frags)]
pub fn xdp_steer(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let pkt = match classify(&Packet(&ctx)) {
        Class::Tcp(pkt) => pkt,
        // Fail closed for this one case (see the module doc): the port is unknown.
        Class::Opaque(source) if acl_enabled() && !source_allowed(&source) => {
            count(SLOT_OTHER, Action::DroppedAcl, len);
            return xdp_action::XDP_DROP;
        }
        Class::Opaque(_) | Class::Other => {
            count(SLOT_OTHER, Action::Passed, len);
            return xdp_action::XDP_PASS;
        }
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
    // The AF_XDP path's frames are untagged, so it could not answer a tagged one: those go
    // to the kernel (after the allow-list above), whose VLAN devices and listeners serve
    // them over sockets.
    // Only packets to an address the user-space stack answers for go to it: the stack
    // could not answer others, and a frame it takes teaches it nothing it may trust.
    if entry.flags & PORT_FLAG_STEER == 0 || tagged(&ctx) || !to_local(&ctx, &pkt.source) {
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

/// Whether the frame carries an 802.1Q or 802.1ad tag.
#[inline(always)]
fn tagged(ctx: &XdpContext) -> bool {
    Packet(ctx)
        .read::<2>(12)
        .is_some_and(|t| is_vlan(u16::from_be_bytes(t)))
}

/// Whether the packet's destination is one of the stack's addresses (always, until user
/// space turned the check on with them).
#[inline(always)]
fn to_local(ctx: &XdpContext, source: &Source) -> bool {
    if !SETTINGS
        .get(0)
        .is_some_and(|s| s.flags & SETTINGS_FLAG_LOCAL != 0)
    {
        return true;
    }
    let f = Packet(ctx);
    let Some((_, l3)) = link_layer(&f) else {
        return false;
    };
    // SAFETY (both lookups): the values are copied out or only tested for presence.
    match source {
        Source::V4(_) => f
            .read::<4>(l3 + 16)
            .is_some_and(|a| unsafe { LOCAL_V4.get(&a) }.is_some()),
        Source::V6(_) => f
            .read::<16>(l3 + 24)
            .is_some_and(|a| unsafe { LOCAL_V6.get(&a) }.is_some()),
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

#[map]
static FAULT_SETTINGS: Array<FaultSettings> = Array::with_max_entries(1, 0);
#[map]
static FAULT_COUNTERS: PerCpuArray<FaultCounters> = PerCpuArray::with_max_entries(1, 0);
#[map]
static FAULT_CPUS: CpuMap = CpuMap::with_max_entries(fault::OBJECT_CPUS, 0);

/// Fault injection for tests, on an interface of a forwarding hop: drops a share of the
/// frames it receives (`drop_ppm`, decided by `bpf_get_prandom_u32`), all of them while
/// `FLAG_CUT` is set, and reorders a share (`reorder_ppm`); everything else is `XDP_PASS`.
/// With ports set in the settings, only TCP frames from or to one of them are touched.
///
/// Reordering: an XDP program cannot hold a frame back and release it after later ones (it
/// decides each frame's fate at once, and a map cannot store packet data). What it can do
/// is hand a frame to another CPU through a cpumap: the kernel queues it there and a
/// kthread on that CPU builds the skb and forwards it after the frames that stayed on this
/// CPU's fast path went ahead, typically tens of microseconds later. That delays single
/// frames without holding them, so the share is exact but by how much a frame falls behind
/// is up to the scheduler. Frames so redirected lose the skb's checksum state
/// (CHECKSUM_PARTIAL becomes "none"): the senders must compute checksums in software,
/// which the tests arrange with `ethtool -K IF tx off`.
///
/// `frags`: it reads only the linear part, so it may run on multi-buffer (jumbo) frames.
#[xdp(frags)]
pub fn xdp_fault(ctx: XdpContext) -> u32 {
    let Some(c) = FAULT_COUNTERS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's copy, valid for the program's run; XDP runs with preemption
    // disabled, so nothing else on this CPU writes it meanwhile (as in `count`).
    let c = unsafe { &mut *c };
    c.seen += 1;
    let Some(s) = FAULT_SETTINGS.get(0).copied() else {
        return xdp_action::XDP_PASS;
    };
    if !fault_matches(&ctx, &s) {
        return xdp_action::XDP_PASS;
    }
    c.matched += 1;
    if s.flags & fault::FLAG_CUT != 0 {
        c.cut += 1;
        return xdp_action::XDP_DROP;
    }
    // SAFETY: bpf_get_prandom_u32 takes no arguments and has no preconditions.
    if s.drop_ppm > 0 && unsafe { bpf_get_prandom_u32() } % fault::PPM < s.drop_ppm {
        c.dropped += 1;
        return xdp_action::XDP_DROP;
    }
    // SAFETY: as above.
    if s.reorder_ppm > 0
        && s.cpus > 0
        && unsafe { bpf_get_prandom_u32() } % fault::PPM < s.reorder_ppm
    {
        // SAFETY: bpf_get_smp_processor_id has no preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let other = (cpu + 1) % s.cpus;
        c.reordered += 1;
        return match FAULT_CPUS.redirect(other, u64::from(xdp_action::XDP_PASS)) {
            Ok(action) => action,
            Err(action) => {
                c.reorder_failed += 1;
                action
            }
        };
    }
    xdp_action::XDP_PASS
}

/// Whether the settings' port filter selects this frame: no ports set, or a TCP frame with
/// one of them as its source or destination port.
#[inline(always)]
fn fault_matches(ctx: &XdpContext, s: &FaultSettings) -> bool {
    if s.ports == [0; fault::MAX_PORTS] {
        return true;
    }
    let frame = Packet(ctx);
    let Some(pkt) = parse(&frame) else {
        return false;
    };
    // parse already read the whole fixed TCP header at this offset, and bounded it.
    if pkt.l4_offset > target_common::parse::MAX_L4_OFFSET {
        return false;
    }
    let Some(ports) = frame.read::<4>(pkt.l4_offset) else {
        return false;
    };
    let src = u16::from_be_bytes([ports[0], ports[1]]);
    let dst = u16::from_be_bytes([ports[2], ports[3]]);
    let mut hit = false;
    for p in s.ports {
        hit |= p != 0 && (p == src || p == dst);
    }
    hit
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
