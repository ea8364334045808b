//! Drawing one case: which input kind it mutates, the mutated bytes, and the folder it runs in
//! (the mutated file written, the untouched seeds linked beside it).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestRunner;

use super::mutate::{self, ByteOp, FaultOp, JsonOp, SafetensorsOp, TomlOp};
use super::seeds::{Seeds, MICRO};
use super::{clip, draw};

/// What a case mutates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    GraphFile,
    HfConfig,
    Checkpoint,
    Tokenizer,
    Fault,
    Cli,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::GraphFile => "graph file",
            Target::HfConfig => "config.json",
            Target::Checkpoint => "safetensors",
            Target::Tokenizer => "tokenizer",
            Target::Fault => "TROUPE_FAULT",
            Target::Cli => "CLI arguments",
        }
    }
}

/// A drawn case: the model folder or graph file it uses, the mutated file, a fault string.
pub struct Input {
    pub target: Target,
    /// The seed it came from (a path or the base string).
    pub seed: String,
    /// The mutations, as drawn.
    pub ops: String,
    /// (file name in the case folder, bytes) — the mutated file.
    pub file: Option<(&'static str, Vec<u8>)>,
    /// The micro folder whose other files are linked into the case folder (None: a graph file,
    /// next to links to every micro folder).
    pub base: Option<PathBuf>,
    pub fault: Option<String>,
}

impl Input {
    /// One line describing the case (seed, mutations and, for text, the mutated text).
    pub fn describe(&self) -> String {
        let body = match (&self.file, &self.fault) {
            (_, Some(f)) => format!("fault {f:?}"),
            (Some((name, bytes)), None) if *name == "model.safetensors" => {
                let n = bytes
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                let header = bytes.get(8..8 + (n as usize).min(bytes.len().saturating_sub(8)));
                format!(
                    "header len {n}, file {} B: {}",
                    bytes.len(),
                    clip(&String::from_utf8_lossy(header.unwrap_or(&[])), 400)
                )
            }
            (Some((_, bytes)), None) => {
                let before = std::fs::read(&self.seed).unwrap_or_default();
                changed_lines(
                    &String::from_utf8_lossy(&before),
                    &String::from_utf8_lossy(bytes),
                )
            }
            (None, None) => String::new(),
        };
        format!(
            "{} from {} with {}; {body}",
            self.target.name(),
            self.seed,
            clip(&self.ops, 300)
        )
    }

    /// Writes the case folder under `dir`; returns the path `-m` takes (folder or graph file).
    pub fn materialize(&self, dir: &Path, seeds: &Seeds) -> PathBuf {
        std::fs::create_dir_all(dir).expect("case dir");
        match &self.base {
            Some(base) => {
                for entry in std::fs::read_dir(base).expect("seed dir").flatten() {
                    let name = entry.file_name();
                    if self.file.as_ref().is_some_and(|(f, _)| name == *f) {
                        continue;
                    }
                    let _ = std::os::unix::fs::symlink(entry.path(), dir.join(name));
                }
            }
            None => {
                for fixture in MICRO {
                    let m = seeds.micro(fixture);
                    let _ = std::os::unix::fs::symlink(&m, dir.join(m.file_name().expect("name")));
                }
            }
        }
        if let Some((name, bytes)) = &self.file {
            std::fs::write(dir.join(name), bytes).expect("case file");
        }
        match (&self.base, &self.file) {
            (None, Some((name, _))) => dir.join(name),
            _ => dir.to_path_buf(),
        }
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Valid fault strings the fault mutations start from.
pub const FAULTS: &[&str] = &[
    "actor:layer0.attention,after:1,kind:panic",
    "actor:layer1.router,after:0,kind:panic,times:2",
    "actor:layer0.mlp,after:2,kind:hang",
    "actor:stage0,after:0,kind:panic;actor:layer1.shared,after:1,kind:panic",
    "",
];

/// Draws the input of a case of kind `target`; `bundled` adds `graphs/*.toml` to the graph seeds
/// (in process only: a mutated ds-v3-mini that fits in memory is a legitimately slow run).
pub fn draw_input(runner: &mut TestRunner, target: Target, seeds: &Seeds, bundled: bool) -> Input {
    let n_ops = draw(runner, 1usize..=3);
    match target {
        Target::GraphFile => {
            let seed = draw(runner, select(seeds.graph_files(bundled)));
            let ops: Vec<TomlOp> = draw(runner, prop::collection::vec(mutate::toml_op(), n_ops));
            let mut text = String::from_utf8_lossy(&read(&seed)).into_owned();
            for op in &ops {
                text = mutate::apply_toml(&text, op);
            }
            Input {
                target,
                seed: seed.display().to_string(),
                ops: format!("{ops:?}"),
                file: Some(("g.toml", text.into_bytes())),
                base: None,
                fault: None,
            }
        }
        Target::HfConfig | Target::Tokenizer => {
            let fixture = draw(runner, select(MICRO.to_vec()));
            let base = seeds.micro(fixture);
            let name = if target == Target::HfConfig {
                "config.json"
            } else {
                "tokenizer.json"
            };
            let (bytes, ops) = mutate_json_file(runner, &read(&base.join(name)), n_ops);
            Input {
                target,
                seed: base.join(name).display().to_string(),
                ops,
                file: Some((name, bytes)),
                base: Some(base),
                fault: None,
            }
        }
        Target::Checkpoint => {
            let fixture = draw(runner, select(MICRO.to_vec()));
            let base = seeds.micro(fixture);
            let mut bytes = read(&base.join("model.safetensors"));
            let ops: Vec<SafetensorsOp> = draw(
                runner,
                prop::collection::vec(mutate::safetensors_op(), n_ops),
            );
            for op in &ops {
                mutate::apply_safetensors(&mut bytes, op);
            }
            Input {
                target,
                seed: base.join("model.safetensors").display().to_string(),
                ops: format!("{ops:?}"),
                file: Some(("model.safetensors", bytes)),
                base: Some(base),
                fault: None,
            }
        }
        Target::Fault => {
            let seed = draw(runner, select(FAULTS));
            let ops: Vec<FaultOp> = draw(runner, prop::collection::vec(mutate::fault_op(), n_ops));
            let mut text = seed.to_string();
            for op in &ops {
                text = mutate::apply_fault(&text, op);
            }
            Input {
                target,
                seed: format!("{seed:?}"),
                ops: format!("{ops:?}"),
                file: None,
                base: None,
                fault: Some(text),
            }
        }
        Target::Cli => Input {
            target,
            seed: String::new(),
            ops: String::new(),
            file: None,
            base: None,
            fault: None,
        },
    }
}

/// Tree edits (or, one time in four, byte edits) of a JSON file.
fn mutate_json_file(runner: &mut TestRunner, bytes: &[u8], n_ops: usize) -> (Vec<u8>, String) {
    if draw(runner, 0u8..4) == 0 {
        let ops: Vec<ByteOp> = draw(runner, prop::collection::vec(mutate::byte_op(), n_ops));
        let mut data = bytes.to_vec();
        for op in &ops {
            mutate::apply_bytes(&mut data, op);
        }
        return (data, format!("{ops:?}"));
    }
    let mut v: serde_json::Value = serde_json::from_slice(bytes).expect("seed JSON");
    let ops: Vec<JsonOp> = draw(runner, prop::collection::vec(mutate::json_op(), n_ops));
    for op in &ops {
        mutate::apply_json(&mut v, op);
    }
    let text = serde_json::to_vec_pretty(&v).expect("JSON");
    (text, format!("{ops:?}"))
}

/// The lines `after` adds (`+`) and drops (`-`) relative to `before`, at most 12.
fn changed_lines(before: &str, after: &str) -> String {
    let old: std::collections::HashSet<&str> = before.lines().collect();
    let new: std::collections::HashSet<&str> = after.lines().collect();
    let added = after
        .lines()
        .filter(|l| !old.contains(l))
        .map(|l| format!("+{}", l.trim()));
    let dropped = before
        .lines()
        .filter(|l| !new.contains(l))
        .map(|l| format!("-{}", l.trim()));
    let all: Vec<String> = added.chain(dropped).take(12).collect();
    clip(&all.join(" | "), 600)
}
