//! Data the device server reports about itself: standard INQUIRY data (SPC-4 6.6.2), the
//! VPD pages (SPC-4 7.8: 00h supported pages, 80h unit serial number, 83h device
//! identification; SBC-3 6.6: B0h block limits, B1h block device characteristics, B2h
//! logical block provisioning), READ CAPACITY (SBC-3 5.15/5.16) and REPORT LUNS
//! (SPC-4 6.33, peripheral device addressing per SAM-5 4.7.7).

use super::cdb::Cdb;
use super::sense::{Reject, Sense};
use super::{LunConfig, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS, Nexus};

pub(crate) const VPD_SUPPORTED: u8 = 0x00;
pub(crate) const VPD_SERIAL: u8 = 0x80;
pub(crate) const VPD_DEVICE_ID: u8 = 0x83;
pub(crate) const VPD_BLOCK_LIMITS: u8 = 0xb0;
pub(crate) const VPD_BLOCK_CHARACTERISTICS: u8 = 0xb1;
pub(crate) const VPD_PROVISIONING: u8 = 0xb2;
const VPD_PAGES: [u8; 6] = [
    VPD_SUPPORTED,
    VPD_SERIAL,
    VPD_DEVICE_ID,
    VPD_BLOCK_LIMITS,
    VPD_BLOCK_CHARACTERISTICS,
    VPD_PROVISIONING,
];

/// Version descriptors (SPC-4 table 143): SAM-5, SPC-4, SBC-3, iSCSI.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00a0, 0x0460, 0x04c0, 0x0960];
/// Standard INQUIRY data length: through the version descriptors.
const STD_INQUIRY_LEN: usize = 74;

fn ascii_field(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) { b } else { b' ' })
        .take(len)
        .collect();
    v.resize(len, b' ');
    v
}

/// Standard INQUIRY data; `cfg` None for a LUN that does not exist (peripheral qualifier
/// 011b, device type 1Fh).
pub(crate) fn standard(cfg: Option<&LunConfig>) -> Vec<u8> {
    let mut d = vec![0u8; STD_INQUIRY_LEN];
    d[0] = if cfg.is_some() { 0x00 } else { 0x7f };
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = (STD_INQUIRY_LEN - 5) as u8;
    d[7] = 0x02; // CMDQUE
    if let Some(c) = cfg {
        d[8..16].copy_from_slice(&ascii_field(&c.vendor, 8));
        d[16..32].copy_from_slice(&ascii_field(&c.product, 16));
        d[32..36].copy_from_slice(&ascii_field(&c.revision, 4));
    } else {
        d[8..36].fill(b' ');
    }
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

fn serial(cfg: &LunConfig) -> String {
    cfg.identity.iter().map(|b| format!("{b:02x}")).collect()
}

fn vpd_page(code: u8, body: &[u8]) -> Vec<u8> {
    let mut d = vec![0x00, code];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(body);
    d
}

/// A designation descriptor (SPC-4 7.8.6.1).
fn designator(out: &mut Vec<u8>, proto_codeset: u8, piv_assoc_type: u8, value: &[u8]) {
    out.extend_from_slice(&[proto_codeset, piv_assoc_type, 0, value.len() as u8]);
    out.extend_from_slice(value);
}

/// A VPD page, or None when the page is not supported.
pub(crate) fn vpd(code: u8, cfg: &LunConfig, nexus: &Nexus) -> Option<Vec<u8>> {
    let body = match code {
        VPD_SUPPORTED => VPD_PAGES.to_vec(),
        VPD_SERIAL => serial(cfg).into_bytes(),
        VPD_DEVICE_ID => {
            let mut b = Vec::new();
            // NAA IEEE Registered Extended (NAA 6) from the identity, binary, LU.
            let mut naa = cfg.identity;
            naa[0] = 0x60 | (naa[0] & 0x0f);
            designator(&mut b, 0x01, 0x03, &naa);
            // T10 vendor ID: vendor + serial, ASCII, LU.
            let mut t10 = ascii_field(&cfg.vendor, 8);
            t10.extend_from_slice(serial(cfg).as_bytes());
            designator(&mut b, 0x02, 0x01, &t10);
            // Relative target port (iSCSI, PIV, target port association).
            let mut rp = vec![0, 0];
            rp.extend_from_slice(&nexus.relative_port.to_be_bytes());
            designator(&mut b, 0x51, 0x94, &rp);
            // SCSI name string of the target port, UTF-8, NUL-terminated, padded to 4.
            if !nexus.target_port.is_empty() {
                let mut name = nexus.target_port.as_bytes().to_vec();
                name.truncate(251);
                name.push(0);
                while !name.len().is_multiple_of(4) {
                    name.push(0);
                }
                designator(&mut b, 0x53, 0x98, &name);
            }
            b
        }
        VPD_BLOCK_LIMITS => {
            let mut b = vec![0u8; 0x3c];
            b[0] = 0x01; // WSNZ: WRITE SAME with zero blocks is refused.
            b[1] = cfg.max_compare_and_write_blocks();
            b[2..4].copy_from_slice(&1u16.to_be_bytes()); // optimal granularity
            let max = cfg.max_transfer_blocks();
            b[4..8].copy_from_slice(&max.to_be_bytes());
            b[8..12].copy_from_slice(&max.to_be_bytes());
            if cfg.thin {
                b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                b[24..28].copy_from_slice(&1u32.to_be_bytes()); // optimal unmap granularity
                b[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes()); // UGAVALID, 0
            }
            b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
            b
        }
        VPD_BLOCK_CHARACTERISTICS => {
            let mut b = vec![0u8; 0x3c];
            b[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
            b
        }
        VPD_PROVISIONING => {
            let mut b = vec![0u8; 4];
            if cfg.thin {
                // LBPU, LBPWS, LBPWS10, LBPRZ; provisioning type 010b (thin).
                b[1] = 0x80 | 0x40 | 0x20 | 0x04;
                b[2] = 0x02;
            }
            b
        }
        _ => return None,
    };
    Some(vpd_page(code, &body))
}

/// INQUIRY (SPC-4 6.6): the data before ALLOCATION LENGTH truncation.
pub(crate) fn inquiry(
    cdb: Cdb<'_>,
    cfg: Option<&LunConfig>,
    nexus: &Nexus,
) -> Result<Vec<u8>, Reject> {
    if cdb.bit(1, 0x02) {
        return Err(Sense::invalid_cdb(1, Some(1)).into()); // CMDDT (obsolete)
    }
    let evpd = cdb.bit(1, 0x01);
    let page = cdb.u8(2);
    if !evpd {
        if page != 0 {
            return Err(Sense::invalid_cdb(2, None).into());
        }
        return Ok(standard(cfg));
    }
    let Some(cfg) = cfg else {
        // A LUN that does not exist has no VPD pages worth reporting but 00h.
        if page == VPD_SUPPORTED {
            let mut d = vpd_page(VPD_SUPPORTED, &[VPD_SUPPORTED]);
            d[0] = 0x7f;
            return Ok(d);
        }
        return Err(Sense::invalid_cdb(2, None).into());
    };
    vpd(page, cfg, nexus).ok_or_else(|| Sense::invalid_cdb(2, None).into())
}

/// READ CAPACITY (10) data: the last LBA (FFFFFFFFh when it does not fit) and block length.
pub(crate) fn read_capacity10(cfg: &LunConfig) -> Vec<u8> {
    let last = cfg.blocks.saturating_sub(1);
    let mut d = u32::try_from(last)
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    d.extend_from_slice(&cfg.block_size.to_be_bytes());
    d
}

/// READ CAPACITY (16) parameter data (SBC-3 5.16.2), 32 bytes.
pub(crate) fn read_capacity16(cfg: &LunConfig) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&cfg.blocks.saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&cfg.block_size.to_be_bytes());
    if cfg.thin {
        d[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    d
}

/// REPORT LUNS parameter data for these LUN numbers.
pub(crate) fn report_luns(luns: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut list = Vec::new();
    for lun in luns {
        list.extend_from_slice(&super::encode_lun(lun));
    }
    let mut d = (list.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(&[0, 0, 0, 0]);
    d.extend_from_slice(&list);
    d
}
