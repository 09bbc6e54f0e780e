//! Distributed serving (issue 3), on one machine over loopback:
//!
//! 1. **Agent overhead.** squeezenet's single edge stage served over gRPC (device SDK → agent → back) versus
//!    the same stage bytes run by raw tract in this process, and the wire-only time for the same bytes: a
//!    model with squeezenet's input and output shapes that does no arithmetic (Flatten → Slice → Reshape),
//!    served the same way. Overhead = (served − raw − wire) / raw.
//! 2. **One gRPC hop** for 1 KiB, 1 MiB and 16 MiB activations: an `Identity` stage over a float tensor of
//!    that size; the tensor goes up and comes back, so every hop moves the payload twice. Alongside: what the
//!    agent reports as compute, and the in-process CPU cost of one direction's framing (split, prost
//!    encode + decode, reassemble) and of one plain copy of the payload, to show where the time goes.
//! 3. **Mutual TLS on the hop** (issue 10): the same hops on a second cluster whose control plane, agent and
//!    device have certificates from a fresh CA, interleaved with the plain ones; then a 1 KiB hop on a new
//!    connection each call (the handshake, both certificates verified).
//! 4. **Metrics** (issue 12): what an agent records for one served request that it forwards (the request
//!    counted by model, plan, stage and code; queue, compute, forward and request times; three byte
//!    counters), timed over many repetitions, against part 1's served squeezenet median from the same run;
//!    and the time to render a scrape.
//!
//! 5. **Tracing** (issue 12): the served squeezenet path (part 1's device SDK request) on three clusters in
//!    this process, each on a runtime of its own whose threads run under one subscriber: none at all, the
//!    binaries' subscriber with tracing off (logs only), and with tracing on (OpenTelemetry layer, every
//!    request sampled, exported over OTLP/gRPC to a real receiver, `cli/tests/otlp_receiver.py`, which
//!    writes every span to a file). Requests alternate between the three in rotating order.
//!
//! 6. **Dynamic batching** (issue 13): squeezenet pushed twice, without batching and with `max_batch` 16 and
//!    a 2 ms queue delay (the same stage bytes), served by one edge agent (a slot per core; its stages on
//!    tract, then on ONNX Runtime's CPU when the wheel is there, a session per slot), batching forced on
//!    (`--batch-always`: tract measures slower batched and would otherwise not batch) to 1, 4, 16 and 64 concurrent clients, each sending its
//!    next request as soon as the last is answered (the bare hop, as part 2), for a fixed window: throughput,
//!    p50 and p99 latency and the mean batch, the two models alternating at each client count.
//!    `cargo bench -p strata-edge-agent --bench serving -- batching` runs it alone.
//!
//! A real in-process cluster: the control plane on an embedded store, one edge agent, the device SDK. The
//! cluster profile gives the device 0.001 GFLOP/s and a 1 s cost per operator, so every model's best plan is
//! a single edge stage. The kinds of measurement are interleaved, in rotating order, so that drift in the
//! machine's speed and cache effects hit all of them alike.
//!
//! `cargo bench -p strata-edge-agent --bench serving` (needs `python3 corpus/fetch.py` for part 1). Under
//! `cargo test` it runs a few iterations of each as a smoke test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use strata_control_plane::{ControlPlane, Settings, server};
use strata_device_sdk::route::Constraints;
use strata_device_sdk::{Client, ClientConfig};
use strata_edge_agent::{Agent, AgentConfig};
use strata_planner::onnx::{self, proto};
use strata_proto::call::{self, chunks_of};
use strata_proto::transport::{Expect, Transport};
use strata_proto::v1;
use strata_runtime::{Backend, LoadedStage, TensorData, TractBackend};
use strata_trust::Role;
use tokio::net::TcpListener;
use tonic::transport::Channel;

#[path = "../tests/support/mod.rs"]
mod support;

use support::{model, node};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The cluster under test, in this process.
struct Bench {
    plane: Arc<ControlPlane>,
    client: Client,
    cp_channel: Channel,
    /// The device's transport (plain, or mutual TLS with a device certificate).
    device: Transport,
    _dir: tempfile::TempDir,
}

/// Transports for the control plane, the edge agent and the device: plain, or mutual TLS from a fresh CA.
fn transports(dir: &Path, tls: bool) -> [Transport; 3] {
    if !tls {
        return [Transport::Plain, Transport::Plain, Transport::Plain];
    }
    let ca = strata_trust::ca::Ca::generate("bench", Duration::from_secs(3600)).expect("CA");
    [
        ("cp", Role::Controller),
        ("bench-edge", Role::Node(strata_core::Tier::Edge)),
        ("device", Role::Device),
    ]
    .map(|(name, role)| {
        let identity = strata_trust::Identity::new(name, role).expect("identity");
        let issued = ca
            .issue(&identity, &[], Duration::from_secs(3600))
            .expect("issue");
        let out = dir.join("tls").join(name);
        strata_trust::ca::write_credentials(&out, ca.cert_pem(), &issued).expect("write");
        Transport::tls(strata_trust::TlsFiles::in_dir(&out)).expect("TLS material")
    })
}

/// A cluster whose edge agent runs its stages on tract.
async fn start(tls: bool) -> Bench {
    start_on(tls, strata_edge_agent::backend::Selected::tract()).await
}

/// [`start`] with the edge agent's stages on `backend`.
async fn start_on(tls: bool, backend: strata_edge_agent::backend::Selected) -> Bench {
    let dir = tempfile::tempdir().expect("temp dir");
    let [cp_transport, edge_transport, device] = transports(dir.path(), tls);
    let (state, blobs) =
        server::open_embedded(&dir.path().join("control-plane"), None).expect("stores");
    let mut settings = Settings::new(support::cluster(false));
    settings.transport = cp_transport;
    let plane = ControlPlane::new(state, blobs, settings);
    let cp_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cp_addr = cp_listener.local_addr().expect("address").to_string();
    tokio::spawn(server::serve(
        plane.clone(),
        cp_listener,
        std::future::pending::<()>(),
    ));

    let agent_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent_addr = agent_listener.local_addr().expect("address").to_string();
    let mut config = AgentConfig::new(
        strata_core::Tier::Edge,
        vec![cp_addr.clone()],
        agent_addr,
        dir.path().join("edge"),
    );
    config.name = "bench-edge".into();
    config.transport = edge_transport;
    config.backend = backend;
    // Part 6 measures batching whether or not it is faster here.
    config.batch_always = true;
    // Room for part 6's 64 clients.
    config.queue = config.queue.max(256);
    let agent = Agent::new(config).expect("agent");
    tokio::spawn(strata_edge_agent::serve(
        agent,
        agent_listener,
        std::future::pending::<()>(),
    ));

    let client = Client::new(ClientConfig {
        transport: device.clone(),
        ..ClientConfig::new(vec![cp_addr.clone()])
    })
    .expect("client");
    let cp_channel = call::channel(
        &cp_addr,
        Duration::from_millis(500),
        &device,
        Expect::Server,
    )
    .expect("channel");
    Bench {
        plane,
        client,
        cp_channel,
        device,
        _dir: dir,
    }
}

impl Bench {
    async fn push(&self, name: &str, bytes: Vec<u8>) {
        self.push_batched(name, bytes, None).await;
    }

    async fn push_batched(&self, name: &str, bytes: Vec<u8>, batching: Option<v1::Batching>) {
        let meta = v1::ModelMeta {
            name: name.to_string(),
            digest: strata_core::Digest::of(&bytes).to_string(),
            size_bytes: bytes.len() as u64,
            privacy: v1::Privacy::Open as i32,
            input_shapes: vec![],
            batching,
        };
        self.plane
            .push_model(meta, bytes.into())
            .await
            .unwrap_or_else(|e| panic!("push {name}: {e}"));
    }

    /// Waits until the SDK's chosen plan for `model` is a single edge stage with a ready agent. Until then it
    /// may be another: tables published before the agent registered hold only the device plan, and the
    /// features plan (device + edge) wins while the open plan's stage is still loading.
    async fn ready(&self, model: &str) -> Target {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(table) = self.client.routes(model).await
                && let Ok((plan, _)) = self.client.choose(model, &Constraints::default())
                && plan.stages.len() == 1
                && plan.stages[0].tier == v1::Tier::Edge as i32
                && !plan.stages[0].nodes.is_empty()
            {
                let stage = plan.stages[0].clone();
                let node = table
                    .nodes
                    .iter()
                    .find(|n| n.id == stage.nodes[0])
                    .expect("the stage's node is in the table");
                let channel = call::channel(
                    &node.address,
                    Duration::from_millis(500),
                    &self.device,
                    Expect::Node(strata_core::Tier::Edge),
                )
                .expect("channel");
                let header = v1::InferHeader {
                    model: model.to_string(),
                    version: table.version,
                    plan_id: plan.id.clone(),
                    stage: stage.index,
                    request_id: "bench".into(),
                };
                return Target {
                    model: model.to_string(),
                    stage,
                    header,
                    channel,
                    address: node.address.clone(),
                };
            }
            if Instant::now() > deadline {
                let plans = self.plane.plans(model).await;
                let routes = self.plane.route_table(model).await;
                let nodes = self.plane.nodes().await;
                panic!(
                    "model {model} was not served by a single edge stage within 180 s\nplans: {plans:?}\nroutes: {routes:?}\nnodes: {nodes:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A served model: where its one stage runs and how to call it directly.
#[derive(Clone)]
struct Target {
    model: String,
    stage: v1::Stage,
    header: v1::InferHeader,
    channel: Channel,
    /// The agent's address (for hops on a new connection).
    address: String,
}

/// One timed request.
struct Sample {
    total_ms: f64,
    /// What the agent reported as its compute time (tract, inside `spawn_blocking`).
    agent_compute_ms: f64,
}

impl Target {
    /// Device SDK path: `Client::infer` (route choice, input checks, framing, one hop).
    async fn sdk(&self, client: &Client, inputs: &HashMap<String, TensorData>) -> Sample {
        let started = Instant::now();
        let result = client
            .infer(&self.model, inputs.clone(), Constraints::default())
            .await
            .unwrap_or_else(|e| panic!("infer {}: {e}", self.model));
        let total_ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(result.fallbacks, 0, "no fallback expected");
        let agent_compute_ms = result.stages.iter().map(|s| s.compute_ms).sum();
        Sample {
            total_ms,
            agent_compute_ms,
        }
    }

    /// The bare hop: `strata_proto::call::infer` with chunks split once (as the SDK does for retries).
    async fn direct(&self, chunks: &[v1::TensorChunk]) -> Sample {
        let started = Instant::now();
        let hop = call::infer(
            self.channel.clone(),
            self.header.clone(),
            chunks,
            Some(TIMEOUT),
            strata_proto::MAX_REQUEST_TENSOR_BYTES,
        )
        .await
        .unwrap_or_else(|s| panic!("hop {}: {}", self.model, s.message()));
        let total_ms = started.elapsed().as_secs_f64() * 1e3;
        assert!(!hop.tensors.is_empty(), "the hop returned no tensor");
        Sample {
            total_ms,
            agent_compute_ms: hop.reports.iter().map(|r| r.compute_ms).sum(),
        }
    }
}

#[derive(Default)]
struct Series {
    total: Vec<f64>,
    compute: Vec<f64>,
}

impl Series {
    fn add(&mut self, s: Sample) {
        self.total.push(s.total_ms);
        self.compute.push(s.agent_compute_ms);
    }
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The q-quantile (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let v = sorted(v);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn median(v: &[f64]) -> f64 {
    let v = sorted(v);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn int64s(name: &str, values: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        data_type: Some(7),
        dims: vec![values.len() as i64],
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// `y = Identity(x)` over `[1, elements]` floats.
fn identity_model(elements: usize) -> Vec<u8> {
    model(
        "bench",
        vec![node("Identity", &["x"], "y")],
        vec![],
        onnx::tensor_value_info("x", 1, &[1, elements]),
        onnx::tensor_value_info("y", 1, &[1, elements]),
    )
}

/// A float model from `input` to `output` shapes that does no arithmetic: Flatten, keep the first elements,
/// Reshape. Its traffic is that of a model with these interfaces; its compute is a small copy.
fn wire_model(input: (&str, &[usize]), output: (&str, &[usize])) -> Vec<u8> {
    let n_in: usize = input.1.iter().product();
    let n_out: usize = output.1.iter().product();
    assert!(
        n_out <= n_in,
        "the output must not be larger than the input"
    );
    let shape: Vec<i64> = output.1.iter().map(|&d| d as i64).collect();
    model(
        "bench",
        vec![
            node("Reshape", &[input.0, "flat_shape"], "flat"),
            node("Slice", &["flat", "starts", "ends", "axes"], "kept"),
            node("Reshape", &["kept", "out_shape"], output.0),
        ],
        vec![
            int64s("flat_shape", &[1, n_in as i64]),
            int64s("starts", &[0]),
            int64s("ends", &[n_out as i64]),
            int64s("axes", &[1]),
            int64s("out_shape", &shape),
        ],
        onnx::tensor_value_info(input.0, 1, input.1),
        onnx::tensor_value_info(output.0, 1, output.1),
    )
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Part 1: squeezenet served versus raw tract.
/// Part 1; returns the device SDK's served median, ms (`None` without the corpus).
async fn overhead(bench: &Bench, iterations: usize) -> Option<f64> {
    let model_path = root().join("corpus/models/squeezenet.onnx");
    if !model_path.exists() {
        println!(
            "agent overhead: skipped, {} is missing (run `python3 corpus/fetch.py`)",
            model_path.display()
        );
        return None;
    }
    let bytes = std::fs::read(&model_path).expect("read squeezenet");
    bench.push("squeezenet", bytes).await;
    let served = bench.ready("squeezenet").await;
    assert_eq!(served.stage.inputs, ["data_0"], "squeezenet's input");

    // The very stage bytes the agent runs, from the control plane's blob store.
    let digest: strata_core::Digest = served.stage.digest.parse().expect("a digest");
    let stage_bytes = call::fetch_blob(bench.cp_channel.clone(), &digest)
        .await
        .expect("fetch the stage blob");
    let raw: Arc<dyn LoadedStage> = TractBackend
        .load(&stage_bytes, &HashMap::new())
        .expect("tract loads the stage")
        .into();
    let npy = root().join("corpus/models/squeezenet.inputs/data_0.npy");
    let input = strata_runtime::npy::decode(&std::fs::read(&npy).expect("read the sample input"))
        .expect("decode the sample input");
    let inputs: HashMap<String, TensorData> = [("data_0".to_string(), input.clone())].into();
    let outputs = raw.run(&inputs).expect("raw run");
    let (out_name, out) = outputs.iter().next().expect("one output");
    let wire_bytes = wire_model(
        ("data_0", input.shape.as_slice()),
        (out_name, out.shape.as_slice()),
    );
    bench.push("squeezenet_wire", wire_bytes).await;
    let wire = bench.ready("squeezenet_wire").await;
    let chunks = chunks_of(vec![("data_0".to_string(), input.clone())]);

    let (mut raw_ms, mut sdk, mut direct, mut wire_sdk, mut wire_direct) = (
        Vec::new(),
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    // Each iteration runs all five, starting with a different one each time: whatever ran just before (and
    // so what is in the caches) must not favour one kind.
    let warmup = 5.min(iterations);
    for i in 0..warmup + iterations {
        let (mut r, mut s, mut d, mut ws, mut wd) = (0.0, None, None, None, None);
        for k in 0..5 {
            match (i + k) % 5 {
                0 => {
                    let started = Instant::now();
                    let out = raw.run(&inputs).expect("raw run");
                    r = started.elapsed().as_secs_f64() * 1e3;
                    drop(out);
                }
                1 => s = Some(served.sdk(&bench.client, &inputs).await),
                2 => d = Some(served.direct(&chunks).await),
                3 => ws = Some(wire.sdk(&bench.client, &inputs).await),
                _ => wd = Some(wire.direct(&chunks).await),
            }
        }
        if i >= warmup {
            raw_ms.push(r);
            for (series, sample) in [
                (&mut sdk, s),
                (&mut direct, d),
                (&mut wire_sdk, ws),
                (&mut wire_direct, wd),
            ] {
                series.add(sample.expect("measured"));
            }
        }
    }
    let raw_med = median(&raw_ms);
    println!(
        "\n## agent overhead: squeezenet, one edge stage ({} iterations, input {} B, output {} B)",
        iterations,
        input.data.len(),
        out.data.len()
    );
    println!(
        "| path | served median ms | p99 ms | agent compute median ms | wire-only median ms | overhead vs raw |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| raw tract (this process) | {raw_med:.2} | {:.2} | — | — | — |",
        quantile(&raw_ms, 0.99)
    );
    for (label, s, w) in [
        ("device SDK `Client::infer`", &sdk, &wire_sdk),
        ("bare hop `call::infer`", &direct, &wire_direct),
    ] {
        let served_med = median(&s.total);
        let wire_med = median(&w.total);
        // The same ratio per iteration (its raw, served and wire runs were back to back), then the median:
        // less sensitive to the machine's speed drifting during the run (on this VM, by up to 30 %).
        let paired: Vec<f64> = (0..raw_ms.len())
            .map(|i| (s.total[i] - raw_ms[i] - w.total[i]) / raw_ms[i] * 100.0)
            .collect();
        println!(
            "| {label} | {served_med:.2} | {:.2} | {:.2} | {wire_med:.2} (agent compute {:.3}) | {:+.1} % (paired {:+.1} %) |",
            quantile(&s.total, 0.99),
            median(&s.compute),
            median(&w.compute),
            (served_med - raw_med - wire_med) / raw_med * 100.0,
            median(&paired)
        );
    }
    println!(
        "agent compute / raw tract (medians): {:.3}",
        median(&sdk.compute) / raw_med
    );
    Some(median(&sdk.total))
}

/// Part 4: the cost of recording one served, forwarded request's metrics, and of a scrape.
fn metrics_cost(served_ms: Option<f64>, repetitions: usize) {
    use strata_edge_agent::metrics::{AgentMetrics, RequestLabels};
    let metrics = AgentMetrics::new(strata_core::Tier::Edge, "tract").expect("metrics");
    let labels = RequestLabels {
        model: "squeezenet".to_string(),
        plan: "p3".to_string(),
        stage: "1".to_string(),
    };
    let record = |i: usize| {
        let ms = (i % 7) as f64 + 0.5;
        metrics.bytes(&labels.model, "received", 602_112);
        metrics.ran(&labels, ms * 0.01, ms);
        metrics.forwarded(&labels.model, 2, ms);
        metrics.bytes(&labels.model, "forwarded", 401_408);
        metrics.bytes(&labels.model, "answered", 4_000);
        metrics.finished(
            Some(&labels),
            tonic::Code::Ok,
            Duration::from_secs_f64(ms * 2e-3),
        );
    };
    for i in 0..1000.min(repetitions) {
        record(i);
    }
    let mut per_request_ns = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for i in 0..repetitions {
            record(i);
        }
        per_request_ns.push(started.elapsed().as_secs_f64() * 1e9 / repetitions as f64);
    }
    let recording_ns = median(&per_request_ns);
    let mut render_ms = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (text, _) = strata_proto::metrics::render(metrics.registry());
        render_ms.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(!text.is_empty());
    }
    println!(
        "\n## metrics: recording one served, forwarded request ({repetitions} repetitions × 5)"
    );
    println!(
        "| recording, ns per request (median of 5) | served squeezenet median, ms (part 1) | share | render a scrape, ms |"
    );
    println!("|---:|---:|---:|---:|");
    match served_ms {
        Some(served) => println!(
            "| {recording_ns:.0} | {served:.2} | {:.4} % | {:.3} |",
            recording_ns / (served * 1e6) * 100.0,
            median(&render_ms)
        ),
        None => println!("| {recording_ns:.0} | — | — | {:.3} |", median(&render_ms)),
    }
}

/// Part 2: one hop for each activation size.
async fn hops(bench: &Bench, iterations: &[(usize, usize)]) {
    for &(bytes, _) in iterations {
        bench
            .push(&format!("hop_{bytes}"), identity_model(bytes / 4))
            .await;
    }
    println!("\n## one gRPC hop (Identity stage; the payload goes up and comes back)");
    println!(
        "| payload | iterations | p50 ms | p99 ms | MB/s (2 × payload / p50) | agent compute p50 ms | SDK `Client::infer` p50 ms | framing one way p50 ms | one memcpy p50 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &(bytes, n) in iterations {
        let target = bench.ready(&format!("hop_{bytes}")).await;
        let values = vec![0.5f32; bytes / 4];
        let tensor = TensorData::from_f32(vec![1, bytes / 4], &values).expect("tensor");
        let inputs: HashMap<String, TensorData> = [("x".to_string(), tensor.clone())].into();
        let chunks = chunks_of(vec![("x".to_string(), tensor)]);
        let (mut direct, mut sdk) = (Series::default(), Series::default());
        let warmup = 10.min(n);
        for i in 0..warmup + n {
            let d = target.direct(&chunks).await;
            let s = target.sdk(&bench.client, &inputs).await;
            if i >= warmup {
                direct.add(d);
                sdk.add(s);
            }
        }
        let (framing_ms, copy_ms) = framing(&inputs["x"], n.min(50));
        let p50 = quantile(&direct.total, 0.5);
        println!(
            "| {} | {n} | {p50:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {framing_ms:.3} | {copy_ms:.3} |",
            label(bytes),
            quantile(&direct.total, 0.99),
            2.0 * bytes as f64 / 1e6 / (p50 / 1e3),
            quantile(&direct.compute, 0.5),
            quantile(&sdk.total, 0.5),
        );
    }
}

/// The CPU cost of one direction of a hop without the network, in this process: split the tensor into
/// chunks, encode every `InferRequest` frame with prost, decode it, reassemble (what tonic's codec and the
/// receiver's `TensorAssembler` do; h2 framing and the kernel's copies come on top). Also the median time of
/// one plain copy of the payload (`TensorData::clone`), which the framing figure includes once.
/// What mutual TLS costs one hop: the same Identity hops on a plain and an mTLS cluster, interleaved (a
/// plain hop, then a TLS one, each iteration), on warm connections; then a 1 KiB hop on a new connection
/// every time (TCP connect, and under TLS the handshake with both certificates verified).
async fn tls_cost(plain: &Bench, tls: &Bench, iterations: &[(usize, usize)], cold: usize) {
    println!("\n## mutual TLS on one hop (the same Identity hop, plain vs mTLS; p50/p99 ms)");
    println!(
        "| payload | iterations | plain p50 | plain p99 | mTLS p50 | mTLS p99 | mTLS / plain (p50) | paired median ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    // The targets are found before any hop: once a client has learnt how fast this machine is, it may
    // rightly prefer running a tiny model on the device (and `ready` waits for an edge plan).
    let mut targets = Vec::new();
    for &(bytes, _) in iterations {
        let name = format!("hop_{bytes}");
        plain.push(&name, identity_model(bytes / 4)).await;
        tls.push(&name, identity_model(bytes / 4)).await;
        targets.push((plain.ready(&name).await, tls.ready(&name).await));
    }
    let mut kib = None;
    for (&(bytes, n), (a, b)) in iterations.iter().zip(targets) {
        if bytes == 1 << 10 {
            kib = Some((a.clone(), b.clone()));
        }
        let values = vec![0.5f32; bytes / 4];
        let tensor = TensorData::from_f32(vec![1, bytes / 4], &values).expect("tensor");
        let chunks = chunks_of(vec![("x".to_string(), tensor)]);
        let (mut p, mut t) = (Vec::new(), Vec::new());
        let warmup = 10.min(n);
        for i in 0..warmup + n {
            let (x, y) = if i % 2 == 0 {
                let x = a.direct(&chunks).await;
                (x, b.direct(&chunks).await)
            } else {
                let y = b.direct(&chunks).await;
                (a.direct(&chunks).await, y)
            };
            if i >= warmup {
                p.push(x.total_ms);
                t.push(y.total_ms);
            }
        }
        let paired: Vec<f64> = p.iter().zip(&t).map(|(x, y)| y / x).collect();
        println!(
            "| {} | {n} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            label(bytes),
            quantile(&p, 0.5),
            quantile(&p, 0.99),
            quantile(&t, 0.5),
            quantile(&t, 0.99),
            quantile(&t, 0.5) / quantile(&p, 0.5),
            median(&paired),
        );
    }
    // Cold: a new channel per call.
    let Some((a, b)) = kib else {
        return;
    };
    let tensor = TensorData::from_f32(vec![1, 256], &[0.5f32; 256]).expect("tensor");
    let chunks = chunks_of(vec![("x".to_string(), tensor)]);
    let cold_hop = |target: &Target, transport: &Transport| {
        let mut target = target.clone();
        target.channel = call::channel(
            &target.address,
            Duration::from_millis(500),
            transport,
            Expect::Node(strata_core::Tier::Edge),
        )
        .expect("channel");
        target
    };
    let (mut p, mut t) = (Vec::new(), Vec::new());
    for _ in 0..cold.max(1) {
        p.push(cold_hop(&a, &plain.device).direct(&chunks).await.total_ms);
        t.push(cold_hop(&b, &tls.device).direct(&chunks).await.total_ms);
    }
    println!(
        "| 1 KiB, new connection each call | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | — |",
        cold.max(1),
        quantile(&p, 0.5),
        quantile(&p, 0.99),
        quantile(&t, 0.5),
        quantile(&t, 0.99),
        quantile(&t, 0.5) / quantile(&p, 0.5),
    );
    println!(
        "handshake cost (cold mTLS p50 − cold plain p50): {:.3} ms",
        quantile(&t, 0.5) - quantile(&p, 0.5)
    );
}

fn framing(tensor: &TensorData, iterations: usize) -> (f64, f64) {
    let (mut framing, mut copy) = (Vec::new(), Vec::new());
    for _ in 0..iterations.max(1) {
        let started = Instant::now();
        let t = tensor.clone();
        copy.push(started.elapsed().as_secs_f64() * 1e3);
        let mut assembler = strata_proto::TensorAssembler::new(u64::MAX);
        for chunk in chunks_of(vec![("x".to_string(), t)]) {
            let encoded = v1::InferRequest {
                frame: Some(v1::infer_request::Frame::Tensor(chunk)),
            }
            .encode_to_vec();
            let decoded = v1::InferRequest::decode(bytes::Bytes::from(encoded)).expect("decodes");
            if let Some(v1::infer_request::Frame::Tensor(chunk)) = decoded.frame {
                assembler.push(chunk).expect("valid chunk");
            }
        }
        let out = assembler.finish().expect("complete");
        framing.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out[0].1.data.len(), tensor.data.len());
    }
    (median(&framing), median(&copy))
}

fn label(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Part 5: the served squeezenet path with no subscriber, with tracing off, and with tracing on.
fn tracing_cost(iterations: usize) {
    use std::io::BufRead;
    use strata_proto::logging::{self, Export, Telemetry};

    let model_path = root().join("corpus/models/squeezenet.onnx");
    if !model_path.exists() {
        println!("tracing: skipped, {} is missing", model_path.display());
        return;
    }
    let bytes = std::fs::read(&model_path).expect("read squeezenet");
    let npy = root().join("corpus/models/squeezenet.inputs/data_0.npy");
    let input = strata_runtime::npy::decode(&std::fs::read(&npy).expect("read the sample input"))
        .expect("decode the sample input");
    let inputs: HashMap<String, TensorData> = [("data_0".to_string(), input)].into();

    // The receiver: a real OTLP/gRPC server on the official protobufs, in its own process.
    let dir = tempfile::tempdir().expect("temp dir");
    let spans_file = dir.path().join("spans.jsonl");
    let venv = root().join(".venv/bin/python3");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let mut receiver = std::process::Command::new(python)
        .arg(root().join("cli/tests/otlp_receiver.py"))
        .arg("--out")
        .arg(&spans_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the OTLP receiver (cli/tests/otlp_receiver.py; scripts/setup.sh installs its packages)");
    let mut line = String::new();
    std::io::BufReader::new(receiver.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the receiver's first line");
    let port = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let endpoint = format!("http://127.0.0.1:{port}");

    struct Setup {
        label: &'static str,
        exporting: bool,
        dispatch: tracing::Dispatch,
        runtime: tokio::runtime::Runtime,
        bench: Bench,
        served: Target,
        telemetry: Telemetry,
    }
    let configs = [
        ("no subscriber", None),
        ("tracing off (logs only)", Some(Export::Nothing)),
        (
            "tracing on (OTLP/gRPC, every request sampled)",
            Some(Export::Otlp {
                endpoint: Some(endpoint),
            }),
        ),
    ];
    let mut setups: Vec<Setup> = configs
        .into_iter()
        .map(|(label, export)| {
            let exporting = matches!(export, Some(Export::Otlp { .. }));
            let (dispatch, telemetry) = match export {
                None => (tracing::Dispatch::none(), Telemetry::default()),
                Some(export) => {
                    let (d, t, failed) =
                        logging::subscriber("strata-bench", "error", std::io::sink, export);
                    assert!(failed.is_none(), "{label}: {failed:?}");
                    (d, t)
                }
            };
            let on_threads = dispatch.clone();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_start(move || {
                    // For the thread's life: every task of this cluster runs under this subscriber.
                    std::mem::forget(tracing::dispatcher::set_default(&on_threads));
                })
                .build()
                .expect("tokio runtime");
            strata_proto::trace::set_exporting(exporting);
            let (bench, served) = tracing::dispatcher::with_default(&dispatch, || {
                runtime.block_on(async {
                    let bench = start(false).await;
                    bench.push("squeezenet", bytes.clone()).await;
                    let served = bench.ready("squeezenet").await;
                    (bench, served)
                })
            });
            Setup {
                label,
                exporting,
                dispatch,
                runtime,
                bench,
                served,
                telemetry,
            }
        })
        .collect();

    let warmup = 5.min(iterations);
    let mut series: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for i in 0..warmup + iterations {
        for k in 0..setups.len() {
            let c = (i + k) % setups.len();
            let setup = &setups[c];
            strata_proto::trace::set_exporting(setup.exporting);
            let sample = tracing::dispatcher::with_default(&setup.dispatch, || {
                setup
                    .runtime
                    .block_on(setup.served.sdk(&setup.bench.client, &inputs))
            });
            if i >= warmup {
                series[c].push(sample.total_ms);
            }
        }
    }
    strata_proto::trace::set_exporting(false);
    // Flush the exporter, then count what the receiver got.
    for setup in &mut setups {
        drop(std::mem::take(&mut setup.telemetry));
    }
    let count = || {
        let text = std::fs::read_to_string(&spans_file).unwrap_or_default();
        let roots = text
            .lines()
            .filter(|l| l.contains("\"name\": \"infer\""))
            .count();
        (text.lines().count(), roots)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = count();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let again = count();
        if again == received && received.0 > 0 {
            break;
        }
        received = again;
    }
    let _ = receiver.kill();
    let _ = receiver.wait();

    println!(
        "\n## tracing: squeezenet served through the device SDK ({iterations} requests each, interleaved)"
    );
    println!(
        "| subscriber | median ms | mean ms | p99 ms | median / no subscriber | paired median ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let base = &series[0];
    for (setup, s) in setups.iter().zip(&series) {
        let paired: Vec<f64> = s.iter().zip(base).map(|(x, b)| x / b).collect();
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.4} | {:.4} |",
            setup.label,
            median(s),
            s.iter().sum::<f64>() / s.len().max(1) as f64,
            quantile(s, 0.99),
            median(s) / median(base),
            median(&paired)
        );
    }
    println!(
        "the OTLP receiver got {} request traces (one per traced request, warm-up included: {}) and {} spans \
         in all (the requests', and the traced cluster's background work: heartbeats, reconcile passes, \
         store calls)",
        received.1,
        warmup + iterations,
        received.0
    );
    for setup in setups {
        setup.runtime.shutdown_background();
    }
}

/// One client count's run: requests answered per second, latency quantiles and the mean batch.
struct Load {
    per_s: f64,
    p50: f64,
    p99: f64,
    batch: f64,
}

/// `clients` concurrent clients send requests to `target` back to back for `window`.
async fn load(
    target: &Target,
    chunks: &Arc<Vec<v1::TensorChunk>>,
    clients: usize,
    window: Duration,
) -> Load {
    let started = Instant::now();
    let stop = started + window;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (target, chunks) = (target.clone(), chunks.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < stop {
                    let t0 = Instant::now();
                    let hop = call::infer(
                        target.channel.clone(),
                        target.header.clone(),
                        &chunks,
                        Some(TIMEOUT),
                        strata_proto::MAX_REQUEST_TENSOR_BYTES,
                    )
                    .await
                    .unwrap_or_else(|s| panic!("hop {}: {}", target.model, s.message()));
                    let batch = hop
                        .reports
                        .iter()
                        .map(|r| r.batch.max(1))
                        .max()
                        .unwrap_or(1);
                    samples.push((t0.elapsed().as_secs_f64() * 1e3, f64::from(batch)));
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let latency: Vec<f64> = samples.iter().map(|s| s.0).collect();
    Load {
        per_s: samples.len() as f64 / elapsed,
        p50: quantile(&latency, 0.5),
        p99: quantile(&latency, 0.99),
        batch: samples.iter().map(|s| s.1).sum::<f64>() / samples.len().max(1) as f64,
    }
}

/// Part 6: served throughput and latency with and without dynamic batching.
async fn batching(window: Duration) {
    let model_path = root().join("corpus/models/squeezenet.onnx");
    let Ok(bytes) = std::fs::read(&model_path) else {
        println!("batching: skipped, {} is missing", model_path.display());
        return;
    };
    let npy = root().join("corpus/models/squeezenet.inputs/data_0.npy");
    let input = strata_runtime::npy::decode(&std::fs::read(&npy).expect("read the sample input"))
        .expect("decode the sample input");
    let chunks = Arc::new(chunks_of(vec![("data_0".to_string(), input)]));
    let mut backends = vec![strata_edge_agent::backend::Selected::tract()];
    match strata_edge_agent::backend::select(
        strata_edge_agent::backend::BackendChoice::Ort(strata_runtime::ExecutionProvider::Cpu),
        // The agent's defaults: a session per slot (a slot per core), one thread each.
        strata_edge_agent::backend::OrtSettings::for_slots(
            strata_edge_agent::agent::cores(),
            strata_edge_agent::agent::cores(),
        ),
    ) {
        Ok(ort) => backends.push(ort),
        Err(e) => println!("batching on ONNX Runtime: skipped: {e}"),
    }
    println!(
        "\n## Dynamic batching: squeezenet, one edge agent with {} slots, max_batch 16, 2 ms delay\n",
        strata_edge_agent::agent::cores()
    );
    println!(
        "| backend | clients | unbatched req/s | batched req/s | throughput ratio | unbatched p50 / p99 ms | batched p50 / p99 ms | batched p99 ÷ unbatched p50 | mean batch |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for backend in backends {
        let name = backend.backend.name();
        let bench = start_on(false, backend).await;
        bench.push("plain", bytes.clone()).await;
        bench
            .push_batched(
                "batched",
                bytes.clone(),
                Some(v1::Batching {
                    max_batch: 16,
                    max_queue_delay_us: 2000,
                }),
            )
            .await;
        let plain = bench.ready("plain").await;
        let batched = bench.ready("batched").await;
        // Warm both, and let the agent build and check the batched stage.
        load(&plain, &chunks, 4, Duration::from_millis(500)).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while load(&batched, &chunks, 4, Duration::from_millis(300))
            .await
            .batch
            <= 1.0
        {
            assert!(Instant::now() < deadline, "the batched stage never batched");
        }
        for (i, clients) in [1usize, 4, 16, 64].into_iter().enumerate() {
            let (p, b) = if i % 2 == 0 {
                let p = load(&plain, &chunks, clients, window).await;
                (p, load(&batched, &chunks, clients, window).await)
            } else {
                let b = load(&batched, &chunks, clients, window).await;
                (load(&plain, &chunks, clients, window).await, b)
            };
            println!(
                "| {name} | {clients} | {:.1} | {:.1} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} | {:.1} |",
                p.per_s,
                b.per_s,
                b.per_s / p.per_s,
                p.p50,
                p.p99,
                b.p50,
                b.p99,
                b.p99 / p.p50,
                b.batch
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) is a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    // `cargo bench -p strata-edge-agent --bench serving -- tracing`: part 5 alone.
    let only_tracing = std::env::args().any(|a| a == "tracing");
    // `-- batching`: part 6 alone.
    let only_batching = std::env::args().any(|a| a == "batching");
    // Quiet unless asked (`STRATA_LOG=info`): logging is not what is measured.
    let _telemetry = strata_proto::logging::init("strata-bench", "error");
    let started = Instant::now();
    if !only_tracing {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(batching(if full {
            Duration::from_secs(4)
        } else {
            Duration::from_millis(200)
        }));
        runtime.shutdown_background();
    }
    if only_batching {
        return;
    }
    if !only_tracing {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            let (overhead_iterations, hop_iterations) = if full {
                (60, vec![(1 << 10, 2000), (1 << 20, 400), (16 << 20, 60)])
            } else {
                (2, vec![(1 << 10, 3), (1 << 20, 2), (16 << 20, 1)])
            };
            let bench = start(false).await;
            let served_ms = overhead(&bench, overhead_iterations).await;
            hops(&bench, &hop_iterations).await;
            // Two fresh clusters, plain and mutual TLS, neither of whose clients has learnt anything yet.
            let (plain, secured) = (start(false).await, start(true).await);
            tls_cost(
                &plain,
                &secured,
                &hop_iterations,
                if full { 200 } else { 2 },
            )
            .await;
            metrics_cost(served_ms, if full { 200_000 } else { 10 });
        });
        runtime.shutdown_background();
    }
    // Its clusters run on runtimes of their own, outside the one above.
    tracing_cost(if full { 300 } else { 2 });
    println!(
        "\n(machine: {} cores; whole bench {:.1} s)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
}
