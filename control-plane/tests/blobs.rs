//! Blob lifetime on the control plane: a blob lives while a record references it, and each replica's
//! collector deletes the unreferenced ones after the grace period. Pushes and deletes of the same bytes race
//! with the collector here without ever leaving a record pointing at a missing blob.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strata_blob::{BlobStore, DirBlobStore};
use strata_control_plane::records::{PlanRecord, PlansRecord, StageRecord};
use strata_control_plane::store::{EmbeddedStore, Store};
use strata_control_plane::{ControlPlane, Settings, blob, keys};
use strata_core::{Digest, Privacy, Tier};
use strata_planner::cluster::Cluster;
use strata_proto::v1;

fn corpus(file: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus/models")
        .join(file);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the corpus with `python3 corpus/fetch.py`",
            p.display()
        )
    })
}

struct Replica {
    plane: Arc<ControlPlane>,
    blobs: Arc<DirBlobStore>,
    dir: PathBuf,
}

/// A control plane on `store` with its own blob directory under `root`.
fn replica(store: Arc<dyn Store>, root: &Path, name: &str, grace: Duration) -> Replica {
    let dir = root.join(name);
    let blobs = Arc::new(DirBlobStore::open(&dir).expect("blob dir"));
    let cluster =
        Cluster::from_toml(strata_control_plane::server::DEFAULT_CLUSTER).expect("cluster");
    let mut settings = Settings::new(cluster);
    settings.blob_grace = grace;
    let plane = ControlPlane::new(store, blobs.clone(), settings);
    Replica { plane, blobs, dir }
}

fn meta(name: &str, bytes: &[u8]) -> v1::ModelMeta {
    v1::ModelMeta {
        name: name.to_string(),
        digest: Digest::of(bytes).to_string(),
        size_bytes: bytes.len() as u64,
        privacy: v1::Privacy::from(Privacy::Open) as i32,
        input_shapes: vec![],
        batching: None,
    }
}

/// Makes every blob of `dir` look stored an hour ago.
fn age_blobs(dir: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(old))
                    .expect("age a blob");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_blobs_go_after_the_grace_period_on_every_replica_and_referenced_ones_stay() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&tmp.path().join("state.redb")).expect("store"));
    let grace = Duration::from_secs(600);
    let a = replica(store.clone(), tmp.path(), "a", grace);
    let b = replica(store.clone(), tmp.path(), "b", grace);
    let model = corpus("multi_io.onnx");
    let model_digest = Digest::of(&model);
    a.plane
        .push_model(meta("m", &model), model.clone().into())
        .await
        .expect("push");
    // Replica b holds a copy too (as after a peer fetch), and a stage file a plan references.
    b.blobs
        .put(&model_digest, model.clone().into())
        .await
        .expect("copy to b");
    let stage = bytes::Bytes::from_static(b"a stage file");
    let stage_digest = Digest::of(&stage);
    b.blobs
        .put(&stage_digest, stage.clone())
        .await
        .expect("stage on b");
    let plans = PlansRecord {
        model: "m".into(),
        version: 1,
        tiers: vec![Tier::Device, Tier::Edge],
        inputs: vec![],
        outputs: vec![],
        plans: vec![PlanRecord {
            id: "p".into(),
            satisfies: vec![Privacy::Open],
            objectives: vec![strata_planner::partition::Objective::Latency],
            latency_ms: 1.0,
            device_energy_mj: 1.0,
            device_bytes_sent: 0,
            stages: vec![StageRecord {
                index: 0,
                tier: Tier::Edge,
                digest: stage_digest.clone(),
                size_bytes: stage.len() as u64,
                inputs: vec![],
                outputs: vec![],
                memory_bytes: 0,
                predicted_ms: 1.0,
                flops: 0.0,
            }],
            transfers: vec![],
        }],
        notes: vec![],
        failed: None,
        links: [None; 3],
        device_power: Default::default(),
        calibration: strata_control_plane::calibration::NONE,
    };
    store
        .put(
            &keys::plans("m"),
            serde_json::to_vec(&plans).expect("json"),
            None,
        )
        .await
        .expect("plans record");
    let orphan = bytes::Bytes::from_static(b"nothing references me");
    let orphan_digest = Digest::of(&orphan);
    b.blobs.put(&orphan_digest, orphan).await.expect("orphan");

    // Within the grace period nothing goes; referenced blobs never go.
    let done = blob::collect(&b.plane).await.expect("collect");
    assert!(done.deleted.is_empty(), "{done:?}");
    assert_eq!(done.young, 1, "the orphan is young");
    age_blobs(&b.dir);
    let done = blob::collect(&b.plane).await.expect("collect");
    assert_eq!(
        done.deleted,
        vec![orphan_digest],
        "only the unreferenced blob goes"
    );
    assert!(b.blobs.contains(&model_digest).await.expect("contains"));
    assert!(b.blobs.contains(&stage_digest).await.expect("contains"));

    // Once the model and its plans are gone, every replica collects its own copies.
    a.plane.delete_model("m").await.expect("delete");
    store.delete(&keys::plans("m")).await.expect("plans gone");
    assert!(
        a.blobs.contains(&model_digest).await.expect("contains"),
        "deleting a model does not delete its blob at once"
    );
    age_blobs(&a.dir);
    age_blobs(&b.dir);
    for r in [&a, &b] {
        blob::collect(&r.plane).await.expect("collect");
        assert!(
            r.blobs.list().await.expect("list").is_empty(),
            "{}",
            r.dir.display()
        );
    }
}

/// Makes one blob look stored an hour ago, if it is there.
fn age_blob(dir: &Path, digest: &Digest) {
    let d = digest.as_str();
    let path = dir.join("sha256").join(&d[..2]).join(d);
    let old = SystemTime::now() - Duration::from_secs(3600);
    match std::fs::File::options().write(true).open(&path) {
        Ok(file) => file.set_modified(old).expect("age the blob"),
        // The collector has it (moved aside or deleted).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Pushes of models sharing their bytes race the collector in every round, with the blob old and
/// unreferenced when the round starts (as if the models had been deleted long ago and are pushed again now):
/// once a push has returned, its record's blob is there, whatever the collector did meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_racing_the_collector_never_lose_a_referenced_blob() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&tmp.path().join("state.redb")).expect("store"));
    let r = replica(store.clone(), tmp.path(), "a", Duration::from_secs(1));
    let model = corpus("multi_io.onnx");
    let digest = Digest::of(&model);
    let plane = r.plane.clone();
    let mut deleted = 0;
    for round in 0..40 {
        // Nothing references the blob now: it is old, and the collector may take it.
        age_blob(&r.dir, &digest);
        let push = |name: &'static str| {
            let (plane, model, blobs) = (plane.clone(), model.clone(), r.blobs.clone());
            async move {
                plane
                    .push_model(meta(name, &model), model.clone().into())
                    .await
                    .expect("push");
                // The record exists until the round ends: its blob must be there.
                let blob = blobs.get(&Digest::of(&model)).await.expect("get");
                assert!(
                    blob.is_some(),
                    "round {round}: {name}'s record points at a missing blob"
                );
            }
        };
        let collect = async {
            let mut n = 0;
            for _ in 0..3 {
                n += blob::collect(&plane).await.expect("collect").deleted.len();
                tokio::task::yield_now().await;
            }
            n
        };
        let (pushed_a, pushed_b, collected) =
            tokio::join!(tokio::spawn(push("a")), tokio::spawn(push("b")), collect);
        pushed_a.expect("pusher a");
        pushed_b.expect("pusher b");
        deleted += collected;
        for name in ["a", "b"] {
            plane.delete_model(name).await.expect("delete");
        }
    }
    assert!(
        deleted > 0,
        "the collector deleted the old blob in some rounds"
    );
    // With nothing referencing it, the blob goes once it is old.
    age_blob(&r.dir, &digest);
    blob::collect(&plane).await.expect("collect");
    assert!(
        r.blobs.list().await.expect("list").is_empty(),
        "and goes once nothing references it"
    );
}
