//! Every kernel path this processor has (AVX2+FMA, AVX-512F) against the portable one:
//! bit-identical dots for every storage type, length and block shape, and the linear built on
//! them likewise (each element the lone dot of its row and column), whatever the chunking or the
//! number of products sharing a region.

use troupe_engine::dtype::{f32_to_bf16, f32_to_f16, DType};
use troupe_engine::kernels::dot::{dot_block, dot_portable, simd_available, WRow};
use troupe_engine::kernels::isa::Isa;
use troupe_engine::kernels::linear::{
    linear_many_in, linear_many_with, linear_split, linear_with, linears, LinearJob,
};
use troupe_engine::kernels::precision::Compute;
use troupe_engine::weights::random::SplitMix64;
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

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
        assert!(Isa::Avx2.supported(), "AVX2+FMA+F16C not detected");
        assert!(simd_available(), "the AVX2 path is not the default");
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
            for (isa, (nr, nc)) in Isa::available()
                .into_iter()
                .flat_map(|i| [(1, 1), (1, 4), (2, 2), (3, 4), (4, 4), (4, 1)].map(|b| (i, b)))
            {
                let mut simd = [[0.0f32; 4]; 4];
                dot_block(&xr[..nr], &rows[..nc], isa, &mut simd);
                for r in 0..nr {
                    for c in 0..nc {
                        let want = dot_portable(xr[r], rows[c]);
                        assert_eq!(
                            simd[r][c].to_bits(),
                            want.to_bits(),
                            "{isa} k={k} block {nr}x{nc} ({r},{c})"
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
    for (n, k, out) in [
        (1usize, 37usize, 70usize),
        (1, 1024, 21),
        (3, 64, 33),
        (8, 130, 65),
        (19, 130, 21),
        // From 8 rows on, AVX2 takes `panel_gemm`: above, one ragged k block; here exactly
        // one k block; then two row blocks, three k blocks with a ragged tail, and strips of
        // 8, 8 and 3 columns; then two groups of rows (96 and 4).
        (17, 256, 9),
        (50, 530, 19),
        (100, 40, 10),
    ] {
        let x = Tensor::matrix(n, k, values(&mut rng, n * k)).unwrap();
        let wv = values(&mut rng, out * k);
        let wb: Vec<u16> = wv.iter().map(|&v| f32_to_bf16(v)).collect();
        for w in [
            Weight::from_f32("w", vec![out, k], &wv),
            Weight::from_u16("w", DType::BF16, vec![out, k], &wb),
        ] {
            let want = linear_with(&x, &w, Isa::Portable).unwrap();
            // Each element is the one dot of its row and column, however many rows share the
            // call (many rows widen bf16 weights into f32 panels first).
            for r in 0..n {
                for c in 0..out {
                    let wrow = match w.dtype() {
                        DType::BF16 => WRow::BF16(&wb[c * k..(c + 1) * k]),
                        _ => WRow::F32(&wv[c * k..(c + 1) * k]),
                    };
                    let dot = dot_portable(&x.data()[r * k..(r + 1) * k], wrow);
                    assert_eq!(want.data()[r * out + c].to_bits(), dot.to_bits(), "{r},{c}");
                }
            }
            for isa in Isa::available() {
                for chunk in [None, Some(1), Some(4), Some(7), Some(64)] {
                    let got = linear_split(&x, &w, isa, chunk).unwrap();
                    assert_eq!(
                        bits(got.data()),
                        bits(want.data()),
                        "{isa} chunk {chunk:?} n={n} k={k} out={out} {}",
                        w.dtype()
                    );
                }
            }
        }
    }
}

#[test]
fn products_sharing_a_region_match_lone_linears() {
    let mut rng = SplitMix64::new(9);
    let x1 = Tensor::matrix(1, 96, values(&mut rng, 96)).unwrap();
    let x3 = Tensor::matrix(3, 96, values(&mut rng, 3 * 96)).unwrap();
    let bf = |rng: &mut SplitMix64, rows: usize| {
        let v: Vec<u16> = values(rng, rows * 96)
            .iter()
            .map(|&v| f32_to_bf16(v))
            .collect();
        Weight::from_u16("w", DType::BF16, vec![rows, 96], &v)
    };
    let (wa, wb) = (bf(&mut rng, 300), bf(&mut rng, 45));
    for isa in Isa::available() {
        let (mut a, mut b, mut c) = (vec![0.0; 300], vec![0.0; 3 * 45], vec![0.0; 3 * 300]);
        let mut jobs = [
            LinearJob {
                x: &x1,
                w: &wa,
                out: &mut a,
            },
            LinearJob {
                x: &x3,
                w: &wb,
                out: &mut b,
            },
            LinearJob {
                x: &x3,
                w: &wa,
                out: &mut c,
            },
        ];
        linear_many_with(&mut jobs, isa, None).unwrap();
        for (got, (x, w)) in [a, b, c].iter().zip([(&x1, &wa), (&x3, &wb), (&x3, &wa)]) {
            let want = linear_with(x, w, Isa::Portable).unwrap();
            assert_eq!(bits(got), bits(want.data()), "{isa}");
        }
    }
}

/// Projections of one input in one region (`linears`; the region's threads claim columns as
/// they go, in units that do not divide every weight): every output is the lone linear's, on
/// every path, in both compute modes, for a decode row and for several rows.
#[test]
fn projections_of_one_input_match_lone_linears() {
    let mut rng = SplitMix64::new(21);
    let k = 256;
    let ws: Vec<Weight> = [37usize, 300, 64, 1]
        .iter()
        .map(|&rows| {
            let v: Vec<u16> = values(&mut rng, rows * k)
                .iter()
                .map(|&v| f32_to_bf16(v))
                .collect();
            Weight::from_u16("w", DType::BF16, vec![rows, k], &v)
        })
        .collect();
    for n in [1, 5] {
        let x = Tensor::matrix(n, k, values(&mut rng, n * k)).unwrap();
        for isa in Isa::available() {
            for compute in [Compute::F32, Compute::Bf16] {
                let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0; n * w.rows()]).collect();
                let mut jobs: Vec<LinearJob<'_>> = ws
                    .iter()
                    .zip(outs.iter_mut())
                    .map(|(w, out)| LinearJob { x: &x, w, out })
                    .collect();
                linear_many_in(&mut jobs, isa, compute, None).unwrap();
                for (w, got) in ws.iter().zip(&outs) {
                    let mut want = vec![0.0; n * w.rows()];
                    let job = LinearJob {
                        x: &x,
                        w,
                        out: &mut want,
                    };
                    linear_many_in(&mut [job], isa, compute, Some(1)).unwrap();
                    assert_eq!(
                        bits(got),
                        bits(&want),
                        "{isa} {compute:?} n={n} {:?}",
                        w.shape()
                    );
                }
            }
        }
        let refs: Vec<&Weight> = ws.iter().collect();
        let got = linears(&x, &refs).unwrap();
        for (w, g) in ws.iter().zip(&got) {
            assert_eq!(
                bits(g.data()),
                bits(
                    linear_with(&x, w, troupe_engine::kernels::isa::active())
                        .unwrap()
                        .data()
                )
            );
        }
    }
}
