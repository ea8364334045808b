//! Feed-forward blocks: the SwiGLU MLP, and the MoE block (router + routed experts + shared
//! experts) split into the steps the actor runtime distributes: `plan` (route → `DispatchPlan`)
//! → per-expert MLP → `combine`. Combine adds expert outputs in ascending expert id, whatever order
//! they were computed in, so every placement and schedule gives the same bits.

use crate::backend::{Backend, RouterRule, Routing};
use crate::error::{EngineError, Result};
use crate::tensor::Tensor;
use crate::weights::Weight;

/// `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

impl Mlp {
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let g = be.linear(x, &self.gate)?;
        let u = be.linear(x, &self.up)?;
        be.linear(&be.silu_mul(&g, &u)?, &self.down)
    }
}

/// The router of one MoE layer.
#[derive(Clone, Debug)]
pub struct Router {
    pub gate: Weight,
    pub bias: Option<Vec<f32>>,
    pub rule: RouterRule,
}

impl Router {
    /// Raw logits `[n, experts]` and the routing decision.
    pub fn route(&self, be: &dyn Backend, x: &Tensor) -> Result<(Tensor, Routing)> {
        let logits = be.linear(x, &self.gate)?;
        let routing = be.route(&logits, &self.rule, self.bias.as_deref())?;
        Ok((logits, routing))
    }
}

/// Which rows go to which expert: `rows[e]` ascending row indices, and for each of them the slot
/// of `e` in that row's routing (to find its weight).
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

/// The routing step of an MoE block over normalised rows.
#[derive(Clone, Debug)]
pub struct MoePlan {
    /// Raw router logits `[n, experts]`.
    pub logits: Tensor,
    pub routing: Routing,
    /// Which rows go to which expert.
    pub dispatch: DispatchPlan,
}

impl MoeBlock {
    /// Routes the normalised rows `hn` and plans the dispatch (the first step of the block).
    pub fn plan(&self, be: &dyn Backend, hn: &Tensor) -> Result<MoePlan> {
        let (logits, routing) = self.router.route(be, hn)?;
        let dispatch = DispatchPlan::new(&routing, self.experts.len())?;
        Ok(MoePlan {
            logits,
            routing,
            dispatch,
        })
    }

    /// `residual + Σ_e w_e·expert_e(x) + shared(x)`, summing experts in ascending id per row.
    /// `expert_out[e]` holds expert `e`'s outputs for `plan.rows[e]`, in that order.
    pub fn combine(
        &self,
        residual: &Tensor,
        routing: &Routing,
        plan: &DispatchPlan,
        expert_out: &[Option<Tensor>],
        shared: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = residual.rows();
        let d = residual.cols();
        let mut moe = vec![0.0f32; n * d];
        // position of row r inside plan.rows[e]
        let mut cursor = vec![0usize; plan.rows.len()];
        for r in 0..n {
            let acc = &mut moe[r * d..(r + 1) * d];
            for (&e, &w) in routing.ids[r].iter().zip(&routing.weights[r]) {
                let e = e as usize;
                let out = expert_out.get(e).and_then(|o| o.as_ref()).ok_or_else(|| {
                    EngineError::internal(format!("combine: no output from expert {e}"))
                })?;
                let slot = cursor[e];
                cursor[e] += 1;
                if plan.rows[e].get(slot) != Some(&r) {
                    return Err(EngineError::internal(format!(
                        "combine: expert {e} rows out of order"
                    )));
                }
                for (a, b) in acc.iter_mut().zip(out.row(slot)) {
                    *a += w * b;
                }
            }
        }
        let mut out = residual.clone();
        let data = out.data_mut();
        for r in 0..n {
            for c in 0..d {
                let mut m = moe[r * d + c];
                if let Some(s) = shared {
                    m += s.row(r)[c];
                }
                data[r * d + c] += m;
            }
        }
        Ok(out)
    }

    /// The whole block on one backend (what the reference executor does).
    pub fn forward(
        &self,
        be: &dyn Backend,
        residual: &Tensor,
        x: &Tensor,
    ) -> Result<(Tensor, Tensor, Routing)> {
        let MoePlan {
            logits,
            routing,
            dispatch: plan,
        } = self.plan(be, x)?;
        let mut outs: Vec<Option<Tensor>> = vec![None; self.experts.len()];
        for e in plan.active_experts() {
            outs[e] = Some(self.experts[e].forward(be, &x.gather_rows(&plan.rows[e]))?);
        }
        let shared = match &self.shared {
            Some(s) => Some(s.forward(be, x)?),
            None => None,
        };
        let out = self.combine(residual, &routing, &plan, &outs, shared.as_ref())?;
        Ok((out, logits, routing))
    }
}

/// The feed-forward part of a decoder layer.
#[derive(Clone, Debug)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(MoeBlock),
}
