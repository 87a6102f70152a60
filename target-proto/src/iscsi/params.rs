//! Operational parameter negotiation: RFC 7143 section 13 ("Login/Text Operational Text
//! Keys") and section 6.2's result functions.
//!
//! The target never starts a negotiation: it answers each key the initiator offers with the
//! result of the key's function over both values, and declares its own
//! MaxRecvDataSegmentLength (and, for normal sessions, TargetPortalGroupTag and
//! TargetAlias). Keys the initiator does not offer keep their defaults. An answer is final,
//! so the initiator may transit at once.

use std::fmt::Write as _;

use target_wire::iscsi::parse_number;

/// What the target is willing to do; the limits of each negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetLimits {
    pub allow_header_digest: bool,
    pub allow_data_digest: bool,
    /// The target's MaxRecvDataSegmentLength, declared to the initiator.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    /// InitialR2T the target would like (OR: Yes wins).
    pub initial_r2t: bool,
    /// ImmediateData the target accepts (AND: No wins).
    pub immediate_data: bool,
}

impl Default for TargetLimits {
    fn default() -> Self {
        Self {
            allow_header_digest: true,
            allow_data_digest: true,
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 256 * 1024,
            max_outstanding_r2t: 16,
            initial_r2t: false,
            immediate_data: true,
        }
    }
}

/// The negotiated values of a connection and its session; starts at RFC 7143's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What the initiator can receive: the longest data segment the target may send.
    pub initiator_mrdsl: u32,
    /// What the target can receive.
    pub target_mrdsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
    pub max_connections: u32,
}

impl Default for Negotiated {
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            initiator_mrdsl: 8192,
            target_mrdsl: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            max_outstanding_r2t: 1,
            initial_r2t: true,
            immediate_data: true,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }
}

/// How a key is negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A comma-separated list; the answer is the first of the initiator's values the target
    /// supports.
    Digest,
    /// Numerical, result the smaller (MIN) or larger (MAX) of both values, in a range.
    Min(u64, u64),
    Max(u64, u64),
    /// Boolean; OR: Yes if either says Yes; AND: No if either says No.
    Or,
    And,
    /// Declarative: each side states its own value; the target answers nothing.
    Declarative,
    /// Declared by the initiator only, during login (InitiatorName, SessionType, ...): the
    /// login code reads them.
    LoginOnly,
    /// Security keys, valid only in the security stage (handled by the authentication).
    Security,
    /// Keys the target sends and an initiator may not (TargetAddress, ...).
    TargetOnly,
    /// Removed by RFC 7143 (markers): answered so the initiator can go on.
    Obsolete,
}

fn kind(key: &str) -> Option<Kind> {
    const LEN: (u64, u64) = (512, (1 << 24) - 1);
    Some(match key {
        "HeaderDigest" | "DataDigest" => Kind::Digest,
        "MaxConnections" => Kind::Min(1, 65535),
        "InitialR2T" | "DataPDUInOrder" | "DataSequenceInOrder" => Kind::Or,
        "ImmediateData" => Kind::And,
        "MaxRecvDataSegmentLength" => Kind::Declarative,
        "MaxBurstLength" | "FirstBurstLength" => Kind::Min(LEN.0, LEN.1),
        "DefaultTime2Wait" => Kind::Max(0, 3600),
        "DefaultTime2Retain" => Kind::Min(0, 3600),
        "MaxOutstandingR2T" => Kind::Min(1, 65535),
        "ErrorRecoveryLevel" => Kind::Min(0, 2),
        // RFC 7144: the protocol level the sides share; this target implements level 1.
        "iSCSIProtocolLevel" => Kind::Min(0, 31),
        "InitiatorName" | "SessionType" | "TargetName" | "InitiatorAlias" => Kind::LoginOnly,
        "AuthMethod" | "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R" => Kind::Security,
        "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => Kind::TargetOnly,
        "OFMarker" | "IFMarker" | "OFMarkInt" | "IFMarkInt" => Kind::Obsolete,
        // Text-only keys.
        "SendTargets" => return None,
        _ => return None,
    })
}

/// Whether a key is one the login stage handles itself (identity and security).
pub fn is_login_identity(key: &str) -> bool {
    matches!(kind(key), Some(Kind::LoginOnly))
}

pub fn is_security(key: &str) -> bool {
    matches!(kind(key), Some(Kind::Security))
}

/// Why an offer broke the rules badly enough to fail the login (section 6.2: a value
/// outside the key's range is answered `Reject`; these are worse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegotiationError {
    /// FirstBurstLength above MaxBurstLength after negotiation (section 13.14).
    FirstBurstAboveMaxBurst,
}

/// One operational negotiation (a login's operational stage, or a Text exchange in full
/// feature phase) over the values of a connection.
pub struct Negotiation<'a> {
    limits: &'a TargetLimits,
    values: &'a mut Negotiated,
    /// Keys answered so far, to answer each only once.
    answered: Vec<String>,
    /// The target declared its MaxRecvDataSegmentLength.
    declared_mrdsl: bool,
    leading: bool,
}

impl<'a> Negotiation<'a> {
    /// `leading`: a login (leading-only keys such as MaxBurstLength may be negotiated);
    /// false in full feature phase, where only MaxRecvDataSegmentLength may change.
    pub fn new(limits: &'a TargetLimits, values: &'a mut Negotiated, leading: bool) -> Self {
        Self {
            limits,
            values,
            answered: Vec::new(),
            declared_mrdsl: false,
            leading,
        }
    }

    /// Answers one operational key into `out` (`key=value\0`). Identity, security and
    /// text-only keys are the caller's; they are ignored here.
    pub fn offer(&mut self, key: &str, value: &str, out: &mut Vec<u8>) {
        let Some(k) = kind(key) else {
            if key != "SendTargets" {
                answer(out, key, "NotUnderstood");
            }
            return;
        };
        if matches!(k, Kind::LoginOnly | Kind::Security) {
            return;
        }
        if self.answered.iter().any(|a| a == key) {
            return;
        }
        self.answered.push(key.to_string());
        // Values the initiator sends back for the target's declarations.
        if matches!(value, "Reject" | "Irrelevant" | "NotUnderstood") {
            return;
        }
        let lo_key = !matches!(key, "MaxRecvDataSegmentLength");
        if !self.leading && lo_key {
            // Leading-only and login-only keys cannot change in full feature phase.
            answer(out, key, "Reject");
            return;
        }
        let v = &mut *self.values;
        let l = self.limits;
        match k {
            Kind::Digest => {
                let allow = if key == "HeaderDigest" {
                    l.allow_header_digest
                } else {
                    l.allow_data_digest
                };
                let pick = value.split(',').find(|c| match *c {
                    "None" => true,
                    "CRC32C" => allow,
                    _ => false,
                });
                match pick {
                    Some(p) => {
                        let on = p == "CRC32C";
                        if key == "HeaderDigest" {
                            v.header_digest = on;
                        } else {
                            v.data_digest = on;
                        }
                        answer(out, key, p);
                    }
                    None => answer(out, key, "Reject"),
                }
            }
            Kind::Min(lo, hi) | Kind::Max(lo, hi) => {
                let Some(n) = parse_number(value).filter(|n| (lo..=hi).contains(n)) else {
                    answer(out, key, "Reject");
                    return;
                };
                let ours: u64 = match key {
                    "MaxConnections" => 1,
                    "MaxBurstLength" => l.max_burst_length.into(),
                    "FirstBurstLength" => l.first_burst_length.into(),
                    "DefaultTime2Wait" => 2,
                    "DefaultTime2Retain" => 0,
                    "MaxOutstandingR2T" => l.max_outstanding_r2t.into(),
                    // ERL 0 only: errors end the connection and the session.
                    "ErrorRecoveryLevel" => 0,
                    "iSCSIProtocolLevel" => 1,
                    _ => n,
                };
                let r = if matches!(k, Kind::Min(..)) {
                    n.min(ours)
                } else {
                    n.max(ours)
                };
                let r32 = u32::try_from(r).unwrap_or(u32::MAX);
                match key {
                    "MaxConnections" => v.max_connections = r32,
                    "MaxBurstLength" => v.max_burst_length = r32,
                    "FirstBurstLength" => v.first_burst_length = r32,
                    "DefaultTime2Wait" => v.default_time2wait = r32,
                    "DefaultTime2Retain" => v.default_time2retain = r32,
                    "MaxOutstandingR2T" => v.max_outstanding_r2t = r32,
                    "ErrorRecoveryLevel" => v.error_recovery_level = r32,
                    _ => {}
                }
                answer(out, key, &r.to_string());
            }
            Kind::Or | Kind::And => {
                let Some(theirs) = yes_no(value) else {
                    answer(out, key, "Reject");
                    return;
                };
                let ours = match key {
                    "InitialR2T" => l.initial_r2t,
                    "ImmediateData" => l.immediate_data,
                    // DataPDUInOrder and DataSequenceInOrder: this target needs both.
                    _ => true,
                };
                let r = if k == Kind::Or {
                    theirs || ours
                } else {
                    theirs && ours
                };
                match key {
                    "InitialR2T" => v.initial_r2t = r,
                    "ImmediateData" => v.immediate_data = r,
                    "DataPDUInOrder" => v.data_pdu_in_order = r,
                    _ => v.data_sequence_in_order = r,
                }
                answer(out, key, if r { "Yes" } else { "No" });
            }
            Kind::Declarative => {
                // MaxRecvDataSegmentLength: what the initiator can receive.
                match parse_number(value).filter(|n| (512..(1 << 24)).contains(n)) {
                    Some(n) => v.initiator_mrdsl = u32::try_from(n).unwrap_or(u32::MAX),
                    None => answer(out, key, "Reject"),
                }
                self.declare_mrdsl(out);
            }
            Kind::TargetOnly => answer(out, key, "Irrelevant"),
            Kind::Obsolete => {
                let a = if key.ends_with("Marker") {
                    "No"
                } else {
                    "Irrelevant"
                };
                answer(out, key, a);
            }
            Kind::LoginOnly | Kind::Security => {}
        }
    }

    /// Declares the target's MaxRecvDataSegmentLength once per negotiation.
    pub fn declare_mrdsl(&mut self, out: &mut Vec<u8>) {
        if !self.declared_mrdsl && self.leading {
            self.declared_mrdsl = true;
            self.values.target_mrdsl = self.limits.max_recv_data_segment_length;
            answer(
                out,
                "MaxRecvDataSegmentLength",
                &self.limits.max_recv_data_segment_length.to_string(),
            );
        }
    }

    /// Checks the values after the last offer of a negotiation.
    pub fn finish(self) -> Result<(), NegotiationError> {
        let v = self.values;
        if v.first_burst_length > v.max_burst_length {
            return Err(NegotiationError::FirstBurstAboveMaxBurst);
        }
        Ok(())
    }
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// Appends `key=value\0`.
pub fn answer(out: &mut Vec<u8>, key: &str, value: &str) {
    let mut s = String::with_capacity(key.len() + value.len() + 2);
    let _ = write!(s, "{key}={value}");
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(limits: &TargetLimits, offers: &[(&str, &str)]) -> (Negotiated, String) {
        let mut v = Negotiated::default();
        let mut out = Vec::new();
        let mut n = Negotiation::new(limits, &mut v, true);
        for (k, val) in offers {
            n.offer(k, val, &mut out);
        }
        n.finish().unwrap();
        let s = String::from_utf8(out).unwrap().replace('\0', " ");
        (v, s)
    }

    #[test]
    fn linux_open_iscsi_offer() {
        // What open-iscsi's iscsid sends by default in the operational stage.
        let offers = [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "262144"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("MaxRecvDataSegmentLength", "262144"),
        ];
        let (v, s) = run(&TargetLimits::default(), &offers);
        assert_eq!(
            s,
            "HeaderDigest=None DataDigest=None DefaultTime2Wait=2 DefaultTime2Retain=0 \
             IFMarker=No OFMarker=No ErrorRecoveryLevel=0 InitialR2T=No ImmediateData=Yes \
             MaxBurstLength=1048576 FirstBurstLength=262144 MaxOutstandingR2T=1 \
             MaxConnections=1 DataPDUInOrder=Yes DataSequenceInOrder=Yes \
             MaxRecvDataSegmentLength=262144 "
        );
        assert!(!v.initial_r2t && v.immediate_data);
        assert_eq!((v.initiator_mrdsl, v.target_mrdsl), (262_144, 262_144));
        assert_eq!(v.max_burst_length, 1024 * 1024);
    }

    #[test]
    fn result_functions() {
        let strict = TargetLimits {
            allow_data_digest: false,
            initial_r2t: true,
            immediate_data: false,
            ..TargetLimits::default()
        };
        let (v, s) = run(
            &strict,
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "CRC32C"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("DefaultTime2Wait", "7"),
                ("ErrorRecoveryLevel", "2"),
                ("MaxOutstandingR2T", "64"),
                ("X-com.example.key", "1"),
            ],
        );
        assert_eq!(
            s,
            "HeaderDigest=CRC32C DataDigest=Reject InitialR2T=Yes ImmediateData=No \
             DefaultTime2Wait=7 ErrorRecoveryLevel=0 MaxOutstandingR2T=16 \
             X-com.example.key=NotUnderstood "
        );
        assert!(v.header_digest && !v.data_digest);
        assert_eq!(v.max_outstanding_r2t, 16);
    }

    #[test]
    fn out_of_range_and_bad_values_are_rejected() {
        let (v, s) = run(
            &TargetLimits::default(),
            &[
                ("MaxBurstLength", "100"),
                ("FirstBurstLength", "0x1000"),
                ("InitialR2T", "maybe"),
                ("MaxRecvDataSegmentLength", "16777216"),
                ("TargetAddress", "1.2.3.4"),
                ("OFMarkInt", "1~65535"),
            ],
        );
        assert_eq!(
            s,
            "MaxBurstLength=Reject FirstBurstLength=4096 InitialR2T=Reject \
             MaxRecvDataSegmentLength=Reject MaxRecvDataSegmentLength=262144 \
             TargetAddress=Irrelevant OFMarkInt=Irrelevant "
        );
        assert_eq!(v.initiator_mrdsl, 8192, "the default stays");
        assert_eq!(v.max_burst_length, 262_144);
    }

    #[test]
    fn first_burst_above_max_burst_fails() {
        let mut v = Negotiated::default();
        let mut out = Vec::new();
        let l = TargetLimits::default();
        let mut n = Negotiation::new(&l, &mut v, true);
        n.offer("MaxBurstLength", "4096", &mut out);
        // FirstBurstLength offered above the MaxBurstLength just agreed.
        n.offer("FirstBurstLength", "8192", &mut out);
        assert_eq!(n.finish(), Err(NegotiationError::FirstBurstAboveMaxBurst));
    }

    #[test]
    fn full_feature_phase_allows_only_mrdsl() {
        let mut v = Negotiated::default();
        let mut out = Vec::new();
        let l = TargetLimits::default();
        let mut n = Negotiation::new(&l, &mut v, false);
        n.offer("MaxRecvDataSegmentLength", "65536", &mut out);
        n.offer("MaxBurstLength", "4096", &mut out);
        assert_eq!(out, b"MaxBurstLength=Reject\0");
        assert_eq!(v.initiator_mrdsl, 65536);
    }
}
