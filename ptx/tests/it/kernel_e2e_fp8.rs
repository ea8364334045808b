//! End to end with FP8 block-scaled checkpoints on the interpreter: the FP8 fixtures (made by
//! `troupe quantize --fp8`, referenced by transformers in f32 on the dequantised weights) through
//! `ReferenceExecutor` on `GpuBackend<InterpDevice>` with the default weight-only FP8 kernels —
//! every prompt's logits within 2e-4 · max|ref| and the greedy continuation token for token
//! (with its step logits in the same tolerance) — including the checkpoint whose dimensions are
//! not multiples of 128 (partial scale blocks). The W8A8 path is measured against the same
//! reference and its error printed (it is not expected to meet the f32 tolerance).

use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::Backend;
use troupe_engine::generate::{generate, GenerateRequest};
use troupe_engine::sampling::SamplingParams;
use troupe_ptx::{Fp8Compute, GpuBackend, InterpDevice, InterpOptions};

use crate::common::{fixture, max_abs_diff};
use crate::kernel_e2e_fixtures::{check_logits, load, Reference};

/// The interpreter without the race detector (the FP8 kernels' races are checked by the
/// kernel tests; a whole model with it on is slow).
fn fast_interp() -> GpuBackend<InterpDevice> {
    GpuBackend::new(InterpDevice::new(InterpOptions::default()))
}

/// Logits of every prompt, then the greedy continuation of every prompt (batched, 16 tokens).
fn check_fp8_case(case: &str) {
    let model = load(case);
    let be = fast_interp();
    check_logits(case, &model, &be, "");
    let before = be.counters();
    let exec = ReferenceExecutor::new(&model, &be);
    let r = Reference::open(&fixture(case));
    let mut p = 0;
    let mut reqs = Vec::new();
    while r.has(&format!("prompt.{p}.generated_ids")) {
        reqs.push(GenerateRequest {
            prompt: r.ids(&format!("prompt.{p}.input_ids")),
            max_new_tokens: r.ids(&format!("prompt.{p}.generated_ids")).len(),
            sampling: SamplingParams::default(),
            stop_token: None,
            keep_logits: true,
        });
        p += 1;
    }
    assert!(p > 0, "{case}: no greedy references");
    let outs = generate(&exec, &reqs).unwrap_or_else(|e| panic!("{case}: generate: {e}"));
    for (p, o) in outs.iter().enumerate() {
        let want = r.ids(&format!("prompt.{p}.generated_ids"));
        assert_eq!(o.generated, want, "{case} prompt {p}: greedy tokens");
        let sl = r.f32(&format!("prompt.{p}.step_logits"));
        let (d, _) = max_abs_diff(&o.step_logits.concat(), &sl);
        let tol = 2e-4 * sl.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("{case} prompt {p}: greedy step logits max|d| = {d:.3e} (tol {tol:.3e})");
        assert!(d <= tol, "{case} prompt {p}: step logits {d} > {tol}");
    }
    let launches = be.counters().since(&before).launches;
    assert!(
        launches.contains_key("linear_fp8w") || launches.contains_key("grouped_linear_fp8w"),
        "{case}: no FP8 kernel ran: {launches:?}"
    );
    assert!(!launches.contains_key("fp8_gemm_blockscaled"), "W8A8 is opt-in");
}

/// The W8A8 path: logits of `ids` against `want` (an f32-activation reference), measured and
/// printed, and bounded loosely (it rounds every activation of an FP8 linear to 3 mantissa bits).
fn measure_w8a8(case: &str, model: &troupe_engine::model::Model, ids: &[u32], want: &[f32]) {
    let be = fast_interp()
        .with_fp8_compute(Fp8Compute::W8A8)
        .expect("the interpreter is sm_89");
    let exec = ReferenceExecutor::new(model, &be);
    let got = exec.logits(ids).unwrap_or_else(|e| panic!("{case}: {e}"));
    let (d, _) = max_abs_diff(got.data(), want);
    let max_ref = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let launches = be.counters().launches;
    assert!(launches.contains_key("fp8_gemm_blockscaled"), "{launches:?}");
    eprintln!(
        "{case} under W8A8: logits max|d| = {d:.3e} = {:.2e} x max|ref| (the f32 \
         tolerance is 2e-4 x max|ref|); launches fp8_gemm_blockscaled {:?}, linear_fp8w {:?}",
        d / max_ref,
        launches.get("fp8_gemm_blockscaled"),
        launches.get("linear_fp8w"),
    );
    assert!(d <= 0.25 * max_ref, "{case}: W8A8 logits off by {d}");
}

/// The FP8 test model of hidden size 200 (partial scale blocks on every edge, FP8 attention,
/// dense MLP, shared and routed experts, MLA absorbed in decode) on the interpreter against the
/// CPU backend's FP8 kernels: prefill logits and greedy decode logits within 2e-4 · max|cpu|
/// (the two reduction orders differ only in the last bits), the same greedy tokens.
#[test]
fn fp8_model_with_partial_blocks_matches_cpu() {
    let model = crate::common::fp8::fp8_model(200);
    let cpu = troupe_engine::kernels::CpuBackend::new();
    let gpu = fast_interp();
    let reqs: Vec<GenerateRequest> = [vec![5u32, 17, 3, 250, 9, 41, 7], vec![2, 99]]
        .into_iter()
        .map(|prompt| GenerateRequest {
            prompt,
            max_new_tokens: 4,
            sampling: SamplingParams::default(),
            stop_token: None,
            keep_logits: true,
        })
        .collect();
    let run = |be: &dyn troupe_engine::Backend| {
        let exec = ReferenceExecutor::new(&model, be);
        let logits = exec.logits(&reqs[0].prompt).expect("logits");
        (logits, generate(&exec, &reqs).expect("generate"))
    };
    let (want, want_gen) = run(&cpu);
    let (got, got_gen) = run(&gpu);
    let check = |what: &str, g: &[f32], w: &[f32]| {
        let (d, i) = max_abs_diff(g, w);
        let tol = 2e-4 * w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("fp8 model (hidden 200), {what}: max|d| = {d:.3e} (tol {tol:.3e})");
        assert!(d <= tol, "{what}: max|d| {d} at {i} > {tol}");
    };
    check("prefill logits", got.data(), want.data());
    for (p, (g, w)) in got_gen.iter().zip(&want_gen).enumerate() {
        assert_eq!(g.generated, w.generated, "prompt {p}: greedy tokens");
        check("decode step logits", &g.step_logits.concat(), &w.step_logits.concat());
    }
    let launches = gpu.counters().launches;
    for k in ["linear_fp8w", "grouped_linear_fp8w"] {
        assert!(launches.contains_key(k), "{k} did not run: {launches:?}");
    }
}

/// W8A8 on the FP8 test model of hidden 256 (q_a/kv_a/dense MLP linears have k % 128 == 0):
/// its prefill logits against the CPU's f32-activation FP8 result, measured and printed.
#[test]
fn fp8_w8a8_error_on_the_fp8_model_is_measured() {
    let model = crate::common::fp8::fp8_model(256);
    let ids = [5u32, 17, 3, 250, 9, 41, 7];
    let cpu = troupe_engine::kernels::CpuBackend::new();
    let want = ReferenceExecutor::new(&model, &cpu)
        .logits(&ids)
        .expect("cpu logits");
    measure_w8a8("fp8 model (hidden 256)", &model, &ids, want.data());
}
