//! Rotary position embedding: the frequency table (default or YaRN, as HF computes it) and the
//! in-place rotation for both pair layouts.

use crate::backend::RopeSlot;
use crate::error::{EngineError, Result};
use crate::graph::spec::{yarn_get_mscale, RopeLayout, RopeSpec};
use crate::tensor::Tensor;

/// Per-model rope constants: `inv_freq[i]` for pair `i`, and YaRN's factor on cos/sin.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    pub inv_freq: Vec<f32>,
    pub attention_factor: f32,
    pub layout: RopeLayout,
}

impl RopeTable {
    /// Builds the table for a rotated width of `dim` (even).
    pub fn new(spec: &RopeSpec, dim: usize) -> RopeTable {
        let half = dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / spec.theta.powf((2 * i) as f64 / dim as f64))
            .collect();
        let (inv_freq, attention_factor) = match &spec.yarn {
            None => (base.iter().map(|&v| v as f32).collect(), 1.0f32),
            Some(y) => {
                let corr = |rot: f64| {
                    dim as f64
                        * ((y.original_max_position_embeddings as f64)
                            / (rot * 2.0 * std::f64::consts::PI))
                            .ln()
                        / (2.0 * spec.theta.ln())
                };
                let low = corr(y.beta_fast).floor().max(0.0);
                let mut high = corr(y.beta_slow).ceil().min(dim as f64 - 1.0);
                if low == high {
                    high += 0.001;
                }
                let inv: Vec<f32> = base
                    .iter()
                    .enumerate()
                    .map(|(i, &extrap)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let interp = extrap / y.factor;
                        (interp * ramp + extrap * (1.0 - ramp)) as f32
                    })
                    .collect();
                let af = match y.attention_factor {
                    Some(a) => a,
                    None if y.mscale != 0.0 && y.mscale_all_dim != 0.0 => {
                        yarn_get_mscale(y.factor, y.mscale)
                            / yarn_get_mscale(y.factor, y.mscale_all_dim)
                    }
                    None => yarn_get_mscale(y.factor, 1.0),
                };
                (inv, af as f32)
            }
        };
        RopeTable {
            inv_freq,
            attention_factor,
            layout: spec.layout,
        }
    }

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

/// Rotates the rope part of each head of each row of `x` in place.
pub fn apply_rope(
    x: &mut Tensor,
    slot: RopeSlot,
    positions: &[usize],
    table: &RopeTable,
) -> Result<()> {
    let d = table.dim();
    if x.rows() != positions.len() {
        return Err(EngineError::kernel(
            "rope",
            format!("{} rows but {} positions", x.rows(), positions.len()),
        ));
    }
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
    let half = d / 2;
    let data = x.data_mut();
    for (r, &pos) in positions.iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::spec::YarnSpec;

    #[test]
    fn yarn_inv_freq_matches_hf_for_v3_tiny() {
        // deepseek-v3-tiny: theta 1e4, dim 16, factor 4, orig 64, beta 32/1 (values from the fixture README).
        let spec = RopeSpec {
            theta: 1e4,
            layout: RopeLayout::Interleaved,
            yarn: Some(YarnSpec {
                factor: 4.0,
                original_max_position_embeddings: 64,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: 1.0,
                mscale_all_dim: 1.0,
                attention_factor: None,
            }),
        };
        let t = RopeTable::new(&spec, 16);
        let want = [
            1.0, 0.23717, 0.05, 7.9057e-3, 2.5e-3, 7.9057e-4, 2.5e-4, 7.9057e-5,
        ];
        for (g, w) in t.inv_freq.iter().zip(want) {
            assert!((g - w).abs() <= 1e-4 * w, "{g} vs {w}");
        }
        assert_eq!(t.attention_factor, 1.0);
    }
}
