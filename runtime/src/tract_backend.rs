//! The default backend: tract, optimised, on CPU (x86_64 and aarch64).

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{DimLike, Factoid, InferenceFact};

use crate::backend::{Backend, LoadedStage, OutputFact, RuntimeError};
use strata_core::{DType, TensorData};

/// Tract on the CPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractBackend;

/// An optimised tract plan and its interface.
pub struct TractStage {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    input_facts: Vec<(DType, Vec<Option<usize>>)>,
    /// Empty when an output's type is one Strata has no dtype for (the run would refuse it anyway).
    output_facts: Vec<OutputFact>,
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(
        &self,
        onnx: &[u8],
        input_shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<Box<dyn LoadedStage>, RuntimeError> {
        Ok(Box::new(TractStage::load(onnx, input_shapes)?))
    }
}

impl TractStage {
    /// Loads, types and optimises a model for the given input shapes.
    #[tracing::instrument(skip_all, fields(bytes = onnx.len()))]
    pub fn load(
        onnx: &[u8],
        input_shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<TractStage, RuntimeError> {
        let typed = typed_model(onnx, input_shapes)?;
        let inputs: Vec<String> = typed
            .input_outlets()
            .map_err(load_err)?
            .iter()
            .map(|o| typed.node(o.node).name.clone())
            .collect();
        let outputs: Vec<String> = typed
            .output_outlets()
            .map_err(load_err)?
            .iter()
            .map(|o| {
                typed
                    .outlet_label(*o)
                    .map_or_else(|| typed.node(o.node).name.clone(), str::to_string)
            })
            .collect();
        let mut input_facts = Vec::new();
        for (ix, name) in inputs.iter().enumerate() {
            let fact = typed.input_fact(ix).map_err(load_err)?;
            let dtype = dtype_of(fact.datum_type).ok_or_else(|| {
                RuntimeError::Load(format!(
                    "input \"{name}\" has unsupported type {:?}",
                    fact.datum_type
                ))
            })?;
            let dims = fact.shape.iter().map(|d| d.to_usize().ok()).collect();
            input_facts.push((dtype, dims));
        }
        let mut output_facts = Vec::new();
        for ix in 0..outputs.len() {
            let fact = typed.output_fact(ix).map_err(load_err)?;
            let Some(dtype) = dtype_of(fact.datum_type) else {
                output_facts.clear();
                break;
            };
            output_facts.push((
                dtype,
                fact.shape.iter().map(|d| d.to_usize().ok()).collect(),
            ));
        }
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(load_err)?;
        Ok(TractStage {
            plan,
            inputs,
            outputs,
            input_facts,
            output_facts,
        })
    }

    /// The optimised model (for profiling).
    pub fn plan(&self) -> &Arc<TypedRunnableModel> {
        &self.plan
    }

    /// Checks named inputs against the model's interface and orders them.
    pub fn ordered_inputs(
        &self,
        inputs: &HashMap<String, TensorData>,
    ) -> Result<TVec<TValue>, RuntimeError> {
        let needed = self.inputs.join(", ");
        for name in inputs.keys() {
            if !self.inputs.contains(name) {
                return Err(RuntimeError::UnknownInput {
                    name: name.clone(),
                    needed,
                });
            }
        }
        let mut values = TVec::new();
        for (name, (dtype, dims)) in self.inputs.iter().zip(&self.input_facts) {
            let t = inputs.get(name).ok_or_else(|| RuntimeError::MissingInput {
                name: name.clone(),
                needed: needed.clone(),
            })?;
            if t.dtype != *dtype {
                return Err(RuntimeError::WrongDType {
                    name: name.clone(),
                    expected: dtype.to_string(),
                    got: t.dtype,
                });
            }
            let shape_ok = t.shape.len() == dims.len()
                && t.shape
                    .iter()
                    .zip(dims)
                    .all(|(g, d)| d.is_none_or(|d| d == *g));
            if !shape_ok {
                let expected: Vec<String> = dims
                    .iter()
                    .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
                    .collect();
                return Err(RuntimeError::WrongShape {
                    name: name.clone(),
                    expected: format!("[{}]", expected.join(", ")),
                    got: t.shape.clone(),
                });
            }
            values.push(to_tract(t)?.into());
        }
        Ok(values)
    }
}

impl LoadedStage for TractStage {
    fn input_names(&self) -> &[String] {
        &self.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn output_facts(&self) -> &[OutputFact] {
        &self.output_facts
    }

    fn input_facts(&self) -> &[OutputFact] {
        &self.input_facts
    }

    #[tracing::instrument(skip_all, name = "tract_run")]
    fn run(
        &self,
        inputs: &HashMap<String, TensorData>,
    ) -> Result<HashMap<String, TensorData>, RuntimeError> {
        let values = self.ordered_inputs(inputs)?;
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| RuntimeError::Run(one_line(&e)))?;
        self.outputs
            .iter()
            .zip(outputs)
            .map(|(name, v)| Ok((name.clone(), from_tract(&v)?)))
            .collect()
    }
}

/// Parses and types a model with the given input shapes fixed (other inputs keep their declared facts).
pub fn typed_model(
    onnx: &[u8],
    input_shapes: &HashMap<String, Vec<usize>>,
) -> Result<TypedModel, RuntimeError> {
    let framework = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true);
    let proto = tract_onnx::pb::ModelProto::decode(onnx)
        .map_err(|e| RuntimeError::Load(format!("not an ONNX model: {e}")))?;
    let mut model = framework.model_for_proto_model(&proto).map_err(load_err)?;
    let outlets = model.input_outlets().map_err(load_err)?.to_vec();
    for (ix, outlet) in outlets.iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        if let Some(shape) = input_shapes.get(&name) {
            let declared = model.input_fact(ix).map_err(load_err)?;
            let dt = declared
                .datum_type
                .concretize()
                .unwrap_or(f32::datum_type());
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, &**shape))
                .map_err(load_err)?;
        }
    }
    model.into_typed().map_err(load_err)
}

fn load_err(e: TractError) -> RuntimeError {
    RuntimeError::Load(one_line(&e))
}

fn one_line(e: &TractError) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

/// Tract datum type → ours.
pub fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::F16 => DType::F16,
        DatumType::I8 => DType::I8,
        DatumType::I16 => DType::I16,
        DatumType::I32 => DType::I32,
        DatumType::I64 | DatumType::TDim => DType::I64,
        DatumType::U8 => DType::U8,
        DatumType::U16 => DType::U16,
        DatumType::U32 => DType::U32,
        DatumType::U64 => DType::U64,
        DatumType::Bool => DType::Bool,
        _ => return None,
    })
}

fn datum_of(d: DType) -> DatumType {
    match d {
        DType::F32 => f32::datum_type(),
        DType::F64 => f64::datum_type(),
        DType::F16 => f16::datum_type(),
        DType::I8 => i8::datum_type(),
        DType::I16 => i16::datum_type(),
        DType::I32 => i32::datum_type(),
        DType::I64 => i64::datum_type(),
        DType::U8 => u8::datum_type(),
        DType::U16 => u16::datum_type(),
        DType::U32 => u32::datum_type(),
        DType::U64 => u64::datum_type(),
        DType::Bool => bool::datum_type(),
    }
}

/// Our tensor → tract's (one copy).
pub fn to_tract(t: &TensorData) -> Result<Tensor, RuntimeError> {
    let mut tensor = Tensor::zero_dt(datum_of(t.dtype), &t.shape)
        .map_err(|e| RuntimeError::Run(one_line(&e)))?;
    tensor.as_bytes_mut().copy_from_slice(&t.data);
    Ok(tensor)
}

/// Tract's tensor → ours (one copy). TDim tensors (shapes) become int64.
pub fn from_tract(t: &Tensor) -> Result<TensorData, RuntimeError> {
    if t.datum_type() == DatumType::TDim {
        let cast = t
            .cast_to::<i64>()
            .map_err(|e| RuntimeError::Run(one_line(&e)))?;
        return plain_from_tract(&cast);
    }
    plain_from_tract(t)
}

fn plain_from_tract(t: &Tensor) -> Result<TensorData, RuntimeError> {
    let dtype = dtype_of(t.datum_type()).ok_or_else(|| {
        RuntimeError::Run(format!("output of unsupported type {:?}", t.datum_type()))
    })?;
    Ok(TensorData::new(
        dtype,
        t.shape().to_vec(),
        t.as_bytes().to_vec(),
    )?)
}
