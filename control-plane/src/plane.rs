//! The control plane's state and operations: the node registry (leases, heartbeats, load), the model registry
//! (content-addressed pushes, versions) and the route tables watchers read. gRPC glue lives in `service`;
//! planning and publishing in `reconcile`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use strata_blob::BlobStore;
use strata_core::{Digest, Tier};
use strata_planner::cluster::Cluster;
use strata_proto::auth::{Caller, Class};
use strata_proto::{convert, v1};
use tokio::sync::{Notify, watch};

use crate::error::ControlError;
use crate::keys;
use crate::records::{CorruptRecords, ModelRecord, NodeRecord, PlansRecord};
use crate::store::{
    Compare, CompareOp, CompareTarget, Leadership, LeaseId, Store, StoreError, Txn, TxnOp,
};

/// Control-plane settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tier profiles and links the planner uses.
    pub cluster: Cluster,
    /// How long a node stays registered without a heartbeat.
    pub node_ttl: Duration,
    /// The largest model accepted, bytes (`--max-model-mib`): a push declaring more is `RESOURCE_EXHAUSTED`
    /// before its data is buffered.
    pub max_model_bytes: u64,
    /// Concurrent HTTP/2 streams one client connection may have open (`--max-streams-per-connection`).
    pub max_streams_per_connection: u32,
    /// How long a replaced version's stages stay loaded after its successor's route table is published
    /// (for requests already on their way with the old table).
    pub rollout_grace: Duration,
    /// The address other replicas reach this one at (peer blob fetches); default: the listen address,
    /// with 127.0.0.1 for an unspecified IP.
    pub advertise: Option<String>,
    /// How long a blob no record references is kept before it is deleted (a push or a plan stores its blobs
    /// just before the record that references them).
    pub blob_grace: Duration,
    /// How each model's frontier of plans is searched and bounded.
    pub frontier: strata_planner::frontier::Settings,
    /// How agents' measured stage times calibrate the tiers' speeds.
    pub calibration: crate::calibration::Settings,
    /// How it serves and how it dials its peers (plain, or mutual TLS with a controller certificate).
    pub transport: strata_proto::transport::Transport,
    /// The cluster CA, when this replica admits joining nodes (it signs their certificates).
    pub ca: Option<Arc<strata_trust::ca::Ca>>,
    /// How long a joined node's certificate is valid.
    pub node_cert_ttl: Duration,
}

impl Settings {
    /// Defaults for a cluster profile: node TTL 3 s, models up to [`DEFAULT_MAX_MODEL_BYTES`], 256 streams per
    /// connection ([`strata_proto::server::MAX_STREAMS_PER_CONNECTION`]), rollout grace 10 s, blob grace
    /// 10 min, the default frontier (16 plans), calibration on (±25 %), the plain transport, no joining (node certificates for 30 days once a CA is given).
    pub fn new(cluster: Cluster) -> Settings {
        Settings {
            cluster,
            node_ttl: Duration::from_secs(3),
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            max_streams_per_connection: strata_proto::server::MAX_STREAMS_PER_CONNECTION,
            rollout_grace: Duration::from_secs(10),
            advertise: None,
            blob_grace: Duration::from_secs(600),
            frontier: strata_planner::frontier::Settings::default(),
            calibration: crate::calibration::Settings::default(),
            transport: Default::default(),
            ca: None,
            node_cert_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The default cap on a pushed model's size: 4 GiB (`--max-model-mib 4096`). A push is buffered whole before
/// it is checked and stored, so this bounds what one push can take of the control plane's memory.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 4 << 30;

/// What the control plane knows about a live node beyond its store record.
#[derive(Debug, Clone)]
struct Live {
    lease: i64,
    identity: Option<String>,
    ready: Vec<Digest>,
    load: v1::Load,
    stage_ms: BTreeMap<String, f64>,
    stage_runs: BTreeMap<String, u64>,
    last_seen: Instant,
}

/// Stage assignments per node id.
pub type AssignmentMap = HashMap<String, Vec<v1::StageAssignment>>;

/// The control plane.
pub struct ControlPlane {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) settings: Settings,
    live: Mutex<HashMap<String, Live>>,
    pub(crate) assignments: watch::Sender<Arc<AssignmentMap>>,
    pub(crate) wake: Notify,
    /// This replica's id (`/strata/v1/controllers/{id}`, its candidacy's value).
    pub(crate) replica_id: String,
    /// The election this replica won, while it leads.
    leadership: Mutex<Option<Leadership>>,
    /// When this replica last became leader.
    led_since: Mutex<Instant>,
    /// The lease of this replica's candidacy and controller key, revoked on a graceful stop.
    pub(crate) replica_lease: Mutex<Option<LeaseId>>,
    /// Whether the store answered this replica's last lease call (the health service reports
    /// `strata.v1.Control` as NOT_SERVING while it does not); false until the first answer.
    pub(crate) store_reachable: watch::Sender<bool>,
    /// The published route tables, for `WatchRoutes` (fed by one store watch, run by `server::serve`).
    pub(crate) route_cache: Arc<crate::route_cache::RouteCache>,
    /// Records found corrupt (logged and counted where found; never skipped silently).
    pub(crate) corrupt: CorruptRecords,
    /// Models whose planning failed, by name: the version, and when to try again (with the pause that grows).
    pub(crate) replan_backoff: Mutex<HashMap<String, (u64, Instant, Duration)>>,
    /// Prometheus metrics (served when `--metrics-listen` is given); `store` reports into them.
    pub(crate) metrics: Arc<crate::metrics::ControlMetrics>,
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ControlError> {
    serde_json::to_vec(value).map_err(|e| ControlError::Internal(e.to_string()))
}

/// Decodes a JSON record; a corrupt one is logged, counted and an error (callers never skip it silently).
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    corrupt: &CorruptRecords,
    key: &str,
    bytes: &[u8],
) -> Result<T, ControlError> {
    serde_json::from_slice(bytes).map_err(|e| {
        corrupt.note(key, &e);
        ControlError::Internal(format!("corrupt record at {key}: {e}"))
    })
}

impl ControlPlane {
    /// A control plane over a store and a blob store. Call [`crate::reconcile::run`] to plan and publish.
    pub fn new(store: Arc<dyn Store>, blobs: Arc<dyn BlobStore>, settings: Settings) -> Arc<Self> {
        let corrupt = CorruptRecords::default();
        // The metric definitions are constants, checked by this crate's tests: a failure is a bug.
        #[allow(clippy::expect_used)]
        let metrics = Arc::new(
            crate::metrics::ControlMetrics::new()
                .expect("the control plane's metrics are well defined"),
        );
        let store: Arc<dyn Store> =
            Arc::new(crate::metrics::MeteredStore::new(store, metrics.clone()));
        let plane = Arc::new(ControlPlane {
            metrics,
            store,
            blobs,
            settings,
            live: Mutex::new(HashMap::new()),
            assignments: watch::channel(Arc::new(AssignmentMap::new())).0,
            wake: Notify::new(),
            replica_id: format!(
                "cp-{}",
                &Digest::of(
                    format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes()
                )
                .as_str()[..8]
            ),
            leadership: Mutex::new(None),
            led_since: Mutex::new(Instant::now()),
            replica_lease: Mutex::new(None),
            store_reachable: watch::channel(false).0,
            route_cache: Arc::new(crate::route_cache::RouteCache::new(corrupt.clone())),
            corrupt,
            replan_backoff: Mutex::new(HashMap::new()),
        });
        #[allow(clippy::expect_used)]
        plane
            .metrics
            .pull_from(&Arc::downgrade(&plane))
            .expect("the control plane's metrics are well defined");
        plane
    }

    /// The control plane's Prometheus metrics.
    pub fn metrics(&self) -> &prometheus::Registry {
        self.metrics.registry()
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The election this replica holds, if it leads.
    pub fn leadership(&self) -> Option<Leadership> {
        self.leadership.lock().clone()
    }

    /// How many corrupt records this replica has found (each also logged where it was found).
    pub fn corrupt_records(&self) -> u64 {
        self.corrupt.count()
    }

    /// Whether the store answered this replica's last lease renewal.
    pub fn store_reachable(&self) -> bool {
        *self.store_reachable.borrow()
    }

    /// Whether this replica leads (plans, assigns and publishes).
    pub fn is_leader(&self) -> bool {
        self.leadership().is_some()
    }

    /// How long this replica has led (meaningful while it leads).
    pub(crate) fn leading_for(&self) -> Duration {
        self.led_since.lock().elapsed()
    }

    pub(crate) fn set_leadership(&self, leadership: Option<Leadership>) {
        if leadership.is_some() {
            *self.led_since.lock() = Instant::now();
        }
        *self.leadership.lock() = leadership;
        self.wake.notify_one();
    }

    /// Applies `ops` only while `leadership` still holds; otherwise this replica steps down.
    pub(crate) async fn leader_txn(
        &self,
        leadership: &Leadership,
        ops: Vec<TxnOp>,
    ) -> Result<(), ControlError> {
        let txn = Txn {
            compare: vec![leadership.fence()],
            success: ops,
            failure: vec![],
        };
        if self.store.txn(txn).await?.succeeded {
            return Ok(());
        }
        let mut current = self.leadership.lock();
        if current.as_ref() == Some(leadership) {
            *current = None;
        }
        Err(ControlError::NotLeader)
    }

    fn live(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock()
    }

    /// The last load a node reported.
    pub fn load_of(&self, node_id: &str) -> Option<v1::Load> {
        self.live().get(node_id).map(|l| l.load)
    }

    /// The per-stage compute times a node last reported (ms by stage digest).
    pub fn stage_ms_of(&self, node_id: &str) -> BTreeMap<String, f64> {
        self.live()
            .get(node_id)
            .map(|l| l.stage_ms.clone())
            .unwrap_or_default()
    }

    /// The per-stage runs a node last reported (by stage digest).
    pub fn stage_runs_of(&self, node_id: &str) -> BTreeMap<String, u64> {
        self.live()
            .get(node_id)
            .map(|l| l.stage_runs.clone())
            .unwrap_or_default()
    }

    /// The tier and per-stage compute times of every node in `nodes` connected here.
    pub fn stage_reports(&self, nodes: &[NodeRecord]) -> Vec<crate::calibration::Report> {
        let live = self.live();
        nodes
            .iter()
            .filter_map(|n| {
                live.get(&n.id).map(|l| crate::calibration::Report {
                    tier: n.tier,
                    stages: l
                        .stage_ms
                        .iter()
                        .map(|(d, &ms)| {
                            let runs = l.stage_runs.get(d).copied().unwrap_or(1);
                            (d.clone(), crate::calibration::Timed { ms, runs })
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// Milliseconds since a node's last heartbeat.
    pub fn last_seen_ms(&self, node_id: &str) -> Option<u64> {
        self.live()
            .get(node_id)
            .map(|l| l.last_seen.elapsed().as_millis() as u64)
    }

    /// Registers a node under a fresh lease.
    #[tracing::instrument(skip_all, fields(name = %spec.name, address = %spec.address))]
    ///
    /// Under mutual TLS the caller must be a node, and its certificate decides its tier and name: a node whose
    /// spec claims another tier is refused, whatever it says.
    pub async fn register(
        &self,
        mut spec: v1::NodeSpec,
        caller: &Caller,
    ) -> Result<(String, Duration), ControlError> {
        let tier = convert::tier(spec.tier, "spec.tier")
            .ok()
            .filter(|t| *t != Tier::Device)
            .ok_or_else(|| {
                ControlError::InvalidArgument(
                    "a node's tier must be edge or cloud (devices do not register)".into(),
                )
            })?;
        let identity = match caller {
            Caller::Open => None,
            Caller::Known(id) if id.tier() == Some(tier) => {
                spec.name = id.name.clone();
                Some(id.dns_name())
            }
            other => {
                return Err(ControlError::PermissionDenied(format!(
                    "register as a {tier} node: the caller is {other}, whose certificate does not make it a {tier} node"
                )));
            }
        };
        if spec.address.parse::<std::net::SocketAddr>().is_err() && !spec.address.contains(':') {
            return Err(ControlError::InvalidArgument(format!(
                "node address \"{}\" is not host:port",
                spec.address
            )));
        }
        let lease = self.store.grant_lease(self.settings.node_ttl).await?;
        let base = if spec.name.is_empty() {
            tier.name().to_string()
        } else {
            spec.name.clone()
        };
        let suffix = Digest::of(format!("{}{lease}{:?}", spec.address, Instant::now()).as_bytes());
        let suffix = &suffix.as_str()[..6];
        let id: String = format!("{base}-{suffix}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let record = NodeRecord {
            id: id.clone(),
            name: spec.name,
            tier,
            arch: spec.arch,
            cores: spec.cores,
            memory_bytes: spec.memory_bytes,
            backends: spec.backends,
            address: spec.address,
            lease,
            ready: Vec::new(),
            identity: identity.clone(),
        };
        self.store
            .put(&keys::node(&id), json(&record)?, Some(lease))
            .await?;
        self.live().insert(
            id.clone(),
            Live {
                lease,
                identity,
                ready: Vec::new(),
                load: v1::Load::default(),
                stage_ms: BTreeMap::new(),
                stage_runs: BTreeMap::new(),
                last_seen: Instant::now(),
            },
        );
        tracing::info!(node = %id, tier = %tier, "node registered");
        self.wake.notify_one();
        Ok((id, self.settings.node_ttl))
    }

    /// Checks that `caller` may act as node `node_id` (it registered it).
    pub async fn check_owner(&self, node_id: &str, caller: &Caller) -> Result<(), ControlError> {
        if matches!(caller, Caller::Open) {
            return Ok(());
        }
        let cached = self.live().get(node_id).map(|l| l.identity.clone());
        let identity = match cached {
            Some(i) => i,
            None => self.node_record(node_id).await?.identity,
        };
        owns(caller, node_id, identity.as_deref())
    }

    /// The node ids registered by `identity` (its DNS name; from the store when this replica has not heard
    /// from them).
    pub async fn nodes_of(&self, identity: &str) -> Result<Vec<String>, ControlError> {
        let mut ids: Vec<String> = self
            .live()
            .iter()
            .filter(|(_, l)| l.identity.as_deref() == Some(identity))
            .map(|(id, _)| id.clone())
            .collect();
        ids.extend(
            self.nodes()
                .await?
                .into_iter()
                .filter(|n| n.identity.as_deref() == Some(identity))
                .map(|n| n.id),
        );
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn node_record(&self, node_id: &str) -> Result<NodeRecord, ControlError> {
        let key = keys::node(node_id);
        match self.store.get(&key).await? {
            Some(kv) => parse(&self.corrupt, &key, &kv.value),
            None => Err(ControlError::UnknownNode(node_id.to_string())),
        }
    }

    /// Renews a node's lease, records its load, and republishes when its ready stages changed.
    #[tracing::instrument(skip_all, fields(node = %req.node_id))]
    ///
    /// Under mutual TLS only the identity that registered the node may heartbeat for it.
    pub async fn heartbeat(
        &self,
        req: v1::HeartbeatRequest,
        caller: &Caller,
    ) -> Result<Duration, ControlError> {
        let mut new_ready = req
            .ready
            .iter()
            .map(|d| convert::digest(d, "ready"))
            .collect::<Result<Vec<Digest>, _>>()
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        new_ready.sort();
        new_ready.dedup();
        let stage_ms: BTreeMap<String, f64> = req
            .stage_ms
            .iter()
            .filter(|(d, ms)| d.parse::<Digest>().is_ok() && ms.is_finite() && **ms >= 0.0)
            .map(|(d, ms)| (d.clone(), *ms))
            .collect();
        let stage_runs: BTreeMap<String, u64> = req
            .stage_runs
            .iter()
            .filter(|(d, _)| stage_ms.contains_key(*d))
            .map(|(d, runs)| (d.clone(), *runs))
            .collect();
        let cached = self
            .live()
            .get(&req.node_id)
            .map(|l| (l.lease, l.ready.clone(), l.identity.clone()));
        let (lease, ready, identity) = match cached {
            Some(c) => c,
            None => {
                let r = self.node_record(&req.node_id).await?;
                (r.lease, r.ready, r.identity)
            }
        };
        owns(caller, &req.node_id, identity.as_deref())?;
        match self.store.keep_alive(lease).await {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                self.live().remove(&req.node_id);
                return Err(ControlError::UnknownNode(req.node_id));
            }
            Err(e) => return Err(e.into()),
        }
        if new_ready != ready {
            let mut record = self.node_record(&req.node_id).await?;
            record.ready = new_ready.clone();
            self.store
                .put(&keys::node(&req.node_id), json(&record)?, Some(lease))
                .await?;
            self.wake.notify_one();
        }
        self.live().insert(
            req.node_id.clone(),
            Live {
                lease,
                identity,
                ready: new_ready,
                load: req.load.unwrap_or_default(),
                stage_ms,
                stage_runs,
                last_seen: Instant::now(),
            },
        );
        Ok(self.settings.node_ttl)
    }

    /// Removes a node now: the node itself, or an administrator draining it.
    pub async fn deregister(&self, node_id: &str, caller: &Caller) -> Result<(), ControlError> {
        let record = self.node_record(node_id).await?;
        if !caller.is(Class::Admin) {
            owns(caller, node_id, record.identity.as_deref())?;
        }
        self.live().remove(node_id);
        match self.store.revoke_lease(record.lease).await {
            Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.delete(&keys::node(node_id)).await?;
        tracing::info!(node = %node_id, "node deregistered");
        self.wake.notify_one();
        Ok(())
    }

    /// Every registered node (a corrupt record is logged, counted and left out: that node gets no work).
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError> {
        let range = self.store.range(keys::NODES).await?;
        let mut nodes = Vec::with_capacity(range.kvs.len());
        for kv in range.kvs {
            if let Ok(node) = parse::<NodeRecord>(&self.corrupt, &kv.key, &kv.value) {
                nodes.push(node);
            }
        }
        let ids: std::collections::HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        self.live().retain(|id, _| ids.contains(id.as_str()));
        Ok(nodes)
    }

    /// Stores a pushed model: checks the digest and that Strata can plan it, then creates or bumps its version.
    /// Pushing identical content and settings again changes nothing.
    #[tracing::instrument(skip_all, fields(model = %meta.name))]
    pub async fn push_model(
        &self,
        meta: v1::ModelMeta,
        bytes: Bytes,
    ) -> Result<ModelRecord, ControlError> {
        keys::check_model_name(&meta.name)
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        let declared = convert::digest(&meta.digest, "meta.digest")
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        if let Err(e) = declared.verify(&bytes) {
            return Err(ControlError::InvalidArgument(format!(
                "model \"{}\": the uploaded {} bytes hash to {}, not the declared {}; the upload was corrupted, nothing was stored",
                meta.name,
                bytes.len(),
                e.actual,
                meta.digest
            )));
        }
        let actual = declared;
        // Required, never defaulted: an unspecified or unknown level must not widen to `open`.
        let privacy = convert::model_privacy(meta.privacy, "meta.privacy").map_err(|e| {
            ControlError::InvalidArgument(format!(
                "model \"{}\": {e}; nothing was stored",
                meta.name
            ))
        })?;
        let batching =
            crate::records::BatchingRecord::from_wire(meta.batching.as_ref()).map_err(|e| {
                ControlError::InvalidArgument(format!(
                    "model \"{}\": batching: {e}; nothing was stored",
                    meta.name
                ))
            })?;
        let shapes = meta.input_shapes.clone();
        let check_bytes = bytes.clone();
        let checked = tokio::task::spawn_blocking(move || {
            crate::planning::check_model(&check_bytes, &shapes)
        })
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?;
        checked.map_err(|e| {
            ControlError::InvalidArgument(format!("model \"{}\" cannot be served: {e}", meta.name))
        })?;
        self.blobs.put(&actual, bytes.clone()).await?;
        let key = keys::model(&meta.name);
        loop {
            let existing = self.store.get(&key).await?;
            let (version, compare) = match &existing {
                Some(kv) => {
                    let old: ModelRecord = parse(&self.corrupt, &key, &kv.value)?;
                    if old.digest == actual
                        && old.privacy == privacy
                        && old.input_shapes == meta.input_shapes
                        && old.batching == batching
                    {
                        return Ok(old);
                    }
                    (old.version + 1, CompareTarget::ModRevision(kv.mod_revision))
                }
                None => (1, CompareTarget::Version(0)),
            };
            let record = ModelRecord {
                name: meta.name.clone(),
                version,
                digest: actual.clone(),
                size_bytes: bytes.len() as u64,
                privacy,
                input_shapes: meta.input_shapes.clone(),
                batching,
            };
            let txn = Txn {
                compare: vec![Compare {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    target: compare,
                }],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value: json(&record)?,
                    lease: None,
                }],
                failure: vec![],
            };
            if self.store.txn(txn).await?.succeeded {
                // The blob was stored before its record existed: store it again now that the record
                // references it, in case the collector removed it in between (`crate::blob::collect`).
                self.blobs.put(&actual, bytes.clone()).await?;
                tracing::info!(version, digest = %actual, "model stored");
                self.wake.notify_one();
                return Ok(record);
            }
        }
    }

    /// Every model (a corrupt record is logged, counted and left out; see [`ControlPlane::model_names`]).
    pub async fn models(&self) -> Result<Vec<ModelRecord>, ControlError> {
        let range = self.store.range(keys::MODELS).await?;
        Ok(range
            .kvs
            .iter()
            .filter_map(|kv| parse(&self.corrupt, &kv.key, &kv.value).ok())
            .collect())
    }

    /// The name of every model key, corrupt records included: what exists, for decisions to delete what
    /// belongs to models that do not.
    pub async fn model_names(&self) -> Result<BTreeSet<String>, ControlError> {
        let range = self.store.range(keys::MODELS).await?;
        Ok(range
            .kvs
            .iter()
            .map(|kv| kv.key.trim_start_matches(keys::MODELS).to_string())
            .collect())
    }

    /// One model.
    pub async fn model(&self, name: &str) -> Result<ModelRecord, ControlError> {
        let key = keys::model(name);
        match self.store.get(&key).await? {
            Some(kv) => parse(&self.corrupt, &key, &kv.value),
            None => Err(self.unknown_model(name).await),
        }
    }

    /// A model's plans, if planned.
    pub async fn plans(&self, name: &str) -> Result<Option<PlansRecord>, ControlError> {
        let key = keys::plans(name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(parse(&self.corrupt, &key, &kv.value)?)),
            None => Ok(None),
        }
    }

    pub(crate) async fn unknown_model(&self, name: &str) -> ControlError {
        let known: Vec<String> = self
            .models()
            .await
            .map(|ms| ms.into_iter().map(|m| m.name).collect())
            .unwrap_or_default();
        ControlError::UnknownModel {
            name: name.to_string(),
            known,
        }
    }

    /// Deletes a model; its plans and routes go with the next reconcile, and its blobs with the blob
    /// collector of every replica once no record references them ([`crate::blob::collect`]).
    pub async fn delete_model(&self, name: &str) -> Result<(), ControlError> {
        self.model(name).await?;
        self.store.delete(&keys::model(name)).await?;
        tracing::info!(model = %name, "model deleted");
        self.wake.notify_one();
        Ok(())
    }

    /// A model's current route table, with its store revision.
    pub async fn route_table(&self, name: &str) -> Result<v1::RouteTable, ControlError> {
        let key = keys::routes(name);
        match self.store.get(&key).await? {
            Some(kv) => crate::records::route_table(&self.corrupt, &kv),
            None => {
                self.model(name).await?;
                match self.plans(name).await? {
                    Some(PlansRecord {
                        failed: Some(why), ..
                    }) => Err(ControlError::PlanFailed {
                        model: name.to_string(),
                        why,
                    }),
                    _ => Err(ControlError::Planning(name.to_string())),
                }
            }
        }
    }

    /// Every route table under `prefix` (routes or retired ones); a corrupt one is logged, counted and left
    /// out.
    pub(crate) async fn route_tables(
        &self,
        prefix: &str,
    ) -> Result<Vec<v1::RouteTable>, ControlError> {
        Ok(self
            .store
            .range(prefix)
            .await?
            .kvs
            .iter()
            .filter_map(|kv| crate::records::route_table(&self.corrupt, kv).ok())
            .collect())
    }
}

/// Whether `caller` is the identity that registered node `node_id` (`registered_by`); anyone is under the
/// plain transport.
fn owns(caller: &Caller, node_id: &str, registered_by: Option<&str>) -> Result<(), ControlError> {
    match (caller, registered_by) {
        (Caller::Open, _) => Ok(()),
        (Caller::Known(id), Some(owner)) if id.tier().is_some() && id.dns_name() == owner => Ok(()),
        (caller, owner) => Err(ControlError::PermissionDenied(format!(
            "node \"{node_id}\" was registered by {}; {caller} may not act for it",
            owner.map_or("a caller without a certificate".to_string(), |o| format!(
                "\"{o}\""
            ))
        ))),
    }
}
