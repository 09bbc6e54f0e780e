//! From the control plane's records (planner types) to the wire: route tables built from plans and ready
//! agents. The conversions of Strata's shared types (tiers, privacy, digests) live in
//! [`strata_proto::convert`]; this module only adds what the planner knows.

use strata_core::Privacy;
use strata_planner::partition::Objective;
use strata_proto::v1;

use crate::records::{NodeRecord, PlansRecord};

/// Planner objective → wire objective.
pub fn objective_to_wire(o: Objective) -> v1::Objective {
    match o {
        Objective::Latency => v1::Objective::Latency,
        Objective::Energy => v1::Objective::Energy,
    }
}

/// A model's route table: its plans, with each remote stage's ready agents.
pub fn route_table(
    plans: &PlansRecord,
    privacy: Privacy,
    nodes: &[NodeRecord],
    load_of: impl Fn(&str) -> Option<v1::Load>,
) -> v1::RouteTable {
    let wire_plans = plans
        .plans
        .iter()
        .map(|p| v1::Plan {
            id: p.id.clone(),
            satisfies: p
                .satisfies
                .iter()
                .map(|&l| v1::Privacy::from(l) as i32)
                .collect(),
            objectives: p
                .objectives
                .iter()
                .map(|&o| objective_to_wire(o) as i32)
                .collect(),
            latency_ms: p.latency_ms,
            device_energy_mj: p.device_energy_mj,
            device_bytes_sent: p.device_bytes_sent,
            stages: p
                .stages
                .iter()
                .map(|s| v1::Stage {
                    index: s.index,
                    tier: v1::Tier::from(s.tier) as i32,
                    digest: s.digest.to_string(),
                    size_bytes: s.size_bytes,
                    inputs: s.inputs.clone(),
                    outputs: s.outputs.clone(),
                    memory_bytes: s.memory_bytes,
                    predicted_ms: s.predicted_ms,
                    nodes: Vec::new(),
                    flops: s.flops,
                })
                .collect(),
            transfers: strata_proto::convert::transfers_to_wire(&p.transfers),
        })
        .collect();
    let table = v1::RouteTable {
        model: plans.model.clone(),
        version: plans.version,
        revision: 0,
        privacy: v1::Privacy::from(privacy) as i32,
        inputs: plans
            .inputs
            .iter()
            .map(|i| v1::ModelInput {
                name: i.name.clone(),
                dtype: i.elem_type,
                shape: i.shape.clone(),
            })
            .collect(),
        outputs: plans.outputs.clone(),
        plans: wire_plans,
        nodes: Vec::new(),
        deleted: false,
        notes: plans.notes.clone(),
        links: strata_proto::convert::link_profiles_to_wire(&plans.links),
        device_power: Some(plans.device_power.into()),
        tier_calibration: if plans.calibration == crate::calibration::NONE {
            Vec::new()
        } else {
            plans.calibration.to_vec()
        },
        batching: None,
    };
    refresh_nodes(&table, nodes, load_of)
}

/// `table` with its stages' ready agents and its node list recomputed from `nodes` (for an older version
/// that keeps serving during a rollout).
pub fn refresh_nodes(
    table: &v1::RouteTable,
    nodes: &[NodeRecord],
    load_of: impl Fn(&str) -> Option<v1::Load>,
) -> v1::RouteTable {
    let mut table = table.clone();
    let mut used: Vec<String> = Vec::new();
    for stage in table.plans.iter_mut().flat_map(|p| &mut p.stages) {
        let tier = strata_proto::convert::tier(stage.tier, "stage.tier").ok();
        stage.nodes = nodes
            .iter()
            .filter(|n| Some(n.tier) == tier && n.ready.iter().any(|d| d.as_str() == stage.digest))
            .map(|n| n.id.clone())
            .collect();
        for id in &stage.nodes {
            if !used.contains(id) {
                used.push(id.clone());
            }
        }
    }
    table.nodes = nodes
        .iter()
        .filter(|n| used.contains(&n.id))
        .map(|n| v1::NodeRef {
            id: n.id.clone(),
            tier: v1::Tier::from(n.tier) as i32,
            address: n.address.clone(),
            load: load_of(&n.id),
        })
        .collect();
    table.revision = 0;
    table
}
