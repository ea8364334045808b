//! The integration tests of troupe-actors, one binary with one module per concern: start-up
//! errors, bit-identity with the reference executor (replicated experts too), devices, nodes and links, traces and
//! metrics, the async service, stage restarts, supervision, stream order and non-finite values.

mod bad_input;
mod common;
mod custom_bench;
mod determinism;
mod devices;
mod fp8_identity;
mod nodes;
mod non_finite;
mod observability;
mod prefix_cache;
mod replicas;
mod service;
mod stage_restart;
mod supervision;
mod transport;
