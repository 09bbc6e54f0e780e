//! From a model and a cluster to a plan: analyse, build the cost problem, partition, cut into stages, extract
//! each stage as an ONNX model. Also the `plan.json` schema shared by `strata plan`, `strata split` and
//! `strata run`.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::analyse::{AnalyseError, Analysis, InputShape};
use crate::cluster::Cluster;
use crate::cost::{self, CostError, Profile};
use crate::extract::{self, ExtractError};
use crate::model::{Model, Origin};
use crate::onnx::ModelProto;
use crate::partition::{self, Constraints, Objective, PartitionError, Placement, TIER_COUNT};
use strata_core::Privacy;
use strata_core::Tier;

/// What to optimise and under which limits.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Privacy level.
    pub privacy: Privacy,
    /// Objective.
    pub objective: Objective,
    /// Optional end-to-end latency budget, ms.
    pub latency_budget_ms: Option<f64>,
}

/// Why planning failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Analysis failed.
    #[error(transparent)]
    Analyse(#[from] AnalyseError),
    /// The cost model could not be built.
    #[error(transparent)]
    Cost(#[from] CostError),
    /// No feasible placement, or the partitioner refused the problem. `message` names nodes by name.
    #[error("{message}")]
    Partition {
        /// The partitioner's error.
        reason: PartitionError,
        /// Its message with node indices replaced by node names and operators.
        message: String,
    },
    /// A stage could not be extracted.
    #[error(transparent)]
    Extract(#[from] ExtractError),
    /// A model output that no node computes.
    #[error(
        "model output \"{0}\" is a model input or an initializer, not computed by any node; Strata cannot place it"
    )]
    OutputNotComputed(String),
}

/// Predicted figures of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    /// End-to-end latency, ms.
    pub latency_ms: f64,
    /// Device energy, mJ.
    pub device_energy_mj: f64,
}

/// Where the planner's own time went, ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Shape/FLOP analysis with tract.
    pub analyse: f64,
    /// Partitioning (the planner proper).
    pub plan: f64,
    /// Stage extraction.
    pub extract: f64,
}

/// Optimality of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Optimality {
    /// Proven optimal.
    pub exact: bool,
    /// Proven lower bound on the optimal objective.
    pub lower_bound: f64,
    /// Relative gap between this plan and the bound ((value − bound) / value).
    pub gap: f64,
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageInfo {
    /// Position in execution order, from 0.
    pub index: usize,
    /// Tier that runs it.
    pub tier: Tier,
    /// The stage's ONNX file, relative to the plan directory.
    pub file: String,
    /// Tensors the stage reads: model inputs or outputs of earlier stages.
    pub inputs: Vec<String>,
    /// Tensors the stage writes that a later stage reads or that are model outputs.
    pub outputs: Vec<String>,
    /// Number of nodes.
    pub nodes: usize,
    /// Names of the nodes.
    pub node_names: Vec<String>,
    /// FLOPs.
    pub flops: f64,
    /// Predicted compute time on its tier, ms (null for manual splits).
    pub predicted_ms: Option<f64>,
    /// Bytes the stage receives over the network (its inputs).
    pub bytes_in: u64,
    /// Peak memory of the stage (parameters + live activations), bytes.
    pub memory_bytes: u64,
}

/// `plan.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanFile {
    /// The source model's file name.
    pub model: String,
    /// Privacy level planned for (manual splits: none).
    pub privacy: Option<Privacy>,
    /// Objective (`latency` or `energy`; manual splits: `manual`).
    pub objective: String,
    /// Latency budget, if one was given.
    pub latency_budget_ms: Option<f64>,
    /// The cluster planned for.
    pub cluster: Option<String>,
    /// Concrete input shapes the plan was made for.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Model outputs, in the model's order.
    pub outputs: Vec<String>,
    /// Predicted end-to-end figures (manual splits: none).
    pub predicted: Option<Predicted>,
    /// Optimality certificate (manual splits: none).
    pub optimality: Option<Optimality>,
    /// The planner's own time.
    pub timings_ms: Timings,
    /// Stages in execution order.
    pub stages: Vec<StageInfo>,
}

/// A plan and the stage models to write next to it.
#[derive(Debug, Clone)]
pub struct PlannedModel {
    /// The plan description.
    pub plan: PlanFile,
    /// One ONNX model per stage, in the same order as `plan.stages`.
    pub stage_models: Vec<ModelProto>,
}

/// A stage before extraction.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Tier.
    pub tier: Tier,
    /// Node indices (topological order).
    pub nodes: Vec<usize>,
    /// Input tensors.
    pub inputs: Vec<String>,
    /// Output tensors.
    pub outputs: Vec<String>,
}

/// Cuts a model into stages from a stage index per node (stage indices must be monotone along every edge; empty
/// stages are dropped). `tiers[s]` is the tier of stage `s`. Folded nodes run in no stage, and folded
/// constants are no stage's input or output (each stage that reads one holds it, see
/// [`Analysis::constants`]).
pub fn stages_from_assignment(
    model: &Model,
    analysis: &Analysis,
    stage_of: &[usize],
    tiers: &[Tier],
) -> Result<Vec<StageSpec>, PlanError> {
    for out in &model.outputs {
        if !matches!(model.origins.get(out), Some(Origin::Node(_))) {
            return Err(PlanError::OutputNotComputed(out.clone()));
        }
    }
    let mut stages = Vec::new();
    for (s, &tier) in tiers.iter().enumerate() {
        let nodes: Vec<usize> = (0..model.nodes.len())
            .filter(|&v| stage_of[v] == s && !analysis.is_folded(v))
            .collect();
        if nodes.is_empty() {
            continue;
        }
        let mut inputs = Vec::new();
        let mut seen = HashSet::new();
        for &v in &nodes {
            for t in &model.nodes[v].inputs {
                if analysis.is_constant(t) {
                    continue;
                }
                let external = match model.origins.get(t) {
                    Some(Origin::Input) => true,
                    Some(Origin::Node(p)) => stage_of[*p] < s,
                    _ => false,
                };
                if external && seen.insert(t.clone()) {
                    inputs.push(t.clone());
                }
            }
        }
        let mut outputs = Vec::new();
        for &v in &nodes {
            for t in &model.nodes[v].outputs {
                if analysis.is_constant(t) {
                    continue;
                }
                let later = model.consumers.get(t).is_some_and(|cs| {
                    cs.iter()
                        .any(|&c| stage_of[c] > s && !analysis.is_folded(c))
                });
                if later || model.outputs.contains(t) {
                    outputs.push(t.clone());
                }
            }
        }
        stages.push(StageSpec {
            tier,
            nodes,
            inputs,
            outputs,
        });
    }
    Ok(stages)
}

/// Extracts every stage and describes it.
pub fn build_stages(
    model: &Model,
    analysis: &Analysis,
    specs: &[StageSpec],
    predicted_ms: Option<&[f64]>,
    memory_bytes: Option<&[f64; TIER_COUNT]>,
) -> Result<(Vec<StageInfo>, Vec<ModelProto>), PlanError> {
    let mut infos = Vec::with_capacity(specs.len());
    let mut protos = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let proto = extract::extract_stage(
            model,
            analysis,
            &spec.nodes,
            &spec.inputs,
            &spec.outputs,
            index,
        )?;
        protos.push(proto);
        infos.push(StageInfo {
            index,
            tier: spec.tier,
            file: format!("stage{index}_{}.onnx", spec.tier),
            inputs: spec.inputs.clone(),
            outputs: spec.outputs.clone(),
            nodes: spec.nodes.len(),
            node_names: spec
                .nodes
                .iter()
                .map(|&v| model.nodes[v].name.clone())
                .collect(),
            flops: spec.nodes.iter().map(|&v| analysis.node_flops[v]).sum(),
            predicted_ms: predicted_ms.map(|ms| spec.nodes.iter().map(|&v| ms[v]).sum()),
            bytes_in: if index == 0 && spec.tier == Tier::Device {
                0
            } else {
                spec.inputs.iter().map(|t| analysis.tensor_bytes(t)).sum()
            },
            memory_bytes: memory_bytes.map_or(0, |m| m[spec.tier.index()] as u64),
        });
    }
    Ok((infos, protos))
}

/// The stages of a placement (`tier[v]` per node, as the partitioner returns it), extracted, with each stage's
/// predicted compute time from `problem`'s latency layer and its tier's memory from `memory_bytes`.
pub fn placement_stages(
    model: &Model,
    analysis: &Analysis,
    problem: &partition::Problem,
    tier: &[u8],
    memory_bytes: &[f64; TIER_COUNT],
) -> Result<(Vec<StageInfo>, Vec<ModelProto>), PlanError> {
    let stage_of: Vec<usize> = tier.iter().map(|&t| t as usize).collect();
    let specs = stages_from_assignment(model, analysis, &stage_of, &Tier::ALL)?;
    let node_ms: Vec<f64> = (0..model.nodes.len())
        .map(|v| problem.latency.node_cost[v][stage_of[v]])
        .collect();
    build_stages(model, analysis, &specs, Some(&node_ms), Some(memory_bytes))
}

/// Plans a model for a cluster: analysis, optimal constrained placement, stages.
#[tracing::instrument(skip_all, fields(model = model_name, privacy = %options.privacy))]
#[allow(clippy::too_many_arguments)]
pub fn plan(
    model_name: &str,
    model: &Model,
    bytes: &[u8],
    input_shapes: &[InputShape],
    cluster: &Cluster,
    profile: Option<&Profile>,
    options: &PlanOptions,
) -> Result<PlannedModel, PlanError> {
    let started = Instant::now();
    let analysis = crate::analyse::analyse(model, bytes, input_shapes)?;
    let analyse_ms = ms_since(started);
    plan_analysed(
        model_name, model, &analysis, cluster, profile, options, analyse_ms,
    )
}

/// Plans a model whose analysis is already done (see [`plan`]).
pub fn plan_analysed(
    model_name: &str,
    model: &Model,
    analysis: &Analysis,
    cluster: &Cluster,
    profile: Option<&Profile>,
    options: &PlanOptions,
    analyse_ms: f64,
) -> Result<PlannedModel, PlanError> {
    let started = Instant::now();
    let problem = cost::build_problem(model, analysis, cluster, options.privacy, profile)?;
    let mut memory_cap_bytes = [None; TIER_COUNT];
    for tier in Tier::ALL {
        if let Some(spec) = cluster.tier(tier) {
            memory_cap_bytes[tier.index()] = Some(spec.memory_mib * 1024.0 * 1024.0);
        }
    }
    let constraints = Constraints {
        objective: options.objective,
        latency_budget_ms: options.latency_budget_ms,
        memory_cap_bytes,
    };
    let placement: Placement = partition::solve(&problem, &constraints).map_err(|e| {
        let excluded = match options.privacy {
            Privacy::Device => {
                " (privacy \"device\" keeps every node on the device: edge and cloud are excluded)"
            }
            Privacy::Edge => " (privacy \"edge\" excludes the cloud tier)",
            Privacy::Features | Privacy::Open => "",
        };
        let name = |v: usize| match model.nodes.get(v) {
            Some(node) => format!("node \"{}\" ({})", node.name, node.op_type),
            None => format!("node {v}"),
        };
        PlanError::Partition {
            message: e.describe(&name) + excluded,
            reason: e,
        }
    })?;
    let plan_ms = ms_since(started);

    let started = Instant::now();
    let (stages, stage_models) = placement_stages(
        model,
        analysis,
        &problem,
        &placement.tier,
        &placement.memory_bytes,
    )?;
    let extract_ms = ms_since(started);

    let value = placement.objective_value;
    let plan = PlanFile {
        model: model_name.to_string(),
        privacy: Some(options.privacy),
        objective: options.objective.name().to_string(),
        latency_budget_ms: options.latency_budget_ms,
        cluster: Some(cluster.name.clone()),
        input_shapes: analysis
            .input_shapes
            .iter()
            .map(|s| (s.name.clone(), s.dims.clone()))
            .collect(),
        outputs: model.outputs.clone(),
        predicted: Some(Predicted {
            latency_ms: placement.latency_ms,
            device_energy_mj: placement.device_energy_mj,
        }),
        optimality: Some(Optimality {
            exact: placement.exact,
            lower_bound: placement.lower_bound,
            gap: if value > 0.0 {
                ((value - placement.lower_bound) / value).max(0.0)
            } else {
                0.0
            },
        }),
        timings_ms: Timings {
            analyse: analyse_ms,
            plan: plan_ms,
            extract: extract_ms,
        },
        stages,
    };
    Ok(PlannedModel { plan, stage_models })
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
