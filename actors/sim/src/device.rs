//! One compute device of the clock: its streams' kernels, run one at a time per stream in
//! submission order, and the kernels of different streams sharing the device at once.
//!
//! Sharing is processor sharing: with `n` kernels running, each advances at `s(n) / n` of the
//! device's rate, where `s(1) = 1` and `s(n ≥ 2) = speedup`. On a GPU each stream is its own
//! device, so at most one kernel runs and this is plain FIFO. The streams of a CPU process share
//! its cores: one kernel's parallel region leaves them partly idle (fork/join, imbalance over a
//! few rows), so two streams' kernels at once get more done per second than either alone —
//! `speedup`, which `troupe calibrate` fits from a one-stream and a two-stream run.

use std::collections::VecDeque;

use crate::clock::TaskId;

/// A kernel on the device: its task, stream, start time and work left (µs at rate 1).
#[derive(Clone, Copy, Debug)]
struct Running {
    task: TaskId,
    stream: u32,
    start: f64,
    left: f64,
}

/// A kernel that finished: its task, stream and span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Finished {
    pub task: TaskId,
    pub stream: u32,
    pub start: f64,
    pub end: f64,
}

/// Work left below this (µs) counts as done: the rounding of `left -= dt · rate`.
const DONE_US: f64 = 1e-7;

#[derive(Debug)]
pub struct Device {
    speedup: f64,
    running: Vec<Running>,
    /// Kernels waiting for their stream, per stream (grown on demand).
    waiting: Vec<VecDeque<(TaskId, f64)>>,
    busy: Vec<bool>,
    updated: f64,
    /// Bumped whenever the next finish time changes, so a stale check is recognised.
    pub version: u64,
}

impl Device {
    /// A device whose throughput with two or more kernels at once is `speedup` (≥ 1) times one
    /// kernel's alone.
    pub fn new(speedup: f64) -> Device {
        Device {
            speedup: speedup.max(1.0),
            running: Vec::new(),
            waiting: Vec::new(),
            busy: Vec::new(),
            updated: 0.0,
            version: 0,
        }
    }

    /// The rate each running kernel advances at.
    fn rate(&self) -> f64 {
        match self.running.len() {
            0 | 1 => 1.0,
            n => self.speedup / n as f64,
        }
    }

    fn advance(&mut self, now: f64) {
        let done = (now - self.updated) * self.rate();
        for r in &mut self.running {
            r.left -= done;
        }
        self.updated = now;
    }

    fn start(&mut self, now: f64, task: TaskId, stream: u32, us: f64) {
        self.busy[stream as usize] = true;
        self.running.push(Running {
            task,
            stream,
            start: now,
            left: us,
        });
    }

    /// Submits a kernel of `us` µs (at rate 1) on `stream` at `now`; returns when the device
    /// should next be checked (`None`: nothing changed that needs a check).
    pub fn submit(&mut self, now: f64, task: TaskId, stream: u32, us: f64) -> Option<f64> {
        let s = stream as usize;
        if self.busy.len() <= s {
            self.busy.resize(s + 1, false);
            self.waiting.resize_with(s + 1, VecDeque::new);
        }
        if self.busy[s] {
            self.waiting[s].push_back((task, us));
            return None;
        }
        self.advance(now);
        self.start(now, task, stream, us);
        self.next_check()
    }

    /// The time the first running kernel finishes, under a new version.
    fn next_check(&mut self) -> Option<f64> {
        self.version += 1;
        let rate = self.rate();
        self.running
            .iter()
            .map(|r| self.updated + r.left.max(0.0) / rate)
            .min_by(f64::total_cmp)
    }

    /// At `now` (a check this device asked for): the kernels that finished, with each one's
    /// stream's next kernel started, and when to check next.
    pub fn check(&mut self, now: f64) -> (Vec<Finished>, Option<f64>) {
        self.advance(now);
        let mut finished = Vec::new();
        self.running.retain(|r| {
            if r.left > DONE_US {
                return true;
            }
            finished.push(Finished {
                task: r.task,
                stream: r.stream,
                start: r.start,
                end: now,
            });
            false
        });
        for f in &finished {
            let s = f.stream as usize;
            self.busy[s] = false;
            if let Some((task, us)) = self.waiting[s].pop_front() {
                self.start(now, task, f.stream, us);
            }
        }
        (finished, self.next_check())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the device to idle: every kernel's (task, end).
    fn drain(d: &mut Device, mut next: Option<f64>) -> Vec<(TaskId, f64)> {
        let mut out = Vec::new();
        while let Some(t) = next {
            let (f, n) = d.check(t);
            out.extend(f.iter().map(|f| (f.task, f.end)));
            next = n;
        }
        out
    }

    #[test]
    fn one_stream_runs_its_kernels_in_order() {
        let mut d = Device::new(1.5);
        let n = d.submit(0.0, 0, 0, 10.0);
        assert_eq!(d.submit(2.0, 1, 0, 5.0), None);
        assert_eq!(drain(&mut d, n), vec![(0, 10.0), (1, 15.0)]);
    }

    #[test]
    fn two_streams_share_the_device_at_the_speedup() {
        // Alone 10 µs each; together at 1.5× the device rate, each at 0.75: both end at 40/3.
        let mut d = Device::new(1.5);
        d.submit(0.0, 0, 0, 10.0);
        let n = d.submit(0.0, 1, 1, 10.0);
        let out = drain(&mut d, n);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter().all(|&(_, t)| (t - 40.0 / 3.0).abs() < 1e-9),
            "{out:?}"
        );
        // Without a speedup the pair takes as long as one after the other.
        let mut d = Device::new(1.0);
        d.submit(0.0, 0, 0, 10.0);
        let n = d.submit(5.0, 1, 1, 10.0);
        // 5 µs alone, then 5 left at half rate: ends at 15; the other has 5 left, alone: 20.
        assert_eq!(drain(&mut d, n), vec![(0, 15.0), (1, 20.0)]);
    }
}
