//! The runtime core: resolves placement and schedule, starts streams, the link, the tracer and the
//! metrics listener, creates every data-plane channel and spawns the supervision tree
//! (root → `stage{S}` → block actors). [`ActorRuntime`] is the blocking API the CLI uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use troupe_engine::device_tensor::DeviceCounters;
use troupe_engine::generate::{GenerateOutput, GenerateRequest};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::{ChunkKind, KvConfig, KvPools, Model};
use troupe_engine::{Backend, DeviceId, Tensor};

use crate::actors::BlockCtx;
use crate::backend_factory::BackendFactory;
use crate::batch::SeqCaches;
use crate::batcher::Batcher;
use crate::blocks::{build_blocks, kv_pools, Blocks};
use crate::error::{ActorError, Result};
use crate::fault::{FaultKind, FaultPlan, FaultTrigger};
use crate::link::Link;
use crate::overlap::Overlap;
use crate::pass::{run_pass, SeqInput};
use crate::placement::{layer_experts, LinkSpec, Placement, PlacementSpec, SupervisionSpec};
use crate::schedule::{self, Schedule};
use crate::stage::{StageCall, StageInflight, StageRun, Wiring};
use crate::stream::{Stream, StreamKind};
use crate::supervisor::{RootActor, StageArgs};
use crate::trace::Tracer;
use crate::transfer::Owned;
use crate::transport::{AttentionMode, Distributed};

/// What the CLI passes (`--schedule`, `--stages`, `--trace`, `--metrics-addr`, `--device`).
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    pub schedule: Option<String>,
    pub stages: Option<usize>,
    pub trace: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    /// Puts every stream on this device, overriding the placement's per-stream `device`.
    pub device: Option<DeviceId>,
    /// Builds each stream's backend from its device. None: `cpu` only
    /// ([`BackendFactory::cpu_only`]). `troupe::backends::default_factory()` (the `troupe`
    /// crate) also builds `ptx-interp` and `cuda:N`; a factory of your own can serve any device,
    /// [`DeviceId::Custom`] names included.
    pub backends: Option<BackendFactory>,
    /// The KV cache: pages per layer pool and positions per page (None:
    /// `KvConfig::default_for` the model). A request whose cache needs a page when its pool has
    /// none fails alone with `KvCacheFull`.
    pub kv: Option<KvConfig>,
    /// Requests take the full KV pages of earlier prompts that start their own (the prefix
    /// cache: `KvPools::reuse_prefix`) and publish theirs once prefilled. Outputs are
    /// bit-identical with it on or off; it keeps finished prompts' pages until the pool needs
    /// them. Off by default (`troupe serve` turns it on).
    pub prefix_cache: bool,
}

/// Everything configurable programmatically (a superset of [`RuntimeOptions`]).
#[derive(Clone, Default)]
pub struct RuntimeConfig {
    pub options: RuntimeOptions,
    /// A schedule object (e.g. a custom one); wins over `options.schedule` and `[schedule]`.
    pub custom_schedule: Option<Arc<dyn Schedule>>,
    /// Replaces the graph's `[placement]` whole: the one way to override a placement in code.
    /// Build it with `Placement::builder()` (or `PlacementSpec::from_toml_str`); it is resolved
    /// and checked exactly as a graph file's table.
    pub placement: Option<PlacementSpec>,
    /// Faults to inject (None: read `TROUPE_FAULT`).
    pub faults: Option<FaultPlan>,
    /// Overrides `[placement.supervision]`.
    pub supervision: Option<SupervisionSpec>,
    /// Overrides `[placement.link]`.
    pub link: Option<LinkSpec>,
    /// The deployment spans several ranks: expert groups on other nodes are reached through
    /// this transport (see `transport/`).
    pub distributed: Option<Distributed>,
}

impl From<RuntimeOptions> for RuntimeConfig {
    fn from(options: RuntimeOptions) -> Self {
        RuntimeConfig {
            options,
            ..RuntimeConfig::default()
        }
    }
}

/// The running actor system (shared by [`ActorRuntime`] and `service::Engine`).
pub struct Core {
    pub model: Arc<Model>,
    pub placement: Placement,
    pub schedule: Arc<dyn Schedule>,
    pub streams: Vec<Arc<Stream>>,
    pub link: Option<Arc<Link>>,
    pub tracer: Option<Arc<Tracer>>,
    /// Names of every actor (`stage{S}` and block actors).
    pub actor_names: Vec<String>,
    pub faults: HashMap<String, Arc<FaultTrigger>>,
    /// Each layer's KV pool (on its attention actor's stream's backend, one page allocator for
    /// all) and their configuration; a sequence's cache is `SeqCaches::new(&core.kv_pools)`.
    pub kv_pools: KvPools,
    /// The batcher reuses and publishes prompt pages (`RuntimeOptions::prefix_cache`).
    pub prefix_cache: bool,
    /// The transport to other ranks, when the deployment spans several.
    pub distributed: Option<Distributed>,
    stage_tx: Mutex<Option<Vec<flume::Sender<StageCall>>>>,
    root: tokio::sync::Mutex<Option<RootHandle>>,
    shutting_down: Arc<AtomicBool>,
    step: AtomicU64,
    request: AtomicU64,
}

impl Core {
    /// Starts everything on the current tokio runtime: resolves the placement and schedule,
    /// starts the streams and the link, builds the block actors of every layer, then spawns
    /// the supervision tree over them.
    pub async fn start(
        model: Arc<Model>,
        graph_placement: Option<&toml::Table>,
        graph_schedule: Option<&toml::Table>,
        mut cfg: RuntimeConfig,
    ) -> Result<Arc<Core>> {
        if cfg.distributed.is_none() {
            cfg.distributed = crate::transport::process_distributed();
        }
        let mut placement = resolve_placement(&model, graph_placement, &cfg)?;
        if let Some(d) = &cfg.distributed {
            distribute(&mut placement, d)?;
        }
        let schedule = match &cfg.custom_schedule {
            Some(s) => s.clone(),
            None => schedule::from_config(
                graph_schedule,
                cfg.options.schedule.as_deref(),
                placement.stages.len(),
            )?,
        };
        let faults = match cfg.faults.clone() {
            Some(f) => f,
            None => FaultPlan::from_env()?,
        };
        if let Some(addr) = cfg.options.metrics_addr {
            crate::metrics::serve_prometheus(addr)?;
        }
        let tracer = cfg
            .options
            .trace
            .as_ref()
            .map(|p| Arc::new(Tracer::new(p, &placement.streams)));
        if let (Some(d), Some(t)) = (&cfg.distributed, &tracer) {
            d.transport.stats().attach_tracer(t.clone());
        }
        let (streams, link) = start_streams(&placement, &cfg.options, &tracer)?;
        let kv = cfg
            .options
            .kv
            .unwrap_or_else(|| KvConfig::default_for(&model.spec));
        let kv_pools = kv_pools(&model, &placement, &streams, kv)?;
        let locations: Vec<_> = streams.iter().map(|s| s.backend().location()).collect();
        let triggers = faults.triggers();
        let ctx = |name: String, stream: usize| BlockCtx {
            name,
            stream: streams[stream].clone(),
            tracer: tracer.clone(),
        };
        let blocks = build_blocks(
            &model,
            &placement,
            &link,
            &kv_pools.layers,
            &locations,
            &triggers,
            cfg.distributed.as_ref(),
            &ctx,
        )?;
        let mut actor_names: Vec<String> = (0..placement.stages.len())
            .map(|s| format!("stage{s}"))
            .collect();
        actor_names.extend(blocks.names.iter().cloned());
        check_faults(&faults, &actor_names)?;
        let shutting_down = Arc::new(AtomicBool::new(false));
        let (stage_tx, root) =
            spawn_tree(&placement, blocks, &triggers, shutting_down.clone()).await?;
        Ok(Arc::new(Core {
            model,
            placement,
            schedule,
            streams,
            link,
            tracer,
            actor_names,
            faults: triggers,
            kv_pools,
            prefix_cache: cfg.options.prefix_cache,
            distributed: cfg.distributed.clone(),
            stage_tx: Mutex::new(Some(stage_tx)),
            root: tokio::sync::Mutex::new(Some(root)),
            shutting_down,
            step: AtomicU64::new(0),
            request: AtomicU64::new(0),
        }))
    }

    pub(crate) fn next_step(&self) -> u64 {
        self.step.fetch_add(1, Ordering::Relaxed)
    }
    pub(crate) fn next_request(&self) -> u64 {
        self.request.fetch_add(1, Ordering::Relaxed)
    }
    pub(crate) fn stage_stream(&self, s: usize) -> &Stream {
        &self.streams[self.placement.stage_streams[s]]
    }
    pub(crate) fn stage_tx(&self, s: usize) -> Result<flume::Sender<StageCall>> {
        let g = self.stage_tx.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .and_then(|v| v.get(s).cloned())
            .ok_or_else(|| ActorError::Closed("the runtime is shut down".into()))
    }

    /// Injected faults that fired so far.
    pub fn faults_fired(&self) -> usize {
        self.faults.values().map(|t| t.fired()).sum()
    }

    /// One forward pass on this thread (blocking): logits of every new row, on the last stage's
    /// backend.
    pub fn forward(&self, seqs: Vec<SeqInput>) -> Result<Owned, crate::pass::PassFailure> {
        run_pass(self, &*self.schedule, seqs)
    }

    /// [`Core::forward`] as a path that computes prompt and generated rows with different
    /// kernels runs it (`troupe_engine::kernels::row_kind`), on any path: a pass mixing the two
    /// runs as one pass per kind.
    pub fn forward_by_kind(&self, seqs: Vec<SeqInput>) -> Result<Owned, crate::pass::PassFailure> {
        crate::pass::run_pass_by_kind(self, &*self.schedule, seqs)
    }

    /// Bytes moved and kernels launched so far, summed over the backends of the streams (each
    /// device's backend once).
    pub fn device_counters(&self) -> DeviceCounters {
        let mut total = DeviceCounters::default();
        let mut seen: Vec<&Arc<dyn Backend>> = Vec::new();
        for s in &self.streams {
            let be = s.backend();
            if seen.iter().any(|b| Arc::ptr_eq(b, be)) {
                continue;
            }
            seen.push(be);
            let c = be.counters();
            total.h2d_bytes += c.h2d_bytes;
            total.d2h_bytes += c.d2h_bytes;
            for (k, v) in c.launches {
                *total.launches.entry(k).or_default() += v;
            }
        }
        total
    }

    /// Stops every actor and writes the trace file.
    pub async fn shutdown(&self) -> Result<()> {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.stage_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((root, join)) = self.root.lock().await.take() {
            root.stop(None);
            let _ = tokio::time::timeout(Duration::from_secs(10), join).await;
        }
        match &self.tracer {
            Some(t) => t.write(),
            None => Ok(()),
        }
    }

    /// A cache-free forward pass over one prompt → `[t, vocab]`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        let seq = SeqInput {
            request: self.next_request(),
            tokens: tokens.to_vec(),
            caches: SeqCaches::new(&self.kv_pools),
            start: 0,
            kind: ChunkKind::Prompt,
        };
        let logits = self.forward(vec![seq]).map_err(|f| f.error)?;
        Ok(logits.on.download(&logits.t)?)
    }
}

/// The placement (`cfg.placement` over the graph's), with the config's supervision, link and
/// device overrides applied; an overriding link is checked like a graph file's.
fn resolve_placement(
    model: &Model,
    graph_placement: Option<&toml::Table>,
    cfg: &RuntimeConfig,
) -> Result<Placement> {
    let mut placement = match &cfg.placement {
        Some(spec) => spec.resolve(&layer_experts(model), cfg.options.stages)?,
        None => Placement::resolve(graph_placement, model, cfg.options.stages)?,
    };
    if let Some(s) = cfg.supervision {
        placement.supervision = s;
    }
    if let Some(link) = cfg.link {
        link.validate()?;
        placement.link = Some(link);
    }
    if let Some(d) = &cfg.options.device {
        placement.put_all_streams_on(d);
    }
    Ok(placement)
}

/// Fits the placement to this rank of a deployment over several: the ranks must be its
/// `nodes`; staged attention runs every stage on this rank (node 0), data-parallel attention
/// runs them all here. The simulated link does not apply: real transfers replace it.
fn distribute(placement: &mut Placement, d: &Distributed) -> Result<()> {
    let (rank, nodes) = (d.transport.rank(), d.transport.nodes());
    if placement.nodes != nodes {
        return Err(ActorError::placement(
            "nodes",
            format!(
                "the placement has {} nodes but {nodes} ranks were started",
                placement.nodes
            ),
        ));
    }
    match d.attention {
        AttentionMode::Staged => {
            if let Some((s, &n)) = placement
                .stage_nodes
                .iter()
                .enumerate()
                .find(|(_, &n)| n != rank)
            {
                return Err(ActorError::placement(
                    format!("stage_nodes[{s}]"),
                    format!("node {n}: across ranks, every stage runs on rank {rank} (use attention = \"data-parallel\" to spread attention)"),
                ));
            }
        }
        AttentionMode::DataParallel => placement.stage_nodes = vec![rank; placement.stages.len()],
    }
    placement.link = None;
    Ok(())
}

/// One stream per placement stream, its backend built by the options' factory (default: cpu
/// only); and the link, when the placement has one.
fn start_streams(
    placement: &Placement,
    options: &RuntimeOptions,
    tracer: &Option<Arc<Tracer>>,
) -> Result<(Vec<Arc<Stream>>, Option<Arc<Link>>)> {
    let factory = options
        .backends
        .clone()
        .unwrap_or_else(BackendFactory::cpu_only);
    let overlap = placement.link.map(|_| Arc::new(Overlap::default()));
    // One backend per device, shared by the streams on it: their handles are one device's
    // memory, so only a hand-over between devices moves data.
    let mut built: HashMap<DeviceId, Arc<dyn Backend>> = HashMap::new();
    let streams = placement
        .streams
        .iter()
        .zip(&placement.stream_devices)
        .enumerate()
        .map(|(i, (name, device))| {
            let be = match built.get(device) {
                Some(be) => be.clone(),
                None => {
                    let be = factory.build(device).map_err(|e| {
                        let field = match options.device {
                            Some(_) => "--device".to_string(),
                            None => format!("streams[{i}].device"),
                        };
                        ActorError::placement(field, e.to_string())
                    })?;
                    built.insert(device.clone(), be.clone());
                    be
                }
            };
            let kind = StreamKind::for_device(device);
            Stream::spawn_with_threads(name, i, be, tracer.clone(), kind, placement.stream_threads)
                .map(|s| Arc::new(s.with_overlap(overlap.clone())))
        })
        .collect::<Result<_>>()?;
    let link = placement
        .link
        .map(|l| Arc::new(Link::new(l, tracer.clone(), overlap.unwrap_or_default())));
    Ok((streams, link))
}

/// Every fault names an actor that exists; stage actors take `kind:panic` only.
fn check_faults(faults: &FaultPlan, actor_names: &[String]) -> Result<()> {
    faults.validate(actor_names)?;
    match faults
        .faults
        .iter()
        .find(|f| f.actor.starts_with("stage") && f.kind != FaultKind::Panic)
    {
        Some(f) => Err(ActorError::Fault {
            spec: f.actor.clone(),
            message: "stage actors take `kind:panic` faults only".into(),
        }),
        None => Ok(()),
    }
}

type RootHandle = (ActorRef<()>, ractor::concurrency::JoinHandle<()>);

/// The stage channels and the supervision tree: root → one `stage{S}` per stage → its blocks.
async fn spawn_tree(
    placement: &Placement,
    blocks: Blocks,
    triggers: &HashMap<String, Arc<FaultTrigger>>,
    shutting_down: Arc<AtomicBool>,
) -> Result<(Vec<flume::Sender<StageCall>>, RootHandle)> {
    let (stage_tx, stage_rx): (Vec<_>, Vec<_>) = (0..placement.stages.len())
        .map(|_| flume::bounded::<StageCall>(placement.channel_capacity))
        .unzip();
    let wiring = Arc::new(Wiring {
        attention: blocks.attention,
        ffn: blocks.ffn,
        stages: stage_tx.clone(),
        stage_ranges: placement.stages.clone(),
    });
    let args: Vec<StageArgs> = blocks
        .children
        .into_iter()
        .zip(stage_rx)
        .enumerate()
        .map(|(index, (children, rx))| StageArgs {
            run: StageRun {
                index,
                wiring: wiring.clone(),
                inflight: Arc::new(StageInflight::default()),
                fault: triggers.get(&format!("stage{index}")).cloned(),
            },
            children,
            cells: Arc::new(Mutex::new(Vec::new())),
            rx,
            policy: placement.supervision,
            shutting_down: shutting_down.clone(),
        })
        .collect();
    let root = Actor::spawn(None, RootActor, args)
        .await
        .map_err(|e| ActorError::Startup(format!("supervision tree: {e}")))?;
    Ok((stage_tx, root))
}

/// The blocking actor runtime the CLI drives. Its blocking calls must not be made from inside the
/// rayon pool: CPU streams run their kernels there (see `stream.rs`).
pub struct ActorRuntime {
    rt: tokio::runtime::Runtime,
    core: Arc<Core>,
    batcher: Batcher,
}

/// Threads of the actors' tokio runtime. Actor code is short (a few µs per message between
/// kernels); what it costs on a small machine is waking threads: a second worker is unparked
/// whenever one queues a task while busy, and each wake takes a processor from the kernel pool.
/// With one worker, `troupe bench --compare` (ds-v3-mini, `--compute bf16`, 2 cores, two
/// alternated runs each) gave actors/reference 0.872–0.878 against 0.850–0.853 with two
/// (8 sequences, sequential), 0.770–0.775 against 0.750–0.755 (two-microbatch) and
/// 0.816–0.832 against 0.802–0.812 (1 sequence). Kernels never run on these threads (streams
/// drain on the kernel pool or their own worker), and nothing in an actor blocks.
const ACTOR_WORKERS: usize = 1;

impl ActorRuntime {
    /// Spawns the actor system for `model` with the graph's `[placement]` / `[schedule]`.
    pub fn start(
        model: Arc<Model>,
        graph: &LoadedGraph,
        opts: RuntimeOptions,
    ) -> Result<ActorRuntime> {
        ActorRuntime::start_with(
            model,
            graph.placement.as_ref(),
            graph.schedule.as_ref(),
            opts.into(),
        )
    }

    /// Like [`ActorRuntime::start`] with every programmatic knob (faults, custom schedule, ...).
    /// `placement` and `schedule` are the graph file's tables as `LoadedGraph` holds them; to
    /// override the placement in code, set [`RuntimeConfig::placement`] (which wins).
    pub fn start_with(
        model: Arc<Model>,
        placement: Option<&toml::Table>,
        schedule: Option<&toml::Table>,
        cfg: RuntimeConfig,
    ) -> Result<ActorRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(ACTOR_WORKERS)
            .thread_name("troupe-actors")
            .enable_all()
            .build()
            .map_err(|e| ActorError::Startup(format!("tokio runtime: {e}")))?;
        let core = rt.block_on(Core::start(model, placement, schedule, cfg))?;
        let batcher = Batcher::start(core.clone())?;
        Ok(ActorRuntime { rt, core, batcher })
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Runs every request to completion with continuous batching; the first failed request's
    /// error fails the call (see [`ActorRuntime::generate_each`] for per-request results).
    pub fn generate(&self, reqs: &[GenerateRequest]) -> Result<Vec<GenerateOutput>> {
        for r in reqs {
            troupe_engine::generate::check_request(&self.core.model, r)?;
        }
        self.generate_each(reqs).into_iter().collect()
    }

    /// Runs every request; one result per request (a request that needed a downed actor fails,
    /// the others complete).
    pub fn generate_each(&self, reqs: &[GenerateRequest]) -> Vec<Result<GenerateOutput>> {
        let rxs: Vec<_> = reqs
            .iter()
            .map(|r| self.batcher.submit_full(r.clone()))
            .collect();
        rxs.into_iter()
            .map(|rx| rx.and_then(crate::batcher::collect_full))
            .collect()
    }

    /// Cache-free forward pass over one prompt → logits `[T, V]`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        self.core.logits(tokens)
    }

    /// Stops the actors and flushes the trace file.
    pub fn shutdown(self) -> Result<()> {
        self.batcher.stop();
        let r = self.rt.block_on(self.core.shutdown());
        drop(self.core);
        self.rt.shutdown_timeout(Duration::from_secs(5));
        r
    }
}
