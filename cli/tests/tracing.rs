//! OpenTelemetry tracing, checked with a real OTLP receiver (`otlp_receiver.py`: a gRPC server on the official
//! OTLP protobufs) and real processes: one `strata infer` (the device) through an edge agent and a cloud agent
//! (mutual TLS between them) is exactly one trace, whose spans come from the three processes with correct
//! parent links and Strata's attributes; the control plane's planning is traced too; and with tracing switched
//! off the standard way, nothing is sent.

mod sandbox;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sandbox::{Proc, Sandbox, corpus, root, strata_bin};
use strata_proto::v1;

/// One span as the receiver wrote it.
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    kind: i64,
    service: String,
    instance: String,
    start_ns: u64,
    end_ns: u64,
    attributes: serde_json::Map<String, serde_json::Value>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&serde_json::Value> {
        self.attributes.get(key)
    }

    fn text(&self, key: &str) -> String {
        match self.attribute(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    }

    fn number(&self, key: &str) -> f64 {
        match self.attribute(key) {
            Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            other => panic!("span {} has no number {key}: {other:?}", self.name),
        }
    }
}

/// The receiver, and the file it appends spans to.
struct Receiver {
    _proc: Proc,
    spans: PathBuf,
    endpoint: String,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let python = root().join(".venv/bin/python3");
        let python = if python.exists() {
            python
        } else {
            PathBuf::from("python3")
        };
        let spans = dir.join("spans.jsonl");
        let mut cmd = Command::new(python);
        cmd.arg(root().join("cli/tests/otlp_receiver.py"))
            .arg("--out")
            .arg(&spans);
        let proc = Proc::spawn("otlp-receiver", cmd, &dir.join("otlp-receiver.log"));
        let line = proc.wait_line("listening on", Duration::from_secs(30));
        let port = line.trim().rsplit(' ').next().expect("a port").to_string();
        Receiver {
            _proc: proc,
            spans,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    fn spans(&self) -> Vec<Span> {
        let text = std::fs::read_to_string(&self.spans).unwrap_or_default();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("a JSON span");
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                Span {
                    trace: s("trace_id"),
                    id: s("span_id"),
                    parent: s("parent_span_id"),
                    name: s("name"),
                    kind: v["kind"].as_i64().unwrap_or(-1),
                    service: s("service"),
                    instance: s("instance"),
                    start_ns: v["start_ns"].as_u64().unwrap_or_default(),
                    end_ns: v["end_ns"].as_u64().unwrap_or_default(),
                    attributes: v["attributes"].as_object().cloned().unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// The trace as an indented tree (for the test's output and docs/observability.md): each span's name, its
/// process, its duration and the attributes that say what it did.
fn render(spans: &[Span]) -> String {
    fn walk(spans: &[Span], parent: &str, depth: usize, out: &mut String) {
        let mut children: Vec<&Span> = spans.iter().filter(|s| s.parent == parent).collect();
        children.sort_by_key(|s| s.start_ns);
        for s in children {
            let keys = [
                "model",
                "plan",
                "stage",
                "tier",
                "node",
                "bytes_in",
                "bytes_out",
                "bytes_up",
                "bytes_down",
                "predicted_ms",
                "measured_ms",
                "queue_ms",
                "compute_ms",
            ];
            let attributes: Vec<String> = keys
                .iter()
                .filter_map(|k| {
                    s.attribute(k).map(|v| match v {
                        serde_json::Value::Number(n) if n.is_f64() => {
                            format!("{k}={:.2}", n.as_f64().unwrap_or(f64::NAN))
                        }
                        serde_json::Value::String(t) => format!("{k}={t}"),
                        other => format!("{k}={other}"),
                    })
                })
                .collect();
            out.push_str(&format!(
                "{}{} [{} {}] {:.2} ms  {}\n",
                "  ".repeat(depth),
                s.name,
                s.service,
                s.instance.rsplit('-').next().unwrap_or_default(),
                s.end_ns.saturating_sub(s.start_ns) as f64 / 1e6,
                attributes.join(" ")
            ));
            walk(spans, &s.id, depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(spans, "", 0, &mut out);
    out
}

/// `strata infer` of squeezenet on `plan` as a device with `env`; its outputs go to `out`.
fn infer_as_device(sandbox: &Sandbox, plan: &str, out: &Path, env: &[(&str, &str)]) {
    let mut cmd = Command::new(strata_bin());
    if let Some(dir) = sandbox.device_tls() {
        cmd.env("STRATA_TLS_DIR", dir);
    }
    let input = format!(
        "data_0={}",
        corpus("squeezenet.inputs/data_0.npy").display()
    );
    let output = cmd
        .args(["infer", "squeezenet", "--endpoint", &sandbox.cp_address])
        .args(["--input", &input, "--plan", plan, "--output-dir"])
        .arg(out)
        .env("STRATA_LOG", "off")
        .env("STRATA_CACHE_DIR", out.with_file_name("stage-cache"))
        .envs(env.iter().copied())
        .output()
        .expect("strata infer runs");
    assert!(
        output.status.success(),
        "strata infer: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The device → edge → cloud plan of squeezenet (raw inputs stay on the device).
fn three_tier_plan(sandbox: &Sandbox) -> String {
    let table = sandbox.wait_served("squeezenet", 1);
    table
        .plans
        .iter()
        .find(|p| p.stages.len() == 3 && p.satisfies.contains(&(v1::Privacy::Features as i32)))
        .unwrap_or_else(|| panic!("no device, edge, cloud plan: {table:?}"))
        .id
        .clone()
}

fn environment(
    endpoint: &str,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        // Export within 100 ms instead of 5 s, so that the test waits for spans briefly.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn one_request_through_device_edge_and_cloud_is_one_trace_with_strata_attributes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start(dir.path());
    let env = environment(&receiver.endpoint, &[]);
    let mut sandbox = Sandbox::start_with_env(&["edge", "cloud"], 3000, &pairs(&env));
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let plan = three_tier_plan(&sandbox);
    infer_as_device(&sandbox, &plan, &dir.path().join("out"), &pairs(&env));

    // The device's root span arrives when `strata infer` exits (it flushes); the agents' within 100 ms.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (trace, spans) = loop {
        let all = receiver.spans();
        let root = all
            .iter()
            .find(|s| s.service == "strata" && s.name == "infer" && s.parent.is_empty());
        if let Some(root) = root {
            let trace: Vec<Span> = all
                .iter()
                .filter(|s| s.trace == root.trace)
                .cloned()
                .collect();
            let agent_stages = trace
                .iter()
                .filter(|s| s.service == "strata-edge-agent" && s.name.starts_with("stage "))
                .count();
            if agent_stages == 2 {
                break (root.trace.clone(), trace);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace within 20 s; received: {:#?}\nlogs: {}",
            all.iter()
                .map(|s| (&s.service, &s.name, &s.trace))
                .collect::<Vec<_>>(),
            sandbox.log_tails(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    eprintln!("{}", render(&spans));

    // Three processes: the device, and two instances of the agent.
    let instances: BTreeSet<(&str, &str)> = spans
        .iter()
        .map(|s| (s.service.as_str(), s.instance.as_str()))
        .collect();
    assert_eq!(instances.len(), 3, "{instances:?}");
    assert_eq!(
        instances
            .iter()
            .filter(|(s, _)| *s == "strata-edge-agent")
            .count(),
        2,
        "{instances:?}"
    );

    // Every parent is in the trace; exactly one root.
    let by_id: BTreeMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    assert_eq!(by_id.len(), spans.len(), "span ids are unique");
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    for s in &spans {
        if !s.parent.is_empty() {
            assert!(
                by_id.contains_key(s.parent.as_str()),
                "{} ({}) has a parent outside the trace",
                s.name,
                s.service
            );
        }
    }
    let parent_of = |s: &Span| -> &Span { by_id[s.parent.as_str()] };
    let find = |pred: &dyn Fn(&Span) -> bool, what: &str| -> &Span {
        let found: Vec<&Span> = spans.iter().filter(|s| pred(s)).collect();
        assert_eq!(found.len(), 1, "{what}: {found:#?}");
        found[0]
    };

    // The device: the request, its stage, and its hop to the edge.
    let root = roots[0];
    assert_eq!(root.text("model"), "squeezenet");
    assert_eq!(root.text("plan"), plan);
    assert_eq!(root.text("tier"), "device");
    assert!(root.number("version") >= 1.0);
    assert!(root.number("predicted_ms") > 0.0 && root.number("measured_ms") > 0.0);
    let device_stage = find(
        &|s| s.service == "strata" && s.name == "stage 0",
        "the device stage",
    );
    assert_eq!(parent_of(device_stage).id, root.id);
    assert_eq!(device_stage.text("tier"), "device");
    assert!(device_stage.number("measured_ms") > 0.0);
    assert!(device_stage.number("predicted_ms") > 0.0);
    let to_edge = find(
        &|s| s.service == "strata" && s.name == "hop to stage 1",
        "the device's hop",
    );
    assert_eq!(to_edge.kind, 3, "a client span");
    assert_eq!(parent_of(to_edge).id, root.id);
    assert!(to_edge.number("bytes_up") > 0.0 && to_edge.number("bytes_down") > 0.0);
    assert_eq!(to_edge.text("tier"), "edge");

    // Each agent: the RPC (a server span under the caller's hop), the stage, its queue wait and compute.
    for (index, tier, caller) in [(1, "edge", to_edge.id.clone()), (2, "cloud", String::new())] {
        let stage = find(
            &|s| s.service == "strata-edge-agent" && s.name == format!("stage {index}"),
            &format!("the {tier} stage"),
        );
        let rpc = parent_of(stage);
        assert_eq!(rpc.kind, 2, "a server span: {rpc:?}");
        assert_eq!(rpc.name, "strata.v1.Inference/Infer");
        assert_eq!(
            rpc.instance, stage.instance,
            "the RPC and its stage in one process"
        );
        let hop = parent_of(rpc);
        if caller.is_empty() {
            // The cloud's caller is the edge agent's hop.
            assert_eq!(hop.name, "hop to stage 2");
            assert_eq!(hop.text("tier"), "cloud");
            let edge_stage = parent_of(hop);
            assert_eq!(edge_stage.name, "stage 1");
            assert_ne!(
                hop.instance, stage.instance,
                "the hop leaves the edge process"
            );
        } else {
            assert_eq!(hop.id, caller);
        }
        assert_eq!(stage.text("tier"), tier);
        assert_eq!(stage.text("model"), "squeezenet");
        assert_eq!(stage.text("plan"), plan);
        assert!(stage.text("node").starts_with(tier), "{stage:?}");
        for key in [
            "bytes_in",
            "bytes_out",
            "queue_ms",
            "compute_ms",
            "predicted_ms",
            "version",
        ] {
            assert!(stage.number(key) >= 0.0, "{key} of {stage:?}");
        }
        assert!(stage.number("bytes_in") > 0.0 && stage.number("bytes_out") > 0.0);
        for child in ["queue", "compute"] {
            let c = spans
                .iter()
                .find(|s| s.name == child && s.parent == stage.id)
                .unwrap_or_else(|| panic!("no {child} span under the {tier} stage"));
            assert_eq!(c.instance, stage.instance);
        }
        let compute = spans
            .iter()
            .find(|s| s.name == "compute" && s.parent == stage.id)
            .expect("compute");
        assert!(compute.number("measured_ms") > 0.0);
    }

    // The control plane's work is traced as well: planning the pushed model, with its store calls.
    let all = receiver.spans();
    let planned = all
        .iter()
        .find(|s| s.service == "strata-control-plane" && s.name == "plan model")
        .unwrap_or_else(|| panic!("no planning span from the control plane"));
    assert_eq!(planned.text("model"), "squeezenet");
    assert!(
        all.iter()
            .any(|s| s.service == "strata-control-plane" && s.name.starts_with("store ")),
        "no store call spans"
    );
    // No span of this request landed in another trace.
    assert!(
        !all.iter().any(|s| s.trace != trace
            && s.attributes.get("request").is_some()
            && s.name.starts_with("stage ")),
        "a stage of the request in another trace"
    );
    sandbox.agents.clear();
}

#[test]
fn with_tracing_switched_off_nothing_is_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start(dir.path());
    // The endpoint is set, so only the switch keeps the processes quiet.
    let env = environment(&receiver.endpoint, &[("OTEL_SDK_DISABLED", "true")]);
    let mut sandbox = Sandbox::start_with_env(&["edge", "cloud"], 3000, &pairs(&env));
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let plan = three_tier_plan(&sandbox);
    infer_as_device(&sandbox, &plan, &dir.path().join("out"), &pairs(&env));
    let none = environment(&receiver.endpoint, &[("OTEL_TRACES_EXPORTER", "none")]);
    infer_as_device(&sandbox, &plan, &dir.path().join("out2"), &pairs(&none));
    // Ten export intervals, then the agents stop (an exporting agent flushes as it stops).
    std::thread::sleep(Duration::from_secs(1));
    for agent in &mut sandbox.agents {
        agent.proc.terminate();
    }
    let spans = receiver.spans();
    assert!(spans.is_empty(), "spans sent with tracing off: {spans:#?}");
}
