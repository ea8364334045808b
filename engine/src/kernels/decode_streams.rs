//! How the decode GEMVs (`gemv_bf16`, `dot_i8`, `dot_pairs::gemv_pairs`, `fp8`) walk a column
//! chunk: as [`STREAMS`] equal runs read side by side, a row of each run at a time ([`runs`]).
//! A weight's rows are contiguous, so each run is one long sequential stream, and the memory
//! sees several per thread rather than one. Which rows go together never changes a column's
//! value: each column is its own dot. The heads-in-lanes decode attention
//! (`attention_lanes_chunk`) walks a chunk's cached keys the same way in its score pass (each
//! key's score is its own).

use std::ops::Range;

/// Runs a decode GEMV reads at once. Measured on a Sapphire Rapids-class Xeon (2 threads,
/// ds-v3-mini, `--compute bf16`): a read loop got 27–31 GB/s from one stream per thread and
/// 42–44 from 4–8; decode (tg64) went from 88–89 tok/s with four neighbouring rows at a time to
/// 97–103 with four runs, each row's successor requested a row ahead (without the requests:
/// 86–88; 2 runs: 95; 8 runs: 97–103).
pub const STREAMS: usize = 4;

/// Columns `c0..c1` as runs: for each `t` in `0..(c1 - c0) / STREAMS`, the row `t` of every run
/// (`c0 + s * run + t` for run `s`, ascending `t`), then the columns left over after the runs.
pub(crate) fn runs(
    c0: usize,
    c1: usize,
) -> (
    impl ExactSizeIterator<Item = [usize; STREAMS]>,
    Range<usize>,
) {
    let run = (c1 - c0) / STREAMS;
    let groups = (0..run).map(move |t| std::array::from_fn(|s| c0 + s * run + t));
    (groups, c0 + STREAMS * run..c1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column once: the runs' rows, then the rest, nothing outside `c0..c1`.
    #[test]
    fn runs_cover_every_column_once() {
        for (c0, c1) in [(0, 0), (0, 3), (5, 9), (2, 23), (0, 64)] {
            let (groups, rest) = runs(c0, c1);
            let mut seen: Vec<usize> = groups.flatten().chain(rest).collect();
            seen.sort_unstable();
            assert_eq!(seen, (c0..c1).collect::<Vec<_>>(), "{c0}..{c1}");
        }
        // Each run is contiguous: run `s` holds `c0 + s * run ..`, one row per group.
        let (groups, rest) = runs(10, 31);
        let groups: Vec<_> = groups.collect();
        assert_eq!(groups[0], [10, 15, 20, 25]);
        assert_eq!(groups[4], [14, 19, 24, 29]);
        assert_eq!(rest, 30..31);
    }
}
