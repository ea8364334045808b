//! Benchmark (not a test): decode tokens/s of the actor runtime vs the reference executor, and
//! the fraction of simulated link time hidden by `two-microbatch` compared with `sequential`.
//! Wired into `troupe bench --runtime actors` by the CLI, or run `troupe-actors-bench MODEL`.
//!
//! Decode tokens/s = `seqs · (N − 1) / (T(N tokens) − T(1 token))` (prefill cancels out).
//! Hidden fraction = `1 − (T_with_link − T_without_link) / link_busy`, where `link_busy` is the
//! wall time during which at least one transfer was in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::generate::{generate, GenerateRequest};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::Model;
use troupe_engine::sampling::SamplingParams;
use troupe_engine::weights::random::SplitMix64;

use crate::error::Result;
use crate::fault::FaultPlan;
use crate::placement::LinkSpec;
use crate::runtime::{ActorRuntime, RuntimeConfig, RuntimeOptions};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub sequences: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub link: LinkSpec,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            sequences: 8,
            prompt_len: 16,
            new_tokens: 8,
            link: LinkSpec {
                latency: Duration::from_micros(100),
                gbps: 10.0,
            },
        }
    }
}

/// Measured numbers.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    pub reference_decode_tok_s: f64,
    pub actors_decode_tok_s: f64,
    /// (schedule, seconds without link, seconds with link, link busy seconds, hidden fraction)
    pub link: Vec<(String, f64, f64, f64, f64)>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "decode tokens/s: reference {:.1}, actors (sequential) {:.1}",
            self.reference_decode_tok_s, self.actors_decode_tok_s
        )?;
        for (s, t0, t1, busy, hidden) in &self.link {
            writeln!(
                f,
                "link {s:>15}: {t0:.3}s without link, {t1:.3}s with link, link busy {busy:.3}s, hidden {:.0}%",
                hidden * 100.0
            )?;
        }
        Ok(())
    }
}

fn requests(model: &Model, o: &BenchOptions, new_tokens: usize) -> Vec<GenerateRequest> {
    let mut rng = SplitMix64::new(7);
    let vocab = model.spec.vocab_size as u64;
    (0..o.sequences)
        .map(|_| GenerateRequest {
            prompt: (0..o.prompt_len)
                .map(|_| (rng.next_u64() % vocab) as u32)
                .collect(),
            max_new_tokens: new_tokens,
            sampling: SamplingParams::default(),
            stop_token: None,
            keep_logits: false,
        })
        .collect()
}

/// Best of three runs (first-run effects and scheduler noise only ever add time).
fn timed<T>(mut f: impl FnMut() -> Result<T>) -> Result<(T, f64)> {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        out = Some(f()?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((out.expect("three runs"), best))
}

fn decode_rate(o: &BenchOptions, t1: f64, tn: f64) -> f64 {
    (o.sequences * o.new_tokens.saturating_sub(1)) as f64 / (tn - t1).max(1e-9)
}

/// Runs the benchmark on `model` with `placement` (the graph's `[placement]`, minus its link).
pub fn run(
    model: Arc<Model>,
    placement: Option<&toml::Table>,
    o: &BenchOptions,
) -> Result<BenchReport> {
    let mut report = BenchReport::default();
    let be = CpuBackend::new();
    let exec = ReferenceExecutor::new(&model, &be);
    generate(&exec, &requests(&model, o, 2))?; // warm-up
    let (_, r1) = timed(|| Ok(generate(&exec, &requests(&model, o, 1))?))?;
    let (_, rn) = timed(|| Ok(generate(&exec, &requests(&model, o, o.new_tokens))?))?;
    report.reference_decode_tok_s = decode_rate(o, r1, rn);
    let mut base = placement.cloned().unwrap_or_default();
    base.remove("link");
    let start = |schedule: &str, link: Option<LinkSpec>| {
        let cfg = RuntimeConfig {
            options: RuntimeOptions {
                schedule: Some(schedule.into()),
                ..Default::default()
            },
            placement: Some(base.clone()),
            faults: Some(FaultPlan::default()),
            link,
            ..Default::default()
        };
        ActorRuntime::start_with(model.clone(), None, None, cfg)
    };
    let rt = start("sequential", None)?;
    rt.generate(&requests(&model, o, 2))?; // warm-up
    let (_, a1) = timed(|| rt.generate(&requests(&model, o, 1)))?;
    let (_, an) = timed(|| rt.generate(&requests(&model, o, o.new_tokens)))?;
    rt.shutdown()?;
    report.actors_decode_tok_s = decode_rate(o, a1, an);
    for schedule in ["sequential", "two-microbatch"] {
        let rt = start(schedule, None)?;
        rt.generate(&requests(&model, o, 2))?;
        let (_, t0) = timed(|| rt.generate(&requests(&model, o, o.new_tokens)))?;
        rt.shutdown()?;
        let rt = start(schedule, Some(o.link))?;
        rt.generate(&requests(&model, o, 2))?;
        let stats = rt.core().link.as_ref().map(|l| l.stats.clone());
        let before = stats
            .as_ref()
            .map(|s| s.busy_ns.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0);
        let (_, t1) = timed(|| rt.generate(&requests(&model, o, o.new_tokens)))?;
        let busy = stats
            .map(|s| s.busy_ns.load(std::sync::atomic::Ordering::Relaxed) - before)
            .unwrap_or(0) as f64
            * 1e-9;
        rt.shutdown()?;
        let hidden = if busy > 0.0 {
            (1.0 - (t1 - t0) / busy).clamp(0.0, 1.0)
        } else {
            0.0
        };
        report
            .link
            .push((schedule.to_string(), t0, t1, busy, hidden));
    }
    Ok(report)
}
