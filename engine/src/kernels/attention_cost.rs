//! What attention over a cache should cost on this machine: the bytes and FLOPs of one decode
//! step (`attention_cost`) and the two rates they are divided by, measured on the current rayon
//! pool (`measure_read_bandwidth`, `measure_fma_rate` on the active kernel path). `troupe bench -d` and the attention
//! microbench (`engine/benches/attention_decode.rs`) print both reference figures.

use std::time::Instant;

use rayon::prelude::*;

use crate::backend::AttentionParams;
use crate::device_tensor::KvLayout;
use crate::kernels::isa::{self, Isa};

/// Bytes read from the cache and FLOPs of one query row attending at position `len - 1` over a
/// cache of `len` positions (the decode step): each visible cached row is read once for all
/// heads (`row_width` f32 values), and every head does a `d1 + d2` dot and a `v_dim` value
/// update per key (2 FLOPs per multiply-add; the softmax's O(heads·keys) work is left out).
pub fn attention_cost(layout: &KvLayout, len: usize, p: &AttentionParams) -> (u64, u64) {
    let keys = p.sliding_window.map_or(len, |w| len.min(w)) as u64;
    let bytes = keys * layout.row_width() as u64 * 4;
    let flops = 2 * p.heads as u64 * keys * (p.d1 + p.d2 + p.v_dim) as u64;
    (bytes, flops)
}

/// Concurrent sequential streams each thread of `measure_read_bandwidth` reads. The hardware
/// prefetchers track several streams at once, and the memory answers more requests in flight:
/// on a Sapphire Rapids-class Xeon (2 cores) one stream per thread read 27–31 GB/s, 4 streams
/// 42 and 8 streams 44 (a C loop of 512-bit loads, best of 5).
pub const READ_STREAMS: usize = 8;

/// Streaming read bandwidth of this machine with the current pool's threads (GB/s): the best of
/// ten reads of a 256 MiB buffer (far larger than the caches; one read lasts ~7 ms, and single
/// reads varied by ±10% here), each thread reading its share as [`READ_STREAMS`] interleaved
/// sequential streams with the widest loads the processor has.
/// This is the yardstick decode's weight streaming is held to, so it reads the way a fast
/// kernel could, not the way a naive loop does.
pub fn measure_read_bandwidth() -> f64 {
    let words = 32 << 20; // 256 MiB of u64
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = rayon::current_num_threads().max(1);
    let per = words / threads / (READ_STREAMS * 8) * (READ_STREAMS * 8);
    let mut best = 0.0f64;
    for _ in 0..10 {
        let t = Instant::now();
        let s: u64 = (0..threads)
            .into_par_iter()
            .map(|i| read_streams(&buf[i * per..(i + 1) * per]))
            .reduce(|| 0, u64::wrapping_add);
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((threads * per * 8) as f64 / dt / 1e9);
    }
    best
}

/// Sums `region` (a multiple of `READ_STREAMS` cache lines) read as `READ_STREAMS` streams.
fn read_streams(region: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the processor has AVX-512F (checked just above).
            return unsafe { read_streams_avx512(region) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2 (checked just above).
            return unsafe { read_streams_avx2(region) };
        }
    }
    read_streams_portable(region)
}

#[inline(always)]
fn read_streams_portable(region: &[u64]) -> u64 {
    let seg = region.len() / READ_STREAMS;
    let mut acc = [0u64; READ_STREAMS];
    for line in (0..seg).step_by(8) {
        for (s, a) in acc.iter_mut().enumerate() {
            for w in &region[s * seg + line..][..8] {
                *a = a.wrapping_add(*w);
            }
        }
    }
    acc.iter().fold(0, |a, b| a.wrapping_add(*b))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_streams_avx2(region: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let seg = region.len() / READ_STREAMS;
    let p = region.as_ptr();
    let mut acc = [_mm256_setzero_si256(); READ_STREAMS];
    for line in (0..seg).step_by(8) {
        for (s, a) in acc.iter_mut().enumerate() {
            let q = p.add(s * seg + line) as *const __m256i;
            *a = _mm256_add_epi64(
                *a,
                _mm256_add_epi64(_mm256_loadu_si256(q), _mm256_loadu_si256(q.add(1))),
            );
        }
    }
    let mut lanes = [0u64; 4];
    let mut total = 0u64;
    for a in acc {
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, a);
        total = lanes.iter().fold(total, |t, l| t.wrapping_add(*l));
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn read_streams_avx512(region: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let seg = region.len() / READ_STREAMS;
    let p = region.as_ptr();
    let mut acc = [_mm512_setzero_si512(); READ_STREAMS];
    for line in (0..seg).step_by(8) {
        for (s, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_epi64(*a, _mm512_loadu_si512(p.add(s * seg + line) as *const _));
        }
    }
    acc.iter().fold(0u64, |t, a| {
        t.wrapping_add(_mm512_reduce_add_epi64(*a) as u64)
    })
}

/// Independent fused multiply-add chains per thread (enough to cover the FMA latency).
const CHAINS: usize = 12;
/// Iterations of the chains per thread and run of `measure_fma_rate`.
const FMA_ITERS: usize = 4_000_000;

/// Lanes of one fused multiply-add on the active kernel path (`isa::active()`): 16 on AVX-512,
/// 8 otherwise (the portable loop is written 8 wide too).
fn fma_lanes() -> usize {
    match isa::active() {
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => 16,
        _ => 8,
    }
}

/// FLOPs one thread computes in one of `measure_fma_rate`'s three runs (to turn the CPU time
/// of a call into a rate per busy core on a shared machine).
pub fn fma_flops_per_thread_run() -> u64 {
    (FMA_ITERS * CHAINS * fma_lanes() * 2) as u64
}

/// Peak f32 fused-multiply-add rate of the current pool's threads (GFLOP/s, 2 FLOPs per FMA) on
/// the active kernel path, so the floor is what the kernels' own instructions could reach: the
/// best of three runs of `CHAINS` independent chains per thread, each one register wide
/// (512 bits on AVX-512, 256 on AVX2, the compiler's code for an 8-wide loop otherwise).
pub fn measure_fma_rate() -> f64 {
    let threads = rayon::current_num_threads();
    let iters = FMA_ITERS;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let s: f32 = (0..threads)
            .into_par_iter()
            .map(|k| fma_chains(iters, k as f32 * 1e-9))
            .sum();
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        let flops = threads as f64 * fma_flops_per_thread_run() as f64;
        best = best.max(flops / dt / 1e9);
    }
    best
}

fn fma_chains(iters: usize, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match isa::active() {
        // SAFETY: `isa::active()` is always a path the processor has.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => {
            return unsafe { fma_chains_avx512(iters, seed) }
        }
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { fma_chains_avx2(iters, seed) },
        Isa::Portable => {}
    }
    fma_chains_portable(iters, seed)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: usize, seed: f32) -> f32 {
    fma_chains_portable(iters, seed)
}

/// `CHAINS` chains of 512-bit multiply-adds, written with intrinsics (the compiler does not
/// turn the 16-wide portable loop into them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn fma_chains_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(seed); CHAINS];
    let a = _mm512_set1_ps(std::hint::black_box(0.999_999f32));
    let b = _mm512_set1_ps(std::hint::black_box(1e-7f32));
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            *chain = _mm512_fmadd_ps(*chain, a, b);
        }
    }
    let mut total = 0.0;
    for chain in acc {
        total += _mm512_reduce_add_ps(chain);
    }
    total
}

#[inline(always)]
fn fma_chains_portable(iters: usize, seed: f32) -> f32 {
    let mut acc = [[seed; 8]; CHAINS];
    let (a, b) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for x in chain.iter_mut() {
                *x = x.mul_add(a, b);
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reader visits every word once: the same wrapping sum as a plain loop.
    #[test]
    fn the_stream_readers_read_every_word_once() {
        let words = READ_STREAMS * 8 * 37;
        let buf: Vec<u64> = (0..words as u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let want = buf.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        assert_eq!(read_streams_portable(&buf), want);
        assert_eq!(read_streams(&buf), want);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2 (checked just above).
            assert_eq!(unsafe { read_streams_avx2(&buf) }, want);
        }
    }
}
