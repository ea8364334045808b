//! The one dot-product order every CPU linear uses, in a portable and an AVX2+FMA form that give
//! bit-identical results (checked in `engine/tests/it/dot.rs`).
//!
//! Order (fixed, whatever the batch size or thread count): element `i` is accumulated with a fused
//! multiply-add into lane `i % 16` (lanes start at +0.0; a ragged tail is zero-padded), then the
//! lanes are folded as `s[j] = lane[j] + lane[j + 8]` and
//! `((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))`. Because every output element has its own
//! accumulation chain in this order, blocking over rows (several x rows or weight rows at once)
//! never changes a result: this is what makes the linear batch-invariant.

use crate::dtype::{bf16_to_f32, f16_to_f32};

/// A weight row in one of the supported storage types.
#[derive(Clone, Copy)]
pub enum WRow<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [u16]),
}

impl WRow<'_> {
    #[inline(always)]
    pub fn len(&self) -> usize {
        match self {
            WRow::F32(s) => s.len(),
            WRow::BF16(s) | WRow::F16(s) => s.len(),
        }
    }
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline(always)]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            WRow::F32(s) => s[i],
            WRow::BF16(s) => bf16_to_f32(s[i]),
            WRow::F16(s) => f16_to_f32(s[i]),
        }
    }
}

/// The lane fold shared by both implementations.
#[inline(always)]
pub fn fold16(l: &[f32; 16]) -> f32 {
    let s: [f32; 8] = std::array::from_fn(|j| l[j] + l[j + 8]);
    ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
}

/// Portable reference of the dot order (uses `mul_add`, i.e. a true fused multiply-add).
pub fn dot_portable(x: &[f32], w: WRow<'_>) -> f32 {
    let mut lanes = [0.0f32; 16];
    for (i, &xv) in x.iter().enumerate().take(w.len()) {
        lanes[i % 16] = xv.mul_add(w.get(i), lanes[i % 16]);
    }
    fold16(&lanes)
}

/// Whether the AVX2+FMA(+F16C) path can run on this processor.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Computes `out[r][c] = dot(xs[r], ws[c])` for a small block (`xs.len() <= 4`, `ws.len() <= 4`)
/// in the fixed order, using AVX2 when `simd` is set.
#[inline]
pub fn dot_block(xs: &[&[f32]], ws: &[WRow<'_>], simd: bool, out: &mut [[f32; 4]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only set when `simd_available()` returned true.
        unsafe { avx2::dot_block(xs, ws, out) };
        return;
    }
    let _ = simd;
    for (r, x) in xs.iter().enumerate() {
        for (c, w) in ws.iter().enumerate() {
            out[r][c] = dot_portable(x, *w);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{fold16, WRow};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn load8(w: WRow<'_>, i: usize) -> __m256 {
        match w {
            WRow::F32(s) => _mm256_loadu_ps(s.as_ptr().add(i)),
            WRow::BF16(s) => {
                let h = _mm_loadu_si128(s.as_ptr().add(i) as *const __m128i);
                let wide = _mm256_cvtepu16_epi32(h);
                _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
            }
            WRow::F16(s) => _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(i) as *const __m128i)),
        }
    }

    /// Zero-padded copy of a tail of up to 16 weight elements as f32.
    #[inline(always)]
    fn tail16(w: WRow<'_>, start: usize, buf: &mut [f32; 16]) {
        for (j, b) in buf.iter_mut().enumerate() {
            let i = start + j;
            *b = if i < w.len() { w.get(i) } else { 0.0 };
        }
    }

    /// Dispatches a block to the tile kernel with the matching constant shape, so the
    /// accumulators stay in registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_block(xs: &[&[f32]], ws: &[WRow<'_>], out: &mut [[f32; 4]; 4]) {
        match (xs.len(), ws.len()) {
            (1, 1) => tile::<1, 1>(xs, ws, out),
            (1, 2) => tile::<1, 2>(xs, ws, out),
            (1, 3) => tile::<1, 3>(xs, ws, out),
            (1, 4) => tile::<1, 4>(xs, ws, out),
            (2, 1) => tile::<2, 1>(xs, ws, out),
            (2, 2) => tile::<2, 2>(xs, ws, out),
            (r, c) => {
                // Larger blocks are split into tiles; each dot keeps its own order.
                for r0 in (0..r).step_by(2) {
                    for c0 in (0..c).step_by(2) {
                        let (rn, cn) = ((r - r0).min(2), (c - c0).min(2));
                        let mut sub = [[0.0f32; 4]; 4];
                        dot_block(&xs[r0..r0 + rn], &ws[c0..c0 + cn], &mut sub);
                        for i in 0..rn {
                            for j in 0..cn {
                                out[r0 + i][c0 + j] = sub[i][j];
                            }
                        }
                    }
                }
            }
        }
    }

    /// `R` x rows against `C` weight rows (R·C ≤ 4: 2·R·C accumulators in registers).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize>(
        xs: &[&[f32]],
        ws: &[WRow<'_>],
        out: &mut [[f32; 4]; 4],
    ) {
        let k = ws[0].len();
        let main = k / 16 * 16;
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        let mut i = 0;
        while i < main {
            let mut wv = [[_mm256_setzero_ps(); 2]; C];
            for c in 0..C {
                wv[c][0] = load8(ws[c], i);
                wv[c][1] = load8(ws[c], i + 8);
            }
            for r in 0..R {
                let x0 = _mm256_loadu_ps(xs[r].as_ptr().add(i));
                let x1 = _mm256_loadu_ps(xs[r].as_ptr().add(i + 8));
                for c in 0..C {
                    acc[r][c][0] = _mm256_fmadd_ps(x0, wv[c][0], acc[r][c][0]);
                    acc[r][c][1] = _mm256_fmadd_ps(x1, wv[c][1], acc[r][c][1]);
                }
            }
            i += 16;
        }
        if main < k {
            let mut wt = [[0.0f32; 16]; C];
            for c in 0..C {
                tail16(ws[c], main, &mut wt[c]);
            }
            for r in 0..R {
                let mut xt = [0.0f32; 16];
                for (j, v) in xt.iter_mut().enumerate() {
                    if main + j < k {
                        *v = xs[r][main + j];
                    }
                }
                let x0 = _mm256_loadu_ps(xt.as_ptr());
                let x1 = _mm256_loadu_ps(xt.as_ptr().add(8));
                for c in 0..C {
                    let w0 = _mm256_loadu_ps(wt[c].as_ptr());
                    let w1 = _mm256_loadu_ps(wt[c].as_ptr().add(8));
                    acc[r][c][0] = _mm256_fmadd_ps(x0, w0, acc[r][c][0]);
                    acc[r][c][1] = _mm256_fmadd_ps(x1, w1, acc[r][c][1]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                let mut lanes = [0.0f32; 16];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][c][0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[r][c][1]);
                out[r][c] = fold16(&lanes);
            }
        }
    }
}
