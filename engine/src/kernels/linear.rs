//! `linear`: `y = x @ W^T` for f32 activations and f32/bf16/f16 weights stored `[out, in]`.
//!
//! Parallel over blocks of weight rows (output columns) on the rayon pool; inside a block, register
//! tiles of (x rows × weight rows): 1×4 for a single x row (a GEMV streams four weight rows at
//! once), 2×2 otherwise (each load reused twice). Every output element is one `dot` chain in the
//! order fixed by [`super::dot`], so results do not depend on the tiling, the batch size or the
//! thread count.

use rayon::prelude::*;

use super::dot::{dot_block, simd_available, WRow};
use crate::dtype::DType;
use crate::error::{EngineError, Result};
use crate::tensor::Tensor;
use crate::weights::Weight;

/// Weight rows handled by one parallel task.
const COLS_PER_TASK: usize = 32;
/// Below this many multiply-adds the call runs on the calling thread.
const SERIAL_WORK: usize = 1 << 16;

/// Row `r` of `w` as a typed slice.
fn weight_row<'a>(w: &'a Weight, flat: &WFlat<'a>, r: usize) -> WRow<'a> {
    let k = w.cols();
    match flat {
        WFlat::F32(s) => WRow::F32(&s[r * k..(r + 1) * k]),
        WFlat::BF16(s) => WRow::BF16(&s[r * k..(r + 1) * k]),
        WFlat::F16(s) => WRow::F16(&s[r * k..(r + 1) * k]),
    }
}

enum WFlat<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [u16]),
}

fn flat(w: &Weight) -> Result<WFlat<'_>> {
    Ok(match w.dtype() {
        DType::F32 => WFlat::F32(w.as_f32()?),
        DType::BF16 => WFlat::BF16(w.as_u16()?),
        DType::F16 => WFlat::F16(w.as_u16()?),
        DType::F8E4M3 => {
            return Err(EngineError::internal(
                "f8e4m3 weights are multiplied by kernels::fp8",
            ))
        }
    })
}

/// Computes columns `c0..c1` of `x @ W^T` into `out` (`[n, c1 - c0]`, row-major).
fn block(
    x: &Tensor,
    w: &Weight,
    wf: &WFlat<'_>,
    c0: usize,
    c1: usize,
    simd: bool,
    out: &mut [f32],
) {
    let n = x.rows();
    let width = c1 - c0;
    // GEMV (one row) streams 4 weight rows at a time; otherwise 2×2 tiles reuse each load twice.
    let (row_step, col_step) = if n == 1 { (1, 4) } else { (2, 2) };
    let mut r = 0;
    while r < n {
        let rn = (n - r).min(row_step);
        let xs: [&[f32]; 4] = std::array::from_fn(|i| x.row(r + i.min(rn - 1)));
        let mut c = c0;
        while c < c1 {
            let cn = (c1 - c).min(col_step);
            let ws: [WRow<'_>; 4] = std::array::from_fn(|j| weight_row(w, wf, c + j.min(cn - 1)));
            let mut tile = [[0.0f32; 4]; 4];
            dot_block(&xs[..rn], &ws[..cn], simd, &mut tile);
            for (dr, trow) in tile.iter().enumerate().take(rn) {
                for (dc, v) in trow.iter().enumerate().take(cn) {
                    out[(r + dr) * width + (c - c0 + dc)] = *v;
                }
            }
            c += cn;
        }
        r += rn;
    }
}

/// `x` `[n, in]` times `w^T` (`w` is `[out, in]`) → `[n, out]`.
pub fn linear(x: &Tensor, w: &Weight) -> Result<Tensor> {
    linear_with(x, w, simd_available())
}

/// As [`linear`], choosing the SIMD path explicitly (tests compare both).
pub fn linear_with(x: &Tensor, w: &Weight, simd: bool) -> Result<Tensor> {
    if w.shape().len() != 2 || x.cols() != w.cols() {
        return Err(EngineError::ShapeMismatch {
            tensor: w.name().to_string(),
            expected: vec![w.rows(), x.cols()],
            found: w.shape().to_vec(),
        });
    }
    if w.dtype() == DType::F8E4M3 {
        return super::fp8::linear_fp8(x, w);
    }
    let n = x.rows();
    let out_dim = w.rows();
    let wf = flat(w)?;
    let mut out = vec![0.0f32; n * out_dim];
    if n * out_dim * w.cols() < SERIAL_WORK || rayon::current_num_threads() == 1 {
        block(x, w, &wf, 0, out_dim, simd, &mut out);
    } else {
        let parts: Vec<(usize, Vec<f32>)> = (0..out_dim.div_ceil(COLS_PER_TASK))
            .into_par_iter()
            .map(|t| {
                let c0 = t * COLS_PER_TASK;
                let c1 = (c0 + COLS_PER_TASK).min(out_dim);
                let mut buf = vec![0.0f32; n * (c1 - c0)];
                block(x, w, &wf, c0, c1, simd, &mut buf);
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
