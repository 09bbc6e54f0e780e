//! Bad input gets a clear one-line error naming the culprit and a non-zero exit, never a panic.

mod common;

use common::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn missing_file_is_named() {
    let out = strata(&["inspect", "/nonexistent/model.onnx"]);
    assert_clean_error(&out, &["/nonexistent/model.onnx"]);
}

#[test]
fn text_file_is_not_onnx() {
    let dir = tmp();
    let p = write(
        dir.path(),
        "notes.onnx",
        b"this is plainly a text file, not a protobuf\n",
    );
    let out = strata(&["inspect", p.to_str().expect("utf8")]);
    assert_clean_error(&out, &["notes.onnx", "not an ONNX model"]);
}

#[test]
fn truncated_protobuf_is_rejected() {
    let dir = tmp();
    let bytes = std::fs::read(corpus("squeezenet.onnx")).expect("read");
    let p = write(dir.path(), "cut.onnx", &bytes[..bytes.len() / 2]);
    let out = strata(&[
        "plan",
        p.to_str().expect("utf8"),
        "--cluster",
        cluster("glasses-phone-cloud.toml").to_str().expect("utf8"),
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &["cut.onnx", "not an ONNX model"]);
}

#[test]
fn unsupported_operator_is_named_by_node_and_op() {
    let dir = tmp();
    let bytes = tiny_model(
        vec![
            node("Relu", "first", &["x"], &["a"]),
            node("DynamicQuantizeLSTM", "mystery_node", &["a"], &["y"]),
        ],
        "y",
    );
    let p = write(dir.path(), "unsupported.onnx", &bytes);
    // inspect lists it and succeeds ...
    let out = strata(&["inspect", p.to_str().expect("utf8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inspect should report, not fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mystery_node") && stdout.contains("DynamicQuantizeLSTM"),
        "{stdout}"
    );
    // ... plan refuses with the node and the op.
    let out = strata(&[
        "plan",
        p.to_str().expect("utf8"),
        "--cluster",
        cluster("glasses-phone-cloud.toml").to_str().expect("utf8"),
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(
        &out,
        &["mystery_node", "DynamicQuantizeLSTM", "not supported"],
    );
}

#[test]
fn undefined_tensor_is_named() {
    let dir = tmp();
    let bytes = tiny_model(vec![node("Add", "adder", &["x", "ghost"], &["y"])], "y");
    let p = write(dir.path(), "dangling.onnx", &bytes);
    let out = strata(&["inspect", p.to_str().expect("utf8")]);
    assert_clean_error(&out, &["adder", "ghost"]);
}

#[test]
fn symbolic_input_without_shape_asks_for_one() {
    let dir = tmp();
    let out = strata(&[
        "plan",
        corpus("ocr_det.onnx").to_str().expect("utf8"),
        "--cluster",
        cluster("glasses-phone-cloud.toml").to_str().expect("utf8"),
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &["symbolic", "--input"]);
}

#[test]
fn wrong_input_shape_is_refused() {
    let dir = tmp();
    let model = corpus("squeezenet.onnx");
    let out = strata(&["inspect", model.to_str().expect("utf8"), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json");
    let input = report["inputs"][0]["name"]
        .as_str()
        .expect("an input")
        .to_string();
    let out = strata(&[
        "plan",
        model.to_str().expect("utf8"),
        "--input",
        &format!("{input}=1,3,7"),
        "--cluster",
        cluster("glasses-phone-cloud.toml").to_str().expect("utf8"),
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &[&input, "does not match"]);
    let out = strata(&[
        "plan",
        model.to_str().expect("utf8"),
        "--input",
        "nosuchinput=1,3",
        "--cluster",
        cluster("glasses-phone-cloud.toml").to_str().expect("utf8"),
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &["nosuchinput", "not a model input"]);
    // A zero dimension is an empty batch: refused where the shape is read, not planned.
    let out = strata(&[
        "inspect",
        model.to_str().expect("utf8"),
        "--input",
        &format!("{input}=0,3,224,224"),
    ]);
    assert_clean_error(&out, &[&input, "zero dimension"]);
}

fn plan_with_cluster(toml: &str) -> std::process::Output {
    let dir = tmp();
    let c = write(dir.path(), "cluster.toml", toml.as_bytes());
    strata(&[
        "plan",
        corpus("squeezenet.onnx").to_str().expect("utf8"),
        "--cluster",
        c.to_str().expect("utf8"),
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ])
}

#[test]
fn cluster_missing_field_is_named() {
    let out = plan_with_cluster("[tiers.device]\nmemory_mib = 100\n");
    assert_clean_error(&out, &["cluster", "gflops"]);
}

#[test]
fn cluster_impossible_number_is_named() {
    let out = plan_with_cluster("[tiers.device]\ngflops = -3\nmemory_mib = 100\n");
    assert_clean_error(&out, &["tiers.device.gflops", "-3"]);
    let text = std::fs::read_to_string(cluster("glasses-phone-cloud.toml"))
        .expect("read")
        .replace("rtt_ms = 50.0", "rtt_ms = -1.0");
    let out = plan_with_cluster(&text);
    assert_clean_error(&out, &["rtt_ms", "-1"]);
}

#[test]
fn cluster_without_needed_link_is_refused() {
    let out = plan_with_cluster(
        "[tiers.device]\ngflops = 10\nmemory_mib = 100\n[tiers.cloud]\ngflops = 1000\nmemory_mib = 1000\n",
    );
    assert_clean_error(&out, &["no link between device and cloud"]);
}

#[test]
fn infeasible_latency_budget_says_why() {
    let dir = tmp();
    let out = strata(&[
        "plan",
        corpus("squeezenet.onnx").to_str().expect("utf8"),
        "--cluster",
        cluster("glasses-phone-cloud.toml").to_str().expect("utf8"),
        "--objective",
        "energy",
        "--latency-ms",
        "0.001",
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &["latency"]);
}

#[test]
fn infeasible_memory_says_which_tier() {
    let dir = tmp();
    // Nothing may leave a wearable with 8 MiB, and resnet50's weights alone are ~100 MB.
    let out = strata(&[
        "plan",
        corpus("resnet50.onnx").to_str().expect("utf8"),
        "--cluster",
        cluster("wearable-gateway-cloud.toml")
            .to_str()
            .expect("utf8"),
        "--privacy",
        "device",
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &["device", "memory"]);
}

#[test]
fn split_at_unknown_tensor_is_named() {
    let dir = tmp();
    let out = strata(&[
        "split",
        corpus("skip_long.onnx").to_str().expect("utf8"),
        "--at",
        "no_such_tensor",
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &["no_such_tensor"]);
}

#[test]
fn split_boundary_that_adds_nothing_is_refused() {
    let dir = tmp();
    let model = corpus("skip_long.onnx");
    let out = strata(&["inspect", model.to_str().expect("utf8"), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json");
    let t = report["largest_activations"][0]["name"]
        .as_str()
        .expect("an activation")
        .to_string();
    let out = strata(&[
        "split",
        model.to_str().expect("utf8"),
        "--at",
        &t,
        "--at",
        &t,
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &["boundary 2", "adds no node"]);
}

#[test]
fn run_with_wrong_dtype_is_refused() {
    let dir = tmp();
    let model = corpus("squeezenet.onnx");
    let out = strata(&["inspect", model.to_str().expect("utf8"), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json");
    let input = report["inputs"][0]["name"]
        .as_str()
        .expect("an input")
        .to_string();
    let shape: Vec<usize> =
        serde_json::from_str(report["inputs"][0]["shape"].as_str().expect("shape"))
            .expect("shape list");
    let n: usize = shape.iter().product();
    let t = strata_runtime::TensorData::new(strata_runtime::DType::I64, shape, vec![0; n * 8])
        .expect("tensor");
    let npy = write(dir.path(), "x.npy", &strata_runtime::npy::encode(&t));
    let out = strata(&[
        "run",
        model.to_str().expect("utf8"),
        "--input",
        &format!("{input}={}", npy.display()),
        "--output-dir",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &[&input, "float32", "int64"]);
}

#[test]
fn run_of_a_directory_without_plan_is_refused() {
    let dir = tmp();
    let out = strata(&[
        "run",
        dir.path().to_str().expect("utf8"),
        "--output-dir",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &["plan.json"]);
}

#[test]
fn output_to_a_closed_pipe_is_not_a_crash() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["inspect", corpus("resnet50.onnx").to_str().expect("utf8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strata starts");
    // Close the read end before strata writes anything, as `strata inspect | head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("strata ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success(),
        "a closed pipe is not an error: {stderr}"
    );
}

#[test]
fn profile_of_another_model_is_refused() {
    let dir = tmp();
    let profile = dir.path().join("squeezenet.json");
    let out = strata(&[
        "profile",
        corpus("squeezenet.onnx").to_str().expect("utf8"),
        "--runs",
        "1",
        "--warmup",
        "0",
        "--out",
        profile.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = strata(&[
        "plan",
        corpus("shufflenet.onnx").to_str().expect("utf8"),
        "--cluster",
        cluster("glasses-phone-cloud.toml").to_str().expect("utf8"),
        "--profile",
        profile.to_str().expect("utf8"),
        "--out",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(&out, &["profile does not match", "node"]);
}

#[test]
fn plan_run_with_wrong_input_shape_is_refused() {
    let dir = tmp();
    let model = corpus("squeezenet.onnx");
    let plan_dir = dir.path().join("plan");
    let out = strata(&[
        "plan",
        model.to_str().expect("utf8"),
        "--cluster",
        cluster("glasses-phone-cloud.toml").to_str().expect("utf8"),
        "--out",
        plan_dir.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = strata_runtime::TensorData::from_f32(vec![1, 3, 8, 8], &[0.5; 192]).expect("tensor");
    let npy = write(dir.path(), "small.npy", &strata_runtime::npy::encode(&t));
    let out = strata(&[
        "run",
        plan_dir.to_str().expect("utf8"),
        "--input",
        &format!("data_0={}", npy.display()),
        "--output-dir",
        dir.path().join("o").to_str().expect("utf8"),
    ]);
    assert_clean_error(
        &out,
        &["data_0", "the plan was made for shape", "[1, 3, 224, 224]"],
    );
}

#[test]
fn infer_budgets_that_are_not_budgets_are_refused() {
    let dir = tmp();
    let out_dir = dir.path().to_str().expect("utf8");
    for (flag, value, needle) in [
        ("--latency-ms", "0", "latency budget 0 ms is not a budget"),
        (
            "--latency-ms",
            "NaN",
            "latency budget NaN ms is not a budget",
        ),
        ("--latency-ms", "-5", "latency budget -5 ms is not a budget"),
        ("--energy-mj", "-1", "energy budget -1 mJ is not a budget"),
        ("--energy-mj", "NaN", "energy budget NaN mJ is not a budget"),
    ] {
        // Refused while parsing, before any cluster is asked (there is none here).
        let out = strata(&[
            "infer",
            "m",
            &format!("{flag}={value}"),
            "--output-dir",
            out_dir,
            "--endpoint",
            "127.0.0.1:9",
        ]);
        assert_clean_error(&out, &[flag, needle]);
    }
}
