//! Row-wise kernels through the `Backend` trait on the interpreter (race detector on) against
//! `CpuBackend`: `rms_norm_f32`, `silu_mul_f32`, `rope_f32` (both pair layouts, default and YaRN,
//! from a first position) and `argmax_f32` (against a host argmax). Ragged shapes: row widths not
//! multiples of 256/64/32 threads, element counts not multiples of the CTA.

use crate::common::*;
use troupe_engine::backend::{Backend, RopeSlot};
use troupe_engine::dtype::DType;
use troupe_engine::graph::spec::{RopeLayout, RopeSpec, YarnSpec};
use troupe_engine::kernels::rope::RopeTable;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::Tensor;

/// Both sides sum squares in f64 (only the order differs, an error ~1e-16 relative) and then do
/// the same f32 operations (`sqrt.rn`, `div.rn`, two products), so results may differ only when
/// the f64 sum rounds to a different f32: at most 1 ulp of the scale, i.e. ~2 ulp of the output.
const RMS_REL: f32 = 2.5e-7;

#[test]
fn rms_norm_matches_cpu() {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(11);
    for &(rows, cols) in &[(1usize, 7usize), (3, 300), (5, 256), (2, 513), (4, 33)] {
        let x = rng.matrix(rows, cols, 3.0);
        for dtype in [DType::F32, DType::BF16] {
            let w = weight(
                &format!("norm{dtype:?}{cols}"),
                dtype,
                vec![cols],
                &rng.vec(cols, 1.2),
            );
            let got = gpu
                .down(gpu.rms_norm(&gpu.up(&x), &w, 1e-6))
                .expect("interp rms_norm");
            let want = cpu
                .down(cpu.rms_norm(&cpu.up(&x), &w, 1e-6))
                .expect("cpu rms_norm");
            assert_close(
                &format!("rms_norm {rows}x{cols}"),
                got.data(),
                want.data(),
                RMS_REL,
                1e-30,
            );
        }
    }
}

/// `exp` is `ex2.approx(-g * log2 e)` (<= 2 ulp, plus the rounding of the scaled argument, which
/// for |g| <= 8 is <= 8 * 2^-24 relative on exp) against libm `exp` (<= 1 ulp); then the same
/// `1 + e`, division and product. Relative error of the result <= ~1e-6 for |g| <= 8.
const SILU_REL: f32 = 2e-6;

#[test]
fn silu_mul_matches_cpu() {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(12);
    for &(rows, cols) in &[(1usize, 1usize), (3, 100), (7, 77), (1, 513)] {
        let g = rng.matrix(rows, cols, 8.0);
        let u = rng.matrix(rows, cols, 2.0);
        let got = gpu
            .down(gpu.silu_mul(&gpu.up(&g), &gpu.up(&u)))
            .expect("interp silu_mul");
        let want = cpu
            .down(cpu.silu_mul(&cpu.up(&g), &cpu.up(&u)))
            .expect("cpu silu_mul");
        assert_close(
            &format!("silu_mul {rows}x{cols}"),
            got.data(),
            want.data(),
            SILU_REL,
            1e-6,
        );
    }
}

/// cos/sin: the kernel's f64 reduction + Taylor rounded once to f32 (correctly rounded except in
/// rare near-ties) against Rust's f32 `cos`/`sin` (libm, < 1 ulp): the factors may differ by
/// 1 ulp; the rotation is then the same separate products and sums, so an output differs by at most
/// ~2 ulp of max(|x0|, |x1|) * attention_factor. Tolerance: 4 * 2^-24 * max|x| * af, elementwise
/// absolute (relative to the row's scale, since cancellation can make an output tiny).
fn rope_case(spec: &RopeSpec, slot: RopeSlot, rot: usize, first: usize, rows: usize, seed: u64) {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let table = RopeTable::new(spec, rot);
    let x = rng.matrix(rows, slot.heads * slot.head_stride, 2.0);
    let got = gpu
        .down(gpu.rope(&gpu.up(&x), slot, first, &table))
        .expect("interp rope");
    let want = cpu
        .down(cpu.rope(&cpu.up(&x), slot, first, &table))
        .expect("cpu rope");
    assert_eq!(got.shape(), want.shape());
    let tol = 4.0 * f32::EPSILON * 0.5 * 2.0 * table.attention_factor.max(1.0);
    let (d, i) = max_abs_diff(got.data(), want.data());
    assert!(
        d <= tol,
        "rope {:?} rot {rot}: max |d| {d:e} at {i} (tol {tol:e})",
        spec.layout
    );
}

#[test]
fn rope_default_both_layouts_matches_cpu() {
    for (layout, seed) in [(RopeLayout::Interleaved, 21), (RopeLayout::HalfSplit, 22)] {
        let spec = RopeSpec {
            theta: 1e4,
            layout,
            yarn: None,
        };
        // Ragged: 3 heads of stride 20 with the rotated part at 4..20 (16 dims), far positions.
        let slot = RopeSlot {
            heads: 3,
            head_stride: 20,
            offset: 4,
        };
        rope_case(&spec, slot, 16, 0, 8, seed);
        rope_case(&spec, slot, 16, 123_450, 3, seed + 5);
        // Rotated width larger than 2 x 64 threads: pairs t, t + 64, ...
        let slot = RopeSlot {
            heads: 1,
            head_stride: 300,
            offset: 0,
        };
        rope_case(&spec, slot, 300, 5, 2, seed + 10);
    }
}

#[test]
fn rope_yarn_matches_cpu() {
    let yarn = YarnSpec {
        factor: 4.0,
        original_max_position_embeddings: 64,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale: 0.707,
        mscale_all_dim: 0.707,
        attention_factor: None,
    };
    let spec = RopeSpec {
        theta: 1e4,
        layout: RopeLayout::Interleaved,
        yarn: Some(yarn.clone()),
    };
    let slot = RopeSlot {
        heads: 4,
        head_stride: 48,
        offset: 32,
    };
    rope_case(&spec, slot, 16, 62, 4, 23);
    let spec = RopeSpec {
        theta: 1e6,
        layout: RopeLayout::HalfSplit,
        yarn: Some(YarnSpec {
            mscale: 1.0,
            mscale_all_dim: 0.0,
            ..yarn
        }),
    };
    let slot = RopeSlot {
        heads: 2,
        head_stride: 10,
        offset: 0,
    };
    rope_case(&spec, slot, 10, 999, 3, 24);
}

fn host_argmax(x: &Tensor) -> Vec<u32> {
    (0..x.rows())
        .map(|r| {
            let row = x.row(r);
            let mut best = 0;
            for (c, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = c;
                }
            }
            best as u32
        })
        .collect()
}

/// Integer result: exact, including ties (lowest index wins) spread over different threads/warps.
#[test]
fn argmax_exact_with_ties() {
    let gpu = interp();
    let mut rng = Rng::new(31);
    for &(rows, cols) in &[(1usize, 1usize), (3, 1000), (2, 257), (5, 31)] {
        let mut x = rng.matrix(rows, cols, 1.0);
        if cols > 3 {
            // Row 0: a tie between a late column and an early one (different threads and warps).
            let c_late = cols - 1;
            let c_early = cols / 3;
            x.data_mut()[c_late] = 5.0;
            x.data_mut()[c_early] = 5.0;
        }
        if rows > 1 {
            // Row 1: all equal -> column 0.
            for v in &mut x.data_mut()[cols..2 * cols] {
                *v = -2.0;
            }
        }
        let got = gpu.argmax(&gpu.up(&x)).expect("interp argmax");
        assert_eq!(got, host_argmax(&x), "argmax {rows}x{cols}");
    }
}
