//! How bytes reach the protocol engines and leave them: kernel sockets ([`socket`], the
//! baseline, on every machine) and the XDP path ([`xdp`]: the steering program, AF_XDP
//! sockets and the user-space TCP/IP stack). Both drive the same engines and block I/O
//! through `crate::reactor`.

pub mod socket;
pub mod xdp;
