//! The `strata-edge-agent` binary as an operator meets it: clear refusals of bad arguments, and a daemon that
//! comes up, serves and reports a missing control plane instead of exiting, then stops cleanly on SIGTERM.
//!
//! (Being an integration test of this package also makes every `cargo test --workspace` build the binary,
//! which the cluster tests in `cli/tests` start as separate processes.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_proto::v1;

const AGENT: &str = env!("CARGO_BIN_EXE_strata-edge-agent");

/// A loopback address nothing listens on.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let address = listener.local_addr().expect("local address").to_string();
    drop(listener);
    address
}

fn run_to_end(args: &[&str]) -> (bool, String) {
    let data = tempfile::tempdir().expect("temp dir");
    let out = Command::new(AGENT)
        .args(args)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .expect("the agent runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_tier_is_refused_by_name() {
    let (ok, stderr) = run_to_end(&["--tier", "moon", "--control-plane", &dead_address()]);
    assert!(!ok, "the agent accepted --tier moon");
    assert!(
        stderr.contains("--tier must be edge or cloud, not \"moon\""),
        "stderr: {stderr}"
    );
}

#[test]
fn a_zero_request_limit_is_refused_by_name() {
    for flag in [
        "--max-request-mib",
        "--max-tensor-mib",
        "--max-request-chunks",
    ] {
        let (ok, stderr) = run_to_end(&[
            "--tier",
            "edge",
            "--control-plane",
            &dead_address(),
            flag,
            "0",
        ]);
        assert!(!ok, "the agent accepted {flag} 0");
        assert!(stderr.contains(flag), "stderr: {stderr}");
    }
}

#[test]
fn a_port_in_use_is_refused_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let address = taken.local_addr().expect("local address").to_string();
    let (ok, stderr) = run_to_end(&[
        "--tier",
        "edge",
        "--control-plane",
        &dead_address(),
        "--listen",
        &address,
    ]);
    assert!(!ok, "the agent started on a port in use");
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "stderr: {stderr}"
    );
}

#[test]
fn without_a_control_plane_the_agent_serves_reports_it_and_stops_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(AGENT)
        .args([
            "--tier",
            "cloud",
            "--listen",
            "127.0.0.1:0",
            "--control-plane",
        ])
        .arg(dead_address())
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the agent starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the agent prints its address");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();

    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let status = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("a valid URI")
            .connect()
            .await
            .expect("the agent accepts connections");
        v1::inference_client::InferenceClient::new(channel)
            .status(v1::StatusRequest {})
            .await
            .expect("Status answers")
            .into_inner()
    });
    assert!(!status.control_plane_connected, "{status:?}");
    assert_eq!(status.requests_served, 0);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(exit) = child.try_wait().expect("wait on the agent") {
            assert!(exit.success(), "the agent exited with {exit} on SIGTERM");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
