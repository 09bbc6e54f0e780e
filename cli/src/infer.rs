//! `strata infer`: run a model as a device would — the device stage in-process, the rest on the cluster.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use strata_device_sdk::route::{Budget, Decision};
use strata_device_sdk::{Client, ClientConfig, Constraints, Inference, PowerState};

use crate::io::{load_inputs, write_outputs};

/// What `strata infer` was asked.
pub struct Args<'a> {
    /// Control planes or agents.
    pub endpoints: &'a [String],
    /// Model name.
    pub model: &'a str,
    /// `NAME=FILE.npy` inputs.
    pub input_args: &'a [String],
    /// The request's constraints.
    pub constraints: Constraints,
    /// End-to-end deadline, ms.
    pub timeout_ms: u64,
    /// Where outputs go.
    pub output_dir: &'a Path,
    /// Battery level, percent.
    pub battery: Option<f64>,
    /// On external power.
    pub charging: bool,
    /// Explain the choice.
    pub verbose: bool,
    /// The device stage cache's directory (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Plain or mutual TLS.
    pub transport: strata_proto::transport::Transport,
}

/// The stage cache `strata infer` uses unless told otherwise: `$STRATA_CACHE_DIR`, else the platform's
/// cache directory (`$XDG_CACHE_HOME/strata`, else `~/.cache/strata`), else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("STRATA_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("strata")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("strata")))
}

/// `--latency-ms`: a finite number of ms > 0.
pub fn latency_budget(s: &str) -> Result<f64, String> {
    budget(Budget::LatencyMs, s)
}

/// `--energy-mj`: a finite number of mJ > 0.
pub fn energy_budget(s: &str) -> Result<f64, String> {
    budget(Budget::EnergyMj, s)
}

fn budget(kind: Budget, s: &str) -> Result<f64, String> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\" is not a number of {}", kind.unit()))?;
    kind.check(value).map_err(|e| e.to_string())
}

/// `strata infer`.
pub fn infer(args: &Args<'_>) -> Result<()> {
    args.constraints.check()?;
    let power = PowerState::new(args.battery, args.charging)?;
    let inputs = load_inputs(args.input_args)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let mut config = ClientConfig::new(args.endpoints.to_vec());
        config.transport = args.transport.clone();
        config.request_timeout = Duration::from_millis(args.timeout_ms);
        config.cache_dir = args.cache_dir.clone();
        let client = Client::new(config)?;
        client.set_power_state(power);
        client
            .infer(args.model, inputs, args.constraints.clone())
            .await
    });
    let result = result.with_context(|| format!("infer {}", args.model))?;
    let route: Vec<String> = result
        .stages
        .iter()
        .map(|s| match &s.node {
            Some(n) => format!("{}({n})", s.tier),
            None => s.tier.to_string(),
        })
        .collect();
    say!(
        "plan {} (predicted {:.1} ms): {}{}",
        result.plan_id,
        result.predicted_ms,
        route.join(" -> "),
        if result.fallbacks > 0 {
            format!("  [after {} fallback(s)]", result.fallbacks)
        } else {
            String::new()
        }
    )?;
    if let Some(missed) = budget_missed(
        &result.decision,
        &result.plan_id,
        args.constraints.latency_ms,
        args.constraints.energy_mj,
    ) {
        eprintln!("warning: {missed}");
    }
    for s in &result.stages {
        say!(
            "  stage {} {:<6} {:>9.2} ms compute {:>8.2} ms queued  {}",
            s.index,
            s.tier,
            s.compute_ms,
            s.queue_ms,
            s.node.as_deref().unwrap_or("(this device)")
        )?;
    }
    say!("total {:.2} ms", result.total_ms)?;
    if args.verbose {
        explain(&result)?;
    }
    let names: Vec<String> = result.outputs.iter().map(|(n, _)| n.clone()).collect();
    let values: HashMap<_, _> = result.outputs.into_iter().collect();
    write_outputs(args.output_dir, &names, &values)?;
    say!(
        "wrote {} output(s) to {}",
        names.len(),
        args.output_dir.display()
    )?;
    Ok(())
}

/// What to say when the plan that ran (`ran`) is predicted to miss a budget the request set: that no plan
/// could meet it and which one ran instead (the closest), or that the plans meeting it could not be used.
/// `None` when it meets them, or the request set none.
fn budget_missed(
    d: &Decision,
    ran: &str,
    latency_ms: Option<f64>,
    energy_mj: Option<f64>,
) -> Option<String> {
    let mut budgets = Vec::new();
    if let Some(b) = latency_ms {
        budgets.push(format!("latency budget of {b} ms"));
    }
    if let Some(b) = energy_mj {
        budgets.push(format!("energy budget of {b} mJ"));
    }
    let c = d.ranked.iter().find(|c| c.plan_id == ran)?;
    if budgets.is_empty() || c.meets_budgets {
        return None;
    }
    let predicted = format!(
        "predicted {:.1} ms and {:.3} mJ",
        c.predicted.latency_ms, c.predicted.energy_mj
    );
    let budgets = budgets.join(" and the ");
    Some(
        if d.ranked
            .iter()
            .any(|other| other.meets_budgets && other.reachable)
        {
            format!(
                "plan {ran}, which ran, misses the {budgets} ({predicted}): the plans that meet it failed or were skipped"
            )
        } else {
            format!(
                "no plan can meet the {budgets}; ran plan {ran} instead, the closest ({predicted}); `strata routes` lists every plan"
            )
        },
    )
}

/// `-v`: the estimates, the policy, every allowed plan ranked, and predicted against measured.
fn explain(result: &Inference) -> Result<()> {
    let d: &Decision = &result.decision;
    print_decision(d, Some(&result.plan_id))?;
    say!("predicted against measured:")?;
    predicted_against_measured(result, d)
}

/// A decision: the policy, the estimates it used, every allowed plan ranked (`ran`: the one that ran).
pub fn print_decision(d: &Decision, ran: Option<&str>) -> Result<()> {
    say!(
        "why: minimise {}{}{}",
        d.objective.name(),
        d.latency_budget_ms
            .map(|b| format!(" within {b:.1} ms"))
            .unwrap_or_default(),
        match d.state.battery_pct {
            Some(p) => format!(
                " (battery {p:.0} %{}{})",
                if d.state.charging { ", charging" } else { "" },
                if d.state.low() {
                    ": low, saving energy"
                } else {
                    ""
                }
            ),
            None => String::new(),
        }
    )?;
    say!("estimates (this process's measurements blended with the cluster profile):")?;
    for link in strata_core::recost::Link::ALL {
        if let Some(l) = d.conditions.link(link) {
            say!(
                "  {:<13} rtt {:>8.2} ms  up {:>9.2} Mbit/s  down {:>9.2} Mbit/s",
                link.name(),
                l.rtt_ms,
                l.up_mbps,
                l.down_mbps
            )?;
        }
    }
    for tier in strata_core::Tier::ALL {
        say!(
            "  {:<13} speed × {:.2}  queue {:.2} ms",
            tier.name(),
            d.conditions.speed[tier.index()],
            d.conditions.queue_ms[tier.index()]
        )?;
    }
    say!(
        "plans, best first:\n  {:<14} {:<22} {:>12} {:>12} {:>12}  note",
        "plan",
        "tiers",
        "now ms",
        "profile ms",
        "energy mJ"
    )?;
    for c in &d.ranked {
        let mut note = Vec::new();
        if Some(c.plan_id.as_str()) == ran {
            note.push("ran".to_string());
        }
        if !c.meets_budgets {
            note.push("misses a budget".to_string());
        }
        if !c.reachable {
            note.push("no live agent".to_string());
        }
        if c.download_bytes > 0 {
            note.push(format!(
                "downloads {:.2} MB of device stages first",
                c.download_bytes as f64 / 1e6
            ));
        }
        say!(
            "  {:<14} {:<22} {:>12.2} {:>12.2} {:>12.3}  {}",
            c.plan_id,
            c.tiers.join(">"),
            c.predicted.latency_ms,
            c.profiled_ms,
            c.predicted.energy_mj,
            note.join(", ")
        )?;
    }
    Ok(())
}

fn predicted_against_measured(result: &Inference, d: &Decision) -> Result<()> {
    for s in &result.stages {
        say!(
            "  stage {} {:<6} predicted {:>9.2} ms  measured {:>9.2} ms (+{:.2} ms queued)",
            s.index,
            s.tier,
            s.predicted_ms * d.conditions.speed[tier_index(s.tier)],
            s.compute_ms,
            s.queue_ms
        )?;
    }
    for h in &result.hops {
        say!(
            "  hop {:<13} predicted {:>9.2} ms  measured {:>9.2} ms ({} B up, {} B down)",
            h.link.name(),
            h.predicted_ms,
            h.measured_ms,
            h.up_bytes,
            h.down_bytes
        )?;
    }
    say!(
        "  total          predicted {:>9.2} ms  measured {:>9.2} ms (includes fetching and loading device stages in this process)",
        result.predicted_ms,
        result.total_ms
    )?;
    Ok(())
}

fn tier_index(name: &str) -> usize {
    strata_core::Tier::ALL
        .iter()
        .position(|t| t.name() == name)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::recost::{Conditions, Prediction};
    use strata_device_sdk::route::{Candidate, Objective};

    #[test]
    fn budgets_must_be_finite_positive_numbers() {
        assert_eq!(latency_budget("12.5"), Ok(12.5));
        assert_eq!(energy_budget("3"), Ok(3.0));
        for bad in ["0", "-5", "NaN", "nan", "inf", "-0"] {
            let e = latency_budget(bad).expect_err(bad);
            assert!(
                e.contains("latency budget") && e.contains("greater than 0"),
                "{bad}: {e}"
            );
            let e = energy_budget(bad).expect_err(bad);
            assert!(
                e.contains("energy budget") && e.contains("mJ"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            latency_budget("fast").expect_err("not a number"),
            "\"fast\" is not a number of ms"
        );
    }

    fn decision(meets: &[(&str, bool)]) -> Decision {
        Decision {
            objective: Objective::Energy,
            latency_budget_ms: Some(5.0),
            conditions: Conditions::nominal([None; 3]),
            state: Default::default(),
            ranked: meets
                .iter()
                .map(|&(id, meets_budgets)| Candidate {
                    plan_id: id.into(),
                    tiers: vec!["device", "edge"],
                    predicted: Prediction {
                        latency_ms: 12.0,
                        energy_mj: 0.5,
                        device_ms: 0.0,
                        network_ms: 0.0,
                    },
                    profiled_ms: 12.0,
                    meets_budgets,
                    reachable: true,
                    download_bytes: 0,
                    download: (0.0, 0.0),
                })
                .collect(),
        }
    }

    #[test]
    fn a_missed_budget_is_said_with_what_ran_instead() {
        let none_meets = decision(&[("a", false), ("b", false)]);
        let said = budget_missed(&none_meets, "a", Some(5.0), None).expect("said");
        assert_eq!(
            said,
            "no plan can meet the latency budget of 5 ms; ran plan a instead, the closest (predicted 12.0 ms and \
             0.500 mJ); `strata routes` lists every plan"
        );
        let one_meets = decision(&[("a", true), ("b", false)]);
        let said = budget_missed(&one_meets, "b", Some(5.0), Some(1.0)).expect("said");
        assert!(
            said.starts_with(
                "plan b, which ran, misses the latency budget of 5 ms and the energy budget of 1 mJ"
            ),
            "{said}"
        );
        assert_eq!(budget_missed(&one_meets, "a", Some(5.0), None), None);
        // No budget asked for (a low-battery policy's own budget is not the user's): nothing to say.
        assert_eq!(budget_missed(&none_meets, "a", None, None), None);
    }
}
