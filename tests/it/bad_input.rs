//! Bad input gets one clear line on stderr naming the culprit and exit code 2 — never a panic.
//! Each case runs the real `troupe` binary on a broken copy of a fixture.

use std::path::{Path, PathBuf};

use crate::common::{self, troupe};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// Asserts a clean failure whose message contains every `needle`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let (code, _, err) = troupe(args);
    assert_eq!(code, 2, "exit code for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected for {args:?}: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr for {args:?} lacks `{n}`: {err}");
    }
}

/// A copy of the llama-tiny fixture whose checkpoint is rewritten by `edit`.
fn broken_copy(edit: impl FnOnce(Vec<Entry>) -> Vec<Entry>) -> tempfile::TempDir {
    let src = common::case_dir("llama-tiny");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let tensors = edit(tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

/// The bundled ds-v3-mini graph file, as text to break.
fn mini_graph_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/graphs/ds-v3-mini.toml"
    ))
    .unwrap()
}

/// One checkpoint entry: (name, dtype, shape, bytes).
type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Applies `edit` to the entry called `name`.
fn edit_tensor(tensors: Vec<Entry>, name: &str, edit: impl Fn(&mut Entry)) -> Vec<Entry> {
    tensors
        .into_iter()
        .map(|mut x| {
            if x.0 == name {
                edit(&mut x);
            }
            x
        })
        .collect()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    f
}

const IDS: &[&str] = &["--prompt-ids", "0,5,9", "-n", "2"];

#[test]
fn malformed_toml() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "g.toml",
        "format = 1\n[model\narchitecture = 'llama'\n",
    );
    fails_with(&["inspect", &p(&f)], &["g.toml", "invalid graph file"]);
}

#[test]
fn unknown_field_in_graph_file() {
    let d = tempfile::tempdir().unwrap();
    let text = mini_graph_text();
    let f = write(
        d.path(),
        "g.toml",
        &text.replace("hidden_size = 1024", "hidden_size = 1024\nhiden_layers = 3"),
    );
    fails_with(&["inspect", &p(&f)], &["hiden_layers", "unknown field"]);
}

#[test]
fn unknown_architecture() {
    let d = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(common::case_dir("llama-tiny").join("config.json")).unwrap();
    write(
        d.path(),
        "config.json",
        &cfg.replace("LlamaForCausalLM", "GPTNeoXForCausalLM"),
    );
    fails_with(
        &["inspect", &p(d.path())],
        &["GPTNeoXForCausalLM", "unsupported architecture"],
    );
    let text = mini_graph_text();
    let f = write(
        d.path(),
        "g.toml",
        &text.replace("architecture = \"deepseek-v3\"", "architecture = \"gpt2\""),
    );
    fails_with(&["inspect", &p(&f)], &["gpt2"]);
}

#[test]
fn missing_config_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg =
        std::fs::read_to_string(common::case_dir("deepseek-v3-tiny").join("config.json")).unwrap();
    write(
        d.path(),
        "config.json",
        &cfg.replace("\"kv_lora_rank\": 32,", ""),
    );
    fails_with(&["inspect", &p(d.path())], &["config.json", "kv_lora_rank"]);
}

#[test]
fn tensor_missing_from_checkpoint() {
    let d = broken_copy(|t| {
        t.into_iter()
            .filter(|x| x.0 != "model.layers.1.self_attn.k_proj.weight")
            .collect()
    });
    fails_with(
        &["generate", "-m", &p(d.path()), IDS[0], IDS[1]],
        &["model.layers.1.self_attn.k_proj.weight", "missing"],
    );
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let d = broken_copy(|t| {
        edit_tensor(t, "model.layers.0.mlp.up_proj.weight", |x| {
            x.2 = vec![x.2[1], x.2[0]]
        })
    });
    fails_with(
        &["generate", "-m", &p(d.path()), IDS[0], IDS[1]],
        &[
            "model.layers.0.mlp.up_proj.weight",
            "expected shape [352, 128]",
            "found [128, 352]",
        ],
    );
}

#[test]
fn truncated_safetensors() {
    let d = broken_copy(|t| t);
    let f = d.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["generate", "-m", &p(d.path()), IDS[0], IDS[1]],
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn unsupported_dtype() {
    let d = broken_copy(|t| edit_tensor(t, "model.norm.weight", |x| x.1 = Dtype::I32));
    fails_with(
        &["generate", "-m", &p(d.path()), IDS[0], IDS[1]],
        &["model.norm.weight", "unsupported dtype", "I32"],
    );
}

#[test]
fn prompt_id_out_of_vocab() {
    let m = p(&common::case_dir("llama-tiny"));
    fails_with(
        &["generate", "-m", &m, "--prompt-ids", "0,1024"],
        &["1024", "vocab size 1024"],
    );
    fails_with(
        &[
            "logits",
            "-m",
            &m,
            "--prompt-ids",
            "0,-3",
            "--out",
            "/tmp/x.safetensors",
        ],
        &["-3"],
    );
}

#[test]
fn prompt_longer_than_position_limit() {
    let m = p(&common::case_dir("llama-tiny"));
    let ids: Vec<String> = (0..257).map(|i| (i % 1000).to_string()).collect();
    fails_with(
        &[
            "logits",
            "-m",
            &m,
            "--prompt-ids",
            &ids.join(","),
            "--out",
            "/tmp/never.safetensors",
        ],
        &["257", "position limit of 256"],
    );
    fails_with(
        &["generate", "-m", &m, "--prompt-ids", "0,1,2", "-n", "300"],
        &["position limit of 256"],
    );
}

#[test]
fn empty_prompt() {
    let m = p(&common::case_dir("llama-tiny"));
    fails_with(
        &["generate", "-m", &m, "--prompt-ids", ""],
        &["empty prompt"],
    );
    fails_with(
        &["generate", "-m", &m, "--prompt", "", "--no-bos"],
        &["empty prompt"],
    );
}

#[test]
fn missing_model_path() {
    fails_with(
        &["inspect", "/nonexistent/model.toml"],
        &["/nonexistent/model.toml"],
    );
}
