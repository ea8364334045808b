//! Bounded reads of the text files the engine reads whole — graph files, `config.json`,
//! `tokenizer.json`, `tokenizer_config.json`, `model.safetensors.index.json`: a path that is not a
//! regular file (`/dev/zero`, a FIFO, a directory) is refused, and so is a file above its size cap,
//! both with an error naming the path, before anything is read.

use std::io::Read;
use std::path::Path;

use crate::error::{EngineError, Result};

/// Largest graph file (`*.toml`) read.
pub const MAX_GRAPH_FILE_BYTES: u64 = 16 << 20;
/// Largest `config.json` / `tokenizer_config.json` read.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest `tokenizer.json` read (real ones are 2–35 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;
/// Largest `model.safetensors.index.json` read (DeepSeek-V3's is about 9 MB).
pub const MAX_INDEX_BYTES: u64 = 256 << 20;

/// Why a file was refused before reading.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("not a regular file ({kind}); pass a file, not a device, pipe or directory")]
    NotRegular { kind: &'static str },
    #[error("{size} bytes is larger than the {limit}-byte limit for {what}")]
    TooLarge {
        size: u64,
        limit: u64,
        what: &'static str,
    },
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a named pipe";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "an unusual file type"
}

/// Checks that `path` is a regular file (following symlinks); returns its size.
pub fn regular_file_size(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
    if !meta.is_file() {
        let err = FileError::NotRegular {
            kind: file_kind(&meta),
        };
        return Err(EngineError::io(path, std::io::Error::other(err)));
    }
    Ok(meta.len())
}

/// Reads a regular file of at most `limit` bytes (`what` names the kind of file in the error).
pub fn read_bytes_capped(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let size = regular_file_size(path)?;
    let too_large = |size| {
        EngineError::io(
            path,
            std::io::Error::other(FileError::TooLarge { size, limit, what }),
        )
    };
    if size > limit {
        return Err(too_large(size));
    }
    let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    // The size may change between the check and the read (or be 0 for /proc files): read at most
    // one byte past the limit to notice.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| EngineError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// As [`read_bytes_capped`], for a UTF-8 text file.
pub fn read_text_capped(path: &Path, limit: u64, what: &'static str) -> Result<String> {
    let bytes = read_bytes_capped(path, limit, what)?;
    String::from_utf8(bytes).map_err(|e| {
        EngineError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{what} is not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            ),
        )
    })
}
