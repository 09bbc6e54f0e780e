//! The agent's state and its control session: register, heartbeat with load and ready stages, follow stage
//! assignments (fetch, check, load) and route tables. Serving never waits on this: when the control plane is
//! unreachable the agent keeps serving from its cached stages and routes, and reconnects in the background.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use strata_proto::balance::Balancer;
use strata_proto::v1::{self, control_client::ControlClient, routes_client::RoutesClient};
use tokio::sync::{Notify, Semaphore, broadcast};
use tonic::transport::Channel;

use crate::stages::StageStore;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Tier this agent serves.
    pub tier: v1::Tier,
    /// Control-plane addresses, tried in order.
    pub control_planes: Vec<String>,
    /// Address other nodes and devices use to reach this agent (`host:port`).
    pub advertise: String,
    /// Operator-chosen name.
    pub name: String,
    /// Where stage blobs are cached.
    pub data_dir: std::path::PathBuf,
    /// Stages computed at once.
    pub slots: u32,
    /// Requests allowed to wait for a slot; beyond that, `RESOURCE_EXHAUSTED`.
    pub queue: u32,
    /// Cap on the tensor bytes of one request.
    pub max_request_bytes: u64,
}

/// Shared agent state.
pub struct Agent {
    /// Settings.
    pub config: AgentConfig,
    pub(crate) node_id: RwLock<String>,
    pub(crate) stages: StageStore,
    pub(crate) routes: RwLock<HashMap<String, v1::RouteTable>>,
    /// Each model's table of the version before the current one: requests sent with it just before a
    /// rollout switched versions are still served (its stages stay assigned for a grace period).
    pub(crate) previous_routes: RwLock<HashMap<String, v1::RouteTable>>,
    pub(crate) route_updates: broadcast::Sender<v1::RouteTable>,
    pub(crate) balancer: Balancer,
    channels: strata_proto::call::Channels,
    pub(crate) slots: Semaphore,
    pub(crate) in_flight: AtomicU32,
    pub(crate) queued: AtomicU32,
    pub(crate) served: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) received: Mutex<BTreeSet<String>>,
    pub(crate) connected: AtomicBool,
    pub(crate) recent_ms: Mutex<f64>,
    ready_changed: Notify,
}

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

impl Agent {
    /// A new agent (not yet registered).
    pub fn new(config: AgentConfig) -> std::io::Result<Arc<Agent>> {
        let stages = StageStore::open(config.data_dir.join("stages"))?;
        Ok(Arc::new(Agent {
            slots: Semaphore::new(config.slots.max(1) as usize),
            config,
            node_id: RwLock::new(String::new()),
            stages,
            routes: RwLock::new(HashMap::new()),
            previous_routes: RwLock::new(HashMap::new()),
            route_updates: broadcast::channel(256).0,
            balancer: Balancer::new(),
            channels: strata_proto::call::Channels::new(CONNECT_TIMEOUT),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            served: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            received: Mutex::new(BTreeSet::new()),
            connected: AtomicBool::new(false),
            recent_ms: Mutex::new(0.0),
            ready_changed: Notify::new(),
        }))
    }

    /// This agent's node id ("" until registered).
    pub fn node_id(&self) -> String {
        self.node_id.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Current load.
    pub fn load(&self) -> v1::Load {
        v1::Load {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queue_depth: self.queued.load(Ordering::Relaxed),
            slots: self.config.slots,
            recent_stage_ms: *self.recent_ms.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// A cached channel to `address`.
    pub fn channel(&self, address: &str) -> Result<Channel, String> {
        self.channels.get(address)
    }

    /// The route table of `model` at `version`: the current one, or the one it replaced. Otherwise the
    /// current version, if any.
    pub(crate) fn table_for(
        &self,
        model: &str,
        version: u64,
    ) -> Result<v1::RouteTable, Option<u64>> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let current = routes.get(model);
        if let Some(table) = current.filter(|t| t.version == version) {
            return Ok(table.clone());
        }
        let previous = self
            .previous_routes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        match previous.get(model).filter(|t| t.version == version) {
            Some(table) => Ok(table.clone()),
            None => Err(current.map(|t| t.version)),
        }
    }

    pub(crate) fn set_route(&self, table: v1::RouteTable) {
        {
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            let replaced = if table.deleted {
                routes.remove(&table.model)
            } else {
                routes.insert(table.model.clone(), table.clone())
            };
            let mut previous = self
                .previous_routes
                .write()
                .unwrap_or_else(|p| p.into_inner());
            match replaced {
                Some(old) if old.version != table.version => {
                    previous.insert(old.model.clone(), old);
                }
                _ if table.deleted => {
                    previous.remove(&table.model);
                }
                _ => {}
            }
        }
        let _ = self.route_updates.send(table);
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

    /// Keeps a control session up for ever: register, then heartbeat, follow assignments and routes. On any
    /// failure, tries the next control plane after a short pause.
    pub async fn control_session(self: Arc<Self>) {
        let mut attempt = 0usize;
        loop {
            let address = &self.config.control_planes[attempt % self.config.control_planes.len()];
            attempt += 1;
            match self.clone().session(address).await {
                Ok(()) => {}
                Err(e) => {
                    if self.connected.swap(false, Ordering::Relaxed) {
                        tracing::warn!(control_plane = %address, error = %e, "lost the control plane; serving from cache");
                    } else {
                        tracing::debug!(control_plane = %address, error = %e, "control plane unreachable");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn session(self: Arc<Self>, address: &str) -> Result<(), String> {
        let channel = self.channel(address)?;
        let mut control = ControlClient::new(channel.clone());
        let spec = v1::NodeSpec {
            tier: self.config.tier as i32,
            arch: std::env::consts::ARCH.to_string(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: 0,
            backends: vec!["tract".to_string()],
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
                Ok(Ok(answer)) => Some((known, answer.into_inner().ttl_ms)),
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => None,
                Ok(Err(s)) => return Err(format!("heartbeat: {}", s.message())),
                Err(_) => return Err("heartbeat timed out".into()),
            }
        };
        let (node_id, ttl_ms) = match resumed {
            Some((id, ttl_ms)) => {
                tracing::info!(node = %id, control_plane = %address, "resumed");
                (id, ttl_ms)
            }
            None => {
                let registered = control
                    .register(v1::RegisterRequest { spec: Some(spec) })
                    .await
                    .map_err(|s| format!("register: {}", s.message()))?
                    .into_inner();
                tracing::info!(node = %registered.node_id, control_plane = %address, "registered");
                (registered.node_id, registered.ttl_ms)
            }
        };
        *self.node_id.write().unwrap_or_else(|p| p.into_inner()) = node_id.clone();
        self.connected.store(true, Ordering::Relaxed);
        let period = Duration::from_millis((ttl_ms / 3).clamp(100, 10_000));

        // Aborted with this session, however it ends (also when the session task itself is aborted).
        let _assignments = AbortOnDrop(tokio::spawn(
            self.clone()
                .follow_assignments(channel.clone(), node_id.clone()),
        ));
        let _routes = AbortOnDrop(tokio::spawn(self.clone().follow_routes(channel.clone())));
        self.heartbeats(&mut control, &node_id, period).await
    }

    fn heartbeat_request(&self, node_id: &str) -> v1::HeartbeatRequest {
        v1::HeartbeatRequest {
            node_id: node_id.to_string(),
            load: Some(self.load()),
            ready: self.stages.ready(),
            stage_ms: HashMap::new(),
        }
    }

    async fn heartbeats(
        &self,
        control: &mut ControlClient<Channel>,
        node_id: &str,
        period: Duration,
    ) -> Result<(), String> {
        loop {
            let request = self.heartbeat_request(node_id);
            let call = tokio::time::timeout(period * 2, control.heartbeat(request)).await;
            match call {
                Ok(Ok(_)) => {}
                Ok(Err(s)) => return Err(format!("heartbeat: {}", s.message())),
                Err(_) => return Err("heartbeat timed out".into()),
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.ready_changed.notified() => {}
            }
        }
    }

    async fn follow_assignments(self: Arc<Self>, channel: Channel, node_id: String) {
        let mut control = ControlClient::new(channel.clone());
        let Ok(response) = control
            .watch_assignments(v1::WatchAssignmentsRequest { node_id })
            .await
        else {
            return;
        };
        let mut stream = response.into_inner();
        let mut current: Vec<v1::StageAssignment> = Vec::new();
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
                    Some(Ok(assignments)) => current = assignments.stages,
                    _ => return,
                },
                _ = retry => {}
            }
            failed = false;
            for stage in &current {
                if self.stages.get(&stage.digest).is_some() {
                    continue;
                }
                if let Err(e) = self.fetch_and_load(&channel, &stage.digest).await {
                    failed = true;
                    tracing::warn!(model = %stage.model, digest = %stage.digest, error = %e, "cannot prepare stage; retrying in 1 s");
                }
            }
            let wanted: Vec<String> = current.iter().map(|s| s.digest.clone()).collect();
            self.stages.retain(&wanted);
            self.ready_changed.notify_one();
        }
    }

    async fn fetch_and_load(
        self: &Arc<Self>,
        channel: &Channel,
        digest: &str,
    ) -> Result<(), String> {
        if self.stages.cached_blob(digest).is_none() {
            let bytes = fetch_blob(channel, digest).await?;
            self.stages.put_blob(digest, &bytes)?;
        }
        let started = std::time::Instant::now();
        let (agent, digest_owned) = (self.clone(), digest.to_string());
        // Loading optimises the graph: seconds for large stages, so off the async threads.
        tokio::task::spawn_blocking(move || agent.stages.load(&digest_owned))
            .await
            .map_err(|e| format!("loader task failed: {e}"))??;
        tracing::info!(
            digest,
            ms = started.elapsed().as_millis() as u64,
            "stage loaded"
        );
        Ok(())
    }

    async fn follow_routes(self: Arc<Self>, channel: Channel) {
        let mut client = RoutesClient::new(channel.clone());
        let Ok(response) = client
            .watch_routes(v1::WatchRoutesRequest { models: vec![] })
            .await
        else {
            return;
        };
        let mut stream = response.into_inner();
        while let Some(Ok(table)) = stream.next().await {
            // Cache the device stages too, so devices can fetch them from this agent when the control
            // plane is down.
            let device_stages: Vec<String> = table
                .plans
                .iter()
                .flat_map(|p| &p.stages)
                .filter(|s| s.tier == v1::Tier::Device as i32)
                .map(|s| s.digest.clone())
                .collect();
            self.set_route(table);
            for digest in device_stages {
                if self.stages.cached_blob(&digest).is_none() {
                    match fetch_blob(&channel, &digest).await {
                        Ok(bytes) => {
                            let _ = self.stages.put_blob(&digest, &bytes);
                        }
                        Err(e) => tracing::debug!(digest, error = %e, "cannot cache device stage"),
                    }
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fetches a blob from a Routes server and checks its digest.
pub async fn fetch_blob(channel: &Channel, digest: &str) -> Result<Vec<u8>, String> {
    strata_proto::call::fetch_blob(channel.clone(), digest)
        .await
        .map_err(|s| format!("fetch {digest}: {}", s.message()))
}
