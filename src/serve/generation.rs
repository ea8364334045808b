//! One admitted request from submission to its last piece of text: the bounded admission
//! (`--max-queue`: a request over it gets 503), the engine's token stream, stop strings, the
//! request metrics, and cancellation (dropping a `Running` drops its `TokenStream`, which stops
//! the request before its next decode step and returns its KV pages).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use troupe_actors::{FinishReason, TokenStream};
use troupe_engine::generate::GenerateRequest;
use troupe_engine::sampling::SamplingParams;

use super::error::ApiError;
use super::metrics;
use super::stop::StopMatcher;
use super::AppState;

/// Requests admitted and not finished, bounded by `max`.
pub struct Admission {
    in_flight: AtomicUsize,
    max: usize,
}

/// One admitted request's place; given back when dropped.
pub struct Ticket {
    admission: Arc<Admission>,
}

impl Admission {
    pub fn new(max: usize) -> Arc<Admission> {
        Arc::new(Admission {
            in_flight: AtomicUsize::new(0),
            max: max.max(1),
        })
    }
    /// A place, or 503 when `max` requests are in.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, ApiError> {
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(n) => {
                metrics::in_flight(n + 1);
                Ok(Ticket {
                    admission: self.clone(),
                })
            }
            Err(_) => {
                metrics::rejected();
                Err(ApiError::queue_full(self.max))
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let n = self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
        metrics::in_flight(n.saturating_sub(1));
    }
}

/// What to generate after a prompt.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

/// A stretch of generated text.
#[derive(Debug, Default)]
pub struct Piece {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// `stop` or `length` on the request's last piece.
    pub finish: Option<&'static str>,
}

/// A request in the engine.
pub struct Running {
    stream: TokenStream,
    _ticket: Ticket,
    stop: StopMatcher,
    arrived: Instant,
    last_token: Option<Instant>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    done: bool,
}

/// Admits and submits `job` (a full queue: 503; a request the model cannot take: 400).
pub async fn start(state: &AppState, job: Job, arrived: Instant) -> Result<Running, ApiError> {
    let ticket = state.admission.admit()?;
    let prompt_tokens = job.prompt.len();
    let request = GenerateRequest::new(job.prompt, job.max_tokens)
        .sampling(job.sampling)
        .stop_at_eos(!job.ignore_eos);
    let stream = state
        .engine
        .generate(request)
        .await
        .map_err(|e| ApiError::from_actor(&e))?;
    metrics::waiting_first_token(1.0);
    Ok(Running {
        stream,
        _ticket: ticket,
        stop: StopMatcher::new(job.stop),
        arrived,
        last_token: None,
        prompt_tokens,
        completion_tokens: 0,
        done: false,
    })
}

impl Running {
    /// The next piece of text; `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<Piece, ApiError>> {
        if self.done {
            return None;
        }
        let item = self.stream.next().await;
        let now = Instant::now();
        match self.last_token.replace(now) {
            None => {
                metrics::waiting_first_token(-1.0);
                if item.is_some() {
                    metrics::time_to_first_token(now - self.arrived);
                }
            }
            Some(prev) => metrics::inter_token(now - prev),
        }
        let event = match item {
            None => {
                self.done = true;
                return Some(Err(ApiError::internal(
                    "the engine ended the request without a last token",
                )));
            }
            Some(Err(e)) => {
                self.done = true;
                return Some(Err(ApiError::from_actor(&e)));
            }
            Some(Ok(event)) => event,
        };
        self.completion_tokens += 1;
        let (mut text, hit) = self.stop.push(&event.text);
        let finish = if hit {
            // The engine stops at once; no more tokens are computed for this request.
            self.stream.cancel();
            Some("stop")
        } else {
            match event.finish {
                Some(reason) => {
                    text.push_str(&self.stop.flush());
                    Some(match reason {
                        FinishReason::Stop => "stop",
                        FinishReason::Length => "length",
                    })
                }
                None => None,
            }
        };
        self.done = finish.is_some();
        Some(Ok(Piece {
            text,
            token_ids: vec![event.token],
            finish,
        }))
    }

    /// Runs to the end: all the text, every token id, the finish reason.
    pub async fn collect(mut self) -> Result<(Piece, usize, usize), ApiError> {
        let mut all = Piece::default();
        while let Some(piece) = self.next().await {
            let piece = piece?;
            all.text.push_str(&piece.text);
            all.token_ids.extend(piece.token_ids);
            all.finish = piece.finish.or(all.finish);
        }
        Ok((all, self.prompt_tokens, self.completion_tokens))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.last_token.is_none() {
            // Dropped (client gone) before its first token.
            metrics::waiting_first_token(-1.0);
        }
    }
}
