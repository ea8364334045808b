//! The chunk combine of `attention_core`: folding one (query row, kv head)'s chunk partials, in
//! ascending chunk order, into its attention output.
//!
//! A partial is laid out `[m; group] [l; group] [acc; group × v_dim]` (per head: the chunk's
//! max score, its sum of `exp(s - m)` and its `Σ exp(s - m)·v`). Folding chunk `c` into the
//! running state `(M, L, O)` of a head is `M' = max(M, m)`, `a = exp(M - M')`,
//! `b = exp(m - M')`, `L = fma(l, b, L·a)`, `O = fma(acc, b, O·a)`; the output is `O / L`. The
//! state starts as chunk 0's partial. Two callers, one order, so the same bits:
//! [`combine_chunks`] folds partials stored side by side (a decode step, whose chunks ran in
//! parallel), and [`fold_chunk`] + [`finish`] fold each chunk as soon as it is computed (many
//! query rows: no partial per (row, chunk) is ever stored).

use crate::kernels::attention_simd::exp_scalar;
use crate::kernels::isa::Isa;

/// Combines the chunk partials of one (row, kv head) into `out` (`group × v_dim`).
/// The partial of chunk `c` starts at `parts[c · stride]`.
pub(crate) fn combine_chunks(
    parts: &[f32],
    stride: usize,
    chunks: usize,
    group: usize,
    vd: usize,
    out: &mut [f32],
    isa: Isa,
) {
    let shape = (stride, chunks, group, vd);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: `attend` passes only a supported path; every SIMD path has AVX2 and FMA.
        unsafe { combine_fma(parts, shape, out) };
        return;
    }
    let _ = isa;
    combine_impl(parts, shape, out);
}

/// Folds the partial `next` of the following chunk into the running partial `state` (same
/// layout), for every head.
pub(crate) fn fold_chunk(state: &mut [f32], next: &[f32], group: usize, vd: usize, isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: as in `combine_chunks`.
        unsafe { fold_fma(state, next, group, vd) };
        return;
    }
    let _ = isa;
    fold_impl(state, next, group, vd);
}

/// The output of a fully folded `state`: `O / L` per head, into `out` (`group × v_dim`).
pub(crate) fn finish(state: &[f32], group: usize, vd: usize, out: &mut [f32]) {
    for (h, o) in out.chunks_mut(vd).enumerate() {
        let l = state[group + h];
        for (x, acc) in o.iter_mut().zip(&state[2 * group + h * vd..][..vd]) {
            *x = *acc / l;
        }
    }
}

/// One head's fold step: `(big_m, big_l, o)` absorbs the chunk `(m, l, acc)`.
#[inline(always)]
pub(crate) fn fold_head(
    big_m: &mut f32,
    big_l: &mut f32,
    o: &mut [f32],
    m: f32,
    l: f32,
    acc: &[f32],
) {
    let next = big_m.max(m);
    let (a, b) = (exp_scalar(*big_m - next), exp_scalar(m - next));
    *big_l = l.mul_add(b, *big_l * a);
    for (x, y) in o.iter_mut().zip(acc) {
        *x = y.mul_add(b, *x * a);
    }
    *big_m = next;
}

/// `combine_impl` compiled with FMA instructions (same operations, so the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn combine_fma(parts: &[f32], shape: (usize, usize, usize, usize), out: &mut [f32]) {
    combine_impl(parts, shape, out)
}

#[inline(always)]
fn combine_impl(parts: &[f32], shape: (usize, usize, usize, usize), out: &mut [f32]) {
    let (stride, chunks, group, vd) = shape;
    for (h, o) in out.chunks_mut(vd).enumerate() {
        let (mut big_m, mut big_l) = (parts[h], parts[group + h]);
        o.copy_from_slice(&parts[2 * group + h * vd..][..vd]);
        for c in (1..chunks).map(|c| &parts[c * stride..]) {
            let acc = &c[2 * group + h * vd..][..vd];
            fold_head(&mut big_m, &mut big_l, o, c[h], c[group + h], acc);
        }
        for x in o.iter_mut() {
            *x /= big_l;
        }
    }
}

/// `fold_impl` compiled with FMA instructions (same operations, so the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fold_fma(state: &mut [f32], next: &[f32], group: usize, vd: usize) {
    fold_impl(state, next, group, vd)
}

#[inline(always)]
fn fold_impl(state: &mut [f32], next: &[f32], group: usize, vd: usize) {
    let (ml, o) = state.split_at_mut(2 * group);
    let (ms, ls) = ml.split_at_mut(group);
    for (h, o) in o[..group * vd].chunks_mut(vd).enumerate() {
        let acc = &next[2 * group + h * vd..][..vd];
        fold_head(&mut ms[h], &mut ls[h], o, next[h], next[group + h], acc);
    }
}
