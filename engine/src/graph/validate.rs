//! `ModelSpec::validate`: every check a spec must pass before anything is sized from it, in steps —
//! dimensions (positive, below the limits), floats (finite, in range), attention geometry, MoE
//! routing, special token ids, and the totals the whole plan implies (tensors, parameters), all
//! computed with checked arithmetic. Each error names the field at fault.
//!
//! The limits are generous (tens of times the largest released models) and exist so that no
//! product of dimensions can overflow and no plan can grow without bound:
//!
//! | limit | value | applies to |
//! |---|---|---|
//! | [`MAX_WIDTH`] | 2^20 | hidden, intermediate, moe_intermediate, lora ranks, head dims, shared-expert width |
//! | [`MAX_VOCAB`] | 2^24 | vocab_size |
//! | [`MAX_HEADS`] | 2^16 | num_attention_heads, num_key_value_heads |
//! | [`MAX_LAYERS`] | 2^16 | num_hidden_layers, num_nextn_predict_layers |
//! | [`MAX_EXPERTS`] | 2^16 | n_routed_experts, n_shared_experts |
//! | [`MAX_PLAN_TENSORS`] | 2^20 | weight tensors of the whole plan |
//! | [`MAX_PARAMETERS`] | 2^50 | parameters of the whole plan |

use crate::error::{EngineError, Result};
use crate::graph::ir::Plan;
use crate::graph::spec::{AttentionSpec, ModelSpec, MoeSpec, TopkMethod};

/// Largest width of any hidden, intermediate, low-rank or per-head dimension.
pub const MAX_WIDTH: usize = 1 << 20;
/// Largest vocabulary.
pub const MAX_VOCAB: usize = 1 << 24;
/// Largest number of attention (or key/value) heads.
pub const MAX_HEADS: usize = 1 << 16;
/// Largest number of decoder layers.
pub const MAX_LAYERS: usize = 1 << 16;
/// Largest number of routed (or shared) experts per layer.
pub const MAX_EXPERTS: usize = 1 << 16;
/// Largest number of weight tensors a plan may read (DeepSeek-V3 reads about 45 000).
pub const MAX_PLAN_TENSORS: u64 = 1 << 20;
/// Largest number of parameters a plan may hold (DeepSeek-V3 holds about 2^39.3).
pub const MAX_PARAMETERS: u64 = 1 << 50;

/// `field` must be in `min..=max`.
fn in_range(field: &str, v: usize, min: usize, max: usize) -> Result<()> {
    if v < min {
        Err(EngineError::spec(field, format!("must be at least {min}")))
    } else if v > max {
        Err(EngineError::spec(
            field,
            format!("{v} is above the limit of {max}"),
        ))
    } else {
        Ok(())
    }
}

/// `field` must be a finite number; `positive` also requires it to be > 0.
fn finite(field: &str, v: f64, positive: bool) -> Result<()> {
    if !v.is_finite() {
        Err(EngineError::spec(
            field,
            format!("must be a finite number, found {v}"),
        ))
    } else if positive && v <= 0.0 {
        Err(EngineError::spec(field, format!("must be > 0, found {v}")))
    } else {
        Ok(())
    }
}

impl ModelSpec {
    /// Checks ranges, limits, finiteness and divisibility; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        self.check_dimensions()?;
        self.check_floats()?;
        self.check_attention()?;
        if let Some(m) = &self.moe {
            self.check_moe(m)?;
        }
        self.check_token_ids()?;
        self.check_totals()
    }

    /// Every size is at least 1 where a kernel needs it and below its limit.
    fn check_dimensions(&self) -> Result<()> {
        if self.dtype == crate::dtype::DType::I8 {
            return Err(EngineError::spec(
                "dtype",
                "i8 is the storage of quantised weights, not a model dtype: keep bf16 (or f32) \
                 and quantise with a [quantize] table or --quantize int8",
            ));
        }
        in_range("model.vocab_size", self.vocab_size, 1, MAX_VOCAB)?;
        in_range("model.hidden_size", self.hidden_size, 1, MAX_WIDTH)?;
        in_range(
            "model.num_hidden_layers",
            self.num_hidden_layers,
            1,
            MAX_LAYERS,
        )?;
        in_range(
            "model.num_attention_heads",
            self.num_attention_heads,
            1,
            MAX_HEADS,
        )?;
        in_range(
            "model.max_position_embeddings",
            self.max_position_embeddings,
            1,
            usize::MAX,
        )?;
        in_range(
            "model.num_nextn_predict_layers",
            self.num_nextn_predict_layers,
            0,
            MAX_LAYERS,
        )?;
        // A dense MLP runs in every layer without MoE, and in the first_k_dense_replace layers.
        let dense_layers = match &self.moe {
            Some(m) => m.first_k_dense_replace > 0,
            None => true,
        };
        let min_intermediate = usize::from(dense_layers);
        in_range(
            "model.intermediate_size",
            self.intermediate_size,
            min_intermediate,
            MAX_WIDTH,
        )?;
        match &self.attention {
            AttentionSpec::Mla {
                q_lora_rank,
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
            } => {
                if let Some(r) = q_lora_rank {
                    in_range("model.attention.q_lora_rank", *r, 1, MAX_WIDTH)?;
                }
                in_range("model.attention.kv_lora_rank", *kv_lora_rank, 1, MAX_WIDTH)?;
                in_range(
                    "model.attention.qk_nope_head_dim",
                    *qk_nope_head_dim,
                    1,
                    MAX_WIDTH,
                )?;
                in_range(
                    "model.attention.qk_rope_head_dim",
                    *qk_rope_head_dim,
                    2,
                    MAX_WIDTH,
                )?;
                in_range("model.attention.v_head_dim", *v_head_dim, 1, MAX_WIDTH)?;
            }
            AttentionSpec::Gqa {
                num_key_value_heads,
                head_dim,
                sliding_window,
            } => {
                in_range(
                    "model.attention.num_key_value_heads",
                    *num_key_value_heads,
                    1,
                    MAX_HEADS,
                )?;
                in_range("model.attention.head_dim", *head_dim, 2, MAX_WIDTH)?;
                if let Some(w) = sliding_window {
                    in_range("model.attention.sliding_window", *w, 1, usize::MAX)?;
                }
            }
        }
        if let Some(y) = &self.rope.yarn {
            in_range(
                "model.rope.yarn.original_max_position_embeddings",
                y.original_max_position_embeddings,
                1,
                usize::MAX,
            )?;
        }
        if let Some(m) = &self.moe {
            in_range(
                "model.moe.n_routed_experts",
                m.n_routed_experts,
                1,
                MAX_EXPERTS,
            )?;
            in_range(
                "model.moe.moe_intermediate_size",
                m.moe_intermediate_size,
                1,
                MAX_WIDTH,
            )?;
            in_range(
                "model.moe.n_shared_experts",
                m.n_shared_experts,
                0,
                MAX_EXPERTS,
            )?;
            // The shared experts run as one MLP of n_shared × moe_intermediate width.
            let shared = m.n_shared_experts.saturating_mul(m.moe_intermediate_size);
            if shared > MAX_WIDTH {
                return Err(EngineError::spec(
                    "model.moe.n_shared_experts",
                    format!(
                        "{} shared experts of width {} make a {shared}-wide MLP, above the limit of {MAX_WIDTH}",
                        m.n_shared_experts, m.moe_intermediate_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every float is finite (TOML accepts `nan` and `inf`), and positive where it divides.
    fn check_floats(&self) -> Result<()> {
        finite("model.rms_norm_eps", self.rms_norm_eps, true)?;
        if (self.rms_norm_eps as f32) <= 0.0 {
            return Err(EngineError::spec(
                "model.rms_norm_eps",
                format!("{} rounds to 0 in f32", self.rms_norm_eps),
            ));
        }
        finite("model.rope.theta", self.rope.theta, true)?;
        if let Some(y) = &self.rope.yarn {
            finite("model.rope.yarn.factor", y.factor, true)?;
            finite("model.rope.yarn.beta_fast", y.beta_fast, true)?;
            finite("model.rope.yarn.beta_slow", y.beta_slow, true)?;
            finite("model.rope.yarn.mscale", y.mscale, false)?;
            finite("model.rope.yarn.mscale_all_dim", y.mscale_all_dim, false)?;
            if let Some(a) = y.attention_factor {
                finite("model.rope.yarn.attention_factor", a, false)?;
            }
            if self.rope.theta <= 1.0 {
                return Err(EngineError::spec(
                    "model.rope.theta",
                    "must be > 1 with YaRN (its ramp divides by ln(theta))",
                ));
            }
        }
        if let Some(m) = &self.moe {
            finite(
                "model.moe.routed_scaling_factor",
                m.routed_scaling_factor,
                false,
            )?;
        }
        Ok(())
    }

    /// Head geometry the attention kernels rely on.
    fn check_attention(&self) -> Result<()> {
        match &self.attention {
            AttentionSpec::Mla {
                qk_rope_head_dim, ..
            } => {
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
                ..
            } => {
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
                        "must be even (rope rotates pairs)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Expert groups and counts the routers rely on.
    fn check_moe(&self, m: &MoeSpec) -> Result<()> {
        in_range("model.moe.n_group", m.n_group, 1, m.n_routed_experts)?;
        in_range(
            "model.moe.num_experts_per_tok",
            m.num_experts_per_tok,
            1,
            m.n_routed_experts,
        )?;
        if m.n_routed_experts % m.n_group != 0 {
            return Err(EngineError::spec(
                "model.moe.n_group",
                format!(
                    "{} experts do not split into {} groups",
                    m.n_routed_experts, m.n_group
                ),
            ));
        }
        in_range("model.moe.topk_group", m.topk_group, 1, m.n_group)?;
        let per_group = m.n_routed_experts / m.n_group;
        if m.topk_method == TopkMethod::NoauxTc && per_group < 2 && m.n_group > 1 {
            return Err(EngineError::spec(
                "model.moe.n_group",
                "noaux_tc scores a group by its top-2, so each group needs at least 2 experts",
            ));
        }
        if m.topk_method != TopkMethod::Greedy && m.num_experts_per_tok > m.topk_group * per_group {
            return Err(EngineError::spec(
                "model.moe.num_experts_per_tok",
                "more experts per token than the kept groups hold",
            ));
        }
        in_range(
            "model.moe.first_k_dense_replace",
            m.first_k_dense_replace,
            0,
            self.num_hidden_layers,
        )
    }

    /// BOS and EOS must be tokens of the vocabulary.
    fn check_token_ids(&self) -> Result<()> {
        for (field, id) in [
            ("model.bos_token_id", self.bos_token_id),
            ("model.eos_token_id", self.eos_token_id),
        ] {
            if let Some(id) = id {
                if id as usize >= self.vocab_size {
                    return Err(EngineError::spec(
                        field,
                        format!(
                            "token {id} is outside the vocabulary of {} tokens",
                            self.vocab_size
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What the whole plan implies, counted without building it.
    fn check_totals(&self) -> Result<()> {
        let totals = Plan::totals(self)?;
        if totals.tensors > MAX_PLAN_TENSORS {
            let field = if self.moe.is_some() {
                "model.moe.n_routed_experts"
            } else {
                "model.num_hidden_layers"
            };
            return Err(EngineError::spec(
                field,
                format!(
                    "the model would read {} weight tensors ({} layers), above the limit of {MAX_PLAN_TENSORS}",
                    totals.tensors, self.num_hidden_layers
                ),
            ));
        }
        if totals.params > MAX_PARAMETERS {
            return Err(EngineError::spec(
                "model",
                format!(
                    "the model would hold {} parameters, above the limit of {MAX_PARAMETERS} (2^50)",
                    totals.params
                ),
            ));
        }
        Ok(())
    }
}
