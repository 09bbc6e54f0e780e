//! Pictures of plans (`strata plan --svg/--dot`, `strata routes --svg`), checked with real tools: every SVG is
//! parsed by an XML parser (Python's `xml.etree`, from the venv), every node of the model appears exactly once
//! with its plan's tier and that tier's colour, and the SVG is rendered by a real renderer (`rsvg-convert`,
//! Debian's librsvg2-bin) into a PNG that is decoded and must show the tier colours, not a blank page. The DOT
//! goes through Graphviz's `dot`. Needs scripts/setup.sh (the venv, librsvg2-bin, graphviz).

mod common;
mod sandbox;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cluster, corpus, node, ok, root, strata, tiny_model};
use serde_json::Value;

/// The tier colours docs/pictures.md documents.
const COLOURS: [(&str, &str); 4] = [
    ("device", "#009E73"),
    ("edge", "#E69F00"),
    ("cloud", "#0072B2"),
    ("folded", "#C8C8C8"),
];

/// Reads an SVG with xml.etree and reports, as JSON: the root's size; every element carrying `data-node` with
/// its tier (its own `data-tier` or the nearest ancestor's) and the fill of that unit's box; the units (nodes,
/// blocks, terminals); the edges; the route chart's plans. With a PNG path, also decodes the PNG (stdlib zlib,
/// every filter type) and counts its pixels by colour.
const CHECK_PY: &str = r##"
import json, struct, sys, zlib
import xml.etree.ElementTree as ET

SVG = "{http://www.w3.org/2000/svg}"
tree = ET.parse(sys.argv[1])
root = tree.getroot()
assert root.tag == SVG + "svg", root.tag
parent = {c: p for p in root.iter() for c in p}

def unit_of(e):
    while e is not None and e.get("data-tier") is None:
        e = parent.get(e)
    return e

def fill_of(u):
    r = u.find(SVG + "rect")
    return None if r is None else r.get("fill")

out = {"width": float(root.get("width").rstrip("pt")), "height": float(root.get("height").rstrip("pt")), "nodes": [], "units": [],
       "edges": [], "plans": []}
for e in root.iter():
    if e.get("data-node") is not None:
        u = unit_of(e)
        out["nodes"].append({"name": e.get("data-node"), "op": e.get("data-op"),
                             "tier": None if u is None else u.get("data-tier"),
                             "fill": None if u is None else fill_of(u), "tag": e.tag})
    cls = e.get("class", "")
    if e.tag == SVG + "g" and cls in ("node", "block", "input", "output"):
        out["units"].append({"id": e.get("id"), "class": cls, "tier": e.get("data-tier"), "fill": fill_of(e),
                             "count": e.get("data-count")})
    if e.tag == SVG + "g" and cls.split()[:1] == ["edge"] and e.get("data-bytes") is not None:
        label = [t.text for t in e.iter(SVG + "text")]
        out["edges"].append({"class": cls, "bytes": int(e.get("data-bytes")), "label": label,
                             "from": e.get("data-from"), "to": e.get("data-to")})
    if e.tag == SVG + "g" and cls == "plan":
        out["plans"].append({k[5:]: v for k, v in e.attrib.items() if k.startswith("data-")})

def png_pixels(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    counts = {}
    i = 0
    for _ in range(h):
        f = raw[i]; line = bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for x in range(0, stride, bpp):
            if bpp == 4 and line[x + 3] == 0:
                key = "transparent"
            else:
                key = "#%02X%02X%02X" % (line[x], line[x + 1], line[x + 2])
            counts[key] = counts.get(key, 0) + 1
        prev = line
    return {"width": w, "height": h, "colours": counts}

if len(sys.argv) > 2:
    out["png"] = png_pixels(sys.argv[2])
print(json.dumps(out))
"##;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python3");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

/// `name`, after failing with what to install when it is missing.
fn tool<'a>(name: &'a str, package: &str) -> &'a str {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is missing: run scripts/setup.sh (Debian package {package})"
    );
    name
}

/// Parses `svg` (and renders it to PNG with rsvg-convert at `zoom`, when given) and returns the checker's
/// report.
fn check(svg: &Path, zoom: Option<f64>) -> Value {
    let mut args = vec!["-c".to_string(), CHECK_PY.to_string(), s(svg).to_string()];
    if let Some(zoom) = zoom {
        let png = svg.with_extension("png");
        let out = Command::new(tool("rsvg-convert", "librsvg2-bin"))
            .args(["-z", &zoom.to_string(), "-o", s(&png), s(svg)])
            .output()
            .expect("rsvg-convert runs");
        assert!(
            out.status.success(),
            "rsvg-convert failed on {}: {}",
            svg.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        args.push(s(&png).to_string());
    }
    let out = Command::new(python())
        .args(&args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{} is not a well-formed SVG as the checker reads it: {}",
        svg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the checker prints JSON")
}

/// The rendered picture is not blank: most pixels are the white background, but a real share is drawn, and
/// each of `colours` fills a visible area.
fn assert_rendered(report: &Value, colours: &[&str]) {
    let png = &report["png"];
    let counts: BTreeMap<String, u64> =
        serde_json::from_value(png["colours"].clone()).expect("colour counts");
    let total: u64 = counts.values().sum();
    assert_eq!(
        total,
        png["width"].as_u64().expect("width") * png["height"].as_u64().expect("height")
    );
    let white = counts.get("#FFFFFF").copied().unwrap_or(0);
    let transparent = counts.get("transparent").copied().unwrap_or(0);
    assert_eq!(transparent, 0, "the background is painted");
    let drawn = (total - white) as f64 / total as f64;
    assert!(
        drawn > 0.02 && drawn < 0.9,
        "{:.1}% of the pixels are drawn: blank or a solid page",
        drawn * 100.0
    );
    for colour in colours {
        let n = counts.get(*colour).copied().unwrap_or(0);
        assert!(
            n >= 200,
            "the rendered PNG has only {n} pixels of {colour}; colours: {} distinct",
            counts.len()
        );
    }
}

/// Node name → tier, from a plan directory's plan.json.
fn plan_tiers(dir: &Path) -> (Value, HashMap<String, String>) {
    let text = std::fs::read_to_string(dir.join("plan.json")).expect("plan.json written");
    let plan: Value = serde_json::from_str(&text).expect("plan.json parses");
    let mut tiers = HashMap::new();
    for stage in plan["stages"].as_array().expect("stages") {
        let tier = stage["tier"].as_str().expect("tier").to_string();
        for name in stage["node_names"].as_array().expect("node_names") {
            let name = name.as_str().expect("a name").to_string();
            assert!(tiers.insert(name, tier.clone()).is_none());
        }
    }
    (plan, tiers)
}

/// Every node of `model_names` appears exactly once; each node the plan runs has its stage's tier and that
/// tier's colour; the rest are folded. Returns the tiers seen.
fn assert_every_node_once(report: &Value, model_names: &[String], tiers: &HashMap<String, String>) {
    let colour: HashMap<&str, &str> = COLOURS.into_iter().collect();
    let nodes = report["nodes"].as_array().expect("nodes");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for n in nodes {
        let name = n["name"].as_str().expect("a node name");
        *seen.entry(name).or_default() += 1;
        let tier = n["tier"].as_str().unwrap_or("none");
        match tiers.get(name) {
            Some(t) => assert_eq!(tier, t, "node {name}: the picture's tier"),
            None => assert_eq!(tier, "folded", "node {name} is in no stage"),
        }
        assert_eq!(
            n["fill"].as_str(),
            colour.get(tier).copied(),
            "node {name} on {tier}: its box's colour"
        );
    }
    for name in model_names {
        assert_eq!(
            seen.get(name.as_str()).copied().unwrap_or(0),
            1,
            "node {name} appears once"
        );
    }
    assert_eq!(nodes.len(), model_names.len(), "no node the model lacks");
}

/// The model's node names, as the planner names them (plan.json's stages plus the folded ones are checked
/// against this).
fn model_node_names(model: &Path) -> Vec<String> {
    let bytes = std::fs::read(model).expect("model");
    let m = strata_planner::model::Model::from_bytes(&bytes).expect("a valid model");
    m.nodes.into_iter().map(|n| n.name).collect()
}

#[test]
fn plan_svg_shows_every_node_once_in_its_tier_colour_and_renders() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = corpus("squeezenet.onnx");
    let svg = dir.path().join("squeezenet.svg");
    let dot = dir.path().join("squeezenet.dot");
    let plan_dir = dir.path().join("plan");
    ok(&strata(&[
        "plan",
        s(&model),
        "--cluster",
        s(&cluster("glasses-phone-cloud.toml")),
        "--privacy",
        "features",
        "--out",
        s(&plan_dir),
        "--svg",
        s(&svg),
        "--dot",
        s(&dot),
    ]));
    let (plan, tiers) = plan_tiers(&plan_dir);
    let stage_tiers: Vec<&str> = plan["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|st| st["tier"].as_str().expect("tier"))
        .collect();
    assert!(
        stage_tiers.len() >= 2,
        "the test proves nothing unless the plan has a boundary: {stage_tiers:?}"
    );
    let report = check(&svg, Some(0.5));
    let names = model_node_names(&model);
    assert!(names.len() <= 100, "squeezenet is drawn node by node");
    assert_every_node_once(&report, &names, &tiers);
    // One box per node (not collapsed), plus the input and output terminals.
    let units = report["units"].as_array().expect("units");
    assert_eq!(
        units.iter().filter(|u| u["class"] == "node").count(),
        names.len()
    );
    assert_eq!(units.iter().filter(|u| u["class"] == "input").count(), 1);
    assert_eq!(units.iter().filter(|u| u["class"] == "output").count(), 1);
    // Each boundary is labelled with the bytes that cross it: a stage's one input as plan.json counts it, and
    // the model's output on its way back to the device.
    let boundary: Vec<&Value> = report["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter(|e| e["class"] == "edge boundary")
        .collect();
    let class_of = |id: &Value| {
        units
            .iter()
            .find(|u| u["id"] == *id)
            .map(|u| u["class"].as_str().expect("class").to_string())
            .expect("an edge's end is a unit")
    };
    for st in plan["stages"].as_array().expect("stages").iter().skip(1) {
        if st["inputs"].as_array().is_some_and(|i| i.len() == 1) {
            let bytes = st["bytes_in"].as_u64().expect("bytes_in");
            assert!(
                boundary
                    .iter()
                    .any(|e| e["bytes"] == bytes && class_of(&e["to"]) == "node"),
                "a boundary edge carries stage {}'s {bytes} B: {boundary:?}",
                st["index"]
            );
        }
    }
    if stage_tiers.last() != Some(&"device") {
        assert!(
            boundary
                .iter()
                .any(|e| class_of(&e["to"]) == "output" && e["bytes"] == 4000),
            "the 1,000 class scores (4,000 B) cross back to the device: {boundary:?}"
        );
    }
    for e in &boundary {
        let label = e["label"][0].as_str().expect("a bytes label");
        assert!(
            label.contains(" B") || label.contains("iB"),
            "bytes in human units: {label}"
        );
    }
    // The legend carries the plan's prediction.
    let text = std::fs::read_to_string(&svg).expect("svg");
    let predicted = &plan["predicted"];
    assert!(
        text.contains(&format!(
            "{:.2} ms end to end, {:.2} mJ on the device",
            predicted["latency_ms"].as_f64().expect("latency"),
            predicted["device_energy_mj"].as_f64().expect("energy")
        )),
        "the legend's prediction"
    );
    // Rendered: not blank, and each tier the plan uses is visibly painted in its colour.
    let colour: HashMap<&str, &str> = COLOURS.into_iter().collect();
    let used: Vec<&str> = stage_tiers.iter().map(|t| colour[t]).collect();
    assert_rendered(&report, &used);
}

#[test]
fn large_plan_svg_collapses_runs_into_blocks_that_hold_every_node_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = corpus("densenet121.onnx");
    let svg = dir.path().join("densenet121.svg");
    let plan_dir = dir.path().join("plan");
    ok(&strata(&[
        "plan",
        s(&model),
        "--cluster",
        s(&cluster("phone-homebox-cloud.toml")),
        "--privacy",
        "features",
        "--out",
        s(&plan_dir),
        "--svg",
        s(&svg),
    ]));
    let (plan, tiers) = plan_tiers(&plan_dir);
    let names = model_node_names(&model);
    assert!(names.len() > 900, "densenet121 has {} nodes", names.len());
    let report = check(&svg, Some(1.0));
    assert_every_node_once(&report, &names, &tiers);
    let units = report["units"].as_array().expect("units");
    let blocks: Vec<&Value> = units.iter().filter(|u| u["class"] == "block").collect();
    assert_eq!(
        units.iter().filter(|u| u["class"] == "node").count(),
        0,
        "no node drawn on its own"
    );
    // Readable: a handful of blocks (at most one per tier and one of folded nodes here, since a plan is
    // monotone), each counting its nodes, together all of them, in a picture a screen can hold.
    assert!(blocks.len() <= 4, "{} blocks", blocks.len());
    let counted: usize = blocks
        .iter()
        .map(|b| {
            b["count"]
                .as_str()
                .and_then(|c| c.parse::<usize>().ok())
                .expect("data-count")
        })
        .sum();
    assert_eq!(counted, names.len());
    let stages = plan["stages"].as_array().expect("stages");
    assert_eq!(
        blocks.iter().filter(|b| b["tier"] != "folded").count(),
        stages.len()
    );
    assert!(
        report["height"].as_f64().expect("height") < 1200.0,
        "the picture stays small"
    );
    let text = std::fs::read_to_string(&svg).expect("svg");
    assert!(
        text.contains("Conv ×120") || text.contains("Conv ×121"),
        "a block lists its operators with counts"
    );
    let colour: HashMap<&str, &str> = COLOURS.into_iter().collect();
    let used: Vec<&str> = stages
        .iter()
        .map(|st| colour[st["tier"].as_str().expect("tier")])
        .collect();
    assert_rendered(&report, &used);
}

#[test]
fn plan_dot_is_graphviz_that_dot_lays_out() {
    let dot_bin = tool("dot", "graphviz");
    let dir = tempfile::tempdir().expect("tmp");
    for (model, cluster_file, units_at_most) in [
        ("squeezenet", "glasses-phone-cloud.toml", 70),
        ("densenet121", "phone-homebox-cloud.toml", 8),
    ] {
        let dot = dir.path().join(format!("{model}.dot"));
        let svg = dir.path().join(format!("{model}-dot.svg"));
        ok(&strata(&[
            "plan",
            s(&corpus(&format!("{model}.onnx"))),
            "--cluster",
            s(&cluster(cluster_file)),
            "--privacy",
            "features",
            "--out",
            s(&dir.path().join(model)),
            "--dot",
            s(&dot),
        ]));
        let out = Command::new(dot_bin)
            .args(["-Tsvg", "-o", s(&svg), s(&dot)])
            .output()
            .expect("dot runs");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "dot rejects {}: {}",
            dot.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // Graphviz's own SVG parses, and has one node per box and a cluster per place.
        let report = check(&svg, None);
        assert!(report["width"].as_f64().expect("width") > 0.0);
        let text = std::fs::read_to_string(&svg).expect("dot's svg");
        let nodes = text.matches("class=\"node\"").count();
        assert!(
            nodes >= 3 && nodes <= units_at_most,
            "{model}: {nodes} nodes in dot's drawing"
        );
        assert!(text.contains("class=\"cluster\""), "{model}: tier clusters");
        assert!(
            text.contains("fill=\"#009e73\"") || text.contains("fill=\"#009E73\""),
            "{model}: the device colour"
        );
    }
}

#[test]
fn hostile_node_names_are_escaped() {
    let dir = tempfile::tempdir().expect("tmp");
    let names = ["<script>alert(1)</script>", "a&b \"c\" 'd'", "]]> --> <!--"];
    let model = dir.path().join("hostile.onnx");
    std::fs::write(
        &model,
        tiny_model(
            vec![
                node("Relu", names[0], &["x"], &["t1"]),
                node("Sigmoid", names[1], &["t1"], &["t2"]),
                node("Relu", names[2], &["t2"], &["y"]),
            ],
            "y",
        ),
    )
    .expect("write the model");
    let svg = dir.path().join("hostile.svg");
    ok(&strata(&[
        "plan",
        s(&model),
        "--cluster",
        s(&cluster("phone-homebox-cloud.toml")),
        "--out",
        s(&dir.path().join("plan")),
        "--svg",
        s(&svg),
    ]));
    let report = check(&svg, None);
    let seen: Vec<&str> = report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().expect("name"))
        .collect();
    assert_eq!(seen, names, "every name comes back intact from the parser");
    let text = std::fs::read_to_string(&svg).expect("svg");
    assert!(!text.contains("<script"), "markup from a node name escaped");
}

#[test]
fn plan_frontier_svg_draws_the_offline_frontier_with_the_chosen_plan_ringed() {
    let dir = tempfile::tempdir().expect("tmp");
    let svg = dir.path().join("frontier.svg");
    let plan_dir = dir.path().join("plan");
    ok(&strata(&[
        "plan",
        s(&corpus("squeezenet.onnx")),
        "--cluster",
        s(&cluster("phone-homebox-cloud.toml")),
        "--privacy",
        "features",
        "--out",
        s(&plan_dir),
        "--frontier-svg",
        s(&svg),
    ]));
    let (plan, _) = plan_tiers(&plan_dir);
    let report = check(&svg, Some(1.0));
    let drawn = report["plans"].as_array().expect("plans");
    assert!(
        drawn.len() >= 2,
        "the test proves nothing with one plan: {drawn:?}"
    );
    for d in drawn {
        let levels = d["privacy"].as_str().expect("levels");
        assert!(
            levels.split(' ').any(|l| l == "features"),
            "every plan satisfies the model's level: {d:?}"
        );
    }
    assert!(drawn.iter().any(|d| d["frontier"] == "true"));
    // The plan `strata plan` chose is on the frontier, ringed, at the latency plan.json predicts.
    let chosen: Vec<&Value> = drawn.iter().filter(|d| d["chosen"] == "true").collect();
    assert_eq!(chosen.len(), 1, "{drawn:?}");
    let latency: f64 = chosen[0]["latency-ms"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("latency");
    let predicted = plan["predicted"]["latency_ms"].as_f64().expect("latency");
    assert!(
        (latency - predicted).abs() <= 0.01 * predicted,
        "chart {latency} ms, plan.json {predicted} ms"
    );
    assert_rendered(&report, &[]);
}

#[test]
fn routes_svg_draws_every_plan_of_the_table_with_its_privacy_levels() {
    let sandbox = sandbox::Sandbox::start(&["edge", "cloud"], 3000);
    sandbox.push(&corpus("squeezenet.onnx"), "squeezenet", "open");
    sandbox.wait_served("squeezenet", 1);
    let dir = tempfile::tempdir().expect("tmp");
    let svg = dir.path().join("routes.svg");
    let out = sandbox.strata(&["routes", "squeezenet", "--json", "--svg", s(&svg)]);
    let table: Value = serde_json::from_str(&ok(&out)).expect("routes --json");
    let plans = table["plans"].as_array().expect("plans");
    assert!(
        plans.len() >= 2,
        "the test proves nothing with one plan: {table}"
    );
    let report = check(&svg, Some(1.0));
    let drawn = report["plans"].as_array().expect("drawn plans");
    assert_eq!(drawn.len(), plans.len(), "one point per plan");
    let mut strictest = Vec::new();
    for p in plans {
        let id = p["id"].as_str().expect("id");
        let found: Vec<&Value> = drawn.iter().filter(|d| d["plan"] == id).collect();
        assert_eq!(found.len(), 1, "plan {id} drawn once");
        let d = found[0];
        let levels: Vec<&str> = p["satisfies"]
            .as_array()
            .expect("satisfies")
            .iter()
            .map(|l| l.as_str().expect("level"))
            .collect();
        assert_eq!(d["privacy"], levels.join(" "), "plan {id}'s levels");
        let number = |k: &str| d[k].as_str().and_then(|v| v.parse::<f64>().ok()).expect(k);
        assert!((number("latency-ms") - p["latency_ms"].as_f64().expect("latency")).abs() < 1e-6);
        assert!(
            (number("energy-mj") - p["device_energy_mj"].as_f64().expect("energy")).abs() < 1e-6
        );
        assert_eq!(
            d["chosen"],
            if p["chosen"] == true { "true" } else { "false" }
        );
        strictest.push(d["strictest"].as_str().expect("strictest").to_string());
    }
    // At least one plan is on the frontier, and the point colours are the documented privacy colours.
    assert!(drawn.iter().any(|d| d["frontier"] == "true"));
    let colour = |level: &str| match level {
        "device" => "#009E73",
        "edge" => "#E69F00",
        "features" => "#CC79A7",
        _ => "#0072B2",
    };
    let text = std::fs::read_to_string(&svg).expect("svg");
    for level in &strictest {
        assert!(text.contains(&format!("fill=\"{}\"", colour(level))));
    }
    assert_rendered(&report, &[]);
}
