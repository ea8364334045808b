//! Timing harness (not a test: nothing is asserted) for decode's matrix-vector products at the
//! memory's pace: one x row against a stream of distinct bf16 weights of ds-v3-mini's expert
//! shape (`[512, 1024]`, 1 MiB each), 256 MiB in all so no cache holds them, read the way a
//! decode step reads its layers (one `linear` per weight, the pool's threads splitting its
//! columns). Prints the weight bytes streamed per second beside the read bandwidth that
//! `troupe bench` measures (`measure_read_bandwidth`), measured in the same run.
//!
//! Run: `cargo test --release -p troupe-engine --bench decode_gemv -- --ignored --nocapture`
//! (`RAYON_NUM_THREADS` sets the threads; 2 by default here; `GEMV_ONLY=amx` (a path's name) runs
//! that path alone, for `perf record`).

use std::time::Instant;

use troupe_engine::dtype::DType;
use troupe_engine::kernels::attention_cost::measure_read_bandwidth;
use troupe_engine::kernels::isa::Isa;
use troupe_engine::kernels::linear::{linear_many_in, LinearJob};
use troupe_engine::kernels::pool::on_pool;
use troupe_engine::kernels::precision::Compute;
use troupe_engine::weights::int8::quantize_weight;
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;

#[path = "support/harness.rs"]
mod harness;
use harness::noise;

#[test]
#[ignore = "timing harness: run with --ignored --nocapture"]
fn decode_streams_weights() {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool");
    let (out, k, count) = (512usize, 1024usize, 256usize);
    // Finite bf16 bit patterns (exponents near 1.0); the values do not matter, the bytes do.
    let weights: Vec<Weight> = (0..count)
        .map(|i| {
            let bits: Vec<u16> = (0..out * k)
                .map(|j| 0x3c00 | (((j * 2_654_435_761 + i * 40_503) >> 7) & 0x7ff) as u16)
                .collect();
            Weight::from_u16(&format!("w{i}"), DType::BF16, vec![out, k], &bits)
        })
        .collect();
    let int8: Vec<Weight> = weights
        .iter()
        .map(|w| quantize_weight(w).expect("int8 weights"))
        .collect();
    let x = Tensor::matrix(1, k, noise(k, 3)).expect("an x row");
    // `GEMV_PER_REGION` weights share one parallel region (default 1, as a decode step's
    // projections mostly do).
    let per_region: usize = std::env::var("GEMV_PER_REGION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut y = vec![0.0f32; out * per_region];
    let bf16_bytes = (count * out * k * 2) as f64;
    // An int8 row carries one f32 scale per 32 elements.
    let int8_bytes = (count * out * (k + k / 32 * 4)) as f64;
    pool.install(|| {
        let cases = [
            (Isa::Avx2, Compute::F32, "bf16", &weights, bf16_bytes),
            (Isa::Avx512, Compute::F32, "bf16", &weights, bf16_bytes),
            (Isa::Avx512Bf16, Compute::Bf16, "bf16", &weights, bf16_bytes),
            (Isa::Amx, Compute::Bf16, "bf16", &weights, bf16_bytes),
            (Isa::Avx2, Compute::F32, "int8", &int8, int8_bytes),
            (Isa::Avx512, Compute::F32, "int8", &int8, int8_bytes),
        ];
        for (isa, compute, dtype, weights, bytes) in cases {
            let only = std::env::var("GEMV_ONLY").ok();
            if !isa.supported() || only.is_some_and(|o| o != isa.name()) {
                continue;
            }
            // As the reference executor runs a pass: on the pool, its other threads polling.
            let mut pass = || {
                on_pool(|| {
                    for ws in weights.chunks(per_region) {
                        let mut jobs: Vec<LinearJob<'_>> = ws
                            .iter()
                            .zip(y.chunks_mut(out))
                            .map(|(w, out)| LinearJob { x: &x, w, out })
                            .collect();
                        linear_many_in(&mut jobs, isa, compute, None).expect("a linear");
                    }
                })
            };
            pass();
            for round in 0..5 {
                let read = measure_read_bandwidth();
                let (t0, c0) = (Instant::now(), harness::process_cpu_ns().unwrap_or(0));
                for _ in 0..4 {
                    pass();
                }
                let wall = t0.elapsed().as_secs_f64();
                let cpu = (harness::process_cpu_ns().unwrap_or(0) - c0) as f64 * 1e-9;
                let gbps = 4.0 * bytes / wall / 1e9;
                println!(
                    "{threads} threads {:<10} {:<4} compute, round {round}: {gbps:5.1} GB/s of \
                     {dtype} weights, read bandwidth {read:5.1} GB/s ({:.0}%), cpu/wall {:.2}",
                    isa.name(),
                    compute.name(),
                    100.0 * gbps / read,
                    cpu / wall
                );
            }
        }
    });
}
