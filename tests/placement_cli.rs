//! The command line's device, runtime and bench flags (parsed once by clap: a bad value exits 2
//! naming the flag) and hostile `[placement.link]` numbers in a graph file (a one-line error
//! naming the field, exit 2; `latency_us = 1e300` used to panic with exit 101).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn troupe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .output()
        .expect("run troupe")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 2 and an error that names `needle`.
fn assert_usage_error(args: &[&str], needle: &str) {
    let o = troupe(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

fn mini() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/graphs/ds-v3-mini.toml").to_string()
}

#[test]
fn bad_bench_numbers_are_refused_by_the_parser() {
    let m = mini();
    for (flag, value, named) in [
        ("-r", "0", "--reps"),
        ("--reps", "x", "--reps"),
        ("--seqs", "0", "--seqs"),
        ("--seqs", "-3", "--seqs"),
        ("-p", "many", "--n-prompt"),
        ("-n", "1e3", "--n-gen"),
    ] {
        assert_usage_error(&["bench", "-m", &m, flag, value], named);
    }
    assert_usage_error(&["bench", "-m", &m, "--profile", "gpu"], "--profile");
    assert_usage_error(&["bench", "-m", &m, "--runtime", "fast"], "--runtime");
    // --trace goes with --profile.
    assert_usage_error(&["bench", "-m", &m, "--trace", "t.json"], "--profile");
    // The actor bench's flags need --runtime actors.
    assert_usage_error(&["bench", "-m", &m, "--no-link"], "--runtime actors");
}

#[test]
fn device_and_runtime_are_parsed_once_by_clap() {
    let m = mini();
    for cmd in ["generate", "bench"] {
        let mut args = vec![cmd, "-m", &m, "--device", "cuda:x"];
        if cmd == "generate" {
            args.extend(["--prompt-ids", "1"]);
        }
        assert_usage_error(&args, "--device");
    }
    assert_usage_error(
        &[
            "generate",
            "-m",
            &m,
            "--prompt-ids",
            "1",
            "--runtime",
            "actor",
        ],
        "--runtime",
    );
    // A well-formed device troupe has no backend for: the error says which devices exist.
    assert_usage_error(
        &[
            "generate",
            "-m",
            &m,
            "--prompt-ids",
            "1",
            "--device",
            "npu0",
        ],
        "ptx-interp",
    );
}

/// A tiny random-weight model with `link` as its `[placement.link]` table.
fn graph_with_link(dir: &Path, link: &str) -> PathBuf {
    let text = format!(
        r#"format = 1
[model]
architecture = "deepseek-v3"
vocab_size = 64
hidden_size = 32
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 48
rms_norm_eps = 1e-6
max_position_embeddings = 64
dtype = "bf16"
bos_token_id = 0
eos_token_id = 1
[model.attention]
kind = "mla"
q_lora_rank = 16
kv_lora_rank = 16
qk_nope_head_dim = 8
qk_rope_head_dim = 4
v_head_dim = 8
[model.rope]
theta = 10000.0
layout = "interleaved"
[model.moe]
n_routed_experts = 4
num_experts_per_tok = 2
moe_intermediate_size = 16
n_shared_experts = 1
first_k_dense_replace = 1
n_group = 1
topk_group = 1
scoring = "sigmoid"
topk_method = "noaux_tc"
norm_topk_prob = true
routed_scaling_factor = 2.5
[weights]
random = {{ seed = 3, std = 0.05 }}
[placement]
nodes = 2
expert_nodes = [1]
[placement.link]
{link}
"#
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).expect("write graph");
    path
}

#[test]
fn extreme_link_numbers_are_one_line_errors_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (link, field) in [
        ("latency_us = 1e300\ngbps = 10", "link.latency_us"),
        ("latency_us = 5\ngbps = 1e-300", "link.gbps"),
        ("latency_us = nan\ngbps = 10", "link.latency_us"),
        ("latency_us = 5\ngbps = inf", "link.gbps"),
        ("latency_us = -1\ngbps = 10", "link.latency_us"),
        ("latency_us = 5\ngbps = -10", "link.gbps"),
    ] {
        let g = graph_with_link(dir.path(), link);
        let o = troupe(&[
            "generate",
            "-m",
            g.to_str().expect("utf-8 path"),
            "--prompt-ids",
            "1,2",
            "-n",
            "2",
            "--runtime",
            "actors",
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{link}: {err}");
        assert_eq!(err.lines().count(), 1, "{link}: {err}");
        assert!(err.contains(field), "{link}: {err}");
    }
    // In range, the same graph runs.
    let g = graph_with_link(dir.path(), "latency_us = 5\ngbps = 10");
    let o = troupe(&[
        "generate",
        "-m",
        g.to_str().expect("utf-8 path"),
        "--prompt-ids",
        "1,2",
        "-n",
        "2",
        "--runtime",
        "actors",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
