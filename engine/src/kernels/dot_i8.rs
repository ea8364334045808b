//! The decode GEMV over int8 weights (`weights::int8`): one x row against int8 weight rows, one
//! row at a time in a chunk's loop on AVX2+FMA, up to four at a time on AVX-512F and for
//! `dot`'s one-row blocks ([`gemv_avx2`], [`gemv_avx512`]). Each weight is widened in
//! registers (`vpmovsxbd`, `vcvtdq2ps`) and multiplied by its block's scale, then
//! fused-multiply-added in the one dot order of [`super::dot`] (element `i` into lane `i % 16`,
//! lanes folded by `fold16`). The general tiles of `dot` give the same bits
//! (`WRow::I8`); these loops exist because the tiles' per-load dispatch on the row type cost
//! them half their speed on one row.

use super::decode_streams::{runs, STREAMS};
use super::dot::{fold16, WRow};
use crate::weights::int8::INT8_BLOCK;

/// `C` int8 weight rows and their scale rows.
type I8Rows<'a, const C: usize> = ([&'a [i8]; C], [&'a [f32]; C]);

/// The int8 rows and their scale rows of `ws` (all `WRow::I8`, or None).
fn i8_rows<'a, const C: usize>(ws: &[WRow<'a>]) -> Option<I8Rows<'a, C>> {
    let mut q: [&[i8]; C] = [&[]; C];
    let mut s: [&[f32]; C] = [&[]; C];
    for c in 0..C {
        match ws.get(c)? {
            WRow::I8 { q: qc, scales } => {
                q[c] = qc;
                s[c] = scales;
            }
            _ => return None,
        }
    }
    Some((q, s))
}

/// The elements past the last whole 16-block (`main..k`), zero-padded to 16 as the tiles of
/// `dot` pad them, added to `lanes` in the dot order (nothing when `main == k`).
#[inline(always)]
fn tail(x: &[f32], q: &[i8], s: &[f32], main: usize, lanes: &mut [f32; 16]) {
    if main == q.len() {
        return;
    }
    for (j, lane) in lanes.iter_mut().enumerate() {
        let i = main + j;
        let (xv, wv) = match i < q.len() {
            true => (x[i], q[i] as f32 * s[i / INT8_BLOCK]),
            false => (0.0, 0.0),
        };
        *lane = xv.mul_add(wv, *lane);
    }
}

/// How far ahead of the rows these loops request data (a hint: no effect on results): when the
/// `C` rows are consecutive rows of one weight, the next call reads the `C` rows after them;
/// otherwise each row is one of `C` runs of rows ([`columns`]) and its successor comes next.
fn ahead<const C: usize>(q: &[&[i8]; C], k: usize) -> usize {
    match q[C - 1].as_ptr() == q[0].as_ptr().wrapping_add((C - 1) * k) {
        true => C * k,
        false => k,
    }
}

/// `out[0][c] = dot(x, ws[c])` for `C` int8 rows on AVX-512F; false (nothing written) when a
/// row is not int8.
///
/// # Safety
/// The processor has AVX-512F; every row has `x.len()` elements and its scales.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn gemv_avx512<const C: usize>(
    x: &[f32],
    ws: &[WRow<'_>],
    out: &mut [[f32; 4]; 4],
) -> bool {
    use std::arch::x86_64::*;
    let Some((q, s)) = i8_rows::<C>(ws) else {
        return false;
    };
    let k = q[0].len();
    let main = k / 16 * 16;
    let far = ahead(&q, k);
    let mut acc = [_mm512_setzero_ps(); C];
    let mut i = 0;
    while i < main {
        if far > 0 && i % 64 == 0 {
            for row in q {
                _mm_prefetch(row.as_ptr().wrapping_add(i + far), _MM_HINT_T0);
            }
        }
        let xv = _mm512_loadu_ps(x.as_ptr().add(i));
        for c in 0..C {
            let b = _mm_loadu_si128(q[c].as_ptr().add(i) as *const __m128i);
            let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
            let w = _mm512_mul_ps(v, _mm512_set1_ps(*s[c].get_unchecked(i / INT8_BLOCK)));
            acc[c] = _mm512_fmadd_ps(xv, w, acc[c]);
        }
        i += 16;
    }
    for c in 0..C {
        let mut lanes = [0.0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc[c]);
        tail(x, q[c], s[c], main, &mut lanes);
        out[0][c] = fold16(&lanes);
    }
    true
}

/// As [`gemv_avx512`] on AVX2+FMA (the 16 lanes in two 8-wide registers).
///
/// # Safety
/// The processor has AVX2 and FMA; rows as for [`gemv_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemv_avx2<const C: usize>(
    x: &[f32],
    ws: &[WRow<'_>],
    out: &mut [[f32; 4]; 4],
) -> bool {
    use std::arch::x86_64::*;
    let Some((q, s)) = i8_rows::<C>(ws) else {
        return false;
    };
    let k = q[0].len();
    let main = k / 16 * 16;
    let far = ahead(&q, k);
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    let mut i = 0;
    while i < main {
        if far > 0 && i % 64 == 0 {
            for row in q {
                _mm_prefetch(row.as_ptr().wrapping_add(i + far), _MM_HINT_T0);
            }
        }
        let x0 = _mm256_loadu_ps(x.as_ptr().add(i));
        let x1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
        for c in 0..C {
            let scale = _mm256_set1_ps(*s[c].get_unchecked(i / INT8_BLOCK));
            let b = _mm_loadu_si128(q[c].as_ptr().add(i) as *const __m128i);
            let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
            let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
            acc[c][0] = _mm256_fmadd_ps(x0, _mm256_mul_ps(lo, scale), acc[c][0]);
            acc[c][1] = _mm256_fmadd_ps(x1, _mm256_mul_ps(hi, scale), acc[c][1]);
        }
        i += 16;
    }
    for c in 0..C {
        let mut lanes = [0.0f32; 16];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[c][0]);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[c][1]);
        tail(x, q[c], s[c], main, &mut lanes);
        out[0][c] = fold16(&lanes);
    }
    true
}

/// Output columns `c0..c1` of one x row (`x`, `k` values) against the int8 weight `q`
/// (`[out, k]`) with its scales (`[out, grid_cols]`), each handed to `set(column, value)`: the
/// columns read as [`super::decode_streams::runs`], a row of each run per call of
/// [`gemv_avx512`] (AVX-512F) or [`gemv_avx2`]. On Zen 3, four neighbouring rows at a time had
/// streamed at 48–59% of a one-stream read loop and one row at a time at 64%.
///
/// # Safety
/// The processor has AVX2+FMA, and AVX-512F when `avx512`; `q` holds
/// `c1` rows of `k` and `scales` `c1` rows of `grid_cols`.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn columns(
    x: &[f32],
    q: &[i8],
    scales: &[f32],
    (k, grid_cols): (usize, usize),
    (c0, c1): (usize, usize),
    avx512: bool,
    set: &mut dyn FnMut(usize, f32),
) {
    let row = |r: usize| WRow::I8 {
        q: &q[r * k..(r + 1) * k],
        scales: &scales[r * grid_cols..(r + 1) * grid_cols],
    };
    let one = |rows: &[WRow<'_>], out: &mut [[f32; 4]; 4]| match (avx512, rows.len() > 1) {
        (true, true) => gemv_avx512::<STREAMS>(x, rows, out),
        (true, false) => gemv_avx512::<1>(x, rows, out),
        (false, true) => gemv_avx2::<STREAMS>(x, rows, out),
        (false, false) => gemv_avx2::<1>(x, rows, out),
    };
    // A call's outputs fill one row of a 4 × 4 tile.
    const _: () = assert!(STREAMS <= 4);
    let (groups, rest) = runs(c0, c1);
    for cols in groups {
        let mut out = [[0.0f32; 4]; 4];
        one(&cols.map(row), &mut out);
        for (c, v) in cols.into_iter().zip(out[0]) {
            set(c, v);
        }
    }
    for c in rest {
        let mut out = [[0.0f32; 4]; 4];
        one(&[row(c)], &mut out);
        set(c, out[0][0]);
    }
}
