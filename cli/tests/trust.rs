//! A cluster under mutual TLS, attacked as a hostile client would: every attempt is refused with the right
//! status, and nothing is served or changed. Real processes, real certificates, real sockets.

mod sandbox;

use std::time::{Duration, Instant};

use sandbox::{Sandbox, corpus, reference};
use strata_core::Digest;
use strata_device_sdk::Constraints;
use strata_proto::transport::{Expect, Transport};
use strata_proto::v1::{self, control_client::ControlClient};
use strata_trust::ca::{self, Ca};
use strata_trust::{Identity, Role, TlsFiles};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A channel made with tonic's own TLS client (not Strata's): the CA to trust, the server name to check, and
/// the client identity to present, if any — what any gRPC client could do.
fn foreign_channel(
    sandbox: &Sandbox,
    address: &str,
    ca_pem: &str,
    server: &str,
    identity: Option<(&str, &str)>,
) -> Channel {
    let _guard = sandbox.runtime.enter();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server);
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{address}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// A Strata channel under `transport`.
fn channel(sandbox: &Sandbox, address: &str, transport: &Transport) -> Channel {
    let _guard = sandbox.runtime.enter();
    strata_proto::call::channel(address, Duration::from_secs(2), transport, Expect::Server)
        .expect("channel")
}

fn list_models(sandbox: &Sandbox, channel: Channel) -> Result<Vec<v1::ModelInfo>, tonic::Status> {
    sandbox.runtime.block_on(async {
        ControlClient::new(channel)
            .list_models(v1::ListModelsRequest {})
            .await
            .map(|r| r.into_inner().models)
    })
}

/// Pushes a tiny (invalid) model as whoever `channel` speaks for.
fn push(sandbox: &Sandbox, channel: Channel, name: &str) -> Result<(), tonic::Status> {
    let bytes = b"not really onnx".to_vec();
    let meta = v1::ModelMeta {
        name: name.to_string(),
        digest: Digest::of(&bytes).to_string(),
        size_bytes: bytes.len() as u64,
        privacy: v1::Privacy::Open as i32,
        input_shapes: vec![],
        batching: None,
    };
    let messages = vec![
        v1::PushModelRequest {
            part: Some(v1::push_model_request::Part::Meta(meta)),
        },
        v1::PushModelRequest {
            part: Some(v1::push_model_request::Part::Data(bytes.into())),
        },
    ];
    sandbox.runtime.block_on(async {
        ControlClient::new(channel)
            .push_model(futures::stream::iter(messages))
            .await
            .map(|_| ())
    })
}

fn model_names(sandbox: &Sandbox) -> Vec<(String, u64)> {
    let admin = channel(sandbox, &sandbox.cp_address, &sandbox.admin());
    list_models(sandbox, admin)
        .expect("the administrator lists models")
        .into_iter()
        .map(|m| (m.name, m.version))
        .collect()
}

/// Credentials for `identity` from `ca`, written to `dir` with `trust` as the CA bundle.
fn write_identity(ca: &Ca, identity: &Identity, trust: &str, dir: &std::path::Path, ttl: Duration) {
    let issued = ca.issue(identity, &[], ttl).expect("issue");
    ca::write_credentials(dir, trust, &issued).expect("write");
}

#[test]
fn the_cluster_is_closed_to_callers_without_the_right_certificate() {
    let sandbox = Sandbox::start(&["edge"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let before = model_names(&sandbox);
    let cp = &sandbox.cp_address;
    let ca_pem = sandbox
        .ca
        .as_ref()
        .expect("a TLS sandbox")
        .cert_pem()
        .to_string();
    let controller = Identity::new("cp", Role::Controller)
        .expect("id")
        .dns_name();

    // Plain HTTP/2 to a TLS server: no gRPC call completes.
    let plain = list_models(&sandbox, channel(&sandbox, cp, &Transport::Plain));
    assert!(plain.is_err(), "a plain client was answered: {plain:?}");

    // TLS without a client certificate: the handshake completes (joining needs it), every call is refused.
    let anonymous = foreign_channel(&sandbox, cp, &ca_pem, &controller, None);
    let e = list_models(&sandbox, anonymous.clone()).expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("client certificate"),
        "{}",
        e.message()
    );
    let e = push(&sandbox, anonymous.clone(), "anonymous").expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = sandbox
        .runtime
        .block_on(ControlClient::new(anonymous).register(v1::RegisterRequest {
            spec: Some(v1::NodeSpec {
                tier: v1::Tier::Edge as i32,
                address: "127.0.0.1:1".into(),
                ..Default::default()
            }),
        }))
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // An administrator's certificate from another CA: the server refuses the handshake.
    let other = Ca::generate("intruder", DAY).expect("CA");
    let forged = sandbox.dir.path().join("forged-admin");
    write_identity(
        &other,
        &Identity::new("admin", Role::Admin).expect("id"),
        &ca_pem,
        &forged,
        DAY,
    );
    let transport = Transport::tls(TlsFiles::in_dir(&forged)).expect("material");
    // The TLS handshake fails: no call is made, tonic reports a transport error (under TLS 1.3 the server
    // judges the client's certificate after the client's side of the handshake is done, so the client sees
    // the server's alert or the connection closing under it, whichever comes first).
    let handshake_refused = |r: Result<(), tonic::Status>, what: &str| {
        let e = r.expect_err(what);
        let transport = std::error::Error::source(&e)
            .is_some_and(|source| source.is::<tonic::transport::Error>());
        assert!(
            transport
                && matches!(
                    e.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ),
            "{what}: the connection fails (no server answered the call): {e:?}"
        );
    };
    handshake_refused(
        list_models(&sandbox, channel(&sandbox, cp, &transport)).map(|_| ()),
        "another CA's certificate",
    );
    handshake_refused(
        push(&sandbox, channel(&sandbox, cp, &transport), "forged"),
        "another CA's certificate",
    );

    // An expired administrator's certificate from the right CA (presented by tonic: Strata's own loader
    // refuses to load it at all).
    let ca = sandbox.ca.as_ref().expect("CA");
    let expired = ca
        .issue(
            &Identity::new("admin", Role::Admin).expect("id"),
            &[],
            Duration::ZERO,
        )
        .expect("issue");
    std::thread::sleep(Duration::from_millis(1100));
    let stale = sandbox.dir.path().join("expired-admin");
    ca::write_credentials(&stale, &ca_pem, &expired).expect("write");
    assert!(
        Transport::tls(TlsFiles::in_dir(&stale))
            .expect_err("expired")
            .to_string()
            .contains("valid from"),
        "Strata's loader names the validity period"
    );
    let old = foreign_channel(
        &sandbox,
        cp,
        &ca_pem,
        &controller,
        Some((&expired.cert_pem, &expired.key_pem)),
    );
    handshake_refused(
        list_models(&sandbox, old.clone()).map(|_| ()),
        "an expired certificate",
    );
    handshake_refused(push(&sandbox, old, "expired"), "an expired certificate");

    // The right CA, the wrong role: a device may not push, a reader may read but not delete.
    let device = channel(&sandbox, cp, &sandbox.transport_as(Role::Device, "phone"));
    let e = push(&sandbox, device, "from-a-device").expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("admin"),
        "says which role it needs: {}",
        e.message()
    );
    let reader = channel(&sandbox, cp, &sandbox.transport_as(Role::Reader, "auditor"));
    assert_eq!(
        list_models(&sandbox, reader.clone())
            .expect("a reader reads")
            .len(),
        1
    );
    let e = sandbox
        .runtime
        .block_on(
            ControlClient::new(reader).delete_model(v1::DeleteModelRequest {
                name: "squeezenet".into(),
            }),
        )
        .expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Nothing changed, and the refusals were logged.
    assert_eq!(model_names(&sandbox), before);
    let log = sandbox.log("cp0");
    assert!(log.contains("permission denied"), "denials are logged");
    assert!(
        log.contains("refused a TLS connection"),
        "bad handshakes are logged"
    );
}

#[test]
fn nodes_are_what_their_certificates_say_and_act_only_as_themselves() {
    let sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    sandbox.wait_served("squeezenet", 1);
    let cp = &sandbox.cp_address;
    let edge = sandbox
        .nodes()
        .into_iter()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.name == "edge0"))
        .expect("the real edge agent");
    let spec = |tier: v1::Tier| v1::NodeSpec {
        tier: tier as i32,
        address: "127.0.0.1:9".into(),
        name: "whatever-i-say".into(),
        backends: vec!["tract".into()],
        ..Default::default()
    };
    let register = |transport: &Transport, tier: v1::Tier| {
        sandbox.runtime.block_on(
            ControlClient::new(channel(&sandbox, cp, transport)).register(v1::RegisterRequest {
                spec: Some(spec(tier)),
            }),
        )
    };

    // An edge certificate cannot make a cloud node; a device certificate cannot make any node.
    let intruder = sandbox.transport_as(Role::Node(strata_core::Tier::Edge), "intruder");
    let e = register(&intruder, v1::Tier::Cloud).expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let device = sandbox.transport_as(Role::Device, "phone");
    let e = register(&device, v1::Tier::Edge).expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // As what it is, it registers, under the name its certificate carries.
    let id = register(&intruder, v1::Tier::Edge)
        .expect("an edge certificate registers an edge node")
        .into_inner()
        .node_id;
    let listed = sandbox.nodes();
    let me = listed.iter().find(|n| n.id == id).expect("listed");
    assert_eq!(me.spec.as_ref().map(|s| s.name.as_str()), Some("intruder"));

    // It cannot act for the real edge node: heartbeat it away, watch its assignments, deregister it.
    let mut control = ControlClient::new(channel(&sandbox, cp, &intruder));
    let rt = &sandbox.runtime;
    let hijack = v1::HeartbeatRequest {
        node_id: edge.id.clone(),
        load: Some(v1::Load {
            in_flight: 1000,
            ..Default::default()
        }),
        ready: vec![],
        ..Default::default()
    };
    let e = rt.block_on(control.heartbeat(hijack)).expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = rt
        .block_on(control.watch_assignments(v1::WatchAssignmentsRequest {
            node_id: edge.id.clone(),
        }))
        .expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = rt
        .block_on(control.deregister(v1::DeregisterRequest {
            node_id: edge.id.clone(),
        }))
        .expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Nor can a node of another tier that happens to carry the same name.
    let twin = sandbox.transport_as(Role::Node(strata_core::Tier::Cloud), "edge0");
    let e = rt
        .block_on(ControlClient::new(channel(&sandbox, cp, &twin)).deregister(
            v1::DeregisterRequest {
                node_id: edge.id.clone(),
            },
        ))
        .expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // The real edge node still serves; an administrator may drain the intruder.
    assert!(sandbox.nodes().iter().any(|n| n.id == edge.id));
    let table = sandbox.wait_served("squeezenet", 1);
    assert!(
        table
            .nodes
            .iter()
            .any(|n| n.id == edge.id && !table.plans.is_empty()),
        "the real edge node is still routed"
    );
    rt.block_on(
        ControlClient::new(channel(&sandbox, cp, &sandbox.admin())).deregister(
            v1::DeregisterRequest {
                node_id: id.clone(),
            },
        ),
    )
    .expect("an administrator drains a node");
    assert!(!sandbox.nodes().iter().any(|n| n.id == id));
}

#[test]
fn certificates_rotate_on_disk_without_a_failed_request() {
    let sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "open");
    let table = sandbox.wait_served("squeezenet", 1);
    // Force a split so every request crosses the agents (their certificates are what rotate).
    let plan = table
        .plans
        .iter()
        .filter(|p| p.stages.iter().any(|s| s.tier == v1::Tier::Edge as i32))
        .min_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms))
        .expect("a plan through the edge")
        .id
        .clone();
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let stream = sandbox::Stream::start_with(
        &sandbox,
        client,
        "squeezenet",
        Constraints {
            plan: Some(plan),
            ..Constraints::default()
        },
    );
    stream.wait_more(5, Duration::from_secs(60));

    // Meanwhile an administrator opens a new connection for every call (new handshakes all through the
    // rotation, unlike the stream above, whose connections stay up).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fresh_calls = {
        let stop = stop.clone();
        let admin = sandbox.credentials(Role::Admin, "admin").expect("admin");
        let cp = sandbox.cp_address.clone();
        let handle = sandbox.runtime.handle().clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // The files are read again for each call, as a new process would.
                let result = Transport::tls(TlsFiles::in_dir(&admin))
                    .map_err(|e| e.to_string())
                    .and_then(|t| {
                        let _guard = handle.enter();
                        let channel = strata_proto::call::channel(
                            &cp,
                            Duration::from_secs(2),
                            &t,
                            Expect::Controller,
                        )
                        .map_err(|e| e.to_string())?;
                        handle
                            .block_on(
                                ControlClient::new(channel).list_models(v1::ListModelsRequest {}),
                            )
                            .map_err(|e| e.to_string())
                    });
                match result {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            (ok, failed)
        })
    };

    // A CA rollover, as an operator does it: first every member trusts the old and the new CA…
    let old = sandbox.ca.as_ref().expect("CA");
    let new = Ca::generate("sandbox rotated", DAY).expect("CA");
    let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
    let tls = sandbox.dir.path().join("tls");
    let members: Vec<std::path::PathBuf> = std::fs::read_dir(&tls)
        .expect("tls dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    for dir in &members {
        ca::write_file(&dir.join("ca.pem"), bundle.as_bytes(), false).expect("bundle");
    }
    std::thread::sleep(Duration::from_millis(1500));
    stream.wait_more(3, Duration::from_secs(30));
    // …then the servers' certificates are replaced by ones from the new CA, in place.
    for (name, identity) in [
        ("controller-cp", Identity::new("cp", Role::Controller)),
        (
            "edge-edge0",
            Identity::new("edge0", Role::Node(strata_core::Tier::Edge)),
        ),
        (
            "cloud-cloud1",
            Identity::new("cloud1", Role::Node(strata_core::Tier::Cloud)),
        ),
    ] {
        let issued = new.issue(&identity.expect("id"), &[], DAY).expect("issue");
        let dir = tls.join(name);
        assert!(dir.exists(), "{} exists", dir.display());
        ca::write_credentials(&dir, &bundle, &issued).expect("rotate");
    }
    let rotated = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stream.wait_more(5, Duration::from_secs(30));

    // A client that trusts only the new CA, with a certificate from it, is served: the servers present
    // their new certificates and accept the new CA's clients.
    let fresh = sandbox.dir.path().join("new-ca-device");
    write_identity(
        &new,
        &Identity::new("new-phone", Role::Device).expect("id"),
        new.cert_pem(),
        &fresh,
        DAY,
    );
    let config = strata_device_sdk::ClientConfig {
        transport: Transport::tls(TlsFiles::in_dir(&fresh)).expect("material"),
        ..strata_device_sdk::ClientConfig::new(vec![sandbox.cp_address.clone()])
    };
    let client = {
        let _guard = sandbox.runtime.enter();
        strata_device_sdk::Client::new(config).expect("client")
    };
    let want = reference("squeezenet");
    let table = sandbox.routes("squeezenet").expect("table");
    let through_edge = table
        .plans
        .iter()
        .find(|p| p.stages.iter().any(|s| s.tier == v1::Tier::Edge as i32))
        .expect("plan")
        .id
        .clone();
    let answer = sandbox
        .runtime
        .block_on(client.infer(
            "squeezenet",
            want.inputs.clone(),
            Constraints {
                plan: Some(through_edge),
                ..Constraints::default()
            },
        ))
        .expect("a new-CA client is served after the rotation");
    sandbox::assert_outputs_match(&answer.outputs, &want.outputs, "after rotation");
    // And the stream of requests that ran through it all lost none, nor did the new connections.
    let served = stream.finish(&sandbox, 13);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (fresh_ok, fresh_failed) = fresh_calls.join().expect("the fresh-connection thread");
    assert!(
        fresh_failed.is_empty(),
        "calls on new connections failed during the rotation: {fresh_failed:?}"
    );
    assert!(fresh_ok >= 20, "only {fresh_ok} calls on new connections");
    assert!(
        sandbox
            .log("edge0")
            .contains("TLS material changed on disk")
    );
    eprintln!(
        "{served} requests, none failed; rotation done {:?} before the end",
        rotated.elapsed()
    );
}

#[test]
fn a_server_without_tls_refuses_a_non_loopback_address_unless_told_insecure() {
    let dir = tempfile::tempdir().expect("dir");
    let refused = std::process::Command::new(sandbox::strata_bin())
        .args(["control-plane", "--listen", "0.0.0.0:0", "--store"])
        .arg(dir.path().join("cp"))
        .env("STRATA_LOG", "off")
        .output()
        .expect("runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing to serve without TLS on 0.0.0.0:0")
            && stderr.contains("--insecure"),
        "{stderr}"
    );
    let refused = std::process::Command::new(sandbox::agent_bin())
        .args([
            "--tier",
            "edge",
            "--control-plane",
            "127.0.0.1:1",
            "--listen",
            "0.0.0.0:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .output()
        .expect("runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refusing to serve without TLS"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Said explicitly, it serves (and warns).
    let mut cmd = std::process::Command::new(sandbox::strata_bin());
    cmd.args([
        "control-plane",
        "--listen",
        "0.0.0.0:0",
        "--insecure",
        "--store",
    ])
    .arg(dir.path().join("cp"));
    let proc = sandbox::Proc::spawn("cp", cmd, &dir.path().join("cp.log"));
    proc.wait_line("listening on", Duration::from_secs(30));
    let log = std::fs::read_to_string(dir.path().join("cp.log")).unwrap_or_default();
    assert!(log.contains("WITHOUT TLS"), "{log}");
}

#[test]
fn stage_files_go_only_to_whom_they_are_for() {
    let sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let table = sandbox.wait_served("squeezenet", 1);
    let digest_on = |tier: v1::Tier| -> Digest {
        table
            .plans
            .iter()
            .flat_map(|p| &p.stages)
            .find(|s| s.tier == tier as i32)
            .unwrap_or_else(|| panic!("a {tier:?} stage"))
            .digest
            .parse()
            .expect("digest")
    };
    let (device_stage, edge_stage, cloud_stage) = (
        digest_on(v1::Tier::Device),
        digest_on(v1::Tier::Edge),
        digest_on(v1::Tier::Cloud),
    );
    let cp = &sandbox.cp_address;
    let fetch = |transport: &Transport, digest: &Digest, peer: bool| {
        let channel = channel(&sandbox, cp, transport);
        sandbox
            .runtime
            .block_on(strata_proto::call::fetch_blob_with(channel, digest, peer))
    };
    let denied = |r: Result<Vec<u8>, tonic::Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    };

    // A node: its assigned stages and the device stages it caches for devices; not another tier's.
    let edge = sandbox.transport_as(Role::Node(strata_core::Tier::Edge), "edge0");
    assert!(fetch(&edge, &edge_stage, false).is_ok(), "its own stage");
    assert!(fetch(&edge, &device_stage, false).is_ok(), "a device stage");
    denied(
        fetch(&edge, &cloud_stage, false),
        "a cloud stage to an edge node",
    );

    // A device: device stages only, and never as a peer replica.
    let device = sandbox.transport_as(Role::Device, "phone");
    assert!(fetch(&device, &device_stage, false).is_ok(), "its stage");
    denied(
        fetch(&device, &edge_stage, false),
        "an edge stage to a device",
    );
    denied(fetch(&device, &device_stage, true), "a forged peer header");

    // A reader reads metadata, not files.
    denied(
        fetch(
            &sandbox.transport_as(Role::Reader, "auditor"),
            &device_stage,
            false,
        ),
        "a reader",
    );

    // Agents serve blobs from their caches under the same rule: a device gets device stages only.
    let agent = &sandbox.agents[0].address;
    let from_agent = |transport: &Transport, digest: &Digest| {
        let channel = channel(&sandbox, agent, transport);
        sandbox
            .runtime
            .block_on(strata_proto::call::fetch_blob(channel, digest))
    };
    sandbox.wait_until("the agent holds the table", Duration::from_secs(10), |_| {
        from_agent(&device, &device_stage).is_ok()
    });
    denied(
        from_agent(&device, &edge_stage),
        "an edge stage from an agent to a device",
    );
    // A node fetches from the control plane (which checks its assignments), never through another node.
    let cloud = sandbox.transport_as(Role::Node(strata_core::Tier::Cloud), "cloud1");
    denied(
        from_agent(&cloud, &edge_stage),
        "a stage through another node",
    );
    // Only a replica may ask as a peer, whatever else it may do.
    denied(
        fetch(&sandbox.admin(), &device_stage, true),
        "a peer header from an administrator",
    );
    denied(fetch(&edge, &edge_stage, true), "a peer header from a node");
}

/// `strata token create …` as the administrator: the token (stdout's only line).
fn create_token(sandbox: &Sandbox, tier: &str, uses: &str) -> String {
    let out = sandbox.strata(&["token", "create", "--tier", tier, "--uses", uses]);
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts `strata-edge-agent --join TOKEN` for `tier` named `name` with an empty TLS directory; returns
/// the process once it listens, or its stderr when it exits first.
fn join_agent(
    sandbox: &Sandbox,
    tier: &str,
    name: &str,
    token: &str,
) -> Result<sandbox::Proc, String> {
    join_agent_with(sandbox, tier, name, token, &[])
}

/// [`join_agent`] with extra agent flags.
fn join_agent_with(
    sandbox: &Sandbox,
    tier: &str,
    name: &str,
    token: &str,
    extra: &[&str],
) -> Result<sandbox::Proc, String> {
    let dir = sandbox.dir.path().join(format!("joiner-{name}"));
    let mut cmd = std::process::Command::new(sandbox::agent_bin());
    cmd.args(["--tier", tier, "--control-plane", &sandbox.cp_address])
        .args(["--listen", "127.0.0.1:0", "--name", name, "--join", token])
        .arg("--data-dir")
        .arg(&dir)
        .arg("--tls-dir")
        .arg(dir.join("tls"))
        .args(extra);
    let log = sandbox.dir.path().join(format!("joiner-{name}.log"));
    let mut proc = sandbox::Proc::spawn(name, cmd, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = proc.child.try_wait() {
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        }
        if sandbox
            .nodes()
            .iter()
            .any(|n| n.spec.as_ref().is_some_and(|s| s.name == name))
        {
            return Ok(proc);
        }
        assert!(
            Instant::now() < deadline,
            "{name} neither joined nor failed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_join_with_a_token_of_their_tier_once_and_the_cluster_keeps_only_its_hash() {
    let sandbox = Sandbox::start(&[], 3000);

    // A single-use edge token: the node gets an edge certificate and serves as an edge node.
    let token = create_token(&sandbox, "edge", "1");
    assert!(token.starts_with("strata1."), "{token}");
    let _joined = join_agent(&sandbox, "edge", "gw-1", &token).expect("joins with its token");
    let node = sandbox
        .nodes()
        .into_iter()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.name == "gw-1"))
        .expect("registered");
    assert_eq!(node.spec.map(|s| s.tier), Some(v1::Tier::Edge as i32));
    let cert = std::fs::read_to_string(sandbox.dir.path().join("joiner-gw-1/tls/cert.pem"))
        .expect("its certificate");
    let der = strata_trust::tls::certificates("cert", std::path::Path::new("x"), cert.as_bytes())
        .expect("pem");
    assert_eq!(
        Identity::from_certificate(&der[0]).expect("identity"),
        Identity::new("gw-1", Role::Node(strata_core::Tier::Edge)).expect("id")
    );

    // The cluster stored the token's hash, never its secret (the embedded store's file, read raw).
    let secret = token.rsplit('.').next().expect("secret");
    let id = token.split('.').nth(2).expect("id");
    let other = create_token(&sandbox, "cloud", "1");
    let other_id = other.split('.').nth(2).expect("id");
    let store = std::fs::read(sandbox.dir.path().join("cp/state.redb")).expect("store file");
    let contains = |needle: &str| store.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains(other_id), "the live token's record is in the file");
    assert!(
        !contains(secret),
        "the joined token's secret is nowhere in the store"
    );
    assert!(
        !contains(other.rsplit('.').next().expect("secret")),
        "nor the live token's"
    );

    // Used once: refused again, and nothing registers.
    let e = join_agent(&sandbox, "edge", "gw-2", &token)
        .err()
        .expect("refused");
    assert!(e.contains("join refused"), "{e}");
    // A cloud token does not make an edge node, and is not spent by trying.
    let e = join_agent(&sandbox, "edge", "gw-3", &other)
        .err()
        .expect("refused");
    assert!(e.contains("admits a cloud node, not a edge one"), "{e}");
    let listed = sandbox.strata(&["token", "ls"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(other_id),
        "the cloud token is still there"
    );
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains(id),
        "the spent one is gone"
    );
    // Revoked: refused.
    let revoke = sandbox.strata(&["token", "revoke", other_id]);
    assert!(revoke.status.success());
    let e = join_agent(&sandbox, "cloud", "big-1", &other)
        .err()
        .expect("refused");
    assert!(e.contains("join refused"), "{e}");
    // A token pinning another CA: the agent refuses to send the secret at all.
    let fresh = create_token(&sandbox, "edge", "1");
    let mut parts: Vec<&str> = fresh.split('.').collect();
    let wrong = "0".repeat(64);
    parts[1] = &wrong;
    let e = join_agent(&sandbox, "edge", "gw-4", &parts.join("."))
        .err()
        .expect("refused");
    assert!(e.contains("refusing to send it the token"), "{e}");
    // A malformed certificate request is refused and spends nothing.
    let spare = create_token(&sandbox, "edge", "1");
    let spare_token = strata_trust::token::Token::parse(&spare).expect("token");
    let ca_pem = sandbox.ca.as_ref().expect("CA").cert_pem().to_string();
    let anonymous = Transport::anonymous(ca_pem.as_bytes()).expect("anonymous");
    let join = |name: &str, csr: &str| {
        let channel = {
            let _guard = sandbox.runtime.enter();
            strata_proto::call::channel(
                &sandbox.cp_address,
                Duration::from_secs(2),
                &anonymous,
                Expect::Controller,
            )
            .expect("channel")
        };
        sandbox
            .runtime
            .block_on(ControlClient::new(channel).join(v1::JoinRequest {
                token: spare_token.credential(),
                tier: v1::Tier::Edge as i32,
                name: name.to_string(),
                csr_pem: csr.to_string(),
            }))
    };
    let e = join("gw-5", "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n").expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let csr = ca::request().expect("csr").cert_pem;
    // A name in use is not issued twice (the second holder could act as the first).
    let e = join("gw-1", &csr).expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("taken"), "{}", e.message());
    // The token survived both refusals: it still admits a node under a free name.
    join("gw-5", &csr).expect("the spare token still works");

    // Only one node ever joined as a running agent.
    let names: Vec<String> = sandbox
        .nodes()
        .into_iter()
        .filter_map(|n| n.spec.map(|s| s.name))
        .collect();
    assert_eq!(names, ["gw-1"]);
    // And a device cannot make tokens.
    let device = channel(
        &sandbox,
        &sandbox.cp_address,
        &sandbox.transport_as(Role::Device, "phone"),
    );
    let e = sandbox
        .runtime
        .block_on(
            ControlClient::new(device).create_token(v1::CreateTokenRequest {
                tier: v1::Tier::Cloud as i32,
                ..Default::default()
            }),
        )
        .expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied);
}

/// The validity end (unix seconds) and the key of the credentials in `dir`.
fn credentials_state(dir: &std::path::Path) -> (i64, String) {
    let cert = std::fs::read_to_string(dir.join("cert.pem")).expect("cert.pem");
    let der = strata_trust::tls::certificates("cert", dir, cert.as_bytes()).expect("pem");
    let (_, not_after) = strata_trust::tls::validity(&der[0]).expect("validity");
    (
        not_after,
        std::fs::read_to_string(dir.join("key.pem")).expect("key.pem"),
    )
}

/// Waits up to `limit` for `condition`.
fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn certificates_are_renewed_before_they_expire_and_a_revoked_identity_is_shut_out() {
    // Certificates from joins and renewals live 12 s; the joined agent renews 9 s before expiry.
    let sandbox = Sandbox::start_with(&["edge"], 3000, &["--node-cert-ttl-s", "12"]);
    let token = create_token(&sandbox, "edge", "1");
    let _agent = join_agent_with(&sandbox, "edge", "gw-r", &token, &["--renew-before-s", "9"])
        .expect("joins");
    let tls_dir = sandbox.dir.path().join("joiner-gw-r/tls");
    let (first_expiry, first_key) = credentials_state(&tls_dir);
    let address = sandbox
        .nodes()
        .into_iter()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.name == "gw-r"))
        .and_then(|n| n.spec.map(|s| s.address))
        .expect("registered");

    // Renewed (a new key, a later expiry) before the first certificate expires…
    eventually(Duration::from_secs(12), "renewal", || {
        credentials_state(&tls_dir).0 > first_expiry
    });
    assert_ne!(credentials_state(&tls_dir).1, first_key, "a new key");
    // …and after the first certificate's end, the agent is still registered and a new connection to it
    // succeeds (its server certificate is the renewed one).
    let wait = first_expiry + 2 - strata_trust::tls::unix_now();
    if wait > 0 {
        std::thread::sleep(Duration::from_secs(wait as u64));
    }
    let status_of = |address: &str| {
        let channel = {
            let _guard = sandbox.runtime.enter();
            strata_proto::call::channel(
                address,
                Duration::from_secs(2),
                &sandbox.admin(),
                Expect::Node(strata_core::Tier::Edge),
            )
            .expect("channel")
        };
        sandbox.runtime.block_on(
            strata_proto::v1::inference_client::InferenceClient::new(channel)
                .status(v1::StatusRequest {}),
        )
    };
    status_of(&address).expect("a fresh connection to the renewed agent");
    assert!(
        sandbox
            .nodes()
            .iter()
            .any(|n| n.spec.as_ref().is_some_and(|s| s.name == "gw-r")),
        "still registered after its first certificate expired"
    );

    // A device joins with the CLI, and renews its certificate with the CLI.
    let device_token = create_token(&sandbox, "device", "1");
    let device_dir = sandbox.dir.path().join("phone-1");
    let out = sandbox.strata(&[
        "join",
        &device_token,
        "--name",
        "phone-1",
        "--out",
        &device_dir.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "device join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (device_expiry, device_key) = credentials_state(&device_dir);
    let renew = |dir: &std::path::Path| {
        sandbox.strata(&["--tls-dir", &dir.to_string_lossy(), "identity", "renew"])
    };
    std::thread::sleep(Duration::from_secs(1)); // Whole seconds on the certificate.
    let out = renew(&device_dir);
    assert!(
        out.status.success(),
        "device renew: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (renewed_expiry, renewed_key) = credentials_state(&device_dir);
    assert!(renewed_expiry > device_expiry && renewed_key != device_key);

    // The device reaches the edge agent (route tables) on one connection, before the revocation…
    let device = Transport::tls(TlsFiles::in_dir(&device_dir)).expect("device TLS");
    let edge = sandbox.agents[0].address.clone();
    let to_edge = {
        let _guard = sandbox.runtime.enter();
        strata_proto::call::channel(&edge, Duration::from_secs(2), &device, Expect::Server)
            .expect("channel")
    };
    let routes = |channel: Channel| {
        sandbox.runtime.block_on(
            strata_proto::v1::routes_client::RoutesClient::new(channel).get_routes(
                v1::GetRoutesRequest {
                    model: "nothing-here".into(),
                },
            ),
        )
    };
    let before = routes(to_edge.clone()).expect_err("no such model");
    assert_eq!(before.code(), Code::NotFound, "{before:?}");

    // Revoked: the node is deregistered and stays out, cannot renew; the device is refused by the control
    // plane and, within a heartbeat, by the agent — on the connection it already has.
    for identity in ["gw-r.edge", "phone-1.device"] {
        let out = sandbox.strata(&["identity", "revoke", identity, "--reason", "stolen"]);
        assert!(
            out.status.success(),
            "revoke {identity}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = String::from_utf8_lossy(&sandbox.strata(&["identity", "ls"]).stdout).to_string();
    assert!(
        listed.contains("gw-r.edge.id.strata") && listed.contains("phone-1.device.id.strata"),
        "{listed}"
    );
    let gone = Instant::now() + Duration::from_secs(4);
    while Instant::now() < gone {
        assert!(
            !sandbox
                .nodes()
                .iter()
                .any(|n| n.spec.as_ref().is_some_and(|s| s.name == "gw-r")),
            "a revoked node registered again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = renew(&tls_dir);
    assert!(!out.status.success(), "a revoked node renewed");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = routes(channel(&sandbox, &sandbox.cp_address, &device)).expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{}", e.message());
    eventually(
        Duration::from_secs(10),
        "the agent refusing the device",
        || routes(to_edge.clone()).is_err_and(|e| e.code() == Code::Unauthenticated),
    );
    // A process that knows of the revocation does not finish a handshake with the revoked node either,
    // though its certificate is valid (agents dial next hops with such a transport).
    let admin = sandbox.admin();
    let told = admin.revocations().expect("TLS").clone();
    told.insert(&Identity::new("gw-r", Role::Node(strata_core::Tier::Edge)).expect("id"));
    let e = {
        let channel = {
            let _guard = sandbox.runtime.enter();
            strata_proto::call::channel(
                &address,
                Duration::from_secs(2),
                &admin,
                Expect::Node(strata_core::Tier::Edge),
            )
            .expect("channel")
        };
        sandbox.runtime.block_on(
            strata_proto::v1::inference_client::InferenceClient::new(channel)
                .status(v1::StatusRequest {}),
        )
    }
    .expect_err("a revoked server is refused");
    let chain = format!("{e:?}");
    assert!(chain.contains("RevokedServer"), "{chain}");
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn the_plain_probe_port_answers_health_checks_and_nothing_else() {
    let cp_probes = format!("127.0.0.1:{}", free_port());
    let sandbox = Sandbox::start_with(&[], 3000, &["--health-listen", &cp_probes]);
    let agent_probes = format!("127.0.0.1:{}", free_port());
    let token = create_token(&sandbox, "edge", "1");
    let _agent = join_agent_with(
        &sandbox,
        "edge",
        "probed",
        &token,
        &["--health-listen", &agent_probes],
    )
    .expect("joins");
    let check = |address: &str, service: &str| {
        let channel = channel(&sandbox, address, &Transport::Plain);
        sandbox.runtime.block_on(
            tonic_health::pb::health_client::HealthClient::new(channel).check(
                tonic_health::pb::HealthCheckRequest {
                    service: service.to_string(),
                },
            ),
        )
    };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    for (address, service) in [
        (&cp_probes, ""),
        (&cp_probes, "strata.v1.Control"),
        (&agent_probes, ""),
        (&agent_probes, "strata.v1.Inference"),
    ] {
        let answer = check(address, service)
            .unwrap_or_else(|e| panic!("health of {service:?} at {address}: {e:?}"))
            .into_inner();
        assert_eq!(answer.status, serving, "{service:?} at {address}");
    }
    // Nothing but health is served there, even to a caller the plain transport cannot identify.
    let e = list_models(&sandbox, channel(&sandbox, &cp_probes, &Transport::Plain))
        .expect_err("not served on the probe port");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    // The main port stays mutual TLS only.
    let e = list_models(
        &sandbox,
        channel(&sandbox, &sandbox.cp_address, &Transport::Plain),
    )
    .expect_err("plain refused");
    assert_ne!(e.code(), Code::Ok);
}
