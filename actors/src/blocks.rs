//! Building the runtime's data plane: each layer's KV pool (on the backend of the stream its
//! attention actor runs on) and the block actors of every layer (attention, then the dense MLP
//! or the expert groups, shared experts and router), each with its bounded channel and
//! supervised slot, registered under its stage. Under a transport, the expert groups another
//! rank holds become one forwarding actor per (layer, rank), `layer{L}.node{N}`.

use std::collections::HashMap;
use std::sync::Arc;

use troupe_engine::device_tensor::Location;
use troupe_engine::model::kv::PageAllocator;
use troupe_engine::model::{FeedForward, KvConfig, KvPool, KvPools, Model};

use crate::actors::attention::AttentionBlock;
use crate::actors::expert::{ExpertGroupBlock, MlpBlock, SharedBlock};
use crate::actors::remote::RemoteNode;
use crate::actors::router::RouterBlock;
use crate::actors::{Block, BlockCtx, BlockSlot, Child, Envelope};
use crate::error::Result;
use crate::fault::FaultTrigger;
use crate::link::Link;
use crate::placement::{ExpertGroup, ExpertReplicas, Placement};
use crate::stage::FfnTx;
use crate::stream::Stream;
use crate::transport::Distributed;

/// Each layer's KV pool, on the backend of the stream its attention actor runs on; all share one
/// page allocator, so a sequence has one block table for every layer.
pub(crate) fn kv_pools(
    model: &Model,
    placement: &Placement,
    streams: &[Arc<Stream>],
    kv: KvConfig,
) -> Result<KvPools> {
    kv.validate()?;
    let alloc = PageAllocator::new(kv.capacity_pages, kv.page_tokens)?;
    let layers = model
        .layers
        .iter()
        .enumerate()
        .map(|(l, layer)| {
            let stream = &streams[placement.stage_streams[placement.stage_of(l)]];
            let layout = layer.attention.kv_layout(kv.page_tokens);
            Ok(KvPool::sharing(
                &**stream.backend(),
                l,
                layout,
                alloc.clone(),
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(KvPools { config: kv, layers })
}

fn channel<B: Block>(cap: usize) -> (flume::Sender<Envelope<B>>, flume::Receiver<Envelope<B>>) {
    flume::bounded(cap)
}

/// Where new block actors are registered while the tree is built: their names (for fault
/// validation) and the children of their stage.
struct BlockRegistry<'a> {
    cap: usize,
    triggers: &'a HashMap<String, Arc<FaultTrigger>>,
    names: &'a mut Vec<String>,
}

impl BlockRegistry<'_> {
    /// Creates `block`'s bounded channel and supervised slot under `name`, adds the slot to
    /// `children`, and returns the sender its callers use.
    fn add<B: Block>(
        &mut self,
        name: String,
        block: B,
        ctx: BlockCtx,
        children: &mut Vec<Arc<dyn Child>>,
    ) -> flume::Sender<Envelope<B>> {
        let (tx, rx) = channel::<B>(self.cap);
        let slot = BlockSlot::new(block, ctx, rx, self.triggers.get(&name).cloned());
        self.names.push(name);
        children.push(slot);
        tx
    }
}

/// The channels and supervised children of every block actor, as built by [`build_blocks`].
pub(crate) struct Blocks {
    pub attention: Vec<flume::Sender<Envelope<AttentionBlock>>>,
    pub ffn: Vec<FfnTx>,
    /// Per stage: its block actors.
    pub children: Vec<Vec<Arc<dyn Child>>>,
    pub names: Vec<String>,
}

/// The block actors of every layer (attention, then the dense MLP or the expert groups, shared
/// experts and router), each on its stream, registered under its stage.
pub(crate) fn build_blocks(
    model: &Arc<Model>,
    placement: &Placement,
    link: &Option<Arc<Link>>,
    kv_pools: &[Arc<KvPool>],
    locations: &[Location],
    triggers: &HashMap<String, Arc<FaultTrigger>>,
    dist: Option<&Distributed>,
    ctx: &dyn Fn(String, usize) -> BlockCtx,
) -> Result<Blocks> {
    let n_layers = model.layers.len();
    let mut names = Vec::new();
    let mut children: Vec<Vec<Arc<dyn Child>>> = vec![Vec::new(); placement.stages.len()];
    let mut attention = Vec::with_capacity(n_layers);
    let mut ffn = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        let s = placement.stage_of(l);
        let st = placement.stage_streams[s];
        let mut reg = BlockRegistry {
            cap: placement.channel_capacity,
            triggers,
            names: &mut names,
        };
        let children = &mut children[s];
        let name = format!("layer{l}.attention");
        let block = AttentionBlock {
            model: model.clone(),
            layer: l,
            pool: kv_pools[l].clone(),
        };
        attention.push(reg.add(name.clone(), block, ctx(name, st), children));
        match &model.layers[l].ffn {
            FeedForward::Dense(_) => {
                let name = format!("layer{l}.mlp");
                let block = MlpBlock {
                    model: model.clone(),
                    layer: l,
                };
                ffn.push(FfnTx::Dense(reg.add(
                    name.clone(),
                    block,
                    ctx(name, st),
                    children,
                )));
            }
            FeedForward::Moe(moe) => {
                let stage_node = placement.stage_nodes[s];
                let mut router = RouterBlock {
                    model: model.clone(),
                    layer: l,
                    // Set below, from the groups this router actually sends to.
                    replicas: Arc::new(ExpertReplicas::new(&[], moe.experts.len())),
                    groups: Vec::new(),
                    group_names: Vec::new(),
                    group_links: Vec::new(),
                    group_apart: Vec::new(),
                    shared: None,
                };
                // Under a transport, groups on other ranks are one actor per rank (one message
                // per layer, micro-batch and rank); this rank's groups are local actors.
                let local_node = dist.map(|d| d.transport.rank());
                let mut remote: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
                // The router's groups in order: this rank's, then one per other rank.
                let mut routed: Vec<ExpertGroup> = Vec::new();
                for (g, grp) in placement.expert_groups[l].iter().enumerate() {
                    if local_node.is_some_and(|n| n != grp.node) {
                        remote.entry(grp.node).or_default().extend(&grp.experts);
                        continue;
                    }
                    let name = grp.actor_name(l, g);
                    routed.push(grp.clone());
                    let block = ExpertGroupBlock {
                        model: model.clone(),
                        layer: l,
                        experts: grp.experts.clone(),
                        remote: None,
                    };
                    let ctx = ctx(name.clone(), grp.stream);
                    // A group reads the router's handles when its backend keeps data where the
                    // router's does; else, or on another node, it gets its rows moved.
                    let elsewhere = locations[grp.stream] != locations[st];
                    router
                        .groups
                        .push(reg.add(name.clone(), block, ctx, children));
                    router.group_names.push(name);
                    let remote = grp.node != stage_node;
                    router
                        .group_links
                        .push(if remote { link.clone() } else { None });
                    router.group_apart.push(remote || elsewhere);
                }
                for (node, mut experts) in remote {
                    let Some(d) = dist else { break };
                    experts.sort_unstable();
                    experts.dedup();
                    let name = format!("layer{l}.node{node}");
                    routed.push(ExpertGroup {
                        experts: experts.clone(),
                        stream: st,
                        node,
                        replica: 0,
                    });
                    let block = ExpertGroupBlock {
                        model: model.clone(),
                        layer: l,
                        experts,
                        remote: Some(RemoteNode {
                            node,
                            transport: d.transport.clone(),
                        }),
                    };
                    router.groups.push(reg.add(
                        name.clone(),
                        block,
                        ctx(name.clone(), st),
                        children,
                    ));
                    router.group_names.push(name);
                    router.group_links.push(None);
                    router.group_apart.push(true);
                }
                // An expert with replicas on several ranks is held by several of the `routed`
                // groups (a rank's node actor among them): its rows are split among them as
                // among local replicas, and a node actor gets its part as entries.
                let replicas = ExpertReplicas::new(&routed, moe.experts.len());
                router.replicas = Arc::new(replicas);
                if moe.shared.is_some() {
                    let name = format!("layer{l}.shared");
                    let block = SharedBlock {
                        model: model.clone(),
                        layer: l,
                    };
                    router.shared = Some(reg.add(name.clone(), block, ctx(name, st), children));
                }
                let name = format!("layer{l}.router");
                let tx = reg.add(name.clone(), router, ctx(name, st), children);
                ffn.push(FfnTx::Moe(tx));
            }
        }
    }
    Ok(Blocks {
        attention,
        ffn,
        children,
        names,
    })
}
