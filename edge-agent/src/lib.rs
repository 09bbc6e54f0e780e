//! Strata's node agent, one binary for edge boxes and cloud nodes: it registers with the control plane, keeps
//! its lease, fetches and loads the stages assigned to its tier (content hash checked), serves inference,
//! forwards to the next tier's least-loaded agent, sheds load with `RESOURCE_EXHAUSTED` instead of queueing
//! without bound, and drains in-flight requests on shutdown. Besides Strata's own API it speaks the Open
//! Inference Protocol v2 over gRPC ([`serve::OipService`]), so `tritonclient.grpc` calls it unchanged.

#![forbid(unsafe_code)]

pub mod agent;
pub mod backend;
pub mod batcher;
pub mod join;
pub mod metrics;
pub mod serve;
pub mod stages;

use std::future::Future;
use std::sync::Arc;

use strata_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use strata_proto::server::MessageLimits;
pub use strata_proto::server::SidePorts;
use strata_proto::task::AbortOnDrop;
use strata_proto::v1::{inference_server::InferenceServer, routes_server::RoutesServer};
use tokio::net::TcpListener;

pub use agent::{Agent, AgentConfig};
use serve::{AgentService, OipService};

/// Serves an agent on `listener` until `shutdown` completes: then deregisters (so routes drop it at once),
/// reports NOT_SERVING, stops accepting, and waits for in-flight requests to finish.
pub async fn serve(
    agent: Arc<Agent>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with(agent, listener, SidePorts::default(), shutdown).await
}

/// [`serve`], with the side ports: the health service in plain HTTP/2 on `side.health` (`--health-listen`:
/// for probes that cannot speak TLS, such as Kubernetes' `grpc` probe) until the drain begins, and the
/// Prometheus metrics on `side.metrics` (`--metrics-listen`) until the agent stops. In-flight requests get
/// the agent's longest request time (`--max-request-ms`) to finish.
pub async fn serve_with(
    agent: Arc<Agent>,
    listener: TcpListener,
    side: SidePorts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let _session = AbortOnDrop::spawn(agent.clone().run_control_session());
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<InferenceServer<AgentService>>()
        .await;
    let (stop, stopping) = strata_proto::Stopping::new();
    let stopping = stopping.with_drain_timeout(agent.config.max_request_time);
    let service = AgentService::new(agent.clone(), stopping.clone());
    let _metrics = side.metrics.map(|listener| {
        AbortOnDrop::spawn(strata_proto::metrics::serve(
            listener,
            agent.metrics().clone(),
        ))
    });
    let _probes = side.health.map(|listener| {
        let router = tonic::transport::Server::builder().add_service(health.clone());
        AbortOnDrop::spawn(strata_proto::server::run_probes(
            router,
            listener,
            stopping.clone(),
        ))
    });
    let drain_agent = agent.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: deregistering, then draining in-flight requests");
        reporter
            .set_not_serving::<InferenceServer<AgentService>>()
            .await;
        drain_agent.deregister().await;
        let _ = stop.send(true);
    };
    let limits = strata_proto::server::ServerLimits {
        max_streams_per_connection: agent.config.max_streams_per_connection,
    };
    // An Open Inference Protocol call carries all its tensors in one message: it may be as large as the
    // agent's cap on a request's tensor bytes (--max-request-mib), plus room for the rest of the message.
    let oip_message_bytes = usize::try_from(agent.config.max_request_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    let router = strata_proto::server::builder_with(limits)
        .add_service(health)
        .add_service(InferenceServer::new(service.clone()).with_limits())
        .add_service(
            GrpcInferenceServiceServer::new(OipService::new(service.clone()))
                .max_decoding_message_size(oip_message_bytes)
                .max_encoding_message_size(oip_message_bytes),
        )
        .add_service(RoutesServer::new(service).with_limits());
    let transport = agent.config.transport.clone();
    strata_proto::server::run(router, listener, transport, shutdown, &stopping).await
}
