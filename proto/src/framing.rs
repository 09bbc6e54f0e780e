//! Tensors on the wire: a [`TensorChunk`] with a header starts a tensor, and its data plus that of the
//! header-less chunks after it make up the tensor's little-endian bytes. Splitting shares one buffer (no copy);
//! reassembly checks dtype, shape and byte counts, and bounds what one stream may hold ([`FrameLimits`]: bytes
//! in all, bytes per tensor, chunks) on each tensor's header, before its data is accepted, so a malformed or
//! oversized stream is an error, never a panic or a buffer grown on a peer's word.

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
    /// One tensor is over the per-tensor cap.
    #[error(
        "tensor \"{name}\" declares {bytes} bytes (its dtype and shape), over the limit of {limit} per tensor"
    )]
    TensorTooLarge {
        /// Tensor.
        name: String,
        /// Its declared bytes (`u64::MAX` when the shape overflows).
        bytes: u64,
        /// The cap.
        limit: u64,
    },
    /// The stream is split into more chunks than allowed.
    #[error("the stream has more than {limit} tensor chunks (tensor \"{name}\" went past it)")]
    TooManyChunks {
        /// The tensor being received when the limit was passed ("" before any header).
        name: String,
        /// The cap.
        limit: u64,
    },
}

impl FrameError {
    /// Whether the stream broke a size limit (the answer is `RESOURCE_EXHAUSTED`), rather than being
    /// malformed (`INVALID_ARGUMENT`).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. }
                | FrameError::TensorTooLarge { .. }
                | FrameError::TooManyChunks { .. }
        )
    }
}

/// What one tensor stream may hold. Each bound is checked when a tensor's header arrives (or a chunk is
/// counted), before any of its data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Tensor bytes of the whole stream, all tensors together.
    pub max_total_bytes: u64,
    /// Bytes of any one tensor.
    pub max_tensor_bytes: u64,
    /// Chunks in the whole stream, headers and empty chunks included: a flood of tiny chunks costs memory
    /// and time out of all proportion to its bytes.
    pub max_chunks: u64,
}

impl FrameLimits {
    /// Only a cap on the total bytes (tensors and chunks otherwise unbounded).
    pub fn total(limit: u64) -> FrameLimits {
        FrameLimits {
            max_total_bytes: limit,
            max_tensor_bytes: u64::MAX,
            max_chunks: u64::MAX,
        }
    }
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
    chunks: u64,
    limits: FrameLimits,
}

impl TensorAssembler {
    /// An assembler that refuses more than `limit` tensor bytes in all.
    pub fn new(limit: u64) -> TensorAssembler {
        TensorAssembler::with_limits(FrameLimits::total(limit))
    }

    /// An assembler bounded by `limits`.
    pub fn with_limits(limits: FrameLimits) -> TensorAssembler {
        TensorAssembler {
            current: None,
            done: Vec::new(),
            total: 0,
            chunks: 0,
            limits,
        }
    }

    /// Takes the next chunk.
    pub fn push(&mut self, chunk: TensorChunk) -> Result<(), FrameError> {
        self.chunks += 1;
        if self.chunks > self.limits.max_chunks {
            let name = match (&chunk.header, &self.current) {
                (Some(h), _) => h.name.clone(),
                (None, Some(p)) => p.name.clone(),
                (None, None) => String::new(),
            };
            return Err(FrameError::TooManyChunks {
                name,
                limit: self.limits.max_chunks,
            });
        }
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
            let expected = match expected {
                Some(e) if e <= self.limits.max_tensor_bytes => e,
                _ => {
                    return Err(FrameError::TensorTooLarge {
                        name: header.name,
                        bytes: expected.unwrap_or(u64::MAX),
                        limit: self.limits.max_tensor_bytes,
                    });
                }
            };
            match self.total.checked_add(expected) {
                Some(t) if t <= self.limits.max_total_bytes => {}
                total => {
                    return Err(FrameError::TooLarge {
                        name: header.name,
                        total: total.unwrap_or(u64::MAX),
                        limit: self.limits.max_total_bytes,
                    });
                }
            }
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
        assert!(matches!(
            a.push(chunk),
            Err(FrameError::TensorTooLarge {
                bytes: u64::MAX,
                ..
            })
        ));
    }

    #[test]
    fn per_tensor_and_chunk_limits_are_checked_before_data_is_kept() {
        let limits = FrameLimits {
            max_total_bytes: 1 << 20,
            max_tensor_bytes: 64,
            max_chunks: 3,
        };
        // A header alone, claiming a huge tensor: refused on the header, naming the tensor and the limit.
        let mut a = TensorAssembler::with_limits(limits);
        let claim = TensorChunk {
            header: Some(TensorHeader {
                name: "junk".into(),
                dtype: DataType::Float32 as i32,
                shape: vec![250_000_000],
            }),
            data: Bytes::new(),
        };
        let err = a.push(claim).expect_err("over the per-tensor limit");
        assert_eq!(
            err,
            FrameError::TensorTooLarge {
                name: "junk".into(),
                bytes: 1_000_000_000,
                limit: 64
            }
        );
        assert!(err.is_limit());
        assert!(err.to_string().contains("\"junk\""), "{err}");

        // A 16-byte tensor in 1-byte chunks: the fourth chunk passes the chunk limit.
        let mut a = TensorAssembler::with_limits(limits);
        let mut chunks = tensor_chunks("x", ramp(4));
        let data = chunks[0].data.clone();
        chunks[0].data = data.slice(0..1);
        for i in 1..data.len() {
            chunks.push(TensorChunk {
                header: None,
                data: data.slice(i..i + 1),
            });
        }
        let mut results = chunks.into_iter().map(|c| a.push(c));
        for _ in 0..3 {
            results
                .next()
                .expect("a chunk")
                .expect("within the chunk limit");
        }
        let err = results.next().expect("a chunk").expect_err("fourth chunk");
        assert_eq!(
            err,
            FrameError::TooManyChunks {
                name: "x".into(),
                limit: 3
            }
        );
        assert!(err.is_limit());
        assert!(!FrameError::DataWithoutHeader.is_limit());
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
