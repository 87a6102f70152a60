//! The XDP steering program: storage-port TCP packets go to the AF_XDP socket of their rx
//! queue, everything else goes to the kernel.
//!
//! It fails open: anything it cannot parse is `XDP_PASS`, so the kernel keeps ARP, SSH,
//! ICMP, fragments and malformed frames. The only drop is the optional source allow-list,
//! and it only ever applies to packets for a storage port.
//!
//! The parser (`target_common::parse`) is shared with the host, where it is unit-tested
//! and fuzzed; here it reads through [`Packet`]. Map layouts and names live in
//! `target-common` too.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, XskMap},
    programs::XdpContext,
};
use target_common::parse::{parse, Frame, Source};
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
    let Some(pkt) = parse(&Packet(&ctx)) else {
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
