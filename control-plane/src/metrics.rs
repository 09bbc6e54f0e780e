//! The control plane's Prometheus metrics (served at `/metrics` on `--metrics-listen`; `docs/observability.md`
//! lists them): leadership and the store's health read at scrape time, reconcile passes and their duration,
//! every store call's latency and errors by operation ([`MeteredStore`]), nodes by tier and state as the last
//! pass saw them, and the open watches.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use strata_core::Tier;
use strata_proto::metrics::{self as m, MetricError};

use crate::plane::ControlPlane;
use crate::records::NodeRecord;
use crate::store::{
    KeyValue, Leadership, LeaseId, Range, Revision, Store, StoreError, Txn, TxnResult, WatchStream,
};

/// A control plane's metrics, and the registry they are served from.
pub struct ControlMetrics {
    registry: Registry,
    reconcile_passes: IntCounterVec,
    reconcile_seconds: HistogramVec,
    store_seconds: HistogramVec,
    store_errors: IntCounterVec,
    nodes: IntGaugeVec,
    models: IntGauge,
    watchers: IntGaugeVec,
}

impl ControlMetrics {
    /// The control plane's metrics.
    pub fn new() -> Result<ControlMetrics, MetricError> {
        let registry = m::registry("strata", env!("CARGO_PKG_VERSION"), &[])?;
        let reconcile_passes = m::register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "strata_control_plane_reconcile_passes_total",
                    "Reconcile passes, by role (leader: plan, assign, publish; follower: assignments of its \
                     own agents) and outcome (ok, error: retried after a second).",
                ),
                &["role", "outcome"],
            )?,
        )?;
        let reconcile_seconds = m::latency_vec(
            &registry,
            "strata_control_plane_reconcile_duration_seconds",
            "Time one reconcile pass took, planning included.",
            &["role"],
        )?;
        let store_seconds = m::latency_vec(
            &registry,
            "strata_store_request_duration_seconds",
            "Time the state store (etcd, or the embedded store) took to answer, by operation.",
            &["operation"],
        )?;
        let store_errors = m::register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "strata_store_errors_total",
                    "State store calls that failed, by operation (a compare that fails in a transaction is \
                     not an error).",
                ),
                &["operation"],
            )?,
        )?;
        let nodes = m::register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "strata_control_plane_nodes",
                    "Registered nodes as the last reconcile pass saw them, by tier and state (serving: at \
                     least one stage loaded; registered: none yet).",
                ),
                &["tier", "state"],
            )?,
        )?;
        let models = m::register(
            &registry,
            IntGauge::new(
                "strata_control_plane_models",
                "Models in the registry, as the leader's last pass saw them (0 on other replicas).",
            )?,
        )?;
        let watchers = m::register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "strata_control_plane_watchers",
                    "Open watch streams on this replica, by kind (routes: devices and agents; assignments: \
                     agents).",
                ),
                &["kind"],
            )?,
        )?;
        Ok(ControlMetrics {
            registry,
            reconcile_passes,
            reconcile_seconds,
            store_seconds,
            store_errors,
            nodes,
            models,
            watchers,
        })
    }

    /// Adds the gauges read from `plane` at scrape time (a weak reference: the metrics never keep a control
    /// plane alive).
    pub(crate) fn pull_from(&self, plane: &Weak<ControlPlane>) -> Result<(), MetricError> {
        let gauges: [m::PulledGauge<'_, ControlPlane>; 3] = [
            (
                "strata_control_plane_leader",
                "1 while this replica leads (plans, assigns and publishes); exactly one replica should.",
                |p| f64::from(u8::from(p.is_leader())),
            ),
            (
                "strata_control_plane_store_reachable",
                "1 while the state store answers this replica's lease renewals (readiness follows it).",
                |p| f64::from(u8::from(p.store_reachable())),
            ),
            (
                "strata_control_plane_corrupt_records",
                "Store records found corrupt since this replica started (each also logged).",
                |p| p.corrupt_records() as f64,
            ),
        ];
        m::pulled_from(&self.registry, plane, &gauges)
    }

    /// The registry to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A reconcile pass as `role` (`leader`, `follower`) ended, successfully or not, after `elapsed`.
    pub(crate) fn reconciled(&self, role: &str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.reconcile_passes
            .with_label_values(&[role, outcome])
            .inc();
        self.reconcile_seconds
            .with_label_values(&[role])
            .observe(elapsed.as_secs_f64());
    }

    /// The nodes a pass saw (every tier and state is set, to 0 when none, so a tier that lost its last
    /// node reads 0 rather than disappearing).
    pub(crate) fn saw_nodes(&self, nodes: &[NodeRecord]) {
        for tier in [Tier::Edge, Tier::Cloud] {
            let of_tier = nodes.iter().filter(|n| n.tier == tier);
            let serving = of_tier.clone().filter(|n| !n.ready.is_empty()).count();
            let all = of_tier.count();
            let tier = tier.to_string();
            self.nodes
                .with_label_values(&[&tier, "serving"])
                .set(serving as i64);
            self.nodes
                .with_label_values(&[&tier, "registered"])
                .set((all - serving) as i64);
        }
    }

    /// The leader's pass saw `count` models.
    pub(crate) fn saw_models(&self, count: usize) {
        self.models.set(count as i64);
    }

    /// `stream`, counted in `strata_control_plane_watchers{kind}` while it is open.
    pub(crate) fn watched<S: Stream + Send + 'static>(
        &self,
        kind: &str,
        stream: S,
    ) -> impl Stream<Item = S::Item> + Send + 'static {
        let gauge = self.watchers.with_label_values(&[kind]);
        gauge.inc();
        let open = Open(gauge);
        stream.map(move |item| {
            let _counted = &open;
            item
        })
    }

    fn store_call<T>(&self, operation: &str, started: Instant, result: &Result<T, StoreError>) {
        self.store_seconds
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.store_errors.with_label_values(&[operation]).inc();
        }
    }
}

/// Decrements a watcher gauge when the stream it counts is dropped.
struct Open(IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A [`Store`] whose every call is timed and its errors counted in [`ControlMetrics`].
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<ControlMetrics>,
}

impl MeteredStore {
    /// `inner`, measured into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<ControlMetrics>) -> MeteredStore {
        MeteredStore { inner, metrics }
    }
}

macro_rules! metered {
    ($self:ident, $operation:literal, $call:expr) => {{
        let started = Instant::now();
        let span = tracing::info_span!(
            "store",
            otel.name = concat!("store ", $operation),
            otel.kind = "client",
            db.system = $self.inner.name(),
            db.operation = $operation,
        );
        let result = tracing::Instrument::instrument($call, span).await;
        $self.metrics.store_call($operation, started, &result);
        result
    }};
}

#[async_trait::async_trait]
impl Store for MeteredStore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        metered!(self, "get", self.inner.get(key))
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        metered!(self, "range", self.inner.range(prefix))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        metered!(self, "put", self.inner.put(key, value, lease))
    }

    async fn delete(&self, key: &str) -> Result<(bool, Revision), StoreError> {
        metered!(self, "delete", self.inner.delete(key))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        metered!(self, "delete_prefix", self.inner.delete_prefix(prefix))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        metered!(self, "txn", self.inner.txn(txn))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        metered!(self, "watch", self.inner.watch(prefix, from))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        metered!(self, "current_revision", self.inner.current_revision())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        metered!(self, "grant_lease", self.inner.grant_lease(ttl))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        metered!(self, "keep_alive", self.inner.keep_alive(lease))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        metered!(self, "revoke_lease", self.inner.revoke_lease(lease))
    }

    /// The inner store's election (etcd's native one where it is etcd), untimed: a campaign waits for as
    /// long as another replica leads.
    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Leadership, StoreError> {
        self.inner.campaign(election, value, lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_calls_are_timed_and_failures_counted_by_operation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner: Arc<dyn Store> = Arc::new(
            crate::store::EmbeddedStore::open(&dir.path().join("state.redb")).expect("open"),
        );
        let metrics = Arc::new(ControlMetrics::new().expect("metrics"));
        let store = MeteredStore::new(inner, metrics.clone());
        store.put("/k", b"v".to_vec(), None).await.expect("put");
        store.get("/k").await.expect("get");
        assert!(store.keep_alive(12345).await.is_err(), "no such lease");
        let (text, _) = m::render(metrics.registry());
        let text = String::from_utf8(text).expect("utf-8");
        for line in [
            "strata_store_request_duration_seconds_count{operation=\"put\"} 1",
            "strata_store_request_duration_seconds_count{operation=\"get\"} 1",
            "strata_store_request_duration_seconds_count{operation=\"keep_alive\"} 1",
            "strata_store_errors_total{operation=\"keep_alive\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("strata_store_errors_total{operation=\"put\"}"));
    }

    #[test]
    fn a_closed_watch_is_no_longer_counted() {
        let metrics = ControlMetrics::new().expect("metrics");
        let stream = metrics.watched("routes", futures::stream::iter([1, 2]));
        let gauge = metrics.watchers.with_label_values(&["routes"]);
        assert_eq!(gauge.get(), 1);
        drop(stream);
        assert_eq!(gauge.get(), 0);
    }
}
