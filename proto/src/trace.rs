//! One request, one trace: W3C trace context (`traceparent`, `tracestate`) travels in the gRPC metadata of
//! every Strata call, so the device's span, each agent's spans and the hops between them join one
//! OpenTelemetry trace.
//!
//! Clients inject the current span's context into each call ([`inject`]; [`crate::call::infer`] does it for
//! every inference hop), and every server extracts it ([`TraceLayer`], one of [`crate::server::builder`]'s
//! layers) into a server span per RPC that the handler's spans nest under. Both sides go through the
//! global OpenTelemetry propagator: a no-op until something sets one (the binaries' [`crate::logging::init`]
//! sets the W3C propagator when OTLP export is configured; an app that links the device SDK and runs its own
//! OpenTelemetry sets its own).
//!
//! Off costs nothing measurable: without the `otel` feature both sides compile to nothing, and with it a
//! server that exports no traces ([`is_exporting`] false) creates no span and reads no header.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tonic::codegen::http;
use tracing::instrument::{Instrument, Instrumented};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces, so that its servers open a span per RPC (set by
/// [`crate::logging::init`] when OTLP export is configured, or by an embedding program with [`set_exporting`]).
pub fn is_exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Says that this process exports traces (it has installed an OpenTelemetry layer and a propagator), so that
/// servers open a span per RPC under the caller's trace.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Puts the current span's trace context into `request`'s metadata through the global propagator (nothing,
/// when no propagator is set or the current span is not traced).
#[cfg(feature = "otel")]
pub fn inject<T>(request: &mut tonic::Request<T>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Injector(request.metadata_mut()))
    });
}

/// Puts the current span's trace context into `request`'s metadata: nothing, without the `otel` feature.
#[cfg(not(feature = "otel"))]
pub fn inject<T>(_request: &mut tonic::Request<T>) {}

#[cfg(feature = "otel")]
struct Injector<'a>(&'a mut tonic::metadata::MetadataMap);

#[cfg(feature = "otel")]
impl opentelemetry::propagation::Injector for Injector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A value the propagator made that is not a valid header is left out rather than sent broken.
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(feature = "otel")]
struct Extractor<'a>(&'a http::HeaderMap);

#[cfg(feature = "otel")]
impl opentelemetry::propagation::Extractor for Extractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The server span of one RPC (`strata.v1.Inference/Infer`, kind server, with the OpenTelemetry RPC
/// attributes), a child of the caller's span when the request carries a trace context.
#[cfg(feature = "otel")]
fn server_span<B>(request: &http::Request<B>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let path = request.uri().path();
    let method = path.trim_start_matches('/');
    let (service, rpc) = method.split_once('/').unwrap_or((method, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = rpc,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Extractor(request.headers()))
    });
    // A request without a trace context starts a trace here (an error only if the span is disabled).
    let _ = span.set_parent(parent);
    span
}

#[cfg(not(feature = "otel"))]
fn server_span<B>(_request: &http::Request<B>) -> tracing::Span {
    tracing::Span::none()
}

/// The tower layer that runs each RPC under its server span ([`crate::server::builder`] adds it outside
/// authorisation, so that a refused call is traced too).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

/// [`TraceLayer`]'s service.
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = if is_exporting() {
            server_span(&request)
        } else {
            tracing::Span::none()
        };
        let _entered = span.enter();
        self.inner.call(request).instrument(span.clone())
    }
}

/// `n` as a span attribute: OpenTelemetry's integers are signed 64-bit, and the bridge would record an
/// unsigned value as text. Saturates at `i64::MAX`.
pub fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
