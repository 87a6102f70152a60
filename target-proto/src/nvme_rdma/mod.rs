//! The NVMe over Fabrics RDMA transport binding (NVM Express RDMA Transport Specification
//! 1.0, section 3), sans-I/O: accepting a queue's RDMA CM connect request (`cm`) and the
//! capsule-level engine of one queue pair (`queue`) on the controller side, and the host
//! end of a queue pair (`host`) that `xdp-target perf` drives a controller with. Verbs,
//! the RDMA CM and memory registration are the transports', in target-user and
//! target-initiator; the NVMe controller is the same
//! [`QueueController`](crate::nvme::controller::QueueController) NVMe/TCP drives.

pub mod cm;
pub mod host;
pub mod queue;

#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod queue_tests;
