//! The loaded model: typed decoder layers holding their weights, plus the steps a forward pass
//! is made of (embed, attention block, feed-forward norm, dense FFN block, MoE plan/combine in
//! `ffn.rs`, head) and the non-finite check of each step's output. The reference executor runs
//! these steps in order; the actor runtime runs the same steps in different actors, which is why
//! they are public and side-effect free (except caches) — no executor writes a step itself.
//! Every step is backend ops on handles (`DeviceTensor`): activations stay where the backend
//! keeps them, and the non-finite checks are `Backend::check_finite`.

pub mod attention;
pub mod ffn;
pub mod kv;
#[cfg(test)]
mod kv_tests;
mod load;
pub mod prefix_cache;
#[cfg(test)]
mod prefix_cache_tests;

pub use attention::{Attention, AttnSeq, ChunkKind, MlaForm};
pub use ffn::{DispatchPlan, FeedForward, Mlp, MoeBlock, MoePlan};
pub use kv::{KvConfig, KvPool, KvPools, LayerCache, SequenceCache};
pub use load::{collect_weights, collect_weights_where, random_tensor, Keep, Progress};
pub use prefix_cache::PrefixCacheStats;

use crate::backend::Backend;
use crate::device_tensor::DeviceTensor;
use crate::error::{EngineError, PassSite, Result};
use crate::graph::ir::Plan;
use crate::graph::spec::ModelSpec;
use crate::kernels::rope::RopeTable;
use crate::weights::Weight;

/// The projections of one input (`Backend::linears`), one output per weight, as an array.
pub(crate) fn projections<const N: usize>(
    be: &dyn Backend,
    x: &DeviceTensor,
    weights: [&Weight; N],
) -> Result<[DeviceTensor; N]> {
    be.linears(x, &weights)?
        .try_into()
        .map_err(|_| EngineError::internal("linears: not one output per weight"))
}

/// One decoder layer: `h = x + attn(norm1(x)); out = h + ffn(norm2(h))`.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// HF layer index.
    pub index: usize,
    pub input_norm: Weight,
    pub attention: Attention,
    pub post_norm: Weight,
    pub ffn: FeedForward,
}

/// A model ready to run.
#[derive(Clone, Debug)]
pub struct Model {
    pub spec: ModelSpec,
    pub plan: Plan,
    pub rope: RopeTable,
    pub embed: Weight,
    pub layers: Vec<DecoderLayer>,
    pub norm: Weight,
    pub lm_head: Weight,
}

impl Model {
    pub fn eps(&self) -> f32 {
        self.spec.rms_norm_eps as f32
    }

    /// The KV pools of every layer on `be`, with `config` (see `KvConfig::default_for`).
    pub fn kv_pools(&self, be: &dyn Backend, config: KvConfig) -> Result<KvPools> {
        KvPools::new(self, be, config)
    }

    /// Token embeddings `[ids.len(), hidden]` (checked finite).
    pub fn embed(&self, be: &dyn Backend, ids: &[u32]) -> Result<DeviceTensor> {
        let x = be.embedding(&self.embed, ids)?;
        be.check_finite(&x, PassSite::Embedding)?;
        Ok(x)
    }

    /// Final norm + LM head over hidden rows (the logits, checked finite).
    pub fn head(&self, be: &dyn Backend, h: &DeviceTensor) -> Result<DeviceTensor> {
        let logits = be.linear(&be.rms_norm(h, &self.norm, self.eps())?, &self.lm_head)?;
        be.check_finite(&logits, PassSite::Head)?;
        Ok(logits)
    }
}

impl DecoderLayer {
    /// `x + attention(input_norm(x))` for one sequence chunk of `kind` (writes the chunk into
    /// `cache`; `form` with `kind` picks MLA's form).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_block(
        &self,
        be: &dyn Backend,
        x: &DeviceTensor,
        cache: &mut LayerCache,
        rope: &RopeTable,
        eps: f32,
        form: MlaForm,
        kind: ChunkKind,
    ) -> Result<DeviceTensor> {
        let xn = be.rms_norm(x, &self.input_norm, eps)?;
        let absorbed = form.absorbed_for(kind);
        let h = self.attention.forward(be, &xn, cache, rope, absorbed)?;
        be.add(&h, x)
    }

    /// [`Self::attention_block`] over the chunks of several sequences at once: `x` holds each
    /// chunk's rows at its range (in order), with its cache and kind. The norm, the projections
    /// and the residual run once over all rows; each row's bits are those it has alone.
    pub fn attention_blocks(
        &self,
        be: &dyn Backend,
        x: &DeviceTensor,
        chunks: &mut [(std::ops::Range<usize>, &mut LayerCache, ChunkKind)],
        rope: &RopeTable,
        eps: f32,
        form: MlaForm,
    ) -> Result<DeviceTensor> {
        let xn = be.rms_norm(x, &self.input_norm, eps)?;
        let mut seqs: Vec<AttnSeq<'_>> = chunks
            .iter_mut()
            .map(|(rows, cache, kind)| AttnSeq {
                rows: rows.clone(),
                cache: &mut **cache,
                absorbed: form.absorbed_for(*kind),
            })
            .collect();
        let h = self.attention.forward_many(be, &xn, &mut seqs, rope)?;
        be.add(&h, x)
    }

    /// `post_norm(h)`: the input of the feed-forward part (router, experts, dense MLP).
    pub fn ffn_norm(&self, be: &dyn Backend, h: &DeviceTensor, eps: f32) -> Result<DeviceTensor> {
        be.rms_norm(h, &self.post_norm, eps)
    }

    /// `h + mlp(post_norm(h))`, the feed-forward half of a dense layer (an internal error on an
    /// MoE layer: callers dispatch on `ffn`).
    pub fn dense_ffn_block(
        &self,
        be: &dyn Backend,
        h: &DeviceTensor,
        eps: f32,
    ) -> Result<DeviceTensor> {
        let FeedForward::Dense(mlp) = &self.ffn else {
            return Err(EngineError::internal(format!(
                "layer {}: dense FFN block asked of an MoE layer",
                self.index
            )));
        };
        let out = mlp.forward(be, &self.ffn_norm(be, h, eps)?)?;
        be.add(&out, h)
    }

    /// The MoE block of this layer (an internal error on a dense layer).
    pub fn moe(&self) -> Result<&MoeBlock> {
        match &self.ffn {
            FeedForward::Moe(m) => Ok(m),
            FeedForward::Dense(_) => Err(EngineError::internal(format!(
                "layer {} has no experts",
                self.index
            ))),
        }
    }

    /// Checks this layer's output rows (its residual stream out) for NaN and infinity.
    pub fn check_output(&self, be: &dyn Backend, out: &DeviceTensor) -> Result<()> {
        be.check_finite(out, PassSite::Layer(self.index))
    }
}
