//! Conversions between the planner's types and the wire's.

use strata_planner::cluster::Tier;
use strata_planner::privacy::Privacy;
use strata_proto::v1;

use crate::records::{NodeRecord, PlansRecord};

/// Planner tier → wire tier.
pub fn tier_to_wire(t: Tier) -> v1::Tier {
    match t {
        Tier::Device => v1::Tier::Device,
        Tier::Edge => v1::Tier::Edge,
        Tier::Cloud => v1::Tier::Cloud,
    }
}

/// Wire tier → planner tier.
pub fn tier_from_wire(t: i32) -> Option<Tier> {
    match v1::Tier::try_from(t).ok()? {
        v1::Tier::Device => Some(Tier::Device),
        v1::Tier::Edge => Some(Tier::Edge),
        v1::Tier::Cloud => Some(Tier::Cloud),
        v1::Tier::Unspecified => None,
    }
}

/// Planner privacy → wire privacy.
pub fn privacy_to_wire(p: Privacy) -> v1::Privacy {
    match p {
        Privacy::Device => v1::Privacy::Device,
        Privacy::Edge => v1::Privacy::Edge,
        Privacy::Features => v1::Privacy::Features,
        Privacy::Open => v1::Privacy::Open,
    }
}

/// Wire privacy → planner privacy (`None` for unspecified or unknown).
pub fn privacy_from_wire(p: i32) -> Option<Privacy> {
    match v1::Privacy::try_from(p).ok()? {
        v1::Privacy::Device => Some(Privacy::Device),
        v1::Privacy::Edge => Some(Privacy::Edge),
        v1::Privacy::Features => Some(Privacy::Features),
        v1::Privacy::Open => Some(Privacy::Open),
        v1::Privacy::Unspecified => None,
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
                .map(|&l| privacy_to_wire(l) as i32)
                .collect(),
            objective: p.objective.clone(),
            latency_ms: p.latency_ms,
            device_energy_mj: p.device_energy_mj,
            device_bytes_sent: p.device_bytes_sent,
            stages: p
                .stages
                .iter()
                .map(|s| v1::Stage {
                    index: s.index,
                    tier: tier_to_wire(s.tier) as i32,
                    digest: s.digest.clone(),
                    size_bytes: s.size_bytes,
                    inputs: s.inputs.clone(),
                    outputs: s.outputs.clone(),
                    memory_bytes: s.memory_bytes,
                    predicted_ms: s.predicted_ms,
                    nodes: Vec::new(),
                })
                .collect(),
        })
        .collect();
    let table = v1::RouteTable {
        model: plans.model.clone(),
        version: plans.version,
        revision: 0,
        privacy: privacy_to_wire(privacy) as i32,
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
        let tier = tier_from_wire(stage.tier);
        stage.nodes = nodes
            .iter()
            .filter(|n| Some(n.tier) == tier && n.ready.contains(&stage.digest))
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
            tier: tier_to_wire(n.tier) as i32,
            address: n.address.clone(),
            load: load_of(&n.id),
        })
        .collect();
    table.revision = 0;
    table
}
