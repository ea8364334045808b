//! The AVX-512 forms of attention's two hot loops (`attention_simd` owns the order they follow
//! and the dispatch): score tiles and value tiles in 512-bit registers, giving the same bits as
//! the AVX2 and portable forms.
//!
//! - **Scores.** A score's order puts element `i` into lane `i % 8` of its own accumulator, so one
//!   zmm register holds the eight lanes of *two* keys (`[key j | key j+1]`) and multiplies them by
//!   the query's eight elements broadcast to both halves: each half runs exactly the AVX2 chain.
//!   A tile is up to 4 heads × 8 keys (16 accumulators of 32 registers), twice the AVX2 tile's
//!   multiply-adds per instruction, and with no accumulator spilled to the stack (the AVX2 4×3
//!   tile needs one more register than AVX2's 16).
//! - **Values.** Each column's accumulator is its own `fma` chain in key order, so sixteen columns
//!   per register give the same bits as eight; a tile is 4 heads × 64 columns.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop)] // tiles index registers by head and column

use std::arch::x86_64::*;

use super::attention_simd::{head_tile, ScoreTile, VALUE_BLOCK};

/// `out[h][k] = score(q_h, key_k) * scale` for `heads ∈ {1, 2, 4}` × `keys <= 8`.
///
/// # Safety
/// The processor must have AVX-512F, AVX2 and FMA (`Isa::Avx512.supported()`).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn score_tile(t: &ScoreTile<'_>, scale: f32, out: &mut [[f32; 8]; 4]) {
    match (t.q.len(), t.key.len().div_ceil(2)) {
        (4, 4) => tile::<4, 4>(t, scale, out),
        (4, 3) => tile::<4, 3>(t, scale, out),
        (4, 2) => tile::<4, 2>(t, scale, out),
        (4, 1) => tile::<4, 1>(t, scale, out),
        (2, 4) => tile::<2, 4>(t, scale, out),
        (2, 3) => tile::<2, 3>(t, scale, out),
        (2, 2) => tile::<2, 2>(t, scale, out),
        (2, 1) => tile::<2, 1>(t, scale, out),
        (_, 4) => tile::<1, 4>(t, scale, out),
        (_, 3) => tile::<1, 3>(t, scale, out),
        (_, 2) => tile::<1, 2>(t, scale, out),
        _ => tile::<1, 1>(t, scale, out),
    }
}

/// `H` heads × `P` key pairs (an odd last key is paired with itself; its copy is dropped).
#[inline(always)]
unsafe fn tile<const H: usize, const P: usize>(
    t: &ScoreTile<'_>,
    scale: f32,
    out: &mut [[f32; 8]; 4],
) {
    let keys = t.key.len();
    let mut acc = [[_mm512_setzero_ps(); P]; H];
    part::<H, P>(t.q, t.key, &mut acc);
    if !t.q_rope[0].is_empty() {
        part::<H, P>(t.q_rope, t.rope, &mut acc);
    }
    // Accumulator `u = h·P + c` holds keys `2c` and `2c + 1` of head `h`; eight at a time are
    // folded into sixteen scores (zero registers pad the last group).
    let zero = _mm512_setzero_ps();
    let mut u0 = 0;
    while u0 < H * P {
        let mut group = [zero; 8];
        for (i, g) in group.iter_mut().enumerate() {
            if u0 + i < H * P {
                *g = acc[(u0 + i) / P][(u0 + i) % P];
            }
        }
        let folded = _mm512_mul_ps(fold8_of_eight(&group), _mm512_set1_ps(scale));
        if P == 4 {
            // Eight accumulators are two heads' 8 keys: transposing the 4×4 lanes puts them in
            // `out[h][0..8]`, `out[h + 1][0..8]` order, two contiguous rows (keys past the
            // tile's and heads past `H` get values the caller never reads).
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            let rows = _mm512_permutexvar_ps(order, folded);
            // `u0 / P <= 2`: rows `u0 / P` and the next are inside `out` (4 rows of 8).
            _mm512_storeu_ps(out.as_mut_ptr().cast::<f32>().add(8 * (u0 / P)), rows);
            u0 += 8;
            continue;
        }
        let mut scores = [0.0f32; 16];
        _mm512_storeu_ps(scores.as_mut_ptr(), folded);
        // Lane `4m + k` is key half `m % 2` of accumulator `2k + m / 2` (see `fold8_of_eight`).
        for (lane, &score) in scores.iter().enumerate() {
            let (m, k) = (lane / 4, lane % 4);
            let u = u0 + 2 * k + m / 2;
            let key = 2 * (u % P) + m % 2;
            if u < H * P && key < keys {
                out[u / P][key] = score;
            }
        }
        u0 += 8;
    }
}

/// One part (`q·key` or `q_rope·rope`) of `H` heads × `P` key pairs into their accumulators.
#[inline(always)]
unsafe fn part<const H: usize, const P: usize>(
    q: &[&[f32]],
    k: &[&[f32]],
    acc: &mut [[__m512; P]; H],
) {
    let n = q[0].len();
    let main = n / 8 * 8;
    let mut qp = [std::ptr::null::<f32>(); H];
    for h in 0..H {
        qp[h] = q[h].as_ptr();
    }
    // Key pair `c` is keys `2c` and `2c + 1` (or `2c` twice when the tile's key count is odd).
    let mut kp = [[std::ptr::null::<f32>(); 2]; P];
    for c in 0..P {
        let second = (2 * c + 1).min(k.len() - 1);
        kp[c] = [k[2 * c].as_ptr(), k[second].as_ptr()];
    }
    let mut kz = [_mm512_setzero_ps(); P];
    let mut i = 0;
    while i < main {
        for c in 0..P {
            kz[c] = pair(_mm256_loadu_ps(kp[c][0].add(i)), kp[c][1].add(i));
        }
        for h in 0..H {
            let qz = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(
                qp[h].add(i),
            ))));
            for c in 0..P {
                acc[h][c] = _mm512_fmadd_ps(qz, kz[c], acc[h][c]);
            }
        }
        i += 8;
    }
    if main < n {
        for c in 0..P {
            let second = (2 * c + 1).min(k.len() - 1);
            let (a, b) = (padded(&k[2 * c][main..n]), padded(&k[second][main..n]));
            kz[c] = pair(_mm256_loadu_ps(a.as_ptr()), b.as_ptr());
        }
        for h in 0..H {
            let qv = padded(&q[h][main..n]);
            let qz = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(
                qv.as_ptr(),
            ))));
            for c in 0..P {
                acc[h][c] = _mm512_fmadd_ps(qz, kz[c], acc[h][c]);
            }
        }
    }
}

/// `[low | the 8 values at high]` in one register.
#[inline(always)]
unsafe fn pair(low: __m256, high: *const f32) -> __m512 {
    let wide = _mm512_castpd256_pd512(_mm256_castps_pd(low));
    _mm512_castpd_ps(_mm512_insertf64x4(
        wide,
        _mm256_castps_pd(_mm256_loadu_ps(high)),
        1,
    ))
}

/// Up to 8 values, zero-padded.
#[inline(always)]
fn padded(s: &[f32]) -> [f32; 8] {
    let mut b = [0.0f32; 8];
    b[..s.len()].copy_from_slice(s);
    b
}

/// The `fold8` of each 8-lane half of eight registers, operand for operand as the AVX2 path's
/// fold (`(l0+l4, l1+l5, l2+l6, l3+l7)`, then `(s0+s2, s1+s3)`, then their sum), done for
/// sixteen accumulators at once by interleaving them between the steps. Lane `4m + k` of the
/// result is half `m % 2` of register `2k + m / 2`.
///
/// It stays in 512-bit instructions: a 256- or 128-bit instruction on an accumulator would
/// confine it to the 16 registers VEX encoding reaches (AVX-512VL is not assumed), and a tile's
/// 16 accumulators would spill.
#[inline(always)]
unsafe fn fold8_of_eight(u: &[__m512; 8]) -> __m512 {
    // Register = 128-bit blocks [X_a, Y_a, X_b, Y_b] (X: lanes 0-3 of a half, Y: lanes 4-7).
    // Step 1, two registers at a time: [X_a, X_b, X_c, X_d] + [Y_a, Y_b, Y_c, Y_d].
    let step1 = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    };
    let s = [
        step1(u[0], u[1]),
        step1(u[2], u[3]),
        step1(u[4], u[5]),
        step1(u[6], u[7]),
    ];
    // Step 2 within each block: [s0, s1 | s0', s1'] + [s2, s3 | s2', s3'].
    let step2 = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    };
    let (t0, t1) = (step2(s[0], s[1]), step2(s[2], s[3]));
    // Step 3 within each block: [t0 of each pair] + [t1 of each pair].
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(t0, t1),
        _mm512_shuffle_ps::<0xDD>(t0, t1),
    )
}

/// Value accumulation of one chunk (see `attention_simd::value_tile` for the contract):
/// key blocks outer, then strips of 64 columns, then head tiles of 4. Head `h`'s weight of key
/// `j` is `p[h][j · stride]` (stride 1: one row per head; 16: the transposed probabilities of
/// `attention_lanes512`). Returns how many columns it did (a multiple of 16); the caller runs
/// the rest with the portable form (the same chains).
///
/// # Safety
/// As for [`score_tile`]; `p[h]` holds `(values.len() - 1) · stride + 1` values or more.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn value_tile(
    p: &[&[f32]],
    stride: usize,
    values: &[&[f32]],
    acc: &mut [&mut [f32]],
) -> usize {
    let width = acc[0].len();
    let vecs = width / 16;
    for k0 in (0..values.len()).step_by(VALUE_BLOCK) {
        let vals = &values[k0..(k0 + VALUE_BLOCK).min(values.len())];
        for c in (0..vecs).step_by(4) {
            let strip = (vecs - c).min(4);
            let mut h = 0;
            while h < p.len() {
                let ht = head_tile(p.len() - h);
                let (ph, ah) = (&p[h..h + ht], &mut acc[h..h + ht]);
                match (ht, strip) {
                    (4, 4) => vtile::<4, 4>(ph, stride, k0, vals, ah, c * 16),
                    (2, 4) => vtile::<2, 4>(ph, stride, k0, vals, ah, c * 16),
                    (1, 4) => vtile::<1, 4>(ph, stride, k0, vals, ah, c * 16),
                    _ => {
                        for v in c..c + strip {
                            match ht {
                                4 => vtile::<4, 1>(ph, stride, k0, vals, ah, v * 16),
                                2 => vtile::<2, 1>(ph, stride, k0, vals, ah, v * 16),
                                _ => vtile::<1, 1>(ph, stride, k0, vals, ah, v * 16),
                            }
                        }
                    }
                }
                h += ht;
            }
        }
    }
    vecs * 16
}

/// Columns `col..col + 16·W` of `H` heads over the keys `vals` (keys `k0..` of the chunk; the
/// weights `stride` apart),
/// continuing the accumulators held in `acc`.
#[inline(always)]
unsafe fn vtile<const H: usize, const W: usize>(
    p: &[&[f32]],
    stride: usize,
    k0: usize,
    vals: &[&[f32]],
    acc: &mut [&mut [f32]],
    col: usize,
) {
    let mut a = [[_mm512_setzero_ps(); W]; H];
    for h in 0..H {
        for w in 0..W {
            a[h][w] = _mm512_loadu_ps(acc[h].as_ptr().add(col + 16 * w));
        }
    }
    let mut pp = [std::ptr::null::<f32>(); H];
    for h in 0..H {
        pp[h] = p[h].as_ptr();
    }
    let mut vv = [_mm512_setzero_ps(); W];
    for (j, v) in vals.iter().enumerate() {
        let vp = v.as_ptr().add(col);
        for w in 0..W {
            vv[w] = _mm512_loadu_ps(vp.add(16 * w));
        }
        for h in 0..H {
            let pb = _mm512_set1_ps(*pp[h].add((k0 + j) * stride));
            for w in 0..W {
                a[h][w] = _mm512_fmadd_ps(pb, vv[w], a[h][w]);
            }
        }
    }
    for h in 0..H {
        for w in 0..W {
            _mm512_storeu_ps(acc[h].as_mut_ptr().add(col + 16 * w), a[h][w]);
        }
    }
}
