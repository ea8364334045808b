//! `two-microbatch`: the batch split in two by sequences (balanced by rows with
//! [`ForwardPass::split_balanced`], or at `split_at`).
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

impl Schedule for TwoMicroBatch {
    fn name(&self) -> &str {
        "two-microbatch"
    }
    fn run(&self, pass: &mut ForwardPass<'_>) -> Result<()> {
        let n = pass.n_sequences();
        if n < 2 {
            return Sequential.run(pass);
        }
        let (a, b) = match self.split_at {
            Some(k) => {
                let k = k.clamp(1, n - 1);
                (pass.micro_batch(0..k)?, pass.micro_batch(k..n)?)
            }
            None => match pass.split_balanced(2)?[..] {
                [a, b] => (a, b),
                _ => {
                    return Err(pass
                        .misuse("a balanced split in two did not give two micro-batches".into()))
                }
            },
        };
        let ops = pass.all_ops();
        pass.issue(a, &ops)?;
        pass.issue(b, &ops)?;
        pass.wait(a)?;
        pass.wait(b)
    }
}
