//! The corpus's models, read and analysed: shared by the planner's examples and benchmarks (`#[path]`
//! module). Needs the corpus: `python3 corpus/fetch.py`.

use std::path::Path;

use strata_planner::analyse::{self, Analysis, InputShape};
use strata_planner::model::Model;

#[derive(serde::Deserialize)]
struct Entry {
    name: String,
    file: String,
    inputs: Vec<InputEntry>,
}

#[derive(serde::Deserialize)]
struct InputEntry {
    name: String,
    shape: Vec<usize>,
}

/// One corpus model with its analysis at the manifest's input shapes.
pub struct CorpusModel {
    pub name: String,
    pub model: Model,
    pub analysis: Analysis,
}

/// Every model in `root/corpus/models/manifest.json`, in the manifest's order.
pub fn load(root: &Path) -> Result<Vec<CorpusModel>, Box<dyn std::error::Error>> {
    let dir = root.join("corpus/models");
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).map_err(|e| {
        format!("corpus/models/manifest.json: {e} (run `python3 corpus/fetch.py` first)")
    })?;
    let entries: Vec<Entry> = serde_json::from_str(&manifest)?;
    entries
        .into_iter()
        .map(|e| {
            let bytes = std::fs::read(dir.join(&e.file))?;
            let model = Model::from_bytes(&bytes)?;
            let shapes: Vec<InputShape> = e
                .inputs
                .into_iter()
                .map(|i| InputShape {
                    name: i.name,
                    dims: i.shape,
                })
                .collect();
            let analysis = analyse::analyse(&model, &bytes, &shapes)?;
            Ok(CorpusModel {
                name: e.name,
                model,
                analysis,
            })
        })
        .collect()
}
