//! The pair-dot order of bf16 × bf16 products: what `vdpbf16ps` (AVX512-BF16) computes, the
//! dot of the [`Isa::Avx512Bf16`] path under `--compute bf16` when both operands are bf16 (the
//! activations rounded to bf16, the weights stored as bf16). A scalar emulation here defines it
//! bit for bit, and `engine/tests/it/dot_pairs.rs` holds the instruction to it.
//!
//! Order (fixed, whatever the batch size, tiling, chunking or thread count): the row is cut into
//! 32-element chunks (a ragged tail zero-padded); in chunk `c`, lane `j` (of 16, starting at
//! +0.0) takes the odd element first, then the even one:
//! `lane[j] = ftz(fma(x[32c+2j+1], w[32c+2j+1], daz(lane[j])))`, then
//! `lane[j] = ftz(fma(x[32c+2j], w[32c+2j], lane[j]))`, where `daz` reads a subnormal operand
//! as a zero of its sign and `ftz` writes a subnormal result as a zero of its sign (the bf16
//! operands go through `daz` too); the lanes are then folded as every dot folds them
//! ([`super::dot::fold16`], plain f32 adds). Intel's SDM gives the instruction as these two
//! steps; one million random operand sets (subnormals included, overflow to infinity left out)
//! matched this emulation on a Sapphire Rapids-class Xeon, while the other orders of the two
//! products differed.
//!
//! Why a different order from [`super::dot`]: the product of two bf16 values is exact in f32,
//! but `vdpbf16ps` pairs neighbouring elements in one lane, and it multiplies 32 pairs per
//! instruction with no widening of the weights (twice the work of an f32 fused multiply-add per
//! instruction, on half the register traffic).

use super::dot::fold16;
use super::isa::Isa;
use crate::dtype::bf16_to_f32;

/// Elements per chunk: one 512-bit register of bf16.
pub const CHUNK: usize = 32;

/// `v`, or a zero of its sign when it is subnormal (the instruction's DAZ and FTZ).
#[inline(always)]
fn flush(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

/// One bf16 operand as the instruction reads it.
#[inline(always)]
fn operand(b: u16) -> f32 {
    flush(bf16_to_f32(b))
}

/// The portable definition of the pair-dot of two bf16 rows (`x.len() == w.len()`).
pub fn dot_pairs_portable(x: &[u16], w: &[u16]) -> f32 {
    let k = x.len().min(w.len());
    let at = |s: &[u16], i: usize| if i < k { operand(s[i]) } else { 0.0 };
    let mut lanes = [0.0f32; 16];
    for c in 0..k.div_ceil(CHUNK) {
        for (j, lane) in lanes.iter_mut().enumerate() {
            let (odd, even) = (c * CHUNK + 2 * j + 1, c * CHUNK + 2 * j);
            let a = flush(at(x, odd).mul_add(at(w, odd), flush(*lane)));
            *lane = flush(at(x, even).mul_add(at(w, even), a));
        }
    }
    fold16(&lanes)
}

/// Computes `out[r][c] = dot_pairs(xs[r], ws[c])` for a block of up to 4 × 4 bf16 rows of
/// one length, on `isa`: `vdpbf16ps` on [`Isa::Avx512Bf16`] and [`Isa::Amx`] (when the
/// processor has them), the
/// portable emulation otherwise.
#[inline]
pub fn pairs_block(xs: &[&[u16]], ws: &[&[u16]], isa: Isa, out: &mut [[f32; 4]; 4]) {
    // The SIMD tiles read `k` elements of every row: the rows must agree (a caller's bug
    // otherwise, never input).
    let k = ws.first().map_or(0, |w| w.len());
    assert!(
        xs.iter().chain(ws).all(|s| s.len() == k) && xs.len() <= 4 && ws.len() <= 4,
        "pairs_block: rows of unequal length or a block over 4 x 4"
    );
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx512bf16() && isa.supported() && k > 0 {
        // SAFETY: the processor has AVX-512F and AVX512-BF16 (checked just above).
        return unsafe { avx512bf16::pairs_block(xs, ws, out) };
    }
    let _ = isa;
    for (r, x) in xs.iter().enumerate() {
        for (c, w) in ws.iter().enumerate() {
            out[r][c] = dot_pairs_portable(x, w);
        }
    }
}

/// One bf16 activation row `x` against weight rows `c0..c1` of `w` (`k` elements each, a
/// multiple of [`CHUNK`]): `put(c, dot_pairs(x, w[c]))` for each, in the pair-dot order (the
/// same bits as [`pairs_block`] and [`dot_pairs_portable`]), with `vdpbf16ps` when `isa` has it.
/// The rows are read as [`super::decode_streams::runs`], each row's successor requested ahead:
/// decode's weight streaming.
pub fn gemv_pairs(
    x: &[u16],
    w: &[u16],
    k: usize,
    (c0, c1): (usize, usize),
    isa: Isa,
    put: &mut dyn FnMut(usize, f32),
) {
    // A caller's bug otherwise, never input.
    assert!(
        k.is_multiple_of(CHUNK) && x.len() == k && w.len() >= c1 * k && c0 <= c1,
        "gemv_pairs: x of {} against rows {c0}..{c1} of {k} in {} values",
        x.len(),
        w.len()
    );
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx512bf16() && isa.supported() {
        // SAFETY: the processor has AVX-512F and AVX512-BF16 (checked just above); `w` holds
        // rows up to `c1` of `k` elements, `x` holds `k` (asserted).
        unsafe { avx512bf16::gemv(x, w, k, (c0, c1), put) };
        return;
    }
    let _ = isa;
    for c in c0..c1 {
        put(c, dot_pairs_portable(x, &w[c * k..][..k]));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use super::CHUNK;
    use crate::kernels::dot::fold16;
    use std::arch::x86_64::*;

    /// 32 bf16 values from `p` (the caller guarantees 32 readable elements).
    #[inline(always)]
    unsafe fn load32(p: *const u16) -> __m512bh {
        // SAFETY: `__m512i` and `__m512bh` are both 64 bytes of packed integers.
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const _))
    }

    /// [`super::gemv_pairs`] on `vdpbf16ps`: a row of each run at a time, each row's successor
    /// (the run's next row) requested while it streams by.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn gemv(
        x: &[u16],
        w: &[u16],
        k: usize,
        (c0, c1): (usize, usize),
        put: &mut dyn FnMut(usize, f32),
    ) {
        use crate::kernels::decode_streams::{runs, STREAMS};
        let xp = x.as_ptr();
        let (groups, rest) = runs(c0, c1);
        let last = groups.len();
        for (t, rows) in groups.enumerate() {
            // A run's last row has no successor in the run.
            let ahead = t + 1 < last;
            let acc = dots::<STREAMS>(xp, rows.map(|r| w.as_ptr().add(r * k)), k, ahead);
            for (r, a) in rows.into_iter().zip(acc) {
                put(r, a);
            }
        }
        // The columns left over by the runs, one at a time.
        for c in rest {
            let [a] = dots::<1>(xp, [w.as_ptr().add(c * k)], k, false);
            put(c, a);
        }
    }

    /// The pair-dots of `x` with `N` weight rows of `k` elements (a multiple of `CHUNK`); with
    /// `ahead`, each row's successor in memory is requested as the row streams by (a hint:
    /// results do not change).
    #[inline(always)]
    unsafe fn dots<const N: usize>(
        xp: *const u16,
        wp: [*const u16; N],
        k: usize,
        ahead: bool,
    ) -> [f32; N] {
        let mut acc = [_mm512_setzero_ps(); N];
        let mut i = 0;
        while i < k {
            if ahead {
                for p in wp {
                    _mm_prefetch(p.add(i + k) as *const i8, _MM_HINT_T0);
                }
            }
            let xv = load32(xp.add(i));
            for j in 0..N {
                acc[j] = _mm512_dpbf16_ps(acc[j], xv, load32(wp[j].add(i)));
            }
            i += CHUNK;
        }
        // A loop, not `acc.map(..)`: a closure does not inherit this function's target
        // features, so the store in it was an out-of-line call per run of rows (7% of decode
        // samples each for it and `array::try_map`, `perf` on ds-v3-mini).
        let mut out = [0.0f32; N];
        for (o, a) in out.iter_mut().zip(acc) {
            let mut lanes = [0.0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), a);
            *o = fold16(&lanes);
        }
        out
    }

    /// Dispatches to the tile with the block's constant shape, so accumulators stay in
    /// registers (16 of 32 at 4 × 4).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn pairs_block(xs: &[&[u16]], ws: &[&[u16]], out: &mut [[f32; 4]; 4]) {
        // Any other shape is empty: `pairs_block` checked there are at most 4 × 4.
        crate::kernels::dot::tile_for_shape!(tile, xs, ws, out, {})
    }

    /// `R` x rows against `C` weight rows; each `vdpbf16ps` adds 32 products into one
    /// accumulator. When the weight rows are consecutive rows of one matrix, the next block's
    /// rows are prefetched (a hint: results do not change).
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const R: usize, const C: usize>(
        xs: &[&[u16]],
        ws: &[&[u16]],
        out: &mut [[f32; 4]; 4],
    ) {
        let k = ws[0].len();
        let main = k / CHUNK * CHUNK;
        let wp: [*const u16; C] = std::array::from_fn(|c| ws[c].as_ptr());
        let xp: [*const u16; R] = std::array::from_fn(|r| xs[r].as_ptr());
        let ahead = if C > 1 && wp[C - 1] == wp[0].wrapping_add((C - 1) * k) {
            C * k
        } else {
            0
        };
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut i = 0;
        while i < main {
            if ahead > 0 {
                for p in wp {
                    _mm_prefetch(p.wrapping_add(i + ahead) as *const i8, _MM_HINT_T0);
                }
            }
            let wv: [__m512bh; C] = std::array::from_fn(|c| load32(wp[c].add(i)));
            for r in 0..R {
                let xv = load32(xp[r].add(i));
                for c in 0..C {
                    acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, wv[c]);
                }
            }
            i += CHUNK;
        }
        if main < k {
            let pad = |s: &[u16]| {
                let mut b = [0u16; CHUNK];
                b[..k - main].copy_from_slice(&s[main..k]);
                b
            };
            let wt: [[u16; CHUNK]; C] = std::array::from_fn(|c| pad(ws[c]));
            for r in 0..R {
                let xv = load32(pad(xs[r]).as_ptr());
                for c in 0..C {
                    acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, load32(wt[c].as_ptr()));
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                let mut lanes = [0.0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r][c]);
                out[r][c] = fold16(&lanes);
            }
        }
    }
}
