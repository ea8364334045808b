//! Attention blocks: MLA (DeepSeek; with or without q-LoRA; naive and absorbed forms over the same
//! latent cache) and GQA/MQA (Llama, Mixtral; optional sliding window).

use crate::backend::{AttentionParams, Backend, RopeSlot};
use crate::error::Result;
use crate::model::cache::{KvCache, LatentKvCache, LayerCache};
use crate::params::RopeTable;
use crate::tensor::Tensor;
use crate::weights::Weight;

/// Which of the two equivalent MLA computations to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MlaForm {
    /// Expand K/V per head from the latent cache (`kv_b_proj`), then ordinary attention.
    Naive,
    /// Fold `kv_b_proj` into the query and the output; attend over the latent directly.
    Absorbed,
    /// Naive for multi-token chunks (prefill), absorbed for single-token decode.
    #[default]
    Auto,
}

/// MLA query path.
#[derive(Clone, Debug)]
pub enum MlaQuery {
    Lora { a: Weight, norm: Weight, b: Weight },
    Full(Weight),
}

/// DeepSeek multi-head latent attention.
#[derive(Clone, Debug)]
pub struct MlaAttention {
    pub heads: usize,
    pub nope: usize,
    pub rope: usize,
    pub v_dim: usize,
    pub kv_lora: usize,
    pub eps: f32,
    pub scale: f32,
    pub query: MlaQuery,
    pub kv_a: Weight,
    pub kv_norm: Weight,
    pub kv_b: Weight,
    pub o: Weight,
    /// Absorbed form: per head, `W_uk[h]^T` as an `[kv_lora, nope]` weight.
    pub uk_t: Vec<Weight>,
    /// Absorbed form: per head, `W_uv[h]` as a `[v, kv_lora]` weight.
    pub uv: Vec<Weight>,
}

/// Grouped-query attention.
#[derive(Clone, Debug)]
pub struct GqaAttention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub sliding_window: Option<usize>,
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub o: Weight,
}

#[derive(Clone, Debug)]
pub enum Attention {
    Mla(MlaAttention),
    Gqa(GqaAttention),
}

impl Attention {
    /// An empty cache for this block.
    pub fn new_cache(&self) -> LayerCache {
        match self {
            Attention::Mla(m) => LayerCache::Latent(LatentKvCache {
                kv_lora: m.kv_lora,
                rope: m.rope,
                ..Default::default()
            }),
            Attention::Gqa(g) => LayerCache::Kv(KvCache {
                k_width: g.kv_heads * g.head_dim,
                v_width: g.kv_heads * g.head_dim,
                ..Default::default()
            }),
        }
    }

    /// Attention over one sequence chunk: `x` `[t, hidden]` (already normalised) at positions
    /// `cache.len()..cache.len()+t`; appends to the cache and returns `[t, hidden]`.
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        cache: &mut LayerCache,
        rope: &RopeTable,
        form: MlaForm,
    ) -> Result<Tensor> {
        let start = cache.len();
        let positions: Vec<usize> = (start..start + x.rows()).collect();
        match (self, cache) {
            (Attention::Mla(m), LayerCache::Latent(c)) => {
                m.forward(be, x, &positions, c, rope, form)
            }
            (Attention::Gqa(g), LayerCache::Kv(c)) => g.forward(be, x, &positions, c, rope),
            _ => Err(crate::error::EngineError::internal(
                "attention block given the wrong cache kind",
            )),
        }
    }
}

/// Columns `[c0, c1)` of every row.
fn columns(t: &Tensor, c0: usize, c1: usize) -> Tensor {
    let mut out = Vec::with_capacity(t.rows() * (c1 - c0));
    for r in 0..t.rows() {
        out.extend_from_slice(&t.row(r)[c0..c1]);
    }
    Tensor::from_flat(c1 - c0, out)
}

impl MlaAttention {
    fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        positions: &[usize],
        cache: &mut LatentKvCache,
        rope: &RopeTable,
        form: MlaForm,
    ) -> Result<Tensor> {
        let qk = self.nope + self.rope;
        let mut q = match &self.query {
            MlaQuery::Lora { a, norm, b } => {
                let qa = be.linear(x, a)?;
                be.linear(&be.rms_norm(&qa, norm, self.eps)?, b)?
            }
            MlaQuery::Full(w) => be.linear(x, w)?,
        };
        be.rope(
            &mut q,
            RopeSlot {
                heads: self.heads,
                head_stride: qk,
                offset: self.nope,
            },
            positions,
            rope,
        )?;
        let kv = be.linear(x, &self.kv_a)?;
        let latent = be.rms_norm(&columns(&kv, 0, self.kv_lora), &self.kv_norm, self.eps)?;
        let mut rope_key = columns(&kv, self.kv_lora, self.kv_lora + self.rope);
        be.rope(
            &mut rope_key,
            RopeSlot {
                heads: 1,
                head_stride: self.rope,
                offset: 0,
            },
            positions,
            rope,
        )?;
        cache.append(&latent, &rope_key);
        let absorbed = match form {
            MlaForm::Naive => false,
            MlaForm::Absorbed => true,
            MlaForm::Auto => x.rows() == 1,
        };
        let q_start = positions[0];
        let attn = if absorbed {
            self.absorbed(be, &q, cache, q_start)?
        } else {
            self.naive(be, &q, cache, q_start)?
        };
        be.linear(&attn, &self.o)
    }

    /// Expands every cached latent to per-head keys and values.
    fn naive(
        &self,
        be: &dyn Backend,
        q: &Tensor,
        cache: &LatentKvCache,
        q_start: usize,
    ) -> Result<Tensor> {
        let qk = self.nope + self.rope;
        let kvb = be.linear(&cache.latent_tensor(), &self.kv_b)?; // [tk, heads*(nope+v)]
        let tk = kvb.rows();
        let per = self.nope + self.v_dim;
        let mut k = Vec::with_capacity(tk * self.heads * qk);
        let mut v = Vec::with_capacity(tk * self.heads * self.v_dim);
        for j in 0..tk {
            let row = kvb.row(j);
            let kr = &cache.rope_key[j * self.rope..(j + 1) * self.rope];
            for h in 0..self.heads {
                k.extend_from_slice(&row[h * per..h * per + self.nope]);
                k.extend_from_slice(kr);
                v.extend_from_slice(&row[h * per + self.nope..(h + 1) * per]);
            }
        }
        let p = AttentionParams {
            heads: self.heads,
            kv_heads: self.heads,
            qk_dim: qk,
            v_dim: self.v_dim,
            scale: self.scale,
            q_start,
            sliding_window: None,
        };
        be.attention(
            q,
            &Tensor::from_flat(self.heads * qk, k),
            &Tensor::from_flat(self.heads * self.v_dim, v),
            &p,
        )
    }

    /// Attends in the latent space: MQA with one kv head `[latent | rope_key]`, values = latent.
    fn absorbed(
        &self,
        be: &dyn Backend,
        q: &Tensor,
        cache: &LatentKvCache,
        q_start: usize,
    ) -> Result<Tensor> {
        let qk = self.nope + self.rope;
        let t = q.rows();
        let width = self.kv_lora + self.rope;
        let mut qa = vec![0.0f32; t * self.heads * width];
        for h in 0..self.heads {
            let q_lat = be.linear(&columns(q, h * qk, h * qk + self.nope), &self.uk_t[h])?;
            for i in 0..t {
                let dst = &mut qa[(i * self.heads + h) * width..(i * self.heads + h + 1) * width];
                dst[..self.kv_lora].copy_from_slice(q_lat.row(i));
                dst[self.kv_lora..].copy_from_slice(&q.row(i)[h * qk + self.nope..(h + 1) * qk]);
            }
        }
        let tk = cache.len();
        let mut k = Vec::with_capacity(tk * width);
        for j in 0..tk {
            k.extend_from_slice(&cache.latent[j * self.kv_lora..(j + 1) * self.kv_lora]);
            k.extend_from_slice(&cache.rope_key[j * self.rope..(j + 1) * self.rope]);
        }
        let p = AttentionParams {
            heads: self.heads,
            kv_heads: 1,
            qk_dim: width,
            v_dim: self.kv_lora,
            scale: self.scale,
            q_start,
            sliding_window: None,
        };
        let o_lat = be.attention(
            &Tensor::from_flat(self.heads * width, qa),
            &Tensor::from_flat(width, k),
            &cache.latent_tensor(),
            &p,
        )?;
        let mut out = vec![0.0f32; t * self.heads * self.v_dim];
        for h in 0..self.heads {
            let oh = be.linear(
                &columns(&o_lat, h * self.kv_lora, (h + 1) * self.kv_lora),
                &self.uv[h],
            )?;
            for i in 0..t {
                out[(i * self.heads + h) * self.v_dim..(i * self.heads + h + 1) * self.v_dim]
                    .copy_from_slice(oh.row(i));
            }
        }
        Ok(Tensor::from_flat(self.heads * self.v_dim, out))
    }
}

impl GqaAttention {
    fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        positions: &[usize],
        cache: &mut KvCache,
        rope: &RopeTable,
    ) -> Result<Tensor> {
        let mut q = be.linear(x, &self.q)?;
        let mut k = be.linear(x, &self.k)?;
        let v = be.linear(x, &self.v)?;
        be.rope(
            &mut q,
            RopeSlot {
                heads: self.heads,
                head_stride: self.head_dim,
                offset: 0,
            },
            positions,
            rope,
        )?;
        be.rope(
            &mut k,
            RopeSlot {
                heads: self.kv_heads,
                head_stride: self.head_dim,
                offset: 0,
            },
            positions,
            rope,
        )?;
        cache.append(&k, &v);
        let p = AttentionParams {
            heads: self.heads,
            kv_heads: self.kv_heads,
            qk_dim: self.head_dim,
            v_dim: self.head_dim,
            scale: self.scale,
            q_start: positions[0],
            sliding_window: self.sliding_window,
        };
        let kt = Tensor::from_flat(cache.k_width, cache.k.clone());
        let vt = Tensor::from_flat(cache.v_width, cache.v.clone());
        let attn = be.attention(&q, &kt, &vt, &p)?;
        be.linear(&attn, &self.o)
    }
}
