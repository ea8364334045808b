//! The root crate's integration tests, one binary (`cargo test -p troupe --test it`):
//! - `bad_input`: broken fixtures get one clear stderr line and exit 2;
//! - `loading_and_cli`: loading paths (shards, f16, graph files) and the CLI's contracts;
//! - `hardening`: regression tests of issue #14's CLI findings (threads, memory pre-check,
//!   `logits --out`, `--max-new-tokens`, usage errors, `--prompt-ids`, `TROUPE_FAULT`);
//! - `placement_cli`: `--device`/`--runtime`/bench flags parsed once by clap, hostile link numbers;
//! - `library_devices`: `troupe::backends::default_factory()` puts actor streams on ptx-interp;
//! - `eplb`: `troupe eplb` (the EPLB README example, bad input) and `--dump-expert-load`;
//! - `bench_json`: `troupe bench --json` on cpu and ptx-interp, both runtimes;
//! - `export_hf`: `troupe export-hf` folders run back to the graph's exact logits (random bf16,
//!   the other families' checkpoints); config routing keys, tokenizer size, tensor alignment;
//! - `external_crate`: `tests/external/embed`, a crate depending on troupe with default features
//!   off: no CLI or GPU crates in its tree, text streamed through the prelude, no CPU used after
//!   a dropped stream or engine;
//! - `kv_capacity`: a KV pool too small for one request fails that request alone;
//! - `fuzz`: the fuzz harness (mutated graph files, configs, checkpoints, tokenizers, flags and
//!   fault strings, in process and through the binary);
//! - `mpi`, `mpi_faults`, `mpi_property` (cargo feature `mpi`): deployments over several
//!   processes under `mpirun`, bit-identical to the reference; rank loss and load failures;
//!   `mpi_share`: each rank's share of the weights, rank 0's kernel path, bench under mpirun;
//! - `simulate`: `troupe simulate` (JSON contract, plots, sweeps, bad input); the calibration
//!   check against real runs is its own binary, `tests/sim_calibration.rs`;
//! - `research_cli`: `troupe trace-stats` on a short run's trace, `bench --compare --schedule`;
//! - `serve`: `troupe serve` over HTTP (every error status, streaming, cancellation, batch
//!   invariance among 64 streams, 1,000 malformed bodies, the `openai` Python client, `curl -N`);
//! - `trained_tiny`: the bundled trained model (fortune-tiny) against its transformers reference
//!   on CPU, through the actor runtime, the CLI text path and `--device ptx-interp`.

mod bad_input;
mod bench_json;
mod common;
mod compute_bf16;
mod eplb;
mod export_hf;
mod external_crate;
mod fuzz;
mod hardening;
mod isa_paths;
mod kv_capacity;
mod library_devices;
mod loading_and_cli;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
mod mpi_faults;
#[cfg(feature = "mpi")]
mod mpi_property;
#[cfg(feature = "mpi")]
mod mpi_share;
mod placement_cli;
mod quantize_fp8;
mod quantize_int8;
mod research_cli;
mod serve;
mod simulate;
mod trained_tiny;
