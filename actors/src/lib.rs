//! troupe-actors: the production executor. A loaded model runs as a ractor supervision tree
//! (root → `stage{S}` → block actors: `layer{L}.attention`, `layer{L}.router`, `layer{L}.shared`,
//! `layer{L}.mlp`, `layer{L}.expert{E}` / `layer{L}.experts{A}-{B}` / `layer{L}.group{G}`), each
//! bound to a device stream; tensors move over bounded flume channels, ractor carries control.
//! Logits and tokens are bit-identical to the reference executor for every schedule and
//! placement. See `actors/README.md` for the design.
//!
//! Entry points: [`ActorRuntime`] (blocking, for the CLI), [`service::Engine`] (async library
//! API, with [`TokenStream`]), [`schedule::Schedule`] (write your own), [`mod@bench`].

mod actor_pass;
pub mod actors;
#[cfg(test)]
mod alloc_probe;
pub mod backend_factory;
pub mod batch;
pub mod batcher;
pub mod bench;
mod blocks;
pub mod error;
pub mod fault;
pub mod inflight;
pub mod link;
pub mod metrics;
pub mod overlap;
pub mod pass;
pub mod placement;
pub mod runtime;
pub mod schedule;
pub mod service;
pub mod stage;
pub mod stream;
pub mod supervisor;
pub mod token_stream;
pub mod trace;
pub mod trace_stats;
pub mod transfer;
pub mod transport;

pub use backend_factory::{BackendBuildError, BackendFactory};
pub use batcher::FinishReason;
pub use error::{ActorError, Result};
pub use fault::{Fault, FaultKind, FaultPlan};
pub use placement::{LinkSpec, Placement, PlacementSpec, SupervisionSpec};
pub use runtime::{ActorRuntime, Core, RuntimeConfig, RuntimeOptions};
pub use schedule::{ForwardPass, MicroBatch, Op, Schedule};
pub use service::{CancelHandle, Engine, EngineOptions, TokenEvent, TokenStream};
