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
