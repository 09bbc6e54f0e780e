//! The `strata` binary end to end: plan or split, run the stages, and get the whole model's outputs.

mod common;

use std::path::Path;

use common::*;
use strata_runtime::npy;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn input_arg(model: &str) -> (String, String) {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("corpus/models/manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let entry = manifest
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["name"] == model)
        .expect("model in manifest");
    let input = &entry["inputs"][0];
    let name = input["name"].as_str().expect("name").to_string();
    let file = root()
        .join("corpus/models")
        .join(input["npy"].as_str().expect("npy"));
    (name.clone(), format!("{name}={}", file.display()))
}

fn max_diff(a: &Path, b: &Path) -> f64 {
    let a = npy::decode(&std::fs::read(a).expect("read a")).expect("npy a");
    let b = npy::decode(&std::fs::read(b).expect("read b")).expect("npy b");
    a.max_relative_diff(&b).expect("same dtype and shape")
}

/// `DIR/plan.json` as JSON.
fn read_plan(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("plan.json")).expect("plan.json written");
    serde_json::from_str(&text).expect("plan.json parses")
}

/// `strata inspect --json MODEL`.
fn inspect(model: &Path) -> serde_json::Value {
    serde_json::from_slice(&ok(&strata(&["inspect", s(model), "--json"])).into_bytes())
        .expect("inspect --json")
}

/// `strata run TARGET --input INPUT --output-dir OUT`, which must succeed; returns its stdout.
fn run(target: &Path, input: &str, out: &Path) -> String {
    ok(&strata(&[
        "run",
        s(target),
        "--input",
        input,
        "--output-dir",
        s(out),
    ]))
}

#[test]
fn plan_then_run_matches_whole_model() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = corpus("squeezenet.onnx");
    let (_, input) = input_arg("squeezenet");
    let plan_dir = dir.path().join("plan");
    let table = ok(&strata(&[
        "plan",
        s(&model),
        "--cluster",
        s(&cluster("glasses-phone-cloud.toml")),
        "--privacy",
        "features",
        "--out",
        s(&plan_dir),
    ]));
    assert!(
        table.contains("device") && table.contains("predicted:"),
        "{table}"
    );
    let plan: serde_json::Value = read_plan(&plan_dir);
    // The plan.json contract.
    for key in [
        "model",
        "privacy",
        "objective",
        "predicted",
        "timings_ms",
        "stages",
    ] {
        assert!(plan.get(key).is_some(), "plan.json has {key}");
    }
    assert_eq!(plan["privacy"], "features");
    assert_eq!(plan["objective"], "latency");
    assert!(plan["predicted"]["latency_ms"].as_f64().expect("latency") > 0.0);
    assert!(
        plan["predicted"]["device_energy_mj"]
            .as_f64()
            .expect("energy")
            > 0.0
    );
    for key in ["analyse", "plan", "extract"] {
        assert!(
            plan["timings_ms"][key].as_f64().is_some(),
            "timings_ms.{key}"
        );
    }
    let stages = plan["stages"].as_array().expect("stages");
    assert!(
        stages.len() >= 2,
        "squeezenet is split on this cluster: {plan}"
    );
    for (i, st) in stages.iter().enumerate() {
        assert_eq!(st["index"].as_u64(), Some(i as u64));
        for key in [
            "tier",
            "file",
            "inputs",
            "outputs",
            "nodes",
            "flops",
            "predicted_ms",
        ] {
            assert!(st.get(key).is_some(), "stage {i} has {key}");
        }
        assert!(plan_dir.join(st["file"].as_str().expect("file")).exists());
    }
    assert_eq!(
        stages[0]["tier"], "device",
        "features privacy starts on the device"
    );

    let split_out = dir.path().join("split-out");
    let whole_out = dir.path().join("whole-out");
    let route = run(&plan_dir, &input, &split_out);
    assert!(
        route.contains("stage 0 on device") && route.contains("stage 1"),
        "{route}"
    );
    run(&model, &input, &whole_out);
    let out = "softmaxout_1.npy";
    let d = max_diff(&split_out.join(out), &whole_out.join(out));
    assert!(d <= 1e-4, "split output differs by {d}");
}

#[test]
fn split_then_run_matches_whole_model() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = corpus("skip_long.onnx");
    let (_, input) = input_arg("skip_long");
    let report: serde_json::Value = inspect(&model);
    let outputs: Vec<String> = report["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o["name"].as_str().expect("name").to_string())
        .collect();
    // Two boundaries taken from the largest activations: device | edge | cloud.
    let acts: Vec<String> = report["largest_activations"]
        .as_array()
        .expect("acts")
        .iter()
        .map(|a| a["name"].as_str().expect("name").to_string())
        .collect();
    let plan_dir = dir.path().join("split");
    let mut args = vec!["split".to_string(), s(&model).to_string()];
    // Find two boundaries that the splitter accepts (each must add nodes).
    let mut chosen = None;
    'outer: for a in &acts {
        for b in &acts {
            let mut try_args = args.clone();
            try_args.extend([
                "--at".into(),
                a.clone(),
                "--at".into(),
                b.clone(),
                "--out".into(),
                s(&plan_dir).into(),
            ]);
            let refs: Vec<&str> = try_args.iter().map(String::as_str).collect();
            if strata(&refs).status.success() {
                chosen = Some(try_args);
                break 'outer;
            }
        }
    }
    args = chosen.expect("some pair of activations splits skip_long in three");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&strata(&refs));
    let plan: serde_json::Value = read_plan(&plan_dir);
    let tiers: Vec<&str> = plan["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["tier"].as_str().expect("tier"))
        .collect();
    assert_eq!(tiers, ["device", "edge", "cloud"]);
    let split_out = dir.path().join("a");
    let whole_out = dir.path().join("b");
    run(&plan_dir, &input, &split_out);
    run(&model, &input, &whole_out);
    for o in outputs {
        let f = format!("{o}.npy");
        let d = max_diff(&split_out.join(&f), &whole_out.join(&f));
        assert!(d <= 1e-4, "{o} differs by {d}");
    }
}

#[test]
fn profile_feeds_the_planner() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = corpus("squeezenet.onnx");
    let profile = dir.path().join("p.json");
    let text = ok(&strata(&[
        "profile",
        s(&model),
        "--runs",
        "3",
        "--warmup",
        "1",
        "--out",
        s(&profile),
    ]));
    assert!(text.contains("GFLOP/s"), "{text}");
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&profile).expect("profile")).expect("json");
    let nodes = p["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 66, "one entry per squeezenet node");
    let sum: f64 = nodes.iter().map(|n| n["ms"].as_f64().expect("ms")).sum();
    let total = p["total_ms"].as_f64().expect("total");
    assert!(total > 0.0 && sum > 0.0);
    assert!(nodes.iter().all(|n| n["ms"].as_f64().expect("ms") >= 0.0));
    // Per-node instrumentation adds overhead but the two must be of the same magnitude.
    assert!(
        sum > 0.3 * total && sum < 5.0 * total,
        "node sum {sum} ms vs whole run {total} ms"
    );
    let out = dir.path().join("plan");
    ok(&strata(&[
        "plan",
        s(&model),
        "--cluster",
        s(&cluster("phone-homebox-cloud.toml")),
        "--profile",
        s(&profile),
        "--out",
        s(&out),
    ]));
    let plan: serde_json::Value = read_plan(&out);
    assert_eq!(plan["optimality"]["exact"], true);
}

#[test]
fn inspect_reports_resnet50_figures() {
    let report: serde_json::Value = inspect(&corpus("resnet50.onnx"));
    // ResNet-50: 25.6 M parameters and 4.1 G multiply-adds (He et al. 2016) = 8.2 GFLOPs.
    let params = report["parameters"].as_f64().expect("parameters");
    assert!((params - 25.6e6).abs() < 0.1e6, "parameters {params}");
    let flops = report["flops"].as_f64().expect("flops");
    assert!((flops / 1e9 - 8.2).abs() < 0.3, "flops {flops}");
    assert_eq!(report["ops"]["Conv"], 53);
    assert!(report["unsupported"].as_array().expect("list").is_empty());
}

#[test]
fn energy_objective_with_budget_meets_the_budget() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = corpus("squeezenet.onnx");
    let fast = dir.path().join("fast");
    ok(&strata(&[
        "plan",
        s(&model),
        "--cluster",
        s(&cluster("wearable-gateway-cloud.toml")),
        "--out",
        s(&fast),
        "--json",
    ]));
    let fast: serde_json::Value = read_plan(&fast);
    let fastest = fast["predicted"]["latency_ms"].as_f64().expect("latency");
    let budget = fastest * 1.5;
    let out = dir.path().join("frugal");
    ok(&strata(&[
        "plan",
        s(&model),
        "--cluster",
        s(&cluster("wearable-gateway-cloud.toml")),
        "--objective",
        "energy",
        "--latency-ms",
        &format!("{budget}"),
        "--out",
        s(&out),
    ]));
    let plan: serde_json::Value = read_plan(&out);
    assert!(plan["predicted"]["latency_ms"].as_f64().expect("latency") <= budget + 1e-9);
    assert!(
        plan["predicted"]["device_energy_mj"]
            .as_f64()
            .expect("energy")
            <= fast["predicted"]["device_energy_mj"]
                .as_f64()
                .expect("energy")
                + 1e-9
    );
    let gap = plan["optimality"]["gap"].as_f64().expect("gap");
    assert!((0.0..1.0).contains(&gap), "gap {gap}");
}

#[test]
fn no_manual_split_beats_the_plan() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = corpus("squeezenet.onnx");
    let c = cluster("glasses-phone-cloud.toml");
    let plan_dir = dir.path().join("plan");
    ok(&strata(&[
        "plan",
        s(&model),
        "--cluster",
        s(&c),
        "--out",
        s(&plan_dir),
    ]));
    let plan: serde_json::Value = read_plan(&plan_dir);
    let best = plan["predicted"]["latency_ms"].as_f64().expect("latency");
    let report: serde_json::Value = inspect(&model);
    let acts: Vec<String> = report["largest_activations"]
        .as_array()
        .expect("acts")
        .iter()
        .map(|a| a["name"].as_str().expect("name").to_string())
        .collect();
    let mut scored = 0;
    for a in &acts {
        for b in &acts {
            let out = dir.path().join(format!("split-{scored}"));
            let run = strata(&[
                "split",
                s(&model),
                "--at",
                a,
                "--at",
                b,
                "--cluster",
                s(&c),
                "--out",
                s(&out),
            ]);
            if !run.status.success() {
                continue; // a boundary that adds nothing is refused, as tested elsewhere
            }
            let split: serde_json::Value = read_plan(&out);
            let manual = split["predicted"]["latency_ms"]
                .as_f64()
                .expect("manual split is scored");
            assert!(
                manual >= best - 1e-9,
                "split at {a} | {b}: {manual} ms beats the optimum {best} ms"
            );
            scored += 1;
        }
    }
    assert!(scored >= 3, "only {scored} manual splits were scored");
}

/// A cluster that gives no power figures (they default to 0 W) and has no cloud tier: the energy layer must not
/// turn 0 W × an absent tier's infinite time into NaN.
#[test]
fn plan_without_power_figures_or_a_cloud_tier_succeeds_for_both_objectives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = dir.path().join("zero-power.toml");
    std::fs::write(
        &cluster,
        "[tiers.device]\ngflops = 1.0\nmemory_mib = 4096\n[tiers.edge]\ngflops = 100.0\nmemory_mib = 8192\n\
         [[links]]\nfrom = \"device\"\nto = \"edge\"\nup_mbps = 100.0\nrtt_ms = 1.0\n",
    )
    .expect("cluster file");
    for objective in ["latency", "energy"] {
        let out = strata(&[
            "plan",
            &corpus("squeezenet.onnx").to_string_lossy(),
            "--cluster",
            &cluster.to_string_lossy(),
            "--objective",
            objective,
            "--out",
            &dir.path().join(objective).to_string_lossy(),
        ]);
        assert!(
            out.status.success(),
            "{objective}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
