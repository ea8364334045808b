//! The `tokenizer.json` of an exported model: a byte-level BPE with exactly `vocab_size` ids, so
//! the folder loads in transformers and llama.cpp's converter like any GPT-2-style checkpoint.
//!
//! It is built, not trained: the special tokens sit at the model's BOS/EOS ids, the other ids hold
//! the 256 byte tokens and then two-byte tokens, one merge each, for byte pairs in a fixed order
//! (letters, space, digits, punctuation first), as many as the vocabulary has room for. The
//! pre-tokenizer is GPT-2's (`ByteLevel` with its regex), as in the project's fixture tokenizers.
//! Random weights do not care which text a token stands for; this only has to be a real,
//! self-consistent tokenizer of the right size.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// GPT-2's byte → printable character map (`bytes_to_unicode`): printable Latin-1 bytes map to
/// themselves, the others to U+0100 onwards in byte order.
pub fn byte_char(b: u8) -> char {
    let printable = |x: u8| (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE;
    if printable(b) {
        char::from(b)
    } else {
        let shifted = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + shifted).unwrap_or('\u{FFFD}')
    }
}

/// Bytes in the order their pairs get merges: lower-case letters, space, upper-case letters,
/// digits, other printable ASCII, newline and tab, then everything else by value.
fn byte_order() -> Vec<u8> {
    let mut order: Vec<u8> = (b'a'..=b'z').collect();
    order.push(b' ');
    order.extend(b'A'..=b'Z');
    order.extend(b'0'..=b'9');
    order.extend((b'!'..=b'~').filter(|b| !b.is_ascii_alphanumeric()));
    order.extend([b'\n', b'\t']);
    let rest: Vec<u8> = (0..=255u8).filter(|b| !order.contains(b)).collect();
    order.extend(rest);
    order
}

/// The first `n` byte pairs in merge order: all pairs among the first k ordered bytes come before
/// any pair involving byte k + 1.
fn byte_pairs(n: usize) -> Vec<(u8, u8)> {
    let order = byte_order();
    let mut pairs = Vec::with_capacity(n);
    'outer: for k in 0..order.len() {
        let new = order[k];
        for &old in &order[..k] {
            for pair in [(new, old), (old, new)] {
                if pairs.len() == n {
                    break 'outer;
                }
                pairs.push(pair);
            }
        }
        if pairs.len() == n {
            break;
        }
        pairs.push((new, new));
    }
    pairs
}

/// The special tokens of the model: `<|bos|>`, `<|eos|>` at their ids (one token if they coincide).
fn specials(bos: Option<u32>, eos: Option<u32>) -> BTreeMap<u32, &'static str> {
    let mut s = BTreeMap::new();
    if let Some(e) = eos {
        s.insert(e, "<|eos|>");
    }
    if let Some(b) = bos {
        s.insert(b, "<|bos|>");
    }
    s
}

/// `tokenizer.json` with exactly `vocab` ids, or why the vocabulary is too small for one.
pub fn tokenizer_json(vocab: usize, bos: Option<u32>, eos: Option<u32>) -> Result<Value, String> {
    let special = specials(bos, eos);
    let normal = vocab
        .checked_sub(special.len())
        .filter(|&n| n >= 256)
        .ok_or_else(|| {
            format!(
                "vocab_size {vocab} is too small for a byte-level tokenizer (it needs 256 byte \
                 tokens plus {} special tokens)",
                special.len()
            )
        })?;
    if normal > 256 + 256 * 256 {
        return Err(format!(
            "vocab_size {vocab} is larger than the built tokenizer's 256 byte tokens and 65,536 \
             byte pairs (plus {} special tokens)",
            special.len()
        ));
    }
    let pairs = byte_pairs(normal - 256);
    let mut texts: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    texts.extend(
        pairs
            .iter()
            .map(|&(a, b)| format!("{}{}", byte_char(a), byte_char(b))),
    );
    let mut next = texts.into_iter();
    let mut model_vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for id in 0..vocab as u32 {
        match special.get(&id) {
            Some(name) => {
                added.push(json!({
                    "id": id, "content": name, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true,
                }));
                model_vocab.insert((*name).to_string(), json!(id));
            }
            None => {
                let text = next.next().ok_or("internal: ran out of byte tokens")?;
                model_vocab.insert(text, json!(id));
            }
        }
    }
    let merges: Vec<String> = pairs
        .iter()
        .map(|&(a, b)| format!("{} {}", byte_char(a), byte_char(b)))
        .collect();
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true,
    });
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": model_vocab, "merges": merges,
        },
    }))
}

/// `tokenizer_config.json`: the class and the special tokens, for transformers' `AutoTokenizer`.
pub fn tokenizer_config(bos: Option<u32>, eos: Option<u32>) -> Value {
    let mut c = serde_json::Map::new();
    c.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    c.insert("model_max_length".into(), json!(1u64 << 40));
    c.insert("add_bos_token".into(), json!(bos.is_some()));
    c.insert("add_eos_token".into(), json!(false));
    if bos.is_some() {
        c.insert("bos_token".into(), json!("<|bos|>"));
    }
    if eos.is_some() {
        c.insert("eos_token".into(), json!("<|eos|>"));
    }
    Value::Object(c)
}
