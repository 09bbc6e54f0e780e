//! `strata`: inspect, profile, plan, split and run ONNX models across device, edge and cloud.

#![forbid(unsafe_code)]

/// `println!` that returns the write error instead of panicking (a closed pipe is not a crash).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod inspect;
mod io;
mod plan;
mod profile;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use strata_planner::analyse::InputShape;
use strata_planner::privacy::Privacy;

/// Strata runs one neural network across device, edge and cloud.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Operators, parameters, FLOPs and activation sizes of a model; unsupported operators by node and op.
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        /// Concrete shape for a model input: NAME=d0,d1,.. (repeatable).
        #[arg(long = "input", value_name = "NAME=D0,D1,..")]
        inputs: Vec<InputShape>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Measure every node's time on this machine with tract (warm-up, then the median of N runs).
    Profile {
        /// The ONNX model.
        model: PathBuf,
        /// Concrete shape for a model input: NAME=d0,d1,.. (repeatable).
        #[arg(long = "input", value_name = "NAME=D0,D1,..")]
        inputs: Vec<InputShape>,
        /// Timed runs.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Untimed warm-up runs.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Write the profile as JSON here (for `strata plan --profile`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Find the best device→edge→cloud split for a cluster and write the stages.
    Plan {
        /// The ONNX model.
        model: PathBuf,
        /// Cluster description (TOML; see examples/clusters/).
        #[arg(long)]
        cluster: PathBuf,
        /// What data may leave the device: device, edge, features, open.
        #[arg(long, default_value = "open")]
        privacy: Privacy,
        /// What to minimise.
        #[arg(long, value_enum, default_value_t = ObjectiveArg::Latency)]
        objective: ObjectiveArg,
        /// End-to-end latency budget in ms (with --objective energy: the least-energy plan that meets it).
        #[arg(long = "latency-ms")]
        latency_ms: Option<f64>,
        /// Measured per-node times from `strata profile --out`.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Concrete shape for a model input: NAME=d0,d1,.. (repeatable).
        #[arg(long = "input", value_name = "NAME=D0,D1,..")]
        inputs: Vec<InputShape>,
        /// Directory for plan.json and the stage models.
        #[arg(long)]
        out: PathBuf,
        /// Print plan.json instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Split a model by hand at the given tensors; stages get tiers device, edge, cloud in order.
    Split {
        /// The ONNX model.
        model: PathBuf,
        /// One boundary: the tensors it cuts after (repeat --at for more boundaries).
        #[arg(long = "at", value_name = "T1,T2,..", required = true)]
        at: Vec<String>,
        /// Concrete shape for a model input: NAME=d0,d1,.. (repeatable).
        #[arg(long = "input", value_name = "NAME=D0,D1,..")]
        inputs: Vec<InputShape>,
        /// Predict latency, device energy and memory of this split on a cluster (TOML).
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Directory for plan.json and the stage models.
        #[arg(long)]
        out: PathBuf,
        /// Print plan.json instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a whole model, or a plan's stages in order, on .npy inputs.
    Run {
        /// An ONNX model, or a directory written by `strata plan` / `strata split`.
        model_or_plan: PathBuf,
        /// A model input: NAME=FILE.npy (repeatable).
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Where to write each model output as <name>.npy.
        #[arg(long = "output-dir")]
        output_dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ObjectiveArg {
    Latency,
    Energy,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect {
            model,
            inputs,
            json,
        } => inspect::run(&model, &inputs, json),
        Command::Profile {
            model,
            inputs,
            runs,
            warmup,
            out,
        } => profile::run(&model, &inputs, runs, warmup, out.as_deref()),
        Command::Plan {
            model,
            cluster,
            privacy,
            objective,
            latency_ms,
            profile,
            inputs,
            out,
            json,
        } => {
            let objective = match objective {
                ObjectiveArg::Latency => strata_planner::partition::Objective::Latency,
                ObjectiveArg::Energy => strata_planner::partition::Objective::Energy,
            };
            plan::plan(&plan::PlanArgs {
                model: &model,
                cluster: &cluster,
                privacy,
                objective,
                latency_ms,
                profile: profile.as_deref(),
                inputs: &inputs,
                out: &out,
                json,
            })
        }
        Command::Split {
            model,
            at,
            inputs,
            cluster,
            out,
            json,
        } => {
            let boundaries: Vec<Vec<String>> = at
                .iter()
                .map(|b| {
                    b.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .collect();
            plan::split(&model, &boundaries, &inputs, cluster.as_deref(), &out, json)
        }
        Command::Run {
            model_or_plan,
            inputs,
            output_dir,
        } => run::run(&model_or_plan, &inputs, &output_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`strata ... | head`): nothing left to say.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
