//! NVMe/RDMA host queue (`nvme_rdma::host`, what `perf` drives a controller with) fed a
//! controller and transport that do anything in any order: commands submitted with fuzzed
//! data lengths, SENDs taken and completed or not (or completions for slots that posted
//! nothing), responses with arbitrary bytes and lengths in arbitrary receives, including
//! CIDs of commands outstanding, finished or never sent.
//!
//! Whatever happens: no panic; never more commands outstanding than the depth; every SEND
//! lies in the capsule region and is as long as its SQE and in-capsule data; a Keyed SGL
//! names the data region's rkey and stays inside the command's own data buffer, an
//! in-capsule one fits the capsule size; a CID is never given to two commands at once; a
//! command completes once, only after both its SEND completed and a response named it, with
//! exactly the data length it asked for; and `Full` only when the queue is full.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use target_proto::nvme_rdma::host::{
    HostConfig, HostQueue, RESPONSE_LEN, Region, SubmitError, commands,
};
use target_wire::nvme::cqe::CqeRepr;
use target_wire::nvme::opcode::IoOpcode;
use target_wire::nvme::sgl::SglRepr;
use target_wire::nvme::sqe::{SQE_LEN, Sqe};
use target_wire::nvme::status::Status;

const BASE: u64 = 0x7000_0000_0000;
const RKEY: u32 = 0x1234_5678;

/// The input, taken from the front; zeroes once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the fuzzer's side knows of a command.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    slot: Option<usize>,
    read_len: usize,
    sent: bool,
    answered: bool,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let depth = 2 + u16::from(input.byte() % 31);
    let in_capsule = usize::from(input.byte() % 3) * 4096;
    let data_len = 512 * (1 + usize::from(input.byte() % 16));
    let config = HostConfig {
        depth,
        in_capsule,
        data_len,
    };
    let mut h = HostQueue::new(config);
    let keyed = input.byte() % 8 != 0;
    if keyed {
        h.set_data_key(BASE, RKEY);
    }
    let capsule_len = SQE_LEN + in_capsule;
    let mut by_cid: HashMap<u16, Outstanding> = HashMap::new();
    let receives = h.receives();
    let mut failed = false;

    while !input.done() && !failed {
        match input.byte() % 4 {
            0 => {
                // A command: a write of some length, or a read.
                let len = usize::from(input.u16()) % (data_len + in_capsule + 1024);
                let write = input.byte() % 2 == 0;
                let payload = vec![0x5a; if write { len } else { 0 }];
                let sqe = commands::io(IoOpcode::Write, 1, 0, 1);
                let full = !h.can_submit();
                match h.submit(sqe, &payload, if write { 0 } else { len }) {
                    Ok(cid) => {
                        assert!(!full);
                        assert!(!by_cid.contains_key(&cid), "CID {cid:#x} given twice");
                        by_cid.insert(
                            cid,
                            Outstanding {
                                slot: None,
                                read_len: if write { 0 } else { len },
                                sent: false,
                                answered: false,
                            },
                        );
                    }
                    Err(SubmitError::Full) => assert!(full),
                    Err(SubmitError::TooLong { len: l, .. }) => {
                        assert_eq!(l, len);
                        assert!(len > data_len);
                    }
                    Err(SubmitError::Unregistered) => assert!(!keyed && len > 0),
                }
                assert!(h.outstanding() <= usize::from(depth));
            }
            1 => {
                // The transport posts a SEND.
                if let Some(s) = h.next_send() {
                    assert!(s.slot < usize::from(depth));
                    assert_eq!(s.offset, s.slot * capsule_len);
                    assert!(s.len >= SQE_LEN && s.len <= capsule_len);
                    let capsule = &h.memory(Region::Capsules)[s.offset..s.offset + s.len];
                    let sqe = Sqe::new_checked(&capsule[..SQE_LEN]).unwrap();
                    let cid = sqe.cid();
                    let o = by_cid.get_mut(&cid).expect("a SEND of a command submitted");
                    assert!(o.slot.is_none(), "one SEND per command");
                    o.slot = Some(s.slot);
                    match sqe.sgl().unwrap() {
                        SglRepr::InCapsule { offset, length } => {
                            assert_eq!(offset, 0);
                            assert_eq!(s.len, SQE_LEN + length as usize);
                            assert!(length as usize <= in_capsule);
                        }
                        SglRepr::Keyed {
                            address,
                            length,
                            key,
                            invalidate,
                        } => {
                            assert!(!invalidate);
                            assert_eq!(s.len, SQE_LEN);
                            if length > 0 {
                                assert_eq!(key, RKEY);
                                let own = BASE + (s.slot * data_len) as u64;
                                assert!(address >= own);
                                assert!(address + u64::from(length) <= own + data_len as u64);
                            }
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
            2 => {
                // A SEND completes: a posted one, or any slot.
                let slot = usize::from(input.byte());
                let posted = by_cid
                    .iter()
                    .find(|(_, o)| o.slot == Some(slot) && !o.sent)
                    .map(|(&c, _)| c);
                match (h.send_done(slot), posted) {
                    (Ok(()), Some(cid)) => by_cid.get_mut(&cid).unwrap().sent = true,
                    (Ok(()), None) => panic!("a SEND of slot {slot} completed that was not posted"),
                    (Err(_), Some(_)) => panic!("the posted SEND of slot {slot} was refused"),
                    (Err(_), None) => {}
                }
            }
            _ => {
                // A response, naming an outstanding command (by its CID, or a near one), or
                // arbitrary; of some length, in some receive.
                let cid = match input.byte() % 3 {
                    0 => {
                        let n = usize::from(input.byte());
                        let mut cids: Vec<u16> = by_cid.keys().copied().collect();
                        cids.sort_unstable();
                        cids.get(n % cids.len().max(1)).copied().unwrap_or(0)
                    }
                    1 => input.u16(),
                    _ => by_cid.keys().next().copied().unwrap_or(0) ^ 0x1000,
                };
                let i = usize::from(input.byte()) % (receives + 1);
                let len = if input.byte() % 8 == 0 {
                    usize::from(input.byte() % 16)
                } else {
                    RESPONSE_LEN
                };
                if i < receives {
                    let at = h.response_offset(i);
                    let cqe = CqeRepr::new(cid, 1, 0, Status::SUCCESS).to_bytes();
                    h.memory_mut(Region::Responses)[at..at + RESPONSE_LEN].copy_from_slice(&cqe);
                }
                let expected = by_cid
                    .get(&cid)
                    .is_some_and(|o| o.slot.is_some() && !o.answered);
                let r = h.response(i, len);
                if r.is_ok() {
                    assert!(expected && i < receives && len >= RESPONSE_LEN);
                    by_cid.get_mut(&cid).unwrap().answered = true;
                } else if expected && i < receives && len >= RESPONSE_LEN {
                    panic!("a response for CID {cid:#x} was refused: {r:?}");
                } else {
                    // The queue pair ends on a response that matches nothing.
                    failed = true;
                }
            }
        }
        while let Some(c) = h.completion() {
            let o = by_cid
                .remove(&c.cid)
                .expect("a completion of a command outstanding");
            assert!(o.sent && o.answered, "{o:?} completed early");
            assert_eq!(c.data.len(), o.read_len);
        }
        assert_eq!(h.outstanding(), by_cid.len());
    }
});
