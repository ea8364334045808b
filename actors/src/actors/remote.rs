//! `layer{L}.node{N}`: the expert groups a placement puts on another rank, as one expert-group
//! actor of this rank's tree (an `ExpertGroupBlock` whose `remote` is set). It takes the rows the router gathered for those groups (with their routing, on
//! the host) and sends them as **one** message through the [`Transport`] — one per layer,
//! micro-batch and destination rank — then hands the outputs back to the router's combine like a
//! local group's. It runs no kernel here and holds no stream while it waits, so this rank's
//! streams go on with other work (the other micro-batch's attention) meanwhile.

use std::sync::Arc;

use troupe_engine::backend::ExpertRows;

use crate::actors::expert::{GroupJob, GroupOut};
use crate::actors::BlockCtx;
use crate::error::{ActorError, Result};
use crate::transfer::GroupRouting;
use crate::transport::{ExpertRequest, Transport};

/// The rank an expert-group actor forwards its work to.
#[derive(Clone)]
pub struct RemoteNode {
    /// The rank holding the groups.
    pub node: usize,
    pub transport: Arc<dyn Transport>,
}

impl RemoteNode {
    /// Sends `job` (for `experts`, which this rank holds, of `layer`) and awaits the outputs.
    pub(crate) async fn run(
        &self,
        ctx: &BlockCtx,
        layer: usize,
        experts: &[usize],
        job: GroupJob,
        generated_rows: bool,
    ) -> Result<GroupOut> {
        if let Some(e) = job
            .experts
            .iter()
            .find(|&&e| !experts.contains(&(e as usize)))
        {
            return Err(ActorError::Transport {
                peer: self.node,
                message: format!(
                    "layer {}: expert {e} was sent to a rank that does not hold it",
                    layer
                ),
            });
        }
        let GroupRouting::Host { routing, top_k } = &job.routing else {
            return Err(ActorError::Transport {
                peer: self.node,
                message: format!(
                    "layer {}: rows for another rank must come with their routing on the host",
                    layer
                ),
            });
        };
        let x = job.x.on.download(&job.x.t)?;
        let req = ExpertRequest {
            layer: layer as u32,
            experts: job.experts.clone(),
            x,
            routing: (**routing).clone(),
            top_k: *top_k as u32,
            generated_rows,
        };
        let reply = self.transport.call(self.node, req).await?;
        let be = ctx.stream.backend();
        Ok(GroupOut {
            group: job.group,
            rows: ExpertRows {
                experts: reply.experts,
                rows: be.upload(&reply.rows)?,
                index: None,
            },
            on: be.clone(),
            flow: None,
            ready_at: None,
        })
    }
}
