//! `CpuBackend`: the `Backend` implemented by the CPU kernels of this module.

use crate::backend::{AttentionParams, Backend, RopeSlot, RouterRule, Routing};
use crate::error::Result;
use crate::kernels::{activation, attention, linear, norm, rope, router};
use crate::tensor::Tensor;
use crate::tokenizer::check_token_ids;
use crate::weights::Weight;

/// The CPU backend (AVX2+FMA when the processor has it, a portable path otherwise; both give the
/// same bits).
#[derive(Clone, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn embedding(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        let (vocab, dim) = (table.rows(), table.cols());
        check_token_ids(ids, vocab, 0)?;
        let mut out = Vec::with_capacity(ids.len() * dim);
        for &id in ids {
            out.extend(table.row_f32(id as usize));
        }
        Tensor::matrix(ids.len(), dim, out)
    }
    fn rms_norm(&self, x: &Tensor, weight: &Weight, eps: f32) -> Result<Tensor> {
        norm::rms_norm(x, weight, eps)
    }
    fn linear(&self, x: &Tensor, weight: &Weight) -> Result<Tensor> {
        linear::linear(x, weight)
    }
    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        activation::silu_mul(gate, up)
    }
    fn rope(
        &self,
        x: &mut Tensor,
        slot: RopeSlot,
        positions: &[usize],
        table: &rope::RopeTable,
    ) -> Result<()> {
        rope::apply_rope(x, slot, positions, table)
    }
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams) -> Result<Tensor> {
        attention::attention(q, k, v, p)
    }
    fn route(&self, logits: &Tensor, rule: &RouterRule, bias: Option<&[f32]>) -> Result<Routing> {
        router::route(logits, rule, bias)
    }
}
