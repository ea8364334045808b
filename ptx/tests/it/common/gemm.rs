//! Host side of the tensor-core GEMM tests (shared by kernel_gemm_tc.rs and the broken-variant
//! tests): device conversion f32 -> bf16, a `gemm_bf16_tc` launch with the `launch` configuration,
//! and the check against an f64 matmul of the bf16-rounded inputs.

use troupe_ptx::device::{bytes_f32, f32_bytes, Arg, Device};
use troupe_ptx::interp_device::InterpBuf;
use troupe_ptx::{launch, InterpDevice};

use super::{bf16_bits, Rng};

fn bf16_bytes(bits: &[u16]) -> Vec<u8> {
    bits.iter().flat_map(|b| b.to_le_bytes()).collect()
}

fn bytes_u16(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// f32 -> bf16 on the device; returns the device buffer and its bits.
pub fn convert(dev: &InterpDevice, x: &[f32]) -> (InterpBuf, Vec<u16>) {
    let xb = dev.upload(&f32_bytes(x)).expect("upload");
    let out = dev.alloc(x.len() * 2).expect("alloc");
    let l = launch::f32_to_bf16(x.len()).expect("config");
    dev.launch(
        &l,
        &[Arg::Buf(&out), Arg::Buf(&xb), Arg::U32(x.len() as u32)],
    )
    .expect("f32_to_bf16");
    let bits = bytes_u16(&dev.download(&out, x.len() * 2).expect("download"));
    (out, bits)
}

/// Runs `gemm_bf16_tc` for `a` `[m, k]` (f32, converted on the device) and `b` `[n, k]` (bf16).
pub fn gemm(
    dev: &InterpDevice,
    a: &[f32],
    b_bits: &[u16],
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let (ab, _) = convert(dev, a);
    let bb = dev.upload(&bf16_bytes(b_bits)).expect("upload b");
    let c = dev.alloc(m * n * 4).expect("alloc c");
    let l = launch::gemm_bf16_tc(m, n, k).expect("config");
    let u = |v: usize| Arg::U32(v as u32);
    dev.launch(
        &l,
        &[Arg::Buf(&c), Arg::Buf(&ab), Arg::Buf(&bb), u(m), u(n), u(k)],
    )
    .expect("gemm_bf16_tc");
    bytes_f32(&dev.download(&c, m * n * 4).expect("download c"))
}

/// Products of two bf16 values are exact in f32 (8 + 8 significant bits), so the only error is the
/// f32 accumulation over k terms (mma slices of 16, then tiles in ascending k): at most
/// (k + 2) * u * sum|a b| (Higham's gamma bound for any summation order), u = 2^-24, against an
/// f64 reference that is exact to far below that.
pub fn check_gemm(
    dev: &InterpDevice,
    m: usize,
    n: usize,
    k: usize,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let a = rng.vec(m * k, 2.0);
    let b_bits: Vec<u16> = rng.vec(n * k, 1.0).iter().map(|&v| bf16_bits(v)).collect();
    let got = gemm(dev, &a, &b_bits, m, n, k);
    let ar: Vec<f64> = a
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f64())
        .collect();
    let br: Vec<f64> = b_bits
        .iter()
        .map(|&v| half::bf16::from_bits(v).to_f64())
        .collect();
    for r in 0..m {
        for j in 0..n {
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for i in 0..k {
                s += ar[r * k + i] * br[j * k + i];
                sa += (ar[r * k + i] * br[j * k + i]).abs();
            }
            let tol = (k + 2) as f64 * f64::from(f32::EPSILON) * 0.5 * sa + 1e-30;
            let g = f64::from(got[r * n + j]);
            if (g - s).abs() > tol {
                return Err(format!(
                    "gemm m{m} n{n} k{k} [{r},{j}]: got {g}, want {s} (tol {tol:e})"
                ));
            }
        }
    }
    Ok(())
}
