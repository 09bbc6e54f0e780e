//! Prometheus metrics: the `/metrics` endpoint every Strata server can open on a port of its own
//! (`--metrics-listen`; plain HTTP/1.1, as Prometheus scrapes), the histogram buckets Strata's latencies share,
//! and `strata_build_info`. Each server keeps its own [`prometheus::Registry`] (no process-wide registry, so
//! several servers in one process keep apart), and names follow Prometheus' conventions: a `strata_` prefix,
//! base units (`_seconds`, `_bytes`), counters ending in `_total`. `promtool check metrics` passes on what
//! [`render`] writes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, Opts, Registry, TextEncoder};

/// Latency buckets, in seconds, for every Strata duration histogram: 0.5 ms to 30 s. A stage on a cloud GPU
/// takes a millisecond, a device → edge → cloud request over a slow link seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Connections the endpoint serves at once; more wait in the kernel's backlog. Scrapers are few.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request headers before the connection is closed (a stalled or
/// hostile client cannot hold a connection slot).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a metric could not be defined: a name or label that Prometheus does not accept, or defined twice.
/// These are programming errors, caught by the servers' tests.
pub type MetricError = prometheus::Error;

/// A registry with `strata_build_info{binary, version} 1` in it; `labels` are added to every metric
/// registered in it (an agent's `tier`).
pub fn registry(
    binary: &str,
    version: &str,
    labels: &[(&str, &str)],
) -> Result<Registry, MetricError> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let registry = Registry::new_custom(None, Some(labels))?;
    let info = prometheus::IntGauge::with_opts(
        Opts::new(
            "strata_build_info",
            "Always 1; the labels say which Strata binary and version this is.",
        )
        .const_label("binary", binary)
        .const_label("version", version),
    )?;
    info.set(1);
    registry.register(Box::new(info))?;
    Ok(registry)
}

/// The `code` label of a gRPC outcome, as gRPC's own Prometheus middlewares write it (`OK`,
/// `ResourceExhausted`, …).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A histogram with [`LATENCY_BUCKETS`], registered in `registry`.
pub fn latency(registry: &Registry, name: &str, help: &str) -> Result<Histogram, MetricError> {
    let histogram =
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))?;
    registry.register(Box::new(histogram.clone()))?;
    Ok(histogram)
}

/// A histogram family with [`LATENCY_BUCKETS`] and `labels`, registered in `registry`.
pub fn latency_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<HistogramVec, MetricError> {
    let histogram = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )?;
    registry.register(Box::new(histogram.clone()))?;
    Ok(histogram)
}

/// Registers `collector` in `registry` and returns it (a counter, gauge or family, cloned: they share their
/// values).
pub fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, MetricError> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// A gauge read when scraped (`value` is called at each scrape): for values the server already keeps, such
/// as requests in flight, so nothing is counted twice.
pub fn pulled(
    registry: &Registry,
    name: &str,
    help: &str,
    value: impl Fn() -> f64 + Send + Sync + 'static,
) -> Result<(), MetricError> {
    let gauge = prometheus::PullingGauge::new(name, help, Box::new(value))?;
    registry.register(Box::new(gauge))
}

/// A gauge read at scrape time: its name, its help, and how to read it from its source.
pub type PulledGauge<'a, T> = (&'a str, &'a str, fn(&T) -> f64);

/// A gauge read from `source` at each scrape, per `(name, help, read)` in `gauges`: `source` is held weakly
/// (the metrics never keep their server alive), and a gone server reads 0.
pub fn pulled_from<T: Send + Sync + 'static>(
    registry: &Registry,
    source: &std::sync::Weak<T>,
    gauges: &[PulledGauge<'_, T>],
) -> Result<(), MetricError> {
    for &(name, help, read) in gauges {
        let source = source.clone();
        pulled(registry, name, help, move || {
            source.upgrade().map_or(0.0, |s| read(&s))
        })?;
    }
    Ok(())
}

/// The registry's metrics in the Prometheus text format (version 0.0.4), and that format's content type.
pub fn render(registry: &Registry) -> (Vec<u8>, String) {
    let encoder = TextEncoder::new();
    let mut text = Vec::new();
    // Encoding into a Vec fails only on a metric family without metrics, which the registry never returns.
    if let Err(e) = encoder.encode(&registry.gather(), &mut text) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    (text, encoder.format_type().to_string())
}

/// Serves `registry` at `GET /metrics` on `listener` (plain HTTP/1.1) until the task is dropped (servers run
/// it under [`crate::task::AbortOnDrop`], so it answers through a drain, until the process stops). Anything
/// else gets 404 (another path) or 405 (another method); a client that does not send its headers within 10 s
/// is disconnected, and at most 64 connections are served at once.
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) {
    let registry = Arc::new(registry);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let registry = registry.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&request, &registry)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection ended");
            }
        });
    }
}

/// The answer to one HTTP request.
fn answer<B>(request: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: Vec<u8>| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    let text = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            text,
            b"not found: Strata serves its metrics at /metrics\n".to_vec(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            b"method not allowed: GET /metrics\n".to_vec(),
        );
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    let (body, content_type) = render(registry);
    reply(StatusCode::OK, &content_type, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Registry {
        let registry = registry("strata-test", "0.1.0", &[("tier", "edge")]).expect("registry");
        let requests = register(
            &registry,
            prometheus::IntCounterVec::new(
                Opts::new("strata_test_requests_total", "Requests."),
                &["model"],
            )
            .expect("family"),
        )
        .expect("registered");
        requests.with_label_values(&["squeezenet"]).inc_by(3);
        let seconds = latency(&registry, "strata_test_seconds", "Time.").expect("histogram");
        seconds.observe(0.003);
        pulled(&registry, "strata_test_in_flight", "In flight.", || 2.0).expect("pulled");
        registry
    }

    #[test]
    fn the_text_format_has_the_values_buckets_and_build_info() {
        let (text, content_type) = render(&sample());
        let text = String::from_utf8(text).expect("utf-8");
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(text.contains("strata_test_requests_total{model=\"squeezenet\",tier=\"edge\"} 3"));
        assert!(text.contains("strata_test_seconds_bucket{tier=\"edge\",le=\"0.0025\"} 0"));
        assert!(text.contains("strata_test_seconds_bucket{tier=\"edge\",le=\"0.005\"} 1"));
        assert!(text.contains("strata_test_seconds_bucket{tier=\"edge\",le=\"+Inf\"} 1"));
        assert!(text.contains("strata_test_in_flight{tier=\"edge\"} 2"));
        assert!(
            text.contains(
                "strata_build_info{binary=\"strata-test\",version=\"0.1.0\",tier=\"edge\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn only_get_or_head_of_metrics_is_answered() {
        let registry = sample();
        let request = |method: Method, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .expect("request")
        };
        assert_eq!(
            answer(&request(Method::GET, "/metrics"), &registry).status(),
            StatusCode::OK
        );
        assert_eq!(
            answer(&request(Method::HEAD, "/metrics"), &registry).status(),
            StatusCode::OK
        );
        assert_eq!(
            answer(&request(Method::GET, "/"), &registry).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            answer(&request(Method::POST, "/metrics"), &registry).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn a_name_prometheus_refuses_is_an_error_not_a_panic() {
        let registry = Registry::new();
        assert!(latency(&registry, "strata bad name", "x").is_err());
        assert!(latency(&registry, "strata_twice_seconds", "x").is_ok());
        assert!(latency(&registry, "strata_twice_seconds", "x").is_err());
    }
}
