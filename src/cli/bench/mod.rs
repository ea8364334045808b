//! `troupe bench`: what llama.cpp's `llama-bench` measures, so the two compare directly.
//! - `pp{P}`: one forward pass over a P-token prompt from an empty cache;
//! - `tg{N}`: N single-token decode steps from position 0;
//! tokens/s as the median of `--reps` repetitions with min–max, plus the weight bytes a
//! decoded token streams and the GB/s that achieves against a measured read bandwidth.
//! `--runtime actors` instead runs `troupe_actors::bench`: decode tokens/s of the actor runtime vs
//! the reference executor (`--seqs` sequences prefilled with `-p` tokens, `-r` interleaved
//! rounds, median step) and the fraction of link time each schedule hides (link at 100 µs /
//! 10 Gbit/s; `--no-link` skips it); `--profile actors|reference [--trace F]` runs one
//! contender's decode steps alone, for `perf record`. Counts of 0 or non-numbers are refused
//! by clap (exit 2).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use rayon::prelude::*;
use troupe_engine::executor::SeqChunk;
use troupe_engine::model::Model;

use troupe_actors::bench::Contender;

use super::common::{mla_form, prepare, CliError};
use super::{RunArgs, RuntimeKind};

/// `-p` default of the reference's pp test.
const REFERENCE_PROMPT_LEN: usize = 128;
/// `-p` default under `--runtime actors`: each sequence's prefill before the decode rounds.
const ACTORS_PROMPT_LEN: usize = 16;

/// A count of at least 1 (clap refuses 0 and non-numbers with exit 2).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Prompt tokens: the pp test's prompt (reference; default 128, 0 skips the test), or each
    /// sequence's prefill before the decode rounds (actors; default 16).
    #[arg(short = 'p', long = "n-prompt")]
    pub n_prompt: Option<usize>,
    /// Decode steps for the tg test (reference only; 0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    pub n_gen: usize,
    /// Repetitions (median reported). With --runtime actors: interleaved decode rounds.
    #[arg(short = 'r', long, default_value_t = 5, value_parser = at_least_one)]
    pub reps: usize,
    /// reference (llama-bench style, default) or actors (actors vs reference decode + link overlap).
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// --runtime actors: sequences decoded together (default 8).
    #[arg(long, value_parser = at_least_one)]
    pub seqs: Option<usize>,
    /// --runtime actors: skip the link-overlap measurement.
    #[arg(long)]
    pub no_link: bool,
    /// --runtime actors: decode steps of one contender only, for `perf record`.
    #[arg(long, value_enum)]
    pub profile: Option<ProfileTarget>,
    /// With --profile actors: write a Chrome/Perfetto trace of the decode steps here.
    #[arg(long, requires = "profile")]
    pub trace: Option<PathBuf>,
}

/// `--profile`: the contender whose decode steps run alone.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileTarget {
    Actors,
    Reference,
}

impl From<ProfileTarget> for Contender {
    fn from(p: ProfileTarget) -> Contender {
        match p {
            ProfileTarget::Actors => Contender::Actors,
            ProfileTarget::Reference => Contender::Reference,
        }
    }
}

/// `--runtime actors`: the actor runtime's benchmark (or one contender's steps, `--profile`).
fn run_actors(a: &BenchArgs) -> Result<(), CliError> {
    let (graph, model, _be) = prepare(&a.run)?;
    let o = troupe_actors::bench::BenchOptions {
        sequences: a.seqs.unwrap_or(8),
        prompt_len: a.n_prompt.unwrap_or(ACTORS_PROMPT_LEN),
        steps: a.reps,
        with_link: !a.no_link,
        trace: a.trace.clone(),
        ..Default::default()
    };
    println!(
        "model: {}  threads: {}  runtime: actors vs reference  sequences: {}  prompt tokens: {}  rounds: {}",
        a.run.model.display(),
        rayon::current_num_threads(),
        o.sequences,
        o.prompt_len,
        o.steps
    );
    let placement = graph.placement.as_ref();
    let runtime_err = |e: troupe_actors::ActorError| CliError::Runtime(e.to_string());
    match a.profile {
        Some(which) => {
            let which = Contender::from(which);
            let tok_s =
                troupe_actors::bench::profile(model, placement, &o, which).map_err(runtime_err)?;
            println!("{which}: {tok_s:.1} decode tok/s (median step)");
        }
        None => {
            let report = troupe_actors::bench::run(model, placement, &o).map_err(runtime_err)?;
            print!("{report}");
        }
    }
    Ok(())
}

/// Median, min, max.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Bytes of weights one decoded token reads: its active parameters (routed experts: top-k of
/// them; one embedding row) as `troupe inspect` counts them, at the weights' dtype.
pub fn weight_bytes_per_token(model: &Model) -> u64 {
    let (_, total) = troupe_engine::inspect::inspect(&model.plan);
    total.active_params * model.spec.dtype.size() as u64
}

/// Runs `body` once to warm up, then `reps` times; returns median, min and max of
/// `per_run / seconds` and prints them as the row `label`.
fn timed_row(
    label: String,
    reps: usize,
    per_run: usize,
    mut body: impl FnMut() -> Result<(), CliError>,
) -> Result<(f64, f64, f64), CliError> {
    body()?; // warm-up
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        body()?;
        rates.push(per_run as f64 / t.elapsed().as_secs_f64());
    }
    let (med, lo, hi) = stats(rates);
    println!("{label:<8} {med:>12.2} {lo:>10.2} - {hi:<10.2}");
    Ok((med, lo, hi))
}

/// Read bandwidth of this machine with the pool's threads (GB/s), over a buffer far larger than
/// the caches.
pub fn measure_read_bandwidth() -> f64 {
    let n = 256 << 20; // 1 GiB of f32
    let buf: Vec<f32> = (0..n).map(|i| (i & 1023) as f32).collect();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut lanes = [0.0f32; 16];
                for ch in c.chunks_exact(16) {
                    for (l, v) in lanes.iter_mut().zip(ch) {
                        *l += v;
                    }
                }
                lanes.iter().sum::<f32>()
            })
            .sum();
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((n * 4) as f64 / dt / 1e9);
    }
    best
}

pub fn run(a: BenchArgs) -> Result<(), CliError> {
    if a.runtime == Some(RuntimeKind::Actors) {
        return run_actors(&a);
    }
    if a.profile.is_some() || a.no_link || a.seqs.is_some() {
        return Err(CliError::Usage(
            "--profile, --trace, --no-link and --seqs need --runtime actors".into(),
        ));
    }
    let n_prompt = a.n_prompt.unwrap_or(REFERENCE_PROMPT_LEN);
    let (_graph, model, be) = prepare(&a.run)?;
    let exec = super::executor::reference(&model, &be, mla_form(&a.run.mla)?);
    let vocab = model.spec.vocab_size as u32;
    let tokens: Vec<u32> = (0..n_prompt.max(1))
        .map(|i| (i as u32 * 7919 + 13) % vocab)
        .collect();
    println!(
        "model: {}  threads: {}  device: {}  runtime: reference",
        a.run.model.display(),
        rayon::current_num_threads(),
        be.name()
    );
    println!("{:<8} {:>12} {:>22}", "test", "tok/s", "min - max");
    if n_prompt > 0 {
        timed_row(format!("pp{}", n_prompt), a.reps, n_prompt, || {
            let mut cache = model.new_cache();
            exec.forward(
                &mut [SeqChunk {
                    tokens: tokens.clone(),
                    cache: &mut cache,
                }],
                None,
            )?;
            Ok(())
        })?;
    }
    if a.n_gen > 0 {
        let (med, _, _) = timed_row(format!("tg{}", a.n_gen), a.reps, a.n_gen, || {
            let mut cache = model.new_cache();
            let mut tok = tokens[0];
            for _ in 0..a.n_gen {
                let l = exec.forward(
                    &mut [SeqChunk {
                        tokens: vec![tok],
                        cache: &mut cache,
                    }],
                    None,
                )?;
                tok = troupe_engine::sampling::argmax(l.row(0));
            }
            Ok(())
        })?;
        let bytes = weight_bytes_per_token(&model) as f64;
        let bw = measure_read_bandwidth();
        let achieved = bytes * med / 1e9;
        println!(
            "decode weight traffic: {:.1} MB/token -> {:.2} GB/s achieved vs {:.2} GB/s measured read bandwidth ({:.0}%)",
            bytes / 1e6, achieved, bw, 100.0 * achieved / bw
        );
    }
    Ok(())
}
