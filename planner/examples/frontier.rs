//! Frontier size and quality per corpus model: how many distinct splits the grid finds, how many the pruned
//! table keeps, and the worst and median loss of the pruned table against an exact re-solve at random network
//! conditions (off the grid: device-side and edge→cloud goodput log-uniform over the grid's range, 0.1–1,000 Mbit/s, RTT × 0.25–4).
//!
//! ```sh
//! cargo run --release -p strata-planner --example frontier -- [CLUSTER.toml] [SAMPLES]
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use strata_core::{Privacy, Tier};
use strata_planner::cluster::Cluster;
use strata_planner::frontier::{self, Settings};

#[path = "support/corpus.rs"]
mod corpus;

/// A small deterministic generator (xorshift), so runs repeat.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cluster_path = args.first().cloned().unwrap_or_else(|| {
        root.join("examples/clusters/glasses-phone-cloud.toml")
            .display()
            .to_string()
    });
    let samples: usize = args.get(1).map_or(Ok(200), |s| s.parse())?;
    let cluster = Cluster::from_toml(&std::fs::read_to_string(&cluster_path)?)?;
    let tiers: BTreeSet<Tier> = cluster.tiers.keys().copied().collect();
    println!("cluster: {cluster_path}; {samples} random conditions per model and privacy");
    println!(
        "| model | nodes | privacy | candidates | kept | grid worst loss | random worst loss | random median loss | frontier time |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for corpus::CorpusModel {
        name,
        model,
        analysis,
    } in corpus::load(&root)?
    {
        for privacy in [Privacy::Open, Privacy::Features] {
            let started = Instant::now();
            let f = frontier::frontier(
                &model,
                &analysis,
                &cluster,
                &tiers,
                privacy,
                &Settings::default(),
            )?;
            let took = started.elapsed().as_secs_f64() * 1e3;
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let mut losses = Vec::new();
            for _ in 0..samples {
                let at = frontier::cluster_at(
                    &cluster,
                    rng.log_uniform(0.1, 1000.0),
                    rng.log_uniform(0.1, 1000.0),
                    rng.log_uniform(0.25, 4.0),
                );
                losses.extend(f.loss_at(&at).into_iter().map(|(_, _, l)| l));
            }
            losses.sort_by(f64::total_cmp);
            let worst = losses.last().copied().unwrap_or(0.0);
            let median = losses.get(losses.len() / 2).copied().unwrap_or(0.0);
            println!(
                "| {} | {} | {} | {} | {} | {:.2} % | {:.2} % | {:.3} % | {:.0} ms |",
                name,
                model.nodes.len(),
                privacy,
                f.candidates,
                f.plans.len(),
                f.worst_loss * 100.0,
                worst * 100.0,
                median * 100.0,
                took
            );
        }
    }
    Ok(())
}
