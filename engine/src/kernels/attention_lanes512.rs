//! The AVX-512 "heads in lanes" form of a chunk's scores and softmax, for kv heads with a
//! multiple of 16 query heads (absorbed MLA decode: 16 heads share each cached latent row). It
//! follows exactly the order `attention_simd` fixes, so it gives the portable bits:
//!
//! - **Scores.** The order puts element `i` of a score into lane `i % 8`. A register holds four
//!   heads × four consecutive elements (lane `4·hh + e`: head `4g + hh` of the register's group
//!   `g`, element `4·half + e` of an 8-element step): the query operand holds the four heads'
//!   elements, the key operand is the key's four elements broadcast to each head
//!   (`vbroadcastf32x4`). Eight registers per key (4 head groups × 2 halves) hold every lane
//!   of every head; one key load serves four multiply-adds and one query load serves the tile's
//!   keys (a tile is 3 keys × 8 registers). Folding: half 0 + half 1 (the order's `l + l+4`),
//!   then `(s0 + s2, s1 + s3)` and their sum across the 4 lanes of a head, all with `fold8`'s
//!   operands in `fold8`'s order; a permutation puts head `h` in lane `h`.
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

/// Floats per 16-head block of queries as [`lay_out_queries`] writes them: each part (`d1`, then
/// `d2`) padded to a multiple of 8 elements.
pub(crate) fn query_block_len(d1: usize, d2: usize) -> usize {
    (d1.next_multiple_of(8) + d2.next_multiple_of(8)) * LANES
}

/// Writes the queries of 16 heads (`q[h]`: `d1` values; `rope[h]`: `d2`, or empty) in the
/// layout the score tiles read: per part, per step of 8 elements, per half (elements `4·half
/// ..4·half + 4` of the step), per head group `g`, one register of lanes `4·hh + e` = element
/// `e` of head `4g + hh`. Padding elements are zero (the tiles mask them off). `out` holds
/// [`query_block_len`] values.
pub(crate) fn lay_out_queries(q: &[&[f32]], rope: &[&[f32]], out: &mut [f32]) {
    out.fill(0.0);
    let mut base = 0;
    for part in [q, rope] {
        let n = part[0].len();
        for (h, row) in part.iter().enumerate() {
            let (g, hh) = (h / 4, h % 4);
            for (i, &v) in row.iter().enumerate() {
                let (step, half, e) = (i / 8, (i % 8) / 4, i % 4);
                out[base + ((step * 2 + half) * 4 + g) * LANES + hh * 4 + e] = v;
            }
        }
        base += n.next_multiple_of(8) * LANES;
    }
}

/// `out[k·16 + h] = score(q_h, key_k) * scale` for the 16 heads of `qt` (laid out by
/// [`lay_out_queries`]) and every key of `key` (`d1` values each) with its `rope` (`d2`, empty
/// rows when none).
///
/// # Safety
/// The processor must have AVX-512F, AVX2 and FMA; `qt` holds [`query_block_len`] values and
/// `out` `key.len()·16`.
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

/// `K` keys × 16 heads: eight registers per key, then the fold.
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
        part::<K>(
            qt.as_ptr().add(d1.next_multiple_of(8) * LANES),
            rope,
            &mut acc,
        );
    }
    let s = _mm512_set1_ps(scale);
    // Lane `h` of the result is lane `4·(h % 4) + h / 4` of the fold.
    let heads = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for k in 0..K {
        let a = &acc[k];
        // Per head group: lanes `e` of half 0 plus lanes `e` of half 1 (`l0 + l4`, ...).
        let sg = [
            _mm512_add_ps(a[0], a[4]),
            _mm512_add_ps(a[1], a[5]),
            _mm512_add_ps(a[2], a[6]),
            _mm512_add_ps(a[3], a[7]),
        ];
        // Per 128-bit block (one head of each group): `[s0, s1]` of two groups, plus `[s2, s3]`.
        let ab = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(sg[0], sg[1]),
            _mm512_shuffle_ps::<0xEE>(sg[0], sg[1]),
        );
        let cd = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(sg[2], sg[3]),
            _mm512_shuffle_ps::<0xEE>(sg[2], sg[3]),
        );
        // `left + right` of groups a, b, c, d: lane `4·hh + g`.
        let folded = _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(ab, cd),
            _mm512_shuffle_ps::<0xDD>(ab, cd),
        );
        let score = _mm512_mul_ps(folded, s);
        _mm512_storeu_ps(
            out.as_mut_ptr().add(k * LANES),
            _mm512_permutexvar_ps(heads, score),
        );
    }
}

/// Elements `0..n` of one part (`n` = the keys' width) into their lanes, in ascending order;
/// `qt` points at the part's first query register.
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
        let q = qt.add(i * LANES);
        for half in 0..2 {
            let mut kb = [_mm512_setzero_ps(); K];
            for k in 0..K {
                kb[k] = _mm512_broadcast_f32x4(_mm_loadu_ps(kp[k].add(i + 4 * half)));
            }
            for g in 0..4 {
                let qv = _mm512_loadu_ps(q.add((half * 4 + g) * LANES));
                for k in 0..K {
                    acc[k][half * 4 + g] = _mm512_fmadd_ps(qv, kb[k], acc[k][half * 4 + g]);
                }
            }
        }
        i += 8;
    }
    if main < n {
        // The last `n - main` elements: padded keys, lanes past `n` left alone.
        let q = qt.add(main * LANES);
        for half in 0..2 {
            let count = (n - main).saturating_sub(4 * half).min(4);
            if count == 0 {
                break;
            }
            let mask: __mmask16 = (((1u32 << count) - 1) * 0x1111) as __mmask16;
            let mut kb = [_mm512_setzero_ps(); K];
            for k in 0..K {
                let mut pad = [0.0f32; 4];
                pad[..count].copy_from_slice(&key[k][main + 4 * half..][..count]);
                kb[k] = _mm512_broadcast_f32x4(_mm_loadu_ps(pad.as_ptr()));
            }
            for g in 0..4 {
                let qv = _mm512_loadu_ps(q.add((half * 4 + g) * LANES));
                for k in 0..K {
                    let a = acc[k][half * 4 + g];
                    acc[k][half * 4 + g] = _mm512_mask3_fmadd_ps(qv, kb[k], a, mask);
                }
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
