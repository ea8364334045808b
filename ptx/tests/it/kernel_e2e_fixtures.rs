//! End to end on the interpreter: the logits of the HF reference fixtures computed by
//! `ReferenceExecutor` on `GpuBackend<InterpDevice>` (every op a PTX kernel in the interpreter,
//! race detector on), against transformers' `prompt.{i}.logits` (`..._f32compute` for the bf16
//! case, since the backend computes in f32) at the fp32 tolerance max|d| <= 2e-4 * max|ref|.
//!
//! The main cases run every prompt; the `extra/*` cases (100-160 token prompts) run their one
//! prompt. Each case is one test so the harness runs them on both cores.

use safetensors::{Dtype, SafeTensors};
use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::Model;

use troupe_ptx::{GpuBackend, InterpDevice};

use crate::common::fixture;

/// The arrays of `reference.safetensors` this test reads.
pub(crate) struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub(crate) fn open(dir: &std::path::Path) -> Self {
        let path = dir.join("reference.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Reference { bytes }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("reference.safetensors parses")
    }
    pub(crate) fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }
    pub(crate) fn ids(&self, name: &str) -> Vec<u32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|c| {
                let v = i64::from_le_bytes(c.try_into().expect("8 bytes"));
                u32::try_from(v).expect("token id fits u32")
            })
            .collect()
    }
    pub(crate) fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    }
}

fn check_case(case: &str) {
    let model = load(case);
    let suffix = if case.ends_with("bf16") {
        "_f32compute"
    } else {
        ""
    };
    check_logits(case, &model, &crate::common::interp(), suffix);
}

/// The model of fixture `case`.
pub(crate) fn load(case: &str) -> Model {
    let graph = LoadedGraph::open(&fixture(case)).unwrap_or_else(|e| panic!("{case}: open: {e}"));
    Model::load(&graph, &mut |_, _| {}).unwrap_or_else(|e| panic!("{case}: load: {e}"))
}

/// Every prompt's logits from `model` on `backend` against `prompt.{p}.logits{suffix}` of the
/// reference of fixture `case`, at max|d| <= 2e-4 * max|ref|.
pub(crate) fn check_logits(
    case: &str,
    model: &Model,
    backend: &GpuBackend<InterpDevice>,
    suffix: &str,
) {
    let exec = ReferenceExecutor::new(model, backend);
    let r = Reference::open(&fixture(case));
    let t0 = std::time::Instant::now();
    let mut p = 0;
    while r.has(&format!("prompt.{p}.input_ids")) {
        let ids = r.ids(&format!("prompt.{p}.input_ids"));
        let want = r.f32(&format!("prompt.{p}.logits{suffix}"));
        let got = exec
            .logits(&ids)
            .unwrap_or_else(|e| panic!("{case} prompt {p}: {e}"));
        assert_eq!(
            got.data().len(),
            want.len(),
            "{case} prompt {p}: logits size"
        );
        let (d, i) = crate::common::max_abs_diff(got.data(), &want);
        let max_ref = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let tol = 2e-4 * max_ref;
        eprintln!(
            "{case} prompt {p} ({} tokens): max|d| = {d:.3e} (tol {tol:.3e})",
            ids.len()
        );
        assert!(
            d <= tol,
            "{case} prompt {p}: logits max|d| {d} at {i} > {tol}"
        );
        p += 1;
    }
    assert!(p > 0, "{case}: no prompts");
    let stats = backend.device().stats();
    let instr: u64 = stats.values().map(|s| s.instructions).sum();
    let secs: f64 = stats.values().map(|s| s.time.as_secs_f64()).sum();
    eprintln!(
        "{case}: {p} prompts in {:.1}s; {:.3e} thread-instructions, {:.1} M/s in the interpreter",
        t0.elapsed().as_secs_f64(),
        instr as f64,
        instr as f64 / secs.max(1e-9) / 1e6
    );
}

#[test]
fn deepseek_v3_tiny() {
    check_case("deepseek-v3-tiny");
}
#[test]
fn deepseek_v3_tiny_bf16() {
    check_case("deepseek-v3-tiny-bf16");
}
#[test]
fn deepseek_v2_lite_tiny() {
    check_case("deepseek-v2-lite-tiny");
}
#[test]
fn mixtral_tiny() {
    check_case("mixtral-tiny");
}
#[test]
fn llama_tiny() {
    check_case("llama-tiny");
}
#[test]
fn extra_deepseek_v3_odd() {
    check_case("extra/deepseek-v3-odd");
}
#[test]
fn extra_deepseek_v2_odd() {
    check_case("extra/deepseek-v2-odd");
}
#[test]
fn extra_mixtral_odd() {
    check_case("extra/mixtral-odd");
}
#[test]
fn extra_llama_odd() {
    check_case("extra/llama-odd");
}
