//! In-process fuzzing of the library entry points: graph and config loading, the plan, `inspect`
//! and the memory estimate; checkpoint opening, model loading and a short forward pass and
//! generation (when the estimate is under 256 MiB); tokenizer loading, encoding and decoding;
//! fault-string parsing. Success or a typed one-line error is the promise.
//!
//! The cases run in a worker: this test binary re-run on the ignored test `worker`, under a
//! 4 GiB address-space limit. The worker announces each case (`@@BEGIN i`, `@@END i outcome`)
//! on stdout; the parent kills it when a case runs past 5 s, records a worker that dies
//! mid-case as an abort (or over-memory) of that case, and restarts it after that case.

use std::io::{BufRead, BufReader, Write};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use troupe::actors::FaultPlan;
use troupe::engine::executor::ReferenceExecutor;
use troupe::engine::generate::{generate, GenerateRequest};
use troupe::engine::graph::{LoadedGraph, Plan, WeightsSource};
use troupe::engine::inspect::inspect;
use troupe::engine::kernels::CpuBackend;
use troupe::engine::memory::{MemoryNeed, RunShape};
use troupe::engine::model::Model;
use troupe::engine::sampling::SamplingParams;
use troupe::engine::tokenizer::TextTokenizer;

use super::inputs::{draw_input, Input, Target};
use super::seeds::Seeds;
use super::{env_u64, runner_for, seed, seeds, Tally};
use crate::common::{Outcome, FUZZ_LIMITS, INTERNAL};

const TARGETS: [Target; 5] = [
    Target::GraphFile,
    Target::HfConfig,
    Target::Checkpoint,
    Target::Tokenizer,
    Target::Fault,
];

/// Models whose estimate exceeds this are only parsed and estimated in process (the binary's
/// pre-check refuses what does not fit; the binary fuzz runs those).
const LOAD_CAP: u64 = 256 << 20;

/// The input of case `index`.
fn input_of(seed: u64, index: u64, seeds: &Seeds) -> Input {
    let mut runner = runner_for(seed, index);
    draw_input(&mut runner, TARGETS[(index % 5) as usize], seeds, true)
}

#[test]
fn fuzz_in_process() {
    let total = env_u64("TROUPE_FUZZ_CASES", 2000);
    let tally = run_campaign(total, seed());
    let report = tally.report(&format!("in-process fuzz, {total} cases"));
    println!("{}\n{report}", tally.tally_line("in-process"));
    assert_eq!(
        tally.failed(),
        0,
        "cases broke the promise; their classes and inputs are listed above"
    );
}

/// Runs cases `0..total` in workers, restarting after a case that kills one.
pub fn run_campaign(total: u64, seed: u64) -> Tally {
    let seeds = seeds();
    let scratch = tempfile::tempdir().expect("scratch");
    let exe = std::env::current_exe().expect("test binary");
    let mut tally = Tally::default();
    let mut next = 0;
    while next < total {
        let err_path = scratch.path().join("worker.stderr");
        let err = std::fs::File::create(&err_path).expect("stderr file");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -v "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg((FUZZ_LIMITS.address_space / 1024).to_string())
            .arg(&exe)
            .args([
                "fuzz::in_process::worker",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env("TROUPE_FUZZ_WORKER", "1")
            .env("TROUPE_FUZZ_FROM", next.to_string())
            .env("TROUPE_FUZZ_TO", total.to_string())
            .env("TROUPE_FUZZ_SEED", seed.to_string())
            .env("TROUPE_FUZZ_SEEDS", &seeds.root)
            .env("TROUPE_FUZZ_SCRATCH", scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn worker");
        let (tx, rx) = channel();
        let out = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut current: Option<u64> = None;
        let died_in = loop {
            let wait = if current.is_some() {
                FUZZ_LIMITS.timeout
            } else {
                Duration::from_secs(60)
            };
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    if let Some(rest) = line.split("@@BEGIN ").nth(1) {
                        current = rest.trim().parse().ok();
                    } else if let Some(rest) = line.split("@@END ").nth(1) {
                        let mut parts = rest.splitn(3, ' ');
                        let index: u64 = parts.next().and_then(|i| i.parse().ok()).expect("index");
                        let outcome = parts
                            .next()
                            .and_then(|o| Outcome::ALL.into_iter().find(|x| format!("{x:?}") == o))
                            .expect("outcome");
                        let detail = parts.next().unwrap_or("").to_string();
                        record(&mut tally, seed, index, outcome, detail, seeds);
                        current = None;
                        next = index + 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    break current.map(|i| (i, Outcome::Timeout));
                }
                Err(RecvTimeoutError::Disconnected) => break current.map(|i| (i, Outcome::Abort)),
            }
        };
        let status = child.wait().expect("wait worker");
        let _ = reader.join();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        match died_in {
            Some((index, mut outcome)) => {
                if outcome == Outcome::Abort && stderr.contains("memory allocation of") {
                    outcome = Outcome::OverMemory;
                }
                let detail = format!("worker {status}: {}", super::clip(stderr.trim(), 300));
                record(&mut tally, seed, index, outcome, detail, seeds);
                next = index + 1;
            }
            None if next < total => panic!(
                "fuzz worker stopped before case {next} ({status}): {}",
                super::clip(&stderr, 2000)
            ),
            None => {}
        }
    }
    tally
}

fn record(
    tally: &mut Tally,
    seed: u64,
    index: u64,
    outcome: Outcome,
    detail: String,
    seeds: &Seeds,
) {
    let target = TARGETS[(index % 5) as usize].name();
    let input = if outcome.keeps_promise() {
        String::new()
    } else {
        input_of(seed, index, seeds).describe()
    };
    tally.record(outcome, target, index, input, detail);
}

/// The last panic message of this process (the worker's hook stores it instead of printing).
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// The worker: runs cases `TROUPE_FUZZ_FROM..TROUPE_FUZZ_TO` when started by `run_campaign`.
#[test]
#[ignore = "started by fuzz_in_process in a child process"]
fn worker() {
    if std::env::var_os("TROUPE_FUZZ_WORKER").is_none() {
        return;
    }
    let from = env_u64("TROUPE_FUZZ_FROM", 0);
    let to = env_u64("TROUPE_FUZZ_TO", 0);
    let seed = env_u64("TROUPE_FUZZ_SEED", 0);
    let seeds = Seeds::build(Path::new(
        &std::env::var("TROUPE_FUZZ_SEEDS").expect("seeds"),
    ));
    let scratch = std::path::PathBuf::from(std::env::var("TROUPE_FUZZ_SCRATCH").expect("scratch"));
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = info.to_string();
        }
    }));
    let mut stdout = std::io::stdout();
    for index in from..to {
        let _ = writeln!(stdout, "\n@@BEGIN {index}");
        let _ = stdout.flush();
        let input = input_of(seed, index, &seeds);
        let dir = scratch.join(format!("case-{index}"));
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| exercise(&input, &dir, &seeds)));
        let _ = std::fs::remove_dir_all(&dir);
        let (outcome, detail) = match result {
            Ok(Ok(())) => (Outcome::Ok, String::new()),
            Ok(Err(message)) if message.contains(INTERNAL) => (Outcome::InternalError, message),
            Ok(Err(message)) if message.trim_end().contains('\n') => {
                (Outcome::MultiLineError, message)
            }
            Ok(Err(message)) => (Outcome::CleanError, message),
            Err(_) => (
                Outcome::Panic,
                LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default(),
            ),
        };
        let _ = writeln!(
            stdout,
            "@@END {index} {outcome:?} {}",
            super::clip(&detail, 300)
        );
        let _ = stdout.flush();
    }
}

/// Runs the entry points the case's target reaches; `Err` carries the error's display.
fn exercise(input: &Input, dir: &Path, seeds: &Seeds) -> Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    match input.target {
        Target::Fault => FaultPlan::parse(input.fault.as_deref().unwrap_or(""))
            .map(drop)
            .map_err(|e| text(&e)),
        Target::Tokenizer => {
            input.materialize(dir, seeds);
            let tok = TextTokenizer::open(&dir.join("tokenizer.json")).map_err(|e| text(&e))?;
            let ids = tok.encode("The quick brown fox").map_err(|e| text(&e))?;
            tok.decode(&ids).map(drop).map_err(|e| text(&e))
        }
        Target::GraphFile | Target::HfConfig | Target::Checkpoint => {
            let path = input.materialize(dir, seeds);
            exercise_model(&path).map_err(|e| text(&e))
        }
        Target::Cli => Ok(()),
    }
}

/// Open, compile, inspect, estimate; then, if small, load, one forward pass and two tokens.
fn exercise_model(path: &Path) -> Result<(), troupe::engine::EngineError> {
    let graph = LoadedGraph::open(path)?;
    let plan = Plan::compile(&graph.spec);
    let _ = inspect(&plan);
    let shape = RunShape {
        sequences: 1,
        tokens_per_sequence: 4,
        threads: 2,
    };
    let random = matches!(graph.weights, WeightsSource::Random(_));
    if MemoryNeed::of(&graph.spec, random, &shape).total() > LOAD_CAP {
        return Ok(());
    }
    let model = Model::load(&graph, &mut |_, _| {})?;
    let backend = CpuBackend::new();
    let exec = ReferenceExecutor::new(&model, &backend);
    let vocab = graph.spec.vocab_size as u64;
    let prompt: Vec<u32> = (0..3u64).map(|t| (t % vocab) as u32).collect();
    exec.logits(&prompt)?;
    let request = GenerateRequest {
        prompt,
        max_new_tokens: 2,
        sampling: SamplingParams::default(),
        stop_token: None,
        stop_at_eos: false,
        keep_logits: false,
    };
    generate(&exec, &[request])?;
    Ok(())
}
