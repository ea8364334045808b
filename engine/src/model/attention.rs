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
        let rows = 0..x.rows();
        self.forward_many(
            be,
            x,
            &mut [AttnSeq {
                rows,
                cache,
                absorbed,
            }],
            rope,
        )
    }

    /// Attention over the chunks of several sequences at once: `x` `[Σ t, hidden]` holds each
    /// chunk's rows at its [`AttnSeq::rows`] (each chunk at positions `cache.len()..`, as in
    /// [`Self::forward`]). The projections run once over all rows and the cache writes and the
    /// attention itself per sequence; every kernel is row-wise with a fixed order, so each row
    /// has the bits it has alone. Returns `[Σ t, hidden]`, rows in `x`'s order.
    pub fn forward_many(
        &self,
        be: &dyn Backend,
        x: &DeviceTensor,
        seqs: &mut [AttnSeq<'_>],
        rope: &RopeTable,
    ) -> Result<DeviceTensor> {
        let mut next = 0;
        for s in seqs.iter_mut() {
            let layout = s.cache.store().layout;
            if layout != self.kv_layout(layout.page_tokens) {
                return Err(EngineError::internal(format!(
                    "attention block given a cache of layout {layout:?}"
                )));
            }
            if s.rows.start != next || s.rows.end < s.rows.start || s.rows.end > x.rows() {
                return Err(EngineError::internal(format!(
                    "attention: chunk rows {:?} do not tile {} rows in order",
                    s.rows,
                    x.rows()
                )));
            }
            next = s.rows.end;
            let start = s.cache.len();
            s.cache.reserve(start + s.rows.len())?;
        }
        if next != x.rows() {
            return Err(EngineError::internal(format!(
                "attention: chunks cover {next} of {} rows",
                x.rows()
            )));
        }
        let parts = Rows {
            be,
            whole: seqs.len() == 1,
        };
        match self {
            Attention::Mla(m) => m.forward_many(be, x, seqs, rope, parts),
            Attention::Gqa(g) => g.forward_many(be, x, seqs, rope, parts),
        }
    }
}

/// One sequence's chunk in [`Attention::forward_many`].
pub struct AttnSeq<'a> {
    /// Its rows of the call's input (chunks tile the input in order).
    pub rows: std::ops::Range<usize>,
    /// Its cache of this layer; the chunk's positions start at its length.
    pub cache: &'a mut LayerCache,
    /// MLA: run the absorbed form for this chunk.
    pub absorbed: bool,
}

/// Cuts a multi-sequence tensor into one sequence's rows (no copy when there is one sequence).
#[derive(Clone, Copy)]
struct Rows<'b> {
    be: &'b dyn Backend,
    whole: bool,
}

impl Rows<'_> {
    fn of(self, t: &DeviceTensor, rows: &std::ops::Range<usize>) -> Result<DeviceTensor> {
        match self.whole {
            true => Ok(t.clone()),
            false => self.be.slice_rows(t, rows.start, rows.end),
        }
    }

    /// `parts` (in row order) as one tensor.
    fn join(self, mut parts: Vec<DeviceTensor>) -> Result<DeviceTensor> {
        match parts.len() {
            1 => Ok(parts.remove(0)),
            _ => self.be.concat_rows(&parts),
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
    fn forward_many(
        &self,
        be: &dyn Backend,
        x: &DeviceTensor,
        seqs: &mut [AttnSeq<'_>],
        rope: &RopeTable,
        parts: Rows<'_>,
    ) -> Result<DeviceTensor> {
        let qk = self.nope + self.rope;
        // The query's first projection and the latent's read the same input: one call.
        let first = match &self.query {
            MlaQuery::Lora { a, .. } => a,
            MlaQuery::Full(w) => w,
        };
        let [q_first, kv] = super::projections(be, x, [first, &self.kv_a])?;
        let q_all = match &self.query {
            MlaQuery::Lora { norm, b, .. } => {
                be.linear(&be.rms_norm(&q_first, norm, self.eps)?, b)?
            }
            MlaQuery::Full(_) => q_first,
        };
        let width = self.kv_lora + self.rope;
        let latent_all = be.rms_norm(
            &be.head_columns(&kv, cols(1, width, 0, self.kv_lora))?,
            &self.kv_norm,
            self.eps,
        )?;
        let key_all = be.head_columns(&kv, cols(1, width, self.kv_lora, self.rope))?;
        // Per sequence: positions, rope, the cache write, the query's two parts.
        let mut queries = Vec::with_capacity(seqs.len());
        for s in seqs.iter_mut() {
            let start = s.cache.len();
            let q = be.rope(
                &parts.of(&q_all, &s.rows)?,
                RopeSlot {
                    heads: self.heads,
                    head_stride: qk,
                    offset: self.nope,
                },
                start,
                rope,
            )?;
            let rope_key = be.rope(
                &parts.of(&key_all, &s.rows)?,
                RopeSlot {
                    heads: 1,
                    head_stride: self.rope,
                    offset: 0,
                },
                start,
                rope,
            )?;
            be.kv_write(
                s.cache.store(),
                s.cache.table(),
                start,
                &parts.of(&latent_all, &s.rows)?,
                Some(&rope_key),
                None,
            )?;
            s.cache.set_len(start + s.rows.len())?;
            let q_nope = be.head_columns(&q, cols(self.heads, qk, 0, self.nope))?;
            let q_rope = be.head_columns(&q, cols(self.heads, qk, self.nope, self.rope))?;
            queries.push((start, q_nope, q_rope));
        }
        let mut attn: Vec<Option<DeviceTensor>> = vec![None; seqs.len()];
        for (i, s) in seqs.iter().enumerate().filter(|(_, s)| !s.absorbed) {
            let (start, q_nope, q_rope) = &queries[i];
            attn[i] = Some(self.naive(be, q_nope, q_rope, &*s.cache, *start)?);
        }
        self.absorbed_many(be, seqs, &queries, &mut attn)?;
        let attn = attn
            .into_iter()
            .map(|a| a.ok_or_else(|| EngineError::internal("attention: a chunk left unattended")))
            .collect::<Result<Vec<_>>>()?;
        be.linear(&parts.join(attn)?, &self.o)
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
    /// output. The folds run once over the rows of every absorbed chunk (`queries[i]`: chunk
    /// `i`'s start and query parts), the attention per chunk; results land in `attn[i]`.
    fn absorbed_many(
        &self,
        be: &dyn Backend,
        seqs: &[AttnSeq<'_>],
        queries: &[(usize, DeviceTensor, DeviceTensor)],
        attn: &mut [Option<DeviceTensor>],
    ) -> Result<()> {
        let mine: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].absorbed).collect();
        if mine.is_empty() {
            return Ok(());
        }
        let parts = Rows {
            be,
            whole: mine.len() == 1,
        };
        let mut spans = Vec::with_capacity(mine.len());
        let mut at = 0;
        for &i in &mine {
            spans.push(at..at + seqs[i].rows.len());
            at += seqs[i].rows.len();
        }
        let q_nope = parts.join(mine.iter().map(|&i| queries[i].1.clone()).collect())?;
        let q_lat = be.per_head_linear(&q_nope, &self.uk_t)?;
        let mut o_lat = Vec::with_capacity(mine.len());
        for (&i, span) in mine.iter().zip(&spans) {
            let (start, _, q_rope) = &queries[i];
            let p = AttentionParams {
                heads: self.heads,
                kv_heads: 1,
                d1: self.kv_lora,
                d2: self.rope,
                v_dim: self.kv_lora,
                scale: self.scale,
                q_start: *start,
                sliding_window: None,
            };
            let cache = &*seqs[i].cache;
            o_lat.push(be.paged_attention(
                &parts.of(&q_lat, span)?,
                Some(q_rope),
                cache.store(),
                cache.table(),
                cache.len(),
                &p,
            )?);
        }
        let out = be.per_head_linear(&parts.join(o_lat)?, &self.uv)?;
        for (&i, span) in mine.iter().zip(&spans) {
            attn[i] = Some(parts.of(&out, span)?);
        }
        Ok(())
    }
}

impl GqaAttention {
    fn forward_many(
        &self,
        be: &dyn Backend,
        x: &DeviceTensor,
        seqs: &mut [AttnSeq<'_>],
        rope: &RopeTable,
        parts: Rows<'_>,
    ) -> Result<DeviceTensor> {
        let slot = |heads| RopeSlot {
            heads,
            head_stride: self.head_dim,
            offset: 0,
        };
        let [q_all, k_all, v_all] = super::projections(be, x, [&self.q, &self.k, &self.v])?;
        let mut attn = Vec::with_capacity(seqs.len());
        for s in seqs.iter_mut() {
            let start = s.cache.len();
            let q = be.rope(&parts.of(&q_all, &s.rows)?, slot(self.heads), start, rope)?;
            let k = be.rope(
                &parts.of(&k_all, &s.rows)?,
                slot(self.kv_heads),
                start,
                rope,
            )?;
            let v = parts.of(&v_all, &s.rows)?;
            be.kv_write(s.cache.store(), s.cache.table(), start, &k, None, Some(&v))?;
            s.cache.set_len(start + s.rows.len())?;
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
            let cache = &*s.cache;
            attn.push(be.paged_attention(
                &q,
                None,
                cache.store(),
                cache.table(),
                cache.len(),
                &p,
            )?);
        }
        be.linear(&parts.join(attn)?, &self.o)
    }
}
