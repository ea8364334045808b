//! `linear` for FP8 block-scaled weights (e4m3 bytes `[out, in]` + f32 scales per 128×128
//! block), kept FP8 in memory and dequantised exactly inside the dot product.
//!
//! Order (fixed; every path — portable, AVX2, AVX-512, and the GPU kernels — gives the same
//! bits): for output element `(r, o)`, `acc = +0.0`; for each 128-wide k-block `b` in ascending
//! order, `partial = dot(x[r][b], e4m3(w[o][b]))` in the lane order of [`super::dot`] (element `i`
//! of the block FMA'd into lane `i % 16`, lanes from +0.0, folded by `fold16`), then
//! `acc = fma(scale_inv[o / 128][b], partial, acc)`. e4m3 → f32 is exact, so the weight values
//! entering the dot are exact; the block scale multiplies once per block. Every output element
//! has its own chain, so tiling, batch size and thread count never change a result.
//!
//! Each task converts a few weight rows to f32 (exact e4m3 values, no scale) into a scratch
//! buffer, then runs register tiles of (x rows × weight rows) — 1×4 for a GEMV, 2×2 otherwise.

use rayon::prelude::*;

use super::dot::{dot_block, fold16, WRow};
use crate::dtype::E4M3_TO_F32;
use crate::error::{EngineError, Result};
use crate::tensor::Tensor;
use crate::weights::fp8::FP8_BLOCK;
use crate::weights::Weight;

/// Weight rows handled by one parallel task.
const ROWS_PER_TASK: usize = 32;
/// Below this many multiply-adds the call runs on the calling thread.
const SERIAL_WORK: usize = 1 << 16;

/// Which implementation runs the FP8 dot (all give the same bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Path {
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512F (+ AVX2/FMA/F16C for the conversion).
    Avx512,
}

impl Fp8Path {
    /// The widest path this processor runs.
    pub fn detect() -> Fp8Path {
        if Fp8Path::Avx512.available() {
            Fp8Path::Avx512
        } else if Fp8Path::Avx2.available() {
            Fp8Path::Avx2
        } else {
            Fp8Path::Portable
        }
    }

    /// Whether this processor can run `self`.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c");
            match self {
                Fp8Path::Portable => true,
                Fp8Path::Avx2 => avx2,
                Fp8Path::Avx512 => avx2 && std::is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Fp8Path::Portable
        }
    }
}

/// `x` `[n, in]` times the FP8 weight `w^T` (`w` is `[out, in]`) → `[n, out]`.
pub fn linear_fp8(x: &Tensor, w: &Weight) -> Result<Tensor> {
    linear_fp8_with(x, w, Fp8Path::detect())
}

/// As [`linear_fp8`] on an explicit path (an error if this processor cannot run it).
pub fn linear_fp8_with(x: &Tensor, w: &Weight, path: Fp8Path) -> Result<Tensor> {
    if !path.available() {
        return Err(EngineError::kernel(
            "linear_fp8",
            format!("the {path:?} path needs instructions this processor lacks"),
        ));
    }
    if w.shape().len() != 2 || x.cols() != w.cols() {
        return Err(EngineError::ShapeMismatch {
            tensor: w.name().to_string(),
            expected: vec![w.rows(), x.cols()],
            found: w.shape().to_vec(),
        });
    }
    let bytes = w.as_u8()?;
    let scales = w.block_scales().ok_or_else(|| {
        EngineError::kernel(
            "linear_fp8",
            format!("FP8 tensor `{}` has no block scales", w.name()),
        )
    })?;
    scales.check_for(w)?;
    let grid = scales.scale_inv.as_f32()?;
    let grid_cols = scales.scale_inv.cols();
    let (n, out_dim, k) = (x.rows(), w.rows(), w.cols());
    let job = Job {
        x: x.data(),
        n,
        bytes,
        grid,
        grid_cols,
        k,
        path,
    };
    let mut out = vec![0.0f32; n * out_dim];
    if n * out_dim * k < SERIAL_WORK || rayon::current_num_threads() == 1 {
        job.rows(0, out_dim, &mut |r, c, v| out[r * out_dim + c] = v);
    } else {
        let parts: Vec<(usize, Vec<f32>)> = (0..out_dim.div_ceil(ROWS_PER_TASK))
            .into_par_iter()
            .map(|t| {
                let c0 = t * ROWS_PER_TASK;
                let c1 = (c0 + ROWS_PER_TASK).min(out_dim);
                let width = c1 - c0;
                let mut buf = vec![0.0f32; n * width];
                job.rows(c0, c1, &mut |r, c, v| buf[r * width + c - c0] = v);
                (c0, buf)
            })
            .collect();
        for (c0, buf) in parts {
            let width = buf.len() / n.max(1);
            for r in 0..n {
                out[r * out_dim + c0..r * out_dim + c0 + width]
                    .copy_from_slice(&buf[r * width..(r + 1) * width]);
            }
        }
    }
    Tensor::matrix(n, out_dim, out)
}

/// Output columns `c0..c1` of `x @ w^T` for every row of `x` (`n × k`, row-major), each handed
/// to `set(row, column, value)` — the entry for a caller that schedules the columns itself (the
/// ISA-dispatching `linear`). `w` must be an FP8 weight with its block scales.
pub fn columns_into(
    x: &[f32],
    n: usize,
    w: &Weight,
    (c0, c1): (usize, usize),
    path: Fp8Path,
    set: &mut dyn FnMut(usize, usize, f32),
) -> Result<()> {
    let k = w.cols();
    let scales = w.block_scales().ok_or_else(|| {
        EngineError::kernel(
            "fp8::columns_into",
            format!("FP8 tensor `{}` has no block scales", w.name()),
        )
    })?;
    if !path.available() || x.len() != n * k || c0 > c1 || c1 > w.rows() {
        return Err(EngineError::kernel(
            "fp8::columns_into",
            format!(
                "`{}`: x of {} values for {n}×{k}, columns {c0}..{c1} of {}, path {path:?}",
                w.name(),
                x.len(),
                w.rows()
            ),
        ));
    }
    scales.check_for(w)?;
    let job = Job {
        x,
        n,
        bytes: w.as_u8()?,
        grid: scales.scale_inv.as_f32()?,
        grid_cols: scales.scale_inv.cols(),
        k,
        path,
    };
    job.rows(c0, c1, set);
    Ok(())
}

/// One call's inputs.
struct Job<'a> {
    /// `n × k` activations, row-major.
    x: &'a [f32],
    n: usize,
    bytes: &'a [u8],
    grid: &'a [f32],
    grid_cols: usize,
    k: usize,
    path: Fp8Path,
}

impl Job<'_> {
    /// Output columns `c0..c1` of every row, each handed to `set(row, column, value)`.
    fn rows(&self, c0: usize, c1: usize, set: &mut dyn FnMut(usize, usize, f32)) {
        let (n, k) = (self.n, self.k);
        let (row_step, col_step) = if n == 1 { (1, 4) } else { (2, 2) };
        let mut scratch = vec![0.0f32; col_step * k];
        let mut c = c0;
        while c < c1 {
            let cn = (c1 - c).min(col_step);
            for j in 0..cn {
                let src = &self.bytes[(c + j) * k..(c + j + 1) * k];
                convert(src, &mut scratch[j * k..(j + 1) * k], self.path);
            }
            let ws: [&[f32]; 4] = std::array::from_fn(|j| {
                let j = j.min(cn - 1);
                &scratch[j * k..(j + 1) * k]
            });
            let scale_rows: [&[f32]; 4] = std::array::from_fn(|j| {
                let b = (c + j.min(cn - 1)) / FP8_BLOCK;
                &self.grid[b * self.grid_cols..(b + 1) * self.grid_cols]
            });
            let mut r = 0;
            while r < n {
                let rn = (n - r).min(row_step);
                let xs: [&[f32]; 4] = std::array::from_fn(|i| {
                    let row = r + i.min(rn - 1);
                    &self.x[row * k..(row + 1) * k]
                });
                let mut acc = [[0.0f32; 4]; 4];
                for (b, k0) in (0..k).step_by(FP8_BLOCK).enumerate() {
                    let k1 = (k0 + FP8_BLOCK).min(k);
                    let mut partial = [[0.0f32; 4]; 4];
                    block_dots(&xs[..rn], &ws[..cn], k0, k1, self.path, &mut partial);
                    for i in 0..rn {
                        for j in 0..cn {
                            acc[i][j] = scale_rows[j][b].mul_add(partial[i][j], acc[i][j]);
                        }
                    }
                }
                for (i, arow) in acc.iter().enumerate().take(rn) {
                    for (j, v) in arow.iter().enumerate().take(cn) {
                        set(r + i, c + j, *v);
                    }
                }
                r += rn;
            }
            c += cn;
        }
    }
}

/// e4m3 bytes → their exact f32 values.
fn convert(src: &[u8], dst: &mut [f32], path: Fp8Path) {
    #[cfg(target_arch = "x86_64")]
    if path != Fp8Path::Portable {
        // SAFETY: `path` was checked available (AVX2+FMA+F16C at least) by `linear_fp8_with`.
        unsafe { simd::convert(src, dst) };
        return;
    }
    let _ = path;
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = E4M3_TO_F32[b as usize];
    }
}

/// `out[i][j] = dot(xs[i][k0..k1], ws[j][k0..k1])` in the fixed lane order: the bf16 `dot`'s own
/// kernel (`dot_block` on f32 rows) for the portable and AVX2 paths, a zmm form for AVX-512.
fn block_dots(
    xs: &[&[f32]],
    ws: &[&[f32]],
    k0: usize,
    k1: usize,
    path: Fp8Path,
    out: &mut [[f32; 4]; 4],
) {
    #[cfg(target_arch = "x86_64")]
    if path == Fp8Path::Avx512 {
        // SAFETY: availability checked by the callers (`Fp8Path::available`).
        unsafe { simd::block_dots_avx512(xs, ws, k0, k1, out) };
        return;
    }
    let xb: [&[f32]; 4] = std::array::from_fn(|i| &xs[i.min(xs.len() - 1)][k0..k1]);
    let wb: [WRow<'_>; 4] = std::array::from_fn(|j| WRow::F32(&ws[j.min(ws.len() - 1)][k0..k1]));
    dot_block(
        &xb[..xs.len()],
        &wb[..ws.len()],
        if path == Fp8Path::Portable {
            super::isa::Isa::Portable
        } else {
            super::isa::Isa::Avx2
        },
        out,
    );
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The F16C e4m3 conversion and the AVX-512 form of `block_dots`.
    use super::fold16;
    use std::arch::x86_64::*;

    /// e4m3 → f32 through f16: `h = sign << 15 | (b & 0x7f) << 7` is the e4m3 value · 2^-8 as
    /// an f16 (subnormals included), widened exactly by F16C and multiplied by 2^8 (exact);
    /// `b & 0x7f == 0x7f` (NaN) becomes the f16 NaN 0xffff.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn convert(src: &[u8], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let main = n / 16 * 16;
        let low7 = _mm256_set1_epi16(0x7f);
        let sign = _mm256_set1_epi16(0x80);
        let two8 = _mm256_set1_ps(256.0);
        let mut i = 0;
        while i < main {
            let b = _mm256_cvtepu8_epi16(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i));
            let mag = _mm256_and_si256(b, low7);
            let nan = _mm256_cmpeq_epi16(mag, low7);
            let h = _mm256_or_si256(
                _mm256_or_si256(
                    _mm256_slli_epi16(mag, 7),
                    _mm256_slli_epi16(_mm256_and_si256(b, sign), 8),
                ),
                nan,
            );
            let lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
            let hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_mul_ps(lo, two8));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i + 8), _mm256_mul_ps(hi, two8));
            i += 16;
        }
        for j in main..n {
            dst[j] = super::E4M3_TO_F32[src[j] as usize];
        }
    }

    /// One zmm register holds the 16 lanes of a chain; the ragged tail is a masked (zeroing) load.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn block_dots_avx512(
        xs: &[&[f32]],
        ws: &[&[f32]],
        k0: usize,
        k1: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = k0;
        while i < k1 {
            let m: __mmask16 = if k1 - i >= 16 {
                0xffff
            } else {
                ((1u32 << (k1 - i)) - 1) as __mmask16
            };
            for (c, w) in ws.iter().enumerate() {
                let wv = _mm512_maskz_loadu_ps(m, w.as_ptr().add(i));
                for (r, x) in xs.iter().enumerate() {
                    let xv = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
                    acc[r][c] = _mm512_fmadd_ps(xv, wv, acc[r][c]);
                }
            }
            i += 16;
        }
        for r in 0..xs.len() {
            for c in 0..ws.len() {
                let mut lanes = [0.0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r][c]);
                out[r][c] = fold16(&lanes);
            }
        }
    }
}
