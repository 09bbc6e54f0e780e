//! A route table as a chart (`strata routes MODEL --svg`): each plan a point at its predicted latency (x) and
//! device energy (y), coloured by the strictest privacy level it satisfies and labelled with its tiers and
//! every level it satisfies. Plans no other plan beats on both axes (the frontier) are filled and joined by a
//! line; the others are hollow.

use std::fmt::Write as _;

use strata_core::{Privacy, Tier};

use super::{svg_open, text_width, truncate, xml};

const MARGIN: f64 = 24.0;
const PLOT_W: f64 = 620.0;
const PLOT_H: f64 = 400.0;
/// Room left of the plot for the y axis' labels, and right of it for the points' labels.
const AXIS_W: f64 = 84.0;
const RIGHT_W: f64 = 220.0;

/// Colour of the strictest privacy level a plan satisfies (the same hues as the tiers where they match:
/// device-only is the device's green, edge is the edge's orange, open the cloud's blue).
pub fn privacy_colour(level: Privacy) -> &'static str {
    match level {
        Privacy::Device => "#009E73",
        Privacy::Edge => "#E69F00",
        Privacy::Features => "#CC79A7",
        Privacy::Open => "#0072B2",
    }
}

/// One plan of a route table.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePlan {
    /// The plan's id.
    pub id: String,
    /// Predicted end-to-end latency, ms.
    pub latency_ms: f64,
    /// Predicted device energy, mJ.
    pub energy_mj: f64,
    /// The privacy levels it satisfies.
    pub satisfies: Vec<Privacy>,
    /// Its stages' tiers, in order.
    pub tiers: Vec<Tier>,
    /// What a request with the given constraints gets now.
    pub chosen: bool,
}

impl RoutePlan {
    /// The strictest level it satisfies (every plan satisfies `open`).
    pub fn strictest(&self) -> Privacy {
        self.satisfies
            .iter()
            .copied()
            .min()
            .unwrap_or(Privacy::Open)
    }
}

/// A route table ready to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteChart {
    /// First line, bold.
    pub title: String,
    /// Further legend lines.
    pub lines: Vec<String>,
    /// The plans.
    pub plans: Vec<RoutePlan>,
}

/// Tick step for an axis from 0 to `max`: 1, 2 or 5 × a power of ten, about five ticks.
fn tick_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// A tick's label: plain decimals from 0.01 to 99,999, else `1e5` style.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !(0.01..1e5).contains(&v.abs()) {
        return format!("{v:e}");
    }
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One axis: linear from 0, or logarithmic when the values span more than [`LOG_ABOVE`]× (and are all > 0):
/// a slow device-only plan must not squash every split into one corner.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    log: bool,
    lo: f64,
    hi: f64,
}

/// Ratio of the largest to the smallest value above which an axis is logarithmic.
const LOG_ABOVE: f64 = 20.0;

impl Axis {
    fn new(values: impl Iterator<Item = f64> + Clone) -> Axis {
        let max = values.clone().fold(0.0, f64::max).max(1e-3);
        let min = values.fold(f64::INFINITY, f64::min);
        if min > 0.0 && max / min > LOG_ABOVE {
            Axis {
                log: true,
                lo: min / 1.6,
                hi: max * 1.6,
            }
        } else {
            Axis {
                log: false,
                lo: 0.0,
                hi: max * 1.08,
            }
        }
    }

    /// Where `v` sits, from 0 (low end) to 1 (high end).
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v.max(0.0) - self.lo) / (self.hi - self.lo)
        }
    }

    /// Tick values: round numbers (1, 2, 5 × a power of ten; only powers of ten over more than 3 decades).
    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let decades = (self.hi / self.lo).log10();
            let steps: &[f64] = if decades > 3.0 {
                &[1.0]
            } else {
                &[1.0, 2.0, 5.0]
            };
            let mut out = Vec::new();
            let mut p = 10f64.powf(self.lo.log10().floor());
            while p <= self.hi {
                for m in steps {
                    let v = m * p;
                    if v >= self.lo && v <= self.hi {
                        out.push(v);
                    }
                }
                p *= 10.0;
            }
            out
        } else {
            let step = tick_step(self.hi);
            (0..)
                .map(|i| f64::from(i) * step)
                .take_while(|v| *v <= self.hi + 1e-9)
                .collect()
        }
    }

    fn scale_note(&self) -> &'static str {
        if self.log { " (log scale)" } else { "" }
    }
}

impl RouteChart {
    /// Per plan: whether it is on the frontier (no other plan is at most as slow and as costly, and better
    /// in one). Plans with non-finite figures are on no frontier.
    pub fn frontier(&self) -> Vec<bool> {
        let ok = |p: &RoutePlan| p.latency_ms.is_finite() && p.energy_mj.is_finite();
        self.plans
            .iter()
            .map(|p| {
                ok(p)
                    && !self.plans.iter().any(|q| {
                        ok(q)
                            && q.latency_ms <= p.latency_ms
                            && q.energy_mj <= p.energy_mj
                            && (q.latency_ms < p.latency_ms || q.energy_mj < p.energy_mj)
                    })
            })
            .collect()
    }

    /// The chart as a standalone SVG document.
    pub fn svg(&self) -> String {
        let legend_lines: Vec<(String, f64, bool)> =
            std::iter::once((self.title.clone(), 15.0, true))
                .chain(self.lines.iter().map(|l| (l.clone(), 12.0, false)))
                .collect();
        let legend_h = legend_lines.iter().map(|l| l.1 + 6.0).sum::<f64>() + 22.0 * 3.0 + 16.0;
        let legend_w = legend_lines
            .iter()
            .map(|(t, size, _)| text_width(t, *size))
            .fold(0.0, f64::max);
        let width = (2.0 * MARGIN + AXIS_W + PLOT_W + RIGHT_W).max(2.0 * MARGIN + legend_w);
        let (px, py) = (MARGIN + AXIS_W, MARGIN + legend_h);
        let height = py + PLOT_H + 50.0 + MARGIN;
        let finite: Vec<&RoutePlan> = self
            .plans
            .iter()
            .filter(|p| p.latency_ms.is_finite() && p.energy_mj.is_finite())
            .collect();
        let ax = Axis::new(finite.iter().map(|p| p.latency_ms));
        let ay = Axis::new(finite.iter().map(|p| p.energy_mj));
        let sx = |v: f64| px + ax.frac(v) * PLOT_W;
        let sy = |v: f64| py + PLOT_H - ay.frac(v) * PLOT_H;

        let mut out = String::new();
        svg_open(&mut out, width, height, &self.title);

        // Legend: lines, then the privacy colours and what the marks mean.
        out.push_str("<g class=\"legend\">\n");
        let mut y = MARGIN;
        for (text, size, bold) in &legend_lines {
            y += size + 6.0;
            let _ = writeln!(
                out,
                "<text x=\"{MARGIN}\" y=\"{y:.1}\" font-size=\"{size}\"{}>{}</text>",
                if *bold { " font-weight=\"bold\"" } else { "" },
                xml(text)
            );
        }
        y += 12.0;
        let mut x = MARGIN;
        out.push_str(&format!(
            "<text x=\"{x}\" y=\"{:.1}\" font-size=\"12\">strictest privacy level satisfied:</text>\n",
            y + 4.0
        ));
        x += 210.0;
        for level in Privacy::ALL {
            let _ = writeln!(
                out,
                "<circle class=\"swatch\" cx=\"{:.1}\" cy=\"{y:.1}\" r=\"6\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{}</text>",
                x + 6.0,
                privacy_colour(level),
                x + 16.0,
                y + 4.0,
                level.name()
            );
            x += 30.0 + text_width(level.name(), 12.0);
        }
        y += 22.0;
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"6\" fill=\"#555555\"/><text x=\"{:.1}\" y=\"{:.1}\" \
             font-size=\"12\">on the frontier (no plan is both faster and cheaper on the device)</text>",
            MARGIN + 6.0,
            MARGIN + 16.0,
            y + 4.0
        );
        y += 22.0;
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#FFFFFF\" stroke=\"#555555\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">dominated here (kept for other network conditions or \
             privacy levels)</text>",
            MARGIN + 6.0,
            MARGIN + 16.0,
            y + 4.0
        );
        out.push_str("</g>\n");

        // Axes, grid and ticks.
        out.push_str("<g class=\"axes\" font-size=\"11\">\n");
        for v in ax.ticks() {
            let _ = writeln!(
                out,
                "<path d=\"M{0:.1},{py:.1} V{1:.1}\" stroke=\"#E4E4E4\"/><text x=\"{0:.1}\" y=\"{2:.1}\" \
                 text-anchor=\"middle\">{3}</text>",
                sx(v),
                py + PLOT_H,
                py + PLOT_H + 16.0,
                tick_label(v)
            );
        }
        for v in ay.ticks() {
            let _ = writeln!(
                out,
                "<path d=\"M{px:.1},{0:.1} H{1:.1}\" stroke=\"#E4E4E4\"/><text x=\"{2:.1}\" y=\"{3:.1}\" \
                 text-anchor=\"end\">{4}</text>",
                sy(v),
                px + PLOT_W,
                px - 6.0,
                sy(v) + 4.0,
                tick_label(v)
            );
        }
        let _ = writeln!(
            out,
            "<path d=\"M{px:.1},{py:.1} V{0:.1} H{1:.1}\" stroke=\"#1A1A1A\" fill=\"none\"/>\
             <text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"middle\" font-size=\"12\">predicted latency, ms{6}</text>\
             <text x=\"{4:.1}\" y=\"{5:.1}\" text-anchor=\"middle\" font-size=\"12\" \
             transform=\"rotate(-90 {4:.1} {5:.1})\">predicted device energy, mJ{7}</text>",
            py + PLOT_H,
            px + PLOT_W,
            px + PLOT_W / 2.0,
            py + PLOT_H + 36.0,
            px - 62.0,
            py + PLOT_H / 2.0,
            ax.scale_note(),
            ay.scale_note()
        );
        out.push_str("</g>\n");

        // The frontier line, then the points, each with a label placed where it overlaps no earlier one.
        let on_frontier = self.frontier();
        let mut front: Vec<&RoutePlan> = self
            .plans
            .iter()
            .zip(&on_frontier)
            .filter(|(_, f)| **f)
            .map(|(p, _)| p)
            .collect();
        front.sort_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms));
        if front.len() > 1 {
            let points: Vec<String> = front
                .iter()
                .map(|p| format!("{:.1},{:.1}", sx(p.latency_ms), sy(p.energy_mj)))
                .collect();
            let _ = writeln!(
                out,
                "<polyline class=\"frontier\" points=\"{}\" fill=\"none\" stroke=\"#555555\" \
                 stroke-width=\"1.2\" stroke-dasharray=\"5 3\"/>",
                points.join(" ")
            );
        }
        out.push_str("<g class=\"plans\">\n");
        // Boxes labels must not cover: every point first, then each label placed.
        let mut taken: Vec<(f64, f64, f64, f64)> = finite
            .iter()
            .map(|p| (sx(p.latency_ms) - 8.0, sy(p.energy_mj) - 8.0, 16.0, 16.0))
            .collect();
        for (p, &frontier) in self.plans.iter().zip(&on_frontier) {
            let levels: Vec<&str> = p.satisfies.iter().map(|l| l.name()).collect();
            let tiers: Vec<&str> = p.tiers.iter().map(|t| t.name()).collect();
            let colour = privacy_colour(p.strictest());
            let _ = write!(
                out,
                "<g class=\"plan\" data-plan=\"{}\" data-latency-ms=\"{}\" data-energy-mj=\"{}\" \
                 data-privacy=\"{}\" data-strictest=\"{}\" data-frontier=\"{frontier}\" data-chosen=\"{}\">\
                 <title>{}</title>",
                xml(&p.id),
                p.latency_ms,
                p.energy_mj,
                levels.join(" "),
                p.strictest().name(),
                p.chosen,
                xml(&format!(
                    "plan {}: {:.2} ms, {:.2} mJ; {}; satisfies {}",
                    p.id,
                    p.latency_ms,
                    p.energy_mj,
                    tiers.join(" → "),
                    levels.join(", ")
                ))
            );
            if !(p.latency_ms.is_finite() && p.energy_mj.is_finite()) {
                out.push_str("</g>\n");
                continue;
            }
            let (cx, cy) = (sx(p.latency_ms), sy(p.energy_mj));
            if p.chosen {
                let _ = write!(
                    out,
                    "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"10\" fill=\"none\" stroke=\"#1A1A1A\" stroke-width=\"1.5\"/>"
                );
            }
            if frontier {
                let _ = write!(
                    out,
                    "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"6\" fill=\"{colour}\"/>"
                );
            } else {
                let _ = write!(
                    out,
                    "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"5\" fill=\"#FFFFFF\" stroke=\"{colour}\" stroke-width=\"2\"/>"
                );
            }
            let first = format!("{} · {}", truncate(&p.id, 14), tiers.join("→"));
            let second = levels.join(", ");
            let w = text_width(&first, 11.0).max(text_width(&second, 10.0));
            let h = 26.0;
            let candidates = [
                (cx + 11.0, cy - 13.0),
                (cx - 11.0 - w, cy - 13.0),
                (cx + 11.0, cy + 4.0),
                (cx - 11.0 - w, cy + 4.0),
                (cx + 11.0, cy - 30.0),
                (cx - 11.0 - w, cy - 30.0),
                (cx + 11.0, cy + 20.0),
                (cx - 11.0 - w, cy + 20.0),
                (cx - w / 2.0, cy - 40.0),
                (cx - w / 2.0, cy + 12.0),
            ];
            let overlaps = |(x, y): (f64, f64)| {
                // Inside the plot (right of it too: the margin is for labels), off the axes' numbers.
                x < px + 2.0
                    || x + w > width - 2.0
                    || y < py - 30.0
                    || y + h > py + PLOT_H - 2.0
                    || taken.iter().any(|&(tx, ty, tw, th)| {
                        x < tx + tw && tx < x + w && y < ty + th && ty < y + h
                    })
            };
            let (lx, ly) = candidates
                .into_iter()
                .find(|&c| !overlaps(c))
                .unwrap_or(candidates[0]);
            taken.push((lx, ly, w, h));
            let _ = writeln!(
                out,
                "<text x=\"{lx:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#1A1A1A\">{}</text>\
                 <text class=\"privacy\" x=\"{lx:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{colour}\">{}</text></g>",
                ly + 10.0,
                xml(&first),
                ly + 23.0,
                xml(&second)
            );
        }
        out.push_str("</g>\n</svg>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str, latency_ms: f64, energy_mj: f64, satisfies: &[Privacy]) -> RoutePlan {
        RoutePlan {
            id: id.into(),
            latency_ms,
            energy_mj,
            satisfies: satisfies.to_vec(),
            tiers: vec![Tier::Device, Tier::Cloud],
            chosen: false,
        }
    }

    #[test]
    fn picture_routes_frontier_keeps_only_undominated_plans() {
        let chart = RouteChart {
            title: "m".into(),
            lines: Vec::new(),
            plans: vec![
                plan("fast", 10.0, 50.0, &[Privacy::Open]),
                plan("lean", 40.0, 5.0, &[Privacy::Device, Privacy::Open]),
                plan("worse", 45.0, 60.0, &[Privacy::Open]),
                plan("nan", f64::NAN, 1.0, &[Privacy::Open]),
            ],
        };
        assert_eq!(chart.frontier(), vec![true, true, false, false]);
        assert_eq!(chart.plans[1].strictest(), Privacy::Device);
        let svg = chart.svg();
        assert_eq!(svg.matches("class=\"plan\"").count(), 4);
        assert!(svg.contains("data-privacy=\"device open\""), "{svg}");
        assert!(svg.contains("class=\"frontier\""));
    }

    #[test]
    fn picture_routes_ticks_are_round_numbers() {
        assert_eq!(tick_step(100.0), 20.0);
        assert_eq!(tick_step(7.0), 2.0);
        assert!((tick_step(0.3) - 0.1).abs() < 1e-12);
        assert_eq!(tick_label(0.2), "0.2");
        assert_eq!(tick_label(1500.0), "1500");
        assert_eq!(tick_label(1e6), "1e6");
    }

    #[test]
    fn picture_routes_axes_go_logarithmic_when_plans_span_decades() {
        let linear = Axis::new([10.0, 40.0].into_iter());
        assert!(!linear.log);
        assert_eq!(linear.ticks()[..3], [0.0, 10.0, 20.0]);
        let log = Axis::new([5.0, 700_000.0].into_iter());
        assert!(log.log);
        assert!(log.frac(5.0) > 0.0 && log.frac(700_000.0) < 1.0);
        assert!(log.ticks().contains(&1000.0));
        // A zero (no device energy at all) cannot go on a log axis.
        assert!(!Axis::new([0.0, 700_000.0].into_iter()).log);
    }
}
