//! Autoregressive generation on the reference executor: one batched prefill of every request,
//! then batched single-token decode steps through the paged KV caches until each request is done.
//! Greedy requests are sampled on the backend (`argmax`: 4 bytes per sequence come back); logits
//! are downloaded only for non-greedy sampling or when a request keeps them. A request whose cache
//! cannot get a page (`KvCacheFull`) fails alone; the others go on.

use crate::backend::Backend;
use crate::device_tensor::DeviceTensor;
use crate::error::{EngineError, Result};
use crate::executor::{check_chunk, ReferenceExecutor, SeqChunk};
use crate::model::{ChunkKind, Model, SequenceCache};
use crate::sampling::{Sampler, SamplingParams};

/// One generation request: `GenerateRequest::new(prompt, max_new_tokens)` (greedy, stops at
/// the model's EOS), then the builder methods, e.g. `.temperature(0.7).top_k(40).seed(5)`.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop after emitting this token (as well as at EOS when `stop_at_eos`).
    pub stop_token: Option<u32>,
    /// Stop after emitting the model's EOS token (`eos_token_id`; no effect without one).
    pub stop_at_eos: bool,
    /// Keep the logits row each token was chosen from.
    pub keep_logits: bool,
}

impl GenerateRequest {
    /// Greedy decoding of up to `max_new_tokens` after `prompt`, stopping at the model's EOS.
    pub fn new(prompt: Vec<u32>, max_new_tokens: usize) -> Self {
        GenerateRequest {
            prompt,
            max_new_tokens,
            sampling: SamplingParams::default(),
            stop_token: None,
            stop_at_eos: true,
            keep_logits: false,
        }
    }
    /// All sampling settings at once.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = sampling;
        self
    }
    /// Samples at this temperature (0: greedy); must be finite and ≥ 0.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.sampling.temperature = Some(temperature);
        self
    }
    /// Samples among the `k` most likely tokens only (with a temperature).
    pub fn top_k(mut self, k: usize) -> Self {
        self.sampling.top_k = Some(k);
        self
    }
    /// Samples from the smallest set of tokens whose probability reaches `p`, in (0, 1].
    pub fn top_p(mut self, p: f32) -> Self {
        self.sampling.top_p = Some(p);
        self
    }
    /// The sampler's seed (the same seed gives the same tokens).
    pub fn seed(mut self, seed: u64) -> Self {
        self.sampling.seed = seed;
        self
    }
    /// Whether to stop at the model's EOS token (default: yes).
    pub fn stop_at_eos(mut self, stop: bool) -> Self {
        self.stop_at_eos = stop;
        self
    }
    /// Also stop after emitting `token`.
    pub fn stop_token(mut self, token: u32) -> Self {
        self.stop_token = Some(token);
        self
    }
    /// Keep the logits row each token was chosen from.
    pub fn keep_logits(mut self) -> Self {
        self.keep_logits = true;
        self
    }
    /// Whether the request is done after emitting `token` (its stop token, or EOS when asked).
    pub fn stops_at(&self, token: u32, eos: Option<u32>) -> bool {
        self.stop_token == Some(token) || (self.stop_at_eos && eos == Some(token))
    }
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
    check_sampling(&r.sampling)?;
    if let Some(t) = r.stop_token {
        crate::tokenizer::check_token_ids(&[t], model.spec.vocab_size, 0).map_err(|_| {
            EngineError::InvalidRequest {
                field: "stop_token".into(),
                message: format!(
                    "token {t} is outside the vocabulary ({})",
                    model.spec.vocab_size
                ),
            }
        })?;
    }
    check_positions(
        model.spec.max_position_embeddings,
        r.prompt.len(),
        r.max_new_tokens,
    )?;
    Ok(())
}

/// Sampling settings a sampler can use: a temperature that is finite and ≥ 0, a top-p in (0, 1].
pub fn check_sampling(s: &SamplingParams) -> Result<()> {
    let bad = |field: &str, message: String| EngineError::InvalidRequest {
        field: field.into(),
        message,
    };
    if let Some(t) = s.temperature {
        if !(t.is_finite() && t >= 0.0) {
            return Err(bad("temperature", format!("{t}: must be finite and >= 0")));
        }
    }
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(bad("top_p", format!("{p}: must be in (0, 1]")));
        }
    }
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
    fn active(&self, r: &GenerateRequest, eos: Option<u32>) -> bool {
        match &self.out {
            Ok(o) => {
                o.generated.len() < r.max_new_tokens
                    && !o.generated.last().is_some_and(|&t| r.stops_at(t, eos))
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
            if !l.active(r, exec.model.spec.eos_token_id) {
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
                let prompt = l.out.as_ref().is_ok_and(|o| o.generated.is_empty());
                chunks.push(SeqChunk {
                    tokens: std::mem::take(&mut l.next),
                    cache,
                    kind: match prompt {
                        true => ChunkKind::Prompt,
                        false => ChunkKind::Generated,
                    },
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
