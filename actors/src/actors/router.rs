//! `layer{L}.router`: post-attention norm + routing, dispatch of each expert's rows to its group
//! actor (across the link when one is configured), the shared experts, and the combine — which
//! adds expert outputs in ascending expert id whatever order they arrived in, so every placement
//! gives the reference bits. Only a group on another node than the router is reached over the
//! link; same-node groups get their rows directly. A group that is down fails only the rows routed to it.

use std::sync::Arc;

use troupe_engine::model::{DispatchPlan, Model};
use troupe_engine::Tensor;

use crate::actors::expert::{moe, ExpertGroupBlock, GroupJob, SharedBlock};
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

impl Block for RouterBlock {
    /// The post-attention residual `h` of a micro-batch.
    type Job = Tensor;
    type Out = Tensor;
    const DEADLINE_FACTOR: u32 = 4;
    const CONCURRENT: bool = true;

    async fn run(&self, ctx: &BlockCtx, h: Tensor, meta: &Meta) -> Result<Tensor> {
        let (model, l) = (self.model.clone(), self.layer);
        let n_experts = self.group_of.len();
        let group_of = self.group_of.clone();
        // One kernel: post-attention norm, routing, and the gather of each active group's rows
        // (a kernel fewer on the critical path than routing and gathering apart).
        let flow_ids: Vec<Option<u64>> = (0..self.groups.len()).map(|_| ctx.flow_id()).collect();
        let mut tags = ctx.tags("dispatch", meta, l);
        tags.flows_out = flow_ids
            .iter()
            .flatten()
            .map(|&f| (f, "dispatch"))
            .collect();
        let h2 = h.clone();
        let (hn, routing, plan, active, jobs) = ctx
            .stream
            .run(tags, move |be| {
                let layer = &model.layers[l];
                let moe = moe(&model, l)?;
                let hn = be.rms_norm(&h2, &layer.post_norm, model.eps())?;
                let (_, routing) = moe.router.route(be, &hn)?;
                let plan = DispatchPlan::new(&routing, n_experts)?;
                let mut active: Vec<usize> = plan.active_experts().map(|e| group_of[e]).collect();
                active.sort_unstable();
                active.dedup();
                let jobs: Vec<Vec<(usize, Tensor)>> = active
                    .iter()
                    .map(|&g| {
                        plan.active_experts()
                            .filter(|&e| group_of[e] == g)
                            .map(|e| (e, hn.gather_rows(&plan.rows[e])))
                            .collect()
                    })
                    .collect();
                Ok((hn, routing, Arc::new(plan), active, jobs))
            })
            .await?;
        for e in plan.active_experts() {
            crate::metrics::expert_tokens(l, e, plan.rows[e].len());
        }
        // The dispatch span's flow arrows, one per active group (by group index).
        let flows: Vec<Option<u64>> = active.iter().map(|&g| flow_ids[g]).collect();
        let shared = match &self.shared {
            Some(tx) => {
                let (tx, hn, meta) = (tx.clone(), hn.clone(), meta.clone());
                Some(tokio::spawn(async move { call(&tx, hn, meta).await }))
            }
            None => None,
        };
        let (rtx, rrx) = flume::bounded(2 * active.len() + 1);
        for ((&g, items), flow) in active.iter().zip(jobs).zip(&flows) {
            let bytes: usize = items.iter().map(|(_, t)| t.data().len() * 4).sum();
            // A group on another node gets its rows over the link: they arrive at `ready_at`,
            // and its result comes back the same way.
            let link = &self.group_links[g];
            let env = Envelope {
                job: GroupJob {
                    items,
                    flow: *flow,
                    ready_at: link.as_ref().map(|l| l.book("dispatch", bytes)),
                },
                meta: meta.clone(),
                reply: match link {
                    Some(l) => ReplyTo::ViaLink(l.clone(), rtx.clone()),
                    None => ReplyTo::Direct(rtx.clone()),
                },
            };
            self.groups[g].send_async(env).await.map_err(|_| {
                ActorError::Closed(format!("layer {l}: expert group channel closed"))
            })?;
        }
        drop(rtx);
        let mut outs: Vec<Option<Tensor>> = vec![None; n_experts];
        let mut flows_in = Vec::new();
        let mut ready_at = None;
        // Counted per group: a result re-sent by a restarted group is not counted twice.
        let mut got = vec![false; self.groups.len()];
        let mut received = 0;
        while received < active.len() {
            let r = rrx.recv_async().await.map_err(|_| {
                ActorError::Closed(format!("layer {l}: expert results channel closed"))
            })?;
            match r {
                Ok(out) => {
                    let Some(&(e0, _)) = out.outs.first() else {
                        continue;
                    };
                    let g = self.group_of[e0];
                    if std::mem::replace(&mut got[g], true) {
                        continue;
                    }
                    received += 1;
                    ready_at = ready_at.max(out.ready_at);
                    flows_in.extend(out.flow.map(|f| (f, "combine")));
                    for (e, t) in out.outs {
                        outs[e] = Some(t);
                    }
                }
                Err(ActorError::ActorDown { actor, reason, .. }) => {
                    let rows = rows_needing(
                        &plan,
                        &self.group_of,
                        self.group_names.iter().position(|n| *n == actor),
                    );
                    return Err(ActorError::ActorDown {
                        actor,
                        reason,
                        rows: Some(rows),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let shared_out = match shared {
            Some(j) => Some(j.await.map_err(|e| {
                ActorError::Closed(format!("layer {l}: shared experts task: {e}"))
            })??),
            None => None,
        };
        let model = self.model.clone();
        let mut tags = ctx.tags("combine", meta, l);
        tags.flows_in = flows_in;
        ctx.stream
            .run_at(tags, ready_at, move |_| {
                moe(&model, l)?.combine(&h, &routing, &plan, &outs, shared_out.as_ref())
            })
            .await
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
