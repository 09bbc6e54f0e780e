//! The agent's gRPC services: `Inference` (run a stage, forward to the next, return model outputs),
//! `Routes` (route tables and blobs from the agent's cache, so devices keep working while the control plane is
//! down), and the Open Inference Protocol's `inference.GRPCInferenceService` ([`OipService`]: a request
//! entering a plan at this agent, through the same stage run and forwarding).

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use strata_core::{Digest, TensorData};
use strata_proto::call::{self, HopError, chunks_of};
use strata_proto::convert;
use strata_proto::framing::{FrameError, FrameLimits};
use strata_proto::v1::{self, inference_server::Inference, routes_server::Routes};
use strata_proto::{TensorAssembler, tensor_chunks};
use strata_runtime::RuntimeError;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::agent::{Agent, RouteEvent};
use crate::metrics::RequestLabels;

mod intake;
mod oip;

use intake::Intake;
pub use intake::Refusal;
pub use oip::OipService;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The agent's services.
#[derive(Clone)]
pub struct AgentService {
    agent: Arc<Agent>,
    stopping: strata_proto::Stopping,
}

impl AgentService {
    /// Wraps an agent; route watches end when `stopping` fires.
    pub fn new(agent: Arc<Agent>, stopping: strata_proto::Stopping) -> Self {
        AgentService { agent, stopping }
    }
}

/// Decrements the in-flight count when a request ends, however it ends.
struct Admitted<'a>(&'a Agent);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One stage of one request, as [`AgentService::run_stage`] runs it.
struct StageRun<'a> {
    table: &'a v1::RouteTable,
    plan: &'a v1::Plan,
    stage: &'a v1::Stage,
    header: &'a v1::InferHeader,
    digest: Digest,
    loaded: crate::stages::Stage,
}

/// The longest request-time cap honoured (so that adding it to the clock cannot overflow): a year.
const LONGEST_CAP: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a request must be answered by: the client's deadline (`grpc-timeout`), or this agent's cap
/// ([`crate::AgentConfig::max_request_time`]) when the client set none or a later one. Either way it is the
/// deadline passed on to the next hop, so downstream agents see the remaining budget.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    /// The cap, when it (and not the client's deadline) set `at`.
    cap: Option<Duration>,
}

impl Deadline {
    /// The sooner of `client` and `now + cap`.
    fn new(client: Option<Instant>, cap: Duration, now: Instant) -> Deadline {
        let cap = cap.min(LONGEST_CAP);
        let capped = now + cap;
        match client {
            Some(at) if at <= capped => Deadline { at, cap: None },
            _ => Deadline {
                at: capped,
                cap: Some(cap),
            },
        }
    }

    /// The time left, or `DEADLINE_EXCEEDED` when none is.
    fn remaining(&self, context: &str) -> Result<Duration, Status> {
        match self.at.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(self.exceeded(context)),
        }
    }

    /// The answer once it has passed; `context` says where (" while queued at agent X"). When the cap set it,
    /// the message names the limit and its flag.
    fn exceeded(&self, context: &str) -> Status {
        match self.cap {
            None => Status::deadline_exceeded(format!("the request's deadline passed{context}")),
            Some(cap) => Status::deadline_exceeded(format!(
                "the request ran past this agent's limit of {} ms per request{context} (--max-request-ms)",
                cap.as_millis()
            )),
        }
    }
}

/// The answer to a tensor stream the assembler refused: `RESOURCE_EXHAUSTED` for a broken limit (with the
/// flags that set it), `INVALID_ARGUMENT` for a malformed stream.
fn frame_status(e: FrameError) -> Status {
    if e.is_limit() {
        strata_proto::error::status(
            tonic::Code::ResourceExhausted,
            format!(
                "{e} (this agent's limits: --max-request-mib, --max-tensor-mib, --max-request-chunks)"
            ),
            strata_proto::error::ErrorReason::RequestTooLarge,
        )
    } else {
        Status::invalid_argument(e.to_string())
    }
}

fn runtime_status(stage: u32, e: RuntimeError) -> Status {
    let message = format!("stage {stage}: {e}");
    match e {
        RuntimeError::Run(_) | RuntimeError::Load(_) => Status::internal(message),
        // This agent cannot run it (a backend's library or provider is missing): another agent may.
        RuntimeError::Unavailable { .. } => Status::unavailable(message),
        _ => Status::invalid_argument(message),
    }
}

impl AgentService {
    /// Refuses route requests until the agent holds a control plane's snapshot: before that it knows no
    /// tables, and an answer would tell devices that models they use do not exist.
    fn routes_loaded(&self) -> Result<(), Status> {
        if self.agent.routes_loaded.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(Status::unavailable(format!(
                "agent {} has no route tables yet (no control plane reached since it started)",
                self.agent.node_id()
            )))
        }
    }

    /// Answers a refusal of a request for `model`; a privacy denial is counted and logged.
    fn refuse(&self, refusal: Refusal, model: &str) -> Status {
        if refusal.is_denial() {
            self.agent.denied.fetch_add(1, Ordering::Relaxed);
            self.agent.metrics.denied(model);
            tracing::warn!(error = %refusal, "request denied: it would break its model's privacy level");
        }
        refusal.status()
    }

    /// A blob this agent does not cache, from the control planes (then cached here).
    async fn fetch_for_caller(&self, digest: &Digest) -> Result<bytes::Bytes, Status> {
        let agent = &self.agent;
        for address in &agent.config.control_planes {
            let Ok(channel) = agent.channel(address) else {
                continue;
            };
            match call::fetch_blob(channel, digest).await {
                Ok(b) => {
                    let b = bytes::Bytes::from(b);
                    if let Err(e) = agent.stages.put_blob(digest, b.clone()).await {
                        tracing::warn!(%digest, error = %e, "cannot cache a fetched blob");
                    }
                    return Ok(b);
                }
                Err(status) => {
                    tracing::debug!(%digest, control_plane = %address, error = %status.message(), "blob fetch failed")
                }
            }
        }
        Err(Status::not_found(format!(
            "no blob with digest {digest} here or at the control plane"
        )))
    }

    #[tracing::instrument(skip_all, fields(
        otel.name = format!("stage {}", header.stage),
        model = %header.model,
        version = strata_proto::trace::int(header.version),
        plan = %header.plan_id,
        stage = i64::from(header.stage),
        request = %header.request_id,
        tier = %self.agent.config.tier,
        node = tracing::field::Empty,
        bytes_in = tracing::field::Empty,
        bytes_out = tracing::field::Empty,
        predicted_ms = tracing::field::Empty,
        queue_ms = tracing::field::Empty,
        compute_ms = tracing::field::Empty,
        batch = tracing::field::Empty,
    ))]
    async fn run_request(
        &self,
        header: v1::InferHeader,
        labels: &RequestLabels,
        mut frames: Streaming<v1::InferRequest>,
        deadline: Deadline,
    ) -> Result<Vec<v1::InferResponse>, Status> {
        let agent = &self.agent;
        let node_id = agent.node_id();
        let span = tracing::Span::current();
        span.record("node", node_id.as_str());
        let table = agent.table_for(&header.model, header.version).map_err(|current| {
            match current {
                None => Status::not_found(format!(
                    "agent {node_id} has no routes for model \"{}\"",
                    header.model
                )),
                Some(version) => Status::failed_precondition(format!(
                    "model \"{}\" is at version {version} here, the request is for version {}; refresh routes",
                    header.model, header.version
                )),
            }
        })?;
        // Before anything else about the request: whether anything of this model may reach this tier.
        let privacy = intake::model_level(&table, agent.config.tier, &node_id)
            .map_err(|r| self.refuse(r, &header.model))?;
        let plan = table
            .plans
            .iter()
            .find(|p| p.id == header.plan_id)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "model \"{}\" has no plan \"{}\" (refresh routes)",
                    header.model, header.plan_id
                ))
            })?;
        let stage = plan.stages.get(header.stage as usize).ok_or_else(|| {
            Status::invalid_argument(format!(
                "plan \"{}\" has {} stages; there is no stage {}",
                plan.id,
                plan.stages.len(),
                header.stage
            ))
        })?;
        if !convert::is_tier(stage.tier, agent.config.tier) {
            return Err(Status::failed_precondition(format!(
                "stage {} of plan \"{}\" runs on the {} tier; agent {node_id} is {}",
                stage.index,
                plan.id,
                convert::tier_name(stage.tier),
                agent.config.tier
            )));
        }
        let digest = convert::digest(&stage.digest, "stage.digest").map_err(|e| {
            Status::failed_precondition(format!("route table of \"{}\": {e}", header.model))
        })?;
        let loaded = agent.stages.get(&digest).ok_or_else(|| {
            Status::failed_precondition(format!(
                "agent {node_id} does not hold stage {} of plan \"{}\" (digest {})",
                stage.index, plan.id, stage.digest
            ))
        })?;

        let _admitted = self.admit(&header.model)?;

        // Each tensor's name, dtype and shape are checked on its header, and the limits before its data is kept.
        let intake = Intake::new(&table, plan, header.stage as usize, privacy, &node_id);
        let mut assembler = TensorAssembler::with_limits(FrameLimits {
            max_total_bytes: agent.config.max_request_bytes,
            max_tensor_bytes: agent.config.max_tensor_bytes,
            max_chunks: agent.config.max_request_chunks,
        });
        while let Some(message) = frames.next().await {
            match message?.frame {
                Some(v1::infer_request::Frame::Tensor(chunk)) => {
                    if let Some(h) = &chunk.header {
                        intake.admit(h).map_err(|r| self.refuse(r, &header.model))?;
                    }
                    assembler.push(chunk).map_err(frame_status)?;
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "only tensor chunks may follow the header",
                    ));
                }
            }
        }
        let values: HashMap<String, TensorData> = assembler
            .finish()
            .map_err(frame_status)?
            .into_iter()
            .collect();
        let run = StageRun {
            table: &table,
            plan,
            stage,
            header: &header,
            digest,
            loaded,
        };
        self.run_stage(run, values, labels, deadline).await
    }

    /// Admits one more request, or answers `RESOURCE_EXHAUSTED` when the agent's slots and queue are full
    /// (a clear refusal rather than a queue without bound). The request counts as in flight until the guard
    /// drops.
    fn admit(&self, model: &str) -> Result<Admitted<'_>, Status> {
        let agent = &*self.agent;
        let limit = agent.config.slots + agent.config.queue;
        if agent.in_flight.fetch_add(1, Ordering::Relaxed) >= limit {
            agent.in_flight.fetch_sub(1, Ordering::Relaxed);
            agent.rejected.fetch_add(1, Ordering::Relaxed);
            agent.metrics.shed(model);
            return Err(Status::resource_exhausted(format!(
                "agent {} is at capacity ({} slots, {} queued); retry on another agent",
                agent.node_id(),
                agent.config.slots,
                agent.config.queue
            )));
        }
        Ok(Admitted(agent))
    }

    /// Runs `run.stage` of an admitted request on the tensors it brought (`values`: what this stage and the
    /// later ones read), forwards what the later stages read to an agent of the next stage, and answers the
    /// model outputs (tensor frames) with one report per stage. Both entries of a request end here: a
    /// `strata.v1.Inference` stream, and an Open Inference Protocol call ([`oip`]).
    async fn run_stage(
        &self,
        run: StageRun<'_>,
        mut values: HashMap<String, TensorData>,
        labels: &RequestLabels,
        deadline: Deadline,
    ) -> Result<Vec<v1::InferResponse>, Status> {
        let StageRun {
            table,
            plan,
            stage,
            header,
            digest,
            loaded,
        } = run;
        let agent = &self.agent;
        let node_id = agent.node_id();
        let span = tracing::Span::current();
        agent.received.lock().record(values.keys());
        let received: u64 = values.values().map(|t| t.data.len() as u64).sum();
        span.record("bytes_in", strata_proto::trace::int(received));
        span.record("predicted_ms", stage.predicted_ms);
        agent.metrics.bytes(&header.model, "received", received);
        let mut inputs = HashMap::new();
        for name in &stage.inputs {
            let t = values.get(name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "stage {} needs tensor \"{name}\", which the request did not carry",
                    stage.index
                ))
            })?;
            inputs.insert(name.clone(), t.clone());
        }

        let queued_context = format!(" while queued at agent {node_id}");
        let batching = crate::batcher::Settings::of(table)
            .and_then(|settings| Some((settings, agent.stages.batched(&digest)?)));
        let (outputs, queue_ms, compute_ms, batch) = match batching {
            // Batched: the batcher queues, runs and times it (and records the run).
            Some((settings, batched)) => {
                let answer = {
                    let mut batchers = agent.batchers.lock();
                    let fresh = || {
                        crate::batcher::Handle::start(
                            agent,
                            digest.clone(),
                            settings,
                            loaded.clone(),
                            batched.clone(),
                        )
                    };
                    let handle = batchers
                        .entry((digest.clone(), settings))
                        .or_insert_with(&fresh);
                    // A stage loaded again gets a new batcher.
                    if !handle.runs(&batched) {
                        *handle = fresh();
                    }
                    handle.submit(inputs, deadline.at)
                };
                agent.queued.fetch_add(1, Ordering::Relaxed);
                let waited = match deadline.remaining(&queued_context) {
                    Ok(left) => tokio::time::timeout(left, answer)
                        .instrument(tracing::info_span!("queue", node = %node_id, batched = true))
                        .await
                        .map_err(|_| deadline.exceeded(&queued_context)),
                    Err(status) => Err(status),
                };
                agent.queued.fetch_sub(1, Ordering::Relaxed);
                let ran = waited?
                    .map_err(|_| Status::unavailable("agent is shutting down"))?
                    .map_err(|e| runtime_status(stage.index, e))?;
                span.record("batch", ran.batch as i64);
                (ran.outputs, ran.queue_ms, ran.compute_ms, ran.batch)
            }
            None => {
                let queued_at = Instant::now();
                agent.queued.fetch_add(1, Ordering::Relaxed);
                let permit = match deadline.remaining(&queued_context) {
                    Ok(left) => tokio::time::timeout(left, agent.slots.acquire())
                        .instrument(tracing::info_span!("queue", node = %node_id))
                        .await
                        .map_err(|_| deadline.exceeded(&queued_context)),
                    Err(status) => Err(status),
                };
                agent.queued.fetch_sub(1, Ordering::Relaxed);
                let _permit = permit?.map_err(|_| Status::unavailable("agent is shutting down"))?;
                let queue_ms = queued_at.elapsed().as_secs_f64() * 1e3;

                let started = Instant::now();
                let compute = tracing::info_span!(
                    "compute",
                    stage = i64::from(stage.index),
                    predicted_ms = stage.predicted_ms,
                    measured_ms = tracing::field::Empty,
                );
                let outputs = tokio::task::spawn_blocking(move || loaded.run(&inputs))
                    .instrument(compute.clone())
                    .await
                    .map_err(|e| Status::internal(format!("stage task failed: {e}")))?
                    .map_err(|e| runtime_status(stage.index, e))?;
                let compute_ms = started.elapsed().as_secs_f64() * 1e3;
                compute.record("measured_ms", compute_ms);
                drop(_permit);
                agent.stages.record_run(&digest, compute_ms);
                (outputs, queue_ms, compute_ms, 1)
            }
        };
        span.record("queue_ms", queue_ms);
        span.record("compute_ms", compute_ms);
        agent.metrics.ran(labels, queue_ms, compute_ms);
        {
            let mut recent = agent.recent_ms.lock();
            *recent = if *recent == 0.0 {
                compute_ms
            } else {
                0.8 * *recent + 0.2 * compute_ms
            };
        }

        let mut response = Vec::new();
        let mut answered = 0u64;
        for (name, t) in &outputs {
            if table.outputs.contains(name) {
                answered += t.data.len() as u64;
                for chunk in tensor_chunks(name, t.clone()) {
                    response.push(v1::InferResponse {
                        frame: Some(v1::infer_response::Frame::Tensor(chunk)),
                    });
                }
            }
        }
        values.extend(outputs);

        let mut forward = (0.0, 0u64, 0u64);
        if let Some(next) = plan.stages.get(header.stage as usize + 1) {
            let later: BTreeSet<&String> = plan.stages[header.stage as usize + 1..]
                .iter()
                .flat_map(|s| &s.inputs)
                .collect();
            let carry: Vec<(String, TensorData)> = values
                .into_iter()
                .filter(|(name, _)| later.contains(name))
                .collect();
            let next_header = v1::InferHeader {
                stage: next.index,
                ..header.clone()
            };
            let up_bytes: u64 = carry.iter().map(|(_, t)| t.data.len() as u64).sum();
            let hop = self
                .forward(table, next, next_header, chunks_of(carry), deadline)
                .await?;
            let down_bytes: u64 = hop.tensors.iter().map(|(_, t)| t.data.len() as u64).sum();
            // The call that succeeded only: failed attempts on other agents are not network time.
            forward = (hop.elapsed_ms, up_bytes, down_bytes);
            answered += down_bytes;
            agent
                .metrics
                .forwarded(&header.model, next.index, hop.elapsed_ms);
            agent.metrics.bytes(&header.model, "forwarded", up_bytes);
            for (name, t) in hop.tensors {
                for chunk in tensor_chunks(&name, t) {
                    response.push(v1::InferResponse {
                        frame: Some(v1::infer_response::Frame::Tensor(chunk)),
                    });
                }
            }
            for report in hop.reports {
                response.push(v1::InferResponse {
                    frame: Some(v1::infer_response::Frame::Report(report)),
                });
            }
        }
        response.push(v1::InferResponse {
            frame: Some(v1::infer_response::Frame::Report(v1::StageReport {
                stage: stage.index,
                tier: stage.tier,
                node_id,
                queue_ms,
                compute_ms,
                load: Some(agent.load()),
                forward_ms: forward.0,
                forward_up_bytes: forward.1,
                forward_down_bytes: forward.2,
                batch: batch as u32,
            })),
        });
        agent.served.fetch_add(1, Ordering::Relaxed);
        agent.metrics.bytes(&header.model, "answered", answered);
        span.record("bytes_out", strata_proto::trace::int(answered));
        Ok(response)
    }

    /// Reads the header and runs the request, all under the client's deadline capped by this agent's: the
    /// whole request (its header and chunks too) runs under it, so a stalled stream cannot hold an admission
    /// slot for ever. `labels` is set once the header is read.
    async fn infer_within_deadline(
        &self,
        request: Request<Streaming<v1::InferRequest>>,
        labels: &mut Option<RequestLabels>,
    ) -> Result<Vec<v1::InferResponse>, Status> {
        let deadline = Deadline::new(
            strata_proto::deadline_of(request.metadata()),
            self.agent.config.max_request_time,
            Instant::now(),
        );
        let context = format!(" at agent {}", self.agent.node_id());
        deadline.remaining(&context)?;
        let mut frames = request.into_inner();
        let work = async move {
            let header = match frames.next().await {
                Some(Ok(v1::InferRequest {
                    frame: Some(v1::infer_request::Frame::Header(h)),
                })) => h,
                Some(Err(e)) => return Err(e),
                _ => {
                    return Err(Status::invalid_argument(
                        "the first message of Infer must be its header",
                    ));
                }
            };
            let labels = labels.insert(RequestLabels {
                model: header.model.clone(),
                plan: header.plan_id.clone(),
                stage: header.stage.to_string(),
            });
            self.run_request(header, labels, frames, deadline).await
        };
        tokio::time::timeout_at(deadline.at.into(), work)
            .await
            .map_err(|_| {
                let status = deadline.exceeded(&context);
                if deadline.cap.is_some() {
                    tracing::warn!(error = %status.message(), "request ended at this agent's time limit");
                }
                status
            })?
    }

    /// Sends the carried tensors to an agent of the next stage, trying each candidate once.
    async fn forward(
        &self,
        table: &v1::RouteTable,
        stage: &v1::Stage,
        header: v1::InferHeader,
        chunks: Vec<v1::TensorChunk>,
        deadline: Deadline,
    ) -> Result<call::HopResult, Status> {
        let agent = &self.agent;
        let hop = call::Hop {
            balancer: &agent.balancer,
            channels: &agent.channels,
            retry: agent.config.retry,
            max_response_bytes: agent.config.max_request_bytes,
        };
        hop.run(table, stage, header, &chunks, Some(deadline.at))
            .await
            .map_err(|e| match e {
                // The next agent's refusal (a bad input, a passed deadline) is this request's answer.
                HopError::Refused { status, .. } => status,
                HopError::DeadlineExceeded => deadline.exceeded(&format!(
                    " before an agent of stage {} answered",
                    stage.index
                )),
                HopError::Exhausted { .. } => Status::unavailable(e.to_string()),
                HopError::Channel(_) | HopError::BadStage { .. } => Status::internal(e.to_string()),
            })
    }
}

#[tonic::async_trait]
impl Inference for AgentService {
    type InferStream = BoxStream<v1::InferResponse>;

    async fn infer(
        &self,
        request: Request<Streaming<v1::InferRequest>>,
    ) -> Result<Response<Self::InferStream>, Status> {
        let arrived = Instant::now();
        let mut labels: Option<RequestLabels> = None;
        let result = self.infer_within_deadline(request, &mut labels).await;
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.agent
            .metrics
            .finished(labels.as_ref(), code, arrived.elapsed());
        let response = result?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            response.into_iter().map(Ok),
        ))))
    }

    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::AgentStatus>, Status> {
        let agent = &self.agent;
        let session = agent.control_session();
        Ok(Response::new(v1::AgentStatus {
            node_id: agent.node_id(),
            tier: v1::Tier::from(agent.config.tier) as i32,
            load: Some(agent.load()),
            stages: agent
                .stages
                .ready()
                .iter()
                .map(ToString::to_string)
                .collect(),
            requests_served: agent.served.load(Ordering::Relaxed),
            requests_rejected: agent.rejected.load(Ordering::Relaxed),
            requests_denied: agent.denied.load(Ordering::Relaxed),
            received_tensors: agent.received.lock().names(),
            control_plane_connected: session.is_ok(),
            control_plane_error: session.err().unwrap_or_default(),
            backends: agent.stages.backends(),
        }))
    }
}

#[tonic::async_trait]
impl Routes for AgentService {
    async fn get_routes(
        &self,
        request: Request<v1::GetRoutesRequest>,
    ) -> Result<Response<v1::RouteTable>, Status> {
        self.routes_loaded()?;
        let model = request.into_inner().model;
        let routes = self.agent.routes.read();
        match routes.get(&model) {
            Some(t) => Ok(Response::new(t.clone())),
            None => {
                let mut known: Vec<&String> = routes.keys().collect();
                known.sort();
                Err(Status::not_found(format!(
                    "unknown model \"{model}\" (known here: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )))
            }
        }
    }

    type WatchRoutesStream = BoxStream<v1::RouteUpdate>;

    async fn watch_routes(
        &self,
        request: Request<v1::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        self.routes_loaded()?;
        let models = request.into_inner().models;
        let wanted = move |t: &v1::RouteTable| models.is_empty() || models.contains(&t.model);
        let agent = self.agent.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                // A snapshot of every table this agent holds (subscribed first, so no change is missed),
                // then its changes; a new snapshot when the agent took one, or when this watcher fell behind.
                let mut updates = agent.route_updates.subscribe();
                let current: Vec<v1::RouteTable> = agent
                    .routes
                    .read()
                    .values()
                    .filter(|t| wanted(t))
                    .cloned()
                    .collect();
                for t in current {
                    if tx.send(Ok(v1::RouteUpdate::snapshot(t))).await.is_err() {
                        return;
                    }
                }
                if tx.send(Ok(v1::RouteUpdate::snapshot_end())).await.is_err() {
                    return;
                }
                loop {
                    match updates.recv().await {
                        Ok(RouteEvent::Table(t)) if wanted(&t) => {
                            if tx.send(Ok(v1::RouteUpdate::change(*t))).await.is_err() {
                                return;
                            }
                        }
                        Ok(RouteEvent::Table(_)) => {}
                        Ok(RouteEvent::Resync)
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(
            self.stopping
                .bound(tokio_stream::wrappers::ReceiverStream::new(rx)),
        ))
    }

    type FetchBlobStream = BoxStream<v1::BlobChunk>;

    async fn fetch_blob(
        &self,
        request: Request<v1::FetchBlobRequest>,
    ) -> Result<Response<Self::FetchBlobStream>, Status> {
        let caller = strata_proto::auth::caller(&request);
        let digest = convert::digest(&request.into_inner().digest, "digest")
            .map_err(convert::WireError::into_status)?;
        // A device fetches only the stages it runs itself (device stages of a table this agent holds); a
        // node fetches from the control plane, which checks what is assigned to it: never through another
        // node, which would fetch with its own rights.
        match caller.identity().map(|id| id.role) {
            Some(strata_proto::transport::Role::Device)
                if !self.agent.routes_device_stage(digest.as_str()) =>
            {
                return Err(strata_proto::auth::deny(
                    &caller,
                    "FetchBlob",
                    format_args!("blob {digest} is not a device stage of any route table here"),
                ));
            }
            Some(strata_proto::transport::Role::Node(_)) => {
                return Err(strata_proto::auth::deny(
                    &caller,
                    "FetchBlob",
                    "nodes fetch stage files from the control plane, not from other nodes",
                ));
            }
            _ => {}
        }
        let cached = self
            .agent
            .stages
            .cached_blob(&digest)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let bytes = match cached {
            Some(b) => b,
            None => self.fetch_for_caller(&digest).await?,
        };
        let chunks = strata_proto::call::blob_chunks(bytes).into_iter().map(Ok);
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_bounds_a_request_without_a_deadline_or_with_a_later_one() {
        let now = Instant::now();
        let cap = Duration::from_millis(500);
        for client in [None, Some(now + Duration::from_secs(10))] {
            let d = Deadline::new(client, cap, now);
            assert_eq!(d.at, now + cap, "{client:?}");
            assert_eq!(d.cap, Some(cap));
            let status = d.exceeded(" at agent a");
            assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
            assert_eq!(
                status.message(),
                "the request ran past this agent's limit of 500 ms per request at agent a (--max-request-ms)"
            );
        }
        // A sooner deadline of the client's is its own, and its message is the client's.
        let sooner = now + Duration::from_millis(100);
        let d = Deadline::new(Some(sooner), cap, now);
        assert_eq!((d.at, d.cap), (sooner, None));
        assert_eq!(
            d.exceeded(" at agent a").message(),
            "the request's deadline passed at agent a"
        );
        // A passed deadline has no time left; a cap beyond any clock is bounded.
        assert!(Deadline::new(Some(now), cap, now).remaining("").is_err());
        let far = Deadline::new(None, Duration::MAX, now);
        assert_eq!(far.cap, Some(LONGEST_CAP));
    }
}
