//! Which rows a thread's linears compute: a prompt's positions, or generated tokens (a decode
//! step's one row per sequence). On the [`Isa::Amx`] path under `--compute bf16` the kind picks
//! the bf16 × bf16 kernel: AMX tiles for prompt rows, the `vdpbf16ps` pair-dot GEMV
//! ([`Isa::Avx512Bf16`]'s) for generated rows. AMX tiles stream a single row's weights at 14–19
//! GB/s where the pair-dot GEMV takes 22–25 (`benches/decode_gemv.rs`, session 22), and a tile's
//! internal sum has no emulation the pair-dot could share (`amx.rs`), so one kernel cannot serve
//! both.
//!
//! A row's kind is its chunk's, never its batch's, so a request's bits still do not depend on
//! what is batched with it (as MLA's naive / absorbed choice by chunk kind). A pass whose chunks
//! mix kinds runs as two, one per kind ([`splits_passes`]; the reference executor and the actor
//! runtime both split), because a linear computes all of a pass's rows at once. The kind is set
//! per pass (reference executor), per kernel (actor runtime: its `SpanTags`) and per remote
//! expert request (the MPI wire carries it), with [`with_generated`]; unset, rows are prompt rows.

use std::cell::Cell;

use super::isa::{self, Isa};
use super::precision::{self, Compute};

thread_local! {
    /// The linears on this thread compute generated rows only.
    static GENERATED: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread's linears are computing generated rows.
pub fn generated() -> bool {
    GENERATED.with(Cell::get)
}

/// Runs `f` with this thread's rows of kind `generated` (the previous kind comes back after,
/// however `f` ends).
pub fn with_generated<T>(generated: bool, f: impl FnOnce() -> T) -> T {
    /// Puts the previous kind back.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GENERATED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GENERATED.with(|g| g.replace(generated)));
    f()
}

/// The path a linear of this thread's rows runs on when `isa` is asked for: the pair-dot path
/// for generated rows on `amx`, else `isa`. (Under f32 compute the two are the same kernels.)
pub fn for_rows(isa: Isa) -> Isa {
    match isa {
        Isa::Amx if generated() => Isa::Avx512Bf16,
        other => other,
    }
}

/// Whether the active path computes prompt and generated rows with different kernels, so a pass
/// mixing them must run as two: `amx` under `--compute bf16`.
pub fn splits_passes() -> bool {
    isa::active() == Isa::Amx && precision::compute() == Compute::Bf16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_set_for_a_call_and_restored_after_it_even_on_panic() {
        assert!(!generated(), "unset rows are prompt rows");
        with_generated(true, || {
            assert!(generated());
            assert_eq!(for_rows(Isa::Amx), Isa::Avx512Bf16);
            assert_eq!(for_rows(Isa::Avx512), Isa::Avx512);
            with_generated(false, || assert_eq!(for_rows(Isa::Amx), Isa::Amx));
            assert!(generated(), "the inner call's kind leaked out");
        });
        assert!(!generated());
        let r = std::panic::catch_unwind(|| with_generated(true, || panic!("kernel failed")));
        assert!(r.is_err() && !generated(), "a panic left the kind set");
    }
}
