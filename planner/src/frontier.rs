//! A model's frontier: the splits a device should choose from, so that whatever the network does, one of
//! them is (close to) the best.
//!
//! For every privacy combination a request can ask for ([`variants`]) and both objectives, the planner solves
//! the model exactly at the profiled conditions (the *nominal* plans) and at every point of a grid of network
//! conditions: device-side goodput × edge→cloud goodput (log-spaced, 0.1–1,000 Mbit/s by default) × an RTT
//! scale. Each grid point is a *sample*: its exact optimum, and which plans may serve it (those satisfying
//! the variant's privacy). The distinct splits found are the candidates.
//!
//! **Pruning rule.** The table starts with the nominal plans (one per variant and objective, deduplicated).
//! Then, while it holds fewer than [`Settings::max_plans`] plans and some sample's loss exceeds
//! [`Settings::good_enough`], it adds the candidate that most lowers the worst loss over all samples (ties:
//! the mean loss), where a sample's loss is (best plan of the table that may serve it, costed at the sample's
//! conditions) / (the sample's exact optimum) − 1. Greedy minimax regret: the worst case is what a user on a
//! bad network meets.
//!
//! **Single-tier plans.** With [`Settings::single_tier`], the whole model on each remote tier (edge only,
//! cloud only), where it fits and the model's privacy allows it, is kept too, right after the nominal plans
//! (device only is a nominal plan already): they are what a user compares a split against, and a request
//! still has a plan on the tiers that remain when one tier's agents are lost.

use std::collections::{BTreeSet, HashMap};

use strata_core::recost::{
    Conditions, DevicePower, Link, LinkState, PlanCost, StageCost, Transfer,
};
use strata_core::{Privacy, Tier};

use crate::analyse::Analysis;
use crate::cluster::{Cluster, LinkSpec};
use crate::cost::{self, CostError};
use crate::model::Model;
use crate::partition::{
    self, Constraints, Infeasibility, Objective, PartitionError, Problem, TIER_COUNT, TierRefusal,
};

/// How the frontier is searched and bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// At most this many plans per model, unless the nominal and single-tier plans alone are more (they are
    /// always kept).
    pub max_plans: usize,
    /// Goodputs swept on the device's links and on the edge→cloud link, Mbit/s.
    pub goodput_mbps: Vec<f64>,
    /// Factors applied to every profiled RTT.
    pub rtt_scales: Vec<f64>,
    /// A worst loss at or below this (a fraction: 0.01 = 1 %) stops the pruning early.
    pub good_enough: f64,
    /// Bisections between neighbouring grid points whose optimal splits differ.
    pub refine_depth: u32,
    /// Wall-clock limit of the search (the nominal plans are always found); past it the table is built from
    /// what was found, with a note.
    pub budget: std::time::Duration,
    /// Keep the whole model on each remote tier (where it fits and privacy allows) as a plan.
    pub single_tier: bool,
}

impl Default for Settings {
    /// 16 plans; goodputs 0.1–1,000 Mbit/s at half-decade steps, refined 3 times between differing neighbours;
    /// RTT × ¼, 1, 4; stop at a 0.5 % worst loss; a 5 s budget; single-tier plans kept.
    fn default() -> Settings {
        Settings {
            max_plans: 16,
            goodput_mbps: (0..=8).map(|i| 10f64.powf(-1.0 + 0.5 * i as f64)).collect(),
            rtt_scales: vec![0.25, 1.0, 4.0],
            good_enough: 0.005,
            refine_depth: 3,
            budget: std::time::Duration::from_secs(5),
            single_tier: true,
        }
    }
}

/// One privacy combination a request can ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// `open`, `features`, `edge`, `edge+features`, `device`.
    pub label: &'static str,
    /// The planner's privacy level for it.
    pub privacy: Privacy,
    /// The tiers it may use.
    pub tiers: BTreeSet<Tier>,
    /// The levels every plan of it satisfies: a request at any of these levels may be served by them.
    pub guarantees: Vec<Privacy>,
}

/// The privacy combinations to plan for when `tiers` have agents.
pub fn variants(tiers: &BTreeSet<Tier>) -> Vec<Variant> {
    use Privacy::*;
    let no_cloud: BTreeSet<Tier> = tiers
        .iter()
        .copied()
        .filter(|&t| t != Tier::Cloud)
        .collect();
    let device: BTreeSet<Tier> = [Tier::Device].into_iter().collect();
    let v = |label, privacy, tiers: &BTreeSet<Tier>, guarantees: &[Privacy]| Variant {
        label,
        privacy,
        tiers: tiers.clone(),
        guarantees: guarantees.to_vec(),
    };
    let mut out = vec![
        v("open", Open, tiers, &[Open]),
        v("features", Features, tiers, &[Open, Features]),
    ];
    if tiers.contains(&Tier::Cloud) && no_cloud.len() > 1 {
        out.push(v("edge", Open, &no_cloud, &[Open, Edge]));
        out.push(v(
            "edge+features",
            Features,
            &no_cloud,
            &[Open, Features, Edge],
        ));
    }
    if tiers.len() > 1 {
        out.push(v("device", Open, &device, &[Open, Features, Edge, Device]));
    }
    out
}

/// The cluster with only `keep`'s tiers. A device–cloud link missing once the edge is gone becomes the relay
/// through the edge, as the planner would have used it.
pub fn restrict(base: &Cluster, keep: &BTreeSet<Tier>) -> Result<Cluster, String> {
    let mut cluster = base.clone();
    cluster.tiers.retain(|t, _| keep.contains(t));
    cluster
        .links
        .retain(|l| keep.contains(&l.from) && keep.contains(&l.to));
    let has_direct = cluster
        .links
        .iter()
        .any(|l| l.from == Tier::Device && l.to == Tier::Cloud);
    if keep.contains(&Tier::Cloud)
        && !keep.contains(&Tier::Edge)
        && !has_direct
        && let Some(hop) = base.hop(Tier::Device, Tier::Cloud)
    {
        cluster.links.push(LinkSpec {
            from: Tier::Device,
            to: Tier::Cloud,
            up_mbps: 8.0 / (hop.up_ms_per_byte * 1e3),
            down_mbps: Some(8.0 / (hop.down_ms_per_byte * 1e3)),
            rtt_ms: hop.rtt_ms,
        });
    }
    for t in keep {
        if !cluster.tiers.contains_key(t) {
            return Err(format!("the cluster profile has no [tiers.{t}]"));
        }
    }
    cluster.validate().map_err(|e| e.to_string())?;
    Ok(cluster)
}

/// One split of the frontier.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierPlan {
    /// Tier per node (folded nodes on the device: they run nowhere).
    pub tier: Vec<u8>,
    /// The variant whose problem found it (extract its stages with that problem).
    pub variant: usize,
    /// Stage times and transfers.
    pub cost: PlanCost,
    /// The privacy levels it satisfies.
    pub levels: Vec<Privacy>,
    /// The objectives it is the nominal optimum for (empty: it is on the frontier for other conditions).
    pub objectives: Vec<Objective>,
    /// Peak memory per tier, bytes.
    pub memory_bytes: [f64; TIER_COUNT],
}

/// One grid point of one variant and objective, with its exact optimum.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index into the variants.
    pub variant: usize,
    /// What was minimised.
    pub objective: Objective,
    /// The links at this point (after the variant's restriction).
    pub links: [Option<LinkState>; 3],
    /// The exact optimum.
    pub optimum: f64,
}

/// A model's frontier.
#[derive(Debug, Clone)]
pub struct Frontier {
    /// The variants planned for, with each one's cluster and problem at nominal conditions (`None`: the
    /// variant does not apply to the model's privacy, or its cluster cannot be built).
    pub variants: Vec<(Variant, Option<(Cluster, Problem)>)>,
    /// The kept plans: the nominal ones first, then in the order the pruning added them.
    pub plans: Vec<FrontierPlan>,
    /// Why some variants have no plan.
    pub notes: Vec<String>,
    /// The profiled links (of the full cluster), by [`Link::index`].
    pub links: [Option<LinkState>; 3],
    /// The device's power figures.
    pub power: DevicePower,
    /// Distinct splits found before pruning.
    pub candidates: usize,
    /// The grid samples.
    pub samples: Vec<Sample>,
    /// Worst loss over the samples of the kept plans (a fraction).
    pub worst_loss: f64,
}

/// The levels a placement satisfies (folded nodes run nowhere and do not count).
fn levels_of(model: &Model, analysis: &Analysis, tier: &[u8]) -> Vec<Privacy> {
    let runs = |v: usize| !analysis.is_folded(v);
    let mut levels = vec![Privacy::Open];
    let raw_stays = model.inputs.iter().all(|input| {
        model
            .consumers
            .get(input)
            .is_none_or(|cs| cs.iter().all(|&c| !runs(c) || tier[c] == 0))
    });
    if raw_stays {
        levels.push(Privacy::Features);
    }
    if (0..tier.len()).all(|v| !runs(v) || tier[v] < 2) {
        levels.push(Privacy::Edge);
    }
    if (0..tier.len()).all(|v| !runs(v) || tier[v] == 0) {
        levels.push(Privacy::Device);
    }
    levels.sort();
    levels
}

/// A placement reduced to stage times (at the profiled speed) and transfers.
pub fn plan_cost(problem: &Problem, tier: &[u8]) -> PlanCost {
    let mut ms = [0.0; TIER_COUNT];
    let mut used = [false; TIER_COUNT];
    for (v, &t) in tier.iter().enumerate() {
        let t = usize::from(t);
        used[t] = true;
        ms[t] += problem.latency.node_cost[v][t];
    }
    PlanCost {
        stages: Tier::ALL
            .iter()
            .filter(|t| used[t.index()])
            .map(|&t| StageCost {
                tier: t,
                ms: ms[t.index()],
                measured: false,
            })
            .collect(),
        transfers: partition::transfers(problem, tier)
            .into_iter()
            .filter_map(|h| {
                Some(Transfer {
                    link: Link::between(Tier::from_index(h.from)?, Tier::from_index(h.to)?)?,
                    up_bytes: h.up,
                    down_bytes: h.down,
                })
            })
            .collect(),
    }
}

/// The objective's value of a prediction.
fn value(p: &strata_core::recost::Prediction, objective: Objective) -> f64 {
    match objective {
        Objective::Latency => p.latency_ms,
        Objective::Energy => p.energy_mj,
    }
}

/// A grid coordinate that keeps a link's profiled goodput (a link the variant does not sweep: the edge→cloud
/// link behind a device→cloud relay when no edge agent runs, say).
pub const PROFILED: f64 = f64::NAN;

/// The base cluster with its links set to a grid point: links from the device get goodput `g_device`, the
/// edge→cloud link `g_cloud` (each keeping its profiled down/up ratio; [`PROFILED`] keeps the profile's),
/// every RTT × `rtt_scale`.
fn at_point(base: &Cluster, g_device: f64, g_cloud: f64, rtt_scale: f64) -> Cluster {
    let mut c = base.clone();
    for l in &mut c.links {
        let g = if l.from == Tier::Device {
            g_device
        } else {
            g_cloud
        };
        l.rtt_ms *= rtt_scale;
        if g.is_nan() {
            continue;
        }
        let ratio = l.down_mbps.unwrap_or(l.up_mbps) / l.up_mbps;
        l.up_mbps = g;
        l.down_mbps = Some(g * ratio);
    }
    c
}

fn memory_caps(cluster: &Cluster) -> [Option<f64>; TIER_COUNT] {
    let mut caps = [None; TIER_COUNT];
    for t in Tier::ALL {
        if let Some(spec) = cluster.tier(t) {
            caps[t.index()] = Some(spec.memory_mib * 1024.0 * 1024.0);
        }
    }
    caps
}

/// Finds and prunes the frontier of a model for `base` restricted to `tiers`, for requests that satisfy the
/// model's own `privacy`. `describe` names a node in messages.
pub fn frontier(
    model: &Model,
    analysis: &Analysis,
    base: &Cluster,
    tiers: &BTreeSet<Tier>,
    privacy: Privacy,
    settings: &Settings,
) -> Result<Frontier, CostError> {
    let full = restrict(base, tiers).unwrap_or_else(|_| base.clone());
    let power = cost::device_power(base);
    let mut notes = Vec::new();
    let mut variants_out = Vec::new();
    for variant in variants(tiers) {
        if !variant.guarantees.contains(&privacy) {
            variants_out.push((variant, None));
            continue;
        }
        let built = match restrict(base, &variant.tiers) {
            Ok(cluster) => {
                let problem =
                    cost::build_problem(model, analysis, &cluster, variant.privacy, None)?;
                Some((cluster, problem))
            }
            Err(e) => {
                notes.push(format!("{}: {e}", variant.label));
                None
            }
        };
        variants_out.push((variant, built));
    }

    let started = std::time::Instant::now();
    let mut search = Search {
        model,
        analysis,
        base,
        power,
        index: HashMap::new(),
        candidates: Vec::new(),
        samples: Vec::new(),
        nominal: Vec::new(),
        single: Vec::new(),
        failures: Vec::new(),
        out_of_time: false,
        solves: 0,
    };
    // The nominal plans first; they also tell how long one solve takes.
    for (vi, (variant, built)) in variants_out.iter().enumerate() {
        let Some((cluster, problem)) = built else {
            continue;
        };
        let mut problem = problem.clone();
        for objective in [Objective::Latency, Objective::Energy] {
            let mut job = Job {
                variant: vi,
                label: variant.label,
                tiers: &variant.tiers,
                objective,
                caps: memory_caps(cluster),
                problem: &mut problem,
            };
            search.solve(&mut job, None);
        }
    }
    if settings.single_tier {
        for (vi, (variant, built)) in variants_out.iter().enumerate() {
            let Some((cluster, problem)) = built else {
                continue;
            };
            let mut problem = problem.clone();
            for &tier in variant.tiers.iter().filter(|&&t| t != Tier::Device) {
                let mut job = Job {
                    variant: vi,
                    label: variant.label,
                    tiers: &variant.tiers,
                    objective: Objective::Latency,
                    caps: memory_caps(cluster),
                    problem: &mut problem,
                };
                search.single_tier(&mut job, tier, privacy);
            }
        }
    }
    let solves = search.solves.max(1);
    let per_solve = started.elapsed() / solves as u32;
    let full_grid = settings.goodput_mbps.len().pow(2) * settings.rtt_scales.len() * solves;
    // Slow solves (memory caps make the partitioner search): every other goodput and RTT × 1 only, so the
    // budget covers every variant; the refinement fills in where the optimum changes.
    let coarse = per_solve * (full_grid as u32) > settings.budget / 2;
    let (goodputs, rtt_scales): (Vec<f64>, Vec<f64>) = if coarse {
        (
            settings.goodput_mbps.iter().copied().step_by(2).collect(),
            vec![1.0],
        )
    } else {
        (settings.goodput_mbps.clone(), settings.rtt_scales.clone())
    };
    for (vi, (variant, built)) in variants_out.iter().enumerate() {
        let Some((cluster, problem)) = built else {
            continue;
        };
        let caps = memory_caps(cluster);
        let mut problem = problem.clone();
        if cluster.tiers.len() < 2 {
            continue;
        }
        // The grid over the links this variant uses, RTT × 1 first (the budget may cut the rest).
        let sweep = |used: bool| -> Vec<f64> {
            if used {
                goodputs.clone()
            } else {
                vec![PROFILED]
            }
        };
        let g_device = sweep(cluster.links.iter().any(|l| l.from == Tier::Device));
        let g_cloud = sweep(cluster.links.iter().any(|l| l.from == Tier::Edge));
        let mut scales = rtt_scales.clone();
        scales.sort_by_key(|&x| (x != 1.0, (x.ln().abs() * 1e6) as i64));
        for objective in [Objective::Latency, Objective::Energy] {
            let mut job = Job {
                variant: vi,
                label: variant.label,
                tiers: &variant.tiers,
                objective,
                caps,
                problem: &mut problem,
            };
            for &scale in &scales {
                // found[i][j]: the candidate optimal at (g_device[i], g_cloud[j]).
                let mut found = vec![vec![None; g_cloud.len()]; g_device.len()];
                for (i, &gd) in g_device.iter().enumerate() {
                    for (j, &gc) in g_cloud.iter().enumerate() {
                        if started.elapsed() > settings.budget {
                            search.out_of_time = true;
                        }
                        if !search.out_of_time {
                            found[i][j] = search.solve(&mut job, Some((gd, gc, scale)));
                        }
                    }
                }
                // Refine between neighbours whose optima differ: plans best only between grid points.
                for i in 0..g_device.len() {
                    for j in 0..g_cloud.len() {
                        if i + 1 < g_device.len() && found[i][j] != found[i + 1][j] {
                            search.refine(
                                &mut job,
                                (g_device[i], found[i][j]),
                                (g_device[i + 1], found[i + 1][j]),
                                |g| (g, g_cloud[j], scale),
                                settings.refine_depth,
                                started,
                                settings.budget,
                            );
                        }
                        if j + 1 < g_cloud.len() && found[i][j] != found[i][j + 1] {
                            search.refine(
                                &mut job,
                                (g_cloud[j], found[i][j]),
                                (g_cloud[j + 1], found[i][j + 1]),
                                |g| (g_device[i], g, scale),
                                settings.refine_depth,
                                started,
                                settings.budget,
                            );
                        }
                    }
                }
            }
        }
    }
    if search.out_of_time {
        notes.push(format!(
            "the frontier search stopped at its time budget of {:?}: the table may miss plans for some network conditions",
            settings.budget
        ));
    }
    notes.append(&mut failure_notes(model, &search.failures));
    let Search {
        candidates,
        samples,
        nominal,
        single,
        ..
    } = search;

    // cost[c][s]: candidate c at sample s (infinite where c may not serve s).
    let eligible = |c: &FrontierPlan, s: &Sample| {
        variants_out[s.variant]
            .0
            .guarantees
            .iter()
            .all(|l| c.levels.contains(l))
    };
    let costs: Vec<Vec<f64>> = candidates
        .iter()
        .map(|c| {
            samples
                .iter()
                .map(|s| {
                    if eligible(c, s) {
                        value(
                            &c.cost.predict(&Conditions::nominal(s.links), &power),
                            s.objective,
                        )
                    } else {
                        f64::INFINITY
                    }
                })
                .collect()
        })
        .collect();
    let loss = |best: f64, s: &Sample| {
        if s.optimum > 0.0 {
            (best / s.optimum - 1.0).max(0.0)
        } else {
            (best - s.optimum).max(0.0)
        }
    };
    let mut best: Vec<f64> = vec![f64::INFINITY; samples.len()];
    let mut kept: Vec<usize> = Vec::new();
    let take = |c: usize, best: &mut Vec<f64>, kept: &mut Vec<usize>| {
        kept.push(c);
        for (b, &x) in best.iter_mut().zip(&costs[c]) {
            *b = b.min(x);
        }
    };
    for &c in &nominal {
        take(c, &mut best, &mut kept);
    }
    for &c in &single {
        if !kept.contains(&c) {
            take(c, &mut best, &mut kept);
        }
    }
    let worst = |best: &[f64]| {
        samples
            .iter()
            .zip(best)
            .map(|(s, &b)| loss(b, s))
            .fold(0.0, f64::max)
    };
    while kept.len() < settings.max_plans && worst(&best) > settings.good_enough {
        let mut pick: Option<(usize, f64, f64)> = None;
        for (c, cost) in costs.iter().enumerate() {
            if kept.contains(&c) {
                continue;
            }
            let (mut w, mut sum) = (0.0f64, 0.0);
            for (s, sample) in samples.iter().enumerate() {
                let l = loss(best[s].min(cost[s]), sample);
                w = w.max(l);
                sum += l;
            }
            if pick.is_none_or(|(_, pw, ps)| (w, sum) < (pw, ps)) {
                pick = Some((c, w, sum));
            }
        }
        match pick {
            Some((c, _, _)) => take(c, &mut best, &mut kept),
            None => break,
        }
    }
    let worst_loss = worst(&best);
    let total = candidates.len();
    let plans = kept.into_iter().map(|c| candidates[c].clone()).collect();
    Ok(Frontier {
        variants: variants_out,
        plans,
        notes,
        links: cost::links(&full),
        power,
        candidates: total,
        samples,
        worst_loss,
    })
}

/// One variant and objective being searched.
struct Job<'a> {
    variant: usize,
    label: &'static str,
    tiers: &'a BTreeSet<Tier>,
    objective: Objective,
    caps: [Option<f64>; TIER_COUNT],
    problem: &'a mut Problem,
}

/// The state of a frontier search: the distinct splits found and the samples solved.
struct Search<'a> {
    model: &'a Model,
    analysis: &'a Analysis,
    base: &'a Cluster,
    power: DevicePower,
    index: HashMap<Vec<u8>, usize>,
    candidates: Vec<FrontierPlan>,
    samples: Vec<Sample>,
    nominal: Vec<usize>,
    /// The single-tier plans (see [`Settings::single_tier`]).
    single: Vec<usize>,
    /// The nominal solves that found no plan (said once per cause by [`failure_notes`]).
    failures: Vec<Failure>,
    out_of_time: bool,
    solves: usize,
}

impl Search<'_> {
    /// Adds the whole model on `tier` as a single-tier plan, if it fits the tier's memory, runs at all under
    /// the job's privacy, and satisfies the model's `privacy`.
    fn single_tier(&mut self, job: &mut Job<'_>, tier: Tier, privacy: Privacy) {
        let Ok(cluster) = restrict(self.base, job.tiers) else {
            return;
        };
        cost::set_links(job.problem, &cost::links(&cluster), &self.power);
        let placement: Vec<u8> = (0..self.model.nodes.len())
            .map(|v| {
                if self.analysis.is_folded(v) {
                    0
                } else {
                    tier.index() as u8
                }
            })
            .collect();
        let eval = partition::evaluate(job.problem, &placement);
        let fits = job
            .caps
            .iter()
            .zip(&eval.memory_bytes)
            .all(|(cap, &m)| cap.is_none_or(|c| m <= c));
        let levels = levels_of(self.model, self.analysis, &placement);
        let runs = eval.allowed && eval.monotone && eval.latency_ms.is_finite() && fits;
        if !(runs && levels.contains(&privacy)) {
            return;
        }
        let c = match self.index.get(&placement) {
            Some(&c) => c,
            None => {
                self.candidates.push(FrontierPlan {
                    cost: plan_cost(job.problem, &placement),
                    levels,
                    tier: placement.clone(),
                    variant: job.variant,
                    objectives: Vec::new(),
                    memory_bytes: eval.memory_bytes,
                });
                self.index.insert(placement, self.candidates.len() - 1);
                self.candidates.len() - 1
            }
        };
        if !self.single.contains(&c) {
            self.single.push(c);
        }
    }

    /// Solves the job at a grid point (`None`: the nominal conditions) and returns the optimal candidate.
    fn solve(&mut self, job: &mut Job<'_>, point: Option<(f64, f64, f64)>) -> Option<usize> {
        let links = match point {
            None => cost::links(&restrict(self.base, job.tiers).ok()?),
            Some((gd, gc, s)) => {
                cost::links(&restrict(&at_point(self.base, gd, gc, s), job.tiers).ok()?)
            }
        };
        cost::set_links(job.problem, &links, &self.power);
        self.solves += 1;
        let constraints = Constraints {
            objective: job.objective,
            latency_budget_ms: None,
            memory_cap_bytes: job.caps,
        };
        let placement = match partition::solve(job.problem, &constraints) {
            Ok(p) => p,
            Err(error) => {
                if point.is_none() {
                    self.failures.push(Failure {
                        label: job.label,
                        error,
                    });
                }
                return None;
            }
        };
        let mut tier = placement.tier.clone();
        for (v, t) in tier.iter_mut().enumerate() {
            if self.analysis.is_folded(v) {
                *t = 0;
            }
        }
        let c = match self.index.get(&tier) {
            Some(&c) => c,
            None => {
                let eval = partition::evaluate(job.problem, &tier);
                self.candidates.push(FrontierPlan {
                    cost: plan_cost(job.problem, &tier),
                    levels: levels_of(self.model, self.analysis, &tier),
                    tier: tier.clone(),
                    variant: job.variant,
                    objectives: Vec::new(),
                    memory_bytes: eval.memory_bytes,
                });
                self.index.insert(tier, self.candidates.len() - 1);
                self.candidates.len() - 1
            }
        };
        match point {
            None => {
                if !self.candidates[c].objectives.contains(&job.objective) {
                    self.candidates[c].objectives.push(job.objective);
                }
                if !self.nominal.contains(&c) {
                    self.nominal.push(c);
                }
            }
            Some(_) => self.samples.push(Sample {
                variant: job.variant,
                objective: job.objective,
                links,
                optimum: placement.objective_value,
            }),
        }
        Some(c)
    }

    /// Bisects (in log goodput) between two points with different optima, `depth` times at most.
    #[allow(clippy::too_many_arguments)]
    fn refine(
        &mut self,
        job: &mut Job<'_>,
        lo: (f64, Option<usize>),
        hi: (f64, Option<usize>),
        point: impl Fn(f64) -> (f64, f64, f64) + Copy,
        depth: u32,
        started: std::time::Instant,
        budget: std::time::Duration,
    ) {
        if depth == 0 || self.out_of_time {
            return;
        }
        if started.elapsed() > budget {
            self.out_of_time = true;
            return;
        }
        let g = (lo.0 * hi.0).sqrt();
        let mid = self.solve(job, Some(point(g)));
        if mid != lo.1 {
            self.refine(job, lo, (g, mid), point, depth - 1, started, budget);
        }
        if mid != hi.1 {
            self.refine(job, (g, mid), hi, point, depth - 1, started, budget);
        }
    }
}

impl Frontier {
    /// The loss of the kept plans against an exact re-solve at `links` for every variant and objective that
    /// applies, as `(variant label, objective, loss)`; the sample's links go through the same restriction the
    /// variants use. `links` are the full cluster's links at the conditions to test.
    pub fn loss_at(&self, base_at: &Cluster) -> Vec<(&'static str, Objective, f64)> {
        let mut out = Vec::new();
        for (variant, built) in &self.variants {
            let Some((cluster, problem)) = built else {
                continue;
            };
            let Ok(restricted) = restrict(base_at, &variant.tiers) else {
                continue;
            };
            let links = cost::links(&restricted);
            let mut problem = problem.clone();
            cost::set_links(&mut problem, &links, &self.power);
            for objective in [Objective::Latency, Objective::Energy] {
                let constraints = Constraints {
                    objective,
                    latency_budget_ms: None,
                    memory_cap_bytes: memory_caps(cluster),
                };
                let Ok(exact) = partition::solve(&problem, &constraints) else {
                    continue;
                };
                let best = self
                    .plans
                    .iter()
                    .filter(|p| variant.guarantees.iter().all(|l| p.levels.contains(l)))
                    .map(|p| {
                        value(
                            &p.cost.predict(&Conditions::nominal(links), &self.power),
                            objective,
                        )
                    })
                    .fold(f64::INFINITY, f64::min);
                let loss = if exact.objective_value > 0.0 {
                    (best / exact.objective_value - 1.0).max(0.0)
                } else {
                    (best - exact.objective_value).max(0.0)
                };
                out.push((variant.label, objective, loss));
            }
        }
        out
    }
}

/// A nominal solve of one variant that found no plan.
struct Failure {
    label: &'static str,
    error: PartitionError,
}

/// The notes for the nominal solves that found no plan, each cause said once. A node that can run on no tier
/// is one note naming every variant that failed on it and each tier's refusal once: a tier absent from a
/// variant is the variant's doing (its label says so), and a tier whose memory the node does not fit needs no
/// other reason. Any other failure is one note per distinct message, naming its variants.
fn failure_notes(model: &Model, failures: &[Failure]) -> Vec<String> {
    let name = |v: usize| match model.nodes.get(v) {
        Some(node) => format!("node \"{}\" ({})", node.name, node.op_type),
        None => format!("node {v}"),
    };
    // Per node that can run on no tier: the variants, and every refusal met.
    let mut no_tier: Vec<(usize, Vec<&'static str>, Vec<TierRefusal>)> = Vec::new();
    let mut messages: Vec<(String, &'static str)> = Vec::new();
    for f in failures {
        match &f.error {
            PartitionError::Infeasible(Infeasibility::NodeHasNoTier { node, refusals }) => {
                let at = match no_tier.iter().position(|(n, ..)| n == node) {
                    Some(at) => at,
                    None => {
                        no_tier.push((*node, Vec::new(), Vec::new()));
                        no_tier.len() - 1
                    }
                };
                let (_, labels, met) = &mut no_tier[at];
                if !labels.contains(&f.label) {
                    labels.push(f.label);
                }
                for r in refusals {
                    if !met.contains(r) {
                        met.push(r.clone());
                    }
                }
            }
            other => messages.push((other.describe(&name), f.label)),
        }
    }
    for (node, labels, met) in no_tier {
        let capped = |tier: &str| {
            met.iter()
                .any(|r| matches!(r, TierRefusal::MemoryCap { tier: t, .. } if *t == tier))
        };
        let mut refusals: Vec<TierRefusal> = met
            .iter()
            .filter(|r| match r {
                TierRefusal::Absent { .. } => false,
                TierRefusal::Forbidden { tier, .. } => !capped(tier),
                TierRefusal::MemoryCap { .. } => true,
            })
            .cloned()
            .collect();
        if refusals.is_empty() {
            refusals = met;
        }
        let message =
            PartitionError::from(Infeasibility::NodeHasNoTier { node, refusals }).describe(&name);
        messages.extend(labels.into_iter().map(|l| (message.clone(), l)));
    }
    // One note per distinct message, with its variants in the order they failed.
    let mut grouped: Vec<(String, Vec<&'static str>)> = Vec::new();
    for (message, label) in messages {
        match grouped.iter_mut().find(|(m, _)| *m == message) {
            Some((_, labels)) if labels.contains(&label) => {}
            Some((_, labels)) => labels.push(label),
            None => grouped.push((message, vec![label])),
        }
    }
    grouped
        .into_iter()
        .map(|(message, labels)| format!("no {} plan: {message}", labels.join(", ")))
        .collect()
}

/// The base cluster at arbitrary goodputs and RTT scale (see the module docs): for experiments and tests.
pub fn cluster_at(base: &Cluster, g_device: f64, g_cloud: f64, rtt_scale: f64) -> Cluster {
    at_point(base, g_device, g_cloud, rtt_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_the_grid_does_not_sweep_keeps_its_profiled_goodput() {
        let base = Cluster::from_toml(
            "[tiers.device]\ngflops = 10\nmemory_mib = 256\n\
             [tiers.edge]\ngflops = 100\nmemory_mib = 2048\n\
             [tiers.cloud]\ngflops = 1000\nmemory_mib = 8192\n\
             [[links]]\nfrom = \"device\"\nto = \"edge\"\nup_mbps = 40\nrtt_ms = 4\n\
             [[links]]\nfrom = \"edge\"\nto = \"cloud\"\nup_mbps = 13\nrtt_ms = 50\n",
        )
        .expect("cluster");
        // No edge agents: the device reaches the cloud through the relay; only the device side is swept.
        let tiers: BTreeSet<Tier> = [Tier::Device, Tier::Cloud].into_iter().collect();
        let at = restrict(&at_point(&base, 100.0, PROFILED, 1.0), &tiers).expect("restricted");
        let relay = cost::links(&at)[Link::DeviceCloud.index()].expect("a device-cloud link");
        // 100 Mbit/s then 13 Mbit/s in series: 11.5 Mbit/s, not the 1 Mbit/s a pinned coordinate gave.
        assert!(
            (relay.up_mbps - 1.0 / (1.0 / 100.0 + 1.0 / 13.0)).abs() < 1e-6,
            "{relay:?}"
        );
        assert!((relay.rtt_ms - 54.0).abs() < 1e-9);
    }
}
