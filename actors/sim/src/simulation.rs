//! [`Simulation`]: a model description, a layout, a schedule and a hardware file; each
//! [`Simulation::step`] runs one forward pass of the given sequences through the *same*
//! `Schedule` implementation the runtime uses (`troupe_actors::pass::drive`, the pass's checks
//! included), on the simulated clock, then the LM head — and records what ran for the report.

use std::sync::Arc;

use troupe_actors::pass::{drive, PassShape};
use troupe_actors::Schedule;
use troupe_engine::graph::spec::ModelSpec;

use crate::clock::{Clock, Span, Then};
use crate::cost::ModelCost;
use crate::driver::{SeqStep, SimCore, SimDriver};
use crate::error::{Result, SimError};
use crate::hardware::{DeviceKind, Hardware};
use crate::layout::Layout;
use crate::stats::Stats;

/// One simulated deployment (see the module doc).
pub struct Simulation {
    core: SimCore,
    schedule: Arc<dyn Schedule>,
    pub stats: Stats,
    /// Every span of the recorded steps, kept when a trace is wanted.
    pub keep_spans: bool,
    pub spans: Vec<Span>,
    /// The last step's spans and times (for plots).
    pub last_spans: Vec<Span>,
    pub last_step: Option<StepTime>,
}

/// What one step took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTime {
    pub start_us: f64,
    pub end_us: f64,
    pub rows: usize,
}

impl Simulation {
    /// A simulation of `spec` laid out by `layout`, driven by `schedule`, on `hardware`.
    pub fn new(
        spec: &ModelSpec,
        layout: Layout,
        schedule: Arc<dyn Schedule>,
        hardware: Hardware,
    ) -> Result<Simulation> {
        let kv_bytes = match hardware.kind {
            DeviceKind::Cpu => 4.0,
            DeviceKind::Gpu => 2.0,
        };
        let cost = ModelCost::from_spec(spec, hardware.weight_bytes, kv_bytes);
        if layout.placement.expert_groups.len() != cost.layers.len() {
            return Err(SimError::parameter(
                "placement",
                format!(
                    "resolved for {} layers, the model has {}",
                    layout.placement.expert_groups.len(),
                    cost.layers.len()
                ),
            ));
        }
        let (wires, speedup) = match hardware.kind {
            DeviceKind::Cpu => (1, hardware.compute.stream_speedup.unwrap_or(1.0)),
            DeviceKind::Gpu => (layout.n_devices, 1.0),
        };
        let peak_flops = hardware.peak_flops(cost.weight_bytes);
        let stats = Stats::new(layout.n_streams());
        Ok(Simulation {
            core: SimCore {
                clock: Clock::new(layout.n_devices, wires, speedup),
                cost,
                layout,
                hw: hardware,
                peak_flops,
                host: 0.0,
                seqs: Vec::new(),
                mbs: Vec::new(),
                expert_load: Vec::new(),
            },
            schedule,
            stats,
            keep_spans: false,
            spans: Vec::new(),
            last_spans: Vec::new(),
            last_step: None,
        })
    }

    /// Routes by measured or assumed expert loads instead of uniformly: `load[l][e]` is expert
    /// `e`'s relative load in layer `l` (a MoE layer's entries finite, ≥ 0, not all 0; a dense
    /// layer's list empty). A group's rows are its experts' share of the total (an expert with
    /// replicas splits its share among them).
    pub fn set_expert_load(&mut self, load: Vec<Vec<f64>>) -> Result<()> {
        let layers = &self.core.cost.layers;
        if load.len() != layers.len() {
            return Err(SimError::parameter(
                "expert load",
                format!(
                    "{} layers given, the model has {}",
                    load.len(),
                    layers.len()
                ),
            ));
        }
        for (l, (row, layer)) in load.iter().zip(layers).enumerate() {
            let want = layer.moe.map_or(0, |m| m.experts);
            let ok = row.len() == want
                && row.iter().all(|x| x.is_finite() && *x >= 0.0)
                && (want == 0 || row.iter().sum::<f64>() > 0.0);
            if !ok {
                return Err(SimError::parameter(
                    "expert load",
                    format!("layer {l}: expected {want} finite loads ≥ 0, not all 0"),
                ));
            }
        }
        self.core.expert_load = load;
        Ok(())
    }

    /// The layout, to change expert groups between runs (e.g. an EPLB plan).
    pub fn layout_mut(&mut self) -> &mut Layout {
        &mut self.core.layout
    }

    pub fn layout(&self) -> &Layout {
        &self.core.layout
    }
    pub fn hardware(&self) -> &Hardware {
        &self.core.hw
    }
    pub fn cost(&self) -> &ModelCost {
        &self.core.cost
    }
    /// Events the clock handled so far.
    pub fn events(&self) -> u64 {
        self.core.clock.events
    }
    /// The simulated calling thread's time (µs).
    pub fn now_us(&self) -> f64 {
        self.core.host
    }
    /// Lets the simulated time pass to `t_us` (idle, e.g. waiting for arrivals).
    pub fn idle_until(&mut self, t_us: f64) {
        self.core.host = self.core.host.max(t_us);
    }

    /// One forward pass of `seqs` (non-empty, each with rows), recorded in the stats when
    /// `record` (warm-up steps are not).
    pub fn step(&mut self, seqs: &[SeqStep], record: bool) -> Result<StepTime> {
        if seqs.is_empty() || seqs.iter().any(|s| s.rows == 0) {
            return Err(SimError::parameter(
                "sequences",
                "a pass needs at least one sequence, each with at least one new row",
            ));
        }
        let core = &mut self.core;
        core.clock.compact();
        core.seqs = seqs.to_vec();
        core.mbs.clear();
        let start = core.host;
        let shape = PassShape {
            sequence_rows: seqs.iter().map(|s| s.rows).collect(),
            n_layers: core.cost.layers.len(),
            stages: core.layout.placement.stages.clone(),
        };
        drive(&*self.schedule, &mut SimDriver { core: &mut *core }, shape)?;
        // The head over all rows, as `run_pass` runs it once every micro-batch is back.
        let mut per_lane: Vec<(Option<usize>, f64)> = Vec::new();
        for m in &core.mbs {
            for &(s, load) in &m.lanes {
                match per_lane.iter_mut().find(|(t, _)| *t == s) {
                    Some(e) => e.1 += load.rows,
                    None => per_lane.push((s, load.rows)),
                }
            }
        }
        let head_mb = core.mbs.len();
        core.mbs.push(crate::driver::MbSim {
            lanes: Vec::new(),
            ops: Default::default(),
            done_at: None,
        });
        let at = core.host;
        core.advance_to(at);
        core.start_head(&per_lane, at, Then::Resume(head_mb));
        let end = core.run_until_done(head_mb)?;
        core.drain();
        core.host = end;
        let spans = std::mem::take(&mut core.clock.spans);
        let rows = seqs.iter().map(|s| s.rows).sum();
        if record {
            self.stats.record(&spans, start, end, rows);
        }
        if self.keep_spans && record {
            self.spans.extend_from_slice(&spans);
        }
        self.last_spans = spans;
        let t = StepTime {
            start_us: start,
            end_us: end,
            rows,
        };
        self.last_step = Some(t);
        Ok(t)
    }
}
