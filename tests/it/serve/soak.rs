//! The soak run CI makes: `bench/soak.sh` for 60 seconds on fortune-tiny with random client
//! disconnects (RSS flat within 5% after warm-up, pages back to idle, no 5xx but 503, no
//! panic), against this build's binary.

use std::process::Command;

use crate::common::repo_path;

#[test]
fn sixty_seconds_of_mixed_load_with_disconnects() {
    let out = Command::new("bash")
        .arg(repo_path("bench/soak.sh"))
        .env("TROUPE", env!("CARGO_BIN_EXE_troupe"))
        .env("DURATION", "60")
        .env("CONCURRENCY", "16")
        .output()
        .expect("run bench/soak.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("soak.sh: OK"),
        "bench/soak.sh: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
