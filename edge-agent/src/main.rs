//! `strata-edge-agent`: the node daemon for edge boxes and cloud nodes.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use strata_core::Tier;
use strata_edge_agent::{Agent, AgentConfig};

/// Serve Strata stages on an edge box or a cloud node.
#[derive(Parser, Debug)]
#[command(name = "strata-edge-agent", version)]
struct Args {
    /// Tier this node serves: edge or cloud.
    #[arg(long)]
    tier: String,
    /// Control-plane address(es), comma-separated (host:port or http://host:port).
    #[arg(
        long,
        env = "STRATA_CONTROL_PLANE",
        value_delimiter = ',',
        required = true
    )]
    control_plane: Vec<String>,
    /// Address to serve on (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:7410")]
    listen: String,
    /// Address others use to reach this node (default: the listen address, with 127.0.0.1 for 0.0.0.0).
    #[arg(long)]
    advertise: Option<String>,
    /// A name for this node (default: <tier>-<hostname>; under TLS, the certificate's name).
    #[arg(long)]
    name: Option<String>,
    /// Where stage files are cached.
    #[arg(long, default_value = "strata-agent-data")]
    data_dir: PathBuf,
    /// What runs the stages: auto (the fastest that works here: ONNX Runtime on TensorRT, CUDA or the CPU,
    /// else tract), tract, or ort[:cpu|:cuda|:tensorrt] (an error at start-up if it is not there; ONNX
    /// Runtime's library comes from ORT_DYLIB_PATH or the onnxruntime wheel, see docs/backends.md).
    #[arg(
        long,
        env = "STRATA_BACKEND",
        default_value = "auto",
        value_name = "BACKEND"
    )]
    backend: strata_edge_agent::backend::BackendChoice,
    /// Intra-op threads per ONNX Runtime session (default: the cores shared among the slots, at least 1; 0:
    /// ONNX Runtime's own default, one per physical core).
    #[arg(long, value_name = "N")]
    backend_threads: Option<usize>,
    /// ONNX Runtime sessions per stage, so that many requests for one stage run at once (default: one per
    /// slot; each holds the stage's weights).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    backend_instances: Option<u64>,
    /// Batch the models pushed with --max-batch wherever their batched stages answer correctly, even where
    /// they measured slower per request than runs alone (by default those run one request at a time; tract's
    /// kernels are tuned for one item).
    #[arg(long)]
    batch_always: bool,
    /// Stages computed at once (default: number of cores).
    #[arg(long)]
    slots: Option<u32>,
    /// Requests allowed to wait for a slot before new ones get RESOURCE_EXHAUSTED (default: 4 per slot).
    #[arg(long)]
    queue: Option<u32>,
    /// Cached stage files neither assigned nor routed any more are deleted this long after they were stored.
    #[arg(long, default_value_t = 600_000)]
    cache_grace_ms: u64,
    /// Largest tensor data one Infer request may carry, all tensors together, in MiB (default 256): a request
    /// declaring more gets RESOURCE_EXHAUSTED before its data is buffered. Also caps what a forwarded request
    /// brings back.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    max_request_mib: Option<u64>,
    /// Largest single tensor of a request, in MiB (default: the request limit).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    max_tensor_mib: Option<u64>,
    /// Most tensor chunks one Infer request may be split into (default 16384; Strata's senders use 1 MiB
    /// chunks).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_request_chunks: Option<u64>,
    /// Longest one Infer request may take here, in ms, waiting for the client's data included: a request with
    /// no deadline (grpc-timeout) or a longer one is served under this one, which is also the deadline passed
    /// on to the next tier, and then gets DEADLINE_EXCEEDED, its slot released.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_request_ms: u64,
    /// Concurrent requests (HTTP/2 streams) one client connection may have open; more wait in the client.
    #[arg(long, value_name = "N", default_value_t = strata_proto::server::MAX_STREAMS_PER_CONNECTION,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    #[command(flatten)]
    tls: strata_trust::args::TlsArgs,
    /// Join the cluster with this token (from `strata token create --tier TIER`): get a node certificate
    /// from the control plane into --tls-dir (default DATA_DIR/tls), unless one is there already.
    #[arg(
        long,
        env = "STRATA_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    join: Option<String>,
    /// Do not renew this node's certificate through the control plane (when something else rotates the
    /// files, e.g. cert-manager into a read-only Secret volume).
    #[arg(long)]
    no_renew: bool,
    /// Renew the certificate this many seconds before it expires (default: when a third of its lifetime is
    /// left).
    #[arg(long, value_name = "SECONDS")]
    renew_before_s: Option<u64>,
    /// Also serve the health service alone, in plain HTTP/2, on this address: for probes that cannot speak
    /// TLS (Kubernetes' grpc probe).
    #[arg(long, value_name = "ADDR")]
    health_listen: Option<String>,
    /// Serve Prometheus metrics at /metrics, in plain HTTP/1.1, on this address (e.g. 0.0.0.0:9410; off when
    /// not given). docs/observability.md lists them.
    #[arg(long, value_name = "ADDR", env = "STRATA_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let _telemetry = strata_proto::logging::init("strata-edge-agent", "info");
    let args = Args::parse();
    let tier = match args.tier.parse::<Tier>() {
        Ok(t @ (Tier::Edge | Tier::Cloud)) => t,
        _ => bail!("--tier must be edge or cloud, not \"{}\"", args.tier),
    };
    let mut tls = args.tls.clone();
    if let Some(token) = &args.join {
        let token = strata_trust::token::Token::parse(token)?;
        let dir = tls
            .tls_dir
            .get_or_insert_with(|| args.data_dir.join("tls"))
            .clone();
        if dir.join("cert.pem").exists() {
            tracing::info!(dir = %dir.display(), "already joined; the token is not used");
        } else {
            let name = strata_edge_agent::join::dns_label(
                &args
                    .name
                    .clone()
                    .unwrap_or_else(|| strata_edge_agent::agent::default_name(tier)),
            );
            strata_edge_agent::join::join(
                &args.control_plane,
                &token,
                tier,
                &name,
                &dir,
                std::time::Duration::from_secs(5),
            )
            .await
            .context("cannot join the cluster")?;
        }
    }
    // Plain HTTP/2 off loopback only with --insecure; under TLS the certificate decides tier and name.
    let transport = tls.server_transport(&args.listen)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let advertise = args.advertise.unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            format!("127.0.0.1:{}", bound.port())
        } else {
            bound.to_string()
        }
    });
    let slots = args.slots.unwrap_or_else(strata_edge_agent::agent::cores);
    let mut ort = strata_edge_agent::backend::OrtSettings::for_slots(
        slots,
        strata_edge_agent::agent::cores(),
    );
    if let Some(threads) = args.backend_threads {
        ort.threads = threads;
    }
    if let Some(instances) = args.backend_instances {
        ort.instances = usize::try_from(instances).unwrap_or(usize::MAX);
    }
    let choice = args.backend;
    let backend =
        tokio::task::spawn_blocking(move || strata_edge_agent::backend::select(choice, ort))
            .await
            .context("the backend probe failed")??;
    for (candidate, why) in &backend.tried {
        tracing::info!(%candidate, reason = %why, "backend passed over");
    }
    tracing::info!(backend = backend.backend.name(), asked = %choice, "stages run on {}", backend.backend.name());
    let mut config = AgentConfig::new(tier, args.control_plane, advertise, args.data_dir);
    config.backend = backend;
    config.batch_always = args.batch_always;
    if let Some(name) = args.name {
        config.name = name;
    }
    if let Some(slots) = args.slots {
        config.slots = slots;
        config.queue = slots * 4;
    }
    if let Some(queue) = args.queue {
        config.queue = queue;
    }
    config.cache_grace = std::time::Duration::from_millis(args.cache_grace_ms);
    let mib = |flag: &str, n: u64| {
        n.checked_mul(1 << 20)
            .with_context(|| format!("--{flag} {n} is more bytes than this machine can count"))
    };
    if let Some(n) = args.max_request_mib {
        config.max_request_bytes = mib("max-request-mib", n)?;
        config.max_tensor_bytes = config.max_request_bytes;
    }
    if let Some(n) = args.max_tensor_mib {
        config.max_tensor_bytes = mib("max-tensor-mib", n)?;
    }
    if let Some(n) = args.max_request_chunks {
        config.max_request_chunks = n;
    }
    config.max_request_time = std::time::Duration::from_millis(args.max_request_ms);
    config.max_streams_per_connection = args.max_streams_per_connection;
    config.transport = transport.clone();
    let control_planes = config.control_planes.clone();
    let agent = Agent::new(config).context("cannot start the agent")?;
    // Renewed over the certificate itself, before it expires; the transport reloads the files.
    let _renewal = (transport.is_tls() && !args.no_renew).then(|| {
        strata_proto::task::AbortOnDrop::spawn(strata_edge_agent::join::keep_renewed(
            control_planes,
            transport,
            args.renew_before_s,
        ))
    });
    // Tests and scripts read this line to learn the port.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "listening on {bound}");
    }
    let side = strata_edge_agent::SidePorts::bind(
        args.health_listen.as_deref(),
        args.metrics_listen.as_deref(),
    )
    .await?;
    strata_edge_agent::serve_with(agent, listener, side, strata_proto::shutdown_signal())
        .await
        .context("server failed")?;
    Ok(())
}
