//! The cost model: per node and tier, predicted milliseconds (from FLOPs and the tier's sustained GFLOP/s, or
//! the tier's roofline when it gives a memory bandwidth — see [`crate::roofline`] — or from a measured profile
//! scaled to the tier) and device energy; per hop, RTT and per-byte costs. Turns a model, its analysis, a
//! cluster and a privacy level into the partitioner's [`Problem`].

use serde::{Deserialize, Serialize};

use crate::analyse::Analysis;
use crate::cluster::Cluster;
use crate::model::{Model, Origin};
use crate::partition::{CostLayer, HopCost, Problem, TIER_COUNT, Tensor};
use crate::roofline::{self, Roofline};
use strata_core::Privacy;
use strata_core::Tier;
use strata_core::recost::{DevicePower, Link, LinkState, ms_per_byte};

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

/// Predicted milliseconds for each node on each tier (INFINITY where the tier is absent). With a profile, its
/// measured times (scaled by the tier's GFLOP/s against the profiled machine's effective GFLOP/s unless the
/// tier is `measured_here`) plus the tier's overhead; without, the tier's [`Roofline`]: `FLOPs / gflops +
/// overhead`, or `max(FLOPs / gflops, bytes moved / bandwidth) + overhead` when the tier gives
/// `bandwidth_gbs`. Layout-only operators pay no overhead.
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
    let work = roofline::work(model, analysis);
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
                    let overhead = if is_layout_only(&model.nodes[v].op_type) {
                        0.0
                    } else {
                        spec.op_overhead_us * 1e-3
                    };
                    row[tier.index()] = match (&measured, profile) {
                        (Some(ms), Some(_)) if spec.measured_here => ms[v] + overhead,
                        (Some(ms), Some(p)) => ms[v] * p.effective_gflops / spec.gflops + overhead,
                        // Layout-only nodes still pay their FLOPs (one per output element), as before.
                        _ => Roofline::of(spec).node_ms(&roofline::NodeWork {
                            flops: analysis.node_flops[v],
                            ..work[v]
                        }),
                    };
                }
            }
            row
        })
        .collect())
}

/// Attributes the per-node times of a tract model (by tract node name, as
/// `strata_runtime::profile::measure` gives them) to the ONNX nodes they came from ([`crate::analyse::owner_of`]):
/// per ONNX node (index as [`Model::nodes`]), ms. Time of nodes tract created itself is spread over all nodes
/// in proportion to their FLOPs; nodes tract fused into a neighbour get 0 (their time is the neighbour's).
pub fn attribute_times(model: &Model, analysis: &Analysis, tract_ms: &[(String, f64)]) -> Vec<f64> {
    let by_tract_name: std::collections::HashMap<&str, usize> = model
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.tract_name.as_str(), i))
        .collect();
    let mut ms = vec![0f64; model.nodes.len()];
    let mut unattributed = 0f64;
    for (name, t) in tract_ms {
        match crate::analyse::owner_of(name, &by_tract_name) {
            Some(i) => ms[i] += t,
            None => unattributed += t,
        }
    }
    let total_flops = analysis.total_flops().max(1.0);
    for (i, m) in ms.iter_mut().enumerate() {
        *m += unattributed * analysis.node_flops[i] / total_flops;
    }
    ms
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
pub(crate) fn is_layout_only(op_type: &str) -> bool {
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

    let power = device_power(cluster);
    let (active_w, idle_w) = (power.active_w, power.idle_w);

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

    let mut problem = Problem {
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
            hop: Default::default(),
        },
        energy: CostLayer {
            node_cost: energy_nodes,
            hop: Default::default(),
        },
    };
    set_links(&mut problem, &links(cluster), &power);
    Ok(problem)
}

/// The cluster's device power figures (zeros without a device spec).
pub fn device_power(cluster: &Cluster) -> DevicePower {
    cluster
        .tier(Tier::Device)
        .map_or(DevicePower::default(), |d| DevicePower {
            active_w: d.active_w,
            idle_w: d.idle_w,
            tx_nj_per_byte: d.tx_nj_per_byte,
            rx_nj_per_byte: d.rx_nj_per_byte,
        })
}

/// The cluster's effective links ([`Cluster::hop`]) by [`Link::index`]: what plans are costed with.
pub fn links(cluster: &Cluster) -> [Option<LinkState>; 3] {
    let mut out = [None; 3];
    for link in Link::ALL {
        let (a, b) = link.tiers();
        out[link.index()] = cluster.hop(a, b).map(|h| LinkState {
            rtt_ms: h.rtt_ms,
            up_mbps: 8.0 / (h.up_ms_per_byte * 1e3),
            down_mbps: 8.0 / (h.down_ms_per_byte * 1e3),
        });
    }
    out
}

/// Sets the problem's hop costs for these link states: the latency layer pays RTT and bytes over goodput; the
/// device-energy layer pays the device's idle power for that time, plus radio energy per byte on hops from
/// the device. Hops over absent links cost nothing (the tiers are absent too). Used by [`build_problem`] and
/// to re-solve a problem under other network conditions.
pub fn set_links(problem: &mut Problem, links: &[Option<LinkState>; 3], power: &DevicePower) {
    let tx_mj_per_byte = power.tx_nj_per_byte * 1e-6;
    let rx_mj_per_byte = power.rx_nj_per_byte * 1e-6;
    problem.latency.hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
    problem.energy.hop = [[HopCost::default(); TIER_COUNT]; TIER_COUNT];
    for link in Link::ALL {
        let (ta, tb) = link.tiers();
        let (a, b) = (ta.index(), tb.index());
        let Some(state) = links[link.index()] else {
            continue;
        };
        let up = ms_per_byte(state.up_mbps);
        let down = ms_per_byte(state.down_mbps);
        problem.latency.hop[a][b] = HopCost {
            fixed: state.rtt_ms,
            up_per_byte: up,
            down_per_byte: down,
        };
        let (tx, rx) = if a == 0 {
            (tx_mj_per_byte, rx_mj_per_byte)
        } else {
            (0.0, 0.0)
        };
        problem.energy.hop[a][b] = HopCost {
            fixed: state.rtt_ms * power.idle_w,
            up_per_byte: up * power.idle_w + tx,
            down_per_byte: down * power.idle_w + rx,
        };
    }
}
