//! What the runtime's corpus suites (`tests/corpus.rs`, `tests/backends.rs`) and the backends benchmark share:
//! where the repository is, the corpus manifest, and the cluster tests' tolerance.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The cluster tests' tolerance (`cli/tests/sandbox`'s `assert_outputs_match`), relative: 1e-4·(1 + |b|).
pub const TOLERANCE: f64 = 1e-4;

/// A model of the corpus, as `corpus/models/manifest.json` lists it.
#[derive(Deserialize)]
pub struct Entry {
    pub name: String,
    pub file: String,
    pub inputs: Vec<InputEntry>,
}

/// One of its inputs, with the sample the corpus keeps for it.
#[derive(Deserialize)]
pub struct InputEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub npy: String,
}

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The corpus manifest; a missing corpus says how to build it.
pub fn manifest() -> Vec<Entry> {
    let path = root().join("corpus/models/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the corpus with `python3 corpus/fetch.py`",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("manifest.json parses")
}
