//! The compute precision of the CPU linear layers, a process-wide mode like the instruction set
//! (`isa`): [`Compute::F32`] (the default) multiplies f32 activations by weights upcast exactly,
//! so the f32-compute references of transformers hold; [`Compute::Bf16`] (`--compute bf16`)
//! first rounds each activation entering a linear layer to bf16 (round to nearest, ties to
//! even), as llama.cpp's bf16 path and a bf16 model in transformers do, then runs the same
//! kernels: a bf16 × bf16 product is exact in f32, so the dot keeps its fixed order and every
//! instruction-set path, schedule and placement still gives the same bits.
//!
//! Everything else (norms, attention over the cache, the residual stream, softmax, routing)
//! stays f32 in both modes; that is where this mode differs from transformers' all-bf16
//! computation (`tests/it/compute_bf16.rs` states how far).

use std::sync::atomic::{AtomicU8, Ordering};

use crate::dtype::{bf16_to_f32, f32_to_bf16};

/// The precision of the activations entering a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    /// f32 activations (the default).
    F32,
    /// Activations rounded to bf16 inside each linear layer.
    Bf16,
}

/// A `--compute` name that is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown compute precision `{0}`: expected f32 or bf16")]
pub struct UnknownCompute(pub String);

impl Compute {
    /// The mode named `s` (`f32`, `bf16`).
    pub fn parse(s: &str) -> Result<Compute, UnknownCompute> {
        match s {
            "f32" => Ok(Compute::F32),
            "bf16" => Ok(Compute::Bf16),
            _ => Err(UnknownCompute(s.to_string())),
        }
    }
    /// The name `--compute` takes and `troupe bench` prints.
    pub fn name(self) -> &'static str {
        match self {
            Compute::F32 => "f32",
            Compute::Bf16 => "bf16",
        }
    }
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// The mode the linear layers use.
pub fn compute() -> Compute {
    match MODE.load(Ordering::Relaxed) {
        0 => Compute::F32,
        _ => Compute::Bf16,
    }
}

/// Makes every linear layer of this process use `mode` from now on (set it before a model
/// runs: a mode changed mid-run changes results from that op on).
pub fn set_compute(mode: Compute) {
    MODE.store(
        match mode {
            Compute::F32 => 0,
            Compute::Bf16 => 1,
        },
        Ordering::Relaxed,
    );
}

/// `x` rounded to the nearest bf16 (ties to even, as `dtype::f32_to_bf16` does), as an f32;
/// NaN stays NaN, and values that round past the largest bf16 become infinite.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_bf16() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        // Just above halfway rounds up.
        assert_eq!(
            round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(round_bf16(-2.5), -2.5);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(round_bf16(0.0).to_bits(), 0);
        assert_eq!(round_bf16(-0.0).to_bits(), (-0.0f32).to_bits());
        // Exactly representable values are unchanged.
        for v in [0.15625f32, -3.0, 1e-30, 65536.0] {
            let b = f32::from_bits(v.to_bits() & 0xffff_0000);
            assert_eq!(round_bf16(b), b);
        }
    }

    #[test]
    fn names_round_trip() {
        for m in [Compute::F32, Compute::Bf16] {
            assert_eq!(Compute::parse(m.name()), Ok(m));
        }
        assert!(Compute::parse("fp16").is_err());
    }
}
