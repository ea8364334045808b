//! troupe: an actor-based compute-graph engine for DeepSeek-V3-family Mixture-of-Experts
//! transformers. This facade re-exports the three crates:
//! - [`engine`] (`troupe-engine`): tensors, graph files and IR, CPU kernels, checkpoint loading,
//!   the reference executor;
//! - [`actors`] (`troupe-actors`): the supervised actor runtime, schedules, transport;
//! - [`ptx`] (`troupe-ptx`): PTX kernels, the CUDA backend, the PTX interpreter;
//!
//! and adds [`backends`]: the backend of each built-in device (`cpu`, `ptx-interp`, `cuda:N`)
//! and the actor runtime's factory over them, `backends::default_factory()`.
//!
//! See ARCHITECTURE.md for the map.

pub mod backends;
pub mod prelude;

pub use troupe_actors as actors;
pub use troupe_engine as engine;
pub use troupe_ptx as ptx;

/// The interleaved benchmark of schedules (built-in or your own) against the reference executor:
/// `troupe::bench::run(model, placement, &BenchOptions { schedules, .. })`.
pub use troupe_actors::bench;

/// The embeddable engine (tokio): `Engine::load(model, options).await`, `engine.generate(request)`.
pub use troupe_actors::service::Engine;
