//! The pp/tg rows of `troupe bench` at each depth, the decode costs printed under them, and the
//! `--json` line. Every test runs on one sequence of the chosen runtime ([`Target`]): the
//! depth's positions are filled once (untimed, in chunks of [`FILL_CHUNK`]), and each
//! repetition rolls the cache back to the depth.
//!
//! The JSON object (the last stdout line with `--json`):
//! `{"model", "device", "isa" (avx512, avx2, portable or ptx), "compute" (f32 or bf16), "threads", "runtime", "tests": [{"name": "pp128"|"tg64",
//! "n_prompt", "n_gen", "n_depth", "tok_s", "min", "max"}], "h2d_bytes_per_decode_step",
//! "d2h_bytes_per_decode_step", "kernel_launches": {kernel: launches per decode step},
//! "decode_steps_counted", "keep_awake" (what `kernels::awake` did), "depth_costs": [{"n_depth", "cache_bytes", "attention_flops",
//! "read_gbps", "gflops", "read_ms", "compute_ms", "extra_ms"}]}`. The per-step counts are
//! differences of `Backend::counters()` over the first tg test's first timed run, after an
//! untimed warm-up has made the weights resident (all backends of the runtime summed), divided
//! by its steps; null without a tg test.

use std::time::Instant;
use troupe_engine::kernels::precision;

use serde_json::{json, Map, Value};
use troupe_engine::device_tensor::DeviceCounters;
use troupe_engine::DeviceId;

use super::costs::{measure_fma_rate, measure_read_bandwidth, DepthCost};
use super::target::{ActorsTarget, ReferenceTarget, Target};
use super::{weight_bytes_per_token, BenchArgs};
use crate::cli::common::{check_memory, kv_config, mla_form, open_graph, start_model, CliError};
use crate::cli::RuntimeKind;
use troupe_engine::model::{ChunkKind, MlaForm};

/// Positions filled per forward pass when a test's depth is filled.
pub const FILL_CHUNK: usize = 512;

/// One measured test.
#[derive(Clone, Debug)]
struct TestRow {
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    /// Median, min, max tokens/s.
    tok_s: (f64, f64, f64),
}

impl TestRow {
    /// llama-bench's name: `pp128`, `tg64`.
    fn name(&self) -> String {
        match self.n_gen {
            0 => format!("pp{}", self.n_prompt),
            n => format!("tg{n}"),
        }
    }
    /// The text row's label: the name, with ` @ d{depth}` at a depth.
    fn label(&self) -> String {
        match self.n_depth {
            0 => self.name(),
            d => format!("{} @ d{d}", self.name()),
        }
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name(),
            "n_prompt": self.n_prompt,
            "n_gen": self.n_gen,
            "n_depth": self.n_depth,
            "tok_s": self.tok_s.0,
            "min": self.tok_s.1,
            "max": self.tok_s.2,
        })
    }
}

/// Median, min, max.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Runs `body` once untimed (a warm-up: weights reach the device then), then `reps` times;
/// returns the counters of the first timed run (steady state: what every step moves once the
/// weights are resident) and median, min, max of `per_run / seconds`.
fn timed(
    target: &mut dyn Target,
    reps: usize,
    per_run: usize,
    mut body: impl FnMut(&mut dyn Target) -> Result<(), CliError>,
) -> Result<(DeviceCounters, (f64, f64, f64)), CliError> {
    body(target)?; // warm-up
    let mut moved = DeviceCounters::default();
    let mut rates = Vec::with_capacity(reps);
    for rep in 0..reps {
        let before = (rep == 0).then(|| target.counters());
        let t = Instant::now();
        body(target)?;
        let secs = t.elapsed().as_secs_f64();
        if let Some(before) = before {
            moved = target.counters().since(&before);
        }
        rates.push(per_run as f64 / secs);
    }
    Ok((moved, stats(rates)))
}

/// A deterministic token sequence (a prompt or a depth's filler), `salt` apart.
fn tokens(vocab: usize, len: usize, salt: u64) -> Vec<u32> {
    (0..len as u64)
        .map(|i| ((i * 7919 + salt * 104_729 + 13) % vocab as u64) as u32)
        .collect()
}

/// The instruction set of the kernels: the CPU kernels' path (`avx512`, `avx2`, `portable`), or
/// the device's.
fn isa(device: &DeviceId) -> &'static str {
    match device {
        DeviceId::Cpu => troupe_engine::kernels::isa::active().name(),
        _ => "ptx",
    }
}

/// `n` as a JSON integer when it is one, else a float.
fn count(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9e15 {
        json!(n as i64)
    } else {
        json!(n)
    }
}

/// The per-decode-step counts of the JSON object (nulls without a tg test).
fn per_step(counters: Option<&(DeviceCounters, usize)>) -> (Value, Value, Value) {
    let Some((c, steps)) = counters else {
        return (Value::Null, Value::Null, Value::Null);
    };
    let s = *steps as f64;
    let launches: Map<String, Value> = c
        .launches
        .iter()
        .map(|(k, v)| (k.clone(), count(*v as f64 / s)))
        .collect();
    (
        count(c.h2d_bytes as f64 / s),
        count(c.d2h_bytes as f64 / s),
        Value::Object(launches),
    )
}

pub fn run(a: &BenchArgs, n_prompt: usize) -> Result<(), CliError> {
    let mut depths = a.n_depth.clone();
    depths.sort_unstable();
    depths.dedup();
    let deepest = depths.last().copied().unwrap_or(0);
    let graph = open_graph(&a.run)?;
    let limit = graph.spec.max_position_embeddings;
    let longest = deepest.saturating_add(n_prompt.max(a.n_gen));
    if longest > limit {
        return Err(CliError::Usage(format!(
            "-d {deepest}: a depth of {deepest} plus a test of {} tokens exceeds the position limit of {limit} (max_position_embeddings)",
            n_prompt.max(a.n_gen)
        )));
    }
    check_memory(&a.run, &graph, 1, longest.max(1))?;
    let (model, be) = start_model(&a.run, &graph)?;
    let runtime = a.runtime.unwrap_or(RuntimeKind::Reference);
    let schedule = match (runtime, &a.schedule[..]) {
        (_, []) => None,
        (RuntimeKind::Actors, [one]) => Some(one.clone()),
        (RuntimeKind::Actors, _) => {
            return Err(CliError::Usage(
                "--schedule: the pp/tg rows run one schedule (several need --compare)".into(),
            ))
        }
        (RuntimeKind::Reference, _) => {
            return Err(CliError::Usage(
                "--schedule needs --runtime actors or --compare".into(),
            ))
        }
    };
    let form = mla_form(&a.run.mla)?;
    let kv = kv_config(&a.run, &model.spec);
    let mut target: Box<dyn Target> = match runtime {
        RuntimeKind::Reference => {
            Box::new(ReferenceTarget::new(model.clone(), be.clone(), form, kv)?)
        }
        RuntimeKind::Actors if form != MlaForm::Auto => {
            return Err(CliError::Usage(
                "--mla applies to --runtime reference; the actor runtime uses auto".into(),
            ))
        }
        RuntimeKind::Actors => Box::new(ActorsTarget::start(
            &graph,
            model.clone(),
            &a.run.device,
            kv,
            schedule,
        )?),
    };
    let threads = rayon::current_num_threads();
    println!(
        "model: {}  threads: {threads}  device: {}  isa: {}  compute: {}  runtime: {}",
        a.run.model.display(),
        be.name(),
        isa(&a.run.device),
        precision::compute().name(),
        target.runtime()
    );
    println!("{:<16} {:>12} {:>22}", "test", "tok/s", "min - max");
    let vocab = model.spec.vocab_size;
    let prompt = tokens(vocab, n_prompt.max(1), 0);
    let filler = tokens(vocab, deepest, 1);
    let mut filled = 0;
    let mut rows: Vec<TestRow> = Vec::new();
    let mut decode: Option<(DeviceCounters, usize)> = None;
    for &depth in &depths {
        while filled < depth {
            let end = (filled + FILL_CHUNK).min(depth);
            target.step(&filler[filled..end], filled, ChunkKind::Prompt)?;
            filled = end;
        }
        if n_prompt > 0 {
            let (_, tok_s) = timed(&mut *target, a.reps, n_prompt, |t| {
                t.step(&prompt, depth, ChunkKind::Prompt).map(|_| ())
            })?;
            rows.push(print_row(n_prompt, 0, depth, tok_s));
        }
        if a.n_gen > 0 {
            let n = a.n_gen;
            let (moved, tok_s) = timed(&mut *target, a.reps, n, |t| {
                let mut tok = prompt[0];
                for i in 0..n {
                    tok = t.step(&[tok], depth + i, ChunkKind::Generated)?;
                }
                Ok(())
            })?;
            decode.get_or_insert((moved, n));
            rows.push(print_row(0, n, depth, tok_s));
        }
    }
    target.finish()?;
    let awake = troupe_engine::kernels::awake::status();
    println!("keep awake: {awake}");
    if let Some(path) = &a.dump_expert_load {
        crate::cli::eplb::dump_expert_load(path, &model)?;
    }
    let costs = decode_costs(&model, &depths, &rows, a.n_gen);
    if a.json {
        let (h2d, d2h, launches) = per_step(decode.as_ref());
        let line = json!({
            "model": a.run.model.display().to_string(),
            "device": a.run.device.to_string(),
            "isa": isa(&a.run.device),
            "compute": precision::compute().name(),
            "threads": threads,
            "runtime": match runtime {
                RuntimeKind::Reference => "reference",
                RuntimeKind::Actors => "actors",
            },
            "tests": rows.iter().map(TestRow::json).collect::<Vec<_>>(),
            "h2d_bytes_per_decode_step": h2d,
            "d2h_bytes_per_decode_step": d2h,
            "kernel_launches": launches,
            "decode_steps_counted": decode.as_ref().map(|d| d.1),
            "keep_awake": awake.to_string(),
            "depth_costs": costs,
        });
        println!("{line}");
    }
    Ok(())
}

fn print_row(n_prompt: usize, n_gen: usize, n_depth: usize, tok_s: (f64, f64, f64)) -> TestRow {
    let row = TestRow {
        n_prompt,
        n_gen,
        n_depth,
        tok_s,
    };
    let (med, lo, hi) = tok_s;
    println!("{:<16} {med:>12.2} {lo:>10.2} - {hi:<10.2}", row.label());
    row
}

/// After a tg test: the weight bytes a decoded token streams against the measured read
/// bandwidth, and at each depth > 0 the two attention costs per decoded token (with the time a
/// token took beyond depth 0's, when both were measured). Returns the `depth_costs` entries.
fn decode_costs(
    model: &troupe_engine::model::Model,
    depths: &[usize],
    rows: &[TestRow],
    n_gen: usize,
) -> Vec<Value> {
    if n_gen == 0 {
        return Vec::new();
    }
    let bytes = weight_bytes_per_token(model) as f64;
    let bw = measure_read_bandwidth();
    let tg = |d: usize| rows.iter().find(|r| r.n_gen > 0 && r.n_depth == d);
    if let Some(r) = tg(depths[0]) {
        let achieved = bytes * r.tok_s.0 / 1e9;
        println!(
            "decode weight traffic: {:.1} MB/token -> {:.2} GB/s achieved vs {:.2} GB/s measured read bandwidth ({:.0}%)",
            bytes / 1e6, achieved, bw, 100.0 * achieved / bw
        );
    }
    if depths.iter().all(|&d| d == 0) {
        return Vec::new();
    }
    let gflops = measure_fma_rate();
    let mut out = Vec::new();
    for &d in depths.iter().filter(|&&d| d > 0) {
        let c = DepthCost::of(model, d);
        let (read, compute) = (c.read_seconds(bw), c.compute_seconds(gflops));
        let extra = match (tg(0), tg(d)) {
            (Some(r0), Some(rd)) => Some(1.0 / rd.tok_s.0 - 1.0 / r0.tok_s.0),
            _ => None,
        };
        println!(
            "attention at d{d} per decoded token: cache {:.1} MB / {bw:.2} GB/s = {:.3} ms; {:.1} MFLOP / {gflops:.1} GFLOP/s (FMA peak) = {:.3} ms{}",
            c.cache_bytes as f64 / 1e6,
            read * 1e3,
            c.flops as f64 / 1e6,
            compute * 1e3,
            match extra {
                Some(e) => format!(
                    "; measured {:.3} ms/token over d0 = {:.2}x the larger",
                    e * 1e3,
                    e / read.max(compute)
                ),
                None => String::new(),
            }
        );
        out.push(json!({
            "n_depth": d,
            "cache_bytes": c.cache_bytes,
            "attention_flops": c.flops,
            "read_gbps": bw,
            "gflops": gflops,
            "read_ms": read * 1e3,
            "compute_ms": compute * 1e3,
            "extra_ms": extra.map(|e| e * 1e3),
        }));
    }
    out
}
