//! troupe-ptx-interp: a CPU interpreter for troupe's hand-written PTX kernels, with real SIMT
//! semantics. It depends on nothing else in troupe; `troupe-ptx` runs its kernel library on it
//! through an adapter (`troupe_ptx::interp_device`).
//!
//! No GPU is available, so every kernel in `ptx/kernels/` is executed here in tests and
//! compared against the CPU kernels. The pipeline is:
//!
//! * `lexer` → `parser` (syntax) → `decode`/`decode_ops`/`decode_mma` (semantic
//!   decoding into the compact [`ast::Op`] enum: registers become slot numbers, labels
//!   become instruction indices, immediates are typed; unsupported PTX is rejected at
//!   parse time with [`PtxError::Unsupported`]).
//! * [`SimulatedGpu::launch`] runs the grid CTA by CTA; inside a CTA, warps of 32 lanes are
//!   scheduled round-robin (`warp`), each issuing the instruction at the minimum PC of
//!   its runnable lanes under an active mask (divergence and reconvergence), blocking
//!   at `bar.sync` until the whole CTA arrives, with deadlock detection.
//! * `exec`, `intops`, `float`, `convert`, `exec_mem`, `collective`, `mma` implement
//!   the per-instruction semantics; `machine` holds the state spaces and address
//!   checks; `race` is the optional shared-memory race detector.
//!
//! See `ptx/interp/README.md` for the supported subset and documented deviations from
//! real hardware.
//!
//! ```no_run
//! use troupe_ptx_interp::*;
//! let module = Module::parse(".version 8.0\n.target sm_80\n.address_size 64\n\
//!     .visible .entry k(.param .u64 p) { ret; }").unwrap();
//! let mut gpu = SimulatedGpu::new();
//! let buf = gpu.alloc(1024).unwrap();
//! let cfg = LaunchConfig::linear(1, 32);
//! gpu.launch(&module, "k", &cfg, &[ParamValue::Ptr(buf)]).unwrap();
//! ```

// `x % n != 0` rather than `is_multiple_of` (stable only since 1.87; the workspace targets 1.80).
#![allow(clippy::manual_is_multiple_of)]

pub mod ast;
mod collective;
mod convert;
mod decode;
mod decode_arith;
mod decode_mem;
mod decode_mma;
mod decode_ops;
pub mod error;
mod exec;
mod exec_mem;
mod fastpath;
mod float;
mod intops;
mod lexer;
mod machine;
mod memory;
mod mma;
mod parse_body;
mod parser;
mod program;
mod race;
mod simulated_gpu;
mod warp;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

pub use error::{Dim3, PtxError, RaceAccess, Space};
pub use simulated_gpu::{SimulatedGpu, DEFAULT_INSTRUCTION_LIMIT, MAX_SHARED};

/// A device address (global memory). Never 0 for a live allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` past this one.
    pub fn offset(self, bytes: u64) -> DevicePtr {
        DevicePtr(self.0.wrapping_add(bytes))
    }
}

/// Grid / block shape of a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub dynamic_shared_bytes: u32,
    /// Enable the shared-memory race detector (slower).
    pub race_check: bool,
}

impl LaunchConfig {
    pub fn new(grid: (u32, u32, u32), block: (u32, u32, u32)) -> Self {
        LaunchConfig {
            grid,
            block,
            dynamic_shared_bytes: 0,
            race_check: false,
        }
    }
    /// 1-D grid of 1-D blocks.
    pub fn linear(grid_x: u32, block_x: u32) -> Self {
        Self::new((grid_x, 1, 1), (block_x, 1, 1))
    }
}

impl Default for LaunchConfig {
    fn default() -> Self {
        Self::new((1, 1, 1), (1, 1, 1))
    }
}

/// A kernel argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamValue {
    U32(u32),
    S32(i32),
    U64(u64),
    F32(f32),
    Ptr(DevicePtr),
    S64(i64),
    F64(f64),
}

/// Statistics of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LaunchStats {
    /// Thread-level instructions issued (active lanes per issued warp instruction,
    /// including lanes whose guard predicate was false).
    pub instructions: u64,
    pub ctas: u64,
    pub warps: u64,
}

/// Largest module-level `.global` / `.const` / `.shared` variable accepted.
const MAX_MODULE_VAR: u32 = 256 << 20;

static NEXT_MODULE_UID: AtomicU64 = AtomicU64::new(1);

/// A parsed and pre-decoded PTX module.
#[derive(Debug, Clone)]
pub struct Module {
    kernels: Vec<ast::Kernel>,
    globals: Vec<ast::GlobalVar>,
    consts: Vec<u8>,
    uid: u64,
}

fn init_bytes(v: &parser::VarDecl) -> Result<Vec<u8>, PtxError> {
    let mut out = vec![0u8; v.size as usize];
    let esz = v.ty.bytes().max(1) as usize;
    if v.init.len() * esz > out.len() {
        return Err(PtxError::parse(
            v.line,
            format!("too many initializers for `{}`", v.name),
        ));
    }
    for (i, l) in v.init.iter().enumerate() {
        let bits = decode::lit_bits(l, v.ty);
        memory::write_le(&mut out[i * esz..(i + 1) * esz], bits);
    }
    Ok(out)
}

impl Module {
    /// Parse and decode a PTX source file.
    pub fn parse(src: &str) -> Result<Module, PtxError> {
        let tokens = lexer::tokenize(src)?;
        let raw = parser::parse_module(&tokens)?;
        let mut consts = Vec::new();
        let mut const_syms = HashMap::new();
        let mut globals = Vec::new();
        let mut global_syms = HashMap::new();
        let mut shared = Vec::new();
        for v in &raw.vars {
            if v.size > MAX_MODULE_VAR {
                return Err(PtxError::parse(
                    v.line,
                    format!("`{}` is larger than {MAX_MODULE_VAR} bytes", v.name),
                ));
            }
            match v.space.as_str() {
                "const" => {
                    let a = v.align.max(1) as usize;
                    let off = consts.len().div_ceil(a) * a;
                    consts.resize(off, 0);
                    consts.extend(init_bytes(v)?);
                    const_syms.insert(v.name.clone(), off as u64);
                }
                "global" => {
                    global_syms.insert(v.name.clone(), globals.len() as u32);
                    globals.push(ast::GlobalVar {
                        name: v.name.clone(),
                        size: v.size,
                        align: v.align,
                        init: init_bytes(v)?,
                    });
                }
                _ => shared.push(v.clone()),
            }
        }
        let ctx = decode::ModuleCtx {
            shared,
            consts: const_syms,
            globals: global_syms,
        };
        let mut kernels: Vec<ast::Kernel> = Vec::new();
        for f in raw.funcs.iter().filter(|f| f.is_entry && f.has_body) {
            if kernels.iter().any(|k| k.name == f.name) {
                return Err(PtxError::parse(
                    f.line,
                    format!("duplicate kernel `{}`", f.name),
                ));
            }
            kernels.push(decode::build_kernel(f, &ctx)?);
        }
        Ok(Module {
            kernels,
            globals,
            consts,
            uid: NEXT_MODULE_UID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Names of all `.entry` kernels, in source order.
    pub fn kernel_names(&self) -> Vec<String> {
        self.kernels.iter().map(|k| k.name.clone()).collect()
    }

    pub(crate) fn kernel(&self, name: &str) -> Option<&ast::Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// Parameter names and types of a kernel (for diagnostics and launch helpers).
    pub fn kernel_params(&self, name: &str) -> Option<Vec<(String, ast::Ty)>> {
        self.kernel(name)
            .map(|k| k.params.iter().map(|p| (p.name.clone(), p.ty)).collect())
    }
}
