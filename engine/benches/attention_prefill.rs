//! Timing harness (not a test: nothing is asserted) for the naive-MLA prefill attention of one
//! layer with `graphs/ds-v3-mini.toml`'s shapes: 16 heads, each with its own 64-wide key and
//! value, and a 32-wide rope key shared by all heads; a prompt of `ATTN_PROMPT` tokens (1000 by
//! default) attending causally to itself. Prints the time per call, cycles-free: the
//! multiply-adds per second (score and value products of the visible pairs) per CPU-second and
//! per wall-second, so a run beside other work still compares kernels.
//!
//! Run: `cargo test --release -p troupe-engine --bench attention_prefill -- --ignored --nocapture`
//! (`RAYON_NUM_THREADS` sets the threads).

use std::time::Instant;

use troupe_engine::backend::AttentionParams;
use troupe_engine::kernels::attention::attention;
use troupe_engine::Tensor;

#[path = "support/harness.rs"]
mod harness;
use harness::{noise, process_cpu_ns};

const HEADS: usize = 16;
const NOPE: usize = 64;
const ROPE: usize = 32;
const V_DIM: usize = 64;

#[test]
#[ignore = "timing harness: run with --ignored --nocapture"]
fn naive_mla_prefill() {
    let n: usize = std::env::var("ATTN_PROMPT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let t = |cols: usize, seed| Tensor::matrix(n, cols, noise(n * cols, seed)).unwrap();
    let (q, q_rope) = (t(HEADS * NOPE, 1), t(HEADS * ROPE, 2));
    let (k, k_rope, v) = (t(HEADS * NOPE, 3), t(ROPE, 4), t(HEADS * V_DIM, 5));
    let p = AttentionParams {
        heads: HEADS,
        kv_heads: HEADS,
        d1: NOPE,
        d2: ROPE,
        v_dim: V_DIM,
        scale: 1.0 / ((NOPE + ROPE) as f32).sqrt(),
        q_start: 0,
        sliding_window: None,
    };
    let run = || attention(&q, Some(&q_rope), &k, Some(&k_rope), &v, &p).unwrap();
    let first = run();
    let pairs = (n * (n + 1) / 2) as f64;
    let macs = pairs * (HEADS * (NOPE + ROPE + V_DIM)) as f64;
    for round in 0..3 {
        let (t0, c0) = (Instant::now(), process_cpu_ns().unwrap_or(0));
        let out = run();
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (process_cpu_ns().unwrap_or(0) - c0) as f64 * 1e-9;
        assert_eq!(out.data(), first.data());
        println!(
            "prompt {n} round {round}: {:7.1} ms, {:5.2} G multiply-adds/s per CPU-s, \
             {:5.2} per wall-s (cpu/wall {:.2})",
            wall * 1e3,
            macs / cpu / 1e9,
            macs / wall / 1e9,
            cpu / wall
        );
    }
}
