//! Autoregressive generation on the reference executor: one batched prefill of every request,
//! then batched single-token decode steps through the KV caches until each request is done.

use crate::error::{EngineError, Result};
use crate::executor::{check_chunk, ReferenceExecutor, SeqChunk};
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop after emitting this token (None: always produce `max_new_tokens`).
    pub stop_token: Option<u32>,
    /// Keep the logits row each token was chosen from.
    pub keep_logits: bool,
}

/// The result of one request.
#[derive(Clone, Debug, Default)]
pub struct GenerateOutput {
    pub generated: Vec<u32>,
    /// `step_logits[j]` chose `generated[j]` (only with `keep_logits`).
    pub step_logits: Vec<Vec<f32>>,
}

/// Validates a request against the model before any compute.
pub fn check_request(model: &Model, r: &GenerateRequest) -> Result<()> {
    check_chunk(model, &r.prompt, 0)?;
    check_positions(
        model.spec.max_position_embeddings,
        r.prompt.len(),
        r.max_new_tokens,
    )?;
    Ok(())
}

/// The positions a request reaches (its prompt plus its new tokens, the last one never fed
/// back), checked against the position `limit`; usable before any weight is loaded. Saturating:
/// `max_new_tokens` near usize::MAX is too long, never wrapped to a short length.
pub fn check_positions(limit: usize, prompt_len: usize, max_new_tokens: usize) -> Result<usize> {
    let need = prompt_len.saturating_add(max_new_tokens.saturating_sub(1));
    if need > limit {
        return Err(EngineError::TooLong { len: need, limit });
    }
    Ok(need)
}

/// Runs every request to completion, batched.
pub fn generate(
    exec: &ReferenceExecutor<'_>,
    requests: &[GenerateRequest],
) -> Result<Vec<GenerateOutput>> {
    for r in requests {
        check_request(exec.model, r)?;
    }
    let mut caches: Vec<_> = requests.iter().map(|_| exec.model.new_cache()).collect();
    let mut samplers: Vec<Sampler> = requests.iter().map(|r| Sampler::new(r.sampling)).collect();
    let mut outs = vec![GenerateOutput::default(); requests.len()];
    let mut next: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt.clone()).collect();
    loop {
        let active: Vec<usize> = (0..requests.len())
            .filter(|&i| {
                let o = &outs[i];
                let r = &requests[i];
                o.generated.len() < r.max_new_tokens
                    && !(r.stop_token.is_some() && o.generated.last() == r.stop_token.as_ref())
            })
            .collect();
        if active.is_empty() {
            break;
        }
        let mut chunks = Vec::with_capacity(active.len());
        // Split borrows of caches across the active requests.
        let mut cache_refs: Vec<Option<&mut crate::model::SequenceCache>> =
            caches.iter_mut().map(Some).collect();
        for &i in &active {
            let cache = cache_refs[i]
                .take()
                .ok_or_else(|| EngineError::internal("cache borrowed twice"))?;
            chunks.push(SeqChunk {
                tokens: std::mem::take(&mut next[i]),
                cache,
            });
        }
        let lens: Vec<usize> = chunks.iter().map(|c| c.tokens.len()).collect();
        let logits = exec.forward(&mut chunks, None)?;
        let mut row_end = 0;
        for (&i, len) in active.iter().zip(lens) {
            row_end += len;
            let row = logits.row(row_end - 1);
            let tok = samplers[i].sample(row);
            outs[i].generated.push(tok);
            if requests[i].keep_logits {
                outs[i].step_logits.push(row.to_vec());
            }
            next[i] = vec![tok];
        }
    }
    Ok(outs)
}
