//! `strata inspect`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use strata_planner::analyse::{self, InputShape};
use strata_planner::onnx;

use crate::io::{human_bytes, load_model};

#[derive(Serialize)]
struct Report {
    model: String,
    ir_version: i64,
    opsets: BTreeMap<String, i64>,
    inputs: Vec<TensorLine>,
    outputs: Vec<TensorLine>,
    nodes: usize,
    ops: BTreeMap<String, usize>,
    parameters: u64,
    parameter_bytes: u64,
    unsupported: Vec<UnsupportedLine>,
    /// None when the model cannot be analysed (unsupported ops, unknown shapes).
    flops: Option<f64>,
    analysis_error: Option<String>,
    largest_activations: Vec<TensorLine>,
}

#[derive(Serialize)]
struct TensorLine {
    name: String,
    dtype: String,
    shape: String,
    bytes: Option<u64>,
}

#[derive(Serialize)]
struct UnsupportedLine {
    node: String,
    op_type: String,
}

pub fn run(path: &Path, inputs: &[InputShape], json: bool) -> Result<()> {
    let (bytes, model) = load_model(path)?;
    let mut ops = BTreeMap::new();
    for n in &model.nodes {
        *ops.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    if !model.constants.is_empty() {
        *ops.entry("Constant".to_string()).or_insert(0) += model.constants.len();
    }
    let mut parameters = 0u64;
    let mut parameter_bytes = 0u64;
    let constants = model
        .constants
        .iter()
        .flat_map(|&c| model.graph.node[c].attribute.iter())
        .filter_map(|a| a.t.as_ref());
    for tensor in model.graph.initializer.iter().chain(constants) {
        let count: u64 = tensor.dims.iter().map(|&d| d.max(0) as u64).product();
        parameters += count;
        parameter_bytes += count * onnx::dtype_size(tensor.data_type()) as u64;
    }
    let unsupported = analyse::unsupported_ops(&model, &bytes)?;
    let analysis = if unsupported.is_empty() {
        analyse::analyse(&model, &bytes, inputs).map_err(|e| e.to_string())
    } else {
        Err("unsupported operators".to_string())
    };
    let declared = |name: &str| -> TensorLine {
        let shape = match (&analysis, model.declared_input_shape(name)) {
            (Ok(a), _) if a.tensors.get(name).and_then(|t| t.shape.as_ref()).is_some() => {
                format!("{:?}", a.tensors[name].shape.as_deref().unwrap_or(&[]))
            }
            (_, Some(dims)) => format!(
                "[{}]",
                dims.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => "?".into(),
        };
        TensorLine {
            name: name.to_string(),
            dtype: onnx::dtype_name(model.declared_elem_type(name).unwrap_or(0)).to_string(),
            shape,
            bytes: analysis.as_ref().ok().map(|a| a.tensor_bytes(name)),
        }
    };
    let mut largest = Vec::new();
    if let Ok(a) = &analysis {
        let mut acts: Vec<(&String, u64)> = model
            .nodes
            .iter()
            .flat_map(|n| n.outputs.iter())
            .map(|t| (t, a.tensor_bytes(t)))
            .collect();
        acts.sort_by_key(|a| std::cmp::Reverse(a.1));
        for (name, b) in acts.into_iter().take(5) {
            let Some(info) = a.tensors.get(name) else {
                continue;
            };
            largest.push(TensorLine {
                name: name.clone(),
                dtype: onnx::dtype_name(info.elem_type).to_string(),
                shape: format!("{:?}", info.shape.as_deref().unwrap_or(&[])),
                bytes: Some(b),
            });
        }
    }
    let report = Report {
        model: path.display().to_string(),
        ir_version: model.header.ir_version(),
        opsets: model
            .header
            .opset_import
            .iter()
            .map(|o| {
                (
                    if o.domain().is_empty() {
                        "ai.onnx".into()
                    } else {
                        o.domain().to_string()
                    },
                    o.version(),
                )
            })
            .collect(),
        inputs: model.inputs.iter().map(|n| declared(n)).collect(),
        outputs: model.outputs.iter().map(|n| declared(n)).collect(),
        nodes: model.nodes.len() + model.constants.len(),
        ops,
        parameters,
        parameter_bytes,
        unsupported: unsupported
            .iter()
            .map(|u| UnsupportedLine {
                node: u.node.clone(),
                op_type: u.op_type.clone(),
            })
            .collect(),
        flops: analysis.as_ref().ok().map(|a| a.total_flops()),
        analysis_error: analysis.as_ref().err().cloned(),
        largest_activations: largest,
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    say!("model       {}", report.model)?;
    say!(
        "ir version  {}    opsets {:?}",
        report.ir_version,
        report.opsets
    )?;
    say!(
        "nodes       {}    parameters {} ({})",
        report.nodes,
        report.parameters,
        human_bytes(report.parameter_bytes as f64)
    )?;
    match (report.flops, &report.analysis_error) {
        (Some(f), _) => say!("FLOPs       {:.3} G", f / 1e9)?,
        (None, Some(e)) => say!("FLOPs       unknown: {e}")?,
        _ => {}
    }
    for (title, lines) in [
        ("inputs", &report.inputs),
        ("outputs", &report.outputs),
        ("largest activations", &report.largest_activations),
    ] {
        say!("{title}:")?;
        for l in lines.iter() {
            let size = l.bytes.map(|b| human_bytes(b as f64)).unwrap_or_default();
            say!("  {:<40} {:<8} {:<24} {}", l.name, l.dtype, l.shape, size)?;
        }
    }
    say!("ops:")?;
    for (op, count) in &report.ops {
        say!("  {op:<24} {count}")?;
    }
    if !report.unsupported.is_empty() {
        say!("unsupported operators (tract cannot run this model):")?;
        for u in &report.unsupported {
            say!("  node \"{}\" ({})", u.node, u.op_type)?;
        }
    }
    Ok(())
}
