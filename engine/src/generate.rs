//! Autoregressive generation on the reference executor: one batched prefill of every request,
//! then batched single-token decode steps through the paged KV caches until each request is done.
//! Greedy requests are sampled on the backend (`argmax`: 4 bytes per sequence come back); logits
//! are downloaded only for non-greedy sampling or when a request keeps them. A request whose cache
//! cannot get a page (`KvCacheFull`) fails alone; the others go on.

use crate::backend::Backend;
use crate::device_tensor::DeviceTensor;
use crate::error::{EngineError, Result};
use crate::executor::{check_chunk, ReferenceExecutor, SeqChunk};
use crate::model::{Model, SequenceCache};
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

/// Runs every request to completion, batched; fails when any request does (invalid requests
/// before any compute).
pub fn generate(
    exec: &ReferenceExecutor<'_>,
    requests: &[GenerateRequest],
) -> Result<Vec<GenerateOutput>> {
    for r in requests {
        check_request(exec.model, r)?;
    }
    generate_each(exec, requests)?.into_iter().collect()
}

/// A request in flight.
struct Live {
    cache: Option<SequenceCache>,
    sampler: Sampler,
    next: Vec<u32>,
    out: Result<GenerateOutput>,
}

impl Live {
    fn active(&self, r: &GenerateRequest) -> bool {
        match &self.out {
            Ok(o) => {
                o.generated.len() < r.max_new_tokens
                    && !(r.stop_token.is_some() && o.generated.last() == r.stop_token.as_ref())
            }
            Err(_) => false,
        }
    }
    fn fail(&mut self, e: EngineError) {
        self.cache = None; // returns its pages
        self.out = Err(e);
    }
}

/// Runs every request to completion, batched, with one result per request: an invalid request
/// or one whose cache runs out of pages fails alone. The outer error is a failure of the whole
/// batch (a backend error, a non-finite value).
pub fn generate_each(
    exec: &ReferenceExecutor<'_>,
    requests: &[GenerateRequest],
) -> Result<Vec<Result<GenerateOutput>>> {
    let be = exec.backend;
    let mut live = Vec::with_capacity(requests.len());
    for r in requests {
        live.push(Live {
            cache: Some(exec.new_cache()?),
            sampler: Sampler::new(r.sampling),
            next: r.prompt.clone(),
            out: check_request(exec.model, r).map(|_| GenerateOutput::default()),
        });
    }
    loop {
        // Pages for this step first: a request that cannot get them fails alone.
        let mut active = Vec::new();
        for (i, (l, r)) in live.iter_mut().zip(requests).enumerate() {
            if !l.active(r) {
                l.cache = None;
                continue;
            }
            let Some(cache) = l.cache.as_mut() else {
                l.fail(EngineError::internal("an active request without a cache"));
                continue;
            };
            let len = cache.len() + l.next.len();
            match cache.reserve(len) {
                Ok(()) => active.push(i),
                Err(e @ EngineError::KvCacheFull { .. }) => l.fail(e),
                Err(e) => return Err(e),
            }
        }
        if active.is_empty() {
            break;
        }
        let mut chunks = Vec::with_capacity(active.len());
        let mut chunk_lens = Vec::with_capacity(active.len());
        for (i, l) in live.iter_mut().enumerate() {
            if let (true, Some(cache)) = (active.contains(&i), l.cache.as_mut()) {
                chunk_lens.push(l.next.len());
                chunks.push(SeqChunk {
                    tokens: std::mem::take(&mut l.next),
                    cache,
                });
            }
        }
        let logits = exec.forward(&mut chunks, None)?;
        drop(chunks);
        let last = last_rows(be, &logits, &chunk_lens)?;
        let need_rows = active
            .iter()
            .any(|&i| requests[i].keep_logits || !live[i].sampler.is_greedy());
        let host = if need_rows {
            Some(be.download(&last)?)
        } else {
            None
        };
        let greedy = match &host {
            Some(_) => None,
            None => Some(be.argmax(&last)?),
        };
        for (j, &i) in active.iter().enumerate() {
            let l = &mut live[i];
            let tok = match (&host, &greedy) {
                (Some(h), _) => l.sampler.sample(h.row(j)),
                (None, Some(g)) => g[j],
                (None, None) => return Err(EngineError::internal("no logits sampled")),
            };
            if let Ok(o) = &mut l.out {
                o.generated.push(tok);
                if requests[i].keep_logits {
                    if let Some(h) = &host {
                        o.step_logits.push(h.row(j).to_vec());
                    }
                }
            }
            l.next = vec![tok];
        }
    }
    Ok(live.into_iter().map(|l| l.out).collect())
}

/// The logits of each chunk's last row, from a pass's logits of `chunk_lens` rows per chunk in
/// batch order (the pass's own handle when every chunk is one row, as in a decode step).
pub fn last_rows(
    be: &dyn Backend,
    logits: &DeviceTensor,
    chunk_lens: &[usize],
) -> Result<DeviceTensor> {
    let mut rows = 0u32;
    let last: Vec<u32> = chunk_lens
        .iter()
        .map(|&n| {
            rows += n as u32;
            rows - 1
        })
        .collect();
    if last.len() as u32 == rows {
        Ok(logits.clone())
    } else {
        be.gather_rows(logits, &last)
    }
}
