//! Observability, checked with the real tools: a real Prometheus (Debian's `prometheus`) scrapes a running
//! cluster's `/metrics` endpoints (`--metrics-listen` on the control plane and both agents, mutual TLS on the
//! serving ports), and its HTTP API must report counts equal to the requests made, histograms with Strata's
//! buckets and labels, and the control plane's state; `promtool check metrics` passes on every endpoint's
//! text; the alert rules in `deploy/prometheus/` pass `promtool check rules` and their unit tests
//! (`promtool test rules`), and the Grafana dashboard only queries metrics that exist.

mod sandbox;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox::{Proc, Sandbox, assert_outputs_match, corpus, reference};
use strata_core::recost::Link;
use strata_device_sdk::{Constraints, Privacy};
use strata_proto::v1;

const MODEL: &str = "squeezenet";
const REQUESTS_PER_PLAN: usize = 3;

/// A free loopback address (a port bound and released).
fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    format!("127.0.0.1:{port}")
}

/// `GET path` from `address` in HTTP/1.0 (so no chunked bodies): the status code and the body.
fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response from {address}{path}: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// `text` with every byte but letters and digits percent-encoded (a URL query value).
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs `promtool` with `args`, `stdin` as its input; its success and what it printed.
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: run scripts/setup.sh (Debian's prometheus package)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A real Prometheus scraping `targets` every second, with its data in `dir`.
struct Prometheus {
    address: String,
    _proc: Proc,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[(&str, &str)]) -> Prometheus {
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, address) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let address = free_address();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn");
        let proc = Proc::spawn("prometheus", cmd, &dir.join("prometheus.log"));
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(&address).is_ok()
                && http_get(&address, "/-/ready").0 == 200
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "prometheus did not become ready: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Prometheus {
            address,
            _proc: proc,
        }
    }

    /// The instant vector of `query`: each series' labels and value.
    fn query(&self, query: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let (status, body) = http_get(
            &self.address,
            &format!("/api/v1/query?query={}", url_encode(query)),
        );
        assert_eq!(status, 200, "query {query}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        assert_eq!(json["status"], "success", "{body}");
        json["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("a value");
                (labels, value)
            })
            .collect()
    }

    /// The value of a query that yields one series (0 when it yields none).
    fn scalar(&self, query: &str) -> f64 {
        let result = self.query(query);
        assert!(result.len() <= 1, "{query}: {result:?}");
        result.first().map_or(0.0, |(_, v)| *v)
    }

    /// Waits until `query` yields `want` (Prometheus scrapes every second); fails with the targets' scrape
    /// health after 30 s.
    fn wait_for(&self, query: &str, want: f64) {
        let started = Instant::now();
        loop {
            let got = self.scalar(query);
            if got == want {
                if started.elapsed() > Duration::from_millis(100) {
                    println!("{query} reached {want} after {:?}", started.elapsed());
                }
                return;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let (_, targets) = http_get(&self.address, "/api/v1/targets");
                panic!("{query} is {got}, not {want}, 30 s on; the targets: {targets}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[test]
fn prometheus_scrapes_every_server_and_its_counts_match_the_requests_made() {
    let cp_metrics = free_address();
    let mut sandbox = Sandbox::start_with(&[], 3000, &["--metrics-listen", &cp_metrics]);
    let edge_metrics = free_address();
    let cloud_metrics = free_address();
    sandbox.add_agent_args("edge", &["--metrics-listen", &edge_metrics]);
    sandbox.add_agent_args("cloud", &["--metrics-listen", &cloud_metrics]);
    sandbox.push(&corpus(&format!("{MODEL}.onnx")), MODEL, "open");
    let table = sandbox.wait_served(MODEL, 1);

    // Every endpoint answers with the Prometheus text format that promtool accepts, and nothing else.
    for (what, address) in [
        ("control plane", &cp_metrics),
        ("edge agent", &edge_metrics),
        ("cloud agent", &cloud_metrics),
    ] {
        let (status, text) = http_get(address, "/metrics");
        assert_eq!(status, 200, "{what}: {text}");
        let (ok, said) = promtool(&["check", "metrics"], &text);
        assert!(
            ok && said.trim().is_empty(),
            "{what}: promtool check metrics: {said}\n{text}"
        );
        assert!(text.contains("strata_build_info{"), "{what}: {text}");
        assert_eq!(http_get(address, "/").0, 404, "{what}");
    }

    let prometheus = Prometheus::start(
        sandbox.dir.path(),
        &[
            ("strata-control-plane", &cp_metrics),
            ("strata-edge", &edge_metrics),
            ("strata-cloud", &cloud_metrics),
        ],
    );

    // Every plan that runs on an agent, forced, a few times each; what the device saw is the expectation.
    let want = reference(MODEL);
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let plans: Vec<&v1::Plan> = table
        .plans
        .iter()
        .filter(|p| p.stages.iter().any(|s| s.tier != v1::Tier::Device as i32))
        .collect();
    assert!(
        plans
            .iter()
            .any(|p| p.stages.iter().any(|s| s.tier == v1::Tier::Edge as i32)
                && p.stages.iter().any(|s| s.tier == v1::Tier::Cloud as i32)),
        "no plan crosses edge and cloud: {table:?}"
    );
    let mut ran: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let mut received: BTreeMap<&str, f64> = BTreeMap::new();
    let mut forwarded_by_edge = 0.0;
    for plan in &plans {
        for _ in 0..REQUESTS_PER_PLAN {
            let r = sandbox
                .runtime
                .block_on(client.infer(
                    MODEL,
                    want.inputs.clone(),
                    Constraints {
                        privacy: Some(Privacy::Open),
                        plan: Some(plan.id.clone()),
                        ..Constraints::default()
                    },
                ))
                .unwrap_or_else(|e| panic!("plan {}: {e}\n{}", plan.id, sandbox.log_tails(20)));
            assert_outputs_match(&r.outputs, &want.outputs, &plan.id);
            for stage in r.stages.iter().filter(|s| s.node.is_some()) {
                *ran.entry((
                    stage.tier.to_string(),
                    plan.id.clone(),
                    stage.index.to_string(),
                ))
                .or_default() += 1.0;
            }
            for hop in &r.hops {
                let into = match hop.link {
                    Link::DeviceEdge => "edge",
                    Link::EdgeCloud | Link::DeviceCloud => "cloud",
                };
                *received.entry(into).or_default() += hop.up_bytes as f64;
                if hop.link == Link::EdgeCloud {
                    forwarded_by_edge += hop.up_bytes as f64;
                }
            }
        }
    }
    let served: f64 = ran.values().sum();

    // The device's own counters (what an app reads from the SDK) say the same.
    let requests = (plans.len() * REQUESTS_PER_PLAN) as u64;
    let counters = client.counters();
    assert_eq!(
        (
            counters.requests,
            counters.succeeded,
            counters.failed,
            counters.offloaded
        ),
        (requests, requests, 0, requests),
        "{counters:?}"
    );
    assert_eq!(
        counters.bytes_sent as f64,
        received.values().sum::<f64>() - forwarded_by_edge,
        "the device's bytes sent: {counters:?}"
    );
    assert!(
        counters.bytes_received > 0 && counters.latency_ms > 0.0,
        "{counters:?}"
    );

    // Prometheus has scraped the last of them once its total matches; then every series must.
    prometheus.wait_for(
        &format!("sum(strata_agent_requests_total{{model=\"{MODEL}\",code=\"OK\"}})"),
        served,
    );
    let counted: BTreeMap<(String, String, String), f64> = prometheus
        .query(&format!(
            "strata_agent_requests_total{{model=\"{MODEL}\",code=\"OK\"}}"
        ))
        .into_iter()
        .map(|(l, v)| {
            (
                (l["tier"].clone(), l["plan"].clone(), l["stage"].clone()),
                v,
            )
        })
        .collect();
    assert_eq!(counted, ran, "requests by tier, plan and stage");
    assert_eq!(
        prometheus.scalar("sum(strata_agent_requests_total{code!=\"OK\"})"),
        0.0,
        "no request failed"
    );

    // Histograms: Strata's buckets, by model and stage, one observation per served request.
    let buckets: BTreeSet<String> = prometheus
        .query("strata_agent_compute_duration_seconds_bucket{tier=\"edge\"}")
        .into_iter()
        .map(|(l, _)| l["le"].clone())
        .collect();
    let expected: BTreeSet<String> = strata_proto::metrics::LATENCY_BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_string()])
        .collect();
    assert_eq!(buckets, expected, "the edge compute histogram's buckets");
    for tier in ["edge", "cloud"] {
        let runs: f64 = ran
            .iter()
            .filter(|((t, _, _), _)| t == tier)
            .map(|(_, n)| n)
            .sum();
        for histogram in [
            "strata_agent_compute_duration_seconds",
            "strata_agent_queue_duration_seconds",
            "strata_agent_request_duration_seconds",
        ] {
            assert_eq!(
                prometheus.scalar(&format!("sum({histogram}_count{{tier=\"{tier}\"}})")),
                runs,
                "{histogram} on the {tier} tier"
            );
        }
        let series = prometheus.query(&format!(
            "strata_agent_compute_duration_seconds_count{{tier=\"{tier}\"}}"
        ));
        assert!(
            series
                .iter()
                .all(|(l, _)| l["model"] == MODEL && l.contains_key("stage")),
            "{series:?}"
        );
        // The tensor bytes each tier received are what the device saw go up to it.
        assert_eq!(
            prometheus.scalar(&format!(
                "sum(strata_agent_tensor_bytes_total{{tier=\"{tier}\",direction=\"received\"}})"
            )),
            received.get(tier).copied().unwrap_or_default(),
            "tensor bytes received by the {tier} tier"
        );
    }
    assert_eq!(
        prometheus
            .scalar("sum(strata_agent_tensor_bytes_total{tier=\"edge\",direction=\"forwarded\"})"),
        forwarded_by_edge,
        "tensor bytes the edge forwarded to the cloud"
    );
    assert_eq!(
        prometheus.scalar("sum(strata_agent_forward_duration_seconds_count{tier=\"edge\"})"),
        ran.iter()
            .filter(|((t, plan, stage), _)| {
                t == "cloud"
                    && plans.iter().any(|p| {
                        p.id == *plan
                            && stage.parse::<usize>().ok().is_some_and(|i| {
                                i > 0 && p.stages[i - 1].tier == v1::Tier::Edge as i32
                            })
                    })
            })
            .map(|(_, n)| n)
            .sum::<f64>(),
        "forwards from edge to cloud"
    );

    // The control plane: it leads, sees one serving node per tier, reconciles and times its store.
    // Gauges say what is true at a scrape: waited for, so that a replica's brief step-down on a loaded
    // machine (its lease renewal late) is not taken for a wrong metric.
    prometheus.wait_for("strata_control_plane_leader", 1.0);
    prometheus.wait_for("strata_control_plane_store_reachable", 1.0);
    prometheus.wait_for("strata_control_plane_models", 1.0);
    for tier in ["edge", "cloud"] {
        prometheus.wait_for(
            &format!("strata_control_plane_nodes{{tier=\"{tier}\",state=\"serving\"}}"),
            1.0,
        );
    }
    assert!(
        prometheus.scalar(
            "sum(strata_control_plane_reconcile_passes_total{role=\"leader\",outcome=\"ok\"})"
        ) >= 1.0
    );
    assert!(prometheus.scalar("sum(strata_store_request_duration_seconds_count)") > 0.0);
    assert!(
        prometheus.scalar("strata_control_plane_watchers{kind=\"routes\"}") >= 2.0,
        "both agents (and the device) watch routes"
    );
    for tier in ["edge", "cloud"] {
        prometheus.wait_for(
            &format!("strata_agent_control_plane_connected{{tier=\"{tier}\"}}"),
            1.0,
        );
        assert!(
            prometheus.scalar(&format!("strata_agent_stages_loaded{{tier=\"{tier}\"}}")) >= 1.0
        );
        assert!(
            prometheus.scalar(&format!(
                "strata_agent_stage_load_duration_seconds_count{{tier=\"{tier}\"}}"
            )) >= 1.0
        );
    }
    prometheus.wait_for("sum(up)", 3.0);
}

#[test]
fn the_alert_rules_pass_promtool_and_their_tests_and_the_dashboard_queries_real_metrics() {
    let root = sandbox::root();
    let rules = root.join("deploy/prometheus/strata-alerts.yml");
    let tests = root.join("deploy/prometheus/strata-alerts.test.yml");
    for args in [
        vec!["check", "rules", rules.to_str().expect("path")],
        vec!["test", "rules", tests.to_str().expect("path")],
    ] {
        let (ok, said) = promtool(&args, "");
        assert!(ok, "promtool {}: {said}", args.join(" "));
    }

    // Every metric the dashboard and the rules query is one Strata serves (names from the sources' text).
    let served: BTreeSet<String> = [
        "edge-agent/src/metrics.rs",
        "control-plane/src/metrics.rs",
        "proto/src/metrics.rs",
    ]
    .iter()
    .flat_map(|file| {
        let text = std::fs::read_to_string(root.join(file)).expect("metrics source");
        text.split('"')
            .filter(|s| s.starts_with("strata_") && !s.contains(' '))
            .map(str::to_string)
            .collect::<Vec<_>>()
    })
    .collect();
    let known = |name: &str| {
        served.contains(name)
            || ["_bucket", "_count", "_sum"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|n| served.contains(n))
            })
    };
    let dashboard =
        std::fs::read_to_string(root.join("deploy/grafana/strata.json")).expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let rules_text = std::fs::read_to_string(&rules).expect("rules");
    let mut used = BTreeSet::new();
    for text in [dashboard.as_str(), rules_text.as_str()] {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("strata_") {
                used.insert(word.to_string());
            }
        }
    }
    let unknown: Vec<&String> = used.iter().filter(|n| !known(n)).collect();
    assert!(unknown.is_empty(), "queried but not served: {unknown:?}");
    assert!(used.len() >= 10, "{used:?}");
}
