//! What can go wrong for an app, each with a message that says what to do.

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SdkError {
    /// The cluster does not know the model.
    #[error("{0}")]
    UnknownModel(String),
    /// The inputs do not match the model.
    #[error("{0}")]
    InvalidInput(String),
    /// A setting or argument is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// No plan satisfies the request's privacy.
    #[error("{0}")]
    NoPlan(String),
    /// Nothing reachable could serve the request.
    #[error("{0}")]
    Unavailable(String),
    /// The deadline passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The device stage failed locally.
    #[error("{0}")]
    Local(String),
    /// An agent refused or failed.
    #[error("{message} ({code:?})")]
    Remote {
        /// gRPC code.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
}

impl SdkError {
    /// From a gRPC status.
    pub fn from_status(s: tonic::Status) -> SdkError {
        match s.code() {
            tonic::Code::InvalidArgument => SdkError::InvalidInput(s.message().to_string()),
            tonic::Code::DeadlineExceeded => SdkError::DeadlineExceeded(s.message().to_string()),
            code => SdkError::Remote {
                code,
                message: s.message().to_string(),
            },
        }
    }

    /// Whether another plan (or running locally) may succeed where this failed.
    pub fn retryable(&self) -> bool {
        match self {
            SdkError::Unavailable(_) => true,
            SdkError::Remote { code, .. } => {
                strata_proto::call::retryable(&tonic::Status::new(*code, ""))
            }
            _ => false,
        }
    }
}
