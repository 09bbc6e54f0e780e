//! Checks that a problem and its constraints are well formed before any cut is built.

use super::*;

pub(super) fn validate_problem(problem: &Problem) -> Result<(), PartitionError> {
    let n = problem.node_count;
    let invalid = |msg: String| Err(PartitionError::InvalidProblem(msg));
    if !problem.tier_present[0] {
        return invalid("the device tier (0) must be present".into());
    }
    if problem.param_bytes.len() != n {
        return invalid(format!(
            "param_bytes has {} entries for {n} nodes",
            problem.param_bytes.len()
        ));
    }
    for (name, layer) in [("latency", &problem.latency), ("energy", &problem.energy)] {
        if layer.node_cost.len() != n {
            return invalid(format!(
                "{name} layer has {} node costs for {n} nodes",
                layer.node_cost.len()
            ));
        }
        for (v, costs) in layer.node_cost.iter().enumerate() {
            for (t, &c) in costs.iter().enumerate() {
                if c.is_nan() || c == f64::NEG_INFINITY {
                    return invalid(format!(
                        "{name} cost of node {v} on the {} tier is {c}",
                        TIER_NAMES[t]
                    ));
                }
            }
        }
        for a in 0..TIER_COUNT {
            for b in a + 1..TIER_COUNT {
                if !(problem.tier_present[a] && problem.tier_present[b]) {
                    continue;
                }
                let h = layer.hop[a][b];
                for (component, x) in [
                    ("fixed", h.fixed),
                    ("up_per_byte", h.up_per_byte),
                    ("down_per_byte", h.down_per_byte),
                ] {
                    if !(x.is_finite() && x >= 0.0) {
                        return invalid(format!(
                            "{name} hop {}->{} {component} cost is {x}; it must be finite and \
                             non-negative",
                            TIER_NAMES[a], TIER_NAMES[b]
                        ));
                    }
                }
            }
        }
    }
    for (v, &p) in problem.param_bytes.iter().enumerate() {
        if !(p.is_finite() && p >= 0.0) {
            return invalid(format!("node {v} has {p} parameter bytes"));
        }
    }
    for (i, tensor) in problem.tensors.iter().enumerate() {
        if !(tensor.bytes.is_finite() && tensor.bytes >= 0.0) {
            return invalid(format!("tensor {i} has {} bytes", tensor.bytes));
        }
        if let Some(p) = tensor.producer
            && p >= n
        {
            return invalid(format!("tensor {i} is produced by node {p} of {n}"));
        }
        for &c in &tensor.consumers {
            if c >= n {
                return invalid(format!("tensor {i} is consumed by node {c} of {n}"));
            }
            if tensor.producer.is_some_and(|p| c <= p) {
                return invalid(format!(
                    "tensor {i} flows from node {} to node {c}: nodes must be in topological \
                     index order",
                    tensor.producer.unwrap_or(0)
                ));
            }
        }
    }
    Ok(())
}

/// The exact solver needs `hop[0][2] <= hop[0][1] + hop[1][2]` componentwise in both layers.
pub(super) fn check_triangle(problem: &Problem) -> Result<(), PartitionError> {
    if !problem.tier_present.iter().all(|&p| p) {
        return Ok(());
    }
    for (layer, cost) in [("latency", &problem.latency), ("energy", &problem.energy)] {
        let (direct, first, second) = (cost.hop[0][2], cost.hop[0][1], cost.hop[1][2]);
        for (component, d, a, b) in [
            ("fixed", direct.fixed, first.fixed, second.fixed),
            (
                "up_per_byte",
                direct.up_per_byte,
                first.up_per_byte,
                second.up_per_byte,
            ),
            (
                "down_per_byte",
                direct.down_per_byte,
                first.down_per_byte,
                second.down_per_byte,
            ),
        ] {
            if d > (a + b) * (1.0 + 1e-12) {
                return Err(PartitionError::TriangleInequality {
                    layer,
                    component,
                    direct: d,
                    device_edge: a,
                    edge_cloud: b,
                });
            }
        }
    }
    Ok(())
}

pub(super) fn validate_constraints(constraints: &Constraints) -> Result<(), PartitionError> {
    if let Some(b) = constraints.latency_budget_ms
        && b.is_nan()
    {
        return Err(PartitionError::InvalidConstraints(
            "the latency budget is NaN".into(),
        ));
    }
    for (t, cap) in constraints.memory_cap_bytes.iter().enumerate() {
        if let Some(cap) = *cap
            && (cap.is_nan() || cap < 0.0)
        {
            return Err(PartitionError::InvalidConstraints(format!(
                "the {} memory cap is {cap} bytes; it must be a non-negative number",
                TIER_NAMES[t]
            )));
        }
    }
    Ok(())
}
