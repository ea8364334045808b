//! Seeded random weights, so any graph runs without a checkpoint. Each tensor's values depend only
//! on (seed, tensor name), never on load order or thread count.

use crate::dtype::{f32_to_bf16, f32_to_f16, DType};
use crate::error::Result;
use crate::weights::fp8::quantize_block_scaled;
use crate::weights::weight::try_alloc_words;
use crate::weights::Weight;

/// SplitMix64: small, fast, and good enough for initialisation.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Two independent standard normals (both Box–Muller branches).
    pub fn next_normal_pair(&mut self) -> (f64, f64) {
        let u1 = self.next_f64().max(1e-300);
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        (r * c, r * s)
    }
}

/// FNV-1a of a tensor name, mixed into the seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// What a random tensor holds.
#[derive(Clone, Copy, Debug)]
pub enum RandomInit {
    /// N(0, std²).
    Normal(f32),
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases).
    Zeros,
}

/// Generates one tensor, straight into the weight's own buffer (one allocation, which fails
/// with an error naming the tensor rather than aborting). `F8E4M3` draws the f32 values and
/// quantises them in 128×128 blocks (`weights::fp8::quantize_block_scaled`; 2-D only); `I8`
/// quantises them to int8 (`weights::int8`; 2-D only).
pub fn random_weight(
    name: &str,
    shape: Vec<usize>,
    dtype: DType,
    init: RandomInit,
    seed: u64,
) -> Result<Weight> {
    if dtype == DType::F8E4M3 {
        let f = random_weight(name, shape.clone(), DType::F32, init, seed)?;
        let [rows, cols] = shape[..] else {
            return Err(crate::error::EngineError::Invalid(format!(
                "tensor `{name}`: f8e4m3 weights are 2-D, not {shape:?}"
            )));
        };
        return quantize_block_scaled(name, rows, cols, f.as_f32()?);
    }
    if dtype == DType::I8 {
        let f = random_weight(name, shape, DType::F32, init, seed)?;
        return crate::weights::int8::quantize_weight(&f);
    }
    let n: usize = shape.iter().product();
    let mut rng = SplitMix64::new(seed ^ name_hash(name));
    // Element i of the tensor, in generation order; normals come in pairs (both Box–Muller
    // branches), so elements 2k and 2k+1 share one draw whatever the dtype.
    let mut pair = |_: usize| -> (f32, f32) {
        match init {
            RandomInit::Normal(std) => {
                let (a, b) = rng.next_normal_pair();
                ((a * std as f64) as f32, (b * std as f64) as f32)
            }
            RandomInit::Ones => (1.0, 1.0),
            RandomInit::Zeros => (0.0, 0.0),
        }
    };
    let words = match dtype {
        DType::F32 => {
            let mut w = try_alloc_words(name, n + 1)?;
            w.extend((0..n.div_ceil(2)).flat_map(|k| {
                let (a, b) = pair(k);
                [a.to_bits(), b.to_bits()]
            }));
            w.truncate(n);
            w
        }
        DType::BF16 | DType::F16 | DType::F8E4M3 | DType::I8 => {
            let bits: fn(f32) -> u16 = if dtype == DType::BF16 {
                f32_to_bf16
            } else {
                f32_to_f16
            };
            let mut w = try_alloc_words(name, n.div_ceil(2))?;
            w.extend((0..n.div_ceil(2)).map(|k| {
                let (a, b) = pair(k);
                // An odd tail leaves the high half zero, as the packed layout expects.
                let high = if 2 * k + 1 < n { bits(b) } else { 0 };
                bits(a) as u32 | (high as u32) << 16
            }));
            w
        }
    };
    Ok(Weight::from_words(name, dtype, shape, words))
}
