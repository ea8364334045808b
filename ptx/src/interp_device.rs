//! `InterpDevice`: the adapter between troupe-ptx's `Device` trait and the PTX interpreter crate
//! (`troupe-ptx-interp`, its `SimulatedGpu`), and `InterpBackend`, the engine `Backend` on it
//! (`--device ptx-interp`).
//!
//! Each kernel file of the embedded library is parsed once, on its first launch, and cached. Launches
//! use exactly the `Launch` the CUDA device gets (grid, block, dynamic shared memory), optionally
//! with the interpreter's shared-memory race detector. Interpreter faults (bad launch, out-of-bounds
//! access, race, malformed PTX) become `GpuError::Ptx`, which keeps the typed `PtxError`; through the
//! `Backend` trait they surface as `EngineError::Backend`. Buffers are freed when dropped.
//!
//! For tests, [`InterpDevice::with_source`] replaces one kernel file's text (broken variants), and
//! [`InterpDevice::stats`] reports the thread-instructions executed per kernel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::device::{Arg, Device};
use crate::error::{GpuError, GpuResult};
use crate::interp::{self, DevicePtr, LaunchConfig, Module, ParamValue, SimulatedGpu};
use crate::kernels::{file_of, KernelFile};
use crate::launch::Launch;
use crate::ops::GpuBackend;

/// The engine `Backend` on the PTX interpreter.
pub type InterpBackend = GpuBackend<InterpDevice>;

impl InterpBackend {
    /// The interpreter backend with default options (no race detector).
    pub fn interp() -> Self {
        GpuBackend::new(InterpDevice::new(InterpOptions::default()))
    }
}

/// Options of the interpreter device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterpOptions {
    /// Run every launch with the shared-memory race detector (slower; on in tests).
    pub race_check: bool,
    /// Compute capability the device reports (selects which kernel files may be launched).
    pub sm: u32,
}

impl Default for InterpOptions {
    fn default() -> Self {
        InterpOptions {
            race_check: false,
            sm: 89,
        }
    }
}

/// Accumulated statistics of every launch of one kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub launches: u64,
    /// Thread-level instructions (`interp::LaunchStats::instructions`), summed.
    pub instructions: u64,
    pub ctas: u64,
    /// Wall time spent inside the interpreter's launch.
    pub time: Duration,
}

impl KernelStats {
    /// Thread-instructions per second of interpreter time.
    pub fn instructions_per_second(&self) -> f64 {
        self.instructions as f64 / self.time.as_secs_f64().max(1e-9)
    }
}

/// The PTX interpreter as a `Device`.
pub struct InterpDevice {
    mem: Arc<Mutex<SimulatedGpu>>,
    modules: Mutex<HashMap<&'static str, Arc<Module>>>,
    overrides: HashMap<&'static str, String>,
    stats: Mutex<HashMap<&'static str, KernelStats>>,
    opts: InterpOptions,
}

/// A buffer in interpreter global memory; freed on drop.
pub struct InterpBuf {
    ptr: DevicePtr,
    bytes: usize,
    mem: Arc<Mutex<SimulatedGpu>>,
}

impl Drop for InterpBuf {
    fn drop(&mut self) {
        // A poisoned lock only means another launch panicked; the memory is still ours to free.
        let mut m = match self.mem.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let _ = m.free(self.ptr);
    }
}

fn ptx_err(kernel: &str) -> impl FnOnce(interp::PtxError) -> GpuError + '_ {
    move |error| GpuError::Ptx {
        kernel: kernel.to_string(),
        error: Box::new(error),
    }
}

fn poisoned(what: &str) -> GpuError {
    GpuError::launch(
        "ptx-interp",
        format!("a thread panicked while holding the interpreter {what}"),
    )
}

impl InterpDevice {
    pub fn new(opts: InterpOptions) -> Self {
        InterpDevice {
            mem: Arc::new(Mutex::new(SimulatedGpu::new())),
            modules: Mutex::new(HashMap::new()),
            overrides: HashMap::new(),
            stats: Mutex::new(HashMap::new()),
            opts,
        }
    }

    /// Replaces the text of kernel file `file` (e.g. `"rms_norm.ptx"`) by `source` for every launch
    /// of its entries on this device. Used by tests to run deliberately broken variants.
    pub fn with_source(mut self, file: &str, source: String) -> GpuResult<Self> {
        let f = crate::kernels::LIBRARY
            .iter()
            .find(|f| f.file == file)
            .ok_or_else(|| GpuError::UnknownKernel(file.to_string()))?;
        self.overrides.insert(f.file, source);
        if let Ok(mut m) = self.modules.lock() {
            m.remove(f.file);
        }
        Ok(self)
    }

    /// Statistics per kernel entry, accumulated since the device was created.
    pub fn stats(&self) -> HashMap<&'static str, KernelStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn lock_mem(&self) -> GpuResult<MutexGuard<'_, SimulatedGpu>> {
        self.mem.lock().map_err(|_| poisoned("memory"))
    }

    /// The parsed module of `file`, parsing it on first use.
    fn module(&self, file: &'static KernelFile, kernel: &str) -> GpuResult<Arc<Module>> {
        let mut mods = self.modules.lock().map_err(|_| poisoned("module cache"))?;
        if let Some(m) = mods.get(file.file) {
            return Ok(m.clone());
        }
        let src = self
            .overrides
            .get(file.file)
            .map_or(file.source, String::as_str);
        let m = Arc::new(Module::parse(src).map_err(ptx_err(kernel))?);
        mods.insert(file.file, m.clone());
        Ok(m)
    }

    fn buf(&self, ptr: DevicePtr, bytes: usize) -> InterpBuf {
        InterpBuf {
            ptr,
            bytes,
            mem: self.mem.clone(),
        }
    }
}

impl Device for InterpDevice {
    type Buf = InterpBuf;

    fn name(&self) -> String {
        "ptx-interp".into()
    }

    fn sm(&self) -> u32 {
        self.opts.sm
    }

    fn upload(&self, bytes: &[u8]) -> GpuResult<InterpBuf> {
        let mut m = self.lock_mem()?;
        // Never allocate 0 bytes: kernels may still be handed the pointer.
        let ptr = m.alloc(bytes.len().max(4)).map_err(ptx_err("upload"))?;
        m.write(ptr, bytes).map_err(ptx_err("upload"))?;
        Ok(self.buf(ptr, bytes.len()))
    }

    fn alloc(&self, bytes: usize) -> GpuResult<InterpBuf> {
        let ptr = self
            .lock_mem()?
            .alloc(bytes.max(4))
            .map_err(ptx_err("alloc"))?;
        Ok(self.buf(ptr, bytes))
    }

    fn write(&self, buf: &mut InterpBuf, offset: usize, bytes: &[u8]) -> GpuResult<()> {
        if offset + bytes.len() > buf.bytes.max(4) {
            return Err(GpuError::launch(
                "write",
                format!(
                    "{} bytes at {offset} past a {}-byte buffer",
                    bytes.len(),
                    buf.bytes
                ),
            ));
        }
        self.lock_mem()?
            .write(DevicePtr(buf.ptr.0 + offset as u64), bytes)
            .map_err(ptx_err("write"))
    }

    fn download(&self, buf: &InterpBuf, bytes: usize) -> GpuResult<Vec<u8>> {
        if bytes > buf.bytes.max(4) {
            return Err(GpuError::launch(
                "download",
                format!("{bytes} bytes requested from a {}-byte buffer", buf.bytes),
            ));
        }
        self.lock_mem()?
            .read(buf.ptr, bytes)
            .map_err(ptx_err("download"))
    }

    fn address(&self, buf: &InterpBuf) -> u64 {
        buf.ptr.0
    }

    fn launch(&self, l: &Launch, args: &[Arg<'_, InterpBuf>]) -> GpuResult<()> {
        let file = file_of(l.kernel)?;
        if file.min_sm > self.opts.sm {
            return Err(GpuError::launch(
                l.kernel,
                format!(
                    "needs sm_{}, the interpreter device is sm_{}",
                    file.min_sm, self.opts.sm
                ),
            ));
        }
        let module = self.module(file, l.kernel)?;
        let params: Vec<ParamValue> = args
            .iter()
            .map(|a| match a {
                Arg::Buf(b) => ParamValue::Ptr(b.ptr),
                Arg::BufAt(b, off) => ParamValue::Ptr(DevicePtr(b.ptr.0 + *off as u64)),
                Arg::Null => ParamValue::Ptr(DevicePtr(0)),
                Arg::U32(v) => ParamValue::U32(*v),
                Arg::F32(v) => ParamValue::F32(*v),
            })
            .collect();
        let cfg = LaunchConfig {
            grid: l.grid,
            block: l.block,
            dynamic_shared_bytes: l.shared_bytes,
            race_check: self.opts.race_check,
        };
        let t0 = Instant::now();
        let st = self
            .lock_mem()?
            .launch(&module, l.kernel, &cfg, &params)
            .map_err(ptx_err(l.kernel))?;
        let dt = t0.elapsed();
        let mut stats = self.stats.lock().map_err(|_| poisoned("statistics"))?;
        let s = stats.entry(l.kernel).or_default();
        s.launches += 1;
        s.instructions += st.instructions;
        s.ctas += st.ctas;
        s.time += dt;
        Ok(())
    }
}
