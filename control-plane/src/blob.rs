//! Blobs on the control plane: [`PeerBlobStore`] (each replica's local blobs, with the ones it lacks fetched
//! from the other replicas) and the collector that deletes blobs no record references any more, on every
//! replica ([`collect`]).
//!
//! **Blob lifetime.** A blob lives while a record references it: a model record (`/models/`), a plan
//! (`/plans/`), a published or retiring route table (`/routes/`, `/retired/`). Writers store a blob before the
//! record that references it and store it again after (a put of a present blob only refreshes its time), and
//! the collector deletes a blob only when it was stored more than the grace period before the collector
//! listed it, no record referenced it in a read taken after that listing, and its time is still old when it
//! is deleted ([`BlobStore::delete_if_stored_before`], atomic with respect to puts). So a concurrent push of
//! the same bytes, or a model deleted and pushed again, never loses its blob, provided a writer stores its
//! record within the grace period of storing the blob (a push or a plan takes well under a second; the grace
//! is minutes); and a blob is never deleted while the store cannot be read.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use strata_blob::{BlobError, BlobInfo, BlobStore};
use strata_core::Digest;

use crate::error::ControlError;
use crate::keys;
use crate::plane::{ControlPlane, parse};
use crate::records::{ModelRecord, PlansRecord};

/// A [`BlobStore`] shared by control-plane replicas without shared storage: blobs live in each replica's
/// local store, and a blob missing here is fetched (and its hash checked) from the replicas registered under
/// [`crate::keys::CONTROLLERS`], then kept. A model pushed to one replica is thus planned by the leader, and
/// the leader's stage files are served by every replica.
pub struct PeerBlobStore {
    local: Arc<dyn BlobStore>,
    store: Arc<dyn crate::store::Store>,
    channels: strata_proto::call::Channels,
}

impl PeerBlobStore {
    /// Blobs in `local`, with peers found in `store`, dialled under `transport`.
    pub fn new(
        local: Arc<dyn BlobStore>,
        store: Arc<dyn crate::store::Store>,
        transport: strata_proto::transport::Transport,
    ) -> PeerBlobStore {
        PeerBlobStore {
            local,
            store,
            channels: strata_proto::call::Channels::new(Duration::from_secs(2), transport),
        }
    }

    async fn fetch_from_peers(&self, digest: &Digest) -> Result<Option<Bytes>, BlobError> {
        let peers = match self.store.range(keys::CONTROLLERS).await {
            Ok(range) => range.kvs,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot list peer control planes to fetch a blob");
                return Ok(None);
            }
        };
        for kv in peers {
            let peer = match serde_json::from_slice::<crate::records::ControllerRecord>(&kv.value) {
                Ok(peer) => peer,
                Err(e) => {
                    tracing::error!(key = %kv.key, error = %e, "corrupt controller record; skipping that peer");
                    continue;
                }
            };
            let channel = match self
                .channels
                .get(&peer.address, strata_proto::transport::Expect::Controller)
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(peer = %peer.id, error = %e, "peer has a bad address");
                    continue;
                }
            };
            let fetch = strata_proto::call::fetch_blob_with(channel, digest, true);
            match tokio::time::timeout(Duration::from_secs(60), fetch).await {
                Ok(Ok(bytes)) => {
                    let bytes = Bytes::from(bytes);
                    self.local.put(digest, bytes.clone()).await?;
                    tracing::info!(%digest, peer = %peer.id, "blob fetched from a peer control plane");
                    return Ok(Some(bytes));
                }
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => {}
                Ok(Err(status)) => {
                    tracing::warn!(%digest, peer = %peer.id, error = %status.message(), "peer blob fetch failed");
                }
                Err(_) => tracing::warn!(%digest, peer = %peer.id, "peer blob fetch timed out"),
            }
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl BlobStore for PeerBlobStore {
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<(), BlobError> {
        self.local.put(digest, bytes).await
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Bytes>, BlobError> {
        match self.local.get(digest).await? {
            Some(bytes) => Ok(Some(bytes)),
            None => self.fetch_from_peers(digest).await,
        }
    }

    async fn contains(&self, digest: &Digest) -> Result<bool, BlobError> {
        self.local.contains(digest).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, BlobError> {
        self.local.delete(digest).await
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        self.local.list().await
    }

    async fn delete_if_stored_before(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool, BlobError> {
        self.local.delete_if_stored_before(digest, cutoff).await
    }

    async fn get_local(&self, digest: &Digest) -> Result<Option<Bytes>, BlobError> {
        self.local.get(digest).await
    }
}

/// Every digest a record references: models, plans, published and retiring route tables. Fails (rather
/// than under-count) when a record cannot be read or decoded.
pub async fn referenced(plane: &ControlPlane) -> Result<BTreeSet<Digest>, ControlError> {
    let mut digests = BTreeSet::new();
    for kv in plane.store.range(keys::MODELS).await?.kvs {
        let model: ModelRecord = parse(&plane.corrupt, &kv.key, &kv.value)?;
        digests.insert(model.digest);
    }
    for kv in plane.store.range(keys::PLANS).await?.kvs {
        let plans: PlansRecord = parse(&plane.corrupt, &kv.key, &kv.value)?;
        for stage in plans.plans.iter().flat_map(|p| &p.stages) {
            digests.insert(stage.digest.clone());
        }
    }
    for prefix in [keys::ROUTES, keys::RETIRED] {
        for kv in plane.store.range(prefix).await?.kvs {
            let table = crate::records::route_table(&plane.corrupt, &kv)?;
            for stage in table.plans.iter().flat_map(|p| &p.stages) {
                match stage.digest.parse() {
                    Ok(d) => {
                        digests.insert(d);
                    }
                    // No blob has that name, so none is kept for it; the record is still noted.
                    Err(e) => plane.corrupt.note(&kv.key, &e),
                }
            }
        }
    }
    Ok(digests)
}

/// What one collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs deleted.
    pub deleted: Vec<Digest>,
    /// Bytes freed.
    pub bytes: u64,
    /// Unreferenced blobs kept because they were stored within the grace period.
    pub young: usize,
}

/// One pass of the collector on this replica's blobs (see the [module docs](self) for the rules).
pub async fn collect(plane: &ControlPlane) -> Result<Collected, ControlError> {
    let grace = plane.settings.blob_grace;
    // Listed first, referenced read after: a blob stored after the listing is not a candidate, and a
    // record written before the read is seen.
    let listed_at = SystemTime::now();
    let listed = plane.blobs.list().await?;
    let referenced = referenced(plane).await?;
    let old_before = listed_at
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut done = Collected::default();
    for blob in listed {
        if referenced.contains(&blob.digest) {
            continue;
        }
        if blob.stored >= old_before {
            done.young += 1;
            continue;
        }
        // Stored again since the listing (a push of the same bytes)? Then it stays.
        if plane
            .blobs
            .delete_if_stored_before(&blob.digest, old_before)
            .await?
        {
            tracing::info!(digest = %blob.digest, bytes = blob.size, "unreferenced blob deleted");
            done.bytes += blob.size;
            done.deleted.push(blob.digest);
        }
    }
    Ok(done)
}

/// Runs [`collect`] for ever, every quarter of the grace period (at least every second, at most every
/// minute); a pass that cannot read the store deletes nothing and is retried at the next tick.
pub async fn run_collector(plane: Arc<ControlPlane>) {
    let period =
        (plane.settings.blob_grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(period).await;
        match collect(&plane).await {
            Ok(done) if !done.deleted.is_empty() => {
                tracing::info!(
                    blobs = done.deleted.len(),
                    bytes = done.bytes,
                    "blob collection freed space"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "blob collection skipped: {e}"),
        }
    }
}
