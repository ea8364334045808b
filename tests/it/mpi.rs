//! Several processes under `mpirun` (cargo feature `mpi`): tokens and logits of a deployment
//! over 2, 3 and 4 ranks are bit-identical to the single-process reference executor, for both
//! placements (experts on other nodes; data-parallel attention), every schedule, uneven and
//! non-contiguous expert groups, on deepseek-v3-tiny, and one placement each on the other MoE
//! fixtures. Helpers here are shared with `mpi_faults` and `mpi_property`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{case_dir, troupe_bin};

/// How one run ended.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// `mpirun` as this machine needs it: root allowed, more ranks than cores, no binding, TCP.
pub fn mpirun_command(n: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", &n.to_string()]);
    c.args([
        "--oversubscribe",
        "--bind-to",
        "none",
        "--mca",
        "btl",
        "tcp,self",
    ]);
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` at most `limit` (killing it past that), collecting its output.
pub fn finish(mut child: Child, limit: Duration, start: Instant) -> Run {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mpirun did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// `mpirun -n N troupe ARGS`, at most 120 s.
pub fn mpirun(n: usize, args: &[String]) -> Run {
    let start = Instant::now();
    let child = mpirun_command(n)
        .arg(troupe_bin())
        .args(args)
        .spawn()
        .expect("run mpirun");
    finish(child, Duration::from_secs(120), start)
}

/// `troupe ARGS` in one process.
pub fn troupe_single(args: &[String]) -> Run {
    let out = Command::new(troupe_bin()).args(args).output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// An expert group of a placement: its experts, stream and node.
pub struct Group {
    pub experts: Vec<usize>,
    pub stream: usize,
    pub node: usize,
}

/// A placement file: `nodes`, two CPU streams, `stages` stages, explicit groups, a schedule.
pub fn placement_toml(
    nodes: usize,
    stages: usize,
    groups: &[Group],
    schedule: &str,
    data_parallel: bool,
) -> String {
    let mut s = format!("[placement]\nnodes = {nodes}\nstreams = 2\nstages = {stages}\n");
    if data_parallel {
        s.push_str("attention = \"data-parallel\"\n");
    }
    for g in groups {
        s.push_str(&format!(
            "\n[[placement.expert_groups]]\nexperts = {:?}\nstream = \"cpu{}\"\nnode = {}\n",
            g.experts, g.stream, g.node
        ));
    }
    s.push_str(&format!("\n[schedule]\nkind = \"{schedule}\"\n"));
    s
}

/// Uneven, non-contiguous groups of `experts` over `nodes` nodes: expert e goes to group
/// `(e * 7 + e / 3) % groups`, with groups = nodes + 1 and group g on node g % nodes.
pub fn scattered_groups(experts: usize, nodes: usize) -> Vec<Group> {
    let n_groups = nodes + 1;
    let mut groups: Vec<Group> = (0..n_groups)
        .map(|g| Group {
            experts: Vec::new(),
            stream: g % 2,
            node: g % nodes,
        })
        .collect();
    for e in 0..experts {
        groups[(e * 7 + e / 3) % n_groups].experts.push(e);
    }
    groups.retain(|g| !g.experts.is_empty());
    groups
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("troupe-mpi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Three requests of different lengths, as JSON lines.
pub const PROMPTS: &str = "{\"prompt_ids\": [0, 5, 9, 13, 200]}\n{\"prompt_ids\": [0, 100, 7]}\n{\"prompt_ids\": [3, 1, 4, 1, 5, 9, 2, 6, 5]}\n";

/// `generate --prompts-file --json` arguments (greedy, 4 new tokens, one thread).
pub fn generate_args(model: &Path, prompts: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["generate", "--model"].map(String::from).to_vec();
    a.push(model.display().to_string());
    a.extend(["--prompts-file", prompts, "--json", "-n", "4", "-t", "1"].map(String::from));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The reference executor's JSON lines for `prompts` on `model`.
pub fn reference_lines(model: &Path, prompts: &str) -> String {
    let r = troupe_single(&generate_args(model, prompts, &["--runtime", "reference"]));
    assert_eq!(r.code, Some(0), "reference run: {}", r.stderr);
    r.stdout
}

/// Runs `generate` under `mpirun -n nodes` with `groups` under `schedule` (2 stages for
/// `pipeline`; data-parallel attention when `dp`) and checks its stdout equals `expected` (the
/// reference's JSON lines for `dir/prompts.jsonl`).
pub fn assert_deployment_matches(
    dir: &Path,
    model: &Path,
    expected: &str,
    (nodes, groups, schedule, dp): (usize, &[Group], &str, bool),
    what: &str,
) {
    let stages = if schedule == "pipeline" { 2 } else { 1 };
    let placement = placement_toml(nodes, stages, groups, schedule, dp);
    let prompts = dir.join("prompts.jsonl").display().to_string();
    let p = write(dir, "placement.toml", &placement);
    let r = mpirun(nodes, &generate_args(model, &prompts, &["--placement", &p]));
    assert_eq!(r.code, Some(0), "{what}: {}\n{placement}", r.stderr);
    assert_eq!(
        r.stdout, expected,
        "{what}: tokens differ from the reference\n{placement}"
    );
}

/// `rank R: N bytes` per rank, as `troupe inspect MODEL --placement P` prints them.
pub fn inspect_rank_bytes(model: &str, placement: &str) -> Vec<u64> {
    let r = troupe_single(&["inspect", model, "--placement", placement].map(String::from));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r.stdout
        .lines()
        .filter(|l| l.starts_with("rank "))
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect()
}

/// The `troupe: error:` lines of a job's stderr (mpirun adds its own).
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("troupe: error:"))
        .collect()
}

#[test]
fn staged_placement_matches_the_reference_for_every_rank_count_and_schedule() {
    let dir = scratch("staged");
    let model = case_dir("deepseek-v3-tiny");
    let prompts = write(&dir, "prompts.jsonl", PROMPTS);
    let expected = reference_lines(&model, &prompts);
    assert_eq!(expected.lines().count(), 3, "{expected}");
    for nodes in [2, 3, 4] {
        for schedule in ["sequential", "two-microbatch", "pipeline"] {
            let groups = scattered_groups(16, nodes);
            let what = format!("n{nodes}-{schedule}");
            let d = (nodes, &groups[..], schedule, false);
            assert_deployment_matches(&dir, &model, &expected, d, &what);
        }
    }
}

#[test]
fn data_parallel_attention_matches_the_reference() {
    let dir = scratch("dp");
    let model = case_dir("deepseek-v3-tiny");
    let prompts = write(&dir, "prompts.jsonl", PROMPTS);
    let expected = reference_lines(&model, &prompts);
    // 4 ranks for 3 requests: rank 3 runs none and still serves its experts.
    for (nodes, schedule) in [(2, "two-microbatch"), (3, "sequential"), (4, "pipeline")] {
        let groups = scattered_groups(16, nodes);
        let what = format!("dp-n{nodes}-{schedule}");
        let d = (nodes, &groups[..], schedule, true);
        assert_deployment_matches(&dir, &model, &expected, d, &what);
    }
}

#[test]
fn logits_are_bit_identical_across_ranks() {
    let dir = scratch("logits");
    let model = case_dir("deepseek-v3-tiny");
    let m = model.display().to_string();
    let reference = dir.join("ref.safetensors").display().to_string();
    let ids = "0,5,9,13,200,7,7,1";
    let r = troupe_single(
        &[
            "logits",
            "--model",
            &m,
            "--prompt-ids",
            ids,
            "--runtime",
            "reference",
            "--out",
            &reference,
        ]
        .map(String::from),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for (nodes, dp) in [(2, false), (3, true), (4, false)] {
        let pl = write(
            &dir,
            "p.toml",
            &placement_toml(nodes, 1, &scattered_groups(16, nodes), "two-microbatch", dp),
        );
        let out = dir
            .join(format!("mpi{nodes}.safetensors"))
            .display()
            .to_string();
        let args = [
            "logits",
            "--model",
            &m,
            "--prompt-ids",
            ids,
            "-t",
            "1",
            "--placement",
            &pl,
            "--out",
            &out,
        ]
        .map(String::from);
        let r = mpirun(nodes, &args);
        assert_eq!(r.code, Some(0), "n{nodes}: {}", r.stderr);
        assert_eq!(r.stdout, "", "rank 0 writes --out, nobody prints");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&reference).unwrap(),
            "n{nodes}: logits differ"
        );
    }
}

#[test]
fn other_moe_fixtures_match_the_reference() {
    let dir = scratch("fixtures");
    let prompts = write(&dir, "prompts.jsonl", PROMPTS);
    for (case, experts, nodes, dp) in [
        ("deepseek-v3-tiny-bf16", 16, 3, false),
        ("deepseek-v2-lite-tiny", 16, 2, true),
        ("mixtral-tiny", 8, 3, false),
    ] {
        let model = case_dir(case);
        let expected = reference_lines(&model, &prompts);
        let groups = scattered_groups(experts, nodes);
        let d = (nodes, &groups[..], "two-microbatch", dp);
        assert_deployment_matches(&dir, &model, &expected, d, case);
    }
}

#[test]
fn inspect_prints_the_weight_bytes_of_each_rank() {
    let dir = scratch("inspect");
    let model = case_dir("deepseek-v3-tiny").display().to_string();
    let pl = write(
        &dir,
        "p.toml",
        &placement_toml(3, 1, &scattered_groups(16, 3), "sequential", false),
    );
    let bytes = inspect_rank_bytes(&model, &pl);
    assert_eq!(bytes.len(), 3, "{bytes:?}");
    // Rank 0 holds the embedding, attention and head besides its experts: the most.
    assert!(
        bytes[0] > bytes[1] && bytes[1] > 0 && bytes[2] > 0,
        "{bytes:?}"
    );
}

#[test]
fn data_parallel_expert_load_counts_every_ranks_requests() {
    // Each rank routes its own requests under data-parallel attention: the load rank 0 writes
    // sums them all, so it equals one process's tally of the same requests.
    let dir = scratch("dp-load");
    let model = case_dir("deepseek-v3-tiny");
    let prompts = write(&dir, "prompts.jsonl", PROMPTS);
    let single = dir.join("single.json").display().to_string();
    let r = troupe_single(&generate_args(
        &model,
        &prompts,
        &["--runtime", "actors", "--dump-expert-load", &single],
    ));
    assert_eq!(r.code, Some(0), "single process: {}", r.stderr);
    let groups = scattered_groups(16, 2);
    let placement = write(
        &dir,
        "dp.toml",
        &placement_toml(2, 1, &groups, "sequential", true),
    );
    let spread = dir.join("spread.json").display().to_string();
    let r = mpirun(
        2,
        &generate_args(
            &model,
            &prompts,
            &["--placement", &placement, "--dump-expert-load", &spread],
        ),
    );
    assert_eq!(r.code, Some(0), "mpirun: {}", r.stderr);
    let read = |p: &str| -> Vec<Vec<u64>> {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (one, two) = (read(&single), read(&spread));
    assert!(one.iter().flatten().sum::<u64>() > 0);
    assert_eq!(
        one, two,
        "rows per expert: one process vs 2 data-parallel ranks"
    );
}
