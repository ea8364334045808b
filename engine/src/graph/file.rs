//! Graph definition files (TOML, `format = 1`): `[model]` (the spec), `[weights]` (where the
//! tensors come from), `[tokenizer]`, `[quantize]` (which weights become int8 at load: see
//! `weights::int8`), and `[placement]` / `[schedule]`, which belong to the actor
//! runtime and are kept here as raw tables. `LoadedGraph::open` accepts a graph file or an HF
//! folder interchangeably. Field-by-field documentation: `graphs/README.md`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::files::{read_bytes_capped, MAX_GRAPH_FILE_BYTES};
use crate::graph::hf_config::spec_from_hf_config_file;
use crate::graph::spec::ModelSpec;
use crate::weights::int8::QuantizePolicy;

/// The graph-file format version this build reads and writes.
pub const FORMAT: u32 = 1;

/// `[weights]`: exactly one source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsTable {
    /// An HF model folder (config.json is not re-read; safetensors or index inside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf: Option<PathBuf>,
    /// Explicit safetensors files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safetensors: Option<Vec<PathBuf>>,
    /// A `model.safetensors.index.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<PathBuf>,
    /// Seeded random weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<RandomWeights>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomWeights {
    pub seed: u64,
    #[serde(default = "default_std")]
    pub std: f32,
}

fn default_std() -> f32 {
    0.02
}

/// `[tokenizer]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerTable {
    pub path: PathBuf,
}

/// A whole graph file as written on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFile {
    pub format: u32,
    pub model: ModelSpec,
    pub weights: WeightsTable,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerTable>,
    /// Weights quantised at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizePolicy>,
    /// Reserved for the actor runtime (see `troupe-actors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<toml::Table>,
    /// Reserved for the actor runtime (see `troupe-actors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<toml::Table>,
}

/// Where the weights of a loaded graph come from (paths resolved).
#[derive(Clone, Debug, PartialEq)]
pub enum WeightsSource {
    HfDir(PathBuf),
    Files(Vec<PathBuf>),
    Index(PathBuf),
    Random(RandomWeights),
}

/// A graph ready to build a model from.
#[derive(Clone, Debug)]
pub struct LoadedGraph {
    /// The file or folder it was read from.
    pub origin: PathBuf,
    pub spec: ModelSpec,
    pub weights: WeightsSource,
    pub tokenizer: Option<PathBuf>,
    /// Which weights become int8 at load (`[quantize]` or `--quantize int8`); None: as stored.
    pub quantize: Option<QuantizePolicy>,
    pub placement: Option<toml::Table>,
    pub schedule: Option<toml::Table>,
}

impl GraphFile {
    /// Parses TOML text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<GraphFile> {
        let g: GraphFile = toml::from_str(text).map_err(|e| EngineError::GraphFile {
            path: path.into(),
            message: super::toml_error::describe(&e, text),
        })?;
        if g.format != FORMAT {
            return Err(EngineError::GraphFile {
                path: path.into(),
                message: format!(
                    "format = {} is not supported by this build (expected {FORMAT})",
                    g.format
                ),
            });
        }
        let sources = [
            g.weights.hf.is_some(),
            g.weights.safetensors.is_some(),
            g.weights.index.is_some(),
            g.weights.random.is_some(),
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if sources != 1 {
            return Err(EngineError::GraphFile {
                path: path.into(),
                message: "[weights] needs exactly one of `hf`, `safetensors`, `index`, `random`"
                    .into(),
            });
        }
        if let Some(r) = &g.weights.random {
            if !r.std.is_finite() || r.std < 0.0 {
                return Err(EngineError::GraphFile {
                    path: path.into(),
                    message: format!(
                        "`weights.random.std` must be a finite number ≥ 0, found {}",
                        r.std
                    ),
                });
            }
        }
        g.model.validate().map_err(|e| EngineError::GraphFile {
            path: path.into(),
            message: e.to_string(),
        })?;
        if let Some(q) = &g.quantize {
            let layers = g.model.num_hidden_layers + g.model.num_nextn_predict_layers;
            if let Some(l) = q.keep_layers.iter().find(|&&l| l >= layers) {
                return Err(EngineError::GraphFile {
                    path: path.into(),
                    message: format!(
                        "`quantize.keep_layers`: layer {l} does not exist (the model has {layers} layers, 0..{layers})"
                    ),
                });
            }
        }
        Ok(g)
    }

    /// Serialises to TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialise graph: {e}\n"))
    }
}

/// What to say when `-m` names a file that is part of a model folder rather than a graph file.
const PASS_FOLDER: &str =
    "pass the model folder (the directory holding config.json) or a graph file (*.toml)";

/// Reads a graph file, refusing checkpoint and JSON files with a hint instead of a TOML error.
fn read_graph_text(path: &Path) -> Result<String> {
    let not_graph = |what: &str| EngineError::GraphFile {
        path: path.into(),
        message: format!("this is {what}, not a graph file: {PASS_FOLDER}"),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".safetensors") {
        return Err(not_graph("a safetensors checkpoint"));
    }
    if name.ends_with(".json") {
        return Err(not_graph("a JSON file"));
    }
    let bytes = read_bytes_capped(path, MAX_GRAPH_FILE_BYTES, "a graph file")?;
    String::from_utf8(bytes).map_err(|_| not_graph("not UTF-8 text"))
}

impl LoadedGraph {
    /// Opens a graph file (`*.toml`) or an HF model folder (with `config.json`).
    pub fn open(path: &Path) -> Result<LoadedGraph> {
        if path.is_dir() {
            return LoadedGraph::from_hf_dir(path);
        }
        let text = read_graph_text(path)?;
        let g = GraphFile::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let weights = if let Some(d) = &g.weights.hf {
            WeightsSource::HfDir(resolve(d))
        } else if let Some(fs) = &g.weights.safetensors {
            WeightsSource::Files(fs.iter().map(|f| resolve(f)).collect())
        } else if let Some(i) = &g.weights.index {
            WeightsSource::Index(resolve(i))
        } else {
            WeightsSource::Random(g.weights.random.unwrap_or(RandomWeights {
                seed: 0,
                std: default_std(),
            }))
        };
        let tokenizer = match (&g.tokenizer, &weights) {
            (Some(t), _) => Some(resolve(&t.path)),
            (None, WeightsSource::HfDir(d)) if d.join("tokenizer.json").exists() => {
                Some(d.join("tokenizer.json"))
            }
            _ => None,
        };
        Ok(LoadedGraph {
            origin: path.to_path_buf(),
            spec: g.model,
            weights,
            tokenizer,
            quantize: g.quantize,
            placement: g.placement,
            schedule: g.schedule,
        })
    }

    /// Reads an HF folder's `config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<LoadedGraph> {
        let config = dir.join("config.json");
        if !config.exists() {
            return Err(EngineError::GraphFile {
                path: dir.into(),
                message: format!(
                    "a folder without config.json is not a model folder: {PASS_FOLDER}"
                ),
            });
        }
        let spec = spec_from_hf_config_file(&config)?;
        let tok = dir.join("tokenizer.json");
        Ok(LoadedGraph {
            origin: dir.to_path_buf(),
            spec,
            weights: WeightsSource::HfDir(dir.to_path_buf()),
            tokenizer: tok.exists().then_some(tok),
            quantize: None,
            placement: None,
            schedule: None,
        })
    }

    /// The graph file that describes this graph (what `troupe import-hf` prints).
    pub fn to_graph_file(&self) -> GraphFile {
        let mut weights = WeightsTable {
            hf: None,
            safetensors: None,
            index: None,
            random: None,
        };
        match &self.weights {
            WeightsSource::HfDir(d) => weights.hf = Some(d.clone()),
            WeightsSource::Files(f) => weights.safetensors = Some(f.clone()),
            WeightsSource::Index(i) => weights.index = Some(i.clone()),
            WeightsSource::Random(r) => weights.random = Some(*r),
        }
        GraphFile {
            format: FORMAT,
            model: self.spec.clone(),
            weights,
            tokenizer: self
                .tokenizer
                .as_ref()
                .map(|p| TokenizerTable { path: p.clone() }),
            quantize: self.quantize.clone(),
            placement: self.placement.clone(),
            schedule: self.schedule.clone(),
        }
    }
}
