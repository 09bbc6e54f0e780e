//! Manual splits: `strata split --at T1,T2 --at T7`. Each boundary is a set of tensors; every node needed to
//! compute them (and the tensors of earlier boundaries) runs before it. The crossing tensors are found by
//! [`crate::plan::stages_from_assignment`].

use crate::analyse::Analysis;
use crate::model::{Model, Origin};

/// Why a manual split was refused.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// No boundary given.
    #[error("give at least one boundary with --at TENSOR[,TENSOR..]")]
    NoBoundary,
    /// A tensor that does not exist.
    #[error(
        "--at names tensor \"{0}\", which is not in the model (see `strata inspect` for tensor names)"
    )]
    UnknownTensor(String),
    /// A tensor no node computes.
    #[error(
        "--at names \"{0}\", which is a model input or initializer, not a node output; a boundary must follow some node"
    )]
    NotComputed(String),
    /// A tensor the input shapes alone determine: it never crosses a boundary (each stage that reads it holds
    /// it), so it cannot be one.
    #[error(
        "--at names \"{0}\", which is a constant for these input shapes (computed from weights and shapes \
         alone, so every stage that reads it holds it); a boundary must be an activation"
    )]
    Constant(String),
    /// A boundary whose nodes are all in earlier stages.
    #[error(
        "boundary {index} ({tensors}) adds no node: everything it needs already runs before boundary {previous}"
    )]
    AddsNothing {
        /// 1-based boundary number.
        index: usize,
        /// Its tensors.
        tensors: String,
        /// The previous boundary number (0 = none).
        previous: usize,
    },
    /// The last boundary leaves nothing after it.
    #[error("boundary {0} leaves no node for the last stage: every node is needed before it")]
    NothingAfter(usize),
}

/// Assigns each node a stage index: stage k holds the nodes needed for boundary k+1 not already in earlier
/// stages; the last stage holds the rest. Folded nodes ([`Analysis::folded`]) run in no stage, so they do not
/// count as nodes a boundary adds or leaves.
pub fn stage_assignment(
    model: &Model,
    analysis: &Analysis,
    boundaries: &[Vec<String>],
) -> Result<Vec<usize>, SplitError> {
    if boundaries.is_empty() || boundaries.iter().all(Vec::is_empty) {
        return Err(SplitError::NoBoundary);
    }
    let n = model.nodes.len();
    let last = boundaries.len();
    let mut stage_of = vec![last; n];
    for (k, boundary) in boundaries.iter().enumerate() {
        let mut stack = Vec::new();
        for t in boundary {
            if analysis.is_constant(t) {
                return Err(SplitError::Constant(t.clone()));
            }
            match model.origins.get(t) {
                Some(Origin::Node(v)) => stack.push(*v),
                Some(_) => return Err(SplitError::NotComputed(t.clone())),
                None => return Err(SplitError::UnknownTensor(t.clone())),
            }
        }
        let mut added = 0;
        while let Some(v) = stack.pop() {
            if stage_of[v] != last {
                continue;
            }
            stage_of[v] = k;
            if !analysis.is_folded(v) {
                added += 1;
            }
            for t in &model.nodes[v].inputs {
                if let Some(Origin::Node(p)) = model.origins.get(t) {
                    stack.push(*p);
                }
            }
        }
        if added == 0 {
            return Err(SplitError::AddsNothing {
                index: k + 1,
                tensors: boundary.join(","),
                previous: k,
            });
        }
    }
    let runs_last = (0..n).any(|v| stage_of[v] == last && !analysis.is_folded(v));
    if !runs_last {
        return Err(SplitError::NothingAfter(last));
    }
    Ok(stage_of)
}
