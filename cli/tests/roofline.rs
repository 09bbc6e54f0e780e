//! `strata profile --fit`: the roofline fitted to this machine's measured node times, as a cluster tier the
//! planner accepts.

mod common;

use std::path::Path;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// The number after `key = ` on its own line of a TOML section.
fn field(section: &str, key: &str) -> f64 {
    section
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{section}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e} in:\n{section}"))
}

#[test]
fn profile_fit_writes_a_roofline_tier_that_plan_accepts() {
    let dir = tempfile::tempdir().expect("tmp");
    let fitted = dir.path().join("device.toml");
    let stdout = ok(&strata(&[
        "profile",
        s(&corpus("squeezenet.onnx")),
        s(&corpus("skip_long.onnx")),
        "--runs",
        "3",
        "--warmup",
        "1",
        "--backend",
        "tract",
        "--fit-out",
        s(&fitted),
    ]));
    let section = std::fs::read_to_string(&fitted).expect("the fitted tier is written");
    assert!(
        stdout.contains(&section),
        "the section is printed too:\n{stdout}"
    );
    assert!(section.contains("[tiers.device]"), "{section}");
    for key in ["gflops", "bandwidth_gbs", "op_overhead_us", "memory_mib"] {
        let v = field(&section, key);
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }

    // The fitted tier as the device of a two-tier cluster.
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(
        &cluster,
        format!(
            "name = \"fitted\"\n{section}\n\n[tiers.cloud]\ngflops = 4000.0\nmemory_mib = 16384\n\n\
             [[links]]\nfrom = \"device\"\nto = \"cloud\"\nup_mbps = 20.0\nrtt_ms = 40.0\n"
        ),
    )
    .expect("write cluster");
    let out = dir.path().join("plan");
    ok(&strata(&[
        "plan",
        s(&corpus("squeezenet.onnx")),
        "--cluster",
        s(&cluster),
        "--privacy",
        "device",
        "--out",
        s(&out),
        "--json",
    ]));
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).expect("plan.json"))
            .expect("json");
    let stages = plan["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 1, "privacy device: one stage");
    let predicted = stages[0]["predicted_ms"].as_f64().expect("predicted ms");
    // The fit is to this machine's times, so the whole model's prediction is near what it measured.
    let measured: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("squeezenet.onnx: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no squeezenet time in:\n{stdout}"));
    assert!(
        predicted > measured / 3.0 && predicted < measured * 3.0,
        "predicted {predicted} ms, measured {measured} ms"
    );
}

#[test]
fn profile_fit_on_too_little_data_is_a_clear_error() {
    let out = strata(&["profile", s(&corpus("shape_chain.onnx")), "--fit"]);
    assert_clean_error(&out, &["cannot fit a roofline", "usable observation"]);
}

#[test]
fn profile_of_several_models_refuses_an_input_no_model_has_and_one_out_file() {
    let a = corpus("squeezenet.onnx");
    let b = corpus("skip_long.onnx");
    let out = strata(&["profile", s(&a), s(&b), "--input", "nothing=1,3,224,224"]);
    assert_clean_error(&out, &["--input nothing", "none of the models"]);
    let out = strata(&["profile", s(&a), s(&b), "--out", "/tmp/never-written.json"]);
    assert_clean_error(&out, &["--out writes one model's profile"]);
}
