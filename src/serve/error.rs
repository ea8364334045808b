//! `ApiError`: every failure the server answers with, in OpenAI's JSON shape
//! `{"error": {"message", "type", "param", "code"}}` and its HTTP status (400 bad request,
//! 401 missing or wrong key, 404 unknown model or route, 413 body over the limit, 503 queue
//! full with `Retry-After`, 500 a failure inside the engine).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use troupe_actors::ActorError;
use troupe_engine::EngineError;

/// Seconds a client is asked to wait after a 503 (queue full).
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// One error response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`, ...
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }
    /// 400: a field with a wrong type or value.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param.to_string());
        e
    }
    /// 400: the body is not a JSON object.
    pub fn bad_json(message: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.code = Some("invalid_json");
        e
    }
    /// 401: `--api-key` is set and the request does not carry it.
    pub fn unauthorized() -> Self {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or incorrect API key: send `Authorization: Bearer KEY`",
        );
        e.code = Some("invalid_api_key");
        e
    }
    /// 404: a model this server does not serve.
    pub fn unknown_model(asked: &str, served: &str) -> Self {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("the model `{asked}` does not exist; this server serves `{served}`"),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }
    /// 404: no such route.
    pub fn no_route(path: &str) -> Self {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no route {path}"),
        );
        e.code = Some("unknown_url");
        e
    }
    /// 413: the body is larger than the server takes.
    pub fn too_large(limit: usize) -> Self {
        let mut e = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body over the limit of {limit} bytes"),
        );
        e.code = Some("body_too_large");
        e
    }
    /// 503: `--max-queue` requests are already in the server.
    pub fn queue_full(max: usize) -> Self {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            format!("the server holds its maximum of {max} requests; retry later"),
        );
        e.code = Some("queue_full");
        e
    }
    /// 500: the engine failed while serving a valid request.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// An engine error: the request's fault (400, naming the field) or the engine's (500; 503
    /// when the engine is shutting down).
    pub fn from_actor(e: &ActorError) -> Self {
        match e.engine() {
            Some(EngineError::TooLong { .. }) => {
                let mut a = ApiError::invalid("prompt", e.to_string());
                a.code = Some("context_length_exceeded");
                a
            }
            Some(EngineError::TokenOutOfRange { .. } | EngineError::EmptyPrompt) => {
                ApiError::invalid("prompt", e.to_string())
            }
            Some(EngineError::InvalidRequest { field, .. }) => {
                ApiError::invalid(&field.clone(), e.to_string())
            }
            Some(EngineError::Tokenizer { .. }) => ApiError::invalid("prompt", e.to_string()),
            _ if matches!(e, ActorError::Closed(_)) => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_busy",
                    e.to_string(),
                );
                a.code = Some("shutting_down");
                a
            }
            _ => ApiError::internal(e.to_string()),
        }
    }

    /// The JSON body `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body().to_string(),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_openais() {
        let e = ApiError::invalid("top_p", "2: must be in (0, 1]");
        let b = e.body();
        assert_eq!(b["error"]["param"], "top_p");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(b["error"]["code"].is_null());
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn queue_full_carries_retry_after() {
        let r = ApiError::queue_full(3).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn too_long_prompt_is_a_400() {
        let e = ActorError::from(EngineError::TooLong { len: 9, limit: 4 });
        let a = ApiError::from_actor(&e);
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.code, Some("context_length_exceeded"));
    }
}
