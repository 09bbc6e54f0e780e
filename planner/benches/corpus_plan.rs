//! Planner time on the real-model corpus: cost-model construction plus the exact partition, per model, for the
//! glasses + phone + cloud cluster (features privacy, latency objective). Analysis (tract) is done once outside
//! the measurement. Needs the corpus: `python3 corpus/fetch.py`.

use std::path::Path;

use criterion::Criterion;
use strata_core::Privacy;
use strata_planner::cluster::Cluster;
use strata_planner::cost;
use strata_planner::partition::{self, Constraints, Objective, TIER_COUNT};

#[path = "../examples/support/corpus.rs"]
mod corpus;

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cluster_text =
        std::fs::read_to_string(root.join("examples/clusters/glasses-phone-cloud.toml"))
            .expect("cluster file");
    let cluster = Cluster::from_toml(&cluster_text).expect("cluster parses");
    let mut group = c.benchmark_group("corpus_plan");
    for corpus::CorpusModel {
        name,
        model,
        analysis,
    } in corpus::load(&root).expect("corpus")
    {
        let constraints = Constraints {
            objective: Objective::Latency,
            latency_budget_ms: None,
            memory_cap_bytes: [None; TIER_COUNT],
        };
        group.bench_function(format!("{name} ({} nodes)", model.nodes.len()), |b| {
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
