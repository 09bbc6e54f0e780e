//! The ARM gateway, as far as this x86 machine can run one: the edge agent cross-built for aarch64
//! (`deploy/gateway/cross-build`) runs under qemu user-mode emulation as the edge tier of an x86 cluster. It
//! joins with a token the way the systemd unit of `deploy/gateway/` makes it (STRATA_CONTROL_PLANE and
//! STRATA_JOIN_TOKEN in its environment, credentials into DATA_DIR/tls), receives its edge stage, serves a
//! device's requests (the x86 SDK) with outputs equal to the x86 run, stops gracefully on SIGTERM, and on its
//! next start reuses its certificate instead of the spent token.
//!
//! Needs: `deploy/gateway/cross-build --profile dev` (or release) and Debian's `qemu-user-static`. qemu runs
//! without `-L` (and with no QEMU_LD_PREFIX, its environment twin): the binary's interpreter,
//! /lib/ld-linux-aarch64.so.1, and its libraries come from the multiarch `libc6:arm64` that cross-build
//! installs, so qemu finds them at their real paths.
//!
//! The same test for 32-bit ARM (armhf) is ignored unless asked for (`--run-ignored all`), as CI builds the
//! aarch64 agent only: it needs `deploy/gateway/cross-build --target armv7-unknown-linux-gnueabihf`.

mod sandbox;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sandbox::{Proc, Sandbox, assert_outputs_match, corpus, reference};
use strata_device_sdk::{Constraints, Privacy};
use strata_proto::v1;

/// An ARM target as cross-build builds it and qemu runs it.
struct Arm {
    /// Rust's target triple (the directory under target/).
    triple: &'static str,
    /// Debian's architecture name.
    debian: &'static str,
    qemu: &'static str,
    /// The binary's ELF interpreter, from the multiarch libc6:<debian>.
    loader: &'static str,
    /// ELF e_machine.
    elf_machine: u8,
    /// What the agent reports as its architecture (Rust's `std::env::consts::ARCH`).
    arch: &'static str,
    /// The gateway's join name (its identity becomes `NAME.edge.id.strata`).
    name: &'static str,
}

const AARCH64: Arm = Arm {
    triple: "aarch64-unknown-linux-gnu",
    debian: "arm64",
    qemu: "qemu-aarch64-static",
    loader: "/lib/ld-linux-aarch64.so.1",
    elf_machine: 183, // EM_AARCH64
    arch: "aarch64",
    name: "gw-arm64",
};

const ARMV7: Arm = Arm {
    triple: "armv7-unknown-linux-gnueabihf",
    debian: "armhf",
    qemu: "qemu-arm-static",
    loader: "/lib/ld-linux-armhf.so.3",
    elf_machine: 40, // EM_ARM
    arch: "arm",
    name: "gw-armhf",
};

const MODEL: &str = "squeezenet";
/// Requests per plan that runs a stage on the gateway.
const REQUESTS: usize = 3;
/// Generous: qemu translates every instruction, and tract optimises the stage at load.
const QEMU_TIMEOUT: Duration = Duration::from_secs(240);

impl Arm {
    /// The cross-build command that makes the binary this test needs.
    fn build_hint(&self) -> String {
        match self.debian {
            "arm64" => "deploy/gateway/cross-build --profile dev".to_string(),
            _ => format!(
                "deploy/gateway/cross-build --profile dev --target {}",
                self.triple
            ),
        }
    }

    /// The newest cross-built agent (dev or release); fails, never skips, without one.
    fn agent(&self) -> PathBuf {
        let dir = sandbox::root().join("target").join(self.triple);
        let found = ["debug", "release"]
            .iter()
            .map(|profile| dir.join(profile).join("strata-edge-agent"))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .max();
        let Some((_, bin)) = found else {
            panic!(
                "no {} strata-edge-agent in {}/{{debug,release}}: run {}",
                self.arch,
                dir.display(),
                self.build_hint()
            );
        };
        // ELF, e_machine at byte 18: a host binary copied there would prove nothing.
        let mut header = [0u8; 20];
        let read = std::fs::File::open(&bin).and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut header)
        });
        assert!(
            read.is_ok() && header.starts_with(b"\x7fELF") && header[18] == self.elf_machine,
            "{} is not an {} ELF binary: run {}",
            bin.display(),
            self.arch,
            self.build_hint()
        );
        bin
    }

    /// `qemu-… BIN`, with nothing that would hand qemu a sysroot (`-L`'s twin, QEMU_LD_PREFIX) or the
    /// agent another identity.
    fn under_qemu(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(self.qemu);
        cmd.arg(bin)
            .env_remove("QEMU_LD_PREFIX")
            .env_remove("STRATA_TLS_DIR")
            .env_remove("STRATA_TLS_CA")
            .env_remove("STRATA_TLS_CERT")
            .env_remove("STRATA_TLS_KEY")
            .env_remove("STRATA_INSECURE");
        cmd
    }

    /// The agent, once qemu is found to run it.
    fn preflight(&self) -> PathBuf {
        let bin = self.agent();
        match Command::new(self.qemu).arg("--version").output() {
            Ok(out) if out.status.success() => {}
            _ => panic!("{} is missing: apt-get install qemu-user-static", self.qemu),
        }
        assert!(
            Path::new(self.loader).exists(),
            "{} is missing: the {} C library (libc6:{}) must be installed for qemu to run the agent; \
             deploy/gateway/cross-build installs it (with libstd-rust-web-dev:{}, after \
             `dpkg --add-architecture {}`)",
            self.loader,
            self.arch,
            self.debian,
            self.debian,
            self.debian
        );
        let out = self
            .under_qemu(&bin)
            .arg("--version")
            .output()
            .expect("qemu runs");
        let version = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && version.starts_with("strata-edge-agent "),
            "the {} agent does not run under {}: {version}{}",
            self.arch,
            self.qemu,
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{} under {}: {}", bin.display(), self.qemu, version.trim());
        bin
    }
}

/// The gateway as the unit starts it (control plane and token from the environment, state and
/// credentials in `data`), once it listens; its address.
fn start_gateway(
    arm: &Arm,
    sandbox: &Sandbox,
    bin: &Path,
    data: &Path,
    token: &str,
    run: usize,
) -> (Proc, String) {
    let mut cmd = arm.under_qemu(bin);
    cmd.args([
        "--tier",
        "edge",
        "--listen",
        "127.0.0.1:0",
        "--name",
        arm.name,
    ])
    .arg("--data-dir")
    .arg(data)
    .arg("--tls-dir")
    .arg(data.join("tls"))
    .env("STRATA_CONTROL_PLANE", &sandbox.cp_address)
    .env("STRATA_JOIN_TOKEN", token);
    let log = sandbox
        .dir
        .path()
        .join(format!("{}-run{run}.log", arm.name));
    let started = Instant::now();
    let proc = Proc::spawn(arm.name, cmd, &log);
    let line = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        proc.wait_line("listening on", QEMU_TIMEOUT)
    }))
    .unwrap_or_else(|_| {
        panic!(
            "the {} agent did not start: {}",
            arm.arch,
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let address = line
        .rsplit(' ')
        .next()
        .expect("an address")
        .trim()
        .to_string();
    println!(
        "gateway (run {run}) listening on {address} after {:.1} s under qemu",
        started.elapsed().as_secs_f64()
    );
    (proc, address)
}

/// The registered node called `name`.
fn gateway_node(sandbox: &Sandbox, name: &str) -> Option<v1::NodeInfo> {
    sandbox
        .nodes()
        .into_iter()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.name == name))
}

/// SIGTERM, as systemd stops the unit; the agent must exit cleanly well within its TimeoutStopSec (75 s).
fn stop_gracefully(proc: &mut Proc) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(proc.child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        if let Some(status) = proc.child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "the gateway exited with {status} on SIGTERM"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop within 75 s of SIGTERM (the unit's TimeoutStopSec)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints tract's speed on the gateway under qemu (GFLOP/s of each edge stage, from the compute times the
/// agent reported) beside tract's on this x86 host (the whole model, loaded once, run three times). A sanity
/// figure, not a benchmark: qemu translates every ARM instruction, NEON included.
fn sanity_figure(arm: &Arm, plans: &[&v1::Plan], figures: Vec<(String, f64, Vec<f64>)>) {
    use strata_runtime::{Backend, TractBackend};
    let want = reference(MODEL);
    let model_gflops: f64 = plans[0].stages.iter().map(|s| s.flops / 1e9).sum();
    let bytes = std::fs::read(corpus(&format!("{MODEL}.onnx"))).expect("model");
    let shapes = want
        .inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.clone()))
        .collect();
    let stage = TractBackend.load(&bytes, &shapes).expect("load on x86");
    let mut x86_ms: Vec<f64> = (0..3)
        .map(|_| {
            let started = Instant::now();
            stage.run(&want.inputs).expect("run on x86");
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let x86_ms = median(&mut x86_ms);
    println!("sanity figure, not a benchmark (tract, one request at a time):");
    for (plan, gflops, mut ms) in figures {
        let ms = median(&mut ms);
        println!(
            "  {} under qemu-user, plan {plan}'s edge stage: {gflops:.3} GFLOPs in {ms:.0} ms (median), \
             {:.2} GFLOP/s",
            arm.arch,
            gflops / (ms / 1000.0)
        );
    }
    println!(
        "  x86_64 native, this host: whole {MODEL}, {model_gflops:.3} GFLOPs in {x86_ms:.1} ms (median of 3), \
         {:.2} GFLOP/s",
        model_gflops / (x86_ms / 1000.0)
    );
}

#[test]
fn aarch64_agent_under_qemu_joins_serves_its_edge_stage_and_matches_x86() {
    gateway_under_qemu(&AARCH64);
}

#[test]
#[ignore = "needs deploy/gateway/cross-build --target armv7-unknown-linux-gnueabihf, which CI does not run"]
fn armv7_agent_under_qemu_joins_serves_its_edge_stage_and_matches_x86() {
    gateway_under_qemu(&ARMV7);
}

fn gateway_under_qemu(arm: &Arm) {
    let bin = arm.preflight();
    let test_started = Instant::now();

    // An x86 control plane and cloud agent (mutual TLS), and the model; the edge tier is the gateway alone.
    let sandbox = Sandbox::start(&["cloud"], 6000);
    sandbox.push(&corpus(&format!("{MODEL}.onnx")), MODEL, "features");
    let token = {
        let out = sandbox.strata(&["token", "create", "--tier", "edge", "--uses", "1"]);
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let data = sandbox.dir.path().join("gateway");
    let (mut gateway, address) = start_gateway(arm, &sandbox, &bin, &data, &token, 1);

    // It joined (its certificate is on disk, from the single-use token) and registered as an ARM edge node.
    assert!(
        data.join("tls/cert.pem").exists() && data.join("tls/key.pem").exists(),
        "the gateway's credentials are not in DATA_DIR/tls"
    );
    let registered = Instant::now();
    sandbox.wait_until("the gateway registered", QEMU_TIMEOUT, |s| {
        gateway_node(s, arm.name).is_some()
    });
    let node = gateway_node(&sandbox, arm.name).expect("the gateway node");
    let spec = node.spec.as_ref().expect("a node spec");
    assert_eq!(spec.arch, arm.arch, "{spec:?}");
    assert_eq!(spec.tier, v1::Tier::Edge as i32, "{spec:?}");

    // Its edge stages are loaded and routed: every plan's edge stage lists it, every cloud stage a node.
    let mut table = None;
    sandbox.wait_until("the gateway serves its edge stages", QEMU_TIMEOUT, |s| {
        table = s.routes(MODEL);
        table.as_ref().is_some_and(|t| {
            let stages: Vec<&v1::Stage> = t.plans.iter().flat_map(|p| &p.stages).collect();
            stages.iter().any(|st| st.tier == v1::Tier::Edge as i32)
                && stages.iter().all(|st| match v1::Tier::try_from(st.tier) {
                    Ok(v1::Tier::Edge) => st.nodes.contains(&node.id),
                    Ok(v1::Tier::Cloud) => !st.nodes.is_empty(),
                    _ => true,
                })
        })
    });
    let table = table.expect("a route table");
    println!(
        "gateway registered and its edge stages ready {:.1} s after it listened",
        registered.elapsed().as_secs_f64()
    );
    let status = sandbox.status(&address);
    assert_eq!(status.node_id, node.id);
    assert!(status.control_plane_connected, "{status:?}");

    // A device (the x86 SDK, with a device certificate) runs every plan that has an edge stage, forced, so
    // the gateway computes and, in three-tier plans, forwards to the x86 cloud agent.
    let want = reference(MODEL);
    let client = sandbox.client(std::slice::from_ref(&sandbox.cp_address));
    let plans: Vec<&v1::Plan> = table
        .plans
        .iter()
        .filter(|p| p.stages.iter().any(|s| s.tier == v1::Tier::Edge as i32))
        .collect();
    assert!(!plans.is_empty(), "no plan runs on the edge: {table:?}");
    let mut served = 0;
    // Per plan: the edge stage's GFLOPs and its compute times on the gateway.
    let mut figures: Vec<(String, f64, Vec<f64>)> = Vec::new();
    for plan in &plans {
        let edge_gflops: f64 = plan
            .stages
            .iter()
            .filter(|s| s.tier == v1::Tier::Edge as i32)
            .map(|s| s.flops / 1e9)
            .sum();
        let mut edge_ms = Vec::new();
        for i in 0..REQUESTS {
            let started = Instant::now();
            let r = sandbox
                .runtime
                .block_on(client.infer(
                    MODEL,
                    want.inputs.clone(),
                    Constraints {
                        privacy: Some(Privacy::Features),
                        plan: Some(plan.id.clone()),
                        ..Constraints::default()
                    },
                ))
                .unwrap_or_else(|e| {
                    panic!(
                        "plan {} request {i}: {e}\n{}",
                        plan.id,
                        sandbox.log_tails(20)
                    )
                });
            let wall = started.elapsed();
            assert_outputs_match(
                &r.outputs,
                &want.outputs,
                &format!("{MODEL} plan {} through the {} gateway", plan.id, arm.arch),
            );
            let tiers: Vec<&str> = r.stages.iter().map(|s| s.tier).collect();
            let edge = r
                .stages
                .iter()
                .find(|s| s.tier == "edge")
                .unwrap_or_else(|| panic!("plan {} ran no edge stage: {tiers:?}", plan.id));
            assert_eq!(
                edge.node.as_deref(),
                Some(node.id.as_str()),
                "the edge stage ran elsewhere: {r:?}"
            );
            edge_ms.push(edge.compute_ms);
            served += 1;
            println!(
                "plan {} ({}): {:.0} ms end to end; edge stage computed in {:.1} ms under qemu",
                plan.id,
                tiers.join(" -> "),
                wall.as_secs_f64() * 1000.0,
                edge.compute_ms
            );
        }
        figures.push((plan.id.clone(), edge_gflops, edge_ms));
    }
    assert!(sandbox.status(&address).requests_served >= served as u64);
    sanity_figure(arm, &plans, figures);

    // systemd's stop: SIGTERM, a clean exit; the next start finds its certificate and does not join again
    // (the token was single-use: joining again would fail), and registers under the same identity.
    stop_gracefully(&mut gateway);
    sandbox.wait_until("the stopped gateway left the nodes", QEMU_TIMEOUT, |s| {
        gateway_node(s, arm.name).is_none()
    });
    let (_gateway, _address) = start_gateway(arm, &sandbox, &bin, &data, &token, 2);
    sandbox.wait_until("the restarted gateway registered", QEMU_TIMEOUT, |s| {
        gateway_node(s, arm.name).is_some()
    });
    let log = std::fs::read_to_string(sandbox.dir.path().join(format!("{}-run2.log", arm.name)))
        .unwrap_or_default();
    assert!(
        log.contains("already joined"),
        "the restarted gateway did not reuse its certificate:\n{log}"
    );
    println!(
        "test wall time {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
}
