//! Hardware files: what a simulated device computes and moves per second, and what the runtime
//! adds per kernel and per actor hop. Built-ins (`h800`, `h100`, `h200`, `cpu`) are the TOML
//! files in `actors/sim/hardware/`, with their published sources in comments; `troupe calibrate`
//! writes a `kind = "cpu"` file for the machine it runs on. Unknown fields are refused and every
//! number is checked (finite, in range) with the field named.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};
use crate::measured::MeasuredKernels;

/// Built-in hardware files by name.
pub const BUILT_IN: [(&str, &str); 4] = [
    ("h800", include_str!("../hardware/h800.toml")),
    ("h100", include_str!("../hardware/h100.toml")),
    ("h200", include_str!("../hardware/h200.toml")),
    ("cpu", include_str!("../hardware/cpu.toml")),
];

/// `kind = "gpu"`: every stream is its own device, `gpus_per_node` to a node, linked by NVLink
/// within a node and the network across. `kind = "cpu"`: the streams of a process share one
/// compute resource (its cores), and only `[placement.link]` moves data between simulated nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Gpu,
    Cpu,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    /// Dense tensor throughput for bf16 weights (TFLOP/s).
    pub tflops_bf16: f64,
    /// Dense throughput for FP8 weights (TFLOP/s); bf16's when absent.
    pub tflops_fp8: Option<f64>,
    /// f32 throughput (TFLOP/s); bf16's when absent.
    pub tflops_f32: Option<f64>,
    /// Memory bandwidth (GB/s).
    pub memory_gbps: f64,
    /// Fraction of max(bytes / bandwidth, flops / peak) a kernel reaches, in (0, 1].
    pub efficiency: f64,
    /// Fixed cost of every kernel (µs).
    pub launch_us: f64,
    /// A CPU's throughput while kernels of two or more streams run at once, relative to one
    /// kernel alone (≥ 1; absent: 1). One kernel's parallel region leaves cores idle that
    /// another stream's kernel fills; `troupe calibrate` fits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_speedup: Option<f64>,
    /// How a kernel's memory and math times combine (absent: `max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roofline: Option<Roofline>,
}

/// `max`: memory traffic and math overlap (a GPU's kernels, with many warps in flight).
/// `sum`: they do not (a CPU's few-row kernels, whose cores both stream the weights and
/// compute; `troupe calibrate` keeps whichever fits the real runs better).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Roofline {
    Max,
    Sum,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeCosts {
    /// One actor message (an op handed to a block actor, a stage hand-over), µs.
    pub hop_us: f64,
    /// The calling thread's cost per schedule request (micro-batch, issue, wait), µs.
    pub issue_us: f64,
    /// What a transfer over `[placement.link]` costs beyond its bytes (µs, absent: 0),
    /// transfers one after another as on the wire.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub link_hop_us: f64,
    /// How long after its input arrives over `[placement.link]` a held kernel starts when its
    /// stream is idle: the stream waking for it (µs, absent: 0; `troupe calibrate` reads it
    /// from a traced run).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub link_wake_us: f64,
    /// A router's fan-out to its expert (and shared) kernels beyond `hop_us`: `fanout_us` plus
    /// `fanout_message_us` per message it sends (µs, absent: 0; `troupe calibrate` reads both
    /// from a traced run).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fanout_us: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fanout_message_us: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// A wire: bandwidth (GB/s, per direction, per GPU) and one-way latency.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WireSpec {
    pub gbps: f64,
    pub latency_us: f64,
}

/// Bytes per activation value moved by dispatch and combine.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBytes {
    pub dispatch_bytes: f64,
    pub combine_bytes: f64,
}

impl Default for TransferBytes {
    fn default() -> Self {
        TransferBytes {
            dispatch_bytes: 4.0,
            combine_bytes: 4.0,
        }
    }
}

/// One hardware file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    pub name: String,
    pub kind: DeviceKind,
    #[serde(default = "eight")]
    pub gpus_per_node: usize,
    pub compute: Compute,
    pub runtime: RuntimeCosts,
    pub nvlink: Option<WireSpec>,
    pub network: Option<WireSpec>,
    #[serde(default)]
    pub transfer: TransferBytes,
    /// Bytes per weight parameter as deployed (e.g. 1 for FP8 weights); the model's dtype when
    /// absent.
    pub weight_bytes: Option<f64>,
    /// Measured kernel times (`measured.rs`), which replace the roofline for the kinds they
    /// cover; `troupe calibrate` writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<MeasuredKernels>,
}

fn eight() -> usize {
    8
}

impl Hardware {
    /// A built-in by name, or else a TOML file at `name_or_path`.
    pub fn load(name_or_path: &str) -> Result<Hardware> {
        if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            return Hardware::parse(text, name_or_path);
        }
        let path = Path::new(name_or_path);
        if !path.is_file() {
            return Err(SimError::UnknownHardware(name_or_path.to_string()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Hardware {
            source_name: name_or_path.to_string(),
            field: String::new(),
            message: e.to_string(),
        })?;
        Hardware::parse(&text, name_or_path)
    }

    /// Parses and checks a hardware file's text (`source_name` names it in errors).
    pub fn parse(text: &str, source_name: &str) -> Result<Hardware> {
        let hw: Hardware = toml::from_str(text).map_err(|e| SimError::Hardware {
            source_name: source_name.to_string(),
            field: String::new(),
            message: e.message().to_string(),
        })?;
        hw.check(source_name)?;
        Ok(hw)
    }

    /// The file as TOML (what `troupe calibrate` writes).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    fn check(&self, source_name: &str) -> Result<()> {
        let bad = |field: &str, v: f64, what: &str| SimError::Hardware {
            source_name: source_name.to_string(),
            field: field.to_string(),
            message: format!("expected {what}, found {v}"),
        };
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1e12 {
                Ok(())
            } else {
                Err(bad(field, v, "a finite positive number"))
            }
        };
        let non_negative = |field: &str, v: f64| {
            if v.is_finite() && (0.0..1e9).contains(&v) {
                Ok(())
            } else {
                Err(bad(field, v, "a finite number ≥ 0"))
            }
        };
        let c = &self.compute;
        positive("compute.tflops_bf16", c.tflops_bf16)?;
        if let Some(v) = c.tflops_fp8 {
            positive("compute.tflops_fp8", v)?;
        }
        if let Some(v) = c.tflops_f32 {
            positive("compute.tflops_f32", v)?;
        }
        positive("compute.memory_gbps", c.memory_gbps)?;
        if !(c.efficiency > 0.0 && c.efficiency <= 1.0) {
            return Err(bad(
                "compute.efficiency",
                c.efficiency,
                "a number in (0, 1]",
            ));
        }
        non_negative("compute.launch_us", c.launch_us)?;
        if let Some(v) = c.stream_speedup {
            if !(v.is_finite() && (1.0..=64.0).contains(&v)) {
                return Err(bad("compute.stream_speedup", v, "a number in [1, 64]"));
            }
        }
        non_negative("runtime.hop_us", self.runtime.hop_us)?;
        non_negative("runtime.issue_us", self.runtime.issue_us)?;
        non_negative("runtime.link_hop_us", self.runtime.link_hop_us)?;
        non_negative("runtime.link_wake_us", self.runtime.link_wake_us)?;
        non_negative("runtime.fanout_us", self.runtime.fanout_us)?;
        non_negative("runtime.fanout_message_us", self.runtime.fanout_message_us)?;
        for (name, w) in [("nvlink", &self.nvlink), ("network", &self.network)] {
            if let Some(w) = w {
                positive(&format!("{name}.gbps"), w.gbps)?;
                non_negative(&format!("{name}.latency_us"), w.latency_us)?;
            }
        }
        positive("transfer.dispatch_bytes", self.transfer.dispatch_bytes)?;
        positive("transfer.combine_bytes", self.transfer.combine_bytes)?;
        if let Some(v) = self.weight_bytes {
            positive("weight_bytes", v)?;
        }
        if self.gpus_per_node == 0 || self.gpus_per_node > 1024 {
            return Err(bad("gpus_per_node", self.gpus_per_node as f64, "1..=1024"));
        }
        if let Some(k) = &self.kernels {
            k.check(source_name)?;
        }
        Ok(())
    }

    /// Peak FLOP/s for weights of `weight_bytes` bytes per parameter.
    pub fn peak_flops(&self, weight_bytes: f64) -> f64 {
        let c = &self.compute;
        let tflops = if weight_bytes <= 1.0 {
            c.tflops_fp8.unwrap_or(c.tflops_bf16)
        } else if weight_bytes >= 4.0 {
            c.tflops_f32.unwrap_or(c.tflops_bf16)
        } else {
            c.tflops_bf16
        };
        tflops * 1e12
    }

    /// A kernel's duration in µs: max (or, with `roofline = "sum"`, the sum) of bytes / bandwidth
    /// and flops / peak, / efficiency, + launch.
    pub fn kernel_us(&self, bytes: f64, flops: f64, peak_flops: f64) -> f64 {
        let c = &self.compute;
        let memory = bytes / (c.memory_gbps * 1e9);
        let math = flops / peak_flops;
        let t = match c.roofline.unwrap_or(Roofline::Max) {
            Roofline::Max => memory.max(math),
            Roofline::Sum => memory + math,
        };
        t / c.efficiency * 1e6 + c.launch_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_parse_and_bad_fields_are_named() {
        for (name, _) in BUILT_IN {
            let hw = Hardware::load(name).unwrap();
            assert_eq!(hw.name, name);
        }
        let h800 = Hardware::load("h800").unwrap();
        let text = h800.to_toml();
        assert_eq!(Hardware::parse(&text, "round-trip").unwrap(), h800);
        let bad = text.replace("efficiency = 0.6", "efficiency = 1.5");
        let e = Hardware::parse(&bad, "bad.toml").unwrap_err().to_string();
        assert!(e.contains("compute.efficiency"), "{e}");
        let unknown = format!("{text}\nbogus = 1\n");
        let e = Hardware::parse(&unknown, "u.toml").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(matches!(
            Hardware::load("no-such-hardware"),
            Err(SimError::UnknownHardware(_))
        ));
    }

    #[test]
    fn kernel_time_is_the_roofline_over_efficiency_plus_launch() {
        let hw = Hardware::load("h100").unwrap();
        // 3.35 GB at 3350 GB/s = 1 ms; / 0.6 + 4 µs.
        let t = hw.kernel_us(3.35e9, 1.0, hw.peak_flops(2.0));
        assert!((t - (1e3 / 0.6 + 4.0)).abs() < 1e-6, "{t}");
        // 989 TFLOP at bf16 peak = 1 s.
        let t = hw.kernel_us(1.0, 989e12, hw.peak_flops(2.0));
        assert!((t - (1e6 / 0.6 + 4.0)).abs() < 1e-3, "{t}");
        // Both at once: `max` takes the longer (1 s), `sum` adds them (1.001 s).
        let both = |hw: &Hardware| hw.kernel_us(3.35e9, 989e12, hw.peak_flops(2.0));
        assert!((both(&hw) - (1e6 / 0.6 + 4.0)).abs() < 1e-3);
        let mut sum = hw.clone();
        sum.compute.roofline = Some(Roofline::Sum);
        assert!((both(&sum) - ((1e6 + 1e3) / 0.6 + 4.0)).abs() < 1e-3);
    }

    #[test]
    fn calibrated_cpu_fields_parse_and_are_checked() {
        let cpu = Hardware::load("cpu").unwrap();
        let text = cpu.to_toml();
        assert!(!text.contains("stream_speedup") && !text.contains("link_hop_us"));
        let with = text
            .replace(
                "[compute]",
                "[compute]\nstream_speedup = 1.3\nroofline = \"sum\"",
            )
            .replace("[runtime]", "[runtime]\nlink_hop_us = 120.0");
        let hw = Hardware::parse(&with, "calibrated.toml").unwrap();
        assert_eq!(hw.compute.stream_speedup, Some(1.3));
        assert_eq!(hw.compute.roofline, Some(Roofline::Sum));
        assert_eq!(hw.runtime.link_hop_us, 120.0);
        assert_eq!(Hardware::parse(&hw.to_toml(), "round-trip").unwrap(), hw);
        for (bad, field) in [
            ("stream_speedup = 1.3", "stream_speedup = 0.5"),
            ("link_hop_us = 120.0", "link_hop_us = -1.0"),
        ] {
            let e = Hardware::parse(&with.replace(bad, field), "bad.toml").unwrap_err();
            let name = field.split(' ').next().unwrap();
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}
