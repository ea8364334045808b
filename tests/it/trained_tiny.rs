//! The bundled trained model, `tests/fixtures/fortune-tiny` (bf16 DeepSeek-V3 architecture with
//! an MTP module, made by `tests/tools/train_tiny.py`), against the transformers reference stored
//! beside it. troupe upcasts bf16 weights and computes in f32, so it is held to the
//! `*_f32compute` arrays at the fixtures' fp32 tolerance (`max|Δ| <= 2e-4·max|ref|`, greedy
//! tokens exact; tests/fixtures/README.md): through the library's reference executor, the CLI on
//! the actor runtime, the CLI's text path (tokenizer + BOS), and a short run on `--device
//! ptx-interp`. It also checks that the MTP module is stored where DeepSeek-V3 stores it.

use safetensors::tensor::SafeTensors;
use troupe::engine::executor::ReferenceExecutor;
use troupe::engine::generate::{generate, GenerateRequest};
use troupe::engine::graph::LoadedGraph;
use troupe::engine::kernels::CpuBackend;
use troupe::engine::sampling::SamplingParams;

use crate::common::*;

const CASE: &str = "fortune-tiny";
/// Greedy tokens per prompt in the reference.
const N_NEW: usize = 16;

fn dir() -> String {
    case_dir(CASE).display().to_string()
}

/// The case's `reference.json`.
fn reference_json() -> serde_json::Value {
    let path = case_dir(CASE).join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reference.json")).expect("JSON")
}

/// The reference prompts' ids, from `reference.safetensors`.
fn prompts(r: &Reference) -> Vec<Vec<u32>> {
    let n = reference_json()["prompts"]
        .as_array()
        .map_or(0, |a| a.len());
    (0..n)
        .map(|p| r.ids(&format!("prompt.{p}.input_ids")))
        .collect()
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Asserts the fp32 tolerance of the fixtures.
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    let d = max_abs_diff(got, want);
    let tol = 2e-4 * max_abs(want);
    eprintln!("{CASE} {what}: max|Δ| = {d:.3e} (tol {tol:.3e})");
    assert!(d <= tol, "{CASE} {what}: max|Δ| {d} > {tol}");
}

/// The `generated_ids` of the JSON line `troupe generate --json` ends stdout with.
fn json_ids(stdout: &str, key: &str) -> Vec<u32> {
    let line = stdout.trim_end().lines().last().expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {line}"))
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// `troupe logits` for `ids` with extra flags: the F32 `[T, V]` values it wrote.
fn cli_logits(ids: &[u32], flags: &[&str]) -> Vec<f32> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("logits.safetensors");
    let (m, ids, out_s) = (dir(), ids_arg(ids), out.display().to_string());
    let args = [
        &["logits", "-m", &m, "--prompt-ids", &ids, "--out", &out_s][..],
        flags,
    ]
    .concat();
    let (code, _, err) = troupe(&args);
    assert_eq!(code, 0, "{args:?}: {err}");
    let bytes = std::fs::read(&out).expect("logits file");
    let st = SafeTensors::deserialize(&bytes).expect("logits safetensors");
    f32_le(st.tensor("logits").expect("logits tensor").data())
}

/// `troupe generate --json` of `ids` for `n` tokens with extra flags: the generated ids.
fn cli_generate(ids: &[u32], n: usize, flags: &[&str]) -> Vec<u32> {
    let (m, ids, n) = (dir(), ids_arg(ids), n.to_string());
    let args = [
        &[
            "generate",
            "-m",
            &m,
            "--prompt-ids",
            &ids,
            "-n",
            &n,
            "--json",
        ][..],
        flags,
    ]
    .concat();
    let (code, out, err) = troupe(&args);
    assert_eq!(code, 0, "{args:?}: {err}");
    json_ids(&out, "generated_ids")
}

#[test]
fn the_mtp_module_is_stored_as_deepseek_v3_stores_it() {
    let g = LoadedGraph::open(&case_dir(CASE)).expect("open fortune-tiny");
    assert_eq!(g.spec.num_nextn_predict_layers, 1);
    let l = g.spec.num_hidden_layers;
    let bytes = std::fs::read(case_dir(CASE).join("model.safetensors")).expect("checkpoint");
    let st = SafeTensors::deserialize(&bytes).expect("checkpoint header");
    for name in [
        "enorm.weight",
        "hnorm.weight",
        "eh_proj.weight",
        "shared_head.norm.weight",
        "self_attn.kv_a_proj_with_mqa.weight",
        "mlp.gate.weight",
        "mlp.gate.e_score_correction_bias",
        "mlp.experts.0.down_proj.weight",
        "mlp.shared_experts.up_proj.weight",
    ] {
        let full = format!("model.layers.{l}.{name}");
        assert!(st.tensor(&full).is_ok(), "missing {full}");
    }
    let h = g.spec.hidden_size;
    let eh = st
        .tensor(&format!("model.layers.{l}.eh_proj.weight"))
        .expect("eh_proj");
    assert_eq!(eh.shape(), &[h, 2 * h][..], "eh_proj maps [emb; h] to h");
}

#[test]
fn reference_executor_matches_transformers_logits_and_greedy_tokens() {
    let model = load_model(&case_dir(CASE));
    let backend = CpuBackend::new();
    let exec = ReferenceExecutor::new(&model, &backend);
    let r = Reference::open(CASE);
    let ps = prompts(&r);
    assert_eq!(ps.len(), 3, "three reference prompts");
    for (p, ids) in ps.iter().enumerate() {
        let (_, want) = r.f32(&format!("prompt.{p}.logits_f32compute"));
        let got = exec.logits(ids).expect("logits");
        assert_close(&format!("prompt {p} logits"), got.data(), &want);
    }
    let reqs: Vec<GenerateRequest> = ps
        .iter()
        .map(|ids| GenerateRequest {
            prompt: ids.clone(),
            max_new_tokens: N_NEW,
            sampling: SamplingParams::default(),
            stop_token: None,
            stop_at_eos: false,
            keep_logits: true,
        })
        .collect();
    for (p, o) in generate(&exec, &reqs).expect("generate").iter().enumerate() {
        let want = r.ids(&format!("prompt.{p}.generated_ids_f32compute"));
        assert_eq!(o.generated, want, "prompt {p}: greedy tokens");
        let (_, steps) = r.f32(&format!("prompt.{p}.step_logits_f32compute"));
        assert_close(
            &format!("prompt {p} step logits"),
            &o.step_logits.concat(),
            &steps,
        );
    }
}

#[test]
fn actor_runtime_matches_transformers_through_the_cli() {
    let r = Reference::open(CASE);
    for (p, ids) in prompts(&r).iter().enumerate() {
        let got = cli_logits(ids, &["--runtime", "actors"]);
        let (_, want) = r.f32(&format!("prompt.{p}.logits_f32compute"));
        assert_close(&format!("actors prompt {p} logits"), &got, &want);
        let want = r.ids(&format!("prompt.{p}.generated_ids_f32compute"));
        let got = cli_generate(ids, N_NEW, &["--runtime", "actors"]);
        assert_eq!(got, want, "actors prompt {p}");
    }
}

/// The README's first command: text in, BOS prepended, the same ids and tokens as transformers.
#[test]
fn the_cli_text_path_tokenizes_and_generates_like_transformers() {
    let r = Reference::open(CASE);
    let m = dir();
    for (p, ids) in prompts(&r).iter().enumerate() {
        let text = reference_json()["prompts"][p]["text"]
            .as_str()
            .expect("prompt text")
            .to_string();
        let n = N_NEW.to_string();
        let args = ["generate", "-m", &m, "--prompt", &text, "-n", &n, "--json"];
        let (code, out, err) = troupe(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(&json_ids(&out, "prompt_ids"), ids, "prompt {p}: tokenizer");
        let want = r.ids(&format!("prompt.{p}.generated_ids_f32compute"));
        assert_eq!(json_ids(&out, "generated_ids"), want, "prompt {p}: tokens");
    }
}

/// Kept short (the interpreter is slow): the shortest prompt's logits and three greedy tokens.
#[test]
fn ptx_interpreter_matches_transformers_on_a_short_prompt() {
    let r = Reference::open(CASE);
    let ids = &prompts(&r)[0];
    let got = cli_logits(ids, &["--device", "ptx-interp"]);
    let (_, want) = r.f32("prompt.0.logits_f32compute");
    assert_close("ptx-interp prompt 0 logits", &got, &want);
    let want = r.ids("prompt.0.generated_ids_f32compute");
    for runtime in ["reference", "actors"] {
        let flags = ["--device", "ptx-interp", "--runtime", runtime];
        let got = cli_generate(ids, 3, &flags);
        assert_eq!(got, want[..3], "ptx-interp {runtime}");
    }
}
