//! The `Backend` trait: the ops an executor may call. Executors never call a CPU kernel directly;
//! they call a `Backend`, so the same executor runs on the CPU kernels, on a CUDA stream
//! (`troupe-ptx`) or on the PTX interpreter.
//!
//! Contract for every implementation:
//! - activations are f32 host tensors; weights may be f32/bf16/f16 and are upcast per element;
//! - **batch invariance**: row `r` of an output depends only on row `r` of the inputs (and, for
//!   attention, on that sequence's keys), with a reduction order that does not depend on the number
//!   of rows or on the thread count;
//! - errors, never panics, on shape mismatches.

use crate::error::Result;
pub use crate::params::{RopeTable, RouterRule};
use crate::tensor::Tensor;
use crate::weights::Weight;

/// One attention call over a single sequence.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub heads: usize,
    pub kv_heads: usize,
    /// Per-head width of q and k.
    pub qk_dim: usize,
    /// Per-head width of v (and of the output).
    pub v_dim: usize,
    pub scale: f32,
    /// Absolute position of query row 0; query row `i` sits at `q_start + i` and key row `j` at `j`.
    pub q_start: usize,
    /// Each query sees keys at positions `p` with `q_pos - window < p <= q_pos`, or all `p <= q_pos`.
    pub sliding_window: Option<usize>,
}

/// The layout of the rotated part inside each head of a `[rows, heads * head_stride]` tensor.
#[derive(Clone, Copy, Debug)]
pub struct RopeSlot {
    pub heads: usize,
    pub head_stride: usize,
    /// Offset of the rotated part inside a head.
    pub offset: usize,
}

/// The experts a router chose for each row: `ids[r]` ascending, `weights[r]` aligned with them.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub ids: Vec<Vec<u32>>,
    pub weights: Vec<Vec<f32>>,
}

/// The device-side operations of a forward pass.
pub trait Backend: Send + Sync {
    /// A short name for errors and traces (`cpu`, `cuda:0`, `ptx-interp`).
    fn name(&self) -> String;
    /// Rows of `table` (`[vocab, hidden]`) for each id → `[ids.len(), hidden]`.
    fn embedding(&self, table: &Weight, ids: &[u32]) -> Result<Tensor>;
    /// `x / rms(x) * weight` per row, rms over the last dim, in f32.
    fn rms_norm(&self, x: &Tensor, weight: &Weight, eps: f32) -> Result<Tensor>;
    /// `x @ weight^T`: `x` `[n, in]`, `weight` `[out, in]` → `[n, out]`.
    fn linear(&self, x: &Tensor, weight: &Weight) -> Result<Tensor>;
    /// `silu(gate) * up`, element-wise.
    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor>;
    /// Rotates the rope part of every head of every row in place; row `i` sits at `positions[i]`.
    fn rope(
        &self,
        x: &mut Tensor,
        slot: RopeSlot,
        positions: &[usize],
        table: &RopeTable,
    ) -> Result<()>;
    /// Causal attention of one sequence: `q` `[tq, heads*qk]`, `k` `[tk, kv_heads*qk]`,
    /// `v` `[tk, kv_heads*v_dim]` → `[tq, heads*v_dim]`. Softmax in f32.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams) -> Result<Tensor>;
    /// Applies a routing rule to raw router logits `[n, n_experts]`; `bias` is the V3
    /// `e_score_correction_bias`.
    fn route(&self, logits: &Tensor, rule: &RouterRule, bias: Option<&[f32]>) -> Result<Routing>;
}
