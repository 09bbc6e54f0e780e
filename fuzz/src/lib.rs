//! One function per fuzz target: each takes arbitrary bytes, feeds them to a parser that meets input from
//! outside (a pushed model, a peer's tensor stream, a `.npy` file, a route table from the network or the
//! store, a stored record, a cluster file, a join token or certificate request), and returns normally
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
