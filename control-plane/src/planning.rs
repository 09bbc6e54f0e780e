//! Plans one model for the tiers that have live agents: the frontier of plans a device chooses from per request
//! (see `strata_planner::frontier`): for every privacy combination a request can ask for and both objectives,
//! the splits that are best at the profiled conditions and under a grid of other network conditions, pruned to
//! a bounded table. Each plan is tagged with the privacy levels it satisfies, computed from the plan itself,
//! and carries what a device needs to re-cost it (stage times, transfers). Pure and blocking: run it on a
//! blocking thread.

use std::collections::{BTreeSet, HashSet};

use strata_core::Digest;
use strata_core::Privacy;
use strata_core::Tier;
use strata_core::recost::Conditions;
use strata_planner::analyse::{self, AnalyseError, Analysis, InputShape, InputShapeError};
use strata_planner::cluster::Cluster;
use strata_planner::frontier::{self, Frontier, FrontierPlan};
use strata_planner::model::{Model, ModelError};
use strata_planner::onnx::ModelProto;
use strata_planner::plan::{self, StageInfo};

use crate::records::{InputRecord, PlanRecord, PlansRecord, StageRecord};

/// A model's plans and the stage blobs they reference.
#[derive(Debug)]
pub struct PlannedSet {
    /// The plans (version and name filled in).
    pub record: PlansRecord,
    /// `(digest, bytes)` of every stage ONNX file the plans reference.
    pub blobs: Vec<(Digest, Vec<u8>)>,
}

/// Plans `bytes` (model `name`, `version`) for `base` restricted to `tiers`, with each tier's compute times
/// scaled by its `calibration` factor (see [`crate::calibration`]), keeping the plans that satisfy the model's
/// own `privacy`.
#[allow(clippy::too_many_arguments)]
pub fn plan_model(
    name: &str,
    version: u64,
    bytes: &[u8],
    input_shapes: &[String],
    privacy: Privacy,
    base: &Cluster,
    tiers: &BTreeSet<Tier>,
    settings: &frontier::Settings,
    calibration: [f64; 3],
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
        links: [None; 3],
        device_power: Default::default(),
        calibration,
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

    let cluster = crate::calibration::apply(base, calibration);
    let frontier = match frontier::frontier(&model, &analysis, &cluster, tiers, privacy, settings) {
        Ok(f) => f,
        Err(e) => {
            record.failed = Some(e.to_string());
            return PlannedSet { record, blobs };
        }
    };
    record.notes = frontier.notes.clone();
    record.links = frontier.links;
    record.device_power = frontier.power;
    let mut seen_blobs = HashSet::new();
    for fp in &frontier.plans {
        let Some((_, problem)) = &frontier.variants[fp.variant].1 else {
            continue;
        };
        let stages =
            match plan::placement_stages(&model, &analysis, problem, &fp.tier, &fp.memory_bytes) {
                Ok(s) => s,
                Err(e) => {
                    record
                        .notes
                        .push(format!("a plan could not be extracted: {e}"));
                    continue;
                }
            };
        let plan = to_record(
            &model,
            &analysis,
            &stages,
            fp,
            &frontier,
            &mut blobs,
            &mut seen_blobs,
        );
        if !plan.satisfies.contains(&privacy) {
            continue;
        }
        if !record.plans.iter().any(|p| p.id == plan.id) {
            record.plans.push(plan);
        }
    }
    if record.plans.is_empty() {
        // Each note once (a stage that cannot be extracted fails the same way in every plan using it).
        let mut notes: Vec<&str> = Vec::new();
        for note in &record.notes {
            if !notes.contains(&note.as_str()) {
                notes.push(note);
            }
        }
        record.failed = Some(format!("no plan fits the cluster: {}", notes.join("; ")));
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
    /// An input shape (given with the push, or declared by the model) with a zero dimension: every request
    /// would carry an empty tensor.
    #[error(
        "input \"{input}\" has shape {dims:?}, with a zero dimension: a model is served for non-empty inputs \
         (give every dimension as 1 or more, e.g. --input {input}=1,...)"
    )]
    ZeroDim {
        /// The input.
        input: String,
        /// Its shape.
        dims: Vec<usize>,
    },
}

/// The first shape with a zero dimension, as an error.
fn zero_dim(shapes: &[InputShape]) -> Result<(), CheckError> {
    match shapes.iter().find(|s| s.dims.contains(&0)) {
        Some(s) => Err(CheckError::ZeroDim {
            input: s.name.clone(),
            dims: s.dims.clone(),
        }),
        None => Ok(()),
    }
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
    zero_dim(&shapes)?;
    // Unsupported operators first: they are the news, whatever else is wrong.
    let unsupported = analyse::unsupported_ops(&model, bytes)?;
    if !unsupported.is_empty() {
        return Err(AnalyseError::Unsupported(unsupported).into());
    }
    let analysis = analyse::analyse(&model, bytes, &shapes)?;
    // A zero the model itself declares.
    zero_dim(&analysis.input_shapes)?;
    Ok((model, analysis))
}

fn to_record(
    model: &Model,
    analysis: &Analysis,
    (infos, protos): &(Vec<StageInfo>, Vec<ModelProto>),
    fp: &FrontierPlan,
    frontier: &Frontier,
    blobs: &mut Vec<(Digest, Vec<u8>)>,
    seen: &mut HashSet<Digest>,
) -> PlanRecord {
    use prost::Message;
    let mut stages = Vec::new();
    for (info, proto) in infos.iter().zip(protos) {
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
            flops: info.flops,
        });
    }
    let mut split = Vec::new();
    for s in &stages {
        split.extend_from_slice(s.tier.name().as_bytes());
        split.extend_from_slice(s.digest.as_str().as_bytes());
    }
    let id = Digest::of(&split).as_str()[..12].to_string();
    let predicted = fp
        .cost
        .predict(&Conditions::nominal(frontier.links), &frontier.power);
    PlanRecord {
        id,
        satisfies: satisfies(model, &stages),
        objectives: fp.objectives.clone(),
        latency_ms: predicted.latency_ms,
        device_energy_mj: predicted.energy_mj,
        device_bytes_sent: device_bytes_sent(model, analysis, &stages),
        stages,
        transfers: fp.cost.transfers.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use strata_planner::onnx::{self, proto};

    /// `x` [1, 64] → Relu → `a` → Sigmoid → `y`.
    fn two_step_model() -> Vec<u8> {
        let node = |op: &str, input: &str, output: &str| proto::NodeProto {
            op_type: Some(op.into()),
            name: Some(op.to_lowercase()),
            input: vec![input.into()],
            output: vec![output.into()],
            ..Default::default()
        };
        proto::ModelProto {
            ir_version: Some(8),
            opset_import: vec![proto::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(proto::GraphProto {
                name: Some("two_step".into()),
                node: vec![node("Relu", "x", "a"), node("Sigmoid", "a", "y")],
                input: vec![onnx::tensor_value_info("x", 1, &[1, 64])],
                output: vec![onnx::tensor_value_info("y", 1, &[1, 64])],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn an_input_shape_with_a_zero_dimension_is_refused() {
        let model = two_step_model();
        check_model(&model, &["x=1,64".to_string()]).expect("a real shape");
        // A given shape with a zero is refused where it is parsed, naming it.
        let e = check_model(&model, &["x=0,64".to_string()]).expect_err("a zero batch");
        assert!(
            e.to_string().contains("x=0,64") && e.to_string().contains("zero dimension"),
            "{e}"
        );
    }

    #[test]
    fn a_planning_failure_says_each_cause_once() {
        // Every tier's memory is below what one node needs (its 256-byte input and output).
        let cluster = Cluster::from_toml(
            "[tiers.device]\ngflops = 10\nmemory_mib = 0.0001\n\
             [tiers.edge]\ngflops = 100\nmemory_mib = 0.0001\n\
             [tiers.cloud]\ngflops = 1000\nmemory_mib = 0.0001\n\
             [[links]]\nfrom = \"device\"\nto = \"edge\"\nup_mbps = 40\nrtt_ms = 4\n\
             [[links]]\nfrom = \"edge\"\nto = \"cloud\"\nup_mbps = 13\nrtt_ms = 50\n",
        )
        .expect("cluster");
        let planned = plan_model(
            "m",
            1,
            &two_step_model(),
            &[],
            Privacy::Open,
            &cluster,
            &Tier::ALL.into_iter().collect(),
            &frontier::Settings::default(),
            crate::calibration::NONE,
        );
        let failed = planned.record.failed.expect("nothing fits");
        // Five privacy variants failed on the same node for the same reasons: one note says so.
        assert!(
            failed.starts_with(
                "no plan fits the cluster: no open, features, edge, edge+features, device plan: no feasible \
                 placement: node \"relu\" (Relu) can run on no tier: tier device memory cap"
            ),
            "{failed}"
        );
        for tier in ["device", "edge", "cloud"] {
            let cause = format!("tier {tier} memory cap");
            assert_eq!(failed.matches(&cause).count(), 1, "{cause}: {failed}");
        }
        assert!(!failed.contains("tier absent"), "{failed}");
        assert!(failed.len() < 700, "{} bytes: {failed}", failed.len());
    }
}
