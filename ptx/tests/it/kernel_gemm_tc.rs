//! Kernels the `Backend` trait does not reach, launched on the interpreter device (race detector
//! on) with the configurations of `troupe_ptx::launch`: `f32_to_bf16` (bit-exact against RNE
//! rounding, specials included) and the tensor-core `gemm_bf16_tc` (`cp.async` double buffering,
//! `ldmatrix.x4`, `mma.sync.m16n8k16`) against an f64 matmul of the bf16-rounded inputs, on ragged
//! M, N and K (K % 8 == 0 is the kernel's documented requirement).

use crate::common::gemm::{check_gemm, convert};
use crate::common::*;
use troupe_ptx::launch;

#[test]
fn f32_to_bf16_bit_exact() {
    let gpu = interp();
    let dev = gpu.device();
    let mut rng = Rng::new(61);
    let mut x = rng.vec(300, 100.0); // 300: not a multiple of the 256-thread CTA
    let specials = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,                    // rounds up to +inf
        f32::MIN_POSITIVE,           // smallest normal
        1e-40,                       // subnormal
        f32::from_bits(0x3F80_8000), // exact tie, even below -> stays 1.0
        f32::from_bits(0x3F81_8000), // exact tie, odd below -> rounds up
        f32::from_bits(0x3F80_8001), // just above a tie -> up
        f32::NAN,
    ];
    x[..specials.len()].copy_from_slice(&specials);
    let (_, got) = convert(dev, &x);
    for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
        if v.is_nan() {
            assert!(
                half::bf16::from_bits(g).is_nan(),
                "element {i}: NaN must stay NaN, got {g:#06x}"
            );
        } else {
            assert_eq!(g, bf16_bits(v), "element {i}: bf16({v:e})");
        }
    }
}

#[test]
fn gemm_bf16_tc_ragged_shapes() {
    let gpu = interp();
    let dev = gpu.device();
    // (m, n, k): a single element; tails of the 64x64 tile in m and n and of the 32-wide k step
    // (k = 40, 8); exact tiles; several k tiles (double buffering) with ragged everything.
    for (i, &(m, n, k)) in [
        (1, 1, 8),
        (65, 70, 40),
        (64, 64, 32),
        (17, 130, 96),
        (3, 9, 136),
    ]
    .iter()
    .enumerate()
    {
        check_gemm(dev, m, n, k, 70 + i as u64).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn gemm_bf16_tc_rejects_k_not_multiple_of_8() {
    let e = launch::gemm_bf16_tc(4, 4, 12).expect_err("k = 12");
    assert!(e.to_string().contains("multiple of 8"), "{e}");
}
