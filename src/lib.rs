//! troupe: an actor-based compute-graph engine for DeepSeek-V3-family Mixture-of-Experts
//! transformers. Start at [`prelude`]: everything a service embedding [`Engine`] needs, in one
//! `use troupe::prelude::*;`. This facade also re-exports the crates:
//! - [`engine`] (`troupe-engine`): tensors, graph files and IR, CPU kernels, checkpoint loading,
//!   the reference executor;
//! - [`actors`] (`troupe-actors`): the supervised actor runtime, schedules, transport;
//! - [`sim`] (`troupe-sim`): the discrete-event simulator the same schedules drive;
//! - `ptx` (`troupe-ptx`, cargo feature `gpu`): PTX kernels, the CUDA backend, the PTX
//!   interpreter;
//!
//! and adds [`backends`]: the backend of each built-in device (`cpu`, and with the `gpu`
//! feature `ptx-interp` and `cuda:N`) and the actor runtime's factory over them,
//! `backends::default_factory()`.
//!
//! Cargo features: `cli` (the `troupe` binary: clap, indicatif) and `gpu` (troupe-ptx, cudarc),
//! both on by default; `default-features = false` keeps the CPU engine, the actor runtime and
//! the whole [`prelude`] API. Build a dependent with optimisation (a `[profile.dev]` with
//! `opt-level = 1` and `[profile.dev.package."*"]` with `opt-level = 2`): an unoptimised debug
//! build runs about 16× slower.
//!
//! See ARCHITECTURE.md for the map.

pub mod backends;
pub mod prelude;
#[cfg(feature = "serve")]
pub mod serve;

pub use troupe_actors as actors;
pub use troupe_engine as engine;
#[cfg(feature = "gpu")]
pub use troupe_ptx as ptx;
pub use troupe_sim as sim;

/// The interleaved benchmark of schedules (built-in or your own) against the reference executor:
/// `troupe::bench::run(model, placement, &BenchOptions { schedules, .. })`.
pub use troupe_actors::bench;

/// The embeddable engine (tokio): `Engine::load(model, options).await`,
/// `engine.generate(request).await`.
pub use troupe_actors::service::Engine;
