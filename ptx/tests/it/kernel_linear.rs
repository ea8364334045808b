//! `linear_*w` and `embedding_*` through the `Backend` trait on the interpreter (race detector on,
//! the backend's launch configuration) against `troupe_engine::kernels::CpuBackend`, on ragged
//! shapes: m not a multiple of the 16-row chunk or of the 4-row step, n not a multiple of the 8
//! warps, k not a multiple of the 32 lanes.

use crate::common::*;
use troupe_engine::backend::Backend;
use troupe_engine::dtype::DType;
use troupe_engine::kernels::CpuBackend;

/// Shapes (m, n, k): decode GEMV (m = 1), tails in every dimension, k < 32 (idle lanes).
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 9, 33),
    (5, 13, 70),
    (17, 8, 64),
    (3, 1, 7),
    (20, 17, 129),
];

/// The GPU sums lane-strided partials (32 chains of ceil(k/32) fmas, then a 5-level butterfly);
/// the CPU sums 16 chains of ceil(k/16) fmas then a 4-level fold. Each order's rounding error is
/// bounded by gamma_n * sum|x_i w_i| with n = chain length + tree depth (Higham, eq. 3.5), so
/// the two results differ by at most (n_gpu + n_cpu) * u * sum|x_i w_i| (u = 2^-24), plus a
/// u-sized slack for the final rounding. This is tight for a reordering and still catches any
/// wrong index (an error of one term is ~|x w|, far above u * sum|x w| * ~20).
fn reorder_bound(k: usize, abs_dot: f32) -> f32 {
    let n = (k.div_ceil(32) + 5 + k.div_ceil(16) + 4) as f32;
    (n + 1.0) * f32::EPSILON * 0.5 * abs_dot + f32::MIN_POSITIVE
}

fn check_linear(dtype: DType, seed: u64) {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    for &(m, n, k) in SHAPES {
        let x = rng.matrix(m, k, 1.0);
        let wv = rng.vec(n * k, 0.5);
        let w = weight(&format!("w{m}x{n}x{k}"), dtype, vec![n, k], &wv);
        let got = gpu
            .down(gpu.linear(&gpu.up(&x), &w))
            .expect("interp linear");
        let want = cpu.down(cpu.linear(&cpu.up(&x), &w)).expect("cpu linear");
        assert_eq!(got.shape(), want.shape());
        let wf = w.to_f32_vec();
        for r in 0..m {
            for c in 0..n {
                let abs_dot: f32 = (0..k).map(|i| (x.row(r)[i] * wf[c * k + i]).abs()).sum();
                let (g, e) = (got.row(r)[c], want.row(r)[c]);
                let tol = reorder_bound(k, abs_dot);
                assert!(
                    (g - e).abs() <= tol,
                    "{dtype:?} m{m} n{n} k{k} [{r},{c}]: {g} vs {e} (tol {tol:e})"
                );
            }
        }
        // Batch invariance: row r alone gives bitwise the same result as inside the batch.
        let last = x.slice_rows(m - 1, m);
        let alone = gpu
            .down(gpu.linear(&gpu.up(&last), &w))
            .expect("interp linear, one row");
        assert_bits("batch invariance", alone.data(), got.row(m - 1));
    }
}

#[test]
fn linear_f32_weights_match_cpu() {
    check_linear(DType::F32, 1);
}

#[test]
fn linear_bf16_weights_match_cpu() {
    check_linear(DType::BF16, 2);
}

#[test]
fn linear_f16_weights_match_cpu() {
    check_linear(DType::F16, 3);
}

/// Embedding is a copy (bf16 upcast by a shift, f16 upcast on upload): bit-exact.
#[test]
fn embedding_matches_cpu_bit_exact() {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(4);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for &(vocab, hidden) in &[(7usize, 5usize), (37, 300), (3, 257)] {
            let t = weight(
                &format!("emb{dtype:?}{vocab}x{hidden}"),
                dtype,
                vec![vocab, hidden],
                &rng.vec(vocab * hidden, 2.0),
            );
            let ids: Vec<u32> = (0..11).map(|_| rng.below(vocab as u32)).collect();
            let got = gpu.down(gpu.embedding(&t, &ids)).expect("interp embedding");
            let want = cpu.down(cpu.embedding(&t, &ids)).expect("cpu embedding");
            assert_eq!(got.shape(), want.shape());
            assert_bits(
                &format!("embedding {dtype:?} {vocab}x{hidden}"),
                got.data(),
                want.data(),
            );
        }
    }
}

/// Out-of-range ids are rejected before any launch, with the engine's typed error.
#[test]
fn embedding_rejects_out_of_range_ids() {
    let gpu = interp();
    let t = weight("emb", DType::F32, vec![4, 8], &[0.5; 32]);
    let e = gpu
        .embedding(&t, &[1, 4])
        .expect_err("id 4 of a 4-row table");
    assert!(
        matches!(
            e,
            troupe_engine::EngineError::TokenOutOfRange {
                id: 4,
                position: 1,
                vocab: 4
            }
        ),
        "{e}"
    );
}
