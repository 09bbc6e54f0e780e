//! Minimum s-t cut on `f64` capacities: highest-label push-relabel (phase one only) with
//! global relabelling.
//!
//! Infinite capacities (`f64::INFINITY`) encode hard constraints. Before pushing any flow, the
//! nodes reachable from `s` through infinite arcs are merged into the source and the nodes that
//! reach `t` through infinite arcs into the sink; if the two sets meet, the minimum cut is
//! infinite and [`FlowNetwork::min_cut`] returns `None`. After the merge every arc leaving the
//! source set is finite, so every excess stays finite. Push-relabel suits these graphs (long
//! chains of tensors along the topological order) far better than augmenting paths: excess from
//! many nodes merges and travels together. All loops are iterative.

/// Residual capacities at or below this fraction of the largest finite capacity count as zero.
const RELATIVE_TOLERANCE: f64 = 1e-13;
/// Global relabelling runs after this much relabel work per node (plus one pass over the arcs).
const GLOBAL_RELABEL_FREQUENCY: usize = 6;

/// A flow network; arcs are added in pairs (forward and reverse capacity).
#[derive(Debug, Default)]
pub(crate) struct FlowNetwork {
    node_count: usize,
    /// (tail, head, capacity tail->head, capacity head->tail)
    edges: Vec<(u32, u32, f64, f64)>,
    // CSR residual graph, rebuilt by `min_cut`.
    start: Vec<usize>,
    to: Vec<u32>,
    cap: Vec<f64>,
    rev: Vec<usize>,
    // Push-relabel state.
    label: Vec<usize>,
    excess: Vec<f64>,
    current: Vec<usize>,
    /// 0 = free, 1 = merged into the source, 2 = merged into the sink.
    side: Vec<u8>,
    /// Active nodes per label (may hold stale entries, skipped when popped).
    buckets: Vec<Vec<u32>>,
    /// All free nodes per label below `n`, as intrusive doubly-linked lists (gap heuristic).
    layer_head: Vec<u32>,
    layer_next: Vec<u32>,
    layer_prev: Vec<u32>,
    /// Highest label of a node in the layer lists.
    max_layer: usize,
    queue: Vec<u32>,
    source_side: Vec<bool>,
}

/// Source side of a minimum cut.
#[derive(Debug)]
pub(crate) struct MinCut<'a> {
    source_side: &'a [bool],
}

impl MinCut<'_> {
    /// Whether node `v` lies on the source side.
    pub(crate) fn on_source_side(&self, v: usize) -> bool {
        self.source_side.get(v).copied().unwrap_or(false)
    }
}

const NONE: u32 = u32::MAX;
const FREE: u8 = 0;
const SOURCE: u8 = 1;
const SINK: u8 = 2;

impl FlowNetwork {
    /// Clears the network and sets its node count (node ids are `0..node_count`).
    pub(crate) fn reset(&mut self, node_count: usize) {
        self.node_count = node_count;
        self.edges.clear();
    }

    /// Adds a new node and returns its id.
    pub(crate) fn add_node(&mut self) -> usize {
        self.node_count += 1;
        self.node_count - 1
    }

    /// Adds the arc pair `u -> v` (capacity `cap`) and `v -> u` (capacity `rev_cap`).
    /// Zero-capacity pairs and self loops are dropped.
    pub(crate) fn add_edge(&mut self, u: usize, v: usize, cap: f64, rev_cap: f64) {
        if u == v || (cap <= 0.0 && rev_cap <= 0.0) {
            return;
        }
        self.edges
            .push((u as u32, v as u32, cap.max(0.0), rev_cap.max(0.0)));
    }

    fn build_csr(&mut self) {
        let n = self.node_count;
        self.start.clear();
        self.start.resize(n + 1, 0);
        for &(u, v, _, _) in &self.edges {
            self.start[u as usize + 1] += 1;
            self.start[v as usize + 1] += 1;
        }
        for i in 0..n {
            self.start[i + 1] += self.start[i];
        }
        let arcs = self.start[n];
        self.to.clear();
        self.to.resize(arcs, 0);
        self.cap.clear();
        self.cap.resize(arcs, 0.0);
        self.rev.clear();
        self.rev.resize(arcs, 0);
        self.current.clear();
        self.current.extend_from_slice(&self.start[..n]);
        for &(u, v, c, rc) in &self.edges {
            let (u, v) = (u as usize, v as usize);
            let a = self.current[u];
            self.current[u] += 1;
            let b = self.current[v];
            self.current[v] += 1;
            self.to[a] = v as u32;
            self.cap[a] = c;
            self.rev[a] = b;
            self.to[b] = u as u32;
            self.cap[b] = rc;
            self.rev[b] = a;
        }
    }

    /// Marks with `mark` every node joined to `root` by infinite arcs (forward from the root
    /// when `forward`, else backward into it). Returns false if it meets a node marked otherwise.
    fn close_infinite(&mut self, root: usize, mark: u8, forward: bool) -> bool {
        self.queue.clear();
        self.side[root] = mark;
        self.queue.push(root as u32);
        let mut head = 0;
        while let Some(&u) = self.queue.get(head) {
            head += 1;
            let u = u as usize;
            for a in self.start[u]..self.start[u + 1] {
                let v = self.to[a] as usize;
                let arc = if forward { a } else { self.rev[a] };
                if self.cap[arc] == f64::INFINITY {
                    if self.side[v] == FREE {
                        self.side[v] = mark;
                        self.queue.push(v as u32);
                    } else if self.side[v] != mark {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn layer_insert(&mut self, v: usize, label: usize) {
        let head = self.layer_head[label];
        self.layer_next[v] = head;
        self.layer_prev[v] = NONE;
        if head != NONE {
            self.layer_prev[head as usize] = v as u32;
        }
        self.layer_head[label] = v as u32;
        self.max_layer = self.max_layer.max(label);
    }

    fn layer_remove(&mut self, v: usize, label: usize) {
        let (prev, next) = (self.layer_prev[v], self.layer_next[v]);
        if prev == NONE {
            self.layer_head[label] = next;
        } else {
            self.layer_next[prev as usize] = next;
        }
        if next != NONE {
            self.layer_prev[next as usize] = prev;
        }
    }

    /// Relabels `u` (a free node with a label below `n`) to one more than its lowest residual
    /// neighbour. If `u` was the last node of its label, no node above that label can reach the
    /// sink any more (gap heuristic): they and `u` all get label `n`.
    fn relabel(&mut self, u: usize, eps: f64) {
        let n = self.node_count;
        let old = self.label[u];
        self.layer_remove(u, old);
        if self.layer_head[old] == NONE {
            for l in old + 1..=self.max_layer {
                let mut v = self.layer_head[l];
                while v != NONE {
                    self.label[v as usize] = n;
                    v = self.layer_next[v as usize];
                }
                self.layer_head[l] = NONE;
            }
            self.max_layer = old.saturating_sub(1);
            self.label[u] = n;
            return;
        }
        let mut lowest = n;
        for a in self.start[u]..self.start[u + 1] {
            if self.cap[a] > eps {
                lowest = lowest.min(self.label[self.to[a] as usize] + 1);
            }
        }
        self.label[u] = lowest.min(n);
        if lowest < n {
            self.layer_insert(u, lowest);
        }
    }

    /// Exact distance-to-sink labels by reverse breadth-first search; rebuilds the buckets.
    fn global_relabel(&mut self, eps: f64) -> usize {
        let n = self.node_count;
        for v in 0..n {
            self.label[v] = n;
        }
        self.queue.clear();
        for v in 0..n {
            if self.side[v] == SINK {
                self.label[v] = 0;
                self.queue.push(v as u32);
            }
        }
        let mut head = 0;
        while let Some(&v) = self.queue.get(head) {
            head += 1;
            let v = v as usize;
            let next = self.label[v] + 1;
            for a in self.start[v]..self.start[v + 1] {
                let u = self.to[a] as usize;
                if self.label[u] == n && self.side[u] == FREE && self.cap[self.rev[a]] > eps {
                    self.label[u] = next;
                    self.queue.push(u as u32);
                }
            }
        }
        for bucket in &mut self.buckets {
            bucket.clear();
        }
        self.layer_head.clear();
        self.layer_head.resize(n.max(1), NONE);
        self.layer_next.resize(n, NONE);
        self.layer_prev.resize(n, NONE);
        self.max_layer = 0;
        let mut highest = 0;
        for v in 0..n {
            self.current[v] = self.start[v];
            if self.side[v] == FREE && self.label[v] < n {
                self.layer_insert(v, self.label[v]);
            }
            if self.side[v] == FREE && self.label[v] < n && self.excess[v] > eps {
                self.buckets[self.label[v]].push(v as u32);
                highest = highest.max(self.label[v]);
            }
        }
        highest
    }

    /// Computes a minimum `s`-`t` cut, or `None` when it is infinite (a path of infinite arcs
    /// joins `s` and `t`).
    pub(crate) fn min_cut(&mut self, s: usize, t: usize) -> Option<MinCut<'_>> {
        // Push-relabel routes all of the source's capacity somewhere; when the sink side has less
        // terminal capacity, solve the reversed network from the sink instead (the cut (A, B) of
        // the reversed network is the cut (B, A) of the original, with the same capacity).
        let finite = |c: f64| if c.is_finite() { c } else { 0.0 };
        let (mut out_of_s, mut into_t) = (0.0, 0.0);
        for &(u, v, c, rc) in &self.edges {
            let (u, v) = (u as usize, v as usize);
            if u == s {
                out_of_s += finite(c);
            }
            if v == s {
                out_of_s += finite(rc);
            }
            if v == t {
                into_t += finite(c);
            }
            if u == t {
                into_t += finite(rc);
            }
        }
        let reversed = into_t < out_of_s;
        if reversed {
            for e in &mut self.edges {
                std::mem::swap(&mut e.2, &mut e.3);
            }
        }
        let (s, t) = if reversed { (t, s) } else { (s, t) };
        self.build_csr();
        let n = self.node_count;
        let max_finite = self
            .cap
            .iter()
            .copied()
            .filter(|c| c.is_finite())
            .fold(0.0_f64, f64::max);
        let eps = (max_finite * RELATIVE_TOLERANCE).max(f64::MIN_POSITIVE);

        self.side.clear();
        self.side.resize(n, FREE);
        if !self.close_infinite(s, SOURCE, true) || !self.close_infinite(t, SINK, false) {
            return None;
        }

        // Initial preflow: saturate every arc leaving the source set (all finite).
        self.excess.clear();
        self.excess.resize(n, 0.0);
        for u in 0..n {
            if self.side[u] != SOURCE {
                continue;
            }
            for a in self.start[u]..self.start[u + 1] {
                let v = self.to[a] as usize;
                let c = self.cap[a];
                if self.side[v] != SOURCE && c > 0.0 {
                    self.cap[a] = 0.0;
                    self.cap[self.rev[a]] += c;
                    self.excess[v] += c;
                }
            }
        }

        self.label.clear();
        self.label.resize(n, n);
        self.buckets.resize_with(n.max(1), Vec::new);
        let relabel_budget = GLOBAL_RELABEL_FREQUENCY * n + self.to.len();
        let mut work = 0usize;
        let mut highest = self.global_relabel(eps);
        loop {
            // Highest active label.
            let mut u = None;
            loop {
                if let Some(v) = self.buckets[highest].pop() {
                    u = Some(v as usize);
                    break;
                }
                if highest == 0 {
                    break;
                }
                highest -= 1;
            }
            let Some(u) = u else { break };
            if self.label[u] >= n || self.excess[u] <= eps {
                continue;
            }
            // Discharge u.
            let end = self.start[u + 1];
            while self.excess[u] > eps {
                if self.current[u] == end {
                    work += end - self.start[u] + 12;
                    self.relabel(u, eps);
                    self.current[u] = self.start[u];
                    if self.label[u] >= n {
                        break;
                    }
                    continue;
                }
                let a = self.current[u];
                let v = self.to[a] as usize;
                if self.cap[a] > eps && self.label[u] == self.label[v] + 1 {
                    let delta = self.excess[u].min(self.cap[a]);
                    self.cap[a] -= delta;
                    let r = self.rev[a];
                    self.cap[r] += delta;
                    self.excess[u] -= delta;
                    let was_active = self.excess[v] > eps;
                    self.excess[v] += delta;
                    if self.side[v] == FREE && !was_active && self.excess[v] > eps {
                        // u may have been relabelled above `highest` during this discharge.
                        self.buckets[self.label[v]].push(v as u32);
                        highest = highest.max(self.label[v]);
                    }
                    if self.cap[a] <= eps {
                        self.current[u] += 1;
                    }
                } else {
                    self.current[u] += 1;
                }
            }
            if self.excess[u] > eps && self.label[u] < n {
                self.buckets[self.label[u]].push(u as u32);
                highest = highest.max(self.label[u]);
            }
            if work > relabel_budget {
                work = 0;
                highest = self.global_relabel(eps);
            }
        }

        // Sink side: nodes that can still reach the sink set in the residual graph.
        self.source_side.clear();
        self.source_side.resize(n, true);
        self.queue.clear();
        for v in 0..n {
            if self.side[v] == SINK {
                self.source_side[v] = false;
                self.queue.push(v as u32);
            }
        }
        let mut head = 0;
        while let Some(&v) = self.queue.get(head) {
            head += 1;
            let v = v as usize;
            for a in self.start[v]..self.start[v + 1] {
                let u = self.to[a] as usize;
                if self.source_side[u] && self.side[u] != SOURCE && self.cap[self.rev[a]] > eps {
                    self.source_side[u] = false;
                    self.queue.push(u as u32);
                }
            }
        }
        if reversed {
            for side in &mut self.source_side {
                *side = !*side;
            }
        }
        Some(MinCut {
            source_side: &self.source_side,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut_value(edges: &[(usize, usize, f64)], side: &MinCut<'_>) -> f64 {
        edges
            .iter()
            .filter(|&&(u, v, _)| side.on_source_side(u) && !side.on_source_side(v))
            .map(|&(_, _, c)| c)
            .sum()
    }

    #[test]
    fn small_cut() {
        let edges = [
            (0, 2, 3.0),
            (0, 3, 2.0),
            (2, 3, 5.0),
            (2, 1, 2.0),
            (3, 1, 3.0),
        ];
        let mut g = FlowNetwork::default();
        g.reset(4);
        for &(u, v, c) in &edges {
            g.add_edge(u, v, c, 0.0);
        }
        let cut = g.min_cut(0, 1).expect("finite");
        assert!(cut.on_source_side(0));
        assert!(!cut.on_source_side(1));
        assert_eq!(cut_value(&edges, &cut), 5.0);
    }

    #[test]
    fn infinite_path_is_reported() {
        let mut g = FlowNetwork::default();
        g.reset(3);
        g.add_edge(0, 2, f64::INFINITY, 0.0);
        g.add_edge(2, 1, f64::INFINITY, 0.0);
        assert!(g.min_cut(0, 1).is_none());
    }

    #[test]
    fn infinite_arcs_are_never_cut() {
        // s -> a (1), a -> b (inf), b -> t (5), s -> b (1), a -> t (1): min cut 2 ({s} | rest)
        // or ... the infinite arc a -> b forbids a on the source side with b on the sink side.
        let mut g = FlowNetwork::default();
        g.reset(4);
        g.add_edge(0, 2, 4.0, 0.0);
        g.add_edge(2, 3, f64::INFINITY, 0.0);
        g.add_edge(3, 1, 1.0, 0.0);
        g.add_edge(2, 1, 1.0, 0.0);
        let cut = g.min_cut(0, 1).expect("finite");
        assert!(cut.on_source_side(2) && cut.on_source_side(3));
    }

    #[test]
    fn long_chain_does_not_recurse() {
        let n = 200_000;
        let mut g = FlowNetwork::default();
        g.reset(n);
        g.add_edge(0, 2, 1.0, 0.0);
        for v in 2..n - 1 {
            g.add_edge(v, v + 1, 2.0, 0.0);
        }
        g.add_edge(n - 1, 1, 5.0, 0.0);
        let cut = g.min_cut(0, 1).expect("finite");
        assert!(!cut.on_source_side(2));
    }

    /// Reference: Edmonds-Karp on a dense matrix (infinite capacities allowed).
    fn reference_max_flow(n: usize, edges: &[(usize, usize, f64, f64)], s: usize, t: usize) -> f64 {
        let mut cap = vec![vec![0.0f64; n]; n];
        for &(u, v, c, rc) in edges {
            cap[u][v] += c;
            cap[v][u] += rc;
        }
        let mut flow = 0.0;
        loop {
            let mut parent = vec![usize::MAX; n];
            parent[s] = s;
            let mut queue = std::collections::VecDeque::from([s]);
            while let Some(u) = queue.pop_front() {
                for v in 0..n {
                    if parent[v] == usize::MAX && cap[u][v] > 1e-12 {
                        parent[v] = u;
                        queue.push_back(v);
                    }
                }
            }
            if parent[t] == usize::MAX {
                return flow;
            }
            let mut b = f64::INFINITY;
            let mut v = t;
            while v != s {
                b = b.min(cap[parent[v]][v]);
                v = parent[v];
            }
            if b.is_infinite() {
                return f64::INFINITY;
            }
            let mut v = t;
            while v != s {
                let u = parent[v];
                cap[u][v] -= b;
                cap[v][u] += b;
                v = u;
            }
            flow += b;
        }
    }

    #[test]
    fn random_graphs_match_reference() {
        let mut seed = 0x1234_5678_9abc_def1_u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..400 {
            let n = 3 + (rnd() % 40) as usize;
            let m = (rnd() % (4 * n as u64)) as usize;
            let mut edges = Vec::new();
            for _ in 0..m {
                let u = (rnd() % n as u64) as usize;
                let v = (rnd() % n as u64) as usize;
                let pick = |r: u64| match r % 10 {
                    0 => f64::INFINITY,
                    1..=3 => 0.0,
                    _ => (r % 1000) as f64 / 100.0,
                };
                let (c, rc) = (pick(rnd()), pick(rnd()));
                edges.push((u, v, c, rc));
            }
            let mut g = FlowNetwork::default();
            g.reset(n);
            for &(u, v, c, rc) in &edges {
                g.add_edge(u, v, c, rc);
            }
            let expected = reference_max_flow(n, &edges, 0, 1);
            match g.min_cut(0, 1) {
                None => assert!(expected.is_infinite(), "case {case}: expected {expected}"),
                Some(cut) => {
                    assert!(cut.on_source_side(0) && !cut.on_source_side(1));
                    let value: f64 = edges
                        .iter()
                        .map(|&(u, v, c, rc)| {
                            let (su, sv) = (cut.on_source_side(u), cut.on_source_side(v));
                            if su && !sv {
                                c
                            } else if sv && !su {
                                rc
                            } else {
                                0.0
                            }
                        })
                        .sum();
                    assert!(
                        (value - expected).abs() <= 1e-9 * (1.0 + expected),
                        "case {case}: cut {value} vs max flow {expected}"
                    );
                }
            }
        }
    }
}
