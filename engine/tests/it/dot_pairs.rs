//! The pair-dot order (`kernels::dot_pairs`, `vdpbf16ps`) against its portable definition, bit
//! for bit, and the `--compute bf16` linear built on it on the `avx512bf16` path: every row's
//! result is the same alone or in any batch, chunking or block shape, and stays within the
//! rounding of a different summation order of the same exact products.

use troupe_engine::dtype::{bf16_to_f32, f32_to_bf16, DType};
use troupe_engine::kernels::decode_streams::STREAMS;
use troupe_engine::kernels::dot_pairs::{dot_pairs_portable, gemv_pairs, pairs_block};
use troupe_engine::kernels::isa::Isa;
use troupe_engine::kernels::linear::{linear_many_in, LinearJob};
use troupe_engine::kernels::precision::Compute;
use troupe_engine::weights::random::SplitMix64;
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;

/// bf16 values over a wide exponent range, with zeros, signed zeros and subnormals mixed in,
/// so the emulation's DAZ/FTZ rules are exercised.
fn wild_bf16(rng: &mut SplitMix64, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let r = rng.next_u64();
            match r % 16 {
                0 => 0,
                1 => 0x8000,
                // A subnormal bf16 (exponent bits zero, mantissa non-zero), either sign.
                2 => ((r >> 8) as u16 & 0x7f).max(1) | ((r >> 20) as u16 & 0x8000),
                _ => {
                    let e = ((r >> 8) % 60) as i32 - 40;
                    let m = 1.0 + ((r >> 16) & 0xffff) as f32 / 65536.0;
                    let s = if (r >> 40) & 1 == 1 { -1.0 } else { 1.0 };
                    f32_to_bf16(s * m * 2f32.powi(e))
                }
            }
        })
        .collect()
}

pub(crate) fn uniform(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

#[test]
fn vdpbf16ps_tiles_match_the_portable_definition_bit_for_bit() {
    if !Isa::Avx512Bf16.supported() {
        eprintln!("no AVX512-BF16 here: only the portable definition runs");
    }
    let mut rng = SplitMix64::new(21);
    for k in [1usize, 2, 3, 31, 32, 33, 63, 64, 65, 96, 255, 1000] {
        for _ in 0..4 {
            let xs: Vec<Vec<u16>> = (0..4).map(|_| wild_bf16(&mut rng, k)).collect();
            let ws: Vec<Vec<u16>> = (0..4).map(|_| wild_bf16(&mut rng, k)).collect();
            let xr: Vec<&[u16]> = xs.iter().map(|v| v.as_slice()).collect();
            let wr: Vec<&[u16]> = ws.iter().map(|v| v.as_slice()).collect();
            for (nr, nc) in [(1, 1), (1, 4), (2, 3), (3, 2), (4, 4), (4, 1)] {
                let mut got = [[0.0f32; 4]; 4];
                pairs_block(&xr[..nr], &wr[..nc], Isa::Avx512Bf16, &mut got);
                for r in 0..nr {
                    for c in 0..nc {
                        let want = dot_pairs_portable(xr[r], wr[c]);
                        assert_eq!(
                            got[r][c].to_bits(),
                            want.to_bits(),
                            "k {k}, block {nr}x{nc}, [{r}][{c}]: {} vs {want}",
                            got[r][c]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_decode_gemv_matches_the_definition_on_every_column_range() {
    if !Isa::Avx512Bf16.supported() {
        eprintln!("no AVX512-BF16 here: only the portable definition runs");
    }
    let mut rng = SplitMix64::new(23);
    for k in [32usize, 64, 96, 1024] {
        let rows = 4 * STREAMS + 7;
        let x = wild_bf16(&mut rng, k);
        let w = wild_bf16(&mut rng, rows * k);
        // Ranges shorter than the streams, ragged, whole, and starting mid-matrix.
        for (c0, c1) in [
            (0, 0),
            (0, 1),
            (3, 5),
            (0, STREAMS),
            (1, 2 * STREAMS + 3),
            (5, rows),
            (0, rows),
        ] {
            for isa in [Isa::Avx512Bf16, Isa::Portable] {
                let mut got = vec![f32::NAN; rows];
                gemv_pairs(&x, &w, k, (c0, c1), isa, &mut |c, v| {
                    assert!(got[c].is_nan(), "column {c} written twice");
                    got[c] = v;
                });
                for (c, g) in got.iter().enumerate() {
                    if (c0..c1).contains(&c) {
                        let want = dot_pairs_portable(&x, &w[c * k..][..k]);
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "k {k}, columns {c0}..{c1}, column {c} on {isa:?}: {g} vs {want}"
                        );
                    } else {
                        assert!(g.is_nan(), "column {c} outside {c0}..{c1} written");
                    }
                }
            }
        }
    }
}

#[test]
fn the_definition_is_odd_then_even_with_flushed_subnormals() {
    let b = |v: f32| f32_to_bf16(v);
    // Lane 0 holds 1 after chunk 0; chunk 1 brings the odd product 2^24 and the even -2^24.
    // Odd first: 1 + 2^24 rounds to 2^24 (a tie, to even), minus 2^24 is 0. Even first would
    // keep the 1 (1 - 2^24 is exact).
    let mut x = vec![0u16; 34];
    let mut w = vec![0u16; 34];
    (x[0], w[0]) = (b(1.0), b(1.0));
    (x[32], w[32]) = (b(1.0), b(-(2f32.powi(24))));
    (x[33], w[33]) = (b(1.0), b(2f32.powi(24)));
    assert_eq!(dot_pairs_portable(&x, &w), 0.0);
    // A subnormal operand reads as zero (DAZ): 2^-133 · 2^100 would be 2^-33.
    let sub = 0x0001u16;
    assert!(bf16_to_f32(sub) > 0.0);
    assert_eq!(dot_pairs_portable(&[sub, 0], &[b(2f32.powi(100)), 0]), 0.0);
    // A subnormal result is written as zero (FTZ): 2^-70 · 2^-70 = 2^-140.
    assert_eq!(
        dot_pairs_portable(&[b(2f32.powi(-70))], &[b(2f32.powi(-70))]),
        0.0
    );
    // And the instruction agrees, where this processor has it.
    let mut got = [[1.0f32; 4]; 4];
    pairs_block(&[&x], &[&w], Isa::Avx512Bf16, &mut got);
    assert_eq!(got[0][0], 0.0);
}

/// `x @ w^T` of a bf16 weight under `--compute bf16` on `isa`, in chunks of `cols` columns.
pub(crate) fn linear_bf16(x: &Tensor, w: &Weight, isa: Isa, cols: Option<usize>) -> Vec<f32> {
    let mut out = vec![0.0f32; x.rows() * w.rows()];
    linear_many_in(
        &mut [LinearJob {
            x,
            w,
            out: &mut out,
        }],
        isa,
        Compute::Bf16,
        cols,
    )
    .unwrap();
    out
}

#[test]
fn bf16_compute_on_avx512bf16_is_batch_invariant_and_close_to_the_fma_order() {
    let isa = Isa::Avx512Bf16;
    if !isa.supported() {
        eprintln!("no AVX512-BF16 here: skipped");
        return;
    }
    let mut rng = SplitMix64::new(33);
    for (n, k, out) in [
        (1usize, 64usize, 9usize),
        (7, 96, 13),
        (9, 100, 21),
        (17, 1024, 40),
    ] {
        let xv = uniform(&mut rng, n * k);
        let wv: Vec<u16> = uniform(&mut rng, out * k)
            .iter()
            .map(|&v| f32_to_bf16(v))
            .collect();
        let w = Weight::from_u16("w", DType::BF16, vec![out, k], &wv);
        let x = Tensor::matrix(n, k, xv.clone()).unwrap();
        let batch = linear_bf16(&x, &w, isa, None);
        // Every row alone, and other chunkings, give the batch's bits.
        for r in 0..n {
            let one = Tensor::matrix(1, k, xv[r * k..(r + 1) * k].to_vec()).unwrap();
            let alone = linear_bf16(&one, &w, isa, Some(3));
            for c in 0..out {
                assert_eq!(
                    alone[c].to_bits(),
                    batch[r * out + c].to_bits(),
                    "n {n} k {k}: row {r} col {c} alone vs in the batch"
                );
                // And the element is the portable definition's.
                let xb: Vec<u16> = xv[r * k..(r + 1) * k]
                    .iter()
                    .map(|&v| f32_to_bf16(v))
                    .collect();
                let want = dot_pairs_portable(&xb, &wv[c * k..(c + 1) * k]);
                assert_eq!(batch[r * out + c].to_bits(), want.to_bits());
            }
        }
        for cols in [1, 4, 5, 16] {
            let split = linear_bf16(&x, &w, isa, Some(cols));
            assert!(split
                .iter()
                .zip(&batch)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        // The f32 order over the same rounded activations (the avx512 path) sums the same exact
        // products in another order: the two differ by rounding only.
        let fma = linear_bf16(&x, &w, Isa::Avx512, None);
        for r in 0..n {
            for c in 0..out {
                let mag: f32 = (0..k)
                    .map(|i| {
                        let xb = bf16_to_f32(f32_to_bf16(xv[r * k + i]));
                        (xb * bf16_to_f32(wv[c * k + i])).abs()
                    })
                    .sum();
                let (a, b) = (batch[r * out + c], fma[r * out + c]);
                // Each order's error is at most γ_m·Σ|p| with m = k/16 steps of a lane's chain
                // plus 4 of the fold (γ_m ≈ m·2^-24).
                let bound = 2.0 * (k as f32 / 16.0 + 4.0) * 2f32.powi(-24) * mag;
                assert!(
                    (a - b).abs() <= bound,
                    "n {n} k {k} [{r}][{c}]: pairs {a} vs fma {b} (Σ|p| {mag})"
                );
            }
        }
    }
}
