//! Safetensors checkpoints through mmap: a single file, a list of files, or a sharded checkpoint
//! described by `model.safetensors.index.json`. Tensors are not copied unless misaligned. An FP8
//! (`F8_E4M3`) weight comes back with its `<name>_scale_inv` block scales attached and checked.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::Dtype as StDtype;

use crate::dtype::DType;
use crate::error::{EngineError, Result};
use crate::files::{read_text_capped, regular_file_size, MAX_INDEX_BYTES};
use crate::weights::fp8::{BlockScales, SCALE_INV_SUFFIX};
use crate::weights::safetensors_header::parse_header;
use crate::weights::Weight;

/// All tensors of a checkpoint, by name.
#[derive(Default)]
pub struct Checkpoint {
    tensors: HashMap<String, Weight>,
    /// Tensors whose dtype troupe cannot compute with (an error only if the model needs them).
    unsupported: HashMap<String, String>,
    files: Vec<PathBuf>,
}

impl Checkpoint {
    /// Maps every file and indexes its tensors. Later files do not override earlier ones.
    pub fn open_files(files: &[PathBuf]) -> Result<Checkpoint> {
        let mut ck = Checkpoint::default();
        for f in files {
            ck.add_file(f)?;
        }
        Ok(ck)
    }

    /// Opens the shards listed by a `model.safetensors.index.json`.
    pub fn open_index(index: &Path) -> Result<Checkpoint> {
        let text = read_text_capped(index, MAX_INDEX_BYTES, "a safetensors index")?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::Json {
            path: index.to_path_buf(),
            message: e.to_string(),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| EngineError::MissingConfigKey {
                path: index.to_path_buf(),
                key: "weight_map".into(),
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: BTreeMap<String, ()> = BTreeMap::new();
        for (name, file) in map {
            let f = file.as_str().ok_or_else(|| EngineError::BadConfigValue {
                path: index.to_path_buf(),
                key: format!("weight_map.{name}"),
                message: "expected a file name".into(),
            })?;
            shards.insert(f.to_string(), ());
        }
        let files: Vec<PathBuf> = shards.keys().map(|f| dir.join(f)).collect();
        let ck = Checkpoint::open_files(&files)?;
        for name in map.keys() {
            if !ck.tensors.contains_key(name) {
                return Err(EngineError::MissingTensor {
                    tensor: name.clone(),
                    searched: format!("listed in {} but absent from its shard", index.display()),
                });
            }
        }
        Ok(ck)
    }

    /// Opens an HF folder: the index if present, else `model.safetensors`, else every
    /// `*.safetensors` in it.
    pub fn open_dir(dir: &Path) -> Result<Checkpoint> {
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            return Checkpoint::open_index(&index);
        }
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Checkpoint::open_files(&[single]);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| EngineError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(EngineError::io(
                dir.join("model.safetensors"),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no *.safetensors file in the model folder",
                ),
            ));
        }
        Checkpoint::open_files(&files)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        regular_file_size(path)?;
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        // SAFETY: the file is opened read-only; like every mmap-based loader we assume it is not
        // truncated or rewritten by another process while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        let map = Arc::new(map);
        let entries = parse_header(&map).map_err(|message| EngineError::Safetensors {
            path: path.to_path_buf(),
            message,
        })?;
        for e in entries {
            let dtype = match e.dtype {
                StDtype::F32 => DType::F32,
                StDtype::BF16 => DType::BF16,
                StDtype::F16 => DType::F16,
                StDtype::F8_E4M3 => DType::F8E4M3,
                StDtype::I8 => DType::I8,
                StDtype::F8_E5M2 => {
                    self.unsupported.insert(
                        e.name,
                        "F8_E5M2 (FP8 e5m2 is not supported; troupe reads F8_E4M3 weights with 128x128 block scales)".into(),
                    );
                    continue;
                }
                other => {
                    self.unsupported.insert(e.name, format!("{other:?}"));
                    continue;
                }
            };
            if !self.tensors.contains_key(&e.name) {
                let w = Weight::mapped(&e.name, dtype, e.shape, map.clone(), e.start, e.end)?;
                self.tensors.insert(e.name, w);
            }
        }
        self.files.push(path.to_path_buf());
        Ok(())
    }

    /// The tensor `name`; an FP8 weight comes with its `<name>_scale_inv` attached, its dtype
    /// (f32) and shape (`[ceil(out/128), ceil(in/128)]`) checked; an int8 (`I8`) weight
    /// likewise, its grid `[out, ceil(in/32)]`.
    pub fn get(&self, name: &str) -> Result<Weight> {
        let w = self.get_raw(name)?;
        if BlockScales::block_of(w.dtype()).is_none() {
            return Ok(w);
        }
        let st = if w.dtype() == DType::I8 {
            "I8"
        } else {
            "F8_E4M3"
        };
        if w.shape().len() != 2 {
            return Err(EngineError::Invalid(format!(
                "tensor `{name}`: an {st} tensor must be a 2-D weight with block scales, found shape {:?}",
                w.shape()
            )));
        }
        let scale_name = format!("{name}{SCALE_INV_SUFFIX}");
        let scale_inv = self.get_raw(&scale_name).map_err(|e| match e {
            EngineError::MissingTensor { searched, .. } => EngineError::MissingTensor {
                tensor: scale_name.clone(),
                searched: format!("the block scales of {st} tensor `{name}`, in {searched}"),
            },
            other => other,
        })?;
        let scales = BlockScales::for_dtype(w.dtype(), scale_inv)?;
        w.with_block_scales(scales)
    }

    fn get_raw(&self, name: &str) -> Result<Weight> {
        if let Some(dtype) = self.unsupported.get(name) {
            return Err(EngineError::UnsupportedDtype {
                tensor: name.to_string(),
                dtype: dtype.clone(),
            });
        }
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::MissingTensor {
                tensor: name.to_string(),
                searched: self
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}
