//! The cost model: exact evaluation of one placement.

use super::{Constraints, Evaluation, Objective, Problem, TIER_COUNT};

/// Reusable buffers for evaluating many placements of one problem.
#[derive(Debug, Default)]
pub(crate) struct Evaluator {
    /// Position of each node among the nodes of its tier (execution step within the stage).
    pos: Vec<usize>,
    /// Difference arrays of live activation bytes per tier, indexed by step.
    diff: [Vec<f64>; TIER_COUNT],
}

impl Evaluation {
    fn invalid() -> Evaluation {
        Evaluation {
            latency_ms: f64::INFINITY,
            device_energy_mj: f64::INFINITY,
            memory_bytes: [f64::INFINITY; TIER_COUNT],
            param_bytes: [f64::INFINITY; TIER_COUNT],
            used: [false; TIER_COUNT],
            monotone: false,
            allowed: false,
        }
    }

    /// The value of `objective` for this plan.
    pub fn objective(&self, objective: Objective) -> f64 {
        match objective {
            Objective::Latency => self.latency_ms,
            Objective::Energy => self.device_energy_mj,
        }
    }

    /// Whether the plan is valid (monotone, allowed) and meets the latency budget and the
    /// memory cap of every tier it uses.
    pub fn meets(&self, constraints: &Constraints) -> bool {
        if !(self.monotone && self.allowed) {
            return false;
        }
        if constraints
            .latency_budget_ms
            .is_some_and(|budget| self.latency_ms > budget)
        {
            return false;
        }
        (0..TIER_COUNT).all(|t| {
            !self.used[t]
                || constraints.memory_cap_bytes[t].is_none_or(|cap| self.memory_bytes[t] <= cap)
        })
    }
}

impl Evaluator {
    /// Evaluates `tier` (one entry per node) under the cost semantics of the module docs.
    /// Malformed input (wrong length, tier index >= 3, out-of-range tensor endpoints) yields an
    /// evaluation with infinite costs and `monotone == allowed == false`.
    pub(crate) fn eval(&mut self, problem: &Problem, tier: &[u8]) -> Evaluation {
        let n = problem.node_count;
        if tier.len() != n || tier.iter().any(|&t| usize::from(t) >= TIER_COUNT) {
            return Evaluation::invalid();
        }
        let mut ev = Evaluation {
            latency_ms: 0.0,
            device_energy_mj: 0.0,
            memory_bytes: [0.0; TIER_COUNT],
            param_bytes: [0.0; TIER_COUNT],
            used: [false; TIER_COUNT],
            monotone: true,
            allowed: true,
        };
        let mut tier_len = [0usize; TIER_COUNT];
        self.pos.clear();
        for (v, &t) in tier.iter().enumerate() {
            let t = usize::from(t);
            ev.used[t] = true;
            self.pos.push(tier_len[t]);
            tier_len[t] += 1;
            let lat = problem
                .latency
                .node_cost
                .get(v)
                .map_or(f64::INFINITY, |c| c[t]);
            let energy = problem
                .energy
                .node_cost
                .get(v)
                .map_or(f64::INFINITY, |c| c[t]);
            if !problem.tier_present[t] || !lat.is_finite() || !energy.is_finite() {
                ev.allowed = false;
            }
            ev.latency_ms += lat;
            ev.device_energy_mj += energy;
            ev.param_bytes[t] += problem.param_bytes.get(v).copied().unwrap_or(0.0);
        }

        // The chain: the device, then the used non-device tiers in increasing order.
        let mut chain = [0usize; TIER_COUNT];
        let mut chain_len = 1;
        for t in 1..TIER_COUNT {
            if ev.used[t] {
                chain[chain_len] = t;
                chain_len += 1;
            }
        }
        for k in 1..chain_len {
            let (a, b) = (chain[k - 1], chain[k]);
            ev.latency_ms += problem.latency.hop[a][b].fixed;
            ev.device_energy_mj += problem.energy.hop[a][b].fixed;
        }

        for (t, diff) in self.diff.iter_mut().enumerate() {
            diff.clear();
            diff.resize(tier_len[t] + 1, 0.0);
        }
        for tensor in &problem.tensors {
            let bytes = tensor.bytes;
            let producer_tier = match tensor.producer {
                Some(u) if u < n => usize::from(tier[u]),
                Some(_) => return Evaluation::invalid(),
                None => 0,
            };
            let mut max_consumer: Option<usize> = None;
            let mut last_on: [Option<usize>; TIER_COUNT] = [None; TIER_COUNT];
            let mut leaves = tensor.is_model_output;
            for &c in &tensor.consumers {
                if c >= n {
                    return Evaluation::invalid();
                }
                let ct = usize::from(tier[c]);
                max_consumer = Some(max_consumer.map_or(ct, |q| q.max(ct)));
                last_on[ct] = Some(last_on[ct].map_or(self.pos[c], |l| l.max(self.pos[c])));
                if tensor.producer.is_some() {
                    if ct < producer_tier {
                        ev.monotone = false;
                    }
                    if ct != producer_tier {
                        leaves = true;
                    }
                }
            }
            // Upward: every hop (a, b) with producer_tier <= a and b <= max consumer tier.
            if let Some(q) = max_consumer {
                for k in 1..chain_len {
                    let (a, b) = (chain[k - 1], chain[k]);
                    if producer_tier <= a && b <= q {
                        ev.latency_ms += bytes * problem.latency.hop[a][b].up_per_byte;
                        ev.device_energy_mj += bytes * problem.energy.hop[a][b].up_per_byte;
                    }
                }
            }
            // Model outputs return to the device over every hop below the producer.
            if tensor.is_model_output {
                for k in 1..chain_len {
                    let (a, b) = (chain[k - 1], chain[k]);
                    if b <= producer_tier {
                        ev.latency_ms += bytes * problem.latency.hop[a][b].down_per_byte;
                        ev.device_energy_mj += bytes * problem.energy.hop[a][b].down_per_byte;
                    }
                }
            }
            // Live ranges.
            let home = tensor.producer.map(|u| (producer_tier, self.pos[u]));
            if let Some((pt, start)) = home {
                let end = if leaves {
                    tier_len[pt] - 1
                } else {
                    last_on[pt].map_or(start, |l| l.max(start))
                };
                self.diff[pt][start] += bytes;
                self.diff[pt][end + 1] -= bytes;
            }
            for (t, last) in last_on.iter().enumerate() {
                if let Some(last) = *last
                    && home.is_none_or(|(pt, _)| pt != t)
                {
                    self.diff[t][0] += bytes;
                    self.diff[t][last + 1] -= bytes;
                }
            }
        }
        for t in 0..TIER_COUNT {
            if !ev.used[t] {
                continue;
            }
            let mut live = 0.0;
            let mut peak = 0.0_f64;
            for d in &self.diff[t][..tier_len[t]] {
                live += d;
                peak = peak.max(live);
            }
            ev.memory_bytes[t] = ev.param_bytes[t] + peak;
        }
        ev
    }
}
