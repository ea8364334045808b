//! `linear`: `y = x @ W^T` for f32 activations and f32/bf16/f16 weights stored `[out, in]`, and
//! [`linear_many`]: several such products in one parallel region (the grouped expert MLP's gate
//! and up projections of every expert at once).
//!
//! Each product is split by weight rows (output columns) into contiguous chunks that the compute
//! pool's threads ([`super::pool`]) claim as they go, each taking half of what is left per thread
//! (long chunks first, single units of 16 columns at the end, so threads finish together); a
//! chunk writes its columns straight into the output.
//! Inside a chunk, a single x row (decode's GEMV) reads the chunk's weight rows as a few long
//! sequential streams, a row of each at a time (`gemv_bf16`, `dot_i8`, `dot_pairs::gemv_pairs`;
//! why: [`super::decode_streams`]). More rows use register tiles of (x rows ×
//! weight rows), 3×2 (each weight load reused three times, each x load twice; 4×4 on AVX-512),
//! walked a strip of 16 weight rows at a time over all x rows, so a strip stays in cache. From
//! 8 rows on, AVX2 hands bf16 and int8 weights to [`super::panel_gemm`] (f32 panels, blocked
//! over rows and `k`, aligned copies of x: 1.3–1.4× the tiles' GFLOP/s at 128 rows). On AVX-512,
//! from `PANEL_MIN_ROWS` (16) rows on, a bf16 weight's strip of 8 rows is first widened to an f32
//! panel (32 KiB) that the tiles read without widening each load (exact, so the same bits).
//! Every output element is one `dot` chain in the order fixed by [`super::dot`], so results do not depend on
//! the tiling, the chunking, the batch size, the thread count or the instruction set.
//!
//! Under `--compute bf16` ([`super::precision`]) the activations are rounded to bf16 first
//! (once per distinct input: the gate and up projections of an expert share theirs). On the
//! [`Isa::Avx512Bf16`] path, bf16 weights then meet them in `vdpbf16ps` tiles of the same shapes,
//! in the pair-dot order of [`super::dot_pairs`] (its own bits, equally independent of tiling,
//! chunking, batch and threads); other weight types keep the f32 order on rounded activations.
//! On the [`Isa::Amx`] path, bf16 weights whose rows are a multiple of 32 long meet the
//! activations, packed once per input, in AMX tiles ([`super::amx`]: 32 × 32 output blocks, its
//! own order, again independent of all of these); shorter or ragged rows take `vdpbf16ps`.
//!
//! The storage type is dispatched in `columns_into` (`WFlat`): FP8 block-scaled weights are
//! one such type, filled by [`super::fp8`] in its own fixed order, so an expert layer's FP8
//! projections share a region with everything else. int8 weights (`weights::int8`) are read
//! as rows of `q · scale` products in the one dot order, widened in registers.

use super::amx::{self, PackedRows, TILE_K};
use super::dot::{dot_block, WRow};
use super::dot_pairs::pairs_block;
use super::fp8::Fp8Rows;
use super::isa::{self, Isa};
use super::pool;
use super::precision::{self, Compute};
use crate::dtype::{bf16_to_f32, f32_to_bf16, DType};
use crate::error::{EngineError, Result};
use crate::tensor::Tensor;
use crate::weights::Weight;

/// Below this many multiply-adds in a region, it runs on the calling thread.
const SERIAL_WORK: usize = 1 << 15;
/// Fewest weight rows (output columns) in one chunk.
const MIN_COLS_PER_TASK: usize = 16;

/// A weight's elements, by storage type.
#[derive(Clone, Copy)]
enum WFlat<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [u16]),
    /// e4m3 bytes with their 128×128 block scales.
    F8(Fp8Rows<'a>),
    /// int8 elements `[out, k]` with their scales `[out, grid_cols]` (one per 32 of a row).
    I8 {
        q: &'a [i8],
        scales: &'a [f32],
        grid_cols: usize,
    },
}

fn flat(w: &Weight) -> Result<WFlat<'_>> {
    Ok(match w.dtype() {
        DType::F32 => WFlat::F32(w.as_f32()?),
        DType::BF16 => WFlat::BF16(w.as_u16()?),
        DType::F16 => WFlat::F16(w.as_u16()?),
        DType::F8E4M3 => WFlat::F8(Fp8Rows::of(w)?),
        DType::I8 => {
            let s = w.block_scales().ok_or_else(|| {
                EngineError::kernel("linear", format!("i8 tensor `{}` has no scales", w.name()))
            })?;
            s.check_for(w)?;
            WFlat::I8 {
                q: w.as_i8()?,
                scales: s.scale_inv.as_f32()?,
                grid_cols: s.scale_inv.cols(),
            }
        }
    })
}

/// Row `r` (`k` elements) of a weight as a typed slice.
#[inline(always)]
fn weight_row<'a>(wf: WFlat<'a>, k: usize, r: usize) -> WRow<'a> {
    match wf {
        WFlat::F32(s) => WRow::F32(&s[r * k..(r + 1) * k]),
        WFlat::BF16(s) => WRow::BF16(&s[r * k..(r + 1) * k]),
        WFlat::F16(s) => WRow::F16(&s[r * k..(r + 1) * k]),
        WFlat::I8 {
            q,
            scales,
            grid_cols,
        } => WRow::I8 {
            q: &q[r * k..(r + 1) * k],
            scales: &scales[r * grid_cols..(r + 1) * grid_cols],
        },
        // `columns_into` hands FP8 weights to their kernel before it reads rows.
        WFlat::F8(_) => unreachable!("FP8 rows are read by kernels::fp8"),
    }
}

/// Where a region's tasks write: a `[rows, stride]` row-major f32 buffer shared by tasks that
/// write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: tasks of one region write disjoint elements (distinct column ranges or products), and
// the buffer outlives the region.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Writes `v` at `i`.
    ///
    /// # Safety
    /// No other thread accesses element `i` during the region.
    #[inline(always)]
    unsafe fn set(self, i: usize, v: f32) {
        debug_assert!(i < self.len);
        *self.ptr.add(i) = v;
    }
}

/// Computes columns `c0..c1` of `x @ W^T` (`x` is `[n, k]` row-major) into `out[r * out_dim + c]`.
///
/// # Safety
/// No other thread touches those output elements meanwhile; `out` holds `n * out_dim`.
#[allow(clippy::too_many_arguments)]
unsafe fn columns_into(
    x: &[f32],
    x16: Option<&Rounded>,
    n: usize,
    k: usize,
    wf: WFlat<'_>,
    (c0, c1): (usize, usize),
    out_dim: usize,
    isa: Isa,
    out: OutPtr,
) {
    if let WFlat::F8(rows) = wf {
        return rows.columns(x, n, (c0, c1), isa, &mut |r, c, v| {
            out.set(r * out_dim + c, v)
        });
    }
    #[cfg(target_arch = "x86_64")]
    if let (
        1,
        true,
        WFlat::I8 {
            q,
            scales,
            grid_cols,
        },
    ) = (n, isa.has_avx2() && isa.supported(), wf)
    {
        // SAFETY: AVX2+FMA (and AVX-512F when `has_avx512`) checked just above; `q` holds
        // `out_dim >= c1` rows of `k`, `scales` as many of `grid_cols`.
        return super::dot_i8::columns(
            x,
            q,
            scales,
            (k, grid_cols),
            (c0, c1),
            isa.has_avx512(),
            &mut |c, v| out.set(c, v),
        );
    }
    #[cfg(target_arch = "x86_64")]
    if let (1, true, None, WFlat::BF16(w)) = (n, isa.has_avx2() && isa.supported(), x16, wf) {
        // SAFETY: AVX2+FMA+F16C checked just above; `w` holds `out_dim >= c1` rows of `k`.
        return super::gemv_bf16::columns(x, w, k, (c0, c1), &mut |c, v| out.set(c, v));
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(Rounded::Tiles(packed)), WFlat::BF16(w)) = (x16, wf) {
        // SAFETY: activations are packed only on the AMX path, which `linear_many_in` checked
        // this processor has; `w` holds `out_dim >= c1` rows of `k`.
        return amx::columns(packed, w, (c0, c1), &mut |r, c, v| {
            out.set(r * out_dim + c, v)
        });
    }
    if let (1, Some(Rounded::Bf16(x16)), WFlat::BF16(w)) = (n, x16, wf) {
        if k.is_multiple_of(super::dot_pairs::CHUNK) {
            // Decode: one bf16 row against the weights, in several streams (same bits as the
            // 1 × 4 tiles below).
            return super::dot_pairs::gemv_pairs(x16, w, k, (c0, c1), isa, &mut |c, v| {
                out.set(c, v)
            });
        }
    }
    if let (Some(Rounded::Bf16(x16)), WFlat::BF16(w)) = (x16, wf) {
        // bf16 activations against bf16 weights: the pair-dot order, 4 × 4 tiles (1 × 4 for
        // one row).
        return write_blocks(
            n,
            (c0, c1),
            (4, 4),
            out_dim,
            out,
            |(r, rn), (c, cn), tile| {
                let xs: [&[u16]; 4] = std::array::from_fn(|i| &x16[(r + i.min(rn - 1)) * k..][..k]);
                let ws: [&[u16]; 4] = std::array::from_fn(|j| &w[(c + j.min(cn - 1)) * k..][..k]);
                pairs_block(&xs[..rn], &ws[..cn], isa, tile);
            },
        );
    }
    // One row of weights other than bf16 and int8: 1×4 tiles; otherwise 3×2 tiles (12 of AVX2's
    // 16 registers as accumulators) or 4×4 on AVX-512, whose 32 registers hold the 16.
    let steps = match (n, isa) {
        (1, _) => (1, 4),
        (_, Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx) => (4, 4),
        _ => (3, 2),
    };
    let xrow = |r: usize| &x[r * k..(r + 1) * k];
    // The tiles over columns `cols`, weight row `c` read as row `c - first` of `rows`.
    let tiles = |cols: (usize, usize), rows: WFlat<'_>, first: usize| {
        // SAFETY: as this function's.
        unsafe {
            write_blocks(n, cols, steps, out_dim, out, |(r, rn), (c, cn), tile| {
                let xs: [&[f32]; 4] = std::array::from_fn(|i| xrow(r + i.min(rn - 1)));
                let ws: [WRow<'_>; 4] =
                    std::array::from_fn(|j| weight_row(rows, k, c + j.min(cn - 1) - first));
                dot_block(&xs[..rn], &ws[..cn], isa, tile);
            })
        }
    };
    #[cfg(target_arch = "x86_64")]
    if n >= super::panel_gemm::MIN_ROWS && isa == Isa::Avx2 && isa.supported() {
        use super::panel_gemm::{self, PanelWeights};
        let panel = match wf {
            WFlat::BF16(w) => Some(PanelWeights::Bf16(w)),
            WFlat::I8 {
                q,
                scales,
                grid_cols,
            } => Some(PanelWeights::I8 {
                q,
                scales,
                grid_cols,
            }),
            _ => None,
        };
        if let Some(w) = panel {
            // SAFETY: `Isa::Avx2` is a supported path here (`linear_many_in` checked it);
            // `x` holds `n` rows of `k`, `w` `out_dim >= c1` rows.
            return panel_gemm::columns(x, (n, k), w, (c0, c1), (out.ptr, out_dim));
        }
    }
    if let (true, WFlat::BF16(w)) = (n >= PANEL_MIN_ROWS, wf) {
        // Each strip's bf16 rows widened once into an f32 panel that every x row then reads:
        // the tiles' inner loop loses its widening instructions. Widening is exact, so the
        // tiles see the same f32 weights and give the same bits.
        let strip = PANEL_COLS.next_multiple_of(steps.1);
        return PANEL.with_borrow_mut(|panel| {
            panel.resize(strip * k, 0.0);
            for s0 in (c0..c1).step_by(strip) {
                let s1 = (s0 + strip).min(c1);
                for (dst, src) in panel.iter_mut().zip(&w[s0 * k..s1 * k]) {
                    *dst = bf16_to_f32(*src);
                }
                tiles((s0, s1), WFlat::F32(panel), s0);
            }
        });
    }
    tiles((c0, c1), wf, 0);
}

/// Fewest x rows for which a bf16 weight's strips are widened to f32 panels first (see
/// `columns_into`): below it the widening would cost more than it saves.
const PANEL_MIN_ROWS: usize = 16;

/// Weight rows per f32 panel: 8 rows 1024 long (32 KiB) fit L1.
const PANEL_COLS: usize = 8;

thread_local! {
    /// The calling thread's f32 panel, kept between calls so a pool thread allocates it once.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Weight rows per column strip of `write_blocks`: a strip of bf16 rows 1024 long (32 KiB) stays
/// in L1 while every row of x meets it.
const STRIP_COLS: usize = 16;

/// Walks columns `c0..c1` of rows `0..n` in blocks of at most `row_step × col_step`: strips of
/// [`STRIP_COLS`] columns outside, then rows, then the strip's columns, so a strip's weight rows
/// are read from memory once and then from cache for every row. `block((r, rn), (c, cn), tile)`
/// fills `tile[..rn][..cn]` for rows `r..r + rn` and columns `c..c + cn`, which go to
/// `out[row * out_dim + column]`.
///
/// # Safety
/// As `columns_into`.
unsafe fn write_blocks(
    n: usize,
    (c0, c1): (usize, usize),
    (row_step, col_step): (usize, usize),
    out_dim: usize,
    out: OutPtr,
    mut block: impl FnMut((usize, usize), (usize, usize), &mut [[f32; 4]; 4]),
) {
    let strip = STRIP_COLS.next_multiple_of(col_step);
    for s0 in (c0..c1).step_by(strip) {
        let s1 = (s0 + strip).min(c1);
        let mut r = 0;
        while r < n {
            let rn = (n - r).min(row_step);
            let mut c = s0;
            while c < s1 {
                let cn = (s1 - c).min(col_step);
                let mut tile = [[0.0f32; 4]; 4];
                block((r, rn), (c, cn), &mut tile);
                for (dr, trow) in tile.iter().enumerate().take(rn) {
                    for (dc, v) in trow.iter().enumerate().take(cn) {
                        out.set((r + dr) * out_dim + c + dc, *v);
                    }
                }
                c += cn;
            }
            r += rn;
        }
    }
}

/// An activation matrix rounded for `--compute bf16`: f32 values for the f32-order kernels,
/// bf16 bits for the pair-dot tiles, or bf16 packed for the AMX tiles.
enum Rounded {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    Tiles(PackedRows),
}

/// How a job's activations are rounded under `--compute bf16`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rounding {
    F32,
    Pairs,
    Tiles,
}

impl Rounding {
    /// The form `isa` (which the caller checked this processor runs) multiplies `w` in.
    fn of(isa: Isa, w: &Weight) -> Rounding {
        match (isa, w.dtype()) {
            (Isa::Amx, DType::BF16) if w.cols().is_multiple_of(TILE_K) => Rounding::Tiles,
            (_, DType::BF16) if isa.has_avx512bf16() => Rounding::Pairs,
            _ => Rounding::F32,
        }
    }

    fn round(self, x: &Tensor) -> Rounded {
        let bits = || {
            x.data()
                .iter()
                .map(|&v| f32_to_bf16(v))
                .collect::<Vec<u16>>()
        };
        match self {
            Rounding::F32 => {
                Rounded::F32(x.data().iter().map(|&v| precision::round_bf16(v)).collect())
            }
            Rounding::Pairs => Rounded::Bf16(bits()),
            Rounding::Tiles => Rounded::Tiles(PackedRows::pack(&bits(), x.rows(), x.cols())),
        }
    }
}

/// One product of a [`linear_many`] region: `x @ w^T` into `out` (`[x.rows(), w.rows()]`).
pub struct LinearJob<'a> {
    pub x: &'a Tensor,
    pub w: &'a Weight,
    pub out: &'a mut [f32],
}

/// A checked job: its weight's elements and its output pointer.
struct Ready<'a> {
    x: &'a [f32],
    /// The activations as bf16 bits, for the pair-dot or AMX tiles.
    x16: Option<&'a Rounded>,
    n: usize,
    k: usize,
    wf: WFlat<'a>,
    out_dim: usize,
    out: OutPtr,
}

fn check(x: &Tensor, w: &Weight) -> Result<()> {
    if w.shape().len() != 2 || x.cols() != w.cols() {
        return Err(EngineError::ShapeMismatch {
            tensor: w.name().to_string(),
            expected: vec![w.rows(), x.cols()],
            found: w.shape().to_vec(),
        });
    }
    Ok(())
}

/// Runs every job in one parallel region on `isa`: tasks are contiguous column chunks of each
/// job (`cols_per_task` columns each when given — tests vary it — else sized for the pool).
/// Each output element is computed exactly as [`linear`] computes it.
pub fn linear_many_with(
    jobs: &mut [LinearJob<'_>],
    isa: Isa,
    cols_per_task: Option<usize>,
) -> Result<()> {
    linear_many_in(jobs, isa, precision::compute(), cols_per_task)
}

/// As [`linear_many_with`], in the compute precision `compute` rather than the process's mode
/// (tests compare the modes side by side).
pub fn linear_many_in(
    jobs: &mut [LinearJob<'_>],
    isa: Isa,
    compute: Compute,
    cols_per_task: Option<usize>,
) -> Result<()> {
    if !isa.supported() {
        return Err(EngineError::internal(format!(
            "linear: the {isa} kernels cannot run on this processor"
        )));
    }
    // Generated rows take the pair-dot kernels on the amx path (`row_kind`).
    let isa = super::row_kind::for_rows(isa);
    let mut work = 0usize;
    for j in jobs.iter() {
        check(j.x, j.w)?;
        if j.out.len() != j.x.rows() * j.w.rows() {
            return Err(EngineError::kernel(
                "linear",
                format!(
                    "output of {} for [{}, {}]",
                    j.out.len(),
                    j.x.rows(),
                    j.w.rows()
                ),
            ));
        }
        work += j.x.rows() * j.w.rows() * j.w.cols();
    }
    // `--compute bf16`: the activations, rounded to bf16, replace each job's input; jobs that
    // share an input share its rounding (`source[i]`: the job whose rounding job `i` reads;
    // only that job's `rounded` entry is `Some`).
    let mut rounded: Vec<Option<Rounded>> = Vec::new();
    let mut source: Vec<usize> = Vec::new();
    if compute == Compute::Bf16 {
        for (i, j) in jobs.iter().enumerate() {
            let form = Rounding::of(isa, j.w);
            let same = |o: &LinearJob<'_>| {
                std::ptr::eq(o.x.data(), j.x.data()) && Rounding::of(isa, o.w) == form
            };
            let shared = jobs[..i].iter().position(same);
            source.push(shared.unwrap_or(i));
            rounded.push(match shared {
                Some(_) => None,
                None => Some(form.round(j.x)),
            });
        }
    }
    let mut ready = Vec::with_capacity(jobs.len());
    for (i, j) in jobs.iter_mut().enumerate() {
        let (x, x16) = match source.get(i).and_then(|&s| rounded[s].as_ref()) {
            None => (j.x.data(), None),
            Some(Rounded::F32(r)) => (&r[..], None),
            Some(r) => (j.x.data(), Some(r)),
        };
        ready.push(Ready {
            x,
            x16,
            n: j.x.rows(),
            k: j.w.cols(),
            wf: flat(j.w)?,
            out_dim: j.w.rows(),
            out: OutPtr {
                ptr: j.out.as_mut_ptr(),
                len: j.out.len(),
            },
        });
    }
    // The region's columns, job after job, in units (a job's last unit may be short): a
    // chunk is a run of whole units, so its first column is a multiple of the unit in its job.
    let unit = match cols_per_task {
        Some(per) => per.max(1),
        None if isa == Isa::Amx => 2 * amx::TILE_ROWS,
        None => MIN_COLS_PER_TASK,
    };
    // Job `i` holds the region's units `spans[i]`.
    let mut spans = Vec::with_capacity(ready.len());
    let mut units = 0;
    for j in &ready {
        let first = units;
        units += j.out_dim.div_ceil(unit);
        spans.push(first..units);
    }
    // Units `u0..u1` of the region: each job's share computed in place.
    let run = |u0: usize, u1: usize| {
        for (j, span) in ready.iter().zip(&spans) {
            let (f, a, b) = (span.start, u0.max(span.start), u1.min(span.end));
            if a < b {
                let c0 = (a - f) * unit;
                let c1 = ((b - f) * unit).min(j.out_dim);
                // SAFETY: a unit is claimed by one chunk only, so these columns of the job's
                // output, which outlives the region (borrowed mutably by `jobs`), are written
                // by this call alone.
                unsafe {
                    columns_into(j.x, j.x16, j.n, j.k, j.wf, (c0, c1), j.out_dim, isa, j.out)
                };
            }
        }
    };
    if work < SERIAL_WORK {
        run(0, units);
        return Ok(());
    }
    match cols_per_task {
        // One task per unit, as asked.
        Some(_) => pool::for_each_task(units, &|u| run(u, u + 1)),
        // Long runs first, for the decode GEMVs' streams; single units at the end.
        None => pool::claim_units(units, &run),
    }
    Ok(())
}

/// [`linear_many_with`] on the active instruction set.
pub fn linear_many(jobs: &mut [LinearJob<'_>]) -> Result<()> {
    linear_many_with(jobs, isa::active(), None)
}

/// `x @ w^T` for every `w` of `ws` (all `[_, in]`), in one parallel region: the same bits as
/// one [`linear`] each, since every output column is its own dot.
pub fn linears(x: &Tensor, ws: &[&Weight]) -> Result<Vec<Tensor>> {
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0; x.rows() * w.rows()]).collect();
    let mut jobs: Vec<LinearJob<'_>> = ws
        .iter()
        .zip(outs.iter_mut())
        .map(|(w, out)| LinearJob { x, w, out })
        .collect();
    linear_many(&mut jobs)?;
    drop(jobs);
    ws.iter()
        .zip(outs)
        .map(|(w, out)| Tensor::matrix(x.rows(), w.rows(), out))
        .collect()
}

/// `x` `[n, in]` times `w^T` (`w` is `[out, in]`) → `[n, out]`.
pub fn linear(x: &Tensor, w: &Weight) -> Result<Tensor> {
    linear_with(x, w, isa::active())
}

/// As [`linear`], on the instruction set `isa` (tests compare the paths).
pub fn linear_with(x: &Tensor, w: &Weight, isa: Isa) -> Result<Tensor> {
    linear_split(x, w, isa, None)
}

/// As [`linear_with`], in chunks of `cols_per_task` output columns when given.
pub fn linear_split(
    x: &Tensor,
    w: &Weight,
    isa: Isa,
    cols_per_task: Option<usize>,
) -> Result<Tensor> {
    check(x, w)?;
    let mut out = vec![0.0f32; x.rows() * w.rows()];
    linear_many_with(
        &mut [LinearJob {
            x,
            w,
            out: &mut out,
        }],
        isa,
        cols_per_task,
    )?;
    Tensor::matrix(x.rows(), w.rows(), out)
}
