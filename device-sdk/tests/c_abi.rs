//! The C ABI: builds `examples/c/infer.c` with gcc against the static library, runs it on a real cluster
//! (`strata up`) and compares its output with the whole model run locally; plus the clean failures of the
//! exported functions on bad arguments, called directly.

// The direct calls below are calls of `unsafe extern "C"` functions with deliberately bad arguments.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CStr, c_char};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use strata_device_sdk::ffi::*;
use strata_runtime::{Backend, TractBackend, npy};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/<profile>`: the test binary is `target/<profile>/deps/c_abi-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lies in <target>/<profile>/deps")
        .to_path_buf()
}

/// The static library that the test build itself made: cargo builds every crate type of this crate's library
/// (rlib, cdylib, staticlib) for its integration tests, into `<target>/<profile>/deps/` (a plain `cargo build`
/// also copies it up to `<target>/<profile>/`). No nested `cargo build`: it would resolve features for this
/// crate alone and rebuild most of the dependency tree.
fn static_lib() -> PathBuf {
    let dir = profile_dir();
    let candidates = [
        dir.join("deps").join("libstrata_device_sdk.a"),
        dir.join("libstrata_device_sdk.a"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the static library is missing from {} and {}: build the tests with cargo \
                 (`cargo nextest run --workspace` or `cargo test -p strata-device-sdk`)",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// Compiles and links the example C program against the static library.
fn build_c_program(out_dir: &Path) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = out_dir.join("infer");
    let output = Command::new("gcc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-I",
        ])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("examples/c/infer.c"))
        .arg(static_lib())
        // What `rustc --print native-static-libs` lists for this crate on Linux. The asm kernels of
        // tract-linalg carry no .note.GNU-stack: say that the stack is not executable.
        .args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
            "-Wl,-z,noexecstack",
        ])
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("gcc must be installed to test the C ABI");
    assert!(
        output.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// A `strata up` cluster, killed when dropped (also when the test panics).
struct Cluster {
    child: Child,
    endpoint: String,
    stderr: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    fn start(data_dir: &Path, model: &Path) -> Cluster {
        let strata = profile_dir().join("strata");
        assert!(
            strata.exists(),
            "{} is missing: build the workspace first (`cargo build --workspace` or `cargo build -p strata-cli`)",
            strata.display()
        );
        std::fs::create_dir_all(data_dir).expect("create the cluster's data directory");
        let stderr = data_dir.join("strata-up.stderr");
        let child = Command::new(&strata)
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--model"])
            .arg(model)
            .env("STRATA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create the stderr file"))
            .spawn()
            .expect("strata up starts");
        let mut cluster = Cluster {
            child,
            endpoint: String::new(),
            stderr,
        };
        // Read stdout on a thread (draining it until the child exits) so that waiting can time out.
        let stdout = cluster.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(180))
                .unwrap_or_else(|e| {
                    panic!(
                        "strata up: no `is served` line ({e}); stdout so far: {seen:?}; stderr: {}",
                        cluster.stderr_text()
                    )
                });
            if let Some(rest) = line.strip_prefix("control plane") {
                cluster.endpoint = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
            let served = line.contains("is served");
            seen.push(line);
            if served {
                break;
            }
        }
        assert!(
            cluster.endpoint.starts_with("127.0.0.1:"),
            "no control-plane address in {seen:?}"
        );
        cluster
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn c_program_runs_squeezenet_on_a_cluster_like_rust_locally() {
    let model = repo_root().join("corpus/models/squeezenet.onnx");
    let sample = repo_root().join("corpus/models/squeezenet.inputs/data_0.npy");
    assert!(
        model.exists() && sample.exists(),
        "{} or its sample input is missing: build the corpus with `python3 corpus/fetch.py`",
        model.display()
    );
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let program = build_c_program(tmp.path());

    // The reference: the whole model, locally.
    let input =
        npy::decode(&std::fs::read(&sample).expect("read the sample")).expect("decode the sample");
    assert_eq!(input.shape, [1, 3, 224, 224]);
    let model_bytes = std::fs::read(&model).expect("read the model");
    let stage = TractBackend
        .load(&model_bytes, &HashMap::new())
        .expect("tract loads squeezenet");
    let first_output = stage.output_names()[0].clone();
    let mut reference = stage
        .run(&HashMap::from([("data_0".to_string(), input.clone())]))
        .expect("squeezenet runs locally");
    let reference = reference
        .remove(&first_output)
        .expect("the first output")
        .to_f64();
    let raw_input = tmp.path().join("data_0.f32");
    std::fs::write(&raw_input, &input.data).expect("write the raw input");

    let cluster = Cluster::start(&tmp.path().join("cluster"), &model);
    for privacy in [STRATA_PRIVACY_FEATURES, STRATA_PRIVACY_OPEN] {
        let out_file = tmp.path().join(format!("out-{privacy}.f32"));
        let run = Command::new(&program)
            // `strata up` serves mutual TLS; its administrator's material is beside its data.
            .env("STRATA_TLS_DIR", tmp.path().join("cluster/tls/admin"))
            .args([cluster.endpoint.as_str(), "squeezenet", "data_0"])
            .arg(&raw_input)
            .arg("1,3,224,224")
            .arg(&out_file)
            .arg(privacy.to_string())
            .output()
            .expect("the C program runs");
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        println!("privacy {privacy}:\n{stdout}");
        assert!(
            run.status.success(),
            "privacy {privacy}: the C program failed ({}):\nstdout: {stdout}\nstderr: {stderr}\ncluster stderr: {}",
            run.status,
            cluster.stderr_text()
        );
        for needle in [
            "plan ",
            "total_ms ",
            "error-path check passed: STRATA_ERR_INVALID_INPUT: ",
            "no_such_input",
            "null-client check passed: STRATA_ERR_INVALID_ARGUMENT: client is NULL",
        ] {
            assert!(
                stdout.contains(needle),
                "privacy {privacy}: no \"{needle}\" in:\n{stdout}"
            );
        }
        // The counters (strata_client_counters): one request served, one refused.
        let counters: std::collections::HashMap<&str, f64> = stdout
            .lines()
            .find_map(|l| l.strip_prefix("counters "))
            .unwrap_or_else(|| panic!("privacy {privacy}: no counters line in:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|kv| (kv[0], kv[1].parse().expect("a number")))
            .collect();
        assert_eq!(
            (
                counters["requests"],
                counters["succeeded"],
                counters["failed"]
            ),
            (2.0, 1.0, 1.0),
            "privacy {privacy}: {counters:?}"
        );
        assert_eq!(counters["on_device"] + counters["offloaded"], 1.0);
        assert_eq!(
            counters["offloaded"] == 1.0,
            counters["bytes_sent"] > 0.0 && counters["bytes_received"] > 0.0,
            "privacy {privacy}: bytes move exactly when a stage ran on an agent: {counters:?}"
        );
        assert!(counters["latency_ms"] > 0.0, "{counters:?}");
        let got = f32s(&std::fs::read(&out_file).expect("the C program wrote its output"));
        assert_eq!(
            got.len(),
            reference.len(),
            "privacy {privacy}: output length"
        );
        for (i, (&a, &b)) in got.iter().zip(&reference).enumerate() {
            let a = a as f64;
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "privacy {privacy}: element {i}: C gave {a}, local tract {b}"
            );
        }
    }
}

fn last_error() -> String {
    // SAFETY: `strata_last_error` never returns NULL and the string lives until the next call.
    unsafe { CStr::from_ptr(strata_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A client for an address nothing listens on: every check below fails before the network.
fn offline_client() -> *mut StrataClient {
    let mut client = std::ptr::null_mut();
    // SAFETY: valid string and out pointer.
    let status = unsafe { strata_client_new(c"127.0.0.1:1".as_ptr(), &mut client) };
    assert_eq!(status, STRATA_OK, "{}", last_error());
    assert!(!client.is_null());
    client
}

fn tensor(name: &CStr, dtype: i32, shape: &[i64], data: &[u8]) -> StrataTensor {
    StrataTensor {
        name: name.as_ptr(),
        dtype,
        shape: shape.as_ptr(),
        rank: shape.len(),
        data: data.as_ptr().cast(),
        data_len: data.len(),
    }
}

fn infer_status(
    client: *mut StrataClient,
    inputs: &[StrataTensor],
    c: Option<&StrataConstraints>,
) -> i32 {
    let mut out = std::ptr::NonNull::<StrataResult>::dangling().as_ptr();
    let c = c.map_or(std::ptr::null(), |c| c as *const StrataConstraints);
    // SAFETY: every pointer is valid or NULL; the tensors' lengths are checked by the callee.
    let status = unsafe {
        strata_infer(
            client,
            c"m".as_ptr(),
            inputs.as_ptr(),
            inputs.len(),
            c,
            &mut out,
        )
    };
    assert!(out.is_null(), "a failed call leaves *out NULL");
    status
}

#[test]
fn bad_arguments_are_clean_errors() {
    // SAFETY (whole test): every pointer is NULL or valid; bad values are what is being tested.
    let mut client = std::ptr::null_mut();
    assert_eq!(
        unsafe { strata_client_new(std::ptr::null(), &mut client) },
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert_eq!(last_error(), "endpoints is NULL");
    let bad_utf8: &[u8] = b"127.0.0.1:\xff\0";
    let status = unsafe { strata_client_new(bad_utf8.as_ptr().cast::<c_char>(), &mut client) };
    assert_eq!(status, STRATA_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("not valid UTF-8"), "{}", last_error());
    assert_eq!(
        unsafe { strata_client_new(c" , ".as_ptr(), &mut client) },
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(client.is_null());
    assert_eq!(
        unsafe { strata_client_new(c"x".as_ptr(), std::ptr::null_mut()) },
        STRATA_ERR_INVALID_ARGUMENT
    );
    // TLS material: all three paths or none; a missing file is named.
    let tls = |ca: *const c_char, cert: *const c_char, key: *const c_char, out| unsafe {
        strata_client_new_tls(
            c"127.0.0.1:1".as_ptr(),
            std::ptr::null(),
            0,
            ca,
            cert,
            key,
            out,
        )
    };
    let null = std::ptr::null();
    assert_eq!(
        tls(c"ca.pem".as_ptr(), null, null, &mut client),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("all three"), "{}", last_error());
    assert_eq!(
        tls(
            c"/nonexistent/ca.pem".as_ptr(),
            c"/nonexistent/cert.pem".as_ptr(),
            c"/nonexistent/key.pem".as_ptr(),
            &mut client
        ),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("/nonexistent/ca.pem"),
        "{}",
        last_error()
    );
    assert!(client.is_null());
    assert_eq!(tls(null, null, null, &mut client), STRATA_OK, "plain");
    unsafe { strata_client_free(client) };

    let client = offline_client();
    let data = [0u8; 24];
    let shape = [2, 3];
    let ok = tensor(c"x", 1, &shape, &data);
    assert_eq!(
        unsafe { strata_prepare(client, std::ptr::null()) },
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert_eq!(last_error(), "model is NULL");

    let short = tensor(c"x", 1, &shape, &data[..20]);
    assert_eq!(
        infer_status(client, &[short], None),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("needs 24 bytes (6 elements x 4 bytes), but data_len is 20"),
        "{}",
        last_error()
    );
    let unknown_dtype = tensor(c"x", 99, &shape, &data);
    assert_eq!(
        infer_status(client, &[unknown_dtype], None),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("unknown dtype code 99"),
        "{}",
        last_error()
    );
    let negative = tensor(c"x", 1, &[-2, 3], &data);
    assert_eq!(
        infer_status(client, &[negative], None),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("negative dimension"),
        "{}",
        last_error()
    );
    let null_data = StrataTensor {
        data: std::ptr::null(),
        ..ok
    };
    assert_eq!(
        infer_status(client, &[null_data], None),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("data is NULL"), "{}", last_error());
    let null_name = StrataTensor {
        name: std::ptr::null(),
        ..ok
    };
    assert_eq!(
        infer_status(client, &[null_name], None),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert_eq!(last_error(), "inputs[0].name is NULL");
    assert_eq!(
        infer_status(client, &[ok, ok], None),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("given twice"), "{}", last_error());
    let privacy = StrataConstraints {
        latency_ms: 0.0,
        energy_mj: 0.0,
        privacy: 9,
        objective: 0,
        local_only: 0,
    };
    assert_eq!(
        infer_status(client, &[ok], Some(&privacy)),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("unknown privacy code 9"),
        "{}",
        last_error()
    );
    let objective = StrataConstraints {
        objective: 7,
        local_only: 0,
        privacy: 0,
        ..privacy
    };
    assert_eq!(
        infer_status(client, &[ok], Some(&objective)),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert!(
        last_error().contains("unknown objective code 7"),
        "{}",
        last_error()
    );
    // A budget is 0 (none) or a finite number > 0: a negative or NaN one is refused, not read as "none".
    for (latency_ms, energy_mj, needle) in [
        (-5.0, 0.0, "latency budget -5 ms is not a budget"),
        (f64::NAN, 0.0, "latency budget NaN ms is not a budget"),
        (0.0, -1.0, "energy budget -1 mJ is not a budget"),
        (0.0, f64::NAN, "energy budget NaN mJ is not a budget"),
    ] {
        let budget = StrataConstraints {
            latency_ms,
            energy_mj,
            privacy: 0,
            ..privacy
        };
        assert_eq!(
            infer_status(client, &[ok], Some(&budget)),
            STRATA_ERR_INVALID_ARGUMENT,
            "{needle}"
        );
        assert!(last_error().contains(needle), "{}", last_error());
    }
    // SAFETY: a live client.
    let battery = unsafe { strata_set_power_state(client, 140.0, 0) };
    assert_eq!(battery, STRATA_ERR_INVALID_ARGUMENT);
    assert!(
        last_error().contains("battery level 140 % is impossible"),
        "{}",
        last_error()
    );
    // SAFETY: a live client.
    assert_eq!(
        unsafe { strata_set_power_state(client, 15.0, 1) },
        STRATA_OK
    );
    assert_eq!(
        infer_status(std::ptr::null_mut(), &[ok], None),
        STRATA_ERR_INVALID_ARGUMENT
    );
    assert_eq!(last_error(), "client is NULL");

    // Result accessors on NULL, and freeing NULL.
    unsafe {
        assert_eq!(strata_result_output_count(std::ptr::null()), 0);
        assert!(strata_result_plan(std::ptr::null()).is_null());
        assert!(strata_result_total_ms(std::ptr::null()).is_nan());
        let mut t = ok;
        assert_eq!(
            strata_result_output(std::ptr::null(), 0, &mut t),
            STRATA_ERR_INVALID_ARGUMENT
        );
        strata_result_free(std::ptr::null_mut());
        strata_client_free(std::ptr::null_mut());
        strata_client_free(client);
    }
}
