//! The onnxruntime backend (feature `ort`): ONNX Runtime through the `ort` crate, the shared library loaded at
//! run time (`load-dynamic`: nothing is downloaded or linked at build time).
//!
//! **Finding the library** ([`find_library`]): `ORT_DYLIB_PATH` when it is set (that file and no other);
//! otherwise the first `libonnxruntime.so*` of the `onnxruntime` wheel in `.venv/lib/python3*/site-packages/
//! onnxruntime/capi/` under the current directory, then under the workspace this crate was built from
//! (`scripts/setup.sh` installs the wheel there); then `libonnxruntime.so` in the directories of
//! `LD_LIBRARY_PATH` and the system's library directories. A missing or unloadable library is
//! [`RuntimeError::Unavailable`], naming what to install, never a panic.
//!
//! **One library per process**: ONNX Runtime's environment is process-wide, so the first backend made loads
//! the library and every later one shares it; asking for a different file afterwards is an error.
//!
//! **Execution providers** ([`ExecutionProvider`]): the CPU always; CUDA and TensorRT when the library was built
//! with them (the `onnxruntime-gpu` wheel) and they register (driver and CUDA libraries present). A backend for
//! a provider that is not there is refused when it is made, and a session never falls back to the CPU quietly.
//!
//! **Threads**: [`OrtConfig::intra_threads`] threads per session (0: ONNX Runtime's default, one per core).
//! A session runs one request at a time (`ort` wants `&mut` to run), so each stage holds
//! [`OrtConfig::instances`] sessions (Triton's instance group): that many requests for one stage run at once,
//! each on a free session (the weights are held once per session).

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider as _, ExecutionProviderDispatch};
use ort::logging::LogLevel;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use crate::backend::{Backend, LoadedStage, OutputFact, RuntimeError};
use strata_core::{DType, TensorData};

/// The onnxruntime release the wheel in `corpus/requirements.txt` pins (what the suite and CI run).
pub const ONNXRUNTIME_VERSION: &str = "1.32.0";

/// What to do when the library is missing: the one line every "unavailable" error ends with.
const INSTALL_HINT: &str = "install the onnxruntime wheel (`pip install onnxruntime==1.32.0`, which \
     scripts/setup.sh does into .venv) or set ORT_DYLIB_PATH to a libonnxruntime.so (1.17 or newer)";

/// An ONNX Runtime execution provider a backend runs its sessions on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExecutionProvider {
    /// ONNX Runtime's own CPU kernels (every build has them).
    #[default]
    Cpu,
    /// NVIDIA GPUs through CUDA (the `onnxruntime-gpu` build, a driver and CUDA 12/cuDNN 9 libraries).
    Cuda,
    /// NVIDIA TensorRT, with CUDA for the nodes TensorRT does not take.
    TensorRt,
}

impl ExecutionProvider {
    /// Every provider this backend knows, in the order `auto` would try them (fastest first).
    pub const ALL: [ExecutionProvider; 3] = [
        ExecutionProvider::TensorRt,
        ExecutionProvider::Cuda,
        ExecutionProvider::Cpu,
    ];

    /// The short name (`cpu`, `cuda`, `tensorrt`), as in `ort:cuda`.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::TensorRt => "tensorrt",
        }
    }

    /// ONNX Runtime's name for it (`CUDAExecutionProvider`, ...).
    pub fn onnxruntime_name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => ep::CPU::NAME,
            ExecutionProvider::Cuda => ep::CUDA::NAME,
            ExecutionProvider::TensorRt => ep::TensorRT::NAME,
        }
    }

    /// The backend's name with this provider (`ort-cpu`, `ort-cuda`, `ort-tensorrt`), as agents report it.
    pub fn backend_name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "ort-cpu",
            ExecutionProvider::Cuda => "ort-cuda",
            ExecutionProvider::TensorRt => "ort-tensorrt",
        }
    }

    /// Whether the loaded library was built with this provider.
    fn compiled_in(self) -> Result<bool, ort::Error> {
        match self {
            ExecutionProvider::Cpu => Ok(true),
            ExecutionProvider::Cuda => ep::CUDA::is_available(),
            ExecutionProvider::TensorRt => ep::TensorRT::is_available(),
        }
    }

    /// The providers to register on a session, most preferred first (the CPU is always the last resort for
    /// nodes no other provider takes; ONNX Runtime adds it itself).
    fn dispatch(self) -> Vec<ExecutionProviderDispatch> {
        match self {
            ExecutionProvider::Cpu => Vec::new(),
            ExecutionProvider::Cuda => vec![ep::CUDA::default().build().error_on_failure()],
            ExecutionProvider::TensorRt => vec![
                ep::TensorRT::default().build().error_on_failure(),
                ep::CUDA::default().build().error_on_failure(),
            ],
        }
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A provider name that is none of [`ExecutionProvider::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown onnxruntime execution provider \"{0}\" (known: cpu, cuda, tensorrt)")]
pub struct UnknownProvider(pub String);

impl FromStr for ExecutionProvider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(ExecutionProvider::Cpu),
            "cuda" => Ok(ExecutionProvider::Cuda),
            "tensorrt" | "trt" => Ok(ExecutionProvider::TensorRt),
            _ => Err(UnknownProvider(s.to_string())),
        }
    }
}

/// How to make an [`OrtBackend`].
#[derive(Debug, Clone, Default)]
pub struct OrtConfig {
    /// The library to load; `None`: [`find_library`]'s search.
    pub library: Option<PathBuf>,
    /// The execution provider sessions run on.
    pub provider: ExecutionProvider,
    /// Intra-op threads per session; 0 leaves ONNX Runtime's default (one per physical core).
    pub intra_threads: usize,
    /// Sessions per loaded stage, so that many requests for one stage run at once (0 or 1: one).
    pub instances: usize,
}

/// The loaded library and the process's one ONNX Runtime environment.
struct Library {
    path: PathBuf,
    environment: Environment,
}

/// The library this process loaded, once loaded.
static LIBRARY: Mutex<Option<Arc<Library>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// ONNX Runtime as a [`Backend`]: sessions on one execution provider, with a fixed number of intra-op threads.
#[derive(Clone)]
pub struct OrtBackend {
    library: Arc<Library>,
    provider: ExecutionProvider,
    intra_threads: usize,
    instances: usize,
}

impl fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrtBackend")
            .field("library", &self.library.path)
            .field("provider", &self.provider)
            .field("intra_threads", &self.intra_threads)
            .field("instances", &self.instances)
            .finish()
    }
}

impl OrtBackend {
    /// Loads the library (once per process) and checks that the provider is there and registers. Errors are
    /// [`RuntimeError::Unavailable`], saying what to install.
    #[tracing::instrument(skip_all, fields(provider = %config.provider, threads = config.intra_threads))]
    pub fn new(config: OrtConfig) -> Result<OrtBackend, RuntimeError> {
        let provider = config.provider;
        let unavailable = |reason: String| RuntimeError::Unavailable {
            backend: provider.backend_name().to_string(),
            reason,
        };
        let path = match config.library {
            Some(path) => path,
            None => find_library().map_err(unavailable)?,
        };
        let library = load_library(&path).map_err(unavailable)?;
        let compiled_in = provider
            .compiled_in()
            .map_err(|e| unavailable(e.to_string()))?;
        if !compiled_in {
            return Err(unavailable(format!(
                "the onnxruntime library at {} was built without {} (it offers: {}); install the \
                 `onnxruntime-gpu` wheel (or a GPU build of onnxruntime) and point ORT_DYLIB_PATH at its \
                 libonnxruntime.so",
                library.path.display(),
                provider.onnxruntime_name(),
                compiled_providers().join(", ")
            )));
        }
        let backend = OrtBackend {
            library,
            provider,
            intra_threads: config.intra_threads,
            instances: config.instances.max(1),
        };
        if provider != ExecutionProvider::Cpu {
            // Registering loads the provider's own library and its CUDA dependencies, and fails without a
            // driver or device: find out now, not on the first stage.
            backend.session_builder().map_err(|e| {
                unavailable(format!(
                    "{} is in the library but does not start here: {e}",
                    provider.onnxruntime_name()
                ))
            })?;
        }
        tracing::info!(
            library = %backend.library.path.display(),
            provider = provider.name(),
            "onnxruntime backend ready"
        );
        Ok(backend)
    }

    /// A CPU backend with the library found by [`find_library`] and ONNX Runtime's default threads.
    pub fn cpu() -> Result<OrtBackend, RuntimeError> {
        OrtBackend::new(OrtConfig::default())
    }

    /// The library file this process loaded.
    pub fn library_path(&self) -> &Path {
        &self.library.path
    }

    /// The execution provider sessions run on.
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// Intra-op threads per session (0: ONNX Runtime's default).
    pub fn intra_threads(&self) -> usize {
        self.intra_threads
    }

    /// Sessions per loaded stage.
    pub fn instances(&self) -> usize {
        self.instances
    }

    /// The providers of [`ExecutionProvider::ALL`] the loaded library was built with (not all may start here).
    pub fn compiled_providers(&self) -> Vec<ExecutionProvider> {
        ExecutionProvider::ALL
            .into_iter()
            .filter(|p| p.compiled_in().unwrap_or(false))
            .collect()
    }

    fn session_builder(&self) -> Result<SessionBuilder, String> {
        let mut builder = Session::builder(&self.library.environment)
            .map_err(|e| e.to_string())?
            .with_log_level(LogLevel::Warning)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| e.to_string())?;
        if self.intra_threads > 0 {
            builder = builder
                .with_intra_threads(self.intra_threads)
                .map_err(|e| e.to_string())?;
        }
        let providers = self.provider.dispatch();
        if !providers.is_empty() {
            builder = builder
                .with_execution_providers(providers)
                .map_err(|e| e.to_string())?;
        }
        Ok(builder)
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        self.provider.backend_name()
    }

    fn load(
        &self,
        onnx: &[u8],
        input_shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<Box<dyn LoadedStage>, RuntimeError> {
        Ok(Box::new(OrtStage::load(self, onnx, input_shapes)?))
    }
}

/// A stage's ONNX Runtime sessions (one per instance) and its interface.
pub struct OrtStage {
    sessions: Vec<Mutex<Session>>,
    /// Where the next run starts looking for a free session.
    next: std::sync::atomic::AtomicUsize,
    inputs: Vec<String>,
    outputs: Vec<String>,
    input_facts: Vec<(DType, Vec<Option<usize>>)>,
    /// Empty when an output is no tensor of a dtype Strata has (the run would refuse it anyway).
    output_facts: Vec<OutputFact>,
}

impl OrtStage {
    /// Creates a session for the model. `input_shapes` fixes free input dimensions (checked on every run);
    /// names the model does not have are ignored, as tract does.
    #[tracing::instrument(skip_all, fields(bytes = onnx.len(), provider = %backend.provider))]
    pub fn load(
        backend: &OrtBackend,
        onnx: &[u8],
        input_shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<OrtStage, RuntimeError> {
        let mut sessions = Vec::with_capacity(backend.instances);
        for _ in 0..backend.instances.max(1) {
            let mut builder = backend.session_builder().map_err(RuntimeError::Load)?;
            sessions.push(
                builder
                    .commit_from_memory(onnx)
                    .map_err(|e| RuntimeError::Load(one_line(&e.to_string())))?,
            );
        }
        let session = &sessions[0];
        let mut inputs = Vec::new();
        let mut input_facts = Vec::new();
        for outlet in session.inputs() {
            let name = outlet.name().to_string();
            let (dtype, mut dims) = tensor_fact(outlet.dtype()).ok_or_else(|| {
                RuntimeError::Load(format!(
                    "input \"{name}\" has unsupported type {}",
                    outlet.dtype()
                ))
            })?;
            if let Some(shape) = input_shapes.get(&name) {
                let fits = shape.len() == dims.len()
                    && dims
                        .iter()
                        .zip(shape)
                        .all(|(d, s)| d.is_none_or(|d| d == *s));
                if !fits {
                    return Err(RuntimeError::Load(format!(
                        "input \"{name}\": shape {shape:?} does not fit the declared {}",
                        show_dims(&dims)
                    )));
                }
                dims = shape.iter().map(|&s| Some(s)).collect();
            }
            inputs.push(name);
            input_facts.push((dtype, dims));
        }
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let output_facts = session
            .outputs()
            .iter()
            .map(|o| tensor_fact(o.dtype()))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        Ok(OrtStage {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
            inputs,
            outputs,
            input_facts,
            output_facts,
        })
    }

    /// Checks named inputs against the session's interface and makes ONNX Runtime values of them, in order.
    fn ordered_inputs(
        &self,
        inputs: &HashMap<String, TensorData>,
    ) -> Result<Vec<(String, DynValue)>, RuntimeError> {
        let needed = self.inputs.join(", ");
        if let Some(name) = inputs.keys().find(|n| !self.inputs.contains(n)) {
            return Err(RuntimeError::UnknownInput {
                name: name.clone(),
                needed,
            });
        }
        let mut values = Vec::with_capacity(self.inputs.len());
        for (name, (dtype, dims)) in self.inputs.iter().zip(&self.input_facts) {
            let t = inputs.get(name).ok_or_else(|| RuntimeError::MissingInput {
                name: name.clone(),
                needed: needed.clone(),
            })?;
            if t.dtype != *dtype {
                return Err(RuntimeError::WrongDType {
                    name: name.clone(),
                    expected: dtype.to_string(),
                    got: t.dtype,
                });
            }
            let shape_ok = t.shape.len() == dims.len()
                && t.shape
                    .iter()
                    .zip(dims)
                    .all(|(g, d)| d.is_none_or(|d| d == *g));
            if !shape_ok {
                return Err(RuntimeError::WrongShape {
                    name: name.clone(),
                    expected: show_dims(dims),
                    got: t.shape.clone(),
                });
            }
            values.push((name.clone(), to_ort(t)?));
        }
        Ok(values)
    }
}

impl LoadedStage for OrtStage {
    fn input_names(&self) -> &[String] {
        &self.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn output_facts(&self) -> &[OutputFact] {
        &self.output_facts
    }

    fn input_facts(&self) -> &[OutputFact] {
        &self.input_facts
    }

    #[tracing::instrument(skip_all, name = "ort_run")]
    fn run(
        &self,
        inputs: &HashMap<String, TensorData>,
    ) -> Result<HashMap<String, TensorData>, RuntimeError> {
        let values = self.ordered_inputs(inputs)?;
        // A free session if there is one (starting where the last run started, so runs spread), else wait
        // for that one.
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        let free = (0..n).find_map(|k| match self.sessions[(start + k) % n].try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        });
        let mut session = match free {
            Some(guard) => guard,
            None => lock(&self.sessions[start]),
        };
        let outputs = session
            .run(values)
            .map_err(|e| RuntimeError::Run(one_line(&e.to_string())))?;
        self.outputs
            .iter()
            .map(|name| {
                let value = outputs.get(name.as_str()).ok_or_else(|| {
                    RuntimeError::Run(format!("onnxruntime returned no output \"{name}\""))
                })?;
                Ok((name.clone(), from_ort(name, value)?))
            })
            .collect()
    }
}

/// Where [`find_library`] looks, in order, when `ORT_DYLIB_PATH` is not set (files that may not exist).
pub fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    roots.push(workspace);
    for root in roots {
        out.extend(wheel_libraries(&root.join(".venv")));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/local/lib",
            "/usr/local/lib64",
            "/usr/lib",
            "/usr/lib64",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .map(PathBuf::from),
    );
    out.extend(dirs.iter().map(|d| d.join("libonnxruntime.so")));
    out
}

/// The onnxruntime libraries of the wheels in a virtual environment (`lib/python3*/site-packages/onnxruntime/
/// capi/libonnxruntime.so*`), sorted.
fn wheel_libraries(venv: &Path) -> Vec<PathBuf> {
    let Ok(pythons) = std::fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = pythons
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|e| std::fs::read_dir(e.path().join("site-packages/onnxruntime/capi")).ok())
        .flat_map(|dir| dir.flatten().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
        })
        .collect();
    found.sort();
    found
}

/// The library [`OrtBackend::cpu`] loads: `ORT_DYLIB_PATH` if set (it must exist), else the first of
/// [`library_candidates`] that is a file. The error says where it looked and what to install.
pub fn find_library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "ORT_DYLIB_PATH is {} but there is no such file; {INSTALL_HINT}",
                path.display()
            ))
        };
    }
    let candidates = library_candidates();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "no onnxruntime library found (looked for the wheel's in .venv under {} and the workspace, \
             then libonnxruntime.so in LD_LIBRARY_PATH and /usr/lib, /usr/local/lib); {INSTALL_HINT}",
            std::env::current_dir().map_or_else(|_| "the current directory".into(), |d| d.display().to_string())
        )
    })
}

/// Loads the library at `path` unless this process already has one (the same file: shared; another: an error).
fn load_library(path: &Path) -> Result<Arc<Library>, String> {
    let mut slot = lock(&LIBRARY);
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if !absolute.is_file() {
        return Err(format!(
            "{} is not a file; {INSTALL_HINT}",
            absolute.display()
        ));
    }
    let absolute = absolute.canonicalize().unwrap_or(absolute);
    if let Some(library) = slot.as_ref() {
        if library.path == absolute {
            return Ok(library.clone());
        }
        return Err(format!(
            "this process already loaded onnxruntime from {}; one onnxruntime library per process (asked for {})",
            library.path.display(),
            absolute.display()
        ));
    }
    // `ort` loads with libloading and checks the version; guard against a panic on the way regardless.
    let loaded = catch_unwind(AssertUnwindSafe(|| -> Result<Environment, String> {
        let builder = ort::init_from(&absolute).map_err(|e| {
            format!(
                "cannot load {} as onnxruntime: {e}; {INSTALL_HINT}",
                absolute.display()
            )
        })?;
        let environment = builder
            .with_name("strata")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("onnxruntime environment: {e}"))?;
        environment.set_log_level(LogLevel::Warning);
        Ok(environment)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(format!(
            "loading {} failed: {what}; {INSTALL_HINT}",
            absolute.display()
        ))
    })?;
    tracing::info!(library = %absolute.display(), "onnxruntime loaded");
    let library = Arc::new(Library {
        path: absolute,
        environment: loaded,
    });
    *slot = Some(library.clone());
    Ok(library)
}

/// The provider names the loaded library was built with (for messages).
fn compiled_providers() -> Vec<&'static str> {
    ExecutionProvider::ALL
        .into_iter()
        .filter(|p| p.compiled_in().unwrap_or(false))
        .map(ExecutionProvider::onnxruntime_name)
        .collect()
}

/// An ONNX Runtime value type → our dtype and dimensions (`None` for free ones); `None` if it is no tensor of a
/// dtype we have.
fn tensor_fact(ty: &ValueType) -> Option<OutputFact> {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return None;
    };
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Vec<_>>();
    Some((dtype_of(*ty)?, dims))
}

/// ONNX Runtime's element type → ours.
pub fn dtype_of(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Int16 => DType::I16,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Uint16 => DType::U16,
        TensorElementType::Uint32 => DType::U32,
        TensorElementType::Uint64 => DType::U64,
        TensorElementType::Bool => DType::Bool,
        _ => return None,
    })
}

fn show_dims(dims: &[Option<usize>]) -> String {
    let dims: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// Decodes little-endian elements of `N` bytes.
fn elements<T, const N: usize>(data: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            from(b)
        })
        .collect()
}

/// Our tensor → an ONNX Runtime value (one copy).
fn to_ort(t: &TensorData) -> Result<DynValue, RuntimeError> {
    let shape: Vec<i64> = t
        .shape
        .iter()
        .map(|&d| i64::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| RuntimeError::Run(format!("shape {:?} too large", t.shape)))?;
    let d = &t.data;
    let value: Result<DynValue, ort::Error> = match t.dtype {
        DType::F32 => Tensor::from_array((shape, elements(d, f32::from_le_bytes))).map(Into::into),
        DType::F64 => Tensor::from_array((shape, elements(d, f64::from_le_bytes))).map(Into::into),
        DType::F16 => Tensor::from_array((
            shape,
            elements(d, |b| half::f16::from_bits(u16::from_le_bytes(b))),
        ))
        .map(Into::into),
        DType::I8 => Tensor::from_array((shape, elements(d, i8::from_le_bytes))).map(Into::into),
        DType::I16 => Tensor::from_array((shape, elements(d, i16::from_le_bytes))).map(Into::into),
        DType::I32 => Tensor::from_array((shape, elements(d, i32::from_le_bytes))).map(Into::into),
        DType::I64 => Tensor::from_array((shape, elements(d, i64::from_le_bytes))).map(Into::into),
        DType::U8 => Tensor::from_array((shape, d.clone())).map(Into::into),
        DType::U16 => Tensor::from_array((shape, elements(d, u16::from_le_bytes))).map(Into::into),
        DType::U32 => Tensor::from_array((shape, elements(d, u32::from_le_bytes))).map(Into::into),
        DType::U64 => Tensor::from_array((shape, elements(d, u64::from_le_bytes))).map(Into::into),
        DType::Bool => {
            Tensor::from_array((shape, d.iter().map(|&b| b != 0).collect::<Vec<bool>>()))
                .map(Into::into)
        }
    };
    value.map_err(|e| RuntimeError::Run(one_line(&e.to_string())))
}

/// Encodes elements little-endian.
fn bytes_of<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

/// An ONNX Runtime output → our tensor (one copy).
fn from_ort(name: &str, value: &DynValue) -> Result<TensorData, RuntimeError> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(RuntimeError::Run(format!(
            "output \"{name}\" is a {}, not a tensor",
            value.dtype()
        )));
    };
    let err = |e: ort::Error| RuntimeError::Run(one_line(&e.to_string()));
    let dtype = dtype_of(*ty)
        .ok_or_else(|| RuntimeError::Run(format!("output \"{name}\" has unsupported type {ty}")))?;
    macro_rules! extract {
        ($t:ty, $to:expr) => {{
            let (shape, values) = value.try_extract_tensor::<$t>().map_err(err)?;
            (shape.to_vec(), bytes_of(values, $to))
        }};
    }
    let (shape, data) = match dtype {
        DType::F32 => extract!(f32, f32::to_le_bytes),
        DType::F64 => extract!(f64, f64::to_le_bytes),
        DType::F16 => extract!(half::f16, |v: half::f16| v.to_bits().to_le_bytes()),
        DType::I8 => extract!(i8, i8::to_le_bytes),
        DType::I16 => extract!(i16, i16::to_le_bytes),
        DType::I32 => extract!(i32, i32::to_le_bytes),
        DType::I64 => extract!(i64, i64::to_le_bytes),
        DType::U8 => extract!(u8, u8::to_le_bytes),
        DType::U16 => extract!(u16, u16::to_le_bytes),
        DType::U32 => extract!(u32, u32::to_le_bytes),
        DType::U64 => extract!(u64, u64::to_le_bytes),
        DType::Bool => extract!(bool, |v: bool| [u8::from(v)]),
    };
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| RuntimeError::Run(format!("output \"{name}\" has a negative dimension")))?;
    Ok(TensorData::new(dtype, shape, data)?)
}
