//! The Strata gRPC API, package `strata.v1`: generated messages, clients and servers, plus the tensor framing
//! that every hop of the data path shares (tensors travel as a header and ≤ [`CHUNK_BYTES`] data chunks).

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

pub mod balance;
pub mod call;
pub mod framing;

/// Generated code for `strata.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

pub use framing::{FrameError, TensorAssembler, tensor_chunks};

/// Data bytes per tensor chunk. Large tensors stream as many chunks, so no message nears the size limit.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The largest single gRPC message any Strata server or client accepts (chunks are 1 MiB, so this is ample).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The default cap on the tensor bytes of one request (all tensors together).
pub const MAX_REQUEST_TENSOR_BYTES: u64 = 1 << 30;

impl v1::Tier {
    /// Lower-case name (`device`, `edge`, `cloud`).
    pub fn label(self) -> &'static str {
        match self {
            v1::Tier::Unspecified => "unspecified",
            v1::Tier::Device => "device",
            v1::Tier::Edge => "edge",
            v1::Tier::Cloud => "cloud",
        }
    }

    /// Parses a lower-case name.
    pub fn from_label(s: &str) -> Option<v1::Tier> {
        match s {
            "device" => Some(v1::Tier::Device),
            "edge" => Some(v1::Tier::Edge),
            "cloud" => Some(v1::Tier::Cloud),
            _ => None,
        }
    }
}

impl v1::Privacy {
    /// Lower-case name (`device`, `edge`, `features`, `open`).
    pub fn label(self) -> &'static str {
        match self {
            v1::Privacy::Unspecified => "unspecified",
            v1::Privacy::Device => "device",
            v1::Privacy::Edge => "edge",
            v1::Privacy::Features => "features",
            v1::Privacy::Open => "open",
        }
    }

    /// Parses a lower-case name.
    pub fn from_label(s: &str) -> Option<v1::Privacy> {
        match s {
            "device" => Some(v1::Privacy::Device),
            "edge" => Some(v1::Privacy::Edge),
            "features" => Some(v1::Privacy::Features),
            "open" => Some(v1::Privacy::Open),
            _ => None,
        }
    }
}

/// Tells long-lived response streams (route and assignment watches) that the server is stopping, so a graceful
/// shutdown is not held open by watchers that never hang up.
#[derive(Debug, Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// A signal and its sender: send `true` to stop.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Stopping) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Stopping(rx))
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
    /// [`DRAIN_TIMEOUT`] after the signal: requests still in flight then are abandoned.
    pub async fn drain<E>(
        &self,
        server: impl std::future::Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        tokio::select! {
            r = server => r,
            _ = async {
                self.wait().await;
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } => {
                tracing::warn!("requests still in flight after the drain timeout; stopping anyway");
                Ok(())
            }
        }
    }
}

/// How long a stopping server waits for in-flight requests before it gives up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections of `listener` with `TCP_NODELAY` set. tonic sets it only on sockets it binds itself;
/// without it, Nagle's algorithm and delayed ACKs add ~40 ms to small responses.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// The deadline a request carries in its `grpc-timeout` header, as an instant on this machine's clock.
pub fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value).map(|d| Instant::now() + d)
}

/// Parses a `grpc-timeout` value (`"100m"`: up to 8 digits and a unit of H, M, S, m, u or n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parses_every_unit_and_rejects_garbage() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
