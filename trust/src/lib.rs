//! Who is calling, and whether to believe them: identities carried in X.509 certificates ([`identity`]),
//! the mutual-TLS transport every Strata server and client is configured with ([`tls`]: rustls on ring,
//! reloaded when the files rotate), the identities the cluster has revoked ([`revocation`]), and the cluster
//! CA ([`ca`], feature `ca`).
//!
//! Authorisation (which role may call which RPC) lives with the RPCs, in `strata_proto::auth`.

#![forbid(unsafe_code)]

#[cfg(feature = "cli")]
pub mod args;
#[cfg(feature = "ca")]
pub mod ca;
pub mod identity;
pub mod revocation;
pub mod tls;
pub mod token;

pub use identity::{Identity, IdentityError, Role};
pub use revocation::Revocations;
pub use tls::{Expect, TlsError, TlsFiles, Transport};
