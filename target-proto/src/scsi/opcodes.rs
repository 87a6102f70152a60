//! The commands this logical unit implements, with their CDB usage data, for REPORT
//! SUPPORTED OPERATION CODES (SPC-4 6.35) and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
//! (SPC-4 6.36). The table is the single list of what is supported: a command not here
//! is answered with INVALID COMMAND OPERATION CODE.

use super::LunConfig;
use super::cdb::{Cdb, op};
use super::sense::{Reject, Sense};

/// One supported command: operation code, service action, and CDB usage data (SPC-4
/// 6.35.3; byte 0 is the operation code, a service action byte holds its value, other bits
/// are set where the device server looks at them).
pub(crate) struct CommandInfo {
    pub opcode: u8,
    pub service_action: Option<u16>,
    pub usage: &'static [u8],
}

const fn c(opcode: u8, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action: None,
        usage,
    }
}

const fn sa(opcode: u8, sa: u16, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action: Some(sa),
        usage,
    }
}

const CTL: u8 = 0x04; // NACA (checked: not supported)
const FF: u8 = 0xff;

pub(crate) static COMMANDS: &[CommandInfo] = &[
    c(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, CTL]),
    c(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, FF, CTL]),
    c(op::READ_6, &[0x08, 0x1f, FF, FF, FF, CTL]),
    c(op::WRITE_6, &[0x0a, 0x1f, FF, FF, FF, CTL]),
    c(op::INQUIRY, &[0x12, 0x01, FF, FF, FF, CTL]),
    c(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, FF, CTL]),
    c(op::RESERVE_6, &[0x16, 0, 0, 0, 0, CTL]),
    c(op::RELEASE_6, &[0x17, 0, 0, 0, 0, CTL]),
    c(op::MODE_SENSE_6, &[0x1a, 0x08, FF, FF, FF, CTL]),
    c(op::START_STOP_UNIT, &[0x1b, 0x01, 0, 0x0f, 0xf7, CTL]),
    c(
        op::PREVENT_ALLOW_MEDIUM_REMOVAL,
        &[0x1e, 0, 0, 0, 0x03, CTL],
    ),
    c(
        op::READ_CAPACITY_10,
        &[0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, CTL],
    ),
    c(
        op::READ_10,
        &[0x28, 0xfa, FF, FF, FF, FF, 0x3f, FF, FF, CTL],
    ),
    c(
        op::WRITE_10,
        &[0x2a, 0xfa, FF, FF, FF, FF, 0x3f, FF, FF, CTL],
    ),
    c(
        op::WRITE_AND_VERIFY_10,
        &[0x2e, 0xf2, FF, FF, FF, FF, 0x3f, FF, FF, CTL],
    ),
    c(
        op::VERIFY_10,
        &[0x2f, 0xf2, FF, FF, FF, FF, 0x3f, FF, FF, CTL],
    ),
    c(
        op::PRE_FETCH_10,
        &[0x34, 0x02, FF, FF, FF, FF, 0x3f, FF, FF, CTL],
    ),
    c(
        op::SYNCHRONIZE_CACHE_10,
        &[0x35, 0x06, FF, FF, FF, FF, 0x3f, FF, FF, CTL],
    ),
    c(
        op::READ_DEFECT_DATA_10,
        &[0x37, 0, 0x1f, 0, 0, 0, 0, FF, FF, CTL],
    ),
    c(
        op::WRITE_SAME_10,
        &[0x41, 0xe8, FF, FF, FF, FF, 0x3f, FF, FF, CTL],
    ),
    c(op::UNMAP, &[0x42, 0x01, 0, 0, 0, 0, 0x3f, FF, FF, CTL]),
    c(
        op::MODE_SELECT_10,
        &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, CTL],
    ),
    c(
        op::MODE_SENSE_10,
        &[0x5a, 0x18, FF, FF, 0, 0, 0, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        0,
        &[0x5e, 0x00, 0, 0, 0, 0, 0, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        1,
        &[0x5e, 0x01, 0, 0, 0, 0, 0, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        2,
        &[0x5e, 0x02, 0, 0, 0, 0, 0, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        3,
        &[0x5e, 0x03, 0, 0, 0, 0, 0, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0,
        &[0x5f, 0x00, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        1,
        &[0x5f, 0x01, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        2,
        &[0x5f, 0x02, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        3,
        &[0x5f, 0x03, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        4,
        &[0x5f, 0x04, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        5,
        &[0x5f, 0x05, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        6,
        &[0x5f, 0x06, FF, 0, 0, FF, FF, FF, FF, CTL],
    ),
    c(
        op::READ_16,
        &[
            0x88, 0xfa, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL,
        ],
    ),
    c(
        op::COMPARE_AND_WRITE,
        &[
            0x89, 0xfa, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0x3f, CTL,
        ],
    ),
    c(
        op::WRITE_16,
        &[
            0x8a, 0xfa, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL,
        ],
    ),
    c(
        op::WRITE_AND_VERIFY_16,
        &[
            0x8e, 0xf2, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL,
        ],
    ),
    c(
        op::VERIFY_16,
        &[
            0x8f, 0xf2, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL,
        ],
    ),
    c(
        op::PRE_FETCH_16,
        &[
            0x90, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL,
        ],
    ),
    c(
        op::SYNCHRONIZE_CACHE_16,
        &[
            0x91, 0x06, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL,
        ],
    ),
    c(
        op::WRITE_SAME_16,
        &[
            0x93, 0xe8, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL,
        ],
    ),
    sa(
        op::SERVICE_ACTION_IN_16,
        op::SA_READ_CAPACITY_16 as u16,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
    ),
    sa(
        op::SERVICE_ACTION_IN_16,
        op::SA_GET_LBA_STATUS as u16,
        &[
            0x9e, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
        ],
    ),
    c(
        op::REPORT_LUNS,
        &[0xa0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
    ),
    sa(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_OPERATION_CODES as u16,
        &[0xa3, 0x0c, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
    ),
    sa(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_TMFS as u16,
        &[0xa3, 0x0d, 0x80, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
    ),
    c(
        op::READ_12,
        &[0xa8, 0xfa, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL],
    ),
    c(
        op::WRITE_12,
        &[0xaa, 0xfa, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL],
    ),
    c(
        op::WRITE_AND_VERIFY_12,
        &[0xae, 0xf2, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL],
    ),
    c(
        op::VERIFY_12,
        &[0xaf, 0xf2, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, CTL],
    ),
    c(
        op::READ_DEFECT_DATA_12,
        &[0xb7, 0x1f, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
    ),
];

/// Whether this logical unit implements the command (UNMAP only when thin).
pub(crate) fn supported(cfg: &LunConfig, ci: &CommandInfo) -> bool {
    ci.opcode != op::UNMAP || cfg.thin
}

fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// Command timeouts descriptor (SPC-4 6.35.4): no nominal or recommended timeout given.
const TIMEOUTS: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES parameter data before ALLOCATION LENGTH truncation.
pub(crate) fn report(cdb: Cdb<'_>, cfg: &LunConfig) -> Result<Vec<u8>, Reject> {
    let rctd = cdb.bit(2, 0x80);
    let options = cdb.u8(2) & 0x07;
    let opcode = cdb.u8(3);
    let service_action = cdb.be16(4);
    let list = COMMANDS.iter().filter(|c| supported(cfg, c));
    match options {
        0 => {
            let mut descs = Vec::new();
            for ci in list {
                descs.push(ci.opcode);
                descs.push(0);
                descs.extend_from_slice(&ci.service_action.unwrap_or(0).to_be_bytes());
                descs.push(0);
                descs.push(u8::from(rctd) << 1 | u8::from(ci.service_action.is_some()));
                descs.extend_from_slice(&(ci.usage.len() as u16).to_be_bytes());
                if rctd {
                    descs.extend_from_slice(&TIMEOUTS);
                }
            }
            let mut d = (descs.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(&descs);
            Ok(d)
        }
        1..=3 => {
            let with_sa = has_service_actions(opcode);
            let found = match options {
                1 if with_sa => return Err(Sense::invalid_cdb(2, Some(2)).into()),
                1 => list.clone().find(|c| c.opcode == opcode),
                2 if !with_sa => return Err(Sense::invalid_cdb(2, Some(2)).into()),
                _ if with_sa => list
                    .clone()
                    .find(|c| c.opcode == opcode && c.service_action == Some(service_action)),
                _ => list.clone().find(|c| c.opcode == opcode),
            };
            let mut d = vec![0u8; 4];
            if let Some(ci) = found {
                d[1] = u8::from(rctd) << 7 | 0x03; // supported as the standard says
                d[2..4].copy_from_slice(&(ci.usage.len() as u16).to_be_bytes());
                d.extend_from_slice(ci.usage);
                if rctd {
                    d.extend_from_slice(&TIMEOUTS);
                }
            } else {
                d[1] = 0x01; // not supported
            }
            Ok(d)
        }
        _ => Err(Sense::invalid_cdb(2, Some(2)).into()),
    }
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS parameter data (SPC-4 6.36.2): ABORT TASK,
/// ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET; with REPD the extended
/// 16-byte format.
pub(crate) fn report_tmfs(cdb: Cdb<'_>) -> Vec<u8> {
    let mut d = vec![0xda, 0x00, 0x00, 0x00];
    if cdb.bit(2, 0x80) {
        d[3] = 0x0c;
        d.resize(16, 0);
    }
    d
}
