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
    /// A name for this node (default: <tier>-<hostname>).
    #[arg(long)]
    name: Option<String>,
    /// Where stage files are cached.
    #[arg(long, default_value = "strata-agent-data")]
    data_dir: PathBuf,
    /// Stages computed at once (default: number of cores).
    #[arg(long)]
    slots: Option<u32>,
    /// Requests allowed to wait for a slot before new ones get RESOURCE_EXHAUSTED (default: 4 per slot).
    #[arg(long)]
    queue: Option<u32>,
    /// Cached stage files neither assigned nor routed any more are deleted this long after they were stored.
    #[arg(long, default_value_t = 600_000)]
    cache_grace_ms: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let tier = match args.tier.parse::<Tier>() {
        Ok(t @ (Tier::Edge | Tier::Cloud)) => t,
        _ => bail!("--tier must be edge or cloud, not \"{}\"", args.tier),
    };
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
    let mut config = AgentConfig::new(tier, args.control_plane, advertise, args.data_dir);
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
    let agent = Agent::new(config).context("cannot start the agent")?;
    // Tests and scripts read this line to learn the port.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "listening on {bound}");
    }
    strata_edge_agent::serve(agent, listener, strata_proto::shutdown_signal())
        .await
        .context("server failed")?;
    Ok(())
}
