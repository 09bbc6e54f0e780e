//! Exact minimisation over placements whose labels come from a fixed tier subset `S`,
//! charging communication with `S`'s chain, by one minimum cut (Ishikawa construction).
//!
//! Chain `C = [0] ++ (S \ {0})` in increasing order, positions `0..=m`. Labels are the chain
//! positions `j_min..=m` (`j_min = 0` when the device is in `S`, else 1). For every node `v`
//! and threshold `k` in `j_min+1..=m` there is a binary variable `b(v,k) = [pos(v) >= k]`,
//! represented by "node on the source side". Arc `u -> w` of capacity `c` is paid when
//! `u` is on the source side and `w` on the sink side, i.e. `b(u)=1, b(w)=0`.
//!
//! * Unary costs (node cost of the label's tier, plus the return trip of model outputs the node
//!   produces, plus the upward trip of model inputs whose only consumer is the node), shifted to
//!   be non-negative: the chain `s -> b(v,k1) -> b(v,k2) -> t` with capacities `f(l0), f(l1),
//!   f(l2)` and infinite reverse arcs (threshold ordering `b(v,k+1) <= b(v,k)`). Exactly one
//!   forward arc is cut: the one of the chosen label.
//! * Monotonicity: for every tensor, producer `p`, consumer `c`, threshold `k`: infinite arc
//!   `b(p,k) -> b(c,k)` (forbids `b(p,k)=1, b(c,k)=0`).
//! * Upward traffic: a tensor crosses hop `k-1 -> k` iff `b(p,k)=0` and some consumer has
//!   `b(c,k)=1`, cost `w_k = bytes * up_k`. With one consumer this is the reverse capacity
//!   `w_k` of the monotonicity pair (`b(c,k) -> b(p,k)`). With several consumers an auxiliary
//!   node `y_k` ("some consumer >= k") gets infinite arcs `b(c,k) -> y_k` (so `y_k >= b(c,k)`)
//!   and the arc `y_k -> b(p,k)` of capacity `w_k` (its infinite reverse arc only restates
//!   `b(p,k) <= b(c,k) <= y_k`). A minimum cut puts `y_k` on the sink side unless forced, so
//!   `y_k` is the OR of the consumers' bits and the tensor pays `w_k` once per hop, however many
//!   consumers cross it. Model inputs have `b(p,k) = 0`: the arc goes `y_k -> t` (or is unary
//!   when the input has a single consumer).
//!
//! Constant terms (fixed hop costs, hops below the first label) are left out: callers re-evaluate
//! the returned placement with the true cost function.

use super::maxflow::FlowNetwork;
use super::{HopCost, Prepared, TIER_COUNT};

/// Node and hop costs of one (possibly combined) cost layer. `INFINITY` = node not allowed.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub node_cost: Vec<[f64; TIER_COUNT]>,
    pub hop: [[HopCost; TIER_COUNT]; TIER_COUNT],
}

/// The chain of a tier subset and its label positions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chain {
    /// Chain tiers; `tiers[..len]` is meaningful.
    pub tiers: [u8; TIER_COUNT],
    pub len: usize,
    /// First label position (0 when the device is in the subset, else 1).
    pub first_label: usize,
}

impl Chain {
    /// Chain of the non-empty subset `mask` (bit t = tier t).
    pub(crate) fn of_subset(mask: u8) -> Chain {
        let mut tiers = [0u8; TIER_COUNT];
        let mut len = 1;
        for t in 1..TIER_COUNT {
            if mask & (1 << t) != 0 {
                tiers[len] = t as u8;
                len += 1;
            }
        }
        Chain {
            tiers,
            len,
            first_label: if mask & 1 != 0 { 0 } else { 1 },
        }
    }

    fn hop(&self, layer: &Layer, k: usize) -> HopCost {
        layer.hop[usize::from(self.tiers[k - 1])][usize::from(self.tiers[k])]
    }

    /// Sum of the fixed costs of the chain's hops.
    pub(crate) fn fixed_cost(&self, layer: &Layer) -> f64 {
        (1..self.len).map(|k| self.hop(layer, k).fixed).sum()
    }
}

/// A lower bound on the cost (under the chain of `mask`) of every placement labelled from `mask`.
pub(crate) fn subset_lower_bound(prep: &Prepared, layer: &Layer, mask: u8) -> f64 {
    let chain = Chain::of_subset(mask);
    let mut bound = chain.fixed_cost(layer);
    for costs in &layer.node_cost {
        let mut best = f64::INFINITY;
        for (t, &c) in costs.iter().enumerate() {
            if mask & (1 << t) != 0 {
                best = best.min(c);
            }
        }
        bound += best;
    }
    if chain.first_label == 1 && chain.len > 1 {
        let first = chain.hop(layer, 1);
        bound += prep.input_bytes_with_consumers * first.up_per_byte;
        bound += prep.output_bytes.iter().sum::<f64>() * first.down_per_byte;
    }
    bound
}

/// Reusable buffers for [`CutSolver::solve_subset`].
#[derive(Debug, Default)]
pub(crate) struct CutSolver {
    net: FlowNetwork,
    unary: Vec<[f64; TIER_COUNT]>,
}

impl CutSolver {
    /// Minimises the chain-of-`mask` cost over monotone placements labelled from `mask`.
    /// Returns `None` when no such placement has finite cost.
    pub(crate) fn solve_subset(
        &mut self,
        prep: &Prepared,
        layer: &Layer,
        mask: u8,
    ) -> Option<Vec<u8>> {
        let n = layer.node_cost.len();
        let chain = Chain::of_subset(mask);
        let labels = chain.len - chain.first_label;
        let label_tier = |l: usize| chain.tiers[chain.first_label + l];
        if labels == 1 {
            let t = label_tier(0);
            let ok = layer
                .node_cost
                .iter()
                .all(|c| c[usize::from(t)].is_finite());
            return ok.then(|| vec![t; n]);
        }
        let thresholds = labels - 1;
        // up[i], down_prefix[l]: per threshold i (chain position first_label + 1 + i).
        let mut up = [0.0; TIER_COUNT];
        let mut down_prefix = [0.0; TIER_COUNT];
        let mut up_prefix = [0.0; TIER_COUNT];
        let mut below_first_down = 0.0;
        for k in 1..=chain.first_label {
            below_first_down += chain.hop(layer, k).down_per_byte;
        }
        down_prefix[0] = below_first_down;
        for i in 0..thresholds {
            let hop = chain.hop(layer, chain.first_label + 1 + i);
            up[i] = hop.up_per_byte;
            down_prefix[i + 1] = down_prefix[i] + hop.down_per_byte;
            up_prefix[i + 1] = up_prefix[i] + hop.up_per_byte;
        }

        // Unary terms.
        self.unary.clear();
        for (v, costs) in layer.node_cost.iter().enumerate() {
            let mut f = [f64::INFINITY; TIER_COUNT];
            for (l, slot) in f.iter_mut().enumerate().take(labels) {
                let c = costs[usize::from(label_tier(l))];
                *slot = c
                    + prep.output_bytes[v] * down_prefix[l]
                    + prep.single_input_bytes[v] * up_prefix[l];
            }
            self.unary.push(f);
        }

        let var = |v: usize, i: usize| 2 + v * thresholds + i;
        let (s, t) = (0usize, 1usize);
        self.net.reset(2 + n * thresholds);
        for (v, f) in self.unary.iter().enumerate() {
            let lo = f[..labels].iter().copied().fold(f64::INFINITY, f64::min);
            if !lo.is_finite() {
                return None;
            }
            self.net.add_edge(s, var(v, 0), f[0] - lo, 0.0);
            for i in 0..thresholds - 1 {
                self.net
                    .add_edge(var(v, i), var(v, i + 1), f[i + 1] - lo, f64::INFINITY);
            }
            self.net
                .add_edge(var(v, thresholds - 1), t, f[labels - 1] - lo, 0.0);
        }
        for tensor in &prep.tensors {
            let consumers = &tensor.consumers;
            match (tensor.producer, consumers.as_slice()) {
                (_, []) => {}
                (None, [_]) => {} // unary
                (Some(p), [c]) => {
                    for (i, &up_i) in up.iter().enumerate().take(thresholds) {
                        let w = tensor.bytes * up_i;
                        self.net.add_edge(var(p, i), var(*c, i), f64::INFINITY, w);
                    }
                }
                (producer, many) => {
                    for (i, &up_i) in up.iter().enumerate().take(thresholds) {
                        if let Some(p) = producer {
                            for &c in many {
                                self.net.add_edge(var(p, i), var(c, i), f64::INFINITY, 0.0);
                            }
                        }
                        let w = tensor.bytes * up_i;
                        if w <= 0.0 {
                            continue;
                        }
                        let y = self.net.add_node();
                        for &c in many {
                            self.net.add_edge(var(c, i), y, f64::INFINITY, 0.0);
                        }
                        match producer {
                            Some(p) => self.net.add_edge(y, var(p, i), w, f64::INFINITY),
                            None => self.net.add_edge(y, t, w, 0.0),
                        }
                    }
                }
            }
        }
        let cut = self.net.min_cut(s, t)?;
        let mut tier = Vec::with_capacity(n);
        for v in 0..n {
            let above = (0..thresholds)
                .filter(|&i| cut.on_source_side(var(v, i)))
                .count();
            tier.push(label_tier(above));
        }
        Some(tier)
    }
}
