//! FP8 block-scaled weights (DeepSeek-V3's `float8_e4m3fn` + `weight_scale_inv`) on the device:
//! the weight is uploaded as it is in memory, 1 byte per element, and its f32 block scales beside
//! it (both cached by the weight's name like every other weight), and `linear` runs one of two
//! paths, chosen by [`Fp8Compute`]:
//! - weight-only (the default, any sm_80+ device): `linear_fp8w` / `grouped_linear_fp8w` keep the
//!   activations f32 and dequantise each e4m3 byte exactly in registers, applying the block scale
//!   once per 128-block partial sum — within the f32 reference's tolerances;
//! - W8A8 (opt-in, sm_89+): DeepSeek's inference scheme, activations quantised to e4m3 per 1×128
//!   block (`fp8_quant_act`) then `fp8_gemm_blockscaled` on tensor cores. It rounds activations to
//!   3 mantissa bits, so it does not meet the f32 reference's tolerances (the error is measured by
//!   the tests, not hidden). It serves `linear` when `k % 128 == 0`; other shapes, the grouped
//!   expert MLP and the per-head linears use the weight-only kernels.

use std::sync::Arc;

use troupe_engine::dtype::DType;
use troupe_engine::weights::Weight;

use super::{shape_err, GpuBackend};
use crate::device::{Arg, Device};
use crate::error::{GpuError, GpuResult};
use crate::launch::{self, u32_of};

/// The block edge of the FP8 weights the kernels read (`weight_block_size = [128, 128]`).
const BLOCK: usize = 128;

/// How `linear` computes with FP8 block-scaled weights (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fp8Compute {
    /// f32 activations, weights dequantised exactly in the kernel (`linear_fp8w`); the default.
    #[default]
    WeightOnly,
    /// Activations quantised to e4m3 per 1×128 block, `fp8_gemm_blockscaled` (sm_89+).
    W8A8,
}

impl std::fmt::Display for Fp8Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fp8Compute::WeightOnly => "weight-only (f32 activations, linear_fp8w)",
            Fp8Compute::W8A8 => "W8A8 (e4m3 activations, fp8_gemm_blockscaled)",
        })
    }
}

impl<D: Device> GpuBackend<D> {
    /// This backend computing FP8 linears by `mode`; W8A8 needs an sm_89+ device.
    pub fn with_fp8_compute(mut self, mode: Fp8Compute) -> GpuResult<Self> {
        let sm = self.dev.sm();
        if mode == Fp8Compute::W8A8 && sm < 89 {
            return Err(GpuError::launch(
                "fp8_gemm_blockscaled",
                format!(
                    "W8A8 FP8 compute needs an sm_89+ device; {} is sm_{sm}",
                    self.dev.name()
                ),
            ));
        }
        self.fp8 = mode;
        Ok(self)
    }

    /// How this backend computes FP8 linears.
    pub fn fp8_compute(&self) -> Fp8Compute {
        self.fp8
    }

    /// The device copy of FP8 weight `w`'s block scales (f32 `[ceil(rows/128), ceil(cols/128)]`),
    /// cached under the weight's name; an error naming the weight when it has none or they do
    /// not fit.
    pub(super) fn fp8_scales(&self, kernel: &str, w: &Weight) -> GpuResult<Arc<D::Buf>> {
        let need = [w.rows().div_ceil(BLOCK), w.cols().div_ceil(BLOCK)];
        let s = w
            .block_scales()
            .filter(|s| s.block == [BLOCK, BLOCK])
            .ok_or_else(|| {
                shape_err(
                    kernel,
                    w.name(),
                    w.shape(),
                    "an f8e4m3 weight with [128, 128]-block scales (weight_scale_inv)".into(),
                )
            })?;
        let inv = &s.scale_inv;
        if inv.dtype() != DType::F32 || inv.numel() != need[0] * need[1] {
            return Err(shape_err(
                kernel,
                inv.name(),
                inv.shape(),
                format!("f32 {need:?} for `{}` {:?}", w.name(), w.shape()),
            ));
        }
        self.cached(&format!("{}#scale_inv", w.name()), || {
            Ok(inv.bytes().to_vec())
        })
    }

    /// `out = x @ w^T` (`x` `[m, k]`, `w` FP8 `[n, k]`) by the path [`Fp8Compute`] selects.
    pub(super) fn fp8_linear(
        &self,
        out: &D::Buf,
        x: &D::Buf,
        w: &Weight,
        (m, n, k): (usize, usize, usize),
    ) -> GpuResult<()> {
        if self.fp8 == Fp8Compute::W8A8 && k % BLOCK == 0 {
            return self.fp8_linear_w8a8(out, x, w, (m, n, k));
        }
        let l = launch::linear(DType::F8E4M3, m, n)?;
        let wb = self.weight(w, false)?;
        let sb = self.fp8_scales(l.kernel, w)?;
        self.dev.launch(
            &l,
            &[
                Arg::Buf(out),
                Arg::Buf(x),
                Arg::Buf(&wb),
                Arg::Buf(&sb),
                Arg::U32(u32_of(l.kernel, "m", m)?),
                Arg::U32(u32_of(l.kernel, "n", n)?),
                Arg::U32(u32_of(l.kernel, "k", k)?),
            ],
        )
    }

    /// W8A8: `fp8_quant_act` into e4m3 activations and their 1×128 scales, then
    /// `fp8_gemm_blockscaled` (`k % 128 == 0`).
    fn fp8_linear_w8a8(
        &self,
        out: &D::Buf,
        x: &D::Buf,
        w: &Weight,
        (m, n, k): (usize, usize, usize),
    ) -> GpuResult<()> {
        let q = launch::fp8_quant_act(m, k)?;
        let g = launch::fp8_gemm(m, n, k)?;
        let wb = self.weight(w, false)?;
        let sb = self.fp8_scales(g.kernel, w)?;
        let xq = self.dev.alloc(m * k)?;
        let xs = self.alloc_f32(m * (k / BLOCK))?;
        let (mm, kk) = (u32_of(q.kernel, "m", m)?, u32_of(q.kernel, "k", k)?);
        self.dev.launch(
            &q,
            &[
                Arg::Buf(&xq),
                Arg::Buf(&xs),
                Arg::Buf(x),
                Arg::U32(mm),
                Arg::U32(kk),
            ],
        )?;
        self.dev.launch(
            &g,
            &[
                Arg::Buf(out),
                Arg::Buf(&xq),
                Arg::Buf(&xs),
                Arg::Buf(&wb),
                Arg::Buf(&sb),
                Arg::U32(mm),
                Arg::U32(u32_of(g.kernel, "n", n)?),
                Arg::U32(kk),
            ],
        )
    }
}
