//! `GpuError`: everything the GPU path can fail with, each naming the kernel, tensor or field.

use troupe_engine::EngineError;

/// The one message shown when `--device cuda` is asked for on a machine without a driver.
pub const NO_DRIVER_MESSAGE: &str = "no CUDA driver (libcuda.so.1) found: --device cuda needs an \
NVIDIA GPU; use --device cpu or --device ptx-interp";

/// Errors of the GPU backends and the launch-configuration layer.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{NO_DRIVER_MESSAGE}")]
    NoDriver,
    #[error("CUDA driver call `{call}` failed: {message}")]
    Driver { call: String, message: String },
    #[error("kernel `{kernel}`: {message}")]
    Launch { kernel: String, message: String },
    #[error(
        "kernel `{kernel}`: field `{field}` = {value} is outside the supported range ({limit})"
    )]
    Limit {
        kernel: String,
        field: String,
        value: usize,
        limit: String,
    },
    #[error("kernel `{kernel}`: tensor `{tensor}` has shape {found:?}, expected {expected}")]
    Shape {
        kernel: String,
        tensor: String,
        found: Vec<usize>,
        expected: String,
    },
    #[error("no kernel named `{0}` in the embedded PTX library")]
    UnknownKernel(String),
    /// A fault reported by the PTX interpreter (parse error, bad launch, out-of-bounds access,
    /// shared-memory race, ...), kept typed so tests can match on it.
    #[error("PTX interpreter, kernel `{kernel}`: {error}")]
    Ptx {
        kernel: String,
        #[source]
        error: Box<crate::interp::PtxError>,
    },
}

impl GpuError {
    pub fn launch(kernel: &str, message: impl Into<String>) -> Self {
        GpuError::Launch {
            kernel: kernel.to_string(),
            message: message.into(),
        }
    }
    pub fn limit(kernel: &str, field: &str, value: usize, limit: impl Into<String>) -> Self {
        GpuError::Limit {
            kernel: kernel.to_string(),
            field: field.to_string(),
            value,
            limit: limit.into(),
        }
    }
}

/// GPU errors surface through the engine's `Backend` trait as `EngineError::Backend`.
pub fn to_engine(backend: &str, e: GpuError) -> EngineError {
    EngineError::backend(backend, e)
}

pub type GpuResult<T> = std::result::Result<T, GpuError>;
