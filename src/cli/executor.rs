//! Choosing and running the executor for generate/logits: the actor runtime (default on CPU) or
//! the sequential reference executor, behind one small enum.

use std::sync::Arc;

use troupe_actors::transport::Distributed;
use troupe_actors::{ActorRuntime, RuntimeConfig, RuntimeOptions};
use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::generate::{generate, GenerateOutput, GenerateRequest};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::{KvPools, MlaForm, Model};
use troupe_engine::{Backend, DeviceId, Tensor};

use super::common::{kv_config, CliError};
use super::{RunArgs, RuntimeArgs, RuntimeKind};

/// A started executor.
pub enum Executor {
    Actors(ActorRuntime),
    Reference {
        model: Arc<Model>,
        backend: Arc<dyn Backend>,
        form: MlaForm,
        pools: Arc<KvPools>,
    },
}

impl Executor {
    pub fn start(
        graph: &LoadedGraph,
        model: Arc<Model>,
        backend: Arc<dyn Backend>,
        run: &RunArgs,
        rt: &RuntimeArgs,
        form: MlaForm,
        distributed: Option<Distributed>,
    ) -> Result<Executor, CliError> {
        let runtime = rt.runtime.unwrap_or(if run.device == DeviceId::Cpu {
            RuntimeKind::Actors
        } else {
            RuntimeKind::Reference
        });
        let actor_flags = rt.schedule.is_some()
            || rt.stages.is_some()
            || rt.trace.is_some()
            || rt.metrics_addr.is_some();
        match runtime {
            RuntimeKind::Actors => {
                if form != MlaForm::Auto {
                    return Err(CliError::Usage(
                        "--mla applies to --runtime reference; the actor runtime uses auto".into(),
                    ));
                }
                let opts = RuntimeOptions {
                    schedule: rt.schedule.clone(),
                    stages: rt.stages,
                    trace: rt.trace.clone(),
                    metrics_addr: rt.metrics_addr,
                    // A non-CPU `--device` puts every stream on it (else the placement's
                    // per-stream `device` holds); each stream builds its backend like the reference.
                    device: (run.device != DeviceId::Cpu).then(|| run.device.clone()),
                    backends: Some(troupe::backends::default_factory()),
                    kv: Some(kv_config(run, &model.spec)),
                    ..RuntimeOptions::default()
                };
                let cfg = RuntimeConfig {
                    options: opts,
                    distributed,
                    ..RuntimeConfig::default()
                };
                let r = ActorRuntime::start_with(
                    model,
                    graph.placement.as_ref(),
                    graph.schedule.as_ref(),
                    cfg,
                )
                .map_err(|e| CliError::Runtime(e.to_string()))?;
                Ok(Executor::Actors(r))
            }
            RuntimeKind::Reference => {
                if distributed.is_some() {
                    return Err(CliError::Usage(
                        "a run over several ranks needs --runtime actors".into(),
                    ));
                }
                if actor_flags {
                    return Err(CliError::Usage(
                        "--schedule, --stages, --trace and --metrics-addr need --runtime actors"
                            .into(),
                    ));
                }
                let pools = Arc::new(model.kv_pools(&*backend, kv_config(run, &model.spec))?);
                Ok(Executor::Reference {
                    model,
                    backend,
                    form,
                    pools,
                })
            }
        }
    }

    pub fn generate(&self, reqs: &[GenerateRequest]) -> Result<Vec<GenerateOutput>, CliError> {
        match self {
            Executor::Actors(r) => r.generate(reqs).map_err(actor_err),
            Executor::Reference {
                model,
                backend,
                form,
                pools,
            } => Ok(generate(&reference(model, backend, *form, pools), reqs)?),
        }
    }

    pub fn logits(&self, ids: &[u32]) -> Result<Tensor, CliError> {
        match self {
            Executor::Actors(r) => r.logits(ids).map_err(actor_err),
            Executor::Reference {
                model,
                backend,
                form,
                pools,
            } => Ok(reference(model, backend, *form, pools).logits(ids)?),
        }
    }

    /// Stops the actors and flushes the trace.
    pub fn finish(self) -> Result<(), CliError> {
        match self {
            Executor::Actors(r) => r.shutdown().map_err(actor_err),
            Executor::Reference { .. } => Ok(()),
        }
    }
}

/// Engine errors keep their own clear message; others are runtime errors.
pub(super) fn actor_err(e: troupe_actors::ActorError) -> CliError {
    match e.engine() {
        Some(inner) => CliError::Runtime(inner.to_string()),
        None => CliError::Runtime(e.to_string()),
    }
}

/// The reference executor over `model`, computing MLA in `form`, its caches from `pools`.
pub(super) fn reference<'a>(
    model: &'a Model,
    backend: &'a Arc<dyn Backend>,
    form: MlaForm,
    pools: &Arc<KvPools>,
) -> ReferenceExecutor<'a> {
    let mut exec = ReferenceExecutor::with_kv(model, backend.as_ref(), pools.clone());
    exec.options.mla_form = form;
    exec
}
