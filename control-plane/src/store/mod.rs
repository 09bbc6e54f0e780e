//! The control plane's state store: a key-value store with the semantics of etcd v3, so that an etcd
//! backend can replace the embedded one without touching callers.
//!
//! - **Revisions.** The store has one revision counter. An empty store is at revision 1 (as etcd); every
//!   write transaction that changes something (a put, a delete that removes a key, a txn branch with such
//!   writes, leases expiring) raises it by exactly one, and every key it touches gets that `mod_revision`. A
//!   request that changes nothing (deleting an absent key, a txn with only reads) leaves it alone.
//! - **Keys** are non-empty strings, listed in byte order. A prefix is a plain string prefix: `/a/` matches
//!   `/a/b` but not `/ab`.
//! - **Watches** deliver one [`WatchBatch`] per revision, in revision order, with no gap and no duplicate. A
//!   watcher that asks for history the store no longer has, or falls too far behind, gets
//!   [`StoreError::Compacted`] and must re-list ([`Store::range`]) then watch from the listed revision + 1.
//! - **Leases** bind keys to a time-to-live: when a lease expires or is revoked its keys are deleted (with
//!   `Delete` events) in one revision.
//! - **Elections** ([`Store::campaign`]) are built on leases and create revisions, as etcd's.

use std::time::Duration;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod election;
pub mod embedded;
pub mod etcd;

pub use election::Leadership;
pub use embedded::EmbeddedStore;
pub use etcd::{EtcdConfig, EtcdStore, EtcdTls, EtcdUrlError};

/// A store-wide revision number (see the [module docs](self)).
pub type Revision = i64;

/// The id of a lease granted by [`Store::grant_lease`].
pub type LeaseId = i64;

/// A key and its value, with its history counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (since it was last deleted).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// The number of writes since the key was created: 1 after creation.
    pub version: i64,
    /// The lease the key is bound to, if any.
    pub lease: Option<LeaseId>,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created or overwritten; this is its new state.
    Put(KeyValue),
    /// The key was deleted at `mod_revision`.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deletion.
        mod_revision: Revision,
    },
}

impl Event {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// Events of one revision (a transaction may produce several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision of every event in the batch.
    pub revision: Revision,
    /// The changes, in the order the transaction made them.
    pub events: Vec<Event>,
}

/// The stream [`Store::watch`] returns. It ends after an error.
pub type WatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<WatchBatch, StoreError>> + Send>>;

/// The result of [`Store::range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The matching keys, sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store revision the read saw: watch from `revision + 1` to follow on without a gap.
    pub revision: Revision,
}

/// How a [`Compare`] relates the key's current state (left) to its target (right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// current == target
    Equal,
    /// current != target
    NotEqual,
    /// current < target
    Less,
    /// current > target
    Greater,
}

/// What a [`Compare`] looks at. An absent key has version, mod and create revision 0; a `Value` compare on
/// an absent key is always false (as etcd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version; 0 means "absent".
    Version(i64),
    /// The key's `mod_revision`.
    ModRevision(Revision),
    /// The key's `create_revision`.
    CreateRevision(Revision),
    /// The key's value (compared bytewise).
    Value(Vec<u8>),
}

/// One condition of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: String,
    /// The relation that must hold.
    pub op: CompareOp,
    /// The field and the value to compare with.
    pub target: CompareTarget,
}

/// One operation of a [`Txn`] branch. Operations apply in order; a later one sees the earlier ones' writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read a key; its result lands in [`TxnResult::gets`].
    Get(String),
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// The lease to bind the key to (`None` detaches it from any lease).
        lease: Option<LeaseId>,
    },
    /// Delete a key (nothing happens if it is absent).
    Delete(String),
    /// Delete every key starting with the prefix.
    DeletePrefix(String),
}

/// A transaction: if every compare holds, run `success`, else `failure`; atomically, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The conditions (all must hold; none means "true").
    pub compare: Vec<Compare>,
    /// The branch run when every compare holds.
    pub success: Vec<TxnOp>,
    /// The branch run otherwise.
    pub failure: Vec<TxnOp>,
}

/// The outcome of [`Store::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the compares held (the success branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
    /// One entry per `Get` op of the branch taken, in order.
    pub gets: Vec<Option<KeyValue>>,
}

/// Why a store request failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A watch asked for history the store no longer has (or fell too far behind): re-list, then watch
    /// from the listed revision + 1.
    #[error(
        "revision {requested} is no longer available (history is compacted up to revision {compacted}): \
         re-list and watch from the listed revision + 1"
    )]
    Compacted {
        /// The revision the watch needed.
        requested: Revision,
        /// History up to and including this revision is gone.
        compacted: Revision,
    },
    /// The lease does not exist: it expired, was revoked, or was never granted.
    #[error("lease {0} not found (expired or revoked): grant a new lease and write its keys again")]
    LeaseNotFound(LeaseId),
    /// The store cannot be reached (e.g. etcd is down); retry later.
    #[error("store unavailable: {0}; retry later")]
    Unavailable(String),
    /// The storage backend failed (I/O or database error).
    #[error("store backend error: {0}")]
    Backend(String),
    /// A stored record cannot be decoded.
    #[error("corrupt store record: {0}; restore the store from a backup")]
    Corrupt(String),
    /// The request is malformed (empty key, zero TTL, negative revision).
    #[error("invalid store request: {0}")]
    InvalidArgument(String),
}

/// A key-value store with etcd v3 semantics (see the [module docs](self)). All operations are linearizable.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs ("embedded", "etcd").
    fn name(&self) -> &'static str;

    /// The key's current state, or `None` if it is absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, and the revision the read saw.
    async fn range(&self, prefix: &str) -> Result<Range, StoreError>;

    /// Writes a key, bound to `lease` if given ([`StoreError::LeaseNotFound`] if that lease does not exist).
    /// Overwriting keeps `create_revision` and bumps `version`. Returns the new revision.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError>;

    /// Returns whether the key existed, and the store revision after the call.
    async fn delete(&self, key: &str) -> Result<(bool, Revision), StoreError>;

    /// Deletes every key starting with `prefix` in one revision. Returns how many keys were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;

    /// All compares true -> success ops, else failure ops; atomically, at one revision (no revision bump if
    /// the branch taken writes nothing). A failing op (e.g. an unknown lease) fails the whole txn unapplied.
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;

    /// Changes under `prefix` from revision `from` on (inclusive, as etcd's start_revision); `from == 0`
    /// means "changes after now". The watch is in place when this returns: every later write is delivered.
    /// A `from` older than the oldest revision the store still has yields [`StoreError::Compacted`] (as the
    /// first stream item or from this call); so does falling too far behind. The stream ends after an error.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// The store's current revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Grants a lease; keys put with it are deleted (with Delete events) when it expires or is revoked.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews a lease for its full TTL; returns the TTL. [`StoreError::LeaseNotFound`] once it expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Revokes a lease and deletes its keys at once.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Campaigns in `election` (a key prefix) with a key bound to `lease`, and returns once this candidate
    /// leads (see [`election`]). [`StoreError::LeaseNotFound`] if the lease ends first. etcd runs its
    /// native election API; other stores the same recipe on their own primitives.
    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Leadership, StoreError> {
        election::campaign(self, election, value, lease).await
    }
}
