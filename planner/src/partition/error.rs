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
    /// and why, e.g. "latency budget 5 ms is below the fastest possible plan, 7.3 ms".
    #[error("no feasible placement: {0}")]
    Infeasible(String),
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

/// The reason no feasible placement exists (rendered into [`PartitionError::Infeasible`]).
#[derive(Clone, Debug, Error, PartialEq)]
pub(crate) enum Infeasibility {
    /// A node can run on no tier at all.
    #[error("node {node} can run on no tier: {detail}")]
    NodeHasNoTier {
        /// The node.
        node: usize,
        /// Per-tier reasons.
        detail: String,
    },
    /// Monotonicity (data only flows away from the device) cannot be met.
    #[error(
        "node {consumer} reads a tensor from node {producer}, which cannot run below the \
         {producer_min_tier} tier, but node {consumer} cannot run on that tier or above ({detail})"
    )]
    MonotoneConflict {
        /// Producer node.
        producer: usize,
        /// Consumer node.
        consumer: usize,
        /// Lowest tier the producer can reach.
        producer_min_tier: &'static str,
        /// Why the consumer cannot use the higher tiers.
        detail: String,
    },
    /// Every placement exceeds some memory cap.
    #[error("{detail}")]
    MemoryCaps {
        /// Which caps and by how much.
        detail: String,
    },
    /// The latency budget is below the fastest plan.
    #[error(
        "latency budget {} ms is below the fastest possible plan{}, {} ms",
        fmt_num(*.budget_ms), .scope, fmt_num(*.fastest_ms)
    )]
    LatencyBudget {
        /// The budget.
        budget_ms: f64,
        /// Latency of the fastest plan.
        fastest_ms: f64,
        /// Qualifier of "fastest possible plan" (e.g. " that fits the memory caps"), or "".
        scope: &'static str,
    },
    /// The constraints are individually satisfiable but not together.
    #[error("no plan meets {constraints} at the same time: {detail}")]
    Combined {
        /// The constraints involved, in words.
        constraints: String,
        /// How this was established.
        detail: String,
    },
}

impl From<Infeasibility> for PartitionError {
    fn from(reason: Infeasibility) -> PartitionError {
        PartitionError::Infeasible(reason.to_string())
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
}
