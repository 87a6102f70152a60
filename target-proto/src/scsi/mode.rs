//! Mode parameters (SPC-4 7.5; MODE SENSE 6.11/6.12, MODE SELECT 6.9/6.10): the caching
//! page (SBC-3 6.5.5), the control page (SPC-4 7.5.8) and the informational exceptions
//! control page (SPC-4 7.5.12), with the mode parameter header and block descriptor
//! (SPC-4 7.5.5/7.5.6). One set per logical unit; nothing can be saved, so PC=11b
//! (saved values) and SP=1 are refused. D_SENSE and SWP (software write protect) are
//! changeable.

use super::LunConfig;
use super::cdb::{Cdb, be_at};
use super::sense::{Asc, Reject, Sense};

/// The changeable mode parameters' current values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ModeParams {
    /// Control page D_SENSE: descriptor-format sense data.
    pub d_sense: bool,
    /// Control page SWP: the medium is write protected until cleared (or reset).
    pub swp: bool,
}

pub(crate) const PAGE_CACHING: u8 = 0x08;
pub(crate) const PAGE_CONTROL: u8 = 0x0a;
pub(crate) const PAGE_INFO_EXCEPTIONS: u8 = 0x1c;
pub(crate) const PAGE_ALL: u8 = 0x3f;
const PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_INFO_EXCEPTIONS];

/// Page control (SPC-4 6.11, table 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

fn page(code: u8, pc: Pc, cfg: &LunConfig, p: ModeParams) -> Vec<u8> {
    match code {
        PAGE_CACHING => {
            let mut b = vec![0u8; 20];
            b[0] = PAGE_CACHING;
            b[1] = 0x12;
            if pc != Pc::Changeable && cfg.volatile_write_cache {
                b[2] = 0x04; // WCE
            }
            b
        }
        PAGE_CONTROL => {
            let mut b = vec![0u8; 12];
            b[0] = PAGE_CONTROL;
            b[1] = 0x0a;
            match pc {
                Pc::Changeable => {
                    b[2] = 0x04;
                    b[4] = 0x08;
                }
                Pc::Current | Pc::Default => {
                    // TST 001b: one task set per I_T nexus. QErr 00b, TAS 0.
                    b[2] = 0x20;
                    if pc == Pc::Current && p.d_sense {
                        b[2] |= 0x04;
                    }
                    if pc == Pc::Current && p.swp {
                        b[4] |= 0x08;
                    }
                    // BUSY TIMEOUT PERIOD: unlimited.
                    b[8] = 0xff;
                    b[9] = 0xff;
                }
            }
            b
        }
        _ => {
            let mut b = vec![0u8; 12];
            b[0] = PAGE_INFO_EXCEPTIONS;
            b[1] = 0x0a;
            if pc != Pc::Changeable {
                b[2] = 0x08; // DEXCPT: no informational exceptions are reported.
            }
            b
        }
    }
}

/// MODE SENSE(6) or (10) data, before ALLOCATION LENGTH truncation.
pub(crate) fn sense(
    cdb: Cdb<'_>,
    ten: bool,
    cfg: &LunConfig,
    p: ModeParams,
) -> Result<Vec<u8>, Reject> {
    let dbd = cdb.bit(1, 0x08);
    let llbaa = ten && cdb.bit(1, 0x10);
    let pc = match cdb.u8(2) >> 6 {
        0 => Pc::Current,
        1 => Pc::Changeable,
        2 => Pc::Default,
        _ => {
            return Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED)
                .with_field(true, 2, Some(7))
                .into());
        }
    };
    let code = cdb.u8(2) & 0x3f;
    let subpage = cdb.u8(3);
    if subpage != 0 && subpage != 0xff {
        return Err(Sense::invalid_cdb(3, None).into());
    }
    let mut pages = Vec::new();
    if code == PAGE_ALL {
        for c in PAGES {
            pages.extend_from_slice(&page(c, pc, cfg, p));
        }
    } else if PAGES.contains(&code) {
        pages.extend_from_slice(&page(code, pc, cfg, p));
    } else {
        return Err(Sense::invalid_cdb(2, Some(5)).into());
    }
    let mut bd = Vec::new();
    if !dbd {
        let blocks = cfg.blocks;
        if llbaa {
            bd.extend_from_slice(&blocks.to_be_bytes());
            bd.extend_from_slice(&[0, 0, 0, 0]);
            bd.extend_from_slice(&cfg.block_size.to_be_bytes());
        } else {
            let n = u32::try_from(blocks).unwrap_or(u32::MAX);
            if ten {
                bd.extend_from_slice(&n.to_be_bytes());
            } else {
                bd.push(0);
                bd.extend_from_slice(&n.min(0x00ff_ffff).to_be_bytes()[1..]);
            }
            bd.push(0);
            bd.extend_from_slice(&cfg.block_size.to_be_bytes()[1..]);
        }
        if pc == Pc::Changeable {
            bd.fill(0);
        }
    }
    // Device-specific parameter (SBC-3 6.5.1): WP, DPOFUA.
    let dsp = if cfg.read_only || p.swp { 0x80 } else { 0 } | 0x10;
    let mut d = Vec::with_capacity(8 + bd.len() + pages.len());
    if ten {
        let total = 8 + bd.len() + pages.len();
        d.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        d.extend_from_slice(&[0, dsp, u8::from(llbaa && !bd.is_empty()), 0]);
        d.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        let total = 4 + bd.len() + pages.len();
        d.extend_from_slice(&[(total - 1).min(255) as u8, 0, dsp, bd.len() as u8]);
    }
    d.extend_from_slice(&bd);
    d.extend_from_slice(&pages);
    Ok(d)
}

/// Applies a MODE SELECT parameter list; returns whether a parameter changed.
pub(crate) fn select(
    ten: bool,
    data: &[u8],
    cfg: &LunConfig,
    p: &mut ModeParams,
) -> Result<bool, Reject> {
    if data.is_empty() {
        return Ok(false);
    }
    let hl = if ten { 8 } else { 4 };
    if data.len() < hl {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
    }
    let long = ten && data.get(4).is_some_and(|b| b & 1 != 0);
    let bd_len = if ten {
        be_at(data, 6, 2) as usize
    } else {
        usize::from(data[3])
    };
    let bd_size = if long { 16 } else { 8 };
    if data.len() < hl + bd_len {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
    }
    if bd_len % bd_size != 0 {
        return Err(Sense::invalid_param(if ten { 6 } else { 3 }, None).into());
    }
    for i in (hl..hl + bd_len).step_by(bd_size) {
        let (len_at, len_size) = if long { (i + 12, 4) } else { (i + 5, 3) };
        let bl = be_at(data, len_at, len_size);
        if bl != u64::from(cfg.block_size) {
            return Err(Sense::invalid_param(len_at as u16, None).into());
        }
    }
    let mut next = *p;
    let mut i = hl + bd_len;
    while i < data.len() {
        let code = data[i] & 0x3f;
        if data[i] & 0x40 != 0 || !PAGES.contains(&code) {
            return Err(Sense::invalid_param(i as u16, Some(5)).into());
        }
        let Some(&len) = data.get(i + 1) else {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        };
        let current = page(code, Pc::Current, cfg, *p);
        let changeable = page(code, Pc::Changeable, cfg, *p);
        if usize::from(len) + 2 != current.len() {
            return Err(Sense::invalid_param(i as u16 + 1, None).into());
        }
        let Some(new) = data.get(i..i + current.len()) else {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        };
        for k in 2..current.len() {
            if (new[k] ^ current[k]) & !changeable[k] != 0 {
                return Err(Sense::invalid_param((i + k) as u16, None).into());
            }
        }
        if code == PAGE_CONTROL {
            next.d_sense = new[2] & 0x04 != 0;
            next.swp = new[4] & 0x08 != 0;
        }
        i += current.len();
    }
    let changed = next != *p;
    *p = next;
    Ok(changed)
}
