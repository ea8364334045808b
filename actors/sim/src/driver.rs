//! The simulator's [`PassDriver`]: the requests a [`Schedule`](troupe_actors::Schedule) makes
//! of a [`ForwardPass`](troupe_actors::ForwardPass), after the pass's own checks, become tasks
//! on the [`Clock`]. The calling thread is simulated too: it has a time (`host`), each request
//! costs `issue_us`, `micro_batch` (embedding) and `wait` block it until their work is done, and
//! `issue` starts work at its current time — so the schedule's order of issues and waits shapes
//! the simulated overlap exactly as it shapes the real one. Each op expands into the kernels and
//! transfers the runtime's actors run (`ops.rs`).

use std::collections::VecDeque;
use std::ops::Range;

use troupe_actors::pass::PassDriver;
use troupe_actors::{ActorError, Op};

use crate::clock::{Clock, Step};
use crate::cost::ModelCost;
use crate::hardware::Hardware;
use crate::layout::Layout;

/// One sequence's part of a simulated pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqStep {
    /// New rows (tokens) this pass.
    pub rows: usize,
    /// Positions already cached.
    pub start: usize,
}

/// A share of a micro-batch's sequences: what one attention lane (a stage stream, or one GPU
/// of data-parallel attention) works on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub rows: f64,
    /// Σ over new rows of the positions each attends to.
    pub ctx_rows: f64,
    /// Positions of the sequences' caches (each read once per layer).
    pub ctx_positions: f64,
}

impl Load {
    pub fn add(&mut self, s: SeqStep) {
        let (n, p) = (s.rows as f64, s.start as f64);
        self.rows += n;
        self.ctx_rows += n * p + n * (n + 1.0) / 2.0;
        self.ctx_positions += p + n;
    }
}

pub(crate) struct MbSim {
    /// Per attention lane (one when staged): its stream (`None`: the op's stage stream) and load.
    pub lanes: Vec<(Option<usize>, Load)>,
    pub ops: VecDeque<Op>,
    pub done_at: Option<f64>,
}

/// What the driver owns across passes.
pub struct SimCore {
    pub(crate) clock: Clock,
    pub(crate) cost: ModelCost,
    pub(crate) layout: Layout,
    pub(crate) hw: Hardware,
    pub(crate) peak_flops: f64,
    pub(crate) host: f64,
    pub(crate) seqs: Vec<SeqStep>,
    pub(crate) mbs: Vec<MbSim>,
    /// Per layer, each routed expert's relative load (empty: uniform routing).
    pub(crate) expert_load: Vec<Vec<f64>>,
}

fn stalled(what: &str) -> ActorError {
    ActorError::Closed(format!("simulation stalled: {what}"))
}

impl SimCore {
    /// Handles every event up to `t`.
    pub(crate) fn advance_to(&mut self, t: f64) {
        while self.clock.next_time().is_some_and(|n| n <= t) {
            self.handle_step();
        }
    }

    fn handle_step(&mut self) -> bool {
        match self.clock.step() {
            Step::Idle => false,
            Step::Continue => true,
            Step::Resume(mb, t) => {
                self.next_op(mb, t);
                true
            }
        }
    }

    /// Runs until micro-batch `mb` is done; returns when.
    pub(crate) fn run_until_done(&mut self, mb: usize) -> Result<f64, ActorError> {
        loop {
            if let Some(t) = self.mbs[mb].done_at {
                return Ok(t);
            }
            if !self.handle_step() {
                return Err(stalled(&format!("micro-batch {mb} never finished")));
            }
        }
    }

    /// Runs every pending event.
    pub(crate) fn drain(&mut self) {
        while self.handle_step() {}
    }

    /// Starts micro-batch `mb`'s next op at `t`, or marks it done.
    fn next_op(&mut self, mb: usize, t: f64) {
        match self.mbs[mb].ops.pop_front() {
            None => self.mbs[mb].done_at = Some(t),
            Some(op) => self.start_op(mb, op, t),
        }
    }

    fn lanes_of(&self, seqs: Range<usize>) -> Vec<(Option<usize>, Load)> {
        let lanes = &self.layout.attention_lanes;
        if lanes.is_empty() {
            let mut load = Load::default();
            for s in &self.seqs[seqs] {
                load.add(*s);
            }
            return vec![(None, load)];
        }
        let mut out: Vec<(Option<usize>, Load)> =
            lanes.iter().map(|&s| (Some(s), Load::default())).collect();
        for (k, i) in seqs.enumerate() {
            out[k % lanes.len()].1.add(self.seqs[i]);
        }
        out.retain(|(_, l)| l.rows > 0.0);
        out
    }
}

/// [`PassDriver`] over a [`SimCore`].
pub struct SimDriver<'a> {
    pub core: &'a mut SimCore,
}

impl PassDriver for SimDriver<'_> {
    fn micro_batch(&mut self, mb: usize, seqs: Range<usize>) -> troupe_actors::Result<()> {
        let c = &mut *self.core;
        c.host += c.hw.runtime.issue_us;
        c.advance_to(c.host);
        let lanes = c.lanes_of(seqs);
        c.mbs.push(MbSim {
            lanes,
            ops: VecDeque::new(),
            done_at: None,
        });
        debug_assert_eq!(c.mbs.len(), mb + 1);
        let at = c.host;
        c.start_embed(mb, at);
        c.host = c.run_until_done(mb)?;
        Ok(())
    }

    fn issue(&mut self, mb: usize, ops: &[Op]) -> troupe_actors::Result<()> {
        let c = &mut *self.core;
        c.host += c.hw.runtime.issue_us;
        c.advance_to(c.host);
        let m = c
            .mbs
            .get_mut(mb)
            .ok_or_else(|| stalled("unknown micro-batch"))?;
        m.ops = ops.iter().copied().collect();
        m.done_at = None;
        let at = c.host;
        c.next_op(mb, at);
        Ok(())
    }

    fn wait(&mut self, mb: usize) -> troupe_actors::Result<()> {
        let c = &mut *self.core;
        let done = c.run_until_done(mb)?;
        c.host = c.host.max(done) + c.hw.runtime.issue_us;
        Ok(())
    }
}
