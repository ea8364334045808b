//! The reference executor: sequential, deterministic, one layer after another on one backend.
//! Prefill and decode share one path: a forward pass over a batch of sequence chunks, each chunk
//! extending its own KV cache. Row-wise ops run on the batch's concatenated rows; attention runs
//! per sequence. Every other executor is tested bit-for-bit against this one. A NaN or infinity
//! in the embedding, a layer's output or the logits fails the pass with `EngineError::NonFinite`
//! naming the first such step.

use crate::backend::{Backend, Routing};
use crate::error::{EngineError, Result};
use crate::model::{FeedForward, MlaForm, Model, SequenceCache};
use crate::tensor::Tensor;

/// One sequence's part of a forward pass.
pub struct SeqChunk<'c> {
    pub tokens: Vec<u32>,
    pub cache: &'c mut SequenceCache,
}

/// What a forward pass can record for tests and inspection.
#[derive(Clone, Debug, Default)]
pub struct ForwardRecord {
    /// Row 0: embeddings; row l+1: output of layer l (all batch rows concatenated).
    pub residual_stream: Vec<Tensor>,
    /// Per MoE layer: (layer index, raw router logits, routing).
    pub routers: Vec<(usize, Tensor, Routing)>,
}

/// Options of the reference executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecOptions {
    pub mla_form: MlaForm,
}

/// Runs a [`Model`] on a [`Backend`].
pub struct ReferenceExecutor<'m> {
    pub model: &'m Model,
    pub backend: &'m dyn Backend,
    pub options: ExecOptions,
}

/// Checks a chunk against the vocabulary and the position limit before any compute.
pub fn check_chunk(model: &Model, tokens: &[u32], cached: usize) -> Result<()> {
    if tokens.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    crate::tokenizer::check_token_ids(tokens, model.spec.vocab_size, cached)?;
    let limit = model.spec.max_position_embeddings;
    if cached.saturating_add(tokens.len()) > limit {
        return Err(EngineError::TooLong {
            len: cached.saturating_add(tokens.len()),
            limit,
        });
    }
    Ok(())
}

impl<'m> ReferenceExecutor<'m> {
    pub fn new(model: &'m Model, backend: &'m dyn Backend) -> Self {
        ReferenceExecutor {
            model,
            backend,
            options: ExecOptions::default(),
        }
    }

    /// One forward pass; returns the logits of every new row of every chunk, in batch order
    /// (`[Σ tokens, vocab]`).
    pub fn forward(
        &self,
        chunks: &mut [SeqChunk<'_>],
        mut record: Option<&mut ForwardRecord>,
    ) -> Result<Tensor> {
        let m = self.model;
        let be = self.backend;
        for c in chunks.iter() {
            check_chunk(m, &c.tokens, c.cache.len())?;
        }
        let spans: Vec<(usize, usize)> = {
            let mut s = 0;
            chunks
                .iter()
                .map(|c| {
                    let r = (s, s + c.tokens.len());
                    s += c.tokens.len();
                    r
                })
                .collect()
        };
        let ids: Vec<u32> = chunks
            .iter()
            .flat_map(|c| c.tokens.iter().copied())
            .collect();
        let mut x = m.embed(be, &ids)?;
        if let Some(r) = record.as_deref_mut() {
            r.residual_stream.push(x.clone());
        }
        for layer in &m.layers {
            let mut parts = Vec::with_capacity(chunks.len());
            for (c, &(a, b)) in chunks.iter_mut().zip(&spans) {
                let cache = &mut c.cache.layers[layer.index];
                parts.push(layer.attention_block(
                    be,
                    &x.slice_rows(a, b),
                    cache,
                    &m.rope,
                    m.eps(),
                    self.options.mla_form,
                )?);
            }
            let h = Tensor::concat_rows(&parts)?;
            x = match &layer.ffn {
                FeedForward::Dense(_) => layer.dense_ffn_block(be, &h, m.eps())?,
                FeedForward::Moe(moe) => {
                    let hn = layer.ffn_norm(be, &h, m.eps())?;
                    let (out, logits, routing) = moe.forward(be, &h, &hn)?;
                    if let Some(r) = record.as_deref_mut() {
                        r.routers.push((layer.index, logits, routing));
                    }
                    out
                }
            };
            layer.check_output(&x)?;
            if let Some(r) = record.as_deref_mut() {
                r.residual_stream.push(x.clone());
            }
        }
        m.head(be, &x)
    }

    /// Convenience: a cache-free forward pass over one prompt → logits `[t, vocab]`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        let mut cache = self.model.new_cache();
        self.forward(
            &mut [SeqChunk {
                tokens: tokens.to_vec(),
                cache: &mut cache,
            }],
            None,
        )
    }
}
