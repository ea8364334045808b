//! `troupe calibrate` on the machine the test runs on, then three cheap configurations run for
//! real and simulated with the calibrated file (`troupe simulate --measure`): each simulated
//! step within ±50% of the measured one, so a broken cost model or a broken simulator seam is
//! caught. (The 5% target is the benchmark `bench/sim-validate.sh`, not a timed test.) Its own
//! test binary: cargo runs test binaries one at a time, so nothing else competes for the cores
//! between calibrating and measuring.

use std::process::Command;

fn troupe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .output()
        .expect("run troupe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

#[test]
fn calibration_rechecks_real_runs_within_half() {
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("machine.toml");
    let m = machine.to_str().unwrap();
    let model = "tests/fixtures/deepseek-v3-tiny";
    let (code, _, err) = troupe(&[
        "calibrate",
        "--out",
        m,
        "-m",
        model,
        "--context",
        "8",
        "--steps",
        "15",
    ]);
    assert_eq!(code, 0, "{err}");
    let link = dir.path().join("link.toml");
    std::fs::write(
        &link,
        "[placement]\nstreams = 2\nnodes = 2\nexpert_nodes = [1]\n[placement.link]\ngbps = 1.0\nlatency_us = 500.0\n",
    )
    .unwrap();
    let l = link.to_str().unwrap();
    for extra in [
        vec!["--schedule", "sequential", "--seqs", "2"],
        vec!["--schedule", "two-microbatch", "--seqs", "4"],
        vec![
            "--schedule",
            "two-microbatch",
            "--seqs",
            "4",
            "--placement",
            l,
        ],
    ] {
        let mut a = vec![
            "simulate",
            "-m",
            model,
            "--hardware",
            m,
            "--context",
            "8",
            "--steps",
            "15",
            "--measure",
            "--json",
        ];
        a.extend(extra.iter().copied());
        let (code, out, err) = troupe(&a);
        assert_eq!(code, 0, "{err}");
        let j = last_json(&out);
        let e = j["error"].as_f64().unwrap();
        assert!(
            e.abs() <= 0.5,
            "{extra:?}: simulated off by {:.0}%\n{out}",
            100.0 * e
        );
    }
}
