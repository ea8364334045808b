//! Element-wise activations: SwiGLU's `silu(gate) * up`.

use crate::error::{EngineError, Result};
use crate::tensor::Tensor;

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `silu(gate) * up`, element-wise over same-shaped tensors.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(EngineError::kernel(
            "silu_mul",
            format!("shape mismatch {:?} vs {:?}", gate.shape(), up.shape()),
        ));
    }
    let out = gate
        .data()
        .iter()
        .zip(up.data())
        .map(|(&g, &u)| silu(g) * u)
        .collect();
    Tensor::new(gate.shape().to_vec(), out)
}
