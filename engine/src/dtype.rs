//! Weight element types and their conversion to f32 (bit-exact, as torch upcasts), including
//! FP8 e4m3 (`float8_e4m3fn`: no infinities, 0x7f/0xff NaN, largest finite ±448) and the
//! round-to-nearest-even, saturating f32 → e4m3 conversion `troupe quantize --fp8` uses.

use std::fmt;

/// The element types a weight may be stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    BF16,
    F16,
    /// FP8 e4m3 (safetensors `F8_E4M3`, torch `float8_e4m3fn`); as a model dtype it means the
    /// linear weights are FP8 with 128×128 block scales (see `weights::BlockScales`).
    #[serde(rename = "f8e4m3")]
    F8E4M3,
    /// Signed 8-bit integers (safetensors `I8`): the storage of int8-quantised weights, each
    /// row with an f32 scale per 32 columns (see `weights::int8`). A weight type, not a model
    /// dtype: a model is quantised by `[quantize]` / `--quantize int8`.
    I8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::F8E4M3 | DType::I8 => 1,
        }
    }
    /// Parses the dtype names used by safetensors headers and HF configs.
    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Some(DType::F32),
            "bf16" | "bfloat16" => Some(DType::BF16),
            "f16" | "float16" | "half" => Some(DType::F16),
            "f8e4m3" | "f8_e4m3" | "float8_e4m3fn" | "fp8" => Some(DType::F8E4M3),
            "i8" | "int8" => Some(DType::I8),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F8E4M3 => "f8e4m3",
            DType::I8 => "i8",
        })
    }
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 → bf16 bits, round to nearest even (torch's rounding); NaN stays NaN.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// f16 bits → f32 (exact).
#[inline(always)]
pub fn f16_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// f32 → f16 bits, round to nearest even.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The largest finite e4m3 value; `troupe quantize --fp8` scales each block's amax to it.
pub const E4M3_MAX: f32 = 448.0;

/// e4m3 bits → f32, computed (sign, 4-bit exponent of bias 7, 3-bit mantissa; exponent 0 is
/// subnormal, `S.1111.111` is NaN).
const fn e4m3_value(b: u8) -> f32 {
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as u32;
    let mag_bits = if exp == 0 {
        // m · 2^-9, exact in f32: 2^-9 · m/1 with m < 8.
        if man == 0 {
            0
        } else {
            // Normalise: the leading one of m moves into the implicit bit.
            let lead = 31 - man.leading_zeros(); // 0..=2
            let e = lead as i32 - 9 + 127;
            let frac = (man ^ (1 << lead)) << (23 - lead);
            ((e as u32) << 23) | frac
        }
    } else if exp == 15 && man == 7 {
        0x7fc0_0000
    } else {
        (((exp - 7 + 127) as u32) << 23) | (man << 20)
    };
    let sign = ((b >> 7) as u32) << 31;
    f32::from_bits(sign | mag_bits)
}

const fn e4m3_table() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = e4m3_value(i as u8);
        i += 1;
    }
    t
}

/// Every e4m3 value, by bit pattern.
pub static E4M3_TO_F32: [f32; 256] = e4m3_table();

/// e4m3 bits → f32 (exact; 0x7f and 0xff are NaN).
#[inline(always)]
pub fn e4m3_to_f32(b: u8) -> f32 {
    E4M3_TO_F32[b as usize]
}

/// f32 → e4m3 bits, round to nearest even, saturating to ±448 (as torch's
/// `.to(torch.float8_e4m3fn)` after clamping, which is what DeepSeek's quantiser produces);
/// NaN → 0x7f.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7e;
    }
    // Every finite e4m3 magnitude is a multiple of 2^-9; below 2^-6 the grid is uniform (2^-9),
    // above it each binade [2^e, 2^(e+1)) has 8 steps of 2^(e-3). Round in f64 (exact here).
    let exp = if a < 2f32.powi(-6) {
        -6
    } else {
        ((a.to_bits() >> 23) & 0xff) as i32 - 127
    };
    let a = a as f64;
    let step = 2f64.powi(exp - 3);
    let q = a / step;
    let mut n = q.floor();
    let frac = q - n;
    if frac > 0.5 || (frac == 0.5 && n % 2.0 == 1.0) {
        n += 1.0;
    }
    let v = n * step;
    // `v` is on the grid; encode it.
    if v == 0.0 {
        return sign;
    }
    let (e, m) = if v < 2f64.powi(-6) {
        (0u8, (v / 2f64.powi(-9)) as u8)
    } else {
        let e = (((v as f32).to_bits() >> 23) & 0xff) as i32 - 127;
        let m = (v / 2f64.powi(e) - 1.0) * 8.0;
        ((e + 7) as u8, m as u8)
    };
    sign | (e << 3) | m
}
