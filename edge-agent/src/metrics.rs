//! The agent's Prometheus metrics (served at `/metrics` on `--metrics-listen`; `docs/observability.md` lists
//! them with their meanings). Every metric carries the agent's `tier`; Prometheus adds the scraped `instance`.
//! Requests are counted by model, plan, stage and gRPC code; served requests' times are histograms by model
//! and stage; values the agent already keeps (requests in flight, stages loaded) are read at scrape time.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec, Opts, Registry};
use strata_core::Tier;
use strata_proto::metrics::{self as m, MetricError};

use crate::agent::Agent;

/// The labels of one request, from its header.
#[derive(Debug, Clone, Default)]
pub struct RequestLabels {
    /// The model's name.
    pub model: String,
    /// The plan's id.
    pub plan: String,
    /// The stage's index in the plan.
    pub stage: String,
}

/// An agent's metrics, and the registry they are served from.
pub struct AgentMetrics {
    registry: Registry,
    requests: IntCounterVec,
    shed: IntCounterVec,
    denied: IntCounterVec,
    request_seconds: HistogramVec,
    queue_seconds: HistogramVec,
    compute_seconds: HistogramVec,
    forward_seconds: HistogramVec,
    tensor_bytes: IntCounterVec,
    stage_load_seconds: prometheus::Histogram,
    batch_size: prometheus::Histogram,
}

impl AgentMetrics {
    /// The metrics of an agent of `tier` running stages on `backend`.
    pub fn new(tier: Tier, backend: &str) -> Result<AgentMetrics, MetricError> {
        let tier = tier.to_string();
        let registry = m::registry(
            "strata-edge-agent",
            env!("CARGO_PKG_VERSION"),
            &[("tier", &tier)],
        )?;
        let info = m::register(
            &registry,
            prometheus::IntGauge::with_opts(
                Opts::new(
                    "strata_agent_backend_info",
                    "Always 1; the label says which backend this agent runs its stages on (tract, ort-cpu, \
                     ort-cuda, ort-tensorrt).",
                )
                .const_label("backend", backend),
            )?,
        )?;
        info.set(1);
        let counter = |name: &str, help: &str, labels: &[&str]| {
            m::register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let requests = counter(
            "strata_agent_requests_total",
            "Inference requests this agent finished, by model, plan, stage and gRPC code (OK when served). \
             Stage 0 counts are the route choices devices made, by plan.",
            &["model", "plan", "stage", "code"],
        )?;
        let shed = counter(
            "strata_agent_shed_total",
            "Requests refused because every slot and queue place was taken (RESOURCE_EXHAUSTED; the client \
             retries on another agent).",
            &["model"],
        )?;
        let denied = counter(
            "strata_agent_denied_total",
            "Requests refused because serving them would break their model's privacy level at this tier.",
            &["model"],
        )?;
        let tensor_bytes = counter(
            "strata_agent_tensor_bytes_total",
            "Tensor bytes by direction: received in requests, forwarded to the next stage's agent, and \
             answered (the tensors in this agent's responses, the next stages' included).",
            &["model", "direction"],
        )?;
        let stages = ["model", "stage"];
        let request_seconds = m::latency_vec(
            &registry,
            "strata_agent_request_duration_seconds",
            "Time from a request's arrival to its answer at this agent, later stages included (served requests).",
            &stages,
        )?;
        let queue_seconds = m::latency_vec(
            &registry,
            "strata_agent_queue_duration_seconds",
            "Time a served request waited for a slot.",
            &stages,
        )?;
        let compute_seconds = m::latency_vec(
            &registry,
            "strata_agent_compute_duration_seconds",
            "Time a served request's stage ran.",
            &stages,
        )?;
        let forward_seconds = m::latency_vec(
            &registry,
            "strata_agent_forward_duration_seconds",
            "Time the next stage's agent took to answer a forwarded request (the network both ways and its work), \
             by the stage forwarded to.",
            &stages,
        )?;
        let stage_load_seconds = m::latency(
            &registry,
            "strata_agent_stage_load_duration_seconds",
            "Time to load an assigned stage into the runtime (fetching excluded).",
        )?;
        let batch_size = m::register(
            &registry,
            prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "strata_agent_batch_size",
                    "Requests per run of a stage whose model batches (dynamic batching; 1: it ran alone).",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0]),
            )?,
        )?;
        Ok(AgentMetrics {
            batch_size,
            registry,
            requests,
            shed,
            denied,
            request_seconds,
            queue_seconds,
            compute_seconds,
            forward_seconds,
            tensor_bytes,
            stage_load_seconds,
        })
    }

    /// Adds the gauges read from `agent` at scrape time (a weak reference: the metrics never keep an agent
    /// alive).
    pub(crate) fn pull_from(&self, agent: &Weak<Agent>) -> Result<(), MetricError> {
        let gauges: [m::PulledGauge<'_, Agent>; 5] = [
            (
                "strata_agent_in_flight_requests",
                "Requests admitted and not yet answered (queued or running).",
                |a| f64::from(a.in_flight.load(Ordering::Relaxed)),
            ),
            (
                "strata_agent_queued_requests",
                "Requests waiting for a slot.",
                |a| f64::from(a.queued.load(Ordering::Relaxed)),
            ),
            (
                "strata_agent_slots",
                "Requests this agent runs at once (--slots).",
                |a| f64::from(a.config.slots),
            ),
            (
                "strata_agent_stages_loaded",
                "Stages loaded in the runtime and ready to serve.",
                |a| a.stages.loaded_count() as f64,
            ),
            (
                "strata_agent_control_plane_connected",
                "1 while the agent's session with a control plane is up.",
                |a| f64::from(u8::from(a.connected.load(Ordering::Relaxed))),
            ),
        ];
        m::pulled_from(&self.registry, agent, &gauges)
    }

    /// The registry to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A request ended with `code` after `elapsed`; `labels` is `None` when it ended before its header was
    /// read.
    pub fn finished(&self, labels: Option<&RequestLabels>, code: tonic::Code, elapsed: Duration) {
        let none = RequestLabels::default();
        let l = labels.unwrap_or(&none);
        self.requests
            .with_label_values(&[&l.model, &l.plan, &l.stage, m::code_label(code)])
            .inc();
        if code == tonic::Code::Ok {
            self.request_seconds
                .with_label_values(&[&l.model, &l.stage])
                .observe(elapsed.as_secs_f64());
        }
    }

    /// A request for `model` was shed (no slot or queue place).
    pub fn shed(&self, model: &str) {
        self.shed.with_label_values(&[model]).inc();
    }

    /// A request for `model` was denied for privacy.
    pub fn denied(&self, model: &str) {
        self.denied.with_label_values(&[model]).inc();
    }

    /// A served request's queue wait and compute time, in milliseconds.
    pub fn ran(&self, labels: &RequestLabels, queue_ms: f64, compute_ms: f64) {
        let values = [labels.model.as_str(), labels.stage.as_str()];
        self.queue_seconds
            .with_label_values(&values)
            .observe(queue_ms / 1e3);
        self.compute_seconds
            .with_label_values(&values)
            .observe(compute_ms / 1e3);
    }

    /// A run of `requests` requests as one batch.
    pub fn batch(&self, requests: usize) {
        self.batch_size.observe(requests as f64);
    }

    /// A forward to stage `next` answered in `elapsed_ms`.
    pub fn forwarded(&self, model: &str, next: u32, elapsed_ms: f64) {
        self.forward_seconds
            .with_label_values(&[model, &next.to_string()])
            .observe(elapsed_ms / 1e3);
    }

    /// `bytes` tensor bytes of `model` went `direction` (`received`, `forwarded`, `answered`).
    pub fn bytes(&self, model: &str, direction: &str, bytes: u64) {
        self.tensor_bytes
            .with_label_values(&[model, direction])
            .inc_by(bytes);
    }

    /// A stage took `elapsed` to load.
    pub fn stage_loaded(&self, elapsed: Duration) {
        self.stage_load_seconds.observe(elapsed.as_secs_f64());
    }
}
