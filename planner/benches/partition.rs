//! Benchmarks of the exact tier partitioner on random layered DAGs resembling CNNs with skip
//! connections (1–3 inputs per node, node costs 0.01–5 ms, tensors 1 kB–10 MB).

use std::hint::black_box;

use criterion::Criterion;
use strata_planner::partition::{
    Constraints, CostLayer, HopCost, Objective, Problem, TIER_COUNT, Tensor, solve,
};

/// xorshift64* — deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in [lo, hi).
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp()
    }
}

fn hop(fixed: f64, up_per_byte: f64, down_per_byte: f64) -> HopCost {
    HopCost {
        fixed,
        up_per_byte,
        down_per_byte,
    }
}

/// A CNN-like DAG of `n` nodes: a main path, residual skips of 2–8 nodes, an occasional second
/// skip, one image input, the last node (and rare side heads) as model outputs.
fn cnn_like(n: usize, seed: u64) -> Problem {
    let mut rng = Rng(seed | 1);
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut input_consumers = vec![0];
    for v in 1..n {
        consumers[v - 1].push(v);
        for probability in [0.35, 0.1] {
            if rng.unit() < probability {
                let back = 2 + (rng.next() % 7) as usize;
                if back <= v {
                    consumers[v - back].push(v);
                }
            }
        }
        if rng.unit() < 0.001 {
            input_consumers.push(v);
        }
    }
    let mut tensors = vec![Tensor {
        producer: None,
        consumers: input_consumers,
        is_model_output: false,
        bytes: rng.log_uniform(1.5e5, 6e5),
    }];
    for (v, mut c) in consumers.into_iter().enumerate() {
        c.sort_unstable();
        c.dedup();
        tensors.push(Tensor {
            producer: Some(v),
            consumers: c,
            is_model_output: v + 1 == n || rng.unit() < 0.002,
            bytes: rng.log_uniform(1e3, 1e7),
        });
    }
    let mut latency = Vec::with_capacity(n);
    let mut energy = Vec::with_capacity(n);
    for _ in 0..n {
        let device_ms = rng.log_uniform(0.01, 5.0);
        let edge_ms = device_ms / (2.0 + 3.0 * rng.unit());
        let cloud_ms = if rng.unit() < 0.01 {
            f64::INFINITY
        } else {
            device_ms / (8.0 + 12.0 * rng.unit())
        };
        latency.push([device_ms, edge_ms, cloud_ms]);
        // 2 W while computing on the device; a little idle power while waiting otherwise.
        energy.push([2.0 * device_ms, 0.05 * edge_ms, 0.05 * cloud_ms]);
    }
    let mut latency_hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
    latency_hop[0][1] = hop(2.0, 8e-6, 8e-6);
    latency_hop[1][2] = hop(15.0, 1e-6, 1e-6);
    latency_hop[0][2] = hop(17.0, 9e-6, 9e-6);
    let mut energy_hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
    energy_hop[0][1] = hop(1.0, 4e-6, 2e-6);
    energy_hop[0][2] = hop(1.0, 4e-6, 2e-6);
    Problem {
        node_count: n,
        tensors,
        param_bytes: (0..n).map(|_| rng.log_uniform(1e3, 1e7)).collect(),
        tier_present: [true; TIER_COUNT],
        latency: CostLayer {
            node_cost: latency,
            hop: latency_hop,
        },
        energy: CostLayer {
            node_cost: energy,
            hop: energy_hop,
        },
    }
}

fn bench_size(c: &mut Criterion, name: &str, n: usize) {
    let problem = cnn_like(n, 0x5eed + n as u64);
    let constraints = Constraints::unconstrained(Objective::Latency);
    c.bench_function(name, |b| {
        b.iter(|| solve(black_box(&problem), black_box(&constraints)))
    });
}

fn synthetic(c: &mut Criterion) {
    bench_size(c, "synthetic_1k", 1_000);
    bench_size(c, "synthetic_5k", 5_000);
    bench_size(c, "synthetic_20k", 20_000);
}

// What `criterion_group!`/`criterion_main!` expand to, written out so that no undocumented
// public function is generated (the workspace warns on missing docs).
fn main() {
    let mut criterion = Criterion::default().sample_size(10).configure_from_args();
    synthetic(&mut criterion);
    criterion.final_summary();
}
