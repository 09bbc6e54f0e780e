//! etcd scale (issue 4): how many agents one control plane on a real etcd sustains, and how fast a route
//! change reaches every watcher.
//!
//! The control plane is a separate process, `target/release/strata control-plane --store etcd://…` (build it
//! first with `cargo build --release -p strata-cli`), on a real etcd (Debian's `etcd` on the PATH, started by
//! `tests/support/etcd.rs`). Agents and watchers are lightweight clients inside this process.
//!
//! 1. **Heartbeat capacity.** N simulated edge agents (N from `STRATA_BENCH_AGENTS`, default 1000,5000,10000)
//!    register once (rate-limited, `STRATA_BENCH_REG_RATE` per second) and then heartbeat like the real
//!    agent: one `Heartbeat` (default load, nothing ready), then a 1 s pause, with a 2 s timeout; on a failure
//!    they pause 300 ms and heartbeat again, and on NOT_FOUND they register again. All agents share
//!    `STRATA_BENCH_CHANNELS` (16) HTTP/2 connections. Per N, after a settle period, a window of
//!    `STRATA_BENCH_WINDOW_S` (15) seconds counts heartbeats attempted and succeeded, their latency, and the
//!    CPU time of the control plane, etcd and this process (utime + stime from `/proc/PID/stat`, in cores =
//!    CPU seconds per wall second); then `ListNodes` must list all N agents. The ramp stops at the first N
//!    that is not sustained.
//! 2. **Route fan-out.** On a fresh etcd and control plane, W route watchers (`STRATA_BENCH_WATCHERS`, default
//!    1000,10000) over `STRATA_BENCH_WATCH_CHANNELS` (16) connections watch squeezenet's route table; the time
//!    from a trigger until each watcher has the new table is measured for (a) the death of a ready edge node
//!    (`Deregister`) and (b) a push of a new model version (`PushModel` with another privacy level). Two
//!    simulated edge agents follow their assignments and report every assigned stage ready at once, so both
//!    are listed in the table and a new version can be published (it replaces the old one only once its
//!    stages are ready somewhere); the second one is the node that dies.
//!
//! More knobs: `STRATA_BENCH_PARTS` (`heartbeat,fanout`), `STRATA_BENCH_SETTLE_S` (10),
//! `STRATA_BENCH_FANOUT_AGENTS` (heartbeating agents kept running during the fan-out, default 0),
//! `STRATA_BENCH_BIN` (another `strata` binary), `STRATA_BENCH_LOG_DIR` (keep the control plane's and etcd's
//! logs), `STRATA_BENCH_PERF_DIR` (a diagnostic: `perf record` of the control plane and etcd over each ramp
//! and window).
//!
//! `cargo bench -p strata-control-plane --bench scale`; anything else (`cargo test --benches`) skips it.

#[path = "../tests/support/etcd.rs"]
mod etcd;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_proto::v1::{self, control_client::ControlClient, routes_client::RoutesClient};
use tonic::transport::Channel;

/// The agents' heartbeat period (the real agent uses TTL / 3).
const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);
/// `--node-ttl-ms` of the control plane.
const NODE_TTL_MS: u64 = 3000;
/// Large enough for `ListNodes` over 10,000+ nodes.
const MAX_DECODE: usize = 256 << 20;
/// The model the fan-out watches.
const MODEL: &str = "squeezenet";

struct Config {
    agents: Vec<usize>,
    watchers: Vec<usize>,
    channels: usize,
    watch_channels: usize,
    reg_rate: f64,
    settle: Duration,
    window: Duration,
    fanout_agents: usize,
    heartbeat: bool,
    fanout: bool,
    strata: PathBuf,
    model: PathBuf,
    /// Where to write `perf record` profiles of the windows, if anywhere.
    perf: Option<PathBuf>,
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| panic!("{name}: \"{s}\" is not a number (e.g. 1000,5000)"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: \"{v}\" is not a number")),
        Err(_) => default,
    }
}

impl Config {
    fn from_env() -> Config {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the control plane's crate lies inside the workspace")
            .to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let strata = std::env::var_os("STRATA_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("release").join("strata"));
        let parts =
            std::env::var("STRATA_BENCH_PARTS").unwrap_or_else(|_| "heartbeat,fanout".into());
        Config {
            agents: env_list("STRATA_BENCH_AGENTS", &[1000, 5000, 10000]),
            watchers: env_list("STRATA_BENCH_WATCHERS", &[1000, 10000]),
            channels: env_num("STRATA_BENCH_CHANNELS", 16usize).max(1),
            watch_channels: env_num("STRATA_BENCH_WATCH_CHANNELS", 16usize).max(1),
            reg_rate: env_num("STRATA_BENCH_REG_RATE", 250.0f64).max(1.0),
            settle: Duration::from_secs_f64(env_num("STRATA_BENCH_SETTLE_S", 10.0f64)),
            window: Duration::from_secs_f64(env_num("STRATA_BENCH_WINDOW_S", 15.0f64)),
            fanout_agents: env_num("STRATA_BENCH_FANOUT_AGENTS", 0usize),
            heartbeat: parts.contains("heartbeat"),
            fanout: parts.contains("fanout"),
            strata,
            model: root.join("corpus/models/squeezenet.onnx"),
            perf: std::env::var_os("STRATA_BENCH_PERF_DIR").map(PathBuf::from),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Processes and CPU accounting
// ---------------------------------------------------------------------------------------------------------

/// `strata control-plane` as a child process, killed on drop.
struct ControlPlaneProcess {
    child: Child,
    address: String,
    log: PathBuf,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl ControlPlaneProcess {
    fn start(strata: &Path, store: &str, dir: &Path) -> ControlPlaneProcess {
        let log = dir.join("control-plane.log");
        let stderr = std::fs::File::create(&log).expect("create the control plane's log file");
        let mut child = Command::new(strata)
            .arg("control-plane")
            .args(["--store", store])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--blobs")
            .arg(dir.join("blobs"))
            .args(["--node-ttl-ms", &NODE_TTL_MS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", strata.display()));
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stdout to the end, so the pipe never fills.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("control plane listening on ") {
                    let _ = tx.send(address.trim().to_string());
                }
            }
        });
        let Ok(address) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the control plane did not print \"control plane listening on\" within 30 s; its log:\n{}",
                tail(&log, 30)
            );
        };
        ControlPlaneProcess {
            child,
            address,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid and data directory of the etcd serving `endpoint` (found by its `--listen-client-urls`).
fn etcd_pid(endpoint: &str) -> (u32, PathBuf) {
    let wanted = format!("http://{endpoint}");
    let entries = std::fs::read_dir("/proc").expect("read /proc");
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_etcd = args
            .first()
            .is_some_and(|a| a.ends_with(b"/etcd") || *a == b"etcd");
        if is_etcd && args.contains(&wanted.as_bytes()) {
            let data = args
                .iter()
                .position(|a| *a == b"--data-dir")
                .and_then(|i| args.get(i + 1))
                .map(|d| PathBuf::from(String::from_utf8_lossy(d).into_owned()))
                .unwrap_or_default();
            return (pid, data);
        }
    }
    panic!("cannot find the etcd process serving {endpoint} in /proc");
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process or thread, in clock ticks, from its `stat` file.
fn stat_ticks(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    // Fields after the name: state is field 3; utime and stime are fields 14 and 15.
    let rest: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Per-thread CPU ticks of a process.
fn thread_ticks(pid: u32) -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in entries.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(t) = stat_ticks(&entry.path().join("stat")) {
                out.insert(tid, t);
            }
        }
    }
    out
}

/// Machine-wide (busy, steal) ticks from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is included in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, v.get(7).copied().unwrap_or(0))
}

#[derive(Clone, Copy)]
struct Pids {
    cp: u32,
    etcd: u32,
}

/// CPU counters at one instant.
struct Snap {
    at: Instant,
    cp: u64,
    etcd: u64,
    me: u64,
    busy: u64,
    steal: u64,
    cp_threads: HashMap<u32, (String, u64)>,
    etcd_threads: HashMap<u32, (String, u64)>,
}

impl Snap {
    fn take(pids: Pids) -> Snap {
        let ticks = |pid: &str| {
            stat_ticks(&PathBuf::from(format!("/proc/{pid}/stat"))).map_or(0, |(_, t)| t)
        };
        let (busy, steal) = machine_ticks();
        Snap {
            at: Instant::now(),
            cp: ticks(&pids.cp.to_string()),
            etcd: ticks(&pids.etcd.to_string()),
            me: ticks("self"),
            busy,
            steal,
            cp_threads: thread_ticks(pids.cp),
            etcd_threads: thread_ticks(pids.etcd),
        }
    }
}

/// CPU used between two snapshots: seconds, and cores (seconds per wall second).
struct Usage {
    wall: f64,
    cp: f64,
    etcd: f64,
    me: f64,
    busy: f64,
    steal: f64,
    cp_top_thread: (String, f64),
    etcd_top_thread: (String, f64),
}

fn busiest(
    a: &HashMap<u32, (String, u64)>,
    b: &HashMap<u32, (String, u64)>,
    clk: f64,
) -> (String, f64) {
    b.iter()
        .map(|(tid, (name, t))| {
            let before = a.get(tid).map_or(0, |(_, t0)| *t0);
            (name.clone(), t.saturating_sub(before) as f64 / clk)
        })
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .unwrap_or_default()
}

impl Usage {
    fn between(a: &Snap, b: &Snap, clk: f64) -> Usage {
        let s = |x: u64, y: u64| y.saturating_sub(x) as f64 / clk;
        Usage {
            wall: (b.at - a.at).as_secs_f64(),
            cp: s(a.cp, b.cp),
            etcd: s(a.etcd, b.etcd),
            me: s(a.me, b.me),
            busy: s(a.busy, b.busy),
            steal: s(a.steal, b.steal),
            cp_top_thread: busiest(&a.cp_threads, &b.cp_threads, clk),
            etcd_top_thread: busiest(&a.etcd_threads, &b.etcd_threads, clk),
        }
    }

    fn cores(&self, seconds: f64) -> f64 {
        seconds / self.wall.max(1e-9)
    }

    /// CPU seconds of everything else on the machine (other processes, the kernel's own threads).
    fn other(&self) -> f64 {
        (self.busy - self.cp - self.etcd - self.me).max(0.0)
    }
}

/// etcd plus one control plane on it, and client channels to the control plane.
struct Cluster {
    // Dropped in this order: the control plane, then etcd, then the directory.
    cp: ControlPlaneProcess,
    etcd: etcd::Etcd,
    pids: Pids,
    etcd_log: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    /// Keeps both logs in `STRATA_BENCH_LOG_DIR`, when set.
    fn drop(&mut self) {
        let Some(dir) = std::env::var_os("STRATA_BENCH_LOG_DIR").map(PathBuf::from) else {
            return;
        };
        let _ = std::fs::create_dir_all(&dir);
        let cp = self.pids.cp;
        let _ = std::fs::copy(&self.cp.log, dir.join(format!("control-plane-{cp}.log")));
        let _ = std::fs::copy(&self.etcd_log, dir.join(format!("etcd-{cp}.log")));
        eprintln!("  logs kept in {}", dir.display());
    }
}

/// etcd's counters (`GET /metrics`), summed per series name plus its label text.
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn fetch(endpoint: &str) -> Metrics {
        use std::io::{Read, Write};
        let mut out = HashMap::new();
        let Ok(mut stream) = std::net::TcpStream::connect(endpoint) else {
            return Metrics(out);
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return Metrics(out);
        }
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.trim().parse::<f64>()
            {
                out.insert(series.to_string(), v);
            }
        }
        Metrics(out)
    }

    /// The sum of every series of `name` whose labels contain `label` (may be empty).
    fn sum(&self, name: &str, label: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                let (n, labels) = k.split_once('{').unwrap_or((k.as_str(), ""));
                n == name && labels.contains(label)
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// What etcd did during a window, per second.
#[derive(Default)]
struct EtcdActivity {
    proposals: f64,
    fsyncs: f64,
    fsync_ms: f64,
    keepalives: f64,
    slow_applies: f64,
    expired: f64,
}

impl EtcdActivity {
    fn between(a: &Metrics, b: &Metrics, wall: f64) -> EtcdActivity {
        let d = |name: &str, label: &str| b.sum(name, label) - a.sum(name, label);
        let fsyncs = d("etcd_disk_wal_fsync_duration_seconds_count", "");
        EtcdActivity {
            proposals: d("etcd_server_proposals_committed_total", "") / wall,
            fsyncs: fsyncs / wall,
            fsync_ms: d("etcd_disk_wal_fsync_duration_seconds_sum", "") * 1e3 / fsyncs.max(1.0),
            keepalives: d(
                "grpc_server_msg_received_total",
                "grpc_method=\"LeaseKeepAlive\"",
            ) / wall,
            slow_applies: d("etcd_server_slow_apply_total", ""),
            expired: d("etcd_debugging_server_lease_expired_total", ""),
        }
    }
}

impl Cluster {
    fn start(strata: &Path) -> Cluster {
        let etcd = etcd::Etcd::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let cp = ControlPlaneProcess::start(strata, &etcd.url(), dir.path());
        let (etcd_pid, etcd_data) = etcd_pid(&etcd.endpoint());
        let pids = Pids {
            cp: cp.pid(),
            etcd: etcd_pid,
        };
        Cluster {
            cp,
            etcd,
            pids,
            etcd_log: etcd_data.with_file_name("etcd.log"),
            dir,
        }
    }

    /// etcd's Prometheus counters now.
    fn etcd_metrics(&self) -> Metrics {
        Metrics::fetch(&self.etcd.endpoint())
    }

    fn channels(&self, n: usize) -> Vec<Channel> {
        (0..n)
            .map(|_| {
                strata_proto::call::channel(
                    &self.cp.address,
                    Duration::from_secs(5),
                    &strata_proto::transport::Transport::Plain,
                    strata_proto::transport::Expect::Server,
                )
                .expect("a channel to the control plane")
            })
            .collect()
    }

    fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.channels(1).remove(0))
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(strata_proto::MAX_MESSAGE_BYTES)
    }

    fn routes(&self) -> RoutesClient<Channel> {
        RoutesClient::new(self.channels(1).remove(0)).max_decoding_message_size(MAX_DECODE)
    }

    fn describe(&self) -> String {
        format!(
            "control plane pid {} at {} (log {}), etcd pid {} at {} (dir {})",
            self.pids.cp,
            self.cp.address,
            self.cp.log.display(),
            self.pids.etcd,
            self.etcd.endpoint(),
            self.dir.path().display()
        )
    }
}

// ---------------------------------------------------------------------------------------------------------
// Models and route tables
// ---------------------------------------------------------------------------------------------------------

/// Pushes the model file under [`MODEL`] with `privacy`, as `strata model push` does.
async fn push(
    control: &mut ControlClient<Channel>,
    bytes: &bytes::Bytes,
    privacy: v1::Privacy,
) -> v1::ModelInfo {
    let meta = v1::ModelMeta {
        name: MODEL.to_string(),
        digest: strata_core::Digest::of(bytes).to_string(),
        size_bytes: bytes.len() as u64,
        privacy: privacy as i32,
        input_shapes: Vec::new(),
        batching: None,
    };
    let mut messages = vec![v1::PushModelRequest {
        part: Some(v1::push_model_request::Part::Meta(meta)),
    }];
    let mut offset = 0;
    while offset < bytes.len() {
        let end = (offset + strata_proto::CHUNK_BYTES).min(bytes.len());
        messages.push(v1::PushModelRequest {
            part: Some(v1::push_model_request::Part::Data(bytes.slice(offset..end))),
        });
        offset = end;
    }
    control
        .push_model(futures::stream::iter(messages))
        .await
        .unwrap_or_else(|s| panic!("push {MODEL}: {}", s.message()))
        .into_inner()
        .model
        .expect("PushModel answers with the model")
}

/// Waits until the model's route table has `version` and satisfies `ok`.
async fn wait_table(
    routes: &mut RoutesClient<Channel>,
    version: u64,
    ok: impl Fn(&v1::RouteTable) -> bool,
    what: &str,
) -> v1::RouteTable {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let last = match routes
            .get_routes(v1::GetRoutesRequest {
                model: MODEL.into(),
            })
            .await
        {
            Ok(t) => {
                let t = t.into_inner();
                if t.version == version && ok(&t) {
                    return t;
                }
                format!("version {} with {} nodes", t.version, t.nodes.len())
            }
            Err(s) => s.message().to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "the route table did not reach {what} within 180 s (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Digests of the table's edge stages (what a ready edge node reports).
fn edge_digests(table: &v1::RouteTable) -> Vec<String> {
    let mut digests: Vec<String> = table
        .plans
        .iter()
        .flat_map(|p| &p.stages)
        .filter(|s| s.tier == v1::Tier::Edge as i32)
        .map(|s| s.digest.clone())
        .collect();
    digests.sort();
    digests.dedup();
    digests
}

// ---------------------------------------------------------------------------------------------------------
// Simulated agents
// ---------------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Counters {
    attempted: AtomicU64,
    ok: AtomicU64,
    not_found: AtomicU64,
    timeouts: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    fn failed(&self) -> u64 {
        self.not_found.load(Ordering::Relaxed)
            + self.timeouts.load(Ordering::Relaxed)
            + self.other.load(Ordering::Relaxed)
    }

    fn reset(&self) {
        for c in [
            &self.attempted,
            &self.ok,
            &self.not_found,
            &self.timeouts,
            &self.other,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Spaces registrations `gap` apart.
struct Gate {
    next: tokio::sync::Mutex<tokio::time::Instant>,
    gap: Duration,
}

impl Gate {
    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.gap;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// What all simulated agents share.
struct Fleet {
    gate: Gate,
    measuring: AtomicBool,
    /// Heartbeats inside the measuring window.
    window: Counters,
    /// Heartbeats since the last [`Fleet::reset_step`].
    step: Counters,
    latencies_us: Mutex<Vec<u32>>,
    registered: AtomicUsize,
    reregistered: AtomicU64,
    register_ms: Mutex<Vec<f64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Fleet {
    fn new(rate: f64) -> Fleet {
        Fleet {
            gate: Gate {
                next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
                gap: Duration::from_secs_f64(1.0 / rate),
            },
            measuring: AtomicBool::new(false),
            window: Counters::default(),
            step: Counters::default(),
            latencies_us: Mutex::new(Vec::new()),
            registered: AtomicUsize::new(0),
            reregistered: AtomicU64::new(0),
            register_ms: Mutex::new(Vec::new()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts an error, with node ids replaced by `<node>` so that alike errors add up.
    fn error(&self, what: String) {
        let what: Vec<&str> = what
            .split('"')
            .map(|part| {
                if part.starts_with("bench-agent-") {
                    "<node>"
                } else {
                    part
                }
            })
            .collect();
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(what.join("\""))
            .or_default() += 1;
    }

    fn count(&self, f: impl Fn(&Counters)) {
        f(&self.step);
        if self.measuring.load(Ordering::Relaxed) {
            f(&self.window);
        }
    }

    fn reset_step(&self) {
        self.step.reset();
        self.register_ms.lock().expect("register lock").clear();
        self.errors.lock().expect("errors lock").clear();
        self.reregistered.store(0, Ordering::Relaxed);
    }
}

fn agent_spec(index: usize) -> v1::NodeSpec {
    v1::NodeSpec {
        tier: v1::Tier::Edge as i32,
        arch: "x86_64".into(),
        cores: 4,
        memory_bytes: 8 << 30,
        backends: vec!["tract".into()],
        address: format!("127.0.0.1:{}", 10_000 + index % 55_000),
        name: format!("bench-agent-{index}"),
    }
}

async fn register(client: &mut ControlClient<Channel>, index: usize, fleet: &Fleet) -> String {
    loop {
        fleet.gate.wait().await;
        let started = Instant::now();
        let call = client.register(v1::RegisterRequest {
            spec: Some(agent_spec(index)),
        });
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(answer)) => {
                fleet
                    .register_ms
                    .lock()
                    .expect("register lock")
                    .push(started.elapsed().as_secs_f64() * 1e3);
                return answer.into_inner().node_id;
            }
            Ok(Err(s)) => fleet.error(format!("register: {:?}: {}", s.code(), s.message())),
            Err(_) => fleet.error("register: timed out after 10 s".into()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One simulated agent: register, then heartbeat for ever, as `strata-edge-agent` does.
async fn agent(index: usize, channel: Channel, fleet: Arc<Fleet>) {
    let mut client = ControlClient::new(channel);
    let mut node_id = register(&mut client, index, &fleet).await;
    fleet.registered.fetch_add(1, Ordering::Relaxed);
    // Spread the agents' heartbeats over one period.
    tokio::time::sleep(Duration::from_millis((index as u64 * 7919) % 1000)).await;
    loop {
        let request = v1::HeartbeatRequest {
            node_id: node_id.clone(),
            load: Some(v1::Load::default()),
            ready: Vec::new(),
            ..Default::default()
        };
        let started = Instant::now();
        let call = tokio::time::timeout(HEARTBEAT_PERIOD * 2, client.heartbeat(request)).await;
        let elapsed = started.elapsed();
        fleet.count(|c| {
            c.attempted.fetch_add(1, Ordering::Relaxed);
        });
        match call {
            Ok(Ok(_)) => {
                fleet.count(|c| {
                    c.ok.fetch_add(1, Ordering::Relaxed);
                });
                if fleet.measuring.load(Ordering::Relaxed) {
                    fleet
                        .latencies_us
                        .lock()
                        .expect("latency lock")
                        .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
                }
                tokio::time::sleep(HEARTBEAT_PERIOD).await;
            }
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                fleet.count(|c| {
                    c.not_found.fetch_add(1, Ordering::Relaxed);
                });
                fleet.error(format!("heartbeat: NotFound: {}", s.message()));
                node_id = register(&mut client, index, &fleet).await;
                fleet.reregistered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(s)) => {
                fleet.count(|c| {
                    c.other.fetch_add(1, Ordering::Relaxed);
                });
                fleet.error(format!("heartbeat: {:?}: {}", s.code(), s.message()));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(_) => {
                fleet.count(|c| {
                    c.timeouts.fetch_add(1, Ordering::Relaxed);
                });
                fleet.error("heartbeat: timed out after 2 s".into());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Aborts its tasks when dropped.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

// ---------------------------------------------------------------------------------------------------------
// Part 1: heartbeat capacity
// ---------------------------------------------------------------------------------------------------------

struct StepResult {
    agents: usize,
    ramp_s: f64,
    register_p50: f64,
    register_p99: f64,
    attempted: u64,
    ok: u64,
    failed_window: u64,
    failed_step: u64,
    not_found_step: u64,
    hb_p50: f64,
    hb_p99: f64,
    hb_max: f64,
    usage: Usage,
    ramp_usage: Usage,
    listed: usize,
    list_ms: f64,
    cp_rss: f64,
    etcd_rss: f64,
    etcd: EtcdActivity,
    errors: BTreeMap<String, u64>,
}

impl StepResult {
    fn sustained(&self) -> bool {
        self.failed_step == 0 && self.listed == self.agents
    }
}

async fn count_listed(control: &mut ControlClient<Channel>) -> (usize, f64) {
    let started = Instant::now();
    let nodes = control
        .list_nodes(v1::ListNodesRequest {})
        .await
        .unwrap_or_else(|s| panic!("ListNodes: {}", s.message()))
        .into_inner()
        .nodes;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let listed = nodes
        .iter()
        .filter(|n| {
            n.spec
                .as_ref()
                .is_some_and(|s| s.name.starts_with("bench-agent-"))
        })
        .count();
    (listed, ms)
}

async fn heartbeat_part(config: &Config, clk: f64, model: &bytes::Bytes) -> Vec<StepResult> {
    let cluster = Cluster::start(&config.strata);
    println!("heartbeat part: {}", cluster.describe());
    let mut control = cluster.control();
    let info = push(&mut control, model, v1::Privacy::Open).await;
    let mut routes = cluster.routes();
    wait_table(&mut routes, info.version, |_| true, "the first version").await;
    let channels = cluster.channels(config.channels);
    let fleet = Arc::new(Fleet::new(config.reg_rate));
    let mut tasks = Tasks(Vec::new());
    let mut results = Vec::new();
    for &n in &config.agents {
        let from = tasks.0.len();
        if n < from {
            continue;
        }
        fleet.reset_step();
        let ramp_started = Instant::now();
        let ramp_before = Snap::take(cluster.pids);
        let ramp_profile = config.perf.as_ref().map(|dir| {
            let expected = Duration::from_secs_f64((n - from) as f64 / config.reg_rate);
            perf(dir, cluster.pids, &format!("ramp-{n}"), expected)
        });
        for index in from..n {
            let channel = channels[index % channels.len()].clone();
            tasks
                .0
                .push(tokio::spawn(agent(index, channel, fleet.clone())));
        }
        while fleet.registered.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ramp_s = ramp_started.elapsed().as_secs_f64();
        let ramp_usage = Usage::between(&ramp_before, &Snap::take(cluster.pids), clk);
        if let Some(mut child) = ramp_profile {
            let _ = child.wait();
        }
        eprintln!(
            "  {n} agents registered in {ramp_s:.1} s; settling {:?}",
            config.settle
        );
        tokio::time::sleep(config.settle).await;

        fleet.window.reset();
        fleet.latencies_us.lock().expect("latency lock").clear();
        let metrics_before = cluster.etcd_metrics();
        let before = Snap::take(cluster.pids);
        fleet.measuring.store(true, Ordering::Relaxed);
        let profile = config
            .perf
            .as_ref()
            .map(|dir| perf(dir, cluster.pids, &n.to_string(), config.window));
        tokio::time::sleep(config.window).await;
        fleet.measuring.store(false, Ordering::Relaxed);
        if let Some(mut child) = profile {
            let _ = child.wait();
        }
        let after = Snap::take(cluster.pids);
        let metrics_after = cluster.etcd_metrics();
        let usage = Usage::between(&before, &after, clk);
        let etcd = EtcdActivity::between(&metrics_before, &metrics_after, usage.wall);
        let (listed, list_ms) = count_listed(&mut control).await;

        let latencies = sorted(
            fleet
                .latencies_us
                .lock()
                .expect("latency lock")
                .iter()
                .map(|us| f64::from(*us) / 1e3)
                .collect(),
        );
        let register_ms = sorted(fleet.register_ms.lock().expect("register lock").clone());
        let result = StepResult {
            agents: n,
            ramp_s,
            register_p50: percentile(&register_ms, 0.5),
            register_p99: percentile(&register_ms, 0.99),
            attempted: fleet.window.attempted.load(Ordering::Relaxed),
            ok: fleet.window.ok.load(Ordering::Relaxed),
            failed_window: fleet.window.failed(),
            failed_step: fleet.step.failed(),
            not_found_step: fleet.step.not_found.load(Ordering::Relaxed),
            hb_p50: percentile(&latencies, 0.5),
            hb_p99: percentile(&latencies, 0.99),
            hb_max: latencies.last().copied().unwrap_or(f64::NAN),
            usage,
            ramp_usage,
            listed,
            list_ms,
            cp_rss: rss_mib(cluster.pids.cp),
            etcd_rss: rss_mib(cluster.pids.etcd),
            etcd,
            errors: fleet.errors.lock().expect("errors lock").clone(),
        };
        eprintln!(
            "  {n} agents: {}/{} heartbeats ok, p50 {:.2} ms, p99 {:.2} ms; CP {:.2} cores, etcd {:.2} cores, bench {:.2} cores; listed {listed}",
            result.ok,
            result.attempted,
            result.hb_p50,
            result.hb_p99,
            result.usage.cores(result.usage.cp),
            result.usage.cores(result.usage.etcd),
            result.usage.cores(result.usage.me),
        );
        let sustained = result.sustained();
        results.push(result);
        if !sustained {
            eprintln!("  {n} agents are not sustained; the ramp stops here");
            break;
        }
    }
    drop(tasks);
    results
}

/// Profiles the control plane and etcd for one window (`perf record` at 99 Hz with call graphs), a
/// diagnostic: it costs some CPU itself.
fn perf(dir: &Path, pids: Pids, label: &str, window: Duration) -> Child {
    std::fs::create_dir_all(dir).expect("create the perf directory");
    Command::new("perf")
        .args(["record", "-F", "99", "-g", "-p"])
        .arg(format!("{},{}", pids.cp, pids.etcd))
        .arg("-o")
        .arg(dir.join(format!("perf-{label}.data")))
        .args(["--", "sleep"])
        .arg(format!("{}", window.as_secs_f64()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run perf (STRATA_BENCH_PERF_DIR is set)")
}

fn print_heartbeat(config: &Config, results: &[StepResult]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "### 1. Heartbeat capacity ({} channels, registration ≤ {}/s, settle {:?}, window {:?}, TTL {NODE_TTL_MS} ms, heartbeat every {:?})",
        config.channels, config.reg_rate, config.settle, config.window, HEARTBEAT_PERIOD
    );
    println!();
    println!(
        "| agents | ramp | register p50 / p99 | heartbeats ok / attempted (window) | failures (window / whole step) | heartbeat p50 | p99 | max | listed by ListNodes | ListNodes |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {:.1} s | {:.1} / {:.1} ms | {} / {} | {} / {} ({} NOT_FOUND) | {:.2} ms | {:.2} ms | {:.1} ms | {} | {:.0} ms |",
            r.agents,
            r.ramp_s,
            r.register_p50,
            r.register_p99,
            r.ok,
            r.attempted,
            r.failed_window,
            r.failed_step,
            r.not_found_step,
            r.hb_p50,
            r.hb_p99,
            r.hb_max,
            r.listed,
            r.list_ms
        );
    }
    println!();
    println!(
        "| agents | control plane | etcd | bench (agents) | other processes | machine busy (steal) | CP per 1,000 agents | CP during the ramp | CP busiest thread | etcd busiest thread | CP RSS | etcd RSS |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|");
    for r in results {
        let u = &r.usage;
        println!(
            "| {} | {:.2} cores | {:.2} cores | {:.2} cores | {:.2} cores | {:.2} ({:.2}) of {cores} cores | {:.3} cores | {:.2} cores | {} {:.2} | {} {:.2} | {:.0} MiB | {:.0} MiB |",
            r.agents,
            u.cores(u.cp),
            u.cores(u.etcd),
            u.cores(u.me),
            u.cores(u.other()),
            u.cores(u.busy),
            u.cores(u.steal),
            u.cores(u.cp) * 1000.0 / r.agents as f64,
            r.ramp_usage.cores(r.ramp_usage.cp),
            u.cp_top_thread.0,
            u.cores(u.cp_top_thread.1),
            u.etcd_top_thread.0,
            u.cores(u.etcd_top_thread.1),
            r.cp_rss,
            r.etcd_rss
        );
    }
    println!();
    println!(
        "| agents | etcd: LeaseKeepAlive messages/s | raft proposals/s | WAL fsyncs/s | mean fsync | slow applies | leases expired |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let e = &r.etcd;
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.2} ms | {:.0} | {:.0} |",
            r.agents, e.keepalives, e.proposals, e.fsyncs, e.fsync_ms, e.slow_applies, e.expired
        );
    }
    for r in results {
        if !r.errors.is_empty() {
            println!();
            println!("errors with {} agents (ramp, settle and window):", r.agents);
            for (what, n) in &r.errors {
                println!("- {n} × {what}");
            }
        }
    }
    let sustained = results
        .iter()
        .filter(|r| r.sustained())
        .map(|r| r.agents)
        .max();
    println!();
    match sustained {
        Some(n) => println!(
            "largest N sustained (no failed heartbeat, all N listed): {n} of {:?}",
            config.agents
        ),
        None => println!("no N was sustained"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Part 2: route fan-out
// ---------------------------------------------------------------------------------------------------------

/// One table a watcher received.
struct Seen {
    at: Instant,
    version: u64,
    nodes: Vec<String>,
}

struct Watchers {
    seen: Vec<Mutex<Vec<Seen>>>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    opening: tokio::sync::Semaphore,
}

async fn watcher(index: usize, channel: Channel, shared: Arc<Watchers>) {
    loop {
        let mut permit = Some(
            shared
                .opening
                .acquire()
                .await
                .expect("the semaphore is never closed"),
        );
        let mut client = RoutesClient::new(channel.clone()).max_decoding_message_size(MAX_DECODE);
        let problem = match client
            .watch_routes(v1::WatchRoutesRequest {
                models: vec![MODEL.into()],
            })
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(v1::RouteUpdate {
                            table: Some(table), ..
                        })) => {
                            let seen = Seen {
                                at: Instant::now(),
                                version: table.version,
                                nodes: table.nodes.into_iter().map(|n| n.id).collect(),
                            };
                            shared.seen[index].lock().expect("seen lock").push(seen);
                            permit.take();
                        }
                        // The end of the snapshot.
                        Ok(Some(_)) => {
                            permit.take();
                        }
                        Ok(None) => break "the server ended the watch".to_string(),
                        Err(s) => break format!("{:?}: {}", s.code(), s.message()),
                    }
                }
            }
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        };
        drop(permit);
        shared.errors.fetch_add(1, Ordering::Relaxed);
        shared
            .first_error
            .lock()
            .expect("error lock")
            .get_or_insert(problem);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Per watcher, the delay from `since` to the first table after `since` that satisfies `ok`; `None` for a
/// watcher that got none within `limit`.
async fn wait_all(
    shared: &Watchers,
    since: Instant,
    limit: Duration,
    ok: impl Fn(&Seen) -> bool,
) -> Vec<Option<Duration>> {
    let mut found: Vec<Option<Duration>> = vec![None; shared.seen.len()];
    loop {
        for (slot, seen) in found.iter_mut().zip(&shared.seen) {
            if slot.is_none() {
                let seen = seen.lock().expect("seen lock");
                *slot = seen
                    .iter()
                    .find(|s| s.at >= since && ok(s))
                    .map(|s| s.at - since);
            }
        }
        if found.iter().all(Option::is_some) || since.elapsed() > limit {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Delivery {
    delivered: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn delivery(found: &[Option<Duration>]) -> Delivery {
    let ms = sorted(
        found
            .iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect(),
    );
    Delivery {
        delivered: ms.len(),
        p50: percentile(&ms, 0.5),
        p99: percentile(&ms, 0.99),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}

struct FanoutResult {
    watchers: usize,
    open_s: f64,
    trigger: &'static str,
    call_ms: f64,
    delivery: Delivery,
    usage: Usage,
    watch_errors: u64,
    first_error: Option<String>,
}

/// What a fan-out trigger starts from: the watch errors and CPU counters before it, and its instant.
struct Trigger {
    errors_before: u64,
    before: Snap,
    t0: Instant,
}

impl Trigger {
    fn start(shared: &Watchers, pids: Pids) -> Trigger {
        Trigger {
            errors_before: shared.errors.load(Ordering::Relaxed),
            before: Snap::take(pids),
            t0: Instant::now(),
        }
    }

    /// The result for `(watchers, open_s, trigger name)`, given the call's duration and each watcher's delay.
    fn finish(
        self,
        shared: &Watchers,
        pids: Pids,
        clk: f64,
        (watchers, open_s, trigger): (usize, f64, &'static str),
        call_ms: f64,
        found: &[Option<Duration>],
    ) -> FanoutResult {
        let after = Snap::take(pids);
        FanoutResult {
            watchers,
            open_s,
            trigger,
            call_ms,
            delivery: delivery(found),
            usage: Usage::between(&self.before, &after, clk),
            watch_errors: shared.errors.load(Ordering::Relaxed) - self.errors_before,
            first_error: shared.first_error.lock().expect("error lock").clone(),
        }
    }
}

/// A simulated edge agent that loads instantly: it follows its assignments and reports every assigned stage
/// ready at once (a heartbeat right after each change, as the real agent does), then every second, until its
/// task is aborted.
async fn instant_agent(channel: Channel, name: &str, port: u16) -> (String, Tasks) {
    let mut control = ControlClient::new(channel);
    let node_id = control
        .register(v1::RegisterRequest {
            spec: Some(v1::NodeSpec {
                tier: v1::Tier::Edge as i32,
                arch: "x86_64".into(),
                cores: 4,
                memory_bytes: 8 << 30,
                backends: vec!["tract".into()],
                address: format!("127.0.0.1:{port}"),
                name: name.to_string(),
            }),
        })
        .await
        .unwrap_or_else(|s| panic!("register {name}: {}", s.message()))
        .into_inner()
        .node_id;
    let id = node_id.clone();
    let task = tokio::spawn(async move {
        let mut stream = control
            .watch_assignments(v1::WatchAssignmentsRequest {
                node_id: id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("watch the assignments of {id}: {}", s.message()))
            .into_inner();
        let mut ready: Vec<String> = Vec::new();
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(assignments)) => {
                        ready = assignments.stages.into_iter().map(|s| s.digest).collect();
                        next = tokio::time::Instant::now();
                    }
                    Ok(None) => panic!("{id}: the assignment watch ended"),
                    Err(s) => panic!("{id}: the assignment watch failed: {}", s.message()),
                },
                _ = tokio::time::sleep_until(next) => {
                    let request = v1::HeartbeatRequest {
                        node_id: id.clone(),
                        load: Some(v1::Load::default()),
                        ready: ready.clone(),
                        ..Default::default()
                    };
                    if let Err(s) = control.heartbeat(request).await {
                        eprintln!("  {id}: heartbeat failed: {}", s.message());
                    }
                    next = tokio::time::Instant::now() + HEARTBEAT_PERIOD;
                }
            }
        }
    });
    (node_id, Tasks(vec![task]))
}

async fn fanout_part(config: &Config, clk: f64, model: &bytes::Bytes) -> Vec<FanoutResult> {
    let cluster = Cluster::start(&config.strata);
    println!("fan-out part: {}", cluster.describe());
    let mut control = cluster.control();
    let mut routes = cluster.routes();
    let mut privacy = v1::Privacy::Open;
    let mut version = push(&mut control, model, privacy).await.version;
    wait_table(&mut routes, version, |_| true, "the first version").await;

    let fleet = Arc::new(Fleet::new(config.reg_rate));
    let mut background = Tasks(Vec::new());
    if config.fanout_agents > 0 {
        let channels = cluster.channels(config.channels);
        for index in 0..config.fanout_agents {
            let channel = channels[index % channels.len()].clone();
            background
                .0
                .push(tokio::spawn(agent(index, channel, fleet.clone())));
        }
        while fleet.registered.load(Ordering::Relaxed) < config.fanout_agents {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("  {} background agents heartbeating", config.fanout_agents);
        tokio::time::sleep(config.settle).await;
    }

    // An edge agent that stays for the whole part: it loads every new version at once, so that a new
    // version's table can replace the old one (the control plane publishes it once its stages are ready).
    let agent_channel = cluster.channels(1).remove(0);
    let (steady_id, _steady) = instant_agent(agent_channel.clone(), "bench-steady", 9_000).await;
    let mut results = Vec::new();
    for (round, &w) in config.watchers.iter().enumerate() {
        // A second ready edge agent, whose death is the route change of trigger (a). (The first edge agent
        // makes the control plane plan for the edge tier too, so the table has edge stages.)
        wait_table(
            &mut routes,
            version,
            |t| !edge_digests(t).is_empty() && t.nodes.iter().any(|n| n.id == steady_id),
            "a table with edge stages that lists the steady edge agent",
        )
        .await;
        let name = format!("bench-victim-{round}");
        let port = 9_001 + round as u16;
        let (node_id, heartbeats) = instant_agent(agent_channel.clone(), &name, port).await;
        wait_table(
            &mut routes,
            version,
            |t| {
                t.nodes.iter().any(|n| n.id == node_id) && t.nodes.iter().any(|n| n.id == steady_id)
            },
            "a table listing both ready edge agents",
        )
        .await;

        // Open the watchers and wait for every initial table.
        let channels = cluster.channels(config.watch_channels);
        let shared = Arc::new(Watchers {
            seen: (0..w).map(|_| Mutex::new(Vec::new())).collect(),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            opening: tokio::sync::Semaphore::new(256),
        });
        let opened = Instant::now();
        let watch_tasks = Tasks(
            (0..w)
                .map(|i| {
                    tokio::spawn(watcher(
                        i,
                        channels[i % channels.len()].clone(),
                        shared.clone(),
                    ))
                })
                .collect(),
        );
        let initial = wait_all(&shared, opened, Duration::from_secs(300), |s| {
            s.version == version && s.nodes.contains(&node_id)
        })
        .await;
        let open_s = opened.elapsed().as_secs_f64();
        let have = initial.iter().flatten().count();
        assert_eq!(
            have,
            w,
            "only {have} of {w} watchers got the initial table within 300 s (watch errors: {}, first: {:?})",
            shared.errors.load(Ordering::Relaxed),
            shared.first_error.lock().expect("error lock")
        );
        eprintln!("  {w} watchers have the initial table after {open_s:.1} s");
        tokio::time::sleep(Duration::from_secs(2)).await;

        // (a) The victim dies: stop its heartbeats and deregister it.
        drop(heartbeats);
        let trigger = Trigger::start(&shared, cluster.pids);
        let t0 = trigger.t0;
        control
            .deregister(v1::DeregisterRequest {
                node_id: node_id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("deregister the ready node: {}", s.message()));
        let call_ms = t0.elapsed().as_secs_f64() * 1e3;
        let found = wait_all(&shared, t0, Duration::from_secs(60), |s| {
            !s.nodes.contains(&node_id)
        })
        .await;
        let what = (w, open_s, "node death (Deregister)");
        results.push(trigger.finish(&shared, cluster.pids, clk, what, call_ms, &found));
        report_fanout(results.last().expect("just pushed"));
        tokio::time::sleep(Duration::from_secs(2)).await;

        // (b) A new model version: the same bytes with another privacy level.
        privacy = if privacy == v1::Privacy::Open {
            v1::Privacy::Features
        } else {
            v1::Privacy::Open
        };
        let trigger = Trigger::start(&shared, cluster.pids);
        let t0 = trigger.t0;
        let pushed = push(&mut control, model, privacy).await.version;
        let call_ms = t0.elapsed().as_secs_f64() * 1e3;
        assert!(
            pushed > version,
            "pushing with privacy {privacy:?} did not create a new version"
        );
        version = pushed;
        let found = wait_all(&shared, t0, Duration::from_secs(120), |s| {
            s.version == version
        })
        .await;
        let what = (w, open_s, "model push (new version)");
        results.push(trigger.finish(&shared, cluster.pids, clk, what, call_ms, &found));
        report_fanout(results.last().expect("just pushed"));
        drop(watch_tasks);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    drop(background);
    results
}

fn report_fanout(r: &FanoutResult) {
    eprintln!(
        "  {} watchers, {}: {}/{} delivered, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        r.watchers,
        r.trigger,
        r.delivery.delivered,
        r.watchers,
        r.delivery.p50,
        r.delivery.p99,
        r.delivery.max
    );
}

fn print_fanout(config: &Config, results: &[FanoutResult]) {
    println!();
    println!(
        "### 2. Route fan-out ({} channels for the watchers, {} background agents; time from the trigger until each watcher has the new table)",
        config.watch_channels, config.fanout_agents
    );
    println!();
    println!(
        "| watchers | trigger | delivered | p50 | p99 | max | trigger RPC | all initial tables after | CP CPU | etcd CPU | bench CPU | other CPU | watch errors |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let u = &r.usage;
        println!(
            "| {} | {} | {} / {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {} |",
            r.watchers,
            r.trigger,
            r.delivery.delivered,
            r.watchers,
            r.delivery.p50,
            r.delivery.p99,
            r.delivery.max,
            r.call_ms,
            r.open_s,
            u.cp,
            u.etcd,
            u.me,
            u.other(),
            r.watch_errors
        );
    }
    for r in results.iter().filter(|r| r.watch_errors > 0) {
        println!(
            "- {} watchers, {}: first watch error: {:?}",
            r.watchers, r.trigger, r.first_error
        );
    }
    println!();
    println!(
        "CPU columns: CPU seconds each process used from the trigger until the last watcher had the new table (or the wait gave up)."
    );
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) only checks that it starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: run with `cargo bench -p strata-control-plane --bench scale`; skipped");
        return;
    }
    let config = Config::from_env();
    assert!(
        config.strata.is_file(),
        "{} is missing: build it first with `cargo build --release -p strata-cli` (or point STRATA_BENCH_BIN at a strata binary)",
        config.strata.display()
    );
    let model = bytes::Bytes::from(std::fs::read(&config.model).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): build the corpus with `python3 corpus/fetch.py`",
            config.model.display()
        )
    }));
    let clk = clock_ticks();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "etcd scale bench: {} ({cores} cores), control plane {}",
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        config.strata.display()
    );
    runtime.block_on(async {
        let heartbeat = if config.heartbeat && !config.agents.is_empty() {
            heartbeat_part(&config, clk, &model).await
        } else {
            Vec::new()
        };
        if !heartbeat.is_empty() {
            print_heartbeat(&config, &heartbeat);
        }
        let fanout = if config.fanout && !config.watchers.is_empty() {
            fanout_part(&config, clk, &model).await
        } else {
            Vec::new()
        };
        if !heartbeat.is_empty() {
            print_heartbeat(&config, &heartbeat);
        }
        if !fanout.is_empty() {
            print_fanout(&config, &fanout);
        }
    });
}
