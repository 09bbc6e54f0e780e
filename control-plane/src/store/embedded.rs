//! [`EmbeddedStore`]: the default [`Store`], on redb (a file, or memory).
//!
//! The current state lives in a `BTreeMap` cache that reads take briefly under a mutex. Writes run on
//! Tokio's blocking pool, one at a time (the database mutex is the writer lock): plan the changes against
//! the cache, commit them in one redb write transaction, then apply them to the cache, append the batch to
//! the in-memory watch log and broadcast it, all under the cache lock, so a watcher that snapshots the log
//! and subscribes under that lock sees every batch exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use super::{
    Compare, CompareOp, CompareTarget, Event, KeyValue, LeaseId, Range, Revision, Store,
    StoreError, Txn, TxnOp, TxnResult, WatchBatch, WatchStream,
};

/// Key -> encoded record (see [`encode`]).
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Store metadata: the current revision under [`REVISION_KEY`].
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// The record format version, the first byte of every record.
const RECORD_FORMAT: u8 = 1;
const RECORD_HEADER: usize = 1 + 4 * 8;
/// How many batches the watch log keeps: a watch from an older revision gets `Compacted`.
const LOG_CAPACITY: usize = 10_000;
/// How many batches a live watcher may fall behind before it gets `Compacted`.
const BROADCAST_CAPACITY: usize = 1024;
/// How often the background task looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// The default [`Store`]: redb on disk or in memory, with in-memory watch history and leases.
///
/// - The watch history is the last 10,000 revisions written by this process: after a restart, a watch
///   from a revision written before it gets [`StoreError::Compacted`] (watches from `0` or from
///   `current_revision + 1` work).
/// - Leases live in memory and do not survive a restart: opening a store deletes every key that was bound
///   to a lease, at one new revision (the first one watchable). Their holders re-register, as agents do
///   when `keep_alive` says [`StoreError::LeaseNotFound`]. Lease ids start from the clock (microseconds
///   since the Unix epoch), so ids granted after a restart do not reuse those of before.
/// - The constructors do blocking I/O but need no runtime. The store's methods must run inside a Tokio
///   runtime (multi- or current-thread); the first `grant_lease` spawns the task that expires leases on
///   that runtime. Dropping the last handle stops that task and ends every watch stream.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The database; its mutex is also the writer lock, so write transactions run one at a time.
    db: Mutex<Database>,
    state: Mutex<State>,
    events: broadcast::Sender<Arc<WatchBatch>>,
    reaper: OnceLock<()>,
}

struct State {
    kvs: BTreeMap<String, KeyValue>,
    revision: Revision,
    /// The batches of the last revisions, contiguous, oldest first.
    log: VecDeque<Arc<WatchBatch>>,
    log_capacity: usize,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

/// What one write transaction changes: each key's new state (`None`: deleted), its events in order, and
/// the leases it ends.
#[derive(Default)]
struct Changes {
    keys: BTreeMap<String, Option<KeyValue>>,
    events: Vec<Event>,
    revoked: Vec<LeaseId>,
}

impl EmbeddedStore {
    /// Opens the store in the redb file at `path`, creating it if needed. Blocking.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Database::create(path).map_err(|e| {
            let path = path.display();
            StoreError::Backend(format!("cannot open the store file {path}: {e}"))
        })?;
        Self::with_database(db, LOG_CAPACITY)
    }

    /// A store in memory (redb's in-memory backend): empty, and gone when dropped.
    pub fn in_memory() -> Result<EmbeddedStore, StoreError> {
        let db = Database::builder().create_with_backend(InMemoryBackend::new());
        Self::with_database(db.map_err(db_error)?, LOG_CAPACITY)
    }

    /// Builds the store, then deletes the keys bound to a lease: leases do not survive a restart.
    fn with_database(db: Database, log_capacity: usize) -> Result<EmbeddedStore, StoreError> {
        let (kvs, revision) = load(&db)?;
        let now = UNIX_EPOCH.elapsed().unwrap_or_default();
        let next_lease = i64::try_from(now.as_micros()).unwrap_or(0).max(1);
        let state = State {
            kvs,
            revision,
            log: VecDeque::new(),
            log_capacity,
            leases: HashMap::new(),
            next_lease,
        };
        let inner = Arc::new(Inner {
            db: Mutex::new(db),
            state: Mutex::new(state),
            events: broadcast::channel(BROADCAST_CAPACITY).0,
            reaper: OnceLock::new(),
        });
        let (orphans, revision) = inner.write(|batch| {
            let bound = batch.state.kvs.values().filter(|kv| kv.lease.is_some());
            Ok(bound.filter(|kv| batch.delete(&kv.key)).count())
        })?;
        if orphans > 0 {
            tracing::info!(orphans, revision, "deleted keys of leases of the last run");
        }
        Ok(EmbeddedStore { inner })
    }

    /// Runs a write on the blocking pool; it completes even if the caller stops waiting.
    async fn write<T: Send + 'static>(
        &self,
        plan: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<(T, Revision), StoreError> {
        let inner = Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || inner.write(plan)).await;
        result.map_err(|e| StoreError::Backend(format!("the store write task failed: {e}")))?
    }
}

/// Reads every record and the current revision.
fn load(db: &Database) -> Result<(BTreeMap<String, KeyValue>, Revision), StoreError> {
    let read = || -> Result<_, redb::Error> {
        // A write transaction, so that the tables of a new file get created.
        let txn = db.begin_write()?;
        let mut records = Vec::new();
        for entry in txn.open_table(KV)?.iter()? {
            let (key, record) = entry?;
            records.push((key.value().to_owned(), record.value().to_vec()));
        }
        let revision = txn
            .open_table(META)?
            .get(REVISION_KEY)?
            .map_or(1, |r| r.value());
        txn.commit()?;
        Ok((records, revision))
    };
    let (records, revision) = read().map_err(db_error)?;
    let kvs = records
        .into_iter()
        .map(|(key, record)| Ok((key.clone(), decode(&key, &record)?)));
    Ok((kvs.collect::<Result<_, StoreError>>()?, revision))
}

fn persist(db: &Database, revision: Revision, changes: &Changes) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(KV)?;
        for (key, change) in &changes.keys {
            match change {
                Some(kv) => table.insert(key.as_str(), encode(kv).as_slice())?,
                None => table.remove(key.as_str())?,
            };
        }
        txn.open_table(META)?.insert(REVISION_KEY, revision)?;
    }
    txn.commit()?;
    Ok(())
}

fn db_error(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(format!("embedded database: {}", e.into()))
}

/// Locks a mutex; a poisoned one means a write panicked half-way, so the cache cannot be trusted.
fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreError> {
    let poisoned = "a store operation panicked; restart the process";
    mutex
        .lock()
        .map_err(|_| StoreError::Backend(poisoned.to_owned()))
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("the key is empty".to_owned()));
    }
    Ok(())
}

/// A record: format byte; create_revision, mod_revision, version, lease (0 = none) as i64 little-endian;
/// the value.
fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + kv.value.len());
    out.push(RECORD_FORMAT);
    let lease = kv.lease.unwrap_or(0);
    for n in [kv.create_revision, kv.mod_revision, kv.version, lease] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&kv.value);
    out
}

fn decode(key: &str, record: &[u8]) -> Result<KeyValue, StoreError> {
    let corrupt =
        || StoreError::Corrupt(format!("key {key:?}: bad record ({} bytes)", record.len()));
    let (header, value) = record.split_at_checked(RECORD_HEADER).ok_or_else(corrupt)?;
    if header[0] != RECORD_FORMAT {
        return Err(corrupt());
    }
    let field = |i: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&header[1 + 8 * i..9 + 8 * i]);
        i64::from_le_bytes(bytes)
    };
    let lease = field(3);
    Ok(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: field(0),
        mod_revision: field(1),
        version: field(2),
        lease: (lease != 0).then_some(lease),
    })
}

/// The entries of `map` whose keys start with `prefix`, in order.
fn prefixed<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    let from: (Bound<&str>, Bound<&str>) = (Bound::Included(prefix), Bound::Unbounded);
    map.range::<str, _>(from)
        .take_while(move |(key, _)| key.starts_with(prefix))
}

/// One write transaction being planned against the state before it.
struct Batch<'a> {
    state: &'a State,
    /// The revision the batch commits at, if it changes anything.
    revision: Revision,
    changes: Changes,
}

impl Batch<'_> {
    /// The key as this batch has left it so far.
    fn get(&self, key: &str) -> Option<&KeyValue> {
        match self.changes.keys.get(key) {
            Some(change) => change.as_ref(),
            None => self.state.kvs.get(key),
        }
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<(), StoreError> {
        check_key(key)?;
        if let Some(id) = lease
            && !self.state.leases.get(&id).is_some_and(Lease::alive)
        {
            return Err(StoreError::LeaseNotFound(id));
        }
        let previous = self.get(key);
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: previous.map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
            version: previous.map_or(1, |p| p.version + 1),
            lease,
        };
        self.changes.events.push(Event::Put(kv.clone()));
        self.changes.keys.insert(key.to_owned(), Some(kv));
        Ok(())
    }

    /// Deletes a key; whether it existed.
    fn delete(&mut self, key: &str) -> bool {
        if self.get(key).is_none() {
            return false;
        }
        let (key, mod_revision) = (key.to_owned(), self.revision);
        self.changes.keys.insert(key.clone(), None);
        self.changes
            .events
            .push(Event::Delete { key, mod_revision });
        true
    }

    fn delete_prefix(&mut self, prefix: &str) -> u64 {
        let stored = prefixed(&self.state.kvs, prefix).map(|(key, _)| key);
        let changed = prefixed(&self.changes.keys, prefix).map(|(key, _)| key);
        let keys: BTreeSet<String> = stored.chain(changed).cloned().collect();
        keys.iter().map(|key| u64::from(self.delete(key))).sum()
    }

    /// Deletes the lease's keys and ends the lease.
    fn revoke(&mut self, id: LeaseId) -> Result<(), StoreError> {
        let state = self.state;
        let lease = state.leases.get(&id).ok_or(StoreError::LeaseNotFound(id))?;
        for key in &lease.keys {
            self.delete(key);
        }
        self.changes.revoked.push(id);
        Ok(())
    }

    fn holds(&self, compare: &Compare) -> Result<bool, StoreError> {
        check_key(&compare.key)?;
        let kv = self.get(&compare.key);
        let field = |f: fn(&KeyValue) -> i64| kv.map_or(0, f);
        let ordering = match &compare.target {
            CompareTarget::Version(v) => field(|kv| kv.version).cmp(v),
            CompareTarget::ModRevision(r) => field(|kv| kv.mod_revision).cmp(r),
            CompareTarget::CreateRevision(r) => field(|kv| kv.create_revision).cmp(r),
            // As etcd: comparing the value of an absent key is false.
            CompareTarget::Value(v) => match kv {
                Some(kv) => kv.value.cmp(v),
                None => return Ok(false),
            },
        };
        Ok(match compare.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        })
    }

    /// Runs a txn; whether its compares held, and its gets.
    fn txn(&mut self, txn: Txn) -> Result<(bool, Vec<Option<KeyValue>>), StoreError> {
        let mut succeeded = true;
        for compare in &txn.compare {
            succeeded &= self.holds(compare)?;
        }
        let mut gets = Vec::new();
        for op in if succeeded { txn.success } else { txn.failure } {
            match op {
                TxnOp::Get(key) => {
                    check_key(&key)?;
                    gets.push(self.get(&key).cloned());
                }
                TxnOp::Put { key, value, lease } => self.put(&key, value, lease)?,
                TxnOp::Delete(key) => {
                    check_key(&key)?;
                    self.delete(&key);
                }
                TxnOp::DeletePrefix(prefix) => {
                    self.delete_prefix(&prefix);
                }
            }
        }
        Ok((succeeded, gets))
    }
}

impl Lease {
    fn alive(&self) -> bool {
        self.deadline > Instant::now()
    }
}

impl Inner {
    /// Plans a write against the cache, commits it to redb, then applies it to the cache and publishes
    /// its batch. Blocking. Returns the plan's output and the store revision after the write.
    fn write<T>(
        &self,
        plan: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError>,
    ) -> Result<(T, Revision), StoreError> {
        let db = lock(&self.db)?;
        let (out, revision, changes) = {
            let state = lock(&self.state)?;
            let revision = state.revision + 1;
            let mut batch = Batch {
                state: &state,
                revision,
                changes: Changes::default(),
            };
            (plan(&mut batch)?, revision, batch.changes)
        };
        let writes = !changes.events.is_empty();
        if writes {
            persist(&db, revision, &changes).map_err(db_error)?;
        }
        let mut state = lock(&self.state)?;
        for (key, change) in changes.keys {
            let old_lease = state.kvs.remove(&key).and_then(|kv| kv.lease);
            if let Some(lease) = old_lease.and_then(|id| state.leases.get_mut(&id)) {
                lease.keys.remove(&key);
            }
            if let Some(kv) = change {
                if let Some(lease) = kv.lease.and_then(|id| state.leases.get_mut(&id)) {
                    lease.keys.insert(key.clone());
                }
                state.kvs.insert(key, kv);
            }
        }
        for id in changes.revoked {
            state.leases.remove(&id);
        }
        if writes {
            state.revision = revision;
            let batch = Arc::new(WatchBatch {
                revision,
                events: changes.events,
            });
            if state.log.len() >= state.log_capacity {
                state.log.pop_front();
            }
            state.log.push_back(Arc::clone(&batch));
            // An error only means nobody is watching.
            let _ = self.events.send(batch);
        }
        Ok((out, state.revision))
    }
}

/// Expires leases every [`REAP_INTERVAL`] until the store is dropped.
async fn reap(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        match lock(&inner.state) {
            Ok(state) if !state.leases.values().any(|lease| !lease.alive()) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("lease expiry stopped: {e}");
                return;
            }
        }
        let expire = move || {
            inner.write(|batch| {
                let state = batch.state;
                let mut expired = state.leases.iter().filter(|(_, lease)| !lease.alive());
                expired.try_for_each(|(id, _)| batch.revoke(*id))
            })
        };
        match tokio::task::spawn_blocking(expire).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("expiring leases failed (retrying): {e}"),
            Err(e) => tracing::warn!("expiring leases failed (retrying): {e}"),
        }
    }
}

/// A watch's position: batches to replay from the log, then live ones.
struct Watcher {
    prefix: String,
    from: Revision,
    replay: std::vec::IntoIter<Arc<WatchBatch>>,
    live: broadcast::Receiver<Arc<WatchBatch>>,
    /// The revision of the last batch received (delivered or filtered out).
    seen: Revision,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        for batch in self.replay.by_ref() {
            if let Some(batch) = matching(&batch, &self.prefix) {
                return Some(Ok(batch));
            }
        }
        loop {
            match self.live.recv().await {
                Ok(batch) => {
                    self.seen = batch.revision;
                    let wanted = batch.revision >= self.from;
                    if let Some(batch) = matching(&batch, &self.prefix).filter(|_| wanted) {
                        return Some(Ok(batch));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let requested = self.from.max(self.seen + 1);
                    let compacted = self.seen.saturating_add_unsigned(missed);
                    return Some(Err(StoreError::Compacted {
                        requested,
                        compacted,
                    }));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The batch's events under `prefix`, or `None` if there are none.
fn matching(batch: &WatchBatch, prefix: &str) -> Option<WatchBatch> {
    let events = batch.events.iter().filter(|e| e.key().starts_with(prefix));
    let events: Vec<Event> = events.cloned().collect();
    let revision = batch.revision;
    (!events.is_empty()).then_some(WatchBatch { revision, events })
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        check_key(key)?;
        Ok(lock(&self.inner.state)?.kvs.get(key).cloned())
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let state = lock(&self.inner.state)?;
        let kvs = prefixed(&state.kvs, prefix)
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok(Range {
            kvs,
            revision: state.revision,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let key = key.to_owned();
        let ((), revision) = self
            .write(move |batch| batch.put(&key, value, lease))
            .await?;
        Ok(revision)
    }

    async fn delete(&self, key: &str) -> Result<(bool, Revision), StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.write(move |batch| Ok(batch.delete(&key))).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let prefix = prefix.to_owned();
        let (deleted, _) = self
            .write(move |batch| Ok(batch.delete_prefix(&prefix)))
            .await?;
        Ok(deleted)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let ((succeeded, gets), revision) = self.write(move |batch| batch.txn(txn)).await?;
        Ok(TxnResult {
            succeeded,
            revision,
            gets,
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        if from < 0 {
            let message = format!("watch from revision {from}");
            return Err(StoreError::InvalidArgument(message));
        }
        let state = lock(&self.inner.state)?;
        let from = if from == 0 { state.revision + 1 } else { from };
        let oldest = state
            .log
            .front()
            .map_or(state.revision + 1, |batch| batch.revision);
        // Revision 1 (the empty store) has no batch: a log from revision 2 on has all history.
        if from < oldest && oldest > 2 {
            return Err(StoreError::Compacted {
                requested: from,
                compacted: oldest - 1,
            });
        }
        let skip = usize::try_from(from - oldest).unwrap_or(0);
        let replay: Vec<_> = state.log.iter().skip(skip).cloned().collect();
        let watcher = Watcher {
            prefix: prefix.to_owned(),
            from,
            replay: replay.into_iter(),
            live: self.inner.events.subscribe(),
            seen: state.revision,
        };
        drop(state);
        let stream = futures::stream::unfold(Some(watcher), |watcher| async move {
            let mut watcher = watcher?;
            let item = watcher.next().await?;
            let more = item.is_ok().then_some(watcher);
            Some((item, more))
        });
        Ok(Box::pin(stream))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(lock(&self.inner.state)?.revision)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let deadline = Instant::now().checked_add(ttl).filter(|_| !ttl.is_zero());
        let deadline = deadline.ok_or_else(|| {
            StoreError::InvalidArgument(format!("lease TTL {ttl:?}: must be above zero"))
        })?;
        // The task holds a `Weak`: it ends once the store is dropped.
        let reaper = || drop(tokio::spawn(reap(Arc::downgrade(&self.inner))));
        self.inner.reaper.get_or_init(reaper);
        let mut state = lock(&self.inner.state)?;
        let id = state.next_lease;
        state.next_lease += 1;
        let lease = Lease {
            ttl,
            deadline,
            keys: BTreeSet::new(),
        };
        state.leases.insert(id, lease);
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let mut state = lock(&self.inner.state)?;
        match state.leases.get_mut(&lease) {
            Some(entry) if entry.alive() => {
                let renewed = Instant::now().checked_add(entry.ttl);
                entry.deadline = renewed.unwrap_or(entry.deadline);
                Ok(entry.ttl)
            }
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let ((), _) = self.write(move |batch| batch.revoke(lease)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn store() -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::in_memory().expect("in-memory store"))
    }

    crate::store_conformance_tests!(async { ((), store()) });

    async fn put(store: &EmbeddedStore, key: &str, lease: Option<LeaseId>) -> Revision {
        let result = store.put(key, key.as_bytes().to_vec(), lease).await;
        result.expect("put")
    }

    async fn next(stream: &mut WatchStream) -> Option<Result<WatchBatch, StoreError>> {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        next.expect("the watch answers in time")
    }

    fn revision_of(item: Option<Result<WatchBatch, StoreError>>) -> Revision {
        item.expect("a batch").expect("no error").revision
    }

    #[tokio::test]
    async fn a_fresh_store_is_at_revision_one_with_all_history() {
        let store = EmbeddedStore::in_memory().expect("store");
        assert_eq!(store.current_revision().await.expect("revision"), 1);
        assert_eq!(put(&store, "/a", None).await, 2, "the first write");
        let mut stream = store.watch("/", 1).await.expect("watch from 1");
        assert_eq!(revision_of(next(&mut stream).await), 2, "all history");
    }

    #[tokio::test]
    async fn reopen_keeps_values_and_revision_and_drops_lease_bound_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let (kept, before) = {
            let store = EmbeddedStore::open(&path).expect("open");
            put(&store, "/keep", None).await;
            put(&store, "/keep", None).await;
            let ttl = Duration::from_secs(60);
            let lease = store.grant_lease(ttl).await.expect("lease");
            put(&store, "/agent/a", Some(lease)).await;
            let kept = store.get("/keep").await.expect("get");
            (kept, put(&store, "/agent/b", Some(lease)).await)
        };
        let store = EmbeddedStore::open(&path).expect("reopen");
        let reopened = store.get("/keep").await.expect("get");
        assert_eq!(reopened, kept, "values survive");
        let revision = store.current_revision().await.expect("revision");
        assert_eq!(
            revision,
            before + 1,
            "dropping lease-bound keys is one revision"
        );
        let agents = store.range("/agent/").await.expect("range");
        assert!(agents.kvs.is_empty(), "lease-bound keys are gone");

        let old = store.watch("/", before).await.err();
        let compacted = matches!(old, Some(StoreError::Compacted { .. }));
        assert!(compacted, "history is gone after a restart: {old:?}");
        let mut from_now = store.watch("/", 0).await.expect("watch from 0");
        let mut from_before = store.watch("/agent/", before + 1).await.expect("watch");
        let dropped = next(&mut from_before)
            .await
            .expect("a batch")
            .expect("no error");
        let deleted: Vec<&str> = dropped.events.iter().map(Event::key).collect();
        assert_eq!(
            deleted,
            ["/agent/a", "/agent/b"],
            "the deletion is watchable"
        );
        let next_revision = put(&store, "/new", None).await;
        assert_eq!(revision_of(next(&mut from_now).await), next_revision);
    }

    #[tokio::test]
    async fn watch_from_a_compacted_revision_is_refused() {
        let db = Database::builder().create_with_backend(InMemoryBackend::new());
        let store = EmbeddedStore::with_database(db.expect("database"), 3).expect("store");
        let mut revisions = Vec::new();
        for _ in 0..5 {
            revisions.push(put(&store, "/k", None).await);
        }
        match store.watch("/", revisions[1]).await {
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                assert_eq!((requested, compacted), (revisions[1], revisions[1]));
            }
            other => panic!("expected Compacted, got {:?}", other.map(|_| "a stream")),
        }
        let mut oldest = store.watch("/", revisions[2]).await.expect("watch");
        for &expected in &revisions[2..] {
            assert_eq!(revision_of(next(&mut oldest).await), expected, "replay");
        }
    }

    #[tokio::test]
    async fn a_lagging_watcher_gets_compacted_then_the_stream_ends() {
        let store = EmbeddedStore::in_memory().expect("store");
        let mut stream = store.watch("/", 0).await.expect("watch");
        for _ in 0..BROADCAST_CAPACITY + 10 {
            put(&store, "/k", None).await;
        }
        let lagged = next(&mut stream).await;
        let compacted = matches!(lagged, Some(Err(StoreError::Compacted { .. })));
        assert!(compacted, "a watcher that fell behind: {lagged:?}");
        assert!(next(&mut stream).await.is_none(), "then the stream ends");
    }

    #[tokio::test]
    async fn dropping_the_store_stops_the_reaper_and_ends_watches() {
        let store = EmbeddedStore::in_memory().expect("store");
        let lease = store.grant_lease(Duration::from_secs(60)).await;
        lease.expect("a lease starts the reaper");
        let mut stream = store.watch("/", 0).await.expect("watch");
        let weak = Arc::downgrade(&store.inner);
        drop(store);
        tokio::time::sleep(REAP_INTERVAL * 3).await;
        assert!(weak.upgrade().is_none(), "nothing keeps the store alive");
        assert!(
            next(&mut stream).await.is_none(),
            "watches end with the store"
        );
    }

    #[test]
    fn records_round_trip_and_bad_records_are_corrupt() {
        let kv = KeyValue {
            key: "/k".to_owned(),
            value: b"value".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: Some(77),
        };
        assert_eq!(decode("/k", &encode(&kv)).expect("decode"), kv);
        let bare = KeyValue {
            lease: None,
            value: Vec::new(),
            ..kv
        };
        assert_eq!(decode("/k", &encode(&bare)).expect("decode"), bare);
        let short = decode("/k", &[RECORD_FORMAT, 1, 2]);
        assert!(matches!(short, Err(StoreError::Corrupt(_))), "{short:?}");
        let mut future_format = encode(&bare);
        future_format[0] = RECORD_FORMAT + 1;
        let future = decode("/k", &future_format);
        assert!(matches!(future, Err(StoreError::Corrupt(_))), "{future:?}");
    }
}
