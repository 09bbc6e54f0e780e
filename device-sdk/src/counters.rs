//! What a client has done since it was made, as counters an app reads ([`crate::Client::counters`], or
//! `strata_client_counters` in C) and, if it wants, exports to its own metrics system: each field is a
//! monotonic total, so a rate is the difference of two reads over their interval (Prometheus counters,
//! OpenTelemetry sums). The SDK itself exports nothing and opens no port.

use std::sync::atomic::{AtomicU64, Ordering};

use strata_core::recost::Link;

use crate::client::Inference;
use crate::error::SdkError;

/// A snapshot of a client's counters (plain data, laid out for C as `StrataCounters`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Requests made (`infer` calls).
    pub requests: u64,
    /// Requests that returned outputs.
    pub succeeded: u64,
    /// Requests that failed, for any reason (the next fields count some reasons).
    pub failed: u64,
    /// Of the failures: no plan satisfied the request's constraints.
    pub failed_no_plan: u64,
    /// Of the failures: the request's deadline passed.
    pub failed_deadline: u64,
    /// Of the failures: no agent could serve (every plan tried failed, or the cluster is unreachable).
    pub failed_unavailable: u64,
    /// Succeeded requests that ran wholly on the device (no byte left it).
    pub on_device: u64,
    /// Succeeded requests with at least one stage on an agent.
    pub offloaded: u64,
    /// Plans that failed and were replaced by the next one, over all requests.
    pub fallbacks: u64,
    /// Requests that ran a close runner-up to refresh its estimates.
    pub explored: u64,
    /// Succeeded requests slower than their latency budget.
    pub over_latency_budget: u64,
    /// Tensor bytes the device sent to agents.
    pub bytes_sent: u64,
    /// Tensor bytes the device received from agents.
    pub bytes_received: u64,
    /// End-to-end time of the succeeded requests, summed, ms.
    pub latency_ms: f64,
    /// Compute on the device, summed, ms.
    pub device_compute_ms: f64,
    /// Device energy the chosen plans were predicted to use, summed, mJ.
    pub predicted_energy_mj: f64,
}

/// The live counters behind [`Counters`], updated once per request.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    requests: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    failed_no_plan: AtomicU64,
    failed_deadline: AtomicU64,
    failed_unavailable: AtomicU64,
    on_device: AtomicU64,
    offloaded: AtomicU64,
    fallbacks: AtomicU64,
    explored: AtomicU64,
    over_latency_budget: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// Sums in nanoseconds and nanojoules, so that they add up exactly and atomically.
    latency_ns: AtomicU64,
    device_compute_ns: AtomicU64,
    predicted_energy_nj: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// `x` (ms, mJ; finite and not negative, else 0) in millionths.
fn millionths(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        (x * 1e6).round() as u64
    } else {
        0
    }
}

impl Tally {
    /// Counts one request's outcome; `budget_ms` is its latency budget, if it had one.
    pub(crate) fn record(&self, outcome: &Result<Inference, SdkError>, budget_ms: Option<f64>) {
        add(&self.requests, 1);
        match outcome {
            Ok(r) => {
                add(&self.succeeded, 1);
                if r.stages.iter().all(|s| s.node.is_none()) {
                    add(&self.on_device, 1);
                } else {
                    add(&self.offloaded, 1);
                }
                add(&self.fallbacks, u64::from(r.fallbacks));
                if r.explored {
                    add(&self.explored, 1);
                }
                if budget_ms.is_some_and(|b| r.total_ms > b) {
                    add(&self.over_latency_budget, 1);
                }
                // The device's own links only: what the edge forwards to the cloud never left the device.
                let own = || r.hops.iter().filter(|h| h.link != Link::EdgeCloud);
                add(&self.bytes_sent, own().map(|h| h.up_bytes).sum());
                add(&self.bytes_received, own().map(|h| h.down_bytes).sum());
                add(&self.latency_ns, millionths(r.total_ms));
                add(
                    &self.device_compute_ns,
                    millionths(
                        r.stages
                            .iter()
                            .filter(|s| s.node.is_none())
                            .map(|s| s.compute_ms)
                            .sum(),
                    ),
                );
                add(&self.predicted_energy_nj, millionths(r.predicted.energy_mj));
            }
            Err(e) => {
                add(&self.failed, 1);
                match e {
                    SdkError::NoPlan(_) => add(&self.failed_no_plan, 1),
                    SdkError::DeadlineExceeded(_) => add(&self.failed_deadline, 1),
                    SdkError::Unavailable(_) => add(&self.failed_unavailable, 1),
                    _ => {}
                }
            }
        }
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            requests: get(&self.requests),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            failed_no_plan: get(&self.failed_no_plan),
            failed_deadline: get(&self.failed_deadline),
            failed_unavailable: get(&self.failed_unavailable),
            on_device: get(&self.on_device),
            offloaded: get(&self.offloaded),
            fallbacks: get(&self.fallbacks),
            explored: get(&self.explored),
            over_latency_budget: get(&self.over_latency_budget),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            latency_ms: get(&self.latency_ns) as f64 / 1e6,
            device_compute_ms: get(&self.device_compute_ns) as f64 / 1e6,
            predicted_energy_mj: get(&self.predicted_energy_nj) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{HopTiming, StageTiming};
    use crate::route::{Decision, Objective, PowerState};
    use strata_core::recost::{Conditions, Prediction};

    fn inference(remote: bool, total_ms: f64, fallbacks: u32) -> Inference {
        let mut stages = vec![StageTiming {
            index: 0,
            tier: "device",
            node: None,
            queue_ms: 0.0,
            compute_ms: 2.5,
            predicted_ms: 3.0,
            batch: 1,
        }];
        let mut hops = Vec::new();
        if remote {
            stages.push(StageTiming {
                index: 1,
                tier: "edge",
                node: Some("edge-1".into()),
                queue_ms: 0.1,
                compute_ms: 4.0,
                predicted_ms: 4.0,
                batch: 1,
            });
            hops.push(HopTiming {
                link: Link::DeviceEdge,
                up_bytes: 1000,
                down_bytes: 40,
                predicted_ms: 1.0,
                measured_ms: 1.2,
            });
            // The edge's hop to the cloud: not the device's bytes.
            hops.push(HopTiming {
                link: Link::EdgeCloud,
                up_bytes: 500,
                down_bytes: 40,
                predicted_ms: 1.0,
                measured_ms: 1.2,
            });
        }
        Inference {
            outputs: Vec::new(),
            plan_id: "p".into(),
            predicted_ms: 9.0,
            predicted: Prediction {
                latency_ms: 9.0,
                energy_mj: 1.5,
                device_ms: 2.5,
                network_ms: 1.0,
            },
            stages,
            hops,
            decision: Decision {
                objective: Objective::Latency,
                latency_budget_ms: None,
                conditions: Conditions::nominal([None; 3]),
                state: PowerState::default(),
                ranked: Vec::new(),
            },
            fallbacks,
            explored: false,
            total_ms,
        }
    }

    #[test]
    fn each_outcome_lands_in_its_counters() {
        let tally = Tally::default();
        tally.record(&Ok(inference(true, 12.0, 1)), Some(10.0));
        tally.record(&Ok(inference(false, 3.0, 0)), Some(10.0));
        tally.record(&Err(SdkError::NoPlan("none".into())), None);
        tally.record(&Err(SdkError::DeadlineExceeded("late".into())), None);
        tally.record(&Err(SdkError::InvalidInput("bad".into())), None);
        let c = tally.snapshot();
        assert_eq!((c.requests, c.succeeded, c.failed), (5, 2, 3));
        assert_eq!(
            (c.failed_no_plan, c.failed_deadline, c.failed_unavailable),
            (1, 1, 0)
        );
        assert_eq!((c.on_device, c.offloaded, c.fallbacks), (1, 1, 1));
        assert_eq!(
            c.over_latency_budget, 1,
            "12 ms over a 10 ms budget, 3 ms not"
        );
        assert_eq!(
            (c.bytes_sent, c.bytes_received),
            (1000, 40),
            "the device's link only"
        );
        assert_eq!(c.latency_ms, 15.0);
        assert_eq!(c.device_compute_ms, 5.0, "device stages only");
        assert_eq!(c.predicted_energy_mj, 3.0);
    }
}
