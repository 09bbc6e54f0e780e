//! Strata's planner: the ONNX graph model, the cost model, optimal constrained k-tier partitioning, and stage
//! extraction. Pure code: no I/O, no async. Callers (the CLI, the control plane) read files and pass bytes.

#![forbid(unsafe_code)]

pub mod analyse;
pub mod cluster;
pub mod cost;
pub mod extract;
pub mod frontier;
pub mod model;
pub mod onnx;
pub mod partition;
pub mod plan;
pub mod roofline;
pub mod split;
