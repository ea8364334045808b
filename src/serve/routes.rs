//! The HTTP surface: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`
//! (and `/v1/models/{id}`), `GET /health`, `GET /metrics`, and a 404 in OpenAI's error shape
//! for anything else. `/v1/*` needs `Authorization: Bearer KEY` when the server has a key.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::error::ApiError;
use super::generation::{self, Job, Running};
use super::request::{self, Common, Prompt, DEFAULT_COMPLETION_TOKENS};
use super::responses::{event, Endpoint, Envelope, DONE};
use super::AppState;

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared without an early exit, so the time taken does not tell how much matched.
    let same = given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

fn body_bytes(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.max_body_bytes)
        } else {
            ApiError::bad_json(r.body_text())
        }
    })
}

fn check_model(state: &AppState, asked: &str) -> Result<(), ApiError> {
    if asked == state.model_id {
        Ok(())
    } else {
        Err(ApiError::unknown_model(asked, &state.model_id))
    }
}

fn respond_json(value: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// What every generation request goes through first, in this order: the key (401), the body
/// (413, or 400 when it is not a JSON object), the model it names (404).
fn open_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    authorize(state, headers)?;
    let m = request::object(&body_bytes(state, body)?)?;
    check_model(state, &request::model(&m)?)?;
    Ok(m)
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    completions_for(&state, &headers, body, arrived)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions_for(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let m = open_request(state, headers, body)?;
    let common = request::common(&m, &["max_tokens"], state.context)?;
    let prompt = match request::prompt(&m)? {
        Prompt::Ids(ids) => ids,
        Prompt::Text(text) => state
            .engine
            .tokenizer()
            .encode(&text)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
    };
    let max_tokens = common.max_tokens.unwrap_or(DEFAULT_COMPLETION_TOKENS);
    generate(
        state,
        Endpoint::Completions,
        prompt,
        max_tokens,
        common,
        arrived,
    )
    .await
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    chat_for(&state, &headers, body, arrived)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat_for(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let m = open_request(state, headers, body)?;
    let common = request::common(&m, &["max_tokens", "max_completion_tokens"], state.context)?;
    let messages = request::messages(&m)?;
    let rendered = state.template.render(&messages)?;
    let tokenizer = state.engine.tokenizer();
    let prompt = if rendered.add_bos {
        tokenizer.encode(&rendered.text)
    } else {
        tokenizer.encode_without_bos(&rendered.text)
    }
    .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    // Chat's default budget: the rest of the context (OpenAI's: no limit).
    let max_tokens = common
        .max_tokens
        .unwrap_or_else(|| (state.context.saturating_sub(prompt.len()) + 1).max(1));
    generate(state, Endpoint::Chat, prompt, max_tokens, common, arrived).await
}

/// Submits the request and answers: one JSON body, or a stream of server-sent events.
async fn generate(
    state: &AppState,
    endpoint: Endpoint,
    prompt: Vec<u32>,
    max_tokens: usize,
    common: Common,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let envelope = Envelope::new(endpoint, &state.model_id, common.return_token_ids);
    let job = Job {
        prompt,
        max_tokens,
        sampling: common.sampling,
        stop: common.stop,
        ignore_eos: common.ignore_eos,
    };
    let running = generation::start(state, job, arrived).await?;
    if !common.stream {
        let (all, prompt_tokens, completion_tokens) = running.collect().await?;
        return Ok(respond_json(&envelope.response(
            &all,
            prompt_tokens,
            completion_tokens,
        )));
    }
    let events = sse_events(envelope, running, common.include_usage);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events.map(Ok::<String, Infallible>)),
    )
        .into_response())
}

/// Where a stream is.
enum Phase {
    Start,
    Tokens,
    Usage,
    Done,
    End,
}

struct SseState {
    envelope: Envelope,
    running: Running,
    include_usage: bool,
    phase: Phase,
}

/// The events of a streamed request: (chat: the role chunk), one chunk per piece of text, the
/// usage chunk when asked, `[DONE]`. An error after the stream began is sent as an
/// `{"error": ...}` event before `[DONE]`. Dropping the stream (the client went away) drops the
/// request, which stops before its next decode step.
fn sse_events(
    envelope: Envelope,
    running: Running,
    include_usage: bool,
) -> impl futures_util::Stream<Item = String> + Send {
    let start = SseState {
        envelope,
        running,
        include_usage,
        phase: Phase::Start,
    };
    futures_util::stream::unfold(start, |mut s| async move {
        loop {
            match s.phase {
                Phase::Start => {
                    s.phase = Phase::Tokens;
                    if s.envelope.endpoint == Endpoint::Chat {
                        let chunk = s.envelope.role_chunk(s.include_usage);
                        return Some((event(&chunk), s));
                    }
                }
                Phase::Tokens => match s.running.next().await {
                    Some(Ok(piece)) => {
                        if piece.finish.is_some() {
                            s.phase = Phase::Usage;
                        } else if piece.text.is_empty() && !s.envelope.return_token_ids {
                            continue;
                        }
                        let chunk = s.envelope.chunk(&piece, s.include_usage);
                        return Some((event(&chunk), s));
                    }
                    Some(Err(e)) => {
                        s.phase = Phase::Done;
                        return Some((event(&e.body()), s));
                    }
                    None => s.phase = Phase::Usage,
                },
                Phase::Usage => {
                    s.phase = Phase::Done;
                    if s.include_usage {
                        let chunk = s
                            .envelope
                            .usage_chunk(s.running.prompt_tokens, s.running.completion_tokens);
                        return Some((event(&chunk), s));
                    }
                }
                Phase::Done => {
                    s.phase = Phase::End;
                    return Some((DONE.to_string(), s));
                }
                Phase::End => return None,
            }
        }
    })
}

fn model_card(state: &AppState) -> Value {
    json!({"id": state.model_id, "object": "model", "created": state.created, "owned_by": "troupe"})
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match authorize(&state, &headers) {
        Ok(()) => respond_json(&json!({"object": "list", "data": [model_card(&state)]})),
        Err(e) => e.into_response(),
    }
}

async fn model(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match authorize(&state, &headers).and_then(|()| check_model(&state, &id)) {
        Ok(()) => respond_json(&model_card(&state)),
        Err(e) => e.into_response(),
    }
}

async fn health() -> Response {
    respond_json(&json!({"status": "ok"}))
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::internal("no metrics recorder in this process").into_response(),
    }
}

async fn no_route(uri: Uri) -> Response {
    ApiError::no_route(uri.path()).into_response()
}
