//! Rotary position embedding: the in-place rotation for both pair layouts. The frequency table
//! ([`RopeTable`]) lives in `params` and is built from the spec by `graph::rope`.

use crate::backend::RopeSlot;
use crate::error::{EngineError, Result};
use crate::params::RopeLayout;
pub use crate::params::RopeTable;
use crate::tensor::Tensor;

/// Rotates the rope part of each head of each row of `x` in place; row `i` sits at position
/// `first_position + i`.
pub fn apply_rope(
    x: &mut Tensor,
    slot: RopeSlot,
    first_position: usize,
    table: &RopeTable,
) -> Result<()> {
    let d = table.dim();
    if x.cols() != slot.heads * slot.head_stride || slot.offset + d > slot.head_stride {
        return Err(EngineError::kernel(
            "rope",
            format!(
                "row width {} does not hold {} heads of {} with rope at {}..{}",
                x.cols(),
                slot.heads,
                slot.head_stride,
                slot.offset,
                slot.offset + d
            ),
        ));
    }
    let cols = x.cols();
    let rows = x.rows();
    let half = d / 2;
    let data = x.data_mut();
    for r in 0..rows {
        let pos = first_position + r;
        let cs: Vec<(f32, f32)> = (0..half).map(|i| table.cos_sin(pos, i)).collect();
        for h in 0..slot.heads {
            let base = r * cols + h * slot.head_stride + slot.offset;
            let head = &mut data[base..base + d];
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (ia, ib) = match table.layout {
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    RopeLayout::HalfSplit => (i, i + half),
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * c + (-b) * s;
                head[ib] = b * c + a * s;
            }
        }
    }
    Ok(())
}
