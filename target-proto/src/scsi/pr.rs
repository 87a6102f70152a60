//! Persistent reservations (SPC-4 5.12; PERSISTENT RESERVE IN 6.15, OUT 6.16). Keys are
//! registered per I_T nexus, named by its ports, so they outlive the session that made
//! them (SPC-4 5.12.6); nothing persists across power loss, so APTPL is refused
//! (REPORT CAPABILITIES PTPL_C=0). Register-and-move, SPEC_I_PT and ALL_TG_PT are not
//! supported and say so in REPORT CAPABILITIES.

use std::sync::Arc;

use super::cdb::be_at;
use super::lu::{LuState, NexusGate, Ports};
use super::sense::{Asc, Reject, Sense};
use super::{MAX_REGISTRATIONS, Nexus};

/// Persistent reservation types (SPC-4 6.16.3, table 172).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl ResType {
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::WriteExclusive,
            3 => Self::ExclusiveAccess,
            5 => Self::WriteExclusiveRegistrantsOnly,
            6 => Self::ExclusiveAccessRegistrantsOnly,
            7 => Self::WriteExclusiveAllRegistrants,
            8 => Self::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            Self::WriteExclusive => 1,
            Self::ExclusiveAccess => 3,
            Self::WriteExclusiveRegistrantsOnly => 5,
            Self::ExclusiveAccessRegistrantsOnly => 6,
            Self::WriteExclusiveAllRegistrants => 7,
            Self::ExclusiveAccessAllRegistrants => 8,
        }
    }

    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            Self::WriteExclusiveAllRegistrants | Self::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only and all-registrants types: registrants get access, and releasing
    /// tells them (SPC-4 5.12.11.2).
    pub fn registrants_type(self) -> bool {
        !matches!(self, Self::WriteExclusive | Self::ExclusiveAccess)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    pub key: u64,
    pub ports: Ports,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reservation {
    /// The holder; for all-registrants types every registrant holds it (SPC-4 5.12.10).
    pub holder: Ports,
    pub kind: ResType,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct PrState {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub reservation: Option<Reservation>,
}

/// LU_SCOPE, the only scope (SPC-4 6.16.2).
const LU_SCOPE: u8 = 0;
/// PERSISTENT RESERVE OUT parameter list length for every service action used here.
pub(crate) const PROUT_PARAM_LEN: usize = 24;

pub(crate) mod sa_in {
    pub const READ_KEYS: u8 = 0;
    pub const READ_RESERVATION: u8 = 1;
    pub const REPORT_CAPABILITIES: u8 = 2;
    pub const READ_FULL_STATUS: u8 = 3;
}

pub(crate) mod sa_out {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 6;
}

impl PrState {
    pub fn registration(&self, n: &Nexus) -> Option<&Registration> {
        self.regs.iter().find(|r| r.ports.is(n))
    }

    pub fn is_holder(&self, n: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.kind.all_registrants() => self.registration(n).is_some(),
            Some(r) => r.holder.is(n),
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// PERSISTENT RESERVE IN data, before ALLOCATION LENGTH truncation.
    pub fn read(&self, sa: u8) -> Option<Vec<u8>> {
        let mut d = self.generation.to_be_bytes().to_vec();
        match sa {
            sa_in::READ_KEYS => {
                d.extend_from_slice(&((self.regs.len() * 8) as u32).to_be_bytes());
                for r in &self.regs {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            sa_in::READ_RESERVATION => match &self.reservation {
                None => d.extend_from_slice(&0u32.to_be_bytes()),
                Some(res) => {
                    d.extend_from_slice(&16u32.to_be_bytes());
                    // All-registrants reservations report key 0 (SPC-4 6.15.3.3).
                    let key = if res.kind.all_registrants() {
                        0
                    } else {
                        self.regs
                            .iter()
                            .find(|r| r.ports == res.holder)
                            .map_or(0, |r| r.key)
                    };
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0, 0, (LU_SCOPE << 4) | res.kind.code(), 0, 0]);
                }
            },
            sa_in::REPORT_CAPABILITIES => {
                // Length 8; CRH=1 (RESERVE(6) conflicts with registrations); TMV=1 with
                // all six types; SIP_C, ATP_C and PTPL_C are 0.
                return Some(vec![0x00, 0x08, 0x10, 0x80, 0xea, 0x01, 0x00, 0x00]);
            }
            sa_in::READ_FULL_STATUS => {
                let mut descs = Vec::new();
                for r in &self.regs {
                    let holder = self.reservation.as_ref().and_then(|res| {
                        (res.kind.all_registrants() || res.holder == r.ports).then_some(res)
                    });
                    descs.extend_from_slice(&r.key.to_be_bytes());
                    descs.extend_from_slice(&[0, 0, 0, 0]);
                    descs.push(u8::from(holder.is_some()));
                    descs.push(holder.map_or(0, |res| (LU_SCOPE << 4) | res.kind.code()));
                    descs.extend_from_slice(&[0, 0, 0, 0]);
                    descs.extend_from_slice(&r.ports.relative_port.to_be_bytes());
                    let tid = transport_id(&r.ports.initiator);
                    descs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    descs.extend_from_slice(&tid);
                }
                d.extend_from_slice(&(descs.len() as u32).to_be_bytes());
                d.extend_from_slice(&descs);
            }
            _ => return None,
        }
        Some(d)
    }
}

/// An iSCSI TransportID (SPC-4 7.6.4.6): format 01b (name, ",i,0x" and ISID) when the
/// initiator port name carries an ISID, else format 00b; NUL-terminated, padded to 4.
pub(crate) fn transport_id(initiator_port: &str) -> Vec<u8> {
    let format: u8 = if initiator_port.contains(",i,0x") {
        0x40
    } else {
        0x00
    };
    let mut name = initiator_port.as_bytes().to_vec();
    name.push(0);
    while !name.len().is_multiple_of(4) || name.len() < 20 {
        name.push(0);
    }
    let mut t = vec![format | 0x05, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

/// Runs a PERSISTENT RESERVE OUT service action with its parameter list. PREEMPT AND
/// ABORT returns the I_T nexuses whose tasks it aborted: the command completes once their
/// block operations in flight are back ([`NexusGate::drained`]).
pub(crate) fn reserve_out(
    st: &mut LuState,
    n: &Nexus,
    sa: u8,
    scope_type: u8,
    data: &[u8],
) -> Result<Vec<Arc<NexusGate>>, Reject> {
    let r = service_action(st, n, sa, scope_type, data);
    // Published whatever the outcome: a refused action changed nothing, and an extra
    // change only costs waiting tasks one re-check.
    st.reservations_changed();
    r
}

fn service_action(
    st: &mut LuState,
    n: &Nexus,
    sa: u8,
    scope_type: u8,
    data: &[u8],
) -> Result<Vec<Arc<NexusGate>>, Reject> {
    if data.len() < PROUT_PARAM_LEN {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
    }
    let key = be_at(data, 0, 8);
    let sark = be_at(data, 8, 8);
    let flags = data.get(20).copied().unwrap_or(0);
    if flags & 0x08 != 0 {
        return Err(Sense::invalid_param(20, Some(3)).into()); // SPEC_I_PT
    }
    if flags & 0x04 != 0 {
        return Err(Sense::invalid_param(20, Some(2)).into()); // ALL_TG_PT
    }
    if flags & 0x01 != 0 {
        return Err(Sense::invalid_param(20, Some(0)).into()); // APTPL
    }
    let kind = || -> Result<ResType, Reject> {
        if scope_type >> 4 != LU_SCOPE {
            return Err(Sense::invalid_cdb(2, Some(7)).into());
        }
        ResType::from_code(scope_type & 0x0f).ok_or(Sense::invalid_cdb(2, Some(3)).into())
    };
    let own = st.pr.registration(n).map(|r| r.key);
    match sa {
        sa_out::REGISTER | sa_out::REGISTER_AND_IGNORE_EXISTING_KEY => {
            let ignore = sa == sa_out::REGISTER_AND_IGNORE_EXISTING_KEY;
            match own {
                None => {
                    if !ignore && key != 0 {
                        return Err(Reject::Conflict);
                    }
                    if sark != 0 {
                        if st.pr.regs.len() >= MAX_REGISTRATIONS {
                            return Err(
                                Sense::illegal(Asc::INSUFFICIENT_REGISTRATION_RESOURCES).into()
                            );
                        }
                        st.pr.regs.push(Registration {
                            key: sark,
                            ports: Ports::of(n),
                        });
                        st.pr.bump();
                    }
                }
                Some(k) => {
                    if !ignore && key != k {
                        return Err(Reject::Conflict);
                    }
                    if sark == 0 {
                        unregister(st, n);
                    } else if let Some(r) = st.pr.regs.iter_mut().find(|r| r.ports.is(n)) {
                        r.key = sark;
                    }
                    st.pr.bump();
                }
            }
            Ok(Vec::new())
        }
        sa_out::RESERVE => {
            if own != Some(key) {
                return Err(Reject::Conflict);
            }
            let kind = kind()?;
            match &st.pr.reservation {
                Some(res) => {
                    if st.pr.is_holder(n) && res.kind == kind {
                        Ok(Vec::new())
                    } else {
                        Err(Reject::Conflict)
                    }
                }
                None => {
                    st.pr.reservation = Some(Reservation {
                        holder: Ports::of(n),
                        kind,
                    });
                    Ok(Vec::new())
                }
            }
        }
        sa_out::RELEASE => {
            if own != Some(key) {
                return Err(Reject::Conflict);
            }
            let Some(res) = st.pr.reservation.clone() else {
                return Ok(Vec::new());
            };
            if !st.pr.is_holder(n) {
                return Ok(Vec::new());
            }
            if scope_type >> 4 != LU_SCOPE
                || ResType::from_code(scope_type & 0x0f) != Some(res.kind)
            {
                return Err(Sense::illegal(Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION).into());
            }
            st.pr.reservation = None;
            if res.kind.registrants_type() {
                notify_registrants(st, n, Asc::RESERVATIONS_RELEASED);
            }
            Ok(Vec::new())
        }
        sa_out::CLEAR => {
            if own != Some(key) {
                return Err(Reject::Conflict);
            }
            notify_registrants(st, n, Asc::RESERVATIONS_PREEMPTED);
            st.pr.regs.clear();
            st.pr.reservation = None;
            st.pr.bump();
            Ok(Vec::new())
        }
        sa_out::PREEMPT | sa_out::PREEMPT_AND_ABORT => {
            if own != Some(key) {
                return Err(Reject::Conflict);
            }
            let preempted = preempt(st, n, sark, kind)?;
            if sa == sa_out::PREEMPT {
                return Ok(Vec::new());
            }
            // SPC-4 5.12.11.2.5: the tasks of the preempted I_T nexuses are aborted (as by
            // ABORT TASK SET on each, the issuer's own excepted); TAS is 0, so they end
            // without status, and the unit attention REGISTRATIONS PREEMPTED (queued by
            // the preempt) tells those nexuses.
            Ok(st.abort_tasks_of(&preempted, n.id))
        }
        _ => Err(Sense::invalid_cdb(1, Some(4)).into()),
    }
}

/// Removes `n`'s registration and, when that ends its reservation, the reservation.
fn unregister(st: &mut LuState, n: &Nexus) {
    st.pr.regs.retain(|r| !r.ports.is(n));
    let Some(res) = st.pr.reservation.clone() else {
        return;
    };
    let released = if res.kind.all_registrants() {
        st.pr.regs.is_empty()
    } else {
        res.holder.is(n)
    };
    if released {
        st.pr.reservation = None;
        if res.kind.registrants_type() && !res.kind.all_registrants() {
            notify_registrants(st, n, Asc::RESERVATIONS_RELEASED);
        }
    }
}

/// Queues `asc` for every registrant's live nexuses except the issuer's.
fn notify_registrants(st: &mut LuState, n: &Nexus, asc: Asc) {
    let others: Vec<Ports> = st
        .pr
        .regs
        .iter()
        .filter(|r| !r.ports.is(n))
        .map(|r| r.ports.clone())
        .collect();
    for p in others {
        st.queue_ua_ports(&p, asc, n.id);
    }
}

/// PREEMPT (SPC-4 5.12.11.4): remove the registrations with the service action
/// reservation key and, if they held the reservation, take it over. Returns the ports of
/// the registrations removed.
fn preempt(
    st: &mut LuState,
    n: &Nexus,
    sark: u64,
    kind: impl Fn() -> Result<ResType, Reject>,
) -> Result<Vec<Ports>, Reject> {
    let res = st.pr.reservation.clone();
    let removes_holder = match &res {
        None => false,
        Some(r) if r.kind.all_registrants() => sark == 0,
        Some(r) => st
            .pr
            .regs
            .iter()
            .any(|g| g.ports == r.holder && g.key == sark),
    };
    if !removes_holder {
        // Only registrations go; a zero key names none (SPC-4 5.12.11.4.3).
        if sark == 0 {
            return Err(Sense::invalid_param(8, None).into());
        }
        if !st.pr.regs.iter().any(|r| r.key == sark) {
            return Err(Reject::Conflict);
        }
        let gone = remove_keys(st, n, |k| k == sark);
        st.pr.bump();
        return Ok(gone);
    }
    let kind = kind()?;
    let all = res.as_ref().is_some_and(|r| r.kind.all_registrants());
    let gone = if all {
        // SARK 0 under an all-registrants reservation: every other registration goes.
        remove_keys(st, n, |_| true)
    } else {
        remove_keys(st, n, |k| k == sark)
    };
    let changed = res.as_ref().is_some_and(|r| r.kind != kind);
    st.pr.reservation = Some(Reservation {
        holder: Ports::of(n),
        kind,
    });
    if changed {
        notify_registrants(st, n, Asc::RESERVATIONS_RELEASED);
    }
    st.pr.bump();
    Ok(gone)
}

/// Removes the other nexuses' registrations whose key matches, telling them; their ports.
fn remove_keys(st: &mut LuState, n: &Nexus, matches: impl Fn(u64) -> bool) -> Vec<Ports> {
    let gone: Vec<Ports> = st
        .pr
        .regs
        .iter()
        .filter(|r| !r.ports.is(n) && matches(r.key))
        .map(|r| r.ports.clone())
        .collect();
    st.pr.regs.retain(|r| r.ports.is(n) || !matches(r.key));
    for p in &gone {
        st.queue_ua_ports(p, Asc::REGISTRATIONS_PREEMPTED, n.id);
    }
    gone
}
