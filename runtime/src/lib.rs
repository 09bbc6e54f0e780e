//! Strata's runtime: executes one stage (or a whole model). Tract on CPU and ARM is the default backend; other
//! backends (a GPU one for the cloud tier) plug in behind the [`Backend`] trait without touching callers.

#![forbid(unsafe_code)]

pub mod backend;
pub mod npy;
pub mod profile;
pub mod tract_backend;

pub use backend::{Backend, LoadedStage, OutputFact, RuntimeError};
pub use strata_core::{DType, TensorData, TensorError};
pub use tract_backend::TractBackend;
