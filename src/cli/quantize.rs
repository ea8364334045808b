//! `troupe quantize --fp8 -m MODEL --out DIR`: writes a model (an HF folder of f32/bf16/f16
//! weights, or a graph file, random weights included) as an FP8 block-scaled HF folder in
//! DeepSeek-V3's layout: the linear weights of attention, dense MLPs, routed and shared experts as
//! `F8_E4M3` with an f32 `<name>_scale_inv` `[ceil(out/128), ceil(in/128)]` (per 128×128 block
//! `scale = amax / 448`, elements rounded to nearest even), everything else unchanged;
//! `config.json` gains `quantization_config`; the tokenizer files are copied when present.
//!
//! `troupe quantize --int8` writes the weights that `--quantize int8` would quantise at load
//! (the graph's `[quantize]` policy, or attention kept; `--keep` replaces the kept classes) as
//! `I8` with an f32 `<name>_scale_inv` `[out, ceil(in/32)]` (`weights::int8`), so the folder
//! loads, from mmap, as the same model without re-work.
//! Tensors are written in the plan's order, one at a time, into shards of at most
//! `--max-shard-bytes` (with `model.safetensors.index.json` when there is more than one).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use clap::Args;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::{json, Value};
use troupe_engine::dtype::DType;
use troupe_engine::graph::hf_config::INT8_QUANT_METHOD;
use troupe_engine::graph::{LoadedGraph, Plan, WeightsSource};
use troupe_engine::model::random_tensor;
use troupe_engine::weights::fp8::{dequantize, fp8_weight_names, quantize_block_scaled};
use troupe_engine::weights::int8::{quantize_weight, QuantizePolicy, INT8_BLOCK};
use troupe_engine::weights::{Checkpoint, Weight};

use super::common::CliError;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Quantise to FP8 e4m3 with 128×128 block scales.
    #[arg(long, conflicts_with = "int8")]
    pub fp8: bool,
    /// Quantise to int8 with an f32 scale per 32 weights of a row.
    #[arg(long)]
    pub int8: bool,
    /// With --int8: the weight classes left unquantised, comma separated (attention, dense_mlp,
    /// routed_experts, shared_experts, head) or `none` (default: the graph's [quantize] keep
    /// list, else attention).
    #[arg(long, requires = "int8")]
    pub keep: Option<String>,
    /// A graph file (.toml) or an HF model folder.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// The folder to write (created; must not hold a model already).
    #[arg(long)]
    pub out: PathBuf,
    /// Largest shard in bytes (default 4 GiB); more shards come with an index file.
    #[arg(long, default_value_t = 4 << 30)]
    pub max_shard_bytes: u64,
}

/// One tensor ready to write.
struct Out {
    name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::F8E4M3 => StDtype::F8_E4M3,
        DType::I8 => StDtype::I8,
    }
}

fn output_err(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Output {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

pub fn run(a: QuantizeArgs) -> Result<(), CliError> {
    if !a.fp8 && !a.int8 {
        return Err(CliError::Usage(
            "quantize: give the format, --fp8 (FP8 e4m3 with 128x128 block scales) or --int8 \
             (int8 with a scale per 32 weights of a row)"
                .into(),
        ));
    }
    if a.max_shard_bytes == 0 {
        return Err(CliError::Usage(
            "--max-shard-bytes must be at least 1".into(),
        ));
    }
    let graph = LoadedGraph::open(&a.model)?;
    if a.out.join("config.json").exists() {
        return Err(CliError::Usage(format!(
            "--out {}: the folder already holds a model (config.json); choose an empty folder",
            a.out.display()
        )));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| output_err(&a.out, e))?;
    let plan = Plan::compile(&graph.spec);
    let fp8 = fp8_weight_names(&plan);
    let int8 = match a.int8 {
        true => Some(super::common::quantize_policy(&graph, a.keep.as_deref())?),
        false => None,
    };
    let quantised = match &int8 {
        Some(policy) => policy.weight_names(&plan),
        None => fp8.clone(),
    };
    let ck = match &graph.weights {
        WeightsSource::HfDir(d) => Some(Checkpoint::open_dir(d)?),
        WeightsSource::Files(f) => Some(Checkpoint::open_files(f)?),
        WeightsSource::Index(i) => Some(Checkpoint::open_index(i)?),
        WeightsSource::Random(_) => None,
    };
    let mut shards = ShardWriter::new(&a.out, a.max_shard_bytes);
    let (mut n_quantised, mut n_kept) = (0usize, 0usize);
    for s in plan.weight_specs() {
        let w = match (&ck, &graph.weights) {
            (Some(ck), _) => ck.get(&s.name)?,
            (None, WeightsSource::Random(r)) => random_tensor(r, graph.spec.dtype, &fp8, s)?,
            (None, _) => return Err(CliError::Runtime("no weights to read".into())),
        };
        if w.shape() != s.shape.as_slice() {
            return Err(troupe_engine::EngineError::ShapeMismatch {
                tensor: s.name.clone(),
                expected: s.shape.clone(),
                found: w.shape().to_vec(),
            }
            .into());
        }
        if quantised.contains(&s.name) {
            let q = match int8 {
                Some(_) => quantize_weight(&w)?,
                None => quantize_block_scaled(&s.name, w.rows(), w.cols(), &w.to_f32_vec())?,
            };
            let scales = q
                .block_scales()
                .ok_or_else(|| CliError::Runtime(format!("`{}`: no scales", s.name)))?;
            let scale = scales.scale_inv.clone();
            shards.push(tensor_out(&q), &scale)?;
            n_quantised += 1;
        } else {
            // Already-FP8 tensors outside the linear set (not DeepSeek's layout) become bf16.
            let w = if w.dtype() == DType::F8E4M3 {
                dequantize(&w, DType::BF16)?
            } else {
                w
            };
            shards.push_one(tensor_out(&w))?;
            n_kept += 1;
        }
    }
    let files = shards.finish()?;
    let config = match &int8 {
        Some(policy) => int8_quantization_config(policy),
        None => quantization_config(),
    };
    write_config(&graph, &a.out, config)?;
    copy_tokenizer(&graph, &a.out)?;
    println!(
        "wrote {}: {n_quantised} {} weights (+ their _scale_inv), {n_kept} tensors kept, {} shard(s)",
        a.out.display(),
        if int8.is_some() { "int8" } else { "FP8" },
        files
    );
    Ok(())
}

fn tensor_out(w: &Weight) -> Out {
    Out {
        name: w.name().to_string(),
        dtype: st_dtype(w.dtype()),
        shape: w.shape().to_vec(),
        bytes: w.bytes().to_vec(),
    }
}

/// Fills shards in order and writes each when the next tensor would not fit.
struct ShardWriter<'a> {
    dir: &'a Path,
    max: u64,
    current: Vec<Out>,
    current_bytes: u64,
    /// Written shards (temporary names until the count is known), with their tensor names.
    written: Vec<(PathBuf, Vec<String>)>,
    total: u64,
}

impl<'a> ShardWriter<'a> {
    fn new(dir: &'a Path, max: u64) -> Self {
        ShardWriter {
            dir,
            max,
            current: Vec::new(),
            current_bytes: 0,
            written: Vec::new(),
            total: 0,
        }
    }

    /// A weight and its scale grid, kept in one shard (as DeepSeek's shards do).
    fn push(&mut self, w: Out, scale: &Weight) -> Result<(), CliError> {
        let s = tensor_out(scale);
        let size = (w.bytes.len() + s.bytes.len()) as u64;
        self.make_room(size)?;
        self.add(w);
        self.add(s);
        Ok(())
    }

    fn push_one(&mut self, w: Out) -> Result<(), CliError> {
        self.make_room(w.bytes.len() as u64)?;
        self.add(w);
        Ok(())
    }

    fn add(&mut self, w: Out) {
        self.current_bytes += w.bytes.len() as u64;
        self.total += w.bytes.len() as u64;
        self.current.push(w);
    }

    fn make_room(&mut self, size: u64) -> Result<(), CliError> {
        if !self.current.is_empty() && self.current_bytes + size > self.max {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CliError> {
        let path = self
            .dir
            .join(format!("shard-{}.safetensors.tmp", self.written.len()));
        let views = self
            .current
            .iter()
            .map(|t| {
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                    .map(|v| (t.name.clone(), v))
                    .map_err(|e| output_err(&path, format!("tensor `{}`: {e}", t.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        safetensors::serialize_to_file(views, Some(meta), &path)
            .map_err(|e| output_err(&path, e))?;
        let names = self.current.drain(..).map(|t| t.name).collect();
        self.written.push((path, names));
        self.current_bytes = 0;
        Ok(())
    }

    /// Writes the last shard, names the files (`model.safetensors`, or
    /// `model-0000i-of-0000n.safetensors` + index) and returns how many there are.
    fn finish(mut self) -> Result<usize, CliError> {
        if !self.current.is_empty() || self.written.is_empty() {
            self.flush()?;
        }
        let n = self.written.len();
        let mut weight_map = BTreeMap::new();
        for (i, (tmp, names)) in self.written.iter().enumerate() {
            let name = if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            };
            let dest = self.dir.join(&name);
            std::fs::rename(tmp, &dest).map_err(|e| output_err(&dest, e))?;
            for t in names {
                weight_map.insert(t.clone(), Value::String(name.clone()));
            }
        }
        if n > 1 {
            let index = json!({
                "metadata": { "total_size": self.total },
                "weight_map": weight_map,
            });
            write_json(&self.dir.join("model.safetensors.index.json"), &index)?;
        }
        Ok(n)
    }
}

fn write_json(path: &Path, v: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| output_err(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| output_err(path, e))
}

/// DeepSeek-V3's `quantization_config`.
fn quantization_config() -> Value {
    json!({
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128]
    })
}

/// troupe's int8 `quantization_config` (what `hf_config` reads back); `keep` and `keep_layers`
/// record the policy.
fn int8_quantization_config(policy: &QuantizePolicy) -> Value {
    json!({
        "quant_method": INT8_QUANT_METHOD,
        "weight_block_size": [1, INT8_BLOCK],
        "keep": policy.keep.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "keep_layers": policy.keep_layers,
    })
}

/// The source folder's `config.json` with `quantization_config` set to `quantization`, or (for
/// a graph file) the `config.json` that `troupe export-hf` writes for the spec.
fn write_config(graph: &LoadedGraph, out: &Path, quantization: Value) -> Result<(), CliError> {
    let source = graph.origin.join("config.json");
    let mut config = if graph.origin.is_dir() && source.is_file() {
        let text = std::fs::read_to_string(&source).map_err(|e| output_err(&source, e))?;
        serde_json::from_str::<Value>(&text).map_err(|e| output_err(&source, e))?
    } else {
        super::export_hf::hf_config(&graph.spec, &graph.origin)
            .map_err(|e| CliError::Usage(format!("quantize: {e}")))?
    };
    let obj = config
        .as_object_mut()
        .ok_or_else(|| output_err(&source, "config.json is not a JSON object"))?;
    obj.insert("quantization_config".into(), quantization);
    write_json(&out.join("config.json"), &config)
}

/// Copies the tokenizer (and generation config) of the source, when it has them.
fn copy_tokenizer(graph: &LoadedGraph, out: &Path) -> Result<(), CliError> {
    let mut sources: Vec<PathBuf> = Vec::new();
    if let Some(t) = &graph.tokenizer {
        sources.push(t.clone());
    }
    if graph.origin.is_dir() {
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            sources.push(graph.origin.join(f));
        }
    }
    for src in sources {
        let (Some(name), true) = (src.file_name(), src.is_file()) else {
            continue;
        };
        let dest = out.join(name);
        if !dest.exists() {
            std::fs::copy(&src, &dest).map_err(|e| output_err(&dest, e))?;
        }
    }
    Ok(())
}
