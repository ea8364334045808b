//! Text ↔ token ids through a Hugging Face `tokenizer.json` (the `tokenizers` crate).

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// A loaded tokenizer.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    pub fn open(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| EngineError::Tokenizer {
            path: path.into(),
            message: e.to_string(),
        })?;
        Ok(TextTokenizer {
            inner,
            path: path.into(),
        })
    }

    /// Encodes without adding special tokens (callers prepend BOS explicitly).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }
}
