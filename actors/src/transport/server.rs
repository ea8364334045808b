//! [`ExpertServer`]: a rank's answer to expert work sent to it — the engine's
//! `MoeBlock::experts` (one `grouped_mlp` over the experts asked for) on this rank's backend.
//! Row-independent, so the outputs are bit-identical to computing them where the router is.

use std::sync::Arc;

use troupe_engine::model::Model;
use troupe_engine::{Backend, EngineError};

use super::wire::{ExpertReply, ExpertRequest};

/// Computes expert outputs for requests from other ranks.
pub struct ExpertServer {
    model: Arc<Model>,
    be: Arc<dyn Backend>,
    rank: usize,
}

impl ExpertServer {
    pub fn new(model: Arc<Model>, be: Arc<dyn Backend>, rank: usize) -> ExpertServer {
        ExpertServer { model, be, rank }
    }

    /// The outputs of `req.experts` for the rows routed to them; an error names this rank.
    pub fn answer(&self, req: &ExpertRequest) -> Result<ExpertReply, String> {
        troupe_engine::kernels::row_kind::with_generated(req.generated_rows, || self.compute(req))
            .map_err(|e| format!("rank {}: layer {}: {e}", self.rank, req.layer))
    }

    fn compute(&self, req: &ExpertRequest) -> troupe_engine::Result<ExpertReply> {
        let be = &*self.be;
        let l = req.layer as usize;
        let layer = self
            .model
            .layers
            .get(l)
            .ok_or_else(|| EngineError::internal(format!("no layer {l}")))?;
        let moe = layer.moe()?;
        if let Some(e) = req
            .experts
            .iter()
            .find(|&&e| e as usize >= moe.experts.len())
        {
            return Err(EngineError::internal(format!("no routed expert {e}")));
        }
        if req.x.rows() != req.routing.ids.len() {
            return Err(EngineError::internal(format!(
                "{} rows with {} routings",
                req.x.rows(),
                req.routing.ids.len()
            )));
        }
        let x = be.upload(&req.x)?;
        let routing = be.routing_to_device(&req.routing, req.top_k as usize)?;
        let out = moe.experts(be, &x, &routing, &req.experts)?;
        // Entries: one per (expert, row routed to it); a device may pad behind them.
        let entries: usize = out
            .experts
            .iter()
            .map(|&e| {
                req.routing
                    .ids
                    .iter()
                    .filter(|ids| ids.contains(&e))
                    .count()
            })
            .sum();
        let rows = match out.rows.rows() == entries {
            true => out.rows,
            false => be.slice_rows(&out.rows, 0, entries)?,
        };
        Ok(ExpertReply {
            experts: out.experts,
            rows: be.download(&rows)?,
        })
    }
}
