//! Join tokens and joining: an administrator makes a short-lived token for a tier; a node presents it with a
//! certificate request and gets a certificate whose identity carries the token's tier (Kubernetes' TLS
//! bootstrap, with kubeadm's CA-pinning token format).
//!
//! Tokens live in the store under [`keys::TOKENS`] with only the SHA-256 of their secret; each join takes
//! one use in a transaction on the record's revision, so two replicas cannot both spend the last use.
//! Expired and used-up tokens are refused (and deleted when tokens are listed). An identity is issued once
//! (`keys::IDENTITIES`), so a second node can never join under a name in use; a refused join spends nothing.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use strata_core::{Digest, Tier};
use strata_trust::token::{Token, constant_time_eq, parse_credential_text};
use strata_trust::{Identity, Role};

use crate::error::ControlError;
use crate::keys;
use crate::plane::{ControlPlane, json, parse};
use crate::store::{Compare, CompareOp, CompareTarget, Txn, TxnOp};

/// A join token as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its public id.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// The tier it admits.
    pub tier: Tier,
    /// When it expires, unix ms.
    pub expires_unix_ms: u64,
    /// Joins left.
    pub uses_left: u32,
    /// What it is for.
    pub description: String,
    /// When it was made, unix ms.
    pub created_unix_ms: u64,
}

/// An identity issued to a joining node (kept so that a name is issued once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// The token it joined with.
    pub token: String,
    /// When, unix ms.
    pub issued_unix_ms: u64,
}

/// The default lifetime of a token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What every refused join says, whatever the cause, when the secret did not match: an attacker learns
/// nothing about which tokens exist.
const REFUSED: &str = "the join token is unknown, revoked, expired or used up";

impl ControlPlane {
    fn ca(&self) -> Result<&strata_trust::ca::Ca, ControlError> {
        self.settings.ca.as_deref().ok_or_else(|| {
            ControlError::FailedPrecondition(
                "this control plane admits no joining nodes: it was started without the cluster CA's key (--ca-dir)"
                    .into(),
            )
        })
    }

    /// Makes a token admitting `uses` nodes of `tier` for `ttl`.
    pub async fn create_token(
        &self,
        tier: Tier,
        ttl: Duration,
        uses: u32,
        description: String,
    ) -> Result<(Token, TokenRecord), ControlError> {
        let fingerprint = strata_trust::ca::fingerprint(self.ca()?.cert_pem())
            .ok_or_else(|| ControlError::Internal("the CA certificate cannot be read".into()))?;
        let token = Token::generate(&fingerprint)
            .map_err(|e| ControlError::Internal(format!("no random bytes: {e}")))?;
        let now = now_ms();
        let record = TokenRecord {
            id: token.id.clone(),
            secret_sha256: Digest::of(token.secret.as_bytes()).to_string(),
            tier,
            expires_unix_ms: now.saturating_add(ttl.as_millis() as u64),
            uses_left: uses.max(1),
            description,
            created_unix_ms: now,
        };
        self.store
            .put(&keys::token(&record.id), json(&record)?, None)
            .await?;
        tracing::info!(token = %record.id, %tier, uses = record.uses_left, "join token created");
        Ok((token, record))
    }

    /// Every live token (expired and used-up ones are deleted on the way).
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, ControlError> {
        let now = now_ms();
        let mut live = Vec::new();
        for kv in self.store.range(keys::TOKENS).await?.kvs {
            let record: TokenRecord = parse(&self.corrupt, &kv.key, &kv.value)?;
            if record.expires_unix_ms <= now || record.uses_left == 0 {
                self.store.delete(&kv.key).await?;
            } else {
                live.push(record);
            }
        }
        Ok(live)
    }

    /// Revokes a token now.
    pub async fn revoke_token(&self, id: &str) -> Result<(), ControlError> {
        let (deleted, _) = self.store.delete(&keys::token(id)).await?;
        if !deleted {
            return Err(ControlError::UnknownToken(id.to_string()));
        }
        tracing::info!(token = %id, "join token revoked");
        Ok(())
    }

    /// Signs `csr_pem` for the node `name` of `tier`, spending one use of the token `credential`
    /// (`ID.SECRET`). The tier must be the token's; a refused join spends nothing.
    pub async fn join(
        &self,
        credential: &str,
        tier: Tier,
        name: &str,
        csr_pem: &str,
    ) -> Result<String, ControlError> {
        let ca = self.ca()?;
        let denied = |why: &str| ControlError::PermissionDenied(format!("join refused: {why}"));
        let (id, secret) = parse_credential_text(credential).map_err(|e| denied(&e.to_string()))?;
        let role = match tier {
            Tier::Device => Role::Device,
            tier => Role::Node(tier),
        };
        let identity =
            Identity::new(name, role).map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        let taken = || {
            ControlError::PermissionDenied(format!(
                "join refused: the name \"{name}\" is taken by a {tier} node already; give this node another --name"
            ))
        };
        // An identity is issued once: a second node under the same name could act as the first.
        let issued_key = keys::identity(&identity.dns_name());
        if self.store.get(&issued_key).await?.is_some()
            || self
                .nodes()
                .await?
                .iter()
                .any(|n| n.identity.as_deref() == Some(identity.dns_name().as_str()))
        {
            return Err(taken());
        }
        for _ in 0..8 {
            let key = keys::token(&id);
            let Some(kv) = self.store.get(&key).await? else {
                return Err(denied(REFUSED));
            };
            let record: TokenRecord = parse(&self.corrupt, &key, &kv.value)?;
            let hash = Digest::of(secret.as_bytes()).to_string();
            if !constant_time_eq(&hash, &record.secret_sha256) {
                return Err(denied(REFUSED));
            }
            if record.expires_unix_ms <= now_ms() {
                return Err(denied("the join token has expired"));
            }
            if record.uses_left == 0 {
                return Err(denied("the join token is used up"));
            }
            if record.tier != tier {
                return Err(denied(&format!(
                    "the join token admits a {} node, not a {tier} one",
                    record.tier
                )));
            }
            // Signed before the token is spent: a malformed request spends nothing.
            let cert = ca
                .sign(csr_pem, &identity, self.settings.node_cert_ttl)
                .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
            let spend = if record.uses_left == 1 {
                TxnOp::Delete(key.clone())
            } else {
                let left = TokenRecord {
                    uses_left: record.uses_left - 1,
                    ..record.clone()
                };
                TxnOp::Put {
                    key: key.clone(),
                    value: json(&left)?,
                    lease: None,
                }
            };
            let issued = IssuedRecord {
                token: id.clone(),
                issued_unix_ms: now_ms(),
            };
            let txn = Txn {
                compare: vec![
                    Compare {
                        key: key.clone(),
                        op: CompareOp::Equal,
                        target: CompareTarget::ModRevision(kv.mod_revision),
                    },
                    Compare {
                        key: issued_key.clone(),
                        op: CompareOp::Equal,
                        target: CompareTarget::Version(0),
                    },
                ],
                success: vec![
                    spend,
                    TxnOp::Put {
                        key: issued_key.clone(),
                        value: json(&issued)?,
                        lease: None,
                    },
                ],
                failure: vec![TxnOp::Get(issued_key.clone())],
            };
            let result = self.store.txn(txn).await?;
            if !result.succeeded {
                if result.gets.first().is_some_and(Option::is_some) {
                    return Err(taken());
                }
                continue; // Another join spent a use meanwhile: look again.
            }
            tracing::info!(token = %id, node = %identity, "a node joined");
            return Ok(cert);
        }
        Err(ControlError::Internal(
            "the join token kept changing under this join; retry".into(),
        ))
    }
}
