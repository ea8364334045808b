//! The `troupe` command line: generate, logits, inspect, import-hf, bench.
//!
//! Errors, usage errors included, are printed as one line on stderr (`troupe: error: ...`) and the
//! exit code is 2; `--help` and `--version` exit 0.

mod cli;

fn main() {
    let args = cli::parse_or_exit();
    if let Err(e) = cli::run(args) {
        // One line, even when a library's message spans several.
        let message = e.to_string();
        let lines: Vec<&str> = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        // Under mpirun only rank 0 prints a setup error; a rank failing later names itself.
        cli::exit_with_error(&lines.join(" "));
    }
}
