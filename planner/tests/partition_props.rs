//! Property tests of the tier partitioner against the brute-force oracle, plus spec-style
//! examples of the cost model.

use proptest::prelude::*;
use strata_planner::partition::*;

const INF: f64 = f64::INFINITY;

// ---------------------------------------------------------------------------------------------
// Random problems
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct NodeSpec {
    latency: [f64; TIER_COUNT],
    energy: [f64; TIER_COUNT],
    param_bytes: f64,
    /// Output tensors: (consumer offsets, bytes, is_model_output).
    outputs: Vec<(Vec<usize>, f64, bool)>,
}

/// A node cost in 0.01..5, forbidden (infinite) once in `forbidden_one_in`.
fn cost(forbidden_one_in: u32) -> impl Strategy<Value = f64> {
    prop_oneof![forbidden_one_in - 1 => 0.01f64..5.0, 1 => Just(INF)]
}

fn bytes() -> impl Strategy<Value = f64> {
    (3.0f64..7.0).prop_map(|e| 10f64.powf(e))
}

fn node_spec(forbidden_one_in: u32) -> impl Strategy<Value = NodeSpec> {
    let c = move || cost(forbidden_one_in);
    (
        [c(), c(), c()],
        [c(), c(), c()],
        bytes(),
        prop::collection::vec(
            (
                prop::collection::vec(prop_oneof![3 => Just(1usize), 2 => 2usize..7], 0..=3),
                bytes(),
                prop::bool::weighted(0.15),
            ),
            1..=2,
        ),
    )
        .prop_map(|(latency, energy, param_bytes, outputs)| NodeSpec {
            latency,
            energy,
            param_bytes,
            outputs,
        })
}

fn hop() -> impl Strategy<Value = HopCost> {
    (0.0f64..3.0, 0.0f64..2e-6, 0.0f64..2e-6).prop_map(|(fixed, up_per_byte, down_per_byte)| {
        HopCost {
            fixed,
            up_per_byte,
            down_per_byte,
        }
    })
}

/// Random hop costs, with device->cloud lowered to satisfy the triangle inequality.
fn hops() -> impl Strategy<Value = [[HopCost; TIER_COUNT]; TIER_COUNT]> {
    (hop(), hop(), hop()).prop_map(|(h01, h12, h02)| {
        let mut hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
        hop[0][1] = h01;
        hop[1][2] = h12;
        hop[0][2] = HopCost {
            fixed: h02.fixed.min(h01.fixed + h12.fixed),
            up_per_byte: h02.up_per_byte.min(h01.up_per_byte + h12.up_per_byte),
            down_per_byte: h02.down_per_byte.min(h01.down_per_byte + h12.down_per_byte),
        };
        hop
    })
}

fn problem() -> impl Strategy<Value = Problem> {
    problem_with(1..=12, 20)
}

fn problem_with(
    nodes: std::ops::RangeInclusive<usize>,
    forbidden_one_in: u32,
) -> impl Strategy<Value = Problem> {
    nodes
        .prop_flat_map(move |n| {
            (
                prop::collection::vec(node_spec(forbidden_one_in), n),
                prop::collection::vec(
                    (
                        prop::collection::vec(0..n, 0..=3),
                        bytes(),
                        prop::bool::weighted(0.1),
                    ),
                    1..=3,
                ),
                (prop::bool::weighted(0.8), prop::bool::weighted(0.8)),
                hops(),
                hops(),
            )
        })
        .prop_map(|(nodes, inputs, (edge, cloud), latency_hop, energy_hop)| {
            let n = nodes.len();
            let mut tensors = Vec::new();
            for (consumers, bytes, is_model_output) in inputs {
                let mut consumers = consumers;
                consumers.sort_unstable();
                consumers.dedup();
                tensors.push(Tensor {
                    producer: None,
                    consumers,
                    is_model_output,
                    bytes,
                });
            }
            for (v, node) in nodes.iter().enumerate() {
                for (offsets, bytes, output) in &node.outputs {
                    let mut consumers: Vec<usize> =
                        offsets.iter().map(|o| v + o).filter(|&c| c < n).collect();
                    consumers.sort_unstable();
                    consumers.dedup();
                    tensors.push(Tensor {
                        producer: Some(v),
                        consumers,
                        is_model_output: *output || v + 1 == n,
                        bytes: *bytes,
                    });
                }
            }
            Problem {
                node_count: n,
                tensors,
                param_bytes: nodes.iter().map(|s| s.param_bytes).collect(),
                tier_present: [true, edge, cloud],
                latency: CostLayer {
                    node_cost: nodes.iter().map(|s| s.latency).collect(),
                    hop: latency_hop,
                },
                energy: CostLayer {
                    node_cost: nodes.iter().map(|s| s.energy).collect(),
                    hop: energy_hop,
                },
            }
        })
}

/// Random constraint *factors*, turned into budgets/caps relative to the problem in the test.
#[derive(Clone, Debug)]
struct ConstraintSpec {
    objective: Objective,
    budget_factor: Option<f64>,
    cap_factors: [Option<f64>; TIER_COUNT],
}

fn constraint_spec() -> impl Strategy<Value = ConstraintSpec> {
    (
        prop_oneof![Just(Objective::Latency), Just(Objective::Energy)],
        prop::option::weighted(0.6, 0.95f64..2.0),
        [
            prop::option::weighted(0.4, 0.02f64..0.8),
            prop::option::weighted(0.4, 0.02f64..0.8),
            prop::option::weighted(0.4, 0.02f64..0.8),
        ],
    )
        .prop_map(|(objective, budget_factor, cap_factors)| ConstraintSpec {
            objective,
            budget_factor,
            cap_factors,
        })
}

/// Each node on the lowest allowed tier its producers permit (exists iff any valid placement
/// exists).
fn lowest_placement(problem: &Problem) -> Option<Vec<u8>> {
    let mut tier = vec![0u8; problem.node_count];
    for v in 0..problem.node_count {
        let need = problem
            .tensors
            .iter()
            .filter(|t| t.consumers.contains(&v))
            .filter_map(|t| t.producer.map(|p| tier[p]))
            .max()
            .unwrap_or(0);
        tier[v] = (need..TIER_COUNT as u8).find(|&t| {
            let t = usize::from(t);
            problem.tier_present[t]
                && problem.latency.node_cost[v][t].is_finite()
                && problem.energy.node_cost[v][t].is_finite()
        })?;
    }
    Some(tier)
}

/// Concrete constraints from a spec: the budget relative to the fastest plan, caps relative to all the
/// bytes in the graph. None when the graph has no plan at all.
fn constraints_for(problem: &Problem, spec: &ConstraintSpec) -> Option<Constraints> {
    let fastest = brute_force(problem, &Constraints::unconstrained(Objective::Latency)).ok()?;
    let total: f64 = problem.param_bytes.iter().sum::<f64>()
        + problem.tensors.iter().map(|t| t.bytes).sum::<f64>();
    Some(Constraints {
        objective: spec.objective,
        latency_budget_ms: spec.budget_factor.map(|f| f * fastest.latency_ms),
        memory_cap_bytes: spec.cap_factors.map(|f| f.map(|f| f * total)),
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

/// Checks the invariants every returned placement must satisfy.
fn check_placement(problem: &Problem, p: &Placement) -> Result<(), TestCaseError> {
    prop_assert_eq!(p.tier.len(), problem.node_count);
    for tensor in &problem.tensors {
        if let Some(u) = tensor.producer {
            for &c in &tensor.consumers {
                prop_assert!(p.tier[u] <= p.tier[c], "not monotone: {u} -> {c}");
            }
        }
    }
    for (v, &t) in p.tier.iter().enumerate() {
        let t = usize::from(t);
        prop_assert!(problem.tier_present[t], "node {v} on absent tier {t}");
        prop_assert!(problem.latency.node_cost[v][t].is_finite());
        prop_assert!(problem.energy.node_cost[v][t].is_finite());
    }
    let ev = evaluate(problem, &p.tier);
    prop_assert!(ev.monotone && ev.allowed);
    prop_assert!(close(ev.latency_ms, p.latency_ms));
    prop_assert!(close(ev.device_energy_mj, p.device_energy_mj));
    for t in 0..TIER_COUNT {
        prop_assert!(close(ev.memory_bytes[t], p.memory_bytes[t]));
    }
    prop_assert!(p.lower_bound <= p.objective_value + 1e-9 * (1.0 + p.objective_value.abs()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Unconstrained: solve is exact and matches brute force for both objectives.
    #[test]
    fn solve_matches_brute_force_unconstrained(problem in problem()) {
        for objective in [Objective::Latency, Objective::Energy] {
            let c = Constraints::unconstrained(objective);
            match (solve(&problem, &c), brute_force(&problem, &c)) {
                (Ok(s), Ok(b)) => {
                    prop_assert!(close(s.objective_value, b.objective_value),
                        "{objective:?}: solve {} ({:?}) vs brute force {} ({:?})",
                        s.objective_value, s.tier, b.objective_value, b.tier);
                    prop_assert!(s.exact);
                    prop_assert!(close(s.lower_bound, s.objective_value));
                    check_placement(&problem, &s)?;
                    check_placement(&problem, &b)?;
                }
                (Err(PartitionError::Infeasible(_)), Err(PartitionError::Infeasible(_))) => {}
                (s, b) => prop_assert!(false, "solve {s:?} vs brute force {b:?}"),
            }
        }
    }

    /// Constrained: solve finds a feasible plan iff one exists, never beats the optimum, and
    /// its lower bound is valid.
    #[test]
    fn solve_respects_constraints_like_brute_force(
        problem in problem(),
        spec in constraint_spec(),
    ) {
        let Some(c) = constraints_for(&problem, &spec) else {
            return Ok(());
        };
        let eps = |x: f64| 1e-6 * (1.0 + x.abs());
        match (solve(&problem, &c), brute_force(&problem, &c)) {
            (Ok(s), Ok(b)) => {
                check_placement(&problem, &s)?;
                let ev = evaluate(&problem, &s.tier);
                prop_assert!(ev.meets(&c), "solve's plan violates {c:?}: {ev:?}");
                prop_assert!(s.objective_value >= b.objective_value - eps(b.objective_value));
                prop_assert!(s.lower_bound <= b.objective_value + eps(b.objective_value),
                    "lower bound {} above optimum {}", s.lower_bound, b.objective_value);
                if s.exact {
                    prop_assert!(close(s.objective_value, b.objective_value));
                }
            }
            (Err(PartitionError::Infeasible(_)), Err(PartitionError::Infeasible(_))) => {}
            (s, b) => prop_assert!(false, "solve {s:?} vs brute force {b:?}"),
        }
    }

    /// The Lagrangian search alone (no exhaustive fallback): any plan it returns is feasible
    /// and its lower bound is valid.
    #[test]
    fn lagrangian_lower_bound_is_valid(problem in problem(), spec in constraint_spec()) {
        let Some(c) = constraints_for(&problem, &spec) else {
            return Ok(());
        };
        let options = SolveOptions {
            exhaustive_search_max_nodes: 0,
            search_work_limit: 0,
            ..SolveOptions::default()
        };
        let eps = |x: f64| 1e-6 * (1.0 + x.abs());
        match (solve_with(&problem, &c, &options), brute_force(&problem, &c)) {
            (Ok(s), Ok(b)) => {
                check_placement(&problem, &s)?;
                prop_assert!(evaluate(&problem, &s.tier).meets(&c));
                prop_assert!(s.objective_value >= b.objective_value - eps(b.objective_value));
                prop_assert!(s.lower_bound <= b.objective_value + eps(b.objective_value),
                    "lower bound {} above optimum {}", s.lower_bound, b.objective_value);
                if s.exact {
                    prop_assert!(close(s.objective_value, b.objective_value));
                }
            }
            (Err(PartitionError::Infeasible(_)), Err(PartitionError::Infeasible(_))) => {}
            (Err(PartitionError::SearchLimit { .. }), _) => {}
            (s, b) => prop_assert!(false, "solve {s:?} vs brute force {b:?}"),
        }
    }

    /// On graphs too large for brute force, the unconstrained optimum admits no improving
    /// single-node move and no improving move of a whole stage to another tier.
    #[test]
    fn solve_is_locally_optimal_on_larger_graphs(problem in problem_with(15..=120, 400)) {
        for objective in [Objective::Latency, Objective::Energy] {
            let c = Constraints::unconstrained(objective);
            let s = match solve(&problem, &c) {
                Ok(s) => s,
                Err(PartitionError::Infeasible(_)) => {
                    prop_assert!(lowest_placement(&problem).is_none());
                    continue;
                }
                Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
            };
            check_placement(&problem, &s)?;
            prop_assert!(s.exact);
            let eps = 1e-9 * (1.0 + s.objective_value.abs());
            let mut moves: Vec<Vec<u8>> = Vec::new();
            for v in 0..problem.node_count {
                for t in 0..TIER_COUNT as u8 {
                    let mut x = s.tier.clone();
                    x[v] = t;
                    moves.push(x);
                }
            }
            for a in 0..TIER_COUNT as u8 {
                for b in 0..TIER_COUNT as u8 {
                    moves.push(s.tier.iter().map(|&t| if t == a { b } else { t }).collect());
                }
            }
            moves.extend(lowest_placement(&problem));
            for x in moves {
                let ev = evaluate(&problem, &x);
                if ev.monotone && ev.allowed {
                    prop_assert!(ev.objective(objective) >= s.objective_value - eps,
                        "{objective:?}: {x:?} costs {} < solve's {}",
                        ev.objective(objective), s.objective_value);
                }
            }
        }
    }

    /// Under memory caps and budgets on graphs too large for brute force, the plan is never worse
    /// than running everything on one tier, when that meets the constraints.
    #[test]
    fn constrained_solve_is_never_worse_than_not_splitting(
        problem in problem_with(15..=120, 400),
        spec in constraint_spec(),
    ) {
        let Some(fastest) = solve(&problem, &Constraints::unconstrained(Objective::Latency)).ok() else {
            return Ok(());
        };
        let total: f64 = problem.param_bytes.iter().sum::<f64>()
            + problem.tensors.iter().map(|t| t.bytes).sum::<f64>();
        let c = Constraints {
            objective: spec.objective,
            latency_budget_ms: spec.budget_factor.map(|f| f * fastest.latency_ms),
            memory_cap_bytes: spec.cap_factors.map(|f| f.map(|f| f * total)),
        };
        for t in 0..TIER_COUNT as u8 {
            let x = vec![t; problem.node_count];
            let ev = evaluate(&problem, &x);
            if !(ev.monotone && ev.allowed && ev.meets(&c)) {
                continue;
            }
            match solve(&problem, &c) {
                Ok(s) => {
                    let eps = 1e-9 * (1.0 + s.objective_value.abs());
                    prop_assert!(s.objective_value <= ev.objective(c.objective) + eps,
                        "tier {t} alone costs {} < solve's {}", ev.objective(c.objective), s.objective_value);
                }
                Err(e) => prop_assert!(false, "tier {t} alone is feasible but solve says {e}"),
            }
        }
    }

    /// `evaluate` is consistent with the placements brute force reports.
    #[test]
    fn brute_force_plans_are_valid(problem in problem(), spec in constraint_spec()) {
        let c = Constraints {
            objective: spec.objective,
            latency_budget_ms: None,
            memory_cap_bytes: [None; TIER_COUNT],
        };
        if let Ok(b) = brute_force(&problem, &c) {
            check_placement(&problem, &b)?;
            prop_assert!(b.exact);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spec-style examples
// ---------------------------------------------------------------------------------------------

fn hop_costs(h01: HopCost, h12: HopCost, h02: HopCost) -> [[HopCost; TIER_COUNT]; TIER_COUNT] {
    let mut hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
    hop[0][1] = h01;
    hop[1][2] = h12;
    hop[0][2] = h02;
    hop
}

fn link(fixed: f64, per_byte: f64) -> HopCost {
    HopCost {
        fixed,
        up_per_byte: per_byte,
        down_per_byte: per_byte,
    }
}

/// A chain of `costs.len()` nodes fed by one model input, the last producing the model output.
fn chain(
    costs: &[[f64; TIER_COUNT]],
    bytes: f64,
    hop: [[HopCost; TIER_COUNT]; TIER_COUNT],
) -> Problem {
    let n = costs.len();
    let mut tensors = vec![Tensor {
        producer: None,
        consumers: vec![0],
        is_model_output: false,
        bytes,
    }];
    for v in 0..n {
        tensors.push(Tensor {
            producer: Some(v),
            consumers: if v + 1 < n { vec![v + 1] } else { vec![] },
            is_model_output: v + 1 == n,
            bytes,
        });
    }
    Problem {
        node_count: n,
        tensors,
        param_bytes: vec![1e6; n],
        tier_present: [true; TIER_COUNT],
        latency: CostLayer {
            node_cost: costs.to_vec(),
            hop,
        },
        energy: CostLayer {
            node_cost: costs.iter().map(|c| [c[0], 0.0, 0.0]).collect(),
            hop: hop_costs(link(0.0, 0.0), link(0.0, 0.0), link(0.0, 0.0)),
        },
    }
}

fn latency_only() -> Constraints {
    Constraints::unconstrained(Objective::Latency)
}

#[test]
fn cloud_wins_when_link_is_fast() {
    let fast = hop_costs(link(1.0, 1e-9), link(1.0, 1e-9), link(1.5, 1e-9));
    let problem = chain(&[[50.0, 20.0, 2.0]; 4], 1e5, fast);
    let p = solve(&problem, &latency_only()).expect("solvable");
    assert_eq!(p.tier, vec![2, 2, 2, 2]);
    assert!(p.exact);
    // 4 * 2 ms of compute, one fixed device->cloud hop, input up and output down.
    let expected = 8.0 + 1.5 + 2.0 * 1e5 * 1e-9;
    assert!((p.latency_ms - expected).abs() < 1e-9, "{}", p.latency_ms);
}

#[test]
fn device_only_when_network_is_slow() {
    let slow = hop_costs(link(100.0, 1e-3), link(100.0, 1e-3), link(150.0, 2e-3));
    let problem = chain(&[[5.0, 1.0, 0.1]; 4], 1e5, slow);
    let p = solve(&problem, &latency_only()).expect("solvable");
    assert_eq!(p.tier, vec![0, 0, 0, 0]);
    assert!((p.latency_ms - 20.0).abs() < 1e-9);
    assert_eq!(p.memory_bytes[1], 0.0);
    assert_eq!(p.memory_bytes[2], 0.0);
}

#[test]
fn tensor_with_two_remote_consumers_is_sent_once_per_hop() {
    // Node 0 (device only) produces X, consumed by nodes 1 and 2 (cloud only).
    let hop = hop_costs(link(1.0, 1e-6), link(2.0, 1e-6), link(3.0, 2e-6));
    let problem = Problem {
        node_count: 3,
        tensors: vec![
            Tensor {
                producer: Some(0),
                consumers: vec![1, 2],
                is_model_output: false,
                bytes: 1e6,
            },
            Tensor {
                producer: Some(1),
                consumers: vec![],
                is_model_output: false,
                bytes: 10.0,
            },
            Tensor {
                producer: Some(2),
                consumers: vec![],
                is_model_output: false,
                bytes: 10.0,
            },
        ],
        param_bytes: vec![0.0; 3],
        tier_present: [true; TIER_COUNT],
        latency: CostLayer {
            node_cost: vec![[1.0, INF, INF], [INF, INF, 1.0], [INF, INF, 1.0]],
            hop,
        },
        energy: CostLayer {
            node_cost: vec![[0.0; 3]; 3],
            hop: hop_costs(HopCost::default(), HopCost::default(), HopCost::default()),
        },
    };
    let p = solve(&problem, &latency_only()).expect("solvable");
    assert_eq!(p.tier, vec![0, 2, 2]);
    // 3 ms compute + device->cloud fixed 3 ms + X sent once: 1e6 * 2e-6 = 2 ms.
    assert!((p.latency_ms - 8.0).abs() < 1e-9, "{}", p.latency_ms);
    // Through the edge (when the edge runs a node), X crosses each of the two hops once.
    let mut via_edge = problem.clone();
    via_edge.latency.node_cost[1] = [INF, 1.0, INF];
    via_edge.tensors[0].consumers = vec![1, 2];
    let ev = evaluate(&via_edge, &[0, 1, 2]);
    // compute 3 + fixed 1 + 2 + X over 0->1 (1 ms) and 1->2 (1 ms).
    assert!((ev.latency_ms - 8.0).abs() < 1e-9, "{}", ev.latency_ms);
    let p = solve(&via_edge, &latency_only()).expect("solvable");
    assert_eq!(p.tier, vec![0, 1, 2]);
}

#[test]
fn outputs_return_to_device() {
    let hop = hop_costs(link(0.0, 1e-6), link(0.0, 1e-6), link(0.0, 2e-6));
    let problem = chain(&[[INF, 1.0, INF], [INF, INF, 1.0]], 1e6, hop);
    let ev = evaluate(&problem, &[1, 2]);
    // Input up 0->1 (1 ms), tensor 0 up 1->2 (1 ms), output down 1->2 and 0->1 (2 ms).
    assert!((ev.latency_ms - 6.0).abs() < 1e-9, "{}", ev.latency_ms);
    let p = solve(&problem, &latency_only()).expect("solvable");
    assert_eq!(p.tier, vec![1, 2]);
    assert!((p.latency_ms - 6.0).abs() < 1e-9);
}

#[test]
fn skipping_the_edge_uses_device_cloud_hop() {
    let hop = hop_costs(link(5.0, 1e-6), link(5.0, 1e-6), link(7.0, 1.5e-6));
    let problem = chain(&[[1.0, 9.0, INF], [20.0, 10.0, 1.0]], 1e6, hop);
    let ev = evaluate(&problem, &[0, 2]);
    // Compute 2, fixed 7, tensor 0 up 1.5, output down 1.5; the edge is not in the chain.
    assert!((ev.latency_ms - 12.0).abs() < 1e-9, "{}", ev.latency_ms);
    let p = solve(&problem, &latency_only()).expect("solvable");
    assert_eq!(p.tier, vec![0, 2]);
    assert!((p.latency_ms - 12.0).abs() < 1e-9);
}

#[test]
fn memory_counts_parameters_and_live_activations() {
    // 0 -> 1 -> 2 on the device, 0 also feeds 2 (skip connection).
    let hop = hop_costs(link(0.0, 0.0), link(0.0, 0.0), link(0.0, 0.0));
    let mut problem = chain(&[[1.0, 1.0, 1.0]; 3], 100.0, hop);
    problem.tensors[1].consumers = vec![1, 2];
    problem.param_bytes = vec![1000.0, 2000.0, 4000.0];
    let ev = evaluate(&problem, &[0, 0, 0]);
    // Step 0 holds the input and t0 (live until node 2); step 1 holds t0 and t1;
    // step 2 holds t0, t1 and the output t2 = 300.
    assert_eq!(ev.memory_bytes[0], 7000.0 + 300.0);
    // Node 2 on the cloud: the device keeps t0 and t1 live to the end of its stage (peak
    // 200); the cloud receives both as stage inputs and produces t2.
    let ev = evaluate(&problem, &[0, 0, 2]);
    assert_eq!(ev.memory_bytes[0], 3000.0 + 200.0);
    assert_eq!(ev.memory_bytes[2], 4000.0 + 300.0);
}

#[test]
fn triangle_violation_is_rejected() {
    let hop = hop_costs(link(1.0, 1e-6), link(1.0, 1e-6), link(3.0, 1e-6));
    let problem = chain(&[[1.0, 1.0, 1.0]; 2], 1e3, hop);
    let err = solve(&problem, &latency_only()).expect_err("must refuse");
    assert!(matches!(
        err,
        PartitionError::TriangleInequality {
            component: "fixed",
            ..
        }
    ));
    assert!(err.to_string().contains("triangle"), "{err}");
}

#[test]
fn memory_cap_below_a_node_names_the_node() {
    let hop = hop_costs(link(1.0, 1e-9), link(1.0, 1e-9), link(2.0, 1e-9));
    let mut problem = chain(&[[1.0, 1.0, 1.0]; 3], 1e3, hop);
    problem.param_bytes[1] = 700.0 * 1024.0 * 1024.0;
    problem.tier_present[2] = false;
    let c = Constraints {
        objective: Objective::Latency,
        latency_budget_ms: None,
        memory_cap_bytes: [
            Some(256.0 * 1024.0 * 1024.0),
            Some(512.0 * 1024.0 * 1024.0),
            None,
        ],
    };
    let err = solve(&problem, &c).expect_err("infeasible");
    let msg = err.to_string();
    assert!(matches!(err, PartitionError::Infeasible(_)), "{msg}");
    assert!(msg.contains("node 1"), "{msg}");
    assert!(msg.contains("tier edge memory cap 512 MiB"), "{msg}");
    assert!(brute_force(&problem, &c).is_err());
}

#[test]
fn latency_budget_below_fastest_plan_is_reported() {
    let hop = hop_costs(link(1.0, 1e-9), link(1.0, 1e-9), link(2.0, 1e-9));
    let problem = chain(&[[3.0, 2.0, 1.0]; 3], 1e3, hop);
    let c = Constraints {
        objective: Objective::Energy,
        latency_budget_ms: Some(2.0),
        memory_cap_bytes: [None; TIER_COUNT],
    };
    let err = solve(&problem, &c).expect_err("infeasible");
    assert!(
        err.to_string()
            .contains("latency budget 2 ms is below the fastest possible plan, 5"),
        "{err}"
    );
}

#[test]
fn energy_with_budget_trades_offload_for_latency() {
    // Device compute costs device energy; offloading is free for the device but slow.
    let hop = hop_costs(link(10.0, 0.0), link(1.0, 0.0), link(11.0, 0.0));
    let problem = chain(&[[1.0, 5.0, 5.0]; 4], 1e3, hop);
    let c = Constraints {
        objective: Objective::Energy,
        latency_budget_ms: Some(8.0),
        memory_cap_bytes: [None; TIER_COUNT],
    };
    let p = solve(&problem, &c).expect("feasible");
    assert!(p.latency_ms <= 8.0);
    let b = brute_force(&problem, &c).expect("feasible");
    assert!((p.objective_value - b.objective_value).abs() < 1e-9);
    assert!(p.exact);
}

#[test]
fn brute_force_refuses_large_graphs() {
    let hop = hop_costs(link(1.0, 1e-9), link(1.0, 1e-9), link(2.0, 1e-9));
    let problem = chain(&[[1.0, 1.0, 1.0]; 15], 1e3, hop);
    assert!(matches!(
        brute_force(&problem, &latency_only()),
        Err(PartitionError::TooLargeForBruteForce { nodes: 15, .. })
    ));
}

#[test]
fn large_chain_solves_without_deep_recursion() {
    let hop = hop_costs(link(1.0, 1e-8), link(1.0, 1e-8), link(2.0, 1e-8));
    let costs: Vec<[f64; TIER_COUNT]> = (0..20_000)
        .map(|v| {
            [
                1.0 + (v % 7) as f64,
                0.5 + (v % 5) as f64 * 0.3,
                0.2 + (v % 3) as f64,
            ]
        })
        .collect();
    let problem = chain(&costs, 1e4, hop);
    let p = solve(&problem, &latency_only()).expect("solvable");
    assert!(p.exact);
    let c = Constraints {
        objective: Objective::Energy,
        latency_budget_ms: Some(p.latency_ms * 1.5),
        memory_cap_bytes: [None, Some(5e9), None],
    };
    let q = solve(&problem, &c).expect("feasible");
    assert!(q.latency_ms <= p.latency_ms * 1.5);
}

#[test]
fn memory_caps_too_small_for_the_whole_model_are_proven_infeasible() {
    // 40 nodes of 1 MB parameters each: every node fits alone, the model fits nowhere.
    let hop = hop_costs(link(1.0, 1e-9), link(1.0, 1e-9), link(2.0, 1e-9));
    let mut problem = chain(&[[1.0, 1.0, 1.0]; 40], 1e3, hop);
    problem.tier_present = [true, true, false];
    let c = Constraints {
        objective: Objective::Latency,
        latency_budget_ms: None,
        memory_cap_bytes: [Some(15e6), Some(15e6), None],
    };
    let err = solve(&problem, &c).expect_err("infeasible");
    assert!(matches!(err, PartitionError::Infeasible(_)), "{err}");
    assert!(err.to_string().contains("memory caps"), "{err}");
    // With room for the whole model on the edge, a feasible split is found.
    let c = Constraints {
        memory_cap_bytes: [Some(15e6), Some(30e6), None],
        ..c
    };
    let p = solve(&problem, &c).expect("feasible");
    assert!(p.memory_bytes[0] <= 15e6 && p.memory_bytes[1] <= 30e6);
}
