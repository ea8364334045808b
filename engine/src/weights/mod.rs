//! Weights: the `Weight` handle, safetensors checkpoints through mmap, and seeded random weights.

pub mod random;
mod safetensors_file;
mod weight;

pub use safetensors_file::Checkpoint;
pub use weight::Weight;
