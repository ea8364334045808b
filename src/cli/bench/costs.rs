//! What this machine can do, measured with the compute pool's threads, and what a decoded token's
//! attention costs at a depth at least: reading the cache (its bytes ÷ the read bandwidth) and
//! computing over it (its FLOPs ÷ the FLOP rate of the engine's dot kernel on cache-resident
//! rows). The larger of the two is the floor the depth criterion compares against.

use std::time::Instant;

use rayon::prelude::*;
use troupe_engine::graph::spec::{AttentionSpec, ModelSpec};
use troupe_engine::kernels::dot::{dot_block, simd_available, WRow};

/// Read bandwidth of this machine with the pool's threads (GB/s), over a buffer far larger than
/// the caches.
pub fn measure_read_bandwidth() -> f64 {
    let n = 256 << 20; // 1 GiB of f32
    let buf: Vec<f32> = (0..n).map(|i| (i & 1023) as f32).collect();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut lanes = [0.0f32; 16];
                for ch in c.chunks_exact(16) {
                    for (l, v) in lanes.iter_mut().zip(ch) {
                        *l += v;
                    }
                }
                lanes.iter().sum::<f32>()
            })
            .sum();
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((n * 4) as f64 / dt / 1e9);
    }
    best
}

/// f32 FLOP rate (GFLOP/s, 2 per multiply-add) of the engine's dot kernel (`dot_block`, 4×4
/// tiles, AVX2+FMA when available) over rows that stay in L1, on every thread of the pool: the
/// rate attention's dot products can reach at best.
pub fn measure_flop_rate() -> f64 {
    const LEN: usize = 512;
    const TILES: usize = 20_000;
    let simd = simd_available();
    let threads = rayon::current_num_threads();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sum: f32 = (0..threads)
            .into_par_iter()
            .map(|k| {
                let xs: Vec<Vec<f32>> = (0..4)
                    .map(|r| (0..LEN).map(|i| ((i + r + k) % 7) as f32 * 0.25).collect())
                    .collect();
                let ws: Vec<Vec<f32>> = (0..4)
                    .map(|c| (0..LEN).map(|i| ((i * 3 + c) % 5) as f32 * 0.5).collect())
                    .collect();
                let x: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                let w: Vec<WRow<'_>> = ws.iter().map(|r| WRow::F32(r)).collect();
                let mut out = [[0.0f32; 4]; 4];
                let mut acc = 0.0f32;
                for _ in 0..TILES {
                    dot_block(std::hint::black_box(&x), &w, simd, &mut out);
                    acc += out[0][0];
                }
                acc
            })
            .sum();
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        let flops = (threads * TILES * 16 * 2 * LEN) as f64;
        best = best.max(flops / dt / 1e9);
    }
    best
}

/// What one decoded token's attention over `depth` cached positions reads and computes, all
/// layers together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DepthCost {
    /// Cache bytes read (as stored: f32 rows of `[latent | rope key]`, or `[k | v]`; a sliding
    /// window's positions only).
    pub cache_bytes: u64,
    /// FLOPs of scores and weighted values (2 per multiply-add), in the form decode runs:
    /// absorbed MLA attends in latent space (`heads × (2·(kv_lora + rope) + 2·kv_lora)` per
    /// position), GQA over `heads × (2·head_dim + 2·head_dim)`.
    pub flops: u64,
}

impl DepthCost {
    pub fn of(spec: &ModelSpec, depth: usize) -> DepthCost {
        let d = spec.attention_dims();
        let (row, per_position, window) = match &spec.attention {
            AttentionSpec::Mla {
                kv_lora_rank,
                qk_rope_head_dim,
                ..
            } => (
                kv_lora_rank + qk_rope_head_dim,
                d.heads * (2 * (kv_lora_rank + qk_rope_head_dim) + 2 * kv_lora_rank),
                None,
            ),
            AttentionSpec::Gqa { sliding_window, .. } => (
                d.kv_heads * (d.qk_dim + d.v_dim),
                d.heads * (2 * d.qk_dim + 2 * d.v_dim),
                *sliding_window,
            ),
        };
        let layers = spec.num_hidden_layers as u64;
        // A sliding window reads its last `window` positions only.
        let depth = window.map_or(depth, |w| depth.min(w)) as u64;
        DepthCost {
            cache_bytes: 4 * row as u64 * depth * layers,
            flops: per_position as u64 * depth * layers,
        }
    }
    /// Seconds to read the cache at `gbps`.
    pub fn read_seconds(&self, gbps: f64) -> f64 {
        self.cache_bytes as f64 / (gbps * 1e9)
    }
    /// Seconds to compute at `gflops`.
    pub fn compute_seconds(&self, gflops: f64) -> f64 {
        self.flops as f64 / (gflops * 1e9)
    }
}
