//! The heads-in-lanes form of `attention_core`'s decode chunks (AVX-512; kv heads of a
//! multiple of 16 query heads, as absorbed MLA's one latent row shared by 16 heads): the
//! queries laid out 16 heads to a register, and one chunk's partial computed from them with
//! `attention_lanes512`'s score tiles and softmax and `attention_simd512`'s value tiles. The
//! same operations in the same order as `chunk_partial`, so the same bits.

#![cfg(target_arch = "x86_64")]

use crate::backend::AttentionParams;
use crate::kernels::aligned::AlignedVec;
use crate::kernels::attention_core::{gather_rows, KeyRows, Scratch, Task, LANES, LANES_BLOCK};
use crate::tensor::Tensor;

/// The queries of every query row and kv head, 16 heads at a time, in the layout of
/// `attention_lanes512::lay_out_queries` (`qt_len` values per (row, kv head)), 64-byte aligned
/// (so are the blocks: each a whole number of registers).
pub(super) fn transposed_queries(
    q: &Tensor,
    q_rope: Option<&Tensor>,
    p: &AttentionParams,
    qt_len: usize,
) -> AlignedVec {
    use crate::kernels::attention_lanes512::{lay_out_queries, query_block_len};
    let (d1, d2) = (p.d1, p.d2);
    let block = query_block_len(d1, d2);
    let mut qts = AlignedVec::zeroed(q.rows() * p.kv_heads * qt_len);
    for (b, qt) in qts.chunks_mut(block).enumerate() {
        let (row, h0) = (b * LANES / p.heads, b * LANES % p.heads);
        let qs: Vec<&[f32]> = (h0..h0 + LANES)
            .map(|h| &q.row(row)[h * d1..][..d1])
            .collect();
        let rs: Vec<&[f32]> = (h0..h0 + LANES)
            .map(|h| q_rope.map_or(&[][..], |r| &r.row(row)[h * d2..][..d2]))
            .collect();
        lay_out_queries(&qs, &rs, qt);
    }
    qts
}

/// `chunk_partial` in the heads-in-lanes form: kv head `t.g`'s query heads 16 at a time, their
/// queries in `qt` (`attention_lanes512::lay_out_queries`). Same partial, same bits.
///
/// The score pass takes the chunk's keys from `decode_streams::STREAMS` equal runs side by
/// side (a key of each run in turn, as the decode GEMVs read weight rows), so the memory sees
/// four sequential streams per thread instead of one; each key's score is its own, so the
/// order changes no bit, and the scores are put back in key order before the softmax. It
/// issues no software prefetches. Measured (`benches/attention_decode.rs`, Sapphire
/// Rapids-class Xeon, 2 threads, 4096 deep, three alternated rounds, µs per call): 8 layers
/// round-robin 408–451 with one run and the row requests of `chunk_partial` against 346–407,
/// one layer cache-hot 349–382 against 307–338, cache evicted before each call 617–670 against
/// 580–619. Without the requests and with one run, the evicted case took 849.
pub(super) fn chunk_partial_lanes<'a, R: KeyRows>(
    keys: &'a R,
    p: &AttentionParams,
    t: Task,
    qt: &[f32],
    part: &mut [f32],
    scratch: &mut Scratch<'a>,
) {
    use crate::kernels::attention_lanes512 as lanes;
    let (group, n) = (p.heads / p.kv_heads, t.hi - t.lo);
    let (d1, d2, vd) = (p.d1, p.d2, p.v_dim);
    gather_rows(
        keys,
        p,
        t,
        &mut scratch.krows,
        &mut scratch.rrows,
        &mut scratch.vrows,
    );
    let Scratch {
        krows,
        rrows,
        vrows,
        scores,
        order,
        run_keys,
        run_ropes,
        run_scores,
        ..
    } = scratch;
    // The keys in run order: `order[i]` is the chunk key scored `i`-th.
    let (groups, rest) = crate::kernels::decode_streams::runs(0, n);
    order.clear();
    order.extend(groups.flatten().chain(rest));
    run_keys.clear();
    run_keys.extend(order.iter().map(|&j| krows[j]));
    run_ropes.clear();
    run_ropes.extend(order.iter().map(|&j| rrows[j]));
    run_scores.clear();
    run_scores.resize(n * LANES, 0.0);
    scores.clear();
    scores.resize(n * LANES, 0.0);
    let (ml, acc) = part.split_at_mut(2 * group);
    let (m, l) = ml.split_at_mut(group);
    let width = lanes::query_block_len(d1, d2);
    for b in 0..group / LANES {
        let qt = &qt[b * width..][..width];
        for j0 in (0..n).step_by(LANES_BLOCK) {
            let j1 = (j0 + LANES_BLOCK).min(n);
            let out = &mut run_scores[j0 * LANES..j1 * LANES];
            // SAFETY: `lanes_path` chose this form only on a supported AVX-512 path; `qt` holds
            // `query_block_len(d1, d2)` values and `out` 16 per key.
            unsafe { lanes::scores(qt, &run_keys[j0..j1], &run_ropes[j0..j1], p.scale, out) };
        }
        for (i, &j) in order.iter().enumerate() {
            scores[j * LANES..][..LANES].copy_from_slice(&run_scores[i * LANES..][..LANES]);
        }
        let (mb, lb) = (&mut m[b * LANES..][..LANES], &mut l[b * LANES..][..LANES]);
        // SAFETY: as above; `scores` holds 16 values per key.
        unsafe { lanes::softmax(scores, n, mb, lb) };
        let ps: Vec<&[f32]> = (0..LANES).map(|h| &scores[h..]).collect();
        let mut accs: Vec<&mut [f32]> =
            acc[b * LANES * vd..][..LANES * vd].chunks_mut(vd).collect();
        // SAFETY: as above; head `h`'s weights are `scores[h + 16·j]`, and `v_dim` is a
        // multiple of 16 (`lanes_path`), so every column is done here.
        unsafe { crate::kernels::attention_simd512::value_tile(&ps, LANES, vrows, &mut accs) };
    }
}
