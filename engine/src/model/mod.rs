//! The loaded model: typed decoder layers holding their weights, plus the steps a forward pass
//! is made of (embed, attention block, feed-forward norm, dense FFN block, MoE plan/combine in
//! `ffn.rs`, head) and the non-finite check of each step's output. The reference executor runs
//! these steps in order; the actor runtime runs the same steps in different actors, which is why
//! they are public and side-effect free (except caches) — no executor writes a step itself.

pub mod attention;
pub mod cache;
pub mod ffn;
mod load;

pub use attention::{Attention, MlaForm};
pub use cache::{LayerCache, SequenceCache};
pub use ffn::{DispatchPlan, FeedForward, Mlp, MoeBlock, MoePlan};
pub use load::Progress;

use crate::backend::Backend;
use crate::error::{EngineError, PassSite, Result};
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

    /// Token embeddings `[ids.len(), hidden]` (checked finite).
    pub fn embed(&self, be: &dyn Backend, ids: &[u32]) -> Result<Tensor> {
        let x = be.embedding(&self.embed, ids)?;
        ensure_finite(&x, PassSite::Embedding)?;
        Ok(x)
    }

    /// Final norm + LM head over hidden rows (the logits, checked finite).
    pub fn head(&self, be: &dyn Backend, h: &Tensor) -> Result<Tensor> {
        let logits = be.linear(&be.rms_norm(h, &self.norm, self.eps())?, &self.lm_head)?;
        ensure_finite(&logits, PassSite::Head)?;
        Ok(logits)
    }
}

/// Fails with [`EngineError::NonFinite`] naming `at` (and the first offending row) when `t`
/// holds a NaN or an infinity. One pass over the data, branch-free per block so it vectorises;
/// finite data is left untouched.
pub fn ensure_finite(t: &Tensor, at: PassSite) -> Result<()> {
    const BLOCK: usize = 256;
    let data = t.data();
    let clean = data
        .chunks(BLOCK)
        .all(|b| b.iter().fold(true, |ok, v| ok & v.is_finite()));
    if clean {
        return Ok(());
    }
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(EngineError::NonFinite {
            layer: at,
            row: i / t.cols().max(1),
            value: data[i],
        }),
        None => Ok(()),
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

    /// `post_norm(h)`: the input of the feed-forward part (router, experts, dense MLP).
    pub fn ffn_norm(&self, be: &dyn Backend, h: &Tensor, eps: f32) -> Result<Tensor> {
        be.rms_norm(h, &self.post_norm, eps)
    }

    /// `h + mlp(post_norm(h))`, the feed-forward half of a dense layer (an internal error on an
    /// MoE layer: callers dispatch on `ffn`).
    pub fn dense_ffn_block(&self, be: &dyn Backend, h: &Tensor, eps: f32) -> Result<Tensor> {
        let FeedForward::Dense(mlp) = &self.ffn else {
            return Err(EngineError::internal(format!(
                "layer {}: dense FFN block asked of an MoE layer",
                self.index
            )));
        };
        let mut out = mlp.forward(be, &self.ffn_norm(be, h, eps)?)?;
        out.add_assign(h)?;
        Ok(out)
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
    pub fn check_output(&self, out: &Tensor) -> Result<()> {
        ensure_finite(out, PassSite::Layer(self.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_finite_names_the_step_and_the_first_bad_row() {
        let ok = Tensor::from_flat(3, vec![1.0, -2.0, 0.0, 1e30, -1e-30, f32::MAX]);
        assert!(ensure_finite(&ok, PassSite::Layer(2)).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut v = vec![0.5f32; 3 * 300];
            v[3 * 200 + 1] = bad;
            v[3 * 250] = bad;
            match ensure_finite(&Tensor::from_flat(3, v), PassSite::Layer(2)) {
                Err(e @ EngineError::NonFinite { .. }) => {
                    let EngineError::NonFinite { layer, row, value } = &e else {
                        unreachable!()
                    };
                    assert_eq!((*layer, *row), (PassSite::Layer(2), 200));
                    assert_eq!(value.to_bits(), bad.to_bits());
                    assert!(e.to_string().contains("decoder layer 2"), "{e}");
                }
                other => panic!("{bad}: expected a non-finite error, got {other:?}"),
            }
        }
        let e = ensure_finite(&Tensor::from_flat(1, vec![f32::NAN]), PassSite::Head).unwrap_err();
        assert!(e.to_string().contains("the LM head"), "{e}");
    }
}
