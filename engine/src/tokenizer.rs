//! Text ↔ token ids through a Hugging Face `tokenizer.json` (the `tokenizers` crate, read with a
//! size cap), and [`check_token_ids`], the one check of ids against a vocabulary.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::files::{read_bytes_capped, MAX_TOKENIZER_BYTES};

/// The one range check of token ids: the first id ≥ `vocab` is an error naming the id and its
/// position (`first_position` is the position of `ids[0]`, e.g. the tokens already cached).
pub fn check_token_ids(ids: &[u32], vocab: usize, first_position: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= vocab) {
        Some(i) => Err(EngineError::TokenOutOfRange {
            id: ids[i] as i64,
            position: first_position + i,
            vocab,
        }),
        None => Ok(()),
    }
}

/// A loaded tokenizer.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = read_bytes_capped(path, MAX_TOKENIZER_BYTES, "a tokenizer.json")?;
        // JSON syntax first: tokenizers 0.22 panics (`expect("Helper")`) on a syntax error inside
        // the `decoder` section instead of returning it, so only well-formed JSON reaches it.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
            EngineError::Tokenizer {
                path: path.into(),
                message: format!("invalid JSON: {e}"),
            }
        })?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| EngineError::Tokenizer {
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

    /// Text of `ids`, special tokens (`<|eos|>`, `<|bos|>`, ...) left out, as a reader wants it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }
}
