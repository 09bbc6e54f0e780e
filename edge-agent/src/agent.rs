//! The agent's state and its control session: register, heartbeat with load, ready stages and their compute
//! times, follow stage assignments (fetch, check, load) and route tables. Serving never waits on this: when
//! the control plane is unreachable the agent keeps serving from its cached stages and routes.
//!
//! The session is all or nothing: heartbeats, the assignment watch and the route watch run together, and when
//! any of them ends (a broken stream, a restarted control plane, a lost lease) the whole session ends, the
//! agent reports itself disconnected (in `Status`, with the reason, and in its log) and starts a new session
//! after a backoff, on the next control-plane address, for ever. No watch can end silently while heartbeats
//! keep the node looking healthy.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use strata_core::{Digest, Tier};
use strata_proto::balance::Balancer;
use strata_proto::call::{ChannelError, RetryPolicy};
use strata_proto::task::Backoff;
use strata_proto::v1::{self, control_client::ControlClient, routes_client::RoutesClient};
use tokio::sync::{Notify, Semaphore, broadcast};
use tonic::transport::Channel;

use crate::stages::{StageError, StageStore};

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Tier this agent serves (edge or cloud).
    pub tier: Tier,
    /// Control-plane addresses, tried in turn.
    pub control_planes: Vec<String>,
    /// Address other nodes and devices use to reach this agent (`host:port`).
    pub advertise: String,
    /// Operator-chosen name.
    pub name: String,
    /// Where stage blobs are cached.
    pub data_dir: PathBuf,
    /// Stages computed at once.
    pub slots: u32,
    /// Requests allowed to wait for a slot; beyond that, `RESOURCE_EXHAUSTED`.
    pub queue: u32,
    /// Cap on the tensor bytes of one request, all tensors together (declared sizes, checked on each
    /// tensor's header before its data is kept): more is `RESOURCE_EXHAUSTED`. Also caps what a forwarded
    /// request brings back.
    pub max_request_bytes: u64,
    /// Cap on the bytes of any one tensor of a request.
    pub max_tensor_bytes: u64,
    /// Cap on the tensor chunks of one request (a flood of tiny chunks costs out of proportion to its bytes).
    pub max_request_chunks: u64,
    /// Cap on how long one Infer request may take here, from its arrival (waiting for the client's chunks
    /// included): a request with no deadline, or a longer one, is served under this one (and it is the
    /// deadline passed on to the next hop), then ended with `DEADLINE_EXCEEDED` and its slot released.
    pub max_request_time: Duration,
    /// Concurrent HTTP/2 streams one client connection may have open; more wait in the client.
    pub max_streams_per_connection: u32,
    /// How long a next-tier agent that failed a forwarded request is avoided.
    pub retry: RetryPolicy,
    /// Give up connecting to a peer (next-tier agent, control plane) after this long.
    pub connect_timeout: Duration,
    /// Cached stage files neither assigned nor routed any more are deleted this long after they were last
    /// stored.
    pub cache_grace: Duration,
    /// How it serves and dials (plain, or mutual TLS with a node certificate whose tier must be `tier`).
    pub transport: strata_proto::transport::Transport,
    /// The backend stages are loaded into (`--backend`; see [`crate::backend`]).
    pub backend: crate::backend::Selected,
    /// Batch a model that asks for it wherever its batched stages answer correctly, even where they measured
    /// slower per request than runs alone (`--batch-always`; by default such a stage runs one request at a
    /// time).
    pub batch_always: bool,
}

impl AgentConfig {
    /// The defaults: a slot per core, 4 queued requests per slot, named `<tier>-<hostname>`, requests up to
    /// [`DEFAULT_MAX_REQUEST_BYTES`] (any one tensor too) in at most [`DEFAULT_MAX_REQUEST_CHUNKS`] chunks,
    /// taking at most [`DEFAULT_MAX_REQUEST_TIME`], 256 streams per connection
    /// ([`strata_proto::server::MAX_STREAMS_PER_CONNECTION`]), the default [`RetryPolicy`], 500 ms connect
    /// timeout, unused
    /// cached stages kept 10 minutes, the plain transport, tract.
    pub fn new(
        tier: Tier,
        control_planes: Vec<String>,
        advertise: String,
        data_dir: PathBuf,
    ) -> AgentConfig {
        let slots = cores();
        AgentConfig {
            tier,
            control_planes,
            advertise,
            name: default_name(tier),
            data_dir,
            slots,
            queue: slots * 4,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_tensor_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_request_chunks: DEFAULT_MAX_REQUEST_CHUNKS,
            max_request_time: DEFAULT_MAX_REQUEST_TIME,
            max_streams_per_connection: strata_proto::server::MAX_STREAMS_PER_CONNECTION,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_millis(500),
            cache_grace: Duration::from_secs(600),
            transport: Default::default(),
            backend: crate::backend::Selected::tract(),
            batch_always: false,
        }
    }
}

/// The default cap on one request's tensor bytes: 256 MiB. A stage's inputs are activations and raw inputs
/// (an image batch, a token window), tens of MiB for large models; a request claiming more is refused before
/// its data is buffered, so a few hostile streams cannot take the agent's memory. Raise it with
/// `--max-request-mib` for models whose activations are larger.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 256 << 20;

/// The default cap on one request's tensor chunks: 16,384, so a full-size request averages at least 16 KiB
/// per chunk (Strata's own senders use 1 MiB chunks).
pub const DEFAULT_MAX_REQUEST_CHUNKS: u64 = 16_384;

/// The default cap on one request's time at an agent: 60 s (`--max-request-ms 60000`), far above any
/// stage's compute, so only a client that stalls (or a request with no deadline held up downstream) meets it;
/// without it, a stalled stream would hold an admission slot for ever.
pub const DEFAULT_MAX_REQUEST_TIME: Duration = Duration::from_secs(60);

/// At most this many distinct tensor names are kept for [`v1::AgentStatus::received_tensors`].
pub const MAX_RECEIVED_NAMES: usize = 4096;

/// The names of the tensors this agent accepted for a stage, for privacy audits: distinct, sorted, at most
/// [`MAX_RECEIVED_NAMES`] (later new names are logged once and not kept), so no caller can grow it without
/// bound. Only tensors that passed the stage's intake are recorded, and those are names of route tables.
#[derive(Debug, Default)]
pub struct ReceivedNames {
    names: BTreeSet<String>,
    overflowed: bool,
}

impl ReceivedNames {
    /// Records accepted tensor names.
    pub fn record<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        for name in names {
            if self.names.contains(name) {
                continue;
            }
            if self.names.len() >= MAX_RECEIVED_NAMES {
                if !self.overflowed {
                    self.overflowed = true;
                    tracing::warn!(
                        limit = MAX_RECEIVED_NAMES,
                        tensor = %name,
                        "the received-tensor audit list is full; new names are no longer listed"
                    );
                }
                continue;
            }
            self.names.insert(name.clone());
        }
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.names.iter().cloned().collect()
    }
}

/// `<tier>-<hostname>` (just the tier where the host has no name).
pub fn default_name(tier: Tier) -> String {
    match hostname() {
        Some(host) => format!("{tier}-{host}"),
        None => tier.to_string(),
    }
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// CPU cores this process may use (cgroup quotas included).
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Memory this process may use: the machine's, or its cgroup's limit when lower; 0 when unknown.
pub fn memory_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        });
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    match (total, limit) {
        (Some(t), Some(l)) => t.min(l),
        (Some(t), None) => t,
        (None, Some(l)) => l,
        (None, None) => 0,
    }
}

/// A session up this long counts as a success for the reconnect backoff.
const SESSION_LASTED: Duration = Duration::from_secs(10);

/// How long a control-plane call that opens a session (register, opening a watch) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a control session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A control-plane address is not an address.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A call failed.
    #[error("{call}: {}", .status.message())]
    Call {
        /// Which call.
        call: &'static str,
        /// The answer.
        status: tonic::Status,
    },
    /// A call got no answer in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A watch stream ended (the control plane restarted, or a replica stopped).
    #[error("the control plane ended the {0} watch")]
    WatchEnded(&'static str),
}

impl SessionError {
    /// Wraps the failure of `call`.
    fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> SessionError {
        move |status| SessionError::Call { call, status }
    }
}

/// What the agent's own route watchers (devices, other agents) hear.
#[derive(Debug, Clone)]
pub(crate) enum RouteEvent {
    /// One table changed (a deleted model's has `deleted` set).
    Table(Box<v1::RouteTable>),
    /// The agent took a new snapshot from a control plane: watchers start over from a fresh one.
    Resync,
}

/// Why an agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No control-plane address was given.
    #[error("no control-plane address given (an agent needs at least one)")]
    NoControlPlane,
    /// The stage cache cannot be opened.
    #[error("cannot open the stage cache: {0}")]
    Cache(#[from] strata_blob::BlobError),
    /// The certificate is not a node certificate of the agent's tier.
    #[error(
        "the certificate is for {identity}, not a {tier} node: a node's tier comes from its certificate (issue one with `strata cert issue --role {tier}`, or join with a {tier} token)"
    )]
    WrongCertificate {
        /// What the certificate says.
        identity: String,
        /// The tier the agent was started for.
        tier: Tier,
    },
    /// A metric could not be defined (a bug: metric names are fixed in the code).
    #[error("cannot define the agent's metrics: {0}")]
    Metrics(#[from] strata_proto::metrics::MetricError),
}

/// Shared agent state.
pub struct Agent {
    /// Settings.
    pub config: AgentConfig,
    pub(crate) node_id: RwLock<String>,
    pub(crate) stages: Arc<StageStore>,
    pub(crate) routes: RwLock<HashMap<String, v1::RouteTable>>,
    /// Each model's table of the version before the current one: requests sent with it just before a
    /// rollout switched versions are still served (its stages stay assigned for a grace period).
    pub(crate) previous_routes: RwLock<HashMap<String, v1::RouteTable>>,
    pub(crate) route_updates: broadcast::Sender<RouteEvent>,
    /// Whether a control plane's snapshot has arrived since the agent started (before that it knows no
    /// tables, and must not tell devices that there are none).
    pub(crate) routes_loaded: AtomicBool,
    pub(crate) balancer: Balancer,
    pub(crate) channels: strata_proto::call::Channels,
    pub(crate) slots: Arc<Semaphore>,
    /// The running batchers, by stage and settings (models whose tables ask for dynamic batching; two models
    /// with the same stage bytes but different settings get one each).
    pub(crate) batchers:
        Mutex<HashMap<(strata_core::Digest, crate::batcher::Settings), crate::batcher::Handle>>,
    pub(crate) in_flight: AtomicU32,
    pub(crate) queued: AtomicU32,
    pub(crate) served: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// Requests refused because serving them would break their model's privacy level.
    pub(crate) denied: AtomicU64,
    pub(crate) received: Mutex<ReceivedNames>,
    pub(crate) connected: AtomicBool,
    /// Why the last control session ended (shown while disconnected).
    pub(crate) session_error: Mutex<String>,
    /// When the current (or last) control session came up.
    connected_at: Mutex<Option<std::time::Instant>>,
    /// The heartbeat period of the registration held (zero before the first): while disconnected, a
    /// registered node retries at least this often, so that it resumes before its lease can expire.
    heartbeat_period: Mutex<Duration>,
    pub(crate) recent_ms: Mutex<f64>,
    ready_changed: Notify,
    /// Prometheus metrics (served when `--metrics-listen` is given).
    pub(crate) metrics: crate::metrics::AgentMetrics,
}

impl Agent {
    /// A new agent (not yet registered). Blocking (it opens the stage cache in `data_dir/stages`).
    ///
    /// Under mutual TLS the certificate must be a node certificate of `config.tier`; the agent takes its
    /// name from it.
    pub fn new(mut config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        if config.control_planes.is_empty() {
            return Err(AgentError::NoControlPlane);
        }
        if let Some(identity) = config.transport.identity() {
            if identity.tier() != Some(config.tier) {
                return Err(AgentError::WrongCertificate {
                    identity: identity.to_string(),
                    tier: config.tier,
                });
            }
            config.name = identity.name;
        }
        let stages = StageStore::open(
            config.data_dir.join("stages"),
            config.backend.backend.clone(),
            !config.batch_always,
        )?;
        let metrics =
            crate::metrics::AgentMetrics::new(config.tier, config.backend.backend.name())?;
        let agent = Arc::new(Agent {
            metrics,
            slots: Arc::new(Semaphore::new(config.slots.max(1) as usize)),
            batchers: Mutex::new(HashMap::new()),
            channels: strata_proto::call::Channels::new(
                config.connect_timeout,
                config.transport.clone(),
            ),
            config,
            node_id: RwLock::new(String::new()),
            stages: Arc::new(stages),
            routes: RwLock::new(HashMap::new()),
            previous_routes: RwLock::new(HashMap::new()),
            route_updates: broadcast::channel(256).0,
            routes_loaded: AtomicBool::new(false),
            balancer: Balancer::new(),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            served: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            received: Mutex::new(ReceivedNames::default()),
            connected: AtomicBool::new(false),
            session_error: Mutex::new("not connected yet".to_string()),
            connected_at: Mutex::new(None),
            heartbeat_period: Mutex::new(Duration::ZERO),
            recent_ms: Mutex::new(0.0),
            ready_changed: Notify::new(),
        });
        agent.metrics.pull_from(&Arc::downgrade(&agent))?;
        Ok(agent)
    }

    /// The agent's Prometheus metrics.
    pub fn metrics(&self) -> &prometheus::Registry {
        self.metrics.registry()
    }

    /// This agent's node id ("" until registered).
    pub fn node_id(&self) -> String {
        self.node_id.read().clone()
    }

    /// Current load.
    pub fn load(&self) -> v1::Load {
        v1::Load {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queue_depth: self.queued.load(Ordering::Relaxed),
            slots: self.config.slots,
            recent_stage_ms: *self.recent_ms.lock(),
        }
    }

    /// Whether a control session is up, and why not when it is not.
    pub fn control_session(&self) -> Result<(), String> {
        if self.connected.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(self.session_error.lock().clone())
        }
    }

    /// Whether a route table this agent holds (current or previous version) has a device stage `digest`.
    pub fn routes_device_stage(&self, digest: &str) -> bool {
        let device = v1::Tier::Device as i32;
        let holds = |tables: &HashMap<String, v1::RouteTable>| {
            tables.values().any(|t| {
                t.plans
                    .iter()
                    .flat_map(|p| &p.stages)
                    .any(|s| s.tier == device && s.digest == digest)
            })
        };
        holds(&self.routes.read()) || holds(&self.previous_routes.read())
    }

    /// A cached channel to the control plane at `address`.
    pub fn channel(&self, address: &str) -> Result<Channel, ChannelError> {
        self.channels
            .get(address, strata_proto::transport::Expect::Controller)
    }

    /// The route table of `model` at `version`: the current one, or the one it replaced. Otherwise the
    /// current version, if any.
    pub(crate) fn table_for(
        &self,
        model: &str,
        version: u64,
    ) -> Result<v1::RouteTable, Option<u64>> {
        let routes = self.routes.read();
        let current = routes.get(model);
        if let Some(table) = current.filter(|t| t.version == version) {
            return Ok(table.clone());
        }
        let previous = self.previous_routes.read();
        match previous.get(model).filter(|t| t.version == version) {
            Some(table) => Ok(table.clone()),
            None => Err(current.map(|t| t.version)),
        }
    }

    /// Takes a table (or a deletion); `announce` passes it on to this agent's own route watchers (a table
    /// that is part of a snapshot is announced with the snapshot's end instead).
    pub(crate) fn set_route(&self, table: v1::RouteTable, announce: bool) {
        {
            let mut routes = self.routes.write();
            let mut previous = self.previous_routes.write();
            if table.deleted {
                // Gone: neither version is served any more.
                routes.remove(&table.model);
                previous.remove(&table.model);
            } else if let Some(old) = routes.insert(table.model.clone(), table.clone())
                && old.version != table.version
            {
                previous.insert(old.model.clone(), old);
            }
        }
        if announce {
            let _ = self.route_updates.send(RouteEvent::Table(Box::new(table)));
        }
    }

    /// Deregisters from the control plane (graceful shutdown), best effort within a second.
    pub async fn deregister(&self) {
        let node_id = self.node_id();
        if node_id.is_empty() {
            return;
        }
        for address in &self.config.control_planes {
            let Ok(channel) = self.channel(address) else {
                continue;
            };
            let mut client = ControlClient::new(channel);
            let call = client.deregister(v1::DeregisterRequest {
                node_id: node_id.clone(),
            });
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), call).await {
                tracing::info!(node = %node_id, "deregistered");
                return;
            }
        }
    }

    /// Keeps a control session up for ever: register (or resume), then heartbeat and follow assignments and
    /// routes. When a session ends, the next control-plane address is tried after a [`Backoff`] (300 ms
    /// between addresses, doubling up to 5 s after each round in which all failed, but never longer than
    /// the heartbeat period while the node holds a registration: the lease is only a few heartbeats long,
    /// and the store keeps it through its own outage, so an agent that waited 5 s after a long outage
    /// would come back to an expired lease and register as a new node).
    pub async fn run_control_session(self: Arc<Self>) {
        let addresses = &self.config.control_planes;
        let mut backoff = Backoff::new(
            Duration::from_millis(300),
            Duration::from_secs(5),
            addresses.len(),
        );
        for address in addresses.iter().cycle() {
            let Err(error) = self.clone().session(address).await;
            *self.session_error.lock() = format!("{address}: {error}");
            if self.connected.swap(false, Ordering::Relaxed) {
                tracing::warn!(control_plane = %address, %error, "control session ended; serving from cache and reconnecting");
                // Only a session that lasted resets the backoff: one that fails as soon as it is up (a
                // replica that accepts and then breaks every watch) keeps backing off.
                if self
                    .connected_at
                    .lock()
                    .is_some_and(|t| t.elapsed() >= SESSION_LASTED)
                {
                    backoff.succeeded();
                }
            } else {
                tracing::debug!(control_plane = %address, %error, "control plane unreachable");
            }
            let mut pause = backoff.failed();
            let period = *self.heartbeat_period.lock();
            if !self.node_id().is_empty() && !period.is_zero() {
                pause = pause.min(period);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One session; returns only when it ends.
    async fn session(
        self: Arc<Self>,
        address: &str,
    ) -> Result<std::convert::Infallible, SessionError> {
        let channel = self.channel(address)?;
        let mut control = ControlClient::new(channel.clone());
        let spec = v1::NodeSpec {
            tier: v1::Tier::from(self.config.tier) as i32,
            arch: std::env::consts::ARCH.to_string(),
            cores: cores(),
            memory_bytes: memory_bytes(),
            backends: self.stages.backends(),
            address: self.config.advertise.clone(),
            name: self.config.name.clone(),
        };
        // A node that was registered resumes under its id (its lease lives in the store, so any replica
        // renews it, and a store outage does not cost the registration); it registers anew only when that
        // id is gone.
        let known = self.node_id();
        let resumed = if known.is_empty() {
            None
        } else {
            let request = self.heartbeat_request(&known);
            match tokio::time::timeout(Duration::from_secs(5), control.heartbeat(request)).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    self.apply_revocations(answer.revoked_identities);
                    Some((known, answer.ttl_ms))
                }
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => None,
                Ok(Err(status)) => {
                    return Err(SessionError::Call {
                        call: "heartbeat",
                        status,
                    });
                }
                Err(_) => return Err(SessionError::Timeout("heartbeat")),
            }
        };
        let (node_id, ttl_ms) = match resumed {
            Some((id, ttl_ms)) => {
                tracing::info!(node = %id, control_plane = %address, "resumed");
                (id, ttl_ms)
            }
            None => {
                let register = control.register(v1::RegisterRequest { spec: Some(spec) });
                let registered = tokio::time::timeout(CALL_TIMEOUT, register)
                    .await
                    .map_err(|_| SessionError::Timeout("register"))?
                    .map_err(SessionError::call("register"))?
                    .into_inner();
                tracing::info!(node = %registered.node_id, control_plane = %address, "registered");
                (registered.node_id, registered.ttl_ms)
            }
        };
        *self.node_id.write() = node_id.clone();
        let period = Duration::from_millis((ttl_ms / 3).clamp(100, 10_000));
        *self.heartbeat_period.lock() = period;
        // Both watches open before the session counts as connected: a session that cannot follow its
        // assignments is not a session.
        let mut assignments_client = ControlClient::new(channel.clone());
        let watch = assignments_client.watch_assignments(v1::WatchAssignmentsRequest {
            node_id: node_id.clone(),
        });
        let assignments = tokio::time::timeout(CALL_TIMEOUT, watch)
            .await
            .map_err(|_| SessionError::Timeout("watch assignments"))?
            .map_err(SessionError::call("watch assignments"))?
            .into_inner();
        let mut routes_client = RoutesClient::new(channel.clone());
        let watch = routes_client.watch_routes(v1::WatchRoutesRequest { models: vec![] });
        let routes = tokio::time::timeout(CALL_TIMEOUT, watch)
            .await
            .map_err(|_| SessionError::Timeout("watch routes"))?
            .map_err(SessionError::call("watch routes"))?
            .into_inner();
        self.connected.store(true, Ordering::Relaxed);
        *self.connected_at.lock() = Some(std::time::Instant::now());
        self.session_error.lock().clear();
        tokio::select! {
            e = self.heartbeats(&mut control, &node_id, period) => Err(e),
            e = self.follow_assignments(&channel, assignments) => Err(e),
            e = self.follow_routes(&channel, routes) => Err(e),
        }
    }

    /// Refuses, from now on, the identities the control plane says are revoked (as callers, also on
    /// connections already open, and as servers of the next hop).
    fn apply_revocations(&self, revoked: Vec<String>) {
        if let Some(r) = self.config.transport.revocations() {
            r.replace(revoked);
        }
    }

    fn heartbeat_request(&self, node_id: &str) -> v1::HeartbeatRequest {
        let timed = self.stages.compute_ms();
        v1::HeartbeatRequest {
            node_id: node_id.to_string(),
            load: Some(self.load()),
            ready: self
                .stages
                .ready()
                .iter()
                .map(ToString::to_string)
                .collect(),
            stage_ms: timed
                .iter()
                .map(|(d, (ms, _))| (d.to_string(), *ms))
                .collect(),
            stage_runs: timed
                .iter()
                .map(|(d, (_, runs))| (d.to_string(), *runs))
                .collect(),
        }
    }

    async fn heartbeats(
        &self,
        control: &mut ControlClient<Channel>,
        node_id: &str,
        period: Duration,
    ) -> SessionError {
        loop {
            let request = self.heartbeat_request(node_id);
            match tokio::time::timeout(period * 2, control.heartbeat(request)).await {
                Ok(Ok(answer)) => self.apply_revocations(answer.into_inner().revoked_identities),
                Ok(Err(status)) => {
                    return SessionError::Call {
                        call: "heartbeat",
                        status,
                    };
                }
                Err(_) => return SessionError::Timeout("heartbeat"),
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.ready_changed.notified() => {}
            }
        }
    }

    /// Prepares the assigned stages, and each new assignment; ends when the watch does.
    async fn follow_assignments(
        &self,
        channel: &Channel,
        mut stream: tonic::Streaming<v1::Assignments>,
    ) -> SessionError {
        let mut current: Vec<Digest> = Vec::new();
        let mut failed = false;
        loop {
            // A stage that failed to prepare (a fetch cut short, a race on the cache) is retried every
            // second until it succeeds or the assignment changes.
            let retry = async {
                if failed {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                next = stream.next() => match next {
                    Some(Ok(assignments)) => {
                        current = assignments
                            .stages
                            .iter()
                            .filter_map(|s| match strata_proto::convert::digest(&s.digest, "stage.digest") {
                                Ok(d) => Some(d),
                                Err(e) => {
                                    tracing::error!(model = %s.model, error = %e, "assignment with a bad digest; ignoring that stage");
                                    None
                                }
                            })
                            .collect();
                    }
                    Some(Err(status)) => {
                        return SessionError::Call { call: "watch assignments", status };
                    }
                    None => return SessionError::WatchEnded("assignment"),
                },
                _ = retry => {}
            }
            failed = false;
            for digest in &current {
                if self.stages.get(digest).is_some() {
                    continue;
                }
                if let Err(e) = self.fetch_and_load(channel, digest).await {
                    failed = true;
                    tracing::warn!(%digest, error = %e, "cannot prepare stage; retrying in 1 s");
                }
            }
            self.stages.retain(&current);
            self.batchers.lock().retain(|(d, _), _| current.contains(d));
            self.ready_changed.notify_one();
            self.collect_cache(&current).await;
        }
    }

    /// Deletes cached stage files that are neither assigned nor a stage of a route table this agent holds
    /// (device stages are cached for devices), once older than `cache_grace`.
    async fn collect_cache(&self, assigned: &[Digest]) {
        let mut keep: std::collections::HashSet<Digest> = assigned.iter().cloned().collect();
        for routes in [&self.routes, &self.previous_routes] {
            for table in routes.read().values() {
                for stage in table.plans.iter().flat_map(|p| &p.stages) {
                    if let Ok(d) = stage.digest.parse() {
                        keep.insert(d);
                    }
                }
            }
        }
        let cutoff = std::time::SystemTime::now()
            .checked_sub(self.config.cache_grace)
            .unwrap_or(std::time::UNIX_EPOCH);
        if let Err(e) = self.stages.collect(&keep, cutoff).await {
            tracing::warn!(error = %e, "cannot collect unused cached stages");
        }
    }

    async fn fetch_and_load(&self, channel: &Channel, digest: &Digest) -> Result<(), PrepareError> {
        self.cache_blob(channel, digest).await?;
        let started = std::time::Instant::now();
        self.stages.load(digest).await?;
        self.metrics.stage_loaded(started.elapsed());
        tracing::info!(%digest, ms = started.elapsed().as_millis() as u64, "stage loaded");
        Ok(())
    }

    /// Keeps the route tables current, and caches device stages too (so devices can fetch them from this
    /// agent while the control plane is down); ends when the watch does. Each snapshot replaces the tables
    /// held: a model it does not name is gone (the control plane may run on a new store).
    async fn follow_routes(
        &self,
        channel: &Channel,
        mut stream: tonic::Streaming<v1::RouteUpdate>,
    ) -> SessionError {
        // The models named by the snapshot in progress, if one is.
        let mut snapshot: Option<Vec<String>> = None;
        let mut last_was_snapshot = false;
        loop {
            let update = match stream.next().await {
                Some(Ok(update)) => update,
                Some(Err(status)) => {
                    return SessionError::Call {
                        call: "watch routes",
                        status,
                    };
                }
                None => return SessionError::WatchEnded("route"),
            };
            if update.snapshot_end {
                // An empty snapshot names nothing: every model is gone.
                self.forget_routes_except(&snapshot.take().unwrap_or_default());
                self.routes_loaded.store(true, Ordering::Relaxed);
                let _ = self.route_updates.send(RouteEvent::Resync);
                last_was_snapshot = false;
                continue;
            }
            let Some(table) = update.table else {
                continue;
            };
            if update.snapshot {
                // A snapshot message after any other kind begins a new snapshot.
                if !last_was_snapshot {
                    snapshot = Some(Vec::new());
                }
                snapshot
                    .get_or_insert_with(Vec::new)
                    .push(table.model.clone());
            }
            last_was_snapshot = update.snapshot;
            let device_stages: BTreeSet<String> = table
                .plans
                .iter()
                .flat_map(|p| &p.stages)
                .filter(|s| strata_proto::convert::is_tier(s.tier, Tier::Device))
                .map(|s| s.digest.clone())
                .collect();
            self.set_route(table, !update.snapshot);
            for digest in device_stages {
                let digest = match digest.parse::<Digest>() {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "route table with a bad device-stage digest; not caching it");
                        continue;
                    }
                };
                if let Err(e) = self.cache_blob(channel, &digest).await {
                    tracing::debug!(%digest, error = %e, "cannot cache device stage");
                }
            }
        }
    }

    /// Drops the tables of every model not in `named` (the end of a snapshot that did not name them).
    fn forget_routes_except(&self, named: &[String]) {
        let gone: Vec<String> = self
            .routes
            .read()
            .keys()
            .filter(|m| !named.contains(m))
            .cloned()
            .collect();
        for model in gone {
            tracing::info!(%model, "model gone from the route tables");
            let deletion = v1::RouteTable {
                model,
                deleted: true,
                ..Default::default()
            };
            self.set_route(deletion, false);
        }
    }

    /// Fetches a blob into the stage cache unless it is there (intact) already.
    async fn cache_blob(&self, channel: &Channel, digest: &Digest) -> Result<(), PrepareError> {
        if self.stages.cached_blob(digest).await?.is_none() {
            let bytes = strata_proto::call::fetch_blob(channel.clone(), digest).await?;
            self.stages.put_blob(digest, bytes.into()).await?;
        }
        Ok(())
    }
}

/// Why a stage could not be prepared.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    /// Fetching it failed.
    #[error("fetch: {}", .0.message())]
    Fetch(#[from] tonic::Status),
    /// Caching or loading it failed.
    #[error(transparent)]
    Stage(#[from] StageError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_received_audit_list_is_bounded_and_distinct() {
        let mut received = ReceivedNames::default();
        let junk: Vec<String> = (0..100_000).map(|i| format!("junk{i}")).collect();
        received.record(&junk);
        received.record(&junk[..10]);
        let names = received.names();
        assert_eq!(names.len(), MAX_RECEIVED_NAMES);
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
    }
}
