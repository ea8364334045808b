//! The simulated interconnect between routers and expert groups on different nodes
//! (`[placement.link]`). A transfer of `b` bytes occupies the wire for `8·b / gbps` ns after the
//! previous transfer left it (bandwidth is shared, transfers queue) and arrives `latency` later
//! (latency pipelines). Booking a transfer returns its arrival time; the message itself is handed
//! over at once, tagged with that time, and the receiving **stream** does not start the kernel
//! that consumes it before then (`Stream::run_at`). No thread sleeps or wakes for the link, and
//! nothing waits on a compute stream while it has other work, so compute overlapping transfers
//! shows up in wall time and in the trace (link track, pid 2: one span per transfer, tagged with
//! its bytes, layer, micro-batch and step). Busy time is also exported as
//! `troupe_link_busy_seconds_total` (see `metrics.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::overlap::Overlap;
use crate::placement::LinkSpec;
use crate::trace::Tracer;

/// What a transfer belongs to (trace tags; `None` when the booking site does not know).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferTags {
    pub layer: Option<usize>,
    pub micro_batch: Option<usize>,
    pub step: Option<u64>,
}

/// Totals since start: for the "fraction of link time hidden" measurement.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub transfers: AtomicU64,
    pub bytes: AtomicU64,
    /// Wall time during which at least one transfer was in flight (union of the
    /// booking→arrival intervals), in ns.
    pub busy_ns: AtomicU64,
    /// Link busy time while no stream ran a kernel (see `overlap.rs`).
    pub overlap: Arc<Overlap>,
}

struct Wire {
    free: Instant,
    busy_until: Instant,
}

/// The link of one runtime.
pub struct Link {
    spec: LinkSpec,
    wire: Mutex<Wire>,
    tracer: Option<Arc<Tracer>>,
    busy_seconds: metrics::Gauge,
    pub stats: Arc<LinkStats>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Link({:?})", self.spec)
    }
}

impl Link {
    /// A link; `overlap` is shared with the runtime's streams.
    pub fn new(spec: LinkSpec, tracer: Option<Arc<Tracer>>, overlap: Arc<Overlap>) -> Link {
        let now = Instant::now();
        Link {
            spec,
            wire: Mutex::new(Wire {
                free: now,
                busy_until: now,
            }),
            tracer,
            busy_seconds: crate::metrics::link_busy_seconds(),
            stats: Arc::new(LinkStats {
                overlap,
                ..LinkStats::default()
            }),
        }
    }

    pub fn spec(&self) -> LinkSpec {
        self.spec
    }

    /// Books a transfer of `bytes` now, untagged; returns when it arrives.
    pub fn book(&self, what: &'static str, bytes: usize) -> Instant {
        self.book_tagged(what, bytes, TransferTags::default())
    }

    /// Books a transfer of `bytes` now, its trace span tagged with `tags`; returns when it
    /// arrives.
    pub fn book_tagged(&self, what: &'static str, bytes: usize, tags: TransferTags) -> Instant {
        let now = Instant::now();
        let wire = wire_time(bytes, self.spec.gbps);
        let (at, busy) = {
            let mut w = self.wire.lock().unwrap_or_else(|p| p.into_inner());
            let start = w.free.max(now);
            w.free = later(start, wire);
            let at = later(w.free, self.spec.latency);
            let busy = at.saturating_duration_since(w.busy_until.max(now));
            w.busy_until = w.busy_until.max(at);
            (at, busy)
        };
        let s = &self.stats;
        s.transfers.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        s.busy_ns
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        if !busy.is_zero() {
            self.busy_seconds.increment(busy.as_secs_f64());
        }
        s.overlap.transfer(at);
        if let Some(t) = &self.tracer {
            t.link_span(what, bytes, &tags, now, at);
        }
        at
    }
}

/// How long `bytes` occupy a wire of `gbps` Gbit/s. Never panics: a time too long for a
/// `Duration` (only reachable with a spec that skipped `LinkSpec::new`) saturates.
fn wire_time(bytes: usize, gbps: f64) -> Duration {
    Duration::try_from_secs_f64(bytes as f64 * 8.0 / (gbps * 1e9)).unwrap_or(Duration::MAX)
}

/// `t + d`, saturating at about a year from `t` instead of overflowing `Instant`.
fn later(t: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    t.checked_add(d.min(YEAR)).unwrap_or(t)
}

/// Removes Linux's default 50 µs timer slack from the calling thread, so a timed wait for an
/// arrival ends on time.
pub(crate) fn precise_timers() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain prctl on the calling thread with valid arguments; failure is harmless.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_transfer_times_saturate_instead_of_panicking() {
        // 1 GB over 1e-300 Gbit/s: infinite seconds (panicked in `Duration::from_secs_f64`).
        assert_eq!(wire_time(1 << 30, 1e-300), Duration::MAX);
        assert_eq!(wire_time(1 << 30, 0.0), Duration::MAX);
        assert_eq!(wire_time(1000, 10.0), Duration::from_nanos(800));
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
        // A link built around `LinkSpec::new` books such a transfer without panicking.
        let spec = LinkSpec {
            latency: Duration::MAX,
            gbps: 1e-300,
        };
        let link = Link::new(spec, None, Arc::default());
        assert!(link.book("dispatch", 1 << 20) > now);
    }
}
