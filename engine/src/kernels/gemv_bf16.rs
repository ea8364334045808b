//! Decode's matrix-vector product over bf16 weights in the f32 order ([`super::dot`]'s 16
//! lanes, each column two 8-lane chains of fused multiply-adds, then its ragged tail and the
//! fold): one x row against a range of a weight's rows, read as [`STREAMS`] long sequential
//! streams. The same bits as `dot`'s tiles on the same row and column, which the linear
//! tests hold it to (`engine/tests/it/dot.rs`).
//!
//! Why several streams: the memory of a Sapphire Rapids-class Xeon (2 cores) answered one
//! sequential stream per thread at 27–31 GB/s and 4–8 streams at 42–44 (a C loop of 512-bit
//! loads). The columns are cut into `STREAMS` equal runs read side by side, a row of each run
//! at a time; each run's rows are contiguous, so each run is one stream. ds-v3-mini's
//! f32-compute decode (`troupe bench -p 0 -n 64`, 2 threads) went from 64–66 tok/s (one row at
//! a time) to 96–99. On Zen 3, four neighbouring rows at a time had streamed at 55–70% of a
//! one-stream read loop and one row at a time at 70–97%; the runs are not measured there yet.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::decode_streams::{runs, STREAMS};
use super::dot::{add_tail16, fold16, WRow};

/// Elements (1 KiB of bf16) between the one a row stream reads and the one it asks the memory
/// for: the software prefetch covers each 4 KiB page's start, where the hardware prefetchers
/// stop. 256 to 4096 measured alike in `benches/decode_gemv.rs` (one stream); none was slower.
const AHEAD: usize = 512;

/// Output columns `c0..c1` of one x row against the bf16 weight `w` (`[out, k]`), each handed
/// to `set(column, value)`.
///
/// # Safety
/// The processor has AVX2, FMA and F16C; `w` holds at least `c1` rows of `k = x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn columns(
    x: &[f32],
    w: &[u16],
    k: usize,
    (c0, c1): (usize, usize),
    set: &mut dyn FnMut(usize, f32),
) {
    let (groups, rest) = runs(c0, c1);
    for cols in groups {
        let lanes = rows::<STREAMS>(x, w, k, cols);
        for (c, l) in cols.into_iter().zip(lanes) {
            set(c, fold16(&l));
        }
    }
    for c in rest {
        let [l] = rows::<1>(x, w, k, [c]);
        set(c, fold16(&l));
    }
}

/// The 16 lanes of `x` against weight rows `cols` of `w` (each two 8-lane chains, then the
/// ragged tail), every row's next `AHEAD` elements requested as it streams by (a hint: results
/// do not change).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows<const N: usize>(x: &[f32], w: &[u16], k: usize, cols: [usize; N]) -> [[f32; 16]; N] {
    let main = k / 16 * 16;
    let ps: [*const u16; N] = cols.map(|c| w.as_ptr().add(c * k));
    // 8 bf16 weights widened exactly to f32 (the upper half of each lane).
    let load8 = |p: *const u16, i: usize| {
        let h = _mm_loadu_si128(p.add(i) as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    };
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut i = 0;
    while i < main {
        if i % 32 == 0 {
            for p in ps {
                _mm_prefetch(p.wrapping_add(i + AHEAD) as *const i8, _MM_HINT_T0);
            }
        }
        let x0 = _mm256_loadu_ps(x.as_ptr().add(i));
        let x1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
        for (a, p) in acc.iter_mut().zip(ps) {
            a[0] = _mm256_fmadd_ps(x0, load8(p, i), a[0]);
            a[1] = _mm256_fmadd_ps(x1, load8(p, i + 8), a[1]);
        }
        i += 16;
    }
    let mut out = [[0.0f32; 16]; N];
    for ((lanes, a), c) in out.iter_mut().zip(acc).zip(cols) {
        _mm256_storeu_ps(lanes.as_mut_ptr(), a[0]);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), a[1]);
        add_tail16(x, WRow::BF16(&w[c * k..][..k]), main, lanes);
    }
    out
}
