//! Causal multi-head attention of one sequence over keys and values given as tensors (GQA/MQA/MHA,
//! optional sliding window, an optional rope key part shared by all kv heads as in MLA). Naive MLA
//! prefill (keys expanded per head) runs here; the cache-reading form is `paged_attention`. Both
//! run `attention_core`'s algorithm, so they agree bit for bit on the same keys.

use crate::backend::AttentionParams;
use crate::error::{EngineError, Result};
use crate::kernels::attention_core::{attend, KeyRows};
use crate::kernels::isa;
use crate::tensor::Tensor;

/// Keys and values held in three tensors.
pub(crate) struct TensorRows<'a> {
    k: &'a Tensor,
    k_rope: Option<&'a Tensor>,
    v: &'a Tensor,
}

impl KeyRows for TensorRows<'_> {
    #[inline(always)]
    fn key(&self, j: usize) -> &[f32] {
        self.k.row(j)
    }
    #[inline(always)]
    fn rope(&self, j: usize) -> &[f32] {
        self.k_rope.map_or(&[][..], |r| r.row(j))
    }
    #[inline(always)]
    fn value(&self, j: usize) -> &[f32] {
        self.v.row(j)
    }
}

impl<'a> TensorRows<'a> {
    /// Checks the key and value shapes against `p` for `tq` queries from `p.q_start`.
    pub(crate) fn checked(
        k: &'a Tensor,
        k_rope: Option<&'a Tensor>,
        v: &'a Tensor,
        tq: usize,
        p: &AttentionParams,
    ) -> Result<Self> {
        let err = |m: String| EngineError::kernel("attention", m);
        if k.cols() != p.kv_heads * p.d1 || v.cols() != p.kv_heads * p.v_dim {
            return Err(err(format!(
                "widths k {} v {} do not match kv heads {} x (d1 {}, v_dim {})",
                k.cols(),
                v.cols(),
                p.kv_heads,
                p.d1,
                p.v_dim
            )));
        }
        let tk = k.rows();
        match k_rope {
            Some(r) if r.cols() != p.d2 || r.rows() != tk => {
                return Err(err(format!(
                    "k_rope is [{}, {}], expected [{tk}, d2 {}]",
                    r.rows(),
                    r.cols(),
                    p.d2
                )))
            }
            None if p.d2 > 0 => return Err(err(format!("d2 = {} but no k_rope", p.d2))),
            _ => {}
        }
        if v.rows() != tk || p.q_start + tq > tk {
            return Err(err(format!(
                "{tq} queries from position {} need {} keys, have {tk} (v {})",
                p.q_start,
                p.q_start + tq,
                v.rows()
            )));
        }
        Ok(TensorRows { k, k_rope, v })
    }
}

/// `q` `[tq, heads·d1]`, `q_rope` `[tq, heads·d2]`, `k` `[tk, kv_heads·d1]`, `k_rope` `[tk, d2]`
/// (one rope key shared by all kv heads), `v` `[tk, kv_heads·v_dim]` → `[tq, heads·v_dim]`.
/// Query row `i` sits at position `q_start + i` and sees keys `0..=q_start + i` (or the last
/// `sliding_window` of them).
pub fn attention(
    q: &Tensor,
    q_rope: Option<&Tensor>,
    k: &Tensor,
    k_rope: Option<&Tensor>,
    v: &Tensor,
    p: &AttentionParams,
) -> Result<Tensor> {
    let rows = TensorRows::checked(k, k_rope, v, q.rows(), p)?;
    attend("attention", q, q_rope, &rows, p, isa::active())
}
