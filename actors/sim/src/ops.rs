//! Each op as the kernels and transfers the runtime runs for it (`actors/src/actors/`):
//! - `Attention(l)`: one kernel on the stage stream (or on each attention lane's GPU);
//! - `Ffn(l)` dense: one MLP kernel;
//! - `Ffn(l)` MoE, staged: `dispatch` (norm + routing + gathers) on the stage stream, then the
//!   per expert group with rows, [dispatch transfer] → group kernel on its stream → [combine
//!   transfer], and the shared experts on the stage stream (submitted after the groups across
//!   the link and before the others, as the router sends them), then `combine` when all are
//!   back — the router actor's
//!   steps; transfers only where the runtime moves data (another node over `[placement.link]`
//!   on a CPU; another GPU on GPUs);
//! - `Ffn(l)` MoE, data-parallel attention: every lane's `dispatch` and all-to-all send, every
//!   group's kernel once all have arrived, every group's all-to-all return, every lane's combine.
//!
//! Every op costs one actor hop before its first kernel, and a group kernel one more, which a
//! router's fan-out lengthens by `fanout_us` plus `fanout_message_us` per message (its shared
//! kernel and each group that gets rows, in expectation). Across `[placement.link]` the router
//! books a group's transfer one hop after its dispatch kernel, the group gets its message
//! during the flight, and its kernel — held for the rows — starts `link_wake_us` after they
//! arrive (the stream waking for it), as does the combine after the last result; a transfer
//! holds the wire `link_hop_us` beyond its bytes (0 unless a hardware file sets it).
//!
//! A kernel lasts its roofline time (`Hardware::kernel_us`), or, where the hardware file has
//! measured times for its kind (`measured.rs`), the measured time of its calls plus `launch_us`
//! per call the runtime makes.

use crate::clock::{Label, TaskId, Then, Work};
use crate::cost::{group_load, GroupLoad, MoeCost, Work as Cost};
use crate::driver::SimCore;
use crate::hardware::{DeviceKind, WireSpec};
use troupe_actors::Op;

/// What a kernel's calls carry, for measured kernel times.
#[derive(Clone, Copy, Debug)]
struct Calls {
    /// Rows per call.
    rows: f64,
    /// Calls at the measured rate (an expert group: its active experts).
    calls: f64,
    /// Calls the runtime launches (an expert group: the chance it gets any row).
    launches: f64,
    /// The same kernel's work at the measured context (attention), if it depends on context.
    measured_as: Option<Cost>,
}

impl Calls {
    fn one(rows: f64) -> Calls {
        Calls {
            rows,
            calls: 1.0,
            launches: 1.0,
            measured_as: None,
        }
    }
}

/// The chance that a group whose expected rows are `g.rows` of `rows` gets any row.
fn chance_of_rows(g: &GroupLoad, rows: f64) -> f64 {
    1.0 - (1.0 - (g.rows / rows.max(1e-12)).min(1.0)).powf(rows)
}

impl SimCore {
    /// A router's fan-out beyond the hop when it sends `messages` (module doc).
    fn fanout(&self, messages: f64) -> f64 {
        let r = &self.hw.runtime;
        r.fanout_us + r.fanout_message_us * messages
    }

    /// A kernel's duration (µs): see the module doc.
    fn kernel_us(&self, name: &str, cost: Cost, calls: Calls) -> f64 {
        let roofline = |c: Cost| self.hw.kernel_us(c.bytes, c.flops, self.peak_flops);
        let Some(curve) = self.hw.kernels.as_ref().and_then(|k| k.times.get(name)) else {
            return roofline(cost);
        };
        let mut t = calls.calls * curve.at(calls.rows) + calls.launches * self.hw.compute.launch_us;
        if let Some(measured) = calls.measured_as {
            t += roofline(cost) - roofline(measured);
        }
        t.max(0.0)
    }

    fn kernel(
        &mut self,
        stream: usize,
        (cost, calls): (Cost, Calls),
        delay: f64,
        then: Then,
        label: Label,
    ) -> TaskId {
        let us = self.kernel_us(label.name, cost, calls);
        let device = self.layout.stream_device[stream] as u32;
        self.clock.task(
            Work::Kernel {
                stream: stream as u32,
                device,
                us,
            },
            delay,
            then,
            label,
        )
    }

    /// The wire from stream `a` to `b` (`None`: nothing moves), with its index.
    fn wire(&self, a: usize, b: usize, a_node: usize, b_node: usize) -> Option<(u32, WireSpec)> {
        match self.hw.kind {
            DeviceKind::Cpu => {
                let link = self.layout.placement.link?;
                (a_node != b_node).then_some((
                    0,
                    WireSpec {
                        gbps: link.gbps / 8.0,
                        latency_us: link.latency.as_secs_f64() * 1e6,
                    },
                ))
            }
            DeviceKind::Gpu => {
                let (da, db) = (self.layout.stream_device[a], self.layout.stream_device[b]);
                if da == db {
                    return None;
                }
                let spec = match a_node == b_node {
                    true => self.hw.nvlink,
                    false => self.hw.network,
                }?;
                Some((da as u32, spec))
            }
        }
    }

    /// A transfer of `bytes` that happens with probability `p` (an expert group's rows under
    /// expected routing), booked `delay` µs after its trigger: it holds the wire for its bytes
    /// plus `p` times the runtime's cost of a transfer.
    fn transfer(
        &mut self,
        wire: u32,
        spec: WireSpec,
        (bytes, p): (f64, f64),
        delay: f64,
        then: Then,
        label: Label,
    ) -> TaskId {
        let w = Work::Transfer {
            wire,
            wire_us: bytes / (spec.gbps * 1e9) * 1e6 + p * self.hw.runtime.link_hop_us,
            latency_us: spec.latency_us,
            bytes,
        };
        self.clock.task(w, delay, then, label)
    }

    /// An all-to-all share leaving GPU `stream`: `bytes` spread evenly over every GPU, the part
    /// for its own node over NVLink, the rest over the network, both on its wire at once.
    fn all_to_all(&mut self, stream: usize, bytes: f64, then: Then, label: Label) -> TaskId {
        let n = self.layout.n_devices.max(1) as f64;
        let per_node = (self.hw.gpus_per_node as f64).min(n);
        let local = bytes * per_node / n;
        let remote = bytes - local;
        let nv = self.hw.nvlink.map_or(0.0, |w| local / (w.gbps * 1e9));
        let (ib, lat) = match self.hw.network {
            Some(w) if remote > 0.0 => (remote / (w.gbps * 1e9), w.latency_us),
            _ => (0.0, self.hw.nvlink.map_or(0.0, |w| w.latency_us)),
        };
        let w = Work::Transfer {
            wire: self.layout.stream_device[stream] as u32,
            wire_us: nv.max(ib) * 1e6,
            latency_us: lat,
            bytes,
        };
        self.clock.task(w, 0.0, then, label)
    }

    /// Attention of layer `l` over `load`, and its calls: one, whose measured time (if any) was
    /// taken at `[kernels] context` cached positions per sequence (a decode row per sequence).
    fn attention(&self, l: usize, load: crate::driver::Load) -> (Cost, Calls) {
        let cost = self
            .cost
            .attention(l, load.rows, load.ctx_rows, load.ctx_positions);
        let measured_as = self.hw.kernels.as_ref().map(|k| {
            let at = load.rows * k.context;
            self.cost.attention(l, load.rows, at, at)
        });
        (
            cost,
            Calls {
                measured_as,
                ..Calls::one(load.rows)
            },
        )
    }

    fn stage_stream(&self, layer: usize) -> usize {
        let p = &self.layout.placement;
        p.stage_streams[p.stage_of(layer)]
    }

    pub(crate) fn start_embed(&mut self, mb: usize, at: f64) {
        let label = label("embed", None, mb);
        let lanes = self.mbs[mb].lanes.clone();
        let j = self.clock.join(lanes.len() as u32, Then::Resume(mb));
        for (stream, load) in lanes {
            let s = stream.unwrap_or_else(|| self.stage_stream(0));
            let cost = (self.cost.embed(load.rows), Calls::one(load.rows));
            let k = self.kernel(s, cost, 0.0, Then::Join(j), label);
            self.clock.trigger(k, at);
        }
    }

    /// The LM head over every micro-batch's rows, on the last stage's stream (or each lane);
    /// `then` fires when all are done.
    pub(crate) fn start_head(
        &mut self,
        rows_per_lane: &[(Option<usize>, f64)],
        at: f64,
        then: Then,
    ) {
        let last = self.layout.placement.stages.len().saturating_sub(1);
        let last_layer = self
            .layout
            .placement
            .stages
            .get(last)
            .map_or(0, |r| r.start);
        let j = self.clock.join(rows_per_lane.len() as u32, then);
        for &(stream, rows) in rows_per_lane {
            let s = stream.unwrap_or_else(|| self.stage_stream(last_layer));
            let cost = (self.cost.head(rows), Calls::one(rows));
            let k = self.kernel(s, cost, 0.0, Then::Join(j), label("head", None, 0));
            self.clock.trigger(k, at);
        }
    }

    pub(crate) fn start_op(&mut self, mb: usize, op: Op, at: f64) {
        let hop = self.hw.runtime.hop_us;
        let l = op.layer();
        let lanes = self.mbs[mb].lanes.clone();
        let moe = self.cost.layers[l].moe;
        match (op, moe) {
            (Op::Attention(_), _) | (Op::Ffn(_), None) => {
                let name = if matches!(op, Op::Attention(_)) {
                    "attention"
                } else {
                    "mlp"
                };
                let j = self.clock.join(lanes.len() as u32, Then::Resume(mb));
                for (stream, load) in lanes {
                    let s = stream.unwrap_or_else(|| self.stage_stream(l));
                    let cost = match op {
                        Op::Attention(_) => self.attention(l, load),
                        Op::Ffn(_) => (self.cost.dense_mlp(l, load.rows), Calls::one(load.rows)),
                    };
                    let k = self.kernel(s, cost, hop, Then::Join(j), label(name, Some(l), mb));
                    self.clock.trigger(k, at);
                }
            }
            (Op::Ffn(_), Some(m)) => match lanes.as_slice() {
                [(None, load)] => self.moe_staged(mb, l, &m, load.rows, at),
                _ => self.moe_parallel(mb, l, &m, &lanes, at),
            },
        }
    }

    /// The router actor's steps for one micro-batch on its stage stream (module doc).
    fn moe_staged(&mut self, mb: usize, l: usize, m: &MoeCost, rows: f64, at: f64) {
        let hop = self.hw.runtime.hop_us;
        let st = self.stage_stream(l);
        let p = &self.layout.placement;
        let stage_node = p.stage_nodes[p.stage_of(l)];
        // Per group: its stream and node, its load, the chance it gets any row (its transfers
        // happen only then) and the wire to it, if any.
        let groups: Vec<(usize, usize, GroupLoad, f64, Option<(u32, WireSpec)>)> = self
            .group_shares(l)
            .into_iter()
            .map(|(stream, node, share, held)| {
                let g = group_load(m, rows, share, held);
                let wire = self.wire(st, stream, stage_node, node);
                (stream, node, g, chance_of_rows(&g, rows), wire)
            })
            .collect();
        let has_shared = m.shared_params > 0.0;
        let combine = (self.cost.combine(m, rows), Calls::one(rows));
        // Held for the results' arrival when a group is across the link: the stream wakes for
        // it `link_wake_us` later.
        let across = groups.iter().any(|g| g.4.is_some());
        let wake = self.hw.runtime.link_wake_us;
        let c = self.kernel(
            st,
            combine,
            if across { wake } else { 0.0 },
            Then::Resume(mb),
            label("combine", Some(l), mb),
        );
        let n_in = groups.len() as u32 + u32::from(has_shared);
        let j = self.clock.join(n_in, Then::Tasks(vec![c]));
        // Transfers to the groups across the link, then the shared kernel, then `near`: the
        // kernels of the groups beside the router.
        let mut heads = Vec::with_capacity(groups.len() + 1);
        let mut near = Vec::new();
        let messages = f64::from(u8::from(has_shared)) + groups.iter().map(|g| g.3).sum::<f64>();
        let fanned = hop + self.fanout(messages);
        let (d_bytes, c_bytes) = (
            self.hw.transfer.dispatch_bytes,
            self.hw.transfer.combine_bytes,
        );
        let cpu = self.hw.kind == DeviceKind::Cpu;
        for (stream, node, g, p_any, wire) in groups {
            let back = wire.map(|_| self.wire(stream, st, node, stage_node));
            let after_kernel = match back.flatten() {
                Some((w, spec)) => {
                    let bytes = g.slots * self.cost.hidden * c_bytes;
                    let t = self.transfer(
                        w,
                        spec,
                        (bytes, p_any),
                        0.0,
                        Then::Join(j),
                        label("combine", Some(l), mb),
                    );
                    Then::Tasks(vec![t])
                }
                None => Then::Join(j),
            };
            let cost = (
                self.cost.group(m, g.slots, g.active),
                group_calls(&g, rows, p_any),
            );
            // Across the link the group gets its message during the flight, and its kernel,
            // held for the rows' arrival, starts when the stream wakes for it.
            let k = self.kernel(
                stream,
                cost,
                if wire.is_some() { wake } else { fanned },
                after_kernel,
                label("experts", Some(l), mb),
            );
            match wire {
                Some((w, spec)) => {
                    let routing = if cpu {
                        g.rows * m.top_k as f64 * 8.0
                    } else {
                        0.0
                    };
                    let bytes = g.rows * self.cost.hidden * d_bytes + routing;
                    // Booked by the router one hop after its dispatch kernel.
                    heads.push(self.transfer(
                        w,
                        spec,
                        (bytes, p_any),
                        hop,
                        Then::Tasks(vec![k]),
                        label("dispatch", Some(l), mb),
                    ));
                }
                None => near.push(k),
            }
        }
        // The router sends the groups across the link first, then the shared experts, then
        // the groups beside it (`router.rs`): on the stage stream the shared kernel queues
        // ahead of those.
        if has_shared {
            let cost = (self.cost.shared(m, rows), Calls::one(rows));
            let shared = self.kernel(
                st,
                cost,
                fanned,
                Then::Join(j),
                label("shared", Some(l), mb),
            );
            heads.push(shared);
        }
        heads.extend(near);
        let cost = (self.cost.dispatch(m, rows), Calls::one(rows));
        let d = self.kernel(
            st,
            cost,
            hop,
            Then::Tasks(heads),
            label("dispatch", Some(l), mb),
        );
        self.clock.trigger(d, at);
    }

    /// Data-parallel attention lanes exchanging rows with every expert group (module doc).
    fn moe_parallel(
        &mut self,
        mb: usize,
        l: usize,
        m: &MoeCost,
        lanes: &[(Option<usize>, crate::driver::Load)],
        at: f64,
    ) {
        let hop = self.hw.runtime.hop_us;
        let lbl = |n| label(n, Some(l), mb);
        let total_rows: f64 = lanes.iter().map(|(_, x)| x.rows).sum();
        let hidden = self.cost.hidden;
        let (d_bytes, c_bytes) = (
            self.hw.transfer.dispatch_bytes,
            self.hw.transfer.combine_bytes,
        );
        let done = self.clock.join(lanes.len() as u32, Then::Resume(mb));
        let mut combines = Vec::with_capacity(lanes.len());
        for &(s, load) in lanes {
            let s = s.unwrap_or(0);
            let cost = (self.cost.combine(m, load.rows), Calls::one(load.rows));
            combines.push(self.kernel(s, cost, 0.0, Then::Join(done), lbl("combine")));
        }
        // Per group: its stream, its load and the chance it gets any row.
        let groups: Vec<(usize, GroupLoad, f64)> = self
            .group_shares(l)
            .into_iter()
            .map(|(stream, _, share, held)| {
                let g = group_load(m, total_rows, share, held);
                (stream, g, chance_of_rows(&g, total_rows))
            })
            .collect();
        let has_shared = m.shared_params > 0.0;
        let n_back = groups.len() + if has_shared { lanes.len() } else { 0 };
        let back = self.clock.join(n_back as u32, Then::Tasks(combines));
        let mut kernels = Vec::with_capacity(groups.len());
        let messages = groups.iter().map(|g| g.2).sum::<f64>();
        let fanned = hop + self.fanout(messages);
        for (stream, g, p_any) in groups {
            let bytes = g.slots * hidden * c_bytes;
            let t = self.all_to_all(stream, bytes, Then::Join(back), lbl("combine"));
            let calls = group_calls(&g, total_rows, p_any);
            let cost = (self.cost.group(m, g.slots, g.active), calls);
            kernels.push(self.kernel(stream, cost, fanned, Then::Tasks(vec![t]), lbl("experts")));
        }
        let arrived = self.clock.join(lanes.len() as u32, Then::Tasks(kernels));
        for &(s, load) in lanes {
            let s = s.unwrap_or(0);
            let bytes = load.rows * m.top_k as f64 * hidden * d_bytes;
            let mut next = vec![self.all_to_all(s, bytes, Then::Join(arrived), lbl("dispatch"))];
            if has_shared {
                let cost = (self.cost.shared(m, load.rows), Calls::one(load.rows));
                next.push(self.kernel(s, cost, 0.0, Then::Join(back), lbl("shared")));
            }
            let cost = (self.cost.dispatch(m, load.rows), Calls::one(load.rows));
            let d = self.kernel(s, cost, hop, Then::Tasks(next), lbl("dispatch"));
            self.clock.trigger(d, at);
        }
    }

    /// Per expert group of layer `l`: (stream, node, expert share counting replicas as
    /// fractions, distinct experts held).
    fn group_shares(&self, l: usize) -> Vec<(usize, usize, f64, f64)> {
        let groups = &self.layout.placement.expert_groups[l];
        let n_experts = self.cost.layers[l].moe.map_or(0, |m| m.experts);
        let mut copies = vec![0u32; n_experts];
        for g in groups {
            for &e in &g.experts {
                if let Some(c) = copies.get_mut(e) {
                    *c += 1;
                }
            }
        }
        // Each expert's weight in units of a uniform expert (uniform routing: 1 each).
        let load = self.expert_load.get(l).filter(|v| v.len() == n_experts);
        let total: f64 = load.map_or(0.0, |v| v.iter().sum());
        let weight = |e: usize| match load {
            Some(v) if total > 0.0 => v[e] * n_experts as f64 / total,
            _ => 1.0,
        };
        groups
            .iter()
            .map(|g| {
                let share = g
                    .experts
                    .iter()
                    .map(|&e| weight(e) / copies.get(e).copied().unwrap_or(1).max(1) as f64)
                    .sum();
                (g.stream, g.node, share, g.experts.len() as f64)
            })
            .collect()
    }
}

fn label(name: &'static str, layer: Option<usize>, mb: usize) -> Label {
    Label {
        name,
        layer: layer.map(|l| l as u32),
        micro_batch: Some(mb as u32),
    }
}

/// An expert group's calls in a micro-batch of `rows` rows: each active expert once (measured
/// per expert, against the micro-batch's rows), launched once when the group gets rows.
fn group_calls(g: &GroupLoad, rows: f64, p_any: f64) -> Calls {
    Calls {
        rows,
        calls: g.active,
        launches: p_any,
        measured_as: None,
    }
}
