//! Request checks before any compute: token ids against the vocabulary (one engine function) and
//! lengths that must not wrap.

use troupe_engine::generate::{check_request, GenerateRequest};
use troupe_engine::sampling::SamplingParams;
use troupe_engine::tokenizer::check_token_ids;
use troupe_engine::EngineError;

use crate::fixtures::{fixture, load_model};

#[test]
fn token_ids_are_checked_with_their_position() {
    assert!(check_token_ids(&[0, 5, 9], 10, 0).is_ok());
    match check_token_ids(&[0, 5, 10, 11], 10, 7) {
        Err(EngineError::TokenOutOfRange {
            id,
            position,
            vocab,
        }) => {
            assert_eq!((id, position, vocab), (10, 9, 10))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_huge_max_new_tokens_is_refused_at_once() {
    let model = load_model(&fixture("llama-tiny"));
    for max_new_tokens in [usize::MAX, usize::MAX - 1, 1 << 40] {
        let r = GenerateRequest {
            prompt: vec![1, 2, 3],
            max_new_tokens,
            sampling: SamplingParams::default(),
            stop_token: None,
            stop_at_eos: false,
            keep_logits: false,
        };
        match check_request(&model, &r) {
            Err(EngineError::TooLong { limit, .. }) => {
                assert_eq!(limit, model.spec.max_position_embeddings)
            }
            other => panic!("{max_new_tokens}: {other:?}"),
        }
    }
}
