//! Dynamic batching of one stage's requests, with the semantics of Triton's dynamic batcher: the first request
//! to arrive opens a batch; requests for the same stage that arrive while it is open join it; the batch closes
//! when it holds `max_batch` requests or when the first has waited `max_queue_delay_us`, and then runs as one
//! call as soon as a compute slot is free (requests that arrive before a slot frees join it too, up to
//! `max_batch`). Every request keeps its own deadline: a batch closes early rather than let any of its
//! requests wait past its deadline less the stage's recent compute time, and a request whose deadline passes
//! anyway is answered `DEADLINE_EXCEEDED` by its caller and left out of the run. A batch of one runs the stage
//! itself; a larger one runs the stage's batched form ([`strata_runtime::batch`]) on the requests' tensors
//! stacked along dimension 0 and splits the answers back. When a batched run fails, its requests run again one
//! at a time, so a request that makes the stage fail fails alone.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use strata_core::{Digest, TensorData};
use strata_runtime::{RuntimeError, batch};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::agent::Agent;
use crate::stages::Stage;

/// A model's batching settings, as its route table carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Settings {
    /// Most requests one call takes (at least 2).
    pub max_batch: usize,
    /// Longest the first request of a batch waits for more.
    pub max_queue_delay: Duration,
}

impl Settings {
    /// The settings of a route table; `None` when it does not batch.
    pub fn of(table: &strata_proto::v1::RouteTable) -> Option<Settings> {
        let b = table.batching.as_ref()?;
        (b.max_batch > 1).then(|| Settings {
            max_batch: b.max_batch as usize,
            max_queue_delay: Duration::from_micros(b.max_queue_delay_us),
        })
    }
}

/// What one request got from its batch.
#[derive(Debug)]
pub struct Ran {
    /// The stage's outputs for this request.
    pub outputs: HashMap<String, TensorData>,
    /// From joining the batch to the start of its run, ms.
    pub queue_ms: f64,
    /// The batch's run, ms.
    pub compute_ms: f64,
    /// Requests in the run (1 when it ran alone).
    pub batch: usize,
}

/// One request waiting in a batcher.
struct Item {
    inputs: HashMap<String, TensorData>,
    deadline: Instant,
    joined: Instant,
    reply: oneshot::Sender<Result<Ran, RuntimeError>>,
}

/// A running batcher for one stage: requests go in through [`Handle::submit`]. It stops when the handle is
/// dropped (the agent replaced it, dropped the stage, or stopped).
pub struct Handle {
    settings: Settings,
    batched: Stage,
    items: mpsc::UnboundedSender<Item>,
}

impl Handle {
    /// Starts a batcher for `digest` (`single`: the stage, `batched`: its batched form).
    pub fn start(
        agent: &Arc<Agent>,
        digest: Digest,
        settings: Settings,
        single: Stage,
        batched: Stage,
    ) -> Handle {
        let (items, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(
            Arc::downgrade(agent),
            digest,
            settings,
            single,
            batched.clone(),
            rx,
        ));
        Handle {
            settings,
            batched,
            items,
        }
    }

    /// Whether this batcher runs `batched` (a stage loaded again gets a new batcher).
    pub fn runs(&self, batched: &Stage) -> bool {
        Arc::ptr_eq(&self.batched, batched)
    }

    /// Its settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Queues a request due by `deadline`; its answer comes on the receiver (dropped unanswered only if the
    /// batcher stopped). A caller that stops waiting drops the receiver, and the request is left out of its
    /// batch's run.
    pub fn submit(
        &self,
        inputs: HashMap<String, TensorData>,
        deadline: Instant,
    ) -> oneshot::Receiver<Result<Ran, RuntimeError>> {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            inputs,
            deadline,
            joined: Instant::now(),
            reply,
        };
        // A stopped batcher drops the item, and with it the reply: the caller sees a closed channel.
        let _ = self.items.send(item);
        answer
    }
}

/// Forms batches and hands each to a compute slot.
async fn gather(
    agent: Weak<Agent>,
    digest: Digest,
    settings: Settings,
    single: Stage,
    batched: Stage,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let Some(strong) = agent.upgrade() else {
            return;
        };
        // The stage's recent compute time: a request must still have that long left when its batch runs.
        let expected = Duration::from_secs_f64(
            strong
                .stages
                .compute_ms()
                .get(&digest)
                .map_or(0.0, |(ms, _)| ms / 1e3),
        );
        let slots = strong.slots.clone();
        drop(strong);
        let latest_start = |item: &Item| item.deadline.checked_sub(expected).unwrap_or(item.joined);
        let mut close = (first.joined + settings.max_queue_delay).min(latest_start(&first));
        let mut items = vec![first];
        // Gather until full, or until the first has waited long enough (or someone's deadline is near).
        while items.len() < settings.max_batch {
            tokio::select! {
                biased;
                item = rx.recv() => match item {
                    Some(item) => {
                        close = close.min(latest_start(&item));
                        items.push(item);
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(close.into()) => break,
            }
        }
        // Then wait for a slot, taking in whoever arrives meanwhile (up to the limit).
        let mut open = true;
        let permit = loop {
            tokio::select! {
                biased;
                permit = slots.clone().acquire_owned() => break permit,
                item = rx.recv(), if open && items.len() < settings.max_batch => match item {
                    Some(item) => items.push(item),
                    None => open = false,
                },
            }
        };
        let Ok(permit) = permit else {
            return;
        };
        tokio::spawn(run(
            agent.clone(),
            digest.clone(),
            items,
            single.clone(),
            batched.clone(),
            permit,
        ));
    }
}

/// Runs one batch on its slot and answers each request.
async fn run(
    agent: Weak<Agent>,
    digest: Digest,
    items: Vec<Item>,
    single: Stage,
    batched: Stage,
    permit: OwnedSemaphorePermit,
) {
    // Callers that gave up (their deadline passed) are left out.
    let items: Vec<Item> = items.into_iter().filter(|i| !i.reply.is_closed()).collect();
    if items.is_empty() {
        return;
    }
    let started = Instant::now();
    let (inputs, waiting): (Vec<_>, Vec<_>) = items
        .into_iter()
        .map(|i| (i.inputs, (i.joined, i.reply)))
        .unzip();
    let outcome = tokio::task::spawn_blocking(move || compute(&single, &batched, &inputs)).await;
    let compute_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(permit);
    let n = waiting.len();
    let results = match outcome {
        Ok(results) => results,
        Err(e) => (0..n)
            .map(|_| Err(RuntimeError::Run(format!("stage task failed: {e}"))))
            .collect(),
    };
    if let Some(agent) = agent.upgrade() {
        agent.stages.record_run(&digest, compute_ms);
        agent.metrics.batch(n);
    }
    for ((joined, reply), result) in waiting.into_iter().zip(results) {
        let queue_ms = started.saturating_duration_since(joined).as_secs_f64() * 1e3;
        let _ = reply.send(result.map(|outputs| Ran {
            outputs,
            queue_ms,
            compute_ms,
            batch: n,
        }));
    }
}

/// The stage's outputs for each request: one batched call, or (one request, or a batched call that failed)
/// one call per request.
fn compute(
    single: &Stage,
    batched: &Stage,
    inputs: &[HashMap<String, TensorData>],
) -> Vec<Result<HashMap<String, TensorData>, RuntimeError>> {
    if inputs.len() > 1 {
        match run_batched(batched, inputs) {
            Ok(outputs) => return outputs.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::debug!(requests = inputs.len(), reason = %e, "batch failed; running its requests one by one");
            }
        }
    }
    inputs.iter().map(|i| single.run(i)).collect()
}

fn run_batched(
    batched: &Stage,
    inputs: &[HashMap<String, TensorData>],
) -> Result<Vec<HashMap<String, TensorData>>, RuntimeError> {
    let not = |e: batch::NotBatchable| RuntimeError::Run(e.0);
    let stacked = batch::stacked(batched.input_names(), inputs).map_err(not)?;
    let rows: Vec<usize> = inputs
        .iter()
        .map(|i| {
            i.values()
                .next()
                .and_then(|t| t.shape.first().copied())
                .unwrap_or(1)
        })
        .collect();
    let outputs = batched.run(&stacked)?;
    let mut split: Vec<HashMap<String, TensorData>> = vec![HashMap::new(); inputs.len()];
    for (name, t) in outputs {
        for (i, piece) in batch::unstack(&t, &rows)
            .map_err(not)?
            .into_iter()
            .enumerate()
        {
            split[i].insert(name.clone(), piece);
        }
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_runtime::LoadedStage;

    /// Doubles `x`; refuses any batch holding a negative value (what a request that makes a stage fail does
    /// to the batch it is in).
    struct Doubler {
        names: (Vec<String>, Vec<String>),
    }

    impl LoadedStage for Doubler {
        fn input_names(&self) -> &[String] {
            &self.names.0
        }
        fn output_names(&self) -> &[String] {
            &self.names.1
        }
        fn run(
            &self,
            inputs: &HashMap<String, TensorData>,
        ) -> Result<HashMap<String, TensorData>, RuntimeError> {
            let x = &inputs["x"];
            let values = x.to_f64();
            if values.iter().any(|v| *v < 0.0) {
                return Err(RuntimeError::Run("negative input".into()));
            }
            let doubled: Vec<f32> = values.iter().map(|v| (v * 2.0) as f32).collect();
            let y = TensorData::from_f32(x.shape.clone(), &doubled).map_err(RuntimeError::from)?;
            Ok(HashMap::from([("y".to_string(), y)]))
        }
    }

    fn stage() -> Stage {
        Arc::new(Doubler {
            names: (vec!["x".into()], vec!["y".into()]),
        })
    }

    fn item(v: f32) -> HashMap<String, TensorData> {
        HashMap::from([(
            "x".to_string(),
            TensorData::from_f32(vec![1, 2], &[v, v + 0.5]).expect("x"),
        )])
    }

    #[test]
    fn each_request_gets_its_own_rows_and_a_failing_one_fails_alone() {
        let (single, batched) = (stage(), stage());
        let good: Vec<_> = (0..5).map(|i| item(i as f32)).collect();
        let answers = compute(&single, &batched, &good);
        for (i, a) in answers.iter().enumerate() {
            let y = &a.as_ref().expect("served")["y"];
            assert_eq!(y.shape, [1, 2]);
            assert_eq!(
                y.to_f64(),
                [2.0 * i as f64, 2.0 * i as f64 + 1.0],
                "request {i}"
            );
        }
        // One bad request: the batch fails, is run again one by one, and only the bad one fails.
        let mut mixed = good.clone();
        mixed.insert(2, item(-1.0));
        let answers = compute(&single, &batched, &mixed);
        assert_eq!(answers.len(), 6);
        for (i, a) in answers.iter().enumerate() {
            if i == 2 {
                assert!(a.is_err(), "the bad request fails");
            } else {
                let k = if i < 2 { i } else { i - 1 };
                assert_eq!(a.as_ref().expect("served")["y"].to_f64()[0], 2.0 * k as f64);
            }
        }
    }

    #[test]
    fn a_table_without_batching_or_with_one_does_not_batch() {
        let mut table = strata_proto::v1::RouteTable::default();
        assert_eq!(Settings::of(&table), None);
        table.batching = Some(strata_proto::v1::Batching {
            max_batch: 1,
            max_queue_delay_us: 100,
        });
        assert_eq!(Settings::of(&table), None);
        table.batching = Some(strata_proto::v1::Batching {
            max_batch: 4,
            max_queue_delay_us: 2500,
        });
        assert_eq!(
            Settings::of(&table),
            Some(Settings {
                max_batch: 4,
                max_queue_delay: Duration::from_micros(2500)
            })
        );
    }
}
