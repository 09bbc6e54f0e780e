//! The backend interface: load a stage's ONNX bytes once, run it many times.

use std::collections::HashMap;

use strata_core::{DType, TensorData};

/// Why a stage could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The model bytes were rejected.
    #[error("cannot load model: {0}")]
    Load(String),
    /// An input the model needs was not given.
    #[error("missing input \"{name}\" (the model needs: {needed})")]
    MissingInput {
        /// The input.
        name: String,
        /// All inputs.
        needed: String,
    },
    /// An input the model does not have.
    #[error("unknown input \"{name}\" (the model's inputs: {needed})")]
    UnknownInput {
        /// The given name.
        name: String,
        /// All inputs.
        needed: String,
    },
    /// Wrong dtype.
    #[error("input \"{name}\": expected {expected}, got {got}")]
    WrongDType {
        /// Input.
        name: String,
        /// Expected dtype.
        expected: String,
        /// Given dtype.
        got: DType,
    },
    /// Wrong shape.
    #[error("input \"{name}\": expected shape {expected}, got {got:?}")]
    WrongShape {
        /// Input.
        name: String,
        /// Expected shape (`?` for free dims).
        expected: String,
        /// Given shape.
        got: Vec<usize>,
    },
    /// The backend failed while running.
    #[error("execution failed: {0}")]
    Run(String),
    /// The backend cannot be used on this machine (a missing library or execution provider); the reason says
    /// what to install or set.
    #[error("backend {backend} is unavailable: {reason}")]
    Unavailable {
        /// The backend asked for (`ort-cpu`, `ort-cuda`, ...).
        backend: String,
        /// Why, and what to do about it.
        reason: String,
    },
    /// The backend produced bytes that do not make a tensor.
    #[error("execution produced a malformed tensor: {0}")]
    Tensor(#[from] strata_core::TensorError),
}

/// An output's dtype and dimensions as a loaded stage declares them (`None`: known only when run).
pub type OutputFact = (DType, Vec<Option<usize>>);

/// A loaded, ready-to-run stage.
pub trait LoadedStage: Send + Sync {
    /// Input names, in the model's order.
    fn input_names(&self) -> &[String];
    /// Output names, in the model's order.
    fn output_names(&self) -> &[String];
    /// What the stage takes for each input, in [`LoadedStage::input_names`]' order: its dtype and dimensions
    /// (`None` for a free one). Empty when the backend cannot tell.
    fn input_facts(&self) -> &[OutputFact] {
        &[]
    }
    /// What the stage promises for each output, in [`LoadedStage::output_names`]' order: its dtype and
    /// dimensions (`None` for one known only when run). Empty when the backend cannot tell before running.
    fn output_facts(&self) -> &[OutputFact] {
        &[]
    }
    /// Runs the stage on named inputs and returns its outputs by name. Inputs not named by the stage are an
    /// error; so are missing ones.
    fn run(
        &self,
        inputs: &HashMap<String, TensorData>,
    ) -> Result<HashMap<String, TensorData>, RuntimeError>;
}

/// Something that turns ONNX bytes into a [`LoadedStage`].
pub trait Backend: Send + Sync {
    /// A short name (`tract`, `ort-cuda`, ...).
    fn name(&self) -> &'static str;
    /// Loads and optimises a model. `input_shapes` fixes symbolic input dimensions.
    fn load(
        &self,
        onnx: &[u8],
        input_shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<Box<dyn LoadedStage>, RuntimeError>;
}
