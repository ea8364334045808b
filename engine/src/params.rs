//! Plain parameter types of the op set, shared by the model spec (which fills them), the
//! [`crate::backend::Backend`] trait (which takes them) and the kernels (which apply them): the rope
//! frequency table and the routing rule. Nothing here depends on another module of the crate, so
//! types flow downward: spec → params ← backend ← kernels.

use serde::{Deserialize, Serialize};

/// How rope pairs up the elements it rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RopeLayout {
    /// Pairs `(x[2i], x[2i+1])` (DeepSeek `rope_interleave`, V2's complex form).
    Interleaved,
    /// Pairs `(x[i], x[i + d/2])` (Llama/Mixtral `rotate_half`).
    HalfSplit,
}

/// Per-model rope constants: `inv_freq[i]` for pair `i`, and YaRN's factor on cos/sin.
/// Built from a `RopeSpec` by `RopeTable::new` (in `graph::rope`).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    pub inv_freq: Vec<f32>,
    pub attention_factor: f32,
    pub layout: RopeLayout,
}

impl RopeTable {
    /// The rotated width.
    pub fn dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// `(cos, sin)` of pair `i` at `pos`, scaled by the attention factor.
    #[inline]
    pub fn cos_sin(&self, pos: usize, i: usize) -> (f32, f32) {
        let angle = pos as f32 * self.inv_freq[i];
        (
            angle.cos() * self.attention_factor,
            angle.sin() * self.attention_factor,
        )
    }
}

/// How the router turns logits into scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    Softmax,
    Sigmoid,
}

/// How the router picks experts from scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopkMethod {
    /// Plain top-k over all experts.
    Greedy,
    /// DeepSeek-V2: groups scored by their max, top `topk_group` groups kept.
    GroupLimitedGreedy,
    /// DeepSeek-V3: scores + correction bias, groups scored by the sum of their top-2.
    NoauxTc,
}

/// Which routing rule to apply (filled from `MoeSpec` when the model is loaded).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouterRule {
    pub n_experts: usize,
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub scoring: Scoring,
    pub method: TopkMethod,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}
