//! What the control plane keeps in the store, as plain serde types (JSON values, see [`crate::keys`]).

use serde::{Deserialize, Serialize};
use strata_planner::cluster::Tier;
use strata_planner::privacy::Privacy;

/// A registered node (edge or cloud agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id, assigned at registration.
    pub id: String,
    /// Operator-chosen name.
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// CPU architecture.
    pub arch: String,
    /// CPU cores.
    pub cores: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Backends it can run.
    pub backends: Vec<String>,
    /// Where it serves inference, `host:port`.
    pub address: String,
    /// The store lease its key is bound to.
    pub lease: i64,
    /// Digests of the stages it has loaded and reported ready.
    pub ready: Vec<String>,
}

/// A running control-plane replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerRecord {
    /// Replica id, chosen at start.
    pub id: String,
    /// Where it serves the API, `host:port`.
    pub address: String,
}

/// A pushed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Name.
    pub name: String,
    /// Version, from 1, bumped on every push of new content.
    pub version: u64,
    /// SHA-256 of the ONNX bytes (the blob's address).
    pub digest: String,
    /// Size of the ONNX bytes.
    pub size_bytes: u64,
    /// The model's privacy level; requests may only tighten it.
    pub privacy: Privacy,
    /// Shapes for symbolic input dims, `NAME=d0,d1,..`.
    pub input_shapes: Vec<String>,
}

/// A model input as plans fix it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    /// Name.
    pub name: String,
    /// ONNX element type code.
    pub elem_type: i32,
    /// Concrete shape.
    pub shape: Vec<u64>,
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Position, from 0.
    pub index: u32,
    /// Tier.
    pub tier: Tier,
    /// SHA-256 of the stage's ONNX bytes.
    pub digest: String,
    /// Size of the stage's ONNX bytes.
    pub size_bytes: u64,
    /// Tensors it reads.
    pub inputs: Vec<String>,
    /// Tensors it writes that later stages read or that are model outputs.
    pub outputs: Vec<String>,
    /// Peak memory, bytes.
    pub memory_bytes: u64,
    /// Predicted compute time on its tier, ms.
    pub predicted_ms: f64,
}

/// One plan of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// Stable id: a digest of the stage split.
    pub id: String,
    /// Privacy levels the plan satisfies.
    pub satisfies: Vec<Privacy>,
    /// Objective(s) it is optimal for, e.g. `latency` or `latency,energy`.
    pub objective: String,
    /// Predicted end-to-end latency, ms.
    pub latency_ms: f64,
    /// Predicted device energy, mJ.
    pub device_energy_mj: f64,
    /// Bytes the device sends.
    pub device_bytes_sent: u64,
    /// Stages in order.
    pub stages: Vec<StageRecord>,
}

/// A model's plans for the tiers present when it was planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlansRecord {
    /// Model name.
    pub model: String,
    /// Model version the plans are for.
    pub version: u64,
    /// Tiers that had live agents when planned (device always).
    pub tiers: Vec<Tier>,
    /// Inputs with concrete shapes.
    pub inputs: Vec<InputRecord>,
    /// Model outputs in order.
    pub outputs: Vec<String>,
    /// The plans (deduplicated).
    pub plans: Vec<PlanRecord>,
    /// Why some plans are missing, or why planning failed.
    pub notes: Vec<String>,
    /// Set when no plan at all could be made.
    pub failed: Option<String>,
}
