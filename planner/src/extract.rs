//! Stage extraction: a stage becomes a valid, self-contained ONNX model holding only the nodes and initializers
//! it needs, the source model's opsets and metadata, and its cut tensors declared with shapes and dtypes, so any
//! ONNX runtime can execute it.

use std::collections::HashSet;

use crate::analyse::Analysis;
use crate::model::{Model, Origin};
use crate::onnx::{self, ModelProto, StringStringEntryProto, ValueInfoProto};

/// Why a stage could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// A cut tensor whose type could not be inferred.
    #[error("stage {stage}: tensor \"{tensor}\" crosses a boundary but its data type is unknown")]
    UnknownType {
        /// Stage index.
        stage: usize,
        /// Tensor.
        tensor: String,
    },
}

/// Builds the ONNX model of one stage.
pub fn extract_stage(
    model: &Model,
    analysis: &Analysis,
    nodes: &[usize],
    inputs: &[String],
    outputs: &[String],
    stage: usize,
) -> Result<ModelProto, ExtractError> {
    let source = &model.graph;
    let mut graph = onnx::GraphProto {
        name: Some(format!("{}_stage{stage}", model.display_name())),
        doc_string: Some(format!(
            "Strata stage {stage} of \"{}\"",
            model.display_name()
        )),
        ..Default::default()
    };
    // Constants the stage reads come first, copied like initializers.
    let mut constants: Vec<usize> = nodes
        .iter()
        .flat_map(|&v| model.nodes[v].inputs.iter())
        .filter_map(|t| match model.origins.get(t) {
            Some(Origin::Constant(c)) => Some(*c),
            _ => None,
        })
        .collect();
    constants.sort_unstable();
    constants.dedup();
    graph.node = constants
        .iter()
        .map(|&c| source.node[c].clone())
        .chain(
            nodes
                .iter()
                .map(|&v| source.node[model.nodes[v].proto_index].clone()),
        )
        .collect();

    let mut needed_inits: Vec<&str> = Vec::new();
    let mut needed_folded: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for &v in nodes {
        for t in &model.nodes[v].inputs {
            if matches!(model.origins.get(t), Some(Origin::Initializer)) && seen.insert(t.as_str())
            {
                needed_inits.push(t);
            }
            // A folded constant the stage reads (unless the stage computes it itself).
            if analysis.is_constant(t)
                && !nodes.iter().any(|&p| model.nodes[p].outputs.contains(t))
                && seen.insert(t.as_str())
            {
                needed_folded.push(t);
            }
        }
    }
    graph.initializer = needed_inits
        .iter()
        .filter_map(|t| {
            model
                .initializers
                .get(*t)
                .map(|&i| source.initializer[i].clone())
        })
        .chain(
            needed_folded
                .iter()
                .filter_map(|t| analysis.constants.get(*t).cloned()),
        )
        .collect();
    let needed: HashSet<&str> = needed_inits.iter().copied().collect();
    graph.sparse_initializer = source
        .sparse_initializer
        .iter()
        .filter(|s| s.values.as_ref().is_some_and(|v| needed.contains(v.name())))
        .cloned()
        .collect();

    for t in inputs {
        graph
            .input
            .push(declare(analysis, t, stage, &source.input)?);
    }
    // Before IR version 4, initializers must also be listed as graph inputs.
    if model.header.ir_version() < 4 {
        for init in &graph.initializer {
            let shape: Vec<usize> = init.dims.iter().map(|&d| d.max(0) as usize).collect();
            graph.input.push(onnx::tensor_value_info(
                init.name(),
                init.data_type(),
                &shape,
            ));
        }
    }
    for t in outputs {
        graph
            .output
            .push(declare(analysis, t, stage, &source.output)?);
    }

    let mut header = model.header.clone();
    header.graph = Some(graph);
    header.metadata_props.push(StringStringEntryProto {
        key: Some("strata.stage".into()),
        value: Some(stage.to_string()),
    });
    header.metadata_props.push(StringStringEntryProto {
        key: Some("strata.source_graph".into()),
        value: Some(model.display_name().to_string()),
    });
    Ok(header)
}

/// Declares a stage input or output with its analysed dtype and concrete shape (a plan is made for concrete
/// shapes, and every cut tensor is declared concretely, so model inputs and outputs are too). When the shape is
/// unknown (data-dependent), the source model's own declaration is kept if it has one.
fn declare(
    analysis: &Analysis,
    tensor: &str,
    stage: usize,
    declared: &[ValueInfoProto],
) -> Result<ValueInfoProto, ExtractError> {
    let info = analysis.tensors.get(tensor).filter(|i| i.elem_type != 0);
    if let Some(shape) = info.and_then(|i| i.shape.as_ref()) {
        let elem_type = info.map_or(1, |i| i.elem_type);
        return Ok(onnx::tensor_value_info(tensor, elem_type, shape));
    }
    if let Some(vi) = declared
        .iter()
        .find(|vi| vi.name() == tensor && vi.r#type.is_some())
    {
        return Ok(vi.clone());
    }
    let info = info.ok_or_else(|| ExtractError::UnknownType {
        stage,
        tensor: tensor.to_string(),
    })?;
    let mut vi = onnx::tensor_value_info(tensor, info.elem_type, &[]);
    if let Some(onnx::proto::type_proto::Value::TensorType(t)) =
        vi.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    Ok(vi)
}
