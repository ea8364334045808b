//! `SimulatedGpu`, the interpreter's device: global-memory API (alloc / read / write / free and typed
//! helpers), launch validation (grid/block limits, `.reqntid`/`.maxntid`, parameter
//! count / size / type, shared-memory size) and the launch loop that runs every CTA
//! through the warp scheduler and collects statistics.

use std::collections::HashMap;

use super::ast::*;
use super::error::{tid_of, PtxError};
use super::machine::{BarState, Machine, Warp};
use super::memory::GlobalMem;
use super::race::RaceDetector;
use super::warp::run_cta;
use super::{DevicePtr, LaunchConfig, LaunchStats, Module, ParamValue};

/// Maximum shared memory per CTA (sm_90: 227 KiB).
pub const MAX_SHARED: u32 = 227 * 1024;
/// Default per-launch cap on thread-instructions (guards against infinite loops).
pub const DEFAULT_INSTRUCTION_LIMIT: u64 = 4_000_000_000;

/// The simulated GPU a kernel runs on: global memory, module-global variables and the launch loop.
#[derive(Debug)]
pub struct SimulatedGpu {
    mem: GlobalMem,
    module_globals: HashMap<u64, Vec<u64>>,
    instruction_limit: u64,
}

impl Default for SimulatedGpu {
    fn default() -> Self {
        SimulatedGpu::new()
    }
}

fn mem_err(message: String) -> PtxError {
    PtxError::Memory { message }
}

macro_rules! typed_io {
    ($w:ident, $r:ident, $t:ty, $n:expr) => {
        pub fn $w(&mut self, ptr: DevicePtr, vals: &[$t]) -> Result<(), PtxError> {
            let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.write(ptr, &bytes)
        }
        pub fn $r(&self, ptr: DevicePtr, count: usize) -> Result<Vec<$t>, PtxError> {
            let b = self.read(ptr, count * $n)?;
            Ok(b.chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])))
                .collect())
        }
    };
}

impl SimulatedGpu {
    pub fn new() -> SimulatedGpu {
        SimulatedGpu {
            mem: GlobalMem::default(),
            module_globals: HashMap::new(),
            instruction_limit: DEFAULT_INSTRUCTION_LIMIT,
        }
    }

    /// Cap the thread-instructions a single launch may execute.
    pub fn set_instruction_limit(&mut self, limit: u64) {
        self.instruction_limit = limit;
    }

    /// Allocate `bytes` zeroed bytes, 256-byte aligned. Never returns address 0.
    pub fn alloc(&mut self, bytes: usize) -> Result<DevicePtr, PtxError> {
        self.mem.alloc(bytes).map(DevicePtr).ok_or_else(|| {
            mem_err(format!(
                "out of device address space allocating {bytes} bytes"
            ))
        })
    }

    pub fn write(&mut self, ptr: DevicePtr, bytes: &[u8]) -> Result<(), PtxError> {
        if bytes.is_empty() {
            return Ok(());
        }
        match self.mem.slice_mut(ptr.0, bytes.len()) {
            Some(s) => {
                s.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(mem_err(format!(
                "write of {} bytes at {:#x} is outside any live allocation",
                bytes.len(),
                ptr.0
            ))),
        }
    }

    pub fn read(&self, ptr: DevicePtr, len: usize) -> Result<Vec<u8>, PtxError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        self.mem
            .slice(ptr.0, len)
            .map(|s| s.to_vec())
            .ok_or_else(|| {
                mem_err(format!(
                    "read of {len} bytes at {:#x} is outside any live allocation",
                    ptr.0
                ))
            })
    }

    pub fn free(&mut self, ptr: DevicePtr) -> Result<(), PtxError> {
        if self.mem.free(ptr.0) {
            Ok(())
        } else {
            Err(mem_err(format!(
                "free of {:#x}, which is not the start of a live allocation",
                ptr.0
            )))
        }
    }

    /// Allocate and upload in one step.
    pub fn alloc_bytes(&mut self, bytes: &[u8]) -> Result<DevicePtr, PtxError> {
        let p = self.alloc(bytes.len())?;
        self.write(p, bytes)?;
        Ok(p)
    }

    pub fn alloc_f32(&mut self, vals: &[f32]) -> Result<DevicePtr, PtxError> {
        let p = self.alloc(vals.len() * 4)?;
        self.write_f32(p, vals)?;
        Ok(p)
    }

    typed_io!(write_f32, read_f32, f32, 4);
    typed_io!(write_f64, read_f64, f64, 8);
    typed_io!(write_u8, read_u8, u8, 1);
    typed_io!(write_u16, read_u16, u16, 2);
    typed_io!(write_u32, read_u32, u32, 4);
    typed_io!(write_i32, read_i32, i32, 4);
    typed_io!(write_u64, read_u64, u64, 8);
    typed_io!(write_i64, read_i64, i64, 8);

    pub fn write_bf16(&mut self, ptr: DevicePtr, vals: &[half::bf16]) -> Result<(), PtxError> {
        self.write_u16(ptr, &vals.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
    }
    pub fn read_bf16(&self, ptr: DevicePtr, count: usize) -> Result<Vec<half::bf16>, PtxError> {
        Ok(self
            .read_u16(ptr, count)?
            .into_iter()
            .map(half::bf16::from_bits)
            .collect())
    }
    pub fn write_f16(&mut self, ptr: DevicePtr, vals: &[half::f16]) -> Result<(), PtxError> {
        self.write_u16(ptr, &vals.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
    }
    pub fn read_f16(&self, ptr: DevicePtr, count: usize) -> Result<Vec<half::f16>, PtxError> {
        Ok(self
            .read_u16(ptr, count)?
            .into_iter()
            .map(half::f16::from_bits)
            .collect())
    }

    fn globals_for(&mut self, module: &Module) -> Result<Vec<u64>, PtxError> {
        if let Some(v) = self.module_globals.get(&module.uid) {
            return Ok(v.clone());
        }
        let mut addrs = Vec::new();
        for g in &module.globals {
            let p = self.alloc(g.size as usize)?;
            self.write(p, &g.init)?;
            addrs.push(p.0);
        }
        self.module_globals.insert(module.uid, addrs.clone());
        Ok(addrs)
    }

    /// Run `kernel` of `module` over the whole grid.
    pub fn launch(
        &mut self,
        module: &Module,
        kernel: &str,
        cfg: &LaunchConfig,
        params: &[ParamValue],
    ) -> Result<LaunchStats, PtxError> {
        let bad = |message: String| PtxError::BadLaunch {
            kernel: kernel.to_string(),
            message,
        };
        let k = module.kernel(kernel).ok_or_else(|| {
            bad(format!(
                "no .entry named `{kernel}` in module (kernels: {})",
                module.kernel_names().join(", ")
            ))
        })?;
        let (g, b) = (cfg.grid, cfg.block);
        if g.0 == 0 || g.1 == 0 || g.2 == 0 || b.0 == 0 || b.1 == 0 || b.2 == 0 {
            return Err(bad(format!("grid {g:?} and block {b:?} must be non-zero")));
        }
        let nthreads = b.0 as u64 * b.1 as u64 * b.2 as u64;
        if nthreads > 1024 || b.0 > 1024 || b.1 > 1024 || b.2 > 64 {
            return Err(bad(format!(
                "block {b:?} exceeds 1024 threads / (1024,1024,64)"
            )));
        }
        if g.0 > i32::MAX as u32 || g.1 > 65535 || g.2 > 65535 {
            return Err(bad(format!("grid {g:?} exceeds (2^31-1, 65535, 65535)")));
        }
        if let Some(r) = k.reqntid {
            if r != b {
                return Err(bad(format!("block {b:?} differs from .reqntid {r:?}")));
            }
        }
        if let Some(mx) = k.maxntid {
            if nthreads > mx.0 as u64 * mx.1 as u64 * mx.2 as u64 {
                return Err(bad(format!("block {b:?} exceeds .maxntid {mx:?}")));
            }
        }
        let shared_size = k.shared_static as u64 + cfg.dynamic_shared_bytes as u64;
        if shared_size > MAX_SHARED as u64 {
            return Err(bad(format!(
                "{shared_size} bytes of shared memory exceed the {MAX_SHARED}-byte limit"
            )));
        }
        let param_buf = build_params(k, params).map_err(bad)?;
        let gvars = self.globals_for(module)?;
        let nwarps = nthreads.div_ceil(32) as u32;
        let nslots = k.reg_masks.len();
        let mut warps: Vec<Warp> = (0..nwarps).map(|_| Warp::new(nslots)).collect();
        let mut m = Machine {
            kernel: k,
            consts: &module.consts,
            params: param_buf,
            gvars,
            gmem: &mut self.mem,
            grid: g,
            block: b,
            ctaid: (0, 0, 0),
            nthreads: nthreads as u32,
            shared: vec![0xFF; shared_size as usize],
            local: vec![0xFF; nwarps as usize * 32 * k.local_size as usize],
            race: cfg
                .race_check
                .then(|| RaceDetector::new(shared_size as usize)),
            bars: [BarState::default(); 16],
            instructions: 0,
        };
        let mut ctas = 0u64;
        for z in 0..g.2 {
            for y in 0..g.1 {
                for x in 0..g.0 {
                    m.ctaid = (x, y, z);
                    start_cta(
                        &mut m,
                        &mut warps,
                        cfg.dynamic_shared_bytes,
                        shared_size as u32,
                    );
                    run_cta(&mut m, &mut warps, self.instruction_limit)?;
                    ctas += 1;
                }
            }
        }
        Ok(LaunchStats {
            instructions: m.instructions,
            ctas,
            warps: ctas * nwarps as u64,
        })
    }
}

fn build_params(k: &Kernel, params: &[ParamValue]) -> Result<Vec<u8>, String> {
    if params.len() != k.params.len() {
        return Err(format!(
            "kernel takes {} parameters ({}), {} given",
            k.params.len(),
            k.params
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            params.len()
        ));
    }
    let mut buf = vec![0u8; k.param_size as usize];
    for (i, (p, v)) in k.params.iter().zip(params).enumerate() {
        let (bytes, ok): (Vec<u8>, bool) = match *v {
            ParamValue::U32(x) => (
                x.to_le_bytes().to_vec(),
                matches!(p.ty, Ty::U32 | Ty::S32 | Ty::B32),
            ),
            ParamValue::S32(x) => (
                x.to_le_bytes().to_vec(),
                matches!(p.ty, Ty::U32 | Ty::S32 | Ty::B32),
            ),
            ParamValue::F32(x) => (x.to_le_bytes().to_vec(), matches!(p.ty, Ty::F32 | Ty::B32)),
            ParamValue::U64(x) => (
                x.to_le_bytes().to_vec(),
                matches!(p.ty, Ty::U64 | Ty::S64 | Ty::B64),
            ),
            ParamValue::S64(x) => (
                x.to_le_bytes().to_vec(),
                matches!(p.ty, Ty::U64 | Ty::S64 | Ty::B64),
            ),
            ParamValue::F64(x) => (x.to_le_bytes().to_vec(), matches!(p.ty, Ty::F64 | Ty::B64)),
            ParamValue::Ptr(x) => (
                x.0.to_le_bytes().to_vec(),
                matches!(p.ty, Ty::U64 | Ty::S64 | Ty::B64),
            ),
        };
        if !ok || bytes.len() != p.size as usize {
            return Err(format!(
                "parameter {i} `{}` is .{:?} ({} bytes) but {v:?} was passed",
                p.name, p.ty, p.size
            ));
        }
        let o = p.offset as usize;
        buf[o..o + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(buf)
}

fn start_cta(m: &mut Machine, warps: &mut [Warp], dyn_shared: u32, total_shared: u32) {
    m.shared.fill(0xFF);
    m.local.fill(0xFF);
    m.bars = [BarState::default(); 16];
    if let Some(r) = m.race.as_mut() {
        r.new_cta();
    }
    let nwarps = warps.len() as u64;
    let (bx, by, bz) = m.block;
    for (wi, w) in warps.iter_mut().enumerate() {
        w.regs.fill(0);
        w.index = wi as u32;
        w.uniform = true;
        w.upc = 0;
        w.pc = [0; 32];
        w.exited = 0;
        w.blocked = 0;
        w.wepoch = 0;
        w.cp_committed = [0; 32];
        for q in w.cp.iter_mut() {
            q.clear();
        }
        let mut valid = 0u32;
        for lane in 0..32u32 {
            let lin = wi as u32 * 32 + lane;
            if lin >= m.nthreads {
                continue;
            }
            valid |= 1 << lane;
            let l = lane as usize;
            let tid = tid_of(m.block, lin);
            let vals: [(u32, u64); 22] = [
                (sreg::TID, tid.0 as u64),
                (sreg::TID + 1, tid.1 as u64),
                (sreg::TID + 2, tid.2 as u64),
                (sreg::NTID, bx as u64),
                (sreg::NTID + 1, by as u64),
                (sreg::NTID + 2, bz as u64),
                (sreg::CTAID, m.ctaid.0 as u64),
                (sreg::CTAID + 1, m.ctaid.1 as u64),
                (sreg::CTAID + 2, m.ctaid.2 as u64),
                (sreg::NCTAID, m.grid.0 as u64),
                (sreg::NCTAID + 1, m.grid.1 as u64),
                (sreg::NCTAID + 2, m.grid.2 as u64),
                (sreg::LANEID, lane as u64),
                (sreg::WARPID, wi as u64),
                (sreg::NWARPID, nwarps),
                (sreg::LANEMASK_EQ, 1u64 << lane),
                (sreg::LANEMASK_LE, (2u64 << lane) - 1),
                (sreg::LANEMASK_LT, (1u64 << lane) - 1),
                (sreg::LANEMASK_GE, (!((1u64 << lane) - 1)) & 0xFFFF_FFFF),
                (sreg::LANEMASK_GT, (!((2u64 << lane) - 1)) & 0xFFFF_FFFF),
                (sreg::DYN_SMEM, dyn_shared as u64),
                (sreg::TOTAL_SMEM, total_shared as u64),
            ];
            for (slot, v) in vals {
                w.regs[slot as usize * 32 + l] = v;
            }
            w.regs[sreg::NSMID as usize * 32 + l] = 1;
        }
        w.valid = valid;
    }
}
