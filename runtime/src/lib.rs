//! Strata's runtime: executes one stage (or a whole model). Tract on CPU and ARM is the default backend; other
//! backends plug in behind the [`Backend`] trait without touching callers: onnxruntime (CPU, CUDA, TensorRT)
//! behind the `ort` feature.

#![forbid(unsafe_code)]

pub mod backend;
pub mod batch;
pub mod npy;
#[cfg(feature = "ort")]
pub mod ort_backend;
pub mod profile;
pub mod tract_backend;

pub use backend::{Backend, LoadedStage, OutputFact, RuntimeError};
#[cfg(feature = "ort")]
pub use ort_backend::{ExecutionProvider, OrtBackend, OrtConfig};
pub use strata_core::{DType, TensorData, TensorError};
pub use tract_backend::TractBackend;
