//! The NVMe-oF controller at capsule level, independent of the transport: subsystems,
//! namespaces and the controller registry (`subsystem`), command execution per queue
//! (`controller`) and the admin commands that return data (`admin`).

pub mod admin;
pub mod controller;
pub mod subsystem;

#[cfg(test)]
pub(crate) mod testing;
