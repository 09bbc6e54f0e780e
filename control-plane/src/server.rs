//! Serving the control plane: the stores it runs on, the control loop, the election, the blob collector and
//! the gRPC server with health checks.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_blob::{BlobError, BlobStore, DirBlobStore};
use strata_proto::server::{MessageLimits, SidePorts};
use strata_proto::task::AbortOnDrop;
use strata_proto::v1::{control_server::ControlServer, routes_server::RoutesServer};
use tokio::net::TcpListener;

use crate::plane::ControlPlane;
use crate::service::ControlService;
use crate::store::embedded::EmbeddedStore;
use crate::store::{Store, StoreError};

/// The cluster profile used when none is given: glasses + phone-class edge + cloud GPU.
pub const DEFAULT_CLUSTER: &str = include_str!("../../examples/clusters/glasses-phone-cloud.toml");

/// The state store and the blob store a control plane runs on.
pub type Stores = (Arc<dyn Store>, Arc<dyn BlobStore>);

/// Why the stores could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be created.
    #[error("cannot create {}: {source}", .path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state store cannot be opened (or etcd cannot be used).
    #[error("cannot open the state store {what}: {source}")]
    State {
        /// Which store (`in DIR`, `etcd at HOSTS`).
        what: String,
        /// Why.
        source: StoreError,
    },
    /// The blob directory cannot be opened.
    #[error("cannot open the blob store in {}: {source}", .path.display())]
    Blobs {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: BlobError,
    },
}

/// Opens a blob directory.
pub fn open_blobs(path: &Path) -> Result<DirBlobStore, OpenError> {
    DirBlobStore::open(path).map_err(|source| OpenError::Blobs {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens the zero-setup stores under `dir`: `dir/state.redb`, and the blobs in `blobs` (default `dir/blobs/`).
pub fn open_embedded(dir: &Path, blobs: Option<&Path>) -> Result<Stores, OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let store =
        EmbeddedStore::open(&dir.join("state.redb")).map_err(|source| OpenError::State {
            what: format!("in {}", dir.display()),
            source,
        })?;
    let blobs = match blobs {
        Some(path) => open_blobs(path)?,
        None => open_blobs(&dir.join("blobs"))?,
    };
    Ok((Arc::new(store), Arc::new(blobs)))
}

/// Opens the stores of a replica on etcd: the state in etcd, the blobs in `blob_dir`, fetched from the
/// other replicas when missing ([`crate::blob::PeerBlobStore`], dialling them under `transport`).
pub async fn open_etcd(
    config: crate::store::EtcdConfig,
    blob_dir: &Path,
    transport: strata_proto::transport::Transport,
) -> Result<Stores, OpenError> {
    let what = format!("etcd at {}", config.endpoints.join(","));
    let store: Arc<dyn Store> = Arc::new(
        crate::store::EtcdStore::connect(config)
            .await
            .map_err(|source| OpenError::State { what, source })?,
    );
    let local = open_blobs(blob_dir)?;
    let blobs = crate::blob::PeerBlobStore::new(Arc::new(local), store.clone(), transport);
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

/// Serves the control plane on `listener` until `shutdown` completes, running alongside it the election, the
/// control loop, the route cache and the blob collector.
pub async fn serve(
    plane: Arc<ControlPlane>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(plane, listener, SidePorts::default(), shutdown).await
}

/// [`serve`], with the side ports: the health service in plain HTTP/2 on `side.health` (`--health-listen`:
/// for probes that cannot speak TLS, such as Kubernetes' `grpc` probe; `strata.v1.Control` there follows the
/// store too), and the Prometheus metrics on `side.metrics` (`--metrics-listen`).
pub async fn serve_with(
    plane: Arc<ControlPlane>,
    listener: TcpListener,
    side: SidePorts,
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
    let election = AbortOnDrop::spawn(crate::replica::run(plane.clone(), address));
    let control_loop = AbortOnDrop::spawn(crate::reconcile::run(plane.clone()));
    let route_cache = AbortOnDrop::spawn(
        plane
            .route_cache
            .clone()
            .run(plane.store.clone(), plane.store_reachable.subscribe()),
    );
    let collector = AbortOnDrop::spawn(crate::blob::run_collector(plane.clone()));
    let revocations = AbortOnDrop::spawn(crate::identities::run_refresh(plane.clone()));
    let (reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopping) = strata_proto::Stopping::new();
    let service = ControlService::new(plane.clone(), stopping.clone());
    let metrics = side.metrics.map(|listener| {
        AbortOnDrop::spawn(strata_proto::metrics::serve(
            listener,
            plane.metrics().clone(),
        ))
    });
    let probes = side.health.map(|listener| {
        let router = tonic::transport::Server::builder().add_service(health.clone());
        AbortOnDrop::spawn(strata_proto::server::run_probes(
            router,
            listener,
            stopping.clone(),
        ))
    });
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    // Not ready until the store has answered once: a replica started while its store is down must not take
    // traffic as if it could write.
    report_store(&reporter, plane.store_reachable()).await;
    reporter.set_serving::<RoutesServer<ControlService>>().await;
    // `strata.v1.Control` is NOT_SERVING while the store is unreachable (a readiness signal); the server
    // as a whole ("") stays SERVING: it is alive, and waits for the store.
    let mut reachable = plane.store_reachable.subscribe();
    let health_task = AbortOnDrop::spawn(async move {
        while reachable.changed().await.is_ok() {
            let up = *reachable.borrow_and_update();
            report_store(&reporter, up).await;
        }
    });
    let limits = strata_proto::server::ServerLimits {
        max_streams_per_connection: plane.settings.max_streams_per_connection,
    };
    let router = strata_proto::server::builder_with(limits)
        .add_service(health)
        .add_service(ControlServer::new(service.clone()).with_limits())
        .add_service(RoutesServer::new(service).with_limits());
    let transport = plane.settings.transport.clone();
    let result = strata_proto::server::run(router, listener, transport, shutdown, &stopping).await;
    drop((
        control_loop,
        election,
        health_task,
        route_cache,
        collector,
        revocations,
        probes,
        metrics,
    ));
    crate::replica::step_down(&plane).await;
    Ok(result?)
}

/// `strata.v1.Control`'s health: SERVING while the store answers, NOT_SERVING while it does not.
async fn report_store(reporter: &tonic_health::server::HealthReporter, up: bool) {
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
