//! Feed-forward blocks: the SwiGLU MLP, and the MoE block (router + routed experts + shared
//! experts) as backend ops: `route` → `grouped_mlp` (the experts' rows grouped per expert, all
//! experts of a call at once) → `moe_combine`. The actor runtime splits the same steps across
//! actors: `plan` (route, plus the host `DispatchPlan` it needs to pick expert groups) →
//! `experts` per group → `combine`. Combine adds expert outputs in ascending expert id, whatever
//! order or grouping they were computed in, so every placement and schedule gives the same bits.

use crate::backend::{Backend, ExpertRows, ExpertWeights, RouterRule, Routing};
use crate::device_tensor::{DeviceRouting, DeviceTensor};
use crate::error::{EngineError, Result};
use crate::weights::Weight;

/// `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

impl Mlp {
    pub fn forward(&self, be: &dyn Backend, x: &DeviceTensor) -> Result<DeviceTensor> {
        let [g, u] = super::projections(be, x, [&self.gate, &self.up])?;
        self.down(be, &g, &u)
    }
    /// The rest of [`Mlp::forward`] from the gate and up projections.
    pub fn down(
        &self,
        be: &dyn Backend,
        g: &DeviceTensor,
        u: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        be.linear(&be.silu_mul(g, u)?, &self.down)
    }
    /// This MLP as routed expert `id` of a `grouped_mlp` call.
    pub fn as_expert(&self, id: u32) -> ExpertWeights<'_> {
        ExpertWeights {
            id,
            gate: &self.gate,
            up: &self.up,
            down: &self.down,
        }
    }
}

/// The router of one MoE layer.
#[derive(Clone, Debug)]
pub struct Router {
    pub gate: Weight,
    /// DeepSeek-V3's `e_score_correction_bias` (`[n_experts]`).
    pub bias: Option<Weight>,
    pub rule: RouterRule,
}

impl Router {
    /// Raw logits `[n, experts]` and the routing decision.
    pub fn route(
        &self,
        be: &dyn Backend,
        x: &DeviceTensor,
    ) -> Result<(DeviceTensor, DeviceRouting)> {
        let logits = be.linear(x, &self.gate)?;
        let routing = be.route(&logits, &self.rule, self.bias.as_ref())?;
        Ok((logits, routing))
    }
}

/// Which rows go to which expert: `rows[e]` ascending row indices.
#[derive(Clone, Debug, PartialEq)]
pub struct DispatchPlan {
    pub rows: Vec<Vec<usize>>,
}

impl DispatchPlan {
    pub fn new(routing: &Routing, n_experts: usize) -> Result<DispatchPlan> {
        let mut rows = vec![Vec::new(); n_experts];
        for (r, ids) in routing.ids.iter().enumerate() {
            for &e in ids {
                let slot = rows.get_mut(e as usize).ok_or_else(|| {
                    EngineError::internal(format!("router chose expert {e} of {n_experts}"))
                })?;
                slot.push(r);
            }
        }
        Ok(DispatchPlan { rows })
    }
    /// Experts that received at least one row.
    pub fn active_experts(&self) -> impl Iterator<Item = usize> + '_ {
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(e, _)| e)
    }
}

/// One MoE layer.
#[derive(Clone, Debug)]
pub struct MoeBlock {
    pub router: Router,
    pub experts: Vec<Mlp>,
    pub shared: Option<Mlp>,
}

/// The routing step of an MoE block over normalised rows, with its host copy.
#[derive(Clone, Debug)]
pub struct MoePlan {
    /// Raw router logits `[n, experts]`.
    pub logits: DeviceTensor,
    pub routing: DeviceRouting,
    /// The routing on the host (`routing_to_host`: 8 bytes per slot).
    pub host_routing: Routing,
    /// Which rows go to which expert.
    pub dispatch: DispatchPlan,
}

impl MoeBlock {
    /// Routes the normalised rows `hn` and plans the dispatch on the host (the first step of the
    /// block under the actor runtime, which picks expert groups from it).
    pub fn plan(&self, be: &dyn Backend, hn: &DeviceTensor) -> Result<MoePlan> {
        let (logits, routing) = self.router.route(be, hn)?;
        let host_routing = be.routing_to_host(&routing)?;
        let dispatch = DispatchPlan::new(&host_routing, self.experts.len())?;
        Ok(MoePlan {
            logits,
            routing,
            host_routing,
            dispatch,
        })
    }

    /// The outputs of experts `ids` (ascending) for the rows `routing` sends them, in one
    /// `grouped_mlp` call.
    pub fn experts(
        &self,
        be: &dyn Backend,
        hn: &DeviceTensor,
        routing: &DeviceRouting,
        ids: &[u32],
    ) -> Result<ExpertRows> {
        let weights = ids
            .iter()
            .map(|&e| {
                self.experts
                    .get(e as usize)
                    .map(|m| m.as_expert(e))
                    .ok_or_else(|| EngineError::internal(format!("no routed expert {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        be.grouped_mlp(hn, routing, &weights)
    }

    /// `residual + (Σ_e w_e·expert_e(x) + shared(x))`, summing experts in ascending id per row;
    /// `parts` (from `experts`) together cover every expert the routing names.
    pub fn combine(
        &self,
        be: &dyn Backend,
        residual: &DeviceTensor,
        routing: &DeviceRouting,
        parts: &[ExpertRows],
        shared: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        be.moe_combine(residual, routing, parts, shared)
    }

    /// The whole block on one backend (what the reference executor does): route, every expert
    /// of the layer in one `grouped_mlp`, the shared experts, combine. Nothing moves to the host.
    /// Returns the block's output, the router logits and the routing.
    pub fn forward(
        &self,
        be: &dyn Backend,
        residual: &DeviceTensor,
        x: &DeviceTensor,
    ) -> Result<(DeviceTensor, DeviceTensor, DeviceRouting)> {
        // The router's logits and the shared experts' gate and up read the same input: one
        // call, then the routing, the routed experts, and the shared experts' down projection.
        let (logits, shared_gu) = match &self.shared {
            Some(s) => {
                let [logits, g, u] =
                    super::projections(be, x, [&self.router.gate, &s.gate, &s.up])?;
                (logits, Some((g, u)))
            }
            None => (be.linear(x, &self.router.gate)?, None),
        };
        let routing = be.route(&logits, &self.router.rule, self.router.bias.as_ref())?;
        let all: Vec<ExpertWeights<'_>> = self
            .experts
            .iter()
            .enumerate()
            .map(|(e, m)| m.as_expert(e as u32))
            .collect();
        let rows = be.grouped_mlp(x, &routing, &all)?;
        let shared = match (&self.shared, shared_gu) {
            (Some(s), Some((g, u))) => Some(s.down(be, &g, &u)?),
            _ => None,
        };
        let out = self.combine(be, residual, &routing, &[rows], shared.as_ref())?;
        Ok((out, logits, routing))
    }
}

/// The feed-forward part of a decoder layer.
#[derive(Clone, Debug)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(MoeBlock),
}
