//! The constrained search: Lagrangian relaxation of the latency budget and memory caps, crossover of
//! plans across the feasibility boundary, infeasibility certificates, and the exact branch-and-bound
//! fallback for small graphs.

// Tier loops index several parallel per-tier arrays at once; ranges read better than zips.
#![allow(clippy::needless_range_loop)]

use super::*;

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

/// Why node `v` cannot run on tier `t` (`None` when it can).
fn tier_refusal(
    problem: &Problem,
    prep: &Prepared,
    caps: &[Option<f64>; TIER_COUNT],
    v: usize,
    t: usize,
) -> Option<TierRefusal> {
    let tier = TIER_NAMES[t];
    if !problem.tier_present[t] {
        return Some(TierRefusal::Absent { tier });
    }
    if !problem.latency.node_cost[v][t].is_finite() {
        return Some(TierRefusal::Forbidden {
            tier,
            layer: "latency",
        });
    }
    if !problem.energy.node_cost[v][t].is_finite() {
        return Some(TierRefusal::Forbidden {
            tier,
            layer: "energy",
        });
    }
    if let Some(cap) = caps[t] {
        let need = problem.param_bytes[v] + prep.io_bytes[v];
        if need > cap {
            return Some(TierRefusal::MemoryCap {
                tier,
                cap_bytes: cap,
                need_bytes: need,
                param_bytes: problem.param_bytes[v],
                io_bytes: prep.io_bytes[v],
            });
        }
    }
    None
}

/// Checks that some monotone placement exists within `allowed`; explains why not otherwise.
pub(super) fn check_structure(
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
        };
        if !allowed[v].iter().any(|&ok| ok) {
            return Err(Infeasibility::NodeHasNoTier {
                node: v,
                refusals: reasons(0),
            });
        }
        return Err(Infeasibility::MonotoneConflict {
            producer,
            consumer: v,
            producer_min_tier: TIER_NAMES[need],
            refusals: reasons(need),
        });
    }
    Ok(())
}

pub(super) fn describe_constraints(problem: &Problem, constraints: &Constraints) -> String {
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

impl Engine<'_> {
    /// For each present tier t, every node on t, except nodes not allowed there, which go to the
    /// highest allowed tier below; predecessors follow so the plan stays monotone. Plans that need
    /// a node on a tier it may not use are dropped.
    fn single_tier_plans(&mut self, allowed: &[[bool; TIER_COUNT]]) -> Vec<Candidate> {
        let problem = self.problem;
        let n = problem.node_count;
        let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (v, preds) in self.prep.preds.iter().enumerate() {
            for &p in preds {
                succs[p].push(v);
            }
        }
        let mut out = Vec::new();
        for t in (0..TIER_COUNT).filter(|&t| problem.tier_present[t]) {
            let mut tier = vec![t as u8; n];
            let mut ok = true;
            for v in (0..n).rev() {
                let cap = succs[v]
                    .iter()
                    .map(|&c| tier[c])
                    .min()
                    .unwrap_or(t as u8)
                    .min(t as u8);
                match (0..=cap).rev().find(|&u| allowed[v][u as usize]) {
                    Some(u) => tier[v] = u,
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                let eval = self.evaluator.eval(problem, &tier);
                if eval.objective(Objective::Latency).is_finite() {
                    out.push(Candidate { tier, eval });
                }
            }
        }
        out
    }

    pub(super) fn solve(
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
        // Never worse than not splitting: the single-tier plans (raw-input readers and other pinned
        // nodes lowered as little as monotonicity allows) seed the search.
        let singles = self.single_tier_plans(&allowed);
        consider(&mut incumbent, &singles, constraints);

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
