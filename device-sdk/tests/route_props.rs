//! Property tests of the per-request decision (`route::choose` and `route::explain`) against a brute-force
//! argmin written from the specification, under random live conditions (links, tier speeds, queues) and
//! power states: every plan is re-costed exactly as a recomputation from the formula gives, privacy is
//! never violated whatever the estimates, a reachable plan meeting every budget always beats one that
//! misses, and ties go to the earlier plan of the table (deterministically).

use proptest::prelude::*;
use strata_core::recost::{Conditions, DevicePower, LinkState};
use strata_device_sdk::Privacy;
use strata_device_sdk::route::{self, Constraints, Objective, PowerState, Situation};
use strata_proto::v1;

const LEVELS: [Privacy; 4] = [
    Privacy::Device,
    Privacy::Edge,
    Privacy::Features,
    Privacy::Open,
];

fn wire(p: Privacy) -> i32 {
    v1::Privacy::from(p) as i32
}

fn tier(t: usize) -> i32 {
    [v1::Tier::Device, v1::Tier::Edge, v1::Tier::Cloud][t] as i32
}

/// A random plan: which levels it satisfies, its stages (tier, compute ms, nodes drawn from n0..n3; small
/// integers, so ties happen), and per hop of its chain the bytes each way.
fn plan() -> impl Strategy<Value = v1::Plan> {
    (
        proptest::collection::vec(any::<bool>(), 4),
        proptest::collection::vec(
            (
                0usize..3,
                0u32..20,
                proptest::collection::vec(0usize..4, 0..3),
            ),
            1..4,
        ),
        proptest::collection::vec((0u64..5, 0u64..3), 2),
    )
        .prop_map(|(levels, stages, bytes)| {
            let mut used = [true, false, false];
            for (t, _, _) in &stages {
                used[*t] = true;
            }
            let chain: Vec<usize> = (0..3).filter(|&t| used[t]).collect();
            let links = |a: usize, b: usize| match (a, b) {
                (0, 1) => v1::Link::DeviceEdge,
                (1, 2) => v1::Link::EdgeCloud,
                _ => v1::Link::DeviceCloud,
            };
            v1::Plan {
                id: String::new(),
                satisfies: LEVELS
                    .iter()
                    .zip(&levels)
                    .filter(|(_, on)| **on)
                    .map(|(&l, _)| wire(l))
                    .collect(),
                transfers: chain
                    .windows(2)
                    .zip(&bytes)
                    .map(|(w, (up, down))| v1::Transfer {
                        link: links(w[0], w[1]) as i32,
                        up_bytes: up * 100_000,
                        down_bytes: down * 4_000,
                    })
                    .collect(),
                stages: stages
                    .into_iter()
                    .enumerate()
                    .map(|(i, (t, ms, nodes))| v1::Stage {
                        index: i as u32,
                        tier: tier(t),
                        predicted_ms: f64::from(ms),
                        nodes: if t == 0 {
                            vec![]
                        } else {
                            nodes.into_iter().map(|n| format!("n{n}")).collect()
                        },
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        })
}

/// Random live conditions: per link RTT and goodput, per tier speed and queue.
fn conditions() -> impl Strategy<Value = Conditions> {
    let link = (
        0u32..40,
        prop_oneof![Just(1.0), Just(8.0), Just(80.0)],
        prop_oneof![Just(1.0), Just(8.0)],
    )
        .prop_map(|(rtt, up, down)| {
            Some(LinkState {
                rtt_ms: f64::from(rtt),
                up_mbps: up,
                down_mbps: down,
            })
        });
    let speed = prop_oneof![Just(0.5), Just(1.0), Just(2.0)];
    let queue = prop_oneof![Just(0.0), Just(5.0)];
    (
        [link.clone(), link.clone(), link],
        [speed.clone(), speed.clone(), speed],
        [queue.clone(), queue.clone(), queue],
    )
        .prop_map(|(links, speed, queue_ms)| Conditions {
            links,
            speed,
            queue_ms,
        })
}

fn power_state() -> impl Strategy<Value = PowerState> {
    (proptest::option::of(0u32..=100), any::<bool>()).prop_map(|(pct, charging)| {
        PowerState::new(pct.map(f64::from), charging).expect("0..=100 is a battery level")
    })
}

const POWER: DevicePower = DevicePower {
    active_w: 1.0,
    idle_w: 0.15,
    tx_nj_per_byte: 1000.0,
    rx_nj_per_byte: 350.0,
};

/// The formula, recomputed from the specification (latency ms, energy mJ).
fn brute(plan: &v1::Plan, c: &Conditions) -> (f64, f64) {
    let index = |code: i32| (0..3).find(|&t| tier(t) == code).expect("a tier");
    let mut latency = 0.0;
    let mut device = 0.0;
    let mut remote = [false; 3];
    for s in &plan.stages {
        let t = index(s.tier);
        latency += s.predicted_ms * c.speed[t];
        if t == 0 {
            device += s.predicted_ms * c.speed[t];
        } else {
            remote[t] = true;
        }
    }
    for (t, used) in remote.iter().enumerate() {
        if *used {
            latency += c.queue_ms[t];
        }
    }
    let (mut sent, mut received) = (0.0, 0.0);
    for x in &plan.transfers {
        let i = x.link as usize - 1;
        let l = c.links[i].expect("every link is known");
        latency += l.rtt_ms
            + x.up_bytes as f64 * 8.0 / (l.up_mbps * 1e3)
            + x.down_bytes as f64 * 8.0 / (l.down_mbps * 1e3);
        if x.link != v1::Link::EdgeCloud as i32 {
            sent += x.up_bytes as f64;
            received += x.down_bytes as f64;
        }
    }
    let energy = device * POWER.active_w
        + (latency - device) * POWER.idle_w
        + (sent * POWER.tx_nj_per_byte + received * POWER.rx_nj_per_byte) * 1e-6;
    (latency, energy)
}

fn table() -> impl Strategy<Value = v1::RouteTable> {
    (0usize..5, proptest::collection::vec(plan(), 0..7)).prop_map(|(level, mut plans)| {
        for (i, p) in plans.iter_mut().enumerate() {
            p.id = format!("p{i}");
        }
        v1::RouteTable {
            model: "m".into(),
            // 0 is unspecified (the model is then open).
            privacy: if level == 0 {
                0
            } else {
                wire(LEVELS[level - 1])
            },
            plans,
            ..Default::default()
        }
    })
}

fn constraints() -> impl Strategy<Value = Constraints> {
    (
        proptest::option::of(1u32..60),
        proptest::option::of(1u32..30),
        proptest::option::of(0usize..4),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(latency, energy, privacy, objective)| Constraints {
            latency_ms: latency.map(|l| f64::from(l) * 5.0),
            energy_mj: energy.map(|e| f64::from(e) * 2.0),
            privacy: privacy.map(|i| LEVELS[i]),
            objective: objective.map(|e| {
                if e {
                    Objective::Energy
                } else {
                    Objective::Latency
                }
            }),
            plan: None,
            local_only: false,
        })
}

fn allowed(table: &v1::RouteTable, plan: &v1::Plan, c: &Constraints) -> bool {
    let model = route::model_level(table);
    plan.satisfies.contains(&wire(model))
        && c.privacy.is_none_or(|p| plan.satisfies.contains(&wire(p)))
}

fn reachable(plan: &v1::Plan, down: &[bool; 4]) -> bool {
    plan.stages.iter().all(|s| {
        s.tier == tier(0)
            || s.nodes
                .iter()
                .any(|n| !down[n[1..].parse::<usize>().expect("n<digit>")])
    })
}

/// The objective and latency budget the specification gives a request.
fn policy(
    table: &v1::RouteTable,
    c: &Constraints,
    cond: &Conditions,
    state: &PowerState,
    down: &[bool; 4],
) -> (Objective, Option<f64>) {
    let low = !state.charging && state.battery_pct.is_some_and(|p| p < 20.0);
    let objective = c.objective.unwrap_or(if c.latency_ms.is_some() || low {
        Objective::Energy
    } else {
        Objective::Latency
    });
    let mut budget = c.latency_ms;
    if objective == Objective::Energy && budget.is_none() && low {
        let fastest = table
            .plans
            .iter()
            .filter(|p| allowed(table, p, c) && reachable(p, down))
            .map(|p| brute(p, cond).0)
            .fold(f64::INFINITY, f64::min);
        if fastest.is_finite() {
            budget = Some(fastest * 1.25);
        }
    }
    (objective, budget)
}

type Key = (bool, bool, f64, f64);

/// The specification's order: reachable first, then plans meeting every budget, then by how far a plan
/// misses, then the objective.
fn key(plan: &v1::Plan, c: &Constraints, s: &Spec) -> Key {
    let (latency, energy) = brute(plan, &s.cond);
    let over = |v: f64, b: Option<f64>| b.map_or(0.0, |b| (v / b - 1.0).max(0.0));
    let m = over(latency, s.budget) + over(energy, c.energy_mj);
    let objective = match s.objective {
        Objective::Energy => energy,
        Objective::Latency => latency,
    };
    (!reachable(plan, &s.down), m > 0.0, m, objective)
}

struct Spec {
    cond: Conditions,
    down: [bool; 4],
    objective: Objective,
    budget: Option<f64>,
}

fn less(a: &Key, b: &Key) -> bool {
    (a.0, a.1)
        .cmp(&(b.0, b.1))
        .then(a.2.total_cmp(&b.2))
        .then(a.3.total_cmp(&b.3))
        .is_lt()
}

/// Brute force: the first allowed plan whose key no other allowed plan beats.
fn oracle<'t>(table: &'t v1::RouteTable, c: &Constraints, s: &Spec) -> Option<&'t v1::Plan> {
    let candidates: Vec<&v1::Plan> = table
        .plans
        .iter()
        .filter(|p| allowed(table, p, c))
        .collect();
    candidates
        .iter()
        .find(|p| {
            let k = key(p, c, s);
            candidates.iter().all(|q| !less(&key(q, c, s), &k))
        })
        .copied()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn choose_is_the_brute_force_argmin_and_the_head_of_explain(
        table in table(),
        c in constraints(),
        cond in conditions(),
        state in power_state(),
        down in proptest::array::uniform4(any::<bool>()),
    ) {
        let is_down = |n: &str| down[n[1..].parse::<usize>().expect("n<digit>")];
        let situation = Situation { conditions: &cond, power: &POWER, state, measured: &|_| None, local: &|_| true };
        let (objective, budget) = policy(&table, &c, &cond, &state, &down);
        let spec = Spec { cond, down, objective, budget };
        let chosen = route::choose(&table, &c, &situation, is_down);
        prop_assert_eq!(
            chosen.map(|(p, _)| p.id.clone()),
            oracle(&table, &c, &spec).map(|p| p.id.clone())
        );
        if let Some((p, prediction)) = chosen {
            let (latency, energy) = brute(p, &cond);
            prop_assert!(close(prediction.latency_ms, latency), "{} vs {}", prediction.latency_ms, latency);
            prop_assert!(close(prediction.energy_mj, energy), "{} vs {}", prediction.energy_mj, energy);
        }
        let decision = route::explain(&table, &c, &situation, is_down);
        prop_assert_eq!(decision.objective, objective);
        prop_assert_eq!(
            chosen.map(|(p, _)| p.id.clone()),
            decision.ranked.first().map(|c| c.plan_id.clone())
        );
        prop_assert_eq!(
            route::choose(&table, &c, &situation, is_down).map(|(p, _)| p.id.clone()),
            chosen.map(|(p, _)| p.id.clone()),
            "deterministic"
        );
    }

    #[test]
    fn explain_ranks_exactly_the_allowed_plans_in_the_specified_order(
        table in table(),
        c in constraints(),
        cond in conditions(),
        state in power_state(),
        down in proptest::array::uniform4(any::<bool>()),
    ) {
        let is_down = |n: &str| down[n[1..].parse::<usize>().expect("n<digit>")];
        let situation = Situation { conditions: &cond, power: &POWER, state, measured: &|_| None, local: &|_| true };
        let (objective, budget) = policy(&table, &c, &cond, &state, &down);
        let spec = Spec { cond, down, objective, budget };
        let ranked: Vec<&v1::Plan> = route::explain(&table, &c, &situation, is_down)
            .ranked
            .iter()
            .map(|r| table.plans.iter().find(|p| p.id == r.plan_id).expect("a plan of the table"))
            .collect();
        let mut want: Vec<&str> = table
            .plans
            .iter()
            .filter(|p| allowed(&table, p, &c))
            .map(|p| p.id.as_str())
            .collect();
        let mut got: Vec<&str> = ranked.iter().map(|p| p.id.as_str()).collect();
        for p in &ranked {
            prop_assert!(allowed(&table, p, &c), "plan {} violates a privacy level", p.id);
        }
        for pair in ranked.windows(2) {
            let (a, b) = (key(pair[0], &c, &spec), key(pair[1], &c, &spec));
            prop_assert!(!less(&b, &a), "{} ranked before {}", pair[0].id, pair[1].id);
            if !less(&a, &b) {
                // Equal keys keep the table's order.
                let index = |id: &str| table.plans.iter().position(|p| p.id == id);
                prop_assert!(index(&pair[0].id) < index(&pair[1].id), "tie broken against table order");
            }
        }
        want.sort_unstable();
        got.sort_unstable();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn a_plan_meeting_every_budget_beats_any_that_misses(
        table in table(),
        c in constraints(),
        cond in conditions(),
    ) {
        let all_up = [false; 4];
        let state = PowerState::default();
        let situation = Situation { conditions: &cond, power: &POWER, state, measured: &|_| None, local: &|_| true };
        let (objective, budget) = policy(&table, &c, &cond, &state, &all_up);
        let spec = Spec { cond, down: all_up, objective, budget };
        let meets = |p: &v1::Plan| {
            let k = key(p, &c, &spec);
            !k.0 && !k.1
        };
        let any_meets = table.plans.iter().any(|p| allowed(&table, p, &c) && meets(p));
        if let Some((chosen, _)) = route::choose(&table, &c, &situation, |_| false) {
            if any_meets {
                prop_assert!(meets(chosen), "{} misses a budget while another plan meets them all", chosen.id);
            }
        } else {
            prop_assert!(table.plans.iter().all(|p| !allowed(&table, p, &c)), "a plan was allowed but none chosen");
        }
    }

    #[test]
    fn low_battery_saves_energy_within_a_quarter_more_latency(
        table in table(),
        cond in conditions(),
        pct in 0u32..20,
    ) {
        let state = PowerState::new(Some(f64::from(pct)), false).expect("a level");
        let c = Constraints::default();
        let situation = Situation { conditions: &cond, power: &POWER, state, measured: &|_| None, local: &|_| true };
        let Some((chosen, prediction)) = route::choose(&table, &c, &situation, |_| false) else {
            return Ok(());
        };
        let allowed_plans: Vec<&v1::Plan> = table
            .plans
            .iter()
            .filter(|p| allowed(&table, p, &c) && reachable(p, &[false; 4]))
            .collect();
        if allowed_plans.is_empty() {
            return Ok(());
        }
        let fastest = allowed_plans.iter().map(|p| brute(p, &cond).0).fold(f64::INFINITY, f64::min);
        prop_assert!(prediction.latency_ms <= fastest * 1.25 + 1e-9, "{} is more than 1.25 × {fastest}", chosen.id);
        for p in allowed_plans {
            let (latency, energy) = brute(p, &cond);
            if latency <= fastest * 1.25 {
                prop_assert!(prediction.energy_mj <= energy + 1e-9, "{} saves more energy than {}", p.id, chosen.id);
            }
        }
    }

    #[test]
    fn a_device_stage_not_here_costs_its_download_and_local_only_skips_the_plan(
        table in table(),
        c in constraints(),
        cond in conditions(),
        state in power_state(),
        picks in proptest::collection::vec(0usize..4, 32),
        here in proptest::array::uniform4(any::<bool>()),
    ) {
        // Device stages drawn from four stage files of different sizes, some of them here.
        let mut table = table;
        let mut k = 0;
        for p in &mut table.plans {
            for s in p.stages.iter_mut().filter(|s| s.tier == tier(0)) {
                let d = picks[k % picks.len()];
                k += 1;
                s.digest = format!("d{d}");
                s.size_bytes = (d as u64 + 1) * 250_000;
            }
        }
        let local = |d: &str| here[d[1..].parse::<usize>().expect("d<digit>")];
        let situation = Situation { conditions: &cond, power: &POWER, state, measured: &|_| None, local: &local };
        let decision = route::explain(&table, &c, &situation, |_| false);
        for cand in &decision.ranked {
            let p = table.plans.iter().find(|p| p.id == cand.plan_id).expect("a plan of the table");
            let missing: u64 = p
                .stages
                .iter()
                .filter(|s| s.tier == tier(0) && !local(&s.digest))
                .map(|s| s.size_bytes)
                .sum();
            prop_assert_eq!(cand.download_bytes, missing);
            let (latency, energy) = brute(p, &cond);
            // The device's link to the edge is always known here; the download crosses it.
            let l = cond.links[0].expect("a device-edge link");
            let wait = if missing > 0 { l.rtt_ms + missing as f64 * 8.0 / (l.down_mbps * 1e3) } else { 0.0 };
            prop_assert!(close(cand.predicted.latency_ms, latency + wait), "{} vs {}", cand.predicted.latency_ms, latency + wait);
            let more = missing as f64 * POWER.rx_nj_per_byte * 1e-6 + POWER.idle_w * wait;
            prop_assert!(close(cand.predicted.energy_mj, energy + more), "{} vs {}", cand.predicted.energy_mj, energy + more);
        }
        let strict = Constraints { local_only: true, ..c.clone() };
        if let Some((p, _)) = route::choose(&table, &strict, &situation, |_| false) {
            prop_assert!(p.stages.iter().filter(|s| s.tier == tier(0)).all(|s| local(&s.digest)));
        }
        let strict_ranked = route::explain(&table, &strict, &situation, |_| false).ranked;
        prop_assert!(strict_ranked.iter().all(|c| c.download_bytes == 0));
        prop_assert_eq!(
            strict_ranked.len(),
            decision.ranked.iter().filter(|c| c.download_bytes == 0).count()
        );
    }
}
