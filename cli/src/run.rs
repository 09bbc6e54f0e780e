//! `strata run`: a whole model, or a plan's stages in order.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use strata_planner::analyse::{self, InputShape};
use strata_planner::plan::PlanFile;
use strata_runtime::{Backend, DType, TensorData, TractBackend};

use crate::io::{load_inputs, load_model, write_outputs};

pub fn run(target: &Path, input_args: &[String], output_dir: &Path) -> Result<()> {
    let inputs = load_inputs(input_args)?;
    let shapes: HashMap<String, Vec<usize>> = inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.clone()))
        .collect();
    if target.is_dir() {
        let plan_path = target.join("plan.json");
        let text = std::fs::read_to_string(&plan_path).with_context(|| {
            format!(
                "{} has no readable plan.json (make one with `strata plan` or `strata split`)",
                target.display()
            )
        })?;
        let plan: PlanFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid plan", plan_path.display()))?;
        for (name, dims) in &plan.input_shapes {
            match shapes.get(name) {
                Some(given) if given != dims => bail!(
                    "input \"{name}\": the plan was made for shape {dims:?}, got {given:?}; re-plan with --input {name}={}",
                    given
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Some(_) => {}
                None => bail!(
                    "missing input \"{name}\" (the plan needs: {})",
                    plan.input_shapes
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        let values = run_plan(target, &plan, inputs, &shapes)?;
        write_outputs(output_dir, &plan.outputs, &values)?;
        say!(
            "wrote {} output(s) to {}",
            plan.outputs.len(),
            output_dir.display()
        )?;
        return Ok(());
    }
    let (bytes, model) = load_model(target)?;
    let given: Vec<InputShape> = shapes
        .iter()
        .map(|(k, v)| InputShape {
            name: k.clone(),
            dims: v.clone(),
        })
        .collect();
    analyse::resolve_input_shapes(&model, &given)?;
    for (name, t) in &inputs {
        if let Some(code) = model.declared_elem_type(name)
            && DType::from_onnx_code(code) != Some(t.dtype)
        {
            bail!(
                "input \"{name}\": the model expects {}, the file holds {}",
                strata_planner::onnx::dtype_name(code),
                t.dtype
            );
        }
    }
    let started = Instant::now();
    let stage = TractBackend
        .load(&bytes, &shapes)
        .with_context(|| target.display().to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let outputs = stage.run(&inputs)?;
    say!(
        "ran {} in {:.2} ms (load {:.0} ms)",
        target.display(),
        started.elapsed().as_secs_f64() * 1e3,
        load_ms
    )?;
    write_outputs(output_dir, &model.outputs, &outputs)?;
    say!(
        "wrote {} output(s) to {}",
        model.outputs.len(),
        output_dir.display()
    )?;
    Ok(())
}

/// Runs a plan's stages in order, passing tensors by name; returns every tensor produced.
pub fn run_plan(
    dir: &Path,
    plan: &PlanFile,
    inputs: HashMap<String, TensorData>,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<HashMap<String, TensorData>> {
    let mut values = inputs;
    for stage in &plan.stages {
        let path = dir.join(&stage.file);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read stage {}", path.display()))?;
        let mut stage_shapes = HashMap::new();
        let mut feed = HashMap::new();
        for name in &stage.inputs {
            let t = values.get(name).with_context(|| {
                format!(
                    "stage {} needs \"{name}\", which no earlier stage produced",
                    stage.index
                )
            })?;
            if let Some(s) = shapes.get(name) {
                stage_shapes.insert(name.clone(), s.clone());
            }
            feed.insert(name.clone(), t.clone());
        }
        let loaded = TractBackend
            .load(&bytes, &stage_shapes)
            .with_context(|| format!("stage {} ({})", stage.index, stage.file))?;
        let started = Instant::now();
        let out = loaded
            .run(&feed)
            .with_context(|| format!("stage {} ({})", stage.index, stage.file))?;
        say!(
            "stage {} on {:<6} {:>8.2} ms  {} node(s)",
            stage.index,
            stage.tier.to_string(),
            started.elapsed().as_secs_f64() * 1e3,
            stage.nodes
        )?;
        values.extend(out);
    }
    Ok(values)
}
