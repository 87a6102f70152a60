//! The NVMe over Fabrics RDMA transport binding (NVM Express RDMA Transport Specification
//! 1.0, section 3), sans-I/O: accepting a queue's RDMA CM connect request (`cm`) and the
//! capsule-level engine of one queue pair (`queue`). Verbs, the RDMA CM and memory
//! registration are the transport's, in target-user; the NVMe controller is the same
//! [`QueueController`](crate::nvme::controller::QueueController) NVMe/TCP drives.

pub mod cm;
pub mod queue;

#[cfg(test)]
mod queue_tests;
