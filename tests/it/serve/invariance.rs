//! Batch invariance end to end: a greedy request's tokens are the same alone and among 64
//! concurrent streaming requests (continuous batching mixes prefills and decodes of different
//! lengths in each step).

use serde_json::{json, Value};

use super::client::{post, post_stream};
use super::{greedy, token_ids, Served};

const MODEL: &str = "fortune-tiny";

/// The token ids of a streamed completion (read to `[DONE]`).
fn streamed_ids(addr: std::net::SocketAddr, prompt: &[u32], max_tokens: usize) -> Vec<u64> {
    let mut body = greedy(MODEL, prompt, max_tokens);
    body["stream"] = json!(true);
    let mut events = post_stream(addr, "/v1/completions", &body);
    assert_eq!(events.status, 200);
    let mut ids = Vec::new();
    while let Some(e) = events.next_event() {
        if e == "[DONE]" {
            return ids;
        }
        let chunk: Value = serde_json::from_str(&e).expect("chunk is JSON");
        assert!(chunk.get("error").is_none(), "{chunk}");
        ids.extend(token_ids(&chunk));
    }
    panic!("stream ended without [DONE]");
}

#[test]
fn greedy_tokens_alone_equal_tokens_among_64_streams() {
    let mut s = Served::start(MODEL, &[]);
    let addr = s.addr;
    let probe: Vec<u32> = vec![0, 311, 42, 1000, 7];
    let alone = token_ids(&post(addr, "/v1/completions", &greedy(MODEL, &probe, 24)).json());
    assert!(!alone.is_empty());
    let results: Vec<(usize, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..64usize)
            .map(|i| {
                let probe = probe.clone();
                scope.spawn(move || {
                    // Every eighth client sends the probe; the others prompts of other lengths.
                    let prompt: Vec<u32> = if i % 8 == 3 {
                        probe
                    } else {
                        (0..1 + i % 13)
                            .map(|j| (17 * i + 31 * j) as u32 % 4000 + 3)
                            .collect()
                    };
                    (i, streamed_ids(addr, &prompt, 8 + i % 24))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut probes = 0;
    for (i, ids) in &results {
        assert!(!ids.is_empty(), "client {i} got no tokens");
        if i % 8 == 3 {
            let n = ids.len().min(alone.len());
            assert_eq!(
                ids[..n],
                alone[..n],
                "client {i}: probe tokens differ in a batch"
            );
            probes += 1;
        }
    }
    assert_eq!(probes, 8);
    s.assert_healthy();
}
