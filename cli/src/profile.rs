//! `strata profile`: per-node times on this machine.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use strata_planner::analyse::{self, InputShape};
use strata_planner::cost::{NodeTime, Profile};
use strata_runtime::{DType, TensorData};

use crate::io::load_model;

pub fn run(
    path: &Path,
    inputs: &[InputShape],
    runs: usize,
    warmup: usize,
    out: Option<&Path>,
) -> Result<()> {
    let (bytes, model) = load_model(path)?;
    let analysis =
        analyse::analyse(&model, &bytes, inputs).with_context(|| path.display().to_string())?;
    let shapes: HashMap<String, Vec<usize>> = analysis
        .input_shapes
        .iter()
        .map(|s| (s.name.clone(), s.dims.clone()))
        .collect();
    let values = sample_inputs(&model, &analysis.input_shapes)?;
    let measured = strata_runtime::profile::measure(&bytes, &shapes, &values, warmup, runs)
        .with_context(|| format!("cannot profile {}", path.display()))?;

    // Attribute each tract node's time to the ONNX node it came from; time of nodes tract created itself is
    // spread over all nodes in proportion to their FLOPs.
    let by_tract_name: HashMap<&str, usize> = model
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.tract_name.as_str(), i))
        .collect();
    let mut ms = vec![0f64; model.nodes.len()];
    let mut unattributed = 0f64;
    for (name, t) in &measured.nodes {
        match analyse::owner_of(name, &by_tract_name) {
            Some(i) => ms[i] += t,
            None => unattributed += t,
        }
    }
    let total_flops = analysis.total_flops().max(1.0);
    for (i, m) in ms.iter_mut().enumerate() {
        *m += unattributed * analysis.node_flops[i] / total_flops;
    }
    let profile = Profile {
        model: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        machine: machine(),
        runs,
        total_ms: measured.total_ms,
        effective_gflops: total_flops / (measured.total_ms.max(1e-6) * 1e6),
        nodes: model
            .nodes
            .iter()
            .zip(&ms)
            .map(|(n, &ms)| NodeTime {
                name: n.name.clone(),
                op_type: n.op_type.clone(),
                ms,
            })
            .collect(),
    };
    say!(
        "{}: {:.3} ms per run (median of {runs}), {:.2} GFLOP/s effective on {}",
        profile.model,
        profile.total_ms,
        profile.effective_gflops,
        profile.machine
    )?;
    let mut top: Vec<&NodeTime> = profile.nodes.iter().collect();
    top.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    say!("{:<48} {:<20} {:>10}", "node", "op", "ms")?;
    for n in top.iter().take(15) {
        say!("{:<48} {:<20} {:>10.4}", n.name, n.op_type, n.ms)?;
    }
    if let Some(out) = out {
        std::fs::write(out, serde_json::to_string_pretty(&profile)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
        say!("profile written to {}", out.display())?;
    }
    Ok(())
}

/// Deterministic inputs of the right dtype and shape: floats in [0, 1), integers 0.
pub fn sample_inputs(
    model: &strata_planner::model::Model,
    shapes: &[InputShape],
) -> Result<HashMap<String, TensorData>> {
    let mut values = HashMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for s in shapes {
        let code = model.declared_elem_type(&s.name).unwrap_or(1);
        let dtype = DType::from_onnx_code(code)
            .with_context(|| format!("input \"{}\" has an unsupported dtype", s.name))?;
        let n: usize = s.dims.iter().product();
        let data = if dtype == DType::F32 {
            (0..n)
                .flat_map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed >> 40) as f32 / (1u64 << 24) as f32).to_le_bytes()
                })
                .collect()
        } else {
            vec![0u8; n * dtype.size()]
        };
        values.insert(
            s.name.clone(),
            TensorData::new(dtype, s.dims.clone(), data).map_err(anyhow::Error::msg)?,
        );
    }
    Ok(values)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!(
        "{cpu} ({} threads)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}
