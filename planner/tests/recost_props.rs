//! Re-costing (`strata_core::recost`, what devices run per request) against the partitioner's own evaluation:
//! for random graphs, placements, links, device power and tier speeds, the plan reduced to stage times and
//! per-hop transfers predicts exactly what `partition::evaluate` computes on the full problem.

use proptest::prelude::*;
use strata_core::Tier;
use strata_core::recost::{
    Conditions, DevicePower, Link, LinkState, PlanCost, StageCost, Transfer,
};
use strata_planner::cost::set_links;
use strata_planner::partition::*;

#[derive(Clone, Debug)]
struct Case {
    /// Per node: ms on each tier at speed 1.
    ms: Vec<[f64; TIER_COUNT]>,
    tensors: Vec<Tensor>,
    /// A raw tier per node, made monotone below.
    tier: Vec<u8>,
    links: [Option<LinkState>; 3],
    power: DevicePower,
    speed: [f64; 3],
}

fn link() -> impl Strategy<Value = Option<LinkState>> {
    (0.0f64..80.0, -1.0f64..3.0, -1.0f64..3.0).prop_map(|(rtt_ms, up, down)| {
        Some(LinkState {
            rtt_ms,
            up_mbps: 10f64.powf(up),
            down_mbps: 10f64.powf(down),
        })
    })
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=14)
        .prop_flat_map(|n| {
            (
                prop::collection::vec([0.0f64..20.0, 0.0f64..5.0, 0.0f64..1.0], n),
                prop::collection::vec(
                    (
                        prop::option::weighted(0.8, 0..n),
                        prop::collection::vec(0..n, 0..=3),
                        (2.0f64..6.5).prop_map(|e| 10f64.powf(e)),
                        prop::bool::weighted(0.2),
                    ),
                    1..=2 * n,
                ),
                prop::collection::vec(0u8..3, n),
                [link(), link(), link()],
                (0.0f64..3.0, 0.0f64..0.5, 0.0f64..2000.0, 0.0f64..800.0),
                [0.2f64..5.0, 0.2f64..5.0, 0.2f64..5.0],
            )
        })
        .prop_map(|(ms, raw, tier, links, (a, i, tx, rx), speed)| {
            let tensors = raw
                .into_iter()
                .map(|(producer, consumers, bytes, out)| {
                    // Consumers after the producer, so node order is topological.
                    let mut consumers: Vec<usize> = consumers
                        .into_iter()
                        .filter(|&c| producer.is_none_or(|p| c > p))
                        .collect();
                    consumers.sort_unstable();
                    consumers.dedup();
                    Tensor {
                        producer,
                        consumers,
                        is_model_output: out && producer.is_some(),
                        bytes,
                    }
                })
                .collect();
            Case {
                ms,
                tensors,
                tier,
                links,
                power: DevicePower {
                    active_w: a,
                    idle_w: i,
                    tx_nj_per_byte: tx,
                    rx_nj_per_byte: rx,
                },
                speed,
            }
        })
}

/// The tiers made monotone: every node runs at or above each producer of its inputs.
fn monotone(case: &Case) -> Vec<u8> {
    let mut tier = case.tier.clone();
    for v in 0..tier.len() {
        for t in &case.tensors {
            if let Some(p) = t.producer
                && t.consumers.contains(&v)
            {
                tier[v] = tier[v].max(tier[p]);
            }
        }
    }
    tier
}

/// The full problem at the given speeds, as the planner builds it (energy from power).
fn problem(case: &Case, speed: [f64; 3]) -> Problem {
    let latency: Vec<[f64; TIER_COUNT]> = case
        .ms
        .iter()
        .map(|row| [0, 1, 2].map(|t| row[t] * speed[t]))
        .collect();
    let energy = latency
        .iter()
        .map(|row| {
            [0, 1, 2].map(|t| {
                row[t]
                    * if t == 0 {
                        case.power.active_w
                    } else {
                        case.power.idle_w
                    }
            })
        })
        .collect();
    let mut problem = Problem {
        node_count: case.ms.len(),
        tensors: case.tensors.clone(),
        param_bytes: vec![0.0; case.ms.len()],
        tier_present: [true; TIER_COUNT],
        latency: CostLayer {
            node_cost: latency,
            hop: Default::default(),
        },
        energy: CostLayer {
            node_cost: energy,
            hop: Default::default(),
        },
    };
    set_links(&mut problem, &case.links, &case.power);
    problem
}

/// What a route table carries for the placement: stage times at speed 1 and the transfers.
fn plan_cost(case: &Case, tier: &[u8]) -> PlanCost {
    let nominal = problem(case, [1.0; 3]);
    let mut stages = Vec::new();
    for t in Tier::ALL {
        let nodes: Vec<usize> = (0..tier.len())
            .filter(|&v| usize::from(tier[v]) == t.index())
            .collect();
        if !nodes.is_empty() {
            stages.push(StageCost {
                tier: t,
                ms: nodes.iter().map(|&v| case.ms[v][t.index()]).sum(),
                measured: false,
            });
        }
    }
    let transfers = transfers(&nominal, tier)
        .into_iter()
        .map(|h| Transfer {
            link: Link::between(Tier::ALL[h.from], Tier::ALL[h.to]).expect("two tiers"),
            up_bytes: h.up,
            down_bytes: h.down,
        })
        .collect();
    PlanCost { stages, transfers }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn recosting_equals_the_partitioners_evaluation(case in case()) {
        let tier = monotone(&case);
        let cost = plan_cost(&case, &tier);
        for speed in [[1.0; 3], case.speed] {
            let truth = evaluate(&problem(&case, speed), &tier);
            prop_assert!(truth.monotone && truth.allowed);
            let mut conditions = Conditions::nominal(case.links);
            conditions.speed = speed;
            let p = cost.predict(&conditions, &case.power);
            prop_assert!(close(p.latency_ms, truth.latency_ms), "latency {} vs {}", p.latency_ms, truth.latency_ms);
            prop_assert!(close(p.energy_mj, truth.device_energy_mj), "energy {} vs {}", p.energy_mj, truth.device_energy_mj);
        }
    }
}
