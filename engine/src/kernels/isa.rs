//! The instruction set the CPU kernels run on, chosen at run time: [`Isa::Portable`] (plain
//! Rust), [`Isa::Avx2`] (AVX2+FMA+F16C), [`Isa::Avx512`] (AVX-512F and BW on top of those),
//! [`Isa::Avx512Bf16`] (AVX512-BF16 on top of that) or [`Isa::Amx`] (AMX-BF16 tiles on top of
//! that). The best path the processor has is detected
//! once; a process-wide override ([`set_active`], the CLI's `--isa`) picks another one the
//! processor has. Every kernel keeps one fixed reduction order per path, and each path present is
//! tested against the portable one. Under the default f32 compute all four give the same bits
//! (`avx512bf16` runs exactly the `avx512` kernels); under `--compute bf16`, `avx512bf16`
//! multiplies bf16 activations by bf16 weights with `vdpbf16ps`, whose order
//! ([`super::dot_pairs`]) is its own, `amx` does so in tiles ([`super::amx`]), again in its own
//! order, while the other three keep agreeing with each other.
//!
//! A kernel dispatches with `match isa::active() { .. }` (or takes an `Isa` argument so tests
//! can compare paths side by side); code behind `Avx2`/`Avx512` runs only when [`Isa::supported`]
//! said so, which is what makes its `unsafe` calls of `#[target_feature]` functions sound.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// A CPU kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust (with `f32::mul_add`); runs everywhere.
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512F and BW (with AVX2 + FMA + F16C).
    Avx512,
    /// AVX-512F with AVX512-BF16: `vdpbf16ps` for bf16 × bf16 products under `--compute bf16`;
    /// otherwise the `Avx512` kernels.
    Avx512Bf16,
    /// AVX512-BF16 with AMX-BF16: bf16 × bf16 linears in `tdpbf16ps` tiles under
    /// `--compute bf16` (when the weight rows are a multiple of 32 long; `vdpbf16ps` otherwise);
    /// everything else as `Avx512Bf16`.
    Amx,
}

/// Errors of choosing a path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsaError {
    #[error("unknown instruction set `{0}`: expected portable, avx2, avx512, avx512bf16 or amx")]
    Unknown(String),
    #[error("--isa {requested}: this processor lacks it (available: {available})")]
    Unsupported {
        requested: &'static str,
        available: String,
    },
}

impl Isa {
    /// Every path, slowest first.
    pub const ALL: [Isa; 5] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Bf16,
        Isa::Amx,
    ];

    /// The name `--isa` takes and `troupe bench` prints.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Amx => "amx",
        }
    }

    /// The path named `s` (`portable`, `avx2`, `avx512`, `avx512bf16`, `amx`).
    pub fn parse(s: &str) -> Result<Isa, IsaError> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| IsaError::Unknown(s.to_string()))
    }

    /// Whether this processor can run the path.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 => features().avx2,
            Isa::Avx512 => features().avx2 && features().avx512f && features().avx512bw,
            Isa::Avx512Bf16 => Isa::Avx512.supported() && features().avx512bf16,
            Isa::Amx => Isa::Avx512Bf16.supported() && super::amx::available(),
        }
    }

    /// The best path this processor has.
    pub fn best() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.supported())
            .unwrap_or(&Isa::Portable)
    }

    /// The paths this processor has, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    /// Whether the path may use AVX2+FMA+F16C instructions (kernels with no AVX-512 form of
    /// their own run their AVX2 form on the AVX-512 path).
    pub fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx)
    }

    /// Whether the path may use AVX-512F and BW instructions (the kernels with a 512-bit form).
    pub fn has_avx512(self) -> bool {
        matches!(self, Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx)
    }

    /// Whether the path may use `vdpbf16ps` (AVX512-BF16) for bf16 × bf16 products.
    pub fn has_avx512bf16(self) -> bool {
        matches!(self, Isa::Avx512Bf16 | Isa::Amx)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The processor features the paths (and the later bf16/int8 compute modes) need.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuFeatures {
    /// AVX2 + FMA + F16C.
    pub avx2: bool,
    pub avx512f: bool,
    /// AVX512-BW (16-bit lanes: the FP8 kernel's 32-byte widening). Every AVX-512 processor
    /// since Skylake-SP has it; the AVX-512 path needs it.
    pub avx512bw: bool,
    /// AVX512-BF16 (`vdpbf16ps`), for a bf16-compute mode.
    pub avx512bf16: bool,
    /// AVX512-VNNI, for an int8-activation mode.
    pub avx512vnni: bool,
}

/// What this processor has (detected once).
pub fn features() -> CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    *FEATURES.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    use std::is_x86_feature_detected as has;
    CpuFeatures {
        avx2: has!("avx2") && has!("fma") && has!("f16c"),
        avx512f: has!("avx512f"),
        avx512bw: has!("avx512bw"),
        avx512bf16: has!("avx512bf16"),
        avx512vnni: has!("avx512vnni"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures::default()
}

/// 0: no override; otherwise 1 + the index of the chosen path in `Isa::ALL`.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// The path the kernels use: the override if one was set, else [`Isa::best`].
pub fn active() -> Isa {
    match OVERRIDE.load(Ordering::Relaxed) {
        0 => Isa::best(),
        i => Isa::ALL[(i - 1) as usize],
    }
}

/// Makes every kernel of this process use `isa` from now on; refused when the processor lacks
/// it. (Call it before the first kernel runs: a run mixing paths would still be correct — each
/// path is exact in its own order — but not reproducible.)
pub fn set_active(isa: Isa) -> Result<(), IsaError> {
    if !isa.supported() {
        return Err(IsaError::Unsupported {
            requested: isa.name(),
            available: Isa::available()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let index = Isa::ALL.iter().position(|&i| i == isa).unwrap_or(0);
    OVERRIDE.store(index as u8 + 1, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
        assert_eq!(Isa::parse("sse2"), Err(IsaError::Unknown("sse2".into())));
        assert!(Isa::Portable.supported());
        assert!(Isa::available().contains(&Isa::best()));
        // AVX-512 implies the AVX2 path's features.
        assert!(!Isa::Avx512.supported() || Isa::Avx2.supported());
        assert!(!Isa::Avx512Bf16.supported() || Isa::Avx512.supported());
        assert!(!Isa::Amx.supported() || Isa::Avx512Bf16.supported());
    }

    #[test]
    fn a_missing_path_cannot_be_chosen() {
        for isa in Isa::ALL.into_iter().filter(|i| !i.supported()) {
            let e = set_active(isa).unwrap_err();
            assert!(e.to_string().contains(isa.name()), "{e}");
        }
    }
}
