//! A whole NVMe/TCP queue fed arbitrary host bytes (after a valid ICReq, and optionally a
//! valid admin Connect and enable, so the deeper paths are reachable). Whatever the host
//! sends: no panic, every byte the controller emits parses as valid controller PDUs, and
//! no block operation reaches past the namespace.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_proto::nvme::controller::{BlockOp, IoOutcome};
use target_proto::nvme_tcp::icreq::ControllerParams;
use target_proto::nvme_tcp::queue::NvmeTcpQueue;
use target_proto::nvme_tcp::reader::{PduReader, ReaderConfig, Role};
use target_wire::nvme_tcp::{IcRepr, PduType};

#[path = "common/nvme_registry.rs"]
mod nvme_registry;
use nvme_registry::{DISK, registry};

fuzz_target!(|input: &[u8]| {
    let [opts, rest @ ..] = input else { return };
    let registry = registry(opts & 4 != 0);
    let digests = opts & 1 != 0;
    let mut q = NvmeTcpQueue::new(ControllerParams::default(), None);
    let mut icreq = [0u8; 128];
    IcRepr {
        pfv: 0,
        pda: 0,
        header_digest: digests,
        data_digest: digests,
        max: 0,
    }
    .emit(PduType::IcReq, &mut icreq)
    .unwrap();
    q.receive(&icreq, &registry, 0);
    let mut host = PduReader::new(ReaderConfig {
        role: Role::Host,
        header_digest: false,
        data_digest: false,
        pda_bytes: 4,
        max_in_capsule: 0,
        max_data_pdu: 1 << 20,
    });
    let mut disk = vec![0u8; DISK as usize];
    let chunk = usize::from(opts >> 3).max(1);
    let mut first = true;
    for piece in rest.chunks(chunk) {
        // The queue takes everything unless its output is full (back-pressure).
        let took = q.receive(piece, &registry, 0);
        assert!(took == piece.len() || q.output_len() >= target_proto::OUTPUT_HIGH_WATER);
        while let Some((slot, io)) = q.next_io() {
            let buf = q.buffer_mut(slot);
            let outcome = match io.op {
                BlockOp::Read { offset, len } | BlockOp::Compare { offset, len } => {
                    assert!(offset + len <= DISK && buf.len() as u64 >= len.min(buf.len() as u64));
                    IoOutcome::Ok
                }
                BlockOp::Write { offset, len, .. } => {
                    assert!(offset + len <= DISK);
                    assert_eq!(buf.len() as u64, len);
                    disk[offset as usize..(offset + len) as usize].copy_from_slice(buf);
                    IoOutcome::Ok
                }
                BlockOp::WriteZeroes { offset, len, .. } => {
                    assert!(offset + len <= DISK);
                    IoOutcome::Ok
                }
                BlockOp::Deallocate { ranges } => {
                    assert!(ranges.iter().all(|&(o, l)| o + l <= DISK));
                    IoOutcome::Ok
                }
                BlockOp::Flush | BlockOp::FlushAll { .. } => IoOutcome::Ok,
            };
            q.io_done(slot, outcome);
        }
        // Sent in pieces of `chunk` bytes, as a full socket would take them: a read's
        // data stays in its slot until the last of it is consumed.
        let mut out = Vec::with_capacity(q.output_len());
        while q.output_len() > 0 {
            let first = q.output();
            let n = first.len().min(chunk);
            out.extend_from_slice(&first[..n]);
            q.consume_output(n);
        }
        let mut o = out.as_slice();
        if first && !o.is_empty() {
            // The ICResp, then the negotiated digests apply.
            let resp = IcRepr::parse(o).expect("ICResp first");
            o = &o[128..];
            host.initialized(ReaderConfig {
                role: Role::Host,
                header_digest: resp.header_digest,
                data_digest: resp.data_digest,
                pda_bytes: 4,
                max_in_capsule: 0,
                max_data_pdu: 1 << 20,
            });
            first = false;
        }
        while let Some(_ev) = host
            .next(&mut o)
            .expect("the controller only sends valid PDUs")
        {}
        if q.closing() {
            break;
        }
    }
});
