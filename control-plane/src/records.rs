//! What the control plane keeps in the store, as plain serde types (JSON values, see [`crate::keys`]).

use serde::{Deserialize, Serialize};
use strata_core::recost::{DevicePower, LinkState, Transfer};
use strata_core::{Digest, Privacy, Tier};
use strata_planner::partition::Objective;

/// A registered node (edge or cloud agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id, assigned at registration.
    pub id: String,
    /// Operator-chosen name.
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// CPU architecture.
    pub arch: String,
    /// CPU cores.
    pub cores: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Backends it runs stages with (`tract`, ...).
    pub backends: Vec<String>,
    /// Where it serves inference, `host:port`.
    pub address: String,
    /// The store lease its key is bound to.
    pub lease: i64,
    /// Digests of the stages it has loaded and reported ready.
    pub ready: Vec<Digest>,
    /// The identity its certificate proved at registration (its DNS name, `NAME.TIER.id.strata`; mutual
    /// TLS): only that identity may heartbeat, watch or deregister as this node. `None` on the plain transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// A running control-plane replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerRecord {
    /// Replica id, chosen at start.
    pub id: String,
    /// Where it serves the API, `host:port`.
    pub address: String,
}

/// A pushed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Name.
    pub name: String,
    /// Version, from 1, bumped on every push of new content.
    pub version: u64,
    /// SHA-256 of the ONNX bytes (the blob's address).
    pub digest: Digest,
    /// Size of the ONNX bytes.
    pub size_bytes: u64,
    /// The model's privacy level; requests may only tighten it.
    pub privacy: Privacy,
    /// Shapes for symbolic input dims, `NAME=d0,d1,..`.
    pub input_shapes: Vec<String>,
    /// Dynamic batching of its stages on agents (absent in records written before it existed: none).
    #[serde(default)]
    pub batching: BatchingRecord,
}

/// A model's dynamic batching settings (`strata_proto::v1::Batching`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchingRecord {
    /// Most requests one call takes; 0 or 1: no batching.
    pub max_batch: u32,
    /// Longest the first request of a batch waits for more, µs.
    pub max_queue_delay_us: u64,
}

impl BatchingRecord {
    /// The most requests one batch may take.
    pub const MAX_BATCH: u32 = 1024;
    /// The longest a request may wait for a batch to fill, µs (10 s).
    pub const MAX_QUEUE_DELAY_US: u64 = 10_000_000;

    /// The settings a push asked for, checked against the limits; absent: none.
    pub fn from_wire(wire: Option<&strata_proto::v1::Batching>) -> Result<BatchingRecord, String> {
        let Some(w) = wire else {
            return Ok(BatchingRecord::default());
        };
        if w.max_batch > Self::MAX_BATCH {
            return Err(format!(
                "max_batch {} is more than {}",
                w.max_batch,
                Self::MAX_BATCH
            ));
        }
        if w.max_queue_delay_us > Self::MAX_QUEUE_DELAY_US {
            return Err(format!(
                "max_queue_delay_us {} is more than {} (10 s)",
                w.max_queue_delay_us,
                Self::MAX_QUEUE_DELAY_US
            ));
        }
        Ok(BatchingRecord {
            max_batch: w.max_batch,
            max_queue_delay_us: w.max_queue_delay_us,
        })
    }

    /// The wire form; `None` when there is no batching.
    pub fn to_wire(self) -> Option<strata_proto::v1::Batching> {
        (self.max_batch > 1).then_some(strata_proto::v1::Batching {
            max_batch: self.max_batch,
            max_queue_delay_us: self.max_queue_delay_us,
        })
    }
}

/// A model input as plans fix it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    /// Name.
    pub name: String,
    /// ONNX element type code.
    pub elem_type: i32,
    /// Concrete shape.
    pub shape: Vec<u64>,
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Position, from 0.
    pub index: u32,
    /// Tier.
    pub tier: Tier,
    /// SHA-256 of the stage's ONNX bytes.
    pub digest: Digest,
    /// Size of the stage's ONNX bytes.
    pub size_bytes: u64,
    /// Tensors it reads.
    pub inputs: Vec<String>,
    /// Tensors it writes that later stages read or that are model outputs.
    pub outputs: Vec<String>,
    /// Peak memory, bytes.
    pub memory_bytes: u64,
    /// Predicted compute time on its tier, ms.
    pub predicted_ms: f64,
    /// Floating-point operations of one run (0 in records written before this field existed).
    #[serde(default)]
    pub flops: f64,
}

/// One plan of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// Stable id: a digest of the stage split.
    pub id: String,
    /// Privacy levels the plan satisfies.
    pub satisfies: Vec<Privacy>,
    /// The objectives it is optimal for (one split can be best for both). Empty in records written before
    /// this field existed (they are replanned only when their model or tiers change; the objectives are
    /// informational).
    #[serde(default)]
    pub objectives: Vec<Objective>,
    /// Predicted end-to-end latency, ms.
    pub latency_ms: f64,
    /// Predicted device energy, mJ.
    pub device_energy_mj: f64,
    /// Bytes the device sends.
    pub device_bytes_sent: u64,
    /// Stages in order.
    pub stages: Vec<StageRecord>,
    /// Bytes per hop of the plan's chain (empty for device-only plans, and in records written before this
    /// field existed).
    #[serde(default)]
    pub transfers: Vec<Transfer>,
}

/// A model's plans for the tiers present when it was planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlansRecord {
    /// Model name.
    pub model: String,
    /// Model version the plans are for.
    pub version: u64,
    /// Tiers that had live agents when planned (device always).
    pub tiers: Vec<Tier>,
    /// Inputs with concrete shapes.
    pub inputs: Vec<InputRecord>,
    /// Model outputs in order.
    pub outputs: Vec<String>,
    /// The plans (deduplicated).
    pub plans: Vec<PlanRecord>,
    /// Why some plans are missing, or why planning failed.
    pub notes: Vec<String>,
    /// Set when no plan at all could be made.
    pub failed: Option<String>,
    /// The links the plans were costed with, by `Link::index` (devices start their estimates here).
    #[serde(default)]
    pub links: [Option<LinkState>; 3],
    /// The device power the plans were costed with.
    #[serde(default)]
    pub device_power: DevicePower,
    /// The compute factor (measured ÷ profiled) each tier was planned with, by `Tier::index` (see
    /// [`crate::calibration`]).
    #[serde(default = "no_calibration")]
    pub calibration: [f64; 3],
}

fn no_calibration() -> [f64; 3] {
    crate::calibration::NONE
}

/// Counts the corrupt records this replica found, and logs each where it was found: a record that cannot
/// be decoded is never skipped silently. Shared by everything that reads records.
#[derive(Debug, Clone, Default)]
pub struct CorruptRecords(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl CorruptRecords {
    /// Logs and counts one corrupt record.
    pub fn note(&self, key: &str, error: &dyn std::fmt::Display) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(key, %error, "corrupt record in the store; it is left out until rewritten");
    }

    /// How many were found so far.
    pub fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The one decoder of route-table records (`/strata/v1/routes/…`, `/strata/v1/retired/…`): the
/// `strata.v1.RouteTable` protobuf, with the revision it was written at. A corrupt one is noted in `corrupt`
/// and an error.
pub fn route_table(
    corrupt: &CorruptRecords,
    kv: &crate::store::KeyValue,
) -> Result<strata_proto::v1::RouteTable, crate::ControlError> {
    use prost::Message;
    match strata_proto::v1::RouteTable::decode(kv.value.as_slice()) {
        Ok(mut table) => {
            table.revision = kv.mod_revision as u64;
            Ok(table)
        }
        Err(e) => {
            corrupt.note(&kv.key, &e);
            Err(crate::ControlError::Internal(format!(
                "corrupt route table at {}: {e}",
                kv.key
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_route_table_is_an_error_and_is_counted() {
        let corrupt = CorruptRecords::default();
        let kv = |value: Vec<u8>| crate::store::KeyValue {
            key: "/strata/v1/routes/m".into(),
            value,
            create_revision: 3,
            mod_revision: 7,
            version: 1,
            lease: None,
        };
        let table = strata_proto::v1::RouteTable {
            model: "m".into(),
            version: 2,
            ..Default::default()
        };
        let good =
            route_table(&corrupt, &kv(prost::Message::encode_to_vec(&table))).expect("decodes");
        assert_eq!(
            (good.model.as_str(), good.version, good.revision),
            ("m", 2, 7)
        );
        assert_eq!(corrupt.count(), 0);
        assert!(route_table(&corrupt, &kv(vec![0xff, 0xff, 0xff])).is_err());
        assert_eq!(corrupt.count(), 1, "counted");
    }

    #[test]
    fn digests_in_records_are_validated_on_read() {
        let json = r#"{"name":"m","version":1,"digest":"../etc/passwd","size_bytes":1,"privacy":"open","input_shapes":[]}"#;
        assert!(serde_json::from_str::<ModelRecord>(json).is_err());
    }

    #[test]
    fn batching_settings_are_checked_against_their_limits() {
        use strata_proto::v1::Batching;
        let ok = Batching {
            max_batch: 8,
            max_queue_delay_us: 2000,
        };
        assert_eq!(
            BatchingRecord::from_wire(Some(&ok)).expect("ok").to_wire(),
            Some(ok)
        );
        assert_eq!(
            BatchingRecord::from_wire(None),
            Ok(BatchingRecord::default())
        );
        assert_eq!(BatchingRecord::default().to_wire(), None, "no batching");
        let big = Batching {
            max_batch: BatchingRecord::MAX_BATCH + 1,
            ..ok
        };
        assert!(BatchingRecord::from_wire(Some(&big)).is_err_and(|e| e.contains("max_batch")));
        let slow = Batching {
            max_queue_delay_us: BatchingRecord::MAX_QUEUE_DELAY_US + 1,
            ..ok
        };
        assert!(BatchingRecord::from_wire(Some(&slow)).is_err_and(|e| e.contains("10 s")));
        // A record written before batching existed reads as none.
        let old = r#"{"name":"m","version":1,"digest":"0000000000000000000000000000000000000000000000000000000000000000","size_bytes":1,"privacy":"open","input_shapes":[]}"#;
        let record: ModelRecord = serde_json::from_str(old).expect("old record");
        assert_eq!(record.batching, BatchingRecord::default());
    }
}
