//! A cluster of real processes on loopback for tests: one `strata control-plane`, N `strata-edge-agent`s,
//! each a separate OS process found next to the `strata` binary, talking gRPC over real sockets. Processes
//! are killed when the sandbox is dropped (also when a test fails).

#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use strata_device_sdk::{Client, ClientConfig, Constraints, Privacy};
use strata_proto::transport::{Expect, Transport};
use strata_proto::v1;
use strata_runtime::{Backend, TensorData, TractBackend, npy};

#[path = "../../../control-plane/tests/support/etcd.rs"]
pub mod etcd;
pub use etcd::Etcd;

/// A cluster profile that spreads SqueezeNet over all three tiers under `features`: a very slow device (it keeps
/// only the raw-input readers), a fast edge with too little memory for the whole model, a slower cloud with
/// plenty, fast links.
pub const THREE_TIER: &str = r#"
name = "three-tier test"
[tiers.device]
gflops = 0.001
memory_mib = 4096
active_w = 2.0
idle_w = 0.1
tx_nj_per_byte = 1.0
[tiers.edge]
gflops = 100.0
memory_mib = 8
[tiers.cloud]
gflops = 50.0
memory_mib = 65536
[[links]]
from = "device"
to = "edge"
up_mbps = 10000.0
rtt_ms = 0.1
[[links]]
from = "edge"
to = "cloud"
up_mbps = 10000.0
rtt_ms = 0.1
"#;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn corpus(file: &str) -> PathBuf {
    let p = root().join("corpus/models").join(file);
    assert!(
        p.exists(),
        "{} is missing: build the corpus with `python3 corpus/fetch.py`",
        p.display()
    );
    p
}

/// Runs `strata infer MODEL` through `endpoint` with `input` (NAME=FILE.npy), outputs into `out`, and
/// `extra` arguments, with the TLS material in `tls` (a device's, say) when given.
pub fn infer(
    endpoint: &str,
    model: &str,
    input: &str,
    out: &Path,
    extra: &[&str],
    tls: Option<&Path>,
) -> std::process::Output {
    let mut cmd = Command::new(strata_bin());
    if let Some(dir) = tls {
        cmd.env("STRATA_TLS_DIR", dir);
    }
    cmd.args(["infer", model, "--endpoint", endpoint, "--input", input])
        .arg("--output-dir")
        .arg(out)
        .args(extra)
        .env("STRATA_LOG", "off")
        // Beside the outputs, not in the user's cache.
        .env("STRATA_CACHE_DIR", out.with_file_name("stage-cache"))
        .output()
        .expect("strata infer runs")
}

pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

/// `strata-edge-agent`, built next to `strata` by any workspace build (`cargo nextest run --workspace` builds
/// it for the agent's own integration tests). When only this package is tested, builds it once with the same
/// profile and target directory.
pub fn agent_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let p = strata_bin().with_file_name("strata-edge-agent");
            if !p.exists() {
                let profile_dir = p.parent().expect("the profile directory");
                let profile = profile_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .expect("a profile directory name");
                let target_dir = profile_dir.parent().expect("the target directory");
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
                let status = Command::new(cargo)
                    .args([
                        "build",
                        "-p",
                        "strata-edge-agent",
                        "--bin",
                        "strata-edge-agent",
                    ])
                    .args([
                        "--profile",
                        if profile == "debug" { "dev" } else { profile },
                    ])
                    .env("CARGO_TARGET_DIR", target_dir)
                    .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
                    .status()
                    .expect("cargo runs");
                assert!(status.success(), "cargo build -p strata-edge-agent failed");
            }
            assert!(
                p.exists(),
                "{} is missing even after cargo build",
                p.display()
            );
            p
        })
        .clone()
}

/// A child process with its stdout lines forwarded to a channel; killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let stderr = std::fs::File::create(log).expect("log file");
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env("STRATA_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines,
        }
    }

    /// The first stdout line containing `needle`, within `timeout`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{}: no line containing {needle:?} within {timeout:?}",
                    self.name
                ),
            }
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (graceful shutdown).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The address at the end of a "... listening on ADDR" line.
fn address_of(line: &str) -> String {
    line.rsplit(' ')
        .next()
        .expect("an address")
        .trim()
        .to_string()
}

pub struct Agent {
    pub tier: &'static str,
    pub address: String,
    pub proc: Proc,
}

/// A control-plane replica: a `strata control-plane` process on a fixed address (kept across restarts).
pub struct Replica {
    pub address: String,
    /// Its replica id, as it printed it (changes on every start).
    pub id: String,
    pub proc: Option<Proc>,
}

impl Replica {
    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }
}

/// The control planes' rollout grace period in tests.
pub const ROLLOUT_GRACE: Duration = Duration::from_secs(2);

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub replicas: Vec<Replica>,
    /// The replica that `strata` commands and the helpers talk to.
    pub cp_address: String,
    pub agents: Vec<Agent>,
    pub runtime: tokio::runtime::Runtime,
    /// The etcd the replicas share, when the sandbox runs on etcd.
    pub etcd: Option<Etcd>,
    ttl_ms: u64,
    /// Which embedded store the control plane runs on (a new one after `restart_on_new_store`).
    store_generation: usize,
    /// Extra `strata control-plane` arguments.
    cp_args: Vec<String>,
    /// The cluster CA, when the sandbox runs with mutual TLS (the default).
    pub ca: Option<strata_trust::ca::Ca>,
    /// Environment variables for every control plane and agent the sandbox starts (OTEL_*, say).
    env: Vec<(String, String)>,
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").to_string()
}

impl Sandbox {
    /// A control plane on the embedded store (node TTL `ttl_ms`) and agents of the given tiers, all
    /// registered.
    /// Every process has a certificate from the sandbox's CA, and every call is mutual TLS.
    pub fn start(tiers: &[&'static str], ttl_ms: u64) -> Sandbox {
        Sandbox::launch(None, 1, tiers, ttl_ms, &[], true, &[])
    }

    /// Like [`Sandbox::start`] with `env` set for every control plane and agent.
    pub fn start_with_env(tiers: &[&'static str], ttl_ms: u64, env: &[(&str, &str)]) -> Sandbox {
        Sandbox::launch(None, 1, tiers, ttl_ms, &[], true, env)
    }

    /// Like [`Sandbox::start`] on the plain transport (no certificates, nothing authorised).
    pub fn start_plain(tiers: &[&'static str], ttl_ms: u64) -> Sandbox {
        Sandbox::launch(None, 1, tiers, ttl_ms, &[], false, &[])
    }

    /// Like [`Sandbox::start`] with extra `strata control-plane` arguments.
    pub fn start_with(tiers: &[&'static str], ttl_ms: u64, cp_args: &[&str]) -> Sandbox {
        Sandbox::launch(None, 1, tiers, ttl_ms, cp_args, true, &[])
    }

    /// `replicas` control planes on a fresh real etcd, and agents of the given tiers that know every
    /// replica, all registered (mutual TLS).
    pub fn start_on_etcd(replicas: usize, tiers: &[&'static str], ttl_ms: u64) -> Sandbox {
        Sandbox::launch(Some(Etcd::start()), replicas, tiers, ttl_ms, &[], true, &[])
    }

    /// The directory of `name`'s credentials as `role` (`ca.pem`, `cert.pem`, `key.pem`), issued by the
    /// sandbox's CA on first use; `None` on the plain transport.
    pub fn credentials(&self, role: strata_trust::Role, name: &str) -> Option<PathBuf> {
        let ca = self.ca.as_ref()?;
        let dir = self
            .dir
            .path()
            .join("tls")
            .join(format!("{}-{name}", role.label()));
        if !dir.join("cert.pem").exists() {
            let identity = strata_trust::Identity::new(name, role).expect("identity");
            let issued = ca
                .issue(&identity, &[], Duration::from_secs(24 * 3600))
                .expect("issue");
            strata_trust::ca::write_credentials(&dir, ca.cert_pem(), &issued).expect("write");
        }
        Some(dir)
    }

    /// The transport of a client acting as `name` with `role`.
    pub fn transport_as(&self, role: strata_trust::Role, name: &str) -> Transport {
        match self.credentials(role, name) {
            Some(dir) => {
                Transport::tls(strata_trust::TlsFiles::in_dir(&dir)).expect("TLS material")
            }
            None => Transport::Plain,
        }
    }

    /// The administrator's transport (what the helpers and `strata` commands use).
    pub fn admin(&self) -> Transport {
        self.transport_as(strata_trust::Role::Admin, "admin")
    }

    /// A device's credentials directory (for `strata infer`).
    pub fn device_tls(&self) -> Option<PathBuf> {
        self.credentials(strata_trust::Role::Device, "device")
    }

    /// A channel to `address` as the administrator.
    pub fn channel(&self, address: &str) -> tonic::transport::Channel {
        let _guard = self.runtime.enter();
        strata_proto::call::channel(
            address,
            Duration::from_secs(2),
            &self.admin(),
            Expect::Server,
        )
        .expect("channel")
    }

    /// `--tls-dir DIR` for a process acting as `name` with `role` (nothing on the plain transport).
    fn tls_args(&self, role: strata_trust::Role, name: &str) -> Vec<std::ffi::OsString> {
        match self.credentials(role, name) {
            Some(dir) => vec!["--tls-dir".into(), dir.into()],
            None => Vec::new(),
        }
    }

    /// Calibration is off unless `cp_args` turn it on: THREE_TIER's speeds are deliberately far from this
    /// machine's, and tests of other things should not see their plans change under them.
    fn launch(
        etcd: Option<Etcd>,
        replicas: usize,
        tiers: &[&'static str],
        ttl_ms: u64,
        cp_args: &[&str],
        tls: bool,
        env: &[(&str, &str)],
    ) -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = tls.then(|| {
            let ca = strata_trust::ca::Ca::generate("sandbox", Duration::from_secs(24 * 3600))
                .expect("CA");
            // On disk too: the control planes sign the certificates of nodes that join with a token.
            std::fs::create_dir_all(dir.path().join("ca")).expect("ca dir");
            ca.write(&dir.path().join("ca")).expect("write the CA");
            ca
        });
        std::fs::write(dir.path().join("cluster.toml"), THREE_TIER).expect("cluster file");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let replicas = (0..replicas)
            .map(|_| Replica {
                address: free_address(),
                id: String::new(),
                proc: None,
            })
            .collect::<Vec<_>>();
        let cp_address = replicas[0].address.clone();
        let mut sandbox = Sandbox {
            dir,
            replicas,
            cp_address,
            agents: Vec::new(),
            runtime,
            etcd,
            ttl_ms,
            store_generation: 0,
            cp_args: cp_args.iter().map(|a| a.to_string()).collect(),
            ca,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for i in 0..sandbox.replicas.len() {
            sandbox.start_replica(i);
        }
        for tier in tiers {
            sandbox.add_agent(tier);
        }
        let want = sandbox.agents.len();
        sandbox.wait_until("every agent registered", Duration::from_secs(30), |s| {
            s.nodes().len() == want
        });
        sandbox
    }

    /// Starts (or restarts) replica `i` on its address.
    pub fn start_replica(&mut self, i: usize) {
        let name = format!("cp{i}");
        let mut cmd = Command::new(strata_bin());
        cmd.args(["control-plane", "--listen", &self.replicas[i].address])
            .args(["--node-ttl-ms", &self.ttl_ms.to_string()])
            .args(["--rollout-grace-ms", &ROLLOUT_GRACE.as_millis().to_string()])
            .arg("--cluster")
            .arg(self.dir.path().join("cluster.toml"))
            .args(self.tls_args(strata_trust::Role::Controller, "cp"));
        if self.ca.is_some() {
            cmd.arg("--ca-dir").arg(self.dir.path().join("ca"));
        }
        cmd.args(&self.cp_args);
        if !self.cp_args.iter().any(|a| a == "--calibration-band-pct") {
            cmd.args(["--calibration-band-pct", "0"]);
        }
        match &self.etcd {
            Some(etcd) => {
                cmd.args(["--store", &etcd.url()])
                    .arg("--blobs")
                    .arg(self.dir.path().join(format!("{name}-blobs")));
            }
            None => {
                let store = match self.store_generation {
                    0 => "cp".to_string(),
                    n => format!("cp-{n}"),
                };
                cmd.arg("--store").arg(self.dir.path().join(store));
            }
        }
        // cp0.log, then cp0-run2.log, … : the logs of earlier runs of this replica stay.
        let log = (1..)
            .map(|run| match run {
                1 => self.dir.path().join(format!("{name}.log")),
                n => self.dir.path().join(format!("{name}-run{n}.log")),
            })
            .find(|p| !p.exists())
            .expect("a free log name");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let proc = Proc::spawn(&name, cmd, &log);
        let id_line = proc.wait_line("control plane replica", Duration::from_secs(30));
        let id = id_line
            .split_whitespace()
            .nth(3)
            .expect("a replica id")
            .to_string();
        proc.wait_line("listening on", Duration::from_secs(30));
        self.replicas[i].id = id;
        self.replicas[i].proc = Some(proc);
    }

    /// Kills the (embedded-store) control plane and starts a new one at the same address on a new, empty
    /// store: what an operator who lost the control plane's disk would do.
    pub fn restart_on_new_store(&mut self) {
        assert!(self.etcd.is_none(), "a sandbox on the embedded store");
        self.replicas[0].kill();
        self.store_generation += 1;
        self.start_replica(0);
    }

    /// The index of the replica that leads now, read from the election in etcd.
    pub fn leader(&self) -> Option<usize> {
        let etcd = self.etcd.as_ref().expect("a sandbox on etcd");
        let url = etcd.url();
        let leader = self.runtime.block_on(async {
            let config = strata_control_plane::store::EtcdConfig::from_url(&url).ok()?;
            let store = strata_control_plane::store::EtcdStore::connect(config)
                .await
                .ok()?;
            strata_control_plane::store::election::leader(
                &store,
                strata_control_plane::keys::ELECTION,
            )
            .await
            .ok()
            .flatten()
        })?;
        let id = String::from_utf8(leader.value).ok()?;
        self.replicas.iter().position(|r| r.id == id)
    }

    /// Every replica's address, as agents and clients take them.
    pub fn replica_addresses(&self) -> String {
        let addresses: Vec<&str> = self.replicas.iter().map(|r| r.address.as_str()).collect();
        addresses.join(",")
    }

    pub fn add_agent(&mut self, tier: &'static str) {
        self.add_agent_with(tier, 2, 64);
    }

    /// An agent computing `slots` stages at once with `queue` more waiting.
    pub fn add_agent_with(&mut self, tier: &'static str, slots: u32, queue: u32) {
        let control_planes = self.replica_addresses();
        self.add_agent_to(tier, slots, queue, &control_planes);
    }

    /// An agent that reaches the control plane at `control_planes` (a proxy, say).
    pub fn add_agent_to(
        &mut self,
        tier: &'static str,
        slots: u32,
        queue: u32,
        control_planes: &str,
    ) {
        self.add_agent_full(tier, slots, queue, control_planes, &[]);
    }

    /// An agent with `extra` flags (`--metrics-listen ADDR`, say).
    pub fn add_agent_args(&mut self, tier: &'static str, extra: &[&str]) {
        let control_planes = self.replica_addresses();
        self.add_agent_full(tier, 2, 64, &control_planes, extra);
    }

    /// An agent computing `slots` stages at once, `queue` more waiting, with `extra` flags.
    pub fn add_agent_full(
        &mut self,
        tier: &'static str,
        slots: u32,
        queue: u32,
        control_planes: &str,
        extra: &[&str],
    ) {
        let n = self.agents.len();
        let name = format!("{tier}{n}");
        let mut cmd = Command::new(agent_bin());
        cmd.args([
            "--tier",
            tier,
            "--control-plane",
            control_planes,
            "--listen",
            "127.0.0.1:0",
            "--name",
            &name,
        ])
        .args(["--slots", &slots.to_string(), "--queue", &queue.to_string()])
        .args(self.tls_args(strata_trust::Role::Node(tier.parse().expect("tier")), &name))
        // tract unless a test asks for another backend: the suites compare served answers with tract's
        // whole-model ones, and ONNX Runtime's threads would crowd a 2-core machine running several agents.
        // The backend tests (cluster.rs) run agents on ONNX Runtime.
        .args(
            (!extra.contains(&"--backend"))
                .then_some(["--backend", "tract"])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .arg("--data-dir")
        .arg(self.dir.path().join(&name))
        .envs(self.env.iter().map(|(k, v)| (k, v)));
        let proc = Proc::spawn(&name, cmd, &self.dir.path().join(format!("{name}.log")));
        let address = address_of(&proc.wait_line("listening on", Duration::from_secs(30)));
        self.agents.push(Agent {
            tier,
            address,
            proc,
        });
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Runs `strata` with this cluster as endpoint, as the administrator.
    pub fn strata(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(strata_bin());
        if let Some(dir) = self.credentials(strata_trust::Role::Admin, "admin") {
            cmd.env("STRATA_TLS_DIR", dir);
        }
        cmd.args(args)
            .env("STRATA_ENDPOINT", &self.cp_address)
            .env("STRATA_LOG", "off")
            .output()
            .expect("strata runs")
    }

    pub fn push(&self, file: &Path, name: &str, privacy: &str) {
        self.push_with(file, name, privacy, &[]);
    }

    /// `strata model push` with `extra` flags (`--max-batch 8`, say).
    pub fn push_with(&self, file: &Path, name: &str, privacy: &str, extra: &[&str]) {
        let file = file.to_string_lossy();
        let mut args = vec!["model", "push", &file, "--name", name, "--privacy", privacy];
        args.extend_from_slice(extra);
        let out = self.strata(&args);
        assert!(
            out.status.success(),
            "push {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn nodes(&self) -> Vec<v1::NodeInfo> {
        self.runtime.block_on(async {
            let channel = strata_proto::call::channel(
                &self.cp_address,
                Duration::from_secs(2),
                &self.admin(),
                Expect::Server,
            )
            .expect("channel");
            match v1::control_client::ControlClient::new(channel)
                .list_nodes(v1::ListNodesRequest {})
                .await
            {
                Ok(r) => r.into_inner().nodes,
                Err(_) => Vec::new(),
            }
        })
    }

    pub fn routes(&self, model: &str) -> Option<v1::RouteTable> {
        self.runtime.block_on(async {
            let channel = strata_proto::call::channel(
                &self.cp_address,
                Duration::from_secs(2),
                &self.admin(),
                Expect::Server,
            )
            .expect("channel");
            v1::routes_client::RoutesClient::new(channel)
                .get_routes(v1::GetRoutesRequest {
                    model: model.to_string(),
                })
                .await
                .ok()
                .map(|r| r.into_inner())
        })
    }

    /// Waits until every edge stage of every plan has `edge_agents` ready agents, and every cloud stage one.
    pub fn wait_served(&self, model: &str, edge_agents: usize) -> v1::RouteTable {
        let mut last = None;
        self.wait_until(&format!("{model} served"), Duration::from_secs(60), |s| {
            last = s.routes(model);
            last.as_ref().is_some_and(|t| {
                !t.plans.is_empty()
                    && t.plans.iter().flat_map(|p| &p.stages).all(|st| {
                        match v1::Tier::try_from(st.tier) {
                            Ok(v1::Tier::Edge) => st.nodes.len() >= edge_agents,
                            Ok(v1::Tier::Cloud) => !st.nodes.is_empty(),
                            _ => true,
                        }
                    })
            })
        });
        last.expect("a route table")
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Sandbox) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}\n{}",
                self.log_tails(15)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of every process's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        logs.iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!("--- {}\n{tail}", p.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A device SDK client (a device certificate under TLS).
    pub fn client(&self, endpoints: &[String]) -> Client {
        self.client_with_timeout(endpoints, ClientConfig::new(vec![]).request_timeout)
    }

    /// A device SDK client whose requests have `timeout` as their deadline.
    pub fn client_with_timeout(&self, endpoints: &[String], timeout: Duration) -> Client {
        let _guard = self.runtime.enter();
        let config = ClientConfig {
            transport: self.transport_as(strata_trust::Role::Device, "device"),
            request_timeout: timeout,
            ..ClientConfig::new(endpoints.to_vec())
        };
        Client::new(config).expect("client")
    }

    /// What `grpc.health.v1` says of `service` at `address` ("" is the server as a whole).
    pub fn health(
        &self,
        address: &str,
        service: &str,
    ) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
        self.runtime.block_on(async {
            let channel = strata_proto::call::channel(
                address,
                Duration::from_secs(2),
                &self.admin(),
                Expect::Server,
            )
            .ok()?;
            let answer = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .ok()?;
            tonic_health::pb::health_check_response::ServingStatus::try_from(
                answer.into_inner().status,
            )
            .ok()
        })
    }

    pub fn status(&self, address: &str) -> v1::AgentStatus {
        self.runtime.block_on(async {
            let channel = strata_proto::call::channel(
                address,
                Duration::from_secs(2),
                &self.admin(),
                Expect::Server,
            )
            .expect("channel");
            v1::inference_client::InferenceClient::new(channel)
                .status(v1::StatusRequest {})
                .await
                .expect("agent status")
                .into_inner()
        })
    }
}

/// Requests sent one after another until stopped; counts successes and keeps every failure.
pub struct Stream {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Stream {
    pub fn start(
        sandbox: &Sandbox,
        client: Client,
        model: &'static str,
        privacy: Privacy,
    ) -> Stream {
        let constraints = Constraints {
            privacy: Some(privacy),
            ..Constraints::default()
        };
        Stream::start_with(sandbox, client, model, constraints)
    }

    /// Like [`Stream::start`], every request with `constraints`.
    pub fn start_with(
        sandbox: &Sandbox,
        client: Client,
        model: &'static str,
        constraints: Constraints,
    ) -> Stream {
        let want = reference(model);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let task = sandbox.runtime.spawn(async move {
            let (mut ok, mut failures) = (0, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                let started = Instant::now();
                match client
                    .infer(model, want.inputs.clone(), constraints.clone())
                    .await
                {
                    Ok(r) => {
                        assert_outputs_match(&r.outputs, &want.outputs, model);
                        ok += 1;
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(format!("after {:?}: {e}", started.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failures)
        });
        Stream { stop, served, task }
    }

    /// Requests that succeeded so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests beyond those served now have succeeded (traffic is flowing).
    pub fn wait_more(&self, more: usize, timeout: Duration) {
        let target = self.served() + more;
        let deadline = Instant::now() + timeout;
        while self.served() < target {
            assert!(
                Instant::now() < deadline,
                "only {} of {target} requests served within {timeout:?}",
                self.served()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the stream; returns how many requests succeeded, after asserting that none failed.
    pub fn finish(self, sandbox: &Sandbox, at_least: usize) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failures) = sandbox
            .runtime
            .block_on(self.task)
            .expect("the request stream");
        assert!(
            failures.is_empty(),
            "{} request(s) failed: {failures:#?}",
            failures.len()
        );
        assert!(
            ok >= at_least,
            "only {ok} requests ran (expected at least {at_least})"
        );
        ok
    }
}

/// A corpus model's sample inputs and its outputs run whole, locally, with tract.
pub struct Reference {
    pub inputs: HashMap<String, TensorData>,
    pub outputs: HashMap<String, TensorData>,
}

pub fn reference(model: &str) -> Reference {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(corpus("manifest.json")).expect("manifest"))
            .expect("manifest json");
    let entry = manifest
        .as_array()
        .or_else(|| manifest["models"].as_array())
        .expect("manifest list")
        .iter()
        .find(|e| e["name"] == model)
        .unwrap_or_else(|| panic!("{model} not in the manifest"))
        .clone();
    let mut inputs = HashMap::new();
    for i in entry["inputs"].as_array().expect("inputs") {
        let name = i["name"].as_str().expect("name").to_string();
        let file = root()
            .join("corpus/models")
            .join(i["npy"].as_str().expect("npy"));
        let t = npy::decode(&std::fs::read(&file).expect("npy file")).expect("npy");
        inputs.insert(name, t);
    }
    let bytes = std::fs::read(corpus(&format!("{model}.onnx"))).expect("model");
    let shapes = inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.clone()))
        .collect();
    let outputs = TractBackend
        .load(&bytes, &shapes)
        .expect("load")
        .run(&inputs)
        .expect("run");
    Reference { inputs, outputs }
}

/// |a − b| ≤ 1e-4·(1 + |b|) element-wise for every output.
pub fn assert_outputs_match(
    got: &[(String, TensorData)],
    want: &HashMap<String, TensorData>,
    context: &str,
) {
    assert_eq!(got.len(), want.len(), "{context}: output count");
    for (name, t) in got {
        let w = want
            .get(name)
            .unwrap_or_else(|| panic!("{context}: unexpected output {name}"));
        assert_eq!(t.shape, w.shape, "{context}: shape of {name}");
        let diff = t.max_relative_diff(w).expect("comparable");
        assert!(diff <= 1e-4, "{context}: output {name} differs by {diff}");
    }
}

/// A TCP proxy on loopback to `target` whose open connections can all be cut at once ([`Proxy::cut`]) while
/// it keeps accepting new ones: what a NAT or load balancer dropping idle streams does to long-lived watches.
pub struct Proxy {
    pub address: String,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address").to_string();
        listener.set_nonblocking(true).expect("nonblocking accept");
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (target, conns, stopped) = (target.to_string(), open.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let pipes = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                {
                    let mut open = conns.lock().expect("proxy connections");
                    open.extend([client, server]);
                }
                for (from, to) in pipes {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        });
                    }
                }
            }
        });
        Proxy {
            address,
            open,
            stop,
        }
    }

    /// Cuts every open connection (both ends see a reset); new connections are still accepted.
    pub fn cut(&self) -> usize {
        let mut open = self.open.lock().expect("proxy connections");
        for conn in open.iter() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        let cut = open.len() / 2;
        open.clear();
        cut
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}
