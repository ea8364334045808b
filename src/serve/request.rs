//! Request bodies: the raw bytes → a JSON object → the typed fields of `/v1/completions` and
//! `/v1/chat/completions`, each checked with the field named in the 400 it gets. Unknown
//! fields are ignored (as OpenAI's clients send extras); `n` other than 1 is refused. Two
//! extensions, named as vLLM names them: `return_token_ids`, `ignore_eos`.

use serde_json::{Map, Value};
use troupe_engine::sampling::SamplingParams;

use super::error::ApiError;

/// The most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// The longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// The highest temperature taken (OpenAI's range is [0, 2]).
pub const MAX_TEMPERATURE: f64 = 2.0;
/// Completions' `max_tokens` when a request gives none (OpenAI's default).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// A prompt as a request gives it.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// One chat message (content flattened to text).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What both endpoints share.
#[derive(Clone, Debug, PartialEq)]
pub struct Common {
    pub model: String,
    /// `None`: the endpoint's default.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Extension (as vLLM's): the generated token ids in each choice / chunk.
    pub return_token_ids: bool,
    /// Extension (as vLLM's): do not stop at the model's EOS (fixed-length runs, benchmarks).
    pub ignore_eos: bool,
}

/// The body as a JSON object (bad UTF-8, bad JSON or another JSON value: 400).
pub fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::bad_json(format!(
            "the body must be a JSON object, not {}",
            type_name(&other)
        ))),
        Err(e) => Err(ApiError::bad_json(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        field,
        format!("`{field}` must be {expected}, not {}", type_name(got)),
    )
}

/// A field that is absent or `null` is `None`.
fn field<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name).filter(|v| !v.is_null())
}

fn opt_bool(m: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong(name, "a boolean", v)),
    }
}

fn opt_f64(m: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, format!("`{name}` {n} is not a finite number"))),
        Some(v) => Err(wrong(name, "a number", v)),
    }
}

/// A whole number (`3` or `3.0`) as i128, so any JSON integer fits before its range check.
fn opt_int(m: &Map<String, Value>, name: &str) -> Result<Option<i128>, ApiError> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i as i128))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(u as i128))
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e30 => Ok(Some(f as i128)),
                    _ => Err(ApiError::invalid(
                        name,
                        format!("`{name}` must be a whole number, not {n}"),
                    )),
                }
            }
        }
        Some(v) => Err(wrong(name, "an integer", v)),
    }
}

fn in_range(name: &str, v: i128, lo: i128, hi: i128) -> Result<i128, ApiError> {
    if v < lo || v > hi {
        return Err(ApiError::invalid(
            name,
            format!("`{name}` {v} is out of range [{lo}, {hi}]"),
        ));
    }
    Ok(v)
}

/// `model`, required, a string (checked first: an unknown model is a 404 whatever else is
/// wrong).
pub fn model(m: &Map<String, Value>) -> Result<String, ApiError> {
    match m.get("model") {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(ApiError::invalid("model", "`model` is required")),
        Some(v) => Err(wrong("model", "a string", v)),
    }
}

/// The fields both endpoints share; `max_tokens_names` lists the names of the token budget
/// (chat also takes `max_completion_tokens`), `context` bounds it.
pub fn common(
    m: &Map<String, Value>,
    max_tokens_names: &[&str],
    context: usize,
) -> Result<Common, ApiError> {
    let model = model(m)?;
    if let Some(n) = opt_int(m, "n")? {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("`n` {n}: this server returns one choice per request (n = 1)"),
            ));
        }
    }
    let mut max_tokens = None;
    for name in max_tokens_names {
        if let Some(v) = opt_int(m, name)? {
            max_tokens = Some(in_range(name, v, 1, context as i128)? as usize);
        }
    }
    let temperature = match opt_f64(m, "temperature")? {
        Some(t) if !(0.0..=MAX_TEMPERATURE).contains(&t) => {
            return Err(ApiError::invalid(
                "temperature",
                format!("`temperature` {t} is out of range [0, {MAX_TEMPERATURE}]"),
            ))
        }
        Some(t) => t,
        None => 1.0,
    };
    let top_p = match opt_f64(m, "top_p")? {
        Some(p) if !(p > 0.0 && p <= 1.0) => {
            return Err(ApiError::invalid(
                "top_p",
                format!("`top_p` {p} must be in (0, 1]"),
            ))
        }
        Some(p) if p < 1.0 => Some(p as f32),
        _ => None,
    };
    let top_k = opt_int(m, "top_k")?
        .map(|k| in_range("top_k", k, 1, u32::MAX as i128))
        .transpose()?
        .map(|k| k as usize);
    let seed = match opt_int(m, "seed")? {
        Some(s) => in_range("seed", s, i64::MIN as i128, u64::MAX as i128)? as u64,
        None => random_seed(),
    };
    let stream = opt_bool(m, "stream")?.unwrap_or(false);
    let include_usage = match field(m, "stream_options") {
        None => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|e| ApiError::invalid("stream_options.include_usage", e.message))?
            .unwrap_or(false),
        Some(v) => return Err(wrong("stream_options", "an object", v)),
    };
    Ok(Common {
        model,
        max_tokens,
        sampling: SamplingParams {
            temperature: Some(temperature as f32),
            top_k,
            top_p,
            seed,
        },
        stop: stop_strings(m)?,
        stream,
        include_usage,
        return_token_ids: opt_bool(m, "return_token_ids")?.unwrap_or(false),
        ignore_eos: opt_bool(m, "ignore_eos")?.unwrap_or(false),
    })
}

/// A seed for a request that gives none (sampling is then not reproducible, as OpenAI's).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn stop_strings(m: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<&Value> = match field(m, "stop") {
        None => return Ok(Vec::new()),
        Some(s @ Value::String(_)) => vec![s],
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => return Err(wrong("stop", "a string or an array of strings", v)),
    };
    if list.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "at most {MAX_STOP_STRINGS} stop strings, not {}",
                list.len()
            ),
        ));
    }
    list.into_iter()
        .map(|v| match v {
            Value::String(s) if !s.is_empty() && s.len() <= MAX_STOP_BYTES => Ok(s.clone()),
            Value::String(_) => Err(ApiError::invalid(
                "stop",
                format!("a stop string must have 1 to {MAX_STOP_BYTES} bytes"),
            )),
            v => Err(wrong("stop", "an array of strings", v)),
        })
        .collect()
}

/// `/v1/completions`' `prompt`: a string, an array of token ids, or a one-element array of
/// either (more than one prompt would be several choices: refused like `n` > 1).
pub fn prompt(m: &Map<String, Value>) -> Result<Prompt, ApiError> {
    let v =
        field(m, "prompt").ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?;
    match v {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(a) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => match &a[0] {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            inner => ids(inner),
        },
        Value::Array(_) => ids(v),
        v => Err(wrong("prompt", "a string or an array of token ids", v)),
    }
}

fn ids(v: &Value) -> Result<Prompt, ApiError> {
    let Value::Array(a) = v else {
        return Err(wrong("prompt", "an array of token ids", v));
    };
    a.iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_u64()
                .filter(|&id| id <= u32::MAX as u64)
                .map(|id| id as u32)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "prompt",
                        format!("prompt entry {i} ({t}) is not a token id"),
                    )
                })
        })
        .collect::<Result<Vec<u32>, _>>()
        .map(Prompt::Ids)
}

/// `/v1/chat/completions`' `messages`: a non-empty array of `{role, content}`; content is a
/// string, `null`, or an array of `{"type": "text", "text": ...}` parts (joined).
pub fn messages(m: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let list = match field(m, "messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "`messages` is empty")),
        Some(v) => return Err(wrong("messages", "an array", v)),
        None => return Err(ApiError::invalid("messages", "`messages` is required")),
    };
    list.iter()
        .enumerate()
        .map(|(i, msg)| message(i, msg))
        .collect()
}

fn message(i: usize, msg: &Value) -> Result<Message, ApiError> {
    let at = |what: &str| format!("messages[{i}].{what}");
    let Value::Object(o) = msg else {
        return Err(wrong(&format!("messages[{i}]"), "an object", msg));
    };
    let role = match o.get("role") {
        Some(Value::String(r)) if !r.is_empty() => r.clone(),
        Some(v) => return Err(wrong(&at("role"), "a non-empty string", v)),
        None => return Err(ApiError::invalid(&at("role"), "`role` is required")),
    };
    let content = match field(o, "content") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type"), part.get("text")) {
                    (Some(Value::String(t)), Some(Value::String(s))) if t == "text" => {
                        text.push_str(s)
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &at(&format!("content[{j}]")),
                            "only {\"type\": \"text\", \"text\": ...} parts are supported",
                        ))
                    }
                }
            }
            text
        }
        Some(v) => return Err(wrong(&at("content"), "a string or an array of parts", v)),
    };
    Ok(Message { role, content })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        object(s.as_bytes()).expect("test body is an object")
    }

    #[test]
    fn defaults_follow_openai() {
        let c = common(&obj(r#"{"model":"m"}"#), &["max_tokens"], 100).expect("valid");
        assert_eq!(c.sampling.temperature, Some(1.0));
        assert!(!c.stream && c.stop.is_empty() && c.max_tokens.is_none());
    }

    #[test]
    fn bad_values_name_their_field() {
        for (body, param) in [
            (r#"{"model":"m","n":2}"#, "n"),
            (r#"{"model":"m","temperature":"hot"}"#, "temperature"),
            (r#"{"model":"m","temperature":3}"#, "temperature"),
            (r#"{"model":"m","top_p":0}"#, "top_p"),
            (r#"{"model":"m","max_tokens":0}"#, "max_tokens"),
            (r#"{"model":"m","max_tokens":1e300}"#, "max_tokens"),
            (r#"{"model":"m","max_tokens":1.5}"#, "max_tokens"),
            (r#"{"model":"m","stop":["a","b","c","d","e"]}"#, "stop"),
            (r#"{"model":"m","stop":[""]}"#, "stop"),
            (r#"{"model":"m","stream":1}"#, "stream"),
            (r#"{"model":7}"#, "model"),
            (r#"{}"#, "model"),
        ] {
            let e = common(&obj(body), &["max_tokens"], 100).expect_err(body);
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn prompts_and_messages() {
        assert_eq!(
            prompt(&obj(r#"{"prompt":[1,2]}"#)),
            Ok(Prompt::Ids(vec![1, 2]))
        );
        assert_eq!(
            prompt(&obj(r#"{"prompt":[[3]]}"#)),
            Ok(Prompt::Ids(vec![3]))
        );
        assert_eq!(
            prompt(&obj(r#"{"prompt":["hi"]}"#)),
            Ok(Prompt::Text("hi".into()))
        );
        assert!(prompt(&obj(r#"{"prompt":[-1]}"#)).is_err());
        assert!(prompt(&obj(r#"{"prompt":["a","b"]}"#)).is_err());
        assert!(prompt(&obj(r#"{"prompt":[4294967296]}"#)).is_err());
        let m = messages(&obj(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        ))
        .expect("valid");
        assert_eq!(m[0].content, "ab");
        assert!(messages(&obj(r#"{"messages":[]}"#)).is_err());
        assert!(messages(&obj(r#"{"messages":[{"content":"x"}]}"#)).is_err());
    }

    #[test]
    fn non_objects_are_bad_json() {
        for body in [&b"[1]"[..], b"nul", b"{\"a\":\"\xff\"}", b""] {
            assert_eq!(object(body).expect_err("not an object").status, 400);
        }
    }
}
