//! How well the cost model predicts measured stage times, per corpus model: the roofline (peak GFLOP/s,
//! memory bandwidth, per-operator overhead) against the sustained model it replaces (one GFLOP/s and the
//! per-operator overhead), both fitted the same way (`strata_planner::roofline::fit`) to the same training
//! data, leave-one-model-out: the per-node profiles (`strata profile`'s measurement, merged into blocks) of
//! every *other* corpus model. Each held-out model is cut into 1, 2 and 3 stages of consecutive nodes
//! (topological order), each stage is extracted as the planner extracts stages, loaded into tract and timed
//! whole (median of N runs), and its prediction is the sum of its nodes' predicted times, as the planner
//! sums them. Prints a Markdown table (docs/cost-model.md).
//!
//! ```sh
//! CARGO_TARGET_DIR=target cargo run -p strata-cli --example roofline_eval -- --runs 15
//! ```
//!
//! Options: `--runs N` (timed runs per measurement, default 15), `--warmup N` (default 3), `--only a,b`
//! (evaluate only these models; all are still used for training).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use prost::Message;
use strata_core::Tier;
use strata_planner::analyse::{self, InputShape};
use strata_planner::model::Model;
use strata_planner::roofline::{self, Kind, NodeWork, Observation};
use strata_planner::{cost, extract, plan};
use strata_runtime::tract_backend::TractStage;
use strata_runtime::{LoadedStage, TensorData, npy};

/// One corpus model, measured.
struct Measured {
    name: String,
    /// Per-node profile merged into blocks: the training data when another model is held out.
    blocks: Vec<Observation>,
    /// Stages: label, their nodes' work, measured ms.
    stages: Vec<(String, Vec<NodeWork>, f64)>,
}

fn main() -> Result<()> {
    let mut runs = 15usize;
    let mut warmup = 3usize;
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--runs" => runs = value()?.parse().context("--runs")?,
            "--warmup" => warmup = value()?.parse().context("--warmup")?,
            "--only" => only = Some(value()?.split(',').map(str::to_string).collect()),
            other => bail!("unknown argument {other} (--runs N, --warmup N, --only a,b)"),
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/models");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json"))
            .context("corpus/models/manifest.json (build the corpus: python3 corpus/fetch.py)")?,
    )?;
    let entries = manifest.as_array().context("manifest is a list")?;
    let mut measured = Vec::new();
    for entry in entries {
        let name = entry["name"].as_str().context("name")?.to_string();
        let t = Instant::now();
        let m = measure(&dir, entry, runs, warmup).with_context(|| name.clone())?;
        eprintln!(
            "{name}: {} blocks, {} stages measured in {:.1} s",
            m.blocks.len(),
            m.stages.len(),
            t.elapsed().as_secs_f64()
        );
        measured.push(m);
    }

    println!(
        "| model | stages | measured ms (whole) | median \\|error\\| sustained | median \\|error\\| roofline | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let (mut all_old, mut all_new) = (Vec::new(), Vec::new());
    let (mut model_old, mut model_new) = (Vec::new(), Vec::new());
    let mut details = Vec::new();
    for (i, held_out) in measured.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&held_out.name)) {
            continue;
        }
        let train: Vec<Observation> = measured
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .flat_map(|(_, m)| m.blocks.iter().cloned())
            .collect();
        let old = roofline::fit(&train, Kind::Sustained)?.model;
        let new = roofline::fit(&train, Kind::Roofline)?.model;
        let (mut e_old, mut e_new) = (Vec::new(), Vec::new());
        for (label, work, ms) in &held_out.stages {
            let (p_old, p_new) = (old.group_ms(work), new.group_ms(work));
            e_old.push(roofline::relative_error(p_old, *ms));
            e_new.push(roofline::relative_error(p_new, *ms));
            details.push(format!(
                "| {} | {label} | {ms:.3} | {p_old:.3} | {p_new:.3} |",
                held_out.name
            ));
        }
        all_old.extend(&e_old);
        all_new.extend(&e_new);
        let (mo, mn) = (roofline::median(&mut e_old), roofline::median(&mut e_new));
        model_old.push(mo);
        model_new.push(mn);
        let whole = held_out.stages.first().map_or(f64::NAN, |(_, _, ms)| *ms);
        println!(
            "| {} | {} | {whole:.3} | {:.1} % | {:.1} % | {:.2} |",
            held_out.name,
            held_out.stages.len(),
            100.0 * mo,
            100.0 * mn,
            mn / mo
        );
    }
    let (po, pn) = (
        roofline::median(&mut all_old),
        roofline::median(&mut all_new),
    );
    let (mo, mn) = (
        roofline::median(&mut model_old),
        roofline::median(&mut model_new),
    );
    println!(
        "| **all stages** (pooled) | {} | | **{:.1} %** | **{:.1} %** | **{:.2}** |",
        all_old.len(),
        100.0 * po,
        100.0 * pn,
        pn / po
    );
    println!(
        "| median of the per-model medians | | | {:.1} % | {:.1} % | {:.2} |",
        100.0 * mo,
        100.0 * mn,
        mn / mo
    );
    println!();
    println!(
        "Target (median error halved, pooled over stages): {}",
        if pn <= 0.5 * po { "met" } else { "NOT met" }
    );
    let blocks: Vec<Observation> = measured
        .iter()
        .flat_map(|m| m.blocks.iter().cloned())
        .collect();
    let old = roofline::fit(&blocks, Kind::Sustained)?;
    let new = roofline::fit(&blocks, Kind::Roofline)?;
    println!();
    println!(
        "Fitted to every model's blocks ({}): sustained gflops = {:.2}, op_overhead_us = {:.2} (median block error {:.1} %); \
         roofline gflops = {:.2}, bandwidth_gbs = {:.2}, op_overhead_us = {:.2} (median block error {:.1} %)",
        new.observations,
        old.model.gflops,
        old.model.op_overhead_us,
        100.0 * old.median_error,
        new.model.gflops,
        new.model.bandwidth_gbs.unwrap_or(f64::NAN),
        new.model.op_overhead_us,
        100.0 * new.median_error
    );
    println!();
    println!("| model | stage | measured ms | sustained ms | roofline ms |");
    println!("|---|---|---:|---:|---:|");
    for d in details {
        println!("{d}");
    }
    Ok(())
}

/// Profiles one corpus model node by node and times its stages.
fn measure(dir: &Path, entry: &serde_json::Value, runs: usize, warmup: usize) -> Result<Measured> {
    let name = entry["name"].as_str().context("name")?.to_string();
    let bytes = std::fs::read(dir.join(entry["file"].as_str().context("file")?))?;
    let model = Model::from_bytes(&bytes)?;
    let mut shapes = Vec::new();
    let mut values: HashMap<String, TensorData> = HashMap::new();
    for input in entry["inputs"].as_array().context("inputs")? {
        let input_name = input["name"].as_str().context("input name")?.to_string();
        let dims = input["shape"]
            .as_array()
            .context("shape")?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).context("dimension"))
            .collect::<Result<Vec<_>>>()?;
        let npy_path: PathBuf = dir.join(input["npy"].as_str().context("npy")?);
        values.insert(input_name.clone(), npy::decode(&std::fs::read(&npy_path)?)?);
        shapes.push(InputShape {
            name: input_name,
            dims,
        });
    }
    let analysis = analyse::analyse(&model, &bytes, &shapes)?;
    let shape_map: HashMap<String, Vec<usize>> = shapes
        .iter()
        .map(|s| (s.name.clone(), s.dims.clone()))
        .collect();
    let profile = strata_runtime::profile::measure(&bytes, &shape_map, &values, warmup, runs)?;
    let node_ms = cost::attribute_times(&model, &analysis, &profile.nodes);
    let work = roofline::work(&model, &analysis);
    let blocks = roofline::blocks(&work, &node_ms, roofline::BLOCK_MS);

    let n = model.nodes.len();
    let mut stages = Vec::new();
    for parts in 1..=3usize {
        let stage_of: Vec<usize> = (0..n).map(|v| v * parts / n).collect();
        let tiers = vec![Tier::Device; parts];
        let specs = plan::stages_from_assignment(&model, &analysis, &stage_of, &tiers)?;
        let mut available = values.clone();
        for (index, spec) in specs.iter().enumerate() {
            let proto = extract::extract_stage(
                &model,
                &analysis,
                &spec.nodes,
                &spec.inputs,
                &spec.outputs,
                index,
            )?;
            let stage_shapes: HashMap<String, Vec<usize>> = spec
                .inputs
                .iter()
                .map(|t| {
                    let shape = analysis
                        .tensors
                        .get(t)
                        .and_then(|i| i.shape.clone())
                        .with_context(|| format!("stage input {t} has no known shape"))?;
                    Ok((t.clone(), shape))
                })
                .collect::<Result<_>>()?;
            let stage = TractStage::load(&proto.encode_to_vec(), &stage_shapes)?;
            let stage_inputs: HashMap<String, TensorData> = spec
                .inputs
                .iter()
                .map(|t| {
                    let v = available
                        .get(t)
                        .with_context(|| format!("no value for stage input {t}"))?;
                    Ok((t.clone(), v.clone()))
                })
                .collect::<Result<_>>()?;
            let ms = time_stage(&stage, &stage_inputs, runs, warmup)?;
            available.extend(stage.run(&stage_inputs)?);
            stages.push((
                format!("{}/{parts}", index + 1),
                spec.nodes.iter().map(|&v| work[v]).collect(),
                ms,
            ));
        }
    }
    Ok(Measured {
        name,
        blocks,
        stages,
    })
}

/// Median time of whole runs of a loaded stage, ms (as `strata_runtime::profile::measure` times whole runs).
fn time_stage(
    stage: &TractStage,
    inputs: &HashMap<String, TensorData>,
    runs: usize,
    warmup: usize,
) -> Result<f64> {
    let values = stage.ordered_inputs(inputs)?;
    let plan = stage.plan();
    for _ in 0..warmup {
        plan.run(values.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        plan.run(values.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(roofline::median(&mut times))
}
