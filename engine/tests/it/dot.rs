//! The AVX2+FMA dot kernel against the portable one: bit-identical for every storage type, length
//! and block shape, and the linear built on them likewise.

use troupe_engine::dtype::{f32_to_bf16, f32_to_f16, DType};
use troupe_engine::kernels::dot::{dot_block, dot_portable, simd_available, WRow};
use troupe_engine::kernels::linear::linear_with;
use troupe_engine::weights::random::SplitMix64;
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;

fn values(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

#[test]
fn this_machine_runs_the_simd_path() {
    // The CI machine (Zen 3) has AVX2+FMA+F16C; without it the tests below compare the portable
    // path with itself.
    if std::env::var_os("TROUPE_ALLOW_NO_AVX2").is_none() && cfg!(target_arch = "x86_64") {
        assert!(simd_available(), "AVX2+FMA+F16C not detected");
    }
}

#[test]
fn avx2_and_portable_dots_are_bit_identical() {
    let mut rng = SplitMix64::new(11);
    for k in [
        1usize, 2, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 255, 256, 257, 1000,
    ] {
        let xs: Vec<Vec<f32>> = (0..4).map(|_| values(&mut rng, k)).collect();
        let wf: Vec<Vec<f32>> = (0..4).map(|_| values(&mut rng, k)).collect();
        let wb: Vec<Vec<u16>> = wf
            .iter()
            .map(|r| r.iter().map(|&v| f32_to_bf16(v)).collect())
            .collect();
        let wh: Vec<Vec<u16>> = wf
            .iter()
            .map(|r| r.iter().map(|&v| f32_to_f16(v)).collect())
            .collect();
        let xr: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
        for rows in [
            wf.iter().map(|r| WRow::F32(r)).collect::<Vec<_>>(),
            wb.iter().map(|r| WRow::BF16(r)).collect::<Vec<_>>(),
            wh.iter().map(|r| WRow::F16(r)).collect::<Vec<_>>(),
        ] {
            for (nr, nc) in [(1, 1), (1, 4), (2, 2), (3, 4), (4, 4), (4, 1)] {
                let mut simd = [[0.0f32; 4]; 4];
                dot_block(&xr[..nr], &rows[..nc], simd_available(), &mut simd);
                for r in 0..nr {
                    for c in 0..nc {
                        let want = dot_portable(xr[r], rows[c]);
                        assert_eq!(
                            simd[r][c].to_bits(),
                            want.to_bits(),
                            "k={k} block {nr}x{nc} ({r},{c})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn avx2_and_portable_linears_are_bit_identical() {
    let mut rng = SplitMix64::new(5);
    for (n, k, out) in [(1usize, 37usize, 70usize), (3, 64, 33), (8, 130, 65)] {
        let x = Tensor::matrix(n, k, values(&mut rng, n * k)).unwrap();
        let wv = values(&mut rng, out * k);
        let bits: Vec<u16> = wv.iter().map(|&v| f32_to_bf16(v)).collect();
        for w in [
            Weight::from_f32("w", vec![out, k], &wv),
            Weight::from_u16("w", DType::BF16, vec![out, k], &bits),
        ] {
            let a = linear_with(&x, &w, simd_available()).unwrap();
            let b = linear_with(&x, &w, false).unwrap();
            assert!(
                a.data()
                    .iter()
                    .zip(b.data())
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "n={n} k={k} out={out} {}",
                w.dtype()
            );
        }
    }
}
