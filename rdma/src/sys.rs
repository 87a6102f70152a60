//! The C side: the structures of `<infiniband/verbs.h>` and `<rdma/rdma_cma.h>` this crate
//! reads or fills, and the functions of libibverbs.so.1 and librdmacm.so.1, loaded with
//! dlopen on first use.
//!
//! Only what the NVMe/RDMA transport uses is declared. Structures the libraries own are
//! opaque and read at fixed offsets; structures we pass in are declared whole. Every
//! offset and size here is checked against Debian's headers by the `layout` test (it
//! compiles a C program with libibverbs-dev and librdmacm-dev).
//!
//! `ibv_post_send`, `ibv_post_recv`, `ibv_poll_cq` and `ibv_req_notify_cq` are inline
//! functions in verbs.h that call through the device context's `ops` table; [`ops`] does
//! the same here. That table is part of libibverbs' ABI (rdma-core keeps it stable:
//! providers fill it and inline callers compiled years ago read it).

#![allow(
    non_camel_case_types,
    reason = "the C names, so the headers and this file can be read side by side"
)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------
// Opaque structures, owned by the libraries.

#[repr(C)]
pub struct ibv_context {
    _private: [u8; 0],
}
#[repr(C)]
pub struct ibv_device {
    _private: [u8; 0],
}
#[repr(C)]
pub struct ibv_pd {
    _private: [u8; 0],
}
#[repr(C)]
pub struct ibv_cq {
    _private: [u8; 0],
}
#[repr(C)]
pub struct ibv_qp {
    _private: [u8; 0],
}
#[repr(C)]
pub struct ibv_srq {
    _private: [u8; 0],
}
#[repr(C)]
pub struct ibv_comp_channel {
    _private: [u8; 0],
}
#[repr(C)]
pub struct rdma_cm_id {
    _private: [u8; 0],
}
#[repr(C)]
pub struct rdma_event_channel {
    _private: [u8; 0],
}

/// Offsets into the opaque structures (bytes), checked by the layout test.
pub mod offset {
    /// `struct ibv_context`: the `ops` table.
    pub const CONTEXT_OPS: usize = 8;
    /// `struct ibv_context_ops`: the function pointers the inline verbs call.
    pub const OPS_POLL_CQ: usize = 88;
    pub const OPS_REQ_NOTIFY_CQ: usize = 96;
    pub const OPS_POST_SRQ_RECV: usize = 160;
    pub const OPS_POST_SEND: usize = 200;
    pub const OPS_POST_RECV: usize = 208;
    /// `struct ibv_qp`, `ibv_cq`, `ibv_srq`: the first member is the context.
    pub const QP_CONTEXT: usize = 0;
    pub const QP_NUM: usize = 52;
    /// `struct ibv_mr`.
    pub const MR_LKEY: usize = 36;
    pub const MR_RKEY: usize = 40;
    /// `struct ibv_comp_channel`.
    pub const COMP_CHANNEL_FD: usize = 8;
    /// `struct rdma_event_channel`.
    pub const EVENT_CHANNEL_FD: usize = 0;
    /// `struct rdma_cm_id`.
    pub const ID_VERBS: usize = 0;
    pub const ID_CONTEXT: usize = 16;
    pub const ID_QP: usize = 24;
    pub const ID_SRC_ADDR: usize = 32;
    pub const ID_DST_ADDR: usize = 160;
    /// `struct ibv_device_attr` (232 bytes).
    pub const DEVICE_ATTR_LEN: usize = 232;
    pub const DEVICE_ATTR_MAX_QP_WR: usize = 112;
    pub const DEVICE_ATTR_MAX_SGE: usize = 120;
    pub const DEVICE_ATTR_MAX_CQE: usize = 132;
    pub const DEVICE_ATTR_MAX_QP_RD_ATOM: usize = 144;
    pub const DEVICE_ATTR_MAX_QP_INIT_RD_ATOM: usize = 156;
    pub const DEVICE_ATTR_MAX_SRQ_WR: usize = 216;
}

/// Reads a `T` at `offset` bytes into `p`.
///
/// # Safety
/// `p` points to a live structure that holds a `T` at `offset`.
pub unsafe fn read_at<T: Copy>(p: *const c_void, offset: usize) -> T {
    // SAFETY: the caller's promise; the structures are C-aligned, but read unaligned anyway.
    unsafe { p.cast::<u8>().add(offset).cast::<T>().read_unaligned() }
}

// ---------------------------------------------------------------------------------------
// Structures we fill in.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ibv_recv_wr {
    pub wr_id: u64,
    pub next: *mut ibv_recv_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
}

/// `struct ibv_send_wr` with the `rdma` member of its `wr` union; the other unions are
/// padding (never read for the opcodes used here).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ibv_send_wr {
    pub wr_id: u64,
    pub next: *mut ibv_send_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
    pub opcode: u32,
    pub send_flags: u32,
    /// `imm_data` or `invalidate_rkey`.
    pub invalidate_rkey: u32,
    pub remote_addr: u64,
    pub rkey: u32,
    pub _pad: [u32; 19],
}

impl Default for ibv_send_wr {
    fn default() -> Self {
        Self {
            wr_id: 0,
            next: std::ptr::null_mut(),
            sg_list: std::ptr::null_mut(),
            num_sge: 0,
            opcode: 0,
            send_flags: 0,
            invalidate_rkey: 0,
            remote_addr: 0,
            rkey: 0,
            _pad: [0; 19],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_wc {
    pub wr_id: u64,
    pub status: u32,
    pub opcode: u32,
    pub vendor_err: u32,
    pub byte_len: u32,
    /// `imm_data` or `invalidated_rkey`.
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: u32,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_qp_cap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ibv_qp_init_attr {
    pub qp_context: *mut c_void,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub cap: ibv_qp_cap,
    pub qp_type: u32,
    pub sq_sig_all: c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ibv_srq_attr {
    pub max_wr: u32,
    pub max_sge: u32,
    pub srq_limit: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ibv_srq_init_attr {
    pub srq_context: *mut c_void,
    pub attr: ibv_srq_attr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rdma_conn_param {
    pub private_data: *const c_void,
    pub private_data_len: u8,
    pub responder_resources: u8,
    pub initiator_depth: u8,
    pub flow_control: u8,
    pub retry_count: u8,
    pub rnr_retry_count: u8,
    pub srq: u8,
    pub qp_num: u32,
}

impl Default for rdma_conn_param {
    fn default() -> Self {
        Self {
            private_data: std::ptr::null(),
            private_data_len: 0,
            responder_resources: 0,
            initiator_depth: 0,
            flow_control: 0,
            retry_count: 0,
            rnr_retry_count: 0,
            srq: 0,
            qp_num: 0,
        }
    }
}

/// `struct rdma_cm_event`; its `param` union read as the connection parameters (the UD
/// member, larger, is padding).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rdma_cm_event {
    pub id: *mut rdma_cm_id,
    pub listen_id: *mut rdma_cm_id,
    pub event: u32,
    pub status: c_int,
    pub conn: rdma_conn_param,
    pub _ud: [u64; 4],
}

// Constants (enum values of the headers).
pub const IBV_WR_RDMA_WRITE: u32 = 0;
pub const IBV_WR_SEND: u32 = 2;
pub const IBV_WR_RDMA_READ: u32 = 4;
pub const IBV_WR_SEND_WITH_INV: u32 = 9;
pub const IBV_SEND_SIGNALED: u32 = 2;
pub const IBV_SEND_INLINE: u32 = 8;
pub const IBV_WC_SUCCESS: u32 = 0;
pub const IBV_WC_WR_FLUSH_ERR: u32 = 5;
pub const IBV_WC_SEND: u32 = 0;
pub const IBV_WC_RDMA_WRITE: u32 = 1;
pub const IBV_WC_RDMA_READ: u32 = 2;
pub const IBV_WC_RECV: u32 = 128;
pub const IBV_WC_WITH_INV: u32 = 8;
pub const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
pub const IBV_ACCESS_REMOTE_WRITE: c_int = 2;
pub const IBV_ACCESS_REMOTE_READ: c_int = 4;
pub const IBV_QPT_RC: u32 = 2;
pub const RDMA_PS_TCP: u32 = 0x0106;

pub const RDMA_CM_EVENT_ADDR_RESOLVED: u32 = 0;
pub const RDMA_CM_EVENT_ADDR_ERROR: u32 = 1;
pub const RDMA_CM_EVENT_ROUTE_RESOLVED: u32 = 2;
pub const RDMA_CM_EVENT_ROUTE_ERROR: u32 = 3;
pub const RDMA_CM_EVENT_CONNECT_REQUEST: u32 = 4;
pub const RDMA_CM_EVENT_CONNECT_RESPONSE: u32 = 5;
pub const RDMA_CM_EVENT_CONNECT_ERROR: u32 = 6;
pub const RDMA_CM_EVENT_UNREACHABLE: u32 = 7;
pub const RDMA_CM_EVENT_REJECTED: u32 = 8;
pub const RDMA_CM_EVENT_ESTABLISHED: u32 = 9;
pub const RDMA_CM_EVENT_DISCONNECTED: u32 = 10;
pub const RDMA_CM_EVENT_DEVICE_REMOVAL: u32 = 11;
pub const RDMA_CM_EVENT_ADDR_CHANGE: u32 = 14;
pub const RDMA_CM_EVENT_TIMEWAIT_EXIT: u32 = 15;

/// The name of a CM event, for the logs.
pub fn event_name(e: u32) -> &'static str {
    match e {
        RDMA_CM_EVENT_ADDR_RESOLVED => "ADDR_RESOLVED",
        RDMA_CM_EVENT_ADDR_ERROR => "ADDR_ERROR",
        RDMA_CM_EVENT_ROUTE_RESOLVED => "ROUTE_RESOLVED",
        RDMA_CM_EVENT_ROUTE_ERROR => "ROUTE_ERROR",
        RDMA_CM_EVENT_CONNECT_REQUEST => "CONNECT_REQUEST",
        RDMA_CM_EVENT_CONNECT_RESPONSE => "CONNECT_RESPONSE",
        RDMA_CM_EVENT_CONNECT_ERROR => "CONNECT_ERROR",
        RDMA_CM_EVENT_UNREACHABLE => "UNREACHABLE",
        RDMA_CM_EVENT_REJECTED => "REJECTED",
        RDMA_CM_EVENT_ESTABLISHED => "ESTABLISHED",
        RDMA_CM_EVENT_DISCONNECTED => "DISCONNECTED",
        RDMA_CM_EVENT_DEVICE_REMOVAL => "DEVICE_REMOVAL",
        RDMA_CM_EVENT_ADDR_CHANGE => "ADDR_CHANGE",
        RDMA_CM_EVENT_TIMEWAIT_EXIT => "TIMEWAIT_EXIT",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------------------
// The functions, loaded at run time.

/// The functions of libibverbs.so.1 and librdmacm.so.1 this crate calls.
pub struct Lib {
    pub ibv_get_device_list: unsafe extern "C" fn(*mut c_int) -> *mut *mut ibv_device,
    pub ibv_free_device_list: unsafe extern "C" fn(*mut *mut ibv_device),
    pub ibv_get_device_name: unsafe extern "C" fn(*mut ibv_device) -> *const c_char,
    pub ibv_query_device: unsafe extern "C" fn(*mut ibv_context, *mut c_void) -> c_int,
    pub ibv_alloc_pd: unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_pd,
    pub ibv_dealloc_pd: unsafe extern "C" fn(*mut ibv_pd) -> c_int,
    pub ibv_reg_mr: unsafe extern "C" fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut c_void,
    pub ibv_dereg_mr: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub ibv_create_comp_channel: unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_comp_channel,
    pub ibv_destroy_comp_channel: unsafe extern "C" fn(*mut ibv_comp_channel) -> c_int,
    pub ibv_create_cq: unsafe extern "C" fn(
        *mut ibv_context,
        c_int,
        *mut c_void,
        *mut ibv_comp_channel,
        c_int,
    ) -> *mut ibv_cq,
    pub ibv_destroy_cq: unsafe extern "C" fn(*mut ibv_cq) -> c_int,
    pub ibv_get_cq_event:
        unsafe extern "C" fn(*mut ibv_comp_channel, *mut *mut ibv_cq, *mut *mut c_void) -> c_int,
    pub ibv_ack_cq_events: unsafe extern "C" fn(*mut ibv_cq, u32),
    pub ibv_create_srq: unsafe extern "C" fn(*mut ibv_pd, *mut ibv_srq_init_attr) -> *mut ibv_srq,
    pub ibv_destroy_srq: unsafe extern "C" fn(*mut ibv_srq) -> c_int,
    pub ibv_wc_status_str: unsafe extern "C" fn(u32) -> *const c_char,

    pub rdma_create_event_channel: unsafe extern "C" fn() -> *mut rdma_event_channel,
    pub rdma_destroy_event_channel: unsafe extern "C" fn(*mut rdma_event_channel),
    pub rdma_create_id: unsafe extern "C" fn(
        *mut rdma_event_channel,
        *mut *mut rdma_cm_id,
        *mut c_void,
        u32,
    ) -> c_int,
    pub rdma_destroy_id: unsafe extern "C" fn(*mut rdma_cm_id) -> c_int,
    pub rdma_bind_addr: unsafe extern "C" fn(*mut rdma_cm_id, *const libc::sockaddr) -> c_int,
    pub rdma_listen: unsafe extern "C" fn(*mut rdma_cm_id, c_int) -> c_int,
    pub rdma_get_cm_event:
        unsafe extern "C" fn(*mut rdma_event_channel, *mut *mut rdma_cm_event) -> c_int,
    pub rdma_ack_cm_event: unsafe extern "C" fn(*mut rdma_cm_event) -> c_int,
    pub rdma_accept: unsafe extern "C" fn(*mut rdma_cm_id, *mut rdma_conn_param) -> c_int,
    pub rdma_reject: unsafe extern "C" fn(*mut rdma_cm_id, *const c_void, u8) -> c_int,
    pub rdma_disconnect: unsafe extern "C" fn(*mut rdma_cm_id) -> c_int,
    pub rdma_create_qp:
        unsafe extern "C" fn(*mut rdma_cm_id, *mut ibv_pd, *mut ibv_qp_init_attr) -> c_int,
    pub rdma_destroy_qp: unsafe extern "C" fn(*mut rdma_cm_id),
    pub rdma_migrate_id: unsafe extern "C" fn(*mut rdma_cm_id, *mut rdma_event_channel) -> c_int,
    pub rdma_resolve_addr: unsafe extern "C" fn(
        *mut rdma_cm_id,
        *const libc::sockaddr,
        *const libc::sockaddr,
        c_int,
    ) -> c_int,
    pub rdma_resolve_route: unsafe extern "C" fn(*mut rdma_cm_id, c_int) -> c_int,
    pub rdma_connect: unsafe extern "C" fn(*mut rdma_cm_id, *mut rdma_conn_param) -> c_int,
}

/// Why the libraries could not be used.
#[derive(Debug, Clone)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (on Debian: apt install libibverbs1 librdmacm1 ibverbs-providers)",
            self.0
        )
    }
}

impl std::error::Error for LoadError {}

/// The libraries, loaded once; they stay loaded for the life of the process.
pub fn lib() -> Result<&'static Lib, LoadError> {
    static LIB: OnceLock<Result<Lib, LoadError>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn open(name: &CStr) -> Result<*mut c_void, LoadError> {
    // SAFETY: dlopen with a NUL-terminated name; the handle is never closed.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        return Err(LoadError(format!(
            "cannot load {}: {}",
            name.to_string_lossy(),
            dl_error()
        )));
    }
    Ok(h)
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

fn load() -> Result<Lib, LoadError> {
    let verbs = open(c"libibverbs.so.1")?;
    let cm = open(c"librdmacm.so.1")?;
    macro_rules! sym {
        ($h:expr, $name:ident) => {{
            let name = concat!(stringify!($name), "\0");
            // SAFETY: dlsym with a live handle and a NUL-terminated name.
            let p = unsafe { libc::dlsym($h, name.as_ptr().cast()) };
            if p.is_null() {
                return Err(LoadError(format!(
                    "{} has no {}: {}",
                    if $h == verbs {
                        "libibverbs.so.1"
                    } else {
                        "librdmacm.so.1"
                    },
                    stringify!($name),
                    dl_error()
                )));
            }
            // SAFETY: the symbol is the C function of that name, whose signature the
            // field's type spells out (from the headers).
            unsafe { function(p) }
        }};
    }
    Ok(Lib {
        ibv_get_device_list: sym!(verbs, ibv_get_device_list),
        ibv_free_device_list: sym!(verbs, ibv_free_device_list),
        ibv_get_device_name: sym!(verbs, ibv_get_device_name),
        ibv_query_device: sym!(verbs, ibv_query_device),
        ibv_alloc_pd: sym!(verbs, ibv_alloc_pd),
        ibv_dealloc_pd: sym!(verbs, ibv_dealloc_pd),
        ibv_reg_mr: sym!(verbs, ibv_reg_mr),
        ibv_dereg_mr: sym!(verbs, ibv_dereg_mr),
        ibv_create_comp_channel: sym!(verbs, ibv_create_comp_channel),
        ibv_destroy_comp_channel: sym!(verbs, ibv_destroy_comp_channel),
        ibv_create_cq: sym!(verbs, ibv_create_cq),
        ibv_destroy_cq: sym!(verbs, ibv_destroy_cq),
        ibv_get_cq_event: sym!(verbs, ibv_get_cq_event),
        ibv_ack_cq_events: sym!(verbs, ibv_ack_cq_events),
        ibv_create_srq: sym!(verbs, ibv_create_srq),
        ibv_destroy_srq: sym!(verbs, ibv_destroy_srq),
        ibv_wc_status_str: sym!(verbs, ibv_wc_status_str),
        rdma_create_event_channel: sym!(cm, rdma_create_event_channel),
        rdma_destroy_event_channel: sym!(cm, rdma_destroy_event_channel),
        rdma_create_id: sym!(cm, rdma_create_id),
        rdma_destroy_id: sym!(cm, rdma_destroy_id),
        rdma_bind_addr: sym!(cm, rdma_bind_addr),
        rdma_listen: sym!(cm, rdma_listen),
        rdma_get_cm_event: sym!(cm, rdma_get_cm_event),
        rdma_ack_cm_event: sym!(cm, rdma_ack_cm_event),
        rdma_accept: sym!(cm, rdma_accept),
        rdma_reject: sym!(cm, rdma_reject),
        rdma_disconnect: sym!(cm, rdma_disconnect),
        rdma_create_qp: sym!(cm, rdma_create_qp),
        rdma_destroy_qp: sym!(cm, rdma_destroy_qp),
        rdma_migrate_id: sym!(cm, rdma_migrate_id),
        rdma_resolve_addr: sym!(cm, rdma_resolve_addr),
        rdma_resolve_route: sym!(cm, rdma_resolve_route),
        rdma_connect: sym!(cm, rdma_connect),
    })
}

/// A symbol as the function pointer type `F`.
///
/// # Safety
/// `p` is a function whose C signature `F` spells out.
unsafe fn function<F: Copy>(p: *mut c_void) -> F {
    assert_eq!(
        size_of::<F>(),
        size_of::<*mut c_void>(),
        "a function pointer"
    );
    // SAFETY: the caller's promise; both are one pointer wide.
    unsafe { std::mem::transmute_copy(&p) }
}

/// A function of a device context's `ops` table.
///
/// # Safety
/// `ctx` is a live `ibv_context`; `offset` is one of the `OPS_*` offsets and `F` the
/// matching function type.
pub unsafe fn ops<F: Copy>(ctx: *const ibv_context, offset: usize) -> F {
    // SAFETY: the caller's promise; the table holds a function pointer there.
    unsafe { read_at::<F>(ctx.cast(), offset::CONTEXT_OPS + offset) }
}

pub type PostSendFn =
    unsafe extern "C" fn(*mut ibv_qp, *mut ibv_send_wr, *mut *mut ibv_send_wr) -> c_int;
pub type PostRecvFn =
    unsafe extern "C" fn(*mut ibv_qp, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int;
pub type PostSrqRecvFn =
    unsafe extern "C" fn(*mut ibv_srq, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int;
pub type PollCqFn = unsafe extern "C" fn(*mut ibv_cq, c_int, *mut ibv_wc) -> c_int;
pub type ReqNotifyCqFn = unsafe extern "C" fn(*mut ibv_cq, c_int) -> c_int;
