//! The one causal-attention algorithm behind `attention` (keys in tensors) and `paged_attention`
//! (keys read in place from cache pages): both hand it a `KeyRows` and get the same bits for the
//! same keys.
//!
//! Per query row (position `pos`, first visible key `first`) and kv head `g` with its `group`
//! query heads, the visible keys are cut at absolute multiples of `CHUNK` positions. Each chunk
//! computes, for every head, its scores, their max `m`, `p_j = exp(s_j - m)`, `l = Σ p_j` and
//! `acc = Σ p_j · v_j` (`attention_simd` fixes each order); the chunks are then combined in
//! ascending order with the online-softmax rescaling `M' = max(M, m)`, `a = exp(M - M')`,
//! `b = exp(m - M')`, `L = fma(l, b, L·a)`, `O = fma(acc, b, O·a)`, and the output is `O / L`.
//! Chunk boundaries depend only on positions, so a row's arithmetic is the same whatever the
//! number of rows, the page size, the thread count or how the (row, kv head, chunk) tasks are
//! spread over threads (batch invariance).
//!
//! Memory: a decode step reads each cached row once from memory for all heads of its kv head. The
//! score pass requests rows `PREFETCH_AHEAD` positions ahead into L1 and rows two chunks ahead
//! into L2 (the hardware prefetchers stop at every 4 KiB page), one whole row per key; the value
//! pass re-reads the chunk from L2. Streaming the cache overlaps the arithmetic. Prefill runs
//! blocks of 16 query rows through one kv head after another, so the rows after the first
//! find that head's keys in cache.
//!
//! Kv heads of a multiple of 16 query heads (absorbed MLA: 16 heads share one latent row) run
//! the heads-in-lanes form on AVX-512 (`attention_lanes_chunk`, `attention_lanes512`): the same
//! operations in the same order with a head per lane, so the same bits. Its score pass reads a
//! chunk's keys as four runs side by side (four sequential streams for the hardware
//! prefetchers) and requests nothing ahead.

use rayon::prelude::*;

use crate::backend::AttentionParams;
use crate::error::{EngineError, Result};
#[cfg(target_arch = "x86_64")]
use crate::kernels::aligned::AlignedVec;
use crate::kernels::attention_combine::{combine_chunks, finish, fold_chunk};
use crate::kernels::attention_simd::{exp_sum, keys_per_tile, prefetch_lines, score_tile};
use crate::kernels::attention_simd::{head_tile, value_tile, ScoreTile};
use crate::kernels::isa::Isa;
use crate::tensor::Tensor;

/// Keys per chunk (a fixed constant: changing it changes results' rounding).
pub(crate) const CHUNK: usize = 128;

/// Keys per block of the score pass on `isa` for kv heads of `group` query heads: a block stays
/// in L1 while every head tile reads it, and holds whole key tiles (AVX2: six tiles of 2 keys
/// for 4-head tiles, three of 4 for 2-head tiles, two of 8 for one head; AVX-512: two of 8).
fn score_block(isa: Isa, group: usize) -> usize {
    match isa {
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => 16,
        _ if group == 1 => 16,
        _ => 12,
    }
}

/// Query heads per register of the heads-in-lanes form (`attention_lanes512`).
pub(crate) const LANES: usize = 16;

/// Keys per block of the heads-in-lanes score pass (four tiles of 3).
pub(super) const LANES_BLOCK: usize = 12;

/// Query rows per prefill task: they read each kv head's keys one after another, while the
/// keys are in cache.
const PREFILL_BLOCK_ROWS: usize = 16;

/// How many rows ahead of the score pass the cache rows are prefetched.
const PREFETCH_AHEAD: usize = 24;

/// How many rows ahead of the score pass the cache rows are requested into L2: two chunks,
/// so a row has a whole chunk's work (its score and value passes) to arrive before the score
/// pass's L1 request for it (a thread's tasks are consecutive chunks).
const L2_AHEAD: usize = 2 * CHUNK;

/// Calls with more query rows than this do not prefetch (see `Task::prefetch`).
const PREFETCH_MAX_ROWS: usize = 4;

/// Below this many multiply-adds a call runs on the calling thread (same results either way).
const PARALLEL_WORK: usize = 1 << 16;

/// Where the keys and values of one sequence live.
pub(crate) trait KeyRows: Sync {
    /// The first key part of position `j`, all kv heads (`kv_heads·d1`).
    fn key(&self, j: usize) -> &[f32];
    /// The rope key of position `j` (`d2`, shared by all kv heads).
    fn rope(&self, j: usize) -> &[f32];
    /// The values of position `j`, all kv heads (`kv_heads·v_dim`).
    fn value(&self, j: usize) -> &[f32];
    /// All of position `j`'s cached values in one slice, when they are stored as one row (only
    /// for prefetching).
    fn whole_row(&self, _j: usize) -> Option<&[f32]> {
        None
    }
}

/// Checks the query shapes against `p` (the caller checks the keys).
fn check_queries(
    kernel: &str,
    q: &Tensor,
    q_rope: Option<&Tensor>,
    p: &AttentionParams,
) -> Result<()> {
    let err = |m: String| EngineError::kernel(kernel, m);
    if p.heads == 0 || p.kv_heads == 0 || !p.heads.is_multiple_of(p.kv_heads) {
        return Err(err(format!("{} heads vs {} kv heads", p.heads, p.kv_heads)));
    }
    if p.v_dim == 0 {
        return Err(err("v_dim is 0".into()));
    }
    if p.sliding_window == Some(0) {
        return Err(err("sliding window of 0 positions".into()));
    }
    if q.cols() != p.heads * p.d1 {
        return Err(err(format!(
            "q has {} columns, expected heads {} x d1 {}",
            q.cols(),
            p.heads,
            p.d1
        )));
    }
    match q_rope {
        Some(r) if r.cols() != p.heads * p.d2 || r.rows() != q.rows() => Err(err(format!(
            "q_rope is [{}, {}], expected [{}, heads {} x d2 {}]",
            r.rows(),
            r.cols(),
            q.rows(),
            p.heads,
            p.d2
        ))),
        None if p.d2 > 0 => Err(err(format!("d2 = {} but no q_rope", p.d2))),
        _ => Ok(()),
    }
}

/// One unit of work: query row `row`, kv head `g`, keys `lo..hi` (one chunk). A parallel task
/// runs every kv head of a (row, chunk) in turn, reusing its buffers.
#[derive(Clone, Copy)]
pub(super) struct Task {
    pub(super) row: usize,
    pub(super) g: usize,
    pub(super) lo: usize,
    pub(super) hi: usize,
    /// The row's visible keys end at `end` (rows past the chunk may be prefetched).
    pub(super) end: usize,
    /// Whether to prefetch cache rows (a decode step streams the cache once; when many query
    /// rows share the chunks, as in prefill, they are in cache after the first row and the
    /// prefetches only occupy the load queue).
    pub(super) prefetch: bool,
}

/// `[tq, heads·v_dim]` attention output on `isa` (portable when the processor lacks it; every
/// path gives the same bits). The caller has checked `keys`: every position `< q_start + tq`
/// is readable.
pub(crate) fn attend<'a, R: KeyRows>(
    kernel: &str,
    q: &'a Tensor,
    q_rope: Option<&'a Tensor>,
    keys: &'a R,
    p: &AttentionParams,
    isa: Isa,
) -> Result<Tensor> {
    check_queries(kernel, q, q_rope, p)?;
    let isa = if isa.supported() { isa } else { Isa::Portable };
    let (tq, group) = (q.rows(), p.heads / p.kv_heads);
    let width = p.heads * p.v_dim;
    let mut out = vec![0.0f32; tq * width];
    let work: usize = (0..tq)
        .flat_map(|i| row_tasks(p, i, false))
        .map(|t| t.hi - t.lo)
        .sum::<usize>()
        * p.heads
        * (p.d1 + p.d2 + p.v_dim);
    let parallel = work >= PARALLEL_WORK && rayon::current_num_threads() > 1;
    let slab = group * p.v_dim;
    #[cfg(target_arch = "x86_64")]
    if tq > PREFETCH_MAX_ROWS && row_lanes_path(isa, p) {
        // Transposes its own queries, a block at a time.
        super::attention_row_lanes::attend_row_lanes(q, q_rope, keys, p, &mut out, parallel);
        return Tensor::matrix(tq, width, out);
    }
    #[cfg(target_arch = "x86_64")]
    if tq > PREFETCH_MAX_ROWS && super::attention_rows::applies(isa, p) {
        // Query rows in register tiles (AVX2).
        super::attention_rows::attend_rows(q, q_rope, keys, p, &mut out, parallel);
        return Tensor::matrix(tq, width, out);
    }
    // The queries of every (row, kv head), laid out for the heads-in-lanes path.
    let lanes = lanes_path(isa, group, p.v_dim);
    #[cfg(target_arch = "x86_64")]
    let qt_len = super::attention_lanes512::query_block_len(p.d1, p.d2) * (group / LANES);
    #[cfg(target_arch = "x86_64")]
    let qts = if lanes {
        super::attention_lanes_chunk::transposed_queries(q, q_rope, p, qt_len)
    } else {
        AlignedVec::zeroed(0)
    };
    // One chunk's partial of kv head `g` (`t.g` is overwritten) into `part` (zeroed).
    let partial = |t: Task, g: usize, part: &mut [f32], scratch: &mut Scratch<'a>| {
        let t = Task { g, ..t };
        #[cfg(target_arch = "x86_64")]
        if lanes {
            let qt = &qts[(t.row * p.kv_heads + g) * qt_len..][..qt_len];
            super::attention_lanes_chunk::chunk_partial_lanes(keys, p, t, qt, part, scratch);
            return;
        }
        chunk_partial(q, q_rope, keys, p, t, isa, part, scratch);
    };
    let part_len = group * (p.v_dim + 2);
    if tq > PREFETCH_MAX_ROWS {
        // Many query rows (prefill): a task per block of `PREFILL_BLOCK_ROWS` rows; each
        // (row, kv head) folds each chunk's partial into a running one as soon as it is
        // computed (the same operations in the same order as `combine_chunks`), so no partial
        // per (row, chunk) is ever stored. The block's rows meet one kv head after another, so
        // that head's keys, read by the first row, are in cache for the others. A task per row
        // read every head's keys in turn for each row: 40 MB of keys and values per layer at
        // pp4000 of ds-v3-mini, more than this project's machines cache.
        let by_block = |bufs: &mut (Scratch<'a>, Vec<f32>, Vec<f32>),
                        (b, o): (usize, &mut [f32])| {
            let (scratch, state, next) = bufs;
            for g in 0..p.kv_heads {
                for (r, o) in o.chunks_mut(width).enumerate() {
                    let i = b * PREFILL_BLOCK_ROWS + r;
                    for (c, t) in row_tasks(p, i, false).enumerate() {
                        let buf = if c == 0 { &mut *state } else { &mut *next };
                        buf.fill(0.0);
                        partial(t, g, buf, scratch);
                        if c > 0 {
                            fold_chunk(state, next, group, p.v_dim, isa);
                        }
                    }
                    finish(state, group, p.v_dim, &mut o[g * slab..(g + 1) * slab]);
                }
            }
        };
        let init = || {
            (
                Scratch::default(),
                vec![0.0f32; part_len],
                vec![0.0f32; part_len],
            )
        };
        let block = width * PREFILL_BLOCK_ROWS;
        if parallel {
            out.par_chunks_mut(block)
                .enumerate()
                .for_each_init(init, by_block);
        } else {
            let mut bufs = init();
            out.chunks_mut(block)
                .enumerate()
                .for_each(|x| by_block(&mut bufs, x));
        }
        return Tensor::matrix(tq, width, out);
    }

    // Few query rows (decode): (row, chunk) tasks, so that one row's chunks run in parallel;
    // per query row: its first task and its chunk count.
    let mut tasks = Vec::new();
    let mut rows = Vec::with_capacity(tq);
    for i in 0..tq {
        let first = tasks.len();
        tasks.extend(row_tasks(p, i, true));
        rows.push((first, tasks.len() - first));
    }
    // Partials: task-major, then kv head.
    let task_len = p.kv_heads * part_len;
    let mut partials = vec![0.0f32; tasks.len() * task_len];
    let run = |(t, parts): (&Task, &mut [f32])| {
        let mut scratch = Scratch::default();
        for (g, part) in parts.chunks_mut(part_len).enumerate() {
            partial(*t, g, part, &mut scratch);
        }
    };
    if parallel {
        tasks
            .par_iter()
            .zip(partials.par_chunks_mut(task_len))
            .for_each(run);
    } else {
        tasks
            .iter()
            .zip(partials.chunks_mut(task_len))
            .for_each(run);
    }
    let combine = |(idx, o): (usize, &mut [f32])| {
        let (i, g) = (idx / p.kv_heads, idx % p.kv_heads);
        let (start, chunks) = rows[i];
        let parts = &partials[start * task_len + g * part_len..];
        combine_chunks(parts, task_len, chunks, group, p.v_dim, o, isa);
    };
    if parallel {
        out.par_chunks_mut(slab).enumerate().for_each(combine);
    } else {
        out.chunks_mut(slab).enumerate().for_each(combine);
    }
    Tensor::matrix(tq, width, out)
}

/// The chunk tasks of query row `i` (kv head 0), in ascending key order: its visible keys cut
/// at absolute multiples of `CHUNK`.
fn row_tasks(p: &AttentionParams, i: usize, prefetch: bool) -> impl Iterator<Item = Task> {
    let pos = p.q_start + i;
    let first = p.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
    (first / CHUNK..=pos / CHUNK).map(move |c| Task {
        row: i,
        g: 0,
        lo: (c * CHUNK).max(first),
        hi: ((c + 1) * CHUNK).min(pos + 1),
        end: pos + 1,
        prefetch,
    })
}

/// Whether a chunk runs the heads-in-lanes form (`attention_lanes512`): on AVX-512, for kv
/// heads of a multiple of 16 query heads and values a multiple of 16 wide. Either form gives
/// the same bits; this one reads each cached row once per 16 heads with no shuffles.
fn lanes_path(isa: Isa, group: usize, v_dim: usize) -> bool {
    cfg!(target_arch = "x86_64")
        && matches!(isa, Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx)
        && group.is_multiple_of(LANES)
        && v_dim.is_multiple_of(LANES)
}

/// Whether many query rows run in lanes (`attention_row_lanes`): on AVX-512, without a sliding
/// window (every row's chunks then start at the same positions), values a multiple of 16 wide.
#[cfg(target_arch = "x86_64")]
fn row_lanes_path(isa: Isa, p: &AttentionParams) -> bool {
    matches!(isa, Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx)
        && p.sliding_window.is_none()
        && p.v_dim.is_multiple_of(LANES)
}

/// One chunk's partial for all heads of kv head `t.g`: `part` = `[m; group] [l; group]
/// [acc; group × v_dim]`.
#[allow(clippy::too_many_arguments)]
fn chunk_partial<'a, R: KeyRows>(
    q: &'a Tensor,
    q_rope: Option<&'a Tensor>,
    keys: &'a R,
    p: &AttentionParams,
    t: Task,
    isa: Isa,
    part: &mut [f32],
    scratch: &mut Scratch<'a>,
) {
    let (group, n) = (p.heads / p.kv_heads, t.hi - t.lo);
    let (d1, d2, vd) = (p.d1, p.d2, p.v_dim);
    let h0 = t.g * group;
    let qrow = q.row(t.row);
    let Scratch {
        qs,
        qr,
        krows,
        rrows,
        vrows,
        scores,
        ..
    } = scratch;
    qs.clear();
    qs.extend((0..group).map(|h| &qrow[(h0 + h) * d1..][..d1]));
    qr.clear();
    match q_rope {
        Some(r) => qr.extend((0..group).map(|h| &r.row(t.row)[(h0 + h) * d2..][..d2])),
        None => qr.resize(group, &[]),
    }
    gather_rows(keys, p, t, krows, rrows, vrows);

    // Scores, key blocks outer (a block stays in L1 while every head tile reads it).
    scores.clear();
    scores.resize(group * n, 0.0);
    let mut tile_out = [[0.0f32; 8]; 4];
    let fetch = RowFetch::new(keys, p, t);
    // Row `lo + r` is requested while the first head tile of row `lo + r - PREFETCH_AHEAD` is
    // computed. The first rows were requested during the previous chunk's value pass when it
    // ran on this thread; otherwise now.
    for r in 0..PREFETCH_AHEAD.min(n) {
        fetch.row(t.lo + r, false);
    }
    let block = score_block(isa, group);
    for j0 in (0..n).step_by(block) {
        let j1 = (j0 + block).min(n);
        let mut h = 0;
        while h < group {
            let ht = head_tile(group - h);
            let kt = keys_per_tile(ht, isa);
            let mut j = j0;
            while j < j1 {
                let k = kt.min(j1 - j);
                if h == 0 {
                    for r in t.lo + j..t.lo + j + k {
                        fetch.row(r + PREFETCH_AHEAD, false);
                        fetch.row(r + L2_AHEAD, true);
                    }
                }
                let tile = ScoreTile {
                    q: &qs[h..h + ht],
                    q_rope: &qr[h..h + ht],
                    key: &krows[j..j + k],
                    rope: &rrows[j..j + k],
                };
                score_tile(&tile, p.scale, isa, &mut tile_out);
                for (hh, row) in tile_out.iter().enumerate().take(ht) {
                    scores[(h + hh) * n + j..][..k].copy_from_slice(&row[..k]);
                }
                j += k;
            }
            h += ht;
        }
    }
    let (ml, acc) = part.split_at_mut(2 * group);
    for (h, s) in scores.chunks_mut(n).enumerate() {
        let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        ml[h] = m;
        ml[group + h] = exp_sum(s, m, isa);
    }
    let mut accs: Vec<&mut [f32]> = acc.chunks_mut(vd).collect();
    let ps: Vec<&[f32]> = scores.chunks(n).collect();
    value_tile(&ps, vrows, &mut accs, isa);
}

/// The buffers of `chunk_partial`, reused across the kv heads of a task.
/// The task's key, rope-key and value rows of kv head `t.g`, in position order.
pub(super) fn gather_rows<'a, R: KeyRows>(
    keys: &'a R,
    p: &AttentionParams,
    t: Task,
    krows: &mut Vec<&'a [f32]>,
    rrows: &mut Vec<&'a [f32]>,
    vrows: &mut Vec<&'a [f32]>,
) {
    let (d1, d2, vd) = (p.d1, p.d2, p.v_dim);
    krows.clear();
    krows.extend((t.lo..t.hi).map(|j| &keys.key(j)[t.g * d1..][..d1]));
    rrows.clear();
    rrows.extend((t.lo..t.hi).map(|j| &keys.rope(j)[..d2]));
    vrows.clear();
    vrows.extend((t.lo..t.hi).map(|j| &keys.value(j)[t.g * vd..][..vd]));
}

#[derive(Default)]
pub(super) struct Scratch<'a> {
    pub(super) qs: Vec<&'a [f32]>,
    pub(super) qr: Vec<&'a [f32]>,
    pub(super) krows: Vec<&'a [f32]>,
    pub(super) rrows: Vec<&'a [f32]>,
    pub(super) vrows: Vec<&'a [f32]>,
    pub(super) scores: Vec<f32>,
    /// The heads-in-lanes score pass's key order (runs side by side), its keys, rope keys and
    /// scores in that order.
    pub(super) order: Vec<usize>,
    pub(super) run_keys: Vec<&'a [f32]>,
    pub(super) run_ropes: Vec<&'a [f32]>,
    pub(super) run_scores: Vec<f32>,
}

/// Prefetching of the cached rows of one task (results never depend on it): a row is
/// requested whole, with one instruction per 64-byte line.
struct RowFetch<'a, R> {
    keys: &'a R,
    g: usize,
    widths: [usize; 3],
    /// Rows at or past this position are not the sequence's.
    end: usize,
    /// `Task::prefetch`: when false, nothing is fetched.
    enabled: bool,
    /// Absorbed MLA's values are the key columns: nothing more to fetch for them.
    values_are_keys: bool,
}

impl<'a, R: KeyRows> RowFetch<'a, R> {
    fn new(keys: &'a R, p: &AttentionParams, t: Task) -> Self {
        let values_are_keys =
            std::ptr::eq(keys.key(t.lo).as_ptr(), keys.value(t.lo).as_ptr()) && t.g == 0;
        RowFetch {
            keys,
            g: t.g,
            widths: [p.d1, p.d2, p.v_dim],
            end: t.end,
            enabled: t.prefetch,
            values_are_keys,
        }
    }
    /// Row `j` into L1 (or L2 when `to_l2`): the whole cached row when the keys live in rows
    /// (the paged cache), else this kv head's key, rope and value slices.
    #[inline(always)]
    fn row(&self, j: usize, to_l2: bool) {
        if !self.enabled || j >= self.end {
            return;
        }
        if let Some(row) = self.keys.whole_row(j) {
            prefetch_lines(row, (0, row.len().div_ceil(16)), to_l2);
            return;
        }
        let [d1, d2, vd] = self.widths;
        let slices = [
            &self.keys.key(j)[self.g * d1..][..d1],
            &self.keys.rope(j)[..d2],
            &self.keys.value(j)[self.g * vd..][..vd],
        ];
        let parts = if self.values_are_keys { 2 } else { 3 };
        for row in slices.iter().take(parts) {
            prefetch_lines(row, (0, row.len().div_ceil(16)), to_l2);
        }
    }
}
