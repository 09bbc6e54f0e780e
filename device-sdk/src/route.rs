//! The per-request route decision: which of a model's plans to run, from the route table and the client's
//! live estimates alone (no network round trip, no allocation in [`choose`]). Plans that violate a privacy
//! level are never candidates; the rest are re-costed under the conditions of the moment
//! (`strata_core::recost`) and ranked by the request's budgets and objective.

use strata_core::recost::{self, Conditions, DevicePower, Link, Prediction, StageCost, Transfer};
use strata_core::{Privacy, Tier};
use strata_proto::{convert, v1};

/// What a request minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// End-to-end latency.
    Latency,
    /// Device energy (within the latency budget, if any).
    Energy,
}

impl Objective {
    /// `latency` or `energy`.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Latency => "latency",
            Objective::Energy => "energy",
        }
    }
}

/// What one request asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    /// End-to-end latency budget, ms.
    pub latency_ms: Option<f64>,
    /// Device energy budget, mJ.
    pub energy_mj: Option<f64>,
    /// Privacy level (tightens the model's own level; `None` keeps it).
    pub privacy: Option<Privacy>,
    /// What to minimise; `None`: device energy when there is a latency budget or the battery is low (see
    /// [`PowerState`]), latency otherwise.
    pub objective: Option<Objective>,
    /// Run this plan (by id) and no other (debugging, measurements). Privacy still holds.
    pub plan: Option<String>,
    /// Only plans whose device stages are here already (loaded, or in the stage cache): never wait for a
    /// download. Without it, a plan whose device stage is missing is costed with its download.
    pub local_only: bool,
}

/// One of a request's budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// End-to-end latency, ms.
    LatencyMs,
    /// Device energy, mJ.
    EnergyMj,
}

impl Budget {
    /// `latency` or `energy`.
    pub fn name(self) -> &'static str {
        match self {
            Budget::LatencyMs => "latency",
            Budget::EnergyMj => "energy",
        }
    }

    /// `ms` or `mJ`.
    pub fn unit(self) -> &'static str {
        match self {
            Budget::LatencyMs => "ms",
            Budget::EnergyMj => "mJ",
        }
    }

    /// A budget of `value`, checked: it must be a finite number > 0. A NaN, infinite, zero or negative
    /// budget is refused, never read as "no budget" (leave the budget out for none).
    pub fn check(self, value: f64) -> Result<f64, BadBudget> {
        if value.is_finite() && value > 0.0 {
            Ok(value)
        } else {
            Err(BadBudget {
                budget: self,
                value,
            })
        }
    }
}

/// A budget that is not one (see [`Budget::check`]).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error(
    "{} budget {value} {} is not a budget: it must be a finite number greater than 0 (leave it out for no budget)",
    .budget.name(),
    .budget.unit()
)]
pub struct BadBudget {
    /// Which budget.
    pub budget: Budget,
    /// What was given.
    pub value: f64,
}

impl From<BadBudget> for crate::SdkError {
    fn from(e: BadBudget) -> crate::SdkError {
        crate::SdkError::InvalidArgument(e.to_string())
    }
}

impl Constraints {
    /// Checks the request's budgets (see [`Budget::check`]).
    pub fn check(&self) -> Result<(), BadBudget> {
        if let Some(ms) = self.latency_ms {
            Budget::LatencyMs.check(ms)?;
        }
        if let Some(mj) = self.energy_mj {
            Budget::EnergyMj.check(mj)?;
        }
        Ok(())
    }
}

/// Below this battery level, not charging, requests without an objective save energy.
pub const LOW_BATTERY_PCT: f64 = 20.0;

/// On low battery without a latency budget, the energy-saving choice may be this much slower than the
/// fastest plan.
pub const LOW_BATTERY_SLOWDOWN: f64 = 1.25;

/// The device's power state, as the app reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PowerState {
    /// Battery charge, percent (`None`: unknown, or no battery).
    pub battery_pct: Option<f64>,
    /// On external power.
    pub charging: bool,
}

/// A power state that cannot be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("battery level {0} % is impossible: it must be between 0 and 100")]
pub struct BadBattery(pub f64);

impl PowerState {
    /// A checked power state.
    pub fn new(battery_pct: Option<f64>, charging: bool) -> Result<PowerState, BadBattery> {
        if let Some(p) = battery_pct
            && !(0.0..=100.0).contains(&p)
        {
            return Err(BadBattery(p));
        }
        Ok(PowerState {
            battery_pct,
            charging,
        })
    }

    /// Low battery and not charging: the default policy saves energy.
    pub fn low(&self) -> bool {
        !self.charging && self.battery_pct.is_some_and(|p| p < LOW_BATTERY_PCT)
    }
}

impl std::fmt::Debug for Situation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Situation")
            .field("conditions", self.conditions)
            .field("power", self.power)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Whether `plan` satisfies `level`.
pub fn satisfies(plan: &v1::Plan, level: Privacy) -> bool {
    plan.satisfies.contains(&(v1::Privacy::from(level) as i32))
}

/// The model's own privacy level, as its route table states it; the strictest (`device`) when the table
/// states none or a code that is not a level.
pub fn model_level(table: &v1::RouteTable) -> Privacy {
    match convert::privacy(table.privacy, "table.privacy") {
        Ok(Some(level)) => level,
        // A table without a valid level fails closed: nothing leaves the device (agents refuse such tables
        // too).
        Ok(None) | Err(_) => Privacy::Device,
    }
}

/// Whether the plan satisfies the model's and the request's privacy.
fn allowed(plan: &v1::Plan, model: Privacy, constraints: &Constraints) -> bool {
    satisfies(plan, model) && constraints.privacy.is_none_or(|r| satisfies(plan, r))
}

/// Whether the request may run the plan: its privacy, and its device stages being here when it asks for
/// local plans only.
fn eligible(
    plan: &v1::Plan,
    model: Privacy,
    constraints: &Constraints,
    situation: &Situation<'_>,
) -> bool {
    allowed(plan, model, constraints)
        && (!constraints.local_only || missing_bytes(plan, situation.local) == 0)
}

/// A plan's prediction under `conditions`, with each device stage's time as measured on this device where
/// `measured` (by stage digest) knows it. A plan from a table without transfers (an older control plane)
/// keeps its static prediction; a plan with a code that does not decode is `None`.
pub fn predict(
    plan: &v1::Plan,
    conditions: &Conditions,
    power: &DevicePower,
    measured: &dyn Fn(&str) -> Option<f64>,
) -> Option<Prediction> {
    let remote = plan
        .stages
        .iter()
        .any(|s| !convert::is_tier(s.tier, Tier::Device));
    if remote && plan.transfers.is_empty() {
        return Some(Prediction {
            latency_ms: plan.latency_ms,
            energy_mj: plan.device_energy_mj,
            device_ms: 0.0,
            network_ms: 0.0,
        });
    }
    let valid = plan
        .stages
        .iter()
        .all(|s| convert::tier(s.tier, "stage.tier").is_ok())
        && plan
            .transfers
            .iter()
            .all(|x| convert::link(x.link, "transfer.link").is_ok());
    if !valid {
        return None;
    }
    // Codes checked above: the fallbacks below are never taken.
    let p = recost::predict(
        plan.stages.iter().map(|s| {
            let tier = convert::tier(s.tier, "stage.tier").unwrap_or(Tier::Cloud);
            let measured = if tier == Tier::Device {
                measured(&s.digest)
            } else {
                None
            };
            StageCost {
                tier,
                ms: measured.unwrap_or(s.predicted_ms),
                measured: measured.is_some(),
            }
        }),
        plan.transfers.iter().map(|x| Transfer {
            link: convert::link(x.link, "transfer.link").unwrap_or(Link::DeviceCloud),
            up_bytes: x.up_bytes as f64,
            down_bytes: x.down_bytes as f64,
        }),
        conditions,
        power,
    );
    Some(p)
}

/// Everything a decision is made from, besides the table.
#[derive(Clone, Copy)]
pub struct Situation<'a> {
    /// The conditions of the moment.
    pub conditions: &'a Conditions,
    /// The device's power figures.
    pub power: &'a DevicePower,
    /// Its power state.
    pub state: PowerState,
    /// Device stages' times as measured on this device, by digest (`None`: not measured yet).
    pub measured: &'a dyn Fn(&str) -> Option<f64>,
    /// Whether a device stage (by digest) is here already: loaded, or in the stage cache.
    pub local: &'a dyn Fn(&str) -> bool,
}

/// The bytes of `plan`'s device stages that are not here yet.
pub fn missing_bytes(plan: &v1::Plan, local: &dyn Fn(&str) -> bool) -> u64 {
    plan.stages
        .iter()
        .filter(|s| convert::is_tier(s.tier, Tier::Device) && !local(&s.digest))
        .map(|s| s.size_bytes)
        .sum()
}

/// [`predict`] in a situation: a plan whose device stages are not all here pays their download first, over
/// the device's link (to the edge, else to the cloud) at its current estimate: its RTT and the bytes at its
/// downlink goodput in latency, the bytes' radio energy and the wait at idle power in energy. Without a
/// known device link, such a plan cannot be costed (infinite).
pub fn predict_in(plan: &v1::Plan, situation: &Situation<'_>) -> Option<Prediction> {
    let mut p = predict(
        plan,
        situation.conditions,
        situation.power,
        situation.measured,
    )?;
    let (ms, mj) = download(plan, situation);
    p.latency_ms += ms;
    p.network_ms += ms;
    p.energy_mj += mj;
    Some(p)
}

/// What downloading `plan`'s missing device stages costs first: ms and device mJ (0 when all are here).
pub fn download(plan: &v1::Plan, situation: &Situation<'_>) -> (f64, f64) {
    let missing = missing_bytes(plan, situation.local);
    if missing == 0 {
        return (0.0, 0.0);
    }
    let link = situation
        .conditions
        .link(Link::DeviceEdge)
        .or(situation.conditions.link(Link::DeviceCloud));
    let ms = link.map_or(f64::INFINITY, |l| l.transfer_ms(0.0, missing as f64));
    let mj = missing as f64 * situation.power.rx_nj_per_byte * 1e-6 + situation.power.idle_w * ms;
    (ms, mj)
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

/// The objective a request gets and the latency budget it is held to: its own; energy under a latency
/// budget; on low battery, energy within its budget or [`LOW_BATTERY_SLOWDOWN`] × the fastest plan.
fn policy(
    table: &v1::RouteTable,
    constraints: &Constraints,
    situation: &Situation<'_>,
    node_down: &impl Fn(&str) -> bool,
) -> (Objective, Option<f64>) {
    let objective = constraints.objective.unwrap_or(
        if constraints.latency_ms.is_some() || situation.state.low() {
            Objective::Energy
        } else {
            Objective::Latency
        },
    );
    let mut budget = constraints.latency_ms;
    if objective == Objective::Energy && budget.is_none() && situation.state.low() {
        let level = model_level(table);
        let fastest = table
            .plans
            .iter()
            .filter(|p| eligible(p, level, constraints, situation) && reachable(p, node_down))
            .filter_map(|p| predict_in(p, situation))
            .map(|p| p.latency_ms)
            .fold(f64::INFINITY, f64::min);
        if fastest.is_finite() {
            budget = Some(fastest * LOW_BATTERY_SLOWDOWN);
        }
    }
    (objective, budget)
}

fn reachable(plan: &v1::Plan, node_down: &impl Fn(&str) -> bool) -> bool {
    plan.stages
        .iter()
        .all(|s| convert::is_tier(s.tier, Tier::Device) || s.nodes.iter().any(|n| !node_down(n)))
}

fn rank_of(
    plan: &v1::Plan,
    prediction: &Prediction,
    constraints: &Constraints,
    objective: Objective,
    budget: Option<f64>,
    node_down: &impl Fn(&str) -> bool,
) -> Rank {
    let over = |value: f64, budget: Option<f64>| budget.map_or(0.0, |b| (value / b - 1.0).max(0.0));
    let miss =
        over(prediction.latency_ms, budget) + over(prediction.energy_mj, constraints.energy_mj);
    // A plan over a link the profile does not know costs infinity (or NaN energy): never a candidate
    // before a costed one.
    let costed = prediction.latency_ms.is_finite() && prediction.energy_mj.is_finite();
    Rank {
        unreachable: !reachable(plan, node_down) || !costed,
        misses_budget: miss > 0.0,
        miss,
        objective: match objective {
            Objective::Latency => prediction.latency_ms,
            Objective::Energy => prediction.energy_mj,
        },
    }
}

/// The best plan for a request now, with its prediction, or `None` when no plan satisfies its privacy:
/// plans meeting every budget first, then the rest by how far they miss; among them the least of the
/// objective. A plan with a remote stage that has no live node goes last. No allocation.
pub fn choose<'t>(
    table: &'t v1::RouteTable,
    constraints: &Constraints,
    situation: &Situation<'_>,
    node_down: impl Fn(&str) -> bool,
) -> Option<(&'t v1::Plan, Prediction)> {
    let level = model_level(table);
    let (objective, budget) = policy(table, constraints, situation, &node_down);
    let mut best: Option<(&v1::Plan, Prediction, Rank)> = None;
    for p in &table.plans {
        if !eligible(p, level, constraints, situation) {
            continue;
        }
        let Some(prediction) = predict_in(p, situation) else {
            continue;
        };
        let r = rank_of(p, &prediction, constraints, objective, budget, &node_down);
        if best.as_ref().is_none_or(|(_, _, b)| r.cmp(b).is_lt()) {
            best = Some((p, prediction, r));
        }
    }
    best.map(|(p, prediction, _)| (p, prediction))
}

/// One plan as a decision saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Plan id.
    pub plan_id: String,
    /// Its stages' tiers, in order.
    pub tiers: Vec<&'static str>,
    /// Predicted now.
    pub predicted: Prediction,
    /// Predicted at the profiled conditions (the route table's figure).
    pub profiled_ms: f64,
    /// Meets the request's budgets.
    pub meets_budgets: bool,
    /// Every remote stage has a live agent.
    pub reachable: bool,
    /// Bytes of its device stages to download first (0: all here).
    pub download_bytes: u64,
    /// What that download adds to its prediction: ms, device mJ.
    pub download: (f64, f64),
}

/// Why a request got its plan: the policy, the conditions, and every allowed plan, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What was minimised.
    pub objective: Objective,
    /// The latency budget held to (the request's, or the low-battery policy's).
    pub latency_budget_ms: Option<f64>,
    /// The conditions plans were costed under.
    pub conditions: Conditions,
    /// The power state.
    pub state: PowerState,
    /// Allowed plans, best first (the first is what [`choose`] picks).
    pub ranked: Vec<Candidate>,
}

/// [`choose`]'s reasoning: every plan the request's privacy allows, ranked the same way, with predictions.
pub fn explain(
    table: &v1::RouteTable,
    constraints: &Constraints,
    situation: &Situation<'_>,
    node_down: impl Fn(&str) -> bool,
) -> Decision {
    let level = model_level(table);
    let (objective, budget) = policy(table, constraints, situation, &node_down);
    let mut ranked: Vec<(Candidate, Rank)> = table
        .plans
        .iter()
        .filter(|p| eligible(p, level, constraints, situation))
        .filter_map(|p| {
            let prediction = predict_in(p, situation)?;
            let r = rank_of(p, &prediction, constraints, objective, budget, &node_down);
            Some((
                Candidate {
                    plan_id: p.id.clone(),
                    tiers: p
                        .stages
                        .iter()
                        .map(|s| convert::tier_name(s.tier))
                        .collect(),
                    predicted: prediction,
                    profiled_ms: p.latency_ms,
                    meets_budgets: !r.misses_budget,
                    reachable: !r.unreachable,
                    download_bytes: missing_bytes(p, situation.local),
                    download: download(p, situation),
                },
                r,
            ))
        })
        .collect();
    ranked.sort_by(|a, b| a.1.cmp(&b.1));
    Decision {
        objective,
        latency_budget_ms: budget,
        conditions: *situation.conditions,
        state: situation.state,
        ranked: ranked.into_iter().map(|(c, _)| c).collect(),
    }
}

/// A runner-up may be explored when predicted within this factor of the chosen plan (latency, or energy when
/// that is the objective).
pub const EXPLORE_WITHIN: f64 = 1.25;

/// Which ranked candidate (an index into `decision.ranked`, never 0) a request should run instead of the
/// chosen plan to check an estimate nobody measured lately: the best-ranked runner-up that is reachable,
/// meets the budgets, needs no download, is predicted within [`EXPLORE_WITHIN`] of the chosen plan, and
/// that `untrusted` says is costed on something not measured lately (a link's goodput, a tier's speed).
/// The caller bounds how often it explores; a wrong prediction costs one request at most.
pub fn explore(decision: &Decision, untrusted: impl Fn(&Candidate) -> bool) -> Option<usize> {
    let chosen = decision.ranked.first()?;
    let value = |c: &Candidate| match decision.objective {
        Objective::Latency => c.predicted.latency_ms,
        Objective::Energy => c.predicted.energy_mj,
    };
    let bound = value(chosen) * EXPLORE_WITHIN;
    decision
        .ranked
        .iter()
        .enumerate()
        .skip(1)
        .find_map(|(i, c)| {
            (c.reachable
                && c.meets_budgets
                && c.download_bytes == 0
                && value(c).is_finite()
                && value(c) <= bound
                && untrusted(c))
            .then_some(i)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, ms: f64) -> Candidate {
        Candidate {
            plan_id: id.into(),
            tiers: vec!["edge"],
            predicted: Prediction {
                latency_ms: ms,
                energy_mj: ms / 10.0,
                device_ms: 0.0,
                network_ms: 0.0,
            },
            profiled_ms: ms,
            meets_budgets: true,
            reachable: true,
            download_bytes: 0,
            download: (0.0, 0.0),
        }
    }

    fn decision(ranked: Vec<Candidate>) -> Decision {
        Decision {
            objective: Objective::Latency,
            latency_budget_ms: None,
            conditions: Conditions::nominal([None; 3]),
            state: PowerState::default(),
            ranked,
        }
    }

    #[test]
    fn nan_infinite_zero_and_negative_budgets_are_refused_not_ignored() {
        for bad in [0.0, -0.0, -5.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for (constraints, budget) in [
                (
                    Constraints {
                        latency_ms: Some(bad),
                        ..Constraints::default()
                    },
                    Budget::LatencyMs,
                ),
                (
                    Constraints {
                        energy_mj: Some(bad),
                        ..Constraints::default()
                    },
                    Budget::EnergyMj,
                ),
            ] {
                let e = constraints.check().expect_err("not a budget");
                assert_eq!(e.budget, budget);
                assert!(
                    e.to_string()
                        .contains("must be a finite number greater than 0"),
                    "{e}"
                );
                assert!(matches!(
                    crate::SdkError::from(e),
                    crate::SdkError::InvalidArgument(_)
                ));
            }
        }
        let fine = Constraints {
            latency_ms: Some(0.5),
            energy_mj: Some(20.0),
            ..Constraints::default()
        };
        assert_eq!(fine.check(), Ok(()));
        assert_eq!(Constraints::default().check(), Ok(()));
        assert_eq!(
            BadBudget {
                budget: Budget::LatencyMs,
                value: -5.0
            }
            .to_string(),
            "latency budget -5 ms is not a budget: it must be a finite number greater than 0 (leave it out for no budget)"
        );
    }

    #[test]
    fn a_close_runner_up_costed_on_stale_estimates_is_explored() {
        let d = decision(vec![
            candidate("a", 100.0),
            candidate("b", 120.0),
            candidate("c", 124.0),
        ]);
        assert_eq!(explore(&d, |_| true), Some(1));
        // Only untrusted ones, and only the first of those.
        assert_eq!(explore(&d, |c| c.plan_id == "c"), Some(2));
        assert_eq!(explore(&d, |_| false), None);
    }

    #[test]
    fn far_unreachable_over_budget_or_undownloaded_runners_up_are_not_explored() {
        let far = decision(vec![candidate("a", 100.0), candidate("b", 126.0)]);
        assert_eq!(explore(&far, |_| true), None);
        for spoil in [
            |c: &mut Candidate| c.reachable = false,
            |c: &mut Candidate| c.meets_budgets = false,
            |c: &mut Candidate| c.download_bytes = 1,
        ] {
            let mut b = candidate("b", 101.0);
            spoil(&mut b);
            let d = decision(vec![candidate("a", 100.0), b]);
            assert_eq!(explore(&d, |_| true), None);
        }
        assert_eq!(
            explore(&decision(vec![candidate("a", 1.0)]), |_| true),
            None
        );
        assert_eq!(explore(&decision(vec![]), |_| true), None);
    }

    #[test]
    fn under_the_energy_objective_energy_is_compared() {
        let mut d = decision(vec![candidate("a", 100.0), candidate("b", 200.0)]);
        d.objective = Objective::Energy;
        d.ranked[1].predicted.energy_mj = 12.0;
        assert_eq!(explore(&d, |_| true), Some(1));
    }
}
