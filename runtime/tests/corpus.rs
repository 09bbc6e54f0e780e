//! Split correctness on the real-model corpus: for every model, every example cluster, every privacy level and
//! both objectives (and an energy plan under a latency budget), plus several manual cut sets, the stages run in
//! order reproduce the whole model's outputs (|a − b| ≤ 1e-4·(1 + |b|)), with tract here and with onnxruntime
//! through `corpus/check_ort.py`. Plans never break privacy or monotonicity.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use prost::Message;
use strata_core::Privacy;
use strata_core::Tier;
use strata_planner::analyse::{self, Analysis, InputShape};
use strata_planner::cluster::Cluster;
use strata_planner::model::Model;
use strata_planner::partition::{Objective, PartitionError};
use strata_planner::plan::{self, PlanError, PlanFile, PlanOptions, PlannedModel, Timings};
use strata_planner::split;
use strata_runtime::{Backend, TensorData, TractBackend, npy};
mod support;

use support::{Entry, TOLERANCE, manifest, root};

fn clusters() -> Vec<(String, Cluster)> {
    let dir = root().join("examples/clusters");
    let mut out: Vec<(String, Cluster)> = std::fs::read_dir(&dir)
        .expect("examples/clusters")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read cluster");
            let c = Cluster::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (
                p.file_stem().expect("stem").to_string_lossy().into_owned(),
                c,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 3, "three example clusters");
    out.push((
        "offload (test only)".into(),
        Cluster::from_toml(OFFLOAD).expect("offload cluster"),
    ));
    out
}

/// A cluster that forces every model across all three tiers: a very slow device, an edge that is fast but holds
/// only a few nodes (so its memory cap binds and the constrained search runs), a fast cloud, fast links.
const OFFLOAD: &str = r#"
name = "offload"
[tiers.device]
gflops = 0.0001
memory_mib = 4096
active_w = 2.0
idle_w = 0.1
tx_nj_per_byte = 1.0
[tiers.edge]
gflops = 60.0
memory_mib = 0.05
[tiers.cloud]
gflops = 50.0
memory_mib = 65536
[[links]]
from = "device"
to = "edge"
up_mbps = 10000.0
rtt_ms = 0.1
[[links]]
from = "edge"
to = "cloud"
up_mbps = 10000.0
rtt_ms = 0.1
"#;

struct Loaded {
    entry: Entry,
    model: Model,
    analysis: Analysis,
    inputs: HashMap<String, TensorData>,
    shapes: HashMap<String, Vec<usize>>,
    reference: HashMap<String, TensorData>,
}

fn load(name: &str) -> Loaded {
    let entry = manifest()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} not in the manifest"));
    let dir = root().join("corpus/models");
    let bytes = std::fs::read(dir.join(&entry.file)).expect("read model");
    let model = Model::from_bytes(&bytes).expect("model loads");
    let given: Vec<InputShape> = entry
        .inputs
        .iter()
        .map(|i| InputShape {
            name: i.name.clone(),
            dims: i.shape.clone(),
        })
        .collect();
    let analysis = analyse::analyse(&model, &bytes, &given).expect("analysis");
    let inputs: HashMap<String, TensorData> = entry
        .inputs
        .iter()
        .map(|i| {
            let b = std::fs::read(dir.join(&i.npy)).expect("read input npy");
            (i.name.clone(), npy::decode(&b).expect("input npy decodes"))
        })
        .collect();
    let shapes: HashMap<String, Vec<usize>> = entry
        .inputs
        .iter()
        .map(|i| (i.name.clone(), i.shape.clone()))
        .collect();
    let whole = TractBackend
        .load(&bytes, &shapes)
        .expect("whole model loads");
    let reference = whole.run(&inputs).expect("whole model runs");
    for out in &model.outputs {
        assert!(reference.contains_key(out), "reference lacks output {out}");
    }
    Loaded {
        entry,
        model,
        analysis,
        inputs,
        shapes,
        reference,
    }
}

/// Runs the stages in order with tract and returns the worst relative error over the model outputs.
fn run_stages(l: &Loaded, planned: &PlannedModel) -> f64 {
    let mut values = l.inputs.clone();
    for (stage, proto) in planned.plan.stages.iter().zip(&planned.stage_models) {
        let bytes = proto.encode_to_vec();
        let shapes: HashMap<String, Vec<usize>> = stage
            .inputs
            .iter()
            .filter_map(|n| l.shapes.get(n).map(|s| (n.clone(), s.clone())))
            .collect();
        let loaded = TractBackend
            .load(&bytes, &shapes)
            .unwrap_or_else(|e| panic!("stage {} loads: {e}", stage.index));
        let feed: HashMap<String, TensorData> = stage
            .inputs
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    values
                        .get(n)
                        .unwrap_or_else(|| panic!("stage {} input {n} available", stage.index))
                        .clone(),
                )
            })
            .collect();
        let out = loaded
            .run(&feed)
            .unwrap_or_else(|e| panic!("stage {} runs: {e}", stage.index));
        for o in &stage.outputs {
            assert!(out.contains_key(o), "stage {} produced {o}", stage.index);
        }
        values.extend(out);
    }
    l.model
        .outputs
        .iter()
        .map(|o| {
            let got = values
                .get(o)
                .unwrap_or_else(|| panic!("output {o} produced by some stage"));
            got.max_relative_diff(&l.reference[o])
                .unwrap_or_else(|e| panic!("output {o}: {e}"))
        })
        .fold(0.0, f64::max)
}

/// Checks the structural promises of a plan: inputs come from the model or earlier stages, every output is
/// produced, tiers never go back, and privacy holds.
fn check_structure(l: &Loaded, p: &PlanFile, privacy: Option<Privacy>) {
    let mut available: BTreeSet<String> = l.model.inputs.iter().cloned().collect();
    let mut last_tier = Tier::Device;
    for s in &p.stages {
        assert!(s.tier >= last_tier, "tiers are monotone");
        last_tier = s.tier;
        for i in &s.inputs {
            assert!(
                available.contains(i),
                "stage {} input {i} is a model input or an earlier output",
                s.index
            );
            if s.tier != Tier::Device && privacy == Some(Privacy::Features) {
                assert!(
                    !l.model.inputs.contains(i),
                    "features privacy: raw input {i} crossed to stage {} on {}",
                    s.index,
                    s.tier
                );
            }
        }
        available.extend(s.outputs.iter().cloned());
        match privacy {
            Some(Privacy::Device) => assert_eq!(
                s.tier,
                Tier::Device,
                "device privacy keeps everything on the device"
            ),
            Some(Privacy::Edge) => assert_ne!(
                s.tier,
                Tier::Cloud,
                "edge privacy keeps everything off the cloud"
            ),
            _ => {}
        }
    }
    for o in &l.model.outputs {
        assert!(available.contains(o), "output {o} produced");
    }
    let nodes: usize = p.stages.iter().map(|s| s.nodes).sum();
    let folded = l.analysis.folded.iter().filter(|&&f| f).count();
    assert_eq!(
        nodes + folded,
        l.model.nodes.len(),
        "every node in exactly one stage, or folded into the constants of the stages that read it"
    );
}

fn write_plan_dir(dir: &Path, planned: &PlannedModel) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (s, proto) in planned.plan.stages.iter().zip(&planned.stage_models) {
        std::fs::write(dir.join(&s.file), proto.encode_to_vec()).expect("write stage");
    }
    std::fs::write(
        dir.join("plan.json"),
        serde_json::to_string_pretty(&planned.plan).expect("json"),
    )
    .expect("write plan");
}

fn signature(p: &PlanFile) -> String {
    p.stages
        .iter()
        .map(|s| format!("{}:{}", s.tier, s.node_names.join(",")))
        .collect::<Vec<_>>()
        .join("|")
}

/// A few manual cut sets: one cut in the middle, two cuts at a third and two thirds, a cut through every output
/// of a node at a quarter (tensors listed together as one boundary). Boundaries are activations (a folded
/// constant is no boundary).
fn manual_cuts(model: &Model, analysis: &Analysis) -> Vec<Vec<Vec<String>>> {
    let n = model.nodes.len();
    // The first activation at or after `frac` of the nodes and after node `after`, with its node.
    let at = |frac: f64, after: Option<usize>| -> Option<(usize, String)> {
        let start = ((n as f64 * frac) as usize).min(n.saturating_sub(2));
        let start = after.map_or(start, |a| start.max(a + 1));
        (start..n.saturating_sub(1)).find_map(|v| {
            model.nodes[v]
                .outputs
                .iter()
                .find(|t| model.consumers.contains_key(*t) && !analysis.is_constant(t))
                .map(|t| (v, t.clone()))
        })
    };
    let mut cuts = Vec::new();
    if let Some((_, mid)) = at(0.5, None) {
        cuts.push(vec![vec![mid]]);
    }
    if let Some((v, a)) = at(0.33, None)
        && let Some((_, b)) = at(0.66, Some(v))
    {
        cuts.push(vec![vec![a], vec![b]]);
    }
    if let Some((v, a)) = at(0.2, None)
        && let Some((_, b)) = at(0.25, Some(v))
    {
        cuts.push(vec![vec![a, b]]);
    }
    cuts
}

fn check_ort(model_path: &Path, inputs_dir: &Path, dirs: &[PathBuf]) {
    // STRATA_PYTHON when set, else the repository's venv (scripts/setup.sh), else the python3 on the PATH.
    let venv = root().join(".venv/bin/python3");
    let python = std::env::var_os("STRATA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(root().join("corpus/check_ort.py")).arg(model_path);
    for d in dirs {
        cmd.arg(d);
    }
    cmd.arg("--inputs").arg(inputs_dir);
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} ({e}): run scripts/setup.sh (it makes .venv), or set STRATA_PYTHON",
            python.display()
        )
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "{} lacks the corpus tools (corpus/requirements.txt): run scripts/setup.sh, which installs them \
         into .venv, or set STRATA_PYTHON to a Python that has them\n{stderr}",
        python.display()
    );
    assert!(
        out.status.success(),
        "onnxruntime cross-check failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout),
    );
}

fn check_model(name: &str) {
    let l = load(name);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut seen: HashMap<String, f64> = HashMap::new();
    let mut planned_count = 0;
    for (cluster_name, cluster) in clusters() {
        for privacy in Privacy::ALL {
            let mut cases = vec![(Objective::Latency, None), (Objective::Energy, None)];
            // An energy plan under a budget 20% above the latency optimum exercises the constrained search.
            let options = PlanOptions {
                privacy,
                objective: Objective::Latency,
                latency_budget_ms: None,
            };
            if let Ok(fastest) =
                plan::plan_analysed(name, &l.model, &l.analysis, &cluster, None, &options, 0.0)
                && let Some(p) = &fastest.plan.predicted
            {
                cases.push((Objective::Energy, Some(p.latency_ms * 1.2)));
            }
            for (objective, budget) in cases {
                let options = PlanOptions {
                    privacy,
                    objective,
                    latency_budget_ms: budget,
                };
                let what = format!(
                    "{name} on {cluster_name}, privacy {privacy}, {objective:?}, budget {budget:?}"
                );
                let planned = match plan::plan_analysed(
                    name,
                    &l.model,
                    &l.analysis,
                    &cluster,
                    None,
                    &options,
                    0.0,
                ) {
                    Ok(p) => p,
                    Err(PlanError::Partition {
                        reason: PartitionError::Infeasible(why),
                        ..
                    }) => {
                        // Only a device-only plan may be impossible on these clusters: the wearable holds 8 MiB.
                        assert_eq!(
                            privacy,
                            Privacy::Device,
                            "{what}: unexpectedly infeasible: {why}"
                        );
                        assert!(why.to_string().contains("memory"), "{what}: {why}");
                        continue;
                    }
                    Err(e) => panic!("{what}: {e}"),
                };
                planned_count += 1;
                check_structure(&l, &planned.plan, Some(privacy));
                if let (Some(b), Some(p)) = (budget, &planned.plan.predicted) {
                    assert!(
                        p.latency_ms <= b * (1.0 + 1e-9),
                        "{what}: budget broken ({} ms)",
                        p.latency_ms
                    );
                }
                let sig = signature(&planned.plan);
                if seen.contains_key(&sig) {
                    continue;
                }
                let err = run_stages(&l, &planned);
                assert!(
                    err <= TOLERANCE,
                    "{what}: stages differ from the whole model by {err:e}"
                );
                let dir = tmp.path().join(format!("plan{}", dirs.len()));
                write_plan_dir(&dir, &planned);
                dirs.push(dir);
                seen.insert(sig, err);
            }
        }
    }
    assert!(planned_count > 0, "{name}: no plan at all");
    let split_plans = dirs.iter().filter(|d| {
        let text = std::fs::read_to_string(d.join("plan.json")).unwrap_or_default();
        serde_json::from_str::<PlanFile>(&text).is_ok_and(|p| p.stages.len() >= 2)
    });
    assert!(
        split_plans.count() >= 1,
        "{name}: the planner never split this model; the offload cluster should force it"
    );

    for cut in manual_cuts(&l.model, &l.analysis) {
        let planned =
            manual_split(&l, name, &cut).unwrap_or_else(|e| panic!("{name} cut {cut:?}: {e}"));
        assert!(
            planned.plan.stages.len() >= 2,
            "{name} cut {cut:?} splits the model"
        );
        check_structure(&l, &planned.plan, None);
        let err = run_stages(&l, &planned);
        assert!(
            err <= TOLERANCE,
            "{name} cut {cut:?}: stages differ by {err:e}"
        );
        let dir = tmp.path().join(format!("split{}", dirs.len()));
        write_plan_dir(&dir, &planned);
        dirs.push(dir);
    }
    // Only the placements that actually split the model are interesting to cross-check; all of them go.
    let inputs_dir = root().join("corpus/models").join(format!("{name}.inputs"));
    check_ort(
        &root().join("corpus/models").join(&l.entry.file),
        &inputs_dir,
        &dirs,
    );
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_model(stringify!($name));
            }
        )*

        #[test]
        fn every_manifest_model_has_a_test() {
            let tested: BTreeSet<&str> = [$(stringify!($name)),*].into_iter().collect();
            let listed: BTreeSet<String> = manifest().into_iter().map(|e| e.name).collect();
            let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
            assert_eq!(listed, tested, "corpus models and tests must match");
        }
    };
}

corpus_tests!(
    densenet121,
    inception_v1,
    inception_v2,
    resnet50,
    shufflenet,
    squeezenet,
    ocr_det,
    ocr_rec,
    ocr_cls,
    multi_io,
    skip_long,
    shared_init,
    int_tensors,
    fanout,
    shape_chain,
);

/// Runs a manual split of a loaded corpus model and returns its plan and stage models.
fn manual_split(l: &Loaded, name: &str, cut: &[Vec<String>]) -> Result<PlannedModel, String> {
    let stage_of =
        split::stage_assignment(&l.model, &l.analysis, cut).map_err(|e| e.to_string())?;
    let tiers: Vec<Tier> = (0..=cut.len()).map(|s| Tier::ALL[s.min(2)]).collect();
    let specs = plan::stages_from_assignment(&l.model, &l.analysis, &stage_of, &tiers)
        .map_err(|e| e.to_string())?;
    let (stages, stage_models) =
        plan::build_stages(&l.model, &l.analysis, &specs, None, None).map_err(|e| e.to_string())?;
    Ok(PlannedModel {
        plan: PlanFile {
            model: name.into(),
            privacy: None,
            objective: "manual".into(),
            latency_budget_ms: None,
            cluster: None,
            input_shapes: l
                .shapes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            outputs: l.model.outputs.clone(),
            predicted: None,
            optimality: None,
            timings_ms: Timings::default(),
            stages,
        },
        stage_models,
    })
}

/// The shape computation (Shape → Gather → Unsqueeze → Concat → Cast) is a constant for concrete input
/// shapes: a split between the two heads that share it gives the later stage the shape as an initializer
/// instead of sending a tensor whose type tract folded away ("tensor \"target_shape\" crosses a boundary but
/// its data type is unknown" before), and onnxruntime agrees with the result.
#[test]
fn shape_chain_split_across_the_shape_computation_holds_the_shape_as_a_constant() {
    let l = load("shape_chain");
    for folded in ["target_shape", "target_shape_i64", "feat_shape"] {
        assert!(l.analysis.is_constant(folded), "{folded} is folded");
    }
    assert!(
        !l.analysis.is_constant("feat"),
        "activations are not constants"
    );
    let cut = vec![vec!["scores_a".to_string()]];
    let planned = manual_split(&l, "shape_chain", &cut).expect("the split across the chain works");
    let later = &planned.plan.stages[1];
    let mut inputs = later.inputs.clone();
    inputs.sort();
    assert_eq!(
        inputs,
        ["feat", "scores_a"],
        "only activations cross the boundary"
    );
    let graph = planned.stage_models[1].graph.as_ref().expect("a graph");
    assert!(
        graph.initializer.iter().any(|i| i.name() == "target_shape"),
        "the later stage holds head B's target shape as an initializer"
    );
    for (s, stage) in planned.stage_models.iter().enumerate() {
        let nodes = &stage.graph.as_ref().expect("a graph").node;
        assert!(
            nodes.iter().all(|n| n.op_type() != "Shape"),
            "stage {s} runs the folded shape computation"
        );
    }
    let err = run_stages(&l, &planned);
    assert!(err <= TOLERANCE, "stages differ by {err:e}");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("split");
    write_plan_dir(&dir, &planned);
    check_ort(
        &root().join("corpus/models").join(&l.entry.file),
        &root().join("corpus/models/shape_chain.inputs"),
        &[dir],
    );
}

/// Every single-tensor boundary of the shape-chain model either splits it into stages whose outputs equal
/// the whole model's, or is refused as a split (nothing before or after it); none fails for a tensor type
/// the analysis does not know.
#[test]
fn every_manual_split_of_the_shape_chain_model_works_or_is_refused_as_a_split() {
    let l = load("shape_chain");
    let mut split = 0;
    for node in &l.model.nodes {
        for t in &node.outputs {
            match manual_split(&l, "shape_chain", &[vec![t.clone()]]) {
                Ok(planned) => {
                    let err = run_stages(&l, &planned);
                    assert!(err <= TOLERANCE, "--at {t}: stages differ by {err:e}");
                    split += 1;
                }
                Err(e) => assert!(
                    e.contains("adds no node")
                        || e.contains("leaves no node")
                        || (l.analysis.is_constant(t) && e.contains("is a constant")),
                    "--at {t}: {e}"
                ),
            }
        }
    }
    // Every activation but the last output is a boundary.
    let runs = l.analysis.folded.iter().filter(|&&f| !f).count();
    assert_eq!(split, runs - 1, "boundaries that split the model");
}
