//! What the edge agent's tests and its serving bench (`#[path]`-included there) share: the cluster profile
//! their control plane plans for, and ONNX models built in memory.

#![allow(dead_code)]

use prost::Message;
use strata_planner::cluster::Cluster;
use strata_planner::onnx::{self, proto};

/// A device so slow per operator (0.001 GFLOP/s, 1 s an operator) that everything it may hand off goes to
/// the edge; a link so fast that moving tensors costs (almost) nothing in the planner's eyes.
const DEVICE_EDGE: &str = r#"
name = "test: hopeless device, fast edge"

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

[[links]]
from = "device"
to = "edge"
up_mbps = 100000.0
rtt_ms = 0.1
"#;

/// A cloud behind the edge, over a link as fast.
const CLOUD: &str = r#"
[tiers.cloud]
gflops = 10000.0
memory_mib = 65536.0

[[links]]
from = "edge"
to = "cloud"
up_mbps = 100000.0
rtt_ms = 0.1
"#;

/// The hopeless device and the fast edge ([`DEVICE_EDGE`]), and with `cloud` a cloud behind the edge.
pub fn cluster(cloud: bool) -> Cluster {
    let text = if cloud {
        format!("{DEVICE_EDGE}{CLOUD}")
    } else {
        DEVICE_EDGE.to_string()
    };
    Cluster::from_toml(&text).expect("the test cluster parses")
}

/// A model of one graph, `name`, from `input` to `output` (opset 17).
pub fn model(
    name: &str,
    nodes: Vec<proto::NodeProto>,
    initializers: Vec<proto::TensorProto>,
    input: proto::ValueInfoProto,
    output: proto::ValueInfoProto,
) -> Vec<u8> {
    proto::ModelProto {
        ir_version: Some(8),
        producer_name: Some("strata-test".into()),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(proto::GraphProto {
            name: Some(name.into()),
            node: nodes,
            initializer: initializers,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// An `op` node from `inputs` to `output`, named after its output.
pub fn node(op: &str, inputs: &[&str], output: &str) -> proto::NodeProto {
    proto::NodeProto {
        op_type: Some(op.into()),
        name: Some(output.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    }
}

/// `x` [1, 4] → Relu → `a` → Sigmoid → `y`: under `features` privacy the Relu (it reads the raw input) stays
/// on the device and the Sigmoid runs remotely on `a`.
pub fn two_step_model() -> Vec<u8> {
    model(
        "two_step",
        vec![node("Relu", &["x"], "a"), node("Sigmoid", &["a"], "y")],
        vec![],
        onnx::tensor_value_info("x", 1, &[1, 4]),
        onnx::tensor_value_info("y", 1, &[1, 4]),
    )
}
