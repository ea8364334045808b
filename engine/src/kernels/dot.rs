//! The one dot-product order every CPU linear uses, in a portable, an AVX2+FMA and an AVX-512F
//! form that give bit-identical results (checked in `engine/tests/it/dot.rs`); the form is the
//! [`Isa`] a caller passes (normally [`super::isa::active`]).
//!
//! Order (fixed, whatever the batch size, thread count or instruction set): element `i` is
//! accumulated with a fused multiply-add into lane `i % 16` (lanes start at +0.0; a ragged tail is
//! zero-padded), then the lanes are folded as `s[j] = lane[j] + lane[j + 8]` and
//! `((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))`. AVX2 keeps the 16 lanes in two 8-wide
//! registers, AVX-512 in one 16-wide register: the same 16 chains. Because every output element
//! has its own accumulation chain in this order, blocking over rows (several x rows or weight rows
//! at once) never changes a result: this is what makes the linear batch-invariant.

use super::isa::Isa;
use crate::dtype::{bf16_to_f32, f16_to_f32};
use crate::weights::int8::INT8_BLOCK;

/// `match (xs.len(), ws.len())` over every block shape up to 4 × 4: calls the tile kernel
/// `$tile::<R, C>(xs, ws, out)` of that constant shape (so its accumulators stay in registers),
/// or evaluates `$other` for any other shape. The AVX-512 dot and the `vdpbf16ps` tiles
/// (`dot_pairs`) dispatch through it.
macro_rules! tile_for_shape {
    ($tile:ident, $xs:expr, $ws:expr, $out:expr, $other:expr) => {
        match ($xs.len(), $ws.len()) {
            (1, 1) => $tile::<1, 1>($xs, $ws, $out),
            (1, 2) => $tile::<1, 2>($xs, $ws, $out),
            (1, 3) => $tile::<1, 3>($xs, $ws, $out),
            (1, 4) => $tile::<1, 4>($xs, $ws, $out),
            (2, 1) => $tile::<2, 1>($xs, $ws, $out),
            (2, 2) => $tile::<2, 2>($xs, $ws, $out),
            (2, 3) => $tile::<2, 3>($xs, $ws, $out),
            (2, 4) => $tile::<2, 4>($xs, $ws, $out),
            (3, 1) => $tile::<3, 1>($xs, $ws, $out),
            (3, 2) => $tile::<3, 2>($xs, $ws, $out),
            (3, 3) => $tile::<3, 3>($xs, $ws, $out),
            (3, 4) => $tile::<3, 4>($xs, $ws, $out),
            (4, 1) => $tile::<4, 1>($xs, $ws, $out),
            (4, 2) => $tile::<4, 2>($xs, $ws, $out),
            (4, 3) => $tile::<4, 3>($xs, $ws, $out),
            (4, 4) => $tile::<4, 4>($xs, $ws, $out),
            _ => $other,
        }
    };
}
pub(crate) use tile_for_shape;

/// A weight row in one of the supported storage types.
#[derive(Clone, Copy, Debug)]
pub enum WRow<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [u16]),
    /// int8 elements with the row's scales, one per 32 (`weights::int8`): element `i` is
    /// `q[i] as f32 * scales[i / 32]`, rounded once, and enters the dot as that f32.
    I8 {
        q: &'a [i8],
        scales: &'a [f32],
    },
}

impl WRow<'_> {
    #[inline(always)]
    pub fn len(&self) -> usize {
        match self {
            WRow::F32(s) => s.len(),
            WRow::BF16(s) | WRow::F16(s) => s.len(),
            WRow::I8 { q, .. } => q.len(),
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
            WRow::I8 { q, scales } => q[i] as f32 * scales[i / INT8_BLOCK],
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

/// Whether the kernels' active path ([`super::isa::active`]) uses AVX2+FMA(+F16C) instructions
/// (true on the AVX-512 path too; false when the processor lacks them or `--isa portable`).
pub fn simd_available() -> bool {
    super::isa::active().has_avx2()
}

/// Computes `out[r][c] = dot(xs[r], ws[c])` for a small block (`xs.len() <= 4`, `ws.len() <= 4`)
/// in the fixed order, on `isa` (which must be supported: see [`Isa::supported`]).
#[inline]
pub fn dot_block(xs: &[&[f32]], ws: &[WRow<'_>], isa: Isa, out: &mut [[f32; 4]; 4]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: an `Isa` other than `Portable` is only used when the processor supports it.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx if isa.supported() => {
            return unsafe { avx512::dot_block(xs, ws, out) }
        }
        Isa::Avx2 if isa.supported() => return unsafe { avx2::dot_block(xs, ws, out) },
        _ => {}
    }
    let _ = isa;
    for (r, x) in xs.iter().enumerate() {
        for (c, w) in ws.iter().enumerate() {
            out[r][c] = dot_portable(x, *w);
        }
    }
}

/// A block larger than the tile kernels take, as 2×2 tiles of `tile` (each dot keeps its order).
#[inline(always)]
fn split_block(
    xs: &[&[f32]],
    ws: &[WRow<'_>],
    out: &mut [[f32; 4]; 4],
    mut tile: impl FnMut(&[&[f32]], &[WRow<'_>], &mut [[f32; 4]; 4]),
) {
    let (r, c) = (xs.len(), ws.len());
    for r0 in (0..r).step_by(2) {
        for c0 in (0..c).step_by(2) {
            let (rn, cn) = ((r - r0).min(2), (c - c0).min(2));
            let mut sub = [[0.0f32; 4]; 4];
            tile(&xs[r0..r0 + rn], &ws[c0..c0 + cn], &mut sub);
            for i in 0..rn {
                out[r0 + i][c0..c0 + cn].copy_from_slice(&sub[i][..cn]);
            }
        }
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

/// Adds the elements past the last whole 16-block (`main..x.len()`), zero-padded to 16, to
/// `lanes` in the dot order (nothing when `main` is the end).
#[inline(always)]
pub(super) fn add_tail16(x: &[f32], w: WRow<'_>, main: usize, lanes: &mut [f32; 16]) {
    let k = x.len();
    if main < k {
        let mut wt = [0.0f32; 16];
        let mut xt = [0.0f32; 16];
        tail16(w, main, &mut wt);
        xtail16(x, main, k, &mut xt);
        for j in 0..16 {
            lanes[j] = xt[j].mul_add(wt[j], lanes[j]);
        }
    }
}

/// Zero-padded copy of a tail of up to 16 activations.
#[inline(always)]
fn xtail16(x: &[f32], start: usize, k: usize, buf: &mut [f32; 16]) {
    for (j, b) in buf.iter_mut().enumerate() {
        if start + j < k {
            *b = x[start + j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{fold16, tail16, WRow, INT8_BLOCK};
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
            // `i` is a multiple of 8: the 8 elements share one scale.
            WRow::I8 { q, scales } => {
                let b = _mm_loadl_epi64(q.as_ptr().add(i) as *const __m128i);
                let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                _mm256_mul_ps(v, _mm256_set1_ps(*scales.get_unchecked(i / INT8_BLOCK)))
            }
        }
    }

    /// Dispatches a block to the tile kernel with the matching constant shape, so the
    /// accumulators stay in registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_block(xs: &[&[f32]], ws: &[WRow<'_>], out: &mut [[f32; 4]; 4]) {
        use super::super::dot_i8::gemv_avx2;
        let gemv_i8 = xs.len() == 1
            && match ws.len() {
                1 => gemv_avx2::<1>(xs[0], ws, out),
                2 => gemv_avx2::<2>(xs[0], ws, out),
                3 => gemv_avx2::<3>(xs[0], ws, out),
                4 => gemv_avx2::<4>(xs[0], ws, out),
                _ => false,
            };
        if gemv_i8 {
            return;
        }
        if xs.len() == 1 && ws.iter().all(|w| matches!(w, WRow::BF16(_))) {
            match ws.len() {
                1 => return gemv_bf16::<1>(xs[0], ws, out),
                2 => return gemv_bf16::<2>(xs[0], ws, out),
                3 => return gemv_bf16::<3>(xs[0], ws, out),
                4 => return gemv_bf16::<4>(xs[0], ws, out),
                _ => {}
            }
        }
        match (xs.len(), ws.len()) {
            (1, 1) => tile::<1, 1>(xs, ws, out),
            (1, 2) => tile::<1, 2>(xs, ws, out),
            (1, 3) => tile::<1, 3>(xs, ws, out),
            (1, 4) => tile::<1, 4>(xs, ws, out),
            (2, 1) => tile::<2, 1>(xs, ws, out),
            (2, 2) => tile::<2, 2>(xs, ws, out),
            (3, 1) => tile::<3, 1>(xs, ws, out),
            (3, 2) => tile::<3, 2>(xs, ws, out),
            // Larger blocks are split into tiles; each dot keeps its own order.
            _ => super::split_block(xs, ws, out, |x, w, o| dot_block(x, w, o)),
        }
    }

    /// One x row against `C` bf16 weight rows, widening 16 weights with one load and two
    /// unpacks: register `a` then holds elements {0-3, 8-11} of each 16-block and `b` elements
    /// {4-7, 12-15} (the x row is permuted to match), the same 16 lanes as `tile` in another
    /// register layout, put back in lane order before the fold.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemv_bf16<const C: usize>(
        x: &[f32],
        ws: &[WRow<'_>],
        out: &mut [[f32; 4]; 4],
    ) {
        let k = ws[0].len();
        let main = k / 16 * 16;
        let ptrs: [*const u16; C] = std::array::from_fn(|c| match ws[c] {
            WRow::BF16(s) => s.as_ptr(),
            _ => std::ptr::null(),
        });
        // When the rows are consecutive rows of one weight (a linear's GEMV), the next call
        // reads the C rows after them: prefetch those, a line per row every 32 elements. C rows
        // of a 1024-wide weight span only 2 pages and the hardware prefetchers stop at each
        // page boundary. A hint: no effect on results.
        let ahead = if ptrs[C - 1] == ptrs[0].wrapping_add((C - 1) * k) {
            C * k
        } else {
            0
        };
        let zero = _mm256_setzero_si256();
        let mut acc = [[_mm256_setzero_ps(); 2]; C];
        let mut i = 0;
        while i < main {
            if ahead > 0 && i % 32 == 0 {
                for p in ptrs {
                    _mm_prefetch(p.wrapping_add(i + ahead) as *const i8, _MM_HINT_T0);
                }
            }
            let x0 = _mm256_loadu_ps(x.as_ptr().add(i));
            let x1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
            let xa = _mm256_permute2f128_ps(x0, x1, 0x20);
            let xb = _mm256_permute2f128_ps(x0, x1, 0x31);
            for c in 0..C {
                let w = _mm256_loadu_si256(ptrs[c].add(i) as *const __m256i);
                let wa = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, w));
                let wb = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, w));
                acc[c][0] = _mm256_fmadd_ps(xa, wa, acc[c][0]);
                acc[c][1] = _mm256_fmadd_ps(xb, wb, acc[c][1]);
            }
            i += 16;
        }
        for c in 0..C {
            let (mut a, mut b) = ([0.0f32; 8], [0.0f32; 8]);
            _mm256_storeu_ps(a.as_mut_ptr(), acc[c][0]);
            _mm256_storeu_ps(b.as_mut_ptr(), acc[c][1]);
            let mut lanes = [0.0f32; 16];
            lanes[..4].copy_from_slice(&a[..4]);
            lanes[4..8].copy_from_slice(&b[..4]);
            lanes[8..12].copy_from_slice(&a[4..]);
            lanes[12..].copy_from_slice(&b[4..]);
            super::add_tail16(x, ws[c], main, &mut lanes);
            out[0][c] = fold16(&lanes);
        }
    }

    /// A weight row read 8 elements at a time as f32, in one storage type, so a tile's main loop
    /// holds no dispatch on the type (a `WRow` match per load compiled to a jump table per row
    /// and step, and pushed accumulators onto the stack).
    trait Load8: Copy {
        unsafe fn load8(self, i: usize) -> __m256;
    }

    /// A bf16 row.
    #[derive(Clone, Copy)]
    struct Bf16Row(*const u16);

    impl Load8 for Bf16Row {
        #[inline(always)]
        unsafe fn load8(self, i: usize) -> __m256 {
            let h = _mm_loadu_si128(self.0.add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }

    /// An f32 row.
    #[derive(Clone, Copy)]
    struct F32Row(*const f32);

    impl Load8 for F32Row {
        #[inline(always)]
        unsafe fn load8(self, i: usize) -> __m256 {
            _mm256_loadu_ps(self.0.add(i))
        }
    }

    /// Any row (other storage types, or a block mixing them): dispatches per load.
    impl Load8 for WRow<'_> {
        #[inline(always)]
        unsafe fn load8(self, i: usize) -> __m256 {
            load8(self, i)
        }
    }

    /// `R` x rows against `C` weight rows (R·C ≤ 4: 2·R·C accumulators in registers).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize>(
        xs: &[&[f32]],
        ws: &[WRow<'_>],
        out: &mut [[f32; 4]; 4],
    ) {
        let mut bf16 = [Bf16Row(std::ptr::null()); C];
        let mut f32s = [F32Row(std::ptr::null()); C];
        let (mut all_bf16, mut all_f32) = (true, true);
        for c in 0..C {
            match ws[c] {
                WRow::BF16(s) => bf16[c] = Bf16Row(s.as_ptr()),
                _ => all_bf16 = false,
            }
            match ws[c] {
                WRow::F32(s) => f32s[c] = F32Row(s.as_ptr()),
                _ => all_f32 = false,
            }
        }
        if all_bf16 {
            tile_rows::<R, C, _>(xs, ws, bf16, out)
        } else if all_f32 {
            tile_rows::<R, C, _>(xs, ws, f32s, out)
        } else {
            let mut rows = [ws[0]; C];
            rows.copy_from_slice(&ws[..C]);
            tile_rows::<R, C, _>(xs, ws, rows, out)
        }
    }

    /// [`tile`]'s body for weight rows of one [`Load8`] type (`rows[c]` reads `ws[c]`).
    #[inline(always)]
    unsafe fn tile_rows<const R: usize, const C: usize, L: Load8>(
        xs: &[&[f32]],
        ws: &[WRow<'_>],
        rows: [L; C],
        out: &mut [[f32; 4]; 4],
    ) {
        let k = ws[0].len();
        let main = k / 16 * 16;
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        let mut i = 0;
        while i < main {
            // One half of the 16 lanes at a time: C weight vectors and one x vector live beside
            // the accumulators (3 × 2 tiles: 12 + 2 + 1 of the 16 registers).
            for h in 0..2 {
                let mut wv = [_mm256_setzero_ps(); C];
                for c in 0..C {
                    wv[c] = rows[c].load8(i + 8 * h);
                }
                for r in 0..R {
                    let x = _mm256_loadu_ps(xs[r].as_ptr().add(i + 8 * h));
                    for c in 0..C {
                        acc[r][c][h] = _mm256_fmadd_ps(x, wv[c], acc[r][c][h]);
                    }
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
                super::xtail16(xs[r], main, k, &mut xt);
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{fold16, tail16, xtail16, WRow, INT8_BLOCK};
    use std::arch::x86_64::*;

    /// 16 weight elements from `i` as f32 (lane `j` = element `i + j`).
    #[inline(always)]
    unsafe fn load16(w: WRow<'_>, i: usize) -> __m512 {
        match w {
            WRow::F32(s) => _mm512_loadu_ps(s.as_ptr().add(i)),
            WRow::BF16(s) => {
                let h = _mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            }
            WRow::F16(s) => {
                _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i))
            }
            // `i` is a multiple of 16: the 16 elements share one scale.
            WRow::I8 { q, scales } => {
                let b = _mm_loadu_si128(q.as_ptr().add(i) as *const __m128i);
                let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
                _mm512_mul_ps(v, _mm512_set1_ps(*scales.get_unchecked(i / INT8_BLOCK)))
            }
        }
    }

    /// As `avx2::dot_block`, with one 16-lane accumulator per dot. One x row against bf16
    /// weights (the decode GEMV) runs AVX2's `gemv_bf16`, which gives the same bits and streams
    /// its rows with prefetches: on Zen 5 it decoded ds-v3-mini at 83 tok/s where the 512-bit
    /// tile reached 58–63 (`troupe bench -p 0 -n 64`, `--isa avx2` vs `avx512`, same run).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot_block(xs: &[&[f32]], ws: &[WRow<'_>], out: &mut [[f32; 4]; 4]) {
        use super::super::dot_i8::gemv_avx512;
        let gemv_i8 = xs.len() == 1
            && match ws.len() {
                1 => gemv_avx512::<1>(xs[0], ws, out),
                2 => gemv_avx512::<2>(xs[0], ws, out),
                3 => gemv_avx512::<3>(xs[0], ws, out),
                4 => gemv_avx512::<4>(xs[0], ws, out),
                _ => false,
            };
        if gemv_i8 {
            return;
        }
        if xs.len() == 1 && ws.iter().all(|w| matches!(w, WRow::BF16(_))) {
            match ws.len() {
                1 => return super::avx2::gemv_bf16::<1>(xs[0], ws, out),
                2 => return super::avx2::gemv_bf16::<2>(xs[0], ws, out),
                3 => return super::avx2::gemv_bf16::<3>(xs[0], ws, out),
                4 => return super::avx2::gemv_bf16::<4>(xs[0], ws, out),
                _ => {}
            }
        }
        // 32 registers hold a 4×4 tile's 16 accumulators: each widened weight load serves four x
        // rows (the prefill GEMM; `linear` asks for 4×4 blocks on this path).
        super::tile_for_shape!(tile, xs, ws, out, {
            super::split_block(xs, ws, out, |x, w, o| dot_block(x, w, o))
        })
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize>(
        xs: &[&[f32]],
        ws: &[WRow<'_>],
        out: &mut [[f32; 4]; 4],
    ) {
        let k = ws[0].len();
        let main = k / 16 * 16;
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut i = 0;
        while i < main {
            let mut wv = [_mm512_setzero_ps(); C];
            for c in 0..C {
                wv[c] = load16(ws[c], i);
            }
            for r in 0..R {
                let xv = _mm512_loadu_ps(xs[r].as_ptr().add(i));
                for c in 0..C {
                    acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
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
                xtail16(xs[r], main, k, &mut xt);
                let xv = _mm512_loadu_ps(xt.as_ptr());
                for c in 0..C {
                    let wv = _mm512_loadu_ps(wt[c].as_ptr());
                    acc[r][c] = _mm512_fmadd_ps(xv, wv, acc[r][c]);
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
