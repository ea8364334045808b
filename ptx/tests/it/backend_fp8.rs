//! FP8 block-scaled weights through `GpuBackend` on the interpreter (race detector on): the
//! default weight-only `linear` gives the bits of the documented FP8 order (so the weight bytes
//! and scales reach the device intact), agrees with `CpuBackend`'s FP8 linear within the bound of
//! the two reduction orders and is batch invariant; the weights and scales are uploaded once
//! (1 byte per weight plus the f32 scales); the W8A8 path (`fp8_quant_act` +
//! `fp8_gemm_blockscaled`) runs only when asked for, only on sm_89+, only where `k % 128 == 0`,
//! and its error against the f32-activation result is measured and bounded, not hidden.

use crate::common::*;
use crate::kernel_linear_fp8::fp8_dot_host;
use troupe_engine::backend::Backend;
use troupe_engine::dtype::DType;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::weights::Weight;
use troupe_ptx::{Fp8Compute, GpuBackend, InterpDevice, InterpOptions};

/// An FP8 `[n, k]` weight quantised (DeepSeek's 128×128 blocks) from random values.
fn fp8_weight(rng: &mut Rng, name: &str, n: usize, k: usize) -> Weight {
    weight(name, DType::F8E4M3, vec![n, k], &rng.vec(n * k, 0.5))
}

/// The e4m3 bytes and the scales of weight row `j`.
fn row_of(w: &Weight, j: usize) -> (&[u8], &[f32]) {
    let k = w.cols();
    let bytes = w.as_u8().expect("fp8 bytes");
    let s = w
        .block_scales()
        .expect("scales")
        .row_scales(j)
        .expect("row");
    (&bytes[j * k..(j + 1) * k], s)
}

/// Shapes (m, n, k): decode over three k-blocks (the last partial); rows past the 4-row step,
/// n over two scale rows, a 2-wide last k-block; k < 32.
const SHAPES: &[(usize, usize, usize)] = &[(1, 10, 300), (6, 131, 130), (3, 9, 20)];

#[test]
fn fp8_linear_is_the_block_order_and_matches_cpu() {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(301);
    for &(m, n, k) in SHAPES {
        let x = rng.matrix(m, k, 1.0);
        let w = fp8_weight(&mut rng, &format!("fp8w{m}x{n}x{k}"), n, k);
        let before = gpu.counters();
        let got = gpu.down(gpu.linear(&gpu.up(&x), &w)).expect("gpu linear");
        let c = gpu.counters().since(&before);
        assert_eq!(c.launches.get("linear_fp8w"), Some(&1), "{:?}", c.launches);
        // x, then the weight at 1 byte per element and its f32 scales.
        let scales = 4 * n.div_ceil(128) * k.div_ceil(128);
        assert_eq!(c.h2d_bytes as usize, 4 * m * k + n * k + scales);
        let want = cpu.down(cpu.linear(&cpu.up(&x), &w)).expect("cpu linear");
        let wf = w.to_f32_vec();
        for r in 0..m {
            for j in 0..n {
                let (bytes, s) = row_of(&w, j);
                let g = got.row(r)[j];
                let exact = fp8_dot_host(x.row(r), bytes, s);
                assert_eq!(g.to_bits(), exact.to_bits(), "m{m} n{n} k{k} [{r},{j}]");
                // Both orders: <= (chain + tree + 2 per block + blocks) roundings of sum|x w|.
                let abs: f32 = (0..k).map(|i| (x.row(r)[i] * wf[j * k + i]).abs()).sum();
                let terms = k.div_ceil(32) + 5 + k.div_ceil(16) + 4 + 3 * k.div_ceil(128) + 2;
                let tol = terms as f32 * f32::EPSILON * 0.5 * abs + f32::MIN_POSITIVE;
                let e = want.row(r)[j];
                assert!(
                    (g - e).abs() <= tol,
                    "[{r},{j}]: {g} vs cpu {e} (tol {tol:e})"
                );
            }
        }
        let last = x.slice_rows(m - 1, m);
        let alone = gpu.down(gpu.linear(&gpu.up(&last), &w)).expect("one row");
        assert_bits("batch invariance", alone.data(), got.row(m - 1));
        // The second call re-uploads nothing but x.
        let before = gpu.counters();
        gpu.down(gpu.linear(&gpu.up(&last), &w)).expect("again");
        assert_eq!(gpu.counters().since(&before).h2d_bytes as usize, 4 * k);
    }
}

#[test]
fn fp8_weight_without_scales_is_a_typed_error_naming_it() {
    let gpu = interp();
    let w =
        Weight::from_bytes("bare.weight", DType::F8E4M3, vec![4, 8], &[0x38; 32]).expect("bytes");
    let x = Rng::new(1).matrix(1, 8, 1.0);
    let e = gpu.linear(&gpu.up(&x), &w).expect_err("no scales");
    assert!(e.to_string().contains("bare.weight"), "{e}");
}

fn w8a8_interp(sm: u32) -> troupe_ptx::GpuResult<GpuBackend<InterpDevice>> {
    GpuBackend::new(InterpDevice::new(InterpOptions {
        race_check: true,
        sm,
    }))
    .with_fp8_compute(Fp8Compute::W8A8)
}

/// W8A8 rounds each activation x_i of a 1×128 block with scale s = amax/448 to e4m3 (3 mantissa
/// bits: |error| <= 2^-4 |x_i| for normals, <= 2^-10 s in the subnormal range), so against the
/// f32-activation result each output moves by at most sum_i (|x_i|/16 + s_i/1024) |w_i| (+ f32
/// roundings, far smaller). The test prints the measured error relative to max|y| next to the
/// 2e-4 the f32 paths meet.
#[test]
fn fp8_w8a8_is_opt_in_sm89_only_and_its_error_is_measured() {
    assert!(w8a8_interp(80).is_err(), "W8A8 must be refused on sm_80");
    assert_eq!(interp().fp8_compute(), Fp8Compute::WeightOnly);
    let gpu = w8a8_interp(89).expect("sm_89");
    let exact = interp();
    let mut rng = Rng::new(302);
    for &(m, n, k) in &[(3usize, 40usize, 256usize), (2, 9, 130)] {
        let x = rng.matrix(m, k, 1.0);
        let w = fp8_weight(&mut rng, &format!("w8a8_{n}x{k}"), n, k);
        let before = gpu.counters();
        let got = gpu.down(gpu.linear(&gpu.up(&x), &w)).expect("w8a8 linear");
        let launched = gpu.counters().since(&before).launches;
        let want = exact.down(exact.linear(&exact.up(&x), &w)).expect("f32");
        if k % 128 != 0 {
            assert_eq!(launched.get("linear_fp8w"), Some(&1), "{launched:?}");
            assert_bits("k % 128 != 0 falls back", got.data(), want.data());
            continue;
        }
        assert_eq!(launched.get("fp8_quant_act"), Some(&1), "{launched:?}");
        assert_eq!(
            launched.get("fp8_gemm_blockscaled"),
            Some(&1),
            "{launched:?}"
        );
        let wf = w.to_f32_vec();
        let (mut worst, mut ymax) = (0.0f32, 0.0f32);
        for r in 0..m {
            for j in 0..n {
                let (g, e) = (got.row(r)[j], want.row(r)[j]);
                let xr = x.row(r);
                let amax = |i: usize| {
                    xr[i / 128 * 128..(i / 128 * 128 + 128).min(k)]
                        .iter()
                        .fold(0.0f32, |a, v| a.max(v.abs()))
                };
                let tol: f32 = (0..k)
                    .map(|i| (xr[i].abs() / 16.0 + amax(i) / 448.0 / 1024.0) * wf[j * k + i].abs())
                    .sum::<f32>()
                    + 1e-6;
                assert!((g - e).abs() <= tol, "[{r},{j}]: {g} vs {e} (tol {tol:e})");
                worst = worst.max((g - e).abs());
                ymax = ymax.max(e.abs());
            }
        }
        eprintln!(
            "W8A8 vs f32 activations, m{m} n{n} k{k}: max |d| = {worst:e} = {:.2e} x max|y| \
             (the f32 paths' tolerance is 2e-4 x max|y|)",
            worst / ymax
        );
        assert!(worst > 0.0, "W8A8 must round the activations");
        let alone = gpu
            .down(gpu.linear(&gpu.up(&x.slice_rows(m - 1, m)), &w))
            .expect("one row");
        assert_bits("W8A8 batch invariance", alone.data(), got.row(m - 1));
    }
}
