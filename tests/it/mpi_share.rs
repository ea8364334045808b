//! What each rank of a deployment does beside computing: it loads only its share of the weights
//! (the bytes `troupe inspect --placement` gives it) and runs rank 0's CPU kernel path; and
//! `troupe bench` runs under mpirun, printed by rank 0 alone; an expert may have replicas on
//! several ranks (its rows split among them), bit-identical to the reference.

use std::time::{Duration, Instant};

use crate::common::{case_dir, troupe_bin};
use crate::mpi::{
    assert_deployment_matches, error_lines, finish, generate_args, inspect_rank_bytes, mpirun,
    mpirun_command, placement_toml, reference_lines, scattered_groups, scratch, write, Group,
    PROMPTS,
};

#[test]
fn each_rank_loads_its_share_and_runs_rank_0s_kernel_path() {
    let dir = scratch("share");
    let model = case_dir("deepseek-v3-tiny");
    let m = model.display().to_string();
    let prompts = write(&dir, "prompts.jsonl", PROMPTS);
    let expected = reference_lines(&model, &prompts);
    for dp in [false, true] {
        let pl = write(
            &dir,
            "p.toml",
            &placement_toml(3, 1, &scattered_groups(16, 3), "two-microbatch", dp),
        );
        let want = inspect_rank_bytes(&m, &pl);
        // MPMD: only rank 0 is given --isa portable; ranks 1 and 2 would pick their best path.
        let start = Instant::now();
        let mut c = mpirun_command(1);
        c.env("TROUPE_RANK_REPORT", "1")
            .args(["-x", "TROUPE_RANK_REPORT"])
            .arg(troupe_bin())
            .args(generate_args(
                &model,
                &prompts,
                &["--placement", &pl, "--isa", "portable"],
            ));
        c.args([":", "-n", "2"])
            .arg(troupe_bin())
            .args(generate_args(&model, &prompts, &["--placement", &pl]));
        let r = finish(c.spawn().unwrap(), Duration::from_secs(120), start);
        assert_eq!(r.code, Some(0), "dp {dp}: {}", r.stderr);
        assert_eq!(
            r.stdout, expected,
            "dp {dp}: tokens differ from the reference"
        );
        for (rank, bytes) in want.iter().enumerate() {
            let head = format!("troupe: rank {rank} of 3: isa portable, loading ");
            let line = r.stderr.lines().find(|l| l.starts_with(&head));
            let line = line.unwrap_or_else(|| panic!("dp {dp}: no `{head}` in\n{}", r.stderr));
            assert!(
                line.contains(&format!(", {bytes} of ")),
                "dp {dp}: {line}, want {bytes}"
            );
        }
        let total: u64 = want.iter().sum();
        assert!(want.iter().all(|&b| b > 0 && b < total), "{want:?}");
    }
}

#[test]
fn bench_runs_under_mpirun_and_rank_0_prints_the_rows() {
    let dir = scratch("bench");
    let m = case_dir("deepseek-v3-tiny").display().to_string();
    let pl = write(
        &dir,
        "p.toml",
        &placement_toml(2, 1, &scattered_groups(16, 2), "two-microbatch", false),
    );
    let bench = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "bench",
            "--model",
            &m,
            "--placement",
            &pl,
            "-p",
            "4",
            "-n",
            "2",
        ]
        .map(String::from)
        .to_vec();
        a.extend(["-r", "1", "-t", "1"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        mpirun(2, &a)
    };
    let r = bench(&["--runtime", "actors"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(error_lines(&r.stderr).is_empty(), "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("model:")).count(),
        1,
        "{}",
        r.stdout
    );
    assert!(lines[0].contains("runtime: actors"), "{}", r.stdout);
    for test in ["pp4 ", "tg2 "] {
        let row = lines.iter().find(|l| l.starts_with(test));
        let rate: f64 = row
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {test}row in\n{}", r.stdout));
        assert!(rate > 0.0, "{}", r.stdout);
    }
    // The reference executor cannot span ranks: one line from rank 0, exit 2.
    let r = bench(&["--runtime", "reference"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_eq!(error_lines(&r.stderr).len(), 1, "{}", r.stderr);
    assert_eq!(r.stdout, "");
}

#[test]
fn experts_replicated_on_several_ranks_match_the_reference() {
    let dir = scratch("replicas");
    let model = case_dir("deepseek-v3-tiny");
    let prompts = write(&dir, "prompts.jsonl", PROMPTS);
    let expected = reference_lines(&model, &prompts);
    for (nodes, dp) in [(3, false), (2, true)] {
        // Experts 0-5 get one more replica on every rank (two on the rank already holding them).
        let mut groups = scattered_groups(16, nodes);
        groups.extend((0..nodes).map(|node| Group {
            experts: (0..6).collect(),
            stream: node % 2,
            node,
        }));
        let d = (nodes, &groups[..], "two-microbatch", dp);
        assert_deployment_matches(&dir, &model, &expected, d, &format!("replicas n{nodes}"));
    }
}
