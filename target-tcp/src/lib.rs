//! Sans-I/O user-space TCP/IP for the AF_XDP path, driven by `poll(now, device)`: it never
//! reads a clock or a socket. Filled by the XDP data-path issue; empty until then.
#![no_std]
#![forbid(unsafe_code)]
