//! `config.json` import: the supported values of every family import, keys that would change the
//! model in a way troupe does not implement are refused by name, and sizes from the config are
//! validated like a graph file's.

use std::path::Path;

use serde_json::{json, Value};
use troupe_engine::graph::hf_config::{spec_from_hf_config, spec_from_hf_config_file};
use troupe_engine::EngineError;

use crate::fixtures::{fixture, sparse_file};

fn config(case: &str) -> Value {
    let text = std::fs::read_to_string(fixture(case).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn import(v: &Value) -> Result<troupe_engine::graph::ModelSpec, EngineError> {
    spec_from_hf_config(v, Path::new("config.json"))
}

fn with(case: &str, key: &str, value: Value) -> Value {
    let mut v = config(case);
    v[key] = value;
    v
}

/// The config key a `BadConfigValue` error names.
fn bad_key(v: &Value) -> String {
    match import(v) {
        Err(EngineError::BadConfigValue { key, .. }) => key,
        other => panic!("expected a BadConfigValue error, got {other:?}"),
    }
}

#[test]
fn every_fixture_config_imports() {
    for case in [
        "deepseek-v3-tiny",
        "deepseek-v3-tiny-bf16",
        "deepseek-v2-lite-tiny",
        "mixtral-tiny",
        "llama-tiny",
        "extra/deepseek-v3-odd",
        "extra/deepseek-v2-odd",
        "extra/mixtral-odd",
        "extra/llama-odd",
    ] {
        import(&config(case)).unwrap_or_else(|e| panic!("{case}: {e}"));
    }
}

#[test]
fn the_real_deepseek_values_are_accepted() {
    // Keys as the released DeepSeek-V3 and V2 configs carry them.
    let mut v3 = config("deepseek-v3-tiny");
    for (k, val) in [
        ("scoring_func", json!("sigmoid")),
        ("topk_method", json!("noaux_tc")),
        ("moe_layer_freq", json!(1)),
        ("hidden_act", json!("silu")),
        ("attention_bias", json!(false)),
    ] {
        v3[k] = val;
    }
    import(&v3).unwrap();
    let mut v2 = config("deepseek-v2-lite-tiny");
    v2["scoring_func"] = json!("softmax");
    v2["moe_layer_freq"] = json!(1);
    import(&v2).unwrap();
}

#[test]
fn unsupported_values_are_refused_naming_the_key() {
    for (case, key, value) in [
        ("llama-tiny", "hidden_act", json!("gelu")),
        ("mixtral-tiny", "hidden_act", json!("relu")),
        ("deepseek-v3-tiny", "hidden_act", json!(7)),
        ("llama-tiny", "attention_bias", json!(true)),
        ("deepseek-v2-lite-tiny", "mlp_bias", json!(true)),
        ("deepseek-v3-tiny", "scoring_func", json!("softmax")),
        ("deepseek-v3-tiny", "scoring_func", json!("bogus")),
        ("deepseek-v2-lite-tiny", "scoring_func", json!("sigmoid")),
        ("deepseek-v3-tiny", "topk_method", json!("greedy")),
        ("deepseek-v2-lite-tiny", "topk_method", json!("noaux_tc")),
        ("deepseek-v3-tiny", "moe_layer_freq", json!(2)),
        ("deepseek-v3-tiny", "bos_token_id", json!(-1)),
        ("deepseek-v3-tiny", "eos_token_id", json!("x")),
        ("deepseek-v3-tiny", "rms_norm_eps", json!("tiny")),
    ] {
        assert_eq!(
            bad_key(&with(case, key, value.clone())),
            key,
            "{case} {key}={value}"
        );
    }
}

#[test]
fn yarn_values_are_checked_not_defaulted() {
    let mut v = config("deepseek-v3-tiny");
    v["rope_parameters"]["mscale"] = json!("1.0");
    assert_eq!(bad_key(&v), "rope_parameters.mscale");
    let mut v = config("deepseek-v3-tiny");
    v["rope_parameters"]["original_max_position_embeddings"] = json!(-64);
    assert_eq!(
        bad_key(&v),
        "rope_parameters.original_max_position_embeddings"
    );
}

#[test]
fn huge_sizes_in_config_json_are_refused_naming_the_field() {
    for (key, field) in [
        ("vocab_size", "model.vocab_size"),
        ("hidden_size", "model.hidden_size"),
        ("num_hidden_layers", "model.num_hidden_layers"),
        ("n_routed_experts", "model.moe.n_routed_experts"),
        ("kv_lora_rank", "model.attention.kv_lora_rank"),
        ("moe_intermediate_size", "model.moe.moe_intermediate_size"),
    ] {
        for value in [json!(1_000_000_000u64), json!(i64::MAX)] {
            match import(&with("deepseek-v3-tiny", key, value)) {
                Err(EngineError::InvalidSpec { field: f, .. }) => assert_eq!(f, field, "{key}"),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
}

#[test]
fn special_token_ids_beyond_the_vocabulary_are_refused() {
    match import(&with("deepseek-v3-tiny", "bos_token_id", json!(5000))) {
        Err(EngineError::InvalidSpec { field, .. }) => assert_eq!(field, "model.bos_token_id"),
        other => panic!("{other:?}"),
    }
    match import(&with("llama-tiny", "eos_token_id", json!([5000, 1]))) {
        Err(EngineError::InvalidSpec { field, .. }) => assert_eq!(field, "model.eos_token_id"),
        other => panic!("{other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn config_json_that_is_a_device_is_refused_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::os::unix::fs::symlink("/dev/zero", &cfg).unwrap();
    let e = spec_from_hf_config_file(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("not a regular file"),
        "{e}"
    );
}

#[test]
fn oversized_config_json_is_refused_with_the_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sparse_file(
        dir.path(),
        "config.json",
        troupe_engine::files::MAX_CONFIG_BYTES + 1,
    );
    let e = spec_from_hf_config_file(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("larger than") && e.contains("config.json"),
        "{e}"
    );
}
