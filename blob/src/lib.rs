//! Content-addressed blob storage: models and stage files, named by the [`Digest`] of their bytes and checked
//! against it on every write and every read, so a blob that reaches a planner or a runtime is the blob that
//! was named. [`BlobStore`] is the seam (an object-store implementation can sit behind it); [`DirBlobStore`]
//! keeps blobs as files in a directory. The control plane keeps models and stages here, and every agent
//! caches the stages it serves here.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use strata_core::{Digest, DigestMismatch};

/// Why a blob store request failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes given do not hash to the digest they were stored under; nothing was stored.
    #[error("blob digest mismatch: {0}")]
    DigestMismatch(#[from] DigestMismatch),
    /// A stored blob no longer hashes to its digest (the storage corrupted it).
    #[error("stored blob {} is corrupt (its bytes hash to {}): delete it and store it again", .0.expected, .0.actual)]
    Corrupt(DigestMismatch),
    /// The storage failed.
    #[error("blob storage: cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done ("read", "write", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A blocking task of the store could not finish (the runtime is shutting down).
    #[error("blob storage task failed: {0}")]
    Task(String),
    /// Another process holds the blob directory (one process owns a directory: its collector deletes what
    /// its own records do not reference).
    #[error(
        "blob directory {} is in use by another process; give each control plane or agent its own",
        .0.display()
    )]
    InUse(PathBuf),
}

/// One stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last stored (a put of a blob already present refreshes it).
    pub stored: SystemTime,
}

/// Blobs addressed by the SHA-256 of their content.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under `digest` after checking that they hash to it. Idempotent; storing a blob that is
    /// already present refreshes its [`BlobInfo::stored`] time (a collector keeps recently stored blobs).
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<(), BlobError>;
    /// The blob's bytes (checked against the digest), or `None` if absent.
    async fn get(&self, digest: &Digest) -> Result<Option<Bytes>, BlobError>;
    /// Whether the blob is stored.
    async fn contains(&self, digest: &Digest) -> Result<bool, BlobError>;
    /// Deletes the blob; whether it existed.
    async fn delete(&self, digest: &Digest) -> Result<bool, BlobError>;
    /// Every blob stored, in digest order.
    async fn list(&self) -> Result<Vec<BlobInfo>, BlobError>;
    /// Deletes the blob only if it was last stored before `cutoff`, atomically with respect to
    /// [`BlobStore::put`]: a put racing the deletion either refreshes the blob before it is judged (and it
    /// stays) or finds it gone and stores it anew. Whether it was deleted.
    async fn delete_if_stored_before(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool, BlobError>;
    /// [`BlobStore::get`] from this store alone, never from elsewhere (what a peer asking for a blob gets).
    async fn get_local(&self, digest: &Digest) -> Result<Option<Bytes>, BlobError> {
        self.get(digest).await
    }
}

/// A [`BlobStore`] in a directory: blob `d` is the file `root/sha256/<first two hex of d>/<d>`. Writes go to a
/// temporary file in the same directory, synced, then renamed, so a blob file is always complete. Blocking
/// file work runs off the async threads. One process owns the directory (an exclusive lock on `root/LOCK`);
/// within it, a put and a conditional delete of the same blob never interleave.
#[derive(Debug)]
pub struct DirBlobStore {
    root: PathBuf,
    /// Serialise puts and conditional deletes per blob (by digest, in stripes).
    stripes: std::sync::Arc<Vec<parking_lot::Mutex<()>>>,
    /// Held while the store is open.
    _owner: std::fs::File,
}

/// Stripes of blob locks.
const STRIPES: usize = 64;

/// Distinguishes the temporary files of concurrent writes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BlobError {
    let path = path.to_path_buf();
    move |source| BlobError::Io {
        action,
        path,
        source,
    }
}

impl DirBlobStore {
    /// A blob store under `root`, created if needed, with the temporary files a crash left behind removed.
    /// Blocking (it creates and reads directories). One process owns a blob directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<DirBlobStore, BlobError> {
        let root = root.into();
        let sha = root.join("sha256");
        std::fs::create_dir_all(&sha).map_err(io("create", &sha))?;
        let lock_path = root.join("LOCK");
        let owner = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("create", &lock_path))?;
        match owner.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(BlobError::InUse(root)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", &lock_path)(e)),
        }
        for shard in std::fs::read_dir(&sha).map_err(io("list", &sha))?.flatten() {
            let Ok(entries) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".") {
                    // Best effort: a leftover that cannot be removed is only wasted space.
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(DirBlobStore {
            root,
            stripes: std::sync::Arc::new(
                (0..STRIPES).map(|_| parking_lot::Mutex::new(())).collect(),
            ),
            _owner: owner,
        })
    }

    /// The lock of a blob's stripe (shared with blocking tasks).
    fn stripe(&self, digest: &Digest) -> (std::sync::Arc<Vec<parking_lot::Mutex<()>>>, usize) {
        // The digest is uniform: its first two hex digits (a byte) pick the stripe.
        let index = u8::from_str_radix(&digest.as_str()[..2], 16).map_or(0, usize::from) % STRIPES;
        (self.stripes.clone(), index)
    }

    /// The file of a blob (a [`Digest`] is 64 hex characters, so it cannot escape the directory).
    fn path(&self, digest: &Digest) -> PathBuf {
        let d = digest.as_str();
        self.root.join("sha256").join(&d[..2]).join(d)
    }

    fn list_blocking(root: &Path) -> Result<Vec<BlobInfo>, BlobError> {
        let sha = root.join("sha256");
        let mut out = Vec::new();
        for shard in std::fs::read_dir(&sha).map_err(io("list", &sha))? {
            let shard = shard.map_err(io("list", &sha))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&shard).map_err(io("list", &shard))? {
                let entry = entry.map_err(io("list", &shard))?;
                // Temporary files of writes in progress are not blobs.
                let Some(digest) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Deleted since the directory was read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io("stat", &entry.path())(e)),
                };
                out.push(BlobInfo {
                    digest,
                    size: meta.len(),
                    stored: meta.modified().map_err(io("stat", &entry.path()))?,
                });
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }
}

/// Runs blocking file work (and hashing) off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BlobError::Task(e.to_string()))?
}

/// Writes `bytes` to `path` through a synced temporary file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    let dir = path.parent().unwrap_or(path);
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let written = std::fs::File::create(&temp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        // Best effort: the write already failed, and a leftover temporary file is harmless.
        let _ = std::fs::remove_file(&temp);
        return Err(io("write", path)(e));
    }
    // Make the rename durable; some file systems cannot sync a directory, which only costs durability.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[async_trait::async_trait]
impl BlobStore for DirBlobStore {
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<(), BlobError> {
        let path = self.path(digest);
        let (stripes, stripe) = self.stripe(digest);
        let digest = digest.clone();
        blocking(move || {
            digest.verify(&bytes)?;
            let _blob = stripes[stripe].lock();
            // Present already: refresh its time, so that a collector sees it as just stored.
            match std::fs::File::options().write(true).open(&path) {
                Ok(file) => {
                    return file
                        .set_modified(SystemTime::now())
                        .map_err(io("touch", &path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("open", &path)(e)),
            }
            write_atomically(&path, &bytes)
        })
        .await
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Bytes>, BlobError> {
        let path = self.path(digest);
        let digest = digest.clone();
        blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io("read", &path)(e)),
            };
            digest.verify(&bytes).map_err(BlobError::Corrupt)?;
            Ok(Some(Bytes::from(bytes)))
        })
        .await
    }

    async fn contains(&self, digest: &Digest) -> Result<bool, BlobError> {
        let path = self.path(digest);
        tokio::fs::try_exists(&path)
            .await
            .map_err(io("check", &path))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, BlobError> {
        let path = self.path(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("delete", &path)(e)),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let root = self.root.clone();
        blocking(move || DirBlobStore::list_blocking(&root)).await
    }

    async fn delete_if_stored_before(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool, BlobError> {
        let path = self.path(digest);
        let (stripes, stripe) = self.stripe(digest);
        blocking(move || {
            // Judged and deleted under the blob's lock: a put either refreshed it before (and it stays) or
            // finds it gone after (and stores it anew). Readers never see it half-deleted.
            let _blob = stripes[stripe].lock();
            let stored = match std::fs::metadata(&path).and_then(|m| m.modified()) {
                Ok(stored) => stored,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io("stat", &path)(e)),
            };
            if stored >= cutoff {
                return Ok(false);
            }
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io("delete", &path)(e)),
            }
        })
        .await
    }
}

/// A size-bounded, least-recently-used cache of blobs in a directory that several processes may use at once
/// (the device SDK's stage cache: every app process, every one-shot `strata infer`). Same layout and checks as
/// [`DirBlobStore`] (`root/sha256/<2 hex>/<digest>`, written through a synced temporary file and a rename, so
/// a reader sees a whole blob or none; every read checked against the digest), without an owner lock:
/// - a read that finds a corrupt blob deletes it and says so ([`BlobError::Corrupt`]); the caller fetches it
///   again;
/// - a hit refreshes the file's modification time, the LRU order every process sees;
/// - after each store, the least recently used blobs are deleted until the cache is within its bound
///   (concurrent evictions may delete a little more than needed, never a blob being written: it is not
///   renamed into place yet, nor one just stored by this call). A blob larger than the whole bound is not
///   stored.
#[derive(Debug, Clone)]
pub struct SharedCache {
    root: PathBuf,
    max_bytes: u64,
}

/// Temporary files older than this are a crashed writer's leftovers (a live write finishes in far less).
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

impl SharedCache {
    /// The cache under `root` (created if needed) holding at most `max_bytes`. Blocking.
    pub fn open(root: impl Into<PathBuf>, max_bytes: u64) -> Result<SharedCache, BlobError> {
        let root = root.into();
        let fresh = !root.exists();
        let sha = root.join("sha256");
        std::fs::create_dir_all(&sha).map_err(io("create", &sha))?;
        // A cache this call creates is its user's alone: what is in it is run, and route tables are read
        // from beside it.
        #[cfg(unix)]
        if fresh {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
                .map_err(io("restrict", &root))?;
        }
        #[cfg(not(unix))]
        let _ = fresh;
        let cache = SharedCache { root, max_bytes };
        // Leftovers of crashed writers; another process's write in progress is younger than this.
        for shard in std::fs::read_dir(&sha).map_err(io("list", &sha))?.flatten() {
            for entry in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMP);
                if entry.file_name().to_string_lossy().starts_with('.') && stale {
                    // Best effort: a leftover that cannot be removed is only wasted space.
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(cache)
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its bound, bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        let d = digest.as_str();
        self.root.join("sha256").join(&d[..2]).join(d)
    }

    /// The blob's bytes, checked, refreshing its place in the LRU order; `None` if absent. A corrupt blob is
    /// deleted and reported as [`BlobError::Corrupt`]. Blocking.
    pub fn get(&self, digest: &Digest) -> Result<Option<Bytes>, BlobError> {
        let path = self.path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        if let Err(mismatch) = digest.verify(&bytes) {
            // Another process may have replaced it with a good copy meanwhile; deleting that costs a fetch.
            let _ = std::fs::remove_file(&path);
            return Err(BlobError::Corrupt(mismatch));
        }
        // Best effort: a blob whose time cannot be refreshed is only evicted a little early.
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Ok(Some(Bytes::from(bytes)))
    }

    /// Whether the blob is cached (not checked; [`SharedCache::get`] checks).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).exists()
    }

    /// Stores `bytes` under `digest` after checking them, then evicts the least recently used blobs beyond
    /// the bound. Whether it was stored (`false`: larger than the whole cache). Blocking.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<bool, BlobError> {
        digest.verify(bytes)?;
        if bytes.len() as u64 > self.max_bytes {
            return Ok(false);
        }
        let path = self.path(digest);
        write_atomically(&path, bytes)?;
        self.evict(Some(digest))?;
        Ok(true)
    }

    /// Every cached blob, in digest order (`stored`: last used).
    pub fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        DirBlobStore::list_blocking(&self.root)
    }

    /// Deletes least recently used blobs (never `keep`) until the cache is within its bound; the digests
    /// deleted.
    pub fn evict(&self, keep: Option<&Digest>) -> Result<Vec<Digest>, BlobError> {
        let mut blobs = self.list()?;
        let mut total: u64 = blobs.iter().map(|b| b.size).sum();
        blobs.sort_by_key(|b| b.stored);
        let mut deleted = Vec::new();
        for b in blobs {
            if total <= self.max_bytes {
                break;
            }
            if Some(&b.digest) == keep {
                continue;
            }
            let path = self.path(&b.digest);
            match std::fs::remove_file(&path) {
                Ok(()) => deleted.push(b.digest),
                // Another process evicted it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &path)(e)),
            }
            total = total.saturating_sub(b.size);
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    dirs.push(path)
                } else {
                    out.push(path)
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn round_trip_layout_and_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path()).expect("open");
        let bytes = Bytes::from_static(b"model bytes");
        let digest = Digest::of(&bytes);
        assert!(
            !blobs.contains(&digest).await.expect("contains"),
            "absent before put"
        );
        assert_eq!(
            blobs.get(&digest).await.expect("get"),
            None,
            "get of an absent blob"
        );
        blobs.put(&digest, bytes.clone()).await.expect("put");
        assert!(
            blobs.contains(&digest).await.expect("contains"),
            "present after put"
        );
        assert_eq!(
            blobs.get(&digest).await.expect("get"),
            Some(bytes.clone()),
            "round trip"
        );
        let expected = dir
            .path()
            .join("sha256")
            .join(&digest.as_str()[..2])
            .join(digest.as_str());
        assert_eq!(
            files(dir.path()),
            [dir.path().join("LOCK"), expected],
            "the lock and one file at sha256/<2 hex>/<digest>, no temp file"
        );
        let listed = blobs.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (&listed[0].digest, listed[0].size),
            (&digest, bytes.len() as u64)
        );
        assert!(
            blobs.delete(&digest).await.expect("delete"),
            "delete of a stored blob"
        );
        assert!(
            !blobs.delete(&digest).await.expect("delete"),
            "delete of an absent blob"
        );
        assert!(
            !blobs.contains(&digest).await.expect("contains"),
            "absent after delete"
        );
        assert!(blobs.list().await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn put_is_idempotent_and_refreshes_the_stored_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path()).expect("open");
        let bytes = Bytes::from(vec![7u8; 100_000]);
        let digest = Digest::of(&bytes);
        let puts = (0..8).map(|_| blobs.put(&digest, bytes.clone()));
        for result in futures::future::join_all(puts).await {
            result.expect("concurrent put");
        }
        let path = blobs.path(&digest);
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .expect("age the file");
        blobs.put(&digest, bytes.clone()).await.expect("put again");
        let stored = blobs.list().await.expect("list")[0].stored;
        assert!(
            stored > old + std::time::Duration::from_secs(3000),
            "put refreshed the time"
        );
        assert_eq!(blobs.get(&digest).await.expect("get"), Some(bytes));
        assert_eq!(
            files(dir.path()).len(),
            2,
            "the blob and the lock, no temp files left"
        );
    }

    #[tokio::test]
    async fn conditional_delete_spares_a_blob_stored_since_the_cutoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path()).expect("open");
        let bytes = Bytes::from_static(b"stage");
        let digest = Digest::of(&bytes);
        blobs.put(&digest, bytes.clone()).await.expect("put");
        let before_put = SystemTime::now() - std::time::Duration::from_secs(60);
        assert!(
            !blobs
                .delete_if_stored_before(&digest, before_put)
                .await
                .expect("delete"),
            "stored after the cutoff: kept"
        );
        assert_eq!(blobs.get(&digest).await.expect("get"), Some(bytes.clone()));
        let later = SystemTime::now() + std::time::Duration::from_secs(60);
        assert!(
            blobs
                .delete_if_stored_before(&digest, later)
                .await
                .expect("delete")
        );
        assert!(!blobs.contains(&digest).await.expect("contains"));
        assert!(
            !blobs
                .delete_if_stored_before(&digest, later)
                .await
                .expect("absent")
        );
        assert_eq!(
            files(dir.path()),
            [dir.path().join("LOCK")],
            "nothing left behind"
        );
    }

    #[tokio::test]
    async fn one_process_owns_a_blob_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirBlobStore::open(dir.path()).expect("open");
        match DirBlobStore::open(dir.path()) {
            Err(BlobError::InUse(path)) => assert_eq!(path, dir.path()),
            other => panic!("a second owner: {other:?}"),
        }
        drop(first);
        DirBlobStore::open(dir.path()).expect("free again once the first is closed");
    }

    #[tokio::test]
    async fn digest_mismatch_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path()).expect("open");
        let claimed = Digest::of(b"the real model");
        match blobs
            .put(&claimed, Bytes::from_static(b"something else"))
            .await
        {
            Err(BlobError::DigestMismatch(m)) => {
                assert_eq!(m.expected, claimed);
                assert_eq!(m.actual, Digest::of(b"something else"));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        assert_eq!(
            files(dir.path()),
            [dir.path().join("LOCK")],
            "a refused put writes nothing"
        );
        assert!(!blobs.contains(&claimed).await.expect("contains"));
    }

    #[tokio::test]
    async fn corrupt_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path()).expect("open");
        let digest = Digest::of(b"original");
        blobs
            .put(&digest, Bytes::from_static(b"original"))
            .await
            .expect("put");
        std::fs::write(blobs.path(&digest), b"bit rot").expect("corrupt the file");
        let get = blobs.get(&digest).await;
        assert!(
            matches!(get, Err(BlobError::Corrupt(_))),
            "get of a corrupt blob: {get:?}"
        );
    }

    fn blob(n: u8, len: usize) -> (Digest, Vec<u8>) {
        let bytes = vec![n; len];
        (Digest::of(&bytes), bytes)
    }

    #[test]
    fn the_shared_cache_evicts_the_least_recently_used_beyond_its_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = SharedCache::open(dir.path(), 300).expect("open");
        let (a, b, c) = (blob(1, 100), blob(2, 100), blob(3, 100));
        for (d, bytes) in [&a, &b, &c] {
            assert!(cache.put(d, bytes).expect("put"));
            // Distinct modification times, whatever the file system's resolution.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // `a` is used again, so `b` is now the least recently used.
        assert_eq!(cache.get(&a.0).expect("get").as_deref(), Some(&a.1[..]));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let d = blob(4, 100);
        assert!(cache.put(&d.0, &d.1).expect("put"));
        let left: Vec<Digest> = cache
            .list()
            .expect("list")
            .into_iter()
            .map(|i| i.digest)
            .collect();
        assert!(!left.contains(&b.0), "the least recently used goes first");
        for kept in [&a.0, &c.0, &d.0] {
            assert!(left.contains(kept));
        }
        // Larger than the whole cache: not stored, nothing evicted for it.
        let huge = blob(5, 301);
        assert!(!cache.put(&huge.0, &huge.1).expect("put"));
        assert_eq!(cache.list().expect("list").len(), 3);
        // Bytes that do not match their digest are refused.
        assert!(matches!(
            cache.put(&a.0, &b.1),
            Err(BlobError::DigestMismatch(_))
        ));
    }

    #[test]
    fn a_corrupt_cached_blob_is_reported_and_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = SharedCache::open(dir.path(), 1 << 20).expect("open");
        let (d, bytes) = blob(7, 64);
        cache.put(&d, &bytes).expect("put");
        let path = cache.path(&d);
        std::fs::write(&path, b"flipped bits").expect("corrupt it");
        assert!(matches!(cache.get(&d), Err(BlobError::Corrupt(_))));
        assert!(
            !path.exists(),
            "a corrupt blob is deleted, so the next get fetches it"
        );
        assert_eq!(cache.get(&d).expect("get"), None);
    }

    #[test]
    fn many_writers_and_readers_at_once_see_whole_blobs_and_keep_the_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let root = root.clone();
                std::thread::spawn(move || {
                    // Each thread opens its own handle, like a process would.
                    let cache = SharedCache::open(&root, 20_000).expect("open");
                    for i in 0..40u8 {
                        let (d, bytes) = blob(i % 24, 1000 + usize::from(i % 24) * 10);
                        cache.put(&d, &bytes).expect("put");
                        let (d, bytes) = blob((i + t) % 24, 1000 + usize::from((i + t) % 24) * 10);
                        if let Some(got) = cache.get(&d).expect("a read never sees a partial blob")
                        {
                            assert_eq!(&got[..], &bytes[..]);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let cache = SharedCache::open(&root, 20_000).expect("open");
        let total: u64 = cache.list().expect("list").iter().map(|b| b.size).sum();
        assert!(total <= 20_000, "{total} bytes cached over a 20,000 bound");
    }
}
