//! The Open Inference Protocol v2 (KServe's `inference.GRPCInferenceService`, which `tritonclient.grpc`
//! speaks) meets Strata's types here, and only here: the protocol's datatype names and [`DType`], its tensors
//! (typed `contents` or little-endian, row-major `raw_input_contents`) and [`TensorData`].
//!
//! Every way a request can be malformed is an [`OipError`], answered `INVALID_ARGUMENT` as the protocol
//! expects; nothing here panics on client input, and no buffer is sized from a declared shape before the
//! contents have been found to match it.

use std::collections::BTreeSet;

use strata_core::{DType, TensorData};
use tonic::Status;

use crate::inference::model_infer_request::InferInputTensor;
use crate::inference::model_infer_response::InferOutputTensor;
use crate::inference::model_metadata_response::TensorMetadata;
use crate::inference::{InferTensorContents, ModelInferRequest};

/// The protocol's datatypes Strata runs, with their [`DType`]s.
const DATATYPES: [(&str, DType); 12] = [
    ("BOOL", DType::Bool),
    ("UINT8", DType::U8),
    ("UINT16", DType::U16),
    ("UINT32", DType::U32),
    ("UINT64", DType::U64),
    ("INT8", DType::I8),
    ("INT16", DType::I16),
    ("INT32", DType::I32),
    ("INT64", DType::I64),
    ("FP16", DType::F16),
    ("FP32", DType::F32),
    ("FP64", DType::F64),
];

/// The protocol's datatypes Strata does not run.
const UNSUPPORTED: [&str; 2] = ["BYTES", "BF16"];

/// At most this many characters of a client's name or datatype are repeated in an error message.
const ECHO_CHARS: usize = 64;

/// At most this many dimensions of a client's shape are repeated in an error message.
const ECHO_DIMS: usize = 8;

/// A client's text as an error message repeats it: the first [`ECHO_CHARS`] characters, the rest elided.
/// A status message travels in a response header, which peers cap (gRPC's default is 8 KiB): a message
/// quoting a client's megabytes would reach it as a broken response, not as the refusal.
pub fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_CHARS) {
        None => text.into(),
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()).into(),
    }
}

/// A client's shape as an error message repeats it: `[1, 3, 224, 224]`, or its first [`ECHO_DIMS`]
/// dimensions and its rank (`[1, 1, 1, 1, 1, 1, 1, 1, …] (rank 5000)`).
pub fn echo_shape<T: std::fmt::Debug>(dims: &[T]) -> String {
    if dims.len() <= ECHO_DIMS {
        return format!("{dims:?}");
    }
    let head: Vec<String> = dims[..ECHO_DIMS].iter().map(|d| format!("{d:?}")).collect();
    format!("[{}, …] (rank {})", head.join(", "), dims.len())
}

/// Why a request's tensors were refused (all `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OipError {
    /// A datatype name the protocol does not define.
    #[error(
        "input \"{}\": datatype \"{}\" is not an Open Inference Protocol datatype (one of BOOL, UINT8, \
         UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES, BF16)",
        echo(.input),
        echo(.datatype)
    )]
    UnknownDatatype {
        /// The input.
        input: String,
        /// What the request said.
        datatype: String,
    },
    /// A datatype of the protocol's that Strata does not run.
    #[error(
        "input \"{}\": datatype {datatype} is not supported by Strata (it runs numeric and BOOL tensors; no \
         strings or bfloat16)",
        echo(.input)
    )]
    UnsupportedDatatype {
        /// The input.
        input: String,
        /// The datatype.
        datatype: String,
    },
    /// A negative dimension, or a shape whose size overflows.
    #[error(
        "input \"{}\": shape {} is not a tensor shape (negative or too large)",
        echo(.input),
        echo_shape(.shape)
    )]
    BadShape {
        /// The input.
        input: String,
        /// The declared shape.
        shape: Vec<i64>,
    },
    /// Two inputs of one name.
    #[error("input \"{}\" appears twice in the request", echo(.input))]
    DuplicateInput {
        /// The input.
        input: String,
    },
    /// `raw_input_contents` present, but not one per input.
    #[error(
        "the request has {inputs} inputs and {raw} raw_input_contents: raw contents, when used, come one per \
         input, in the order of `inputs`"
    )]
    RawCount {
        /// Inputs.
        inputs: usize,
        /// Raw contents.
        raw: usize,
    },
    /// Typed contents for an input of a request that uses raw contents.
    #[error(
        "input \"{}\" has typed contents, and the request has raw_input_contents: the protocol allows one or \
         the other, not both",
        echo(.input)
    )]
    MixedContents {
        /// The input.
        input: String,
    },
    /// Raw contents whose size is not the shape's.
    #[error(
        "input \"{}\": {datatype} {} takes {expected} bytes, its raw contents hold {got}",
        echo(.input),
        echo_shape(.shape)
    )]
    ByteCount {
        /// The input.
        input: String,
        /// Its datatype.
        datatype: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// Bytes the shape takes.
        expected: usize,
        /// Bytes sent.
        got: usize,
    },
    /// Typed contents whose count is not the shape's.
    #[error(
        "input \"{}\": {datatype} {} holds {expected} elements, its `{field}` holds {got}",
        echo(.input),
        echo_shape(.shape)
    )]
    ElementCount {
        /// The input.
        input: String,
        /// Its datatype.
        datatype: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// The contents field.
        field: &'static str,
        /// Elements the shape holds.
        expected: usize,
        /// Elements sent.
        got: usize,
    },
    /// Typed contents in a field that is not the datatype's.
    #[error(
        "input \"{}\": {datatype} contents belong in `{field}`, the request filled `{got}`",
        echo(.input)
    )]
    WrongContents {
        /// The input.
        input: String,
        /// Its datatype.
        datatype: &'static str,
        /// The field its contents belong in.
        field: &'static str,
        /// The field(s) the request filled.
        got: String,
    },
    /// FP16 in typed contents, which have no field for it.
    #[error(
        "input \"{}\": FP16 data must be sent as raw_input_contents (the protocol has no typed field for it)",
        echo(.input)
    )]
    TypedFp16 {
        /// The input.
        input: String,
    },
    /// An INT8/INT16/UINT8/UINT16 element outside its type's range.
    #[error(
        "input \"{}\": element {index} ({value}) is out of range for {datatype}",
        echo(.input)
    )]
    OutOfRange {
        /// The input.
        input: String,
        /// Its datatype.
        datatype: &'static str,
        /// The element's index.
        index: usize,
        /// Its value.
        value: i64,
    },
    /// A raw BOOL byte other than 0 or 1.
    #[error("input \"{}\": raw BOOL bytes must be 0 or 1", echo(.input))]
    NotBool {
        /// The input.
        input: String,
    },
}

impl OipError {
    /// The status answering it: `INVALID_ARGUMENT`, with the message.
    pub fn status(&self) -> Status {
        Status::invalid_argument(self.to_string())
    }
}

/// The protocol's name of a [`DType`] (`FP32`, `INT64`, ...).
pub fn datatype(dtype: DType) -> &'static str {
    DATATYPES
        .iter()
        .find(|(_, d)| *d == dtype)
        .map_or("UNKNOWN", |(name, _)| name)
}

/// The [`DType`] of a protocol datatype name, for input `input` (named in the error).
pub fn dtype(input: &str, datatype: &str) -> Result<DType, OipError> {
    if let Some((_, d)) = DATATYPES.iter().find(|(name, _)| *name == datatype) {
        return Ok(*d);
    }
    if UNSUPPORTED.contains(&datatype) {
        return Err(OipError::UnsupportedDatatype {
            input: input.to_string(),
            datatype: datatype.to_string(),
        });
    }
    Err(OipError::UnknownDatatype {
        input: input.to_string(),
        datatype: datatype.to_string(),
    })
}

/// A declared shape as dimensions, refusing negative ones and shapes whose byte size overflows.
pub fn shape(input: &str, dims: &[i64], dtype: DType) -> Result<Vec<usize>, OipError> {
    let bad = || OipError::BadShape {
        input: input.to_string(),
        shape: dims.to_vec(),
    };
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad()))
        .collect::<Result<Vec<usize>, _>>()?;
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(bad)?;
    Ok(shape)
}

/// Metadata of a tensor Strata knows the dtype and dimensions of (`None`: a dimension known only when run,
/// `-1` in the protocol).
pub fn tensor_metadata(name: &str, dtype: DType, dims: &[Option<u64>]) -> TensorMetadata {
    TensorMetadata {
        name: name.to_string(),
        datatype: datatype(dtype).to_string(),
        shape: dims
            .iter()
            .map(|d| d.and_then(|d| i64::try_from(d).ok()).unwrap_or(-1))
            .collect(),
    }
}

/// The decoded input tensors of a request, in its order: from `raw_input_contents` when the request has
/// them (one per input, and then no input may have typed contents), otherwise from each input's typed
/// `contents`. Names must be unique; each datatype must be one Strata runs; each content's size must be its
/// shape's.
pub fn inputs(request: &ModelInferRequest) -> Result<Vec<(String, TensorData)>, OipError> {
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(OipError::RawCount {
            inputs: request.inputs.len(),
            raw: raw.len(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.iter().enumerate() {
        if !seen.insert(input.name.as_str()) {
            return Err(OipError::DuplicateInput {
                input: input.name.clone(),
            });
        }
        let dtype = dtype(&input.name, &input.datatype)?;
        let dims = shape(&input.name, &input.shape, dtype)?;
        let tensor = match raw.get(i) {
            Some(bytes) => {
                if input
                    .contents
                    .as_ref()
                    .is_some_and(|c| !filled(c).is_empty())
                {
                    return Err(OipError::MixedContents {
                        input: input.name.clone(),
                    });
                }
                from_raw(&input.name, dtype, dims, bytes)?
            }
            None => from_typed(input, dtype, dims)?,
        };
        tensors.push((input.name.clone(), tensor));
    }
    Ok(tensors)
}

/// Elements of a shape (it passed [`shape`], so the product fits).
fn elements(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn from_raw(
    input: &str,
    dtype: DType,
    shape: Vec<usize>,
    bytes: &[u8],
) -> Result<TensorData, OipError> {
    let expected = elements(&shape) * dtype.size();
    if bytes.len() != expected {
        return Err(OipError::ByteCount {
            input: input.to_string(),
            datatype: datatype(dtype),
            shape,
            expected,
            got: bytes.len(),
        });
    }
    if dtype == DType::Bool && bytes.iter().any(|&b| b > 1) {
        return Err(OipError::NotBool {
            input: input.to_string(),
        });
    }
    Ok(TensorData {
        dtype,
        shape,
        data: bytes.to_vec(),
    })
}

/// The contents field a datatype's typed values belong in (`None`: FP16, which has none).
fn field_of(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::Bool => "bool_contents",
        DType::I8 | DType::I16 | DType::I32 => "int_contents",
        DType::I64 => "int64_contents",
        DType::U8 | DType::U16 | DType::U32 => "uint_contents",
        DType::U64 => "uint64_contents",
        DType::F32 => "fp32_contents",
        DType::F64 => "fp64_contents",
        DType::F16 => return None,
    })
}

/// The fields of `contents` that hold any element.
fn filled(contents: &InferTensorContents) -> Vec<&'static str> {
    let c = contents;
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(f, _)| f)
    .collect()
}

fn from_typed(
    input: &InferInputTensor,
    dtype: DType,
    shape: Vec<usize>,
) -> Result<TensorData, OipError> {
    let name = &input.name;
    let Some(field) = field_of(dtype) else {
        return Err(OipError::TypedFp16 {
            input: name.clone(),
        });
    };
    let empty = InferTensorContents::default();
    let c = input.contents.as_ref().unwrap_or(&empty);
    let others: Vec<&str> = filled(c).into_iter().filter(|f| *f != field).collect();
    if !others.is_empty() {
        return Err(OipError::WrongContents {
            input: name.clone(),
            datatype: datatype(dtype),
            field,
            got: others.join(", "),
        });
    }
    let got = match dtype {
        DType::Bool => c.bool_contents.len(),
        DType::I8 | DType::I16 | DType::I32 => c.int_contents.len(),
        DType::I64 => c.int64_contents.len(),
        DType::U8 | DType::U16 | DType::U32 => c.uint_contents.len(),
        DType::U64 => c.uint64_contents.len(),
        DType::F32 => c.fp32_contents.len(),
        DType::F64 => c.fp64_contents.len(),
        DType::F16 => 0,
    };
    let expected = elements(&shape);
    if got != expected {
        return Err(OipError::ElementCount {
            input: name.clone(),
            datatype: datatype(dtype),
            shape,
            field,
            expected,
            got,
        });
    }
    let range = |index: usize, value: i64| OipError::OutOfRange {
        input: name.clone(),
        datatype: datatype(dtype),
        index,
        value,
    };
    let mut data = Vec::with_capacity(expected * dtype.size());
    match dtype {
        DType::Bool => data.extend(c.bool_contents.iter().map(|&b| u8::from(b))),
        DType::I8 => {
            for (i, &v) in c.int_contents.iter().enumerate() {
                let v = i8::try_from(v).map_err(|_| range(i, v.into()))?;
                data.extend(v.to_le_bytes());
            }
        }
        DType::I16 => {
            for (i, &v) in c.int_contents.iter().enumerate() {
                let v = i16::try_from(v).map_err(|_| range(i, v.into()))?;
                data.extend(v.to_le_bytes());
            }
        }
        DType::I32 => data.extend(c.int_contents.iter().flat_map(|v| v.to_le_bytes())),
        DType::I64 => data.extend(c.int64_contents.iter().flat_map(|v| v.to_le_bytes())),
        DType::U8 => {
            for (i, &v) in c.uint_contents.iter().enumerate() {
                let v = u8::try_from(v).map_err(|_| range(i, v.into()))?;
                data.push(v);
            }
        }
        DType::U16 => {
            for (i, &v) in c.uint_contents.iter().enumerate() {
                let v = u16::try_from(v).map_err(|_| range(i, v.into()))?;
                data.extend(v.to_le_bytes());
            }
        }
        DType::U32 => data.extend(c.uint_contents.iter().flat_map(|v| v.to_le_bytes())),
        DType::U64 => data.extend(c.uint64_contents.iter().flat_map(|v| v.to_le_bytes())),
        DType::F32 => data.extend(c.fp32_contents.iter().flat_map(|v| v.to_le_bytes())),
        DType::F64 => data.extend(c.fp64_contents.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => {}
    }
    Ok(TensorData { dtype, shape, data })
}

/// An output tensor of a response, and its raw contents when `raw` (or when it is FP16, which has no typed
/// field: a caller answering typed must then answer all outputs raw, see [`needs_raw`]).
pub fn output(name: &str, tensor: TensorData, raw: bool) -> (InferOutputTensor, Option<Vec<u8>>) {
    let mut out = InferOutputTensor {
        name: name.to_string(),
        datatype: datatype(tensor.dtype).to_string(),
        shape: tensor
            .shape
            .iter()
            .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect(),
        ..Default::default()
    };
    if raw || tensor.dtype == DType::F16 {
        return (out, Some(tensor.data));
    }
    out.contents = Some(typed_contents(&tensor));
    (out, None)
}

/// Whether a response with these output dtypes must use raw contents (FP16 has no typed field).
pub fn needs_raw<'a>(dtypes: impl IntoIterator<Item = &'a DType>) -> bool {
    dtypes.into_iter().any(|d| *d == DType::F16)
}

/// A tensor's elements in the typed contents field of its dtype (empty for FP16).
fn typed_contents(t: &TensorData) -> InferTensorContents {
    fn le<const N: usize, T>(data: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        data.chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                f(b)
            })
            .collect()
    }
    let d = &t.data;
    let mut c = InferTensorContents::default();
    match t.dtype {
        DType::Bool => c.bool_contents = d.iter().map(|&b| b != 0).collect(),
        DType::I8 => {
            c.int_contents = d
                .iter()
                .map(|&b| i32::from(i8::from_le_bytes([b])))
                .collect()
        }
        DType::I16 => c.int_contents = le(d, |b| i32::from(i16::from_le_bytes(b))),
        DType::I32 => c.int_contents = le(d, i32::from_le_bytes),
        DType::I64 => c.int64_contents = le(d, i64::from_le_bytes),
        DType::U8 => c.uint_contents = d.iter().map(|&b| u32::from(b)).collect(),
        DType::U16 => c.uint_contents = le(d, |b| u32::from(u16::from_le_bytes(b))),
        DType::U32 => c.uint_contents = le(d, u32::from_le_bytes),
        DType::U64 => c.uint64_contents = le(d, u64::from_le_bytes),
        DType::F32 => c.fp32_contents = le(d, f32::from_le_bytes),
        DType::F64 => c.fp64_contents = le(d, f64::from_le_bytes),
        DType::F16 => {}
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        shape: &[i64],
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            contents,
            ..Default::default()
        }
    }

    #[test]
    fn every_supported_datatype_round_trips_through_typed_and_raw_contents() {
        for (name, dtype) in DATATYPES {
            assert_eq!(super::dtype("x", name), Ok(dtype));
            assert_eq!(datatype(dtype), name);
            if dtype == DType::F16 {
                continue;
            }
            let t = TensorData {
                dtype,
                shape: vec![2, 1],
                data: vec![1u8; 2 * dtype.size()],
            };
            let (typed, raw) = output("x", t.clone(), false);
            assert!(raw.is_none(), "{name}");
            let request = ModelInferRequest {
                inputs: vec![InferInputTensor {
                    name: "x".into(),
                    datatype: typed.datatype.clone(),
                    shape: typed.shape.clone(),
                    contents: typed.contents.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert_eq!(
                inputs(&request),
                Ok(vec![("x".to_string(), t.clone())]),
                "{name}"
            );
            let (meta, raw) = output("x", t.clone(), true);
            let request = ModelInferRequest {
                inputs: vec![input("x", &meta.datatype, &meta.shape, None)],
                raw_input_contents: vec![raw.expect("raw")],
                ..Default::default()
            };
            assert_eq!(inputs(&request), Ok(vec![("x".to_string(), t)]), "{name}");
        }
    }

    #[test]
    fn malformed_tensors_are_refused_with_what_was_wrong() {
        let fp32 = |n: usize| {
            Some(InferTensorContents {
                fp32_contents: vec![0.5; n],
                ..Default::default()
            })
        };
        let cases: Vec<(ModelInferRequest, &str)> = vec![
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FLOAT", &[1], fp32(1))],
                    ..Default::default()
                },
                "not an Open Inference Protocol datatype",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "BYTES", &[1], None)],
                    ..Default::default()
                },
                "not supported by Strata",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[-1, 2], fp32(2))],
                    ..Default::default()
                },
                "not a tensor shape",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[i64::MAX, i64::MAX], fp32(2))],
                    ..Default::default()
                },
                "not a tensor shape",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[2, 2], fp32(3))],
                    ..Default::default()
                },
                "FP32 [2, 2] holds 4 elements, its `fp32_contents` holds 3",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "INT64", &[1], fp32(1))],
                    ..Default::default()
                },
                "INT64 contents belong in `int64_contents`, the request filled `fp32_contents`",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[2], None)],
                    raw_input_contents: vec![vec![0; 7]],
                    ..Default::default()
                },
                "FP32 [2] takes 8 bytes, its raw contents hold 7",
            ),
            (
                ModelInferRequest {
                    inputs: vec![
                        input("x", "FP32", &[1], None),
                        input("y", "FP32", &[1], None),
                    ],
                    raw_input_contents: vec![vec![0; 4]],
                    ..Default::default()
                },
                "2 inputs and 1 raw_input_contents",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[1], fp32(1))],
                    raw_input_contents: vec![vec![0; 4]],
                    ..Default::default()
                },
                "not both",
            ),
            (
                ModelInferRequest {
                    inputs: vec![
                        input("x", "FP32", &[1], fp32(1)),
                        input("x", "FP32", &[1], fp32(1)),
                    ],
                    ..Default::default()
                },
                "appears twice",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input(
                        "x",
                        "UINT8",
                        &[1],
                        Some(InferTensorContents {
                            uint_contents: vec![256],
                            ..Default::default()
                        }),
                    )],
                    ..Default::default()
                },
                "element 0 (256) is out of range for UINT8",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP16", &[1], None)],
                    ..Default::default()
                },
                "FP16 data must be sent as raw_input_contents",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "BOOL", &[1], None)],
                    raw_input_contents: vec![vec![2]],
                    ..Default::default()
                },
                "raw BOOL bytes must be 0 or 1",
            ),
        ];
        for (request, needle) in cases {
            let e = inputs(&request).expect_err(needle);
            assert_eq!(e.status().code(), tonic::Code::InvalidArgument);
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn refusals_repeat_only_a_bounded_part_of_what_the_client_sent() {
        // A name of a megabyte, in multi-byte characters; shapes of 100,000 dimensions.
        let name = "é".repeat(1 << 19);
        let mut huge = vec![1i64; 100_000];
        huge[99_999] = -1;
        let requests = [
            ModelInferRequest {
                inputs: vec![input(&name, "FP32", &huge, None)],
                ..Default::default()
            },
            ModelInferRequest {
                inputs: vec![input(&name, &name, &[1], None)],
                ..Default::default()
            },
            ModelInferRequest {
                inputs: vec![input(&name, "FP32", &vec![1; 100_000], None)],
                raw_input_contents: vec![vec![0; 3]],
                ..Default::default()
            },
            ModelInferRequest {
                inputs: vec![input(&name, "FP32", &vec![1; 100_000], None)],
                ..Default::default()
            },
        ];
        for request in requests {
            let status = inputs(&request).expect_err("refused").status();
            let message = status.message();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(message.len() < 1024, "{} bytes", message.len());
            assert!(message.contains(&"é".repeat(ECHO_CHARS)), "{message}");
            assert!(message.contains("… (1048576 bytes)"), "{message}");
        }
        let e = inputs(&ModelInferRequest {
            inputs: vec![input("x", "FP32", &huge, None)],
            ..Default::default()
        })
        .expect_err("negative");
        assert!(
            e.to_string()
                .contains("shape [1, 1, 1, 1, 1, 1, 1, 1, …] (rank 100000) is not"),
            "{e}"
        );
        // What fits is repeated whole.
        assert_eq!(echo("x"), "x");
        assert_eq!(echo_shape(&[1i64, -3]), "[1, -3]");
    }

    #[test]
    fn fp16_outputs_are_answered_raw_and_metadata_marks_unknown_dimensions() {
        let t = TensorData {
            dtype: DType::F16,
            shape: vec![1],
            data: vec![0, 60],
        };
        assert!(needs_raw([&t.dtype]));
        let (out, raw) = output("h", t, false);
        assert_eq!((out.datatype.as_str(), raw), ("FP16", Some(vec![0, 60])));
        let meta = tensor_metadata("x", DType::I64, &[Some(1), None]);
        assert_eq!((meta.datatype.as_str(), meta.shape), ("INT64", vec![1, -1]));
    }
}
