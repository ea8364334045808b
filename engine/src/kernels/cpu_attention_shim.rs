//! A temporary slow-but-correct paged attention for `CpuBackend`: gathers the sequence's cached
//! rows out of its pages into contiguous keys and values, then runs the contiguous attention
//! kernel. Replaced by `kernels::paged_attention` (which reads the pages in place) when it lands.

use crate::backend::{AttentionParams, HeadSlice};
use crate::device_tensor::BlockTableRef;
use crate::error::Result;
use crate::kernels::attention;
use crate::kernels::columns::head_columns;
use crate::kernels::kv_pages::HostKvPages;
use crate::tensor::Tensor;

/// Causal attention of `q` (`q_rope`) over positions `0..len` of the sequence owning `table`.
pub fn paged_attention(
    q: &Tensor,
    q_rope: Option<&Tensor>,
    pages: &HostKvPages,
    table: BlockTableRef<'_>,
    len: usize,
    p: &AttentionParams,
) -> Result<Tensor> {
    let l = pages.layout();
    let rows = pages.read(table, len)?;
    let cols = |offset, width| {
        head_columns(
            &rows,
            HeadSlice {
                heads: 1,
                stride: l.row_width(),
                offset,
                width,
            },
        )
    };
    let k = cols(0, l.key_width)?;
    let k_rope = match l.rope_width {
        0 => None,
        w => Some(cols(l.key_width, w)?),
    };
    let v = match l.value_width {
        0 => k.clone(),
        w => cols(l.key_width + l.rope_width, w)?,
    };
    attention::attention(q, q_rope, &k, k_rope.as_ref(), &v, p)
}
