//! `SimError`: what can go wrong building or running a simulation; each input error names the
//! file or field at fault.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SimError {
    /// A hardware file that cannot be read or parsed, or a field out of range.
    #[error("hardware `{source_name}`: {field}: {message}")]
    Hardware {
        source_name: String,
        field: String,
        message: String,
    },
    /// `--hardware NAME` that is neither a file nor a built-in.
    #[error("no hardware file or built-in named `{0}` (built-ins: h800, h100, h200, cpu)")]
    UnknownHardware(String),
    /// A workload file line that is not a request.
    #[error("workload {path}:{line}: {message}")]
    Workload {
        path: String,
        line: usize,
        message: String,
    },
    /// A simulation parameter out of range (`gpus`, `seqs`, ...).
    #[error("{field}: {message}")]
    Parameter { field: String, message: String },
    /// The placement or the schedule refused (the runtime's own checks).
    #[error(transparent)]
    Actor(#[from] troupe_actors::ActorError),
    /// The model description refused.
    #[error(transparent)]
    Engine(#[from] troupe_engine::EngineError),
    /// Writing a trace or an SVG.
    #[error("writing {path}: {message}")]
    Output { path: String, message: String },
}

impl SimError {
    pub fn parameter(field: &str, message: impl Into<String>) -> SimError {
        SimError::Parameter {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = SimError> = std::result::Result<T, E>;
