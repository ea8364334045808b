//! End to end with FP8 block-scaled checkpoints on the interpreter: the FP8 fixtures
//! (`deepseek-v3-tiny-fp8`, `deepseek-v3-odd-fp8`: made by the project's quantiser, referenced by
//! transformers in f32 on the dequantised weights) through
//! `ReferenceExecutor` on `GpuBackend<InterpDevice>` with the default weight-only FP8 kernels —
//! every prompt's logits within 2e-4 · max|ref| and the greedy continuation token for token
//! (with its step logits in the same tolerance) — including the checkpoint whose dimensions are
//! not multiples of 128 (partial scale blocks). The W8A8 path is measured against the same
//! reference and its error printed (it is not expected to meet the f32 tolerance).

use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::generate::{generate, GenerateRequest};
use troupe_engine::sampling::SamplingParams;
use troupe_engine::Backend;
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
            stop_at_eos: false,
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
    assert!(
        !launches.contains_key("fp8_gemm_blockscaled"),
        "W8A8 is opt-in"
    );
}

/// The W8A8 path: logits of `ids` against `want` (an f32-activation reference), measured and
/// printed: the largest difference, the mean one, and how many positions keep the reference's
/// top token. W8A8 rounds every activation of an FP8 linear to 3 mantissa bits (each linear's
/// error bound is checked in `backend_fp8`); through a whole random tiny model those errors
/// compound and flip MoE routing decisions, so only "not garbage" is asserted: finite logits
/// within max|ref| of the reference.
fn measure_w8a8(case: &str, model: &troupe_engine::model::Model, ids: &[u32], want: &[f32]) {
    let be = fast_interp()
        .with_fp8_compute(Fp8Compute::W8A8)
        .expect("the interpreter is sm_89");
    let exec = ReferenceExecutor::new(model, &be);
    let got = exec.logits(ids).unwrap_or_else(|e| panic!("{case}: {e}"));
    let (d, _) = max_abs_diff(got.data(), want);
    let max_ref = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mean = |v: &[f32]| v.iter().map(|x| f64::from(x.abs())).sum::<f64>() / v.len() as f64;
    let diffs: Vec<f32> = got.data().iter().zip(want).map(|(g, w)| g - w).collect();
    let top = |row: &[f32]| (0..row.len()).fold(0, |b, c| if row[c] > row[b] { c } else { b });
    let vocab = want.len() / ids.len();
    let same_top = (0..ids.len())
        .filter(|&p| top(got.row(p)) == top(&want[p * vocab..(p + 1) * vocab]))
        .count();
    let launches = be.counters().launches;
    assert!(
        launches.contains_key("fp8_gemm_blockscaled"),
        "{launches:?}"
    );
    eprintln!(
        "{case} under W8A8: logits max|d| = {d:.3e} = {:.2e} x max|ref| (the f32 tolerance is \
         2e-4 x max|ref|), mean|d| = {:.2e} x mean|ref|; top token kept at {same_top}/{} \
         positions; launches fp8_gemm_blockscaled {:?}, linear_fp8w {:?}",
        d / max_ref,
        mean(&diffs) / mean(want),
        ids.len(),
        launches.get("fp8_gemm_blockscaled"),
        launches.get("linear_fp8w"),
    );
    assert!(
        d.is_finite() && d < max_ref,
        "{case}: W8A8 logits off by {d}"
    );
}

#[test]
fn deepseek_v3_tiny_fp8() {
    check_fp8_case("deepseek-v3-tiny-fp8");
}

/// Hidden 200, intermediate 328, q_lora 48, kv_lora 40, moe_intermediate 36: partial scale
/// blocks on every edge.
#[test]
fn deepseek_v3_odd_fp8() {
    check_fp8_case("deepseek-v3-odd-fp8");
}

/// W8A8 on deepseek-v3-tiny-fp8 (hidden 256: q_a/kv_a/dense-MLP gate and up have k % 128 == 0)
/// against the transformers f32 reference, prompt 0: measured and printed.
#[test]
fn deepseek_v3_tiny_fp8_w8a8_error_is_measured() {
    let case = "deepseek-v3-tiny-fp8";
    let r = Reference::open(&fixture(case));
    let ids = r.ids("prompt.0.input_ids");
    measure_w8a8(case, &load(case), &ids, &r.f32("prompt.0.logits"));
}
