//! Fuzzing the built `troupe` binary: every input kind (graph files, config.json, checkpoints,
//! tokenizers, `TROUPE_FAULT`, argument lists) through `generate`, `logits` and `inspect`, each
//! run bounded to 5 s and a 4 GiB address space, working in its own case folder. The promise:
//! exit 0, or exit 2 with exactly one stderr line.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::select;

use super::inputs::{draw_input, Target};
use super::mutate::{self, CliOp};
use super::seeds::Seeds;
use super::{clip, draw, env_u64, runner_for, seed, seeds, Tally};
use crate::common::{classify, troupe_bin, BoundedRun, FUZZ_LIMITS};

const TARGETS: [Target; 6] = [
    Target::GraphFile,
    Target::HfConfig,
    Target::Checkpoint,
    Target::Tokenizer,
    Target::Fault,
    Target::Cli,
];

/// Argument lists the CLI mutations start from (`{model}`: a micro model folder, `{graph}`: the
/// micro graph file, `{out}`: a file in the case folder).
const CLI_SEEDS: &[&[&str]] = &[
    &[
        "generate",
        "-m",
        "{model}",
        "--prompt-ids",
        "0,5,9",
        "-n",
        "3",
    ],
    &[
        "generate",
        "-m",
        "{graph}",
        "--prompt",
        "The quick",
        "-n",
        "2",
        "--json",
    ],
    &[
        "generate",
        "-m",
        "{model}",
        "--prompt-ids",
        "0,5",
        "-n",
        "2",
        "--runtime",
        "reference",
        "--mla",
        "naive",
    ],
    &[
        "generate",
        "-m",
        "{graph}",
        "--prompt-ids",
        "1,2,3",
        "-n",
        "3",
        "--schedule",
        "two-microbatch",
        "--trace",
        "{out}",
    ],
    &[
        "generate",
        "-m",
        "{model}",
        "--prompt-ids",
        "4",
        "-n",
        "4",
        "--temperature",
        "0.8",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--stop-at-eos",
    ],
    &[
        "logits",
        "-m",
        "{model}",
        "--prompt-ids",
        "0,5,9",
        "--out",
        "{out}",
    ],
    &["inspect", "{graph}"],
    &["import-hf", "{model}"],
    &[
        "bench",
        "-m",
        "{model}",
        "-p",
        "4",
        "-n",
        "0",
        "--threads",
        "2",
    ],
];

#[test]
fn fuzz_binary() {
    let total = env_u64("TROUPE_FUZZ_BINARY_CASES", 200);
    let seed = seed();
    let seeds = seeds();
    let mut tally = Tally::default();
    for index in 0..total {
        let dir = tempfile::tempdir().expect("case dir");
        let (args, env, input) = draw_case(seed, index, seeds, dir.path());
        let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
        let run = run_in(dir.path(), &args, &env);
        let outcome = classify(&run);
        let detail = format!(
            "exit {:?} signal {:?} after {:?}; stderr: {}",
            run.code,
            run.signal,
            run.elapsed,
            clip(run.stderr.trim_end(), 400)
        );
        let target = TARGETS[(index % 6) as usize].name();
        tally.record(
            outcome,
            target,
            index,
            format!("troupe {args:?} env {env:?}; {input}"),
            detail,
        );
    }
    let report = tally.report(&format!("binary fuzz, {total} runs"));
    println!("{}\n{report}", tally.tally_line("binary"));
    assert_eq!(
        tally.failed(),
        0,
        "cases broke the promise; their classes and inputs are listed above"
    );
}

/// Runs the binary in `dir` (relative paths it writes land there).
fn run_in(dir: &Path, args: &[String], env: &[(&str, &OsStr)]) -> BoundedRun {
    let cd: Vec<String> = std::iter::once(dir.display().to_string())
        .chain(std::iter::once(troupe_bin().display().to_string()))
        .chain(args.iter().cloned())
        .collect();
    // `cd DIR && exec troupe ARGS` inside the bounded shell.
    crate::common::run_bounded(Path::new("/bin/sh"), &wrap_cd(&cd), env, FUZZ_LIMITS)
}

fn wrap_cd(cd: &[String]) -> Vec<String> {
    let mut v = vec![
        "-c".to_string(),
        r#"cd "$1" && shift && exec "$@""#.to_string(),
        "sh".to_string(),
    ];
    v.extend(cd.iter().cloned());
    v
}

/// The arguments, extra environment and description of binary case `index`.
pub fn draw_case(
    seed: u64,
    index: u64,
    seeds: &Seeds,
    dir: &Path,
) -> (Vec<String>, Vec<(&'static str, String)>, String) {
    let mut runner = runner_for(seed, index);
    let target = TARGETS[(index % 6) as usize];
    let input = draw_input(&mut runner, target, seeds, false);
    let out = dir.join("out.safetensors").display().to_string();
    let case = dir.join("case");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    match target {
        Target::GraphFile | Target::HfConfig | Target::Checkpoint => {
            let m = input.materialize(&case, seeds).display().to_string();
            let command = draw(&mut runner, 0u8..5);
            let args = match command {
                0 => s(&["generate", "-m", &m, "--prompt-ids", "0,5,9", "-n", "3"]),
                1 => s(&[
                    "generate",
                    "-m",
                    &m,
                    "--prompt-ids",
                    "0,5,9",
                    "-n",
                    "3",
                    "--runtime",
                    "reference",
                ]),
                2 => s(&["logits", "-m", &m, "--prompt-ids", "1,2", "--out", &out]),
                3 => s(&["inspect", &m]),
                _ => s(&[
                    "generate",
                    "-m",
                    &m,
                    "--prompt",
                    "The quick",
                    "-n",
                    "2",
                    "--json",
                ]),
            };
            (args, vec![], input.describe())
        }
        Target::Tokenizer => {
            let m = input.materialize(&case, seeds).display().to_string();
            let args = s(&[
                "generate",
                "-m",
                &m,
                "--prompt",
                "The quick brown",
                "-n",
                "2",
            ]);
            (args, vec![], input.describe())
        }
        Target::Fault => {
            let runtime = draw(&mut runner, select(vec!["actors", "reference"]));
            let g = seeds.graph().display().to_string();
            let args = s(&[
                "generate",
                "-m",
                &g,
                "--prompt-ids",
                "0,5,9",
                "-n",
                "3",
                "--runtime",
                runtime,
            ]);
            let fault = input.fault.clone().unwrap_or_default();
            (args, vec![("TROUPE_FAULT", fault)], input.describe())
        }
        Target::Cli => {
            // A private copy of the model and graph: a mutated `--out` may overwrite them.
            let model = copy_micro(seeds, &case);
            let graph = case.join("micro.toml");
            let template = draw(&mut runner, select(CLI_SEEDS));
            let n_ops = draw(&mut runner, 1usize..=3);
            let ops: Vec<CliOp> = draw(&mut runner, prop::collection::vec(mutate::cli_op(), n_ops));
            let mut args = s(template);
            for op in &ops {
                mutate::apply_cli(&mut args, op);
            }
            let fill = |a: &String| {
                a.replace("{model}", &model.display().to_string())
                    .replace("{graph}", &graph.display().to_string())
                    .replace("{out}", &out)
            };
            let args: Vec<String> = args.iter().map(fill).collect();
            (args, vec![], format!("CLI from {template:?} with {ops:?}"))
        }
    }
}

/// Copies micro-deepseek-v3 and the micro graph file into `case`; returns the model folder.
fn copy_micro(seeds: &Seeds, case: &Path) -> PathBuf {
    let name = "micro-deepseek-v3-tiny";
    let model = case.join(name);
    std::fs::create_dir_all(&model).expect("case model dir");
    for entry in std::fs::read_dir(seeds.micro("deepseek-v3-tiny"))
        .expect("seed")
        .flatten()
    {
        std::fs::copy(entry.path(), model.join(entry.file_name())).expect("copy seed");
    }
    std::fs::copy(seeds.graph(), case.join("micro.toml")).expect("copy graph");
    model
}
