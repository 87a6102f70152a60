//! How commands reach the protocol engines and answers leave them: kernel sockets
//! ([`socket`], the baseline, on every machine), the XDP path ([`xdp`]: the steering
//! program, AF_XDP sockets and the user-space TCP/IP stack), and RDMA verbs for NVMe
//! ([`rdma`]: InfiniBand, RoCE, iWARP, soft-RoCE). All drive the same engines and block I/O
//! through `crate::reactor`.

pub mod listeners;
pub mod rdma;
pub mod socket;
pub mod xdp;
