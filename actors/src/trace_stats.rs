//! Reading back a trace written by `--trace` (`trace.rs`): per stream, how much of the traced
//! wall time it ran kernels (utilisation), and for the link, how much of its busy time no kernel
//! hid — the same definitions as the live measurement (`overlap.rs`), computed from the spans:
//! - **window**: from the first span's start to the last span's end (streams and link);
//! - a stream's **busy** time: the union of its kernel spans (pid 1, its tid); utilisation =
//!   busy / window;
//! - **link busy**: the union of the transfer spans (pid 2); **exposed**: link busy time during
//!   which no stream ran a kernel; **hidden** = 1 − exposed / link busy.
//!
//! `troupe trace-stats trace.json` prints [`TraceStats`]'s `Display`.

use std::path::Path;

use serde_json::Value;

use crate::error::{ActorError, Result};
use crate::trace::{LINK_PID, STREAMS_PID};

/// Largest trace file read (a trace holds a few hundred bytes per span).
pub const MAX_TRACE_BYTES: u64 = 4 << 30;

/// One stream's track.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamUse {
    pub tid: u64,
    /// The track's name (`stream cpu0`), or `tid N` when the trace does not name it.
    pub name: String,
    pub kernels: usize,
    pub busy_us: f64,
    /// busy / window, in [0, 1].
    pub utilisation: f64,
}

/// The link track.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkUse {
    pub transfers: usize,
    pub bytes: u64,
    pub busy_us: f64,
    pub exposed_us: f64,
    /// 1 − exposed / busy (0 when the link was never busy).
    pub hidden: f64,
}

/// What a trace shows (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceStats {
    pub window_us: f64,
    pub streams: Vec<StreamUse>,
    /// None when the trace has no transfer.
    pub link: Option<LinkUse>,
}

/// Sorted, disjoint `[start, end)` intervals covering `spans`.
fn union(mut spans: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn length(u: &[(f64, f64)]) -> f64 {
    u.iter().map(|(s, e)| e - s).sum()
}

/// Length of the intersection of two unions.
fn overlap(a: &[(f64, f64)], b: &[(f64, f64)]) -> f64 {
    let (mut i, mut j, mut total) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if e > s {
            total += e - s;
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    total
}

fn bad(path: &str, message: impl Into<String>) -> ActorError {
    ActorError::Trace {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Analyses a trace document (`{"traceEvents": [..]}`); `path` names it in errors.
pub fn analyse(doc: &Value, path: &str) -> Result<TraceStats> {
    let events = doc["traceEvents"]
        .as_array()
        .ok_or_else(|| bad(path, "no `traceEvents` array (not a troupe --trace file)"))?;
    let mut names = std::collections::BTreeMap::new();
    let mut streams: std::collections::BTreeMap<u64, Vec<(f64, f64)>> = Default::default();
    let mut link = Vec::new();
    let mut bytes = 0u64;
    for (i, e) in events.iter().enumerate() {
        let (pid, tid) = (e["pid"].as_u64(), e["tid"].as_u64().unwrap_or(0));
        match e["ph"].as_str() {
            Some("M") if pid == Some(STREAMS_PID) && e["name"] == "thread_name" => {
                if let Some(n) = e["args"]["name"].as_str() {
                    names.insert(tid, n.to_string());
                }
            }
            Some("X") if pid == Some(STREAMS_PID) || pid == Some(LINK_PID) => {
                let (Some(ts), Some(dur)) = (e["ts"].as_f64(), e["dur"].as_f64()) else {
                    return Err(bad(
                        path,
                        format!("traceEvents[{i}]: a span needs numeric `ts` and `dur`"),
                    ));
                };
                if !ts.is_finite() || !dur.is_finite() || dur < 0.0 {
                    return Err(bad(path, format!("traceEvents[{i}]: ts {ts}, dur {dur}")));
                }
                if pid == Some(LINK_PID) {
                    link.push((ts, ts + dur));
                    bytes += e["args"]["bytes"].as_u64().unwrap_or(0);
                } else {
                    streams.entry(tid).or_default().push((ts, ts + dur));
                }
            }
            _ => {}
        }
    }
    let all = streams.values().flatten().chain(&link);
    let start = all.clone().map(|s| s.0).fold(f64::INFINITY, f64::min);
    let end = all.map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    let window_us = if end > start { end - start } else { 0.0 };
    let kernels = union(streams.values().flatten().copied().collect());
    let streams = streams
        .into_iter()
        .map(|(tid, spans)| {
            let n = spans.len();
            let busy_us = length(&union(spans));
            StreamUse {
                tid,
                name: names.remove(&tid).unwrap_or_else(|| format!("tid {tid}")),
                kernels: n,
                busy_us,
                utilisation: if window_us > 0.0 {
                    (busy_us / window_us).min(1.0)
                } else {
                    0.0
                },
            }
        })
        .collect();
    let link = (!link.is_empty()).then(|| {
        let transfers = link.len();
        let busy = union(link);
        let busy_us = length(&busy);
        let exposed_us = (busy_us - overlap(&busy, &kernels)).max(0.0);
        LinkUse {
            transfers,
            bytes,
            busy_us,
            exposed_us,
            hidden: if busy_us > 0.0 {
                (1.0 - exposed_us / busy_us).clamp(0.0, 1.0)
            } else {
                0.0
            },
        }
    });
    Ok(TraceStats {
        window_us,
        streams,
        link,
    })
}

/// Reads and analyses the trace file at `path` (a regular file under [`MAX_TRACE_BYTES`]).
pub fn read(path: &Path) -> Result<TraceStats> {
    let name = path.display().to_string();
    let text = troupe_engine::files::read_text_capped(path, MAX_TRACE_BYTES, "trace file")?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| bad(&name, e.to_string()))?;
    analyse(&doc, &name)
}

impl std::fmt::Display for TraceStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "window: {:.3} ms (first span start to last span end)",
            self.window_us / 1e3
        )?;
        for s in &self.streams {
            writeln!(
                f,
                "{:<16} {:>7} kernels  busy {:>10.3} ms  utilisation {:>5.1}%",
                s.name,
                s.kernels,
                s.busy_us / 1e3,
                s.utilisation * 100.0
            )?;
        }
        match &self.link {
            Some(l) => writeln!(
                f,
                "link: {} transfers, {} bytes; busy {:.3} ms, exposed {:.3} ms (busy while no kernel ran); link time hidden {:.1}%",
                l.transfers,
                l.bytes,
                l.busy_us / 1e3,
                l.exposed_us / 1e3,
                l.hidden * 100.0
            ),
            None => writeln!(f, "link: no transfers in this trace"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn utilisation_and_hidden_link_time_from_spans() {
        let doc = json!({"traceEvents": [
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 0, "args": {"name": "stream cpu0"}},
            {"ph": "X", "name": "attention", "pid": 1, "tid": 0, "ts": 0.0, "dur": 40.0},
            {"ph": "X", "name": "experts", "pid": 1, "tid": 0, "ts": 60.0, "dur": 40.0},
            {"ph": "X", "name": "experts", "pid": 1, "tid": 1, "ts": 10.0, "dur": 10.0},
            // Link busy 30..70 (two overlapping transfers): kernels cover 30..40 and 60..70.
            {"ph": "X", "name": "dispatch", "pid": 2, "tid": 0, "ts": 30.0, "dur": 30.0, "args": {"bytes": 100}},
            {"ph": "X", "name": "combine", "pid": 2, "tid": 0, "ts": 50.0, "dur": 20.0, "args": {"bytes": 50}},
        ]});
        let s = analyse(&doc, "t.json").unwrap();
        assert_eq!(s.window_us, 100.0);
        assert_eq!(s.streams[0].name, "stream cpu0");
        assert_eq!(s.streams[0].kernels, 2);
        assert_eq!(s.streams[0].utilisation, 0.8);
        assert_eq!(s.streams[1].name, "tid 1");
        assert_eq!(s.streams[1].utilisation, 0.1);
        let l = s.link.unwrap();
        assert_eq!((l.transfers, l.bytes), (2, 150));
        assert_eq!(l.busy_us, 40.0);
        assert_eq!(l.exposed_us, 20.0);
        assert_eq!(l.hidden, 0.5);
        assert!(analyse(&json!({"x": 1}), "t.json").is_err());
        let bad_span = json!({"traceEvents": [{"ph": "X", "pid": 1, "tid": 0, "ts": "a"}]});
        assert!(analyse(&bad_span, "t.json").is_err());
    }
}
