//! The ops that move activation data between host and device (`upload`, `download`, `argmax`)
//! and the non-finite check, which moves nothing: `check_finite` launches `check_finite_f32`
//! into a sticky device flag (the first failing `PassSite`, its element and value), and the next
//! transfer reports it — `argmax` writes a sentinel id when the flag is set, `download` and
//! `routing_to_host` copy through `flag_copy_b32`, which marks word 0 — so on the happy path a
//! transfer reads its data and nothing else; the flag itself (12 bytes) is read only after a mark.

use troupe_engine::error::PassSite;
use troupe_engine::{DeviceTensor, EngineError, Result, Tensor};

use super::{lock, GpuBackend};
use crate::device::{bytes_u32, f32_bytes, Arg, Device};
use crate::error::GpuResult;
use crate::launch::{self, u32_of};

/// Word 0 of a flagged f32 download: a quiet NaN with a payload arithmetic never produces.
const F32_MARK: u32 = 0x7FC0_7E57;
/// Word 0 of a flagged id download, and argmax's sentinel.
const ID_MARK: u32 = u32::MAX;

/// The sticky non-finite flag of a backend: `[code, element, value bits]` on the device, the
/// sites behind the codes (code = index + 1) with the row width of their tensor, and whether a
/// check was launched since the flag was last read.
pub(crate) struct FiniteFlag<B> {
    buf: Option<B>,
    sites: Vec<(PassSite, usize)>,
    pending: bool,
}

impl<B> Default for FiniteFlag<B> {
    fn default() -> Self {
        FiniteFlag {
            buf: None,
            sites: Vec::new(),
            pending: false,
        }
    }
}

impl<D: Device> GpuBackend<D> {
    pub(super) fn upload_op(&self, t: &Tensor) -> Result<DeviceTensor> {
        let (rows, cols) = (t.rows(), t.cols());
        let buf = self.on_device(|| self.dev.upload(&f32_bytes(t.data())))?;
        Ok(self.tensor(rows, cols, buf))
    }

    pub(super) fn download_op(&self, t: &DeviceTensor) -> Result<Tensor> {
        let src = self.buf("download", t)?;
        let n = t.rows() * t.cols();
        let words = self.read_flagged(src, n, F32_MARK)?;
        Tensor::matrix(
            t.rows(),
            t.cols(),
            words.into_iter().map(f32::from_bits).collect(),
        )
    }

    pub(super) fn argmax_op(&self, logits: &DeviceTensor) -> Result<Vec<u32>> {
        let x = self.buf("argmax", logits)?;
        let rows = logits.rows();
        let ids = self.on_device(|| {
            if rows == 0 {
                return Ok(Vec::new());
            }
            let out = self.dev.alloc(rows * 4)?;
            let l = launch::argmax(rows)?;
            let mut fl = lock(&self.finite, "non-finite flag")?;
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(x),
                    Arg::U32(u32_of(l.kernel, "rows", rows)?),
                    Arg::U32(u32_of(l.kernel, "cols", logits.cols())?),
                    fl.buf.as_ref().map_or(Arg::Null, Arg::Buf),
                ],
            )?;
            // The kernel read the flag after every check launched so far.
            fl.pending = false;
            drop(fl);
            Ok(bytes_u32(&self.dev.download(&out, rows * 4)?))
        })?;
        if ids.contains(&ID_MARK) {
            self.report_finite()?;
        }
        Ok(ids)
    }

    /// The ids of a routing read back through the flag (word 0 marked when a check failed).
    pub(super) fn download_ids(&self, ids: &D::Buf, n: usize) -> Result<Vec<u32>> {
        self.read_flagged(ids, n, ID_MARK)
    }

    /// The first `n` words of `src`; while checks are pending they are read through
    /// `flag_copy_b32`, and a `mark` in word 0 makes the flag be read and reported.
    fn read_flagged(&self, src: &D::Buf, n: usize, mark: u32) -> Result<Vec<u32>> {
        let words = self.on_device(|| {
            if n == 0 {
                return Ok(Vec::new());
            }
            let fl = lock(&self.finite, "non-finite flag")?;
            let staged = match (&fl.buf, fl.pending) {
                (Some(flag), true) => Some(self.flag_copy(src, n, flag, mark)?),
                _ => None,
            };
            drop(fl);
            Ok(bytes_u32(
                &self.dev.download(staged.as_ref().unwrap_or(src), n * 4)?,
            ))
        })?;
        if words.first() == Some(&mark) {
            self.report_finite()?;
        }
        Ok(words)
    }

    pub(super) fn check_finite_op(&self, x: &DeviceTensor, at: PassSite) -> Result<()> {
        let xb = self.buf("check_finite", x)?;
        let n = x.rows() * x.cols();
        if n == 0 {
            return Ok(());
        }
        self.on_device(|| {
            let mut fl = lock(&self.finite, "non-finite flag")?;
            if fl.buf.is_none() {
                fl.buf = Some(self.dev.alloc(12)?);
            }
            let code = match fl.sites.iter().position(|s| *s == (at, x.cols())) {
                Some(i) => i + 1,
                None => {
                    fl.sites.push((at, x.cols()));
                    fl.sites.len()
                }
            };
            let l = launch::check_finite(n)?;
            if let Some(flag) = &fl.buf {
                self.dev.launch(
                    &l,
                    &[
                        Arg::Buf(flag),
                        Arg::Buf(xb),
                        Arg::U32(u32_of(l.kernel, "n", n)?),
                        Arg::U32(u32_of(l.kernel, "code", code)?),
                    ],
                )?;
            }
            fl.pending = true;
            Ok(())
        })
    }

    /// `src` copied to a new buffer with word 0 replaced by `mark` when the flag is set.
    fn flag_copy(&self, src: &D::Buf, n: usize, flag: &D::Buf, mark: u32) -> GpuResult<D::Buf> {
        let out = self.dev.alloc(n * 4)?;
        let l = launch::flag_copy(n)?;
        self.dev.launch(
            &l,
            &[
                Arg::Buf(&out),
                Arg::Buf(src),
                Arg::U32(u32_of(l.kernel, "n", n)?),
                Arg::Buf(flag),
                Arg::U32(mark),
            ],
        )?;
        Ok(out)
    }

    /// Reads the flag (12 bytes); when set, clears it and fails with the first failing site.
    fn report_finite(&self) -> Result<()> {
        let found = self.on_device(|| {
            let mut fl = lock(&self.finite, "non-finite flag")?;
            fl.pending = false;
            let Some(flag) = fl.buf.as_mut() else {
                return Ok(None);
            };
            let w = bytes_u32(&self.dev.download(flag, 12)?);
            if w[0] == 0 {
                return Ok(None);
            }
            self.dev.write(flag, 0, &[0u8; 12])?;
            Ok(fl
                .sites
                .get(w[0] as usize - 1)
                .map(|&(site, cols)| (site, w[1] as usize / cols.max(1), f32::from_bits(w[2]))))
        })?;
        match found {
            Some((layer, row, value)) => Err(EngineError::NonFinite { layer, row, value }),
            None => Ok(()),
        }
    }
}
