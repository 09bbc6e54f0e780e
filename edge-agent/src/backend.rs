//! The backend an agent runs its stages with, chosen once at start-up: `--backend auto|tract|ort[:PROVIDER]`.
//!
//! - `tract`: tract on the CPU (always there; the only backend of the device SDK).
//! - `ort`, `ort:cpu`, `ort:cuda`, `ort:tensorrt`: ONNX Runtime on that execution provider. A library or
//!   provider that is not there is an error at start-up naming what to install, never a quiet fallback: an
//!   operator who asked for the GPU must not get the CPU.
//! - `auto` (the default): the fastest candidate that works here, in the order TensorRT, CUDA, ONNX Runtime's
//!   CPU, tract. A candidate "works" when it can be made and runs a built-in probe model to tract's answer, so a
//!   GPU provider that registers but cannot run (a driver and CUDA library that do not match) is passed over.
//!   What was tried, and why each candidate was passed over, is logged and kept in [`Selected::tried`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use strata_core::{DType, TensorData};
use strata_runtime::{
    Backend, ExecutionProvider, OrtBackend, OrtConfig, RuntimeError, TractBackend,
};

/// A three-node model (MatMul, Add, Relu; input `x` f32 [1, 4], output `y` f32 [1, 3]) every candidate runs
/// before it is chosen.
const PROBE: &[u8] = include_bytes!("probe.onnx");

/// What `--backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The fastest backend that works here.
    #[default]
    Auto,
    /// tract.
    Tract,
    /// ONNX Runtime on one execution provider.
    Ort(ExecutionProvider),
}

/// A `--backend` value that is none of the known ones.
#[derive(Debug, thiserror::Error)]
#[error("unknown backend \"{0}\" (known: auto, tract, ort, ort:cpu, ort:cuda, ort:tensorrt)")]
pub struct UnknownBackend(String);

impl FromStr for BackendChoice {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.split_once(':') {
            None if lower == "auto" => Ok(BackendChoice::Auto),
            None if lower == "tract" => Ok(BackendChoice::Tract),
            None if lower == "ort" || lower == "onnxruntime" => {
                Ok(BackendChoice::Ort(ExecutionProvider::Cpu))
            }
            Some(("ort" | "onnxruntime", provider)) => provider
                .parse()
                .map(BackendChoice::Ort)
                .map_err(|_| UnknownBackend(s.to_string())),
            _ => Err(UnknownBackend(s.to_string())),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendChoice::Auto => f.write_str("auto"),
            BackendChoice::Tract => f.write_str("tract"),
            BackendChoice::Ort(p) => write!(f, "ort:{}", p.name()),
        }
    }
}

/// Why the backend asked for cannot serve here.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// It cannot be made (missing library or provider); the source says what to install.
    #[error("--backend {choice}: {cause}")]
    Unavailable {
        /// What was asked for.
        choice: BackendChoice,
        /// Why (kept in the message, not as a source, so it is said once).
        cause: RuntimeError,
    },
    /// It was made but its answer to the probe model is wrong or missing.
    #[error("--backend {choice}: the probe model failed: {reason}")]
    Probe {
        /// What was asked for.
        choice: BackendChoice,
        /// Why.
        reason: String,
    },
}

/// The backend chosen, and what `auto` passed over on the way.
#[derive(Clone)]
pub struct Selected {
    /// The backend stages are loaded into.
    pub backend: Arc<dyn Backend>,
    /// Every candidate tried before it, with why it was passed over (empty unless `auto`).
    pub tried: Vec<(String, String)>,
}

impl Selected {
    /// tract, chosen without probing (what [`crate::AgentConfig::new`] starts with).
    pub fn tract() -> Selected {
        Selected {
            backend: Arc::new(TractBackend),
            tried: Vec::new(),
        }
    }
}

impl fmt::Debug for Selected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selected")
            .field("backend", &self.backend.name())
            .field("tried", &self.tried)
            .finish()
    }
}

/// How ONNX Runtime runs an agent's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrtSettings {
    /// Intra-op threads per session (0: ONNX Runtime's default, one per physical core).
    pub threads: usize,
    /// Sessions per stage: requests for one stage that run at once (0 or 1: one).
    pub instances: usize,
}

impl OrtSettings {
    /// An agent's defaults for `slots` compute slots on `cores` cores: a session per slot, and the cores
    /// shared among them (at least one thread each), so that a full agent runs about one thread per core,
    /// as it does on tract.
    pub fn for_slots(slots: u32, cores: u32) -> OrtSettings {
        OrtSettings {
            threads: (cores / slots.max(1)).max(1) as usize,
            instances: slots.max(1) as usize,
        }
    }
}

/// Makes the backend `choice` names, with `ort`'s threads and sessions for ONNX Runtime, and checks it on the
/// probe model. Blocking: it may load a shared library and a GPU provider.
#[tracing::instrument(skip_all, fields(choice = %choice, threads = ort.threads, instances = ort.instances))]
pub fn select(choice: BackendChoice, ort: OrtSettings) -> Result<Selected, SelectError> {
    match choice {
        BackendChoice::Tract => {
            let backend: Arc<dyn Backend> = Arc::new(TractBackend);
            probe(choice, backend.as_ref())?;
            Ok(Selected {
                backend,
                tried: Vec::new(),
            })
        }
        BackendChoice::Ort(provider) => Ok(Selected {
            backend: make_ort(provider, ort)?,
            tried: Vec::new(),
        }),
        BackendChoice::Auto => {
            let mut tried = Vec::new();
            for provider in ExecutionProvider::ALL {
                match make_ort(provider, ort) {
                    Ok(backend) => return Ok(Selected { backend, tried }),
                    Err(e) => {
                        tracing::debug!(candidate = %provider.backend_name(), reason = %e, "passed over");
                        tried.push((provider.backend_name().to_string(), e.to_string()));
                    }
                }
            }
            select(BackendChoice::Tract, ort).map(|s| Selected {
                backend: s.backend,
                tried,
            })
        }
    }
}

fn make_ort(
    provider: ExecutionProvider,
    ort: OrtSettings,
) -> Result<Arc<dyn Backend>, SelectError> {
    let choice = BackendChoice::Ort(provider);
    let backend = OrtBackend::new(OrtConfig {
        library: None,
        provider,
        intra_threads: ort.threads,
        instances: ort.instances,
    })
    .map_err(|cause| SelectError::Unavailable { choice, cause })?;
    probe(choice, &backend)?;
    Ok(Arc::new(backend))
}

/// Runs the probe model on `backend` and compares its answer with the one worked out by hand.
fn probe(choice: BackendChoice, backend: &dyn Backend) -> Result<(), SelectError> {
    let failed = |reason: String| SelectError::Probe { choice, reason };
    let x = TensorData::from_f32(vec![1, 4], &[1.0, 2.0, 3.0, 4.0])
        .map_err(|e| failed(e.to_string()))?;
    let stage = backend
        .load(PROBE, &HashMap::new())
        .map_err(|e| failed(e.to_string()))?;
    let outputs = stage
        .run(&HashMap::from([("x".to_string(), x)]))
        .map_err(|e| failed(e.to_string()))?;
    let y = outputs
        .get("y")
        .ok_or_else(|| failed("no output \"y\"".into()))?;
    // relu([1 2 3 4] · W + b), W and b as in probe.onnx.
    const WANT: [f64; 3] = [0.0, 0.8, 7.55];
    let got = match (y.dtype, y.shape.as_slice()) {
        (DType::F32, [1, 3]) => y.to_f64(),
        (dtype, shape) => {
            return Err(failed(format!(
                "output \"y\" is {dtype} {shape:?}, not f32 [1, 3]"
            )));
        }
    };
    if got
        .iter()
        .zip(WANT)
        .any(|(g, w)| (g - w).abs() > 1e-4 * (1.0 + w.abs()))
    {
        return Err(failed(format!("answered {got:?}, not {WANT:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_choices_parse_and_print_back() {
        for (text, want) in [
            ("auto", BackendChoice::Auto),
            ("tract", BackendChoice::Tract),
            ("ort", BackendChoice::Ort(ExecutionProvider::Cpu)),
            ("ort:cpu", BackendChoice::Ort(ExecutionProvider::Cpu)),
            ("ORT:CUDA", BackendChoice::Ort(ExecutionProvider::Cuda)),
            (
                "ort:tensorrt",
                BackendChoice::Ort(ExecutionProvider::TensorRt),
            ),
        ] {
            let got: BackendChoice = text.parse().expect(text);
            assert_eq!(got, want, "{text}");
            assert_eq!(
                got.to_string().parse::<BackendChoice>().expect("again"),
                want
            );
        }
        for bad in ["", "gpu", "ort:", "ort:rocm", "tract:cpu", "auto:cuda"] {
            let e = bad.parse::<BackendChoice>().expect_err(bad).to_string();
            assert!(e.contains("known: auto, tract, ort"), "{bad}: {e}");
        }
    }

    #[test]
    fn onnx_runtime_gets_a_session_per_slot_and_shares_the_cores() {
        assert_eq!(
            OrtSettings::for_slots(2, 2),
            OrtSettings {
                threads: 1,
                instances: 2
            }
        );
        assert_eq!(OrtSettings::for_slots(2, 16).threads, 8);
        assert_eq!(OrtSettings::for_slots(32, 16).threads, 1);
        assert_eq!(OrtSettings::for_slots(0, 4).instances, 1);
    }

    #[test]
    fn tract_answers_the_probe_and_auto_never_fails() {
        let tract = select(BackendChoice::Tract, OrtSettings::default()).expect("tract");
        assert_eq!(tract.backend.name(), "tract");
        assert!(tract.tried.is_empty());
        // Whatever this machine has, auto picks something that answers the probe, and says why it passed
        // over everything faster.
        let auto = select(BackendChoice::Auto, OrtSettings::for_slots(2, 2)).expect("auto");
        let order = ["ort-tensorrt", "ort-cuda", "ort-cpu", "tract"];
        let picked = order
            .iter()
            .position(|n| *n == auto.backend.name())
            .expect("a known backend");
        let passed: Vec<&str> = auto.tried.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(passed, order[..picked], "tried in order, up to the pick");
        assert!(auto.tried.iter().all(|(_, why)| !why.is_empty()));
    }
}
