//! End-to-end test harness for xdp-target: network namespaces joined by veth pairs, the
//! `xdp-target` binary run inside one of them, and an AF_XDP receiver for checking what the
//! XDP program steers. The tests themselves live in `tests/`.

pub mod faults;
pub mod frames;
pub mod iscsi;
pub mod metrics;
pub mod netns;
pub mod nvme;
pub mod target;
pub mod xsk;
