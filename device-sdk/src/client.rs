//! The async client: route tables kept current by a background watch, device stages run in-process with
//! tract, the rest sent to the least-loaded agent of the next tier, with retries and local fallback.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use strata_blob::{BlobError, SharedCache};
use strata_core::{DType, Digest, Privacy, TensorData, Tier};
use strata_proto::balance::Balancer;
use strata_proto::call::{self, HopError, RetryPolicy, chunks_of};
use strata_proto::convert;
use strata_proto::task::{AbortOnDrop, Backoff};
use strata_proto::transport::Expect;
use strata_proto::v1::{self, routes_client::RoutesClient};
use strata_runtime::{Backend, LoadedStage, TractBackend};
use tonic::transport::Channel;

use crate::error::SdkError;
use crate::estimate::{Estimator, EstimatorConfig, RTT_PAYLOAD_BYTES};
use crate::route::{self, Constraints, Decision, PowerState, Situation};
use strata_core::recost::{Link, LinkState, Prediction};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Control-plane or agent addresses (`host:port` or URLs), tried in order.
    pub endpoints: Vec<String>,
    /// Give up connecting to a node after this long.
    pub connect_timeout: Duration,
    /// End-to-end deadline of one request (propagated to every hop).
    pub request_timeout: Duration,
    /// Cap on tensor bytes in a response.
    pub max_response_bytes: u64,
    /// How long an agent that failed a request is avoided.
    pub retry: RetryPolicy,
    /// How live estimates are smoothed and aged.
    pub estimator: EstimatorConfig,
    /// A directory for the device stage cache, shared by every process that names it (`None`: stages live
    /// in memory only, and each process fetches them again). See [`strata_blob::SharedCache`].
    pub cache_dir: Option<PathBuf>,
    /// The stage cache's bound, bytes (least recently used stages go first).
    pub cache_max_bytes: u64,
    /// Models whose device stages are fetched into the stage cache in the background as soon as the client
    /// exists (see [`Client::prefetch`]), within `prefetch_budget_bytes`; retried until it succeeds.
    pub prefetch: Vec<String>,
    /// The background prefetch's budget, bytes.
    pub prefetch_budget_bytes: u64,
    /// The background prefetch waits until the device is charging (see [`Client::set_power_state`]).
    pub prefetch_when_charging: bool,
    /// How it dials: plain, or mutual TLS with a device certificate (then every agent must prove it is a
    /// node of the tier of the stage it is sent, and every endpoint that it is a control plane or a node).
    pub transport: strata_proto::transport::Transport,
}

impl ClientConfig {
    /// Defaults for `endpoints`: 500 ms connect timeout, 30 s request deadline, the default [`RetryPolicy`],
    /// no stage cache (1 GiB when a directory is given), the plain transport.
    pub fn new(endpoints: Vec<String>) -> ClientConfig {
        ClientConfig {
            endpoints,
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: strata_proto::MAX_REQUEST_TENSOR_BYTES,
            retry: RetryPolicy::default(),
            estimator: EstimatorConfig::default(),
            cache_dir: None,
            cache_max_bytes: 1 << 30,
            prefetch: Vec::new(),
            prefetch_budget_bytes: 256 << 20,
            transport: Default::default(),
            prefetch_when_charging: false,
        }
    }
}

/// Time spent in one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTiming {
    /// Stage index.
    pub index: u32,
    /// `device`, `edge` or `cloud`.
    pub tier: &'static str,
    /// The agent that ran it (`None` on the device).
    pub node: Option<String>,
    /// Waiting for a compute slot, ms.
    pub queue_ms: f64,
    /// Computing, ms.
    pub compute_ms: f64,
    /// Compute predicted for it at the profiled speed, ms.
    pub predicted_ms: f64,
    /// Requests in the run that computed it: 1 alone, more when the agent batched it with others (dynamic
    /// batching; `compute_ms` is then the batch's run).
    pub batch: u32,
}

/// One network hop of a finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct HopTiming {
    /// The link.
    pub link: Link,
    /// Tensor bytes sent up.
    pub up_bytes: u64,
    /// Tensor bytes that came back.
    pub down_bytes: u64,
    /// Network time predicted for it when the plan was chosen, ms.
    pub predicted_ms: f64,
    /// Network time measured (the caller's wall time less what the callee reported), ms.
    pub measured_ms: f64,
}

/// A finished request.
#[derive(Debug, Clone)]
pub struct Inference {
    /// Model outputs, in the model's order.
    pub outputs: Vec<(String, TensorData)>,
    /// The plan that ran.
    pub plan_id: String,
    /// Its predicted latency under the conditions when it was chosen, ms.
    pub predicted_ms: f64,
    /// Its full prediction then (latency, device energy, the network's share).
    pub predicted: Prediction,
    /// Per stage, in order.
    pub stages: Vec<StageTiming>,
    /// Per network hop, in order.
    pub hops: Vec<HopTiming>,
    /// How the plan was chosen: the policy, the estimates, every allowed plan ranked.
    pub decision: Decision,
    /// Plans tried before this one succeeded (0: the first choice worked).
    pub fallbacks: u32,
    /// This request ran a runner-up to measure it (see [`route::explore`]), not the best-ranked plan.
    pub explored: bool,
    /// End to end, ms.
    pub total_ms: f64,
}

struct Inner {
    config: ClientConfig,
    routes: RwLock<HashMap<String, Arc<v1::RouteTable>>>,
    stages: Mutex<HashMap<Digest, Arc<dyn LoadedStage>>>,
    channels: call::Channels,
    balancer: Balancer,
    /// Whether the route watch is following an endpoint now.
    watching: AtomicBool,
    /// Why it is not, while it is not.
    watch_error: Mutex<String>,
    /// What requests taught about the network, the tiers' speed and their queues.
    estimator: Mutex<Estimator>,
    /// The device's power state, as the app last reported it.
    power: Mutex<PowerState>,
    /// The stage cache on disk, if configured.
    cache: Option<SharedCache>,
    /// Digests of the device stages here (loaded, or in the stage cache as far as this process knows), so
    /// a decision can tell which plans must download a stage first.
    local: RwLock<HashSet<String>>,
    /// The revision of each model's table saved beside the stage cache.
    saved: Mutex<HashMap<String, u64>>,
    /// Device stages being fetched in the background.
    fetching: Mutex<HashSet<Digest>>,
    /// When each link ([`Link::index`]) was last probed.
    probed: Mutex<[Option<Instant>; 3]>,
    /// When a request last explored a runner-up.
    explored: Mutex<Option<Instant>>,
    /// What the requests did ([`Client::counters`]).
    tally: crate::counters::Tally,
}

/// A device's connection to a Strata cluster. Cheap to clone; all clones share caches.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _watch: Arc<AbortOnDrop>,
    _prefetch: Option<Arc<AbortOnDrop>>,
}

impl Client {
    /// A client for the cluster behind `config.endpoints`. Does not wait for the network: route tables arrive
    /// in the background, and the first request for a model fetches its table if it has not arrived yet.
    /// Call it inside a Tokio runtime (it spawns the route watch); [`crate::blocking::Client`] brings its own.
    pub fn new(config: ClientConfig) -> Result<Client, SdkError> {
        if config.endpoints.is_empty() {
            return Err(SdkError::InvalidArgument("no endpoint given".into()));
        }
        let channels = call::Channels::new(config.connect_timeout, config.transport.clone());
        let config_estimator = config.estimator;
        let cache = match &config.cache_dir {
            Some(dir) => Some(SharedCache::open(dir, config.cache_max_bytes).map_err(|e| {
                SdkError::InvalidArgument(format!("stage cache {}: {e}", dir.display()))
            })?),
            None => None,
        };
        let local: HashSet<String> = match &cache {
            // Unreadable entries only make their stages look remote until used.
            Some(c) => c
                .list()
                .map(|blobs| blobs.into_iter().map(|b| b.digest.to_string()).collect())
                .unwrap_or_default(),
            None => HashSet::new(),
        };
        for e in &config.endpoints {
            channels
                .get(e, Expect::Server)
                .map_err(|e| SdkError::InvalidArgument(e.to_string()))?;
        }
        let inner = Arc::new(Inner {
            config,
            routes: RwLock::new(HashMap::new()),
            stages: Mutex::new(HashMap::new()),
            channels,
            balancer: Balancer::new(),
            watching: AtomicBool::new(false),
            watch_error: Mutex::new("not connected yet".to_string()),
            estimator: Mutex::new(Estimator::new(config_estimator)),
            power: Mutex::new(PowerState::default()),
            cache,
            local: RwLock::new(local),
            saved: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashSet::new()),
            probed: Mutex::new([None; 3]),
            explored: Mutex::new(None),
            tally: Default::default(),
        });
        if !inner.config.prefetch.is_empty() && inner.cache.is_none() {
            return Err(SdkError::InvalidArgument(
                "prefetch needs a stage cache (ClientConfig::cache_dir)".into(),
            ));
        }
        let watch = AbortOnDrop::spawn(watch_routes(Arc::downgrade(&inner)));
        let prefetch = (!inner.config.prefetch.is_empty()).then(|| {
            Arc::new(AbortOnDrop::spawn(prefetch_in_background(Arc::downgrade(
                &inner,
            ))))
        });
        Ok(Client {
            inner,
            _watch: Arc::new(watch),
            _prefetch: prefetch,
        })
    }

    /// The cached route table of a model, if any.
    pub fn route_table(&self, model: &str) -> Option<Arc<v1::RouteTable>> {
        self.inner.routes.read().get(model).cloned()
    }

    /// Whether the background route watch is following an endpoint now, and why not when it is not (it
    /// retries for ever; requests meanwhile use the cached tables).
    pub fn route_watch(&self) -> Result<(), String> {
        if self.inner.watching.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(self.inner.watch_error.lock().clone())
        }
    }

    /// The route table of a model: cached, or fetched from the first endpoint that answers, or (when none
    /// answers) the one saved beside the stage cache.
    pub async fn routes(&self, model: &str) -> Result<Arc<v1::RouteTable>, SdkError> {
        self.inner.routes(model).await
    }

    /// Measures the RTT of every device link the model's plans cross, now (a health check to one live agent
    /// across each), and learns it; the links measured and their RTT, ms. Requests probe stale links by
    /// themselves in the background (at most once per [`PROBE_EVERY`] per link); this is for a caller that
    /// wants fresh figures before its first request (`strata routes --live`).
    pub async fn probe(&self, model: &str) -> Result<Vec<(Link, f64)>, SdkError> {
        let table = self.routes(model).await?;
        let profiles = convert::link_profiles(&table);
        let mut out = Vec::new();
        for link in [Link::DeviceEdge, Link::DeviceCloud] {
            if let Some(address) = self.inner.probe_target(&table, link)
                && let Some(ms) = self
                    .inner
                    .probe_link(link, &address, profiles[link.index()])
                    .await
            {
                out.push((link, ms));
            }
        }
        Ok(out)
    }

    /// Fetches the device stages of `models`' plans into the stage cache without loading them (an app's
    /// declared models, ahead of their first request): each model's whole-model device stage first (its
    /// offline fallback), then the others smallest first, within `budget_bytes` in all. Stages already here
    /// cost nothing. Without a stage cache there is nowhere to keep them: an error.
    pub async fn prefetch(
        &self,
        models: &[String],
        budget_bytes: u64,
    ) -> Result<Prefetched, SdkError> {
        self.inner.prefetch(models, budget_bytes).await
    }

    /// The plan a request would get now, with its prediction (no network).
    pub fn choose(
        &self,
        model: &str,
        constraints: &Constraints,
    ) -> Result<(v1::Plan, Prediction), SdkError> {
        constraints.check()?;
        let table = self.route_table(model).ok_or_else(|| {
            SdkError::Unavailable(format!("no route table cached for \"{model}\""))
        })?;
        self.inner.with_situation(&table, |situation| {
            route::choose(&table, constraints, situation, |n| {
                self.inner.balancer.is_down(n)
            })
            .map(|(p, prediction)| (p.clone(), prediction))
            .ok_or_else(|| no_plan(&table, constraints))
        })
    }

    /// Why a request would get the plan it would get now: the estimates, the policy, every allowed plan
    /// ranked with its prediction (no network).
    pub fn explain(&self, model: &str, constraints: &Constraints) -> Result<Decision, SdkError> {
        constraints.check()?;
        let table = self.route_table(model).ok_or_else(|| {
            SdkError::Unavailable(format!("no route table cached for \"{model}\""))
        })?;
        Ok(self.inner.with_situation(&table, |situation| {
            route::explain(&table, constraints, situation, |n| {
                self.inner.balancer.is_down(n)
            })
        }))
    }

    /// Reports the device's power state (battery level, charging); requests without an objective save
    /// energy on low battery (see [`route::PowerState::low`]).
    pub fn set_power_state(&self, state: PowerState) {
        *self.inner.power.lock() = state;
    }

    /// Takes the device stages `other` has loaded (shared, not copied), so this client need not fetch them
    /// again: for an app (or a measurement driver) that keeps several clients.
    pub fn share_device_stages(&self, other: &Client) {
        let theirs: Vec<(Digest, Arc<dyn LoadedStage>)> = other
            .inner
            .stages
            .lock()
            .iter()
            .map(|(d, s)| (d.clone(), s.clone()))
            .collect();
        self.inner
            .local
            .write()
            .extend(theirs.iter().map(|(d, _)| d.to_string()));
        self.inner.stages.lock().extend(theirs);
    }

    /// What the client has learnt so far (RTT and goodput per link, tier speeds and queues).
    pub fn estimates(&self) -> Estimator {
        self.inner.estimator.lock().clone()
    }

    /// Fetches and loads every device stage of a model's plans, so the model keeps working offline, and
    /// calibrates the device: each plan's first device stage (its inputs are model inputs, whose shapes the
    /// table gives) runs twice on zeros, cheapest first, within [`CALIBRATION_BUDGET`]; the second run's
    /// time is that stage's measured time and a sample of the device's speed. Without it, a plan would be
    /// costed at the profile's device speed until it ran, and might never run.
    pub async fn prepare(&self, model: &str) -> Result<(), SdkError> {
        let table = self.routes(model).await?;
        let digests: BTreeSet<&String> = table
            .plans
            .iter()
            .flat_map(|p| &p.stages)
            .filter(|s| convert::is_tier(s.tier, Tier::Device))
            .map(|s| &s.digest)
            .collect();
        for d in digests {
            let d = convert::digest(d, "stage.digest")
                .map_err(|e| SdkError::Unavailable(format!("route table of \"{model}\": {e}")))?;
            self.inner.device_stage(&d).await?;
        }
        self.calibrate_device(&table).await
    }

    async fn calibrate_device(&self, table: &v1::RouteTable) -> Result<(), SdkError> {
        // Cheapest first: the budget goes as far as it can.
        let mut firsts: Vec<&v1::Stage> = table
            .plans
            .iter()
            .filter_map(|p| p.stages.first())
            .filter(|s| convert::is_tier(s.tier, Tier::Device) && s.predicted_ms > 0.0)
            .collect();
        firsts.sort_by(|a, b| a.predicted_ms.total_cmp(&b.predicted_ms));
        firsts.dedup_by(|a, b| a.digest == b.digest);
        let budget = Instant::now() + CALIBRATION_BUDGET;
        for stage in firsts {
            if Instant::now() >= budget {
                break;
            }
            let Some(feed) = zero_inputs(table, &stage.inputs)? else {
                continue;
            };
            let digest = convert::digest(&stage.digest, "stage.digest").map_err(|e| {
                SdkError::Unavailable(format!("route table of \"{}\": {e}", table.model))
            })?;
            let loaded = self.inner.device_stage(&digest).await?;
            let measured = tokio::task::spawn_blocking(move || {
                let _ = loaded.run(&feed);
                let started = Instant::now();
                loaded
                    .run(&feed)
                    .map(|_| started.elapsed().as_secs_f64() * 1e3)
            })
            .await
            .map_err(|e| SdkError::Local(format!("calibration task failed: {e}")))?;
            if let Ok(ms) = measured {
                self.inner.device_sample(table, stage, ms);
            }
        }
        Ok(())
    }

    /// Runs a model on `inputs` under `constraints`.
    #[tracing::instrument(skip_all, fields(
        otel.name = "infer",
        model = %model,
        privacy = ?constraints.privacy,
        tier = "device",
        version = tracing::field::Empty,
        plan = tracing::field::Empty,
        predicted_ms = tracing::field::Empty,
        measured_ms = tracing::field::Empty,
        fallbacks = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    ))]
    pub async fn infer(
        &self,
        model: &str,
        inputs: HashMap<String, TensorData>,
        constraints: Constraints,
    ) -> Result<Inference, SdkError> {
        let budget_ms = constraints.latency_ms;
        let outcome = self.infer_once(model, inputs, constraints).await;
        self.inner.tally.record(&outcome, budget_ms);
        if let Err(e) = &outcome {
            tracing::Span::current().record("otel.status_code", "ERROR");
            tracing::debug!(error = %e, "request failed");
        }
        outcome
    }

    /// What this client's requests have done since it was made: counters to read, and to export to the
    /// app's own metrics if it wants ([`Counters`](crate::Counters)).
    pub fn counters(&self) -> crate::Counters {
        self.inner.tally.snapshot()
    }

    async fn infer_once(
        &self,
        model: &str,
        inputs: HashMap<String, TensorData>,
        constraints: Constraints,
    ) -> Result<Inference, SdkError> {
        constraints.check()?;
        let started = Instant::now();
        let deadline = started + self.inner.config.request_timeout;
        let table = self.routes(model).await?;
        check_inputs(&table, &inputs)?;
        let (decision, conditions) = self.inner.with_situation(&table, |situation| {
            let decision = route::explain(&table, &constraints, situation, |n| {
                self.inner.balancer.is_down(n)
            });
            (decision, *situation.conditions)
        });
        if constraints.plan.is_none() {
            self.inner.fetch_winners(&table, &decision);
            self.inner.probe_stale_links(&table);
        }
        let order: Vec<(&v1::Plan, Prediction)> = match &constraints.plan {
            Some(id) => {
                let Some(plan) = table.plans.iter().find(|p| &p.id == id) else {
                    return Err(SdkError::InvalidArgument(format!(
                        "model \"{model}\" has no plan \"{id}\" (its plans: {})",
                        table
                            .plans
                            .iter()
                            .map(|p| p.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                };
                let Some(c) = decision.ranked.iter().find(|c| &c.plan_id == id) else {
                    return Err(SdkError::NoPlan(format!(
                        "plan \"{id}\" of model \"{model}\" does not satisfy the privacy of the model or the request{}",
                        if constraints.local_only {
                            ", or its device stages are not here (local only)"
                        } else {
                            ""
                        }
                    )));
                };
                vec![(plan, c.predicted)]
            }
            None => decision
                .ranked
                .iter()
                .filter_map(|c| {
                    table
                        .plans
                        .iter()
                        .find(|p| p.id == c.plan_id)
                        .map(|p| (p, c.predicted))
                })
                .collect(),
        };
        if order.is_empty() {
            return Err(no_plan(&table, &constraints));
        }
        // Now and then, a close runner-up costed on estimates nobody measured lately runs instead.
        let mut order = order;
        let mut explored = false;
        if constraints.plan.is_none()
            && let Some(i) = self.inner.exploration(&table, &decision)
            && let Some(at) = order
                .iter()
                .position(|(p, _)| p.id == decision.ranked[i].plan_id)
        {
            let runner_up = order.remove(at);
            order.insert(0, runner_up);
            explored = true;
        }
        let request_id = next_request_id();
        let mut errors = Vec::new();
        for (attempt, (plan, predicted)) in order.iter().enumerate() {
            match self
                .inner
                .run_plan(&table, plan, &inputs, &constraints, &request_id, deadline)
                .await
            {
                Ok((outputs, stages, hops)) => {
                    let outputs = order_outputs(&table, outputs)?;
                    let span = tracing::Span::current();
                    span.record("version", strata_proto::trace::int(table.version));
                    span.record("plan", plan.id.as_str());
                    span.record("predicted_ms", predicted.latency_ms);
                    span.record("measured_ms", started.elapsed().as_secs_f64() * 1e3);
                    span.record("fallbacks", attempt as i64);
                    let hops = hops
                        .into_iter()
                        .map(|mut h: HopTiming| {
                            h.predicted_ms = conditions.link(h.link).map_or(f64::INFINITY, |l| {
                                l.transfer_ms(h.up_bytes as f64, h.down_bytes as f64)
                            });
                            h
                        })
                        .collect();
                    return Ok(Inference {
                        outputs,
                        plan_id: plan.id.clone(),
                        predicted_ms: predicted.latency_ms,
                        predicted: *predicted,
                        stages,
                        hops,
                        decision,
                        fallbacks: attempt as u32,
                        explored: explored && attempt == 0,
                        total_ms: started.elapsed().as_secs_f64() * 1e3,
                    });
                }
                Err(e)
                    if e.retryable() && Instant::now() < deadline && constraints.plan.is_none() =>
                {
                    tracing::warn!(plan = %plan.id, error = %e, "plan failed; falling back to the next");
                    errors.push(format!("plan {}: {e}", plan.id));
                }
                Err(e) => return Err(e),
            }
        }
        Err(SdkError::Unavailable(format!(
            "every plan for \"{model}\" failed: {}",
            errors.join("; ")
        )))
    }
}

/// A client explores a runner-up at most this often (see [`route::explore`]): at most one request in 20 s
/// runs a plan predicted up to [`route::EXPLORE_WITHIN`] slower than the best.
pub const EXPLORE_EVERY: Duration = Duration::from_secs(20);

/// A link is probed at most this often (see [`Client::probe`]).
pub const PROBE_EVERY: Duration = Duration::from_secs(20);

/// What [`Client::prefetch`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prefetched {
    /// Device stages fetched into the cache.
    pub fetched: Vec<Digest>,
    /// Their bytes.
    pub bytes: u64,
    /// Stages left out: over the budget.
    pub skipped: Vec<Digest>,
}

/// How long [`Client::prepare`] spends calibrating device stages at most (a stage started before the
/// budget ran out finishes).
pub const CALIBRATION_BUDGET: Duration = Duration::from_secs(3);

/// A stage's profiled time: its planned time over the factor its tier was planned with.
fn profiled_ms(table: &v1::RouteTable, stage: &v1::Stage, tier: Tier) -> f64 {
    stage.predicted_ms / convert::tier_calibration(table)[tier.index()]
}

/// Zeros for `names`, if they are all model inputs (their shapes are in the table).
fn zero_inputs(
    table: &v1::RouteTable,
    names: &[String],
) -> Result<Option<HashMap<String, TensorData>>, SdkError> {
    let mut feed = HashMap::new();
    for name in names {
        let Some(spec) = table.inputs.iter().find(|i| &i.name == name) else {
            return Ok(None);
        };
        let Some(dtype) = DType::from_onnx_code(spec.dtype) else {
            return Ok(None);
        };
        let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
        let bytes = shape.iter().product::<usize>() * dtype.size();
        let zeros = TensorData::new(dtype, shape, vec![0; bytes])
            .map_err(|e| SdkError::Local(format!("calibration input {name}: {e}")))?;
        feed.insert(name.clone(), zeros);
    }
    Ok(Some(feed))
}

/// `<process id>-<sequence>`: unique per process, readable in agent logs.
fn next_request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}-{n}", std::process::id())
}

fn no_plan(table: &v1::RouteTable, constraints: &Constraints) -> SdkError {
    let model_level = route::model_level(table);
    SdkError::NoPlan(format!(
        "model \"{}\" has no plan that satisfies privacy {} (model) and {} (request){}",
        table.model,
        model_level,
        constraints.privacy.unwrap_or(model_level),
        if table.notes.is_empty() {
            String::new()
        } else {
            format!(": {}", table.notes.join("; "))
        }
    ))
}

fn check_inputs(
    table: &v1::RouteTable,
    inputs: &HashMap<String, TensorData>,
) -> Result<(), SdkError> {
    let names = || {
        table
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for name in inputs.keys() {
        if !table.inputs.iter().any(|i| &i.name == name) {
            return Err(SdkError::InvalidInput(format!(
                "model \"{}\" has no input \"{name}\" (its inputs: {})",
                table.model,
                names()
            )));
        }
    }
    for spec in &table.inputs {
        let t = inputs.get(&spec.name).ok_or_else(|| {
            SdkError::InvalidInput(format!(
                "missing input \"{}\" (the model needs: {})",
                spec.name,
                names()
            ))
        })?;
        let expected = DType::from_onnx_code(spec.dtype);
        if expected != Some(t.dtype) {
            return Err(SdkError::InvalidInput(format!(
                "input \"{}\": the model expects {}, got {}",
                spec.name,
                expected.map_or("an unsupported type", |d| d.name()),
                t.dtype
            )));
        }
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        if shape != spec.shape {
            return Err(SdkError::InvalidInput(format!(
                "input \"{}\": the model's plans are for shape {:?}, got {:?}",
                spec.name, spec.shape, t.shape
            )));
        }
    }
    Ok(())
}

fn order_outputs(
    table: &v1::RouteTable,
    mut values: HashMap<String, TensorData>,
) -> Result<Vec<(String, TensorData)>, SdkError> {
    table
        .outputs
        .iter()
        .map(|name| {
            values
                .remove(name)
                .map(|t| (name.clone(), t))
                .ok_or_else(|| SdkError::Remote {
                    code: tonic::Code::Internal,
                    message: format!("no stage returned model output \"{name}\""),
                })
        })
        .collect()
}

impl Inner {
    /// See [`Client::routes`].
    async fn routes(&self, model: &str) -> Result<Arc<v1::RouteTable>, SdkError> {
        if let Some(t) = self.routes.read().get(model).cloned() {
            return Ok(t);
        }
        let mut last = None;
        for endpoint in &self.config.endpoints {
            let channel = self.channel(endpoint)?;
            match RoutesClient::new(channel)
                .get_routes(v1::GetRoutesRequest {
                    model: model.to_string(),
                })
                .await
            {
                Ok(t) => {
                    let t = Arc::new(t.into_inner());
                    self.store_table((*t).clone());
                    return Ok(t);
                }
                Err(s) if s.code() == tonic::Code::NotFound => {
                    return Err(SdkError::UnknownModel(s.message().to_string()));
                }
                Err(s) => last = Some(format!("{endpoint}: {}", s.message())),
            }
        }
        let last = last.unwrap_or_default();
        // Offline: the table this device last saw, kept beside its stage cache.
        if let Some(t) = self.saved_table(model) {
            tracing::warn!(model, revision = t.revision, reason = %last, "no endpoint answers; using the route table saved with the stage cache");
            let t = Arc::new(t);
            self.store_table((*t).clone());
            return Ok(t);
        }
        Err(SdkError::Unavailable(format!(
            "no route table for model \"{model}\": {last}"
        )))
    }

    /// Fetches, in the background, the device stages of every plan that would beat the chosen one were its
    /// stages here (its prediction less their download): the request runs on what is here, and later ones
    /// get the better plan. Each stage is fetched once at a time.
    fn fetch_winners(self: &Arc<Self>, table: &v1::RouteTable, decision: &Decision) {
        let Some(chosen) = decision.ranked.first() else {
            return;
        };
        let value = |c: &route::Candidate| match decision.objective {
            route::Objective::Latency => (
                c.predicted.latency_ms - c.download.0,
                chosen.predicted.latency_ms,
            ),
            route::Objective::Energy => (
                c.predicted.energy_mj - c.download.1,
                chosen.predicted.energy_mj,
            ),
        };
        for c in decision.ranked.iter().skip(1) {
            let (without, best) = value(c);
            if c.download_bytes == 0 || !c.reachable || !c.meets_budgets || without >= best {
                continue;
            }
            let Some(plan) = table.plans.iter().find(|p| p.id == c.plan_id) else {
                continue;
            };
            for s in plan
                .stages
                .iter()
                .filter(|s| convert::is_tier(s.tier, Tier::Device))
            {
                let Ok(digest) = convert::digest(&s.digest, "stage.digest") else {
                    continue;
                };
                if self.local.read().contains(digest.as_str())
                    || !self.fetching.lock().insert(digest.clone())
                {
                    continue;
                }
                let inner = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = inner.device_stage(&digest).await {
                        tracing::warn!(%digest, error = %e, "background fetch of a device stage failed");
                    }
                    inner.fetching.lock().remove(&digest);
                });
            }
        }
    }

    /// Probes, in the background, the RTT of each of the device's links whose RTT estimate is older than the
    /// estimator's half-life (or missing) and that a plan of `table` crosses, so a plan no request has used
    /// lately is costed on a fresh figure, not the profile alone. At most one probe per link per
    /// [`PROBE_EVERY`]: two health checks to one agent across the link, the second timed (the first may
    /// connect).
    fn probe_stale_links(self: &Arc<Self>, table: &v1::RouteTable) {
        let now = Instant::now();
        let half_life = self.config.estimator.half_life;
        for link in [Link::DeviceEdge, Link::DeviceCloud] {
            let fresh = self.estimator.lock().links[link.index()]
                .rtt_ms
                .last()
                .is_some_and(|at| now.saturating_duration_since(at) < half_life);
            if fresh {
                continue;
            }
            let Some(address) = self.probe_target(table, link) else {
                continue;
            };
            {
                let mut probed = self.probed.lock();
                if probed[link.index()]
                    .is_some_and(|at| now.saturating_duration_since(at) < PROBE_EVERY)
                {
                    continue;
                }
                probed[link.index()] = Some(now);
            }
            let (inner, profile) = (self.clone(), convert::link_profiles(table)[link.index()]);
            tokio::spawn(async move {
                inner.probe_link(link, &address, profile).await;
            });
        }
    }

    /// A device stage of `table` ran in `ms` here: a sample of the device's speed and of that stage's time.
    fn device_sample(&self, table: &v1::RouteTable, stage: &v1::Stage, ms: f64) {
        let mut estimator = self.estimator.lock();
        let now = Instant::now();
        estimator.compute_sample(
            Tier::Device,
            ms,
            profiled_ms(table, stage, Tier::Device),
            now,
        );
        estimator.device_stage_sample(&stage.digest, ms, now);
    }

    /// The address of a live agent across `link` (one of the device's), if a plan of `table` crosses it.
    fn probe_target(&self, table: &v1::RouteTable, link: Link) -> Option<String> {
        let tier = if link == Link::DeviceEdge {
            Tier::Edge
        } else {
            Tier::Cloud
        };
        let crossed = table
            .plans
            .iter()
            .flat_map(|p| &p.transfers)
            .any(|x| convert::link(x.link, "transfer.link").is_ok_and(|l| l == link));
        let node = table
            .nodes
            .iter()
            .find(|n| convert::is_tier(n.tier, tier) && !self.balancer.is_down(&n.id))?;
        crossed.then(|| node.address.clone())
    }

    /// Measures one round trip to `address` across `link` and learns it as an RTT sample; the RTT, ms.
    async fn probe_link(
        &self,
        link: Link,
        address: &str,
        profile: Option<LinkState>,
    ) -> Option<f64> {
        let ms = self.rtt(address).await?;
        self.estimator
            .lock()
            .link_sample(link, profile, ms, 0.0, 0.0, Instant::now());
        Some(ms)
    }

    /// One round trip to `address`, ms: a gRPC health check after a first one (which may connect).
    async fn rtt(&self, address: &str) -> Option<f64> {
        let channel = self.channel(address).ok()?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let check = || tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        let bound = Duration::from_secs(2);
        tokio::time::timeout(bound, health.check(check()))
            .await
            .ok()?
            .ok()?;
        let started = Instant::now();
        tokio::time::timeout(bound, health.check(check()))
            .await
            .ok()?
            .ok()?;
        Some(started.elapsed().as_secs_f64() * 1e3)
    }

    /// The ranked candidate a request should explore (see [`route::explore`]), at most once per
    /// [`EXPLORE_EVERY`] per client: one whose transfers cross a link whose goodput (that way) was not
    /// measured within the estimator's half-life, or that runs on a remote tier whose speed was not.
    fn exploration(&self, table: &v1::RouteTable, decision: &Decision) -> Option<usize> {
        let now = Instant::now();
        if self
            .explored
            .lock()
            .is_some_and(|at| now.saturating_duration_since(at) < EXPLORE_EVERY)
        {
            return None;
        }
        let half_life = self.config.estimator.half_life;
        let estimator = self.estimator.lock();
        let fresh = |s: &crate::estimate::Smoothed| {
            s.last()
                .is_some_and(|at| now.saturating_duration_since(at) < half_life)
        };
        let untrusted = |c: &route::Candidate| {
            let Some(plan) = table.plans.iter().find(|p| p.id == c.plan_id) else {
                return false;
            };
            let links = plan.transfers.iter().any(|x| {
                convert::link(x.link, "transfer.link").is_ok_and(|l| {
                    let e = &estimator.links[l.index()];
                    (x.up_bytes as f64 > RTT_PAYLOAD_BYTES && !fresh(&e.up_mbps))
                        || (x.down_bytes as f64 > RTT_PAYLOAD_BYTES && !fresh(&e.down_mbps))
                })
            });
            let tiers = plan.stages.iter().any(|s| {
                convert::tier(s.tier, "stage.tier")
                    .is_ok_and(|t| t != Tier::Device && !fresh(&estimator.speed[t.index()]))
            });
            links || tiers
        };
        let i = route::explore(decision, untrusted)?;
        *self.explored.lock() = Some(now);
        Some(i)
    }

    /// See [`Client::prefetch`].
    async fn prefetch(&self, models: &[String], budget_bytes: u64) -> Result<Prefetched, SdkError> {
        let Some(cache) = self.cache.clone() else {
            return Err(SdkError::InvalidArgument(
                "prefetch needs a stage cache (ClientConfig::cache_dir)".into(),
            ));
        };
        let mut out = Prefetched::default();
        let mut wanted: Vec<(bool, u64, Digest)> = Vec::new();
        for model in models {
            let table = self.routes(model).await?;
            for plan in &table.plans {
                let whole = plan.stages.len() == 1;
                for s in plan
                    .stages
                    .iter()
                    .filter(|s| convert::is_tier(s.tier, Tier::Device))
                {
                    let d = convert::digest(&s.digest, "stage.digest").map_err(|e| {
                        SdkError::Unavailable(format!("route table of \"{model}\": {e}"))
                    })?;
                    match wanted.iter_mut().find(|w| w.2 == d) {
                        Some(w) => w.0 |= whole,
                        None => wanted.push((whole, s.size_bytes, d)),
                    }
                }
            }
        }
        // Whole-model stages first, then the smallest.
        wanted.sort_by_key(|(whole, size, _)| (!whole, *size));
        for (_, size, digest) in wanted {
            if cache.contains(&digest) {
                continue;
            }
            if out.bytes + size > budget_bytes {
                out.skipped.push(digest);
                continue;
            }
            let bytes = self.fetch_stage(&digest).await?;
            out.bytes += bytes.len() as u64;
            self.cache_stage(&digest, bytes).await;
            out.fetched.push(digest);
        }
        Ok(out)
    }

    /// Runs `f` with the situation to cost `table`'s plans in now: the estimator's conditions over the
    /// table's profile, the table's power figures, the app's power state and the measured device stages.
    fn with_situation<R>(&self, table: &v1::RouteTable, f: impl FnOnce(&Situation) -> R) -> R {
        let profile = convert::link_profiles(table);
        let power = convert::device_power(table);
        let state = *self.power.lock();
        let estimator = self.estimator.lock();
        let calibration = convert::tier_calibration(table);
        let conditions = estimator.conditions(&profile, &calibration, Instant::now());
        let measured = |d: &str| estimator.device_stage_ms(d);
        let local = self.local.read();
        let here = |d: &str| local.contains(d);
        f(&Situation {
            conditions: &conditions,
            power: &power,
            state,
            measured: &measured,
            local: &here,
        })
    }

    /// Learns from a finished remote hop: the device's link from the caller's wall time, each later link
    /// from the agents' forward reports, and each tier's speed and queue.
    fn learn(
        &self,
        table: &v1::RouteTable,
        plan: &v1::Plan,
        first: Tier,
        up: u64,
        down: u64,
        hop: &call::HopResult,
    ) -> Vec<HopTiming> {
        let profile = convert::link_profiles(table);
        let now = Instant::now();
        let mut reports: Vec<&v1::StageReport> = hop.reports.iter().collect();
        reports.sort_by_key(|r| r.stage);
        let spent = |r: &v1::StageReport| r.queue_ms + r.compute_ms + r.forward_ms;
        let mut hops = Vec::new();
        let mut estimator = self.estimator.lock();
        if let (Some(link), Some(r0)) = (Link::between(Tier::Device, first), reports.first()) {
            let net = hop.elapsed_ms - spent(r0);
            estimator.link_sample(
                link,
                profile[link.index()],
                net,
                up as f64,
                down as f64,
                now,
            );
            hops.push(HopTiming {
                link,
                up_bytes: up,
                down_bytes: down,
                predicted_ms: 0.0,
                measured_ms: net,
            });
        }
        for pair in reports.windows(2) {
            let (r, next) = (pair[0], pair[1]);
            let (Ok(a), Ok(b)) = (
                convert::tier(r.tier, "report.tier"),
                convert::tier(next.tier, "report.tier"),
            ) else {
                continue;
            };
            if r.forward_ms <= 0.0 {
                continue;
            }
            if let Some(link) = Link::between(a, b) {
                let net = r.forward_ms - spent(next);
                estimator.link_sample(
                    link,
                    profile[link.index()],
                    net,
                    r.forward_up_bytes as f64,
                    r.forward_down_bytes as f64,
                    now,
                );
                hops.push(HopTiming {
                    link,
                    up_bytes: r.forward_up_bytes,
                    down_bytes: r.forward_down_bytes,
                    predicted_ms: 0.0,
                    measured_ms: net,
                });
            }
        }
        for r in &reports {
            let Ok(tier) = convert::tier(r.tier, "report.tier") else {
                continue;
            };
            if let Some(stage) = plan.stages.get(r.stage as usize) {
                estimator.compute_sample(tier, r.compute_ms, profiled_ms(table, stage, tier), now);
            }
            estimator.queue_sample(tier, r.queue_ms, now);
        }
        hops
    }

    /// A channel to an endpoint (a control plane, or an agent serving route tables and blobs).
    fn channel(&self, address: &str) -> Result<Channel, SdkError> {
        self.channels
            .get(address, Expect::Server)
            .map_err(|e| SdkError::InvalidArgument(e.to_string()))
    }

    /// Replaces every cached table with a watch's snapshot: it names every model there is, and its tables win
    /// whatever revisions were cached (the server may run on a new store).
    fn replace_tables(&self, tables: Vec<v1::RouteTable>) {
        let fresh: HashMap<String, Arc<v1::RouteTable>> = tables
            .into_iter()
            .filter(|t| !t.deleted)
            .map(|t| (t.model.clone(), Arc::new(t)))
            .collect();
        for t in fresh.values() {
            self.save_table(t);
        }
        *self.routes.write() = fresh;
    }

    /// Where a model's last route table is kept beside the stage cache (the name hex-encoded: any model name
    /// is a safe file name).
    fn table_path(&self, model: &str) -> Option<PathBuf> {
        let hex: String = model.bytes().map(|b| format!("{b:02x}")).collect();
        Some(
            self.cache
                .as_ref()?
                .root()
                .join("tables")
                .join(format!("{hex}.pb")),
        )
    }

    /// Keeps `table` beside the stage cache, so the device can still route offline (best effort, logged;
    /// written only when its revision changed, through a temporary file and a rename).
    fn save_table(&self, table: &v1::RouteTable) {
        let Some(path) = self.table_path(&table.model) else {
            return;
        };
        if self.saved.lock().get(&table.model) == Some(&table.revision) {
            return;
        }
        let bytes = prost::Message::encode_to_vec(table);
        let n = next_request_id();
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                let temp = path.with_extension(format!("tmp-{n}"));
                std::fs::write(&temp, &bytes).and_then(|()| std::fs::rename(&temp, &path))
            });
        match written {
            Ok(()) => {
                self.saved
                    .lock()
                    .insert(table.model.clone(), table.revision);
            }
            Err(e) => {
                tracing::warn!(model = %table.model, error = %e, "cannot save the route table beside the stage cache")
            }
        }
    }

    /// The route table saved beside the stage cache for `model`, if any and decodable.
    fn saved_table(&self, model: &str) -> Option<v1::RouteTable> {
        let path = self.table_path(model)?;
        let bytes = std::fs::read(&path).ok()?;
        match <v1::RouteTable as prost::Message>::decode(bytes.as_slice()) {
            Ok(t) if t.model == model => Some(t),
            Ok(_) | Err(_) => {
                tracing::warn!(model, path = %path.display(), "the saved route table does not decode; ignored");
                None
            }
        }
    }

    /// Forgets a deleted model's saved table.
    fn forget_table(&self, model: &str) {
        if let Some(path) = self.table_path(model) {
            let _ = std::fs::remove_file(path);
            self.saved.lock().remove(model);
        }
    }

    /// Caches one table, unless an older revision of what is cached (within one watch, revisions only grow).
    fn store_table(&self, table: v1::RouteTable) {
        let mut routes = self.routes.write();
        if table.deleted {
            routes.remove(&table.model);
            drop(routes);
            self.forget_table(&table.model);
            return;
        }
        let newer = routes
            .get(&table.model)
            .is_none_or(|old| old.revision <= table.revision || table.revision == 0);
        if newer {
            let table = Arc::new(table);
            routes.insert(table.model.clone(), table.clone());
            drop(routes);
            self.save_table(&table);
        }
    }

    /// A device stage, loaded: from memory, else from the stage cache, else fetched from any endpoint (and
    /// stored in the cache). A corrupt cached copy is deleted, logged and fetched again; a cache that cannot
    /// be written only costs the next process a fetch.
    async fn device_stage(&self, digest: &Digest) -> Result<Arc<dyn LoadedStage>, SdkError> {
        if let Some(s) = self.stages.lock().get(digest) {
            return Ok(s.clone());
        }
        let bytes = match self.cached_stage(digest).await {
            Some(bytes) => bytes,
            None => {
                let bytes = self.fetch_stage(digest).await?;
                self.cache_stage(digest, bytes.clone()).await;
                bytes
            }
        };
        let stage = tokio::task::spawn_blocking(move || TractBackend.load(&bytes, &HashMap::new()))
            .await
            .map_err(|e| SdkError::Local(format!("loader task failed: {e}")))?
            .map_err(|e| SdkError::Local(format!("device stage {digest}: {e}")))?;
        let stage: Arc<dyn LoadedStage> = stage.into();
        self.stages.lock().insert(digest.clone(), stage.clone());
        self.local.write().insert(digest.to_string());
        Ok(stage)
    }

    /// A stage's bytes from the stage cache, if there and intact.
    async fn cached_stage(&self, digest: &Digest) -> Option<bytes::Bytes> {
        let cache = self.cache.clone()?;
        let d = digest.clone();
        match tokio::task::spawn_blocking(move || cache.get(&d)).await {
            Ok(Ok(found)) => found,
            Ok(Err(BlobError::Corrupt(m))) => {
                tracing::warn!(%digest, actual = %m.actual, "cached device stage is corrupt; deleted, fetching it again");
                self.local.write().remove(digest.as_str());
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(%digest, error = %e, "cannot read the stage cache; fetching the stage");
                None
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "stage cache task failed; fetching the stage");
                None
            }
        }
    }

    /// Stores a fetched stage in the stage cache (best effort, logged), and forgets what it evicted.
    async fn cache_stage(&self, digest: &Digest, bytes: bytes::Bytes) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        let d = digest.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let stored = cache.put(&d, &bytes)?;
            // What is in the cache now, evictions by this or other processes included.
            let here = cache.list()?;
            Ok::<_, BlobError>((stored, here))
        })
        .await;
        match stored {
            Ok(Ok((stored, here))) => {
                if !stored {
                    tracing::info!(%digest, "device stage is larger than the whole stage cache; not cached");
                }
                let mut local = self.local.write();
                let loaded = self.stages.lock();
                local.retain(|d| loaded.keys().any(|k| k.as_str() == d));
                local.extend(here.into_iter().map(|b| b.digest.to_string()));
            }
            Ok(Err(e)) => {
                tracing::warn!(%digest, error = %e, "cannot store the device stage in the cache")
            }
            Err(e) => tracing::warn!(%digest, error = %e, "stage cache task failed"),
        }
    }

    /// A stage's bytes from the first endpoint that sends them.
    async fn fetch_stage(&self, digest: &Digest) -> Result<bytes::Bytes, SdkError> {
        let mut last = String::new();
        for endpoint in &self.config.endpoints {
            let channel = self.channel(endpoint)?;
            match call::fetch_blob(channel, digest).await {
                Ok(bytes) => return Ok(bytes::Bytes::from(bytes)),
                Err(s) => last = format!("{endpoint}: {}", s.message()),
            }
        }
        Err(SdkError::Unavailable(format!(
            "device stage {digest} is not here and no endpoint could send it ({last})"
        )))
    }

    async fn run_plan(
        &self,
        table: &v1::RouteTable,
        plan: &v1::Plan,
        inputs: &HashMap<String, TensorData>,
        constraints: &Constraints,
        request_id: &str,
        deadline: Instant,
    ) -> Result<
        (
            HashMap<String, TensorData>,
            Vec<StageTiming>,
            Vec<HopTiming>,
        ),
        SdkError,
    > {
        let mut values: HashMap<String, TensorData> = inputs.clone();
        let mut timings = Vec::new();
        let mut outputs = HashMap::new();
        let mut next = 0;
        while let Some(stage) = plan.stages.get(next) {
            if !convert::is_tier(stage.tier, Tier::Device) {
                break;
            }
            let digest = convert::digest(&stage.digest, "stage.digest").map_err(|e| {
                SdkError::Unavailable(format!("route table of \"{}\": {e}", table.model))
            })?;
            let loaded = self.device_stage(&digest).await?;
            let feed: HashMap<String, TensorData> = stage
                .inputs
                .iter()
                .filter_map(|n| values.get(n).map(|t| (n.clone(), t.clone())))
                .collect();
            let started = Instant::now();
            let compute = tracing::info_span!(
                "compute",
                otel.name = format!("stage {}", stage.index),
                model = %table.model,
                plan = %plan.id,
                stage = i64::from(stage.index),
                tier = "device",
                bytes_in = strata_proto::trace::int(feed.values().map(|t| t.data.len() as u64).sum()),
                predicted_ms = stage.predicted_ms,
                measured_ms = tracing::field::Empty,
            );
            let produced = tokio::task::spawn_blocking(move || loaded.run(&feed))
                .instrument(compute.clone())
                .await
                .map_err(|e| SdkError::Local(format!("stage task failed: {e}")))?
                .map_err(|e| SdkError::Local(format!("device stage {}: {e}", stage.index)))?;
            let compute_ms = started.elapsed().as_secs_f64() * 1e3;
            compute.record("measured_ms", compute_ms);
            self.device_sample(table, stage, compute_ms);
            timings.push(StageTiming {
                index: stage.index,
                tier: "device",
                node: None,
                queue_ms: 0.0,
                compute_ms,
                predicted_ms: stage.predicted_ms,
                batch: 1,
            });
            for (name, t) in produced {
                if table.outputs.contains(&name) {
                    outputs.insert(name.clone(), t.clone());
                }
                values.insert(name, t);
            }
            next += 1;
        }
        let Some(first_remote) = plan.stages.get(next) else {
            return Ok((outputs, timings, Vec::new()));
        };
        let later: BTreeSet<&String> = plan.stages[next..].iter().flat_map(|s| &s.inputs).collect();
        let carry: Vec<(String, TensorData)> = values
            .into_iter()
            .filter(|(n, _)| later.contains(n))
            .collect();
        self.check_privacy(table, plan, constraints, &carry)?;
        let up_bytes: u64 = carry.iter().map(|(_, t)| t.data.len() as u64).sum();
        let header = v1::InferHeader {
            model: table.model.clone(),
            version: table.version,
            plan_id: plan.id.clone(),
            stage: first_remote.index,
            request_id: request_id.to_string(),
        };
        let chunks = chunks_of(carry);
        let hop = call::Hop {
            balancer: &self.balancer,
            channels: &self.channels,
            retry: self.config.retry,
            max_response_bytes: self.config.max_response_bytes,
        };
        match hop
            .run(table, first_remote, header, &chunks, Some(deadline))
            .await
        {
            Ok(hop) => {
                let down_bytes: u64 = hop.tensors.iter().map(|(_, t)| t.data.len() as u64).sum();
                let first_tier =
                    convert::tier(first_remote.tier, "stage.tier").unwrap_or(Tier::Edge);
                let hops = self.learn(table, plan, first_tier, up_bytes, down_bytes, &hop);
                let mut reports = hop.reports;
                reports.sort_by_key(|r| r.stage);
                timings.extend(reports.into_iter().map(|r| {
                    StageTiming {
                        index: r.stage,
                        tier: convert::tier_name(r.tier),
                        node: Some(r.node_id),
                        queue_ms: r.queue_ms,
                        compute_ms: r.compute_ms,
                        predicted_ms: plan
                            .stages
                            .get(r.stage as usize)
                            .map_or(0.0, |s| s.predicted_ms),
                        batch: r.batch.max(1),
                    }
                }));
                outputs.extend(hop.tensors);
                Ok((outputs, timings, hops))
            }
            Err(HopError::Refused { status, .. }) => Err(SdkError::from_status(status)),
            Err(HopError::Exhausted {
                last: Some(status), ..
            }) => Err(SdkError::from_status(status)),
            Err(HopError::Exhausted { last: None, .. }) => Err(SdkError::Unavailable(format!(
                "no agent is ready for stage {} of plan {}",
                first_remote.index, plan.id
            ))),
            Err(HopError::DeadlineExceeded) => Err(SdkError::DeadlineExceeded(
                "the request's deadline passed".into(),
            )),
            Err(e @ (HopError::Channel(_) | HopError::BadStage { .. })) => {
                Err(SdkError::InvalidArgument(e.to_string()))
            }
        }
    }

    /// Defence in depth: refuse to send what the privacy levels forbid, whatever the route table says.
    fn check_privacy(
        &self,
        table: &v1::RouteTable,
        plan: &v1::Plan,
        constraints: &Constraints,
        carry: &[(String, TensorData)],
    ) -> Result<(), SdkError> {
        let levels = [Some(route::model_level(table)), constraints.privacy];
        for level in levels.into_iter().flatten() {
            let violation = match level {
                Privacy::Device => Some("nothing may leave the device".to_string()),
                Privacy::Features => carry
                    .iter()
                    .find(|(n, _)| table.inputs.iter().any(|i| &i.name == n))
                    .map(|(n, _)| format!("raw input \"{n}\" would leave the device")),
                Privacy::Edge => plan
                    .stages
                    .iter()
                    .any(|s| convert::is_tier(s.tier, Tier::Cloud))
                    .then(|| "a stage would run in the cloud".to_string()),
                Privacy::Open => None,
            };
            if let Some(why) = violation {
                return Err(SdkError::NoPlan(format!(
                    "plan {} breaks privacy {level}: {why}; refusing to send",
                    plan.id
                )));
            }
        }
        Ok(())
    }
}

/// [`ClientConfig::prefetch`]: waits for charging if asked to, then prefetches, retrying failures with a
/// backoff (1 s doubling to 30 s) until it succeeds or the client is dropped.
async fn prefetch_in_background(inner: std::sync::Weak<Inner>) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 1);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let config = &strong.config;
        if config.prefetch_when_charging && !strong.power.lock().charging {
            drop(strong);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let (models, budget) = (config.prefetch.clone(), config.prefetch_budget_bytes);
        match strong.prefetch(&models, budget).await {
            Ok(done) => {
                tracing::info!(
                    fetched = done.fetched.len(),
                    bytes = done.bytes,
                    over_budget = done.skipped.len(),
                    "device stages prefetched"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "prefetch failed; retrying");
                drop(strong);
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

/// Keeps route tables current for as long as the client lives: watch any endpoint that answers, and on any
/// failure (a refused call, a broken or ended stream) note why, back off (500 ms growing to 5 s while
/// endpoints keep failing) and watch the next endpoint. It never gives up.
async fn watch_routes(inner: std::sync::Weak<Inner>) {
    let Some(endpoints) = inner.upgrade().map(|i| i.config.endpoints.clone()) else {
        return;
    };
    let mut backoff = Backoff::new(
        Duration::from_millis(500),
        Duration::from_secs(5),
        endpoints.len(),
    );
    for endpoint in endpoints.iter().cycle() {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // Every endpoint was checked when the client was made, so this cannot fail; if it did, the next
        // endpoint is tried like after any failure.
        let channel = strong.channel(endpoint);
        drop(strong);
        let mut connected_at = None;
        let why = match channel {
            Err(e) => e.to_string(),
            Ok(channel) => {
                let mut client = RoutesClient::new(channel);
                let watch = client.watch_routes(v1::WatchRoutesRequest { models: vec![] });
                match tokio::time::timeout(Duration::from_secs(5), watch).await {
                    Err(_) => "the watch did not open within 5 s".to_string(),
                    Ok(Err(status)) => format!("watch refused: {}", status.message()),
                    Ok(Ok(response)) => {
                        let mut stream = response.into_inner();
                        match inner.upgrade() {
                            Some(strong) => strong.watching.store(true, Ordering::Relaxed),
                            None => return,
                        }
                        connected_at = Some(Instant::now());
                        tracing::debug!(%endpoint, "following route tables");
                        // The tables of the snapshot in progress, if one is.
                        let mut snapshot: Option<Vec<v1::RouteTable>> = None;
                        let mut last_was_snapshot = false;
                        loop {
                            match stream.next().await {
                                Some(Ok(update)) => {
                                    let Some(strong) = inner.upgrade() else {
                                        return;
                                    };
                                    if update.snapshot_end {
                                        strong.replace_tables(snapshot.take().unwrap_or_default());
                                        last_was_snapshot = false;
                                    } else if let Some(table) = update.table {
                                        if update.snapshot {
                                            // A snapshot message after any other kind begins a new one.
                                            if !last_was_snapshot {
                                                snapshot = Some(Vec::new());
                                            }
                                            snapshot.get_or_insert_with(Vec::new).push(table);
                                        } else {
                                            strong.store_table(table);
                                        }
                                        last_was_snapshot = update.snapshot;
                                    }
                                }
                                Some(Err(status)) => {
                                    break format!("watch broke: {}", status.message());
                                }
                                None => break "the endpoint ended the watch".to_string(),
                            }
                        }
                    }
                }
            }
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let was = strong.watching.swap(false, Ordering::Relaxed);
        *strong.watch_error.lock() = format!("{endpoint}: {why}");
        drop(strong);
        if was {
            tracing::warn!(%endpoint, error = %why, "route watch lost; using cached routes and watching again");
            // Only a watch that lasted resets the backoff (an endpoint that breaks every watch at once
            // keeps backing off).
            if connected_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(10)) {
                backoff.succeeded();
            }
        } else {
            tracing::debug!(%endpoint, error = %why, "route watch failed");
        }
        tokio::time::sleep(backoff.failed()).await;
    }
}
