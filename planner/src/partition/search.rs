//! Enumerative searches over monotone placements: the exact branch-and-bound fallback of
//! `solve` and the brute-force test oracle. Both walk nodes in index (topological) order with
//! an explicit stack, so depth never turns into recursion.

use super::cut::{Chain, Layer};
use super::eval::Evaluator;
use super::{Constraints, Evaluation, Objective, Prepared, Problem, TIER_COUNT};

/// Outcome of [`branch_and_bound`].
pub(crate) struct SearchOutcome {
    /// Best feasible plan strictly better than the incumbent, if any was found.
    pub best: Option<(Vec<u8>, Evaluation)>,
    /// True when the whole tree was explored (the result is then proven optimal).
    pub completed: bool,
    /// Search steps spent (tree nodes expanded).
    pub steps: u64,
}

/// Depth-first walk over monotone placements restricted to `allowed`. `accept(depth, tier,
/// state)` may prune a branch; `leaf(tiers)` sees every complete placement. Returns false when
/// `work_limit` stopped the walk early.
fn walk(
    prep: &Prepared,
    allowed: &[[bool; TIER_COUNT]],
    order: &[[u8; TIER_COUNT]],
    work_limit: Option<u64>,
    steps: &mut u64,
    mut accept: impl FnMut(usize, u8, &[u8]) -> bool,
    mut leaf: impl FnMut(&[u8]),
) -> bool {
    let n = allowed.len();
    let mut tier = vec![0u8; n];
    let mut next = vec![0usize; n + 1];
    let mut depth = 0usize;
    loop {
        if depth == n {
            leaf(&tier);
            if depth == 0 {
                return true;
            }
            depth -= 1;
            continue;
        }
        let need = prep.preds[depth]
            .iter()
            .map(|&p| tier[p])
            .max()
            .unwrap_or(0);
        let mut moved = false;
        while next[depth] < TIER_COUNT {
            let t = order[depth][next[depth]];
            next[depth] += 1;
            if t < need || !allowed[depth][usize::from(t)] {
                continue;
            }
            *steps += 1;
            if work_limit.is_some_and(|limit| *steps > limit) {
                return false;
            }
            if !accept(depth, t, &tier) {
                continue;
            }
            tier[depth] = t;
            depth += 1;
            next[depth] = 0;
            moved = true;
            break;
        }
        if !moved {
            if depth == 0 {
                return true;
            }
            depth -= 1;
        }
    }
}

/// Exact branch-and-bound for the constrained problem over placements allowed by `allowed`.
/// Prunes with valid bounds: assigned node costs + cheapest remaining node costs + fixed costs
/// of the chain of the tiers used so far (a lower bound of the final chain's fixed costs by the
/// triangle inequality and non-negativity), parameter bytes against memory caps.
#[allow(clippy::too_many_arguments)]
pub(crate) fn branch_and_bound(
    problem: &Problem,
    prep: &Prepared,
    allowed: &[[bool; TIER_COUNT]],
    objective_layer: &Layer,
    latency_layer: &Layer,
    constraints: &Constraints,
    incumbent: Option<f64>,
    work_limit: Option<u64>,
) -> SearchOutcome {
    let n = problem.node_count;
    let min_allowed = |layer: &Layer, v: usize| {
        (0..TIER_COUNT)
            .filter(|&t| allowed[v][t])
            .map(|t| layer.node_cost[v][t])
            .fold(f64::INFINITY, f64::min)
    };
    let mut suffix_obj = vec![0.0; n + 1];
    let mut suffix_lat = vec![0.0; n + 1];
    for v in (0..n).rev() {
        suffix_obj[v] = suffix_obj[v + 1] + min_allowed(objective_layer, v);
        suffix_lat[v] = suffix_lat[v + 1] + min_allowed(latency_layer, v);
    }
    let mut fixed_obj = [0.0; 8];
    let mut fixed_lat = [0.0; 8];
    for mask in 0..8u8 {
        let chain = Chain::of_subset(mask);
        fixed_obj[usize::from(mask)] = chain.fixed_cost(objective_layer);
        fixed_lat[usize::from(mask)] = chain.fixed_cost(latency_layer);
    }
    let order: Vec<[u8; TIER_COUNT]> = (0..n)
        .map(|v| {
            let mut o = [0u8, 1, 2];
            o.sort_by(|&a, &b| {
                let ca = objective_layer.node_cost[v][usize::from(a)];
                let cb = objective_layer.node_cost[v][usize::from(b)];
                ca.total_cmp(&cb)
            });
            o
        })
        .collect();

    let tol = |x: f64| 1e-9 * (1.0 + x.abs());
    let mut obj_acc = vec![0.0; n + 1];
    let mut lat_acc = vec![0.0; n + 1];
    let mut param_acc = vec![[0.0; TIER_COUNT]; n + 1];
    let mut mask_acc = vec![0u8; n + 1];
    let mut best: Option<(Vec<u8>, Evaluation)> = None;
    let mut evaluator = Evaluator::default();
    let mut steps = 0;
    let objective = constraints.objective;
    // The best value found so far is read by the pruning closure and written by the leaf one.
    let best_cell = std::cell::Cell::new(incumbent);
    let completed = walk(
        prep,
        allowed,
        &order,
        work_limit,
        &mut steps,
        |depth, t, _| {
            let ti = usize::from(t);
            let obj = obj_acc[depth] + objective_layer.node_cost[depth][ti];
            let lat = lat_acc[depth] + latency_layer.node_cost[depth][ti];
            let mut params = param_acc[depth];
            params[ti] += problem.param_bytes[depth];
            let mask = mask_acc[depth] | (1 << t);
            if let Some(bv) = best_cell.get() {
                let bound = obj + suffix_obj[depth + 1] + fixed_obj[usize::from(mask)];
                if bound >= bv - tol(bv) {
                    return false;
                }
            }
            if let Some(budget) = constraints.latency_budget_ms {
                let bound = lat + suffix_lat[depth + 1] + fixed_lat[usize::from(mask)];
                if bound > budget + tol(budget) {
                    return false;
                }
            }
            if let Some(cap) = constraints.memory_cap_bytes[ti]
                && params[ti] > cap + tol(cap)
            {
                return false;
            }
            obj_acc[depth + 1] = obj;
            lat_acc[depth + 1] = lat;
            param_acc[depth + 1] = params;
            mask_acc[depth + 1] = mask;
            true
        },
        |tiers| {
            let ev = evaluator.eval(problem, tiers);
            if ev.meets(constraints) {
                let value = ev.objective(objective);
                if best_cell.get().is_none_or(|bv| value < bv) {
                    best_cell.set(Some(value));
                    best = Some((tiers.to_vec(), ev));
                }
            }
        },
    );
    SearchOutcome {
        best,
        completed,
        steps,
    }
}

/// What the brute-force enumeration saw, for diagnosing infeasibility.
pub(crate) struct BruteOutcome {
    /// Best feasible plan.
    pub best: Option<(Vec<u8>, Evaluation)>,
    /// Number of monotone allowed placements.
    pub placements: u64,
    /// Latency of the fastest plan among those meeting the memory caps.
    pub fastest_within_memory: Option<f64>,
    /// Smallest worst-tier memory overshoot (bytes over cap, tier) among all placements.
    pub least_overshoot: Option<(f64, usize)>,
}

/// Enumerates every monotone placement on present tiers with finite costs.
pub(crate) fn brute_force(
    problem: &Problem,
    prep: &Prepared,
    constraints: &Constraints,
) -> BruteOutcome {
    let order = vec![[0u8, 1, 2]; problem.node_count];
    let mut evaluator = Evaluator::default();
    let mut out = BruteOutcome {
        best: None,
        placements: 0,
        fastest_within_memory: None,
        least_overshoot: None,
    };
    let mut steps = 0;
    let memory_only = Constraints {
        objective: Objective::Latency,
        latency_budget_ms: None,
        memory_cap_bytes: constraints.memory_cap_bytes,
    };
    walk(
        prep,
        &prep.base_allowed,
        &order,
        None,
        &mut steps,
        |_, _, _| true,
        |tiers| {
            let ev = evaluator.eval(problem, tiers);
            out.placements += 1;
            let mut worst: Option<(f64, usize)> = None;
            for t in 0..TIER_COUNT {
                if let Some(cap) = constraints.memory_cap_bytes[t]
                    && ev.used[t]
                {
                    let over = ev.memory_bytes[t] - cap;
                    if worst.is_none_or(|(w, _)| over > w) {
                        worst = Some((over, t));
                    }
                }
            }
            if let Some((over, t)) = worst
                && out.least_overshoot.is_none_or(|(o, _)| over < o)
            {
                out.least_overshoot = Some((over, t));
            }
            if ev.meets(&memory_only) && out.fastest_within_memory.is_none_or(|f| ev.latency_ms < f)
            {
                out.fastest_within_memory = Some(ev.latency_ms);
            }
            if ev.meets(constraints) {
                let value = ev.objective(constraints.objective);
                let better = out
                    .best
                    .as_ref()
                    .is_none_or(|(_, b)| value < b.objective(constraints.objective));
                if better {
                    out.best = Some((tiers.to_vec(), ev));
                }
            }
        },
    );
    out
}
