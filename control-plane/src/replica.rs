//! Leadership among control-plane replicas. Every replica registers `/strata/v1/controllers/{id}` and
//! campaigns in [`keys::ELECTION`] under one lease that it keeps alive; the winner plans, assigns and
//! publishes (its writes fenced by its term, see [`Leadership::fence`]), the others serve reads and watches
//! and take over when the leader's lease ends: it died, was cut off from the store past its TTL, or stopped.

use std::sync::Arc;
use std::time::Duration;

use crate::keys;
use crate::plane::ControlPlane;
use crate::records::ControllerRecord;
use crate::store::{LeaseId, StoreError};

/// The TTL of a replica's lease: a dead leader is replaced this long (plus the store's expiry tick) after
/// its last renewal.
pub const ELECTION_TTL: Duration = Duration::from_secs(2);

/// Campaigns for ever: leads when elected, steps down when the lease is lost, and campaigns again.
pub(crate) async fn run(plane: Arc<ControlPlane>, address: String) {
    loop {
        match campaign_and_hold(&plane, &address).await {
            Err(e @ (StoreError::Unavailable(_) | StoreError::Backend(_))) => {
                reachable(&plane, Err(&e))
            }
            Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
            Ok(()) => {}
        }
        if plane.is_leader() {
            tracing::warn!(replica = %plane.replica_id, "lost the leadership");
        }
        plane.set_leadership(None);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn campaign_and_hold(plane: &Arc<ControlPlane>, address: &str) -> Result<(), StoreError> {
    let lease = plane.store.grant_lease(ELECTION_TTL).await?;
    reachable(plane, Ok(()));
    *plane.replica_lease.lock() = Some(lease);
    let record = ControllerRecord {
        id: plane.replica_id.clone(),
        address: address.to_string(),
    };
    let value = serde_json::to_vec(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
    plane
        .store
        .put(&keys::controller(&plane.replica_id), value, Some(lease))
        .await?;
    let kept = keep(plane.clone(), lease);
    tokio::pin!(kept);
    tokio::select! {
        won = plane.store.campaign(keys::ELECTION, plane.replica_id.clone().into_bytes(), lease) => {
            let leadership = won?;
            tracing::info!(replica = %plane.replica_id, term = leadership.create_revision, "leading");
            plane.set_leadership(Some(leadership));
            (&mut kept).await
        }
        lost = &mut kept => lost,
    }
}

/// Keeps the lease alive; returns once it is gone. While the store is unreachable the replica keeps its
/// role: its fenced writes fail anyway, and an etcd that comes back extends its leases.
async fn keep(plane: Arc<ControlPlane>, lease: LeaseId) -> Result<(), StoreError> {
    loop {
        tokio::time::sleep(ELECTION_TTL / 4).await;
        match plane.store.keep_alive(lease).await {
            Ok(_) => reachable(&plane, Ok(())),
            Err(e @ StoreError::LeaseNotFound(_)) => return Err(e),
            Err(e) => reachable(&plane, Err(&e)),
        }
    }
}

/// Records whether the store answers, logging the changes (the health service follows it).
fn reachable(plane: &ControlPlane, outcome: Result<(), &StoreError>) {
    let now = outcome.is_ok();
    let was = plane.store_reachable.send_replace(now);
    match outcome {
        Ok(()) if !was => tracing::info!("the store is reachable"),
        Err(e) if was => {
            tracing::warn!(error = %e, "the store is unreachable: serving reads from what agents cache; writes wait")
        }
        _ => {}
    }
}

/// Revokes this replica's lease (on a graceful stop), so another replica leads at once.
pub(crate) async fn step_down(plane: &ControlPlane) {
    let lease = plane.replica_lease.lock().take();
    if let Some(lease) = lease {
        let revoke = plane.store.revoke_lease(lease);
        let _ = tokio::time::timeout(Duration::from_secs(1), revoke).await;
    }
}
