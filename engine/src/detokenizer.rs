//! `Detokenizer`: the text of a stream of token ids, one delta per id. A character whose UTF-8
//! bytes are split over several tokens (byte-level BPE does that to "é" or an emoji) is held back
//! until its last byte arrives, so no delta carries a `�` for it; [`Detokenizer::flush`] gives
//! what is still held at the end (where bytes that never form a character do become `�`).
//!
//! Method: keep a small window of ids, decode the window without and with the new ids, and emit
//! the difference once the decoded text does not end in a replacement character. Decoding a
//! window (not one id at a time) keeps decoders that depend on neighbouring tokens (spaces,
//! byte fallback) right.

use std::sync::Arc;

use crate::error::Result;
use crate::tokenizer::TextTokenizer;

/// Ids held back at most while the text ends in `�`: a UTF-8 character is at most 4 bytes, so
/// past this many ids the bytes are invalid, not incomplete, and are emitted as they decode.
const MAX_HELD_IDS: usize = 8;

/// The incremental decoder of one stream (see the module doc).
pub struct Detokenizer {
    text: Option<Arc<TextTokenizer>>,
    ids: Vec<u32>,
    /// `ids[prefix..read]` is the context already emitted; `ids[read..]` is held back.
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// A decoder over `text` (None: every delta is empty).
    pub fn new(text: Option<Arc<TextTokenizer>>) -> Self {
        Detokenizer {
            text,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// The text `id` completes (empty while a character is incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let Some(text) = self.text.clone() else {
            return Ok(String::new());
        };
        self.ids.push(id);
        let now = text.decode(&self.ids[self.prefix..])?;
        if now.ends_with('\u{FFFD}') && self.ids.len() - self.read < MAX_HELD_IDS {
            return Ok(String::new());
        }
        self.emit(&text, now)
    }

    /// What is still held back (bytes that never formed a character decode as `�`).
    pub fn flush(&mut self) -> Result<String> {
        match self.text.clone() {
            Some(text) if self.read < self.ids.len() => {
                let now = text.decode(&self.ids[self.prefix..])?;
                self.emit(&text, now)
            }
            _ => Ok(String::new()),
        }
    }

    /// Emits `now` (the window decoded with every id) past the emitted context, and slides the
    /// window so that the ids just emitted are the next context.
    fn emit(&mut self, text: &TextTokenizer, now: String) -> Result<String> {
        let before = text.decode(&self.ids[self.prefix..self.read])?;
        let common = common_prefix_len(&before, &now);
        let delta = now[common..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        self.ids.drain(..self.prefix);
        self.read -= self.prefix;
        self.prefix = 0;
        Ok(delta)
    }
}

/// Bytes of the longest common prefix of `a` and `b` that ends on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deepseek-v3-tiny fixture's tokenizer: byte-level BPE with every byte in its
    /// vocabulary.
    fn tokenizer() -> Arc<TextTokenizer> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/deepseek-v3-tiny/tokenizer.json"
        );
        Arc::new(TextTokenizer::open(std::path::Path::new(path)).expect("fixture tokenizer"))
    }

    /// The id of each byte of `s` as its own token (GPT-2's byte-to-character map).
    fn byte_ids(t: &TextTokenizer, s: &[u8]) -> Vec<u32> {
        let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
        let unprintable: Vec<u8> = (0..=255u8).filter(|&b| !printable(b)).collect();
        s.iter()
            .map(|&b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    let n = unprintable.iter().position(|&u| u == b).expect("listed");
                    char::from_u32(256 + n as u32).expect("a char")
                };
                t.token_id(&c.to_string())
                    .expect("every byte is in the vocabulary")
            })
            .collect()
    }

    fn deltas(d: &mut Detokenizer, ids: &[u32]) -> Vec<String> {
        let mut out: Vec<String> = ids.iter().map(|&id| d.push(id).expect("push")).collect();
        out.push(d.flush().expect("flush"));
        out
    }

    #[test]
    fn characters_split_over_tokens_are_held_until_complete() {
        let t = tokenizer();
        let text = "é😀 fox, ünï!";
        let ids = byte_ids(&t, text.as_bytes());
        // One id per byte: decoding ids one at a time gives replacement characters...
        let one_by_one: String = ids.iter().map(|&i| t.decode(&[i]).expect("dec")).collect();
        assert!(one_by_one.contains('\u{FFFD}'), "{one_by_one}");
        // ...the detokenizer never does, and its deltas add up to the text.
        let mut d = Detokenizer::new(Some(t.clone()));
        let out = deltas(&mut d, &ids);
        assert!(out.iter().all(|s| !s.contains('\u{FFFD}')), "{out:?}");
        assert_eq!(out.concat(), text);
        // "é" is two bytes: nothing after the first, the whole character after the second.
        assert_eq!(out[0], "");
        assert_eq!(out[1], "é");
        assert_eq!(out[2..6].concat(), "😀");
        assert_eq!(out[5], "😀");
    }

    #[test]
    fn encoded_text_streams_back_exactly_and_specials_are_left_out() {
        let t = tokenizer();
        let text = "The quick brown fox, café 🦊.";
        let mut ids = t.encode(text).expect("encode");
        ids.insert(0, 0); // <|bos|>
        ids.push(1); // <|eos|>
        let mut d = Detokenizer::new(Some(t.clone()));
        let out = deltas(&mut d, &ids);
        assert_eq!(out.concat(), t.decode(&ids).expect("decode"));
        assert!(out.concat().ends_with(text), "{out:?}"); // a leading space may be added
        assert!(out.iter().all(|s| !s.contains('\u{FFFD}')), "{out:?}");
    }

    #[test]
    fn flush_gives_what_never_completed_and_invalid_bytes_are_not_held_forever() {
        let t = tokenizer();
        let mut d = Detokenizer::new(Some(t.clone()));
        // The first two bytes of a 4-byte character, then the end.
        let ids = byte_ids(&t, &[0xF0, 0x9F]);
        assert_eq!(d.push(ids[0]).expect("push"), "");
        assert_eq!(d.push(ids[1]).expect("push"), "");
        assert!(d.flush().expect("flush").contains('\u{FFFD}'));
        assert_eq!(d.flush().expect("flush again"), "");
        // A run of bytes that never form a character is emitted after MAX_HELD_IDS ids.
        let mut d = Detokenizer::new(Some(t.clone()));
        let bad = byte_ids(&t, &[0xFF; MAX_HELD_IDS]);
        let out: Vec<String> = bad.iter().map(|&i| d.push(i).expect("push")).collect();
        assert!(out[..MAX_HELD_IDS - 1].iter().all(String::is_empty));
        assert!(!out[MAX_HELD_IDS - 1].is_empty());
        // No tokenizer: empty deltas.
        let mut none = Detokenizer::new(None);
        assert_eq!(none.push(5).expect("push"), "");
        assert_eq!(none.flush().expect("flush"), "");
    }
}
