//! The key layout in the store. Every key lives under [`ROOT`]; values are JSON (readable with `etcdctl get`),
//! except route tables, which are the `strata.v1.RouteTable` protobuf that watchers forward as is.
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `/strata/v1/nodes/{node_id}` | [`crate::records::NodeRecord`] | bound to the node's lease |
//! | `/strata/v1/models/{name}` | [`crate::records::ModelRecord`] | until `model rm` |
//! | `/strata/v1/plans/{name}` | [`crate::records::PlansRecord`] | replaced on each re-plan |
//! | `/strata/v1/routes/{name}` | `strata.v1.RouteTable` (protobuf) | republished when plans or ready nodes change |
//! | `/strata/v1/retired/{name}/{version}` | the replaced `strata.v1.RouteTable` | a lease of the rollout grace period: its stages stay assigned until it expires |
//! | `/strata/v1/controllers/{replica_id}` | [`crate::records::ControllerRecord`] | bound to the replica's lease |
//! | `/strata/v1/election/leader/{lease hex}` | the candidate's replica id | bound to the replica's lease; lowest create revision leads |

/// Prefix of every Strata key.
pub const ROOT: &str = "/strata/v1/";
/// Prefix of node keys.
pub const NODES: &str = "/strata/v1/nodes/";
/// Prefix of model keys.
pub const MODELS: &str = "/strata/v1/models/";
/// Prefix of plan keys.
pub const PLANS: &str = "/strata/v1/plans/";
/// Prefix of route-table keys.
pub const ROUTES: &str = "/strata/v1/routes/";

/// Prefix of route tables replaced by a newer version, kept for the rollout grace period.
pub const RETIRED: &str = "/strata/v1/retired/";

/// The key of a replaced route table.
pub fn retired(name: &str, version: u64) -> String {
    format!("{RETIRED}{name}/{version}")
}

/// Prefix of control-plane replica keys.
pub const CONTROLLERS: &str = "/strata/v1/controllers/";
/// The election control-plane replicas campaign in (candidates' keys lie under it, plus `/`).
pub const ELECTION: &str = "/strata/v1/election/leader";

/// The key of a control-plane replica.
pub fn controller(id: &str) -> String {
    format!("{CONTROLLERS}{id}")
}

/// Join tokens, by id (the secret only as its SHA-256).
pub const TOKENS: &str = "/strata/v1/tokens/";

/// The key of a join token.
pub fn token(id: &str) -> String {
    format!("{TOKENS}{id}")
}

/// Identities issued to joining nodes, by DNS name (a name is issued once).
pub const IDENTITIES: &str = "/strata/v1/identities/";

/// Revoked identities, by DNS name.
pub const REVOKED: &str = "/strata/v1/revoked/";

/// The key of a revoked identity.
pub fn revoked(dns_name: &str) -> String {
    format!("{REVOKED}{dns_name}")
}

/// The key of an issued identity.
pub fn identity(dns_name: &str) -> String {
    format!("{IDENTITIES}{dns_name}")
}

/// The key of a node.
pub fn node(id: &str) -> String {
    format!("{NODES}{id}")
}

/// The key of a model.
pub fn model(name: &str) -> String {
    format!("{MODELS}{name}")
}

/// The key of a model's plans.
pub fn plans(name: &str) -> String {
    format!("{PLANS}{name}")
}

/// The key of a model's route table.
pub fn routes(name: &str) -> String {
    format!("{ROUTES}{name}")
}

/// A model name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid model name \"{0}\": use 1 to 128 characters from A-Z a-z 0-9 . _ - (not starting with a dot)"
)]
pub struct InvalidModelName(pub String);

/// Checks a model name: it becomes part of a key and of file names, so it is restricted to
/// `[A-Za-z0-9._-]`, 1 to 128 characters, not starting with a dot.
pub fn check_model_name(name: &str) -> Result<(), InvalidModelName> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > 128 || !ok_chars || name.starts_with('.') {
        return Err(InvalidModelName(name.to_string()));
    }
    Ok(())
}
