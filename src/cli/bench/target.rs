//! The runtimes `troupe bench` measures, behind one trait: a single sequence whose cache can be
//! rolled back to any position it holds, so a test at depth D runs on the same D cached
//! positions every repetition (filled once, untimed) — llama-bench's depth, without refilling.

use std::sync::Arc;

use troupe_actors::batch::SeqCaches;
use troupe_actors::pass::SeqInput;
use troupe_actors::{ActorRuntime, RuntimeOptions};
use troupe_engine::device_tensor::DeviceCounters;
use troupe_engine::executor::SeqChunk;
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::{ChunkKind, KvConfig, KvPools, MlaForm, Model, SequenceCache};
use troupe_engine::{Backend, DeviceId, DeviceTensor};

use crate::cli::common::CliError;
use crate::cli::executor::{actor_err, reference};

/// The greedy next token after the last row of `logits`, chosen on `be` (4 bytes come back).
fn last_argmax(be: &dyn Backend, logits: &DeviceTensor) -> Result<u32, CliError> {
    let last = match logits.rows() {
        1 => logits.clone(),
        n => be.slice_rows(logits, n - 1, n)?,
    };
    let ids = be.argmax(&last)?;
    ids.first()
        .copied()
        .ok_or_else(|| CliError::Runtime("argmax returned no token".into()))
}

/// One runtime with one sequence's cache.
pub trait Target {
    /// `reference` or `actors`.
    fn runtime(&self) -> &'static str;
    /// A forward pass of `tokens` at positions `at..` (the cache is rolled back to `at` first);
    /// returns the greedy next token after the last of them, chosen on the device.
    fn step(&mut self, tokens: &[u32], at: usize, kind: ChunkKind) -> Result<u32, CliError>;
    /// Bytes moved and kernels launched so far, summed over every backend the runtime uses.
    fn counters(&self) -> DeviceCounters;
    /// Stops the runtime.
    fn finish(self: Box<Self>) -> Result<(), CliError>;
}

/// The sequential reference executor on `--device`.
pub struct ReferenceTarget {
    model: Arc<Model>,
    backend: Arc<dyn Backend>,
    form: MlaForm,
    pools: Arc<KvPools>,
    cache: SequenceCache,
}

impl ReferenceTarget {
    pub fn new(
        model: Arc<Model>,
        backend: Arc<dyn Backend>,
        form: MlaForm,
        kv: KvConfig,
    ) -> Result<Self, CliError> {
        let pools = Arc::new(model.kv_pools(&*backend, kv)?);
        let cache = pools.new_cache();
        Ok(ReferenceTarget {
            model,
            backend,
            form,
            pools,
            cache,
        })
    }
}

impl Target for ReferenceTarget {
    fn runtime(&self) -> &'static str {
        "reference"
    }
    fn step(&mut self, tokens: &[u32], at: usize, kind: ChunkKind) -> Result<u32, CliError> {
        self.cache.truncate(at);
        let exec = reference(&self.model, &self.backend, self.form, &self.pools);
        let logits = exec.forward(
            &mut [SeqChunk {
                tokens: tokens.to_vec(),
                cache: &mut self.cache,
                kind,
            }],
            None,
        )?;
        last_argmax(&*self.backend, &logits)
    }
    fn counters(&self) -> DeviceCounters {
        self.backend.counters()
    }
    fn finish(self: Box<Self>) -> Result<(), CliError> {
        Ok(())
    }
}

/// The actor runtime, every stream on `--device` (the placement's devices on `cpu`).
pub struct ActorsTarget {
    rt: ActorRuntime,
    caches: Arc<SeqCaches>,
}

impl ActorsTarget {
    pub fn start(
        graph: &LoadedGraph,
        model: Arc<Model>,
        device: &DeviceId,
        kv: KvConfig,
        schedule: Option<String>,
    ) -> Result<Self, CliError> {
        let opts = RuntimeOptions {
            schedule,
            device: (*device != DeviceId::Cpu).then(|| device.clone()),
            backends: Some(troupe::backends::default_factory()),
            kv: Some(kv),
            ..Default::default()
        };
        let rt = ActorRuntime::start(model, graph, opts).map_err(actor_err)?;
        let caches = SeqCaches::new(&rt.core().kv_pools);
        Ok(ActorsTarget { rt, caches })
    }
}

impl Target for ActorsTarget {
    fn runtime(&self) -> &'static str {
        "actors"
    }
    fn step(&mut self, tokens: &[u32], at: usize, kind: ChunkKind) -> Result<u32, CliError> {
        let seq = SeqInput {
            request: 0,
            tokens: tokens.to_vec(),
            caches: self.caches.clone(),
            start: at,
            kind,
        };
        let logits = self
            .rt
            .core()
            .forward(vec![seq])
            .map_err(|f| actor_err(f.error))?;
        last_argmax(&*logits.on, &logits.t)
    }
    fn counters(&self) -> DeviceCounters {
        self.rt.core().device_counters()
    }
    fn finish(self: Box<Self>) -> Result<(), CliError> {
        self.rt.shutdown().map_err(actor_err)
    }
}
