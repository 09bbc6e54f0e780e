//! Optimal monotone partitioning of a model DAG across three tiers: device (0), edge (1) and
//! cloud (2).
//!
//! # Cost model
//! For a placement let `U` be the set of tiers running at least one node. The *chain* is the
//! device followed by the tiers of `U \ {0}` in increasing order; consecutive chain elements are
//! *hops*. In each cost layer (latency in ms, device energy in mJ) a plan costs its node costs,
//! plus every hop's fixed cost, plus `bytes * up_per_byte` for every hop `(a, b)` a tensor
//! crosses upward (`producer tier <= a` and `b <= max consumer tier`, once per hop however many
//! consumers), plus `bytes * down_per_byte` for every hop below the producer of a model output.
//! Model inputs live on the device. Memory of a used tier is its nodes' parameter bytes plus the
//! peak live activation bytes of its stage (see [`evaluate`]).
//!
//! # Algorithm
//! * **Unconstrained** (no latency budget, no memory caps): for every non-empty subset `S` of the
//!   present tiers, one minimum cut (Ishikawa-style layered construction, see `cut.rs`) finds the
//!   best placement labelled from `S` when communication is charged along `S`'s chain. The best
//!   *true* cost over all subsets is the exact optimum over all monotone placements, provided the
//!   hop costs satisfy the triangle inequality (proof at `Engine::minimise`). Cuts are computed
//!   with the Boykov–Kolmogorov max-flow algorithm (`maxflow.rs`).
//! * **Constrained**: after quick exits (the unconstrained optimum is feasible; the latency budget
//!   is below the fastest plan; a node fits under no tier's memory cap), a Lagrangian relaxation
//!   penalises latency and per-tier parameter bytes (a linear lower bound of memory). Each
//!   relaxed problem is solved exactly by the same cuts; multipliers are searched by Polyak
//!   subgradient steps, escalation and bisection; every plan met on the way (and crossovers of
//!   plans across the feasibility boundary) is checked against the true constraints. The best
//!   dual value is a proven lower bound. Graphs of at most [`EXHAUSTIVE_SEARCH_MAX_NODES`] nodes
//!   whose gap stays open are settled by exact branch-and-bound.
//!
//! ```
//! use strata_planner::partition::*;
//!
//! // One node fed by a model input, whose output returns to the device.
//! let link = HopCost { fixed: 1.0, up_per_byte: 1e-6, down_per_byte: 1e-6 };
//! let mut hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
//! hop[0][1] = link;
//! hop[1][2] = link;
//! hop[0][2] = link;
//! let problem = Problem {
//!     node_count: 1,
//!     tensors: vec![
//!         Tensor { producer: None, consumers: vec![0], is_model_output: false, bytes: 1e3 },
//!         Tensor { producer: Some(0), consumers: vec![], is_model_output: true, bytes: 1e3 },
//!     ],
//!     param_bytes: vec![1e6],
//!     tier_present: [true, true, true],
//!     latency: CostLayer { node_cost: vec![[50.0, 10.0, 2.0]], hop },
//!     energy: CostLayer { node_cost: vec![[100.0, 1.0, 1.0]], hop },
//! };
//! let plan = solve(&problem, &Constraints::unconstrained(Objective::Latency))?;
//! assert_eq!(plan.tier, vec![2]); // 2 ms on the cloud, 1 ms hop, 0.002 ms of transfers
//! assert!(plan.exact && (plan.latency_ms - 3.002).abs() < 1e-9);
//! # Ok::<(), PartitionError>(())
//! ```

// Tier loops index several parallel per-tier arrays at once; ranges read better than zips.
#![allow(clippy::needless_range_loop)]

mod cut;
mod error;
mod eval;
mod maxflow;
mod search;

pub use error::PartitionError;

use error::Infeasibility;

use cut::{CutSolver, Layer};
use error::{fmt_bytes, fmt_num};
use eval::Evaluator;

/// Number of tiers: 0 device, 1 edge, 2 cloud.
pub const TIER_COUNT: usize = 3;
/// Human-readable tier names, indexed by tier.
pub const TIER_NAMES: [&str; TIER_COUNT] = ["device", "edge", "cloud"];
/// Largest graph [`brute_force`] accepts.
pub const BRUTE_FORCE_MAX_NODES: usize = 14;
/// Graphs up to this many nodes get an exhaustive (never cut short) fallback search in [`solve`],
/// so `solve` finds a feasible plan whenever one exists.
pub const EXHAUSTIVE_SEARCH_MAX_NODES: usize = 14;
/// Default step limit of the fallback search on larger graphs.
pub const DEFAULT_SEARCH_WORK_LIMIT: u64 = 2_000_000;
/// Default number of subgradient iterations of the multiplier search.
pub const DEFAULT_LAGRANGIAN_ITERATIONS: usize = 40;
/// Rounds of multiplier escalation when the subgradient search found no feasible plan.
const ESCALATION_ROUNDS: usize = 8;

/// Cost of one hop between two tiers in the chain (from < to).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HopCost {
    /// Cost paid once when the hop is in the chain (e.g. round-trip time, radio wake-up).
    pub fixed: f64,
    /// Cost per byte sent up the hop (away from the device).
    pub up_per_byte: f64,
    /// Cost per byte sent down the hop (towards the device).
    pub down_per_byte: f64,
}

/// One cost layer (the latency layer is in ms, the energy layer in mJ of *device* energy).
#[derive(Clone, Debug)]
pub struct CostLayer {
    /// `node_cost[v][t]`: cost of running node v on tier t. `f64::INFINITY` = forbidden.
    pub node_cost: Vec<[f64; TIER_COUNT]>,
    /// `hop[a][b]` for a < b: cost of the hop a -> b when the chain of used tiers has a and b
    /// adjacent.
    pub hop: [[HopCost; TIER_COUNT]; TIER_COUNT],
}

/// A tensor flowing between nodes.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Producing node; None = a model input, which lives on the device (tier 0).
    pub producer: Option<usize>,
    /// Consuming nodes (deduplicated).
    pub consumers: Vec<usize>,
    /// Model output: must be returned to the device.
    pub is_model_output: bool,
    /// Size of the tensor in bytes.
    pub bytes: f64,
}

/// A partitioning problem.
#[derive(Clone, Debug)]
pub struct Problem {
    /// Node count; nodes are 0..n in a topological order (every tensor's producer index < each
    /// consumer index).
    pub node_count: usize,
    /// All tensors of the graph.
    pub tensors: Vec<Tensor>,
    /// Parameter (weight) bytes held by each node.
    pub param_bytes: Vec<f64>,
    /// Tiers that exist in the cluster (device always true).
    pub tier_present: [bool; TIER_COUNT],
    /// Latency layer (ms).
    pub latency: CostLayer,
    /// Device energy layer (mJ).
    pub energy: CostLayer,
}

/// What to minimise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// End-to-end latency (ms).
    Latency,
    /// Device energy (mJ).
    Energy,
}

/// Constraints on a plan.
#[derive(Clone, Debug)]
pub struct Constraints {
    /// What to minimise.
    pub objective: Objective,
    /// Max predicted latency (ms), or None.
    pub latency_budget_ms: Option<f64>,
    /// Per-tier memory cap in bytes (parameters + peak live activations of the stage); None =
    /// unlimited.
    pub memory_cap_bytes: [Option<f64>; TIER_COUNT],
}

impl Constraints {
    /// No budget and no memory caps.
    pub fn unconstrained(objective: Objective) -> Constraints {
        Constraints {
            objective,
            latency_budget_ms: None,
            memory_cap_bytes: [None; TIER_COUNT],
        }
    }
}

/// A placement returned by [`solve`] or [`brute_force`].
#[derive(Clone, Debug)]
pub struct Placement {
    /// `tier[v]` in 0..3, monotone: for every tensor, `tier[producer] <= tier[consumer]`.
    pub tier: Vec<u8>,
    /// Predicted latency of the plan (ms).
    pub latency_ms: f64,
    /// Predicted device energy of the plan (mJ).
    pub device_energy_mj: f64,
    /// Objective value of this plan (latency_ms or device_energy_mj).
    pub objective_value: f64,
    /// A proven lower bound on the optimum of the constrained problem (== objective_value when
    /// exact).
    pub lower_bound: f64,
    /// True when the placement is proven optimal.
    pub exact: bool,
    /// Peak memory per tier of the evaluated plan (bytes); 0 for unused tiers.
    pub memory_bytes: [f64; TIER_COUNT],
}

/// The cost of one placement, as computed by [`evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Latency (ms).
    pub latency_ms: f64,
    /// Device energy (mJ).
    pub device_energy_mj: f64,
    /// Memory per tier (bytes): parameters plus peak live activations; 0 for unused tiers.
    pub memory_bytes: [f64; TIER_COUNT],
    /// Parameter bytes per tier.
    pub param_bytes: [f64; TIER_COUNT],
    /// Tiers running at least one node.
    pub used: [bool; TIER_COUNT],
    /// Every tensor's consumers run on a tier >= its producer's.
    pub monotone: bool,
    /// Every node runs on a present tier with finite cost in both layers.
    pub allowed: bool,
}

/// Evaluates a placement (`tier[v]` per node) under the module's cost model.
///
/// Memory of a used tier t: parameters of its nodes plus the peak, over its nodes in index
/// order, of the live activation bytes. A tensor is live on t from the stage start (if produced
/// elsewhere and consumed on t) or from its producer's step (if produced on t) until after its
/// last consumer on t; a tensor produced on t that leaves t (consumed on another tier, or a
/// model output) stays live until the end of the stage.
///
/// Malformed placements (wrong length, tier index >= 3) give infinite costs with
/// `monotone == allowed == false`.
pub fn evaluate(problem: &Problem, tier: &[u8]) -> Evaluation {
    Evaluator::default().eval(problem, tier)
}

/// Per-node and per-tensor data derived once from a validated problem.
#[derive(Debug)]
pub(crate) struct Prepared {
    tensors: Vec<PreparedTensor>,
    /// Distinct producer nodes of each node's inputs.
    preds: Vec<Vec<usize>>,
    /// Bytes of model outputs produced by each node.
    output_bytes: Vec<f64>,
    /// Bytes of model inputs whose only consumer is the node.
    single_input_bytes: Vec<f64>,
    /// Bytes of model inputs with at least one consumer.
    input_bytes_with_consumers: f64,
    /// Bytes of the distinct tensors each node reads or writes (live at its step).
    io_bytes: Vec<f64>,
    /// Node may run on the tier: present, finite cost in both layers.
    base_allowed: Vec<[bool; TIER_COUNT]>,
}

#[derive(Debug)]
struct PreparedTensor {
    producer: Option<usize>,
    consumers: Vec<usize>,
    bytes: f64,
}

impl Prepared {
    fn new(problem: &Problem) -> Prepared {
        let n = problem.node_count;
        let mut prep = Prepared {
            tensors: Vec::with_capacity(problem.tensors.len()),
            preds: vec![Vec::new(); n],
            output_bytes: vec![0.0; n],
            single_input_bytes: vec![0.0; n],
            input_bytes_with_consumers: 0.0,
            io_bytes: vec![0.0; n],
            base_allowed: vec![[false; TIER_COUNT]; n],
        };
        for tensor in &problem.tensors {
            let mut consumers = tensor.consumers.clone();
            consumers.sort_unstable();
            consumers.dedup();
            for &c in &consumers {
                prep.io_bytes[c] += tensor.bytes;
                if let Some(p) = tensor.producer {
                    prep.preds[c].push(p);
                }
            }
            match tensor.producer {
                Some(p) => {
                    prep.io_bytes[p] += tensor.bytes;
                    if tensor.is_model_output {
                        prep.output_bytes[p] += tensor.bytes;
                    }
                }
                None => {
                    if let [c] = consumers.as_slice() {
                        prep.single_input_bytes[*c] += tensor.bytes;
                    }
                    if !consumers.is_empty() {
                        prep.input_bytes_with_consumers += tensor.bytes;
                    }
                }
            }
            prep.tensors.push(PreparedTensor {
                producer: tensor.producer,
                consumers,
                bytes: tensor.bytes,
            });
        }
        for preds in &mut prep.preds {
            preds.sort_unstable();
            preds.dedup();
        }
        for v in 0..n {
            for t in 0..TIER_COUNT {
                prep.base_allowed[v][t] = problem.tier_present[t]
                    && problem.latency.node_cost[v][t].is_finite()
                    && problem.energy.node_cost[v][t].is_finite();
            }
        }
        prep
    }

    /// `base_allowed` further restricted by the per-node memory floor: a node needs its
    /// parameters plus every tensor it reads or writes on its tier at its step.
    fn memory_allowed(
        &self,
        problem: &Problem,
        caps: &[Option<f64>; TIER_COUNT],
    ) -> Vec<[bool; 3]> {
        let mut allowed = self.base_allowed.clone();
        for (v, row) in allowed.iter_mut().enumerate() {
            for (t, ok) in row.iter_mut().enumerate() {
                if let Some(cap) = caps[t]
                    && problem.param_bytes[v] + self.io_bytes[v] > cap
                {
                    *ok = false;
                }
            }
        }
        allowed
    }
}

fn validate_problem(problem: &Problem) -> Result<(), PartitionError> {
    let n = problem.node_count;
    let invalid = |msg: String| Err(PartitionError::InvalidProblem(msg));
    if !problem.tier_present[0] {
        return invalid("the device tier (0) must be present".into());
    }
    if problem.param_bytes.len() != n {
        return invalid(format!(
            "param_bytes has {} entries for {n} nodes",
            problem.param_bytes.len()
        ));
    }
    for (name, layer) in [("latency", &problem.latency), ("energy", &problem.energy)] {
        if layer.node_cost.len() != n {
            return invalid(format!(
                "{name} layer has {} node costs for {n} nodes",
                layer.node_cost.len()
            ));
        }
        for (v, costs) in layer.node_cost.iter().enumerate() {
            for (t, &c) in costs.iter().enumerate() {
                if c.is_nan() || c == f64::NEG_INFINITY {
                    return invalid(format!(
                        "{name} cost of node {v} on the {} tier is {c}",
                        TIER_NAMES[t]
                    ));
                }
            }
        }
        for a in 0..TIER_COUNT {
            for b in a + 1..TIER_COUNT {
                if !(problem.tier_present[a] && problem.tier_present[b]) {
                    continue;
                }
                let h = layer.hop[a][b];
                for (component, x) in [
                    ("fixed", h.fixed),
                    ("up_per_byte", h.up_per_byte),
                    ("down_per_byte", h.down_per_byte),
                ] {
                    if !(x.is_finite() && x >= 0.0) {
                        return invalid(format!(
                            "{name} hop {}->{} {component} cost is {x}; it must be finite and \
                             non-negative",
                            TIER_NAMES[a], TIER_NAMES[b]
                        ));
                    }
                }
            }
        }
    }
    for (v, &p) in problem.param_bytes.iter().enumerate() {
        if !(p.is_finite() && p >= 0.0) {
            return invalid(format!("node {v} has {p} parameter bytes"));
        }
    }
    for (i, tensor) in problem.tensors.iter().enumerate() {
        if !(tensor.bytes.is_finite() && tensor.bytes >= 0.0) {
            return invalid(format!("tensor {i} has {} bytes", tensor.bytes));
        }
        if let Some(p) = tensor.producer
            && p >= n
        {
            return invalid(format!("tensor {i} is produced by node {p} of {n}"));
        }
        for &c in &tensor.consumers {
            if c >= n {
                return invalid(format!("tensor {i} is consumed by node {c} of {n}"));
            }
            if tensor.producer.is_some_and(|p| c <= p) {
                return invalid(format!(
                    "tensor {i} flows from node {} to node {c}: nodes must be in topological \
                     index order",
                    tensor.producer.unwrap_or(0)
                ));
            }
        }
    }
    Ok(())
}

/// The exact solver needs `hop[0][2] <= hop[0][1] + hop[1][2]` componentwise in both layers.
fn check_triangle(problem: &Problem) -> Result<(), PartitionError> {
    if !problem.tier_present.iter().all(|&p| p) {
        return Ok(());
    }
    for (layer, cost) in [("latency", &problem.latency), ("energy", &problem.energy)] {
        let (direct, first, second) = (cost.hop[0][2], cost.hop[0][1], cost.hop[1][2]);
        for (component, d, a, b) in [
            ("fixed", direct.fixed, first.fixed, second.fixed),
            (
                "up_per_byte",
                direct.up_per_byte,
                first.up_per_byte,
                second.up_per_byte,
            ),
            (
                "down_per_byte",
                direct.down_per_byte,
                first.down_per_byte,
                second.down_per_byte,
            ),
        ] {
            if d > (a + b) * (1.0 + 1e-12) {
                return Err(PartitionError::TriangleInequality {
                    layer,
                    component,
                    direct: d,
                    device_edge: a,
                    edge_cloud: b,
                });
            }
        }
    }
    Ok(())
}

fn validate_constraints(constraints: &Constraints) -> Result<(), PartitionError> {
    if let Some(b) = constraints.latency_budget_ms
        && b.is_nan()
    {
        return Err(PartitionError::InvalidConstraints(
            "the latency budget is NaN".into(),
        ));
    }
    for (t, cap) in constraints.memory_cap_bytes.iter().enumerate() {
        if let Some(cap) = *cap
            && (cap.is_nan() || cap < 0.0)
        {
            return Err(PartitionError::InvalidConstraints(format!(
                "the {} memory cap is {cap} bytes; it must be a non-negative number",
                TIER_NAMES[t]
            )));
        }
    }
    Ok(())
}

/// Linear weights of a combined cost: `latency * L + energy * E + sum_t param_per_byte[t] *
/// (parameter bytes on t)`.
#[derive(Clone, Copy, Debug)]
struct Weights {
    latency: f64,
    energy: f64,
    param_per_byte: [f64; TIER_COUNT],
}

impl Weights {
    fn of(objective: Objective) -> Weights {
        match objective {
            Objective::Latency => Weights {
                latency: 1.0,
                energy: 0.0,
                param_per_byte: [0.0; TIER_COUNT],
            },
            Objective::Energy => Weights {
                latency: 0.0,
                energy: 1.0,
                param_per_byte: [0.0; TIER_COUNT],
            },
        }
    }

    fn value(&self, ev: &Evaluation) -> f64 {
        let mut v = 0.0;
        if self.latency != 0.0 {
            v += self.latency * ev.latency_ms;
        }
        if self.energy != 0.0 {
            v += self.energy * ev.device_energy_mj;
        }
        for t in 0..TIER_COUNT {
            if self.param_per_byte[t] != 0.0 {
                v += self.param_per_byte[t] * ev.param_bytes[t];
            }
        }
        v
    }

    /// The combined layer; disallowed (node, tier) pairs cost infinity.
    fn layer(&self, problem: &Problem, allowed: &[[bool; TIER_COUNT]]) -> Layer {
        let node_cost = allowed
            .iter()
            .enumerate()
            .map(|(v, ok)| {
                let mut c = [f64::INFINITY; TIER_COUNT];
                for t in 0..TIER_COUNT {
                    if ok[t] {
                        c[t] = self.latency * problem.latency.node_cost[v][t]
                            + self.energy * problem.energy.node_cost[v][t]
                            + self.param_per_byte[t] * problem.param_bytes[v];
                    }
                }
                c
            })
            .collect();
        let mut hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
        for a in 0..TIER_COUNT {
            for b in a + 1..TIER_COUNT {
                if problem.tier_present[a] && problem.tier_present[b] {
                    let (l, e) = (problem.latency.hop[a][b], problem.energy.hop[a][b]);
                    hop[a][b] = HopCost {
                        fixed: self.latency * l.fixed + self.energy * e.fixed,
                        up_per_byte: self.latency * l.up_per_byte + self.energy * e.up_per_byte,
                        down_per_byte: self.latency * l.down_per_byte
                            + self.energy * e.down_per_byte,
                    };
                }
            }
        }
        Layer { node_cost, hop }
    }
}

/// A plan with its evaluation.
#[derive(Clone, Debug)]
struct Candidate {
    tier: Vec<u8>,
    eval: Evaluation,
}

/// Result of minimising a combined cost over all placements.
struct SubsetRun {
    /// Minimum combined (true) cost and the plan achieving it.
    best_value: f64,
    best: Candidate,
    /// Every subset's optimal plan (candidates for the constrained problem).
    all: Vec<Candidate>,
}

struct Engine<'a> {
    problem: &'a Problem,
    prep: Prepared,
    cuts: CutSolver,
    evaluator: Evaluator,
}

impl Engine<'_> {
    /// Minimises `weights` exactly over monotone placements restricted to `allowed`.
    ///
    /// Why the minimum over subsets is exact. Let `x*` be optimal with used tiers `U`; the cut
    /// for `S = U` charges `x*` exactly its true cost, so `min_S cut_S <= OPT`. Conversely, the
    /// cut for `S` returns a plan `x_S` labelled from `S` that may leave some tier of `S` empty.
    /// Its true chain `C_U` is then a subsequence of `S`'s chain `C_S`; both contain the device
    /// and every tier `x_S` uses, hence every tensor's producer and max-consumer tiers. Between
    /// two tiers of `C_U`, `C_S` has either the same hop or `0 -> 1 -> 2` in place of `0 -> 2`,
    /// which costs at least as much (fixed, up and down components) by the triangle inequality;
    /// above the last used tier `C_S` may add hops, whose fixed costs are non-negative. So
    /// `true(x_S) <= cut_S(x_S) = min cut_S`, and
    /// `OPT <= min_S true(x_S) <= min_S cut_S <= OPT`. With `prune`, a subset is skipped when a
    /// lower bound of its cut value is no better than the best true cost found so far; if that
    /// skips `S = U`, the best so far already equals `OPT` (bound of `U` <= `OPT`).
    fn minimise(
        &mut self,
        weights: &Weights,
        allowed: &[[bool; TIER_COUNT]],
        prune: bool,
    ) -> Option<SubsetRun> {
        let layer = weights.layer(self.problem, allowed);
        let present_mask = (0..TIER_COUNT)
            .filter(|&t| self.problem.tier_present[t])
            .fold(0u8, |m, t| m | (1 << t));
        let mut subsets: Vec<(f64, u8)> = (1..8u8)
            .filter(|&m| m & present_mask == m)
            .map(|m| (cut::subset_lower_bound(&self.prep, &layer, m), m))
            .filter(|(lb, _)| !lb.is_nan() && *lb < f64::INFINITY)
            .collect();
        subsets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut run: Option<SubsetRun> = None;
        for (lb, mask) in subsets {
            if prune && run.as_ref().is_some_and(|r| lb >= r.best_value) {
                continue;
            }
            let Some(tier) = self.cuts.solve_subset(&self.prep, &layer, mask) else {
                continue;
            };
            let eval = self.evaluator.eval(self.problem, &tier);
            let value = weights.value(&eval);
            let cand = Candidate { tier, eval };
            match &mut run {
                None => {
                    run = Some(SubsetRun {
                        best_value: value,
                        best: cand.clone(),
                        all: vec![cand],
                    });
                }
                Some(r) => {
                    if value < r.best_value {
                        r.best_value = value;
                        r.best = cand.clone();
                    }
                    r.all.push(cand);
                }
            }
        }
        run
    }
}

/// Number of Lagrange multipliers: the latency budget, then one memory cap per tier.
const MULTIPLIERS: usize = 1 + TIER_COUNT;
/// Bisection steps between infeasible and feasible multipliers.
const BISECTION_STEPS: usize = 16;

/// Keeps the best plan of `all` that meets the constraints.
fn consider(incumbent: &mut Option<Candidate>, all: &[Candidate], constraints: &Constraints) {
    let objective = constraints.objective;
    for c in all {
        if c.eval.meets(constraints)
            && incumbent
                .as_ref()
                .is_none_or(|i| c.eval.objective(objective) < i.eval.objective(objective))
        {
            *incumbent = Some(c.clone());
        }
    }
}

/// Scaling of the relaxed constraints: each is divided by its right-hand side, so multipliers
/// are in objective units per relative violation.
struct Multipliers {
    base: Weights,
    budget_ms: Option<f64>,
    caps: [Option<f64>; TIER_COUNT],
    latency_scale: f64,
    cap_scale: [f64; TIER_COUNT],
    active: [bool; MULTIPLIERS],
}

impl Multipliers {
    fn new(problem: &Problem, constraints: &Constraints, base: Weights) -> Multipliers {
        let budget_ms = constraints.latency_budget_ms;
        let mut m = Multipliers {
            base,
            budget_ms,
            caps: constraints.memory_cap_bytes,
            latency_scale: budget_ms.map_or(1.0, |b| b.abs().max(1e-9)),
            cap_scale: [1.0; TIER_COUNT],
            active: [false; MULTIPLIERS],
        };
        m.active[0] = budget_ms.is_some();
        for t in 0..TIER_COUNT {
            if let Some(cap) = m.caps[t]
                && problem.tier_present[t]
            {
                m.active[1 + t] = true;
                m.cap_scale[t] = cap.abs().max(1.0);
            }
        }
        m
    }

    /// The combined weights `objective + penalties` for multipliers `nu`.
    fn weights(&self, nu: &[f64; MULTIPLIERS]) -> Weights {
        let mut w = self.base;
        w.latency += nu[0] / self.latency_scale;
        for t in 0..TIER_COUNT {
            w.param_per_byte[t] = nu[1 + t] / self.cap_scale[t];
        }
        w
    }

    /// `sum_i nu_i * rhs_i` (scaled right-hand sides).
    fn rhs(&self, nu: &[f64; MULTIPLIERS]) -> f64 {
        let mut total = 0.0;
        if let Some(b) = self.budget_ms {
            total += nu[0] * b / self.latency_scale;
        }
        for t in 0..TIER_COUNT {
            if let Some(cap) = self.caps[t] {
                total += nu[1 + t] * cap / self.cap_scale[t];
            }
        }
        total
    }

    /// Scaled true violations of a plan (positive = violated; 0 for inactive constraints).
    fn violation(&self, ev: &Evaluation) -> [f64; MULTIPLIERS] {
        let mut g = [0.0; MULTIPLIERS];
        if let Some(b) = self.budget_ms {
            g[0] = (ev.latency_ms - b) / self.latency_scale;
        }
        for t in 0..TIER_COUNT {
            if self.active[1 + t]
                && let Some(cap) = self.caps[t]
            {
                g[1 + t] = (ev.memory_bytes[t] - cap) / self.cap_scale[t];
            }
        }
        g
    }
}

/// Best feasible plan and best dual bound of the multiplier search.
struct LagrangeSearch {
    lower_bound: f64,
    incumbent: Option<Candidate>,
}

impl LagrangeSearch {
    fn gap_closed(&self, objective: Objective) -> bool {
        self.incumbent.as_ref().is_some_and(|c| {
            let v = c.eval.objective(objective);
            v - self.lower_bound <= 1e-9 * (1.0 + v.abs())
        })
    }
}

/// One evaluation of the dual function.
struct Probe {
    dual: f64,
    improved: bool,
    argmin_feasible: bool,
    violation: [f64; MULTIPLIERS],
    argmin: Vec<u8>,
}

impl Engine<'_> {
    /// Evaluates the dual at `nu`, updating the bound and the incumbent.
    fn probe(
        &mut self,
        m: &Multipliers,
        nu: &[f64; MULTIPLIERS],
        allowed: &[[bool; TIER_COUNT]],
        constraints: &Constraints,
        search: &mut LagrangeSearch,
    ) -> Option<Probe> {
        let run = self.minimise(&m.weights(nu), allowed, true)?;
        consider(&mut search.incumbent, &run.all, constraints);
        let dual = run.best_value - m.rhs(nu);
        let improved = dual > search.lower_bound + 1e-12 * (1.0 + search.lower_bound.abs());
        if dual > search.lower_bound {
            search.lower_bound = dual;
        }
        Some(Probe {
            dual,
            improved,
            argmin_feasible: run.best.eval.meets(constraints),
            violation: m.violation(&run.best.eval),
            argmin: run.best.tier,
        })
    }

    /// Primal heuristic: plans made of a prefix (in index order) of one plan and the suffix of
    /// the other, bisecting on the split point for the boundary between feasible and
    /// infeasible mixes. Lagrangian minimisers jump across the feasibility boundary in large
    /// steps (many nodes change tier at one multiplier value); mixing the plans on either side
    /// of the jump recovers the plans in between. Every mix is checked with the true cost model.
    fn crossover(
        &mut self,
        a: &[u8],
        b: &[u8],
        constraints: &Constraints,
        incumbent: &mut Option<Candidate>,
    ) {
        let n = a.len();
        if a == b || b.len() != n {
            return;
        }
        let mut plan = vec![0u8; n];
        for (first, second) in [(a, b), (b, a)] {
            // mix(k) = first[..k] ++ second[k..]: mix(0) = second, mix(n) = first.
            let mut feasible_at = |k: usize, this: &mut Self, incumbent: &mut Option<Candidate>| {
                plan[..k].copy_from_slice(&first[..k]);
                plan[k..].copy_from_slice(&second[k..]);
                let eval = this.evaluator.eval(this.problem, &plan);
                let ok = eval.meets(constraints);
                if ok {
                    consider(
                        incumbent,
                        &[Candidate {
                            tier: plan.clone(),
                            eval,
                        }],
                        constraints,
                    );
                }
                ok
            };
            let low_feasible = feasible_at(0, self, incumbent);
            if low_feasible == feasible_at(n, self, incumbent) {
                continue;
            }
            let (mut lo, mut hi) = (0, n);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if feasible_at(mid, self, incumbent) == low_feasible {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
        }
    }
}

fn placement(cand: Candidate, objective: Objective, lower_bound: f64) -> Placement {
    let value = cand.eval.objective(objective);
    let lower_bound = lower_bound.min(value);
    Placement {
        exact: value - lower_bound <= 1e-9 * (1.0 + value.abs()),
        tier: cand.tier,
        latency_ms: cand.eval.latency_ms,
        device_energy_mj: cand.eval.device_energy_mj,
        objective_value: value,
        lower_bound,
        memory_bytes: cand.eval.memory_bytes,
    }
}

/// Why node `v` cannot run on tier `t` (empty when it can).
fn tier_refusal(
    problem: &Problem,
    prep: &Prepared,
    caps: &[Option<f64>; TIER_COUNT],
    v: usize,
    t: usize,
) -> Option<String> {
    let name = TIER_NAMES[t];
    if !problem.tier_present[t] {
        return Some(format!("{name}: tier absent"));
    }
    if !problem.latency.node_cost[v][t].is_finite() {
        return Some(format!("{name}: forbidden (infinite latency cost)"));
    }
    if !problem.energy.node_cost[v][t].is_finite() {
        return Some(format!("{name}: forbidden (infinite energy cost)"));
    }
    if let Some(cap) = caps[t] {
        let need = problem.param_bytes[v] + prep.io_bytes[v];
        if need > cap {
            return Some(format!(
                "tier {name} memory cap {} is below the smallest possible stage: node {v} alone \
                 needs {} ({} of parameters + {} of tensors it reads and writes)",
                fmt_bytes(cap),
                fmt_bytes(need),
                fmt_bytes(problem.param_bytes[v]),
                fmt_bytes(prep.io_bytes[v])
            ));
        }
    }
    None
}

/// Checks that some monotone placement exists within `allowed`; explains why not otherwise.
fn check_structure(
    problem: &Problem,
    prep: &Prepared,
    allowed: &[[bool; TIER_COUNT]],
    caps: &[Option<f64>; TIER_COUNT],
) -> Result<(), Infeasibility> {
    // lowest[v]: the lowest tier v can take in any monotone placement (greedy is exact).
    let mut lowest = vec![0usize; problem.node_count];
    for v in 0..problem.node_count {
        let (need, producer) = prep.preds[v]
            .iter()
            .map(|&p| (lowest[p], p))
            .max()
            .unwrap_or((0, v));
        if let Some(t) = (need..TIER_COUNT).find(|&t| allowed[v][t]) {
            lowest[v] = t;
            continue;
        }
        let reasons = |from: usize| {
            (from..TIER_COUNT)
                .filter_map(|t| tier_refusal(problem, prep, caps, v, t))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if !allowed[v].iter().any(|&ok| ok) {
            return Err(Infeasibility::NodeHasNoTier {
                node: v,
                detail: reasons(0),
            });
        }
        return Err(Infeasibility::MonotoneConflict {
            producer,
            consumer: v,
            producer_min_tier: TIER_NAMES[need],
            detail: reasons(need),
        });
    }
    Ok(())
}

fn describe_constraints(problem: &Problem, constraints: &Constraints) -> String {
    let mut parts = Vec::new();
    if let Some(b) = constraints.latency_budget_ms {
        parts.push(format!("the latency budget of {} ms", fmt_num(b)));
    }
    let caps: Vec<String> = (0..TIER_COUNT)
        .filter(|&t| problem.tier_present[t])
        .filter_map(|t| {
            constraints.memory_cap_bytes[t].map(|c| format!("{} {}", TIER_NAMES[t], fmt_bytes(c)))
        })
        .collect();
    if !caps.is_empty() {
        parts.push(format!("the memory caps ({})", caps.join(", ")));
    }
    if parts.is_empty() {
        "the placement rules".into()
    } else {
        parts.join(" and ")
    }
}

/// Tuning knobs of [`solve_with`]; [`solve`] uses the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveOptions {
    /// Graphs of at most this many nodes get an exhaustive branch-and-bound whenever the
    /// Lagrangian search does not prove optimality.
    pub exhaustive_search_max_nodes: usize,
    /// Step limit of the branch-and-bound on larger graphs, run only when the Lagrangian search
    /// found no feasible plan (0 disables it).
    pub search_work_limit: u64,
    /// Subgradient iterations of the multiplier search.
    pub lagrangian_iterations: usize,
}

impl Default for SolveOptions {
    fn default() -> SolveOptions {
        SolveOptions {
            exhaustive_search_max_nodes: EXHAUSTIVE_SEARCH_MAX_NODES,
            search_work_limit: DEFAULT_SEARCH_WORK_LIMIT,
            lagrangian_iterations: DEFAULT_LAGRANGIAN_ITERATIONS,
        }
    }
}

/// Finds the plan minimising the objective subject to the constraints.
///
/// Without latency budget and memory caps the result is the exact optimum over all monotone
/// placements (min-cut per tier subset). With constraints it runs a Lagrangian multiplier search
/// (each subproblem solved exactly by the same cuts), keeps the best plan meeting the true
/// constraints, and reports the best dual value as `lower_bound`; when that does not prove
/// optimality, graphs of up to [`EXHAUSTIVE_SEARCH_MAX_NODES`] nodes are settled by exact
/// branch-and-bound, so a feasible plan is returned whenever one exists.
///
/// Requires non-negative hop costs satisfying `hop[0][2] <= hop[0][1] + hop[1][2]`
/// componentwise in both layers (when all tiers are present).
pub fn solve(problem: &Problem, constraints: &Constraints) -> Result<Placement, PartitionError> {
    solve_with(problem, constraints, &SolveOptions::default())
}

/// [`solve`] with explicit [`SolveOptions`].
pub fn solve_with(
    problem: &Problem,
    constraints: &Constraints,
    options: &SolveOptions,
) -> Result<Placement, PartitionError> {
    validate_problem(problem)?;
    check_triangle(problem)?;
    validate_constraints(constraints)?;
    let mut engine = Engine {
        problem,
        prep: Prepared::new(problem),
        cuts: CutSolver::default(),
        evaluator: Evaluator::default(),
    };
    engine.solve(constraints, options)
}

impl Engine<'_> {
    fn solve(
        &mut self,
        constraints: &Constraints,
        options: &SolveOptions,
    ) -> Result<Placement, PartitionError> {
        let problem = self.problem;
        let objective = constraints.objective;
        let no_caps = [None; TIER_COUNT];
        let caps = constraints.memory_cap_bytes;
        check_structure(problem, &self.prep, &self.prep.base_allowed, &no_caps)
            .map_err(PartitionError::from)?;
        let allowed = self.prep.memory_allowed(problem, &caps);
        check_structure(problem, &self.prep, &allowed, &caps).map_err(PartitionError::from)?;
        if problem.node_count == 0 {
            let eval = self.evaluator.eval(problem, &[]);
            if eval.meets(constraints) {
                return Ok(placement(
                    Candidate { tier: vec![], eval },
                    objective,
                    f64::INFINITY,
                ));
            }
            return Err(PartitionError::from(Infeasibility::LatencyBudget {
                budget_ms: constraints.latency_budget_ms.unwrap_or(0.0),
                fastest_ms: eval.latency_ms,
                scope: "",
            }));
        }
        let unreachable = || {
            PartitionError::from(Infeasibility::Combined {
                constraints: describe_constraints(problem, constraints),
                detail: "no finite-cost monotone placement exists".into(),
            })
        };

        // 1. The relaxation without budget and caps (over memory-allowed tiers) is exact when
        //    its optimum happens to meet the constraints, and a lower bound otherwise.
        let base_weights = Weights::of(objective);
        let base = self
            .minimise(&base_weights, &allowed, true)
            .ok_or_else(unreachable)?;
        if base.best.eval.meets(constraints) {
            let lb = base.best_value;
            return Ok(placement(base.best, objective, lb));
        }
        let mut incumbent: Option<Candidate> = None;
        consider(&mut incumbent, &base.all, constraints);

        // 2. The latency budget alone: compare with the fastest plan.
        if let Some(budget) = constraints.latency_budget_ms {
            let fastest = self
                .minimise(&Weights::of(Objective::Latency), &allowed, true)
                .ok_or_else(unreachable)?;
            let fastest_ms = fastest.best.eval.latency_ms;
            if fastest_ms > budget * (1.0 + 1e-9) + 1e-12 {
                let restricted = allowed != self.prep.base_allowed;
                return Err(PartitionError::from(Infeasibility::LatencyBudget {
                    budget_ms: budget,
                    fastest_ms,
                    scope: if restricted {
                        " in which every node fits its tier's memory cap"
                    } else {
                        ""
                    },
                }));
            }
            consider(&mut incumbent, &fastest.all, constraints);
        }

        // 3. Lagrangian multiplier search.
        //
        // For multipliers nu >= 0 the dual value
        //   D(nu) = min_x [obj(x) + nu_0 (lat(x) - B)/sB + sum_t nu_t (params_t(x) - cap_t)/s_t]
        // is a lower bound on the constrained optimum: every feasible x has lat(x) <= B and
        // params_t(x) <= memory_t(x) <= cap_t, so its penalty terms are <= 0 and D(nu) <= obj(x).
        // The inner minimum is computed exactly by `minimise` (the combined layer is a
        // non-negative combination of layers satisfying the triangle inequality, and parameter
        // bytes are unary), over the memory-allowed tiers, which contain every feasible plan.
        // Any nu gives a valid bound, so the search may steer with the *true* memory violation.
        let m = Multipliers::new(problem, constraints, base_weights);
        let span = base.best_value.abs().max(1e-9);
        let mut search = LagrangeSearch {
            lower_bound: base.best_value,
            incumbent,
        };
        let mut nu = [0.0; MULTIPLIERS];
        let mut nu_infeasible = nu;
        let mut nu_feasible = None;
        let mut plan_infeasible = base.best.tier.clone();
        let mut plan_feasible: Option<Vec<u8>> = None;
        let mut violation = m.violation(&base.best.eval);
        let mut theta = 1.0;
        let mut stall = 0;
        for _ in 0..options.lagrangian_iterations {
            if search.gap_closed(objective) || theta < 1e-3 {
                break;
            }
            let Some(probe) = self.probe(&m, &nu, &allowed, constraints, &mut search) else {
                break;
            };
            if probe.argmin_feasible {
                nu_feasible = Some(nu);
                plan_feasible = Some(probe.argmin.clone());
            } else {
                nu_infeasible = nu;
                plan_infeasible = probe.argmin.clone();
            }
            if probe.improved {
                stall = 0;
            } else {
                stall += 1;
                if stall >= 3 {
                    theta /= 2.0;
                    stall = 0;
                }
            }
            violation = probe.violation;
            // Polyak step towards the best feasible value (or an optimistic target).
            let norm2: f64 = (0..MULTIPLIERS)
                .filter(|&i| m.active[i] && (violation[i] > 0.0 || nu[i] > 0.0))
                .map(|i| violation[i] * violation[i])
                .sum();
            if norm2 <= 0.0 {
                break;
            }
            let target = search.incumbent.as_ref().map_or_else(
                || search.lower_bound + 0.5 * span.max(search.lower_bound.abs()),
                |c| c.eval.objective(objective),
            );
            let step = theta * (target - probe.dual).max(0.0) / norm2;
            for i in 0..MULTIPLIERS {
                if m.active[i] {
                    nu[i] = (nu[i] + step * violation[i]).max(0.0);
                }
            }
        }
        // No feasible plan yet: escalate the multipliers of the violated constraints.
        let mut round = 0;
        while search.incumbent.is_none() && round < ESCALATION_ROUNDS {
            round += 1;
            for i in 0..MULTIPLIERS {
                if m.active[i] && violation[i] > 0.0 {
                    nu[i] = (nu[i] * 4.0).max(span);
                }
            }
            let Some(probe) = self.probe(&m, &nu, &allowed, constraints, &mut search) else {
                break;
            };
            if probe.argmin_feasible {
                nu_feasible = Some(nu);
                plan_feasible = Some(probe.argmin.clone());
            } else {
                nu_infeasible = nu;
                plan_infeasible = probe.argmin.clone();
            }
            violation = probe.violation;
            if search.incumbent.is_none()
                && let Some(reason) = self.infeasibility_certificate(&m, &nu, &allowed, constraints)
            {
                return Err(reason.into());
            }
        }
        // Bisect between the last multipliers with an infeasible and a feasible minimiser: the
        // feasible plans found closest to the boundary are usually the best ones.
        if let Some(mut hi) = nu_feasible {
            let mut lo = nu_infeasible;
            for _ in 0..BISECTION_STEPS {
                if search.gap_closed(objective) {
                    break;
                }
                let mid: [f64; MULTIPLIERS] = std::array::from_fn(|i| 0.5 * (lo[i] + hi[i]));
                let Some(probe) = self.probe(&m, &mid, &allowed, constraints, &mut search) else {
                    break;
                };
                if probe.argmin_feasible {
                    hi = mid;
                    plan_feasible = Some(probe.argmin);
                } else {
                    lo = mid;
                    plan_infeasible = probe.argmin;
                }
            }
        }
        if !search.gap_closed(objective) {
            if let Some(feasible) = &plan_feasible {
                self.crossover(
                    feasible,
                    &plan_infeasible,
                    constraints,
                    &mut search.incumbent,
                );
            }
            let best = search.incumbent.as_ref().map(|c| c.tier.clone());
            if let Some(best) = best {
                self.crossover(&best, &base.best.tier, constraints, &mut search.incumbent);
            }
        }
        // 4. Exact branch-and-bound when the bound is not tight (small graphs) or nothing
        //    feasible was found.
        let small = problem.node_count <= options.exhaustive_search_max_nodes;
        let limited = search.incumbent.is_none() && options.search_work_limit > 0;
        if !search.gap_closed(objective) && (small || limited) {
            let work_limit = (!small).then_some(options.search_work_limit);
            let incumbent_value = search
                .incumbent
                .as_ref()
                .map(|c| c.eval.objective(objective));
            let outcome = self.branch_and_bound(&allowed, constraints, incumbent_value, work_limit);
            if let Some((tier, eval)) = outcome.best {
                search.incumbent = Some(Candidate { tier, eval });
            }
            match (&search.incumbent, outcome.completed) {
                (Some(c), true) => {
                    // Proven optimal: the search covered every plan that could beat it.
                    search.lower_bound = c.eval.objective(objective);
                }
                (None, true) => {
                    return Err(PartitionError::from(
                        self.explain_exhaustive_infeasibility(&allowed, constraints),
                    ));
                }
                (None, false) => {
                    return Err(PartitionError::SearchLimit {
                        constraints: describe_constraints(problem, constraints),
                        nodes: problem.node_count,
                        work_limit: outcome.steps,
                        exhaustive_nodes: options.exhaustive_search_max_nodes,
                    });
                }
                (Some(_), false) => {}
            }
        }
        match search.incumbent {
            Some(c) => Ok(placement(c, objective, search.lower_bound)),
            None => Err(PartitionError::SearchLimit {
                constraints: describe_constraints(problem, constraints),
                nodes: problem.node_count,
                work_limit: 0,
                exhaustive_nodes: options.exhaustive_search_max_nodes,
            }),
        }
    }
}

impl Engine<'_> {
    /// Exact branch-and-bound over the placements `allowed` permits.
    fn branch_and_bound(
        &self,
        allowed: &[[bool; TIER_COUNT]],
        constraints: &Constraints,
        incumbent: Option<f64>,
        work_limit: Option<u64>,
    ) -> search::SearchOutcome {
        let objective_layer = Weights::of(constraints.objective).layer(self.problem, allowed);
        let latency_layer = Weights::of(Objective::Latency).layer(self.problem, allowed);
        search::branch_and_bound(
            self.problem,
            &self.prep,
            allowed,
            &objective_layer,
            &latency_layer,
            constraints,
            incumbent,
            work_limit,
        )
    }

    /// Proves infeasibility when `min_x sum_i nu_i g_i(x) > 0`, with `g` the relaxed (linear)
    /// constraint violations: every plan then violates some relaxed constraint, and the relaxed
    /// constraints are implied by the true ones (memory >= parameter bytes).
    fn infeasibility_certificate(
        &mut self,
        m: &Multipliers,
        nu: &[f64; MULTIPLIERS],
        allowed: &[[bool; TIER_COUNT]],
        constraints: &Constraints,
    ) -> Option<Infeasibility> {
        // Try the memory caps alone first, to name the smallest set of constraints.
        let mut memory_only = *nu;
        memory_only[0] = 0.0;
        let tries = if nu[0] > 0.0 && memory_only.iter().any(|&x| x > 0.0) {
            vec![memory_only, *nu]
        } else {
            vec![*nu]
        };
        for nu in tries {
            let mut penalties = m.weights(&nu);
            penalties.latency -= m.base.latency;
            penalties.energy -= m.base.energy;
            let run = self.minimise(&penalties, allowed, true)?;
            let rhs = m.rhs(&nu);
            if run.best_value - rhs <= 1e-9 * (1.0 + rhs.abs()) {
                continue;
            }
            let involved = Constraints {
                objective: constraints.objective,
                latency_budget_ms: constraints.latency_budget_ms.filter(|_| nu[0] > 0.0),
                memory_cap_bytes: std::array::from_fn(|t| {
                    constraints.memory_cap_bytes[t].filter(|_| nu[1 + t] > 0.0)
                }),
            };
            let what = describe_constraints(self.problem, &involved);
            let detail = "every monotone placement violates them even when memory is counted as \
                          parameter bytes only (Lagrangian infeasibility certificate)";
            return Some(if involved.latency_budget_ms.is_none() {
                Infeasibility::MemoryCaps {
                    detail: format!("no plan fits {what}: {detail}"),
                }
            } else {
                Infeasibility::Combined {
                    constraints: what,
                    detail: detail.into(),
                }
            });
        }
        None
    }

    /// Says which constraints an exhaustive search found unsatisfiable together.
    fn explain_exhaustive_infeasibility(
        &self,
        allowed: &[[bool; TIER_COUNT]],
        constraints: &Constraints,
    ) -> Infeasibility {
        let problem = self.problem;
        let n = problem.node_count;
        let memory_only = Constraints {
            latency_budget_ms: None,
            ..constraints.clone()
        };
        let memory_alone = self.branch_and_bound(allowed, &memory_only, None, None);
        if memory_alone.best.is_none() {
            return Infeasibility::MemoryCaps {
                detail: format!(
                    "every monotone placement of the {n}-node graph exceeds {} (exhaustive \
                     search; each node alone fits some tier)",
                    describe_constraints(problem, &memory_only)
                ),
            };
        }
        Infeasibility::Combined {
            constraints: describe_constraints(problem, constraints),
            detail: format!(
                "each can be met alone, but an exhaustive search over the monotone placements \
                 of the {n}-node graph found no plan meeting both"
            ),
        }
    }
}

/// Exhaustive enumeration of all monotone placements: a **test oracle** for small graphs.
///
/// Returns an optimal plan meeting the constraints (it needs no triangle inequality), or
/// [`PartitionError::Infeasible`]. Refuses graphs of more than [`BRUTE_FORCE_MAX_NODES`] nodes
/// with [`PartitionError::TooLargeForBruteForce`].
pub fn brute_force(
    problem: &Problem,
    constraints: &Constraints,
) -> Result<Placement, PartitionError> {
    if problem.node_count > BRUTE_FORCE_MAX_NODES {
        return Err(PartitionError::TooLargeForBruteForce {
            nodes: problem.node_count,
            max_nodes: BRUTE_FORCE_MAX_NODES,
        });
    }
    validate_problem(problem)?;
    validate_constraints(constraints)?;
    let prep = Prepared::new(problem);
    let outcome = search::brute_force(problem, &prep, constraints);
    if let Some((tier, eval)) = outcome.best {
        let value = eval.objective(constraints.objective);
        return Ok(placement(
            Candidate { tier, eval },
            constraints.objective,
            value,
        ));
    }
    let no_caps = [None; TIER_COUNT];
    let reason = if outcome.placements == 0 {
        match check_structure(problem, &prep, &prep.base_allowed, &no_caps) {
            Err(reason) => reason,
            Ok(()) => Infeasibility::Combined {
                constraints: describe_constraints(problem, constraints),
                detail: "no monotone placement exists".into(),
            },
        }
    } else if let (None, Some((over, t))) = (outcome.fastest_within_memory, outcome.least_overshoot)
    {
        Infeasibility::MemoryCaps {
            detail: format!(
                "every one of the {} monotone placements exceeds a memory cap; the closest \
                 exceeds the {} cap of {} by {}",
                outcome.placements,
                TIER_NAMES[t],
                fmt_bytes(constraints.memory_cap_bytes[t].unwrap_or(0.0)),
                fmt_bytes(over)
            ),
        }
    } else {
        Infeasibility::LatencyBudget {
            budget_ms: constraints.latency_budget_ms.unwrap_or(0.0),
            fastest_ms: outcome.fastest_within_memory.unwrap_or(f64::INFINITY),
            scope: if constraints.memory_cap_bytes.iter().any(Option::is_some) {
                " that fits the memory caps"
            } else {
                ""
            },
        }
    };
    Err(PartitionError::from(reason))
}
