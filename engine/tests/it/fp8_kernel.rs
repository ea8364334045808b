//! FP8 e4m3: the conversions (every bit pattern, rounding to nearest even, saturation), block
//! quantisation, and the FP8 linear — every path bit-identical to the portable one, equal to the
//! order the module fixes (recomputed here from the dequantised values), batch-invariant, and
//! the same through `linear` (the dtype dispatch).

use troupe_engine::dtype::{e4m3_to_f32, f32_to_e4m3, DType};
use troupe_engine::kernels::dot::fold16;
use troupe_engine::kernels::fp8::{linear_fp8_with, Fp8Path};
use troupe_engine::kernels::linear::linear;
use troupe_engine::weights::fp8::{dequantize, quantize_block_scaled};
use troupe_engine::weights::random::SplitMix64;
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;

#[test]
fn e4m3_decodes_every_pattern_and_encodes_back() {
    assert_eq!(e4m3_to_f32(0x38), 1.0);
    assert_eq!(e4m3_to_f32(0x7e), 448.0);
    assert_eq!(e4m3_to_f32(0xfe), -448.0);
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    assert_eq!(e4m3_to_f32(0x07), 7.0 * 2f32.powi(-9));
    assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
    assert_eq!(e4m3_to_f32(0x39), 1.125);
    assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
    assert_eq!(e4m3_to_f32(0x80).to_bits(), (-0.0f32).to_bits());
    for b in 0..=255u8 {
        if b & 0x7f != 0x7f {
            assert_eq!(f32_to_e4m3(e4m3_to_f32(b)), b, "pattern {b:#04x}");
        }
    }
    // Halfway between 1.0 (even mantissa) and 1.125 rounds to 1.0; between 1.125 and 1.25 to 1.25.
    assert_eq!(f32_to_e4m3(1.0625), 0x38);
    assert_eq!(f32_to_e4m3(1.1875), 0x3a);
    assert_eq!(f32_to_e4m3(1.0626), 0x39);
    assert_eq!(f32_to_e4m3(1e6), 0x7e);
    assert_eq!(f32_to_e4m3(-500.0), 0xfe);
    assert_eq!(f32_to_e4m3(2f32.powi(-11)), 0x00); // below half the smallest subnormal... tie → 0
    assert_eq!(f32_to_e4m3(3.0 * 2f32.powi(-11)), 0x01);
}

fn values(rng: &mut SplitMix64, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_normal_pair().0 * std) as f32)
        .collect()
}

/// The fixed order, recomputed from dequantised inputs (e4m3 values and scales) in plain Rust.
fn expected(x: &[f32], w: &Weight, o: usize) -> f32 {
    let k = w.cols();
    let bytes = w.as_u8().unwrap();
    let s = w.block_scales().unwrap();
    let mut acc = 0.0f32;
    for k0 in (0..k).step_by(128) {
        let mut lanes = [0.0f32; 16];
        for i in k0..(k0 + 128).min(k) {
            let wv = e4m3_to_f32(bytes[o * k + i]);
            lanes[(i - k0) % 16] = x[i].mul_add(wv, lanes[(i - k0) % 16]);
        }
        acc = s.scale(o, k0).mul_add(fold16(&lanes), acc);
    }
    acc
}

#[test]
fn quantisation_keeps_each_block_within_its_step() {
    let mut rng = SplitMix64::new(3);
    let (rows, cols) = (130, 200);
    let v = values(&mut rng, rows * cols, 0.02);
    let w = quantize_block_scaled("w", rows, cols, &v).unwrap();
    assert_eq!(w.dtype(), DType::F8E4M3);
    let s = w.block_scales().unwrap();
    assert_eq!(s.scale_inv.shape(), &[2, 2]);
    let back = dequantize(&w, DType::F32).unwrap();
    let back = back.as_f32().unwrap();
    for r in 0..rows {
        for c in 0..cols {
            let (a, b) = (v[r * cols + c], back[r * cols + c]);
            // e4m3 has 3 mantissa bits: relative error ≤ 2^-4 for normals, absolute ≤ scale·2^-10 below.
            let tol = (a.abs() / 16.0).max(s.scale(r, c) * 2f32.powi(-10)) * 1.0001;
            assert!((a - b).abs() <= tol, "({r},{c}): {a} vs {b}");
        }
    }
    // The block's largest magnitude maps to ±448 exactly.
    let amax = (0..128)
        .flat_map(|r| (0..128).map(move |c| (r, c)))
        .map(|(r, c)| v[r * cols + c].abs())
        .fold(0.0f32, f32::max);
    assert_eq!(s.scale(0, 0), amax / 448.0);
}

#[test]
fn every_path_gives_the_fixed_order_bit_for_bit() {
    let mut rng = SplitMix64::new(17);
    let paths: Vec<Fp8Path> = [Fp8Path::Portable, Fp8Path::Avx2, Fp8Path::Avx512]
        .into_iter()
        .filter(|p| p.available())
        .collect();
    if cfg!(target_arch = "x86_64") && std::env::var_os("TROUPE_ALLOW_NO_AVX2").is_none() {
        assert!(paths.contains(&Fp8Path::Avx2), "AVX2+FMA+F16C not detected");
    }
    eprintln!("FP8 paths run here: {paths:?} (AVX-512 only where detected)");
    for (out, k) in [(5usize, 7usize), (9, 128), (130, 200), (33, 300), (4, 1000)] {
        let wv = values(&mut rng, out * k, 0.05);
        let w = quantize_block_scaled("w", out, k, &wv).unwrap();
        for n in [1usize, 2, 3, 5] {
            let x = Tensor::matrix(n, k, values(&mut rng, n * k, 1.0)).unwrap();
            let want: Vec<u32> = (0..n)
                .flat_map(|r| (0..out).map(move |o| (r, o)))
                .map(|(r, o)| expected(x.row(r), &w, o).to_bits())
                .collect();
            for &p in &paths {
                let got = linear_fp8_with(&x, &w, p).unwrap();
                let bits: Vec<u32> = got.data().iter().map(|v| v.to_bits()).collect();
                assert_eq!(bits, want, "{out}x{k}, {n} rows, {p:?}");
            }
            // The dispatch of `linear` reaches the same kernel.
            let via = linear(&x, &w).unwrap();
            assert_eq!(
                via.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want
            );
            // Batch invariance: each row alone gives its row of the batch.
            for r in 0..n {
                let one = Tensor::matrix(1, k, x.row(r).to_vec()).unwrap();
                let alone = linear(&one, &w).unwrap();
                let bits: Vec<u32> = alone.data().iter().map(|v| v.to_bits()).collect();
                assert_eq!(bits[..], want[r * out..(r + 1) * out], "row {r} alone");
            }
        }
    }
}

#[test]
fn nan_weights_give_nan_on_every_path() {
    let w = quantize_block_scaled("w", 2, 40, &[0.5; 80]).unwrap();
    let mut bytes = w.as_u8().unwrap().to_vec();
    bytes[3] = 0x7f;
    let nan = Weight::from_bytes("w", DType::F8E4M3, vec![2, 40], &bytes)
        .unwrap()
        .with_block_scales(w.block_scales().unwrap().clone())
        .unwrap();
    let x = Tensor::matrix(1, 40, vec![1.0; 40]).unwrap();
    for p in [Fp8Path::Portable, Fp8Path::Avx2, Fp8Path::Avx512] {
        if p.available() {
            let y = linear_fp8_with(&x, &nan, p).unwrap();
            assert!(y.data()[0].is_nan() && y.data()[1].is_finite(), "{p:?}");
        }
    }
}

#[test]
fn columns_into_gives_the_linear_columns() {
    use troupe_engine::kernels::fp8::columns_into;
    let mut rng = SplitMix64::new(5);
    let (out, k, n) = (70usize, 260usize, 3usize);
    let w = quantize_block_scaled("w", out, k, &values(&mut rng, out * k, 0.05)).unwrap();
    let x = Tensor::matrix(n, k, values(&mut rng, n * k, 1.0)).unwrap();
    let full = linear(&x, &w).unwrap();
    let mut got = vec![f32::NAN; n * out];
    columns_into(
        x.data(),
        n,
        &w,
        (9, 50),
        Fp8Path::detect(),
        &mut |r, c, v| got[r * out + c] = v,
    )
    .unwrap();
    for r in 0..n {
        for c in 0..out {
            let g = got[r * out + c];
            if (9..50).contains(&c) {
                assert_eq!(g.to_bits(), full.data()[r * out + c].to_bits(), "({r},{c})");
            } else {
                assert!(g.is_nan(), "({r},{c}) written");
            }
        }
    }
}
