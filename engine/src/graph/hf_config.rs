//! Import of a Hugging Face `config.json` into a [`ModelSpec`], mirroring what transformers 5
//! does with the same file (DeepSeek-V2 never renormalises its top-k weights, as HF). Keys that
//! would change the model in a way troupe does not implement are refused by name rather than
//! ignored: `hidden_act` other than `silu`, `attention_bias`/`mlp_bias` true, a `scoring_func` or
//! `topk_method` other than the family's, `moe_layer_freq` other than 1 (see `check_supported`).
//! A `quantization_config` must describe DeepSeek's FP8 layout (`quant_method: fp8`, `fmt: e4m3`,
//! `weight_block_size: [128, 128]`, dynamic activations); the model's dtype is then `f8e4m3`.
//! Or troupe's own int8 layout (`quant_method: troupe_int8`, `weight_block_size: [1, 32]`,
//! written by `troupe quantize --int8`), whose dtype stays `torch_dtype`.

use std::path::Path;

use serde_json::Value;

use crate::dtype::DType;
use crate::error::{EngineError, Result};
use crate::files::{read_text_capped, MAX_CONFIG_BYTES};
use crate::graph::spec::*;

struct Cfg<'a> {
    v: &'a Value,
    path: &'a Path,
}

impl Cfg<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }
    fn usize_req(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            None => Err(EngineError::MissingConfigKey {
                path: self.path.into(),
                key: key.into(),
            }),
            Some(v) => self.as_usize(key, v),
        }
    }
    fn as_usize(&self, key: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| self.bad(key, format!("expected a non-negative integer, found {v}")))
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => self.as_usize(key, v),
        }
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| self.as_usize(key, v)).transpose()
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => self.as_f64(key, v),
        }
    }
    fn as_f64(&self, key: &str, v: &Value) -> Result<f64> {
        v.as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| self.bad(key, format!("expected a finite number, found {v}")))
    }
    /// A token id: a non-negative integer that fits in 32 bits (or the first of a list).
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        let v = match self.get(key) {
            Some(Value::Array(a)) => match a.first() {
                Some(first) => first,
                None => return Ok(None),
            },
            Some(v) => v,
            None => return Ok(None),
        };
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| self.bad(key, format!("expected a token id (0..2^32), found {v}")))
    }
    /// `key`, when present, must be one of `allowed` (the values troupe implements).
    fn require_str(&self, key: &str, allowed: &[&str]) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(v) => Err(self.bad(
                key,
                format!(
                    "{v} is not supported by troupe (supported: {})",
                    allowed.join(", ")
                ),
            )),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(key, format!("expected true/false, found {v}"))),
        }
    }
    fn str_opt(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }
    fn bad(&self, key: &str, message: String) -> EngineError {
        EngineError::BadConfigValue {
            path: self.path.into(),
            key: key.into(),
            message,
        }
    }
}

/// Reads and converts `config.json`.
pub fn spec_from_hf_config_file(path: &Path) -> Result<ModelSpec> {
    let text = read_text_capped(path, MAX_CONFIG_BYTES, "a config.json")?;
    let v: Value = serde_json::from_str(&text).map_err(|e| EngineError::Json {
        path: path.into(),
        message: e.to_string(),
    })?;
    spec_from_hf_config(&v, path)
}

fn architecture(c: &Cfg) -> Result<Architecture> {
    let arch = c
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str())
        .map(str::to_string);
    let by_class = match arch.as_deref() {
        Some("DeepseekV3ForCausalLM") => Some(Architecture::DeepseekV3),
        Some("DeepseekV2ForCausalLM") => Some(Architecture::DeepseekV2),
        Some("MixtralForCausalLM") => Some(Architecture::Mixtral),
        Some("LlamaForCausalLM") => Some(Architecture::Llama),
        Some(other) => return Err(EngineError::UnsupportedArchitecture(other.to_string())),
        None => None,
    };
    if let Some(a) = by_class {
        return Ok(a);
    }
    match c.str_opt("model_type") {
        Some("deepseek_v3") => Ok(Architecture::DeepseekV3),
        Some("deepseek_v2") => Ok(Architecture::DeepseekV2),
        Some("mixtral") => Ok(Architecture::Mixtral),
        Some("llama") => Ok(Architecture::Llama),
        Some(other) => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        None => Err(EngineError::MissingConfigKey {
            path: c.path.into(),
            key: "architectures".into(),
        }),
    }
}

/// Refuses keys whose value changes the model in a way troupe does not implement (each error
/// names the key). The accepted values are the ones the real DeepSeek-V3/V2, Mixtral and Llama
/// configs carry.
fn check_supported(c: &Cfg, arch: Architecture) -> Result<()> {
    c.require_str("hidden_act", &["silu"])?;
    for key in ["attention_bias", "mlp_bias"] {
        if c.bool_or(key, false)? {
            return Err(c.bad(
                key,
                "true is not supported by troupe (no bias terms)".into(),
            ));
        }
    }
    match arch {
        Architecture::DeepseekV3 => {
            c.require_str("scoring_func", &["sigmoid"])?;
            c.require_str("topk_method", &["noaux_tc"])?;
        }
        Architecture::DeepseekV2 => c.require_str("scoring_func", &["softmax"])?,
        Architecture::Mixtral | Architecture::Llama => {}
    }
    if arch.is_deepseek() {
        if let Some(v) = c.get("moe_layer_freq") {
            if v.as_u64() != Some(1) {
                return Err(c.bad(
                    "moe_layer_freq",
                    format!("{v} is not supported by troupe (supported: 1)"),
                ));
            }
        }
    }
    Ok(())
}

/// `quantization_config.quant_method` of a folder written by `troupe quantize --int8`.
pub const INT8_QUANT_METHOD: &str = "troupe_int8";

/// Whether `quantization_config` declares FP8 block-scaled weights (false when absent, or for
/// troupe's own int8 folders); any other quantisation is refused by key.
fn fp8_quantization(c: &Cfg) -> Result<bool> {
    const KEY: &str = "quantization_config";
    let Some(q) = c.get(KEY) else {
        return Ok(false);
    };
    let field = |k: &str| q.get(k).filter(|v| !v.is_null());
    let want_str = |k: &str, allowed: &str, required: bool| -> Result<()> {
        match field(k) {
            None if !required => Ok(()),
            None => Err(EngineError::MissingConfigKey {
                path: c.path.into(),
                key: format!("{KEY}.{k}"),
            }),
            Some(Value::String(s)) if s == allowed => Ok(()),
            Some(v) => Err(c.bad(
                &format!("{KEY}.{k}"),
                format!("{v} is not supported by troupe (supported: {allowed}; troupe reads DeepSeek's FP8 block-scaled checkpoints)"),
            )),
        }
    };
    if !q.is_object() {
        return Err(c.bad(KEY, format!("expected an object, found {q}")));
    }
    if field("quant_method").and_then(Value::as_str) == Some(INT8_QUANT_METHOD) {
        // `troupe quantize --int8`: the I8 tensors carry their scales; the model's dtype is
        // that of the weights left unquantised.
        let block = field("weight_block_size");
        let expected = [1, crate::weights::int8::INT8_BLOCK as u64];
        return match block.and_then(Value::as_array) {
            Some(a) if a.iter().map(Value::as_u64).eq(expected.map(Some)) => Ok(false),
            _ => Err(c.bad(
                &format!("{KEY}.weight_block_size"),
                format!(
                    "{block:?} is not supported for {INT8_QUANT_METHOD} (supported: {expected:?})"
                ),
            )),
        };
    }
    want_str("quant_method", "fp8", true)?;
    want_str("fmt", "e4m3", false)?;
    want_str("activation_scheme", "dynamic", false)?;
    let block_key = format!("{KEY}.weight_block_size");
    match field("weight_block_size") {
        None => Err(EngineError::MissingConfigKey {
            path: c.path.into(),
            key: block_key,
        }),
        Some(v)
            if v.as_array()
                .is_some_and(|a| a.len() == 2 && a.iter().all(|d| d.as_u64() == Some(128))) =>
        {
            Ok(true)
        }
        Some(v) => Err(c.bad(
            &block_key,
            format!("{v} is not supported by troupe (supported: [128, 128])"),
        )),
    }
}

/// The rope parameters: v5 `rope_parameters`, else legacy `rope_theta` + `rope_scaling`.
fn rope(c: &Cfg, arch: Architecture) -> Result<RopeSpec> {
    let params = c.get("rope_parameters").or_else(|| c.get("rope_scaling"));
    let theta = match params
        .and_then(|p| p.get("rope_theta"))
        .filter(|t| !t.is_null())
    {
        Some(t) => c.as_f64("rope_parameters.rope_theta", t)?,
        None => c.f64_or("rope_theta", 10000.0)?,
    };
    let layout = match arch {
        Architecture::DeepseekV3 => {
            if c.bool_or("rope_interleave", true)? {
                RopeLayout::Interleaved
            } else {
                RopeLayout::HalfSplit
            }
        }
        Architecture::DeepseekV2 => RopeLayout::Interleaved,
        _ => RopeLayout::HalfSplit,
    };
    let kind = params
        .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let yarn = match kind {
        "default" => None,
        "yarn" => {
            let p = params.unwrap_or(&Value::Null);
            let key = |k: &str| format!("rope_parameters.{k}");
            let num = |k: &str| -> Result<Option<f64>> {
                p.get(k)
                    .filter(|v| !v.is_null())
                    .map(|v| c.as_f64(&key(k), v))
                    .transpose()
            };
            let factor = num("factor")?.ok_or_else(|| EngineError::MissingConfigKey {
                path: c.path.into(),
                key: key("factor"),
            })?;
            let orig = match p
                .get("original_max_position_embeddings")
                .filter(|v| !v.is_null())
            {
                Some(v) => c.as_usize(&key("original_max_position_embeddings"), v)?,
                None => c.usize_req("max_position_embeddings")?,
            };
            Some(YarnSpec {
                factor,
                original_max_position_embeddings: orig,
                beta_fast: num("beta_fast")?.unwrap_or(32.0),
                beta_slow: num("beta_slow")?.unwrap_or(1.0),
                mscale: num("mscale")?.unwrap_or(1.0),
                mscale_all_dim: num("mscale_all_dim")?.unwrap_or(0.0),
                attention_factor: num("attention_factor")?,
            })
        }
        other => {
            return Err(c.bad(
                "rope_parameters.rope_type",
                format!("`{other}` is not supported (default, yarn)"),
            ));
        }
    };
    Ok(RopeSpec {
        theta,
        layout,
        yarn,
    })
}

/// Converts a parsed HF config (`path` is only for error messages).
pub fn spec_from_hf_config(v: &Value, path: &Path) -> Result<ModelSpec> {
    let c = Cfg { v, path };
    let arch = architecture(&c)?;
    check_supported(&c, arch)?;
    let heads = c.usize_req("num_attention_heads")?;
    let hidden = c.usize_req("hidden_size")?;
    let dtype = c
        .str_opt("dtype")
        .or_else(|| c.str_opt("torch_dtype"))
        .and_then(DType::parse)
        .unwrap_or(DType::F32);
    let dtype = if fp8_quantization(&c)? {
        DType::F8E4M3
    } else {
        dtype
    };
    let attention = if arch.is_deepseek() {
        AttentionSpec::Mla {
            q_lora_rank: c.usize_opt("q_lora_rank")?,
            kv_lora_rank: c.usize_req("kv_lora_rank")?,
            qk_nope_head_dim: c.usize_req("qk_nope_head_dim")?,
            qk_rope_head_dim: c.usize_req("qk_rope_head_dim")?,
            v_head_dim: c.usize_req("v_head_dim")?,
        }
    } else {
        let head_dim = match c.usize_opt("head_dim")? {
            Some(d) => d,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        AttentionSpec::Gqa {
            num_key_value_heads: c.usize_or("num_key_value_heads", heads)?,
            head_dim,
            sliding_window: if arch == Architecture::Mixtral {
                c.usize_opt("sliding_window")?
            } else {
                None
            },
        }
    };
    let moe = match arch {
        Architecture::Llama => None,
        Architecture::Mixtral => Some(MoeSpec {
            n_routed_experts: c.usize_req("num_local_experts")?,
            num_experts_per_tok: c.usize_req("num_experts_per_tok")?,
            moe_intermediate_size: c.usize_req("intermediate_size")?,
            n_shared_experts: 0,
            first_k_dense_replace: 0,
            n_group: 1,
            topk_group: 1,
            scoring: Scoring::Softmax,
            topk_method: TopkMethod::Greedy,
            norm_topk_prob: true,
            routed_scaling_factor: 1.0,
        }),
        Architecture::DeepseekV2 | Architecture::DeepseekV3 => {
            let v3 = arch == Architecture::DeepseekV3;
            let topk_method = if v3 {
                TopkMethod::NoauxTc
            } else {
                match c.str_opt("topk_method").unwrap_or("greedy") {
                    "greedy" => TopkMethod::Greedy,
                    "group_limited_greedy" => TopkMethod::GroupLimitedGreedy,
                    other => return Err(c.bad("topk_method", format!("`{other}` is not supported for DeepSeek-V2 (greedy, group_limited_greedy)"))),
                }
            };
            Some(MoeSpec {
                n_routed_experts: c.usize_req("n_routed_experts")?,
                num_experts_per_tok: c.usize_req("num_experts_per_tok")?,
                moe_intermediate_size: c.usize_req("moe_intermediate_size")?,
                n_shared_experts: c.usize_or("n_shared_experts", 0)?,
                first_k_dense_replace: c.usize_or("first_k_dense_replace", 0)?,
                n_group: c.usize_or("n_group", 1)?,
                topk_group: c.usize_or("topk_group", 1)?,
                scoring: if v3 {
                    Scoring::Sigmoid
                } else {
                    Scoring::Softmax
                },
                topk_method,
                // HF V3 honours norm_topk_prob (default true); HF V2 ignores it and never renormalises.
                norm_topk_prob: if v3 {
                    c.bool_or("norm_topk_prob", true)?
                } else {
                    false
                },
                routed_scaling_factor: c
                    .f64_or("routed_scaling_factor", if v3 { 2.5 } else { 1.0 })?,
            })
        }
    };
    let intermediate_size = match arch {
        Architecture::Mixtral => c.usize_or("intermediate_size", 0)?,
        _ => c.usize_req("intermediate_size")?,
    };
    let spec = ModelSpec {
        architecture: arch,
        vocab_size: c.usize_req("vocab_size")?,
        hidden_size: hidden,
        num_hidden_layers: c.usize_req("num_hidden_layers")?,
        num_attention_heads: heads,
        intermediate_size,
        rms_norm_eps: c.f64_or("rms_norm_eps", if arch.is_deepseek() { 1e-6 } else { 1e-5 })?,
        max_position_embeddings: c.usize_or(
            "max_position_embeddings",
            match arch {
                Architecture::DeepseekV3 => 4096,
                Architecture::DeepseekV2 => 2048,
                Architecture::Mixtral => 4096 * 32,
                Architecture::Llama => 2048,
            },
        )?,
        tie_word_embeddings: c.bool_or("tie_word_embeddings", false)?,
        dtype,
        bos_token_id: c.token_id("bos_token_id")?,
        eos_token_id: c.token_id("eos_token_id")?,
        attention,
        rope: rope(&c, arch)?,
        moe,
        num_nextn_predict_layers: c.usize_or("num_nextn_predict_layers", 0)?,
    };
    spec.validate()?;
    Ok(spec)
}
