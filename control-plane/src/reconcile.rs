//! The control loop: whenever nodes or models change, (re)plan models whose plans are stale, assign stages to
//! agents of the right tier, and publish route tables. Publishing goes through the store, so every watcher
//! (on any control-plane replica) sees the same tables in the same order.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use strata_core::{Digest, Tier};
use strata_proto::task::AbortOnDrop;
use strata_proto::v1;

use crate::calibration;
use crate::convert::route_table;
use crate::error::ControlError;
use crate::keys;
use crate::plane::{AssignmentMap, ControlPlane, parse};
use crate::planning::plan_model;
use crate::records::{ModelRecord, NodeRecord, PlansRecord};
use crate::store::{Leadership, TxnOp};

/// Runs the control loop forever (abort the task to stop it). Store changes (a lease expiring, a push, a
/// plan written by the leader) and explicit wake-ups both trigger a pass; a failed pass is retried after a
/// second. On the leader a pass plans, assigns and publishes; on the other replicas it only derives the
/// assignments of the agents connected to them from the leader's plans.
pub async fn run(plane: Arc<ControlPlane>) {
    let _store_changes = AbortOnDrop::spawn(forward_store_changes(plane.clone()));
    let _calibration = AbortOnDrop::spawn(look_for_drift(plane.clone()));
    loop {
        let started = Instant::now();
        let (role, pass) = match plane.leadership() {
            Some(leadership) => ("leader", reconcile_once(&plane, &leadership).await),
            None => ("follower", follow_once(&plane).await),
        };
        plane
            .metrics
            .reconciled(role, pass.is_ok(), started.elapsed());
        if let Err(e) = pass {
            tracing::warn!(error = %e, "reconcile failed; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        plane.wake.notified().await;
        // Let a burst of changes (several agents starting) settle into one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wakes the leader's loop every calibration period, so a tier whose measured speed drifted out of its band
/// is re-planned even when nothing else changes (heartbeats do not wake the loop).
async fn look_for_drift(plane: Arc<ControlPlane>) {
    let settings = plane.settings.calibration;
    if !settings.enabled {
        return;
    }
    loop {
        tokio::time::sleep(settings.period).await;
        if plane.leadership().is_some() {
            plane.wake.notify_one();
        }
    }
}

/// Wakes the loop on node and model changes made by anyone (lease expiry, another replica). A broken watch is
/// opened again after a backoff (1 s doubling to 10 s while it keeps failing; the loop also wakes itself
/// meanwhile), logged once each way.
async fn forward_store_changes(plane: Arc<ControlPlane>) {
    let mut backoff =
        strata_proto::task::Backoff::new(Duration::from_secs(1), Duration::from_secs(10), 1);
    let mut broken = false;
    loop {
        let mut stream = match plane.store.watch(keys::ROOT, 0).await {
            Ok(s) => {
                if broken {
                    tracing::info!("store watch resumed");
                    broken = false;
                }
                backoff.succeeded();
                // Changes made while nothing watched are picked up by a pass from the state now.
                plane.wake.notify_one();
                s
            }
            Err(e) => {
                if !broken {
                    tracing::warn!(error = %e, "cannot watch the store; retrying with backoff");
                    broken = true;
                }
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        while let Some(batch) = stream.next().await {
            match batch {
                Ok(batch) => {
                    let relevant = batch.events.iter().any(|e| {
                        let key = match e {
                            crate::store::Event::Put(kv) => kv.key.as_str(),
                            crate::store::Event::Delete { key, .. } => key.as_str(),
                        };
                        key.starts_with(keys::NODES)
                            || key.starts_with(keys::MODELS)
                            || key.starts_with(keys::PLANS)
                            || key.starts_with(keys::ROUTES)
                            || key.starts_with(keys::RETIRED)
                    });
                    if relevant {
                        plane.wake.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store watch broke; resyncing");
                    plane.wake.notify_one();
                    break;
                }
            }
        }
        // Ended (with or without an error): do not spin if the store keeps ending it.
        tokio::time::sleep(backoff.failed()).await;
    }
}

/// A follower's pass: the assignments that follow from the nodes and the leader's plans.
#[tracing::instrument(skip_all)]
pub async fn follow_once(plane: &Arc<ControlPlane>) -> Result<(), ControlError> {
    let nodes = plane.nodes().await?;
    plane.metrics.saw_nodes(&nodes);
    let (plans, _) = all_plans(plane).await?;
    refresh_assignments(plane, &nodes, &plans).await
}

/// Every model's plans by model name, and the model name of every plans key. A record that does not decode
/// (corrupt, or from an incompatible version) is logged, counted and left out of the map, so the leader plans
/// that model again and overwrites it, and the other models are not held up; its key is still listed, so the
/// leader deletes it when its model is gone.
async fn all_plans(
    plane: &ControlPlane,
) -> Result<(HashMap<String, PlansRecord>, BTreeSet<String>), ControlError> {
    let mut plans = HashMap::new();
    let mut keys = BTreeSet::new();
    for kv in plane.store.range(keys::PLANS).await?.kvs {
        keys.insert(kv.key.trim_start_matches(keys::PLANS).to_string());
        if let Ok(record) = parse::<PlansRecord>(&plane.corrupt, &kv.key, &kv.value) {
            plans.insert(record.model.clone(), record);
        }
    }
    Ok((plans, keys))
}

/// The first pause after a model fails to plan, and the longest.
const REPLAN_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// Assigns stages from the current plans plus those of every published and retiring route table (an older
/// version still serving while its successor loads, or in its grace period after the switch).
async fn refresh_assignments(
    plane: &Arc<ControlPlane>,
    nodes: &[NodeRecord],
    plans: &HashMap<String, PlansRecord>,
) -> Result<(), ControlError> {
    let mut serving = plane.route_tables(keys::ROUTES).await?;
    serving.extend(plane.route_tables(keys::RETIRED).await?);
    plane
        .assignments
        .send_replace(Arc::new(assign(nodes, plans, &serving)));
    Ok(())
}

/// The leader's pass: plan, assign, publish; every write fenced by `leadership`.
#[tracing::instrument(skip_all)]
pub async fn reconcile_once(
    plane: &Arc<ControlPlane>,
    leadership: &Leadership,
) -> Result<(), ControlError> {
    let nodes = plane.nodes().await?;
    let models = plane.models().await?;
    plane.metrics.saw_nodes(&nodes);
    plane.metrics.saw_models(models.len());
    // What exists (corrupt model records included): only what belongs to models absent here is deleted.
    let names = plane.model_names().await?;
    let mut tiers: BTreeSet<Tier> = nodes.iter().map(|n| n.tier).collect();
    tiers.insert(Tier::Device);

    let (mut plans, plan_keys) = all_plans(plane).await?;
    // A new leader (after a failover or a store outage that outlived the node leases) gives agents one node
    // TTL to resume or re-register before it plans without the tiers it does not see yet.
    let settling = plane.settings.node_ttl.saturating_sub(plane.leading_for());
    if !settling.is_zero() {
        let plane = plane.clone();
        tokio::spawn(async move {
            tokio::time::sleep(settling).await;
            plane.wake.notify_one();
        });
    }
    let calibration = &plane.settings.calibration;
    // A new leader waits for every agent before it judges tiers by what the agents connected to it report.
    let live = if calibration.enabled && settling.is_zero() {
        calibration::live_factors(&plans, &plane.stage_reports(&nodes), calibration)
    } else {
        [None; 3]
    };
    for model in &models {
        let tier_list: Vec<Tier> = tiers.iter().copied().collect();
        let planned_with = plans
            .get(&model.name)
            .map_or(calibration::NONE, |p| p.calibration);
        let fresh = plans.get(&model.name).is_some_and(|p| {
            let lost_only = tier_list.iter().all(|t| p.tiers.contains(t));
            p.version == model.version
                && (p.tiers == tier_list || (lost_only && !settling.is_zero()))
                && !calibration::drifted(p.calibration, live, calibration)
        });
        if !fresh {
            // A model that cannot be planned now (its blob is being fetched, say) does not hold up the
            // others, and is tried again after a pause that doubles while it keeps failing.
            let now = Instant::now();
            let waiting = plane
                .replan_backoff
                .lock()
                .get(&model.name)
                .filter(|(version, _, _)| *version == model.version)
                .map(|(_, next, _)| *next)
                .filter(|next| *next > now);
            if let Some(next) = waiting {
                wake_at(plane, next);
                continue;
            }
            let factors = if calibration.enabled {
                calibration::to_plan_with(planned_with, live)
            } else {
                calibration::NONE
            };
            match replan(plane, leadership, model, &tiers, factors).await {
                Ok(record) => {
                    plane.replan_backoff.lock().remove(&model.name);
                    plans.insert(model.name.clone(), record);
                }
                Err(ControlError::NotLeader) => return Err(ControlError::NotLeader),
                Err(e) => {
                    let mut backoff = plane.replan_backoff.lock();
                    let pause = match backoff.get(&model.name) {
                        Some((version, _, pause)) if *version == model.version => {
                            (*pause * 2).min(REPLAN_BACKOFF.1)
                        }
                        _ => REPLAN_BACKOFF.0,
                    };
                    let next = Instant::now() + pause;
                    backoff.insert(model.name.clone(), (model.version, next, pause));
                    tracing::warn!(model = %model.name, error = %e, retry_in_ms = pause.as_millis() as u64, "cannot plan the model now");
                    drop(backoff);
                    wake_at(plane, next);
                }
            }
        }
    }
    plane
        .replan_backoff
        .lock()
        .retain(|name, _| names.contains(name));
    let stale: Vec<TxnOp> = plan_keys
        .iter()
        .filter(|n| !names.contains(*n))
        .map(|n| TxnOp::Delete(keys::plans(n)))
        .collect();
    if !stale.is_empty() {
        plane.leader_txn(leadership, stale).await?;
    }
    plans.retain(|n, _| names.contains(n));

    // Assignments follow even when publishing fails (a store error): agents are never left waiting on it.
    let published = publish(plane, leadership, &models, &names, &plans, &nodes).await;
    refresh_assignments(plane, &nodes, &plans).await?;
    published
}

/// Wakes the control loop at `at` (for a model whose planning waits out a backoff).
fn wake_at(plane: &Arc<ControlPlane>, at: Instant) {
    let plane = plane.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(at.into()).await;
        plane.wake.notify_one();
    });
}

#[tracing::instrument(skip_all, fields(
    otel.name = "plan model",
    model = %model.name,
    version = strata_proto::trace::int(model.version),
    privacy = ?model.privacy,
    tiers = ?tiers,
    plans = tracing::field::Empty,
))]
async fn replan(
    plane: &Arc<ControlPlane>,
    leadership: &Leadership,
    model: &ModelRecord,
    tiers: &BTreeSet<Tier>,
    calibration: [f64; 3],
) -> Result<PlansRecord, ControlError> {
    let Some(bytes) = plane.blobs.get(&model.digest).await? else {
        return Err(ControlError::Internal(format!(
            "model \"{}\" blob {} is missing from the blob store",
            model.name, model.digest
        )));
    };
    let (name, version, shapes, privacy) = (
        model.name.clone(),
        model.version,
        model.input_shapes.clone(),
        model.privacy,
    );
    let (cluster, tiers_owned) = (plane.settings.cluster.clone(), tiers.clone());
    let frontier = plane.settings.frontier.clone();
    let started = std::time::Instant::now();
    let planning = tracing::info_span!("planner", model = %model.name);
    let planned = tokio::task::spawn_blocking(move || {
        let _planning = planning.entered();
        plan_model(
            &name,
            version,
            &bytes,
            &shapes,
            privacy,
            &cluster,
            &tiers_owned,
            &frontier,
            calibration,
        )
    })
    .await
    .map_err(|e| ControlError::Internal(format!("planner task failed: {e}")))?;
    let blobs: Vec<(Digest, bytes::Bytes)> = planned
        .blobs
        .into_iter()
        .map(|(d, b)| (d, bytes::Bytes::from(b)))
        .collect();
    for (digest, bytes) in &blobs {
        plane.blobs.put(digest, bytes.clone()).await?;
    }
    let record = planned.record;
    tracing::Span::current().record("plans", record.plans.len() as i64);
    tracing::info!(
        model = %model.name,
        version = model.version,
        plans = record.plans.len(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        failed = record.failed.as_deref().unwrap_or(""),
        calibration = ?calibration,
        "planned"
    );
    let value = serde_json::to_vec(&record).map_err(|e| ControlError::Internal(e.to_string()))?;
    let put = TxnOp::Put {
        key: keys::plans(&model.name),
        value,
        lease: None,
    };
    plane.leader_txn(leadership, vec![put]).await?;
    // Stored again now that the plans reference them, in case the collector removed one in between.
    for (digest, bytes) in blobs {
        plane.blobs.put(&digest, bytes).await?;
    }
    Ok(record)
}

/// Every agent that can run stages (it reports a backend) holds every stage of its tier (replication is
/// full in this version; memory-aware packing comes with larger clusters): the stages of the current plans,
/// and those of `serving`, the route tables still in use (an older version stays loaded until its successor
/// is ready, and for a grace period after). Device stages are assigned to nobody.
pub fn assign(
    nodes: &[NodeRecord],
    plans: &HashMap<String, PlansRecord>,
    serving: &[v1::RouteTable],
) -> AssignmentMap {
    let mut records: Vec<&PlansRecord> = plans.values().collect();
    records.sort_by(|a, b| a.model.cmp(&b.model));
    let mut wanted: Vec<(Tier, v1::StageAssignment)> = Vec::new();
    // By digest and tier: one stage file can run on two tiers (the whole model is both the device-only and
    // the edge-only plan's one stage), and a device stage listed first must not hide the edge's.
    let mut add = |model: &str, version: u64, digest: &str, size_bytes: u64, tier: Tier| {
        if !wanted.iter().any(|(t, s)| s.digest == digest && *t == tier) {
            wanted.push((
                tier,
                v1::StageAssignment {
                    model: model.to_string(),
                    version,
                    digest: digest.to_string(),
                    size_bytes,
                    tier: v1::Tier::from(tier) as i32,
                },
            ));
        }
    };
    for record in records {
        for stage in record.plans.iter().flat_map(|p| &p.stages) {
            add(
                &record.model,
                record.version,
                stage.digest.as_str(),
                stage.size_bytes,
                stage.tier,
            );
        }
    }
    for table in serving {
        for stage in table.plans.iter().flat_map(|p| &p.stages) {
            if let Ok(tier) = strata_proto::convert::tier(stage.tier, "stage.tier") {
                add(
                    &table.model,
                    table.version,
                    &stage.digest,
                    stage.size_bytes,
                    tier,
                );
            }
        }
    }
    let mut map = AssignmentMap::new();
    for node in nodes {
        let stages = if node.backends.is_empty() {
            Vec::new()
        } else {
            wanted
                .iter()
                .filter(|(tier, _)| *tier == node.tier && *tier != Tier::Device)
                .map(|(_, s)| s.clone())
                .collect()
        };
        map.insert(node.id.clone(), stages);
    }
    map
}

/// Whether every remote stage of every plan has a ready agent: a new version's table replaces the old one
/// only then, so no request meets a stage nobody holds.
fn servable(table: &v1::RouteTable) -> bool {
    table
        .plans
        .iter()
        .flat_map(|p| &p.stages)
        .all(|s| strata_proto::convert::is_tier(s.tier, Tier::Device) || !s.nodes.is_empty())
}

async fn publish(
    plane: &Arc<ControlPlane>,
    leadership: &Leadership,
    models: &[ModelRecord],
    names: &BTreeSet<String>,
    plans: &HashMap<String, PlansRecord>,
    nodes: &[NodeRecord],
) -> Result<(), ControlError> {
    // A corrupt table (logged and counted) counts as absent: the fresh one below replaces it.
    let range = plane.store.range(keys::ROUTES).await?;
    let published: Vec<String> = range
        .kvs
        .iter()
        .map(|kv| kv.key.trim_start_matches(keys::ROUTES).to_string())
        .collect();
    let current: HashMap<String, v1::RouteTable> = range
        .kvs
        .iter()
        .filter_map(|kv| crate::records::route_table(&plane.corrupt, kv).ok())
        .map(|t| (t.model.clone(), t))
        .collect();
    for model in models {
        let Some(record) = plans.get(&model.name) else {
            continue;
        };
        if record.failed.is_some() {
            if current.contains_key(&model.name) {
                let delete = TxnOp::Delete(keys::routes(&model.name));
                plane.leader_txn(leadership, vec![delete]).await?;
            }
            continue;
        }
        let mut table = route_table(record, model.privacy, nodes, |id| plane.load_of(id));
        table.batching = model.batching.to_wire();
        let old = current.get(&model.name);
        let mut ops = Vec::new();
        let (table, note) = match old {
            Some(old) if old.version < table.version && !servable(&table) => {
                // Rollout: the old version serves (with its agents kept current) until the new one's
                // stages are loaded somewhere.
                let old_plans = crate::convert::refresh_nodes(old, nodes, |id| plane.load_of(id));
                (old_plans, "route table kept while the new version loads")
            }
            Some(old) if old.version < table.version => {
                let grace = plane
                    .store
                    .grant_lease(plane.settings.rollout_grace)
                    .await?;
                ops.push(TxnOp::Put {
                    key: keys::retired(&old.model, old.version),
                    value: old.encode_to_vec(),
                    lease: Some(grace),
                });
                (table, "new version's route table published")
            }
            _ => (table, "route table published"),
        };
        let unchanged = old.is_some_and(|old| same_routes(old, &table));
        if !unchanged {
            let version = table.version;
            ops.push(TxnOp::Put {
                key: keys::routes(&model.name),
                value: table.encode_to_vec(),
                lease: None,
            });
            plane.leader_txn(leadership, ops).await?;
            tracing::info!(model = %model.name, version, "{note}");
        }
    }
    // Tables of deleted models go, corrupt ones included (a model whose own record is corrupt is not deleted).
    for name in &published {
        if !names.contains(name) {
            let delete = TxnOp::Delete(keys::routes(name));
            plane.leader_txn(leadership, vec![delete]).await?;
        }
    }
    Ok(())
}

/// Equal except for load snapshots and revision, which alone do not warrant a republish.
fn same_routes(a: &v1::RouteTable, b: &v1::RouteTable) -> bool {
    let strip = |t: &v1::RouteTable| {
        let mut t = t.clone();
        t.revision = 0;
        for n in &mut t.nodes {
            n.load = None;
        }
        t
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{PlanRecord, StageRecord};

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn node(id: &str, tier: Tier, backends: &[&str], ready: &[Digest]) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: id.into(),
            tier,
            arch: "x86_64".into(),
            cores: 2,
            memory_bytes: 1 << 30,
            backends: backends.iter().map(|b| b.to_string()).collect(),
            address: format!("{id}:1"),
            lease: 1,
            ready: ready.to_vec(),
            identity: None,
        }
    }

    fn stage(index: u32, tier: Tier, d: &Digest) -> StageRecord {
        StageRecord {
            index,
            tier,
            digest: d.clone(),
            size_bytes: 10,
            inputs: vec![],
            outputs: vec![],
            memory_bytes: 0,
            predicted_ms: 1.0,
            flops: 0.0,
        }
    }

    fn plans(model: &str, version: u64, splits: &[&[(Tier, u8)]]) -> PlansRecord {
        PlansRecord {
            model: model.into(),
            version,
            tiers: Tier::ALL.to_vec(),
            inputs: vec![],
            outputs: vec![],
            plans: splits
                .iter()
                .enumerate()
                .map(|(i, split)| PlanRecord {
                    id: format!("p{i}"),
                    satisfies: vec![Privacy::Open],
                    objectives: vec![Objective::Latency],
                    latency_ms: 1.0,
                    device_energy_mj: 1.0,
                    device_bytes_sent: 0,
                    stages: split
                        .iter()
                        .enumerate()
                        .map(|(k, (t, d))| stage(k as u32, *t, &digest(*d)))
                        .collect(),
                    transfers: vec![],
                })
                .collect(),
            notes: vec![],
            failed: None,
            links: [None; 3],
            device_power: Default::default(),
            calibration: crate::calibration::NONE,
        }
    }

    use strata_core::Privacy;
    use strata_planner::partition::Objective;

    fn digests(map: &AssignmentMap, node: &str) -> Vec<String> {
        let mut d: Vec<String> = map[node].iter().map(|s| s.digest.clone()).collect();
        d.sort();
        d
    }

    #[test]
    fn every_agent_of_a_tier_gets_that_tiers_stages_once_and_devices_none() {
        let p = plans(
            "m",
            1,
            &[
                &[(Tier::Device, 1), (Tier::Edge, 2), (Tier::Cloud, 3)],
                &[(Tier::Device, 1), (Tier::Edge, 4)],
                &[(Tier::Edge, 2), (Tier::Cloud, 3)],
            ],
        );
        let nodes = [
            node("e1", Tier::Edge, &["tract"], &[]),
            node("e2", Tier::Edge, &["tract"], &[]),
            node("c1", Tier::Cloud, &["tract"], &[]),
        ];
        let map = assign(&nodes, &HashMap::from([("m".to_string(), p)]), &[]);
        let mut edge = vec![digest(2).to_string(), digest(4).to_string()];
        edge.sort();
        assert_eq!(digests(&map, "e1"), edge);
        assert_eq!(digests(&map, "e2"), edge, "full replication across a tier");
        assert_eq!(digests(&map, "c1"), vec![digest(3).to_string()]);
        let all: Vec<&String> = map.values().flatten().map(|s| &s.digest).collect();
        assert!(
            !all.contains(&&digest(1).to_string()),
            "device stages are never assigned"
        );
    }

    #[test]
    fn a_stage_file_on_the_device_in_one_plan_is_still_assigned_to_the_edge_of_another() {
        // The whole model is the one stage of both the device-only and the edge-only plan (one digest), and
        // the device-only plan comes first.
        let p = plans("m", 1, &[&[(Tier::Device, 7)], &[(Tier::Edge, 7)]]);
        let nodes = [node("e1", Tier::Edge, &["tract"], &[])];
        let map = assign(&nodes, &HashMap::from([("m".to_string(), p)]), &[]);
        assert_eq!(digests(&map, "e1"), vec![digest(7).to_string()]);
    }

    #[test]
    fn agents_without_a_backend_get_nothing() {
        let p = plans("m", 1, &[&[(Tier::Edge, 2)]]);
        let nodes = [node("e1", Tier::Edge, &[], &[])];
        let map = assign(&nodes, &HashMap::from([("m".to_string(), p)]), &[]);
        assert!(map["e1"].is_empty());
    }

    #[test]
    fn serving_tables_keep_their_stages_assigned_during_a_rollout() {
        let v2 = plans("m", 2, &[&[(Tier::Edge, 5)]]);
        let v1_table = route_table(
            &plans("m", 1, &[&[(Tier::Edge, 2)]]),
            Privacy::Open,
            &[],
            |_| None,
        );
        let nodes = [node("e1", Tier::Edge, &["tract"], &[])];
        let map = assign(&nodes, &HashMap::from([("m".to_string(), v2)]), &[v1_table]);
        let mut want = vec![digest(2).to_string(), digest(5).to_string()];
        want.sort();
        assert_eq!(digests(&map, "e1"), want);
        let versions: Vec<u64> = map["e1"].iter().map(|s| s.version).collect();
        assert!(
            versions.contains(&1) && versions.contains(&2),
            "{versions:?}"
        );
    }

    #[test]
    fn a_table_is_servable_only_when_every_remote_stage_has_a_ready_agent() {
        let p = plans(
            "m",
            1,
            &[&[(Tier::Device, 1), (Tier::Edge, 2), (Tier::Cloud, 3)]],
        );
        let none_ready = route_table(&p, Privacy::Open, &[], |_| None);
        assert!(!servable(&none_ready));
        let edge_only = [node("e1", Tier::Edge, &["tract"], &[digest(2)])];
        assert!(!servable(&route_table(
            &p,
            Privacy::Open,
            &edge_only,
            |_| None
        )));
        let both = [
            node("e1", Tier::Edge, &["tract"], &[digest(2)]),
            node("c1", Tier::Cloud, &["tract"], &[digest(3)]),
        ];
        assert!(servable(&route_table(&p, Privacy::Open, &both, |_| None)));
        let wrong_tier = [
            node("e1", Tier::Edge, &["tract"], &[digest(2)]),
            node("c1", Tier::Edge, &["tract"], &[digest(3)]),
        ];
        assert!(
            !servable(&route_table(&p, Privacy::Open, &wrong_tier, |_| None)),
            "an agent of another tier holding the file does not serve the stage"
        );
        let device_only = plans("d", 1, &[&[(Tier::Device, 1)]]);
        assert!(servable(&route_table(
            &device_only,
            Privacy::Open,
            &[],
            |_| None
        )));
    }

    #[test]
    fn load_and_revision_changes_alone_are_the_same_routes() {
        let p = plans("m", 1, &[&[(Tier::Device, 1), (Tier::Edge, 2)]]);
        let nodes = [node("e1", Tier::Edge, &["tract"], &[digest(2)])];
        let idle = route_table(&p, Privacy::Open, &nodes, |_| None);
        let mut busy = route_table(&p, Privacy::Open, &nodes, |_| {
            Some(v1::Load {
                in_flight: 3,
                ..Default::default()
            })
        });
        busy.revision = 42;
        assert!(same_routes(&idle, &busy));
        let gone = route_table(&p, Privacy::Open, &[], |_| None);
        assert!(
            !same_routes(&idle, &gone),
            "a lost agent changes the routes"
        );
        let mut other_version = idle.clone();
        other_version.version = 2;
        assert!(!same_routes(&idle, &other_version));
    }
}
