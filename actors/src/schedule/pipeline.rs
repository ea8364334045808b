//! `pipeline`: micro-batches flow through the pipeline stages as a wavefront — at tick `t`,
//! stage `s` runs micro-batch `t - s` — so different stages work on different micro-batches at
//! once. Sequences are split into `micro_batches` contiguous groups (fewer if there are fewer
//! sequences).

use crate::error::Result;
use crate::schedule::{ForwardPass, Schedule};

#[derive(Clone, Copy, Debug)]
pub struct Pipeline {
    pub micro_batches: usize,
}

impl Schedule for Pipeline {
    fn name(&self) -> &str {
        "pipeline"
    }
    fn run(&self, pass: &mut ForwardPass<'_>) -> Result<()> {
        let n = pass.n_sequences();
        let m = self.micro_batches.clamp(1, n.max(1));
        let mut mbs = Vec::with_capacity(m);
        for i in 0..m {
            mbs.push(pass.micro_batch((i * n / m)..((i + 1) * n / m))?);
        }
        let stages = pass.n_stages();
        for t in 0..(m + stages - 1) {
            let mut running = Vec::new();
            for s in 0..stages {
                if t >= s && t - s < m {
                    let mb = mbs[t - s];
                    let ops = pass.stage_ops(s);
                    pass.issue(mb, &ops)?;
                    running.push(mb);
                }
            }
            for mb in running {
                pass.wait(mb)?;
            }
        }
        Ok(())
    }
}
