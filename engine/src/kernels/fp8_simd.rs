//! The x86-64 forms of the FP8 kernel ([`super::fp8`] owns the order): the F16C widening of
//! e4m3 bytes, the fused decode GEMV tile (AVX2, and AVX-512 for weights without NaN), and the
//! AVX-512 tiles over whole rows.
//!
//! Widening: a byte `b = s eeee mmm`, sign-extended to 16 bits and shifted left by 7, is
//! `s s eeee mmm 0000000`; clearing bit 14 leaves the f16 `s 0eeee mmm0000000`, which is exactly
//! `e4m3(b) · 2^-8` (subnormals included: both formats' subnormals scale by the same 2^-8).
//! A magnitude of 0x7f (e4m3's NaN) becomes the f16 NaN 0xffff. F16C widens to f32 exactly.

use std::arch::x86_64::*;

use super::fp8::scaled;
use crate::weights::fp8::FP8_BLOCK;

/// 16 e4m3 bytes at `p` → the f16 bits of their values · 2^-8.
#[inline(always)]
unsafe fn widen16_f16(p: *const u8) -> __m256i {
    let b = _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i));
    let h = _mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi16(0xbfffu16 as i16));
    let mag = _mm256_set1_epi16(0x3f80);
    let nan = _mm256_cmpeq_epi16(_mm256_and_si256(h, mag), mag);
    _mm256_or_si256(h, nan)
}

/// 16 e4m3 bytes at `p` → their values · 2^-8, elements 0–7 and 8–15.
#[inline(always)]
unsafe fn widen16(p: *const u8) -> (__m256, __m256) {
    let h = widen16_f16(p);
    (
        _mm256_cvtph_ps(_mm256_castsi256_si128(h)),
        _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)),
    )
}

/// e4m3 bytes → `value · 2^-8` as f32 (exact).
///
/// # Safety
/// The processor has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn convert(src: &[u8], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let main = n / 16 * 16;
    let mut i = 0;
    while i < main {
        let (lo, hi) = widen16(src.as_ptr().add(i));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), lo);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i + 8), hi);
        i += 16;
    }
    for j in main..n {
        dst[j] = scaled(src[j]);
    }
}

/// fold16 of four chains given as `s_j = l_j + l_{j+8}` (j < 8): `t_j = s_j + s_{j+4}` (j < 4),
/// then `(t0 + t2) + (t1 + t3)`; transposed, the four chains' `t_j` sit in one register each.
/// Lane `c` of the result is chain `c`'s sum.
#[inline(always)]
unsafe fn fold4(s: [__m256; 4]) -> __m128 {
    let t: [__m128; 4] = std::array::from_fn(|c| {
        _mm_add_ps(_mm256_castps256_ps128(s[c]), _mm256_extractf128_ps(s[c], 1))
    });
    let a01 = _mm_unpacklo_ps(t[0], t[1]);
    let a23 = _mm_unpacklo_ps(t[2], t[3]);
    let b01 = _mm_unpackhi_ps(t[0], t[1]);
    let b23 = _mm_unpackhi_ps(t[2], t[3]);
    let r0 = _mm_movelh_ps(a01, a23);
    let r1 = _mm_movehl_ps(a23, a01);
    let r2 = _mm_movelh_ps(b01, b23);
    let r3 = _mm_movehl_ps(b23, b01);
    _mm_add_ps(_mm_add_ps(r0, r2), _mm_add_ps(r1, r3))
}

/// Prefetches byte `at` of each of four weight rows. A hint only: no effect on results, and no
/// fault past the weight's end.
#[inline(always)]
unsafe fn prefetch_rows(rows: &[*const u8; 4], at: usize) {
    for p in rows {
        _mm_prefetch(p.wrapping_add(at) as *const i8, _MM_HINT_T0);
    }
}

/// `256 · scale` of 128-block `b` for four weight rows' scale-grid rows (exact: a power of two).
#[inline(always)]
unsafe fn block_scale(scales: &[&[f32]; 4], b: usize) -> __m128 {
    _mm_mul_ps(
        _mm_set_ps(scales[3][b], scales[2][b], scales[1][b], scales[0][b]),
        _mm_set1_ps(256.0),
    )
}

/// One x row (`k` values) against four FP8 weight rows (`k` bytes each, with their scale-grid
/// rows): the four outputs in the fixed order. Each 16 bytes are widened in registers and
/// FMA'd into the 16 lanes of their row's chain; at each 128-block's end the four chains are
/// folded together (a 4×4 transpose gives `fold16`'s pairs) and scaled by `256 · scale`.
/// Meanwhile each row's bytes `ahead` bytes further on (the next call's rows, when the caller
/// walks consecutive rows) are prefetched: four rows of a 1 KiB-wide weight fill one 4 KiB page,
/// where the hardware prefetchers stop, and they left this loop waiting on memory.
///
/// # Safety
/// The processor has AVX2, FMA and F16C; every row holds `x.len()` bytes and every scale row
/// `ceil(x.len() / 128)` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv4(x: &[f32], rows: &[&[u8]; 4], scales: &[&[f32]; 4], ahead: usize) -> [f32; 4] {
    let k = x.len();
    let xp = x.as_ptr();
    let rp: [*const u8; 4] = std::array::from_fn(|c| rows[c].as_ptr());
    let mut acc = _mm_setzero_ps();
    let (mut k0, mut b) = (0, 0);
    while k0 < k {
        let k1 = (k0 + FP8_BLOCK).min(k);
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = [_mm256_setzero_ps(); 4];
        let main = k0 + (k1 - k0) / 16 * 16;
        let mut i = k0;
        while i < main {
            if i % 64 == 0 {
                prefetch_rows(&rp, i + ahead);
            }
            let x0 = _mm256_loadu_ps(xp.add(i));
            let x1 = _mm256_loadu_ps(xp.add(i + 8));
            for c in 0..4 {
                let (w0, w1) = widen16(rp[c].add(i));
                lo[c] = _mm256_fmadd_ps(x0, w0, lo[c]);
                hi[c] = _mm256_fmadd_ps(x1, w1, hi[c]);
            }
            i += 16;
        }
        if i < k1 {
            // The ragged tail, zero-padded to 16 lanes (as `dot` pads it).
            let mut xb = [0.0f32; 16];
            xb[..k1 - i].copy_from_slice(&x[i..k1]);
            let x0 = _mm256_loadu_ps(xb.as_ptr());
            let x1 = _mm256_loadu_ps(xb.as_ptr().add(8));
            for c in 0..4 {
                let mut wb = [0.0f32; 16];
                for (j, w) in wb.iter_mut().enumerate().take(k1 - i) {
                    *w = scaled(rows[c][i + j]);
                }
                lo[c] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(wb.as_ptr()), lo[c]);
                hi[c] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(wb.as_ptr().add(8)), hi[c]);
            }
        }
        let s: [__m256; 4] = std::array::from_fn(|c| _mm256_add_ps(lo[c], hi[c]));
        acc = _mm_fmadd_ps(block_scale(scales, b), fold4(s), acc);
        k0 = k1;
        b += 1;
    }
    let mut out = [0.0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// 32 e4m3 bytes at `p` that hold no NaN → their values · 2^-8 as f16 bits (the widening of
/// [`widen16`], 32 at once, without its NaN test).
#[inline(always)]
unsafe fn widen32_f16(p: *const u8) -> __m512i {
    let b = _mm512_cvtepi8_epi16(_mm256_loadu_si256(p as *const __m256i));
    _mm512_and_si512(_mm512_slli_epi16(b, 7), _mm512_set1_epi16(0xbfffu16 as i16))
}

/// [`gemv4`] for weights with no NaN byte, in 512-bit registers: each 32 bytes widened to f16 at
/// once (AVX512-BW), then to f32 16 lanes at a time and FMA'd into one zmm chain per weight row
/// — element `i` of a block into lane `i % 16`, in ascending `i`, the order `gemv4` keeps in two
/// ymm halves — so the same bits with about half the instructions per weight.
///
/// # Safety
/// The processor has AVX-512F and BW (and AVX2, FMA, F16C); every row holds `x.len()` bytes,
/// none of them NaN (`0x7f`/`0xff`: they would widen to a number), and every scale row
/// `ceil(x.len() / 128)` values.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn gemv4_nan_free_avx512(
    x: &[f32],
    rows: &[&[u8]; 4],
    scales: &[&[f32]; 4],
    ahead: usize,
) -> [f32; 4] {
    let k = x.len();
    let xp = x.as_ptr();
    let rp: [*const u8; 4] = std::array::from_fn(|c| rows[c].as_ptr());
    let mut acc = _mm_setzero_ps();
    let (mut k0, mut b) = (0, 0);
    while k0 < k {
        let k1 = (k0 + FP8_BLOCK).min(k);
        let mut lanes = [_mm512_setzero_ps(); 4];
        let mut i = k0;
        while i + 32 <= k1 {
            if i % 64 == 0 {
                prefetch_rows(&rp, i + ahead);
            }
            let x0 = _mm512_loadu_ps(xp.add(i));
            let x1 = _mm512_loadu_ps(xp.add(i + 16));
            for c in 0..4 {
                let h = widen32_f16(rp[c].add(i));
                let w0 = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
                let w1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
                lanes[c] = _mm512_fmadd_ps(x1, w1, _mm512_fmadd_ps(x0, w0, lanes[c]));
            }
            i += 32;
        }
        while i < k1 {
            // 16 (or, last, fewer: zero-padded as `dot` pads them) at a time.
            let n = (k1 - i).min(16);
            let m = ((1u32 << n) - 1) as __mmask16;
            let xv = _mm512_maskz_loadu_ps(m, xp.add(i));
            for c in 0..4 {
                let mut wb = [0u8; 16];
                wb[..n].copy_from_slice(&rows[c][i..i + n]);
                let w = _mm512_cvtph_ps(widen16_f16(wb.as_ptr()));
                lanes[c] = _mm512_fmadd_ps(xv, w, lanes[c]);
            }
            i += n;
        }
        let s: [__m256; 4] = std::array::from_fn(|c| {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lanes[c]), 1));
            _mm256_add_ps(_mm512_castps512_ps256(lanes[c]), hi)
        });
        acc = _mm_fmadd_ps(block_scale(scales, b), fold4(s), acc);
        k0 = k1;
        b += 1;
    }
    let mut out = [0.0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// `R` x rows (`k` values each) against four weight rows already widened to f32
/// (`e4m3 · 2^-8`, `k` values each) with their scale-grid rows, over every 128-block: per block
/// the 16 lanes of each chain in one zmm register, folded four chains at a time (as [`gemv4`]
/// folds them) and accumulated as `acc = fma(256 · scale, partial, acc)`. The same bits as the
/// per-block dots of `fp8::columns_tiled`, with the accumulators and the fold in registers.
///
/// # Safety
/// The processor has AVX-512F (and AVX2, FMA, F16C); every row holds `k` values and every scale
/// row `ceil(k / 128)`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn tile_rows_avx512<const R: usize>(
    xs: &[&[f32]; R],
    ws: &[&[f32]; 4],
    scales: &[&[f32]; 4],
    k: usize,
) -> [[f32; 4]; R] {
    let mut out = [_mm_setzero_ps(); R];
    let (mut k0, mut b) = (0, 0);
    while k0 < k {
        let k1 = (k0 + FP8_BLOCK).min(k);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let mut i = k0;
        while i < k1 {
            let m: __mmask16 = if k1 - i >= 16 {
                0xffff
            } else {
                ((1u32 << (k1 - i)) - 1) as __mmask16
            };
            let wv: [__m512; 4] =
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(m, ws[c].as_ptr().add(i)));
            for r in 0..R {
                let xv = _mm512_maskz_loadu_ps(m, xs[r].as_ptr().add(i));
                for c in 0..4 {
                    acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
                }
            }
            i += 16;
        }
        let scale = block_scale(scales, b);
        for r in 0..R {
            let s: [__m256; 4] = std::array::from_fn(|c| {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r][c]), 1));
                _mm256_add_ps(_mm512_castps512_ps256(acc[r][c]), hi)
            });
            out[r] = _mm_fmadd_ps(scale, fold4(s), out[r]);
        }
        k0 = k1;
        b += 1;
    }
    std::array::from_fn(|r| {
        let mut v = [0.0f32; 4];
        _mm_storeu_ps(v.as_mut_ptr(), out[r]);
        v
    })
}
