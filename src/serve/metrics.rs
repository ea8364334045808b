//! The server's request metrics, beside the engine's (all through the `metrics` facade, rendered
//! by `/metrics`):
//! - `troupe_serve_requests_in_flight`: requests admitted and not finished (what `--max-queue`
//!   bounds);
//! - `troupe_serve_queue_depth`: admitted requests still waiting for their first token;
//! - `troupe_serve_rejected_total`: requests refused with 503 because the queue was full;
//! - `troupe_serve_time_to_first_token_seconds`: request arrival → first token (a summary);
//! - `troupe_serve_inter_token_seconds`: time between a request's consecutive tokens.

use std::time::Duration;

pub fn in_flight(n: usize) {
    metrics::gauge!("troupe_serve_requests_in_flight").set(n as f64);
}

pub fn waiting_first_token(delta: f64) {
    metrics::gauge!("troupe_serve_queue_depth").increment(delta);
}

pub fn rejected() {
    metrics::counter!("troupe_serve_rejected_total").increment(1);
}

pub fn time_to_first_token(t: Duration) {
    metrics::histogram!("troupe_serve_time_to_first_token_seconds").record(t.as_secs_f64());
}

pub fn inter_token(t: Duration) {
    metrics::histogram!("troupe_serve_inter_token_seconds").record(t.as_secs_f64());
}

/// Registers every series at zero, so `/metrics` lists them before the first request.
pub fn register() {
    in_flight(0);
    waiting_first_token(0.0);
    metrics::counter!("troupe_serve_rejected_total").absolute(0);
}
