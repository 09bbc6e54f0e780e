//! Per-node timing of an optimised tract model: warm-up runs, then the median of N timed runs for every node.

use std::collections::HashMap;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{SimpleState, eval};

use crate::backend::RuntimeError;
use crate::tract_backend::TractStage;
use strata_core::TensorData;

/// Measured times of one model on this machine.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Median time of one whole run (no per-node instrumentation), ms.
    pub total_ms: f64,
    /// Median time of each node of the optimised tract model, by tract node name, in execution order, ms.
    pub nodes: Vec<(String, f64)>,
}

/// Measures a model: `warmup` untimed runs, then `runs` timed whole runs and `runs` per-node-timed runs.
#[tracing::instrument(skip_all, fields(warmup, runs))]
pub fn measure(
    onnx: &[u8],
    input_shapes: &HashMap<String, Vec<usize>>,
    inputs: &HashMap<String, TensorData>,
    warmup: usize,
    runs: usize,
) -> Result<Measurement, RuntimeError> {
    let runs = runs.max(1);
    let stage = TractStage::load(onnx, input_shapes)?;
    let values = stage.ordered_inputs(inputs)?;
    let plan = stage.plan().clone();
    let run_err = |e: TractError| RuntimeError::Run(e.to_string());
    for _ in 0..warmup {
        plan.run(values.clone()).map_err(run_err)?;
    }
    let mut totals = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        plan.run(values.clone()).map_err(run_err)?;
        totals.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let node_count = plan.model().nodes().len();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); node_count];
    let mut state = SimpleState::new(&plan).map_err(run_err)?;
    for _ in 0..runs {
        state
            .run_plan_with_eval(values.clone(), |ctx, op_state, node, input| {
                let t = Instant::now();
                let out = eval(ctx, op_state, node, input);
                samples[node.id].push(t.elapsed().as_secs_f64() * 1e3);
                out
            })
            .map_err(run_err)?;
    }
    let nodes = plan
        .order_without_consts()
        .iter()
        .map(|&id| (plan.model().node(id).name.clone(), median(&mut samples[id])))
        .collect();
    Ok(Measurement {
        total_ms: median(&mut totals),
        nodes,
    })
}

/// Median (0 for no samples).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}
