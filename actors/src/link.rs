//! The simulated interconnect between a router and its expert groups (`[placement.link]`).
//! A transfer of `b` bytes occupies the wire for `8·b / gbps` ns after the previous transfer
//! left it (bandwidth is shared, transfers queue) and is delivered `latency` later (latency
//! pipelines). Timing runs on the link's own thread — never on a compute stream — so compute
//! overlapping the transfers is visible in wall time and in the trace.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{ActorError, Result};
use crate::placement::LinkSpec;
use crate::trace::Tracer;

type Deliver = Box<dyn FnOnce() + Send>;

struct Transfer {
    what: &'static str,
    bytes: usize,
    deliver: Deliver,
}

/// Totals since start: for the "fraction of link time hidden" measurement.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub transfers: AtomicU64,
    pub bytes: AtomicU64,
    /// Wall time during which at least one transfer was in flight (union of the
    /// submission→delivery intervals), in ns.
    pub busy_ns: AtomicU64,
}

/// Handle to the link thread.
pub struct Link {
    spec: LinkSpec,
    tx: Option<flume::Sender<Transfer>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<LinkStats>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Link({:?})", self.spec)
    }
}

struct Due {
    at: Instant,
    seq: u64,
    deliver: Deliver,
}
impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

impl Link {
    pub fn spawn(spec: LinkSpec, tracer: Option<Arc<Tracer>>) -> Result<Link> {
        let (tx, rx) = flume::unbounded::<Transfer>();
        let stats = Arc::new(LinkStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("troupe-link".into())
            .spawn(move || link_loop(spec, rx, st, tracer))
            .map_err(|e| ActorError::Startup(format!("link thread: {e}")))?;
        Ok(Link {
            spec,
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    pub fn spec(&self) -> LinkSpec {
        self.spec
    }

    /// Moves `bytes` across the link; `deliver` runs on the link thread when they arrive.
    pub fn send(&self, what: &'static str, bytes: usize, deliver: impl FnOnce() + Send + 'static) {
        match &self.tx {
            Some(tx) => {
                if let Err(flume::SendError(t)) = tx.send(Transfer {
                    what,
                    bytes,
                    deliver: Box::new(deliver),
                }) {
                    (t.deliver)();
                }
            }
            None => deliver(),
        }
    }
}

fn link_loop(
    spec: LinkSpec,
    rx: flume::Receiver<Transfer>,
    stats: Arc<LinkStats>,
    tracer: Option<Arc<Tracer>>,
) {
    let mut wire_free = Instant::now();
    let mut busy_until = Instant::now();
    let mut pending: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut open = true;
    while open || !pending.is_empty() {
        let now = Instant::now();
        while pending.peek().is_some_and(|d| d.0.at <= now) {
            if let Some(Reverse(d)) = pending.pop() {
                (d.deliver)();
            }
        }
        let next = pending.peek().map(|d| d.0.at);
        let got = match (open, next) {
            (true, Some(at)) => match rx.recv_deadline(at) {
                Ok(t) => Some(t),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            },
            (true, None) => match rx.recv() {
                Ok(t) => Some(t),
                Err(_) => {
                    open = false;
                    None
                }
            },
            (false, Some(at)) => {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                None
            }
            (false, None) => None,
        };
        if let Some(t) = got {
            let submitted = Instant::now();
            let wire = Duration::from_secs_f64(t.bytes as f64 * 8.0 / (spec.gbps * 1e9));
            let start = wire_free.max(submitted);
            wire_free = start + wire;
            let at = wire_free + spec.latency;
            stats.transfers.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(t.bytes as u64, Ordering::Relaxed);
            stats.busy_ns.fetch_add(
                at.saturating_duration_since(busy_until.max(submitted))
                    .as_nanos() as u64,
                Ordering::Relaxed,
            );
            busy_until = busy_until.max(at);
            if let Some(tr) = &tracer {
                tr.link_span(t.what, t.bytes, submitted, at);
            }
            seq += 1;
            pending.push(Reverse(Due {
                at,
                seq,
                deliver: t.deliver,
            }));
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
