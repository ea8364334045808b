//! What crosses host↔device and which kernels run, measured by the backend's own counters
//! (`Backend::counters`) on the interpreter with the reference executor:
//! - a steady-state greedy decode step moves the token ids in (4 B per sequence, within the
//!   issue's 64 B per sequence) and the sampled ids out (4 B per sequence), or the logits
//!   (4·vocab per sequence) when they are asked for; a step that opens a new KV page also uploads
//!   that page's block-table entry (4 B for all layers: the layers of a sequence share one table);
//! - a whole-model forward (prefill, then decode steps) launches every kernel of the library but
//!   the opt-in bf16 compute path (the FP8 kernels, W8A8 included, through an FP8 model), and
//!   the MoE layers run through the grouped kernels;
//! - an FP8 model (deepseek-v3-tiny-fp8) keeps the same per-step budget (its weights and scales
//!   cross once).

use std::collections::BTreeMap;
use std::sync::Arc;

use troupe_engine::device_tensor::DeviceCounters;
use troupe_engine::executor::{ReferenceExecutor, SeqChunk};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::{KvConfig, Model, SequenceCache};
use troupe_engine::Backend;
use troupe_ptx::kernels::LIBRARY;
use troupe_ptx::{Fp8Compute, GpuBackend, InterpDevice, InterpOptions};

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
/// (forward + argmax, or forward + logits download for the steps `logits` marks).
fn decode_steps(
    model: &Model,
    be: &GpuBackend<InterpDevice>,
    page_tokens: usize,
    seqs: usize,
    logits: &[bool],
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
        .map(|(s, cache)| {
            let prompt = (0..3 + s as u32)
                .map(|i| (7 * i + 3 * s as u32 + 1) % vocab)
                .collect();
            SeqChunk::prompt(prompt, cache)
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
    for &logits in logits {
        let before = be.counters();
        let mut chunks: Vec<SeqChunk<'_>> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, &t)| SeqChunk::generated(t, cache))
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

/// Two sequences (prompts of 3 and 4 tokens) decoded together over 4-position pages, so the run
/// has steps that open a page and steps that do not: step 0 (a fresh backend's first decode
/// step also uploads the absorbed-MLA matrices, once) and the page-opening steps 1 and 4 upload
/// one block-table entry (shared by all layers) for one sequence; steps 2 and 3 are the steady
/// state; step 3 downloads the logits instead of sampling on the device.
fn check_budget(case: &str) {
    let model = &load(case);
    let layers = model.layers.len() as u64;
    let vocab = model.spec.vocab_size as u64;
    let modes = [false, false, false, true, false];
    let be = fast_interp();
    let steps = decode_steps(model, &be, 4, 2, &modes);
    for (i, c) in steps.iter().enumerate() {
        eprintln!(
            "{case}: 2 sequences, decode step {i}{}: h2d {} B, d2h {} B, {} launches",
            if modes[i] { " (logits)" } else { "" },
            c.h2d_bytes,
            c.d2h_bytes,
            c.launches.values().sum::<u64>()
        );
        let out = if modes[i] { 4 * vocab * 2 } else { 4 * 2 };
        assert_eq!(
            c.d2h_bytes, out,
            "{case} step {i}: only the sampled ids (or logits) come out"
        );
    }
    for i in [2, 3] {
        assert_eq!(
            steps[i].h2d_bytes, 8,
            "{case} step {i}: only the token ids go in"
        );
    }
    for i in [1, 4] {
        assert_eq!(
            steps[i].h2d_bytes,
            8 + 4,
            "{case} step {i}: the ids and one new page's table entry ({layers} layers)"
        );
    }
    eprintln!(
        "{case}: launches per steady decode step (2 sequences): {:?}",
        steps[2].launches
    );
}

#[test]
fn decode_step_budget_mla_moe() {
    check_budget("deepseek-v3-tiny");
}

#[test]
fn decode_step_budget_gqa_moe() {
    check_budget("mixtral-tiny");
}

/// FP8 weights (1 byte each, plus their scales) are uploaded once like the others: the decode
/// steps of an FP8 model move the same bytes.
#[test]
fn decode_step_budget_fp8_mla_moe() {
    check_budget("deepseek-v3-tiny-fp8");
}

/// Kernel families (dtype variants of one kernel count as one) launched by whole-model forward
/// passes (a prefill, then decode steps whose logits are downloaded) over the given fixtures,
/// and over deepseek-v3-tiny-fp8 with W8A8 compute: its linears with `k % 128 == 0` run
/// `fp8_quant_act` + `fp8_gemm_blockscaled`, the others `linear_fp8w`, the experts
/// `grouped_linear_fp8w`.
fn launched_families(cases: &[&str]) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    let mut count = |model: &Model, be: GpuBackend<InterpDevice>| {
        decode_steps(model, &be, 4, 2, &[false, true, true]);
        for (k, n) in be.counters().launches {
            *all.entry(family(&k)).or_insert(0) += n;
        }
    };
    for case in cases {
        count(&load(case), fast_interp());
    }
    let w8a8 = fast_interp()
        .with_fp8_compute(Fp8Compute::W8A8)
        .expect("the interpreter is sm_89");
    count(&load("deepseek-v3-tiny-fp8"), w8a8);
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
/// (`gemm_bf16_tc` and the activation conversion that feeds it), and the index merge of a MoE
/// layer split across executors (covered by
/// `backend_ops::grouped_mlp_and_combine_match_cpu_and_split_parts_are_bit_identical`).
const NOT_IN_A_FORWARD: &[&str] = &["gemm_bf16_tc", "f32_to_bf16", "moe_index_merge"];

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
    // and three grouped GEMMs (gate, up, down) each, FP8 ones on the FP8 models.
    let (sort, gather, combine) = (
        launched["moe_sort"],
        launched["moe_gather"],
        launched["moe_combine"],
    );
    assert!(
        sort > 0 && sort == gather && sort == combine,
        "{launched:?}"
    );
    let grouped = launched["grouped_linear"] + launched.get("grouped_linear_fp8w").unwrap_or(&0);
    assert!(grouped >= 3 * sort, "{launched:?}");
}
