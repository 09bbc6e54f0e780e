//! One function per fuzz target: each takes arbitrary bytes, feeds them to a parser that meets input from
//! outside (a pushed model, a peer's tensor stream, a `.npy` file, a route table from the network or the
//! store, a stored record, a cluster file, a join token or certificate request, an Open Inference Protocol
//! request), and returns normally
//! whatever the bytes — an `Err` is a correct answer; a panic, an abort, a hang or an allocation out of
//! proportion to the input is a bug.
//!
//! The cargo-fuzz targets in `fuzz/targets/` (nightly, libFuzzer) call these; `tests/replay.rs` runs every
//! file of `corpus/` and `regressions/` through them on stable, so CI keeps every input found.

#![forbid(unsafe_code)]

use std::sync::OnceLock;

use prost::Message;
use strata_proto::v1;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the directory names under `corpus/` and `regressions/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("onnx_model", onnx_model),
    ("tensor_framing", tensor_framing),
    ("npy", npy),
    ("route_table", route_table),
    ("stored_records", stored_records),
    ("cluster_toml", cluster_toml),
    ("join_request", join_request),
    ("oip_request", oip_request),
];

/// An ONNX model as pushed: decode and validate (`Model::from_bytes`).
pub fn onnx_model(data: &[u8]) {
    let _ = strata_planner::model::Model::from_bytes(data);
}

/// A tensor stream from a peer: length-delimited `InferRequest` frames, reassembled under limits.
pub fn tensor_framing(data: &[u8]) {
    let mut assembler =
        strata_proto::TensorAssembler::with_limits(strata_proto::framing::FrameLimits {
            max_total_bytes: 1 << 20,
            max_tensor_bytes: 1 << 19,
            max_chunks: 256,
        });
    let mut rest = data;
    while !rest.is_empty() {
        let Ok(frame) = v1::InferRequest::decode_length_delimited(&mut rest) else {
            return;
        };
        if let Some(v1::infer_request::Frame::Tensor(chunk)) = frame.frame
            && assembler.push(chunk).is_err()
        {
            return;
        }
    }
    let _ = assembler.finish();
}

/// A `.npy` file.
pub fn npy(data: &[u8]) {
    let _ = strata_runtime::npy::decode(data);
}

/// A route table from a watch or the store, then chosen from as a device does.
pub fn route_table(data: &[u8]) {
    let Ok(table) = v1::RouteTable::decode(data) else {
        return;
    };
    let links = strata_proto::convert::link_profiles(&table);
    let conditions = strata_core::recost::Conditions::nominal(links);
    let power = strata_proto::convert::device_power(&table);
    let _ = strata_proto::convert::tier_calibration(&table);
    let situation = strata_device_sdk::route::Situation {
        conditions: &conditions,
        power: &power,
        state: strata_device_sdk::PowerState::default(),
        measured: &|_| None,
        local: &|_| false,
    };
    let constraints = strata_device_sdk::Constraints::default();
    let _ = strata_device_sdk::route::choose(&table, &constraints, &situation, |_| false);
}

/// The control plane's stored JSON records.
pub fn stored_records(data: &[u8]) {
    use strata_control_plane::records::{ModelRecord, NodeRecord, PlansRecord};
    let _ = serde_json::from_slice::<ModelRecord>(data);
    let _ = serde_json::from_slice::<PlansRecord>(data);
    let _ = serde_json::from_slice::<NodeRecord>(data);
    let _ = serde_json::from_slice::<strata_control_plane::tokens::TokenRecord>(data);
    let _ = serde_json::from_slice::<strata_control_plane::tokens::IssuedRecord>(data);
    let _ = serde_json::from_slice::<strata_control_plane::identities::RevokedRecord>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = strata_control_plane::identities::parse_identity(text);
    }
}

/// A cluster description.
pub fn cluster_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = strata_planner::cluster::Cluster::from_toml(text);
    }
}

/// A join: the token a node presents, and its certificate request signed by a CA.
pub fn join_request(data: &[u8]) {
    static CA: OnceLock<Option<strata_trust::ca::Ca>> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = strata_trust::token::Token::parse(text);
    let _ = strata_trust::token::parse_credential_text(text);
    let ca = CA.get_or_init(|| {
        strata_trust::ca::Ca::generate("fuzz", std::time::Duration::from_secs(3600)).ok()
    });
    if let Some(ca) = ca {
        let node =
            strata_trust::Identity::new("node", strata_trust::Role::Node(strata_core::Tier::Edge))
                .expect("a valid identity");
        let _ = ca.sign(text, &node, std::time::Duration::from_secs(60));
    }
}

/// Declared inputs an `oip_request` input is also tried under (datatype, shape): an agent lets through only
/// requests that declare the model's inputs exactly, so the fuzzed contents are decoded against these too.
const OIP_SPECS: &[(&str, &[i64])] = &[
    ("FP32", &[1, 4]),
    ("INT64", &[2, 2]),
    ("UINT8", &[3]),
    ("INT8", &[2, 1]),
    ("BOOL", &[2]),
    ("FP16", &[1, 2]),
    ("UINT64", &[0, 5]),
];

/// An Open Inference Protocol `ModelInferRequest` as an agent's `ModelInfer` receives it: its input tensors
/// decoded from typed `contents` or `raw_input_contents` ([`strata_proto::oip::inputs`]), as the request
/// declares them and with every input declared as each of [`OIP_SPECS`].
pub fn oip_request(data: &[u8]) {
    use strata_proto::inference::ModelInferRequest;
    let Ok(request) = ModelInferRequest::decode(data) else {
        return;
    };
    oip_inputs(&request);
    for (datatype, shape) in OIP_SPECS {
        let mut declared = request.clone();
        for input in &mut declared.inputs {
            input.datatype = (*datatype).to_string();
            input.shape = shape.to_vec();
        }
        oip_inputs(&declared);
    }
}

/// The decoded inputs of `request` hold what it declares, or its refusal is an `INVALID_ARGUMENT` with a
/// message; decoded tensors answered as outputs (typed and raw) decode back to themselves.
fn oip_inputs(request: &strata_proto::inference::ModelInferRequest) {
    use strata_proto::inference::ModelInferRequest;
    use strata_proto::inference::model_infer_request::InferInputTensor;
    use strata_proto::oip;
    let tensors = match oip::inputs(request) {
        Ok(tensors) => tensors,
        Err(e) => {
            let status = e.status();
            assert_eq!(format!("{:?}", status.code()), "InvalidArgument", "{e}");
            assert!(!status.message().is_empty());
            return;
        }
    };
    assert_eq!(tensors.len(), request.inputs.len());
    for ((name, t), input) in tensors.iter().zip(&request.inputs) {
        assert_eq!(name, &input.name);
        assert_eq!(oip::datatype(t.dtype), input.datatype);
        let declared: Vec<usize> = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d).expect("a decoded shape has no negative dimension"))
            .collect();
        assert_eq!(t.shape, declared);
        let bytes = t
            .shape
            .iter()
            .try_fold(t.dtype.size(), |acc, &d| acc.checked_mul(d))
            .expect("a decoded shape's size fits");
        assert_eq!(t.data.len(), bytes, "{name}");
        if t.dtype == strata_core::DType::Bool {
            assert!(t.data.iter().all(|&b| b <= 1), "{name}");
        }
    }
    let names: std::collections::BTreeSet<&String> = tensors.iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), tensors.len(), "input names are unique");

    // Answered back as outputs (raw, and typed where every dtype has a typed field), they decode unchanged.
    let typed = !oip::needs_raw(tensors.iter().map(|(_, t)| &t.dtype));
    for raw in [true, false] {
        if !raw && !typed {
            continue;
        }
        let mut echo = ModelInferRequest::default();
        for (name, t) in &tensors {
            let (out, contents) = oip::output(name, t.clone(), raw);
            echo.inputs.push(InferInputTensor {
                name: out.name,
                datatype: out.datatype,
                shape: out.shape,
                contents: out.contents,
                ..Default::default()
            });
            echo.raw_input_contents.extend(contents);
        }
        let back = oip::inputs(&echo).expect("an answered tensor decodes");
        assert_eq!(
            back,
            tensors,
            "answered {}",
            if raw { "raw" } else { "typed" }
        );
    }
}
