//! Graph definition: the model spec (`[model]`), graph files (TOML), HF config import, and the
//! compiled IR plan.

pub mod file;
pub mod hf_config;
pub mod ir;
pub mod spec;

pub use file::{GraphFile, LoadedGraph, WeightsSource};
pub use ir::Plan;
pub use spec::ModelSpec;
