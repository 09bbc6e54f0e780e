//! Authorisation: which role may call which RPC, checked in one tower layer ([`AuthLayer`]) on every Strata
//! server before any handler runs, from the identity the caller's certificate proved ([`PeerInfo`]).
//!
//! The policy is one table ([`rule`]); a method it does not name is refused (fail closed). Under the plain
//! transport nobody is identified and nothing is checked — which is why a plain server must listen on
//! loopback or be started with `--insecure`. Checks that need the request itself (a node may heartbeat only
//! as itself, fetch only the stages assigned to it; an agent refuses tensors a model's privacy keeps from
//! its tier) are made by the handlers, with [`caller`].
//!
//! Refusals are `UNAUTHENTICATED` (no client certificate, or one without an identity) or `PERMISSION_DENIED`
//! (the wrong role), say which role the method needs, and are logged with the caller's identity (and, for
//! the layer's refusals, its address).

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use strata_trust::{Identity, Role};
use tonic::Status;
use tonic::codegen::http;

use crate::transport::PeerInfo;
#[cfg(test)]
use crate::transport::Revocations;

/// A kind of caller, as the policy names them (nodes of every tier are one kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `admin`.
    Admin,
    /// `reader`.
    Reader,
    /// `device`.
    Device,
    /// An edge or cloud node.
    Node,
    /// A control-plane replica.
    Controller,
}

impl Class {
    /// The class of a role.
    pub fn of(role: Role) -> Class {
        match role {
            Role::Admin => Class::Admin,
            Role::Reader => Class::Reader,
            Role::Device => Class::Device,
            Role::Node(_) => Class::Node,
            Role::Controller => Class::Controller,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Admin => "admin",
            Class::Reader => "reader",
            Class::Device => "device",
            Class::Node => "node",
            Class::Controller => "controller",
        }
    }
}

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone who can connect, certificate or not (health checks, joining).
    Public,
    /// Callers whose certificate proves one of these classes.
    Roles(&'static [Class]),
}

use Class::{Admin, Controller, Device, Node, Reader};

/// The policy: who may call the method at `path` (`/package.Service/Method`); `None` for a method it does
/// not know, which is refused.
pub fn rule(path: &str) -> Option<Rule> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let roles = |r: &'static [Class]| Some(Rule::Roles(r));
    match (service, method) {
        ("grpc.health.v1.Health", _) | ("strata.v1.Control", "GetCa" | "Join") => {
            Some(Rule::Public)
        }
        ("strata.v1.Control", "CreateToken" | "ListTokens" | "RevokeToken") => roles(&[Admin]),
        ("strata.v1.Control", "RevokeIdentity") => roles(&[Admin]),
        ("strata.v1.Control", "ListRevoked") => roles(&[Admin, Reader]),
        ("strata.v1.Control", "Renew") => roles(&[Node, Device]),
        ("strata.v1.Control", "Register" | "Heartbeat" | "WatchAssignments") => roles(&[Node]),
        ("strata.v1.Control", "Deregister") => roles(&[Node, Admin]),
        ("strata.v1.Control", "PushModel" | "DeleteModel") => roles(&[Admin]),
        ("strata.v1.Control", "ListNodes") => roles(&[Admin, Reader, Controller]),
        ("strata.v1.Control", "ListModels" | "GetModel") => roles(&[Admin, Reader]),
        ("strata.v1.Routes", "GetRoutes" | "WatchRoutes") => {
            roles(&[Admin, Reader, Device, Node, Controller])
        }
        ("strata.v1.Routes", "FetchBlob") => roles(&[Admin, Device, Node, Controller]),
        ("strata.v1.Inference", "Infer") => roles(&[Device, Node, Admin]),
        ("strata.v1.Inference", "Status") => roles(&[Admin, Reader, Controller]),
        // The Open Inference Protocol: whoever may send a request into a plan (an app's device certificate,
        // a node, the administrator) may enter one here; the read-only metadata calls follow the same rule.
        (
            "inference.GRPCInferenceService",
            "ServerLive" | "ServerReady" | "ModelReady" | "ServerMetadata" | "ModelMetadata"
            | "ModelInfer",
        ) => roles(&[Device, Node, Admin]),
        _ => None,
    }
}

/// Who is calling, as far as the transport could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The plain transport (or an in-process call): nobody is identified and nothing is checked.
    Open,
    /// TLS without a client certificate.
    Anonymous,
    /// TLS with a certificate from the cluster CA that carries no Strata identity (why, in words).
    Unrecognised(String),
    /// TLS with a certificate that proved this identity.
    Known(Identity),
    /// TLS with a certificate for an identity the cluster has revoked.
    Revoked(Identity),
}

impl Caller {
    /// The caller of a connection.
    pub fn of(peer: Option<&PeerInfo>) -> Caller {
        match peer {
            Some(PeerInfo {
                tls: true,
                identity: Some(id),
                revocations,
                ..
            }) => {
                if revocations.as_ref().is_some_and(|r| r.contains(id)) {
                    Caller::Revoked(id.clone())
                } else {
                    Caller::Known(id.clone())
                }
            }
            Some(PeerInfo {
                tls: true,
                unrecognised: Some(why),
                ..
            }) => Caller::Unrecognised(why.clone()),
            Some(PeerInfo { tls: true, .. }) => Caller::Anonymous,
            _ => Caller::Open,
        }
    }

    /// The identity, when one was proved.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::Known(id) => Some(id),
            _ => None,
        }
    }

    /// Whether the caller may act as `class` or nothing is checked (the plain transport).
    pub fn is(&self, class: Class) -> bool {
        match self {
            Caller::Open => true,
            Caller::Anonymous | Caller::Unrecognised(_) | Caller::Revoked(_) => false,
            Caller::Known(id) => Class::of(id.role) == class,
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Open => f.write_str("an unidentified caller (plain transport)"),
            Caller::Anonymous => f.write_str("a caller without a client certificate"),
            Caller::Unrecognised(_) => {
                f.write_str("a caller whose certificate carries no Strata identity")
            }
            Caller::Known(id) => write!(f, "{id}"),
            Caller::Revoked(id) => write!(f, "{id} (revoked)"),
        }
    }
}

/// The caller of a request (from the connection it came on).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    Caller::of(request.extensions().get::<PeerInfo>())
}

/// A handler's refusal: `PERMISSION_DENIED` with `why`, logged.
pub fn deny(caller: &Caller, method: &str, why: impl std::fmt::Display) -> Status {
    tracing::warn!(%caller, method, reason = %why, "permission denied");
    Status::permission_denied(format!("{method}: {why}"))
}

/// Whether `caller` may call the method at `path`.
pub fn check(path: &str, caller: &Caller) -> Result<(), Status> {
    let method = path.trim_start_matches('/');
    match (rule(path), caller) {
        (_, Caller::Open) | (Some(Rule::Public), _) => Ok(()),
        (None, _) => Err(deny(caller, method, "no such method is allowed")),
        (Some(Rule::Roles(_)), Caller::Anonymous) => {
            tracing::warn!(%caller, method, "unauthenticated call refused");
            Err(Status::unauthenticated(format!(
                "{method} needs a client certificate issued by the cluster CA"
            )))
        }
        (Some(Rule::Roles(_)), Caller::Unrecognised(why)) => {
            tracing::warn!(%caller, method, reason = %why, "unauthenticated call refused");
            Err(Status::unauthenticated(format!(
                "{method}: the client certificate carries no Strata identity ({why})"
            )))
        }
        (Some(Rule::Roles(_)), Caller::Revoked(id)) => {
            tracing::warn!(%caller, method, "a revoked identity's call refused");
            Err(Status::unauthenticated(format!(
                "{method}: the identity {id} has been revoked by the cluster's administrator"
            )))
        }
        (Some(Rule::Roles(allowed)), Caller::Known(id)) => {
            if allowed.contains(&Class::of(id.role)) {
                Ok(())
            } else {
                let names: Vec<&str> = allowed.iter().map(|c| c.name()).collect();
                Err(deny(
                    caller,
                    method,
                    format_args!(
                        "{id} may not call it (it needs the role {})",
                        names.join(" or ")
                    ),
                ))
            }
        }
    }
}

/// The tower layer that applies [`check`] to every request of a server.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthLayer;

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Every Strata server accepts through `transport::incoming`, which records the peer: a request
        // without that record came some other way, and is refused rather than trusted.
        let Some(peer) = request.extensions().get::<PeerInfo>() else {
            let status = Status::unauthenticated("the connection's peer is unknown");
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let caller = Caller::of(Some(peer));
        let path = request.uri().path();
        let _span = tracing::warn_span!("auth", peer = ?peer.remote).entered();
        match check(path, &caller) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::Tier;

    fn known(role: Role) -> Caller {
        Caller::Known(Identity::new("x", role).expect("id"))
    }

    #[test]
    fn each_role_reaches_only_its_methods() {
        let push = "/strata.v1.Control/PushModel";
        assert!(check(push, &known(Role::Admin)).is_ok());
        for role in [
            Role::Reader,
            Role::Device,
            Role::Node(Tier::Edge),
            Role::Controller,
        ] {
            let e = check(push, &known(role)).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert!(e.message().contains("admin"), "{}", e.message());
        }
        assert!(
            check(
                "/strata.v1.Control/Register",
                &known(Role::Node(Tier::Cloud))
            )
            .is_ok()
        );
        assert!(check("/strata.v1.Control/Register", &known(Role::Admin)).is_err());
        assert!(check("/strata.v1.Inference/Infer", &known(Role::Device)).is_ok());
        assert!(check("/strata.v1.Inference/Infer", &known(Role::Reader)).is_err());
        let oip = "/inference.GRPCInferenceService/ModelInfer";
        assert!(check(oip, &known(Role::Device)).is_ok());
        assert!(check(oip, &known(Role::Node(Tier::Edge))).is_ok());
        assert!(check(oip, &known(Role::Reader)).is_err());
        assert!(
            check(
                "/inference.GRPCInferenceService/ModelMetadata",
                &known(Role::Device)
            )
            .is_ok()
        );
        // Triton's own extensions are not served, so not allowed either.
        assert!(
            check(
                "/inference.GRPCInferenceService/RepositoryIndex",
                &known(Role::Admin)
            )
            .is_err()
        );
        assert!(check("/strata.v1.Routes/GetRoutes", &known(Role::Reader)).is_ok());
    }

    #[test]
    fn without_a_certificate_only_public_methods_answer() {
        let e = check("/strata.v1.Control/ListModels", &Caller::Anonymous).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(check("/grpc.health.v1.Health/Check", &Caller::Anonymous).is_ok());
    }

    #[test]
    fn unknown_methods_are_refused_but_plain_transport_checks_nothing() {
        assert!(check("/strata.v1.Control/Nope", &known(Role::Admin)).is_err());
        assert!(check("/evil", &known(Role::Admin)).is_err());
        assert!(check("/strata.v1.Control/PushModel", &Caller::Open).is_ok());
    }

    #[test]
    fn a_revoked_identity_is_refused_on_connections_it_already_has() {
        let id = Identity::new("gw", Role::Node(Tier::Edge)).expect("id");
        let revocations = Revocations::default();
        let peer = PeerInfo {
            remote: None,
            tls: true,
            identity: Some(id.clone()),
            unrecognised: None,
            revocations: Some(revocations.clone()),
        };
        let register = "/strata.v1.Control/Register";
        assert!(check(register, &Caller::of(Some(&peer))).is_ok());
        revocations.insert(&id);
        let e = check(register, &Caller::of(Some(&peer))).expect_err("revoked");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("revoked"), "{}", e.message());
        assert!(
            check("/grpc.health.v1.Health/Check", &Caller::of(Some(&peer))).is_ok(),
            "public methods stay public"
        );
    }
}
