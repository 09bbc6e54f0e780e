//! The roofline cost model of one tier and its fit to measured times.
//!
//! A node's predicted time is `max(FLOPs / peak, bytes moved / bandwidth) + overhead`: whichever of compute and
//! memory traffic is the bottleneck, plus a fixed per-operator cost (dispatch, kernel launch) that layout-only
//! operators do not pay. Without a bandwidth it is the older sustained model, `FLOPs / GFLOP/s + overhead`.
//!
//! [`fit`] finds the three parameters (or two, for the sustained model) that best explain measured times of
//! groups of nodes ([`Observation`]s: `strata profile`'s per-node times merged into contiguous blocks by
//! [`blocks`]). What it minimises is the sum over observations of the squared error of the *logarithm* of the
//! predicted time, `Σ (ln predicted − ln measured)²`, because:
//! - node and stage times span four or more decades (a 2 µs `Relu` on a vector, a 50 ms convolution); squared
//!   error in milliseconds would fit the few largest convolutions and ignore the rest, while the log error
//!   weighs a 2× miss on a small node as much as on a big one — which is what the planner needs, since it
//!   places small and large parts alike, and what the evaluation (median relative error) measures;
//! - it is symmetric in over- and under-prediction (relative error is not: it can be at most 100 % low);
//! - it is scale-free, so the same search works from a microcontroller to a GPU.
//!
//! The search is deterministic: a coarse grid over the log-parameters around the data's own throughputs,
//! then a compass (pattern) search that halves its step until it converges. Three parameters need nothing
//! more, and unlike Gauss–Newton it does not care that `max` has a kink. Per-node times alone cannot be
//! fitted in log space: tract fuses nodes (a `BatchNormalization` and a `Relu` into the `Conv` before them),
//! leaving 0 ms for the fused ones and their time in their neighbour; [`blocks`] merges consecutive nodes
//! until each block is long enough to be timed reliably, which also absorbs the fusion.
//!
//! Pure: no I/O, no clock.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::analyse::Analysis;
use crate::cluster::TierSpec;
use crate::cost::is_layout_only;
use crate::model::Model;

/// What one node asks of the hardware.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodeWork {
    /// Floating-point operations ([`Analysis::node_flops`]).
    pub flops: f64,
    /// Bytes moved between memory and the compute units (see [`work`] for what is counted).
    pub bytes: f64,
    /// Whether the node pays the per-operator overhead (false for layout-only operators and folded nodes).
    pub pays_overhead: bool,
}

/// One tier's cost model: a roofline, or without a bandwidth the sustained-throughput model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Roofline {
    /// Peak compute throughput, GFLOP/s (the sustained throughput when `bandwidth_gbs` is `None`).
    pub gflops: f64,
    /// Memory bandwidth, GB/s (10⁹ bytes per second); `None`: memory traffic is not modelled.
    pub bandwidth_gbs: Option<f64>,
    /// Fixed cost per operator, microseconds.
    pub op_overhead_us: f64,
}

impl Roofline {
    /// A tier's cost model as its cluster spec describes it.
    pub fn of(spec: &TierSpec) -> Roofline {
        Roofline {
            gflops: spec.gflops,
            bandwidth_gbs: spec.bandwidth_gbs,
            op_overhead_us: spec.op_overhead_us,
        }
    }

    /// Predicted milliseconds of one node: `max(flops / peak, bytes / bandwidth) + overhead`.
    pub fn node_ms(&self, work: &NodeWork) -> f64 {
        let compute = work.flops / (self.gflops * 1e9) * 1e3;
        let memory = self
            .bandwidth_gbs
            .map_or(0.0, |bw| work.bytes / (bw * 1e9) * 1e3);
        let overhead = if work.pays_overhead {
            self.op_overhead_us * 1e-3
        } else {
            0.0
        };
        compute.max(memory) + overhead
    }

    /// Predicted milliseconds of a group of nodes run one after another.
    pub fn group_ms(&self, nodes: &[NodeWork]) -> f64 {
        nodes.iter().map(|w| self.node_ms(w)).sum()
    }
}

/// Per node (index as [`Model::nodes`]), what it asks of the hardware. Bytes moved counts every distinct
/// tensor the node reads (activations, initializers, constants: each read once, from memory) plus every tensor
/// it writes, at their inferred sizes; tensors of unknown shape count 0. It does not count re-reads a cache
/// misses (a convolution reads its input more than once when it does not fit), nor the savings of fusion (a
/// `Relu` fused into the convolution before it moves nothing). Layout-only operators (`Reshape`, `Flatten`,
/// `Identity`, ...; views, not copies) move nothing and pay no overhead; folded nodes run nowhere and cost
/// nothing at all.
pub fn work(model: &Model, analysis: &Analysis) -> Vec<NodeWork> {
    model
        .nodes
        .iter()
        .enumerate()
        .map(|(v, node)| {
            if analysis.is_folded(v) {
                return NodeWork::default();
            }
            let flops = analysis.node_flops.get(v).copied().unwrap_or(0.0);
            if is_layout_only(&node.op_type) {
                return NodeWork {
                    flops,
                    bytes: 0.0,
                    pays_overhead: false,
                };
            }
            let mut seen = HashSet::new();
            let bytes: u64 = node
                .inputs
                .iter()
                .chain(&node.outputs)
                .filter(|t| seen.insert(t.as_str()))
                .map(|t| analysis.tensor_bytes(t))
                .sum();
            NodeWork {
                flops,
                bytes: bytes as f64,
                pays_overhead: true,
            }
        })
        .collect()
}

/// A measured time of a group of nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The nodes timed together.
    pub nodes: Vec<NodeWork>,
    /// Their measured time, ms.
    pub ms: f64,
}

/// The shortest block [`blocks`] makes by default, ms: long enough that timer resolution and jitter (about a
/// microsecond per node) stay under a few per cent.
pub const BLOCK_MS: f64 = 0.05;

/// Merges per-node measured times (in the model's topological order, as `strata profile` writes them) into
/// blocks of consecutive nodes lasting at least `min_ms` each (a short tail joins the last block). Nodes
/// that cost nothing anywhere (folded nodes) are left out.
pub fn blocks(work: &[NodeWork], ms: &[f64], min_ms: f64) -> Vec<Observation> {
    let mut out: Vec<Observation> = Vec::new();
    let mut current = Observation {
        nodes: Vec::new(),
        ms: 0.0,
    };
    for (w, &t) in work.iter().zip(ms) {
        if *w == NodeWork::default() && t == 0.0 {
            continue;
        }
        current.nodes.push(*w);
        current.ms += t;
        if current.ms >= min_ms {
            out.push(std::mem::replace(
                &mut current,
                Observation {
                    nodes: Vec::new(),
                    ms: 0.0,
                },
            ));
        }
    }
    if !current.nodes.is_empty() {
        match out.last_mut() {
            Some(last) => {
                last.nodes.extend(current.nodes);
                last.ms += current.ms;
            }
            None => out.push(current),
        }
    }
    out
}

/// Which model to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Peak GFLOP/s, bandwidth and per-operator overhead.
    Roofline,
    /// One sustained GFLOP/s and the per-operator overhead (the model before the roofline).
    Sustained,
}

/// A fitted model and how well it explains its own data.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// The parameters.
    pub model: Roofline,
    /// Observations used (those with a positive time and something to predict).
    pub observations: usize,
    /// Observations left out: no time measured, or nothing the model can predict (no FLOPs, no bytes, no
    /// overhead).
    pub skipped: usize,
    /// Median |predicted − measured| ÷ measured over the observations used.
    pub median_error: f64,
}

/// Why no model could be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// A negative, infinite or NaN number in the data.
    #[error("observation {index}: {what} = {value} is not a finite number >= 0")]
    Invalid {
        /// Index of the observation.
        index: usize,
        /// Which number.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// Too few usable observations for the parameters.
    #[error(
        "{usable} usable observation(s) (a positive time and some FLOPs, bytes or overhead), {needed} needed: \
         profile more (or larger) models"
    )]
    TooFew {
        /// Observations usable.
        usable: usize,
        /// The minimum.
        needed: usize,
    },
    /// The data cannot determine a parameter.
    #[error("no observation has any {0}, so the model's {1} cannot be fitted")]
    Degenerate(&'static str, &'static str),
}

/// Bounds of the search, decades either side of the data's own throughput (peak, bandwidth) and absolute
/// (overhead, microseconds).
const DECADES: f64 = 3.0;
const OVERHEAD_US: (f64, f64) = (1e-3, 1e5);

/// Fits a model to observed times, minimising the squared log error (see the module docs). Deterministic.
pub fn fit(observations: &[Observation], kind: Kind) -> Result<Fit, FitError> {
    for (index, o) in observations.iter().enumerate() {
        let check = |what, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(FitError::Invalid { index, what, value })
            }
        };
        check("ms", o.ms)?;
        for n in &o.nodes {
            check("flops", n.flops)?;
            check("bytes", n.bytes)?;
        }
    }
    let usable: Vec<&Observation> = observations
        .iter()
        .filter(|o| {
            o.ms > 0.0
                && o.nodes
                    .iter()
                    .any(|n| n.flops > 0.0 || n.bytes > 0.0 || n.pays_overhead)
        })
        .collect();
    let parameters = match kind {
        Kind::Roofline => 3,
        Kind::Sustained => 2,
    };
    if usable.len() < parameters {
        return Err(FitError::TooFew {
            usable: usable.len(),
            needed: parameters,
        });
    }
    let total_ms: f64 = usable.iter().map(|o| o.ms).sum();
    let total = |f: fn(&NodeWork) -> f64| -> f64 {
        usable.iter().flat_map(|o| &o.nodes).map(f).sum::<f64>()
    };
    let (flops, bytes) = (total(|n| n.flops), total(|n| n.bytes));
    if flops <= 0.0 {
        return Err(FitError::Degenerate("FLOPs", "peak GFLOP/s"));
    }
    if kind == Kind::Roofline && bytes <= 0.0 {
        return Err(FitError::Degenerate("bytes moved", "bandwidth"));
    }
    // Centres: what the data would give if all its time were compute (or memory traffic).
    let centre = [
        (flops / (total_ms * 1e6)).ln(),
        (bytes.max(1.0) / (total_ms * 1e6)).ln(),
    ];
    let ln10 = std::f64::consts::LN_10;
    let lower = [
        centre[0] - DECADES * ln10,
        centre[1] - DECADES * ln10,
        OVERHEAD_US.0.ln(),
    ];
    let upper = [
        centre[0] + DECADES * ln10,
        centre[1] + DECADES * ln10,
        OVERHEAD_US.1.ln(),
    ];
    let model_of = |theta: &[f64; 3]| Roofline {
        gflops: theta[0].exp(),
        bandwidth_gbs: (kind == Kind::Roofline).then(|| theta[1].exp()),
        op_overhead_us: theta[2].exp(),
    };
    let loss = |theta: &[f64; 3]| -> f64 {
        let m = model_of(theta);
        usable
            .iter()
            .map(|o| {
                let e = m.group_ms(&o.nodes).max(f64::MIN_POSITIVE).ln() - o.ms.ln();
                e * e
            })
            .sum()
    };
    let dims: &[usize] = match kind {
        Kind::Roofline => &[0, 1, 2],
        Kind::Sustained => &[0, 2],
    };
    // Grid: every half decade within the bounds.
    let half_decade = 0.5 * ln10;
    let counts: Vec<usize> = dims
        .iter()
        .map(|&d| ((upper[d] - lower[d]) / half_decade).round() as usize + 1)
        .collect();
    let mut best = [centre[0], centre[1], 0.0];
    let mut best_loss = f64::INFINITY;
    for point in 0..counts.iter().product::<usize>() {
        let mut t = best;
        let mut rest = point;
        for (&d, &count) in dims.iter().zip(&counts) {
            t[d] = lower[d] + (rest % count) as f64 * half_decade;
            rest /= count;
        }
        let l = loss(&t);
        if l < best_loss {
            best_loss = l;
            best = t;
        }
    }
    // Compass search from the best grid point.
    let mut step = 0.25 * ln10;
    while step > 1e-7 {
        let mut improved = false;
        for &d in dims {
            for sign in [1.0, -1.0] {
                let mut t = best;
                t[d] = (t[d] + sign * step).clamp(lower[d], upper[d]);
                let l = loss(&t);
                if l < best_loss {
                    best_loss = l;
                    best = t;
                    improved = true;
                }
            }
        }
        if !improved {
            step *= 0.5;
        }
    }
    let model = model_of(&best);
    let mut errors: Vec<f64> = usable
        .iter()
        .map(|o| relative_error(model.group_ms(&o.nodes), o.ms))
        .collect();
    Ok(Fit {
        model,
        observations: usable.len(),
        skipped: observations.len() - usable.len(),
        median_error: median(&mut errors),
    })
}

/// |predicted − measured| ÷ measured.
pub fn relative_error(predicted_ms: f64, measured_ms: f64) -> f64 {
    (predicted_ms - measured_ms).abs() / measured_ms
}

/// The median (NaN for no values).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of nodes, from tiny element-wise ones (memory-bound) to large convolutions
    /// (compute-bound), some layout-only.
    fn synthetic_nodes(n: usize) -> Vec<NodeWork> {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|i| {
                // Bytes from 4 KB to 40 MB; arithmetic intensity from 0.1 to 1000 FLOP/byte.
                let bytes = 4e3 * 10f64.powf(4.0 * next());
                let intensity = 10f64.powf(-1.0 + 4.0 * next());
                NodeWork {
                    flops: bytes * intensity,
                    bytes,
                    pays_overhead: i % 7 != 0,
                }
            })
            .collect()
    }

    fn observe(truth: &Roofline, nodes: &[NodeWork], per_obs: usize) -> Vec<Observation> {
        nodes
            .chunks(per_obs)
            .map(|c| Observation {
                nodes: c.to_vec(),
                ms: truth.group_ms(c),
            })
            .collect()
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn roofline_fit_recovers_known_parameters() {
        let truth = Roofline {
            gflops: 150.0,
            bandwidth_gbs: Some(12.0),
            op_overhead_us: 8.0,
        };
        for per_obs in [1, 3] {
            let obs = observe(&truth, &synthetic_nodes(300), per_obs);
            let fit = fit(&obs, Kind::Roofline).expect("a fit");
            let m = fit.model;
            assert!(close(m.gflops, 150.0, 0.01), "{per_obs}: {m:?}");
            assert!(
                close(m.bandwidth_gbs.expect("bandwidth"), 12.0, 0.01),
                "{per_obs}: {m:?}"
            );
            assert!(close(m.op_overhead_us, 8.0, 0.01), "{per_obs}: {m:?}");
            assert!(fit.median_error < 1e-3, "{fit:?}");
            assert_eq!(fit.observations, obs.len());
        }
    }

    #[test]
    fn sustained_fit_recovers_known_parameters() {
        let truth = Roofline {
            gflops: 40.0,
            bandwidth_gbs: None,
            op_overhead_us: 25.0,
        };
        let obs = observe(&truth, &synthetic_nodes(200), 2);
        let fit = fit(&obs, Kind::Sustained).expect("a fit");
        assert_eq!(fit.model.bandwidth_gbs, None);
        assert!(close(fit.model.gflops, 40.0, 0.01), "{fit:?}");
        assert!(close(fit.model.op_overhead_us, 25.0, 0.01), "{fit:?}");
    }

    #[test]
    fn roofline_explains_memory_bound_times_the_sustained_model_cannot() {
        let truth = Roofline {
            gflops: 500.0,
            bandwidth_gbs: Some(5.0),
            op_overhead_us: 2.0,
        };
        let obs = observe(&truth, &synthetic_nodes(300), 1);
        let roof = fit(&obs, Kind::Roofline).expect("roofline");
        let sustained = fit(&obs, Kind::Sustained).expect("sustained");
        assert!(
            sustained.median_error > 10.0 * roof.median_error.max(1e-4),
            "roofline {roof:?} vs sustained {sustained:?}"
        );
    }

    #[test]
    fn noisy_times_still_give_parameters_near_the_truth() {
        let truth = Roofline {
            gflops: 80.0,
            bandwidth_gbs: Some(20.0),
            op_overhead_us: 5.0,
        };
        let nodes = synthetic_nodes(400);
        // ±20 % deterministic noise.
        let obs: Vec<Observation> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Observation {
                nodes: vec![*n],
                ms: truth.node_ms(n) * (1.0 + 0.2 * ((i as f64) * 0.7).sin()),
            })
            .collect();
        let m = fit(&obs, Kind::Roofline).expect("a fit").model;
        assert!(close(m.gflops, 80.0, 0.15), "{m:?}");
        assert!(close(m.bandwidth_gbs.expect("bw"), 20.0, 0.15), "{m:?}");
        assert!(close(m.op_overhead_us, 5.0, 0.3), "{m:?}");
    }

    #[test]
    fn fitting_is_deterministic() {
        let truth = Roofline {
            gflops: 70.0,
            bandwidth_gbs: Some(9.0),
            op_overhead_us: 3.0,
        };
        let obs = observe(&truth, &synthetic_nodes(100), 2);
        assert_eq!(fit(&obs, Kind::Roofline), fit(&obs, Kind::Roofline));
    }

    #[test]
    fn zero_time_and_workless_observations_are_skipped_not_fatal() {
        let truth = Roofline {
            gflops: 100.0,
            bandwidth_gbs: Some(10.0),
            op_overhead_us: 4.0,
        };
        let mut obs = observe(&truth, &synthetic_nodes(60), 1);
        // A fused node (0 ms) and a node with nothing to predict (layout-only, no FLOPs, no bytes).
        obs.push(Observation {
            nodes: vec![NodeWork {
                flops: 1e6,
                bytes: 1e4,
                pays_overhead: true,
            }],
            ms: 0.0,
        });
        obs.push(Observation {
            nodes: vec![NodeWork::default()],
            ms: 0.01,
        });
        let f = fit(&obs, Kind::Roofline).expect("a fit");
        assert_eq!(f.skipped, 2);
        assert!(f.model.gflops.is_finite() && f.model.op_overhead_us.is_finite());
        assert!(close(f.model.gflops, 100.0, 0.01), "{f:?}");
    }

    #[test]
    fn degenerate_inputs_are_clear_errors_not_nan() {
        assert_eq!(
            fit(&[], Kind::Roofline),
            Err(FitError::TooFew {
                usable: 0,
                needed: 3
            })
        );
        let zero_ms: Vec<Observation> = synthetic_nodes(10)
            .into_iter()
            .map(|n| Observation {
                nodes: vec![n],
                ms: 0.0,
            })
            .collect();
        assert!(matches!(
            fit(&zero_ms, Kind::Sustained),
            Err(FitError::TooFew { usable: 0, .. })
        ));
        let overhead_only: Vec<Observation> = (0..5)
            .map(|_| Observation {
                nodes: vec![NodeWork {
                    flops: 0.0,
                    bytes: 0.0,
                    pays_overhead: true,
                }],
                ms: 0.01,
            })
            .collect();
        let e = fit(&overhead_only, Kind::Roofline).expect_err("no FLOPs");
        assert_eq!(e, FitError::Degenerate("FLOPs", "peak GFLOP/s"));
        assert!(e.to_string().contains("peak GFLOP/s"), "{e}");
        let no_bytes: Vec<Observation> = (0..5)
            .map(|i| Observation {
                nodes: vec![NodeWork {
                    flops: 1e6 * (i + 1) as f64,
                    bytes: 0.0,
                    pays_overhead: true,
                }],
                ms: 0.01 * (i + 1) as f64,
            })
            .collect();
        assert_eq!(
            fit(&no_bytes, Kind::Roofline),
            Err(FitError::Degenerate("bytes moved", "bandwidth"))
        );
        assert!(fit(&no_bytes, Kind::Sustained).is_ok());
        let mut nan = no_bytes.clone();
        nan[2].ms = f64::NAN;
        assert!(matches!(
            fit(&nan, Kind::Sustained),
            Err(FitError::Invalid {
                index: 2,
                what: "ms",
                ..
            })
        ));
        let mut negative = no_bytes;
        negative[1].nodes[0].flops = -1.0;
        let e = fit(&negative, Kind::Sustained).expect_err("negative FLOPs");
        assert!(e.to_string().contains("flops = -1"), "{e}");
    }

    #[test]
    fn a_node_is_bound_by_the_slower_of_compute_and_memory() {
        let m = Roofline {
            gflops: 100.0,
            bandwidth_gbs: Some(10.0),
            op_overhead_us: 5.0,
        };
        // 1 GFLOP over 1 MB: compute-bound, 10 ms + 5 µs.
        let conv = NodeWork {
            flops: 1e9,
            bytes: 1e6,
            pays_overhead: true,
        };
        assert!((m.node_ms(&conv) - 10.005).abs() < 1e-9);
        // 1 MFLOP over 100 MB: memory-bound, 10 ms + 5 µs.
        let add = NodeWork {
            flops: 1e6,
            bytes: 1e8,
            pays_overhead: true,
        };
        assert!((m.node_ms(&add) - 10.005).abs() < 1e-9);
        let sustained = Roofline {
            bandwidth_gbs: None,
            ..m
        };
        assert!((sustained.node_ms(&add) - 0.015).abs() < 1e-9);
    }

    #[test]
    fn blocks_merge_consecutive_nodes_until_they_last_long_enough() {
        let w = NodeWork {
            flops: 1.0,
            bytes: 1.0,
            pays_overhead: true,
        };
        let work = [w, w, NodeWork::default(), w, w, w];
        let ms = [0.03, 0.0, 0.0, 0.06, 0.01, 0.01];
        let b = blocks(&work, &ms, 0.05);
        // [0.03, 0 (fused)] + 0.06 = 0.09; the 0.02 tail joins it; the folded node is left out.
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].nodes.len(), 5);
        assert!((b[0].ms - 0.11).abs() < 1e-12);
        let b = blocks(&work, &ms, 0.02);
        assert_eq!(
            b.iter().map(|o| o.nodes.len()).collect::<Vec<_>>(),
            [1, 2, 2]
        );
    }
}
