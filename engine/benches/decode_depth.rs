//! Timing harness (nothing asserted): greedy decode of `graphs/ds-v3-mini.toml` through the
//! reference executor on the CPU backend, at depth 0 and at depth `DEPTH` (default 4096), and the
//! extra time per decoded token next to what attention over the cache should cost on this machine
//! (cache bytes ÷ measured read bandwidth, attention FLOPs ÷ measured FMA rate).
//!
//! Run: `cargo test --release -p troupe-engine --bench decode_depth -- --ignored --nocapture`

use std::time::Instant;

use troupe_engine::backend::AttentionParams;
use troupe_engine::device_tensor::KvLayout;
use troupe_engine::executor::{ReferenceExecutor, SeqChunk};
use troupe_engine::graph::spec::AttentionSpec;
use troupe_engine::graph::LoadedGraph;
use troupe_engine::kernels::attention_cost::{
    attention_cost, measure_fma_rate, measure_read_bandwidth,
};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::kv::SequenceCache;
use troupe_engine::model::Model;
use troupe_engine::Backend;

const GEN: usize = 64;

/// A sequence with `depth` cached positions and the next token to feed it.
fn filled(
    exec: &ReferenceExecutor<'_>,
    be: &CpuBackend,
    vocab: u32,
    depth: usize,
) -> (SequenceCache, u32) {
    let mut cache = exec.new_cache().unwrap();
    let mut tok = 13u32;
    let prompt: Vec<u32> = (0..depth.max(1) as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    for part in prompt.chunks(512) {
        let mut chunk = [SeqChunk::prompt(part.to_vec(), &mut cache)];
        let logits = exec.forward(&mut chunk, None).unwrap();
        tok = *be.argmax(&logits).unwrap().last().unwrap();
    }
    (cache, tok)
}

/// One greedy decode step; returns its wall time in seconds.
fn step(exec: &ReferenceExecutor<'_>, be: &CpuBackend, seq: &mut (SequenceCache, u32)) -> f64 {
    let t = Instant::now();
    let mut chunk = [SeqChunk::generated(seq.1, &mut seq.0)];
    let logits = exec.forward(&mut chunk, None).unwrap();
    seq.1 = be.argmax(&logits).unwrap()[0];
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "timing harness: run with --ignored --nocapture"]
fn ds_v3_mini_decode_extra_time_at_depth() {
    let depth: usize = std::env::var("DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../graphs/ds-v3-mini.toml");
    let text = std::fs::read_to_string(src).unwrap();
    let positions = (depth + GEN + 1).next_power_of_two().max(4096);
    let text = text.replace(
        "max_position_embeddings = 4096",
        &format!("max_position_embeddings = {positions}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds-v3-mini.toml");
    std::fs::write(&path, text).unwrap();
    let graph = LoadedGraph::open(&path).unwrap();
    let model = Model::load(&graph, &mut |_, _| {}).unwrap();
    let be = CpuBackend::new();
    let exec = ReferenceExecutor::new(&model, &be);
    let vocab = model.spec.vocab_size as u32;
    let mut shallow = filled(&exec, &be, vocab, 0);
    let mut deep = filled(&exec, &be, vocab, depth);
    // Steps alternate between the two sequences, so a busy machine slows both alike; medians.
    let (mut t0, mut t1) = (Vec::new(), Vec::new());
    for _ in 0..GEN {
        t0.push(step(&exec, &be, &mut shallow));
        t1.push(step(&exec, &be, &mut deep));
    }
    let (base, deep) = (median(t0), median(t1));
    let extra = deep - base;

    let s = &model.spec;
    let AttentionSpec::Mla {
        kv_lora_rank,
        qk_rope_head_dim,
        ..
    } = s.attention
    else {
        panic!("ds-v3-mini is an MLA model");
    };
    let layout = KvLayout {
        page_tokens: 64,
        key_width: kv_lora_rank,
        rope_width: qk_rope_head_dim,
        value_width: 0,
    };
    let p = AttentionParams {
        heads: s.num_attention_heads,
        kv_heads: 1,
        d1: kv_lora_rank,
        d2: qk_rope_head_dim,
        v_dim: kv_lora_rank,
        scale: 1.0,
        q_start: depth,
        sliding_window: None,
    };
    let (bytes, flops) = attention_cost(&layout, depth, &p);
    let layers = s.num_hidden_layers as f64;
    let (bw, fma) = (measure_read_bandwidth(), measure_fma_rate());
    let read = bytes as f64 * layers / (bw * 1e9);
    let compute = flops as f64 * layers / (fma * 1e9);
    println!(
        "ds-v3-mini greedy decode, threads {}: median of {GEN} alternating steps: {:.2} ms/token at d0, {:.2} ms/token at d{depth}; extra {:.2} ms/token",
        rayon::current_num_threads(),
        base * 1e3,
        deep * 1e3,
        extra * 1e3
    );
    println!(
        "  attention over the cache: {:.1} MB/token ÷ {bw:.2} GB/s = {:.2} ms; {:.0} MFLOP/token ÷ {fma:.1} GFLOP/s = {:.2} ms; extra / max = {:.2} (issue #9 bar: <= 1.5)",
        bytes as f64 * layers / 1e6,
        read * 1e3,
        flops as f64 * layers / 1e6,
        compute * 1e3,
        extra / read.max(compute)
    );
}
