//! The discrete-event core: tasks (a kernel on a stream, a transfer on a wire, or a pure delay)
//! linked by what each triggers when it completes, and an event queue in time order. A kernel
//! submitted at `t` starts when its stream is free — streams run kernels one at a time in
//! submission order, as `actors/src/stream.rs` does — and shares its device with the other
//! streams' running kernels (`device.rs`: processor sharing); a transfer occupies its wire for
//! `bytes / bandwidth` after the wire frees and arrives `latency` later, as `actors/src/link.rs`
//! books it. Submissions happen at their ready time in event order, so FIFO order is kept.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::device::Device;

/// Index of a task in the clock's arena.
pub type TaskId = u32;

/// What a finished task (or a join whose last input arrived) triggers.
#[derive(Clone, Debug)]
pub enum Then {
    Nothing,
    /// Submit these tasks now.
    Tasks(Vec<TaskId>),
    /// Count down a join.
    Join(u32),
    /// The micro-batch's current op is done: the driver expands its next op.
    Resume(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    Kernel {
        stream: u32,
        device: u32,
        us: f64,
    },
    Transfer {
        wire: u32,
        wire_us: f64,
        latency_us: f64,
        bytes: f64,
    },
    Delay {
        us: f64,
    },
}

/// Labels for the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    pub name: &'static str,
    pub layer: Option<u32>,
    pub micro_batch: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub work: Work,
    /// Waited after being triggered before the task is submitted (an actor hop).
    pub delay_us: f64,
    pub then: Then,
    pub label: Label,
}

struct Join {
    remaining: u32,
    then: Then,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Event {
    Submit(TaskId),
    Complete(TaskId),
    /// A device's next kernel may have finished (stale unless `version` is still current).
    DeviceCheck {
        device: u32,
        version: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Queued {
    at: f64,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    /// Reversed: the heap pops the earliest event, ties in insertion order.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// A span that ran: a kernel on a stream or a transfer on a wire (for stats and traces).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    pub start: f64,
    pub end: f64,
    /// Stream index, or wire index for transfers.
    pub track: u32,
    pub transfer: bool,
    pub bytes: f64,
    pub label: Label,
}

/// The clock and its resources.
pub struct Clock {
    pub now: f64,
    queue: BinaryHeap<Queued>,
    seq: u64,
    tasks: Vec<Task>,
    joins: Vec<Join>,
    devices: Vec<Device>,
    wire_free: Vec<f64>,
    /// Every span since the last `take_spans`.
    pub spans: Vec<Span>,
    pub events: u64,
}

/// What popping an event may hand back to the driver.
pub enum Step {
    /// A micro-batch finished its op at the given time.
    Resume(usize, f64),
    Continue,
    Idle,
}

impl Clock {
    /// A clock with `devices` compute devices whose throughput with kernels of two or more
    /// streams at once is `speedup` times one kernel's alone (see `device.rs`), and `wires`.
    pub fn new(devices: usize, wires: usize, speedup: f64) -> Clock {
        Clock {
            now: 0.0,
            queue: BinaryHeap::new(),
            seq: 0,
            tasks: Vec::new(),
            joins: Vec::new(),
            devices: (0..devices).map(|_| Device::new(speedup)).collect(),
            wire_free: vec![0.0; wires],
            spans: Vec::new(),
            events: 0,
        }
    }

    pub fn task(&mut self, work: Work, delay_us: f64, then: Then, label: Label) -> TaskId {
        self.tasks.push(Task {
            work,
            delay_us,
            then,
            label,
        });
        (self.tasks.len() - 1) as TaskId
    }

    pub fn join(&mut self, inputs: u32, then: Then) -> u32 {
        self.joins.push(Join {
            remaining: inputs,
            then,
        });
        (self.joins.len() - 1) as u32
    }

    /// Forgets finished tasks and joins (between steps, when nothing is in flight).
    pub fn compact(&mut self) {
        if self.queue.is_empty() {
            self.tasks.clear();
            self.joins.clear();
        }
    }

    fn push(&mut self, at: f64, event: Event) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            event,
        });
    }

    /// Triggers `t`'s task at `at` (after its delay).
    pub fn trigger(&mut self, id: TaskId, at: f64) {
        let d = self.tasks[id as usize].delay_us;
        self.push(at + d, Event::Submit(id));
    }

    /// The earliest pending event's time.
    pub fn next_time(&self) -> Option<f64> {
        self.queue.peek().map(|q| q.at)
    }

    /// Handles the next event.
    pub fn step(&mut self) -> Step {
        let Some(q) = self.queue.pop() else {
            return Step::Idle;
        };
        self.events += 1;
        self.now = q.at;
        match q.event {
            Event::Submit(id) => {
                let task = &self.tasks[id as usize];
                let (label, work) = (task.label, task.work);
                let end = match work {
                    Work::Kernel { stream, device, us } => {
                        let d = &mut self.devices[device as usize];
                        if let Some(at) = d.submit(q.at, id, stream, us) {
                            let version = d.version;
                            self.push(at, Event::DeviceCheck { device, version });
                        }
                        return Step::Continue;
                    }
                    Work::Transfer {
                        wire,
                        wire_us,
                        latency_us,
                        bytes,
                    } => {
                        let free = &mut self.wire_free[wire as usize];
                        let start = free.max(q.at);
                        *free = start + wire_us;
                        let at = start + wire_us + latency_us;
                        self.spans.push(Span {
                            start: q.at,
                            end: at,
                            track: wire,
                            transfer: true,
                            bytes,
                            label,
                        });
                        at
                    }
                    Work::Delay { us } => q.at + us,
                };
                self.push(end, Event::Complete(id));
                Step::Continue
            }
            Event::Complete(id) => {
                let then = std::mem::replace(&mut self.tasks[id as usize].then, Then::Nothing);
                self.fire(then, q.at)
            }
            Event::DeviceCheck { device, version } => {
                let d = &mut self.devices[device as usize];
                if d.version != version {
                    return Step::Continue;
                }
                let (finished, next) = d.check(q.at);
                if let Some(at) = next {
                    let version = d.version;
                    self.push(at, Event::DeviceCheck { device, version });
                }
                for f in finished {
                    self.spans.push(Span {
                        start: f.start,
                        end: f.end,
                        track: f.stream,
                        transfer: false,
                        bytes: 0.0,
                        label: self.tasks[f.task as usize].label,
                    });
                    self.push(f.end, Event::Complete(f.task));
                }
                Step::Continue
            }
        }
    }

    fn fire(&mut self, then: Then, at: f64) -> Step {
        match then {
            Then::Nothing => Step::Continue,
            Then::Tasks(ids) => {
                for id in ids {
                    self.trigger(id, at);
                }
                Step::Continue
            }
            Then::Join(j) => {
                let join = &mut self.joins[j as usize];
                join.remaining = join.remaining.saturating_sub(1);
                if join.remaining == 0 {
                    let then = std::mem::replace(&mut join.then, Then::Nothing);
                    self.fire(then, at)
                } else {
                    Step::Continue
                }
            }
            Then::Resume(mb) => Step::Resume(mb, at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Label = Label {
        name: "k",
        layer: None,
        micro_batch: None,
    };

    fn run(c: &mut Clock) -> Vec<(usize, f64)> {
        let mut out = Vec::new();
        loop {
            match c.step() {
                Step::Idle => return out,
                Step::Resume(mb, t) => out.push((mb, t)),
                Step::Continue => {}
            }
        }
    }

    #[test]
    fn a_stream_runs_kernels_one_at_a_time_and_streams_share_the_device() {
        let k = |s| Work::Kernel {
            stream: s,
            device: 0,
            us: 10.0,
        };
        let mut c = Clock::new(1, 1, 1.0);
        let a = c.task(k(0), 0.0, Then::Resume(0), L);
        let b = c.task(k(0), 0.0, Then::Resume(1), L);
        c.trigger(a, 0.0);
        c.trigger(b, 5.0);
        assert_eq!(run(&mut c), vec![(0, 10.0), (1, 20.0)]);
        // Two streams at twice the rate together: both done at 10.
        let mut c = Clock::new(1, 1, 2.0);
        let a = c.task(k(0), 0.0, Then::Resume(0), L);
        let b = c.task(k(1), 0.0, Then::Resume(1), L);
        c.trigger(a, 0.0);
        c.trigger(b, 0.0);
        assert_eq!(run(&mut c), vec![(0, 10.0), (1, 10.0)]);
        assert_eq!(c.spans.len(), 2);
    }

    #[test]
    fn transfers_share_the_wire_and_pipeline_latency() {
        let mut c = Clock::new(1, 1, 1.0);
        let t = |_| Work::Transfer {
            wire: 0,
            wire_us: 4.0,
            latency_us: 100.0,
            bytes: 1.0,
        };
        let j = c.join(2, Then::Resume(7));
        let a = c.task(t(0), 0.0, Then::Join(j), L);
        let b = c.task(t(1), 0.0, Then::Join(j), L);
        c.trigger(a, 0.0);
        c.trigger(b, 0.0);
        // The second waits 4 µs for the wire, then both latencies overlap: 108, not 208.
        assert_eq!(run(&mut c), vec![(7, 108.0)]);
        assert_eq!(c.spans.len(), 2);
    }
}
