//! Reading and writing NumPy `.npy` files (format versions 1–3, little-endian, C order).

use strata_core::{DType, TensorData};

/// Why an `.npy` file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// Not an npy file.
    #[error("not a .npy file (bad magic bytes)")]
    Magic,
    /// Header problems.
    #[error("bad .npy header: {0}")]
    Header(String),
    /// An element type we do not carry.
    #[error(
        "unsupported .npy dtype \"{0}\" (supported: f2/f4/f8, i1/i2/i4/i8, u1/u2/u4/u8, b1, little-endian)"
    )]
    DType(String),
    /// Fortran order.
    #[error(".npy array is in Fortran order; save it C-contiguous (np.ascontiguousarray)")]
    FortranOrder,
    /// The bytes do not make a tensor of the header's dtype (a bool array holding 2, say).
    #[error(".npy data is not a valid tensor: {0}")]
    Tensor(#[from] strata_core::TensorError),
    /// Size mismatch.
    #[error(".npy data is {got} bytes but the header promises {expected}")]
    Truncated {
        /// Bytes expected.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn descr(d: DType) -> &'static str {
    match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
    }
}

fn parse_descr(s: &str) -> Option<DType> {
    // By characters, not bytes: a header is text from outside, and its first character may be multi-byte
    // (found by fuzzing: `split_at(1)` panicked on one).
    let mut chars = s.chars();
    if !matches!(chars.next()?, '<' | '|' | '=') {
        return None;
    }
    let code = chars.as_str();
    Some(match code {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        _ => return None,
    })
}

/// Encodes a tensor as `.npy` (version 1.0).
pub fn encode(t: &TensorData) -> Vec<u8> {
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr(t.dtype)
    );
    // Pad so that the data starts on a 64-byte boundary; the header ends with a newline.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.data);
    out
}

/// Decodes `.npy` bytes.
pub fn decode(bytes: &[u8]) -> Result<TensorData, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(NpyError::Magic);
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(NpyError::Header("truncated".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(NpyError::Header(format!("unknown format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| NpyError::Header("truncated".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| NpyError::Header("not UTF-8".into()))?;
    let descr_text =
        dict_value(header, "descr").ok_or_else(|| NpyError::Header("no 'descr'".into()))?;
    let descr_text = descr_text.trim_matches(|c| c == '\'' || c == '"');
    let dtype = parse_descr(descr_text).ok_or_else(|| NpyError::DType(descr_text.to_string()))?;
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| NpyError::Header("no 'fortran_order'".into()))?;
    if fortran.starts_with("True") {
        return Err(NpyError::FortranOrder);
    }
    let shape_text =
        dict_value(header, "shape").ok_or_else(|| NpyError::Header("no 'shape'".into()))?;
    let shape = shape_text
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| NpyError::Header(format!("bad shape {shape_text}")))?;
    let data = &bytes[start + header_len..];
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::Header("shape overflows".into()))?;
    if data.len() != expected {
        return Err(NpyError::Truncated {
            expected,
            got: data.len(),
        });
    }
    Ok(TensorData::new(dtype, shape, data.to_vec())?)
}

/// The raw text of a value in the header's Python dict literal (up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[pos + key.len() + 2..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    Some(rest.trim())
}

/// A tensor name as a file name (`<stem>.npy`): characters other than letters, digits, `-`, `_` and `.`
/// become `_`, and leading dots go (`gpu_0/softmax_1` → `gpu_0_softmax_1`).
pub fn file_stem(tensor: &str) -> String {
    tensor
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_dtype_shape_and_bytes() {
        for (dtype, shape) in [
            (DType::F32, vec![2, 3]),
            (DType::I64, vec![4]),
            (DType::Bool, vec![]),
            (DType::U8, vec![1, 1, 2]),
        ] {
            let n: usize = shape.iter().product();
            let data: Vec<u8> = (0..n * dtype.size())
                .map(|i| {
                    if dtype == DType::Bool {
                        (i % 2) as u8
                    } else {
                        i as u8
                    }
                })
                .collect();
            let t = TensorData::new(dtype, shape.clone(), data).expect("valid tensor");
            let bytes = encode(&t);
            assert_eq!(
                (bytes.len() - t.data.len()) % 64,
                0,
                "data is 64-byte aligned"
            );
            assert_eq!(decode(&bytes).expect("decodes"), t);
        }
    }

    #[test]
    fn reads_numpy_written_header() {
        let mut bytes = MAGIC.to_vec();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }          \n";
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1f32.to_le_bytes());
        bytes.extend_from_slice(&2f32.to_le_bytes());
        let t = decode(&bytes).expect("decodes");
        assert_eq!(t.shape, vec![1, 2]);
        assert_eq!(t.to_f64(), vec![1.0, 2.0]);
    }

    #[test]
    fn rejects_bad_files_with_reasons() {
        assert!(matches!(decode(b"hello world"), Err(NpyError::Magic)));
        let t = TensorData::from_f32(vec![4], &[1.0, 2.0, 3.0, 4.0]).expect("valid");
        let bytes = encode(&t);
        assert!(matches!(
            decode(&bytes[..bytes.len() - 3]),
            Err(NpyError::Truncated { .. })
        ));
        let mut big_endian = bytes.clone();
        let at = big_endian
            .windows(3)
            .position(|w| w == b"<f4")
            .expect("descr in header");
        big_endian[at] = b'>';
        assert!(matches!(decode(&big_endian), Err(NpyError::DType(_))));
    }

    #[test]
    fn a_descr_starting_with_a_multibyte_character_is_refused_not_a_panic() {
        // Found by `cargo fuzz` (fuzz/regressions/npy/): slicing the descr by bytes panicked.
        let header = "{'descr': '\u{4c3}i2', 'fortran_order': False, 'shape': (1,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0, 0]);
        assert!(decode(&bytes).is_err());
    }
}
