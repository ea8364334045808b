//! Shim for `tests/hf_reference.rs` and `tests/hf_extra.rs`, which still say `mod common;`: they
//! move to `engine/tests/it/` (engine helper), after which this folder is deleted. The helpers
//! themselves live in `tests/it/common.rs`.
#![allow(dead_code)]

#[path = "../it/common.rs"]
mod shared;

pub use shared::*;
