//! troupe-sim: a discrete-event simulator of troupe's actor runtime. It resolves a graph file's
//! `[placement]` from the model description alone (no weights: DeepSeek-V3 671B simulates on a
//! laptop), drives the runtime's own [`Schedule`](troupe_actors::Schedule) implementations
//! through [`troupe_actors::pass::drive`] with a simulated [`PassDriver`](troupe_actors::pass::PassDriver)
//! (so a custom schedule written once runs on both), expands each op into the kernels and
//! transfers the runtime's actors run, and times them with a roofline cost model per kernel
//! (`hardware.rs`, `cost.rs`) on a clock with FIFO streams sharing their device (`clock.rs`,
//! `device.rs`) and shared wires.
//! `training/` adds pipeline-training schedules (forward F, backward-for-input B,
//! backward-for-weights W: simulator-only ops).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use troupe_sim::*;
//! let graph = troupe_engine::graph::file::LoadedGraph::open("graphs/deepseek-v3-671b.toml".as_ref()).unwrap();
//! let hw = Hardware::load("h800").unwrap();
//! let experts = troupe_sim::cost::ModelCost::from_spec(&graph.spec, None, 2.0).layer_experts();
//! let layout = Layout::gpus(256, &experts, &hw).unwrap();
//! let schedule = Arc::new(troupe_actors::schedule::TwoMicroBatch::default());
//! let mut sim = Simulation::new(&graph.spec, layout, schedule, hw).unwrap();
//! println!("{}", report::decode(&mut sim, 256, 4096, 10).unwrap());
//! ```

pub mod clock;
pub mod cost;
mod device;
pub mod driver;
pub mod error;
pub mod hardware;
pub mod layout;
pub mod measured;
mod ops;
pub mod report;
#[cfg(test)]
mod sim_tests;
pub mod simulation;
pub mod stats;
pub mod svg;
pub mod training;

pub use driver::SeqStep;
pub use error::{Result, SimError};
pub use hardware::Hardware;
pub use layout::Layout;
pub use report::Report;
pub use simulation::Simulation;
