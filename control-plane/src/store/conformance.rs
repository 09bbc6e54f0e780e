//! Checks every [`Store`] must pass: each takes a fresh, empty store and panics with a clear message on
//! failure. Revisions are checked relative to the store's starting revision. A backend's tests run
//! [`run_all`], or one test per check with [`crate::store_conformance_tests!`]. The checks must run inside a Tokio runtime (a
//! multi-thread one makes the racing checks race for real); the lease checks take a few seconds each.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;

use super::CompareOp::{Equal, Greater, Less, NotEqual};
use super::CompareTarget::{CreateRevision, ModRevision, Value, Version};
use super::{
    Compare, CompareOp, CompareTarget, Event, KeyValue, LeaseId, Revision, Store, StoreError, Txn,
    TxnOp, WatchBatch, WatchStream,
};

/// The longest a check waits for a watch batch it expects.
const WAIT: Duration = Duration::from_secs(5);
/// How long a watch must stay silent to count as having nothing more.
const QUIET: Duration = Duration::from_millis(300);
/// The TTL the lease checks ask for (whole seconds: etcd rounds TTLs to seconds and has a minimum).
const LEASE_TTL: Duration = Duration::from_secs(2);
/// How late after its TTL a lease may expire.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// One check: takes a fresh, empty store and panics on failure.
pub type Check = fn(Arc<dyn Store>) -> BoxFuture<'static, ()>;

/// The conformance checks as tests, and the one place their list is written.
///
/// `store_conformance_tests!(MAKE)` defines one `#[tokio::test]` (multi-thread) per check; `MAKE` is a future
/// giving `(guard, Arc<dyn Store>)`, a fresh empty store and whatever must live as long as it (an etcd
/// process, say; `()` for none).
#[doc(hidden)]
#[macro_export]
macro_rules! store_conformance_tests {
    (@list $($then:tt)*) => {
        $crate::store_conformance_tests!(@ $($then)* ;
            put_get_versions,
            range_by_prefix,
            delete_and_delete_prefix,
            invalid_arguments,
            txn_compare_and_swap,
            txn_racing_create_has_one_winner,
            txn_concurrent_increments,
            watch_from_now,
            watch_replays_missed_batches,
            watch_during_writes_has_no_gap,
            watch_filters_by_prefix,
            watch_txn_is_one_batch,
            lease_expiry_deletes_keys,
            lease_keep_alive_extends,
            lease_revoke_deletes_at_once,
            lease_keep_alive_after_expiry,
            lease_unknown_is_refused,
            election_one_leader_at_a_time
        );
    };
    (@consts ; $($name:ident),*) => {
        /// Every check by name, in the order [`run_all`] runs them.
        pub const CHECKS: &[(&str, Check)] =
            &[$((stringify!($name), |store| Box::pin($name(store)))),*];
    };
    (@tests $make:expr ; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_guard, store) = $make.await;
                $crate::store::conformance::$name(store).await;
            }
        )*
    };
    ($make:expr) => {
        $crate::store_conformance_tests!(@list tests $make);
    };
}

crate::store_conformance_tests!(@list consts);

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all(make: impl Fn() -> Arc<dyn Store>) {
    for (name, check) in CHECKS {
        eprintln!("store conformance: {name}");
        check(make()).await;
    }
}

/// Asserts that `$result` is `Err($pattern)`.
macro_rules! assert_err {
    ($result:expr, $pattern:pat $(if $guard:expr)?, $what:expr) => {
        let result = $result;
        let expected = stringify!($pattern $(if $guard)?);
        assert!(
            matches!(result, Err($pattern) $(if $guard)?),
            "{}: expected {expected}, got {result:?}",
            $what
        );
    };
}

fn when(key: &str, op: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        key: key.to_owned(),
        op,
        target,
    }
}

fn txn(compare: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Txn {
    Txn {
        compare,
        success,
        failure,
    }
}

fn put_op(key: &str, value: &str, lease: Option<LeaseId>) -> TxnOp {
    TxnOp::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        lease,
    }
}

fn get_op(key: &str) -> TxnOp {
    TxnOp::Get(key.to_owned())
}

fn created(key: &str, value: &str, revision: Revision) -> KeyValue {
    let (key, value) = (key.to_owned(), value.as_bytes().to_vec());
    KeyValue {
        key,
        value,
        create_revision: revision,
        mod_revision: revision,
        version: 1,
        lease: None,
    }
}

async fn revision(store: &Arc<dyn Store>) -> Revision {
    store.current_revision().await.expect("current_revision")
}

async fn put(store: &Arc<dyn Store>, key: &str, value: &str, lease: Option<LeaseId>) -> Revision {
    let result = store.put(key, value.as_bytes().to_vec(), lease).await;
    result.unwrap_or_else(|e| panic!("put {key}: {e}"))
}

async fn get(store: &Arc<dyn Store>, key: &str) -> Option<KeyValue> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

async fn value(store: &Arc<dyn Store>, key: &str) -> Option<Vec<u8>> {
    get(store, key).await.map(|kv| kv.value)
}

async fn keys(store: &Arc<dyn Store>, prefix: &str) -> Vec<String> {
    let range = store
        .range(prefix)
        .await
        .unwrap_or_else(|e| panic!("range {prefix}: {e}"));
    range.kvs.into_iter().map(|kv| kv.key).collect()
}

async fn run(store: &Arc<dyn Store>, txn: Txn) -> (bool, Revision) {
    let result = store.txn(txn).await.unwrap_or_else(|e| panic!("txn: {e}"));
    (result.succeeded, result.revision)
}

async fn watch(store: &Arc<dyn Store>, prefix: &str, from: Revision) -> WatchStream {
    let result = store.watch(prefix, from).await;
    result.unwrap_or_else(|e| panic!("watch {prefix} from {from}: {e}"))
}

async fn next_batch(stream: &mut WatchStream, what: &str) -> WatchBatch {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(batch))) => batch,
        Ok(Some(Err(e))) => panic!("{what}: the watch failed: {e}"),
        Ok(None) => panic!("{what}: the watch ended"),
        Err(_) => panic!("{what}: no watch batch within {WAIT:?}"),
    }
}

async fn assert_quiet(stream: &mut WatchStream, what: &str) {
    if let Ok(item) = tokio::time::timeout(QUIET, stream.next()).await {
        panic!("{what}: expected nothing more from the watch, got {item:?}");
    }
}

fn keys_of(batch: &WatchBatch) -> Vec<&str> {
    batch.events.iter().map(Event::key).collect()
}

fn deleted_keys(batch: &WatchBatch) -> BTreeSet<&str> {
    let deleted = batch
        .events
        .iter()
        .filter(|e| matches!(e, Event::Delete { .. }));
    deleted.map(Event::key).collect()
}

/// Polls until `key` is gone; panics if it outlives `limit` from `since`.
async fn wait_until_deleted(store: &Arc<dyn Store>, key: &str, since: Instant, limit: Duration) {
    while get(store, key).await.is_some() {
        assert!(
            since.elapsed() < limit,
            "{key} outlived its lease by more than {EXPIRY_SLACK:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Puts create and overwrite keys with the right counters; each raises the revision by one.
pub async fn put_get_versions(store: Arc<dyn Store>) {
    let r0 = revision(&store).await;
    assert_eq!(get(&store, "/k").await, None, "a fresh store has no /k");
    let r1 = put(&store, "/k", "v1", None).await;
    assert_eq!(r1, r0 + 1, "a put raises the revision by one");
    let kv = get(&store, "/k").await;
    assert_eq!(kv, Some(created("/k", "v1", r1)), "a created key");
    let r2 = put(&store, "/k", "v2", None).await;
    assert_eq!(r2, r1 + 1, "an overwrite raises the revision by one");
    let mut updated = created("/k", "v2", r1);
    (updated.mod_revision, updated.version) = (r2, 2);
    let kv = get(&store, "/k").await;
    assert_eq!(kv, Some(updated.clone()), "an overwritten key");
    let r3 = put(&store, "/empty", "", None).await;
    assert_eq!(revision(&store).await, r3, "current_revision");
    let empty = value(&store, "/empty").await;
    assert_eq!(empty, Some(Vec::new()), "an empty value");
    let kv = get(&store, "/k").await;
    assert_eq!(kv, Some(updated), "a put to another key");
}

/// `range` lists exactly the keys with the prefix, sorted, with the current revision.
pub async fn range_by_prefix(store: Arc<dyn Store>) {
    for key in ["/a/2", "/a/1", "/ab", "/a", "/b/1", "/a/3/x"] {
        put(&store, key, key, None).await;
    }
    let range = store.range("/a/").await.expect("range /a/");
    let listed: Vec<&str> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(listed, ["/a/1", "/a/2", "/a/3/x"], "range /a/");
    let values_ok = range.kvs.iter().all(|kv| kv.value == kv.key.as_bytes());
    assert!(values_ok, "range returns the values: {range:?}");
    let now = revision(&store).await;
    assert_eq!(range.revision, now, "range reports the current revision");
    let listed = keys(&store, "/a").await;
    assert_eq!(listed, ["/a", "/a/1", "/a/2", "/a/3/x", "/ab"], "range /a");
    let none = store.range("/c/").await.expect("range /c/");
    assert!(none.kvs.is_empty(), "range of an unused prefix is empty");
    assert_eq!(none.revision, now, "an empty range reports the revision");
}

/// `delete` and `delete_prefix` remove keys and bump the revision only when they remove something.
pub async fn delete_and_delete_prefix(store: Arc<dyn Store>) {
    for key in ["/d/1", "/d/2", "/d/3/x", "/d", "/dx"] {
        put(&store, key, "v", None).await;
    }
    let r = revision(&store).await;
    let deleted = store.delete("/d/1").await.expect("delete");
    assert_eq!(deleted, (true, r + 1), "deleting a key");
    assert_eq!(get(&store, "/d/1").await, None, "a deleted key is gone");
    let deleted = store.delete("/d/1").await.expect("delete");
    assert_eq!(deleted, (false, r + 1), "deleting an absent key");
    let r2 = put(&store, "/d/1", "new", None).await;
    let kv = get(&store, "/d/1").await;
    assert_eq!(kv, Some(created("/d/1", "new", r2)), "a re-created key");
    let deleted = store.delete_prefix("/d/").await.expect("delete_prefix");
    let now = revision(&store).await;
    assert_eq!((deleted, now), (3, r2 + 1), "delete_prefix is one revision");
    let left = keys(&store, "/d").await;
    assert_eq!(left, ["/d", "/dx"], "delete_prefix is prefix-exact");
    let deleted = store.delete_prefix("/d/").await.expect("delete_prefix");
    let now = revision(&store).await;
    assert_eq!((deleted, now), (0, r2 + 1), "deleting nothing");
}

/// Empty keys and zero TTLs are refused with `InvalidArgument`.
pub async fn invalid_arguments(store: Arc<dyn Store>) {
    let put = store.put("", b"v".to_vec(), None).await;
    assert_err!(put, StoreError::InvalidArgument(_), "put of an empty key");
    let get = store.get("").await;
    assert_err!(get, StoreError::InvalidArgument(_), "get of an empty key");
    let lease = store.grant_lease(Duration::ZERO).await;
    assert_err!(lease, StoreError::InvalidArgument(_), "a zero TTL");
}

/// Create-if-absent, update-if-unchanged, the failure branch, gets, and every compare op.
pub async fn txn_compare_and_swap(store: Arc<dyn Store>) {
    let r0 = revision(&store).await;
    let absent = vec![when("/t/x", Equal, Version(0))];
    let success = vec![put_op("/t/x", "1", None), get_op("/t/x")];
    let create = txn(absent, success, vec![get_op("/t/x")]);
    let first = store.txn(create.clone()).await.expect("txn");
    assert!(first.succeeded, "create-if-absent: {first:?}");
    assert_eq!(first.revision, r0 + 1, "a txn is one revision");
    let expected = [Some(created("/t/x", "1", r0 + 1))];
    assert_eq!(first.gets, expected, "a get sees an earlier put");
    let again = store.txn(create).await.expect("txn");
    assert!(!again.succeeded, "create of an existing key: {again:?}");
    assert_eq!(again.revision, r0 + 1, "a branch of gets writes nothing");
    assert_eq!(again.gets, first.gets, "the failure branch's get");

    let update = |mod_revision, value| {
        let unchanged = vec![when("/t/x", Equal, ModRevision(mod_revision))];
        let failure = vec![put_op("/t/lost", value, None)];
        txn(unchanged, vec![put_op("/t/x", value, None)], failure)
    };
    let updated = run(&store, update(r0 + 1, "2")).await;
    assert_eq!(updated, (true, r0 + 2), "update-if-unchanged");
    let stale = run(&store, update(r0 + 1, "3")).await;
    assert_eq!(stale, (false, r0 + 3), "a stale update");
    let x = value(&store, "/t/x").await;
    assert_eq!(x, Some(b"2".to_vec()), "a stale update writes nothing");
    let lost = value(&store, "/t/lost").await;
    assert_eq!(lost, Some(b"3".to_vec()), "the failure branch ran");

    let every_op = vec![
        when("/t/x", Equal, Value(b"2".to_vec())),
        when("/t/x", NotEqual, Value(b"9".to_vec())),
        when("/t/x", Greater, CreateRevision(0)),
        when("/t/x", Less, Version(3)),
    ];
    let ops = vec![
        put_op("/t/a", "a", None),
        put_op("/t/b", "b", None),
        get_op("/t/a"),
        get_op("/t/none"),
        TxnOp::Delete("/t/lost".to_owned()),
        get_op("/t/lost"),
    ];
    let many = store.txn(txn(every_op, ops, vec![])).await.expect("txn");
    assert!(many.succeeded, "every compare op holds: {many:?}");
    assert_eq!(many.revision, r0 + 4, "many writes, one revision");
    let a = created("/t/a", "a", r0 + 4);
    assert_eq!(many.gets, [Some(a), None, None], "gets in a txn");
    let b = get(&store, "/t/b").await.expect("/t/b");
    assert_eq!(b.mod_revision, r0 + 4, "a txn's writes share its revision");

    let missing = vec![when("/t/none", NotEqual, Value(b"x".to_vec()))];
    let missing = txn(missing, vec![put_op("/t/none", "oops", None)], vec![]);
    let result = run(&store, missing).await;
    // etcd: a value compare on an absent key is always false.
    assert_eq!(result, (false, r0 + 4), "a value compare on an absent key");
    let clear = vec![TxnOp::DeletePrefix("/t/".to_owned())];
    let result = run(&store, txn(vec![], clear, vec![])).await;
    assert_eq!(result, (true, r0 + 5), "no compares means success");
    assert!(
        keys(&store, "/t/").await.is_empty(),
        "DeletePrefix in a txn"
    );
}

/// 20 tasks race to create the same key: exactly one wins.
pub async fn txn_racing_create_has_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..20)
        .map(|i: usize| {
            let store = Arc::clone(&store);
            let create = vec![when("/race", Equal, Version(0))];
            let create = txn(create, vec![put_op("/race", &i.to_string(), None)], vec![]);
            tokio::spawn(async move { run(&store, create).await.0 })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if task.await.expect("racing task") {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "racing creates won: {winners:?}");
    let kv = get(&store, "/race").await.expect("/race");
    let winner = winners[0].to_string().into_bytes();
    assert_eq!((kv.value, kv.version), (winner, 1), "the winner's write");
}

/// 20 tasks increment a counter with compare-and-swap retries: no increment is lost.
pub async fn txn_concurrent_increments(store: Arc<dyn Store>) {
    let increment = |store: Arc<dyn Store>| async move {
        loop {
            let (n, guard) = match get(&store, "/counter").await {
                None => (0, Version(0)),
                Some(kv) => {
                    let n = String::from_utf8_lossy(&kv.value).parse::<u32>();
                    (n.expect("a number"), ModRevision(kv.mod_revision))
                }
            };
            let put = vec![put_op("/counter", &(n + 1).to_string(), None)];
            let cas = txn(vec![when("/counter", Equal, guard)], put, vec![]);
            if run(&store, cas).await.0 {
                return;
            }
        }
    };
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(increment(Arc::clone(&store))))
        .collect();
    for task in tasks {
        task.await.expect("increment task");
    }
    let kv = get(&store, "/counter").await.expect("/counter");
    assert_eq!(
        (kv.value, kv.version),
        (b"20".to_vec(), 20),
        "no lost update"
    );
}

/// A watch from 0 sees later writes, in order, one batch per revision.
pub async fn watch_from_now(store: Arc<dyn Store>) {
    put(&store, "/w/before", "old", None).await;
    let mut stream = watch(&store, "/w/", 0).await;
    let r1 = put(&store, "/w/a", "1", None).await;
    let r2 = put(&store, "/w/b", "2", None).await;
    let (_, r3) = store.delete("/w/a").await.expect("delete /w/a");
    let first = next_batch(&mut stream, "watch from 0, first batch").await;
    let events = vec![Event::Put(created("/w/a", "1", r1))];
    assert_eq!(
        first,
        WatchBatch {
            revision: r1,
            events
        },
        "first batch"
    );
    let second = next_batch(&mut stream, "watch from 0, second batch").await;
    let seen = (second.revision, keys_of(&second));
    assert_eq!(seen, (r2, vec!["/w/b"]), "second batch");
    let third = next_batch(&mut stream, "watch from 0, third batch").await;
    let key = "/w/a".to_owned();
    let events = vec![Event::Delete {
        key,
        mod_revision: r3,
    }];
    assert_eq!(
        third,
        WatchBatch {
            revision: r3,
            events
        },
        "delete batch"
    );
    assert_quiet(&mut stream, "watch from 0").await;
}

/// A watch from an old revision replays exactly the missed batches, then follows live ones.
pub async fn watch_replays_missed_batches(store: Arc<dyn Store>) {
    put(&store, "/m/1", "1", None).await;
    let r2 = put(&store, "/m/2", "2", None).await;
    let (_, r3) = store.delete("/m/1").await.expect("delete /m/1");
    let mut stream = watch(&store, "/m/", r2).await;
    let replayed = next_batch(&mut stream, "replay of r2").await;
    assert_eq!(replayed.revision, r2, "the replay starts at `from`");
    let replayed = next_batch(&mut stream, "replay of r3").await;
    assert_eq!(replayed.revision, r3, "the replay goes on in order");
    let r4 = put(&store, "/m/3", "3", None).await;
    let live = next_batch(&mut stream, "live batch after the replay").await;
    assert_eq!(live.revision, r4, "then live batches follow");
    assert_quiet(&mut stream, "watch from an old revision").await;
}

/// A watch started while a writer runs sees every revision from its start once, in order.
pub async fn watch_during_writes_has_no_gap(store: Arc<dyn Store>) {
    let r0 = revision(&store).await;
    let writer = Arc::clone(&store);
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            put(&writer, &format!("/c/{}", i % 7), &i.to_string(), None).await;
        }
    });
    while revision(&store).await < r0 + 20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let from = revision(&store).await - 10;
    let mut stream = watch(&store, "/c/", from).await;
    writer.await.expect("writer task");
    let last = revision(&store).await;
    assert_eq!(last, r0 + 200, "200 puts are 200 revisions");
    for expected in from..=last {
        let batch = next_batch(&mut stream, "watch during writes").await;
        assert_eq!(batch.revision, expected, "each revision once, in order");
        assert_eq!(batch.events.len(), 1, "one event per put");
    }
    assert_quiet(&mut stream, "watch during writes").await;
}

/// A watch delivers only events under its prefix, and no batch without such events.
pub async fn watch_filters_by_prefix(store: Arc<dyn Store>) {
    let mut stream = watch(&store, "/f/", 0).await;
    put(&store, "/fx", "no", None).await;
    put(&store, "/g/1", "no", None).await;
    let mixed = vec![put_op("/g/2", "no", None), put_op("/f/1", "yes", None)];
    let (_, r1) = run(&store, txn(vec![], mixed, vec![])).await;
    let r2 = put(&store, "/f/2", "yes", None).await;
    let first = next_batch(&mut stream, "prefix watch").await;
    let seen = (first.revision, keys_of(&first));
    assert_eq!(seen, (r1, vec!["/f/1"]), "only events under /f/");
    let second = next_batch(&mut stream, "prefix watch").await;
    assert_eq!(second.revision, r2, "the next matching revision");
    assert_quiet(&mut stream, "prefix watch").await;
}

/// A transaction's writes arrive as one batch, in the transaction's order.
pub async fn watch_txn_is_one_batch(store: Arc<dyn Store>) {
    put(&store, "/b/0", "0", None).await;
    let mut stream = watch(&store, "/b/", 0).await;
    let delete = TxnOp::Delete("/b/0".to_owned());
    let ops = vec![put_op("/b/2", "2", None), put_op("/b/1", "1", None), delete];
    let (_, revision) = run(&store, txn(vec![], ops, vec![])).await;
    let batch = next_batch(&mut stream, "txn watch").await;
    let seen = (batch.revision, keys_of(&batch));
    assert_eq!(seen, (revision, vec!["/b/2", "/b/1", "/b/0"]), "one batch");
    let deleted = matches!(batch.events[2], Event::Delete { .. });
    assert!(deleted, "the third event is the delete: {batch:?}");
    assert_quiet(&mut stream, "txn watch").await;
}

/// An expired lease's keys are deleted, with Delete events in one batch, within TTL + 1 s.
pub async fn lease_expiry_deletes_keys(store: Arc<dyn Store>) {
    let started = Instant::now();
    let lease = store.grant_lease(LEASE_TTL).await.expect("grant_lease");
    let ttl = store.keep_alive(lease).await.expect("keep_alive");
    let mut stream = watch(&store, "/l/", 0).await;
    put(&store, "/l/a", "a", Some(lease)).await;
    put(&store, "/l/b", "b", Some(lease)).await;
    put(&store, "/l/keep", "keep", None).await;
    let bound = get(&store, "/l/a").await.expect("/l/a");
    assert_eq!(bound.lease, Some(lease), "the key records its lease");
    for _ in 0..3 {
        next_batch(&mut stream, "lease watch, puts").await;
    }
    let remaining = (ttl + EXPIRY_SLACK).saturating_sub(started.elapsed());
    let expired = match tokio::time::timeout(remaining, stream.next()).await {
        Ok(Some(Ok(batch))) => batch,
        other => panic!("no Delete batch within TTL {ttl:?} + {EXPIRY_SLACK:?}: {other:?}"),
    };
    let elapsed = started.elapsed();
    assert!(elapsed >= ttl / 2, "the lease expired early: {elapsed:?}");
    let deleted = deleted_keys(&expired);
    assert_eq!(deleted, BTreeSet::from(["/l/a", "/l/b"]), "one batch");
    assert_eq!(get(&store, "/l/a").await, None, "expired keys are gone");
    let kept = get(&store, "/l/keep").await;
    assert!(kept.is_some(), "a key without the lease stays");
}

/// `keep_alive` keeps a lease's keys past its TTL; once it stops, they go.
pub async fn lease_keep_alive_extends(store: Arc<dyn Store>) {
    let lease = store.grant_lease(LEASE_TTL).await.expect("grant_lease");
    let ttl = store.keep_alive(lease).await.expect("keep_alive");
    put(&store, "/k/a", "a", Some(lease)).await;
    let until = Instant::now() + ttl + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        let renewed = store.keep_alive(lease).await.expect("keep_alive");
        assert_eq!(renewed, ttl, "keep_alive returns the TTL");
    }
    let kept = get(&store, "/k/a").await;
    assert!(kept.is_some(), "keep_alive kept the key past its TTL");
    wait_until_deleted(&store, "/k/a", Instant::now(), ttl + EXPIRY_SLACK).await;
}

/// Revoking deletes the lease's keys at once (in one batch); keys re-put without the lease stay.
pub async fn lease_revoke_deletes_at_once(store: Arc<dyn Store>) {
    let ttl = Duration::from_secs(60);
    let lease = store.grant_lease(ttl).await.expect("grant_lease");
    for key in ["/r/a", "/r/b", "/r/c"] {
        put(&store, key, "v", Some(lease)).await;
    }
    put(&store, "/r/c", "detached", None).await;
    let mut stream = watch(&store, "/r/", 0).await;
    store.revoke_lease(lease).await.expect("revoke_lease");
    assert_eq!(get(&store, "/r/a").await, None, "revoke deletes at once");
    let c = get(&store, "/r/c").await.expect("a re-put key stays");
    assert_eq!(c.lease, None, "a put without a lease detaches the key");
    let batch = next_batch(&mut stream, "revoke watch").await;
    let deleted = deleted_keys(&batch);
    assert_eq!(deleted, BTreeSet::from(["/r/a", "/r/b"]), "one batch");
    let renewed = store.keep_alive(lease).await;
    assert_err!(renewed, StoreError::LeaseNotFound(id) if id == lease, "keep_alive");
    let revoked = store.revoke_lease(lease).await;
    assert_err!(revoked, StoreError::LeaseNotFound(_), "revoking twice");
    assert_quiet(&mut stream, "revoke watch").await;
}

/// After a lease expired, `keep_alive` and puts with it get `LeaseNotFound`.
pub async fn lease_keep_alive_after_expiry(store: Arc<dyn Store>) {
    let lease = store.grant_lease(LEASE_TTL).await.expect("grant_lease");
    let ttl = store.keep_alive(lease).await.expect("keep_alive");
    let started = Instant::now();
    put(&store, "/e/a", "a", Some(lease)).await;
    wait_until_deleted(&store, "/e/a", started, ttl + EXPIRY_SLACK).await;
    let renewed = store.keep_alive(lease).await;
    assert_err!(renewed, StoreError::LeaseNotFound(id) if id == lease, "keep_alive");
    let put = store.put("/e/b", b"b".to_vec(), Some(lease)).await;
    assert_err!(put, StoreError::LeaseNotFound(_), "put with it");
}

/// A put (alone or in a txn) with a lease never granted gets `LeaseNotFound` and writes nothing.
pub async fn lease_unknown_is_refused(store: Arc<dyn Store>) {
    let unknown: LeaseId = i64::MAX - 1;
    let r = revision(&store).await;
    let put = store.put("/u/a", b"a".to_vec(), Some(unknown)).await;
    assert_err!(put, StoreError::LeaseNotFound(id) if id == unknown, "put");
    let ops = vec![
        put_op("/u/b", "b", None),
        put_op("/u/c", "c", Some(unknown)),
    ];
    let refused = store.txn(txn(vec![], ops, vec![])).await;
    assert_err!(refused, StoreError::LeaseNotFound(_), "txn");
    let written = keys(&store, "/u/").await;
    assert!(
        written.is_empty(),
        "a refused txn writes nothing: {written:?}"
    );
    assert_eq!(revision(&store).await, r, "refused writes bump nothing");
}

/// One leader at a time: the first candidate leads at once, the second waits; when the leader's lease is
/// revoked the second leads, and the first one's fence no longer holds.
pub async fn election_one_leader_at_a_time(store: Arc<dyn Store>) {
    let election = "/election/test";
    let first_lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant_lease");
    let second_lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant_lease");
    let first = tokio::time::timeout(
        WAIT,
        store.campaign(election, b"first".to_vec(), first_lease),
    )
    .await
    .expect("an uncontested campaign wins at once")
    .expect("campaign");
    assert_eq!(first.lease, first_lease);
    assert!(
        first.key.starts_with("/election/test/"),
        "key {}",
        first.key
    );
    let leading = super::election::leader(store.as_ref(), election)
        .await
        .expect("leader");
    assert_eq!(leading.map(|kv| kv.value), Some(b"first".to_vec()));

    let contender = store.clone();
    let mut second = tokio::spawn(async move {
        contender
            .campaign(election, b"second".to_vec(), second_lease)
            .await
    });
    let early = tokio::time::timeout(QUIET, &mut second).await;
    assert!(
        early.is_err(),
        "a second candidate led while the first still did: {early:?}"
    );
    let fenced = txn(
        vec![first.fence()],
        vec![put_op("/election/out", "first", None)],
        vec![],
    );
    assert!(
        run(&store, fenced).await.0,
        "the leader's fence holds while it leads"
    );

    store.revoke_lease(first_lease).await.expect("revoke_lease");
    let second = tokio::time::timeout(WAIT, second)
        .await
        .expect("the second candidate leads once the first is gone")
        .expect("the campaign task")
        .expect("campaign");
    assert_eq!(second.lease, second_lease);
    assert!(
        second.create_revision > first.create_revision,
        "terms increase"
    );
    let leading = super::election::leader(store.as_ref(), election)
        .await
        .expect("leader");
    assert_eq!(leading.map(|kv| kv.value), Some(b"second".to_vec()));
    let stale = txn(
        vec![first.fence()],
        vec![put_op("/election/out", "stale", None)],
        vec![],
    );
    assert!(
        !run(&store, stale).await.0,
        "a deposed leader's fenced write fails"
    );
    assert_eq!(
        value(&store, "/election/out").await,
        Some(b"first".to_vec())
    );
    super::election::resign(store.as_ref(), &second)
        .await
        .expect("resign");
    let leading = super::election::leader(store.as_ref(), election)
        .await
        .expect("leader");
    assert_eq!(leading, None, "nobody leads after the last leader resigned");
}
