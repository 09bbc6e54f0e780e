//! Commands that talk to a running cluster: `model push|ls|rm`, `nodes`, `routes`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use strata_device_sdk::{Constraints, route};
use strata_proto::v1::{self, control_client::ControlClient, routes_client::RoutesClient};
use tonic::transport::Channel;

/// A runtime and a channel to the first endpoint.
pub fn connect(endpoints: &[String]) -> Result<(tokio::runtime::Runtime, Channel)> {
    let runtime = tokio::runtime::Runtime::new()?;
    let Some(first) = endpoints.first() else {
        bail!("no endpoint: pass --endpoint or set STRATA_ENDPOINT");
    };
    let channel = {
        let _guard = runtime.enter();
        strata_proto::call::channel(first, Duration::from_secs(2))
            .map_err(|e| anyhow::anyhow!(e))?
    };
    Ok((runtime, channel))
}

fn status(endpoint: &[String], s: tonic::Status) -> anyhow::Error {
    match s.code() {
        // The control plane answered but its store did not: say so, not "cannot reach".
        tonic::Code::Unavailable if s.message().starts_with("state store") => anyhow::anyhow!(
            "{} is up but cannot reach its state store ({}); serving goes on from cached routes, retry later",
            endpoint.join(","),
            s.message()
        ),
        tonic::Code::Unavailable
            if s.message().contains("transport") || s.message().contains("connect") =>
        {
            anyhow::anyhow!(
                "cannot reach {} ({}); is `strata up` or `strata control-plane` running?",
                endpoint.join(","),
                s.message()
            )
        }
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "{} is not a control plane (model and node commands need one; agents serve only routes and inference)",
            endpoint.join(",")
        ),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

/// `strata model push`.
pub fn push(
    endpoints: &[String],
    file: &Path,
    name: &str,
    privacy: &str,
    input_shapes: &[String],
) -> Result<()> {
    let privacy = v1::Privacy::from_label(privacy).with_context(|| {
        format!("unknown privacy \"{privacy}\"; expected device, edge, features or open")
    })?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let meta = v1::ModelMeta {
        name: name.to_string(),
        digest: strata_control_plane::blob::sha256_hex(&bytes),
        size_bytes: bytes.len() as u64,
        privacy: privacy as i32,
        input_shapes: input_shapes.to_vec(),
    };
    let bar = (bytes.len() > 8 << 20 && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(bytes.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let data = bytes::Bytes::from(bytes);
    let mut messages = vec![v1::PushModelRequest {
        part: Some(v1::push_model_request::Part::Meta(meta)),
    }];
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + strata_proto::CHUNK_BYTES).min(data.len());
        messages.push(v1::PushModelRequest {
            part: Some(v1::push_model_request::Part::Data(data.slice(offset..end))),
        });
        offset = end;
    }
    let progress = bar.clone();
    let stream = futures::stream::iter(messages).inspect(move |m| {
        if let (Some(bar), Some(v1::push_model_request::Part::Data(d))) = (&progress, &m.part) {
            bar.inc(d.len() as u64);
        }
    });
    let (runtime, channel) = connect(endpoints)?;
    let info = runtime.block_on(async {
        ControlClient::new(channel)
            .max_encoding_message_size(strata_proto::MAX_MESSAGE_BYTES)
            .push_model(stream)
            .await
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let info = info
        .map_err(|s| status(endpoints, s))?
        .into_inner()
        .model
        .unwrap_or_default();
    say!(
        "pushed {} version {} ({} bytes, sha256 {}), privacy {}: {}",
        info.name,
        info.version,
        info.size_bytes,
        &info.digest[..12.min(info.digest.len())],
        v1::Privacy::try_from(info.privacy)
            .unwrap_or(v1::Privacy::Unspecified)
            .label(),
        info.state
    )?;
    Ok(())
}

use futures::StreamExt;

/// `strata model ls`.
pub fn list(endpoints: &[String]) -> Result<()> {
    let (runtime, channel) = connect(endpoints)?;
    let models = runtime
        .block_on(ControlClient::new(channel).list_models(v1::ListModelsRequest {}))
        .map_err(|s| status(endpoints, s))?
        .into_inner()
        .models;
    say!(
        "{:<20} {:>7} {:>9} {:>12} {:>6}  state",
        "model",
        "version",
        "privacy",
        "bytes",
        "plans"
    )?;
    for m in models {
        say!(
            "{:<20} {:>7} {:>9} {:>12} {:>6}  {}",
            m.name,
            m.version,
            v1::Privacy::try_from(m.privacy)
                .unwrap_or(v1::Privacy::Unspecified)
                .label(),
            m.size_bytes,
            m.routes.as_ref().map_or(0, |r| r.plans.len()),
            m.state
        )?;
    }
    Ok(())
}

/// `strata model rm`.
pub fn remove(endpoints: &[String], name: &str) -> Result<()> {
    let (runtime, channel) = connect(endpoints)?;
    runtime
        .block_on(
            ControlClient::new(channel).delete_model(v1::DeleteModelRequest {
                name: name.to_string(),
            }),
        )
        .map_err(|s| status(endpoints, s))?;
    say!("removed {name}")?;
    Ok(())
}

/// `strata nodes`.
pub fn nodes(endpoints: &[String]) -> Result<()> {
    let (runtime, channel) = connect(endpoints)?;
    let nodes = runtime
        .block_on(ControlClient::new(channel).list_nodes(v1::ListNodesRequest {}))
        .map_err(|s| status(endpoints, s))?
        .into_inner()
        .nodes;
    say!(
        "{:<20} {:<6} {:<22} {:>9} {:>6} {:>7} {:>10}",
        "node",
        "tier",
        "address",
        "in-flight",
        "queue",
        "stages",
        "last seen"
    )?;
    for n in nodes {
        let spec = n.spec.unwrap_or_default();
        let load = n.load.unwrap_or_default();
        say!(
            "{:<20} {:<6} {:<22} {:>9} {:>6} {:>7} {:>8}ms",
            n.id,
            v1::Tier::try_from(spec.tier)
                .unwrap_or(v1::Tier::Unspecified)
                .label(),
            spec.address,
            load.in_flight,
            load.queue_depth,
            n.ready.len(),
            n.last_seen_ms
        )?;
    }
    Ok(())
}

/// `strata routes`.
pub fn routes(
    endpoints: &[String],
    model: &str,
    constraints: &Constraints,
    json: bool,
) -> Result<()> {
    let (runtime, channel) = connect(endpoints)?;
    let table = runtime
        .block_on(RoutesClient::new(channel).get_routes(v1::GetRoutesRequest {
            model: model.to_string(),
        }))
        .map_err(|s| status(endpoints, s))?
        .into_inner();
    let chosen = route::choose(&table, constraints, |_| false).map(|p| p.id.clone());
    if json {
        let plans: Vec<serde_json::Value> = table
            .plans
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "chosen": Some(&p.id) == chosen.as_ref(),
                    "satisfies": p.satisfies.iter().map(|&l| v1::Privacy::try_from(l).unwrap_or(v1::Privacy::Unspecified).label()).collect::<Vec<_>>(),
                    "objective": p.objective,
                    "latency_ms": p.latency_ms,
                    "device_energy_mj": p.device_energy_mj,
                    "device_bytes_sent": p.device_bytes_sent,
                    "stages": p.stages.iter().map(|s| serde_json::json!({
                        "index": s.index,
                        "tier": v1::Tier::try_from(s.tier).unwrap_or(v1::Tier::Unspecified).label(),
                        "inputs": s.inputs, "outputs": s.outputs, "nodes": s.nodes,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": table.model, "version": table.version, "revision": table.revision,
                "privacy": v1::Privacy::try_from(table.privacy).unwrap_or(v1::Privacy::Unspecified).label(),
                "plans": plans, "notes": table.notes,
            }))?
        )?;
        return Ok(());
    }
    say!(
        "{} version {} (privacy {}), {} plan(s):",
        table.model,
        table.version,
        v1::Privacy::try_from(table.privacy)
            .unwrap_or(v1::Privacy::Unspecified)
            .label(),
        table.plans.len()
    )?;
    say!(
        "  {:<14} {:<28} {:>11} {:>11} {:>12}  stages",
        "plan",
        "satisfies",
        "latency ms",
        "energy mJ",
        "bytes sent"
    )?;
    for p in &table.plans {
        let stages: Vec<String> = p
            .stages
            .iter()
            .map(|s| {
                let tier = v1::Tier::try_from(s.tier)
                    .unwrap_or(v1::Tier::Unspecified)
                    .label();
                if s.tier == v1::Tier::Device as i32 {
                    tier.to_string()
                } else {
                    format!("{tier}[{}]", s.nodes.len())
                }
            })
            .collect();
        let levels: Vec<&str> = p
            .satisfies
            .iter()
            .map(|&l| {
                v1::Privacy::try_from(l)
                    .unwrap_or(v1::Privacy::Unspecified)
                    .label()
            })
            .collect();
        say!(
            "{} {:<14} {:<28} {:>11.2} {:>11.2} {:>12}  {}",
            if Some(&p.id) == chosen.as_ref() {
                "*"
            } else {
                " "
            },
            p.id,
            levels.join(","),
            p.latency_ms,
            p.device_energy_mj,
            p.device_bytes_sent,
            stages.join(" -> ")
        )?;
    }
    for note in &table.notes {
        say!("  note: {note}")?;
    }
    say!("* = what a request with these constraints gets now; [n] = ready agents")?;
    Ok(())
}
