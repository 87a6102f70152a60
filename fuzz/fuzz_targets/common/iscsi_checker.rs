//! Shared by the iSCSI fuzz targets (included with `#[path]`): checks that what the target
//! sends is whole, well-formed target PDUs with the digests its login answered.

use target_wire::iscsi::{Bhs, LoginResponseRepr, Opcode, stage};

/// Splits the target's output into PDUs: only whole PDUs, digests as the login answered.
#[derive(Default)]
pub struct Checker {
    answered: (bool, bool),
    pub digests: (bool, bool),
    /// A final login response granted the full feature phase.
    pub granted: bool,
}

impl Checker {
    pub fn check(&mut self, mut out: &[u8]) {
        while !out.is_empty() {
            let h = Bhs::new_checked(out).expect("whole PDUs only");
            assert!(!h.opcode().from_initiator(), "target opcodes only");
            let login = h.opcode() == Opcode::LoginResponse;
            let (hd, dd) = if login { (false, false) } else { self.digests };
            let l = h.layout(hd, dd);
            assert!(out.len() >= l.total, "whole PDUs only");
            assert!(l.header_digest_ok(out) && l.data_digest_ok(&out[..l.total]));
            if login {
                let data = &out[l.header..l.header + l.data];
                for (k, v) in target_wire::iscsi::text_pairs(data).flatten() {
                    match k {
                        "HeaderDigest" => self.answered.0 = v == "CRC32C",
                        "DataDigest" => self.answered.1 = v == "CRC32C",
                        _ => {}
                    }
                }
                let r = LoginResponseRepr::parse(&h).unwrap();
                if r.status == 0 && r.transit && r.nsg == stage::FULL_FEATURE {
                    self.digests = self.answered;
                    self.granted = true;
                }
            }
            out = &out[l.total..];
        }
    }
}
