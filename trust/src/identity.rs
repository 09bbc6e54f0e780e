//! Who a certificate says its holder is.
//!
//! A Strata identity is one DNS subject-alternative name of the form `NAME.ROLE.id.strata`, the way Consul
//! names its servers `server.DC.consul`: `gw-1.edge.id.strata` is the edge node `gw-1`,
//! `alice.admin.id.strata` the administrator `alice`. Carrying the role in a DNS name means the standard
//! WebPKI name check verifies it (a client asks for `cp.controller.id.strata` exactly like a host name), and
//! an operator's own CA (cert-manager, Vault) can issue Strata certificates with nothing but a SAN.
//!
//! The role decides what a caller may do (see `strata_proto::auth`); the tier of a node comes from its
//! certificate, never from what the node says about itself.

use std::fmt;

use strata_core::Tier;

/// The DNS suffix of every identity name.
pub const DOMAIN: &str = "id.strata";

/// What a certificate's holder is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Pushes and deletes models, manages tokens, drains nodes; may do anything.
    Admin,
    /// Reads: models, nodes, route tables, agent status.
    Reader,
    /// An app's device: route tables, its device stages, inference.
    Device,
    /// An agent serving stages on this tier (edge or cloud).
    Node(Tier),
    /// A control-plane replica.
    Controller,
}

impl Role {
    /// Every role, for help texts and tests.
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Reader,
        Role::Device,
        Role::Node(Tier::Edge),
        Role::Node(Tier::Cloud),
        Role::Controller,
    ];

    /// The DNS label of the role (`edge` and `cloud` for nodes).
    pub fn label(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reader => "reader",
            Role::Device => "device",
            Role::Node(Tier::Device) => "device-node",
            Role::Node(tier) => tier.name(),
            Role::Controller => "controller",
        }
    }

    /// The role a label names (`edge` and `cloud` are nodes).
    pub fn from_label(label: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.label() == label)
    }

    /// Whether this is a server role (a control-plane replica or a node): the only roles a client accepts
    /// from the server it connects to.
    pub fn serves(self) -> bool {
        matches!(self, Role::Controller | Role::Node(_))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Node(tier) => write!(f, "{tier} node"),
            other => f.write_str(other.label()),
        }
    }
}

/// An identity: a name and a role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Lower-case letters, digits and `-`, at most 63 (one DNS label).
    pub name: String,
    /// What the holder is for.
    pub role: Role,
}

/// A name or certificate that does not carry a valid identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The name is not one DNS label of lower-case letters, digits and `-`.
    #[error(
        "identity name \"{0}\" is invalid: use 1–63 lower-case letters, digits and '-', not starting or ending with '-'"
    )]
    BadName(String),
    /// The certificate could not be parsed.
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// The certificate has no `NAME.ROLE.id.strata` DNS name.
    #[error(
        "the certificate carries no Strata identity (a DNS subject-alternative name NAME.ROLE.{DOMAIN}); it names {0:?}"
    )]
    Missing(Vec<String>),
    /// The certificate has more than one.
    #[error("the certificate carries more than one Strata identity: {0:?}")]
    Ambiguous(Vec<String>),
}

impl Identity {
    /// An identity, with its name checked.
    pub fn new(name: &str, role: Role) -> Result<Identity, IdentityError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with('-')
            && !name.ends_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(IdentityError::BadName(name.to_string()));
        }
        Ok(Identity {
            name: name.to_string(),
            role,
        })
    }

    /// `NAME.ROLE.id.strata`: the DNS name a certificate carries, and the server name a client verifies.
    pub fn dns_name(&self) -> String {
        format!("{}.{}.{DOMAIN}", self.name, self.role.label())
    }

    /// The identity a DNS name spells, if it spells one.
    pub fn from_dns_name(dns: &str) -> Option<Identity> {
        let rest = dns.strip_suffix(DOMAIN)?.strip_suffix('.')?;
        let (name, label) = rest.rsplit_once('.')?;
        Identity::new(name, Role::from_label(label)?).ok()
    }

    /// The identity a DER certificate carries: exactly one `NAME.ROLE.id.strata` DNS subject-alternative
    /// name. Says nothing about whether the certificate is valid (the TLS handshake checked that).
    pub fn from_certificate(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let names: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(IdentityError::Unparsable(e.to_string())),
        };
        let ours: Vec<Identity> = names
            .iter()
            .filter_map(|n| Identity::from_dns_name(n))
            .collect();
        match ours.len() {
            0 => Err(IdentityError::Missing(names)),
            1 => Ok(ours.into_iter().next().expect("one identity")),
            _ => Err(IdentityError::Ambiguous(
                ours.iter().map(Identity::dns_name).collect(),
            )),
        }
    }

    /// The node's tier, for a node identity.
    pub fn tier(&self) -> Option<Tier> {
        match self.role {
            Role::Node(tier) => Some(tier),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} \"{}\"", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_dns_names() {
        for role in Role::ALL {
            let id = Identity::new("gw-1", role).expect("valid");
            assert_eq!(Identity::from_dns_name(&id.dns_name()), Some(id));
        }
        assert_eq!(
            Identity::from_dns_name("gw-1.edge.id.strata").and_then(|i| i.tier()),
            Some(Tier::Edge)
        );
    }

    #[test]
    fn names_that_are_not_identities_are_refused() {
        for dns in [
            "example.com",
            "edge.id.strata",
            "gw.pilot.id.strata",
            "GW.edge.id.strata",
            "a.b.edge.id.strata",
            "-gw.edge.id.strata",
            "gw.edge.id.strata.evil.com",
            ".edge.id.strata",
        ] {
            assert_eq!(Identity::from_dns_name(dns), None, "{dns}");
        }
        assert!(Identity::new(&"a".repeat(64), Role::Admin).is_err());
        assert!(Identity::new("bad_name", Role::Admin).is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            Identity::from_certificate(b"not DER"),
            Err(IdentityError::Unparsable(_))
        ));
    }
}
