//! `ForwardPass`: one forward pass over a batch of sequence chunks, driven by a [`Schedule`]
//! from the calling (non-async) thread. It embeds each micro-batch, sends `StageCall`s into the
//! stage channels, waits for them, and finally runs the LM head over all rows in batch order.
//! It checks what a schedule does — micro-batches are disjoint, whole sequences, ops issued in
//! model order, every sequence through every layer — so no schedule can change the bits.

use std::ops::Range;
use std::sync::Arc;

use troupe_engine::executor::check_chunk;
use troupe_engine::EngineError;

use crate::batch::{MbInfo, MbSeq, SeqCaches};
use crate::error::{ActorError, Result};
use crate::runtime::Core;
use crate::schedule::{Op, Schedule};
use crate::stage::StageCall;
use crate::trace::SpanTags;
use crate::transfer::Owned;

/// One sequence's part of a pass.
#[derive(Clone, Debug)]
pub struct SeqInput {
    pub request: u64,
    pub tokens: Vec<u32>,
    pub caches: Arc<SeqCaches>,
    /// Positions already cached before this pass.
    pub start: usize,
}

/// Handle to a micro-batch of a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MicroBatch(usize);

struct MbState {
    info: Arc<MbInfo>,
    x: Option<Owned>,
    next_op: usize,
    pending: Option<(flume::Receiver<Result<Owned>>, usize)>,
}

/// Why a pass failed, and which of its sequences that concerns (`None`: all).
#[derive(Debug)]
pub struct PassFailure {
    pub error: ActorError,
    pub sequences: Option<Vec<usize>>,
}

/// A forward pass in progress (see the module doc).
pub struct ForwardPass<'a> {
    core: &'a Core,
    schedule: String,
    step: u64,
    seqs: Vec<SeqInput>,
    mbs: Vec<MbState>,
    owner: Vec<Option<usize>>,
    failed: Option<Option<Vec<usize>>>,
}

impl<'a> ForwardPass<'a> {
    pub(crate) fn misuse(&self, message: String) -> ActorError {
        ActorError::ScheduleMisuse {
            schedule: self.schedule.clone(),
            message,
        }
    }
    pub fn n_sequences(&self) -> usize {
        self.seqs.len()
    }
    /// New rows (tokens) of sequence `i` in this pass.
    pub fn sequence_rows(&self, i: usize) -> usize {
        self.seqs.get(i).map(|s| s.tokens.len()).unwrap_or(0)
    }
    pub fn n_layers(&self) -> usize {
        self.core.model.layers.len()
    }
    pub fn n_stages(&self) -> usize {
        self.core.placement.stages.len()
    }
    /// The ops of stage `s`'s layers, in order.
    pub fn stage_ops(&self, s: usize) -> Vec<Op> {
        self.core
            .placement
            .stages
            .get(s)
            .cloned()
            .unwrap_or(0..0)
            .flat_map(Op::layer_ops)
            .collect()
    }
    /// Every op of the model, in order.
    pub fn all_ops(&self) -> Vec<Op> {
        (0..self.n_layers()).flat_map(Op::layer_ops).collect()
    }

    /// Sequences `0..n_sequences()` cut into `n` contiguous non-empty ranges (fewer when the
    /// pass has fewer sequences) whose new rows are balanced: the largest range's rows are as
    /// few as any cut allows; among such cuts, each cut is as early as it can be.
    pub fn balanced_ranges(&self, n: usize) -> Vec<Range<usize>> {
        let rows: Vec<usize> = (0..self.n_sequences())
            .map(|i| self.sequence_rows(i))
            .collect();
        balanced_ranges(&rows, n)
    }

    /// Forms `n` micro-batches (fewer when the pass has fewer sequences) balanced by rows
    /// ([`ForwardPass::balanced_ranges`]), in sequence order.
    pub fn split_balanced(&mut self, n: usize) -> Result<Vec<MicroBatch>> {
        self.balanced_ranges(n)
            .into_iter()
            .map(|r| self.micro_batch(r))
            .collect()
    }

    /// Forms a micro-batch of sequences `seqs` and embeds its tokens.
    pub fn micro_batch(&mut self, seqs: Range<usize>) -> Result<MicroBatch> {
        if seqs.is_empty() || seqs.end > self.seqs.len() {
            return Err(self.misuse(format!(
                "micro-batch of sequences {seqs:?} (the pass has {})",
                self.seqs.len()
            )));
        }
        if let Some(i) = seqs.clone().find(|&i| self.owner[i].is_some()) {
            return Err(self.misuse(format!("sequence {i} is already in a micro-batch")));
        }
        let id = self.mbs.len();
        let mut rows = 0;
        let mut mb_seqs = Vec::with_capacity(seqs.len());
        let mut ids = Vec::new();
        for i in seqs.clone() {
            let s = &self.seqs[i];
            mb_seqs.push(MbSeq {
                index: i,
                request: s.request,
                rows: rows..rows + s.tokens.len(),
                start: s.start,
                caches: s.caches.clone(),
            });
            rows += s.tokens.len();
            ids.extend_from_slice(&s.tokens);
            self.owner[i] = Some(id);
        }
        let info = Arc::new(MbInfo {
            index: id,
            step: self.step,
            seqs: mb_seqs,
        });
        let model = self.core.model.clone();
        let tags = match self.core.tracer {
            Some(_) => SpanTags {
                name: "embed",
                actor: "stage0".into(),
                micro_batch: Some(id),
                step: Some(self.step),
                requests: info.requests(),
                ..SpanTags::default()
            },
            None => SpanTags::named("embed"),
        };
        let stream = self.core.stage_stream(0);
        let x = stream.run_blocking(tags, move |be| model.embed(be, &ids))?;
        let x = Owned::new(x, stream.backend().clone());
        self.mbs.push(MbState {
            info,
            x: Some(x),
            next_op: 0,
            pending: None,
        });
        Ok(MicroBatch(id))
    }

    /// Starts `ops` (the micro-batch's next ops, in model order) without waiting.
    pub fn issue(&mut self, mb: MicroBatch, ops: &[Op]) -> Result<()> {
        let all = self.all_ops();
        let st = self
            .mbs
            .get(mb.0)
            .ok_or_else(|| self.misuse(format!("no micro-batch {}", mb.0)))?;
        if st.pending.is_some() {
            return Err(self.misuse(format!(
                "micro-batch {} already has ops in flight (wait for it first)",
                mb.0
            )));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let expect = all.get(st.next_op..st.next_op + ops.len());
        if expect != Some(ops) {
            return Err(self.misuse(format!(
                "micro-batch {} issued {ops:?} but its next ops are {:?}",
                mb.0,
                all.get(st.next_op..(st.next_op + ops.len()).min(all.len()))
            )));
        }
        let st = &mut self.mbs[mb.0];
        let x = st.x.take().ok_or_else(|| {
            ActorError::Closed(format!(
                "micro-batch {} lost its data after a failure",
                mb.0
            ))
        })?;
        let (tx, rx) = flume::bounded(1);
        let stage = self.core.placement.stage_of(ops[0].layer());
        let call = StageCall {
            ops: ops.to_vec(),
            x,
            mb: st.info.clone(),
            reply: tx,
        };
        self.core
            .stage_tx(stage)?
            .send(call)
            .map_err(|_| ActorError::Closed(format!("stage{stage} is stopped")))?;
        st.pending = Some((rx, ops.len()));
        Ok(())
    }

    /// Waits for the micro-batch's ops in flight (no-op when none).
    pub fn wait(&mut self, mb: MicroBatch) -> Result<()> {
        let Some(st) = self.mbs.get_mut(mb.0) else {
            return Err(self.misuse(format!("no micro-batch {}", mb.0)));
        };
        let Some((rx, n)) = st.pending.take() else {
            return Ok(());
        };
        let r = rx
            .recv()
            .map_err(|_| ActorError::Closed("a stage dropped a micro-batch".into()))
            .and_then(|r| r);
        match r {
            Ok(x) => {
                st.x = Some(x);
                st.next_op += n;
                Ok(())
            }
            Err(e) => {
                let seqs = match &e {
                    ActorError::ActorDown {
                        rows: Some(rows), ..
                    } => Some(st.info.sequences_of_rows(rows)),
                    ActorError::ActorDown { rows: None, .. } => {
                        Some(st.info.seqs.iter().map(|s| s.index).collect())
                    }
                    _ => None,
                };
                self.failed = Some(match (self.failed.take(), seqs) {
                    (Some(Some(mut a)), Some(b)) => {
                        a.extend(b);
                        Some(a)
                    }
                    (None, s) => s,
                    _ => None,
                });
                Err(e)
            }
        }
    }
}

/// `rows` (per sequence) cut into `n` contiguous non-empty ranges (`n` clamped to
/// `1..=rows.len()`; none for no rows) minimising the largest range's sum; ties go to the earliest
/// cut, scanning from the last range back.
pub fn balanced_ranges(rows: &[usize], n: usize) -> Vec<Range<usize>> {
    let m = rows.len();
    if m == 0 {
        return Vec::new();
    }
    let k = n.clamp(1, m);
    let mut prefix = vec![0usize; m + 1];
    for (i, r) in rows.iter().enumerate() {
        prefix[i + 1] = prefix[i] + r;
    }
    // best[p][j]: the smallest largest sum cutting the first j sequences into p ranges.
    let mut best = vec![vec![usize::MAX; m + 1]; k + 1];
    best[0][0] = 0;
    for p in 1..=k {
        for j in p..=m {
            best[p][j] = (p - 1..j)
                .filter(|&c| best[p - 1][c] != usize::MAX)
                .map(|c| best[p - 1][c].max(prefix[j] - prefix[c]))
                .min()
                .unwrap_or(usize::MAX);
        }
    }
    let mut out = Vec::with_capacity(k);
    let mut end = m;
    for p in (1..=k).rev() {
        let target = best[p][end];
        let start = (p - 1..end)
            .find(|&c| {
                best[p - 1][c] != usize::MAX
                    && best[p - 1][c].max(prefix[end] - prefix[c]) == target
            })
            .unwrap_or(p - 1);
        out.push(start..end);
        end = start;
    }
    out.reverse();
    out
}

/// Takes every sequence's cache pages for this pass before any compute (rolling its cache back
/// to its start first). Sequences whose pool runs out fail alone: `KvCacheFull` naming them
/// (the others keep their pages and can run the pass again without them).
fn reserve_pages(seqs: &[SeqInput]) -> Result<(), PassFailure> {
    let mut full: Option<(EngineError, Vec<usize>)> = None;
    for (i, s) in seqs.iter().enumerate() {
        match s.caches.reserve(s.start, s.tokens.len()) {
            Ok(()) => {}
            Err(e @ EngineError::KvCacheFull { .. }) => match &mut full {
                Some((_, failed)) => failed.push(i),
                None => full = Some((e, vec![i])),
            },
            Err(e) => {
                return Err(PassFailure {
                    error: e.into(),
                    sequences: None,
                })
            }
        }
    }
    match full {
        Some((e, failed)) => Err(PassFailure {
            error: e.into(),
            sequences: Some(failed),
        }),
        None => Ok(()),
    }
}

/// Runs one forward pass; returns the logits of every new row in batch order, on the last
/// stage's backend.
pub fn run_pass(
    core: &Core,
    schedule: &dyn Schedule,
    seqs: Vec<SeqInput>,
) -> Result<Owned, PassFailure> {
    for (i, s) in seqs.iter().enumerate() {
        check_chunk(&core.model, &s.tokens, s.start).map_err(|e| PassFailure {
            error: e.into(),
            sequences: Some(vec![i]),
        })?;
    }
    if seqs.is_empty() {
        return Err(PassFailure {
            error: troupe_engine::EngineError::EmptyPrompt.into(),
            sequences: None,
        });
    }
    reserve_pages(&seqs)?;
    let n = seqs.len();
    let mut pass = ForwardPass {
        core,
        schedule: schedule.name().to_string(),
        step: core.next_step(),
        seqs,
        mbs: Vec::new(),
        owner: vec![None; n],
        failed: None,
    };
    let r = schedule.run(&mut pass);
    // Never leave work in flight: a re-run must not race a straggler on the same caches.
    for i in 0..pass.mbs.len() {
        let _ = pass.wait(MicroBatch(i));
    }
    if let Err(error) = r {
        return Err(PassFailure {
            error,
            sequences: pass.failed.take().flatten(),
        });
    }
    let total = pass.all_ops().len();
    if let Some(i) = pass.owner.iter().position(Option::is_none) {
        return Err(PassFailure {
            error: pass.misuse(format!("sequence {i} was never put in a micro-batch")),
            sequences: None,
        });
    }
    if let Some(m) = pass.mbs.iter().position(|m| m.next_op != total) {
        return Err(PassFailure {
            error: pass.misuse(format!(
                "micro-batch {m} stopped after {} of {total} ops",
                pass.mbs[m].next_op
            )),
            sequences: None,
        });
    }
    let mut order: Vec<usize> = (0..pass.mbs.len()).collect();
    order.sort_by_key(|&m| pass.mbs[m].info.seqs[0].index);
    let parts: Vec<Owned> = order.iter().filter_map(|&m| pass.mbs[m].x.take()).collect();
    let fail = |error: ActorError| PassFailure {
        error,
        sequences: None,
    };
    let model = core.model.clone();
    let last = core.placement.stages.len() - 1;
    let tags = match core.tracer {
        Some(_) => SpanTags {
            name: "head",
            actor: format!("stage{last}"),
            step: Some(pass.step),
            requests: pass.seqs.iter().map(|s| s.request).collect(),
            ..SpanTags::default()
        },
        None => SpanTags::named("head"),
    };
    let stream = core.stage_stream(last);
    let logits = stream
        .run_blocking(tags, move |be| {
            let mut x = parts
                .iter()
                .map(|p| p.to(be))
                .collect::<troupe_engine::Result<Vec<_>>>()?;
            let x = match x.len() {
                1 => x.remove(0),
                _ => be.concat_rows(&x)?,
            };
            model.head(be, &x)
        })
        .map_err(fail)?;
    Ok(Owned::new(logits, stream.backend().clone()))
}

#[cfg(test)]
mod tests {
    use super::balanced_ranges;

    #[test]
    fn balanced_ranges_minimise_the_largest_part() {
        assert!(balanced_ranges(&[], 3).is_empty());
        assert_eq!(balanced_ranges(&[5], 3), vec![0..1]);
        assert_eq!(balanced_ranges(&[1, 1, 1, 1], 2), vec![0..2, 2..4]);
        // Two-microbatch's old rule: the first cut with the smallest |a − b|.
        assert_eq!(balanced_ranges(&[1, 2, 1], 2), vec![0..1, 1..3]);
        assert_eq!(balanced_ranges(&[8, 1, 1, 1, 1], 2), vec![0..1, 1..5]);
        assert_eq!(
            balanced_ranges(&[3, 3, 3, 3, 3, 3], 3),
            vec![0..2, 2..4, 4..6]
        );
        assert_eq!(balanced_ranges(&[1, 1, 1], 5), vec![0..1, 1..2, 2..3]);
        let parts = balanced_ranges(&[7, 1, 2, 6, 3, 3, 1], 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.first().map(|r| r.start), Some(0));
        assert_eq!(parts.last().map(|r| r.end), Some(7));
        let sums: Vec<usize> = parts
            .iter()
            .map(|r| [7, 1, 2, 6, 3, 3, 1][r.clone()].iter().sum())
            .collect();
        assert_eq!(sums.iter().max(), Some(&8), "{parts:?}");
    }
}
