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
    #[error("tensor `{tensor}`: unsupported dtype {dtype} (supported: F32, BF16, F16)")]
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
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("kernel `{kernel}`: {message}")]
    Kernel { kernel: String, message: String },
    #[error("backend `{backend}`: {message}")]
    Backend { backend: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

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
    pub fn spec(field: &str, message: impl Into<String>) -> Self {
        EngineError::InvalidSpec {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
