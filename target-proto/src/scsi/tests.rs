//! Drives [`ScsiTarget`] with CDB byte vectors against an in-memory disk that executes
//! every [`BlockIo`] the tasks return, and checks status, sense and data.

use super::*;

const BS: usize = 512;
const BLOCKS: u64 = 2048;

fn cfg(lun: u64) -> LunConfig {
    LunConfig {
        lun,
        block_size: BS as u32,
        blocks: BLOCKS,
        backend: 7,
        volatile_write_cache: true,
        thin: true,
        read_only: false,
        identity: [0xab; 16],
        vendor: "XDPT".into(),
        product: "xdp-target".into(),
        revision: "0001".into(),
    }
}

fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_port: format!("iqn.2024-01.test:init{id},i,0x23d00000000{id}"),
        target_port: "iqn.2024-01.test:target,t,0x0001".into(),
        relative_port: 1,
    }
}

struct Harness {
    target: ScsiTarget,
    disks: Vec<Vec<u8>>,
    ios: Vec<BlockIo>,
}

#[derive(Debug)]
struct Out {
    status: u8,
    sense: Vec<u8>,
    data: Vec<u8>,
}

impl Out {
    /// (sense key, ASC, ASCQ) from either sense format.
    fn sense_code(&self) -> (u8, u8, u8) {
        match self.sense.first() {
            Some(0x70 | 0xf0) => (self.sense[2] & 0x0f, self.sense[12], self.sense[13]),
            Some(0x72) => (self.sense[1] & 0x0f, self.sense[2], self.sense[3]),
            _ => (0, 0, 0),
        }
    }

    fn good(&self) -> bool {
        self.status == status::GOOD && self.sense.is_empty()
    }

    fn check(&self, k: u8, asc: Asc) -> bool {
        self.status == status::CHECK_CONDITION && self.sense_code() == (k, asc.0, asc.1)
    }
}

impl Harness {
    fn new(cfgs: Vec<LunConfig>) -> Self {
        let disks = cfgs
            .iter()
            .map(|c| vec![0u8; c.capacity_bytes() as usize])
            .collect();
        Self {
            target: ScsiTarget::new(cfgs),
            disks,
            ios: Vec::new(),
        }
    }

    fn one() -> Self {
        Self::new(vec![cfg(0)])
    }

    fn run(&mut self, n: &Nexus, lun: u64, cdb: &[u8], data_out: &[u8]) -> Out {
        let mut task = self.target.command(n, lun, cdb);
        let mut buf = AlignedBuf::default();
        let out_len = task.data_out_len().min(data_out.len());
        buf.set_len(out_len);
        buf.as_mut_slice().copy_from_slice(&data_out[..out_len]);
        let mut outcome = None;
        for _ in 0..10_000 {
            match task.step(&mut buf, outcome) {
                Step::Done(c) => {
                    assert!(c.data_in <= buf.as_slice().len());
                    if c.status != status::CHECK_CONDITION {
                        assert!(c.sense.is_empty());
                    }
                    return Out {
                        status: c.status,
                        sense: c.sense,
                        data: buf.as_slice()[..c.data_in].to_vec(),
                    };
                }
                Step::Io(io) => {
                    outcome = Some(self.execute(&io, &mut buf));
                    self.ios.push(io);
                }
                Step::Aborted => panic!("no other nexus aborts tasks run to the end here"),
                Step::Wait => outcome = None,
            }
        }
        panic!("task never finished");
    }

    fn execute(&mut self, io: &BlockIo, buf: &mut AlignedBuf) -> IoOutcome {
        let i = self
            .target
            .luns()
            .iter()
            .position(|l| l.config().lun == u64::from(io.nsid))
            .expect("I/O for a LUN that exists");
        assert_eq!(io.backend, self.target.luns()[i].config().backend);
        let disk = &mut self.disks[i];
        let size = disk.len() as u64;
        let within = |o: u64, l: u64| {
            assert!(o + l <= size, "I/O {o}+{l} outside the disk");
            (o as usize, (o + l) as usize)
        };
        match &io.op {
            BlockOp::Read { offset, len } => {
                let (a, b) = within(*offset, *len);
                assert!(buf.as_slice().len() >= b - a);
                buf.as_mut_slice()[..b - a].copy_from_slice(&disk[a..b]);
                IoOutcome::Ok
            }
            BlockOp::Write { offset, len, .. } => {
                let (a, b) = within(*offset, *len);
                disk[a..b].copy_from_slice(&buf.as_slice()[..b - a]);
                IoOutcome::Ok
            }
            BlockOp::Compare { offset, len } => {
                let (a, b) = within(*offset, *len);
                if disk[a..b] == buf.as_slice()[..b - a] {
                    IoOutcome::Ok
                } else {
                    IoOutcome::Miscompare
                }
            }
            BlockOp::WriteZeroes { offset, len, .. } => {
                let (a, b) = within(*offset, *len);
                disk[a..b].fill(0);
                IoOutcome::Ok
            }
            BlockOp::Deallocate { ranges } => {
                for (o, l) in ranges {
                    let (a, b) = within(*o, *l);
                    disk[a..b].fill(0);
                }
                IoOutcome::Ok
            }
            BlockOp::Flush | BlockOp::FlushAll { .. } => IoOutcome::Ok,
        }
    }
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x28, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

fn write10(lba: u32, blocks: u16, flags: u8) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c[1] = flags;
    c
}

fn cdb16(opcode: u8, flags: u8, lba: u64, count: u32) -> Vec<u8> {
    let mut c = vec![opcode, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&count.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn test_unit_ready_and_unknown_opcode() {
    let mut h = Harness::one();
    let n = nexus(1);
    assert!(h.run(&n, 0, &[0; 6], &[]).good());
    let o = h.run(
        &n,
        0,
        &[0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
    );
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_COMMAND_OPERATION_CODE));
    let o = h.run(&n, 0, &[0x5c, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_COMMAND_OPERATION_CODE));
    assert!(
        h.run(&n, 0, &[], &[])
            .check(key::ILLEGAL_REQUEST, Asc::INVALID_COMMAND_OPERATION_CODE)
    );
    // NACA is not supported.
    let o = h.run(&n, 0, &[0, 0, 0, 0, 0, 0x04], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
}

#[test]
fn inquiry_standard_and_evpd_errors() {
    let mut h = Harness::one();
    let n = nexus(1);
    let o = h.run(&n, 0, &[0x12, 0, 0, 0x01, 0x04, 0], &[]);
    assert!(o.good());
    assert_eq!(o.data.len(), 74);
    assert_eq!(o.data[0], 0);
    assert_eq!(o.data[2], 6);
    assert_eq!(o.data[3] & 0x0f, 2);
    assert_eq!(usize::from(o.data[4]), o.data.len() - 5);
    assert_eq!(&o.data[8..16], b"XDPT    ");
    assert_eq!(&o.data[16..32], b"xdp-target      ");
    assert!(o.data[58..74].windows(2).any(|w| w == [0x04, 0xc0]));
    // Allocation length cuts the data.
    let o = h.run(&n, 0, &[0x12, 0, 0, 0, 36, 0], &[]);
    assert_eq!(o.data.len(), 36);
    // EVPD=0 with a page code: INVALID FIELD IN CDB pointing at byte 2 of the CDB.
    let o = h.run(&n, 0, &[0x12, 0, 0x80, 0, 0xff, 0], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
    assert_eq!(o.sense[15], 0xc0);
    assert_eq!(&o.sense[16..18], &[0, 2]);
    // Unsupported VPD page.
    let o = h.run(&n, 0, &[0x12, 1, 0xc7, 0, 0xff, 0], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
}

#[test]
fn vpd_pages() {
    let mut h = Harness::one();
    let n = nexus(1);
    let vpd = |h: &mut Harness, page: u8| {
        let o = h.run(&n, 0, &[0x12, 1, page, 1, 0, 0], &[]);
        assert!(o.good(), "page {page:#x}");
        assert_eq!(o.data[1], page);
        assert_eq!(
            usize::from(u16::from_be_bytes([o.data[2], o.data[3]])),
            o.data.len() - 4
        );
        o.data
    };
    assert_eq!(&vpd(&mut h, 0)[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    assert_eq!(&vpd(&mut h, 0x80)[4..], "ab".repeat(16).as_bytes());
    let id = vpd(&mut h, 0x83);
    // First designator: NAA (type 3), binary, 16 bytes starting with NAA 6.
    assert_eq!(&id[4..8], &[0x01, 0x03, 0x00, 0x10]);
    assert_eq!(id[8] >> 4, 6);
    let bl = vpd(&mut h, 0xb0);
    assert_eq!(bl.len(), 0x40);
    assert_eq!(u32::from_be_bytes(bl[8..12].try_into().unwrap()), 8192);
    assert_eq!(
        u32::from_be_bytes(bl[20..24].try_into().unwrap()),
        MAX_UNMAP_BLOCKS
    );
    assert!(bl[5] >= 1);
    let bc = vpd(&mut h, 0xb1);
    assert_eq!(&bc[4..6], &[0, 1]);
    let lbp = vpd(&mut h, 0xb2);
    assert_eq!(lbp[5] & 0xe4, 0xe4);
    assert_eq!(lbp[6] & 0x07, 2);
}

#[test]
fn read_capacity() {
    let mut h = Harness::one();
    let n = nexus(1);
    let o = h.run(&n, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(o.data, [0, 0, 0x07, 0xff, 0, 0, 0x02, 0]);
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[13] = 32;
    let o = h.run(&n, 0, &c, &[]);
    assert_eq!(o.data.len(), 32);
    assert_eq!(
        &o.data[..12],
        &[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 0x02, 0]
    );
    assert_eq!(o.data[14] & 0xc0, 0xc0); // LBPME, LBPRZ
    c[13] = 8;
    assert_eq!(h.run(&n, 0, &c, &[]).data.len(), 8);
    // A huge logical unit reports FFFFFFFFh in READ CAPACITY (10).
    let mut big = cfg(0);
    big.blocks = 1 << 33;
    assert_eq!(&inquiry::read_capacity10(&big)[..4], &[0xff; 4]);
}

#[test]
fn write_read_round_trip_and_fua() {
    let mut h = Harness::one();
    let n = nexus(1);
    let data = pattern(4 * BS, 1);
    assert!(h.run(&n, 0, &write10(10, 4, 0x08), &data).good());
    assert_eq!(
        h.ios.last().unwrap().op,
        BlockOp::Write {
            offset: 10 * BS as u64,
            len: 4 * BS as u64,
            fua: true
        }
    );
    assert_eq!(h.run(&n, 0, &read10(10, 4), &[]).data, data);
    let o = h.run(&n, 0, &cdb16(0x88, 0, 11, 2), &[]);
    assert_eq!(o.data, data[BS..3 * BS]);
    // READ(6) of 0 blocks means 256.
    let o = h.run(&n, 0, &[0x08, 0, 0, 0, 0, 0], &[]);
    assert_eq!(o.data.len(), 256 * BS);
    // WRITE(16) and READ(12).
    let d2 = pattern(BS, 9);
    assert!(h.run(&n, 0, &cdb16(0x8a, 0, BLOCKS - 1, 1), &d2).good());
    let o = h.run(&n, 0, &[0xa8, 0, 0, 0, 0x07, 0xff, 0, 0, 0, 1, 0, 0], &[]);
    assert_eq!(o.data, d2);
}

#[test]
fn ranges_and_fields() {
    let mut h = Harness::one();
    let n = nexus(1);
    let oob = |o: Out| o.check(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    assert!(oob(h.run(&n, 0, &read10(BLOCKS as u32 - 1, 2), &[])));
    assert!(oob(h.run(&n, 0, &read10(BLOCKS as u32 + 1, 0), &[])));
    assert!(oob(h.run(&n, 0, &read10(u32::MAX, 0), &[])));
    assert!(oob(h.run(&n, 0, &cdb16(0x88, 0, u64::MAX, 1), &[])));
    assert!(h.run(&n, 0, &read10(BLOCKS as u32, 0), &[]).good());
    assert!(h.run(&n, 0, &read10(0, 0), &[]).good());
    assert!(h.ios.is_empty());
    // RDPROTECT / WRPROTECT without protection information.
    let mut c = read10(0, 1);
    c[1] = 0x20;
    assert!(
        h.run(&n, 0, &c, &[])
            .check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
    );
    let o = h.run(&n, 0, &write10(0, 1, 0x40), &[0; BS]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
    // Transfers over the block limits (on a unit large enough for the range).
    let mut big = Harness::new(vec![LunConfig {
        blocks: 16384,
        ..cfg(0)
    }]);
    let o = big.run(&n, 0, &read10(0, 8193), &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
    assert!(big.run(&n, 0, &read10(0, 8192), &[]).good());
}

#[test]
fn read_only_unit() {
    let mut c = cfg(0);
    c.read_only = true;
    let mut h = Harness::new(vec![c]);
    let n = nexus(1);
    let o = h.run(&n, 0, &write10(0, 1, 0), &[0; BS]);
    assert!(o.check(key::DATA_PROTECT, Asc::WRITE_PROTECTED));
    let o = h.run(&n, 0, &[0x1a, 0, 0x3f, 0, 0xff, 0], &[]);
    assert_eq!(o.data[2] & 0x80, 0x80);
    assert!(h.run(&n, 0, &read10(0, 1), &[]).good());
}

#[test]
fn report_luns_and_missing_lun() {
    let mut h = Harness::new(vec![cfg(3), cfg(0)]);
    let n = nexus(1);
    let c = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0];
    let o = h.run(&n, 9, &c, &[]);
    assert!(o.good());
    assert_eq!(&o.data[..4], &[0, 0, 0, 16]);
    assert_eq!(&o.data[8..10], &[0, 0]);
    assert_eq!(&o.data[16..18], &[0, 3]);
    let o = h.run(&n, 0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
    // INQUIRY to a missing LUN: qualifier 011b, type 1Fh.
    let o = h.run(&n, 9, &[0x12, 0, 0, 0, 0xff, 0], &[]);
    assert!(o.good());
    assert_eq!(o.data[0], 0x7f);
    let o = h.run(&n, 9, &[0; 6], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LOGICAL_UNIT_NOT_SUPPORTED));
    let o = h.run(&n, 9, &[0x03, 0, 0, 0, 0xff, 0], &[]);
    assert!(o.good());
    assert_eq!(o.data[12], 0x25);
}

#[test]
fn unit_attention_after_lun_reset() {
    let mut h = Harness::one();
    let (a, b) = (nexus(1), nexus(2));
    assert!(h.run(&a, 0, &[0; 6], &[]).good());
    assert!(h.run(&b, 0, &[0; 6], &[]).good());
    h.target
        .task_management(&a, TaskManagement::LunReset, Some(0));
    // INQUIRY does not report or clear it.
    assert!(h.run(&b, 0, &[0x12, 0, 0, 0, 0xff, 0], &[]).good());
    let o = h.run(&b, 0, &[0; 6], &[]);
    assert!(o.check(key::UNIT_ATTENTION, Asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED));
    assert!(h.run(&b, 0, &[0; 6], &[]).good());
    // The issuer knows of its reset: no unit attention for it.
    let o = h.run(&a, 0, &[0x03, 0, 0, 0, 0xff, 0], &[]);
    assert!(o.good());
    assert_eq!((o.data[2], o.data[12], o.data[13]), (0, 0, 0));
    let o = h.run(&a, 0, &[0x03, 0, 0, 0, 0xff, 0], &[]);
    assert_eq!((o.data[2], o.data[12]), (key::NO_SENSE, 0));
    // A nexus that logs in afterwards has none.
    assert!(h.run(&nexus(3), 0, &[0; 6], &[]).good());
}

fn prout(sa: u8, kind: u8, key: u64, sark: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sark.to_be_bytes());
    p.resize(24, 0);
    (cdb, p)
}

#[test]
fn persistent_reservations() {
    let mut h = Harness::one();
    let (a, b) = (nexus(1), nexus(2));
    let run_pr = |h: &mut Harness, n: &Nexus, sa, kind, k, sark| {
        let (c, p) = prout(sa, kind, k, sark);
        h.run(n, 0, &c, &p)
    };
    assert!(run_pr(&mut h, &a, 0, 0, 0, 0xa).good());
    assert!(run_pr(&mut h, &b, 0, 0, 0, 0xb).good());
    // Registering again with a wrong key conflicts.
    assert_eq!(
        run_pr(&mut h, &b, 0, 0, 0x99, 0xc).status,
        status::RESERVATION_CONFLICT
    );
    let keys = h.run(&a, 0, &[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(&keys.data[4..8], &[0, 0, 0, 16]);
    assert_eq!(&keys.data[..4], &[0, 0, 0, 2]);
    // A reserves Write Exclusive; B may read but not write.
    assert!(run_pr(&mut h, &a, 1, 1, 0xa, 0).good());
    assert!(h.run(&b, 0, &read10(0, 1), &[]).good());
    let o = h.run(&b, 0, &write10(0, 1, 0), &[0; BS]);
    assert_eq!(o.status, status::RESERVATION_CONFLICT);
    assert!(h.run(&a, 0, &write10(0, 1, 0), &[0; BS]).good());
    let res = h.run(&b, 0, &[0x5e, 1, 0, 0, 0, 0, 0, 0, 0xff, 0], &[]);
    assert_eq!(&res.data[8..16], &0xau64.to_be_bytes());
    assert_eq!(res.data[21], 1);
    // B preempts A: A's registration goes, B holds Exclusive Access, A gets a UA.
    assert!(run_pr(&mut h, &b, 4, 3, 0xb, 0xa).good());
    let o = h.run(&a, 0, &[0; 6], &[]);
    assert!(o.check(key::UNIT_ATTENTION, Asc::REGISTRATIONS_PREEMPTED));
    assert_eq!(
        h.run(&a, 0, &read10(0, 1), &[]).status,
        status::RESERVATION_CONFLICT
    );
    // Releasing with the wrong type is an error; with the right one it works.
    let o = run_pr(&mut h, &b, 2, 1, 0xb, 0);
    assert!(o.check(
        key::ILLEGAL_REQUEST,
        Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION
    ));
    assert!(run_pr(&mut h, &b, 2, 3, 0xb, 0).good());
    assert!(h.run(&a, 0, &read10(0, 1), &[]).good());
    // APTPL is refused; CLEAR removes everything.
    let (c, mut p) = prout(0, 0, 0xb, 0xb);
    p[20] = 1;
    let o = h.run(&b, 0, &c, &p);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_PARAMETER_LIST));
    assert!(run_pr(&mut h, &b, 3, 0, 0xb, 0).good());
    let keys = h.run(&a, 0, &[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(&keys.data[4..8], &[0, 0, 0, 0]);
    // Registrations survive the nexus.
    assert!(run_pr(&mut h, &a, 6, 0, 0, 0x1).good());
    h.target.nexus_lost(&a);
    let keys = h.run(&b, 0, &[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(&keys.data[4..8], &[0, 0, 0, 8]);
}

#[test]
fn all_registrants_reservation() {
    let mut h = Harness::one();
    let (a, b, c) = (nexus(1), nexus(2), nexus(3));
    for (n, k) in [(&a, 1u64), (&b, 2)] {
        let (cdb, p) = prout(0, 0, 0, k);
        assert!(h.run(n, 0, &cdb, &p).good());
    }
    let (cdb, p) = prout(1, 8, 1, 0);
    assert!(h.run(&a, 0, &cdb, &p).good());
    // Every registrant holds it; a non-registrant has no access.
    assert!(h.run(&b, 0, &write10(0, 1, 0), &[0; BS]).good());
    assert_eq!(
        h.run(&c, 0, &read10(0, 1), &[]).status,
        status::RESERVATION_CONFLICT
    );
    let res = h.run(&c, 0, &[0x5e, 1, 0, 0, 0, 0, 0, 0, 0xff, 0], &[]);
    assert_eq!(&res.data[8..16], &[0; 8]);
    assert_eq!(res.data[21], 8);
    // A unregisters; the reservation stays while B is registered.
    let (cdb, p) = prout(0, 0, 1, 0);
    assert!(h.run(&a, 0, &cdb, &p).good());
    assert_eq!(
        h.run(&a, 0, &read10(0, 1), &[]).status,
        status::RESERVATION_CONFLICT
    );
    let (cdb, p) = prout(0, 0, 2, 0);
    assert!(h.run(&b, 0, &cdb, &p).good());
    assert!(h.run(&c, 0, &read10(0, 1), &[]).good());
}

#[test]
fn reserve6_conflicts_and_nexus_loss() {
    let mut h = Harness::one();
    let (a, b) = (nexus(1), nexus(2));
    assert!(h.run(&a, 0, &[0x16, 0, 0, 0, 0, 0], &[]).good());
    assert!(h.run(&a, 0, &[0; 6], &[]).good());
    assert_eq!(
        h.run(&b, 0, &[0; 6], &[]).status,
        status::RESERVATION_CONFLICT
    );
    assert!(h.run(&b, 0, &[0x12, 0, 0, 0, 0xff, 0], &[]).good());
    // RELEASE from another nexus does nothing.
    assert!(h.run(&b, 0, &[0x17, 0, 0, 0, 0, 0], &[]).good());
    assert_eq!(
        h.run(&b, 0, &read10(0, 1), &[]).status,
        status::RESERVATION_CONFLICT
    );
    h.target.nexus_lost(&a);
    assert!(h.run(&b, 0, &[0; 6], &[]).good());
    // With a PR registration, RESERVE(6) conflicts.
    let (cdb, p) = prout(0, 0, 0, 5);
    assert!(h.run(&b, 0, &cdb, &p).good());
    assert_eq!(
        h.run(&b, 0, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::RESERVATION_CONFLICT
    );
    // A LUN reset releases RESERVE(6).
    let (cdb, p) = prout(0, 0, 5, 0);
    assert!(h.run(&b, 0, &cdb, &p).good());
    assert!(h.run(&b, 0, &[0x16, 0, 0, 0, 0, 0], &[]).good());
    h.target
        .task_management(&b, TaskManagement::LunReset, Some(0));
    let c = nexus(3);
    assert!(h.run(&c, 0, &[0; 6], &[]).good());
}

/// PREEMPT AND ABORT (SPC-4 5.12.11.2.5) aborts every task of the preempted I_T nexuses:
/// none of them starts a block operation afterwards, and the command completes only once
/// the block operations they had in flight are back. Other nexuses' tasks, the issuer's
/// included, run on; plain PREEMPT aborts nothing.
#[test]
fn preempt_and_abort_aborts_the_preempted_nexuses_tasks() {
    let mut h = Harness::one();
    let (a, b, c) = (nexus(1), nexus(2), nexus(3));
    for (n, k) in [(&a, 0xau64), (&b, 0xb), (&c, 0xc)] {
        let (cdb, p) = prout(0, 0, 0, k);
        assert!(h.run(n, 0, &cdb, &p).good());
    }
    let (cdb, p) = prout(1, 1, 0xb, 0);
    assert!(h.run(&b, 0, &cdb, &p).good());
    let buf = |len: usize| {
        let mut b = AlignedBuf::default();
        b.set_len(len);
        b
    };
    // B (the holder): a write waiting for its data, a write and a read in flight. C and A:
    // a read in flight each.
    let mut b_waiting = h.target.command(&b, 0, &write10(0, 1, 0));
    let (mut b_write, mut b_write_buf) = (h.target.command(&b, 0, &write10(1, 1, 0)), buf(BS));
    assert!(matches!(b_write.step(&mut b_write_buf, None), Step::Io(_)));
    let (mut b_read, mut b_read_buf) = (h.target.command(&b, 0, &read10(0, 1)), buf(0));
    assert!(matches!(b_read.step(&mut b_read_buf, None), Step::Io(_)));
    let (mut c_read, mut c_read_buf) = (h.target.command(&c, 0, &read10(0, 1)), buf(0));
    assert!(matches!(c_read.step(&mut c_read_buf, None), Step::Io(_)));
    let (mut a_read, mut a_read_buf) = (h.target.command(&a, 0, &read10(0, 1)), buf(0));
    assert!(matches!(a_read.step(&mut a_read_buf, None), Step::Io(_)));

    // Plain PREEMPT of C's registration aborts nothing of C's.
    let (cdb, p) = prout(4, 1, 0xa, 0xc);
    assert!(h.run(&a, 0, &cdb, &p).good());
    assert!(!c_read.aborted());
    assert!(matches!(
        c_read.step(&mut c_read_buf, Some(IoOutcome::Ok)),
        Step::Done(_)
    ));

    // A preempts B and aborts B's tasks: it waits for B's two operations in flight.
    let (cdb, p) = prout(5, 1, 0xa, 0xb);
    let mut pa = h.target.command(&a, 0, &cdb);
    let mut pa_buf = buf(p.len());
    pa_buf.as_mut_slice().copy_from_slice(&p);
    assert_eq!(pa.step(&mut pa_buf, None), Step::Wait);
    assert!(b_waiting.aborted() && b_write.aborted() && !a_read.aborted());
    // B's waiting write never starts; its write in flight comes back aborted.
    let mut data = buf(BS);
    data.as_mut_slice().fill(0x77);
    assert_eq!(b_waiting.step(&mut data, None), Step::Aborted);
    assert_eq!(
        b_write.step(&mut b_write_buf, Some(IoOutcome::Ok)),
        Step::Aborted
    );
    assert_eq!(
        pa.step(&mut pa_buf, None),
        Step::Wait,
        "B's read is still out"
    );
    // A task dropped with its operation in flight (its connection went away) counts as
    // back.
    drop(b_read);
    let Step::Done(done) = pa.step(&mut pa_buf, None) else {
        panic!("PREEMPT AND ABORT completes once B's operations are back");
    };
    assert_eq!(done.status, status::GOOD);
    // The issuer's own task runs on.
    assert!(matches!(
        a_read.step(&mut a_read_buf, Some(IoOutcome::Ok)),
        Step::Done(_)
    ));
    // B learns of it; its new tasks run under A's reservation (Write Exclusive).
    let o = h.run(&b, 0, &[0; 6], &[]);
    assert!(o.check(key::UNIT_ATTENTION, Asc::REGISTRATIONS_PREEMPTED));
    assert!(h.run(&b, 0, &read10(0, 1), &[]).good());
    let o = h.run(&b, 0, &write10(0, 1, 0), &[0; BS]);
    assert_eq!(o.status, status::RESERVATION_CONFLICT);
    assert_eq!(h.disks[0][..BS], [0; BS], "B's aborted write never ran");

    // Nothing in flight: PREEMPT AND ABORT answers at once.
    let (cdb, p) = prout(0, 0, 0, 0xb);
    assert!(h.run(&b, 0, &cdb, &p).good());
    let (cdb, p) = prout(5, 3, 0xa, 0xb);
    assert!(h.run(&a, 0, &cdb, &p).good());
}

fn caw(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![0x89, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, blocks, 0, 0]);
    c
}

/// A reservation taken while a command waits for its data-out (an R2T can wait long) or
/// between the block operations of a multi-step command is checked again before each
/// block operation: RESERVATION CONFLICT, and nothing reaches the medium.
#[test]
fn reservation_taken_while_a_command_waits_is_checked_before_its_block_io() {
    let mut h = Harness::one();
    let (a, b) = (nexus(1), nexus(2));
    let mut buf = AlignedBuf::default();
    // B's WRITE arrives with no reservation held: it passes and waits for its data.
    let mut write = h.target.command(&b, 0, &write10(0, 1, 0));
    assert_eq!(write.data_out_len(), BS);
    // A registers and reserves Write Exclusive meanwhile.
    let (c, p) = prout(0, 0, 0, 0xa);
    assert!(h.run(&a, 0, &c, &p).good());
    let (c, p) = prout(1, 1, 0xa, 0);
    assert!(h.run(&a, 0, &c, &p).good());
    buf.set_len(BS);
    buf.as_mut_slice().fill(0x5a);
    let Step::Done(c) = write.step(&mut buf, None) else {
        panic!("B's write went to the medium under A's reservation");
    };
    assert_eq!(c.status, status::RESERVATION_CONFLICT);
    assert!(c.sense.is_empty());
    // A's own writes and B's reads still run under A's reservation.
    let mut read = h.target.command(&b, 0, &read10(0, 1));
    assert!(matches!(read.step(&mut buf, None), Step::Io(_)));
    assert!(h.run(&a, 0, &write10(1, 1, 0), &[7; BS]).good());

    // COMPARE AND WRITE: the reservation comes between the compare and the write half.
    let (c, p) = prout(2, 1, 0xa, 0);
    assert!(h.run(&a, 0, &c, &p).good());
    let mut cw = h.target.command(&b, 0, &caw(0, 1));
    buf.set_len(2 * BS);
    buf.as_mut_slice().fill(0);
    let Step::Io(io) = cw.step(&mut buf, None) else {
        panic!("the compare half runs");
    };
    assert!(matches!(io.op, BlockOp::Compare { .. }));
    let (c, p) = prout(1, 3, 0xa, 0);
    assert!(h.run(&a, 0, &c, &p).good());
    let Step::Done(c) = cw.step(&mut buf, Some(IoOutcome::Ok)) else {
        panic!("the write half went to the medium under A's reservation");
    };
    assert_eq!(c.status, status::RESERVATION_CONFLICT);
    // Released again: a command that waited across the release runs.
    let mut write = h.target.command(&a, 0, &write10(2, 1, 0));
    let (c, p) = prout(2, 3, 0xa, 0);
    assert!(h.run(&a, 0, &c, &p).good());
    buf.set_len(BS);
    assert!(matches!(write.step(&mut buf, None), Step::Io(_)));
}

#[test]
fn compare_and_write() {
    let mut h = Harness::one();
    let n = nexus(1);
    let old = pattern(2 * BS, 3);
    assert!(h.run(&n, 0, &write10(100, 2, 0), &old).good());
    let new = pattern(2 * BS, 4);
    let mut data = old.clone();
    data.extend_from_slice(&new);
    assert!(h.run(&n, 0, &caw(100, 2), &data).good());
    assert_eq!(h.run(&n, 0, &read10(100, 2), &[]).data, new);
    // Miscompare: INFORMATION is the offset of the first differing byte.
    let mut data = new.clone();
    data[700] ^= 0xff;
    data.extend_from_slice(&old);
    let o = h.run(&n, 0, &caw(100, 2), &data);
    assert!(o.check(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY));
    assert_eq!(o.sense[0], 0xf0);
    assert_eq!(&o.sense[3..7], &700u32.to_be_bytes());
    assert_eq!(h.run(&n, 0, &read10(100, 2), &[]).data, new);
    let o = h.run(&n, 0, &caw(BLOCKS - 1, 2), &[0; 4 * BS]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
    let o = h.run(&n, 0, &caw(0, 255), &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
}

#[test]
fn verify_bytchk() {
    let mut h = Harness::one();
    let n = nexus(1);
    let d = pattern(2 * BS, 5);
    assert!(h.run(&n, 0, &write10(5, 2, 0), &d).good());
    let mut c = read10(5, 2);
    c[0] = 0x2f;
    assert!(h.run(&n, 0, &c, &[]).good()); // BYTCHK=0
    c[1] = 0x02;
    assert!(h.run(&n, 0, &c, &d).good());
    let mut bad = d.clone();
    bad[BS + 3] ^= 1;
    let o = h.run(&n, 0, &c, &bad);
    assert!(o.check(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY));
    assert_eq!(&o.sense[3..7], &(BS as u32 + 3).to_be_bytes());
    let o = h.run(&n, 0, &cdb16(0x8f, 0x02, BLOCKS, 1), &[0; BS]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
    // WRITE AND VERIFY with BYTCHK=1 writes, then compares.
    let mut c = write10(20, 2, 0x02);
    c[0] = 0x2e;
    assert!(h.run(&n, 0, &c, &d).good());
    assert_eq!(h.run(&n, 0, &read10(20, 2), &[]).data, d);
}

#[test]
fn write_same_in_chunks() {
    let mut h = Harness::one();
    let n = nexus(1);
    let block = pattern(BS, 7);
    let blocks = 600u32; // 300 KiB: three chunks of at most 128 KiB
    let o = h.run(&n, 0, &cdb16(0x93, 0, 10, blocks), &block);
    assert!(o.good());
    let writes: Vec<_> = h
        .ios
        .iter()
        .filter_map(|io| match io.op {
            BlockOp::Write { len, .. } => Some(len),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 3);
    assert!(writes.iter().all(|l| *l <= WRITE_SAME_CHUNK_BYTES as u64));
    assert_eq!(writes.iter().sum::<u64>(), u64::from(blocks) * BS as u64);
    for b in [10usize, 300, 609] {
        assert_eq!(&h.disks[0][b * BS..(b + 1) * BS], &block[..]);
    }
    assert_eq!(&h.disks[0][610 * BS..611 * BS], &[0; BS]);
    // Zero data with UNMAP: one deallocating WriteZeroes.
    let mut c = vec![0x41, 0x08, 0, 0, 0, 10, 0, 0, 100, 0];
    assert!(h.run(&n, 0, &c, &[0; BS]).good());
    assert_eq!(
        h.ios.last().unwrap().op,
        BlockOp::WriteZeroes {
            offset: 10 * BS as u64,
            len: 100 * BS as u64,
            deallocate: true,
            fua: false
        }
    );
    assert_eq!(&h.disks[0][10 * BS..11 * BS], &[0; BS]);
    // Zero blocks (WSNZ=1), ANCHOR, beyond the end.
    c[8] = 0;
    assert!(
        h.run(&n, 0, &c, &[0; BS])
            .check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
    );
    let o = h.run(&n, 0, &cdb16(0x93, 0x10, 0, 1), &[0; BS]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
    let o = h.run(&n, 0, &cdb16(0x93, 0, BLOCKS - 1, 2), &[0; BS]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
}

#[test]
fn unmap() {
    let mut h = Harness::one();
    let n = nexus(1);
    assert!(h.run(&n, 0, &write10(0, 8, 0), &pattern(8 * BS, 1)).good());
    let list = |descs: &[(u64, u32)]| {
        let mut p = vec![0u8; 8];
        p[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
        p[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
        for (lba, n) in descs {
            p.extend_from_slice(&lba.to_be_bytes());
            p.extend_from_slice(&n.to_be_bytes());
            p.extend_from_slice(&[0; 4]);
        }
        p
    };
    let cdb = |len: usize| vec![0x42, 0, 0, 0, 0, 0, 0, (len >> 8) as u8, len as u8, 0];
    let p = list(&[(1, 2), (6, 1)]);
    assert!(h.run(&n, 0, &cdb(p.len()), &p).good());
    assert_eq!(
        h.ios.last().unwrap().op,
        BlockOp::Deallocate {
            ranges: vec![(BS as u64, 2 * BS as u64), (6 * BS as u64, BS as u64)]
        }
    );
    assert_eq!(&h.disks[0][BS..3 * BS], &[0; 2 * BS][..]);
    // An empty list, and a zero-length one, do nothing.
    assert!(h.run(&n, 0, &cdb(0), &[]).good());
    let p = list(&[]);
    assert!(h.run(&n, 0, &cdb(p.len()), &p).good());
    let p = list(&[(BLOCKS, 1)]);
    let o = h.run(&n, 0, &cdb(p.len()), &p);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
    let o = h.run(&n, 0, &cdb(4), &[0; 4]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::PARAMETER_LIST_LENGTH_ERROR));
    // Not thin: UNMAP is not a command.
    let mut c = cfg(0);
    c.thin = false;
    let mut h = Harness::new(vec![c]);
    let o = h.run(&n, 0, &cdb(0), &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_COMMAND_OPERATION_CODE));
}

#[test]
fn mode_select_d_sense_switches_to_descriptor_sense() {
    let mut h = Harness::one();
    let (a, b) = (nexus(1), nexus(2));
    assert!(h.run(&b, 0, &[0; 6], &[]).good());
    let o = h.run(&a, 0, &[0x1a, 0x08, 0x0a, 0, 0xff, 0], &[]);
    assert!(o.good());
    assert_eq!(o.data[3], 0); // DBD: no block descriptor
    let mut page = o.data[4..].to_vec();
    assert_eq!(page[0], 0x0a);
    page[2] |= 0x04;
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(&page);
    let o = h.run(&a, 0, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p);
    assert!(o.good(), "{o:?}");
    let o = h.run(&a, 0, &read10(BLOCKS as u32, 1), &[]);
    assert_eq!(o.sense[0], 0x72);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
    // The other nexus is told.
    let o = h.run(&b, 0, &[0; 6], &[]);
    assert!(o.check(key::UNIT_ATTENTION, Asc::MODE_PARAMETERS_CHANGED));
    // Descriptor format carries the information and field pointer descriptors.
    let o = h.run(&a, 0, &[0x12, 0, 1, 0, 0xff, 0], &[]);
    assert_eq!(&o.sense[8..10], &[0x02, 0x06]);
    // Changing a bit that is not changeable is refused.
    let mut bad = p.clone();
    bad[4 + 3] |= 0x10;
    let o = h.run(&a, 0, &[0x15, 0x10, 0, 0, bad.len() as u8, 0], &bad);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_PARAMETER_LIST));
    // Saved values are not supported.
    let o = h.run(&a, 0, &[0x1a, 0, 0xc0 | 0x3f, 0, 0xff, 0], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::SAVING_PARAMETERS_NOT_SUPPORTED));
    // A LUN reset restores the default (fixed format).
    h.target
        .task_management(&a, TaskManagement::LunReset, Some(0));
    let o = h.run(&a, 0, &[0xff, 0, 0, 0, 0, 0], &[]);
    assert_eq!(o.sense[0], 0x70);
}

#[test]
fn mode_sense_all_pages() {
    let mut h = Harness::one();
    let n = nexus(1);
    let o = h.run(&n, 0, &[0x1a, 0, 0x3f, 0, 0xff, 0], &[]);
    assert!(o.good());
    assert_eq!(usize::from(o.data[0]), o.data.len() - 1);
    assert_eq!(o.data[3], 8);
    assert_eq!(&o.data[4 + 5..4 + 8], &[0, 2, 0]);
    let pages = &o.data[12..];
    assert_eq!((pages[0], pages[2] & 0x04), (0x08, 0x04)); // WCE
    let o = h.run(&n, 0, &[0x5a, 0x10, 0x3f, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(o.data[4] & 1, 1);
    assert_eq!(&o.data[6..8], &[0, 16]);
    assert_eq!(
        usize::from(u16::from_be_bytes([o.data[0], o.data[1]])),
        o.data.len() - 2
    );
    let o = h.run(&n, 0, &[0x1a, 0, 0x19, 0, 0xff, 0], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
}

#[test]
fn report_supported_operation_codes() {
    let mut h = Harness::one();
    let n = nexus(1);
    let o = h.run(
        &n,
        0,
        &[0xa3, 0x0c, 0x80, 0, 0, 0, 0, 0, 0x40, 0, 0, 0],
        &[],
    );
    assert!(o.good());
    let len = u32::from_be_bytes(o.data[..4].try_into().unwrap()) as usize;
    assert_eq!(len, o.data.len() - 4);
    assert_eq!(len % 20, 0);
    assert_eq!(len / 20, opcodes::COMMANDS.len());
    // One command: READ(10), supported, with its usage data.
    let o = h.run(
        &n,
        0,
        &[0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    );
    assert_eq!(o.data[1] & 0x07, 3);
    assert_eq!(&o.data[2..4], &[0, 10]);
    assert_eq!(o.data[4], 0x28);
    // Unknown opcode: not supported.
    let o = h.run(
        &n,
        0,
        &[0xa3, 0x0c, 0x01, 0xc5, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    );
    assert_eq!(o.data[1] & 0x07, 1);
    // Service action commands need option 2.
    let o = h.run(
        &n,
        0,
        &[0xa3, 0x0c, 0x01, 0x9e, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    );
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
    let o = h.run(
        &n,
        0,
        &[0xa3, 0x0c, 0x02, 0x9e, 0, 0x10, 0, 0, 1, 0, 0, 0],
        &[],
    );
    assert_eq!(o.data[1] & 0x07, 3);
    assert_eq!(&o.data[4..6], &[0x9e, 0x10]);
}

#[test]
fn sync_cache_prefetch_get_lba_status() {
    let mut h = Harness::one();
    let n = nexus(1);
    assert!(h.run(&n, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).good());
    assert_eq!(h.ios.last().unwrap().op, BlockOp::Flush);
    let o = h.run(&n, 0, &cdb16(0x91, 0, BLOCKS, 1), &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
    assert!(h.run(&n, 0, &cdb16(0x90, 0, 0, 10), &[]).good());
    let o = h.run(&n, 0, &cdb16(0x90, 0, BLOCKS - 1, 2), &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
    let mut c = cdb16(0x9e, 0x12, 100, 24);
    c[15] = 0;
    let o = h.run(&n, 0, &c, &[]);
    assert!(o.good());
    assert_eq!(&o.data[..4], &[0, 0, 0, 20]);
    assert_eq!(&o.data[8..16], &100u64.to_be_bytes());
    let o = h.run(&n, 0, &cdb16(0x9e, 0x12, BLOCKS, 24), &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
}

#[test]
fn sense_formats() {
    let s = Sense::invalid_cdb(2, Some(5)).with_info(0x1234);
    let f = s.to_bytes(false);
    assert_eq!(f.len(), FIXED_SENSE_LEN_FOR_TEST);
    assert_eq!(f[0], 0xf0);
    assert_eq!(&f[15..18], &[0xcd, 0, 2]);
    let d = s.to_bytes(true);
    assert_eq!(&d[..4], &[0x72, 5, 0x24, 0]);
    assert_eq!(usize::from(d[7]), d.len() - 8);
    assert_eq!(&d[8..12], &[0, 0x0a, 0x80, 0]);
    assert_eq!(&d[12..20], &0x1234u64.to_be_bytes());
    assert_eq!(&d[20..28], &[0x02, 0x06, 0, 0, 0xcd, 0, 2, 0]);
}

const FIXED_SENSE_LEN_FOR_TEST: usize = sense::FIXED_SENSE_LEN;

#[test]
fn io_errors_and_stray_steps() {
    let t = ScsiTarget::new(vec![cfg(0)]);
    let n = nexus(1);
    let mut task = t.command(&n, 0, &read10(0, 1));
    let mut buf = AlignedBuf::default();
    assert!(matches!(task.step(&mut buf, None), Step::Io(_)));
    let Step::Done(c) = task.step(&mut buf, Some(IoOutcome::ReadError)) else {
        panic!("a read error ends the task");
    };
    assert_eq!(c.status, status::CHECK_CONDITION);
    assert_eq!((c.sense[2], c.sense[12]), (key::MEDIUM_ERROR, 0x11));
    // Stepping a finished task, or an I/O step without an outcome, does not panic.
    assert!(matches!(task.step(&mut buf, None), Step::Done(_)));
    let mut task = t.command(&n, 0, &read10(0, 1));
    let _ = task.step(&mut buf, None);
    assert!(matches!(task.step(&mut buf, None), Step::Done(_)));
}

/// What the fuzz target does, with a fixed pseudo-random stream over the known opcodes:
/// no panic, all I/O inside the disk, every task finishes.
#[test]
fn random_cdbs_smoke() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut thin = cfg(0);
    thin.blocks = 64;
    let mut ro = cfg(1);
    ro.blocks = 64;
    ro.read_only = true;
    ro.thin = false;
    ro.block_size = 4096;
    let mut h = Harness::new(vec![thin, ro]);
    let nexuses: Vec<Nexus> = (1..=3).map(nexus).collect();
    for i in 0..20_000 {
        let n = &nexuses[(next() % 3) as usize];
        if i % 997 == 0 {
            h.target
                .task_management(n, TaskManagement::LunReset, Some(next() % 2));
        }
        let ci = &opcodes::COMMANDS[(next() % opcodes::COMMANDS.len() as u64) as usize];
        let mut cdb = ci.usage.to_vec();
        for (k, b) in cdb.iter_mut().enumerate().skip(1) {
            let r = next() as u8;
            // Mostly small values so that ranges are often inside the disk.
            *b = if k == 1 && ci.service_action.is_some() {
                *b
            } else if next() % 4 == 0 {
                r
            } else {
                r & 0x03
            };
        }
        let len = (next() % 2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = h.run(n, next() % 3, &cdb, &data);
    }
}

#[test]
fn software_write_protect_and_loej() {
    let mut h = Harness::one();
    let n = nexus(1);
    let o = h.run(&n, 0, &[0x1a, 0x08, 0x4a, 0, 0xff, 0], &[]);
    assert_eq!(o.data[4 + 4] & 0x08, 0x08); // SWP is changeable
    let o = h.run(&n, 0, &[0x1a, 0x08, 0x0a, 0, 0xff, 0], &[]);
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(&o.data[4..]);
    p[4 + 4] |= 0x08;
    assert!(
        h.run(&n, 0, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p)
            .good()
    );
    let o = h.run(&n, 0, &write10(0, 1, 0), &[0; BS]);
    assert!(o.check(key::DATA_PROTECT, Asc::SOFTWARE_WRITE_PROTECTED));
    assert!(h.run(&n, 0, &read10(0, 1), &[]).good());
    let o = h.run(&n, 0, &[0x1a, 0x08, 0x3f, 0, 0xff, 0], &[]);
    assert_eq!(o.data[2] & 0x80, 0x80);
    p[4 + 4] &= !0x08;
    assert!(
        h.run(&n, 0, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p)
            .good()
    );
    assert!(h.run(&n, 0, &write10(0, 1, 0), &[0; BS]).good());
    // START STOP UNIT: START accepted, LOEJ refused (not removable).
    assert!(h.run(&n, 0, &[0x1b, 1, 0, 0, 0x01, 0], &[]).good());
    let o = h.run(&n, 0, &[0x1b, 1, 0, 0, 0x02, 0], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB));
}

/// LUNs added and removed at run time raise REPORTED LUNS DATA HAS CHANGED on the other
/// logical units, a resize CAPACITY DATA HAS CHANGED on its own; READ CAPACITY and REPORT
/// LUNS answer the new state, and the logical unit's other state survives the resize.
#[test]
fn lun_changes_at_run_time_raise_their_unit_attentions() {
    let mut h = Harness::one();
    let a = nexus(1);
    assert!(h.run(&a, 0, &[0; 6], &[]).good());
    let report_luns = [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    assert_eq!(h.run(&a, 0, &report_luns, &[]).data[3], 8, "one LUN");

    let mut c1 = cfg(1);
    c1.blocks = 64;
    assert!(h.target.add_lun(c1.clone()).is_ok());
    assert!(h.target.add_lun(c1).is_err(), "LUN 1 is taken");
    h.disks.push(vec![0u8; 64 * 512]);
    let o = h.run(&a, 0, &[0; 6], &[]);
    assert!(o.check(key::UNIT_ATTENTION, Asc::REPORTED_LUNS_DATA_HAS_CHANGED));
    assert!(h.run(&a, 0, &[0; 6], &[]).good(), "reported once");
    assert_eq!(h.run(&a, 0, &report_luns, &[]).data[3], 16, "two LUNs");
    // The new LUN has no unit attention of its own for a nexus it never saw.
    assert!(h.run(&a, 1, &[0; 6], &[]).good());

    // PREVENT on LUN 1 is logical unit state: a resize keeps it.
    assert!(h.run(&a, 1, &[0x1e, 0, 0, 0, 1, 0], &[]).good());
    assert!(h.target.resize_lun(1, 128));
    assert!(!h.target.resize_lun(9, 128));
    let read_capacity = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let o = h.run(&a, 1, &read_capacity, &[]);
    assert!(o.check(key::UNIT_ATTENTION, Asc::CAPACITY_DATA_HAS_CHANGED));
    let o = h.run(&a, 1, &read_capacity, &[]);
    assert!(o.good());
    assert_eq!(u32::from_be_bytes(o.data[..4].try_into().unwrap()), 127);
    assert!(
        h.run(&a, 0, &[0; 6], &[]).good(),
        "LUN 0 saw no capacity change"
    );
    let state = h.target.lu(1).unwrap();
    assert!(
        state.lock().prevent.contains(&a.id),
        "PREVENT survived the resize"
    );

    assert!(h.target.remove_lun(1).is_some());
    assert!(h.target.remove_lun(1).is_none());
    let o = h.run(&a, 0, &[0; 6], &[]);
    assert!(o.check(key::UNIT_ATTENTION, Asc::REPORTED_LUNS_DATA_HAS_CHANGED));
    let o = h.run(&a, 1, &[0; 6], &[]);
    assert!(o.check(key::ILLEGAL_REQUEST, Asc::LOGICAL_UNIT_NOT_SUPPORTED));
}
