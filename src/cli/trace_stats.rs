//! `troupe trace-stats trace.json`: reads a trace written by `--trace` and prints, per stream,
//! its kernels, busy time and utilisation over the traced window, and for the link, its busy
//! time, the part no kernel hid (exposed) and the link time hidden
//! (`troupe_actors::trace_stats` defines each number).

use std::path::PathBuf;

use clap::Args;

use super::common::CliError;

#[derive(Args, Debug)]
pub struct TraceStatsArgs {
    /// A Chrome/Perfetto trace written by `troupe generate --trace` or `bench --trace`.
    pub trace: PathBuf,
}

pub fn run(a: TraceStatsArgs) -> Result<(), CliError> {
    let stats =
        troupe_actors::trace_stats::read(&a.trace).map_err(|e| CliError::Runtime(e.to_string()))?;
    print!("{stats}");
    Ok(())
}
