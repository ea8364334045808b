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
//! The CPU kernels carry the weights as `e4m3 · 2^-8` (what F16C widens from the byte's bits
//! without a multiply; see `fp8_simd`) and fold the `2^8` into the block scale:
//! `acc = fma(256 · scale, partial · 2^-8, acc)`. Scaling by a power of two is exact, so this is
//! the order above bit for bit unless a product falls below f32's normal range (|x · w| < 2^-118)
//! or `256 · scale` overflows — neither happens with real activations and scales.
//!
//! The products are scheduled by [`super::linear`] (FP8 weights are one of its storage types, so
//! an expert layer's FP8 projections share one parallel region with the others). Within a chunk
//! of output columns: one x row (a GEMV, i.e. decode) runs a fused tile that widens each weight
//! byte in registers and streams four weight rows at once (on AVX-512, 32 bytes at a time and
//! without the per-byte NaN test when the weight has no NaN); several rows convert a few weight
//! rows to f32 into a scratch buffer and reuse them across 2×2 register tiles.

use super::dot::{dot_block, WRow};
use super::isa::Isa;
use crate::error::{EngineError, Result};
use crate::tensor::Tensor;
use crate::weights::fp8::FP8_BLOCK;
use crate::weights::Weight;

/// Which implementation runs the FP8 dot (all give the same bits): the [`Isa`] paths.
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
        Isa::best().into()
    }

    /// Whether this processor can run `self`.
    pub fn available(self) -> bool {
        Isa::from(self).supported()
    }
}

impl From<Fp8Path> for Isa {
    fn from(p: Fp8Path) -> Isa {
        match p {
            Fp8Path::Portable => Isa::Portable,
            Fp8Path::Avx2 => Isa::Avx2,
            Fp8Path::Avx512 => Isa::Avx512,
        }
    }
}

impl From<Isa> for Fp8Path {
    fn from(i: Isa) -> Fp8Path {
        match i {
            Isa::Portable => Fp8Path::Portable,
            Isa::Avx2 => Fp8Path::Avx2,
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => Fp8Path::Avx512,
        }
    }
}

/// e4m3 value · 2^-8 by bit pattern (exact): the weights as the kernels carry them.
pub(crate) static E4M3_TIMES_2_POW_MINUS_8: [f32; 256] = scaled_table();

const fn scaled_table() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = crate::dtype::E4M3_TO_F32[i] * (1.0 / 256.0);
        i += 1;
    }
    t
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
    Fp8Rows::of(w)?;
    super::linear::linear_with(x, w, path.into())
}

/// Output columns `c0..c1` of `x @ w^T` for every row of `x` (`n × k`, row-major), each handed
/// to `set(row, column, value)`. `w` must be an FP8 weight with its block scales.
pub fn columns_into(
    x: &[f32],
    n: usize,
    w: &Weight,
    (c0, c1): (usize, usize),
    path: Fp8Path,
    set: &mut dyn FnMut(usize, usize, f32),
) -> Result<()> {
    let rows = Fp8Rows::of(w)?;
    if !path.available() || x.len() != n * rows.k || c0 > c1 || c1 > w.rows() {
        return Err(EngineError::kernel(
            "fp8::columns_into",
            format!(
                "`{}`: x of {} values for {n}×{}, columns {c0}..{c1} of {}, path {path:?}",
                w.name(),
                x.len(),
                rows.k,
                w.rows()
            ),
        ));
    }
    rows.columns(x, n, (c0, c1), path.into(), set);
    Ok(())
}

/// A checked FP8 weight as the kernels read it.
#[derive(Clone, Copy)]
pub(crate) struct Fp8Rows<'a> {
    /// e4m3 bytes, `[out, k]` row-major.
    bytes: &'a [u8],
    /// f32 scale grid `[ceil(out/128), grid_cols]`.
    grid: &'a [f32],
    grid_cols: usize,
    k: usize,
    /// No byte is NaN ([`Weight::fp8_nan_free`]): the AVX-512 GEMV may skip the NaN test.
    nan_free: bool,
}

impl<'a> Fp8Rows<'a> {
    /// `w`'s bytes and scale grid, checked against each other.
    pub(crate) fn of(w: &'a Weight) -> Result<Self> {
        let scales = w.block_scales().ok_or_else(|| {
            EngineError::kernel(
                "linear_fp8",
                format!("FP8 tensor `{}` has no block scales", w.name()),
            )
        })?;
        scales.check_for(w)?;
        Ok(Fp8Rows {
            bytes: w.as_u8()?,
            grid: scales.scale_inv.as_f32()?,
            grid_cols: scales.scale_inv.cols(),
            k: w.cols(),
            nan_free: w.fp8_nan_free(),
        })
    }

    /// The scale-grid row of weight row `o`.
    fn scale_row(&self, o: usize) -> &'a [f32] {
        let b = o / FP8_BLOCK;
        &self.grid[b * self.grid_cols..(b + 1) * self.grid_cols]
    }

    /// Weight row `o`'s bytes.
    fn row(&self, o: usize) -> &'a [u8] {
        &self.bytes[o * self.k..(o + 1) * self.k]
    }

    /// Output columns `c0..c1` of every row of `x` (`n × k`), each handed to
    /// `set(row, column, value)`, on `isa` (which must be supported).
    pub(crate) fn columns(
        &self,
        x: &[f32],
        n: usize,
        (c0, c1): (usize, usize),
        isa: Isa,
        set: &mut dyn FnMut(usize, usize, f32),
    ) {
        #[cfg(target_arch = "x86_64")]
        if n == 1 && isa.has_avx2() && isa.supported() {
            // Four rows per call: first a row of each run (`decode_streams::runs`, each row's
            // successor requested ahead), then the rest four neighbours at a time (the next
            // four requested ahead).
            let group = |cols: [usize; 4],
                         cn: usize,
                         ahead: usize,
                         set: &mut dyn FnMut(usize, usize, f32)| {
                let rows: [&[u8]; 4] = cols.map(|c| self.row(c));
                let scales: [&[f32]; 4] = cols.map(|c| self.scale_row(c));
                let xr = &x[..self.k];
                let y = if isa.has_avx512() && self.nan_free {
                    // SAFETY: AVX-512F+BW (with AVX2+FMA+F16C) checked just above; rows and x
                    // hold k elements; the weight has no NaN byte.
                    unsafe { super::fp8_simd::gemv4_nan_free_avx512(xr, &rows, &scales, ahead) }
                } else {
                    // SAFETY: AVX2+FMA+F16C checked just above; rows and x hold k elements.
                    unsafe { super::fp8_simd::gemv4(xr, &rows, &scales, ahead) }
                };
                for (c, v) in cols.iter().zip(y).take(cn) {
                    set(0, *c, v);
                }
            };
            let (groups, rest) = super::decode_streams::runs(c0, c1);
            for cols in groups {
                group(cols, 4, self.k, set);
            }
            let mut c = rest.start;
            while c < c1 {
                let cn = (c1 - c).min(4);
                group(
                    std::array::from_fn(|j| c + j.min(cn - 1)),
                    cn,
                    4 * self.k,
                    set,
                );
                c += cn;
            }
            return;
        }
        self.columns_tiled(x, n, (c0, c1), isa, set);
    }

    /// The general form: a few weight rows converted to f32 (`e4m3 · 2^-8`) into a scratch
    /// buffer, then 1×4 (one x row) or 2×2 register tiles of per-block dots (4×4 on AVX-512,
    /// whose 32 registers hold the 16 accumulators).
    fn columns_tiled(
        &self,
        x: &[f32],
        n: usize,
        (c0, c1): (usize, usize),
        isa: Isa,
        set: &mut dyn FnMut(usize, usize, f32),
    ) {
        let k = self.k;
        let (row_step, col_step) = match n {
            1 => (1, 4),
            _ if isa.has_avx512() => (4, 4),
            _ => (2, 2),
        };
        let mut scratch = vec![0.0f32; col_step * k];
        let mut c = c0;
        while c < c1 {
            let cn = (c1 - c).min(col_step);
            for j in 0..cn {
                convert(self.row(c + j), &mut scratch[j * k..(j + 1) * k], isa);
            }
            let ws: [&[f32]; 4] = std::array::from_fn(|j| {
                let j = j.min(cn - 1);
                &scratch[j * k..(j + 1) * k]
            });
            let scale_rows: [&[f32]; 4] =
                std::array::from_fn(|j| self.scale_row(c + j.min(cn - 1)));
            let mut r = 0;
            while r < n {
                let rn = (n - r).min(row_step);
                let xs: [&[f32]; 4] = std::array::from_fn(|i| {
                    let row = r + i.min(rn - 1);
                    &x[row * k..(row + 1) * k]
                });
                #[cfg(target_arch = "x86_64")]
                if isa.has_avx512() && isa.supported() {
                    // SAFETY: AVX-512F (with AVX2, FMA, F16C) checked just above; rows hold k
                    // values, scale rows ceil(k / 128).
                    let acc = unsafe { tiles_avx512(&xs, &ws, &scale_rows, k, rn) };
                    for (i, arow) in acc.iter().enumerate().take(rn) {
                        for (j, v) in arow.iter().enumerate().take(cn) {
                            set(r + i, c + j, *v);
                        }
                    }
                    r += rn;
                    continue;
                }
                let mut acc = [[0.0f32; 4]; 4];
                for (b, k0) in (0..k).step_by(FP8_BLOCK).enumerate() {
                    let k1 = (k0 + FP8_BLOCK).min(k);
                    let mut partial = [[0.0f32; 4]; 4];
                    block_dots(&xs[..rn], &ws[..cn], k0, k1, isa, &mut partial);
                    for i in 0..rn {
                        for j in 0..cn {
                            acc[i][j] =
                                (scale_rows[j][b] * 256.0).mul_add(partial[i][j], acc[i][j]);
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

/// `fp8_simd::tile_rows_avx512` for the first `rn` (1–4) of `xs`.
///
/// # Safety
/// As `tile_rows_avx512`.
#[cfg(target_arch = "x86_64")]
unsafe fn tiles_avx512(
    xs: &[&[f32]; 4],
    ws: &[&[f32]; 4],
    scales: &[&[f32]; 4],
    k: usize,
    rn: usize,
) -> [[f32; 4]; 4] {
    use super::fp8_simd::tile_rows_avx512 as tile;
    let mut out = [[0.0f32; 4]; 4];
    match rn {
        1 => out[..1].copy_from_slice(&tile::<1>(&[xs[0]], ws, scales, k)),
        2 => out[..2].copy_from_slice(&tile::<2>(&[xs[0], xs[1]], ws, scales, k)),
        3 => out[..3].copy_from_slice(&tile::<3>(&[xs[0], xs[1], xs[2]], ws, scales, k)),
        _ => out = tile::<4>(xs, ws, scales, k),
    }
    out
}

/// e4m3 bytes → `value · 2^-8` as f32 (exact).
fn convert(src: &[u8], dst: &mut [f32], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && isa.supported() {
        // SAFETY: AVX2+FMA+F16C checked just above.
        unsafe { super::fp8_simd::convert(src, dst) };
        return;
    }
    let _ = isa;
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = E4M3_TIMES_2_POW_MINUS_8[b as usize];
    }
}

/// `out[i][j] = dot(xs[i][k0..k1], ws[j][k0..k1])` in the fixed lane order: the `dot` kernel
/// (`dot_block` on f32 rows) for the portable and AVX2 paths (AVX-512 runs whole rows in
/// `fp8_simd::tile_rows_avx512` instead; were it to come here, AVX2 gives the same bits).
fn block_dots(
    xs: &[&[f32]],
    ws: &[&[f32]],
    k0: usize,
    k1: usize,
    isa: Isa,
    out: &mut [[f32; 4]; 4],
) {
    let xb: [&[f32]; 4] = std::array::from_fn(|i| &xs[i.min(xs.len() - 1)][k0..k1]);
    let wb: [WRow<'_>; 4] = std::array::from_fn(|j| WRow::F32(&ws[j.min(ws.len() - 1)][k0..k1]));
    let isa = if isa.has_avx512() { Isa::Avx2 } else { isa };
    dot_block(&xb[..xs.len()], &wb[..ws.len()], isa, out);
}

/// `e4m3(b) · 2^-8` (exact), for the SIMD kernels' ragged tails.
#[inline(always)]
pub(crate) fn scaled(b: u8) -> f32 {
    E4M3_TIMES_2_POW_MINUS_8[b as usize]
}
