//! The sm_80 weight-only FP8 kernels (`linear_fp8.ptx`) on the interpreter device (race detector
//! on, `launch` configurations), checked bit for bit against a host evaluation of the documented
//! reduction order: every e4m3 byte converts exactly (NaN for 0x7f/0xff), each 128-wide k-block
//! is summed lane-strided with fma then by the butterfly, and the block's scale multiplies that
//! partial once, fused into the accumulator (`acc = fma(scale, partial, acc)`); ragged n and k (partial scale blocks at
//! both edges), decode (m = 1) and several rows; `grouped_linear_fp8w` over expert segments gives
//! each row the same bits.

use crate::common::*;
use crate::kernel_fp8::e4m3_value;
use troupe_engine::dtype::DType;
use troupe_ptx::device::{bytes_f32, f32_bytes, u32_bytes, Arg, Device};
use troupe_ptx::launch;

/// The kernel's value of one output: the fixed FP8 order of `linear_fp8.ptx`, on the host.
pub(crate) fn fp8_dot_host(x: &[f32], w: &[u8], scales: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (b, (xb, wb)) in x.chunks(128).zip(w.chunks(128)).enumerate() {
        let mut lanes = [0.0f32; 32];
        for (i, (&xv, &wv)) in xb.iter().zip(wb).enumerate() {
            let l = &mut lanes[i % 32];
            *l = xv.mul_add(e4m3_value(wv) as f32, *l);
        }
        for s in [16, 8, 4, 2, 1] {
            let prev = lanes;
            for (l, v) in lanes.iter_mut().enumerate() {
                *v = prev[l] + prev[l ^ s];
            }
        }
        acc = scales[b].mul_add(lanes[0], acc);
    }
    acc
}

/// Random e4m3 bytes (never NaN) of magnitude up to ~`max`.
fn fp8_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let b = rng.below(256) as u8;
            if b & 0x7f == 0x7f {
                b ^ 1
            } else {
                b
            }
        })
        .collect()
}

/// `out = x @ W^T` by `linear_fp8w` on the interpreter.
fn run_linear(x: &[f32], w: &[u8], s: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let gpu = interp();
    let dev = gpu.device();
    let (xb, wb, sb) = (
        dev.upload(&f32_bytes(x)).expect("up"),
        dev.upload(w).expect("up"),
        dev.upload(&f32_bytes(s)).expect("up"),
    );
    let out = dev.alloc(m * n * 4).expect("alloc");
    let l = launch::linear(DType::F8E4M3, m, n).expect("config");
    let u = |v: usize| Arg::U32(v as u32);
    dev.launch(
        &l,
        &[
            Arg::Buf(&out),
            Arg::Buf(&xb),
            Arg::Buf(&wb),
            Arg::Buf(&sb),
            u(m),
            u(n),
            u(k),
        ],
    )
    .expect("linear_fp8w");
    bytes_f32(&dev.download(&out, m * n * 4).expect("dl"))
}

/// The scales of weight row `j` (`[ceil(n/128), ceil(k/128)]` row-major).
fn row_scales(s: &[f32], j: usize, k: usize) -> &[f32] {
    let kb = k.div_ceil(128);
    &s[(j / 128) * kb..(j / 128 + 1) * kb]
}

#[test]
fn linear_fp8w_converts_every_e4m3_byte_exactly() {
    // k = 1, x = 1, scale 1: out[j] = e4m3(j); n = 256 spans two scale rows (the second 0.5).
    let w: Vec<u8> = (0..=255u8).collect();
    let got = run_linear(&[1.0], &w, &[1.0, 0.5], 1, 256, 1);
    for (j, g) in got.iter().enumerate() {
        let want = e4m3_value(j as u8) * if j < 128 { 1.0 } else { 0.5 };
        if want.is_nan() {
            assert!(g.is_nan(), "byte {j:#04x}: {g}, want NaN");
        } else {
            assert_eq!(f64::from(*g), want, "byte {j:#04x}");
        }
    }
}

#[test]
fn linear_fp8w_matches_the_block_order_bitwise() {
    let mut rng = Rng::new(171);
    // decode over three k-blocks (the last partial); rows past a 4-row step with n over two
    // scale rows and a 2-wide last k-block; k < 32 (idle lanes).
    for &(m, n, k) in &[(1usize, 10usize, 300usize), (6, 131, 130), (3, 9, 20)] {
        let x = rng.vec(m * k, 2.0);
        let w = fp8_bytes(&mut rng, n * k);
        let s: Vec<f32> = (0..n.div_ceil(128) * k.div_ceil(128))
            .map(|_| rng.f32().abs() * 0.01 + 1e-4)
            .collect();
        let got = run_linear(&x, &w, &s, m, n, k);
        for r in 0..m {
            for j in 0..n {
                let want = fp8_dot_host(&x[r * k..][..k], &w[j * k..][..k], row_scales(&s, j, k));
                assert_eq!(
                    got[r * n + j].to_bits(),
                    want.to_bits(),
                    "m{m} n{n} k{k} [{r},{j}]: {} vs {want}",
                    got[r * n + j]
                );
            }
        }
    }
}

#[test]
fn grouped_linear_fp8w_gives_each_row_the_linear_bits() {
    let gpu = interp();
    let dev = gpu.device();
    let mut rng = Rng::new(172);
    let (n, k) = (12usize, 160usize);
    let segments = [3usize, 0, 5]; // an expert without rows in the middle
    let rows: usize = segments.iter().sum();
    let x = rng.vec(rows * k, 1.5);
    let kb = k.div_ceil(128);
    let experts: Vec<(Vec<u8>, Vec<f32>)> = segments
        .iter()
        .map(|_| {
            let s = (0..kb).map(|_| rng.f32().abs() * 0.02 + 1e-4).collect();
            (fp8_bytes(&mut rng, n * k), s)
        })
        .collect();
    let bufs: Vec<_> = experts
        .iter()
        .map(|(w, s)| {
            (
                dev.upload(w).expect("up"),
                dev.upload(&f32_bytes(s)).expect("up"),
            )
        })
        .collect();
    let table: Vec<u8> = bufs
        .iter()
        .flat_map(|(w, s)| [dev.address(w), dev.address(s)])
        .flat_map(u64::to_le_bytes)
        .collect();
    let mut offsets = vec![0u32];
    for s in segments {
        offsets.push(offsets[offsets.len() - 1] + s as u32);
    }
    let (xb, tb, ob) = (
        dev.upload(&f32_bytes(&x)).expect("up"),
        dev.upload(&table).expect("up"),
        dev.upload(&u32_bytes(&offsets)).expect("up"),
    );
    let out = dev.alloc(rows * n * 4).expect("alloc");
    let max_rows = segments.iter().copied().max().unwrap_or(0);
    let l = launch::grouped_linear(DType::F8E4M3, n, segments.len(), max_rows).expect("config");
    let u = |v: usize| Arg::U32(v as u32);
    dev.launch(
        &l,
        &[
            Arg::Buf(&out),
            Arg::Buf(&xb),
            Arg::Buf(&tb),
            Arg::Buf(&ob),
            u(segments.len()),
            u(n),
            u(k),
        ],
    )
    .expect("grouped_linear_fp8w");
    let got = bytes_f32(&dev.download(&out, rows * n * 4).expect("dl"));
    for (e, (w, s)) in experts.iter().enumerate() {
        for r in offsets[e] as usize..offsets[e + 1] as usize {
            for j in 0..n {
                let want = fp8_dot_host(&x[r * k..][..k], &w[j * k..][..k], s);
                assert_eq!(
                    got[r * n + j].to_bits(),
                    want.to_bits(),
                    "expert {e} row {r} col {j}"
                );
            }
        }
    }
}
