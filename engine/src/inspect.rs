//! `troupe inspect`: per layer and in total — parameters, active parameters per token, KV-cache
//! bytes per token (MLA latent vs. expanded K/V), and FLOPs per token (2 per multiply-add of the
//! weight matmuls, attention score/value work given separately per context position).

use crate::graph::ir::{NodeKind, Plan};
use crate::graph::spec::{AttentionSpec, ModelSpec};

/// Counts for one row of the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub params: u64,
    pub active_params: u64,
    /// KV-cache bytes per token and layer as troupe stores it (f32): MLA latent + rope key, or K+V.
    pub kv_bytes_latent: u64,
    /// The same if K and V were expanded per head (what naive MLA would cache).
    pub kv_bytes_expanded: u64,
    /// Matmul FLOPs per token.
    pub flops: u64,
    /// Extra attention FLOPs per token per position of context.
    pub attn_flops_per_ctx: u64,
}

impl std::ops::AddAssign<&Counts> for Counts {
    fn add_assign(&mut self, o: &Counts) {
        self.params += o.params;
        self.active_params += o.active_params;
        self.kv_bytes_latent += o.kv_bytes_latent;
        self.kv_bytes_expanded += o.kv_bytes_expanded;
        self.flops += o.flops;
        self.attn_flops_per_ctx += o.attn_flops_per_ctx;
    }
}

/// A labelled row (`layer 3 (moe)`, `embedding`, ...).
#[derive(Clone, Debug)]
pub struct Row {
    pub label: String,
    pub counts: Counts,
}

fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}

/// Per layer (plus embedding and head) rows and the total.
pub fn inspect(plan: &Plan) -> (Vec<Row>, Counts) {
    let spec: &ModelSpec = &plan.spec;
    let mut rows: Vec<Row> = Vec::new();
    let mut total = Counts::default();
    let bytes = 4u64; // troupe caches f32
    for node in &plan.nodes {
        let mut c = Counts::default();
        let p: u64 = node.weights.iter().map(|w| numel(&w.shape)).sum();
        c.params = p;
        match &node.kind {
            NodeKind::Embedding => c.active_params = spec.hidden_size as u64,
            NodeKind::Moe { experts, top_k, .. } => {
                // Router and shared experts run for every token; routed experts for top_k of them.
                let (routed, other) = node.weights.iter().fold((0u64, 0u64), |(r, o), w| {
                    if w.name.contains(".experts.") {
                        (r + numel(&w.shape), o)
                    } else {
                        (r, o + numel(&w.shape))
                    }
                });
                let routed_active = routed / *experts as u64 * *top_k as u64;
                let bias: u64 = node
                    .weights
                    .iter()
                    .filter(|w| w.shape.len() == 1)
                    .map(|w| numel(&w.shape))
                    .sum();
                c.active_params = other + routed_active;
                c.flops = 2 * (other - bias + routed_active);
            }
            _ => {
                c.active_params = p;
                c.flops = 2 * node
                    .weights
                    .iter()
                    .filter(|w| w.shape.len() == 2)
                    .map(|w| numel(&w.shape))
                    .sum::<u64>();
            }
        }
        if matches!(node.kind, NodeKind::Embedding) {
            c.flops = 0;
        }
        if matches!(node.kind, NodeKind::MlaAttention | NodeKind::GqaAttention) {
            let d = spec.attention_dims();
            match &spec.attention {
                AttentionSpec::Mla {
                    kv_lora_rank,
                    qk_rope_head_dim,
                    ..
                } => {
                    c.kv_bytes_latent = bytes * (kv_lora_rank + qk_rope_head_dim) as u64;
                    c.kv_bytes_expanded = bytes * (d.heads * (d.qk_dim + d.v_dim)) as u64;
                }
                AttentionSpec::Gqa { .. } => {
                    c.kv_bytes_latent = bytes * (d.kv_heads * (d.qk_dim + d.v_dim)) as u64;
                    c.kv_bytes_expanded = c.kv_bytes_latent;
                }
            }
            c.attn_flops_per_ctx = 2 * (d.heads * (d.qk_dim + d.v_dim)) as u64;
        }
        let label = match node.layer {
            Some(l) => format!("layer {l}"),
            None => node.role.to_string(),
        };
        total += &c;
        match rows.last_mut() {
            Some(r) if r.label == label => r.counts += &c,
            _ => rows.push(Row { label, counts: c }),
        }
    }
    for r in &mut rows {
        if let Some(l) = r
            .label
            .strip_prefix("layer ")
            .and_then(|s| s.parse::<usize>().ok())
        {
            r.label = format!(
                "layer {l} ({})",
                if spec.is_moe_layer(l) { "moe" } else { "dense" }
            );
        }
    }
    (rows, total)
}

/// Weight bytes of a plan as troupe holds them: the spec's dtype, except that an `f8e4m3` model
/// holds its linear weights as e4m3 (1 byte) plus one f32 scale per 128×128 block and the rest
/// (embeddings, norms, router, head) as bf16; the DeepSeek-V3 correction bias is always f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightBytes {
    pub total: u64,
    /// Bytes of e4m3 weights (one per parameter).
    pub fp8: u64,
    /// Bytes of their f32 block scales.
    pub scales: u64,
    /// Bytes read per token (routed experts counted for `top_k` of them).
    pub active: u64,
}

/// The [`WeightBytes`] of `plan`.
pub fn weight_bytes(plan: &Plan) -> WeightBytes {
    let spec = &plan.spec;
    let fp8 = spec.dtype == crate::dtype::DType::F8E4M3;
    let fp8_names = crate::weights::fp8::fp8_weight_names(plan);
    let mut out = WeightBytes::default();
    let mut seen = std::collections::HashSet::new();
    for node in &plan.nodes {
        let mut routed = 0u64;
        let mut other = 0u64;
        for w in node.weights.iter().filter(|w| seen.insert(w.name.as_str())) {
            let n = numel(&w.shape);
            let (own, scales) = if w.shape.len() == 1 && w.name.ends_with("_bias") {
                (4 * n, 0)
            } else if fp8 && fp8_names.contains(&w.name) {
                let blocks: u64 = w.shape.iter().map(|&d| d.div_ceil(128) as u64).product();
                (n, 4 * blocks)
            } else if fp8 {
                (2 * n, 0)
            } else {
                (spec.dtype.size() as u64 * n, 0)
            };
            if scales > 0 {
                out.fp8 += own;
                out.scales += scales;
            }
            out.total += own + scales;
            if w.name.contains(".experts.") {
                routed += own + scales;
            } else {
                other += own + scales;
            }
        }
        out.active += match &node.kind {
            NodeKind::Embedding => other / spec.vocab_size.max(1) as u64,
            NodeKind::Moe { experts, top_k, .. } => {
                other + routed / (*experts).max(1) as u64 * *top_k as u64
            }
            _ => other + routed,
        };
    }
    out
}
