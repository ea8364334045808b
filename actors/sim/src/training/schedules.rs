//! Per-device op lists of the pipeline-training schedules:
//! - **1F1B**: stage `s` runs `PP − 1 − s` warm-up forwards, then one forward and one full
//!   backward (`BW`) at a time, then the remaining backwards;
//! - **ZB1P** (zero-bubble ZB-H1, Qi et al. 2023): 1F1B's order of `F` and `B` with the backward
//!   split, stage `s` deferring each `W` by `s` micro-batches (the last stage most), the deferred
//!   ones run at the end (filling the tail where 1F1B's later stages idled).

use super::TrainOp;

/// 1F1B over `pp` stages and `m` micro-batches.
pub fn one_f_one_b(pp: usize, m: usize) -> Vec<Vec<TrainOp>> {
    (0..pp)
        .map(|s| {
            let warm = (pp - 1 - s).min(m);
            let mut ops: Vec<TrainOp> = (0..warm).map(|mb| TrainOp::F { dir: 0, mb }).collect();
            for i in 0..m - warm {
                ops.push(TrainOp::F {
                    dir: 0,
                    mb: warm + i,
                });
                ops.push(TrainOp::BW { dir: 0, mb: i });
            }
            ops.extend((m - warm..m).map(|mb| TrainOp::BW { dir: 0, mb }));
            ops
        })
        .collect()
}

/// ZB1P (ZB-H1) over `pp` stages and `m` micro-batches.
pub fn zb1p(pp: usize, m: usize) -> Vec<Vec<TrainOp>> {
    one_f_one_b(pp, m)
        .into_iter()
        .enumerate()
        .map(|(s, ops)| {
            let defer = s;
            let mut out = Vec::with_capacity(ops.len() + m);
            let mut w_next = 0;
            for op in ops {
                match op {
                    TrainOp::BW { dir, mb } => {
                        out.push(TrainOp::B { dir, mb });
                        if mb >= defer {
                            out.push(TrainOp::W { dir, mb: w_next });
                            w_next += 1;
                        }
                    }
                    other => out.push(other),
                }
            }
            out.extend((w_next..m).map(|mb| TrainOp::W { dir: 0, mb }));
            out
        })
        .collect()
}

/// DualPipe (DeepSeek-V3, arXiv 2412.19437 §3.2.1) over `pp` devices (even) and `m` micro-batches
/// (even, at least `2·pp`), half fed from each end. Device `r` holds stage `r` of direction 0 and
/// stage `pp − 1 − r` of direction 1; its "chunk 0" is the direction in which it is in the first
/// half of the pipeline. With `H = pp/2`, `h = min(r, pp − 1 − r)` and `N = m/2`, its eight
/// phases are: `2(H−h−1)` F0; `h+1` × (F0, F1); `H−h−1` × (B1, W1, F1); `N−pp+h+1` × (F0&B1,
/// F1&B0), overlapped (the middle devices run their first F0 and B1 apart); `H−h−1` × (B1,
/// F1&B0); `h+1` × (B1, B0), the backward split into B and a queued W from the middle of this
/// phase on (odd `h` before B1, even `h` before B0);
/// `H−h−1` × (W, B0 split); `h+1` × W — the queued W's running first in, first out.
pub fn dualpipe(pp: usize, m: usize) -> Option<Vec<Vec<TrainOp>>> {
    if pp < 2 || pp & 1 == 1 || m & 1 == 1 || m < 2 * pp {
        return None;
    }
    Some((0..pp).map(|r| dualpipe_device(pp, m / 2, r)).collect())
}

/// One device's op list under DualPipe (see [`dualpipe`]).
struct DualDevice {
    second_half: bool,
    f_next: [usize; 2],
    b_next: [usize; 2],
    w_queue: std::collections::VecDeque<(u8, usize)>,
    ops: Vec<TrainOp>,
}

impl DualDevice {
    fn dir(&self, chunk: u8) -> u8 {
        if self.second_half {
            1 - chunk
        } else {
            chunk
        }
    }
    fn next_f(&mut self, c: u8) -> (u8, usize) {
        let mb = self.f_next[c as usize];
        self.f_next[c as usize] += 1;
        (self.dir(c), mb)
    }
    fn next_b(&mut self, c: u8) -> (u8, usize) {
        let mb = self.b_next[c as usize];
        self.b_next[c as usize] += 1;
        (self.dir(c), mb)
    }
    fn f(&mut self, c: u8) {
        let (dir, mb) = self.next_f(c);
        self.ops.push(TrainOp::F { dir, mb });
    }
    /// A backward: full, or split with its W queued (`zb`).
    fn b(&mut self, c: u8, zb: bool) {
        let (dir, mb) = self.next_b(c);
        if zb {
            self.ops.push(TrainOp::B { dir, mb });
            self.w_queue.push_back((dir, mb));
        } else {
            self.ops.push(TrainOp::BW { dir, mb });
        }
    }
    fn w(&mut self) {
        if let Some((dir, mb)) = self.w_queue.pop_front() {
            self.ops.push(TrainOp::W { dir, mb });
        }
    }
    /// F of chunk `fc` overlapped with the full backward of chunk `1 − fc`.
    fn fb(&mut self, fc: u8) {
        let f = self.next_f(fc);
        let b = self.next_b(1 - fc);
        self.ops.push(TrainOp::FB { f, b });
    }
}

fn dualpipe_device(pp: usize, n: usize, r: usize) -> Vec<TrainOp> {
    let half = pp / 2;
    let h = r.min(pp - 1 - r);
    let mut d = DualDevice {
        second_half: r >= half,
        f_next: [0; 2],
        b_next: [0; 2],
        w_queue: Default::default(),
        ops: Vec::new(),
    };
    for _ in 0..2 * (half - h - 1) {
        d.f(0);
    }
    for _ in 0..h + 1 {
        d.f(0);
        d.f(1);
    }
    for _ in 0..half - h - 1 {
        d.b(1, true);
        d.w();
        d.f(1);
    }
    for i in 0..(n + h + 1).saturating_sub(pp) {
        if i == 0 && h == half - 1 {
            // The middle devices run this first pair apart (their B1 waits on their own F0's
            // neighbour), which shortens the bubble.
            d.f(0);
            d.b(1, false);
        } else {
            d.fb(0);
        }
        d.fb(1);
    }
    for _ in 0..half - h - 1 {
        d.b(1, false);
        d.fb(1);
    }
    let step6 = h + 1;
    let mut zb = false;
    for i in 0..step6 {
        if i == step6 / 2 && h & 1 == 1 {
            zb = true;
        }
        d.b(1, zb);
        if i == step6 / 2 && h & 1 == 0 {
            zb = true;
        }
        d.b(0, zb);
    }
    for _ in 0..half - h - 1 {
        d.w();
        d.b(0, true);
    }
    while !d.w_queue.is_empty() {
        d.w();
    }
    d.ops
}
