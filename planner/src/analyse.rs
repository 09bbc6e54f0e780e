//! Shape, dtype and FLOP inference for every tensor and node, done by tract for concrete input shapes.
//! Also finds operators tract cannot run, so they are reported by node and op before anything is planned.

use std::collections::HashMap;

use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::InferenceModelExt;
use tract_onnx::tract_hir::internal::{Factoid, InferenceFact};
use tract_onnx::tract_hir::ops::unimpl::UnimplementedOp;

use crate::model::{DeclaredDim, Model, Origin};
use crate::onnx;

/// A concrete shape for one model input, as given on the command line (`NAME=d0,d1,..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputShape {
    /// Model input name.
    pub name: String,
    /// Concrete dimensions.
    pub dims: Vec<usize>,
}

/// An input shape that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputShapeError {
    /// No `=`.
    #[error("input shape \"{0}\" must look like NAME=d0,d1,.. (e.g. x=1,3,224,224)")]
    Form(String),
    /// A dimension that is not a number.
    #[error("input shape \"{given}\": dimension \"{dim}\" is not a non-negative integer")]
    Dim {
        /// The whole text.
        given: String,
        /// The bad dimension.
        dim: String,
    },
    /// Nothing before `=`.
    #[error("input shape \"{0}\" has no input name before '='")]
    NoName(String),
    /// A zero dimension: an empty tensor, nothing to plan or run.
    #[error("input shape \"{0}\" has a zero dimension: every dimension must be at least 1")]
    ZeroDim(String),
}

impl std::str::FromStr for InputShape {
    type Err = InputShapeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, dims) = s
            .rsplit_once('=')
            .ok_or_else(|| InputShapeError::Form(s.to_string()))?;
        let dims = dims
            .split(',')
            .map(|d| {
                d.trim().parse::<usize>().map_err(|_| InputShapeError::Dim {
                    given: s.to_string(),
                    dim: d.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if name.is_empty() {
            return Err(InputShapeError::NoName(s.to_string()));
        }
        if dims.contains(&0) {
            return Err(InputShapeError::ZeroDim(s.to_string()));
        }
        Ok(InputShape {
            name: name.to_string(),
            dims,
        })
    }
}

/// Why a model could not be analysed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyseError {
    /// Operators tract does not implement.
    #[error("{}", unsupported_message(.0))]
    Unsupported(Vec<UnsupportedOp>),
    /// An input shape was given for a name that is not a model input.
    #[error("--input names \"{name}\", which is not a model input (inputs: {known})")]
    UnknownInput {
        /// The given name.
        name: String,
        /// The model's inputs.
        known: String,
    },
    /// A model input has a symbolic dimension and no shape was given.
    #[error(
        "model input \"{name}\" has shape [{declared}] with symbolic dimensions; give a concrete one with --input {name}=d0,d1,.."
    )]
    MissingShape {
        /// Input name.
        name: String,
        /// Declared shape.
        declared: String,
    },
    /// A given shape contradicts the declared one.
    #[error(
        "--input {name}: shape [{given}] does not match the model's declared shape [{declared}]"
    )]
    WrongShape {
        /// Input name.
        name: String,
        /// Given shape.
        given: String,
        /// Declared shape.
        declared: String,
    },
    /// A data type tract or Strata cannot handle.
    #[error("tensor \"{tensor}\" has ONNX data type {code} ({}), which is not supported", onnx::dtype_name(*.code))]
    UnsupportedType {
        /// Tensor name.
        tensor: String,
        /// ONNX dtype code.
        code: i32,
    },
    /// Tract failed to parse or type the graph.
    #[error("tract could not analyse the model: {0}")]
    Tract(String),
}

/// An operator node tract cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedOp {
    /// Node name.
    pub node: String,
    /// Operator type.
    pub op_type: String,
}

fn unsupported_message(ops: &[UnsupportedOp]) -> String {
    let list: Vec<String> = ops
        .iter()
        .map(|o| format!("node \"{}\" ({})", o.node, o.op_type))
        .collect();
    format!(
        "{} operator(s) not supported by tract: {}",
        ops.len(),
        list.join(", ")
    )
}

/// A tensor's inferred type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// ONNX element type code.
    pub elem_type: i32,
    /// Concrete shape, or `None` when it depends on data.
    pub shape: Option<Vec<usize>>,
}

impl TensorInfo {
    /// Size in bytes (0 when the shape is unknown).
    pub fn bytes(&self) -> u64 {
        self.shape.as_ref().map_or(0, |s| {
            s.iter().product::<usize>() as u64 * onnx::dtype_size(self.elem_type) as u64
        })
    }
}

/// Everything the cost model needs to know about a model for given input shapes.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Concrete shapes of the model inputs used.
    pub input_shapes: Vec<InputShape>,
    /// Every tensor's type and shape, by name.
    pub tensors: HashMap<String, TensorInfo>,
    /// FLOPs per node (index as [`Model::nodes`]); 2 per multiply-add, at least one per output element.
    pub node_flops: Vec<f64>,
    /// Parameter bytes per node: initializers, constants and folded constants it reads.
    pub node_param_bytes: Vec<u64>,
    /// Node outputs whose value the input shapes alone determine, as ONNX initializers: shape computations
    /// (`Shape` → `Gather` → `Unsqueeze` → `Concat` feeding a `Reshape`, as PyTorch exports them) and
    /// transforms of weights. A plan is made for concrete input shapes, so each stage that reads one gets it
    /// as an initializer: such tensors never cross a boundary and never constrain the plan. Model outputs
    /// are never folded.
    pub constants: HashMap<String, onnx::TensorProto>,
    /// Per node (index as [`Model::nodes`]): every output is in [`Analysis::constants`], so no stage runs it.
    pub folded: Vec<bool>,
}

impl Analysis {
    /// Total FLOPs.
    pub fn total_flops(&self) -> f64 {
        self.node_flops.iter().sum()
    }

    /// Bytes of a tensor (0 when unknown).
    pub fn tensor_bytes(&self, name: &str) -> u64 {
        self.tensors.get(name).map_or(0, TensorInfo::bytes)
    }

    /// Whether a tensor is a folded constant (see [`Analysis::constants`]).
    pub fn is_constant(&self, tensor: &str) -> bool {
        self.constants.contains_key(tensor)
    }

    /// Whether a node is folded away (see [`Analysis::folded`]).
    pub fn is_folded(&self, node: usize) -> bool {
        self.folded.get(node).copied().unwrap_or(false)
    }
}

/// ONNX operators whose outputs are drawn at random: never folded into constants.
const NONDETERMINISTIC: [&str; 6] = [
    "Bernoulli",
    "Multinomial",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
];

/// A tract tensor as an ONNX initializer named `name` (`TDim` shape values as int64); `None` for types ONNX
/// initializers of Strata's stages do not carry (strings, complex).
fn tensor_proto(name: &str, t: &Tensor) -> Option<onnx::TensorProto> {
    let cast;
    let t = if t.datum_type() == DatumType::TDim {
        cast = t.cast_to::<i64>().ok()?;
        &*cast
    } else {
        t
    };
    let code = onnx_code(t.datum_type());
    if code == 0 || code == 8 {
        return None;
    }
    Some(onnx::TensorProto {
        name: Some(name.to_string()),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(code),
        raw_data: Some(t.as_bytes().to_vec()),
        ..Default::default()
    })
}

/// Maps an ONNX dtype code to tract's datum type.
pub fn datum_type(code: i32) -> Option<DatumType> {
    Some(match code {
        1 => f32::datum_type(),
        2 => u8::datum_type(),
        3 => i8::datum_type(),
        4 => u16::datum_type(),
        5 => i16::datum_type(),
        6 => i32::datum_type(),
        7 => i64::datum_type(),
        9 => bool::datum_type(),
        10 => f16::datum_type(),
        11 => f64::datum_type(),
        12 => u32::datum_type(),
        13 => u64::datum_type(),
        _ => return None,
    })
}

/// Maps tract's datum type back to an ONNX dtype code (TDim, as used for shapes, is int64).
pub fn onnx_code(dt: DatumType) -> i32 {
    match dt {
        DatumType::F32 => 1,
        DatumType::U8 => 2,
        DatumType::I8 => 3,
        DatumType::U16 => 4,
        DatumType::I16 => 5,
        DatumType::I32 => 6,
        DatumType::I64 | DatumType::TDim => 7,
        DatumType::String => 8,
        DatumType::Bool => 9,
        DatumType::F16 => 10,
        DatumType::F64 => 11,
        DatumType::U32 => 12,
        DatumType::U64 => 13,
        _ => 0,
    }
}

/// Parses the model with tract. Nodes tract does not implement are listed, not fatal.
fn parse(bytes: &[u8]) -> Result<(tract_onnx::model::ParseResult, tract_onnx::Onnx), AnalyseError> {
    let pb = tract_onnx::pb::ModelProto::decode(bytes)
        .map_err(|e| AnalyseError::Tract(format!("protobuf decoding: {e}")))?;
    let framework = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true);
    let parsed = framework
        .parse(&pb, None)
        .map_err(|e| AnalyseError::Tract(one_line(&e)))?;
    Ok((parsed, framework))
}

/// Lists the model's nodes whose operators tract does not implement.
pub fn unsupported_ops(model: &Model, bytes: &[u8]) -> Result<Vec<UnsupportedOp>, AnalyseError> {
    let (parsed, _) = parse(bytes)?;
    Ok(find_unsupported(model, &parsed.model))
}

fn find_unsupported(model: &Model, tract_model: &InferenceModel) -> Vec<UnsupportedOp> {
    let by_tract_name: HashMap<&str, usize> = model
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.tract_name.as_str(), i))
        .collect();
    tract_model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<UnimplementedOp>())
        .map(|n| {
            let node = by_tract_name.get(n.name.as_str()).map(|&i| &model.nodes[i]);
            UnsupportedOp {
                node: node.map_or(n.name.clone(), |m| m.name.clone()),
                op_type: node.map_or_else(|| n.op.name().to_string(), |m| m.op_type.clone()),
            }
        })
        .collect()
}

/// Resolves the concrete shape of every model input from the given shapes and the declared ones.
pub fn resolve_input_shapes(
    model: &Model,
    given: &[InputShape],
) -> Result<Vec<InputShape>, AnalyseError> {
    for g in given {
        if !model.inputs.contains(&g.name) {
            return Err(AnalyseError::UnknownInput {
                name: g.name.clone(),
                known: model.inputs.join(", "),
            });
        }
    }
    let mut shapes = Vec::with_capacity(model.inputs.len());
    for name in &model.inputs {
        let declared = model.declared_input_shape(name);
        let declared_text = declared.as_ref().map_or_else(
            || "?".to_string(),
            |d| {
                d.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
        let dims = match (given.iter().find(|g| &g.name == name), &declared) {
            (Some(g), Some(decl)) => {
                let matches = g.dims.len() == decl.len()
                    && g.dims.iter().zip(decl).all(|(d, dd)| match dd {
                        DeclaredDim::Fixed(f) => f == d,
                        DeclaredDim::Symbol(_) => true,
                    });
                if !matches {
                    return Err(AnalyseError::WrongShape {
                        name: name.clone(),
                        given: join(&g.dims),
                        declared: declared_text,
                    });
                }
                g.dims.clone()
            }
            (Some(g), None) => g.dims.clone(),
            (None, Some(decl)) => decl
                .iter()
                .map(|d| match d {
                    DeclaredDim::Fixed(f) => Some(*f),
                    DeclaredDim::Symbol(_) => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| AnalyseError::MissingShape {
                    name: name.clone(),
                    declared: declared_text.clone(),
                })?,
            (None, None) => {
                return Err(AnalyseError::MissingShape {
                    name: name.clone(),
                    declared: declared_text,
                });
            }
        };
        shapes.push(InputShape {
            name: name.clone(),
            dims,
        });
    }
    Ok(shapes)
}

/// Infers every tensor's shape and dtype and every node's FLOPs for the given input shapes.
#[tracing::instrument(skip_all, fields(model = model.display_name()))]
pub fn analyse(
    model: &Model,
    bytes: &[u8],
    given: &[InputShape],
) -> Result<Analysis, AnalyseError> {
    let input_shapes = resolve_input_shapes(model, given)?;
    let (parsed, _) = parse(bytes)?;
    let unsupported = find_unsupported(model, &parsed.model);
    if !unsupported.is_empty() {
        return Err(AnalyseError::Unsupported(unsupported));
    }
    let mut tract_model = parsed.model;
    for shape in &input_shapes {
        let code = model.declared_elem_type(&shape.name).unwrap_or(1);
        let dt = datum_type(code).ok_or_else(|| AnalyseError::UnsupportedType {
            tensor: shape.name.clone(),
            code,
        })?;
        let outlet = parsed
            .outlets_by_name
            .get(&shape.name)
            .copied()
            .ok_or_else(|| {
                AnalyseError::Tract(format!("tract lost model input \"{}\"", shape.name))
            })?;
        tract_model
            .set_outlet_fact(outlet, InferenceFact::dt_shape(dt, &*shape.dims))
            .map_err(|e| AnalyseError::Tract(one_line(&e)))?;
    }
    // What inference knows of every ONNX tensor, before typing folds some of them away (their dtypes and
    // values are read here).
    tract_model
        .analyse(false)
        .map_err(|e| AnalyseError::Tract(one_line(&e)))?;
    let inferred: HashMap<String, InferenceFact> = parsed
        .outlets_by_name
        .iter()
        .filter_map(|(name, &outlet)| {
            let fact = tract_model.outlet_fact(outlet).ok()?;
            Some((name.clone(), fact.clone()))
        })
        .collect();
    let typed = tract_model
        .into_typed()
        .map_err(|e| AnalyseError::Tract(one_line(&e)))?;

    let mut tensors = HashMap::new();
    for node in typed.nodes() {
        for (ix, output) in node.outputs.iter().enumerate() {
            if let Some(label) = typed.outlet_label(OutletId::new(node.id, ix)) {
                tensors.insert(
                    label.to_string(),
                    TensorInfo {
                        elem_type: onnx_code(output.fact.datum_type),
                        shape: output.fact.shape.as_concrete().map(<[usize]>::to_vec),
                    },
                );
            }
        }
    }
    // Tensors typing folded away (or left without a concrete type) keep what inference knew of them.
    for (name, fact) in &inferred {
        let Some(dt) = fact.datum_type.concretize() else {
            continue;
        };
        let known = tensors
            .get(name)
            .is_some_and(|t: &TensorInfo| t.elem_type != 0 && t.shape.is_some());
        if !known {
            let shape = fact.shape.as_concrete_finite().ok().flatten();
            tensors.insert(
                name.clone(),
                TensorInfo {
                    elem_type: onnx_code(dt),
                    shape: shape.map(|s| s.to_vec()),
                },
            );
        }
    }
    // Node outputs whose value the input shapes determine (never those of a sampling operator, nor anything
    // computed from one: tract may evaluate one with constant inputs, but its value must be drawn at run
    // time, every time). Nodes are in topological order, so a node's inputs are judged before it.
    let mut constants = HashMap::new();
    let mut sampled: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for node in &model.nodes {
        let samples = matches!(node.domain.as_str(), "" | "ai.onnx")
            && NONDETERMINISTIC.contains(&node.op_type.as_str());
        if samples || node.inputs.iter().any(|i| sampled.contains(i.as_str())) {
            sampled.extend(node.outputs.iter().map(String::as_str));
            continue;
        }
        for out in &node.outputs {
            if model.outputs.contains(out) {
                continue;
            }
            let value = inferred.get(out).and_then(|f| f.value.concretize());
            if let Some(proto) = value.and_then(|v| tensor_proto(out, &v)) {
                constants.insert(out.clone(), proto);
            }
        }
    }
    let folded: Vec<bool> = model
        .nodes
        .iter()
        .map(|n| !n.outputs.is_empty() && n.outputs.iter().all(|o| constants.contains_key(o)))
        .collect();
    // Initializers and inputs keep their declared types even if tract folded them away.
    for init in &model.graph.initializer {
        tensors
            .entry(init.name().to_string())
            .or_insert_with(|| TensorInfo {
                elem_type: init.data_type(),
                shape: Some(init.dims.iter().map(|&d| d.max(0) as usize).collect()),
            });
    }
    for shape in &input_shapes {
        tensors.insert(
            shape.name.clone(),
            TensorInfo {
                elem_type: model.declared_elem_type(&shape.name).unwrap_or(1),
                shape: Some(shape.dims.clone()),
            },
        );
    }

    // FLOPs: tract's cost of every typed node, attributed to the ONNX node it came from by name.
    let by_tract_name: HashMap<&str, usize> = model
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.tract_name.as_str(), i))
        .collect();
    let mut node_flops = vec![0f64; model.nodes.len()];
    for node in typed.nodes() {
        let Some(owner) = owner_of(&node.name, &by_tract_name) else {
            continue;
        };
        let inputs = typed
            .node_input_facts(node.id)
            .map_err(|e| AnalyseError::Tract(one_line(&e)))?;
        if let Ok(costs) = node.op.cost(&inputs) {
            for (kind, count) in costs {
                let count = count.to_i64().unwrap_or(0).max(0) as f64;
                match kind {
                    tract_onnx::tract_core::ops::Cost::FMA(_) => node_flops[owner] += 2.0 * count,
                    tract_onnx::tract_core::ops::Cost::Div(_) => node_flops[owner] += count,
                    _ => {}
                }
            }
        }
    }
    for (i, node) in model.nodes.iter().enumerate() {
        let out_elems: f64 = node
            .outputs
            .iter()
            .filter_map(|o| tensors.get(o))
            .filter_map(|t| t.shape.as_ref())
            .map(|s| s.iter().product::<usize>() as f64)
            .sum();
        node_flops[i] = node_flops[i].max(out_elems);
    }

    // Parameters: initializers, constants and folded constants a node reads (a shared weight counts for each
    // reader: each stage holding a reader holds a copy). A folded node runs nowhere and holds nothing.
    let node_param_bytes = model
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            if folded[i] {
                return 0;
            }
            node.inputs
                .iter()
                .filter(|t| {
                    constants.contains_key(*t)
                        || matches!(
                            model.origins.get(*t),
                            Some(Origin::Initializer | Origin::Constant(_))
                        )
                })
                .map(|t| tensors.get(t).map_or(0, TensorInfo::bytes))
                .sum()
        })
        .collect();

    Ok(Analysis {
        input_shapes,
        tensors,
        node_flops,
        node_param_bytes,
        constants,
        folded,
    })
}

/// The ONNX node a tract node came from: its own name, or the longest `.`-separated prefix that names one.
pub fn owner_of(tract_name: &str, by_tract_name: &HashMap<&str, usize>) -> Option<usize> {
    let mut name = tract_name;
    loop {
        if let Some(&i) = by_tract_name.get(name) {
            return Some(i);
        }
        name = &name[..name.rfind('.')?];
    }
}

fn join(dims: &[usize]) -> String {
    dims.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Renders an error chain on one line.
pub fn one_line(e: &TractError) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}
