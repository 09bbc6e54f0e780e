//! The client side of the data path, shared by the device SDK (first hop) and agents (forwarding): the one
//! channel builder ([`channel`], cached per peer by [`Channels`]), one inference hop ([`infer`]), the choice
//! of an agent for a stage with retries on the others ([`Hop`], under a [`RetryPolicy`]), and blob fetches
//! checked against their digest ([`fetch_blob`]).

use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tracing::Instrument;

use crate::balance::Balancer;
use crate::transport::{Connector, Expect, Transport};
use crate::v1::inference_client::InferenceClient;
use crate::v1::routes_client::RoutesClient;
use crate::v1::{
    BlobChunk, FetchBlobRequest, InferHeader, InferRequest, StageReport, TensorChunk,
    infer_request, infer_response,
};
use crate::{MAX_MESSAGE_BYTES, TensorAssembler, tensor_chunks};
use strata_core::{Digest, TensorData};

/// What a hop returned.
#[derive(Debug)]
pub struct HopResult {
    /// Model outputs computed by this and later stages.
    pub tensors: Vec<(String, TensorData)>,
    /// One report per stage run, innermost first.
    pub reports: Vec<StageReport>,
    /// Wall time of the call that succeeded, from sending to the last byte of the answer, ms.
    pub elapsed_ms: f64,
}

/// Splits tensors into chunks once, so retries re-send them without copying.
pub fn chunks_of(tensors: Vec<(String, TensorData)>) -> Vec<TensorChunk> {
    tensors
        .into_iter()
        .flat_map(|(name, t)| tensor_chunks(&name, t))
        .collect()
}

/// An address a channel cannot be made for.
#[derive(Debug, thiserror::Error)]
#[error("bad address \"{address}\": {source}")]
pub struct ChannelError {
    /// The address given.
    pub address: String,
    /// Why it is not a URI.
    pub source: tonic::transport::Error,
}

/// A lazily connecting channel to an agent or control plane (`host:port` or a URL) under `transport`, to a
/// server that must prove the role `expect` (under TLS), tuned for large activations (wide HTTP/2 windows)
/// and quick failure detection (short connect timeout). Every Strata client connects through here.
pub fn channel(
    address: &str,
    connect_timeout: Duration,
    transport: &Transport,
    expect: Expect,
) -> Result<Channel, ChannelError> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(url).map_err(|source| ChannelError {
        address: address.to_string(),
        source,
    })?;
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(Connector::new(transport.clone(), expect)))
}

/// Channels by address and expected role, created on first use and shared afterwards (one HTTP/2
/// connection per peer).
#[derive(Debug, Clone)]
pub struct Channels {
    connect_timeout: Duration,
    transport: Transport,
    cache: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<(String, Expect), Channel>>>,
}

impl Channels {
    /// An empty cache whose channels use `transport` and give up connecting after `connect_timeout`.
    pub fn new(connect_timeout: Duration, transport: Transport) -> Channels {
        Channels {
            connect_timeout,
            transport,
            cache: Default::default(),
        }
    }

    /// The transport the channels use.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The channel to `address`, which must prove the role `expect` (see [`channel`]).
    pub fn get(&self, address: &str, expect: Expect) -> Result<Channel, ChannelError> {
        let mut cache = self.cache.lock();
        let key = (address.to_string(), expect);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let c = channel(address, self.connect_timeout, &self.transport, expect)?;
        cache.insert(key, c.clone());
        Ok(c)
    }
}

/// Runs stage `header.stage` (and those after it) on the agent behind `channel`, under the current span's
/// trace context ([`crate::trace::inject`]).
pub async fn infer(
    channel: Channel,
    header: InferHeader,
    chunks: &[TensorChunk],
    timeout: Option<Duration>,
    max_bytes: u64,
) -> Result<HopResult, Status> {
    let started = Instant::now();
    let frames: Vec<InferRequest> = std::iter::once(InferRequest {
        frame: Some(infer_request::Frame::Header(header)),
    })
    .chain(chunks.iter().cloned().map(|c| InferRequest {
        frame: Some(infer_request::Frame::Tensor(c)),
    }))
    .collect();
    let mut request = Request::new(futures::stream::iter(frames));
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    crate::trace::inject(&mut request);
    let mut client = InferenceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut stream = client.infer(request).await?.into_inner();
    let mut assembler = TensorAssembler::new(max_bytes);
    let mut reports = Vec::new();
    while let Some(message) = stream.next().await {
        match message?.frame {
            Some(infer_response::Frame::Tensor(chunk)) => assembler
                .push(chunk)
                .map_err(|e| Status::internal(format!("malformed response: {e}")))?,
            Some(infer_response::Frame::Report(r)) => reports.push(r),
            None => {}
        }
    }
    let tensors = assembler
        .finish()
        .map_err(|e| Status::internal(format!("malformed response: {e}")))?;
    Ok(HopResult {
        tensors,
        reports,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Whether a failed hop may succeed on another agent (or locally): the agent is gone, overloaded, or failed
/// for its own reasons, as opposed to the request being wrong.
pub fn retryable(status: &Status) -> bool {
    use tonic::Code;
    if crate::error::reason(status) == Some(crate::error::ErrorReason::RequestTooLarge) {
        return false; // Every agent would refuse it.
    }
    matches!(
        status.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::Cancelled
            | Code::FailedPrecondition
            | Code::NotFound
    )
}

/// How a caller treats an agent that failed a hop: it is avoided for a while (and the next candidate tried),
/// shorter when it only shed load than when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long an agent that answered `RESOURCE_EXHAUSTED` (it shed load) is avoided.
    pub shed_backoff: Duration,
    /// How long an agent that failed otherwise (unreachable, broken, missing the stage) is avoided.
    pub failure_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 200 ms after shedding (a queue drains in that time), 2 s after a failure (a restart, a lost route).
    fn default() -> Self {
        RetryPolicy {
            shed_backoff: Duration::from_millis(200),
            failure_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// How long to avoid an agent after it answered `status`.
    pub fn backoff(&self, status: &Status) -> Duration {
        if status.code() == tonic::Code::ResourceExhausted {
            self.shed_backoff
        } else {
            self.failure_backoff
        }
    }
}

/// Why no agent ran a hop.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    /// An agent refused the request itself (wrong input, say): another agent would refuse it too.
    #[error("agent {node} refused the request: {}", .status.message())]
    Refused {
        /// The agent.
        node: String,
        /// Its answer.
        status: Status,
    },
    /// Every candidate failed in a way another might not (or none was ready).
    #[error("no agent could run stage {stage} (tried: {}){}", tried_list(.tried), last_message(.last))]
    Exhausted {
        /// The stage.
        stage: u32,
        /// The agents tried, in order.
        tried: Vec<String>,
        /// The last failure.
        last: Option<Status>,
    },
    /// The request's deadline passed before an agent answered.
    #[error("the request's deadline passed")]
    DeadlineExceeded,
    /// The route table's stage is not on a remote tier (edge or cloud): no agent may be asked to run it.
    #[error("stage {stage} is not on the edge or cloud tier; no agent runs it")]
    BadStage {
        /// The stage.
        stage: u32,
    },
    /// An agent's address in the route table is not an address.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

fn tried_list(tried: &[String]) -> String {
    if tried.is_empty() {
        "none ready".to_string()
    } else {
        tried.join(", ")
    }
}

fn last_message(last: &Option<Status>) -> String {
    last.as_ref()
        .map(|s| format!("; last error: {}", s.message()))
        .unwrap_or_default()
}

/// One hop of the data path as a caller runs it: pick the least-loaded ready agent of a stage, send, and on a
/// retryable failure avoid that agent for a while ([`RetryPolicy`]) and try the next, each at most once.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// Load and health of the agents, as this process sees them.
    pub balancer: &'a Balancer,
    /// Connections to them.
    pub channels: &'a Channels,
    /// How long failed agents are avoided.
    pub retry: RetryPolicy,
    /// Cap on the tensor bytes of the answer.
    pub max_response_bytes: u64,
}

impl Hop<'_> {
    /// Runs `header.stage` (and the stages after it) on an agent of `stage`, from `table`'s nodes.
    pub async fn run(
        &self,
        table: &crate::v1::RouteTable,
        stage: &crate::v1::Stage,
        header: InferHeader,
        chunks: &[TensorChunk],
        deadline: Option<Instant>,
    ) -> Result<HopResult, HopError> {
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        while let Some(id) = self.balancer.pick(&stage.nodes, &tried).cloned() {
            tried.push(id.clone());
            let Some(node) = table.nodes.iter().find(|n| n.id == id) else {
                continue;
            };
            // The agent must prove it is a node of the stage's tier: an edge stage's tensors never reach a
            // cloud node (or anything else) that a route table, a stale cache or an attacker pointed at.
            let expect = match crate::convert::tier(stage.tier, "stage.tier") {
                Ok(tier) if tier != strata_core::Tier::Device => Expect::Node(tier),
                _ => return Err(HopError::BadStage { stage: stage.index }),
            };
            let channel = self.channels.get(&node.address, expect)?;
            let timeout = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(HopError::DeadlineExceeded),
                },
            };
            let _in_flight = self.balancer.start(&id);
            // One client span per attempt: the next agent's spans are its children.
            let span = tracing::info_span!(
                "hop",
                otel.name = format!("hop to stage {}", stage.index),
                otel.kind = "client",
                model = %header.model,
                version = crate::trace::int(header.version),
                plan = %header.plan_id,
                stage = i64::from(stage.index),
                tier = crate::convert::tier_name(stage.tier),
                node = %id,
                address = %node.address,
                bytes_up = crate::trace::int(chunks.iter().map(|c| c.data.len() as u64).sum()),
                bytes_down = tracing::field::Empty,
                elapsed_ms = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let attempt = infer(
                channel,
                header.clone(),
                chunks,
                timeout,
                self.max_response_bytes,
            )
            .instrument(span.clone())
            .await;
            match &attempt {
                Ok(hop) => {
                    span.record(
                        "bytes_down",
                        crate::trace::int(
                            hop.tensors.iter().map(|(_, t)| t.data.len() as u64).sum(),
                        ),
                    );
                    span.record("elapsed_ms", hop.elapsed_ms);
                }
                Err(_) => {
                    span.record("otel.status_code", "ERROR");
                }
            }
            match attempt {
                Ok(hop) => {
                    for r in &hop.reports {
                        if let Some(load) = &r.load {
                            self.balancer.report(&r.node_id, load);
                        }
                    }
                    return Ok(hop);
                }
                Err(status) if retryable(&status) => {
                    tracing::warn!(node = %id, code = ?status.code(), error = %status.message(), "agent failed; trying another");
                    self.balancer.mark_down(&id, self.retry.backoff(&status));
                    last = Some(status);
                }
                Err(status) => return Err(HopError::Refused { node: id, status }),
            }
        }
        Err(HopError::Exhausted {
            stage: stage.index,
            tried,
            last,
        })
    }
}

/// Splits a blob into [`crate::CHUNK_BYTES`] pieces, the first carrying the total size (no copy).
pub fn blob_chunks(bytes: bytes::Bytes) -> Vec<BlobChunk> {
    let size = bytes.len() as u64;
    let mut chunks = Vec::with_capacity(bytes.len() / crate::CHUNK_BYTES + 1);
    let mut offset = 0;
    loop {
        let end = (offset + crate::CHUNK_BYTES).min(bytes.len());
        chunks.push(BlobChunk {
            size: if offset == 0 { size } else { 0 },
            data: bytes.slice(offset..end),
        });
        offset = end;
        if offset >= bytes.len() {
            return chunks;
        }
    }
}

/// The metadata key a control-plane replica sets when it fetches a blob from a peer: the peer answers
/// from its own blob store only, so replicas that all lack a blob never ask each other in circles.
pub const PEER_HEADER: &str = "strata-peer";

/// The largest blob (model or stage file) a fetch accepts: the control plane's default model size limit.
pub const MAX_BLOB_BYTES: u64 = 4 << 30;

/// Fetches a blob by digest from any `Routes` server and checks that its content hashes to the digest
/// (`DATA_LOSS` when it does not).
pub async fn fetch_blob(channel: Channel, digest: &Digest) -> Result<Vec<u8>, Status> {
    fetch_blob_with(channel, digest, false).await
}

/// [`fetch_blob`], as a control-plane replica asks a peer (with [`PEER_HEADER`]) when `from_peer`.
pub async fn fetch_blob_with(
    channel: Channel,
    digest: &Digest,
    from_peer: bool,
) -> Result<Vec<u8>, Status> {
    let mut client = RoutesClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut request = tonic::Request::new(FetchBlobRequest {
        digest: digest.to_string(),
    });
    if from_peer {
        request.metadata_mut().insert(
            PEER_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    let mut stream = client.fetch_blob(request).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if bytes.is_empty() && chunk.size > 0 {
            // The size is the peer's word: reserve at most a chunk's worth ahead on it.
            bytes.reserve((chunk.size.min(MAX_BLOB_BYTES) as usize).min(crate::CHUNK_BYTES * 64));
        }
        if (bytes.len() + chunk.data.len()) as u64 > MAX_BLOB_BYTES {
            return Err(Status::resource_exhausted(format!(
                "blob {digest} is larger than the limit of {MAX_BLOB_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk.data);
    }
    if let Err(e) = digest.verify(&bytes) {
        return Err(Status::data_loss(format!(
            "blob {digest} arrived corrupted (its content hashes to {})",
            e.actual
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    #[test]
    fn shed_load_is_avoided_briefly_and_failures_longer() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.backoff(&Status::resource_exhausted("full")),
            Duration::from_millis(200)
        );
        assert_eq!(
            policy.backoff(&Status::unavailable("gone")),
            Duration::from_secs(2)
        );
        assert!(retryable(&Status::unavailable("gone")));
        let too_large = crate::error::status(
            tonic::Code::ResourceExhausted,
            "too large",
            crate::error::ErrorReason::RequestTooLarge,
        );
        assert!(
            !retryable(&too_large),
            "a request over the limits is refused anywhere"
        );
        assert!(!retryable(&Status::invalid_argument("bad input")));
        assert!(!retryable(&Status::deadline_exceeded("late")));
    }

    fn table(nodes: &[(&str, &str)]) -> v1::RouteTable {
        v1::RouteTable {
            nodes: nodes
                .iter()
                .map(|(id, address)| v1::NodeRef {
                    id: id.to_string(),
                    address: address.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn stage(nodes: &[&str]) -> v1::Stage {
        v1::Stage {
            index: 1,
            tier: v1::Tier::Edge as i32,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_hop_with_no_usable_agent_says_so_without_calling_anyone() {
        let (balancer, channels) = (
            Balancer::new(),
            Channels::new(Duration::from_millis(100), Transport::Plain),
        );
        let hop = Hop {
            balancer: &balancer,
            channels: &channels,
            retry: RetryPolicy::default(),
            max_response_bytes: 1 << 20,
        };
        let header = InferHeader::default();
        match hop
            .run(&table(&[]), &stage(&[]), header.clone(), &[], None)
            .await
        {
            Err(HopError::Exhausted {
                stage: 1,
                tried,
                last: None,
            }) => assert!(tried.is_empty()),
            other => panic!("no candidate: {other:?}"),
        }
        // A node the table does not list is tried (and skipped), never called.
        match hop
            .run(&table(&[]), &stage(&["ghost"]), header.clone(), &[], None)
            .await
        {
            Err(HopError::Exhausted {
                tried, last: None, ..
            }) => assert_eq!(tried, ["ghost"]),
            other => panic!("unlisted node: {other:?}"),
        }
        let passed = Some(Instant::now() - Duration::from_millis(1));
        let listed = table(&[("n1", "127.0.0.1:1")]);
        assert!(matches!(
            hop.run(&listed, &stage(&["n1"]), header.clone(), &[], passed)
                .await,
            Err(HopError::DeadlineExceeded)
        ));
        let bad = table(&[("n1", "not an address at all")]);
        assert!(matches!(
            hop.run(&bad, &stage(&["n1"]), header, &[], None).await,
            Err(HopError::Channel(_))
        ));
    }
}
