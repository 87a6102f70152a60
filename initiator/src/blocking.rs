//! Blocking clients: the host engines over a `TcpStream`, one command at a time.

pub mod iscsi;
pub mod nvme;
