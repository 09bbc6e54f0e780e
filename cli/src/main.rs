//! `strata`: inspect, profile, plan, split and run ONNX models across device, edge and cloud.

#![forbid(unsafe_code)]

/// `println!` that returns the write error instead of panicking (a closed pipe is not a crash).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod certs;
mod infer;
mod inspect;
mod io;
mod picture;
mod plan;
mod profile;
mod remote;
mod run;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use strata_core::Privacy;
use strata_planner::analyse::InputShape;

/// Strata runs one neural network across device, edge and cloud.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, propagate_version = true)]
struct Cli {
    /// Cluster address(es): a control plane or an agent, host:port (comma-separated for several).
    #[arg(long, global = true, env = "STRATA_ENDPOINT", value_delimiter = ',', default_value = DEFAULT_ENDPOINT)]
    endpoint: Vec<String>,
    #[command(flatten)]
    tls: strata_trust::args::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where `strata up` serves its control plane by default, and where commands look for one.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7400";

/// The plain side ports of `strata control-plane`.
#[derive(clap::Args, Debug)]
struct SidePortArgs {
    /// Also serve the health service alone, in plain HTTP/2, on this address: for probes that cannot speak
    /// TLS (Kubernetes' grpc probe). `strata.v1.Control` there is NOT_SERVING while the store is
    /// unreachable, as on the main port.
    #[arg(long, value_name = "ADDR")]
    health_listen: Option<String>,
    /// Serve Prometheus metrics at /metrics, in plain HTTP/1.1, on this address (e.g. 0.0.0.0:9400; off when
    /// not given). docs/observability.md lists them.
    #[arg(long, value_name = "ADDR", env = "STRATA_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Upload a model (content-addressed; pushing new content bumps the version).
    Push {
        /// The ONNX file.
        file: PathBuf,
        /// Model name.
        #[arg(long)]
        name: String,
        /// What data may leave the device: device, edge, features, open.
        #[arg(long, default_value = "features")]
        privacy: String,
        /// Concrete shape for a symbolic model input: NAME=d0,d1,.. (repeatable).
        #[arg(long = "input", value_name = "NAME=D0,D1,..")]
        inputs: Vec<String>,
        /// Dynamic batching on agents: run up to N concurrent requests for one stage as one call (Triton's
        /// max_batch_size; 0 or 1: none).
        #[arg(long, value_name = "N", default_value_t = 0)]
        max_batch: u32,
        /// How long the first request of a batch may wait for more, in microseconds (Triton's
        /// max_queue_delay_microseconds; never past a request's deadline).
        #[arg(long, value_name = "US", default_value_t = 0)]
        max_queue_delay_us: u64,
    },
    /// List models.
    Ls,
    /// Remove a model.
    Rm {
        /// Model name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Make a cluster CA: DIR/ca.pem (every member trusts it) and DIR/ca-key.pem (keep it secret).
    Init {
        /// Where to write it.
        #[arg(long, default_value = "strata-ca")]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "strata")]
        name: String,
        /// How long it is valid, days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: u64,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a key and a certificate for an identity, signed by the cluster CA; writes OUT/ca.pem,
    /// OUT/cert.pem and OUT/key.pem (what --tls-dir reads).
    Issue {
        /// What the holder may do: admin, reader, device, edge, cloud (nodes), controller.
        #[arg(long)]
        role: String,
        /// The holder's name (lower-case letters, digits, '-').
        #[arg(long)]
        name: String,
        /// The CA's directory (from `strata ca init`).
        #[arg(long, default_value = "strata-ca")]
        ca_dir: PathBuf,
        /// Where to write the credentials.
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS names or IP addresses for tools that check them (comma-separated).
        #[arg(long, value_delimiter = ',')]
        host: Vec<String>,
        /// How long it is valid, days.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a join token (printed once; the cluster keeps only its hash).
    Create {
        /// The tier of the nodes it admits: edge or cloud.
        #[arg(long)]
        tier: strata_core::Tier,
        /// How long it is valid, minutes.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=525_600))]
        ttl_minutes: u64,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the live tokens.
    Ls,
    /// Revoke a token now.
    Revoke {
        /// Its id (the third part of the token, as `strata token ls` shows it).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Revoke an identity cluster-wide: its calls and connections are refused (within a heartbeat on
    /// agents), its nodes deregistered, and its certificates never renewed.
    Revoke {
        /// NAME.ROLE, e.g. gw-3.edge or phone-7.device.
        identity: String,
        /// Why (kept with the record).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List the revoked identities.
    Ls,
    /// Renew this CLI's own certificate (the one --tls-dir or --tls-cert/--tls-key name) through the control
    /// plane: a new key and a certificate for the same identity (nodes and devices).
    Renew,
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
    /// Measure every node's time on this machine with tract (warm-up, then the median of N runs); with
    /// --fit, fit this machine's roofline (peak GFLOP/s, memory bandwidth, per-operator overhead) to them.
    Profile {
        /// The ONNX model(s); --fit fits one roofline over all of them (more models, a better fit).
        #[arg(required = true)]
        models: Vec<PathBuf>,
        /// Concrete shape for a model input: NAME=d0,d1,.. (repeatable).
        #[arg(long = "input", value_name = "NAME=D0,D1,..")]
        inputs: Vec<InputShape>,
        /// Timed runs.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Untimed warm-up runs.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Write the profile as JSON here (for `strata plan --profile`; one model only).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The runtime that runs the model and times its nodes.
        #[arg(long, value_enum, default_value_t = ProfileBackend::Tract)]
        backend: ProfileBackend,
        /// Fit the roofline to the measured times and print it as a `[tiers.TIER]` section for a cluster file
        /// (docs/cost-model.md).
        #[arg(long)]
        fit: bool,
        /// Also write the fitted section to this file (implies --fit).
        #[arg(long, value_name = "FILE")]
        fit_out: Option<PathBuf>,
        /// The tier the fitted section describes.
        #[arg(long, default_value = "device")]
        tier: strata_core::Tier,
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
        /// Also draw the plan as SVG: nodes coloured by tier, boundaries labelled with the bytes that cross
        /// them, predicted latency and energy in the legend (docs/pictures.md).
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Also write the plan as Graphviz DOT (one cluster per tier; `dot -Tsvg` draws it).
        #[arg(long, value_name = "FILE")]
        dot: Option<PathBuf>,
        /// Also draw the frontier of plans a control plane would publish for this model and cluster, as
        /// `strata routes --svg` draws a route table (docs/pictures.md).
        #[arg(long, value_name = "FILE")]
        frontier_svg: Option<PathBuf>,
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
    /// Control plane, an edge agent and a cloud agent in one process, with a demo model: a cluster to try.
    Up {
        /// Where state, blobs and stage caches live.
        #[arg(long, default_value = "strata-data")]
        data_dir: PathBuf,
        /// Control-plane address; the agents take the next two ports.
        #[arg(long, default_value = DEFAULT_ENDPOINT)]
        listen: String,
        /// Cluster profile for the planner (TOML; default: glasses + phone + cloud).
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Demo model to push (default: corpus/models/squeezenet.onnx when present).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Push no demo model.
        #[arg(long)]
        no_demo: bool,
    },
    /// Run a control plane: on the embedded store (a directory), or as one of several replicas on etcd.
    ControlPlane {
        /// State store: a directory (the embedded store) or etcd://HOST:PORT[,HOST:PORT…][/NAMESPACE].
        #[arg(
            long,
            env = "STRATA_STORE",
            default_value = "strata-data/control-plane"
        )]
        store: String,
        /// Directory of model and stage files (default: STORE/blobs, or strata-data/blobs on etcd, where
        /// replicas fetch the files they lack from each other).
        #[arg(long)]
        blobs: Option<PathBuf>,
        /// etcd over TLS: the CA certificate (PEM) that signed etcd's server certificates.
        #[arg(long)]
        etcd_ca: Option<PathBuf>,
        /// etcd over TLS: this client's certificate (PEM), for etcd's --client-cert-auth.
        #[arg(long, requires = "etcd_key")]
        etcd_cert: Option<PathBuf>,
        /// etcd over TLS: this client's private key (PEM).
        #[arg(long, requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
        /// etcd over TLS: the name etcd's certificate is checked against (default: the endpoint's host).
        #[arg(long)]
        etcd_domain: Option<String>,
        /// etcd user, when etcd has authentication on (the password comes from STRATA_ETCD_PASSWORD).
        #[arg(long)]
        etcd_user: Option<String>,
        /// Address to serve on.
        #[arg(long, default_value = DEFAULT_ENDPOINT)]
        listen: String,
        /// Address other replicas reach this one at (default: the listen address).
        #[arg(long)]
        advertise: Option<String>,
        /// Cluster profile for the planner (TOML; default: glasses + phone + cloud).
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// A node is dropped this long after its last heartbeat.
        #[arg(long, default_value_t = 3000)]
        node_ttl_ms: u64,
        /// After a new model version's routes are published, the old version's stages stay loaded this
        /// long for requests already on their way.
        #[arg(long, default_value_t = 10_000)]
        rollout_grace_ms: u64,
        /// A model or stage file no record references any more is deleted this long after it was last
        /// stored (by every replica, from its own blob directory).
        #[arg(long, default_value_t = 600_000)]
        blob_grace_ms: u64,
        /// Agents' measured stage times calibrate each edge and cloud tier's speed; models are planned
        /// again when a tier's measured speed is more than this many percent off what their plans assumed
        /// (0: never calibrate).
        #[arg(long, default_value_t = 25.0)]
        calibration_band_pct: f64,
        /// How often the leader looks for a tier whose speed drifted.
        #[arg(long, default_value_t = 5000)]
        calibration_period_ms: u64,
        /// The cluster CA (ca.pem and ca-key.pem, from `strata ca init`): with it, this replica admits nodes
        /// that join with a token, and signs their certificates.
        #[arg(long, env = "STRATA_CA_DIR", value_name = "DIR")]
        ca_dir: Option<PathBuf>,
        /// How long a certificate issued at a join or a renewal is valid, days (nodes renew theirs when a
        /// third of it is left).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=36500))]
        node_cert_days: u64,
        /// The same in seconds, for short-lived certificates (overrides --node-cert-days).
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(10..))]
        node_cert_ttl_s: Option<u64>,
        /// Largest model a push may carry, in MiB: a push declaring more gets RESOURCE_EXHAUSTED before its
        /// data is buffered (a push is held whole in memory while it is checked).
        #[arg(long, value_name = "MIB", default_value_t = 4096,
              value_parser = clap::value_parser!(u64).range(1..))]
        max_model_mib: u64,
        /// Concurrent requests (HTTP/2 streams) one client connection may have open; more wait in the client.
        #[arg(long, value_name = "N", default_value_t = strata_proto::server::MAX_STREAMS_PER_CONNECTION,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_streams_per_connection: u32,
        #[command(flatten)]
        side: Box<SidePortArgs>,
    },
    /// The cluster CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates for the cluster's members.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Join tokens: what a new node presents to get its certificate.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Get a certificate with a join token (a device, or a node provisioned ahead of its agent): checks the
    /// control plane's CA against the token, makes a key here, and writes ca.pem, cert.pem and key.pem.
    Join {
        /// The token from `strata token create`.
        #[arg(env = "STRATA_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The tier the token admits: device (default), edge or cloud.
        #[arg(long, default_value = "device")]
        tier: strata_core::Tier,
        /// The name to ask for (a DNS label; must not be taken).
        #[arg(long)]
        name: String,
        /// Where to write the credentials (then use it as --tls-dir / STRATA_TLS_DIR).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issued identities: revoke one, list the revoked, renew this CLI's own certificate.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Models on the cluster.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Registered agents and their load.
    Nodes,
    /// A model's plans, and which one a request with the given constraints would get now.
    Routes {
        /// Model name.
        model: String,
        /// Latency budget, ms.
        #[arg(long = "latency-ms", value_parser = infer::latency_budget)]
        latency_ms: Option<f64>,
        /// Device energy budget, mJ.
        #[arg(long = "energy-mj", value_parser = infer::energy_budget)]
        energy_mj: Option<f64>,
        /// Privacy level for the request (may only tighten the model's).
        #[arg(long)]
        privacy: Option<strata_device_sdk::Privacy>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// As a device here sees it now: probe the RTT to the model's agents from this machine, then show
        /// the estimates and every allowed plan ranked at them.
        #[arg(long, conflicts_with = "json")]
        live: bool,
        /// Also draw the plans as SVG here: latency against device energy, the frontier, the privacy levels
        /// each satisfies (docs/pictures.md).
        #[arg(long, value_name = "FILE", conflicts_with = "live")]
        svg: Option<PathBuf>,
    },
    /// Run a model as a device: the device stage here, the rest on the cluster.
    Infer {
        /// Model name.
        model: String,
        /// A model input: NAME=FILE.npy (repeatable).
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Latency budget, ms (a finite number > 0).
        #[arg(long = "latency-ms", value_parser = infer::latency_budget)]
        latency_ms: Option<f64>,
        /// Device energy budget, mJ (a finite number > 0).
        #[arg(long = "energy-mj", value_parser = infer::energy_budget)]
        energy_mj: Option<f64>,
        /// Privacy level for the request (may only tighten the model's).
        #[arg(long)]
        privacy: Option<strata_device_sdk::Privacy>,
        /// End-to-end deadline, ms.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        /// Where to write each model output as <name>.npy.
        #[arg(long = "output-dir")]
        output_dir: PathBuf,
        /// What to minimise (default: device energy under a latency budget or on low battery, else latency).
        #[arg(long, value_enum)]
        objective: Option<ObjectiveArg>,
        /// Run this plan (an id from `strata routes`) and no other.
        #[arg(long = "plan", value_name = "ID")]
        plan: Option<String>,
        /// The device's battery level, percent (below 20 and not charging: requests save energy).
        #[arg(long, value_name = "PCT")]
        battery: Option<f64>,
        /// The device is on external power.
        #[arg(long)]
        charging: bool,
        /// Explain the choice: the estimates used, the chosen plan and the runners-up, predicted against
        /// measured per stage and per hop.
        #[arg(short, long)]
        verbose: bool,
        /// The device stage cache (default: $STRATA_CACHE_DIR, else $XDG_CACHE_HOME/strata, else
        /// ~/.cache/strata), shared with other processes.
        #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
        cache_dir: Option<PathBuf>,
        /// Keep device stages in memory only (fetch them again next time).
        #[arg(long)]
        no_cache: bool,
        /// Only plans whose device stages are cached already (never wait for a download).
        #[arg(long)]
        local_only: bool,
    },
}

/// Runtimes `strata profile` can time node by node.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileBackend {
    /// tract, the runtime stages run on by default.
    Tract,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ObjectiveArg {
    Latency,
    Energy,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands print their own output and log only warnings; the control plane logs what it does.
    let _telemetry = match cli.command {
        Command::ControlPlane { .. } => strata_proto::logging::init("strata-control-plane", "info"),
        _ => strata_proto::logging::init("strata", "warn"),
    };
    match run_command(cli) {
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

fn run_command(cli: Cli) -> anyhow::Result<()> {
    // The transport of client commands (those that serve check theirs against their listen address).
    let target = || -> anyhow::Result<remote::Target> {
        Ok(remote::Target {
            endpoints: cli.endpoint.clone(),
            transport: cli.tls.transport()?,
        })
    };
    match cli.command {
        Command::Inspect {
            model,
            inputs,
            json,
        } => inspect::run(&model, &inputs, json),
        Command::Profile {
            models,
            inputs,
            runs,
            warmup,
            out,
            backend: ProfileBackend::Tract,
            fit,
            fit_out,
            tier,
        } => profile::run(&profile::ProfileArgs {
            models: &models,
            inputs: &inputs,
            runs,
            warmup,
            out: out.as_deref(),
            fit,
            fit_out: fit_out.as_deref(),
            tier,
        }),
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
            svg,
            dot,
            frontier_svg,
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
                svg: svg.as_deref(),
                dot: dot.as_deref(),
                frontier_svg: frontier_svg.as_deref(),
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
        Command::Up {
            data_dir,
            listen,
            cluster,
            model,
            no_demo,
        } => up::up(&up::UpArgs {
            data_dir: &data_dir,
            listen: &listen,
            cluster: cluster.as_deref(),
            model: model.as_deref(),
            no_demo,
        }),
        Command::ControlPlane {
            store,
            blobs,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_domain,
            etcd_user,
            listen,
            advertise,
            cluster,
            node_ttl_ms,
            rollout_grace_ms,
            blob_grace_ms,
            calibration_band_pct,
            calibration_period_ms,
            ca_dir,
            node_cert_days,
            node_cert_ttl_s,
            max_model_mib,
            max_streams_per_connection,
            side,
        } => up::control_plane(&up::ControlPlaneArgs {
            health_listen: side.health_listen.as_deref(),
            metrics_listen: side.metrics_listen.as_deref(),
            ca_dir: ca_dir.as_deref(),
            node_cert_ttl: std::time::Duration::from_secs(
                node_cert_ttl_s.unwrap_or(node_cert_days.saturating_mul(24 * 3600)),
            ),
            max_model_mib,
            max_streams_per_connection,
            tls: &cli.tls,
            store: &store,
            blobs: blobs.as_deref(),
            etcd: up::EtcdArgs {
                ca: etcd_ca.as_deref(),
                cert: etcd_cert.as_deref(),
                key: etcd_key.as_deref(),
                domain: etcd_domain.as_deref(),
                user: etcd_user.as_deref(),
            },
            listen: &listen,
            advertise: advertise.as_deref(),
            cluster: cluster.as_deref(),
            node_ttl_ms,
            rollout_grace_ms,
            blob_grace_ms,
            calibration_band_pct,
            calibration_period_ms,
        }),
        Command::Model { command } => match command {
            ModelCommand::Push {
                file,
                name,
                privacy,
                inputs,
                max_batch,
                max_queue_delay_us,
            } => {
                let batching = (max_batch > 1).then_some(strata_proto::v1::Batching {
                    max_batch,
                    max_queue_delay_us,
                });
                remote::push(&target()?, &file, &name, &privacy, &inputs, batching)
            }
            ModelCommand::Ls => remote::list(&target()?),
            ModelCommand::Rm { name } => remote::remove(&target()?, &name),
        },
        Command::Ca {
            command: CaCommand::Init { dir, name, days },
        } => certs::init(&dir, &name, days),
        Command::Cert {
            command:
                CertCommand::Issue {
                    role,
                    name,
                    ca_dir,
                    out,
                    host,
                    days,
                },
        } => certs::identity(&role, &name)
            .and_then(|id| certs::issue(&ca_dir, &id, &host, days, &out)),
        Command::Token { command } => match command {
            TokenCommand::Create {
                tier,
                ttl_minutes,
                uses,
                description,
            } => remote::create_token(&target()?, tier, ttl_minutes, uses, description),
            TokenCommand::Ls => remote::list_tokens(&target()?),
            TokenCommand::Revoke { id } => remote::revoke_token(&target()?, &id),
        },
        Command::Join {
            token,
            tier,
            name,
            out,
        } => remote::join(&target()?, &token, tier, &name, &out),
        Command::Identity { command } => match command {
            IdentityCommand::Revoke { identity, reason } => {
                remote::revoke_identity(&target()?, &identity, reason)
            }
            IdentityCommand::Ls => remote::list_revoked(&target()?),
            IdentityCommand::Renew => remote::renew(&target()?),
        },
        Command::Nodes => remote::nodes(&target()?),
        Command::Routes {
            model,
            latency_ms,
            energy_mj,
            privacy,
            json,
            live,
            svg,
        } => {
            let constraints = strata_device_sdk::Constraints {
                latency_ms,
                energy_mj,
                privacy,
                ..Default::default()
            };
            if live {
                remote::live_routes(&target()?, &model, &constraints)
            } else {
                remote::routes(&target()?, &model, &constraints, json, svg.as_deref())
            }
        }
        Command::Infer {
            model,
            inputs,
            latency_ms,
            energy_mj,
            privacy,
            timeout_ms,
            output_dir,
            objective,
            plan,
            battery,
            charging,
            verbose,
            cache_dir,
            no_cache,
            local_only,
        } => {
            let constraints = strata_device_sdk::Constraints {
                latency_ms,
                energy_mj,
                privacy,
                objective: objective.map(|o| match o {
                    ObjectiveArg::Latency => strata_device_sdk::Objective::Latency,
                    ObjectiveArg::Energy => strata_device_sdk::Objective::Energy,
                }),
                plan,
                local_only,
            };
            infer::infer(&infer::Args {
                transport: cli.tls.transport()?,
                endpoints: &cli.endpoint,
                model: &model,
                input_args: &inputs,
                constraints,
                timeout_ms,
                output_dir: &output_dir,
                battery,
                charging,
                verbose,
                cache_dir: if no_cache {
                    None
                } else {
                    cache_dir.or_else(infer::default_cache_dir)
                },
            })
        }
    }
}
