//! Building a [`Model`] from a [`LoadedGraph`]: open the weights (mmap or seeded random), check
//! every tensor the plan reads against its expected shape before the first token, then assemble
//! the typed layers. FP8 (`F8_E4M3`) checkpoint weights stay FP8 when the model's dtype is
//! `f8e4m3` (an HF folder with an fp8 `quantization_config`) and are dequantised at load to the
//! model's dtype otherwise (`--dequantize bf16`, or `dtype = "bf16"` in a graph file); random
//! weights of an `f8e4m3` graph are FP8 where DeepSeek's checkpoints are, bf16 elsewhere. The
//! weights a graph's quantisation policy names (`[quantize]`, `--quantize int8`) are then
//! quantised to int8 (`weights::int8`) as they are loaded.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::backend::RouterRule;
use crate::dtype::DType;
use crate::error::{EngineError, Result};
use crate::graph::file::{LoadedGraph, RandomWeights, WeightsSource};
use crate::graph::ir::{NodeKind, Plan, WeightRole, WeightSpec};
use crate::graph::spec::{AttentionSpec, ModelSpec};
use crate::model::attention::{Attention, GqaAttention, MlaAttention, MlaQuery};
use crate::model::ffn::{FeedForward, Mlp, MoeBlock, Router};
use crate::model::{DecoderLayer, Model};
use crate::params::RopeTable;
use crate::weights::fp8::{dequantize, fp8_weight_names, BlockScales, FP8_BLOCK};
use crate::weights::int8::quantize_weight;
use crate::weights::random::{random_weight, RandomInit};
use crate::weights::{Checkpoint, Weight};

/// Called as `progress(done, total)` while tensors are opened or generated.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Which of the plan's tensors (by name) this process loads; the rest become absent.
pub type Keep<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// The dtype of the random tensor `s` in a graph of dtype `dtype` (`fp8`: the plan's FP8
/// weight names): the V3 correction bias stays f32, as in real checkpoints; an FP8 model keeps
/// its embeddings, norms, router and head in bf16.
fn random_dtype(dtype: DType, fp8: &HashSet<String>, s: &WeightSpec) -> DType {
    if s.role == WeightRole::Bias {
        DType::F32
    } else if dtype == DType::F8E4M3 && !fp8.contains(&s.name) {
        DType::BF16
    } else {
        dtype
    }
}

/// The seeded random tensor `s` of a graph of dtype `dtype` (`fp8`: the plan's FP8 weight names).
pub fn random_tensor(
    r: &RandomWeights,
    dtype: DType,
    fp8: &HashSet<String>,
    s: &WeightSpec,
) -> Result<Weight> {
    let init = match s.role {
        WeightRole::Matrix => RandomInit::Normal(r.std),
        WeightRole::NormGain => RandomInit::Ones,
        WeightRole::Bias => RandomInit::Zeros,
    };
    let dt = random_dtype(dtype, fp8, s);
    random_weight(&s.name, s.shape.clone(), dt, init, r.seed)
}

/// Fetches every tensor of the plan, shape-checked (also what `troupe export-hf` writes out).
pub fn collect_weights(
    graph: &LoadedGraph,
    plan: &Plan,
    progress: Progress,
) -> Result<HashMap<String, Weight>> {
    collect_weights_where(graph, plan, &|_| true, progress)
}

/// [`collect_weights`] for the tensors `keep` accepts; the others are [`Weight::absent`]. A
/// checkpoint's tensors are all looked up and shape-checked alike (so a missing or misshapen
/// tensor is the same error on every rank), but only kept ones are dequantised; random ones
/// are generated only when kept.
pub fn collect_weights_where(
    graph: &LoadedGraph,
    plan: &Plan,
    keep: Keep,
    progress: Progress,
) -> Result<HashMap<String, Weight>> {
    let specs = plan.weight_specs();
    let total = specs.len();
    let mut out = HashMap::with_capacity(total);
    let int8: HashSet<String> = match &graph.quantize {
        Some(policy) => policy.weight_names(plan),
        None => HashSet::new(),
    };
    match &graph.weights {
        WeightsSource::Random(r) => {
            let dtype = graph.spec.dtype;
            let fp8 = fp8_weight_names(plan);
            let chunk = 64;
            for (i, part) in specs.chunks(chunk).enumerate() {
                let made: Vec<Weight> = part
                    .par_iter()
                    .map(|s| match (keep(&s.name), int8.contains(&s.name)) {
                        (true, false) => random_tensor(r, dtype, &fp8, s),
                        (true, true) => quantize_weight(&random_tensor(r, dtype, &fp8, s)?),
                        (false, q) => Ok(Weight::absent(
                            &s.name,
                            if q {
                                DType::I8
                            } else {
                                random_dtype(dtype, &fp8, s)
                            },
                            s.shape.clone(),
                        )),
                    })
                    .collect::<Result<_>>()?;
                for w in made {
                    out.insert(w.name().to_string(), w);
                }
                progress((i * chunk + part.len()).min(total), total);
            }
        }
        src => {
            let ck = match src {
                WeightsSource::HfDir(d) => Checkpoint::open_dir(d)?,
                WeightsSource::Files(f) => Checkpoint::open_files(f)?,
                WeightsSource::Index(i) => Checkpoint::open_index(i)?,
                WeightsSource::Random(_) => {
                    return Err(EngineError::internal(
                        "random weights reached the checkpoint path",
                    ))
                }
            };
            for (i, s) in specs.iter().enumerate() {
                let mut w = ck.get(&s.name)?;
                if w.shape() != s.shape.as_slice() {
                    return Err(EngineError::ShapeMismatch {
                        tensor: s.name.clone(),
                        expected: s.shape.clone(),
                        found: w.shape().to_vec(),
                    });
                }
                let dequantise = w.dtype() == DType::F8E4M3 && graph.spec.dtype != DType::F8E4M3;
                let quantise = int8.contains(&s.name);
                if !keep(&s.name) {
                    let dtype = if quantise {
                        DType::I8
                    } else if dequantise {
                        graph.spec.dtype
                    } else {
                        w.dtype()
                    };
                    w = Weight::absent(&s.name, dtype, s.shape.clone());
                } else {
                    if dequantise {
                        w = dequantize(&w, graph.spec.dtype)?;
                    }
                    if quantise {
                        w = quantize_weight(&w)?;
                    }
                }
                out.insert(s.name.clone(), w);
                if i % 16 == 0 || i + 1 == total {
                    progress(i + 1, total);
                }
            }
        }
    }
    Ok(out)
}

struct Take<'a>(&'a HashMap<String, Weight>);

impl Take<'_> {
    fn get(&self, name: &str) -> Result<Weight> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::MissingTensor {
                tensor: name.into(),
                searched: "the compiled plan".into(),
            })
    }
    fn mlp(&self, names: &[crate::graph::ir::WeightSpec]) -> Result<Mlp> {
        Ok(Mlp {
            gate: self.get(&names[0].name)?,
            up: self.get(&names[1].name)?,
            down: self.get(&names[2].name)?,
        })
    }
}

/// Splits `kv_b_proj` (`[heads*(nope+v), kv_lora]`) into the absorbed form's per-head matrices:
/// `uk_t[h]` (`W_uk[h]` transposed, `[kv_lora, nope]`) and `uv[h]` (`[v, kv_lora]`). They keep
/// the checkpoint's element type where that is exact, so decode reads no more bytes than the
/// naive form's weight: bf16 stays bf16 (f32 compute upcasts exactly, in the one dot order, so
/// the results are those of f32 copies); FP8 stays FP8 with its block scales when each head's
/// rows sit inside 128-row scale blocks (DeepSeek-V3's and ds-v3-mini's shapes); int8 `uv`
/// stays int8 (its rows are kv_b's, with their scales) and int8 `uk_t` becomes f32; anything
/// else is upcast to f32.
fn absorb(
    kv_b: &Weight,
    heads: usize,
    nope: usize,
    v: usize,
    kv_lora: usize,
) -> Result<(Vec<Weight>, Vec<Weight>)> {
    if !kv_b.is_loaded() {
        let absent = |what: &str, shape: [usize; 2]| {
            (0..heads)
                .map(|h| {
                    Weight::absent(
                        &format!("{}#{what}{h}", kv_b.name()),
                        DType::F32,
                        shape.to_vec(),
                    )
                })
                .collect()
        };
        return Ok((absent("uk_t", [kv_lora, nope]), absent("uv", [v, kv_lora])));
    }
    let per = nope + v;
    let name = |what: &str, h: usize| format!("{}#{what}{h}", kv_b.name());
    // Head `h`'s W_uk transposed (`[kv_lora, nope]`) and W_uv (`[v, kv_lora]`) from kv_b's
    // elements `flat` (row-major, any element type).
    fn split<T: Copy + Default>(flat: &[T], h: usize, dims: [usize; 3]) -> (Vec<T>, Vec<T>) {
        let [nope, v, kv_lora] = dims;
        let row = |r: usize| &flat[r * kv_lora..(r + 1) * kv_lora];
        let first = h * (nope + v);
        let mut t = vec![T::default(); kv_lora * nope];
        for n in 0..nope {
            for (c, &x) in row(first + n).iter().enumerate() {
                t[c * nope + n] = x;
            }
        }
        let vv = (0..v)
            .flat_map(|r| row(first + nope + r).iter().copied())
            .collect();
        (t, vv)
    }
    let dims = [nope, v, kv_lora];
    let mut uk_t = Vec::with_capacity(heads);
    let mut uv = Vec::with_capacity(heads);
    match kv_b.dtype() {
        DType::BF16 => {
            let bits = kv_b.as_u16()?;
            for h in 0..heads {
                let (t, vv) = split(bits, h, dims);
                uk_t.push(Weight::from_u16(
                    &name("uk_t", h),
                    DType::BF16,
                    vec![kv_lora, nope],
                    &t,
                ));
                uv.push(Weight::from_u16(
                    &name("uv", h),
                    DType::BF16,
                    vec![v, kv_lora],
                    &vv,
                ));
            }
        }
        DType::F8E4M3 if fp8_heads_fit_blocks(heads, per, nope, v) => {
            let (bytes, scales) = (
                kv_b.as_u8()?,
                kv_b.block_scales().ok_or_else(|| {
                    EngineError::internal(format!(
                        "FP8 tensor `{}` has no block scales",
                        kv_b.name()
                    ))
                })?,
            );
            let grid = |rows: usize, cols: usize, at: &dyn Fn(usize, usize) -> f32| {
                let (gr, gc) = (rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK));
                let vals: Vec<f32> = (0..gr * gc)
                    .map(|i| at(i / gc * FP8_BLOCK, i % gc * FP8_BLOCK))
                    .collect();
                (vec![gr, gc], vals)
            };
            for h in 0..heads {
                let (t, vv) = split(bytes, h, dims);
                // uk_t[h] at (c, n) is kv_b at (h·per + n, c): its scale is that block's.
                let (gs, g) = grid(kv_lora, nope, &|c, n| scales.scale(h * per + n, c));
                let sk = Weight::from_f32(&name("uk_t_scale_inv", h), gs, &g);
                uk_t.push(
                    Weight::from_bytes(&name("uk_t", h), DType::F8E4M3, vec![kv_lora, nope], &t)?
                        .with_block_scales(BlockScales::new(sk))?,
                );
                let (gs, g) = grid(v, kv_lora, &|r, c| scales.scale(h * per + nope + r, c));
                let sv = Weight::from_f32(&name("uv_scale_inv", h), gs, &g);
                uv.push(
                    Weight::from_bytes(&name("uv", h), DType::F8E4M3, vec![v, kv_lora], &vv)?
                        .with_block_scales(BlockScales::new(sv))?,
                );
            }
        }
        DType::I8 => {
            // uv[h] is kv_b's rows h·per + nope.. with their own scales: int8 as it is. uk_t[h]
            // is transposed, across scale blocks: f32 values of the dequantised elements.
            let (q, scales) = (
                kv_b.as_i8()?,
                kv_b.block_scales().ok_or_else(|| {
                    EngineError::internal(format!("i8 tensor `{}` has no scales", kv_b.name()))
                })?,
            );
            let grid = scales.scale_inv.as_f32()?;
            let gc = scales.scale_inv.cols();
            let values = dequantize(kv_b, DType::F32)?;
            let values = values.as_f32()?;
            for h in 0..heads {
                let (t, _) = split(values, h, dims);
                uk_t.push(Weight::from_f32(&name("uk_t", h), vec![kv_lora, nope], &t));
                let rows = h * per + nope..h * per + nope + v;
                let bytes: Vec<u8> = q[rows.start * kv_lora..rows.end * kv_lora]
                    .iter()
                    .map(|&b| b as u8)
                    .collect();
                let s = &grid[rows.start * gc..rows.end * gc];
                let s = Weight::from_f32(&name("uv_scale_inv", h), vec![v, gc], s);
                uv.push(
                    Weight::from_bytes(&name("uv", h), DType::I8, vec![v, kv_lora], &bytes)?
                        .with_block_scales(BlockScales::for_dtype(DType::I8, s)?)?,
                );
            }
        }
        _ => {
            let values: Vec<f32> = (0..kv_b.rows()).flat_map(|r| kv_b.row_f32(r)).collect();
            for h in 0..heads {
                let (t, vv) = split(&values, h, dims);
                uk_t.push(Weight::from_f32(&name("uk_t", h), vec![kv_lora, nope], &t));
                uv.push(Weight::from_f32(&name("uv", h), vec![v, kv_lora], &vv));
            }
        }
    }
    Ok((uk_t, uv))
}

/// Whether every 128-wide block of a head's W_uk rows (its `nope` input columns once
/// transposed) and of its W_uv rows lies inside one 128-row scale block of `kv_b`, so the
/// per-head matrices are FP8 block-scaled weights themselves.
fn fp8_heads_fit_blocks(heads: usize, per: usize, nope: usize, v: usize) -> bool {
    let one_block = |first: usize, len: usize| {
        (0..len.div_ceil(FP8_BLOCK)).all(|b| {
            let lo = first + b * FP8_BLOCK;
            let hi = first + ((b + 1) * FP8_BLOCK).min(len) - 1;
            lo / FP8_BLOCK == hi / FP8_BLOCK
        })
    };
    (0..heads).all(|h| one_block(h * per, nope) && one_block(h * per + nope, v))
}

fn attention(
    spec: &ModelSpec,
    ws: &[crate::graph::ir::WeightSpec],
    take: &Take,
) -> Result<Attention> {
    let eps = spec.rms_norm_eps as f32;
    let scale = spec.softmax_scale() as f32;
    match &spec.attention {
        AttentionSpec::Mla {
            q_lora_rank,
            kv_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
        } => {
            let (query, rest) = match q_lora_rank {
                Some(_) => (
                    MlaQuery::Lora {
                        a: take.get(&ws[0].name)?,
                        norm: take.get(&ws[1].name)?,
                        b: take.get(&ws[2].name)?,
                    },
                    &ws[3..],
                ),
                None => (MlaQuery::Full(take.get(&ws[0].name)?), &ws[1..]),
            };
            let kv_b = take.get(&rest[2].name)?;
            let (uk_t, uv) = absorb(
                &kv_b,
                spec.num_attention_heads,
                *qk_nope_head_dim,
                *v_head_dim,
                *kv_lora_rank,
            )?;
            Ok(Attention::Mla(MlaAttention {
                heads: spec.num_attention_heads,
                nope: *qk_nope_head_dim,
                rope: *qk_rope_head_dim,
                v_dim: *v_head_dim,
                kv_lora: *kv_lora_rank,
                eps,
                scale,
                query,
                kv_a: take.get(&rest[0].name)?,
                kv_norm: take.get(&rest[1].name)?,
                kv_b,
                o: take.get(&rest[3].name)?,
                uk_t,
                uv,
            }))
        }
        AttentionSpec::Gqa {
            num_key_value_heads,
            head_dim,
            sliding_window,
        } => Ok(Attention::Gqa(GqaAttention {
            heads: spec.num_attention_heads,
            kv_heads: *num_key_value_heads,
            head_dim: *head_dim,
            scale,
            sliding_window: *sliding_window,
            q: take.get(&ws[0].name)?,
            k: take.get(&ws[1].name)?,
            v: take.get(&ws[2].name)?,
            o: take.get(&ws[3].name)?,
        })),
    }
}

fn moe(spec: &ModelSpec, ws: &[crate::graph::ir::WeightSpec], take: &Take) -> Result<MoeBlock> {
    let m = spec.moe.as_ref().ok_or_else(|| {
        EngineError::internal("the plan has an MoE layer but the spec no [model.moe]")
    })?;
    let gate = take.get(&ws[0].name)?;
    let (bias, mut i) = if ws.get(1).is_some_and(|w| w.role == WeightRole::Bias) {
        (Some(take.get(&ws[1].name)?), 2)
    } else {
        (None, 1)
    };
    let mut experts = Vec::with_capacity(m.n_routed_experts);
    for _ in 0..m.n_routed_experts {
        experts.push(take.mlp(&ws[i..i + 3])?);
        i += 3;
    }
    let shared = if i < ws.len() {
        Some(take.mlp(&ws[i..i + 3])?)
    } else {
        None
    };
    Ok(MoeBlock {
        router: Router {
            gate,
            bias,
            rule: RouterRule {
                n_experts: m.n_routed_experts,
                top_k: m.num_experts_per_tok,
                n_group: m.n_group,
                topk_group: m.topk_group,
                scoring: m.scoring,
                method: m.topk_method,
                norm_topk_prob: m.norm_topk_prob,
                routed_scaling_factor: m.routed_scaling_factor as f32,
            },
        },
        experts,
        shared,
    })
}

impl Model {
    /// Loads a model; `progress` is told how many tensors are ready.
    pub fn load(graph: &LoadedGraph, progress: Progress) -> Result<Model> {
        Model::load_where(graph, &|_| true, progress)
    }

    /// Loads the tensors `keep` accepts (a rank's share of a deployment); the others are
    /// [`Weight::absent`], and a kernel reading one fails naming it.
    pub fn load_where(graph: &LoadedGraph, keep: Keep, progress: Progress) -> Result<Model> {
        graph.spec.validate()?;
        let plan = Plan::compile(&graph.spec);
        let weights = collect_weights_where(graph, &plan, keep, progress)?;
        let take = Take(&weights);
        let spec = &graph.spec;
        let mut embed = None;
        let mut norm = None;
        let mut lm_head = None;
        let mut layers: Vec<DecoderLayer> = Vec::with_capacity(spec.num_hidden_layers);
        let mut pending: (Option<Weight>, Option<Attention>, Option<Weight>) = (None, None, None);
        for node in &plan.nodes {
            match (&node.kind, node.role) {
                (NodeKind::Embedding, _) => embed = Some(take.get(&node.weights[0].name)?),
                (NodeKind::RmsNorm, "input_norm") => {
                    pending.0 = Some(take.get(&node.weights[0].name)?)
                }
                (NodeKind::RmsNorm, "post_norm") => {
                    pending.2 = Some(take.get(&node.weights[0].name)?)
                }
                (NodeKind::RmsNorm, _) => norm = Some(take.get(&node.weights[0].name)?),
                (NodeKind::MlaAttention | NodeKind::GqaAttention, _) => {
                    pending.1 = Some(attention(spec, &node.weights, &take)?)
                }
                (NodeKind::DenseMlp { .. } | NodeKind::Moe { .. }, _) => {
                    let ffn = match node.kind {
                        NodeKind::Moe { .. } => FeedForward::Moe(moe(spec, &node.weights, &take)?),
                        _ => FeedForward::Dense(take.mlp(&node.weights)?),
                    };
                    let (Some(input_norm), Some(attention), Some(post_norm)) =
                        (pending.0.take(), pending.1.take(), pending.2.take())
                    else {
                        return Err(EngineError::internal("plan out of order"));
                    };
                    layers.push(DecoderLayer {
                        index: layers.len(),
                        input_norm,
                        attention,
                        post_norm,
                        ffn,
                    });
                }
                (NodeKind::LmHead, _) => lm_head = Some(take.get(&node.weights[0].name)?),
            }
        }
        let rope_dim = spec.attention_dims().rope_dim;
        let (Some(embed), Some(norm), Some(lm_head)) = (embed, norm, lm_head) else {
            return Err(EngineError::internal(
                "plan lacks embedding, final norm or head",
            ));
        };
        Ok(Model {
            spec: spec.clone(),
            plan,
            rope: RopeTable::new(&spec.rope, rope_dim),
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}
