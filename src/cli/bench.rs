//! `troupe bench`: what llama.cpp's `llama-bench` measures, so the two compare directly.
//! - `pp{P}`: one forward pass over a P-token prompt from an empty cache;
//! - `tg{N}`: N single-token decode steps from position 0;
//! tokens/s as the median of `--reps` repetitions (≥ 5) with min–max, plus the weight bytes a
//! decoded token streams and the GB/s that achieves against a measured read bandwidth.
//! `--runtime actors` instead runs `troupe_actors::bench`: decode tokens/s of the actor runtime vs
//! the reference executor (interleaved in one run, median step) and the fraction of link time
//! each schedule hides (link at 100 µs / 10 Gbit/s).

use std::time::Instant;

use clap::Args;
use rayon::prelude::*;
use troupe_engine::executor::SeqChunk;
use troupe_engine::model::Model;

use super::common::{mla_form, prepare, CliError};
use super::RunArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Prompt tokens for the pp test (0 to skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub n_prompt: usize,
    /// Decode steps for the tg test (0 to skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    pub n_gen: usize,
    /// Repetitions (median reported; at least 5). With --runtime actors: interleaved decode steps.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub reps: usize,
    /// reference (llama-bench style, default) or actors (actors vs reference decode + link overlap).
    #[arg(long)]
    pub runtime: Option<String>,
    /// --runtime actors: sequences decoded together.
    #[arg(long, default_value_t = 8)]
    pub seqs: usize,
    /// --runtime actors: skip the link-overlap measurement.
    #[arg(long)]
    pub no_link: bool,
}

/// `--runtime actors`: the actor runtime's benchmark.
fn run_actors(a: &BenchArgs) -> Result<(), CliError> {
    let (graph, model, _be) = prepare(&a.run)?;
    let o = troupe_actors::bench::BenchOptions {
        sequences: a.seqs.max(1),
        steps: a.reps,
        with_link: !a.no_link,
        ..Default::default()
    };
    println!(
        "model: {}  threads: {}  runtime: actors vs reference  sequences: {}",
        a.run.model.display(),
        rayon::current_num_threads(),
        o.sequences
    );
    let report = troupe_actors::bench::run(model, graph.placement.as_ref(), &o)
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    print!("{report}");
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
    if a.reps < 5 {
        return Err(CliError::Usage(format!(
            "--reps {}: at least 5 repetitions are needed for a median",
            a.reps
        )));
    }
    match a.runtime.as_deref() {
        None | Some("reference") => {}
        Some("actors") => return run_actors(&a),
        Some(other) => {
            return Err(CliError::Usage(format!(
                "--runtime {other}: expected actors or reference"
            )))
        }
    }
    let (_graph, model, be) = prepare(&a.run)?;
    let exec = super::executor::reference(&model, &be, mla_form(&a.run.mla)?);
    let vocab = model.spec.vocab_size as u32;
    let tokens: Vec<u32> = (0..a.n_prompt.max(1))
        .map(|i| (i as u32 * 7919 + 13) % vocab)
        .collect();
    println!(
        "model: {}  threads: {}  device: {}  runtime: reference",
        a.run.model.display(),
        rayon::current_num_threads(),
        be.name()
    );
    println!("{:<8} {:>12} {:>22}", "test", "tok/s", "min - max");
    if a.n_prompt > 0 {
        timed_row(format!("pp{}", a.n_prompt), a.reps, a.n_prompt, || {
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
