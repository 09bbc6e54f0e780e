//! The life of an issued identity after joining: renewal and revocation.
//!
//! - **Renewal**: a node or device asks, over its current (valid) certificate, for a new one for the same
//!   identity and a new key. Certificates can then be short-lived, as Linkerd's and SPIFFE's are, and a node
//!   that is shut out stops being renewed.
//! - **Revocation**: an administrator revokes an identity (`strata node revoke NAME.ROLE`). The record goes
//!   to the store under [`keys::REVOKED`]; every replica refuses the identity's calls (also on connections
//!   it already has) and will not renew it, its nodes are deregistered at once, and agents learn the list
//!   with every heartbeat answer and refuse the identity as a caller and as a server. A name is issued once,
//!   so revoking the name shuts out every certificate ever issued for it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use strata_proto::auth::Caller;
use strata_trust::{Identity, Role};

use crate::error::ControlError;
use crate::keys;
use crate::plane::{ControlPlane, json, parse};

/// A revoked identity as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokedRecord {
    /// Its DNS name, `NAME.ROLE.id.strata`.
    pub identity: String,
    /// When, unix ms.
    pub revoked_unix_ms: u64,
    /// Why, as the administrator said.
    pub reason: String,
    /// The administrator.
    pub by: String,
}

/// How often every replica reloads the revoked identities from the store (a replica that revoked one knows
/// at once).
pub const REFRESH: Duration = Duration::from_secs(2);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses `NAME.ROLE` or `NAME.ROLE.id.strata`.
pub fn parse_identity(text: &str) -> Result<Identity, ControlError> {
    let text = text.trim();
    let dns = if text.ends_with(strata_trust::identity::DOMAIN) {
        text.to_string()
    } else {
        format!("{text}.{}", strata_trust::identity::DOMAIN)
    };
    Identity::from_dns_name(&dns).ok_or_else(|| {
        ControlError::InvalidArgument(format!(
            "\"{text}\" is not an identity: write NAME.ROLE (e.g. gw-3.edge, phone-7.device)"
        ))
    })
}

impl ControlPlane {
    /// A new certificate for the identity `caller`'s certificate proves, for the public key of `csr_pem`.
    pub async fn renew(&self, caller: &Caller, csr_pem: &str) -> Result<String, ControlError> {
        let Caller::Known(identity) = caller else {
            return Err(ControlError::PermissionDenied(format!(
                "renewal refused: {caller} has no certificate to renew"
            )));
        };
        if !matches!(identity.role, Role::Node(_) | Role::Device) {
            return Err(ControlError::PermissionDenied(format!(
                "renewal refused: {identity} is not a node or a device"
            )));
        }
        // This replica's list may be up to a refresh old: the store decides.
        if self
            .store
            .get(&keys::revoked(&identity.dns_name()))
            .await?
            .is_some()
        {
            return Err(ControlError::PermissionDenied(format!(
                "renewal refused: the identity {identity} has been revoked"
            )));
        }
        let ca = self.settings.ca.as_deref().ok_or_else(|| {
            ControlError::FailedPrecondition(
                "this control plane issues no certificates: it was started without the cluster CA's key (--ca-dir)"
                    .into(),
            )
        })?;
        let cert = ca
            .sign(csr_pem, identity, self.settings.node_cert_ttl)
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        tracing::info!(%identity, "certificate renewed");
        Ok(cert)
    }

    /// Revokes `identity` (see the module's documentation); returns how many nodes were deregistered.
    pub async fn revoke_identity(
        &self,
        identity: &Identity,
        reason: String,
        by: &Caller,
    ) -> Result<u32, ControlError> {
        let dns = identity.dns_name();
        let record = RevokedRecord {
            identity: dns.clone(),
            revoked_unix_ms: now_ms(),
            reason,
            by: by.to_string(),
        };
        self.store
            .put(&keys::revoked(&dns), json(&record)?, None)
            .await?;
        if let Some(r) = self.settings.transport.revocations() {
            r.insert(identity);
        }
        let mut removed = 0;
        for node in self.nodes_of(&dns).await? {
            match self.deregister(&node, &Caller::Open).await {
                Ok(()) => removed += 1,
                Err(ControlError::UnknownNode(_)) => {}
                Err(e) => return Err(e),
            }
        }
        tracing::warn!(%identity, nodes_removed = removed, by = %record.by, reason = %record.reason, "identity revoked");
        Ok(removed)
    }

    /// Every revoked identity.
    pub async fn revoked(&self) -> Result<Vec<RevokedRecord>, ControlError> {
        let mut out = Vec::new();
        for kv in self.store.range(keys::REVOKED).await?.kvs {
            if let Ok(r) = parse::<RevokedRecord>(&self.corrupt, &kv.key, &kv.value) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The revoked identities this replica refuses now (DNS names), for heartbeat answers.
    pub fn revoked_names(&self) -> Vec<String> {
        self.settings
            .transport
            .revocations()
            .map(|r| r.names())
            .unwrap_or_default()
    }
}

/// Keeps this replica's transport refusing the identities the store lists as revoked (forever; abort the
/// task to stop it). Without TLS there is nothing to refuse.
pub async fn run_refresh(plane: Arc<ControlPlane>) {
    let Some(revocations) = plane.settings.transport.revocations().cloned() else {
        return;
    };
    loop {
        match plane.revoked().await {
            Ok(records) => {
                revocations.replace(records.into_iter().map(|r| r.identity));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the revoked identities; keeping the last list")
            }
        }
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::Tier;

    #[test]
    fn identities_parse_short_and_long() {
        let gw = parse_identity("gw-3.edge").expect("short");
        assert_eq!(
            gw,
            Identity::new("gw-3", Role::Node(Tier::Edge)).expect("id")
        );
        assert_eq!(parse_identity(&gw.dns_name()).expect("long"), gw);
        assert!(parse_identity("gw-3").is_err());
        assert!(parse_identity("gw-3.king").is_err());
        assert!(parse_identity("GW.edge").is_err());
    }
}
