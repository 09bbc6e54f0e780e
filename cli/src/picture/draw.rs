//! A [`PlanGraph`] as SVG (a layered layout of our own: rows by longest path from the inputs, each row ordered
//! by where its predecessors sit) or as Graphviz DOT (one cluster per tier; Graphviz lays it out).

use std::fmt::Write as _;

use super::graph::{Edge, Place, PlanGraph, Unit, UnitKind};
use super::{
    BOUNDARY_COLOUR, EDGE_COLOUR, FOLDED_COLOUR, IO_COLOUR, dot_string, human_bytes, svg_open,
    text_width, tier_colour, truncate, xml,
};

const MARGIN: f64 = 24.0;
const ROW_GAP: f64 = 44.0;
const COLUMN_GAP: f64 = 24.0;
const NODE_W: f64 = 168.0;
const NODE_H: f64 = 36.0;
const BLOCK_W: f64 = 300.0;
const LINE_H: f64 = 15.0;
const IO_H: f64 = 26.0;
/// Characters of a histogram line in a block.
const BLOCK_LINE_CHARS: usize = 46;
/// Histogram lines in a block before "… N more operators".
const BLOCK_LINES: usize = 4;

/// A unit's box on the canvas.
#[derive(Debug, Clone, Copy, Default)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Rect {
    fn centre_x(&self) -> f64 {
        self.x + self.w / 2.0
    }
    fn bottom(&self) -> f64 {
        self.y + self.h
    }
}

impl PlanGraph {
    /// The lines of text in a unit's box (the first one bold for blocks).
    fn unit_lines(&self, unit: &Unit) -> Vec<String> {
        match &unit.kind {
            UnitKind::Node => {
                let node = &self.model.nodes[unit.members[0]];
                vec![truncate(&node.name, 26), truncate(&node.op, 26)]
            }
            UnitKind::Block => {
                let mut lines = vec![format!(
                    "{}: {} node{}",
                    unit.place.name(),
                    unit.members.len(),
                    if unit.members.len() == 1 { "" } else { "s" }
                )];
                let histogram = self.histogram(unit);
                let mut line = String::new();
                let mut shown = 0;
                for (op, n) in &histogram {
                    let item = format!("{} ×{n}", truncate(op, 24));
                    if !line.is_empty()
                        && line.chars().count() + 2 + item.chars().count() > BLOCK_LINE_CHARS
                    {
                        if lines.len() == BLOCK_LINES {
                            break;
                        }
                        lines.push(std::mem::take(&mut line) + ",");
                    }
                    if !line.is_empty() {
                        line.push_str(", ");
                    }
                    line.push_str(&item);
                    shown += 1;
                }
                if !line.is_empty() {
                    lines.push(line);
                }
                if shown < histogram.len() {
                    lines.push(format!("… {} more operators", histogram.len() - shown));
                }
                lines
            }
            UnitKind::Input(t) => vec![format!("input {}", truncate(t, 28))],
            UnitKind::Output(t) => vec![format!("output {}", truncate(t, 28))],
        }
    }

    fn unit_size(&self, unit: &Unit) -> (f64, f64) {
        match unit.kind {
            UnitKind::Node => (NODE_W, NODE_H),
            UnitKind::Block => (BLOCK_W, 10.0 + LINE_H * self.unit_lines(unit).len() as f64),
            UnitKind::Input(_) | UnitKind::Output(_) => {
                let w = self
                    .unit_lines(unit)
                    .iter()
                    .map(|l| text_width(l, 11.0))
                    .fold(0.0, f64::max);
                ((w + 24.0).max(110.0), IO_H)
            }
        }
    }

    /// The legend's lines of text: (text, font size, bold).
    fn legend_lines(&self) -> Vec<(String, f64, bool)> {
        let mut lines = vec![(self.legend.title.clone(), 15.0, true)];
        for l in &self.legend.lines {
            lines.push((l.clone(), 12.0, false));
        }
        if self.collapsed {
            lines.push((
                format!(
                    "{} nodes: each block is a run of nodes on one tier (hover for its nodes)",
                    self.model.nodes.len()
                ),
                12.0,
                false,
            ));
        }
        lines
    }

    /// Swatches under the legend's lines: (fill, label).
    fn swatches(&self) -> Vec<(&'static str, String)> {
        let mut list: Vec<(&'static str, String)> = self
            .legend
            .tiers
            .iter()
            .map(|(t, name)| {
                let label = if name.is_empty() {
                    t.name().to_string()
                } else {
                    format!("{t}: {}", truncate(name, 72))
                };
                (tier_colour(*t), label)
            })
            .collect();
        if self.model.nodes.iter().any(|n| n.place == Place::Folded) {
            list.push((FOLDED_COLOUR, "folded at plan time (runs nowhere)".into()));
        }
        list
    }

    /// Positions of every unit, and the height of the legend above them.
    fn layout(&self) -> (Vec<Rect>, f64, f64, f64) {
        let legend_h = self.legend_lines().iter().map(|l| l.1 + 6.0).sum::<f64>()
            + 22.0 * (self.swatches().len() + 1) as f64
            + 16.0;
        let legend_w = self
            .legend_lines()
            .iter()
            .map(|(t, size, _)| text_width(t, *size))
            .chain(
                self.swatches()
                    .iter()
                    .map(|(_, l)| 30.0 + text_width(l, 12.0)),
            )
            .fold(0.0, f64::max);
        let layer = self.layers();
        let rows = layer.iter().copied().max().map_or(0, |m| m + 1);
        let mut rects: Vec<Rect> = self
            .units
            .iter()
            .map(|u| {
                let (w, h) = self.unit_size(u);
                Rect {
                    x: 0.0,
                    y: 0.0,
                    w,
                    h,
                }
            })
            .collect();
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); rows];
        for (u, &l) in layer.iter().enumerate() {
            members[l].push(u);
        }
        let row_w = |rects: &[Rect], row: &[usize]| {
            row.iter().map(|&u| rects[u].w).sum::<f64>()
                + COLUMN_GAP * row.len().saturating_sub(1) as f64
        };
        let content_w = members.iter().map(|r| row_w(&rects, r)).fold(0.0, f64::max);
        let width = content_w.max(legend_w) + 2.0 * MARGIN;
        let mut preds: Vec<Vec<usize>> = vec![Vec::new(); self.units.len()];
        for e in &self.edges {
            if layer[e.from] < layer[e.to] {
                preds[e.to].push(e.from);
            }
        }
        let mut y = MARGIN + legend_h;
        for row in &mut members {
            // Order the row by the mean position of each unit's predecessors (ties: unit order).
            let key = |u: usize| -> f64 {
                if preds[u].is_empty() {
                    f64::INFINITY
                } else {
                    preds[u].iter().map(|&p| rects[p].centre_x()).sum::<f64>()
                        / preds[u].len() as f64
                }
            };
            let mut keyed: Vec<(f64, usize)> = row.iter().map(|&u| (key(u), u)).collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            *row = keyed.into_iter().map(|(_, u)| u).collect();
            let mut x = (width - row_w(&rects, row)) / 2.0;
            let h = row.iter().map(|&u| rects[u].h).fold(0.0, f64::max);
            for &u in row.iter() {
                rects[u].x = x;
                rects[u].y = y + (h - rects[u].h) / 2.0;
                x += rects[u].w + COLUMN_GAP;
            }
            y += h + ROW_GAP;
        }
        let height = y - ROW_GAP + MARGIN;
        (rects, legend_h, width, height)
    }

    /// The picture as a standalone SVG document.
    pub fn svg(&self) -> String {
        let (rects, _, width, height) = self.layout();
        let mut out = String::new();
        svg_open(&mut out, width, height, &self.legend.title);
        self.svg_legend(&mut out);
        out.push_str("<g class=\"edges\" fill=\"none\">\n");
        for e in &self.edges {
            self.svg_edge(&mut out, e, &rects);
        }
        out.push_str("</g>\n<g class=\"units\">\n");
        for (u, unit) in self.units.iter().enumerate() {
            self.svg_unit(&mut out, u, unit, rects[u]);
        }
        out.push_str("</g>\n</svg>\n");
        out
    }

    fn svg_legend(&self, out: &mut String) {
        out.push_str("<g class=\"legend\">\n");
        let mut y = MARGIN;
        for (text, size, bold) in self.legend_lines() {
            y += size + 6.0;
            let _ = writeln!(
                out,
                "<text x=\"{MARGIN}\" y=\"{y:.1}\" font-size=\"{size}\"{}>{}</text>",
                if bold { " font-weight=\"bold\"" } else { "" },
                xml(&text)
            );
        }
        y += 10.0;
        for (fill, label) in self.swatches() {
            let _ = writeln!(
                out,
                "<rect class=\"swatch\" x=\"{MARGIN}\" y=\"{:.1}\" width=\"22\" height=\"14\" rx=\"3\" \
                 fill=\"{fill}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{}</text>",
                y,
                MARGIN + 30.0,
                y + 11.5,
                xml(&label)
            );
            y += 22.0;
        }
        let _ = writeln!(
            out,
            "<path d=\"M{MARGIN},{:.1} h22\" stroke=\"{BOUNDARY_COLOUR}\" stroke-width=\"2.5\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">tier boundary, labelled with the bytes that cross it</text>",
            y + 7.0,
            MARGIN + 30.0,
            y + 11.5
        );
        out.push_str("</g>\n");
    }

    fn svg_edge(&self, out: &mut String, e: &Edge, rects: &[Rect]) {
        let (a, b) = (rects[e.from], rects[e.to]);
        let (x1, y1, x2, y2) = (a.centre_x(), a.bottom(), b.centre_x(), b.y);
        let dy = ((y2 - y1).abs() / 2.0).max(20.0);
        let (c1, c2) = ((x1, y1 + dy), (x2, y2 - dy));
        let class = if e.boundary {
            "edge boundary"
        } else if e.constant {
            "edge constant"
        } else {
            "edge"
        };
        let _ = write!(
            out,
            "<g class=\"{class}\" data-from=\"u{}\" data-to=\"u{}\" data-bytes=\"{}\"><title>{}</title>",
            e.from,
            e.to,
            e.bytes,
            xml(&format!(
                "{} ({})",
                truncate(&e.tensors.join(", "), 400),
                if e.constant {
                    "folded constant, not sent".to_string()
                } else {
                    human_bytes(e.bytes)
                }
            ))
        );
        let (stroke, width, dash, marker) = if e.boundary {
            (BOUNDARY_COLOUR, 2.5, "", "arrow-boundary")
        } else if e.constant {
            (EDGE_COLOUR, 1.0, " stroke-dasharray=\"4 3\"", "arrow")
        } else {
            (EDGE_COLOUR, 1.2, "", "arrow")
        };
        let _ = write!(
            out,
            "<path d=\"M{x1:.1},{y1:.1} C{:.1},{:.1} {:.1},{:.1} {x2:.1},{y2:.1}\" stroke=\"{stroke}\" \
             stroke-width=\"{width}\"{dash} marker-end=\"url(#{marker})\"/>",
            c1.0, c1.1, c2.0, c2.1
        );
        if e.boundary {
            // On the curve: half way for neighbouring rows, close to the target for longer edges.
            let t = if (y2 - y1) <= ROW_GAP + 1.0 {
                0.5
            } else {
                0.85
            };
            let bez = |p0: f64, p1: f64, p2: f64, p3: f64| {
                let s = 1.0 - t;
                s * s * s * p0 + 3.0 * s * s * t * p1 + 3.0 * s * t * t * p2 + t * t * t * p3
            };
            let (lx, ly) = (bez(x1, c1.0, c2.0, x2), bez(y1, c1.1, c2.1, y2));
            let mut label = human_bytes(e.bytes);
            if e.tensors.len() > 1 {
                label = format!("{label} in {} tensors", e.tensors.len());
            }
            let w = text_width(&label, 11.0) + 8.0;
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"15\" rx=\"3\" fill=\"#FFFFFF\" \
                 stroke=\"{BOUNDARY_COLOUR}\" stroke-width=\"0.8\"/><text class=\"bytes\" x=\"{lx:.1}\" \
                 y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"{BOUNDARY_COLOUR}\">{}</text>",
                lx - w / 2.0,
                ly - 7.5,
                ly + 4.0,
                xml(&label)
            );
        }
        out.push_str("</g>\n");
    }

    fn svg_unit(&self, out: &mut String, u: usize, unit: &Unit, r: Rect) {
        let lines = self.unit_lines(unit);
        let (fill, text_fill, rx) = match unit.kind {
            UnitKind::Input(_) | UnitKind::Output(_) => (IO_COLOUR, "#1A1A1A", IO_H / 2.0),
            UnitKind::Node | UnitKind::Block => {
                (unit.place.colour(), unit.place.text_colour(), 5.0)
            }
        };
        match &unit.kind {
            UnitKind::Node => {
                let node = &self.model.nodes[unit.members[0]];
                let _ = write!(
                    out,
                    "<g class=\"node\" id=\"u{u}\" data-node=\"{}\" data-op=\"{}\" data-tier=\"{}\">\
                     <title>{}</title>",
                    xml(&node.name),
                    xml(&node.op),
                    unit.place.name(),
                    xml(&format!(
                        "{} ({}) on {}",
                        node.name,
                        node.op,
                        unit.place.name()
                    ))
                );
            }
            UnitKind::Block => {
                let names: Vec<&str> = unit
                    .members
                    .iter()
                    .map(|&v| self.model.nodes[v].name.as_str())
                    .collect();
                let _ = write!(
                    out,
                    "<g class=\"block\" id=\"u{u}\" data-tier=\"{}\" data-count=\"{}\"><title>{}</title>\
                     <metadata>",
                    unit.place.name(),
                    unit.members.len(),
                    xml(&format!(
                        "{} nodes on {}: {}",
                        unit.members.len(),
                        unit.place.name(),
                        names.join(", ")
                    ))
                );
                for &v in &unit.members {
                    let node = &self.model.nodes[v];
                    let _ = write!(
                        out,
                        "<strata:node data-node=\"{}\" data-op=\"{}\"/>",
                        xml(&node.name),
                        xml(&node.op)
                    );
                }
                out.push_str("</metadata>");
            }
            UnitKind::Input(t) | UnitKind::Output(t) => {
                let class = if matches!(unit.kind, UnitKind::Input(_)) {
                    "input"
                } else {
                    "output"
                };
                let _ = write!(
                    out,
                    "<g class=\"{class}\" id=\"u{u}\" data-tensor=\"{}\"><title>{}</title>",
                    xml(t),
                    xml(&format!("model {class} {t}"))
                );
            }
        }
        let stroke = match unit.kind {
            UnitKind::Input(_) | UnitKind::Output(_) => " stroke=\"#1A1A1A\" stroke-width=\"1\"",
            _ => "",
        };
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"{rx}\" fill=\"{fill}\"{stroke}/>",
            r.x, r.y, r.w, r.h
        );
        let top = r.y + (r.h - LINE_H * lines.len() as f64) / 2.0 + 11.0;
        for (i, line) in lines.iter().enumerate() {
            let bold = i == 0 && matches!(unit.kind, UnitKind::Block | UnitKind::Node);
            let size = if i == 0 { 11.5 } else { 10.5 };
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{size}\" text-anchor=\"middle\" fill=\"{text_fill}\"{}>{}</text>",
                r.centre_x(),
                top + LINE_H * i as f64,
                if bold { " font-weight=\"bold\"" } else { "" },
                xml(line)
            );
        }
        out.push_str("</g>\n");
    }

    /// The picture as Graphviz DOT: one cluster per tier (and one for folded nodes), the same boxes and
    /// edge labels as the SVG; `dot -Tsvg` lays it out.
    pub fn dot(&self) -> String {
        let mut out = String::new();
        let mut label = self.legend.title.clone();
        for l in &self.legend.lines {
            label.push('\n');
            label.push_str(l);
        }
        let _ = writeln!(out, "digraph strata_plan {{");
        let _ = writeln!(
            out,
            "  graph [label={}, labelloc=t, fontname=\"Helvetica\", fontsize=12, rankdir=TB, nodesep=0.25, ranksep=0.45];",
            dot_string(&label)
        );
        let _ = writeln!(
            out,
            "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10, penwidth=0];"
        );
        let _ = writeln!(
            out,
            "  edge [color=\"{EDGE_COLOUR}\", arrowsize=0.6, fontname=\"Helvetica\", fontsize=9];"
        );
        let mut places: Vec<Place> = self.units.iter().map(|u| u.place).collect();
        places.sort();
        places.dedup();
        for place in places {
            let described = match place {
                Place::Tier(t) => self
                    .legend
                    .tiers
                    .iter()
                    .find(|(tier, name)| *tier == t && !name.is_empty())
                    .map_or(t.name().to_string(), |(_, name)| format!("{t}: {name}")),
                Place::Folded => "folded at plan time".to_string(),
            };
            let _ = writeln!(
                out,
                "  subgraph cluster_{} {{\n    label={}; color=\"{}\"; style=\"rounded,dashed\"; fontname=\"Helvetica\";",
                place.name(),
                dot_string(&described),
                place.colour()
            );
            for (u, unit) in self.units.iter().enumerate() {
                if unit.place != place || !matches!(unit.kind, UnitKind::Node | UnitKind::Block) {
                    continue;
                }
                let names: Vec<&str> = unit
                    .members
                    .iter()
                    .map(|&v| self.model.nodes[v].name.as_str())
                    .collect();
                let tooltip = match unit.kind {
                    UnitKind::Node => format!(
                        "{} ({})",
                        names.join(""),
                        self.model.nodes[unit.members[0]].op
                    ),
                    _ => names.join("\n"),
                };
                let _ = writeln!(
                    out,
                    "    u{u} [label={}, fillcolor=\"{}\", fontcolor=\"{}\", tooltip={}];",
                    dot_string(&self.unit_lines(unit).join("\n")),
                    place.colour(),
                    place.text_colour(),
                    dot_string(&tooltip)
                );
            }
            out.push_str("  }\n");
        }
        for (u, unit) in self.units.iter().enumerate() {
            if let UnitKind::Input(_) | UnitKind::Output(_) = unit.kind {
                let _ = writeln!(
                    out,
                    "  u{u} [label={}, shape=box, style=\"rounded,filled\", fillcolor=\"{IO_COLOUR}\", penwidth=1];",
                    dot_string(&self.unit_lines(unit).join("\n"))
                );
            }
        }
        for e in &self.edges {
            if e.boundary {
                let _ = writeln!(
                    out,
                    "  u{} -> u{} [label={}, color=\"{BOUNDARY_COLOUR}\", fontcolor=\"{BOUNDARY_COLOUR}\", penwidth=2.5];",
                    e.from,
                    e.to,
                    dot_string(&human_bytes(e.bytes))
                );
            } else if e.constant {
                let _ = writeln!(out, "  u{} -> u{} [style=dashed];", e.from, e.to);
            } else {
                let _ = writeln!(out, "  u{} -> u{};", e.from, e.to);
            }
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::graph::tests::chain;
    use super::super::graph::{Legend, PlanGraph};
    use strata_core::Tier;

    fn legend() -> Legend {
        Legend {
            title: "chain — plan for <test>".into(),
            lines: vec!["predicted: 1.00 ms end to end, 2.00 mJ on the device".into()],
            tiers: vec![
                (Tier::Device, "phone & co".into()),
                (Tier::Cloud, String::new()),
            ],
        }
    }

    #[test]
    fn picture_svg_has_every_node_once_with_its_tier_and_escaped_names() {
        for collapse in [false, true] {
            let g = PlanGraph::build(chain(), legend(), Some(collapse));
            let svg = g.svg();
            for name in ["a&lt;&amp;&gt;", "\"s\"", "\"b\"", "\"c\""] {
                let needle = format!("data-node=\"{}", name.trim_matches('"'));
                assert_eq!(svg.matches(&needle).count(), 1, "{needle} in {svg}");
            }
            assert!(!svg.contains("a<&>"), "an unescaped name: {svg}");
            assert!(svg.contains("phone &amp; co"));
            assert!(svg.contains("plan for &lt;test&gt;"));
            assert!(svg.contains("4.0 KiB"), "the boundary's bytes: {svg}");
            assert!(svg.contains(&format!(
                "fill=\"{}\"",
                super::super::tier_colour(Tier::Cloud)
            )));
        }
    }

    #[test]
    fn picture_dot_has_a_cluster_per_tier_and_labelled_boundaries() {
        let dot = PlanGraph::build(chain(), legend(), Some(false)).dot();
        assert!(dot.starts_with("digraph strata_plan {"));
        for cluster in ["cluster_device", "cluster_cloud", "cluster_folded"] {
            assert!(dot.contains(cluster), "{cluster} in {dot}");
        }
        assert!(dot.contains("label=\"4.0 KiB\""), "{dot}");
        assert!(dot.contains("\"a<&>\\nConv\""), "{dot}");
        assert_eq!(dot.matches('{').count(), dot.matches('}').count());
    }
}
