//! Timing harness (not a test: nothing is asserted) for the absorbed-MLA decode step of
//! `paged_attention` at depth, with `graphs/ds-v3-mini.toml`'s shapes: 16 query heads sharing one
//! cached latent row of 256 + a 32-wide rope key, pages of 64 positions, 8 layers. Prints the
//! time per call next to the two floors it is judged against, both measured in the same run:
//! cache bytes ÷ streaming read bandwidth and attention FLOPs ÷ peak FMA rate.
//!
//! Run: `cargo test --release -p troupe-engine --bench attention_decode -- --ignored --nocapture`
//! (`ATTN_LEN` changes the depth, `RAYON_NUM_THREADS` the threads; `ATTN_HOT_ONLY=N` makes N
//! cache-hot calls and nothing else, for `perf record`). Three figures: 8 layers round-robin,
//! one layer called again and again (cache-hot), and 8 layers with a 512 MiB sweep before each
//! call (cache evicted, as between the layers of a model's decode step), beside the time a
//! plain read of the same evicted pages takes.

use std::time::Instant;

use rayon::prelude::*;

use troupe_engine::backend::AttentionParams;
use troupe_engine::device_tensor::KvLayout;
use troupe_engine::kernels::attention_cost::{
    attention_cost, fma_flops_per_thread_run, measure_fma_rate, measure_read_bandwidth,
};
use troupe_engine::kernels::paged_attention::paged_attention;
use troupe_engine::Tensor;

const LAYERS: usize = 8;

#[path = "support/harness.rs"]
mod harness;
use harness::{noise, process_cpu_ns};
const HEADS: usize = 16;
const KV_LORA: usize = 256;
const ROPE: usize = 32;
const PAGE: usize = 64;

/// `b` (4-byte aligned) as f32 values.
fn bytemuck_f32(b: &mut [u8]) -> &mut [f32] {
    assert!(b.as_ptr().align_offset(4) == 0 && b.len() % 4 == 0);
    // SAFETY: aligned, length a multiple of 4, and every bit pattern is an f32.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut f32, b.len() / 4) }
}

#[test]
#[ignore = "timing harness: run with --ignored --nocapture"]
fn ds_v3_mini_decode_at_depth() {
    let len: usize = std::env::var("ATTN_LEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let layout = KvLayout {
        page_tokens: PAGE,
        key_width: KV_LORA,
        rope_width: ROPE,
        value_width: 0,
    };
    let p = AttentionParams {
        heads: HEADS,
        kv_heads: 1,
        d1: KV_LORA,
        d2: ROPE,
        v_dim: KV_LORA,
        scale: 1.0 / 96f32.sqrt(),
        q_start: len - 1,
        sliding_window: None,
    };
    let page_len = PAGE * layout.row_width();
    let n_pages = len.div_ceil(PAGE);
    // One separate page set per layer, as the model holds them (8 × 4.7 MB at len 4096):
    // one heap allocation per page, or (`ATTN_HUGE=1`) each layer's pages in one anonymous
    // mapping advised to use 2 MiB pages.
    let huge = std::env::var("ATTN_HUGE").is_ok_and(|v| v == "1");
    let mut maps: Vec<memmap2::MmapMut> = Vec::new();
    let layers: Vec<Vec<Vec<f32>>> = (0..LAYERS)
        .map(|l| {
            (0..n_pages)
                .map(|i| noise(page_len + 16, (l * 1000 + i) as u64))
                .collect()
        })
        .collect();
    if huge {
        for pages in &layers {
            let bytes = n_pages * page_len * 4 + (2 << 20);
            let mut m = memmap2::MmapMut::map_anon(bytes).unwrap();
            m.advise(memmap2::Advice::HugePage).unwrap();
            let off = m.as_ptr().align_offset(2 << 20);
            let dst: &mut [f32] = bytemuck_f32(&mut m[off..off + n_pages * page_len * 4]);
            for (i, p) in pages.iter().enumerate() {
                dst[i * page_len..(i + 1) * page_len].copy_from_slice(&p[..page_len]);
            }
            maps.push(m);
        }
    }
    let refs: Vec<Vec<&[f32]>> = if huge {
        maps.iter()
            .map(|m| {
                let off = m.as_ptr().align_offset(2 << 20);
                let all: &[f32] = unsafe {
                    std::slice::from_raw_parts(
                        m.as_ptr().add(off) as *const f32,
                        n_pages * page_len,
                    )
                };
                all.chunks(page_len).collect()
            })
            .collect()
    } else {
        layers
            .iter()
            .map(|pages| {
                // 64-byte aligned, as the model's pages (`kv_pages.rs`, in an `aligned::AlignedVec`).
                let at = |p: &Vec<f32>| p.as_ptr().align_offset(64);
                pages.iter().map(|p| &p[at(p)..at(p) + page_len]).collect()
            })
            .collect()
    };
    println!(
        "pages: {}",
        if huge {
            "2 MiB-advised slabs"
        } else {
            "one allocation each"
        }
    );
    let q = Tensor::matrix(1, HEADS * KV_LORA, noise(HEADS * KV_LORA, 1)).unwrap();
    let q_rope = Tensor::matrix(1, HEADS * ROPE, noise(HEADS * ROPE, 2)).unwrap();
    let call = |l: usize| paged_attention(&q, Some(&q_rope), &refs[l], &layout, len, &p).unwrap();

    let threads = rayon::current_num_threads();
    // `ATTN_HOT_ONLY=N`: only N calls on one layer (for `perf record`), then stop.
    if let Some(n) = std::env::var("ATTN_HOT_ONLY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(call(0));
        }
        println!(
            "hot only: {:.1} us/call",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        return;
    }
    // Best round of `rounds` (wall time per call) and the CPU share the loop got overall.
    let time = |rounds: usize, layers: &[usize]| {
        for &l in layers {
            std::hint::black_box(call(l));
        }
        let (cpu0, t0) = (process_cpu_ns(), Instant::now());
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            for &l in layers {
                std::hint::black_box(call(l));
            }
            best = best.min(t.elapsed().as_secs_f64() / layers.len() as f64);
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = match (cpu0, process_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e9,
            _ => f64::NAN,
        };
        let busy = cpu / (wall * threads as f64);
        (best, busy, cpu / (rounds * layers.len()) as f64)
    };
    let all: Vec<usize> = (0..LAYERS).collect();
    let (per_call, busy, cpu_call) = time(20, &all);
    let (per_call_hot, busy_hot, cpu_call_hot) = time(100, &[0]);
    // As in a model's decode step: between two layers' calls the processor streams other data
    // (ds-v3-mini reads 310.8 MB of weights per token), so each call finds its cache pages
    // evicted. A 512 MiB sweep runs before every call, outside the timed part.
    let sweep: Vec<f32> = noise(128 << 20, 99);
    let flush = || {
        let s: f32 = sweep
            .par_chunks(1 << 16)
            .map(|c| c.iter().step_by(16).sum::<f32>())
            .sum();
        std::hint::black_box(s);
    };
    // Best of 5 rounds of `work(l)` for every layer, each after the sweep: seconds per layer.
    let cold = |work: &dyn Fn(usize)| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let mut total = 0.0;
            for l in 0..LAYERS {
                flush();
                let t = Instant::now();
                work(l);
                total += t.elapsed().as_secs_f64();
            }
            best = best.min(total / LAYERS as f64);
        }
        best
    };
    // The same pages read with one load per 64-byte line after the same sweep: what memory
    // alone costs for this layout (pages of 64 rows, each its own allocation) when evicted.
    let cold_read = cold(&|l| {
        let s: f32 = refs[l]
            .par_iter()
            .map(|pg| pg.iter().step_by(16).sum::<f32>())
            .sum();
        std::hint::black_box(s);
    });
    let per_call_cold = cold(&|l| {
        std::hint::black_box(call(l));
    });

    let bw = measure_read_bandwidth();
    let cpu0 = process_cpu_ns();
    let fma = measure_fma_rate();
    // The FMA rate per second of CPU time (a shared machine's time slices left out).
    let fma_cpu = match (cpu0, process_cpu_ns()) {
        (Some(a), Some(b)) => {
            (3 * threads as u64 * fma_flops_per_thread_run()) as f64 / ((b - a) as f64 / 1e9) / 1e9
        }
        _ => f64::NAN,
    };
    let (bytes, flops) = attention_cost(&layout, len, &p);
    let floor_read = bytes as f64 / (bw * 1e9);
    let floor_fma = flops as f64 / (fma * 1e9);
    let floor = floor_read.max(floor_fma);
    println!("paged_attention, ds-v3-mini decode, len {len}, page {PAGE}, threads {threads}");
    println!(
        "  measured: read bandwidth {bw:.2} GB/s, FMA rate {fma:.1} GFLOP/s; per call {:.2} MB, {:.1} MFLOP",
        bytes as f64 / 1e6,
        flops as f64 / 1e6
    );
    for (name, t, busy) in [
        ("8 layers round-robin", per_call, busy),
        ("1 layer, cache-hot", per_call_hot, busy_hot),
    ] {
        println!(
            "  {name} (best round; the loop had {:.0}% of {threads} cores): {:.1} us/call = {:.2} ms per token of {LAYERS} layers; {:.2} GB/s ({:.0}% of read bw), {:.1} GFLOP/s ({:.0}% of FMA rate); {:.2}x the floor",
            100.0 * busy,
            t * 1e6,
            t * LAYERS as f64 * 1e3,
            bytes as f64 / t / 1e9,
            100.0 * bytes as f64 / t / 1e9 / bw,
            flops as f64 / t / 1e9,
            100.0 * flops as f64 / t / 1e9 / fma,
            t / floor
        );
    }
    println!(
        "  8 layers, cache evicted before each call (best of 5 rounds): {:.1} us/call = {:.2} ms per token of {LAYERS} layers; {:.2} GB/s ({:.0}% of read bw); {:.2}x the floor",
        per_call_cold * 1e6,
        per_call_cold * LAYERS as f64 * 1e3,
        bytes as f64 / per_call_cold / 1e9,
        100.0 * bytes as f64 / per_call_cold / 1e9 / bw,
        per_call_cold / floor
    );
    println!(
        "  the same pages read alone after the same sweep (one load per line): {:.1} us/call, {:.2} GB/s",
        cold_read * 1e6,
        bytes as f64 / cold_read / 1e9
    );
    for (name, cpu) in [
        ("8 layers round-robin", cpu_call),
        ("1 layer, cache-hot", cpu_call_hot),
    ] {
        println!(
            "  {name}, CPU time: {:.1} us/call (all threads) vs FMA floor {:.1} us at {fma_cpu:.1} GFLOP per CPU-second: {:.2}x",
            cpu * 1e6,
            flops as f64 / (fma_cpu * 1e9) * 1e6,
            cpu / (flops as f64 / (fma_cpu * 1e9))
        );
    }
    println!(
        "  floors per call: read {:.1} us, FMA {:.1} us (per token x{LAYERS}: {:.2} ms, {:.2} ms)",
        floor_read * 1e6,
        floor_fma * 1e6,
        floor_read * LAYERS as f64 * 1e3,
        floor_fma * LAYERS as f64 * 1e3
    );
}
