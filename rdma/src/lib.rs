//! RDMA verbs and RDMA CM for the NVMe/RDMA target and initiator: owned handles over
//! Debian's libibverbs and librdmacm ([`sys`]), loaded at run time so a program that never
//! uses RDMA starts on a machine without rdma-core.
//!
//! Why not a crate from crates.io: `ibverbs` builds its own copy of rdma-core (cmake) and has
//! no RDMA CM, which NVMe/RDMA needs for its connection private data; `rdma-sys` and
//! `sideway` bind at build time (bindgen, libclang, the -dev packages) and link the
//! libraries, so the target would not start where rdma-core is missing. The transport needs
//! about thirty functions and eight structures: they are declared in [`sys`] and checked
//! against the installed headers by a test.
//!
//! The handles here own what they create and free it on drop, except [`CmId`], whose
//! lifetime the RDMA CM ties to its events: its owner calls [`CmId::destroy`].

pub mod sys;

use std::ffi::{CStr, c_int, c_void};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};

pub use sys::{LoadError, ibv_recv_wr, ibv_send_wr, ibv_sge, ibv_wc};

/// The libraries, or why they cannot be loaded.
pub fn lib() -> Result<&'static sys::Lib, LoadError> {
    sys::lib()
}

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn check(rc: c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error(what))
    }
}

/// The names of the RDMA devices (`ibv_devices`); empty when there are none.
pub fn devices() -> Result<Vec<String>, LoadError> {
    let l = lib()?;
    let mut n: c_int = 0;
    // SAFETY: ibv_get_device_list with a valid count pointer; the list is freed below.
    let list = unsafe { (l.ibv_get_device_list)(&mut n) };
    if list.is_null() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for i in 0..usize::try_from(n).unwrap_or(0) {
        // SAFETY: the list holds n device pointers.
        let d = unsafe { *list.add(i) };
        // SAFETY: a device of the list; its name is a NUL-terminated string it owns.
        let name = unsafe { (l.ibv_get_device_name)(d) };
        if !name.is_null() {
            // SAFETY: as above.
            names.push(
                unsafe { CStr::from_ptr(name) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    // SAFETY: the list ibv_get_device_list returned, freed once.
    unsafe { (l.ibv_free_device_list)(list) };
    Ok(names)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(last_error("fcntl O_NONBLOCK"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// RDMA CM

/// An RDMA CM event channel, non-blocking: its descriptor goes into a poll set.
pub struct EventChannel {
    ch: NonNull<sys::rdma_event_channel>,
}

// SAFETY: librdmacm's event channel is read by one thread (its owner's); other threads only
// name it (rdma_migrate_id moves an id's events to it, which librdmacm locks).
unsafe impl Send for EventChannel {}
// SAFETY: as above.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    pub fn new() -> io::Result<Self> {
        let l = lib().map_err(io::Error::other)?;
        // SAFETY: no arguments.
        let ch = unsafe { (l.rdma_create_event_channel)() };
        let ch = NonNull::new(ch).ok_or_else(|| last_error("rdma_create_event_channel"))?;
        let me = Self { ch };
        set_nonblocking(me.fd())?;
        Ok(me)
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: a live channel; its first member is the descriptor.
        unsafe { sys::read_at(self.ch.as_ptr().cast(), sys::offset::EVENT_CHANNEL_FD) }
    }

    pub fn as_ptr(&self) -> *mut sys::rdma_event_channel {
        self.ch.as_ptr()
    }

    /// The next event, copied out and acknowledged; `None` when there is none now.
    pub fn next(&self) -> io::Result<Option<CmEvent>> {
        let l = lib().map_err(io::Error::other)?;
        let mut ev: *mut sys::rdma_cm_event = ptr::null_mut();
        // SAFETY: a live channel and a valid out pointer.
        if unsafe { (l.rdma_get_cm_event)(self.ch.as_ptr(), &mut ev) } != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(io::Error::new(e.kind(), format!("rdma_get_cm_event: {e}"))),
            };
        }
        // SAFETY: rdma_get_cm_event filled in a live event, ours until acknowledged.
        let raw = unsafe { *ev };
        let private_data = if raw.conn.private_data.is_null() {
            Vec::new()
        } else {
            // SAFETY: the event's private data, private_data_len bytes, live until the ack.
            unsafe {
                std::slice::from_raw_parts(
                    raw.conn.private_data.cast::<u8>(),
                    usize::from(raw.conn.private_data_len),
                )
            }
            .to_vec()
        };
        // SAFETY: acknowledged once; nothing of it is used after.
        unsafe { (l.rdma_ack_cm_event)(ev) };
        Ok(Some(CmEvent {
            kind: raw.event,
            id: NonNull::new(raw.id).map(CmId),
            listen_id: NonNull::new(raw.listen_id).map(CmId),
            status: raw.status,
            responder_resources: raw.conn.responder_resources,
            initiator_depth: raw.conn.initiator_depth,
            private_data,
        }))
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        if let Ok(l) = lib() {
            // SAFETY: a live channel whose ids are destroyed (their owners go first).
            unsafe { (l.rdma_destroy_event_channel)(self.ch.as_ptr()) };
        }
    }
}

/// An RDMA CM event, already acknowledged: what it said, copied.
#[derive(Debug)]
pub struct CmEvent {
    /// `RDMA_CM_EVENT_*` (see [`sys::event_name`]).
    pub kind: u32,
    pub id: Option<CmId>,
    pub listen_id: Option<CmId>,
    pub status: i32,
    pub responder_resources: u8,
    pub initiator_depth: u8,
    /// The connect request's, accept's or reject's private data (with the transport's
    /// padding: InfiniBand CM rounds it up).
    pub private_data: Vec<u8>,
}

impl CmEvent {
    pub fn name(&self) -> &'static str {
        sys::event_name(self.kind)
    }
}

/// An RDMA CM identifier (`struct rdma_cm_id *`), not owned: whoever created it (or
/// accepted the connect request that did) calls [`Self::destroy`] once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmId(NonNull<sys::rdma_cm_id>);

// SAFETY: an id is used by one reactor at a time; it is handed between threads only with
// its events migrated (rdma_migrate_id) to the new owner's channel.
unsafe impl Send for CmId {}

/// Connection parameters of an accept or a connect.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnParam {
    pub responder_resources: u8,
    pub initiator_depth: u8,
    pub retry_count: u8,
    pub rnr_retry_count: u8,
}

impl CmId {
    /// A new TCP-port-space id whose events come on `ch`.
    pub fn new(ch: &EventChannel) -> io::Result<Self> {
        let l = lib().map_err(io::Error::other)?;
        let mut id = ptr::null_mut();
        // SAFETY: a live channel and a valid out pointer.
        let rc =
            unsafe { (l.rdma_create_id)(ch.as_ptr(), &mut id, ptr::null_mut(), sys::RDMA_PS_TCP) };
        check(rc, "rdma_create_id")?;
        NonNull::new(id)
            .map(Self)
            .ok_or_else(|| io::Error::other("rdma_create_id returned no id"))
    }

    pub fn as_ptr(self) -> *mut sys::rdma_cm_id {
        self.0.as_ptr()
    }

    /// The device the id is bound to (after bind, resolve or a connect request).
    pub fn verbs(self) -> Option<NonNull<sys::ibv_context>> {
        // SAFETY: a live id.
        NonNull::new(unsafe { sys::read_at(self.0.as_ptr().cast(), sys::offset::ID_VERBS) })
    }

    /// The queue pair `create_qp` made.
    pub fn qp(self) -> Option<NonNull<sys::ibv_qp>> {
        // SAFETY: a live id.
        NonNull::new(unsafe { sys::read_at(self.0.as_ptr().cast(), sys::offset::ID_QP) })
    }

    /// The user context (`id->context`): the owner's tag for the id's events.
    pub fn context(self) -> u64 {
        // SAFETY: a live id; the context is a pointer-sized field the user owns.
        unsafe { sys::read_at::<usize>(self.0.as_ptr().cast(), sys::offset::ID_CONTEXT) as u64 }
    }

    pub fn set_context(self, tag: u64) {
        let p = self.0.as_ptr().cast::<u8>();
        // SAFETY: a live id; the context field is the user's to set.
        unsafe {
            p.add(sys::offset::ID_CONTEXT)
                .cast::<usize>()
                .write_unaligned(tag as usize);
        }
    }

    pub fn local_addr(self) -> Option<SocketAddr> {
        // SAFETY: a live id; the source address is a sockaddr_storage-sized union.
        unsafe { from_sockaddr(self.0.as_ptr().cast::<u8>().add(sys::offset::ID_SRC_ADDR)) }
    }

    pub fn peer_addr(self) -> Option<SocketAddr> {
        // SAFETY: as above, the destination address.
        unsafe { from_sockaddr(self.0.as_ptr().cast::<u8>().add(sys::offset::ID_DST_ADDR)) }
    }

    pub fn bind(self, addr: SocketAddr) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        let sa = to_sockaddr(addr);
        // SAFETY: a live id and a sockaddr of the right family and size.
        check(
            unsafe { (l.rdma_bind_addr)(self.0.as_ptr(), ptr::from_ref(&sa).cast()) },
            "rdma_bind_addr",
        )
    }

    pub fn listen(self, backlog: i32) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        // SAFETY: a live, bound id.
        check(
            unsafe { (l.rdma_listen)(self.0.as_ptr(), backlog) },
            "rdma_listen",
        )
    }

    /// Makes a reliable-connection queue pair on `pd` for this id (`id->qp`).
    pub fn create_qp(
        self,
        pd: &Pd,
        send_cq: &Cq,
        recv_cq: &Cq,
        srq: Option<&Srq>,
        cap: sys::ibv_qp_cap,
    ) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        let mut attr = sys::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: send_cq.as_ptr(),
            recv_cq: recv_cq.as_ptr(),
            srq: srq.map_or(ptr::null_mut(), |s| s.0.as_ptr()),
            cap,
            qp_type: sys::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: a live id, PD and CQs of the id's device; attr is filled in.
        check(
            unsafe { (l.rdma_create_qp)(self.0.as_ptr(), pd.as_ptr(), &mut attr) },
            "rdma_create_qp",
        )
    }

    pub fn accept(self, p: ConnParam, private: &[u8]) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        let mut param = conn_param(p, private)?;
        // SAFETY: a live id with a pending connect request; param and its private data
        // live across the call.
        check(
            unsafe { (l.rdma_accept)(self.0.as_ptr(), &mut param) },
            "rdma_accept",
        )
    }

    pub fn connect(self, p: ConnParam, private: &[u8]) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        let mut param = conn_param(p, private)?;
        // SAFETY: a live id with a resolved route and a QP; param lives across the call.
        check(
            unsafe { (l.rdma_connect)(self.0.as_ptr(), &mut param) },
            "rdma_connect",
        )
    }

    pub fn reject(self, private: &[u8]) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        let len = u8::try_from(private.len())
            .map_err(|_| io::Error::other("reject private data over 255 bytes"))?;
        // SAFETY: a live id with a pending connect request; the data lives across the call.
        check(
            unsafe { (l.rdma_reject)(self.0.as_ptr(), private.as_ptr().cast(), len) },
            "rdma_reject",
        )
    }

    /// Disconnects; the queue pair goes to the error state and its work requests flush.
    pub fn disconnect(self) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        // SAFETY: a live id.
        check(
            unsafe { (l.rdma_disconnect)(self.0.as_ptr()) },
            "rdma_disconnect",
        )
    }

    /// Moves the id's future events to `ch`.
    pub fn migrate(self, ch: &EventChannel) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        // SAFETY: a live id and channel; the id's events so far are acknowledged.
        check(
            unsafe { (l.rdma_migrate_id)(self.0.as_ptr(), ch.as_ptr()) },
            "rdma_migrate_id",
        )
    }

    pub fn resolve_addr(self, dst: SocketAddr, timeout_ms: i32) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        let sa = to_sockaddr(dst);
        // SAFETY: a live id and a sockaddr of the right family and size.
        check(
            unsafe {
                (l.rdma_resolve_addr)(
                    self.0.as_ptr(),
                    ptr::null(),
                    ptr::from_ref(&sa).cast(),
                    timeout_ms,
                )
            },
            "rdma_resolve_addr",
        )
    }

    pub fn resolve_route(self, timeout_ms: i32) -> io::Result<()> {
        let l = lib().map_err(io::Error::other)?;
        // SAFETY: a live id with a resolved address.
        check(
            unsafe { (l.rdma_resolve_route)(self.0.as_ptr(), timeout_ms) },
            "rdma_resolve_route",
        )
    }

    /// Destroys the queue pair (if any) and the id. After this the id must not be used;
    /// the queue pair's buffers may be freed (no more DMA reaches them).
    ///
    /// # Safety
    /// Called once per id, with every event of it acknowledged (the channels here do so).
    pub unsafe fn destroy(self) {
        let Ok(l) = lib() else { return };
        if self.qp().is_some() {
            // SAFETY: the id's own QP.
            unsafe { (l.rdma_destroy_qp)(self.0.as_ptr()) };
        }
        // SAFETY: the caller's promise.
        unsafe { (l.rdma_destroy_id)(self.0.as_ptr()) };
    }
}

fn conn_param(p: ConnParam, private: &[u8]) -> io::Result<sys::rdma_conn_param> {
    Ok(sys::rdma_conn_param {
        private_data: private.as_ptr().cast(),
        private_data_len: u8::try_from(private.len())
            .map_err(|_| io::Error::other("private data over 255 bytes"))?,
        responder_resources: p.responder_resources,
        initiator_depth: p.initiator_depth,
        flow_control: 1,
        retry_count: p.retry_count,
        rnr_retry_count: p.rnr_retry_count,
        srq: 0,
        qp_num: 0,
    })
}

fn to_sockaddr(a: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe {
                ptr::from_mut(&mut ss)
                    .cast::<libc::sockaddr_in>()
                    .write(sin);
            };
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe {
                ptr::from_mut(&mut ss)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6);
            };
        }
    }
    ss
}

/// # Safety
/// `p` points to a sockaddr_storage-sized buffer.
unsafe fn from_sockaddr(p: *const u8) -> Option<SocketAddr> {
    // SAFETY: the caller's promise; the family is the first member of every sockaddr.
    let family = c_int::from(unsafe { p.cast::<libc::sa_family_t>().read_unaligned() });
    match family {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { p.cast::<libc::sockaddr_in>().read_unaligned() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { p.cast::<libc::sockaddr_in6>().read_unaligned() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Verbs

/// What a device can do, of what the transport sizes its queues by.
#[derive(Clone, Copy, Debug)]
pub struct DeviceLimits {
    pub max_qp_wr: u32,
    pub max_sge: u32,
    pub max_cqe: u32,
    pub max_qp_rd_atom: u32,
    pub max_qp_init_rd_atom: u32,
    pub max_srq_wr: u32,
}

/// `ibv_query_device` of a device context.
pub fn query_device(ctx: NonNull<sys::ibv_context>) -> io::Result<DeviceLimits> {
    use sys::offset::*;
    let l = lib().map_err(io::Error::other)?;
    let mut attr = [0u8; DEVICE_ATTR_LEN];
    // SAFETY: a live context and a buffer of the structure's size.
    let rc = unsafe { (l.ibv_query_device)(ctx.as_ptr(), attr.as_mut_ptr().cast()) };
    if rc != 0 {
        return Err(io::Error::other(format!(
            "ibv_query_device: {}",
            io::Error::from_raw_os_error(rc)
        )));
    }
    let at = |o: usize| {
        u32::try_from(i32::from_ne_bytes(
            attr[o..o + 4].try_into().expect("4 bytes"),
        ))
        .unwrap_or(0)
    };
    Ok(DeviceLimits {
        max_qp_wr: at(DEVICE_ATTR_MAX_QP_WR),
        max_sge: at(DEVICE_ATTR_MAX_SGE),
        max_cqe: at(DEVICE_ATTR_MAX_CQE),
        max_qp_rd_atom: at(DEVICE_ATTR_MAX_QP_RD_ATOM),
        max_qp_init_rd_atom: at(DEVICE_ATTR_MAX_QP_INIT_RD_ATOM),
        max_srq_wr: at(DEVICE_ATTR_MAX_SRQ_WR),
    })
}

/// A protection domain.
pub struct Pd(NonNull<sys::ibv_pd>);

// SAFETY: verbs objects may be used from any thread (libibverbs is thread-safe).
unsafe impl Send for Pd {}

impl Pd {
    pub fn new(ctx: NonNull<sys::ibv_context>) -> io::Result<Self> {
        let l = lib().map_err(io::Error::other)?;
        // SAFETY: a live context.
        let pd = unsafe { (l.ibv_alloc_pd)(ctx.as_ptr()) };
        NonNull::new(pd)
            .map(Self)
            .ok_or_else(|| last_error("ibv_alloc_pd"))
    }

    pub fn as_ptr(&self) -> *mut sys::ibv_pd {
        self.0.as_ptr()
    }

    /// Registers `len` bytes at `addr` for local writes and, with `remote`, remote reads
    /// and writes.
    ///
    /// # Safety
    /// The memory stays allocated until the region is dropped.
    pub unsafe fn register(&self, addr: *mut u8, len: usize, remote: bool) -> io::Result<Mr> {
        let l = lib().map_err(io::Error::other)?;
        let mut access = sys::IBV_ACCESS_LOCAL_WRITE;
        if remote {
            access |= sys::IBV_ACCESS_REMOTE_READ | sys::IBV_ACCESS_REMOTE_WRITE;
        }
        // SAFETY: a live PD; the caller keeps the memory.
        let mr = unsafe { (l.ibv_reg_mr)(self.0.as_ptr(), addr.cast(), len.max(1), access) };
        let mr = NonNull::new(mr).ok_or_else(|| last_error("ibv_reg_mr"))?;
        Ok(Mr {
            mr,
            addr: addr as u64,
            len,
        })
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        if let Ok(l) = lib() {
            // SAFETY: a live PD whose regions and QPs are gone (their owners drop first).
            unsafe { (l.ibv_dealloc_pd)(self.0.as_ptr()) };
        }
    }
}

/// A registered memory region.
pub struct Mr {
    mr: NonNull<c_void>,
    pub addr: u64,
    pub len: usize,
}

// SAFETY: as Pd.
unsafe impl Send for Mr {}

impl Mr {
    pub fn lkey(&self) -> u32 {
        // SAFETY: a live region.
        unsafe { sys::read_at(self.mr.as_ptr(), sys::offset::MR_LKEY) }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: a live region.
        unsafe { sys::read_at(self.mr.as_ptr(), sys::offset::MR_RKEY) }
    }

    /// Whether `[addr, addr + len)` lies inside the region.
    pub fn covers(&self, addr: u64, len: usize) -> bool {
        addr >= self.addr && addr + len as u64 <= self.addr + self.len as u64
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        if let Ok(l) = lib() {
            // SAFETY: a live region, deregistered once.
            unsafe { (l.ibv_dereg_mr)(self.mr.as_ptr()) };
        }
    }
}

/// A completion channel, non-blocking: its descriptor goes into a poll set.
pub struct CompChannel(NonNull<sys::ibv_comp_channel>);

// SAFETY: as Pd.
unsafe impl Send for CompChannel {}

impl CompChannel {
    pub fn new(ctx: NonNull<sys::ibv_context>) -> io::Result<Self> {
        let l = lib().map_err(io::Error::other)?;
        // SAFETY: a live context.
        let ch = unsafe { (l.ibv_create_comp_channel)(ctx.as_ptr()) };
        let me = Self(NonNull::new(ch).ok_or_else(|| last_error("ibv_create_comp_channel"))?);
        set_nonblocking(me.fd())?;
        Ok(me)
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: a live channel.
        unsafe { sys::read_at(self.0.as_ptr().cast(), sys::offset::COMP_CHANNEL_FD) }
    }

    /// Takes the pending completion events and acknowledges them; returns how many.
    pub fn drain(&self) -> usize {
        let Ok(l) = lib() else { return 0 };
        let mut n = 0;
        loop {
            let mut cq = ptr::null_mut();
            let mut ctx = ptr::null_mut();
            // SAFETY: a live, non-blocking channel and valid out pointers.
            if unsafe { (l.ibv_get_cq_event)(self.0.as_ptr(), &mut cq, &mut ctx) } != 0 {
                return n;
            }
            // SAFETY: the CQ the event named, acknowledged once per event.
            unsafe { (l.ibv_ack_cq_events)(cq, 1) };
            n += 1;
        }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        if let Ok(l) = lib() {
            // SAFETY: a live channel whose CQs are gone (their owners drop first).
            unsafe { (l.ibv_destroy_comp_channel)(self.0.as_ptr()) };
        }
    }
}

/// A completion queue.
pub struct Cq {
    cq: NonNull<sys::ibv_cq>,
    ctx: NonNull<sys::ibv_context>,
}

// SAFETY: as Pd.
unsafe impl Send for Cq {}

impl Cq {
    /// A queue of at least `entries` completions, signalling `channel` when armed.
    pub fn new(
        ctx: NonNull<sys::ibv_context>,
        entries: u32,
        channel: Option<&CompChannel>,
    ) -> io::Result<Self> {
        let l = lib().map_err(io::Error::other)?;
        let ch = channel.map_or(ptr::null_mut(), |c| c.0.as_ptr());
        let n = c_int::try_from(entries).unwrap_or(c_int::MAX);
        // SAFETY: a live context and (optional) channel of it.
        let cq = unsafe { (l.ibv_create_cq)(ctx.as_ptr(), n, ptr::null_mut(), ch, 0) };
        let cq = NonNull::new(cq).ok_or_else(|| last_error("ibv_create_cq"))?;
        Ok(Self { cq, ctx })
    }

    pub fn as_ptr(&self) -> *mut sys::ibv_cq {
        self.cq.as_ptr()
    }

    /// Completions into `wc`; returns how many.
    pub fn poll(&self, wc: &mut [ibv_wc]) -> io::Result<usize> {
        // SAFETY: a live context; OPS_POLL_CQ holds ibv_poll_cq's provider function.
        let f: sys::PollCqFn = unsafe { sys::ops(self.ctx.as_ptr(), sys::offset::OPS_POLL_CQ) };
        let n = c_int::try_from(wc.len()).unwrap_or(c_int::MAX);
        // SAFETY: a live CQ and room for n completions.
        let got = unsafe { f(self.cq.as_ptr(), n, wc.as_mut_ptr()) };
        usize::try_from(got).map_err(|_| io::Error::other("ibv_poll_cq failed"))
    }

    /// Asks for a completion event on the channel at the next completion.
    pub fn arm(&self) -> io::Result<()> {
        // SAFETY: as in poll, the req_notify_cq entry.
        let f: sys::ReqNotifyCqFn =
            unsafe { sys::ops(self.ctx.as_ptr(), sys::offset::OPS_REQ_NOTIFY_CQ) };
        // SAFETY: a live CQ.
        let rc = unsafe { f(self.cq.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "ibv_req_notify_cq: {}",
                io::Error::from_raw_os_error(rc)
            )))
        }
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        if let Ok(l) = lib() {
            // SAFETY: a live CQ whose QPs are gone (their owners drop first).
            unsafe { (l.ibv_destroy_cq)(self.cq.as_ptr()) };
        }
    }
}

/// A shared receive queue: receive buffers posted once for every queue pair of a device.
pub struct Srq(NonNull<sys::ibv_srq>);

// SAFETY: as Pd.
unsafe impl Send for Srq {}

impl Srq {
    /// A queue of `max_wr` single-buffer receives on `pd`.
    pub fn new(pd: &Pd, max_wr: u32) -> io::Result<Self> {
        let l = lib().map_err(io::Error::other)?;
        let mut attr = sys::ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: sys::ibv_srq_attr {
                max_wr,
                max_sge: 1,
                srq_limit: 0,
            },
        };
        // SAFETY: a live PD; attr is filled in.
        let srq = unsafe { (l.ibv_create_srq)(pd.as_ptr(), &mut attr) };
        NonNull::new(srq)
            .map(Self)
            .ok_or_else(|| last_error("ibv_create_srq"))
    }

    /// Posts a chain of receive work requests.
    ///
    /// # Safety
    /// The requests' buffers are registered and stay until their completions or the
    /// queue's destruction.
    pub unsafe fn post(&self, wr: &mut ibv_recv_wr) -> io::Result<()> {
        // SAFETY: the caller's promise; OPS_POST_SRQ_RECV holds the provider's function.
        unsafe {
            post::<sys::PostSrqRecvFn, _, _>(
                self.0,
                sys::offset::OPS_POST_SRQ_RECV,
                wr,
                "ibv_post_srq_recv",
            )
        }
    }
}

impl Drop for Srq {
    fn drop(&mut self) {
        if let Ok(l) = lib() {
            // SAFETY: a live SRQ whose QPs are gone (their owners drop first).
            unsafe { (l.ibv_destroy_srq)(self.0.as_ptr()) };
        }
    }
}

/// Posts a chain of send work requests (`wr.next` links them) on `qp`.
///
/// # Safety
/// `qp` is live; the requests' scatter/gather lists name registered memory that stays
/// until their completions (or the QP's destruction).
pub unsafe fn post_send(qp: NonNull<sys::ibv_qp>, wr: &mut ibv_send_wr) -> io::Result<()> {
    // SAFETY: the caller's promise; OPS_POST_SEND holds the provider's post_send.
    unsafe { post::<sys::PostSendFn, _, _>(qp, sys::offset::OPS_POST_SEND, wr, "ibv_post_send") }
}

/// Posts a chain of receive work requests on `qp`.
///
/// # Safety
/// As [`post_send`].
pub unsafe fn post_recv(qp: NonNull<sys::ibv_qp>, wr: &mut ibv_recv_wr) -> io::Result<()> {
    // SAFETY: the caller's promise; OPS_POST_RECV holds the provider's post_recv.
    unsafe { post::<sys::PostRecvFn, _, _>(qp, sys::offset::OPS_POST_RECV, wr, "ibv_post_recv") }
}

/// Calls the post function at `op` of the context of `h` (a QP or an SRQ), which the
/// inline `ibv_post_*` of verbs.h would call.
///
/// # Safety
/// As [`post_send`]; `F` is the type of the function at `op`, taking `W` work requests on
/// an `H`, whose first member is its context.
unsafe fn post<F, W, H>(h: NonNull<H>, op: usize, wr: &mut W, what: &str) -> io::Result<()>
where
    F: Copy + PostFn<W, H>,
{
    // SAFETY: a live QP's or SRQ's first member is its context.
    let ctx: *const sys::ibv_context =
        unsafe { sys::read_at(h.as_ptr().cast(), sys::offset::QP_CONTEXT) };
    // SAFETY: a live context; the caller names the entry and its type.
    let f: F = unsafe { sys::ops(ctx, op) };
    // SAFETY: the caller's promise.
    let rc = unsafe { f.call(h.as_ptr(), wr) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}",
            io::Error::from_raw_os_error(rc)
        )))
    }
}

/// The provider's post functions, for [`post`].
trait PostFn<W, H> {
    /// # Safety
    /// As [`post_send`].
    unsafe fn call(self, h: *mut H, wr: &mut W) -> c_int;
}

impl PostFn<ibv_recv_wr, sys::ibv_srq> for sys::PostSrqRecvFn {
    unsafe fn call(self, srq: *mut sys::ibv_srq, wr: &mut ibv_recv_wr) -> c_int {
        let mut bad = ptr::null_mut();
        // SAFETY: the caller's promise.
        unsafe { self(srq, wr, &mut bad) }
    }
}

impl PostFn<ibv_send_wr, sys::ibv_qp> for sys::PostSendFn {
    unsafe fn call(self, qp: *mut sys::ibv_qp, wr: &mut ibv_send_wr) -> c_int {
        let mut bad = ptr::null_mut();
        // SAFETY: the caller's promise.
        unsafe { self(qp, wr, &mut bad) }
    }
}

impl PostFn<ibv_recv_wr, sys::ibv_qp> for sys::PostRecvFn {
    unsafe fn call(self, qp: *mut sys::ibv_qp, wr: &mut ibv_recv_wr) -> c_int {
        let mut bad = ptr::null_mut();
        // SAFETY: the caller's promise.
        unsafe { self(qp, wr, &mut bad) }
    }
}

/// What a work completion's status means, as libibverbs words it (`ibv_wc_status_str`:
/// "remote access error", "transport retry counter exceeded", ...).
pub fn wc_status_str(status: u32) -> String {
    let Ok(l) = lib() else {
        return format!("status {status}");
    };
    // SAFETY: ibv_wc_status_str takes any value ("unknown" for those it does not name) and
    // returns a static NUL-terminated string.
    let s = unsafe { (l.ibv_wc_status_str)(status) };
    if s.is_null() {
        return format!("status {status}");
    }
    // SAFETY: as above.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

/// The number of a queue pair (as completions name it).
pub fn qp_num(qp: NonNull<sys::ibv_qp>) -> u32 {
    // SAFETY: a live QP.
    unsafe { sys::read_at(qp.as_ptr().cast(), sys::offset::QP_NUM) }
}

#[cfg(test)]
mod layout;
