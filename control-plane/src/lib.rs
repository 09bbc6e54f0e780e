//! Strata's control plane: the registry of nodes and models, planning each model for the tiers that are up,
//! assigning stages to agents, and publishing route tables. It is off the data path: devices and agents route
//! from cached tables, so serving continues while it is down.
//!
//! State goes through the [`store::Store`] trait (etcd semantics; [`store::embedded::EmbeddedStore`] is the
//! zero-setup default), model and stage bytes through the content-addressed [`strata_blob::BlobStore`]
//! ([`blob::PeerBlobStore`] across replicas, with the collector of unreferenced blobs).

#![forbid(unsafe_code)]

pub mod blob;
pub mod calibration;
pub mod convert;
pub mod error;
pub mod identities;
pub mod keys;
pub mod metrics;
pub mod plane;
pub mod planning;
pub mod reconcile;
pub mod records;
pub mod replica;
pub mod route_cache;
pub mod server;
pub mod service;
pub mod store;
pub mod tokens;

pub use error::ControlError;
pub use plane::{ControlPlane, Settings};
