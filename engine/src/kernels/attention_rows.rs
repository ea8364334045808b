//! Prefill attention on AVX2+FMA with query rows in register tiles: `attention_core`'s algorithm
//! (the same chunks of `CHUNK` keys, the same per-chunk partial of each (row, head), folded in the
//! same order), computed for a block of [`BLOCK`] query rows at once, so that a key or value
//! loaded into a register serves several rows.
//!
//! Per block, kv head and chunk, the chunk's keys (`d1` part then rope part, each zero-padded to
//! a multiple of 8) and values are copied to aligned buffers, then for each query head of the
//! kv head:
//! - scores in tiles of 2 rows × 4 keys (8 accumulators: one 8-lane `fma` chain per score over
//!   the padded key, as `attention_simd` fixes the order), folded four at a time in registers
//!   with the additions of `fold8`, then multiplied by the scale;
//! - per row, the max and `exp_sum` of its visible scores, as `chunk_partial` computes them;
//! - values in tiles of 6 rows × 16 columns (12 accumulators): `fma(p_j, v_j, acc)` in key
//!   order from +0, the keys every row of the tile sees first, then each row's own rest (rows
//!   of the chunk on the diagonal see different numbers of keys);
//! - the chunk's `(m, l, acc)` folded into the row's running state with `fold_head`.
//!
//! Every row's arithmetic is what the per-row form performs, so the bits are the same whatever
//! the block, the thread count or the number of query rows (`attention_tests`). The per-row
//! form ran ds-v3-mini's naive prefill at about one multiply-add per cycle (`benches/
//! attention_prefill.rs`), building slices and scores row by row.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::aligned::aligned;
use crate::backend::AttentionParams;
use crate::kernels::attention_combine::fold_head;
use crate::kernels::attention_core::{KeyRows, CHUNK};
use crate::kernels::attention_simd::exp_sum;
use crate::kernels::isa::Isa;
use crate::tensor::Tensor;

/// Query rows per task.
const BLOCK: usize = 24;
/// Rows and keys of a score tile.
const SCORE_ROWS: usize = 2;
const SCORE_KEYS: usize = 4;
/// Rows and 8-wide column vectors of a value tile.
const VALUE_ROWS: usize = 6;
const VALUE_VECS: usize = 2;

/// Whether `attend` runs this form for many query rows on `isa`: AVX2, no sliding window (a
/// block's rows then all start at chunk 0), values a multiple of 8 wide.
pub(crate) fn applies(isa: Isa, p: &AttentionParams) -> bool {
    isa == Isa::Avx2 && p.sliding_window.is_none() && p.v_dim.is_multiple_of(8)
}

/// Every query row's output into `out` (`[tq, heads·v_dim]`), a task per block of rows.
pub(crate) fn attend_rows<R: KeyRows>(
    q: &Tensor,
    q_rope: Option<&Tensor>,
    keys: &R,
    p: &AttentionParams,
    out: &mut [f32],
    parallel: bool,
) {
    let width = p.heads * p.v_dim;
    let run = |bufs: &mut Buffers, (b, o): (usize, &mut [f32])| {
        // SAFETY: `applies` admitted only the AVX2 path, which `attend` checked this processor
        // runs.
        unsafe { block(q, q_rope, keys, p, b * BLOCK, o, bufs) }
    };
    if parallel {
        out.par_chunks_mut(BLOCK * width)
            .enumerate()
            .for_each_init(Buffers::default, run);
    } else {
        let mut bufs = Buffers::default();
        for x in out.chunks_mut(BLOCK * width).enumerate() {
            run(&mut bufs, x);
        }
    }
}

/// A task's scratch, reused across its kv heads and chunks.
#[derive(Default)]
struct Buffers {
    queries: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    chunk: Vec<f32>,
    state: Vec<f32>,
}

/// Rows `r0..` of the output (as many as `out` holds), every head.
#[target_feature(enable = "avx2,fma")]
unsafe fn block<R: KeyRows>(
    q: &Tensor,
    q_rope: Option<&Tensor>,
    keys: &R,
    p: &AttentionParams,
    r0: usize,
    out: &mut [f32],
    b: &mut Buffers,
) {
    let (d1, d2, vd) = (p.d1, p.d2, p.v_dim);
    let (width, group) = (p.heads * vd, p.heads / p.kv_heads);
    let rows = out.len() / width;
    let d1p = d1.next_multiple_of(8);
    let dp = d1p + d2.next_multiple_of(8);
    let (first, last) = (p.q_start + r0, p.q_start + r0 + rows - 1);
    let qs = aligned(&mut b.queries, group * rows * dp);
    let ks = aligned(&mut b.keys, CHUNK * dp);
    let vs = aligned(&mut b.values, CHUNK * vd);
    let scores = aligned(&mut b.scores, rows * CHUNK);
    let chunk = aligned(&mut b.chunk, rows * vd);
    // Per (head of the group, row): the running `[M, L, O (v_dim)]`.
    let slot = vd + 2;
    b.state.resize(group * rows * slot, 0.0);
    let state = &mut b.state;
    for g in 0..p.kv_heads {
        for hh in 0..group {
            let h = g * group + hh;
            for r in 0..rows {
                let dst = &mut qs[(hh * rows + r) * dp..][..dp];
                dst.fill(0.0);
                dst[..d1].copy_from_slice(&q.row(r0 + r)[h * d1..][..d1]);
                if let Some(qr) = q_rope {
                    dst[d1p..d1p + d2].copy_from_slice(&qr.row(r0 + r)[h * d2..][..d2]);
                }
            }
        }
        for c in 0..=last / CHUNK {
            let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(last + 1));
            let n = hi - lo;
            for j in 0..n {
                let dst = &mut ks[j * dp..][..dp];
                dst.fill(0.0);
                dst[..d1].copy_from_slice(&keys.key(lo + j)[g * d1..][..d1]);
                dst[d1p..d1p + d2].copy_from_slice(&keys.rope(lo + j)[..d2]);
                vs[j * vd..][..vd].copy_from_slice(&keys.value(lo + j)[g * vd..][..vd]);
            }
            // Rows `ra..` see this chunk; row `r` sees its first `seen(r)` keys.
            let ra = lo.saturating_sub(first);
            let seen = |r: usize| (first + r + 1).min(hi) - lo;
            for hh in 0..group {
                let qh = &qs[hh * rows * dp..];
                score_rows(qh, ks, (ra, rows), n, dp, p.scale, scores);
                let mut ml = [(0.0f32, 0.0f32); BLOCK];
                for r in ra..rows {
                    let s = &mut scores[r * CHUNK..][..seen(r)];
                    let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    ml[r] = (m, exp_sum(s, m, Isa::Avx2));
                }
                chunk[ra * vd..].fill(0.0);
                value_rows(scores, vs, vd, (ra, rows), &seen, chunk);
                for r in ra..rows {
                    let st = &mut state[(hh * rows + r) * slot..][..slot];
                    let (acc, (m, l)) = (&chunk[r * vd..][..vd], ml[r]);
                    let (ms, rest) = st.split_at_mut(1);
                    let (ls, o) = rest.split_at_mut(1);
                    if c == 0 {
                        (ms[0], ls[0]) = (m, l);
                        o.copy_from_slice(acc);
                    } else {
                        fold_head(&mut ms[0], &mut ls[0], o, m, l, acc);
                    }
                }
            }
        }
        for hh in 0..group {
            let h = g * group + hh;
            for r in 0..rows {
                let st = &state[(hh * rows + r) * slot..][..slot];
                for (x, acc) in out[r * width + h * vd..][..vd].iter_mut().zip(&st[2..]) {
                    *x = *acc / st[1];
                }
            }
        }
    }
}

/// `scores[r·CHUNK + j]` for rows `ra..rows` of `qs` (`dp` apart) and the `n` keys of `ks`
/// (`dp` apart): key tiles outside, so a tile's keys stay in registers' reach while every row
/// tile reads them.
#[inline(always)]
unsafe fn score_rows(
    qs: &[f32],
    ks: &[f32],
    (ra, rows): (usize, usize),
    n: usize,
    dp: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let mut j = 0;
    while j < n {
        let kn = (n - j).min(SCORE_KEYS);
        let mut r = ra;
        while r < rows {
            let rn = (rows - r).min(SCORE_ROWS);
            let t = (
                qs.as_ptr().add(r * dp),
                ks.as_ptr().add(j * dp),
                dp,
                scores.as_mut_ptr().add(r * CHUNK + j),
            );
            match (rn, kn) {
                (2, 4) => score_tile::<2, 4>(t, scale),
                (2, 3) => score_tile::<2, 3>(t, scale),
                (2, 2) => score_tile::<2, 2>(t, scale),
                (2, _) => score_tile::<2, 1>(t, scale),
                (_, 4) => score_tile::<1, 4>(t, scale),
                (_, 3) => score_tile::<1, 3>(t, scale),
                (_, 2) => score_tile::<1, 2>(t, scale),
                _ => score_tile::<1, 1>(t, scale),
            }
            r += rn;
        }
        j += kn;
    }
}

/// `R` rows × `K` keys of scores: `(queries, keys, dp, out)`, rows and keys `dp` apart, out rows
/// `CHUNK` apart.
#[inline(always)]
unsafe fn score_tile<const R: usize, const K: usize>(
    (q, k, dp, out): (*const f32, *const f32, usize, *mut f32),
    scale: f32,
) {
    let mut acc = [[_mm256_setzero_ps(); K]; R];
    let mut i = 0;
    while i < dp {
        let mut kv = [_mm256_setzero_ps(); K];
        for (c, v) in kv.iter_mut().enumerate() {
            *v = _mm256_load_ps(k.add(c * dp + i));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let qv = _mm256_load_ps(q.add(r * dp + i));
            for c in 0..K {
                row[c] = _mm256_fmadd_ps(qv, kv[c], row[c]);
            }
        }
        i += 8;
    }
    let sc = _mm_set1_ps(scale);
    for (r, row) in acc.iter().enumerate() {
        let o = out.add(r * CHUNK);
        if K == 4 {
            _mm_storeu_ps(o, _mm_mul_ps(fold8x4([row[0], row[1], row[2], row[3]]), sc));
        } else {
            for (c, v) in row.iter().enumerate() {
                *o.add(c) = fold8(*v) * scale;
            }
        }
    }
}

/// `attention_simd::fold8` of the lanes of `v`: `s_i = l_i + l_{i+4}`, then
/// `(s0 + s2) + (s1 + s3)`.
#[inline(always)]
unsafe fn fold8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
}

/// [`fold8`] of four vectors at once, the same additions: `[fold8(a0), .., fold8(a3)]`.
#[inline(always)]
unsafe fn fold8x4(a: [__m256; 4]) -> __m128 {
    // [s(a0) | s(a1)] and [s(a2) | s(a3)], s_i = l_i + l_{i+4}
    let s01 = _mm256_add_ps(
        _mm256_permute2f128_ps(a[0], a[1], 0x20),
        _mm256_permute2f128_ps(a[0], a[1], 0x31),
    );
    let s23 = _mm256_add_ps(
        _mm256_permute2f128_ps(a[2], a[3], 0x20),
        _mm256_permute2f128_ps(a[2], a[3], 0x31),
    );
    // Each half reordered [s0, s2, s1, s3], so the pairwise sums are s0 + s2 and s1 + s3:
    // [t(a0), t(a2) | t(a1), t(a3)], then each t0 + t1.
    let t = _mm256_hadd_ps(
        _mm256_permute_ps(s01, 0b11_01_10_00),
        _mm256_permute_ps(s23, 0b11_01_10_00),
    );
    let f = _mm256_hadd_ps(t, t);
    _mm_unpacklo_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1))
}

/// `chunk[r·vd ..]` += the weights `scores[r·CHUNK + j]` times value rows `vs[j·vd ..]` for rows
/// `ra..rows`, row `r` over its first `seen(r)` keys, in key order.
#[inline(always)]
unsafe fn value_rows(
    scores: &[f32],
    vs: &[f32],
    vd: usize,
    (ra, rows): (usize, usize),
    seen: &dyn Fn(usize) -> usize,
    chunk: &mut [f32],
) {
    let mut r = ra;
    while r < rows {
        let rn = (rows - r).min(VALUE_ROWS);
        // Rows see keys in order of position: the tile's first row sees the fewest.
        let common = seen(r);
        for col in (0..vd).step_by(8 * VALUE_VECS) {
            let wn = (vd - col).min(8 * VALUE_VECS) / 8;
            let t = (
                scores.as_ptr().add(r * CHUNK),
                vs.as_ptr().add(col),
                vd,
                chunk.as_mut_ptr().add(r * vd + col),
            );
            match (rn, wn) {
                (6, 2) => value_tile::<6, 2>(t, (0, common)),
                (5, 2) => value_tile::<5, 2>(t, (0, common)),
                (4, 2) => value_tile::<4, 2>(t, (0, common)),
                (3, 2) => value_tile::<3, 2>(t, (0, common)),
                (2, 2) => value_tile::<2, 2>(t, (0, common)),
                (_, 2) => value_tile::<1, 2>(t, (0, common)),
                (6, _) => value_tile::<6, 1>(t, (0, common)),
                (5, _) => value_tile::<5, 1>(t, (0, common)),
                (4, _) => value_tile::<4, 1>(t, (0, common)),
                (3, _) => value_tile::<3, 1>(t, (0, common)),
                (2, _) => value_tile::<2, 1>(t, (0, common)),
                _ => value_tile::<1, 1>(t, (0, common)),
            }
            for i in 1..rn {
                let t = (
                    scores.as_ptr().add((r + i) * CHUNK),
                    vs.as_ptr().add(col),
                    vd,
                    chunk.as_mut_ptr().add((r + i) * vd + col),
                );
                match wn {
                    2 => value_tile::<1, 2>(t, (common, seen(r + i))),
                    _ => value_tile::<1, 1>(t, (common, seen(r + i))),
                }
            }
        }
        r += rn;
    }
}

/// `R` rows × `W` vectors of value accumulators over keys `j0..j1`: `(weights, values, vd,
/// acc)`, weight rows `CHUNK` apart, value and accumulator rows `vd` apart.
#[inline(always)]
unsafe fn value_tile<const R: usize, const W: usize>(
    (p, v, vd, acc): (*const f32, *const f32, usize, *mut f32),
    (j0, j1): (usize, usize),
) {
    if j0 >= j1 {
        return;
    }
    let mut a = [[_mm256_setzero_ps(); W]; R];
    for (r, row) in a.iter_mut().enumerate() {
        for (w, x) in row.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(acc.add(r * vd + 8 * w));
        }
    }
    for j in j0..j1 {
        let mut vv = [_mm256_setzero_ps(); W];
        for (w, x) in vv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(v.add(j * vd + 8 * w));
        }
        for (r, row) in a.iter_mut().enumerate() {
            let pb = _mm256_broadcast_ss(&*p.add(r * CHUNK + j));
            for w in 0..W {
                row[w] = _mm256_fmadd_ps(pb, vv[w], row[w]);
            }
        }
    }
    for (r, row) in a.iter().enumerate() {
        for (w, x) in row.iter().enumerate() {
            _mm256_storeu_ps(acc.add(r * vd + 8 * w), *x);
        }
    }
}
