//! How much link time compute hides. Streams report when a kernel starts and ends; the link
//! reports each transfer's in-flight interval (booking → delivery) when it books it. **Exposed**
//! time is wall time during which at least one transfer is in flight while no stream runs a
//! kernel — link time nothing hides. With the link's busy time (any transfer in flight) it gives
//! `hidden = 1 − exposed / busy`, measured directly rather than as a difference of two noisy wall
//! times. Exposed time is also exported as `troupe_link_exposed_seconds_total` (`metrics.rs`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
struct State {
    kernels: usize,
    /// Delivery times of the transfers in flight.
    in_flight: BinaryHeap<Reverse<Instant>>,
    since: Instant,
    exposed_ns: u64,
    exposed_seconds: metrics::Gauge,
}

impl State {
    /// Accounts wall time up to `t` (retiring transfers delivered before it).
    fn advance(&mut self, t: Instant) {
        while let Some(&Reverse(end)) = self.in_flight.peek() {
            if end > t {
                break;
            }
            self.account(end);
            self.in_flight.pop();
        }
        self.account(t);
    }
    fn account(&mut self, t: Instant) {
        if t <= self.since {
            return;
        }
        if !self.in_flight.is_empty() && self.kernels == 0 {
            let d = t - self.since;
            self.exposed_ns += d.as_nanos() as u64;
            self.exposed_seconds.increment(d.as_secs_f64());
        }
        self.since = t;
    }
}

/// Shared by every stream and the link of one runtime.
#[derive(Debug)]
pub struct Overlap(Mutex<State>);

impl Default for Overlap {
    fn default() -> Self {
        Overlap(Mutex::new(State {
            kernels: 0,
            in_flight: BinaryHeap::new(),
            since: Instant::now(),
            exposed_ns: 0,
            exposed_seconds: crate::metrics::link_exposed_seconds(),
        }))
    }
}

impl Overlap {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// A stream starts (`true`) or ends (`false`) a kernel.
    pub fn kernel(&self, start: bool) {
        let mut s = self.state();
        s.advance(Instant::now());
        s.kernels = if start {
            s.kernels + 1
        } else {
            s.kernels.saturating_sub(1)
        };
    }
    /// A transfer booked now, delivered at `until`.
    pub fn transfer(&self, until: Instant) {
        let mut s = self.state();
        s.advance(Instant::now());
        s.in_flight.push(Reverse(until));
    }
    /// Exposed link time so far, in ns (see the module doc).
    pub fn exposed_ns(&self) -> u64 {
        let mut s = self.state();
        s.advance(Instant::now());
        s.exposed_ns
    }
}
