//! The NVMe-oF controller at capsule level: subsystems, namespaces and controllers
//! (`subsystem`). The admin and I/O command handling follows.

pub mod subsystem;
