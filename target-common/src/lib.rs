//! The ABI shared by the XDP program (`target-ebpf`) and user space (`target-user`).
//!
//! Everything both sides must agree on lives here and only here: map names, map sizes,
//! the `#[repr(C)]` keys and values, and the counter indices. Each struct has a
//! compile-time size assertion, because a silent layout change would make user space read
//! the kernel's maps wrongly without any error.
//!
//! Maps (all pinned by user space under `/sys/fs/bpf/xdp-target/<iface>/<NAME>`):
//!
//! | name            | type            | key                  | value          |
//! |-----------------|-----------------|----------------------|----------------|
//! | `STORAGE_PORTS` | hash            | TCP port (host order, `u16`) | [`PortEntry`] |
//! | `XSKS`          | xskmap          | rx queue index       | AF_XDP socket  |
//! | `COUNTERS`      | per-CPU array   | slot (`u32`)         | [`Counters`]   |
//! | `ACL_V4`        | LPM trie        | prefix + IPv4 addr   | `u8` (unused)  |
//! | `ACL_V6`        | LPM trie        | prefix + IPv6 addr   | `u8` (unused)  |
//! | `SETTINGS`      | array (1 entry) | 0                    | [`Settings`]   |
//! | `LOCAL_V4`      | hash            | IPv4 addr            | `u8` (unused)  |
//! | `LOCAL_V6`      | hash            | IPv6 addr            | `u8` (unused)  |
//!
//! The fault-injection program `xdp_fault` (a test tool: the end-to-end tests attach it to
//! the veth ends of a router namespace between initiator and target) has maps of its own,
//! never pinned, listed in [`fault`].
#![no_std]

pub mod parse;
pub mod rx;

/// Names of the maps in the object file, as user space looks them up and pins them.
pub mod map_names {
    pub const STORAGE_PORTS: &str = "STORAGE_PORTS";
    pub const XSKS: &str = "XSKS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const ACL_V4: &str = "ACL_V4";
    pub const ACL_V6: &str = "ACL_V6";
    pub const SETTINGS: &str = "SETTINGS";
    pub const LOCAL_V4: &str = "LOCAL_V4";
    pub const LOCAL_V6: &str = "LOCAL_V6";
    /// Every map, in the order `stats` and the pinning code walk them.
    pub const ALL: [&str; 8] = [
        STORAGE_PORTS,
        XSKS,
        COUNTERS,
        ACL_V4,
        ACL_V6,
        SETTINGS,
        LOCAL_V4,
        LOCAL_V6,
    ];
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "xdp_steer";

/// How many distinct storage ports the program can match.
pub const MAX_STORAGE_PORTS: u32 = 16;
/// Counter slot for traffic that is not for a storage port, and for anything whose port
/// the program cannot read (see [`parse::Class`]).
pub const SLOT_OTHER: u32 = MAX_STORAGE_PORTS;
/// Entries in `COUNTERS`: one per storage port plus [`SLOT_OTHER`].
pub const COUNTER_SLOTS: u32 = MAX_STORAGE_PORTS + 1;
/// Entries in `XSKS`: the highest rx queue index an AF_XDP socket can serve, plus one.
pub const MAX_QUEUES: u32 = 256;
/// Entries in each source allow-list trie.
pub const ACL_MAX_ENTRIES: u32 = 1024;

/// The ports the target serves unless configured otherwise: NVMe/TCP I/O, NVMe/TCP
/// discovery, iSCSI.
pub const DEFAULT_STORAGE_PORTS: [u16; 3] = [4420, 8009, 3260];

/// Value of `STORAGE_PORTS`: which counter slot the port uses and what to do with it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// Index into `COUNTERS`, below [`MAX_STORAGE_PORTS`].
    pub slot: u32,
    /// `PORT_FLAG_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PortEntry>() == 8);

/// Redirect this port's packets to the AF_XDP socket of their rx queue. Without it the
/// packets are counted as `passed` and go to the kernel (count-only mode).
pub const PORT_FLAG_STEER: u32 = 1;

/// Value of `SETTINGS[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `SETTINGS_FLAG_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 4);

/// Storage-port packets whose source is in neither `ACL_V4` nor `ACL_V6` are dropped, and so
/// are IP packets from such a source that may be TCP but whose TCP header the program
/// cannot reach ([`parse::Class::Opaque`]: fragments, long IPv6 header chains), whatever
/// their port.
pub const SETTINGS_FLAG_ACL: u32 = 1;
/// Redirect only packets whose destination is in `LOCAL_V4`/`LOCAL_V6` (the addresses the
/// user-space stack answers for); set once user space filled them (AF_XDP serving).
pub const SETTINGS_FLAG_LOCAL: u32 = 2;
/// Entries of each `LOCAL_*` map.
pub const LOCAL_MAX_ENTRIES: u32 = 64;

/// What the program did with a packet; the index into [`Counters`]' arrays.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Handed to the AF_XDP socket of the packet's rx queue.
    Redirected = 0,
    /// Handed to the kernel: not a storage port, unparsable, or a count-only port.
    Passed = 1,
    /// A storage-port packet whose rx queue had no AF_XDP socket; it went to the kernel.
    RedirectFailed = 2,
    /// A packet from a source outside the allow-list; dropped. In a port's slot, a packet
    /// for that storage port; in [`SLOT_OTHER`], one whose TCP header the program could not
    /// reach ([`parse::Class::Opaque`]).
    DroppedAcl = 3,
}

impl Action {
    pub const COUNT: usize = 4;
    pub const ALL: [Self; Self::COUNT] = [
        Self::Redirected,
        Self::Passed,
        Self::RedirectFailed,
        Self::DroppedAcl,
    ];

    /// The name used in `xdp-target stats` output (table and JSON).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Redirected => "redirected",
            Self::Passed => "passed",
            Self::RedirectFailed => "redirect_failed",
            Self::DroppedAcl => "dropped_acl",
        }
    }
}

/// Value of `COUNTERS[slot]`, one copy per CPU; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: [u64; Action::COUNT],
    /// Bytes of the frame's linear part, from the Ethernet header on.
    pub bytes: [u64; Action::COUNT],
}
const _: () = assert!(core::mem::size_of::<Counters>() == 64);

impl Counters {
    /// Adds another CPU's copy to this one.
    pub fn add(&mut self, other: &Self) {
        for i in 0..Action::COUNT {
            self.packets[i] = self.packets[i].wrapping_add(other.packets[i]);
            self.bytes[i] = self.bytes[i].wrapping_add(other.bytes[i]);
        }
    }
}

/// Key data of `ACL_V4` (network byte order), behind the trie's `u32` prefix length.
pub type AclV4Addr = [u8; 4];
/// Key data of `ACL_V6` (network byte order), behind the trie's `u32` prefix length.
pub type AclV6Addr = [u8; 16];

/// The ABI of `xdp_fault`, the fault-injection program in the same object as `xdp_steer`.
///
/// It runs on a forwarding hop (a router namespace in the tests), sees every frame that
/// interface receives, and drops a share of them, all of them (a cut link), or hands a
/// share to another CPU through a cpumap, where the kernel delivers them later than the
/// frames behind them (reordering). Maps, one copy per attached program (each attach loads
/// the object afresh):
///
/// | name             | type            | key        | value              |
/// |------------------|-----------------|------------|--------------------|
/// | `FAULT_SETTINGS` | array (1 entry) | 0          | [`FaultSettings`]  |
/// | `FAULT_COUNTERS` | per-CPU array (1 entry) | 0  | [`FaultCounters`]  |
/// | `FAULT_CPUS`     | cpumap          | CPU number | queue size (user space fills it) |
pub mod fault {
    /// Name of the program in the object file.
    pub const PROGRAM_NAME: &str = "xdp_fault";
    pub const SETTINGS: &str = "FAULT_SETTINGS";
    pub const COUNTERS: &str = "FAULT_COUNTERS";
    pub const CPUS: &str = "FAULT_CPUS";
    /// Entries in `FAULT_CPUS` as the object declares it. One, because the steering
    /// program's loader creates every map of the object, and a cpumap larger than the
    /// kernel's NR_CPUS would fail to create; the fault loader overrides it with the number
    /// of CPUs.
    pub const OBJECT_CPUS: u32 = 1;
    /// TCP ports in [`FaultSettings::ports`].
    pub const MAX_PORTS: usize = 4;
    /// Shares are in parts per million.
    pub const PPM: u32 = 1_000_000;

    /// Drop every matching frame: the link is cut.
    pub const FLAG_CUT: u32 = 1;

    /// Value of `FAULT_SETTINGS[0]`. All zero (the state after loading) passes everything.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FaultSettings {
        /// Share of matching frames dropped, in parts per million.
        pub drop_ppm: u32,
        /// Share of matching frames (of those not dropped) redirected to another CPU's
        /// cpumap queue, in parts per million.
        pub reorder_ppm: u32,
        /// `FLAG_*` bits.
        pub flags: u32,
        /// CPUs with an entry in `FAULT_CPUS` (0..cpus); reordering needs at least one.
        pub cpus: u32,
        /// Only TCP frames with one of these as source or destination port match (0 is an
        /// unused entry); with all zero, every frame matches.
        pub ports: [u16; MAX_PORTS],
    }
    const _: () = assert!(core::mem::size_of::<FaultSettings>() == 24);

    /// Value of `FAULT_COUNTERS[0]`, one copy per CPU; user space sums them.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FaultCounters {
        /// Frames the program ran on.
        pub seen: u64,
        /// Frames the port filter selected.
        pub matched: u64,
        /// Matching frames dropped by chance (`drop_ppm`).
        pub dropped: u64,
        /// Matching frames dropped because the link was cut.
        pub cut: u64,
        /// Matching frames handed to another CPU (`reorder_ppm`).
        pub reordered: u64,
        /// Of those, frames the cpumap refused (no entry for the CPU): passed instead.
        pub reorder_failed: u64,
    }
    const _: () = assert!(core::mem::size_of::<FaultCounters>() == 48);

    impl FaultCounters {
        /// Adds another CPU's copy to this one.
        pub fn add(&mut self, o: &Self) {
            self.seen = self.seen.wrapping_add(o.seen);
            self.matched = self.matched.wrapping_add(o.matched);
            self.dropped = self.dropped.wrapping_add(o.dropped);
            self.cut = self.cut.wrapping_add(o.cut);
            self.reordered = self.reordered.wrapping_add(o.reordered);
            self.reorder_failed = self.reorder_failed.wrapping_add(o.reorder_failed);
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are #[repr(C)] with only integer fields and no padding (the size
    // assertions above pin the layouts), so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::PortEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::fault::FaultSettings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::fault::FaultCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_indices_are_dense_and_named_uniquely() {
        for (i, a) in Action::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
        }
        let names = Action::ALL.map(Action::name);
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "duplicate action name {n}");
        }
    }

    #[test]
    fn counters_add_sums_every_field() {
        let mut a = Counters {
            packets: [1, 2, 3, 4],
            bytes: [10, 20, 30, 40],
        };
        a.add(&Counters {
            packets: [1, 1, 1, 1],
            bytes: [5, 5, 5, u64::MAX],
        });
        assert_eq!(a.packets, [2, 3, 4, 5]);
        assert_eq!(a.bytes, [15, 25, 35, 39]);
    }

    #[test]
    fn fault_counters_add_sums_every_field() {
        let one = fault::FaultCounters {
            seen: 1,
            matched: 2,
            dropped: 3,
            cut: 4,
            reordered: 5,
            reorder_failed: 6,
        };
        let mut sum = one;
        sum.add(&one);
        assert_eq!(
            sum,
            fault::FaultCounters {
                seen: 2,
                matched: 4,
                dropped: 6,
                cut: 8,
                reordered: 10,
                reorder_failed: 12,
            }
        );
    }
}
