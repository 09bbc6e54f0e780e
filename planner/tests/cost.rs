//! The cost model: per-node milliseconds from FLOPs and tier speed, per-op overhead, privacy as placement rules.

use prost::Message;
use strata_core::Privacy;
use strata_planner::analyse;
use strata_planner::cluster::Cluster;
use strata_planner::cost;
use strata_planner::model::Model;
use strata_planner::onnx::{self, proto};

fn node(op: &str, name: &str, input: &str, output: &str) -> proto::NodeProto {
    proto::NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: vec![input.into()],
        output: vec![output.into()],
        ..Default::default()
    }
}

/// x → Identity → Relu → y, float [1, 1000].
/// `graph` as an opset-17 model: its bytes and the planner's model of them.
fn model_of(graph: proto::GraphProto) -> (Vec<u8>, Model) {
    let bytes = proto::ModelProto {
        ir_version: Some(8),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec();
    let model = Model::from_bytes(&bytes).expect("valid model");
    (bytes, model)
}

fn identity_relu() -> (Vec<u8>, Model) {
    let graph = proto::GraphProto {
        name: Some("ir".into()),
        node: vec![
            node("Identity", "copy", "x", "a"),
            node("Relu", "relu", "a", "y"),
        ],
        input: vec![onnx::tensor_value_info("x", 1, &[1, 1000])],
        output: vec![onnx::tensor_value_info("y", 1, &[1, 1000])],
        ..Default::default()
    };
    model_of(graph)
}

const CLUSTER: &str = r#"
[tiers.device]
gflops = 1.0
op_overhead_us = 100.0
memory_mib = 64
[tiers.cloud]
gflops = 1000.0
memory_mib = 64
[[links]]
from = "device"
to = "cloud"
up_mbps = 10.0
rtt_ms = 20.0
"#;

#[test]
fn layout_only_ops_pay_no_per_op_overhead() {
    let (bytes, model) = identity_relu();
    let analysis = analyse::analyse(&model, &bytes, &[]).expect("analysis");
    let cluster = Cluster::from_toml(CLUSTER).expect("cluster");
    let ms = cost::node_ms(&model, &analysis, &cluster, None).expect("costs");
    let compute_ms = 1000.0 / 1e9 * 1e3; // 1000 output elements at 1 GFLOP/s
    let identity = model.node_index("copy").expect("copy");
    let relu = model.node_index("relu").expect("relu");
    assert!(
        (ms[identity][0] - compute_ms).abs() < 1e-12,
        "{}",
        ms[identity][0]
    );
    assert!(
        (ms[relu][0] - (compute_ms + 0.1)).abs() < 1e-12,
        "{}",
        ms[relu][0]
    );
    assert!(ms[relu][1].is_infinite(), "no edge tier in this cluster");
}

#[test]
fn features_privacy_pins_readers_of_raw_inputs_to_the_device() {
    let (bytes, model) = identity_relu();
    let analysis = analyse::analyse(&model, &bytes, &[]).expect("analysis");
    let cluster = Cluster::from_toml(CLUSTER).expect("cluster");
    let reader = model.node_index("copy").expect("copy");
    let other = model.node_index("relu").expect("relu");
    let open =
        cost::build_problem(&model, &analysis, &cluster, Privacy::Open, None).expect("problem");
    assert!(open.latency.node_cost[reader][2].is_finite());
    let features =
        cost::build_problem(&model, &analysis, &cluster, Privacy::Features, None).expect("problem");
    assert!(
        features.latency.node_cost[reader][2].is_infinite()
            && features.energy.node_cost[reader][2].is_infinite()
    );
    assert!(
        features.latency.node_cost[other][2].is_finite(),
        "later nodes may still leave the device"
    );
    let device =
        cost::build_problem(&model, &analysis, &cluster, Privacy::Device, None).expect("problem");
    assert_eq!(device.tier_present, [true, false, false]);
}

/// Where the cloud is a hundred times faster and the link fast, the optimum is never "everything on one
/// remote tier" for the edge; the frontier still keeps edge-only and cloud-only as plans (a baseline, and a
/// plan that survives losing a tier), except where privacy forbids raw inputs off the device.
#[test]
fn the_frontier_keeps_the_whole_model_on_each_remote_tier() {
    use std::collections::BTreeSet;
    use strata_core::Tier;
    use strata_planner::frontier::{self, Settings};
    let (bytes, model) = identity_relu();
    let analysis = analyse::analyse(&model, &bytes, &[]).expect("analysis");
    let cluster = Cluster::from_toml(
        r#"
        [tiers.device]
        gflops = 1.0
        memory_mib = 64
        [tiers.edge]
        gflops = 2.0
        memory_mib = 64
        [tiers.cloud]
        gflops = 1000.0
        memory_mib = 64
        [[links]]
        from = "device"
        to = "edge"
        up_mbps = 1000.0
        rtt_ms = 1.0
        [[links]]
        from = "edge"
        to = "cloud"
        up_mbps = 1000.0
        rtt_ms = 2.0
        "#,
    )
    .expect("cluster");
    let tiers: BTreeSet<Tier> = Tier::ALL.into_iter().collect();
    let single = |f: &frontier::Frontier, tier: u8| {
        f.plans.iter().any(|p| p.tier.iter().all(|&t| t == tier))
    };
    let open = frontier::frontier(
        &model,
        &analysis,
        &cluster,
        &tiers,
        Privacy::Open,
        &Settings::default(),
    )
    .expect("frontier");
    for tier in [Tier::Device, Tier::Edge, Tier::Cloud] {
        assert!(single(&open, tier.index() as u8), "no {tier}-only plan");
    }
    let without = Settings {
        single_tier: false,
        ..Settings::default()
    };
    let lean = frontier::frontier(&model, &analysis, &cluster, &tiers, Privacy::Open, &without)
        .expect("frontier");
    assert!(
        !single(&lean, Tier::Edge.index() as u8),
        "edge-only is never optimal here, so only the setting keeps it"
    );
    // Features: the raw input stays on the device, so no remote tier runs the whole model.
    let private = frontier::frontier(
        &model,
        &analysis,
        &cluster,
        &tiers,
        Privacy::Features,
        &Settings::default(),
    )
    .expect("frontier");
    assert!(!single(&private, Tier::Edge.index() as u8));
    assert!(!single(&private, Tier::Cloud.index() as u8));
}

/// x [1, 1000] → Relu → a → MatMul(W [1000, 1000], an initializer) → y [1, 1000].
fn relu_matmul() -> (Vec<u8>, Model) {
    let weight = proto::TensorProto {
        name: Some("w".into()),
        dims: vec![1000, 1000],
        data_type: Some(1),
        raw_data: Some(vec![0u8; 4 * 1000 * 1000]),
        ..Default::default()
    };
    let graph = proto::GraphProto {
        name: Some("rm".into()),
        node: vec![
            node("Relu", "relu", "x", "a"),
            proto::NodeProto {
                op_type: Some("MatMul".into()),
                name: Some("matmul".into()),
                input: vec!["a".into(), "w".into()],
                output: vec!["y".into()],
                ..Default::default()
            },
        ],
        initializer: vec![weight],
        input: vec![onnx::tensor_value_info("x", 1, &[1, 1000])],
        output: vec![onnx::tensor_value_info("y", 1, &[1, 1000])],
        ..Default::default()
    };
    model_of(graph)
}

/// One device tier: 1 GFLOP/s, 10 µs per operator, and `bandwidth` if given.
fn one_tier(bandwidth: &str) -> Cluster {
    Cluster::from_toml(&format!(
        "[tiers.device]\ngflops = 1.0\nop_overhead_us = 10.0\nmemory_mib = 64\n{bandwidth}\n"
    ))
    .expect("cluster")
}

#[test]
fn roofline_charges_a_memory_bound_node_its_bytes_and_a_compute_bound_one_its_flops() {
    let (bytes, model) = relu_matmul();
    let analysis = analyse::analyse(&model, &bytes, &[]).expect("analysis");
    let relu = model.node_index("relu").expect("relu");
    let matmul = model.node_index("matmul").expect("matmul");
    // The Relu reads 4 kB and writes 4 kB for 1000 FLOPs; the MatMul reads 4 kB + 4 MB of weights and
    // writes 4 kB for 2 M FLOPs.
    let work = strata_planner::roofline::work(&model, &analysis);
    assert_eq!(work[relu].bytes, 8000.0);
    assert_eq!(work[matmul].bytes, 4_008_000.0);
    assert_eq!(analysis.node_flops[matmul], 2e6);
    // At 0.01 GB/s both are memory-bound: the Relu moves 8000 B in 0.8 ms (its compute: 1 µs), the MatMul
    // 4.008 MB in 400.8 ms (its compute: 2 ms). At 100 GB/s both are compute-bound: the MatMul's traffic takes
    // 0.04 ms against 2 ms of compute, the Relu's 0.08 µs against 1 µs.
    let slow_memory =
        cost::node_ms(&model, &analysis, &one_tier("bandwidth_gbs = 0.01"), None).expect("costs");
    assert!(
        (slow_memory[relu][0] - (0.8 + 0.01)).abs() < 1e-9,
        "{slow_memory:?}"
    );
    assert!(
        (slow_memory[matmul][0] - (400.8 + 0.01)).abs() < 1e-9,
        "{slow_memory:?}"
    );
    let fast_memory =
        cost::node_ms(&model, &analysis, &one_tier("bandwidth_gbs = 100.0"), None).expect("costs");
    assert!(
        (fast_memory[matmul][0] - (2.0 + 0.01)).abs() < 1e-9,
        "{fast_memory:?}"
    );
    assert!(
        (fast_memory[relu][0] - (0.001 + 0.01)).abs() < 1e-9,
        "{fast_memory:?}"
    );
}

#[test]
fn without_a_bandwidth_node_times_are_flops_over_gflops_plus_overhead_as_before() {
    let (bytes, model) = relu_matmul();
    let analysis = analyse::analyse(&model, &bytes, &[]).expect("analysis");
    let ms = cost::node_ms(&model, &analysis, &one_tier(""), None).expect("costs");
    for (v, row) in ms.iter().enumerate() {
        let expected = analysis.node_flops[v] / 1e9 * 1e3 + 0.01;
        assert_eq!(row[0], expected, "node {v}: the old formula, to the bit");
    }
    // A huge bandwidth changes nothing either: every node is compute-bound.
    let roof =
        cost::node_ms(&model, &analysis, &one_tier("bandwidth_gbs = 1e9"), None).expect("costs");
    assert_eq!(ms, roof);
}

#[test]
fn bandwidth_must_be_a_finite_positive_number() {
    for bad in ["0", "-1.5", "inf", "nan"] {
        let e = Cluster::from_toml(&format!(
            "[tiers.device]\ngflops = 1.0\nmemory_mib = 64\nbandwidth_gbs = {bad}\n"
        ))
        .expect_err(bad);
        let text = e.to_string();
        assert!(
            text.contains("tiers.device.bandwidth_gbs") && text.contains("finite number > 0"),
            "{bad}: {text}"
        );
    }
    let ok = one_tier("bandwidth_gbs = 25.6");
    assert_eq!(
        ok.tier(strata_core::Tier::Device)
            .and_then(|t| t.bandwidth_gbs),
        Some(25.6)
    );
    assert_eq!(
        one_tier("")
            .tier(strata_core::Tier::Device)
            .and_then(|t| t.bandwidth_gbs),
        None
    );
}
