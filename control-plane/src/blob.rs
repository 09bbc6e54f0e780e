//! Content-addressed blob storage: models and stage files, named by the SHA-256 of their bytes.
//!
//! [`BlobStore`] is the seam (an `object_store`-backed implementation can sit behind it);
//! [`DirBlobStore`] keeps blobs as files in a directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The SHA-256 of `bytes`, as 64 lower-case hex characters: a blob's address.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why a blob store request failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes given do not hash to the digest they were stored under; nothing was stored.
    #[error("blob digest mismatch: expected sha256 {expected}, the bytes hash to {actual}")]
    DigestMismatch {
        /// The digest the caller gave.
        expected: String,
        /// The SHA-256 of the bytes.
        actual: String,
    },
    /// The digest is not 64 lower-case hex characters.
    #[error("invalid blob digest {0:?}: expected 64 lower-case hex characters (a SHA-256)")]
    InvalidDigest(String),
    /// A stored blob no longer hashes to its digest (the storage corrupted it); delete it and push again.
    #[error(
        "stored blob {digest} is corrupt (its bytes hash to {actual}): delete it and push it again"
    )]
    Corrupt {
        /// The blob's digest.
        digest: String,
        /// The SHA-256 of the bytes read.
        actual: String,
    },
    /// The storage failed.
    #[error("blob storage I/O error: {0}")]
    Io(String),
}

/// Blobs addressed by the SHA-256 of their content.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under `digest` after checking `sha256(bytes) == digest`. Idempotent.
    async fn put(&self, digest: &str, bytes: Bytes) -> Result<(), BlobError>;
    /// The blob's bytes (checked against the digest), or `None` if absent.
    async fn get(&self, digest: &str) -> Result<Option<Bytes>, BlobError>;
    /// Whether the blob is stored.
    async fn contains(&self, digest: &str) -> Result<bool, BlobError>;
    /// Deletes the blob; whether it existed.
    async fn delete(&self, digest: &str) -> Result<bool, BlobError>;
    /// [`BlobStore::get`] from this store alone, never from peers (what a peer asking for a blob gets).
    async fn get_local(&self, digest: &str) -> Result<Option<Bytes>, BlobError> {
        self.get(digest).await
    }
}

/// A [`BlobStore`] shared by control-plane replicas without shared storage: blobs live in each replica's
/// local store, and a blob missing here is fetched (and its hash checked) from the replicas registered under
/// [`crate::keys::CONTROLLERS`], then kept. A model pushed to one replica is thus planned by the leader, and
/// the leader's stage files are served by every replica.
pub struct PeerBlobStore {
    local: std::sync::Arc<dyn BlobStore>,
    store: std::sync::Arc<dyn crate::store::Store>,
    channels: strata_proto::call::Channels,
}

impl PeerBlobStore {
    /// Blobs in `local`, with peers found in `store`.
    pub fn new(
        local: std::sync::Arc<dyn BlobStore>,
        store: std::sync::Arc<dyn crate::store::Store>,
    ) -> PeerBlobStore {
        PeerBlobStore {
            local,
            store,
            channels: strata_proto::call::Channels::new(std::time::Duration::from_secs(2)),
        }
    }

    async fn fetch_from_peers(&self, digest: &str) -> Result<Option<Bytes>, BlobError> {
        let peers = self
            .store
            .range(crate::keys::CONTROLLERS)
            .await
            .map_err(|e| BlobError::Io(format!("cannot list peer control planes: {e}")))?;
        for kv in peers.kvs {
            let Ok(peer) = serde_json::from_slice::<crate::records::ControllerRecord>(&kv.value)
            else {
                continue;
            };
            let Ok(channel) = self.channels.get(&peer.address) else {
                continue;
            };
            let fetch = strata_proto::call::fetch_blob_with(channel, digest, true);
            match tokio::time::timeout(std::time::Duration::from_secs(60), fetch).await {
                Ok(Ok(bytes)) => {
                    let bytes = Bytes::from(bytes);
                    self.local.put(digest, bytes.clone()).await?;
                    tracing::info!(digest, peer = %peer.id, "blob fetched from a peer control plane");
                    return Ok(Some(bytes));
                }
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => {}
                Ok(Err(status)) => {
                    tracing::warn!(digest, peer = %peer.id, error = %status.message(), "peer blob fetch failed");
                }
                Err(_) => tracing::warn!(digest, peer = %peer.id, "peer blob fetch timed out"),
            }
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl BlobStore for PeerBlobStore {
    async fn put(&self, digest: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.local.put(digest, bytes).await
    }

    async fn get(&self, digest: &str) -> Result<Option<Bytes>, BlobError> {
        match self.local.get(digest).await? {
            Some(bytes) => Ok(Some(bytes)),
            None => self.fetch_from_peers(digest).await,
        }
    }

    async fn contains(&self, digest: &str) -> Result<bool, BlobError> {
        self.local.contains(digest).await
    }

    async fn delete(&self, digest: &str) -> Result<bool, BlobError> {
        self.local.delete(digest).await
    }

    async fn get_local(&self, digest: &str) -> Result<Option<Bytes>, BlobError> {
        self.local.get(digest).await
    }
}

/// A [`BlobStore`] in a directory: blob `d` is the file `root/sha256/<first two hex of d>/<d>`. Writes go
/// to a temporary file in the same directory, synced, then renamed, so a blob file is always complete.
#[derive(Debug)]
pub struct DirBlobStore {
    root: PathBuf,
}

/// Distinguishes the temporary files of concurrent writes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl DirBlobStore {
    /// A blob store under `root`, created if needed. Blocking (it creates a directory).
    pub fn open(root: impl Into<PathBuf>) -> Result<DirBlobStore, BlobError> {
        let root = root.into();
        let sha = root.join("sha256");
        std::fs::create_dir_all(&sha).map_err(|e| io_error("create", &sha, &e))?;
        Ok(DirBlobStore { root })
    }

    /// The file of a blob, after checking the digest cannot escape the directory.
    fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let valid = digest.len() == 64
            && digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(BlobError::InvalidDigest(digest.to_owned()));
        }
        Ok(self.root.join("sha256").join(&digest[..2]).join(digest))
    }
}

fn io_error(action: &str, path: &Path, e: &std::io::Error) -> BlobError {
    BlobError::Io(format!("{action} {}: {e}", path.display()))
}

/// Runs blocking file work (and hashing) off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BlobError::Io(format!("a blob task failed: {e}")))?
}

/// Writes `bytes` to `path` through a synced temporary file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    let dir = path
        .parent()
        .ok_or_else(|| BlobError::Io(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, &e))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let written = std::fs::File::create(&temp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        // Best effort: the write already failed, and a leftover temporary file is harmless.
        let _ = std::fs::remove_file(&temp);
        return Err(io_error("write", path, &e));
    }
    // Make the rename durable; some file systems cannot sync a directory, which only costs durability.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[async_trait::async_trait]
impl BlobStore for DirBlobStore {
    async fn put(&self, digest: &str, bytes: Bytes) -> Result<(), BlobError> {
        let path = self.path(digest)?;
        let expected = digest.to_owned();
        blocking(move || {
            let actual = sha256_hex(&bytes);
            if actual != expected {
                return Err(BlobError::DigestMismatch { expected, actual });
            }
            if path.exists() {
                return Ok(());
            }
            write_atomically(&path, &bytes)
        })
        .await
    }

    async fn get(&self, digest: &str) -> Result<Option<Bytes>, BlobError> {
        let path = self.path(digest)?;
        let digest = digest.to_owned();
        blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error("read", &path, &e)),
            };
            let actual = sha256_hex(&bytes);
            if actual != digest {
                return Err(BlobError::Corrupt { digest, actual });
            }
            Ok(Some(Bytes::from(bytes)))
        })
        .await
    }

    async fn contains(&self, digest: &str) -> Result<bool, BlobError> {
        let path = self.path(digest)?;
        tokio::fs::try_exists(&path)
            .await
            .map_err(|e| io_error("check", &path, &e))
    }

    async fn delete(&self, digest: &str) -> Result<bool, BlobError> {
        let path = self.path(digest)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("delete", &path, &e)),
        }
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
        out
    }

    #[tokio::test]
    async fn round_trip_and_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path()).expect("open");
        let bytes = Bytes::from_static(b"model bytes");
        let digest = sha256_hex(&bytes);
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
            Some(bytes),
            "round trip"
        );
        let expected = dir.path().join("sha256").join(&digest[..2]).join(&digest);
        assert_eq!(
            files(dir.path()),
            [expected],
            "one file at sha256/<2 hex>/<digest>, no temp file"
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
    }

    #[tokio::test]
    async fn put_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path()).expect("open");
        let bytes = Bytes::from(vec![7u8; 100_000]);
        let digest = sha256_hex(&bytes);
        let puts = (0..8).map(|_| blobs.put(&digest, bytes.clone()));
        for result in futures::future::join_all(puts).await {
            result.expect("concurrent put");
        }
        blobs.put(&digest, bytes.clone()).await.expect("put again");
        assert_eq!(blobs.get(&digest).await.expect("get"), Some(bytes));
        assert_eq!(files(dir.path()).len(), 1, "one file, no temp files left");
    }

    #[tokio::test]
    async fn digest_mismatch_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path()).expect("open");
        let claimed = sha256_hex(b"the real model");
        let result = blobs
            .put(&claimed, Bytes::from_static(b"something else"))
            .await;
        match result {
            Err(BlobError::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, claimed);
                assert_eq!(actual, sha256_hex(b"something else"));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        assert!(files(dir.path()).is_empty(), "a refused put writes nothing");
        assert!(!blobs.contains(&claimed).await.expect("contains"));
    }

    #[tokio::test]
    async fn path_tricks_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path().join("blobs")).expect("open");
        let good = sha256_hex(b"x");
        let bad = [
            String::new(),
            "../../etc/passwd".to_owned(),
            format!("../{}", &good[3..]),
            format!("{}/..", &good[..62]),
            good.to_uppercase(),
            good[..63].to_owned(),
            format!("{good}0"),
            format!("sha256:{good}"),
            format!("/{}", &good[1..]),
        ];
        for digest in &bad {
            let put = blobs.put(digest, Bytes::from_static(b"x")).await;
            assert!(
                matches!(put, Err(BlobError::InvalidDigest(_))),
                "put {digest:?}: {put:?}"
            );
            let get = blobs.get(digest).await;
            assert!(
                matches!(get, Err(BlobError::InvalidDigest(_))),
                "get {digest:?}: {get:?}"
            );
            let contains = blobs.contains(digest).await;
            assert!(
                matches!(contains, Err(BlobError::InvalidDigest(_))),
                "contains {digest:?}"
            );
            let delete = blobs.delete(digest).await;
            assert!(
                matches!(delete, Err(BlobError::InvalidDigest(_))),
                "delete {digest:?}"
            );
        }
        assert!(files(dir.path()).is_empty(), "nothing written anywhere");
    }

    #[tokio::test]
    async fn corrupt_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = DirBlobStore::open(dir.path()).expect("open");
        let digest = sha256_hex(b"original");
        blobs
            .put(&digest, Bytes::from_static(b"original"))
            .await
            .expect("put");
        let path = dir.path().join("sha256").join(&digest[..2]).join(&digest);
        std::fs::write(&path, b"bit rot").expect("corrupt the file");
        let get = blobs.get(&digest).await;
        assert!(
            matches!(get, Err(BlobError::Corrupt { .. })),
            "get of a corrupt blob: {get:?}"
        );
    }
}
