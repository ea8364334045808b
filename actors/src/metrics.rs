//! Metrics through the `metrics` facade (no-ops unless a recorder is installed) and the
//! Prometheus HTTP listener behind `--metrics-addr`. Names:
//! - `troupe_actor_messages_total{actor}`, `troupe_actor_busy_microseconds_total{actor}`,
//!   `troupe_actor_queue_depth{actor}` (data-plane channel length when a message is taken);
//! - `troupe_actor_restarts_total{actor}`, `troupe_actor_down_total{actor}`;
//! - `troupe_expert_tokens_total{layer,expert}` (rows dispatched to each routed expert);
//! - `troupe_tokens_generated_total`, `troupe_tokens_per_second` (last decode step),
//!   `troupe_forward_passes_total`;
//! - `troupe_link_busy_seconds_total` (wall time some transfer was in flight on the simulated
//!   link) and `troupe_link_exposed_seconds_total` (link busy while no stream ran a kernel),
//!   summed over the process's runtimes. Fractional seconds, so they are exported as gauges
//!   that only grow (a `metrics` counter holds integers); `1 − exposed / busy` is the link time
//!   compute hid;
//! - `troupe_kv_pages_in_use` (KV cache pages held by the batcher's requests, set after every
//!   step and every cancellation; 0 when idle; the prefix cache's other pages not counted);
//! - with the prefix cache on: `troupe_prefix_cache_pages` (pages it holds),
//!   `troupe_prefix_cache_prompt_tokens_total` (prompt tokens looked up),
//!   `troupe_prefix_cache_hit_tokens_total` (of those, served from the cache),
//!   `troupe_prefix_cache_hit_rate` (their ratio since start), `troupe_prefix_cache_evicted_pages_total`.
//!
//! [`prometheus_handle`] installs the same recorder without a listener, for a server that
//! renders `/metrics` itself (`troupe serve`).
//!
//! The per-message and per-step metrics use handles registered once (per actor when it is
//! built, per layer and expert on first use) so their labels are not re-allocated on every
//! message: with no recorder installed, recording allocates nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge};
pub use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::{ActorError, Result};

static INSTALLED: OnceLock<Mutex<Option<SocketAddr>>> = OnceLock::new();

/// The recorder [`prometheus_handle`] installed (the process has at most one recorder).
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// `troupe_expert_tokens_total` handles by (layer, expert), registered on first use; emptied
/// when [`serve_prometheus`] installs its recorder (handles registered before are no-ops).
static EXPERT_TOKENS: Mutex<Option<HashMap<(usize, usize), Counter>>> = Mutex::new(None);

/// Installs the Prometheus recorder and serves `/metrics` on `addr`. The recorder is
/// process-global: a second call with the same address is a no-op, another address is an error.
pub fn serve_prometheus(addr: SocketAddr) -> Result<()> {
    let cell = INSTALLED.get_or_init(|| Mutex::new(None));
    let mut g = cell.lock().unwrap_or_else(|p| p.into_inner());
    match *g {
        Some(a) if a == addr => return Ok(()),
        Some(a) => {
            return Err(ActorError::Startup(format!(
            "metrics already served on {a}; cannot also serve on {addr} (one recorder per process)"
        )))
        }
        None => {}
    }
    // Installed from a plain thread so the exporter gets its own runtime and outlives ours.
    let r = std::thread::spawn(move || {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| ActorError::Startup("metrics exporter thread panicked".into()))?;
    r.map_err(|e| ActorError::Startup(format!("metrics listener on {addr}: {e}")))?;
    *g = Some(addr);
    *EXPERT_TOKENS.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Ok(())
}

/// Installs the Prometheus recorder without an HTTP listener and returns the handle that renders
/// it (the text `/metrics` serves). A second call returns the same handle; after
/// [`serve_prometheus`] (which owns the process's recorder) it is an error.
pub fn prometheus_handle() -> Result<PrometheusHandle> {
    let mut g = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = g.as_ref() {
        return Ok(h.clone());
    }
    let listening = INSTALLED
        .get()
        .and_then(|cell| *cell.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(a) = listening {
        return Err(ActorError::Startup(format!(
            "metrics already served on {a} (one recorder per process)"
        )));
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| ActorError::Startup(format!("metrics recorder: {e}")))?;
    *EXPERT_TOKENS.lock().unwrap_or_else(|p| p.into_inner()) = None;
    *g = Some(handle.clone());
    Ok(handle)
}

/// The per-message metrics of one block actor, registered when the actor is built.
#[derive(Clone)]
pub(crate) struct ActorMetrics {
    messages: Counter,
    busy_us: Counter,
    queue_depth: Gauge,
}

impl ActorMetrics {
    pub(crate) fn new(actor: &str) -> Self {
        ActorMetrics {
            messages: metrics::counter!("troupe_actor_messages_total", "actor" => actor.to_string()),
            busy_us: metrics::counter!("troupe_actor_busy_microseconds_total", "actor" => actor.to_string()),
            queue_depth: metrics::gauge!("troupe_actor_queue_depth", "actor" => actor.to_string()),
        }
    }
    /// One message handled in `busy`, with `queue_depth` envelopes waiting when it was taken.
    pub(crate) fn message(&self, busy: Duration, queue_depth: usize) {
        self.messages.increment(1);
        self.busy_us.increment(busy.as_micros() as u64);
        self.queue_depth.set(queue_depth as f64);
    }
}

pub(crate) fn actor_restart(actor: &str) {
    metrics::counter!("troupe_actor_restarts_total", "actor" => actor.to_string()).increment(1);
}

pub(crate) fn actor_down(actor: &str) {
    metrics::counter!("troupe_actor_down_total", "actor" => actor.to_string()).increment(1);
}

pub(crate) fn expert_tokens(layer: usize, expert: usize, rows: usize) {
    let mut g = EXPERT_TOKENS.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(HashMap::new)
        .entry((layer, expert))
        .or_insert_with(|| metrics::counter!("troupe_expert_tokens_total", "layer" => layer.to_string(), "expert" => expert.to_string()))
        .increment(rows as u64);
}

pub(crate) fn step_done(tokens: usize, elapsed: Duration) {
    metrics::counter!("troupe_tokens_generated_total").increment(tokens as u64);
    metrics::counter!("troupe_forward_passes_total").increment(1);
    if elapsed > Duration::ZERO {
        metrics::gauge!("troupe_tokens_per_second").set(tokens as f64 / elapsed.as_secs_f64());
    }
}

pub(crate) fn kv_pages_in_use(pages: usize) {
    metrics::gauge!("troupe_kv_pages_in_use").set(pages as f64);
}

/// The prefix cache's counters as of now.
pub(crate) fn prefix_cache(s: &troupe_engine::model::PrefixCacheStats) {
    metrics::gauge!("troupe_prefix_cache_pages").set(s.cached_pages as f64);
    metrics::counter!("troupe_prefix_cache_prompt_tokens_total").absolute(s.prompt_tokens);
    metrics::counter!("troupe_prefix_cache_hit_tokens_total").absolute(s.hit_tokens);
    metrics::counter!("troupe_prefix_cache_evicted_pages_total").absolute(s.evicted_pages);
    metrics::gauge!("troupe_prefix_cache_hit_rate").set(s.hit_rate());
}

/// `troupe_link_busy_seconds_total`, registered once per link (`Link::new`).
pub(crate) fn link_busy_seconds() -> Gauge {
    metrics::gauge!("troupe_link_busy_seconds_total")
}

/// `troupe_link_exposed_seconds_total`, registered once per runtime (`Overlap::default`).
pub(crate) fn link_exposed_seconds() -> Gauge {
    metrics::gauge!("troupe_link_exposed_seconds_total")
}
