//! Agents against a hostile client: a real in-process cluster (control plane on an embedded store, one edge
//! agent, one cloud agent, over loopback gRPC), and a client that talks to the agents directly instead of
//! through the device SDK. Every attack is refused with the right status before any data is accepted, and
//! nothing is served or recorded; a correct request on the same route is served, so the refusals are the
//! agents' judgement and not a broken route.

use std::time::{Duration, Instant};

use strata_control_plane::{ControlPlane, Settings, server};
use strata_core::{Digest, Tier};
use strata_edge_agent::{Agent, AgentConfig};
use strata_proto::v1;
use strata_runtime::TensorData;
use support::two_step_model;
use tokio::net::TcpListener;
use tonic::transport::Channel;

mod support;

struct Cluster3 {
    plane: std::sync::Arc<ControlPlane>,
    edge: String,
    cloud: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Cluster3 {
    start_with(|_, _| {}).await
}

/// [`start`], with each agent's settings adjusted (given its tier).
async fn start_with(adjust: impl Fn(Tier, &mut AgentConfig)) -> Cluster3 {
    let dir = tempfile::tempdir().expect("temp dir");
    let (state, blobs) =
        server::open_embedded(&dir.path().join("control-plane"), None).expect("stores");
    let plane = ControlPlane::new(state, blobs, Settings::new(support::cluster(true)));
    let cp_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cp_addr = cp_listener.local_addr().expect("address").to_string();
    tokio::spawn(server::serve(
        plane.clone(),
        cp_listener,
        std::future::pending::<()>(),
    ));
    let mut addresses = Vec::new();
    for tier in [Tier::Edge, Tier::Cloud] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let mut config = AgentConfig::new(
            tier,
            vec![cp_addr.clone()],
            address.clone(),
            dir.path().join(tier.name()),
        );
        config.name = format!("test-{tier}");
        adjust(tier, &mut config);
        let agent = Agent::new(config).expect("agent");
        tokio::spawn(strata_edge_agent::serve(
            agent,
            listener,
            std::future::pending::<()>(),
        ));
        addresses.push(address);
    }
    let cloud = addresses.pop().expect("cloud");
    let edge = addresses.pop().expect("edge");
    Cluster3 {
        plane,
        edge,
        cloud,
        _dir: dir,
    }
}

async fn channel(address: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the agent accepts connections")
}

async fn push(plane: &ControlPlane, name: &str, privacy: v1::Privacy) {
    let bytes = two_step_model();
    let meta = v1::ModelMeta {
        name: name.into(),
        digest: Digest::of(&bytes).to_string(),
        size_bytes: bytes.len() as u64,
        privacy: privacy as i32,
        input_shapes: vec![],
        batching: None,
    };
    plane
        .push_model(meta, bytes.into())
        .await
        .unwrap_or_else(|e| panic!("push {name}: {e}"));
}

/// The table of `model` as the agent at `address` holds it, once one of its plans has a stage on `tier` that
/// a ready agent serves.
async fn served_table(
    address: &str,
    model: &str,
    tier: Tier,
) -> (v1::RouteTable, v1::Plan, v1::Stage) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut routes = v1::routes_client::RoutesClient::new(channel(address).await);
    loop {
        if let Ok(table) = routes
            .get_routes(v1::GetRoutesRequest {
                model: model.into(),
            })
            .await
        {
            let table = table.into_inner();
            let found = table.plans.iter().find_map(|p| {
                p.stages
                    .iter()
                    .find(|s| s.tier == v1::Tier::from(tier) as i32 && !s.nodes.is_empty())
                    .map(|s| (p.clone(), s.clone()))
            });
            if let Some((plan, stage)) = found {
                return (table, plan, stage);
            }
        }
        assert!(
            Instant::now() < deadline,
            "model {model} got no ready {tier} stage at {address} within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header(table: &v1::RouteTable, plan: &v1::Plan, stage: &v1::Stage) -> v1::InferHeader {
    v1::InferHeader {
        model: table.model.clone(),
        version: table.version,
        plan_id: plan.id.clone(),
        stage: stage.index,
        request_id: "hostile".into(),
    }
}

/// Sends a header and raw chunks straight to an agent.
async fn infer(
    address: &str,
    header: v1::InferHeader,
    chunks: Vec<v1::TensorChunk>,
) -> Result<Vec<v1::InferResponse>, tonic::Status> {
    let frames: Vec<v1::InferRequest> = std::iter::once(v1::InferRequest {
        frame: Some(v1::infer_request::Frame::Header(header)),
    })
    .chain(chunks.into_iter().map(|c| v1::InferRequest {
        frame: Some(v1::infer_request::Frame::Tensor(c)),
    }))
    .collect();
    let mut request = tonic::Request::new(futures::stream::iter(frames));
    request.set_timeout(Duration::from_secs(20));
    let mut stream = v1::inference_client::InferenceClient::new(channel(address).await)
        .infer(request)
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.push(message);
    }
    Ok(out)
}

fn ones(name: &str) -> Vec<v1::TensorChunk> {
    let t = TensorData::from_f32(vec![1, 4], &[1.0; 4]).expect("tensor");
    strata_proto::tensor_chunks(name, t)
}

async fn status(address: &str) -> v1::AgentStatus {
    v1::inference_client::InferenceClient::new(channel(address).await)
        .status(v1::StatusRequest {})
        .await
        .expect("Status answers")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_refuse_what_privacy_or_the_stage_forbids_before_accepting_data() {
    let cluster = start().await;
    push(&cluster.plane, "features_model", v1::Privacy::Features).await;
    push(&cluster.plane, "edge_model", v1::Privacy::Edge).await;
    let (table, plan, stage) = served_table(&cluster.edge, "features_model", Tier::Edge).await;
    assert_eq!(
        stage.inputs,
        ["a"],
        "the edge stage takes the activation: {plan:?}"
    );
    let call = header(&table, &plan, &stage);

    // A raw input of a `features` model, sent to the edge agent as if it were the stage's input.
    let denied = infer(&cluster.edge, call.clone(), ones("x"))
        .await
        .expect_err("a raw input of a features model");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("\"x\" is a raw input of model \"features_model\""),
        "{}",
        denied.message()
    );

    // A tensor the stage does not use, claiming 1 GB, and the stage's own input claiming 1 GB: refused on the
    // header (the data never needs to come).
    let claim = |name: &str| {
        vec![v1::TensorChunk {
            header: Some(v1::TensorHeader {
                name: name.into(),
                dtype: v1::DataType::Float32 as i32,
                shape: vec![250_000_000],
            }),
            data: bytes::Bytes::from(vec![0u8; 1024]),
        }]
    };
    let unknown = infer(&cluster.edge, call.clone(), claim("junk"))
        .await
        .expect_err("a tensor the stage does not take");
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown:?}");
    assert!(
        unknown.message().contains("\"junk\"") && unknown.message().contains("needs tensors \"a\""),
        "{}",
        unknown.message()
    );
    let huge = infer(&cluster.edge, call.clone(), claim("a"))
        .await
        .expect_err("over the request limit");
    assert_eq!(huge.code(), tonic::Code::ResourceExhausted, "{huge:?}");
    assert!(
        huge.message().contains("\"a\"") && huge.message().contains("--max-request-mib"),
        "{}",
        huge.message()
    );

    let edge = status(&cluster.edge).await;
    assert_eq!(edge.requests_denied, 1, "{edge:?}");
    assert_eq!(edge.requests_served, 0, "nothing was served: {edge:?}");
    assert!(
        edge.received_tensors.is_empty(),
        "nothing was accepted: {edge:?}"
    );

    // The same route with what the stage takes is served: the refusals above were the agent's judgement.
    let served = infer(&cluster.edge, call, ones("a"))
        .await
        .expect("the stage's own input is served");
    assert!(!served.is_empty());
    let edge = status(&cluster.edge).await;
    assert_eq!(edge.requests_served, 1, "{edge:?}");
    assert_eq!(edge.received_tensors, ["a"], "{edge:?}");

    // Anything of an `edge` model at a cloud agent, whichever plan the request names.
    let (table, plan, stage) = served_table(&cluster.cloud, "edge_model", Tier::Edge).await;
    let denied = infer(&cluster.cloud, header(&table, &plan, &stage), ones("a"))
        .await
        .expect_err("an edge model's tensor at a cloud agent");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("nothing of it may reach the cloud tier"),
        "{}",
        denied.message()
    );
    let cloud = status(&cluster.cloud).await;
    assert_eq!(cloud.requests_denied, 1, "{cloud:?}");
    assert_eq!(cloud.requests_served, 0, "{cloud:?}");
    assert!(cloud.received_tensors.is_empty(), "{cloud:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_request_ends_at_the_agents_time_limit_and_frees_its_slot() {
    use futures::StreamExt;
    const LIMIT: Duration = Duration::from_secs(4);
    // One admission place at the edge (1 slot, no queue), requests capped at LIMIT, one stream per connection.
    let cluster = start_with(|tier, config| {
        if tier == Tier::Edge {
            config.slots = 1;
            config.queue = 0;
            config.max_request_time = LIMIT;
            config.max_streams_per_connection = 1;
        }
    })
    .await;
    push(&cluster.plane, "features_model", v1::Privacy::Features).await;
    let (table, plan, stage) = served_table(&cluster.edge, "features_model", Tier::Edge).await;
    let call = header(&table, &plan, &stage);

    // A header, then nothing more and no end, with no grpc-timeout, on a connection of its own.
    let held = channel(&cluster.edge).await;
    let frames = futures::stream::iter([v1::InferRequest {
        frame: Some(v1::infer_request::Frame::Header(call.clone())),
    }])
    .chain(futures::stream::pending());
    let sent = Instant::now();
    let stalled = tokio::spawn({
        let held = held.clone();
        async move {
            v1::inference_client::InferenceClient::new(held)
                .infer(frames)
                .await
                .map(|_| ())
        }
    });
    loop {
        let load = status(&cluster.edge).await.load.unwrap_or_default();
        if load.in_flight == 1 {
            break;
        }
        assert!(
            sent.elapsed() < LIMIT / 2,
            "the stalled request was not admitted: {load:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Its connection may have one stream open: a second request on it waits in the client.
    let mut second = v1::inference_client::InferenceClient::new(held.clone());
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        second.status(v1::StatusRequest {}),
    )
    .await;
    assert!(
        waited.is_err(),
        "a second stream on a connection limited to one was served: {waited:?}"
    );
    // It holds the edge's one admission place: a correct request is refused meanwhile.
    let busy = infer(&cluster.edge, call.clone(), ones("a"))
        .await
        .expect_err("the agent is at capacity");
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted, "{busy:?}");
    assert!(
        sent.elapsed() < LIMIT,
        "too slow to check the stall before the limit"
    );

    // The agent ends it at its limit, naming the limit and the flag.
    let ended = tokio::time::timeout(LIMIT * 5, stalled)
        .await
        .expect("the agent ended the stalled request")
        .expect("the request task");
    let elapsed = sent.elapsed();
    let e = ended.expect_err("a stalled request is not served");
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("limit of {} ms", LIMIT.as_millis()))
            && e.message().contains("--max-request-ms"),
        "{}",
        e.message()
    );
    assert!(
        elapsed >= LIMIT,
        "ended after {elapsed:?}, before the limit"
    );

    // The slot is free again and the connection's stream too: the same request is served now.
    tokio::time::timeout(Duration::from_secs(10), second.status(v1::StatusRequest {}))
        .await
        .expect("the held connection serves a stream again")
        .expect("Status answers");
    infer(&cluster.edge, call, ones("a"))
        .await
        .expect("served once the stalled request's slot was released");
    let edge = status(&cluster.edge).await;
    assert_eq!(edge.requests_served, 1, "{edge:?}");
    assert_eq!(edge.requests_rejected, 1, "{edge:?}");
    assert_eq!(edge.load.map(|l| l.in_flight), Some(0), "{edge:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_like_digest_is_an_invalid_argument_at_an_agent() {
    let cluster = start().await;
    let mut routes = v1::routes_client::RoutesClient::new(channel(&cluster.edge).await);
    for digest in ["../../etc/passwd", "sha256/ab/../../x", ""] {
        let e = routes
            .fetch_blob(v1::FetchBlobRequest {
                digest: digest.into(),
            })
            .await
            .expect_err(digest);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{digest}: {e:?}");
        assert!(e.message().contains("digest"), "{}", e.message());
    }
}
