//! `ModelSpec`: every hyper-parameter of the four supported families, as the `[model]` table of a
//! graph file. Field names follow Hugging Face's config keys where one exists.
//!
//! `ModelSpec::validate` (in `graph::validate`) checks ranges, limits, finiteness and the
//! cross-field invariants, so later code can index and multiply without re-checking.

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
pub use crate::params::{RopeLayout, Scoring, TopkMethod};

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
///
/// Read and written as one flat table whose `kind` says which fields apply ([`AttentionTable`]),
/// so a bad value is reported at its own key (`model.attention.kv_lora_rank`), not at the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AttentionTable", into = "AttentionTable")]
pub enum AttentionSpec {
    Mla {
        /// Rank of the query down-projection; absent = a full `q_proj` (DeepSeek-V2-Lite).
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
        sliding_window: Option<usize>,
    },
}

/// The `kind` key of `[model.attention]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    Mla,
    Gqa,
}

/// `[model.attention]` exactly as written in a graph file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionTable {
    pub kind: Option<AttentionKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q_lora_rank: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_lora_rank: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qk_nope_head_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qk_rope_head_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v_head_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
}

impl TryFrom<AttentionTable> for AttentionSpec {
    type Error = String;
    fn try_from(t: AttentionTable) -> Result<Self, String> {
        let need = |v: Option<usize>, key: &str, kind: &str| {
            v.ok_or_else(|| format!("`model.attention.{key}` is required for kind = \"{kind}\""))
        };
        let refuse = |v: Option<usize>, key: &str, kind: &str| match v {
            Some(_) => Err(format!(
                "`model.attention.{key}` does not apply to kind = \"{kind}\""
            )),
            None => Ok(()),
        };
        match t.kind {
            None => Err("`model.attention.kind` is required (\"mla\" or \"gqa\")".into()),
            Some(AttentionKind::Mla) => {
                refuse(t.num_key_value_heads, "num_key_value_heads", "mla")?;
                refuse(t.head_dim, "head_dim", "mla")?;
                refuse(t.sliding_window, "sliding_window", "mla")?;
                Ok(AttentionSpec::Mla {
                    q_lora_rank: t.q_lora_rank,
                    kv_lora_rank: need(t.kv_lora_rank, "kv_lora_rank", "mla")?,
                    qk_nope_head_dim: need(t.qk_nope_head_dim, "qk_nope_head_dim", "mla")?,
                    qk_rope_head_dim: need(t.qk_rope_head_dim, "qk_rope_head_dim", "mla")?,
                    v_head_dim: need(t.v_head_dim, "v_head_dim", "mla")?,
                })
            }
            Some(AttentionKind::Gqa) => {
                for (v, key) in [
                    (t.q_lora_rank, "q_lora_rank"),
                    (t.kv_lora_rank, "kv_lora_rank"),
                    (t.qk_nope_head_dim, "qk_nope_head_dim"),
                    (t.qk_rope_head_dim, "qk_rope_head_dim"),
                    (t.v_head_dim, "v_head_dim"),
                ] {
                    refuse(v, key, "gqa")?;
                }
                Ok(AttentionSpec::Gqa {
                    num_key_value_heads: need(t.num_key_value_heads, "num_key_value_heads", "gqa")?,
                    head_dim: need(t.head_dim, "head_dim", "gqa")?,
                    sliding_window: t.sliding_window,
                })
            }
        }
    }
}

impl From<AttentionSpec> for AttentionTable {
    fn from(a: AttentionSpec) -> Self {
        match a {
            AttentionSpec::Mla {
                q_lora_rank,
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
            } => AttentionTable {
                kind: Some(AttentionKind::Mla),
                q_lora_rank,
                kv_lora_rank: Some(kv_lora_rank),
                qk_nope_head_dim: Some(qk_nope_head_dim),
                qk_rope_head_dim: Some(qk_rope_head_dim),
                v_head_dim: Some(v_head_dim),
                ..Default::default()
            },
            AttentionSpec::Gqa {
                num_key_value_heads,
                head_dim,
                sliding_window,
            } => AttentionTable {
                kind: Some(AttentionKind::Gqa),
                num_key_value_heads: Some(num_key_value_heads),
                head_dim: Some(head_dim),
                sliding_window,
                ..Default::default()
            },
        }
    }
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
}

/// YaRN's magnitude correction, `0.1·m·ln(scale) + 1` for scale > 1.
pub fn yarn_get_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}
