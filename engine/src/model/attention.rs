//! Attention blocks: MLA (DeepSeek; with or without q-LoRA; naive and absorbed forms over the same
//! paged latent cache) and GQA/MQA (Llama, Mixtral; optional sliding window), as backend ops on
//! handles. Each chunk's new cache rows are written into the sequence's pages once
//! (`kv_write`); decode attends over the pages in place (`paged_attention`), so no step copies
//! or concatenates the cache. MLA's naive prefill reads the cache once per chunk (`kv_read`)
//! because it expands every cached latent to per-head keys and values anyway.

use crate::backend::{AttentionParams, Backend, HeadSlice, RopeSlot};
use crate::device_tensor::{DeviceTensor, KvLayout};
use crate::error::{EngineError, Result};
use crate::model::kv::LayerCache;
use crate::params::RopeTable;
use crate::weights::Weight;

/// Which of the two equivalent MLA computations to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MlaForm {
    /// Expand K/V per head from the latent cache (`kv_b_proj`), then ordinary attention.
    Naive,
    /// Fold `kv_b_proj` into the query and the output; attend over the latent directly.
    Absorbed,
    /// Naive for prompt chunks, absorbed for generated tokens ([`ChunkKind`]). The form of a
    /// position is thus fixed by what the position is, never by how the prompt was cut into
    /// chunks or how much of it came from a prefix cache, so the bits of every cache row and
    /// logit are too. (A rule by chunk length would give a 1-token prompt chunk the absorbed
    /// form and different bits.)
    #[default]
    Auto,
}

/// What a forward pass's chunk of one sequence is: prompt positions (all or part of the
/// prompt: prefill) or the one token a decode step feeds back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    Prompt,
    Generated,
}

impl MlaForm {
    /// Whether a chunk of `kind` runs the absorbed form.
    pub fn absorbed_for(self, kind: ChunkKind) -> bool {
        match self {
            MlaForm::Naive => false,
            MlaForm::Absorbed => true,
            MlaForm::Auto => kind == ChunkKind::Generated,
        }
    }
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
    /// The cache row layout of this block: MLA `[latent | rope key]` (values = the latent),
    /// GQA `[k | v]`.
    pub fn kv_layout(&self, page_tokens: usize) -> KvLayout {
        match self {
            Attention::Mla(m) => KvLayout {
                page_tokens,
                key_width: m.kv_lora,
                rope_width: m.rope,
                value_width: 0,
            },
            Attention::Gqa(g) => KvLayout {
                page_tokens,
                key_width: g.kv_heads * g.head_dim,
                rope_width: 0,
                value_width: g.kv_heads * g.head_dim,
            },
        }
    }

    /// Attention over one sequence chunk: `x` `[t, hidden]` (already normalised) at positions
    /// `cache.len()..cache.len()+t`; writes the chunk's rows into the cache (taking pages as
    /// needed: `KvCacheFull` when the pool has none) and returns `[t, hidden]`. MLA runs the
    /// absorbed form when `absorbed` (see [`MlaForm::absorbed_for`]).
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &DeviceTensor,
        cache: &mut LayerCache,
        rope: &RopeTable,
        absorbed: bool,
    ) -> Result<DeviceTensor> {
        let layout = cache.store().layout;
        if layout != self.kv_layout(layout.page_tokens) {
            return Err(EngineError::internal(format!(
                "attention block given a cache of layout {layout:?}"
            )));
        }
        let start = cache.len();
        cache.reserve(start + x.rows())?;
        match self {
            Attention::Mla(m) => m.forward(be, x, start, cache, rope, absorbed),
            Attention::Gqa(g) => g.forward(be, x, start, cache, rope),
        }
    }
}

/// Columns `[offset, offset + width)` of every one of `heads` heads of width `stride`.
fn cols(heads: usize, stride: usize, offset: usize, width: usize) -> HeadSlice {
    HeadSlice {
        heads,
        stride,
        offset,
        width,
    }
}

impl MlaAttention {
    fn forward(
        &self,
        be: &dyn Backend,
        x: &DeviceTensor,
        start: usize,
        cache: &mut LayerCache,
        rope: &RopeTable,
        absorbed: bool,
    ) -> Result<DeviceTensor> {
        let qk = self.nope + self.rope;
        let q = match &self.query {
            MlaQuery::Lora { a, norm, b } => {
                let qa = be.linear(x, a)?;
                be.linear(&be.rms_norm(&qa, norm, self.eps)?, b)?
            }
            MlaQuery::Full(w) => be.linear(x, w)?,
        };
        let q = be.rope(
            &q,
            RopeSlot {
                heads: self.heads,
                head_stride: qk,
                offset: self.nope,
            },
            start,
            rope,
        )?;
        let kv = be.linear(x, &self.kv_a)?;
        let width = self.kv_lora + self.rope;
        let latent = be.rms_norm(
            &be.head_columns(&kv, cols(1, width, 0, self.kv_lora))?,
            &self.kv_norm,
            self.eps,
        )?;
        let rope_key = be.rope(
            &be.head_columns(&kv, cols(1, width, self.kv_lora, self.rope))?,
            RopeSlot {
                heads: 1,
                head_stride: self.rope,
                offset: 0,
            },
            start,
            rope,
        )?;
        be.kv_write(
            cache.store(),
            cache.table(),
            start,
            &latent,
            Some(&rope_key),
            None,
        )?;
        cache.set_len(start + x.rows())?;
        let q_nope = be.head_columns(&q, cols(self.heads, qk, 0, self.nope))?;
        let q_rope = be.head_columns(&q, cols(self.heads, qk, self.nope, self.rope))?;
        let attn = if absorbed {
            self.absorbed(be, &q_nope, &q_rope, cache, start)?
        } else {
            self.naive(be, &q_nope, &q_rope, cache, start)?
        };
        be.linear(&attn, &self.o)
    }

    /// Expands every cached latent to per-head keys and values (one `kv_read` of the cache).
    fn naive(
        &self,
        be: &dyn Backend,
        q_nope: &DeviceTensor,
        q_rope: &DeviceTensor,
        cache: &LayerCache,
        q_start: usize,
    ) -> Result<DeviceTensor> {
        let width = self.kv_lora + self.rope;
        let cached = be.kv_read(cache.store(), cache.table(), cache.len())?;
        let latent = be.head_columns(&cached, cols(1, width, 0, self.kv_lora))?;
        let k_rope = be.head_columns(&cached, cols(1, width, self.kv_lora, self.rope))?;
        let kvb = be.linear(&latent, &self.kv_b)?; // [tk, heads*(nope+v)]
        let per = self.nope + self.v_dim;
        let k = be.head_columns(&kvb, cols(self.heads, per, 0, self.nope))?;
        let v = be.head_columns(&kvb, cols(self.heads, per, self.nope, self.v_dim))?;
        let p = AttentionParams {
            heads: self.heads,
            kv_heads: self.heads,
            d1: self.nope,
            d2: self.rope,
            v_dim: self.v_dim,
            scale: self.scale,
            q_start,
            sliding_window: None,
        };
        be.attention(q_nope, Some(q_rope), &k, Some(&k_rope), &v, &p)
    }

    /// Attends in the latent space over the pages in place: MQA with one kv head
    /// `[latent | rope_key]`, values = latent; `W_uk` folded into the query, `W_uv` into the
    /// output.
    fn absorbed(
        &self,
        be: &dyn Backend,
        q_nope: &DeviceTensor,
        q_rope: &DeviceTensor,
        cache: &LayerCache,
        q_start: usize,
    ) -> Result<DeviceTensor> {
        let q_lat = be.per_head_linear(q_nope, &self.uk_t)?;
        let p = AttentionParams {
            heads: self.heads,
            kv_heads: 1,
            d1: self.kv_lora,
            d2: self.rope,
            v_dim: self.kv_lora,
            scale: self.scale,
            q_start,
            sliding_window: None,
        };
        let o_lat = be.paged_attention(
            &q_lat,
            Some(q_rope),
            cache.store(),
            cache.table(),
            cache.len(),
            &p,
        )?;
        be.per_head_linear(&o_lat, &self.uv)
    }
}

impl GqaAttention {
    fn forward(
        &self,
        be: &dyn Backend,
        x: &DeviceTensor,
        start: usize,
        cache: &mut LayerCache,
        rope: &RopeTable,
    ) -> Result<DeviceTensor> {
        let slot = |heads| RopeSlot {
            heads,
            head_stride: self.head_dim,
            offset: 0,
        };
        let q = be.rope(&be.linear(x, &self.q)?, slot(self.heads), start, rope)?;
        let k = be.rope(&be.linear(x, &self.k)?, slot(self.kv_heads), start, rope)?;
        let v = be.linear(x, &self.v)?;
        be.kv_write(cache.store(), cache.table(), start, &k, None, Some(&v))?;
        cache.set_len(start + x.rows())?;
        let p = AttentionParams {
            heads: self.heads,
            kv_heads: self.kv_heads,
            d1: self.head_dim,
            d2: 0,
            v_dim: self.head_dim,
            scale: self.scale,
            q_start: start,
            sliding_window: self.sliding_window,
        };
        let attn = be.paged_attention(&q, None, cache.store(), cache.table(), cache.len(), &p)?;
        be.linear(&attn, &self.o)
    }
}
