//! Errors of the partitioner and the human-readable formatting they use.

use thiserror::Error;

/// Why partitioning failed.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum PartitionError {
    /// The problem description itself is malformed (lengths, indices, NaN costs, ...).
    #[error("invalid partitioning problem: {0}")]
    InvalidProblem(String),
    /// The constraints are malformed (NaN budget or cap).
    #[error("invalid constraints: {0}")]
    InvalidConstraints(String),
    /// A hop-cost component violates the triangle inequality the exact solver relies on.
    #[error(
        "{layer} layer hop costs violate the triangle inequality on {component}: device->cloud \
         {direct} exceeds device->edge {device_edge} + edge->cloud {edge_cloud}"
    )]
    TriangleInequality {
        /// "latency" or "energy".
        layer: &'static str,
        /// "fixed", "up_per_byte" or "down_per_byte".
        component: &'static str,
        /// `hop[0][2]` component.
        direct: f64,
        /// `hop[0][1]` component.
        device_edge: f64,
        /// `hop[1][2]` component.
        edge_cloud: f64,
    },
    /// The brute-force oracle refuses graphs that are too large to enumerate.
    #[error(
        "brute force is a test oracle for graphs of at most {max_nodes} nodes; this graph has \
         {nodes} nodes"
    )]
    TooLargeForBruteForce {
        /// Node count of the problem.
        nodes: usize,
        /// Largest node count accepted.
        max_nodes: usize,
    },
    /// No placement satisfies the constraints (proven). The message names the constraint(s)
    /// and why, e.g. "latency budget 5 ms is below the fastest possible plan, 7.3 ms"; nodes are named by
    /// index (see [`PartitionError::describe`] to name them otherwise).
    #[error("no feasible placement: {}", .0.describe(&|v| format!("node {v}")))]
    Infeasible(Infeasibility),
    /// The constrained search gave up before finding a feasible placement; one may still exist.
    #[error(
        "no placement meeting {constraints} was found: the Lagrangian search found none and the \
         exhaustive fallback stopped after {work_limit} search steps on this {nodes}-node graph \
         (it is complete for graphs of at most {exhaustive_nodes} nodes)"
    )]
    SearchLimit {
        /// The constraints involved, in words.
        constraints: String,
        /// Node count of the problem.
        nodes: usize,
        /// Search steps spent.
        work_limit: u64,
        /// Node count up to which the fallback search is never cut short.
        exhaustive_nodes: usize,
    },
}

impl PartitionError {
    /// The message, with every node named by `node` (the planner passes `node "conv3" (Conv)`; the
    /// partitioner alone knows only indices).
    pub fn describe(&self, node: &dyn Fn(usize) -> String) -> String {
        match self {
            PartitionError::Infeasible(why) => {
                format!("no feasible placement: {}", why.describe(node))
            }
            other => other.to_string(),
        }
    }
}

/// Why one node cannot run on one tier.
#[derive(Clone, Debug, PartialEq)]
pub enum TierRefusal {
    /// The tier is not in the cluster (or the privacy level excludes it).
    Absent {
        /// The tier.
        tier: &'static str,
    },
    /// The cost model forbids the node there (infinite cost: a raw-input reader under `features` privacy).
    Forbidden {
        /// The tier.
        tier: &'static str,
        /// The layer whose cost is infinite ("latency" or "energy").
        layer: &'static str,
    },
    /// The node alone needs more memory than the tier's cap.
    MemoryCap {
        /// The tier.
        tier: &'static str,
        /// The cap, bytes.
        cap_bytes: f64,
        /// Parameters + tensors, bytes.
        need_bytes: f64,
        /// Parameter bytes.
        param_bytes: f64,
        /// Bytes of the tensors it reads and writes.
        io_bytes: f64,
    },
}

impl TierRefusal {
    fn describe(&self, node: &str) -> String {
        match self {
            TierRefusal::Absent { tier } => format!("{tier}: tier absent"),
            TierRefusal::Forbidden { tier, layer } => {
                format!("{tier}: forbidden (infinite {layer} cost)")
            }
            TierRefusal::MemoryCap {
                tier,
                cap_bytes,
                need_bytes,
                param_bytes,
                io_bytes,
            } => format!(
                "tier {tier} memory cap {} is below the smallest possible stage: {node} alone needs {} \
                 ({} of parameters + {} of tensors it reads and writes)",
                fmt_bytes(*cap_bytes),
                fmt_bytes(*need_bytes),
                fmt_bytes(*param_bytes),
                fmt_bytes(*io_bytes)
            ),
        }
    }
}

/// The reason no feasible placement exists ([`PartitionError::Infeasible`]). Nodes are indices; render with
/// [`Infeasibility::describe`].
#[derive(Clone, Debug, PartialEq)]
pub enum Infeasibility {
    /// A node can run on no tier at all.
    NodeHasNoTier {
        /// The node.
        node: usize,
        /// Why not, per tier.
        refusals: Vec<TierRefusal>,
    },
    /// Monotonicity (data only flows away from the device) cannot be met.
    MonotoneConflict {
        /// Producer node.
        producer: usize,
        /// Consumer node.
        consumer: usize,
        /// Lowest tier the producer can reach.
        producer_min_tier: &'static str,
        /// Why the consumer cannot use the higher tiers.
        refusals: Vec<TierRefusal>,
    },
    /// Every placement exceeds some memory cap.
    MemoryCaps {
        /// Which caps and by how much.
        detail: String,
    },
    /// The latency budget is below the fastest plan.
    LatencyBudget {
        /// The budget.
        budget_ms: f64,
        /// Latency of the fastest plan.
        fastest_ms: f64,
        /// Qualifier of "fastest possible plan" (e.g. " that fits the memory caps"), or "".
        scope: &'static str,
    },
    /// The constraints are individually satisfiable but not together.
    Combined {
        /// The constraints involved, in words.
        constraints: String,
        /// How this was established.
        detail: String,
    },
}

impl Infeasibility {
    /// The reason in words, with nodes named by `node`.
    pub fn describe(&self, node: &dyn Fn(usize) -> String) -> String {
        let refusals = |v: usize, list: &[TierRefusal]| {
            let name = node(v);
            list.iter()
                .map(|r| r.describe(&name))
                .collect::<Vec<_>>()
                .join("; ")
        };
        match self {
            Infeasibility::NodeHasNoTier {
                node: v,
                refusals: r,
            } => {
                format!("{} can run on no tier: {}", node(*v), refusals(*v, r))
            }
            Infeasibility::MonotoneConflict {
                producer,
                consumer,
                producer_min_tier,
                refusals: r,
            } => format!(
                "{c} reads a tensor from {p}, which cannot run below the {producer_min_tier} tier, but {c} \
                 cannot run on that tier or above ({})",
                refusals(*consumer, r),
                c = node(*consumer),
                p = node(*producer),
            ),
            Infeasibility::MemoryCaps { detail } => detail.clone(),
            Infeasibility::LatencyBudget {
                budget_ms,
                fastest_ms,
                scope,
            } => format!(
                "latency budget {} ms is below the fastest possible plan{scope}, {} ms",
                fmt_num(*budget_ms),
                fmt_num(*fastest_ms)
            ),
            Infeasibility::Combined {
                constraints,
                detail,
            } => format!("no plan meets {constraints} at the same time: {detail}"),
        }
    }
}

impl std::fmt::Display for Infeasibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(&|v| format!("node {v}")))
    }
}

impl From<Infeasibility> for PartitionError {
    fn from(reason: Infeasibility) -> PartitionError {
        PartitionError::Infeasible(reason)
    }
}

/// Formats a number with at most 3 decimals, trailing zeros removed.
pub(crate) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let s = format!("{v:.3}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s.as_str()
    };
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// Formats a byte count with a binary unit.
pub(crate) fn fmt_bytes(bytes: f64) -> String {
    const KIB: f64 = 1024.0;
    let (value, unit) = if bytes.abs() >= KIB * KIB * KIB {
        (bytes / (KIB * KIB * KIB), "GiB")
    } else if bytes.abs() >= KIB * KIB {
        (bytes / (KIB * KIB), "MiB")
    } else if bytes.abs() >= KIB {
        (bytes / KIB, "KiB")
    } else {
        (bytes, "B")
    };
    let mut s = format!("{value:.2}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    format!("{s} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(fmt_num(5.0), "5");
        assert_eq!(fmt_num(7.3000001), "7.3");
        assert_eq!(fmt_bytes(512.0 * 1024.0 * 1024.0), "512 MiB");
        assert_eq!(fmt_bytes(1536.0), "1.5 KiB");
        let e = Infeasibility::LatencyBudget {
            budget_ms: 5.0,
            fastest_ms: 7.3,
            scope: "",
        };
        assert_eq!(
            e.to_string(),
            "latency budget 5 ms is below the fastest possible plan, 7.3 ms"
        );
    }

    #[test]
    fn nodes_are_named_by_the_caller() {
        let e = PartitionError::Infeasible(Infeasibility::NodeHasNoTier {
            node: 4,
            refusals: vec![
                TierRefusal::Absent { tier: "cloud" },
                TierRefusal::MemoryCap {
                    tier: "device",
                    cap_bytes: 1024.0,
                    need_bytes: 4096.0,
                    param_bytes: 2048.0,
                    io_bytes: 2048.0,
                },
            ],
        });
        assert_eq!(
            e.to_string(),
            "no feasible placement: node 4 can run on no tier: cloud: tier absent; tier device memory cap \
             1 KiB is below the smallest possible stage: node 4 alone needs 4 KiB (2 KiB of parameters + 2 KiB \
             of tensors it reads and writes)"
        );
        let named = e.describe(&|v| format!("node \"conv{v}\" (Conv)"));
        assert!(
            named.starts_with("no feasible placement: node \"conv4\" (Conv) can run on no tier"),
            "{named}"
        );
        assert!(
            named.contains("node \"conv4\" (Conv) alone needs"),
            "{named}"
        );
    }
}
