//! The measured side of `troupe calibrate`: traced one-stream decode runs of the real actor
//! runtime, read back into a hardware file's `[kernels]` table (`troupe_sim::measured`) — per
//! kernel kind, the median duration of a call against the rows it carried — and the stream's
//! own cost per call (`compute.launch_us`): the median gap between two expert calls of one
//! layer, which the router hands to the stream together, so nothing but that cost separates
//! them. A traced run with the experts across a `[placement.link]` gives the stream's wake-up
//! for a kernel held for its input (`runtime.link_wake_us`, [`link_wake`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use troupe_actors::bench::{profile, BenchOptions, Contender};
use troupe_actors::placement::PlacementSpec;
use troupe_actors::schedule::Sequential;
use troupe_engine::model::Model;
use troupe_sim::measured::{Curve, KernelTimes};

use super::common::CliError;

/// One kernel call of a traced run.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub name: String,
    /// Rows of the micro-batch the call served (the span's requests).
    pub rows: usize,
    /// Experts the call ran (0 for kinds that are not expert groups).
    pub experts: usize,
    pub start_us: f64,
    pub us: f64,
    /// (step, layer, micro-batch): which op the call belongs to.
    pub op: (u64, i64, i64),
    /// The stream it ran on (the trace's thread).
    pub stream: u64,
}

/// A transfer over the link of a traced run: its name (`dispatch`, `combine`), arrival and op.
#[derive(Clone, Debug, PartialEq)]
pub struct Arrival {
    pub name: String,
    pub at_us: f64,
    pub op: (u64, i64, i64),
}

/// The link's transfers in a trace document (its "X" spans on the link's process).
pub fn arrivals_of(doc: &Value) -> Vec<Arrival> {
    let events = doc["traceEvents"].as_array().map_or(&[][..], Vec::as_slice);
    events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == troupe_actors::trace::LINK_PID)
        .filter_map(|e| {
            let a = &e["args"];
            let int = |k: &str| a[k].as_i64().unwrap_or(-1);
            Some(Arrival {
                name: e["name"].as_str()?.into(),
                at_us: e["ts"].as_f64()? + e["dur"].as_f64()?,
                op: (
                    a["step"].as_u64().unwrap_or(0),
                    int("layer"),
                    int("micro_batch"),
                ),
            })
        })
        .collect()
}

/// The kernel calls of a trace document (the runtime's Chrome trace: one "X" span per call on
/// the streams' process). Spans it cannot read are errors naming the field.
pub fn calls_of(doc: &Value) -> Result<Vec<Call>, CliError> {
    let bad = |what: &str| CliError::Runtime(format!("calibration trace: {what}"));
    let events = doc
        .get("traceEvents")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no traceEvents array"))?;
    let mut calls = Vec::new();
    for e in events {
        if e["ph"] != "X" || e["pid"] != troupe_actors::trace::STREAMS_PID {
            continue;
        }
        let a = &e["args"];
        let count = |k: &str| a[k].as_array().map_or(0, Vec::len);
        let int = |k: &str| a[k].as_i64().unwrap_or(-1);
        calls.push(Call {
            name: e["name"]
                .as_str()
                .ok_or_else(|| bad("a span has no name"))?
                .into(),
            rows: count("requests"),
            experts: count("experts"),
            start_us: e["ts"].as_f64().ok_or_else(|| bad("a span has no ts"))?,
            us: e["dur"].as_f64().ok_or_else(|| bad("a span has no dur"))?,
            op: (
                a["step"].as_u64().unwrap_or(0),
                int("layer"),
                int("micro_batch"),
            ),
            stream: e["tid"].as_u64().unwrap_or(0),
        });
    }
    calls.sort_by(|a, b| a.start_us.total_cmp(&b.start_us));
    Ok(calls)
}

/// Median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per kind, the median call duration at each row count seen (expert calls of one expert
/// only; multi-expert groups are not per expert).
pub fn kernel_times(calls: &[Call]) -> KernelTimes {
    let mut by: BTreeMap<(&str, usize), Vec<f64>> = BTreeMap::new();
    for c in calls {
        if c.rows == 0 || (c.name == "experts" && c.experts != 1) {
            continue;
        }
        by.entry((c.name.as_str(), c.rows)).or_default().push(c.us);
    }
    let mut curves: BTreeMap<&str, Curve> = BTreeMap::new();
    for ((name, rows), us) in by {
        let c = curves.entry(name).or_insert(Curve {
            rows: Vec::new(),
            us: Vec::new(),
        });
        c.rows.push(rows as f64);
        c.us.push(median(us));
    }
    let mut times = KernelTimes::default();
    for (name, curve) in curves {
        // A name that is not a kernel kind is left out.
        times.set(name, curve);
    }
    times
}

/// Median gap (µs) between consecutive expert calls of one op on the stream, over `runs` (each
/// one traced run's calls in start order, as [`calls_of`] returns them: every run's trace has
/// its own clock, so runs are never merged); `None` when they have none.
pub fn launch_gap(runs: &[Vec<Call>]) -> Option<f64> {
    let gaps: Vec<f64> = runs
        .iter()
        .flat_map(|calls| calls.windows(2))
        .filter(|w| w[0].name == "experts" && w[1].name == "experts" && w[0].op == w[1].op)
        .map(|w| (w[1].start_us - (w[0].start_us + w[0].us)).max(0.0))
        .collect();
    (!gaps.is_empty()).then(|| median(gaps))
}

/// What the actor hops cost, read from the gaps on the stream (µs; see `RuntimeCosts`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HopGaps {
    /// A plain hop (attention to the router, combine to the next attention) beyond `launch`.
    pub hop: f64,
    /// The router's fan-out beyond `hop + launch`: `fanout_base` plus `per_message` per kernel
    /// message it sends (the op's expert and shared calls), a least-squares line.
    pub fanout_base: f64,
    pub per_message: f64,
}

/// The hops' costs in `runs` (as for [`launch_gap`]) given the stream's cost per call
/// `launch`; `None` without the gaps to read them from.
pub fn hop_gaps(runs: &[Vec<Call>], launch: f64) -> Option<HopGaps> {
    let gap = |a: &Call, b: &Call| (b.start_us - (a.start_us + a.us)).max(0.0);
    let plain: Vec<f64> = runs
        .iter()
        .flat_map(|calls| calls.windows(2))
        .filter(|w| {
            matches!(
                (w[0].name.as_str(), w[1].name.as_str()),
                ("attention", "dispatch") | ("combine", "attention")
            )
        })
        .map(|w| gap(&w[0], &w[1]))
        .collect();
    // Per router dispatch: (messages of its op, gap to the op's next kernel).
    let mut fan: Vec<(f64, f64)> = Vec::new();
    for calls in runs {
        let mut messages: BTreeMap<(u64, i64, i64), usize> = BTreeMap::new();
        for c in calls {
            if c.name == "experts" || c.name == "shared" {
                *messages.entry(c.op).or_default() += 1;
            }
        }
        fan.extend(
            calls
                .windows(2)
                .filter(|w| w[0].name == "dispatch" && w[1].op == w[0].op)
                .filter_map(|w| Some((*messages.get(&w[0].op)? as f64, gap(&w[0], &w[1])))),
        );
    }
    if plain.is_empty() || fan.len() < 2 {
        return None;
    }
    let hop = (median(plain) - launch).max(0.0);
    let n = fan.len() as f64;
    let (mx, my) = (
        fan.iter().map(|p| p.0).sum::<f64>() / n,
        fan.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = fan.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = fan.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let per_message = if sxx > 0.0 { (sxy / sxx).max(0.0) } else { 0.0 };
    let fanout_base = (my - per_message * mx - hop - launch).max(0.0);
    Some(HopGaps {
        hop,
        fanout_base,
        per_message,
    })
}

/// How long after the last result of a router's op arrives over the link its combine kernel
/// starts, where its stream was idle then (the median, µs): the stream waking for a kernel held
/// for its input. `None` without such a combine.
pub fn link_wake(calls: &[Call], arrivals: &[Arrival]) -> Option<f64> {
    let mut last: BTreeMap<(u64, i64, i64), f64> = BTreeMap::new();
    for a in arrivals.iter().filter(|a| a.name == "combine") {
        let t = last.entry(a.op).or_insert(a.at_us);
        *t = t.max(a.at_us);
    }
    let waits: Vec<f64> = calls
        .iter()
        .filter(|c| c.name == "combine")
        .filter_map(|c| {
            let arrived = *last.get(&c.op)?;
            // Idle: no call on its stream ran between the arrival and its start.
            let busy = calls.iter().any(|o| {
                o.stream == c.stream && o.start_us < c.start_us && o.start_us + o.us > arrived
            });
            (!busy && c.start_us >= arrived).then(|| c.start_us - arrived)
        })
        .collect();
    (!waits.is_empty()).then(|| median(waits))
}

/// The kernel calls and link transfers of `steps` decode steps of `seqs` sequences on
/// `placement` (its link kept), sequential, after a `context`-token prompt (the runtime's
/// trace, through a temporary file).
pub fn traced_run(
    model: &Arc<Model>,
    placement: &PlacementSpec,
    seqs: usize,
    context: usize,
    steps: usize,
) -> Result<(Vec<Call>, Vec<Arrival>), CliError> {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "troupe-calibrate-{}-{seqs}.json",
        std::process::id()
    ));
    let o = BenchOptions {
        sequences: seqs,
        prompt_len: context,
        steps: steps.max(1),
        schedules: vec![Arc::new(Sequential)],
        trace: Some(path.clone()),
        with_link: false,
        ..BenchOptions::default()
    };
    profile(model.clone(), Some(placement), &o, Contender::Actors)
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let read = std::fs::read_to_string(&path)
        .map_err(|e| CliError::Runtime(format!("calibration trace {}: {e}", path.display())));
    let _ = std::fs::remove_file(&path);
    let doc: Value = serde_json::from_str(&read?)
        .map_err(|e| CliError::Runtime(format!("calibration trace: {e}")))?;
    Ok((calls_of(&doc)?, arrivals_of(&doc)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn span(name: &str, ts: f64, dur: f64, requests: usize, experts: &[usize]) -> Value {
        json!({"ph": "X", "pid": 1, "tid": 0, "name": name, "ts": ts, "dur": dur,
               "args": {"requests": (0..requests).collect::<Vec<_>>(), "experts": experts,
                        "step": 1, "layer": 1, "micro_batch": 0}})
    }

    #[test]
    fn calls_become_median_curves_and_expert_gaps_the_launch_cost() {
        let doc = json!({"traceEvents": [
            {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "streams"}},
            span("attention", 0.0, 500.0, 1, &[]),
            span("attention", 1000.0, 700.0, 1, &[]),
            span("attention", 2000.0, 900.0, 1, &[]),
            span("attention", 3000.0, 1000.0, 2, &[]),
            span("experts", 5000.0, 100.0, 1, &[3]),
            span("experts", 5120.0, 100.0, 2, &[4]),
            span("experts", 5250.0, 100.0, 1, &[5]),
            span("experts", 5400.0, 300.0, 1, &[6, 7]),
            // Another process (the link) is not a kernel.
            {"ph": "X", "pid": 2, "tid": 0, "name": "dispatch", "ts": 0.0, "dur": 9.0, "args": {}},
        ]});
        let calls = calls_of(&doc).unwrap();
        assert_eq!(calls.len(), 8);
        let t = kernel_times(&calls);
        let a = t.attention.unwrap();
        assert_eq!((a.rows, a.us), (vec![1.0, 2.0], vec![700.0, 1000.0]));
        // The two-expert call is left out of the per-expert curve.
        let e = t.experts.unwrap();
        assert_eq!((e.rows, e.us), (vec![1.0, 2.0], vec![100.0, 100.0]));
        // Gaps 20, 30 and 50 µs between expert calls of the op.
        assert_eq!(launch_gap(&[calls]), Some(30.0));
        assert!(calls_of(&json!({"nothing": 1})).is_err());
    }

    #[test]
    fn hops_are_the_plain_gaps_and_the_fan_out_a_line_over_messages() {
        let call = |name: &str, start_us: f64, end_us: f64, layer: i64| Call {
            name: name.into(),
            rows: 1,
            experts: usize::from(name == "experts"),
            start_us,
            us: end_us - start_us,
            op: (1, layer, 0),
            stream: 0,
        };
        let calls = vec![
            call("attention", 0.0, 100.0, 1),
            call("dispatch", 180.0, 200.0, 1),
            call("experts", 310.0, 360.0, 1),
            call("experts", 370.0, 420.0, 1),
            call("combine", 430.0, 440.0, 1),
            call("attention", 500.0, 600.0, 2),
            call("dispatch", 670.0, 690.0, 2),
            call("experts", 805.0, 855.0, 2),
            call("experts", 865.0, 915.0, 2),
            call("experts", 925.0, 975.0, 2),
            call("combine", 985.0, 995.0, 2),
        ];
        // Plain gaps 80, 60 and 70 µs: median 70, less a launch of 10.
        // Fan-out gaps 110 µs at 2 messages and 115 at 3: 100 + 5 a message, less hop and launch.
        let h = hop_gaps(&[calls.clone()], 10.0).unwrap();
        assert!((h.hop - 60.0).abs() < 1e-9, "{h:?}");
        assert!((h.per_message - 5.0).abs() < 1e-9, "{h:?}");
        assert!((h.fanout_base - 30.0).abs() < 1e-9, "{h:?}");
        assert_eq!(launch_gap(&[calls.clone()]), Some(10.0));
        assert!(hop_gaps(&[calls[..5].to_vec()], 10.0).is_none());
        // A second run on its own clock, 3 µs later: read apart, it gives the same figures;
        // merged into one timeline its calls would interleave with the first run's.
        let later: Vec<Call> = calls
            .iter()
            .map(|c| Call {
                start_us: c.start_us + 3.0,
                ..c.clone()
            })
            .collect();
        let both = [calls.clone(), later];
        assert_eq!(launch_gap(&both), Some(10.0));
        let h2 = hop_gaps(&both, 10.0).unwrap();
        assert!((h2.hop - h.hop).abs() < 1e-9, "{h2:?}");
        assert!((h2.per_message - h.per_message).abs() < 1e-9, "{h2:?}");
        assert!((h2.fanout_base - h.fanout_base).abs() < 1e-9, "{h2:?}");
    }

    #[test]
    fn the_link_wake_is_the_idle_combines_wait_after_the_last_result() {
        let call = |name: &str, start_us: f64, end_us: f64, layer: i64, stream: u64| Call {
            name: name.into(),
            rows: 1,
            experts: 0,
            start_us,
            us: end_us - start_us,
            op: (1, layer, 0),
            stream,
        };
        let arrival = |name: &str, at_us: f64, layer: i64| Arrival {
            name: name.into(),
            at_us,
            op: (1, layer, 0),
        };
        let calls = vec![
            call("combine", 1100.0, 1110.0, 1, 0),
            call("combine", 2070.0, 2080.0, 2, 0),
            // Layer 3's combine waited for attention on its stream, not for a wake.
            call("attention", 2900.0, 3500.0, 4, 0),
            call("combine", 3500.0, 3510.0, 3, 0),
        ];
        let arrivals = vec![
            // Layer 1's results arrive at 900 and 1000: 100 µs after the last.
            arrival("combine", 900.0, 1),
            arrival("combine", 1000.0, 1),
            arrival("dispatch", 1090.0, 1),
            arrival("combine", 2000.0, 2),
            arrival("combine", 3000.0, 3),
        ];
        // Idle waits 100 and 70: median 85.
        assert_eq!(link_wake(&calls, &arrivals), Some(85.0));
        assert_eq!(link_wake(&calls, &arrivals[2..3]), None);
        let doc = json!({"traceEvents": [
            {"ph": "X", "pid": 2, "tid": 0, "name": "combine", "ts": 10.0, "dur": 5.0,
             "args": {"step": 3, "layer": 2, "micro_batch": 1, "bytes": 64}},
            span("attention", 0.0, 500.0, 1, &[]),
        ]});
        assert_eq!(
            arrivals_of(&doc),
            vec![Arrival {
                name: "combine".into(),
                at_us: 15.0,
                op: (3, 2, 1)
            }]
        );
    }
}
