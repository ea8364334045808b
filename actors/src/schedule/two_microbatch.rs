//! `two-microbatch`: the batch split in two by sequences (balanced by rows, or at `split_at`).
//! Both micro-batches are issued as independent op chains at once, so they interleave on the
//! streams: while A is in its FFN (route → dispatch → experts → combine, link transfers
//! included), B runs its attention, then they swap — and whenever one waits on the link or on
//! its experts, the other computes. No per-layer barrier: neither waits for the other to finish
//! a layer. With a single sequence it degrades to sequential.

use crate::error::Result;
use crate::schedule::{ForwardPass, Schedule, Sequential};

#[derive(Clone, Copy, Debug, Default)]
pub struct TwoMicroBatch {
    /// First micro-batch = sequences `0..split_at` (None: balance rows).
    pub split_at: Option<usize>,
}

impl TwoMicroBatch {
    fn split(&self, pass: &ForwardPass<'_>) -> usize {
        let n = pass.n_sequences();
        if let Some(k) = self.split_at {
            return k.clamp(1, n - 1);
        }
        let total: usize = (0..n).map(|i| pass.sequence_rows(i)).sum();
        let mut best = (usize::MAX, 1);
        let mut acc = 0;
        for k in 1..n {
            acc += pass.sequence_rows(k - 1);
            let diff = acc.abs_diff(total - acc);
            if diff < best.0 {
                best = (diff, k);
            }
        }
        best.1
    }
}

impl Schedule for TwoMicroBatch {
    fn name(&self) -> &str {
        "two-microbatch"
    }
    fn run(&self, pass: &mut ForwardPass<'_>) -> Result<()> {
        let n = pass.n_sequences();
        if n < 2 {
            return Sequential.run(pass);
        }
        let k = self.split(pass);
        let a = pass.micro_batch(0..k)?;
        let b = pass.micro_batch(k..n)?;
        let ops = pass.all_ops();
        pass.issue(a, &ops)?;
        pass.issue(b, &ops)?;
        pass.wait(a)?;
        pass.wait(b)
    }
}
