//! A validated graph view over an ONNX model: nodes in topological order, the tensors between them, model
//! inputs, outputs and initializers. Built from bytes; never does I/O itself.

use std::collections::{BTreeSet, HashMap, HashSet};

use prost::Message;

use crate::onnx::{self, ModelProto};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bytes are not a protobuf-encoded ONNX model.
    #[error(
        "not an ONNX model (protobuf decoding failed: {0}); is the file truncated or of another format?"
    )]
    Decode(#[from] prost::DecodeError),
    /// The bytes decoded but hold no graph.
    #[error("not an ONNX model: no graph in the file (ir_version {ir_version})")]
    NoGraph {
        /// The decoded IR version (0 when absent).
        ir_version: i64,
    },
    /// The model is empty.
    #[error("the model graph has no nodes")]
    NoNodes,
    /// A tensor is produced twice.
    #[error(
        "tensor \"{tensor}\" is produced by two nodes (\"{first}\" and \"{second}\"); ONNX requires SSA form"
    )]
    DuplicateProducer {
        /// The tensor name.
        tensor: String,
        /// First producing node.
        first: String,
        /// Second producing node.
        second: String,
    },
    /// A node reads a tensor that nothing defines.
    #[error(
        "node \"{node}\" ({op}) reads tensor \"{tensor}\", which is no model input, initializer or node output"
    )]
    UndefinedTensor {
        /// Reading node.
        node: String,
        /// Its operator.
        op: String,
        /// The undefined tensor.
        tensor: String,
    },
    /// A model output that nothing defines.
    #[error("model output \"{0}\" is not produced by any node, input or initializer")]
    UndefinedOutput(String),
    /// The graph has a cycle.
    #[error("the graph has a cycle through node \"{0}\"")]
    Cycle(String),
    /// Initializers stored outside the file are not supported yet.
    #[error(
        "initializer \"{0}\" stores its data in an external file; inline it first (onnx.load + onnx.save without external data)"
    )]
    ExternalData(String),
}

/// One operator node of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// Index of the node in the original `graph.node` list.
    pub proto_index: usize,
    /// A unique, human-readable name (the ONNX name, or a derived one when that is empty or duplicated).
    pub name: String,
    /// The name tract gives this node (ONNX name, else first output); used to map tract's results back.
    pub tract_name: String,
    /// ONNX operator type, e.g. `Conv`.
    pub op_type: String,
    /// Operator domain ("" is the default ONNX domain).
    pub domain: String,
    /// Tensors read, in order, including those read implicitly by subgraphs (If/Loop bodies). Optional inputs
    /// (empty names) are left out.
    pub inputs: Vec<String>,
    /// Tensors written (empty optional outputs left out).
    pub outputs: Vec<String>,
}

/// Where a tensor comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A model input fed at run time.
    Input,
    /// A constant initializer (weights).
    Initializer,
    /// The output of an input-less `Constant` node (index into `graph.node`). Like an initializer, it travels
    /// inside every stage that reads it, never over the network.
    Constant(usize),
    /// The output of node `n` (index into [`Model::nodes`]).
    Node(usize),
}

/// A validated ONNX model with its graph view.
#[derive(Debug, Clone)]
pub struct Model {
    /// The decoded model's header: everything but the graph (IR version, opsets, producer, metadata).
    pub header: ModelProto,
    /// The decoded graph, untouched.
    pub graph: onnx::GraphProto,
    /// Nodes in a topological order.
    pub nodes: Vec<Node>,
    /// Model inputs fed at run time (graph inputs that are not initializers), in declaration order.
    pub inputs: Vec<String>,
    /// Model outputs in declaration order.
    pub outputs: Vec<String>,
    /// Initializer name → index in `graph.initializer`.
    pub initializers: HashMap<String, usize>,
    /// Input-less `Constant` nodes (indices into `graph.node`); they are not in `nodes`.
    pub constants: Vec<usize>,
    /// Every tensor's origin.
    pub origins: HashMap<String, Origin>,
    /// Every tensor's consumers (node indices into `nodes`, ascending, deduplicated).
    pub consumers: HashMap<String, Vec<usize>>,
}

impl Model {
    /// Decodes and validates an ONNX model.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        let proto = ModelProto::decode(bytes)?;
        Model::from_proto(proto)
    }

    /// Validates a decoded model and builds the graph view.
    pub fn from_proto(mut header: ModelProto) -> Result<Model, ModelError> {
        let graph = header.graph.take().ok_or(ModelError::NoGraph {
            ir_version: header.ir_version(),
        })?;
        if graph.node.is_empty() {
            return Err(ModelError::NoNodes);
        }
        let mut initializers = HashMap::new();
        for (i, init) in graph.initializer.iter().enumerate() {
            if init.data_location() == onnx::proto::tensor_proto::DataLocation::External {
                return Err(ModelError::ExternalData(init.name().to_string()));
            }
            initializers.insert(init.name().to_string(), i);
        }
        let inputs: Vec<String> = graph
            .input
            .iter()
            .map(|vi| vi.name().to_string())
            .filter(|n| !initializers.contains_key(n))
            .collect();
        let mut origins: HashMap<String, Origin> = HashMap::new();
        for name in &inputs {
            origins.insert(name.clone(), Origin::Input);
        }
        for name in initializers.keys() {
            origins.insert(name.clone(), Origin::Initializer);
        }

        // Unique display names.
        let mut seen = HashSet::new();
        let mut raw: Vec<Node> = Vec::with_capacity(graph.node.len());
        let mut constants = Vec::new();
        for (i, pb) in graph.node.iter().enumerate() {
            if pb.op_type() == "Constant"
                && pb.domain().is_empty()
                && pb.input.iter().all(String::is_empty)
            {
                for out in pb.output.iter().filter(|s| !s.is_empty()) {
                    if origins.insert(out.clone(), Origin::Constant(i)).is_some() {
                        return Err(ModelError::DuplicateProducer {
                            tensor: out.clone(),
                            first: "an input or initializer".into(),
                            second: format!("Constant node {i}"),
                        });
                    }
                }
                constants.push(i);
                continue;
            }
            let outputs: Vec<String> = pb
                .output
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect();
            let tract_name = if !pb.name().is_empty() {
                pb.name().to_string()
            } else if let Some(first) = pb.output.first().filter(|s| !s.is_empty()) {
                first.clone()
            } else {
                format!("{i}-{}", pb.op_type())
            };
            let mut name = if pb.name().is_empty() {
                format!("{}_{i}", pb.op_type())
            } else {
                pb.name().to_string()
            };
            if !seen.insert(name.clone()) {
                name = format!("{name}#{i}");
                seen.insert(name.clone());
            }
            let mut node_inputs: Vec<String> =
                pb.input.iter().filter(|s| !s.is_empty()).cloned().collect();
            for outer in subgraph_outer_reads(pb) {
                if !node_inputs.contains(&outer) {
                    node_inputs.push(outer);
                }
            }
            raw.push(Node {
                proto_index: i,
                name,
                tract_name,
                op_type: pb.op_type().to_string(),
                domain: pb.domain().to_string(),
                inputs: node_inputs,
                outputs,
            });
        }

        // Producers (by raw index).
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, node) in raw.iter().enumerate() {
            for out in &node.outputs {
                if let Some(&first) = producer.get(out.as_str()) {
                    return Err(ModelError::DuplicateProducer {
                        tensor: out.clone(),
                        first: raw[first].name.clone(),
                        second: node.name.clone(),
                    });
                }
                producer.insert(out, i);
            }
        }
        for node in &raw {
            for input in &node.inputs {
                if !producer.contains_key(input.as_str()) && !origins.contains_key(input) {
                    return Err(ModelError::UndefinedTensor {
                        node: node.name.clone(),
                        op: node.op_type.clone(),
                        tensor: input.clone(),
                    });
                }
            }
        }

        // Kahn's algorithm, stable: among ready nodes, lowest original index first.
        let n = raw.len();
        let mut indegree = vec![0usize; n];
        let mut succ: Vec<Vec<usize>> = vec![vec![]; n];
        for (i, node) in raw.iter().enumerate() {
            let preds: BTreeSet<usize> = node
                .inputs
                .iter()
                .filter_map(|t| producer.get(t.as_str()).copied())
                .collect();
            for p in preds {
                if p == i {
                    return Err(ModelError::Cycle(node.name.clone()));
                }
                indegree[i] += 1;
                succ[p].push(i);
            }
        }
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &s in &succ[i] {
                indegree[s] -= 1;
                if indegree[s] == 0 {
                    ready.insert(s);
                }
            }
        }
        if order.len() != n {
            let stuck = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
            return Err(ModelError::Cycle(raw[stuck].name.clone()));
        }
        let mut slots: Vec<Option<Node>> = raw.into_iter().map(Some).collect();
        let nodes: Vec<Node> = order.iter().filter_map(|&i| slots[i].take()).collect();

        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            for out in &node.outputs {
                origins.insert(out.clone(), Origin::Node(i));
            }
            for input in &node.inputs {
                let list = consumers.entry(input.clone()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        let outputs: Vec<String> = graph
            .output
            .iter()
            .map(|vi| vi.name().to_string())
            .collect();
        for out in &outputs {
            if !origins.contains_key(out) {
                return Err(ModelError::UndefinedOutput(out.clone()));
            }
        }
        Ok(Model {
            header,
            graph,
            nodes,
            inputs,
            outputs,
            initializers,
            constants,
            origins,
            consumers,
        })
    }

    /// The model's name for messages: the graph name, or "model".
    pub fn display_name(&self) -> &str {
        let name = self.graph.name();
        if name.is_empty() { "model" } else { name }
    }

    /// Index of the node with this display name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The declared element type of a model input or output (ONNX dtype code), if declared.
    pub fn declared_elem_type(&self, tensor: &str) -> Option<i32> {
        let graph = &self.graph;
        graph
            .input
            .iter()
            .chain(graph.output.iter())
            .chain(graph.value_info.iter())
            .find(|vi| vi.name() == tensor)
            .and_then(|vi| match vi.r#type.as_ref()?.value.as_ref()? {
                onnx::proto::type_proto::Value::TensorType(t) => t.elem_type,
                _ => None,
            })
    }

    /// The declared shape of a model input: `Some(d)` for a fixed dim, `None` for a symbolic or missing one.
    pub fn declared_input_shape(&self, tensor: &str) -> Option<Vec<DeclaredDim>> {
        let vi = self.graph.input.iter().find(|vi| vi.name() == tensor)?;
        match vi.r#type.as_ref()?.value.as_ref()? {
            onnx::proto::type_proto::Value::TensorType(t) => {
                let shape = t.shape.as_ref()?;
                Some(
                    shape
                        .dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(onnx::proto::tensor_shape_proto::dimension::Value::DimValue(
                                v,
                            )) if *v >= 0 => DeclaredDim::Fixed(*v as usize),
                            Some(onnx::proto::tensor_shape_proto::dimension::Value::DimParam(
                                p,
                            )) => DeclaredDim::Symbol(p.clone()),
                            _ => DeclaredDim::Symbol("?".into()),
                        })
                        .collect(),
                )
            }
            _ => None,
        }
    }
}

/// One dimension of a declared input shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredDim {
    /// A fixed size.
    Fixed(usize),
    /// A symbolic (or unknown) size that must be given on the command line.
    Symbol(String),
}

impl std::fmt::Display for DeclaredDim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeclaredDim::Fixed(d) => write!(f, "{d}"),
            DeclaredDim::Symbol(s) => write!(f, "{s}"),
        }
    }
}

/// Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope.
fn subgraph_outer_reads(node: &onnx::NodeProto) -> Vec<String> {
    let mut reads = Vec::new();
    for attr in &node.attribute {
        for g in attr.g.iter().chain(attr.graphs.iter()) {
            collect_outer_reads(g, &mut HashSet::new(), &mut reads);
        }
    }
    reads
}

fn collect_outer_reads(
    graph: &onnx::GraphProto,
    outer_defined: &mut HashSet<String>,
    reads: &mut Vec<String>,
) {
    let mut defined: HashSet<String> = graph
        .input
        .iter()
        .map(|v| v.name().to_string())
        .chain(graph.initializer.iter().map(|t| t.name().to_string()))
        .collect();
    defined.extend(outer_defined.iter().cloned());
    for node in &graph.node {
        for input in node.input.iter().filter(|s| !s.is_empty()) {
            if !defined.contains(input) && !reads.contains(input) {
                reads.push(input.clone());
            }
        }
        for attr in &node.attribute {
            for g in attr.g.iter().chain(attr.graphs.iter()) {
                collect_outer_reads(g, &mut defined.clone(), reads);
            }
        }
        defined.extend(node.output.iter().cloned());
    }
}
