//! Commands that talk to a running cluster: `model push|ls|rm`, `nodes`, `routes`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use strata_core::{Digest, Privacy, Tier};
use strata_device_sdk::{Constraints, route};
use strata_proto::convert::{self, privacy_name, tier_name};
use strata_proto::error::{ErrorReason, reason};
use strata_proto::transport::{Expect, Transport};
use strata_proto::v1::{self, control_client::ControlClient, routes_client::RoutesClient};
use tonic::transport::Channel;

/// The cluster a command talks to: its endpoints, and how to dial them.
pub struct Target {
    /// Control planes (or agents), `host:port`.
    pub endpoints: Vec<String>,
    /// Plain or mutual TLS (the CLI's `--tls-*` flags).
    pub transport: Transport,
}

/// A runtime and a channel to the first endpoint, which must prove it is a control plane (models, nodes,
/// tokens: only a control plane may be told or asked these).
pub fn connect(target: &Target) -> Result<(tokio::runtime::Runtime, Channel)> {
    connect_to(target, Expect::Controller)
}

/// A runtime and a channel to the first endpoint, which must prove it is `expect`.
pub fn connect_to(target: &Target, expect: Expect) -> Result<(tokio::runtime::Runtime, Channel)> {
    let runtime = tokio::runtime::Runtime::new()?;
    let Some(first) = target.endpoints.first() else {
        bail!("no endpoint: pass --endpoint or set STRATA_ENDPOINT");
    };
    let channel = {
        let _guard = runtime.enter();
        strata_proto::call::channel(first, Duration::from_secs(2), &target.transport, expect)?
    };
    Ok((runtime, channel))
}

/// A status's message with the transport errors under it (a TLS refusal is only said down there).
fn error_chain(s: &tonic::Status) -> String {
    let mut parts = vec![s.message().to_string()];
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// Whether a failed call never reached a server: the client's transport failed (connection refused, no
/// route, TLS), as opposed to a server answering `UNAVAILABLE`.
fn unreachable(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// What a failed call to `target` says: whether it reached a server and what that server lacked.
fn status(target: &Target, s: tonic::Status) -> anyhow::Error {
    let endpoint = &target.endpoints;
    match s.code() {
        // The control plane answered but its store did not: say so, not "cannot reach".
        tonic::Code::Unavailable if reason(&s) == Some(ErrorReason::StoreUnavailable) => {
            anyhow::anyhow!(
                "{} is up but cannot reach its state store ({}); serving goes on from cached routes, retry later",
                endpoint.join(","),
                s.message()
            )
        }
        tonic::Code::Unavailable if unreachable(&s) => {
            anyhow::anyhow!(
                "cannot reach {} ({}); is `strata up` or `strata control-plane` running, and do both sides use TLS (--tls-dir) or neither?",
                endpoint.join(","),
                error_chain(&s)
            )
        }
        tonic::Code::Unauthenticated => anyhow::anyhow!(
            "{} requires a client certificate: {} (give --tls-dir DIR with ca.pem, cert.pem and key.pem; see `strata cert issue`)",
            endpoint.join(","),
            s.message()
        ),
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "{} is not a control plane (model and node commands need one; agents serve only routes and inference)",
            endpoint.join(",")
        ),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

/// `strata model push`.
pub fn push(
    target: &Target,
    file: &Path,
    name: &str,
    privacy: &str,
    input_shapes: &[String],
    batching: Option<v1::Batching>,
) -> Result<()> {
    let privacy: Privacy = privacy.parse()?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let meta = v1::ModelMeta {
        name: name.to_string(),
        digest: Digest::of(&bytes).to_string(),
        size_bytes: bytes.len() as u64,
        privacy: v1::Privacy::from(privacy) as i32,
        input_shapes: input_shapes.to_vec(),
        batching,
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
    let (runtime, channel) = connect(target)?;
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
        .map_err(|s| status(target, s))?
        .into_inner()
        .model
        .unwrap_or_default();
    say!(
        "pushed {} version {} ({} bytes, sha256 {}), privacy {}: {}",
        info.name,
        info.version,
        info.size_bytes,
        &info.digest[..12.min(info.digest.len())],
        privacy_name(info.privacy),
        state(&info)
    )?;
    Ok(())
}

use futures::StreamExt;

/// `strata model ls`.
pub fn list(target: &Target) -> Result<()> {
    let (runtime, channel) = connect(target)?;
    let models = runtime
        .block_on(ControlClient::new(channel).list_models(v1::ListModelsRequest {}))
        .map_err(|s| status(target, s))?
        .into_inner()
        .models;
    say!(
        "{:<20} {:>7} {:>9} {:>12} {:>6} {:>12}  state",
        "model",
        "version",
        "privacy",
        "bytes",
        "plans",
        "batching"
    )?;
    for m in models {
        let batching = m.batching.map_or_else(
            || "-".to_string(),
            |b| format!("{}/{}us", b.max_batch, b.max_queue_delay_us),
        );
        say!(
            "{:<20} {:>7} {:>9} {:>12} {:>6} {:>12}  {}",
            m.name,
            m.version,
            privacy_name(m.privacy),
            m.size_bytes,
            m.routes.as_ref().map_or(0, |r| r.plans.len()),
            batching,
            state(&m)
        )?;
    }
    Ok(())
}

/// `strata model rm`.
pub fn remove(target: &Target, name: &str) -> Result<()> {
    let (runtime, channel) = connect(target)?;
    runtime
        .block_on(
            ControlClient::new(channel).delete_model(v1::DeleteModelRequest {
                name: name.to_string(),
            }),
        )
        .map_err(|s| status(target, s))?;
    say!("removed {name}")?;
    Ok(())
}

/// `strata nodes`.
pub fn nodes(target: &Target) -> Result<()> {
    let (runtime, channel) = connect(target)?;
    let nodes = runtime
        .block_on(ControlClient::new(channel).list_nodes(v1::ListNodesRequest {}))
        .map_err(|s| status(target, s))?
        .into_inner()
        .nodes;
    say!(
        "{:<24} {:<6} {:<22} {:>5} {:>8} {:<8} {:>9} {:>6} {:>7} {:>10} {:>10}",
        "node",
        "tier",
        "address",
        "cores",
        "memory",
        "backends",
        "in-flight",
        "queue",
        "stages",
        "stage ms",
        "last seen"
    )?;
    for n in nodes {
        let spec = n.spec.unwrap_or_default();
        let load = n.load.unwrap_or_default();
        // The mean of the node's measured stage times: what one stage costs there now.
        let stage_ms = if n.stage_ms.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{:.1}",
                n.stage_ms.values().sum::<f64>() / n.stage_ms.len() as f64
            )
        };
        say!(
            "{:<24} {:<6} {:<22} {:>5} {:>6}Mi {:<8} {:>9} {:>6} {:>7} {:>10} {:>8}ms",
            n.id,
            tier_name(spec.tier),
            spec.address,
            spec.cores,
            spec.memory_bytes >> 20,
            spec.backends.join(","),
            load.in_flight,
            load.queue_depth,
            n.ready.len(),
            stage_ms,
            n.last_seen_ms
        )?;
    }
    Ok(())
}

/// `strata routes MODEL --live`: a device's view from this machine: the RTT to the model's agents probed
/// now, and every allowed plan ranked at those estimates.
pub fn live_routes(target: &Target, model: &str, constraints: &Constraints) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = strata_device_sdk::Client::new(strata_device_sdk::ClientConfig {
            transport: target.transport.clone(),
            ..strata_device_sdk::ClientConfig::new(target.endpoints.clone())
        })?;
        let probed = client.probe(model).await?;
        say!(
            "{model}: probed from here: {}",
            if probed.is_empty() {
                "nothing (no agent across the device's links)".to_string()
            } else {
                probed
                    .iter()
                    .map(|(link, ms)| format!("{} rtt {ms:.2} ms", link.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )?;
        let decision = client.explain(model, constraints)?;
        crate::infer::print_decision(&decision, None)?;
        say!(
            "a request would get: {}",
            decision
                .ranked
                .first()
                .map_or("no plan", |c| c.plan_id.as_str())
        )?;
        Ok(())
    })
}

pub fn routes(
    target: &Target,
    model: &str,
    constraints: &Constraints,
    json: bool,
    svg: Option<&std::path::Path>,
) -> Result<()> {
    let (runtime, channel) = connect_to(target, Expect::Server)?; // agents serve route tables too
    let table = runtime
        .block_on(RoutesClient::new(channel).get_routes(v1::GetRoutesRequest {
            model: model.to_string(),
        }))
        .map_err(|s| status(target, s))?
        .into_inner();
    // At the profiled conditions: this process has measured nothing (a device's own estimates move it).
    let conditions = strata_core::recost::Conditions::nominal(convert::link_profiles(&table));
    let power = convert::device_power(&table);
    let situation = route::Situation {
        conditions: &conditions,
        power: &power,
        state: Default::default(),
        measured: &|_| None,
        // As for a device that holds every stage: what one device has cached is its own (`strata infer -v`
        // shows the downloads a choice would wait for).
        local: &|_| true,
    };
    let chosen =
        route::choose(&table, constraints, &situation, |_| false).map(|(p, _)| p.id.clone());
    if let Some(path) = svg {
        crate::plan::write_picture(path, &route_chart(&table, chosen.as_deref()).svg())?;
    }
    if json {
        let plans: Vec<serde_json::Value> = table
            .plans
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "chosen": Some(&p.id) == chosen.as_ref(),
                    "satisfies": p.satisfies.iter().map(|&l| privacy_name(l)).collect::<Vec<_>>(),
                    "objectives": objectives(p),
                    "latency_ms": p.latency_ms,
                    "device_energy_mj": p.device_energy_mj,
                    "device_bytes_sent": p.device_bytes_sent,
                    "stages": p.stages.iter().map(|s| serde_json::json!({
                        "index": s.index,
                        "tier": tier_name(s.tier),
                        "inputs": s.inputs, "outputs": s.outputs, "nodes": s.nodes,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": table.model, "version": table.version, "revision": table.revision,
                "privacy": privacy_name(table.privacy),
                "plans": plans, "notes": table.notes,
            }))?
        )?;
        return Ok(());
    }
    say!(
        "{} version {} (privacy {}), {} plan(s):",
        table.model,
        table.version,
        privacy_name(table.privacy),
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
                let tier = tier_name(s.tier);
                if strata_proto::convert::is_tier(s.tier, Tier::Device) {
                    tier.to_string()
                } else {
                    format!("{tier}[{}]", s.nodes.len())
                }
            })
            .collect();
        let levels: Vec<&str> = p.satisfies.iter().map(|&l| privacy_name(l)).collect();
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

/// A route table as `strata routes --svg` draws it. Levels and tiers the wire gets wrong are left out (the
/// table prints them as "unspecified").
fn route_chart(table: &v1::RouteTable, chosen: Option<&str>) -> crate::picture::routes::RouteChart {
    use crate::picture::routes::{RouteChart, RoutePlan};
    let plans = table
        .plans
        .iter()
        .map(|p| RoutePlan {
            id: p.id.clone(),
            latency_ms: p.latency_ms,
            energy_mj: p.device_energy_mj,
            satisfies: p
                .satisfies
                .iter()
                .filter_map(|&l| {
                    strata_proto::convert::privacy(l, "satisfies")
                        .ok()
                        .flatten()
                })
                .collect(),
            tiers: p
                .stages
                .iter()
                .filter_map(|s| strata_proto::convert::tier(s.tier, "tier").ok())
                .collect(),
            chosen: Some(p.id.as_str()) == chosen,
        })
        .collect();
    let mut lines = vec![
        format!(
            "model privacy {}, {} plan(s); predicted at the profiled network conditions",
            privacy_name(table.privacy),
            table.plans.len()
        ),
        "ring: what a request with these constraints gets now".to_string(),
    ];
    lines.extend(table.notes.iter().map(|n| format!("note: {n}")));
    RouteChart {
        title: format!("{} version {}: plans", table.model, table.version),
        lines,
        plans,
    }
}

/// A model's state as `strata model ls` and `push` print it.
fn state(m: &v1::ModelInfo) -> String {
    match v1::ModelState::try_from(m.state) {
        Ok(v1::ModelState::Ready) => "ready".to_string(),
        Ok(v1::ModelState::Planning) => "planning".to_string(),
        Ok(v1::ModelState::Failed) => format!("failed: {}", m.state_message),
        Ok(v1::ModelState::Unknown) => format!("unknown: {}", m.state_message),
        Ok(v1::ModelState::Unspecified) | Err(_) => "unknown".to_string(),
    }
}

/// A plan's objectives by name.
fn objectives(p: &v1::Plan) -> Vec<&'static str> {
    p.objectives
        .iter()
        .map(|&o| match v1::Objective::try_from(o) {
            Ok(v1::Objective::Latency) => "latency",
            Ok(v1::Objective::Energy) => "energy",
            _ => "unspecified",
        })
        .collect()
}

/// `strata token create`.
pub fn create_token(
    target: &Target,
    tier: Tier,
    ttl_minutes: u64,
    uses: u32,
    description: String,
) -> Result<()> {
    let (runtime, channel) = connect(target)?;
    let answer = runtime
        .block_on(
            ControlClient::new(channel).create_token(v1::CreateTokenRequest {
                tier: v1::Tier::from(tier) as i32,
                ttl_ms: ttl_minutes.max(1).saturating_mul(60_000),
                uses,
                description,
            }),
        )
        .map_err(|s| status(target, s))?
        .into_inner();
    let info = answer.info.unwrap_or_default();
    say!("{}", answer.token)?;
    // The token on stdout alone (scripts capture it); how to use it on stderr.
    eprintln!(
        "join token {} for {} {} node(s), valid {ttl_minutes} min; on the node: strata-edge-agent --tier {} --control-plane {} --join TOKEN",
        info.id,
        info.uses_left,
        tier_name(info.tier),
        tier_name(info.tier),
        target.endpoints.join(",")
    );
    Ok(())
}

/// `strata token ls`.
pub fn list_tokens(target: &Target) -> Result<()> {
    let (runtime, channel) = connect(target)?;
    let tokens = runtime
        .block_on(ControlClient::new(channel).list_tokens(v1::ListTokensRequest {}))
        .map_err(|s| status(target, s))?
        .into_inner()
        .tokens;
    if tokens.is_empty() {
        say!("no live join tokens")?;
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    say!(
        "{:<10} {:<6} {:>5} {:>12}  description",
        "id",
        "tier",
        "uses",
        "expires in"
    )?;
    for t in tokens {
        say!(
            "{:<10} {:<6} {:>5} {:>10} s  {}",
            t.id,
            tier_name(t.tier),
            t.uses_left,
            t.expires_unix_ms.saturating_sub(now) / 1000,
            t.description
        )?;
    }
    Ok(())
}

/// `strata token revoke`.
pub fn revoke_token(target: &Target, id: &str) -> Result<()> {
    let (runtime, channel) = connect(target)?;
    runtime
        .block_on(
            ControlClient::new(channel).revoke_token(v1::RevokeTokenRequest { id: id.to_string() }),
        )
        .map_err(|s| status(target, s))?;
    say!("join token {id} revoked")?;
    Ok(())
}

/// `strata join TOKEN`: a certificate for `name` of `tier` into `out`.
pub fn join(target: &Target, token: &str, tier: Tier, name: &str, out: &Path) -> Result<()> {
    let token = strata_trust::token::Token::parse(token)?;
    if out.join("cert.pem").exists() {
        bail!(
            "{} holds a certificate already; joining again would need another name (choose another --out)",
            out.display()
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime
        .block_on(strata_edge_agent::join::join(
            &target.endpoints,
            &token,
            tier,
            name,
            out,
            Duration::from_secs(5),
        ))
        .context("cannot join the cluster")?;
    say!(
        "joined as {name}.{tier}; credentials in {} (use STRATA_TLS_DIR={})",
        out.display(),
        out.display()
    )?;
    Ok(())
}

/// `strata identity renew`: this CLI's own certificate, renewed in place.
pub fn renew(target: &Target) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let not_after = runtime
        .block_on(strata_edge_agent::join::renew(
            &target.endpoints,
            &target.transport,
            Duration::from_secs(5),
        ))
        .context("cannot renew the certificate")?;
    let left = not_after - strata_trust::tls::unix_now();
    say!(
        "certificate renewed: valid {} more days",
        (left.max(0) as f64 / 86_400.0 * 10.0).round() / 10.0
    )?;
    Ok(())
}

/// `strata identity revoke`.
pub fn revoke_identity(target: &Target, identity: &str, reason: String) -> Result<()> {
    let (runtime, channel) = connect(target)?;
    let answer = runtime
        .block_on(
            ControlClient::new(channel).revoke_identity(v1::RevokeIdentityRequest {
                identity: identity.to_string(),
                reason,
            }),
        )
        .map_err(|s| status(target, s))?
        .into_inner();
    say!(
        "identity {identity} revoked; {} node(s) deregistered",
        answer.nodes_removed
    )?;
    Ok(())
}

/// `strata identity ls`.
pub fn list_revoked(target: &Target) -> Result<()> {
    let (runtime, channel) = connect(target)?;
    let revoked = runtime
        .block_on(ControlClient::new(channel).list_revoked(v1::ListRevokedRequest {}))
        .map_err(|s| status(target, s))?
        .into_inner()
        .revoked;
    if revoked.is_empty() {
        say!("no revoked identities")?;
        return Ok(());
    }
    say!(
        "{:<40} {:>15}  {:<30} reason",
        "identity",
        "revoked (unix)",
        "by"
    )?;
    for r in revoked {
        say!(
            "{:<40} {:>15}  {:<30} {}",
            r.identity,
            r.revoked_unix_ms / 1000,
            r.by,
            r.reason
        )?;
    }
    Ok(())
}
