//! The host end of an NVMe/TCP connection, sans-I/O: the initiator that tests and
//! `xdp-target perf` use to drive a controller (ours or another).
//!
//! [`HostQueue::submit`] queues a command capsule (with in-capsule data, or data the
//! controller fetches with R2Ts); [`HostQueue::receive`] takes the controller's bytes,
//! answers R2Ts with H2CData (split at MAXH2CDATA), collects C2HData and yields
//! [`Completion`]s. Everything the controller sends is checked by the same
//! [`PduReader`] the controller uses, in its host role.

use std::collections::{HashMap, VecDeque};

use target_wire::nvme::cqe::{Cqe, CqeRepr};
use target_wire::nvme::sgl::SglRepr;
use target_wire::nvme::sqe::Sqe;
use target_wire::nvme::status::{GenericStatus, Status};
use target_wire::nvme_tcp::{
    DataRepr, Fes, IcRepr, PduType, TermReqRepr, data_digest, emit_common_header, flags,
    put_header_digest,
};

use super::Fatal;
use super::reader::{Event, PduReader, ReaderConfig, Role};

/// A finished command: its completion entry and the data the controller returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub cid: u16,
    pub cqe: CqeRepr,
    pub data: Vec<u8>,
}

/// Why the connection is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The controller sent something malformed (what we would put in an H2CTermReq).
    Protocol(Fatal),
    /// The controller terminated the connection.
    Terminated { fes: Fes, fei: u32 },
    /// The controller referred to a command we do not have outstanding, or sent data
    /// outside the command's buffer.
    Unexpected(&'static str),
}

#[derive(Debug)]
struct Pending {
    /// Data for the controller (sent in the capsule or on R2T).
    write: Vec<u8>,
    /// Data from the controller, as long as the command's buffer.
    read: Vec<u8>,
}

/// Current PDU being received.
#[derive(Clone, Copy, Debug)]
enum Current {
    None,
    C2hData {
        cid: u16,
        at: usize,
        end: usize,
        success: bool,
    },
    Header([u8; 24], PduType),
}

pub struct HostQueue {
    reader: PduReader,
    digests: (bool, bool),
    max_h2c_data: usize,
    established: bool,
    pending: HashMap<u16, Pending>,
    next_cid: u16,
    current: Current,
    out: Vec<u8>,
    completions: VecDeque<Completion>,
}

impl HostQueue {
    /// A new connection; the ICReq (asking for the given digests) is queued at once.
    pub fn new(header_digest: bool, data_digest: bool) -> Self {
        let config = ReaderConfig {
            role: Role::Host,
            header_digest: false,
            data_digest: false,
            pda_bytes: 4,
            max_in_capsule: 0,
            max_data_pdu: 1 << 24,
        };
        let mut q = Self {
            reader: PduReader::new(config),
            digests: (header_digest, data_digest),
            max_h2c_data: 4096,
            established: false,
            pending: HashMap::new(),
            next_cid: 0,
            current: Current::None,
            out: Vec::new(),
            completions: VecDeque::new(),
        };
        let mut icreq = [0u8; 128];
        IcRepr {
            pfv: 0,
            pda: 0,
            header_digest,
            data_digest,
            max: 0,
        }
        .emit(PduType::IcReq, &mut icreq)
        .expect("128 bytes fit");
        q.out.extend_from_slice(&icreq);
        q
    }

    /// Whether the ICResp arrived.
    pub fn established(&self) -> bool {
        self.established
    }

    /// The digests the controller granted.
    pub fn digests(&self) -> (bool, bool) {
        self.digests
    }

    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    pub fn completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// Queues a command. `write` goes to the controller (in the capsule when
    /// `in_capsule`, else on R2T); `read_len` is the buffer for data from it. Returns the
    /// command identifier it was given.
    pub fn submit(
        &mut self,
        mut sqe: [u8; 64],
        write: Vec<u8>,
        in_capsule: bool,
        read_len: usize,
    ) -> u16 {
        let cid = self.allocate_cid();
        let in_capsule = in_capsule && !write.is_empty();
        {
            let mut s = Sqe::new_unchecked(&mut sqe[..]);
            s.set_cid(cid);
            let length = u32::try_from(if write.is_empty() {
                read_len
            } else {
                write.len()
            })
            .unwrap_or(u32::MAX);
            let sgl = if in_capsule {
                SglRepr::InCapsule { offset: 0, length }
            } else {
                SglRepr::Transport { length }
            };
            s.set_sgl(&sgl).expect("16-byte descriptor");
        }
        let (hd, dd) = self.digests;
        let data: &[u8] = if in_capsule { &write } else { &[] };
        let header_end = 72 + if hd { 4 } else { 0 };
        let start = self.out.len();
        let pdo = if data.is_empty() { 0 } else { header_end as u8 };
        self.out.resize(start + header_end, 0);
        emit_common_header(
            &mut self.out[start..],
            PduType::CapsuleCmd,
            0,
            hd,
            dd,
            pdo,
            data.len(),
        )
        .expect("capsule header fits");
        self.out[start + 8..start + 72].copy_from_slice(&sqe);
        if hd {
            put_header_digest(&mut self.out[start..], 72).expect("room for the digest");
        }
        self.out.extend_from_slice(data);
        if dd && !data.is_empty() {
            self.out.extend_from_slice(&data_digest(data));
        }
        self.pending.insert(
            cid,
            Pending {
                write,
                read: vec![0; read_len],
            },
        );
        cid
    }

    fn allocate_cid(&mut self) -> u16 {
        loop {
            self.next_cid = self.next_cid.wrapping_add(1);
            if !self.pending.contains_key(&self.next_cid) {
                return self.next_cid;
            }
        }
    }

    /// Takes bytes from the controller.
    pub fn receive(&mut self, mut input: &[u8]) -> Result<(), HostError> {
        while let Some(ev) = self.reader.next(&mut input).map_err(HostError::Protocol)? {
            match ev {
                Event::Header(h) => self.header(h.bytes(), h.layout.pdu_type)?,
                Event::Data(d) => {
                    if let Current::C2hData {
                        cid,
                        at,
                        end,
                        success,
                    } = self.current
                    {
                        let p = self
                            .pending
                            .get_mut(&cid)
                            .ok_or(HostError::Unexpected("C2HData for no command"))?;
                        p.read[at..at + d.len()].copy_from_slice(d);
                        self.current = Current::C2hData {
                            cid,
                            at: at + d.len(),
                            end,
                            success,
                        };
                    }
                }
                Event::End { data_digest_ok } => {
                    if !data_digest_ok {
                        return Err(HostError::Unexpected("data digest mismatch"));
                    }
                    self.end()?;
                }
            }
        }
        Ok(())
    }

    fn header(&mut self, h: &[u8], t: PduType) -> Result<(), HostError> {
        match t {
            PduType::IcResp => {
                let r = IcRepr::parse(h).map_err(|_| HostError::Unexpected("bad ICResp"))?;
                self.digests = (r.header_digest, r.data_digest);
                self.max_h2c_data = r.max as usize;
                self.reader.initialized(ReaderConfig {
                    role: Role::Host,
                    header_digest: r.header_digest,
                    data_digest: r.data_digest,
                    pda_bytes: (usize::from(r.pda) + 1) * 4,
                    max_in_capsule: 0,
                    max_data_pdu: 1 << 24,
                });
                self.established = true;
                self.current = Current::None;
            }
            PduType::C2hData => {
                let d = DataRepr::parse(h).map_err(|_| HostError::Unexpected("bad C2HData"))?;
                let p = self
                    .pending
                    .get(&d.cccid)
                    .ok_or(HostError::Unexpected("C2HData for no command"))?;
                let at = d.offset as usize;
                let end = at + d.length as usize;
                if end > p.read.len() {
                    return Err(HostError::Unexpected("C2HData beyond the command's buffer"));
                }
                let success = h[1] & flags::SUCCESS != 0;
                self.current = Current::C2hData {
                    cid: d.cccid,
                    at,
                    end,
                    success,
                };
            }
            _ => {
                let mut hdr = [0u8; 24];
                let n = h.len().min(24);
                hdr[..n].copy_from_slice(&h[..n]);
                self.current = Current::Header(hdr, t);
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), HostError> {
        match std::mem::replace(&mut self.current, Current::None) {
            Current::None => {}
            Current::C2hData {
                cid,
                at,
                end,
                success,
            } => {
                if at != end {
                    return Err(HostError::Unexpected("short C2HData"));
                }
                if success {
                    let p = self
                        .pending
                        .remove(&cid)
                        .ok_or(HostError::Unexpected("C2HData for no command"))?;
                    let cqe = CqeRepr::new(cid, 0, 0, Status::generic(GenericStatus::Success));
                    self.completions.push_back(Completion {
                        cid,
                        cqe,
                        data: p.read,
                    });
                }
            }
            Current::Header(h, PduType::CapsuleResp) => {
                let cqe = CqeRepr::parse(&Cqe::new_checked(&h[8..24]).expect("16 bytes"))
                    .map_err(|_| HostError::Unexpected("bad CQE"))?;
                let p = self
                    .pending
                    .remove(&cqe.cid)
                    .ok_or(HostError::Unexpected("response for no command"))?;
                self.completions.push_back(Completion {
                    cid: cqe.cid,
                    cqe,
                    data: p.read,
                });
            }
            Current::Header(h, PduType::R2t) => {
                let r = DataRepr::parse(&h).map_err(|_| HostError::Unexpected("bad R2T"))?;
                self.answer_r2t(&r)?;
            }
            Current::Header(h, PduType::C2hTermReq) => {
                let t = TermReqRepr::parse(&h).map_err(|_| HostError::Unexpected("bad TermReq"))?;
                return Err(HostError::Terminated {
                    fes: t.fes,
                    fei: t.fei,
                });
            }
            Current::Header(..) => return Err(HostError::Unexpected("PDU a host does not expect")),
        }
        Ok(())
    }

    fn answer_r2t(&mut self, r: &DataRepr) -> Result<(), HostError> {
        let p = self
            .pending
            .get(&r.cccid)
            .ok_or(HostError::Unexpected("R2T for no command"))?;
        let start = r.offset as usize;
        let end = start + r.length as usize;
        if end > p.write.len() || r.length == 0 {
            return Err(HostError::Unexpected("R2T beyond the command's data"));
        }
        let (hd, dd) = self.digests;
        let chunk_max = self.max_h2c_data.max(4096);
        let mut at = start;
        while at < end {
            let n = chunk_max.min(end - at);
            let last = at + n == end;
            let header_end = 24 + if hd { 4 } else { 0 };
            let base = self.out.len();
            self.out.resize(base + header_end, 0);
            DataRepr {
                pdu_type: PduType::H2cData,
                cccid: r.cccid,
                ttag: r.ttag,
                offset: at as u32,
                length: n as u32,
            }
            .emit(
                if last { flags::LAST_PDU } else { 0 },
                hd,
                dd,
                &mut self.out[base..],
            )
            .expect("24 bytes fit");
            if hd {
                put_header_digest(&mut self.out[base..], 24).expect("room for the digest");
            }
            let p = &self.pending[&r.cccid];
            let data = &p.write[at..at + n];
            self.out.extend_from_slice(data);
            if dd {
                self.out.extend_from_slice(&data_digest(data));
            }
            at += n;
        }
        Ok(())
    }
}

/// The commands a host session sends, as SQEs (and data) ready for [`HostQueue::submit`].
pub mod commands {
    use target_wire::nvme::fabrics::{
        ConnectData, ConnectRepr, PropertyGetRepr, PropertySetRepr, PropertySize,
    };
    use target_wire::nvme::opcode::{AdminOpcode, IoOpcode};
    use target_wire::nvme::properties::{CC, Cc};
    use target_wire::nvme::sqe::{DSM_RANGE_LEN, DsmAttributes, DsmRange, Sqe};

    /// Fabrics Connect for queue `qid` (0: admin, a new controller when `cntlid` is
    /// FFFFh) with `sqsize` + 1 entries, and its 1024-byte data; `None` when an NQN does
    /// not fit its field.
    pub fn connect(
        qid: u16,
        cntlid: u16,
        sqsize: u16,
        kato_ms: u32,
        subnqn: &str,
        hostnqn: &str,
    ) -> Option<([u8; 64], Vec<u8>)> {
        let mut sqe = [0u8; 64];
        ConnectRepr {
            recfmt: 0,
            qid,
            sqsize,
            cattr: 0,
            kato: kato_ms,
        }
        .emit(&mut Sqe::new_unchecked(&mut sqe[..]));
        let mut data = vec![0u8; 1024];
        let mut d = ConnectData::new_unchecked(&mut data[..]);
        d.set_cntlid(cntlid);
        d.set_subnqn(subnqn).ok()?;
        d.set_hostnqn(hostnqn).ok()?;
        Some((sqe, data))
    }

    pub fn property_get(offset: u32, size: PropertySize) -> [u8; 64] {
        let mut sqe = [0u8; 64];
        PropertyGetRepr { size, offset }.emit(&mut Sqe::new_unchecked(&mut sqe[..]));
        sqe
    }

    /// Property Set CC: enabled, with 64-byte SQEs and 16-byte CQEs, as Linux writes it.
    pub fn enable() -> [u8; 64] {
        let cc = Cc(0).with_en(true).with_iosqes(6).with_iocqes(4);
        let mut sqe = [0u8; 64];
        PropertySetRepr {
            size: PropertySize::Four,
            offset: CC,
            value: u64::from(cc.0),
        }
        .emit(&mut Sqe::new_unchecked(&mut sqe[..]));
        sqe
    }

    pub fn admin(op: AdminOpcode, nsid: u32, cdw10: u32, cdw11: u32) -> [u8; 64] {
        let mut sqe = [0u8; 64];
        let mut s = Sqe::new_unchecked(&mut sqe[..]);
        s.set_opcode(op.into());
        s.set_nsid(nsid);
        s.set_cdw10(cdw10);
        s.set_cdw11(cdw11);
        sqe
    }

    /// Dataset Management with Deallocate of one range, `blocks` blocks at `slba`, and its
    /// 16-byte range data (NVM Command Set 1.0, 3.2.3).
    pub fn deallocate(nsid: u32, slba: u64, blocks: u32) -> ([u8; 64], Vec<u8>) {
        let mut sqe = [0u8; 64];
        let mut s = Sqe::new_unchecked(&mut sqe[..]);
        s.set_opcode(IoOpcode::DatasetManagement.into());
        s.set_nsid(nsid);
        s.set_dsm_range_count(1);
        let ad = DsmAttributes {
            ad: true,
            ..DsmAttributes::default()
        };
        s.set_cdw11(ad.into());
        let mut data = vec![0u8; DSM_RANGE_LEN];
        let mut r = DsmRange::new_unchecked(&mut data[..]);
        r.set_nlb(blocks);
        r.set_slba(slba);
        (sqe, data)
    }

    /// An NVM I/O command on `blocks` blocks (1-based) at `slba`.
    pub fn io(op: IoOpcode, nsid: u32, slba: u64, blocks: u32) -> [u8; 64] {
        let mut sqe = [0u8; 64];
        let mut s = Sqe::new_unchecked(&mut sqe[..]);
        s.set_opcode(op.into());
        s.set_nsid(nsid);
        s.set_slba(slba);
        s.set_cdw12(blocks.saturating_sub(1));
        sqe
    }
}

#[cfg(test)]
mod tests {
    use target_wire::nvme::opcode::IoOpcode;
    use target_wire::nvme::sqe::{Sqe, dsm_range};

    #[test]
    fn deallocate_is_one_range_with_the_ad_bit() {
        let (sqe, data) = super::commands::deallocate(3, 0x0012_3456_789a, 16);
        let s = Sqe::new_checked(&sqe[..]).expect("64 bytes");
        assert_eq!(s.opcode(), u8::from(IoOpcode::DatasetManagement));
        assert_eq!(s.nsid(), 3);
        assert_eq!(s.dsm_range_count(), 1);
        assert_eq!(s.cdw10(), 0, "NR is 0-based");
        assert_eq!(s.cdw11(), 4, "AD alone");
        assert_eq!(data.len(), 16);
        let r = dsm_range(&data, 0).expect("one range");
        assert_eq!(
            (r.context_attributes(), r.nlb(), r.slba()),
            (0, 16, 0x0012_3456_789a)
        );
        assert_eq!(&data[4..8], &16u32.to_le_bytes(), "NLB at byte 4");
        assert_eq!(
            &data[8..16],
            &0x0012_3456_789au64.to_le_bytes(),
            "SLBA at byte 8"
        );
    }
}
