//! The per-request route decision: which of a model's plans to run, from the route table alone (no network
//! round trip, no allocation beyond the result). Plans that violate a privacy level are never candidates;
//! the rest are ranked by the request's budgets.

use strata_core::{Privacy, Tier};
use strata_proto::{convert, v1};

/// What one request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Constraints {
    /// End-to-end latency budget, ms.
    pub latency_ms: Option<f64>,
    /// Device energy budget, mJ.
    pub energy_mj: Option<f64>,
    /// Privacy level (tightens the model's own level; `None` keeps it).
    pub privacy: Option<Privacy>,
}

/// Whether `plan` satisfies `level`.
pub fn satisfies(plan: &v1::Plan, level: Privacy) -> bool {
    plan.satisfies.contains(&(v1::Privacy::from(level) as i32))
}

/// A plan's rank: unreachable last, then budget-missing, then by how far it misses, then the objective.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rank {
    unreachable: bool,
    misses_budget: bool,
    miss: f64,
    objective: f64,
}

impl Rank {
    fn cmp(&self, other: &Rank) -> std::cmp::Ordering {
        (self.unreachable, self.misses_budget)
            .cmp(&(other.unreachable, other.misses_budget))
            .then(self.miss.total_cmp(&other.miss))
            .then(self.objective.total_cmp(&other.objective))
    }
}

/// `None` when the plan violates the model's or the request's privacy.
fn rank_of(
    plan: &v1::Plan,
    model_level: Privacy,
    constraints: &Constraints,
    node_down: &impl Fn(&str) -> bool,
) -> Option<Rank> {
    if !satisfies(plan, model_level) || !constraints.privacy.is_none_or(|r| satisfies(plan, r)) {
        return None;
    }
    let reachable = plan
        .stages
        .iter()
        .all(|s| convert::is_tier(s.tier, Tier::Device) || s.nodes.iter().any(|n| !node_down(n)));
    let over = |value: f64, budget: Option<f64>| budget.map_or(0.0, |b| (value / b - 1.0).max(0.0));
    let miss = over(plan.latency_ms, constraints.latency_ms)
        + over(plan.device_energy_mj, constraints.energy_mj);
    Some(Rank {
        unreachable: !reachable,
        misses_budget: miss > 0.0,
        miss,
        objective: if constraints.latency_ms.is_some() {
            plan.device_energy_mj
        } else {
            plan.latency_ms
        },
    })
}

/// The model's own privacy level, as its route table states it: `open` when unspecified, the strictest
/// (`device`) when the code is not a level at all.
pub fn model_level(table: &v1::RouteTable) -> Privacy {
    match convert::privacy(table.privacy, "table.privacy") {
        Ok(Some(level)) => level,
        Ok(None) => Privacy::Open,
        Err(_) => Privacy::Device,
    }
}

/// Plans of `table` that satisfy the model's and the request's privacy, best first: plans meeting every budget,
/// then the rest by how far they miss. With a latency budget the least device energy wins (the budget is what
/// matters, the battery is what is saved); otherwise the lowest latency. A plan with a remote stage that has no
/// live node (`node_down` true for all its nodes, or none listed) goes last.
pub fn rank<'t>(
    table: &'t v1::RouteTable,
    constraints: &Constraints,
    node_down: impl Fn(&str) -> bool,
) -> Vec<&'t v1::Plan> {
    let level = model_level(table);
    let mut plans: Vec<(&v1::Plan, Rank)> = table
        .plans
        .iter()
        .filter_map(|p| rank_of(p, level, constraints, &node_down).map(|r| (p, r)))
        .collect();
    plans.sort_by(|a, b| a.1.cmp(&b.1));
    plans.into_iter().map(|(p, _)| p).collect()
}

/// The best plan for a request (the head of [`rank`], without sorting or allocating), or `None` when no plan
/// satisfies its privacy.
pub fn choose<'t>(
    table: &'t v1::RouteTable,
    constraints: &Constraints,
    node_down: impl Fn(&str) -> bool,
) -> Option<&'t v1::Plan> {
    let level = model_level(table);
    let mut best: Option<(&v1::Plan, Rank)> = None;
    for p in &table.plans {
        if let Some(r) = rank_of(p, level, constraints, &node_down)
            && best.as_ref().is_none_or(|(_, b)| r.cmp(b).is_lt())
        {
            best = Some((p, r));
        }
    }
    best.map(|(p, _)| p)
}
