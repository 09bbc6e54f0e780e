//! File reading and writing shared by the commands.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use strata_planner::model::Model;
use strata_runtime::{TensorData, npy};

/// Reads and validates an ONNX model.
pub fn load_model(path: &Path) -> Result<(Vec<u8>, Model)> {
    if path.is_dir() {
        bail!("{} is a directory, not an ONNX model file", path.display());
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
    let model = Model::from_bytes(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok((bytes, model))
}

/// Reads `NAME=FILE.npy` arguments.
pub fn load_inputs(args: &[String]) -> Result<HashMap<String, TensorData>> {
    let mut inputs = HashMap::new();
    for arg in args {
        let (name, file) = arg
            .split_once('=')
            .with_context(|| format!("--input \"{arg}\" must look like NAME=FILE.npy"))?;
        let bytes =
            std::fs::read(file).with_context(|| format!("--input {name}: cannot read {file}"))?;
        let tensor = npy::decode(&bytes).with_context(|| format!("--input {name}: {file}"))?;
        if inputs.insert(name.to_string(), tensor).is_some() {
            bail!("--input {name} is given twice");
        }
    }
    Ok(inputs)
}

pub use strata_runtime::npy::file_stem;

/// Writes tensors as `<dir>/<name>.npy`.
pub fn write_outputs(
    dir: &Path,
    names: &[String],
    values: &HashMap<String, TensorData>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in names {
        let t = values
            .get(name)
            .with_context(|| format!("output \"{name}\" was not produced"))?;
        let path = dir.join(format!("{}.npy", file_stem(name)));
        std::fs::write(&path, npy::encode(t))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Human-readable bytes.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
