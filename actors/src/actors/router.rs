//! `layer{L}.router`: post-attention norm + routing, dispatch of each expert's rows to its group
//! actor (across the link when one is configured), the shared experts, and the combine — which
//! adds expert outputs in ascending expert id whatever order they arrived in, so every placement
//! gives the reference bits. Only a group on another node than the router is reached over the
//! link; same-node groups get their rows directly. A group that is down fails only the rows routed to it.
//! `run` is the sequence of steps: `dispatch` (one kernel) → shared experts as a task →
//! `send_to_groups` → `gather` → combine + the layer's finite check (one kernel).

use std::sync::Arc;
use std::time::Instant;

use troupe_engine::backend::Routing;
use troupe_engine::model::{DispatchPlan, Model, MoePlan};
use troupe_engine::Tensor;

use crate::actors::expert::{ExpertGroupBlock, GroupJob, GroupOut, SharedBlock};
use crate::actors::{call, Block, BlockCtx, Envelope, Meta, ReplyTo};
use crate::error::{ActorError, Result};
use crate::link::Link;

pub struct RouterBlock {
    pub model: Arc<Model>,
    pub layer: usize,
    /// `group_of[e]`: index of expert `e`'s group.
    pub group_of: Vec<usize>,
    pub groups: Vec<flume::Sender<Envelope<ExpertGroupBlock>>>,
    pub group_names: Vec<String>,
    /// Per group: the link its dispatch and combine cross (`Some` only when the group sits on
    /// another node than this router and a link is configured).
    pub group_links: Vec<Option<Arc<Link>>>,
    pub shared: Option<flume::Sender<Envelope<SharedBlock>>>,
}

/// What the dispatch kernel hands back: the normalised rows, the routing and its plan, the
/// groups that got rows (ascending group index) and, aligned with them, each group's items.
struct Dispatch {
    hn: Tensor,
    routing: Routing,
    plan: Arc<DispatchPlan>,
    active: Vec<usize>,
    jobs: Vec<Vec<(usize, Tensor)>>,
}

/// The expert outputs gathered for the combine, when the last of them arrives (over the link)
/// and the trace arrows ending in the combine span.
struct Gathered {
    outs: Vec<Option<Tensor>>,
    ready_at: Option<Instant>,
    flows_in: Vec<(u64, &'static str)>,
}

impl Block for RouterBlock {
    /// The post-attention residual `h` of a micro-batch.
    type Job = Tensor;
    type Out = Tensor;
    const DEADLINE_FACTOR: u32 = 4;
    const CONCURRENT: bool = true;

    async fn run(&self, ctx: &BlockCtx, h: Tensor, meta: &Meta) -> Result<Tensor> {
        // One trace flow arrow per group (by group index); none when not tracing.
        let flow_ids: Vec<Option<u64>> = match ctx.traced() {
            true => (0..self.groups.len()).map(|_| ctx.flow_id()).collect(),
            false => Vec::new(),
        };
        let d = self.dispatch(ctx, &h, meta, &flow_ids).await?;
        for e in d.plan.active_experts() {
            crate::metrics::expert_tokens(self.layer, e, d.plan.rows[e].len());
        }
        let shared = self.shared.as_ref().map(|tx| {
            let (tx, hn, meta) = (tx.clone(), d.hn.clone(), meta.clone());
            tokio::spawn(async move { call(&tx, hn, meta).await })
        });
        let Dispatch {
            routing,
            plan,
            active,
            jobs,
            ..
        } = d;
        let results = self.send_to_groups(&active, jobs, &flow_ids, meta).await?;
        let gathered = self.gather(&results, active.len(), &plan).await?;
        let shared_out = match shared {
            Some(j) => Some(j.await.map_err(|e| {
                ActorError::Closed(format!("layer {}: shared experts task: {e}", self.layer))
            })??),
            None => None,
        };
        let (model, l) = (self.model.clone(), self.layer);
        let mut tags = ctx.tags("combine", meta, l);
        tags.flows_in = gathered.flows_in;
        let outs = gathered.outs;
        ctx.stream
            .run_at(tags, gathered.ready_at, move |_| {
                let layer = &model.layers[l];
                let out = layer
                    .moe()?
                    .combine(&h, &routing, &plan, &outs, shared_out.as_ref())?;
                layer.check_output(&out)?;
                Ok(out)
            })
            .await
    }
}

impl RouterBlock {
    /// One kernel: post-attention norm, routing, and the gather of each active group's rows
    /// (a kernel fewer on the critical path than routing and gathering apart). The span opens a
    /// flow arrow per group (`flow_ids`, by group index).
    async fn dispatch(
        &self,
        ctx: &BlockCtx,
        h: &Tensor,
        meta: &Meta,
        flow_ids: &[Option<u64>],
    ) -> Result<Dispatch> {
        let (model, l) = (self.model.clone(), self.layer);
        let group_of = self.group_of.clone();
        let mut tags = ctx.tags("dispatch", meta, l);
        tags.flows_out = flow_ids
            .iter()
            .flatten()
            .map(|&f| (f, "dispatch"))
            .collect();
        let h = h.clone();
        ctx.stream
            .run(tags, move |be| {
                let layer = &model.layers[l];
                let hn = layer.ffn_norm(be, &h, model.eps())?;
                let MoePlan {
                    routing, dispatch, ..
                } = layer.moe()?.plan(be, &hn)?;
                let mut active: Vec<usize> =
                    dispatch.active_experts().map(|e| group_of[e]).collect();
                active.sort_unstable();
                active.dedup();
                let jobs = active
                    .iter()
                    .map(|&g| {
                        dispatch
                            .active_experts()
                            .filter(|&e| group_of[e] == g)
                            .map(|e| (e, hn.gather_rows(&dispatch.rows[e])))
                            .collect()
                    })
                    .collect();
                Ok(Dispatch {
                    hn,
                    routing,
                    plan: Arc::new(dispatch),
                    active,
                    jobs,
                })
            })
            .await
    }

    /// Sends each active group its rows — over the link when the group sits on another node
    /// (they arrive at `ready_at`, and its result comes back the same way) — and returns the
    /// channel their results come back on.
    async fn send_to_groups(
        &self,
        active: &[usize],
        jobs: Vec<Vec<(usize, Tensor)>>,
        flow_ids: &[Option<u64>],
        meta: &Meta,
    ) -> Result<flume::Receiver<Result<GroupOut>>> {
        let (rtx, rrx) = flume::bounded(2 * active.len() + 1);
        for (&g, items) in active.iter().zip(jobs) {
            let bytes: usize = items.iter().map(|(_, t)| t.data().len() * 4).sum();
            let link = &self.group_links[g];
            let env = Envelope {
                job: GroupJob {
                    items,
                    flow: flow_ids.get(g).copied().flatten(),
                    ready_at: link.as_ref().map(|l| l.book("dispatch", bytes)),
                },
                meta: meta.clone(),
                reply: match link {
                    Some(l) => ReplyTo::ViaLink(l.clone(), rtx.clone()),
                    None => ReplyTo::Direct(rtx.clone()),
                },
            };
            self.groups[g].send_async(env).await.map_err(|_| {
                ActorError::Closed(format!("layer {}: expert group channel closed", self.layer))
            })?;
        }
        Ok(rrx)
    }

    /// Waits for `expected` groups' results. Counted per group: a result re-sent by a restarted
    /// group is not counted twice. A group that is down fails the rows routed to it.
    async fn gather(
        &self,
        results: &flume::Receiver<Result<GroupOut>>,
        expected: usize,
        plan: &DispatchPlan,
    ) -> Result<Gathered> {
        let mut g_out = Gathered {
            outs: vec![None; self.group_of.len()],
            ready_at: None,
            flows_in: Vec::new(),
        };
        let mut got = vec![false; self.groups.len()];
        let mut received = 0;
        while received < expected {
            let r = results.recv_async().await.map_err(|_| {
                ActorError::Closed(format!(
                    "layer {}: expert results channel closed",
                    self.layer
                ))
            })?;
            match r {
                Ok(out) => {
                    let Some(&(e0, _)) = out.outs.first() else {
                        continue;
                    };
                    if std::mem::replace(&mut got[self.group_of[e0]], true) {
                        continue;
                    }
                    received += 1;
                    g_out.ready_at = g_out.ready_at.max(out.ready_at);
                    g_out.flows_in.extend(out.flow.map(|f| (f, "combine")));
                    for (e, t) in out.outs {
                        g_out.outs[e] = Some(t);
                    }
                }
                Err(ActorError::ActorDown { actor, reason, .. }) => {
                    let group = self.group_names.iter().position(|n| *n == actor);
                    return Err(ActorError::ActorDown {
                        actor,
                        reason,
                        rows: Some(rows_needing(plan, &self.group_of, group)),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(g_out)
    }
}

/// Rows routed to the experts of group `g` (unknown group: every row).
fn rows_needing(plan: &DispatchPlan, group_of: &[usize], g: Option<usize>) -> Vec<usize> {
    let mut rows: Vec<usize> = match g {
        Some(g) => plan
            .active_experts()
            .filter(|&e| group_of[e] == g)
            .flat_map(|e| plan.rows[e].iter().copied())
            .collect(),
        None => plan.rows.iter().flatten().copied().collect(),
    };
    rows.sort_unstable();
    rows.dedup();
    rows
}
