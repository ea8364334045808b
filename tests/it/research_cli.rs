//! The research command line: `troupe trace-stats` on a trace written by a short `generate
//! --trace` run over a link, and `troupe bench --compare --schedule` taking schedules by name
//! (an unknown one is a one-line error naming the known ones).

use crate::common::{case_dir, troupe};

#[test]
fn trace_stats_reads_the_trace_of_a_short_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (trace, placement) = (dir.path().join("trace.json"), dir.path().join("p.toml"));
    std::fs::write(
        &placement,
        "[placement]\nexpert_group_size = 4\nnodes = 2\nexpert_nodes = [1]\n[placement.link]\nlatency_us = 20\ngbps = 10\n[schedule]\nkind = \"two-microbatch\"\n",
    )
    .expect("write placement");
    let model = case_dir("deepseek-v3-tiny");
    let (code, _, err) = troupe(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3,4",
        "--max-new-tokens",
        "3",
        "--runtime",
        "actors",
        "--placement",
        placement.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = troupe(&["trace-stats", trace.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("window: "), "{out}");
    for stream in ["stream cpu0", "stream cpu1"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(stream))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("utilisation"), "{line}");
    }
    let link = out
        .lines()
        .find(|l| l.starts_with("link: "))
        .expect("link line");
    assert!(
        link.contains("link time hidden") && !link.contains("no transfers"),
        "{out}"
    );
    let (code, _, err) = troupe(&["trace-stats", placement.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn bench_compare_takes_schedules_by_name() {
    let model = case_dir("deepseek-v3-tiny");
    let m = model.to_str().unwrap();
    let (code, out, err) = troupe(&[
        "bench",
        "-m",
        m,
        "--compare",
        "--schedule",
        "sequential,pipeline",
        "-r",
        "1",
        "--seqs",
        "2",
        "-p",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    for row in [
        "actors      sequential: ",
        "actors        pipeline: ",
        "link        pipeline: ",
    ] {
        assert!(out.contains(row), "{row:?} missing from:\n{out}");
    }
    let (code, _, err) = troupe(&["bench", "-m", m, "--compare", "--schedule", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown schedule `nope`") && err.contains("two-microbatch"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
