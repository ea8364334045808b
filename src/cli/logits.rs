//! `troupe logits`: one cache-free forward pass, written as safetensors tensor `logits` (F32, [T, V]).
//! `--out` is written as the user means the path: through symlinks, in place when it is not a
//! regular file (a device, a FIFO), and atomically (temp file + rename) when it is one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use safetensors::tensor::{Dtype, TensorView};

use super::common::{check_memory, mla_form, open_graph_placed, parse_ids, start_model, CliError};
use super::distributed::Deployment;
use super::executor::Executor;
use super::{RunArgs, RuntimeArgs};

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Prompt token ids, comma separated.
    #[arg(long)]
    pub prompt_ids: String,
    /// Output .safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: LogitsArgs) -> Result<(), CliError> {
    let ids = parse_ids(&a.prompt_ids)?;
    let (graph, attention) = open_graph_placed(&a.run)?;
    check_memory(&a.run, &graph, 1, ids.len())?;
    // Under mpirun: rank 0 runs the pass and writes --out; the others serve their experts.
    let dep = Deployment::join(&graph, attention)?;
    let (model, be) = start_model(&a.run, &graph)?;
    let dist = dep.distributed();
    let logits = match dep.rank {
        0 => {
            let exec = Executor::start(
                &graph,
                model,
                be,
                &a.run,
                &a.runtime,
                mla_form(&a.run.mla)?,
                dist,
            )?;
            let result = exec.logits(&ids);
            exec.finish()?;
            Some(result?)
        }
        _ => None,
    };
    dep.finish(Vec::new())?;
    match logits {
        Some(l) => write_logits(&a.out, l.shape(), l.data()),
        None => Ok(()),
    }
}

/// Writes one F32 tensor named `logits`.
pub fn write_logits(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), CliError> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let out_err = |m: String| CliError::Output {
        path: path.display().to_string(),
        message: m,
    };
    let view =
        TensorView::new(Dtype::F32, shape.to_vec(), &bytes).map_err(|e| out_err(e.to_string()))?;
    let file =
        safetensors::serialize([("logits", view)], None).map_err(|e| out_err(e.to_string()))?;
    write_output(path, &file).map_err(|e| out_err(e.to_string()))
}

/// Writes `bytes` to what `path` names: a symlink's final target (the link stays a link); a path
/// that exists and is not a regular file (a device, a FIFO) directly, never replacing the node;
/// otherwise a sibling temp file renamed over the target, so readers never see half a file.
fn write_output(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let target = follow_symlinks(path)?;
    match fs::metadata(&target) {
        Ok(m) if m.is_dir() => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory",
        )),
        Ok(m) if !m.is_file() => {
            let mut f = fs::OpenOptions::new().write(true).open(&target)?;
            f.write_all(bytes)?;
            f.flush()
        }
        _ => {
            let name = target.file_name().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")
            })?;
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{}.tmp", std::process::id()));
            let tmp = target.with_file_name(tmp_name);
            let written = (|| {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)?;
                f.write_all(bytes)?;
                f.sync_all()?;
                fs::rename(&tmp, &target)
            })();
            if written.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            written
        }
    }
}

/// The path a chain of symlinks ends at (which may not exist yet); at most 40 links, as Linux.
fn follow_symlinks(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = fs::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    ))
}
