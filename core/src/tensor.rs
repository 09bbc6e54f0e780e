//! A backend-neutral dense tensor: dtype, shape and little-endian bytes. This is what crosses crate boundaries
//! and the wire (`strata_proto::framing`), and what every backend takes and returns.

/// Element types Strata moves between stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 16-bit float.
    F16,
    /// 8-bit signed integer.
    I8,
    /// 16-bit signed integer.
    I16,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 8-bit unsigned integer.
    U8,
    /// 16-bit unsigned integer.
    U16,
    /// 32-bit unsigned integer.
    U32,
    /// 64-bit unsigned integer.
    U64,
    /// Boolean, one byte (0 or 1).
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// NumPy-style name (`float32`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
        }
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
        }
    }

    /// From an ONNX code.
    pub fn from_onnx_code(code: i32) -> Option<DType> {
        [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::I8,
            DType::I16,
            DType::I32,
            DType::I64,
            DType::U8,
            DType::U16,
            DType::U32,
            DType::U64,
            DType::Bool,
        ]
        .into_iter()
        .find(|d| d.onnx_code() == code)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes do not make a tensor, or two tensors cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The byte count does not match dtype × shape.
    #[error("{dtype} tensor of shape {shape:?} needs {expected} bytes, got {got}")]
    ByteCount {
        /// Element type.
        dtype: DType,
        /// Dimensions.
        shape: Vec<usize>,
        /// Bytes the shape needs (saturated on overflow).
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A bool tensor holds a byte other than 0 or 1.
    #[error("bool tensor holds bytes other than 0 and 1")]
    NotBool,
    /// Two tensors of different dtypes or shapes.
    #[error("{dtype} {shape:?} vs reference {ref_dtype} {ref_shape:?}")]
    Incomparable {
        /// This tensor's dtype.
        dtype: DType,
        /// This tensor's shape.
        shape: Vec<usize>,
        /// The reference's dtype.
        ref_dtype: DType,
        /// The reference's shape.
        ref_shape: Vec<usize>,
    },
}

/// A dense tensor with little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.product() * dtype.size()` bytes, little-endian, C order.
    pub data: Vec<u8>,
}

impl TensorData {
    /// Builds a tensor, checking that the byte count matches the shape.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<TensorData, TensorError> {
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX);
        if data.len() != expected {
            return Err(TensorError::ByteCount {
                dtype,
                shape,
                expected,
                got: data.len(),
            });
        }
        if dtype == DType::Bool && data.iter().any(|&b| b > 1) {
            return Err(TensorError::NotBool);
        }
        Ok(TensorData { dtype, shape, data })
    }

    /// A float32 tensor.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<TensorData, TensorError> {
        TensorData::new(
            DType::F32,
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element as f64 (for comparisons and summaries; f16 is decoded exactly).
    pub fn to_f64(&self) -> Vec<f64> {
        let size = self.dtype.size();
        self.data
            .chunks_exact(size)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..size].copy_from_slice(c);
                match self.dtype {
                    DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                    DType::F64 => f64::from_le_bytes(b),
                    DType::F16 => f16_to_f64(u16::from_le_bytes([b[0], b[1]])),
                    DType::I8 => b[0] as i8 as f64,
                    DType::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
                    DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                    DType::I64 => i64::from_le_bytes(b) as f64,
                    DType::U8 | DType::Bool => b[0] as f64,
                    DType::U16 => u16::from_le_bytes([b[0], b[1]]) as f64,
                    DType::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                    DType::U64 => u64::from_le_bytes(b) as f64,
                }
            })
            .collect()
    }

    /// Largest `|a − b| / (1 + |b|)` over elements, or an error when shapes or dtypes differ.
    pub fn max_relative_diff(&self, reference: &TensorData) -> Result<f64, TensorError> {
        if self.dtype != reference.dtype || self.shape != reference.shape {
            return Err(TensorError::Incomparable {
                dtype: self.dtype,
                shape: self.shape.clone(),
                ref_dtype: reference.dtype,
                ref_shape: reference.shape.clone(),
            });
        }
        let mut worst = 0f64;
        for (a, b) in self.to_f64().into_iter().zip(reference.to_f64()) {
            let d = if a.is_nan() && b.is_nan() {
                0.0
            } else {
                (a - b).abs() / (1.0 + b.abs())
            };
            if d.is_nan() {
                return Ok(f64::INFINITY);
            }
            worst = worst.max(d);
        }
        Ok(worst)
    }
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            }
        }
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_and_bools_are_checked() {
        assert!(TensorData::new(DType::F32, vec![2, 2], vec![0; 16]).is_ok());
        assert_eq!(
            TensorData::new(DType::F32, vec![2, 2], vec![0; 15]),
            Err(TensorError::ByteCount {
                dtype: DType::F32,
                shape: vec![2, 2],
                expected: 16,
                got: 15
            })
        );
        assert!(matches!(
            TensorData::new(DType::U8, vec![usize::MAX, 2], vec![]),
            Err(TensorError::ByteCount {
                expected: usize::MAX,
                ..
            })
        ));
        assert_eq!(
            TensorData::new(DType::Bool, vec![2], vec![0, 2]),
            Err(TensorError::NotBool)
        );
    }

    #[test]
    fn onnx_codes_round_trip() {
        for code in [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13] {
            let d = DType::from_onnx_code(code).expect("a carried dtype");
            assert_eq!(d.onnx_code(), code);
        }
        assert_eq!(DType::from_onnx_code(8), None, "strings are not carried");
    }

    #[test]
    fn relative_diff_compares_like_with_like() {
        let a = TensorData::from_f32(vec![2], &[1.0, 2.0]).expect("tensor");
        let b = TensorData::from_f32(vec![2], &[1.0, 2.5]).expect("tensor");
        assert!((a.max_relative_diff(&b).expect("comparable") - 0.5 / 3.5).abs() < 1e-12);
        let c = TensorData::from_f32(vec![1, 2], &[1.0, 2.0]).expect("tensor");
        assert!(matches!(
            a.max_relative_diff(&c),
            Err(TensorError::Incomparable { .. })
        ));
    }
}
