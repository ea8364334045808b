//! `ForwardPass`: one forward pass over a batch of sequence chunks, driven by a [`Schedule`]
//! from the calling (non-async) thread. It checks what a schedule does — micro-batches are
//! disjoint, whole sequences, ops issued in model order, every sequence through every layer — so
//! no schedule can change the bits, and hands each checked request to a [`PassDriver`], which
//! does the work: the actor runtime's driver (`actor_pass.rs`: embeds, sends `StageCall`s into
//! the stage channels, waits for replies) or a simulator's (the `troupe-sim` crate: books the
//! same ops on a discrete-event clock). A schedule sees only `ForwardPass`, so one written once
//! runs unchanged on both.

use std::ops::Range;

use crate::error::{ActorError, Result};
use crate::schedule::{Op, Schedule};

pub use crate::actor_pass::{run_pass, run_pass_by_kind, PassFailure, SeqInput};

/// Handle to a micro-batch of a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MicroBatch(usize);

impl MicroBatch {
    /// The micro-batch's index in the pass (0, 1, ... in the order they were formed).
    pub fn index(self) -> usize {
        self.0
    }
}

/// What executes a pass's micro-batches once [`ForwardPass`] has checked the schedule's
/// requests: micro-batch ids are 0, 1, ... in the order they are formed; `issue` only ever gets a
/// micro-batch's next ops in model order with nothing of it in flight.
pub trait PassDriver {
    /// Forms micro-batch `mb` of sequences `seqs` (disjoint from every other) and embeds it.
    fn micro_batch(&mut self, mb: usize, seqs: Range<usize>) -> Result<()>;
    /// Starts `ops` (non-empty) of micro-batch `mb` without waiting.
    fn issue(&mut self, mb: usize, ops: &[Op]) -> Result<()>;
    /// Waits until micro-batch `mb`'s ops in flight are done.
    fn wait(&mut self, mb: usize) -> Result<()>;
}

/// The shape of a pass a schedule may ask about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassShape {
    /// New rows (tokens) of each sequence.
    pub sequence_rows: Vec<usize>,
    pub n_layers: usize,
    /// Layers of each pipeline stage.
    pub stages: Vec<Range<usize>>,
}

struct MbProgress {
    first_sequence: usize,
    next_op: usize,
    /// Ops in flight (issued, not yet waited for).
    in_flight: usize,
}

/// A forward pass in progress (see the module doc).
pub struct ForwardPass<'a> {
    driver: &'a mut dyn PassDriver,
    schedule: String,
    shape: PassShape,
    owner: Vec<Option<usize>>,
    mbs: Vec<MbProgress>,
}

impl<'a> ForwardPass<'a> {
    pub(crate) fn misuse(&self, message: String) -> ActorError {
        ActorError::ScheduleMisuse {
            schedule: self.schedule.clone(),
            message,
        }
    }
    pub fn n_sequences(&self) -> usize {
        self.shape.sequence_rows.len()
    }
    /// New rows (tokens) of sequence `i` in this pass.
    pub fn sequence_rows(&self, i: usize) -> usize {
        self.shape.sequence_rows.get(i).copied().unwrap_or(0)
    }
    pub fn n_layers(&self) -> usize {
        self.shape.n_layers
    }
    pub fn n_stages(&self) -> usize {
        self.shape.stages.len()
    }
    /// The ops of stage `s`'s layers, in order.
    pub fn stage_ops(&self, s: usize) -> Vec<Op> {
        self.shape
            .stages
            .get(s)
            .cloned()
            .unwrap_or(0..0)
            .flat_map(Op::layer_ops)
            .collect()
    }
    /// Every op of the model, in order.
    pub fn all_ops(&self) -> Vec<Op> {
        (0..self.n_layers()).flat_map(Op::layer_ops).collect()
    }

    /// Sequences `0..n_sequences()` cut into `n` contiguous non-empty ranges (fewer when the
    /// pass has fewer sequences) whose new rows are balanced: the largest range's rows are as
    /// few as any cut allows; among such cuts, each cut is as early as it can be.
    pub fn balanced_ranges(&self, n: usize) -> Vec<Range<usize>> {
        balanced_ranges(&self.shape.sequence_rows, n)
    }

    /// Forms `n` micro-batches (fewer when the pass has fewer sequences) balanced by rows
    /// ([`ForwardPass::balanced_ranges`]), in sequence order.
    pub fn split_balanced(&mut self, n: usize) -> Result<Vec<MicroBatch>> {
        self.balanced_ranges(n)
            .into_iter()
            .map(|r| self.micro_batch(r))
            .collect()
    }

    /// Forms a micro-batch of sequences `seqs` and embeds its tokens.
    pub fn micro_batch(&mut self, seqs: Range<usize>) -> Result<MicroBatch> {
        if seqs.is_empty() || seqs.end > self.n_sequences() {
            return Err(self.misuse(format!(
                "micro-batch of sequences {seqs:?} (the pass has {})",
                self.n_sequences()
            )));
        }
        if let Some(i) = seqs.clone().find(|&i| self.owner[i].is_some()) {
            return Err(self.misuse(format!("sequence {i} is already in a micro-batch")));
        }
        let id = self.mbs.len();
        self.driver.micro_batch(id, seqs.clone())?;
        for i in seqs.clone() {
            self.owner[i] = Some(id);
        }
        self.mbs.push(MbProgress {
            first_sequence: seqs.start,
            next_op: 0,
            in_flight: 0,
        });
        Ok(MicroBatch(id))
    }

    /// Starts `ops` (the micro-batch's next ops, in model order) without waiting.
    pub fn issue(&mut self, mb: MicroBatch, ops: &[Op]) -> Result<()> {
        let all = self.all_ops();
        let st = self
            .mbs
            .get(mb.0)
            .ok_or_else(|| self.misuse(format!("no micro-batch {}", mb.0)))?;
        if st.in_flight > 0 {
            return Err(self.misuse(format!(
                "micro-batch {} already has ops in flight (wait for it first)",
                mb.0
            )));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let expect = all.get(st.next_op..st.next_op + ops.len());
        if expect != Some(ops) {
            return Err(self.misuse(format!(
                "micro-batch {} issued {ops:?} but its next ops are {:?}",
                mb.0,
                all.get(st.next_op..(st.next_op + ops.len()).min(all.len()))
            )));
        }
        self.driver.issue(mb.0, ops)?;
        self.mbs[mb.0].in_flight = ops.len();
        Ok(())
    }

    /// Waits for the micro-batch's ops in flight (no-op when none).
    pub fn wait(&mut self, mb: MicroBatch) -> Result<()> {
        let Some(st) = self.mbs.get(mb.0) else {
            return Err(self.misuse(format!("no micro-batch {}", mb.0)));
        };
        let n = st.in_flight;
        if n == 0 {
            return Ok(());
        }
        self.mbs[mb.0].in_flight = 0;
        self.driver.wait(mb.0)?;
        self.mbs[mb.0].next_op += n;
        Ok(())
    }
}

/// Runs `schedule` over a pass of `shape` executed by `driver`, then waits for anything still in
/// flight (never leaving work behind, even when the schedule failed) and checks that every
/// sequence went through every op. Returns the micro-batch ids in sequence order.
pub fn drive(
    schedule: &dyn Schedule,
    driver: &mut dyn PassDriver,
    shape: PassShape,
) -> Result<Vec<usize>> {
    let n = shape.sequence_rows.len();
    let mut pass = ForwardPass {
        driver,
        schedule: schedule.name().to_string(),
        shape,
        owner: vec![None; n],
        mbs: Vec::new(),
    };
    let r = schedule.run(&mut pass);
    for i in 0..pass.mbs.len() {
        let _ = pass.wait(MicroBatch(i));
    }
    r?;
    let total = pass.all_ops().len();
    if let Some(i) = pass.owner.iter().position(Option::is_none) {
        return Err(pass.misuse(format!("sequence {i} was never put in a micro-batch")));
    }
    if let Some(m) = pass.mbs.iter().position(|m| m.next_op != total) {
        return Err(pass.misuse(format!(
            "micro-batch {m} stopped after {} of {total} ops",
            pass.mbs[m].next_op
        )));
    }
    let mut order: Vec<usize> = (0..pass.mbs.len()).collect();
    order.sort_by_key(|&m| pass.mbs[m].first_sequence);
    Ok(order)
}

/// `rows` (per sequence) cut into `n` contiguous non-empty ranges (`n` clamped to
/// `1..=rows.len()`; none for no rows) minimising the largest range's sum; ties go to the earliest
/// cut, scanning from the last range back.
pub fn balanced_ranges(rows: &[usize], n: usize) -> Vec<Range<usize>> {
    let m = rows.len();
    if m == 0 {
        return Vec::new();
    }
    let k = n.clamp(1, m);
    let mut prefix = vec![0usize; m + 1];
    for (i, r) in rows.iter().enumerate() {
        prefix[i + 1] = prefix[i] + r;
    }
    // best[p][j]: the smallest largest sum cutting the first j sequences into p ranges.
    let mut best = vec![vec![usize::MAX; m + 1]; k + 1];
    best[0][0] = 0;
    // Over the valid cuts c in p−1..j, best[p−1][c] never decreases with c and the last range's
    // sum prefix[j] − prefix[c] never increases, so the smallest max of the two is at the first
    // c where the first reaches the second, or just before it: a binary search, O(k·m·log m)
    // (the scan of every c was O(k·m²), minutes for the simulator's thousands of sequences).
    for p in 1..=k {
        for j in p..=m {
            let (mut lo, mut hi) = (p - 1, j);
            while lo < hi {
                let c = lo + (hi - lo) / 2;
                if best[p - 1][c] >= prefix[j] - prefix[c] {
                    hi = c;
                } else {
                    lo = c + 1;
                }
            }
            let cost = |c: usize| best[p - 1][c].max(prefix[j] - prefix[c]);
            let at = (lo < j).then(|| cost(lo));
            let before = (lo > p - 1).then(|| cost(lo - 1));
            best[p][j] = at.into_iter().chain(before).min().unwrap_or(usize::MAX);
        }
    }
    let mut out = Vec::with_capacity(k);
    let mut end = m;
    for p in (1..=k).rev() {
        let target = best[p][end];
        let start = (p - 1..end)
            .find(|&c| {
                best[p - 1][c] != usize::MAX
                    && best[p - 1][c].max(prefix[end] - prefix[c]) == target
            })
            .unwrap_or(p - 1);
        out.push(start..end);
        end = start;
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::balanced_ranges;

    #[test]
    fn balanced_ranges_minimise_the_largest_part() {
        assert!(balanced_ranges(&[], 3).is_empty());
        assert_eq!(balanced_ranges(&[5], 3), vec![0..1]);
        assert_eq!(balanced_ranges(&[1, 1, 1, 1], 2), vec![0..2, 2..4]);
        // Two-microbatch's old rule: the first cut with the smallest |a − b|.
        assert_eq!(balanced_ranges(&[1, 2, 1], 2), vec![0..1, 1..3]);
        assert_eq!(balanced_ranges(&[8, 1, 1, 1, 1], 2), vec![0..1, 1..5]);
        assert_eq!(
            balanced_ranges(&[3, 3, 3, 3, 3, 3], 3),
            vec![0..2, 2..4, 4..6]
        );
        assert_eq!(balanced_ranges(&[1, 1, 1], 5), vec![0..1, 1..2, 2..3]);
        let parts = balanced_ranges(&[7, 1, 2, 6, 3, 3, 1], 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.first().map(|r| r.start), Some(0));
        assert_eq!(parts.last().map(|r| r.end), Some(7));
        let sums: Vec<usize> = parts
            .iter()
            .map(|r| [7, 1, 2, 6, 3, 3, 1][r.clone()].iter().sum())
            .collect();
        assert_eq!(sums.iter().max(), Some(&8), "{parts:?}");
    }

    /// The old O(k·m²) scan of every cut, as the reference for the binary search.
    fn largest_part_by_scan(rows: &[usize], n: usize) -> usize {
        let m = rows.len();
        let k = n.clamp(1, m);
        let mut prefix = vec![0usize; m + 1];
        for (i, r) in rows.iter().enumerate() {
            prefix[i + 1] = prefix[i] + r;
        }
        let mut best = vec![vec![usize::MAX; m + 1]; k + 1];
        best[0][0] = 0;
        for p in 1..=k {
            for j in p..=m {
                best[p][j] = (p - 1..j)
                    .filter(|&c| best[p - 1][c] != usize::MAX)
                    .map(|c| best[p - 1][c].max(prefix[j] - prefix[c]))
                    .min()
                    .unwrap_or(usize::MAX);
            }
        }
        best[k][m]
    }

    #[test]
    fn balanced_ranges_match_the_exhaustive_scan() {
        let mut x = 12345u64;
        for case in 0..300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let m = 1 + (x >> 33) as usize % 24;
            let rows: Vec<usize> = (0..m)
                .map(|i| {
                    let v = x.rotate_left(i as u32 * 7) >> 40;
                    if case % 3 == 0 {
                        (v % 3) as usize
                    } else {
                        1 + (v % 50) as usize
                    }
                })
                .collect();
            let n = 1 + case % 5;
            let parts = balanced_ranges(&rows, n);
            let largest = parts
                .iter()
                .map(|r| rows[r.clone()].iter().sum::<usize>())
                .max();
            assert_eq!(
                largest,
                Some(largest_part_by_scan(&rows, n)),
                "{rows:?} into {n}: {parts:?}"
            );
            assert_eq!(parts.first().map(|r| r.start), Some(0));
            assert_eq!(parts.last().map(|r| r.end), Some(m));
            assert!(parts
                .windows(2)
                .all(|w| w[0].end == w[1].start && !w[1].is_empty()));
        }
    }
}
