//! `strata up` (control plane + one edge agent + one cloud agent in one process, with a demo model) and
//! `strata control-plane`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use strata_control_plane::store::{EtcdConfig, EtcdTls};
use strata_control_plane::{ControlPlane, Settings, server};
use strata_core::{Digest, Privacy, Tier};
use strata_edge_agent::{Agent, AgentConfig};
use strata_planner::cluster::Cluster;
use strata_proto::convert::is_tier;
use strata_proto::transport::Transport;
use strata_proto::v1;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Settings of `strata control-plane`.
pub struct ControlPlaneArgs<'a> {
    /// Its TLS material (and `--insecure`).
    pub tls: &'a strata_trust::args::TlsArgs,
    /// Where to serve the health service alone, in plain HTTP/2 (probes).
    pub health_listen: Option<&'a str>,
    /// Where to serve Prometheus metrics at `/metrics` (plain HTTP/1.1).
    pub metrics_listen: Option<&'a str>,
    /// A directory, or `etcd://…`.
    pub store: &'a str,
    pub blobs: Option<&'a Path>,
    pub etcd: EtcdArgs<'a>,
    pub listen: &'a str,
    pub advertise: Option<&'a str>,
    pub cluster: Option<&'a Path>,
    pub node_ttl_ms: u64,
    pub rollout_grace_ms: u64,
    pub blob_grace_ms: u64,
    /// The calibration dead band, percent (0: off).
    pub calibration_band_pct: f64,
    pub calibration_period_ms: u64,
    /// The cluster CA's directory (admits joining nodes).
    pub ca_dir: Option<&'a Path>,
    /// How long certificates issued at joins and renewals are valid.
    pub node_cert_ttl: Duration,
    /// The largest model a push may carry, MiB (at least 1).
    pub max_model_mib: u64,
    /// Concurrent streams one client connection may have open (at least 1).
    pub max_streams_per_connection: u32,
}

/// TLS and authentication for etcd.
pub struct EtcdArgs<'a> {
    pub ca: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub domain: Option<&'a str>,
    pub user: Option<&'a str>,
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// The stores `--store` names: the embedded store in a directory, or etcd.
async fn open_stores(args: &ControlPlaneArgs<'_>, transport: &Transport) -> Result<server::Stores> {
    if !args.store.starts_with("etcd://") {
        return Ok(server::open_embedded(Path::new(args.store), args.blobs)?);
    }
    let mut config = EtcdConfig::from_url(args.store)?;
    let etcd = &args.etcd;
    if etcd.ca.is_some() || etcd.cert.is_some() || etcd.domain.is_some() {
        let identity = match (etcd.cert, etcd.key) {
            (Some(cert), Some(key)) => Some((
                read_pem(cert, "etcd client certificate")?,
                read_pem(key, "etcd client key")?,
            )),
            _ => None,
        };
        config.tls = Some(EtcdTls {
            ca_pem: etcd
                .ca
                .map(|p| read_pem(p, "etcd CA certificate"))
                .transpose()?,
            identity,
            domain: etcd.domain.map(str::to_string),
        });
    }
    if let Some(user) = etcd.user {
        let password = std::env::var("STRATA_ETCD_PASSWORD")
            .context("--etcd-user needs the password in STRATA_ETCD_PASSWORD")?;
        config.user = Some((user.to_string(), password));
    }
    let blobs = args.blobs.unwrap_or(Path::new("strata-data/blobs"));
    Ok(server::open_etcd(config, blobs, transport.clone()).await?)
}

fn load_cluster(path: Option<&Path>) -> Result<Cluster> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read cluster {}", p.display()))?,
        None => server::DEFAULT_CLUSTER.to_string(),
    };
    Cluster::from_toml(&text).map_err(|e| anyhow::anyhow!("{e}"))
}

fn make_plane(
    (state, blobs): server::Stores,
    cluster: Option<&Path>,
    adjust: impl FnOnce(&mut Settings),
) -> Result<Arc<ControlPlane>> {
    let mut settings = Settings::new(load_cluster(cluster)?);
    adjust(&mut settings);
    Ok(ControlPlane::new(state, blobs, settings))
}

async fn bind(address: &str) -> Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| {
        format!(
            "cannot listen on {address} (is another Strata running? pick another with --listen)"
        )
    })
}

/// `strata control-plane`.
pub fn control_plane(args: &ControlPlaneArgs) -> Result<()> {
    anyhow::ensure!(
        args.calibration_band_pct.is_finite() && args.calibration_band_pct >= 0.0,
        "--calibration-band-pct {}: expected a percentage ≥ 0 (0 turns calibration off)",
        args.calibration_band_pct
    );
    anyhow::ensure!(
        args.max_model_mib > 0,
        "--max-model-mib 0: expected at least 1 (MiB); a control plane that takes no model serves nothing"
    );
    let max_model_bytes = args.max_model_mib.checked_mul(1 << 20).with_context(|| {
        format!(
            "--max-model-mib {} is more bytes than this machine can count",
            args.max_model_mib
        )
    })?;
    anyhow::ensure!(
        args.max_streams_per_connection > 0,
        "--max-streams-per-connection 0: expected at least 1; a server that accepts no stream serves nothing"
    );
    // Plain HTTP/2 off loopback only with --insecure.
    let transport = args.tls.server_transport(args.listen)?;
    if let Some(identity) = transport.identity()
        && identity.role != strata_trust::Role::Controller
    {
        bail!(
            "the certificate is for {identity}, not a control plane: issue one with `strata cert issue --role controller`"
        );
    }
    let ca = args
        .ca_dir
        .map(|dir| {
            strata_trust::ca::Ca::load(dir)
                .map(Arc::new)
                .context("cannot load the cluster CA (--ca-dir)")
        })
        .transpose()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let stores = open_stores(args, &transport).await?;
        let store_name = stores.0.name();
        let plane = make_plane(stores, args.cluster, |s| {
            s.transport = transport.clone();
            s.ca = ca.clone();
            s.node_cert_ttl = args.node_cert_ttl;
            s.node_ttl = Duration::from_millis(args.node_ttl_ms);
            s.max_model_bytes = max_model_bytes;
            s.max_streams_per_connection = args.max_streams_per_connection;
            s.rollout_grace = Duration::from_millis(args.rollout_grace_ms);
            s.blob_grace = Duration::from_millis(args.blob_grace_ms);
            s.advertise = args.advertise.map(str::to_string);
            s.calibration = strata_control_plane::calibration::Settings {
                enabled: args.calibration_band_pct > 0.0,
                band: args.calibration_band_pct / 100.0,
                period: Duration::from_millis(args.calibration_period_ms.max(100)),
                ..s.calibration
            };
        })?;
        let listener = bind(args.listen).await?;
        say!(
            "control plane replica {} on the {store_name} store",
            plane.replica_id()
        )?;
        // Tests and scripts read the address as this line's last word.
        say!("control plane listening on {}", listener.local_addr()?)?;
        let side =
            strata_proto::server::SidePorts::bind(args.health_listen, args.metrics_listen).await?;
        if let Some(probes) = &side.health {
            say!("health probes (plain) on {}", probes.local_addr()?)?;
        }
        if let Some(metrics) = &side.metrics {
            say!(
                "metrics (Prometheus) on http://{}/metrics",
                metrics.local_addr()?
            )?;
        }
        server::serve_with(plane, listener, side, strata_proto::shutdown_signal())
            .await
            .context("control plane failed")
    })
}

/// Settings of `strata up`.
pub struct UpArgs<'a> {
    pub data_dir: &'a Path,
    pub listen: &'a str,
    pub cluster: Option<&'a Path>,
    pub model: Option<&'a Path>,
    pub no_demo: bool,
}

const DEMO_MODEL: &str = "corpus/models/squeezenet.onnx";

/// `strata up`.
pub fn up(args: &UpArgs) -> Result<()> {
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // Mutual TLS even on loopback: its own CA and certificates, made once in the data directory.
        let tls = crate::certs::up_material(args.data_dir)?;
        let stores = server::open_embedded(&args.data_dir.join("control-plane"), None)?;
        let plane = make_plane(stores, args.cluster, |s| {
            s.transport = tls.controller.clone();
            s.ca = Some(tls.ca.clone());
        })?;
        let cp_listener = bind(args.listen).await?;
        let cp_addr = cp_listener.local_addr()?;
        // Agents take the next two ports, or free ones when the control plane's port was left to the OS.
        let fixed_port = args.listen.rsplit(':').next().is_some_and(|p| p != "0");
        let next_port = |k: u16| if fixed_port { cp_addr.port() + k } else { 0 };
        let edge_listener = bind(&format!("{}:{}", cp_addr.ip(), next_port(1))).await?;
        let cloud_listener = bind(&format!("{}:{}", cp_addr.ip(), next_port(2))).await?;
        let (stop_agents, agents_stopped) = watch::channel(false);
        let (stop_plane, plane_stopped) = watch::channel(false);
        let cp_task = tokio::spawn(server::serve(plane.clone(), cp_listener, wait_for(plane_stopped)));
        let mut agent_tasks = Vec::new();
        let mut agent_addrs = Vec::new();
        for (tier, listener) in [(Tier::Edge, edge_listener), (Tier::Cloud, cloud_listener)] {
            let address = listener.local_addr()?.to_string();
            agent_addrs.push((tier, address.clone()));
            let mut config = AgentConfig::new(
                tier,
                vec![cp_addr.to_string()],
                address,
                args.data_dir.join(tier.name()),
            );
            config.transport = if tier == Tier::Edge { tls.edge.clone() } else { tls.cloud.clone() };
            let agent = Agent::new(config).context("cannot start an agent")?;
            agent_tasks.push(tokio::spawn(strata_edge_agent::serve(agent, listener, wait_for(agents_stopped.clone()))));
        }
        say!("control plane  {cp_addr}   (store: {})", args.data_dir.display())?;
        let admin = std::path::absolute(&tls.admin_dir).unwrap_or(tls.admin_dir.clone());
        say!("mutual TLS     every call; an admin's credentials: export STRATA_TLS_DIR={}", admin.display())?;
        for (tier, address) in &agent_addrs {
            say!("{:<14} {address}", format!("{tier} agent"))?;
        }

        let demo = if args.no_demo {
            None
        } else {
            match args.model {
                Some(p) => Some(p.to_path_buf()),
                None if Path::new(DEMO_MODEL).exists() => Some(PathBuf::from(DEMO_MODEL)),
                None => {
                    say!("no demo model: {DEMO_MODEL} is missing (run `python3 corpus/fetch.py`), or pass --model FILE")?;
                    None
                }
            }
        };
        if let Some(path) = demo {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("demo")
                .to_string();
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let meta = v1::ModelMeta {
                name: name.clone(),
                digest: Digest::of(&bytes).to_string(),
                size_bytes: bytes.len() as u64,
                privacy: v1::Privacy::from(Privacy::Features) as i32,
                input_shapes: vec![],
                batching: None,
            };
            plane.push_model(meta, bytes.into()).await.with_context(|| format!("cannot push {}", path.display()))?;
            wait_ready(&plane, &name).await?;
            let example = example_input(&path, &plane, &name).await;
            say!(
                "model \"{name}\" is served (privacy: features) — ready in {:.1} s. Try:\n  STRATA_TLS_DIR={} strata infer {name} {example}--output-dir /tmp/strata-out{}",
                started.elapsed().as_secs_f64(),
                admin.display(),
                if cp_addr.to_string() == crate::DEFAULT_ENDPOINT { String::new() } else { format!(" --endpoint {cp_addr}") }
            )?;
        }
        say!("press Ctrl-C to stop")?;
        strata_proto::shutdown_signal().await;
        say!("stopping: draining agents, then the control plane")?;
        let _ = stop_agents.send(true);
        for t in agent_tasks {
            let _ = t.await;
        }
        let _ = stop_plane.send(true);
        let _ = cp_task.await;
        say!("stopped")?;
        Ok(())
    })
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Waits until the model's route table lists a ready agent for every remote stage of some plan.
async fn wait_ready(plane: &Arc<ControlPlane>, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(table) = plane.route_table(name).await {
            let remote_ready = table.plans.iter().any(|p| {
                p.stages.iter().any(|s| !is_tier(s.tier, Tier::Device))
                    && p.stages
                        .iter()
                        .all(|s| is_tier(s.tier, Tier::Device) || !s.nodes.is_empty())
            });
            if remote_ready {
                return Ok(());
            }
        }
        if let Ok(Some(plans)) = plane.plans(name).await
            && let Some(why) = plans.failed
        {
            bail!("model \"{name}\" cannot be planned: {why}");
        }
        if Instant::now() > deadline {
            bail!("model \"{name}\" was not ready after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--input NAME=FILE ` arguments for the demo model, from the corpus's sample inputs when present.
async fn example_input(path: &Path, plane: &Arc<ControlPlane>, name: &str) -> String {
    let Ok(table) = plane.route_table(name).await else {
        return String::new();
    };
    let dir = path.with_extension("inputs");
    table
        .inputs
        .iter()
        .map(|i| {
            let file = dir.join(format!("{}.npy", crate::io::file_stem(&i.name)));
            format!("--input {}={} ", i.name, file.display())
        })
        .collect()
}
