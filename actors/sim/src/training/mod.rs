//! Pipeline-training schedules for the DualPipe comparison, with simulator-only ops: forward
//! `F`, backward-for-input `B`, backward-for-weights `W` (a full backward is `B` then `W`), and
//! `F&B`, a forward and a backward of two micro-batches run overlapped (DualPipe). A schedule
//! gives each pipeline device its ops in order ([`schedules`]); [`run`] executes the lists on a
//! clock: an op starts when its device is free and its inputs are done — `F` of a micro-batch
//! after its `F` on the previous stage, `B` after its `B` on the next stage (the last stage: after
//! its own `F`), `W` after its `B`. The runtime's schedules stay forward-only.
//!
//! The **bubble** of a device is the makespan less its busy time; DeepSeek's DualPipe paper
//! (arXiv 2412.19437, Table 2) gives it per schedule in closed form, which the tests check. The
//! same table gives each schedule's **activation memory**, the most micro-batches whose
//! activations a device keeps at once: a micro-batch's activations on a stage live from the start
//! of its `F` to the end of its `W` (the weight gradient is the last op that reads them).

pub mod schedules;

use crate::error::{Result, SimError};

/// Durations of the ops on one stage (µs, or any unit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpTimes {
    pub f: f64,
    /// Backward for the input only.
    pub b: f64,
    pub w: f64,
    /// A forward and a backward chunk overlapped (DualPipe's F&B).
    pub fb: f64,
}

/// One op: `dir` is the pipeline direction (DualPipe feeds micro-batches from both ends; 0 for
/// single-direction schedules), `mb` the micro-batch within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrainOp {
    F {
        dir: u8,
        mb: usize,
    },
    B {
        dir: u8,
        mb: usize,
    },
    W {
        dir: u8,
        mb: usize,
    },
    /// B then W back to back (1F1B's full backward).
    BW {
        dir: u8,
        mb: usize,
    },
    /// F of one micro-batch overlapped with the full backward (B and W) of another.
    FB {
        f: (u8, usize),
        b: (u8, usize),
    },
}

/// What a run gives.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainRun {
    pub makespan: f64,
    /// Per device: makespan − busy time.
    pub bubble: Vec<f64>,
    /// Per device: the most micro-batch activations held at once (stage-sized chunks).
    pub peak_activations: Vec<usize>,
}

/// Stage index of device `d` for direction `dir` with `pp` devices.
fn stage(dir: u8, d: usize, pp: usize) -> usize {
    match dir {
        0 => d,
        _ => pp - 1 - d,
    }
}

/// Executes per-device op lists (`lists[d]` in order); `micro_batches[dir]` per direction.
pub fn run(lists: &[Vec<TrainOp>], t: OpTimes, micro_batches: [usize; 2]) -> Result<TrainRun> {
    let pp = lists.len();
    // done[dir][kind: F=0,B=1,W=2][stage][mb]
    let mut done: Vec<Vec<Vec<Vec<Option<f64>>>>> = (0..2)
        .map(|dir| vec![vec![vec![None; micro_batches[dir]]; pp]; 3])
        .collect();
    let mut next = vec![0usize; pp];
    let mut free = vec![0.0f64; pp];
    let mut busy = vec![0.0f64; pp];
    // Per device: (time, +1 when an F starts / −1 when a W ends).
    let mut held: Vec<Vec<(f64, i32)>> = vec![Vec::new(); pp];
    let get = |done: &Vec<Vec<Vec<Vec<Option<f64>>>>>, dir: u8, k: usize, s: usize, mb: usize| {
        done.get(dir as usize)
            .and_then(|x| x.get(k))
            .and_then(|x| x.get(s))
            .and_then(|x| x.get(mb))
            .copied()
            .flatten()
    };
    // When the inputs of F / B of (dir, mb) on stage s are done (None: not yet).
    let f_ready = |done: &_, dir: u8, s: usize, mb: usize| match s {
        0 => Some(0.0),
        _ => get(done, dir, 0, s - 1, mb),
    };
    let b_ready = |done: &_, dir: u8, s: usize, mb: usize| {
        let own_f = get(done, dir, 0, s, mb)?;
        match s + 1 == pp {
            true => Some(own_f),
            false => get(done, dir, 1, s + 1, mb).map(|b| b.max(own_f)),
        }
    };
    let total: usize = lists.iter().map(Vec::len).sum();
    let mut ran = 0;
    while ran < total {
        let mut progressed = false;
        for d in 0..pp {
            while let Some(&op) = lists[d].get(next[d]) {
                let ready = match op {
                    TrainOp::F { dir, mb } => f_ready(&done, dir, stage(dir, d, pp), mb),
                    TrainOp::B { dir, mb } | TrainOp::BW { dir, mb } => {
                        b_ready(&done, dir, stage(dir, d, pp), mb)
                    }
                    TrainOp::W { dir, mb } => get(&done, dir, 1, stage(dir, d, pp), mb),
                    TrainOp::FB { f, b } => {
                        match (
                            f_ready(&done, f.0, stage(f.0, d, pp), f.1),
                            b_ready(&done, b.0, stage(b.0, d, pp), b.1),
                        ) {
                            (Some(x), Some(y)) => Some(x.max(y)),
                            _ => None,
                        }
                    }
                };
                let Some(ready) = ready else { break };
                let start = free[d].max(ready);
                let (dur, marks): (f64, Vec<(u8, usize, usize)>) = match op {
                    TrainOp::F { dir, mb } => (t.f, vec![(dir, 0, mb)]),
                    TrainOp::B { dir, mb } => (t.b, vec![(dir, 1, mb)]),
                    TrainOp::W { dir, mb } => (t.w, vec![(dir, 2, mb)]),
                    TrainOp::BW { dir, mb } => (t.b + t.w, vec![(dir, 1, mb), (dir, 2, mb)]),
                    TrainOp::FB { f, b } => {
                        (t.fb, vec![(f.0, 0, f.1), (b.0, 1, b.1), (b.0, 2, b.1)])
                    }
                };
                let end = start + dur;
                for (dir, k, mb) in marks {
                    let s = stage(dir, d, pp);
                    let slot = done
                        .get_mut(dir as usize)
                        .and_then(|x| x.get_mut(k))
                        .and_then(|x| x.get_mut(s))
                        .and_then(|x| x.get_mut(mb))
                        .ok_or_else(|| {
                            SimError::parameter(
                                "schedule",
                                format!("device {d}: {op:?} is out of range"),
                            )
                        })?;
                    if slot.is_some() {
                        return Err(SimError::parameter(
                            "schedule",
                            format!("device {d}: {op:?} runs twice"),
                        ));
                    }
                    *slot = Some(end);
                    match k {
                        0 => held[d].push((start, 1)),
                        2 => held[d].push((end, -1)),
                        _ => {}
                    }
                }
                free[d] = end;
                busy[d] += dur;
                next[d] += 1;
                ran += 1;
                progressed = true;
            }
        }
        if !progressed {
            return Err(SimError::parameter(
                "schedule",
                format!("deadlock: devices wait at ops {next:?}"),
            ));
        }
    }
    let makespan = free.iter().copied().fold(0.0, f64::max);
    Ok(TrainRun {
        makespan,
        bubble: busy.iter().map(|b| makespan - b).collect(),
        peak_activations: held.into_iter().map(peak).collect(),
    })
}

/// The highest running sum of `events` in time order (a release before an acquire at the same
/// instant: an op's activations can be freed as the next op starts).
fn peak(mut events: Vec<(f64, i32)>) -> usize {
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut now = 0i64;
    let mut most = 0i64;
    for (_, d) in events {
        now += d as i64;
        most = most.max(now);
    }
    most as usize
}

#[cfg(test)]
mod tests;
