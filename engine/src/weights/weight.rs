//! `Weight`: one named, immutable weight tensor, either borrowed from an mmap'd checkpoint or owned.
//!
//! Kernels read the raw elements through `as_f32`/`as_u16`/`as_u8`; nothing is converted at load
//! time, so a bf16 checkpoint stays bf16 in memory (half the bytes to stream per decoded token) and
//! an FP8 one stays FP8, its 128×128 block scales attached (`block_scales`), and an int8 one
//! int8 with its per-row scales for each 32 columns.

use std::sync::{Arc, OnceLock};

use memmap2::Mmap;

use crate::dtype::{bf16_to_f32, e4m3_to_f32, f16_to_f32, DType};
use crate::error::{EngineError, Result};
use crate::weights::fp8::BlockScales;

/// Where a weight's bytes live.
#[derive(Clone, Debug)]
enum Storage {
    /// A byte range of a memory-mapped safetensors file (no copy).
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        end: usize,
    },
    /// Bytes owned by the process (generated weights, or realigned copies), held as u32 words
    /// so the buffer is 4-byte aligned for f32 reads.
    Owned { words: Arc<Vec<u32>>, len: usize },
    /// Not loaded in this process: a rank of a deployment over several processes holds only
    /// the weights its actors use ([`Weight::absent`]).
    Absent,
}

/// A named weight tensor. Cheap to clone (shares the bytes).
#[derive(Clone, Debug)]
pub struct Weight {
    name: Arc<str>,
    dtype: DType,
    shape: Vec<usize>,
    storage: Storage,
    /// The dequantisation scales of an FP8 weight (None for every other dtype).
    scales: Option<Arc<BlockScales>>,
    /// Whether no element is e4m3's NaN (an FP8 weight's bytes, read once when first asked;
    /// shared by the clones).
    nan_free: Arc<OnceLock<bool>>,
}

impl Weight {
    /// Wraps a byte range of an mmap. Falls back to an aligned copy if the range is not aligned
    /// for the element type (safetensors does not promise alignment).
    pub fn mapped(
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        map: Arc<Mmap>,
        start: usize,
        end: usize,
    ) -> Result<Self> {
        let aligned = (map.as_ptr() as usize + start) % dtype.size() == 0;
        if aligned {
            Ok(Weight {
                name: name.into(),
                dtype,
                shape,
                storage: Storage::Mapped { map, start, end },
                scales: None,
                nan_free: Arc::default(),
            })
        } else {
            Weight::from_bytes(name, dtype, shape, &map[start..end])
        }
    }

    /// The one owned constructor: `words` hold the little-endian bytes, the first `len` used.
    fn owned(name: &str, dtype: DType, shape: Vec<usize>, words: Vec<u32>, len: usize) -> Self {
        debug_assert!(len <= words.len() * 4);
        Weight {
            name: name.into(),
            dtype,
            shape,
            storage: Storage::Owned {
                words: Arc::new(words),
                len,
            },
            scales: None,
            nan_free: Arc::default(),
        }
    }

    /// An owned weight of `numel` elements from little-endian words (two 16-bit elements per
    /// word, the low half first; one f32 per word), as the random generator produces them.
    pub(crate) fn from_words(name: &str, dtype: DType, shape: Vec<usize>, words: Vec<u32>) -> Self {
        let len = shape.iter().product::<usize>() * dtype.size();
        Weight::owned(name, dtype, shape, words, len)
    }

    /// Copies raw little-endian bytes into an owned, aligned buffer.
    pub fn from_bytes(name: &str, dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Self> {
        let mut words = try_alloc_words(name, bytes.len().div_ceil(4))?;
        words.extend(bytes.chunks(4).map(|chunk| {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            u32::from_le_bytes(w)
        }));
        Ok(Weight::owned(name, dtype, shape, words, bytes.len()))
    }

    /// A placeholder for a tensor this process does not load (another rank holds it): its
    /// name, dtype and shape, no bytes. Reading its elements is an error naming it.
    pub fn absent(name: &str, dtype: DType, shape: Vec<usize>) -> Self {
        Weight {
            name: name.into(),
            dtype,
            shape,
            storage: Storage::Absent,
            scales: None,
            nan_free: Arc::default(),
        }
    }

    /// Whether the bytes are in this process (false for [`Weight::absent`]).
    pub fn is_loaded(&self) -> bool {
        !matches!(self.storage, Storage::Absent)
    }

    /// An f32 weight from values.
    pub fn from_f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        let words: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        Weight::owned(name, DType::F32, shape, words, values.len() * 4)
    }

    /// A 16-bit weight (bf16 or f16) from raw bit patterns.
    pub fn from_u16(name: &str, dtype: DType, shape: Vec<usize>, bits: &[u16]) -> Self {
        let words: Vec<u32> = bits
            .chunks(2)
            .map(|p| p[0] as u32 | (p.get(1).copied().unwrap_or(0) as u32) << 16)
            .collect();
        Weight::owned(name, dtype, shape, words, bits.len() * 2)
    }

    /// This FP8 weight with its block scales attached; the scale grid must be f32
    /// `[ceil(rows/128), ceil(cols/128)]` (an error naming both tensors otherwise).
    pub fn with_block_scales(mut self, scales: BlockScales) -> Result<Self> {
        scales.check_for(&self)?;
        self.scales = Some(Arc::new(scales));
        Ok(self)
    }
    /// The block scales of an FP8 weight.
    pub fn block_scales(&self) -> Option<&BlockScales> {
        self.scales.as_deref()
    }
    /// Whether an FP8 weight holds no NaN byte (`0x7f`/`0xff`), so kernels may skip the NaN
    /// test per element. Scans the bytes on the first call (false for other dtypes, or when
    /// the bytes are not here).
    pub fn fp8_nan_free(&self) -> bool {
        *self.nan_free.get_or_init(|| match self.as_u8() {
            Ok(bytes) => {
                bytes
                    .iter()
                    .fold(0u8, |any, &b| any | u8::from(b & 0x7f == 0x7f))
                    == 0
            }
            Err(_) => false,
        })
    }
    /// The same bytes under another name (the scales follow).
    pub fn renamed(&self, name: &str) -> Self {
        Weight {
            name: name.into(),
            ..self.clone()
        }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Rows when viewed as `[out, in]`.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
    /// Columns when viewed as `[out, in]` (1 for a vector).
    pub fn cols(&self) -> usize {
        if self.shape.len() < 2 {
            1
        } else {
            self.shape[1..].iter().product()
        }
    }
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped { map, start, end } => &map[*start..*end],
            Storage::Owned { words, len } => {
                // SAFETY: a Vec<u32> is valid to view as bytes; `len` <= 4 * words.len().
                let all = unsafe {
                    std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 4)
                };
                &all[..*len]
            }
            Storage::Absent => &[],
        }
    }
    /// An error unless the bytes are in this process.
    fn check_loaded(&self, op: &str) -> Result<()> {
        match self.is_loaded() {
            true => Ok(()),
            false => Err(EngineError::kernel(
                op,
                format!(
                    "tensor `{}` is not loaded in this process (a rank loads only the weights its actors use)",
                    self.name
                ),
            )),
        }
    }
    /// The elements of an f32 weight.
    pub fn as_f32(&self) -> Result<&[f32]> {
        self.check_loaded("as_f32")?;
        if self.dtype != DType::F32 {
            return Err(EngineError::kernel(
                "as_f32",
                format!("tensor `{}` is {}, not f32", self.name, self.dtype),
            ));
        }
        let b = self.bytes();
        // SAFETY: alignment was checked (or fixed by copying) at construction; f32 has no invalid bit patterns.
        let (pre, mid, _) = unsafe { b.align_to::<f32>() };
        debug_assert!(pre.is_empty());
        Ok(mid)
    }
    /// The raw bit patterns of a bf16/f16 weight.
    pub fn as_u16(&self) -> Result<&[u16]> {
        self.check_loaded("as_u16")?;
        if !matches!(self.dtype, DType::BF16 | DType::F16) {
            return Err(EngineError::kernel(
                "as_u16",
                format!("tensor `{}` is {}, not 16-bit", self.name, self.dtype),
            ));
        }
        let b = self.bytes();
        // SAFETY: as above; u16 has no invalid bit patterns.
        let (pre, mid, _) = unsafe { b.align_to::<u16>() };
        debug_assert!(pre.is_empty());
        Ok(mid)
    }
    /// The raw e4m3 bytes of an FP8 weight (dequantise with [`Weight::block_scales`]).
    pub fn as_u8(&self) -> Result<&[u8]> {
        self.check_loaded("as_u8")?;
        if self.dtype != DType::F8E4M3 {
            return Err(EngineError::kernel(
                "as_u8",
                format!("tensor `{}` is {}, not f8e4m3", self.name, self.dtype),
            ));
        }
        Ok(self.bytes())
    }
    /// The elements of an int8 weight (dequantise with [`Weight::block_scales`]).
    pub fn as_i8(&self) -> Result<&[i8]> {
        self.check_loaded("as_i8")?;
        if self.dtype != DType::I8 {
            return Err(EngineError::kernel(
                "as_i8",
                format!("tensor `{}` is {}, not i8", self.name, self.dtype),
            ));
        }
        let b = self.bytes();
        // SAFETY: i8 and u8 have the same size and alignment, and no invalid bit patterns.
        Ok(unsafe { std::slice::from_raw_parts(b.as_ptr() as *const i8, b.len()) })
    }
    /// Element `i` upcast to f32 (an FP8 or int8 element times its block's scale, one f32
    /// rounding, as DeepSeek's `w.float() * scale` dequantises).
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        match self.dtype {
            DType::F32 => self.as_f32().map(|v| v[i]).unwrap_or(f32::NAN),
            DType::BF16 => self.as_u16().map(|v| bf16_to_f32(v[i])).unwrap_or(f32::NAN),
            DType::F16 => self.as_u16().map(|v| f16_to_f32(v[i])).unwrap_or(f32::NAN),
            DType::F8E4M3 => {
                let c = self.cols();
                match (self.as_u8(), self.block_scales()) {
                    (Ok(v), Some(s)) => e4m3_to_f32(v[i]) * s.scale(i / c, i % c),
                    _ => f32::NAN,
                }
            }
            DType::I8 => {
                let c = self.cols();
                match (self.as_i8(), self.block_scales()) {
                    (Ok(v), Some(s)) => v[i] as f32 * s.scale(i / c, i % c),
                    _ => f32::NAN,
                }
            }
        }
    }
    /// The whole weight upcast to f32 (a copy; used for small vectors such as norm weights, and
    /// to dequantise FP8).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self.as_f32().map(|v| v.to_vec()).unwrap_or_default(),
            DType::BF16 => self
                .as_u16()
                .map(|v| v.iter().map(|&b| bf16_to_f32(b)).collect())
                .unwrap_or_default(),
            DType::F16 => self
                .as_u16()
                .map(|v| v.iter().map(|&b| f16_to_f32(b)).collect())
                .unwrap_or_default(),
            DType::F8E4M3 | DType::I8 => (0..self.numel()).map(|i| self.get_f32(i)).collect(),
        }
    }
    /// Row `r` of an `[out, in]` weight, upcast to f32.
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let c = self.cols();
        (r * c..(r + 1) * c).map(|i| self.get_f32(i)).collect()
    }
    /// Bytes this weight occupies.
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// An empty buffer with room for `n` elements, or an error naming the tensor when the
/// allocation fails (instead of aborting the process).
fn try_alloc<T>(tensor: &str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| EngineError::OutOfMemory {
            what: format!("tensor `{tensor}`"),
            bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        })?;
    Ok(v)
}

/// `n` zero bytes, or an error naming the tensor when the allocation fails (the quantisers'
/// output buffers).
pub(crate) fn try_zeroed_bytes(tensor: &str, n: usize) -> Result<Vec<u8>> {
    let mut bytes = try_alloc(tensor, n)?;
    bytes.resize(n, 0u8);
    Ok(bytes)
}

/// An empty buffer with room for `n` words, or an error naming the tensor when the allocation
/// fails.
pub(crate) fn try_alloc_words(tensor: &str, n: usize) -> Result<Vec<u32>> {
    try_alloc(tensor, n)
}
