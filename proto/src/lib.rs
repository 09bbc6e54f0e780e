//! The Strata gRPC API, package `strata.v1` (generated messages, clients and servers), and what every endpoint
//! shares around it: the wire conversions of Strata's types ([`convert`]), tensor framing ([`framing`]: a
//! header and ≤ [`CHUNK_BYTES`] data chunks), the client side of a hop with its retry policy ([`call`]), the
//! least-loaded choice of a peer ([`balance`]), the one server builder and shutdown plumbing ([`server`]),
//! the transport on the sockets ([`transport`]: plain or mutual TLS, the caller's identity) and who may call
//! what ([`auth`]), the Prometheus `/metrics` endpoint ([`metrics`]), and the Open Inference Protocol v2
//! (package `inference`, [`inference`]) with its tensor conversions ([`oip`]). Trace context will plug in at
//! [`call::channel`] and [`server::builder`].

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

pub mod auth;
pub mod balance;
pub mod call;
pub mod convert;
pub mod error;
pub mod framing;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod oip;
pub mod server;
pub mod task;
pub mod trace;
pub mod transport;

/// Generated code for `strata.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

/// Generated code for `inference`: the Open Inference Protocol v2 (KServe's `grpc_predict_v2.proto`, vendored
/// in `proto/`), which agents serve so that `tritonclient.grpc` works unchanged; [`oip`] converts its tensors.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod inference {
    tonic::include_proto!("inference");
}

pub use framing::{FrameError, TensorAssembler, tensor_chunks};
pub use server::{Stopping, shutdown_signal};

/// Data bytes per tensor chunk. Large tensors stream as many chunks, so no message nears the size limit.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The largest single gRPC message any Strata server or client accepts (chunks are 1 MiB, so this is ample).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The default cap on the tensor bytes of one request (all tensors together).
pub const MAX_REQUEST_TENSOR_BYTES: u64 = 1 << 30;

impl v1::RouteUpdate {
    /// A table of a route watch's snapshot.
    pub fn snapshot(table: v1::RouteTable) -> v1::RouteUpdate {
        v1::RouteUpdate {
            table: Some(table),
            snapshot: true,
            snapshot_end: false,
        }
    }

    /// The end of a snapshot.
    pub fn snapshot_end() -> v1::RouteUpdate {
        v1::RouteUpdate {
            table: None,
            snapshot: false,
            snapshot_end: true,
        }
    }

    /// A change after the snapshot.
    pub fn change(table: v1::RouteTable) -> v1::RouteUpdate {
        v1::RouteUpdate {
            table: Some(table),
            snapshot: false,
            snapshot_end: false,
        }
    }
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
