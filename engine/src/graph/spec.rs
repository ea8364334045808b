//! `ModelSpec`: every hyper-parameter of the four supported families, as the `[model]` table of a
//! graph file. Field names follow Hugging Face's config keys where one exists.
//!
//! `ModelSpec::validate` checks the cross-field invariants (divisibility, ranges) so later code can
//! index without re-checking.

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{EngineError, Result};

/// The model families troupe runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    DeepseekV3,
    DeepseekV2,
    Mixtral,
    Llama,
}

impl Architecture {
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::DeepseekV3 => "DeepseekV3ForCausalLM",
            Architecture::DeepseekV2 => "DeepseekV2ForCausalLM",
            Architecture::Mixtral => "MixtralForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
        }
    }
    pub fn is_deepseek(self) -> bool {
        matches!(self, Architecture::DeepseekV3 | Architecture::DeepseekV2)
    }
}

/// The `[model]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Intermediate size of the dense MLP layers (all layers for Llama, the first
    /// `first_k_dense_replace` for DeepSeek).
    pub intermediate_size: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The dtype weights are generated in when `[weights] random` is used (checkpoints carry their own).
    #[serde(default = "default_dtype")]
    pub dtype: DType,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    pub attention: AttentionSpec,
    pub rope: RopeSpec,
    #[serde(default)]
    pub moe: Option<MoeSpec>,
    /// DeepSeek multi-token-prediction layers present in the checkpoint (never run, as in HF).
    #[serde(default)]
    pub num_nextn_predict_layers: usize,
}

fn default_dtype() -> DType {
    DType::F32
}

/// `[model.attention]`: MLA (DeepSeek) or grouped-query attention (Llama, Mixtral).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AttentionSpec {
    Mla {
        /// Rank of the query down-projection; absent = a full `q_proj` (DeepSeek-V2-Lite).
        #[serde(default)]
        q_lora_rank: Option<usize>,
        kv_lora_rank: usize,
        qk_nope_head_dim: usize,
        qk_rope_head_dim: usize,
        v_head_dim: usize,
    },
    Gqa {
        num_key_value_heads: usize,
        head_dim: usize,
        /// Each query attends to at most this many most recent positions (itself included).
        #[serde(default)]
        sliding_window: Option<usize>,
    },
}

/// How rope pairs up the elements it rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RopeLayout {
    /// Pairs `(x[2i], x[2i+1])` (DeepSeek `rope_interleave`, V2's complex form).
    Interleaved,
    /// Pairs `(x[i], x[i + d/2])` (Llama/Mixtral `rotate_half`).
    HalfSplit,
}

/// `[model.rope]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeSpec {
    pub theta: f64,
    pub layout: RopeLayout,
    #[serde(default)]
    pub yarn: Option<YarnSpec>,
}

/// `[model.rope.yarn]`: YaRN scaling as HF computes it (`factor` key, no dynamic switch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YarnSpec {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    #[serde(default = "default_beta_fast")]
    pub beta_fast: f64,
    #[serde(default = "default_beta_slow")]
    pub beta_slow: f64,
    #[serde(default = "one")]
    pub mscale: f64,
    #[serde(default)]
    pub mscale_all_dim: f64,
    /// HF's `attention_factor`; when absent it is derived from mscale / mscale_all_dim.
    #[serde(default)]
    pub attention_factor: Option<f64>,
}

fn default_beta_fast() -> f64 {
    32.0
}
fn default_beta_slow() -> f64 {
    1.0
}
fn one() -> f64 {
    1.0
}

/// How the router turns logits into scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    Softmax,
    Sigmoid,
}

/// How the router picks experts from scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopkMethod {
    /// Plain top-k over all experts.
    Greedy,
    /// DeepSeek-V2: groups scored by their max, top `topk_group` groups kept.
    GroupLimitedGreedy,
    /// DeepSeek-V3: scores + correction bias, groups scored by the sum of their top-2.
    NoauxTc,
}

/// `[model.moe]`: routed and shared experts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeSpec {
    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    #[serde(default)]
    pub n_shared_experts: usize,
    /// Layers `0..first_k_dense_replace` use a dense MLP instead of MoE.
    #[serde(default)]
    pub first_k_dense_replace: usize,
    #[serde(default = "one_usize")]
    pub n_group: usize,
    #[serde(default = "one_usize")]
    pub topk_group: usize,
    pub scoring: Scoring,
    pub topk_method: TopkMethod,
    /// Divide the chosen weights by their sum.
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default = "one")]
    pub routed_scaling_factor: f64,
}

fn one_usize() -> usize {
    1
}

/// The attention geometry derived from the spec, used by kernels and the IR.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionDims {
    pub heads: usize,
    pub kv_heads: usize,
    /// Per-head query/key width.
    pub qk_dim: usize,
    /// Per-head value width.
    pub v_dim: usize,
    /// The rotated part of each query/key head.
    pub rope_dim: usize,
}

impl ModelSpec {
    /// Whether layer `l` is an MoE layer.
    pub fn is_moe_layer(&self, l: usize) -> bool {
        match &self.moe {
            Some(m) => l >= m.first_k_dense_replace,
            None => false,
        }
    }

    pub fn attention_dims(&self) -> AttentionDims {
        match &self.attention {
            AttentionSpec::Mla {
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
                ..
            } => AttentionDims {
                heads: self.num_attention_heads,
                kv_heads: self.num_attention_heads,
                qk_dim: qk_nope_head_dim + qk_rope_head_dim,
                v_dim: *v_head_dim,
                rope_dim: *qk_rope_head_dim,
            },
            AttentionSpec::Gqa {
                num_key_value_heads,
                head_dim,
                ..
            } => AttentionDims {
                heads: self.num_attention_heads,
                kv_heads: *num_key_value_heads,
                qk_dim: *head_dim,
                v_dim: *head_dim,
                rope_dim: *head_dim,
            },
        }
    }

    /// The softmax scale: `qk_dim^-0.5`, times YaRN's `mscale²` for MLA (as HF DeepSeek does).
    pub fn softmax_scale(&self) -> f64 {
        let d = self.attention_dims();
        let mut scale = (d.qk_dim as f64).powf(-0.5);
        if let (AttentionSpec::Mla { .. }, Some(y)) = (&self.attention, &self.rope.yarn) {
            if y.mscale_all_dim != 0.0 {
                let m = yarn_get_mscale(y.factor, y.mscale_all_dim);
                scale *= m * m;
            }
        }
        scale
    }

    /// Checks ranges and divisibility; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let pos = |field: &str, v: usize| -> Result<()> {
            if v == 0 {
                Err(EngineError::spec(field, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        pos("model.vocab_size", self.vocab_size)?;
        pos("model.hidden_size", self.hidden_size)?;
        pos("model.num_hidden_layers", self.num_hidden_layers)?;
        pos("model.num_attention_heads", self.num_attention_heads)?;
        pos(
            "model.max_position_embeddings",
            self.max_position_embeddings,
        )?;
        if !(self.rms_norm_eps > 0.0) {
            return Err(EngineError::spec("model.rms_norm_eps", "must be > 0"));
        }
        if !(self.rope.theta > 0.0) {
            return Err(EngineError::spec("model.rope.theta", "must be > 0"));
        }
        match &self.attention {
            AttentionSpec::Mla {
                q_lora_rank,
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
            } => {
                if let Some(r) = q_lora_rank {
                    pos("model.attention.q_lora_rank", *r)?;
                }
                pos("model.attention.kv_lora_rank", *kv_lora_rank)?;
                pos("model.attention.v_head_dim", *v_head_dim)?;
                if qk_nope_head_dim + qk_rope_head_dim == 0 {
                    return Err(EngineError::spec(
                        "model.attention.qk_nope_head_dim",
                        "qk_nope_head_dim + qk_rope_head_dim must be at least 1",
                    ));
                }
                if qk_rope_head_dim % 2 != 0 {
                    return Err(EngineError::spec(
                        "model.attention.qk_rope_head_dim",
                        "must be even (rope rotates pairs)",
                    ));
                }
            }
            AttentionSpec::Gqa {
                num_key_value_heads,
                head_dim,
                sliding_window,
            } => {
                pos("model.attention.num_key_value_heads", *num_key_value_heads)?;
                pos("model.attention.head_dim", *head_dim)?;
                if self.num_attention_heads % num_key_value_heads != 0 {
                    return Err(EngineError::spec(
                        "model.attention.num_key_value_heads",
                        format!(
                            "{} query heads are not a multiple of {} kv heads",
                            self.num_attention_heads, num_key_value_heads
                        ),
                    ));
                }
                if head_dim % 2 != 0 {
                    return Err(EngineError::spec(
                        "model.attention.head_dim",
                        "must be even",
                    ));
                }
                if let Some(w) = sliding_window {
                    pos("model.attention.sliding_window", *w)?;
                }
            }
        }
        if let Some(y) = &self.rope.yarn {
            if !(y.factor > 0.0) {
                return Err(EngineError::spec("model.rope.yarn.factor", "must be > 0"));
            }
            pos(
                "model.rope.yarn.original_max_position_embeddings",
                y.original_max_position_embeddings,
            )?;
        }
        if let Some(m) = &self.moe {
            pos("model.moe.n_routed_experts", m.n_routed_experts)?;
            pos("model.moe.moe_intermediate_size", m.moe_intermediate_size)?;
            pos("model.moe.n_group", m.n_group)?;
            if m.num_experts_per_tok == 0 || m.num_experts_per_tok > m.n_routed_experts {
                return Err(EngineError::spec(
                    "model.moe.num_experts_per_tok",
                    format!("must be in 1..={}", m.n_routed_experts),
                ));
            }
            if m.n_routed_experts % m.n_group != 0 {
                return Err(EngineError::spec(
                    "model.moe.n_group",
                    format!(
                        "{} experts do not split into {} groups",
                        m.n_routed_experts, m.n_group
                    ),
                ));
            }
            if m.topk_group == 0 || m.topk_group > m.n_group {
                return Err(EngineError::spec(
                    "model.moe.topk_group",
                    format!("must be in 1..={}", m.n_group),
                ));
            }
            let per_group = m.n_routed_experts / m.n_group;
            if m.topk_method == TopkMethod::NoauxTc && per_group < 2 && m.n_group > 1 {
                return Err(EngineError::spec(
                    "model.moe.n_group",
                    "noaux_tc scores a group by its top-2, so each group needs at least 2 experts",
                ));
            }
            if m.topk_method != TopkMethod::Greedy
                && m.num_experts_per_tok > m.topk_group * per_group
            {
                return Err(EngineError::spec(
                    "model.moe.num_experts_per_tok",
                    "more experts per token than the kept groups hold",
                ));
            }
            if m.first_k_dense_replace > self.num_hidden_layers {
                return Err(EngineError::spec(
                    "model.moe.first_k_dense_replace",
                    "is larger than num_hidden_layers",
                ));
            }
            if m.first_k_dense_replace > 0 || self.architecture == Architecture::Llama {
                pos("model.intermediate_size", self.intermediate_size)?;
            }
        } else {
            pos("model.intermediate_size", self.intermediate_size)?;
        }
        Ok(())
    }
}

/// YaRN's magnitude correction, `0.1·m·ln(scale) + 1` for scale > 1.
pub fn yarn_get_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}
