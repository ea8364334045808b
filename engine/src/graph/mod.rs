//! Graph definition: the model spec (`[model]`) and its validation, graph files (TOML), HF config
//! import, the rope table a spec implies, and the compiled IR plan.

pub mod file;
pub mod hf_config;
pub mod ir;
pub mod rope;
pub mod spec;
mod toml_error;
pub mod validate;

pub use file::{GraphFile, LoadedGraph, WeightsSource};
pub use ir::Plan;
pub use spec::ModelSpec;
