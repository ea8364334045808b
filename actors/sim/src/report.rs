//! Runs over many steps and what they report: [`decode`] (N sequences at a context, K decode
//! steps after one prefill that is not counted), [`workload`] (requests arriving over time,
//! continuously batched), the [`Report`] (text, and one JSON object) and the trace in the
//! runtime's Perfetto format.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use troupe_actors::link::TransferTags;
use troupe_actors::trace::{SpanTags, Tracer};

use crate::driver::SeqStep;
use crate::error::{Result, SimError};
use crate::simulation::Simulation;

/// What a run reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub steps: usize,
    /// Mean time of a recorded step.
    pub step_ms: f64,
    /// Generated tokens per second of simulated time.
    pub tokens_per_s: f64,
    pub bubble_fraction: f64,
    pub hidden_fraction: f64,
    /// Stream name → busy fraction of the window.
    pub utilization: BTreeMap<String, f64>,
    pub link_busy_ms: f64,
    pub link_exposed_ms: f64,
    pub transfers: usize,
    pub events: u64,
    pub wall_s: f64,
    pub events_per_s: f64,
}

impl Report {
    pub fn from_sim(sim: &Simulation, tokens: usize, wall_s: f64) -> Report {
        let st = &sim.stats;
        let names = &sim.layout().placement.streams;
        let utilization = (0..st.stream_busy_us.len())
            .filter(|&s| st.stream_kernels[s] > 0)
            .map(|s| {
                let name = names
                    .get(s)
                    .cloned()
                    .unwrap_or_else(|| format!("stream{s}"));
                (name, st.utilization(s))
            })
            .collect();
        let events = sim.events();
        Report {
            steps: st.steps,
            step_ms: st.window_us / st.steps.max(1) as f64 / 1e3,
            tokens_per_s: match st.window_us > 0.0 {
                true => tokens as f64 / (st.window_us * 1e-6),
                false => 0.0,
            },
            bubble_fraction: st.bubble_fraction(&sim.layout().stream_device),
            hidden_fraction: st.hidden_fraction(),
            utilization,
            link_busy_ms: st.link_busy_us / 1e3,
            link_exposed_ms: st.link_exposed_us / 1e3,
            transfers: st.transfers,
            events,
            wall_s,
            events_per_s: events as f64 / wall_s.max(1e-9),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "steps:            {}", self.steps)?;
        writeln!(f, "step time:        {:.3} ms", self.step_ms)?;
        writeln!(f, "tokens/s:         {:.1}", self.tokens_per_s)?;
        writeln!(f, "bubble fraction:  {:.3}", self.bubble_fraction)?;
        writeln!(
            f,
            "link:             {} transfers, busy {:.3} ms, exposed {:.3} ms, hidden {:.1}%",
            self.transfers,
            self.link_busy_ms,
            self.link_exposed_ms,
            100.0 * self.hidden_fraction
        )?;
        let shown: Vec<_> = self.utilization.iter().take(16).collect();
        for (name, u) in &shown {
            writeln!(f, "  stream {name:<12} {:5.1}% busy", 100.0 * *u)?;
        }
        if self.utilization.len() > shown.len() {
            let mean = self.utilization.values().sum::<f64>() / self.utilization.len() as f64;
            writeln!(
                f,
                "  ... {} streams in all, mean {:.1}% busy",
                self.utilization.len(),
                100.0 * mean
            )?;
        }
        write!(
            f,
            "simulated in {:.3} s wall ({} events, {:.0} events/s)",
            self.wall_s, self.events, self.events_per_s
        )
    }
}

/// `seqs` sequences whose caches hold `context` positions, one prefill pass (not counted),
/// then `steps` decode steps of one row each (counted).
pub fn decode(sim: &mut Simulation, seqs: usize, context: usize, steps: usize) -> Result<Report> {
    if seqs == 0 || steps == 0 || context == 0 {
        return Err(SimError::parameter(
            "--seqs/--steps/--context",
            "each must be at least 1",
        ));
    }
    let wall = Instant::now();
    let prefill: Vec<SeqStep> = (0..seqs)
        .map(|_| SeqStep {
            rows: context,
            start: 0,
        })
        .collect();
    sim.step(&prefill, false)?;
    for k in 0..steps {
        let batch: Vec<SeqStep> = (0..seqs)
            .map(|_| SeqStep {
                rows: 1,
                start: context + k,
            })
            .collect();
        sim.step(&batch, true)?;
    }
    Ok(Report::from_sim(
        sim,
        seqs * steps,
        wall.elapsed().as_secs_f64(),
    ))
}

/// One line of a workload file.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub arrival_s: f64,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
}

/// Reads JSON lines of [`Request`]s (blank lines skipped), each checked.
pub fn read_workload(path: &Path) -> Result<Vec<Request>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SimError::Workload {
        path: name.clone(),
        line: 0,
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| SimError::Workload {
            path: name.clone(),
            line: i + 1,
            message,
        };
        let r: Request = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if !(r.arrival_s.is_finite() && r.arrival_s >= 0.0) {
            return Err(bad(format!("arrival_s {} is not a time ≥ 0", r.arrival_s)));
        }
        if r.prompt_tokens == 0 || r.output_tokens == 0 {
            return Err(bad(
                "prompt_tokens and output_tokens must be at least 1".into()
            ));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Err(SimError::Workload {
            path: name,
            line: 0,
            message: "no requests".into(),
        });
    }
    out.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(out)
}

/// Continuous batching: before each step, requests that have arrived join (their prompt is
/// their first pass's rows, which yields their first token); every running request adds one
/// row per step until it has its output tokens. Every step is counted.
pub fn workload(sim: &mut Simulation, requests: &[Request], max_batch: usize) -> Result<Report> {
    let wall = Instant::now();
    let start = sim.now_us();
    // (request, cached positions, tokens still to generate)
    let mut running: Vec<(usize, usize, usize)> = Vec::new();
    let mut next = 0;
    let mut tokens = 0;
    while next < requests.len() || !running.is_empty() {
        let now_s = (sim.now_us() - start) * 1e-6;
        while next < requests.len()
            && requests[next].arrival_s <= now_s
            && running.len() < max_batch.max(1)
        {
            running.push((next, 0, requests[next].output_tokens));
            next += 1;
        }
        if running.is_empty() {
            sim.idle_until(start + requests[next].arrival_s * 1e6);
            continue;
        }
        let batch: Vec<SeqStep> = running
            .iter()
            .map(|&(r, cached, _)| match cached {
                0 => SeqStep {
                    rows: requests[r].prompt_tokens,
                    start: 0,
                },
                c => SeqStep { rows: 1, start: c },
            })
            .collect();
        sim.step(&batch, true)?;
        for (r, cached, left) in &mut running {
            *cached += if *cached == 0 {
                requests[*r].prompt_tokens
            } else {
                1
            };
            *left -= 1;
            tokens += 1;
        }
        running.retain(|&(_, _, left)| left > 0);
    }
    Ok(Report::from_sim(sim, tokens, wall.elapsed().as_secs_f64()))
}

/// Writes the spans kept by `sim` (`keep_spans`) as the runtime's trace (`trace.rs`): streams
/// on pid 1 by stream index, transfers on the link track.
pub fn write_trace(sim: &Simulation, path: &Path) -> Result<()> {
    let names: Vec<String> = sim.layout().placement.streams.clone();
    let tracer = Tracer::new(path, &names);
    for s in &sim.spans {
        let layer = s.label.layer.map(|l| l as usize);
        let micro_batch = s.label.micro_batch.map(|m| m as usize);
        if s.transfer {
            let tags = TransferTags {
                layer,
                micro_batch,
                step: None,
            };
            tracer.link_span_us(s.label.name, s.bytes as usize, &tags, s.start, s.end);
        } else {
            let tags = SpanTags {
                name: s.label.name,
                actor: names.get(s.track as usize).cloned().unwrap_or_default(),
                layer,
                micro_batch,
                ..SpanTags::default()
            };
            tracer.span_us(s.track as usize, &tags, s.start, s.end);
        }
    }
    tracer.write().map_err(|e| SimError::Output {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let _ = json!({});
    Ok(())
}
