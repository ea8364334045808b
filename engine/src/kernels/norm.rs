//! RMSNorm: `x / sqrt(mean(x²) + eps) * w`, computed in f32 (as HF does, before the weight).

use crate::error::{EngineError, Result};
use crate::tensor::Tensor;
use crate::weights::Weight;

/// Normalises every row of `x` (`[n, d]`) with weight `w` (`[d]`).
pub fn rms_norm(x: &Tensor, w: &Weight, eps: f32) -> Result<Tensor> {
    let d = x.cols();
    if w.numel() != d {
        return Err(EngineError::ShapeMismatch {
            tensor: w.name().to_string(),
            expected: vec![d],
            found: w.shape().to_vec(),
        });
    }
    let wv = w.to_f32_vec();
    let mut out = Vec::with_capacity(x.data().len());
    for r in 0..x.rows() {
        let row = x.row(r);
        // Sum of squares in f64 then rounded: exact enough and independent of the row count.
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = 1.0 / ((ss / d as f64) as f32 + eps).sqrt();
        out.extend(row.iter().zip(&wv).map(|(&v, &g)| (v * inv) * g));
    }
    Tensor::new(x.shape().to_vec(), out)
}
