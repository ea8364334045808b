//! The engine's error type: every failure names the file, tensor, field or token at fault.
//!
//! Input paths (graph files, checkpoints, prompts) never panic; they return one of these.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid graph file: {message}")]
    GraphFile { path: PathBuf, message: String },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: missing config key `{key}`")]
    MissingConfigKey { path: PathBuf, key: String },
    #[error("{path}: config key `{key}`: {message}")]
    BadConfigValue {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("unsupported architecture `{0}` (supported: DeepseekV3ForCausalLM, DeepseekV2ForCausalLM, MixtralForCausalLM, LlamaForCausalLM)")]
    UnsupportedArchitecture(String),
    #[error("model spec field `{field}`: {message}")]
    InvalidSpec { field: String, message: String },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{tensor}` is missing from the checkpoint ({searched})")]
    MissingTensor { tensor: String, searched: String },
    #[error("tensor `{tensor}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{tensor}`: unsupported dtype {dtype} (supported: F32, BF16, F16, F8_E4M3 with block scales)")]
    UnsupportedDtype { tensor: String, dtype: String },
    #[error("prompt token id {id} at position {position} is out of range (vocab size {vocab})")]
    TokenOutOfRange {
        id: i64,
        position: usize,
        vocab: usize,
    },
    #[error(
        "sequence of {len} tokens exceeds the position limit of {limit} (max_position_embeddings)"
    )]
    TooLong { len: usize, limit: usize },
    /// A request setting no sampler or stop rule can use; `field` names it.
    #[error("request field `{field}`: {message}")]
    InvalidRequest { field: String, message: String },
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("kernel `{kernel}`: {message}")]
    Kernel { kernel: String, message: String },
    /// A forward pass produced a NaN or an infinity; `layer` is the first step whose output
    /// held one (the weights or the model's parameters overflow f32 there).
    #[error("forward pass: non-finite value {value} in the output of {layer} (row {row}); the weights or the model parameters overflow there")]
    NonFinite {
        layer: PassSite,
        row: usize,
        value: f32,
    },
    /// A backend (GPU, interpreter, a caller's own) failed; `source` keeps its typed error.
    #[error("backend `{backend}`: {source}")]
    Backend {
        backend: String,
        #[source]
        source: BoxError,
    },
    /// A handle given to a backend that did not make it (data moves only by `upload`/`download`).
    #[error("op `{op}` on backend `{backend}` was given a tensor that lives on {found}; transfer it first")]
    WrongDevice {
        op: String,
        backend: String,
        found: String,
    },
    /// A sequence needed a KV-cache page and the layer's pool had none left (this request
    /// fails; others go on).
    #[error("KV cache full: layer {layer} has all {capacity_pages} pages of {page_tokens} tokens in use; raise the pool capacity or shorten requests")]
    KvCacheFull {
        layer: usize,
        capacity_pages: usize,
        page_tokens: usize,
    },
    /// An allocation the input asked for failed (the process keeps running).
    #[error("cannot allocate {bytes} bytes for {what}: not enough memory")]
    OutOfMemory { what: String, bytes: u64 },
    /// Input that is wrong in a way no more specific variant names (the message says what).
    #[error("{0}")]
    Invalid(String),
    /// A broken invariant inside troupe: a bug, never the user's input.
    #[error("internal error (a bug in troupe, please report it): {0}")]
    Internal(String),
}

/// A step of a forward pass whose output is checked for non-finite values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassSite {
    /// The token embedding.
    Embedding,
    /// Decoder layer `i` (HF index), after its feed-forward residual.
    Layer(usize),
    /// The final norm and LM head (the logits).
    Head,
}

impl std::fmt::Display for PassSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassSite::Embedding => f.write_str("the embedding"),
            PassSite::Layer(i) => write!(f, "decoder layer {i}"),
            PassSite::Head => f.write_str("the LM head"),
        }
    }
}

/// A boxed error from another layer, kept typed for `source()` and downcasting.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn kernel(kernel: &str, message: impl Into<String>) -> Self {
        EngineError::Kernel {
            kernel: kernel.to_string(),
            message: message.into(),
        }
    }
    /// A backend's typed error, named by the backend it came from.
    pub fn backend(backend: &str, source: impl Into<BoxError>) -> Self {
        EngineError::Backend {
            backend: backend.to_string(),
            source: source.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        EngineError::Internal(message.into())
    }
    pub fn spec(field: &str, message: impl Into<String>) -> Self {
        EngineError::InvalidSpec {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
