//! The sm_89 FP8 kernels on the interpreter device (race detector on, `launch` configurations):
//! `fp8_quant_act` bit-exact against a host e4m3 round-to-nearest-even with saturation, and
//! `fp8_gemm_blockscaled` (`mma.sync.m16n8k32.e4m3`) against an f64 evaluation of the documented
//! formula on the same e4m3 inputs and scales, on ragged m and n (k % 128 == 0 is required).

use crate::common::*;
use troupe_ptx::device::{bytes_f32, f32_bytes, Arg, Device};
use troupe_ptx::launch;

/// Value of an e4m3 byte (bias 7, 3 mantissa bits, no infinities, 0x7f/0xff NaN).
pub(crate) fn e4m3_value(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((b >> 3) & 0xf, b & 7);
    if e == 0xf && m == 7 {
        return f64::NAN;
    }
    let v = if e == 0 {
        f64::from(m) * 2f64.powi(-9)
    } else {
        (1.0 + f64::from(m) / 8.0) * 2f64.powi(i32::from(e) - 7)
    };
    sign * v
}

/// e4m3 of `x` rounded to nearest, ties to even, saturating to +-448 (`cvt.rn.satfinite`).
pub(crate) fn e4m3_rn_sat(x: f32) -> u8 {
    let x = f64::from(x).clamp(-448.0, 448.0);
    let mut best = 0u8;
    for b in 0..=255u8 {
        let v = e4m3_value(b);
        if v.is_nan() || (v == 0.0 && b == 0x80) {
            continue;
        }
        let (d, db) = ((v - x).abs(), (e4m3_value(best) - x).abs());
        if d < db || (d == db && b & 1 == 0 && best & 1 == 1) {
            best = b;
        }
    }
    if x < 0.0 && best == 0 {
        0x80
    } else {
        best
    }
}

#[test]
fn fp8_quant_act_bit_exact() {
    let gpu = interp();
    let dev = gpu.device();
    let mut rng = Rng::new(101);
    let (m, k) = (3usize, 300usize); // k: two full 128-blocks and a ragged third one
    let mut x = rng.vec(m * k, 5.0);
    x[k..k + 128].iter_mut().for_each(|v| *v = 0.0); // an all-zero block -> scale 1
    x[7] = 1e-6; // tiny values underflow to subnormals / zero
    let xb = dev.upload(&f32_bytes(&x)).expect("up");
    let kb = k.div_ceil(128);
    let (q, s) = (
        dev.alloc(m * k).expect("alloc"),
        dev.alloc(m * kb * 4).expect("alloc"),
    );
    let l = launch::fp8_quant_act(m, k).expect("config");
    dev.launch(
        &l,
        &[
            Arg::Buf(&q),
            Arg::Buf(&s),
            Arg::Buf(&xb),
            Arg::U32(m as u32),
            Arg::U32(k as u32),
        ],
    )
    .expect("fp8_quant_act");
    let (qv, sv) = (
        dev.download(&q, m * k).expect("dl"),
        bytes_f32(&dev.download(&s, m * kb * 4).expect("dl")),
    );
    for r in 0..m {
        for b in 0..kb {
            let cols = b * 128..((b + 1) * 128).min(k);
            let amax = cols
                .clone()
                .map(|c| x[r * k + c].abs())
                .fold(0.0f32, f32::max);
            let want_s = if amax == 0.0 { 1.0 } else { amax / 448.0 };
            assert_eq!(
                sv[r * kb + b].to_bits(),
                want_s.to_bits(),
                "scale [{r},{b}]"
            );
            for c in cols {
                let want = e4m3_rn_sat(x[r * k + c] / want_s);
                assert_eq!(qv[r * k + c], want, "q[{r},{c}] of {}", x[r * k + c]);
            }
        }
    }
}

/// Products of two e4m3 values are exact in f32; each 128-k block is summed in f32 (<= 130 u of
/// the block's sum of |products| for any order), scaled (2 roundings) and added to the
/// accumulator in ascending block order (kb roundings). Tolerance per output:
/// (130 + 3 + kb) * u * sum over blocks of |sa * sb| * sum|a b|, u = 2^-24.
#[test]
fn fp8_gemm_blockscaled_ragged() {
    let gpu = interp();
    let dev = gpu.device();
    let mut rng = Rng::new(102);
    for &(m, n, k) in &[(1usize, 1usize, 128usize), (70, 37, 256), (5, 130, 128)] {
        let kb = k / 128;
        let nb = n.div_ceil(128);
        let a: Vec<u8> = (0..m * k).map(|_| e4m3_rn_sat(rng.f32() * 400.0)).collect();
        let b: Vec<u8> = (0..n * k).map(|_| e4m3_rn_sat(rng.f32() * 400.0)).collect();
        let sa: Vec<f32> = (0..m * kb).map(|_| rng.f32().abs() * 0.01 + 1e-3).collect();
        let sb: Vec<f32> = (0..nb * kb)
            .map(|_| rng.f32().abs() * 0.01 + 1e-3)
            .collect();
        let (ab, bb) = (dev.upload(&a).expect("up"), dev.upload(&b).expect("up"));
        let (sab, sbb) = (
            dev.upload(&f32_bytes(&sa)).expect("up"),
            dev.upload(&f32_bytes(&sb)).expect("up"),
        );
        let c = dev.alloc(m * n * 4).expect("alloc");
        let l = launch::fp8_gemm(m, n, k).expect("config");
        let u = |v: usize| Arg::U32(v as u32);
        dev.launch(
            &l,
            &[
                Arg::Buf(&c),
                Arg::Buf(&ab),
                Arg::Buf(&sab),
                Arg::Buf(&bb),
                Arg::Buf(&sbb),
                u(m),
                u(n),
                u(k),
            ],
        )
        .expect("fp8_gemm_blockscaled");
        let got = bytes_f32(&dev.download(&c, m * n * 4).expect("dl"));
        for r in 0..m {
            for j in 0..n {
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for blk in 0..kb {
                    let scale = f64::from(sa[r * kb + blk]) * f64::from(sb[(j / 128) * kb + blk]);
                    let (mut s, mut sabs) = (0.0f64, 0.0f64);
                    for i in blk * 128..(blk + 1) * 128 {
                        let p = e4m3_value(a[r * k + i]) * e4m3_value(b[j * k + i]);
                        s += p;
                        sabs += p.abs();
                    }
                    want += scale * s;
                    mag += scale.abs() * sabs;
                }
                let tol = (133 + kb) as f64 * f64::from(f32::EPSILON) * 0.5 * mag + 1e-30;
                let g = f64::from(got[r * n + j]);
                assert!(
                    (g - want).abs() <= tol,
                    "fp8 gemm m{m} n{n} k{k} [{r},{j}]: {g} vs {want} (tol {tol:e})"
                );
            }
        }
    }
    assert!(
        launch::fp8_gemm(4, 4, 100).is_err(),
        "k % 128 != 0 must be rejected"
    );
}
