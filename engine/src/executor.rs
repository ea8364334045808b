//! The reference executor: sequential, deterministic, one layer after another on one backend.
//! Prefill and decode share one path: a forward pass over a batch of sequence chunks, each chunk
//! extending its own paged KV cache. Row-wise ops run on the batch's concatenated rows; attention
//! runs per sequence. Every step is a backend op on handles, so on a device the activations stay
//! there: only the token ids go in, and the logits come back as a handle. Every other executor
//! is tested bit-for-bit against this one. A NaN or infinity in the embedding, a layer's output
//! or the logits fails the pass with `EngineError::NonFinite` naming the first such step.

use std::sync::{Arc, Mutex};

use crate::backend::{Backend, Routing};
use crate::device_tensor::DeviceTensor;
use crate::error::{EngineError, Result};
use crate::kernels::row_kind;
use crate::model::{ChunkKind, FeedForward, KvConfig, KvPools, MlaForm, Model, SequenceCache};
use crate::pass_kinds;
use crate::tensor::Tensor;

/// One sequence's part of a forward pass.
pub struct SeqChunk<'c> {
    pub tokens: Vec<u32>,
    pub cache: &'c mut SequenceCache,
    /// Prompt positions or a generated token (picks MLA's form under `MlaForm::Auto`).
    pub kind: ChunkKind,
}

impl<'c> SeqChunk<'c> {
    /// Prompt positions (all of the prompt, or the next part of it).
    pub fn prompt(tokens: Vec<u32>, cache: &'c mut SequenceCache) -> Self {
        SeqChunk {
            tokens,
            cache,
            kind: ChunkKind::Prompt,
        }
    }
    /// The token the last step generated, fed back.
    pub fn generated(token: u32, cache: &'c mut SequenceCache) -> Self {
        SeqChunk {
            tokens: vec![token],
            cache,
            kind: ChunkKind::Generated,
        }
    }
}

/// What a forward pass can record for tests and inspection (downloaded to the host).
#[derive(Clone, Debug, Default)]
pub struct ForwardRecord {
    /// Row 0: embeddings; row l+1: output of layer l (all batch rows concatenated).
    pub residual_stream: Vec<Tensor>,
    /// Per MoE layer: (layer index, raw router logits, routing).
    pub routers: Vec<(usize, Tensor, Routing)>,
}

impl ForwardRecord {
    /// The record of one pass from the records of passes over parts of its chunks
    /// (`parts[k]`: the chunk indices part `k` ran, in order, and its record); `rows[i]`: chunk
    /// `i`'s rows. Every tensor's rows and every routing go back to batch order.
    fn merge(rows: &[usize], parts: &[(Vec<usize>, ForwardRecord)]) -> Result<ForwardRecord> {
        // Where each chunk's rows sit: (part, first row there).
        let mut at = vec![(0usize, 0usize); rows.len()];
        for (k, (members, _)) in parts.iter().enumerate() {
            let mut r = 0;
            for &i in members {
                at[i] = (k, r);
                r += rows[i];
            }
        }
        let layers = parts.first().map_or(0, |p| p.1.residual_stream.len());
        let routers = parts.first().map_or(0, |p| p.1.routers.len());
        if parts
            .iter()
            .any(|p| p.1.residual_stream.len() != layers || p.1.routers.len() != routers)
        {
            return Err(EngineError::internal(
                "records of one pass's parts differ in length",
            ));
        }
        // One tensor per part → its rows in batch order.
        let gather = |of: Vec<&Tensor>| -> Result<Tensor> {
            let cols = of.first().map_or(0, |t| t.cols());
            let mut data = Vec::with_capacity(rows.iter().sum::<usize>() * cols);
            for (i, &n) in rows.iter().enumerate() {
                let (k, r) = at[i];
                data.extend_from_slice(&of[k].data()[r * cols..(r + n) * cols]);
            }
            Tensor::matrix(rows.iter().sum(), cols, data)
        };
        let mut out = ForwardRecord::default();
        for l in 0..layers {
            let of = parts.iter().map(|p| &p.1.residual_stream[l]).collect();
            out.residual_stream.push(gather(of)?);
        }
        for m in 0..routers {
            let layer = parts[0].1.routers[m].0;
            let logits = gather(parts.iter().map(|p| &p.1.routers[m].1).collect())?;
            let mut routing = Routing {
                ids: Vec::new(),
                weights: Vec::new(),
            };
            for (i, &n) in rows.iter().enumerate() {
                let (k, r) = at[i];
                let part = &parts[k].1.routers[m].2;
                routing.ids.extend_from_slice(&part.ids[r..r + n]);
                routing.weights.extend_from_slice(&part.weights[r..r + n]);
            }
            out.routers.push((layer, logits, routing));
        }
        Ok(out)
    }
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
    /// The KV pools caches come from (made on first use with `KvConfig::default_for`).
    kv: Mutex<Option<Arc<KvPools>>>,
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

/// Checks every chunk ([`check_chunk`]) and takes the cache pages it needs (`KvCacheFull`
/// before any compute when a pool runs out).
fn reserve_chunks(model: &Model, chunks: &mut [SeqChunk<'_>]) -> Result<()> {
    for c in chunks.iter_mut() {
        check_chunk(model, &c.tokens, c.cache.len())?;
        let len = c.cache.len() + c.tokens.len();
        c.cache.reserve(len)?;
    }
    Ok(())
}

impl<'m> ReferenceExecutor<'m> {
    pub fn new(model: &'m Model, backend: &'m dyn Backend) -> Self {
        ReferenceExecutor {
            model,
            backend,
            options: ExecOptions::default(),
            kv: Mutex::new(None),
        }
    }

    /// An executor whose caches come from `pools` (made on `backend` for `model`).
    pub fn with_kv(model: &'m Model, backend: &'m dyn Backend, pools: Arc<KvPools>) -> Self {
        let exec = ReferenceExecutor::new(model, backend);
        *exec.kv.lock().unwrap_or_else(|p| p.into_inner()) = Some(pools);
        exec
    }

    /// The KV pools of this executor.
    pub fn kv_pools(&self) -> Result<Arc<KvPools>> {
        let mut kv = self.kv.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = kv.as_ref() {
            return Ok(p.clone());
        }
        let config = KvConfig::default_for(&self.model.spec);
        let pools = Arc::new(self.model.kv_pools(self.backend, config)?);
        *kv = Some(pools.clone());
        Ok(pools)
    }

    /// An empty cache for one sequence, from this executor's pools.
    pub fn new_cache(&self) -> Result<SequenceCache> {
        Ok(self.kv_pools()?.new_cache())
    }

    /// One forward pass; returns the logits of every new row of every chunk, in batch order
    /// (`[Σ tokens, vocab]`), on the backend. Takes the cache pages the chunks need first
    /// (`KvCacheFull` before any compute when a pool runs out).
    pub fn forward(
        &self,
        chunks: &mut [SeqChunk<'_>],
        record: Option<&mut ForwardRecord>,
    ) -> Result<DeviceTensor> {
        if pass_kinds::mixed(chunks.iter().map(|c| c.kind)) && row_kind::splits_passes() {
            return self.forward_by_kind(chunks, record);
        }
        let generated = pass_kinds::all_generated(chunks.iter().map(|c| c.kind));
        // On a pool thread, the kernels' parallel regions start by work-stealing (`on_pool`);
        // the pass's linears know its rows' kind (`row_kind`).
        crate::kernels::pool::on_pool(|| {
            row_kind::with_generated(generated, || self.forward_here(chunks, record))
        })
    }

    /// A pass whose chunks mix prompt and generated rows, as a path that computes the two kinds
    /// with different kernels runs it (`row_kind::splits_passes`; callable on any path): the
    /// prompt chunks' pass, then the generated chunks' pass, and their logits (and record) put
    /// back in batch order. Every chunk is checked and given its pages before either runs.
    pub fn forward_by_kind(
        &self,
        chunks: &mut [SeqChunk<'_>],
        record: Option<&mut ForwardRecord>,
    ) -> Result<DeviceTensor> {
        reserve_chunks(self.model, chunks)?;
        let rows: Vec<usize> = chunks.iter().map(|c| c.tokens.len()).collect();
        let kinds: Vec<ChunkKind> = chunks.iter().map(|c| c.kind).collect();
        let mut logits = Vec::with_capacity(2);
        let mut records = Vec::with_capacity(2);
        for (kind, members) in pass_kinds::by_kind(&kinds) {
            let mut part: Vec<SeqChunk<'_>> = chunks
                .iter_mut()
                .filter(|c| c.kind == kind)
                .map(|c| SeqChunk {
                    tokens: c.tokens.clone(),
                    cache: &mut *c.cache,
                    kind,
                })
                .collect();
            let mut rec = record.as_ref().map(|_| ForwardRecord::default());
            let out = self.forward(&mut part, rec.as_mut())?;
            records.extend(rec.map(|r| (members.clone(), r)));
            logits.push((members, out));
        }
        if let Some(r) = record {
            // Appended, as a single pass appends to the record it is given.
            let merged = ForwardRecord::merge(&rows, &records)?;
            r.residual_stream.extend(merged.residual_stream);
            r.routers.extend(merged.routers);
        }
        pass_kinds::to_batch_order(self.backend, &rows, &logits)
    }

    fn forward_here(
        &self,
        chunks: &mut [SeqChunk<'_>],
        mut record: Option<&mut ForwardRecord>,
    ) -> Result<DeviceTensor> {
        let m = self.model;
        let be = self.backend;
        reserve_chunks(m, chunks)?;
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
            r.residual_stream.push(be.download(&x)?);
        }
        for layer in &m.layers {
            // Every chunk's attention in one call: the projections run over all rows at once.
            let mut parts: Vec<_> = chunks
                .iter_mut()
                .zip(&spans)
                .map(|(c, &(a, b))| (a..b, &mut c.cache.layers[layer.index], c.kind))
                .collect();
            let h = layer.attention_blocks(
                be,
                &x,
                &mut parts,
                &m.rope,
                m.eps(),
                self.options.mla_form,
            )?;
            drop(parts);
            x = match &layer.ffn {
                FeedForward::Dense(_) => layer.dense_ffn_block(be, &h, m.eps())?,
                FeedForward::Moe(moe) => {
                    let hn = layer.ffn_norm(be, &h, m.eps())?;
                    let (out, logits, routing) = moe.forward(be, &h, &hn)?;
                    if let Some(r) = record.as_deref_mut() {
                        let routing = be.routing_to_host(&routing)?;
                        r.routers
                            .push((layer.index, be.download(&logits)?, routing));
                    }
                    out
                }
            };
            layer.check_output(be, &x)?;
            if let Some(r) = record.as_deref_mut() {
                r.residual_stream.push(be.download(&x)?);
            }
        }
        m.head(be, &x)
    }

    /// Convenience: a forward pass over one prompt in a fresh cache → its logits `[t, vocab]`,
    /// downloaded to the host.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        let mut cache = self.new_cache()?;
        let logits = self.forward(&mut [SeqChunk::prompt(tokens.to_vec(), &mut cache)], None)?;
        self.backend.download(&logits)
    }
}
