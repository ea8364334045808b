//! Benchmark (not a test): decode speed of the actor runtime vs the reference executor, and the
//! fraction of simulated link time each schedule hides, for any schedules
//! ([`BenchOptions::schedules`]: built-in or your own `Arc<dyn Schedule>`). Run it with
//! `troupe bench -m MODEL --compare [--schedule NAME[,NAME..]] [--seqs N] [-p PROMPT]
//! [-r ROUNDS] [--no-link] [--profile actors|reference [--trace F]]`; names are looked up in
//! `schedule::registry`, so a schedule registered there is benched like a built-in.
//!
//! Everything is measured **interleaved in one process**, so machine noise hits every contender
//! alike: all runtimes are started up front, every sequence is prefilled with the same prompt,
//! then decode steps (one new token per sequence, fed straight back, no sampling) run round-robin
//! over the contenders, `steps` rounds. Per contender the **median step time** is kept, and
//! comparisons are **paired per round**: the steps of one round run back to back, so noise that
//! lasts longer than a round (another process, frequency changes) cancels in their ratio.
//!
//! * decode tokens/s = `sequences / median step time`; per schedule, the headline ratio is the
//!   median over rounds of `t_reference / t_actors` (the ratio of the medians is printed too).
//! * link: per schedule, one runtime without and one with the link (`BenchOptions::link`); the
//!   expert groups sit on node 1 and the routers on node 0 (unless the placement sets `nodes`),
//!   so every dispatch and combine crosses the link.
//!   `link_busy` = wall time per step during which at least one transfer was in flight (union
//!   of submission→delivery intervals, median over the steps). **hidden = 1 − median(T_link −
//!   T_no_link) / link_busy** (the difference paired per round), clamped to [0, 1]: 100% = the link costs no wall time at all,
//!   0% = every microsecond the link is busy adds to the step.

mod steppers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe_engine::model::{ChunkKind, Model};

use crate::error::Result;
use crate::placement::{LinkSpec, PlacementSpec};
use crate::schedule::{Schedule, Sequential, TwoMicroBatch};
use steppers::{
    interleave, median, paired, prompt, start_actors, start_actors_traced, Reference, Stepper,
};

/// What to run.
#[derive(Clone)]
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
    /// The schedules measured, each as its own actors contender against the reference and,
    /// with `with_link`, with and without the link (`profile` runs the first). Default:
    /// sequential and two-microbatch.
    pub schedules: Vec<Arc<dyn Schedule>>,
}

impl std::fmt::Debug for BenchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.schedules.iter().map(|s| s.name()).collect();
        f.debug_struct("BenchOptions")
            .field("sequences", &self.sequences)
            .field("prompt_len", &self.prompt_len)
            .field("steps", &self.steps)
            .field("link", &self.link)
            .field("with_link", &self.with_link)
            .field("trace", &self.trace)
            .field("schedules", &names)
            .finish()
    }
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
            schedules: vec![Arc::new(Sequential), Arc::new(TwoMicroBatch::default())],
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

/// One schedule's decode speed against the reference executor.
#[derive(Clone, Debug, Default)]
pub struct ScheduleRow {
    pub schedule: String,
    pub decode_tok_s: f64,
    /// Median over rounds of (reference step time / this schedule's step time) within the
    /// round: the speed ratio with slow machine noise cancelled (the headline number).
    pub paired_ratio: f64,
}

/// Measured numbers.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    pub sequences: usize,
    pub steps: usize,
    pub reference_decode_tok_s: f64,
    /// One row per schedule, in [`BenchOptions::schedules`] order.
    pub actors: Vec<ScheduleRow>,
    /// One row per schedule when the link was measured.
    pub link: Vec<LinkRow>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "decode, {} sequences, median of {} interleaved steps: reference {:.1} tok/s",
            self.sequences, self.steps, self.reference_decode_tok_s,
        )?;
        for r in &self.actors {
            writeln!(
                f,
                "actors {:>15}: {:.1} tok/s; actors/reference {:.3} ({:+.1}%) paired per round, {:.3} from the medians",
                r.schedule,
                r.decode_tok_s,
                r.paired_ratio,
                (r.paired_ratio - 1.0) * 100.0,
                r.decode_tok_s / self.reference_decode_tok_s.max(1e-12),
            )?;
        }
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

/// The placement the contenders run with: `placement` (none: the defaults) without its link
/// (the benchmark adds its own).
fn base_placement(placement: Option<&PlacementSpec>) -> PlacementSpec {
    let mut base = placement.cloned().unwrap_or_default();
    base.link = None;
    base
}

/// The link `placement`'s `[placement.link]` table describes, if it has one.
pub fn placement_link(placement: Option<&PlacementSpec>) -> Result<Option<LinkSpec>> {
    placement
        .and_then(|p| p.link.as_ref())
        .map(LinkSpec::from_table)
        .transpose()
}

/// The schedules of `o`, or an error when there are none.
fn schedules(o: &BenchOptions) -> Result<&[Arc<dyn Schedule>]> {
    match o.schedules.is_empty() {
        true => Err(crate::error::ActorError::schedule(
            "schedules",
            "the benchmark needs at least one schedule",
        )),
        false => Ok(&o.schedules),
    }
}

/// Runs the benchmark on `model` with `placement` (e.g. the graph's `[placement]` through
/// `PlacementSpec::from_table`, or `Placement::builder()`; its link is replaced by `o.link`):
/// the reference and one actors runtime per schedule of `o`, interleaved; then, with
/// `o.with_link`, [`link_overlap`] for the same schedules.
pub fn run(
    model: Arc<Model>,
    placement: Option<&PlacementSpec>,
    o: &BenchOptions,
) -> Result<BenchReport> {
    let schedules = schedules(o)?;
    let base = base_placement(placement);
    let mut reference = Reference::new(&model, o.sequences)?;
    reference.forward(&|i| prompt(&model, o.prompt_len, i), ChunkKind::Prompt)?;
    let mut actors = schedules
        .iter()
        .map(|s| start_actors(&model, &base, s, None, o))
        .collect::<Result<Vec<_>>>()?;
    let r = {
        let mut cs: Vec<&mut dyn Stepper> = vec![&mut reference];
        cs.extend(actors.iter_mut().map(|a| a as &mut dyn Stepper));
        interleave(&mut cs, o.steps)?
    };
    for a in actors {
        a.rt.shutdown()?;
    }
    let mut report = BenchReport {
        sequences: o.sequences,
        steps: o.steps,
        reference_decode_tok_s: o.sequences as f64 / r[0].medians().0,
        actors: schedules
            .iter()
            .zip(&r[1..])
            .map(|(s, samples)| ScheduleRow {
                schedule: s.name().to_string(),
                decode_tok_s: o.sequences as f64 / samples.medians().0,
                paired_ratio: paired(&r[0], samples, |reference, actors| reference / actors),
            })
            .collect(),
        link: Vec::new(),
    };
    if o.with_link {
        report.link = link_overlap(&model, &base, o)?;
    }
    Ok(report)
}

/// Per schedule of `o`: decode step time with and without the link, and the link time hidden,
/// interleaved in one run.
pub fn link_overlap(
    model: &Arc<Model>,
    base: &PlacementSpec,
    o: &BenchOptions,
) -> Result<Vec<LinkRow>> {
    let schedules = schedules(o)?;
    // Only cross-node transfers use the link: unless the placement says otherwise, the routers
    // sit on node 0 and every expert group on node 1 (expert parallelism across the link).
    let mut base = base.clone();
    if base.nodes.is_none() {
        base.nodes = Some(2);
        base.expert_nodes = Some(vec![1]);
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
                schedule: s.name().to_string(),
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

/// Decode steps of one contender only, for profiling (`perf record`); the actors run the first
/// schedule of `o` on `placement` as given (its `[placement.link]` kept, as [`step_times`]
/// keeps it), and `o.trace` writes their Chrome trace of those steps. Returns decode tokens/s
/// (median step).
pub fn profile(
    model: Arc<Model>,
    placement: Option<&PlacementSpec>,
    o: &BenchOptions,
    which: Contender,
) -> Result<f64> {
    let link = placement_link(placement)?;
    let base = base_placement(placement);
    let mut times = Vec::new();
    if which == Contender::Reference {
        let mut r = Reference::new(&model, o.sequences)?;
        r.forward(&|i| prompt(&model, o.prompt_len, i), ChunkKind::Prompt)?;
        for _ in 0..o.steps {
            let t = Instant::now();
            r.step()?;
            times.push(t.elapsed().as_secs_f64());
        }
    } else {
        let schedule = &schedules(o)?[0];
        // Traced, the prefill's spans are dropped: the trace holds the decode steps only. (The
        // sequences' caches belong to this runtime's KV pools, so the prefill runs here too.)
        let mut a = start_actors_traced(&model, &base, schedule, link, o, o.trace.clone())?;
        for _ in 0..o.steps {
            let t = Instant::now();
            a.step()?;
            times.push(t.elapsed().as_secs_f64());
        }
        a.rt.shutdown()?;
    }
    Ok(o.sequences as f64 / median(times))
}

/// Decode step times (seconds, in order) of one actors runtime on `placement` as given — its
/// `[placement.link]` kept — running `schedule`: `o.sequences` sequences prefilled with
/// `o.prompt_len` tokens, then `o.steps` decode steps. What `troupe calibrate` and the
/// simulator's validation (`bench/sim-validate.sh`) measure.
pub fn step_times(
    model: Arc<Model>,
    placement: &PlacementSpec,
    schedule: &Arc<dyn Schedule>,
    o: &BenchOptions,
) -> Result<Vec<f64>> {
    let link = placement_link(Some(placement))?;
    let base = base_placement(Some(placement));
    let mut a = start_actors(&model, &base, schedule, link, o)?;
    let mut times = Vec::with_capacity(o.steps);
    for _ in 0..o.steps {
        let t = Instant::now();
        a.step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    a.rt.shutdown()?;
    Ok(times)
}
