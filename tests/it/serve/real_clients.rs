//! Real clients against `troupe serve`: the official `openai` Python package (in the cached
//! venv `tests/serve/venv.sh` makes; `.ci/run` makes it first) running
//! `tests/serve/openai_client.py`, and `curl -N` reading raw server-sent events.

use std::process::Command;

use serde_json::Value;

use super::Served;
use crate::common::repo_path;

const MODEL: &str = "fortune-tiny";

/// The venv's python (installs the pinned `openai` on first use).
fn venv_python() -> String {
    let out = Command::new("bash")
        .arg(repo_path("tests/serve/venv.sh"))
        .output()
        .expect("run tests/serve/venv.sh");
    assert!(
        out.status.success(),
        "tests/serve/venv.sh failed (it needs PyPI once): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_openai_python_client_works_against_the_server() {
    let python = venv_python();
    // The key through TROUPE_API_KEY (the errors test passes --api-key).
    let mut s = Served::start_env(MODEL, &[], &[("TROUPE_API_KEY", "sekrit")]);
    let out = Command::new(python)
        .arg(repo_path("tests/serve/openai_client.py"))
        .arg(format!("http://{}", s.addr))
        .arg(MODEL)
        .arg("sekrit")
        .output()
        .expect("run openai_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "openai_client.py: {stdout}\n{}\nserver log: {}",
        String::from_utf8_lossy(&out.stderr),
        s.stderr()
    );
    s.assert_healthy();
}

#[test]
fn curl_reads_raw_server_sent_events() {
    let mut s = Served::start(MODEL, &[]);
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let out = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--max-time",
            "120",
            "-H",
            "Content-Type: application/json",
            "-d",
        ])
        .arg(body.to_string())
        .arg(format!("http://{}/v1/chat/completions", s.addr))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    for e in &events {
        assert!(e.starts_with("data: "), "not an SSE data line: {e:?}");
    }
    let usage: Value =
        serde_json::from_str(&events[events.len() - 2]["data: ".len()..]).expect("usage chunk");
    assert_eq!(usage["object"], "chat.completion.chunk");
    assert!(
        usage["usage"]["completion_tokens"]
            .as_u64()
            .is_some_and(|n| (1..=6).contains(&n)),
        "{usage}"
    );
    s.assert_healthy();
}
