//! The container images (`deploy/image/`): built FROM scratch with buildah from this build's binaries, then
//! run as a container would be — `--version` of each binary inside its image, and the agent image serving a
//! stage of a real model for a control plane on the host, as the non-root user, with its certificate mounted
//! the way a Kubernetes Secret would be. Needs buildah (scripts/setup.sh installs it) and root (buildah's vfs
//! storage with chroot isolation).

mod sandbox;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use sandbox::{Sandbox, assert_outputs_match, corpus, reference};

/// Where the test builds its images (apart from `target/images`, which `deploy/image/build` writes by default).
fn out_dir() -> PathBuf {
    sandbox::strata_bin()
        .parent()
        .and_then(Path::parent)
        .expect("the target directory")
        .join("images-test")
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The cargo profile the tests were built with (`dev` or `release`), which the images are built from.
fn profile() -> String {
    let profile_dir = sandbox::strata_bin()
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .expect("profile directory")
        .to_string();
    if profile_dir == "debug" {
        "dev".to_string()
    } else {
        profile_dir
    }
}

/// Runs `deploy/image/build` with `args` into `out`, and fails the test with its output if it fails.
fn image_build(out: &Path, args: &[&str]) {
    assert!(
        Command::new("buildah").arg("--version").output().is_ok(),
        "buildah is missing: run scripts/setup.sh"
    );
    let result = Command::new(sandbox::root().join("deploy/image/build"))
        .args(["--profile", &profile(), "--out"])
        .arg(out)
        .args(args)
        .output()
        .expect("deploy/image/build runs");
    assert!(
        result.status.success(),
        "deploy/image/build failed:\n{}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Builds both images once, from the binaries the tests run (`--no-build`: a plain `cargo build` would
/// build another set, its features unified without the tests' dev-dependencies).
fn build_images() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        sandbox::agent_bin();
        let out = out_dir();
        image_build(&out, &["--no-build"]);
        out
    })
}

/// `buildah` on the test's private store.
fn buildah(args: &[&str]) -> Output {
    buildah_in(build_images(), args)
}

/// `buildah` on the private store under `out`.
fn buildah_in(out: &Path, args: &[&str]) -> Output {
    Command::new("buildah")
        .arg("--root")
        .arg(out.join("storage"))
        .arg("--runroot")
        .arg(out.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("buildah runs")
}

/// A working container in the buildah store under `out`, removed on drop.
struct Container {
    id: String,
    out: PathBuf,
}

impl Container {
    /// A container of `image` in the test's store.
    fn of(image: &str) -> Container {
        Container::from(build_images(), &[&format!("strata/{image}:{}", version())])
    }

    /// `buildah from FROM_ARGS` in the store under `out`.
    fn from(out: &Path, from_args: &[&str]) -> Container {
        let mut args = vec!["from"];
        args.extend_from_slice(from_args);
        let from = buildah_in(out, &args);
        assert!(
            from.status.success(),
            "buildah from: {}",
            String::from_utf8_lossy(&from.stderr)
        );
        Container {
            id: String::from_utf8_lossy(&from.stdout).trim().to_string(),
            out: out.to_path_buf(),
        }
    }

    /// `buildah run` arguments for a command in this container.
    fn run_args<'a>(&'a self, extra: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--isolation", "chroot"];
        args.extend_from_slice(extra);
        args.push(&self.id);
        args.push("--");
        args.extend_from_slice(command);
        args
    }

    /// Runs `command` in this container (`extra`: `buildah run` options).
    fn run(&self, extra: &[&str], command: &[&str]) -> Output {
        buildah_in(&self.out, &self.run_args(extra, command))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = buildah_in(&self.out, &["rm", &self.id]);
    }
}

/// One test, so that one build serves both checks (a second process rebuilding the images would remove the
/// first one's containers).
#[test]
fn the_images_are_small_non_root_and_shell_less_and_the_agent_image_serves_a_stage() {
    each_image_is_small_runs_its_binary_as_non_root_and_has_no_shell();
    the_agent_image_serves_a_stage_for_a_control_plane_on_the_host();
}

/// The aarch64 images, from `deploy/gateway/cross-build`'s binaries (CI cross-builds both before the tests),
/// run their binaries inside their own root filesystems under qemu user-mode emulation (bind-mounted in: this
/// machine has no binfmt_misc registration, and the images must not carry qemu). Inside a container the loader
/// can find only the image's own libraries, so this fails if a library is missing or staged where an ARM
/// machine's loader would not look. The `strata` image also plans a real model there, as a control plane's
/// planner would.
#[test]
fn the_arm64_images_run_their_binaries_under_qemu_with_only_their_own_libraries() {
    let out = out_dir().with_file_name("images-test-arm64");
    for image in ["strata", "strata-edge-agent"] {
        let binary = sandbox::root().join(format!(
            "target/aarch64-unknown-linux-gnu/{}/{image}",
            if profile() == "dev" {
                "debug"
            } else {
                "release"
            }
        ));
        assert!(
            binary.exists(),
            "{} is missing: run deploy/gateway/cross-build --profile {} --bins strata-edge-agent,strata",
            binary.display(),
            profile()
        );
    }
    image_build(&out, &["--arch", "arm64"]);
    let qemu = which("qemu-aarch64-static");
    let mount = format!("{}:/qemu:ro", qemu.display());
    for image in ["strata", "strata-edge-agent"] {
        let tag = format!("strata/{image}:{}", version());
        let config = buildah_in(
            &out,
            &[
                "inspect",
                "--format",
                "{{.OCIv1.Architecture}} {{.OCIv1.Config.User}} {{index .OCIv1.Config.Entrypoint 0}}",
                &tag,
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&config.stdout).trim(),
            format!("arm64 65532:65532 /usr/bin/{image}")
        );
        let archive = out.join(format!("{image}-{}-arm64.oci.tar", version()));
        let size = std::fs::metadata(&archive)
            .unwrap_or_else(|e| panic!("{}: {e}", archive.display()))
            .len();
        assert!(size < 40 << 20, "the arm64 {image} archive is {size} bytes");
        let container = Container::from(&out, &["--arch", "arm64", &tag]);
        let binary = format!("/usr/bin/{image}");
        let ran = container.run(&["-v", &mount], &["/qemu", &binary, "--version"]);
        assert!(
            ran.status.success(),
            "the arm64 {image} in its image: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&ran.stdout).trim(),
            format!("{image} {}", version())
        );
        let shell = container.run(&["-v", &mount], &["/qemu", "/bin/sh", "-c", "id"]);
        assert!(
            !shell.status.success(),
            "the arm64 {image} image has a shell"
        );
        if image == "strata" {
            // The planner and tract on ARM: inspect a real model mounted into the container.
            let model = format!("{}:/model.onnx:ro", corpus("squeezenet.onnx").display());
            let inspected = container.run(
                &["-v", &mount, "-v", &model],
                &["/qemu", &binary, "inspect", "/model.onnx"],
            );
            let text = String::from_utf8_lossy(&inspected.stdout);
            assert!(
                inspected.status.success(),
                "strata inspect in the arm64 image: {text}{}",
                String::from_utf8_lossy(&inspected.stderr)
            );
            // The same analysis as this machine's build (all but the first line, which names the path).
            let host = Command::new(sandbox::strata_bin())
                .arg("inspect")
                .arg(corpus("squeezenet.onnx"))
                .output()
                .expect("strata inspect runs");
            let host = String::from_utf8_lossy(&host.stdout);
            let body = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
            assert!(text.contains("Conv"), "{text}");
            assert_eq!(body(&text), body(&host), "arm64 and x86 analyses differ");
        }
    }
}

/// `name`'s path in PATH, or a failed test that says what to install.
fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is missing: run scripts/setup.sh (qemu-user-static)"))
}

fn each_image_is_small_runs_its_binary_as_non_root_and_has_no_shell() {
    let out = build_images();
    for (image, binary) in [
        ("strata", "/usr/bin/strata"),
        ("strata-edge-agent", "/usr/bin/strata-edge-agent"),
    ] {
        let archive = out.join(format!("{image}-{}-amd64.oci.tar", version()));
        let size = std::fs::metadata(&archive)
            .unwrap_or_else(|e| panic!("{}: {e}", archive.display()))
            .len();
        assert!(
            size < 40 << 20,
            "{image}'s archive is {size} bytes: more than a FROM-scratch image of one binary should be"
        );
        let config = buildah(&[
            "inspect",
            "--format",
            "{{.OCIv1.Config.User}} {{index .OCIv1.Config.Entrypoint 0}}",
            &format!("strata/{image}:{}", version()),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&config.stdout).trim(),
            format!("65532:65532 {binary}"),
            "{image}'s user and entrypoint"
        );
        let container = Container::of(image);
        let ran = container.run(&[], &[binary, "--version"]);
        assert!(
            ran.status.success(),
            "{image} --version: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&ran.stdout).trim(),
            format!("{image} {}", version())
        );
        let whoami = container.run(&[], &["/bin/sh", "-c", "id"]);
        assert!(!whoami.status.success(), "{image} has a shell");
        // Nothing in the root filesystem but the binary, its libraries, certificates and identities.
        let rootfs = out.join(format!("context/{image}-amd64/rootfs"));
        for forbidden in ["bin/sh", "usr/bin/apt", "usr/bin/dpkg", "bin/bash"] {
            assert!(
                !rootfs.join(forbidden).exists(),
                "{image} carries {forbidden}"
            );
        }
        assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").exists());
    }
}

fn the_agent_image_serves_a_stage_for_a_control_plane_on_the_host() {
    build_images();
    let sandbox = Sandbox::start(&["cloud"], 3000);
    // The agent's certificate, readable by the container's user as a Secret volume would make it.
    let issued = sandbox
        .credentials(
            strata_trust::Role::Node(strata_core::Tier::Edge),
            "image-edge",
        )
        .expect("the sandbox runs TLS");
    let secret = sandbox.dir.path().join("image-edge-secret");
    std::fs::create_dir_all(&secret).expect("secret dir");
    for file in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::copy(issued.join(file), secret.join(file)).expect("copy");
    }
    let chown = Command::new("chown")
        .args(["-R", "65532:65532"])
        .arg(&secret)
        .status()
        .expect("chown runs");
    assert!(chown.success());

    let container = Container::of("strata-edge-agent");
    let volume = format!("{}:/etc/strata/tls:ro", secret.display());
    let out = build_images();
    let mut cmd = Command::new("buildah");
    cmd.arg("--root")
        .arg(out.join("storage"))
        .arg("--runroot")
        .arg(out.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(container.run_args(
            &["--volume", &volume, "--env", "RUST_LOG=info"],
            &[
                "/usr/bin/strata-edge-agent",
                "--tier",
                "edge",
                "--control-plane",
                &sandbox.cp_address,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                "/var/lib/strata-edge-agent",
                "--tls-dir",
                "/etc/strata/tls",
                "--no-renew",
            ],
        ));
    let mut agent = sandbox::Proc::spawn(
        "image-edge",
        cmd,
        &sandbox.dir.path().join("image-edge.log"),
    );
    let line = agent.wait_line("listening on", Duration::from_secs(60));
    let address = line.rsplit(' ').next().expect("address").to_string();

    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "features");
    let table = sandbox.wait_served("squeezenet", 1);
    assert!(
        table
            .plans
            .iter()
            .flat_map(|p| &p.stages)
            .any(|s| s.tier == strata_proto::v1::Tier::Edge as i32),
        "squeezenet has an edge stage for the container to serve"
    );
    let input = format!(
        "data_0={}",
        corpus("squeezenet.inputs/data_0.npy").display()
    );
    let outputs = sandbox.dir.path().join("out");
    let device = sandbox.device_tls();
    let ran = sandbox::infer(
        &address,
        "squeezenet",
        &input,
        &outputs,
        &["--latency-ms", "60000"],
        device.as_deref(),
    );
    assert!(
        ran.status.success(),
        "infer through the containerised agent: {}\n{}",
        String::from_utf8_lossy(&ran.stderr),
        sandbox.log_tails(20)
    );
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(stdout.contains("edge("), "split through the edge: {stdout}");
    let got = strata_runtime::npy::decode(
        &std::fs::read(outputs.join("softmaxout_1.npy")).expect("output"),
    )
    .expect("npy");
    assert_outputs_match(
        &[("softmaxout_1".to_string(), got)],
        &reference("squeezenet").outputs,
        "the containerised edge agent",
    );
    let served = sandbox.status(&address);
    assert!(served.requests_served >= 1, "{served:?}");
    // SIGTERM to the agent itself, as a container runtime sends it to PID 1 (buildah forwards signals as
    // SIGKILL, so it is not the one to send it): the agent deregisters at once and exits cleanly.
    let pids = Command::new("pgrep")
        .args([
            "-u",
            "65532",
            "-f",
            "^/usr/bin/strata-edge-agent --tier edge",
        ])
        .output()
        .expect("pgrep runs");
    let pids = String::from_utf8_lossy(&pids.stdout).to_string();
    let pid = pids
        .lines()
        .next()
        .unwrap_or_else(|| panic!("the containerised agent's process is not found"));
    let stopped_at = std::time::Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let status = agent.child.wait().expect("wait");
    assert!(status.success(), "the agent's exit: {status:?}");
    assert!(
        sandbox
            .nodes()
            .iter()
            .all(|n| n.spec.as_ref().is_none_or(|s| s.name != "image-edge")),
        "deregistered on the way out, not left to expire"
    );
    assert!(stopped_at.elapsed() < Duration::from_secs(3));
}
