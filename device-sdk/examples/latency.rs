//! Request latency as a device sees it: one `strata_device_sdk::Client`, N sequential `infer` calls, then
//! p50 / p99 / mean of the wall time of each call (measured around `Client::infer`, so it includes the device
//! stage, every remote hop and any fallback).
//!
//! ```sh
//! cargo run --release -p strata-device-sdk --example latency -- \
//!     --endpoint 127.0.0.1:7400 --model squeezenet --n 300 --privacy features
//! ```
//!
//! Inputs: `--input NAME=FILE.npy` (repeatable), or by default every model input `NAME` read from
//! `DIR/<NAME with odd characters as _>.npy`, where `DIR` is `--inputs-dir` (default
//! `corpus/models/<model>.inputs`, as `python3 corpus/fetch.py` writes it).
//!
//! With `--rounds-from-stdin` the same client (same connections, same cached route table) measures several
//! rounds: after preparing and warming up it prints `READY`, then for each stdin line `LABEL [N]` it runs N
//! requests (default `--n`) and prints one `RESULT label=LABEL ...` line; it ends at end of input. Scripts
//! use this to change the environment between rounds without restarting the client.
//!
//! Every round prints one line of `key=value` pairs:
//! `RESULT label=… n=… ok=… errors=… p50_ms=… p99_ms=… mean_ms=… min_ms=… max_ms=… fallbacks=… routes=…`
//! where `routes` counts the tier chains the requests took (e.g. `device>edge:300`).

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use strata_device_sdk::{Client, ClientConfig, Constraints, Privacy, TensorData};
use strata_runtime::npy;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: latency --endpoint HOST:PORT[,HOST:PORT…] --model NAME [--n N] [--warmup N] \
[--privacy device|edge|features|open] [--latency-ms MS] [--energy-mj MJ] [--timeout-ms MS] \
[--input NAME=FILE.npy]… [--inputs-dir DIR] [--rounds-from-stdin]";

struct Args {
    endpoints: Vec<String>,
    model: String,
    n: usize,
    warmup: usize,
    constraints: Constraints,
    timeout_ms: u64,
    inputs: Vec<(String, PathBuf)>,
    inputs_dir: Option<PathBuf>,
    rounds_from_stdin: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        endpoints: Vec::new(),
        model: String::new(),
        n: 300,
        warmup: 10,
        constraints: Constraints::default(),
        timeout_ms: 30_000,
        inputs: Vec::new(),
        inputs_dir: None,
        rounds_from_stdin: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--rounds-from-stdin" {
            args.rounds_from_stdin = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--endpoint" => args.endpoints.extend(
                value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
            "--model" => args.model = value,
            "--n" => args.n = value.parse().map_err(|e| format!("--n {value}: {e}"))?,
            "--warmup" => {
                args.warmup = value
                    .parse()
                    .map_err(|e| format!("--warmup {value}: {e}"))?
            }
            "--privacy" => args.constraints.privacy = Some(value.parse::<Privacy>()?),
            "--latency-ms" => {
                args.constraints.latency_ms = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--latency-ms {value}: {e}"))?,
                )
            }
            "--energy-mj" => {
                args.constraints.energy_mj = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--energy-mj {value}: {e}"))?,
                )
            }
            "--timeout-ms" => {
                args.timeout_ms = value
                    .parse()
                    .map_err(|e| format!("--timeout-ms {value}: {e}"))?
            }
            "--input" => {
                let (name, file) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--input \"{value}\" must look like NAME=FILE.npy"))?;
                args.inputs.push((name.to_string(), PathBuf::from(file)));
            }
            "--inputs-dir" => args.inputs_dir = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
        }
    }
    if args.endpoints.is_empty() || args.model.is_empty() {
        return Err(format!("--endpoint and --model are required\n{USAGE}").into());
    }
    if args.n == 0 {
        return Err("--n must be at least 1".into());
    }
    Ok(args)
}

fn read_npy(path: &PathBuf) -> Result<TensorData> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(npy::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// The explicit `--input`s, else every input the route table names, from the inputs directory.
async fn load_inputs(client: &Client, args: &Args) -> Result<HashMap<String, TensorData>> {
    let mut inputs = HashMap::new();
    if !args.inputs.is_empty() {
        for (name, file) in &args.inputs {
            inputs.insert(name.clone(), read_npy(file)?);
        }
        return Ok(inputs);
    }
    let dir = args
        .inputs_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("corpus/models").join(format!("{}.inputs", args.model)));
    let table = client.routes(&args.model).await?;
    for spec in &table.inputs {
        let file = dir.join(format!("{}.npy", npy::file_stem(&spec.name)));
        inputs.insert(spec.name.clone(), read_npy(&file)?);
    }
    Ok(inputs)
}

/// One round's figures.
struct Round {
    latencies_ms: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    fallbacks: u64,
    routes: BTreeMap<String, usize>,
}

async fn round(
    client: &Client,
    model: &str,
    inputs: &HashMap<String, TensorData>,
    constraints: Constraints,
    n: usize,
) -> Round {
    let mut r = Round {
        latencies_ms: Vec::with_capacity(n),
        errors: 0,
        first_error: None,
        fallbacks: 0,
        routes: BTreeMap::new(),
    };
    for _ in 0..n {
        // The SDK takes its inputs by value; the clone is made before the clock starts.
        let request = inputs.clone();
        let started = Instant::now();
        let result = client.infer(model, request, constraints.clone()).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(inference) => {
                r.latencies_ms.push(ms);
                r.fallbacks += u64::from(inference.fallbacks);
                let route: Vec<&str> = inference.stages.iter().map(|s| s.tier).collect();
                *r.routes.entry(route.join(">")).or_default() += 1;
            }
            Err(e) => {
                r.errors += 1;
                if r.first_error.is_none() {
                    r.first_error = Some(e.to_string());
                }
            }
        }
    }
    r
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(label: &str, r: &Round) -> String {
    let mut sorted = r.latencies_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mean = if sorted.is_empty() {
        f64::NAN
    } else {
        sorted.iter().sum::<f64>() / sorted.len() as f64
    };
    let routes: Vec<String> = r.routes.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let mut line = format!(
        "RESULT label={label} n={} ok={} errors={} p50_ms={:.2} p99_ms={:.2} mean_ms={:.2} min_ms={:.2} \
         max_ms={:.2} fallbacks={} routes={}",
        sorted.len() + r.errors,
        sorted.len(),
        r.errors,
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        mean,
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
        r.fallbacks,
        if routes.is_empty() {
            "-".to_string()
        } else {
            routes.join(",")
        },
    );
    if let Some(e) = &r.first_error {
        line.push_str(&format!(" first_error={e:?}"));
    }
    line
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = {
        let _guard = runtime.enter();
        let mut config = ClientConfig::new(args.endpoints.clone());
        config.request_timeout = Duration::from_millis(args.timeout_ms);
        Client::new(config)?
    };
    let inputs = runtime.block_on(async {
        let inputs = load_inputs(&client, &args).await?;
        client.prepare(&args.model).await?;
        Ok::<_, Box<dyn Error>>(inputs)
    })?;
    let warm = runtime.block_on(round(
        &client,
        &args.model,
        &inputs,
        args.constraints.clone(),
        args.warmup,
    ));
    if warm.errors > 0 && warm.latencies_ms.is_empty() && args.warmup > 0 {
        return Err(format!(
            "every warm-up request failed: {}",
            warm.first_error.unwrap_or_default()
        )
        .into());
    }
    let mut stdout = std::io::stdout();
    if !args.rounds_from_stdin {
        let r = runtime.block_on(round(
            &client,
            &args.model,
            &inputs,
            args.constraints,
            args.n,
        ));
        writeln!(stdout, "{}", report("run", &r))?;
        return if r.latencies_ms.is_empty() {
            Err("every request failed".into())
        } else {
            Ok(())
        };
    }
    writeln!(stdout, "READY")?;
    stdout.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let Some(label) = words.next() else { continue };
        let n = match words.next() {
            Some(w) => w
                .parse()
                .map_err(|e| format!("round {label}: N {w}: {e}"))?,
            None => args.n,
        };
        let r = runtime.block_on(round(
            &client,
            &args.model,
            &inputs,
            args.constraints.clone(),
            n,
        ));
        writeln!(stdout, "{}", report(label, &r))?;
        stdout.flush()?;
    }
    Ok(())
}
