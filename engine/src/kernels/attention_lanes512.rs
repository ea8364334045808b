//! The AVX-512 "heads in lanes" form of a chunk's scores and softmax, for kv heads with a
//! multiple of 16 query heads (absorbed MLA decode: 16 heads share each cached latent row). It
//! follows exactly the order `attention_simd` fixes, so it gives the portable bits:
//!
//! - **Scores.** A register holds one key's partial scores for 16 heads (lane = head). The
//!   order's eight lanes of a score (element `i` into lane `i % 8`) become eight registers per
//!   key: element `i` of every head's query (a row of the transposed query, `qt`) is multiplied
//!   by key element `i` broadcast from memory and fused-added into register `i % 8`. Folding the
//!   eight registers with `fold8`'s additions, in its order, gives each head's score. Each cached
//!   row is read once for all 16 heads, with no shuffles; a tile is 3 keys × 8 registers.
//! - **Softmax.** The max of a head's scores is a lane-wise max over the keys (max is exact, and
//!   a NaN score is skipped as `f32::max` skips it); `exp` runs the `exp_scalar` operations on 16
//!   lanes; the sum puts key `j` into register `j % 8` (the order's lane `j % 8`) and folds them
//!   with `fold8`'s additions.
//!
//! The value pass reads these transposed probabilities with a stride (`attention_simd512`).

#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop)] // tiles index registers by key and lane

use std::arch::x86_64::*;

use super::attention_core::LANES;
use super::attention_simd::{EXP_FLOOR, EXP_POLY, LOG2E, MAGIC, NEG_LN2_HI, NEG_LN2_LO};

/// `out[k·16 + h] = score(q_h, key_k) * scale` for the 16 heads of `qt`
/// (`attention_core::transposed_queries`) and every key of `key` (`d1` values each) with its
/// `rope` (`d2`, empty rows when none).
///
/// # Safety
/// The processor must have AVX-512F, AVX2 and FMA; `qt` holds `(d1 + d2)·16` values and `out`
/// `key.len()·16`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn scores(
    qt: &[f32],
    key: &[&[f32]],
    rope: &[&[f32]],
    scale: f32,
    out: &mut [f32],
) {
    let mut k = 0;
    while k < key.len() {
        let o = &mut out[k * LANES..];
        match key.len() - k {
            1 => tile::<1>(qt, &key[k..], &rope[k..], scale, o),
            2 => tile::<2>(qt, &key[k..], &rope[k..], scale, o),
            _ => tile::<3>(qt, &key[k..], &rope[k..], scale, o),
        }
        k += 3;
    }
}

/// `K` keys × 16 heads: eight registers per key (the order's lanes), then `fold8`.
#[inline(always)]
unsafe fn tile<const K: usize>(
    qt: &[f32],
    key: &[&[f32]],
    rope: &[&[f32]],
    scale: f32,
    out: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); 8]; K];
    let d1 = key[0].len();
    part::<K>(qt.as_ptr(), key, &mut acc);
    if !rope[0].is_empty() {
        part::<K>(qt.as_ptr().add(d1 * LANES), rope, &mut acc);
    }
    let s = _mm512_set1_ps(scale);
    for k in 0..K {
        let a = &acc[k];
        let left = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6]));
        let right = _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7]));
        let score = _mm512_mul_ps(_mm512_add_ps(left, right), s);
        _mm512_storeu_ps(out.as_mut_ptr().add(k * LANES), score);
    }
}

/// Elements `0..n` of one part (`n` = the keys' width) into the registers of their lane
/// `i % 8`, in ascending `i`; `qt` points at the part's first transposed query row.
#[inline(always)]
unsafe fn part<const K: usize>(qt: *const f32, key: &[&[f32]], acc: &mut [[__m512; 8]; K]) {
    let n = key[0].len();
    let main = n / 8 * 8;
    let mut kp = [std::ptr::null::<f32>(); K];
    for k in 0..K {
        kp[k] = key[k].as_ptr();
    }
    let mut i = 0;
    while i < main {
        for l in 0..8 {
            let q = _mm512_loadu_ps(qt.add((i + l) * LANES));
            for k in 0..K {
                acc[k][l] = _mm512_fmadd_ps(q, _mm512_set1_ps(*kp[k].add(i + l)), acc[k][l]);
            }
        }
        i += 8;
    }
    for l in 0..8 {
        if main + l < n {
            let q = _mm512_loadu_ps(qt.add((main + l) * LANES));
            for k in 0..K {
                acc[k][l] = _mm512_fmadd_ps(q, _mm512_set1_ps(*kp[k].add(main + l)), acc[k][l]);
            }
        }
    }
}

/// `e^x` lane by lane with `exp_scalar`'s operations.
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(MAGIC));
    let n = _mm512_sub_ps(t, _mm512_set1_ps(MAGIC));
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(NEG_LN2_HI), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(NEG_LN2_LO), r);
    let mut poly = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
    }
    let bits = _mm512_sub_epi32(
        _mm512_castps_si512(t),
        _mm512_set1_epi32(MAGIC.to_bits() as i32),
    );
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(bits, _mm512_set1_epi32(127)));
    let e = _mm512_mul_ps(poly, _mm512_castsi512_ps(bits));
    let low = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_FLOOR));
    _mm512_maskz_mov_ps(!low, e)
}

/// The softmax numerators of one chunk in place: `s[k·16 + h]` (`n` keys) becomes `exp(s -
/// m_h)`; writes each head's max to `m[h]` and its sum of exponentials to `l[h]`.
///
/// # Safety
/// As for [`scores`]; `s` holds `n·16` values, `m` and `l` 16 each.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn softmax(s: &mut [f32], n: usize, m: &mut [f32], l: &mut [f32]) {
    let p = s.as_mut_ptr();
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for k in 0..n {
        // `max(score, max)`: a NaN score leaves the max as it was.
        max = _mm512_max_ps(_mm512_loadu_ps(p.add(k * LANES)), max);
    }
    let mut sums = [_mm512_setzero_ps(); 8];
    for k in 0..n {
        let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(k * LANES)), max));
        _mm512_storeu_ps(p.add(k * LANES), e);
        sums[k % 8] = _mm512_add_ps(sums[k % 8], e);
    }
    let left = _mm512_add_ps(
        _mm512_add_ps(sums[0], sums[4]),
        _mm512_add_ps(sums[2], sums[6]),
    );
    let right = _mm512_add_ps(
        _mm512_add_ps(sums[1], sums[5]),
        _mm512_add_ps(sums[3], sums[7]),
    );
    _mm512_storeu_ps(m.as_mut_ptr(), max);
    _mm512_storeu_ps(l.as_mut_ptr(), _mm512_add_ps(left, right));
}
