//! Helpers shared by the CLI tests: the corpus, the binary, small hand-made models.

#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prost::Message;
use strata_planner::onnx::{self, proto};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A corpus model; fails loudly when the corpus was not built.
pub fn corpus(file: &str) -> PathBuf {
    let p = root().join("corpus/models").join(file);
    assert!(
        p.exists(),
        "{} is missing: build the corpus with `python3 corpus/fetch.py`",
        p.display()
    );
    p
}

pub fn cluster(file: &str) -> PathBuf {
    root().join("examples/clusters").join(file)
}

pub fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("STRATA_LOG", "off")
        .output()
        .expect("the strata binary runs")
}

/// `out`'s stdout, after asserting that the command succeeded (its stderr in the message if not).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "strata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a clean failure: non-zero exit, one `error:` line naming every `needles`, no panic.
pub fn assert_clean_error(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"));
    for needle in needles {
        assert!(
            line.contains(needle),
            "error line lacks \"{needle}\": {line}"
        );
    }
    line.to_string()
}

pub fn value_info(name: &str, dims: &[i64]) -> proto::ValueInfoProto {
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    onnx::tensor_value_info(name, 1, &shape)
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> proto::NodeProto {
    proto::NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A small float model from nodes; input `x` [1, 4], output named by `output`.
pub fn tiny_model(nodes: Vec<proto::NodeProto>, output: &str) -> Vec<u8> {
    let graph = proto::GraphProto {
        name: Some("tiny".into()),
        node: nodes,
        input: vec![value_info("x", &[1, 4])],
        output: vec![value_info(output, &[1, 4])],
        ..Default::default()
    };
    proto::ModelProto {
        ir_version: Some(8),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}
