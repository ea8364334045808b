//! What each kernel of a step reads and computes, from the model description alone (the plan's
//! tensor shapes; no weights are loaded): per layer the attention, dense-MLP, router,
//! shared-expert and per-routed-expert parameter counts, and the work of the kernels the runtime
//! runs (`embed`, `attention`, `mlp`, `dispatch`, `shared`, an expert group, `combine`, `head`).
//! Routing is the expected value under uniform routing: a group holding `g` of `E` experts gets
//! `rows·k·g/E` slots, `rows·(1 − (1 − g/E)^k)` distinct rows and `g·(1 − (1 − k/E)^rows)`
//! active experts (each of whose weights is read once per kernel).

use troupe_engine::graph::ir::{NodeKind, Plan};
use troupe_engine::graph::spec::{AttentionSpec, ModelSpec};

/// Bytes read and FLOPs of one kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    pub bytes: f64,
    pub flops: f64,
}

/// A MoE layer's parameter counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeCost {
    pub experts: usize,
    pub top_k: usize,
    pub router_params: f64,
    pub shared_params: f64,
    /// Parameters of one routed expert.
    pub expert_params: f64,
}

/// One layer's parameter counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerCost {
    pub attention_params: f64,
    /// `None`: the layer is MoE.
    pub dense_params: Option<f64>,
    pub moe: Option<MoeCost>,
}

/// The model's costs (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCost {
    pub hidden: f64,
    pub layers: Vec<LayerCost>,
    pub head_params: f64,
    /// Bytes per weight parameter.
    pub weight_bytes: f64,
    /// Bytes per activation value in memory (f32).
    pub act_bytes: f64,
    /// Bytes of one cached position of one layer.
    pub kv_bytes_per_position: f64,
    /// Attention FLOPs per new row and cached position.
    pub attn_flops_per_ctx: f64,
}

fn numel(shape: &[usize]) -> f64 {
    shape.iter().map(|&d| d as f64).product()
}

impl ModelCost {
    /// Counts from `spec`; `weight_bytes` overrides the spec's dtype (a deployment's FP8), and
    /// `kv_value_bytes` is the KV cache's bytes per value.
    pub fn from_spec(spec: &ModelSpec, weight_bytes: Option<f64>, kv_value_bytes: f64) -> Self {
        let plan = Plan::compile(spec);
        let n_layers = spec.num_hidden_layers;
        let mut layers = vec![
            LayerCost {
                attention_params: 0.0,
                dense_params: None,
                moe: None,
            };
            n_layers
        ];
        let mut head_params = 0.0;
        for node in &plan.nodes {
            let matrices = node.weights.iter().filter(|w| w.shape.len() == 2);
            match (&node.kind, node.layer) {
                (NodeKind::MlaAttention | NodeKind::GqaAttention, Some(l)) if l < n_layers => {
                    layers[l].attention_params += matrices.map(|w| numel(&w.shape)).sum::<f64>();
                }
                (NodeKind::DenseMlp { .. }, Some(l)) if l < n_layers => {
                    layers[l].dense_params = Some(matrices.map(|w| numel(&w.shape)).sum());
                }
                (NodeKind::Moe { experts, top_k, .. }, Some(l)) if l < n_layers => {
                    let (mut routed, mut router, mut shared) = (0.0, 0.0, 0.0);
                    for w in matrices {
                        if w.name.contains(".experts.") {
                            routed += numel(&w.shape);
                        } else if w.name.contains(".shared_experts") {
                            shared += numel(&w.shape);
                        } else {
                            router += numel(&w.shape);
                        }
                    }
                    layers[l].moe = Some(MoeCost {
                        experts: *experts,
                        top_k: *top_k,
                        router_params: router,
                        shared_params: shared,
                        expert_params: routed / (*experts).max(1) as f64,
                    });
                }
                (NodeKind::LmHead, _) => {
                    head_params += matrices.map(|w| numel(&w.shape)).sum::<f64>();
                }
                _ => {}
            }
        }
        let d = spec.attention_dims();
        let kv_values = match &spec.attention {
            AttentionSpec::Mla {
                kv_lora_rank,
                qk_rope_head_dim,
                ..
            } => (kv_lora_rank + qk_rope_head_dim) as f64,
            AttentionSpec::Gqa { .. } => (d.kv_heads * (d.qk_dim + d.v_dim)) as f64,
        };
        ModelCost {
            hidden: spec.hidden_size as f64,
            layers,
            head_params,
            weight_bytes: weight_bytes.unwrap_or(spec.dtype.size() as f64),
            act_bytes: 4.0,
            kv_bytes_per_position: kv_values * kv_value_bytes,
            attn_flops_per_ctx: 2.0 * (d.heads * (d.qk_dim + d.v_dim)) as f64,
        }
    }

    /// Routed-expert count of each layer (`None`: dense), what placement resolution needs.
    pub fn layer_experts(&self) -> Vec<Option<usize>> {
        self.layers
            .iter()
            .map(|l| l.moe.map(|m| m.experts))
            .collect()
    }

    fn rows_io(&self, rows: f64, tensors: f64) -> f64 {
        rows * self.hidden * self.act_bytes * tensors
    }

    pub fn embed(&self, rows: f64) -> Work {
        Work {
            bytes: self.rows_io(rows, 2.0),
            flops: 0.0,
        }
    }

    /// Attention of layer `l` over `rows` new rows whose cached positions sum to `ctx_rows`
    /// (Σ over rows of the positions each attends to) and whose sequences' caches hold
    /// `ctx_positions` positions in all (each read once).
    pub fn attention(&self, l: usize, rows: f64, ctx_rows: f64, ctx_positions: f64) -> Work {
        let p = self.layers[l].attention_params;
        Work {
            bytes: p * self.weight_bytes
                + ctx_positions * self.kv_bytes_per_position
                + self.rows_io(rows, 3.0),
            flops: 2.0 * p * rows + self.attn_flops_per_ctx * ctx_rows,
        }
    }

    pub fn dense_mlp(&self, l: usize, rows: f64) -> Work {
        let p = self.layers[l].dense_params.unwrap_or(0.0);
        Work {
            bytes: p * self.weight_bytes + self.rows_io(rows, 3.0),
            flops: 2.0 * p * rows,
        }
    }

    /// Post-attention norm, the router's gate and top-k, and the gathers for groups apart.
    pub fn dispatch(&self, m: &MoeCost, rows: f64) -> Work {
        Work {
            bytes: m.router_params * self.weight_bytes + self.rows_io(rows, 3.0),
            flops: 2.0 * m.router_params * rows,
        }
    }

    pub fn shared(&self, m: &MoeCost, rows: f64) -> Work {
        Work {
            bytes: m.shared_params * self.weight_bytes + self.rows_io(rows, 2.0),
            flops: 2.0 * m.shared_params * rows,
        }
    }

    /// An expert group's kernel: `slots` (row, expert) pairs over `active` distinct experts.
    pub fn group(&self, m: &MoeCost, slots: f64, active: f64) -> Work {
        Work {
            bytes: active * m.expert_params * self.weight_bytes + self.rows_io(slots, 2.0),
            flops: 2.0 * m.expert_params * slots,
        }
    }

    pub fn combine(&self, m: &MoeCost, rows: f64) -> Work {
        Work {
            bytes: self.rows_io(rows, (m.top_k + 3) as f64),
            flops: 2.0 * rows * self.hidden * (m.top_k + 2) as f64,
        }
    }

    pub fn head(&self, rows: f64) -> Work {
        Work {
            bytes: self.head_params * self.weight_bytes + self.rows_io(rows, 2.0),
            flops: 2.0 * self.head_params * rows,
        }
    }
}

/// Expected routing of `rows` rows to a group holding `share` experts' worth of rows (an expert
/// with `r` replicas counts `1/r`) and `held` distinct experts, of `m.experts`, top `m.top_k`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupLoad {
    pub slots: f64,
    pub rows: f64,
    pub active: f64,
}

pub fn group_load(m: &MoeCost, rows: f64, share: f64, held: f64) -> GroupLoad {
    let e = m.experts.max(1) as f64;
    let k = m.top_k as f64;
    let frac = (share / e).clamp(0.0, 1.0);
    GroupLoad {
        slots: rows * k * frac,
        rows: rows * (1.0 - (1.0 - frac).powf(k)),
        active: held * (1.0 - (1.0 - (k / e).min(1.0)).powf(rows)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_engine::graph::file::LoadedGraph;

    fn graph(name: &str) -> LoadedGraph {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../graphs")
            .join(name);
        LoadedGraph::open(&path).unwrap()
    }

    #[test]
    fn deepseek_v3_counts_match_the_published_shape() {
        let c = ModelCost::from_spec(&graph("deepseek-v3-671b.toml").spec, None, 4.0);
        assert_eq!(c.layers.len(), 61);
        let moe = c.layers[3].moe.unwrap();
        assert_eq!((moe.experts, moe.top_k), (256, 8));
        // One routed expert: gate, up (7168 × 2048) and down (2048 × 7168).
        assert_eq!(moe.expert_params, 3.0 * 7168.0 * 2048.0);
        assert_eq!(moe.shared_params, 3.0 * 7168.0 * 2048.0);
        assert_eq!(moe.router_params, 256.0 * 7168.0);
        assert_eq!(c.layers[0].dense_params, Some(3.0 * 7168.0 * 18432.0));
        // Total parameters of the layers and head: ~671B less the MTP layer and embeddings.
        let total: f64 = c
            .layers
            .iter()
            .map(|l| {
                l.attention_params
                    + l.dense_params.unwrap_or(0.0)
                    + l.moe.map_or(0.0, |m| {
                        m.router_params + m.shared_params + m.expert_params * m.experts as f64
                    })
            })
            .sum::<f64>()
            + c.head_params;
        assert!((650e9..672e9).contains(&total), "{total}");
        assert_eq!(c.kv_bytes_per_position, 576.0 * 4.0);
    }

    #[test]
    fn uniform_routing_expectations() {
        let m = MoeCost {
            experts: 64,
            top_k: 6,
            router_params: 0.0,
            shared_params: 0.0,
            expert_params: 1.0,
        };
        let all = group_load(&m, 10.0, 64.0, 64.0);
        assert!((all.slots - 60.0).abs() < 1e-9 && (all.rows - 10.0).abs() < 1e-9);
        let one = group_load(&m, 1.0, 8.0, 8.0);
        // 8 of 64 experts hold 6·8/64 of the slots; one row activates 6/64 of each expert.
        assert!((one.slots - 0.75).abs() < 1e-9);
        assert!((one.active - 8.0 * 6.0 / 64.0).abs() < 1e-9);
    }
}
