//! Each replica's copy of the published route tables: one store watch feeds every `WatchRoutes` stream, so
//! the store sees one watcher per replica however many agents and devices watch, and watchers' streams stay
//! open (on the last tables) while the store is unreachable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use strata_proto::v1;
use tokio::sync::broadcast;

use crate::keys;
use crate::records::CorruptRecords;
use crate::store::{Event, KeyValue, Store};

/// How many changes a watcher may fall behind before it is sent the whole set again.
const BACKLOG: usize = 1024;

/// What a subscriber of the cache hears.
#[derive(Debug, Clone)]
pub enum CacheEvent {
    /// One table changed (a deleted model's table has `deleted` set).
    Table(Arc<v1::RouteTable>),
    /// The cache listed the store again (after a broken watch): the whole set may have changed, even to lower
    /// revisions (a new store). Subscribers start over from a fresh snapshot.
    Resync,
}

/// The published route tables, kept current from the store.
pub struct RouteCache {
    tables: Mutex<BTreeMap<String, Arc<v1::RouteTable>>>,
    updates: broadcast::Sender<CacheEvent>,
    corrupt: CorruptRecords,
    /// Whether the store watch is up (listed and watching).
    following: std::sync::atomic::AtomicBool,
    /// Whether the cache has listed the store at least once (before that it knows nothing, and must not
    /// tell watchers that there are no models).
    loaded: std::sync::atomic::AtomicBool,
}

impl RouteCache {
    /// An empty cache that notes corrupt tables in `corrupt`.
    pub fn new(corrupt: CorruptRecords) -> RouteCache {
        RouteCache {
            tables: Mutex::new(BTreeMap::new()),
            updates: broadcast::channel(BACKLOG).0,
            corrupt,
            following: std::sync::atomic::AtomicBool::new(false),
            loaded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the cache has read the store's tables at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A table from the store; a corrupt one is logged, counted and left out (the previous table of that
    /// model stays until a good one is published).
    fn decode(&self, kv: &KeyValue) -> Option<Arc<v1::RouteTable>> {
        crate::records::route_table(&self.corrupt, kv)
            .ok()
            .map(Arc::new)
    }

    fn tables(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, Arc<v1::RouteTable>>> {
        self.tables.lock()
    }

    /// Every table now, and the events from then on (each exactly once).
    pub fn subscribe(&self) -> (Vec<Arc<v1::RouteTable>>, broadcast::Receiver<CacheEvent>) {
        let tables = self.tables();
        (tables.values().cloned().collect(), self.updates.subscribe())
    }

    /// Whether some current table has a stage with `digest` on `tier` (what a device may fetch: the stages
    /// it runs itself).
    pub fn has_stage(&self, digest: &str, tier: strata_core::Tier) -> bool {
        let tier = v1::Tier::from(tier) as i32;
        self.tables().values().any(|t| {
            t.plans
                .iter()
                .flat_map(|p| &p.stages)
                .any(|s| s.digest == digest && s.tier == tier)
        })
    }

    fn set(&self, table: Arc<v1::RouteTable>) {
        let mut tables = self.tables();
        let changed = tables.get(&table.model).is_none_or(|old| **old != *table);
        if changed {
            tables.insert(table.model.clone(), table.clone());
            let _ = self.updates.send(CacheEvent::Table(table));
        }
    }

    fn remove(&self, model: &str, revision: u64) {
        let mut tables = self.tables();
        if tables.remove(model).is_some() {
            let _ = self
                .updates
                .send(CacheEvent::Table(Arc::new(v1::RouteTable {
                    model: model.to_string(),
                    revision,
                    deleted: true,
                    ..Default::default()
                })));
        }
    }

    /// Follows the store for ever: list, then watch from the list's revision; after a broken or compacted
    /// watch, list again (after a backoff of 500 ms doubling to 5 s while it keeps failing, cut short when
    /// `reachable` turns true: the replica saw the store answer again) and pass on only what changed
    /// meanwhile. The break and the recovery are logged once each.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut reachable: tokio::sync::watch::Receiver<bool>,
    ) {
        use std::sync::atomic::Ordering;
        let mut backoff =
            strata_proto::task::Backoff::new(Duration::from_millis(500), Duration::from_secs(5), 1);
        let mut logged = false;
        loop {
            let why = match self.follow(store.as_ref()).await {
                Ok(()) => "the store ended the watch".to_string(),
                Err(e) => e.to_string(),
            };
            if self.following.swap(false, Ordering::Relaxed) {
                // It was following: a new break, logged once.
                backoff.succeeded();
                logged = false;
            }
            if logged {
                tracing::debug!(error = %why, "route watch still broken");
            } else {
                tracing::warn!(error = %why, "route watch broke; watchers keep the last tables; listing again");
                logged = true;
            }
            let pause = tokio::time::sleep(backoff.failed());
            tokio::pin!(pause);
            // After an outage, tables published as the store came back must reach watchers at once, not a
            // backoff later.
            let down = !*reachable.borrow();
            if down {
                tokio::select! {
                    () = &mut pause => {}
                    gone = async { reachable.wait_for(|up| *up).await.is_err() } => {
                        if gone {
                            // The replica is gone: nothing will say so again.
                            pause.await;
                        }
                    }
                }
            } else {
                pause.await;
            }
        }
    }

    async fn follow(&self, store: &dyn Store) -> Result<(), crate::store::StoreError> {
        let range = store.range(keys::ROUTES).await?;
        {
            // The listing replaces the set (a model whose key is absent is gone; a corrupt table keeps its
            // model's previous one), and subscribers start over from it.
            let mut tables = self.tables();
            let mut fresh = BTreeMap::new();
            for kv in &range.kvs {
                let model = kv.key.trim_start_matches(keys::ROUTES).to_string();
                if let Some(table) = self.decode(kv).or_else(|| tables.get(&model).cloned()) {
                    fresh.insert(model, table);
                }
            }
            *tables = fresh;
            self.loaded
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = self.updates.send(CacheEvent::Resync);
        }
        let mut watch = store.watch(keys::ROUTES, range.revision + 1).await?;
        if !self
            .following
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!("route watch following the store");
        }
        while let Some(batch) = watch.next().await {
            for event in batch?.events {
                match event {
                    Event::Put(kv) => {
                        if let Some(table) = self.decode(&kv) {
                            self.set(table);
                        }
                    }
                    Event::Delete { key, mod_revision } => {
                        let model = key.trim_start_matches(keys::ROUTES);
                        self.remove(model, mod_revision as u64);
                    }
                }
            }
        }
        Ok(())
    }
}
