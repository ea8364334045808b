//! Every endpoint and error status of `troupe serve` over raw HTTP.

use serde_json::{json, Value};
use troupe::engine::tokenizer::TextTokenizer;

use super::client::{self, get, post, request};
use super::{greedy, token_ids, Served};
use crate::common::case_dir;

const MODEL: &str = "fortune-tiny";

fn error_of(r: &client::Reply, status: u16) -> Value {
    assert_eq!(r.status, status, "body: {}", r.text());
    let body = r.json();
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    e.clone()
}

#[test]
fn errors_have_openais_shape_and_status() {
    let mut s = Served::start(MODEL, &["--api-key", "sekrit", "--max-body-bytes", "8192"]);
    let key = [("Authorization", "Bearer sekrit")];
    let post_key = |path: &str, body: &[u8]| request(s.addr, "POST", path, &key, body);

    assert_eq!(get(s.addr, "/health").status, 200);
    assert_eq!(
        error_of(&get(s.addr, "/v1/models"), 401)["code"],
        "invalid_api_key"
    );
    let wrong = request(
        s.addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer nope")],
        b"",
    );
    error_of(&wrong, 401);
    let body = greedy(MODEL, &[0, 5, 9], 2).to_string();
    error_of(
        &request(s.addr, "POST", "/v1/completions", &[], body.as_bytes()),
        401,
    );

    let models = request(s.addr, "GET", "/v1/models", &key, b"");
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], MODEL);
    let one = request(s.addr, "GET", "/v1/models/fortune-tiny", &key, b"");
    assert_eq!(one.json()["id"], MODEL);
    error_of(&request(s.addr, "GET", "/v1/models/gpt-4", &key, b""), 404);

    let e = error_of(&post_key("/v1/completions", b"{\"model\": "), 400);
    assert_eq!(e["type"], "invalid_request_error");
    error_of(&post_key("/v1/completions", b"[1, 2]"), 400);
    error_of(
        &post_key("/v1/completions", b"{\"model\": \"\xff\xfe\"}"),
        400,
    );
    let unknown = json!({"model": "gpt-4", "prompt": "hi", "n": 5});
    let e = error_of(
        &post_key("/v1/completions", unknown.to_string().as_bytes()),
        404,
    );
    assert_eq!(e["code"], "model_not_found");
    let cases = [
        (json!({"model": MODEL, "prompt": "hi", "n": 2}), "n"),
        (
            json!({"model": MODEL, "prompt": "hi", "temperature": "warm"}),
            "temperature",
        ),
        (
            json!({"model": MODEL, "prompt": "hi", "max_tokens": -3}),
            "max_tokens",
        ),
        (
            json!({"model": MODEL, "prompt": "hi", "top_p": 1.5}),
            "top_p",
        ),
        (json!({"model": MODEL, "prompt": [1, 5000]}), "prompt"),
        (json!({"model": MODEL}), "prompt"),
        (json!({"model": MODEL, "prompt": vec![7u32; 300]}), "prompt"),
        (json!({"model": MODEL, "messages": "hi"}), "messages"),
    ];
    for (body, param) in cases {
        let path = if body.get("messages").is_some() {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let e = error_of(&post_key(path, body.to_string().as_bytes()), 400);
        assert_eq!(e["param"], param, "{body}");
    }
    let long = json!({"model": MODEL, "prompt": vec![7u32; 300]});
    let e = error_of(
        &post_key("/v1/completions", long.to_string().as_bytes()),
        400,
    );
    assert_eq!(e["code"], "context_length_exceeded");
    let big = json!({"model": MODEL, "prompt": "x".repeat(10_000)});
    assert_eq!(
        error_of(
            &post_key("/v1/completions", big.to_string().as_bytes()),
            413
        )["code"],
        "body_too_large"
    );
    error_of(&request(s.addr, "GET", "/v2/nothing", &key, b""), 404);
    s.assert_healthy();
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    let mut s = Served::start(MODEL, &["--max-queue", "1"]);
    let addr = s.addr;
    // Eight requests of 200 tokens at once against a queue of one: while the first generates,
    // the others are refused (retried in rounds in case the first finished before they came).
    let mut refused = None;
    for _round in 0..20 {
        let replies: Vec<client::Reply> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(move || post(addr, "/v1/completions", &greedy(MODEL, &[0, 5], 200)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        });
        for r in &replies {
            assert!(
                r.status == 200 || r.status == 503,
                "{} {}",
                r.status,
                r.text()
            );
        }
        if let Some(r) = replies.into_iter().find(|r| r.status == 503) {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("no request was refused by a queue of one");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(error_of(&r, 503)["code"], "queue_full");
    assert!(s
        .metric("troupe_serve_rejected_total")
        .is_some_and(|n| n >= 1.0));
    // Nothing is held once they are done.
    assert_eq!(
        post(addr, "/v1/completions", &greedy(MODEL, &[0, 5], 4)).status,
        200
    );
    s.assert_healthy();
}

#[test]
fn completions_stream_and_not_alike() {
    let mut s = Served::start(MODEL, &[]);
    let whole = post(s.addr, "/v1/completions", &greedy(MODEL, &[0, 17, 33], 12));
    assert_eq!(whole.status, 200, "{}", whole.text());
    let body = whole.json();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], MODEL);
    let ids = token_ids(&body);
    let finish = body["choices"][0]["finish_reason"]
        .as_str()
        .expect("finish_reason");
    assert!(
        finish == "length" && ids.len() == 12 || finish == "stop",
        "{body}"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["completion_tokens"], ids.len());
    assert_eq!(body["usage"]["total_tokens"], 3 + ids.len());

    let mut req = greedy(MODEL, &[0, 17, 33], 12);
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let streamed = post(s.addr, "/v1/completions", &req);
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
    let events = streamed.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk is JSON"))
        .collect();
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], body["usage"]);
    let (mut text, mut stream_ids) = (String::new(), Vec::new());
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "text_completion");
        assert!(c["usage"].is_null());
        text.push_str(c["choices"][0]["text"].as_str().expect("text"));
        stream_ids.extend(token_ids(c));
    }
    assert_eq!(text, body["choices"][0]["text"].as_str().expect("text"));
    assert_eq!(stream_ids, ids);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        finish
    );
    s.assert_healthy();
}

#[test]
fn stop_strings_cut_the_text() {
    let s = Served::start(MODEL, &[]);
    let text_of = |body: Value| {
        let r = post(s.addr, "/v1/completions", &body).json();
        (
            r["choices"][0]["text"].as_str().expect("text").to_string(),
            r["choices"][0]["finish_reason"].clone(),
        )
    };
    let base = json!({"model": MODEL, "prompt": "Fortune:", "max_tokens": 40, "temperature": 0});
    let (full, _) = text_of(base.clone());
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "too little text to cut: {full:?}");
    let stop: String = chars[4..6].iter().collect();
    let cut = &full[..full.find(&stop).expect("stop occurs")];
    for stream in [false, true] {
        let mut req = base.clone();
        req["stop"] = json!([stop]);
        if stream {
            req["stream"] = json!(true);
            let events = post(s.addr, "/v1/completions", &req).events();
            let mut text = String::new();
            for e in &events[..events.len() - 1] {
                let c: Value = serde_json::from_str(e).expect("chunk");
                text.push_str(c["choices"][0]["text"].as_str().expect("text"));
            }
            assert_eq!(text, cut, "streamed, stop {stop:?}");
        } else {
            assert_eq!(
                text_of(req),
                (cut.to_string(), json!("stop")),
                "stop {stop:?}"
            );
        }
    }
}

#[test]
fn chat_uses_the_models_template() {
    let s = Served::start(MODEL, &[]);
    let tok = TextTokenizer::open(&case_dir(MODEL).join("tokenizer.json")).expect("tokenizer");
    let chat = json!({
        "model": MODEL, "max_tokens": 10, "temperature": 0,
        "messages": [{"role": "user", "content": "Hello there"}],
    });
    let r = post(s.addr, "/v1/chat/completions", &chat).json();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    // fortune-tiny's template: `{{ bos_token }}` then the contents.
    let expected = 1 + tok.encode("Hello there").expect("encode").len();
    assert_eq!(r["usage"]["prompt_tokens"], expected);
    let plain =
        json!({"model": MODEL, "prompt": "Hello there", "max_tokens": 10, "temperature": 0});
    let c = post(s.addr, "/v1/completions", &plain).json();
    assert_eq!(
        r["choices"][0]["message"]["content"],
        c["choices"][0]["text"]
    );

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let events = post(s.addr, "/v1/chat/completions", &streamed).events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&events[0]).expect("chunk");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for e in &events[1..events.len() - 1] {
        let c: Value = serde_json::from_str(e).expect("chunk");
        text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(json!(text), r["choices"][0]["message"]["content"]);
}

#[test]
fn chat_without_a_template_uses_the_plain_fallback() {
    let s = Served::start("deepseek-v3-tiny", &[]);
    let model = "deepseek-v3-tiny";
    let chat = json!({
        "model": model, "max_tokens": 6, "temperature": 0, "return_token_ids": true,
        "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
    });
    let r = post(s.addr, "/v1/chat/completions", &chat).json();
    let plain = json!({
        "model": model, "max_tokens": 6, "temperature": 0, "return_token_ids": true,
        "prompt": "system: Be kind.\nuser: Hi\nassistant:",
    });
    let c = post(s.addr, "/v1/completions", &plain).json();
    assert_eq!(r["usage"], c["usage"]);
    assert_eq!(token_ids(&r), token_ids(&c));
}

#[test]
fn sampling_is_reproducible_per_seed() {
    let s = Served::start(MODEL, &[]);
    let ask = |seed: u64| {
        let body = json!({
            "model": MODEL, "prompt": [0, 9], "max_tokens": 16, "temperature": 1.0,
            "top_p": 0.9, "top_k": 50, "seed": seed, "return_token_ids": true,
        });
        token_ids(&post(s.addr, "/v1/completions", &body).json())
    };
    assert_eq!(ask(7), ask(7));
    assert_ne!(ask(7), ask(8), "two seeds gave the same 16 sampled tokens");
}
