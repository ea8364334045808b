//! Chrome / Perfetto trace recording (`--trace FILE.json`): one track (tid) per stream in process
//! 1 — a complete ("X") span per kernel, tagged with actor, layer, expert, micro-batch, step and
//! request ids — one track for the link in process 2 (a span per transfer, tagged with bytes,
//! layer, micro-batch and step), and flow arrows ("s"/"f") from the router's
//! dispatch span to each expert group's span and from the group back to the combine span.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

use crate::error::{ActorError, Result};
use crate::link::TransferTags;

/// What a span is about.
#[derive(Clone, Debug, Default)]
pub struct SpanTags {
    /// Kernel / step name (`embed`, `attention`, `dispatch`, `experts`, `shared`, `combine`, `mlp`, `head`).
    pub name: &'static str,
    pub actor: String,
    pub layer: Option<usize>,
    pub experts: Vec<usize>,
    pub micro_batch: Option<usize>,
    pub step: Option<u64>,
    pub requests: Vec<u64>,
    /// Flow arrows ending in this span.
    pub flows_in: Vec<(u64, &'static str)>,
    /// Flow arrows starting in this span.
    pub flows_out: Vec<(u64, &'static str)>,
    /// Every row of the kernel is a generated token's (not traced: the stream runs the kernel
    /// with that row kind, `troupe_engine::kernels::row_kind`).
    pub generated_rows: bool,
}

impl SpanTags {
    /// Tags naming only the kernel (what an untraced run needs: allocates nothing).
    pub fn named(name: &'static str) -> SpanTags {
        SpanTags {
            name,
            ..SpanTags::default()
        }
    }
}

/// Collects trace events; written once at shutdown.
#[derive(Debug)]
pub struct Tracer {
    path: PathBuf,
    epoch: Instant,
    events: Mutex<Vec<Value>>,
    next_flow: AtomicU64,
}

/// Process ids used in the trace.
pub const STREAMS_PID: u64 = 1;
pub const LINK_PID: u64 = 2;
/// The transport: one track per peer rank (`transport::PeerStats`).
pub const PEERS_PID: u64 = 3;
/// Expert work this rank computed for other ranks: one track per asking rank.
pub const SERVING_PID: u64 = 4;

impl Tracer {
    pub fn new(path: &Path, stream_names: &[String]) -> Tracer {
        let mut events = vec![
            json!({"ph": "M", "name": "process_name", "pid": STREAMS_PID, "tid": 0, "args": {"name": "streams"}}),
            json!({"ph": "M", "name": "process_name", "pid": LINK_PID, "tid": 0, "args": {"name": "link"}}),
            json!({"ph": "M", "name": "thread_name", "pid": LINK_PID, "tid": 0, "args": {"name": "link"}}),
        ];
        for (i, n) in stream_names.iter().enumerate() {
            events.push(json!({"ph": "M", "name": "thread_name", "pid": STREAMS_PID, "tid": i, "args": {"name": format!("stream {n}")}}));
        }
        Tracer {
            path: path.to_path_buf(),
            epoch: Instant::now(),
            events: Mutex::new(events),
            next_flow: AtomicU64::new(1),
        }
    }

    /// Drops every span, flow and counter recorded so far (the track names stay): what a
    /// caller does after a warm-up it does not want in the trace.
    pub fn clear_spans(&self) {
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|e| e["ph"] == "M");
    }

    /// A fresh flow-arrow id.
    pub fn flow_id(&self) -> u64 {
        self.next_flow.fetch_add(1, Ordering::Relaxed)
    }

    fn us(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.epoch).as_nanos() as f64 / 1000.0
    }

    fn push(&self, mut evs: Vec<Value>) {
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        g.append(&mut evs);
    }

    /// A kernel span on stream `tid`.
    pub fn span(&self, tid: usize, tags: &SpanTags, start: Instant, end: Instant) {
        self.span_us(tid, tags, self.us(start), self.us(end));
    }

    /// A kernel span from `start_us` to `end_us` after the trace's epoch (a simulator's clock).
    pub fn span_us(&self, tid: usize, tags: &SpanTags, start_us: f64, end_us: f64) {
        let ts = start_us;
        let dur = (end_us - ts).max(0.001);
        let mut args = serde_json::Map::new();
        args.insert("actor".into(), json!(tags.actor));
        if let Some(l) = tags.layer {
            args.insert("layer".into(), json!(l));
        }
        if !tags.experts.is_empty() {
            args.insert("experts".into(), json!(tags.experts));
        }
        if let Some(m) = tags.micro_batch {
            args.insert("micro_batch".into(), json!(m));
        }
        if let Some(s) = tags.step {
            args.insert("step".into(), json!(s));
        }
        args.insert("requests".into(), json!(tags.requests));
        let mid = ts + dur / 2.0;
        let mut evs = vec![
            json!({"ph": "X", "name": tags.name, "cat": "kernel", "pid": STREAMS_PID, "tid": tid, "ts": ts, "dur": dur, "args": args}),
        ];
        for &(id, cat) in &tags.flows_out {
            evs.push(json!({"ph": "s", "name": cat, "cat": cat, "id": id, "pid": STREAMS_PID, "tid": tid, "ts": mid}));
        }
        for &(id, cat) in &tags.flows_in {
            evs.push(json!({"ph": "f", "bp": "e", "name": cat, "cat": cat, "id": id, "pid": STREAMS_PID, "tid": tid, "ts": mid}));
        }
        self.push(evs);
    }

    /// A transfer on the link track: `bytes`, and the layer, micro-batch and step it belongs to
    /// when known.
    pub fn link_span(
        &self,
        what: &'static str,
        bytes: usize,
        tags: &TransferTags,
        start: Instant,
        end: Instant,
    ) {
        self.link_span_us(what, bytes, tags, self.us(start), self.us(end));
    }

    /// A transfer span from `start_us` to `end_us` after the trace's epoch (a simulator's clock).
    pub fn link_span_us(
        &self,
        what: &'static str,
        bytes: usize,
        tags: &TransferTags,
        start_us: f64,
        end_us: f64,
    ) {
        let ts = start_us;
        let dur = (end_us - ts).max(0.001);
        let mut args = serde_json::Map::new();
        args.insert("bytes".into(), json!(bytes));
        if let Some(l) = tags.layer {
            args.insert("layer".into(), json!(l));
        }
        if let Some(m) = tags.micro_batch {
            args.insert("micro_batch".into(), json!(m));
        }
        if let Some(s) = tags.step {
            args.insert("step".into(), json!(s));
        }
        self.push(vec![
            json!({"ph": "X", "name": what, "cat": "link", "pid": LINK_PID, "tid": 0, "ts": ts, "dur": dur, "args": args}),
        ]);
    }

    /// Names the transport's tracks: pid 3, one per peer rank.
    pub fn name_peers(&self, peers: usize) {
        let mut evs = vec![
            json!({"ph": "M", "name": "process_name", "pid": PEERS_PID, "tid": 0, "args": {"name": "transport"}}),
            json!({"ph": "M", "name": "process_name", "pid": SERVING_PID, "tid": 0, "args": {"name": "serving"}}),
        ];
        for p in 0..peers {
            evs.push(json!({"ph": "M", "name": "thread_name", "pid": PEERS_PID, "tid": p, "args": {"name": format!("rank {p}")}}));
            evs.push(json!({"ph": "M", "name": "thread_name", "pid": SERVING_PID, "tid": p, "args": {"name": format!("for rank {p}")}}));
        }
        self.push(evs);
    }

    /// One exchange with rank `peer` (request out, reply back) on its track: `served` is how
    /// long (µs) the peer had it, and `served_at` when it received it (µs after `start`), known
    /// when both ranks read one clock.
    #[allow(clippy::too_many_arguments)]
    pub fn peer_span(
        &self,
        peer: usize,
        layer: u32,
        bytes_out: usize,
        bytes_back: usize,
        start: Instant,
        end: Instant,
        served: f64,
        served_at: Option<f64>,
    ) {
        let ts = self.us(start);
        let dur = (self.us(end) - ts).max(0.001);
        self.push(vec![
            json!({"ph": "X", "name": "experts", "cat": "transport", "pid": PEERS_PID, "tid": peer, "ts": ts, "dur": dur,
                   "args": {"layer": layer, "bytes_out": bytes_out, "bytes_back": bytes_back,
                            "served_us": served, "served_at_us": served_at}}),
        ]);
    }

    /// Expert work of `layer` this rank computed for rank `peer`, from `start` to `end`.
    pub fn serving_span(&self, peer: usize, layer: u32, start: Instant, end: Instant) {
        let ts = self.us(start);
        let dur = (self.us(end) - ts).max(0.001);
        self.push(vec![
            json!({"ph": "X", "name": "serve", "cat": "transport", "pid": SERVING_PID, "tid": peer, "ts": ts, "dur": dur,
                   "args": {"layer": layer}}),
        ]);
    }

    /// Writes `{"traceEvents": [...]}`. Flow arrows missing one end are left out: a dispatch
    /// span opens an arrow for every expert group of its layer before it knows which ones its
    /// rows go to (routing happens inside it), and only the groups that got rows close theirs.
    pub fn write(&self) -> Result<()> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let ends = |ph: &str| -> std::collections::HashSet<u64> {
            events
                .iter()
                .filter(|e| e["ph"] == ph)
                .filter_map(|e| e["id"].as_u64())
                .collect()
        };
        let (starts, finishes) = (ends("s"), ends("f"));
        let kept: Vec<&Value> = events
            .iter()
            .filter(|e| match (e["ph"].as_str(), e["id"].as_u64()) {
                (Some("s"), Some(id)) => finishes.contains(&id),
                (Some("f"), Some(id)) => starts.contains(&id),
                _ => true,
            })
            .collect();
        let doc = json!({"traceEvents": kept, "displayTimeUnit": "ms"});
        let text = serde_json::to_string(&doc).map_err(|e| ActorError::Trace {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(&self.path, text).map_err(|e| ActorError::Trace {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })
    }
}
