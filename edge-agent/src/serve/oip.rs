//! The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`: KServe's
//! `grpc_predict_v2.proto`, the subset of Triton's API that `tritonclient.grpc` uses), so that v2 clients
//! call an agent unchanged: `ServerLive`, `ServerReady`, `ModelReady`, `ServerMetadata`, `ModelMetadata`,
//! `ModelInfer`. Served on the agent's own port, behind the same transport, limits and authorisation as
//! `strata.v1.Inference` (a device, node or admin certificate under mutual TLS).
//!
//! The agent that receives a `ModelInfer` is the entry point of the request: it runs one of the model's
//! plans from its own tier onward, through the same stage run and forwarding as a `strata.v1.Inference`
//! request ([`AgentService::run_stage`], [`AgentService::forward`]).
//!
//! **Which plan.** A plan may be entered here when all of these hold:
//! - it satisfies the model's privacy level;
//! - none of its stages runs on the device, and its first stage runs on this agent's tier or a later one
//!   (stages run in tier order, so every stage does);
//! - when its first stage runs on this agent's tier, this agent holds that stage loaded (it runs it itself);
//!   when it runs on a later tier, some agent of that tier is ready for it (the raw inputs are forwarded).
//!
//! Plans whose first stage runs here come first, then by predicted latency; when the next tier's agents are
//! all unavailable, the next plan is tried. None: `UNAVAILABLE`, with each plan's reason.
//!
//! **Privacy.** The raw inputs arrive at this agent, so the call is served only where the model's level lets
//! raw inputs be: `open` at any agent, `edge` at edge agents; `features` and `device` models, and `edge`
//! models at a cloud agent, are refused with `PERMISSION_DENIED` naming the level and this agent's tier
//! (counted in `AgentStatus.requests_denied`, like every privacy denial).
//!
//! **Tensors.** Inputs as typed `contents` or as `raw_input_contents` ([`strata_proto::oip`]); each must be
//! a model input with the datatype and shape of the route table (the shapes the model was planned for).
//! Outputs are answered as `raw_output_contents` when the request sent raw contents (what `tritonclient`
//! does and reads), as typed `contents` when it sent typed ones (FP16 outputs force raw). Malformed tensors
//! are `INVALID_ARGUMENT`, an unknown model or version `NOT_FOUND`.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use strata_core::{DType, Privacy, TensorData, Tier};
use strata_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use strata_proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ServerLiveRequest, ServerLiveResponse,
    ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
    model_metadata_response::TensorMetadata,
};
use strata_proto::{TensorAssembler, call::chunks_of, convert, oip, v1};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{AgentService, Deadline, Refusal, StageRun, intake};
use crate::agent::Agent;
use crate::metrics::RequestLabels;

/// The platform name the metadata reports (KServe's name for ONNX models).
const PLATFORM: &str = "onnx_onnxv1";

/// Output dtypes and shapes a model version was seen to answer with, by model.
type LearnedOutputs = HashMap<String, (u64, HashMap<String, (DType, Vec<usize>)>)>;

/// The agent's `inference.GRPCInferenceService`.
#[derive(Clone)]
pub struct OipService {
    service: AgentService,
    /// Outputs of models whose producing stages this agent does not hold, learned from answers (for
    /// `ModelMetadata`).
    learned: Arc<Mutex<LearnedOutputs>>,
}

impl OipService {
    /// The protocol on top of an agent's services.
    pub fn new(service: AgentService) -> OipService {
        OipService {
            service,
            learned: Arc::default(),
        }
    }

    fn agent(&self) -> &Agent {
        &self.service.agent
    }

    /// The route table of `model` at `version` ("": the current one).
    fn table(&self, model: &str, version: &str) -> Result<v1::RouteTable, Status> {
        self.service.routes_loaded()?;
        let agent = self.agent();
        let node_id = agent.node_id();
        let unknown = || {
            let routes = agent.routes.read();
            let mut known: Vec<&str> = routes.keys().map(String::as_str).collect();
            known.sort_unstable();
            Status::not_found(format!(
                "agent {node_id} serves no model \"{}\" (known here: {})",
                oip::echo(model),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        };
        if version.is_empty() {
            // The read guard must be gone before `unknown` reads again: parking_lot's locks are fair, so a
            // second read while a route update waits to write would wait for ever.
            let current = agent.routes.read().get(model).cloned();
            return current.ok_or_else(unknown);
        }
        let current = || agent.routes.read().get(model).map(|t| t.version);
        let no_version = |current: Option<u64>| match current {
            None => unknown(),
            Some(c) => Status::not_found(format!(
                "model \"{}\" has no version \"{}\" at agent {node_id} (it serves version {c})",
                oip::echo(model),
                oip::echo(version)
            )),
        };
        let Ok(number) = version.parse::<u64>() else {
            return Err(no_version(current()));
        };
        agent.table_for(model, number).map_err(no_version)
    }

    /// Metadata of the model's outputs: dtype and shape from a loaded stage here that produces them (stage
    /// files declare their outputs), else from an answer seen for this version, else unknown (`-1`).
    fn output_metadata(&self, table: &v1::RouteTable) -> Vec<TensorMetadata> {
        let agent = self.agent();
        let learned = self.learned.lock();
        let seen = learned
            .get(&table.model)
            .filter(|(version, _)| *version == table.version);
        table
            .outputs
            .iter()
            .map(|name| {
                let declared = table
                    .plans
                    .iter()
                    .flat_map(|p| &p.stages)
                    .filter(|s| s.outputs.contains(name))
                    .filter_map(|s| convert::digest(&s.digest, "stage.digest").ok())
                    .filter_map(|d| agent.stages.get(&d))
                    .find_map(|stage| {
                        let ix = stage.output_names().iter().position(|n| n == name)?;
                        stage.output_facts().get(ix).cloned()
                    });
                if let Some((dtype, dims)) = declared {
                    let dims: Vec<Option<u64>> = dims.iter().map(|d| d.map(|d| d as u64)).collect();
                    return oip::tensor_metadata(name, dtype, &dims);
                }
                match seen.and_then(|(_, outputs)| outputs.get(name)) {
                    Some((dtype, shape)) => {
                        let dims: Vec<Option<u64>> =
                            shape.iter().map(|&d| Some(d as u64)).collect();
                        oip::tensor_metadata(name, *dtype, &dims)
                    }
                    None => TensorMetadata {
                        name: name.clone(),
                        datatype: String::new(),
                        shape: vec![-1],
                    },
                }
            })
            .collect()
    }

    /// Whether this agent holds the stage of `digest` loaded.
    fn holds(&self, digest: &str) -> bool {
        convert::digest(digest, "stage.digest")
            .ok()
            .and_then(|d| self.agent().stages.get(&d))
            .is_some()
    }

    /// Runs the request: privacy, then the tensors, then a plan from this tier onward.
    async fn infer(
        &self,
        request: ModelInferRequest,
        labels: &mut Option<RequestLabels>,
        deadline: Deadline,
    ) -> Result<ModelInferResponse, Status> {
        let agent = self.agent();
        let node_id = agent.node_id();
        let tier = agent.config.tier;
        let table = self.table(&request.model_name, &request.model_version)?;
        let model = table.model.as_str();
        // A known model from here on: what ends the request is counted under it (no plan or stage yet).
        *labels = Some(RequestLabels {
            model: model.to_string(),
            ..Default::default()
        });
        // Before anything else: whether the raw inputs this call brings may be here at all.
        let privacy =
            entry_level(&table, tier, &node_id).map_err(|r| self.service.refuse(r, model))?;
        check_declared(&table, &request)?;
        let tensors = oip::inputs(&request).map_err(|e| e.status())?;
        let wanted = requested_outputs(&table, &request)?;
        let raw = !request.raw_input_contents.is_empty();

        let plans = entry_plans(&table, privacy, tier, |d| self.holds(d));
        let (candidates, reasons): (Vec<_>, Vec<_>) = plans.into_iter().partition(|p| p.1.is_ok());
        if candidates.is_empty() {
            let why: Vec<String> = reasons
                .iter()
                .map(|(plan, why)| format!("{}: {}", plan.id, why.as_ref().err().map_or("", |s| s)))
                .collect();
            return Err(Status::unavailable(format!(
                "model \"{model}\" (privacy {privacy}) has no plan agent {node_id} ({tier}) can enter: a \
                 request entering here runs a plan on this tier or later, starting with a stage this agent \
                 holds or one a later tier's agent is ready for ({})",
                if why.is_empty() {
                    "the table has no plans".to_string()
                } else {
                    why.join("; ")
                }
            )));
        }
        let received: u64 = tensors.iter().map(|(_, t)| t.data.len() as u64).sum();
        tracing::Span::current().record("bytes_in", received);
        let _admitted = self.service.admit(model)?;
        // The raw inputs are here whichever plan runs (a forwarded one too): the audit lists them.
        agent
            .received
            .lock()
            .record(tensors.iter().map(|(name, _)| name));
        let request_id = if request.id.is_empty() {
            format!("oip-{:016x}", rand_id())
        } else {
            request.id.clone()
        };

        let count = candidates.len();
        let mut outputs = None;
        for (i, (plan, _)) in candidates.into_iter().enumerate() {
            // Entry plans have stages: `entry_plans` refuses empty ones.
            let Some(first) = plan.stages.first() else {
                continue;
            };
            tracing::Span::current().record("plan", plan.id.as_str());
            let labels = labels.insert(RequestLabels {
                model: model.to_string(),
                plan: plan.id.clone(),
                stage: first.index.to_string(),
            });
            let reads: BTreeSet<&str> = plan
                .stages
                .iter()
                .flat_map(|s| s.inputs.iter().map(String::as_str))
                .collect();
            let carry: Vec<(String, TensorData)> = tensors
                .iter()
                .filter(|(name, _)| reads.contains(name.as_str()))
                .cloned()
                .collect();
            let header = v1::InferHeader {
                model: model.to_string(),
                version: table.version,
                plan_id: plan.id.clone(),
                stage: first.index,
                request_id: request_id.clone(),
            };
            let result = if convert::is_tier(first.tier, tier) {
                self.run_here(&table, plan, first, &header, carry, labels, deadline)
                    .await
            } else {
                // Counted as a stage run here counts its input and its forward: on the call that succeeded.
                let up_bytes: u64 = carry.iter().map(|(_, t)| t.data.len() as u64).sum();
                self.service
                    .forward(&table, first, header, chunks_of(carry), deadline)
                    .await
                    .map(|hop| {
                        let down_bytes: u64 =
                            hop.tensors.iter().map(|(_, t)| t.data.len() as u64).sum();
                        let metrics = &agent.metrics;
                        metrics.forwarded(model, first.index, hop.elapsed_ms);
                        metrics.bytes(model, "received", up_bytes);
                        metrics.bytes(model, "forwarded", up_bytes);
                        metrics.bytes(model, "answered", down_bytes);
                        hop.tensors.into_iter().collect()
                    })
            };
            match result {
                Ok(answered) => {
                    outputs = Some(answered);
                    break;
                }
                Err(status) if status.code() == tonic::Code::Unavailable && i + 1 < count => {
                    tracing::info!(plan = %plan.id, error = %status.message(), "plan unavailable; trying the next");
                }
                Err(status) => return Err(status),
            }
        }
        let mut outputs: HashMap<String, TensorData> = outputs.ok_or_else(|| {
            Status::unavailable(format!("no plan of model \"{model}\" could be run"))
        })?;
        self.learn(&table, &outputs);
        let mut response = ModelInferResponse {
            model_name: model.to_string(),
            model_version: table.version.to_string(),
            id: request.id,
            ..Default::default()
        };
        let mut answer = Vec::with_capacity(wanted.len());
        for name in &wanted {
            let t = outputs.remove(name).ok_or_else(|| {
                Status::internal(format!(
                    "the plan answered no output \"{name}\" of model \"{model}\""
                ))
            })?;
            answer.push((name, t));
        }
        let raw = raw || oip::needs_raw(answer.iter().map(|(_, t)| &t.dtype));
        let mut sent = 0u64;
        for (name, t) in answer {
            sent += t.data.len() as u64;
            let (tensor, contents) = oip::output(name, t, raw);
            response.outputs.push(tensor);
            response.raw_output_contents.extend(contents);
        }
        tracing::Span::current().record("bytes_out", sent);
        Ok(response)
    }

    /// Runs the plan's first stage on this agent (and the rest through it), and reassembles the model
    /// outputs from the answer's frames.
    #[allow(clippy::too_many_arguments)]
    async fn run_here(
        &self,
        table: &v1::RouteTable,
        plan: &v1::Plan,
        stage: &v1::Stage,
        header: &v1::InferHeader,
        carry: Vec<(String, TensorData)>,
        labels: &RequestLabels,
        deadline: Deadline,
    ) -> Result<HashMap<String, TensorData>, Status> {
        let agent = self.agent();
        let digest = convert::digest(&stage.digest, "stage.digest").map_err(|e| {
            Status::failed_precondition(format!("route table of \"{}\": {e}", table.model))
        })?;
        // Checked when the plan was chosen; it may have been unloaded since.
        let loaded = agent.stages.get(&digest).ok_or_else(|| {
            Status::unavailable(format!(
                "agent {} no longer holds stage {} of plan \"{}\"",
                agent.node_id(),
                stage.index,
                plan.id
            ))
        })?;
        let run = StageRun {
            table,
            plan,
            stage,
            header,
            digest,
            loaded,
        };
        let frames = self
            .service
            .run_stage(run, carry.into_iter().collect(), labels, deadline)
            .await?;
        let mut assembler = TensorAssembler::new(agent.config.max_request_bytes);
        for frame in frames {
            if let Some(v1::infer_response::Frame::Tensor(chunk)) = frame.frame {
                assembler
                    .push(chunk)
                    .map_err(|e| Status::internal(format!("the plan's answer: {e}")))?;
            }
        }
        let outputs = assembler
            .finish()
            .map_err(|e| Status::internal(format!("the plan's answer: {e}")))?;
        Ok(outputs.into_iter().collect())
    }

    /// Remembers the dtypes and shapes a model version answered with (for `ModelMetadata`).
    fn learn(&self, table: &v1::RouteTable, outputs: &HashMap<String, TensorData>) {
        let shapes = outputs
            .iter()
            .filter(|(name, _)| table.outputs.contains(name))
            .map(|(name, t)| (name.clone(), (t.dtype, t.shape.clone())))
            .collect();
        let mut learned = self.learned.lock();
        // Models this agent no longer routes are forgotten, so the map stays as small as the route tables.
        let routes = self.agent().routes.read();
        learned.retain(|model, _| routes.contains_key(model));
        learned.insert(table.model.clone(), (table.version, shapes));
    }
}

/// A request id for requests that bring none (ids only label logs and traces; they need not be secret).
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The model's privacy level, when raw inputs may arrive at an agent of `tier`: `open` anywhere, `edge` at
/// the edge. Otherwise the refusal that says why.
fn entry_level(table: &v1::RouteTable, tier: Tier, node: &str) -> Result<Privacy, Refusal> {
    let privacy = intake::model_level(table, tier, node)?;
    match privacy {
        Privacy::Open | Privacy::Edge => Ok(privacy),
        Privacy::Features | Privacy::Device => Err(Refusal::RawEntry {
            model: table.model.clone(),
            privacy,
            node: node.to_string(),
            tier,
        }),
    }
}

/// `dtype [d0, d1]` in the protocol's words (a client's datatype and shape as [`oip::echo`] repeats them).
fn describe(dtype: &str, shape: &[i64]) -> String {
    format!("{} {}", oip::echo(dtype), oip::echo_shape(shape))
}

/// The request's inputs against the model's: each a model input, declared with its datatype and shape, and
/// none missing (`INVALID_ARGUMENT` otherwise, saying what the model takes).
fn check_declared(table: &v1::RouteTable, request: &ModelInferRequest) -> Result<(), Status> {
    let model = &table.model;
    let takes = |input: &v1::ModelInput| {
        let dtype = convert::dtype(input.dtype, "dtype").map_or("UNKNOWN", oip::datatype);
        let shape: Vec<i64> = input
            .shape
            .iter()
            .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect();
        describe(dtype, &shape)
    };
    let all = || {
        table
            .inputs
            .iter()
            .map(|i| format!("\"{}\" {}", i.name, takes(i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for input in &request.inputs {
        let Some(expected) = table.inputs.iter().find(|i| i.name == input.name) else {
            return Err(Status::invalid_argument(format!(
                "model \"{model}\" has no input \"{}\" (its inputs: {})",
                oip::echo(&input.name),
                all()
            )));
        };
        let dtype = oip::dtype(&input.name, &input.datatype).map_err(|e| e.status())?;
        // Compared as values, not as text: a declared shape is the client's, of any length.
        let same_shape = expected.shape.len() == input.shape.len()
            && expected
                .shape
                .iter()
                .zip(&input.shape)
                .all(|(&e, &d)| u64::try_from(d) == Ok(e));
        if convert::dtype(expected.dtype, "dtype").ok() != Some(dtype) || !same_shape {
            return Err(Status::invalid_argument(format!(
                "input \"{}\": model \"{model}\" takes {}, the request declares {}",
                input.name,
                takes(expected),
                describe(&input.datatype, &input.shape)
            )));
        }
    }
    for expected in &table.inputs {
        if !request.inputs.iter().any(|i| i.name == expected.name) {
            return Err(Status::invalid_argument(format!(
                "model \"{model}\" needs input \"{}\" ({}), which the request lacks",
                expected.name,
                takes(expected)
            )));
        }
    }
    Ok(())
}

/// The outputs to answer, in order: those the request names (each a model output, once), or all of the
/// model's.
fn requested_outputs(
    table: &v1::RouteTable,
    request: &ModelInferRequest,
) -> Result<Vec<String>, Status> {
    if request.outputs.is_empty() {
        return Ok(table.outputs.clone());
    }
    let mut wanted: Vec<String> = Vec::with_capacity(request.outputs.len());
    for output in &request.outputs {
        if !table.outputs.contains(&output.name) {
            return Err(Status::invalid_argument(format!(
                "model \"{}\" has no output \"{}\" (its outputs: {})",
                table.model,
                oip::echo(&output.name),
                table.outputs.join(", ")
            )));
        }
        if wanted.contains(&output.name) {
            return Err(Status::invalid_argument(format!(
                "output \"{}\" is requested twice",
                output.name
            )));
        }
        wanted.push(output.name.clone());
    }
    Ok(wanted)
}

/// Every plan of `table` with whether a request may enter it at an agent of `tier` (the rule in the module
/// docs; `holds` says whether this agent holds a stage loaded, by digest), the enterable ones first: those
/// starting on this tier, then by predicted latency.
fn entry_plans(
    table: &v1::RouteTable,
    privacy: Privacy,
    tier: Tier,
    holds: impl Fn(&str) -> bool,
) -> Vec<(&v1::Plan, Result<(), String>)> {
    let level = v1::Privacy::from(privacy) as i32;
    let judge = |plan: &v1::Plan| -> Result<bool, String> {
        if !plan.satisfies.contains(&level) {
            return Err(format!("it does not satisfy privacy {privacy}"));
        }
        let Some(first) = plan.stages.first() else {
            return Err("it has no stages".to_string());
        };
        for stage in &plan.stages {
            match convert::tier(stage.tier, "stage.tier") {
                Ok(t) if t >= tier && t != Tier::Device => {}
                Ok(t) => {
                    return Err(format!(
                        "stage {} runs on the {t} tier, before this one",
                        stage.index
                    ));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        if convert::is_tier(first.tier, tier) {
            if holds(&first.digest) {
                Ok(true)
            } else {
                Err(format!(
                    "this agent does not hold its first stage (stage {}) loaded",
                    first.index
                ))
            }
        } else if first.nodes.is_empty() {
            Err(format!(
                "no agent is ready for its first stage (stage {}, {} tier)",
                first.index,
                convert::tier_name(first.tier)
            ))
        } else {
            Ok(false)
        }
    };
    let mut judged: Vec<(&v1::Plan, Result<bool, String>)> =
        table.plans.iter().map(|p| (p, judge(p))).collect();
    // Enterable first; of those, the ones starting here; then the least predicted latency.
    judged.sort_by(|(a, ja), (b, jb)| {
        let rank = |j: &Result<bool, String>| match j {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(_) => 2,
        };
        rank(ja)
            .cmp(&rank(jb))
            .then(a.latency_ms.total_cmp(&b.latency_ms))
            .then(a.id.cmp(&b.id))
    });
    judged
        .into_iter()
        .map(|(p, j)| (p, j.map(|_| ())))
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for OipService {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    /// Ready once the agent holds a control plane's route tables (before that it knows no model).
    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.agent().routes_loaded.load(Ordering::Relaxed),
        }))
    }

    /// Ready when a `ModelInfer` for the model would be served here: a known model (and version), whose
    /// privacy admits raw inputs at this tier, with a plan this agent can enter. An unknown model is not
    /// ready (rather than an error).
    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let agent = self.agent();
        let ready = self.table(&r.name, &r.version).is_ok_and(|table| {
            entry_level(&table, agent.config.tier, &agent.node_id()).is_ok_and(|privacy| {
                entry_plans(&table, privacy, agent.config.tier, |d| self.holds(d))
                    .iter()
                    .any(|(_, ok)| ok.is_ok())
            })
        });
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "strata".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: Vec::new(),
        }))
    }

    /// The model's current version (or the one asked for, while this agent still holds it), its inputs as
    /// the route table promises them and its outputs as the stages declare them. Metadata carries no
    /// tensor data, so it is answered whatever the model's privacy level.
    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let table = self.table(&r.name, &r.version)?;
        let mut inputs = Vec::with_capacity(table.inputs.len());
        for input in &table.inputs {
            let dtype = convert::dtype(input.dtype, "dtype").map_err(|e| {
                Status::failed_precondition(format!("route table of \"{}\": {e}", table.model))
            })?;
            let dims: Vec<Option<u64>> = input.shape.iter().map(|&d| Some(d)).collect();
            inputs.push(oip::tensor_metadata(&input.name, dtype, &dims));
        }
        Ok(Response::new(ModelMetadataResponse {
            outputs: self.output_metadata(&table),
            name: table.model,
            versions: vec![table.version.to_string()],
            platform: PLATFORM.to_string(),
            inputs,
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let arrived = Instant::now();
        let agent = self.agent();
        let deadline = Deadline::new(
            strata_proto::deadline_of(request.metadata()),
            agent.config.max_request_time,
            arrived,
        );
        let request = request.into_inner();
        let node_id = agent.node_id();
        let span = tracing::info_span!(
            "oip_infer",
            otel.name = "ModelInfer",
            model = %request.model_name,
            version = %request.model_version,
            request = %request.id,
            tier = %agent.config.tier,
            node = %node_id,
            plan = tracing::field::Empty,
            bytes_in = tracing::field::Empty,
            bytes_out = tracing::field::Empty,
            predicted_ms = tracing::field::Empty,
            queue_ms = tracing::field::Empty,
            compute_ms = tracing::field::Empty,
            batch = tracing::field::Empty,
        );
        let context = format!(" at agent {node_id}");
        let mut labels = None;
        let work = async {
            deadline.remaining(&context)?;
            tokio::time::timeout_at(
                deadline.at.into(),
                self.infer(request, &mut labels, deadline),
            )
            .await
            .map_err(|_| deadline.exceeded(&context))?
        };
        let result = work.instrument(span.clone()).await;
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        agent
            .metrics
            .finished(labels.as_ref(), code, arrived.elapsed());
        if let Err(status) = &result {
            span.in_scope(|| {
                tracing::info!(code = ?status.code(), error = %status.message(), "ModelInfer failed");
            });
        }
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(index: u32, tier: Tier, digest: &str) -> v1::Stage {
        v1::Stage {
            index,
            tier: v1::Tier::from(tier) as i32,
            digest: digest.into(),
            nodes: vec![format!("{tier}-node")],
            ..Default::default()
        }
    }

    fn plan(id: &str, latency_ms: f64, satisfies: &[Privacy], stages: Vec<v1::Stage>) -> v1::Plan {
        v1::Plan {
            id: id.into(),
            latency_ms,
            satisfies: satisfies
                .iter()
                .map(|p| v1::Privacy::from(*p) as i32)
                .collect(),
            stages,
            ..Default::default()
        }
    }

    fn table(privacy: Privacy, plans: Vec<v1::Plan>) -> v1::RouteTable {
        v1::RouteTable {
            model: "m".into(),
            version: 1,
            privacy: v1::Privacy::from(privacy) as i32,
            inputs: vec![v1::ModelInput {
                name: "x".into(),
                dtype: v1::DataType::Float32 as i32,
                shape: vec![1, 4],
            }],
            outputs: vec!["y".into()],
            plans,
            ..Default::default()
        }
    }

    fn enterable(t: &v1::RouteTable, tier: Tier, held: &[&str]) -> Vec<String> {
        let privacy = entry_level(t, tier, "n").expect("admitted");
        entry_plans(t, privacy, tier, |d| held.contains(&d))
            .into_iter()
            .filter(|(_, ok)| ok.is_ok())
            .map(|(p, _)| p.id.clone())
            .collect()
    }

    #[test]
    fn an_edge_agent_enters_plans_from_its_tier_on_its_own_stages_first() {
        use Privacy::{Edge, Features, Open};
        let t = table(
            Open,
            vec![
                plan(
                    "device-edge",
                    1.0,
                    &[Open, Features, Edge],
                    vec![stage(0, Tier::Device, "d0"), stage(1, Tier::Edge, "e1")],
                ),
                plan("cloud", 2.0, &[Open], vec![stage(0, Tier::Cloud, "c0")]),
                plan(
                    "edge-cloud",
                    5.0,
                    &[Open],
                    vec![stage(0, Tier::Edge, "e0"), stage(1, Tier::Cloud, "c1")],
                ),
                plan(
                    "edge-elsewhere",
                    0.5,
                    &[Open],
                    vec![stage(0, Tier::Edge, "e9")],
                ),
            ],
        );
        // Its own stage first (though slower), then the cloud plan forwarded; never a device stage, nor an
        // edge stage it does not hold.
        assert_eq!(
            enterable(&t, Tier::Edge, &["e0", "e1"]),
            ["edge-cloud", "cloud"]
        );
        // A cloud agent enters only plans that start on the cloud.
        assert_eq!(enterable(&t, Tier::Cloud, &["c0", "c1"]), ["cloud"]);
        // A plan that does not satisfy the model's level is never entered.
        let mut edge = t.clone();
        edge.privacy = v1::Privacy::Edge as i32;
        assert!(enterable(&edge, Tier::Edge, &["e0", "e1", "e9"]).is_empty());
        let all = entry_plans(&edge, Privacy::Edge, Tier::Edge, |_| true);
        let why = all
            .iter()
            .find(|(p, _)| p.id == "device-edge")
            .and_then(|(_, j)| j.clone().err())
            .expect("refused");
        assert!(why.contains("runs on the device tier"), "{why}");
    }

    #[test]
    fn raw_inputs_enter_only_where_the_models_level_lets_them_be() {
        let t = |p| table(p, Vec::new());
        assert_eq!(
            entry_level(&t(Privacy::Open), Tier::Cloud, "c"),
            Ok(Privacy::Open)
        );
        assert_eq!(
            entry_level(&t(Privacy::Edge), Tier::Edge, "e"),
            Ok(Privacy::Edge)
        );
        for (privacy, tier, needle) in [
            (
                Privacy::Edge,
                Tier::Cloud,
                "nothing of it may reach the cloud tier",
            ),
            (
                Privacy::Features,
                Tier::Edge,
                "its raw inputs never leave the device",
            ),
            (
                Privacy::Device,
                Tier::Edge,
                "nothing of it may leave the device",
            ),
        ] {
            let refused = entry_level(&t(privacy), tier, "a1").expect_err("refused");
            assert!(refused.is_denial());
            let status = refused.status();
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            let message = status.message();
            assert!(
                message.contains(needle)
                    && message.contains(&format!("privacy level {privacy}"))
                    && message.contains(&format!("({tier})")),
                "{message}"
            );
        }
    }

    /// `strata_agent_requests_total` by model and plan.
    fn requests(agent: &Agent) -> Vec<(String, String, u64)> {
        let mut counted = Vec::new();
        for family in agent.metrics.registry().gather() {
            if family.name() != "strata_agent_requests_total" {
                continue;
            }
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                counted.push((
                    label("model"),
                    label("plan"),
                    metric.get_counter().get_value() as u64,
                ));
            }
        }
        counted.sort();
        counted
    }

    #[tokio::test]
    async fn refused_and_forwarded_calls_are_counted_under_their_model_and_their_inputs_audited() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = crate::AgentConfig::new(
            Tier::Edge,
            vec!["127.0.0.1:1".into()],
            "127.0.0.1:2".into(),
            dir.path().to_path_buf(),
        );
        config.max_request_time = std::time::Duration::from_secs(5);
        let agent = Agent::new(config).expect("agent");
        let (_stop, stopping) = strata_proto::Stopping::new();
        let service = OipService::new(AgentService::new(agent.clone(), stopping));
        // An open model whose one plan runs on the cloud (forwarded from here, to an agent that is down),
        // and a features model (refused here).
        let mut open = table(
            Privacy::Open,
            vec![plan(
                "cloud",
                1.0,
                &[Privacy::Open],
                vec![stage(0, Tier::Cloud, &"c".repeat(64))],
            )],
        );
        open.nodes = vec![v1::NodeRef {
            id: "cloud-node".into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        }];
        let mut features = table(Privacy::Features, Vec::new());
        features.model = "f".into();
        agent
            .routes
            .write()
            .extend([("m".to_string(), open), ("f".to_string(), features)]);
        agent.routes_loaded.store(true, Ordering::Relaxed);
        let call = |model: &str| {
            Request::new(ModelInferRequest {
                model_name: model.into(),
                inputs: vec![
                    strata_proto::inference::model_infer_request::InferInputTensor {
                        name: "x".into(),
                        datatype: "FP32".into(),
                        shape: vec![1, 4],
                        contents: Some(strata_proto::inference::InferTensorContents {
                            fp32_contents: vec![1.0; 4],
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })
        };
        let denied = service.model_infer(call("f")).await.expect_err("denied");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(agent.received.lock().names().is_empty());
        let down = service
            .model_infer(call("m"))
            .await
            .expect_err("cloud down");
        assert_ne!(down.code(), tonic::Code::InvalidArgument, "{down:?}");
        // The raw input reached this agent, though no stage ran here.
        assert_eq!(agent.received.lock().names(), ["x"]);
        assert_eq!(
            requests(&agent),
            [
                ("f".to_string(), String::new(), 1),
                ("m".to_string(), "cloud".to_string(), 1)
            ]
        );
    }

    #[test]
    fn declared_inputs_must_be_the_models() {
        let t = table(Privacy::Open, Vec::new());
        let request = |name: &str, datatype: &str, shape: &[i64]| ModelInferRequest {
            inputs: vec![
                strata_proto::inference::model_infer_request::InferInputTensor {
                    name: name.into(),
                    datatype: datatype.into(),
                    shape: shape.to_vec(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!(check_declared(&t, &request("x", "FP32", &[1, 4])).is_ok());
        for (r, needle) in [
            (
                request("x", "INT64", &[1, 4]),
                "takes FP32 [1, 4], the request declares INT64 [1, 4]",
            ),
            (
                request("x", "FP32", &[2, 4]),
                "takes FP32 [1, 4], the request declares FP32 [2, 4]",
            ),
            (request("z", "FP32", &[1, 4]), "has no input \"z\""),
            (
                request("x", "STRING", &[1, 4]),
                "not an Open Inference Protocol datatype",
            ),
            (ModelInferRequest::default(), "needs input \"x\""),
            (
                request("x", "FP32", &vec![1; 100_000]),
                "the request declares FP32 [1, 1, 1, 1, 1, 1, 1, 1, …] (rank 100000)",
            ),
            (
                request(&"x".repeat(1 << 20), "FP32", &[1, 4]),
                "… (1048576 bytes)\" (its inputs: \"x\" FP32 [1, 4])",
            ),
        ] {
            let status = check_declared(&t, &r).expect_err(needle);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().len() < 1024, "{}", status.message().len());
            assert!(status.message().contains(needle), "{}", status.message());
        }
    }
}
