//! troupe-engine's one integration-test binary: the engine against Hugging Face on the bundled
//! fixtures, and focused tests of validation, config import, checkpoint loading, file reading,
//! the router and the dot kernels. Fixtures are reached through [`fixtures::fixture`] only.

mod absorbed_storage;
mod amx_tiles;
mod checkpoint_errors;
mod config_import;
mod decode_ops;
mod dot;
mod dot_pairs;
mod fixtures;
mod fp8_kernel;
mod hf_extra;
mod hf_fp8;
mod hf_reference;
mod int8;
mod mixed_passes;
mod paged_cache;
mod partial_load;
mod prefill_chunking;
mod random_weights;
mod requests;
mod router;
mod spec_validation;
mod tokenizer_files;
