//! The inner loops of the CPU attention kernel (`attention_core`): score tiles, the softmax
//! exponentials and the value accumulation, each in an AVX2+FMA form and a portable form that
//! give the same bits (checked in `attention_tests`).
//!
//! The order every result follows, whatever the tile shape or the path:
//! - a score is `fold8(lanes) * scale`, where element `i` of the first part (`d1`) and then
//!   element `t` of the rope part (`d2`) are fused-multiply-added into lane `i % 8` (resp. `t % 8`),
//!   lanes starting at +0.0, and `fold8` is `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`;
//! - `exp` is `exp_scalar` below (a degree-7 polynomial on `x - n·ln2`, scaled by `2^n`, for the
//!   `x <= 0` the softmax feeds it; 0 below -87);
//! - a sum of exponentials adds element `j` into lane `j % 8`, folded by `fold8`;
//! - a value accumulator starts at +0.0 and takes `fma(p_j, v_j, acc)` for `j` in key order.
//!
//! Zero-padding a ragged tail adds exact zeros to lanes that are never -0.0, so padded and
//! unpadded loops agree.

use crate::kernels::isa::Isa;

/// The lane fold shared by every path.
#[inline(always)]
pub(crate) fn fold8(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
pub(crate) const MAGIC: f32 = 12_582_912.0;
/// `-ln 2` split in a part with few mantissa bits (exactly -0.693359375, so `n · NEG_LN2_HI` is
/// exact) and the rest.
pub(crate) const NEG_LN2_HI: f32 = -0.693_359_4;
pub(crate) const NEG_LN2_LO: f32 = 2.121_944_4e-4;
/// Below this, `exp` returns 0 (the true value is under 1.7e-38).
pub(crate) const EXP_FLOOR: f32 = -87.0;
/// Taylor coefficients 1/k!, k = 7 down to 0.
pub(crate) const EXP_POLY: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// `e^x` for `x <= 0` (relative error about 1e-7; NaN stays NaN). The AVX2 form performs the
/// same operations lane by lane.
#[inline(always)]
pub(crate) fn exp_scalar(x: f32) -> f32 {
    let t = x.mul_add(LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = n.mul_add(NEG_LN2_HI, x);
    let r = n.mul_add(NEG_LN2_LO, r);
    let mut poly = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        poly = poly.mul_add(r, c);
    }
    let bits = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
    let e = poly * f32::from_bits(bits);
    if x < EXP_FLOOR {
        0.0
    } else {
        e
    }
}

/// Asks the processor to start loading lines `lines` (64 bytes each) of `row` into the caches
/// (no effect on results). The hardware prefetchers stop at every 4 KiB page and the score pass
/// touches each cached row once, so a decode step waits on memory without this.
#[inline(always)]
pub(crate) fn prefetch_lines(row: &[f32], lines: (usize, usize), to_l2: bool) {
    #[cfg(target_arch = "x86_64")]
    for line in lines.0..lines.1 {
        // SAFETY: callers keep `line * 16 < row.len()`, and a prefetch has no
        // architectural effect (SSE, part of the x86_64 baseline).
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
            let line = row.as_ptr().add(line * 16) as *const i8;
            if to_l2 {
                _mm_prefetch(line, _MM_HINT_T1);
            } else {
                _mm_prefetch(line, _MM_HINT_T0);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (row, lines, to_l2);
}

/// Query and key slices of one score tile: `q[h]`, `q_rope[h]` for each head of the tile and
/// `key[k]`, `rope[k]` for each key (all first parts `d1` long, all rope parts `d2` long).
pub(crate) struct ScoreTile<'a> {
    pub q: &'a [&'a [f32]],
    pub q_rope: &'a [&'a [f32]],
    pub key: &'a [&'a [f32]],
    pub rope: &'a [&'a [f32]],
}

/// Key tile width for a head tile of `heads` on `isa` (AVX2 keeps 8 accumulators in its 16
/// registers: a 4 × 3 tile's 12 left too few for its keys and queries, and the compiler kept
/// one accumulator on the stack, its fma chain waiting on a store and a reload every step;
/// AVX-512 holds two keys per register and 16 accumulators in its 32).
pub(crate) fn keys_per_tile(heads: usize, isa: Isa) -> usize {
    match (isa, heads) {
        (Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx, _) => 8,
        (_, 4) => 2,
        (_, 2) => 4,
        _ => 8,
    }
}

/// `out[h][k] = score(q_h, key_k) * scale` for a tile of `heads ∈ {1, 2, 4}` × `keys <=
/// keys_per_tile(heads, isa)` (the AVX2 form runs any other key count one key at a time).
/// `isa` must be supported (`attend` checks).
pub(crate) fn score_tile(t: &ScoreTile<'_>, scale: f32, isa: Isa, out: &mut [[f32; 8]; 4]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `attend` passes only a path `Isa::supported` accepted.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => {
            return unsafe { super::attention_simd512::score_tile(t, scale, out) }
        }
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { avx2::score_tile(t, scale, out) },
        Isa::Portable => {}
    }
    for (h, (q1, q2)) in t.q.iter().zip(t.q_rope).enumerate() {
        for (k, (k1, k2)) in t.key.iter().zip(t.rope).enumerate() {
            let mut lanes = [0.0f32; 8];
            for (i, (a, b)) in q1.iter().zip(k1.iter()).enumerate() {
                lanes[i % 8] = a.mul_add(*b, lanes[i % 8]);
            }
            for (i, (a, b)) in q2.iter().zip(k2.iter()).enumerate() {
                lanes[i % 8] = a.mul_add(*b, lanes[i % 8]);
            }
            out[h][k] = fold8(&lanes) * scale;
        }
    }
}

/// `s[j] = exp(s[j] - max)` in place; returns their sum (lane `j % 8`, `fold8`).
pub(crate) fn exp_sum(s: &mut [f32], max: f32, isa: Isa) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: as in `score_tile` (AVX-512 implies AVX2 and FMA).
        return unsafe { avx2::exp_sum(s, max) };
    }
    let mut lanes = [0.0f32; 8];
    for (j, v) in s.iter_mut().enumerate() {
        *v = exp_scalar(*v - max);
        lanes[j % 8] += *v;
    }
    fold8(&lanes)
}

/// Keys per block of the value pass (AVX2 path).
pub(crate) const VALUE_BLOCK: usize = 64;

/// Heads per tile given `left` heads still to do: 4, 2 or 1.
pub(crate) fn head_tile(left: usize) -> usize {
    match left {
        4.. => 4,
        2 | 3 => 2,
        _ => 1,
    }
}

/// Value accumulation of one chunk: for each head `h` (all heads of a kv head) and each
/// column `c` of `cols`, `acc[h][c] = Σ_j p[h][j] · values[j][c]` in key order (fma, from +0.0).
/// `acc[h]` has the value width; `values[j]` too.
pub(crate) fn value_tile(p: &[&[f32]], values: &[&[f32]], acc: &mut [&mut [f32]], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => {
            // SAFETY: as in `score_tile`.
            let done = unsafe { super::attention_simd512::value_tile(p, 1, values, acc) };
            if done < acc[0].len() {
                value_columns(p, values, acc, done);
            }
            return;
        }
        Isa::Avx2 => {
            // SAFETY: as in `score_tile`.
            unsafe { avx2::value_tile(p, values, acc) };
            return;
        }
        Isa::Portable => {}
    }
    for h in 0..p.len() {
        value_columns(&p[h..h + 1], values, &mut acc[h..h + 1], 0);
    }
}

/// The portable value accumulation of columns `from..` (also the AVX2 path's ragged tail).
#[inline(always)]
fn value_columns(p: &[&[f32]], values: &[&[f32]], acc: &mut [&mut [f32]], from: usize) {
    for (ph, ah) in p.iter().zip(acc.iter_mut()) {
        for (pj, vj) in ph.iter().zip(values) {
            for (a, v) in ah[from..].iter_mut().zip(&vj[from..]) {
                *a = pj.mul_add(*v, *a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tiles index registers by head and column
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn score_tile(t: &ScoreTile<'_>, scale: f32, out: &mut [[f32; 8]; 4]) {
        match (t.q.len(), t.key.len()) {
            (4, 2) => tile::<4, 2>(t, scale, out),
            (2, 4) => tile::<2, 4>(t, scale, out),
            (1, 8) => tile::<1, 8>(t, scale, out),
            (1, 4) => tile::<1, 4>(t, scale, out),
            (1, 2) => tile::<1, 2>(t, scale, out),
            (h, k) => {
                for kk in 0..k {
                    let one = ScoreTile {
                        q: t.q,
                        q_rope: t.q_rope,
                        key: &t.key[kk..kk + 1],
                        rope: &t.rope[kk..kk + 1],
                    };
                    let mut sub = [[0.0f32; 8]; 4];
                    match h {
                        4 => tile::<4, 1>(&one, scale, &mut sub),
                        2 => tile::<2, 1>(&one, scale, &mut sub),
                        _ => {
                            for hh in 0..h {
                                let single = ScoreTile {
                                    q: &t.q[hh..hh + 1],
                                    q_rope: &t.q_rope[hh..hh + 1],
                                    key: one.key,
                                    rope: one.rope,
                                };
                                let mut s1 = [[0.0f32; 8]; 4];
                                tile::<1, 1>(&single, scale, &mut s1);
                                sub[hh][0] = s1[0][0];
                            }
                        }
                    }
                    for hh in 0..h {
                        out[hh][kk] = sub[hh][0];
                    }
                }
            }
        }
    }

    /// One part (`q·key` or `q_rope·rope`) of `H × K` dots into their lane accumulators.
    #[inline(always)]
    unsafe fn part<const H: usize, const K: usize>(
        q: &[&[f32]],
        k: &[&[f32]],
        acc: &mut [[__m256; K]; H],
    ) {
        let n = q[0].len();
        let main = n / 8 * 8;
        let (qp, kp) = (ptrs::<H>(q), ptrs::<K>(k));
        let mut kv = [_mm256_setzero_ps(); K];
        let mut i = 0;
        while i < main {
            for c in 0..K {
                kv[c] = _mm256_loadu_ps(kp[c].add(i));
            }
            for h in 0..H {
                let qv = _mm256_loadu_ps(qp[h].add(i));
                for c in 0..K {
                    acc[h][c] = _mm256_fmadd_ps(qv, kv[c], acc[h][c]);
                }
            }
            i += 8;
        }
        if main < n {
            for c in 0..K {
                kv[c] = padded(&k[c][main..n]);
            }
            for h in 0..H {
                let qv = padded(&q[h][main..n]);
                for c in 0..K {
                    acc[h][c] = _mm256_fmadd_ps(qv, kv[c], acc[h][c]);
                }
            }
        }
    }

    /// The start pointers of the first `N` slices (plain loops: closures and `array::from_fn`
    /// would keep the intrinsics out of line).
    #[inline(always)]
    fn ptrs<const N: usize>(s: &[&[f32]]) -> [*const f32; N] {
        let mut out = [std::ptr::null(); N];
        for (o, x) in out.iter_mut().zip(s) {
            *o = x.as_ptr();
        }
        out
    }

    /// Up to 8 values, zero-padded to a vector.
    #[inline(always)]
    unsafe fn padded(s: &[f32]) -> __m256 {
        let mut b = [0.0f32; 8];
        b[..s.len()].copy_from_slice(s);
        _mm256_loadu_ps(b.as_ptr())
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const H: usize, const K: usize>(
        t: &ScoreTile<'_>,
        scale: f32,
        out: &mut [[f32; 8]; 4],
    ) {
        let mut acc = [[_mm256_setzero_ps(); K]; H];
        part::<H, K>(t.q, t.key, &mut acc);
        if !t.q_rope[0].is_empty() {
            part::<H, K>(t.q_rope, t.rope, &mut acc);
        }
        for h in 0..H {
            for c in 0..K {
                out[h][c] = fold8_avx(acc[h][c]) * scale;
            }
        }
    }

    /// `fold8` of the lanes of `v`, in registers: `(l0+l4, l1+l5, l2+l6, l3+l7)`, then
    /// `(s0+s2, s1+s3)`, then their sum.
    #[inline(always)]
    unsafe fn fold8_avx(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
    }

    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let t = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(MAGIC));
        let n = _mm256_sub_ps(t, _mm256_set1_ps(MAGIC));
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(NEG_LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(NEG_LN2_LO), r);
        let mut poly = _mm256_set1_ps(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(c));
        }
        let bits = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(MAGIC.to_bits() as i32),
        );
        let bits = _mm256_slli_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(127)), 23);
        let e = _mm256_mul_ps(poly, _mm256_castsi256_ps(bits));
        let low = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_FLOOR), _CMP_LT_OQ);
        _mm256_andnot_ps(low, e)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sum(s: &mut [f32], max: f32) -> f32 {
        let m = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        let main = s.len() / 8 * 8;
        let mut j = 0;
        while j < main {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s.as_ptr().add(j)), m));
            _mm256_storeu_ps(s.as_mut_ptr().add(j), e);
            sum = _mm256_add_ps(sum, e);
            j += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        for (k, v) in s[main..].iter_mut().enumerate() {
            *v = exp_scalar(*v - max);
            lanes[k] += *v;
        }
        fold8(&lanes)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn value_tile(p: &[&[f32]], values: &[&[f32]], acc: &mut [&mut [f32]]) {
        let width = acc[0].len();
        let vecs = width / 8;
        // Key blocks outer, then strips of 4 vectors, then head tiles: a strip of a key block
        // (64 rows x 128 bytes) stays in L1 while every head reads it. Accumulators go through
        // memory between key blocks: the same fma chain, so the same bits.
        for k0 in (0..values.len()).step_by(VALUE_BLOCK) {
            let vals = &values[k0..(k0 + VALUE_BLOCK).min(values.len())];
            // One head (GQA with a query head per kv head, MLA's naive prefill): strips of 8
            // vectors, so eight independent fma chains hide the fma latency.
            let mut c0 = 0;
            if p.len() == 1 {
                while c0 + 8 <= vecs {
                    vtile::<1, 8>(p, k0, vals, acc, c0 * 8);
                    c0 += 8;
                }
            }
            for c in (c0..vecs).step_by(4) {
                let strip = (vecs - c).min(4);
                let mut h = 0;
                while h < p.len() {
                    let ht = head_tile(p.len() - h);
                    let (ph, ah) = (&p[h..h + ht], &mut acc[h..h + ht]);
                    match (ht, strip) {
                        (4, 4) => {
                            vtile::<4, 2>(ph, k0, vals, ah, c * 8);
                            vtile::<4, 2>(ph, k0, vals, ah, c * 8 + 16);
                        }
                        (2, 4) => vtile::<2, 4>(ph, k0, vals, ah, c * 8),
                        (1, 4) => vtile::<1, 4>(ph, k0, vals, ah, c * 8),
                        _ => {
                            for v in c..c + strip {
                                match ht {
                                    4 => vtile::<4, 1>(ph, k0, vals, ah, v * 8),
                                    2 => vtile::<2, 1>(ph, k0, vals, ah, v * 8),
                                    _ => vtile::<1, 1>(ph, k0, vals, ah, v * 8),
                                }
                            }
                        }
                    }
                    h += ht;
                }
            }
        }
        if vecs * 8 < width {
            value_columns(p, values, acc, vecs * 8);
        }
    }

    /// Columns `col ..col + 8·W` of `H` heads over the keys `vals` (keys `k0..` of the chunk),
    /// continuing the accumulators held in `acc`.
    #[inline(always)]
    unsafe fn vtile<const H: usize, const W: usize>(
        p: &[&[f32]],
        k0: usize,
        vals: &[&[f32]],
        acc: &mut [&mut [f32]],
        col: usize,
    ) {
        let mut a = [[_mm256_setzero_ps(); W]; H];
        for h in 0..H {
            for w in 0..W {
                a[h][w] = _mm256_loadu_ps(acc[h].as_ptr().add(col + 8 * w));
            }
        }
        let pp = ptrs::<H>(p);
        let mut vv = [_mm256_setzero_ps(); W];
        for (j, v) in vals.iter().enumerate() {
            let vp = v.as_ptr().add(col);
            for w in 0..W {
                vv[w] = _mm256_loadu_ps(vp.add(8 * w));
            }
            for h in 0..H {
                let pb = _mm256_broadcast_ss(&*pp[h].add(k0 + j));
                for w in 0..W {
                    a[h][w] = _mm256_fmadd_ps(pb, vv[w], a[h][w]);
                }
            }
        }
        for h in 0..H {
            for w in 0..W {
                _mm256_storeu_ps(acc[h].as_mut_ptr().add(col + 8 * w), a[h][w]);
            }
        }
    }
}
