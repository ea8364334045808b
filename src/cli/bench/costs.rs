//! What a decoded token's attention costs at a depth at least, as the engine's
//! `kernels::attention_cost` counts it per layer: reading the cache (its bytes ÷ the measured
//! read bandwidth) and computing over it (its FLOPs ÷ the measured FMA rate); the measurements
//! are the engine's too (`measure_read_bandwidth`, `measure_fma_rate`, on the compute pool). The
//! larger of the two is the floor the depth criterion compares against.

use troupe_engine::backend::AttentionParams;
use troupe_engine::graph::spec::AttentionSpec;
use troupe_engine::kernels::attention_cost::attention_cost;
use troupe_engine::model::kv::DEFAULT_PAGE_TOKENS;
use troupe_engine::model::Model;

pub use troupe_engine::kernels::attention_cost::{measure_fma_rate, measure_read_bandwidth};

/// What one decoded token's attention over `depth` cached positions reads and computes, all
/// layers together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DepthCost {
    /// Cache bytes read (as stored: f32 rows of `[latent | rope key]`, or `[k | v]`; a sliding
    /// window's positions only).
    pub cache_bytes: u64,
    /// FLOPs of scores and weighted values (2 per multiply-add) in the form decode runs:
    /// absorbed MLA attends in latent space (one kv head of `kv_lora + rope` keys whose values
    /// are the latent), GQA over its heads.
    pub flops: u64,
}

impl DepthCost {
    pub fn of(model: &Model, depth: usize) -> DepthCost {
        let spec = &model.spec;
        let d = spec.attention_dims();
        let p = match &spec.attention {
            AttentionSpec::Mla {
                kv_lora_rank,
                qk_rope_head_dim,
                ..
            } => decode_params(
                d.heads,
                1,
                *kv_lora_rank,
                *qk_rope_head_dim,
                *kv_lora_rank,
                None,
            ),
            AttentionSpec::Gqa {
                num_key_value_heads,
                head_dim,
                sliding_window,
            } => decode_params(
                d.heads,
                *num_key_value_heads,
                *head_dim,
                0,
                *head_dim,
                *sliding_window,
            ),
        };
        let mut total = DepthCost {
            cache_bytes: 0,
            flops: 0,
        };
        for layer in &model.layers {
            // The `depth` cached positions a decode step attends over beyond those of the same
            // step at depth 0 (what the extra time per token is compared with).
            let layout = layer.attention.kv_layout(DEFAULT_PAGE_TOKENS);
            let (bytes, flops) = attention_cost(&layout, depth, &p);
            total.cache_bytes += bytes;
            total.flops += flops;
        }
        total
    }
    /// Seconds to read the cache at `gbps`.
    pub fn read_seconds(&self, gbps: f64) -> f64 {
        self.cache_bytes as f64 / (gbps * 1e9)
    }
    /// Seconds to compute at `gflops`.
    pub fn compute_seconds(&self, gflops: f64) -> f64 {
        self.flops as f64 / (gflops * 1e9)
    }
}

/// A decode step's attention parameters (one query row; the scale does not enter the cost).
fn decode_params(
    heads: usize,
    kv_heads: usize,
    d1: usize,
    d2: usize,
    v_dim: usize,
    sliding_window: Option<usize>,
) -> AttentionParams {
    AttentionParams {
        heads,
        kv_heads,
        d1,
        d2,
        v_dim,
        scale: 1.0,
        q_start: 0,
        sliding_window,
    }
}
