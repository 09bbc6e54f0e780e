//! The stages an agent holds: ONNX bytes cached on disk by content address (checked on every read), loaded
//! into the runtime once, shared by all requests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use strata_runtime::{Backend, LoadedStage, TractBackend};

/// A loaded stage.
pub type Stage = Arc<dyn LoadedStage>;

/// Blob cache plus loaded stages.
pub struct StageStore {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Stage>>,
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn valid_digest(d: &str) -> bool {
    d.len() == 64
        && d.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl StageStore {
    /// A store caching blobs under `dir`.
    pub fn open(dir: PathBuf) -> std::io::Result<StageStore> {
        std::fs::create_dir_all(&dir)?;
        Ok(StageStore {
            dir,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stage>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A loaded stage by digest.
    pub fn get(&self, digest: &str) -> Option<Stage> {
        self.lock().get(digest).cloned()
    }

    /// Digests of the loaded stages, sorted.
    pub fn ready(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Forgets loaded stages not in `keep`.
    pub fn retain(&self, keep: &[String]) {
        self.lock().retain(|d, _| keep.contains(d));
    }

    /// The cached bytes of a blob, if present and intact (a corrupt file is deleted).
    pub fn cached_blob(&self, digest: &str) -> Option<Vec<u8>> {
        if !valid_digest(digest) {
            return None;
        }
        let path = self.dir.join(format!("{digest}.onnx"));
        let bytes = std::fs::read(&path).ok()?;
        if sha256_hex(&bytes) == digest {
            Some(bytes)
        } else {
            tracing::warn!(digest, "cached blob is corrupt; deleting it");
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// Caches a blob after checking its digest.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), String> {
        if !valid_digest(digest) {
            return Err(format!("invalid digest \"{digest}\""));
        }
        let actual = sha256_hex(bytes);
        if actual != digest {
            return Err(format!(
                "blob {digest}: content hashes to {actual}; refused"
            ));
        }
        // A temp name of its own per writer: two tasks may cache the same blob at once.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{digest}.{}.{n}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join(format!("{digest}.onnx")))
            .map_err(|e| format!("cannot store blob {digest}: {e}"))
    }

    /// Loads a cached blob into the runtime (blocking: call from a blocking thread).
    pub fn load(&self, digest: &str) -> Result<Stage, String> {
        if let Some(s) = self.get(digest) {
            return Ok(s);
        }
        let bytes = self
            .cached_blob(digest)
            .ok_or_else(|| format!("stage {digest} is not cached"))?;
        let stage: Stage = TractBackend
            .load(&bytes, &HashMap::new())
            .map_err(|e| format!("stage {digest}: {e}"))?
            .into();
        self.lock().insert(digest.to_string(), stage.clone());
        Ok(stage)
    }
}
