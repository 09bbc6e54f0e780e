//! Content addresses: every model and stage is named by the SHA-256 of its bytes. A [`Digest`] can only hold a
//! valid one (64 lower-case hex characters), so a digest that reaches a file path, a store key or a cache
//! lookup has already been checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The SHA-256 of some content, as 64 lower-case hex characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// A string that is not a lower-case hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {0:?}: expected 64 lower-case hex characters (a SHA-256)")]
pub struct DigestError(pub String);

/// Content that does not hash to the digest it was given under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("content hashes to sha256 {actual}, not the expected {expected}")]
pub struct DigestMismatch {
    /// The digest the content was supposed to have.
    pub expected: Digest,
    /// The digest it has.
    pub actual: Digest,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(hex::encode(sha2::Sha256::digest(bytes)))
    }

    /// The 64 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex characters, for tables and logs.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }

    /// Checks that `bytes` hash to this digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), DigestMismatch> {
        let actual = Digest::of(bytes);
        if actual == *self {
            Ok(())
        } else {
            Err(DigestMismatch {
                expected: self.clone(),
                actual,
            })
        }
    }

    fn valid(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Digest, DigestError> {
        if Digest::valid(s) {
            Ok(Digest(s.to_string()))
        } else {
            Err(DigestError(s.to_string()))
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Digest, DigestError> {
        if Digest::valid(&s) {
            Ok(Digest(s))
        } else {
            Err(DigestError(s))
        }
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Digest {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_hashes_and_verify_checks() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d.verify(b"abc").is_ok());
        let err = d.verify(b"abd").expect_err("other content");
        assert_eq!(err.expected, d);
        assert_eq!(err.actual, Digest::of(b"abd"));
    }

    #[test]
    fn only_lower_case_sha256_hex_parses() {
        let good = Digest::of(b"x").to_string();
        assert_eq!(good.parse::<Digest>().map(String::from), Ok(good.clone()));
        for bad in [
            String::new(),
            good.to_uppercase(),
            good[..63].to_string(),
            format!("{good}0"),
            format!("sha256:{good}"),
            format!("../{}", &good[3..]),
            "g".repeat(64),
        ] {
            assert_eq!(
                bad.parse::<Digest>(),
                Err(DigestError(bad.clone())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn serde_round_trips_as_a_string_and_refuses_bad_ones() {
        let d = Digest::of(b"model");
        let json = serde_json::to_string(&d).expect("serialises");
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("parses"), d);
        assert!(serde_json::from_str::<Digest>("\"not-a-digest\"").is_err());
    }
}
