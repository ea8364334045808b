//! What a run's spans add up to, with `troupe trace-stats`' definitions (`trace_stats.rs`):
//! per stream, busy time (its kernels) over the window (utilisation); the link's busy time
//! (union of transfers in flight) and its exposed part (no kernel running anywhere), hidden =
//! 1 − exposed / busy; the **bubble fraction** is the idle share of the devices that ran work:
//! 1 − Σ device busy / (devices × window) (a GPU is a device; a CPU process's streams share one).

use crate::clock::Span;

/// Totals over the recorded steps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub steps: usize,
    pub rows: usize,
    pub window_us: f64,
    pub stream_busy_us: Vec<f64>,
    pub stream_kernels: Vec<usize>,
    pub link_busy_us: f64,
    pub link_exposed_us: f64,
    pub transfers: usize,
    pub link_bytes: f64,
    /// Step times (µs), in order.
    pub step_us: Vec<f64>,
}

/// Sorted, merged intervals.
fn union(mut v: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Length of `a` (merged) not covered by `b` (merged).
fn uncovered(a: &[(f64, f64)], b: &[(f64, f64)]) -> f64 {
    let mut total = 0.0;
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > cur {
                        total += bs - cur;
                    }
                    cur = cur.max(be);
                    k += 1;
                }
                _ => {
                    total += e - cur;
                    cur = e;
                }
            }
        }
    }
    total
}

impl Stats {
    pub fn new(streams: usize) -> Stats {
        Stats {
            stream_busy_us: vec![0.0; streams],
            stream_kernels: vec![0; streams],
            ..Stats::default()
        }
    }

    /// Adds one step's spans (window `start..end`).
    pub fn record(&mut self, spans: &[Span], start: f64, end: f64, rows: usize) {
        self.steps += 1;
        self.rows += rows;
        self.window_us += end - start;
        self.step_us.push(end - start);
        let mut kernels = Vec::new();
        let mut transfers = Vec::new();
        for s in spans {
            if s.transfer {
                transfers.push((s.start, s.end));
                self.transfers += 1;
                self.link_bytes += s.bytes;
            } else {
                kernels.push((s.start, s.end));
                if let Some(b) = self.stream_busy_us.get_mut(s.track as usize) {
                    *b += s.end - s.start;
                    self.stream_kernels[s.track as usize] += 1;
                }
            }
        }
        if !transfers.is_empty() {
            let t = union(transfers);
            self.link_busy_us += t.iter().map(|(s, e)| e - s).sum::<f64>();
            self.link_exposed_us += uncovered(&t, &union(kernels));
        }
    }

    pub fn utilization(&self, stream: usize) -> f64 {
        match self.window_us > 0.0 {
            true => (self.stream_busy_us[stream] / self.window_us).min(1.0),
            false => 0.0,
        }
    }

    /// Idle share of the devices that ran work (`stream_device[s]`: stream `s`'s device; the
    /// streams of one CPU process share one).
    pub fn bubble_fraction(&self, stream_device: &[usize]) -> f64 {
        let mut busy: std::collections::BTreeMap<usize, f64> = Default::default();
        for (s, (&b, &k)) in self
            .stream_busy_us
            .iter()
            .zip(&self.stream_kernels)
            .enumerate()
        {
            if k > 0 {
                *busy
                    .entry(stream_device.get(s).copied().unwrap_or(s))
                    .or_default() += b;
            }
        }
        if busy.is_empty() || self.window_us <= 0.0 {
            return 0.0;
        }
        let used: f64 = busy.values().map(|b| b.min(self.window_us)).sum();
        (1.0 - used / (busy.len() as f64 * self.window_us)).max(0.0)
    }

    /// 1 − exposed / busy (1 when nothing crossed a link).
    pub fn hidden_fraction(&self) -> f64 {
        match self.link_busy_us > 0.0 {
            true => 1.0 - self.link_exposed_us / self.link_busy_us,
            false => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_link_time_is_what_no_kernel_covers() {
        let a = union(vec![(0.0, 10.0), (5.0, 12.0), (20.0, 30.0)]);
        assert_eq!(a, vec![(0.0, 12.0), (20.0, 30.0)]);
        let b = union(vec![(2.0, 4.0), (11.0, 25.0)]);
        // 0-2, 4-11 of the first; 25-30 of the second.
        assert_eq!(uncovered(&a, &b), 2.0 + 7.0 + 5.0);
        assert_eq!(uncovered(&a, &[]), 22.0);
    }
}
