//! Text ↔ token ids through a Hugging Face `tokenizer.json` (the `tokenizers` crate, read with a
//! size cap): [`TextTokenizer`] (the file), [`Tokenizer`] (a model's: the file plus its BOS rule,
//! and [`Detokenizer`]s for streams), and [`check_token_ids`], the one check of ids against a
//! vocabulary.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::detokenizer::Detokenizer;
use crate::error::{EngineError, Result};
use crate::files::{read_bytes_capped, MAX_TOKENIZER_BYTES};
use crate::graph::LoadedGraph;

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

    /// The id of one vocabulary entry, spelled as the vocabulary stores it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
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

/// A model's tokenizer: its `tokenizer.json` (if it has one) and its BOS rule. Cheap to clone.
#[derive(Clone)]
pub struct Tokenizer {
    text: Option<Arc<TextTokenizer>>,
    bos: Option<u32>,
    /// The model's graph file or folder, for the error of a model without a tokenizer.
    origin: PathBuf,
}

impl Tokenizer {
    /// The tokenizer of a graph: its `tokenizer.json` (opened and checked now) and BOS id.
    pub fn for_graph(graph: &LoadedGraph) -> Result<Tokenizer> {
        let text = match &graph.tokenizer {
            Some(path) => Some(Arc::new(TextTokenizer::open(path)?)),
            None => None,
        };
        Ok(Tokenizer {
            text,
            bos: graph.spec.bos_token_id,
            origin: graph.origin.clone(),
        })
    }

    /// The model's BOS id, which [`Tokenizer::encode`] prepends.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The `tokenizer.json`, if the model has one.
    pub fn text_tokenizer(&self) -> Option<&TextTokenizer> {
        self.text.as_deref()
    }

    fn require_text(&self) -> Result<&TextTokenizer> {
        self.text.as_deref().ok_or_else(|| EngineError::Tokenizer {
            path: self.origin.clone(),
            message: "this model has no tokenizer.json; pass token ids".into(),
        })
    }

    /// `text` as a prompt: the model's BOS id (if it has one), then the text's ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        ids.extend(self.require_text()?.encode(text)?);
        Ok(ids)
    }

    /// `text`'s ids without BOS (e.g. to continue a prompt).
    pub fn encode_without_bos(&self, text: &str) -> Result<Vec<u32>> {
        self.require_text()?.encode(text)
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.require_text()?.decode(ids)
    }

    /// An incremental decoder for one stream of ids (empty text for a model without a
    /// tokenizer.json).
    pub fn detokenizer(&self) -> Detokenizer {
        Detokenizer::new(self.text.clone())
    }
}
