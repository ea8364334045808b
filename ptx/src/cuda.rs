//! `CudaDevice`: the `Device` trait on a CUDA stream through cudarc (dynamic loading, so the crate
//! builds and runs on machines without CUDA), and `CudaBackend`, the engine `Backend` on it.
//!
//! cudarc panics if `libcuda` is missing, so `CudaDevice::new` probes for the driver library first
//! and returns `GpuError::NoDriver` instead. Kernels are loaded from the embedded PTX text with
//! `cuModuleLoadData` (the driver JIT-compiles PTX for the device); files whose `.target` is newer
//! than the device are skipped.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::sys::{CUdeviceptr, CUfunction, CUmodule};
use cudarc::driver::{result, CudaContext, CudaSlice, CudaStream, DevicePtr};

use crate::device::{Arg, Device};
use crate::error::{GpuError, GpuResult};
use crate::kernels::LIBRARY;
use crate::launch::Launch;
use crate::ops::GpuBackend;

/// The engine `Backend` on a CUDA device.
pub type CudaBackend = GpuBackend<CudaDevice>;

impl CudaBackend {
    /// Opens device `ordinal`; `GpuError::NoDriver` when no CUDA driver library is installed.
    pub fn cuda(ordinal: usize) -> GpuResult<Self> {
        Ok(GpuBackend::new(CudaDevice::new(ordinal)?))
    }
}

/// True when the CUDA driver library can be loaded (checked before any other cudarc call).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names; loads nothing else.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn drv(call: &str) -> impl FnOnce(result::DriverError) -> GpuError + '_ {
    move |e| GpuError::Driver {
        call: call.to_string(),
        message: format!("{e:?}"),
    }
}

/// Loaded modules and their functions (raw driver handles).
struct Modules {
    modules: Vec<CUmodule>,
    functions: HashMap<&'static str, CUfunction>,
}

// SAFETY: CUDA driver handles may be used from any thread once the context is bound, which every
// method of CudaDevice does first.
unsafe impl Send for Modules {}
unsafe impl Sync for Modules {}

/// One CUDA device, its default stream and the loaded kernel library.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    sm: u32,
    ordinal: usize,
    mods: Modules,
}

impl CudaDevice {
    pub fn new(ordinal: usize) -> GpuResult<Self> {
        if !driver_present() {
            return Err(GpuError::NoDriver);
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("cuCtxCreate"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv("cuDeviceGetAttribute"))?;
        let sm = (major * 10 + minor) as u32;
        let stream = ctx.default_stream();
        let mut mods = Modules {
            modules: Vec::new(),
            functions: HashMap::new(),
        };
        for file in LIBRARY.iter().filter(|f| f.min_sm <= sm) {
            let src = CString::new(file.source)
                .map_err(|_| GpuError::launch(file.file, "PTX contains a NUL byte"))?;
            // SAFETY: a NUL-terminated PTX image; the context is current (CudaContext::new binds it).
            let module = unsafe { result::module::load_data(src.as_ptr() as *const c_void) }
                .map_err(drv("cuModuleLoadData"))?;
            mods.modules.push(module);
            for &entry in file.entries {
                let name =
                    CString::new(entry).map_err(|_| GpuError::UnknownKernel(entry.into()))?;
                // SAFETY: module was just loaded and stays loaded until drop.
                let f = unsafe { result::module::get_function(module, name) }
                    .map_err(drv("cuModuleGetFunction"))?;
                mods.functions.insert(entry, f);
            }
        }
        Ok(CudaDevice {
            ctx,
            stream,
            sm,
            ordinal,
            mods,
        })
    }

    fn bind(&self) -> GpuResult<()> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            for m in self.mods.modules.drain(..) {
                // SAFETY: each module was loaded by this device and is unloaded once.
                let _ = unsafe { result::module::unload(m) };
            }
        }
    }
}

/// A device buffer (bytes).
pub struct CudaBuf(CudaSlice<u8>);

impl Device for CudaDevice {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }
    fn sm(&self) -> u32 {
        self.sm
    }
    fn upload(&self, bytes: &[u8]) -> GpuResult<CudaBuf> {
        self.bind()?;
        if bytes.is_empty() {
            return self.alloc(0);
        }
        self.stream
            .clone_htod(bytes)
            .map(CudaBuf)
            .map_err(drv("cuMemcpyHtoDAsync"))
    }
    fn alloc(&self, bytes: usize) -> GpuResult<CudaBuf> {
        self.bind()?;
        // Never allocate 0 bytes: kernels may still be handed the pointer.
        self.stream
            .alloc_zeros::<u8>(bytes.max(4))
            .map(CudaBuf)
            .map_err(drv("cuMemAllocAsync"))
    }
    fn write(&self, buf: &mut CudaBuf, offset: usize, bytes: &[u8]) -> GpuResult<()> {
        self.bind()?;
        let end = offset
            .checked_add(bytes.len())
            .filter(|&e| e <= buf.0.len())
            .ok_or_else(|| {
                GpuError::launch(
                    "write",
                    format!(
                        "{} bytes at {offset} past a {}-byte buffer",
                        bytes.len(),
                        buf.0.len()
                    ),
                )
            })?;
        if bytes.is_empty() {
            return Ok(());
        }
        let mut view = buf
            .0
            .try_slice_mut(offset..end)
            .ok_or_else(|| GpuError::launch("write", "buffer range"))?;
        self.stream
            .memcpy_htod(bytes, &mut view)
            .map_err(drv("cuMemcpyHtoDAsync"))
    }
    fn download(&self, buf: &CudaBuf, bytes: usize) -> GpuResult<Vec<u8>> {
        self.bind()?;
        let view = buf.0.try_slice(0..bytes).ok_or_else(|| {
            GpuError::launch(
                "download",
                format!("{bytes} bytes requested from a {}-byte buffer", buf.0.len()),
            )
        })?;
        let v = self
            .stream
            .clone_dtoh(&view)
            .map_err(drv("cuMemcpyDtoHAsync"))?;
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))?;
        Ok(v)
    }
    fn address(&self, buf: &CudaBuf) -> u64 {
        buf.0.device_ptr(&self.stream).0
    }
    fn launch(&self, l: &Launch, args: &[Arg<'_, CudaBuf>]) -> GpuResult<()> {
        self.bind()?;
        let f = *self.mods.functions.get(l.kernel).ok_or_else(|| {
            GpuError::launch(l.kernel, format!("not available on sm_{}", self.sm))
        })?;
        // Parameter values must outlive the launch call; the driver copies them at launch.
        enum Val {
            P(CUdeviceptr),
            U(u32),
            F(f32),
        }
        let mut vals: Vec<Val> = Vec::with_capacity(args.len());
        for a in args {
            vals.push(match a {
                Arg::Buf(b) => Val::P(b.0.device_ptr(&self.stream).0),
                Arg::BufAt(b, off) => Val::P(b.0.device_ptr(&self.stream).0 + *off as u64),
                Arg::Null => Val::P(0),
                Arg::U32(v) => Val::U(*v),
                Arg::F32(v) => Val::F(*v),
            });
        }
        let mut params: Vec<*mut c_void> = vals
            .iter_mut()
            .map(|v| match v {
                Val::P(p) => p as *mut CUdeviceptr as *mut c_void,
                Val::U(u) => u as *mut u32 as *mut c_void,
                Val::F(x) => x as *mut f32 as *mut c_void,
            })
            .collect();
        // SAFETY: `f` belongs to a loaded module; params point at live values matching the entry's
        // parameter list (kept in sync with the PTX by the op code and the interpreter tests).
        unsafe {
            result::launch_kernel(
                f,
                l.grid,
                l.block,
                l.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(drv("cuLaunchKernel"))
    }
}
