//! The cost model: per node and tier, predicted milliseconds (from FLOPs and the tier's sustained GFLOP/s, or
//! from a measured profile scaled to the tier) and device energy; per hop, RTT and per-byte costs. Turns a model,
//! its analysis, a cluster and a privacy level into the partitioner's [`Problem`].

use serde::{Deserialize, Serialize};

use crate::analyse::Analysis;
use crate::cluster::Cluster;
use crate::model::{Model, Origin};
use crate::partition::{CostLayer, HopCost, Problem, TIER_COUNT, Tensor};
use strata_core::Privacy;
use strata_core::Tier;

/// Per-node times measured by `strata profile` on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Model file name.
    pub model: String,
    /// Where it was measured (host, CPU).
    pub machine: String,
    /// Runs timed (after warm-up).
    pub runs: usize,
    /// Whole-model median time, ms.
    pub total_ms: f64,
    /// The machine's effective throughput on this model: total FLOPs / total time, GFLOP/s.
    pub effective_gflops: f64,
    /// Per node, in the model's topological order.
    pub nodes: Vec<NodeTime>,
}

/// One node's measured time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeTime {
    /// Node name (as `strata inspect` prints it).
    pub name: String,
    /// Operator type.
    pub op_type: String,
    /// Median time, ms (0 for nodes tract fused into a neighbour, whose time is counted there).
    pub ms: f64,
}

/// Why the cost model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    /// The profile is for another model.
    #[error(
        "profile does not match the model: node \"{0}\" has no measured time (profile another model?)"
    )]
    ProfileMismatch(String),
}

/// Predicted milliseconds for each node on each tier (INFINITY where the tier is absent).
pub fn node_ms(
    model: &Model,
    analysis: &Analysis,
    cluster: &Cluster,
    profile: Option<&Profile>,
) -> Result<Vec<[f64; TIER_COUNT]>, CostError> {
    let measured: Option<Vec<f64>> = match profile {
        Some(p) => {
            let by_name: std::collections::HashMap<&str, f64> =
                p.nodes.iter().map(|n| (n.name.as_str(), n.ms)).collect();
            Some(
                model
                    .nodes
                    .iter()
                    .map(|n| {
                        by_name
                            .get(n.name.as_str())
                            .copied()
                            .ok_or_else(|| CostError::ProfileMismatch(n.name.clone()))
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        None => None,
    };
    Ok((0..model.nodes.len())
        .map(|v| {
            let mut row = [f64::INFINITY; TIER_COUNT];
            for tier in Tier::ALL {
                if let Some(spec) = cluster.tier(tier) {
                    // A folded node runs nowhere: its outputs are constants in the stages that read them.
                    if analysis.is_folded(v) {
                        row[tier.index()] = 0.0;
                        continue;
                    }
                    let compute = match (&measured, profile) {
                        (Some(ms), Some(_)) if spec.measured_here => ms[v],
                        (Some(ms), Some(p)) => ms[v] * p.effective_gflops / spec.gflops,
                        _ => analysis.node_flops[v] / (spec.gflops * 1e9) * 1e3,
                    };
                    let overhead = if is_layout_only(&model.nodes[v].op_type) {
                        0.0
                    } else {
                        spec.op_overhead_us * 1e-3
                    };
                    row[tier.index()] = compute + overhead;
                }
            }
            row
        })
        .collect())
}

/// The nodes that read `tensor` and run somewhere (folded nodes run nowhere).
fn consumers(model: &Model, analysis: &Analysis, tensor: &str) -> Vec<usize> {
    model
        .consumers
        .get(tensor)
        .map(|cs| {
            cs.iter()
                .copied()
                .filter(|&c| !analysis.is_folded(c))
                .collect()
        })
        .unwrap_or_default()
}

/// Operators that runtimes turn into no-ops or views (tract declutters them away; GPU runtimes alias the
/// buffer), so they pay no per-operator overhead.
fn is_layout_only(op_type: &str) -> bool {
    matches!(
        op_type,
        "Identity" | "Dropout" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Shape"
    )
}

/// Builds the partitioning problem: latency (ms) and device-energy (mJ) layers, tensors, parameters, and the
/// privacy level expressed as absent tiers and forbidden placements.
pub fn build_problem(
    model: &Model,
    analysis: &Analysis,
    cluster: &Cluster,
    privacy: Privacy,
    profile: Option<&Profile>,
) -> Result<Problem, CostError> {
    let ms = node_ms(model, analysis, cluster, profile)?;
    let mut tier_present = [false; TIER_COUNT];
    for tier in Tier::ALL {
        tier_present[tier.index()] = cluster.tier(tier).is_some()
            && match privacy {
                Privacy::Device => tier == Tier::Device,
                Privacy::Edge => tier != Tier::Cloud,
                Privacy::Features | Privacy::Open => true,
            };
    }

    let device = cluster.tier(Tier::Device);
    let active_w = device.map_or(0.0, |d| d.active_w);
    let idle_w = device.map_or(0.0, |d| d.idle_w);
    let tx_mj_per_byte = device.map_or(0.0, |d| d.tx_nj_per_byte * 1e-6);
    let rx_mj_per_byte = device.map_or(0.0, |d| d.rx_nj_per_byte * 1e-6);

    let mut latency_nodes = ms.clone();
    let mut energy_nodes: Vec<[f64; TIER_COUNT]> = ms
        .iter()
        .map(|row| {
            let mut e = [f64::INFINITY; TIER_COUNT];
            for (t, &m) in row.iter().enumerate() {
                // An absent tier stays forbidden (INFINITY); 0 W × INFINITY would be NaN.
                if m.is_finite() {
                    e[t] = if t == 0 { m * active_w } else { m * idle_w };
                }
            }
            e
        })
        .collect();
    if privacy == Privacy::Features {
        for input in &model.inputs {
            for &v in consumers(model, analysis, input).iter() {
                for t in 1..TIER_COUNT {
                    latency_nodes[v][t] = f64::INFINITY;
                    energy_nodes[v][t] = f64::INFINITY;
                }
            }
        }
    }

    let mut latency_hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
    let mut energy_hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
    for a in 0..TIER_COUNT {
        for b in a + 1..TIER_COUNT {
            let (Some(ta), Some(tb)) = (Tier::from_index(a), Tier::from_index(b)) else {
                continue;
            };
            let Some(hop) = cluster.hop(ta, tb) else {
                continue;
            };
            latency_hop[a][b] = HopCost {
                fixed: hop.rtt_ms,
                up_per_byte: hop.up_ms_per_byte,
                down_per_byte: hop.down_ms_per_byte,
            };
            let (tx, rx) = if a == 0 {
                (tx_mj_per_byte, rx_mj_per_byte)
            } else {
                (0.0, 0.0)
            };
            energy_hop[a][b] = HopCost {
                fixed: hop.rtt_ms * idle_w,
                up_per_byte: hop.up_ms_per_byte * idle_w + tx,
                down_per_byte: hop.down_ms_per_byte * idle_w + rx,
            };
        }
    }

    let mut tensors = Vec::new();
    let mut names: Vec<&String> = model.consumers.keys().chain(model.outputs.iter()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if analysis.is_constant(name) {
            // Folded constants travel inside the stage files that read them, like initializers.
            continue;
        }
        let producer = match model.origins.get(name) {
            Some(Origin::Node(v)) => Some(*v),
            Some(Origin::Input) => None,
            // Initializers travel inside the stage files, not over the network at run time.
            Some(Origin::Initializer | Origin::Constant(_)) | None => continue,
        };
        tensors.push(Tensor {
            producer,
            consumers: consumers(model, analysis, name),
            is_model_output: model.outputs.contains(name),
            bytes: analysis.tensor_bytes(name) as f64,
        });
    }

    Ok(Problem {
        node_count: model.nodes.len(),
        tensors,
        param_bytes: analysis
            .node_param_bytes
            .iter()
            .map(|&b| b as f64)
            .collect(),
        tier_present,
        latency: CostLayer {
            node_cost: latency_nodes,
            hop: latency_hop,
        },
        energy: CostLayer {
            node_cost: energy_nodes,
            hop: energy_hop,
        },
    })
}
