//! What crosses host↔device and which kernels run, measured by the backend's own counters
//! (`Backend::counters`) on the interpreter with the reference executor:
//! - a steady-state greedy decode step moves the token ids in (4 B per sequence, within the
//!   issue's 64 B per sequence) and the sampled ids out (4 B per sequence), or the logits
//!   (4·vocab per sequence) when they are asked for; a step that opens a new KV page also uploads
//!   that page's block-table entry (4 B per layer per sequence, printed);
//! - a whole-model forward (prefill, then decode steps) launches every kernel of the library but
//!   the opt-in bf16/FP8 compute paths, and the MoE layers run through the grouped kernels.

use std::collections::BTreeMap;
use std::sync::Arc;

use troupe_engine::device_tensor::DeviceCounters;
use troupe_engine::executor::{ReferenceExecutor, SeqChunk};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::{KvConfig, Model, SequenceCache};
use troupe_engine::Backend;
use troupe_ptx::kernels::LIBRARY;
use troupe_ptx::{GpuBackend, InterpDevice, InterpOptions};

use crate::common::fixture;

fn load(case: &str) -> Model {
    let graph = LoadedGraph::open(&fixture(case)).unwrap_or_else(|e| panic!("{case}: {e}"));
    Model::load(&graph, &mut |_, _| {}).unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// The interpreter without the race detector (the kernels' races are checked elsewhere).
fn fast_interp() -> GpuBackend<InterpDevice> {
    GpuBackend::new(InterpDevice::new(InterpOptions::default()))
}

/// Greedy decoding of `seqs` sequences together; returns the counters of each decode step
/// (forward + argmax, or forward + logits download when `logits`).
fn decode_steps(
    model: &Model,
    be: &GpuBackend<InterpDevice>,
    page_tokens: usize,
    seqs: usize,
    steps: usize,
    logits: bool,
) -> Vec<DeviceCounters> {
    let config = KvConfig {
        page_tokens,
        capacity_pages: 64,
    };
    let pools = Arc::new(model.kv_pools(be, config).expect("kv pools"));
    let exec = ReferenceExecutor::with_kv(model, be, pools);
    let mut caches: Vec<SequenceCache> = (0..seqs)
        .map(|_| exec.new_cache().expect("cache"))
        .collect();
    let vocab = model.spec.vocab_size as u32;
    // Prefill prompts of different lengths (3, 4, ...) in one pass.
    let mut chunks: Vec<SeqChunk<'_>> = caches
        .iter_mut()
        .enumerate()
        .map(|(s, cache)| SeqChunk {
            tokens: (0..3 + s as u32)
                .map(|i| (7 * i + 3 * s as u32 + 1) % vocab)
                .collect(),
            cache,
        })
        .collect();
    let out = exec.forward(&mut chunks, None).expect("prefill");
    let ids = be.argmax(&out).expect("argmax");
    let mut ends = Vec::new();
    let mut at = 0;
    for c in &chunks {
        at += c.tokens.len();
        ends.push(ids[at - 1]);
    }
    drop(chunks);
    let mut next = ends;
    let mut counters = Vec::new();
    for _ in 0..steps {
        let before = be.counters();
        let mut chunks: Vec<SeqChunk<'_>> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, &t)| SeqChunk {
                tokens: vec![t],
                cache,
            })
            .collect();
        let out = exec.forward(&mut chunks, None).expect("decode");
        next = if logits {
            let host = be.download(&out).expect("logits");
            (0..seqs)
                .map(|r| {
                    let row = host.row(r);
                    (0..row.len()).fold(0, |b, c| if row[c] > row[b] { c } else { b }) as u32
                })
                .collect()
        } else {
            be.argmax(&out).expect("argmax")
        };
        counters.push(be.counters().since(&before));
    }
    counters
}

fn check_budget(case: &str) {
    let model = load(case);
    let layers = model.layers.len() as u64;
    let vocab = model.spec.vocab_size as u64;
    for seqs in [1usize, 3] {
        let be = fast_interp();
        let steps = decode_steps(&model, &be, 64, seqs, 3, false);
        let s = seqs as u64;
        for (i, c) in steps.iter().enumerate().skip(1) {
            eprintln!(
                "{case}: {seqs} seq(s), decode step {i}: h2d {} B, d2h {} B, {} launches",
                c.h2d_bytes,
                c.d2h_bytes,
                c.launches.values().sum::<u64>()
            );
            assert!(
                c.h2d_bytes <= 64 * s,
                "{case}: h2d {} B for {seqs} seqs",
                c.h2d_bytes
            );
            assert_eq!(c.h2d_bytes, 4 * s, "{case}: only the token ids go in");
            assert_eq!(c.d2h_bytes, 4 * s, "{case}: only the sampled ids come out");
        }
        if seqs == 1 {
            let per_kernel: BTreeMap<_, _> = steps[2].launches.clone().into_iter().collect();
            eprintln!("{case}: launches per decode step (1 sequence): {per_kernel:?}");
        }
        let be = fast_interp();
        let with_logits = decode_steps(&model, &be, 64, seqs, 2, true);
        let c = &with_logits[1];
        assert_eq!(c.h2d_bytes, 4 * s, "{case}: logits step h2d");
        assert_eq!(c.d2h_bytes, 4 * vocab * s, "{case}: logits step d2h");
    }
    // 4-position pages: the steps that open a page upload its table entry, per layer.
    let be = fast_interp();
    let steps = decode_steps(&model, &be, 4, 2, 6, false);
    let h2d: Vec<u64> = steps.iter().map(|c| c.h2d_bytes).collect();
    eprintln!("{case}: 2 seqs, 4-token pages, h2d per step {h2d:?} ({layers} layers)");
    for (i, &b) in h2d.iter().enumerate() {
        assert!(
            b == 8 || b == 8 + 4 * layers || b == 8 + 8 * layers,
            "{case}: step {i}: {b} B (ids 8 B, a new page 4 B per layer per sequence)"
        );
    }
    assert!(h2d.iter().any(|&b| b > 8), "{case}: no step opened a page");
}

#[test]
fn decode_step_budget_mla_moe() {
    check_budget("deepseek-v3-tiny");
}

#[test]
fn decode_step_budget_gqa_moe() {
    check_budget("mixtral-tiny");
}

/// Kernel families (dtype variants of one kernel count as one) launched by whole-model forward
/// passes (a prefill, then decode steps whose logits are downloaded) over the given fixtures.
fn launched_families(cases: &[&str]) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for case in cases {
        let model = load(case);
        let be = fast_interp();
        decode_steps(&model, &be, 4, 2, 3, true);
        for (k, n) in be.counters().launches {
            *all.entry(family(&k)).or_insert(0) += n;
        }
    }
    all
}

fn family(kernel: &str) -> String {
    for suffix in ["_f32w", "_bf16w", "_f16w", "_bf16", "_f32"] {
        if let Some(base) = kernel.strip_suffix(suffix) {
            if kernel.starts_with("embedding") || suffix.ends_with('w') {
                return base.to_string();
            }
        }
    }
    kernel.to_string()
}

/// Not reached by a forward on one backend, with the reason: the opt-in bf16 tensor-core path
/// (`gemm_bf16_tc` and the activation conversion that feeds it), the FP8 kernels (until FP8
/// checkpoints load), and the index merge of a MoE layer split across executors (covered by
/// `backend_ops::grouped_mlp_and_combine_match_cpu_and_split_parts_are_bit_identical`).
const NOT_IN_A_FORWARD: &[&str] = &[
    "gemm_bf16_tc",
    "f32_to_bf16",
    "fp8_quant_act",
    "fp8_gemm_blockscaled",
    "moe_index_merge",
];

#[test]
fn whole_model_forward_launches_every_kernel() {
    let launched = launched_families(&["deepseek-v3-tiny-bf16", "llama-tiny"]);
    eprintln!("launches per kernel family: {launched:?}");
    let mut missing = Vec::new();
    for f in LIBRARY {
        for e in f.entries {
            let fam = family(e);
            if !NOT_IN_A_FORWARD.contains(e) && !launched.contains_key(&fam) {
                missing.push(fam);
            }
        }
    }
    missing.dedup();
    assert!(missing.is_empty(), "never launched: {missing:?}");
    // The MoE layers ran as grouped MLPs: one sort, gather and combine per MoE layer and pass,
    // and three grouped GEMMs (gate, up, down) each.
    let (sort, gather, combine) = (
        launched["moe_sort"],
        launched["moe_gather"],
        launched["moe_combine"],
    );
    assert!(
        sort > 0 && sort == gather && sort == combine,
        "{launched:?}"
    );
    assert!(launched["grouped_linear"] >= 3 * sort, "{launched:?}");
}
