//! `use troupe::prelude::*;` — everything a service embedding troupe needs, and what a schedule
//! author needs (the research API at the end): [`Engine`] and its
//! [`EngineOptions`], requests ([`GenerateRequest`], [`SamplingParams`]), the stream of a request
//! ([`TokenStream`] of [`TokenEvent`]s, [`CancelHandle`], [`FinishReason`], and [`StreamExt`]
//! for `stream.next().await`), the model's [`Tokenizer`], and the errors ([`Error`], which
//! every call here returns, and [`EngineError`] inside it).
//!
//! ```
//! use troupe::prelude::*;
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Error> {
//! let engine = Engine::load("tests/fixtures/deepseek-v3-tiny", EngineOptions::default()).await?;
//! let ids = engine.tokenizer().encode("The quick brown fox")?; // BOS as the model wants
//! let mut stream = engine.generate(GenerateRequest::new(ids, 32)).await?; // validation first
//! while let Some(event) = stream.next().await {
//!     let event = event?; // event.token: u32
//!     print!("{}", event.text); // the text delta
//! }
//! # engine.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! A bad request is an error before any stream; dropping the stream (or `stream.cancel()`, or a
//! [`CancelHandle`] from another task) stops the request before its next decode step and frees
//! its KV cache; dropping the `Engine` stops every request; `engine.shutdown().await` finishes
//! the requests in progress first. A stream holds `EngineOptions::stream_capacity` events (16 by
//! default): a reader that falls that far behind pauses its own request, not the others.
//!
//! ```
//! use troupe::prelude::*;
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Error> {
//! let engine = Engine::load("tests/fixtures/deepseek-v3-tiny", EngineOptions::default()).await?;
//! let err = engine.generate(GenerateRequest::new(vec![], 8)).await.err().expect("refused");
//! assert!(matches!(err.engine(), Some(EngineError::EmptyPrompt)));
//!
//! let ids = engine.tokenizer().encode("Once upon a time")?;
//! let request = GenerateRequest::new(ids, 200).temperature(0.7).top_k(40).seed(5);
//! let mut stream = engine.generate(request).await?;
//! let first = stream.next().await.expect("an event")?;
//! assert!(first.token < 1024);
//! stream.cancel(); // or drop(stream): the request stops, its KV cache pages go back
//! assert!(stream.next().await.is_none());
//! # engine.shutdown().await?;
//! # Ok(()) }
//! ```

pub use futures_util::{Stream, StreamExt};
pub use troupe_actors::service::{CancelHandle, Engine, EngineOptions, TokenEvent, TokenStream};
pub use troupe_actors::{ActorError, BackendFactory, FinishReason, RuntimeConfig, RuntimeOptions};
pub use troupe_engine::generate::GenerateRequest;
pub use troupe_engine::graph::LoadedGraph;
pub use troupe_engine::model::KvConfig;
pub use troupe_engine::sampling::SamplingParams;
pub use troupe_engine::tokenizer::{TextTokenizer, Tokenizer};
pub use troupe_engine::{DeviceId, EngineError};

/// The error of every call in this prelude: an [`EngineError`] (a bad request, a model file)
/// converts into it with `?`.
pub type Error = ActorError;

// research API
pub use troupe_actors::bench::{BenchOptions, BenchReport, LinkRow, ScheduleRow};
pub use troupe_actors::placement::{
    LinkBuilder, LinkSpec, Placement, PlacementBuilder, PlacementSpec,
};
pub use troupe_actors::schedule::{
    register as register_schedule_factory, register_schedule, ScheduleParams,
};
pub use troupe_actors::trace_stats::TraceStats;
pub use troupe_actors::{ForwardPass, MicroBatch, Op, Schedule};
