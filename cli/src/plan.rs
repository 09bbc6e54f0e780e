//! `strata plan` and `strata split`: write `plan.json` and one ONNX file per stage.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;
use strata_core::Privacy;
use strata_core::Tier;
use strata_core::recost::Conditions;
use strata_planner::analyse::{self, Analysis, InputShape};
use strata_planner::cluster::Cluster;
use strata_planner::cost::{self, Profile};
use strata_planner::frontier;
use strata_planner::model::Model;
use strata_planner::onnx::ModelProto;
use strata_planner::partition::{self, Objective};
use strata_planner::plan::{self as planner, PlanFile, PlanOptions, Predicted, Timings};
use strata_planner::split;

use crate::io::{human_bytes, load_model};
use crate::picture::graph::PlanGraph;
use crate::picture::routes::{RouteChart, RoutePlan};

/// Arguments of `strata plan`.
pub struct PlanArgs<'a> {
    pub model: &'a Path,
    pub cluster: &'a Path,
    pub privacy: Privacy,
    pub objective: Objective,
    pub latency_ms: Option<f64>,
    pub profile: Option<&'a Path>,
    pub inputs: &'a [InputShape],
    pub out: &'a Path,
    pub json: bool,
    /// Also draw the plan as SVG here.
    pub svg: Option<&'a Path>,
    /// Also write the plan as Graphviz DOT here.
    pub dot: Option<&'a Path>,
    /// Also draw the frontier of plans (what a control plane would publish) as SVG here.
    pub frontier_svg: Option<&'a Path>,
}

pub fn plan(args: &PlanArgs) -> Result<()> {
    let (bytes, model) = load_model(args.model)?;
    let cluster = read_cluster(args.cluster)?;
    let profile: Option<Profile> = match args.profile {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read profile {}", p.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("profile {} is not a strata profile", p.display()))?,
            )
        }
        None => None,
    };
    if let Some(ms) = args.latency_ms
        && !(ms.is_finite() && ms > 0.0)
    {
        anyhow::bail!("--latency-ms {ms} must be a positive number of milliseconds");
    }
    let options = PlanOptions {
        privacy: args.privacy,
        objective: args.objective,
        latency_budget_ms: args.latency_ms,
    };
    // Analysed here rather than inside `planner::plan`: the pictures need the tensor sizes too.
    let started = std::time::Instant::now();
    let analysis = analyse::analyse(&model, &bytes, args.inputs)
        .with_context(|| format!("cannot plan {}", args.model.display()))?;
    let analyse_ms = started.elapsed().as_secs_f64() * 1e3;
    let planned = planner::plan_analysed(
        &model_name(args.model),
        &model,
        &analysis,
        &cluster,
        profile.as_ref(),
        &options,
        analyse_ms,
    )
    .with_context(|| format!("cannot plan {}", args.model.display()))?;
    write_plan(args.out, &planned.plan, &planned.stage_models)?;
    if args.svg.is_some() || args.dot.is_some() {
        let tier_names: Vec<(Tier, String)> = Tier::ALL
            .into_iter()
            .filter_map(|t| cluster.tier(t).map(|spec| (t, spec.name.clone())))
            .collect();
        let graph = PlanGraph::from_plan(&model, &analysis, &planned.plan, &tier_names)?;
        if let Some(path) = args.svg {
            write_picture(path, &graph.svg())?;
        }
        if let Some(path) = args.dot {
            write_picture(path, &graph.dot())?;
        }
    }
    if let Some(path) = args.frontier_svg {
        let chart = frontier_chart(&model, &analysis, &cluster, args.privacy, &planned.plan)
            .with_context(|| format!("cannot find the frontier of {}", args.model.display()))?;
        write_picture(path, &chart.svg())?;
    }
    report(&planned.plan, args.json)
}

/// The frontier a control plane would publish as the route table for this model on every tier of `cluster`
/// (default search settings, no profile, at the cluster's own network figures), as a chart; the plan
/// `strata plan` chose is ringed when the frontier holds it.
fn frontier_chart(
    model: &Model,
    analysis: &Analysis,
    cluster: &Cluster,
    privacy: Privacy,
    chosen: &PlanFile,
) -> Result<RouteChart> {
    let tiers: BTreeSet<Tier> = Tier::ALL
        .into_iter()
        .filter(|&t| cluster.tier(t).is_some())
        .collect();
    let found = frontier::frontier(
        model,
        analysis,
        cluster,
        &tiers,
        privacy,
        &frontier::Settings::default(),
    )?;
    let conditions = Conditions::nominal(found.links);
    // The chosen plan's tier per node that runs (folded nodes are in no stage).
    let mut chosen_tier: HashMap<&str, Tier> = HashMap::new();
    for stage in &chosen.stages {
        for name in &stage.node_names {
            chosen_tier.insert(name.as_str(), stage.tier);
        }
    }
    let is_chosen = |tier: &[u8]| {
        model.nodes.iter().enumerate().all(|(v, node)| {
            analysis.is_folded(v)
                || chosen_tier.get(node.name.as_str()).map(|t| t.index())
                    == tier.get(v).map(|&t| usize::from(t))
        })
    };
    let plans: Vec<RoutePlan> = found
        .plans
        .iter()
        .filter(|fp| fp.levels.contains(&privacy))
        .enumerate()
        .map(|(i, fp)| {
            let predicted = fp.cost.predict(&conditions, &found.power);
            RoutePlan {
                id: format!("plan {}", i + 1),
                latency_ms: predicted.latency_ms,
                energy_mj: predicted.energy_mj,
                satisfies: fp.levels.clone(),
                tiers: fp.cost.stages.iter().map(|s| s.tier).collect(),
                chosen: is_chosen(&fp.tier),
            }
        })
        .collect();
    let mut lines = vec![
        format!(
            "cluster {}, privacy {}: the {} plan(s) a control plane would publish",
            cluster.name,
            privacy.name(),
            plans.len()
        ),
        "predicted at the cluster file's network figures; ring: the plan `strata plan` chose"
            .to_string(),
    ];
    lines.extend(found.notes.iter().map(|n| format!("note: {n}")));
    Ok(RouteChart {
        title: format!("{}: frontier of plans", chosen.model),
        lines,
        plans,
    })
}

/// Writes a picture (SVG or DOT text), creating its directory.
pub fn write_picture(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn split(
    model_path: &Path,
    boundaries: &[Vec<String>],
    inputs: &[InputShape],
    cluster_path: Option<&Path>,
    out: &Path,
    json: bool,
) -> Result<()> {
    let (bytes, model) = load_model(model_path)?;
    let started = std::time::Instant::now();
    let analysis = analyse::analyse(&model, &bytes, inputs)
        .with_context(|| model_path.display().to_string())?;
    let analyse_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = std::time::Instant::now();
    let stage_of = split::stage_assignment(&model, &analysis, boundaries)?;
    let tiers: Vec<Tier> = (0..=boundaries.len())
        .map(|s| Tier::ALL[s.min(2)])
        .collect();
    let specs = planner::stages_from_assignment(&model, &analysis, &stage_of, &tiers)?;
    let plan_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = std::time::Instant::now();
    // With a cluster, score the manual split with the same cost model the planner optimises.
    let mut cluster_name = None;
    let mut predicted = None;
    let mut node_ms = None;
    let mut memory = None;
    if let Some(path) = cluster_path {
        let cluster = read_cluster(path)?;
        let tiers: Vec<u8> = stage_of.iter().map(|&s| s.min(2) as u8).collect();
        for spec in &specs {
            if cluster.tier(spec.tier).is_none() {
                anyhow::bail!(
                    "{}: the split puts a stage on the {} tier, which the cluster does not have",
                    path.display(),
                    spec.tier
                );
            }
        }
        let problem = cost::build_problem(&model, &analysis, &cluster, Privacy::Open, None)?;
        let ev = partition::evaluate(&problem, &tiers);
        node_ms = Some(
            tiers
                .iter()
                .enumerate()
                .map(|(v, &t)| problem.latency.node_cost[v][t as usize])
                .collect::<Vec<f64>>(),
        );
        memory = Some(ev.memory_bytes);
        predicted = Some(Predicted {
            latency_ms: ev.latency_ms,
            device_energy_mj: ev.device_energy_mj,
        });
        cluster_name = Some(cluster.name.clone());
        for tier in Tier::ALL {
            if let Some(spec) = cluster.tier(tier)
                && ev.memory_bytes[tier.index()] > spec.memory_mib * 1024.0 * 1024.0
            {
                eprintln!(
                    "warning: the {tier} stage needs {} but the {tier} tier has {}",
                    human_bytes(ev.memory_bytes[tier.index()]),
                    human_bytes(spec.memory_mib * 1024.0 * 1024.0)
                );
            }
        }
    }
    let (stages, protos) = planner::build_stages(
        &model,
        &analysis,
        &specs,
        node_ms.as_deref(),
        memory.as_ref(),
    )?;
    let plan = PlanFile {
        model: model_name(model_path),
        privacy: None,
        objective: "manual".into(),
        latency_budget_ms: None,
        cluster: cluster_name,
        input_shapes: analysis
            .input_shapes
            .iter()
            .map(|s| (s.name.clone(), s.dims.clone()))
            .collect(),
        outputs: model.outputs.clone(),
        predicted,
        optimality: None,
        timings_ms: Timings {
            analyse: analyse_ms,
            plan: plan_ms,
            extract: started.elapsed().as_secs_f64() * 1e3,
        },
        stages,
    };
    write_plan(out, &plan, &protos)?;
    report(&plan, json)
}

fn read_cluster(path: &Path) -> Result<Cluster> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cluster file {}", path.display()))?;
    Cluster::from_toml(&text).with_context(|| path.display().to_string())
}

fn model_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Writes the stage models, then `plan.json` (last, so a half-written directory has no plan).
fn write_plan(out: &Path, plan: &PlanFile, protos: &[ModelProto]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let stale = out.join("plan.json");
    if stale.exists() {
        std::fs::remove_file(&stale)
            .with_context(|| format!("cannot replace {}", stale.display()))?;
    }
    for entry in std::fs::read_dir(out)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("stage") && name.ends_with(".onnx") {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove stale {name}"))?;
        }
    }
    for (stage, proto) in plan.stages.iter().zip(protos) {
        let path = out.join(&stage.file);
        std::fs::write(&path, proto.encode_to_vec())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let path = out.join("plan.json");
    std::fs::write(&path, serde_json::to_string_pretty(plan)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn report(plan: &PlanFile, json: bool) -> Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(plan)?)?;
        return Ok(());
    }
    say!(
        "{:<6} {:<7} {:>6} {:>9} {:>12} {:>11} {:>11}  file",
        "stage",
        "tier",
        "nodes",
        "GFLOPs",
        "predicted ms",
        "bytes sent",
        "memory"
    )?;
    for s in &plan.stages {
        say!(
            "{:<6} {:<7} {:>6} {:>9.3} {:>12} {:>11} {:>11}  {}",
            s.index,
            s.tier,
            s.nodes,
            s.flops / 1e9,
            s.predicted_ms.map_or("-".into(), |m| format!("{m:.2}")),
            human_bytes(s.bytes_in as f64),
            if s.memory_bytes > 0 {
                human_bytes(s.memory_bytes as f64)
            } else {
                "-".into()
            },
            s.file
        )?;
    }
    if let Some(p) = &plan.predicted {
        say!(
            "predicted: {:.2} ms end to end, {:.2} mJ on the device",
            p.latency_ms,
            p.device_energy_mj
        )?;
    }
    if let Some(o) = &plan.optimality {
        if o.exact {
            say!("optimal: yes (exact over all monotone placements)")?;
        } else {
            say!(
                "optimal: within {:.2}% of the relaxed optimum (lower bound {:.3})",
                o.gap * 100.0,
                o.lower_bound
            )?;
        }
    }
    let t = &plan.timings_ms;
    say!(
        "planner time: analyse {:.1} ms, plan {:.2} ms, extract {:.1} ms",
        t.analyse,
        t.plan,
        t.extract
    )?;
    Ok(())
}
