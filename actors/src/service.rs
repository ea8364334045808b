//! The embeddable async API: `Engine::load(path, options).await`, then `engine.generate(req)`
//! returns a stream of tokens. Requests from any number of tasks are batched continuously:
//! requests arriving while a step runs join the next step.

use std::path::Path;
use std::sync::Arc;

use troupe_engine::generate::GenerateRequest;
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::Model;
use troupe_engine::Tensor;

use crate::batcher::Batcher;
use crate::error::{ActorError, Result};
use crate::runtime::{Core, RuntimeConfig};

/// The token stream of one request: `Ok(token)` items, then the channel closes; an `Err` item
/// ends it early (bad prompt, or an actor it needed is down).
pub type TokenStream = tokio::sync::mpsc::UnboundedReceiver<Result<u32>>;

/// A model served by the actor runtime on the caller's tokio runtime.
pub struct Engine {
    core: Arc<Core>,
    batcher: Arc<Batcher>,
}

impl Engine {
    /// Opens a graph file or HF folder, loads the weights (off the async threads) and starts
    /// the actors.
    pub async fn load(
        model_path: impl AsRef<Path>,
        options: impl Into<RuntimeConfig>,
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
        options: impl Into<RuntimeConfig>,
    ) -> Result<Engine> {
        let core = Core::start(
            model,
            graph.placement.as_ref(),
            graph.schedule.as_ref(),
            options.into(),
        )
        .await?;
        let batcher = Arc::new(Batcher::start(core.clone())?);
        Ok(Engine { core, batcher })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.core.model
    }

    /// The running actor system (names, placement, fault counters).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Submits a request; its tokens arrive on the returned stream as they are generated.
    pub fn generate(&self, request: GenerateRequest) -> TokenStream {
        self.batcher.submit_tokens(request)
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
    /// `ActorError::Closed`.
    pub async fn shutdown(&self) -> Result<()> {
        let batcher = self.batcher.clone();
        tokio::task::spawn_blocking(move || batcher.stop())
            .await
            .map_err(|e| ActorError::Closed(format!("batcher stop: {e}")))?;
        self.core.shutdown().await
    }
}
