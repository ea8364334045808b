//! Cancellation: a client that hangs up mid-stream stops its request (far fewer tokens than it
//! asked for are generated) and its KV pages go back: `troupe_kv_pages_in_use` returns to its
//! idle value and no request stays in flight.

use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{post, post_stream};
use super::Served;
use crate::common::repo_path;

/// Polls `/metrics` until `name` satisfies `ok` (a hang guard of two minutes, not a timing
/// assertion); returns the last value.
fn wait_for(s: &Served, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = s.metric(name);
        if let Some(v) = v.filter(|&v| ok(v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} stuck at {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_hanging_up_mid_stream_frees_its_request_and_pages() {
    // deepseek-v3-tiny with 4096 positions, so a request can ask for thousands of tokens.
    let model = repo_path("tests/external/embed/long-context.toml");
    let mut s = Served::start_path(&model, &[]);
    let warm =
        json!({"model": "long-context", "prompt": [0, 5], "max_tokens": 3, "temperature": 0});
    assert_eq!(post(s.addr, "/v1/completions", &warm).status, 200);
    // Idle: no request holds a page (the gauge is set just after the last step, which may be a
    // moment after the response went out).
    let idle = wait_for(&s, "troupe_kv_pages_in_use", |v| v == 0.0);
    let before = wait_for(&s, "troupe_tokens_generated_total", |_| true);

    let asked = 4000.0;
    let body = json!({
        "model": "long-context", "prompt": [0, 5, 9], "max_tokens": asked as u64,
        "temperature": 0, "ignore_eos": true, "stream": true, "return_token_ids": true,
    });
    let mut stream = post_stream(s.addr, "/v1/completions", &body);
    assert_eq!(stream.status, 200);
    for _ in 0..5 {
        let e = stream.next_event().expect("an event");
        assert!(e.contains("token_ids"), "{e}");
    }
    let busy = wait_for(&s, "troupe_kv_pages_in_use", |_| true);
    assert!(
        busy > idle,
        "pages in use while streaming: {busy}, idle: {idle}"
    );
    drop(stream);

    wait_for(&s, "troupe_kv_pages_in_use", |v| v == idle);
    wait_for(&s, "troupe_serve_requests_in_flight", |v| v == 0.0);
    let after = wait_for(&s, "troupe_tokens_generated_total", |_| true);
    assert!(
        after - before < asked / 2.0,
        "{} tokens generated for a request abandoned after 5",
        after - before
    );
    // Stopped, not paused: nothing more is generated.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.metric("troupe_tokens_generated_total"), Some(after));
    s.assert_healthy();
}
