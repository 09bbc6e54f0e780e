//! The network testbed end to end (Linux, root: CI runs as root): namespaces, the packet-level emulator, tc
//! rate limits, cgroup CPU quotas and a real cluster, with squeezenet.
//!
//! - The emulator delivers the RTT and goodput it is set to (within 5 %).
//! - On a fast link the adaptive client picks a split off the device; behind a 1 Mbit/s link that the
//!   planner's profile believes to be 100 Mbit/s, it starts on the profile's choice, measures, and switches
//!   to the device, whose plan is ≥ 3× faster there. Both times it stays within 25 % of the forced best.
//! - Bad scenarios get clear errors, and nothing is left behind.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `testbed/run` with the binaries of this build.
fn testbed(args: &[&str]) -> std::process::Output {
    let bins = Path::new(env!("CARGO_BIN_EXE_strata-netem"))
        .parent()
        .expect("a bin dir")
        .to_path_buf();
    for b in ["strata", "strata-edge-agent", "strata-drive"] {
        assert!(
            bins.join(b).exists(),
            "{b} is not built in {}: run the workspace's tests (cargo nextest run --workspace)",
            bins.display()
        );
    }
    Command::new(root().join("testbed/run"))
        .args(args)
        .env("STRATA_BIN_DIR", &bins)
        .env("STRATA_LOG", "warn")
        .output()
        .expect("testbed/run starts")
}

fn require_root() {
    // The effective uid, from /proc.
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    assert!(
        root,
        "the testbed tests need root (network namespaces, tc, cgroups); CI runs as root"
    );
}

fn result(out: &std::process::Output, dir: &Path, file: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "testbed/run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(dir.join(file)).expect("result file"))
        .expect("json")
}

fn no_leftovers() {
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let ns = String::from_utf8_lossy(&ns.stdout);
    for name in ["stb-dev", "stb-edge", "stb-cloud"] {
        assert!(
            !ns.split_whitespace().any(|n| n == name),
            "namespace {name} left behind: {ns}"
        );
    }
    for tier in ["device", "edge", "cloud"] {
        assert!(
            !Path::new(&format!("/sys/fs/cgroup/cpu/strata-testbed-{tier}")).exists(),
            "cgroup of {tier} left behind"
        );
    }
}

#[test]
fn the_emulator_delivers_the_rtt_and_goodput_it_is_set_to() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("s.toml");
    std::fs::write(
        &scenario,
        "name = \"accuracy\"\n[links.device-edge]\nrate_mbit = 20\nrtt_ms = 20\n\
         [links.edge-cloud]\nrate_mbit = 100\nrtt_ms = 10\n",
    )
    .expect("scenario");
    let out = testbed(&[
        "--scenario",
        &scenario.to_string_lossy(),
        "--check-emulator",
        "--out",
        &dir.path().to_string_lossy(),
    ]);
    let report = result(&out, dir.path(), "emulator.json");
    for link in ["device-edge", "edge-cloud"] {
        for what in ["rtt_ms", "up_mbit", "down_mbit"] {
            let e = report[link][what]["error_pct"]
                .as_f64()
                .expect("an error figure");
            assert!(e.abs() <= 5.0, "{link} {what}: {e} % off: {report}");
        }
    }
    no_leftovers();
}

#[test]
fn adaptive_routing_picks_the_best_plan_and_switches_when_the_link_is_slower_than_profiled() {
    require_root();
    let model = root().join("corpus/models/squeezenet.onnx");
    let run = |scenario: &str, requests: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = testbed(&[
            "--scenario",
            &root()
                .join("testbed/scenarios")
                .join(scenario)
                .to_string_lossy(),
            "--model",
            &model.to_string_lossy(),
            "--requests",
            requests,
            "--out",
            &dir.path().to_string_lossy(),
        ]);
        let r = result(&out, dir.path(), "result.json");
        no_leftovers();
        r
    };
    let tiers = |r: &serde_json::Value, id: &str| -> Vec<String> {
        r["plans"]
            .as_array()
            .expect("plans")
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| {
                p["tiers"]
                    .as_array()
                    .expect("tiers")
                    .iter()
                    .map(|t| t.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let p50 = |r: &serde_json::Value, id: &str| {
        r["plans"]
            .as_array()
            .expect("plans")
            .iter()
            .find(|p| p["id"] == id)
            .and_then(|p| p["measured_p50_ms"].as_f64())
            .unwrap_or(f64::INFINITY)
    };

    let fast = run("ci-fast.toml", "5");
    let fast_best = fast["best_plan"].as_str().expect("a best plan").to_string();
    assert_ne!(
        tiers(&fast, &fast_best),
        ["device"],
        "on the fast link the best plan leaves the device: {fast}"
    );
    let ratio = fast["adaptive_over_best"].as_f64().expect("a ratio");
    assert!(
        ratio <= 1.25,
        "fast link: adaptive is {ratio} × the best: {fast}"
    );

    let slow = run("ci-slow.toml", "3");
    let best = slow["best_plan"].as_str().expect("a best plan").to_string();
    assert_eq!(tiers(&slow, &best), ["device"], "{slow}");
    assert!(
        p50(&slow, &fast_best) >= 3.0 * p50(&slow, &best),
        "behind the slow link the fast link's best plan must be ≥ 3× slower than the device: {slow}"
    );
    let first = slow["adaptive"]["warmup_choices"][0]
        .as_str()
        .expect("a first choice");
    assert_ne!(
        tiers(&slow, first),
        ["device"],
        "the profile (100 Mbit/s) should first send work off the device: {slow}"
    );
    // After measuring, every adaptive request stays on the device, but for the bounded exploration of a
    // runner-up (at most one request in 20 s).
    let choices = slow["adaptive"]["choices"].as_object().expect("choices");
    let elsewhere: u64 = choices
        .iter()
        .filter(|(id, _)| **id != best)
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    let explored = slow["adaptive"]["explored"].as_u64().expect("explored");
    assert!(
        elsewhere <= explored && explored <= 1,
        "after measuring, adaptive requests stay on the device but for one exploration: {slow}"
    );
    let ratio = slow["adaptive_over_best"].as_f64().expect("a ratio");
    assert!(
        ratio <= 1.25,
        "slow link: adaptive is {ratio} × the best: {slow}"
    );
}

#[test]
fn bad_scenarios_are_refused_with_the_reason() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "[links.device-cloud]\nrate_mbit = 1\nrtt_ms = 1\n",
            "unknown link \"device-cloud\"",
        ),
        (
            "[links.device-edge]\nrate_mbit = -3\nrtt_ms = 1\n[links.edge-cloud]\nrate_mbit = 1\nrtt_ms = 1\n",
            "links.device-edge.rate_mbit = -3 is impossible",
        ),
        (
            "[links.device-edge]\nrate_mbit = 3\nrtt_ms = 1\n[links.edge-cloud]\nrate_mbit = 1\nrtt_ms = 1\n\
             [tiers.phone]\ncpu = 1\n",
            "unknown tier \"phone\"",
        ),
    ];
    for (text, want) in cases {
        let scenario = dir.path().join("bad.toml");
        std::fs::write(&scenario, text).expect("scenario");
        let out = testbed(&[
            "--scenario",
            &scenario.to_string_lossy(),
            "--check-emulator",
            "--out",
            &dir.path().to_string_lossy(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(stderr.contains(want), "no \"{want}\" in: {stderr}");
    }
    no_leftovers();
}
