//! Causal attention of one sequence reading its keys and values in place from its KV-cache pages
//! (the paged cache's decode and chunked-prefill path): no copy of the cache, no per-step
//! concatenation of `[latent | rope_key]`. Runs `attention_core`'s algorithm, so it gives the same
//! bits as `attention` on the same rows gathered contiguously, whatever the page size.

use crate::backend::AttentionParams;
use crate::device_tensor::KvLayout;
use crate::error::{EngineError, Result};
use crate::kernels::attention_core::{attend, KeyRows};
use crate::kernels::isa;
use crate::tensor::Tensor;

/// A sequence's cached rows spread over its pages (`[key | rope | value]` per row).
pub(crate) struct PageRows<'a> {
    pages: &'a [&'a [f32]],
    shift: u32,
    mask: usize,
    row_width: usize,
    key: usize,
    rope: usize,
    /// Offset and width of the values inside a row (the key columns when the layout has none).
    value_at: usize,
    value: usize,
}

impl PageRows<'_> {
    #[inline(always)]
    fn row(&self, j: usize) -> &[f32] {
        let page = self.pages[j >> self.shift];
        &page[(j & self.mask) * self.row_width..][..self.row_width]
    }
}

impl KeyRows for PageRows<'_> {
    #[inline(always)]
    fn key(&self, j: usize) -> &[f32] {
        &self.row(j)[..self.key]
    }
    #[inline(always)]
    fn rope(&self, j: usize) -> &[f32] {
        &self.row(j)[self.key..][..self.rope]
    }
    #[inline(always)]
    fn value(&self, j: usize) -> &[f32] {
        &self.row(j)[self.value_at..][..self.value]
    }
    #[inline(always)]
    fn whole_row(&self, j: usize) -> Option<&[f32]> {
        Some(self.row(j))
    }
}

/// `q` `[tq, heads·d1]`, `q_rope` `[tq, heads·d2]` attending to the first `len` cached positions:
/// `pages[i]` is the sequence's page `i` (block-table order), `layout.page_tokens ·
/// layout.row_width()` values. Keys are `[key | rope]` (`key_width = kv_heads·d1`, `rope_width
/// = d2`); values are the value columns (`kv_heads·v_dim`), or the key columns when
/// `value_width` is 0 (absorbed MLA: `kv_heads` 1, `d1 = v_dim = kv_lora`). Query row `i` sits at
/// position `q_start + i`; `q_start + tq <= len`.
pub fn paged_attention(
    q: &Tensor,
    q_rope: Option<&Tensor>,
    pages: &[&[f32]],
    layout: &KvLayout,
    len: usize,
    p: &AttentionParams,
) -> Result<Tensor> {
    let rows = PageRows::checked(pages, layout, len, q.rows(), p)?;
    attend("paged_attention", q, q_rope, &rows, p, isa::active())
}

impl<'a> PageRows<'a> {
    /// Checks the pages and layout against `p` for `tq` queries from `p.q_start`.
    pub(crate) fn checked(
        pages: &'a [&'a [f32]],
        layout: &KvLayout,
        len: usize,
        tq: usize,
        p: &AttentionParams,
    ) -> Result<Self> {
        let err = |m: String| EngineError::kernel("paged_attention", m);
        let pt = layout.page_tokens;
        if pt == 0 || !pt.is_power_of_two() {
            return Err(err(format!("page_tokens {pt} is not a power of two")));
        }
        let values = if layout.value_width == 0 {
            layout.key_width
        } else {
            layout.value_width
        };
        if layout.key_width != p.kv_heads * p.d1
            || layout.rope_width != p.d2
            || values != p.kv_heads * p.v_dim
        {
            return Err(err(format!(
                "layout {layout:?} does not hold kv heads {} x (d1 {}, v_dim {}) and rope {}",
                p.kv_heads, p.d1, p.v_dim, p.d2
            )));
        }
        if p.q_start + tq > len {
            return Err(err(format!(
                "{tq} queries from position {} need {} cached positions, have {len}",
                p.q_start,
                p.q_start + tq
            )));
        }
        let row_width = layout.row_width();
        let needed = len.div_ceil(pt);
        if pages.len() < needed {
            return Err(err(format!(
                "{len} positions need {needed} pages of {pt}, got {}",
                pages.len()
            )));
        }
        if let Some((i, pg)) = pages[..needed]
            .iter()
            .enumerate()
            .find(|(_, pg)| pg.len() < pt * row_width)
        {
            return Err(err(format!(
                "page {i} holds {} values, a page is {pt} x {row_width}",
                pg.len()
            )));
        }
        Ok(PageRows {
            pages,
            shift: pt.trailing_zeros(),
            mask: pt - 1,
            row_width,
            key: layout.key_width,
            rope: layout.rope_width,
            value_at: if layout.value_width == 0 {
                0
            } else {
                layout.key_width + layout.rope_width
            },
            value: values,
        })
    }
}
