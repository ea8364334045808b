//! The benchmark's contenders and how they are interleaved: a [`Stepper`] runs one decode step
//! over every sequence (the reference executor, or an actor runtime with any schedule), and
//! [`interleave`] runs rounds of steps over several of them, rotating the order each round.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use troupe_engine::executor::{ReferenceExecutor, SeqChunk};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::{ChunkKind, KvConfig, Model, SequenceCache};

use crate::batch::SeqCaches;
use crate::error::Result;
use crate::fault::FaultPlan;
use crate::pass::SeqInput;
use crate::placement::{LinkSpec, PlacementSpec};
use crate::runtime::{ActorRuntime, RuntimeConfig, RuntimeOptions};
use crate::schedule::Schedule;

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Sequence `seq`'s prompt of `len` tokens (deterministic, spread over the vocabulary).
pub(super) fn prompt(model: &Model, len: usize, seq: usize) -> Vec<u32> {
    let vocab = model.spec.vocab_size as u64;
    (0..len.max(1))
        .map(|i| ((i as u64 * 7919 + seq as u64 * 104_729 + 13) % vocab) as u32)
        .collect()
}

/// One way of running decode steps.
pub(super) trait Stepper {
    /// One decode step over every sequence; returns link (busy, exposed) ns during it.
    fn step(&mut self) -> Result<(u64, u64)>;
}

pub(super) struct Reference<'m> {
    model: &'m Model,
    be: CpuBackend,
    caches: Vec<SequenceCache>,
}

impl<'m> Reference<'m> {
    /// The reference executor on a CPU backend with `sequences` empty caches.
    pub(super) fn new(model: &'m Model, sequences: usize) -> Result<Self> {
        let be = CpuBackend::new();
        let pools = model.kv_pools(&be, KvConfig::default_for(&model.spec))?;
        Ok(Reference {
            model,
            be,
            caches: (0..sequences).map(|_| pools.new_cache()).collect(),
        })
    }

    pub(super) fn forward(
        &mut self,
        tokens: &dyn Fn(usize) -> Vec<u32>,
        kind: ChunkKind,
    ) -> Result<()> {
        let exec = ReferenceExecutor::new(self.model, &self.be);
        let mut chunks: Vec<SeqChunk<'_>> = self
            .caches
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| SeqChunk {
                tokens: tokens(i),
                cache,
                kind,
            })
            .collect();
        exec.forward(&mut chunks, None)?;
        Ok(())
    }
}

impl Stepper for Reference<'_> {
    fn step(&mut self) -> Result<(u64, u64)> {
        let vocab = self.model.spec.vocab_size as u32;
        self.forward(&|i| vec![(i as u32 * 31 + 5) % vocab], ChunkKind::Generated)?;
        Ok((0, 0))
    }
}

/// An actor runtime with its sequences' caches and their lengths.
pub(super) struct Actors {
    pub(super) rt: ActorRuntime,
    pub(super) caches: Vec<(Arc<SeqCaches>, usize)>,
}

impl Actors {
    pub(super) fn forward(
        &mut self,
        tokens: &dyn Fn(usize) -> Vec<u32>,
        kind: ChunkKind,
    ) -> Result<(u64, u64)> {
        let busy = |rt: &ActorRuntime| {
            rt.core()
                .link
                .as_ref()
                .map(|l| {
                    (
                        l.stats.busy_ns.load(Ordering::Relaxed),
                        l.stats.overlap.exposed_ns(),
                    )
                })
                .unwrap_or((0, 0))
        };
        let before = busy(&self.rt);
        let seqs: Vec<SeqInput> = self
            .caches
            .iter()
            .enumerate()
            .map(|(i, (c, start))| SeqInput {
                request: i as u64,
                tokens: tokens(i),
                caches: c.clone(),
                start: *start,
                kind,
            })
            .collect();
        let n: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        self.rt.core().forward(seqs).map_err(|f| f.error)?;
        for ((_, start), n) in self.caches.iter_mut().zip(n) {
            *start += n;
        }
        let after = busy(&self.rt);
        Ok((after.0 - before.0, after.1 - before.1))
    }
}

impl Stepper for Actors {
    fn step(&mut self) -> Result<(u64, u64)> {
        let vocab = self.rt.core().model.spec.vocab_size as u32;
        self.forward(&|i| vec![(i as u32 * 31 + 5) % vocab], ChunkKind::Generated)
    }
}

/// The runtime configuration of one actors contender: `base` placement, `schedule`, an
/// optional link, no injected faults.
pub(super) fn actors_config(
    base: &PlacementSpec,
    schedule: &Arc<dyn Schedule>,
    link: Option<LinkSpec>,
    trace: Option<std::path::PathBuf>,
) -> RuntimeConfig {
    RuntimeConfig {
        options: RuntimeOptions {
            trace,
            ..Default::default()
        },
        custom_schedule: Some(schedule.clone()),
        placement: Some(base.clone()),
        faults: Some(FaultPlan::default()),
        link,
        ..Default::default()
    }
}

/// An actors contender with `sequences` caches, each prefilled with its prompt.
pub(super) fn start_actors(
    model: &Arc<Model>,
    base: &PlacementSpec,
    schedule: &Arc<dyn Schedule>,
    link: Option<LinkSpec>,
    o: &super::BenchOptions,
) -> Result<Actors> {
    start_actors_traced(model, base, schedule, link, o, None)
}

/// As [`start_actors`], writing a trace of the runtime to `trace` at shutdown (the prefill's
/// spans are dropped, so the trace holds what runs after this returns).
pub(super) fn start_actors_traced(
    model: &Arc<Model>,
    base: &PlacementSpec,
    schedule: &Arc<dyn Schedule>,
    link: Option<LinkSpec>,
    o: &super::BenchOptions,
    trace: Option<std::path::PathBuf>,
) -> Result<Actors> {
    let cfg = actors_config(base, schedule, link, trace);
    let rt = ActorRuntime::start_with(model.clone(), None, None, cfg)?;
    let caches = (0..o.sequences)
        .map(|_| (SeqCaches::new(&rt.core().kv_pools), 0))
        .collect();
    let mut a = Actors { rt, caches };
    a.forward(&|i| prompt(model, o.prompt_len, i), ChunkKind::Prompt)?;
    if let Some(t) = &a.rt.core().tracer {
        t.clear_spans();
    }
    Ok(a)
}

/// Per-contender samples of an interleaved run, one per round (seconds).
#[derive(Default)]
pub(super) struct Samples {
    times: Vec<f64>,
    busy: Vec<f64>,
    exposed: Vec<f64>,
}

impl Samples {
    /// (median step, median link busy, median link exposed).
    pub(super) fn medians(&self) -> (f64, f64, f64) {
        (
            median(self.times.clone()),
            median(self.busy.clone()),
            median(self.exposed.clone()),
        )
    }
}

/// Median over rounds of `f(a's step time, b's step time)` in the same round: steps of one round
/// run back to back, so machine noise that lasts longer than a round cancels out.
pub(super) fn paired(a: &Samples, b: &Samples, f: impl Fn(f64, f64) -> f64) -> f64 {
    median(
        a.times
            .iter()
            .zip(&b.times)
            .map(|(&x, &y)| f(x, y))
            .collect(),
    )
}

/// Runs `rounds` interleaved decode steps over `cs`.
pub(super) fn interleave(cs: &mut [&mut dyn Stepper], rounds: usize) -> Result<Vec<Samples>> {
    for c in cs.iter_mut() {
        c.step()?; // warm-up
    }
    let mut out: Vec<Samples> = (0..cs.len()).map(|_| Samples::default()).collect();
    for round in 0..rounds {
        for k in 0..cs.len() {
            // Rotate the order each round so no contender always runs right after another.
            let i = (k + round) % cs.len();
            let t = Instant::now();
            let b = cs[i].step()?;
            out[i].times.push(t.elapsed().as_secs_f64());
            out[i].busy.push(b.0 as f64 * 1e-9);
            out[i].exposed.push(b.1 as f64 * 1e-9);
        }
    }
    Ok(out)
}
