//! Fault tests on a real etcd: control-plane replicas, agents and etcd as separate processes on loopback,
//! with a stream of requests running through every failure.
//!
//! - the leader replica is killed: another leads within 5 s and no request fails;
//! - an agent is killed: its node key expires within the TTL and no request fails;
//! - etcd is down for 30 s: serving goes on, agents report the degraded state, and after etcd returns
//!   registrations are intact and a model pushed afterwards is served;
//! - every replica is restarted: models, plans and routes come back from etcd;
//! - several clients push one model name at once, through two replicas: one version order.

mod sandbox;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sandbox::{Sandbox, Stream, assert_outputs_match, corpus, reference};
use strata_device_sdk::{Client, Constraints, Privacy};
use strata_proto::v1;
use tonic_health::pb::health_check_response::ServingStatus::{NotServing, Serving};

fn features() -> Privacy {
    Privacy::Features
}

/// A client that learns routes from the agents first (as a device on the LAN would), then the replicas.
fn device(sandbox: &Sandbox, model: &str) -> Client {
    let mut endpoints: Vec<String> = sandbox.agents.iter().map(|a| a.address.clone()).collect();
    endpoints.extend(sandbox.replicas.iter().map(|r| r.address.clone()));
    let client = sandbox.client(&endpoints);
    if let Err(e) = sandbox.runtime.block_on(client.prepare(model)) {
        panic!("prepare: {e}\n{}", sandbox.log_tails(40));
    }
    client
}

fn models(sandbox: &Sandbox) -> Vec<v1::ModelInfo> {
    sandbox.runtime.block_on(async {
        let channel = strata_proto::call::channel(
            &sandbox.cp_address,
            Duration::from_secs(2),
            &sandbox.admin(),
            strata_proto::transport::Expect::Server,
        )
        .expect("channel");
        let mut models = v1::control_client::ControlClient::new(channel)
            .list_models(v1::ListModelsRequest {})
            .await
            .expect("list models")
            .into_inner()
            .models;
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    })
}

/// Pushes `multi_io`, waits until it is served, and checks one inference of it: the leader plans, assigns
/// and publishes.
fn push_and_infer_multi_io(sandbox: &Sandbox, when: &str) {
    sandbox.push(&corpus("multi_io.onnx"), "multi_io", "open");
    sandbox.wait_served("multi_io", 1);
    let client = device(sandbox, "multi_io");
    let want = reference("multi_io");
    let r = sandbox
        .runtime
        .block_on(client.infer("multi_io", want.inputs.clone(), Constraints::default()))
        .unwrap_or_else(|e| panic!("inference of a model pushed {when}: {e}"));
    assert_outputs_match(&r.outputs, &want.outputs, &format!("multi_io {when}"));
}

fn plan_ids(table: &v1::RouteTable) -> BTreeSet<String> {
    table.plans.iter().map(|p| p.id.clone()).collect()
}

fn wait_for_leader(sandbox: &Sandbox) -> usize {
    let mut leader = None;
    sandbox.wait_until("a leader", Duration::from_secs(15), |s| {
        leader = s.leader();
        leader.is_some()
    });
    leader.expect("a leader")
}

#[test]
fn killing_the_leader_fails_no_request_and_another_replica_leads_within_5_s() {
    let mut sandbox = Sandbox::start_on_etcd(2, &["edge", "cloud"], 3000);
    // Pushed to replica 0; if replica 1 leads, it plans from the blob it fetches from replica 0.
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    sandbox.wait_served("squeezenet", 1);
    let leader = wait_for_leader(&sandbox);
    let survivor = 1 - leader;
    sandbox.cp_address = sandbox.replicas[survivor].address.clone();

    let client = device(&sandbox, "squeezenet");
    let stream = Stream::start(&sandbox, client, "squeezenet", features());
    stream.wait_more(5, Duration::from_secs(30));
    sandbox.replicas[leader].kill();
    let killed = Instant::now();
    sandbox.wait_until("the survivor leads", Duration::from_secs(10), |s| {
        s.leader() == Some(survivor)
    });
    let failover = killed.elapsed();
    eprintln!("leader failover: {failover:?}");
    assert!(
        failover <= Duration::from_secs(5),
        "failover took {failover:?}"
    );
    // Requests keep succeeding after the failover.
    stream.wait_more(5, Duration::from_secs(30));
    stream.finish(&sandbox, 10);

    // The new leader does a leader's work: a model pushed now is planned, assigned and served.
    push_and_infer_multi_io(&sandbox, "after the failover");
}

#[test]
fn a_killed_agents_key_expires_within_its_ttl_and_no_request_fails() {
    let ttl = Duration::from_secs(3);
    let mut sandbox = Sandbox::start_on_etcd(1, &["edge", "edge", "cloud"], ttl.as_millis() as u64);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    sandbox.wait_served("squeezenet", 2);
    let victim = sandbox.status(&sandbox.agents[0].address).node_id;
    let client = device(&sandbox, "squeezenet");
    let stream = Stream::start(&sandbox, client, "squeezenet", features());
    stream.wait_more(5, Duration::from_secs(30));
    sandbox.agents[0].proc.kill();
    let killed = Instant::now();
    sandbox.wait_until(
        "the dead agent's key expires",
        ttl + Duration::from_secs(3),
        |s| !s.nodes().iter().any(|n| n.id == victim),
    );
    let expired = killed.elapsed();
    eprintln!("node key expired {expired:?} after the kill (TTL {ttl:?})");
    // etcd checks lease expiry every 500 ms.
    assert!(
        expired <= ttl + Duration::from_millis(700),
        "expired after {expired:?}"
    );
    sandbox.wait_until(
        "routes without the dead agent",
        Duration::from_secs(3),
        |s| {
            s.routes("squeezenet")
                .is_some_and(|t| !t.nodes.iter().any(|n| n.id == victim))
        },
    );
    stream.wait_more(5, Duration::from_secs(30));
    stream.finish(&sandbox, 10);
}

#[test]
fn an_etcd_outage_of_30_s_does_not_stop_serving_and_the_cluster_recovers() {
    let mut sandbox = Sandbox::start_on_etcd(1, &["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    sandbox.wait_served("squeezenet", 1);
    let ids = |s: &Sandbox| -> BTreeSet<String> { s.nodes().into_iter().map(|n| n.id).collect() };
    let registered = ids(&sandbox);
    let client = device(&sandbox, "squeezenet");
    let stream = Stream::start(&sandbox, client, "squeezenet", features());
    stream.wait_more(5, Duration::from_secs(30));

    sandbox.etcd.as_mut().expect("etcd").stop();
    let stopped = Instant::now();
    let edge = sandbox.agents[0].address.clone();
    sandbox.wait_until(
        "the agent reports the degraded state",
        Duration::from_secs(10),
        |s| !s.status(&edge).control_plane_connected,
    );
    let control_plane = sandbox.cp_address.clone();
    sandbox.wait_until(
        "the control plane reports the store down",
        Duration::from_secs(10),
        |s| s.health(&control_plane, "strata.v1.Control") == Some(NotServing),
    );
    assert_eq!(
        sandbox.health(&control_plane, ""),
        Some(Serving),
        "alive, waiting for etcd"
    );
    // The CLI says what is wrong: the control plane answers, its store does not (a typed reason).
    let out = sandbox.strata(&["model", "ls"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is up but cannot reach its state store"),
        "{stderr}"
    );
    // A replica started during the outage is alive but not ready until it has reached the store.
    let late = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    sandbox.replicas.push(sandbox::Replica {
        address: late.clone(),
        id: String::new(),
        proc: None,
    });
    sandbox.start_replica(1);
    for _ in 0..5 {
        assert_eq!(
            sandbox.health(&late, "strata.v1.Control"),
            Some(NotServing),
            "a replica that never reached its store must not report ready"
        );
        assert_eq!(sandbox.health(&late, ""), Some(Serving), "alive");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The outage lasts 30 s (the scenario itself, not a wait for a condition); requests go on meanwhile.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
    sandbox.etcd.as_mut().expect("etcd").restart();
    sandbox.wait_until("the agents reconnect", Duration::from_secs(20), |s| {
        s.agents
            .iter()
            .all(|a| s.status(&a.address).control_plane_connected)
    });
    let served = stream.finish(&sandbox, 100);
    eprintln!(
        "{served} requests served across a {:?} etcd outage",
        stopped.elapsed()
    );
    sandbox.wait_until(
        "the control planes report the store back",
        Duration::from_secs(10),
        |s| {
            s.health(&control_plane, "strata.v1.Control") == Some(Serving)
                && s.health(&late, "strata.v1.Control") == Some(Serving)
        },
    );
    assert_eq!(
        ids(&sandbox),
        registered,
        "registrations survive the outage"
    );

    push_and_infer_multi_io(&sandbox, "after the outage");
}

#[test]
fn restarting_every_control_plane_brings_the_state_back_from_etcd() {
    let mut sandbox = Sandbox::start_on_etcd(2, &["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    sandbox.push(&corpus("multi_io.onnx"), "multi_io", "open");
    let squeezenet = plan_ids(&sandbox.wait_served("squeezenet", 1));
    let multi_io = plan_ids(&sandbox.wait_served("multi_io", 1));
    let before: Vec<(String, u64, String)> = models(&sandbox)
        .into_iter()
        .map(|m| (m.name, m.version, m.digest))
        .collect();
    assert_eq!(before.len(), 2);

    for replica in &mut sandbox.replicas {
        // SIGKILL, and wait for the process to be gone.
        replica.kill();
    }
    for i in 0..sandbox.replicas.len() {
        sandbox.start_replica(i);
    }
    let after: Vec<(String, u64, String)> = models(&sandbox)
        .into_iter()
        .map(|m| (m.name, m.version, m.digest))
        .collect();
    assert_eq!(after, before, "models after the restart");
    assert_eq!(plan_ids(&sandbox.wait_served("squeezenet", 1)), squeezenet);
    assert_eq!(plan_ids(&sandbox.wait_served("multi_io", 1)), multi_io);
    wait_for_leader(&sandbox);
    let client = device(&sandbox, "squeezenet");
    let want = reference("squeezenet");
    let r = sandbox
        .runtime
        .block_on(client.infer(
            "squeezenet",
            want.inputs.clone(),
            Constraints {
                privacy: Some(features()),
                ..Constraints::default()
            },
        ))
        .expect("inference after the restart");
    assert_outputs_match(&r.outputs, &want.outputs, "squeezenet after the restart");
}

#[test]
fn concurrent_pushes_of_one_name_get_one_version_order() {
    let sandbox = Sandbox::start_on_etcd(2, &["edge"], 3000);
    const FILES: [&str; 6] = [
        "fanout",
        "multi_io",
        "shared_init",
        "skip_long",
        "squeezenet",
        "shufflenet",
    ];
    let files = FILES;
    let strata = sandbox::strata_bin();
    let pushes: Vec<_> = files
        .into_iter()
        .enumerate()
        .map(|(i, file)| {
            let (strata, endpoint) = (strata.clone(), sandbox.replicas[i % 2].address.clone());
            let admin = sandbox
                .credentials(strata_trust::Role::Admin, "admin")
                .expect("a TLS sandbox");
            let path = corpus(&format!("{file}.onnx"));
            std::thread::spawn(move || {
                let out = std::process::Command::new(strata)
                    .args(["--endpoint", &endpoint, "model", "push"])
                    .arg(&path)
                    .args(["--name", "contested"])
                    .env("STRATA_LOG", "off")
                    .env("STRATA_TLS_DIR", admin)
                    .output()
                    .expect("strata runs");
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "push {file}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let version: u64 = stdout
                    .split_whitespace()
                    .skip_while(|w| *w != "version")
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no version in {stdout:?}"));
                let bytes = std::fs::read(&path).expect("model file");
                (version, strata_core::Digest::of(&bytes).to_string())
            })
        })
        .collect();
    let mut results: Vec<(u64, String)> = pushes
        .into_iter()
        .map(|p| p.join().expect("a push thread"))
        .collect();
    results.sort();
    let versions: Vec<u64> = results.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        (1..=files.len() as u64).collect::<Vec<_>>(),
        "one version each, no gap"
    );
    let latest = models(&sandbox)
        .into_iter()
        .find(|m| m.name == "contested")
        .expect("the model");
    let (last_version, last_digest) = results.last().expect("pushes").clone();
    assert_eq!(latest.version, last_version);
    assert_eq!(
        latest.digest, last_digest,
        "the record is the push that got the last version"
    );
}

#[test]
fn bad_store_settings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("missing-cert.pem");
    let key = dir.path().join("missing-key.pem");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--store".into(), "etcd://nohost".into()],
            "is not HOST:PORT",
        ),
        (
            vec!["--store".into(), "etcd://".into()],
            "names no etcd endpoint",
        ),
        (
            vec![
                "--store".into(),
                "etcd://127.0.0.1:1".into(),
                "--etcd-cert".into(),
                cert.display().to_string(),
                "--etcd-key".into(),
                key.display().to_string(),
            ],
            "cannot read the etcd client certificate",
        ),
        (
            vec![
                "--store".into(),
                "etcd://127.0.0.1:1".into(),
                "--etcd-user".into(),
                "u".into(),
            ],
            "STRATA_ETCD_PASSWORD",
        ),
    ];
    for (args, says) in cases {
        let out = std::process::Command::new(sandbox::strata_bin())
            .args(["control-plane", "--listen", "127.0.0.1:0"])
            .args(&args)
            .env_remove("STRATA_ETCD_PASSWORD")
            .env("STRATA_LOG", "off")
            .output()
            .expect("strata runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
