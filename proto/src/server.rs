//! What every Strata gRPC server shares: one [`builder`] (HTTP/2 windows for large activations, keep-alive,
//! `TCP_NODELAY` on accepted sockets), the message-size limits of every service ([`MessageLimits`]), and the
//! shutdown plumbing ([`shutdown_signal`], [`Stopping`], a bounded drain in [`run`]). The control plane and
//! the agent both serve through here, so the transport ([`Transport`]: plain or mutual TLS, in [`run`]) and
//! the tower layers (trace context, [`crate::trace::TraceLayer`]; authorisation, [`AuthLayer`]) are added once.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Server;
use tonic::transport::server::Router;

use crate::MAX_MESSAGE_BYTES;
use crate::auth::AuthLayer;
use crate::transport::Transport;

/// The layers every Strata server runs its services under.
pub type Layers = tower::layer::util::Stack<
    AuthLayer,
    tower::layer::util::Stack<crate::trace::TraceLayer, tower::layer::util::Identity>,
>;

/// Concurrent HTTP/2 streams one client connection may have open by default (tonic's default is unbounded):
/// requests beyond it wait in the client for a stream to finish. [`ServerLimits`] sets another.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// How long a stopping server waits for in-flight requests before it gives up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits on what one client may hold open at a server that an operator may set
/// (`--max-streams-per-connection` on the agent and the control plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Concurrent HTTP/2 streams one client connection may have open; requests beyond it wait in the client
    /// for a stream to finish. At least 1 (0 is taken as 1: a server that accepts no stream serves nothing).
    pub max_streams_per_connection: u32,
}

impl Default for ServerLimits {
    /// [`MAX_STREAMS_PER_CONNECTION`] streams per connection.
    fn default() -> ServerLimits {
        ServerLimits {
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// The server every Strata endpoint runs: every call authorised ([`AuthLayer`]), wide HTTP/2 windows
/// (activations are megabytes), keep-alive pings that find dead clients, and the default [`ServerLimits`].
pub fn builder() -> Server<Layers> {
    builder_with(ServerLimits::default())
}

/// [`builder`] under `limits`.
pub fn builder_with(limits: ServerLimits) -> Server<Layers> {
    Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection.max(1)))
        // Layers added later run inside: each RPC's server span (under the caller's trace) encloses its
        // authorisation and its handler.
        .layer(crate::trace::TraceLayer)
        .layer(AuthLayer)
}

/// Strata's message-size limits ([`MAX_MESSAGE_BYTES`] each way) on a generated service.
pub trait MessageLimits {
    /// The service with the limits applied.
    fn with_limits(self) -> Self;
}

macro_rules! message_limits {
    ($($server:ident :: $type:ident <$trait:path>),* $(,)?) => {$(
        impl<T: $trait> MessageLimits for crate::v1::$server::$type<T> {
            fn with_limits(self) -> Self {
                self.max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            }
        }
    )*};
}

message_limits!(
    control_server::ControlServer<crate::v1::control_server::Control>,
    routes_server::RoutesServer<crate::v1::routes_server::Routes>,
    inference_server::InferenceServer<crate::v1::inference_server::Inference>,
);

/// Serves `router` on `listener` under `transport` until `shutdown` completes, then stops accepting and
/// waits for in-flight requests for at most [`DRAIN_TIMEOUT`]. Long-lived streams should be bounded by
/// `stopping` (which `shutdown` should fire) so that they do not hold the drain open.
pub async fn run(
    router: Router<Layers>,
    listener: tokio::net::TcpListener,
    transport: Transport,
    shutdown: impl Future<Output = ()> + Send,
    stopping: &Stopping,
) -> Result<(), tonic::transport::Error> {
    let incoming = crate::transport::incoming(listener, transport);
    stopping
        .drain(router.serve_with_incoming_shutdown(incoming, shutdown))
        .await
}

/// The plain side ports a server may open besides its main (mutual-TLS) one, for what cannot speak TLS or
/// has no certificate: probes and metric scrapers.
#[derive(Debug, Default)]
pub struct SidePorts {
    /// `--health-listen`: the gRPC health service alone, in plain HTTP/2 ([`run_probes`]).
    pub health: Option<tokio::net::TcpListener>,
    /// `--metrics-listen`: Prometheus metrics at `/metrics`, in plain HTTP/1.1 (`metrics::serve`, with the
    /// `metrics` feature).
    pub metrics: Option<tokio::net::TcpListener>,
}

/// A side port that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({flag}): {source}")]
pub struct BindError {
    /// The address asked for.
    pub address: String,
    /// The flag that asked for it.
    pub flag: &'static str,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl SidePorts {
    /// Opens the side ports asked for: `health` (`--health-listen`) and `metrics` (`--metrics-listen`).
    pub async fn bind(health: Option<&str>, metrics: Option<&str>) -> Result<SidePorts, BindError> {
        async fn open(
            address: Option<&str>,
            flag: &'static str,
            what: &str,
        ) -> Result<Option<tokio::net::TcpListener>, BindError> {
            let Some(address) = address else {
                return Ok(None);
            };
            let failed = |source| BindError {
                address: address.to_string(),
                flag,
                source,
            };
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(failed)?;
            let bound = listener.local_addr().map_err(failed)?;
            tracing::info!(address = %bound, "{what}");
            Ok(Some(listener))
        }
        Ok(SidePorts {
            health: open(health, "--health-listen", "health probes (plain HTTP/2)").await?,
            metrics: open(
                metrics,
                "--metrics-listen",
                "Prometheus metrics at /metrics (plain HTTP/1.1)",
            )
            .await?,
        })
    }
}

/// Serves `router` (built with [`tonic::transport::Server::builder`] and only the health service) in plain
/// HTTP/2 on `listener` until `stopping` fires: the port for probes that cannot speak TLS (Kubernetes' `grpc`
/// probe, load balancers' health checks). It answers from the same health reporter as the main port; the
/// statuses it tells are no secret, and nothing else is served there.
pub async fn run_probes(
    router: Router,
    listener: tokio::net::TcpListener,
    stopping: Stopping,
) -> Result<(), tonic::transport::Error> {
    let incoming = crate::transport::incoming(listener, Transport::Plain);
    router
        .serve_with_incoming_shutdown(incoming, async move { stopping.wait().await })
        .await
}

/// Tells long-lived response streams (route and assignment watches) that the server is stopping, so a graceful
/// shutdown is not held open by watchers that never hang up.
#[derive(Debug, Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>, Duration);

impl Stopping {
    /// A signal and its sender: send `true` to stop.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Stopping) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Stopping(rx, DRAIN_TIMEOUT))
    }

    /// The same signal, with in-flight requests given `timeout` to finish once it fires (an agent gives them
    /// its longest request time, `--max-request-ms`).
    pub fn with_drain_timeout(self, timeout: Duration) -> Stopping {
        Stopping(self.0, timeout)
    }

    /// Completes once stopping (or once the sender is gone).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// `stream`, ended when the server starts stopping.
    pub fn bound<S: futures::Stream + Send + 'static>(
        &self,
        stream: S,
    ) -> std::pin::Pin<Box<dyn futures::Stream<Item = S::Item> + Send>> {
        use futures::StreamExt;
        let this = self.clone();
        Box::pin(stream.take_until(Box::pin(async move { this.wait().await })))
    }
}

impl Stopping {
    /// Runs `server` (a tonic server future that stops accepting on this signal) to its end, but no longer than
    /// the drain timeout ([`DRAIN_TIMEOUT`] unless set) after the signal: requests still in flight then are
    /// abandoned.
    pub async fn drain<E>(
        &self,
        server: impl std::future::Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        tokio::select! {
            r = server => r,
            _ = async {
                self.wait().await;
                tokio::time::sleep(self.1).await;
            } => {
                tracing::warn!("requests still in flight after the drain timeout; stopping anyway");
                Ok(())
            }
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes and systemd send).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
