//! Plans one model for the tiers that have live agents: the few plans a device chooses from per request.
//!
//! For every privacy combination a request can ask for (open, features, edge, edge + features, device) and both
//! objectives (latency, device energy), the planner finds the optimal split; identical splits are merged. Each
//! plan is tagged with the privacy levels it satisfies, computed from the plan itself. Pure and blocking: run it
//! on a blocking thread.

use std::collections::{BTreeSet, HashSet};

use strata_core::Digest;
use strata_core::Privacy;
use strata_core::Tier;
use strata_planner::analyse::{self, AnalyseError, Analysis, InputShape, InputShapeError};
use strata_planner::cluster::{Cluster, LinkSpec};
use strata_planner::model::{Model, ModelError};
use strata_planner::partition::Objective;
use strata_planner::plan::{self, PlanOptions, PlannedModel};

use crate::records::{InputRecord, PlanRecord, PlansRecord, StageRecord};

/// A model's plans and the stage blobs they reference.
#[derive(Debug)]
pub struct PlannedSet {
    /// The plans (version and name filled in).
    pub record: PlansRecord,
    /// `(digest, bytes)` of every stage ONNX file the plans reference.
    pub blobs: Vec<(Digest, Vec<u8>)>,
}

/// Plans `bytes` (model `name`, `version`) for `base` restricted to `tiers`, keeping the plans that satisfy the
/// model's own `privacy`.
pub fn plan_model(
    name: &str,
    version: u64,
    bytes: &[u8],
    input_shapes: &[String],
    privacy: Privacy,
    base: &Cluster,
    tiers: &BTreeSet<Tier>,
) -> PlannedSet {
    let mut record = PlansRecord {
        model: name.to_string(),
        version,
        tiers: tiers.iter().copied().collect(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        plans: Vec::new(),
        notes: Vec::new(),
        failed: None,
    };
    let mut blobs = Vec::new();
    let prepared = prepare(bytes, input_shapes);
    let (model, analysis) = match prepared {
        Ok(p) => p,
        Err(e) => {
            record.failed = Some(e.to_string());
            return PlannedSet { record, blobs };
        }
    };
    record.outputs = model.outputs.clone();
    record.inputs = analysis
        .input_shapes
        .iter()
        .map(|s| InputRecord {
            name: s.name.clone(),
            elem_type: model.declared_elem_type(&s.name).unwrap_or(1),
            shape: s.dims.iter().map(|&d| d as u64).collect(),
        })
        .collect();

    let mut seen_blobs = HashSet::new();
    for (label, level, keep) in variants(tiers) {
        let cluster = match restrict(base, &keep) {
            Ok(c) => c,
            Err(e) => {
                record.notes.push(format!("{label}: {e}"));
                continue;
            }
        };
        for objective in [Objective::Latency, Objective::Energy] {
            let options = PlanOptions {
                privacy: level,
                objective,
                latency_budget_ms: None,
            };
            let planned =
                match plan::plan_analysed(name, &model, &analysis, &cluster, None, &options, 0.0) {
                    Ok(p) => p,
                    Err(e) => {
                        let note = format!("no {label} plan: {e}");
                        if !record.notes.contains(&note) {
                            record.notes.push(note);
                        }
                        continue;
                    }
                };
            let plan = to_record(
                &model,
                &analysis,
                &planned,
                objective,
                &mut blobs,
                &mut seen_blobs,
            );
            if !plan.satisfies.contains(&privacy) {
                continue;
            }
            match record.plans.iter_mut().find(|p| p.id == plan.id) {
                Some(existing) => {
                    if !existing.objectives.contains(&objective) {
                        existing.objectives.push(objective);
                    }
                }
                None => record.plans.push(plan),
            }
        }
    }
    if record.plans.is_empty() {
        record.failed = Some(format!(
            "no plan fits the cluster: {}",
            record.notes.join("; ")
        ));
    }
    record
        .plans
        .sort_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms));
    PlannedSet { record, blobs }
}

/// Why a model cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Not a valid ONNX model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An input shape given with the push does not parse.
    #[error(transparent)]
    InputShape(#[from] InputShapeError),
    /// Unsupported operators, shapes that do not resolve, or a graph tract cannot type.
    #[error(transparent)]
    Analyse(#[from] AnalyseError),
}

/// Checks that a model can be served: it parses, tract supports every operator, and its input shapes resolve.
pub fn check_model(bytes: &[u8], input_shapes: &[String]) -> Result<(), CheckError> {
    prepare(bytes, input_shapes).map(|_| ())
}

fn prepare(bytes: &[u8], input_shapes: &[String]) -> Result<(Model, Analysis), CheckError> {
    let model = Model::from_bytes(bytes)?;
    let shapes: Vec<InputShape> = input_shapes
        .iter()
        .map(|s| s.parse::<InputShape>())
        .collect::<Result<_, _>>()?;
    // Unsupported operators first: they are the news, whatever else is wrong.
    let unsupported = analyse::unsupported_ops(&model, bytes)?;
    if !unsupported.is_empty() {
        return Err(AnalyseError::Unsupported(unsupported).into());
    }
    let analysis = analyse::analyse(&model, bytes, &shapes)?;
    Ok((model, analysis))
}

/// The privacy combinations to plan for: a label, the planner's privacy level and the tiers to keep.
fn variants(tiers: &BTreeSet<Tier>) -> Vec<(&'static str, Privacy, BTreeSet<Tier>)> {
    let no_cloud: BTreeSet<Tier> = tiers
        .iter()
        .copied()
        .filter(|&t| t != Tier::Cloud)
        .collect();
    let device: BTreeSet<Tier> = [Tier::Device].into_iter().collect();
    let mut out = vec![
        ("open", Privacy::Open, tiers.clone()),
        ("features", Privacy::Features, tiers.clone()),
    ];
    if tiers.contains(&Tier::Cloud) && no_cloud.len() > 1 {
        out.push(("edge", Privacy::Open, no_cloud.clone()));
        out.push(("edge+features", Privacy::Features, no_cloud));
    }
    if tiers.len() > 1 {
        out.push(("device", Privacy::Open, device));
    }
    out
}

/// The cluster with only `keep`'s tiers. A device–cloud link missing once the edge is gone becomes the relay
/// through the edge, as the planner would have used it.
pub fn restrict(base: &Cluster, keep: &BTreeSet<Tier>) -> Result<Cluster, String> {
    let mut cluster = base.clone();
    cluster.tiers.retain(|t, _| keep.contains(t));
    cluster
        .links
        .retain(|l| keep.contains(&l.from) && keep.contains(&l.to));
    let has_direct = cluster
        .links
        .iter()
        .any(|l| l.from == Tier::Device && l.to == Tier::Cloud);
    if keep.contains(&Tier::Cloud)
        && !keep.contains(&Tier::Edge)
        && !has_direct
        && let Some(hop) = base.hop(Tier::Device, Tier::Cloud)
    {
        cluster.links.push(LinkSpec {
            from: Tier::Device,
            to: Tier::Cloud,
            up_mbps: 8.0 / (hop.up_ms_per_byte * 1e3),
            down_mbps: Some(8.0 / (hop.down_ms_per_byte * 1e3)),
            rtt_ms: hop.rtt_ms,
        });
    }
    for t in keep {
        if !cluster.tiers.contains_key(t) {
            return Err(format!("the cluster profile has no [tiers.{t}]"));
        }
    }
    cluster.validate().map_err(|e| e.to_string())?;
    Ok(cluster)
}

fn to_record(
    model: &Model,
    analysis: &Analysis,
    planned: &PlannedModel,
    objective: Objective,
    blobs: &mut Vec<(Digest, Vec<u8>)>,
    seen: &mut HashSet<Digest>,
) -> PlanRecord {
    use prost::Message;
    let mut stages = Vec::new();
    for (info, proto) in planned.plan.stages.iter().zip(&planned.stage_models) {
        let bytes = proto.encode_to_vec();
        let digest = Digest::of(&bytes);
        let size_bytes = bytes.len() as u64;
        if seen.insert(digest.clone()) {
            blobs.push((digest.clone(), bytes));
        }
        stages.push(StageRecord {
            index: info.index as u32,
            tier: info.tier,
            digest,
            size_bytes,
            inputs: info.inputs.clone(),
            outputs: info.outputs.clone(),
            memory_bytes: info.memory_bytes,
            predicted_ms: info.predicted_ms.unwrap_or(0.0),
        });
    }
    let mut split = Vec::new();
    for s in &stages {
        split.extend_from_slice(s.tier.name().as_bytes());
        split.extend_from_slice(s.digest.as_str().as_bytes());
    }
    let id = Digest::of(&split).as_str()[..12].to_string();
    let predicted = planned.plan.predicted.clone();
    PlanRecord {
        id,
        satisfies: satisfies(model, &stages),
        objectives: vec![objective],
        latency_ms: predicted.as_ref().map_or(0.0, |p| p.latency_ms),
        device_energy_mj: predicted.as_ref().map_or(0.0, |p| p.device_energy_mj),
        device_bytes_sent: device_bytes_sent(model, analysis, &stages),
        stages,
    }
}

/// The privacy levels a split satisfies, judged from the split alone.
pub fn satisfies(model: &Model, stages: &[StageRecord]) -> Vec<Privacy> {
    let remote = |s: &&StageRecord| s.tier != Tier::Device;
    let mut levels = vec![Privacy::Open];
    let raw_stays = stages
        .iter()
        .filter(remote)
        .all(|s| s.inputs.iter().all(|t| !model.inputs.contains(t)));
    if raw_stays {
        levels.push(Privacy::Features);
    }
    if stages.iter().all(|s| s.tier != Tier::Cloud) {
        levels.push(Privacy::Edge);
    }
    if stages.iter().all(|s| s.tier == Tier::Device) {
        levels.push(Privacy::Device);
    }
    levels.sort();
    levels
}

/// Bytes the device sends: every tensor it holds (inputs, device-stage outputs) that a remote stage reads. The
/// device sends them once, to the first remote stage, which forwards what later stages need.
fn device_bytes_sent(model: &Model, analysis: &Analysis, stages: &[StageRecord]) -> u64 {
    let mut on_device: HashSet<&str> = model.inputs.iter().map(String::as_str).collect();
    for s in stages.iter().filter(|s| s.tier == Tier::Device) {
        on_device.extend(s.outputs.iter().map(String::as_str));
    }
    let needed: BTreeSet<&str> = stages
        .iter()
        .filter(|s| s.tier != Tier::Device)
        .flat_map(|s| s.inputs.iter().map(String::as_str))
        .filter(|t| on_device.contains(t))
        .collect();
    needed.iter().map(|t| analysis.tensor_bytes(t)).sum()
}
