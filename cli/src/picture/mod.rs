//! Pictures of plans, written by Strata itself (no Graphviz at run time): a plan's graph as SVG or Graphviz DOT
//! (`strata plan --svg/--dot`), and a route table's plans as a latency/energy chart (`strata routes --svg`).
//! Pure functions: plain data in, text out; docs/pictures.md describes what the pictures encode.
//!
//! Every string that comes from a model or a cluster (node, tensor, tier and plan names) is escaped here, in
//! [`xml`] and [`dot_string`], and nowhere else.

mod draw;
pub mod graph;
pub mod routes;

use strata_core::Tier;

/// Fill colour of a tier's nodes (Okabe–Ito: distinguishable with the common colour-vision deficiencies).
pub fn tier_colour(tier: Tier) -> &'static str {
    match tier {
        Tier::Device => "#009E73",
        Tier::Edge => "#E69F00",
        Tier::Cloud => "#0072B2",
    }
}

/// Text colour on a tier's fill (dark on the light orange, white on the others).
pub fn tier_text_colour(tier: Tier) -> &'static str {
    match tier {
        Tier::Edge => "#1A1A1A",
        Tier::Device | Tier::Cloud => "#FFFFFF",
    }
}

/// Fill of nodes the planner folded into constants (they run on no tier).
pub const FOLDED_COLOUR: &str = "#C8C8C8";
/// Fill of the model's input and output terminals.
pub const IO_COLOUR: &str = "#FFFFFF";
/// Stroke of an edge that crosses a tier boundary.
pub const BOUNDARY_COLOUR: &str = "#D55E00";
/// Stroke of an edge within one tier.
pub const EDGE_COLOUR: &str = "#8A8A8A";

/// `s` escaped for XML text and attribute values. Characters XML 1.0 cannot hold at all (control characters
/// other than tab, newline and carriage return) become U+FFFD.
pub fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// `s` as a quoted Graphviz DOT string (backslashes and quotes escaped, line breaks as `\n`).
pub fn dot_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Approximate width in pixels of `s` in the pictures' sans-serif font at `size` px (for layout only).
fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.58
}

/// `s` cut to at most `max` characters, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Human-readable bytes (binary units), as the CLI's tables print them.
pub fn human_bytes(b: u64) -> String {
    crate::io::human_bytes(b as f64)
}

/// The opening `<svg>` element, a white background, and the shared definitions (the arrow heads).
fn svg_open(out: &mut String, width: f64, height: f64, title: &str) {
    out.push_str(&format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
         xmlns:strata=\"{NAMESPACE}\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
    ));
    out.push_str(&format!("<title>{}</title>\n", xml(title)));
    out.push_str(&format!(
        "<defs>\n<marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"{EDGE_COLOUR}\"/></marker>\n\
         <marker id=\"arrow-boundary\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"10\" \
         markerHeight=\"10\" markerUnits=\"userSpaceOnUse\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"{BOUNDARY_COLOUR}\"/></marker>\n\
         </defs>\n"
    ));
    out.push_str(&format!(
        "<rect class=\"background\" x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"#FFFFFF\"/>\n"
    ));
}

/// The namespace of the `strata:` elements that list the nodes a block stands for.
pub const NAMESPACE: &str = "urn:strata:picture";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picture_xml_escapes_markup_and_drops_what_xml_cannot_hold() {
        assert_eq!(
            xml("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt;"
        );
        assert_eq!(xml("a\u{1}b\nc"), "a\u{FFFD}b&#10;c");
    }

    #[test]
    fn picture_dot_strings_escape_quotes_and_backslashes() {
        assert_eq!(dot_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(dot_string("x\ny"), r#""x\ny""#);
    }

    #[test]
    fn picture_truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
