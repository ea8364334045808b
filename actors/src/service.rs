//! The embeddable async API: `Engine::load(path, EngineOptions::default()).await`, then
//! `engine.generate(request).await?` checks the request and returns its [`TokenStream`].
//! Requests from any number of tasks are batched continuously: requests arriving while a step
//! runs join the next step. Dropping a stream cancels its request; dropping the `Engine` stops
//! every request and the actors (`shutdown` instead finishes the requests in progress).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use troupe_engine::generate::{check_request, GenerateRequest};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::{Model, PrefixCacheStats};
use troupe_engine::tokenizer::Tokenizer;
use troupe_engine::Tensor;

use crate::batcher::Batcher;
use crate::error::{ActorError, Result};
use crate::runtime::{Core, RuntimeConfig, RuntimeOptions};
pub use crate::token_stream::{CancelHandle, TokenEvent, TokenStream};

/// How an [`Engine`] runs: the actor runtime's configuration and the stream bound.
#[derive(Clone)]
pub struct EngineOptions {
    /// Schedule, placement, devices, trace, metrics, KV cache (see [`RuntimeConfig`]).
    pub runtime: RuntimeConfig,
    /// Events a request's stream holds before the request pauses for its reader (at least 1).
    pub stream_capacity: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            runtime: RuntimeConfig::default(),
            stream_capacity: 16,
        }
    }
}

impl EngineOptions {
    /// These runtime options (schedule, devices, trace, metrics, KV cache).
    pub fn runtime(mut self, options: RuntimeOptions) -> Self {
        self.runtime.options = options;
        self
    }
    /// Events a stream holds before its request pauses.
    pub fn stream_capacity(mut self, events: usize) -> Self {
        self.stream_capacity = events.max(1);
        self
    }
}

impl From<RuntimeConfig> for EngineOptions {
    fn from(runtime: RuntimeConfig) -> Self {
        EngineOptions {
            runtime,
            ..EngineOptions::default()
        }
    }
}

impl From<RuntimeOptions> for EngineOptions {
    fn from(options: RuntimeOptions) -> Self {
        EngineOptions::from(RuntimeConfig::from(options))
    }
}

/// A model served by the actor runtime on the caller's tokio runtime.
pub struct Engine {
    core: Arc<Core>,
    batcher: Arc<Batcher>,
    tokenizer: Tokenizer,
    stream_capacity: usize,
    shut_down: AtomicBool,
}

impl Engine {
    /// Opens a graph file or HF folder (and its tokenizer.json), loads the weights (off the
    /// async threads) and starts the actors.
    pub async fn load(
        model_path: impl AsRef<Path>,
        options: impl Into<EngineOptions>,
    ) -> Result<Engine> {
        let path = model_path.as_ref().to_path_buf();
        let (graph, model) =
            tokio::task::spawn_blocking(move || -> Result<(LoadedGraph, Model)> {
                let graph = LoadedGraph::open(&path)?;
                let model = Model::load(&graph, &mut |_, _| {})?;
                Ok((graph, model))
            })
            .await
            .map_err(|e| ActorError::Startup(format!("model loading task: {e}")))??;
        Engine::start(Arc::new(model), &graph, options).await
    }

    /// Starts the actors for an already loaded model.
    pub async fn start(
        model: Arc<Model>,
        graph: &LoadedGraph,
        options: impl Into<EngineOptions>,
    ) -> Result<Engine> {
        let options = options.into();
        let tokenizer = Tokenizer::for_graph(graph)?;
        let core = Core::start(
            model,
            graph.placement.as_ref(),
            graph.schedule.as_ref(),
            options.runtime,
        )
        .await?;
        let batcher = Arc::new(Batcher::start(core.clone())?);
        Ok(Engine {
            core,
            batcher,
            tokenizer,
            stream_capacity: options.stream_capacity.max(1),
            shut_down: AtomicBool::new(false),
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.core.model
    }

    /// The model's tokenizer: `encode` prepends the model's BOS id, `decode` leaves special
    /// tokens out.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokens generated so far by every request of this engine (what
    /// `troupe_tokens_generated_total` counts, per engine).
    pub fn tokens_generated(&self) -> u64 {
        self.batcher.tokens_generated()
    }

    /// The prefix cache's counters (pages held, prompt tokens looked up, hits, evictions);
    /// zeros unless `RuntimeOptions::prefix_cache` is on.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.core.kv_pools.prefix_stats()
    }

    /// The running actor system (names, placement, fault counters).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Checks `request` against the model (an empty prompt, a token id outside the vocabulary,
    /// more positions than the model has, sampling settings no sampler takes: a typed error,
    /// before any stream), then submits it. Its events arrive on the returned stream as they
    /// are generated; see [`TokenStream`] for back-pressure and cancellation.
    pub async fn generate(&self, request: GenerateRequest) -> Result<TokenStream> {
        check_request(&self.core.model, &request)?;
        let (stream, tx) = TokenStream::channel(
            self.stream_capacity,
            self.batcher.inbox().clone(),
            self.tokenizer.detokenizer(),
        );
        self.batcher
            .submit_stream(request, tx, stream.cancelled_flag())?;
        Ok(stream)
    }

    /// Cache-free forward pass over one prompt → logits `[T, V]` (runs off the async threads).
    pub async fn logits(&self, tokens: Vec<u32>) -> Result<Tensor> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || core.logits(&tokens))
            .await
            .map_err(|e| ActorError::Closed(format!("logits task: {e}")))?
    }

    /// Finishes the requests in progress, stops the actors, flushes the trace.
    /// Takes `&self` so a shared (`Arc`) engine can be shut down; later requests fail with
    /// `ActorError::Closed`. A request whose full stream goes unread for 5 s is dropped.
    pub async fn shutdown(&self) -> Result<()> {
        self.shut_down.store(true, Ordering::SeqCst);
        let batcher = self.batcher.clone();
        tokio::task::spawn_blocking(move || batcher.stop())
            .await
            .map_err(|e| ActorError::Closed(format!("batcher stop: {e}")))?;
        self.core.shutdown().await
    }
}

impl Drop for Engine {
    /// Without `shutdown`: every request stops after its current step (its stream ends with
    /// `ActorError::Closed`), and the actors are stopped on the caller's tokio runtime.
    fn drop(&mut self) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.batcher.abort();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let batcher = self.batcher.clone();
            let core = self.core.clone();
            rt.spawn(async move {
                let _ = tokio::task::spawn_blocking(move || batcher.stop()).await;
                let _ = core.shutdown().await;
            });
        }
    }
}
