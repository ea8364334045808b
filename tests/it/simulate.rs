//! `troupe simulate` through the binary: the JSON contract on the last stdout line, plots,
//! sweeps, bad input. (The calibration check against real runs is its own test binary,
//! `tests/sim_calibration.rs`, so no other test competes for the cores while it measures.)

use super::common::troupe;

fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

#[test]
fn simulate_json_is_one_object_on_the_last_line() {
    let (code, out, err) = troupe(&[
        "simulate",
        "-m",
        "graphs/deepseek-v3-671b.toml",
        "--hardware",
        "h800",
        "--gpus",
        "16",
        "--seqs",
        "64",
        "--context",
        "512",
        "--steps",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j = last_json(&out);
    for key in [
        "step_ms",
        "tokens_per_s",
        "bubble_fraction",
        "hidden_fraction",
    ] {
        assert!(j[key].as_f64().is_some_and(f64::is_finite), "{key}: {j}");
    }
    assert_eq!(
        j["utilization"].as_object().map(|o| o.len()),
        Some(16),
        "{j}"
    );
}

#[test]
fn simulate_writes_plots_and_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = troupe(&[
        "simulate",
        "-m",
        "graphs/ds-v3-mini.toml",
        "--hardware",
        "cpu",
        "--placement",
        "graphs/ep4.toml",
        "--seqs",
        "4",
        "--steps",
        "2",
        "--svg",
        d,
        "--sweep",
        "seqs=1,4,8",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(last_json(&out)["reports"].as_array().map(Vec::len), Some(3));
    let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let (code, _, err) = troupe(&[
        "simulate",
        "-m",
        "graphs/ds-v3-mini.toml",
        "--hardware",
        "cpu",
        "--svg",
        d,
        "--steps",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    for f in ["timeline.svg", "utilization.svg"] {
        assert!(std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .contains("<rect"));
    }
}

#[test]
fn simulate_bad_input_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let hw = dir.path().join("bad.toml");
    std::fs::write(&hw, "name = \"x\"\nkind = \"gpu\"\n").unwrap();
    for (args, needle) in [
        (vec!["--hardware", "h900"], "h900"),
        (vec!["--hardware", hw.to_str().unwrap()], "bad.toml"),
        (vec!["--hardware", "cpu", "--sweep", "nope=1"], "nope"),
        (vec!["--hardware", "cpu", "--schedule", "zigzag"], "zigzag"),
        (vec!["--hardware", "cpu", "--gpus", "0"], "--gpus"),
    ] {
        let mut a = vec!["simulate", "-m", "graphs/ds-v3-mini.toml", "--steps", "1"];
        a.extend(args);
        let (code, _, err) = troupe(&a);
        assert_eq!(code, 2, "{a:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{a:?}: {err}");
    }
}
