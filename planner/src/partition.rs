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

mod constrained;
mod cut;
mod error;
mod eval;
mod maxflow;
mod search;
mod validate;

pub use error::{Infeasibility, PartitionError, TierRefusal};

use constrained::{check_structure, describe_constraints};
use cut::{CutSolver, Layer};
use error::{fmt_bytes, fmt_num};
use eval::Evaluator;
use validate::{check_triangle, validate_constraints, validate_problem};

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
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// End-to-end latency (ms).
    Latency,
    /// Device energy (mJ).
    Energy,
}

impl Objective {
    /// Lower-case name (`latency`, `energy`).
    pub fn name(self) -> &'static str {
        match self {
            Objective::Latency => "latency",
            Objective::Energy => "energy",
        }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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

/// The bytes one hop of a placement's chain carries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HopBytes {
    /// Lower tier of the hop.
    pub from: usize,
    /// Higher tier of the hop.
    pub to: usize,
    /// Bytes going up (every tensor produced at or below `from` and read at or above `to`).
    pub up: f64,
    /// Bytes coming down (model outputs produced at or above `to`).
    pub down: f64,
}

/// Per hop of a valid placement's chain (the device, then its used tiers), the bytes it carries, exactly as
/// [`evaluate`] charges them: the plan's latency is its node costs plus, per hop, `fixed + up × up_per_byte +
/// down × down_per_byte`. Empty for a device-only placement or a malformed one.
pub fn transfers(problem: &Problem, tier: &[u8]) -> Vec<HopBytes> {
    let n = problem.node_count;
    if tier.len() != n || tier.iter().any(|&t| usize::from(t) >= TIER_COUNT) {
        return Vec::new();
    }
    let mut used = [false; TIER_COUNT];
    used[0] = true;
    for &t in tier {
        used[usize::from(t)] = true;
    }
    let chain: Vec<usize> = (0..TIER_COUNT).filter(|&t| used[t]).collect();
    let mut hops: Vec<HopBytes> = chain
        .windows(2)
        .map(|w| HopBytes {
            from: w[0],
            to: w[1],
            up: 0.0,
            down: 0.0,
        })
        .collect();
    for tensor in &problem.tensors {
        let producer_tier = match tensor.producer {
            Some(u) if u < n => usize::from(tier[u]),
            Some(_) => return Vec::new(),
            None => 0,
        };
        let max_consumer = tensor
            .consumers
            .iter()
            .filter(|&&c| c < n)
            .map(|&c| usize::from(tier[c]))
            .max();
        for hop in &mut hops {
            if max_consumer.is_some_and(|q| producer_tier <= hop.from && hop.to <= q) {
                hop.up += tensor.bytes;
            }
            if tensor.is_model_output && hop.to <= producer_tier {
                hop.down += tensor.bytes;
            }
        }
    }
    hops
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
