//! Joining a cluster with a token (`strata-edge-agent --join TOKEN`): fetch the CA bundle, check it against
//! the fingerprint the token pins (before the token's secret is sent anywhere), then send the secret with a
//! certificate request over TLS that trusts that CA only, and keep the certificate the control plane signs.
//! The private key never leaves this machine.

use std::path::Path;
use std::time::Duration;

use strata_core::Tier;
use strata_proto::transport::{Expect, Transport};
use strata_proto::v1::{self, control_client::ControlClient};
use strata_trust::ca;
use strata_trust::token::Token;

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The control plane's CA is not the one the token pins: the secret was not sent.
    #[error(
        "the control plane at {address} presents a CA with fingerprint {found}, but the token pins {pinned}: refusing to send it the token (is this the right cluster?)"
    )]
    WrongCa {
        /// The control plane.
        address: String,
        /// The fingerprint it presented.
        found: String,
        /// The token's.
        pinned: String,
    },
    /// The control plane refused or could not be reached.
    #[error("joining through {address}: {status}")]
    Call {
        /// The control plane.
        address: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// Local TLS or file trouble.
    #[error("{0}")]
    Local(String),
}

/// Joins as a `tier` node named `name` through the first control plane in `control_planes` that answers,
/// and writes `ca.pem`, `cert.pem` and `key.pem` into `dir`.
pub async fn join(
    control_planes: &[String],
    token: &Token,
    tier: Tier,
    name: &str,
    dir: &Path,
    connect_timeout: Duration,
) -> Result<(), JoinError> {
    let local = |e: &dyn std::fmt::Display| JoinError::Local(e.to_string());
    let request = ca::request().map_err(|e| local(&e))?;
    let unverified = Transport::unverified().map_err(|e| local(&e))?;
    let mut last = None;
    for address in control_planes {
        let call = |status| JoinError::Call {
            address: address.clone(),
            status,
        };
        let channel =
            strata_proto::call::channel(address, connect_timeout, &unverified, Expect::Controller)
                .map_err(|e| local(&e))?;
        let ca_pem = match ControlClient::new(channel)
            .get_ca(v1::GetCaRequest {})
            .await
        {
            Ok(r) => r.into_inner().ca_pem,
            Err(status) => {
                last = Some(call(status));
                continue;
            }
        };
        // Only the certificate the token pins is trusted (and kept): a bundle may carry others, and a man
        // in the middle could append his own.
        let Some(ca_pem) = ca::pinned(&ca_pem, &token.ca_sha256) else {
            return Err(JoinError::WrongCa {
                address: address.clone(),
                found: ca::fingerprint(&ca_pem).unwrap_or_default(),
                pinned: token.ca_sha256.clone(),
            });
        };
        let trusted = Transport::anonymous(ca_pem.as_bytes()).map_err(|e| local(&e))?;
        let channel =
            strata_proto::call::channel(address, connect_timeout, &trusted, Expect::Controller)
                .map_err(|e| local(&e))?;
        let answer = ControlClient::new(channel)
            .join(v1::JoinRequest {
                token: token.credential(),
                tier: v1::Tier::from(tier) as i32,
                name: name.to_string(),
                csr_pem: request.cert_pem.clone(),
            })
            .await
            .map_err(call)?
            .into_inner();
        let issued = ca::Issued {
            cert_pem: answer.cert_pem,
            key_pem: request.key_pem.clone(),
        };
        ca::write_credentials(dir, &ca_pem, &issued).map_err(|e| local(&e))?;
        tracing::info!(%address, node = name, %tier, dir = %dir.display(), "joined the cluster");
        return Ok(());
    }
    Err(last.unwrap_or_else(|| JoinError::Local("no control-plane address given".into())))
}

/// A node name as a DNS label: lower-case, invalid characters as `-`, at most 63 characters.
pub fn dns_label(name: &str) -> String {
    let label: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "node".to_string()
    } else {
        label.to_string()
    }
}
