//! The ONNX protobuf types, generated from the vendored `proto/onnx.proto` (Apache-2.0, from the onnx release),
//! plus small helpers over them. Tract reads ONNX but cannot write it; these types let us do graph surgery and
//! write valid stage files.

#![allow(missing_docs, clippy::all)]

/// Generated prost types for package `onnx`.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// ONNX `TensorProto.DataType` codes we name in messages and files.
pub fn dtype_name(code: i32) -> &'static str {
    match code {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        _ => "unknown",
    }
}

/// Size in bytes of one element of an ONNX data type (strings and unknown types count as 8).
pub fn dtype_size(code: i32) -> usize {
    match code {
        2 | 3 | 9 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        _ => 8,
    }
}

/// Builds a `ValueInfoProto` declaring a dense tensor of the given ONNX dtype and concrete shape.
pub fn tensor_value_info(name: &str, elem_type: i32, shape: &[usize]) -> ValueInfoProto {
    use proto::{tensor_shape_proto::Dimension, tensor_shape_proto::dimension::Value as Dim};
    let dims = shape
        .iter()
        .map(|&d| Dimension {
            value: Some(Dim::DimValue(d as i64)),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(elem_type),
                    shape: Some(TensorShapeProto { dim: dims }),
                },
            )),
            denotation: None,
        }),
        doc_string: None,
        metadata_props: vec![],
    }
}
