//! The `--compute bf16` linear on the `amx` path (`kernels::amx`, `tdpbf16ps` tiles): every
//! element is the same alone or in any batch, chunking, tile remainder or region of several
//! products, it stays within f32 accumulation error of the exact dot product of the rounded
//! operands, the tiles really run (their bits differ from `vdpbf16ps`'s order), and rows whose
//! length is not a multiple of 32 take the `vdpbf16ps` path whole. Skipped where the processor
//! (or the kernel) has no AMX.

use crate::dot_pairs::{linear_bf16, uniform};
use troupe_engine::dtype::{bf16_to_f32, f32_to_bf16, DType};
use troupe_engine::kernels::amx::PackedRows;
use troupe_engine::kernels::isa::Isa;
use troupe_engine::kernels::linear::{linear_many_in, LinearJob};
use troupe_engine::kernels::precision::Compute;
use troupe_engine::weights::random::SplitMix64;
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;

fn bf16_weight(rng: &mut SplitMix64, out: usize, k: usize) -> (Vec<u16>, Weight) {
    let bits: Vec<u16> = uniform(rng, out * k)
        .iter()
        .map(|&v| f32_to_bf16(v))
        .collect();
    let w = Weight::from_u16("w", DType::BF16, vec![out, k], &bits);
    (bits, w)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn amx() -> Option<Isa> {
    if Isa::Amx.supported() {
        Some(Isa::Amx)
    } else {
        eprintln!("no AMX here: skipped");
        None
    }
}

#[test]
fn amx_linear_is_batch_invariant_and_within_f32_error_of_the_exact_dot() {
    let Some(isa) = amx() else { return };
    let mut rng = SplitMix64::new(71);
    // Row counts around the 16-row tile, the 2-tile block and the 128-row pass; column counts
    // around the 16-row weight tile and the 32-column block.
    for (n, k, out) in [
        (1usize, 32usize, 1usize),
        (5, 64, 15),
        (16, 96, 16),
        (17, 1024, 17),
        (33, 256, 33),
        (130, 128, 100),
    ] {
        let xv = uniform(&mut rng, n * k);
        let (wv, w) = bf16_weight(&mut rng, out, k);
        let x = Tensor::matrix(n, k, xv.clone()).unwrap();
        let batch = linear_bf16(&x, &w, isa, None);
        for cols in [1, 7, 16, 32, 48] {
            assert_eq!(
                bits(&linear_bf16(&x, &w, isa, Some(cols))),
                bits(&batch),
                "n {n} k {k} out {out}: {cols}-column chunks changed the bits"
            );
        }
        for r in 0..n {
            let row = &xv[r * k..(r + 1) * k];
            let one = Tensor::matrix(1, k, row.to_vec()).unwrap();
            let alone = linear_bf16(&one, &w, isa, Some(5));
            assert_eq!(
                bits(&alone),
                bits(&batch[r * out..(r + 1) * out]),
                "n {n} k {k} out {out}: row {r} alone vs in the batch"
            );
            for c in 0..out {
                let (mut exact, mut mag) = (0.0f64, 0.0f64);
                for i in 0..k {
                    let p =
                        bf16_to_f32(f32_to_bf16(row[i])) as f64 * bf16_to_f32(wv[c * k + i]) as f64;
                    exact += p;
                    mag += p.abs();
                }
                // A sequence of k + 1 rounded f32 additions errs by at most γ_(k+1)·Σ|p|.
                let bound = (k as f64 + 1.0) * 2f64.powi(-24) * mag;
                let got = batch[r * out + c] as f64;
                assert!(
                    (got - exact).abs() <= bound,
                    "n {n} k {k} [{r}][{c}]: {got} vs exact {exact} (bound {bound})"
                );
            }
        }
    }
}

#[test]
fn amx_tiles_run_and_ragged_rows_take_vdpbf16ps() {
    let Some(isa) = amx() else { return };
    let mut rng = SplitMix64::new(72);
    // k = 1024: the tiles' own order shows in some element's bits.
    let (n, k, out) = (8, 1024, 64);
    let x = Tensor::matrix(n, k, uniform(&mut rng, n * k)).unwrap();
    let (_, w) = bf16_weight(&mut rng, out, k);
    let tiles = linear_bf16(&x, &w, isa, None);
    let pairs = linear_bf16(&x, &w, Isa::Avx512Bf16, None);
    assert_ne!(bits(&tiles), bits(&pairs), "the amx path ran vdpbf16ps");
    // k = 100 (not a multiple of 32): the vdpbf16ps order, bit for bit.
    let (n, k, out) = (9, 100, 21);
    let x = Tensor::matrix(n, k, uniform(&mut rng, n * k)).unwrap();
    let (_, w) = bf16_weight(&mut rng, out, k);
    assert_eq!(
        bits(&linear_bf16(&x, &w, isa, None)),
        bits(&linear_bf16(&x, &w, Isa::Avx512Bf16, None))
    );
}

#[test]
fn amx_jobs_sharing_an_input_in_one_region_equal_each_alone() {
    // The grouped expert MLP: gate and up projections of several experts in one region, two
    // of them reading the same packed activations.
    let Some(isa) = amx() else { return };
    let mut rng = SplitMix64::new(73);
    let k = 64;
    let xa = Tensor::matrix(3, k, uniform(&mut rng, 3 * k)).unwrap();
    let xb = Tensor::matrix(20, k, uniform(&mut rng, 20 * k)).unwrap();
    let (_, gate) = bf16_weight(&mut rng, 48, k);
    let (_, up) = bf16_weight(&mut rng, 48, k);
    let (_, other) = bf16_weight(&mut rng, 40, k);
    let (mut o1, mut o2, mut o3) = (vec![0.0; 3 * 48], vec![0.0; 3 * 48], vec![0.0; 20 * 40]);
    linear_many_in(
        &mut [
            LinearJob {
                x: &xa,
                w: &gate,
                out: &mut o1,
            },
            LinearJob {
                x: &xa,
                w: &up,
                out: &mut o2,
            },
            LinearJob {
                x: &xb,
                w: &other,
                out: &mut o3,
            },
        ],
        isa,
        Compute::Bf16,
        Some(16),
    )
    .unwrap();
    assert_eq!(bits(&o1), bits(&linear_bf16(&xa, &gate, isa, None)));
    assert_eq!(bits(&o2), bits(&linear_bf16(&xa, &up, isa, None)));
    assert_eq!(bits(&o3), bits(&linear_bf16(&xb, &other, isa, None)));
}

#[test]
fn packed_rows_hold_pairs_of_sixteen_rows_per_tile() {
    // Runs everywhere: the layout the tile instruction reads.
    let (n, k) = (17, 64);
    let x: Vec<u16> = (0..n * k).map(|i| i as u16).collect();
    let p = PackedRows::pack(&x, n, k);
    assert_eq!((p.rows(), p.k()), (n, k));
    let flat = p.as_slice();
    // Two row blocks (the second holds row 16 and zero padding) of two 32-wide chunks.
    assert_eq!(flat.len(), 2 * 2 * 512);
    let at = |block: usize, chunk: usize, pair: usize, m: usize, j: usize| {
        flat[(block * 2 + chunk) * 512 + pair * 32 + m * 2 + j]
    };
    for (r, c) in [(0, 0), (3, 5), (15, 63), (16, 0), (16, 40)] {
        let (block, m, chunk, i) = (r / 16, r % 16, c / 32, c % 32);
        assert_eq!(
            at(block, chunk, i / 2, m, i % 2),
            x[r * k + c],
            "row {r} col {c}"
        );
    }
    assert_eq!(at(1, 1, 7, 9, 1), 0, "padding rows are zero");
}

/// Generated rows (`row_kind::with_generated(true)`) take the pair-dot kernels on the amx path:
/// their bits are `avx512bf16`'s, one row or many; prompt rows (the default) keep the tiles',
/// which differ (so the switch really happened).
#[test]
fn amx_computes_generated_rows_on_the_pair_dot_kernels() {
    use troupe_engine::kernels::row_kind::with_generated;
    let Some(isa) = amx() else { return };
    let mut rng = SplitMix64::new(79);
    let mut differ = false;
    for (n, k, out) in [(1usize, 1024usize, 64usize), (5, 256, 33)] {
        let x = Tensor::matrix(n, k, uniform(&mut rng, n * k)).unwrap();
        let (_, w) = bf16_weight(&mut rng, out, k);
        let pairs = linear_bf16(&x, &w, Isa::Avx512Bf16, None);
        let tiles = linear_bf16(&x, &w, isa, None);
        let generated = with_generated(true, || linear_bf16(&x, &w, isa, None));
        assert_eq!(
            bits(&generated),
            bits(&pairs),
            "n={n}: generated rows left the pair-dot"
        );
        assert_eq!(
            bits(&with_generated(false, || linear_bf16(&x, &w, isa, None))),
            bits(&tiles),
            "n={n}: prompt rows left the tiles"
        );
        differ |= bits(&tiles) != bits(&pairs);
    }
    assert!(
        differ,
        "the tiles and the pair-dot gave the same bits: nothing was tested"
    );
}
