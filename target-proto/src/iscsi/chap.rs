//! CHAP authentication in the login's security stage: RFC 7143 section 12.1.3 (CHAP with
//! MD5, CHAP_A=5) over RFC 1994's response `MD5(identifier || secret || challenge)`, and
//! mutual CHAP, where the initiator challenges the target in its turn.
//!
//! The exchange: the initiator offers `AuthMethod=CHAP[,None]`; the target answers
//! `AuthMethod=CHAP`. The initiator sends `CHAP_A=<list>`; the target picks 5 and sends
//! `CHAP_I` and `CHAP_C`. The initiator answers `CHAP_N` and `CHAP_R` (and, for mutual
//! CHAP, its own `CHAP_I` and `CHAP_C`); the target checks the response and, for mutual
//! CHAP, answers with its own `CHAP_N` and `CHAP_R`.

use md5::{Digest, Md5};
use target_wire::iscsi::{decode_binary, encode_hex, parse_number};

use super::params::answer;

/// A CHAP name and secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapSecret {
    pub name: String,
    pub secret: Vec<u8>,
}

/// CHAP required of initiators, and optionally the target's own credentials for mutual CHAP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapConfig {
    pub initiator: ChapSecret,
    pub target: Option<ChapSecret>,
}

/// Bytes of the target's challenge (RFC 7143 allows up to 1024; 16 is what Linux and
/// libiscsi send and accept).
pub const CHALLENGE_LEN: usize = 16;
/// The longest challenge accepted from an initiator.
const MAX_CHALLENGE: usize = 1024;

/// Why CHAP failed; each ends the login with an authentication failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChapError {
    /// CHAP_A offered no algorithm but MD5 (5).
    NoAlgorithm,
    /// A CHAP key came out of order, or one is missing.
    Sequence,
    /// Wrong name or response.
    BadResponse,
    /// Mutual CHAP asked of a target that has no credentials for it.
    NoMutualSecret,
    /// The initiator's challenge repeats the target's (a reflection attack, section 12.1.3).
    ReflectedChallenge,
    /// An unparsable value.
    Malformed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for CHAP_A.
    Algorithm,
    /// Sent CHAP_I/CHAP_C; waiting for CHAP_N/CHAP_R.
    Response,
    /// Authenticated.
    Done,
}

/// One CHAP exchange.
#[derive(Debug)]
pub struct Chap {
    state: State,
    id: u8,
    challenge: [u8; CHALLENGE_LEN],
}

impl Chap {
    /// `random`: unpredictable bytes from the caller (the engine has no entropy source).
    pub fn new(random: [u8; CHALLENGE_LEN + 1]) -> Self {
        let mut challenge = [0; CHALLENGE_LEN];
        challenge.copy_from_slice(&random[1..]);
        Self {
            state: State::Algorithm,
            id: random[0],
            challenge,
        }
    }

    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Handles the CHAP keys of one login request (`keys` holds only CHAP_* pairs) and
    /// appends the target's answer to `out`.
    pub fn step(
        &mut self,
        config: &ChapConfig,
        keys: &[(&str, &str)],
        out: &mut Vec<u8>,
    ) -> Result<(), ChapError> {
        let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        match self.state {
            State::Algorithm => {
                let a = get("CHAP_A").ok_or(ChapError::Sequence)?;
                if !a.split(',').any(|x| x == "5") {
                    return Err(ChapError::NoAlgorithm);
                }
                answer(out, "CHAP_A", "5");
                answer(out, "CHAP_I", &self.id.to_string());
                let mut hex = [0u8; 2 + 2 * CHALLENGE_LEN];
                let n = encode_hex(&self.challenge, &mut hex).ok_or(ChapError::Malformed)?;
                answer(
                    out,
                    "CHAP_C",
                    core::str::from_utf8(&hex[..n]).map_err(|_| ChapError::Malformed)?,
                );
                self.state = State::Response;
                Ok(())
            }
            State::Response => {
                let name = get("CHAP_N").ok_or(ChapError::Sequence)?;
                let r = get("CHAP_R").ok_or(ChapError::Sequence)?;
                let mut resp = [0u8; 16];
                let n = decode_binary(r, &mut resp).ok_or(ChapError::Malformed)?;
                let expected = response(self.id, &config.initiator.secret, &self.challenge);
                // Both checks run, so timing does not tell a wrong name from a wrong secret.
                let name_ok = name == config.initiator.name;
                let resp_ok = n == 16 && constant_time_eq(&resp, &expected);
                if !(name_ok & resp_ok) {
                    return Err(ChapError::BadResponse);
                }
                match (get("CHAP_I"), get("CHAP_C")) {
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        let target = config.target.as_ref().ok_or(ChapError::NoMutualSecret)?;
                        let id = parse_number(i)
                            .and_then(|i| u8::try_from(i).ok())
                            .ok_or(ChapError::Malformed)?;
                        let mut theirs = vec![0u8; MAX_CHALLENGE];
                        let cn = decode_binary(c, &mut theirs).ok_or(ChapError::Malformed)?;
                        if theirs[..cn] == self.challenge[..] {
                            return Err(ChapError::ReflectedChallenge);
                        }
                        let ours = response(id, &target.secret, &theirs[..cn]);
                        let mut hex = [0u8; 34];
                        let hn = encode_hex(&ours, &mut hex).ok_or(ChapError::Malformed)?;
                        answer(out, "CHAP_N", &target.name);
                        answer(
                            out,
                            "CHAP_R",
                            core::str::from_utf8(&hex[..hn]).map_err(|_| ChapError::Malformed)?,
                        );
                    }
                    _ => return Err(ChapError::Sequence),
                }
                self.state = State::Done;
                Ok(())
            }
            State::Done => Err(ChapError::Sequence),
        }
    }
}

/// RFC 1994: MD5 over the identifier, the secret and the challenge.
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mutual: bool) -> ChapConfig {
        ChapConfig {
            initiator: ChapSecret {
                name: "alice".into(),
                secret: b"initiator-secret".to_vec(),
            },
            target: mutual.then(|| ChapSecret {
                name: "target".into(),
                secret: b"target-secret-12".to_vec(),
            }),
        }
    }

    fn pairs(out: &[u8]) -> Vec<(String, String)> {
        target_wire::iscsi::text_pairs(out)
            .map(|p| {
                let (k, v) = p.unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        let mut s = String::from("0x");
        for x in b {
            s.push_str(&format!("{x:02x}"));
        }
        s
    }

    #[test]
    fn md5_response_matches_rfc1994() {
        // MD5 of id 0x01, "secret" and the challenge bytes 0..16, computed independently
        // (python3 hashlib).
        let c: Vec<u8> = (0..16).collect();
        assert_eq!(
            hex(&response(1, b"secret", &c)),
            "0x740e86463bda3a4d7017d6e0fba0699d"
        );
    }

    #[test]
    fn one_way_and_mutual_exchanges() {
        for mutual in [false, true] {
            let cfg = config(mutual);
            let mut chap = Chap::new([7; 17]);
            let mut out = Vec::new();
            chap.step(&cfg, &[("CHAP_A", "7,5")], &mut out).unwrap();
            let p = pairs(&out);
            assert_eq!(p[0], ("CHAP_A".into(), "5".into()));
            assert_eq!(p[1], ("CHAP_I".into(), "7".into()));
            assert_eq!(p[2].1, hex(&[7; 16]));
            let r = hex(&response(7, b"initiator-secret", &[7; 16]));
            let mut keys = vec![("CHAP_N", "alice"), ("CHAP_R", r.as_str())];
            let their_c = hex(&[9; 16]);
            if mutual {
                keys.push(("CHAP_I", "3"));
                keys.push(("CHAP_C", their_c.as_str()));
            }
            let mut out = Vec::new();
            chap.step(&cfg, &keys, &mut out).unwrap();
            assert!(chap.done());
            if mutual {
                let p = pairs(&out);
                assert_eq!(p[0], ("CHAP_N".into(), "target".into()));
                assert_eq!(p[1].1, hex(&response(3, b"target-secret-12", &[9; 16])));
            } else {
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn failures() {
        let cfg = config(false);
        let mut chap = Chap::new([1; 17]);
        let mut out = Vec::new();
        assert_eq!(
            chap.step(&cfg, &[("CHAP_A", "6,7")], &mut out),
            Err(ChapError::NoAlgorithm)
        );
        assert_eq!(
            chap.step(&cfg, &[("CHAP_N", "alice")], &mut out),
            Err(ChapError::Sequence)
        );
        chap.step(&cfg, &[("CHAP_A", "5")], &mut out).unwrap();
        let good = hex(&response(1, b"initiator-secret", &[1; 16]));
        let bad = hex(&response(1, b"wrong", &[1; 16]));
        for (n, r, e) in [
            ("alice", bad.as_str(), ChapError::BadResponse),
            ("bob", good.as_str(), ChapError::BadResponse),
            ("alice", "0xzz", ChapError::Malformed),
            ("alice", "0x0102", ChapError::BadResponse),
        ] {
            let mut c = Chap::new([1; 17]);
            c.step(&cfg, &[("CHAP_A", "5")], &mut out).unwrap();
            assert_eq!(
                c.step(&cfg, &[("CHAP_N", n), ("CHAP_R", r)], &mut out),
                Err(e)
            );
        }
        // Mutual CHAP without target credentials, and a reflected challenge.
        let mut c = Chap::new([1; 17]);
        c.step(&cfg, &[("CHAP_A", "5")], &mut out).unwrap();
        let keys = [
            ("CHAP_N", "alice"),
            ("CHAP_R", good.as_str()),
            ("CHAP_I", "1"),
            ("CHAP_C", "0x01"),
        ];
        assert_eq!(
            c.step(&cfg, &keys, &mut out),
            Err(ChapError::NoMutualSecret)
        );
        let m = config(true);
        let mut c = Chap::new([1; 17]);
        c.step(&m, &[("CHAP_A", "5")], &mut out).unwrap();
        let reflected = hex(&[1; 16]);
        let keys = [
            ("CHAP_N", "alice"),
            ("CHAP_R", good.as_str()),
            ("CHAP_I", "1"),
            ("CHAP_C", reflected.as_str()),
        ];
        assert_eq!(
            c.step(&m, &keys, &mut out),
            Err(ChapError::ReflectedChallenge)
        );
    }
}
