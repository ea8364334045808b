//! `Counted<D>`: a `Device` wrapper that counts what crosses the host↔device boundary (bytes each
//! way) and the kernel launches per entry name. `GpuBackend` runs every op through it, so
//! `Backend::counters` reports the device layer's own tally, weight uploads included.

use std::sync::{Mutex, MutexGuard};

use troupe_engine::device_tensor::DeviceCounters;

use crate::device::{Arg, Device};
use crate::error::{GpuError, GpuResult};
use crate::launch::Launch;

/// `D` with cumulative transfer and launch counters.
pub struct Counted<D: Device> {
    dev: D,
    counters: Mutex<DeviceCounters>,
}

impl<D: Device> Counted<D> {
    pub fn new(dev: D) -> Self {
        Counted {
            dev,
            counters: Mutex::new(DeviceCounters::default()),
        }
    }

    /// The wrapped device (launches through it are not counted).
    pub fn inner(&self) -> &D {
        &self.dev
    }

    /// The counters so far.
    pub fn counters(&self) -> DeviceCounters {
        self.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn lock(&self) -> GpuResult<MutexGuard<'_, DeviceCounters>> {
        self.counters.lock().map_err(|_| {
            GpuError::launch(
                "counters",
                "a thread panicked while holding the device counters",
            )
        })
    }
}

impl<D: Device> Device for Counted<D> {
    type Buf = D::Buf;

    fn sm(&self) -> u32 {
        self.dev.sm()
    }
    fn name(&self) -> String {
        self.dev.name()
    }
    fn upload(&self, bytes: &[u8]) -> GpuResult<D::Buf> {
        let b = self.dev.upload(bytes)?;
        self.lock()?.h2d_bytes += bytes.len() as u64;
        Ok(b)
    }
    fn alloc(&self, bytes: usize) -> GpuResult<D::Buf> {
        self.dev.alloc(bytes)
    }
    fn write(&self, buf: &mut D::Buf, offset: usize, bytes: &[u8]) -> GpuResult<()> {
        self.dev.write(buf, offset, bytes)?;
        self.lock()?.h2d_bytes += bytes.len() as u64;
        Ok(())
    }
    fn download(&self, buf: &D::Buf, bytes: usize) -> GpuResult<Vec<u8>> {
        let v = self.dev.download(buf, bytes)?;
        self.lock()?.d2h_bytes += v.len() as u64;
        Ok(v)
    }
    fn address(&self, buf: &D::Buf) -> u64 {
        self.dev.address(buf)
    }
    fn launch(&self, launch: &Launch, args: &[Arg<'_, D::Buf>]) -> GpuResult<()> {
        self.dev.launch(launch, args)?;
        *self
            .lock()?
            .launches
            .entry(launch.kernel.to_string())
            .or_default() += 1;
        Ok(())
    }
}
