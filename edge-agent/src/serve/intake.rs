//! What one Infer request may bring to a stage, judged from the route table alone and before any tensor data
//! is accepted: the model's privacy level (a `device` model sends nothing to any agent, an `edge` model
//! nothing to a cloud agent, a `features` model no raw input to any agent), the tensors the stage and the
//! stages after it read that none of them produce (nothing else), and for a raw model input the dtype and
//! shape the table promises. Sizes are the assembler's business ([`strata_proto::framing::FrameLimits`]).
//!
//! The check is the server's own: a buggy or malicious client cannot make a correct agent receive what the
//! model's privacy level keeps on the device.

use std::collections::BTreeSet;

use strata_core::{Privacy, Tier};
use strata_proto::{convert, v1};
use tonic::Status;

/// Why a request, or one of its tensors, was refused before its data was accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The model's privacy level keeps everything of it away from this agent's tier.
    #[error(
        "model \"{model}\" has privacy level {privacy}: {why}; agent {node} ({tier}) refuses the request"
    )]
    TierForbidden {
        /// The model.
        model: String,
        /// Its level.
        privacy: Privacy,
        /// What the level means here.
        why: &'static str,
        /// This agent.
        node: String,
        /// Its tier.
        tier: Tier,
    },
    /// The route table states no valid privacy level: refused rather than guessed.
    #[error(
        "the route table of model \"{model}\" states no valid privacy level (code {code}); agent {node} refuses \
         its requests until the control plane publishes one"
    )]
    NoPrivacy {
        /// The model.
        model: String,
        /// The code the table holds.
        code: i32,
        /// This agent.
        node: String,
    },
    /// A raw model input of a model whose level keeps raw inputs on the device.
    #[error(
        "tensor \"{tensor}\" is a raw input of model \"{model}\", whose privacy level is {privacy}: raw inputs \
         never leave the device (run the plan's device stage there and send its outputs); agent {node} refuses it"
    )]
    RawInput {
        /// The tensor.
        tensor: String,
        /// The model.
        model: String,
        /// Its level.
        privacy: Privacy,
        /// This agent.
        node: String,
    },
    /// An Open Inference Protocol request, which brings the model's raw inputs to this agent, for a model
    /// whose level keeps them on the device.
    #[error(
        "model \"{model}\" has privacy level {privacy}: its raw inputs never leave the device, and an Open \
         Inference Protocol request brings them to agent {node} ({tier}); send it through the Strata device \
         SDK, which runs the model's device stage on the device"
    )]
    RawEntry {
        /// The model.
        model: String,
        /// Its level.
        privacy: Privacy,
        /// This agent.
        node: String,
        /// Its tier.
        tier: Tier,
    },
    /// A tensor that neither this stage nor a later one reads (or that a later stage produces itself).
    #[error(
        "stage {stage} of plan \"{plan}\" does not take tensor \"{tensor}\": a request to it may carry only \
         what it and the stages after it read from earlier stages (it needs tensors {expected})"
    )]
    UnknownTensor {
        /// The tensor.
        tensor: String,
        /// The stage.
        stage: u32,
        /// The plan.
        plan: String,
        /// The names it may carry, for the message.
        expected: String,
    },
    /// A raw model input whose dtype or shape is not the one the route table promises.
    #[error(
        "tensor \"{tensor}\": model \"{model}\" takes it as {expected}, the request declares {got}"
    )]
    WrongInput {
        /// The tensor.
        tensor: String,
        /// The model.
        model: String,
        /// The table's dtype and shape (`float32 [1, 4]`).
        expected: String,
        /// The declared dtype and shape.
        got: String,
    },
}

impl Refusal {
    /// Whether the refusal protects the model's privacy (`PERMISSION_DENIED`, counted in
    /// `AgentStatus.requests_denied`), rather than a malformed request (`INVALID_ARGUMENT`).
    pub fn is_denial(&self) -> bool {
        matches!(
            self,
            Refusal::TierForbidden { .. }
                | Refusal::NoPrivacy { .. }
                | Refusal::RawInput { .. }
                | Refusal::RawEntry { .. }
        )
    }

    /// The gRPC status answering it.
    pub fn status(&self) -> Status {
        if self.is_denial() {
            Status::permission_denied(self.to_string())
        } else {
            Status::invalid_argument(self.to_string())
        }
    }
}

/// The model's privacy level, checked against the agent's tier: refused when nothing of the model may reach
/// this agent at all.
pub fn model_level(table: &v1::RouteTable, tier: Tier, node: &str) -> Result<Privacy, Refusal> {
    let privacy = match convert::privacy(table.privacy, "table.privacy") {
        Ok(Some(p)) => p,
        // Fail closed: a table without a level is not an `open` model.
        Ok(None) | Err(_) => {
            return Err(Refusal::NoPrivacy {
                model: table.model.clone(),
                code: table.privacy,
                node: node.to_string(),
            });
        }
    };
    let why = match (privacy, tier) {
        (Privacy::Device, _) => Some("nothing of it may leave the device"),
        (Privacy::Edge, Tier::Cloud) => Some("nothing of it may reach the cloud tier"),
        _ => None,
    };
    match why {
        Some(why) => Err(Refusal::TierForbidden {
            model: table.model.clone(),
            privacy,
            why,
            node: node.to_string(),
            tier,
        }),
        None => Ok(privacy),
    }
}

/// What one request to one stage may carry.
#[derive(Debug)]
pub struct Intake<'t> {
    table: &'t v1::RouteTable,
    plan: &'t str,
    stage: u32,
    privacy: Privacy,
    node: &'t str,
    /// What the stage and the later ones read that none of them produce.
    wanted: BTreeSet<&'t str>,
}

impl<'t> Intake<'t> {
    /// The intake of stage `index` of `plan` at a model of level `privacy` (from [`model_level`]).
    pub fn new(
        table: &'t v1::RouteTable,
        plan: &'t v1::Plan,
        index: usize,
        privacy: Privacy,
        node: &'t str,
    ) -> Intake<'t> {
        let rest = plan.stages.get(index..).unwrap_or_default();
        let produced: BTreeSet<&str> = rest
            .iter()
            .flat_map(|s| s.outputs.iter().map(String::as_str))
            .collect();
        let wanted = rest
            .iter()
            .flat_map(|s| s.inputs.iter().map(String::as_str))
            .filter(|t| !produced.contains(t))
            .collect();
        Intake {
            table,
            plan: &plan.id,
            stage: rest.first().map_or(index as u32, |s| s.index),
            privacy,
            node,
            wanted,
        }
    }

    /// Checks one arriving tensor's header (its name, and for a raw model input its dtype and shape) before
    /// any of its data is accepted.
    pub fn admit(&self, header: &v1::TensorHeader) -> Result<(), Refusal> {
        let raw = self.table.inputs.iter().find(|i| i.name == header.name);
        if raw.is_some() && matches!(self.privacy, Privacy::Features | Privacy::Device) {
            return Err(Refusal::RawInput {
                tensor: header.name.clone(),
                model: self.table.model.clone(),
                privacy: self.privacy,
                node: self.node.to_string(),
            });
        }
        if !self.wanted.contains(header.name.as_str()) {
            return Err(Refusal::UnknownTensor {
                tensor: header.name.clone(),
                stage: self.stage,
                plan: self.plan.to_string(),
                expected: if self.wanted.is_empty() {
                    "none".to_string()
                } else {
                    self.wanted
                        .iter()
                        .map(|t| format!("\"{t}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
        if let Some(input) = raw
            && (input.dtype != header.dtype || input.shape != header.shape)
        {
            let describe = |code: i32, shape: &[u64]| {
                let dtype = convert::dtype(code, "dtype")
                    .map_or_else(|_| format!("dtype code {code}"), |d| d.to_string());
                format!("{dtype} {shape:?}")
            };
            return Err(Refusal::WrongInput {
                tensor: header.name.clone(),
                model: self.table.model.clone(),
                expected: describe(input.dtype, &input.shape),
                got: describe(header.dtype, &header.shape),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(index: u32, tier: Tier, inputs: &[&str], outputs: &[&str]) -> v1::Stage {
        v1::Stage {
            index,
            tier: v1::Tier::from(tier) as i32,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Model `m`: raw input `x` float32 [1, 4]; plan `p`: device (x → a), edge (a → b), cloud (a, b → y).
    fn table(privacy: Privacy) -> v1::RouteTable {
        v1::RouteTable {
            model: "m".into(),
            privacy: v1::Privacy::from(privacy) as i32,
            inputs: vec![v1::ModelInput {
                name: "x".into(),
                dtype: v1::DataType::Float32 as i32,
                shape: vec![1, 4],
            }],
            outputs: vec!["y".into()],
            plans: vec![v1::Plan {
                id: "p".into(),
                stages: vec![
                    stage(0, Tier::Device, &["x"], &["a"]),
                    stage(1, Tier::Edge, &["a"], &["b"]),
                    stage(2, Tier::Cloud, &["a", "b"], &["y"]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn header(name: &str, dtype: v1::DataType, shape: &[u64]) -> v1::TensorHeader {
        v1::TensorHeader {
            name: name.into(),
            dtype: dtype as i32,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn a_raw_input_of_a_features_model_is_denied_whatever_its_name_or_shape() {
        let t = table(Privacy::Features);
        let level = model_level(&t, Tier::Edge, "e1").expect("features reaches the edge");
        let intake = Intake::new(&t, &t.plans[0], 1, level, "e1");
        let refused = intake
            .admit(&header("x", v1::DataType::Float32, &[1, 4]))
            .expect_err("raw input");
        assert!(refused.is_denial(), "{refused}");
        assert_eq!(refused.status().code(), tonic::Code::PermissionDenied);
        assert!(refused.to_string().contains("\"x\""), "{refused}");
        // The activation the stage takes is fine.
        intake
            .admit(&header("a", v1::DataType::Float32, &[1, 4]))
            .expect("the stage's own input");
    }

    #[test]
    fn device_models_reach_no_agent_and_edge_models_no_cloud_agent() {
        for tier in [Tier::Edge, Tier::Cloud] {
            let refused = model_level(&table(Privacy::Device), tier, "n").expect_err("device");
            assert_eq!(refused.status().code(), tonic::Code::PermissionDenied);
        }
        let refused =
            model_level(&table(Privacy::Edge), Tier::Cloud, "c1").expect_err("edge at cloud");
        assert!(
            refused
                .to_string()
                .contains("nothing of it may reach the cloud tier"),
            "{refused}"
        );
        assert_eq!(
            model_level(&table(Privacy::Edge), Tier::Edge, "e1"),
            Ok(Privacy::Edge)
        );
        // A table without a level is not treated as open.
        let mut unspecified = table(Privacy::Open);
        unspecified.privacy = 0;
        assert!(matches!(
            model_level(&unspecified, Tier::Edge, "e1"),
            Err(Refusal::NoPrivacy { code: 0, .. })
        ));
    }

    #[test]
    fn only_what_this_and_later_stages_read_from_earlier_ones_is_accepted() {
        let t = table(Privacy::Open);
        let intake = Intake::new(&t, &t.plans[0], 1, Privacy::Open, "e1");
        intake
            .admit(&header("a", v1::DataType::Float32, &[1, 4]))
            .expect("read by stage 1 and carried to stage 2");
        for name in ["junk", "b", "y", "x"] {
            let refused = intake
                .admit(&header(name, v1::DataType::Float32, &[250_000_000]))
                .expect_err(name);
            assert_eq!(refused.status().code(), tonic::Code::InvalidArgument);
            let message = refused.to_string();
            assert!(
                message.contains(&format!("\"{name}\"")) && message.contains("needs tensors \"a\""),
                "{message}"
            );
        }
    }

    #[test]
    fn a_raw_input_of_an_open_model_must_have_the_tables_dtype_and_shape() {
        let mut t = table(Privacy::Open);
        t.plans[0].stages.remove(0);
        t.plans[0].stages[0].inputs = vec!["x".into()];
        t.plans[0].stages[0].outputs = vec!["a".into(), "b".into()];
        let intake = Intake::new(&t, &t.plans[0], 0, Privacy::Open, "e1");
        intake
            .admit(&header("x", v1::DataType::Float32, &[1, 4]))
            .expect("as promised");
        for (dtype, shape) in [
            (v1::DataType::Float32, vec![250_000_000]),
            (v1::DataType::Int64, vec![1, 4]),
        ] {
            let refused = intake
                .admit(&header("x", dtype, &shape))
                .expect_err("wrong");
            assert_eq!(refused.status().code(), tonic::Code::InvalidArgument);
            assert!(
                refused.to_string().contains("takes it as float32 [1, 4]"),
                "{refused}"
            );
        }
    }
}
