//! `strata profile`: per-node times on this machine, and the roofline fitted to them (`--fit`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use strata_core::Tier;
use strata_planner::analyse::{self, InputShape};
use strata_planner::cost::{self, NodeTime, Profile};
use strata_planner::model::Model;
use strata_planner::roofline::{self, Fit, Kind, Observation};
use strata_runtime::{DType, TensorData};

use crate::io::load_model;

/// What `strata profile` was asked.
pub struct ProfileArgs<'a> {
    /// The models (at least one).
    pub models: &'a [PathBuf],
    /// Input shapes (with several models, each applies to the models with an input of that name).
    pub inputs: &'a [InputShape],
    /// Timed runs.
    pub runs: usize,
    /// Untimed warm-up runs.
    pub warmup: usize,
    /// Where to write the profile JSON (one model only).
    pub out: Option<&'a Path>,
    /// Fit and print the roofline.
    pub fit: bool,
    /// Where to write the fitted tier section (implies `fit`).
    pub fit_out: Option<&'a Path>,
    /// The tier the fitted section is headed for.
    pub tier: Tier,
}

pub fn run(args: &ProfileArgs) -> Result<()> {
    if args.models.len() > 1 && args.out.is_some() {
        bail!("--out writes one model's profile; profile one model at a time to write profiles");
    }
    let mut loaded = Vec::with_capacity(args.models.len());
    let mut used = vec![false; args.inputs.len()];
    for path in args.models {
        let (bytes, model) = load_model(path)?;
        // With several models, each --input applies to the models that have an input of that name.
        let inputs: Vec<InputShape> = args
            .inputs
            .iter()
            .enumerate()
            .filter(|(_, s)| args.models.len() == 1 || model.inputs.contains(&s.name))
            .map(|(i, s)| {
                used[i] = true;
                s.clone()
            })
            .collect();
        loaded.push((path, bytes, model, inputs));
    }
    if let Some(unused) = used.iter().position(|u| !u) {
        bail!(
            "--input {}: none of the models has an input of that name",
            args.inputs[unused].name
        );
    }
    let mut observations: Vec<Observation> = Vec::new();
    for (path, bytes, model, inputs) in loaded {
        let (profile, model_observations) = profile_one(path, bytes, model, &inputs, args)?;
        observations.extend(model_observations);
        if let Some(out) = args.out {
            std::fs::write(out, serde_json::to_string_pretty(&profile)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            say!("profile written to {}", out.display())?;
        }
    }
    if args.fit || args.fit_out.is_some() {
        let what = || {
            format!(
                "cannot fit a roofline to the {} timed blocks of {} model(s)",
                observations.len(),
                args.models.len()
            )
        };
        let roof = roofline::fit(&observations, Kind::Roofline).with_context(what)?;
        let sustained = roofline::fit(&observations, Kind::Sustained).with_context(what)?;
        let section = tier_section(args.tier, &roof, &sustained, args.models)?;
        say!("{section}")?;
        if let Some(out) = args.fit_out {
            std::fs::write(out, &section)
                .with_context(|| format!("cannot write {}", out.display()))?;
            say!("fitted tier written to {}", out.display())?;
        }
    }
    Ok(())
}

/// Profiles one model: prints its summary, returns its profile and its timed blocks for the fit.
fn profile_one(
    path: &Path,
    bytes: Vec<u8>,
    model: Model,
    inputs: &[InputShape],
    args: &ProfileArgs,
) -> Result<(Profile, Vec<Observation>)> {
    let analysis =
        analyse::analyse(&model, &bytes, inputs).with_context(|| path.display().to_string())?;
    let shapes: HashMap<String, Vec<usize>> = analysis
        .input_shapes
        .iter()
        .map(|s| (s.name.clone(), s.dims.clone()))
        .collect();
    let values = sample_inputs(&model, &analysis.input_shapes)?;
    let measured =
        strata_runtime::profile::measure(&bytes, &shapes, &values, args.warmup, args.runs)
            .with_context(|| format!("cannot profile {}", path.display()))?;
    let ms = cost::attribute_times(&model, &analysis, &measured.nodes);
    let total_flops = analysis.total_flops().max(1.0);
    let profile = Profile {
        model: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        machine: machine(),
        runs: args.runs,
        total_ms: measured.total_ms,
        effective_gflops: total_flops / (measured.total_ms.max(1e-6) * 1e6),
        nodes: model
            .nodes
            .iter()
            .zip(&ms)
            .map(|(n, &ms)| NodeTime {
                name: n.name.clone(),
                op_type: n.op_type.clone(),
                ms,
            })
            .collect(),
    };
    say!(
        "{}: {:.3} ms per run (median of {}), {:.2} GFLOP/s effective on {}",
        profile.model,
        profile.total_ms,
        args.runs,
        profile.effective_gflops,
        profile.machine
    )?;
    let mut top: Vec<&NodeTime> = profile.nodes.iter().collect();
    top.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    say!("{:<48} {:<20} {:>10}", "node", "op", "ms")?;
    for n in top.iter().take(15) {
        say!("{:<48} {:<20} {:>10.4}", n.name, n.op_type, n.ms)?;
    }
    let work = roofline::work(&model, &analysis);
    Ok((profile, roofline::blocks(&work, &ms, roofline::BLOCK_MS)))
}

/// The fitted roofline as a `[tiers.TIER]` section to paste into a cluster file.
fn tier_section(tier: Tier, roof: &Fit, sustained: &Fit, models: &[PathBuf]) -> Result<String> {
    let m = &roof.model;
    let bandwidth = m
        .bandwidth_gbs
        .context("a roofline fit always has a bandwidth")?;
    let names: Vec<String> = models
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut s = String::new();
    writeln!(
        s,
        "# Roofline fitted by `strata profile --fit` (tract) on {} from {} timed blocks of {}.",
        machine(),
        roof.observations,
        names.join(", ")
    )?;
    writeln!(
        s,
        "# Median |error| per block: {:.1} % (sustained GFLOP/s + overhead alone: {:.1} %, with gflops = {:.3}, \
         op_overhead_us = {:.3}).",
        100.0 * roof.median_error,
        100.0 * sustained.median_error,
        sustained.model.gflops,
        sustained.model.op_overhead_us
    )?;
    writeln!(s, "[tiers.{tier}]")?;
    writeln!(s, "name = {:?}", machine())?;
    writeln!(s, "gflops = {:.3}", m.gflops)?;
    writeln!(s, "bandwidth_gbs = {bandwidth:.3}")?;
    writeln!(s, "op_overhead_us = {:.3}", m.op_overhead_us)?;
    writeln!(
        s,
        "# This machine's memory: lower it to what Strata's stages may use."
    )?;
    write!(s, "memory_mib = {}", memory_mib())?;
    Ok(s)
}

/// Deterministic inputs of the right dtype and shape: floats in [0, 1), integers 0.
pub fn sample_inputs(model: &Model, shapes: &[InputShape]) -> Result<HashMap<String, TensorData>> {
    let mut values = HashMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for s in shapes {
        let code = model.declared_elem_type(&s.name).unwrap_or(1);
        let dtype = DType::from_onnx_code(code)
            .with_context(|| format!("input \"{}\" has an unsupported dtype", s.name))?;
        let n: usize = s.dims.iter().product();
        let data = if dtype == DType::F32 {
            (0..n)
                .flat_map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed >> 40) as f32 / (1u64 << 24) as f32).to_le_bytes()
                })
                .collect()
        } else {
            vec![0u8; n * dtype.size()]
        };
        values.insert(
            s.name.clone(),
            TensorData::new(dtype, s.dims.clone(), data).map_err(anyhow::Error::msg)?,
        );
    }
    Ok(values)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!(
        "{cpu} ({} threads)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}

/// This machine's total memory, MiB (1024 when it cannot be read).
fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(1024, |kib| kib / 1024)
}
