//! NVMe/RDMA queues for `perf` (`nvme-rdma://`): an RDMA CM id, queue pair and completion
//! queue per NVMe queue, over target-rdma, carrying the capsules of the sans-I/O
//! [`HostQueue`] of target-proto. Set up as Linux's host sets up its queues
//! (`drivers/nvme/host/rdma.c`: `nvme_rdma_create_queue_ib`, `nvme_rdma_route_resolved`):
//!
//! 1. resolve the address, then the route (2 s each); the route names the device;
//! 2. a protection domain, one completion queue for sends and receives, a reliable
//!    connection queue pair (a work request per command plus one, one SGE each);
//! 3. the host queue's memory registered once: capsules and responses for local access,
//!    the data buffers also for remote read and write (the controller RDMA READs write
//!    data from them and RDMA WRITEs read data into them, named by Keyed SGLs);
//! 4. a receive posted on every response buffer, before the connect request, so no
//!    response can find none;
//! 5. `rdma_connect` with the NVMe/RDMA private data (QID, HSQSIZE, HRQSIZE, CNTLID);
//!    ESTABLISHED, or REJECTED with the controller's reason.
//!
//! The completion queue is busy-polled (this is a benchmark); after a short spin without
//! completions the thread yields between polls, so a target on the same machine still
//! gets the CPU. At the end the queue disconnects, waits briefly for DISCONNECTED, and
//! destroys its queue pair before its memory goes.

use std::io;
use std::net::SocketAddr;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use target_proto::nvme_rdma::host::{
    Completion, HostConfig, HostQueue, RESPONSE_LEN, Region, SubmitError,
};
use target_rdma::sys::{self, ibv_qp_cap};
use target_rdma::{
    CmEvent, CmId, ConnParam, Cq, EventChannel, Mr, Pd, ibv_recv_wr, ibv_send_wr, ibv_sge, ibv_wc,
};
use target_wire::nvme_rdma::{CmRejectRepr, CmStatus};

use super::rw_sqe;
use super::{Done, IoQueue, NvmeConn, NvmeTransport, PerfError, QueueSpec, SPIN};

/// The most write data a capsule carries, whatever IOCCSZ allows: each command slot has
/// a capsule buffer of the SQE and this.
const MAX_IN_CAPSULE: usize = 8192;
/// The timeout of `rdma_resolve_addr` and `rdma_resolve_route`.
const RESOLVE_TIMEOUT_MS: i32 = 2000;
/// How long to wait for the CM's answer to a resolve (it reports its own timeout first).
const RESOLVE_WAIT: Duration = Duration::from_millis(3000);
/// From the connect request to ESTABLISHED.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// How long the end waits for DISCONNECTED.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);
/// A command without an answer for this long means the target is gone (as over TCP).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Work requests beyond one per command, per queue (Linux's host keeps one for the drain).
const SPARE_WR: u32 = 1;
/// Inline data asked of the queue pair: a bare SQE then goes in the work request, saving
/// the device a read of the capsule buffer. Devices without inline data get 0.
const INLINE: u32 = 64;
/// Work completions taken per poll.
const POLL_BATCH: usize = 32;
/// How often the CM's event channel is looked at while polling (a system call each).
const CM_CHECK: Duration = Duration::from_millis(10);
/// Work request IDs: the kind in the high half, the slot or receive in the low half.
const WR_SEND: u64 = 1 << 32;
const WR_RECV: u64 = 2 << 32;
const WR_INDEX: u64 = 0xffff_ffff;
/// The CM's reject reasons that carry the consumer's private data: InfiniBand CM
/// "consumer defined" (RoCE too), and iWARP's -ECONNREFUSED.
const IB_CM_REJ_CONSUMER_DEFINED: i32 = 28;

/// NVMe/RDMA: a queue pair per queue. Made only where it can run.
pub(super) struct Rdma;

impl Rdma {
    /// The transport, or one line saying what this machine lacks.
    pub(super) fn new() -> Result<Self, PerfError> {
        let devices =
            target_rdma::devices().map_err(|e| PerfError::RdmaUnavailable(e.to_string()))?;
        if devices.is_empty() {
            return Err(PerfError::RdmaUnavailable(
                "no RDMA device (ibv_devices lists none; for soft-RoCE: modprobe rdma_rxe; \
                 rdma link add rxe0 type rxe netdev IFACE)"
                    .into(),
            ));
        }
        Ok(Self)
    }
}

impl NvmeTransport for Rdma {
    type Queue = RdmaQueue;

    fn open(&self, addr: SocketAddr, spec: QueueSpec) -> Result<RdmaQueue, PerfError> {
        RdmaQueue::open(addr, spec)
    }
}

/// An RDMA CM id, destroyed with its queue pair when dropped.
struct OwnedId(CmId);

impl Drop for OwnedId {
    fn drop(&mut self) {
        // SAFETY: the id was made by CmId::new for this owner alone and is destroyed only
        // here; its channel (dropped after it) acknowledged every event as it read it.
        unsafe { self.0.destroy() };
    }
}

/// One NVMe queue over its own queue pair.
pub(super) struct RdmaQueue {
    // The fields drop in this order, after `Drop::drop` disconnected: the id and its queue
    // pair first (no work request reaches the memory after that), then the registrations,
    // the completion queue, the protection domain, the host queue's memory and last the
    // event channel the id belonged to.
    id: OwnedId,
    capsules: Mr,
    responses: Mr,
    /// Held for the registration: the controller reaches the data buffers through it.
    _data: Mr,
    cq: Cq,
    pd: Pd,
    h: HostQueue,
    ch: EventChannel,
    addr: SocketAddr,
    /// The inline data the queue pair took.
    inline: u32,
    /// ESTABLISHED came: disconnect at the end.
    connected: bool,
    nsid: u32,
}

impl RdmaQueue {
    fn open(addr: SocketAddr, spec: QueueSpec) -> Result<Self, PerfError> {
        let fail = |reason: String| PerfError::RdmaConnect { addr, reason };
        let os = |e: io::Error| fail(e.to_string());
        let ch = EventChannel::new().map_err(os)?;
        let id = OwnedId(CmId::new(&ch).map_err(os)?);
        id.0.resolve_addr(addr, RESOLVE_TIMEOUT_MS).map_err(os)?;
        expect_event(&ch, sys::RDMA_CM_EVENT_ADDR_RESOLVED, RESOLVE_WAIT).map_err(|e| {
            fail(format!(
                "resolving the address: {e}; is it reached through an interface with an \
                     RDMA device (`rdma link` lists them)?"
            ))
        })?;
        id.0.resolve_route(RESOLVE_TIMEOUT_MS).map_err(os)?;
        expect_event(&ch, sys::RDMA_CM_EVENT_ROUTE_RESOLVED, RESOLVE_WAIT)
            .map_err(|e| fail(format!("resolving the route: {e}")))?;
        let ctx =
            id.0.verbs()
                .ok_or_else(|| fail("the resolved route names no RDMA device".into()))?;
        let device = target_rdma::query_device(ctx).map_err(os)?;

        let depth = u32::from(spec.depth);
        let wr = depth + SPARE_WR;
        if wr > device.max_qp_wr || 2 * wr > device.max_cqe {
            return Err(fail(format!(
                "the device's queue pairs hold {} work requests and its completion queues {} \
                 entries, fewer than {wr} and {}: lower --qd",
                device.max_qp_wr,
                device.max_cqe,
                2 * wr
            )));
        }
        let pd = Pd::new(ctx).map_err(os)?;
        let cq = Cq::new(ctx, 2 * wr, None).map_err(os)?;
        let mut h = HostQueue::new(HostConfig {
            depth: spec.depth,
            in_capsule: spec.in_capsule.min(MAX_IN_CAPSULE),
            data_len: spec.data_len,
        });
        let capsules = register(&pd, &mut h, Region::Capsules, false).map_err(os)?;
        let responses = register(&pd, &mut h, Region::Responses, false).map_err(os)?;
        let data = register(&pd, &mut h, Region::Data, true).map_err(os)?;
        h.set_data_key(data.addr, data.rkey());
        let mut q = Self {
            id,
            capsules,
            responses,
            _data: data,
            cq,
            pd,
            h,
            ch,
            addr,
            inline: 0,
            connected: false,
            nsid: 1,
        };
        q.inline = q.create_qp(wr).map_err(os)?;
        for i in 0..q.h.receives() {
            q.post_recv(i)?;
        }
        q.connect(spec, device.max_qp_rd_atom)?;
        Ok(q)
    }

    /// Creates the queue pair, with inline data if the device has it; returns how much.
    fn create_qp(&self, wr: u32) -> io::Result<u32> {
        let cap = |inline| ibv_qp_cap {
            max_send_wr: wr,
            max_recv_wr: wr,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: inline,
        };
        match self
            .id
            .0
            .create_qp(&self.pd, &self.cq, &self.cq, None, cap(INLINE))
        {
            Ok(()) => Ok(INLINE),
            Err(_) => self
                .id
                .0
                .create_qp(&self.pd, &self.cq, &self.cq, None, cap(0))
                .map(|()| 0),
        }
    }

    fn connect(&mut self, spec: QueueSpec, max_qp_rd_atom: u32) -> Result<(), PerfError> {
        let addr = self.addr;
        let fail = |reason: String| PerfError::RdmaConnect { addr, reason };
        let request = self.h.cm_request(spec.qid, spec.cntlid);
        let param = ConnParam {
            // The controller RDMA READs write data from the host: as many at once as this
            // device answers (Linux's host asks for max_qp_rd_atom too).
            responder_resources: u8::try_from(max_qp_rd_atom).unwrap_or(u8::MAX),
            // The host reads nothing from the controller.
            initiator_depth: 0,
            retry_count: 7,
            rnr_retry_count: 7,
        };
        self.id
            .0
            .connect(param, &request)
            .map_err(|e| fail(e.to_string()))?;
        let ev = next_event(&self.ch, CONNECT_WAIT).map_err(fail)?;
        match ev.kind {
            sys::RDMA_CM_EVENT_ESTABLISHED => {
                self.connected = true;
                self.h
                    .accepted(&ev.private_data)
                    .map_err(|e| fail(format!("{e:?}")))
            }
            sys::RDMA_CM_EVENT_REJECTED => Err(fail(rejected(&ev))),
            _ => Err(fail(describe(&ev))),
        }
    }

    fn qp(&self) -> Result<NonNull<sys::ibv_qp>, PerfError> {
        self.id
            .0
            .qp()
            .ok_or_else(|| self.io_err(io::Error::other("the queue pair is gone")))
    }

    fn io_err(&self, source: io::Error) -> PerfError {
        PerfError::Io {
            addr: self.addr,
            source,
        }
    }

    /// Posts receive `i` on its response buffer.
    fn post_recv(&self, i: usize) -> Result<(), PerfError> {
        let qp = self.qp()?;
        let mut sge = ibv_sge {
            addr: self.responses.addr + self.h.response_offset(i) as u64,
            length: RESPONSE_LEN as u32,
            lkey: self.responses.lkey(),
        };
        let mut wr = ibv_recv_wr {
            wr_id: WR_RECV | i as u64,
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        // SAFETY: the id's live queue pair (destroyed only when the queue drops); the SGE
        // names RESPONSE_LEN bytes of the registered response region, which outlives the
        // queue pair (field order). The provider copies the request during the call.
        unsafe { target_rdma::post_recv(qp, &mut wr) }.map_err(|e| self.io_err(e))
    }

    /// Posts the SENDs of the capsules the host queue has ready.
    fn post_sends(&mut self) -> Result<(), PerfError> {
        while let Some(s) = self.h.next_send() {
            let qp = self.qp()?;
            let len = u32::try_from(s.len).expect("a capsule buffer");
            let mut sge = ibv_sge {
                addr: self.capsules.addr + s.offset as u64,
                length: len,
                lkey: self.capsules.lkey(),
            };
            let mut send_flags = sys::IBV_SEND_SIGNALED;
            if len <= self.inline {
                send_flags |= sys::IBV_SEND_INLINE;
            }
            let mut wr = ibv_send_wr {
                wr_id: WR_SEND | s.slot as u64,
                sg_list: &mut sge,
                num_sge: 1,
                opcode: sys::IBV_WR_SEND,
                send_flags,
                ..Default::default()
            };
            // SAFETY: the id's live queue pair; the SGE names the slot's capsule in the
            // registered capsule region, which outlives the queue pair and which the host
            // queue leaves alone until this SEND completes (or copied now, when inline).
            unsafe { target_rdma::post_send(qp, &mut wr) }.map_err(|e| self.io_err(e))?;
        }
        Ok(())
    }

    /// Posts what is ready, then polls until at least one work completion came and was
    /// taken.
    fn exchange(&mut self) -> Result<(), PerfError> {
        self.post_sends()?;
        if self.h.outstanding() == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let mut cm_checked = started;
        let mut wc = [ibv_wc::default(); POLL_BATCH];
        loop {
            let n = self.cq.poll(&mut wc).map_err(|e| self.io_err(e))?;
            if n > 0 {
                for w in &wc[..n] {
                    self.work_completion(w)?;
                }
                return Ok(());
            }
            let now = Instant::now();
            if now.duration_since(cm_checked) >= CM_CHECK {
                cm_checked = now;
                if let Some(ev) = self.ch.next().map_err(|e| self.io_err(e))? {
                    let e = io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("the connection ended: {}", describe(&ev)),
                    );
                    return Err(self.io_err(e));
                }
            }
            let waited = now.duration_since(started);
            if waited > COMMAND_TIMEOUT {
                let e = io::Error::new(io::ErrorKind::TimedOut, "no completion in 30 s");
                return Err(self.io_err(e));
            }
            if waited < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn work_completion(&mut self, w: &ibv_wc) -> Result<(), PerfError> {
        let index = (w.wr_id & WR_INDEX) as usize;
        let kind = w.wr_id & !WR_INDEX;
        if w.status != sys::IBV_WC_SUCCESS {
            let what = if kind == WR_SEND {
                "a SEND"
            } else {
                "a receive"
            };
            let e = io::Error::other(format!(
                "{what} failed: {} (vendor error {:#x})",
                target_rdma::wc_status_str(w.status),
                w.vendor_err
            ));
            return Err(self.io_err(e));
        }
        let protocol = |e| PerfError::Target(format!("protocol error from the target: {e:?}"));
        match kind {
            WR_RECV => {
                if w.wc_flags & sys::IBV_WC_WITH_INV != 0 {
                    return Err(PerfError::Target(
                        "protocol error from the target: it invalidated a key the host never \
                         offered for invalidation"
                            .into(),
                    ));
                }
                // The response is read out of its buffer before the buffer is posted again.
                let r = self.h.response(index, w.byte_len as usize);
                self.post_recv(index)?;
                r.map_err(protocol)
            }
            WR_SEND => self.h.send_done(index).map_err(protocol),
            _ => Err(PerfError::Target(format!(
                "a work completion for no request (wr_id {:#x})",
                w.wr_id
            ))),
        }
    }

    fn submit(&mut self, sqe: [u8; 64], write: &[u8], read_len: usize) -> Result<u16, PerfError> {
        self.h.submit(sqe, write, read_len).map_err(|e| match e {
            SubmitError::TooLong { len, max } => PerfError::Target(format!(
                "a transfer of {len} bytes does not fit the {max}-byte buffers"
            )),
            e => PerfError::Target(format!("cannot queue a command: {e:?}")),
        })
    }
}

impl Drop for RdmaQueue {
    fn drop(&mut self) {
        if self.connected && self.id.0.disconnect().is_ok() {
            // The target's side goes first; give it a moment, then destroy regardless.
            let deadline = Instant::now() + DISCONNECT_WAIT;
            while let Ok(ev) =
                next_event(&self.ch, deadline.saturating_duration_since(Instant::now()))
            {
                if ev.kind == sys::RDMA_CM_EVENT_DISCONNECTED {
                    break;
                }
            }
        }
    }
}

impl NvmeConn for RdmaQueue {
    fn submit_command(
        &mut self,
        sqe: [u8; 64],
        write: Vec<u8>,
        read_len: usize,
    ) -> Result<u16, PerfError> {
        self.submit(sqe, &write, read_len)
    }

    fn take_completion(&mut self) -> Option<Completion> {
        self.h.completion()
    }

    fn pump(&mut self) -> Result<(), PerfError> {
        self.exchange()
    }

    fn set_nsid(&mut self, nsid: u32) {
        self.nsid = nsid;
    }
}

impl IoQueue for RdmaQueue {
    fn submit_io(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u32,
        data: Vec<u8>,
        read_len: usize,
    ) -> Result<u32, PerfError> {
        let sqe = rw_sqe(write, self.nsid, lba, blocks);
        self.submit(sqe, &data, read_len).map(u32::from)
    }

    fn can_submit(&self) -> bool {
        self.h.can_submit()
    }

    fn exchange(&mut self) -> Result<(), PerfError> {
        RdmaQueue::exchange(self)
    }

    fn done(&mut self) -> Option<Done> {
        self.h.completion().map(|c| Done {
            tag: u32::from(c.cid),
            error: (!c.cqe.status.is_success()).then(|| format!("{:?}", c.cqe.status)),
            data: c.data,
        })
    }
}

/// Registers one region of the host queue's memory (`remote`: for the controller's RDMA
/// READs and WRITEs too).
fn register(pd: &Pd, h: &mut HostQueue, region: Region, remote: bool) -> io::Result<Mr> {
    let m = h.memory_mut(region);
    // SAFETY: the host queue allocates its memory once and never moves or shrinks it
    // (an invariant of nvme_rdma::host); the region is dropped before the queue, whether
    // in RdmaQueue (field order) or in RdmaQueue::open on an error (declared after it).
    unsafe { pd.register(m.as_mut_ptr(), m.len(), remote) }
}

/// The channel's next event, waiting at most `timeout`.
fn next_event(ch: &EventChannel, timeout: Duration) -> Result<CmEvent, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(ev) = ch.next().map_err(|e| e.to_string())? {
            return Ok(ev);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer in {} ms", timeout.as_millis()));
        }
        let mut pfd = libc::pollfd {
            fd: ch.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call, bounded timeout.
        unsafe { libc::poll(&raw mut pfd, 1, ms) };
    }
}

/// The next event, which must be `kind`.
fn expect_event(ch: &EventChannel, kind: u32, timeout: Duration) -> Result<(), String> {
    let ev = next_event(ch, timeout)?;
    if ev.kind == kind {
        Ok(())
    } else {
        Err(describe(&ev))
    }
}

/// An event in words: its name and status (an errno, when negative).
fn describe(ev: &CmEvent) -> String {
    if ev.status < 0 {
        format!(
            "{} ({})",
            ev.name(),
            io::Error::from_raw_os_error(-ev.status)
        )
    } else {
        format!("{} (status {})", ev.name(), ev.status)
    }
}

/// Why the target refused the queue: its NVMe/RDMA reject status, when it sent one.
fn rejected(ev: &CmEvent) -> String {
    let consumer = ev.status == IB_CM_REJ_CONSUMER_DEFINED || ev.status == -libc::ECONNREFUSED;
    match CmRejectRepr::parse(&ev.private_data) {
        Ok(r) if consumer && r.status != CmStatus::Unknown(0) => format!(
            "the target rejected the queue: {:?} (NVMe/RDMA reject status {:#x})",
            r.status,
            u16::from(r.status)
        ),
        _ => format!(
            "rejected (reason {}): is an NVMe/RDMA target listening there?",
            ev.status
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u32, status: i32, private_data: &[u8]) -> CmEvent {
        CmEvent {
            kind,
            id: None,
            listen_id: None,
            status,
            responder_resources: 0,
            initiator_depth: 0,
            private_data: private_data.to_vec(),
        }
    }

    #[test]
    fn rejects_say_why() {
        let mut pd = [0u8; 148];
        pd[..4].copy_from_slice(&CmRejectRepr::new(CmStatus::InvalidHsqsize).to_bytes());
        let r = rejected(&event(sys::RDMA_CM_EVENT_REJECTED, 28, &pd));
        assert!(r.contains("InvalidHsqsize") && r.contains("0x4"), "{r}");
        // No listener: the CM's own reject (invalid service ID), no NVMe status.
        let r = rejected(&event(sys::RDMA_CM_EVENT_REJECTED, 8, &[]));
        assert!(r.contains("reason 8") && r.contains("listening"), "{r}");
        let r = describe(&event(sys::RDMA_CM_EVENT_ADDR_ERROR, -libc::ENODEV, &[]));
        assert!(r.starts_with("ADDR_ERROR (No such device"), "{r}");
    }
}
