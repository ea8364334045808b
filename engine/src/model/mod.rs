//! The loaded model: typed decoder layers holding their weights, plus the steps a forward pass
//! is made of. The reference executor runs these steps in order; the actor runtime runs the same
//! steps in different actors, which is why they are public and side-effect free (except caches).

pub mod attention;
pub mod cache;
pub mod ffn;
mod load;

pub use attention::{Attention, MlaForm};
pub use cache::{LayerCache, SequenceCache};
pub use ffn::{DispatchPlan, FeedForward, Mlp, MoeBlock};
pub use load::Progress;

use crate::backend::Backend;
use crate::error::Result;
use crate::graph::ir::Plan;
use crate::graph::spec::ModelSpec;
use crate::kernels::rope::RopeTable;
use crate::tensor::Tensor;
use crate::weights::Weight;

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

    /// An empty cache for one sequence.
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache {
            layers: self
                .layers
                .iter()
                .map(|l| l.attention.new_cache())
                .collect(),
        }
    }

    /// Token embeddings `[ids.len(), hidden]`.
    pub fn embed(&self, be: &dyn Backend, ids: &[u32]) -> Result<Tensor> {
        be.embedding(&self.embed, ids)
    }

    /// Final norm + LM head over hidden rows.
    pub fn head(&self, be: &dyn Backend, h: &Tensor) -> Result<Tensor> {
        be.linear(&be.rms_norm(h, &self.norm, self.eps())?, &self.lm_head)
    }
}

impl DecoderLayer {
    /// `x + attention(input_norm(x))` for one sequence chunk.
    pub fn attention_block(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        cache: &mut LayerCache,
        rope: &RopeTable,
        eps: f32,
        form: MlaForm,
    ) -> Result<Tensor> {
        let xn = be.rms_norm(x, &self.input_norm, eps)?;
        let mut h = self.attention.forward(be, &xn, cache, rope, form)?;
        h.add_assign(x)?;
        Ok(h)
    }
}
