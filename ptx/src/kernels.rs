//! The embedded PTX library: every `kernels/*.ptx` file, its minimum architecture and its entries.
//!
//! The sources are compiled into the crate with `include_str!`, so the CUDA backend and the PTX
//! interpreter load exactly the text `check.sh` assembles.

use crate::error::{GpuError, GpuResult};

/// One PTX file of the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFile {
    /// File name under `ptx/kernels/`.
    pub file: &'static str,
    /// The `.target` of the file (80 = sm_80, 89 = sm_89).
    pub min_sm: u32,
    /// The `.visible .entry` names it defines.
    pub entries: &'static [&'static str],
    /// The PTX text.
    pub source: &'static str,
}

macro_rules! ptx {
    ($file:literal, $sm:literal, [$($e:literal),* $(,)?]) => {
        KernelFile {
            file: $file,
            min_sm: $sm,
            entries: &[$($e),*],
            source: include_str!(concat!("../kernels/", $file)),
        }
    };
}

/// Every kernel file, in a fixed order.
pub const LIBRARY: &[KernelFile] = &[
    ptx!("embedding.ptx", 80, ["embedding_f32", "embedding_bf16"]),
    ptx!("rms_norm.ptx", 80, ["rms_norm_f32"]),
    ptx!("rope.ptx", 80, ["rope_f32"]),
    ptx!("silu_mul.ptx", 80, ["silu_mul_f32"]),
    ptx!("router.ptx", 80, ["route_topk"]),
    ptx!(
        "permute.ptx",
        80,
        ["moe_sort", "moe_gather", "moe_combine", "moe_index_merge"]
    ),
    ptx!("copy.ptx", 80, ["copy_rows_b32"]),
    ptx!(
        "elementwise.ptx",
        80,
        ["add_f32", "check_finite_f32", "flag_copy_b32"]
    ),
    ptx!(
        "linear.ptx",
        80,
        ["linear_f32w", "linear_bf16w", "linear_f16w"]
    ),
    ptx!(
        "grouped_linear.ptx",
        80,
        [
            "grouped_linear_f32w",
            "grouped_linear_bf16w",
            "grouped_linear_f16w"
        ]
    ),
    ptx!("linear_fp8.ptx", 80, ["linear_fp8w", "grouped_linear_fp8w"]),
    ptx!("gemm_bf16_tc.ptx", 80, ["gemm_bf16_tc"]),
    ptx!("convert.ptx", 80, ["f32_to_bf16"]),
    ptx!("attention.ptx", 80, ["attention_f32"]),
    ptx!("argmax.ptx", 80, ["argmax_f32"]),
    ptx!(
        "fp8_gemm_sm89.ptx",
        89,
        ["fp8_quant_act", "fp8_gemm_blockscaled"]
    ),
];

/// The file defining `entry`.
pub fn file_of(entry: &str) -> GpuResult<&'static KernelFile> {
    LIBRARY
        .iter()
        .find(|f| f.entries.contains(&entry))
        .ok_or_else(|| GpuError::UnknownKernel(entry.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_entry_is_defined_in_its_file() {
        for f in LIBRARY {
            for e in f.entries {
                let decl = format!(".visible .entry {e}(");
                assert!(f.source.contains(&decl), "{}: no entry {e}", f.file);
            }
            let target = format!(".target sm_{}", f.min_sm);
            assert!(f.source.contains(&target), "{}: not {target}", f.file);
        }
    }
}
