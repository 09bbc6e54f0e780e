//! The words every Strata crate shares, defined once: the hardware [`Tier`]s, the [`Privacy`] levels, the
//! content [`Digest`] that names every model and stage, and the backend-neutral [`TensorData`] that crosses
//! crate boundaries and the wire. Plain data: no I/O, no async, no dependency on any other Strata crate.
//! Conversions to and from the wire (`strata.v1`) live in one place, `strata_proto::convert`.

#![forbid(unsafe_code)]

pub mod digest;
pub mod privacy;
pub mod recost;
pub mod tensor;
pub mod tier;

pub use digest::{Digest, DigestError, DigestMismatch};
pub use privacy::Privacy;
pub use tensor::{DType, TensorData, TensorError};
pub use tier::Tier;

/// A name that is not one of an enumeration's lower-case names (`"glasses"` as a tier, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} \"{given}\"; expected one of {expected}")]
pub struct UnknownName {
    /// What was parsed ("tier", "privacy level").
    pub kind: &'static str,
    /// The text given.
    pub given: String,
    /// The accepted names, comma-separated.
    pub expected: &'static str,
}
