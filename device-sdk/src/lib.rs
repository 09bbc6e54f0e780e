//! What apps link to use a Strata cluster. [`Client::infer`] picks a plan per request from the cached route
//! table, re-costed under the client's live estimates of the network and the tiers (privacy first, then the
//! request's latency and energy budgets and objective, and the battery), runs the device stage in-process
//! with tract, sends the rest to the least-loaded agent of the next tier, and falls back to other agents, other
//! plans, or the whole model on the device when the network fails. [`blocking::Client`] wraps it for
//! synchronous code.

// `deny`, not `forbid`: the C ABI in `ffi` alone allows unsafe code.
#![deny(unsafe_code)]

pub mod blocking;
pub mod client;
pub mod counters;
pub mod error;
pub mod estimate;
pub mod ffi;
pub mod route;

pub use client::{Client, ClientConfig, HopTiming, Inference, Prefetched, StageTiming};
pub use counters::Counters;
pub use error::SdkError;
pub use route::{Constraints, Objective, PowerState};
pub use strata_core::{DType, Privacy, TensorData};
