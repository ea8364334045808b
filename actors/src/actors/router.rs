//! `layer{L}.router`: post-attention norm + routing, dispatch to the expert group actors (across
//! the link when one is configured), the shared experts, and the combine (`moe_combine`, which
//! adds expert outputs in ascending expert id whatever order they arrived in, so every placement
//! gives the reference bits). Routing runs on the router's backend; only the routing decision
//! comes to the host (`routing_to_host`), to know which groups get rows. A group whose backend
//! reads the router's handles and that sits on the router's node gets the normalised rows and the
//! routing as handles (nothing moves); a group on another node or device gets only the rows
//! routed to its experts (`gather_rows`) and their routing, moved explicitly (`transfer.rs`), and
//! its results come back the same way — the bytes the link books are these. An expert listed in
//! several groups (replicas) has its rows shared among them (`placement::ExpertReplicas`: a
//! group with part of an expert's rows gets them as entries, and the parts are joined before the
//! combine). A group that is down fails only the rows routed to it. `run` is the sequence of
//! steps: `dispatch` (one kernel) → `send_to_groups` for the groups apart → shared experts as a
//! task → `send_to_groups` for the rest → `gather` → combine + the layer's finite check (one
//! kernel).

use std::sync::Arc;
use std::time::Instant;

use troupe_engine::backend::{ExpertRows, Routing};
use troupe_engine::model::{DispatchPlan, Model, MoePlan};
use troupe_engine::{Backend, DeviceRouting, DeviceTensor};

use crate::actors::expert::{ExpertGroupBlock, GroupJob, GroupOut, SharedBlock};
use crate::actors::{call, Block, BlockCtx, Envelope, Meta, ReplyTo};
use crate::error::{ActorError, Result};
use crate::link::{Link, TransferTags};
use crate::placement::{ExpertReplicas, Share};
use crate::transfer::{move_expert_rows, GroupRouting, Owned};

pub struct RouterBlock {
    pub model: Arc<Model>,
    pub layer: usize,
    /// The groups holding each expert (several: its replicas, which share its rows).
    pub replicas: Arc<ExpertReplicas>,
    pub groups: Vec<flume::Sender<Envelope<ExpertGroupBlock>>>,
    pub group_names: Vec<String>,
    /// Per group: the link its dispatch and combine cross (`Some` only when the group sits on
    /// another node than this router and a link is configured).
    pub group_links: Vec<Option<Arc<Link>>>,
    /// Per group: whether it gets only its own rows, moved (another node, or a backend that
    /// keeps data elsewhere than the router's), instead of the router's handles.
    pub group_apart: Vec<bool>,
    pub shared: Option<flume::Sender<Envelope<SharedBlock>>>,
}

/// One active group's work as the dispatch kernel makes it.
struct GroupWork {
    experts: Vec<u32>,
    x: DeviceTensor,
    routing: GroupRouting,
}

/// What the dispatch kernel hands back: the residual and normalised rows on the router's
/// backend, the routing and its plan, each group's share of the rows, the groups that got rows
/// (ascending group index) and, aligned with them, each group's work.
struct Dispatch {
    h: DeviceTensor,
    hn: DeviceTensor,
    routing: DeviceRouting,
    plan: Arc<DispatchPlan>,
    shares: Arc<Vec<Share>>,
    active: Vec<usize>,
    jobs: Vec<GroupWork>,
}

/// The expert outputs gathered for the combine (with the backend that made each), when the last
/// of them arrives (over the link) and the trace arrows ending in the combine span.
struct Gathered {
    /// (group, its outputs, the backend that made them).
    outs: Vec<(usize, ExpertRows, Arc<dyn Backend>)>,
    ready_at: Option<Instant>,
    flows_in: Vec<(u64, &'static str)>,
}

impl Block for RouterBlock {
    /// The post-attention residual `h` of a micro-batch.
    type Job = Owned;
    type Out = Owned;
    const DEADLINE_FACTOR: u32 = 4;
    const CONCURRENT: bool = true;

    async fn run(&self, ctx: &BlockCtx, h: Owned, meta: &Meta) -> Result<Owned> {
        // One trace flow arrow per group (by group index); none when not tracing.
        let flow_ids: Vec<Option<u64>> = match ctx.traced() {
            true => (0..self.groups.len()).map(|_| ctx.flow_id()).collect(),
            false => Vec::new(),
        };
        let d = self.dispatch(ctx, h, meta, &flow_ids).await?;
        for e in d.plan.active_experts() {
            crate::metrics::expert_tokens(self.layer, e, d.plan.rows[e].len());
        }
        crate::placement::load::record(self.layer, &d.plan, &self.replicas, &d.shares);
        let own = ctx.stream.backend();
        let Dispatch {
            h,
            hn,
            routing,
            shares,
            active,
            jobs,
            ..
        } = d;
        // Groups apart (another node or device) first, then the shared experts, then the
        // groups reading the router's handles. The shared kernel takes every core of a CPU
        // pool, and a router that had not yet booked its transfers waited for a core until
        // that kernel ended (traced on two streams behind a 100 µs link: up to 0.8 ms in a
        // layer). A far group's kernel that arrives on the router's stream before the shared
        // kernel reaches it now runs first; the combine waits for both either way.
        let (apart, near): (Vec<_>, Vec<_>) = active
            .iter()
            .copied()
            .zip(jobs)
            .partition(|&(g, _)| self.group_apart[g]);
        let (rtx, results) = flume::bounded(2 * active.len() + 1);
        self.send_to_groups(own, apart, &rtx, &flow_ids, meta)
            .await?;
        let shared = self.shared.as_ref().map(|tx| {
            let (tx, hn, meta) = (tx.clone(), Owned::new(hn, own.clone()), meta.clone());
            tokio::spawn(async move { call(&tx, hn, meta).await })
        });
        self.send_to_groups(own, near, &rtx, &flow_ids, meta)
            .await?;
        let gathered = self.gather(&results, active.len(), &shares).await?;
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
        let replicas = self.replicas.clone();
        let out = ctx
            .stream
            .run_at(tags, gathered.ready_at, move |be| {
                // A group's results hold its share's entries; replicas' runs are joined.
                let parts = outs
                    .iter()
                    .map(|(g, rows, on)| {
                        move_expert_rows(rows, shares[*g].entries(), &**on, be).map(|r| (*g, r))
                    })
                    .collect::<troupe_engine::Result<Vec<_>>>()?;
                let parts = replicas.merge(be, parts, &shares)?;
                let shared = shared_out.map(|s| s.to(be)).transpose()?;
                let layer = &model.layers[l];
                let out = layer
                    .moe()?
                    .combine(be, &h, &routing, &parts, shared.as_ref())?;
                layer.check_output(be, &out)?;
                Ok(out)
            })
            .await?;
        Ok(Owned::new(out, own.clone()))
    }
}

impl RouterBlock {
    /// One kernel: post-attention norm, routing (its decision to the host, for the plan), and
    /// each active group's work: the router's handles, or only its rows gathered for a group
    /// apart (a kernel fewer on the critical path than routing and gathering apart). The span
    /// opens a flow arrow per group (`flow_ids`, by group index).
    async fn dispatch(
        &self,
        ctx: &BlockCtx,
        h: Owned,
        meta: &Meta,
        flow_ids: &[Option<u64>],
    ) -> Result<Dispatch> {
        let (model, l) = (self.model.clone(), self.layer);
        let (replicas, apart) = (self.replicas.clone(), self.group_apart.clone());
        let mut tags = ctx.tags("dispatch", meta, l);
        tags.flows_out = flow_ids
            .iter()
            .flatten()
            .map(|&f| (f, "dispatch"))
            .collect();
        ctx.stream
            .run(tags, move |be| {
                let layer = &model.layers[l];
                let h = h.to(be)?;
                let hn = layer.ffn_norm(be, &h, model.eps())?;
                let MoePlan {
                    routing,
                    host_routing,
                    dispatch,
                    ..
                } = layer.moe()?.plan(be, &hn)?;
                let shares = replicas.shares(&dispatch, &host_routing);
                let active: Vec<usize> = (0..shares.len())
                    .filter(|&g| !shares[g].is_empty())
                    .collect();
                let mut jobs = Vec::with_capacity(active.len());
                for &g in &active {
                    let experts = shares[g].experts.clone();
                    jobs.push(if !shares[g].whole {
                        // Part of a replicated expert's rows: one entry per (expert, row).
                        let (idx, entries) = shares[g].as_entries(&host_routing);
                        GroupWork {
                            experts,
                            x: be.gather_rows(&hn, &idx)?,
                            routing: GroupRouting::Host {
                                routing: Arc::new(entries),
                                top_k: 1,
                            },
                        }
                    } else if apart[g] {
                        let rows = shares[g].rows_needed();
                        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
                        GroupWork {
                            experts,
                            x: be.gather_rows(&hn, &idx)?,
                            routing: GroupRouting::Host {
                                routing: Arc::new(Routing {
                                    ids: rows
                                        .iter()
                                        .map(|&r| host_routing.ids[r].clone())
                                        .collect(),
                                    weights: rows
                                        .iter()
                                        .map(|&r| host_routing.weights[r].clone())
                                        .collect(),
                                }),
                                top_k: routing.top_k(),
                            },
                        }
                    } else {
                        GroupWork {
                            experts,
                            x: hn.clone(),
                            routing: GroupRouting::Handle(routing.clone()),
                        }
                    });
                }
                Ok(Dispatch {
                    h,
                    hn,
                    routing,
                    plan: Arc::new(dispatch),
                    shares: Arc::new(shares),
                    active,
                    jobs,
                })
            })
            .await
    }

    /// Sends each of `jobs`' groups its rows — over the link when the group sits on another
    /// node (they arrive at `ready_at`, and its result comes back the same way) — with `rtx`
    /// for their results.
    async fn send_to_groups(
        &self,
        own: &Arc<dyn Backend>,
        jobs: Vec<(usize, GroupWork)>,
        rtx: &flume::Sender<Result<GroupOut>>,
        flow_ids: &[Option<u64>],
        meta: &Meta,
    ) -> Result<()> {
        let tags = TransferTags {
            layer: Some(self.layer),
            micro_batch: Some(meta.micro_batch),
            step: Some(meta.step),
        };
        for (g, work) in jobs {
            let link = &self.group_links[g];
            // What crosses the link: the group's rows and their routing (nothing when the
            // group reads the router's handles, which only same-node groups do).
            let bytes = match self.group_apart[g] {
                true => work.x.bytes() + work.routing.bytes(),
                false => 0,
            };
            let env = Envelope {
                job: GroupJob {
                    group: g,
                    experts: work.experts,
                    x: Owned::new(work.x, own.clone()),
                    routing: work.routing,
                    flow: flow_ids.get(g).copied().flatten(),
                    ready_at: link
                        .as_ref()
                        .map(|l| l.book_tagged("dispatch", bytes, tags)),
                },
                meta: meta.clone(),
                reply: match link {
                    Some(l) => ReplyTo::ViaLink(l.clone(), rtx.clone(), tags),
                    None => ReplyTo::Direct(rtx.clone()),
                },
            };
            self.groups[g].send_async(env).await.map_err(|_| {
                ActorError::Closed(format!("layer {}: expert group channel closed", self.layer))
            })?;
        }
        Ok(())
    }

    /// Waits for `expected` groups' results. Counted per group: a result re-sent by a restarted
    /// group is not counted twice. A group that is down fails the rows routed to it.
    async fn gather(
        &self,
        results: &flume::Receiver<Result<GroupOut>>,
        expected: usize,
        shares: &[Share],
    ) -> Result<Gathered> {
        let mut g_out = Gathered {
            outs: Vec::with_capacity(expected),
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
                    let g = out.group;
                    if g >= got.len() || std::mem::replace(&mut got[g], true) {
                        continue;
                    }
                    received += 1;
                    g_out.ready_at = g_out.ready_at.max(out.ready_at);
                    g_out.flows_in.extend(out.flow.map(|f| (f, "combine")));
                    g_out.outs.push((g, out.rows, out.on));
                }
                Err(ActorError::ActorDown { actor, reason, .. }) => {
                    let group = self.group_names.iter().position(|n| *n == actor);
                    return Err(ActorError::ActorDown {
                        actor,
                        reason,
                        rows: Some(rows_needing(shares, group)),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(g_out)
    }
}

/// Rows whose share group `g` holds (unknown group: every row of the step).
fn rows_needing(shares: &[Share], g: Option<usize>) -> Vec<usize> {
    match g.and_then(|g| shares.get(g)) {
        Some(share) => share.rows_needed(),
        None => {
            let mut rows: Vec<usize> = shares.iter().flat_map(Share::rows_needed).collect();
            rows.sort_unstable();
            rows.dedup();
            rows
        }
    }
}
