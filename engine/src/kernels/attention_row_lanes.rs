//! Many query rows in the heads-in-lanes form (prefill on AVX-512): the sixteen lanes of a
//! register hold sixteen query vectors that share a kv head — consecutive (row, head) pairs —
//! instead of one row's sixteen heads, so a prompt's rows are scored against each cached key
//! sixteen at a time by `attention_lanes512`'s kernels.
//!
//! Each lane gets exactly the operations and order of `attention_core`'s chunk partial and
//! combine for its own (row, head), so the same bits as one row alone:
//! - chunk `c` covers keys `c·CHUNK..` up to the lane's own last visible key; the block's scores
//!   are computed up to the longest lane's end, and a lane's keys past its own end are set to
//!   `-inf`: they leave its max unchanged (`max(-inf, m) = m`) and add exact zeros to its sum of
//!   exponentials, so its softmax is that of its own keys;
//! - values are accumulated over the keys every lane sees, then each longer lane continues its
//!   own `fma` chains over its remaining keys alone (a chain split in two is the same chain);
//! - each chunk's partial is folded into the lane's running one (`attention_combine`'s step).
//!
//! Lanes cut at `c·CHUNK` for every row only without a sliding window, so `attention_core` uses
//! this form only then.

#![cfg(target_arch = "x86_64")]

use rayon::prelude::*;

use super::attention_combine::fold_head;
use super::attention_core::{KeyRows, CHUNK, LANES};
use crate::backend::AttentionParams;
use crate::tensor::Tensor;

/// Keys per call of the lanes score kernel (as `attention_core`'s lanes path blocks them).
const SCORE_BLOCK: usize = 12;

/// The attention output `[tq, heads·v_dim]` into `out`, in blocks of 16 query vectors per kv
/// head. The caller checked the shapes, that the path has AVX-512, that there is no sliding
/// window and that `v_dim` is a multiple of 16.
pub(crate) fn attend_row_lanes<R: KeyRows>(
    q: &Tensor,
    q_rope: Option<&Tensor>,
    keys: &R,
    p: &AttentionParams,
    out: &mut [f32],
    parallel: bool,
) {
    let (tq, group) = (q.rows(), p.heads / p.kv_heads);
    let vectors = tq * group;
    let blocks: Vec<(usize, usize)> = (0..p.kv_heads)
        .flat_map(|g| (0..vectors.div_ceil(LANES)).map(move |b| (g, b * LANES)))
        .collect();
    // The (row, head) query vectors of the block starting at vector `first` of kv head `g`.
    let lanes = |g: usize, first: usize| -> Vec<(usize, usize)> {
        (first..(first + LANES).min(vectors))
            .map(|u| (u / group, g * group + u % group))
            .collect()
    };
    // SAFETY: the caller chose this form only on a supported AVX-512 path.
    let run = |&(g, first): &(usize, usize)| unsafe { block(q, q_rope, keys, p, &lanes(g, first)) };
    let results: Vec<Vec<f32>> = if parallel {
        blocks.par_iter().map(run).collect()
    } else {
        blocks.iter().map(run).collect()
    };
    let (vd, width) = (p.v_dim, p.heads * p.v_dim);
    for (&(g, first), o) in blocks.iter().zip(results) {
        for (r, (row, head)) in lanes(g, first).into_iter().enumerate() {
            out[row * width + head * vd..][..vd].copy_from_slice(&o[r * vd..][..vd]);
        }
    }
}

/// The outputs (`v_dim` each, lane by lane) of the query vectors `lanes` = (row, head), all of
/// one kv head, rows ascending.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block<R: KeyRows>(
    q: &Tensor,
    q_rope: Option<&Tensor>,
    keys: &R,
    p: &AttentionParams,
    lanes: &[(usize, usize)],
) -> Vec<f32> {
    use crate::kernels::attention_lanes512 as k512;
    use crate::kernels::attention_simd512::value_tile;
    let (d1, d2, vd, n) = (p.d1, p.d2, p.v_dim, lanes.len());
    let g = lanes[0].1 / (p.heads / p.kv_heads);
    // The lanes' queries in the score tiles' layout (unused lanes 0), 64-byte aligned.
    let (zeros1, zeros2) = (vec![0.0f32; d1], vec![0.0f32; d2]);
    let (mut qs, mut rs) = (vec![&zeros1[..]; LANES], vec![&zeros2[..]; LANES]);
    for (r, &(row, head)) in lanes.iter().enumerate() {
        qs[r] = &q.row(row)[head * d1..][..d1];
        if let Some(t) = q_rope {
            rs[r] = &t.row(row)[head * d2..][..d2];
        }
    }
    let mut qt = crate::kernels::aligned::AlignedVec::zeroed(k512::query_block_len(d1, d2));
    k512::lay_out_queries(&qs, &rs, &mut qt);
    // A lane's last visible key (exclusive).
    let end: Vec<usize> = lanes.iter().map(|&(row, _)| p.q_start + row + 1).collect();
    let last = end.iter().max().copied().unwrap_or(0);
    // Running partials per lane, and one chunk's.
    let (mut big_m, mut big_l) = ([0.0f32; LANES], [0.0f32; LANES]);
    let mut big_o = vec![0.0f32; n * vd];
    let (mut m, mut l) = ([0.0f32; LANES], [0.0f32; LANES]);
    let mut acc = vec![0.0f32; n * vd];
    let mut scores = vec![0.0f32; CHUNK * LANES];
    let (mut krows, mut rrows, mut vrows) = (Vec::new(), Vec::new(), Vec::new());
    for c in 0..last.div_ceil(CHUNK) {
        let lo = c * CHUNK;
        // Lanes seeing this chunk, and how many of its keys each sees.
        let seen: Vec<usize> = end
            .iter()
            .map(|&e| e.saturating_sub(lo).min(CHUNK))
            .collect();
        let active: Vec<usize> = (0..n).filter(|&r| seen[r] > 0).collect();
        let wide = active.iter().map(|&r| seen[r]).max().unwrap_or(0);
        let narrow = active.iter().map(|&r| seen[r]).min().unwrap_or(0);
        krows.clear();
        krows.extend((lo..lo + wide).map(|j| &keys.key(j)[g * d1..][..d1]));
        rrows.clear();
        rrows.extend((lo..lo + wide).map(|j| &keys.rope(j)[..d2]));
        vrows.clear();
        vrows.extend((lo..lo + wide).map(|j| &keys.value(j)[g * vd..][..vd]));
        let s = &mut scores[..wide * LANES];
        for j0 in (0..wide).step_by(SCORE_BLOCK) {
            let j1 = (j0 + SCORE_BLOCK).min(wide);
            k512::scores(
                &qt,
                &krows[j0..j1],
                &rrows[j0..j1],
                p.scale,
                &mut s[j0 * LANES..j1 * LANES],
            );
        }
        // A lane's keys past its own end (unused lanes: all keys) do not count.
        for r in 0..LANES {
            let own = if r < n { seen[r] } else { 0 };
            for j in own..wide {
                s[j * LANES + r] = f32::NEG_INFINITY;
            }
        }
        k512::softmax(s, wide, &mut m, &mut l);
        acc.fill(0.0);
        let ps: Vec<&[f32]> = active.iter().map(|&r| &s[r..]).collect();
        let mut accs: Vec<&mut [f32]> = acc
            .chunks_mut(vd)
            .zip(&seen)
            .filter(|(_, &k)| k > 0)
            .map(|(a, _)| a)
            .collect();
        value_tile(&ps, LANES, &vrows[..narrow], &mut accs);
        for &r in &active {
            if seen[r] > narrow {
                let ps = [&s[narrow * LANES + r..]];
                let a = &mut acc[r * vd..][..vd];
                value_tile(&ps, LANES, &vrows[narrow..seen[r]], &mut [a]);
            }
        }
        for &r in &active {
            let (o, a) = (&mut big_o[r * vd..][..vd], &acc[r * vd..][..vd]);
            if c == 0 {
                (big_m[r], big_l[r]) = (m[r], l[r]);
                o.copy_from_slice(a);
            } else {
                fold_head(&mut big_m[r], &mut big_l[r], o, m[r], l[r], a);
            }
        }
    }
    for (r, o) in big_o.chunks_mut(vd).enumerate() {
        for x in o.iter_mut() {
            *x /= big_l[r];
        }
    }
    big_o
}
