//! `troupe simulate` and `troupe calibrate` through the binary: the JSON contract on the last
//! stdout line, plots, bad input, and a calibration on this machine re-checked against real
//! measured runs of cheap configurations within ±50% (a broken cost model or a broken seam is
//! caught; the 5% target is the benchmark `bench/sim-validate.sh`, not a timed test).

use super::common::troupe;

fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

#[test]
fn simulate_json_is_one_object_on_the_last_line() {
    let (code, out, err) = troupe(&[
        "simulate", "-m", "graphs/deepseek-v3-671b.toml", "--hardware", "h800", "--gpus", "16",
        "--seqs", "64", "--context", "512", "--steps", "2", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j = last_json(&out);
    for key in ["step_ms", "tokens_per_s", "bubble_fraction", "hidden_fraction"] {
        assert!(j[key].as_f64().is_some_and(f64::is_finite), "{key}: {j}");
    }
    assert_eq!(j["utilization"].as_object().map(|o| o.len()), Some(16), "{j}");
}

#[test]
fn simulate_writes_plots_and_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = troupe(&[
        "simulate", "-m", "graphs/ds-v3-mini.toml", "--hardware", "cpu", "--placement",
        "graphs/ep4.toml", "--seqs", "4", "--steps", "2", "--svg", d, "--sweep", "seqs=1,4,8",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(last_json(&out)["reports"].as_array().map(Vec::len), Some(3));
    let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let (code, _, err) = troupe(&[
        "simulate", "-m", "graphs/ds-v3-mini.toml", "--hardware", "cpu", "--svg", d,
        "--steps", "1",
    ]);
    assert_eq!(code, 0, "{err}");
    for f in ["timeline.svg", "utilization.svg"] {
        assert!(std::fs::read_to_string(dir.path().join(f)).unwrap().contains("<rect"));
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

#[test]
fn calibration_rechecks_real_runs_within_half() {
    let dir = tempfile::tempdir().unwrap();
    let machine = dir.path().join("machine.toml");
    let m = machine.to_str().unwrap();
    let model = "tests/fixtures/deepseek-v3-tiny";
    let (code, _, err) = troupe(&[
        "calibrate", "--out", m, "-m", model, "--context", "8", "--steps", "15",
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
        vec!["--schedule", "two-microbatch", "--seqs", "4", "--placement", l],
    ] {
        let mut a = vec![
            "simulate", "-m", model, "--hardware", m, "--context", "8", "--steps", "15", "--measure",
            "--json",
        ];
        a.extend(extra.iter().copied());
        let (code, out, err) = troupe(&a);
        assert_eq!(code, 0, "{err}");
        let j = last_json(&out);
        let e = j["error"].as_f64().unwrap();
        assert!(e.abs() <= 0.5, "{extra:?}: simulated off by {:.0}%\n{out}", 100.0 * e);
    }
}
