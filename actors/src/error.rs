//! `ActorError`: everything the actor runtime can fail with. Engine errors pass through
//! transparently (so a bad prompt reads exactly as it does on the reference executor); every
//! configuration error names the field at fault.

use troupe_engine::EngineError;

/// Errors of the actor runtime.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActorError {
    /// An engine error (bad prompt, shape mismatch, kernel failure), unchanged.
    #[error(transparent)]
    Engine(#[from] SharedEngineError),
    /// `[placement]` (or a placement override) is invalid; `field` is the TOML path.
    #[error("placement field `{field}`: {message}")]
    Placement { field: String, message: String },
    /// `[schedule]`, `--schedule` or `--stages` is invalid.
    #[error("schedule field `{field}`: {message}")]
    Schedule { field: String, message: String },
    /// `TROUPE_FAULT` (or a programmatic fault spec) is malformed.
    #[error("fault spec `{spec}`: {message}")]
    Fault { spec: String, message: String },
    /// An actor failed more often than its supervisor allows; requests that need it fail.
    #[error("actor `{actor}` is down: {reason}")]
    ActorDown {
        actor: String,
        reason: String,
        /// Rows of the micro-batch that needed the actor (`None`: all of them).
        rows: Option<Vec<usize>>,
    },
    /// A custom or built-in schedule drove a forward pass incorrectly.
    #[error("schedule `{schedule}`: {message}")]
    ScheduleMisuse { schedule: String, message: String },
    /// A kernel panicked on a stream worker (the stream itself survives).
    #[error("stream `{stream}`: kernel `{kernel}` panicked: {message}")]
    KernelPanic {
        stream: String,
        kernel: String,
        message: String,
    },
    /// The runtime is shut down or a channel closed under a request.
    #[error("actor runtime: {0}")]
    Closed(String),
    /// Spawning actors, threads, the tokio runtime or the metrics listener failed.
    #[error("actor runtime start-up: {0}")]
    Startup(String),
    /// Another rank of the deployment failed or could not be reached (`peer` = its rank).
    #[error("rank {peer}: {message}")]
    Transport { peer: usize, message: String },
    /// Writing the trace file failed.
    #[error("trace file {path}: {message}")]
    Trace { path: String, message: String },
}

/// `EngineError` is not `Clone`; errors here travel to several requests, so they are shared.
#[derive(Debug, Clone)]
pub struct SharedEngineError(pub std::sync::Arc<EngineError>);

impl std::fmt::Display for SharedEngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedEngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<EngineError> for ActorError {
    fn from(e: EngineError) -> Self {
        ActorError::Engine(SharedEngineError(std::sync::Arc::new(e)))
    }
}

impl ActorError {
    /// The engine error inside, if this is one.
    pub fn engine(&self) -> Option<&EngineError> {
        match self {
            ActorError::Engine(e) => Some(&e.0),
            _ => None,
        }
    }
    pub(crate) fn placement(field: impl Into<String>, message: impl Into<String>) -> Self {
        ActorError::Placement {
            field: field.into(),
            message: message.into(),
        }
    }
    pub(crate) fn schedule(field: impl Into<String>, message: impl Into<String>) -> Self {
        ActorError::Schedule {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ActorError> = std::result::Result<T, E>;
