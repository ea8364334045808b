//! troupe-engine: the engine core — tensors, graph files and IR, CPU kernels, checkpoint loading,
//! tokenizer, and the sequential reference executor every other executor is checked against.
//!
//! Start at [`backend::Backend`] (the op set over handles a backend owns, [`device_tensor`]),
//! [`graph::spec::ModelSpec`] (what a model is), [`model::Model`] (a loaded model as typed
//! layers), [`model::kv`] (the paged KV cache) and [`executor::ReferenceExecutor`].

pub mod backend;
pub mod detokenizer;
pub mod device;
pub mod device_tensor;
pub mod dtype;
pub mod error;
pub mod executor;
pub mod files;
pub mod generate;
pub mod graph;
pub mod inspect;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod params;
pub mod pass_kinds;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;
pub mod weights;

pub use backend::Backend;
pub use device::DeviceId;
pub use device_tensor::{DeviceRouting, DeviceTensor};
pub use error::{EngineError, Result};
pub use tensor::Tensor;
