//! The `troupe` command line: generate, logits, inspect, import-hf, bench.
//!
//! Errors are printed as one line on stderr (`troupe: error: ...`) and the exit code is 2.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("troupe: error: {e}");
        std::process::exit(2);
    }
}
