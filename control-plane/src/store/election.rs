//! Leader election on any [`Store`], with etcd's recipe (the one its election API runs server-side): each
//! candidate puts `{election}/{lease in hex}` bound to its lease; the key with the lowest `create_revision`
//! leads; the others each wait for the deletion of the key just ahead of theirs. When a leader's lease
//! expires its key goes, and the next candidate leads. Writes a leader makes under its [`Leadership::fence`]
//! fail once it no longer leads, so a deposed leader cannot overwrite its successor's work.

use futures::StreamExt;

use super::{
    Compare, CompareOp, CompareTarget, Event, KeyValue, LeaseId, Store, StoreError, Txn, TxnOp,
};

/// A won election: the leader's key, which lives as long as its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// The election's name (a key prefix).
    pub election: String,
    /// The leader's key, `{election}/{lease in hex}`.
    pub key: String,
    /// The key's `create_revision`: the leader's term.
    pub create_revision: i64,
    /// The lease the key is bound to.
    pub lease: LeaseId,
}

impl Leadership {
    /// A compare that holds only while this leadership lasts: add it to a transaction's compares to make
    /// its writes conditional on still leading.
    pub fn fence(&self) -> Compare {
        Compare {
            key: self.key.clone(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(self.create_revision),
        }
    }
}

/// The generic campaign behind [`Store::campaign`]: returns once this candidate leads.
pub async fn campaign<S: Store + ?Sized>(
    store: &S,
    election: &str,
    value: Vec<u8>,
    lease: LeaseId,
) -> Result<Leadership, StoreError> {
    let prefix = format!("{election}/");
    let key = format!("{prefix}{lease:x}");
    let absent = Compare {
        key: key.clone(),
        op: CompareOp::Equal,
        target: CompareTarget::CreateRevision(0),
    };
    let put = TxnOp::Put {
        key: key.clone(),
        value,
        lease: Some(lease),
    };
    let result = store
        .txn(Txn {
            compare: vec![absent],
            success: vec![put],
            failure: vec![TxnOp::Get(key.clone())],
        })
        .await?;
    let create_revision = if result.succeeded {
        result.revision
    } else {
        match result.gets.first() {
            Some(Some(kv)) => kv.create_revision,
            _ => return Err(StoreError::LeaseNotFound(lease)),
        }
    };
    loop {
        let range = store.range(&prefix).await?;
        if !range.kvs.iter().any(|kv| kv.key == key) {
            return Err(StoreError::LeaseNotFound(lease));
        }
        let ahead = range
            .kvs
            .iter()
            .filter(|kv| kv.create_revision < create_revision)
            .max_by_key(|kv| kv.create_revision);
        let Some(ahead) = ahead else {
            return Ok(Leadership {
                election: election.to_string(),
                key,
                create_revision,
                lease,
            });
        };
        let mut watch = store.watch(&ahead.key, range.revision + 1).await?;
        while let Some(batch) = watch.next().await {
            let Ok(batch) = batch else { break };
            let gone = batch
                .events
                .iter()
                .any(|e| matches!(e, Event::Delete { key, .. } if *key == ahead.key));
            if gone {
                break;
            }
        }
    }
}

/// The current leader's key and value, if any candidate leads.
pub async fn leader(store: &dyn Store, election: &str) -> Result<Option<KeyValue>, StoreError> {
    let range = store.range(&format!("{election}/")).await?;
    Ok(range.kvs.into_iter().min_by_key(|kv| kv.create_revision))
}

/// Gives up a leadership (the next candidate leads at once). Does nothing if it already ended.
pub async fn resign(store: &dyn Store, leadership: &Leadership) -> Result<(), StoreError> {
    store
        .txn(Txn {
            compare: vec![leadership.fence()],
            success: vec![TxnOp::Delete(leadership.key.clone())],
            failure: vec![],
        })
        .await?;
    Ok(())
}
