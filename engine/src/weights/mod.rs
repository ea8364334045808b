//! Weights: the `Weight` handle, safetensors checkpoints through mmap, seeded random weights, and
//! FP8 block scales (`fp8`), and int8 weight-only quantisation (`int8`).

pub mod fp8;
pub mod int8;
pub mod random;
mod safetensors_file;
pub mod safetensors_header;
mod weight;

pub use fp8::BlockScales;
pub use safetensors_file::Checkpoint;
pub use weight::Weight;
