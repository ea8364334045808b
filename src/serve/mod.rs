//! `troupe::serve`: an OpenAI-compatible HTTP server on [`Engine`] (axum, HTTP/1), itself an
//! example of embedding the library. `Server::bind(engine, options)` listens (port 0 picks a
//! free port), `Server::run(shutdown)` serves until `shutdown` resolves. `troupe serve` is the
//! command around it (`src/cli/serve.rs`).
//!
//! The files: `routes.rs` (endpoints, auth, streaming), `request.rs` (bodies → typed fields,
//! 400s naming the field), `generation.rs` (admission under `--max-queue`, the token stream,
//! stop strings, request metrics), `responses.rs` (OpenAI's JSON and SSE chunks),
//! `chat_template.rs` (messages → prompt), `stop.rs`, `error.rs` (OpenAI's error shape and
//! status codes), `metrics.rs`.

mod chat_template;
mod error;
mod generation;
mod metrics;
mod request;
mod responses;
mod routes;
mod stop;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use troupe_actors::metrics::PrometheusHandle;

use crate::Engine;
pub use chat_template::{ChatTemplate, TemplateError};
pub use error::{ApiError, RETRY_AFTER_SECONDS};
use generation::Admission;

/// Requests the server holds at once (queued or generating) by default; one more gets 503.
pub const DEFAULT_MAX_QUEUE: usize = 256;
/// The largest request body taken by default (bytes); a larger one gets 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 << 20;

/// How a [`Server`] serves.
pub struct ServeOptions {
    /// Where to listen (port 0: a free port; see [`Server::local_addr`]).
    pub addr: SocketAddr,
    /// The id requests must name in `model` ([`model_id`] of the model path).
    pub model_id: String,
    /// When set, `/v1/*` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests held at once (queued or generating); more get 503 with `Retry-After`.
    pub max_queue: usize,
    /// The largest request body, in bytes; more gets 413.
    pub max_body_bytes: usize,
    /// How chat messages become a prompt ([`ChatTemplate::for_model`]).
    pub chat_template: ChatTemplate,
    /// Renders `/metrics` (`troupe_actors::metrics::prometheus_handle()`, installed before the
    /// engine starts so the engine's metrics are recorded). `None`: `/metrics` answers 500.
    pub metrics: Option<PrometheusHandle>,
}

impl ServeOptions {
    /// Defaults for `model_id` on loopback port 8080.
    pub fn new(model_id: impl Into<String>) -> Self {
        ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            model_id: model_id.into(),
            api_key: None,
            max_queue: DEFAULT_MAX_QUEUE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            chat_template: ChatTemplate::Plain,
            metrics: None,
        }
    }
}

/// The model id of a model path: the folder's name or the graph file's stem.
pub fn model_id(model: &Path) -> String {
    let name = if model.is_dir() {
        model.file_name()
    } else {
        model.file_stem()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "model".into())
}

/// What every handler reads.
pub struct AppState {
    engine: Arc<Engine>,
    model_id: String,
    api_key: Option<String>,
    admission: Arc<Admission>,
    template: ChatTemplate,
    /// The model's positions: a prompt plus its tokens must fit.
    context: usize,
    max_body_bytes: usize,
    metrics: Option<PrometheusHandle>,
    /// When the server started (Unix seconds; `/v1/models`' `created`).
    created: u64,
}

/// A bound server.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    /// Folds recorded histogram samples into their summaries every few seconds; without it,
    /// samples pile up between two scrapes of `/metrics` (the recorder has no listener task).
    upkeep: Option<Upkeep>,
}

/// How often the metrics upkeep runs.
const UPKEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// The metrics upkeep task, stopped when the server is dropped.
struct Upkeep(tokio::task::JoinHandle<()>);

impl Upkeep {
    fn spawn(handle: PrometheusHandle) -> Upkeep {
        Upkeep(tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_PERIOD);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        }))
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Server {
    /// Listens on `options.addr` with `engine` behind it.
    pub async fn bind(engine: Arc<Engine>, options: ServeOptions) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(options.addr).await?;
        metrics::register();
        let upkeep = options.metrics.clone().map(Upkeep::spawn);
        let state = AppState {
            context: engine.model().spec.max_position_embeddings,
            engine,
            model_id: options.model_id,
            api_key: options.api_key,
            admission: Admission::new(options.max_queue),
            template: options.chat_template,
            max_body_bytes: options.max_body_bytes,
            metrics: options.metrics,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        Ok(Server {
            listener,
            router: routes::router(Arc::new(state)),
            upkeep,
        })
    }

    /// The address it listens on (the port chosen, for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets open responses finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let _upkeep = self.upkeep;
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
