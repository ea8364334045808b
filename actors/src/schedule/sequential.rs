//! `sequential`: the whole batch as one micro-batch, every op in order — the actor runtime's
//! equivalent of the reference executor (stages still hand over through their actors).

use crate::error::Result;
use crate::schedule::{ForwardPass, Schedule};

#[derive(Clone, Copy, Debug, Default)]
pub struct Sequential;

impl Schedule for Sequential {
    fn name(&self) -> &str {
        "sequential"
    }
    fn run(&self, pass: &mut ForwardPass<'_>) -> Result<()> {
        let mb = pass.micro_batch(0..pass.n_sequences())?;
        let ops = pass.all_ops();
        pass.issue(mb, &ops)?;
        pass.wait(mb)
    }
}
