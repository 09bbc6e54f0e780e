//! Agents against a hostile client: a real in-process cluster (control plane on an embedded store, one edge
//! agent, one cloud agent, over loopback gRPC), and a client that talks to the agents directly instead of
//! through the device SDK. Every attack is refused with the right status before any data is accepted, and
//! nothing is served or recorded; a correct request on the same route is served, so the refusals are the
//! agents' judgement and not a broken route.

use std::time::{Duration, Instant};

use prost::Message;
use strata_control_plane::{ControlPlane, Settings, server};
use strata_core::{Digest, Tier};
use strata_edge_agent::{Agent, AgentConfig};
use strata_planner::cluster::Cluster;
use strata_planner::onnx::{self, proto};
use strata_proto::v1;
use strata_runtime::TensorData;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// A device so slow per operator that everything it may hand off goes to the edge; a cloud behind it.
const CLUSTER: &str = r#"
name = "test: hopeless device, edge, cloud"

[tiers.device]
gflops = 0.001
op_overhead_us = 1000000.0
memory_mib = 65536.0
active_w = 1.0
idle_w = 0.1
tx_nj_per_byte = 1.0
rx_nj_per_byte = 1.0

[tiers.edge]
gflops = 1000.0
memory_mib = 65536.0

[tiers.cloud]
gflops = 10000.0
memory_mib = 65536.0

[[links]]
from = "device"
to = "edge"
up_mbps = 100000.0
rtt_ms = 0.1

[[links]]
from = "edge"
to = "cloud"
up_mbps = 100000.0
rtt_ms = 0.1
"#;

/// `x` [1, 4] → Relu → `a` → Sigmoid → `y`: under `features` privacy the Relu (it reads the raw input) stays
/// on the device and the Sigmoid runs remotely on `a`.
fn two_step_model() -> Vec<u8> {
    let node = |op: &str, input: &str, output: &str| proto::NodeProto {
        op_type: Some(op.into()),
        name: Some(op.to_lowercase()),
        input: vec![input.into()],
        output: vec![output.into()],
        ..Default::default()
    };
    proto::ModelProto {
        ir_version: Some(8),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(proto::GraphProto {
            name: Some("two_step".into()),
            node: vec![node("Relu", "x", "a"), node("Sigmoid", "a", "y")],
            input: vec![onnx::tensor_value_info("x", 1, &[1, 4])],
            output: vec![onnx::tensor_value_info("y", 1, &[1, 4])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

struct Cluster3 {
    plane: std::sync::Arc<ControlPlane>,
    edge: String,
    cloud: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Cluster3 {
    let dir = tempfile::tempdir().expect("temp dir");
    let (state, blobs) =
        server::open_embedded(&dir.path().join("control-plane"), None).expect("stores");
    let plane = ControlPlane::new(
        state,
        blobs,
        Settings::new(Cluster::from_toml(CLUSTER).expect("test cluster parses")),
    );
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
