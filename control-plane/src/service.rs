//! gRPC glue: the `Control` and `Routes` services over a [`ControlPlane`].

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use strata_proto::auth;
use strata_proto::v1::{self, control_server::Control, routes_server::Routes};
use tonic::{Request, Response, Status, Streaming};

use crate::error::ControlError;
use crate::plane::ControlPlane;
use crate::records::ModelRecord;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC services of the control plane.
#[derive(Clone)]
pub struct ControlService {
    plane: Arc<ControlPlane>,
    stopping: strata_proto::Stopping,
}

impl ControlService {
    /// Wraps a control plane; watch streams end when `stopping` fires.
    pub fn new(plane: Arc<ControlPlane>, stopping: strata_proto::Stopping) -> Self {
        ControlService { plane, stopping }
    }

    /// The CA bundle this replica hands out with certificates (empty without a CA).
    fn ca_pem(&self) -> String {
        self.plane
            .settings
            .ca
            .as_ref()
            .map(|ca| ca.cert_pem().to_string())
            .unwrap_or_default()
    }

    /// Whether `caller` may fetch blob `digest`: a node only the stages assigned to it and the device
    /// stages it caches for devices, a device only device stages, a replica (or an administrator)
    /// anything; only a replica may ask as a peer (answered from the local blobs only).
    async fn may_fetch(
        &self,
        caller: &auth::Caller,
        digest: &strata_core::Digest,
        from_peer: bool,
    ) -> Result<(), Status> {
        use auth::Class;
        const METHOD: &str = "FetchBlob";
        if from_peer && !caller.is(Class::Controller) {
            return Err(auth::deny(
                caller,
                METHOD,
                format_args!(
                    "only a control-plane replica may ask as a peer ({}); {caller} is not one",
                    strata_proto::call::PEER_HEADER
                ),
            ));
        }
        if caller.is(Class::Controller) || caller.is(Class::Admin) {
            return Ok(());
        }
        let device_stage = self
            .plane
            .route_cache
            .has_stage(digest.as_str(), strata_core::Tier::Device);
        let allowed = match caller.identity() {
            Some(id) if id.tier().is_some() => {
                device_stage || {
                    let nodes = self.plane.nodes_of(&id.dns_name()).await?;
                    let assigned = self.plane.assignments.borrow();
                    nodes.iter().any(|node| {
                        assigned.get(node).is_some_and(|stages| {
                            stages.iter().any(|s| s.digest == digest.as_str())
                        })
                    })
                }
            }
            Some(_) => device_stage,
            None => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(auth::deny(
                caller,
                METHOD,
                format_args!(
                    "blob {digest} is not a stage {caller} may fetch (not assigned to it, and no device stage)"
                ),
            ))
        }
    }

    async fn model_info(&self, record: ModelRecord) -> v1::ModelInfo {
        let (state, state_message) = match self.plane.plans(&record.name).await {
            Ok(Some(p)) if p.version == record.version => match p.failed {
                Some(why) => (v1::ModelState::Failed, why),
                None => (v1::ModelState::Ready, String::new()),
            },
            Ok(_) => (v1::ModelState::Planning, String::new()),
            Err(e) => (v1::ModelState::Unknown, e.to_string()),
        };
        let routes = self.plane.route_table(&record.name).await.ok();
        v1::ModelInfo {
            name: record.name,
            version: record.version,
            digest: record.digest.to_string(),
            size_bytes: record.size_bytes,
            privacy: v1::Privacy::from(record.privacy) as i32,
            input_shapes: record.input_shapes,
            state: state as i32,
            state_message,
            routes,
            batching: record.batching.to_wire(),
        }
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let caller = auth::caller(&request);
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("register: missing node spec"))?;
        let (node_id, ttl) = self.plane.register(spec, &caller).await.inspect_err(|e| {
            if matches!(e, ControlError::PermissionDenied(_)) {
                tracing::warn!(%caller, error = %e, "registration refused");
            }
        })?;
        Ok(Response::new(v1::RegisterResponse {
            node_id,
            ttl_ms: ttl.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let caller = auth::caller(&request);
        let ttl = self
            .plane
            .heartbeat(request.into_inner(), &caller)
            .await
            .inspect_err(|e| denied(&caller, "Heartbeat", e))?;
        Ok(Response::new(v1::HeartbeatResponse {
            ttl_ms: ttl.as_millis() as u64,
            revoked_identities: self.plane.revoked_names(),
        }))
    }

    async fn deregister(
        &self,
        request: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        let caller = auth::caller(&request);
        self.plane
            .deregister(&request.into_inner().node_id, &caller)
            .await
            .inspect_err(|e| denied(&caller, "Deregister", e))?;
        Ok(Response::new(v1::DeregisterResponse {}))
    }

    async fn list_nodes(
        &self,
        _request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let nodes = self.plane.nodes().await?;
        let nodes = nodes
            .into_iter()
            .map(|n| v1::NodeInfo {
                load: self.plane.load_of(&n.id),
                last_seen_ms: self.plane.last_seen_ms(&n.id).unwrap_or(0),
                stage_ms: self.plane.stage_ms_of(&n.id).into_iter().collect(),
                stage_runs: self.plane.stage_runs_of(&n.id).into_iter().collect(),
                ready: n.ready.iter().map(ToString::to_string).collect(),
                spec: Some(v1::NodeSpec {
                    tier: v1::Tier::from(n.tier) as i32,
                    arch: n.arch,
                    cores: n.cores,
                    memory_bytes: n.memory_bytes,
                    backends: n.backends,
                    address: n.address,
                    name: n.name,
                }),
                id: n.id,
            })
            .collect();
        Ok(Response::new(v1::ListNodesResponse { nodes }))
    }

    async fn push_model(
        &self,
        request: Request<Streaming<v1::PushModelRequest>>,
    ) -> Result<Response<v1::PushModelResponse>, Status> {
        let mut stream = request.into_inner();
        let meta = match stream.next().await {
            Some(Ok(v1::PushModelRequest {
                part: Some(v1::push_model_request::Part::Meta(meta)),
            })) => meta,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "push: the first message must carry the model's meta (name, digest, size)",
                ));
            }
        };
        let limit = self.plane.settings.max_model_bytes;
        if meta.size_bytes > limit {
            return Err(ControlError::TooLarge(format!(
                "model \"{}\" is {} bytes, over this control plane's limit of {limit} bytes \
                 (--max-model-mib); nothing was stored",
                meta.name, meta.size_bytes
            ))
            .into());
        }
        let mut data = BytesMut::with_capacity(meta.size_bytes as usize);
        while let Some(message) = stream.next().await {
            match message?.part {
                Some(v1::push_model_request::Part::Data(chunk)) => {
                    if (data.len() + chunk.len()) as u64 > meta.size_bytes {
                        return Err(Status::invalid_argument(format!(
                            "model \"{}\": more data than the declared {} bytes; nothing was stored",
                            meta.name, meta.size_bytes
                        )));
                    }
                    data.extend_from_slice(&chunk);
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "push: only data may follow the meta message",
                    ));
                }
            }
        }
        if data.len() as u64 != meta.size_bytes {
            return Err(Status::invalid_argument(format!(
                "model \"{}\": upload ended after {} of {} bytes; nothing was stored",
                meta.name,
                data.len(),
                meta.size_bytes
            )));
        }
        let record = self.plane.push_model(meta, data.freeze()).await?;
        let model = self.model_info(record).await;
        Ok(Response::new(v1::PushModelResponse { model: Some(model) }))
    }

    async fn list_models(
        &self,
        _request: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        let mut models = Vec::new();
        for record in self.plane.models().await? {
            models.push(self.model_info(record).await);
        }
        Ok(Response::new(v1::ListModelsResponse { models }))
    }

    async fn get_model(
        &self,
        request: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        let record = self.plane.model(&request.into_inner().name).await?;
        Ok(Response::new(self.model_info(record).await))
    }

    async fn delete_model(
        &self,
        request: Request<v1::DeleteModelRequest>,
    ) -> Result<Response<v1::DeleteModelResponse>, Status> {
        self.plane.delete_model(&request.into_inner().name).await?;
        Ok(Response::new(v1::DeleteModelResponse {}))
    }

    type WatchAssignmentsStream = BoxStream<v1::Assignments>;

    async fn watch_assignments(
        &self,
        request: Request<v1::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let caller = auth::caller(&request);
        let node_id = request.into_inner().node_id;
        self.plane
            .check_owner(&node_id, &caller)
            .await
            .inspect_err(|e| denied(&caller, "WatchAssignments", e))?;
        let mut rx = self.plane.assignments.subscribe();
        let stream = async_stream(move |tx| async move {
            let mut last: Option<Vec<v1::StageAssignment>> = None;
            loop {
                // Nothing until a pass has assigned this node: a node just registered (or resumed on a
                // replica that has not computed its assignments yet) must not be told it holds nothing, or it
                // would unload every stage it serves.
                let current = rx.borrow_and_update().get(&node_id).cloned();
                if let Some(current) = current
                    && last.as_ref() != Some(&current)
                {
                    if tx
                        .send(Ok(v1::Assignments {
                            stages: current.clone(),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last = Some(current);
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        let stream = self.plane.metrics.watched("assignments", stream);
        Ok(Response::new(self.stopping.bound(stream)))
    }

    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let r = request.into_inner();
        let tier = strata_proto::convert::tier(r.tier, "tier")
            .map_err(strata_proto::convert::WireError::into_status)?;
        let ttl = match r.ttl_ms {
            0 => crate::tokens::DEFAULT_TTL,
            ms => std::time::Duration::from_millis(ms),
        };
        let (token, record) = self
            .plane
            .create_token(tier, ttl, r.uses, r.description)
            .await?;
        Ok(Response::new(v1::CreateTokenResponse {
            token: token.to_string(),
            info: Some(token_info(record)),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let tokens = self.plane.tokens().await?;
        Ok(Response::new(v1::ListTokensResponse {
            tokens: tokens.into_iter().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        self.plane.revoke_token(&request.into_inner().id).await?;
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }

    async fn get_ca(
        &self,
        _request: Request<v1::GetCaRequest>,
    ) -> Result<Response<v1::GetCaResponse>, Status> {
        let Some(ca) = &self.plane.settings.ca else {
            return Err(ControlError::FailedPrecondition(
                "this control plane admits no joining nodes (started without --ca-dir)".into(),
            )
            .into());
        };
        let ca_pem = ca.cert_pem().to_string();
        Ok(Response::new(v1::GetCaResponse { ca_pem }))
    }

    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let caller = auth::caller(&request);
        let r = request.into_inner();
        let tier = strata_proto::convert::tier(r.tier, "tier")
            .map_err(strata_proto::convert::WireError::into_status)?;
        let cert_pem = self
            .plane
            .join(&r.token, tier, &r.name, &r.csr_pem)
            .await
            .inspect_err(|e| denied(&caller, "Join", e))?;
        Ok(Response::new(v1::JoinResponse {
            cert_pem,
            ca_pem: self.ca_pem(),
        }))
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let caller = auth::caller(&request);
        let cert_pem = self
            .plane
            .renew(&caller, &request.into_inner().csr_pem)
            .await
            .inspect_err(|e| denied(&caller, "Renew", e))?;
        Ok(Response::new(v1::RenewResponse {
            cert_pem,
            ca_pem: self.ca_pem(),
        }))
    }

    async fn revoke_identity(
        &self,
        request: Request<v1::RevokeIdentityRequest>,
    ) -> Result<Response<v1::RevokeIdentityResponse>, Status> {
        let caller = auth::caller(&request);
        let r = request.into_inner();
        let identity = crate::identities::parse_identity(&r.identity)?;
        let nodes_removed = self
            .plane
            .revoke_identity(&identity, r.reason, &caller)
            .await?;
        Ok(Response::new(v1::RevokeIdentityResponse { nodes_removed }))
    }

    async fn list_revoked(
        &self,
        _request: Request<v1::ListRevokedRequest>,
    ) -> Result<Response<v1::ListRevokedResponse>, Status> {
        let revoked = self
            .plane
            .revoked()
            .await?
            .into_iter()
            .map(|r| v1::RevokedIdentity {
                identity: r.identity,
                revoked_unix_ms: r.revoked_unix_ms,
                reason: r.reason,
                by: r.by,
            })
            .collect();
        Ok(Response::new(v1::ListRevokedResponse { revoked }))
    }
}

/// A token as listed.
fn token_info(r: crate::tokens::TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        id: r.id,
        tier: v1::Tier::from(r.tier) as i32,
        expires_unix_ms: r.expires_unix_ms,
        uses_left: r.uses_left,
        description: r.description,
        created_unix_ms: r.created_unix_ms,
    }
}

/// Logs a refusal of `caller` (the status says why).
fn denied(caller: &auth::Caller, method: &str, e: &ControlError) {
    if matches!(e, ControlError::PermissionDenied(_)) {
        tracing::warn!(%caller, method, error = %e, "permission denied");
    }
}

/// A stream fed by a task; the task ends when the receiver is dropped.
fn async_stream<T, F, Fut>(f: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl Routes for ControlService {
    async fn get_routes(
        &self,
        request: Request<v1::GetRoutesRequest>,
    ) -> Result<Response<v1::RouteTable>, Status> {
        let name = request.into_inner().model;
        Ok(Response::new(self.plane.route_table(&name).await?))
    }

    type WatchRoutesStream = BoxStream<v1::RouteUpdate>;

    async fn watch_routes(
        &self,
        request: Request<v1::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let models = request.into_inner().models;
        let wanted = move |name: &str| models.is_empty() || models.iter().any(|m| m == name);
        let cache = self.plane.route_cache.clone();
        if !cache.loaded() {
            // A snapshot now would say "no models"; watchers would drop what they hold.
            return Err(strata_proto::error::status(
                tonic::Code::Unavailable,
                "this control plane has not read the route tables from its store yet; retry",
                strata_proto::error::ErrorReason::StoreUnavailable,
            ));
        }
        let stream = async_stream(move |tx| async move {
            // A snapshot of every table, then each change; a watcher that fell behind gets a new snapshot.
            loop {
                let (tables, mut updates) = cache.subscribe();
                for table in tables {
                    let snapshot = v1::RouteUpdate::snapshot((*table).clone());
                    if wanted(&table.model) && tx.send(Ok(snapshot)).await.is_err() {
                        return;
                    }
                }
                if tx.send(Ok(v1::RouteUpdate::snapshot_end())).await.is_err() {
                    return;
                }
                loop {
                    let update = tokio::select! {
                        update = updates.recv() => update,
                        () = tx.closed() => return,
                    };
                    match update {
                        Ok(crate::route_cache::CacheEvent::Table(table)) => {
                            let change = v1::RouteUpdate::change((*table).clone());
                            if wanted(&table.model) && tx.send(Ok(change)).await.is_err() {
                                return;
                            }
                        }
                        // The set was listed again, or this watcher fell behind: a new snapshot.
                        Ok(crate::route_cache::CacheEvent::Resync)
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        let stream = self.plane.metrics.watched("routes", stream);
        Ok(Response::new(self.stopping.bound(stream)))
    }

    type FetchBlobStream = BoxStream<v1::BlobChunk>;

    async fn fetch_blob(
        &self,
        request: Request<v1::FetchBlobRequest>,
    ) -> Result<Response<Self::FetchBlobStream>, Status> {
        let from_peer = request
            .metadata()
            .contains_key(strata_proto::call::PEER_HEADER);
        let caller = auth::caller(&request);
        let digest = strata_proto::convert::digest(&request.into_inner().digest, "digest")
            .map_err(strata_proto::convert::WireError::into_status)?;
        self.may_fetch(&caller, &digest, from_peer).await?;
        let blobs = &self.plane.blobs;
        let found = if from_peer {
            blobs.get_local(&digest).await
        } else {
            blobs.get(&digest).await
        };
        let bytes = found
            .map_err(ControlError::from)?
            .ok_or_else(|| Status::not_found(format!("no blob with digest {digest}")))?;
        Ok(Response::new(blob_stream(bytes)))
    }
}

/// Streams a blob in [`strata_proto::CHUNK_BYTES`] pieces, the first carrying the total size.
pub fn blob_stream(bytes: Bytes) -> BoxStream<v1::BlobChunk> {
    let chunks = strata_proto::call::blob_chunks(bytes).into_iter().map(Ok);
    Box::pin(futures::stream::iter(chunks))
}
