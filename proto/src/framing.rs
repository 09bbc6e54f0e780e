//! Tensors on the wire: a [`TensorChunk`] with a header starts a tensor, and its data plus that of the
//! header-less chunks after it make up the tensor's little-endian bytes. Splitting shares one buffer (no copy);
//! reassembly checks dtype, shape, byte counts and a total cap, so a malformed stream is an error, never a panic.

use bytes::Bytes;
use strata_core::{DType, TensorData};

use crate::CHUNK_BYTES;
use crate::v1::{DataType, TensorChunk, TensorHeader};

/// Why a tensor stream was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// Data arrived before any tensor header.
    #[error("tensor data arrived before a tensor header")]
    DataWithoutHeader,
    /// A header named no tensor.
    #[error("a tensor header has an empty name")]
    EmptyName,
    /// The dtype code is not one Strata carries.
    #[error("tensor \"{name}\": unsupported dtype code {code}")]
    UnknownDType {
        /// Tensor.
        name: String,
        /// Its code.
        code: i32,
    },
    /// More data than the shape allows.
    #[error("tensor \"{name}\": got more than the {expected} bytes its dtype and shape need")]
    TooMuchData {
        /// Tensor.
        name: String,
        /// Expected bytes.
        expected: u64,
    },
    /// A tensor ended before all its bytes arrived.
    #[error("tensor \"{name}\": stream ended after {got} of {expected} bytes")]
    Incomplete {
        /// Tensor.
        name: String,
        /// Bytes received.
        got: u64,
        /// Bytes needed.
        expected: u64,
    },
    /// The bytes do not make a tensor of the header's dtype (a bool tensor holding 2, say).
    #[error("tensor \"{name}\": {source}")]
    Malformed {
        /// Tensor.
        name: String,
        /// Why.
        source: strata_core::TensorError,
    },
    /// The same tensor twice.
    #[error("tensor \"{0}\" was sent twice")]
    Duplicate(String),
    /// The request is over its byte cap.
    #[error(
        "tensor \"{name}\" would bring the request to {total} bytes, over the limit of {limit}"
    )]
    TooLarge {
        /// Tensor.
        name: String,
        /// Total bytes including it.
        total: u64,
        /// The cap.
        limit: u64,
    },
}

/// Splits a tensor into chunks of at most [`CHUNK_BYTES`] data, sharing its buffer.
pub fn tensor_chunks(name: &str, tensor: TensorData) -> Vec<TensorChunk> {
    let header = TensorHeader {
        name: name.to_string(),
        dtype: DataType::from(tensor.dtype) as i32,
        shape: tensor.shape.iter().map(|&d| d as u64).collect(),
    };
    let data = Bytes::from(tensor.data);
    if data.len() <= CHUNK_BYTES {
        return vec![TensorChunk {
            header: Some(header),
            data,
        }];
    }
    let mut chunks = Vec::with_capacity(data.len().div_ceil(CHUNK_BYTES));
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + CHUNK_BYTES).min(data.len());
        chunks.push(TensorChunk {
            header: (offset == 0).then(|| header.clone()),
            data: data.slice(offset..end),
        });
        offset = end;
    }
    chunks
}

struct Partial {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    expected: u64,
    parts: Vec<Bytes>,
    got: u64,
}

/// Reassembles tensors from chunks, in order.
pub struct TensorAssembler {
    current: Option<Partial>,
    done: Vec<(String, TensorData)>,
    total: u64,
    limit: u64,
}

impl TensorAssembler {
    /// An assembler that refuses more than `limit` tensor bytes in all.
    pub fn new(limit: u64) -> TensorAssembler {
        TensorAssembler {
            current: None,
            done: Vec::new(),
            total: 0,
            limit,
        }
    }

    /// Takes the next chunk.
    pub fn push(&mut self, chunk: TensorChunk) -> Result<(), FrameError> {
        if let Some(header) = chunk.header {
            self.finish_current()?;
            if header.name.is_empty() {
                return Err(FrameError::EmptyName);
            }
            if self.done.iter().any(|(n, _)| *n == header.name) {
                return Err(FrameError::Duplicate(header.name));
            }
            let Ok(dt) = crate::convert::dtype(header.dtype, "tensor.header.dtype") else {
                return Err(FrameError::UnknownDType {
                    name: header.name,
                    code: header.dtype,
                });
            };
            let elements = header
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let expected = elements.and_then(|e| e.checked_mul(dt.size() as u64));
            let total = expected.and_then(|e| e.checked_add(self.total));
            let expected = match (expected, total) {
                (Some(e), Some(t)) if t <= self.limit => e,
                _ => {
                    return Err(FrameError::TooLarge {
                        name: header.name,
                        total: total.unwrap_or(u64::MAX),
                        limit: self.limit,
                    });
                }
            };
            self.total += expected;
            self.current = Some(Partial {
                name: header.name,
                dtype: dt,
                shape: header.shape.iter().map(|&d| d as usize).collect(),
                expected,
                parts: Vec::new(),
                got: 0,
            });
        }
        let Some(current) = self.current.as_mut() else {
            return if chunk.data.is_empty() {
                Ok(())
            } else {
                Err(FrameError::DataWithoutHeader)
            };
        };
        current.got += chunk.data.len() as u64;
        if current.got > current.expected {
            return Err(FrameError::TooMuchData {
                name: current.name.clone(),
                expected: current.expected,
            });
        }
        if !chunk.data.is_empty() {
            current.parts.push(chunk.data);
        }
        Ok(())
    }

    fn finish_current(&mut self) -> Result<(), FrameError> {
        let Some(p) = self.current.take() else {
            return Ok(());
        };
        if p.got != p.expected {
            return Err(FrameError::Incomplete {
                name: p.name,
                got: p.got,
                expected: p.expected,
            });
        }
        let data = if p.parts.len() == 1 {
            Vec::from(p.parts.into_iter().next().unwrap_or_default())
        } else {
            let mut data = Vec::with_capacity(p.expected as usize);
            for part in p.parts {
                data.extend_from_slice(&part);
            }
            data
        };
        let tensor =
            TensorData::new(p.dtype, p.shape, data).map_err(|source| FrameError::Malformed {
                name: p.name.clone(),
                source,
            })?;
        self.done.push((p.name, tensor));
        Ok(())
    }

    /// Ends the stream: every tensor must be complete.
    pub fn finish(mut self) -> Result<Vec<(String, TensorData)>, FrameError> {
        self.finish_current()?;
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> TensorData {
        let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
        TensorData::from_f32(vec![n], &values).expect("valid tensor")
    }

    #[test]
    fn large_tensor_round_trips_through_many_chunks() {
        let t = ramp(CHUNK_BYTES / 4 * 3 + 7);
        let chunks = tensor_chunks("x", t.clone());
        assert_eq!(chunks.len(), 4);
        assert!(chunks[1..].iter().all(|c| c.header.is_none()));
        let mut a = TensorAssembler::new(u64::MAX);
        for c in chunks {
            a.push(c).expect("valid chunk");
        }
        let out = a.finish().expect("complete");
        assert_eq!(out, vec![("x".to_string(), t)]);
    }

    #[test]
    fn truncated_tensor_is_an_error_naming_it() {
        let mut chunks = tensor_chunks("x", ramp(CHUNK_BYTES / 2));
        chunks.truncate(1);
        chunks[0].data = chunks[0].data.slice(0..100);
        let mut a = TensorAssembler::new(u64::MAX);
        a.push(chunks.remove(0)).expect("header accepted");
        let err = a.finish().expect_err("incomplete");
        assert!(err.to_string().contains("\"x\""), "{err}");
    }

    #[test]
    fn byte_cap_and_shape_overflow_are_refused() {
        let mut a = TensorAssembler::new(1000);
        let chunk = tensor_chunks("big", ramp(1000)).remove(0);
        assert!(matches!(a.push(chunk), Err(FrameError::TooLarge { .. })));
        let mut a = TensorAssembler::new(u64::MAX);
        let chunk = TensorChunk {
            header: Some(TensorHeader {
                name: "huge".into(),
                dtype: DataType::Float32 as i32,
                shape: vec![u64::MAX, 4],
            }),
            data: Bytes::new(),
        };
        assert!(matches!(a.push(chunk), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn data_without_header_and_duplicates_are_refused() {
        let mut a = TensorAssembler::new(u64::MAX);
        let orphan = TensorChunk {
            header: None,
            data: Bytes::from_static(b"abcd"),
        };
        assert_eq!(a.push(orphan), Err(FrameError::DataWithoutHeader));
        let mut a = TensorAssembler::new(u64::MAX);
        a.push(tensor_chunks("x", ramp(2)).remove(0))
            .expect("first");
        let again = a.push(tensor_chunks("x", ramp(2)).remove(0));
        assert_eq!(again, Err(FrameError::Duplicate("x".into())));
    }
}
