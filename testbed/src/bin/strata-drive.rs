//! A device for measured runs: one warm SDK client per role, requests on a model with inputs generated
//! from its route table, one JSON line per request on stdout.
//!
//! - `strata-drive plans` prints the model's plans (id, tiers, profiled prediction) as one JSON array.
//! - `strata-drive run` runs rounds: every plan once, forced (each on a client of its own, so the adaptive
//!   client learns only from its own traffic and every connection idles alike between rounds), and one
//!   adaptive request, in an order shuffled per round; or, with `--adaptive-only`, adaptive requests only,
//!   for `--seconds`. With `--settle-s`, every plan runs once first and the driver waits for the control
//!   plane to calibrate its tiers and plan again. Each request's line: `{t_s, kind, plan, ok, latency_ms,
//!   predicted_ms, energy_mj, error}`; the plans measured: `{kind: "plans", plans}`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use strata_core::recost::Conditions;
use strata_core::{DType, Privacy, TensorData};
use strata_device_sdk::{Client, ClientConfig, Constraints, route};
use strata_proto::v1;

#[derive(Parser)]
#[command(about = "Measured requests through the Strata device SDK")]
struct Args {
    /// Control plane or agent addresses.
    #[arg(long = "endpoint", required = true)]
    endpoints: Vec<String>,
    /// Model name.
    #[arg(long)]
    model: String,
    /// Privacy level of the requests.
    #[arg(long)]
    privacy: Option<Privacy>,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The model's plans, as JSON.
    Plans,
    /// Measured requests.
    Run {
        /// Rounds (each: every plan forced once, then one adaptive request).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Adaptive requests only, for this many seconds.
        #[arg(long)]
        adaptive_only: bool,
        /// Duration of an adaptive-only run, s.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Pause between adaptive-only requests, ms.
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        /// Per-request deadline, ms.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        /// After preparing, print `{"kind":"prepared"}` and wait for a line on stdin before measuring.
        #[arg(long)]
        wait_for_go: bool,
        /// Before measuring, run every plan once and wait this long for the control plane to calibrate
        /// its tiers from what the agents measured (and plan again); repeated while the plans change, at
        /// most 3 times. 0: no settling.
        #[arg(long, default_value_t = 0.0)]
        settle_s: f64,
    },
}

/// Deterministic inputs of the table's shapes and types.
fn inputs(table: &v1::RouteTable) -> Result<HashMap<String, TensorData>> {
    let mut out = HashMap::new();
    let mut x: u32 = 0x1234_5678;
    for i in &table.inputs {
        let dtype = DType::from_onnx_code(i.dtype)
            .with_context(|| format!("input {}: unsupported type {}", i.name, i.dtype))?;
        let shape: Vec<usize> = i.shape.iter().map(|&d| d as usize).collect();
        let n: usize = shape.iter().product();
        let data: Vec<u8> = match dtype {
            DType::F32 => (0..n)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    ((x % 2000) as f32 / 1000.0 - 1.0).to_le_bytes()
                })
                .collect(),
            other => vec![0u8; n * other.size()],
        };
        out.insert(i.name.clone(), TensorData::new(dtype, shape, data)?);
    }
    Ok(out)
}

/// The table's plans that `base`'s privacy allows, best first.
fn allowed_plans<'t>(
    adaptive: &Client,
    table: &'t v1::RouteTable,
    base: &Constraints,
) -> Result<Vec<&'t v1::Plan>> {
    Ok(adaptive
        .explain(&table.model, base)?
        .ranked
        .iter()
        .filter_map(|c| table.plans.iter().find(|p| p.id == c.plan_id))
        .collect())
}

/// Plans as JSON: id, tiers, the prediction as planned (`profiled_ms`, with the control plane's tier
/// calibration) and before any calibration (`uncalibrated_ms`: the profile's tier speeds), and the device
/// energy as planned.
fn describe(table: &v1::RouteTable, plans: &[&v1::Plan]) -> Vec<serde_json::Value> {
    let calibration = strata_proto::convert::tier_calibration(table);
    let uncalibrated = Conditions {
        links: strata_proto::convert::link_profiles(table),
        speed: calibration.map(|f| 1.0 / f),
        queue_ms: [0.0; 3],
    };
    let power = strata_proto::convert::device_power(table);
    plans
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "tiers": p.stages.iter().map(|s| strata_proto::convert::tier_name(s.tier)).collect::<Vec<_>>(),
                "profiled_ms": p.latency_ms,
                "uncalibrated_ms": route::predict(p, &uncalibrated, &power, &|_| None).map(|x| x.latency_ms),
                "profiled_energy_mj": p.device_energy_mj,
            })
        })
        .collect()
}

fn client(endpoints: &[String], timeout_ms: u64) -> Result<Client> {
    let mut config = ClientConfig::new(endpoints.to_vec());
    config.request_timeout = Duration::from_millis(timeout_ms);
    Ok(Client::new(config)?)
}

async fn one(
    client: &Client,
    model: &str,
    inputs: &HashMap<String, TensorData>,
    constraints: Constraints,
    kind: &str,
    started: Instant,
) -> serde_json::Value {
    let t_s = started.elapsed().as_secs_f64();
    let sent = Instant::now();
    match client
        .infer(model, inputs.clone(), constraints.clone())
        .await
    {
        Ok(r) => json!({
            "t_s": t_s, "kind": kind, "plan": r.plan_id, "ok": true,
            "latency_ms": sent.elapsed().as_secs_f64() * 1e3,
            "predicted_ms": r.predicted.latency_ms, "energy_mj": r.predicted.energy_mj,
            "forced": constraints.plan, "explored": r.explored,
        }),
        Err(e) => json!({
            "t_s": t_s, "kind": kind, "plan": constraints.plan, "ok": false,
            "latency_ms": sent.elapsed().as_secs_f64() * 1e3, "error": e.to_string(),
        }),
    }
}

async fn run(args: Args) -> Result<()> {
    let (rounds, adaptive_only, seconds, interval_ms, timeout_ms, wait_for_go, settle_s) =
        match args.command {
            Mode::Plans => (0, false, 0.0, 0, 60_000, false, 0.0),
            Mode::Run {
                rounds,
                adaptive_only,
                seconds,
                interval_ms,
                timeout_ms,
                wait_for_go,
                settle_s,
            } => (
                rounds,
                adaptive_only,
                seconds,
                interval_ms,
                timeout_ms,
                wait_for_go,
                settle_s,
            ),
        };
    let adaptive = client(&args.endpoints, timeout_ms)?;
    let table = adaptive
        .routes(&args.model)
        .await
        .with_context(|| format!("route table of {}", args.model))?;
    let base = Constraints {
        privacy: args.privacy,
        ..Constraints::default()
    };
    if rounds == 0 && !adaptive_only {
        let plans = allowed_plans(&adaptive, &table, &base)?;
        println!("{}", serde_json::to_string(&describe(&table, &plans))?);
        return Ok(());
    }
    let inputs = inputs(&table)?;
    // One client per plan: each plan's connection idles between rounds like the adaptive client's does (a
    // shared one would stay warm and unfairly fast: TCP restarts slow start after an idle period).
    let mut forced: Vec<Client> = Vec::new();
    let mut settle_rounds = 0;
    let (table, allowed) = loop {
        let table = adaptive.routes(&args.model).await?;
        let allowed: Vec<v1::Plan> = allowed_plans(&adaptive, &table, &base)?
            .into_iter()
            .cloned()
            .collect();
        if allowed.is_empty() {
            bail!("no plan of {} satisfies the privacy asked", args.model);
        }
        adaptive.prepare(&args.model).await?;
        while forced.len() < allowed.len() {
            forced.push(client(&args.endpoints, timeout_ms)?);
        }
        for c in &forced {
            // The stages come from the adaptive client (fetching them again over a slow link takes
            // minutes); prepare then only calibrates.
            c.share_device_stages(&adaptive);
            c.prepare(&args.model).await?;
        }
        if settle_s <= 0.0 || settle_rounds == 3 {
            break (table, allowed);
        }
        settle_rounds += 1;
        // Every plan three times (agents leave a stage's first, cold run out of their means), so every agent
        // reports its stages' times, then time for heartbeats to carry them and the control plane to
        // calibrate and plan again.
        for _ in 0..3 {
            for (p, f) in allowed.iter().zip(&forced) {
                let c = Constraints {
                    plan: Some(p.id.clone()),
                    ..base.clone()
                };
                let line = one(f, &args.model, &inputs, c, "settling", Instant::now()).await;
                println!("{line}");
            }
        }
        // Settled: the table (its plans and calibration) stays as it is for `settle_s` (longer than a
        // heartbeat, the leader's look for drift, a re-plan and the agents loading new stages); a change
        // starts another round on the new plans.
        let quiet = Instant::now() + Duration::from_secs_f64(settle_s);
        let mut same = true;
        while Instant::now() < quiet {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = adaptive.routes(&args.model).await?;
            same = now.tier_calibration == table.tier_calibration
                && now
                    .plans
                    .iter()
                    .map(|p| &p.id)
                    .eq(table.plans.iter().map(|p| &p.id));
            if !same {
                break;
            }
        }
        let now = adaptive.routes(&args.model).await?;
        println!(
            "{}",
            json!({"kind": "settled", "round": settle_rounds, "changed": !same,
                   "tier_calibration": now.tier_calibration})
        );
        if same {
            break (table, allowed);
        }
    };
    let allowed: Vec<&v1::Plan> = allowed.iter().collect();
    let forced = &forced[..allowed.len()];
    // The plans measured, with their predictions before any calibration and as planned.
    println!(
        "{}",
        json!({"kind": "plans", "plans": describe(&table, &allowed)})
    );
    // Prepared (stages fetched and calibrated): say so, and wait for the go (a line on stdin) when asked to,
    // so the testbed can fetch the stages over a fast link and then set the scenario's (an app's stages are
    // prefetched, not fetched on its first request).
    println!("{}", json!({"kind": "prepared"}));
    if wait_for_go {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    // Warm-up: every plan once (connections, stage caches), the adaptive client twice; printed with kind
    // "warmup" (the adaptive client's first choices show what it believed before it measured anything).
    let started = Instant::now();
    let force = |p: &v1::Plan| Constraints {
        plan: Some(p.id.clone()),
        ..base.clone()
    };
    for (p, f) in allowed.iter().zip(forced) {
        println!(
            "{}",
            one(f, &args.model, &inputs, force(p), "warmup", started).await
        );
    }
    for _ in 0..2 {
        println!(
            "{}",
            one(
                &adaptive,
                &args.model,
                &inputs,
                base.clone(),
                "warmup-adaptive",
                started
            )
            .await
        );
    }
    let started = Instant::now();
    println!("{}", json!({"kind": "started"}));
    if adaptive_only {
        while started.elapsed().as_secs_f64() < seconds {
            let line = one(
                &adaptive,
                &args.model,
                &inputs,
                base.clone(),
                "adaptive",
                started,
            )
            .await;
            println!("{line}");
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        }
        return Ok(());
    }
    // Each round runs every plan forced and one adaptive request in a shuffled order (a fixed seed, so runs
    // repeat): whatever one request leaves behind (a tier's CPU quota spent, a cold cache) falls on a
    // different request each round, not always on the same one.
    let mut order: Vec<Option<usize>> = (0..allowed.len()).map(Some).chain([None]).collect();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..rounds {
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for slot in &order {
            let line = match slot {
                Some(i) => {
                    let c = force(allowed[*i]);
                    one(&forced[*i], &args.model, &inputs, c, "forced", started).await
                }
                None => {
                    one(
                        &adaptive,
                        &args.model,
                        &inputs,
                        base.clone(),
                        "adaptive",
                        started,
                    )
                    .await
                }
            };
            println!("{line}");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let _telemetry = strata_proto::logging::init("strata-drive", "warn");
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}
