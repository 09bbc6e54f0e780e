//! The client side of one inference hop: send a header and tensor chunks, collect model outputs and stage
//! reports. Used by the device SDK (first hop) and by agents (forwarding).

use std::time::Duration;

use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::v1::inference_client::InferenceClient;
use crate::v1::routes_client::RoutesClient;
use crate::v1::{
    BlobChunk, FetchBlobRequest, InferHeader, InferRequest, StageReport, TensorChunk,
    infer_request, infer_response,
};
use crate::{MAX_MESSAGE_BYTES, TensorAssembler, tensor_chunks};
use strata_runtime::TensorData;

/// What a hop returned.
#[derive(Debug)]
pub struct HopResult {
    /// Model outputs computed by this and later stages.
    pub tensors: Vec<(String, TensorData)>,
    /// One report per stage run, innermost first.
    pub reports: Vec<StageReport>,
}

/// Splits tensors into chunks once, so retries re-send them without copying.
pub fn chunks_of(tensors: Vec<(String, TensorData)>) -> Vec<TensorChunk> {
    tensors
        .into_iter()
        .flat_map(|(name, t)| tensor_chunks(&name, t))
        .collect()
}

/// A lazily connecting channel to an agent or control plane (`host:port` or a URL), tuned for large
/// activations (wide HTTP/2 windows) and quick failure detection (short connect timeout).
pub fn channel(address: &str, connect_timeout: Duration) -> Result<Channel, String> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad address \"{address}\": {e}"))?;
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Channels by address, created on first use and shared afterwards (one HTTP/2 connection per peer).
#[derive(Debug, Clone)]
pub struct Channels {
    connect_timeout: Duration,
    cache: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Channel>>>,
}

impl Channels {
    /// An empty cache whose channels give up connecting after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Channels {
        Channels {
            connect_timeout,
            cache: Default::default(),
        }
    }

    /// The channel to `address` (see [`channel`]).
    pub fn get(&self, address: &str) -> Result<Channel, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(address) {
            return Ok(c.clone());
        }
        let c = channel(address, self.connect_timeout)?;
        cache.insert(address.to_string(), c.clone());
        Ok(c)
    }
}

/// Runs stage `header.stage` (and those after it) on the agent behind `channel`.
pub async fn infer(
    channel: Channel,
    header: InferHeader,
    chunks: &[TensorChunk],
    timeout: Option<Duration>,
    max_bytes: u64,
) -> Result<HopResult, Status> {
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
    Ok(HopResult { tensors, reports })
}

/// Whether a failed hop may succeed on another agent (or locally): the agent is gone, overloaded, or failed
/// for its own reasons, as opposed to the request being wrong.
pub fn retryable(status: &Status) -> bool {
    use tonic::Code;
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

/// Fetches a blob by digest from any `Routes` server and checks that its content hashes to the digest.
pub async fn fetch_blob(channel: Channel, digest: &str) -> Result<Vec<u8>, Status> {
    fetch_blob_with(channel, digest, false).await
}

/// [`fetch_blob`], as a control-plane replica asks a peer (with [`PEER_HEADER`]) when `from_peer`.
pub async fn fetch_blob_with(
    channel: Channel,
    digest: &str,
    from_peer: bool,
) -> Result<Vec<u8>, Status> {
    use sha2::Digest;
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
            bytes.reserve(chunk.size as usize);
        }
        bytes.extend_from_slice(&chunk.data);
    }
    let actual = hex::encode(sha2::Sha256::digest(&bytes));
    if actual != digest {
        return Err(Status::data_loss(format!(
            "blob {digest} arrived corrupted (its content hashes to {actual})"
        )));
    }
    Ok(bytes)
}
