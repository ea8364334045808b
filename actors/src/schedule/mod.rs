//! Schedules: the public [`Schedule`] trait and the three built-ins. A schedule decides how a
//! forward pass's batch is split into micro-batches (by whole sequences) and in which order their
//! ops — `Attention(l)` then `Ffn(l)` for every layer — are issued and awaited on the
//! [`ForwardPass`]. The pass enforces op order and coverage, so a custom schedule can change
//! overlap and timing but never the result: logits are bit-identical for every schedule.
//!
//! `[schedule]` in the graph file: `kind = "sequential" | "two-microbatch" | "pipeline"`,
//! `micro_batches = N` (pipeline; default: one per stage), `split_at = K` (two-microbatch: first
//! micro-batch = sequences `0..K`; default: balanced by rows). `--schedule` overrides `kind`.
//! Names resolve through [`registry`]: the built-ins and any schedule a library user registered.

mod pipeline;
pub mod registry;
mod sequential;
mod two_microbatch;

pub use crate::pass::{ForwardPass, MicroBatch};
pub use pipeline::Pipeline;
pub use registry::{register, register_schedule, ScheduleParams};
pub use sequential::Sequential;
pub use two_microbatch::TwoMicroBatch;

use std::sync::Arc;

use serde::Deserialize;
use toml::Table;

use crate::error::{ActorError, Result};

/// One step of a micro-batch's way through the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Input norm + attention + residual of layer `l`.
    Attention(usize),
    /// Post norm + FFN (dense MLP, or route → dispatch → experts → combine) + residual.
    Ffn(usize),
}

impl Op {
    pub fn layer(&self) -> usize {
        match *self {
            Op::Attention(l) | Op::Ffn(l) => l,
        }
    }
    /// Both ops of layer `l`, in order.
    pub fn layer_ops(l: usize) -> [Op; 2] {
        [Op::Attention(l), Op::Ffn(l)]
    }
}

/// A way of driving a forward pass. Implementations live inside or outside this crate.
pub trait Schedule: Send + Sync {
    /// A short name (traces, errors).
    fn name(&self) -> &str;
    /// Splits `pass`'s sequences into micro-batches and issues every op of each.
    fn run(&self, pass: &mut ForwardPass<'_>) -> Result<()>;
}

/// `[schedule]` as written in a graph file (unknown fields refused).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleTable {
    kind: Option<String>,
    micro_batches: Option<usize>,
    split_at: Option<usize>,
}

/// Builds the schedule from `[schedule]` and the CLI's `--schedule` (which wins).
pub fn from_config(
    table: Option<&Table>,
    cli: Option<&str>,
    n_stages: usize,
) -> Result<Arc<dyn Schedule>> {
    let t: ScheduleTable = match table {
        None => ScheduleTable::default(),
        Some(t) => crate::placement::spec::from_table(t)
            .map_err(|e| ActorError::schedule(e.field, e.message))?,
    };
    let positive = |v: Option<usize>, field: &str| match v {
        Some(0) => Err(ActorError::schedule(
            field,
            "expected a positive integer, found `0`",
        )),
        v => Ok(v),
    };
    let split_at = positive(t.split_at, "split_at")?;
    let micro_batches = positive(t.micro_batches, "micro_batches")?;
    let kind = match (cli, t.kind) {
        (Some(c), _) => c.to_string(),
        (None, Some(k)) => k,
        (None, None) => "sequential".to_string(),
    };
    let field = if cli.is_some() { "--schedule" } else { "kind" };
    let params = ScheduleParams {
        micro_batches,
        split_at,
        n_stages,
    };
    registry::lookup(&kind, &params, field)
}
