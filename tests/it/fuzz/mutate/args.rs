//! Mutations of what a user types: `TROUPE_FAULT` strings and command-line argument lists.

use proptest::prelude::*;
use proptest::sample::{select, Index};

/// An edit of a fault string.
#[derive(Clone, Debug)]
pub enum FaultOp {
    /// Replaces the n-th `key:value` value.
    Value(Index, &'static str),
    /// Replaces the n-th key.
    Key(Index, &'static str),
    /// Inserts a separator or stray text at a byte position.
    Insert(Index, &'static str),
    Delete(Index, usize),
}

pub fn fault_op() -> impl Strategy<Value = FaultOp> {
    let values = select(vec![
        "",
        "0",
        "1",
        "-1",
        "3",
        "18446744073709551615",
        "18446744073709551616",
        "1e3",
        "panic",
        "hang",
        "abort",
        "layer0.attention",
        "layer1.router",
        "stage0",
        "nope",
        " ",
        "é",
    ]);
    let keys = select(vec![
        "actor", "after", "kind", "times", "", "Actor", "kind ",
    ]);
    // No NUL: an environment variable cannot hold one.
    let inserts = select(vec![";", ",", ":", ";;", ",,", "::", " ", "\t", "=", "é"]);
    prop_oneof![
        4 => (any::<Index>(), values).prop_map(|(i, v)| FaultOp::Value(i, v)),
        2 => (any::<Index>(), keys).prop_map(|(i, k)| FaultOp::Key(i, k)),
        2 => (any::<Index>(), inserts).prop_map(|(i, s)| FaultOp::Insert(i, s)),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| FaultOp::Delete(i, n)),
    ]
}

pub fn apply_fault(text: &str, op: &FaultOp) -> String {
    let mut pairs: Vec<(String, Option<String>)> = text
        .split(',')
        .map(|p| match p.split_once(':') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (p.to_string(), None),
        })
        .collect();
    let n = pairs.len();
    match op {
        FaultOp::Value(i, v) => pairs[i.index(n)].1 = Some((*v).to_string()),
        FaultOp::Key(i, k) => pairs[i.index(n)].0 = (*k).to_string(),
        FaultOp::Insert(i, s) => {
            let mut chars: Vec<char> = text.chars().collect();
            let at = i.index(chars.len() + 1);
            chars.splice(at..at, s.chars());
            return chars.into_iter().collect();
        }
        FaultOp::Delete(i, len) => {
            let mut chars: Vec<char> = text.chars().collect();
            let at = i.index(chars.len().max(1)).min(chars.len());
            chars.drain(at..(at + len).min(chars.len()));
            return chars.into_iter().collect();
        }
    }
    pairs
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}:{v}"),
            None => k,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Values a CLI option is set to (`{out}` is a file in the case folder, `{model}` the case's
/// model folder; relative paths land in the case folder, the run's working directory).
pub const CLI_VALUES: &[&str] = &[
    "",
    "0",
    "-1",
    "1",
    "2",
    "5",
    "1024",
    "1025",
    "100000",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "4294967296",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "0.0",
    "1e-45",
    "abc",
    "1,,2",
    ",",
    "0,1024",
    "0,-3",
    " 1 , 2 ",
    "💥",
    "/nonexistent/dir/x",
    "/dev/zero",
    "out.safetensors",
    "{out}",
    "{model}",
    "{model}/config.json",
    "{model}/model.safetensors",
    "cuda:99",
    "cpu",
    "gpu",
    "reference",
    "actors",
    "pipeline",
    "two-microbatch",
    "sequential",
    "127.0.0.1:0",
    "naive",
    "absorbed",
    "--",
    "-",
];

/// Options inserted into an argument list.
pub const CLI_FLAGS: &[&str] = &[
    "--threads",
    "-n",
    "--max-new-tokens",
    "--prompt-ids",
    "--prompt",
    "--temperature",
    "--top-k",
    "--top-p",
    "--seed",
    "--runtime",
    "--schedule",
    "--stages",
    "--trace",
    "--device",
    "--mla",
    "--out",
    "-m",
    "--no-bos",
    "--stop-at-eos",
    "--json",
    "--skip-memory-check",
    "--no-keep-awake",
    "--reps",
    "--foo",
    "--help",
    "-V",
];

/// An edit of an argument list.
#[derive(Clone, Debug)]
pub enum CliOp {
    /// Replaces the n-th argument after the subcommand.
    Set(Index, &'static str),
    Remove(Index),
    Duplicate(Index),
    Insert(Index, &'static str, &'static str),
    Swap(Index, Index),
}

pub fn cli_op() -> impl Strategy<Value = CliOp> {
    prop_oneof![
        5 => (any::<Index>(), select(CLI_VALUES)).prop_map(|(i, v)| CliOp::Set(i, v)),
        1 => any::<Index>().prop_map(CliOp::Remove),
        1 => any::<Index>().prop_map(CliOp::Duplicate),
        3 => (any::<Index>(), select(CLI_FLAGS), select(CLI_VALUES))
            .prop_map(|(i, f, v)| CliOp::Insert(i, f, v)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| CliOp::Swap(a, b)),
    ]
}

/// Applies `op` to `args` (the subcommand, `args[0]`, is kept).
pub fn apply_cli(args: &mut Vec<String>, op: &CliOp) {
    let n = args.len();
    if n < 2 {
        return;
    }
    let at = |i: &Index| 1 + i.index(n - 1);
    match op {
        CliOp::Set(i, v) => args[at(i)] = (*v).to_string(),
        CliOp::Remove(i) => {
            args.remove(at(i));
        }
        CliOp::Duplicate(i) => {
            let a = args[at(i)].clone();
            args.insert(at(i), a);
        }
        CliOp::Insert(i, f, v) => {
            let k = 1 + i.index(n);
            args.splice(k..k, [(*f).to_string(), (*v).to_string()]);
        }
        CliOp::Swap(a, b) => args.swap(at(a), at(b)),
    }
}
