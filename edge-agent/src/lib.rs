//! Strata's node agent, one binary for edge boxes and cloud nodes: it registers with the control plane, keeps
//! its lease, fetches and loads the stages assigned to its tier (content hash checked), serves inference,
//! forwards to the next tier's least-loaded agent, sheds load with `RESOURCE_EXHAUSTED` instead of queueing
//! without bound, and drains in-flight requests on shutdown.

#![forbid(unsafe_code)]

pub mod agent;
pub mod serve;
pub mod stages;

use std::future::Future;
use std::sync::Arc;

use strata_proto::v1::{inference_server::InferenceServer, routes_server::RoutesServer};
use tokio::net::TcpListener;

pub use agent::{Agent, AgentConfig};
use serve::AgentService;

/// Serves an agent on `listener` until `shutdown` completes: then deregisters (so routes drop it at once),
/// reports NOT_SERVING, stops accepting, and waits for in-flight requests to finish.
pub async fn serve(
    agent: Arc<Agent>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let session = tokio::spawn(agent.clone().control_session());
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<InferenceServer<AgentService>>()
        .await;
    let (stop, stopping) = strata_proto::Stopping::new();
    let service = AgentService::new(agent.clone(), stopping.clone());
    let max = strata_proto::MAX_MESSAGE_BYTES;
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
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(health)
        .add_service(
            InferenceServer::new(service.clone())
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
    session.abort();
    result
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
