//! The distributed system as users run it: a control plane, edge and cloud agents and the device SDK as
//! separate OS processes on loopback, over real gRPC.

mod sandbox;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sandbox::{Sandbox, assert_outputs_match, corpus, reference};
use strata_device_sdk::{Constraints, Privacy, SdkError};
use strata_proto::v1;
use strata_runtime::TensorData;

fn with_privacy(privacy: Privacy) -> Constraints {
    Constraints {
        privacy: Some(privacy),
        ..Constraints::default()
    }
}

fn received_by_agents(sandbox: &Sandbox) -> Vec<String> {
    sandbox
        .agents
        .iter()
        .flat_map(|a| sandbox.status(&a.address).received_tensors)
        .collect()
}

/// `privacy`, with the plan forced to the table's best (by profiled latency) that satisfies it and runs
/// something remotely: the client's live estimates would learn that this machine's "device" is far faster
/// than the profile says and keep everything local, while these tests are about what a split sends.
fn split_at(table: &v1::RouteTable, privacy: Privacy) -> Constraints {
    let level = v1::Privacy::from(privacy) as i32;
    let plan = table
        .plans
        .iter()
        .filter(|p| p.satisfies.contains(&level))
        .filter(|p| p.stages.iter().any(|s| s.tier != v1::Tier::Device as i32))
        .min_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms))
        .unwrap_or_else(|| panic!("{}: no split plan satisfies {privacy}", table.model));
    Constraints {
        privacy: Some(privacy),
        plan: Some(plan.id.clone()),
        ..Constraints::default()
    }
}

fn served_by_agents(sandbox: &Sandbox) -> u64 {
    sandbox
        .agents
        .iter()
        .map(|a| sandbox.status(&a.address).requests_served)
        .sum()
}

#[test]
fn split_outputs_match_whole_model_at_every_privacy_level_and_privacy_holds() {
    let sandbox = Sandbox::start(&["edge", "edge", "cloud"], 3000);
    for model in ["squeezenet", "multi_io"] {
        sandbox.push(&corpus(&format!("{model}.onnx")), model, "open");
        sandbox.wait_served(model, 2);
    }
    let table = sandbox.routes("squeezenet").expect("routes");
    assert!(
        table.plans.iter().any(|p| p.stages.len() == 3),
        "the three-tier profile should yield a device→edge→cloud plan: {table:?}"
    );
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    for model in ["squeezenet", "multi_io"] {
        let want = reference(model);
        let raw: Vec<&String> = want.inputs.keys().collect();
        let table = sandbox.routes(model).expect("routes");

        // `device`: every stage on the device, and not one request reaches an agent.
        let before = served_by_agents(&sandbox);
        let r = sandbox
            .runtime
            .block_on(client.infer(model, want.inputs.clone(), with_privacy(Privacy::Device)))
            .expect("device inference");
        assert_outputs_match(&r.outputs, &want.outputs, &format!("{model} device"));
        assert!(
            r.stages.iter().all(|s| s.node.is_none()),
            "{model}: device privacy ran remotely: {r:?}"
        );
        assert_eq!(
            served_by_agents(&sandbox),
            before,
            "{model}: device privacy sent inference traffic"
        );

        // `features`: split across tiers, and no raw input reaches any agent.
        let r = sandbox
            .runtime
            .block_on(client.infer(
                model,
                want.inputs.clone(),
                split_at(&table, Privacy::Features),
            ))
            .unwrap_or_else(|e| panic!("{model} features: {e}"));
        assert_outputs_match(&r.outputs, &want.outputs, &format!("{model} features"));
        assert!(
            r.stages.iter().any(|s| s.node.is_some()),
            "{model}: features ran all on the device: {r:?}"
        );
        if model == "squeezenet" {
            // The client may learn that this machine's "device" is faster than the profile says and pick
            // another split; the three-tier one is forced here so the forwarding path is exercised.
            let table = sandbox
                .runtime
                .block_on(client.routes(model))
                .expect("routes");
            let three = table
                .plans
                .iter()
                .find(|p| {
                    p.stages.len() == 3 && p.satisfies.contains(&(v1::Privacy::Features as i32))
                })
                .expect("a device, edge, cloud plan that keeps raw inputs on the device");
            let r = sandbox
                .runtime
                .block_on(client.infer(
                    model,
                    want.inputs.clone(),
                    Constraints {
                        plan: Some(three.id.clone()),
                        ..with_privacy(Privacy::Features)
                    },
                ))
                .unwrap_or_else(|e| panic!("{model} features, forced: {e}"));
            assert_outputs_match(&r.outputs, &want.outputs, &format!("{model} three tiers"));
            let tiers: Vec<&str> = r.stages.iter().map(|s| s.tier).collect();
            assert_eq!(tiers, ["device", "edge", "cloud"], "{model}: {r:?}");
        }
        let received = received_by_agents(&sandbox);
        for name in &raw {
            assert!(
                !received.contains(name),
                "{model}: raw input {name} reached an agent: {received:?}"
            );
        }

        // `edge`: nothing reaches the cloud (raw data may go to the edge).
        let r = sandbox
            .runtime
            .block_on(client.infer(model, want.inputs.clone(), split_at(&table, Privacy::Edge)))
            .unwrap_or_else(|e| panic!("{model} edge: {e}"));
        assert_outputs_match(&r.outputs, &want.outputs, &format!("{model} edge"));
        assert!(
            r.stages.iter().all(|s| s.tier != "cloud"),
            "{model}: edge privacy reached the cloud: {r:?}"
        );

        // `open`: the cheapest plan on this profile sends the raw input to the edge.
        let r = sandbox
            .runtime
            .block_on(client.infer(model, want.inputs.clone(), split_at(&table, Privacy::Open)))
            .expect("open inference");
        assert_outputs_match(&r.outputs, &want.outputs, &format!("{model} open"));
    }
    // The audit above is not vacuous: once `open` requests ran, raw inputs did reach an agent.
    let received = received_by_agents(&sandbox);
    assert!(
        received.iter().any(|n| n == "data_0"),
        "open plans should ship the raw input: {received:?}"
    );
}

#[test]
fn killed_edge_agent_fails_no_request_and_leaves_the_routes_within_its_lease() {
    let ttl = Duration::from_millis(1500);
    let mut sandbox = Sandbox::start(&["edge", "edge", "cloud"], ttl.as_millis() as u64);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let table = sandbox.wait_served("squeezenet", 2);
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let want = reference("squeezenet");
    sandbox
        .runtime
        .block_on(client.prepare("squeezenet"))
        .expect("prepare");

    let victim = sandbox.status(&sandbox.agents[0].address).node_id;
    let mut used_victim_before = false;
    let mut killed_at = None;
    for i in 0..30 {
        if i == 8 {
            sandbox.agents[0].proc.kill();
            killed_at = Some(Instant::now());
        }
        let r = sandbox
            .runtime
            .block_on(client.infer("squeezenet", want.inputs.clone(), Constraints::default()))
            .unwrap_or_else(|e| panic!("request {i} failed after the kill: {e}"));
        assert_outputs_match(&r.outputs, &want.outputs, &format!("request {i}"));
        if i < 8 {
            used_victim_before |= r
                .stages
                .iter()
                .any(|s| s.node.as_deref() == Some(victim.as_str()));
        } else {
            assert!(
                r.stages
                    .iter()
                    .all(|s| s.node.as_deref() != Some(victim.as_str())),
                "request {i} ran on the dead agent"
            );
        }
    }
    assert!(
        used_victim_before,
        "the balancer never used the victim before the kill; the test proves nothing"
    );
    let killed_at = killed_at.expect("killed");
    sandbox.wait_until(
        "the dead agent leaves the routes",
        ttl + Duration::from_secs(3),
        |s| {
            s.routes("squeezenet").is_some_and(|t| {
                t.plans
                    .iter()
                    .flat_map(|p| &p.stages)
                    .all(|st| !st.nodes.contains(&victim))
            })
        },
    );
    let gone_after = killed_at.elapsed();
    assert!(
        gone_after <= ttl + Duration::from_secs(3),
        "dead agent still routed after {gone_after:?}"
    );
    assert!(
        sandbox.nodes().iter().all(|n| n.id != victim),
        "dead agent still registered"
    );
    assert!(
        table
            .plans
            .iter()
            .any(|p| p.stages.iter().any(|s| s.nodes.contains(&victim)))
    );
}

#[test]
fn inference_through_an_agent_keeps_working_while_the_control_plane_is_down() {
    let mut sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    sandbox.wait_served("squeezenet", 1);
    let edge = sandbox.agents[0].address.clone();
    let input = corpus("squeezenet.inputs/data_0.npy");
    let out = sandbox.dir.path().join("out");
    let input = format!("data_0={}", input.display());
    let device = sandbox.device_tls();
    let infer = || sandbox::infer(&edge, "squeezenet", &input, &out, &[], device.as_deref());
    let first = infer();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    sandbox.replicas[0].kill();
    let second = infer();
    assert!(
        second.status.success(),
        "with the control plane down: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains("edge("),
        "the request should still be split: {stdout}"
    );
    let want = reference("squeezenet");
    let got =
        strata_runtime::npy::decode(&std::fs::read(out.join("softmaxout_1.npy")).expect("output"))
            .expect("npy");
    assert_outputs_match(
        &[("softmaxout_1".to_string(), got)],
        &want.outputs,
        "through the agent",
    );
    sandbox.wait_until(
        "the agent reports the control plane as lost",
        Duration::from_secs(5),
        |s| !s.status(&edge).control_plane_connected,
    );
}

/// Live routing end to end over real processes: route tables carry what devices re-cost plans with, a
/// client learns the links from its own requests, `strata infer -v` explains its choice, `--plan` forces
/// one, and bad routing input gets clear errors.
#[test]
fn requests_are_costed_on_live_estimates_explained_and_forceable() {
    let sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "open");
    let table = sandbox.wait_served("squeezenet", 1);
    assert!(!table.plans.is_empty() && table.plans.len() <= 16);
    assert!(
        !table.links.is_empty(),
        "the table carries the profiled links"
    );
    assert!(table.device_power.is_some_and(|p| p.active_w > 0.0));
    for p in &table.plans {
        let remote = p.stages.iter().any(|s| s.tier != v1::Tier::Device as i32);
        assert_eq!(
            remote,
            !p.transfers.is_empty(),
            "plan {}: transfers for every remote plan, none for a device-only one",
            p.id
        );
    }

    // A warm client learns the device's link from its own requests.
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let want = reference("squeezenet");
    let remote_plan = table
        .plans
        .iter()
        .find(|p| {
            p.stages
                .first()
                .is_some_and(|s| s.tier == v1::Tier::Edge as i32)
        })
        .expect("an edge-first plan");
    for _ in 0..3 {
        let done = sandbox
            .runtime
            .block_on(client.infer(
                "squeezenet",
                want.inputs.clone(),
                strata_device_sdk::Constraints {
                    plan: Some(remote_plan.id.clone()),
                    ..Default::default()
                },
            ))
            .expect("forced plan runs");
        assert_eq!(done.plan_id, remote_plan.id);
        assert!(
            done.hops
                .iter()
                .any(|h| h.link == strata_core::recost::Link::DeviceEdge)
        );
    }
    let learnt = client.estimates().links[strata_core::recost::Link::DeviceEdge.index()];
    assert!(
        learnt.rtt_ms.samples() + learnt.up_mbps.samples() >= 3,
        "three requests over the device-edge link are three samples: {learnt:?}"
    );

    // Probes: a fresh client measures the RTT of the device's links before any request.
    let prober = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let probed = sandbox
        .runtime
        .block_on(prober.probe("squeezenet"))
        .expect("probe");
    assert!(
        probed
            .iter()
            .any(|(l, ms)| *l == strata_core::recost::Link::DeviceEdge && *ms > 0.0),
        "{probed:?}"
    );
    assert_eq!(
        prober.estimates().links[strata_core::recost::Link::DeviceEdge.index()]
            .rtt_ms
            .samples(),
        1
    );
    let live = sandbox.strata(&["routes", "squeezenet", "--live"]);
    let stdout = String::from_utf8_lossy(&live.stdout);
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    for part in [
        "probed from here: device-edge rtt",
        "plans, best first",
        "a request would get: ",
    ] {
        assert!(stdout.contains(part), "no \"{part}\" in: {stdout}");
    }

    let input = corpus("squeezenet.inputs/data_0.npy");
    let out = sandbox.dir.path().join("out");
    let input = format!("data_0={}", input.display());
    let device = sandbox.device_tls();
    let infer = |extra: &[&str]| {
        sandbox::infer(
            &sandbox.cp_address,
            "squeezenet",
            &input,
            &out,
            extra,
            device.as_deref(),
        )
    };
    let explained = infer(&["-v"]);
    let stdout = String::from_utf8_lossy(&explained.stdout);
    assert!(
        explained.status.success(),
        "{}",
        String::from_utf8_lossy(&explained.stderr)
    );
    for part in [
        "why: minimise latency",
        "device-edge",
        "plans, best first",
        "predicted against measured",
        "ran",
    ] {
        assert!(stdout.contains(part), "no \"{part}\" in: {stdout}");
    }
    let device_only = table
        .plans
        .iter()
        .find(|p| p.stages.iter().all(|s| s.tier == v1::Tier::Device as i32))
        .expect("a device-only plan");
    let forced = infer(&["--plan", &device_only.id]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let stdout = String::from_utf8_lossy(&forced.stdout);
    assert!(
        stdout.contains(&format!("plan {}", device_only.id)),
        "{stdout}"
    );
    assert!(
        !stdout.contains("edge("),
        "a device-only plan runs nothing remote: {stdout}"
    );

    let missing = infer(&["--plan", "nope"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        stderr.contains("has no plan \"nope\"") && stderr.contains(&device_only.id),
        "{stderr}"
    );
    let battery = infer(&["--battery", "140"]);
    let stderr = String::from_utf8_lossy(&battery.stderr);
    assert!(!battery.status.success());
    assert!(
        stderr.contains("battery level 140 % is impossible"),
        "{stderr}"
    );
    let low = infer(&["--battery", "10", "-v"]);
    let stdout = String::from_utf8_lossy(&low.stdout);
    assert!(
        low.status.success(),
        "{}",
        String::from_utf8_lossy(&low.stderr)
    );
    assert!(
        stdout.contains("why: minimise energy within") && stdout.contains("low, saving energy"),
        "{stdout}"
    );
}

/// Control-plane calibration over real processes: THREE_TIER's tier speeds (100 and 50 GFLOP/s) are guesses
/// far from what tract does here; once agents report their measured stage times, the model is planned again
/// at the measured speed, the table says which factors it was planned with, and its stage times follow them.
#[test]
fn tiers_are_calibrated_from_measured_stage_times_and_models_planned_again() {
    let sandbox = Sandbox::start_with(
        &["edge", "cloud"],
        3000,
        &[
            "--calibration-band-pct",
            "25",
            "--calibration-period-ms",
            "300",
        ],
    );
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "open");
    let before = sandbox.wait_served("squeezenet", 1);
    assert!(
        before.tier_calibration.is_empty(),
        "nothing measured yet: {:?}",
        before.tier_calibration
    );
    // Every plan, run a few times, so both remote tiers' agents measure their stages.
    let forced: Vec<String> = before.plans.iter().map(|p| p.id.clone()).collect();
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let want = reference("squeezenet");
    for id in &forced {
        for _ in 0..2 {
            let ran = sandbox.runtime.block_on(client.infer(
                "squeezenet",
                want.inputs.clone(),
                Constraints {
                    plan: Some(id.clone()),
                    ..Default::default()
                },
            ));
            // The model may be planned again while this runs, and the forced plan be gone from it.
            let replanned = || {
                client
                    .route_table("squeezenet")
                    .is_some_and(|t| !t.tier_calibration.is_empty())
            };
            if let Err(e) = ran {
                assert!(replanned(), "plan {id} failed before any replan: {e}");
            }
        }
    }
    let mut after = None;
    sandbox.wait_until(
        "the model planned again with its tiers calibrated",
        Duration::from_secs(30),
        |s| {
            after = s
                .routes("squeezenet")
                .filter(|t| !t.tier_calibration.is_empty());
            after.is_some()
        },
    );
    let after = after.expect("a calibrated table");
    assert_eq!(after.tier_calibration.len(), 3);
    assert_eq!(
        after.tier_calibration[0], 1.0,
        "devices calibrate themselves"
    );
    assert!(
        after.tier_calibration[1..]
            .iter()
            .any(|&f| !(1.0 / 1.25..=1.25).contains(&f)),
        "a re-plan comes from a tier measured outside the ±25 % band: factors {:?}",
        after.tier_calibration
    );
    // A stage file planned on the same tier before and after: its time scaled by the tier's factor.
    let mut compared = 0;
    for stage in after.plans.iter().flat_map(|p| &p.stages) {
        let old = before
            .plans
            .iter()
            .flat_map(|p| &p.stages)
            .find(|s| s.digest == stage.digest && s.tier == stage.tier);
        if let Some(old) = old.filter(|_| stage.tier != v1::Tier::Device as i32) {
            let factor = after.tier_calibration[stage.tier as usize - 1];
            let ratio = stage.predicted_ms / old.predicted_ms;
            assert!(
                (ratio / factor - 1.0).abs() < 1e-6,
                "stage {} on tier {}: time ×{ratio} for factor {factor}",
                stage.digest,
                stage.tier
            );
            compared += 1;
        }
    }
    assert!(
        compared > 0,
        "no remote stage planned both before and after"
    );
    // The replanned table is served, and requests keep working.
    sandbox.wait_served("squeezenet", 1);
    sandbox
        .runtime
        .block_on(client.infer("squeezenet", want.inputs.clone(), Constraints::default()))
        .expect("an adaptive request after the replan");
    let bad = sandbox.strata(&["control-plane", "--calibration-band-pct=-5"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected a percentage"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// The device stage cache over real processes: two `strata infer` processes fill one cache at once, a
/// corrupt cached stage is detected and fetched again, a choice says which plans would wait for a download,
/// and with the whole cluster gone a new process still serves the model from the cache (its saved route
/// table and the whole-model device stage).
#[test]
fn device_stages_are_cached_on_disk_shared_by_processes_and_serve_offline() {
    let mut sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "open");
    let table = sandbox.wait_served("squeezenet", 1);
    let device_only = table
        .plans
        .iter()
        .find(|p| p.stages.iter().all(|s| s.tier == v1::Tier::Device as i32))
        .expect("a device-only plan")
        .clone();
    let stage: strata_core::Digest = device_only.stages[0].digest.parse().expect("a digest");
    let input = format!(
        "data_0={}",
        corpus("squeezenet.inputs/data_0.npy").display()
    );
    let cache = sandbox.dir.path().join("device-cache");
    let device = sandbox.device_tls();
    let command = |out: &str, extra: &[&str]| {
        let mut c = std::process::Command::new(sandbox::strata_bin());
        c.args([
            "infer",
            "squeezenet",
            "--endpoint",
            &sandbox.cp_address,
            "--input",
            &input,
        ])
        .arg("--output-dir")
        .arg(sandbox.dir.path().join(out))
        .arg("--cache-dir")
        .arg(&cache)
        .args(extra)
        .env("STRATA_LOG", "off");
        if let Some(dir) = &device {
            c.env("STRATA_TLS_DIR", dir);
        }
        c
    };
    let must = |out: std::process::Output, what: &str| -> String {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // A fresh cache: the device-only plan would wait for its whole-model stage.
    let fresh = must(
        command("out-v", &["-v"])
            .output()
            .expect("strata infer runs"),
        "explained",
    );
    assert!(
        fresh
            .lines()
            .any(|l| l.contains(&device_only.id) && l.contains("downloads")),
        "{fresh}"
    );

    // Two processes at once fill the cache with the device-only stage.
    std::fs::remove_dir_all(&cache).expect("empty the cache");
    let forced = ["--plan", device_only.id.as_str()];
    let children: Vec<_> = ["out-a", "out-b"]
        .into_iter()
        .map(|o| {
            command(o, &forced)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn strata infer")
        })
        .collect();
    for child in children {
        must(
            child.wait_with_output().expect("strata infer ends"),
            "concurrent",
        );
    }
    let shared = strata_blob::SharedCache::open(&cache, 1 << 30).expect("the cache opens");
    assert!(
        shared.get(&stage).expect("an intact stage").is_some(),
        "the whole-model stage is cached"
    );

    // Corrupted on disk: detected, fetched again, and cached intact.
    let file = cache
        .join("sha256")
        .join(&stage.as_str()[..2])
        .join(stage.as_str());
    std::fs::write(&file, b"not an onnx file").expect("corrupt the cached stage");
    must(
        command("out-c", &forced)
            .output()
            .expect("strata infer runs"),
        "after corruption",
    );
    assert!(shared.get(&stage).expect("intact again").is_some());

    // An app that declares the model gets every device stage prefetched in the background, the whole-model
    // one first; then no plan waits for a download.
    let prefetched = sandbox.dir.path().join("prefetched");
    let app = {
        let _guard = sandbox.runtime.enter();
        let mut config = strata_device_sdk::ClientConfig::new(vec![sandbox.cp_address.clone()]);
        config.transport = sandbox.transport_as(strata_trust::Role::Device, "device");
        config.cache_dir = Some(prefetched.clone());
        config.prefetch = vec!["squeezenet".to_string()];
        strata_device_sdk::Client::new(config).expect("a client")
    };
    let device_stages: std::collections::BTreeSet<String> = table
        .plans
        .iter()
        .flat_map(|p| &p.stages)
        .filter(|s| s.tier == v1::Tier::Device as i32)
        .map(|s| s.digest.clone())
        .collect();
    sandbox.wait_until(
        "the device stages prefetched",
        Duration::from_secs(30),
        |_| {
            let cached = strata_blob::SharedCache::open(&prefetched, 1 << 30)
                .and_then(|c| c.list())
                .map(|l| {
                    l.into_iter()
                        .map(|b| b.digest.to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            device_stages.iter().all(|d| cached.contains(d))
        },
    );
    sandbox.wait_until(
        "the app knows they are here",
        Duration::from_secs(10),
        |_| {
            app.explain("squeezenet", &Constraints::default())
                .is_ok_and(|d| d.ranked.iter().all(|c| c.download_bytes == 0))
        },
    );
    // A one-byte budget fetches nothing and says what it left out.
    let small = {
        let _guard = sandbox.runtime.enter();
        let mut config = strata_device_sdk::ClientConfig::new(vec![sandbox.cp_address.clone()]);
        config.transport = sandbox.transport_as(strata_trust::Role::Device, "device");
        config.cache_dir = Some(sandbox.dir.path().join("small"));
        strata_device_sdk::Client::new(config).expect("a client")
    };
    let done = sandbox
        .runtime
        .block_on(small.prefetch(&["squeezenet".to_string()], 1))
        .expect("prefetch");
    assert!(done.fetched.is_empty() && done.bytes == 0, "{done:?}");
    assert_eq!(done.skipped.len(), device_stages.len(), "{done:?}");

    // The cluster is gone: a new process routes from the saved table and serves from the cache.
    sandbox.replicas[0].kill();
    for agent in &mut sandbox.agents {
        agent.proc.kill();
    }
    let offline = must(
        command("out-offline", &["--local-only"])
            .output()
            .expect("strata infer runs"),
        "offline",
    );
    assert!(
        offline.contains(&format!("plan {}", device_only.id)),
        "{offline}"
    );
    let got = strata_runtime::npy::decode(
        &std::fs::read(sandbox.dir.path().join("out-offline/softmaxout_1.npy")).expect("output"),
    )
    .expect("npy");
    assert_outputs_match(
        &[("softmaxout_1".to_string(), got)],
        &reference("squeezenet").outputs,
        "offline, from the cache",
    );
}

/// A channel to `address` under the admin's credentials, as the raw calls straight at a server use.
fn admin_channel(sandbox: &Sandbox, address: &str) -> tonic::transport::Channel {
    strata_proto::call::channel(
        address,
        Duration::from_secs(2),
        &sandbox.admin(),
        strata_proto::transport::Expect::Server,
    )
    .expect("channel")
}

#[test]
fn bad_input_gets_a_clear_status_and_the_servers_keep_serving() {
    let sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let table = sandbox.wait_served("squeezenet", 1);
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let want = reference("squeezenet");
    let rt = &sandbox.runtime;

    // Unknown model.
    let e = rt
        .block_on(client.infer("nope", want.inputs.clone(), Constraints::default()))
        .expect_err("unknown");
    assert!(
        matches!(e, SdkError::UnknownModel(_)) && e.to_string().contains("unknown model \"nope\""),
        "{e}"
    );

    // Wrong input name, shape, dtype.
    let t = want.inputs["data_0"].clone();
    let cases: Vec<(HashMap<String, TensorData>, &str)> = vec![
        (
            HashMap::from([("image".to_string(), t.clone())]),
            "has no input \"image\"",
        ),
        (
            HashMap::from([(
                "data_0".to_string(),
                TensorData::from_f32(vec![1, 3, 10, 10], &[0.0; 300]).expect("t"),
            )]),
            "shape",
        ),
        (
            HashMap::from([(
                "data_0".to_string(),
                TensorData::new(strata_runtime::DType::I32, t.shape.clone(), t.data.clone())
                    .expect("t"),
            )]),
            "expects float32",
        ),
    ];
    for (inputs, needle) in cases {
        let e = rt
            .block_on(client.infer("squeezenet", inputs, Constraints::default()))
            .expect_err(needle);
        assert!(
            matches!(e, SdkError::InvalidInput(_)) && e.to_string().contains(needle),
            "{e}"
        );
    }

    // Straight at an agent: a tensor the stage does not take, a stage the agent does not hold, an oversized
    // message.
    let edge = &sandbox.agents[0].address;
    let plan = table
        .plans
        .iter()
        .find(|p| p.stages.iter().any(|s| s.tier == v1::Tier::Edge as i32))
        .expect("a plan with an edge stage");
    let edge_stage = plan
        .stages
        .iter()
        .find(|s| s.tier == v1::Tier::Edge as i32)
        .expect("edge stage");
    let header = v1::InferHeader {
        model: "squeezenet".into(),
        version: table.version,
        plan_id: plan.id.clone(),
        stage: edge_stage.index,
        request_id: "bad".into(),
    };
    let call = |header: v1::InferHeader, tensors: Vec<(String, TensorData)>| {
        rt.block_on(async {
            let chunks = strata_proto::call::chunks_of(tensors);
            strata_proto::call::infer(
                admin_channel(&sandbox, edge),
                header,
                &chunks,
                Some(Duration::from_secs(10)),
                u64::MAX,
            )
            .await
        })
    };
    let e = call(header.clone(), vec![("bogus".into(), t.clone())]).expect_err("wrong tensor");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("needs tensor"), "{}", e.message());
    let device_stage = v1::InferHeader {
        stage: 0,
        ..header.clone()
    };
    let e = call(device_stage, vec![]).expect_err("device stage on an agent");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("device tier"), "{}", e.message());
    let e = call(
        v1::InferHeader {
            plan_id: "nosuchplan".into(),
            ..header.clone()
        },
        vec![],
    )
    .expect_err("plan");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let oversized = rt.block_on(async {
        let channel = admin_channel(&sandbox, edge);
        let frames = vec![
            v1::InferRequest {
                frame: Some(v1::infer_request::Frame::Header(header.clone())),
            },
            v1::InferRequest {
                frame: Some(v1::infer_request::Frame::Tensor(v1::TensorChunk {
                    header: Some(v1::TensorHeader {
                        name: "x".into(),
                        dtype: 1,
                        shape: vec![2 << 20],
                    }),
                    data: bytes::Bytes::from(vec![0u8; 8 << 20]),
                })),
            },
        ];
        v1::inference_client::InferenceClient::new(channel)
            .max_encoding_message_size(usize::MAX)
            .infer(futures::stream::iter(frames))
            .await
    });
    let e = oversized.expect_err("oversized message");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("too large"), "{}", e.message());

    // A corrupt upload: the digest does not match; nothing is stored.
    let bytes = std::fs::read(corpus("squeezenet.onnx")).expect("model");
    let corrupt = rt.block_on(async {
        let channel = strata_proto::call::channel(
            &sandbox.cp_address,
            Duration::from_secs(2),
            &sandbox.admin(),
            strata_proto::transport::Expect::Server,
        )
        .expect("channel");
        let meta = v1::ModelMeta {
            name: "corrupt".into(),
            digest: "0".repeat(64),
            size_bytes: bytes.len() as u64,
            privacy: v1::Privacy::Open as i32,
            input_shapes: vec![],
            batching: None,
        };
        let mut messages = vec![v1::PushModelRequest {
            part: Some(v1::push_model_request::Part::Meta(meta)),
        }];
        for c in bytes.chunks(1 << 20) {
            messages.push(v1::PushModelRequest {
                part: Some(v1::push_model_request::Part::Data(
                    bytes::Bytes::copy_from_slice(c),
                )),
            });
        }
        v1::control_client::ControlClient::new(channel)
            .push_model(futures::stream::iter(messages))
            .await
    });
    let e = corrupt.expect_err("corrupt upload");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("hash to"), "{}", e.message());
    let ls = sandbox.strata(&["model", "ls"]);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("corrupt"),
        "a corrupt upload was stored"
    );

    // A file that is not a model.
    let text = sandbox.dir.path().join("notes.onnx");
    std::fs::write(&text, "not a model").expect("write");
    let out = sandbox.strata(&["model", "push", &text.to_string_lossy(), "--name", "notes"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be served"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Everyone still serves.
    let r = rt
        .block_on(client.infer("squeezenet", want.inputs.clone(), Constraints::default()))
        .expect("still serving");
    assert_outputs_match(&r.outputs, &want.outputs, "after bad input");
    assert!(
        r.stages.iter().any(|s| s.node.is_some()),
        "the request should use the agents: {r:?}"
    );
}

#[test]
fn graceful_shutdown_deregisters_at_once() {
    let mut sandbox = Sandbox::start(&["edge", "edge"], 60_000);
    let id = sandbox.status(&sandbox.agents[1].address).node_id;
    for address in [&sandbox.cp_address, &sandbox.agents[1].address] {
        let serving = sandbox.runtime.block_on(async {
            let channel = strata_proto::call::channel(
                address,
                Duration::from_secs(2),
                &sandbox.admin(),
                strata_proto::transport::Expect::Server,
            )
            .expect("channel");
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("grpc.health.v1 answers")
                .into_inner()
                .status
        });
        assert_eq!(
            serving,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    let status = sandbox.agents[1].proc.terminate();
    assert!(status.success(), "agent exit status {status:?}");
    // With a 60 s lease only deregistration can remove it this quickly.
    sandbox.wait_until("the agent deregisters", Duration::from_secs(5), |s| {
        s.nodes().iter().all(|n| n.id != id)
    });
    assert!(
        sandbox.log("edge1").contains("deregistered"),
        "{}",
        sandbox.log("edge1")
    );
}

#[test]
fn a_full_agent_sheds_load_with_resource_exhausted_instead_of_queueing() {
    let mut sandbox = Sandbox::start(&["cloud"], 3000);
    sandbox.add_agent_with("edge", 1, 0);
    sandbox.wait_until("the edge agent registered", Duration::from_secs(30), |s| {
        s.nodes().len() == 2
    });
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "open");
    let table = sandbox.wait_served("squeezenet", 1);
    let plan = table
        .plans
        .iter()
        .find(|p| {
            p.stages
                .first()
                .is_some_and(|s| s.tier == v1::Tier::Edge as i32)
        })
        .expect("a plan starting on the edge");
    let edge = sandbox.agents[1].address.clone();
    let want = reference("squeezenet");
    let chunks = strata_proto::call::chunks_of(want.inputs.clone().into_iter().collect());
    let header = v1::InferHeader {
        model: "squeezenet".into(),
        version: table.version,
        plan_id: plan.id.clone(),
        stage: 0,
        request_id: "burst".into(),
    };
    let results: Vec<Result<(), tonic::Status>> = sandbox.runtime.block_on(async {
        let channel = strata_proto::call::channel(
            &edge,
            Duration::from_secs(2),
            &sandbox.admin(),
            strata_proto::transport::Expect::Server,
        )
        .expect("channel");
        let calls = (0..8).map(|_| {
            let (channel, header, chunks) = (channel.clone(), header.clone(), chunks.clone());
            tokio::spawn(async move {
                strata_proto::call::infer(
                    channel,
                    header,
                    &chunks,
                    Some(Duration::from_secs(30)),
                    u64::MAX,
                )
                .await
                .map(|_| ())
            })
        });
        let mut out = Vec::new();
        for c in calls.collect::<Vec<_>>() {
            out.push(c.await.expect("task"));
        }
        out
    });
    let shed: Vec<&tonic::Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        results.iter().any(|r| r.is_ok()),
        "no request was served: {results:?}"
    );
    assert!(
        !shed.is_empty(),
        "8 concurrent requests on 1 slot with no queue: none was shed: {results:?} {:?}",
        sandbox.status(&edge)
    );
    for s in &shed {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("at capacity"), "{}", s.message());
    }
    let status = sandbox.status(&edge);
    assert_eq!(status.requests_rejected as usize, shed.len());
    assert_eq!(
        status.load.expect("load").in_flight,
        0,
        "the in-flight count must return to zero"
    );
}

#[test]
fn strata_up_serves_the_demo_and_its_printed_command_works() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = std::process::Command::new(sandbox::strata_bin());
    cmd.current_dir(sandbox::root())
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"));
    let up = sandbox::Proc::spawn("strata up", cmd, &dir.path().join("up.log"));
    up.wait_line("is served", Duration::from_secs(120));
    let command = up.wait_line("strata infer", Duration::from_secs(5));
    // `VAR=value … strata infer …`: the printed command names the administrator's TLS material.
    let words: Vec<&str> = command.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "strata")
        .expect("a strata command");
    let envs: Vec<(&str, &str)> = words[..at]
        .iter()
        .filter_map(|w| w.split_once('='))
        .collect();
    assert!(
        envs.iter().any(|(k, _)| *k == "STRATA_TLS_DIR"),
        "the demo is served over mutual TLS and says where its credentials are: {command}"
    );
    let args: Vec<String> = words[at + 1..]
        .iter()
        .map(|a| a.replace("/tmp/strata-out", &dir.path().join("out").to_string_lossy()))
        .collect();
    let out = std::process::Command::new(sandbox::strata_bin())
        .current_dir(sandbox::root())
        .envs(envs)
        .args(&args)
        .env("STRATA_LOG", "off")
        .env("STRATA_CACHE_DIR", dir.path().join("stage-cache"))
        .output()
        .expect("strata infer runs");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("-> edge("),
        "the demo request should be split: {stdout}"
    );
    let got = strata_runtime::npy::decode(
        &std::fs::read(dir.path().join("out/softmaxout_1.npy")).expect("output written"),
    )
    .expect("npy");
    let want = reference("squeezenet");
    assert_outputs_match(
        &[("softmaxout_1".to_string(), got)],
        &want.outputs,
        "strata up demo",
    );
    // SIGTERM drains the agents, then the control plane, and exits cleanly.
    let mut up = up;
    let started = Instant::now();
    let status = up.terminate();
    assert!(status.success(), "strata up exited with {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn with_every_agent_and_the_control_plane_gone_the_device_runs_the_whole_model() {
    let mut sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    sandbox.wait_served("squeezenet", 1);
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let want = reference("squeezenet");
    // Fetches and loads every device stage, the whole-model one included, while the network is up.
    sandbox
        .runtime
        .block_on(client.prepare("squeezenet"))
        .expect("prepare");
    let split = sandbox
        .runtime
        .block_on(client.infer("squeezenet", want.inputs.clone(), Constraints::default()))
        .expect("split inference");
    assert!(split.stages.iter().any(|s| s.node.is_some()), "{split:?}");

    for agent in &mut sandbox.agents {
        agent.proc.kill();
    }
    sandbox.replicas[0].kill();
    let r = sandbox
        .runtime
        .block_on(client.infer("squeezenet", want.inputs.clone(), Constraints::default()))
        .expect("offline inference falls back to the device");
    assert_outputs_match(&r.outputs, &want.outputs, "offline");
    assert!(r.stages.iter().all(|s| s.node.is_none()), "{r:?}");
    // The client calibrated its device stages in `prepare` and may rank the device-only plan first by
    // itself (this machine is far faster than the profile's device); when it ranked a split first, that
    // split failed and the device took over.
    let first = r.decision.ranked.first().expect("a ranked plan");
    if first.tiers.iter().any(|t| *t != "device") {
        assert!(
            r.fallbacks >= 1,
            "the split plan {} came first: {r:?}",
            first.plan_id
        );
    }
}

/// The digests of a table's edge and cloud stages.
fn remote_stages(table: &v1::RouteTable) -> std::collections::BTreeSet<String> {
    table
        .plans
        .iter()
        .flat_map(|p| &p.stages)
        .filter(|s| s.tier != v1::Tier::Device as i32)
        .map(|s| s.digest.clone())
        .collect()
}

#[test]
fn a_new_version_rolls_out_without_a_failed_request_then_the_old_one_is_unloaded() {
    use prost::Message;
    let sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let v1_table = sandbox.wait_served("squeezenet", 1);
    assert_eq!(v1_table.version, 1);

    // Version 2: the same network with a metadata entry, so every stage has new bytes (and digests) but
    // the outputs stay those of the reference.
    let bytes = std::fs::read(corpus("squeezenet.onnx")).expect("model");
    let mut model = strata_planner::onnx::ModelProto::decode(bytes.as_slice()).expect("ONNX");
    model
        .metadata_props
        .push(strata_planner::onnx::StringStringEntryProto {
            key: Some("strata-test-release".into()),
            value: Some("2".into()),
        });
    let v2_file = sandbox.dir.path().join("squeezenet-v2.onnx");
    std::fs::write(&v2_file, model.encode_to_vec()).expect("write v2");

    let client = sandbox.client(&[
        sandbox.agents[0].address.clone(),
        sandbox.cp_address.clone(),
    ]);
    sandbox
        .runtime
        .block_on(client.prepare("squeezenet"))
        .expect("prepare");
    let stream = sandbox::Stream::start(&sandbox, client, "squeezenet", Privacy::Features);
    stream.wait_more(5, Duration::from_secs(30));
    sandbox.push(&v2_file, "squeezenet", "features");
    let mut seen = Vec::new();
    sandbox.wait_until("version 2 routed", Duration::from_secs(60), |s| {
        let Some(table) = s.routes("squeezenet") else {
            return false;
        };
        if table.version == 2 {
            seen.push(table);
            return true;
        }
        false
    });
    let v2_table = seen.pop().expect("a version 2 table");
    // The switch waited for the agents: the first version 2 table already names a ready agent for every
    // edge and cloud stage.
    for stage in v2_table.plans.iter().flat_map(|p| &p.stages) {
        assert!(
            stage.tier == v1::Tier::Device as i32 || !stage.nodes.is_empty(),
            "version 2 was routed before stage {} ({}) was loaded anywhere",
            stage.index,
            stage.digest
        );
    }
    // Traffic on version 2 (and any request still on version 1) before the stream stops.
    stream.wait_more(10, Duration::from_secs(30));
    let served = stream.finish(&sandbox, 20);
    eprintln!("{served} requests served across the rollout");

    // After the grace period the old version's stages are unloaded; the new ones stay.
    let (old, new) = (remote_stages(&v1_table), remote_stages(&v2_table));
    assert!(old.is_disjoint(&new), "version 2 has new stage files");
    sandbox.wait_until(
        "version 1 unloaded",
        sandbox::ROLLOUT_GRACE + Duration::from_secs(10),
        |s| {
            s.agents.iter().all(|a| {
                let loaded = s.status(&a.address).stages;
                loaded.iter().all(|d| !old.contains(d))
            })
        },
    );
    let loaded: std::collections::BTreeSet<String> = sandbox
        .agents
        .iter()
        .flat_map(|a| sandbox.status(&a.address).stages)
        .collect();
    assert!(
        new.is_subset(&loaded),
        "version 2 stays loaded: {new:?} vs {loaded:?}"
    );
}

/// A network blip that cuts the agents' and the device's long-lived watch streams, while new connections go
/// through (so heartbeats carry on), must not leave them on stale tables: each notices, reconnects and follows
/// what is published after the cut.
#[test]
fn agents_and_devices_follow_new_tables_after_their_watch_streams_are_cut() {
    let mut sandbox = Sandbox::start(&[], 3000);
    let proxy = sandbox::Proxy::start(&sandbox.cp_address);
    sandbox.add_agent_to("edge", 2, 64, &proxy.address);
    sandbox.add_agent_to("cloud", 2, 64, &proxy.address);
    sandbox.wait_until("both agents registered", Duration::from_secs(30), |s| {
        s.nodes().len() == 2
    });
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    sandbox.wait_served("squeezenet", 1);
    let client = sandbox.client(std::slice::from_ref(&proxy.address));
    sandbox.wait_until(
        "the device follows the tables",
        Duration::from_secs(20),
        |_| client.route_watch().is_ok() && client.route_table("squeezenet").is_some(),
    );

    let cut = proxy.cut();
    assert!(
        cut >= 3,
        "the agents' and the device's connections were cut: {cut}"
    );
    sandbox.push(&corpus("multi_io.onnx"), "multi_io", "open");
    // The agents follow their assignments again: they load the new model's stages.
    sandbox.wait_served("multi_io", 1);
    // The device follows the route tables again: the new table arrives without being asked for.
    sandbox.wait_until(
        "the device has the new table",
        Duration::from_secs(20),
        |_| client.route_table("multi_io").is_some(),
    );
    for agent in &sandbox.agents {
        let status = sandbox.status(&agent.address);
        assert!(
            status.control_plane_connected && status.control_plane_error.is_empty(),
            "{} reconnected: {status:?}",
            agent.proc.name
        );
    }
    assert!(client.route_watch().is_ok(), "{:?}", client.route_watch());
    let want = reference("multi_io");
    let r = sandbox
        .runtime
        .block_on(client.infer("multi_io", want.inputs.clone(), Constraints::default()))
        .expect("inference after the cut");
    assert_outputs_match(&r.outputs, &want.outputs, "multi_io after the cut");
    assert!(
        sandbox.log("edge0").contains("control session ended"),
        "the agent logged why it reconnected"
    );
}

/// The CLI tells a cluster that is not there from one that answers: `cannot reach` comes from the client's
/// transport, not from a message's wording.
#[test]
fn the_cli_says_when_it_cannot_reach_the_cluster() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("address").to_string()
    };
    let out = std::process::Command::new(sandbox::strata_bin())
        .args(["model", "ls", "--endpoint", &closed])
        .env("STRATA_LOG", "off")
        .output()
        .expect("strata runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("cannot reach {closed}"))
            && stderr.contains("is `strata up` or `strata control-plane` running"),
        "{stderr}"
    );
}

/// The control plane restarted at the same address on a new, empty store (its disk was lost): agents register
/// anew, and agents and devices drop the models the new store does not have and take the new store's tables,
/// although their revisions are lower than the ones they held (revisions start over in a new store).
#[test]
fn agents_and_devices_follow_a_control_plane_restarted_on_a_new_store() {
    let mut sandbox = Sandbox::start(&["edge", "cloud"], 3000);
    // Many writes before squeezenet's table is published: its revision in the old store is high.
    for (round, privacy) in ["open", "features", "open", "features", "open", "features"]
        .into_iter()
        .enumerate()
    {
        sandbox.push(&corpus("multi_io.onnx"), "multi_io", privacy);
        sandbox.wait_until("multi_io replanned", Duration::from_secs(60), |s| {
            s.routes("multi_io")
                .is_some_and(|t| t.version == round as u64 + 1)
        });
    }
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let old = sandbox.wait_served("squeezenet", 1);
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    // Another device watches through an agent (which passes the control plane's tables on).
    let behind_agent = sandbox.client(std::slice::from_ref(&sandbox.agents[0].address));
    sandbox.wait_until(
        "the devices hold both tables",
        Duration::from_secs(20),
        |_| {
            [&client, &behind_agent].iter().all(|c| {
                c.route_table("multi_io").is_some()
                    && c.route_table("squeezenet")
                        .is_some_and(|t| t.revision == old.revision)
            })
        },
    );
    let old_nodes: Vec<String> = sandbox.nodes().into_iter().map(|n| n.id).collect();

    sandbox.restart_on_new_store();
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    sandbox.wait_served("squeezenet", 1);
    let new_nodes: Vec<String> = sandbox.nodes().into_iter().map(|n| n.id).collect();
    assert!(
        new_nodes.iter().all(|n| !old_nodes.contains(n)),
        "the agents registered anew: {old_nodes:?} -> {new_nodes:?}"
    );
    let mut current = 0;
    sandbox.wait_until(
        "the devices follow the new store",
        Duration::from_secs(20),
        |s| {
            current = s.routes("squeezenet").map_or(0, |t| t.revision);
            [&client, &behind_agent].iter().all(|c| {
                c.route_table("multi_io").is_none()
                    && c.route_table("squeezenet")
                        .is_some_and(|t| t.revision == current)
            })
        },
    );
    assert!(
        current < old.revision,
        "the test needs the new store's revision ({current}) below the old one ({})",
        old.revision
    );
    for agent in &sandbox.agents {
        let known = sandbox.runtime.block_on(async {
            let channel = strata_proto::call::channel(
                &agent.address,
                Duration::from_secs(2),
                &sandbox.admin(),
                strata_proto::transport::Expect::Server,
            )
            .expect("channel");
            v1::routes_client::RoutesClient::new(channel)
                .get_routes(v1::GetRoutesRequest {
                    model: "multi_io".into(),
                })
                .await
        });
        assert_eq!(
            known.map_err(|s| s.code()).err(),
            Some(tonic::Code::NotFound),
            "{} forgot the model the new store does not have",
            agent.proc.name
        );
    }
    let want = reference("squeezenet");
    let r = sandbox
        .runtime
        .block_on(client.infer(
            "squeezenet",
            want.inputs.clone(),
            with_privacy(Privacy::Features),
        ))
        .expect("inference on the new store's plans");
    assert_outputs_match(&r.outputs, &want.outputs, "squeezenet on the new store");
}

/// A blob directory belongs to one process: a control plane may keep its blobs inside its store directory,
/// and a second one pointed at the same blobs is refused with a clear error instead of collecting the first
/// one's files.
#[test]
fn a_blob_directory_belongs_to_one_control_plane() {
    let dir = tempfile::tempdir().expect("temp dir");
    let blobs = dir.path().join("a").join("blobs");
    let start = |name: &str| {
        let mut cmd = std::process::Command::new(sandbox::strata_bin());
        cmd.args(["control-plane", "--listen", "127.0.0.1:0", "--store"])
            .arg(dir.path().join(name))
            .arg("--blobs")
            .arg(&blobs);
        sandbox::Proc::spawn(name, cmd, &dir.path().join(format!("{name}.log")))
    };
    // The first keeps its blobs inside its own store directory.
    let first = start("a");
    first.wait_line("listening on", Duration::from_secs(30));
    let mut second = start("b");
    let status = second.child.wait().expect("the second control plane exits");
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default();
    assert!(
        !status.success(),
        "a second owner of the blob directory started"
    );
    assert!(
        log.contains("is in use by another process"),
        "the refusal says why: {log}"
    );
}

/// Issue 13: a tier whose agents run different backends (ONNX Runtime on one, tract on the other) serves one
/// model with equal answers; every agent reports the backend it runs and how often it ran each stage, and
/// `auto` picks ONNX Runtime where its library is (the wheel CI installs) and says so.
#[test]
fn agents_on_onnx_runtime_and_on_tract_serve_one_model_with_equal_outputs() {
    let mut sandbox = Sandbox::start(&[], 1500);
    sandbox.add_agent_args("edge", &["--backend", "ort", "--backend-threads", "1"]);
    sandbox.add_agent_args("edge", &["--backend", "tract"]);
    sandbox.add_agent_args("cloud", &["--backend", "auto"]);
    sandbox.wait_until("every agent registered", Duration::from_secs(30), |s| {
        s.nodes().len() == 3
    });
    let backend_of = |sandbox: &Sandbox, name: &str| -> Vec<String> {
        let nodes = sandbox.nodes();
        let node = nodes
            .iter()
            .find(|n| n.spec.as_ref().is_some_and(|s| s.name == name))
            .unwrap_or_else(|| panic!("{name} not registered"));
        node.spec.as_ref().expect("spec").backends.clone()
    };
    assert_eq!(backend_of(&sandbox, "edge0"), ["ort-cpu"]);
    assert_eq!(backend_of(&sandbox, "edge1"), ["tract"]);
    let auto = backend_of(&sandbox, "cloud2");
    assert!(
        matches!(auto.as_slice(), [b] if b.starts_with("ort-")),
        "auto should find the onnxruntime wheel: {auto:?}"
    );
    assert!(
        sandbox
            .log("cloud2")
            .contains(&format!("stages run on {}", auto[0])),
        "auto says what it picked:\n{}",
        sandbox.log("cloud2")
    );
    for agent in &sandbox.agents {
        let status = sandbox.status(&agent.address);
        assert_eq!(status.backends.len(), 1, "{}", agent.address);
    }

    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let table = sandbox.wait_served("squeezenet", 2);
    let edge = v1::Tier::Edge as i32;
    let plan = table
        .plans
        .iter()
        .filter(|p| p.stages.iter().any(|s| s.tier == edge))
        .min_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms))
        .expect("a plan with an edge stage");
    let forced = Constraints {
        plan: Some(plan.id.clone()),
        ..Constraints::default()
    };
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let want = reference("squeezenet");
    let ids: HashMap<String, String> = sandbox
        .nodes()
        .into_iter()
        .map(|n| (n.id.clone(), n.spec.map(|s| s.name).unwrap_or_default()))
        .collect();
    let mut served_by: HashMap<String, Vec<Vec<(String, TensorData)>>> = HashMap::new();
    for i in 0..16 {
        let r = sandbox
            .runtime
            .block_on(client.infer("squeezenet", want.inputs.clone(), forced.clone()))
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_outputs_match(&r.outputs, &want.outputs, &format!("request {i}"));
        let edge_node = r
            .stages
            .iter()
            .find(|s| s.tier == "edge")
            .and_then(|s| s.node.clone())
            .expect("an edge stage with its node");
        served_by
            .entry(ids.get(&edge_node).cloned().unwrap_or(edge_node))
            .or_default()
            .push(r.outputs);
    }
    let (ort, tract) = (
        served_by
            .get("edge0")
            .expect("the ONNX Runtime agent served"),
        served_by.get("edge1").expect("the tract agent served"),
    );
    // The two backends' answers to the same request agree with each other, not only with the reference.
    for (name, a) in &ort[0] {
        let (_, b) = tract[0]
            .iter()
            .find(|(n, _)| n == name)
            .expect("same outputs");
        let diff = a.max_relative_diff(b).expect("comparable");
        assert!(
            diff <= 1e-4,
            "{name}: ONNX Runtime and tract differ by {diff}"
        );
    }
    // Heartbeats carry each stage's runs, so the control plane weighs each agent by what it served.
    sandbox.wait_until(
        "edge agents report their runs",
        Duration::from_secs(10),
        |s| {
            let nodes = s.nodes();
            ["edge0", "edge1"].iter().all(|name| {
                nodes.iter().any(|n| {
                    n.spec.as_ref().is_some_and(|sp| sp.name == *name)
                        && n.stage_runs.values().sum::<u64>() >= 2
                        && n.stage_runs.keys().all(|d| n.stage_ms.contains_key(d))
                })
            })
        },
    );
}

/// `--backend ort` without the library is an error at start-up that says what to install; `auto` without it
/// serves on tract and says why.
#[test]
fn a_missing_onnx_runtime_is_a_clear_error_or_auto_serves_on_tract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no/libonnxruntime.so");
    let agent = |backend: &str| {
        let mut cmd = std::process::Command::new(sandbox::agent_bin());
        cmd.args(["--tier", "edge", "--control-plane", "127.0.0.1:9"])
            .args(["--listen", "127.0.0.1:0", "--backend", backend])
            .arg("--data-dir")
            .arg(dir.path().join(backend.replace(':', "-")))
            .env("ORT_DYLIB_PATH", &missing)
            .env("RUST_BACKTRACE", "0");
        cmd
    };
    for backend in ["ort", "ort:cuda", "ort:tensorrt"] {
        let out = agent(backend)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{backend}: {stderr}");
        assert!(!stderr.contains("panicked"), "{backend}: {stderr}");
        for needed in [
            &format!("--backend {backend}"),
            "pip install onnxruntime",
            "ORT_DYLIB_PATH",
            missing.to_str().expect("utf-8 path"),
        ] {
            assert!(
                stderr.contains(needed),
                "{backend}: no {needed:?} in: {stderr}"
            );
        }
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening on"),
            "{backend}: it must not serve"
        );
    }
    let out = agent("gpu").output().expect("run the agent");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: auto, tract, ort"));

    let log = dir.path().join("auto.log");
    let mut auto = sandbox::Proc::spawn("auto", agent("auto"), &log);
    auto.wait_line("listening on", Duration::from_secs(30));
    auto.kill();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("stages run on tract"), "{text}");
    for passed in ["ort-tensorrt", "ort-cuda", "ort-cpu"] {
        assert!(
            text.lines()
                .any(|l| l.contains("backend passed over") && l.contains(passed)),
            "auto says why it passed over {passed}: {text}"
        );
    }
}

/// Issue 13: dynamic batching. A model pushed with `--max-batch` has its stages' concurrent requests run as
/// batches on the agents: every caller gets the answer to its own input (each request's input differs), the
/// responses say that batches ran, a request whose deadline is shorter than the batching delay is not held
/// for the batch to fill, and a malformed request among good ones fails alone.
#[test]
fn concurrent_requests_are_batched_and_each_caller_gets_its_own_answer() {
    let mut sandbox = Sandbox::start(&[], 3000);
    // One slot: while a batch computes, the next one fills. tract runs a batch slower per request than
    // requests alone (so an agent would not batch by default): this test is about what batching does.
    let control_planes = sandbox.replica_addresses();
    for tier in ["edge", "cloud"] {
        sandbox.add_agent_full(tier, 1, 64, &control_planes, &["--batch-always"]);
    }
    sandbox.wait_until("every agent registered", Duration::from_secs(30), |s| {
        s.nodes().len() == 2
    });
    // A 1.5 s delay: far longer than the tests' requests take, so a batch that closed on the delay, not on
    // deadlines or size, would show.
    sandbox.push_with(
        &corpus("squeezenet.onnx"),
        "squeezenet",
        "open",
        &["--max-batch", "8", "--max-queue-delay-us", "1500000"],
    );
    let table = sandbox.wait_served("squeezenet", 1);
    assert_eq!(
        table.batching.map(|b| (b.max_batch, b.max_queue_delay_us)),
        Some((8, 1_500_000))
    );
    let ls = String::from_utf8_lossy(&sandbox.strata(&["model", "ls"]).stdout).to_string();
    assert!(ls.contains("8/1500000us"), "{ls}");
    // Settings past the limits are refused, and nothing is stored.
    let out = sandbox.strata(&[
        "model",
        "push",
        &corpus("squeezenet.onnx").to_string_lossy(),
        "--name",
        "too-big",
        "--max-batch",
        "5000",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("max_batch 5000"),
        "{stderr}"
    );
    let ls = String::from_utf8_lossy(&sandbox.strata(&["model", "ls"]).stdout).to_string();
    assert!(!ls.contains("too-big"), "{ls}");
    let device = v1::Tier::Device as i32;
    let plan = table
        .plans
        .iter()
        .filter(|p| p.stages.iter().all(|s| s.tier != device))
        .min_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms))
        .expect("a plan with no device stage");
    let forced = || Constraints {
        plan: Some(plan.id.clone()),
        ..Constraints::default()
    };
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let base = reference("squeezenet");
    let (name, x) = base.inputs.iter().next().expect("one input");
    let bytes = std::fs::read(corpus("squeezenet.onnx")).expect("model");
    let local = strata_runtime::Backend::load(
        &strata_runtime::TractBackend,
        &bytes,
        &HashMap::from([(name.clone(), x.shape.clone())]),
    )
    .expect("load");
    // Each request's input is the sample scaled differently, and its answer is checked against its own.
    let scaled = |k: usize| {
        let f = 0.5 + k as f32 * 0.1;
        let values: Vec<f32> = x
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * f)
            .collect();
        HashMap::from([(
            name.clone(),
            TensorData::from_f32(x.shape.clone(), &values).expect("input"),
        )])
    };
    // A first request makes the agents build (and check) the batched stages; then wait for them.
    sandbox
        .runtime
        .block_on(client.infer("squeezenet", scaled(0), forced()))
        .expect("first request");
    sandbox.wait_until(
        "the batched stages are ready",
        Duration::from_secs(60),
        |s| {
            ["edge0", "cloud1"].iter().all(|a| {
                let log = s.log(a);
                !log.contains("stage served one request at a time") && log.contains("stage batches")
            }) || plan.stages.len() == 1
                && (s.log("edge0") + &s.log("cloud1")).contains("stage batches")
        },
    );

    let n = 16;
    let wants: Vec<HashMap<String, TensorData>> = (0..n)
        .map(|k| local.run(&scaled(k)).expect("local run"))
        .collect();
    let started = Instant::now();
    let answers = sandbox.runtime.block_on(futures::future::join_all(
        (0..n).map(|k| client.infer("squeezenet", scaled(k), forced())),
    ));
    let took = started.elapsed();
    let mut largest = 0;
    for (k, answer) in answers.into_iter().enumerate() {
        let r = answer.unwrap_or_else(|e| panic!("request {k}: {e}"));
        assert_outputs_match(
            &r.outputs,
            &wants[k],
            &format!("request {k}, its own input"),
        );
        largest = largest.max(r.stages.iter().map(|s| s.batch).max().unwrap_or(0));
    }
    assert!(
        largest > 1,
        "no request ran in a batch:\n{}\n{}",
        sandbox.log("edge0"),
        sandbox.log("cloud1")
    );
    assert!(largest <= 8, "a batch above max_batch: {largest}");
    assert!(
        took < Duration::from_millis(1500 * 3),
        "16 requests took {took:?}: batches waited for the delay though full"
    );

    // A deadline shorter than the delay: the batch closes for it, it is not held 1.5 s and failed.
    let started = Instant::now();
    let hurried = sandbox.client_with_timeout(
        std::slice::from_ref(&sandbox.cp_address),
        Duration::from_millis(800),
    );
    let r = sandbox
        .runtime
        .block_on(hurried.infer("squeezenet", scaled(3), forced()))
        .expect("a lone request with a short deadline is served");
    assert_outputs_match(&r.outputs, &wants[3], "the lone request");
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "held {:?}",
        started.elapsed()
    );

    // A malformed request among good ones fails alone.
    let bad = HashMap::from([(
        name.clone(),
        TensorData::from_f32(vec![1, 3, 2, 2], &[0.0; 12]).expect("bad"),
    )]);
    let mut calls: Vec<_> = (0..6)
        .map(|k| client.infer("squeezenet", scaled(k), forced()))
        .collect();
    calls.insert(3, client.infer("squeezenet", bad, forced()));
    let answers = sandbox.runtime.block_on(futures::future::join_all(calls));
    for (i, answer) in answers.into_iter().enumerate() {
        if i == 3 {
            let e = answer.expect_err("the malformed request fails");
            assert!(e.to_string().contains("shape"), "{e}");
        } else {
            let k = if i < 3 { i } else { i - 1 };
            let r = answer.unwrap_or_else(|e| panic!("good request {k} failed: {e}"));
            assert_outputs_match(&r.outputs, &wants[k], &format!("good request {k}"));
        }
    }
}
