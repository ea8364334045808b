//! Traces and metrics: the Chrome trace has non-overlapping spans per stream and every request's
//! steps; the Prometheus listener serves the runtime's metrics on loopback.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use troupe_actors::{ActorRuntime, FaultPlan, LinkSpec, RuntimeConfig, RuntimeOptions};

#[test]
fn trace_has_one_serial_track_per_stream_and_every_request_step() {
    let (_g, model) = load("deepseek-v3-tiny");
    let path =
        std::env::temp_dir().join(format!("troupe-actors-trace-{}.json", std::process::id()));
    let placement: toml::Table = toml::from_str(
        "streams = 3\nstages = 2\nexpert_group_size = 4\nnodes = 2\nexpert_nodes = [1]\n[link]\nlatency_us = 20\ngbps = 10",
    )
    .unwrap();
    let cfg = RuntimeConfig {
        options: RuntimeOptions {
            schedule: Some("two-microbatch".into()),
            trace: Some(path.clone()),
            ..Default::default()
        },
        faults: Some(FaultPlan::default()),
        ..Default::default()
    };
    let reqs = greedy_requests("deepseek-v3-tiny", 3);
    let rt = ActorRuntime::start_with(model.clone(), Some(&placement), None, cfg).expect("start");
    let outs = rt.generate(&reqs).expect("generate");
    rt.shutdown().expect("shutdown writes the trace");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("trace file"))
        .expect("trace json");
    let stats = troupe_actors::trace_stats::read(&path).expect("trace-stats reads the trace");
    std::fs::remove_file(&path).ok();
    assert_eq!(stats.streams.len(), 3, "{stats}");
    for s in &stats.streams {
        assert!(
            s.kernels > 0 && s.utilisation > 0.0 && s.utilisation <= 1.0,
            "{stats}"
        );
    }
    let link = stats.link.as_ref().expect("the trace has transfers");
    assert!(
        link.transfers > 0 && link.bytes > 0 && link.busy_us > 0.0,
        "{stats}"
    );
    assert!(link.exposed_us <= link.busy_us && (0.0..=1.0).contains(&link.hidden));
    let events = doc["traceEvents"].as_array().expect("traceEvents");
    let spans: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == 1)
        .collect();
    assert!(!spans.is_empty());
    // Spans on one stream never overlap.
    for tid in 0..3u64 {
        let mut track: Vec<(f64, f64)> = spans
            .iter()
            .filter(|e| e["tid"] == tid)
            .map(|e| (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap()))
            .collect();
        track.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in track.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0 + 0.01,
                "stream {tid}: span at {} (dur {}) overlaps the span at {}",
                w[0].0,
                w[0].1,
                w[1].0
            );
        }
        let named = events.iter().any(|e| {
            e["ph"] == "M" && e["tid"] == tid && e["pid"] == 1 && e["name"] == "thread_name"
        });
        assert!(named, "stream {tid} has a named track");
    }
    // Every request's steps: one attention span per layer per generated token, and a head span.
    for (r, out) in outs.iter().enumerate() {
        for l in 0..model.layers.len() {
            let n = spans
                .iter()
                .filter(|e| {
                    e["name"] == "attention"
                        && e["args"]["layer"] == l
                        && e["args"]["requests"]
                            .as_array()
                            .unwrap()
                            .contains(&Value::from(r))
                })
                .count();
            assert_eq!(
                n,
                out.generated.len(),
                "request {r} layer {l}: attention spans"
            );
        }
        let heads = spans
            .iter()
            .filter(|e| {
                e["name"] == "head"
                    && e["args"]["requests"]
                        .as_array()
                        .unwrap()
                        .contains(&Value::from(r))
            })
            .count();
        assert_eq!(heads, out.generated.len(), "request {r}: head spans");
    }
    // Flow arrows for dispatch and combine, each with a start and an end.
    for cat in ["dispatch", "combine"] {
        let starts: Vec<&Value> = events
            .iter()
            .filter(|e| e["ph"] == "s" && e["cat"] == cat)
            .map(|e| &e["id"])
            .collect();
        let ends: Vec<&Value> = events
            .iter()
            .filter(|e| e["ph"] == "f" && e["cat"] == cat)
            .map(|e| &e["id"])
            .collect();
        assert!(!starts.is_empty(), "{cat} flows");
        assert!(
            ends.iter().all(|id| starts.contains(id)),
            "{cat} flow ends without starts"
        );
    }
    let tagged = spans.iter().any(|e| {
        e["name"] == "experts"
            && e["args"]["experts"].is_array()
            && e["args"]["micro_batch"].is_u64()
    });
    assert!(tagged, "expert spans carry experts and micro-batch");
    let transfers: Vec<&Value> = events
        .iter()
        .filter(|e| e["pid"] == 2 && e["ph"] == "X")
        .collect();
    assert!(!transfers.is_empty(), "link track");
    // Every transfer names its layer (an MoE layer), micro-batch and step.
    for t in &transfers {
        let layer = t["args"]["layer"].as_u64().expect("link span layer") as usize;
        assert!(model.layers[layer].moe().is_ok(), "{t}");
        assert!(
            t["args"]["micro_batch"].as_u64().is_some_and(|m| m < 2),
            "{t}"
        );
        assert!(
            t["args"]["step"].is_u64() && t["args"]["bytes"].is_u64(),
            "{t}"
        );
    }
    assert_eq!(transfers.len() as u64, stats_transfers(&stats));
}

fn stats_transfers(s: &troupe_actors::trace_stats::TraceStats) -> u64 {
    s.link.as_ref().map_or(0, |l| l.transfers as u64)
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

#[test]
fn prometheus_listener_serves_runtime_metrics() {
    let (_g, model) = load("deepseek-v3-tiny");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let cfg = RuntimeConfig {
        options: RuntimeOptions {
            metrics_addr: Some(addr),
            ..Default::default()
        },
        // The Prometheus recorder is process-global and the tests share one process: the faulted
        // actor exists only under this test's placement, so no other test's restarts count here.
        faults: Some(FaultPlan::parse("actor:layer2.experts4-7,after:0,kind:panic").unwrap()),
        link: Some(LinkSpec {
            latency: Duration::from_micros(10),
            gbps: 100.0,
        }),
        ..Default::default()
    };
    let reqs = greedy_requests("deepseek-v3-tiny", 2);
    // Expert groups on node 1: every dispatch and combine crosses the link.
    let placement: toml::Table =
        toml::from_str("expert_group_size = 4\nnodes = 2\nexpert_nodes = [1]").unwrap();
    let rt = ActorRuntime::start_with(model, Some(&placement), None, cfg).expect("start");
    rt.generate(&reqs).expect("generate");
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape(addr);
        if text.contains("troupe_tokens_generated_total") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.shutdown().expect("shutdown");
    for name in [
        "troupe_actor_messages_total",
        "troupe_actor_busy_microseconds_total",
        "troupe_actor_queue_depth",
        "troupe_expert_tokens_total",
        "troupe_tokens_generated_total",
        "troupe_tokens_per_second",
        "troupe_actor_restarts_total",
    ] {
        assert!(text.contains(name), "metric {name} missing from:\n{text}");
    }
    assert!(
        text.contains("actor=\"layer1.attention\""),
        "per-actor labels"
    );
    assert!(
        text.contains("troupe_actor_restarts_total{actor=\"layer2.experts4-7\"} 1"),
        "restart counted:\n{text}"
    );
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
    };
    let busy = value("troupe_link_busy_seconds_total");
    let exposed = value("troupe_link_exposed_seconds_total");
    assert!(busy > 0.0, "link busy {busy}");
    assert!(
        (0.0..=busy).contains(&exposed),
        "exposed {exposed} of busy {busy}"
    );
}
