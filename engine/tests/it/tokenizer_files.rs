//! Tokenizer files as users (and the fuzz harness) hand them over: malformed ones are a typed
//! `EngineError::Tokenizer` naming the path, never a panic from inside the tokenizers crate.

use troupe_engine::tokenizer::TextTokenizer;
use troupe_engine::EngineError;

use crate::fixtures::fixture;

/// A syntax error inside the `decoder` section made tokenizers 0.22 panic (`expect("Helper")`);
/// found by the root crate's fuzz harness.
#[test]
fn a_syntax_error_inside_the_decoder_is_an_error_not_a_panic() {
    let text = std::fs::read_to_string(fixture("deepseek-v3-tiny/tokenizer.json")).unwrap();
    let at = text
        .find("\"decoder\"")
        .expect("fixture tokenizer has a decoder");
    // `"decoder": {"type": ...` → `"decoder": {"type" ...`: a missing colon inside the section.
    let colon = at + text[at..].find("\"type\":").expect("decoder has a type") + "\"type\"".len();
    let mut broken = text.clone();
    broken.remove(colon);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, broken).unwrap();
    let result = std::panic::catch_unwind(|| TextTokenizer::open(&path));
    match result {
        Ok(Err(EngineError::Tokenizer { path: p, message })) => {
            assert_eq!(p, path);
            assert!(message.contains("invalid JSON"), "{message}");
        }
        Ok(Err(e)) => panic!("unexpected error kind: {e}"),
        Ok(Ok(_)) => panic!("a malformed tokenizer.json loaded"),
        Err(_) => panic!("TextTokenizer::open panicked on a malformed decoder section"),
    }
}

#[test]
fn the_fixture_tokenizer_still_round_trips() {
    let tok = TextTokenizer::open(&fixture("deepseek-v3-tiny/tokenizer.json")).unwrap();
    let ids = tok.encode("The quick brown fox").unwrap();
    assert!(!ids.is_empty());
    assert_eq!(tok.decode(&ids).unwrap(), "The quick brown fox");
}

#[test]
fn decoding_leaves_special_tokens_out() {
    // fortune-tiny's tokenizer: <|bos|> = 0, <|eos|> = 1 (tests/fixtures/fortune-tiny/README.md).
    let tok = TextTokenizer::open(&fixture("fortune-tiny/tokenizer.json")).unwrap();
    let mut ids = vec![0u32];
    ids.extend(tok.encode("A fool and his money").unwrap());
    ids.push(1);
    let text = tok.decode(&ids).unwrap();
    assert_eq!(text.trim_start(), "A fool and his money");
    assert!(!text.contains("<|"), "{text}");
}
