//! Checks every offset and size of [`crate::sys`] against Debian's headers: compiles a C
//! program with libibverbs-dev and librdmacm-dev (scripts/setup.sh installs them) that
//! prints them, and compares. A wrong offset here would make the provider read garbage.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use crate::sys::{self, offset};

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#define O(n, t, f) printf("%s %zu\n", n, offsetof(struct t, f))
#define S(n, t) printf("%s %zu\n", n, sizeof(struct t))
int main(void) {
    O("CONTEXT_OPS", ibv_context, ops);
    O("OPS_POLL_CQ", ibv_context_ops, poll_cq);
    O("OPS_REQ_NOTIFY_CQ", ibv_context_ops, req_notify_cq);
    O("OPS_POST_SRQ_RECV", ibv_context_ops, post_srq_recv);
    O("OPS_POST_SEND", ibv_context_ops, post_send);
    O("OPS_POST_RECV", ibv_context_ops, post_recv);
    O("QP_CONTEXT", ibv_qp, context);
    O("QP_NUM", ibv_qp, qp_num);
    O("CQ_CONTEXT", ibv_cq, context);
    O("SRQ_CONTEXT", ibv_srq, context);
    O("MR_LKEY", ibv_mr, lkey);
    O("MR_RKEY", ibv_mr, rkey);
    O("COMP_CHANNEL_FD", ibv_comp_channel, fd);
    O("EVENT_CHANNEL_FD", rdma_event_channel, fd);
    O("ID_VERBS", rdma_cm_id, verbs);
    O("ID_CONTEXT", rdma_cm_id, context);
    O("ID_QP", rdma_cm_id, qp);
    O("ID_SRC_ADDR", rdma_cm_id, route.addr.src_addr);
    O("ID_DST_ADDR", rdma_cm_id, route.addr.dst_addr);
    S("DEVICE_ATTR_LEN", ibv_device_attr);
    O("DEVICE_ATTR_MAX_QP_WR", ibv_device_attr, max_qp_wr);
    O("DEVICE_ATTR_MAX_SGE", ibv_device_attr, max_sge);
    O("DEVICE_ATTR_MAX_CQE", ibv_device_attr, max_cqe);
    O("DEVICE_ATTR_MAX_QP_RD_ATOM", ibv_device_attr, max_qp_rd_atom);
    O("DEVICE_ATTR_MAX_QP_INIT_RD_ATOM", ibv_device_attr, max_qp_init_rd_atom);
    O("DEVICE_ATTR_MAX_SRQ_WR", ibv_device_attr, max_srq_wr);
    S("sge", ibv_sge);
    O("sge.lkey", ibv_sge, lkey);
    S("recv_wr", ibv_recv_wr);
    O("recv_wr.num_sge", ibv_recv_wr, num_sge);
    S("send_wr", ibv_send_wr);
    O("send_wr.sg_list", ibv_send_wr, sg_list);
    O("send_wr.opcode", ibv_send_wr, opcode);
    O("send_wr.send_flags", ibv_send_wr, send_flags);
    O("send_wr.invalidate_rkey", ibv_send_wr, invalidate_rkey);
    O("send_wr.remote_addr", ibv_send_wr, wr.rdma.remote_addr);
    O("send_wr.rkey", ibv_send_wr, wr.rdma.rkey);
    S("wc", ibv_wc);
    O("wc.status", ibv_wc, status);
    O("wc.opcode", ibv_wc, opcode);
    O("wc.byte_len", ibv_wc, byte_len);
    O("wc.imm_data", ibv_wc, invalidated_rkey);
    O("wc.qp_num", ibv_wc, qp_num);
    O("wc.wc_flags", ibv_wc, wc_flags);
    S("qp_init_attr", ibv_qp_init_attr);
    O("qp_init_attr.cap", ibv_qp_init_attr, cap);
    O("qp_init_attr.qp_type", ibv_qp_init_attr, qp_type);
    O("qp_init_attr.sq_sig_all", ibv_qp_init_attr, sq_sig_all);
    S("qp_cap", ibv_qp_cap);
    S("srq_init_attr", ibv_srq_init_attr);
    S("conn_param", rdma_conn_param);
    O("conn_param.private_data_len", rdma_conn_param, private_data_len);
    O("conn_param.rnr_retry_count", rdma_conn_param, rnr_retry_count);
    O("conn_param.qp_num", rdma_conn_param, qp_num);
    S("cm_event", rdma_cm_event);
    O("cm_event.event", rdma_cm_event, event);
    O("cm_event.status", rdma_cm_event, status);
    O("cm_event.conn", rdma_cm_event, param.conn);
    printf("IBV_WR_RDMA_WRITE %d\nIBV_WR_SEND %d\nIBV_WR_RDMA_READ %d\nIBV_WR_SEND_WITH_INV %d\n",
           IBV_WR_RDMA_WRITE, IBV_WR_SEND, IBV_WR_RDMA_READ, IBV_WR_SEND_WITH_INV);
    printf("IBV_SEND_SIGNALED %d\nIBV_SEND_INLINE %d\nIBV_WC_WR_FLUSH_ERR %d\n",
           IBV_SEND_SIGNALED, IBV_SEND_INLINE, IBV_WC_WR_FLUSH_ERR);
    printf("IBV_WC_SEND %d\nIBV_WC_RDMA_WRITE %d\nIBV_WC_RDMA_READ %d\nIBV_WC_RECV %d\nIBV_WC_WITH_INV %d\n",
           IBV_WC_SEND, IBV_WC_RDMA_WRITE, IBV_WC_RDMA_READ, IBV_WC_RECV, IBV_WC_WITH_INV);
    printf("IBV_ACCESS %d %d %d\nIBV_QPT_RC %d\nRDMA_PS_TCP %d\n", IBV_ACCESS_LOCAL_WRITE,
           IBV_ACCESS_REMOTE_WRITE, IBV_ACCESS_REMOTE_READ, IBV_QPT_RC, RDMA_PS_TCP);
    printf("EVENTS %d %d %d %d %d %d %d %d %d %d\n", RDMA_CM_EVENT_ADDR_RESOLVED,
           RDMA_CM_EVENT_ROUTE_RESOLVED, RDMA_CM_EVENT_CONNECT_REQUEST,
           RDMA_CM_EVENT_ESTABLISHED, RDMA_CM_EVENT_DISCONNECTED, RDMA_CM_EVENT_DEVICE_REMOVAL,
           RDMA_CM_EVENT_REJECTED, RDMA_CM_EVENT_TIMEWAIT_EXIT, RDMA_CM_EVENT_CONNECT_ERROR,
           RDMA_CM_EVENT_UNREACHABLE);
    return 0;
}
"#;

fn from_headers() -> HashMap<String, String> {
    let dir = std::env::temp_dir().join(format!("target-rdma-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, PROGRAM).unwrap();
    let cc = Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("running cc (scripts/setup.sh installs gcc)");
    assert!(
        cc.status.success(),
        "compiling against <infiniband/verbs.h> and <rdma/rdma_cma.h> failed (scripts/setup.sh \
         installs libibverbs-dev and librdmacm-dev):\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn offsets_sizes_and_constants_match_the_headers() {
    let c = from_headers();
    let ours: Vec<(&str, String)> = vec![
        ("CONTEXT_OPS", offset::CONTEXT_OPS.to_string()),
        ("OPS_POLL_CQ", offset::OPS_POLL_CQ.to_string()),
        ("OPS_REQ_NOTIFY_CQ", offset::OPS_REQ_NOTIFY_CQ.to_string()),
        ("OPS_POST_SRQ_RECV", offset::OPS_POST_SRQ_RECV.to_string()),
        ("OPS_POST_SEND", offset::OPS_POST_SEND.to_string()),
        ("OPS_POST_RECV", offset::OPS_POST_RECV.to_string()),
        ("QP_CONTEXT", offset::QP_CONTEXT.to_string()),
        ("QP_NUM", offset::QP_NUM.to_string()),
        ("CQ_CONTEXT", "0".to_string()),
        ("SRQ_CONTEXT", offset::QP_CONTEXT.to_string()),
        ("MR_LKEY", offset::MR_LKEY.to_string()),
        ("MR_RKEY", offset::MR_RKEY.to_string()),
        ("COMP_CHANNEL_FD", offset::COMP_CHANNEL_FD.to_string()),
        ("EVENT_CHANNEL_FD", offset::EVENT_CHANNEL_FD.to_string()),
        ("ID_VERBS", offset::ID_VERBS.to_string()),
        ("ID_CONTEXT", offset::ID_CONTEXT.to_string()),
        ("ID_QP", offset::ID_QP.to_string()),
        ("ID_SRC_ADDR", offset::ID_SRC_ADDR.to_string()),
        ("ID_DST_ADDR", offset::ID_DST_ADDR.to_string()),
        ("DEVICE_ATTR_LEN", offset::DEVICE_ATTR_LEN.to_string()),
        (
            "DEVICE_ATTR_MAX_QP_WR",
            offset::DEVICE_ATTR_MAX_QP_WR.to_string(),
        ),
        (
            "DEVICE_ATTR_MAX_SGE",
            offset::DEVICE_ATTR_MAX_SGE.to_string(),
        ),
        (
            "DEVICE_ATTR_MAX_CQE",
            offset::DEVICE_ATTR_MAX_CQE.to_string(),
        ),
        (
            "DEVICE_ATTR_MAX_QP_RD_ATOM",
            offset::DEVICE_ATTR_MAX_QP_RD_ATOM.to_string(),
        ),
        (
            "DEVICE_ATTR_MAX_QP_INIT_RD_ATOM",
            offset::DEVICE_ATTR_MAX_QP_INIT_RD_ATOM.to_string(),
        ),
        (
            "DEVICE_ATTR_MAX_SRQ_WR",
            offset::DEVICE_ATTR_MAX_SRQ_WR.to_string(),
        ),
        ("sge", size_of::<sys::ibv_sge>().to_string()),
        ("sge.lkey", offset_of!(sys::ibv_sge, lkey).to_string()),
        ("recv_wr", size_of::<sys::ibv_recv_wr>().to_string()),
        (
            "recv_wr.num_sge",
            offset_of!(sys::ibv_recv_wr, num_sge).to_string(),
        ),
        ("send_wr", size_of::<sys::ibv_send_wr>().to_string()),
        (
            "send_wr.sg_list",
            offset_of!(sys::ibv_send_wr, sg_list).to_string(),
        ),
        (
            "send_wr.opcode",
            offset_of!(sys::ibv_send_wr, opcode).to_string(),
        ),
        (
            "send_wr.send_flags",
            offset_of!(sys::ibv_send_wr, send_flags).to_string(),
        ),
        (
            "send_wr.invalidate_rkey",
            offset_of!(sys::ibv_send_wr, invalidate_rkey).to_string(),
        ),
        (
            "send_wr.remote_addr",
            offset_of!(sys::ibv_send_wr, remote_addr).to_string(),
        ),
        (
            "send_wr.rkey",
            offset_of!(sys::ibv_send_wr, rkey).to_string(),
        ),
        ("wc", size_of::<sys::ibv_wc>().to_string()),
        ("wc.status", offset_of!(sys::ibv_wc, status).to_string()),
        ("wc.opcode", offset_of!(sys::ibv_wc, opcode).to_string()),
        ("wc.byte_len", offset_of!(sys::ibv_wc, byte_len).to_string()),
        ("wc.imm_data", offset_of!(sys::ibv_wc, imm_data).to_string()),
        ("wc.qp_num", offset_of!(sys::ibv_wc, qp_num).to_string()),
        ("wc.wc_flags", offset_of!(sys::ibv_wc, wc_flags).to_string()),
        (
            "qp_init_attr",
            size_of::<sys::ibv_qp_init_attr>().to_string(),
        ),
        (
            "qp_init_attr.cap",
            offset_of!(sys::ibv_qp_init_attr, cap).to_string(),
        ),
        (
            "qp_init_attr.qp_type",
            offset_of!(sys::ibv_qp_init_attr, qp_type).to_string(),
        ),
        (
            "qp_init_attr.sq_sig_all",
            offset_of!(sys::ibv_qp_init_attr, sq_sig_all).to_string(),
        ),
        ("qp_cap", size_of::<sys::ibv_qp_cap>().to_string()),
        (
            "srq_init_attr",
            size_of::<sys::ibv_srq_init_attr>().to_string(),
        ),
        ("conn_param", size_of::<sys::rdma_conn_param>().to_string()),
        (
            "conn_param.private_data_len",
            offset_of!(sys::rdma_conn_param, private_data_len).to_string(),
        ),
        (
            "conn_param.rnr_retry_count",
            offset_of!(sys::rdma_conn_param, rnr_retry_count).to_string(),
        ),
        (
            "conn_param.qp_num",
            offset_of!(sys::rdma_conn_param, qp_num).to_string(),
        ),
        ("cm_event", size_of::<sys::rdma_cm_event>().to_string()),
        (
            "cm_event.event",
            offset_of!(sys::rdma_cm_event, event).to_string(),
        ),
        (
            "cm_event.status",
            offset_of!(sys::rdma_cm_event, status).to_string(),
        ),
        (
            "cm_event.conn",
            offset_of!(sys::rdma_cm_event, conn).to_string(),
        ),
        ("IBV_WR_RDMA_WRITE", sys::IBV_WR_RDMA_WRITE.to_string()),
        ("IBV_WR_SEND", sys::IBV_WR_SEND.to_string()),
        ("IBV_WR_RDMA_READ", sys::IBV_WR_RDMA_READ.to_string()),
        (
            "IBV_WR_SEND_WITH_INV",
            sys::IBV_WR_SEND_WITH_INV.to_string(),
        ),
        ("IBV_SEND_SIGNALED", sys::IBV_SEND_SIGNALED.to_string()),
        ("IBV_SEND_INLINE", sys::IBV_SEND_INLINE.to_string()),
        ("IBV_WC_WR_FLUSH_ERR", sys::IBV_WC_WR_FLUSH_ERR.to_string()),
        ("IBV_WC_SEND", sys::IBV_WC_SEND.to_string()),
        ("IBV_WC_RDMA_WRITE", sys::IBV_WC_RDMA_WRITE.to_string()),
        ("IBV_WC_RDMA_READ", sys::IBV_WC_RDMA_READ.to_string()),
        ("IBV_WC_RECV", sys::IBV_WC_RECV.to_string()),
        ("IBV_WC_WITH_INV", sys::IBV_WC_WITH_INV.to_string()),
        (
            "IBV_ACCESS",
            format!(
                "{} {} {}",
                sys::IBV_ACCESS_LOCAL_WRITE,
                sys::IBV_ACCESS_REMOTE_WRITE,
                sys::IBV_ACCESS_REMOTE_READ
            ),
        ),
        ("IBV_QPT_RC", sys::IBV_QPT_RC.to_string()),
        ("RDMA_PS_TCP", sys::RDMA_PS_TCP.to_string()),
        (
            "EVENTS",
            [
                sys::RDMA_CM_EVENT_ADDR_RESOLVED,
                sys::RDMA_CM_EVENT_ROUTE_RESOLVED,
                sys::RDMA_CM_EVENT_CONNECT_REQUEST,
                sys::RDMA_CM_EVENT_ESTABLISHED,
                sys::RDMA_CM_EVENT_DISCONNECTED,
                sys::RDMA_CM_EVENT_DEVICE_REMOVAL,
                sys::RDMA_CM_EVENT_REJECTED,
                sys::RDMA_CM_EVENT_TIMEWAIT_EXIT,
                sys::RDMA_CM_EVENT_CONNECT_ERROR,
                sys::RDMA_CM_EVENT_UNREACHABLE,
            ]
            .map(|e| e.to_string())
            .join(" "),
        ),
    ];
    let mut wrong = Vec::new();
    for (name, value) in &ours {
        match c.get(*name) {
            Some(v) if v == value => {}
            other => wrong.push(format!("{name}: ours {value}, the headers' {other:?}")),
        }
    }
    assert_eq!(
        c.len(),
        ours.len(),
        "every line the C program prints is checked"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_libraries_load_and_name_their_devices() {
    // This machine has libibverbs1 and librdmacm1 (scripts/setup.sh); it may have no device.
    let names = crate::devices().expect("loading libibverbs.so.1 and librdmacm.so.1");
    for n in names {
        assert!(!n.is_empty());
    }
    assert_eq!(
        crate::wc_status_str(sys::IBV_WC_WR_FLUSH_ERR),
        "Work Request Flushed Error"
    );
}
