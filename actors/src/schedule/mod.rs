//! Schedules: the public [`Schedule`] trait and the three built-ins. A schedule decides how a
//! forward pass's batch is split into micro-batches (by whole sequences) and in which order their
//! ops — `Attention(l)` then `Ffn(l)` for every layer — are issued and awaited on the
//! [`ForwardPass`]. The pass enforces op order and coverage, so a custom schedule can change
//! overlap and timing but never the result: logits are bit-identical for every schedule.
//!
//! `[schedule]` in the graph file: `kind = "sequential" | "two-microbatch" | "pipeline"`,
//! `micro_batches = N` (pipeline; default: one per stage), `split_at = K` (two-microbatch: first
//! micro-batch = sequences `0..K`; default: balanced by rows). `--schedule` overrides `kind`.

mod pipeline;
mod sequential;
mod two_microbatch;

pub use crate::pass::{ForwardPass, MicroBatch};
pub use pipeline::Pipeline;
pub use sequential::Sequential;
pub use two_microbatch::TwoMicroBatch;

use std::sync::Arc;

use toml::{Table, Value};

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

/// Builds the schedule from `[schedule]` and the CLI's `--schedule` (which wins).
pub fn from_config(
    table: Option<&Table>,
    cli: Option<&str>,
    n_stages: usize,
) -> Result<Arc<dyn Schedule>> {
    let empty = Table::new();
    let t = table.unwrap_or(&empty);
    if let Some(k) = t
        .keys()
        .find(|k| !["kind", "micro_batches", "split_at"].contains(&k.as_str()))
    {
        return Err(ActorError::schedule(
            k.as_str(),
            "unknown field (known: kind, micro_batches, split_at)",
        ));
    }
    let pos = |k: &str| -> Result<Option<usize>> {
        match t.get(k) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i >= 1 => Ok(Some(*i as usize)),
            Some(v) => Err(ActorError::schedule(
                k,
                format!("expected a positive integer, found `{v}`"),
            )),
        }
    };
    let kind = match (cli, t.get("kind")) {
        (Some(c), _) => c.to_string(),
        (None, Some(Value::String(s))) => s.clone(),
        (None, None) => "sequential".to_string(),
        (None, Some(v)) => {
            return Err(ActorError::schedule(
                "kind",
                format!("expected a string, found `{v}`"),
            ))
        }
    };
    let (split_at, micro_batches) = (pos("split_at")?, pos("micro_batches")?);
    let field = if cli.is_some() { "--schedule" } else { "kind" };
    Ok(match kind.as_str() {
        "sequential" => Arc::new(Sequential),
        "two-microbatch" => Arc::new(TwoMicroBatch { split_at }),
        "pipeline" => Arc::new(Pipeline {
            micro_batches: micro_batches.unwrap_or(n_stages.max(2)),
        }),
        other => {
            return Err(ActorError::schedule(
                field,
                format!("unknown schedule `{other}` (known: sequential, two-microbatch, pipeline)"),
            ))
        }
    })
}
