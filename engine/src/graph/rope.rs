//! `RopeSpec` → [`RopeTable`]: the rope frequency table, default or YaRN, as HF computes it.

use crate::graph::spec::{yarn_get_mscale, RopeSpec};
use crate::params::RopeTable;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::spec::{RopeLayout, YarnSpec};

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
