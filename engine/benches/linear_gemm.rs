//! Timing harness (not a test: nothing is asserted) for the CPU linear on ds-v3-mini's shapes:
//! an expert's gate projection (x `[n, 1024]` × bf16 W `[512, 1024]`) and the shared dense up
//! projection (`[2816, 1024]`), for one row (decode), 6 rows (an expert's share of a 64-sequence decode step) and 128 rows
//! (prefill), in each compute
//! mode and kernel path the processor has, and the same shapes as FP8 block-scaled weights. Prints GFLOP/s per CPU-second of this process, so a
//! run beside other work still compares the paths (wall time would not).
//!
//! Run: `RAYON_NUM_THREADS=1 cargo test --release -p troupe-engine --bench linear_gemm -- --ignored --nocapture`
//! (`LINEAR_GEMM_ROWS=12,128` runs only those row counts; 12 rows is an expert's share of a
//! 128-token prefill, 128 × 6 / 64).

use std::time::Instant;

use troupe_engine::dtype::{f32_to_bf16, DType};
use troupe_engine::kernels::isa::Isa;
use troupe_engine::kernels::linear::{linear_many_in, LinearJob};
use troupe_engine::kernels::precision::Compute;
use troupe_engine::weights::fp8::quantize_block_scaled;
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;

#[path = "support/harness.rs"]
mod harness;
use harness::noise;

/// CPU time so far (0 where it cannot be read, which makes the per-CPU-second rates infinite).
fn process_cpu_ns() -> u64 {
    harness::process_cpu_ns().unwrap_or(0)
}

#[test]
#[ignore = "timing harness: run with --ignored --nocapture"]
fn ds_v3_mini_linears() {
    let k = 1024;
    for out in [512usize, 2816] {
        let wv: Vec<u16> = noise(out * k, 7).iter().map(|&v| f32_to_bf16(v)).collect();
        let w = Weight::from_u16("w", DType::BF16, vec![out, k], &wv);
        let wf8 = quantize_block_scaled("w8", out, k, &noise(out * k, 7)).unwrap();
        let rows: Vec<usize> = match std::env::var("LINEAR_GEMM_ROWS") {
            Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
            Err(_) => vec![1, 6, 12, 128],
        };
        for &n in &rows {
            let x = Tensor::matrix(n, k, noise(n * k, 3)).unwrap();
            let mut y = vec![0.0f32; n * out];
            let flops = 2.0 * (n * k * out) as f64;
            let reps = (3e9 / flops).clamp(3.0, 20000.0) as usize;
            for (isa, compute, w) in [
                (Isa::Avx2, Compute::F32, &w),
                (Isa::Avx512, Compute::F32, &w),
                (Isa::Avx512, Compute::Bf16, &w),
                (Isa::Avx512Bf16, Compute::Bf16, &w),
                (Isa::Amx, Compute::Bf16, &w),
                (Isa::Avx2, Compute::F32, &wf8),
                (Isa::Avx512, Compute::F32, &wf8),
            ] {
                if !isa.supported() {
                    continue;
                }
                let mut run = || {
                    linear_many_in(
                        &mut [LinearJob {
                            x: &x,
                            w,
                            out: &mut y,
                        }],
                        isa,
                        compute,
                        None,
                    )
                    .unwrap()
                };
                run();
                let (t0, c0) = (Instant::now(), process_cpu_ns());
                for _ in 0..reps {
                    run();
                }
                let (wall, cpu) = (
                    t0.elapsed().as_secs_f64(),
                    (process_cpu_ns() - c0) as f64 * 1e-9,
                );
                println!(
                    "[{n:>3} x {k}] x [{out} x {k}]^T {:<8} {:<10} {:<4}  {:7.1} GFLOP/s per CPU-s  ({:6.1} µs/call wall, cpu/wall {:.2})",
                    w.dtype().to_string(),
                    isa.name(),
                    compute.name(),
                    flops * reps as f64 / cpu / 1e9,
                    wall / reps as f64 * 1e6,
                    cpu / wall
                );
            }
        }
    }
}
