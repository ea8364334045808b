//! `troupe serve` driven over HTTP: the binary is started on port 0 (its first stdout line gives
//! the address) and spoken to with a small std-only client (`client.rs`), raw SSE included.
//! - `api`: every endpoint and every error status (400/401/404/413/503 with Retry-After),
//!   streaming and not, usage, stop strings, the chat template and the plain fallback;
//! - `cancel`: a client hanging up mid-stream stops its request and the KV page gauge returns
//!   to its idle value;
//! - `invariance`: a greedy request gives the same tokens alone and among 64 concurrent
//!   streaming requests;
//! - `malformed`: 1,000 seeded malformed bodies each get a 4xx, the server keeps serving and
//!   logs no panic;
//! - `prefix`: the prefix cache serves a shared prefix with the uncached server's tokens, and
//!   `/metrics` counts its hits;
//! - `real_clients`: the official `openai` Python package (venv from `tests/serve/venv.sh`)
//!   and `curl -N`;
//! - `soak`: `bench/soak.sh` for 60 seconds (mixed load, random disconnects).

mod api;
mod cancel;
pub mod client;
mod invariance;
mod malformed;
mod prefix;
mod real_clients;
mod soak;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::common::case_dir;

/// A running `troupe serve`; killed when dropped.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    /// Where its stderr goes.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// `troupe serve --model tests/fixtures/CASE --addr 127.0.0.1:0 EXTRA...`.
    pub fn start(case: &str, extra: &[&str]) -> Served {
        Served::start_path(&case_dir(case), extra)
    }

    /// [`Served::start`] with environment variables for the server.
    pub fn start_env(case: &str, extra: &[&str], env: &[(&str, &str)]) -> Served {
        Served::launch(&case_dir(case), extra, env)
    }

    pub fn start_path(model: &std::path::Path, extra: &[&str]) -> Served {
        Served::launch(model, extra, &[])
    }

    fn launch(model: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stderr.log");
        let err = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_troupe"))
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--addr", "127.0.0.1:0", "--threads", "2"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn troupe serve");
        let mut first = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout);
        lines.read_line(&mut first).expect("first stdout line");
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "first stdout line {first:?}; stderr: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        // Keep stdout drained so the server never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while lines.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Served {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One sample of a Prometheus series (no labels), from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = client::get(self.addr, "/metrics").text();
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
    }

    /// Still answering, and no panic in its log.
    pub fn assert_healthy(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "server exited: {}",
            self.stderr()
        );
        assert_eq!(client::get(self.addr, "/health").status, 200);
        let log = self.stderr();
        assert!(!log.contains("panicked"), "panic in the server log: {log}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A greedy completion request of token ids.
pub fn greedy(model: &str, prompt: &[u32], max_tokens: usize) -> Value {
    serde_json::json!({
        "model": model, "prompt": prompt, "max_tokens": max_tokens,
        "temperature": 0, "return_token_ids": true,
    })
}

/// The token ids of a non-streamed completion response.
pub fn token_ids(reply: &Value) -> Vec<u64> {
    reply["choices"][0]["token_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no token_ids in {reply}"))
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}
