//! Writes the seed inputs of the fuzz targets that need structure to start from (tensor streams, route
//! tables, stored records, join requests, Open Inference Protocol requests) into `DIR/TARGET/seed-*`:
//! `cargo run -p strata-fuzz --example seeds -- fuzz/corpus`. The ONNX, `.npy` and TOML seeds are copies
//! of the corpus's small models, its sample inputs and `examples/clusters/` (see fuzz/README.md).

use std::path::Path;

use prost::Message;
use strata_core::{DType, TensorData};
use strata_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use strata_proto::inference::{InferParameter, InferTensorContents, ModelInferRequest};
use strata_proto::v1;

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write");
}

fn main() {
    let root = std::env::args().nth(1).expect("usage: seeds DIR");
    let root = Path::new(&root);

    // Tensor streams: a header, then tensors of several dtypes, one of them in several chunks.
    let mut stream = Vec::new();
    let frames = [v1::InferRequest {
        frame: Some(v1::infer_request::Frame::Header(v1::InferHeader {
            model: "m".into(),
            version: 1,
            plan_id: "p".into(),
            stage: 1,
            request_id: "r".into(),
        })),
    }];
    for f in &frames {
        f.encode_length_delimited(&mut stream).expect("encode");
    }
    let tensors = [
        ("x", TensorData::from_f32(vec![2, 3], &[1.0; 6]).expect("t")),
        (
            "ids",
            TensorData {
                dtype: DType::I64,
                shape: vec![4],
                data: vec![0; 32],
            },
        ),
    ];
    for (name, t) in tensors {
        for chunk in strata_proto::tensor_chunks(name, t) {
            v1::InferRequest {
                frame: Some(v1::infer_request::Frame::Tensor(chunk)),
            }
            .encode_length_delimited(&mut stream)
            .expect("encode");
        }
    }
    write(root, "tensor_framing", "two-tensors", &stream);

    // A route table: two plans over three tiers, nodes, link profiles and power figures.
    let stage = |index: u32, tier: v1::Tier, digest: char| v1::Stage {
        index,
        tier: tier as i32,
        digest: digest.to_string().repeat(64),
        size_bytes: 1000,
        inputs: vec!["x".into()],
        outputs: vec!["y".into()],
        predicted_ms: 2.0,
        nodes: if tier == v1::Tier::Device {
            vec![]
        } else {
            vec!["n1".into()]
        },
        flops: 1e6,
        ..Default::default()
    };
    let table = v1::RouteTable {
        model: "m".into(),
        version: 3,
        plans: vec![
            v1::Plan {
                id: "a".into(),
                stages: vec![
                    stage(0, v1::Tier::Device, 'a'),
                    stage(1, v1::Tier::Edge, 'b'),
                ],
                latency_ms: 5.0,
                satisfies: vec![1, 2, 3],
                ..Default::default()
            },
            v1::Plan {
                id: "b".into(),
                stages: vec![stage(0, v1::Tier::Device, 'c')],
                latency_ms: 9.0,
                satisfies: vec![1, 2, 3, 4],
                ..Default::default()
            },
        ],
        nodes: vec![v1::NodeRef {
            id: "n1".into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        }],
        links: vec![v1::LinkProfile {
            link: v1::Link::DeviceEdge as i32,
            rtt_ms: 5.0,
            up_mbps: 50.0,
            down_mbps: 50.0,
        }],
        tier_calibration: vec![1.0, 1.2, 0.8],
        ..Default::default()
    };
    write(root, "route_table", "two-plans", &table.encode_to_vec());

    // Stored records, as the control plane writes them.
    write(
        root,
        "stored_records",
        "node",
        br#"{"id":"edge-1a2b3c","name":"edge","tier":"edge","arch":"x86_64","cores":4,"memory_bytes":8589934592,"backends":["tract"],"address":"10.0.0.2:7410","lease":7,"ready":[],"identity":"gw-1"}"#,
    );
    write(
        root,
        "stored_records",
        "token",
        br#"{"id":"0a1b2c3d","secret_sha256":"aa","tier":"cloud","expires_unix_ms":1,"uses_left":2,"description":"","created_unix_ms":0}"#,
    );

    // Join requests: a token, and a certificate request.
    let token = strata_trust::token::Token::generate(&"ab".repeat(32)).expect("random");
    write(root, "join_request", "token", token.to_string().as_bytes());
    let request = strata_trust::ca::request().expect("csr");
    write(root, "join_request", "csr", request.cert_pem.as_bytes());

    // Open Inference Protocol requests, as tritonclient sends them (raw contents) and with typed contents.
    let input =
        |name: &str, datatype: &str, shape: &[i64], contents: Option<InferTensorContents>| {
            InferInputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape: shape.to_vec(),
                contents,
                ..Default::default()
            }
        };
    let typed = ModelInferRequest {
        model_name: "m".into(),
        id: "typed".into(),
        inputs: vec![
            input(
                "x",
                "FP32",
                &[1, 4],
                Some(InferTensorContents {
                    fp32_contents: vec![0.5, -1.0, 2.0, 3.5],
                    ..Default::default()
                }),
            ),
            input(
                "ids",
                "INT64",
                &[2, 2],
                Some(InferTensorContents {
                    int64_contents: vec![1, -2, i64::MAX, 0],
                    ..Default::default()
                }),
            ),
            input(
                "small",
                "INT8",
                &[2, 1],
                Some(InferTensorContents {
                    int_contents: vec![-128, 127],
                    ..Default::default()
                }),
            ),
            input(
                "bytes",
                "UINT8",
                &[3],
                Some(InferTensorContents {
                    uint_contents: vec![0, 1, 255],
                    ..Default::default()
                }),
            ),
            input(
                "mask",
                "BOOL",
                &[2],
                Some(InferTensorContents {
                    bool_contents: vec![true, false],
                    ..Default::default()
                }),
            ),
        ],
        outputs: vec![InferRequestedOutputTensor {
            name: "y".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    write(root, "oip_request", "typed", &typed.encode_to_vec());
    let raw = ModelInferRequest {
        model_name: "m".into(),
        model_version: "1".into(),
        id: "raw".into(),
        inputs: vec![
            input("x", "FP32", &[1, 4], None),
            input("h", "FP16", &[1, 2], None),
            input("mask", "BOOL", &[2], None),
            input("big", "UINT64", &[0, 5], None),
        ],
        raw_input_contents: vec![
            [0.5f32, -1.0, 2.0, 3.5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            vec![0, 60, 0, 188],
            vec![1, 0],
            Vec::new(),
        ],
        parameters: [(
            "binary_data_output".to_string(),
            InferParameter {
                parameter_choice: Some(
                    strata_proto::inference::infer_parameter::ParameterChoice::BoolParam(true),
                ),
            },
        )]
        .into(),
        ..Default::default()
    };
    write(root, "oip_request", "raw", &raw.encode_to_vec());
    // Refusals: a shape whose size overflows, and raw contents not one per input.
    let refused = ModelInferRequest {
        inputs: vec![
            input("x", "FP32", &[i64::MAX, 2], None),
            input("y", "BYTES", &[1], None),
        ],
        raw_input_contents: vec![vec![0; 8]],
        ..Default::default()
    };
    write(root, "oip_request", "refused", &refused.encode_to_vec());
}
