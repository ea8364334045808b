//! The `config.json` of an exported model: a [`ModelSpec`] written with Hugging Face's keys for
//! its family, plus the keys other engines need to run it the same way (`scoring_func` and
//! `topk_method` for DeepSeek-V3: llama.cpp's converter falls back to softmax routing without
//! them). [`hf_config`] reads its own output back through troupe's importer and refuses a spec
//! that would not survive the trip, so an exported folder always describes the graph exactly.

use std::path::Path;

use serde_json::{json, Map, Value};
use troupe_engine::dtype::DType;
use troupe_engine::graph::hf_config::spec_from_hf_config;
use troupe_engine::graph::spec::{
    Architecture, AttentionSpec, ModelSpec, RopeLayout, Scoring, TopkMethod,
};

/// The HF name of a dtype (`torch_dtype` / `dtype`), for the dtypes random weights come in.
fn torch_dtype(d: DType) -> Result<&'static str, String> {
    match d.to_string().as_str() {
        "f32" => Ok("float32"),
        "bf16" => Ok("bfloat16"),
        "f16" => Ok("float16"),
        other => Err(format!("export-hf does not write {other} models")),
    }
}

fn model_type(a: Architecture) -> &'static str {
    match a {
        Architecture::DeepseekV3 => "deepseek_v3",
        Architecture::DeepseekV2 => "deepseek_v2",
        Architecture::Mixtral => "mixtral",
        Architecture::Llama => "llama",
    }
}

/// `rope_theta` and `rope_scaling` (null, or the YaRN parameters with both spellings of the type).
fn rope_keys(spec: &ModelSpec, c: &mut Map<String, Value>) {
    c.insert("rope_theta".into(), json!(spec.rope.theta));
    let scaling = match &spec.rope.yarn {
        None => Value::Null,
        Some(y) => {
            let mut s = json!({
                "type": "yarn",
                "rope_type": "yarn",
                "factor": y.factor,
                "original_max_position_embeddings": y.original_max_position_embeddings,
                "beta_fast": y.beta_fast,
                "beta_slow": y.beta_slow,
                "mscale": y.mscale,
                "mscale_all_dim": y.mscale_all_dim,
            });
            if let (Some(f), Some(o)) = (y.attention_factor, s.as_object_mut()) {
                o.insert("attention_factor".into(), json!(f));
            }
            s
        }
    };
    c.insert("rope_scaling".into(), scaling);
}

/// The family-specific keys of a DeepSeek (MLA + MoE) model.
fn deepseek_keys(spec: &ModelSpec, c: &mut Map<String, Value>) -> Result<(), String> {
    let AttentionSpec::Mla {
        q_lora_rank,
        kv_lora_rank,
        qk_nope_head_dim,
        qk_rope_head_dim,
        v_head_dim,
    } = &spec.attention
    else {
        return Err("a DeepSeek model needs MLA attention".into());
    };
    c.insert("q_lora_rank".into(), json!(q_lora_rank));
    c.insert("kv_lora_rank".into(), json!(kv_lora_rank));
    c.insert("qk_nope_head_dim".into(), json!(qk_nope_head_dim));
    c.insert("qk_rope_head_dim".into(), json!(qk_rope_head_dim));
    c.insert(
        "qk_head_dim".into(),
        json!(qk_nope_head_dim + qk_rope_head_dim),
    );
    c.insert("head_dim".into(), json!(qk_rope_head_dim));
    c.insert("v_head_dim".into(), json!(v_head_dim));
    c.insert(
        "num_key_value_heads".into(),
        json!(spec.num_attention_heads),
    );
    let Some(m) = &spec.moe else {
        return Err("a DeepSeek model needs a [model.moe] table".into());
    };
    c.insert("n_routed_experts".into(), json!(m.n_routed_experts));
    c.insert("num_experts_per_tok".into(), json!(m.num_experts_per_tok));
    c.insert(
        "moe_intermediate_size".into(),
        json!(m.moe_intermediate_size),
    );
    c.insert("n_shared_experts".into(), json!(m.n_shared_experts));
    c.insert(
        "first_k_dense_replace".into(),
        json!(m.first_k_dense_replace),
    );
    c.insert("moe_layer_freq".into(), json!(1));
    c.insert("n_group".into(), json!(m.n_group));
    c.insert("topk_group".into(), json!(m.topk_group));
    c.insert("norm_topk_prob".into(), json!(m.norm_topk_prob));
    c.insert(
        "routed_scaling_factor".into(),
        json!(m.routed_scaling_factor),
    );
    c.insert(
        "scoring_func".into(),
        json!(match m.scoring {
            Scoring::Sigmoid => "sigmoid",
            Scoring::Softmax => "softmax",
        }),
    );
    c.insert(
        "topk_method".into(),
        json!(match m.topk_method {
            TopkMethod::Greedy => "greedy",
            TopkMethod::GroupLimitedGreedy => "group_limited_greedy",
            TopkMethod::NoauxTc => "noaux_tc",
        }),
    );
    c.insert("ep_size".into(), json!(1));
    // The MTP module is never exported (troupe never runs it).
    c.insert("num_nextn_predict_layers".into(), json!(0));
    if spec.architecture == Architecture::DeepseekV3 {
        c.insert(
            "rope_interleave".into(),
            json!(spec.rope.layout == RopeLayout::Interleaved),
        );
    }
    Ok(())
}

/// The family-specific keys of a grouped-query-attention model (Llama, Mixtral).
fn gqa_keys(spec: &ModelSpec, c: &mut Map<String, Value>) -> Result<(), String> {
    let AttentionSpec::Gqa {
        num_key_value_heads,
        head_dim,
        sliding_window,
    } = &spec.attention
    else {
        return Err("a Llama or Mixtral model needs GQA attention".into());
    };
    c.insert("num_key_value_heads".into(), json!(num_key_value_heads));
    c.insert("head_dim".into(), json!(head_dim));
    if spec.architecture == Architecture::Mixtral {
        c.insert("sliding_window".into(), json!(sliding_window));
        let Some(m) = &spec.moe else {
            return Err("a Mixtral model needs a [model.moe] table".into());
        };
        c.insert("num_local_experts".into(), json!(m.n_routed_experts));
        c.insert("num_experts_per_tok".into(), json!(m.num_experts_per_tok));
        // Mixtral's experts use `intermediate_size`.
        c.insert("intermediate_size".into(), json!(m.moe_intermediate_size));
    }
    Ok(())
}

/// `config.json` for `spec`; `origin` names the graph in errors. Fails when the HF config of the
/// family cannot express the spec (e.g. a Llama with interleaved rope), naming what differs.
pub fn hf_config(spec: &ModelSpec, origin: &Path) -> Result<Value, String> {
    let mut c = Map::new();
    c.insert(
        "architectures".into(),
        json!([spec.architecture.hf_class()]),
    );
    c.insert("model_type".into(), json!(model_type(spec.architecture)));
    c.insert("vocab_size".into(), json!(spec.vocab_size));
    c.insert("hidden_size".into(), json!(spec.hidden_size));
    c.insert("intermediate_size".into(), json!(spec.intermediate_size));
    c.insert("num_hidden_layers".into(), json!(spec.num_hidden_layers));
    c.insert(
        "num_attention_heads".into(),
        json!(spec.num_attention_heads),
    );
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("attention_bias".into(), json!(false));
    c.insert("mlp_bias".into(), json!(false));
    c.insert("attention_dropout".into(), json!(0.0));
    c.insert("rms_norm_eps".into(), json!(spec.rms_norm_eps));
    c.insert(
        "max_position_embeddings".into(),
        json!(spec.max_position_embeddings),
    );
    c.insert(
        "tie_word_embeddings".into(),
        json!(spec.tie_word_embeddings),
    );
    let dtype = torch_dtype(spec.dtype)?;
    c.insert("torch_dtype".into(), json!(dtype));
    c.insert("dtype".into(), json!(dtype));
    c.insert("bos_token_id".into(), json!(spec.bos_token_id));
    c.insert("eos_token_id".into(), json!(spec.eos_token_id));
    c.insert("use_cache".into(), json!(true));
    rope_keys(spec, &mut c);
    if spec.architecture.is_deepseek() {
        deepseek_keys(spec, &mut c)?;
    } else {
        gqa_keys(spec, &mut c)?;
    }
    let config = Value::Object(c);
    let back = spec_from_hf_config(&config, origin)
        .map_err(|e| format!("the exported config.json does not read back: {e}"))?;
    if &back != spec {
        return Err(format!(
            "an HF {} config cannot express this graph exactly (it would read back as {back:?})",
            spec.architecture.hf_class()
        ));
    }
    Ok(config)
}
