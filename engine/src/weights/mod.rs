//! Weights: the `Weight` handle, safetensors checkpoints through mmap, and seeded random weights.

pub mod random;
mod safetensors_file;
pub mod safetensors_header;
mod weight;

pub use safetensors_file::Checkpoint;
pub use weight::Weight;
