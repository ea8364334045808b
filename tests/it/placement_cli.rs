//! The command line's device, runtime, KV cache and bench flags (parsed once by clap: a bad value
//! exits 2 naming the flag) and hostile `[placement.link]` numbers in a graph file (a one-line error
//! naming the field, exit 2; `latency_us = 1e300` used to panic with exit 101).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn troupe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .output()
        .expect("run troupe")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 2 and an error that names `needle`.
fn assert_usage_error(args: &[&str], needle: &str) {
    let o = troupe(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

fn mini() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/graphs/ds-v3-mini.toml").to_string()
}

#[test]
fn bad_bench_numbers_are_refused_by_the_parser() {
    let m = mini();
    for (flag, value, named) in [
        ("-r", "0", "--reps"),
        ("--reps", "x", "--reps"),
        ("--seqs", "0", "--seqs"),
        ("--seqs=-3", "", "--seqs"),
        ("-p", "many", "--n-prompt"),
        ("-n", "1e3", "--n-gen"),
    ] {
        let mut args = vec!["bench", "-m", &m, flag];
        if !value.is_empty() {
            args.push(value);
        }
        assert_usage_error(&args, named);
    }
    assert_usage_error(&["bench", "-m", &m, "--profile", "gpu"], "--profile");
    assert_usage_error(&["bench", "-m", &m, "--runtime", "fast"], "--runtime");
    // --trace goes with --profile.
    assert_usage_error(&["bench", "-m", &m, "--trace", "t.json"], "--profile");
    // The comparison's flags need --compare, and the comparison takes no depth or JSON.
    assert_usage_error(&["bench", "-m", &m, "--no-link"], "--compare");
    assert_usage_error(&["bench", "-m", &m, "--compare", "-d", "64"], "-d");
    assert_usage_error(&["bench", "-m", &m, "-d", "x"], "--n-depth");
    // A depth plus a test longer than the model's positions is refused before loading.
    assert_usage_error(
        &["bench", "-m", &m, "-d", "8192", "-n", "64"],
        "position limit",
    );
    assert_usage_error(&["bench", "-m", &m, "--kv-pages", "0"], "--kv-pages");
    assert_usage_error(&["bench", "-m", &m, "--page-tokens", "48"], "--page-tokens");
}

#[test]
fn device_and_runtime_are_parsed_once_by_clap() {
    let m = mini();
    for cmd in ["generate", "bench"] {
        let mut args = vec![cmd, "-m", &m, "--device", "cuda:x"];
        if cmd == "generate" {
            args.extend(["--prompt-ids", "1"]);
        }
        assert_usage_error(&args, "--device");
    }
    assert_usage_error(
        &[
            "generate",
            "-m",
            &m,
            "--prompt-ids",
            "1",
            "--runtime",
            "actor",
        ],
        "--runtime",
    );
    // A well-formed device troupe has no backend for: the error says which devices exist.
    assert_usage_error(
        &[
            "generate",
            "-m",
            &m,
            "--prompt-ids",
            "1",
            "--device",
            "npu0",
        ],
        "ptx-interp",
    );
}

/// A tiny random-weight model with `link` as its `[placement.link]` table.
fn graph_with_link(dir: &Path, link: &str) -> PathBuf {
    let text = format!(
        "{}[placement]\nnodes = 2\nexpert_nodes = [1]\n[placement.link]\n{link}\n",
        include_str!("../../actors/src/placement/tiny_graph.toml")
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).expect("write graph");
    path
}

/// Two tokens from `graph` on the actor runtime.
fn generate_on_actors(graph: &Path) -> Output {
    let path = graph.to_str().expect("utf-8 path");
    let args = ["generate", "-m", path, "--prompt-ids", "1,2", "-n", "2"];
    troupe(&[&args[..], &["--runtime", "actors"]].concat())
}

#[test]
fn extreme_link_numbers_are_one_line_errors_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (link, field) in [
        ("latency_us = 1e300\ngbps = 10", "link.latency_us"),
        ("latency_us = 5\ngbps = 1e-300", "link.gbps"),
        ("latency_us = nan\ngbps = 10", "link.latency_us"),
        ("latency_us = 5\ngbps = inf", "link.gbps"),
        ("latency_us = -1\ngbps = 10", "link.latency_us"),
        ("latency_us = 5\ngbps = -10", "link.gbps"),
    ] {
        let o = generate_on_actors(&graph_with_link(dir.path(), link));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{link}: {err}");
        assert_eq!(err.lines().count(), 1, "{link}: {err}");
        assert!(err.contains(field), "{link}: {err}");
    }
    // In range, the same graph runs.
    let o = generate_on_actors(&graph_with_link(dir.path(), "latency_us = 5\ngbps = 10"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// The trace `bench --compare --profile actors --trace F` writes for deepseek-v3-tiny, 2
/// sequences prefilled with 4 tokens, `steps` decode steps, with `extra` arguments.
fn profiled_trace(steps: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("decode.json");
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/deepseek-v3-tiny"
    );
    let mut args = vec![
        "bench",
        "-m",
        model,
        "--compare",
        "--profile",
        "actors",
        "--seqs",
        "2",
        "-p",
        "4",
        "-r",
        steps,
        "--trace",
        trace.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = troupe(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap()
}

/// `bench --compare --profile actors --trace F` writes a trace of the decode steps. (It used to
/// prefill in one runtime and decode in a second, traced one, whose attention actors refused the
/// first runtime's caches: "a sequence's cache belongs to another pool".)
#[test]
fn profiled_actor_decode_writes_its_trace() {
    let doc = profiled_trace("2", &[]);
    let events = doc["traceEvents"].as_array().unwrap();
    let embeds = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["name"] == "embed")
        .count();
    // Two decode steps (`-r 2`), one embed span each: the prefill's spans are not there.
    assert_eq!(
        embeds, 2,
        "embed spans: the trace should hold the 2 decode steps only"
    );
}

/// `bench --compare --profile actors --placement P` keeps P's `[placement.link]` (it used to
/// drop it, so a traced profile of a link placement showed no link), and a router books its
/// transfers to the groups across the link before its shared experts' kernel starts (it used
/// to spawn the shared experts first; on two cores their kernel took both, and the router's
/// remaining bookings waited up to 0.8 ms for it).
#[test]
fn a_profiled_link_placement_books_its_transfers_before_the_shared_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let placement = dir.path().join("link.toml");
    std::fs::write(
        &placement,
        "[placement]\nstreams = 2\nnodes = 2\nexpert_nodes = [1]\n\n\
         [placement.link]\ngbps = 10.0\nlatency_us = 100.0\n",
    )
    .unwrap();
    let doc = profiled_trace("3", &["--placement", placement.to_str().unwrap()]);
    let spans: Vec<&serde_json::Value> = doc["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    let op = |e: &serde_json::Value| {
        let a = &e["args"];
        (
            a["step"].as_u64(),
            a["layer"].as_u64(),
            a["micro_batch"].as_u64(),
        )
    };
    let bookings: Vec<_> = spans
        .iter()
        .filter(|e| e["pid"] == 2 && e["name"] == "dispatch")
        .collect();
    assert!(!bookings.is_empty(), "no link transfers in the trace");
    let shared: Vec<_> = spans
        .iter()
        .filter(|e| e["pid"] == 1 && e["name"] == "shared")
        .collect();
    assert!(!shared.is_empty(), "no shared-expert kernels in the trace");
    for s in shared {
        let start = s["ts"].as_f64().unwrap();
        for b in bookings.iter().filter(|b| op(b) == op(s)) {
            assert!(
                b["ts"].as_f64().unwrap() <= start,
                "op {:?}: a transfer booked at {} after the shared kernel started at {start}",
                op(s),
                b["ts"]
            );
        }
    }
}
