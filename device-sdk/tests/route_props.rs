//! Property tests of the per-request decision (`route::choose` and `route::rank`) against a brute-force
//! argmin written from the specification: privacy is never violated, a reachable plan meeting every budget
//! always beats one that misses, and ties go to the earlier plan of the table (deterministically).

use proptest::prelude::*;
use strata_device_sdk::Privacy;
use strata_device_sdk::route::{self, Constraints};
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

/// A random plan: which levels it satisfies, its predictions (small integers, so ties happen), and per remote
/// stage the nodes that hold it (drawn from n0..n3).
fn plan() -> impl Strategy<Value = v1::Plan> {
    (
        proptest::collection::vec(any::<bool>(), 4),
        0u32..6,
        0u32..6,
        proptest::collection::vec(
            (0usize..3, proptest::collection::vec(0usize..4, 0..3)),
            1..4,
        ),
    )
        .prop_map(|(levels, latency, energy, stages)| v1::Plan {
            id: String::new(),
            satisfies: LEVELS
                .iter()
                .zip(&levels)
                .filter(|(_, on)| **on)
                .map(|(&l, _)| wire(l))
                .collect(),
            objectives: vec![],
            latency_ms: f64::from(latency) * 10.0,
            device_energy_mj: f64::from(energy) * 5.0,
            device_bytes_sent: 0,
            stages: stages
                .into_iter()
                .enumerate()
                .map(|(i, (t, nodes))| v1::Stage {
                    index: i as u32,
                    tier: tier(t),
                    nodes: if t == 0 {
                        vec![]
                    } else {
                        nodes.into_iter().map(|n| format!("n{n}")).collect()
                    },
                    ..Default::default()
                })
                .collect(),
        })
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
    )
        .prop_map(|(latency, energy, privacy)| Constraints {
            latency_ms: latency.map(f64::from),
            energy_mj: energy.map(f64::from),
            privacy: privacy.map(|i| LEVELS[i]),
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

fn miss(plan: &v1::Plan, c: &Constraints) -> f64 {
    let over = |v: f64, b: Option<f64>| b.map_or(0.0, |b| (v / b - 1.0).max(0.0));
    over(plan.latency_ms, c.latency_ms) + over(plan.device_energy_mj, c.energy_mj)
}

/// The specification's order: reachable first, then plans meeting every budget, then by how far a plan
/// misses, then the objective (device energy under a latency budget, latency otherwise).
fn key(plan: &v1::Plan, c: &Constraints, down: &[bool; 4]) -> (bool, bool, f64, f64) {
    let m = miss(plan, c);
    let objective = if c.latency_ms.is_some() {
        plan.device_energy_mj
    } else {
        plan.latency_ms
    };
    (!reachable(plan, down), m > 0.0, m, objective)
}

fn less(a: &(bool, bool, f64, f64), b: &(bool, bool, f64, f64)) -> bool {
    (a.0, a.1)
        .cmp(&(b.0, b.1))
        .then(a.2.total_cmp(&b.2))
        .then(a.3.total_cmp(&b.3))
        .is_lt()
}

/// Brute force: the first allowed plan whose key no other allowed plan beats.
fn oracle<'t>(
    table: &'t v1::RouteTable,
    c: &Constraints,
    down: &[bool; 4],
) -> Option<&'t v1::Plan> {
    let candidates: Vec<&v1::Plan> = table
        .plans
        .iter()
        .filter(|p| allowed(table, p, c))
        .collect();
    candidates
        .iter()
        .find(|p| {
            let k = key(p, c, down);
            candidates.iter().all(|q| !less(&key(q, c, down), &k))
        })
        .copied()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn choose_is_the_brute_force_argmin_and_the_head_of_rank(
        table in table(),
        c in constraints(),
        down in proptest::array::uniform4(any::<bool>()),
    ) {
        let is_down = |n: &str| down[n[1..].parse::<usize>().expect("n<digit>")];
        let chosen = route::choose(&table, &c, is_down).map(|p| p.id.clone());
        prop_assert_eq!(&chosen, &oracle(&table, &c, &down).map(|p| p.id.clone()));
        let ranked = route::rank(&table, &c, is_down);
        prop_assert_eq!(&chosen, &ranked.first().map(|p| p.id.clone()));
        prop_assert_eq!(
            route::choose(&table, &c, is_down).map(|p| p.id.clone()),
            chosen,
            "deterministic"
        );
    }

    #[test]
    fn rank_holds_exactly_the_allowed_plans_in_the_specified_order(
        table in table(),
        c in constraints(),
        down in proptest::array::uniform4(any::<bool>()),
    ) {
        let is_down = |n: &str| down[n[1..].parse::<usize>().expect("n<digit>")];
        let ranked = route::rank(&table, &c, is_down);
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
            let (a, b) = (key(pair[0], &c, &down), key(pair[1], &c, &down));
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
    ) {
        let all_up = [false; 4];
        let meets = |p: &v1::Plan| reachable(p, &all_up) && miss(p, &c) == 0.0;
        let any_meets = table.plans.iter().any(|p| allowed(&table, p, &c) && meets(p));
        if let Some(chosen) = route::choose(&table, &c, |_| false) {
            if any_meets {
                prop_assert!(meets(chosen), "{} misses a budget while another plan meets them all", chosen.id);
            }
        } else {
            prop_assert!(table.plans.iter().all(|p| !allowed(&table, p, &c)), "a plan was allowed but none chosen");
        }
    }
}
