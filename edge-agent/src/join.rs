//! Joining a cluster with a token (`strata-edge-agent --join TOKEN`): fetch the CA bundle, check it against
//! the fingerprint the token pins (before the token's secret is sent anywhere), then send the secret with a
//! certificate request over TLS that trusts that CA only, and keep the certificate the control plane signs.
//! The private key never leaves this machine.
//!
//! Then [`keep_renewed`] renews the certificate before it expires (a new key each time), through the
//! control plane, over the certificate itself: certificates can be short-lived, and an identity the cluster
//! revoked is no longer renewed.

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

/// Renews this process's certificate through the first control plane in `control_planes` that answers:
/// a new key and a certificate for the same identity, written over the files `transport` was loaded from
/// (key first, each by rename; the transport loads them at its next check). Returns the new validity's end,
/// unix seconds.
pub async fn renew(
    control_planes: &[String],
    transport: &Transport,
    connect_timeout: Duration,
) -> Result<i64, JoinError> {
    let local = |e: &dyn std::fmt::Display| JoinError::Local(e.to_string());
    let Transport::Tls(tls) = transport else {
        return Err(JoinError::Local(
            "only a mutual-TLS process has a certificate to renew".into(),
        ));
    };
    let request = ca::request().map_err(|e| local(&e))?;
    let mut last = None;
    for address in control_planes {
        let channel =
            strata_proto::call::channel(address, connect_timeout, transport, Expect::Controller)
                .map_err(|e| local(&e))?;
        let mut client = ControlClient::new(channel);
        let call = client.renew(v1::RenewRequest {
            csr_pem: request.cert_pem.clone(),
        });
        let answer = match tokio::time::timeout(connect_timeout * 2, call).await {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(status)) => {
                let refused = status.code() == tonic::Code::PermissionDenied
                    || status.code() == tonic::Code::Unauthenticated;
                last = Some(JoinError::Call {
                    address: address.clone(),
                    status,
                });
                if refused {
                    break; // Every replica would say the same.
                }
                continue;
            }
            Err(_) => {
                last = Some(JoinError::Call {
                    address: address.clone(),
                    status: tonic::Status::deadline_exceeded("no answer"),
                });
                continue;
            }
        };
        let der = strata_trust::tls::certificates(
            "renewed certificate",
            &tls.files().cert,
            answer.cert_pem.as_bytes(),
        )
        .map_err(|e| local(&e))?;
        let (_, not_after) = strata_trust::tls::validity(&der[0])
            .ok_or_else(|| JoinError::Local("the renewed certificate cannot be parsed".into()))?;
        let files = tls.files();
        ca::write_file(&files.key, request.key_pem.as_bytes(), true).map_err(|e| local(&e))?;
        ca::write_file(&files.cert, answer.cert_pem.as_bytes(), false).map_err(|e| local(&e))?;
        tracing::info!(%address, cert = %files.cert.display(), not_after, "certificate renewed");
        return Ok(not_after);
    }
    Err(last.unwrap_or_else(|| JoinError::Local("no control-plane address given".into())))
}

/// When to renew a certificate valid over `(not_before, not_after)` (unix seconds): `before` seconds
/// before it expires, or when a third of its lifetime is left.
pub fn renewal_due(validity: (i64, i64), before: Option<u64>) -> i64 {
    let (not_before, not_after) = validity;
    let lifetime = not_after.saturating_sub(not_before).max(0);
    let before = before.map_or(lifetime / 3, |b| b.min(i64::MAX as u64) as i64);
    not_after.saturating_sub(before)
}

/// Least time between two renewals (a control plane issuing certificates shorter than the renewal margin
/// must not be asked in a loop).
pub const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(5);

/// Renews this process's certificate whenever [`renewal_due`] says so, forever (abort the task to stop it);
/// a failed renewal is retried after a tenth of the time left (between 5 s and 10 min), logged as an error
/// once the certificate has less than an hour left.
pub async fn keep_renewed(control_planes: Vec<String>, transport: Transport, before: Option<u64>) {
    let mut last_renewal: Option<std::time::Instant> = None;
    loop {
        let Some(validity) = transport.certificate_validity() else {
            return;
        };
        let now = strata_trust::tls::unix_now();
        let due = renewal_due(validity, before);
        if now < due {
            let wait = (due - now).clamp(1, 3600) as u64;
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        if let Some(t) = last_renewal {
            let since = t.elapsed();
            if since < MIN_RENEWAL_INTERVAL {
                tokio::time::sleep(MIN_RENEWAL_INTERVAL - since).await;
            }
        }
        match renew(&control_planes, &transport, Duration::from_secs(5)).await {
            Ok(_) => {
                last_renewal = Some(std::time::Instant::now());
                // The transport sees the new files at its next check.
                tokio::time::sleep(strata_trust::tls::RELOAD_CHECK + Duration::from_millis(100))
                    .await;
            }
            Err(e) => {
                let left = validity.1 - now;
                if left < 3600 {
                    tracing::error!(error = %e, seconds_left = left, "cannot renew this node's certificate");
                } else {
                    tracing::warn!(error = %e, seconds_left = left, "cannot renew this node's certificate; retrying");
                }
                let retry = (left / 10).clamp(5, 600) as u64;
                tokio::time::sleep(Duration::from_secs(retry)).await;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_a_third_before_expiry_or_as_told() {
        assert_eq!(renewal_due((0, 90), None), 60);
        assert_eq!(renewal_due((0, 90), Some(10)), 80);
        assert_eq!(renewal_due((0, 90), Some(1000)), -910, "already due");
        assert_eq!(
            renewal_due((100, 50), None),
            50,
            "a nonsense period is due at its end"
        );
    }
}
