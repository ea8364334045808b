//! Prefill's matrix product on AVX2+FMA: many x rows against bf16 or int8 weights, through
//! f32 panels, blocked so that what the register tiles read is in L1.
//!
//! The weights of a strip of [`STRIP`] output columns are widened once to an f32 panel
//! (exactly: a bf16 value's f32, an int8 element's `q as f32 * scale`, as `dot`'s loads widen
//! them), and the x rows are copied once per call; both are zero-padded to a multiple of 16 and
//! 64-byte aligned ([`super::aligned`]). The product walks the rows in blocks of [`ROW_BLOCK`] and `k` in blocks of
//! [`K_BLOCK`]: a (row block, k block) step runs 3 × 2 register tiles over the panel's
//! `K_BLOCK`-wide slice (8 KiB, in L1 while every row of the block reads it). Each output's 16
//! dot lanes are kept in a state buffer between k blocks, and the last block folds them and
//! writes the output. So every output is still one `dot` chain in the order fixed by
//! [`super::dot`]: lane `i % 16` takes `fma(x[i], w[i], lane)` for `i` ascending, the ragged
//! tail zero-padded to 16 (the padding's `fma(0, 0, lane)` is what `dot`'s tail adds too), then
//! `fold16`, done here in registers with the same additions. Stopping a chain at a block edge
//! and resuming it from memory changes no bit.

use std::arch::x86_64::*;

use super::aligned::aligned;
use crate::dtype::bf16_to_f32;
use crate::weights::int8::INT8_BLOCK;

/// Fewest x rows for which `linear` takes this product on AVX2 (`linear_gemm` harness, one
/// thread, `[n, 1024] × [512, 1024]^T`: 8 rows 183–190 µs against the register tiles' 210–222,
/// 12 rows 242–244 against 262–668; at 6 rows the tiles were faster, 140–154 against 158–169).
pub(super) const MIN_ROWS: usize = 8;
/// Output columns per panel.
const STRIP: usize = 8;
/// `k` elements per block (a multiple of 16): the panel's slice is `STRIP × K_BLOCK` f32, 8 KiB.
const K_BLOCK: usize = 256;
/// x rows per block (a multiple of the tile's 3): their dot state is `ROW_BLOCK × STRIP × 16`
/// f32, 24 KiB.
const ROW_BLOCK: usize = 48;
/// x rows whose every strip is computed before the next rows (a multiple of `ROW_BLOCK`): their
/// x, 512 KiB at `k` = 1024, stays in L2 while the strips pass; a prefill of thousands of rows
/// otherwise re-read all of x from memory for every strip.
const ROW_GROUP: usize = 2 * ROW_BLOCK;
/// Lanes of one output's dot state.
const LANES: usize = 16;

/// The weight side of a product: rows `[out, k]` in a storage type that widens exactly to f32.
#[derive(Clone, Copy)]
pub(super) enum PanelWeights<'a> {
    Bf16(&'a [u16]),
    /// int8 elements and their scales (`grid_cols` per row, one per [`INT8_BLOCK`]).
    I8 {
        q: &'a [i8],
        scales: &'a [f32],
        grid_cols: usize,
    },
}

impl PanelWeights<'_> {
    /// Widens elements `i0..i0 + dst.len()` of weight row `c` (of `k`) into `dst`.
    fn widen(self, c: usize, k: usize, (i0, len): (usize, usize), dst: &mut [f32]) {
        let range = c * k + i0..c * k + i0 + len;
        match self {
            PanelWeights::Bf16(w) => {
                for (d, s) in dst.iter_mut().zip(&w[range]) {
                    *d = bf16_to_f32(*s);
                }
            }
            PanelWeights::I8 {
                q,
                scales,
                grid_cols,
            } => {
                let s = &scales[c * grid_cols..];
                for (i, (d, v)) in dst.iter_mut().zip(&q[range]).enumerate() {
                    *d = *v as f32 * s[(i0 + i) / INT8_BLOCK];
                }
            }
        }
    }
}

thread_local! {
    /// The calling thread's panel and dot state, kept between calls so a pool thread
    /// allocates them once.
    static BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Computes columns `c0..c1` of `x @ W^T` (`x` is `[n, k]` row-major) into
/// `out[row * out_dim + column]`.
///
/// # Safety
/// The processor has AVX2+FMA; `x` holds `n * k` values and `w` at least `c1` rows of `k`;
/// `out` is valid for writes of those `n × (c1 - c0)` elements, which no other thread touches
/// meanwhile.
pub(super) unsafe fn columns(
    x: &[f32],
    (n, k): (usize, usize),
    w: PanelWeights<'_>,
    (c0, c1): (usize, usize),
    (out, out_dim): (*mut f32, usize),
) {
    BUFFERS.with_borrow_mut(|(xbuf, wbuf, sbuf)| {
        // x rows a line longer than their padded length: rows exactly 4 KiB apart would share
        // L1 sets.
        let kp = k.next_multiple_of(LANES);
        let x_stride = kp + LANES;
        let xs = aligned(xbuf, n * x_stride);
        for (dst, src) in xs.chunks_mut(x_stride).zip(x.chunks(k)) {
            dst[..k].copy_from_slice(src);
            dst[k..].fill(0.0);
        }
        let panel = aligned(wbuf, STRIP * kp.next_multiple_of(K_BLOCK));
        let state = aligned(sbuf, ROW_BLOCK * STRIP * LANES);
        for g0 in (0..n).step_by(ROW_GROUP) {
            let g1 = (g0 + ROW_GROUP).min(n);
            for s0 in (c0..c1).step_by(STRIP) {
                let cols = (c1 - s0).min(STRIP);
                widen_strip(w, k, (s0, cols), panel);
                for r0 in (g0..g1).step_by(ROW_BLOCK) {
                    let rows = (g1 - r0).min(ROW_BLOCK);
                    for kb in (0..kp).step_by(K_BLOCK) {
                        let t = Tile {
                            x: xs.as_ptr().add(r0 * x_stride + kb),
                            x_stride,
                            w: panel.as_ptr().add(kb * STRIP),
                            state: state.as_mut_ptr(),
                            kc: (kp - kb).min(K_BLOCK),
                            first: kb == 0,
                            out: match kb + K_BLOCK >= kp {
                                true => out.add(r0 * out_dim + s0),
                                false => std::ptr::null_mut(),
                            },
                            out_dim,
                        };
                        block(t, rows, cols);
                    }
                }
            }
        }
    });
}

/// Widens weight rows `s0..s0 + cols` into `panel`: k block `b`'s columns one after another,
/// `K_BLOCK` apart, each zero-padded to a multiple of 16.
fn widen_strip(w: PanelWeights<'_>, k: usize, (s0, cols): (usize, usize), panel: &mut [f32]) {
    let kp = k.next_multiple_of(LANES);
    for c in 0..cols {
        for (b, part) in panel.chunks_mut(STRIP * K_BLOCK).enumerate() {
            let i0 = b * K_BLOCK;
            if i0 >= kp {
                break;
            }
            let dst = &mut part[c * K_BLOCK..][..(kp - i0).min(K_BLOCK)];
            let len = k.saturating_sub(i0).min(dst.len());
            w.widen(s0 + c, k, (i0, len), &mut dst[..len]);
            dst[len..].fill(0.0);
        }
    }
}

/// One (row block, k block) step: 3 × 2 tiles (smaller at the block's ragged edges) over
/// `rows` rows and the panel's `cols` columns, from `origin` (row 0, column 0).
unsafe fn block(origin: Tile, rows: usize, cols: usize) {
    let mut r = 0;
    while r < rows {
        let rn = (rows - r).min(3);
        let mut c = 0;
        while c < cols {
            let cn = (cols - c).min(2);
            let t = Tile {
                x: origin.x.add(r * origin.x_stride),
                w: origin.w.add(c * K_BLOCK),
                state: origin.state.add((r * STRIP + c) * LANES),
                out: match origin.out.is_null() {
                    true => origin.out,
                    false => origin.out.add(r * origin.out_dim + c),
                },
                ..origin
            };
            match (rn, cn) {
                (3, 2) => tile::<3, 2>(t),
                (3, _) => tile::<3, 1>(t),
                (2, 2) => tile::<2, 2>(t),
                (2, _) => tile::<2, 1>(t),
                (_, 2) => tile::<1, 2>(t),
                _ => tile::<1, 1>(t),
            }
            c += cn;
        }
        r += rn;
    }
}

/// A register tile's operands: x rows (`x_stride` apart) and panel columns (`K_BLOCK` apart),
/// both from the block's first element; their dot states (row `r`, column `c` at
/// `state + (r·STRIP + c)·16`), which the first block starts at zero; the block's length `kc`
/// (a multiple of 16); and, on the last block, where the folded outputs go (`out + r·out_dim +
/// c`; null on other blocks).
#[derive(Clone, Copy)]
struct Tile {
    x: *const f32,
    x_stride: usize,
    w: *const f32,
    state: *mut f32,
    kc: usize,
    first: bool,
    out: *mut f32,
    out_dim: usize,
}

/// `R` x rows against `C` panel columns over one k block, resuming and saving their dot lanes
/// (2·R·C accumulators, 12 of the 16 registers for 3 × 2).
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const C: usize>(t: Tile) {
    let at = |r: usize, c: usize| t.state.add((r * STRIP + c) * LANES);
    let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
    if !t.first {
        for (r, row) in acc.iter_mut().enumerate() {
            for (c, a) in row.iter_mut().enumerate() {
                a[0] = _mm256_load_ps(at(r, c));
                a[1] = _mm256_load_ps(at(r, c).add(8));
            }
        }
    }
    let mut i = 0;
    while i < t.kc {
        // One half of the 16 lanes at a time: C weight vectors and one x vector live beside
        // the accumulators.
        for h in 0..2 {
            let mut wv = [_mm256_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(t.w.add(c * K_BLOCK + i + 8 * h));
            }
            for r in 0..R {
                let xv = _mm256_loadu_ps(t.x.add(r * t.x_stride + i + 8 * h));
                for c in 0..C {
                    acc[r][c][h] = _mm256_fmadd_ps(xv, wv[c], acc[r][c][h]);
                }
            }
        }
        i += 16;
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, a) in row.iter().enumerate() {
            if t.out.is_null() {
                _mm256_store_ps(at(r, c), a[0]);
                _mm256_store_ps(at(r, c).add(8), a[1]);
            } else {
                *t.out.add(r * t.out_dim + c) = fold16(a[0], a[1]);
            }
        }
    }
}

/// `dot::fold16` of the lanes `lo` (0–7) and `hi` (8–15), with the same additions:
/// `s_j = l_j + l_{j+8}`, then `((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))`.
#[inline(always)]
unsafe fn fold16(lo: __m256, hi: __m256) -> f32 {
    let s = _mm256_add_ps(lo, hi);
    // t = [s0 + s4, s1 + s5, s2 + s6, s3 + s7]
    let t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    // u0 = t0 + t2, u1 = t1 + t3
    let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)))
}
