//! iSCSI target (RFC 7143) at error recovery level 0: login with CHAP, operational
//! negotiation, discovery sessions, and the full feature phase of one-connection sessions.
pub mod chap;
pub mod params;
