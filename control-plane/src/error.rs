//! The control plane's errors and their one mapping to gRPC status codes and typed reasons
//! ([`strata_proto::error::ErrorReason`]): clients branch on the code and the reason, never on the message.

use strata_blob::BlobError;
use strata_proto::error::{self, ErrorReason};
use tonic::{Code, Status};

use crate::store::StoreError;

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The caller sent something invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The model is not known.
    #[error("unknown model \"{name}\" (known: {})", known_models(.known))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The models that exist.
        known: Vec<String>,
    },
    /// The node is not registered (its lease expired, or it deregistered).
    #[error(
        "node \"{0}\" is not registered (its lease expired or it deregistered); register again"
    )]
    UnknownNode(String),
    /// The model's current version has no route table yet.
    #[error("model \"{0}\" is still being planned; retry in a moment")]
    Planning(String),
    /// No plan could be made for the model.
    #[error("model \"{model}\" has no plan: {why}")]
    PlanFailed {
        /// The model.
        model: String,
        /// Why.
        why: String,
    },
    /// This replica lost the leadership while writing.
    #[error("this control plane no longer leads; the new leader takes over")]
    NotLeader,
    /// Too big.
    #[error("{0}")]
    TooLarge(String),
    /// The caller's identity may not do this (act as another node, register on another tier).
    #[error("{0}")]
    PermissionDenied(String),
    /// This control plane cannot do it as configured (no CA key to sign joins with, say).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No join token with this id.
    #[error("no join token \"{0}\" (list them with `strata token ls`)")]
    UnknownToken(String),
    /// The store failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The blob store failed.
    #[error("blob store: {0}")]
    Blob(#[from] BlobError),
    /// A bug or a corrupt record.
    #[error("internal error: {0}")]
    Internal(String),
}

fn known_models(known: &[String]) -> String {
    if known.is_empty() {
        "none; push one with `strata model push`".to_string()
    } else {
        known.join(", ")
    }
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Status {
        let message = e.to_string();
        let (code, reason) = match e {
            ControlError::InvalidArgument(_) => (Code::InvalidArgument, None),
            ControlError::UnknownModel { .. } => (Code::NotFound, Some(ErrorReason::UnknownModel)),
            ControlError::UnknownNode(_) => (Code::NotFound, Some(ErrorReason::NodeNotRegistered)),
            ControlError::Planning(_) => (Code::Unavailable, Some(ErrorReason::ModelPlanning)),
            ControlError::PlanFailed { .. } => (Code::Unavailable, Some(ErrorReason::ModelFailed)),
            ControlError::NotLeader => (Code::Unavailable, Some(ErrorReason::NotLeader)),
            ControlError::TooLarge(_) => (Code::ResourceExhausted, None),
            ControlError::PermissionDenied(_) => (Code::PermissionDenied, None),
            ControlError::FailedPrecondition(_) => (Code::FailedPrecondition, None),
            ControlError::UnknownToken(_) => (Code::NotFound, None),
            ControlError::Store(StoreError::Unavailable(_)) => {
                (Code::Unavailable, Some(ErrorReason::StoreUnavailable))
            }
            ControlError::Store(_) | ControlError::Internal(_) => (Code::Internal, None),
            ControlError::Blob(BlobError::DigestMismatch(_)) => (Code::InvalidArgument, None),
            ControlError::Blob(_) => (Code::Internal, None),
        };
        match reason {
            Some(reason) => error::status(code, message, reason),
            None => Status::new(code, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_outages_and_unknown_models_carry_typed_reasons() {
        let s = Status::from(ControlError::Store(StoreError::Unavailable(
            "etcd is down".into(),
        )));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(error::reason(&s), Some(ErrorReason::StoreUnavailable));
        let s = Status::from(ControlError::UnknownModel {
            name: "yolo".into(),
            known: vec![],
        });
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(error::reason(&s), Some(ErrorReason::UnknownModel));
        assert!(s.message().contains("push one"), "{}", s.message());
        let s = Status::from(ControlError::InvalidArgument("bad".into()));
        assert_eq!((s.code(), error::reason(&s)), (Code::InvalidArgument, None));
    }
}
