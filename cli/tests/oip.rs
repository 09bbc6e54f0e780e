//! The Open Inference Protocol v2 over gRPC on agents, checked with the real client: Python's
//! `tritonclient.grpc` (`oip_client.py`, run with the venv's interpreter), over mutual TLS with the cluster's
//! CA and a device certificate (its `ssl=True` options), against real processes (a control plane, an edge
//! agent and a cloud agent). Metadata says what the model takes and gives; `ModelInfer` with raw and with
//! typed contents answers what onnxruntime (in the script) and tract (here) compute for the whole model; the
//! model's privacy decides which agent may be entered; malformed requests, unknown models and callers without
//! the right certificate are refused with the protocol's status codes and messages that say why.

mod sandbox;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sandbox::{Sandbox, assert_outputs_match, corpus, reference, root};
use serde_json::{Value, json};
use strata_proto::v1;
use strata_runtime::npy;
use strata_trust::{Identity, Role};

/// The venv's interpreter (tritonclient[grpc], grpcio, numpy and onnxruntime: scripts/tools-requirements.txt).
fn python() -> PathBuf {
    let p = root().join(".venv/bin/python3");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it makes the venv with tritonclient[grpc] and onnxruntime)",
        p.display()
    );
    p
}

/// The sample inputs of a corpus model, as NAME → .npy path.
fn sample_inputs(model: &str) -> Value {
    let dir = corpus(&format!("{model}.inputs"));
    let mut inputs = serde_json::Map::new();
    for entry in std::fs::read_dir(&dir).expect("inputs dir").flatten() {
        let path = entry.path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("npy name")
            .to_string();
        inputs.insert(name, json!(path));
    }
    Value::Object(inputs)
}

/// Waits until the agent at `address` holds the route table of `model` (it follows the control plane's).
fn wait_agent_has(sandbox: &Sandbox, address: &str, model: &str) {
    sandbox.wait_until(
        &format!("agent {address} holds the routes of {model}"),
        Duration::from_secs(30),
        |s| {
            s.runtime.block_on(async {
                v1::routes_client::RoutesClient::new(s.channel(address))
                    .get_routes(v1::GetRoutesRequest {
                        model: model.to_string(),
                    })
                    .await
                    .is_ok()
            })
        },
    );
}

/// The report entry of step `tag`.
fn step<'a>(report: &'a [Value], tag: &str) -> &'a Value {
    report
        .iter()
        .find(|e| e["tag"] == tag)
        .unwrap_or_else(|| panic!("no report of step {tag}"))
}

/// A step that must have succeeded.
fn ok<'a>(report: &'a [Value], tag: &str) -> &'a Value {
    let e = step(report, tag);
    assert_eq!(e["ok"], true, "step {tag} failed: {e}");
    e
}

/// A step that must have failed with `code`, its message containing each of `needles`.
fn refused(report: &[Value], tag: &str, code: &str, needles: &[&str]) {
    let e = step(report, tag);
    assert_eq!(e["ok"], false, "step {tag} should have failed: {e}");
    assert_eq!(e["code"], code, "step {tag}: {e}");
    let message = e["message"].as_str().unwrap_or_default();
    for needle in needles {
        assert!(
            message.contains(needle),
            "step {tag}: message lacks {needle:?}: {message}"
        );
    }
}

/// An inference step that must have answered every output within the cluster's tolerance of onnxruntime's
/// whole-model run, and of tract's (the .npy files the script saved).
fn assert_matches_whole_model(report: &[Value], tag: &str, model: &str) {
    let e = ok(report, tag);
    let want = reference(model);
    let diffs = e["diffs"].as_object().expect("diffs");
    assert_eq!(diffs.len(), want.outputs.len(), "{tag}: {e}");
    for (name, diff) in diffs {
        let diff = diff
            .as_f64()
            .unwrap_or_else(|| panic!("{tag}: output {name}: {diff}"));
        assert!(
            diff <= 1e-4,
            "{tag}: output {name} differs from onnxruntime by {diff}"
        );
    }
    let got: Vec<(String, strata_runtime::TensorData)> = e["saved"]
        .as_object()
        .expect("saved")
        .iter()
        .map(|(name, path)| {
            let bytes = std::fs::read(path.as_str().expect("path")).expect("saved npy");
            (name.clone(), npy::decode(&bytes).expect("npy"))
        })
        .collect();
    assert_outputs_match(&got, &want.outputs, tag);
}

fn tensors(v: &Value) -> Vec<(String, String, Vec<i64>)> {
    v.as_array()
        .expect("tensors")
        .iter()
        .map(|t| {
            let shape = t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_i64().expect("dim"))
                .collect();
            (
                t["name"].as_str().expect("name").to_string(),
                t["datatype"].as_str().expect("datatype").to_string(),
                shape,
            )
        })
        .collect()
}

fn t(name: &str, datatype: &str, shape: &[i64]) -> (String, String, Vec<i64>) {
    (name.to_string(), datatype.to_string(), shape.to_vec())
}

/// Runs the script on `plan`, returns its report.
fn run_client(dir: &Path, plan: &Value) -> Vec<Value> {
    let plan_file = dir.join("plan.json");
    let report_file = dir.join("report.json");
    std::fs::write(&plan_file, plan.to_string()).expect("plan");
    let out = Command::new(python())
        .arg(root().join("cli/tests/oip_client.py"))
        .arg(&plan_file)
        .arg(&report_file)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "oip_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str::<Vec<Value>>(&std::fs::read_to_string(&report_file).expect("report"))
        .expect("report json")
}

#[test]
fn tritonclient_grpc_enters_plans_at_agents_under_privacy_and_mutual_tls() {
    let sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    let int_tensors = corpus("int_tensors.onnx");
    let multi_io = corpus("multi_io.onnx");
    sandbox.push(&int_tensors, "ints", "open");
    sandbox.push(&multi_io, "multi", "open");
    sandbox.push(&int_tensors, "ints-edge", "edge");
    sandbox.push(&int_tensors, "ints-features", "features");
    sandbox.push(&int_tensors, "ints-device", "device");
    // Too large for the edge alone (THREE_TIER): its plans from the edge go on to the cloud.
    let squeezenet = corpus("squeezenet.onnx");
    sandbox.push(&squeezenet, "squeeze", "open");
    let models = [
        "ints",
        "multi",
        "ints-edge",
        "ints-features",
        "ints-device",
        "squeeze",
    ];
    let version = sandbox.wait_served("ints", 1).version.to_string();
    for model in models {
        sandbox.wait_served(model, 1);
    }
    let agents: Vec<(String, String)> = sandbox
        .agents
        .iter()
        .enumerate()
        .map(|(n, a)| {
            let role = Role::Node(a.tier.parse().expect("tier"));
            let name = Identity::new(&format!("{}{n}", a.tier), role)
                .expect("identity")
                .dns_name();
            (a.address.clone(), name)
        })
        .collect();
    for (address, _) in &agents {
        for model in models {
            wait_agent_has(&sandbox, address, model);
        }
    }

    let device = sandbox
        .credentials(Role::Device, "app")
        .expect("TLS sandbox");
    let reader = sandbox
        .credentials(Role::Reader, "viewer")
        .expect("TLS sandbox");
    let agent = |(address, name): &(String, String)| {
        json!({
            "url": address,
            "server_name": name,
            "ca": device.join("ca.pem"),
            "cert": device.join("cert.pem"),
            "key": device.join("key.pem"),
        })
    };
    let out = sandbox.dir.path().join("oip");
    std::fs::create_dir_all(&out).expect("out dir");
    let ints = sample_inputs("int_tensors");
    let multi = sample_inputs("multi_io");
    let squeeze = sample_inputs("squeezenet");
    let infer = |tag: &str, at: &str, model: &str, onnx: &Path, inputs: &Value, mode: &str| {
        json!({"tag": tag, "op": "infer", "agent": at, "model": model, "onnx": onnx, "inputs": inputs,
               "mode": mode})
    };
    let mut steps = vec![
        json!({"tag": "server", "op": "server", "agent": "edge"}),
        json!({"tag": "meta-ints", "op": "metadata", "agent": "edge", "model": "ints"}),
        json!({"tag": "meta-multi", "op": "metadata", "agent": "edge", "model": "multi"}),
        json!({"tag": "meta-features", "op": "metadata", "agent": "edge", "model": "ints-features"}),
        infer("ints-raw", "edge", "ints", &int_tensors, &ints, "raw"),
        infer("ints-typed", "edge", "ints", &int_tensors, &ints, "typed"),
        infer("multi-raw", "edge", "multi", &multi_io, &multi, "raw"),
        infer("multi-typed", "edge", "multi", &multi_io, &multi, "typed"),
        infer("ints-at-cloud", "cloud", "ints", &int_tensors, &ints, "raw"),
        infer(
            "squeeze-raw",
            "edge",
            "squeeze",
            &squeezenet,
            &squeeze,
            "raw",
        ),
        infer(
            "edge-at-edge",
            "edge",
            "ints-edge",
            &int_tensors,
            &ints,
            "raw",
        ),
        infer(
            "edge-at-cloud",
            "cloud",
            "ints-edge",
            &int_tensors,
            &ints,
            "raw",
        ),
        infer(
            "features",
            "edge",
            "ints-features",
            &int_tensors,
            &ints,
            "raw",
        ),
        infer(
            "device",
            "edge",
            "ints-device",
            &int_tensors,
            &ints,
            "typed",
        ),
        infer("unknown", "edge", "nope", &int_tensors, &ints, "raw"),
        json!({"tag": "server-no-cert", "op": "server", "agent": "edge", "no_cert": true}),
        json!({"tag": "server-reader", "op": "server", "agent": "edge",
               "cert": reader.join("cert.pem"), "key": reader.join("key.pem")}),
    ];
    for s in &mut steps {
        if s["tag"] == "ints-raw" {
            s["id"] = json!("request-1");
        }
    }
    for (tag, mutate, mode) in [
        ("wrong-dtype", "dtype", "raw"),
        ("wrong-shape", "shape", "raw"),
        ("wrong-count", "count", "typed"),
    ] {
        let mut s = infer(tag, "edge", "ints", &int_tensors, &ints, mode);
        s["mutate"] = json!(mutate);
        steps.push(s);
    }
    let mut no_cert = infer("infer-no-cert", "edge", "ints", &int_tensors, &ints, "raw");
    no_cert["no_cert"] = json!(true);
    steps.push(no_cert);
    let plan = json!({
        "agents": {"edge": agent(&agents[0]), "cloud": agent(&agents[1])},
        "out": out,
        "steps": steps,
    });
    let before = sandbox.status(&agents[0].0);
    let cloud_before = sandbox.status(&agents[1].0);
    let report = run_client(&out, &plan);

    // Server and model metadata.
    let server = ok(&report, "server");
    assert_eq!(
        (&server["live"], &server["ready"], &server["name"]),
        (&json!(true), &json!(true), &json!("strata")),
        "{server}"
    );
    let meta = ok(&report, "meta-ints");
    assert_eq!(meta["ready"], true, "{meta}");
    let m = &meta["metadata"];
    assert_eq!(m["name"], "ints");
    assert_eq!(m["versions"], json!([version]));
    assert_eq!(m["platform"], "onnx_onnxv1");
    assert_eq!(
        tensors(&m["inputs"]),
        [
            t("scores", "FP32", &[1, 10, 16]),
            t("idx", "INT64", &[1, 4])
        ]
    );
    assert_eq!(
        tensors(&m["outputs"]),
        [t("y", "FP32", &[1, 4]), t("codes", "INT64", &[1, 10])]
    );
    let m = &ok(&report, "meta-multi")["metadata"];
    assert_eq!(
        tensors(&m["inputs"]),
        [t("a", "FP32", &[1, 16]), t("b", "FP32", &[1, 4, 8, 8])]
    );
    assert_eq!(
        tensors(&m["outputs"]),
        [
            t("early", "FP32", &[1, 32]),
            t("mid", "FP32", &[1, 8, 4, 4]),
            t("late", "FP32", &[1, 4])
        ]
    );
    // A features model has metadata (no tensor data in it), but is never ready at an agent.
    let meta = ok(&report, "meta-features");
    assert_eq!(meta["ready"], false, "{meta}");

    // Inference, raw and typed, equals the whole model run locally; answers come as they were asked.
    for (tag, model, mode) in [
        ("ints-raw", "int_tensors", "raw"),
        ("ints-typed", "int_tensors", "typed"),
        ("multi-raw", "multi_io", "raw"),
        ("multi-typed", "multi_io", "typed"),
        ("ints-at-cloud", "int_tensors", "raw"),
        ("edge-at-edge", "int_tensors", "raw"),
        ("squeeze-raw", "squeezenet", "raw"),
    ] {
        assert_matches_whole_model(&report, tag, model);
        let e = ok(&report, tag);
        let outputs = e["order"].as_array().expect("order").len();
        let raw = if mode == "raw" { outputs } else { 0 };
        assert_eq!(e["raw_output_contents"], json!(raw), "{tag}: {e}");
        assert_eq!(e["model_version"], json!(version), "{tag}: {e}");
    }
    assert_eq!(ok(&report, "ints-raw")["id"], "request-1");
    assert_eq!(ok(&report, "ints-raw")["order"], json!(["y", "codes"]));

    // Privacy: raw inputs are served only where the model's level lets them be.
    refused(
        &report,
        "edge-at-cloud",
        "PERMISSION_DENIED",
        &[
            "privacy level edge",
            "nothing of it may reach the cloud tier",
            "(cloud)",
        ],
    );
    refused(
        &report,
        "features",
        "PERMISSION_DENIED",
        &[
            "privacy level features",
            "raw inputs never leave the device",
            "(edge)",
            "device SDK",
        ],
    );
    refused(
        &report,
        "device",
        "PERMISSION_DENIED",
        &[
            "privacy level device",
            "nothing of it may leave the device",
            "(edge)",
        ],
    );

    // Malformed requests and unknown models, as the protocol says.
    refused(
        &report,
        "wrong-dtype",
        "INVALID_ARGUMENT",
        &[
            "input \"idx\"",
            "takes INT64 [1, 4], the request declares INT32 [1, 4]",
        ],
    );
    refused(
        &report,
        "wrong-shape",
        "INVALID_ARGUMENT",
        &[
            "input \"idx\"",
            "takes INT64 [1, 4], the request declares INT64 [2, 4]",
        ],
    );
    refused(
        &report,
        "wrong-count",
        "INVALID_ARGUMENT",
        &["input \"idx\": INT64 [1, 4] holds 4 elements, its `int64_contents` holds 3"],
    );
    refused(
        &report,
        "unknown",
        "NOT_FOUND",
        &["no model \"nope\"", "ints"],
    );

    // Mutual TLS: no client certificate, no call; a certificate of the wrong role, no call either.
    refused(&report, "server-no-cert", "UNAUTHENTICATED", &[]);
    refused(&report, "infer-no-cert", "UNAUTHENTICATED", &[]);
    refused(&report, "server-reader", "PERMISSION_DENIED", &["reader"]);

    // The test proves nothing unless the edge agent itself ran the requests it entered and counted the
    // denials: its own stage runs went up, it received the raw inputs, and it denied two models.
    let after = sandbox.status(&agents[0].0);
    assert!(
        after.requests_served >= before.requests_served + 5,
        "the edge agent served {} requests before and {} after",
        before.requests_served,
        after.requests_served
    );
    assert!(
        after.received_tensors.iter().any(|n| n == "idx"),
        "{:?}",
        after.received_tensors
    );
    assert!(
        after.requests_denied >= before.requests_denied + 2,
        "denied {} → {}",
        before.requests_denied,
        after.requests_denied
    );
    let cloud = sandbox.status(&agents[1].0);
    assert!(cloud.requests_denied >= 1, "the cloud agent denied nothing");
    // The cloud ran the request entered there, and the rest of SqueezeNet's plan the edge forwarded to it.
    assert!(
        cloud.requests_served >= cloud_before.requests_served + 2,
        "the cloud agent served {} requests before and {} after",
        cloud_before.requests_served,
        cloud.requests_served
    );
}
