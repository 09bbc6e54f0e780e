//! `strata infer`: run a model as a device would — the device stage in-process, the rest on the cluster.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use strata_device_sdk::{Client, ClientConfig, Constraints};

use crate::io::{load_inputs, write_outputs};

/// `strata infer`.
pub fn infer(
    endpoints: &[String],
    model: &str,
    input_args: &[String],
    constraints: Constraints,
    timeout_ms: u64,
    output_dir: &Path,
) -> Result<()> {
    let inputs = load_inputs(input_args)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let mut config = ClientConfig::new(endpoints.to_vec());
        config.request_timeout = Duration::from_millis(timeout_ms);
        let client = Client::new(config)?;
        client.infer(model, inputs, constraints).await
    });
    let result = result.with_context(|| format!("infer {model}"))?;
    let route: Vec<String> = result
        .stages
        .iter()
        .map(|s| match &s.node {
            Some(n) => format!("{}({n})", s.tier),
            None => s.tier.to_string(),
        })
        .collect();
    say!(
        "plan {} (predicted {:.1} ms): {}{}",
        result.plan_id,
        result.predicted_ms,
        route.join(" -> "),
        if result.fallbacks > 0 {
            format!("  [after {} fallback(s)]", result.fallbacks)
        } else {
            String::new()
        }
    )?;
    for s in &result.stages {
        say!(
            "  stage {} {:<6} {:>9.2} ms compute {:>8.2} ms queued  {}",
            s.index,
            s.tier,
            s.compute_ms,
            s.queue_ms,
            s.node.as_deref().unwrap_or("(this device)")
        )?;
    }
    say!("total {:.2} ms", result.total_ms)?;
    let names: Vec<String> = result.outputs.iter().map(|(n, _)| n.clone()).collect();
    let values: HashMap<_, _> = result.outputs.into_iter().collect();
    write_outputs(output_dir, &names, &values)?;
    say!(
        "wrote {} output(s) to {}",
        names.len(),
        output_dir.display()
    )?;
    Ok(())
}
