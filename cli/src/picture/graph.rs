//! What a plan picture shows: the model's nodes (or, for large models, blocks of them), each on its tier, the
//! model's inputs and outputs, and the edges between them with the bytes that cross each tier boundary.
//! [`PlanGraph::from_plan`] builds it from a model, its analysis and a plan; [`PlanGraph::build`] from plain
//! data (what the unit tests use). `draw` turns it into SVG or DOT.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{Result, bail};
use strata_core::Tier;
use strata_planner::analyse::Analysis;
use strata_planner::model::{Model, Origin};
use strata_planner::plan::PlanFile;

/// Graphs with more nodes than this are drawn as blocks: maximal runs of nodes on one tier.
pub const COLLAPSE_ABOVE: usize = 100;

/// Where a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    /// Folded into constants by the planner: runs on no tier.
    Folded,
    /// On this tier.
    Tier(Tier),
}

impl Place {
    /// The `data-tier` value: the tier's name, or `folded`.
    pub fn name(self) -> &'static str {
        match self {
            Place::Folded => "folded",
            Place::Tier(t) => t.name(),
        }
    }

    /// Fill colour.
    pub fn colour(self) -> &'static str {
        match self {
            Place::Folded => super::FOLDED_COLOUR,
            Place::Tier(t) => super::tier_colour(t),
        }
    }

    /// Text colour on the fill.
    pub fn text_colour(self) -> &'static str {
        match self {
            Place::Folded => "#1A1A1A",
            Place::Tier(t) => super::tier_text_colour(t),
        }
    }
}

/// One model node, as the picture needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// The node's (unique) name.
    pub name: String,
    /// Its operator.
    pub op: String,
    /// Tensors it reads.
    pub inputs: Vec<String>,
    /// Tensors it writes.
    pub outputs: Vec<String>,
    /// Where it runs.
    pub place: Place,
}

/// The model, reduced to what the picture needs. Nodes in topological order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelSpec {
    /// Nodes, in topological order, each on its place.
    pub nodes: Vec<NodeSpec>,
    /// Model inputs (not initializers).
    pub inputs: Vec<String>,
    /// Model outputs.
    pub outputs: Vec<String>,
    /// Bytes of each tensor (absent: unknown, drawn as 0).
    pub tensor_bytes: HashMap<String, u64>,
    /// Tensors folded into constants: never sent, drawn without bytes.
    pub constants: HashSet<String>,
}

/// What one box of the picture is.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitKind {
    /// One model node.
    Node,
    /// A run of nodes on one place (large models).
    Block,
    /// A model input (it starts on the device).
    Input(String),
    /// A model output (it ends on the device).
    Output(String),
}

/// One box of the picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Node, block or terminal.
    pub kind: UnitKind,
    /// Where it runs (terminals: the device).
    pub place: Place,
    /// Indices into [`ModelSpec::nodes`] (one for a node, none for a terminal).
    pub members: Vec<usize>,
}

/// An arrow between two units.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    /// Index into [`PlanGraph::units`].
    pub from: usize,
    /// Index into [`PlanGraph::units`].
    pub to: usize,
    /// The distinct tensors it carries.
    pub tensors: Vec<String>,
    /// Their bytes together (constants count 0).
    pub bytes: u64,
    /// It crosses from one tier to another (terminals count as the device).
    pub boundary: bool,
    /// Every tensor it carries is a folded constant (nothing is sent).
    pub constant: bool,
}

/// The legend: a title, lines of figures, and the tiers with their names in the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Legend {
    /// First line, bold.
    pub title: String,
    /// Further lines (predicted latency and energy, privacy, stages).
    pub lines: Vec<String>,
    /// Each tier the plan uses, with its description.
    pub tiers: Vec<(Tier, String)>,
}

/// A plan ready to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanGraph {
    /// The model.
    pub model: ModelSpec,
    /// Boxes, in an order that puts every producer before its consumers (but for reads by folded nodes).
    pub units: Vec<Unit>,
    /// Arrows.
    pub edges: Vec<Edge>,
    /// Whether nodes were collapsed into blocks.
    pub collapsed: bool,
    /// The legend.
    pub legend: Legend,
}

impl PlanGraph {
    /// The picture of `plan` for `model` (whose analysis gives tensor sizes and folded nodes). `tier_names`
    /// describes the cluster's tiers for the legend (may be empty).
    pub fn from_plan(
        model: &Model,
        analysis: &Analysis,
        plan: &PlanFile,
        tier_names: &[(Tier, String)],
    ) -> Result<PlanGraph> {
        let mut tier_of: HashMap<&str, Tier> = HashMap::new();
        for stage in &plan.stages {
            for name in &stage.node_names {
                tier_of.insert(name.as_str(), stage.tier);
            }
        }
        let mut nodes = Vec::with_capacity(model.nodes.len());
        for (v, node) in model.nodes.iter().enumerate() {
            let place = match tier_of.get(node.name.as_str()) {
                Some(&t) => Place::Tier(t),
                None if analysis.is_folded(v) => Place::Folded,
                None => bail!(
                    "node \"{}\" ({}) is in no stage of the plan: the plan is not for this model",
                    node.name,
                    node.op_type
                ),
            };
            nodes.push(NodeSpec {
                name: node.name.clone(),
                op: node.op_type.clone(),
                inputs: node.inputs.clone(),
                outputs: node.outputs.clone(),
                place,
            });
        }
        let inputs: Vec<String> = model
            .inputs
            .iter()
            .filter(|t| matches!(model.origins.get(*t), Some(Origin::Input)))
            .cloned()
            .collect();
        let tensor_bytes = analysis
            .tensors
            .keys()
            .map(|t| (t.clone(), analysis.tensor_bytes(t)))
            .collect();
        let spec = ModelSpec {
            nodes,
            inputs,
            outputs: model.outputs.clone(),
            tensor_bytes,
            constants: analysis.constants.keys().cloned().collect(),
        };

        let mut legend = Legend {
            title: format!(
                "{} — plan for {}",
                plan.model,
                plan.cluster.as_deref().unwrap_or("a manual split")
            ),
            ..Legend::default()
        };
        if let Some(p) = &plan.predicted {
            legend.lines.push(format!(
                "predicted: {:.2} ms end to end, {:.2} mJ on the device",
                p.latency_ms, p.device_energy_mj
            ));
        }
        let mut how = vec![format!("objective: {}", plan.objective)];
        if let Some(privacy) = plan.privacy {
            how.push(format!("privacy: {}", privacy.name()));
        }
        if let Some(ms) = plan.latency_budget_ms {
            how.push(format!("latency budget: {ms} ms"));
        }
        legend.lines.push(how.join(", "));
        for s in &plan.stages {
            legend.lines.push(format!(
                "stage {} on {}: {} nodes, {:.2} GFLOPs{}{}",
                s.index,
                s.tier,
                s.nodes,
                s.flops / 1e9,
                s.predicted_ms
                    .map_or(String::new(), |ms| format!(", {ms:.2} ms")),
                if s.bytes_in > 0 {
                    format!(", receives {}", super::human_bytes(s.bytes_in))
                } else {
                    String::new()
                }
            ));
        }
        let used: BTreeSet<Tier> = plan.stages.iter().map(|s| s.tier).collect();
        for t in used {
            let name = tier_names
                .iter()
                .find(|(tier, _)| *tier == t)
                .map_or(String::new(), |(_, n)| n.clone());
            legend.tiers.push((t, name));
        }
        Ok(PlanGraph::build(spec, legend, None))
    }

    /// The picture of `model`: one box per node, or blocks when `collapse` says so (`None`: when the model
    /// has more than [`COLLAPSE_ABOVE`] nodes).
    pub fn build(model: ModelSpec, legend: Legend, collapse: Option<bool>) -> PlanGraph {
        let collapsed = collapse.unwrap_or(model.nodes.len() > COLLAPSE_ABOVE);
        let mut units = Vec::new();
        for input in &model.inputs {
            units.push(Unit {
                kind: UnitKind::Input(input.clone()),
                place: Place::Tier(Tier::Device),
                members: Vec::new(),
            });
        }
        let mut unit_of = vec![0; model.nodes.len()];
        if collapsed {
            // Placements are monotone along every edge, so ordering the nodes by tier (stably) keeps them
            // topological; folded nodes go first, as one block. Then maximal runs of one place are blocks.
            let mut order: Vec<usize> = (0..model.nodes.len()).collect();
            order.sort_by_key(|&v| model.nodes[v].place);
            for v in order {
                let place = model.nodes[v].place;
                let extend = units
                    .last()
                    .is_some_and(|u: &Unit| u.kind == UnitKind::Block && u.place == place);
                if !extend {
                    units.push(Unit {
                        kind: UnitKind::Block,
                        place,
                        members: Vec::new(),
                    });
                }
                let last = units.len() - 1;
                units[last].members.push(v);
                unit_of[v] = last;
            }
        } else {
            for (v, node) in model.nodes.iter().enumerate() {
                unit_of[v] = units.len();
                units.push(Unit {
                    kind: UnitKind::Node,
                    place: node.place,
                    members: vec![v],
                });
            }
        }
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, input) in model.inputs.iter().enumerate() {
            producer.insert(input.as_str(), i);
        }
        for (v, node) in model.nodes.iter().enumerate() {
            for t in &node.outputs {
                producer.insert(t.as_str(), unit_of[v]);
            }
        }
        // (from, to) → distinct tensors, in first-seen order.
        let mut carried: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
        let mut add = |from: usize, to: usize, t: &str| {
            let list = carried.entry((from, to)).or_default();
            if !list.iter().any(|x| x == t) {
                list.push(t.to_string());
            }
        };
        for (v, node) in model.nodes.iter().enumerate() {
            for t in &node.inputs {
                if let Some(&from) = producer.get(t.as_str())
                    && from != unit_of[v]
                {
                    add(from, unit_of[v], t);
                }
            }
        }
        for output in &model.outputs {
            if let Some(&from) = producer.get(output.as_str()) {
                let to = units.len();
                units.push(Unit {
                    kind: UnitKind::Output(output.clone()),
                    place: Place::Tier(Tier::Device),
                    members: Vec::new(),
                });
                add(from, to, output);
            }
        }
        let edges = carried
            .into_iter()
            .map(|((from, to), tensors)| {
                let constant = tensors.iter().all(|t| model.constants.contains(t));
                let bytes = tensors
                    .iter()
                    .filter(|t| !model.constants.contains(*t))
                    .map(|t| model.tensor_bytes.get(t).copied().unwrap_or(0))
                    .sum();
                let boundary = match (units[from].place, units[to].place) {
                    (Place::Tier(a), Place::Tier(b)) => a != b && !constant,
                    _ => false,
                };
                Edge {
                    from,
                    to,
                    tensors,
                    bytes,
                    boundary,
                    constant,
                }
            })
            .collect();
        PlanGraph {
            model,
            units,
            edges,
            collapsed,
            legend,
        }
    }

    /// The block's operator histogram, most frequent first (ties by name): `[("Conv", 12), ("Relu", 12)]`.
    pub fn histogram(&self, unit: &Unit) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for &v in &unit.members {
            *counts.entry(self.model.nodes[v].op.as_str()).or_default() += 1;
        }
        let mut list: Vec<(String, usize)> = counts
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        list
    }

    /// Layer (row) of every unit: the longest path from a source, over edges that go forward in unit order.
    pub fn layers(&self) -> Vec<usize> {
        let mut layer = vec![0usize; self.units.len()];
        let mut incoming: Vec<Vec<usize>> = vec![Vec::new(); self.units.len()];
        for e in &self.edges {
            if e.from < e.to {
                incoming[e.to].push(e.from);
            }
        }
        for u in 0..self.units.len() {
            layer[u] = incoming[u].iter().map(|&p| layer[p] + 1).max().unwrap_or(0);
        }
        // Outputs on the last row, so they read as the end of the picture.
        let last = layer.iter().copied().max().unwrap_or(0);
        for (u, unit) in self.units.iter().enumerate() {
            if matches!(unit.kind, UnitKind::Output(_)) {
                layer[u] = last;
            }
        }
        layer
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `x → a → b → c → y` with `a` on the device, `b`, `c` on the cloud, and a folded `s` feeding `c`.
    pub(crate) fn chain() -> ModelSpec {
        let node = |name: &str, op: &str, inputs: &[&str], outputs: &[&str], place| NodeSpec {
            name: name.into(),
            op: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            place,
        };
        ModelSpec {
            nodes: vec![
                node("a<&>", "Conv", &["x"], &["ta"], Place::Tier(Tier::Device)),
                node("s", "Shape", &["x"], &["ts"], Place::Folded),
                node("b", "Relu", &["ta"], &["tb"], Place::Tier(Tier::Cloud)),
                node(
                    "c",
                    "Reshape",
                    &["tb", "ts"],
                    &["y"],
                    Place::Tier(Tier::Cloud),
                ),
            ],
            inputs: vec!["x".into()],
            outputs: vec!["y".into()],
            tensor_bytes: [
                ("x", 600),
                ("ta", 4096),
                ("tb", 4096),
                ("y", 40),
                ("ts", 16),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            constants: ["ts".to_string()].into_iter().collect(),
        }
    }

    #[test]
    fn picture_graph_marks_boundaries_with_the_bytes_that_cross_them() {
        let g = PlanGraph::build(chain(), Legend::default(), Some(false));
        assert!(!g.collapsed);
        let boundary: Vec<&Edge> = g.edges.iter().filter(|e| e.boundary).collect();
        // a (device) → b (cloud) carries ta; c (cloud) → the output y (device) carries y.
        assert_eq!(boundary.len(), 2, "{:?}", g.edges);
        assert_eq!(boundary[0].tensors, vec!["ta".to_string()]);
        assert_eq!(boundary[0].bytes, 4096);
        assert_eq!(boundary[1].bytes, 40);
        // The folded constant's edge is drawn, sends nothing, and is no boundary.
        let constant: Vec<&Edge> = g.edges.iter().filter(|e| e.constant).collect();
        assert_eq!(constant.len(), 1);
        assert_eq!(constant[0].bytes, 0);
    }

    #[test]
    fn picture_graph_collapses_runs_of_one_tier_into_blocks_holding_every_node_once() {
        let g = PlanGraph::build(chain(), Legend::default(), Some(true));
        let blocks: Vec<&Unit> = g
            .units
            .iter()
            .filter(|u| u.kind == UnitKind::Block)
            .collect();
        let places: Vec<Place> = blocks.iter().map(|u| u.place).collect();
        assert_eq!(
            places,
            vec![
                Place::Folded,
                Place::Tier(Tier::Device),
                Place::Tier(Tier::Cloud)
            ]
        );
        let mut members: Vec<usize> = blocks.iter().flat_map(|u| u.members.clone()).collect();
        members.sort_unstable();
        assert_eq!(members, vec![0, 1, 2, 3]);
        assert_eq!(
            g.histogram(blocks[2]),
            vec![("Relu".to_string(), 1), ("Reshape".to_string(), 1)]
        );
        // Device block → cloud block carries ta only once, whichever cloud nodes read it.
        let cross: Vec<&Edge> = g
            .edges
            .iter()
            .filter(|e| e.boundary && g.units[e.to].kind == UnitKind::Block)
            .collect();
        assert_eq!(cross.len(), 1);
        assert_eq!(cross[0].bytes, 4096);
    }

    #[test]
    fn picture_graph_layers_put_producers_above_consumers_and_outputs_last() {
        let g = PlanGraph::build(chain(), Legend::default(), Some(false));
        let layer = g.layers();
        for e in &g.edges {
            assert!(layer[e.from] < layer[e.to], "{e:?} {layer:?}");
        }
        let last = *layer.iter().max().expect("layers");
        let output = g
            .units
            .iter()
            .position(|u| matches!(u.kind, UnitKind::Output(_)))
            .expect("an output terminal");
        assert_eq!(layer[output], last);
    }
}
