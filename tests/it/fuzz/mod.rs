//! The fuzz harness (issue #14): mutated graph files, config.json files, safetensors headers,
//! tokenizers, CLI arguments and `TROUPE_FAULT` strings, run through the library entry points in
//! process (`in_process`) and through the built binary (`binary`). Every case must end in a
//! typed error or success — for the binary, exit 0, or exit 2 with exactly one stderr line —
//! never a panic, an abort, a hang or memory beyond the cap.
//!
//! Cases are drawn with proptest strategies (`mutate`) from a proptest `TestRng` seeded by
//! (`TROUPE_FUZZ_SEED`, case index), so case `i` is the same input on every machine and can be
//! re-run alone; the loop runs every case (it does not stop and shrink at the first failure) so
//! one run reports every failing class. Counts: `TROUPE_FUZZ_CASES` in-process cases (default
//! 2000) and `TROUPE_FUZZ_BINARY_CASES` binary runs (default 200), each bounded by 5 s and a
//! 4 GiB address space. `bench/fuzz.sh` runs a long campaign and prints the tallies.

mod binary;
mod in_process;
mod inputs;
mod mutate;
mod seeds;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::common::Outcome;
use seeds::Seeds;

/// The fixed default seed (CI is reproducible); `TROUPE_FUZZ_SEED` overrides it.
const DEFAULT_SEED: u64 = 0x7e0_0be_14;

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn seed() -> u64 {
    env_u64("TROUPE_FUZZ_SEED", DEFAULT_SEED)
}

/// The runner whose RNG draws case `index` of campaign `seed`.
pub fn runner_for(seed: u64, index: u64) -> TestRunner {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&index.to_le_bytes());
    key[16..].copy_from_slice(b"troupe-fuzz-case");
    TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    )
}

/// One draw of `strategy`.
pub fn draw<S: Strategy>(runner: &mut TestRunner, strategy: S) -> S::Value {
    strategy
        .new_tree(runner)
        .expect("strategy draws a value")
        .current()
}

/// The seeds, built once per process (under the target's temp dir, shared between runs).
pub fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-seeds-v1");
        if !root.join("done").exists() {
            let staging = root.with_extension(format!("{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&staging);
            Seeds::build(&staging);
            // Another process may have won the race; its copy is identical.
            if std::fs::rename(&staging, &root).is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
        }
        Seeds::build(&root)
    })
}

/// Outcome counts, and the inputs of the cases that broke the promise, by class.
#[derive(Default)]
pub struct Tally {
    pub counts: BTreeMap<Outcome, usize>,
    /// (class, target) → (case index, input, detail) of the first few failures.
    pub failures: BTreeMap<(Outcome, &'static str), Vec<(u64, String, String)>>,
}

impl Tally {
    pub fn record(
        &mut self,
        outcome: Outcome,
        target: &'static str,
        case: u64,
        input: String,
        detail: String,
    ) {
        *self.counts.entry(outcome).or_default() += 1;
        if !outcome.keeps_promise() {
            let list = self.failures.entry((outcome, target)).or_default();
            if list.len() < 3 {
                list.push((case, input, detail));
            }
        }
    }

    pub fn failed(&self) -> usize {
        self.counts
            .iter()
            .filter(|(o, _)| !o.keeps_promise())
            .map(|(_, n)| n)
            .sum()
    }

    /// One machine-readable line for `bench/fuzz.sh`: `@@TALLY kind ok=3 exit-2-one-line=5 ...`.
    pub fn tally_line(&self, kind: &str) -> String {
        let counts: Vec<String> = Outcome::ALL
            .iter()
            .map(|o| {
                let n = self.counts.get(o).copied().unwrap_or(0);
                format!("{}={n}", o.name().replace(' ', "-"))
            })
            .collect();
        format!("@@TALLY {kind} {}", counts.join(" "))
    }

    /// The counts line (`ok 1200, exit-2 one line 790, panic 10, ...`) and every failing class
    /// with up to three inputs.
    pub fn report(&self, title: &str) -> String {
        let counts: Vec<String> = Outcome::ALL
            .iter()
            .map(|o| format!("{} {}", o.name(), self.counts.get(o).copied().unwrap_or(0)))
            .collect();
        let mut s = format!("{title}: {}\n", counts.join(", "));
        for ((outcome, target), cases) in &self.failures {
            s += &format!("  {} in {target}:\n", outcome.name());
            for (case, input, detail) in cases {
                s += &format!("    case {case}: {input}\n      -> {detail}\n");
            }
        }
        s
    }
}

/// Clips a text for a report line.
pub fn clip(s: &str, max: usize) -> String {
    let one_line = s.replace('\n', "⏎");
    if one_line.chars().count() <= max {
        one_line
    } else {
        one_line.chars().take(max).collect::<String>() + "…"
    }
}
