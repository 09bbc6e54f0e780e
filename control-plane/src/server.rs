//! Serving the control plane: the embedded stores, the control loop and the gRPC server with health checks.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use strata_proto::v1::{control_server::ControlServer, routes_server::RoutesServer};
use tokio::net::TcpListener;

use crate::blob::{BlobStore, DirBlobStore};
use crate::plane::ControlPlane;
use crate::service::ControlService;
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;

/// The cluster profile used when none is given: glasses + phone-class edge + cloud GPU.
pub const DEFAULT_CLUSTER: &str = include_str!("../../examples/clusters/glasses-phone-cloud.toml");

/// The state store and the blob store a control plane runs on.
pub type Stores = (Arc<dyn Store>, Arc<dyn BlobStore>);

/// Opens the zero-setup stores under `dir`: `dir/state.redb` and `dir/blobs/`.
pub fn open_embedded(dir: &Path) -> Result<Stores, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let store = EmbeddedStore::open(&dir.join("state.redb"))
        .map_err(|e| format!("cannot open the state store in {}: {e}", dir.display()))?;
    let blobs = DirBlobStore::open(dir.join("blobs"))
        .map_err(|e| format!("cannot open the blob store in {}: {e}", dir.display()))?;
    Ok((Arc::new(store), Arc::new(blobs)))
}

/// Opens the stores of a replica on etcd: the state in etcd, the blobs in `blob_dir`, fetched from the
/// other replicas when missing ([`crate::blob::PeerBlobStore`]).
pub async fn open_etcd(
    config: crate::store::EtcdConfig,
    blob_dir: &Path,
) -> Result<Stores, String> {
    let endpoints = config.endpoints.join(",");
    let store: Arc<dyn Store> = Arc::new(
        crate::store::EtcdStore::connect(config)
            .await
            .map_err(|e| format!("cannot use etcd at {endpoints}: {e}"))?,
    );
    let local = DirBlobStore::open(blob_dir)
        .map_err(|e| format!("cannot open the blob store in {}: {e}", blob_dir.display()))?;
    let blobs = crate::blob::PeerBlobStore::new(Arc::new(local), store.clone());
    Ok((store, Arc::new(blobs)))
}

/// Why [`serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener's address cannot be read.
    #[error("cannot read the listening address: {0}")]
    Listener(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the control plane on `listener` until `shutdown` completes, running the control loop alongside.
pub async fn serve(
    plane: Arc<ControlPlane>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let address = match &plane.settings.advertise {
        Some(a) => a.clone(),
        None => {
            let bound = listener.local_addr()?;
            if bound.ip().is_unspecified() {
                format!("127.0.0.1:{}", bound.port())
            } else {
                bound.to_string()
            }
        }
    };
    let election = tokio::spawn(crate::replica::run(plane.clone(), address));
    let control_loop = tokio::spawn(crate::reconcile::run(plane.clone()));
    let route_cache = tokio::spawn(plane.route_cache.clone().run(plane.store.clone()));
    let (reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopping) = strata_proto::Stopping::new();
    let plane_for_exit = plane.clone();
    let service = ControlService::new(plane, stopping.clone());
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    reporter
        .set_serving::<ControlServer<ControlService>>()
        .await;
    reporter.set_serving::<RoutesServer<ControlService>>().await;
    // `strata.v1.Control` is NOT_SERVING while the store is unreachable (a readiness signal); the server
    // as a whole ("") stays SERVING: it is alive, and waits for the store.
    let mut reachable = plane_for_exit.store_reachable.subscribe();
    let health_task = tokio::spawn(async move {
        while reachable.changed().await.is_ok() {
            let up = *reachable.borrow_and_update();
            if up {
                reporter
                    .set_serving::<ControlServer<ControlService>>()
                    .await;
            } else {
                reporter
                    .set_not_serving::<ControlServer<ControlService>>()
                    .await;
            }
        }
    });
    let max = strata_proto::MAX_MESSAGE_BYTES;
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(
            ControlServer::new(service.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            RoutesServer::new(service)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(strata_proto::incoming(listener), shutdown);
    let result = stopping.drain(server).await;
    control_loop.abort();
    election.abort();
    health_task.abort();
    route_cache.abort();
    crate::replica::step_down(&plane_for_exit).await;
    Ok(result?)
}
