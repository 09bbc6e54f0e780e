//! Join tokens: `strata1.CA_SHA256.ID.SECRET`, the way kubeadm's bootstrap tokens travel with the CA's
//! hash. The node pins the CA by the fingerprint before it trusts anything the control plane sends, then
//! proves it holds the secret; the cluster stores only the secret's SHA-256.

use std::fmt;

const PREFIX: &str = "strata1";

/// A join token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The SHA-256 of the cluster CA's certificate, lower-case hex.
    pub ca_sha256: String,
    /// The token's public id (8 hex digits): how it is listed and revoked.
    pub id: String,
    /// The secret (32 hex digits, 128 bits).
    pub secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("ca_sha256", &self.ca_sha256)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A string that is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a join token: {0} (expected strata1.CA_SHA256.ID.SECRET, as `strata token create` prints it)"
)]
pub struct BadToken(&'static str);

fn hex_of(len: usize, s: &str) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Token {
    /// A new token for the CA with fingerprint `ca_sha256`, from the system's secure random source.
    pub fn generate(ca_sha256: &str) -> Result<Token, rustls::Error> {
        let mut bytes = [0u8; 20];
        crate::tls::provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        Ok(Token {
            ca_sha256: ca_sha256.to_string(),
            id: hex(&bytes[..4]),
            secret: hex(&bytes[4..]),
        })
    }

    /// Parses `strata1.CA_SHA256.ID.SECRET`.
    pub fn parse(text: &str) -> Result<Token, BadToken> {
        let mut parts = text.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(BadToken("it does not start with \"strata1.\""));
        }
        let (Some(ca), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadToken("it does not have four dot-separated parts"));
        };
        if !hex_of(64, ca) {
            return Err(BadToken(
                "the CA fingerprint is not 64 lower-case hex digits",
            ));
        }
        let (id, secret) = parse_credential(id, secret)?;
        Ok(Token {
            ca_sha256: ca.to_string(),
            id,
            secret,
        })
    }

    /// `ID.SECRET`: what a joining node sends (the fingerprint stays with it).
    pub fn credential(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

fn parse_credential(id: &str, secret: &str) -> Result<(String, String), BadToken> {
    if !hex_of(8, id) {
        return Err(BadToken("the id is not 8 lower-case hex digits"));
    }
    if !hex_of(32, secret) {
        return Err(BadToken("the secret is not 32 lower-case hex digits"));
    }
    Ok((id.to_string(), secret.to_string()))
}

/// Parses `ID.SECRET` (a join request's credential) into its id and secret.
pub fn parse_credential_text(text: &str) -> Result<(String, String), BadToken> {
    let (id, secret) = text
        .split_once('.')
        .ok_or(BadToken("the credential is not ID.SECRET"))?;
    parse_credential(id, secret)
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}.{}.{}", self.ca_sha256, self.id, self.secret)
    }
}

/// Whether two strings are equal, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let ca = "ab".repeat(32);
        let token = Token::generate(&ca).expect("random");
        assert_eq!(Token::parse(&token.to_string()), Ok(token.clone()));
        assert_ne!(Token::generate(&ca).expect("random"), token, "random");
        assert_eq!(
            parse_credential_text(&token.credential()),
            Ok((token.id.clone(), token.secret.clone()))
        );
        for bad in [
            "",
            "strata1",
            "strata2.x.y.z",
            &format!("strata1.{ca}.abc.{}", token.secret),
            &format!("strata1.{ca}.{}.{}.extra", token.id, token.secret),
            &format!("strata1.{}.{}.{}", "AB".repeat(32), token.id, token.secret),
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
        assert!(
            !format!("{token:?}").contains(&token.secret),
            "Debug hides the secret"
        );
        assert!(constant_time_eq("abc", "abc") && !constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
