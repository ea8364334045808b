//! Shared helpers of the interpreter's tests: module headers, the `k(out, inp)` kernel template
//! with its launcher and store snippet, launch configurations with the race detector, a small
//! xorshift source, bf16 / f16 bit conversions, and the paths of troupe's kernel sources
//! (`ptx/kernels/`, one helper for all).

use std::path::PathBuf;

use troupe_ptx_interp::*;

/// Module header for sm_80 kernels.
pub const HDR: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";
/// Module header for sm_89 kernels (fp8 mma, e4m3/e5m2 conversions).
pub const HDR_SM89: &str = ".version 8.0\n.target sm_89\n.address_size 64\n";

/// Parse `HDR` + `body`, panicking with the parse error.
pub fn module(body: &str) -> Module {
    match Module::parse(&format!("{HDR}{body}")) {
        Ok(m) => m,
        Err(e) => panic!("parse failed: {e}"),
    }
}

/// Kernel `k(out, in)` template: `%rd1` = out, `%rd2` = in, `%r1` = global thread id.
pub fn kernel(body: &str) -> Module {
    module(&format!(
        ".visible .entry k(.param .u64 out, .param .u64 inp)\n{{\n\
         .reg .pred %p<8>;\n.reg .b16 %h<8>;\n.reg .b32 %r<40>;\n.reg .b64 %rd<20>;\n.reg .f32 %f<20>;\n\
         ld.param.u64 %rd1, [out];\nld.param.u64 %rd2, [inp];\n\
         mov.u32 %r1, %tid.x;\nmov.u32 %r2, %ctaid.x;\nmov.u32 %r3, %ntid.x;\nmad.lo.u32 %r1, %r2, %r3, %r1;\n\
         {body}\n}}\n"
    ))
}

/// Launch a [`kernel`] on `grid` × `block` threads with `input` and return `out_words` words.
pub fn run(
    m: &Module,
    grid: u32,
    block: u32,
    out_words: usize,
    input: &[u32],
) -> Result<Vec<u32>, PtxError> {
    let mut dev = SimulatedGpu::new();
    let out = dev.alloc(out_words * 4)?;
    let inp = dev.alloc(input.len().max(1) * 4)?;
    dev.write_u32(inp, input)?;
    dev.launch(
        m,
        "k",
        &LaunchConfig::linear(grid, block),
        &[ParamValue::Ptr(out), ParamValue::Ptr(inp)],
    )?;
    dev.read_u32(out, out_words)
}

/// Store `%r{reg}` to out[tid * stride + slot].
pub fn st(reg: u32, stride: u32, slot: u32) -> String {
    format!(
        "mul.lo.u32 %r39, %r1, {stride};\nadd.u32 %r39, %r39, {slot};\nmul.wide.u32 %rd18, %r39, 4;\n\
         add.u64 %rd18, %rd1, %rd18;\nst.global.u32 [%rd18], %r{reg};\n"
    )
}

/// A 1-D launch configuration with the race detector switched `race`.
pub fn linear_cfg(grid: u32, block: u32, race: bool) -> LaunchConfig {
    let mut cfg = LaunchConfig::linear(grid, block);
    cfg.race_check = race;
    cfg
}

/// xorshift: deterministic test data without a dependency.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
    /// Uniform in [-1, 1] on a 1e-4 grid.
    pub fn unit(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
}

pub fn bf(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}
pub fn bf_val(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}
pub fn hf(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}
pub fn hf_val(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// `ptx/kernels/`: troupe's hand-written kernels (next to this crate, in troupe-ptx).
pub fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kernels")
}

/// The text of `ptx/kernels/<file>`; panics naming the path when it cannot be read.
pub fn kernel_source(file: &str) -> String {
    let path = kernels_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("kernel file {}: {e}", path.display()))
}

/// Every `ptx/kernels/*.ptx` file, sorted; panics when the directory is missing or has none.
pub fn kernel_files() -> Vec<PathBuf> {
    let dir = kernels_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("kernel directory {}: {e}", dir.display()));
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ptx"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .ptx files in {}", dir.display());
    files
}
