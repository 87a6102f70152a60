//! NVMe/TCP, NVMe/RDMA and iSCSI initiators, built on the sans-I/O host engines of
//! `target-proto`:
//!
//! - [`perf`]: `xdp-target perf` (also the stand-alone `xdp-target-perf`), a benchmark and
//!   data checker in the manner of spdk_nvme_perf: one thread and one polled socket (or
//!   RDMA queue pair, through `target-rdma`) per queue, `--verify`, JSON.
//! - [`blocking`]: one-command-at-a-time clients, which the end-to-end tests drive the
//!   target with.
//!
//! This crate needs neither the eBPF toolchain nor root: it builds and runs on any Linux
//! machine that should measure or check a target. NVMe/RDMA loads libibverbs and librdmacm
//! when it is asked for, so the other protocols run where rdma-core is missing.

pub mod blocking;
pub mod perf;
