//! Identities the cluster has revoked: a process refuses them as callers (their requests are
//! unauthenticated) and as servers (a client does not finish a handshake with one), whatever their
//! certificates' validity says.
//!
//! Strata revokes identities, not certificates: a name is issued once, so revoking the name shuts out every
//! certificate ever issued for it, including ones an operator issued offline. The list is the control
//! plane's (in the store); the control plane refuses revoked callers and will not renew their certificates,
//! and passes the list to agents with every heartbeat answer, so the whole cluster refuses them within a
//! heartbeat.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::identity::Identity;

/// A shared, replaceable set of revoked identities (their DNS names, `NAME.ROLE.id.strata`).
#[derive(Debug, Clone, Default)]
pub struct Revocations(Arc<RwLock<HashSet<String>>>);

impl Revocations {
    /// Whether `identity` is revoked.
    pub fn contains(&self, identity: &Identity) -> bool {
        let set = self.0.read();
        !set.is_empty() && set.contains(&identity.dns_name())
    }

    /// Replaces the whole set; says whether it changed.
    pub fn replace(&self, dns_names: impl IntoIterator<Item = String>) -> bool {
        let new: HashSet<String> = dns_names.into_iter().collect();
        let mut set = self.0.write();
        if *set == new {
            return false;
        }
        tracing::info!(
            revoked = new.len(),
            "the list of revoked identities changed"
        );
        *set = new;
        true
    }

    /// Adds one identity.
    pub fn insert(&self, identity: &Identity) {
        self.0.write().insert(identity.dns_name());
    }

    /// The revoked DNS names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.read().iter().cloned().collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;
    use strata_core::Tier;

    #[test]
    fn replacing_reports_changes_and_membership_follows() {
        let r = Revocations::default();
        let gw = Identity::new("gw-1", Role::Node(Tier::Edge)).expect("id");
        let phone = Identity::new("gw-1", Role::Device).expect("id");
        assert!(!r.contains(&gw));
        assert!(r.replace([gw.dns_name()]));
        assert!(!r.replace([gw.dns_name()]), "same set: no change");
        assert!(r.contains(&gw));
        assert!(
            !r.contains(&phone),
            "same name, other role: another identity"
        );
        let shared = r.clone();
        assert!(shared.replace(Vec::new()));
        assert!(!r.contains(&gw), "clones share the set");
        r.insert(&phone);
        assert_eq!(shared.names(), vec![phone.dns_name()]);
    }
}
