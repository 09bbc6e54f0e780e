//! The control plane against a hostile client on its gRPC API: a model pushed without a valid privacy level is
//! refused (never stored as `open`), a model over the size limit is refused on its declared size, and a blob
//! asked for by a path-like digest is a bad argument, not a server fault.

use std::time::Duration;

use prost::Message;
use strata_control_plane::{ControlError, ControlPlane, Settings, server};
use strata_core::Digest;
use strata_planner::cluster::Cluster;
use strata_planner::onnx::{self, proto};
use strata_proto::v1;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// `x` [1, 4] → Relu → `y`: a model the control plane accepts.
fn relu_model() -> Vec<u8> {
    proto::ModelProto {
        ir_version: Some(8),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(proto::GraphProto {
            name: Some("relu".into()),
            node: vec![proto::NodeProto {
                op_type: Some("Relu".into()),
                name: Some("relu".into()),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![onnx::tensor_value_info("x", 1, &[1, 4])],
            output: vec![onnx::tensor_value_info("y", 1, &[1, 4])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A control plane on an embedded store, served on loopback.
async fn start(dir: &std::path::Path) -> (std::sync::Arc<ControlPlane>, Channel) {
    start_with(dir, |_| {}).await
}

/// [`start`], with its settings adjusted.
async fn start_with(
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut Settings),
) -> (std::sync::Arc<ControlPlane>, Channel) {
    let (state, blobs) = server::open_embedded(dir, None).expect("stores");
    let cluster =
        Cluster::from_toml(strata_control_plane::server::DEFAULT_CLUSTER).expect("cluster");
    let mut settings = Settings::new(cluster);
    adjust(&mut settings);
    let plane = ControlPlane::new(state, blobs, settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(server::serve(
        plane.clone(),
        listener,
        std::future::pending::<()>(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("the control plane accepts connections");
    (plane, channel)
}

async fn push(channel: &Channel, name: &str, privacy: i32) -> Result<(), tonic::Status> {
    let bytes = relu_model();
    let meta = v1::ModelMeta {
        name: name.into(),
        digest: Digest::of(&bytes).to_string(),
        size_bytes: bytes.len() as u64,
        privacy,
        input_shapes: vec![],
        batching: None,
    };
    let messages = vec![
        v1::PushModelRequest {
            part: Some(v1::push_model_request::Part::Meta(meta)),
        },
        v1::PushModelRequest {
            part: Some(v1::push_model_request::Part::Data(bytes.into())),
        },
    ];
    v1::control_client::ControlClient::new(channel.clone())
        .push_model(futures::stream::iter(messages))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_without_a_valid_privacy_level_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (plane, channel) = start(dir.path()).await;
    for (code, needle) in [
        (0, "meta.privacy: no privacy level given"),
        (99, "meta.privacy: 99 is not a valid privacy level"),
    ] {
        let name = format!("privacy{code}");
        let e = push(&channel, &name, code).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{code}: {e:?}");
        assert!(
            e.message().contains(needle) && e.message().contains("nothing was stored"),
            "{code}: {}",
            e.message()
        );
        assert!(
            matches!(
                plane.model(&name).await,
                Err(ControlError::UnknownModel { .. })
            ),
            "privacy {code}: the model was stored"
        );
    }
    // The same model with a level is stored at that level: the refusals above were about the level.
    push(&channel, "features", v1::Privacy::Features as i32)
        .await
        .expect("a push with a level");
    let stored = plane.model("features").await.expect("stored");
    assert_eq!(stored.privacy, strata_core::Privacy::Features);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_over_the_size_limit_is_refused_before_its_data_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let size = relu_model().len() as u64;
    let (plane, channel) = start_with(dir.path(), |s| s.max_model_bytes = size - 1).await;

    // A model one byte over the limit.
    let e = push(&channel, "big", v1::Privacy::Open as i32)
        .await
        .expect_err("over the limit");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("limit of {} bytes", size - 1))
            && e.message().contains("--max-model-mib")
            && e.message().contains("nothing was stored"),
        "{}",
        e.message()
    );
    assert!(
        matches!(
            plane.model("big").await,
            Err(ControlError::UnknownModel { .. })
        ),
        "the model was stored"
    );

    // A meta message claiming a terabyte, and no data: refused on the claim, not for a short upload.
    let claim = v1::PushModelRequest {
        part: Some(v1::push_model_request::Part::Meta(v1::ModelMeta {
            name: "claim".into(),
            digest: Digest::of(b"").to_string(),
            size_bytes: 1 << 40,
            privacy: v1::Privacy::Open as i32,
            input_shapes: vec![],
            batching: None,
        })),
    };
    let e = v1::control_client::ControlClient::new(channel.clone())
        .push_model(futures::stream::iter(vec![claim]))
        .await
        .expect_err("a terabyte claim");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-model-mib"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_like_digest_is_an_invalid_argument_at_the_control_plane() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_plane, channel) = start(dir.path()).await;
    let mut routes = v1::routes_client::RoutesClient::new(channel);
    for digest in ["../../etc/passwd", "sha256/ab/../../x", "", &"A".repeat(64)] {
        let e = routes
            .fetch_blob(v1::FetchBlobRequest {
                digest: digest.to_string(),
            })
            .await
            .expect_err(digest);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{digest}: {e:?}");
        assert!(e.message().starts_with("digest: "), "{}", e.message());
    }
}
