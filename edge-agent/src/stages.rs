//! The stages an agent holds: ONNX bytes cached in a content-addressed blob store (checked on every read and
//! write; a corrupt file is deleted and fetched again), loaded into the runtime once and shared by all
//! requests, with each stage's recent compute time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use strata_blob::{BlobError, BlobStore, DirBlobStore};
use strata_core::Digest;
use strata_runtime::{Backend, LoadedStage, RuntimeError};

/// A loaded stage.
pub type Stage = Arc<dyn LoadedStage>;

/// Why a stage could not be cached or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The blob cache failed (or refused bytes that do not match the digest).
    #[error("stage {digest}: {source}")]
    Cache {
        /// The stage.
        digest: Digest,
        /// Why.
        source: BlobError,
    },
    /// The stage is not in the cache.
    #[error("stage {0} is not cached")]
    NotCached(Digest),
    /// The runtime refused the stage.
    #[error("stage {digest}: {source}")]
    Load {
        /// The stage.
        digest: Digest,
        /// Why.
        source: RuntimeError,
    },
    /// The loader task died.
    #[error("stage {digest}: the loader task failed: {reason}")]
    Task {
        /// The stage.
        digest: Digest,
        /// Why.
        reason: String,
    },
}

/// A stage's batched form.
#[derive(Clone)]
enum Batched {
    /// Being rewritten, loaded and checked.
    Loading,
    /// Ready: it answers each item of a batch as the stage answers it alone.
    Ready(Stage),
    /// The stage cannot be batched (why); it is served one request at a time.
    Refused,
}

/// Blob cache plus loaded stages.
pub struct StageStore {
    blobs: DirBlobStore,
    backend: Arc<dyn Backend>,
    /// Refuse a batched form that runs slower per request than runs alone.
    check_speed: bool,
    loaded: Mutex<HashMap<Digest, Stage>>,
    /// Stages rewritten with a free batch dimension, for models that batch (made on first use).
    batched: Mutex<HashMap<Digest, Batched>>,
    /// Recent mean compute time per loaded stage, ms (exponentially weighted), and its runs.
    compute_ms: Mutex<HashMap<Digest, (f64, u64)>>,
}

impl StageStore {
    /// A store caching blobs under `dir` and loading stages into `backend`; `check_speed`: batch a stage only
    /// where its batched form is not slower per request than runs alone ([`strata_runtime::batch::verify`]).
    /// Blocking (it creates the directory).
    pub fn open(
        dir: PathBuf,
        backend: Arc<dyn Backend>,
        check_speed: bool,
    ) -> Result<StageStore, BlobError> {
        Ok(StageStore {
            blobs: DirBlobStore::open(dir)?,
            backend,
            check_speed,
            loaded: Mutex::new(HashMap::new()),
            batched: Mutex::new(HashMap::new()),
            compute_ms: Mutex::new(HashMap::new()),
        })
    }

    /// The backends this agent runs stages with.
    pub fn backends(&self) -> Vec<String> {
        vec![self.backend.name().to_string()]
    }

    /// A loaded stage by digest.
    pub fn get(&self, digest: &Digest) -> Option<Stage> {
        self.loaded.lock().get(digest).cloned()
    }

    /// How many stages are loaded.
    pub fn loaded_count(&self) -> usize {
        self.loaded.lock().len()
    }

    /// Digests of the loaded stages, sorted.
    pub fn ready(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.loaded.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Forgets loaded stages (and their times) not in `keep`.
    pub fn retain(&self, keep: &[Digest]) {
        self.loaded.lock().retain(|d, _| keep.contains(d));
        self.batched.lock().retain(|d, _| keep.contains(d));
        self.compute_ms.lock().retain(|d, _| keep.contains(d));
    }

    /// The batched form of a loaded stage, when it is ready. The first call starts making it (off the async
    /// threads: the stage rewritten with a free batch dimension, loaded, and checked on a batch of two against
    /// the stage itself, [`strata_runtime::batch`]) and answers `None`, as does every call until it is ready
    /// and every call for a stage that cannot be batched (logged once, with why).
    pub fn batched(self: &Arc<Self>, digest: &Digest) -> Option<Stage> {
        let mut batched = self.batched.lock();
        match batched.get(digest) {
            Some(Batched::Ready(stage)) => return Some(stage.clone()),
            Some(Batched::Loading | Batched::Refused) => return None,
            None => {}
        }
        let single = self.get(digest)?;
        batched.insert(digest.clone(), Batched::Loading);
        drop(batched);
        let store = self.clone();
        let digest = digest.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let made = match store.cached_blob(&digest).await {
                Ok(Some(bytes)) => {
                    let (backend, check_speed) = (store.backend.clone(), store.check_speed);
                    tokio::task::spawn_blocking(move || {
                        StageStore::make_batched(
                            backend.as_ref(),
                            &bytes,
                            single.as_ref(),
                            check_speed,
                        )
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(strata_runtime::batch::NotBatchable(format!(
                            "the check failed: {e}"
                        )))
                    })
                }
                Ok(None) => Err(strata_runtime::batch::NotBatchable(
                    "the stage is no longer cached".into(),
                )),
                Err(e) => Err(strata_runtime::batch::NotBatchable(e.to_string())),
            };
            let state = match made {
                Ok((stage, speed)) => {
                    tracing::info!(
                        %digest,
                        ms = started.elapsed().as_millis() as u64,
                        alone_ms = speed.alone_ms,
                        batched_ms = speed.batched_ms,
                        "stage batches"
                    );
                    Batched::Ready(stage)
                }
                Err(e) => {
                    tracing::info!(%digest, reason = %e, "stage served one request at a time");
                    Batched::Refused
                }
            };
            // Unless the stage was dropped meanwhile.
            if let Some(entry) = store.batched.lock().get_mut(&digest) {
                *entry = state;
            }
        });
        None
    }

    fn make_batched(
        backend: &dyn Backend,
        bytes: &[u8],
        single: &dyn LoadedStage,
        check_speed: bool,
    ) -> Result<(Stage, strata_runtime::batch::Speed), strata_runtime::batch::NotBatchable> {
        use strata_runtime::batch::{self, NotBatchable};
        let rewritten = batch::with_batch_dim(bytes)?;
        let stage = backend
            .load(&rewritten, &HashMap::new())
            .map_err(|e| NotBatchable(e.to_string()))?;
        let speed = if check_speed {
            batch::verify(single, stage.as_ref())?
        } else {
            batch::check_answers(single, stage.as_ref())?;
            batch::measure(single, stage.as_ref(), batch::TIMED_BATCH)?
        };
        Ok((stage.into(), speed))
    }

    /// The backend stages run on.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Records one run of a stage. The first run of a loaded stage is cold (allocations, caches) and is
    /// not counted; the second starts the mean, later runs move it by 0.2.
    pub fn record_run(&self, digest: &Digest, ms: f64) {
        let mut times = self.compute_ms.lock();
        let (mean, runs) = times.entry(digest.clone()).or_insert((ms, 0));
        *runs += 1;
        if *runs <= 2 {
            *mean = ms;
        } else {
            *mean = 0.8 * *mean + 0.2 * ms;
        }
    }

    /// Recent mean compute time of every stage run at least twice, ms (the first, cold run left out), and its
    /// runs since it was loaded (the cold one included).
    pub fn compute_ms(&self) -> HashMap<Digest, (f64, u64)> {
        self.compute_ms
            .lock()
            .iter()
            .filter(|(_, (_, runs))| *runs >= 2)
            .map(|(d, &timed)| (d.clone(), timed))
            .collect()
    }

    /// The cached bytes of a blob, if present and intact (a corrupt file is deleted, so it is fetched again).
    pub async fn cached_blob(&self, digest: &Digest) -> Result<Option<Bytes>, StageError> {
        match self.blobs.get(digest).await {
            Ok(found) => Ok(found),
            Err(BlobError::Corrupt(m)) => {
                tracing::warn!(%digest, actual = %m.actual, "cached blob is corrupt; deleting it");
                self.blobs
                    .delete(digest)
                    .await
                    .map_err(|source| StageError::Cache {
                        digest: digest.clone(),
                        source,
                    })?;
                Ok(None)
            }
            Err(source) => Err(StageError::Cache {
                digest: digest.clone(),
                source,
            }),
        }
    }

    /// Caches a blob after checking its digest.
    pub async fn put_blob(&self, digest: &Digest, bytes: Bytes) -> Result<(), StageError> {
        self.blobs
            .put(digest, bytes)
            .await
            .map_err(|source| StageError::Cache {
                digest: digest.clone(),
                source,
            })
    }

    /// Deletes the cached blobs not in `keep` that were last stored before `cutoff` (stages no longer
    /// assigned or routed); how many went.
    pub async fn collect(
        &self,
        keep: &std::collections::HashSet<Digest>,
        cutoff: std::time::SystemTime,
    ) -> Result<usize, BlobError> {
        let mut deleted = 0;
        for blob in self.blobs.list().await? {
            if !keep.contains(&blob.digest)
                && self
                    .blobs
                    .delete_if_stored_before(&blob.digest, cutoff)
                    .await?
            {
                tracing::info!(digest = %blob.digest, bytes = blob.size, "unused cached stage deleted");
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Loads a cached blob into the runtime (off the async threads: loading optimises the graph, which takes
    /// seconds for large stages).
    pub async fn load(self: &Arc<Self>, digest: &Digest) -> Result<Stage, StageError> {
        if let Some(s) = self.get(digest) {
            return Ok(s);
        }
        let bytes = self
            .cached_blob(digest)
            .await?
            .ok_or_else(|| StageError::NotCached(digest.clone()))?;
        let store = self.clone();
        let owned = digest.clone();
        let stage = tokio::task::spawn_blocking(move || {
            store
                .backend
                .load(&bytes, &HashMap::new())
                .map_err(|source| StageError::Load {
                    digest: owned,
                    source,
                })
        })
        .await
        .map_err(|e| StageError::Task {
            digest: digest.clone(),
            reason: e.to_string(),
        })??;
        let stage: Stage = stage.into();
        self.loaded.lock().insert(digest.clone(), stage.clone());
        Ok(stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cache_keeps_what_is_used_or_recent_and_drops_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stages = StageStore::open(
            dir.path().to_path_buf(),
            Arc::new(strata_runtime::TractBackend),
            true,
        )
        .expect("open");
        let (used, unused) = (Bytes::from_static(b"used"), Bytes::from_static(b"unused"));
        let (u, x) = (Digest::of(&used), Digest::of(&unused));
        stages.put_blob(&u, used).await.expect("put");
        stages.put_blob(&x, unused).await.expect("put");
        let keep: std::collections::HashSet<Digest> = [u.clone()].into();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        assert_eq!(
            stages.collect(&keep, long_ago).await.expect("collect"),
            0,
            "recent: kept"
        );
        let now = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        assert_eq!(stages.collect(&keep, now).await.expect("collect"), 1);
        assert!(
            stages.cached_blob(&u).await.expect("read").is_some(),
            "used: kept"
        );
        assert!(
            stages.cached_blob(&x).await.expect("read").is_none(),
            "unused: gone"
        );
    }
}
