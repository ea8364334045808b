//! A prompt's logits do not depend on how its prefill is cut into chunks: every prompt row's
//! logits, and the greedy tokens after it, are bit-identical whether the prompt runs as one chunk
//! or as chunks of 1, 3, 1, 7, ... tokens (a 1-token prompt chunk included: under
//! `MlaForm::Auto` it runs the prompt's form, not the decode form). This is what lets a prefix
//! cache hand a request cached pages with no change to its output.

use crate::fixtures::*;
use troupe_engine::executor::{ReferenceExecutor, SeqChunk};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::SequenceCache;
use troupe_engine::{Backend, DeviceTensor};

/// Logits bits of every prompt row (prefilled in chunks of `cuts`' lengths, then the rest),
/// followed by 4 greedy decode steps' logits.
fn run(exec: &ReferenceExecutor<'_>, be: &CpuBackend, prompt: &[u32], cuts: &[usize]) -> Vec<u32> {
    let mut cache: SequenceCache = exec.new_cache().unwrap();
    let mut bits = Vec::new();
    let mut push = |t: &DeviceTensor| -> u32 {
        let host = be.download(t).unwrap();
        bits.extend(host.data().iter().map(|v| v.to_bits()));
        *be.argmax(t).unwrap().last().unwrap()
    };
    let mut at = 0usize;
    let mut next = 0;
    for &n in cuts.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at.saturating_add(n).min(prompt.len());
        if end == at {
            break;
        }
        let part = prompt[at..end].to_vec();
        next = push(
            &exec
                .forward(&mut [SeqChunk::prompt(part, &mut cache)], None)
                .unwrap(),
        );
        at = end;
    }
    for _ in 0..4 {
        next = push(
            &exec
                .forward(&mut [SeqChunk::generated(next, &mut cache)], None)
                .unwrap(),
        );
    }
    bits
}

#[test]
fn prefill_chunking_does_not_change_a_bit() {
    for case in ["deepseek-v3-tiny", "deepseek-v2-lite-tiny", "mixtral-tiny"] {
        let model = load_model(&fixture(case));
        let be = CpuBackend::new();
        let exec = ReferenceExecutor::new(&model, &be);
        let r = Reference::open(case);
        let prompt = r.ids(&format!("prompt.{}.input_ids", r.n_prompts() - 1));
        assert!(
            prompt.len() > 13,
            "{case}: the last prompt is long enough to cut"
        );
        let whole = run(&exec, &be, &prompt, &[]);
        for cuts in [&[1usize, 3, 1, 7][..], &[prompt.len() - 1], &[1; 64]] {
            assert!(
                run(&exec, &be, &prompt, cuts) == whole,
                "{case}: prefill in chunks {cuts:?} differs from the whole prompt"
            );
        }
    }
}
