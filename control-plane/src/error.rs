//! The control plane's errors and their one mapping to gRPC status codes.

use tonic::Status;

use crate::blob::BlobError;
use crate::store::StoreError;

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The caller sent something invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the current state (retrying later may help).
    #[error("{0}")]
    Unavailable(String),
    /// Too big.
    #[error("{0}")]
    TooLarge(String),
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

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Status {
        let message = e.to_string();
        match e {
            ControlError::InvalidArgument(_) => Status::invalid_argument(message),
            ControlError::NotFound(_) => Status::not_found(message),
            ControlError::Unavailable(_) => Status::unavailable(message),
            ControlError::TooLarge(_) => Status::resource_exhausted(message),
            ControlError::Store(StoreError::Unavailable(_)) => Status::unavailable(message),
            ControlError::Store(_) | ControlError::Internal(_) => Status::internal(message),
            ControlError::Blob(BlobError::DigestMismatch { .. }) => {
                Status::invalid_argument(message)
            }
            ControlError::Blob(_) => Status::internal(message),
        }
    }
}
