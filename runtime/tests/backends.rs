//! The backend conformance suite: every backend this build has (tract always; onnxruntime on the CPU with the
//! `ort` feature) must run every corpus model, whole and as stages of manual splits, with the model's outputs
//! equal to tract's within the cluster tolerance (|a − b| ≤ 1e-4·(1 + |b|) for floats, exactly for integers
//! and booleans; activations at stage boundaries within 1e-4 of their tensor's scale), declare the same
//! output dtypes, and refuse bad stage bytes and wrong inputs with the typed error that says what was wrong. Like the store's conformance suite, a new backend joins by being added to
//! [`backends`].
//!
//! With the `ort` feature the onnxruntime library must be there: a missing one fails the suite, naming what to
//! install (`scripts/setup.sh` installs the wheel from `corpus/requirements.txt`); it never skips quietly.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use strata_core::{DType, Tier};
use strata_planner::analyse::{self, Analysis, InputShape};
use strata_planner::model::Model;
use strata_planner::plan;
use strata_planner::split;
use strata_runtime::{Backend, LoadedStage, RuntimeError, TensorData, TractBackend, npy};
mod support;

use support::{TOLERANCE, manifest, root};

/// Every backend of this build, tract first (the reference). Intra-op threads: 1, as the suite runs tests in
/// parallel.
fn backends() -> Vec<Box<dyn Backend>> {
    #[allow(unused_mut)]
    let mut all: Vec<Box<dyn Backend>> = vec![Box::new(TractBackend)];
    #[cfg(feature = "ort")]
    all.push(Box::new(ort_cpu()));
    all
}

#[cfg(feature = "ort")]
fn ort_cpu() -> strata_runtime::OrtBackend {
    strata_runtime::OrtBackend::new(strata_runtime::OrtConfig {
        intra_threads: 1,
        ..Default::default()
    })
    .unwrap_or_else(|e| {
        panic!(
            "the onnxruntime backend is part of this build (feature `ort`) but cannot start: {e}\n\
             run scripts/setup.sh (it installs onnxruntime 1.32.0 into .venv from corpus/requirements.txt), \
             or `.venv/bin/pip install onnxruntime==1.32.0`, or set ORT_DYLIB_PATH"
        )
    })
}

struct Corpus {
    model: Model,
    analysis: Analysis,
    bytes: Vec<u8>,
    inputs: HashMap<String, TensorData>,
    shapes: HashMap<String, Vec<usize>>,
}

fn load(name: &str) -> Corpus {
    let entry = manifest()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} not in the manifest"));
    let dir = root().join("corpus/models");
    let bytes = std::fs::read(dir.join(&entry.file)).expect("read model");
    let model = Model::from_bytes(&bytes).expect("model loads");
    let given: Vec<InputShape> = entry
        .inputs
        .iter()
        .map(|i| InputShape {
            name: i.name.clone(),
            dims: i.shape.clone(),
        })
        .collect();
    let analysis = analyse::analyse(&model, &bytes, &given).expect("analysis");
    let inputs = entry
        .inputs
        .iter()
        .map(|i| {
            let b = std::fs::read(dir.join(&i.npy)).expect("read input npy");
            (i.name.clone(), npy::decode(&b).expect("input npy decodes"))
        })
        .collect();
    let shapes = entry
        .inputs
        .iter()
        .map(|i| (i.name.clone(), i.shape.clone()))
        .collect();
    Corpus {
        model,
        analysis,
        bytes,
        inputs,
        shapes,
    }
}

/// The worst difference of `got` from `reference`: for floats relative element by element (the cluster
/// tolerance's measure), and for integers and booleans 0 when equal and infinite otherwise.
fn difference(got: &TensorData, reference: &TensorData) -> f64 {
    assert_eq!(got.dtype, reference.dtype, "dtype");
    assert_eq!(got.shape, reference.shape, "shape");
    match got.dtype {
        DType::F32 | DType::F64 | DType::F16 => got
            .max_relative_diff(reference)
            .unwrap_or_else(|e| panic!("{e}")),
        _ if got.data == reference.data => 0.0,
        _ => f64::INFINITY,
    }
}

/// The difference for an activation inside the model (a stage boundary that is no model output): relative to
/// the tensor's largest magnitude, max|a − b| / (1 + max|b|). Summation order differs between backends, and an
/// element that cancels to near zero in a tensor of large values (random-weight resnet50's conv outputs reach
/// the hundreds) differs by more than 1e-4 of itself; the model's outputs are held to the element-wise bound.
fn activation_difference(got: &TensorData, reference: &TensorData) -> f64 {
    match got.dtype {
        DType::F32 | DType::F64 | DType::F16 => {
            assert_eq!(got.dtype, reference.dtype, "dtype");
            assert_eq!(got.shape, reference.shape, "shape");
            let (a, b) = (got.to_f64(), reference.to_f64());
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            worst / (1.0 + scale)
        }
        _ => difference(got, reference),
    }
}

/// Checks one loaded stage against tract's on the same inputs: names, declared output dtypes (and dims where
/// both know them), and outputs (those in `model_outputs` element-wise, the others as activations). Returns
/// tract's outputs.
fn check_stage(
    what: &str,
    bytes: &[u8],
    shapes: &HashMap<String, Vec<usize>>,
    feed: &HashMap<String, TensorData>,
    backends: &[Box<dyn Backend>],
    model_outputs: &[String],
) -> HashMap<String, TensorData> {
    let reference_stage = TractBackend
        .load(bytes, shapes)
        .unwrap_or_else(|e| panic!("{what}: tract loads: {e}"));
    let reference = reference_stage
        .run(feed)
        .unwrap_or_else(|e| panic!("{what}: tract runs: {e}"));
    for backend in &backends[1..] {
        let b = backend.name();
        let stage = backend
            .load(bytes, shapes)
            .unwrap_or_else(|e| panic!("{what}: {b} loads: {e}"));
        let ins: BTreeSet<&String> = stage.input_names().iter().collect();
        let want: BTreeSet<&String> = reference_stage.input_names().iter().collect();
        assert_eq!(ins, want, "{what}: {b}'s inputs");
        assert_eq!(
            stage.output_names(),
            reference_stage.output_names(),
            "{what}: {b}'s outputs, in order"
        );
        check_facts(what, b, &*stage, &*reference_stage);
        let out = stage
            .run(feed)
            .unwrap_or_else(|e| panic!("{what}: {b} runs: {e}"));
        assert_eq!(out.len(), reference.len(), "{what}: {b}'s output count");
        for (name, want) in &reference {
            let got = out
                .get(name)
                .unwrap_or_else(|| panic!("{what}: {b} lacks output {name}"));
            let d = if model_outputs.contains(name) {
                difference(got, want)
            } else {
                activation_difference(got, want)
            };
            assert!(
                d <= TOLERANCE,
                "{what}: {b}'s output {name} ({}) differs from tract's by {d:e}",
                want.dtype
            );
        }
    }
    reference
}

/// Declared output facts agree: the same dtypes, and the same dims wherever both backends know them.
fn check_facts(what: &str, backend: &str, stage: &dyn LoadedStage, reference: &dyn LoadedStage) {
    let (got, want) = (stage.output_facts(), reference.output_facts());
    if got.is_empty() || want.is_empty() {
        return;
    }
    assert_eq!(got.len(), want.len(), "{what}: {backend}'s output facts");
    for (name, ((gd, gdims), (wd, wdims))) in stage.output_names().iter().zip(got.iter().zip(want))
    {
        assert_eq!(gd, wd, "{what}: {backend} declares output {name} as {gd}");
        assert_eq!(
            gdims.len(),
            wdims.len(),
            "{what}: {backend}'s rank of {name}"
        );
        for (g, w) in gdims.iter().zip(wdims) {
            if let (Some(g), Some(w)) = (g, w) {
                assert_eq!(
                    g, w,
                    "{what}: {backend}'s dims of {name}: {gdims:?} vs {wdims:?}"
                );
            }
        }
    }
}

/// Manual cut sets: one cut in the middle, two at a third and two thirds (activations only).
fn cuts(model: &Model, analysis: &Analysis) -> Vec<Vec<Vec<String>>> {
    let n = model.nodes.len();
    let at = |frac: f64, after: Option<usize>| -> Option<(usize, String)> {
        let start = ((n as f64 * frac) as usize).min(n.saturating_sub(2));
        let start = after.map_or(start, |a| start.max(a + 1));
        (start..n.saturating_sub(1)).find_map(|v| {
            model.nodes[v]
                .outputs
                .iter()
                .find(|t| model.consumers.contains_key(*t) && !analysis.is_constant(t))
                .map(|t| (v, t.clone()))
        })
    };
    let mut out = Vec::new();
    if let Some((_, mid)) = at(0.5, None) {
        out.push(vec![vec![mid]]);
    }
    if let Some((v, a)) = at(0.33, None)
        && let Some((_, b)) = at(0.66, Some(v))
    {
        out.push(vec![vec![a], vec![b]]);
    }
    out
}

/// Splits at `cut` and runs the stages in order through every backend, each stage fed tract's values, and checks
/// the model's outputs at the end against the whole model's. `None` when the planner refuses the cut.
fn check_split(
    c: &Corpus,
    name: &str,
    cut: &[Vec<String>],
    backends: &[Box<dyn Backend>],
    whole: &HashMap<String, TensorData>,
) -> Option<usize> {
    let stage_of = split::stage_assignment(&c.model, &c.analysis, cut).ok()?;
    let tiers: Vec<Tier> = (0..=cut.len()).map(|s| Tier::ALL[s.min(2)]).collect();
    let specs = plan::stages_from_assignment(&c.model, &c.analysis, &stage_of, &tiers)
        .unwrap_or_else(|e| panic!("{name} cut {cut:?}: {e}"));
    let (stages, protos) = plan::build_stages(&c.model, &c.analysis, &specs, None, None)
        .unwrap_or_else(|e| panic!("{name} cut {cut:?}: {e}"));
    let mut values = c.inputs.clone();
    for (stage, proto) in stages.iter().zip(&protos) {
        let shapes: HashMap<String, Vec<usize>> = stage
            .inputs
            .iter()
            .filter_map(|n| c.shapes.get(n).map(|s| (n.clone(), s.clone())))
            .collect();
        let feed: HashMap<String, TensorData> = stage
            .inputs
            .iter()
            .map(|n| (n.clone(), values[n].clone()))
            .collect();
        let what = format!("{name} cut {cut:?} stage {}", stage.index);
        let out = check_stage(
            &what,
            &proto.encode_to_vec(),
            &shapes,
            &feed,
            backends,
            &c.model.outputs,
        );
        values.extend(out);
    }
    for o in &c.model.outputs {
        let d = difference(&values[o], &whole[o]);
        assert!(
            d <= TOLERANCE,
            "{name} cut {cut:?}: output {o} differs by {d:e}"
        );
    }
    Some(stages.len())
}

fn check_model(name: &str) {
    let backends = backends();
    let c = load(name);
    let whole = check_stage(
        &format!("{name} (whole)"),
        &c.bytes,
        &c.shapes,
        &c.inputs,
        &backends,
        &c.model.outputs,
    );
    let mut split = 0;
    for cut in cuts(&c.model, &c.analysis) {
        if check_split(&c, name, &cut, &backends, &whole).is_some() {
            split += 1;
        }
    }
    assert!(
        split > 0,
        "{name}: no manual split worked; the suite proves nothing about stages"
    );
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_model(stringify!($name));
            }
        )*

        #[test]
        fn every_manifest_model_runs_through_every_backend() {
            let tested: BTreeSet<&str> = [$(stringify!($name)),*].into_iter().collect();
            let listed: BTreeSet<String> = manifest().into_iter().map(|e| e.name).collect();
            let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
            assert_eq!(listed, tested, "corpus models and conformance tests must match");
        }
    };
}

corpus_tests!(
    densenet121,
    inception_v1,
    inception_v2,
    resnet50,
    shufflenet,
    squeezenet,
    ocr_det,
    ocr_rec,
    ocr_cls,
    multi_io,
    skip_long,
    shared_init,
    int_tensors,
    fanout,
    shape_chain,
);

/// The int64 paths: every single-tensor boundary of the model with int64 inputs and outputs (`int_tensors`)
/// that splits it runs through every backend, so int64 tensors cross stage boundaries in both directions.
#[test]
fn int64_tensors_cross_every_boundary_alike() {
    let backends = backends();
    let c = load("int_tensors");
    assert!(
        c.inputs.values().any(|t| t.dtype == DType::I64),
        "int_tensors has an int64 input"
    );
    let whole = check_stage(
        "int_tensors (whole)",
        &c.bytes,
        &c.shapes,
        &c.inputs,
        &backends,
        &c.model.outputs,
    );
    assert!(
        whole.values().any(|t| t.dtype == DType::I64),
        "int_tensors has an int64 output"
    );
    let mut split = 0;
    let mut int64_crossings = 0;
    for node in &c.model.nodes {
        for t in &node.outputs {
            let cut = vec![vec![t.clone()]];
            if check_split(&c, "int_tensors", &cut, &backends, &whole).is_some() {
                split += 1;
                if c.analysis
                    .tensors
                    .get(t)
                    .is_some_and(|i| i.elem_type == DType::I64.onnx_code())
                {
                    int64_crossings += 1;
                }
            }
        }
    }
    assert!(split >= 2, "int_tensors splits at {split} boundaries");
    assert!(
        int64_crossings >= 1,
        "no split sent an int64 tensor across a boundary"
    );
}

/// The corpus's small one-input float model (`shared_init`) and its inputs.
fn tiny_model() -> (Vec<u8>, HashMap<String, TensorData>) {
    let c = load("shared_init");
    (c.bytes, c.inputs)
}

#[test]
fn bad_stage_bytes_are_a_load_error_from_every_backend() {
    for backend in backends() {
        for (what, bytes) in [
            ("garbage", b"this is not an onnx model".to_vec()),
            ("empty", Vec::new()),
            ("truncated", tiny_model().0[..100].to_vec()),
        ] {
            match backend.load(&bytes, &HashMap::new()) {
                Err(RuntimeError::Load(msg)) => {
                    assert!(!msg.is_empty(), "{}: {what}", backend.name())
                }
                Err(e) => panic!("{}: {what}: not a load error: {e}", backend.name()),
                Ok(_) => panic!("{}: {what}: loaded", backend.name()),
            }
        }
    }
}

#[test]
fn wrong_inputs_are_typed_errors_from_every_backend() {
    let (bytes, inputs) = tiny_model();
    let (name, good) = inputs
        .iter()
        .next()
        .map(|(n, t)| (n.clone(), t.clone()))
        .expect("an input");
    assert_eq!(good.dtype, DType::F32);
    for backend in backends() {
        let b = backend.name();
        let stage = backend.load(&bytes, &HashMap::new()).expect("loads");
        stage
            .run(&inputs)
            .unwrap_or_else(|e| panic!("{b}: runs: {e}"));

        let as_i64 = TensorData::new(DType::I64, good.shape.clone(), vec![0; good.len() * 8])
            .expect("tensor");
        let err = stage
            .run(&HashMap::from([(name.clone(), as_i64)]))
            .expect_err("wrong dtype");
        assert!(
            matches!(&err, RuntimeError::WrongDType { expected, got: DType::I64, .. } if expected == "float32"),
            "{b}: {err}"
        );

        let mut shape = good.shape.clone();
        shape.push(1);
        let longer = TensorData::new(DType::F32, shape, good.data.clone()).expect("tensor");
        let err = stage
            .run(&HashMap::from([(name.clone(), longer)]))
            .expect_err("wrong shape");
        assert!(matches!(err, RuntimeError::WrongShape { .. }), "{b}: {err}");

        let err = stage.run(&HashMap::new()).expect_err("missing input");
        assert!(
            matches!(err, RuntimeError::MissingInput { .. }),
            "{b}: {err}"
        );

        let mut extra = inputs.clone();
        extra.insert("nonsense".into(), good.clone());
        let err = stage.run(&extra).expect_err("unknown input");
        assert!(
            matches!(err, RuntimeError::UnknownInput { .. }),
            "{b}: {err}"
        );
    }
}

/// The onnxruntime backend's own promises: how it is named, what it says when the library or a provider is
/// missing (never a panic), and that its thread setting takes.
#[cfg(feature = "ort")]
mod ort {
    use super::*;
    use strata_runtime::ort_backend::{self, ExecutionProvider};
    use strata_runtime::{OrtBackend, OrtConfig};

    fn unavailable_reason(config: OrtConfig) -> String {
        match OrtBackend::new(config) {
            Err(RuntimeError::Unavailable { reason, .. }) => reason,
            Err(e) => panic!("not an unavailable error: {e}"),
            Ok(b) => panic!("made a backend: {b:?}"),
        }
    }

    #[test]
    fn the_wheel_library_is_found_and_named() {
        let backend = ort_cpu();
        assert_eq!(backend.name(), "ort-cpu");
        assert_eq!(backend.provider(), ExecutionProvider::Cpu);
        assert!(
            backend
                .compiled_providers()
                .contains(&ExecutionProvider::Cpu)
        );
        assert!(
            backend.library_path().is_file(),
            "{}",
            backend.library_path().display()
        );
    }

    #[test]
    fn a_missing_library_is_an_error_naming_what_to_install() {
        let reason = unavailable_reason(OrtConfig {
            library: Some("/nonexistent/libonnxruntime.so.1.32.0".into()),
            ..Default::default()
        });
        assert!(
            reason.contains("pip install onnxruntime==1.32.0"),
            "{reason}"
        );
        assert!(reason.contains("ORT_DYLIB_PATH"), "{reason}");
    }

    #[test]
    fn a_file_that_is_not_onnxruntime_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = dir.path().join("libonnxruntime.so");
        std::fs::write(&fake, b"not a shared library").expect("write");
        let reason = unavailable_reason(OrtConfig {
            library: Some(fake.clone()),
            ..Default::default()
        });
        // Alone in its process (nextest) the loader refuses the file; after another test loaded the real
        // library (cargo test), the one-library-per-process rule does. Either way: an error naming the file.
        assert!(reason.contains(&fake.display().to_string()), "{reason}");
    }

    /// `ORT_DYLIB_PATH` naming a missing file: checked in a child process of this test binary (setting the
    /// variable here would race with other tests).
    #[test]
    fn ort_dylib_path_to_a_missing_file_is_an_error_naming_the_variable() {
        if std::env::var_os("STRATA_ORT_CHILD").is_some() {
            let reason = unavailable_reason(OrtConfig::default());
            assert!(
                reason.contains("ORT_DYLIB_PATH is /nonexistent/x.so"),
                "{reason}"
            );
            assert!(
                reason.contains("pip install onnxruntime==1.32.0"),
                "{reason}"
            );
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "ort::ort_dylib_path_to_a_missing_file_is_an_error_naming_the_variable",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STRATA_ORT_CHILD", "1")
            .env("ORT_DYLIB_PATH", "/nonexistent/x.so")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_search_finds_the_wheel_in_the_workspace_venv() {
        let candidates = ort_backend::library_candidates();
        assert!(
            candidates
                .iter()
                .any(|p| p.ends_with("onnxruntime/capi/libonnxruntime.so.1.32.0")),
            "the search does not look at the wheel: {candidates:?}"
        );
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            let found = ort_backend::find_library().expect("found");
            assert!(
                found.to_string_lossy().contains("onnxruntime"),
                "{}",
                found.display()
            );
        }
    }

    #[test]
    fn providers_parse_by_name() {
        for p in ExecutionProvider::ALL {
            assert_eq!(p.name().parse::<ExecutionProvider>().expect("parses"), p);
        }
        assert_eq!(
            "CUDA".parse::<ExecutionProvider>().expect("parses"),
            ExecutionProvider::Cuda
        );
        let err = "openvino"
            .parse::<ExecutionProvider>()
            .expect_err("unknown");
        assert!(
            err.to_string().contains("known: cpu, cuda, tensorrt"),
            "{err}"
        );
    }

    /// CUDA and TensorRT are refused with a reason when the library lacks them (the CPU wheel does) or they do
    /// not start (no GPU); where they work, a CUDA session gives the CPU's outputs.
    #[test]
    fn gpu_providers_are_selected_only_when_present() {
        let cpu = ort_cpu();
        for provider in [ExecutionProvider::Cuda, ExecutionProvider::TensorRt] {
            let config = OrtConfig {
                provider,
                intra_threads: 1,
                ..Default::default()
            };
            match OrtBackend::new(config) {
                Err(RuntimeError::Unavailable { backend, reason }) => {
                    assert_eq!(backend, format!("ort-{}", provider.name()));
                    if !cpu.compiled_providers().contains(&provider) {
                        assert!(reason.contains("onnxruntime-gpu"), "{reason}");
                        assert!(reason.contains(provider.onnxruntime_name()), "{reason}");
                    }
                }
                Err(e) => panic!("{provider}: not an unavailable error: {e}"),
                Ok(gpu) => {
                    assert_eq!(gpu.name(), format!("ort-{}", provider.name()));
                    let c = load("squeezenet");
                    let backends: Vec<Box<dyn Backend>> =
                        vec![Box::new(TractBackend), Box::new(gpu)];
                    check_stage(
                        "squeezenet on the GPU",
                        &c.bytes,
                        &c.shapes,
                        &c.inputs,
                        &backends,
                        &c.model.outputs,
                    );
                }
            }
        }
    }

    #[test]
    fn a_stage_with_several_sessions_serves_concurrent_runs_alike() {
        let c = load("squeezenet");
        let backend = OrtBackend::new(OrtConfig {
            intra_threads: 1,
            instances: 3,
            ..Default::default()
        })
        .expect("backend");
        assert_eq!(backend.instances(), 3);
        let stage = backend.load(&c.bytes, &c.shapes).expect("load");
        let want = TractBackend
            .load(&c.bytes, &c.shapes)
            .expect("tract")
            .run(&c.inputs)
            .expect("run");
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..6)
                .map(|_| scope.spawn(|| stage.run(&c.inputs).expect("run")))
                .collect();
            for run in runs {
                let got = run.join().expect("thread");
                for (name, t) in &want {
                    let d = difference(&got[name], t);
                    assert!(d <= TOLERANCE, "{name} differs by {d:e}");
                }
            }
        });
    }

    #[test]
    fn thread_counts_give_the_same_outputs() {
        let c = load("squeezenet");
        let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(TractBackend)];
        for threads in [1, 2, 0] {
            let b = OrtBackend::new(OrtConfig {
                intra_threads: threads,
                ..Default::default()
            })
            .expect("backend");
            assert_eq!(b.intra_threads(), threads);
            backends.push(Box::new(b));
        }
        check_stage(
            "squeezenet, 1/2/default threads",
            &c.bytes,
            &c.shapes,
            &c.inputs,
            &backends,
            &c.model.outputs,
        );
    }
}

/// Dynamic batching (issue 13): the stages of a middle cut of each model, rewritten with a free batch
/// dimension, answer a batch of two different items as the original answers each alone, on every backend.
/// The image models must batch; every other stage batches or says why not, never a panic or a wrong answer.
/// (Whether batching is also faster depends on the machine: `batch::verify` times it on the agent.)
#[test]
fn stages_rewritten_with_a_batch_dimension_answer_each_item_as_alone() {
    use strata_runtime::batch;
    let backends = backends();
    let must_batch = ["squeezenet", "shufflenet"];
    let models = [
        "squeezenet",
        "shufflenet",
        "multi_io",
        "int_tensors",
        "fanout",
        "shape_chain",
        "skip_long",
        "shared_init",
    ];
    let mut refused = Vec::new();
    let mut batched = 0;
    for name in models {
        let c = load(name);
        let Some(cut) = cuts(&c.model, &c.analysis).into_iter().next() else {
            panic!("{name}: no cut");
        };
        let stage_of = split::stage_assignment(&c.model, &c.analysis, &cut).expect("cut");
        let tiers = [Tier::Edge, Tier::Cloud];
        let specs =
            plan::stages_from_assignment(&c.model, &c.analysis, &stage_of, &tiers).expect("stages");
        let (stages, protos) =
            plan::build_stages(&c.model, &c.analysis, &specs, None, None).expect("build");
        for (stage, proto) in stages.iter().zip(&protos) {
            let bytes = proto.encode_to_vec();
            let rewritten = batch::with_batch_dim(&bytes);
            for backend in &backends {
                let what = format!("{name} stage {} on {}", stage.index, backend.name());
                let single = backend.load(&bytes, &HashMap::new()).expect(&what);
                let outcome = rewritten.clone().and_then(|r| {
                    let b = backend
                        .load(&r, &HashMap::new())
                        .map_err(|e| batch::NotBatchable(e.to_string()))?;
                    batch::check_answers(single.as_ref(), b.as_ref())
                });
                match outcome {
                    Ok(()) => batched += 1,
                    Err(e) => {
                        assert!(!must_batch.contains(&name), "{what}: {e}");
                        assert!(!e.0.is_empty());
                        refused.push(format!("{what}: {e}"));
                    }
                }
            }
        }
    }
    eprintln!(
        "{batched} stage loads batch; refused:\n{}",
        refused.join("\n")
    );
    assert!(batched >= 4 * backends.len(), "too few batch: {refused:?}");
}

/// A stage that mixes the items of a batch (a sum over dimension 0) is caught by the check, not served wrong.
#[test]
fn a_stage_that_mixes_the_batch_is_refused() {
    use strata_runtime::batch;
    use tract_onnx::pb;
    let dims = |d: &[i64]| pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: pb::tensor_proto::DataType::Float as i32,
            shape: Some(pb::TensorShapeProto {
                dim: d
                    .iter()
                    .map(|&v| pb::tensor_shape_proto::Dimension {
                        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })),
        ..Default::default()
    };
    let value = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(dims(&[1, 4])),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "mix".into(),
            node: vec![pb::NodeProto {
                op_type: "Softmax".into(),
                name: "mix".into(),
                input: vec!["x".into()],
                output: vec!["y".into()],
                attribute: vec![pb::AttributeProto {
                    name: "axis".into(),
                    r#type: pb::attribute_proto::AttributeType::Int as i32,
                    i: 0,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            input: vec![value("x")],
            output: vec![value("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = model.encode_to_vec();
    let rewritten = batch::with_batch_dim(&bytes).expect("rewrites");
    for backend in backends() {
        let single = backend.load(&bytes, &HashMap::new()).expect("single");
        let b = backend.load(&rewritten, &HashMap::new()).expect("batched");
        let e = batch::check_answers(single.as_ref(), b.as_ref()).expect_err(backend.name());
        assert!(e.0.contains("differs"), "{}: {e}", backend.name());
    }
}
