//! Backends (issue 13): tract against onnxruntime on the CPU, per corpus model, whole and as the two stages of a
//! cut in the middle. ORT runs with 1 and with 2 intra-op threads; tract runs single-threaded (this workspace
//! builds tract without its `multithread-mm` feature, so it has no thread setting). Every round runs each
//! backend once, in rotating order, so drift in the machine's speed hits them alike; the table gives medians
//! and tract / ORT ratios from the same run.
//!
//! `cargo bench -p strata-runtime --features ort --bench backends` (needs `python3 corpus/fetch.py` and the
//! onnxruntime wheel, `scripts/setup.sh`). `STRATA_BENCH_ROUNDS` sets the rounds per model (default 10).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use strata_core::Tier;
use strata_planner::analyse::{self, InputShape};
use strata_planner::model::Model;
use strata_planner::{plan, split};
use strata_runtime::profile::median;
use strata_runtime::{Backend, LoadedStage, OrtBackend, OrtConfig, TensorData, TractBackend, npy};
#[path = "../tests/support/mod.rs"]
mod support;

use support::{Entry, manifest, root};

/// One thing to time: ONNX bytes, the input shapes and the inputs.
struct Case {
    label: String,
    bytes: Vec<u8>,
    shapes: HashMap<String, Vec<usize>>,
    inputs: HashMap<String, TensorData>,
}

/// The whole model, then the stages of a single cut in the middle (fed the values tract computes).
fn cases(entry: &Entry) -> Vec<Case> {
    let dir = root().join("corpus/models");
    let bytes = std::fs::read(dir.join(&entry.file)).expect("read model");
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
    let mut out = vec![Case {
        label: format!("{} (whole)", entry.name),
        bytes: bytes.clone(),
        shapes: shapes.clone(),
        inputs: inputs.clone(),
    }];
    let model = Model::from_bytes(&bytes).expect("model");
    let given: Vec<InputShape> = entry
        .inputs
        .iter()
        .map(|i| InputShape {
            name: i.name.clone(),
            dims: i.shape.clone(),
        })
        .collect();
    let analysis = analyse::analyse(&model, &bytes, &given).expect("analysis");
    let n = model.nodes.len();
    let Some(mid) = (n / 2..n.saturating_sub(1)).find_map(|v| {
        model.nodes[v]
            .outputs
            .iter()
            .find(|t| model.consumers.contains_key(*t) && !analysis.is_constant(t))
            .cloned()
    }) else {
        return out;
    };
    let cut = vec![vec![mid]];
    let Ok(stage_of) = split::stage_assignment(&model, &analysis, &cut) else {
        return out;
    };
    let specs =
        plan::stages_from_assignment(&model, &analysis, &stage_of, &[Tier::Edge, Tier::Cloud])
            .expect("stages");
    let (stages, protos) =
        plan::build_stages(&model, &analysis, &specs, None, None).expect("stage models");
    let mut values = inputs;
    for (stage, proto) in stages.iter().zip(&protos) {
        let bytes = proto.encode_to_vec();
        let shapes: HashMap<String, Vec<usize>> = stage
            .inputs
            .iter()
            .filter_map(|n| shapes.get(n).map(|s| (n.clone(), s.clone())))
            .collect();
        let feed: HashMap<String, TensorData> = stage
            .inputs
            .iter()
            .map(|n| (n.clone(), values[n].clone()))
            .collect();
        let produced = TractBackend
            .load(&bytes, &shapes)
            .and_then(|s| s.run(&feed))
            .expect("stage runs");
        out.push(Case {
            label: format!("{} stage {}/{}", entry.name, stage.index + 1, stages.len()),
            bytes,
            shapes,
            inputs: feed,
        });
        values.extend(produced);
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rounds: usize = std::env::var("STRATA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let manifest: Vec<Entry> = manifest();
    let ort = |threads: usize| {
        OrtBackend::new(OrtConfig {
            intra_threads: threads,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let backends: Vec<(&str, Box<dyn Backend>)> = vec![
        ("tract", Box::new(TractBackend)),
        ("ort 1T", Box::new(ort(1))),
        ("ort 2T", Box::new(ort(2))),
    ];
    println!(
        "onnxruntime: {}; {rounds} rounds after 2 warm-ups, interleaved",
        ort(1).library_path().display()
    );
    println!();
    println!(
        "| model / stage | tract (1 thread) | ORT-CPU 1 thread | ORT-CPU 2 threads | tract / ORT 1T | tract / ORT 2T |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for entry in &manifest {
        for case in cases(entry) {
            let loaded: Vec<Box<dyn LoadedStage>> = backends
                .iter()
                .map(|(name, b)| {
                    b.load(&case.bytes, &case.shapes)
                        .unwrap_or_else(|e| panic!("{}: {name} loads: {e}", case.label))
                })
                .collect();
            for stage in &loaded {
                for _ in 0..2 {
                    stage.run(&case.inputs).expect("warm-up");
                }
            }
            let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); loaded.len()];
            for round in 0..rounds {
                for k in 0..loaded.len() {
                    let ix = (round + k) % loaded.len();
                    let t = Instant::now();
                    loaded[ix].run(&case.inputs).expect("runs");
                    samples[ix].push(ms(t.elapsed()));
                }
            }
            let m: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
            println!(
                "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}× | {:.2}× |",
                case.label,
                m[0],
                m[1],
                m[2],
                m[0] / m[1],
                m[0] / m[2]
            );
        }
    }
}
