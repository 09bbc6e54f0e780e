//! The device SDK's per-request route decision (issue 9, target ≤ 5 µs p99 for 16 plans): `route::choose`
//! re-costing every plan under live estimates, on a realistic table — 16 plans × 3 stages (device, edge,
//! cloud) with their transfers, 2 edge and 2 cloud agents — with the balancer's `is_down` as the liveness
//! check, exactly as `Client::choose` calls it; also with the estimates blended first (what a request pays
//! in all), and `route::explain` (the ranked list `Client::infer` keeps for fallbacks and `-v`).
//!
//! Criterion gives the mean with its confidence interval; a second pass times every call on its own and
//! prints p50/p99 (the clock's own cost, timed the same way, is printed alongside).
//!
//! `cargo bench -p strata-device-sdk --bench route`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use strata_core::recost::{Conditions, DevicePower, Link, LinkState};
use strata_device_sdk::Privacy;
use strata_device_sdk::estimate::Estimator;
use strata_device_sdk::route::{self, Constraints, Situation};
use strata_proto::balance::Balancer;
use strata_proto::convert;
use strata_proto::v1;

fn digest(i: usize) -> String {
    format!("{i:064x}")
}

/// 8 plans as the control plane publishes them for a 3-tier cluster: open/features/edge-only/device-only
/// splits under both objectives, each tagged with the privacy levels it satisfies.
fn table() -> v1::RouteTable {
    use v1::Privacy as P;
    use v1::Tier as T;
    let edge_nodes = vec!["edge-a1b2c3".to_string(), "edge-d4e5f6".to_string()];
    let cloud_nodes = vec!["cloud-0a1b2c".to_string(), "cloud-3d4e5f".to_string()];
    // (tiers of the 3 stages, satisfies, latency ms, device energy mJ)
    let shapes: [([T; 3], &[P], f64, f64); 8] = [
        ([T::Device, T::Edge, T::Cloud], &[P::Open], 38.0, 21.0),
        (
            [T::Device, T::Edge, T::Cloud],
            &[P::Open, P::Features],
            41.5,
            19.5,
        ),
        (
            [T::Device, T::Edge, T::Cloud],
            &[P::Open, P::Features],
            47.0,
            12.0,
        ),
        ([T::Device, T::Edge, T::Cloud], &[P::Open], 52.0, 9.0),
        (
            [T::Device, T::Device, T::Edge],
            &[P::Open, P::Edge],
            61.0,
            30.0,
        ),
        (
            [T::Device, T::Edge, T::Edge],
            &[P::Open, P::Features, P::Edge],
            66.0,
            17.0,
        ),
        (
            [T::Device, T::Device, T::Edge],
            &[P::Open, P::Features, P::Edge],
            74.0,
            25.0,
        ),
        (
            [T::Device, T::Device, T::Device],
            &[P::Open, P::Features, P::Edge, P::Device],
            140.0,
            140.0,
        ),
    ];
    let plans = shapes
        .iter()
        .chain(shapes.iter())
        .enumerate()
        .map(|(i, (tiers, satisfies, latency_ms, energy_mj))| v1::Plan {
            id: format!("{:012x}", 0x5eed_0000 + i),
            satisfies: satisfies.iter().map(|&p| p as i32).collect(),
            objectives: vec![if i % 2 == 0 {
                v1::Objective::Latency
            } else {
                v1::Objective::Energy
            } as i32],
            latency_ms: *latency_ms,
            device_energy_mj: *energy_mj,
            device_bytes_sent: 200_704,
            transfers: vec![
                v1::Transfer {
                    link: v1::Link::DeviceEdge as i32,
                    up_bytes: 200_704 + i as u64 * 1000,
                    down_bytes: 4000,
                },
                v1::Transfer {
                    link: v1::Link::EdgeCloud as i32,
                    up_bytes: 50_000,
                    down_bytes: 4000,
                },
            ],
            stages: tiers
                .iter()
                .enumerate()
                .map(|(s, &tier)| v1::Stage {
                    index: s as u32,
                    tier: tier as i32,
                    digest: digest(i * 3 + s),
                    size_bytes: 1_000_000,
                    inputs: vec![format!("t{s}")],
                    outputs: vec![format!("t{}", s + 1)],
                    memory_bytes: 4_000_000,
                    predicted_ms: latency_ms / 3.0,
                    flops: 1e8,
                    nodes: match tier {
                        T::Edge => edge_nodes.clone(),
                        T::Cloud => cloud_nodes.clone(),
                        _ => vec![],
                    },
                })
                .collect(),
        })
        .collect();
    v1::RouteTable {
        model: "squeezenet".into(),
        version: 3,
        revision: 42,
        privacy: P::Open as i32,
        inputs: vec![v1::ModelInput {
            name: "data_0".into(),
            dtype: 1,
            shape: vec![1, 3, 224, 224],
        }],
        outputs: vec!["softmaxout_1".into()],
        plans,
        nodes: edge_nodes
            .iter()
            .map(|id| (id, T::Edge))
            .chain(cloud_nodes.iter().map(|id| (id, T::Cloud)))
            .enumerate()
            .map(|(i, (id, tier))| v1::NodeRef {
                id: id.clone(),
                tier: tier as i32,
                address: format!("10.0.0.{}:7700", i + 2),
                load: None,
            })
            .collect(),
        deleted: false,
        notes: vec![],
        links: convert::link_profiles_to_wire(&links()),
        device_power: Some(
            DevicePower {
                active_w: 1.0,
                idle_w: 0.15,
                tx_nj_per_byte: 1000.0,
                rx_nj_per_byte: 350.0,
            }
            .into(),
        ),
        tier_calibration: vec![1.0, 0.8, 1.2],
        batching: None,
    }
}

fn links() -> [Option<LinkState>; 3] {
    let l = |rtt_ms, mbps| {
        Some(LinkState {
            rtt_ms,
            up_mbps: mbps,
            down_mbps: mbps,
        })
    };
    [l(4.0, 40.0), l(50.0, 13.0), l(54.0, 10.0)]
}

/// An estimator that has seen traffic on every link.
fn estimator() -> Estimator {
    let mut e = Estimator::default();
    let now = Instant::now();
    for l in Link::ALL {
        e.link_sample(l, links()[l.index()], 90.0, 2e5, 4e3, now);
    }
    e
}

/// The request kinds a device sends.
fn cases() -> Vec<(&'static str, Constraints)> {
    vec![
        ("no budget", Constraints::default()),
        (
            "latency budget 50 ms",
            Constraints {
                latency_ms: Some(50.0),
                ..Constraints::default()
            },
        ),
        (
            "features privacy + budgets",
            Constraints {
                latency_ms: Some(45.0),
                energy_mj: Some(15.0),
                privacy: Some(Privacy::Features),
                ..Constraints::default()
            },
        ),
    ]
}

fn balancer() -> Balancer {
    let b = Balancer::new();
    // One cloud agent recently failed: the liveness check has work to do.
    b.mark_down("cloud-0a1b2c", Duration::from_secs(3600));
    b
}

/// The device stages a client holds, as it looks them up per decision (a set of digests).
fn local_stages(table: &v1::RouteTable) -> std::collections::HashSet<String> {
    table
        .plans
        .iter()
        .flat_map(|p| &p.stages)
        .filter(|s| s.tier == v1::Tier::Device as i32)
        .map(|s| s.digest.clone())
        .collect()
}

fn criterion_benches(c: &mut Criterion) {
    let table = table();
    let balancer = balancer();
    let estimator = estimator();
    let conditions = estimator.conditions(&links(), &[1.0; 3], Instant::now());
    let power = convert::device_power(&table);
    let local = local_stages(&table);
    let situation = Situation {
        conditions: &conditions,
        power: &power,
        state: Default::default(),
        measured: &|_| None,
        local: &|d| local.contains(d),
    };
    let mut group = c.benchmark_group("route");
    for (label, constraints) in cases() {
        group.bench_function(format!("choose, {label}"), |b| {
            b.iter(|| {
                route::choose(
                    black_box(&table),
                    black_box(&constraints),
                    &situation,
                    |n| balancer.is_down(n),
                )
                .map(|(p, _)| p.id.len())
            })
        });
        group.bench_function(format!("explain, {label}"), |b| {
            b.iter(|| {
                route::explain(
                    black_box(&table),
                    black_box(&constraints),
                    &situation,
                    |n| balancer.is_down(n),
                )
                .ranked
                .len()
            })
        });
    }
    group.finish();
}

/// What `Client::choose` does per request: blend the estimates with the table's profile, then choose.
fn situation_and_choose(
    table: &v1::RouteTable,
    estimator: &Estimator,
    constraints: &Constraints,
    balancer: &Balancer,
) -> usize {
    let conditions: Conditions =
        estimator.conditions(&convert::link_profiles(table), &[1.0; 3], Instant::now());
    let power = convert::device_power(table);
    let local = local_stages(table);
    let situation = Situation {
        conditions: &conditions,
        power: &power,
        state: Default::default(),
        measured: &|_| None,
        local: &|d| local.contains(d),
    };
    route::choose(table, constraints, &situation, |n| balancer.is_down(n))
        .map_or(0, |(p, _)| p.id.len())
}

fn percentile(sorted_ns: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1]
}

/// Times `iterations` calls of `f` one by one; returns sorted nanoseconds.
fn per_call(iterations: usize, mut f: impl FnMut() -> usize) -> Vec<u64> {
    let mut ns = Vec::with_capacity(iterations);
    let mut sink = 0usize;
    for _ in 0..iterations / 10 {
        sink = sink.wrapping_add(f());
    }
    for _ in 0..iterations {
        let started = Instant::now();
        sink = sink.wrapping_add(f());
        ns.push(started.elapsed().as_nanos() as u64);
    }
    black_box(sink);
    ns.sort_unstable();
    ns
}

fn percentiles(iterations: usize) {
    let table = table();
    let balancer = balancer();
    println!(
        "\n## per-call latency, {} plans × {} stages, {iterations} calls each",
        table.plans.len(),
        table.plans[0].stages.len()
    );
    println!("| call | request | p50 ns | p99 ns | p99.9 ns | max ns |");
    println!("|---|---|---:|---:|---:|---:|");
    let row = |call: &str, label: &str, ns: &[u64]| {
        println!(
            "| {call} | {label} | {} | {} | {} | {} |",
            percentile(ns, 0.5),
            percentile(ns, 0.99),
            percentile(ns, 0.999),
            ns[ns.len() - 1]
        );
    };
    row("(clock only)", "—", &per_call(iterations, || 0));
    let estimator = estimator();
    let conditions = estimator.conditions(&links(), &[1.0; 3], Instant::now());
    let power = convert::device_power(&table);
    let local = local_stages(&table);
    let situation = Situation {
        conditions: &conditions,
        power: &power,
        state: Default::default(),
        measured: &|_| None,
        local: &|d| local.contains(d),
    };
    // The same decision without the balancer's liveness check (a mutex, a hash lookup and a clock read per
    // candidate node): what the check itself costs.
    let ns = per_call(iterations, || {
        route::choose(
            black_box(&table),
            black_box(&Constraints::default()),
            &situation,
            |_| false,
        )
        .map_or(0, |(p, _)| p.id.len())
    });
    row("`choose`, no liveness check", "no budget", &ns);
    for (label, constraints) in cases() {
        let ns = per_call(iterations, || {
            route::choose(
                black_box(&table),
                black_box(&constraints),
                &situation,
                |n| balancer.is_down(n),
            )
            .map_or(0, |(p, _)| p.id.len())
        });
        row("`choose`", label, &ns);
        let ns = per_call(iterations, || {
            situation_and_choose(black_box(&table), &estimator, &constraints, &balancer)
        });
        row("estimates + `choose`", label, &ns);
        let ns = per_call(iterations, || {
            route::explain(
                black_box(&table),
                black_box(&constraints),
                &situation,
                |n| balancer.is_down(n),
            )
            .ranked
            .len()
        });
        row("`explain`", label, &ns);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; otherwise (`cargo test --benches`) a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    criterion_benches(&mut criterion);
    criterion.final_summary();
    percentiles(if full { 1_000_000 } else { 1_000 });
}
