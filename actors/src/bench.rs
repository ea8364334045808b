//! Benchmark (not a test): decode speed of the actor runtime vs the reference executor, and the
//! fraction of simulated link time each schedule hides. Run it with `troupe bench -m MODEL
//! --runtime actors [--seqs N] [-p PROMPT] [-r ROUNDS] [--no-link] [--profile actors|reference
//! [--trace F]]`.
//!
//! Everything is measured **interleaved in one process**, so machine noise hits every contender
//! alike: all runtimes are started up front, every sequence is prefilled with the same prompt,
//! then decode steps (one new token per sequence, fed straight back, no sampling) run round-robin
//! over the contenders, `steps` rounds. Per contender the **median step time** is kept, and
//! comparisons are **paired per round**: the steps of one round run back to back, so noise that
//! lasts longer than a round (another process, frequency changes) cancels in their ratio.
//!
//! * decode tokens/s = `sequences / median step time`; the headline ratio is the median over
//!   rounds of `t_reference / t_actors` (the ratio of the medians is printed too).
//! * link: per schedule, one runtime without and one with the link (`BenchOptions::link`); the
//!   expert groups sit on node 1 and the routers on node 0 (unless the placement sets `nodes`),
//!   so every dispatch and combine crosses the link.
//!   `link_busy` = wall time per step during which at least one transfer was in flight (union
//!   of submission→delivery intervals, median over the steps). **hidden = 1 − median(T_link −
//!   T_no_link) / link_busy** (the difference paired per round), clamped to [0, 1]: 100% = the link costs no wall time at all,
//!   0% = every microsecond the link is busy adds to the step.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe_engine::executor::{ReferenceExecutor, SeqChunk};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::{KvConfig, Model, SequenceCache};

use crate::batch::SeqCaches;
use crate::error::Result;
use crate::fault::FaultPlan;
use crate::pass::SeqInput;
use crate::placement::LinkSpec;
use crate::runtime::{ActorRuntime, RuntimeConfig, RuntimeOptions};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub sequences: usize,
    pub prompt_len: usize,
    /// Interleaved decode rounds (median per contender).
    pub steps: usize,
    pub link: LinkSpec,
    /// Also measure the link overlap (four more runtimes).
    pub with_link: bool,
    /// Chrome trace of the actor runtime's steps (`profile` only).
    pub trace: Option<std::path::PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            sequences: 8,
            prompt_len: 16,
            steps: 9,
            link: LinkSpec {
                latency: Duration::from_micros(100),
                gbps: 10.0,
            },
            with_link: true,
            trace: None,
        }
    }
}

/// One schedule's link measurement (seconds per decode step).
#[derive(Clone, Debug, Default)]
pub struct LinkRow {
    pub schedule: String,
    pub step_without_link: f64,
    pub step_with_link: f64,
    pub link_busy: f64,
    /// Link busy time per step during which no stream ran a kernel (`overlap.rs`).
    pub link_exposed: f64,
    /// `1 − (T_link − T_no_link) / link_busy` (wall-time based).
    pub hidden: f64,
    /// `1 − link_exposed / link_busy` (measured directly).
    pub hidden_direct: f64,
}

/// Measured numbers.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    pub sequences: usize,
    pub steps: usize,
    pub reference_decode_tok_s: f64,
    pub actors_decode_tok_s: f64,
    /// Median over rounds of (reference step time / actors step time) within the round: the
    /// speed ratio with slow machine noise cancelled (the headline number).
    pub paired_ratio: f64,
    pub link: Vec<LinkRow>,
}

impl BenchReport {
    /// Actors decode speed / reference decode speed (1.0 = parity).
    pub fn ratio(&self) -> f64 {
        self.actors_decode_tok_s / self.reference_decode_tok_s.max(1e-12)
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "decode, {} sequences, median of {} interleaved steps: reference {:.1} tok/s, actors (sequential) {:.1} tok/s; actors/reference {:.3} ({:+.1}%) paired per round, {:.3} from the medians",
            self.sequences,
            self.steps,
            self.reference_decode_tok_s,
            self.actors_decode_tok_s,
            self.paired_ratio,
            (self.paired_ratio - 1.0) * 100.0,
            self.ratio(),
        )?;
        for r in &self.link {
            writeln!(
                f,
                "link {:>15}: step {:.2} ms without link, {:.2} ms with link; link busy {:.2} ms/step, exposed {:.2} ms/step; hidden (wall) {:.0}%, hidden (direct) {:.0}%",
                r.schedule,
                r.step_without_link * 1e3,
                r.step_with_link * 1e3,
                r.link_busy * 1e3,
                r.link_exposed * 1e3,
                r.hidden * 100.0,
                r.hidden_direct * 100.0
            )?;
        }
        if !self.link.is_empty() {
            writeln!(
                f,
                "  hidden (wall) = 1 - median per round of (T_link - T_no_link) / link_busy; hidden (direct) = 1 - exposed / link_busy; link_busy = time any transfer is in flight, exposed = link busy while no stream runs a kernel"
            )?;
        }
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn prompt(model: &Model, len: usize, seq: usize) -> Vec<u32> {
    let vocab = model.spec.vocab_size as u64;
    (0..len.max(1))
        .map(|i| ((i as u64 * 7919 + seq as u64 * 104_729 + 13) % vocab) as u32)
        .collect()
}

/// One way of running decode steps.
trait Stepper {
    /// One decode step over every sequence; returns link (busy, exposed) ns during it.
    fn step(&mut self) -> Result<(u64, u64)>;
}

struct Reference<'m> {
    model: &'m Model,
    be: CpuBackend,
    caches: Vec<SequenceCache>,
}

impl<'m> Reference<'m> {
    /// The reference executor on a CPU backend with `sequences` empty caches.
    fn new(model: &'m Model, sequences: usize) -> Result<Self> {
        let be = CpuBackend::new();
        let pools = model.kv_pools(&be, KvConfig::default_for(&model.spec))?;
        Ok(Reference {
            model,
            be,
            caches: (0..sequences).map(|_| pools.new_cache()).collect(),
        })
    }
}

impl Reference<'_> {
    fn forward(&mut self, tokens: &dyn Fn(usize) -> Vec<u32>) -> Result<()> {
        let exec = ReferenceExecutor::new(self.model, &self.be);
        let mut chunks: Vec<SeqChunk<'_>> = self
            .caches
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| SeqChunk {
                tokens: tokens(i),
                cache,
            })
            .collect();
        exec.forward(&mut chunks, None)?;
        Ok(())
    }
}

impl Stepper for Reference<'_> {
    fn step(&mut self) -> Result<(u64, u64)> {
        self.forward(&|i| vec![(i as u32 * 31 + 5) % self.model.spec.vocab_size as u32])?;
        Ok((0, 0))
    }
}

struct Actors {
    rt: ActorRuntime,
    caches: Vec<(Arc<SeqCaches>, usize)>,
}

impl Actors {
    fn forward(&mut self, tokens: &dyn Fn(usize) -> Vec<u32>) -> Result<(u64, u64)> {
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
        self.forward(&|i| vec![(i as u32 * 31 + 5) % vocab])
    }
}

fn actors_config(
    base: &toml::Table,
    schedule: &str,
    link: Option<LinkSpec>,
    trace: Option<std::path::PathBuf>,
) -> RuntimeConfig {
    RuntimeConfig {
        options: RuntimeOptions {
            schedule: Some(schedule.into()),
            trace,
            ..Default::default()
        },
        placement: Some(base.clone()),
        faults: Some(FaultPlan::default()),
        link,
        ..Default::default()
    }
}

fn start_actors(
    model: &Arc<Model>,
    base: &toml::Table,
    schedule: &str,
    link: Option<LinkSpec>,
    o: &BenchOptions,
) -> Result<Actors> {
    let cfg = actors_config(base, schedule, link, None);
    let rt = ActorRuntime::start_with(model.clone(), None, None, cfg)?;
    let caches = (0..o.sequences)
        .map(|_| (SeqCaches::new(&rt.core().kv_pools), 0))
        .collect();
    let mut a = Actors { rt, caches };
    a.forward(&|i| prompt(model, o.prompt_len, i))?;
    Ok(a)
}

/// Per-contender samples of an interleaved run, one per round (seconds).
struct Samples {
    times: Vec<f64>,
    busy: Vec<f64>,
    exposed: Vec<f64>,
}

impl Samples {
    /// (median step, median link busy, median link exposed).
    fn medians(&self) -> (f64, f64, f64) {
        (
            median(self.times.clone()),
            median(self.busy.clone()),
            median(self.exposed.clone()),
        )
    }
}

/// Median over rounds of `f(a's step time, b's step time)` in the same round: steps of one round
/// run back to back, so machine noise that lasts longer than a round cancels out.
fn paired(a: &Samples, b: &Samples, f: impl Fn(f64, f64) -> f64) -> f64 {
    median(
        a.times
            .iter()
            .zip(&b.times)
            .map(|(&x, &y)| f(x, y))
            .collect(),
    )
}

/// Runs `rounds` interleaved decode steps over `cs`.
fn interleave(cs: &mut [&mut dyn Stepper], rounds: usize) -> Result<Vec<Samples>> {
    for c in cs.iter_mut() {
        c.step()?; // warm-up
    }
    let mut out: Vec<Samples> = (0..cs.len())
        .map(|_| Samples {
            times: Vec::new(),
            busy: Vec::new(),
            exposed: Vec::new(),
        })
        .collect();
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

/// Runs the benchmark on `model` with `placement` (the graph's `[placement]`, minus its link).
pub fn run(
    model: Arc<Model>,
    placement: Option<&toml::Table>,
    o: &BenchOptions,
) -> Result<BenchReport> {
    let mut base = placement.cloned().unwrap_or_default();
    base.remove("link");
    let mut reference = Reference::new(&model, o.sequences)?;
    reference.forward(&|i| prompt(&model, o.prompt_len, i))?;
    let mut actors = start_actors(&model, &base, "sequential", None, o)?;
    let r = interleave(&mut [&mut reference, &mut actors], o.steps)?;
    actors.rt.shutdown()?;
    let mut report = BenchReport {
        sequences: o.sequences,
        steps: o.steps,
        reference_decode_tok_s: o.sequences as f64 / r[0].medians().0,
        actors_decode_tok_s: o.sequences as f64 / r[1].medians().0,
        paired_ratio: paired(&r[0], &r[1], |reference, actors| reference / actors),
        link: Vec::new(),
    };
    if o.with_link {
        report.link = link_overlap(&model, &base, o)?;
    }
    Ok(report)
}

/// Per schedule: decode step time with and without the link, interleaved in one run.
pub fn link_overlap(
    model: &Arc<Model>,
    base: &toml::Table,
    o: &BenchOptions,
) -> Result<Vec<LinkRow>> {
    let schedules = ["sequential", "two-microbatch"];
    // Only cross-node transfers use the link: unless the placement says otherwise, the routers
    // sit on node 0 and every expert group on node 1 (expert parallelism across the link).
    let mut base = base.clone();
    if !base.contains_key("nodes") {
        base.insert("nodes".into(), toml::Value::Integer(2));
        base.insert(
            "expert_nodes".into(),
            toml::Value::Array(vec![toml::Value::Integer(1)]),
        );
    }
    let base = &base;
    let mut rts = Vec::new();
    for s in schedules {
        rts.push(start_actors(model, base, s, None, o)?);
        rts.push(start_actors(model, base, s, Some(o.link), o)?);
    }
    let r = {
        let mut cs: Vec<&mut dyn Stepper> = rts.iter_mut().map(|a| a as &mut dyn Stepper).collect();
        interleave(&mut cs, o.steps)?
    };
    for a in rts {
        a.rt.shutdown()?;
    }
    Ok(schedules
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ((t0, _, _), (t1, busy, exposed)) = (r[2 * i].medians(), r[2 * i + 1].medians());
            // The link's wall-time cost, paired per round.
            let cost = paired(&r[2 * i + 1], &r[2 * i], |with, without| with - without);
            LinkRow {
                schedule: s.to_string(),
                step_without_link: t0,
                step_with_link: t1,
                link_busy: busy,
                link_exposed: exposed,
                hidden_direct: if busy > 0.0 {
                    (1.0 - exposed / busy).clamp(0.0, 1.0)
                } else {
                    0.0
                },
                hidden: if busy > 0.0 {
                    (1.0 - cost / busy).clamp(0.0, 1.0)
                } else {
                    0.0
                },
            }
        })
        .collect())
}

/// The runtime whose decode steps [`profile`] runs alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    Actors,
    Reference,
}

impl std::fmt::Display for Contender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Contender::Actors => "actors",
            Contender::Reference => "reference",
        })
    }
}

/// Decode steps of one contender only, for profiling (`perf record`); `o.trace` writes the
/// actors' Chrome trace of those steps. Returns decode tokens/s (median step).
pub fn profile(
    model: Arc<Model>,
    placement: Option<&toml::Table>,
    o: &BenchOptions,
    which: Contender,
) -> Result<f64> {
    let mut base = placement.cloned().unwrap_or_default();
    base.remove("link");
    let mut times = Vec::new();
    if which == Contender::Reference {
        let mut r = Reference::new(&model, o.sequences)?;
        r.forward(&|i| prompt(&model, o.prompt_len, i))?;
        for _ in 0..o.steps {
            let t = Instant::now();
            r.step()?;
            times.push(t.elapsed().as_secs_f64());
        }
    } else {
        let mut a = start_actors(&model, &base, "sequential", None, o)?;
        if let Some(path) = &o.trace {
            // A second runtime, traced, so the trace holds decode steps only (no prefill).
            a.rt.shutdown()?;
            let caches = a.caches;
            let cfg = actors_config(&base, "sequential", None, Some(path.clone()));
            a = Actors {
                rt: ActorRuntime::start_with(model.clone(), None, None, cfg)?,
                caches,
            };
        }
        for _ in 0..o.steps {
            let t = Instant::now();
            a.step()?;
            times.push(t.elapsed().as_secs_f64());
        }
        a.rt.shutdown()?;
    }
    Ok(o.sequences as f64 / median(times))
}
