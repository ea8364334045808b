//! The actor runtime's [`PassDriver`]: a micro-batch is embedded on stage 0's stream, its ops are
//! sent as one `StageCall` into the stage channels, and waiting receives the stage's reply; then
//! [`run_pass`] runs the LM head over all rows in batch order. Which sequences a failure concerns
//! is tracked here (`PassFailure`).

use std::ops::Range;
use std::sync::Arc;

use troupe_engine::executor::check_chunk;
use troupe_engine::model::ChunkKind;
use troupe_engine::pass_kinds;
use troupe_engine::EngineError;

use crate::batch::{MbInfo, MbSeq, SeqCaches};
use crate::error::{ActorError, Result};
use crate::pass::{drive, PassDriver, PassShape};
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
    /// Prompt positions or a generated token (picks MLA's form under `MlaForm::Auto`).
    pub kind: ChunkKind,
}

/// Why a pass failed, and which of its sequences that concerns (`None`: all).
#[derive(Debug)]
pub struct PassFailure {
    pub error: ActorError,
    pub sequences: Option<Vec<usize>>,
}

struct MbState {
    info: Arc<MbInfo>,
    x: Option<Owned>,
    pending: Option<flume::Receiver<Result<Owned>>>,
}

/// Executes a checked pass on the runtime's actors.
struct ActorDriver<'a> {
    core: &'a Core,
    step: u64,
    seqs: Vec<SeqInput>,
    mbs: Vec<MbState>,
    failed: Option<Option<Vec<usize>>>,
}

impl PassDriver for ActorDriver<'_> {
    fn micro_batch(&mut self, id: usize, seqs: Range<usize>) -> Result<()> {
        let mut rows = 0;
        let mut mb_seqs = Vec::with_capacity(seqs.len());
        let mut ids = Vec::new();
        for i in seqs {
            let s = &self.seqs[i];
            mb_seqs.push(MbSeq {
                index: i,
                request: s.request,
                rows: rows..rows + s.tokens.len(),
                start: s.start,
                caches: s.caches.clone(),
                kind: s.kind,
            });
            rows += s.tokens.len();
            ids.extend_from_slice(&s.tokens);
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
            pending: None,
        });
        Ok(())
    }

    fn issue(&mut self, mb: usize, ops: &[Op]) -> Result<()> {
        let st = &mut self.mbs[mb];
        let x = st.x.take().ok_or_else(|| {
            ActorError::Closed(format!("micro-batch {mb} lost its data after a failure"))
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
        st.pending = Some(rx);
        Ok(())
    }

    fn wait(&mut self, mb: usize) -> Result<()> {
        let st = &mut self.mbs[mb];
        let Some(rx) = st.pending.take() else {
            return Ok(());
        };
        let r = rx
            .recv()
            .map_err(|_| ActorError::Closed("a stage dropped a micro-batch".into()))
            .and_then(|r| r);
        match r {
            Ok(x) => {
                st.x = Some(x);
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
/// stage's backend. A pass mixing prompt and generated chunks, on a path that computes the two
/// kinds with different kernels, runs as two (`row_kind::splits_passes`), as the reference
/// executor's does.
pub fn run_pass(
    core: &Core,
    schedule: &dyn Schedule,
    seqs: Vec<SeqInput>,
) -> Result<Owned, PassFailure> {
    match troupe_engine::kernels::row_kind::splits_passes() {
        true => run_pass_by_kind(core, schedule, seqs),
        false => run_uniform(core, schedule, seqs),
    }
}

/// [`run_pass`] as a splitting path runs it, on any path: a pass mixing prompt and generated
/// chunks runs as the prompt chunks' pass, then the generated chunks' pass, and the logits go
/// back to batch order.
pub fn run_pass_by_kind(
    core: &Core,
    schedule: &dyn Schedule,
    seqs: Vec<SeqInput>,
) -> Result<Owned, PassFailure> {
    if !pass_kinds::mixed(seqs.iter().map(|s| s.kind)) {
        return run_uniform(core, schedule, seqs);
    }
    let rows: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
    let kinds: Vec<ChunkKind> = seqs.iter().map(|s| s.kind).collect();
    let mut parts = Vec::with_capacity(2);
    for (_, members) in pass_kinds::by_kind(&kinds) {
        let part = members.iter().map(|&i| seqs[i].clone()).collect();
        // A failure names the sequences by their place in this pass, not in the part.
        let logits = run_uniform(core, schedule, part).map_err(|f| PassFailure {
            error: f.error,
            sequences: f
                .sequences
                .map(|s| s.iter().filter_map(|&j| members.get(j).copied()).collect()),
        })?;
        parts.push((members, logits));
    }
    let last = core.placement.stages.len() - 1;
    let stream = core.stage_stream(last);
    let logits = stream
        .run_blocking(SpanTags::named("head"), move |be| {
            let parts = parts
                .iter()
                .map(|(members, logits)| Ok((members.clone(), logits.to(be)?)))
                .collect::<troupe_engine::Result<Vec<_>>>()?;
            pass_kinds::to_batch_order(be, &rows, &parts)
        })
        .map_err(|error| PassFailure {
            error,
            sequences: None,
        })?;
    Ok(Owned::new(logits, stream.backend().clone()))
}

/// [`run_pass`] of a pass whose chunks are all of one kind (or whose path does not mind).
fn run_uniform(
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
    // Its hand-offs between actors must not find the processors halted.
    let _awake = troupe_engine::kernels::awake::keep_awake();
    let shape = PassShape {
        sequence_rows: seqs.iter().map(|s| s.tokens.len()).collect(),
        n_layers: core.model.layers.len(),
        stages: core.placement.stages.clone(),
    };
    let mut driver = ActorDriver {
        core,
        step: core.next_step(),
        seqs,
        mbs: Vec::new(),
        failed: None,
    };
    let order = drive(schedule, &mut driver, shape).map_err(|error| PassFailure {
        error,
        sequences: driver.failed.take().flatten(),
    })?;
    let parts: Vec<Owned> = order
        .iter()
        .filter_map(|&m| driver.mbs[m].x.take())
        .collect();
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
            step: Some(driver.step),
            requests: driver.seqs.iter().map(|s| s.request).collect(),
            ..SpanTags::default()
        },
        None => SpanTags::named("head"),
    };
    let tags = SpanTags {
        generated_rows: pass_kinds::all_generated(driver.seqs.iter().map(|s| s.kind)),
        ..tags
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
