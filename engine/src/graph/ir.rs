//! The graph IR: a model spec compiled into typed nodes, each with the checkpoint tensors it
//! reads and their expected shapes. Executors, the shape check, the random-weight generator and
//! `troupe inspect` all walk this one plan, so they cannot disagree about what a model contains.

use std::ops::Range;

use crate::error::{EngineError, Result};
use crate::graph::spec::{Architecture, AttentionSpec, ModelSpec};

/// One tensor a node reads: its checkpoint name and expected shape.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Norm weights (generated as ones) and biases (zeros) are initialised differently.
    pub role: WeightRole,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightRole {
    Matrix,
    NormGain,
    Bias,
}

/// The typed nodes of a decoder-only MoE transformer.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    Embedding,
    /// Pre-attention, post-attention or final RMSNorm.
    RmsNorm,
    MlaAttention,
    GqaAttention,
    DenseMlp {
        intermediate: usize,
    },
    /// Router + routed experts + shared experts of one layer.
    Moe {
        experts: usize,
        top_k: usize,
        intermediate: usize,
        shared_intermediate: usize,
    },
    LmHead,
}

/// A node of the plan. `layer` is the HF layer index (None for embedding, final norm, head).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub layer: Option<usize>,
    pub kind: NodeKind,
    /// Short role name inside the layer (`input_norm`, `attention`, `post_norm`, `mlp`, ...).
    pub role: &'static str,
    pub weights: Vec<WeightSpec>,
}

/// What a whole plan holds, as counted by [`Plan::totals`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanTotals {
    /// Distinct weight tensors (a tied head counted once).
    pub tensors: u64,
    /// Parameters (elements of those tensors).
    pub params: u64,
}

/// The compiled plan: nodes in execution order.
#[derive(Clone, Debug)]
pub struct Plan {
    pub spec: ModelSpec,
    pub nodes: Vec<Node>,
}

fn w(name: String, shape: Vec<usize>) -> WeightSpec {
    WeightSpec {
        name,
        shape,
        role: WeightRole::Matrix,
    }
}
fn gain(name: String, dim: usize) -> WeightSpec {
    WeightSpec {
        name,
        shape: vec![dim],
        role: WeightRole::NormGain,
    }
}

/// Names of an MLP's three projections (HF naming differs for Mixtral experts).
fn mlp_weights(prefix: &str, hidden: usize, inter: usize, mixtral: bool) -> Vec<WeightSpec> {
    let (g, u, d) = if mixtral {
        ("w1", "w3", "w2")
    } else {
        ("gate_proj", "up_proj", "down_proj")
    };
    vec![
        w(format!("{prefix}.{g}.weight"), vec![inter, hidden]),
        w(format!("{prefix}.{u}.weight"), vec![inter, hidden]),
        w(format!("{prefix}.{d}.weight"), vec![hidden, inter]),
    ]
}

impl Plan {
    /// Compiles a (validated) spec.
    pub fn compile(spec: &ModelSpec) -> Plan {
        let h = spec.hidden_size;
        let mut nodes = vec![Node {
            layer: None,
            kind: NodeKind::Embedding,
            role: "embedding",
            weights: vec![w(
                "model.embed_tokens.weight".into(),
                vec![spec.vocab_size, h],
            )],
        }];
        for l in 0..spec.num_hidden_layers {
            let p = format!("model.layers.{l}");
            nodes.push(Node {
                layer: Some(l),
                kind: NodeKind::RmsNorm,
                role: "input_norm",
                weights: vec![gain(format!("{p}.input_layernorm.weight"), h)],
            });
            nodes.push(attention_node(spec, l, &p));
            nodes.push(Node {
                layer: Some(l),
                kind: NodeKind::RmsNorm,
                role: "post_norm",
                weights: vec![gain(format!("{p}.post_attention_layernorm.weight"), h)],
            });
            nodes.push(ffn_node(
                spec,
                l,
                &p,
                0..spec.moe.as_ref().map_or(0, |m| m.n_routed_experts),
            ));
        }
        nodes.push(Node {
            layer: None,
            kind: NodeKind::RmsNorm,
            role: "final_norm",
            weights: vec![gain("model.norm.weight".into(), h)],
        });
        let head_name = if spec.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        nodes.push(Node {
            layer: None,
            kind: NodeKind::LmHead,
            role: "lm_head",
            weights: vec![w(head_name.into(), vec![spec.vocab_size, h])],
        });
        Plan {
            spec: spec.clone(),
            nodes,
        }
    }

    /// The tensors and parameters [`Plan::compile`] would produce, counted from one layer of each
    /// kind (and one routed expert) without building the plan, with checked arithmetic.
    /// Call it on a spec whose dimensions are within the limits of `graph::validate` (which does).
    pub fn totals(spec: &ModelSpec) -> Result<PlanTotals> {
        let overflow = |what: &str| {
            EngineError::spec(
                "model",
                format!("the number of {what} of the model overflows 64 bits"),
            )
        };
        let count = |ws: &[WeightSpec]| -> Result<(u64, u64)> {
            let mut params = 0u64;
            for w in ws {
                let n = w
                    .shape
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
                    .ok_or_else(|| {
                        EngineError::spec(
                            "model",
                            format!(
                                "tensor `{}` of shape {:?} has more than 2^64 elements",
                                w.name, w.shape
                            ),
                        )
                    })?;
                params = params
                    .checked_add(n)
                    .ok_or_else(|| overflow("parameters"))?;
            }
            Ok((ws.len() as u64, params))
        };
        let h = spec.hidden_size;
        let mut ends = vec![
            w("model.embed_tokens.weight".into(), vec![spec.vocab_size, h]),
            gain("model.norm.weight".into(), h),
        ];
        if !spec.tie_word_embeddings {
            ends.push(w("lm_head.weight".into(), vec![spec.vocab_size, h]));
        }
        let (mut tensors, mut params) = count(&ends)?;
        let p = "model.layers.0";
        let mut per_layer = vec![
            gain(format!("{p}.input_layernorm.weight"), h),
            gain(format!("{p}.post_attention_layernorm.weight"), h),
        ];
        per_layer.extend(attention_node(spec, 0, p).weights);
        let (lt, lp) = count(&per_layer)?;
        let layers = spec.num_hidden_layers as u64;
        let mul = |a: u64, b: u64, what: &str| a.checked_mul(b).ok_or_else(|| overflow(what));
        let add = |a: u64, b: u64, what: &str| a.checked_add(b).ok_or_else(|| overflow(what));
        tensors = add(tensors, mul(lt, layers, "tensors")?, "tensors")?;
        params = add(params, mul(lp, layers, "parameters")?, "parameters")?;
        let moe_layers = spec.moe.as_ref().map_or(0, |m| {
            spec.num_hidden_layers - m.first_k_dense_replace.min(spec.num_hidden_layers)
        }) as u64;
        let dense_layers = layers - moe_layers;
        if dense_layers > 0 {
            let (t, pr) = count(&ffn_node(spec, 0, p, 0..0).weights)?;
            tensors = add(tensors, mul(t, dense_layers, "tensors")?, "tensors")?;
            params = add(params, mul(pr, dense_layers, "parameters")?, "parameters")?;
        }
        if let (Some(m), true) = (&spec.moe, moe_layers > 0) {
            let first = spec.num_hidden_layers - moe_layers as usize;
            let node = ffn_node(spec, first, p, 0..1);
            let (expert, other): (Vec<WeightSpec>, Vec<WeightSpec>) = node
                .weights
                .into_iter()
                .partition(|w| w.name.contains(".experts."));
            let (et, ep) = count(&expert)?;
            let (ot, op) = count(&other)?;
            let n = m.n_routed_experts as u64;
            let t = add(ot, mul(et, n, "tensors")?, "tensors")?;
            let pr = add(op, mul(ep, n, "parameters")?, "parameters")?;
            tensors = add(tensors, mul(t, moe_layers, "tensors")?, "tensors")?;
            params = add(params, mul(pr, moe_layers, "parameters")?, "parameters")?;
        }
        Ok(PlanTotals { tensors, params })
    }

    /// Every distinct tensor the plan reads (a tied head is listed once).
    pub fn weight_specs(&self) -> Vec<&WeightSpec> {
        let mut seen = std::collections::HashSet::new();
        self.nodes
            .iter()
            .flat_map(|n| n.weights.iter())
            .filter(|w| seen.insert(w.name.clone()))
            .collect()
    }
}

fn attention_node(spec: &ModelSpec, l: usize, p: &str) -> Node {
    let h = spec.hidden_size;
    let heads = spec.num_attention_heads;
    let a = format!("{p}.self_attn");
    match &spec.attention {
        AttentionSpec::Mla {
            q_lora_rank,
            kv_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
        } => {
            let qk = qk_nope_head_dim + qk_rope_head_dim;
            let mut ws = match q_lora_rank {
                Some(r) => vec![
                    w(format!("{a}.q_a_proj.weight"), vec![*r, h]),
                    gain(format!("{a}.q_a_layernorm.weight"), *r),
                    w(format!("{a}.q_b_proj.weight"), vec![heads * qk, *r]),
                ],
                None => vec![w(format!("{a}.q_proj.weight"), vec![heads * qk, h])],
            };
            ws.push(w(
                format!("{a}.kv_a_proj_with_mqa.weight"),
                vec![kv_lora_rank + qk_rope_head_dim, h],
            ));
            ws.push(gain(format!("{a}.kv_a_layernorm.weight"), *kv_lora_rank));
            ws.push(w(
                format!("{a}.kv_b_proj.weight"),
                vec![heads * (qk_nope_head_dim + v_head_dim), *kv_lora_rank],
            ));
            ws.push(w(format!("{a}.o_proj.weight"), vec![h, heads * v_head_dim]));
            Node {
                layer: Some(l),
                kind: NodeKind::MlaAttention,
                role: "attention",
                weights: ws,
            }
        }
        AttentionSpec::Gqa {
            num_key_value_heads,
            head_dim,
            ..
        } => Node {
            layer: Some(l),
            kind: NodeKind::GqaAttention,
            role: "attention",
            weights: vec![
                w(format!("{a}.q_proj.weight"), vec![heads * head_dim, h]),
                w(
                    format!("{a}.k_proj.weight"),
                    vec![num_key_value_heads * head_dim, h],
                ),
                w(
                    format!("{a}.v_proj.weight"),
                    vec![num_key_value_heads * head_dim, h],
                ),
                w(format!("{a}.o_proj.weight"), vec![h, heads * head_dim]),
            ],
        },
    }
}

/// The feed-forward node of layer `l`; an MoE node lists the routed experts in `experts` only.
fn ffn_node(spec: &ModelSpec, l: usize, p: &str, experts: Range<usize>) -> Node {
    let h = spec.hidden_size;
    match (&spec.moe, spec.is_moe_layer(l)) {
        (Some(m), true) => {
            let mixtral = spec.architecture == Architecture::Mixtral;
            let base = if mixtral {
                format!("{p}.block_sparse_moe")
            } else {
                format!("{p}.mlp")
            };
            let mut ws = vec![w(
                format!("{base}.gate.weight"),
                vec![m.n_routed_experts, h],
            )];
            if spec.architecture == Architecture::DeepseekV3 {
                ws.push(WeightSpec {
                    name: format!("{base}.gate.e_score_correction_bias"),
                    shape: vec![m.n_routed_experts],
                    role: WeightRole::Bias,
                });
            }
            for e in experts {
                ws.extend(mlp_weights(
                    &format!("{base}.experts.{e}"),
                    h,
                    m.moe_intermediate_size,
                    mixtral,
                ));
            }
            let shared = m.moe_intermediate_size * m.n_shared_experts;
            if shared > 0 {
                ws.extend(mlp_weights(
                    &format!("{base}.shared_experts"),
                    h,
                    shared,
                    false,
                ));
            }
            Node {
                layer: Some(l),
                kind: NodeKind::Moe {
                    experts: m.n_routed_experts,
                    top_k: m.num_experts_per_tok,
                    intermediate: m.moe_intermediate_size,
                    shared_intermediate: shared,
                },
                role: "moe",
                weights: ws,
            }
        }
        _ => Node {
            layer: Some(l),
            kind: NodeKind::DenseMlp {
                intermediate: spec.intermediate_size,
            },
            role: "mlp",
            weights: mlp_weights(&format!("{p}.mlp"), h, spec.intermediate_size, false),
        },
    }
}
