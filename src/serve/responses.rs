//! Response bodies in OpenAI's format: whole responses (`text_completion`, `chat.completion`)
//! and stream chunks (`text_completion` chunks, `chat.completion.chunk`), each framed as one
//! server-sent event `data: JSON\n\n`; a stream ends with `data: [DONE]\n\n`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::generation::Piece;

/// Which endpoint a response belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// What every response and chunk of one request repeats.
pub struct Envelope {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub return_token_ids: bool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Envelope {
    pub fn new(endpoint: Endpoint, model: &str, return_token_ids: bool) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        Envelope {
            endpoint,
            id: format!(
                "{prefix}-{created:x}{:06x}",
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            ),
            created,
            model: model.to_string(),
            return_token_ids,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn frame(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// The whole response of a request that is not streamed.
    pub fn response(&self, all: &Piece, prompt_tokens: usize, completion_tokens: usize) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0, "text": all.text, "logprobs": null, "finish_reason": all.finish,
            }),
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": all.text},
                "logprobs": null,
                "finish_reason": all.finish,
            }),
        };
        if self.return_token_ids {
            choice["token_ids"] = json!(all.token_ids);
        }
        let mut body = self.frame(false, json!([choice]));
        body["usage"] = usage(prompt_tokens, completion_tokens);
        body
    }

    /// The chat stream's first chunk (the assistant role, no text yet).
    pub fn role_chunk(&self, include_usage: bool) -> Value {
        let mut c = self.frame(
            true,
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        );
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    /// One chunk of a stream.
    pub fn chunk(&self, piece: &Piece, include_usage: bool) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0, "text": piece.text, "logprobs": null, "finish_reason": piece.finish,
            }),
            Endpoint::Chat => {
                let delta = if piece.text.is_empty() && piece.finish.is_some() {
                    json!({})
                } else {
                    json!({"content": piece.text})
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": piece.finish})
            }
        };
        if self.return_token_ids {
            choice["token_ids"] = json!(piece.token_ids);
        }
        let mut c = self.frame(true, json!([choice]));
        if include_usage {
            // OpenAI: with `include_usage`, every chunk carries `usage: null` but the last.
            c["usage"] = Value::Null;
        }
        c
    }

    /// The last chunk with `stream_options.include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, prompt_tokens: usize, completion_tokens: usize) -> Value {
        let mut c = self.frame(true, json!([]));
        c["usage"] = usage(prompt_tokens, completion_tokens);
        c
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// One server-sent event carrying `value`.
pub fn event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// The event that ends every stream.
pub const DONE: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_chunks_follow_openai() {
        let e = Envelope::new(Endpoint::Chat, "m", false);
        let last = Piece {
            text: String::new(),
            token_ids: vec![1],
            finish: Some("stop"),
        };
        let c = e.chunk(&last, true);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["delta"], json!({}));
        assert!(c["usage"].is_null() && c.get("usage").is_some());
        assert!(c["choices"][0].get("token_ids").is_none());
        let u = e.usage_chunk(3, 4);
        assert_eq!(u["usage"]["total_tokens"], 7);
        assert_eq!(u["choices"], json!([]));
        assert!(event(&u).starts_with("data: {") && event(&u).ends_with("}\n\n"));
    }

    #[test]
    fn completion_response_has_usage_and_ids_on_request() {
        let e = Envelope::new(Endpoint::Completions, "m", true);
        let all = Piece {
            text: "ab".into(),
            token_ids: vec![5, 6],
            finish: Some("length"),
        };
        let r = e.response(&all, 2, 2);
        assert_eq!(r["object"], "text_completion");
        assert_eq!(r["choices"][0]["text"], "ab");
        assert_eq!(r["choices"][0]["token_ids"], json!([5, 6]));
        assert_eq!(r["usage"]["completion_tokens"], 2);
        assert!(r["id"].as_str().is_some_and(|s| s.starts_with("cmpl-")));
    }
}
