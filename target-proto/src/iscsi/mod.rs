//! iSCSI target (RFC 7143) at error recovery level 0.
//!
//! - [`params`]: operational key negotiation (section 13) and the result functions.
//! - [`chap`]: CHAP and mutual CHAP in the security stage (section 12.1.3).
//! - [`conn`]: one TCP connection's engine: login (section 6), then the full feature phase
//!   of a one-connection session: SCSI commands with immediate, unsolicited and solicited
//!   data (R2T), Data-In with status collapse, CmdSN windows, NOP, task management, text
//!   (SendTargets), logout.
//! - This module: the targets, portals and the [`Registry`] of live sessions, the only state
//!   the connections share (TSIH allocation and session reinstatement, section 6.3.5).
//!
//! Sessions have one connection (MaxConnections=1): a second connection to a session is
//! refused at login, so every task of a session lives in one connection's engine.

pub mod chap;
pub mod conn;
pub mod host;
pub mod params;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::scsi::ScsiTarget;
use chap::ChapConfig;

/// One iSCSI target node: a name and its logical units.
pub struct TargetNode {
    pub iqn: String,
    pub alias: Option<String>,
    pub scsi: Arc<ScsiTarget>,
    /// Initiator names allowed to log in; `None` allows any.
    pub allowed_initiators: Option<Vec<String>>,
    /// CHAP required of initiators logging in to this target.
    pub chap: Option<ChapConfig>,
}

impl TargetNode {
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators
            .as_ref()
            .is_none_or(|a| a.iter().any(|i| i == initiator))
    }
}

/// An address the target listens on, reported by SendTargets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Portal {
    /// `None` for a wildcard listener: the address the initiator reached is reported.
    pub addr: Option<IpAddr>,
    pub port: u16,
}

/// Appends a PDU to `out`: the BHS with its DataSegmentLength set, the header digest, the
/// data padded to 4 bytes, the data digest (RFC 7143 section 11.1), digests as negotiated.
pub(crate) fn append_pdu(
    out: &mut Vec<u8>,
    bhs: &[u8; target_wire::iscsi::BHS_LEN],
    data: &[u8],
    header_digest: bool,
    data_digest: bool,
) {
    append_pdu_header(out, bhs, data.len(), header_digest);
    out.extend_from_slice(data);
    append_pdu_trailer(out, data, data_digest);
}

/// The part of a PDU before its data segment: the BHS with DataSegmentLength `data_len`
/// and the header digest if negotiated.
pub(crate) fn append_pdu_header(
    out: &mut Vec<u8>,
    bhs: &[u8; target_wire::iscsi::BHS_LEN],
    data_len: usize,
    header_digest: bool,
) {
    use target_wire::iscsi::{Bhs, digest};
    let mut hdr = *bhs;
    let _ = Bhs::new_unchecked(&mut hdr[..]).set_data_segment_len(data_len);
    out.extend_from_slice(&hdr);
    if header_digest {
        out.extend_from_slice(&digest(&hdr));
    }
}

/// The part of a PDU after its data segment `data` (which is not appended): the padding to
/// 4 bytes and the data digest over data and padding if negotiated. Nothing when there is
/// no data.
pub(crate) fn append_pdu_trailer(out: &mut Vec<u8>, data: &[u8], data_digest: bool) {
    use target_wire::crc32c::{crc32c, crc32c_append};
    use target_wire::iscsi::padded;
    if data.is_empty() {
        return;
    }
    let pad = &[0u8; 3][..padded(data.len()) - data.len()];
    out.extend_from_slice(pad);
    if data_digest {
        out.extend_from_slice(&crc32c_append(crc32c(data), pad).to_le_bytes());
    }
}

/// The portal group every portal belongs to (TargetPortalGroupTag).
pub const PORTAL_GROUP: u16 = 1;

/// A live session as the registry knows it.
#[derive(Debug)]
struct SessionEntry {
    initiator: String,
    isid: [u8; 6],
    target: String,
    /// The CHAP name the initiator authenticated as; `None` without CHAP.
    chap_name: Option<String>,
    tsih: u16,
    /// Set when a newer login reinstates this session: its connection ends itself.
    killed: Arc<AtomicBool>,
}

/// What a new session gets from the registry.
#[derive(Debug)]
pub struct SessionGrant {
    pub tsih: u16,
    /// Unique per session while the target runs: the I_T nexus identifier.
    pub nexus_id: u64,
    pub killed: Arc<AtomicBool>,
    /// A session with the same initiator, ISID and target was ended (reinstatement).
    pub reinstated: bool,
}

/// Why the registry gave no session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionRefused {
    /// A session with the same initiator name, ISID and target lives, but it authenticated
    /// with another CHAP name (or with CHAP where this login had none, or the reverse):
    /// reinstating it would let one set of credentials end another's session. Carries the
    /// live session's CHAP name, for the log.
    OtherIdentity { chap_name: Option<String> },
    /// Every TSIH (1 to 65535) belongs to a live session.
    NoTsih,
}

/// Targets, portals and live sessions, shared by all connections behind a mutex; touched
/// at login and logout only.
pub struct Registry {
    targets: Vec<Arc<TargetNode>>,
    portals: Vec<Portal>,
    /// CHAP required for discovery sessions.
    pub discovery_chap: Option<ChapConfig>,
    sessions: Vec<SessionEntry>,
    next_tsih: u16,
    next_nexus: u64,
}

impl Registry {
    pub fn new(targets: Vec<TargetNode>, portals: Vec<Portal>) -> Self {
        Self {
            targets: targets.into_iter().map(Arc::new).collect(),
            portals,
            discovery_chap: None,
            sessions: Vec::new(),
            next_tsih: 1,
            next_nexus: 1,
        }
    }

    /// Replaces the initiator allow list of target `iqn` (`None`: any initiator). Logins
    /// from now on are checked against it; sessions already logged in stay. False when
    /// there is no such target.
    pub fn set_allowed_initiators(&mut self, iqn: &str, initiators: Option<Vec<String>>) -> bool {
        let Some(t) = self.targets.iter_mut().find(|t| t.iqn == iqn) else {
            return false;
        };
        *t = Arc::new(TargetNode {
            iqn: t.iqn.clone(),
            alias: t.alias.clone(),
            scsi: Arc::clone(&t.scsi),
            allowed_initiators: initiators,
            chap: t.chap.clone(),
        });
        true
    }

    /// Replaces the CHAP target `iqn` requires (`None`: none). Logins from now on use it;
    /// sessions already logged in stay. False when there is no such target.
    pub fn set_chap(&mut self, iqn: &str, chap: Option<ChapConfig>) -> bool {
        let Some(t) = self.targets.iter_mut().find(|t| t.iqn == iqn) else {
            return false;
        };
        *t = Arc::new(TargetNode {
            iqn: t.iqn.clone(),
            alias: t.alias.clone(),
            scsi: Arc::clone(&t.scsi),
            allowed_initiators: t.allowed_initiators.clone(),
            chap,
        });
        true
    }

    /// Adds a target node; false when one of that name exists.
    pub fn add_target(&mut self, t: TargetNode) -> bool {
        if self.target(&t.iqn).is_some() {
            return false;
        }
        self.targets.push(Arc::new(t));
        true
    }

    /// Removes target `iqn` and ends its sessions: their connections close at their next
    /// tick, as LIO ends the sessions of a target it deletes. The number of sessions ended,
    /// or `None` when there is no such target.
    pub fn remove_target(&mut self, iqn: &str) -> Option<usize> {
        let i = self
            .targets
            .iter()
            .position(|t| t.iqn.eq_ignore_ascii_case(iqn))?;
        self.targets.remove(i);
        let before = self.sessions.len();
        self.sessions.retain(|s| {
            let ours = s.target.eq_ignore_ascii_case(iqn);
            if ours {
                s.killed.store(true, Ordering::Relaxed);
            }
            !ours
        });
        Some(before - self.sessions.len())
    }

    pub fn targets(&self) -> &[Arc<TargetNode>] {
        &self.targets
    }

    pub fn portals(&self) -> &[Portal] {
        &self.portals
    }

    /// The portals SendTargets reports from now on (listeners added or removed while the
    /// target runs).
    pub fn set_portals(&mut self, portals: Vec<Portal>) {
        self.portals = portals;
    }

    pub fn target(&self, iqn: &str) -> Option<Arc<TargetNode>> {
        // iSCSI names compare case-insensitively after stringprep; IQNs are lower case.
        self.targets
            .iter()
            .find(|t| t.iqn.eq_ignore_ascii_case(iqn))
            .cloned()
    }

    /// Opens a session; one with the same initiator name, ISID and target is ended
    /// (session reinstatement, RFC 7143 section 6.3.5) when it authenticated as the same
    /// CHAP name (`chap_name`, `None` without CHAP); otherwise the old session stays and
    /// the new one is refused. Refused too when every TSIH is taken.
    pub fn open_session(
        &mut self,
        initiator: &str,
        isid: [u8; 6],
        target: &str,
        chap_name: Option<&str>,
    ) -> Result<SessionGrant, SessionRefused> {
        let old = self
            .sessions
            .iter()
            .position(|s| s.initiator == initiator && s.isid == isid && s.target == target);
        if let Some(i) = old
            && self.sessions[i].chap_name.as_deref() != chap_name
        {
            return Err(SessionRefused::OtherIdentity {
                chap_name: self.sessions[i].chap_name.clone(),
            });
        }
        // The TSIHs in use but the reinstated session's, one bit each: the search below is
        // bounded by the 65535 TSIHs there are, and ends without one when all are taken
        // (it runs under the registry lock every connection's login takes).
        let mut used = [0u64; 1 << 10];
        for (i, s) in self.sessions.iter().enumerate() {
            if Some(i) != old {
                used[usize::from(s.tsih) / 64] |= 1 << (s.tsih % 64);
            }
        }
        let tsih = (0..=u16::MAX)
            .map(|k| self.next_tsih.wrapping_add(k))
            // TSIH 0 is reserved (RFC 7143 section 11.12.5).
            .find(|&t| t != 0 && used[usize::from(t) / 64] & (1 << (t % 64)) == 0)
            .ok_or(SessionRefused::NoTsih)?;
        self.next_tsih = tsih.wrapping_add(1);
        let reinstated = old.is_some();
        if let Some(i) = old {
            self.sessions
                .swap_remove(i)
                .killed
                .store(true, Ordering::Relaxed);
        }
        let nexus_id = self.next_nexus;
        self.next_nexus += 1;
        let killed = Arc::new(AtomicBool::new(false));
        self.sessions.push(SessionEntry {
            initiator: initiator.to_string(),
            isid,
            target: target.to_string(),
            chap_name: chap_name.map(str::to_string),
            tsih,
            killed: Arc::clone(&killed),
        });
        Ok(SessionGrant {
            tsih,
            nexus_id,
            killed,
            reinstated,
        })
    }

    /// Whether a session with this TSIH lives (a login naming it adds a connection).
    pub fn session_exists(&self, tsih: u16) -> bool {
        self.sessions.iter().any(|s| s.tsih == tsih)
    }

    pub fn close_session(&mut self, tsih: u16) {
        self.sessions.retain(|s| s.tsih != tsih);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests;
