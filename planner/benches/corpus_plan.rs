//! Planner time on the real-model corpus: cost-model construction plus the exact partition, per model, for the
//! glasses + phone + cloud cluster (features privacy, latency objective). Analysis (tract) is done once outside
//! the measurement. Needs the corpus: `python3 corpus/fetch.py`.

use std::path::Path;

use criterion::Criterion;
use strata_core::Privacy;
use strata_planner::analyse::{self, InputShape};
use strata_planner::cluster::Cluster;
use strata_planner::cost;
use strata_planner::model::Model;
use strata_planner::partition::{self, Constraints, Objective, TIER_COUNT};

#[derive(serde::Deserialize)]
struct Entry {
    name: String,
    file: String,
    inputs: Vec<InputEntry>,
}

#[derive(serde::Deserialize)]
struct InputEntry {
    name: String,
    shape: Vec<usize>,
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("corpus/models/manifest.json"))
        .expect("corpus/models/manifest.json: run `python3 corpus/fetch.py` first");
    let entries: Vec<Entry> = serde_json::from_str(&manifest).expect("manifest parses");
    let cluster_text =
        std::fs::read_to_string(root.join("examples/clusters/glasses-phone-cloud.toml"))
            .expect("cluster file");
    let cluster = Cluster::from_toml(&cluster_text).expect("cluster parses");
    let mut group = c.benchmark_group("corpus_plan");
    for e in entries {
        let bytes = std::fs::read(root.join("corpus/models").join(&e.file)).expect("model file");
        let model = Model::from_bytes(&bytes).expect("model");
        let shapes: Vec<InputShape> = e
            .inputs
            .iter()
            .map(|i| InputShape {
                name: i.name.clone(),
                dims: i.shape.clone(),
            })
            .collect();
        let analysis = analyse::analyse(&model, &bytes, &shapes).expect("analysis");
        let constraints = Constraints {
            objective: Objective::Latency,
            latency_budget_ms: None,
            memory_cap_bytes: [None; TIER_COUNT],
        };
        group.bench_function(format!("{} ({} nodes)", e.name, model.nodes.len()), |b| {
            b.iter(|| {
                let problem =
                    cost::build_problem(&model, &analysis, &cluster, Privacy::Features, None)
                        .expect("problem");
                partition::solve(&problem, &constraints).expect("plan")
            })
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
