//! troupe as a dependent crate meets it: `tests/external/embed` (its own workspace, troupe by
//! path with default features off) must have no clap, indicatif, cudarc or troupe-ptx in its
//! dependency tree, and must build and run: it streams text through `troupe::prelude::*`, and
//! after a 2,000-token request's stream (then the engine) is dropped at the third token, its
//! process uses under 0.1 s of CPU over a second. It builds in this workspace's target
//! directory, so only the crates whose profile or features differ are compiled again.

use std::path::PathBuf;
use std::process::Command;

use crate::common::repo_path;

fn cargo(args: &[&str]) -> std::process::Output {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path("target"));
    let manifest = repo_path("tests/external/embed/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .args(args)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--offline")
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("run cargo")
}

#[test]
fn a_crate_without_default_features_has_no_cli_or_gpu_deps_streams_text_and_cancels() {
    let tree = cargo(&["tree", "-e", "normal", "--prefix", "none"]);
    let stdout = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&tree.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("troupe-actors ")),
        "{stdout}"
    );
    for absent in ["clap", "indicatif", "cudarc", "troupe-ptx", "libloading"] {
        let found = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{absent} ")));
        assert!(found.is_none(), "{absent} is in the tree: {found:?}");
    }
    let run = cargo(&["run", "--quiet"]);
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.lines().any(|l| l == "ok"), "{out}");
    let text = out
        .lines()
        .find_map(|l| l.strip_prefix("streamed_text="))
        .expect("the streamed text");
    assert!(text.len() > 2, "{out}");
}
