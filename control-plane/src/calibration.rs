//! Tier calibration from what agents measure: each edge or cloud agent reports, with its heartbeat, the recent
//! mean compute time of every stage it ran; against the stages' predicted times (as planned, divided by the
//! calibration they were planned with) they give each tier a speed factor, measured ÷ profiled, weighted by
//! time and traffic (Σ runs × measured ÷ Σ runs × predicted over the tier's agents and their measured stages,
//! so long stages count most and a 0.1 ms stage's jitter does not, and a tier of mixed agents (one on a GPU
//! or ONNX Runtime, one on tract) is planned at the speed its requests were served at: each agent weighs by
//! the runs it served). A model is planned again when a tier's live factor leaves the dead band around
//! the factor its plans were made with (±25 % by default), which is the hysteresis: a factor that wobbles
//! inside the band never re-plans, and after a re-plan the band is centred on the new factor. The device tier
//! is never calibrated here: every device is different, and each calibrates itself (see the SDK's estimator).
//! Pure: the control loop feeds it the plans and the live reports.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use strata_core::Tier;
use strata_planner::cluster::Cluster;

use crate::records::PlansRecord;

/// How tiers are calibrated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Whether agents' measured stage times calibrate the planner's tier speeds at all.
    pub enabled: bool,
    /// The dead band: a model is planned again when a tier's live factor is more than this fraction away
    /// from the factor its plans were made with (0.25: outside [f ÷ 1.25, f × 1.25]).
    pub band: f64,
    /// Stages measured on a tier (over all its agents) before its factor counts.
    pub min_stages: usize,
    /// Profiled time those stages must add up to, ms (a tier measured on tiny stages only, whose fixed costs
    /// the profile does not model, is not calibrated).
    pub min_profiled_ms: f64,
    /// How often the leader looks for drift between other changes.
    pub period: Duration,
}

impl Default for Settings {
    /// On, ±25 %, one measured stage of 5 ms profiled at least, every 5 s.
    fn default() -> Settings {
        Settings {
            enabled: true,
            band: 0.25,
            min_stages: 1,
            min_profiled_ms: 5.0,
            period: Duration::from_secs(5),
        }
    }
}

/// One stage's time on one agent, as its heartbeat reported it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    /// Recent mean compute time, ms.
    pub ms: f64,
    /// Runs since the agent loaded the stage (its share of the traffic).
    pub runs: u64,
}

/// One live agent's report: its tier and its measured stages, by digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The agent's tier.
    pub tier: Tier,
    /// Its stages' times.
    pub stages: BTreeMap<String, Timed>,
}

/// No calibration: every tier as profiled.
pub const NONE: [f64; 3] = [1.0; 3];

/// Each tier's live factor (measured ÷ profiled compute time), by [`Tier::index`]; `None` where too few of
/// its stages were measured. `reports` are the live agents' tiers and per-stage times.
pub fn live_factors(
    plans: &HashMap<String, PlansRecord>,
    reports: &[Report],
    settings: &Settings,
) -> [Option<f64>; 3] {
    // Each stage's profiled time on each tier: its planned time over the factor it was planned with.
    let mut profiled: HashMap<(&str, Tier), f64> = HashMap::new();
    for record in plans.values() {
        for stage in record.plans.iter().flat_map(|p| &p.stages) {
            let factor = record.calibration[stage.tier.index()];
            if stage.predicted_ms > 0.0 && factor > 0.0 {
                profiled.insert(
                    (stage.digest.as_str(), stage.tier),
                    stage.predicted_ms / factor,
                );
            }
        }
    }
    let mut sums = [(0.0, 0.0, 0usize); 3];
    for report in reports {
        if report.tier == Tier::Device {
            continue;
        }
        for (digest, timed) in &report.stages {
            if let Some(&p) = profiled.get(&(digest.as_str(), report.tier))
                && timed.ms.is_finite()
                && timed.ms > 0.0
            {
                let weight = timed.runs.max(1) as f64;
                let s = &mut sums[report.tier.index()];
                s.0 += weight * timed.ms;
                s.1 += weight * p;
                s.2 += 1;
            }
        }
    }
    sums.map(|(measured, predicted, n)| {
        (n >= settings.min_stages.max(1)
            && predicted > 0.0
            && predicted >= settings.min_profiled_ms)
            .then(|| measured / predicted)
    })
}

/// The factors to plan a model with now: the live ones where known, else those it was planned with.
pub fn to_plan_with(planned_with: [f64; 3], live: [Option<f64>; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| live[i].unwrap_or(planned_with[i]))
}

/// Whether a tier's live factor has left the dead band around the factor a model was planned with.
pub fn drifted(planned_with: [f64; 3], live: [Option<f64>; 3], settings: &Settings) -> bool {
    settings.enabled
        && (0..3).any(|i| {
            live[i].is_some_and(|f| {
                let ratio = f / planned_with[i];
                !(1.0 / (1.0 + settings.band)..=1.0 + settings.band).contains(&ratio)
            })
        })
}

/// `cluster` with each tier's compute `factors` applied: a tier measured twice as slow as profiled (factor
/// 2) gets half the GFLOP/s, half the memory bandwidth (when it has one) and twice the per-operator overhead,
/// so every node's predicted time doubles.
pub fn apply(cluster: &Cluster, factors: [f64; 3]) -> Cluster {
    let mut out = cluster.clone();
    for (tier, spec) in out.tiers.iter_mut() {
        let f = factors[tier.index()];
        if f.is_finite() && f > 0.0 && f != 1.0 {
            spec.gflops /= f;
            spec.bandwidth_gbs = spec.bandwidth_gbs.map(|bw| bw / f);
            spec.op_overhead_us *= f;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{PlanRecord, StageRecord};
    use strata_core::Digest;

    fn stage(tier: Tier, digest: &str, ms: f64) -> StageRecord {
        StageRecord {
            index: 0,
            tier,
            digest: Digest::of(digest.as_bytes()),
            size_bytes: 0,
            inputs: vec![],
            outputs: vec![],
            memory_bytes: 0,
            predicted_ms: ms,
            flops: 0.0,
        }
    }

    fn record(stages: Vec<StageRecord>, calibration: [f64; 3]) -> PlansRecord {
        PlansRecord {
            model: "m".into(),
            version: 1,
            tiers: vec![],
            inputs: vec![],
            outputs: vec![],
            plans: vec![PlanRecord {
                id: "p".into(),
                satisfies: vec![],
                objectives: vec![],
                latency_ms: 0.0,
                device_energy_mj: 0.0,
                device_bytes_sent: 0,
                stages,
                transfers: vec![],
            }],
            notes: vec![],
            failed: None,
            links: [None; 3],
            device_power: Default::default(),
            calibration,
        }
    }

    #[test]
    fn factors_weigh_stages_by_time_and_undo_the_calibration_planned_with() {
        let a = stage(Tier::Edge, "a", 10.0);
        let b = stage(Tier::Edge, "b", 90.0);
        let c = stage(Tier::Cloud, "c", 8.0);
        let (da, db, dc) = (
            a.digest.to_string(),
            b.digest.to_string(),
            c.digest.to_string(),
        );
        // Planned with the cloud at twice its profiled time: c's profiled time is 4 ms.
        let plans = HashMap::from([("m".to_string(), record(vec![a, b, c], [1.0, 1.0, 2.0]))]);
        let reports = vec![
            report(Tier::Edge, &[(&da, 30.0, 1), (&db, 170.0, 1)]),
            report(Tier::Cloud, &[(&dc, 6.0, 1)]),
            // A stage nobody planned on this tier, and a device report, count for nothing.
            report(Tier::Cloud, &[("unknown", 1e6, 1)]),
            report(Tier::Device, &[(&dc, 1e6, 1)]),
        ];
        let any = Settings {
            min_profiled_ms: 0.0,
            ..Settings::default()
        };
        let live = live_factors(&plans, &reports, &any);
        assert_eq!(live[Tier::Device.index()], None);
        assert!(
            (live[Tier::Edge.index()].expect("edge measured") - 2.0).abs() < 1e-9,
            "{live:?}"
        );
        assert!(
            (live[Tier::Cloud.index()].expect("cloud measured") - 1.5).abs() < 1e-9,
            "{live:?}"
        );
        let needs = Settings {
            min_stages: 3,
            ..any
        };
        assert_eq!(live_factors(&plans, &reports, &needs), [None; 3]);
        // The cloud's one stage is 4 ms profiled: under a 5 ms floor it calibrates nothing.
        let floor = Settings {
            min_profiled_ms: 5.0,
            ..Settings::default()
        };
        let floored = live_factors(&plans, &reports, &floor);
        assert_eq!(floored[Tier::Cloud.index()], None);
        assert!(floored[Tier::Edge.index()].is_some());
    }

    fn report(tier: Tier, stages: &[(&str, f64, u64)]) -> Report {
        Report {
            tier,
            stages: stages
                .iter()
                .map(|&(d, ms, runs)| (d.to_string(), Timed { ms, runs }))
                .collect(),
        }
    }

    #[test]
    fn a_tier_of_mixed_agents_is_calibrated_at_the_speed_its_requests_were_served_at() {
        let s = stage(Tier::Cloud, "s", 10.0);
        let d = s.digest.to_string();
        let plans = HashMap::from([("m".to_string(), record(vec![s], [1.0; 3]))]);
        let any = Settings {
            min_profiled_ms: 0.0,
            ..Settings::default()
        };
        let cloud = |reports: &[Report]| {
            live_factors(&plans, reports, &any)[Tier::Cloud.index()].expect("measured")
        };
        // A fast agent (ONNX Runtime, 2 ms) and a slow one (tract, 10 ms) serving the same stage.
        let fast = |runs| report(Tier::Cloud, &[(&d, 2.0, runs)]);
        let slow = |runs| report(Tier::Cloud, &[(&d, 10.0, runs)]);
        // An even split of the traffic: the mean of the two speeds.
        assert!((cloud(&[fast(50), slow(50)]) - 0.6).abs() < 1e-9);
        // The fast agent served 9 requests in 10: the tier is planned near its speed.
        assert!((cloud(&[fast(90), slow(10)]) - 0.28).abs() < 1e-9);
        // Nine in ten on the slow agent: near the slow speed.
        assert!((cloud(&[fast(10), slow(90)]) - 0.92).abs() < 1e-9);
        // Runs not reported (an older agent) weigh as one each.
        assert!((cloud(&[fast(0), slow(0)]) - 0.6).abs() < 1e-9);
    }

    #[test]
    fn drift_is_judged_against_a_dead_band_around_the_factor_planned_with() {
        let s = Settings::default();
        let planned = [1.0, 2.0, 1.0];
        assert!(!drifted(planned, [None, Some(2.4), Some(0.81)], &s));
        assert!(drifted(planned, [None, Some(2.6), None], &s));
        assert!(drifted(planned, [None, None, Some(0.79)], &s));
        let off = Settings {
            enabled: false,
            ..s
        };
        assert!(!drifted(planned, [None, Some(10.0), None], &off));
        assert_eq!(
            to_plan_with(planned, [None, Some(3.0), None]),
            [1.0, 3.0, 1.0]
        );
    }

    #[test]
    fn applying_a_factor_scales_every_node_time_by_it() {
        let cluster = Cluster::from_toml(
            r#"
            name = "c"
            [tiers.device]
            gflops = 10
            memory_mib = 100
            [tiers.edge]
            gflops = 40
            op_overhead_us = 10
            memory_mib = 100
            [[links]]
            from = "device"
            to = "edge"
            up_mbps = 10
            rtt_ms = 5
            "#,
        )
        .expect("a cluster");
        let slow = apply(&cluster, [1.0, 2.0, 1.0]);
        assert_eq!(slow.tiers[&Tier::Edge].gflops, 20.0);
        assert_eq!(slow.tiers[&Tier::Edge].op_overhead_us, 20.0);
        assert_eq!(slow.tiers[&Tier::Device], cluster.tiers[&Tier::Device]);
        assert_eq!(slow.tiers[&Tier::Edge].bandwidth_gbs, None);
    }

    #[test]
    fn applying_a_factor_scales_a_roofline_tier_s_bandwidth_too() {
        let cluster = Cluster::from_toml(
            r#"
            [tiers.device]
            gflops = 10
            memory_mib = 100
            [tiers.cloud]
            gflops = 400
            bandwidth_gbs = 50
            op_overhead_us = 4
            memory_mib = 100
            [[links]]
            from = "device"
            to = "cloud"
            up_mbps = 10
            rtt_ms = 5
            "#,
        )
        .expect("a cluster");
        let slow = apply(&cluster, [1.0, 1.0, 2.0]);
        let cloud = &slow.tiers[&Tier::Cloud];
        assert_eq!(cloud.gflops, 200.0);
        assert_eq!(cloud.bandwidth_gbs, Some(25.0));
        assert_eq!(cloud.op_overhead_us, 8.0);
        // Memory-bound and compute-bound nodes alike take twice as long.
        let fast = strata_planner::roofline::Roofline::of(&cluster.tiers[&Tier::Cloud]);
        let slow = strata_planner::roofline::Roofline::of(cloud);
        for (flops, bytes) in [(1e9, 1e3), (1e3, 1e9)] {
            let work = strata_planner::roofline::NodeWork {
                flops,
                bytes,
                pays_overhead: true,
            };
            assert!((slow.node_ms(&work) - 2.0 * fast.node_ms(&work)).abs() < 1e-9);
        }
    }
}
