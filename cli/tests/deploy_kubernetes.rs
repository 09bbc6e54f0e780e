//! The Kubernetes manifests (`deploy/kubernetes/`), checked without a cluster by `deploy/kubernetes/check.py`:
//! every overlay renders with `kubectl kustomize`, validates strictly against several Kubernetes versions'
//! schemas (kubernetes-validate), and every workload has probes (Strata's: the kubelet's `grpc:` probes on the
//! plain probe port, `--health-listen`), requests and limits, a restrictive security context, a
//! drain-long-enough grace period, a PodDisruptionBudget when replicas > 1 and NetworkPolicies.
//! The self-test proves the check can fail; the smoke test runs the dev overlay's and production's command
//! lines, Secrets and volumes with this build's binaries (and etcd) on loopback, and runs the grpc probes as
//! the kubelet would (a plain HTTP/2 health check, by check.py's own client). Needs kubectl, the venv's
//! kubernetes-validate and etcd (scripts/setup.sh installs them); without them these tests fail, they never
//! skip.

mod sandbox;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's Python, and kubectl (KUBECTL, else on PATH); a clear failure naming scripts/setup.sh when either
/// is missing.
fn check(args: &[&str]) -> Output {
    let root = root();
    let python = std::env::var_os("STRATA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python3"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it makes the venv with PyYAML and kubernetes-validate)",
        python.display()
    );
    let kubectl_found = std::env::var_os("KUBECTL").is_some()
        || Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        kubectl_found,
        "kubectl is missing: run scripts/setup.sh (it installs Debian's kubernetes-client), or set KUBECTL"
    );
    let out = Command::new(&python)
        .arg(root.join("deploy/kubernetes/check.py"))
        .args(args)
        .current_dir(&root)
        .output()
        .expect("python3 runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn every_overlay_renders_validates_and_meets_the_workload_rules() {
    let out = check(&[]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "deploy/kubernetes/check.py found violations (FAIL lines above)"
    );
    for overlay in [
        "dev",
        "production",
        "production-gpu",
        "external-etcd",
        "cert-manager",
    ] {
        assert!(
            text.contains(&format!("  {overlay}: ")) && !text.contains(&format!("FAIL {overlay}:")),
            "overlay {overlay} was not checked cleanly: {text}"
        );
    }
    assert!(text.contains("strict, against Kubernetes 1.30, 1.36, 1.37"));
    assert!(text.contains("all overlays render, validate and meet the workload rules"));
}

#[test]
fn the_check_fails_on_a_workload_without_probes_on_an_unknown_field_on_wrong_probes_and_open_metrics()
 {
    let out = check(&["--self-test"]);
    let text = stdout(&out);
    assert!(out.status.success(), "the self-test failed: {text}");
    assert!(
        text.contains(
            "caught: no-probes: Deployment/strata-cloud-agent: container agent has no readinessProbe"
        ),
        "the check did not report the workload without probes: {text}"
    );
    assert!(
        text.contains(
            "caught: no-probes: Deployment/strata-cloud-agent: container agent has no livenessProbe"
        ),
        "{text}"
    );
    assert!(
        text.contains("('readinesProbe' was unexpected)"),
        "strict validation did not catch the misspelt field: {text}"
    );
    for caught in [
        "caught: wrong-probes: Deployment/strata-cloud-agent: readinessProbe of agent must be a grpc probe on the probe port 7401",
        "caught: wrong-probes: StatefulSet/strata-control-plane: livenessProbe of control-plane asks for service 'strata.v1.Control'",
        "caught: wrong-probes: Deployment/strata-edge-agent: container agent has no --health-listen=0.0.0.0:7401",
        "caught: wrong-probes: Service/strata-control-plane: port probes exposes the probe port (7401)",
        "caught: open-metrics: NetworkPolicy/metrics-for-all: ingress rule 0 opens a metrics port (['9410']) to any source",
        "caught: open-metrics: Service/strata-control-plane-metrics: port metrics exposes a metrics port",
        "caught: open-metrics: Deployment/strata-cloud-agent: pod annotations must announce the metrics port",
    ] {
        assert!(
            text.contains(caught),
            "the check did not report {caught:?}: {text}"
        );
    }
}

#[test]
fn the_dev_and_production_command_lines_run_on_loopback_over_mutual_tls() {
    let strata = sandbox::strata_bin();
    let agent = sandbox::agent_bin();
    let out = check(&[
        "--smoke",
        "--strata",
        strata.to_str().expect("a UTF-8 path"),
        "--agent",
        agent.to_str().expect("a UTF-8 path"),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "the smoke test failed: {text}");
    assert!(
        text.contains("cloud-pool-") && text.contains("edge-pool-"),
        "the agents did not register under their workload identities: {text}"
    );
    assert!(
        text.contains("the replica is on the etcd store and leads"),
        "{text}"
    );
    // The kubelet's grpc probes, on the plain probe port: the control plane's and both agents' pass...
    for passes in [
        "its readinessProbe passes: grpc.health.v1.Health/Check('strata.v1.Control') on the probe port",
        "its readinessProbe passes: grpc.health.v1.Health/Check('strata.v1.Inference') on the probe port",
        "its livenessProbe passes: grpc.health.v1.Health/Check('') on the probe port",
        "its main port refuses the same check in plain HTTP/2",
    ] {
        assert!(text.contains(passes), "{passes:?} missing: {text}");
    }
    // Every Strata container serves Prometheus metrics on its declared metrics port (dev: three of them).
    assert!(
        text.matches("serves Prometheus metrics on its metrics port")
            .count()
            >= 3,
        "{text}"
    );
    // ...and with its store gone, a replica is not ready but alive, and ready again once the store is back.
    assert!(
        text.contains("its readinessProbe fails: strata.v1.Control answers NOT_SERVING"),
        "{text}"
    );
    assert!(
        text.contains("its livenessProbe passes: the server as a whole answers SERVING"),
        "{text}"
    );
    assert!(
        text.contains("etcd back: the replica's readinessProbe passes again"),
        "{text}"
    );
    assert!(text.contains("smoke passed"), "{text}");
}
