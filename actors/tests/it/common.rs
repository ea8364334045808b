//! Shared helpers for the actor-runtime tests: fixture loading, prompts, the reference oracle.
#![allow(dead_code)]

use std::sync::Arc;

use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::generate::{generate, GenerateOutput, GenerateRequest};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::Model;
use troupe_engine::sampling::SamplingParams;

pub fn fixture(case: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(case)
}

pub fn load(case: &str) -> (LoadedGraph, Arc<Model>) {
    let g = LoadedGraph::open(&fixture(case)).expect("open fixture");
    let m = Model::load(&g, &mut |_, _| {}).expect("load fixture");
    (g, Arc::new(m))
}

/// The fixture's prompts (`prompt.{i}.input_ids`).
pub fn prompts(case: &str) -> Vec<Vec<u32>> {
    let bytes =
        std::fs::read(fixture(case).join("reference.safetensors")).expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse reference");
    let mut out = Vec::new();
    for i in 0.. {
        let Ok(t) = st.tensor(&format!("prompt.{i}.input_ids")) else {
            break;
        };
        out.push(
            t.data()
                .chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                .collect(),
        );
    }
    out
}

pub fn request(prompt: Vec<u32>, n: usize, seed: Option<u64>) -> GenerateRequest {
    let sampling = match seed {
        Some(seed) => SamplingParams {
            temperature: Some(0.8),
            top_k: Some(20),
            top_p: Some(0.95),
            seed,
        },
        None => SamplingParams::default(),
    };
    GenerateRequest {
        prompt,
        max_new_tokens: n,
        sampling,
        stop_token: None,
        stop_at_eos: false,
        keep_logits: true,
    }
}

pub fn reference(model: &Model, reqs: &[GenerateRequest]) -> Vec<GenerateOutput> {
    let be = CpuBackend::new();
    generate(&ReferenceExecutor::new(model, &be), reqs).expect("reference generate")
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Asserts the runtime's cache-free logits for `prompt` are the reference executor's bits.
pub fn assert_logits_match_reference(
    rt: &troupe_actors::ActorRuntime,
    model: &Model,
    prompt: &[u32],
    what: &str,
) {
    let logits = rt.logits(prompt).expect("logits");
    let be = CpuBackend::new();
    let want = ReferenceExecutor::new(model, &be).logits(prompt).unwrap();
    assert!(
        bits(logits.data()) == bits(want.data()),
        "{what}: logits differ"
    );
}

/// Asserts tokens and every logits row are bit-identical.
pub fn assert_same(got: &[GenerateOutput], want: &[GenerateOutput], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: request count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.generated, w.generated, "{what}: request {i} tokens");
        assert_eq!(
            g.step_logits.len(),
            w.step_logits.len(),
            "{what}: request {i} logits rows"
        );
        for (j, (a, b)) in g.step_logits.iter().zip(&w.step_logits).enumerate() {
            assert!(
                bits(a) == bits(b),
                "{what}: request {i} step {j} logits differ"
            );
        }
    }
}

/// A runtime config with injected `faults` (a `TROUPE_FAULT`-style spec) and a supervision budget
/// of `max_restarts` in 60 s with a hang deadline of `deadline`.
pub fn fault_config(
    faults: &str,
    schedule: &str,
    stages: Option<usize>,
    max_restarts: usize,
    deadline: std::time::Duration,
) -> troupe_actors::RuntimeConfig {
    troupe_actors::RuntimeConfig {
        options: troupe_actors::RuntimeOptions {
            schedule: Some(schedule.into()),
            stages,
            ..Default::default()
        },
        faults: Some(troupe_actors::FaultPlan::parse(faults).expect("fault spec")),
        supervision: Some(troupe_actors::SupervisionSpec {
            max_restarts,
            window: std::time::Duration::from_secs(60),
            deadline,
        }),
        ..Default::default()
    }
}

/// One greedy request of `n` new tokens per prompt of a fixture case.
pub fn greedy_requests(case: &str, n: usize) -> Vec<GenerateRequest> {
    prompts(case)
        .into_iter()
        .map(|p| request(p, n, None))
        .collect()
}
