//! Admin commands that return data: Identify (NVMe Base 2.x, 5.17) and Get Log Page (5.16),
//! for NVM controllers and the discovery controller. What each field claims is what the
//! controller does; a capability it lacks is left at zero.

use std::net::IpAddr;
use target_wire::nvme::identify::{
    self, IDENTIFY_LEN, IdentifyController, IdentifyControllerNvm, IdentifyNamespace, LbaFormat,
    NsIdDescriptor, NsIdList,
};

use target_wire::nvme::log::{
    AdrFam, COMMANDS_EFFECTS_LOG_LEN, CommandsEffectsLog, DiscoveryLogHeader, ERROR_LOG_ENTRY_LEN,
    FIRMWARE_SLOT_LOG_LEN, FirmwareSlotLog, SMART_LOG_LEN, SecType, SmartLog, SubType, TrType,
    data_units, discovery_entry_mut, discovery_log_len, effects, treq,
};
use target_wire::nvme::opcode::{AdminOpcode, Cns, Csi, IoOpcode, LogPageId};
use target_wire::nvme::sqe::Sqe;
use target_wire::nvme::status::{CommandSpecificStatus, Status};

use super::controller::{
    DSM_BLOCKS_LIMIT, DSM_RANGE_BLOCKS_LIMIT, MAX_AERS, MAX_QUEUE_ENTRIES, MAX_TRANSFER,
    MDTS_SHIFT, Response, VERSION, WZSL,
};
use super::subsystem::{Attached, DISCOVERY_NQN, Namespace, Port, PortTransport, Registry};

/// Keep Alive granularity reported in KAS, in 100 ms units: one second.
const KAS: u16 = 10;
/// Identify Controller NN: the NSIDs hosts should expect at least, as Linux's nvmet
/// (NVMET_MAX_NAMESPACES); a configuration with larger NSIDs reports its largest.
const MAX_NSID: u32 = 1024;
/// Abort commands accepted at once, 0's based.
const ACL: u8 = 3;

/// What the transport adds to Identify Controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportLimits {
    /// Data bytes a command capsule may carry (IOCCSZ less the SQE).
    pub in_capsule_data: usize,
    /// Keyed SGL Data Blocks are served (RDMA): Identify says so in SGLS bit 2, which
    /// Linux's nvme-rdma host requires ("Mandatory keyed sgls are not supported!").
    pub keyed_sgls: bool,
}

pub fn identify(
    sqe: &Sqe<&[u8]>,
    attached: &Attached,
    vwc_enabled: bool,
    limits: TransportLimits,
) -> Response {
    let mut buf = vec![0u8; IDENTIFY_LEN];
    let result = match sqe.cns() {
        Cns::Controller => {
            identify_controller(&mut buf, attached, limits);
            Ok(())
        }
        _ if attached.discovery => Err(Status::invalid_field()),
        Cns::CsController => match sqe.identify_csi() {
            Csi::Nvm => {
                identify_controller_nvm(&mut buf);
                Ok(())
            }
            _ => Err(Status::invalid_field()),
        },
        Cns::Namespace => match attached.subsystem.namespace(sqe.nsid()) {
            Some(ns) => {
                identify_namespace(&mut buf, ns, vwc_enabled);
                Ok(())
            }
            None => Err(Status::invalid_namespace()),
        },
        Cns::ActiveNamespaceList => {
            if sqe.nsid() >= 0xffff_fffe {
                Err(Status::invalid_namespace())
            } else {
                let ids = attached.subsystem.namespaces.iter().map(|n| n.nsid);
                let mut list = NsIdList::new_unchecked(&mut buf[..]);
                list.fill_active(sqe.nsid(), ids)
                    .map(|_| ())
                    .map_err(|_| Status::internal_error())
            }
        }
        Cns::NamespaceDescriptorList => match attached.subsystem.namespace(sqe.nsid()) {
            Some(ns) => {
                let descs = [
                    NsIdDescriptor::Eui64(ns.eui64),
                    NsIdDescriptor::Nguid(ns.nguid),
                    NsIdDescriptor::Uuid(ns.uuid),
                    NsIdDescriptor::Csi(0),
                ];
                identify::emit_ns_descriptors(&mut buf, &descs)
                    .map(|_| ())
                    .map_err(|_| Status::internal_error())
            }
            None => Err(Status::invalid_namespace()),
        },
        _ => Err(Status::invalid_field()),
    };
    match result {
        Ok(()) => Response::ok().with_data(buf),
        Err(status) => Response::status(status),
    }
}

fn identify_controller(buf: &mut [u8], attached: &Attached, limits: TransportLimits) {
    let s = &attached.subsystem;
    let mut id = IdentifyController::new_unchecked(buf);
    // Strings are checked at configuration time; a failure here only leaves a field blank.
    let _ = id.set_sn(&s.serial);
    let _ = id.set_mn(&s.model);
    let _ = id.set_fr(&s.firmware);
    let _ = id.set_subnqn(&s.nqn);
    id.set_rab(6);
    id.set_cntlid(attached.cntlid);
    id.set_ver(VERSION);
    id.set_mdts(MDTS_SHIFT);
    id.set_kas(KAS);
    id.set_maxcmd(MAX_QUEUE_ENTRIES);
    id.set_sqes(0x66);
    id.set_cqes(0x44);
    // SGLs, with in-capsule data at an offset (what NVMe/TCP hosts need), and keyed SGLs
    // where the transport serves them (NVMe/RDMA).
    let keyed = if limits.keyed_sgls {
        identify::sgls::KEYED
    } else {
        0
    };
    id.set_sgls(identify::sgls::SUPPORTED | identify::sgls::OFFSET | keyed);
    id.set_ioccsz(u32::try_from((64 + limits.in_capsule_data) / 16).unwrap_or(u32::MAX));
    id.set_iorcsz(1);
    id.set_msdbd(1);
    id.set_lpa(
        identify::lpa::EXTENDED_DATA
            | if attached.discovery {
                0
            } else {
                identify::lpa::COMMANDS_EFFECTS
            },
    );
    id.set_aerl(u8::try_from(MAX_AERS - 1).unwrap_or(0));
    if attached.discovery {
        id.set_cntrltype(identify::cntrltype::DISCOVERY);
        return;
    }
    id.set_cntrltype(identify::cntrltype::IO);
    id.set_cmic(identify::cmic::MULTI_PORT | identify::cmic::MULTI_CONTROLLER);
    id.set_ctratt(identify::ctratt::HOST_ID_128);
    id.set_acl(ACL);
    // One firmware slot, read-only.
    id.set_frmw(0b0000_0011);
    // Namespaces come and go at run time (`xdp-target ctl`), so NN is the most there may
    // be, not the count now; hosts list the active ones (CNS 02h) and learn of changes
    // from the Namespace Attribute Changed notice.
    id.set_nn(
        s.namespaces
            .iter()
            .map(|n| n.nsid)
            .max()
            .unwrap_or(0)
            .max(MAX_NSID),
    );
    id.set_oaes(identify::oaes::NAMESPACE_ATTRIBUTE_NOTICES);
    let dealloc = s.namespaces.iter().any(|n| n.deallocate);
    id.set_oncs(
        identify::oncs::COMPARE
            | identify::oncs::WRITE_ZEROES
            | if dealloc {
                identify::oncs::DATASET_MANAGEMENT
            } else {
                0
            },
    );
    if s.namespaces.iter().any(|n| n.volatile_write_cache) {
        id.set_vwc(identify::vwc::PRESENT | identify::vwc::FLUSH_ALL_SUPPORTED);
    }
}

/// The NVM command set's size limits (CNS 06h, CSI 00h), which the I/O queues enforce.
/// Linux reads DMRSL for its discard size and WZSL for its write-zeroes size (without
/// WZSL it keeps write zeroes within MDTS). VSL and WUSL stay 0: Verify and Write
/// Uncorrectable are not supported.
fn identify_controller_nvm(buf: &mut [u8]) {
    let mut id = IdentifyControllerNvm::new_unchecked(buf);
    id.set_wzsl(WZSL);
    id.set_dmrsl(DSM_RANGE_BLOCKS_LIMIT);
    id.set_dmsl(DSM_BLOCKS_LIMIT);
}

fn identify_namespace(buf: &mut [u8], ns: &Namespace, _vwc_enabled: bool) {
    let mut id = IdentifyNamespace::new_unchecked(buf);
    id.set_nsze(ns.blocks);
    id.set_ncap(ns.blocks);
    id.set_nuse(ns.blocks);
    // Shared namespace: several controllers (hosts, paths) may attach.
    id.set_nmic(1);
    id.set_nguid(ns.nguid);
    id.set_eui64(ns.eui64);
    let _ = id.set_lbaf(
        0,
        LbaFormat {
            ms: 0,
            lbads: ns.lba_shift(),
            rp: 0,
        },
    );
    let _ = id.set_lba_format_index(0);
    if ns.deallocate {
        // Deallocated blocks read as zeroes (001b) and Write Zeroes may deallocate (bit 3).
        id.set_dlfeat(0b1001);
    }
}

/// Get Log Page: builds the whole page, then returns the part the host asked for (LPO and
/// NUMD), zero-padded past the page's end. `host_nqn` is the NQN the host gave in Connect.
pub fn get_log_page(
    sqe: &Sqe<&[u8]>,
    attached: &Attached,
    registry: &mut Registry,
    host_nqn: &str,
    local: Option<IpAddr>,
) -> Response {
    let page = match (sqe.log_id(), attached.discovery) {
        (LogPageId::Discovery, true) => discovery_log(registry, host_nqn, local),
        (LogPageId::SupportedLogPages, discovery) => supported_log_pages(discovery),
        (LogPageId::ErrorInformation, _) => vec![0u8; ERROR_LOG_ENTRY_LEN],
        (LogPageId::SmartHealth, false) => smart_log(attached),
        (LogPageId::FirmwareSlot, false) => {
            let mut b = vec![0u8; FIRMWARE_SLOT_LOG_LEN];
            let mut l = FirmwareSlotLog::new_unchecked(&mut b[..]);
            l.set_afi(1);
            let _ = l.set_frs(1, &attached.subsystem.firmware);
            b
        }
        // Read with RAE cleared, the list empties and the notice is unmasked.
        (LogPageId::ChangedNamespaceList, false) => {
            registry.changed_namespace_list(attached, !sqe.log_rae())
        }
        (LogPageId::CommandsEffects, false) => commands_effects(),
        _ => {
            return Response::status(Status::command_specific(
                CommandSpecificStatus::InvalidLogPage,
            ));
        }
    };
    let Ok(offset) = usize::try_from(sqe.lpo()) else {
        return Response::status(Status::invalid_field());
    };
    let len = usize::try_from(sqe.log_len())
        .unwrap_or(usize::MAX)
        .min(MAX_TRANSFER);
    if offset > page.len() || offset % 4 != 0 {
        return Response::status(Status::invalid_field());
    }
    let mut out = vec![0u8; len];
    let avail = (page.len() - offset).min(len);
    out[..avail].copy_from_slice(&page[offset..offset + avail]);
    Response::ok().with_data(out)
}

/// Supported Log Pages (LID 00h): a 4-byte entry per LID, bit 0 (LSUPP) set for the ones
/// this controller returns.
fn supported_log_pages(discovery: bool) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    let lids: &[LogPageId] = if discovery {
        &[
            LogPageId::SupportedLogPages,
            LogPageId::ErrorInformation,
            LogPageId::Discovery,
        ]
    } else {
        &[
            LogPageId::SupportedLogPages,
            LogPageId::ErrorInformation,
            LogPageId::SmartHealth,
            LogPageId::FirmwareSlot,
            LogPageId::ChangedNamespaceList,
            LogPageId::CommandsEffects,
        ]
    };
    for &lid in lids {
        b[usize::from(u8::from(lid)) * 4] = 1;
    }
    b
}

/// SMART / Health: the controller's I/O counters. Nothing here is a sensor: temperature,
/// spare and wear are left at zero rather than made up.
fn smart_log(attached: &Attached) -> Vec<u8> {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &attached.stats;
    let mut b = vec![0u8; SMART_LOG_LEN];
    let mut l = SmartLog::new_unchecked(&mut b[..]);
    l.set_data_units_read(data_units(u128::from(st.bytes_read.load(Relaxed))));
    l.set_data_units_written(data_units(u128::from(st.bytes_written.load(Relaxed))));
    l.set_host_read_commands(u128::from(st.read_commands.load(Relaxed)));
    l.set_host_write_commands(u128::from(st.write_commands.load(Relaxed)));
    b
}

fn commands_effects() -> Vec<u8> {
    let mut b = vec![0u8; COMMANDS_EFFECTS_LOG_LEN];
    let mut l = CommandsEffectsLog::new_unchecked(&mut b[..]);
    for op in [
        AdminOpcode::GetLogPage,
        AdminOpcode::Identify,
        AdminOpcode::Abort,
        AdminOpcode::SetFeatures,
        AdminOpcode::GetFeatures,
        AdminOpcode::AsyncEventRequest,
        AdminOpcode::KeepAlive,
    ] {
        l.set_admin(op.into(), effects::CSUPP);
    }
    for (op, e) in [
        (IoOpcode::Flush, effects::CSUPP | effects::LBCC),
        (IoOpcode::Write, effects::CSUPP | effects::LBCC),
        (IoOpcode::Read, effects::CSUPP),
        (IoOpcode::Compare, effects::CSUPP),
        (IoOpcode::WriteZeroes, effects::CSUPP | effects::LBCC),
        (IoOpcode::DatasetManagement, effects::CSUPP | effects::LBCC),
    ] {
        l.set_io(op.into(), e);
    }
    b
}

/// One entry per NVM subsystem that allows `host_nqn` and I/O port, plus the discovery
/// subsystem itself on each port (subtype "current discovery subsystem", which Linux's host
/// expects to find). Subsystems whose allow list leaves the host out are not listed, as
/// Linux's nvmet does (`nvmet_execute_disc_get_log_page` checks `nvmet_host_allowed`):
/// discovery must not tell a host the names of subsystems it may not use.
fn discovery_log(registry: &Registry, host_nqn: &str, local: Option<IpAddr>) -> Vec<u8> {
    struct Entry<'a> {
        subtype: SubType,
        nqn: &'a str,
        port: &'a Port,
    }
    let mut entries = Vec::new();
    for port in registry.ports() {
        if port.io {
            for s in registry.subsystems().iter().filter(|s| s.allows(host_nqn)) {
                entries.push(Entry {
                    subtype: SubType::Nvm,
                    nqn: &s.nqn,
                    port,
                });
            }
        }
        entries.push(Entry {
            subtype: SubType::CurrentDiscovery,
            nqn: DISCOVERY_NQN,
            port,
        });
    }
    let mut page = vec![0u8; discovery_log_len(entries.len())];
    {
        let mut h = DiscoveryLogHeader::new_unchecked(&mut page[..]);
        h.set_genctr(1);
        h.set_numrec(entries.len() as u64);
    }
    for (i, e) in entries.iter().enumerate() {
        let Ok(mut d) = discovery_entry_mut(&mut page, i) else {
            continue;
        };
        let addr = e.port.addr.or(local);
        match e.port.transport {
            PortTransport::Tcp => {
                d.set_trtype(TrType::Tcp);
                d.set_tcp_sectype(SecType::None);
            }
            PortTransport::Rdma => {
                d.set_trtype(TrType::Rdma);
                d.set_rdma_tsas();
            }
        }
        d.set_adrfam(match addr {
            Some(IpAddr::V6(_)) => AdrFam::Ipv6,
            _ => AdrFam::Ipv4,
        });
        d.set_subtype(e.subtype);
        d.set_treq(treq::SECURE_CHANNEL_NOT_REQUIRED);
        d.set_portid(e.port.id);
        d.set_cntlid(0xffff);
        d.set_asqsz(32);
        let _ = d.set_trsvcid(&e.port.port.to_string());
        let _ = d.set_subnqn(e.nqn);
        let _ = d.set_traddr(&addr.map_or_else(String::new, |a| a.to_string()));
    }
    page
}
