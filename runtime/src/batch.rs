//! Dynamic batching support: a stage rewritten with a free batch dimension ([`with_batch_dim`]), requests'
//! tensors stacked into one batch and the answers split back ([`stack`], [`unstack`]), and the check that a
//! rewritten stage answers every item of a batch as the original stage answers it alone ([`verify`]).
//!
//! Stages are extracted with the model's fixed shapes (batch 1). The rewrite makes dimension 0 of every graph
//! input and output the symbol [`BATCH_DIM`], drops the intermediate shape annotations (both backends infer
//! them), and turns a `Reshape` target's leading 1 into 0 ("copy the input's dimension"), the way exporters
//! write flattening (`[1, -1]`). Anything else that fixes the batch (a `Reshape` to `[2, ...]`, an `Expand`
//! to a constant shape, a batch-mixing operator) is not detected by reading the graph: it is caught by
//! [`verify`], which runs two different items both ways and compares, so a stage that batches wrongly is
//! served one request at a time, never with wrong answers.

use prost::Message;
use tract_onnx::pb;

use crate::backend::LoadedStage;
use strata_core::{DType, TensorData};

/// The symbol the batch dimension gets.
pub const BATCH_DIM: &str = "strata_batch";

/// How close a batched item's answer must be to the item's answer alone: `|a − b| ≤ TOLERANCE · (1 + |b|)`
/// element-wise (batched kernels may sum in another order).
pub const TOLERANCE: f64 = 1e-3;

/// Why a stage is served one request at a time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("stage cannot be batched: {0}")]
pub struct NotBatchable(pub String);

fn not(reason: impl Into<String>) -> NotBatchable {
    NotBatchable(reason.into())
}

/// The stage `onnx` with a free batch dimension (see the module's documentation).
pub fn with_batch_dim(onnx: &[u8]) -> Result<Vec<u8>, NotBatchable> {
    let mut model =
        pb::ModelProto::decode(onnx).map_err(|e| not(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.as_mut().ok_or_else(|| not("no graph"))?;
    let initializers: std::collections::HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    for input in graph
        .input
        .iter_mut()
        .filter(|i| !initializers.contains(&i.name))
    {
        free_leading_dim(input, "input")?;
    }
    for output in &mut graph.output {
        free_leading_dim(output, "output")?;
    }
    graph.value_info.clear();

    // Reshape targets held in constants that only Reshapes read: a leading 1 becomes 0 (copy the input's
    // leading dimension, which is the batch).
    let mut readers: std::collections::HashMap<&str, (usize, usize)> = Default::default();
    for node in &graph.node {
        for (slot, name) in node.input.iter().enumerate() {
            let e = readers.entry(name.as_str()).or_default();
            e.0 += 1;
            if node.op_type == "Reshape" && slot == 1 && !allows_zero(node) {
                e.1 += 1;
            }
        }
    }
    let targets: std::collections::HashSet<String> = readers
        .into_iter()
        .filter(|(_, (all, reshapes))| *reshapes > 0 && all == reshapes)
        .map(|(name, _)| name.to_string())
        .collect();
    for tensor in graph
        .initializer
        .iter_mut()
        .filter(|t| targets.contains(&t.name))
    {
        copy_leading_dim(tensor);
    }
    for node in graph.node.iter_mut().filter(|n| {
        n.op_type == "Constant" && n.output.first().is_some_and(|o| targets.contains(o))
    }) {
        for attr in node.attribute.iter_mut().filter(|a| a.name == "value") {
            if let Some(t) = attr.t.as_mut() {
                copy_leading_dim(t);
            }
        }
    }
    Ok(model.encode_to_vec())
}

fn allows_zero(node: &pb::NodeProto) -> bool {
    node.attribute
        .iter()
        .any(|a| a.name == "allowzero" && a.i != 0)
}

/// An int64 shape constant whose first element is 1 gets 0 there.
fn copy_leading_dim(t: &mut pb::TensorProto) {
    const INT64: i32 = pb::tensor_proto::DataType::Int64 as i32;
    if t.data_type != INT64 || t.dims.len() != 1 {
        return;
    }
    if t.int64_data.first() == Some(&1) {
        t.int64_data[0] = 0;
    } else if t.raw_data.len() >= 8 && t.raw_data[..8] == 1i64.to_le_bytes() {
        t.raw_data[..8].copy_from_slice(&0i64.to_le_bytes());
    }
}

fn free_leading_dim(value: &mut pb::ValueInfoProto, what: &str) -> Result<(), NotBatchable> {
    use pb::tensor_shape_proto::dimension::Value;
    let name = value.name.clone();
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        value.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        return Err(not(format!("{what} \"{name}\" is not a tensor")));
    };
    let first = tensor
        .shape
        .as_mut()
        .and_then(|s| s.dim.first_mut())
        .ok_or_else(|| not(format!("{what} \"{name}\" has no leading dimension")))?;
    match &first.value {
        Some(Value::DimValue(1)) | Some(Value::DimParam(_)) | None => {
            first.value = Some(Value::DimParam(BATCH_DIM.to_string()));
            Ok(())
        }
        Some(Value::DimValue(d)) => Err(not(format!(
            "{what} \"{name}\" has leading dimension {d}, not 1"
        ))),
    }
}

/// The items stacked along dimension 0: each must have the dtype and the trailing dimensions of the first.
pub fn stack(items: &[&TensorData]) -> Result<TensorData, NotBatchable> {
    let first = items.first().ok_or_else(|| not("nothing to stack"))?;
    if first.shape.is_empty() {
        return Err(not("a scalar has no batch dimension"));
    }
    let mut rows = 0usize;
    let mut data = Vec::with_capacity(items.iter().map(|t| t.data.len()).sum());
    for item in items {
        if item.dtype != first.dtype
            || item.shape.len() != first.shape.len()
            || item.shape[1..] != first.shape[1..]
        {
            return Err(not(format!(
                "items differ: {} {:?} and {} {:?}",
                first.dtype, first.shape, item.dtype, item.shape
            )));
        }
        rows += item.shape[0];
        data.extend_from_slice(&item.data);
    }
    let mut shape = first.shape.clone();
    shape[0] = rows;
    TensorData::new(first.dtype, shape, data).map_err(|e| not(e.to_string()))
}

/// `batch` split along dimension 0 into pieces of `rows[i]` rows each (they must add up to its first
/// dimension).
pub fn unstack(batch: &TensorData, rows: &[usize]) -> Result<Vec<TensorData>, NotBatchable> {
    let Some(&total) = batch.shape.first() else {
        return Err(not("a scalar has no batch dimension"));
    };
    if rows.iter().sum::<usize>() != total {
        return Err(not(format!(
            "a batch of {total} cannot be split into {rows:?}"
        )));
    }
    let row_bytes = batch.data.len().checked_div(total).unwrap_or(0);
    let mut at = 0;
    rows.iter()
        .map(|&n| {
            let mut shape = batch.shape.clone();
            shape[0] = n;
            let bytes = batch.data[at..at + n * row_bytes].to_vec();
            at += n * row_bytes;
            TensorData::new(batch.dtype, shape, bytes).map_err(|e| not(e.to_string()))
        })
        .collect()
}

/// How much slower per request a batched run may be than a run alone before [`verify`] refuses the batched
/// form: on a backend whose kernels are tuned for one item (tract's convolutions run 1.7× to 4× slower per
/// item in a batch on x86_64), batching would only add latency and cut throughput.
pub const SLOWEST: f64 = 1.25;

/// Requests in the batch [`verify`] times.
pub const TIMED_BATCH: usize = 4;

/// A stage's speed alone and batched, as [`verify`] measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// One request alone, ms (median of 3 runs).
    pub alone_ms: f64,
    /// One request's share of a batch of [`TIMED_BATCH`], ms (median of 3 runs ÷ the batch).
    pub batched_ms: f64,
}

/// Checks that `batched` (a stage rewritten by [`with_batch_dim`]) answers each item of a batch as `single`
/// (the original) answers it alone ([`check_answers`]), then that it is not slower per request than
/// [`SLOWEST`] times a run alone ([`measure`]). Either failure says why; the stage is then served one request
/// at a time.
pub fn verify(single: &dyn LoadedStage, batched: &dyn LoadedStage) -> Result<Speed, NotBatchable> {
    check_answers(single, batched)?;
    let speed = measure(single, batched, TIMED_BATCH)?;
    if speed.batched_ms > SLOWEST * speed.alone_ms {
        return Err(not(format!(
            "batched runs are slower on this backend: {:.2} ms per request in a batch of {TIMED_BATCH}, \
             {:.2} ms alone",
            speed.batched_ms, speed.alone_ms
        )));
    }
    Ok(speed)
}

/// `n` different requests for `single`: f32 and f64 inputs get different deterministic patterns in [-1, 1];
/// other inputs (indices, masks) zeros, which every index input accepts.
fn probe_items(
    single: &dyn LoadedStage,
    n: usize,
) -> Result<Vec<std::collections::HashMap<String, TensorData>>, NotBatchable> {
    let names = single.input_names();
    let facts = single.input_facts();
    if facts.len() != names.len() {
        return Err(not("the stage does not declare its inputs' shapes"));
    }
    let mut items = vec![std::collections::HashMap::new(); n];
    for (name, (dtype, dims)) in names.iter().zip(facts) {
        let shape: Vec<usize> = dims
            .iter()
            .map(|d| d.ok_or_else(|| not(format!("input \"{name}\" has a free dimension"))))
            .collect::<Result<_, _>>()?;
        if shape.first() != Some(&1) {
            return Err(not(format!(
                "input \"{name}\" has shape {shape:?}, not [1, ...]"
            )));
        }
        for (seed, item) in items.iter_mut().enumerate() {
            item.insert(name.clone(), pattern(*dtype, &shape, seed as u64 + 1));
        }
    }
    Ok(items)
}

/// `items` (requests for one stage) stacked input by input along dimension 0: one request for the stage's
/// batched form. Every item must hold every one of `names`.
pub fn stacked(
    names: &[String],
    items: &[std::collections::HashMap<String, TensorData>],
) -> Result<std::collections::HashMap<String, TensorData>, NotBatchable> {
    let mut all = std::collections::HashMap::new();
    for name in names {
        let parts: Vec<&TensorData> = items
            .iter()
            .map(|i| {
                i.get(name)
                    .ok_or_else(|| not(format!("a request lacks \"{name}\"")))
            })
            .collect::<Result<_, _>>()?;
        all.insert(name.clone(), stack(&parts)?);
    }
    Ok(all)
}

fn run(
    stage: &dyn LoadedStage,
    inputs: &std::collections::HashMap<String, TensorData>,
) -> Result<std::collections::HashMap<String, TensorData>, NotBatchable> {
    stage
        .run(inputs)
        .map_err(|e| not(format!("the batched stage failed: {e}")))
}

/// Checks that `batched` answers a batch of two different requests as `single` answers each alone, within
/// [`TOLERANCE`].
pub fn check_answers(
    single: &dyn LoadedStage,
    batched: &dyn LoadedStage,
) -> Result<(), NotBatchable> {
    let items = probe_items(single, 2)?;
    let alone = [run(single, &items[0])?, run(single, &items[1])?];
    let together = run(batched, &stacked(single.input_names(), &items)?)?;
    for name in single.output_names() {
        let t = together
            .get(name)
            .ok_or_else(|| not(format!("the batched stage has no output \"{name}\"")))?;
        if t.shape.first() != Some(&2) {
            return Err(not(format!(
                "output \"{name}\" of a batch of 2 has shape {:?}",
                t.shape
            )));
        }
        for (i, (piece, want)) in unstack(t, &[1, 1])?.iter().zip(&alone).enumerate() {
            let want = want
                .get(name)
                .ok_or_else(|| not(format!("the stage has no output \"{name}\"")))?;
            let diff = piece
                .max_relative_diff(want)
                .map_err(|e| not(format!("output \"{name}\": {e}")))?;
            if diff > TOLERANCE {
                return Err(not(format!(
                    "output \"{name}\" of item {i} in a batch differs from its answer alone by {diff:.2e}"
                )));
            }
        }
    }
    Ok(())
}

/// Times `single` on one request and `batched` on `n` (after one warm-up run each; medians of 3).
pub fn measure(
    single: &dyn LoadedStage,
    batched: &dyn LoadedStage,
    n: usize,
) -> Result<Speed, NotBatchable> {
    let items = probe_items(single, n.max(1))?;
    let all = stacked(single.input_names(), &items)?;
    let median_ms = |stage: &dyn LoadedStage, inputs| -> Result<f64, NotBatchable> {
        run(stage, inputs)?;
        let mut times = Vec::with_capacity(3);
        for _ in 0..3 {
            let started = std::time::Instant::now();
            run(stage, inputs)?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[1])
    };
    Ok(Speed {
        alone_ms: median_ms(single, &items[0])?,
        batched_ms: median_ms(batched, &all)? / n.max(1) as f64,
    })
}

/// A deterministic tensor: floats in [-1, 1] that differ by `seed`, zeros for other dtypes.
fn pattern(dtype: DType, shape: &[usize], seed: u64) -> TensorData {
    let n: usize = shape.iter().product();
    let value = |i: usize| {
        let x = (i as u64)
            .wrapping_mul(2_654_435_761)
            .wrapping_add(seed.wrapping_mul(40_503))
            % 2001;
        x as f64 / 1000.0 - 1.0
    };
    let data: Vec<u8> = match dtype {
        DType::F32 => (0..n)
            .flat_map(|i| (value(i) as f32).to_le_bytes())
            .collect(),
        DType::F64 => (0..n).flat_map(|i| value(i).to_le_bytes()).collect(),
        other => vec![0; n * other.size()],
    };
    TensorData {
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacking_and_splitting_are_inverse_and_refuse_what_does_not_fit() {
        let a = TensorData::from_f32(vec![1, 2], &[1.0, 2.0]).expect("a");
        let b = TensorData::from_f32(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]).expect("b");
        let ab = stack(&[&a, &b]).expect("stack");
        assert_eq!(ab.shape, [3, 2]);
        assert_eq!(unstack(&ab, &[1, 2]).expect("split"), [a.clone(), b]);
        let c = TensorData::from_f32(vec![1, 3], &[1.0, 2.0, 3.0]).expect("c");
        assert!(stack(&[&a, &c]).is_err(), "trailing dims differ");
        assert!(unstack(&ab, &[1, 1]).is_err(), "rows do not add up");
        let scalar = TensorData::from_f32(vec![], &[1.0]).expect("scalar");
        assert!(stack(&[&scalar]).is_err());
        assert!(stack(&[]).is_err());
    }

    #[test]
    fn patterns_differ_by_seed_and_stay_in_range() {
        let (a, b) = (
            pattern(DType::F32, &[1, 64], 1),
            pattern(DType::F32, &[1, 64], 2),
        );
        assert_ne!(a, b);
        assert!(a.to_f64().iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(
            pattern(DType::I64, &[1, 3], 1)
                .to_f64()
                .iter()
                .all(|v| *v == 0.0)
        );
    }

    /// Adds 1 to `x`, taking `ms_per_row` per row of its batch.
    struct Slow {
        names: (Vec<String>, Vec<String>),
        facts: Vec<crate::OutputFact>,
        ms_per_row: f64,
    }

    impl LoadedStage for Slow {
        fn input_names(&self) -> &[String] {
            &self.names.0
        }
        fn output_names(&self) -> &[String] {
            &self.names.1
        }
        fn input_facts(&self) -> &[crate::OutputFact] {
            &self.facts
        }
        fn run(
            &self,
            inputs: &std::collections::HashMap<String, TensorData>,
        ) -> Result<std::collections::HashMap<String, TensorData>, crate::RuntimeError> {
            let x = &inputs["x"];
            std::thread::sleep(std::time::Duration::from_secs_f64(
                self.ms_per_row * x.shape[0] as f64 / 1e3,
            ));
            let y: Vec<f32> = x.to_f64().iter().map(|v| (v + 1.0) as f32).collect();
            let y = TensorData::from_f32(x.shape.clone(), &y)?;
            Ok([("y".to_string(), y)].into())
        }
    }

    fn slow(ms_per_row: f64) -> Slow {
        Slow {
            names: (vec!["x".into()], vec!["y".into()]),
            facts: vec![(DType::F32, vec![Some(1), Some(3)])],
            ms_per_row,
        }
    }

    #[test]
    fn a_batched_form_slower_per_request_than_runs_alone_is_refused() {
        // Right answers, but each row of a batch costs 3× a request alone: refused, saying so.
        let e = verify(&slow(2.0), &slow(6.0)).expect_err("slower");
        assert!(e.0.contains("slower on this backend"), "{e}");
        // As fast per row: accepted, with both times.
        let speed = verify(&slow(2.0), &slow(2.0)).expect("as fast");
        assert!(
            speed.alone_ms >= 2.0 && speed.batched_ms >= 2.0,
            "{speed:?}"
        );
    }

    #[test]
    fn garbage_and_fixed_batches_are_not_batchable() {
        assert!(with_batch_dim(b"not onnx").is_err());
    }
}
